-- Shared by the bench's wrk scripts: inputs in, counts out.
--
-- wrk gives every thread its own Lua state, and the bench runs one connection per thread, so
-- a thread's globals are its connection's. setup() runs in wrk's main state before the
-- threads start: it numbers each thread and hands it its input lines (BENCH_INPUT .. "." ..
-- number: login codes, a refresh token, a Bearer token). done() runs in the main state after
-- the threads stop: it gathers every thread's status counts and final state (the newest
-- token of a refresh chain) and writes them with wrk's summary to BENCH_WRK_OUT as JSON.

local report = {}
local threads = {}

-- Globals of each thread's state, read back by done() through thread:get().
statuses = {}
state = ""
exhausted = false

local function read_lines(path)
  local lines = {}
  local file = io.open(path, "r")
  if file == nil then
    return lines
  end
  for line in file:lines() do
    if line ~= "" then
      lines[#lines + 1] = line
    end
  end
  file:close()
  return lines
end

function report.setup(thread)
  threads[#threads + 1] = thread
  thread:set("id", #threads)
  local prefix = os.getenv("BENCH_INPUT")
  if prefix ~= nil and prefix ~= "" then
    thread:set("inputs", read_lines(prefix .. "." .. #threads))
  end
end

function report.count(status)
  statuses[status] = (statuses[status] or 0) + 1
end

local function quote(text)
  local escaped = string.gsub(tostring(text), '[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. escaped .. '"'
end

function report.done(summary, latency, requests)
  local counts, states, ran_out = {}, {}, 0
  for index, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + count
    end
    states[index] = quote(thread:get("state"))
    if thread:get("exhausted") then
      ran_out = ran_out + 1
    end
  end
  local status_fields = {}
  for status, count in pairs(counts) do
    status_fields[#status_fields + 1] = string.format('"%d":%d', status, count)
  end
  local errors = summary.errors
  local out = assert(io.open(assert(os.getenv("BENCH_WRK_OUT")), "w"))
  out:write(string.format(
    '{"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%.1f,"p90":%.1f,"p99":%.1f,"max":%.1f},' ..
    '"statuses":{%s},"states":[%s],"exhausted":%d}\n',
    summary.duration, summary.requests, summary.bytes,
    errors.connect, errors.read, errors.write, errors.timeout, errors.status,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max,
    table.concat(status_fields, ","), table.concat(states, ","), ran_out))
  out:close()
end

return report

-- Logins, each with a fresh wx.login code: the connection's input lines, one per request.
-- A connection that runs out stops, and the run is marked: its rate would be understated.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local report = require("report")

setup = report.setup
done = report.done

local headers = { ["Content-Type"] = "application/json" }
local next_code = 1

function request()
  local code = inputs and inputs[next_code]
  if code == nil then
    exhausted = true
    wrk.thread:stop()
    code = ""
  end
  next_code = next_code + 1
  return wrk.format("POST", nil, headers, '{"code":"' .. code .. '"}')
end

function response(status, headers, body)
  if not exhausted then
    report.count(status)
  end
end

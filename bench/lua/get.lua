-- The same request on every connection (wrk's own, prepared once per thread), optionally with
-- one header (BENCH_HEADER): its value is the connection's input line when it has one (its
-- Bearer token), else BENCH_HEADER_VALUE (an If-None-Match every connection sends).
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local report = require("report")

setup = report.setup
done = report.done

function init(args)
  local name = os.getenv("BENCH_HEADER")
  if name ~= nil and name ~= "" then
    wrk.headers[name] = (inputs and inputs[1]) or os.getenv("BENCH_HEADER_VALUE")
  end
end

function response(status, headers, body)
  report.count(status)
end

-- Refresh chains: each connection sends its chain's newest refresh token (its input line) and
-- keeps the one each 200 answer returns. Any other answer keeps the token: sending it again
-- is a retry inside the reuse grace, which returns the same successor.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local report = require("report")

setup = report.setup
done = report.done

local headers = { ["Content-Type"] = "application/json" }

function init(args)
  state = (inputs and inputs[1]) or ""
end

function request()
  return wrk.format("POST", nil, headers, '{"refresh_token":"' .. state .. '"}')
end

function response(status, headers, body)
  report.count(status)
  if status == 200 then
    state = string.match(body, '"refresh_token":"([^"]+)"') or state
  end
end

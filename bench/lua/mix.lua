-- The mix: of every ten requests of a connection, one login, four refreshes, four /me and one
-- JWKS, interleaved (each connection starts at another point of the cycle). Input lines: the
-- connection's refresh token, its "Bearer ..." header value, then one login code per login.
-- The refresh chain continues as in chain.lua; a connection out of codes stops, as in
-- codes.lua.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local report = require("report")

setup = report.setup
done = report.done

local json = { ["Content-Type"] = "application/json" }
local cycle = { "refresh", "me", "login", "refresh", "me", "jwks", "refresh", "me", "refresh", "me" }
local step = 0
local next_code = 3
local last = nil
local bearer = {}

function init(args)
  state = (inputs and inputs[1]) or ""
  bearer = { ["Authorization"] = (inputs and inputs[2]) or "" }
  step = (id or 0) % #cycle
end

function request()
  step = step % #cycle + 1
  last = cycle[step]
  if last == "refresh" then
    return wrk.format("POST", "/auth/refresh", json, '{"refresh_token":"' .. state .. '"}')
  elseif last == "me" then
    return wrk.format("GET", "/me", bearer)
  elseif last == "jwks" then
    return wrk.format("GET", "/.well-known/jwks.json")
  end
  local code = inputs and inputs[next_code]
  if code == nil then
    exhausted = true
    wrk.thread:stop()
    code = ""
  end
  next_code = next_code + 1
  return wrk.format("POST", "/auth/login", json, '{"code":"' .. code .. '"}')
end

function response(status, headers, body)
  if not exhausted then
    report.count(status)
  end
  if last == "refresh" and status == 200 then
    state = string.match(body, '"refresh_token":"([^"]+)"') or state
  end
end

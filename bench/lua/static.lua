-- One fixed request (method, path and headers from the wrk command line: -H for the token), the
-- hot-hit workload. Unpaced by default (wrk's static fast path: no Lua per request). With BENCH_RATE
-- set, requests are paced at that total rate (the "half of max throughput" runs); with BENCH_MAX,
-- each thread stops after that many responses. With BENCH_NUMBERED=1, each request also carries its
-- own X-Request-ID, last, as from a client or a load balancer that numbers requests (Lua per request).
local common = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local threads = tonumber(os.getenv("BENCH_THREADS") or "1")
if rate > 0 then
  delay = common.pacer(rate / threads)
end
if tonumber(os.getenv("BENCH_MAX") or "0") > 0 then
  response = common.counter()
end

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)
end

if os.getenv("BENCH_NUMBERED") == "1" then
  local fixed, thread, n = nil, nil, 0
  request = function()
    if fixed == nil then  -- this thread's fixed request, its blank line cut: one field order throughout
      fixed, thread = wrk.format():sub(1, -3), string.format("%05d", math.random(0, 99999))
    end
    n = n + 1
    return fixed .. "X-Request-ID: wrk-" .. thread .. "-" .. n .. "\r\n\r\n"
  end
end

function done(summary, latency, requests)
  common.write_report(summary, latency, nil)
end

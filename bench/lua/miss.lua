-- Every request a new cache key: GET $BENCH_MISS_PREFIX .. <unique number>, e.g. a leaderboard page
-- "/api/v1/achievements/leaderboard?limit=10&offset=" with an offset never asked before (the rule keys
-- on limit and offset, so each is a miss through the proxy and a query at the backend).
-- Unique across threads (thread number) and runs ($BENCH_MISS_BASE). Token: -H on the command line.
-- Paced with BENCH_RATE (total/s) so direct and proxied runs see the same load; BENCH_MAX bounds count.
local common = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local threads = tonumber(os.getenv("BENCH_THREADS") or "1")
if rate > 0 then
  delay = common.pacer(rate / threads)
end
response = common.counter()

local created = 0
function setup(thread)
  created = created + 1
  thread:set("tid", created)
end

local prefix, n, base
function init(args)
  prefix = assert(os.getenv("BENCH_MISS_PREFIX"), "BENCH_MISS_PREFIX not set")
  base = tonumber(os.getenv("BENCH_MISS_BASE") or "0") + tid * 10000000
  n = 0
  math.randomseed(base)
end

function request()
  n = n + 1
  return wrk.format("GET", prefix .. string.format("%d", base + n))
end

function done(summary, latency, requests)
  common.write_report(summary, latency, nil)
end

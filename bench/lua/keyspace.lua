-- Scenario (f), many keys: per-user reads of the profile and /auth/me, the user drawn from a Zipf law,
-- each request with that user's own token. The data file $BENCH_DATA (bench/scenario_keyspace.py)
-- names the users, the law's exponent, the paths, the number of variants per (user, path) (the 1M-key
-- point: `?v=<0..variants-1>`, a query parameter the rules copy keys on) and the tokens file (one
-- token per line, by rank: line 1 is the hottest user). The Zipf CDF is computed here, as
-- bench/workload.py's zipf_cdf does (weight 1 / rank^s, normalised).
--
-- Measured runs define no response() (wrk then skips the Lua call and the header parsing per
-- response: the load generator stays as cheap as it can); path 50/50, variant uniform. BENCH_RATE
-- (total/s) paces them on a fixed schedule (the half-load runs).
-- BENCH_PREFILL=1: each (user, path, variant) once, in rank order (hottest users first), threads taking
-- turns; a thread stops after its share, or at the run's time bound (BENCH_PREFILL_KEYS limits the
-- walk to the first keys). Prefill runs count statuses and X-Cache answers into the report.
local common = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local data = dofile(assert(os.getenv("BENCH_DATA"), "BENCH_DATA not set"))

local tokens = {}
for line in io.lines(data.tokens_file) do
  if #line > 0 then tokens[#tokens + 1] = "Bearer " .. line end
end
local users = math.min(data.users, #tokens)
local paths, variants = data.paths, data.variants
local per_user = #paths * variants

local threads = tonumber(os.getenv("BENCH_THREADS") or "1")
local prefill = os.getenv("BENCH_PREFILL") == "1"
local pf_total = users * per_user
local pf_limit = tonumber(os.getenv("BENCH_PREFILL_KEYS") or "0")
if pf_limit > 0 and pf_limit < pf_total then pf_total = pf_limit end

local created, all = 0, {}
function setup(thread)
  created = created + 1
  thread:set("tid", created)
  all[#all + 1] = thread
end

local cdf = {}
do
  local acc = 0
  for r = 1, users do
    acc = acc + 1 / (r ^ data.zipf_s)
    cdf[r] = acc
  end
  for r = 1, users do cdf[r] = cdf[r] / acc end
  cdf[users] = 1.0
end

local function search(x)  -- first rank with cdf[r] >= x
  local lo, hi = 1, users
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < x then lo = mid + 1 else hi = mid end
  end
  return lo
end

local function format(u, p, v)
  local path = paths[p]
  if variants > 1 then path = path .. "?v=" .. (v - 1) end
  return common.get(path, tokens[u])
end

-- per-thread counters of the prefill (numbers: wrk's thread:get carries them back to done())
ok, other, hit, miss, left = 0, 0, 0, 0, 0
local share, pf_n = 0, 0

function init(args)
  math.randomseed(tonumber(os.getenv("BENCH_SEED") or "1") * 1000 + tid)
  if prefill then
    share = tid <= pf_total and math.floor((pf_total - tid) / threads) + 1 or 0
    left = share
  end
end

if prefill then
  function request()
    local idx = (pf_n * threads + tid - 1) % pf_total
    pf_n = pf_n + 1
    local u = math.floor(idx / per_user) + 1
    local rem = idx % per_user
    return format(u, rem % #paths + 1, math.floor(rem / #paths) + 1)
  end

  function response(status, headers, body)
    if status == 200 then ok = ok + 1 else other = other + 1 end
    local xc = headers["X-Cache"] or headers["x-cache"]
    if xc == "HIT" then hit = hit + 1 elseif xc then miss = miss + 1 end
    left = left - 1
    if left == 0 then common.finish() end  -- once: answers already in flight still arrive after it
  end
else
  function request()
    return format(search(math.random()), math.random(#paths), math.random(variants))
  end
  local rate = tonumber(os.getenv("BENCH_RATE") or "0")
  if rate > 0 then  -- the half-load runs: sends paced at that total rate
    delay = common.pacer(rate / threads)
  end
end

function done(summary, latency, requests)
  local t = {ok = 0, other = 0, hit = 0, miss = 0}
  for _, thread in ipairs(all) do
    for name in pairs(t) do t[name] = t[name] + (thread:get(name) or 0) end
  end
  local extra = nil
  if prefill then
    extra = string.format('"prefill": {"keys": %d, "ok": %d, "other": %d, "hit": %d, "miss": %d}',
      pf_total, t.ok, t.other, t.hit, t.miss)
  end
  common.write_report(summary, latency, extra)
end

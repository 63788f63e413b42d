-- The katiba workload (conventions.md, bench scenario c): users drawn from a Zipf law, each request a
-- read or a write of the mix, with that user's pre-generated token. Everything variable comes from the
-- data file $BENCH_DATA that bench/workload.py writes (tokens, the Zipf CDF, the mix), so the Python
-- load generator of the smoke mode draws from exactly the same distributions.
--
-- Run with as many threads as connections (-t N -c N): each thread then has one connection, so a
-- response always answers this thread's last request, and per-route latency is exact (the send time
-- is taken in request(), which wrk calls right before writing). Each response is a line "route X-Cache
-- status latency_us" in a file per thread ($BENCH_OUT.t<N>); done() writes the summary into $BENCH_OUT.
-- BENCH_RATE (total/s) paces the sends on a fixed schedule; BENCH_MAX bounds the count per thread.
-- BENCH_REREAD=1: after each write answered 2xx, this connection waits data.reread_think_ms, then reads
-- the per-user route the write purged (data.rereads), as the same user, recorded as "reread:<rule>" with
-- "-collapsed" added to X-Cache when Cache-Status says it waited for a fill in flight (workload.py).
local common = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local data = dofile(assert(os.getenv("BENCH_DATA"), "BENCH_DATA not set"))

local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local threads = tonumber(os.getenv("BENCH_THREADS") or "1")
local reread = os.getenv("BENCH_REREAD") == "1"
local pending = nil  -- {u, item}: the read due after the last write (BENCH_REREAD)
local pace = rate > 0 and common.pacer(rate / threads) or nil
if pace or reread then
  -- The read after a write goes out after the think time, outside the pacer's schedule.
  delay = function()
    if pending then return data.reread_think_ms end
    return pace and pace() or 0
  end
end
local max = tonumber(os.getenv("BENCH_MAX") or "0")
-- BENCH_PREFILL=1: instead of random draws, read every (user, read route) once, threads taking turns;
-- each thread stops after its share (the cache's warm state before a measured run).
local prefill = os.getenv("BENCH_PREFILL") == "1"
local pf_total, pf_n = #data.tokens * #data.reads, 0

local created, all = 0, {}
function setup(thread)
  created = created + 1
  thread:set("tid", created)
  all[#all + 1] = thread
end

local function cumulative(list)
  local total, out = 0, {}
  for i, item in ipairs(list) do total = total + item.w; out[i] = total end
  for i = 1, #out do out[i] = out[i] / total end
  return out
end

local function search(cdf, x)  -- first index with cdf[i] >= x
  local lo, hi = 1, #cdf
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < x then lo = mid + 1 else hi = mid end
  end
  return lo
end

local read_cdf, write_cdf = cumulative(data.reads), cumulative(data.writes)
local last_route, last_write, sent_at, n = nil, nil, 0, 0
local out

function init(args)
  math.randomseed(tonumber(os.getenv("BENCH_SEED") or "1") * 1000 + tid)
  -- One file per thread ($BENCH_OUT.t<N>), a line per response; the C library flushes it when wrk exits
  -- (wrk's thread:get cannot carry nested tables back to done()).
  out = assert(io.open(os.getenv("BENCH_OUT") .. ".t" .. tid, "w"))
  out:setvbuf("full", 65536)
  if prefill then
    max = tid <= pf_total and math.floor((pf_total - tid) / threads) + 1 or 1
  end
end

local function pick(list) return list[math.random(#list)] end

local bodies = {
  profile = function(u)
    n = n + 1
    return string.format('{"display_name": "Bench user %d r%d-%d", "bio": "Msomaji wa Katiba, toleo %d"}',
      u, tid, n, n)
  end,
  preferences = function(u)
    return string.format('{"theme": "%s", "notifications_enabled": %s}', pick({"light", "dark"}),
      pick({"true", "false"}))
  end,
  award = function(u) return string.format('{"badge_type": "%s"}', pick(data.badges)) end,
  language = function(u) return string.format('{"language_code": "%s"}', pick(data.languages)) end,
  interest = function(u) return string.format('{"interest": "%s"}', pick(data.interests)) end,
}

function request()
  local u, item, body
  if prefill then
    local idx = (pf_n * threads + tid - 1) % pf_total
    pf_n = pf_n + 1
    u = math.floor(idx / #data.reads) + 1
    item = data.reads[idx % #data.reads + 1]
    last_route = item.name
    sent_at = common.now_us()
    return common.get(item.path, "Bearer " .. data.tokens[u])
  end
  if pending then
    u, item = pending[1], pending[2]
    pending = nil
    last_route, last_write = item.name, nil
    sent_at = common.now_us()
    return common.get(item.path, "Bearer " .. data.tokens[u])
  end
  u = search(data.cdf, math.random())
  local headers = {Authorization = "Bearer " .. data.tokens[u]}
  if math.random() < data.write_share then
    item = data.writes[search(write_cdf, math.random())]
    headers["Content-Type"] = "application/json"
    body = bodies[item.body](u)
    last_write = reread and data.rereads[item.name] and {u, data.rereads[item.name]} or nil
  else
    last_write = nil
    item = data.reads[search(read_cdf, math.random())]
    last_route = item.name
    sent_at = common.now_us()
    return common.get(item.path, headers.Authorization)
  end
  last_route = item.name
  sent_at = common.now_us()
  return wrk.format(item.method or "GET", item.path, headers, body)
end

function response(status, headers, body)
  local elapsed = common.now_us() - sent_at
  local xc = headers["X-Cache"] or headers["x-cache"] or "none"
  if reread and string.sub(last_route, 1, 7) == "reread:" then
    local cs = headers["Cache-Status"] or headers["cache-status"] or ""
    if string.find(cs, "collapsed", 1, true) then xc = xc .. "-collapsed" end
  end
  if last_write and status >= 200 and status < 300 then pending = last_write end
  out:write(last_route, " ", xc, " ", status, " ", math.floor(elapsed + 0.5), "\n")
  if max > 0 then
    max = max - 1
    if max == 0 then common.finish() end
  end
end

function done(summary, latency, requests)
  common.write_report(summary, latency, nil)
end

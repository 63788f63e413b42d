-- Shared helpers of the bench's wrk scripts (loaded with dofile by each script, in every Lua state).
--   now_us()            monotonic clock in microseconds (LuaJIT ffi, clock_gettime)
--   pacer(rate)         returns a delay() that spreads this thread's sends evenly at `rate` per second
--                       (fixed schedule; a late slot is sent at once, debts are not accumulated)
--   write_report(s, l, extra)  the run's summary and latency percentiles as JSON into $BENCH_OUT
--   get(path, authorization)   a GET with Host, then Authorization: always the same bytes for the same
--                       request, in every thread (wrk.format orders fields by a Lua table's pairs(),
--                       which differed between wrk's threads and runs)
-- Environment: BENCH_OUT (report path, required), BENCH_RATE (total requests/s, optional, paced runs),
--              BENCH_THREADS (wrk -t, to split BENCH_RATE), BENCH_MAX (requests per thread, optional).
local ffi = require("ffi")
pcall(ffi.cdef, [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]])
local ts = ffi.new("bench_timespec")

local M = {}

function M.now_us()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

function M.pacer(rate)
  local period_us = 1000000 / rate
  local next_slot = nil
  return function()
    local now = M.now_us()
    if next_slot == nil then
      next_slot = now + math.random() * period_us  -- a random phase, so threads do not send together
    else
      next_slot = next_slot + period_us
      if next_slot < now then next_slot = now end  -- late: send now, without running up a debt
    end
    return math.floor((next_slot - now) / 1000)  -- wrk takes whole milliseconds
  end
end

-- Stop this thread and leave a marker file ($BENCH_OUT.done.<id>): wrk itself sleeps for the whole
-- duration, so the harness interrupts it (SIGINT) once every thread has left its marker.
-- A real client sends its fields in one order; wrk.format's order changed with each Lua state's string
-- hashing, so one user's request could come as two different heads (one per order), which the proxy
-- frames and memoises as two (bench (f), 2026-12-07: 124k heads for 100k keys).
function M.get(path, authorization)
  local host = wrk.headers["Host"]
  if host == nil then  -- wrk's own check of request() in its main state, before any thread's init
    return wrk.format("GET", path, {Authorization = authorization})
  end
  return "GET " .. path .. " HTTP/1.1\r\nHost: " .. host .. "\r\nAuthorization: " .. authorization .. "\r\n\r\n"
end

function M.finish()
  local f = io.open(os.getenv("BENCH_OUT") .. ".done." .. tostring({}):gsub("[^%w]", ""), "w")
  if f then f:close() end
  wrk.thread:stop()
end

-- BENCH_MAX: stop this thread after that many responses (every run is bounded in count and time).
function M.counter()
  local max = tonumber(os.getenv("BENCH_MAX") or "0")
  local n = 0
  return function()
    n = n + 1
    if max > 0 and n == max then M.finish() end
  end
end

M.PERCENTILES = {0.1, 1, 5, 10, 20, 30, 40, 50, 60, 70, 75, 80, 90, 95, 97.5, 99, 99.5, 99.9, 99.95, 99.99}

function M.write_report(summary, latency, extra)
  local f = assert(io.open(assert(os.getenv("BENCH_OUT"), "BENCH_OUT not set"), "w"))
  local e = summary.errors
  f:write(string.format('{"duration_us": %d, "requests": %d, "bytes": %d, ', summary.duration,
    summary.requests, summary.bytes))
  f:write(string.format('"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ',
    e.connect, e.read, e.write, e.status, e.timeout))
  f:write(string.format('"latency_us": {"min": %d, "max": %d, "mean": %.1f, "stdev": %.1f}, ',
    latency.min, latency.max, latency.mean, latency.stdev))
  local parts = {}
  for _, p in ipairs(M.PERCENTILES) do
    parts[#parts + 1] = string.format("[%g, %d]", p, latency:percentile(p))
  end
  parts[#parts + 1] = string.format("[100, %d]", latency.max)
  f:write('"percentiles_us": [' .. table.concat(parts, ", ") .. "]")
  if extra then f:write(", " .. extra) end
  f:write("}\n")
  f:close()
end

return M

-- Shared by the wrk scripts in bench/: request set-up from the environment and
-- one machine-readable summary line that bench/run.sh parses.
--
-- Loaded with dofile() from each script (wrk runs the script once per thread
-- and once more in its main Lua state, so every state gets these functions).
--
-- Environment (read by every script):
--   BENCH_MODEL       "model" field of the request (default sim-model)
--   BENCH_MAX_TOKENS  "max_tokens" (each script has its own default)

local M = {}

-- Returns the value of environment variable <name>, or <default> when unset or empty.
function M.env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

-- Returns the value of <name> as an integer >= 1, or <default>. A bad value aborts
-- the run: a benchmark with the wrong request is worse than none.
function M.env_int(name, default)
  local v = M.env(name, nil)
  if v == nil then return default end
  local n = tonumber(v)
  if n == nil or n < 1 or n ~= math.floor(n) then
    error(name .. " must be an integer >= 1, got '" .. v .. "'")
  end
  return n
end

-- Sets wrk's static request: POST <path> with the JSON <body>. With no request()
-- function in the script, wrk formats it once and sends the same bytes every time.
function M.post_json(path, body)
  wrk.method = "POST"
  wrk.path = path
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

-- Prints one line "BENCH key=value ..." with the run's totals and latency
-- percentiles in microseconds. <extra> is a list of {key, value} pairs appended
-- in order (values are numbers). run.sh reads this line, not wrk's text report.
function M.report(summary, latency, extra)
  local e = summary.errors
  local secs = summary.duration / 1e6
  local fields = {
    { "requests", summary.requests },
    { "duration_us", summary.duration },
    { "rps", string.format("%.1f", summary.requests / secs) },
    { "bytes", summary.bytes },
    { "p50_us", latency:percentile(50) },
    { "p90_us", latency:percentile(90) },
    { "p99_us", latency:percentile(99) },
    { "max_us", latency.max },
    { "err_connect", e.connect },
    { "err_read", e.read },
    { "err_write", e.write },
    { "err_timeout", e.timeout },
    { "err_status", e.status },
  }
  for _, kv in ipairs(extra or {}) do fields[#fields + 1] = kv end
  local parts = {}
  for _, kv in ipairs(fields) do parts[#parts + 1] = kv[1] .. "=" .. tostring(kv[2]) end
  io.write("BENCH " .. table.concat(parts, " ") .. "\n")
end

return M

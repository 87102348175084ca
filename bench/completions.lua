-- wrk script: small non-streaming text completions (POST /v1/completions).
--
-- Measures the per-request cost of a proxy: the replica answers a short prompt
-- with BENCH_MAX_TOKENS tokens (default 1) and "ignore_eos", so every response
-- has the same size (~370 bytes). With the simulator at --speed 1000 its engine
-- steps take microseconds, so the proxy and the loopback path dominate.
--
--   wrk -t1 -c64 -d10s -s bench/completions.lua http://127.0.0.1:8000
--
-- No request()/response() hooks: wrk sends pre-formatted bytes, the cheapest
-- client possible. Non-2xx answers are counted by wrk (err_status).

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

local max_tokens = common.env_int("BENCH_MAX_TOKENS", 1)
local model = common.env("BENCH_MODEL", "sim-model")

common.post_json("/v1/completions", string.format(
  '{"model":"%s","prompt":"Say hello to the benchmark.","max_tokens":%d,' ..
  '"temperature":0,"ignore_eos":true}', model, max_tokens))

function done(summary, latency, requests)
  common.report(summary, latency, { { "max_tokens", max_tokens } })
end

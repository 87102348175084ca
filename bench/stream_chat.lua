-- wrk script: streaming chat completions (POST /v1/chat/completions, "stream": true).
--
-- Each response is an SSE stream of BENCH_MAX_TOKENS tokens (default 64, with
-- "ignore_eos" so none stops early) in chunked transfer encoding: one role
-- event, one event per token, then "data: [DONE]". wrk's latency is the time to
-- the end of the stream.
--
--   wrk -t1 -c64 -d10s --timeout 60s -s bench/stream_chat.lua http://127.0.0.1:8000
--
-- The response() hook counts, per thread, the SSE events ("data: " lines), the
-- token events (a "delta" with "content" other than the role event) and the
-- streams that did not end in [DONE]; done() sums them over threads and prints
-- events/s and tokens/s. wrk hands response() the de-chunked body.

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

local max_tokens = common.env_int("BENCH_MAX_TOKENS", 64)
local model = common.env("BENCH_MODEL", "sim-model")

common.post_json("/v1/chat/completions", string.format(
  '{"model":"%s","messages":[{"role":"user","content":"Tell me a long story about a proxy."}],' ..
  '"max_tokens":%d,"temperature":0,"ignore_eos":true,"stream":true}', model, max_tokens))

-- Per-thread counters (globals so that thread:get() can read them).
events = 0
tokens = 0
incomplete = 0
body_bytes = 0

-- Returns how many times the plain string <needle> occurs in <s>.
local function count(s, needle)
  local n, pos = 0, 1
  while true do
    local i = string.find(s, needle, pos, true)
    if i == nil then return n end
    n = n + 1
    pos = i + #needle
  end
end

function response(status, headers, body)
  body_bytes = body_bytes + #body
  events = events + count(body, "data: ")
  tokens = tokens + count(body, '"delta":{"content":')
  if status ~= 200 or string.find(body, "data: [DONE]", 1, true) == nil then
    incomplete = incomplete + 1
  end
end

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function done(summary, latency, requests)
  local ev, tok, inc, bb = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    ev = ev + t:get("events")
    tok = tok + t:get("tokens")
    inc = inc + t:get("incomplete")
    bb = bb + t:get("body_bytes")
  end
  local secs = summary.duration / 1e6
  common.report(summary, latency, {
    { "max_tokens", max_tokens },
    { "events", ev },
    { "tokens", tok },
    { "incomplete", inc },
    { "body_bytes", bb },
    { "events_per_s", string.format("%.1f", ev / secs) },
    { "tokens_per_s", string.format("%.1f", tok / secs) },
  })
end

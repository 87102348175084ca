"""Integration tests of vllm-sim (tools/vllm-sim): wire format, determinism,
errors, metrics, the engine model and fault injection. Stdlib only; the binary
comes from $VLLM_SIM_BIN. Runs in a few seconds (--speed makes steps fast)."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from simtools import (DEFAULT_CREATED, build_request, http_json, http_raw, http_request,  # noqa: E402
                      metric_value, metrics, parse_prometheus, parse_response, parse_sse,
                      sim_binary, sim_config, sim_stats, start_sim, stream_chat,
                      stream_completion, wait_until)

FAST = ("--speed", "1000", "--created", str(DEFAULT_CREATED))
SIM = None


def setUpModule():
    global SIM
    SIM = start_sim(*FAST, "--model", "sim-model", "--model", "alias-model")


def tearDownModule():
    assert SIM.stop() == 0


def chat_body(content="Hello, simulator!", max_tokens=8, stream=False, **extra):
    body = {"model": "sim-model", "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, "stream": stream}
    body.update(extra)
    return body


def open_stream(port, body, path="/v1/chat/completions", headers=None):
    """Starts a streaming request and returns the socket once the response
    head arrived (the caller reads or closes it)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(build_request("POST", path, body, headers, close=False))
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(4096)
        if not b:
            raise AssertionError("connection closed before the response head")
        head += b
    return s


class WireFormat(unittest.TestCase):
    def test_stream_chat_bytes(self):
        res = stream_chat(SIM.port, max_tokens=6, headers={"X-Request-Id": "fmt-1"})
        self.assertEqual(res.status, 200)
        self.assertEqual(res.headers["content-type"], "text/event-stream; charset=utf-8")
        self.assertEqual(res.headers["transfer-encoding"], "chunked")
        self.assertTrue(res.complete)
        self.assertTrue(res.wire.endswith(b"\r\n0\r\n\r\n"))
        # Chunk 1: role event + first token; then one event per chunk; the
        # last chunk: last token (finish_reason), usage, [DONE].
        per_chunk = [parse_sse(c) for c in res.chunks]
        self.assertEqual(len(per_chunk), 6)
        self.assertEqual(len(per_chunk[0]), 2)
        for c in per_chunk[1:-1]:
            self.assertEqual(len(c), 1)
        self.assertEqual(len(per_chunk[-1]), 3)
        self.assertEqual(per_chunk[-1][2], "[DONE]")

        sse, events = res
        self.assertTrue(sse.startswith(b'data: {"id":"chatcmpl-fmt-1","object":"chat.completion'
                                       b'.chunk","created":1700000000,"model":"sim-model",'
                                       b'"choices":[{"index":0,"delta":{"role":"assistant",'
                                       b'"content":""},"logprobs":null,"finish_reason":null}]}'
                                       b"\n\n"))
        role = events[0]
        self.assertEqual(list(role), ["id", "object", "created", "model", "choices"])
        self.assertEqual(list(role["choices"][0]), ["index", "delta", "logprobs",
                                                    "finish_reason"])
        tok = events[1]
        self.assertEqual(list(tok["choices"][0]["delta"]), ["content"])
        self.assertIsNone(tok["choices"][0]["finish_reason"])
        last = events[-3]
        self.assertEqual(list(last["choices"][0]), ["index", "delta", "logprobs",
                                                    "finish_reason", "stop_reason"])
        self.assertEqual(last["choices"][0]["finish_reason"], "length")
        self.assertIsNone(last["choices"][0]["stop_reason"])
        usage = events[-2]
        self.assertEqual(usage["choices"], [])
        self.assertEqual(list(usage["usage"]), ["prompt_tokens", "total_tokens",
                                                "completion_tokens"])
        # "Hello, simulator!" = 17 chars -> ceil(17/4) = 5, + 4 per message.
        self.assertEqual(usage["usage"], {"prompt_tokens": 9, "total_tokens": 15,
                                          "completion_tokens": 6})
        self.assertEqual(len(res.tokens()), 6)
        for ev in events[:-1]:
            self.assertEqual(ev["id"], "chatcmpl-fmt-1")
            self.assertEqual(ev["created"], DEFAULT_CREATED)

    def test_stream_chat_without_usage(self):
        res = stream_chat(SIM.port, max_tokens=3, include_usage=False)
        self.assertEqual(res.events[-1], "[DONE]")
        self.assertIsNone(res.usage())
        self.assertEqual(len(res.tokens()), 3)
        self.assertRegex(res.events[0]["id"], r"^chatcmpl-[0-9a-f]{32}$")

    def test_stream_completion_bytes(self):
        res = stream_completion(SIM.port, prompt="abcdefgh", max_tokens=4,
                                headers={"X-Request-Id": "c-1"})
        self.assertEqual(res.status, 200)
        self.assertTrue(res.complete)
        self.assertEqual(len(res.chunks), 4)
        ev = res.events[0]
        self.assertEqual(list(ev), ["id", "object", "created", "model", "choices", "usage"])
        self.assertEqual(ev["object"], "text_completion")
        self.assertEqual(ev["id"], "cmpl-c-1")
        self.assertIsNone(ev["usage"])
        self.assertEqual(list(ev["choices"][0]), ["index", "text", "logprobs", "finish_reason",
                                                  "stop_reason"])
        self.assertIn(b'"choices":[{"index":0,"text":"', res.sse)
        self.assertEqual(res.finish_reason(), "length")
        self.assertEqual(res.usage(), {"prompt_tokens": 2, "total_tokens": 6,
                                       "completion_tokens": 4})
        self.assertEqual(res.events[-1], "[DONE]")

    def test_non_stream_matches_stream(self):
        hdr = {"X-Request-Id": "same-1"}
        streamed = stream_chat(SIM.port, max_tokens=12, headers=hdr)
        status, headers, body = http_request(SIM.port, "POST", "/v1/chat/completions",
                                             chat_body(max_tokens=12, ignore_eos=True),
                                             headers=hdr)
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(int(headers["content-length"]), len(body))
        obj = json.loads(body)
        self.assertEqual(list(obj), ["id", "object", "created", "model", "choices", "usage",
                                     "prompt_logprobs", "kv_transfer_params"])
        self.assertEqual(obj["object"], "chat.completion")
        self.assertEqual(obj["id"], "chatcmpl-same-1")
        choice = obj["choices"][0]
        self.assertEqual(choice["message"]["role"], "assistant")
        self.assertEqual(choice["message"]["content"], "".join(streamed.tokens()))
        self.assertEqual(choice["finish_reason"], "length")
        self.assertEqual(obj["usage"]["completion_tokens"], 12)
        self.assertEqual(obj["usage"]["total_tokens"], obj["usage"]["prompt_tokens"] + 12)

    def test_non_stream_completion(self):
        status, obj = http_json(SIM.port, "POST", "/v1/completions",
                                {"model": "alias-model", "prompt": [1, 2, 3], "max_tokens": 5,
                                 "ignore_eos": True})
        self.assertEqual(status, 200)
        self.assertEqual(obj["object"], "text_completion")
        self.assertEqual(obj["model"], "alias-model")
        self.assertEqual(obj["usage"], {"prompt_tokens": 3, "total_tokens": 8,
                                        "completion_tokens": 5, "prompt_tokens_details": None})
        self.assertEqual(obj["choices"][0]["finish_reason"], "length")

    def test_early_stop(self):
        seen = set()
        for i in range(12):
            res = stream_chat(SIM.port, max_tokens=20, ignore_eos=False,
                              headers={"X-Request-Id": "stop-%d" % i})
            n = len(res.tokens())
            self.assertGreaterEqual(n, 10)
            self.assertLessEqual(n, 20)
            self.assertEqual(res.finish_reason(), "length" if n == 20 else "stop")
            seen.add(n)
        self.assertGreater(len(seen), 1, "stop points should vary between requests")

    def test_default_max_tokens_capped_by_context(self):
        with start_sim(*FAST, "--max-model-len", "64", "--kv-blocks", "16",
                       "--default-max-tokens", "1000") as sim:
            res = stream_completion(sim.port, prompt="x" * 40, max_tokens=None)
            self.assertEqual(res.usage()["prompt_tokens"], 10)
            self.assertEqual(len(res.tokens()), 54)

    def test_escaping_and_utf8(self):
        res = stream_completion(SIM.port, max_tokens=400, headers={"X-Request-Id": "esc"})
        text = "".join(res.tokens())
        for needle in ('"', "\\", "\n", "é"):
            self.assertIn(needle, text)
        self.assertIn(b"\\\"", res.sse)
        self.assertIn(b"\\\\", res.sse)
        self.assertIn("café".encode(), res.sse)  # non-ASCII sent raw, as pydantic does

    def test_keepalive_and_pipelining(self):
        r1 = build_request("POST", "/v1/completions",
                           {"prompt": "a", "max_tokens": 3, "stream": True, "ignore_eos": True},
                           close=False)
        r2 = build_request("GET", "/health", close=False)
        r3 = build_request("POST", "/v1/completions",
                           {"prompt": "b", "max_tokens": 2, "ignore_eos": True})
        raw = http_raw(SIM.port, r1 + r2 + r3)
        a = parse_response(raw)
        self.assertTrue(a.complete)
        self.assertEqual(len(a.chunks), 3)
        b = parse_response(a.rest)
        self.assertEqual(b.status, 200)
        c = parse_response(b.rest)
        self.assertEqual(json.loads(c.body)["usage"]["completion_tokens"], 2)
        self.assertEqual(c.rest, b"")

    def test_chunked_request_body(self):
        body = json.dumps(chat_body(max_tokens=2, ignore_eos=True)).encode()
        req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
        half = len(body) // 2
        for part in (body[:half], body[half:]):
            req += b"%x\r\n%s\r\n" % (len(part), part)
        req += b"0\r\n\r\n"
        r = parse_response(http_raw(SIM.port, req))
        self.assertEqual(r.status, 200)
        self.assertEqual(json.loads(r.body)["usage"]["completion_tokens"], 2)

    def test_expect_continue(self):
        body = json.dumps(chat_body(max_tokens=1)).encode()
        with socket.create_connection(("127.0.0.1", SIM.port), timeout=10) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
            self.assertTrue(s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n"))
            s.sendall(body)
            raw = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                raw += b
        self.assertEqual(parse_response(raw).status, 200)

    def test_prompt_token_rule(self):
        def prompt_tokens(path, body):
            status, obj = http_json(SIM.port, "POST", path, body)
            self.assertEqual(status, 200, obj)
            return obj["usage"]["prompt_tokens"]

        self.assertEqual(prompt_tokens("/v1/completions", {"prompt": "abcdefghi",
                                                           "max_tokens": 1}), 3)
        self.assertEqual(prompt_tokens("/v1/completions", {"prompt": "ééé", "max_tokens": 1}), 1)
        self.assertEqual(prompt_tokens("/v1/completions", {"prompt": [[5, 6, 7, 8]],
                                                           "max_tokens": 1}), 4)
        msgs = [{"role": "system", "content": "12345"},
                {"role": "user", "content": [{"type": "text", "text": "abcde"}]}]
        self.assertEqual(prompt_tokens("/v1/chat/completions", {"messages": msgs,
                                                                "max_tokens": 1}), 3 + 8)


class Determinism(unittest.TestCase):
    def test_same_request_same_bytes(self):
        hdr = {"X-Request-Id": "det-42"}
        a = stream_chat(SIM.port, max_tokens=30, headers=hdr, ignore_eos=False)
        b = stream_chat(SIM.port, max_tokens=30, headers=hdr, ignore_eos=False)
        self.assertEqual(a.wire, b.wire)
        with start_sim(*FAST) as other:
            c = stream_chat(other.port, max_tokens=30, headers=hdr, ignore_eos=False)
        self.assertEqual(a.wire, c.wire)
        d = stream_chat(SIM.port, max_tokens=30, headers={"X-Request-Id": "det-43"},
                        ignore_eos=False)
        self.assertNotEqual(a.tokens(), d.tokens())

    def test_seed_changes_text(self):
        hdr = {"X-Request-Id": "seeded"}
        a = stream_completion(SIM.port, max_tokens=20, headers=hdr)
        with start_sim(*FAST, "--seed", "7") as other:
            b = stream_completion(other.port, max_tokens=20, headers=hdr)
        self.assertNotEqual(a.tokens(), b.tokens())


class Errors(unittest.TestCase):
    def check_error(self, status, obj, code, typ):
        self.assertEqual(status, code)
        self.assertEqual(list(obj), ["error"])
        self.assertEqual(list(obj["error"]), ["message", "type", "param", "code"])
        self.assertEqual(obj["error"]["type"], typ)
        self.assertEqual(obj["error"]["code"], code)
        self.assertIsNone(obj["error"]["param"])
        return obj["error"]["message"]

    def test_unknown_model(self):
        status, obj = http_json(SIM.port, "POST", "/v1/chat/completions",
                                dict(chat_body(), model="gpt-9"))
        msg = self.check_error(status, obj, 404, "NotFoundError")
        self.assertIn("gpt-9", msg)

    def test_context_length(self):
        status, obj = http_json(SIM.port, "POST", "/v1/completions",
                                {"prompt": "abcd" * 100, "max_tokens": 8100})
        msg = self.check_error(status, obj, 400, "BadRequestError")
        self.assertIn("maximum context length is 8192 tokens", msg)
        self.assertIn("8200", msg)
        status, obj = http_json(SIM.port, "POST", "/v1/completions",
                                {"prompt": "abcd" * 9000, "stream": True})
        self.check_error(status, obj, 400, "BadRequestError")

    def test_bad_bodies(self):
        for path, body in [("/v1/chat/completions", "{not json"),
                           ("/v1/chat/completions", {"model": "sim-model"}),
                           ("/v1/chat/completions", {"messages": []}),
                           ("/v1/chat/completions", {"messages": "hi"}),
                           ("/v1/completions", {"model": "sim-model"}),
                           ("/v1/completions", {"prompt": "x", "max_tokens": 0}),
                           ("/v1/completions", "[1,2]")]:
            status, _, data = http_request(SIM.port, "POST", path, body)
            self.check_error(status, json.loads(data), 400, "BadRequestError")

    def test_paths_and_methods(self):
        status, _, data = http_request(SIM.port, "GET", "/v1/nope")
        self.check_error(status, json.loads(data), 404, "NotFoundError")
        status, headers, data = http_request(SIM.port, "GET", "/v1/chat/completions")
        self.assertEqual(status, 405)
        self.assertEqual(headers["allow"], "POST")
        status, _, _ = http_request(SIM.port, "POST", "/health", b"")
        self.assertEqual(status, 405)

    def test_malformed_http(self):
        raw = http_raw(SIM.port, b"GARBAGE\r\n\r\n")
        self.assertEqual(parse_response(raw).status, 400)

    def test_limits(self):
        status, _, _ = http_request(SIM.port, "GET", "/health", headers={"X-Big": "x" * 70000})
        self.assertEqual(status, 431)
        status, _, _ = http_request(SIM.port, "GET", "/health",
                                    headers={"X-H%d" % i: "v" for i in range(200)})
        self.assertEqual(status, 431)
        raw = http_raw(SIM.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Length: 999999999\r\n\r\n")
        self.assertEqual(parse_response(raw).status, 413)


class Endpoints(unittest.TestCase):
    def test_models(self):
        status, obj = http_json(SIM.port, "GET", "/v1/models")
        self.assertEqual(status, 200)
        self.assertEqual(obj["object"], "list")
        self.assertEqual([m["id"] for m in obj["data"]], ["sim-model", "alias-model"])
        m = obj["data"][0]
        self.assertEqual(list(m), ["id", "object", "created", "owned_by", "root", "parent",
                                   "max_model_len", "permission"])
        self.assertEqual((m["object"], m["owned_by"], m["root"], m["parent"]),
                         ("model", "vllm", "sim-model", None))
        self.assertEqual(m["created"], DEFAULT_CREATED)
        self.assertEqual(m["max_model_len"], 8192)
        self.assertEqual(m["permission"][0]["object"], "model_permission")

    def test_health_runtime_503(self):
        self.assertEqual(http_request(SIM.port, "GET", "/health")[:3:2], (200, b""))
        try:
            self.assertEqual(sim_config(SIM.port, health_status=503), {})
            self.assertEqual(http_request(SIM.port, "GET", "/health")[0], 503)
        finally:
            sim_config(SIM.port)
        self.assertEqual(http_request(SIM.port, "GET", "/health")[0], 200)
        with start_sim(*FAST, "--fault-health-503") as sim:
            self.assertEqual(http_request(sim.port, "GET", "/health")[0], 503)
        status, _, _ = http_request(SIM.port, "POST", "/sim/config", {"bogus": 1})
        self.assertEqual(status, 400)

    def test_last_request_headers(self):
        http_request(SIM.port, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1},
                     headers={"X-Trace-Me": "yes", "X-Request-Id": "hdr-1"})
        hdrs = sim_stats(SIM.port)["last_request_headers"]
        self.assertEqual(hdrs["x-trace-me"], "yes")
        self.assertEqual(hdrs["x-request-id"], "hdr-1")
        self.assertEqual(hdrs["connection"], "close")


def check_exposition(test, fams, engines, model="sim-model"):
    """Every family vLLM-sim promises, with sorted labels and sane histograms."""
    gauges = ["vllm:num_requests_running", "vllm:num_requests_waiting",
              "vllm:kv_cache_usage_perc", "vllm:cache_config_info"]
    counters = ["vllm:prefix_cache_queries", "vllm:prefix_cache_hits", "vllm:prompt_tokens",
                "vllm:generation_tokens", "vllm:num_preemptions", "vllm:request_success",
                "vllm_sim:aborted_requests"]
    histograms = ["vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
                  "vllm:e2e_request_latency_seconds"]
    for name in gauges + counters + histograms:
        test.assertIn(name, fams)
        test.assertTrue(fams[name].help, name)
    for name in gauges:
        test.assertEqual(fams[name].type, "gauge")
    for name in counters:
        fam = fams[name]
        test.assertEqual(fam.type, "counter")
        totals = [s for s in fam.samples if s[0] == name + "_total"]
        created = [s for s in fam.samples if s[0] == name + "_created"]
        test.assertEqual(len(totals), len(created))
        test.assertEqual(len(totals), engines * (3 if name == "vllm:request_success" else 1))
    for fam in fams.values():
        for sname, labels, value in fam.samples:
            keys = [k for k, _ in labels]
            test.assertEqual(keys, sorted(keys), sname)
            d = dict(labels)
            if fam.name != "vllm:cache_config_info":  # vLLM gives it no model_name
                test.assertEqual(d.get("model_name"), model)
            test.assertIn(d.get("engine"), [str(e) for e in range(engines)])
            test.assertFalse(math.isnan(value))
    reasons = {dict(s[1])["finished_reason"] for s in fams["vllm:request_success"].samples}
    test.assertEqual(reasons, {"abort", "length", "stop"})
    for name in histograms:
        fam = fams[name]
        test.assertEqual(fam.type, "histogram")
        for e in range(engines):
            mine = [s for s in fam.samples if dict(s[1])["engine"] == str(e)]
            buckets = [s for s in mine if s[0] == name + "_bucket"]
            les = [dict(s[1])["le"] for s in buckets]
            test.assertEqual(les[-1], "+Inf")
            bounds = [float(x) for x in les[:-1]]
            test.assertEqual(bounds, sorted(bounds))
            counts = [s[2] for s in buckets]
            test.assertEqual(counts, sorted(counts), "buckets must be cumulative")
            count = [s[2] for s in mine if s[0] == name + "_count"]
            test.assertEqual(count, [counts[-1]])
            test.assertEqual(len([s for s in mine if s[0] == name + "_sum"]), 1)
            test.assertEqual(len([s for s in mine if s[0] == name + "_created"]), 1)
    info = fams["vllm:cache_config_info"].samples
    test.assertEqual(len(info), engines)
    test.assertEqual(dict(info[0][1])["block_size"], "16")


class Metrics(unittest.TestCase):
    def test_exposition(self):
        with start_sim(*FAST, "--engines", "2", "--kv-blocks", "1234") as sim:
            for i in range(4):
                stream_chat(sim.port, max_tokens=5, headers={"X-Request-Id": "m%d" % i})
            status, headers, body = http_request(sim.port, "GET", "/metrics")
            self.assertEqual(status, 200)
            self.assertTrue(headers["content-type"].startswith("text/plain"))
            text = body.decode()
            self.assertIn("# TYPE vllm:prompt_tokens counter\n", text)
            self.assertIn('vllm:generation_tokens_total{engine="0",model_name="sim-model"} 10.0',
                          text)
            self.assertIn('le="+Inf"', text)
            self.assertIn('num_gpu_blocks="1234"', text)
            fams = parse_prometheus(text)
            check_exposition(self, fams, engines=2)
            # Idle engines take turns: both served two requests of 5 tokens.
            for e in ("0", "1"):
                self.assertEqual(metric_value(fams, "vllm:generation_tokens_total", engine=e),
                                 10)
                self.assertEqual(metric_value(fams, "vllm:request_success_total", engine=e,
                                              finished_reason="length"), 2)
                self.assertEqual(metric_value(fams, "vllm:time_to_first_token_seconds_count",
                                              engine=e), 2)
                self.assertEqual(metric_value(fams, "vllm:inter_token_latency_seconds_count",
                                              engine=e), 8)
            self.assertEqual(metric_value(fams, "vllm:prompt_tokens_total"), 4 * 9)


class EngineModel(unittest.TestCase):
    def test_long_prompt_delays_short_request(self):
        flags = ("--max-num-batched-tokens", "256", "--speed", "2", "--created", "1")
        with start_sim(*flags) as sim:
            alone = min(stream_completion(sim.port, prompt="short", max_tokens=1).ttft_s
                        for _ in range(3))
            results = {}

            def long_req():
                results["long"] = stream_completion(sim.port, prompt="x" * 16000, max_tokens=1)

            t = threading.Thread(target=long_req)
            t.start()
            wait_until(lambda: sim_stats(sim.port)["running"] == 1)
            behind = stream_completion(sim.port, prompt="short", max_tokens=1).ttft_s
            t.join()
            # 4000 prompt tokens in 256-token chunks: ~16 steps before the short
            # request gets any budget.
            self.assertGreater(behind, alone * 3)
            self.assertGreater(behind, 0.03)
            self.assertGreater(results["long"].ttft_s, behind * 0.8)

    def test_max_num_seqs_and_disconnect(self):
        with start_sim("--max-num-seqs", "2", "--speed", "1", "--created", "1") as sim:
            socks = [open_stream(sim.port, chat_body(max_tokens=2000, stream=True,
                                                     ignore_eos=True)) for _ in range(5)]
            st = wait_until(lambda: (lambda s: s if s["running"] == 2 and s["waiting"] == 3
                                     else None)(sim_stats(sim.port)))
            self.assertEqual(st["connections_open"], 6)
            fams = metrics(sim.port)
            self.assertEqual(metric_value(fams, "vllm:num_requests_running"), 2)
            self.assertEqual(metric_value(fams, "vllm:num_requests_waiting"), 3)
            self.assertGreater(metric_value(fams, "vllm:kv_cache_usage_perc"), 0)
            # A running stream's client goes away: aborted, a waiting one takes its place.
            socks[0].recv(4096)
            socks[0].close()
            wait_until(lambda: (lambda s: s["requests_aborted"] == 1 and s["running"] == 2
                                and s["waiting"] == 2)(sim_stats(sim.port)))
            for s in socks[1:]:
                s.close()
            st = wait_until(lambda: (lambda s: s if s["requests_aborted"] == 5 else None)(
                sim_stats(sim.port)))
            self.assertEqual((st["running"], st["waiting"]), (0, 0))
            fams = metrics(sim.port)
            self.assertEqual(metric_value(fams, "vllm:request_success_total",
                                          finished_reason="abort"), 5)
            self.assertEqual(metric_value(fams, "vllm_sim:aborted_requests_total"), 5)
            self.assertEqual(metric_value(fams, "vllm:kv_cache_usage_perc"), 0)

    def test_preemption(self):
        flags = ("--kv-blocks", "8", "--block-size", "16", "--max-model-len", "128",
                 "--speed", "10", "--no-prefix-caching", "--created", "1")
        with start_sim(*flags) as sim:
            out = [None] * 4

            def run(i):
                out[i] = stream_completion(sim.port, prompt="p%d" % i * 20, max_tokens=100,
                                           headers={"X-Request-Id": "pre-%d" % i})

            threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for r in out:
                self.assertTrue(r.complete)
                self.assertEqual(len(r.tokens()), 100)
            fams = metrics(sim.port)
            self.assertGreater(metric_value(fams, "vllm:num_preemptions_total"), 0)
            self.assertEqual(metric_value(fams, "vllm:request_success_total",
                                          finished_reason="length"), 4)
            # Recomputed requests still produce the same bytes.
            again = stream_completion(sim.port, prompt="p0" * 20, max_tokens=100,
                                      headers={"X-Request-Id": "pre-0"})
            self.assertEqual(again.wire, out[0].wire)

    def test_prefix_cache_hits(self):
        with start_sim(*FAST) as sim:
            prompt = "The quick brown fox jumps over the lazy dog. " * 40
            stream_completion(sim.port, prompt=prompt, max_tokens=2)
            fams = metrics(sim.port)
            self.assertEqual(metric_value(fams, "vllm:prefix_cache_hits_total"), 0)
            stream_completion(sim.port, prompt=prompt, max_tokens=2)
            fams = metrics(sim.port)
            queries = metric_value(fams, "vllm:prefix_cache_queries_total")
            hits = metric_value(fams, "vllm:prefix_cache_hits_total")
            self.assertEqual(queries, 2 * math.ceil(len(prompt) / 4))
            self.assertGreaterEqual(hits, 400)


class Faults(unittest.TestCase):
    def test_close_after_tokens(self):
        with start_sim(*FAST, "--fault-close-after-tokens", "3") as sim:
            res = stream_chat(sim.port, max_tokens=10)
            self.assertEqual(res.status, 200)
            self.assertFalse(res.complete)
            self.assertEqual(len(res.tokens()), 3)
            self.assertNotIn("[DONE]", res.events)
            wait_until(lambda: sim_stats(sim.port)["requests_aborted"] == 1)
            # A stream shorter than the cut finishes normally.
            self.assertTrue(stream_chat(sim.port, max_tokens=2).complete)

    def test_close_after_tokens_runtime(self):
        try:
            sim_config(SIM.port, fault_close_after_tokens=2)
            res = stream_completion(SIM.port, max_tokens=10)
            self.assertFalse(res.complete)
            self.assertEqual(len(res.tokens()), 2)
        finally:
            sim_config(SIM.port)
        self.assertTrue(stream_completion(SIM.port, max_tokens=10).complete)

    def test_stall_first_byte(self):
        with start_sim(*FAST, "--fault-stall-first-byte-ms", "300") as sim:
            res = stream_chat(sim.port, max_tokens=2)
            self.assertTrue(res.complete)
            self.assertGreaterEqual(res.first_byte_s, 0.29)
        try:
            sim_config(SIM.port, fault_stall_first_byte_ms=200)
            t0 = time.monotonic()
            status, _, _ = http_request(SIM.port, "POST", "/v1/completions",
                                        {"prompt": "x", "max_tokens": 1})
            self.assertEqual(status, 200)
            self.assertGreaterEqual(time.monotonic() - t0, 0.19)
        finally:
            sim_config(SIM.port)

    def test_runtime_speed(self):
        with start_sim("--speed", "100", "--created", "1") as sim:
            fast = stream_completion(sim.port, max_tokens=10)
            sim_config(sim.port, speed=2)
            slow = stream_completion(sim.port, max_tokens=10)
            self.assertTrue(fast.complete and slow.complete)
            e2e = metric_value(metrics(sim.port), "vllm:e2e_request_latency_seconds_sum")
            self.assertGreater(e2e, 10 * 0.008 / 2 * 0.8)


LORA = ("--lora-modules", "sql=/adapters/sql", "chat=/adapters/chat")


def lora_info(port):
    """The vllm:lora_requests_info samples as [(labels dict, value)], checking
    that their label names are sorted."""
    fam = metrics(port)["vllm:lora_requests_info"]
    out = []
    for name, labels, value in fam.samples:
        assert name == "vllm:lora_requests_info", name
        keys = [k for k, _ in labels]
        assert keys == sorted(keys), keys
        out.append((dict(labels), value))
    return out


def gauge_by_engine(fams, name):
    """{engine label: value} of a per-engine gauge."""
    return {dict(labels)["engine"]: value for _, labels, value in fams[name].samples}


def read_available(sock):
    """The bytes <sock> holds right now, without waiting (b"" when none)."""
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return b""
    finally:
        sock.setblocking(True)


class OutputLengths(unittest.TestCase):
    PROMPTS = ["Tell me about caching.", "Why is the sky blue?", "Write a haiku on queues.",
               "Summarize chunked prefill.", "List three prime numbers.", "Hello there."]

    def test_natural_length_follows_the_prompt_not_the_request_id(self):
        flags = (*FAST, "--output-len-mean", "12")
        lengths = {}
        with start_sim(*flags) as sim, start_sim(*flags) as other:
            for i, prompt in enumerate(self.PROMPTS):
                a = stream_completion(sim.port, prompt=prompt, max_tokens=1000, ignore_eos=False,
                                      headers={"X-Request-Id": "front-a-%d" % i})
                b = stream_completion(other.port, prompt=prompt, max_tokens=1000,
                                      ignore_eos=False, headers={"X-Request-Id": "front-b-%d" % i})
                n = len(a.tokens())
                self.assertEqual(len(b.tokens()), n, prompt)
                self.assertEqual(a.finish_reason(), "stop")
                self.assertNotEqual(a.tokens(), b.tokens())  # the text still follows the id
                lengths[prompt] = n
                # A cap below the natural length ends the request with "length";
                # ignore_eos still runs to the cap exactly.
                capped = stream_completion(sim.port, prompt=prompt, max_tokens=max(n - 1, 1),
                                           ignore_eos=False)
                self.assertEqual(len(capped.tokens()), max(n - 1, 1))
                self.assertEqual(capped.finish_reason(), "length" if n > 1 else "stop")
                forced = stream_completion(sim.port, prompt=prompt, max_tokens=n + 5,
                                           ignore_eos=True)
                self.assertEqual(len(forced.tokens()), n + 5)
            chat = [stream_chat(sim.port, max_tokens=500, ignore_eos=False,
                                headers={"X-Request-Id": "chat-%d" % i}) for i in range(2)]
            self.assertEqual(len(chat[0].tokens()), len(chat[1].tokens()))
        self.assertGreater(len(set(lengths.values())), 1, "lengths should vary between prompts")


class Lora(unittest.TestCase):
    def test_models_lists_adapters_after_the_base_models(self):
        with start_sim(*FAST, "--model", "base", "--model", "alias", *LORA) as sim:
            status, obj = http_json(sim.port, "GET", "/v1/models")
            self.assertEqual(status, 200)
            self.assertEqual([m["id"] for m in obj["data"]], ["base", "alias", "sql", "chat"])
            base, card = obj["data"][0], obj["data"][2]
            self.assertEqual(list(card), list(base))
            self.assertEqual((card["root"], card["parent"], card["max_model_len"]),
                             ("/adapters/sql", "base", None))
            self.assertEqual(card["object"], "model")
            self.assertEqual(card["permission"][0]["object"], "model_permission")
            status, obj = http_json(sim.port, "POST", "/v1/chat/completions",
                                    dict(chat_body(), model="chat"))
            self.assertEqual(status, 200, obj)
            self.assertEqual(obj["model"], "chat")
            status, _ = http_json(sim.port, "POST", "/v1/chat/completions",
                                  dict(chat_body(), model="/adapters/sql"))
            self.assertEqual(status, 404)

    def test_requests_info_names_running_and_waiting_adapters(self):
        with start_sim("--speed", "1", "--created", "1", "--max-loras", "1", *LORA) as sim:
            self.assertEqual(lora_info(sim.port)[0][0],
                             {"engine": "0", "max_lora": "1", "running_lora_adapters": "",
                              "waiting_lora_adapters": ""})
            body = chat_body(max_tokens=4000, stream=True, ignore_eos=True)
            sql = open_stream(sim.port, dict(body, model="sql"))
            wait_until(lambda: sim_stats(sim.port)["running"] == 1)
            # One adapter per batch: "chat" waits while "sql" runs; the base
            # model needs no adapter slot and runs next to it.
            chat = open_stream(sim.port, dict(body, model="chat"))
            base = open_stream(sim.port, body)
            st = wait_until(lambda: (lambda s: s if s["running"] == 2 and s["waiting"] == 1
                                     else None)(sim_stats(sim.port)))
            self.assertEqual(st["requests_received"], 3)
            (labels, value), = lora_info(sim.port)
            self.assertEqual((labels["running_lora_adapters"], labels["waiting_lora_adapters"]),
                             ("sql", "chat"))
            self.assertGreater(value, 1.6e9)  # a unix time stamp, as set_to_current_time()
            self.assertEqual(metric_value(metrics(sim.port), "vllm_sim:lora_loads_total"), 1)
            sql.close()
            wait_until(lambda: lora_info(sim.port)[0][0]["running_lora_adapters"] == "chat")
            self.assertEqual(lora_info(sim.port)[0][0]["waiting_lora_adapters"], "")
            chat.close()
            base.close()
            wait_until(lambda: sim_stats(sim.port)["requests_aborted"] == 3)
            self.assertEqual(lora_info(sim.port)[0][0]["running_lora_adapters"], "")

    def test_no_lora_metrics_without_adapters(self):
        fams = metrics(SIM.port)
        self.assertNotIn("vllm:lora_requests_info", fams)
        self.assertNotIn("vllm_sim:lora_loads", fams)


class Priority(unittest.TestCase):
    def test_nonzero_priority_needs_the_priority_policy(self):
        status, obj = http_json(SIM.port, "POST", "/v1/chat/completions",
                                chat_body(priority=3))
        self.assertEqual(status, 400)
        self.assertEqual(obj["error"]["type"], "BadRequestError")
        self.assertEqual(obj["error"]["message"],
                         "Got priority 3 but Priority scheduling is not enabled.")
        status, _ = http_json(SIM.port, "POST", "/v1/chat/completions", chat_body(priority=0))
        self.assertEqual(status, 200)
        status, obj = http_json(SIM.port, "POST", "/v1/completions",
                                {"prompt": "x", "priority": "high"})
        self.assertEqual(status, 400)
        with start_sim(*FAST, "--scheduling-policy", "priority") as sim:
            status, _ = http_json(sim.port, "POST", "/v1/chat/completions",
                                  chat_body(priority=-2))
            self.assertEqual(status, 200)

    def test_waiting_requests_run_by_priority(self):
        with start_sim("--speed", "1", "--created", "1", "--max-num-seqs", "1",
                       "--scheduling-policy", "priority") as sim:
            body = chat_body(max_tokens=4000, stream=True, ignore_eos=True)
            first = open_stream(sim.port, body)
            wait_until(lambda: sim_stats(sim.port)["running"] == 1)
            low = open_stream(sim.port, dict(body, priority=5))
            high = open_stream(sim.port, dict(body, priority=-1))
            wait_until(lambda: sim_stats(sim.port)["waiting"] == 2)
            first.close()
            # The later but more urgent request runs; the other keeps waiting
            # (its stream has the response head only).
            high.settimeout(10)
            self.assertIn(b"data: ", high.recv(65536))
            wait_until(lambda: (lambda s: s["running"] == 1 and s["waiting"] == 1)(
                sim_stats(sim.port)))
            self.assertEqual(read_available(low), b"")
            low.close()
            high.close()


class DataParallel(unittest.TestCase):
    def test_per_engine_gauges_and_least_loaded_assignment(self):
        with start_sim("--engines", "2", "--speed", "1", "--created", "1", *LORA) as sim:
            fams = metrics(sim.port)
            for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                         "vllm:kv_cache_usage_perc", "vllm:lora_requests_info"):
                self.assertEqual(sorted(gauge_by_engine(fams, name)), ["0", "1"], name)
            body = chat_body(max_tokens=4000, stream=True, ignore_eos=True)
            # Idle engines take turns: the first stream goes to engine 0, a
            # short request to engine 1.
            long_sql = open_stream(sim.port, dict(body, model="sql"))
            wait_until(lambda: gauge_by_engine(metrics(sim.port),
                                               "vllm:num_requests_running")["0"] == 1)
            status, _ = http_json(sim.port, "POST", "/v1/chat/completions", chat_body())
            self.assertEqual(status, 200)
            fams = metrics(sim.port)
            self.assertEqual(metric_value(fams, "vllm:request_success_total", engine="1"), 1)
            # Round-robin would now pick engine 0; the least loaded is engine 1
            # (waiting * 4 + running: 1 against 0).
            long_base = open_stream(sim.port, body)
            running = wait_until(lambda: (lambda g: g if sum(g.values()) == 2 else None)(
                gauge_by_engine(metrics(sim.port), "vllm:num_requests_running")))
            self.assertEqual(running, {"0": 1, "1": 1})
            info = {labels["engine"]: labels for labels, _ in lora_info(sim.port)}
            self.assertEqual(info["0"]["running_lora_adapters"], "sql")
            self.assertEqual(info["1"]["running_lora_adapters"], "")
            long_sql.close()
            long_base.close()


class NewFlags(unittest.TestCase):
    def test_bad_values_exit_2(self):
        for args in (["--scheduling-policy", "lifo"], ["--lora-modules", "noequals"],
                     ["--lora-modules", "=path"], ["--lora-modules", "sim-model=/x"],
                     ["--lora-modules", "a=/x", "a=/y"], ["--max-loras", "2",
                                                          "--max-cpu-loras", "1"],
                     ["--output-len-sigma", "-1"]):
            p = subprocess.run([sim_binary()] + args, capture_output=True, timeout=10)
            self.assertEqual(p.returncode, 2, args)
            self.assertIn(b"vllm-sim", p.stderr)

    def test_lora_modules_take_several_values_and_repeat(self):
        with start_sim(*FAST, "--lora-modules", "a=/a", "b=/b", "--lora-modules", "c=/c",
                       "--max-loras", "2") as sim:
            status, obj = http_json(sim.port, "GET", "/v1/models")
            self.assertEqual([m["id"] for m in obj["data"]], ["sim-model", "a", "b", "c"])
            self.assertEqual(lora_info(sim.port)[0][0]["max_lora"], "2")


class Cli(unittest.TestCase):
    def test_bad_flags(self):
        for args in (["--bogus"], ["--port"], ["--speed", "fast"], ["--engines", "0"],
                     ["--kv-blocks", "2", "--max-model-len", "8192"]):
            p = subprocess.run([sim_binary()] + args, capture_output=True, timeout=10)
            self.assertEqual(p.returncode, 2, args)
            self.assertIn(b"vllm-sim", p.stderr)
            self.assertEqual(p.stdout, b"")

    def test_sigint_exits_zero(self):
        sim = start_sim(*FAST)
        sim.proc.send_signal(signal.SIGINT)
        self.assertEqual(sim.proc.wait(5), 0)
        sim.stop()



class Tokenizer(unittest.TestCase):
    """--tokenizer mixed: the prompt token count depends on the kind of text
    (README.md, Tokens); chars4 stays the default."""

    def prompt_tokens(self, port, prompt):
        status, obj = http_json(port, "POST", "/v1/completions",
                                {"model": "sim-model", "prompt": prompt, "max_tokens": 1})
        self.assertEqual(status, 200, obj)
        return obj["usage"]["prompt_tokens"]

    def test_mixed_counts_by_kind_and_chars4_is_the_default(self):
        texts = {"prose": "Hello, world!", "cjk": "東京は", "code": "x = f(y);\n"}
        with start_sim(*FAST, "--tokenizer", "mixed") as sim:
            got = {k: self.prompt_tokens(sim.port, v) for k, v in texts.items()}
        self.assertEqual(got, {"prose": 4, "cjk": 2, "code": 7})
        self.assertEqual(self.prompt_tokens(SIM.port, texts["cjk"]), 1)  # ceil(3 / 4)
        p = subprocess.run([sim_binary(), "--tokenizer", "bpe"], capture_output=True, timeout=10)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"--tokenizer", p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)

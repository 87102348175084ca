"""Dispatch accounting and the estimator's scrape inputs, through the real
proxy: non-streaming requests leave prefill at their predicted TTFT and the
counters return to zero; decode tokens shrink as a stream is relayed;
data-parallel engines count separately; a prompt that cannot fit a
replica's free KV goes elsewhere; a LoRA request prefers the replica where
its adapter runs. Runs under $TOKENRELAY_IO."""

import json
import threading
import time

from proxytools import make_config, run_checks, start_proxy
from simtools import http_request, sim_stats, start_sim, stream_completion, wait_until


def status(px):
    code, _, body = http_request(px.admin_port, "GET", "/status")
    assert code == 200
    return json.loads(body)


def replicas(px):
    return {r["name"]: r for r in status(px)["replicas"]}


def received(sims):
    return [sim_stats(s.port)["requests_received"] for s in sims]


def post(port, body, stream=None):
    if stream is not None:
        body = dict(body, stream=stream)
    return http_request(port, "POST", "/v1/completions", body=json.dumps(body),
                        headers={"Content-Type": "application/json"}, timeout=60)


def in_background(fn, n=1):
    threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def check_non_streaming_moves_to_decode_and_returns_to_zero():
    sim = start_sim("--speed", "1")
    with start_proxy([sim]) as px:
        body = {"model": "sim-model", "prompt": "tell me", "max_tokens": 250, "ignore_eos": True}
        threads = in_background(lambda i: post(px.port, body, stream=False), 3)
        wait_until(lambda: replicas(px)["r0"]["dispatch"]["inflight"] == 3)
        # Their predicted TTFT (tens of ms) passes long before the ~2 s of decode.
        wait_until(lambda: replicas(px)["r0"]["dispatch"]["decode_requests"] == 3, timeout=2)
        d = replicas(px)["r0"]["dispatch"]
        assert d["prefill_requests"] == 0 and d["prefill_tokens"] == 0, d
        for t in threads:
            t.join()
        # A burst of mixed requests, then every counter is back at zero.
        threads = in_background(
            lambda i: post(px.port, dict(body, max_tokens=5 + i % 7), stream=bool(i % 2)), 20)
        for t in threads:
            t.join()
        d = replicas(px)["r0"]["dispatch"]
        assert d == {"inflight": 0, "prefill_requests": 0, "prefill_tokens": 0,
                     "decode_requests": 0, "decode_tokens": 0}, d


def check_decode_tokens_shrink_as_relayed():
    sim = start_sim("--speed", "1")
    with start_proxy([sim]) as px:
        t = in_background(lambda i: stream_completion(px.port, max_tokens=200, timeout=30))[0]
        wait_until(lambda: replicas(px)["r0"]["dispatch"]["decode_requests"] == 1)
        first = replicas(px)["r0"]["dispatch"]["decode_tokens"]
        time.sleep(0.5)  # ~60 tokens at 8 ms a step
        later = replicas(px)["r0"]["dispatch"]["decode_tokens"]
        t.join()
        assert 0 < later < first - 20, (first, later)
        assert replicas(px)["r0"]["dispatch"]["decode_tokens"] == 0


def check_data_parallel_engines_count_separately():
    two = start_sim("--engines", "2", "--max-num-seqs", "2", "--speed", "2")
    one = start_sim("--engines", "1", "--max-num-seqs", "2", "--speed", "2")
    text = make_config([two, one]).replace("url = %s\n" % two.url,
                                           "url = %s\nmax_num_seqs = 2\n" % two.url)
    text = text.replace("url = %s\n" % one.url, "url = %s\nmax_num_seqs = 2\n" % one.url)
    with start_proxy(config_text=text) as px:
        wait_until(lambda: replicas(px)["r0"]["scrape"]["engines"] == 2)
        assert replicas(px)["r1"]["scrape"]["engines"] in (0, 1)
        # Six long requests at once: four slots on r0 (2 engines x 2), two on r1.
        body = {"model": "sim-model", "prompt": "x", "max_tokens": 120, "ignore_eos": True}
        threads = in_background(lambda i: post(px.port, body, stream=True), 6)
        for t in threads:
            t.join()
        got = received([two, one])
        assert sum(got) == 6 and got[0] >= 4, got


def check_prompt_that_does_not_fit_goes_elsewhere():
    # Both replicas run one foreign request (sent around the proxy), which also
    # calibrates their step times: r0 is twice as fast but its KV is mostly
    # held by a long context; r1 is slow with plenty of free KV.
    flags = ("--kv-blocks", "256", "--block-size", "16", "--max-model-len", "4096",
             "--no-prefix-caching")
    full = start_sim("--speed", "1", *flags)
    slow = start_sim("--speed", "0.5", *flags)
    with start_proxy([full, slow]) as px:
        hog = {"model": "sim-model", "prompt": "lorem ipsum " * 900, "max_tokens": 500,
               "ignore_eos": True}  # ~2,700 + 500 of 4,096 tokens
        light = {"model": "sim-model", "prompt": "hi", "max_tokens": 300, "ignore_eos": True}
        ts = in_background(lambda i: post(full.port, hog, stream=True))
        ts += in_background(lambda i: post(slow.port, light, stream=True))
        wait_until(lambda: all(r["calibration"]["samples"] > 0 and r["scrape"]["running"] == 1
                               for r in replicas(px).values()), timeout=5)
        wait_until(lambda: 0 <= replicas(px)["r0"]["scrape"]["kv_free_tokens"] < 1500, timeout=5)
        before = received([full, slow])
        # Fits in r0's free KV: the faster r0 takes it.
        assert post(px.port, {"model": "sim-model", "prompt": "short " * 40, "max_tokens": 4},
                    stream=True)[0] == 200
        mid = received([full, slow])
        # ~1,600 tokens cannot fit next to the long context: the slow r1 takes it.
        assert post(px.port, {"model": "sim-model", "prompt": "a b c d " * 800,
                              "max_tokens": 8}, stream=True)[0] == 200
        after = received([full, slow])
        for t in ts:
            t.join()
        assert [m - b for m, b in zip(mid, before)] == [1, 0], (before, mid, status(px))
        assert [a - m for a, m in zip(after, mid)] == [0, 1], (mid, after, status(px))


def check_lora_request_prefers_its_loaded_replica():
    flags = ("--model", "base", "--lora-modules", "sql=/a/sql", "chat=/a/chat", "--max-loras",
             "1", "--speed", "1")
    a, b = start_sim(*flags), start_sim(*flags)
    with start_proxy([a, b]) as px:
        long = {"prompt": "go", "max_tokens": 400, "ignore_eos": True}
        ta = in_background(lambda i: post(a.port, dict(long, model="sql"), stream=True))[0]
        tb = in_background(lambda i: post(b.port, dict(long, model="chat"), stream=True))[0]
        wait_until(lambda: all(r["scrape"]["loras_running"] == 1 and r["scrape"]["max_lora"] == 1
                               for r in replicas(px).values()), timeout=5)
        before = received([a, b])
        for model in ["sql"] * 3 + ["chat"] * 3:
            code, _, body = post(px.port, {"model": model, "prompt": "q", "max_tokens": 3},
                                 stream=False)
            assert code == 200, body
        after = received([a, b])
        ta.join()
        tb.join()
        # Each adapter's requests went where it runs (the other replica would have
        # to wait for its only adapter slot).
        assert [x - y for x, y in zip(after, before)] == [3, 3], (before, after)


run_checks([
    ("non-streaming: decode at predicted TTFT, back to zero",
     check_non_streaming_moves_to_decode_and_returns_to_zero),
    ("decode tokens shrink as tokens are relayed", check_decode_tokens_shrink_as_relayed),
    ("data-parallel engines count separately", check_data_parallel_engines_count_separately),
    ("a prompt that cannot fit free KV goes elsewhere", check_prompt_that_does_not_fit_goes_elsewhere),
    ("a LoRA request prefers its loaded replica", check_lora_request_prefers_its_loaded_replica),
])

"""Routing through the real proxy: requests avoid a slow replica and a replica
busy with a long prefill; /status and the routing metrics. Runs under
$TOKENRELAY_IO."""

import json
import threading
import time

from proxytools import start_proxy, run_checks
from simtools import (start_sim, stream_completion, stream_chat, http_request, sim_stats,
                      metric_value, wait_until)


def status(px):
    code, _, body = http_request(px.admin_port, "GET", "/status")
    assert code == 200
    return json.loads(body)


def routing_extra(policy):
    return "[routing]\npolicy = %s\n" % policy


def received(sims):
    return [sim_stats(s.port)["requests_received"] for s in sims]


def run_concurrent(fn, n):
    out = []
    threads = [threading.Thread(target=lambda i=i: out.append(fn(i))) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def check_avoids_a_slow_replica():
    fast = [start_sim("--speed", "4") for _ in range(2)]
    slow = start_sim("--speed", "1")  # four times the step time
    sims = fast + [slow]
    with start_proxy(sims, extra=routing_extra("latency")) as px:
        # Warm up so every replica's step time gets calibrated from its /metrics.
        run_concurrent(lambda i: stream_completion(px.port, max_tokens=30), 12)
        wait_until(lambda: all(r["calibration"]["samples"] > 0 for r in status(px)["replicas"]),
                   timeout=20)
        st = {r["name"]: r for r in status(px)["replicas"]}
        assert st["r2"]["calibration"]["step_base_s"] > 2 * st["r0"]["calibration"]["step_base_s"], st
        before = received(sims)
        for _ in range(4):
            rs = run_concurrent(lambda i: stream_completion(px.port, max_tokens=40), 3)
            assert all(r.complete for r in rs)
        after = received(sims)
        got = [a - b for a, b in zip(after, before)]
        assert sum(got) == 12, got
        # The slow replica gets markedly less than an even third.
        assert got[2] <= 2, got


def check_avoids_a_long_prefill(policy="latency"):
    flags = ("--speed", "1", "--max-model-len", "65536", "--max-num-batched-tokens", "512",
             "--kv-blocks", "8192")
    sims = [start_sim(*flags) for _ in range(2)]
    with start_proxy(sims, extra=routing_extra(policy)) as px:
        long_prompt = "lorem ipsum dolor sit amet " * 2200  # ~59k chars, ~15k tokens
        long_done = []
        t = threading.Thread(target=lambda: long_done.append(
            stream_completion(px.port, prompt=long_prompt, max_tokens=4, timeout=60)))
        t.start()
        # Wait until the long request is in flight on one replica.
        wait_until(lambda: sum(r["dispatch"]["prefill_requests"] for r in status(px)["replicas"]) == 1)
        busy = [i for i, r in enumerate(status(px)["replicas"]) if r["dispatch"]["inflight"] == 1][0]
        before = received(sims)
        for _ in range(3):  # short requests, four at a time, while the prefill runs
            rs = run_concurrent(lambda i: stream_chat(px.port, max_tokens=8), 4)
            assert all(r.complete for r in rs)
        after = received(sims)
        t.join()
        assert long_done and long_done[0].complete
        shorts_on_busy = after[busy] - before[busy]
        shorts_elsewhere = after[1 - busy] - before[1 - busy]
        assert shorts_on_busy + shorts_elsewhere == 12
        return shorts_on_busy


def check_latency_policy_routes_around_prefill():
    n = check_avoids_a_long_prefill("latency")
    assert n == 0, "latency policy sent %d short requests behind a 15k-token prefill" % n


def check_least_requests_does_not():
    # The contrast that makes the check above mean something: least in-flight
    # only sees "one request", so it shares the short ones with the busy replica.
    n = check_avoids_a_long_prefill("least_requests")
    assert n >= 2, n


def check_status_and_metrics():
    sims = [start_sim("--speed", "20") for _ in range(2)]
    with start_proxy(sims) as px:
        run_concurrent(lambda i: stream_chat(px.port, max_tokens=10), 6)
        wait_until(lambda: all(r["scrape"]["scrapes_ok"] > 2 for r in status(px)["replicas"]))
        s = status(px)
        assert s["policy"] == "latency"
        for r in s["replicas"]:
            for k in ("up", "scrape", "calibration", "dispatch", "load", "predicted"):
                assert k in r, (k, r)
            assert r["scrape"]["age_ms"] < 2000
            assert r["predicted"]["ttft_s"] > 0 and r["predicted"]["completion_s"] >= r["predicted"]["ttft_s"]
            assert r["dispatch"]["inflight"] == 0
        fam = px.metrics()
        assert metric_value(fam, "tokenrelay_route_decisions_total", policy="latency") == 6
        assert metric_value(fam, "tokenrelay_route_decision_seconds_count") == 6
        assert metric_value(fam, "tokenrelay_ttft_prediction_error_seconds_count") == 6
        assert metric_value(fam, "tokenrelay_scrape_duration_seconds_count") > 4
        assert metric_value(fam, "tokenrelay_scrape_errors_total", backend="r0") == 0


run_checks([
    ("/status and routing metrics", check_status_and_metrics),
    ("latency: short requests avoid a long prefill", check_latency_policy_routes_around_prefill),
    ("least_requests: shares them (contrast)", check_least_requests_does_not),
    ("latency: a 4x slower replica gets little", check_avoids_a_slow_replica),
])

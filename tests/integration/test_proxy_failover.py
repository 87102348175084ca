"""Health, failover and admission through the real proxy: passive ejection
(and its half-pool cap), no retry once the request was written, a replica
killed mid-stream then readmitted, and an admission queue that fills and
drains. Every accepted request gets exactly one response. Runs under
$TOKENRELAY_IO."""

import json
import signal
import socket
import threading
import time

from fakeupstream import FakeUpstream
from proxytools import start_proxy, run_checks
from simtools import (start_sim, stream_chat, stream_completion, http_request, sim_stats,
                      metric_value, wait_until, parse_sse)

COMPLETION = {"model": "sim-model", "prompt": "hello", "max_tokens": 3, "ignore_eos": True}


def run_concurrent(fn, n):
    out = [None] * n
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, fn(i))) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def check_passive_ejection():
    fake = FakeUpstream("500")
    sim = start_sim("--speed", "200")
    extra = "[eject]\nfailures = 3\nbase_ms = 3000\n[routing]\npolicy = round_robin\n"
    with start_proxy([("bad", fake.url), ("good", sim.url)], extra=extra) as px:
        codes = [http_request(px.port, "POST", "/v1/completions", COMPLETION)[0]
                 for _ in range(12)]
        # Round robin sends every other request to the failing replica until it
        # has failed 3 times in a row; then it is ejected and the rest go to "good".
        assert fake.requests == 3, (fake.requests, codes)
        assert codes.count(500) == 3 and codes.count(200) == 9, codes
        assert "replica bad (%s) ejected for 3000 ms after 3 failures" % fake.url in px.log()
        # After the ejection it comes back (slow start) and is tried again.
        time.sleep(3.2)
        for _ in range(40):
            http_request(px.port, "POST", "/v1/completions", COMPLETION)
            if fake.requests > 3:
                break
        assert fake.requests > 3, fake.requests
    fake.stop()
    sim.stop()


def check_never_eject_more_than_half():
    fakes = [FakeUpstream("500"), FakeUpstream("500")]
    extra = "[eject]\nfailures = 2\nbase_ms = 60000\n[routing]\npolicy = round_robin\n"
    with start_proxy([("a", fakes[0].url), ("b", fakes[1].url)], extra=extra) as px:
        for _ in range(12):
            http_request(px.port, "POST", "/v1/completions", COMPLETION)
        log = px.log()
        assert log.count("ejected for") == 1, log
        # The one left keeps being tried (and keeps answering 500): never zero replicas.
        assert min(f.requests for f in fakes) >= 1 and sum(f.requests for f in fakes) == 12
    for f in fakes:
        f.stop()


def check_no_retry_after_request_written():
    fake = FakeUpstream("close")  # reads the request, then closes without a byte
    sim = start_sim("--speed", "200")
    extra = "[routing]\npolicy = round_robin\n"
    with start_proxy([("closer", fake.url), ("good", sim.url)], extra=extra) as px:
        statuses = [http_request(px.port, "POST", "/v1/completions", COMPLETION)[0]
                    for _ in range(4)]
        assert statuses.count(502) == 2 and statuses.count(200) == 2, statuses
        # Each 502 was one request on the closer and none was re-sent to "good".
        assert fake.requests == 2, fake.requests
        assert sim_stats(sim.port)["requests_received"] == 2
    fake.stop()
    sim.stop()


def check_killed_mid_stream_then_readmitted():
    a = start_sim("--speed", "2")
    port_a = a.port
    b = start_sim("--speed", "2")
    extra = "[routing]\npolicy = round_robin\n"
    with start_proxy([a, b], extra=extra) as px:
        results = []
        threads = [threading.Thread(target=lambda: results.append(
            stream_chat(px.port, max_tokens=60, timeout=60))) for _ in range(6)]
        for t in threads:
            t.start()
        wait_until(lambda: sim_stats(port_a)["running"] >= 3)
        a.proc.send_signal(signal.SIGKILL)
        for t in threads:
            t.join()
        broken = [r for r in results if r.status != 200 or b'"error"' in r.sse]
        fine = [r for r in results if r.status == 200 and b'"error"' not in r.sse]
        assert len(broken) == 3 and len(fine) == 3, [r.wire[-100:] for r in results]
        for r in broken:
            if r.status == 200:  # the stream had started: it ends with an error event
                assert r.complete and parse_sse(r.sse)[-1]["error"]["type"] == "server_error"
            else:  # killed before the response head reached the proxy
                assert r.status == 502, r.wire[-200:]
                assert json.loads(r.sse)["error"]["type"] == "server_error"
        for r in fine:
            assert r.complete and r.usage()["completion_tokens"] == 60
        wait_until(lambda: metric_value(px.metrics(), "tokenrelay_backend_up", backend="r0") == 0,
                   timeout=5)
        # Readmitted once it answers health checks again (rise = 2).
        a2 = start_sim("--speed", "200", "--port", str(port_a))
        wait_until(lambda: metric_value(px.metrics(), "tokenrelay_backend_up", backend="r0") == 1,
                   timeout=5)
        for _ in range(4):
            assert stream_chat(px.port, max_tokens=3).complete
        assert sim_stats(port_a)["requests_completed"] >= 1
        a2.stop()
    b.stop()


def check_queue_fills_and_drains():
    sim = start_sim("--speed", "0.5")  # 16 ms steps: 12 tokens take ~0.2 s
    extra = ("[admission]\nmax_inflight = 2\nmax_queue = 4\nqueue_timeout_ms = 10000\n"
             "retry_after_s = 2\n")
    with start_proxy([sim], extra=extra) as px:
        def one(i):
            return stream_completion(px.port, max_tokens=12, timeout=30)
        rs = run_concurrent(one, 8)
        ok = [r for r in rs if r.status == 200]
        rejected = [r for r in rs if r.status == 429]
        assert len(ok) == 6 and len(rejected) == 2, [r.status for r in rs]
        for r in ok:
            assert r.complete and r.usage()["completion_tokens"] == 12
        for r in rejected:
            assert r.headers.get("retry-after") == "2", r.headers
            err = json.loads(r.wire.split(b"\r\n\r\n", 1)[1])["error"]
            assert err["type"] == "rate_limit_error" and err["code"] == "replicas_saturated", err
        fam = px.metrics()
        assert metric_value(fam, "tokenrelay_queue_admitted_total") == 4
        assert metric_value(fam, "tokenrelay_queue_rejected_total") == 2
        assert metric_value(fam, "tokenrelay_queue_requests") == 0
        assert sim_stats(sim.port)["requests_received"] == 6


def check_queue_timeout():
    sim = start_sim("--speed", "0.5")
    extra = "[admission]\nmax_inflight = 1\nmax_queue = 8\nqueue_timeout_ms = 300\n"
    with start_proxy([sim], extra=extra) as px:
        long = []
        t = threading.Thread(target=lambda: long.append(stream_completion(px.port, max_tokens=60)))
        t.start()
        wait_until(lambda: metric_value(px.metrics(), "tokenrelay_inflight_requests") == 1)
        t0 = time.monotonic()
        status, headers, _ = http_request(px.port, "POST", "/v1/completions", COMPLETION)
        waited = time.monotonic() - t0
        assert status == 429 and "retry-after" in headers, (status, headers)
        assert 0.25 <= waited < 3, waited
        t.join()
        assert long[0].complete


run_checks([
    ("passive ejection after consecutive 5xx, then readmitted", check_passive_ejection),
    ("never eject more than half the pool", check_never_eject_more_than_half),
    ("reset after the request was written: no retry", check_no_retry_after_request_written),
    ("replica killed mid-stream, then readmitted", check_killed_mid_stream_then_readmitted),
    ("admission queue fills and drains (429 + Retry-After)", check_queue_fills_and_drains),
    ("admission queue timeout: 429", check_queue_timeout),
])

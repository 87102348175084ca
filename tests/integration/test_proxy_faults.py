"""Failures through the real proxy: client disconnect reaches the replica,
replica crash mid-stream, replica down at start, no replica reachable, a
stalled replica. Runs under $TOKENRELAY_IO."""

import json
import socket
import threading
import time

from proxytools import start_proxy, run_checks
from simtools import (build_request, parse_response, parse_sse, start_sim, stream_chat,
                      http_request, sim_stats, sim_config, wait_until, metric_value)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_client_disconnect_aborts_upstream():
    sim = start_sim("--speed", "5")  # slow: the stream is long-lived
    with start_proxy([sim]) as px:
        body = {"model": "sim-model", "messages": [{"role": "user", "content": "go"}],
                "stream": True, "max_tokens": 2000, "ignore_eos": True}
        s = socket.create_connection(("127.0.0.1", px.port))
        s.sendall(build_request("POST", "/v1/chat/completions", body))
        got = b""
        while got.count(b"data: ") < 3:
            got += s.recv(65536)
        assert sim_stats(sim.port)["running"] == 1
        t0 = time.monotonic()
        s.close()
        wait_until(lambda: sim_stats(sim.port)["requests_aborted"] == 1, timeout=5)
        took = time.monotonic() - t0
        st = sim_stats(sim.port)
        assert st["running"] == 0, st
        # The abort reached the simulator well within a second (the issue asks the
        # proxy for 10 ms; this check allows for a loaded CI machine).
        assert took < 1.0, took
        wait_until(lambda: metric_value(px.metrics(), "tokenrelay_inflight_requests") == 0)
        fam = px.metrics()
        assert metric_value(fam, "tokenrelay_request_failures_total", reason="client_abort") == 1
        # The aborted connection was not pooled: a new request opens a new connection.
        r = stream_chat(px.port, max_tokens=3)
        assert r.status == 200 and r.complete
    sim.stop()


def check_replica_crash_mid_stream():
    bad = start_sim("--speed", "50", "--fault-close-after-tokens", "5")
    good = start_sim("--speed", "50")
    with start_proxy([bad, good]) as px:
        results = []

        def one(i):
            results.append(stream_chat(px.port, max_tokens=40, headers={"X-Request-Id": "c%d" % i}))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        broken = [r for r in results if b'"error"' in r.sse]
        whole = [r for r in results if b'"error"' not in r.sse]
        assert broken and whole, [r.sse[-120:] for r in results]
        for r in broken:
            # A proper end: complete chunked framing, an error event in the OpenAI shape.
            assert r.status == 200 and r.complete, r.wire[-200:]
            last = parse_sse(r.sse)[-1]
            assert last["error"]["type"] == "server_error", last
            assert last["error"]["param"] is None and last["error"]["message"]
        for r in whole:
            assert r.complete and r.events[-1] == "[DONE]"
            assert r.usage()["completion_tokens"] == 40
        fam = px.metrics()
        assert metric_value(fam, "tokenrelay_request_failures_total",
                            reason="upstream_midstream") == len(broken)
    bad.stop()
    good.stop()


def check_replica_down_at_start():
    good = start_sim("--speed", "200")
    dead = free_port()
    with start_proxy([dead, good]) as px:
        for i in range(6):
            r = stream_chat(px.port, max_tokens=4)
            assert r.status == 200 and r.complete, r.wire[-200:]
        status, _, _ = http_request(px.port, "GET", "/health")
        assert status == 200
        fam = px.metrics()
        assert metric_value(fam, "tokenrelay_backend_up", backend="r0") == 0
        assert metric_value(fam, "tokenrelay_backend_up", backend="r1") == 1
    good.stop()


def check_no_replica_reachable():
    # Both ports refuse. Health marks them down: 503 from the proxy, OpenAI-shaped.
    with start_proxy([free_port(), free_port()]) as px:
        status, headers, body = http_request(px.port, "POST", "/v1/chat/completions",
                                             {"model": "m", "messages": []})
        assert status in (502, 503), status
        err = json.loads(body)["error"]
        assert err["param"] is None and err["type"] == "server_error" and err["code"], err
        status, _, _ = http_request(px.port, "GET", "/health")
        assert status == 503


def check_connect_refused_moves_on():
    # The replica passes health checks but the port refuses at request time:
    # start a sim, let the proxy see it up, kill it, and immediately request.
    a = start_sim("--speed", "200")
    b = start_sim("--speed", "200")
    # Round robin: the dead replica is certain to be first choice for some requests.
    with start_proxy([a, b], health_interval_ms=60000,
                     extra="[routing]\npolicy = round_robin\n") as px:
        a.stop()  # the proxy still believes it is up for a minute
        ok = 0
        for _ in range(4):
            r = stream_chat(px.port, max_tokens=3)
            ok += r.status == 200 and r.complete
        assert ok == 4, ok
        assert sim_stats(b.port)["requests_completed"] == 4
        fam = px.metrics()
        assert metric_value(fam, "tokenrelay_upstream_retries_total", backend="r0") >= 1
    b.stop()


def check_stall_then_504():
    sim = start_sim("--speed", "200", "--fault-stall-first-byte-ms", "3000")
    extra = "[timeouts]\nupstream_first_byte_ms = 500\n"
    with start_proxy([sim], extra=extra) as px:
        t0 = time.monotonic()
        status, _, body = http_request(px.port, "POST", "/v1/completions",
                                       {"model": "sim-model", "prompt": "x", "max_tokens": 2})
        took = time.monotonic() - t0
        assert status == 504, (status, body)
        assert json.loads(body)["error"]["code"] == "upstream_timeout"
        assert took < 2.5, took
    sim.stop()


run_checks([
    ("client disconnect aborts the replica's request", check_client_disconnect_aborts_upstream),
    ("replica crash mid-stream: error event, others fine", check_replica_crash_mid_stream),
    ("replica down at start", check_replica_down_at_start),
    ("no replica reachable: 503/502 OpenAI error", check_no_replica_reachable),
    ("connect refused moves to the next replica", check_connect_refused_moves_on),
    ("stalled replica: 504 after first-byte timeout", check_stall_then_504),
])

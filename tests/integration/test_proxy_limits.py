"""Resource bounds through the real proxy: slowloris connections time out
(408) while normal traffic flows and memory stays flat; a client that stops
reading applies back-pressure (bounded proxy memory, stream intact when it
resumes); a client that never resumes is cut after client_write_ms; slow
request bodies time out. Runs under $TOKENRELAY_IO."""

import json
import socket
import threading
import time

from proxytools import start_proxy, run_checks
from simtools import (build_request, parse_response, start_sim, stream_chat, http_request,
                      sim_stats, metric_value, wait_until)


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def check_slowloris():
    sim = start_sim("--speed", "200")
    extra = "[timeouts]\nclient_header_ms = 1500\n"
    with start_proxy([sim], extra=extra) as px:
        base = rss_kib(px.proc.pid)
        socks = []
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", px.port))
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHo")
            socks.append(s)
        # Dribble: a byte now and then, never finishing the head.
        for k in range(4):
            time.sleep(0.2)
            for s in socks:
                try:
                    s.sendall(b"s")
                except OSError:
                    pass
            # Normal traffic is unaffected meanwhile.
            assert stream_chat(px.port, max_tokens=4).complete
        time.sleep(1.0)
        answered = 0
        for s in socks:
            s.settimeout(3)
            data = b""
            try:
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    data += b
            except OSError:
                pass
            if data.startswith(b"HTTP/1.1 408 "):
                answered += 1
            s.close()
        assert answered == 300, answered
        grown = rss_kib(px.proc.pid) - base
        assert grown < 32 * 1024, "RSS grew by %d KiB" % grown
        assert sim_stats(sim.port)["requests_received"] == 4


def upstream_bytes(px):
    return metric_value(px.metrics(), "tokenrelay_upstream_received_bytes_total")


def check_slow_reader_back_pressure():
    # 100,000 tokens (~23 MB of SSE) as fast as the simulator can write them:
    # the kernel's socket buffers absorb several MB, then the proxy must pause.
    sim = start_sim("--speed", "1000", "--max-model-len", "131072", "--kv-blocks", "8192")
    extra = "[limits]\nstream_buffer_bytes = 262144\n"
    with start_proxy([sim], extra=extra) as px:
        body = {"model": "sim-model", "prompt": "x", "max_tokens": 100000, "ignore_eos": True,
                "stream": True}
        s = socket.create_connection(("127.0.0.1", px.port))
        s.sendall(build_request("POST", "/v1/completions", body, headers={"X-Request-Id": "slow"}))
        time.sleep(2.0)  # not reading: the proxy must stop reading the replica
        b1 = upstream_bytes(px)
        time.sleep(1.5)
        b2 = upstream_bytes(px)
        # Paused: what it read is bounded by its stream buffer plus in-flight
        # buffers, and it reads nothing more while the client does not.
        assert b2 - b1 < 64 * 1024, (b1, b2)
        assert b2 < 16 * 1024 * 1024, b2  # kernel buffers + stream_buffer_bytes, not 23 MB
        # Now read everything: the stream is complete and correct.
        s.settimeout(60)
        data = b""
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            data += b
            if data.endswith(b"0\r\n\r\n"):
                break
        s.close()
        r = parse_response(data)
        assert r.complete, data[-200:]
        tokens = r.body.count(b'"text":')
        assert tokens >= 100000, tokens


def check_client_never_reads_is_cut():
    sim = start_sim("--speed", "50", "--max-model-len", "65536", "--kv-blocks", "8192")
    extra = "[limits]\nstream_buffer_bytes = 65536\n[timeouts]\nclient_write_ms = 1000\n"
    with start_proxy([sim], extra=extra) as px:
        # 60,000 tokens at ~0.16 ms each: still generating when the proxy gives up.
        body = {"model": "sim-model", "prompt": "x", "max_tokens": 60000, "ignore_eos": True,
                "stream": True}
        s = socket.create_connection(("127.0.0.1", px.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(build_request("POST", "/v1/completions", body))
        # The proxy gives up on the stalled client and tells the replica (abort).
        wait_until(lambda: sim_stats(sim.port)["requests_aborted"] == 1, timeout=10)
        fam = px.metrics()
        assert metric_value(fam, "tokenrelay_request_failures_total", reason="client_timeout") == 1
        assert metric_value(fam, "tokenrelay_inflight_requests") == 0
        s.close()


def check_slow_body_times_out():
    sim = start_sim("--speed", "200")
    extra = "[timeouts]\nclient_body_idle_ms = 500\n"
    with start_proxy([sim], extra=extra) as px:
        s = socket.create_connection(("127.0.0.1", px.port))
        s.settimeout(5)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"model\":")
        t0 = time.monotonic()
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
        took = time.monotonic() - t0
        assert data.startswith(b"HTTP/1.1 408 "), data[:100]
        assert 0.4 <= took < 3, took
        assert sim_stats(sim.port)["requests_received"] == 0


def check_body_too_large():
    sim = start_sim("--speed", "200")
    extra = "[limits]\nbody_bytes = 1024\n"
    with start_proxy([sim], extra=extra) as px:
        big = {"model": "sim-model", "prompt": "x" * 5000, "max_tokens": 1}
        status, _, body = http_request(px.port, "POST", "/v1/completions", big)
        assert status == 413, status
        assert json.loads(body)["error"]["code"] == "body_too_large"
        assert sim_stats(sim.port)["requests_received"] == 0


run_checks([
    ("slowloris: 300 dribbling connections get 408, others fine", check_slowloris),
    ("slow reader: back-pressure bounds memory, stream intact", check_slow_reader_back_pressure),
    ("client that never reads is cut after client_write_ms", check_client_never_reads_is_cut),
    ("slow request body: 408 after client_body_idle_ms", check_slow_body_times_out),
    ("body over the limit: 413, nothing reaches the replica", check_body_too_large),
])

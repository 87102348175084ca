"""Streaming through the real proxy: bytes relayed exactly, concurrency,
keep-alive, pipelining, non-streaming bodies. Runs under $TOKENRELAY_IO."""

import json
import socket
import threading

from proxytools import start_proxy, run_checks
from simtools import (build_request, parse_response, start_sim, stream_chat,
                      stream_completion, http_request, sim_stats, metric_value)

CREATED = "1700000000"
sims = [start_sim("--speed", "200", "--created", CREATED, "--max-num-seqs", "512",
                  "--max-num-batched-tokens", "8192") for _ in range(2)]
px = start_proxy(sims, workers=2)


def check_stream_bytes_equal_direct():
    for path_fn in (stream_chat, stream_completion):
        hdr = {"X-Request-Id": "exact-%s" % path_fn.__name__}
        direct = path_fn(sims[0].port, max_tokens=24, headers=hdr)
        via = path_fn(px.port, max_tokens=24, headers=hdr)
        assert direct.status == 200 and via.status == 200, (direct.status, via.status)
        assert via.complete, via.wire[-200:]
        # Same events, same HTTP chunk boundaries, byte for byte.
        assert via.chunks == direct.chunks, (via.chunks[:3], direct.chunks[:3])
        assert via.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert via.headers.get("x-request-id") == hdr["X-Request-Id"]
        assert via.events[-1] == "[DONE]"
        assert via.usage()["completion_tokens"] == 24


def check_200_concurrent_streams():
    n = 200
    results = [None] * n
    errors = []

    def one(i):
        try:
            hdr = {"X-Request-Id": "conc-%d" % i}
            results[i] = stream_chat(px.port, max_tokens=20 + i % 7, headers=hdr, timeout=60)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    for i, r in enumerate(results):
        assert r.status == 200 and r.complete, (i, r.status, r.wire[-200:])
        direct = stream_chat(sims[i % 2].port, max_tokens=20 + i % 7,
                             headers={"X-Request-Id": "conc-%d" % i})
        assert r.chunks == direct.chunks, "stream %d differs from the simulator's bytes" % i


def check_non_streaming():
    body = {"model": "sim-model", "prompt": "hello there", "max_tokens": 12, "ignore_eos": True}
    status, headers, data = http_request(px.port, "POST", "/v1/completions", body)
    assert status == 200, (status, data)
    obj = json.loads(data)
    assert obj["object"] == "text_completion"
    assert obj["usage"]["completion_tokens"] == 12
    assert "x-request-id" in headers


def read_responses(sock, count, timeout=20):
    sock.settimeout(timeout)
    buf = b""
    out = []
    while len(out) < count:
        try:
            r = parse_response(buf)
            if r.complete:
                out.append(r)
                buf = r.rest
                continue
        except ValueError:
            pass
        b = sock.recv(65536)
        if not b:
            break
        buf += b
    return out


def check_keepalive_reuse():
    before = metric_value(px.metrics(), "tokenrelay_upstream_reuses_total")
    with socket.create_connection(("127.0.0.1", px.port)) as s:
        for i in range(10):
            body = {"model": "sim-model", "prompt": "x%d" % i, "max_tokens": 3, "ignore_eos": True}
            s.sendall(build_request("POST", "/v1/completions", body, close=False))
            [r] = read_responses(s, 1)
            assert r.status == 200, r.status
            assert json.loads(r.body)["usage"]["completion_tokens"] == 3
    after = metric_value(px.metrics(), "tokenrelay_upstream_reuses_total")
    assert after - before >= 5, (before, after)


def check_pipelining_in_order():
    reqs = b""
    for i in range(5):
        body = {"model": "sim-model", "prompt": "p%d" % i, "max_tokens": 2 + i,
                "ignore_eos": True}
        reqs += build_request("POST", "/v1/completions", body, close=False,
                              headers={"X-Request-Id": "pipe-%d" % i})
    reqs += build_request("GET", "/health", close=False)
    with socket.create_connection(("127.0.0.1", px.port)) as s:
        s.sendall(reqs)
        rs = read_responses(s, 6)
    assert len(rs) == 6, len(rs)
    for i in range(5):
        assert rs[i].status == 200
        assert rs[i].headers["x-request-id"] == "pipe-%d" % i
        assert json.loads(rs[i].body)["usage"]["completion_tokens"] == 2 + i
    assert rs[5].status == 200


def check_chunked_request_body_and_expect():
    body = json.dumps({"model": "sim-model", "prompt": "chunked body", "max_tokens": 4,
                       "ignore_eos": True}).encode()
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 10]), body[i:i + 10])
                      for i in range(0, len(body), 10)) + b"0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", px.port)) as s:
        s.sendall(head + chunks)
        [r] = read_responses(s, 1)
    assert r.status == 200, r.body
    assert json.loads(r.body)["usage"]["completion_tokens"] == 4
    # Expect: 100-continue is answered by the proxy.
    with socket.create_connection(("127.0.0.1", px.port)) as s:
        s.settimeout(10)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(body))
        first = s.recv(4096)
        assert first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), first
        s.sendall(body)
        [r] = read_responses(s, 1)
        assert r.status == 200


def check_headers_forwarded():
    body = {"model": "sim-model", "prompt": "h", "max_tokens": 1}
    http_request(px.port, "POST", "/v1/completions", body, headers={"X-Forwarded-For": "9.9.9.9",
                                                          "Connection": "close, X-Secret",
                                                          "X-Secret": "s", "X-Keep": "k"})
    seen = [sim_stats(s.port)["last_request_headers"] for s in sims]
    got = [h for h in seen if h.get("x-keep") == "k"]
    assert got, seen
    h = got[0]
    assert h["x-forwarded-for"] == "9.9.9.9, 127.0.0.1", h
    assert "x-secret" not in h and "connection" not in h, h
    assert len(h["x-request-id"]) == 32, h


run_checks([
    ("stream bytes equal direct", check_stream_bytes_equal_direct),
    ("200 concurrent streams byte-exact", check_200_concurrent_streams),
    ("non-streaming completion", check_non_streaming),
    ("keep-alive reuse upstream", check_keepalive_reuse),
    ("pipelined requests answered in order", check_pipelining_in_order),
    ("chunked request body, Expect 100-continue", check_chunked_request_body_and_expect),
    ("hop-by-hop removed, XFF appended, id generated", check_headers_forwarded),
])

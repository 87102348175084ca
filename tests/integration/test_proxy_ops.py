"""Operating the real binary: CLI and config errors, /v1/models union, /health,
admin metrics, SIGTERM drain. Runs under $TOKENRELAY_IO."""

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time

from proxytools import start_proxy, run_checks, proxy_binary, io_backend
from simtools import start_sim, stream_chat, http_request, metric_value, wait_until


def write(text):
    d = tempfile.mkdtemp(prefix="tokenrelay-ops-")
    p = os.path.join(d, "t.ini")
    with open(p, "w") as f:
        f.write(text)
    return p


def run(*args):
    return subprocess.run([proxy_binary(), *args], capture_output=True, text=True, timeout=20)


def check_cli_and_config_errors():
    good = write("[proxy]\nlisten = 127.0.0.1:0\n\n[backend a]\nurl = http://127.0.0.1:9\n")
    r = run("--config", good, "--check")
    assert r.returncode == 0, (r.stdout, r.stderr)
    bad = write("[proxy]\nlisten = 127.0.0.1:0\nworkerz = 2\n\n[backend a]\nurl = http://x:9\n")
    r = run("--config", bad, "--check")
    assert r.returncode == 1
    assert r.stderr.startswith(bad + ":3: "), r.stderr
    assert "workerz" in r.stderr
    # The same message and exit status when starting with it.
    r = run("--config", bad)
    assert r.returncode == 1 and r.stderr.startswith(bad + ":3: "), r.stderr
    r = run("--config", "/nonexistent/tokenrelay.ini", "--check")
    assert r.returncode == 1 and "/nonexistent/tokenrelay.ini" in r.stderr
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("tokenrelay ")
    r = run("--help")
    assert r.returncode == 0 and "--config" in r.stdout and "/etc/tokenrelay/tokenrelay.ini" in r.stdout
    r = run("--bogus")
    assert r.returncode != 0


def check_models_union_and_health():
    a = start_sim("--speed", "200", "--model", "llama-8b", "--model", "shared")
    b = start_sim("--speed", "200", "--model", "shared", "--model", "qwen-7b")
    with start_proxy([a, b]) as px:
        status, _, body = http_request(px.port, "GET", "/v1/models")
        assert status == 200
        ids = [m["id"] for m in json.loads(body)["data"]]
        assert ids == ["llama-8b", "shared", "qwen-7b"], ids
        status, _, _ = http_request(px.port, "GET", "/health")
        assert status == 200
        status, _, _ = http_request(px.admin_port, "GET", "/health")
        assert status == 200
        # The backend choice and why is logged at start.
        log = px.log()
        want = io_backend()
        assert "I/O backend: " + (want if want != "auto" else "") in log, log
    a.stop()
    b.stop()


def check_metrics_families():
    sim = start_sim("--speed", "200")
    with start_proxy([sim]) as px:
        for _ in range(3):
            assert stream_chat(px.port, max_tokens=5).complete
        http_request(px.port, "GET", "/v1/models")
        fam = px.metrics()
        for name in ("tokenrelay_requests_total", "tokenrelay_inflight_requests",
                     "tokenrelay_backend_up", "tokenrelay_time_to_first_token_seconds",
                     "tokenrelay_stream_events_total"):
            assert name in fam, (name, sorted(fam))
        assert fam["tokenrelay_time_to_first_token_seconds"].type == "histogram"
        assert metric_value(fam, "tokenrelay_requests_total", backend="r0", code="200") == 3
        assert metric_value(fam, "tokenrelay_time_to_first_token_seconds_count") == 3
        # 5 tokens + role chunk + usage chunk per stream; [DONE] is not an event.
        assert metric_value(fam, "tokenrelay_stream_events_total") == 3 * 7
        bucket = metric_value(fam, "tokenrelay_time_to_first_token_seconds_bucket", le="+Inf")
        assert bucket == 3
    sim.stop()


def check_sigterm_drains_streams():
    sim = start_sim("--speed", "0.5")  # 16 ms steps: each stream lasts about 0.5 s
    px = start_proxy([sim], workers=2)
    results = []

    def one():
        results.append(stream_chat(px.port, max_tokens=30, timeout=60))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: metric_value(px.metrics(), "tokenrelay_inflight_requests") == 4)
    px.signal(signal.SIGTERM)
    # New connections are refused once the listeners are closed.
    def refused():
        try:
            socket.create_connection(("127.0.0.1", px.port), timeout=1).close()
            return False
        except OSError:
            return True
    wait_until(refused, timeout=5)
    for t in threads:
        t.join()
    code = px.proc.wait(30)
    assert code == 0, (code, px.log())
    assert len(results) == 4
    for r in results:
        assert r.status == 200 and r.complete and r.events[-1] == "[DONE]", r.wire[-200:]
        assert r.usage()["completion_tokens"] == 30
    assert "draining" in px.log()
    sim.stop()


def check_drain_timeout_bounds_exit():
    sim = start_sim("--speed", "1")
    px = start_proxy([sim], drain_timeout_ms=1500)
    # A very long stream: the drain deadline must cut it.
    s = socket.create_connection(("127.0.0.1", px.port))
    body = json.dumps({"model": "sim-model", "prompt": "x", "max_tokens": 5000,
                       "stream": True, "ignore_eos": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    s.recv(4096)
    t0 = time.monotonic()
    px.signal(signal.SIGTERM)
    code = px.proc.wait(30)
    took = time.monotonic() - t0
    assert code == 0, code
    assert 1.4 <= took < 10, took
    s.close()
    sim.stop()


def check_fallback_to_epoll_without_io_uring():
    sim = start_sim("--speed", "200")
    env = dict(os.environ, TOKENRELAY_FAKE_NO_IO_URING="1")
    px = start_proxy([sim], io="auto", env=env)
    try:
        assert "I/O backend: epoll (io_uring unavailable: io_uring_setup: " in px.log(), px.log()
        r = stream_chat(px.port, max_tokens=4)
        assert r.status == 200 and r.complete
    finally:
        assert px.stop() == 0
    cfg = write("[proxy]\nlisten = 127.0.0.1:0\nio = io_uring\n[admin]\nlisten = 127.0.0.1:0\n"
                "[backend a]\nurl = %s\n" % sim.url)
    r = subprocess.run([proxy_binary(), "--config", cfg], capture_output=True, text=True,
                       timeout=20, env=env)
    assert r.returncode == 1 and "io_uring unavailable (configured: io = io_uring)" in r.stderr, \
        r.stderr
    sim.stop()


run_checks([
    ("no io_uring: auto falls back to epoll, io_uring refuses",
     check_fallback_to_epoll_without_io_uring),
    ("CLI: --check, --version, --help, file:line errors", check_cli_and_config_errors),
    ("/v1/models union, /health, backend logged", check_models_union_and_health),
    ("admin /metrics families and counts", check_metrics_families),
    ("SIGTERM drains in-flight streams, exit 0", check_sigterm_drains_streams),
    ("drain deadline bounds the exit", check_drain_timeout_bounds_exit),
])

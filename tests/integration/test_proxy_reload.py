"""SIGHUP reload through the real binary: under load with a long stream open
(zero failed requests, the stream completes on the replica it started on, even
after that replica left the configuration), replicas added and removed, a
changed policy and auth applied to new requests only, idle keep-alive clients
answered once more with Connection: close, counters that survive the swap, and
bad configurations (syntax, missing key file) that keep the running one.
Runs under $TOKENRELAY_IO."""

import os
import re
import signal
import socket
import threading
import time

from proxytools import start_proxy, run_checks, make_config
from simtools import (start_sim, stream_chat, http_request, sim_stats, sim_config, metric_value,
                      wait_until, build_request, parse_response)


def rewrite(px, text):
    """Replaces the proxy's config file atomically (as an editor or CM tool would)."""
    tmp = px.cfg_path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, px.cfg_path)


def generation(px):
    return metric_value(px.metrics(), "tokenrelay_config_generation")


def reload_and_wait(px, expect_generation):
    px.signal(signal.SIGHUP)
    wait_until(lambda: generation(px) == expect_generation, timeout=10)


def requests_total(px, **labels):
    return metric_value(px.metrics(), "tokenrelay_requests_total", **labels)


def read_response(s, buf=b""):
    """Reads one whole response from socket <s>; returns it (None if the peer
    closed first)."""
    while True:
        try:
            r = parse_response(buf)
            if r.complete:
                return r
        except ValueError:
            pass  # head or a chunk-size line not complete yet
        b = s.recv(65536)
        if not b:
            return None
        buf += b


class Load:
    """Client threads sending short streamed chats as fast as they are answered,
    half on fresh connections, half on one keep-alive connection each (a
    keep-alive client reconnects only when the proxy says Connection: close).
    Every request is counted with its outcome."""

    def __init__(self, port, fresh=2, keepalive=2):
        self.port = port
        self.stop = threading.Event()
        self.ok = 0
        self.failed = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.fresh_loop) for _ in range(fresh)]
        self.threads += [threading.Thread(target=self.keepalive_loop) for _ in range(keepalive)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def record(self, good, what):
        with self.lock:
            if good:
                self.ok += 1
            else:
                self.failed.append(what)

    def fresh_loop(self):
        while not self.stop.is_set():
            try:
                r = stream_chat(self.port, max_tokens=4, timeout=30)
                good = r.status == 200 and r.complete and r.events[-1] == "[DONE]"
                self.record(good, r.wire[-300:])
            except Exception as e:  # noqa: BLE001 - any failure counts
                self.record(False, repr(e))

    def keepalive_loop(self):
        s = None
        while not self.stop.is_set():
            try:
                if s is None:
                    s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
                req = build_request("POST", "/v1/chat/completions",
                                    {"model": "sim-model", "max_tokens": 4, "stream": True,
                                     "ignore_eos": True,
                                     "messages": [{"role": "user", "content": "hi"}]},
                                    close=False)
                s.sendall(req)
                r = read_response(s)
                good = r is not None and r.status == 200 and b"data: [DONE]" in r.body
                self.record(good, "keep-alive: %r" % (r.body[-300:] if r else "closed"))
                if not good or r.headers.get("connection", "").lower() == "close":
                    s.close()
                    s = None
            except Exception as e:  # noqa: BLE001
                self.record(False, repr(e))
                if s:
                    s.close()
                s = None
        if s:
            s.close()


def check_reload_under_load():
    a = start_sim("--speed", "1")  # 8 ms steps
    b = start_sim("--speed", "1")
    base = dict(workers=2, drain_timeout_ms=10000)
    with start_proxy([("a", a.url)], **base) as px:
        # A long stream on a, open across two reloads (about 4 s of tokens).
        long_result = []
        long_thread = threading.Thread(target=lambda: long_result.append(
            stream_chat(px.port, max_tokens=500, timeout=60)))
        long_thread.start()
        wait_until(lambda: sim_stats(a.port)["running"] >= 1)
        with Load(px.port) as load:
            wait_until(lambda: load.ok >= 20, timeout=10)
            # 1: add b, switch to round robin.
            rewrite(px, make_config([("a", a.url), ("b", b.url)], **base,
                                    extra="[routing]\npolicy = round_robin\n"))
            reload_and_wait(px, 2)
            wait_until(lambda: sim_stats(b.port)["requests_received"] >= 10, timeout=10)
            ok_before = load.ok
            # 2: remove a while its long stream is still running.
            assert sim_stats(a.port)["running"] >= 1
            rewrite(px, make_config([("b", b.url)], **base))
            reload_and_wait(px, 3)
            a_seen = sim_stats(a.port)["requests_received"]
            wait_until(lambda: load.ok >= ok_before + 30, timeout=15)
        long_thread.join(60)
        assert not load.failed, (len(load.failed), load.failed[:3])
        # The long stream finished on a, complete, although a left the config.
        r = long_result[0]
        assert r.status == 200 and r.complete and r.events[-1] == "[DONE]", r.wire[-300:]
        assert r.usage()["completion_tokens"] == 500
        # Nothing new went to a after the second reload (in-flight ones finish).
        assert sim_stats(a.port)["requests_received"] <= a_seen + 4
        # Every response counted once; b's counter spans generations 2 and 3.
        wait_until(lambda: "configuration 1 drained" in px.log(), timeout=15)
        wait_until(lambda: "configuration 2 drained" in px.log(), timeout=15)
        assert requests_total(px, backend="b") == sim_stats(b.port)["requests_completed"]
        # a's series is gone (it left the configuration); the rest adds up.
        served = load.ok + 1
        total = requests_total(px)
        assert total == served - sim_stats(a.port)["requests_completed"], (total, served)
        log = px.log()
        assert "reload: configuration 3 serving" in log, log
    a.stop()
    b.stop()


def check_keepalive_client_answered_then_closed():
    sim = start_sim("--speed", "50")
    with start_proxy([sim]) as px:
        s = socket.create_connection(("127.0.0.1", px.port), timeout=10)
        req = build_request("GET", "/v1/models", close=False)

        def one():
            s.sendall(req)
            r = read_response(s)
            assert r is not None, "closed before answering"
            return r
        r = one()
        assert r.status == 200 and r.headers.get("connection", "").lower() != "close"
        rewrite(px, open(px.cfg_path).read())
        reload_and_wait(px, 2)
        time.sleep(0.2)
        # The idle connection of the old configuration was not closed under us:
        # its next request is answered, with Connection: close.
        r = one()
        assert r.status == 200, r.status
        assert r.headers.get("connection", "").lower() == "close", r.headers
        s.settimeout(5)
        assert s.recv(1) == b""
        s.close()
        wait_until(lambda: "configuration 1 drained" in px.log(), timeout=10)
    sim.stop()


def check_bad_config_keeps_running_one():
    sim = start_sim("--speed", "50")
    with start_proxy([sim]) as px:
        good = open(px.cfg_path).read()
        # A syntax error on a known line.
        lines = good.splitlines()
        lines.insert(3, "bogus_key = 1")
        rewrite(px, "\n".join(lines) + "\n")
        px.signal(signal.SIGHUP)
        pat = re.compile(r"SIGHUP: keeping the running configuration: %s:4: .*bogus_key"
                         % re.escape(px.cfg_path))
        wait_until(lambda: pat.search(px.log()), timeout=10)
        assert generation(px) == 1
        assert stream_chat(px.port, max_tokens=3).status == 200
        # A key file that does not exist: refused too, with its path.
        rewrite(px, good + "\n[auth]\napi_keys_file = /nonexistent/keys\n")
        px.signal(signal.SIGHUP)
        wait_until(lambda: "/nonexistent/keys" in px.log(), timeout=10)
        assert generation(px) == 1
        assert stream_chat(px.port, max_tokens=3).status == 200
        # Fixed: the next SIGHUP applies it.
        rewrite(px, good)
        reload_and_wait(px, 2)
        assert stream_chat(px.port, max_tokens=3).status == 200
    sim.stop()


def check_reload_applies_auth_and_keeps_restart_only_keys():
    sim = start_sim("--speed", "50")
    with start_proxy([sim]) as px:
        d = os.path.dirname(px.cfg_path)
        keys = os.path.join(d, "keys")
        with open(keys, "w") as f:
            f.write("sk-reload-test\n")
        text = open(px.cfg_path).read()
        # [proxy] listen changes (needs a restart): warned, the old port stays.
        text = text.replace("listen = 127.0.0.1:0", "listen = 127.0.0.1:1", 1)
        rewrite(px, text + "\n[auth]\napi_keys_file = %s\n" % keys)
        reload_and_wait(px, 2)
        assert "[proxy] listen changed; it needs a restart" in px.log()
        st, _, _ = http_request(px.port, "GET", "/v1/models")
        assert st == 401, st
        st, _, _ = http_request(px.port, "GET", "/v1/models",
                                headers={"Authorization": "Bearer sk-reload-test"})
        assert st == 200, st
    sim.stop()


def check_fresh_connections_across_many_reloads():
    """Connections arriving while a listener hands over are served, not reset:
    30 reloads 100 ms apart under a stream of fresh connections; the counters
    sampled all along never go back."""
    sim = start_sim("--speed", "50")
    with start_proxy([("s", sim.url)], workers=2) as px:
        stop = threading.Event()
        outcome = {"ok": 0, "failed": []}
        lock = threading.Lock()

        def client():
            while not stop.is_set():
                try:
                    st, _, body = http_request(px.port, "GET", "/v1/models", timeout=10)
                    good = st == 200 and b"sim-model" in body
                    what = (st, body[:200])
                except Exception as e:  # noqa: BLE001 - resets count as failures
                    good, what = False, repr(e)
                with lock:
                    if good:
                        outcome["ok"] += 1
                    else:
                        outcome["failed"].append(what)

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        seen = []
        try:
            for i in range(30):
                time.sleep(0.1)
                px.signal(signal.SIGHUP)
                seen.append(requests_total(px))
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        wait_until(lambda: generation(px) == 31, timeout=10)
        assert not outcome["failed"], (len(outcome["failed"]), outcome["failed"][:3])
        assert outcome["ok"] > 40, outcome["ok"]
        assert all(b >= a for a, b in zip(seen, seen[1:])), seen
        wait_until(lambda: requests_total(px) == outcome["ok"], timeout=10)
        fams = px.metrics()
        assert metric_value(fams, "tokenrelay_config_reloads_total", result="ok") == 30
    sim.stop()


def check_draining_limit_and_sigterm():
    """Long streams keep older configurations draining: the 5th reload is refused
    (counted as failed), serving goes on; SIGTERM then cuts every generation at
    drain_timeout_ms and exits 0."""
    sim = start_sim("--speed", "1")
    px = start_proxy([sim], drain_timeout_ms=1500)
    socks = []
    body = ('{"model":"sim-model","prompt":"x","max_tokens":5000,"stream":true,'
            '"ignore_eos":true}').encode()
    for i in range(5):
        s = socket.create_connection(("127.0.0.1", px.port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(body), body))
        assert s.recv(4096).startswith(b"HTTP/1.1 200"), i
        socks.append(s)
        px.signal(signal.SIGHUP)
        if i < 4:
            wait_until(lambda: generation(px) == i + 2, timeout=10)
    wait_until(lambda: "older configurations are still draining" in px.log(), timeout=10)
    fams = px.metrics()
    assert metric_value(fams, "tokenrelay_config_generation") == 5
    assert metric_value(fams, "tokenrelay_config_reloads_total", result="failed") == 1
    assert stream_chat(px.port, max_tokens=3).status == 200
    t0 = time.monotonic()
    px.signal(signal.SIGTERM)
    code = px.proc.wait(30)
    took = time.monotonic() - t0
    assert code == 0, (code, px.log())
    assert took < 10, took
    for s in socks:
        s.close()
    sim.stop()


def check_admin_answers_from_the_first_moment():
    """The admin endpoint never answers before it has something to read: probe
    /health and /metrics in a loop while the proxy starts, several times."""
    sim = start_sim("--speed", "50")
    for _ in range(5):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        text = make_config([sim]).replace("[admin]\nlisten = 127.0.0.1:0",
                                          "[admin]\nlisten = 127.0.0.1:%d" % port)
        stop = threading.Event()
        answers = []

        def prober():
            while not stop.is_set():
                for path in ("/health", "/metrics", "/status"):
                    try:
                        st, _, _ = http_request(port, "GET", path, timeout=2)
                        answers.append(st)
                    except OSError:
                        pass
        th = threading.Thread(target=prober)
        th.start()
        try:
            with start_proxy(config_text=text) as px:
                wait_until(lambda: len(answers) > 10, timeout=10)
                assert px.proc.poll() is None
        finally:
            stop.set()
            th.join(10)
        assert set(answers) <= {200, 503}, set(answers)
    sim.stop()


def check_limits_count_streams_of_the_old_configuration():
    """max_inflight counts streams still running under the previous
    configuration: the replica's accounting is shared across the reload."""
    sim = start_sim("--speed", "1")
    extra = "[admission]\nmax_queue = 0\n"
    text = make_config([("s", sim.url)], extra=extra) + "max_inflight = 2\n"
    with start_proxy(config_text=text) as px:
        body = ('{"model":"sim-model","prompt":"x","max_tokens":5000,"stream":true,'
                '"ignore_eos":true}').encode()
        socks = []
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", px.port))
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(body), body))
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            socks.append(s)
        st, _, _ = http_request(px.port, "POST", "/v1/completions",
                                {"model": "sim-model", "prompt": "x", "max_tokens": 2})
        assert st == 429, st
        rewrite(px, text)
        reload_and_wait(px, 2)
        # The new configuration sees the two streams of the old one.
        st, _, _ = http_request(px.port, "POST", "/v1/completions",
                                {"model": "sim-model", "prompt": "x", "max_tokens": 2})
        assert st == 429, st
        assert metric_value(px.metrics(), "tokenrelay_inflight_requests", backend="s") == 2
        for s in socks:
            s.close()
        wait_until(lambda: metric_value(px.metrics(), "tokenrelay_inflight_requests",
                                        backend="s") == 0, timeout=10)
        st, _, _ = http_request(px.port, "POST", "/v1/completions",
                                {"model": "sim-model", "prompt": "x", "max_tokens": 2})
        assert st == 200, st
    sim.stop()


def check_health_state_carried_across_reload():
    """A replica the running configuration knows is up stays up through a reload
    that happens while one health check fails (fall = 3 applies, the first
    check of the new configuration does not decide alone); one it knows is down
    needs rise = 2 good checks."""
    a = start_sim("--speed", "50")
    b = start_sim("--speed", "50")
    cfg = make_config([("a", a.url), ("b", b.url)], health_interval_ms=60000)
    with start_proxy(config_text=cfg) as px:
        fams = px.metrics()
        assert metric_value(fams, "tokenrelay_backend_up", backend="a") == 1
        assert metric_value(fams, "tokenrelay_backend_up", backend="b") == 1
        sim_config(a.port, health_status=503)
        rewrite(px, cfg)
        reload_and_wait(px, 2)
        fams = px.metrics()
        assert metric_value(fams, "tokenrelay_backend_up", backend="a") == 1
        assert metric_value(fams, "tokenrelay_backend_up", backend="b") == 1
    a.stop()
    b.stop()


if __name__ == "__main__":
    run_checks([
        ("SIGHUP under load, long stream across reloads", check_reload_under_load),
        ("idle keep-alive client: answered, then closed", check_keepalive_client_answered_then_closed),
        ("bad config on SIGHUP keeps the running one", check_bad_config_keeps_running_one),
        ("reload applies auth, keeps restart-only keys", check_reload_applies_auth_and_keeps_restart_only_keys),
        ("fresh connections across 30 reloads", check_fresh_connections_across_many_reloads),
        ("draining limit refuses a reload; SIGTERM ends all", check_draining_limit_and_sigterm),
        ("admin endpoint answers from the first moment", check_admin_answers_from_the_first_moment),
        ("limits count the old configuration's streams", check_limits_count_streams_of_the_old_configuration),
        ("health state carried across a reload", check_health_state_carried_across_reload),
    ])

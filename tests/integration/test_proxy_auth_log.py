"""API keys and the access log through the real proxy: 401 in the OpenAI shape
before the body is read, keys never forwarded nor logged, per-replica key sent
upstream, one JSON line per request, SIGUSR1 reopens the log. Runs under
$TOKENRELAY_IO."""

import hashlib
import json
import os
import signal
import socket
import tempfile
import time

from proxytools import start_proxy, run_checks
from simtools import (start_sim, stream_chat, http_request, sim_stats, metric_value, wait_until)

BODY = {"model": "sim-model", "prompt": "hello", "max_tokens": 3, "ignore_eos": True}


def setup(tmp):
    keys = os.path.join(tmp, "keys")
    with open(keys, "w") as f:
        f.write("# operators\nplain-key-1\nsha256:%s\n" % hashlib.sha256(b"hashed-key-2").hexdigest())
    os.chmod(keys, 0o600)
    return keys


def check_api_keys():
    tmp = tempfile.mkdtemp()
    keys = setup(tmp)
    log = os.path.join(tmp, "access.log")
    sim = start_sim("--speed", "200")
    extra = "[auth]\napi_keys_file = %s\n[log]\naccess_log = %s\n" % (keys, log)
    cfg_backend = [("gpu0", sim.url)]
    with start_proxy(cfg_backend, extra=extra) as px:
        # Missing, wrong, wrong scheme: 401, OpenAI shape, nothing reaches the replica.
        for hdrs in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic plain-key-1"}):
            status, headers, body = http_request(px.port, "POST", "/v1/completions", BODY, hdrs)
            assert status == 401, (hdrs, status)
            err = json.loads(body)["error"]
            assert err["type"] == "authentication_error" and err["param"] is None, err
        assert sim_stats(sim.port)["requests_received"] == 0
        # A big body is refused at the head: the proxy never waits for it.
        s = socket.create_connection(("127.0.0.1", px.port))
        s.settimeout(5)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 30000000\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 401 ")
        s.close()
        # Good keys, scheme case-insensitive; the client's key is not forwarded.
        for auth in ("Bearer plain-key-1", "bearer hashed-key-2", "BEARER  plain-key-1"):
            status, _, _ = http_request(px.port, "POST", "/v1/completions", BODY,
                                        {"Authorization": auth})
            assert status == 200, (auth, status)
            seen = sim_stats(sim.port)["last_request_headers"]
            assert "authorization" not in seen, seen
        # /health stays open; /v1/models needs the key.
        assert http_request(px.port, "GET", "/health")[0] == 200
        assert http_request(px.port, "GET", "/v1/models")[0] == 401
        assert metric_value(px.metrics(), "tokenrelay_auth_failures_total") >= 5
        # The access log: one JSON line per request, never the key.
        r = stream_chat(px.port, max_tokens=5, headers={"Authorization": "Bearer plain-key-1",
                                                       "X-Request-Id": "logged-1"})
        assert r.complete
        time.sleep(0.2)
        text = open(log).read()
        assert "plain-key-1" not in text and "hashed-key-2" not in text
        lines = [json.loads(l) for l in text.splitlines()]
        assert len(lines) >= 9, len(lines)
        rec = [l for l in lines if l["request_id"] == "logged-1"][0]
        assert rec["status"] == 200 and rec["backend"] == "gpu0" and rec["model"] == "sim-model"
        assert rec["termination"] == "ok" and rec["stream"] is True
        assert rec["completion_tokens"] == 5 and rec["ttft_ms"] > 0 and rec["bytes_out"] > 0
        assert [l for l in lines if l["status"] == 401][0]["termination"] == "auth_failed"
        # Rotation: rename, SIGUSR1, the next line goes to a new file.
        os.rename(log, log + ".1")
        px.signal(signal.SIGUSR1)
        wait_until(lambda: "reopening the access log" in px.log())
        http_request(px.port, "POST", "/v1/completions", BODY,
                     {"Authorization": "Bearer plain-key-1", "X-Request-Id": "after-rotate"})
        wait_until(lambda: os.path.exists(log) and "after-rotate" in open(log).read())
        assert "after-rotate" not in open(log + ".1").read()
    sim.stop()


def check_upstream_key_sent():
    sim = start_sim("--speed", "200")
    cfg = ("[proxy]\nlisten = 127.0.0.1:0\nworkers = 1\nio = %s\n[admin]\nlisten = 127.0.0.1:0\n"
           "[poller]\nhealth_interval_ms = 200\n[backend gpu0]\nurl = %s\napi_key = replica-secret\n"
           % (os.environ.get("TOKENRELAY_IO", "auto"), sim.url))
    with start_proxy(config_text=cfg) as px:
        status, _, _ = http_request(px.port, "POST", "/v1/completions", BODY,
                                    {"Authorization": "Bearer client-thing"})
        assert status == 200
        seen = sim_stats(sim.port)["last_request_headers"]
        assert seen.get("authorization") == "Bearer replica-secret", seen
    sim.stop()


def check_bad_key_file_fails_check():
    tmp = tempfile.mkdtemp()
    bad = os.path.join(tmp, "keys")
    with open(bad, "w") as f:
        f.write("ok-key\nsha256:nothex\n")
    cfg = os.path.join(tmp, "t.ini")
    with open(cfg, "w") as f:
        f.write("[auth]\napi_keys_file = %s\n[backend a]\nurl = http://127.0.0.1:9\n" % bad)
    import subprocess
    from proxytools import proxy_binary
    r = subprocess.run([proxy_binary(), "--config", cfg, "--check"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith(bad + ":2: "), r.stderr


run_checks([
    ("API keys: 401 shapes, not forwarded, access log, SIGUSR1", check_api_keys),
    ("per-replica api_key sent upstream", check_upstream_key_sent),
    ("bad key file fails --check with file:line", check_bad_key_file_fails_check),
])

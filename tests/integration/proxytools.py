"""Helpers for running the real tokenrelay binary in integration tests.

    sims = [start_sim("--speed", "50") for _ in range(2)]
    with start_proxy(sims) as px:           # io backend from $TOKENRELAY_IO
        res = stream_chat(px.port, max_tokens=8)
        px.admin_port, px.log(), px.metrics()

The proxy's stderr goes to a log file; the harness waits for its
"listening on HOST:PORT ... admin on HOST:PORT" line (ports are ephemeral).
"""

import atexit
import os
import re
import signal
import subprocess
import tempfile
import time

import simtools

_live = []


def proxy_binary():
    path = os.environ.get("TOKENRELAY_BIN")
    if path:
        return path
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "build", "tokenrelay"))


def io_backend():
    """The backend under test: $TOKENRELAY_IO (io_uring | epoll), default auto."""
    return os.environ.get("TOKENRELAY_IO", "auto")


def make_config(backends, workers=1, io=None, extra="", health_interval_ms=200,
                drain_timeout_ms=10000):
    """INI text: <backends> is a list of Sims, ports, or (name, url) pairs."""
    lines = ["[proxy]", "listen = 127.0.0.1:0", "workers = %d" % workers,
             "io = %s" % (io or io_backend()), "drain_timeout_ms = %d" % drain_timeout_ms, "",
             "[admin]", "listen = 127.0.0.1:0", "",
             "[poller]", "health_interval_ms = %d" % health_interval_ms, "timeout_ms = 500", ""]
    for i, b in enumerate(backends):
        if isinstance(b, tuple):
            name, url = b
        elif isinstance(b, int):
            name, url = "r%d" % i, "http://127.0.0.1:%d" % b
        else:
            name, url = "r%d" % i, b.url
        lines += ["[backend %s]" % name, "url = %s" % url, ""]
    return "\n".join(lines) + "\n" + extra


def skip_if_backend_missing():
    """Exit 77 (meson: skipped) when the backend under test cannot run here."""
    if io_backend() != "io_uring":
        return
    r = subprocess.run([proxy_binary(), "--probe-io"], capture_output=True, text=True)
    if r.returncode != 0:
        import sys
        print("SKIP: %s" % r.stdout.strip(), flush=True)
        sys.exit(77)


skip_if_backend_missing()


class Proxy:
    def __init__(self, proc, cfg_path, log_path, port, admin_port):
        self.proc = proc
        self.cfg_path = cfg_path
        self.log_path = log_path
        self.port = port
        self.admin_port = admin_port

    def log(self):
        with open(self.log_path, "r", errors="replace") as f:
            return f.read()

    def metrics(self):
        return simtools.metrics(self.admin_port)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=15.0):
        """SIGTERM and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self in _live:
            _live.remove(self)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        code = self.stop()
        if exc[0] is None:
            assert code == 0, "tokenrelay exited with %s\n%s" % (code, self.log())


@atexit.register
def _kill_all():
    for p in list(_live):
        try:
            p.proc.kill()
            p.proc.wait(2)
        except Exception:
            pass


LISTEN_RE = re.compile(r"listening on (\S+):(\d+) .* admin on (\S+):(\d+)")


def start_proxy(backends=None, config_text=None, timeout=10.0, env=None, **kw):
    """Starts tokenrelay with <config_text> (or make_config(backends, **kw))."""
    text = config_text if config_text is not None else make_config(backends, **kw)
    d = tempfile.mkdtemp(prefix="tokenrelay-test-")
    cfg = os.path.join(d, "tokenrelay.ini")
    with open(cfg, "w") as f:
        f.write(text)
    log = os.path.join(d, "tokenrelay.log")
    logf = open(log, "w")
    proc = subprocess.Popen([proxy_binary(), "--config", cfg], stdout=logf, stderr=logf,
                            stdin=subprocess.DEVNULL, env=env)
    logf.close()
    deadline = time.monotonic() + timeout
    while True:
        with open(log, "r", errors="replace") as f:
            content = f.read()
        m = LISTEN_RE.search(content)
        if m:
            break
        if proc.poll() is not None:
            raise RuntimeError("tokenrelay exited with %s:\n%s" % (proc.returncode, content))
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("tokenrelay did not start in %.0fs:\n%s" % (timeout, content))
        time.sleep(0.02)
    p = Proxy(proc, cfg, log, int(m.group(2)), int(m.group(4)))
    _live.append(p)
    return p


def run_checks(checks):
    """Runs each (name, fn) in order, printing progress; exits 1 on the first failure."""
    import sys
    import traceback
    failed = 0
    for name, fn in checks:
        t0 = time.monotonic()
        try:
            fn()
            print("ok   %-50s %.2fs" % (name, time.monotonic() - t0), flush=True)
        except Exception:
            failed += 1
            print("FAIL %s" % name, flush=True)
            traceback.print_exc()
    sys.exit(1 if failed else 0)

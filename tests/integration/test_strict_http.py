"""Strict HTTP/1.1 parsing through the real proxy: reject, never repair.

Every malformed or ambiguous request is sent as raw bytes on a fresh TCP
connection. The proxy must answer exactly once, with the 4xx (or 501) the
parser chose and an OpenAI-style error body, then close the connection; and
nothing at all may reach the replica (vllm-sim counts every inference request
it receives). Smuggling attempts hide a complete second request in the body.
On the upstream side a fake replica answers with invalid framing: the client
gets a 502 and the proxy never reuses that connection. Runs under
$TOKENRELAY_IO (io_uring or epoll)."""

import json
import select
import socket
import threading
import time

from proxytools import start_proxy, run_checks
from simtools import start_sim, sim_stats, parse_response, build_request, wait_until

# Small limits so that the 414/431 cases stay small (and trickle quickly).
LIMITS = "[limits]\nrequest_line_bytes = 1KiB\nheader_bytes = 2KiB\nheader_count = 20\n"

HOST = b"Host: tokenrelay\r\n"
POST = b"POST /v1/completions HTTP/1.1\r\n" + HOST + b"Content-Type: application/json\r\n"
CHUNKED_POST = POST + b"Transfer-Encoding: chunked\r\n\r\n"
GOOD_BODY = b'{"model":"sim-model","prompt":"hello","max_tokens":2}'


def hidden_request(path=b"/v1/completions"):
    """A complete, valid inference request: if it ever reached the simulator,
    requests_received would count it."""
    return (b"POST " + path + b" HTTP/1.1\r\n" + HOST + b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(GOOD_BODY) + GOOD_BODY)


def cl(body):
    return b"Content-Length: %d\r\n" % len(body)


# (name, raw bytes, status). Each byte string is one complete attempt.
MALFORMED = [
    # Content-Length / Transfer-Encoding ambiguity
    ("CL then TE", POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE then CL", POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    ("CL twice, same value", POST + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
    ("CL twice, different", POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    ("CL list", POST + b"Content-Length: 5, 5\r\n\r\nhello", 400),
    ("CL signed +", POST + b"Content-Length: +5\r\n\r\nhello", 400),
    ("CL signed -", POST + b"Content-Length: -5\r\n\r\nhello", 400),
    ("CL hex", POST + b"Content-Length: 0x5\r\n\r\nhello", 400),
    ("CL spaced", POST + b"Content-Length: 1 2\r\n\r\nhello", 400),
    ("CL overflow", POST + b"Content-Length: 18446744073709551616\r\n\r\nhello", 400),
    ("TE gzip", POST + b"Transfer-Encoding: gzip\r\n\r\nabc", 400),
    ("TE identity", POST + b"Transfer-Encoding: identity\r\n\r\nabc", 400),
    ("TE chunked, chunked", POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE xchunked", POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    ("TE trailing VT", POST + b"Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n", 400),
    ("TE trailing SOH", POST + b"Transfer-Encoding: chunked\x01\r\n\r\n0\r\n\r\n", 400),
    ("TE repeated", POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"0\r\n\r\n", 400),
    ("TE empty element", POST + b"Transfer-Encoding: , chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE in HTTP/1.0", b"POST /v1/completions HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"5\r\nhello\r\n0\r\n\r\n", 400),
    # Well-formed but a coding the proxy does not implement (RFC 9112 6.1).
    ("TE gzip, chunked", POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    # Header lines
    ("SP before colon", b"GET /v1/models HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    ("SP before colon, CL", POST + b"Content-Length : 5\r\n\r\nhello", 400),
    ("HTAB before colon", b"GET /v1/models HTTP/1.1\r\nHost\t: x\r\n\r\n", 400),
    ("obs-fold", b"GET /v1/models HTTP/1.1\r\n" + HOST + b"X-A: a\r\n b\r\n\r\n", 400),
    ("obs-fold HTAB", b"GET /v1/models HTTP/1.1\r\n" + HOST + b"X-A: a\r\n\tb\r\n\r\n", 400),
    ("bare CR in value", b"GET /v1/models HTTP/1.1\r\n" + HOST + b"X-A: a\rb\r\n\r\n", 400),
    ("bare CR ends the head", b"GET /v1/models HTTP/1.1\r\n" + HOST + b"\rX", 400),
    ("bare CR in request line", b"GET /v1/models HTTP/1.1\r" + HOST + b"\r\n", 400),
    ("bare LF", b"GET /v1/models HTTP/1.1\n" + HOST + b"\r\n", 400),
    ("NUL in target", b"GET /v1/mo\x00dels HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("NUL in name", b"GET /v1/models HTTP/1.1\r\n" + HOST + b"X\x00A: b\r\n\r\n", 400),
    ("NUL in value", b"GET /v1/models HTTP/1.1\r\n" + HOST + b"X-A: a\x00b\r\n\r\n", 400),
    ("NUL in method", b"G\x00ET /v1/models HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("NUL in chunk size", CHUNKED_POST + b"5\x00\r\nhello\r\n0\r\n\r\n", 400),
    ("NUL in trailer", CHUNKED_POST + b"0\r\nT: a\x00\r\n\r\n", 400),
    ("name with quote", b"GET /v1/models HTTP/1.1\r\n" + HOST + b"X\"A: a\r\n\r\n", 400),
    ("name with 0x80", b"GET /v1/models HTTP/1.1\r\n" + HOST + b"X\x80A: a\r\n\r\n", 400),
    ("name with 0x01", b"GET /v1/models HTTP/1.1\r\n" + HOST + b"X\x01A: a\r\n\r\n", 400),
    ("empty name", b"GET /v1/models HTTP/1.1\r\n" + HOST + b": a\r\n\r\n", 400),
    ("line without colon", b"GET /v1/models HTTP/1.1\r\n" + HOST + b"X-A a\r\n\r\n", 400),
    ("SP before first header", b"GET /v1/models HTTP/1.1\r\n " + HOST + b"\r\n", 400),
    ("HTAB before first header", b"GET /v1/models HTTP/1.1\r\n\t" + HOST + b"\r\n", 400),
    # Chunked bodies
    ("chunk size 0x5", CHUNKED_POST + b"0x5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk size +5", CHUNKED_POST + b"+5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk size -0", CHUNKED_POST + b"-0\r\n\r\n", 400),
    ("chunk size leading SP", CHUNKED_POST + b" 5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk size overflow", CHUNKED_POST + b"10000000000000000\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk data too long", CHUNKED_POST + b"3\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk data too long by 2", CHUNKED_POST + b"3\r\nhelXX0\r\n\r\n", 400),
    ("request in trailers", CHUNKED_POST + b"0\r\nGET /x HTTP/1.1\r\nHost: y\r\n\r\n", 400),
    # Versions, Host, method, request line
    ("HTTP/1.32", b"GET /v1/models HTTP/1.32\r\n" + HOST + b"\r\n", 400),
    ("HTTP/1.2", b"GET /v1/models HTTP/1.2\r\n" + HOST + b"\r\n", 400),
    ("HTTP/2.0", b"GET /v1/models HTTP/2.0\r\n" + HOST + b"\r\n", 400),
    ("HTTP/0.9 form", b"GET /v1/models\r\n\r\n", 400),
    ("lowercase http", b"GET /v1/models http/1.1\r\n" + HOST + b"\r\n", 400),
    ("two SP in request line", b"GET  /v1/models HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("HTAB in target", b"GET /v1/mo\tdels HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("HTTP/1.1 without Host", b"GET /v1/models HTTP/1.1\r\n\r\n", 400),
    ("two Host headers", b"GET /v1/models HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("two equal Host headers", b"GET /v1/models HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    ("CONNECT", b"CONNECT tokenrelay:443 HTTP/1.1\r\nHost: tokenrelay:443\r\n\r\n", 405),
    # Limits, sent whole (the trickled variants are separate checks)
    ("request line too long", b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n" + HOST + b"\r\n", 414),
    ("header section too large",
     b"GET /v1/models HTTP/1.1\r\n" + HOST + b"X-Big: " + b"v" * 3000 + b"\r\n\r\n", 431),
    ("too many headers",
     b"GET /v1/models HTTP/1.1\r\n" + HOST + b"".join(b"X-%d: 1\r\n" % i for i in range(30)) +
     b"\r\n", 431),
]

# Smuggling: a complete inference request hidden behind an ambiguous frame.
SMUGGLING = [
    ("CL+TE", POST + cl(b"0\r\n\r\n" + hidden_request()) + b"Transfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n" + hidden_request()),
    ("TE+CL", POST + b"Transfer-Encoding: chunked\r\n" + cl(b"0\r\n\r\n") + b"\r\n0\r\n\r\n" +
     hidden_request()),
    ("CL+TE xchunked", POST + cl(b"0\r\n\r\n" + hidden_request()) +
     b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + hidden_request()),
    ("CL twice", POST + b"Content-Length: 0\r\n" + cl(hidden_request()) + b"\r\n" +
     hidden_request()),
    ("obs-folded TE", POST + cl(b"0\r\n\r\n" + hidden_request()) +
     b"Transfer-Encoding: identity,\r\n chunked\r\n\r\n0\r\n\r\n" + hidden_request()),
    ("chunk data overrun", CHUNKED_POST + b"2\r\n{}XX0\r\n\r\n" + hidden_request()),
    ("bare CR ends the head", POST + b"Content-Length: 0\r\n\rX" + hidden_request()),
    ("request in trailers", CHUNKED_POST + b"2\r\n{}\r\n0\r\n" + hidden_request()),
    ("TE in HTTP/1.0", b"POST /v1/completions HTTP/1.0\r\n" + cl(b"0\r\n\r\n") +
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden_request()),
]

READ_TIMEOUT_S = 5.0


def read_until_closed(s, timeout=READ_TIMEOUT_S):
    """Every byte the proxy sends until it closes; fails if it does not close."""
    s.settimeout(timeout)
    out = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            raise AssertionError("the proxy did not close the connection; got %r" % bytes(out))
        try:
            b = s.recv(65536)
        except socket.timeout:
            raise AssertionError("the proxy did not close the connection; got %r" % bytes(out))
        except ConnectionResetError:
            break  # closed with unread input behind the error: the answer is already here
        if not b:
            break
        out += b
    return bytes(out)


def check_rejection(raw, status, what):
    """Exactly one response with <status> and an OpenAI error body; nothing after it."""
    assert raw, "%s: no response at all" % what
    r = parse_response(raw)
    assert r.status == status, "%s: status %d, wanted %d: %r" % (what, r.status, status, raw[:300])
    assert r.complete, "%s: truncated response %r" % (what, raw)
    assert r.rest == b"", "%s: bytes after the response: %r" % (what, r.rest)
    assert r.headers.get("connection", "").lower() == "close", (what, r.headers)
    assert r.headers.get("content-type", "").startswith("application/json"), (what, r.headers)
    err = json.loads(r.body)["error"]
    assert isinstance(err["message"], str) and err["message"], (what, err)
    assert err["type"] == "invalid_request_error", (what, err)
    assert err["param"] is None, (what, err)
    assert isinstance(err["code"], str) and err["code"], (what, err)
    if status == 414:
        assert err["code"] == "uri_too_long", (what, err)
    if status == 431:
        assert err["code"] == "headers_too_large", (what, err)
    return err


def send_raw(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as s:
        s.sendall(data)
        return read_until_closed(s)


def send_trickled(port, data, piece, pause_s):
    """Sends <data> in <piece>-byte writes with pauses; stops writing as soon as
    the proxy has answered (it closes after its error, so writing on would only
    meet a reset). Returns what the proxy sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as s:
        for off in range(0, len(data), piece):
            readable, _, _ = select.select([s], [], [], 0)
            if readable:
                break
            try:
                s.sendall(data[off:off + piece])
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(pause_s)
        return read_until_closed(s)


# ---- client side: one simulator that must receive nothing -------------------

_sim = None
_px = None


def setup():
    global _sim, _px
    _sim = start_sim()
    _px = start_proxy([_sim], extra=LIMITS)


def check_malformed_requests_rejected():
    failures = []
    for what, data, status in MALFORMED:
        try:
            check_rejection(send_raw(_px.port, data), status, what)
        except Exception as e:  # collect them all: one run shows every broken case
            failures.append("%s: %r" % (what, e))
    assert not failures, "\n".join(failures)


def check_smuggling_attempts_rejected():
    failures = []
    for what, data in SMUGGLING:
        try:
            check_rejection(send_raw(_px.port, data), 400, "smuggling " + what)
        except Exception as e:
            failures.append("%s: %r" % (what, e))
    assert not failures, "\n".join(failures)


def check_limits_split_across_reads():
    head = b"GET /v1/models HTTP/1.1\r\n" + HOST
    big_value = head + b"X-Big: " + b"v" * 3000 + b"\r\n\r\n"
    check_rejection(send_trickled(_px.port, big_value, 64, 0.002), 431, "trickled large header")
    many_lines = [b"X-%d: %s\r\n" % (i, b"v" * 10) for i in range(30)]
    with socket.create_connection(("127.0.0.1", _px.port), timeout=READ_TIMEOUT_S) as s:
        s.sendall(head)
        for line in many_lines:  # one header line per write, split in the middle too
            if select.select([s], [], [], 0)[0]:
                break
            try:
                s.sendall(line[:5])
                time.sleep(0.002)
                s.sendall(line[5:])
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.002)
        check_rejection(read_until_closed(s), 431, "trickled header count")
    long_line = b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n" + HOST + b"\r\n"
    check_rejection(send_trickled(_px.port, long_line, 100, 0.002), 414, "trickled request line")
    # Byte by byte: every split point of a smuggling attempt gets the same verdict.
    smuggle = SMUGGLING[0][1]
    check_rejection(send_trickled(_px.port, smuggle, 1, 0.0005), 400, "CL+TE byte by byte")


def check_simulator_received_nothing():
    st = sim_stats(_sim.port)
    assert st["requests_received"] == 0, st
    # Control: the same proxy does forward a well-formed request.
    def forwarded():
        raw = send_raw(_px.port, build_request("POST", "/v1/completions", GOOD_BODY))
        return parse_response(raw).status == 200
    wait_until(forwarded, timeout=10, interval=0.1)
    assert sim_stats(_sim.port)["requests_received"] >= 1


def teardown_client_side():
    code = _px.stop()
    log = _px.log()
    assert code == 0, "tokenrelay exited with %s\n%s" % (code, log)
    _sim.stop()


# ---- upstream side: a fake replica with broken framing ----------------------

GOOD_JSON = (b'{"id":"cmpl-1","object":"text_completion","model":"fake-model","choices":'
             b'[{"index":0,"text":"ok","finish_reason":"stop"}],'
             b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}')
MODELS_JSON = b'{"object":"list","data":[{"id":"fake-model","object":"model","owned_by":"x"}]}'


def ok_response(body, ctype=b"application/json"):
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\n" + cl(body) + b"\r\n" + body)


SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
EVENT = b'data: {"choices":[{"index":0,"text":"x"}]}\n\n'

# Broken answers, selected per request by the X-Fake-Mode header. "head" ones
# are wrong before any byte of the body; "stream" ones break the chunked body.
BAD_ANSWERS = {
    "cl_and_te": ("head", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" +
                  cl(GOOD_JSON) + b"Transfer-Encoding: chunked\r\n\r\n" + GOOD_JSON),
    "te_and_cl": ("head", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n" + cl(GOOD_JSON) + b"\r\n" + GOOD_JSON),
    "cl_twice": ("head", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" +
                 cl(GOOD_JSON) + cl(GOOD_JSON) + b"\r\n" + GOOD_JSON),
    "cl_list": ("head", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d, %d\r\n\r\n" % (len(GOOD_JSON), len(GOOD_JSON)) + GOOD_JSON),
    "te_gzip": ("head", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: gzip\r\n\r\n" + GOOD_JSON),
    "te_chunked_twice": ("head", b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
    "te_http10": ("head", b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "obs_fold": ("head", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-A: a\r\n b\r\n" +
                 cl(GOOD_JSON) + b"\r\n" + GOOD_JSON),
    "bare_cr": ("head", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + cl(GOOD_JSON) +
                b"\rX" + GOOD_JSON),
    "chunk_size_hex_prefix": ("stream", SSE_HEAD + b"0x%x\r\n" % len(EVENT) + EVENT +
                              b"\r\n0\r\n\r\n"),
    "chunk_size_negative": ("stream", SSE_HEAD + b"-0\r\n\r\n"),
    "chunk_size_overflow": ("stream", SSE_HEAD + b"10000000000000000\r\n" + EVENT),
    "chunk_data_overrun": ("stream", SSE_HEAD + b"%x\r\n" % (len(EVENT) - 2) + EVENT +
                           b"\r\n0\r\n\r\n"),
}


class FakeUpstream:
    """A socket server speaking just enough HTTP/1.1: /health 200, /v1/models,
    /metrics 404, and inference requests answered per X-Fake-Mode. It records,
    per accepted connection, the paths requested and whether the peer closed."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []  # per connection: {"id", "posts": [mode, ...], "closed": Event}
        self.post_log = []  # every inference request in arrival order: (conn id, index, mode)
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            rec = {"posts": [], "closed": threading.Event()}
            with self.lock:
                rec["id"] = len(self.conns)
                self.conns.append(rec)
            threading.Thread(target=self._serve, args=(c, rec), daemon=True).start()

    def _serve(self, c, rec):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    b = c.recv(65536)
                    if not b:
                        return
                    buf += b
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for ln in lines[1:]:
                    k, _, v = ln.partition(":")
                    headers[k.strip().lower()] = v.strip()
                n = int(headers.get("content-length", "0"))
                while len(buf) < n:
                    b = c.recv(65536)
                    if not b:
                        return
                    buf += b
                buf = buf[n:]
                if path == "/health":
                    c.sendall(ok_response(b"OK", b"text/plain"))
                elif path == "/v1/models":
                    c.sendall(ok_response(MODELS_JSON))
                elif method == "POST":
                    mode = headers.get("x-fake-mode", "ok")
                    with self.lock:
                        self.post_log.append((rec["id"], len(rec["posts"]), mode))
                        rec["posts"].append(mode)
                    if mode == "ok":
                        c.sendall(ok_response(GOOD_JSON))
                    else:
                        c.sendall(BAD_ANSWERS[mode][1])  # and keep the connection open
                else:
                    c.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass
        finally:
            rec["closed"].set()
            c.close()

    def posts(self):
        """Every inference request so far, in arrival order: (connection id,
        index of the request on its connection, mode)."""
        with self.lock:
            return list(self.post_log)

    def stop(self):
        self.stopping = True
        self.sock.close()


def completion(port, mode):
    body = b'{"model":"fake-model","prompt":"hi","max_tokens":1}'
    raw = send_raw(port, build_request("POST", "/v1/completions", body,
                                       headers={"X-Fake-Mode": mode}))
    return parse_response(raw)


def connection_serving(fake, mode, count_before):
    """(connection record, index on it) of the inference request that arrived
    after <count_before> earlier ones; checks that it asked for <mode>."""
    wait_until(lambda: len(fake.posts()) > count_before, timeout=5)
    conn_id, index, got = fake.posts()[count_before]
    assert got == mode, (got, mode, fake.posts())
    with fake.lock:
        return fake.conns[conn_id], index


def check_invalid_upstream_framing_is_502_and_not_reused():
    fake = FakeUpstream()
    px = start_proxy([("fake", "http://127.0.0.1:%d" % fake.port)])
    try:
        # Up: the poller's health checks pass, a good exchange goes through.
        wait_until(lambda: completion(px.port, "ok").status == 200, timeout=10, interval=0.1)
        failures = []
        for mode, (where, _) in BAD_ANSWERS.items():
            try:
                n = len(fake.posts())
                r = completion(px.port, mode)
                if where == "head" or r.status == 502:
                    # Nothing of the answer went out: a 502 with an OpenAI error body.
                    assert r.status == 502, (mode, r.status, r.body)
                    err = json.loads(r.body)["error"]
                    assert err["type"] == "server_error" and err["message"], (mode, err)
                else:
                    # The head was relayed before the body broke: the stream ends
                    # with an error event and a proper last chunk.
                    assert r.status == 200 and r.complete, (mode, r.status, r.body)
                    last = r.body.rstrip(b"\n").split(b"\n\n")[-1]
                    assert last.startswith(b"data: "), (mode, r.body)
                    err = json.loads(last[len(b"data: "):])["error"]
                    assert err["code"] == "upstream_stream_failed", (mode, err)
                bad, _ = connection_serving(fake, mode, n)
                # The proxy closes that upstream connection ...
                assert bad["closed"].wait(5), "%s: upstream connection left open" % mode
                # ... and the next request is carried by a new one.
                r = completion(px.port, "ok")
                assert r.status == 200, (mode, r.status, r.body)
                nxt, index = connection_serving(fake, "ok", n + 1)
                assert nxt["id"] != bad["id"], "%s: connection reused" % mode
                assert index == 0, "%s: follow-up on an old connection %r" % (mode, fake.posts())
            except Exception as e:
                failures.append("%s: %r" % (mode, e))
        assert not failures, "\n".join(failures)
        code = px.stop()
        assert code == 0, "tokenrelay exited with %s\n%s" % (code, px.log())
    finally:
        px.stop()
        fake.stop()


if __name__ == "__main__":
    setup()
    run_checks([
        ("malformed requests: one 4xx, closed", check_malformed_requests_rejected),
        ("smuggling attempts: one 400, closed", check_smuggling_attempts_rejected),
        ("limits hold when the head is trickled", check_limits_split_across_reads),
        ("the simulator received nothing", check_simulator_received_nothing),
        ("client side shuts down cleanly", teardown_client_side),
        ("invalid upstream framing: 502, not reused",
         check_invalid_upstream_framing_is_502_and_not_reused),
    ])

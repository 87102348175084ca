"""Helpers for driving vllm-sim from integration tests (Python 3 stdlib only).

Used by test_vllm_sim.py and by the proxy tests:

    sim = start_sim("--speed", "1000", "--created", "1700000000")
    status, headers, body = http_request(sim.port, "GET", "/v1/models")
    res = stream_chat(sim.port, max_tokens=8, headers={"X-Request-Id": "r1"})
    sse_bytes, events = res              # or res.wire / res.chunks / res.headers
    sim_stats(sim.port)["running"]
    sim.stop()

Every request opens its own connection and sends "Connection: close", so the
raw bytes of one response are exactly what the socket delivered.
"""

import atexit
import json
import os
import selectors
import signal
import socket
import subprocess
import time

DEFAULT_CREATED = 1700000000

_live = []


def sim_binary():
    """Path of the simulator: $VLLM_SIM_BIN, else build/vllm-sim."""
    path = os.environ.get("VLLM_SIM_BIN")
    if path:
        return path
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "build", "vllm-sim"))


class Sim:
    """A running vllm-sim process: .port, .host, .proc, .stop()."""

    def __init__(self, proc, host, port, args):
        self.proc = proc
        self.host = host
        self.port = port
        self.args = args

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    def stop(self, timeout=5.0):
        """SIGTERM, then SIGKILL after <timeout>. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        if self in _live:
            _live.remove(self)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


@atexit.register
def _kill_all():
    for s in list(_live):
        try:
            s.proc.kill()
            s.proc.wait(2)
        except Exception:
            pass


def start_sim(*flags, host="127.0.0.1", timeout=10.0, binary=None):
    """Starts vllm-sim on an ephemeral port with extra <flags> (str or numbers)
    and waits for its "vllm-sim listening on HOST:PORT" line."""
    args = [binary or sim_binary(), "--host", host, "--port", "0"] + [str(f) for f in flags]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            proc.kill()
            proc.wait()
            raise RuntimeError("vllm-sim did not report its port in %.1fs: %r" % (timeout, args))
        b = os.read(proc.stdout.fileno(), 1)
        if not b:
            proc.wait()
            raise RuntimeError("vllm-sim exited with %s: %r" % (proc.returncode, args))
        line += b
    sel.close()
    text = line.decode().strip()
    prefix = "vllm-sim listening on "
    if not text.startswith(prefix):
        proc.kill()
        raise RuntimeError("unexpected first line from vllm-sim: %r" % text)
    port = int(text.rsplit(":", 1)[1])
    sim = Sim(proc, host, port, args)
    _live.append(sim)
    return sim


# --- raw HTTP -------------------------------------------------------------


def _encode_body(body):
    if body is None:
        return b""
    if isinstance(body, (dict, list)):
        return json.dumps(body).encode()
    if isinstance(body, str):
        return body.encode()
    return bytes(body)


def build_request(method, path, body=None, headers=None, host="127.0.0.1", close=True):
    """The bytes of one HTTP/1.1 request (Content-Length framing)."""
    data = _encode_body(body)
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s" % host]
    hdrs = dict(headers or {})
    lower = {k.lower() for k in hdrs}
    if body is not None and "content-type" not in lower:
        hdrs["Content-Type"] = "application/json"
    if "transfer-encoding" not in lower and (body is not None or method in ("POST", "PUT")):
        hdrs["Content-Length"] = str(len(data))
    if close and "connection" not in lower:
        hdrs["Connection"] = "close"
    for k, v in hdrs.items():
        lines.append("%s: %s" % (k, v))
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def http_raw(port, request, host="127.0.0.1", timeout=30.0):
    """Sends <request> bytes and returns every byte received until the server
    closes the connection."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(request)
        out = bytearray()
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    return bytes(out)


class Response:
    """A parsed HTTP response: status, headers (lower-case names), body
    (de-chunked), chunks (payload of each HTTP chunk, or None), complete (the
    terminating chunk / full Content-Length arrived), rest (bytes after it)."""

    def __init__(self):
        self.status = 0
        self.reason = ""
        self.headers = {}
        self.body = b""
        self.chunks = None
        self.complete = False
        self.rest = b""


def parse_response(raw):
    """Parses one response from the start of <raw>; raises ValueError when the
    head is malformed. A truncated body leaves .complete False."""
    head_end = raw.find(b"\r\n\r\n")
    if head_end < 0:
        raise ValueError("no end of headers in %r" % raw[:200])
    lines = raw[:head_end].decode("latin-1").split("\r\n")
    proto, status, *reason = lines[0].split(" ", 2)
    if not proto.startswith("HTTP/1."):
        raise ValueError("bad status line %r" % lines[0])
    r = Response()
    r.status = int(status)
    r.reason = reason[0] if reason else ""
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        r.headers[k.strip().lower()] = v.strip()
    pos = head_end + 4
    if r.status == 100:
        r.complete = True
        r.rest = raw[pos:]
        return r
    if r.headers.get("transfer-encoding", "").lower() == "chunked":
        r.chunks = []
        body = bytearray()
        while True:
            eol = raw.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(raw[pos:eol].split(b";")[0], 16)
            start = eol + 2
            if size == 0:
                if raw[start:start + 2] == b"\r\n":
                    r.complete = True
                    pos = start + 2
                break
            if len(raw) < start + size + 2:
                body += raw[start:start + size]
                r.chunks.append(raw[start:start + size])
                pos = len(raw)
                break
            if raw[start + size:start + size + 2] != b"\r\n":
                raise ValueError("chunk not followed by CRLF")
            r.chunks.append(raw[start:start + size])
            body += raw[start:start + size]
            pos = start + size + 2
        r.body = bytes(body)
    else:
        n = int(r.headers.get("content-length", "0"))
        r.body = raw[pos:pos + n]
        r.complete = len(r.body) == n
        pos += len(r.body)
    r.rest = raw[pos:]
    return r


def http_request(port, method, path, body=None, headers=None, host="127.0.0.1", timeout=30.0):
    """One request on a fresh connection. Returns (status, headers with
    lower-case names, body bytes)."""
    r = parse_response(http_raw(port, build_request(method, path, body, headers, host), host,
                                timeout))
    return r.status, r.headers, r.body


def http_json(port, method, path, body=None, headers=None, host="127.0.0.1"):
    """Like http_request but returns (status, parsed JSON body)."""
    status, _, data = http_request(port, method, path, body, headers, host)
    return status, json.loads(data) if data else None


# --- SSE streams ----------------------------------------------------------


def parse_sse(data):
    """Splits SSE bytes into events: parsed JSON objects, or the string
    "[DONE]"."""
    events = []
    text = data.decode("utf-8")
    for block in text.split("\n\n"):
        if not block:
            continue
        for line in block.split("\n"):
            if not line.startswith("data: "):
                raise ValueError("unexpected SSE line %r" % line)
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


class StreamResult:
    """A streamed response. Unpacks as (sse_bytes, events); also .wire (raw
    socket bytes), .status, .headers, .chunks, .complete, .ttft_s (seconds to
    the first token event) and .first_byte_s."""

    def __init__(self, wire, response, ttft_s, first_byte_s):
        self.wire = wire
        self.status = response.status
        self.headers = response.headers
        self.chunks = response.chunks
        self.complete = response.complete
        self.sse = response.body
        self.ttft_s = ttft_s
        self.first_byte_s = first_byte_s
        ok = response.status == 200 and response.chunks is not None
        self.events = parse_sse(_whole_events(self.sse)) if ok else []

    def __iter__(self):
        return iter((self.sse, self.events))

    def tokens(self):
        """Text of every token event, in order."""
        out = []
        for ev in self.events:
            if ev == "[DONE]" or not ev.get("choices"):
                continue
            ch = ev["choices"][0]
            if "delta" in ch:
                if "content" in ch["delta"] and "role" not in ch["delta"]:
                    out.append(ch["delta"]["content"])
            else:
                out.append(ch["text"])
        return out

    def finish_reason(self):
        for ev in self.events:
            if ev != "[DONE]" and ev.get("choices") and ev["choices"][0].get("finish_reason"):
                return ev["choices"][0]["finish_reason"]
        return None

    def usage(self):
        for ev in self.events:
            if ev != "[DONE]" and ev.get("usage"):
                return ev["usage"]
        return None


def _whole_events(sse):
    end = sse.rfind(b"\n\n")
    return sse[:end + 2] if end >= 0 else b""


def stream_request(port, path, body, headers=None, host="127.0.0.1", timeout=30.0):
    """POSTs <body> (dict) and reads the whole streamed response, timing the
    first byte and the first token event."""
    req = build_request("POST", path, body, headers, host)
    t0 = time.monotonic()
    first_byte = None
    ttft = None
    wire = bytearray()
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(req)
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            now = time.monotonic() - t0
            if first_byte is None:
                first_byte = now
            wire += b
            if ttft is None and (b'"content":"' in wire.replace(b'"content":""', b"")
                                 or b'"text":"' in wire):
                ttft = now
    wire = bytes(wire)
    return StreamResult(wire, parse_response(wire), ttft, first_byte)


def stream_chat(port, messages=None, model="sim-model", max_tokens=16, headers=None,
                include_usage=True, ignore_eos=True, host="127.0.0.1", timeout=30.0, **extra):
    """Streams a chat completion; returns a StreamResult ((sse_bytes, events))."""
    body = {"model": model,
            "messages": messages or [{"role": "user", "content": "Hello, simulator!"}],
            "stream": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    if ignore_eos:
        body["ignore_eos"] = True
    body.update(extra)
    return stream_request(port, "/v1/chat/completions", body, headers, host, timeout)


def stream_completion(port, prompt="Once upon a time", model="sim-model", max_tokens=16,
                      headers=None, include_usage=True, ignore_eos=True, host="127.0.0.1",
                      timeout=30.0, **extra):
    """Streams a text completion; returns a StreamResult."""
    body = {"model": model, "prompt": prompt, "stream": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    if ignore_eos:
        body["ignore_eos"] = True
    body.update(extra)
    return stream_request(port, "/v1/completions", body, headers, host, timeout)


# --- test-control endpoints -------------------------------------------------


def sim_stats(port, host="127.0.0.1"):
    """GET /sim/stats as a dict."""
    status, data = http_json(port, "GET", "/sim/stats", host=host)
    assert status == 200, status
    return data


def sim_config(port, host="127.0.0.1", **fields):
    """POST /sim/config. The body replaces the whole runtime fault set: fields
    left out (or 0) return to their command-line values, so sim_config(port)
    resets everything."""
    status, data = http_json(port, "POST", "/sim/config", fields, host=host)
    assert status == 200, (status, data)
    return data


def wait_until(predicate, timeout=5.0, interval=0.01):
    """Polls <predicate> until it returns a truthy value; returns it or raises."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %.1fs" % timeout)
        time.sleep(interval)


# --- Prometheus text --------------------------------------------------------


class Family:
    def __init__(self, name):
        self.name = name
        self.type = None
        self.help = None
        self.samples = []  # (sample name, labels as a list of (k, v) in order, value)


def _parse_labels(s, pos):
    """Parses `{k="v",...}` starting at s[pos] == '{'; returns (list, next pos)."""
    labels = []
    pos += 1
    while s[pos] != "}":
        eq = s.index("=", pos)
        key = s[pos:eq]
        if s[eq + 1] != '"':
            raise ValueError("label value not quoted in %r" % s)
        i = eq + 2
        val = []
        while s[i] != '"':
            if s[i] == "\\":
                nxt = s[i + 1]
                val.append({"n": "\n", "\\": "\\", '"': '"'}[nxt])
                i += 2
            else:
                val.append(s[i])
                i += 1
        labels.append((key, "".join(val)))
        pos = i + 1
        if s[pos] == ",":
            pos += 1
    return labels, pos + 1


def parse_prometheus(text):
    """Parses the text exposition format into {family name: Family}. Sample
    names are attached to the family declared by the latest # TYPE line."""
    families = {}
    current = None
    for line in text.split("\n"):
        if not line:
            continue
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            current = families.setdefault(name, Family(name))
            current.help = help_text
            continue
        if line.startswith("# TYPE "):
            name, _, typ = line[7:].partition(" ")
            current = families.setdefault(name, Family(name))
            current.type = typ
            continue
        if line.startswith("#"):
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace >= 0 and brace < space:
            name = line[:brace]
            labels, pos = _parse_labels(line, brace)
            rest = line[pos:].strip()
        else:
            name = line[:space]
            labels = []
            rest = line[space + 1:].strip()
        value = float(rest.split(" ")[0])
        if current is None or not name.startswith(current.name):
            raise ValueError("sample %r outside its family" % name)
        current.samples.append((name, labels, value))
    return families


def metrics(port, host="127.0.0.1"):
    """GET /metrics parsed with parse_prometheus."""
    status, headers, body = http_request(port, "GET", "/metrics", host=host)
    assert status == 200, status
    return parse_prometheus(body.decode())


def metric_value(families, sample_name, **labels):
    """Sum of the samples named <sample_name> whose labels include <labels>."""
    total = 0.0
    found = False
    for fam in families.values():
        for name, lbls, value in fam.samples:
            if name != sample_name:
                continue
            d = dict(lbls)
            if all(d.get(k) == str(v) for k, v in labels.items()):
                total += value
                found = True
    if not found:
        raise KeyError(sample_name)
    return total

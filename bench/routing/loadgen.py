#!/usr/bin/env python3
"""bench/routing/loadgen.py: an open-loop LLM serving workload of natural requests
(Python 3 stdlib only).

    loadgen.py --port 8000 --rate 20 --duration 60 --warmup 10 --seed 11 \
               --long-frac 0.05 --out run.jsonl --summary run.json

Workload (fully determined by --seed and the shape flags; the arrival rate changes
only the arrival times, never request i's kind, lengths, text or options):
  * arrivals: Poisson at --rate req/s, or "bursts": on/off periods of --burst-period
    seconds, the first --burst-on fraction of each at --burst-factor x the rate and
    the rest at the lower rate that keeps the same mean;
  * text kind, per request: English prose, source code or CJK (Chinese with some
    Japanese kana), --kinds weights (0.6 / 0.25 / 0.15), so that the characters per
    token vary by request (about 4.1 / 2.4 / 1.5 under vllm-sim --tokenizer mixed);
  * prompt tokens: log-normal, median --prompt-median (215), sigma --prompt-sigma,
    clamped to [--prompt-min, --prompt-max]; with probability --long-frac a
    long document instead, uniform in [--long-min, --long-max] (5k..15k tokens). The
    text is a slice of a seeded pool of its kind, cut at token-run boundaries so
    that it holds that many tokens under vllm-sim's mixed tokenizer (mixed_tokens()
    below mirrors tools/vllm-sim/vocab.cpp; the sim's usage is recorded too);
  * output: natural. The replica decides the length (vllm-sim --output-len-mean,
    log-normal, seeded by the prompt: the same on every replica and behind every
    proxy); the request carries max_tokens = --max-tokens-cap (1024) with
    probability --cap-frac (0.5), else no max_tokens at all (the replica's cap is then
    its context left). No ignore_eos;
  * streaming: with probability --nonstream-frac (0.3) "stream": false (one JSON
    body), else "stream": true with stream_options.include_usage;
  * model: --models NAME:WEIGHT,... (default: --model alone); with probability
    --unknown-frac a model no replica serves (--unknown-model), to check the 404.
A unique request tag starts every prompt, so no two prompts share a prefix-cache
block.

Each request is a POST /v1/completions on its own connection (Connection: close),
started at its scheduled time whatever the state of earlier requests (open loop).
One asyncio.Protocol per request; the response is de-chunked (or read to its
Content-Length) incrementally, a stream split into SSE events, and every token
event's arrival time recorded. The generator measures its own lag (actual start -
scheduled start). TTFT is the first token event of a stream; a non-streaming
request has no TTFT of its own (its e2e is the time to the whole answer), so TTFT
figures are over streaming requests only.

Phases, by scheduled start time t (seconds from the run's start):
  warmup   t < W                 sent, not measured (replicas and proxies warm up)
  measure  W <= t < W + D        measured
  cooldown t >= W + D            still sent, so that measured requests finish under
                                 the same load, until every measured request is done
                                 or --drain-max seconds have passed; then open
                                 connections are closed (the replica aborts them)
Output: --out, one JSON object per request (see Record.to_json); --summary, the
statistics of the measured requests (summarize()) plus the generator's own health.
"""

import argparse
import asyncio
import bisect
import json
import math
import os
import random
import resource
import sys
import time

# ---- text ------------------------------------------------------------------------

WORDS = ("the of and to in is that for it as with was on be by at this are from or have "
         "an they which one you were her all she there would their we him been has when "
         "who will more no if out so said what up its about into than them can only other "
         "new some could time these two may then do first any my now such like our over "
         "man me even most made after also did many before must through back years where "
         "much your way well down should because each just those people how too little "
         "state good very make world still own see men work long get here between both "
         "life being under never day same another know while last might us great old year "
         "off come since against go came right used take three document section report "
         "model token cache engine request latency configuration throughput scheduling "
         "implementation performance international understanding").split()
IDENTS = ("x y i n len buf ctx req seq node next prev count total offset size state result "
          "value key item batch token cache engine step queue block prompt tokens_max "
          "read_header parse_request schedule_step alloc_blocks free_list").split()
HANZI = ("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之"
         "过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前"
         "所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声"
         "全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使"
         "教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑"
         "性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果"
         "模型请求调度缓存延迟吞吐")
KANA = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん"
CJK_PUNCT = "，。、！？「」：；"

POOL_TOKENS = 1 << 16  # tokens of text per kind; a prompt is a slice at a seeded offset
KINDS = ("prose", "code", "cjk")


def _classify(cp):
    """vllm-sim mixed tokenizer classes (tools/vllm-sim/vocab.cpp classify())."""
    if cp < 0x80:
        c = chr(cp)
        return 0 if (c.isalnum() or c == "_") else 2
    if (0x1100 <= cp <= 0x11FF or 0x2E80 <= cp <= 0x9FFF or 0xA960 <= cp <= 0xA97F or
            0xAC00 <= cp <= 0xD7FF or 0xF900 <= cp <= 0xFAFF or 0xFF00 <= cp <= 0xFFEF or
            0x20000 <= cp <= 0x3FFFF):
        return 1
    if cp <= 0xBF or cp in (0xD7, 0xF7) or 0x2000 <= cp <= 0x2BFF or cp == 0xFFFD:
        return 2
    return 0


def _run_tokens(cls, n):
    return ((n + 4) // 5, (2 * n + 2) // 3, (2 * n + 4) // 5)[cls]


_UNIT = (5, 3, 5)  # code points of a run that make a whole number of tokens, by class


def token_runs(text):
    """[(end position, tokens so far)] at every run end of <text> under vllm-sim's
    --tokenizer mixed, and inside a run at every whole unit (5 word or symbol
    code points, 3 CJK ones): a slice between two such points holds the
    difference of their token counts, up to the one space a run may absorb at
    its start."""
    out = []
    tokens, run, cls = 0, 0, 2
    n = len(text)
    for k in range(n):
        cp = ord(text[k])
        c = _classify(cp)
        if cp == 32 and k + 1 < n and _classify(ord(text[k + 1])) != 2:
            if run:
                tokens += _run_tokens(cls, run)
                out.append((k, tokens))
            run = 0
            continue
        if run > 0 and c != cls:
            tokens += _run_tokens(cls, run)
            out.append((k, tokens))
            run = 0
        elif run > 0 and run % _UNIT[cls] == 0:
            out.append((k, tokens + _run_tokens(cls, run)))
        cls = c
        run += 1
    if run:
        out.append((n, tokens + _run_tokens(cls, run)))
    return out


def mixed_tokens(text):
    """Prompt tokens of <text> under vllm-sim --tokenizer mixed."""
    r = token_runs(text)
    return r[-1][1] if r else 0


def _prose(rng, ntok):
    parts, words = [], 0
    while words < ntok:
        k = rng.randint(6, 18)
        ws = [rng.choice(WORDS) for _ in range(k)]
        ws[0] = ws[0].capitalize()
        parts.append(" ".join(ws) + rng.choice((".", ".", ".", ",", ";", "?")))
        words += k
        if rng.random() < 0.1:
            parts.append("\n\n")
    return " ".join(parts)


def _code(rng, ntok):
    lines, n, depth = [], 0, 1
    while n < ntok:
        ind = "    " * depth
        a, b, c = rng.choice(IDENTS), rng.choice(IDENTS), rng.choice(IDENTS)
        form = rng.randrange(7)
        if form == 0:
            line = "%sif (%s->%s != nullptr && %s < %d) {" % (ind, a, b, c, rng.randint(1, 999))
            depth = min(depth + 1, 4)
        elif form == 1 and depth > 1:
            depth -= 1
            line = "    " * depth + "}"
        elif form == 2:
            line = "%s%s += %s[%s] * %d;" % (ind, a, b, c, rng.randint(2, 64))
        elif form == 3:
            line = "%sreturn %s(%s, &%s);" % (ind, a, b, c)
        elif form == 4:
            line = "%s// %s the %s before %s" % (ind, rng.choice(WORDS), b, rng.choice(WORDS))
        elif form == 5:
            line = "%sconst auto %s = %s.%s();" % (ind, a, b, c)
        else:
            line = "%sfor (int %s = 0; %s < %s; ++%s) {" % (ind, "i", "i", b, "i")
            depth = min(depth + 1, 4)
        lines.append(line)
        n += 8
    return "\n".join(lines) + "\n"


def _cjk(rng, ntok):
    parts, n = [], 0
    while n < 1.5 * ntok:
        k = rng.randint(8, 30)
        if rng.random() < 0.2:  # a Japanese sentence: kana with some kanji
            s = "".join(rng.choice(KANA) if rng.random() < 0.6 else rng.choice(HANZI)
                        for _ in range(k))
        else:
            s = "".join(rng.choice(HANZI) for _ in range(k))
        parts.append(s + rng.choice(CJK_PUNCT))
        n += k + 1
    return "".join(parts)


class Pool:
    """Seeded text of one kind, POOL_TOKENS + long_max tokens, and its run ends."""

    def __init__(self, kind, seed, tokens):
        rng = random.Random("pool-%s-%d" % (kind, seed))
        self.text = {"prose": _prose, "code": _code, "cjk": _cjk}[kind](rng, tokens + 64)
        runs = token_runs(self.text)
        self.ends = [0] + [e for e, _ in runs]
        self.cum = [0] + [t for _, t in runs]

    def slice(self, offset_frac, ntok):
        """The text from the run end at <offset_frac> of the pool that holds <ntok>
        tokens (at least one run)."""
        k0 = int(offset_frac * (len(self.ends) - 1) * 0.5)
        want = self.cum[k0] + max(1, ntok)
        k1 = min(bisect.bisect_left(self.cum, want, k0 + 1), len(self.cum) - 1)
        return self.text[self.ends[k0]:self.ends[k1]].lstrip(" ")


# ---- workload ------------------------------------------------------------------


def parse_weights(spec):
    """"a:0.5,b:0.3" -> [("a", 0.5), ("b", 0.3)]."""
    out = []
    for item in spec.split(","):
        name, _, w = item.strip().rpartition(":")
        if not name:
            name, w = w, "1"
        out.append((name, float(w)))
    return out


def pick(rng, weights):
    x = rng.random() * sum(w for _, w in weights)
    for name, w in weights:
        x -= w
        if x < 0:
            return name
    return weights[-1][0]


class Workload:
    """The seeded request list. arrivals(): [(t, i)]; request(i): a dict of the
    request's facts (cls, kind, prompt_tokens, stream, max_tokens, model)."""

    def __init__(self, a, text=True):
        self.a = a
        # Independent streams: request facts never depend on the arrival process.
        self._rng = random.Random("req-%d" % a.seed)
        self._reqs = []
        self.kinds = parse_weights(a.kinds)
        self.models = parse_weights(a.models) if a.models else [(a.model, 1.0)]
        self.pools = {}
        if text:
            for kind, _ in self.kinds:
                self.pools[kind] = Pool(kind, a.seed, POOL_TOKENS + a.long_max)

    def rate_at(self, t):
        """(rate, end of the constant-rate segment holding t)."""
        a = self.a
        if a.mode == "poisson":
            return a.rate, math.inf
        period = a.burst_period
        on = a.burst_on * period
        k = math.floor(t / period)
        phase = t - k * period
        if phase < on:
            return a.rate * a.burst_factor, k * period + on
        low = a.rate * (1 - a.burst_on * a.burst_factor) / (1 - a.burst_on)
        return low, (k + 1) * period

    def arrivals(self, horizon_s):
        """Arrival times in [0, horizon_s), from a non-homogeneous Poisson process
        with piecewise-constant rate (exponential gaps, restarted at each segment
        end: the process is memoryless)."""
        rng = random.Random("arr-%d" % self.a.seed)
        out, t = [], 0.0
        while t < horizon_s:
            r, seg_end = self.rate_at(t)
            gap = rng.expovariate(r) if r > 0 else math.inf
            if t + gap < seg_end:
                t += gap
                if t < horizon_s:
                    out.append(t)
            else:
                t = seg_end
        return out

    def request(self, i):
        """The facts of request i (drawn in order, a fixed number of draws each)."""
        a = self.a
        while len(self._reqs) <= i:
            rng = self._rng
            long_ = rng.random() < a.long_frac
            lp = rng.lognormvariate(math.log(a.prompt_median), a.prompt_sigma)
            ll = rng.randint(a.long_min, a.long_max)
            kind = pick(rng, self.kinds)
            stream = rng.random() >= a.nonstream_frac
            capped = rng.random() < a.cap_frac
            model = pick(rng, self.models)
            unknown = rng.random() < a.unknown_frac
            offset = rng.random()
            p = ll if long_ else min(max(int(round(lp)), a.prompt_min), a.prompt_max)
            self._reqs.append({
                "cls": "unknown" if unknown else ("long" if long_ else "short"),
                "kind": kind, "prompt_tokens": p, "stream": stream,
                "max_tokens": a.max_tokens_cap if capped else None,
                "model": a.unknown_model if unknown else model, "offset": offset})
        return self._reqs[i]

    def body(self, i):
        """(request body bytes, prompt characters) of request i."""
        q = self.request(i)
        tag = "r%07d " % i
        text = tag + self.pools[q["kind"]].slice(q["offset"], q["prompt_tokens"] - 2)
        obj = {"model": q["model"], "prompt": text}
        if q["max_tokens"] is not None:
            obj["max_tokens"] = q["max_tokens"]
        obj["stream"] = q["stream"]
        if q["stream"]:
            obj["stream_options"] = {"include_usage": True}
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode(), len(text)


# ---- one request ---------------------------------------------------------------

ERR_BODY_MAX = 400  # bytes of an error response kept in the record


class Record:
    __slots__ = ("i", "cls", "kind", "phase", "prompt_tokens", "prompt_chars", "max_tokens",
                 "stream", "model", "sched", "start", "status", "err", "times", "end", "done",
                 "created", "usage", "resp_model", "finish", "body")

    def __init__(self, i, q, phase, sched, prompt_chars):
        self.i, self.phase, self.sched = i, phase, sched
        self.cls, self.kind, self.stream = q["cls"], q["kind"], q["stream"]
        self.prompt_tokens, self.max_tokens, self.model = (q["prompt_tokens"], q["max_tokens"],
                                                           q["model"])
        self.prompt_chars = prompt_chars
        self.start = None      # actual start (connect), s from t0
        self.status = 0
        self.err = None        # None, or a short reason
        self.times = []        # monotonic time of every token event (streams)
        self.end = None        # monotonic time of the last byte
        self.done = False      # stream: saw data: [DONE]; else: a complete JSON body
        self.created = None    # "created" of the answer (names the replica)
        self.usage = None      # (prompt_tokens, completion_tokens) the replica reported
        self.resp_model = None
        self.finish = None     # finish_reason of the last choice
        self.body = None       # non-streaming or error body (bytes)

    def ok(self):
        if self.err is not None or self.status != 200 or not self.done or self.usage is None:
            return False
        return not self.stream or len(self.times) == self.usage[1]

    def to_json(self, t0):
        s = self.start if self.start is not None else None
        d = {"i": self.i, "cls": self.cls, "kind": self.kind, "phase": self.phase,
             "stream": self.stream, "model": self.model,
             "prompt_tokens_target": self.prompt_tokens, "prompt_chars": self.prompt_chars,
             "max_tokens": self.max_tokens, "sched_s": round(self.sched, 6),
             "lag_ms": None if s is None else round((s - self.sched) * 1e3, 3),
             "status": self.status, "ok": self.ok(), "err": self.err,
             "ntok": len(self.times), "created": self.created, "resp_model": self.resp_model,
             "finish": self.finish,
             "prompt_tokens": self.usage[0] if self.usage else None,
             "completion_tokens": self.usage[1] if self.usage else None}
        if self.status != 200 and self.body:
            d["err_body"] = self.body[:ERR_BODY_MAX].decode("utf-8", "replace")
        if s is not None:
            base = t0 + s
            d["start_s"] = round(s, 6)
            d["ttft_ms"] = round((self.times[0] - base) * 1e3, 3) if self.times else None
            d["e2e_ms"] = round((self.end - base) * 1e3, 3) if self.end else None
            # Token arrival times, ms after the start; equal values = one read.
            d["tok_ms"] = [round((x - base) * 1e3, 2) for x in self.times]
        return d


def _int_after(buf, key):
    k = buf.find(key)
    if k < 0:
        return None
    digits = bytes(buf[k + len(key):k + len(key) + 24]).split(b",", 1)[0].split(b"}", 1)[0]
    return int(digits) if digits.strip().isdigit() else None


class Stream(asyncio.Protocol):
    """Sends one request and reads the response: head, then chunked or
    Content-Length framing; a 200 stream is split into SSE events (token event =
    a data event holding non-empty "choices"), any other body kept whole."""

    def __init__(self, rec, request, finished):
        self.rec = rec
        self.request = request
        self.finished = finished  # callback(rec)
        self.transport = None
        self.head = bytearray()
        self.in_head = True
        self.chunked = False
        self.left = -1            # Content-Length bytes still to come; -1: unknown
        self.sse_mode = False     # a 200 event stream
        self.pend = bytearray()   # body bytes not yet de-chunked
        self.clen = -1            # bytes left in the current chunk incl. its CRLF; -1: size line
        self.payload = bytearray()  # de-chunked bytes (SSE: not yet split into events)
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data):
        now = time.monotonic()
        if self.in_head:
            self.head += data
            k = self.head.find(b"\r\n\r\n")
            if k < 0:
                if len(self.head) > 65536:
                    self._fail("head too large")
                return
            head = bytes(self.head[:k]).decode("latin-1").split("\r\n")
            rest = bytes(self.head[k + 4:])
            self.head = None
            self.in_head = False
            try:
                self.rec.status = int(head[0].split(" ", 2)[1])
            except (IndexError, ValueError):
                self._fail("bad status line")
                return
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "transfer-encoding" and "chunked" in value.lower():
                    self.chunked = True
                elif name == "content-length":
                    try:
                        self.left = int(value.strip())
                    except ValueError:
                        self._fail("bad content-length")
                        return
            self.sse_mode = self.rec.status == 200 and self.rec.stream
            if self.sse_mode and not self.chunked:
                self._fail("stream not chunked")
                return
            data = rest
            if not self.chunked and self.left == 0:
                self._end(now)
                return
            if not data:
                return
        if self.chunked:
            self.pend += data
            self._dechunk(now)
        else:
            self.payload += data
            if self.left >= 0:
                self.left -= len(data)
                if self.left <= 0:
                    self._end(now)

    def _dechunk(self, now):
        b = self.pend
        pos, n = 0, len(b)
        while pos < n:
            if self.clen < 0:
                eol = b.find(b"\r\n", pos)
                if eol < 0:
                    break
                try:
                    size = int(bytes(b[pos:eol]).split(b";", 1)[0], 16)
                except ValueError:
                    self._fail("bad chunk size")
                    return
                pos = eol + 2
                if size == 0:
                    self._end(now)
                    return
                self.clen = size + 2
                continue
            take = min(n - pos, self.clen)
            payload = min(take, self.clen - 2)
            if payload > 0:
                self.payload += b[pos:pos + payload]
            pos += take
            self.clen -= take
            if self.clen == 0:
                self.clen = -1
        del b[:pos]
        if self.sse_mode:
            self._events(now)

    def _events(self, now):
        s = self.payload
        if b"\n\n" not in s:
            return
        parts = bytes(s).split(b"\n\n")
        s.clear()
        s += parts.pop()  # incomplete remainder
        rec = self.rec
        for ev in parts:
            if not ev:
                continue
            if ev.startswith(b"data: [DONE]"):
                rec.done = True
            elif b'"choices":[]' in ev:  # the usage event
                pt = _int_after(ev, b'"prompt_tokens":')
                ct = _int_after(ev, b'"completion_tokens":')
                if pt is not None and ct is not None:
                    rec.usage = (pt, ct)
            elif b'"choices"' in ev:
                if not rec.times:
                    rec.created = _int_after(ev, b'"created":')
                    k = ev.find(b'"model":"')
                    if k >= 0:
                        rec.resp_model = bytes(ev[k + 9:ev.find(b'"', k + 9)]).decode()
                if b'"finish_reason":"' in ev:
                    k = ev.find(b'"finish_reason":"') + 17
                    rec.finish = bytes(ev[k:ev.find(b'"', k)]).decode()
                rec.times.append(now)
            elif b'"error"' in ev:
                rec.err = rec.err or "error event"

    def _end(self, now):
        rec = self.rec
        if self.sse_mode:
            self._events(now)
        else:
            rec.body = bytes(self.payload)
            if rec.status == 200:
                try:
                    obj = json.loads(rec.body)
                    u = obj["usage"]
                    rec.usage = (u["prompt_tokens"], u["completion_tokens"])
                    rec.created = obj.get("created")
                    rec.resp_model = obj.get("model")
                    rec.finish = obj["choices"][-1].get("finish_reason")
                    rec.done = True
                except (ValueError, KeyError, IndexError, TypeError):
                    rec.err = rec.err or "bad JSON body"
            else:
                rec.err = rec.err or "status %d" % rec.status
        rec.end = now
        self._close()

    def _fail(self, why):
        if self.rec.err is None:
            self.rec.err = why
        self._close()

    def _close(self):
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            self.finished(self.rec)

    def connection_lost(self, exc):
        if not self.closed:
            if (not self.in_head and not self.chunked and self.left < 0 and exc is None):
                self._end(time.monotonic())  # a body delimited by the close
                return
            if self.rec.status and self.rec.status != 200 and self.payload:
                self.rec.body = bytes(self.payload)
            self._fail("eof" if exc is None else "conn: %s" % type(exc).__name__)

    def abort(self, why):
        if not self.closed:
            self.rec.err = self.rec.err or why
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self.finished(self.rec)


# ---- the run ---------------------------------------------------------------------

class Runner:
    def __init__(self, a):
        self.a = a
        self.wl = Workload(a)
        self.records = []
        self.open = {}           # i -> Stream
        self.measured_left = 0
        self.max_open = 0
        self.stop_sending = False
        self.all_measured_done = None

    def phase_of(self, t):
        a = self.a
        if t < a.warmup:
            return "warmup"
        if t < a.warmup + a.duration:
            return "measure"
        return "cooldown"

    async def main(self):
        a = self.a
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.all_measured_done = loop.create_future()
        horizon = a.warmup + a.duration + a.drain_max
        arrivals = self.wl.arrivals(horizon)
        # Bodies built up front (in order: the facts are drawn sequentially),
        # so that building a 15k-token document never delays a send.
        self.bodies = [self.wl.body(i) for i in range(len(arrivals))]
        self.measured_left = sum(1 for t in arrivals if self.phase_of(t) == "measure")
        if self.measured_left == 0:
            self.all_measured_done.set_result(True)
        self.t0 = loop.time() + 0.2  # a moment to arm the timers
        self.header = ("POST /v1/completions HTTP/1.1\r\nHost: %s:%d\r\n"
                       "Content-Type: application/json\r\n"
                       "Connection: close\r\nContent-Length: " % (a.host, a.port)).encode()
        # One timer per request would be thousands of handles; a sender task
        # that sleeps until the next arrival is just as precise.
        sender = asyncio.ensure_future(self.sender(arrivals))
        end_of_window = self.t0 + a.warmup + a.duration
        await asyncio.sleep(max(0.0, end_of_window - loop.time()))
        try:
            await asyncio.wait_for(asyncio.shield(self.all_measured_done),
                                   timeout=max(0.0, self.t0 + horizon - loop.time()))
        except asyncio.TimeoutError:
            pass
        self.stop_sending = True
        sender.cancel()
        try:
            await sender
        except asyncio.CancelledError:
            pass
        for st in list(self.open.values()):
            st.abort("drain timeout" if st.rec.phase == "measure" else "cooldown cut")
        await asyncio.sleep(0.05)  # let the transports close

    async def sender(self, arrivals):
        loop = self.loop
        for i, t in enumerate(arrivals):
            if self.stop_sending:
                return
            due = self.t0 + t
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stop_sending:
                return
            self.launch(i, t)

    def launch(self, i, t):
        q = self.wl.request(i)
        body, chars = self.bodies[i]
        self.bodies[i] = None
        rec = Record(i, q, self.phase_of(t), t, chars)
        self.records.append(rec)
        rec.start = time.monotonic() - self.t0
        request = self.header + b"%d\r\n\r\n" % len(body) + body
        st = Stream(rec, request, self.finished)
        self.open[i] = st
        self.max_open = max(self.max_open, len(self.open))
        asyncio.ensure_future(self.connect(st))

    async def connect(self, st):
        try:
            await self.loop.create_connection(lambda: st, self.a.host, self.a.port)
        except OSError as e:
            st.rec.err = "connect: %s" % (e.strerror or type(e).__name__)
            if not st.closed:
                st.closed = True
                self.finished(st.rec)

    def finished(self, rec):
        self.open.pop(rec.i, None)
        if rec.phase == "measure":
            self.measured_left -= 1
            if self.measured_left == 0 and not self.all_measured_done.done():
                self.all_measured_done.set_result(True)


# ---- statistics ------------------------------------------------------------------

def pct(values, q):
    """Linear-interpolated percentile q (0..100) of a list; None when empty."""
    if not values:
        return None
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    x = (len(v) - 1) * q / 100.0
    lo = int(math.floor(x))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (x - lo)


def mean(values):
    return sum(values) / len(values) if values else None


def summarize(records, served_models=()):
    """Statistics of the measured requests, from to_json() dicts. Latencies in ms.
    TTFT (streams only): first token event - start. TPOT: (last - first token) /
    (tokens - 1), per stream, then the mean. Inter-token gaps: every gap of every
    completed stream (tokens relayed together give gaps of 0). E2E: last byte -
    start, every completed request (a non-streaming one: the whole answer).
    'short_behind_long': short streams that started on a replica while a long
    request there was before its first token; 'short_clear': the other short
    streams. Requests of cls "unknown" (a model no replica serves) are counted
    apart: their statuses, and whether the 404 names every one of <served_models>."""
    m = [r for r in records if r["phase"] == "measure"]
    served = [r for r in m if r["cls"] != "unknown"]
    ok = [r for r in served if r["ok"]]
    out = {"measured": len(served), "completed": len(ok), "failed": len(served) - len(ok)}
    errs, status = {}, {}
    for r in served:
        status[str(r["status"])] = status.get(str(r["status"]), 0) + 1
        if not r["ok"]:
            k = r["err"] or ("tokens %d/%s" % (r["ntok"], r["completion_tokens"]))
            errs[k] = errs.get(k, 0) + 1
    out["errors"] = errs
    out["status"] = status
    out["served_404"] = status.get("404", 0)
    unk = [r for r in m if r["cls"] == "unknown"]
    bodies = [r.get("err_body") or "" for r in unk if r["status"] == 404]
    out["unknown_model"] = {
        "n": len(unk), "404": len(bodies),
        "names_models": (all(all(("`%s`" % x) in b or ('"%s"' % x) in b or x in b
                                 for x in served_models) for b in bodies)
                         if bodies and served_models else None),
        "example": bodies[0] if bodies else None}
    streams = [r for r in ok if r["stream"]]
    for cls in ("short", "long"):
        t = [r["ttft_ms"] for r in streams if r["cls"] == cls]
        out["ttft_%s" % cls] = {"n": len(t), "p50": pct(t, 50), "p90": pct(t, 90),
                                "p99": pct(t, 99), "mean": mean(t)}
    # Short streams that a long prompt's prefill delayed: started on the same
    # replica (known from "created") while a long request there was between its
    # start and its first token (streams only: a non-streaming request shows no
    # first token).
    spans = {}
    for r in records:
        if (r["cls"] == "long" and r.get("ttft_ms") is not None and r["created"] is not None):
            spans.setdefault(r["created"], []).append((r["start_s"],
                                                       r["start_s"] + r["ttft_ms"] / 1e3))
    index = {}
    for rep, sp in spans.items():
        sp.sort()
        ends_max, mx = [], -math.inf
        for _, e in sp:
            mx = max(mx, e)
            ends_max.append(mx)
        index[rep] = ([s for s, _ in sp], ends_max)
    behind, clear = [], []
    for r in streams:
        if r["cls"] != "short":
            continue
        starts, ends_max = index.get(r["created"], ([], []))
        k = bisect.bisect_right(starts, r["start_s"]) - 1
        (behind if k >= 0 and ends_max[k] > r["start_s"] else clear).append(r["ttft_ms"])
    nshort = len(behind) + len(clear)
    out["short_behind_long"] = {"n": len(behind),
                                "frac": len(behind) / nshort if nshort else None,
                                "p50": pct(behind, 50), "p99": pct(behind, 99)}
    out["short_clear"] = {"n": len(clear), "p50": pct(clear, 50), "p99": pct(clear, 99)}
    # Requests per replica (measured, completed) by class, and the models each
    # replica answered for (measured, any status, by "created").
    per, per_models = {}, {}
    for r in ok:
        if r["created"] is not None:
            d = per.setdefault(str(r["created"]), {"short": 0, "long": 0})
            d[r["cls"]] += 1
    for r in served:
        if r["created"] is not None:
            d = per_models.setdefault(str(r["created"]), {})
            d[r["model"]] = d.get(r["model"], 0) + 1
    out["per_replica"] = per
    out["per_replica_models"] = per_models
    out["model_mismatch"] = sum(1 for r in ok if r["resp_model"] not in (None, r["model"]))
    tpot, gaps = [], []
    for r in streams:
        tk = r["tok_ms"]
        if len(tk) >= 2:
            tpot.append((tk[-1] - tk[0]) / (len(tk) - 1))
            gaps.extend(b - a for a, b in zip(tk, tk[1:]))
    out["tpot_mean"] = mean(tpot)
    out["itl_p99"] = pct(gaps, 99)
    out["itl_p50"] = pct(gaps, 50)
    e2e = [r["e2e_ms"] for r in ok]
    out["e2e_mean"] = mean(e2e)
    out["e2e_p99"] = pct(e2e, 99)
    out["e2e_short_mean"] = mean([r["e2e_ms"] for r in ok if r["cls"] == "short"])
    ns = [r["e2e_ms"] for r in ok if not r["stream"]]
    out["e2e_nonstream"] = {"n": len(ns), "mean": mean(ns), "p50": pct(ns, 50),
                            "p99": pct(ns, 99)}
    # The workload as the replicas saw it.
    out["output_tokens_mean"] = mean([r["completion_tokens"] for r in ok])
    out["finish"] = {}
    for r in ok:
        out["finish"][str(r["finish"])] = out["finish"].get(str(r["finish"]), 0) + 1
    out["chars_per_token"] = {
        k: mean([r["prompt_chars"] / r["prompt_tokens"] for r in ok
                 if r["kind"] == k and r["prompt_tokens"]]) for k in KINDS}
    out["prompt_tokens_vs_target"] = mean([r["prompt_tokens"] / r["prompt_tokens_target"]
                                           for r in ok if r["prompt_tokens"]])
    lags = [r["lag_ms"] for r in records if r["lag_ms"] is not None]
    out["lag_ms"] = {"p50": pct(lags, 50), "p99": pct(lags, 99), "max": max(lags) if lags else None}
    return out


# ---- main ------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="sim-model")
    p.add_argument("--models", default="",
                   help="NAME:WEIGHT,... the served models requests name (default: --model)")
    p.add_argument("--unknown-frac", type=float, default=0.0,
                   help="fraction of requests naming a model no replica serves")
    p.add_argument("--unknown-model", default="no-such-model")
    p.add_argument("--rate", type=float, required=True, help="mean arrivals per second")
    p.add_argument("--duration", type=float, default=60, help="measured window, s")
    p.add_argument("--warmup", type=float, default=10, help="unmeasured lead-in, s")
    p.add_argument("--drain-max", type=float, default=120,
                   help="after the window, wait at most this long for measured requests, s")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mode", choices=("poisson", "bursts"), default="poisson")
    p.add_argument("--burst-period", type=float, default=20)
    p.add_argument("--burst-on", type=float, default=0.2, help="fraction of a period that bursts")
    p.add_argument("--burst-factor", type=float, default=3, help="rate multiple while bursting")
    p.add_argument("--kinds", default="prose:0.6,code:0.25,cjk:0.15",
                   help="text kinds and their weights")
    p.add_argument("--long-frac", type=float, default=0.05)
    p.add_argument("--long-min", type=int, default=5000)
    p.add_argument("--long-max", type=int, default=15000)
    p.add_argument("--prompt-median", type=float, default=215)
    p.add_argument("--prompt-sigma", type=float, default=0.9)
    p.add_argument("--prompt-min", type=int, default=4)
    p.add_argument("--prompt-max", type=int, default=2048)
    p.add_argument("--nonstream-frac", type=float, default=0.3)
    p.add_argument("--cap-frac", type=float, default=0.5,
                   help="fraction of requests with max_tokens = --max-tokens-cap (else absent)")
    p.add_argument("--max-tokens-cap", type=int, default=1024)
    # What the replicas are started with (vllm-sim --output-len-mean/-sigma,
    # --max-model-len); used only by describe(), for the capacity arithmetic.
    p.add_argument("--output-mean", type=float, default=300)
    p.add_argument("--output-sigma", type=float, default=0.9)
    p.add_argument("--context", type=int, default=16384)
    p.add_argument("--out", help="JSON lines, one record per request")
    p.add_argument("--summary", help="JSON summary")
    p.add_argument("--describe", action="store_true",
                   help="print the workload's statistics (no requests) and exit")
    a = p.parse_args(argv)
    if a.mode == "bursts" and not a.burst_on * a.burst_factor < 1:
        p.error("--burst-on x --burst-factor must be < 1 (the off rate would be negative)")
    return a


def describe(a, n=200000):
    """Means of the length distributions, by sampling (what calibration divides
    by). The output length is the replicas' natural log-normal (mean
    --output-mean, --output-sigma), capped by max_tokens or the context left;
    requests for an unknown model cost nothing and are left out."""
    wl = Workload(a, text=False)
    rng = random.Random("describe-%d" % a.seed)
    mu = math.log(a.output_mean) - a.output_sigma ** 2 / 2
    ls = []
    for i in range(n):
        q = wl.request(i)
        if q["cls"] == "unknown":
            continue
        p = q["prompt_tokens"]
        cap = q["max_tokens"] if q["max_tokens"] is not None else a.context - p
        o = min(max(1, round(rng.lognormvariate(mu, a.output_sigma))), cap)
        ls.append((q["cls"], p, o))
    return {"samples": len(ls),
            "prompt_mean": mean([p for _, p, _ in ls]),
            "prompt_short_mean": mean([p for c, p, _ in ls if c == "short"]),
            "prompt_short_median": pct([p for c, p, _ in ls if c == "short"], 50),
            "output_mean": mean([o for _, _, o in ls]),
            "output_median": pct([o for _, _, o in ls], 50),
            "output_p99": pct([o for _, _, o in ls], 99),
            # A request is in ~O steps with a mean context of P + O/2 (the step
            # model's context term; see run.py model_capacity()).
            "ctx_steps_mean": mean([o * (p + o / 2.0) for _, p, o in ls]),
            "ctx_mean": mean([p + o / 2.0 for _, p, o in ls]),
            "long_frac": sum(1 for c, _, _ in ls if c == "long") / len(ls)}


def main():
    a = parse_args()
    if a.describe:
        print(json.dumps(describe(a), indent=1))
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    r = Runner(a)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    w0 = time.monotonic()
    asyncio.run(r.main())
    wall = time.monotonic() - w0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    recs = [x.to_json(r.t0) for x in r.records]
    if a.out:
        with open(a.out, "w") as f:
            for d in recs:
                f.write(json.dumps(d, separators=(",", ":")) + "\n")
    s = summarize(recs, [m for m, _ in r.wl.models])
    s["loadgen"] = {"sent": len(recs), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                    "cpu_pct": round(100 * cpu / wall, 1), "max_open_streams": r.max_open,
                    "tokens": sum(d["ntok"] for d in recs)}
    s["args"] = vars(a)
    if a.summary:
        with open(a.summary, "w") as f:
            json.dump(s, f, indent=1)
    lag = s["lag_ms"]
    print("loadgen: sent %d, measured %d, completed %d, failed %d; lag p50 %.2f ms p99 %.2f ms "
          "max %.1f ms; cpu %.0f%% of one core; max open streams %d" %
          (len(recs), s["measured"], s["completed"], s["failed"], lag["p50"] or 0,
           lag["p99"] or 0, lag["max"] or 0, s["loadgen"]["cpu_pct"], r.max_open),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

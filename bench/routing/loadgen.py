#!/usr/bin/env python3
"""bench/routing/loadgen.py: an open-loop LLM serving workload (Python 3 stdlib only).

    loadgen.py --port 8000 --rate 20 --duration 60 --warmup 10 --seed 1 \
               --long-frac 0.05 --out run.jsonl --summary run.json

Workload (fully determined by --seed and the shape flags; the arrival rate changes
only the arrival times, never request i's lengths or text):
  * arrivals: Poisson at --rate req/s, or "bursts": on/off periods of --burst-period
    seconds, the first --burst-on fraction of each at --burst-factor x the rate and
    the rest at the lower rate that keeps the same mean;
  * prompt tokens: log-normal, median --prompt-median (215), sigma --prompt-sigma,
    clamped to [--prompt-min, --prompt-max]; with probability --long-frac a
    long-document prompt instead, uniform in [--long-min, --long-max] (5k..15k);
  * output tokens: log-normal, median --output-median (200), sigma --output-sigma,
    clamped to [--output-min, --output-max]; sent as max_tokens with ignore_eos, so
    exactly that many tokens come back.
The prompt text is a unique request tag plus words from a seeded pool, exactly
4 * tokens characters long, so vllm-sim (ceil(chars / 4) tokens) counts the target
length and no two prompts share a prefix-cache block.

Each request is a streaming POST /v1/completions on its own connection
(Connection: close), started at its scheduled time whatever the state of earlier
requests (open loop). One asyncio.Protocol per stream; the response is de-chunked
and split into SSE events incrementally, and every token event's arrival time is
recorded. The generator measures its own lag (actual start - scheduled start).

Phases, by scheduled start time t (seconds from the run's start):
  warmup   t < W                 sent, not measured (replicas and proxies warm up)
  measure  W <= t < W + D        measured
  cooldown t >= W + D            still sent, so that measured requests finish under
                                 the same load, until every measured request is done
                                 or --drain-max seconds have passed; then open
                                 streams are closed (the replica aborts them)
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

# ---- workload ------------------------------------------------------------------

WORDS = ("the of and to in is that for it as with was on be by at this are from or have "
         "an they which one you were her all she there would their we him been has when "
         "who will more no if out so said what up its about into than them can only other "
         "new some could time these two may then do first any my now such like our over "
         "man me even most made after also did many before must through back years where "
         "much your way well down should because each just those people how too little "
         "state good very make world still own see men work long get here between both "
         "life being under never day same another know while last might us great old year "
         "off come since against go came right used take three document section report "
         "model token cache engine request latency").split()

POOL_CHARS = 1 << 18  # 256 KiB of words; a prompt is a slice at a random offset


class Workload:
    """The seeded request list. arrivals(): [(t, i)]; request(i): (cls, prompt, out)."""

    def __init__(self, a):
        self.a = a
        # Independent streams: lengths never depend on the arrival process.
        self._len_rng = random.Random("len-%d" % a.seed)
        self._lengths = []
        pool_rng = random.Random("pool-%d" % a.seed)
        parts, n = [], 0
        while n < POOL_CHARS + 4 * a.long_max + 64:
            w = pool_rng.choice(WORDS)
            parts.append(w)
            n += len(w) + 1
        self.pool = " ".join(parts)

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

    def lengths(self, i):
        """(cls, prompt_tokens, output_tokens) of request i."""
        a = self.a
        while len(self._lengths) <= i:
            rng = self._len_rng
            long_ = rng.random() < a.long_frac
            lp = rng.lognormvariate(math.log(a.prompt_median), a.prompt_sigma)
            ll = rng.randint(a.long_min, a.long_max)
            lo = rng.lognormvariate(math.log(a.output_median), a.output_sigma)
            p = ll if long_ else min(max(int(round(lp)), a.prompt_min), a.prompt_max)
            o = min(max(int(round(lo)), a.output_min), a.output_max)
            self._lengths.append(("long" if long_ else "short", p, o))
        return self._lengths[i]

    def body(self, i):
        """The request body of request i (bytes)."""
        _, p, o = self.lengths(i)
        tag = "r%07d " % i
        nchars = 4 * p
        off = (i * 7919 * 64 + 1) % POOL_CHARS  # deterministic, spread over the pool
        text = tag + self.pool[off:off + nchars - len(tag)]
        assert len(text) == nchars, (len(text), nchars)
        return ('{"model":"%s","prompt":"%s","max_tokens":%d,"stream":true,"ignore_eos":true}'
                % (self.a.model, text, o)).encode()


# ---- one streamed request --------------------------------------------------------

class Record:
    __slots__ = ("i", "cls", "phase", "prompt_tokens", "max_tokens", "sched", "start",
                 "status", "err", "times", "end", "done", "created")

    def __init__(self, i, cls, phase, p, o, sched):
        self.i, self.cls, self.phase = i, cls, phase
        self.prompt_tokens, self.max_tokens, self.sched = p, o, sched
        self.start = None      # actual start (connect), s from t0
        self.status = 0
        self.err = None        # None, or a short reason
        self.times = []        # monotonic time of every token event
        self.end = None        # monotonic time of the terminating chunk
        self.done = False      # saw data: [DONE]
        self.created = None    # "created" of the first token event (names the replica)

    def ok(self):
        return (self.err is None and self.status == 200 and self.done and
                len(self.times) == self.max_tokens)

    def to_json(self, t0):
        s = self.start if self.start is not None else None
        d = {"i": self.i, "cls": self.cls, "phase": self.phase,
             "prompt_tokens": self.prompt_tokens, "max_tokens": self.max_tokens,
             "sched_s": round(self.sched, 6),
             "lag_ms": None if s is None else round((s - self.sched) * 1e3, 3),
             "status": self.status, "ok": self.ok(), "err": self.err,
             "ntok": len(self.times), "created": self.created}
        if s is not None:
            base = t0 + s
            d["start_s"] = round(s, 6)
            d["ttft_ms"] = round((self.times[0] - base) * 1e3, 3) if self.times else None
            d["e2e_ms"] = round((self.end - base) * 1e3, 3) if self.end else None
            # Token arrival times, ms after the start; equal values = one read.
            d["tok_ms"] = [round((x - base) * 1e3, 2) for x in self.times]
        return d


class Stream(asyncio.Protocol):
    """Sends one request and parses the streamed response: head, chunked framing,
    SSE events. Token event = a data event holding "choices"."""

    def __init__(self, rec, request, finished):
        self.rec = rec
        self.request = request
        self.finished = finished  # callback(rec)
        self.transport = None
        self.head = bytearray()
        self.in_head = True
        self.chunked = False
        self.pend = bytearray()   # body bytes not yet de-chunked
        self.clen = -1            # bytes left in the current chunk incl. its CRLF; -1: size line
        self.sse = bytearray()    # de-chunked bytes not yet split into events
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
                if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                    self.chunked = True
            if self.rec.status != 200:
                self._fail("status %d" % self.rec.status)
                return
            if not self.chunked:
                self._fail("not chunked")
                return
            data = rest
            if not data:
                return
        self.pend += data
        self._dechunk(now)

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
                self.sse += b[pos:pos + payload]
            pos += take
            self.clen -= take
            if self.clen == 0:
                self.clen = -1
        del b[:pos]
        self._events(now)

    def _events(self, now):
        s = self.sse
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
            elif b'"choices"' in ev:
                if not rec.times:
                    k = ev.find(b'"created":')
                    if k >= 0:
                        digits = ev[k + 10:k + 30].split(b",", 1)[0]
                        rec.created = int(digits) if digits.isdigit() else None
                rec.times.append(now)
            elif b'"error"' in ev:
                rec.err = rec.err or "error event"

    def _end(self, now):
        self._events(now)
        self.rec.end = now
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
        for i, t in enumerate(arrivals):  # lengths fixed up front, in order
            self.wl.lengths(i)
        self.measured_left = sum(1 for t in arrivals if self.phase_of(t) == "measure")
        if self.measured_left == 0:
            self.all_measured_done.set_result(True)
        self.t0 = loop.time() + 0.2  # a moment to arm the timers
        self.header = ("POST /v1/completions HTTP/1.1\r\nHost: %s:%d\r\n"
                       "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
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
        cls, p, o = self.wl.lengths(i)
        rec = Record(i, cls, self.phase_of(t), p, o, t)
        self.records.append(rec)
        rec.start = time.monotonic() - self.t0
        body = self.wl.body(i)
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


def summarize(records):
    """Statistics of the measured requests, from to_json() dicts. Latencies in ms.
    TTFT: first token event - start. TPOT: (last - first token) / (tokens - 1),
    per request, then the mean. Inter-token gaps: every gap of every completed
    request (tokens relayed together give gaps of 0). E2E: end of stream - start.
    'short_behind_long': short requests that started on a replica while a long
    request there was before its first token (a long prefill in progress or queued
    on the replica it was routed to); 'short_clear': the other short requests."""
    m = [r for r in records if r["phase"] == "measure"]
    ok = [r for r in m if r["ok"]]
    out = {"measured": len(m), "completed": len(ok), "failed": len(m) - len(ok)}
    errs = {}
    for r in m:
        if not r["ok"]:
            k = r["err"] or ("tokens %d/%d" % (r["ntok"], r["max_tokens"]))
            errs[k] = errs.get(k, 0) + 1
    out["errors"] = errs
    for cls in ("short", "long"):
        t = [r["ttft_ms"] for r in ok if r["cls"] == cls]
        out["ttft_%s" % cls] = {"n": len(t), "p50": pct(t, 50), "p90": pct(t, 90),
                                "p99": pct(t, 99), "mean": mean(t)}
    # Short requests that a long prompt's prefill delayed: started on the same
    # replica (known from "created") while a long request there was between its
    # start and its first token (any phase: a warm-up long request counts too).
    # This is the routing mistake the long-prompt goal is about.
    spans = {}
    for r in records:
        if r["cls"] == "long" and r.get("ttft_ms") is not None and r["created"] is not None:
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
    for r in ok:
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
    # Requests per replica (measured, completed), by class.
    per = {}
    for r in ok:
        if r["created"] is not None:
            d = per.setdefault(str(r["created"]), {"short": 0, "long": 0})
            d[r["cls"]] += 1
    out["per_replica"] = per
    tpot, gaps = [], []
    for r in ok:
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
    lags = [r["lag_ms"] for r in records if r["lag_ms"] is not None]
    out["lag_ms"] = {"p50": pct(lags, 50), "p99": pct(lags, 99), "max": max(lags) if lags else None}
    return out


# ---- main ------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="sim-model")
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
    p.add_argument("--long-frac", type=float, default=0.05)
    p.add_argument("--long-min", type=int, default=5000)
    p.add_argument("--long-max", type=int, default=15000)
    p.add_argument("--prompt-median", type=float, default=215)
    p.add_argument("--prompt-sigma", type=float, default=0.9)
    p.add_argument("--prompt-min", type=int, default=4)
    p.add_argument("--prompt-max", type=int, default=2048)
    p.add_argument("--output-median", type=float, default=200)
    p.add_argument("--output-sigma", type=float, default=0.6)
    p.add_argument("--output-min", type=int, default=8)
    p.add_argument("--output-max", type=int, default=768)
    p.add_argument("--out", help="JSON lines, one record per request")
    p.add_argument("--summary", help="JSON summary")
    p.add_argument("--describe", action="store_true",
                   help="print the workload's statistics (no requests) and exit")
    a = p.parse_args(argv)
    if a.mode == "bursts" and not a.burst_on * a.burst_factor < 1:
        p.error("--burst-on x --burst-factor must be < 1 (the off rate would be negative)")
    return a


def describe(a, n=200000):
    """Means of the length distributions, by sampling (what calibration divides by)."""
    wl = Workload(a)
    ls = [wl.lengths(i) for i in range(n)]
    return {"samples": n,
            "prompt_mean": mean([p for _, p, _ in ls]),
            "prompt_short_mean": mean([p for c, p, _ in ls if c == "short"]),
            "prompt_short_median": pct([p for c, p, _ in ls if c == "short"], 50),
            "output_mean": mean([o for _, _, o in ls]),
            "output_median": pct([o for _, _, o in ls], 50),
            # A request is in ~O steps with a mean context of P + O/2 (the step
            # model's context term; see run.py model_capacity()).
            "ctx_steps_mean": mean([o * (p + o / 2.0) for _, p, o in ls]),
            "long_frac": sum(1 for c, _, _ in ls if c == "long") / n}


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
    s = summarize(recs)
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

#!/usr/bin/env python3
"""bench/calibration/record.py: one vllm-sim replica under a loadgen.py workload,
its /metrics scraped every --every-ms (as tokenrelay's poller does), every scrape
saved to a trace for calib_replay (Python 3 stdlib only).

    record.py --sim build/vllm-sim --kind normal --load 0.75 --seconds 60 --out t.gz

Trace: gzip text, per scrape a line "#@ <monotonic ms>" followed by the
exposition as served. The sim's own vllm_sim:engine_steps/step_tokens/
step_seconds counters in it are the ground truth (calib_replay --truth).
"""

import argparse
import gzip
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench", "routing"))
import loadgen  # noqa: E402

# (base ms, per-token us) of the replica kinds bench/routing/run.py uses.
KINDS = {"normal": (8.0, 40.0), "slow": (16.0, 80.0)}
MAX_SEQS = 256


def capacity(base_s, per_tok_s, per_ctx_s, means):
    """Requests/s at a full batch, the step model of bench/routing/run.py."""
    p, o = means["prompt_mean"], means["output_mean"]
    return 1.0 / (o * base_s / MAX_SEQS + per_tok_s * (p + o - 1) +
                  per_ctx_s * means["ctx_steps_mean"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sim", default=os.path.join(ROOT, "build", "vllm-sim"))
    ap.add_argument("--kind", choices=sorted(KINDS), default="normal")
    ap.add_argument("--load", type=float, default=0.75, help="fraction of capacity")
    ap.add_argument("--seconds", type=float, default=60, help="arrivals for this long")
    ap.add_argument("--every-ms", type=float, default=100, help="scrape period")
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--per-ctx-ns", type=float, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--long-frac", type=float, default=0.05)
    ap.add_argument("--prompt-median", type=float, default=215)
    ap.add_argument("--output-median", type=float, default=200)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    base_ms, per_tok_us = KINDS[a.kind]
    lg_shape = ["--long-frac", str(a.long_frac), "--prompt-median", str(a.prompt_median),
                "--output-median", str(a.output_median), "--seed", str(a.seed)]
    means = loadgen.describe(loadgen.parse_args(["--port", "1", "--rate", "1"] + lg_shape), 50000)
    cap = capacity(base_ms / 1e3 / a.speed, per_tok_us / 1e6 / a.speed,
                   a.per_ctx_ns / 1e9 / a.speed, means)
    rate = a.load * cap

    sim = subprocess.Popen(
        [a.sim, "--port", "0", "--speed", str(a.speed), "--step-base-ms", str(base_ms),
         "--step-per-token-us", str(per_tok_us), "--step-per-ctx-ns", str(a.per_ctx_ns),
         "--max-model-len", "16384", "--max-num-batched-tokens", "2048", "--max-num-seqs",
         str(MAX_SEQS), "--kv-blocks", "32768"], stdout=subprocess.PIPE, text=True)
    try:
        m = re.search(r"listening on \S+:(\d+)", sim.stdout.readline())
        port = int(m.group(1))
        stop = threading.Event()
        out = gzip.open(a.out, "wt")
        scrapes = [0]

        def scraper():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            nxt = time.monotonic()
            while not stop.is_set():
                conn.request("GET", "/metrics")
                body = conn.getresponse().read().decode()
                out.write("#@ %.3f\n" % (time.monotonic() * 1e3))
                out.write(body)
                scrapes[0] += 1
                nxt += a.every_ms / 1e3
                time.sleep(max(0.0, nxt - time.monotonic()))

        th = threading.Thread(target=scraper, daemon=True)
        th.start()
        lg = subprocess.run(
            [sys.executable, os.path.join(ROOT, "bench", "routing", "loadgen.py"), "--port",
             str(port), "--rate", "%.4f" % rate, "--warmup", "0", "--duration", str(a.seconds),
             "--drain-max", "0"] + lg_shape, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        stop.set()
        th.join()
        out.close()
        if lg.returncode != 0:
            sys.stderr.write(lg.stderr[-2000:])
        print(json.dumps({"kind": a.kind, "base_ms": base_ms / a.speed,
                          "per_token_us": per_tok_us / a.speed, "load": a.load,
                          "rate_rps": round(rate, 3), "capacity_rps": round(cap, 3),
                          "scrapes": scrapes[0], "trace": a.out}))
    finally:
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""bench/routing/analyze.py OUTDIR [SCENARIO ...]: what tokenrelay believed during
each run of a bench/routing/run.py output directory, next to the truth. Runs are
found anywhere under OUTDIR/run/<scenario>/ (run/<scenario>/<load>/<seed>/<target>).

For every tokenrelay target: per replica, the step-time calibration it published
in GET /status (median over the measured window; the simulator's real values
beside it), the load imbalance (mean running requests per replica, from the
replicas' own /metrics), and tokenrelay_ttft_prediction_error_seconds
(predicted - observed TTFT of the chosen replica) from GET /metrics at the end.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def median(v):
    v = sorted(v)
    return v[len(v) // 2] if v else None


def prediction_error(path):
    """(count, mean s, {bound: cumulative fraction}) of the histogram."""
    buckets, total, count = [], 0.0, 0
    with open(path) as f:
        for line in f:
            if line.startswith("tokenrelay_ttft_prediction_error_seconds_bucket"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                buckets.append((le, float(line.rsplit(" ", 1)[1])))
            elif line.startswith("tokenrelay_ttft_prediction_error_seconds_sum"):
                total = float(line.rsplit(" ", 1)[1])
            elif line.startswith("tokenrelay_ttft_prediction_error_seconds_count"):
                count = int(float(line.rsplit(" ", 1)[1]))
    return count, (total / count if count else None), buckets


def truth(scen, i, settings):
    """The real step base (ms) and per-token cost (us) of replica i (run.py's
    STEP: in the "slow" scenario r3 is slow; homogeneous8 runs at SPEED8)."""
    base, per_tok = (16, 80) if scen == "slow" and i == 3 else (8, 40)
    speed = settings.get("speed8", settings["speed"]) if scen == "homogeneous8" \
        else settings["speed"]
    return base / speed, per_tok / speed


def analyze(out, scenarios):
    with open(os.path.join(out, "header.json")) as f:
        header = json.load(f)
    warm, dur = header["settings"]["warmup"], header["settings"]["duration"]
    lines = []
    base = os.path.join(out, "run")
    for scen in scenarios or sorted(os.listdir(base)):
        d0 = os.path.join(base, scen)
        if not os.path.isdir(d0):
            continue
        for d, _, files in sorted(os.walk(d0)):
            tgt = os.path.relpath(d, d0)
            mon = os.path.join(d, "monitor.jsonl")
            if "tokenrelay.ini" not in files or "monitor.jsonl" not in files:
                continue
            with open(mon) as f:
                samples = [json.loads(x) for x in f]
            win = [s for s in samples if warm <= s["t"] <= warm + dur]
            st = [s["status"] for s in win if "status" in s]
            if not st:
                continue
            n = len(st[0]["replicas"])
            lines.append("%s / %s:" % (scen, tgt))
            for i in range(n):
                rs = [s["replicas"][i] for s in st]
                b = median([r["calibration"]["step_base_s"] * 1e3 for r in rs])
                p = median([r["calibration"]["step_per_token_s"] * 1e6 for r in rs])
                b_min = min(r["calibration"]["step_base_s"] * 1e3 for r in rs)
                b_max = max(r["calibration"]["step_base_s"] * 1e3 for r in rs)
                p_min = min(r["calibration"]["step_per_token_s"] * 1e6 for r in rs)
                p_max = max(r["calibration"]["step_per_token_s"] * 1e6 for r in rs)
                tb, tp = truth(scen, i, header["settings"])
                runn = [s["sims"][i]["running"] for s in win if s["sims"][i]]
                wait = [s["sims"][i]["waiting"] for s in win if s["sims"][i]]
                pq = median([r["load"]["prefill_tokens_queued"] for r in rs])
                lines.append(
                    "  %s: calibrated base %.1f ms [%.1f..%.1f], per-token %.0f us [%.0f..%.0f] "
                    "(sim: %.0f ms + %.0f us/token + context); running mean %.0f, waiting mean "
                    "%.1f, max %.0f" % (rs[0]["name"], b, b_min, b_max, p, p_min, p_max, tb, tp,
                                        sum(runn) / max(1, len(runn)),
                                        sum(wait) / max(1, len(wait)), max(wait or [0])))
            mp = os.path.join(d, "tokenrelay-metrics.txt")
            if os.path.exists(mp):
                count, mean_err, buckets = prediction_error(mp)
                if count:
                    cum = dict(buckets)
                    under1 = cum.get("-1", 0) / count
                    under05 = cum.get("-0.5", 0) / count
                    over = 1 - cum.get("0", 0) / count
                    lines.append("  TTFT prediction error (predicted - observed) over %d requests: "
                                 "mean %+.2f s; %.0f%% under-predicted by > 1 s, %.0f%% by > 0.5 s; "
                                 "%.0f%% over-predicted" % (count, mean_err, 100 * under1,
                                                           100 * under05, 100 * over))
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    print(analyze(sys.argv[1], sys.argv[2:]))

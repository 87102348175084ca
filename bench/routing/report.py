#!/usr/bin/env python3
"""bench/routing/report.py OUTDIR: the tables and the goal checks of a
bench/routing/run.py run (issue 8's natural workloads), as Markdown on stdout.
Reads OUTDIR/header.json, calibration.json and
run/<scenario>/<load>/<seed>/<target>/summary.json.

Per scenario x load x target: the median over seeds of each figure and its
spread (min-max). Per scenario x load: each target's ratio to nginx least_conn,
computed per seed (same workload, same fresh replicas), then the median and the
min-max over seeds. The goals table marks each of issue 8's goals on the medians.
TTFT figures are over streaming requests only (a non-streaming request's first
byte is its whole answer).
"""

import json
import os
import sys

REF = "nginx_least_conn"
DEFAULT = "latency"
ORDER = ["latency", "least_requests", "power_of_two", "kv_aware", "round_robin",
         "nginx_least_conn", "nginx_rr"]
SCEN_ORDER = ["homogeneous", "homogeneous8", "slow", "kvpressure", "multimodel", "bursts",
              "uniform"]
WHAT = {
    "homogeneous": "4 equal replicas",
    "homogeneous8": "8 equal replicas (simulator speed halved, so the token rate matches 4)",
    "slow": "r3 twice as slow (step base and per-token time doubled)",
    "kvpressure": "4 equal replicas with a small KV pool (mean demand at 75% load = KV_FIT of "
                  "it) and more long documents",
    "multimodel": "r0, r1 serve sim-a and the adapter sim-a-lora, r2, r3 serve sim-b; 1% of "
                  "requests name an unknown model",
    "bursts": "4 equal replicas, bursty arrivals",
    "uniform": "4 equal replicas, no long documents",
}
# (key, label) of the compared figures, all "lower is better".
FIGS = [("short_p50", "short TTFT p50"), ("short_p99", "short TTFT p99"),
        ("long_p99", "long TTFT p99"), ("e2e_mean", "e2e mean"), ("e2e_p99", "e2e p99"),
        ("ns_p99", "non-streaming e2e p99"), ("preempt", "preemptions"),
        ("served_404", "404s (served models)")]


def load(out):
    with open(os.path.join(out, "header.json")) as f:
        header = json.load(f)
    cal = {}
    p = os.path.join(out, "calibration.json")
    if os.path.exists(p):
        with open(p) as f:
            cal = json.load(f)
    runs = {}  # scen -> load -> seed -> target -> summary
    base = os.path.join(out, "run")
    for scen in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        for ld in sorted(os.listdir(os.path.join(base, scen))):
            for seed in sorted(os.listdir(os.path.join(base, scen, ld))):
                d0 = os.path.join(base, scen, ld, seed)
                if not os.path.isdir(d0):
                    continue
                for tgt in sorted(os.listdir(d0)):
                    p = os.path.join(d0, tgt, "summary.json")
                    if os.path.exists(p):
                        with open(p) as f:
                            s = json.load(f)
                        if "run" in s:
                            runs.setdefault(scen, {}).setdefault(ld, {}).setdefault(
                                int(seed), {})[tgt] = s
    return header, cal, runs


def ms(v):
    if v is None:
        return "-"
    if v >= 1000:
        return "%.2f s" % (v / 1000) if v < 10000 else "%.1f s" % (v / 1000)
    return "%.0f" % v if v >= 100 else "%.1f" % v


def ratio(a, b):
    if a is None or b is None:
        return None
    if b == 0:
        return 0.0 if a == 0 else None
    return a / b


def median(v):
    v = sorted(x for x in v if x is not None)
    if not v:
        return None
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def spread(v):
    v = [x for x in v if x is not None]
    return (min(v), max(v)) if v else (None, None)


def ordered(d, order):
    return [k for k in order if k in d] + sorted(k for k in d if k not in order)


def replica_index(created, base):
    try:
        return int(created) - base
    except (TypeError, ValueError):
        return None


def wrong_replica(s, served, base):
    """Measured requests answered (any status) by a replica that does not serve
    their model, from "created" and the scenario's replica_models."""
    if not served:
        return None
    n = 0
    for created, models in (s.get("per_replica_models") or {}).items():
        i = replica_index(created, base)
        if i is None or not 0 <= i < len(served):
            continue
        n += sum(c for m, c in models.items() if m not in served[i])
    return n


def metrics(s, base=1700000000):
    """The compared figures of one run (ms, counts)."""
    r = s["run"]
    return {"short_p50": s["ttft_short"]["p50"], "short_p99": s["ttft_short"]["p99"],
            "long_p99": s["ttft_long"]["p99"], "e2e_mean": s["e2e_mean"],
            "e2e_p99": s["e2e_p99"], "ns_p99": s["e2e_nonstream"]["p99"],
            "preempt": r.get("preemptions"), "served_404": s.get("served_404", 0),
            "failed": s["failed"], "completed": s["completed"],
            "wrong": wrong_replica(s, r.get("replica_models"), base),
            "unknown_404": s["unknown_model"]["404"], "unknown_n": s["unknown_model"]["n"],
            "names_models": s["unknown_model"]["names_models"]}


def share(s, base=1700000000):
    """Per-replica share of the measured completed requests, "r0/r1/.." in %."""
    per = s.get("per_replica") or {}
    counts = {}
    for k, v in per.items():
        i = replica_index(k, base)
        if i is not None:
            counts[i] = sum(v.values())
    n = len(s["run"].get("replica_kinds") or []) or (max(counts) + 1 if counts else 0)
    tot = sum(counts.values())
    if not tot:
        return "-"
    return "/".join("%.0f" % (100.0 * counts.get(i, 0) / tot) for i in range(n))


def fmt_med(vals, f=ms):
    m = median(vals)
    lo, hi = spread(vals)
    if m is None:
        return "-"
    if lo == hi or len([v for v in vals if v is not None]) < 2:
        return f(m)
    return "%s [%s..%s]" % (f(m), f(lo), f(hi))


def cnt(v):
    return "%.0f" % v


def xr(v):
    return "-" if v is None else "x%.2f" % v


def cell_ratios(by_seed, target):
    """{fig: [ratio per seed]} of <target> to REF over the seeds that have both."""
    out = {k: [] for k, _ in FIGS}
    for seed, tg in sorted(by_seed.items()):
        if target not in tg or REF not in tg:
            continue
        a, b = metrics(tg[target]), metrics(tg[REF])
        for k, _ in FIGS:
            out[k].append(ratio(a[k], b[k]))
    return out


def scenario_tables(scen, loads, header):
    lines = []
    lines.append("### %s: %s" % (scen, WHAT.get(scen, "")))
    lines.append("")
    for ld in sorted(loads, key=float):
        by_seed = loads[ld]
        seeds = sorted(by_seed)
        targets = ordered({t: 1 for tg in by_seed.values() for t in tg}, ORDER)
        any_run = next(iter(by_seed[seeds[0]].values()))
        lines.append("#### %s, %.0f%% load (%.2f req/s), seeds %s" % (
            scen, 100 * float(ld), any_run["run"]["rate"], ",".join(map(str, seeds))))
        lines.append("")
        lines.append("Median over seeds [min..max]; ms unless marked s. Short/long: prompts "
                     "from the log-normal / 5k-15k-token documents; TTFT over streaming "
                     "requests only. Share: % of completed requests per replica (median seed).")
        lines.append("")
        lines.append("| target | ok / failed | short TTFT p50 | short TTFT p99 | long TTFT p99 "
                     "| e2e mean | e2e p99 | non-streaming e2e p99 | preemptions | 404s served "
                     "| wrong replica | share r0/r1/.. |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for t in targets:
            ms_ = [metrics(by_seed[sd][t]) for sd in seeds if t in by_seed[sd]]
            col = lambda k: [m[k] for m in ms_]
            mid = sorted(seeds, key=lambda sd: metrics(by_seed[sd][t])["e2e_mean"] or 0
                         if t in by_seed[sd] else 0)
            mid_run = by_seed[mid[len(mid) // 2]].get(t)
            lines.append("| %s | %d / %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                t, sum(col("completed")), sum(col("failed")), fmt_med(col("short_p50")),
                fmt_med(col("short_p99")), fmt_med(col("long_p99")), fmt_med(col("e2e_mean")),
                fmt_med(col("e2e_p99")), fmt_med(col("ns_p99")), fmt_med(col("preempt"), cnt),
                fmt_med(col("served_404"), cnt),
                "-" if all(v is None for v in col("wrong")) else fmt_med(col("wrong"), cnt),
                share(mid_run) if mid_run else "-"))
        lines.append("")
        if any(REF in tg for tg in by_seed.values()):
            lines.append("Ratios to nginx least_conn, per seed, then median [min..max] "
                         "(lower is better):")
            lines.append("")
            lines.append("| target | " + " | ".join(lbl for _, lbl in FIGS) + " |")
            lines.append("|---|" + "---|" * len(FIGS))
            for t in targets:
                if t == REF:
                    continue
                rr = cell_ratios(by_seed, t)
                lines.append("| %s | %s |" % (t, " | ".join(fmt_med(rr[k], xr) for k, _ in FIGS)))
            lines.append("")
        lines.append("<details><summary>run health</summary>")
        lines.append("")
        lines.append("| seed | target | proxy CPU % | sims CPU % | loadgen CPU % | lag p99 ms "
                     "| other CPU % | load before -> after | errors | chars/token prose/code/cjk "
                     "| output tokens mean | notes |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for sd in seeds:
            for t in ordered(by_seed[sd], ORDER):
                s = by_seed[sd][t]
                r = s["run"]
                cpt = s.get("chars_per_token") or {}
                notes = []
                if r.get("attempt", 1) > 1:
                    notes.append("attempt %d" % r["attempt"])
                if r.get("disturbed"):
                    notes.append("DISTURBED: " + "; ".join(r["disturbed"]))
                if not r.get("target_alive", True):
                    notes.append("TARGET EXITED")
                lines.append("| %d | %s | %.0f | %.0f | %.0f | %.1f | %.0f | %s -> %s | %s | %s "
                             "| %s | %s |" % (
                                 sd, t, r["proxy_cpu_pct"], r["sims_cpu_pct"],
                                 s["loadgen"]["cpu_pct"], s["lag_ms"]["p99"] or 0,
                                 r["other_cpu_pct"], r["load_before"], r["load_after"],
                                 json.dumps(s["errors"]) if s["errors"] else "-",
                                 "/".join("%.1f" % cpt[k] if cpt.get(k) else "-"
                                          for k in ("prose", "code", "cjk")),
                                 "%.0f" % s["output_tokens_mean"] if s.get("output_tokens_mean")
                                 else "-", "; ".join(notes) or "-"))
        lines.append("")
        lines.append("</details>")
        lines.append("")
    return lines


def goals(runs):
    """Issue 8's goals, on the medians over seeds of the per-seed ratios of
    `latency` to nginx least_conn. Returns Markdown lines."""
    rows = []

    def med_ratio(scen, ld, k):
        by_seed = runs.get(scen, {}).get(ld)
        if not by_seed:
            return None, 0
        rr = [v for v in cell_ratios(by_seed, DEFAULT)[k] if v is not None]
        return median(rr), len(rr)

    def row(goal, scen, ld, k, bound):
        m, n = med_ratio(scen, ld, k)
        if m is None:
            rows.append((goal, "-", "not measured"))
            return
        lo, hi = spread(cell_ratios(runs[scen][ld], DEFAULT)[k])
        verdict = "pass" if m <= bound else "FAIL"
        if n < 3:
            verdict += " (only %d seed%s)" % (n, "" if n == 1 else "s")
        rows.append((goal, "x%.2f [x%.2f..x%.2f], %d seeds" % (m, lo, hi, n), verdict))

    ld75 = "0.75"
    for k, lbl, b in (("short_p99", "short-request TTFT p99", 0.3), ("e2e_mean", "mean e2e", 0.9),
                      ("ns_p99", "non-streaming e2e p99", 0.9),
                      ("long_p99", "long-document TTFT p99", 1.2)):
        row("slow replica, 75%% load: %s <= x%.1f" % (lbl, b), "slow", ld75, k, b)
    for scen in ("homogeneous", "homogeneous8"):
        if scen not in runs:
            rows.append((scen, "-", "not measured"))
        for ld in sorted(runs.get(scen, {}), key=float):
            for k, lbl in (("short_p50", "TTFT p50"), ("short_p99", "TTFT p99"),
                           ("e2e_mean", "e2e mean"), ("e2e_p99", "e2e p99")):
                row("%s, %.0f%% load: %s <= x1.0" % (scen, 100 * float(ld), lbl), scen, ld, k,
                    1.0)
    if "kvpressure" not in runs:
        rows.append(("kvpressure", "-", "not measured"))
    for ld in sorted(runs.get("kvpressure", {}), key=float):
        pct_ = 100 * float(ld)
        row("kvpressure, %.0f%% load: preemptions <= x0.5" % pct_, "kvpressure", ld, "preempt",
            0.5)
        row("kvpressure, %.0f%% load: e2e p99 <= x0.9" % pct_, "kvpressure", ld, "e2e_p99", 0.9)
    # Multi-model: absolute checks on the `latency` runs, every load and seed.
    mm = runs.get("multimodel", {})
    tl = [metrics(tg[DEFAULT]) for ld in mm.values() for tg in ld.values() if DEFAULT in tg]
    if tl:
        wrong = sum(m["wrong"] or 0 for m in tl)
        n404 = sum(m["served_404"] for m in tl)
        names = [m["names_models"] for m in tl if m["unknown_404"]]
        unk = sum(m["unknown_n"] for m in tl)
        unk404 = sum(m["unknown_404"] for m in tl)
        rows.append(("multimodel: every request answered by a replica serving its model",
                     "%d wrong over %d runs" % (wrong, len(tl)), "pass" if wrong == 0 else "FAIL"))
        rows.append(("multimodel: zero 404s for served models", "%d" % n404,
                     "pass" if n404 == 0 else "FAIL"))
        rows.append(("multimodel: the unknown-model 404 names the models",
                     "%d/%d unknown-model requests got 404; names all served models: %s" % (
                         unk404, unk, "yes" if names and all(names) else "no"),
                     "pass" if unk404 == unk and names and all(names) else "FAIL"))
    else:
        rows.append(("multimodel", "-", "not measured"))
    out = ["| goal (`latency` vs nginx least_conn, median over seeds) | measured | verdict |",
           "|---|---|---|"]
    out += ["| %s | %s | %s |" % r for r in rows]
    return out


def render(out):
    header, cal, runs = load(out)
    lines = ["## Routing benchmark, natural workloads (bench/routing, issue 8)", ""]
    for k in ("date", "machine", "commit", "versions", "command", "sim_flags", "pinning",
              "load_before", "load_after"):
        if k in header:
            lines.append("- %s: %s" % (k.replace("_", " "), header[k]))
    if "total_s" in header:
        lines.append("- total run time: %.0f min" % (header["total_s"] / 60))
    seeds = header.get("settings", {}).get("seeds", [])
    if any(sd <= 10 for sd in seeds):
        lines.append("- NOTE: seeds 1-10 are the tuning seeds; the held-out figures are seeds "
                     "11-20")
    lines.append("")
    if cal:
        lines.append("Capacity of one replica, from the simulator's step model (requests/s at "
                     "a full batch of 256; run.py model_capacity()); load = arrival rate / the "
                     "replicas' summed capacity:")
        lines.append("")
        lines.append("| replica @ workload | capacity req/s | prompt mean | output mean "
                     "| measured check: batch model / measured, step ms model / measured |")
        lines.append("|---|---|---|---|---|")
        for k in sorted(cal):
            c = cal[k]
            chk = "-"
            if "measured_batch" in c:
                chk = "%.0f / %.0f, %.1f / %s" % (
                    c["predicted_batch"], c["measured_batch"], c["predicted_step_ms"],
                    "%.1f" % c["measured_step_ms"] if c.get("measured_step_ms") else "-")
            lines.append("| %s | %.2f | %.0f | %.0f | %s |" % (
                k, c["capacity_rps"], c["means"]["prompt_mean"], c["means"]["output_mean"], chk))
        lines.append("")
    if runs:
        lines.append("### Goals")
        lines.append("")
        lines += goals(runs)
        lines.append("")
    for scen in ordered(runs, SCEN_ORDER):
        lines += scenario_tables(scen, runs[scen], header)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    print(render(sys.argv[1]))

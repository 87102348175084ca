#!/usr/bin/env python3
"""bench/routing/report.py OUTDIR: the tables, the goal checks and the plot
(OUTDIR/ttft_short_p99.svg) of a bench/routing/run.py run, as Markdown on stdout.
Reads OUTDIR/header.json, calibration.json and run/<scenario>/<target>/summary.json.
"""

import json
import math
import os
import sys

REF = "nginx_least_conn"
DEFAULT = "latency"
ORDER = ["latency", "least_requests", "power_of_two", "kv_aware", "round_robin",
         "nginx_least_conn", "nginx_rr"]
SCEN_ORDER = ["homogeneous", "slow", "bursts", "uniform"]
WHAT = {
    "homogeneous": "4 equal replicas, Poisson arrivals, {lf:g}% long prompts",
    "slow": "r3 twice as slow (step base and per-token time doubled), Poisson arrivals, "
            "{lf:g}% long prompts",
    "bursts": "4 equal replicas; arrivals in 20 s periods, 4 s at 3x the mean rate and 16 s at "
              "0.5x; {lf:g}% long prompts",
    "uniform": "4 equal replicas, Poisson arrivals, no long prompts (the homogeneous uniform "
               "workload)",
}
COLORS = {"latency": "#d62728", "least_requests": "#1f77b4", "power_of_two": "#17becf",
          "kv_aware": "#9467bd", "round_robin": "#8c564b", "nginx_least_conn": "#2ca02c",
          "nginx_rr": "#98df8a"}


def load(out):
    with open(os.path.join(out, "header.json")) as f:
        header = json.load(f)
    cal = {}
    p = os.path.join(out, "calibration.json")
    if os.path.exists(p):
        with open(p) as f:
            cal = json.load(f)
    runs = {}
    base = os.path.join(out, "run")
    for scen in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        for tgt in sorted(os.listdir(os.path.join(base, scen))):
            p = os.path.join(base, scen, tgt, "summary.json")
            if os.path.exists(p):
                with open(p) as f:
                    s = json.load(f)
                if "run" in s:
                    runs.setdefault(scen, {})[tgt] = s
    return header, cal, runs


def ms(v):
    if v is None:
        return "-"
    if v >= 1000:
        return "%.2f s" % (v / 1000) if v < 10000 else "%.1f s" % (v / 1000)
    return "%.0f" % v if v >= 100 else "%.1f" % v


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def x(v):
    return "-" if v is None else "x%.2f" % v


def ordered(d, order):
    return [k for k in order if k in d] + sorted(k for k in d if k not in order)


def metrics(s):
    """The compared figures of one run (ms)."""
    return {"short_p50": s["ttft_short"]["p50"], "short_p90": s["ttft_short"]["p90"],
            "short_p99": s["ttft_short"]["p99"], "behind_p99": s["short_behind_long"]["p99"],
            "behind_frac": s["short_behind_long"]["frac"], "clear_p99": s["short_clear"]["p99"],
            "long_p50": s["ttft_long"]["p50"], "long_p90": s["ttft_long"]["p90"],
            "long_p99": s["ttft_long"]["p99"], "tpot": s["tpot_mean"], "itl_p99": s["itl_p99"],
            "e2e_mean": s["e2e_mean"], "e2e_p99": s["e2e_p99"]}


def per_replica(s, base=1700000000):
    """"short r0/r1/..; long r0/r1/.." from the measured requests' "created" field."""
    per = s.get("per_replica") or {}
    reps = sorted(int(k) - base for k in per)
    if not reps:
        return "/".join(str(v) for v in s["run"]["requests_per_replica"])
    n = max(reps) + 1
    row = lambda cls: "/".join(str(per.get(str(base + i), {}).get(cls, 0)) for i in range(n))
    return "%s; %s" % (row("short"), row("long"))


def scenario_tables(scen, runs):
    lines = []
    tg = ordered(runs, ORDER)
    r0 = runs[tg[0]]["run"]
    lf = 100 * r0.get("long_frac", runs[tg[0]]["args"]["long_frac"])
    lines.append("### %s: %s; %.2f req/s" % (scen, WHAT.get(scen, "").format(lf=lf), r0["rate"]))
    lines.append("")
    lines.append("Latencies in ms unless marked s. TTFT short / long: prompts from the log-normal "
                 "/ 5k-15k-token documents. \"behind long\": short requests that started on a "
                 "replica while a long request there had not had its first token yet (% of short "
                 "requests, their TTFT p99). Requests: measured, completed, per replica "
                 "(short; long).")
    lines.append("")
    lines.append("| target | ok / failed | short TTFT p50 | p90 | p99 | behind long: % / p99 "
                 "| long TTFT p50 | p90 | p99 | mean TPOT | p99 ITL | e2e mean | e2e p99 "
                 "| requests r0/r1/r2/r3 |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t in tg:
        s = runs[t]
        m = metrics(s)
        req = per_replica(s)
        bf = m["behind_frac"]
        lines.append("| %s | %d / %d | %s | %s | **%s** | %s / %s | %s | %s | %s | %s | %s | **%s** "
                     "| %s | %s |" % (
                         t, s["completed"], s["failed"], ms(m["short_p50"]), ms(m["short_p90"]),
                         ms(m["short_p99"]), "-" if bf is None else "%.1f%%" % (100 * bf),
                         ms(m["behind_p99"]),
                         ms(m["long_p50"]), ms(m["long_p90"]), ms(m["long_p99"]), ms(m["tpot"]),
                         ms(m["itl_p99"]), ms(m["e2e_mean"]), ms(m["e2e_p99"]), req))
    lines.append("")
    if REF in runs:
        ref = metrics(runs[REF])
        lines.append("Ratios to nginx least_conn (lower is better):")
        lines.append("")
        lines.append("| target | short TTFT p50 | short TTFT p99 | behind-long p99 "
                     "| long TTFT p99 | mean TPOT | p99 ITL | e2e mean | e2e p99 |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for t in tg:
            if t == REF:
                continue
            m = metrics(runs[t])
            lines.append("| %s | %s | **%s** | %s | %s | %s | %s | **%s** | %s |" % (
                t, x(ratio(m["short_p50"], ref["short_p50"])),
                x(ratio(m["short_p99"], ref["short_p99"])),
                x(ratio(m["behind_p99"], ref["behind_p99"])),
                x(ratio(m["long_p99"], ref["long_p99"])), x(ratio(m["tpot"], ref["tpot"])),
                x(ratio(m["itl_p99"], ref["itl_p99"])), x(ratio(m["e2e_mean"], ref["e2e_mean"])),
                x(ratio(m["e2e_p99"], ref["e2e_p99"]))))
        lines.append("")
    lines.append("<details><summary>run health and replica load</summary>")
    lines.append("")
    lines.append("| target | proxy CPU % | sims CPU % | loadgen CPU % | loadgen lag p50 / p99 / max ms "
                 "| max open streams | other CPU % | load before -> after | waited s "
                 "| mean running per replica | mean waiting per replica | preemptions |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t in tg:
        s = runs[t]
        r = s["run"]
        lg = s["loadgen"]
        lag = s["lag_ms"]
        reps = r.get("replicas") or []
        run_ = "/".join("%.0f" % q["running_mean"] for q in reps) or "-"
        wait_ = "/".join("%.1f" % q["waiting_mean"] for q in reps) or "-"
        pre = "/".join("%.0f" % q["preemptions"] for q in reps) or "-"
        lines.append("| %s | %.0f | %.0f | %.0f | %.1f / %.1f / %.0f | %d | %.0f | %s -> %s | %d%s "
                     "| %s | %s | %s |" % (
                         t, r["proxy_cpu_pct"], r["sims_cpu_pct"], lg["cpu_pct"], lag["p50"],
                         lag["p99"], lag["max"], lg["max_open_streams"], r["other_cpu_pct"],
                         r["load_before"], r["load_after"], r["waited_s"],
                         (" (still busy)" if r["contended"] else "") +
                         (", attempt %d" % r["attempt"] if r.get("attempt", 1) > 1 else "") +
                         (", DISTURBED: %s" % "; ".join(r["disturbed"]) if r.get("disturbed") else ""),
                         run_, wait_, pre))
    lines.append("")
    lines.append("</details>")
    lines.append("")
    return lines


def goals(runs):
    """The issue's goals, evaluated. Returns Markdown lines."""
    out = []

    def get(scen, t):
        return metrics(runs[scen][t]) if scen in runs and t in runs[scen] else None

    d, ref = get("slow", DEFAULT), get("slow", REF)
    if d and ref:
        r1 = ratio(d["short_p99"], ref["short_p99"])
        r2 = ratio(d["e2e_mean"], ref["e2e_mean"])
        out.append("- slow replica, 75%% load, 5%% long: `latency` short-request TTFT p99 %s vs "
                   "nginx least_conn %s = %s (goal <= x0.50): **%s**" % (
                       ms(d["short_p99"]), ms(ref["short_p99"]), x(r1),
                       "holds" if r1 is not None and r1 <= 0.5 else "fails"))
        out.append("- slow replica: `latency` mean e2e %s vs nginx least_conn %s = %s "
                   "(goal <= x0.90): **%s**" % (
                       ms(d["e2e_mean"]), ms(ref["e2e_mean"]), x(r2),
                       "holds" if r2 is not None and r2 <= 0.9 else "fails"))
    for scen in ("uniform", "homogeneous"):
        d, lr = get(scen, DEFAULT), get(scen, "least_requests")
        if not (d and lr):
            continue
        parts, ok = [], True
        for k, name, tol in (("short_p99", "short TTFT p99", 1.10), ("e2e_mean", "mean e2e", 1.05),
                             ("tpot", "mean TPOT", 1.05), ("e2e_p99", "e2e p99", 1.10)):
            rr = ratio(d[k], lr[k])
            good = rr is not None and rr <= tol
            ok = ok and good
            parts.append("%s %s vs %s = %s (%s)" % (name, ms(d[k]), ms(lr[k]), x(rr),
                                                   "ok" if good else "worse"))
        label = ("homogeneous uniform workload (goal)" if scen == "uniform"
                 else "homogeneous replicas with long prompts (for reference)")
        out.append("- %s, `latency` vs `least_requests`: %s; \"no worse\" read as <= x1.10 for "
                   "p99s and <= x1.05 for means: **%s**" % (label, "; ".join(parts),
                                                           "holds" if ok else "fails"))
    return out


def svg(runs, path):
    """Grouped bars, log scale: short-request TTFT p99 per target per scenario."""
    scens = ordered(runs, SCEN_ORDER)
    targets = []
    for sc in scens:
        for t in ordered(runs[sc], ORDER):
            if t not in targets:
                targets.append(t)
    targets = ordered({t: 1 for t in targets}, ORDER)
    vals = [runs[sc][t]["ttft_short"]["p99"] for sc in scens for t in targets
            if t in runs[sc] and runs[sc][t]["ttft_short"]["p99"]]
    if not vals:
        return
    lo = 10 ** math.floor(math.log10(min(vals)))
    hi = 10 ** math.ceil(math.log10(max(vals)))
    W, H = 960, 460
    L, R, T, B = 70, 190, 40, 60
    pw, ph = W - L - R, H - T - B
    gw = pw / len(scens)
    bw = gw * 0.8 / len(targets)

    def y(v):
        return T + ph * (1 - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))

    e = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
         'font-size="12">' % (W, H),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="22" font-size="15" font-weight="bold">Short-request TTFT p99 by '
         'routing target (ms, log scale; lower is better)</text>' % L]
    dec = lo
    while dec <= hi * 1.0001:
        for m in (1, 2, 5):
            v = dec * m
            if v < lo or v > hi * 1.0001:
                continue
            yy = y(v)
            e.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="%s"/>' %
                     (L, L + pw, yy, yy, "#bbb" if m == 1 else "#eee"))
            e.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' %
                     (L - 6, yy + 4, ("%g" % v) if v < 1000 else "%gs" % (v / 1000)))
        dec *= 10
    for i, sc in enumerate(scens):
        gx = L + i * gw + gw * 0.1
        for j, t in enumerate(targets):
            s = runs[sc].get(t)
            if not s or not s["ttft_short"]["p99"]:
                continue
            v = s["ttft_short"]["p99"]
            bx = gx + j * bw
            e.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s">'
                     '<title>%s / %s: %.0f ms</title></rect>' %
                     (bx, y(v), bw - 1, T + ph - y(v), COLORS.get(t, "#777"), sc, t, v))
            if t == REF:
                e.append('<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="black" '
                         'stroke-dasharray="4,3"/>' % (gx, gx + len(targets) * bw, y(v), y(v)))
        e.append('<text x="%.1f" y="%d" text-anchor="middle" font-size="13">%s</text>' %
                 (L + i * gw + gw / 2, T + ph + 20, sc))
    e.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="black"/>' % (L, L + pw, T + ph, T + ph))
    e.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="black"/>' % (L, L, T, T + ph))
    e.append('<text x="%d" y="%d" font-size="11" fill="#555">dashed: nginx least_conn level in '
             'each scenario</text>' % (L, T + ph + 42))
    for j, t in enumerate(targets):
        ly = T + 10 + j * 20
        e.append('<rect x="%d" y="%d" width="14" height="14" fill="%s"/>' %
                 (L + pw + 20, ly, COLORS.get(t, "#777")))
        e.append('<text x="%d" y="%d">%s</text>' % (L + pw + 40, ly + 11, t))
    e.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(e) + "\n")


def render(out):
    header, cal, runs = load(out)
    lines = ["## Routing benchmark (bench/routing)", ""]
    for k in ("date", "machine", "commit", "versions", "command", "sim_flags", "pinning",
              "load_before", "load_after"):
        if k in header:
            lines.append("- %s: %s" % (k.replace("_", " "), header[k]))
    if "total_s" in header:
        lines.append("- total run time: %.0f min" % (header["total_s"] / 60))
    lines.append("")
    if cal:
        lines.append("Capacity of one replica, from the simulator's step model (requests/s at "
                     "a full batch of 256; run.py model_capacity()), and the check: one replica "
                     "alone at %.0f%% of it, model vs measured (mean over the check's steady "
                     "part):" % (100 * header["settings"]["load"]))
        lines.append("")
        lines.append("| replica @ long fraction | capacity req/s | check rate req/s | batch model "
                     "/ measured | step ms model / measured | waiting mean / max | preemptions |")
        lines.append("|---|---|---|---|---|---|---|")
        for k in sorted(cal):
            c = cal[k]
            lines.append("| %s | %.2f | %.2f | %.0f / %.0f | %.1f / %s | %.1f / %.0f | %d |" % (
                k, c["capacity_rps"], c["check_rate_rps"], c["predicted_batch"],
                c["measured_batch"], c["predicted_step_ms"],
                "%.1f" % c["measured_step_ms"] if c["measured_step_ms"] else "-",
                c["measured_waiting"], c["measured_waiting_max"], c["preemptions"]))
        lines.append("")
    for scen in ordered(runs, SCEN_ORDER):
        lines += scenario_tables(scen, runs[scen])
    g = goals(runs)
    if g:
        lines.append("### Goals")
        lines.append("")
        lines += g
        lines.append("")
    svg_path = os.path.join(out, "ttft_short_p99.svg")
    svg(runs, svg_path)
    if os.path.exists(svg_path):
        lines.append("Plot: %s" % svg_path)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    print(render(sys.argv[1]))

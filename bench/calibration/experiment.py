#!/usr/bin/env python3
"""bench/calibration/experiment.py: the step-time calibration against vllm-sim's
configured step cost, scenario by scenario (Python 3 stdlib only).

    meson compile -C build vllm-sim calib_replay
    bench/calibration/experiment.py                     # 6 scenarios x 60 s
    DURATION=30 SCENARIOS="normal-75 slow-75" bench/calibration/experiment.py

Each scenario records one replica under loadgen.py (record.py: /metrics every
100 ms), then replays the trace through the poller's parser and StepCalibrator
(calib_replay) and prints, per scenario: the sim's configured base and
per-token cost, the "truth" (least squares through the sim's own per-interval
step counters: the configured line plus the context-token cost, which the
linear model folds into the base), and the fit (mean over the second half of
the run, its range, and with vllm:iteration_tokens_total hidden).

Environment: BUILD [build] (holds vllm-sim and bench/calib_replay), OUT
[/tmp/calibration-traces], DURATION [60], SCENARIOS [all], EVERY_MS [100].
"""

import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))

# name: (kind, load, extra loadgen shape flags)
SCENARIOS = {
    "normal-75": ("normal", 0.75, []),
    "slow-75": ("slow", 0.75, []),
    "normal-15": ("normal", 0.15, []),
    "slow-15": ("slow", 0.15, []),
    "normal-decode": ("normal", 0.5, ["--long-frac", "0", "--prompt-median", "8"]),
    "slow-decode": ("slow", 0.5, ["--long-frac", "0", "--prompt-median", "8"]),
}
CONFIGURED = {"normal": (8.0, 40.0), "slow": (16.0, 80.0)}


def replay(binary, trace, extra):
    zcat = subprocess.Popen(["zcat", trace], stdout=subprocess.PIPE)
    out = subprocess.run([binary, "--every", "0"] + extra, stdin=zcat.stdout,
                         capture_output=True, text=True, check=True).stdout
    zcat.wait()
    half = re.search(r"mean base ([\d.]+) ms, mean per_token ([\d.]+) us "
                     r"\(min ([\d.]+), max ([\d.]+)", out)
    truth = re.search(r"truth.*base ([\d.]+) ms, per_token ([\d.]+)", out)
    return [float(v) for v in half.groups()], [float(v) for v in truth.groups()]


def main():
    build = os.environ.get("BUILD", os.path.join(ROOT, "build"))
    out_dir = os.environ.get("OUT", "/tmp/calibration-traces")
    seconds = os.environ.get("DURATION", "60")
    every_ms = os.environ.get("EVERY_MS", "100")
    names = os.environ.get("SCENARIOS", " ".join(SCENARIOS)).split()
    sim = os.path.join(build, "vllm-sim")
    if not os.path.exists(sim):
        sim = os.path.join(build, "tools", "vllm-sim", "vllm-sim")
    replay_bin = os.path.join(build, "bench", "calib_replay")
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for name in names:
        kind, load, shape = SCENARIOS[name]
        trace = os.path.join(out_dir, name + ".gz")
        print("recording %s (%s s)..." % (name, seconds), file=sys.stderr, flush=True)
        subprocess.run([sys.executable, os.path.join(HERE, "record.py"), "--sim", sim, "--kind",
                        kind, "--load", str(load), "--seconds", seconds, "--every-ms", every_ms,
                        "--out", trace] + shape, check=True, stdout=subprocess.DEVNULL)
        fit, truth = replay(replay_bin, trace, [])
        fit_noit, _ = replay(replay_bin, trace, ["--no-iteration"])
        rows.append((name, CONFIGURED[kind], truth, fit, fit_noit))

    print("%-14s %-13s %-13s %-28s %-13s" % ("scenario", "configured", "truth", "fitted (2nd half)",
                                            "no iteration"))
    print("%-14s %-13s %-13s %-28s %-13s" % ("", "ms / us", "ms / us", "ms / us [us range]",
                                            "ms / us"))
    for name, conf, truth, fit, fit_noit in rows:
        print("%-14s %5.1f / %4.0f  %5.2f / %4.1f  %5.2f / %4.1f [%4.1f-%4.1f]    %5.2f / %4.1f" %
              (name, conf[0], conf[1], truth[0], truth[1], fit[0], fit[1], fit[2], fit[3],
               fit_noit[0], fit_noit[1]))


if __name__ == "__main__":
    main()

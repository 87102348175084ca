#!/usr/bin/env python3
"""bench/routing/run.py: the routing benchmark. Every tokenrelay policy and nginx
(least_conn, round robin) in front of the same four vllm-sim replicas, under the
same seeded open-loop workload (loadgen.py), in one run.

    bench/routing/run.py                      # everything: ~55 min with the defaults
    SCENARIOS=slow TARGETS="latency nginx_least_conn" DURATION=30 bench/routing/run.py
    bench/routing/run.py --report OUTDIR      # tables and plot again from a finished run

Per scenario and target: fresh replicas (4 vllm-sim, deterministic flags, pinned to
SIM_CPU), the target pinned to PROXY_CPU (1 worker), a readiness check, then
loadgen.py (pinned to SIM_CPU) for WARMUP + DURATION seconds of arrivals plus the
drain, while a monitor thread samples every replica's /metrics (and tokenrelay's
/status); then everything is stopped. Before each measured run the script waits
while wrk, bench/run.sh or another routing benchmark runs (2 cores cannot host
two benchmarks).

Load. The capacity of one replica (requests/s of a workload mix) comes from the
simulator's step model (model_capacity(): requests/s at a full batch of
max_num_seqs), for a normal and a slow replica and each mix used; arrival rate =
LOAD x the sum of the replicas' capacities. Each capacity is then checked by
measurement: one replica alone at LOAD x its capacity for CAL_SECONDS, whose mean
batch and step time (after CAL_SKIP s) must match what the model predicts for that
load, with no queue building. (Measuring capacity by overload does not work here:
a 256-request batch takes ~25 s to fill and several ~25 s request lifetimes to
mix.) CAPACITY_FILE=path reuses an earlier calibration.json.

Environment (defaults in brackets):
  DURATION [60] measured window, s     WARMUP [10] unmeasured lead-in, s
  DRAIN_MAX [120] s    LOAD [0.75]     SEED [1]     LONG_FRAC [0.05]
  SPEED [0.5] vllm-sim --speed (step 8 ms + 40 us/token before it: 16 ms real base)
  SCENARIOS ["homogeneous slow bursts uniform"]
  TARGETS ["latency least_requests power_of_two kv_aware round_robin nginx_least_conn nginx_rr"]
    (a tokenrelay target may carry extra config keys, for diagnostics:
     latency+poller.interval_ms=1000+routing.ttft_weight=2)
  PROXY_CPU [0]  SIM_CPU [1]   CAL_SECONDS [60]  CAL_SKIP [15]  CAPACITY_FILE []
  NICE [0] nice value of every process started (< 0 needs root; it keeps other
    people's compiles on these 2 CPUs from stretching the simulated steps)
  RETRIES [3]  LAG_MAX_MS [200]: a run during which another benchmark ran, or whose
    load generator lagged more than LAG_MAX_MS at p99, is measured again
  WAIT_MAX [1200] s to wait for another benchmark   OUT [bench/routing/out/YYYYmmdd-HHMMSS]
"""

import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import loadgen  # noqa: E402
import report  # noqa: E402


def env(name, default, conv=str):
    v = os.environ.get(name)
    return conv(v) if v not in (None, "") else default


DURATION = env("DURATION", 60.0, float)
WARMUP = env("WARMUP", 10.0, float)
DRAIN_MAX = env("DRAIN_MAX", 120.0, float)
LOAD = env("LOAD", 0.75, float)
SEED = env("SEED", 1, int)
LONG_FRAC = env("LONG_FRAC", 0.05, float)
SPEED = env("SPEED", 0.5, float)
SCENARIOS = env("SCENARIOS", "homogeneous slow bursts uniform").split()
TARGETS = env("TARGETS", "latency least_requests power_of_two kv_aware round_robin "
                         "nginx_least_conn nginx_rr").split()
PROXY_CPU = env("PROXY_CPU", 0, int)
SIM_CPU = env("SIM_CPU", 1, int)
CAL_SECONDS = env("CAL_SECONDS", 60.0, float)
CAL_SKIP = env("CAL_SKIP", 15.0, float)
CAPACITY_FILE = env("CAPACITY_FILE", "")
NICE = env("NICE", 0, int)
RETRIES = env("RETRIES", 3, int)
LAG_MAX_MS = env("LAG_MAX_MS", 200, int)
WAIT_MAX = env("WAIT_MAX", 1200.0, float)
BUILD = env("BUILD", os.path.join(ROOT, "build"))
OUT = os.path.abspath(env("OUT", os.path.join(HERE, "out", time.strftime("%Y%m%d-%H%M%S"))))  # nginx needs absolute paths

POLICIES = ("latency", "least_requests", "power_of_two", "kv_aware", "round_robin")
NGINX = {"nginx_least_conn": "least_conn;", "nginx_rr": ""}

# The replicas. Engine flags are vLLM V1 defaults except a context long enough
# for 15k-token documents and a KV pool (524k tokens) that max_num_seqs, not KV,
# bounds; step times are the simulator's defaults (8 ms + 40 us per token +
# 20 ns per context token) divided by SPEED. "slow" doubles base and per-token.
SIM_MAX_SEQS = 256
SIM_PER_CTX_NS = 20  # vllm-sim's default --step-per-ctx-ns (not changed)
SIM_COMMON = ["--max-model-len", "16384", "--max-num-batched-tokens", "2048",
              "--max-num-seqs", "256", "--kv-blocks", "32768"]
CREATED_BASE = 1700000000  # replica i answers with "created": CREATED_BASE + i
STEP = {"normal": ("8", "40"), "slow": ("16", "80")}

# Scenario: replica kinds, arrival mode, long-prompt fraction.
SCENARIO_DEFS = {
    "homogeneous": {"replicas": ["normal"] * 4, "mode": "poisson", "long_frac": LONG_FRAC},
    "slow": {"replicas": ["normal"] * 3 + ["slow"], "mode": "poisson", "long_frac": LONG_FRAC},
    "bursts": {"replicas": ["normal"] * 4, "mode": "bursts", "long_frac": LONG_FRAC},
    "uniform": {"replicas": ["normal"] * 4, "mode": "poisson", "long_frac": 0.0},
}


def log(msg):
    print("[routing %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


# ---- processes -------------------------------------------------------------------

_procs = []


def start(cmd, logfile, cpu, stdout_pipe=False):
    """Starts cmd pinned to <cpu> at nice NICE (taskset and nice exec, so the pid
    is cmd's own)."""
    f = open(logfile, "w")
    p = subprocess.Popen(["taskset", "-c", str(cpu), "nice", "-n", str(NICE)] +
                         [str(c) for c in cmd], stdout=f,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    f.close()
    _procs.append(p)
    return p


def stop(p, grace=5.0):
    """SIGTERM, then SIGKILL after <grace> s; reaps. Only processes this script started."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in _procs:
        _procs.remove(p)


def stop_all():
    for p in list(_procs):
        stop(p, 3.0)


def wait_log(path, pattern, proc, timeout=10.0):
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path, errors="replace") as f:
            m = rx.search(f.read())
        if m:
            return m
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    with open(path, errors="replace") as f:
        tail = f.read()[-2000:]
    raise RuntimeError("%s: no line matching %r (exit %s):\n%s" % (path, pattern, proc.poll(), tail))


def http_get(port, path, timeout=2.0):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as r:
        return r.status, r.read()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pids):
    """utime + stime of <pids> and their children that were reaped (clock ticks)."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def cpus_busy(cpus):
    """Busy jiffies (all but idle and iowait) of the given CPUs, from /proc/stat."""
    busy = 0
    with open("/proc/stat") as f:
        for line in f:
            for c in cpus:
                if line.startswith("cpu%d " % c):
                    v = [int(x) for x in line.split()[1:]]
                    busy += sum(v[:8]) - v[3] - v[4]
    return busy


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _ours(pid):
    """True when <pid> is this process or one of its descendants."""
    me = os.getpid()
    for _ in range(64):
        if pid == me:
            return True
        try:
            with open("/proc/%d/stat" % pid) as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid <= 1:
            return False
    return False


def other_benchmark():
    """What else benchmarks here: wrk, bench/run.sh, or another routing benchmark
    (bench/routing/run.py or loadgen.py not started by this process). Empty when
    nothing."""
    found = []
    for args in (["pgrep", "-x", "wrk"], ["pgrep", "-f", "bench/run.sh"],
                 ["pgrep", "-f", r"bench/routing/(run|loadgen)\.py|routing/loadgen\.py"]):
        r = subprocess.run(args, capture_output=True, text=True)
        pids = [int(p) for p in r.stdout.split() if not _ours(int(p))]
        if pids:
            what = args[-1] if args[1] != "-f" or "routing" not in args[-1] else "bench/routing"
            found.append("%s (pids %s)" % (what, " ".join(map(str, pids))))
    return ", ".join(found)


def wait_quiet():
    """Polls every 10 s, up to WAIT_MAX s, while another benchmark runs. Returns
    the seconds waited and whether it was still running at the end."""
    t0 = time.monotonic()
    busy = other_benchmark()
    if busy:
        log("waiting: %s is running" % busy)
    while busy and time.monotonic() - t0 < WAIT_MAX:
        time.sleep(10)
        busy = other_benchmark()
    waited = time.monotonic() - t0
    if busy:
        log("warning: %s still runs after %.0f s; measuring anyway (the run is marked)" %
            (busy, waited))
    elif waited > 1:
        log("the other benchmark finished; waited %.0f s" % waited)
    return waited, bool(busy)


# ---- replicas and targets ----------------------------------------------------------

class Sims:
    def __init__(self, kinds, d, binary):
        self.kinds = kinds
        self.procs, self.ports = [], []
        for i, kind in enumerate(kinds):
            base, per_tok = STEP[kind]
            # --created differs per replica: loadgen reads the first event's
            # "created" to learn which replica served a request.
            cmd = [binary, "--host", "127.0.0.1", "--port", "0", "--seed", i + 1,
                   "--created", CREATED_BASE + i,
                   "--speed", SPEED, "--step-base-ms", base, "--step-per-token-us", per_tok]
            cmd += SIM_COMMON
            path = os.path.join(d, "sim%d.log" % i)
            p = start(cmd, path, SIM_CPU)
            m = wait_log(path, r"vllm-sim listening on \S+:(\d+)", p)
            self.procs.append(p)
            self.ports.append(int(m.group(1)))

    def stats(self):
        out = []
        for port in self.ports:
            try:
                out.append(json.loads(http_get(port, "/sim/stats")[1]))
            except OSError:
                out.append(None)
        return out

    def stop(self):
        for p in self.procs:
            stop(p)


def split_target(name):
    """"latency+poller.interval_ms=1000+routing.ttft_weight=2" -> ("latency",
    {"poller": {"interval_ms": "1000"}, "routing": {"ttft_weight": "2"}}): a policy
    with extra tokenrelay config keys, for diagnostic variants."""
    policy, *extras = name.split("+")
    keys = {}
    for e in extras:
        k, _, v = e.partition("=")
        sec, _, key = k.partition(".")
        if not (sec and key and v):
            raise RuntimeError("bad target variant %r (want section.key=value)" % e)
        keys.setdefault(sec, {})[key] = v
    return policy, keys


def tokenrelay_config(name, ports):
    policy, keys = split_target(name)
    sections = {"proxy": {"listen": "127.0.0.1:0", "workers": "1", "drain_timeout_ms": "1000"},
                "admin": {"listen": "127.0.0.1:0"}, "routing": {"policy": policy}}
    for sec, kv in keys.items():
        sections.setdefault(sec, {}).update(kv)
    lines = []
    for sec, kv in sections.items():
        lines.append("[%s]" % sec)
        lines += ["%s = %s" % (k, v) for k, v in kv.items()]
        lines.append("")
    for i, port in enumerate(ports):
        lines += ["[backend r%d]" % i, "url = http://127.0.0.1:%d" % port, ""]
    return "\n".join(lines)


NGINX_CONF = """# nginx for bench/routing/run.py: 1 worker (pinned by taskset), HTTP/1.1 keep-alive
# upstream, no response buffering (SSE events relayed as they arrive), request
# bodies (up to 60 KB prompts) kept in memory.
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    client_max_body_size 8m;
    client_body_buffer_size 256k;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream sims {{
        {balance}
{servers}
        keepalive 512;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://sims;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
    }}
}}
"""


class Target:
    """A running proxy: .port, .pids() (for CPU time), .admin_port (tokenrelay)."""

    def __init__(self, name, ports, d, binary):
        self.name = name
        self.admin_port = None
        if split_target(name)[0] in POLICIES:
            cfg = os.path.join(d, "tokenrelay.ini")
            with open(cfg, "w") as f:
                f.write(tokenrelay_config(name, ports))
            path = os.path.join(d, "tokenrelay.log")
            self.proc = start([binary, "--config", cfg], path, PROXY_CPU)
            m = wait_log(path, r"listening on \S+:(\d+) .* admin on [^ ,]+:(\d+)", self.proc)
            self.port, self.admin_port = int(m.group(1)), int(m.group(2))
            # Ready when every replica has been scraped.
            deadline = time.monotonic() + 10
            while True:
                try:
                    st = json.loads(http_get(self.admin_port, "/status")[1])
                    if all(r["up"] and r["scrape"]["scrapes_ok"] > 0 for r in st["replicas"]):
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("tokenrelay: replicas not scraped in 10 s")
                time.sleep(0.05)
        elif name in NGINX:
            os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
            for attempt in range(5):
                port = free_port()
                servers = "\n".join("        server 127.0.0.1:%d;" % p for p in ports)
                cfg = os.path.join(d, "nginx.conf")
                with open(cfg, "w") as f:
                    f.write(NGINX_CONF.format(dir=d, balance=NGINX[name], servers=servers,
                                              port=port))
                self.proc = start(["nginx", "-p", d + "/", "-e", os.path.join(d, "error.log"),
                                   "-c", cfg, "-g", "daemon off;"],
                                  os.path.join(d, "nginx.out"), PROXY_CPU)
                if self._wait_health(port):
                    self.port = port
                    break
                stop(self.proc)
            else:
                raise RuntimeError("nginx did not start; see %s" % d)
        else:
            raise RuntimeError("unknown target %r (%s)" % (name, " ".join(POLICIES + tuple(NGINX))))
        if not self._wait_health(self.port):
            raise RuntimeError("%s does not answer GET /health" % name)

    def _wait_health(self, port, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if http_get(port, "/health", 1.0)[0] == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def pids(self):
        return [self.proc.pid] + children(self.proc.pid)

    def stop(self):
        stop(self.proc)


# ---- monitoring ---------------------------------------------------------------------

SIM_GAUGES = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
              "vllm:kv_cache_usage_perc": "kv", "vllm:generation_tokens_total": "gen",
              "vllm:prompt_tokens_total": "prompt", "vllm:num_preemptions_total": "preempt",
              "vllm:inter_token_latency_seconds_sum": "itl_sum",
              "vllm:inter_token_latency_seconds_count": "itl_count"}


def sim_metrics(port):
    """The SIM_GAUGES of one replica (summed over engines)."""
    _, body = http_get(port, "/metrics")
    out = {v: 0.0 for v in SIM_GAUGES.values()}
    for line in body.decode().splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        key = SIM_GAUGES.get(name)
        if key:
            out[key] += float(line.rsplit(" ", 1)[1])
    return out


class Monitor(threading.Thread):
    """Samples each replica's /metrics every <every> s (and tokenrelay's /status
    every 2 s) into <path> (JSON lines); every 5 s, looks for another benchmark
    (wrk, bench/run.sh) that started meanwhile."""

    def __init__(self, path, ports, admin_port=None, every=1.0):
        super().__init__(daemon=True)
        self.path, self.ports, self.admin_port, self.every = path, ports, admin_port, every
        self.halt = threading.Event()
        self.samples = []
        self.intruders = set()  # other benchmarks seen while this ran

    def run(self):
        t0 = time.monotonic()
        n = 0
        with open(self.path, "w") as f:
            while not self.halt.is_set():
                s = {"t": round(time.monotonic() - t0, 3), "sims": []}
                for port in self.ports:
                    try:
                        s["sims"].append(sim_metrics(port))
                    except OSError:
                        s["sims"].append(None)
                if self.admin_port and n % 2 == 0:
                    try:
                        s["status"] = json.loads(http_get(self.admin_port, "/status")[1])
                    except (OSError, ValueError):
                        pass
                if n % 5 == 0:
                    busy = other_benchmark()
                    if busy:
                        self.intruders.add(busy)
                        s["other_benchmark"] = busy
                self.samples.append(s)
                f.write(json.dumps(s, separators=(",", ":")) + "\n")
                n += 1
                self.halt.wait(max(0.0, t0 + n * self.every - time.monotonic()))

    def stop(self):
        self.halt.set()
        self.join()


def replica_summary(samples, t_from, t_to):
    """Per replica: mean running and waiting, max waiting, preemptions, tokens,
    over the samples in [t_from, t_to]."""
    win = [s for s in samples if t_from <= s["t"] <= t_to and all(x for x in s["sims"])]
    if len(win) < 2:
        return []
    out = []
    for i in range(len(win[0]["sims"])):
        xs = [s["sims"][i] for s in win]
        out.append({"running_mean": sum(x["running"] for x in xs) / len(xs),
                    "waiting_mean": sum(x["waiting"] for x in xs) / len(xs),
                    "waiting_max": max(x["waiting"] for x in xs),
                    "kv_max": max(x["kv"] for x in xs),
                    "preemptions": xs[-1]["preempt"] - xs[0]["preempt"],
                    "gen_tokens": xs[-1]["gen"] - xs[0]["gen"],
                    "prompt_tokens": xs[-1]["prompt"] - xs[0]["prompt"]})
    return out


# ---- load generator ------------------------------------------------------------------

def run_loadgen(port, rate, mode, long_frac, d, warmup, duration, drain_max):
    args = [sys.executable, os.path.join(HERE, "loadgen.py"), "--port", port, "--rate",
            "%.4f" % rate, "--mode", mode, "--long-frac", long_frac, "--seed", SEED,
            "--warmup", warmup, "--duration", duration, "--drain-max", drain_max,
            "--out", os.path.join(d, "requests.jsonl"), "--summary", os.path.join(d, "summary.json")]
    p = start(args, os.path.join(d, "loadgen.log"), SIM_CPU)
    rc = p.wait()
    _procs.remove(p)
    if rc != 0:
        with open(os.path.join(d, "loadgen.log")) as f:
            raise RuntimeError("loadgen failed (%d):\n%s" % (rc, f.read()[-3000:]))
    # The per-request records (token times included) are large: keep them gzipped.
    raw = os.path.join(d, "requests.jsonl")
    with open(raw, "rb") as src, gzip.open(raw + ".gz", "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst)
    os.unlink(raw)
    with open(os.path.join(d, "summary.json")) as f:
        return json.load(f)


# ---- capacity -----------------------------------------------------------------------------

def workload_means(long_frac):
    a = loadgen.parse_args(["--port", "1", "--rate", "1", "--long-frac", str(long_frac),
                            "--seed", str(SEED)])
    return loadgen.describe(a, 100000)


def step_params(kind):
    """(base s, per-token s, per-context-token s) of a <kind> replica, in real time."""
    base_ms, per_tok_us = (float(v) for v in STEP[kind])
    return base_ms / 1e3 / SPEED, per_tok_us / 1e6 / SPEED, SIM_PER_CTX_NS / 1e9 / SPEED


def model_capacity(kind, means):
    """Requests/s of one replica at a full batch (S = max_num_seqs) from the
    simulator's step model, step = base + per_token * tokens + per_ctx * context.
    Per second, with k steps and arrival rate r:
        1 = k * base + r * (per_token * (P + O - 1) + per_ctx * E[O (P + O/2)])
    (every prompt token and every output token but the first is one token of some
    step; a request is in O steps with a mean context of P + O/2), and the batch is
    D = r * O / k <= S. Capacity is r at D = S, k = r * O / S."""
    base, per_tok, per_ctx = step_params(kind)
    p, o = means["prompt_mean"], means["output_mean"]
    return 1.0 / (o * base / SIM_MAX_SEQS + per_tok * (p + o - 1) + per_ctx * means["ctx_steps_mean"])


def model_operating_point(kind, means, rate):
    """(steps/s, mean batch) the model predicts at <rate> req/s (no queue)."""
    base, per_tok, per_ctx = step_params(kind)
    p, o = means["prompt_mean"], means["output_mean"]
    busy = rate * (per_tok * (p + o - 1) + per_ctx * means["ctx_steps_mean"])
    k = (1 - busy) / base
    return k, rate * o / k


def calibrate(binary, kind, long_frac, d):
    """Capacity (req/s) of one <kind> replica for the mix with <long_frac>, from
    the step model; then checked: one replica alone at LOAD x capacity for
    CAL_SECONDS, its mean batch, step time and queue over [CAL_SKIP, CAL_SECONDS]
    compared with the model's prediction for that load."""
    os.makedirs(d, exist_ok=True)
    means = workload_means(long_frac)
    cap = model_capacity(kind, means)
    rate = LOAD * cap
    k_pred, d_pred = model_operating_point(kind, means, rate)
    wait_quiet()
    sims = Sims([kind], d, binary)
    mon = Monitor(os.path.join(d, "monitor.jsonl"), sims.ports, every=1.0)
    mon.start()
    try:
        summ = run_loadgen(sims.ports[0], rate, "poisson", long_frac, d, CAL_SKIP,
                           CAL_SECONDS - CAL_SKIP, 0)
    finally:
        mon.stop()
        sims.stop()
    win = [s for s in mon.samples if CAL_SKIP <= s["t"] <= CAL_SECONDS and s["sims"][0]]
    if len(win) < 2:
        raise RuntimeError("calibration: too few samples in %s" % d)
    a, b = win[0]["sims"][0], win[-1]["sims"][0]
    itl_n = b["itl_count"] - a["itl_count"]
    step_ms = 1e3 * (b["itl_sum"] - a["itl_sum"]) / itl_n if itl_n > 0 else None
    res = {"kind": kind, "long_frac": long_frac, "capacity_rps": cap, "check_rate_rps": rate,
           "predicted_batch": d_pred, "predicted_step_ms": 1e3 / k_pred,
           "measured_batch": sum(s["sims"][0]["running"] for s in win) / len(win),
           "measured_waiting": sum(s["sims"][0]["waiting"] for s in win) / len(win),
           "measured_waiting_max": max(s["sims"][0]["waiting"] for s in win),
           "measured_step_ms": step_ms, "preemptions": b["preempt"] - a["preempt"],
           "short_ttft_p50_ms": summ["ttft_short"]["p50"], "window_s": [win[0]["t"], win[-1]["t"]],
           "means": means}
    log("capacity %s replica, long_frac %g: %.2f req/s (step model); check at %.2f req/s: "
        "batch %.0f (model %.0f), mean inter-token step %.1f ms (model %.1f), waiting %.1f "
        "(max %.0f)" % (kind, long_frac, cap, rate, res["measured_batch"], d_pred,
                        step_ms or -1, 1e3 / k_pred, res["measured_waiting"],
                        res["measured_waiting_max"]))
    return res


# ---- one measured run -------------------------------------------------------------------

def measure(scen, target, rate, bins, d):
    """One scenario/target measurement, repeated (up to RETRIES more times) when
    it was disturbed: another benchmark ran during it, or the load generator
    lagged (p99 > LAG_MAX_MS: it did not get its CPU). A disturbed attempt is
    kept as <d>.disturbed-N for reference."""
    for attempt in range(RETRIES + 1):
        summ = measure_once(scen, target, rate, bins, d)
        r = summ["run"]
        why = []
        if r["intruders"]:
            why.append("%s ran during it" % "; ".join(r["intruders"]))
        if (summ["lag_ms"]["p99"] or 0) > LAG_MAX_MS:
            why.append("loadgen lag p99 %.0f ms > %d ms" % (summ["lag_ms"]["p99"], LAG_MAX_MS))
        r["attempt"] = attempt + 1
        r["disturbed"] = why
        with open(os.path.join(d, "summary.json"), "w") as f:
            json.dump(summ, f, indent=1)
        if not why:
            return summ
        if attempt < RETRIES:
            log("%s/%s disturbed (%s): measuring again" % (scen, target, ", ".join(why)))
            keep = "%s.disturbed-%d" % (d, attempt + 1)
            shutil.rmtree(keep, ignore_errors=True)
            os.rename(d, keep)
        else:
            log("warning: %s/%s still disturbed after %d attempts (%s); kept, marked" %
                (scen, target, attempt + 1, ", ".join(why)))
    return summ


def measure_once(scen, target, rate, bins, d):
    sd = SCENARIO_DEFS[scen]
    os.makedirs(d, exist_ok=True)
    waited, contended = wait_quiet()
    la0 = loadavg()
    sims = Sims(sd["replicas"], d, bins["vllm-sim"])
    tgt = None
    mon = None
    try:
        tgt = Target(target, sims.ports, d, bins["tokenrelay"])
        mon = Monitor(os.path.join(d, "monitor.jsonl"), sims.ports, tgt.admin_port)
        p0 = cpu_ticks(tgt.pids())
        s0 = cpu_ticks([p.pid for p in sims.procs])
        b0 = cpus_busy([PROXY_CPU, SIM_CPU])
        t0 = time.monotonic()
        mon.start()
        summ = run_loadgen(tgt.port, rate, sd["mode"], sd["long_frac"], d, WARMUP, DURATION,
                           DRAIN_MAX)
        wall = time.monotonic() - t0
        p1 = cpu_ticks(tgt.pids())
        s1 = cpu_ticks([p.pid for p in sims.procs])
        b1 = cpus_busy([PROXY_CPU, SIM_CPU])
        mon.stop()
        if tgt.admin_port:
            try:
                with open(os.path.join(d, "tokenrelay-metrics.txt"), "wb") as f:
                    f.write(http_get(tgt.admin_port, "/metrics")[1])
                with open(os.path.join(d, "tokenrelay-status-end.json"), "wb") as f:
                    f.write(http_get(tgt.admin_port, "/status")[1])
            except OSError as e:
                log("warning: cannot read tokenrelay admin: %s" % e)
        stats = sims.stats()
        alive = tgt.proc.poll() is None
    finally:
        if mon is not None and mon.is_alive():
            mon.stop()
        if tgt is not None:
            tgt.stop()
        sims.stop()
    hz = os.sysconf("SC_CLK_TCK")
    lg = summ["loadgen"]
    proxy_cpu = (p1 - p0) / hz
    sims_cpu = (s1 - s0) / hz
    other = max(0.0, (b1 - b0) / hz - proxy_cpu - sims_cpu - lg["cpu_s"]) / wall * 100
    summ["run"] = {
        "scenario": scen, "target": target, "rate": rate, "wall_s": round(wall, 1),
        "load_before": la0, "load_after": loadavg(), "waited_s": round(waited),
        "contended": contended, "target_alive": alive, "intruders": sorted(mon.intruders),
        "replica_kinds": sd["replicas"],
        "proxy_cpu_pct": round(100 * proxy_cpu / wall, 1),
        "sims_cpu_pct": round(100 * sims_cpu / wall, 1),
        "other_cpu_pct": round(other, 1),
        "requests_per_replica": [s["requests_received"] if s else None for s in stats],
        "replicas": replica_summary(mon.samples, WARMUP, WARMUP + DURATION),
    }
    with open(os.path.join(d, "summary.json"), "w") as f:
        json.dump(summ, f, indent=1)
    r = summ
    log("%s/%s: %d/%d ok; short TTFT p50 %.0f p99 %.0f ms; long TTFT p99 %.0f ms; TPOT %.1f ms; "
        "e2e mean %.0f ms; per replica %s; proxy CPU %.0f%%, loadgen %.0f%%, lag p99 %.1f ms; "
        "load %s" % (scen, target, r["completed"], r["measured"],
                     r["ttft_short"]["p50"] or -1, r["ttft_short"]["p99"] or -1,
                     r["ttft_long"]["p99"] or -1, r["tpot_mean"] or -1, r["e2e_mean"] or -1,
                     summ["run"]["requests_per_replica"], summ["run"]["proxy_cpu_pct"],
                     lg["cpu_pct"], r["lag_ms"]["p99"] or -1, summ["run"]["load_after"]))
    if not alive:
        log("warning: %s exited during the run; see %s" % (target, d))
    return summ


# ---- main -------------------------------------------------------------------------------

def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return "nproc=%d, %s, kernel %s" % (os.cpu_count(), model, os.uname().release)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        print(report.render(sys.argv[2]))
        return 0
    if len(sys.argv) > 1:
        print(__doc__, file=sys.stderr)
        return 2
    for s in SCENARIOS:
        if s not in SCENARIO_DEFS:
            log("unknown scenario %r (%s)" % (s, " ".join(SCENARIO_DEFS)))
            return 2
    for t in TARGETS:
        if split_target(t)[0] not in POLICIES and t not in NGINX:
            log("unknown target %r" % t)
            return 2
    os.sched_setaffinity(0, {SIM_CPU})  # this driver and its monitor stay off the proxy CPU
    os.makedirs(os.path.join(OUT, "bin"), exist_ok=True)
    # Snapshot the binaries: others may rebuild build/ while this runs.
    bins = {}
    for name in ("tokenrelay", "vllm-sim"):
        src = os.path.join(BUILD, name)
        if not os.access(src, os.X_OK):
            log("%s not found (ninja -C build)" % src)
            return 2
        dst = os.path.join(OUT, "bin", name)
        shutil.copy(os.path.realpath(src), dst)
        bins[name] = dst
    latest = os.path.join(HERE, "out", "latest")
    try:
        if os.path.islink(latest):
            os.unlink(latest)
        os.symlink(os.path.basename(OUT), latest)
    except OSError:
        pass
    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    tr_v = subprocess.run([bins["tokenrelay"], "--version"], capture_output=True,
                          text=True).stdout.strip()
    git = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    src_dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True).stdout.strip()
    header = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
        "commit": git + (" (+uncommitted changes in src/)" if src_dirty else ""),
        "versions": "%s, %s, vllm-sim (tools/vllm-sim)" % (tr_v, nginx_v),
        "command": "DURATION=%g WARMUP=%g DRAIN_MAX=%g LOAD=%g SEED=%d LONG_FRAC=%g SPEED=%g "
                   "SCENARIOS=\"%s\" TARGETS=\"%s\" PROXY_CPU=%d SIM_CPU=%d NICE=%d bench/routing/run.py"
                   % (DURATION, WARMUP, DRAIN_MAX, LOAD, SEED, LONG_FRAC, SPEED,
                      " ".join(SCENARIOS), " ".join(TARGETS), PROXY_CPU, SIM_CPU, NICE),
        "sim_flags": " ".join(SIM_COMMON + ["--speed", str(SPEED)]) +
                     "; normal: --step-base-ms 8 --step-per-token-us 40; "
                     "slow: --step-base-ms 16 --step-per-token-us 80",
        "pinning": "proxy (tokenrelay 1 worker / nginx 1 worker) on CPU %d; 4 vllm-sim, "
                   "loadgen and this driver on CPU %d" % (PROXY_CPU, SIM_CPU),
        "load_before": loadavg(), "out": OUT,
        "settings": {"duration": DURATION, "warmup": WARMUP, "drain_max": DRAIN_MAX,
                     "load": LOAD, "seed": SEED, "nice": NICE, "retries": RETRIES,
                     "lag_max_ms": LAG_MAX_MS, "long_frac": LONG_FRAC, "speed": SPEED,
                     "scenarios": SCENARIOS, "targets": TARGETS},
    }
    with open(os.path.join(OUT, "header.json"), "w") as f:
        json.dump(header, f, indent=1)
    for k in ("date", "machine", "commit", "versions", "command", "pinning", "load_before"):
        log("%-12s %s" % (k + ":", header[k]))
    t_start = time.monotonic()

    # Capacity per (replica kind, long fraction) that the scenarios need.
    need = set()
    for s in SCENARIOS:
        sd = SCENARIO_DEFS[s]
        for kind in sd["replicas"]:
            need.add((kind, sd["long_frac"]))
    cal = {}
    if CAPACITY_FILE:
        with open(CAPACITY_FILE) as f:
            cal = json.load(f)
    for kind, lf in sorted(need):
        key = "%s@%g" % (kind, lf)
        if key not in cal:
            cal[key] = calibrate(bins["vllm-sim"], kind, lf,
                                 os.path.join(OUT, "calibration", key))
    with open(os.path.join(OUT, "calibration.json"), "w") as f:
        json.dump(cal, f, indent=1)

    for scen in SCENARIOS:
        sd = SCENARIO_DEFS[scen]
        cap = sum(cal["%s@%g" % (k, sd["long_frac"])]["capacity_rps"] for k in sd["replicas"])
        rate = LOAD * cap
        log("scenario %s: cluster capacity %.2f req/s, arrival rate %.2f req/s (%.0f%%)" %
            (scen, cap, rate, 100 * LOAD))
        for target in TARGETS:
            measure(scen, target, rate, bins, os.path.join(OUT, "run", scen, target))

    with open(os.path.join(OUT, "header.json")) as f:
        header = json.load(f)
    header["load_after"] = loadavg()
    header["total_s"] = round(time.monotonic() - t_start)
    with open(os.path.join(OUT, "header.json"), "w") as f:
        json.dump(header, f, indent=1)
    text = report.render(OUT)
    with open(os.path.join(OUT, "report.md"), "w") as f:
        f.write(text)
    print(text)
    if set(SCENARIOS) == set(SCENARIO_DEFS) and set(TARGETS) == set(POLICIES) | set(NGINX):
        # A complete run: its plot is the one bench/RESULTS.md shows.
        shutil.copy(os.path.join(OUT, "ttft_short_p99.svg"), os.path.join(HERE, "ttft_short_p99.svg"))
    log("done in %.0f min: %s (report.md, ttft_short_p99.svg)" % (header["total_s"] / 60, OUT))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        stop_all()

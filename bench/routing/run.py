#!/usr/bin/env python3
"""bench/routing/run.py: the routing benchmark of natural workloads (issue 8).
tokenrelay's `latency` policy and nginx least_conn (and, on request, the other
policies and nginx round robin) in front of the same fresh vllm-sim replicas,
under the same seeded open-loop workload (loadgen.py), in one run.

The full held-out run (what bench/RESULTS.md reports; ~6 h on the 2-core machine:
90 measurements of ~3.5-4 min each, most of it the drain of the longest natural
outputs, plus one capacity check per replica kind):

    ninja -C build-bench tokenrelay tools/vllm-sim/vllm-sim
    SEEDS="11 12 13" LOADS="0.5 0.75 0.9" bench/routing/run.py
    bench/routing/run.py --report bench/routing/out/latest   # tables and goals again

Tuning uses seeds 1-10 only (SEEDS="1 2 3", ...); seeds 11-20 are held out and
are the only ones reported. A smoke test: DURATION=15 WARMUP=5 DRAIN_MAX=40
SEEDS=11 LOADS=0.75 CAL_SECONDS=0 SCENARIOS=slow bench/routing/run.py (~2 min).

Scenarios (every replica: --max-model-len 16384 --max-num-batched-tokens 2048
--max-num-seqs 256 --tokenizer mixed --output-len-mean 300 --output-len-sigma 0.9
--default-max-tokens 16384 --seed SEED --speed 0.5; normal: --step-base-ms 8
--step-per-token-us 40, slow: 16 and 80; --kv-blocks 32768 unless said):
  homogeneous   4 normal replicas
  homogeneous8  8 normal replicas at --speed SPEED8 (0.25): half as fast each, so
                the cluster's token rate (and loadgen's work) is that of 4; one
                core cannot host 8 replicas, a proxy and loadgen at 0.5
  slow          3 normal + 1 slow
  kvpressure    4 normal replicas, KV_LONG_FRAC (10%) long documents and
                --kv-blocks from kv_blocks_fit(): the mean KV held at 75% load is
                KV_FIT (90%) of the pool, so long contexts do not all fit;
                preemptions = vllm:num_preemptions_total deltas of the replicas
  multimodel    r0, r1: --model sim-a --lora-modules sim-a-lora=/adapters/sim-a-lora;
                r2, r3: --model sim-b; requests name sim-a 35%, sim-a-lora 15%,
                sim-b 50% (each pool gets half the work) and 1% an unknown model;
                tokenrelay discovers the pools from /v1/models; nginx has no model
                awareness, so it sends about half the requests to a replica that
                answers 404 (counted)
  bursts, uniform  the earlier scenarios, still available
Workload (loadgen.py): Poisson arrivals; prompts of English prose 60%, source code
25%, CJK 15% (about 4.2 / 2.7 / 1.5 characters per token under the mixed
tokenizer), log-normal lengths (median 215 tokens) plus LONG_FRAC (5%) documents
of 5k-15k tokens; natural outputs (the replica ends each at its prompt's
log-normal length, mean 300 tokens, sigma 0.9: median ~200, a chat/ShareGPT-like
spread), max_tokens 1024 on half the requests and absent on the other half; 30%
non-streaming requests, the rest streamed with include_usage.

Per seed, scenario, load and target: fresh replicas (deterministic flags, pinned
to SIM_CPU), the target pinned to PROXY_CPU (1 worker), a readiness check (for
tokenrelay: every replica scraped and every model's pool known), then loadgen.py
(pinned to SIM_CPU) for WARMUP + DURATION seconds of arrivals plus the drain,
while a monitor thread samples every replica's /metrics (and tokenrelay's
/status); then everything is stopped. Before each measured run the script waits
while wrk, bench/run.sh or another routing benchmark runs.

Load. The capacity of one replica (requests/s of the scenario's mix) comes from
the simulator's step model (model_capacity(): requests/s at a full batch of
max_num_seqs) with the workload's means (tuning seed CAL_SEED, so every seed
gets the same rates); arrival rate = load x the sum of the replicas' capacities.
With CAL_SECONDS > 0 each capacity is checked by measurement: one replica alone
at CAL_LOAD x its capacity, whose mean batch and step time after CAL_SKIP s must
match the model. CAPACITY_FILE=path reuses an earlier calibration.json.

Environment (defaults in brackets):
  DURATION [60] measured window, s     WARMUP [10] unmeasured lead-in, s
  DRAIN_MAX [240] s (natural outputs without max_tokens can run to thousands of tokens)
  LOADS ["0.5 0.75 0.9"]   SEEDS ["11 12 13"] (held out; tune on 1-10)
  LONG_FRAC [0.05]  KV_LONG_FRAC [0.10]  KV_FIT [0.9]  OUTPUT_MEAN [300]  OUTPUT_SIGMA [0.9]
  SPEED [0.5] vllm-sim --speed   SPEED8 [SPEED/2] for homogeneous8
  SCENARIOS ["homogeneous homogeneous8 slow kvpressure multimodel"] (also: bursts uniform)
  TARGETS ["latency nginx_least_conn"]
    (also least_requests power_of_two kv_aware round_robin nginx_rr; a tokenrelay
     target may carry extra config keys, for diagnostics:
     latency+poller.interval_ms=1000+routing.ttft_weight=2)
  BUILD [build-bench] where tokenrelay and tools/vllm-sim/vllm-sim are (copied at start)
  PROXY_CPU [0]  SIM_CPU [1]   CAL_SECONDS [60] (0: step model only)  CAL_SKIP [15]
  CAL_SEED [1]  CAL_LOAD [0.75]  CAPACITY_FILE []
  NICE [0] nice value of every process started (< 0 needs root)
  RETRIES [3]  LAG_MAX_MS [200]: a run during which another benchmark ran, or whose
    load generator lagged more than LAG_MAX_MS at p99, is measured again
  WAIT_MAX [1200] s to wait for another benchmark   OUT [bench/routing/out/YYYYmmdd-HHMMSS]
Output: OUT/run/<scenario>/<load>/<seed>/<target>/ (summary.json, requests.jsonl.gz,
monitor.jsonl, logs), OUT/report.md (report.py: medians, spreads, ratios, goals).
"""

import gzip
import json
import math
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
DRAIN_MAX = env("DRAIN_MAX", 240.0, float)
LOADS = [float(x) for x in env("LOADS", "0.5 0.75 0.9").replace(",", " ").split()]
SEEDS = [int(x) for x in env("SEEDS", "11 12 13").replace(",", " ").split()]
CAL_SEED = env("CAL_SEED", 1, int)
CAL_LOAD = env("CAL_LOAD", 0.75, float)
LONG_FRAC = env("LONG_FRAC", 0.05, float)
KV_LONG_FRAC = env("KV_LONG_FRAC", 0.10, float)
KV_FIT = env("KV_FIT", 0.9, float)
SPEED = env("SPEED", 0.5, float)
SPEED8 = env("SPEED8", SPEED / 2, float)
OUTPUT_MEAN = env("OUTPUT_MEAN", 300, int)
OUTPUT_SIGMA = env("OUTPUT_SIGMA", 0.9, float)
SCENARIOS = env("SCENARIOS", "homogeneous homogeneous8 slow kvpressure multimodel").split()
TARGETS = env("TARGETS", "latency nginx_least_conn").split()
# The workload point being measured (main() sets them per run).
CUR = {"seed": SEEDS[0], "load": LOADS[0]}
PROXY_CPU = env("PROXY_CPU", 0, int)
SIM_CPU = env("SIM_CPU", 1, int)
CAL_SECONDS = env("CAL_SECONDS", 60.0, float)
CAL_SKIP = env("CAL_SKIP", 15.0, float)
CAPACITY_FILE = env("CAPACITY_FILE", "")
NICE = env("NICE", 0, int)
RETRIES = env("RETRIES", 3, int)
LAG_MAX_MS = env("LAG_MAX_MS", 200, int)
WAIT_MAX = env("WAIT_MAX", 1200.0, float)
BUILD = env("BUILD", os.path.join(ROOT, "build-bench"))
OUT = os.path.abspath(env("OUT", os.path.join(HERE, "out", time.strftime("%Y%m%d-%H%M%S"))))  # nginx needs absolute paths

POLICIES = ("latency", "least_requests", "power_of_two", "kv_aware", "round_robin")
NGINX = {"nginx_least_conn": "least_conn;", "nginx_rr": ""}

# The replicas. Engine flags are vLLM V1 defaults except a context long enough
# for 15k-token documents and a KV pool (524k tokens) that max_num_seqs, not KV,
# bounds; step times are the simulator's defaults (8 ms + 40 us per token +
# 20 ns per context token) divided by SPEED. "slow" doubles base and per-token.
SIM_MAX_SEQS = 256
SIM_PER_CTX_NS = 20  # vllm-sim's default --step-per-ctx-ns (not changed)
SIM_BLOCK = 16       # vllm-sim's default --block-size (not changed)
SIM_KV_BLOCKS = 32768
SIM_CONTEXT = 16384
# Natural outputs: the replica ends each request at its prompt's log-normal
# length (mean OUTPUT_MEAN, sigma OUTPUT_SIGMA: median ~200, p99 ~2k tokens, a
# chat/ShareGPT-like spread); a request without max_tokens may run to the end of
# the context, as vLLM allows (--default-max-tokens >= the context). The mixed
# tokenizer makes characters per token depend on the text.
SIM_COMMON = ["--max-model-len", str(SIM_CONTEXT), "--max-num-batched-tokens", "2048",
              "--max-num-seqs", str(SIM_MAX_SEQS), "--tokenizer", "mixed",
              "--output-len-mean", str(OUTPUT_MEAN), "--output-len-sigma", str(OUTPUT_SIGMA),
              "--default-max-tokens", str(SIM_CONTEXT)]
CREATED_BASE = 1700000000  # replica i answers with "created": CREATED_BASE + i
STEP = {"normal": ("8", "40"), "slow": ("16", "80")}

# The multi-model fleet: r0, r1 serve sim-a and its adapter sim-a-lora, r2, r3
# serve sim-b; requests name the three (half the work per pool) and 1% name a
# model nobody serves.
MM_A = ["--model", "sim-a", "--lora-modules", "sim-a-lora=/adapters/sim-a-lora"]
MM_B = ["--model", "sim-b"]
MM_SERVED = {"sim-a": "sim-a", "sim-a-lora": "sim-a", "sim-b": "sim-b"}
MM_WORKLOAD = ["--models", "sim-a:0.35,sim-a-lora:0.15,sim-b:0.5", "--unknown-frac", "0.01"]

# Scenario: replica kinds, per-replica extra sim flags (and the names each
# serves), arrival mode, long-prompt fraction, simulator speed, extra loadgen
# flags, KV blocks per replica (None: SIM_KV_BLOCKS; "fit": sized by kv_blocks_fit()).
SCENARIO_DEFS = {
    "homogeneous": {"replicas": ["normal"] * 4, "long_frac": LONG_FRAC},
    "homogeneous8": {"replicas": ["normal"] * 8, "long_frac": LONG_FRAC, "speed": SPEED8},
    "slow": {"replicas": ["normal"] * 3 + ["slow"], "long_frac": LONG_FRAC},
    "kvpressure": {"replicas": ["normal"] * 4, "long_frac": KV_LONG_FRAC, "kv_blocks": "fit"},
    "multimodel": {"replicas": ["normal"] * 4, "long_frac": LONG_FRAC,
                   "sim_extra": [MM_A, MM_A, MM_B, MM_B],
                   "served": [["sim-a", "sim-a-lora"]] * 2 + [["sim-b"]] * 2,
                   "workload": MM_WORKLOAD},
    # The earlier scenarios, still available.
    "bursts": {"replicas": ["normal"] * 4, "long_frac": LONG_FRAC, "mode": "bursts"},
    "uniform": {"replicas": ["normal"] * 4, "long_frac": 0.0},
}
for _sd in SCENARIO_DEFS.values():
    _sd.setdefault("mode", "poisson")
    _sd.setdefault("speed", SPEED)
    _sd.setdefault("workload", [])
    _sd.setdefault("kv_blocks", None)
    _sd.setdefault("sim_extra", [[] for _ in _sd["replicas"]])
    _sd.setdefault("served", [["sim-model"] for _ in _sd["replicas"]])


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


def _parent(pid):
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _ancestors():
    """This process's ancestors (a wrapper such as `timeout run.py` matches the
    pattern other_benchmark() looks for, but is not another benchmark)."""
    out, pid = set(), os.getpid()
    for _ in range(64):
        try:
            pid = _parent(pid)
        except (OSError, ValueError, IndexError):
            break
        if pid <= 1:
            break
        out.add(pid)
    return out


def _ours(pid):
    """True when <pid> is this process, one of its descendants or ancestors."""
    me = os.getpid()
    if pid in _ancestors():
        return True
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

def sim_flags(sd, i, kv_blocks):
    """vllm-sim flags of replica i of scenario <sd> (no host, port, created)."""
    base, per_tok = STEP[sd["replicas"][i]]
    # One --seed for every replica (the benchmark seed): a prompt's natural
    # output length then does not depend on where it is routed.
    return (["--seed", str(CUR["seed"]), "--speed", str(sd["speed"]), "--step-base-ms", base,
             "--step-per-token-us", per_tok, "--kv-blocks", str(kv_blocks)] + SIM_COMMON +
            [str(x) for x in sd["sim_extra"][i]])


class Sims:
    def __init__(self, sd, d, binary, kv_blocks):
        self.kinds = sd["replicas"]
        self.procs, self.ports, self.flags = [], [], []
        for i, kind in enumerate(self.kinds):
            # --created differs per replica: loadgen reads the answer's
            # "created" to learn which replica served a request.
            flags = sim_flags(sd, i, kv_blocks)
            self.flags.append(" ".join(flags))
            cmd = [binary, "--host", "127.0.0.1", "--port", "0",
                   "--created", CREATED_BASE + i] + flags
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

    def __init__(self, name, ports, d, binary, served=None):
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
            # Ready when every replica has been scraped and, with several
            # models, every served name has its pool (discovered from /v1/models).
            names = sorted({m for ms in served or [] for m in ms})
            deadline = time.monotonic() + 15
            while True:
                try:
                    st = json.loads(http_get(self.admin_port, "/status")[1])
                    pools = {m["id"]: len(m["replicas"]) for m in st.get("models", [])}
                    if (all(r["up"] and r["scrape"]["scrapes_ok"] > 0 for r in st["replicas"]) and
                            (len(names) <= 1 or all(pools.get(n) for n in names))):
                        break
                except (OSError, ValueError, KeyError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("tokenrelay: replicas not scraped (or models not "
                                       "discovered) in 15 s")
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


def preemptions(samples, t_from):
    """Preemptions at the replicas from the first sample at or after <t_from>
    (the measured window's start) to the last one (the end of the drain)."""
    win = [s for s in samples if s["t"] >= t_from and all(x for x in s["sims"])]
    if len(win) < 2:
        return None
    return sum(b["preempt"] - a["preempt"] for a, b in zip(win[0]["sims"], win[-1]["sims"]))


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

def loadgen_shape(sd):
    """The loadgen flags that shape scenario <sd>'s workload (not rate or seed)."""
    return ["--mode", sd["mode"], "--long-frac", str(sd["long_frac"]),
            "--output-mean", str(OUTPUT_MEAN), "--output-sigma", str(OUTPUT_SIGMA),
            "--context", str(SIM_CONTEXT)] + list(sd["workload"])


def run_loadgen(port, rate, sd, d, warmup, duration, drain_max, seed):
    args = [sys.executable, os.path.join(HERE, "loadgen.py"), "--port", port, "--rate",
            "%.4f" % rate, "--seed", seed] + loadgen_shape(sd) + [
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

def workload_means(sd):
    """The workload's length means (tuning seed CAL_SEED: the same rates for every seed)."""
    a = loadgen.parse_args(["--port", "1", "--rate", "1", "--seed", str(CAL_SEED)] +
                           loadgen_shape(sd))
    return loadgen.describe(a, 100000)


def step_params(kind, speed=SPEED):
    """(base s, per-token s, per-context-token s) of a <kind> replica, in real time."""
    base_ms, per_tok_us = (float(v) for v in STEP[kind])
    return base_ms / 1e3 / speed, per_tok_us / 1e6 / speed, SIM_PER_CTX_NS / 1e9 / speed


def model_capacity(kind, means, speed=SPEED):
    """Requests/s of one replica at a full batch (S = max_num_seqs) from the
    simulator's step model, step = base + per_token * tokens + per_ctx * context.
    Per second, with k steps and arrival rate r:
        1 = k * base + r * (per_token * (P + O - 1) + per_ctx * E[O (P + O/2)])
    (every prompt token and every output token but the first is one token of some
    step; a request is in O steps with a mean context of P + O/2), and the batch is
    D = r * O / k <= S. Capacity is r at D = S, k = r * O / S."""
    base, per_tok, per_ctx = step_params(kind, speed)
    p, o = means["prompt_mean"], means["output_mean"]
    return 1.0 / (o * base / SIM_MAX_SEQS + per_tok * (p + o - 1) + per_ctx * means["ctx_steps_mean"])


def model_operating_point(kind, means, rate, speed=SPEED):
    """(steps/s, mean batch) the model predicts at <rate> req/s (no queue)."""
    base, per_tok, per_ctx = step_params(kind, speed)
    p, o = means["prompt_mean"], means["output_mean"]
    busy = rate * (per_tok * (p + o - 1) + per_ctx * means["ctx_steps_mean"])
    k = (1 - busy) / base
    return k, rate * o / k


def kv_blocks_fit(means, speed=SPEED):
    """KV blocks per replica for the kvpressure scenario: the mean KV a normal
    replica holds at CAL_LOAD (mean batch from the step model x the time-weighted
    mean context E[O (P + O/2)] / E[O]) is KV_FIT of the pool; long documents then
    do not all fit where they cluster. At least one full context."""
    rate = CAL_LOAD * model_capacity("normal", means, speed)
    _, batch = model_operating_point("normal", means, rate, speed)
    demand = batch * means["ctx_steps_mean"] / means["output_mean"]
    return max(SIM_CONTEXT // SIM_BLOCK, int(math.ceil(demand / KV_FIT / SIM_BLOCK)))


def cal_key(kind, sd):
    return "%s@%g@speed%g%s" % (kind, sd["long_frac"], sd["speed"],
                                "@" + "+".join(sd["workload"]) if sd["workload"] else "")


def calibrate(binary, kind, sd, d):
    """Capacity (req/s) of one <kind> replica for scenario <sd>'s mix, from the
    step model; then, with CAL_SECONDS > 0, checked: one replica alone (the
    default flags) at CAL_LOAD x capacity for CAL_SECONDS, its mean batch, step
    time and queue over [CAL_SKIP, CAL_SECONDS] compared with the model's
    prediction for that load."""
    os.makedirs(d, exist_ok=True)
    means = workload_means(sd)
    cap = model_capacity(kind, means, sd["speed"])
    rate = CAL_LOAD * cap
    k_pred, d_pred = model_operating_point(kind, means, rate, sd["speed"])
    res = {"kind": kind, "long_frac": sd["long_frac"], "speed": sd["speed"],
           "capacity_rps": cap, "check_rate_rps": rate, "predicted_batch": d_pred,
           "predicted_step_ms": 1e3 / k_pred, "means": means}
    if CAL_SECONDS <= 0:
        log("capacity %s replica (%s): %.2f req/s (step model; not checked)" %
            (kind, cal_key(kind, sd), cap))
        return res
    one = dict(sd, replicas=[kind], sim_extra=[[]], workload=[])
    wait_quiet()
    sims = Sims(one, d, binary, SIM_KV_BLOCKS)
    mon = Monitor(os.path.join(d, "monitor.jsonl"), sims.ports, every=1.0)
    mon.start()
    try:
        summ = run_loadgen(sims.ports[0], rate, one, d, CAL_SKIP, CAL_SECONDS - CAL_SKIP, 0,
                           CAL_SEED)
    finally:
        mon.stop()
        sims.stop()
    win = [s for s in mon.samples if CAL_SKIP <= s["t"] <= CAL_SECONDS and s["sims"][0]]
    if len(win) < 2:
        raise RuntimeError("calibration: too few samples in %s" % d)
    a, b = win[0]["sims"][0], win[-1]["sims"][0]
    itl_n = b["itl_count"] - a["itl_count"]
    step_ms = 1e3 * (b["itl_sum"] - a["itl_sum"]) / itl_n if itl_n > 0 else None
    res.update({
           "measured_batch": sum(s["sims"][0]["running"] for s in win) / len(win),
           "measured_waiting": sum(s["sims"][0]["waiting"] for s in win) / len(win),
           "measured_waiting_max": max(s["sims"][0]["waiting"] for s in win),
           "measured_step_ms": step_ms, "preemptions": b["preempt"] - a["preempt"],
           "short_ttft_p50_ms": summ["ttft_short"]["p50"], "window_s": [win[0]["t"], win[-1]["t"]]})
    log("capacity %s replica (%s): %.2f req/s (step model); check at %.2f req/s: "
        "batch %.0f (model %.0f), mean inter-token step %.1f ms (model %.1f), waiting %.1f "
        "(max %.0f)" % (kind, cal_key(kind, sd), cap, rate, res["measured_batch"], d_pred,
                        step_ms or -1, 1e3 / k_pred, res["measured_waiting"],
                        res["measured_waiting_max"]))
    return res


# ---- one measured run -------------------------------------------------------------------

def measure(scen, target, rate, bins, d, kv_blocks):
    """One scenario/target measurement, repeated (up to RETRIES more times) when
    it was disturbed: another benchmark ran during it, or the load generator
    lagged (p99 > LAG_MAX_MS: it did not get its CPU). A disturbed attempt is
    kept as <d>.disturbed-N for reference."""
    for attempt in range(RETRIES + 1):
        summ = measure_once(scen, target, rate, bins, d, kv_blocks)
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


def measure_once(scen, target, rate, bins, d, kv_blocks):
    sd = SCENARIO_DEFS[scen]
    os.makedirs(d, exist_ok=True)
    waited, contended = wait_quiet()
    la0 = loadavg()
    sims = Sims(sd, d, bins["vllm-sim"], kv_blocks)
    tgt = None
    mon = None
    try:
        tgt = Target(target, sims.ports, d, bins["tokenrelay"], sd["served"])
        mon = Monitor(os.path.join(d, "monitor.jsonl"), sims.ports, tgt.admin_port)
        p0 = cpu_ticks(tgt.pids())
        s0 = cpu_ticks([p.pid for p in sims.procs])
        b0 = cpus_busy([PROXY_CPU, SIM_CPU])
        t0 = time.monotonic()
        mon.start()
        summ = run_loadgen(tgt.port, rate, sd, d, WARMUP, DURATION, DRAIN_MAX, CUR["seed"])
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
        "scenario": scen, "target": target, "load": CUR["load"], "seed": CUR["seed"],
        "rate": rate, "wall_s": round(wall, 1), "kv_blocks": kv_blocks,
        "sim_flags": sims.flags, "replica_models": sd["served"],
        "preemptions": preemptions(mon.samples, WARMUP),
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
    log("%s/%g/seed %d/%s: %d/%d ok (errors %s); short TTFT p50 %.0f p99 %.0f ms; long TTFT "
        "p99 %.0f ms; TPOT %.1f ms; e2e mean %.0f p99 %.0f ms, non-streaming p99 %.0f ms; "
        "preemptions %s; per replica %s; proxy CPU %.0f%%, loadgen %.0f%%, lag p99 %.1f ms; "
        "load %s" % (scen, CUR["load"], CUR["seed"], target, r["completed"], r["measured"],
                     r["errors"], r["ttft_short"]["p50"] or -1, r["ttft_short"]["p99"] or -1,
                     r["ttft_long"]["p99"] or -1, r["tpot_mean"] or -1, r["e2e_mean"] or -1,
                     r["e2e_p99"] or -1, r["e2e_nonstream"]["p99"] or -1,
                     summ["run"]["preemptions"],
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
    # Snapshot the binaries: others may rebuild the build directory while this runs.
    bins = {}
    for name, rel in (("tokenrelay", "tokenrelay"), ("vllm-sim", "tools/vllm-sim/vllm-sim")):
        src = os.path.join(BUILD, rel)
        if not os.access(src, os.X_OK):
            log("%s not found (ninja -C %s tokenrelay tools/vllm-sim/vllm-sim)" % (src, BUILD))
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
    # KV blocks of the kvpressure replicas, from the workload's means.
    kv_fit = kv_blocks_fit(workload_means(SCENARIO_DEFS["kvpressure"]))
    kv_of = {sc: (kv_fit if sd["kv_blocks"] == "fit" else SIM_KV_BLOCKS)
             for sc, sd in SCENARIO_DEFS.items()}
    header = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
        "commit": git + (" (+uncommitted changes in src/)" if src_dirty else ""),
        "versions": "%s, %s, vllm-sim (tools/vllm-sim)" % (tr_v, nginx_v),
        "command": "DURATION=%g WARMUP=%g DRAIN_MAX=%g LOADS=\"%s\" SEEDS=\"%s\" LONG_FRAC=%g "
                   "KV_LONG_FRAC=%g KV_FIT=%g SPEED=%g SPEED8=%g SCENARIOS=\"%s\" "
                   "TARGETS=\"%s\" PROXY_CPU=%d SIM_CPU=%d NICE=%d CAL_SECONDS=%g "
                   "bench/routing/run.py"
                   % (DURATION, WARMUP, DRAIN_MAX, " ".join("%g" % x for x in LOADS),
                      " ".join(str(x) for x in SEEDS), LONG_FRAC, KV_LONG_FRAC, KV_FIT, SPEED,
                      SPEED8, " ".join(SCENARIOS), " ".join(TARGETS), PROXY_CPU, SIM_CPU, NICE,
                      CAL_SECONDS),
        "sim_flags": " ".join(SIM_COMMON) + "; --seed SEED on every replica; --speed %g "
                     "(homogeneous8: %g); --kv-blocks %d (kvpressure: %d); normal: "
                     "--step-base-ms 8 --step-per-token-us 40; slow: --step-base-ms 16 "
                     "--step-per-token-us 80; multimodel: r0, r1 %s, r2, r3 %s" % (
                         SPEED, SPEED8, SIM_KV_BLOCKS, kv_fit, " ".join(MM_A), " ".join(MM_B)),
        "pinning": "proxy (tokenrelay 1 worker / nginx 1 worker) on CPU %d; the vllm-sims, "
                   "loadgen and this driver on CPU %d" % (PROXY_CPU, SIM_CPU),
        "load_before": loadavg(), "out": OUT,
        "settings": {"duration": DURATION, "warmup": WARMUP, "drain_max": DRAIN_MAX,
                     "loads": LOADS, "seeds": SEEDS, "nice": NICE, "retries": RETRIES,
                     "lag_max_ms": LAG_MAX_MS, "long_frac": LONG_FRAC,
                     "kv_long_frac": KV_LONG_FRAC, "kv_fit": KV_FIT, "kv_blocks": kv_fit,
                     "speed": SPEED, "speed8": SPEED8, "output_mean": OUTPUT_MEAN,
                     "output_sigma": OUTPUT_SIGMA, "scenarios": SCENARIOS, "targets": TARGETS,
                     "created_base": CREATED_BASE,
                     "replica_models": {sc: SCENARIO_DEFS[sc]["served"] for sc in SCENARIOS},
                     "replica_kinds": {sc: SCENARIO_DEFS[sc]["replicas"] for sc in SCENARIOS}},
    }
    with open(os.path.join(OUT, "header.json"), "w") as f:
        json.dump(header, f, indent=1)
    for k in ("date", "machine", "commit", "versions", "command", "sim_flags", "pinning",
              "load_before"):
        log("%-12s %s" % (k + ":", header[k]))
    t_start = time.monotonic()

    # Capacity per (replica kind, workload) that the scenarios need.
    cal = {}
    if CAPACITY_FILE:
        with open(CAPACITY_FILE) as f:
            cal = json.load(f)
    for scen in SCENARIOS:
        sd = SCENARIO_DEFS[scen]
        for kind in sorted(set(sd["replicas"])):
            key = cal_key(kind, sd)
            if key not in cal:
                cal[key] = calibrate(bins["vllm-sim"], kind, sd,
                                     os.path.join(OUT, "calibration", key.replace("/", "_")))
    with open(os.path.join(OUT, "calibration.json"), "w") as f:
        json.dump(cal, f, indent=1)

    # Seeds outermost: a partial run still has every scenario, load and target
    # for the seeds it finished.
    for seed in SEEDS:
        for scen in SCENARIOS:
            sd = SCENARIO_DEFS[scen]
            cap = sum(cal[cal_key(k, sd)]["capacity_rps"] for k in sd["replicas"])
            for load in LOADS:
                CUR["seed"], CUR["load"] = seed, load
                rate = load * cap
                log("seed %d, scenario %s: cluster capacity %.2f req/s, arrival rate %.2f req/s "
                    "(%.0f%%)" % (seed, scen, cap, rate, 100 * load))
                for target in TARGETS:
                    measure(scen, target, rate, bins,
                            os.path.join(OUT, "run", scen, "%g" % load, str(seed), target),
                            kv_of[scen])

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
    log("done in %.0f min: %s (report.md)" % (header["total_s"] / 60, OUT))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        stop_all()

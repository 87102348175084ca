#!/usr/bin/env bash
# Scrape cost: tokenrelay's poller thread scraping N replicas' /metrics at 10 Hz.
# N replica entries point at 4 vllm-sim processes (a real vLLM-style exposition
# each, ~19 KB with 2 engines). Reports the poller thread's CPU time as a share
# of one core (from /proc/PID/task/TID/stat), which does not depend on how busy
# the rest of the machine is. Usage: bench/scrape_cost.sh [BUILD] [N] [SECONDS]
set -euo pipefail
build=${1:-build}
n=${2:-128}
secs=${3:-20}
cd "$(dirname "$0")/.."
run=$(mktemp -d /tmp/tr-scrape.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$run"; }
trap cleanup EXIT

ports=()
for i in 0 1 2 3; do
  "$build/vllm-sim" --host 127.0.0.1 --port 0 --engines 2 >"$run/sim$i.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do grep -q listening "$run/sim$i.out" && break; sleep 0.05; done
  ports+=("$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$run/sim$i.out" | head -1)")
done
# Some traffic so the expositions carry real histogram data.
for p in "${ports[@]}"; do
  curl -s "http://127.0.0.1:$p/v1/completions" -H 'content-type: application/json' \
    -d '{"model":"sim-model","prompt":"warm up","max_tokens":8}' >/dev/null
done
{
  printf '[proxy]\nlisten = 127.0.0.1:0\nworkers = 1\n[admin]\nlisten = 127.0.0.1:0\n'
  printf '[poller]\ninterval_ms = 100\nhealth_interval_ms = 1000\n'
  for i in $(seq 0 $((n - 1))); do
    printf '[backend r%d]\nurl = http://127.0.0.1:%s\n' "$i" "${ports[$((i % 4))]}"
  done
} >"$run/tr.ini"
"$build/tokenrelay" --config "$run/tr.ini" 2>"$run/tr.log" &
pid=$!
pids+=($pid)
for _ in $(seq 100); do grep -q "listening on" "$run/tr.log" && break; sleep 0.05; done
sleep 2  # past start-up: connections open, first rounds done
tid=""
for t in /proc/$pid/task/*; do
  [[ "$(cat "$t/comm")" == tr-poller ]] && tid=${t##*/}
done
[[ -n "$tid" ]] || { echo "no tr-poller thread" >&2; exit 1; }
ticks() { awk '{print $14 + $15}' "/proc/$pid/task/$tid/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks); s0=$(date +%s.%N)
sleep "$secs"
t1=$(ticks); s1=$(date +%s.%N)
admin=$(sed -n 's/.*admin on [^:]*:\([0-9]*\).*/\1/p' "$run/tr.log" | head -1)
count=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^tokenrelay_scrape_duration_seconds_count/ {print $2}')
errors=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^tokenrelay_scrape_errors_total/ {s += $2} END {print s}')
awk -v t0="$t0" -v t1="$t1" -v s0="$s0" -v s1="$s1" -v hz="$hz" -v n="$n" -v c="$count" -v e="$errors" 'BEGIN {
  cpu = (t1 - t0) / hz; wall = s1 - s0;
  printf "replicas %d, interval 100 ms, %.1f s: poller thread CPU %.3f s = %.2f%% of one core\n", n, wall, cpu, 100 * cpu / wall;
  printf "scrapes so far %d (%.0f/s expected), scrape errors %d; %.1f us CPU per scrape\n", c, n * 10, e, 1e6 * cpu / (n * 10 * wall);
}'

#!/usr/bin/env bash
# bench/run.sh [BUILD_DIR]: tokenrelay against nginx, HAProxy and no proxy at all
# ("direct"), in one run, against the same two vllm-sim processes.
#
# For each scenario (small non-streaming completions; streaming chat at a realistic
# and at a fast simulator speed) and each target, the script starts the target
# pinned to PROXY_CPU, waits until a request goes through it, warms it up, runs wrk
# for DURATION, reads the proxy's CPU time from /proc before and after, and stops
# it. It then prints one table per scenario: requests/s, latency percentiles, proxy
# CPU-seconds per 1k requests, and tokenrelay's ratios to nginx and HAProxy.
# See bench/README.md.
#
# Environment (defaults in brackets):
#   DURATION [10s]  WARMUP [2s]  CONNECTIONS [64]  THREADS [1]  ROUNDS [1]
#   PROXY_CPU [0]  SIM_CPU [1]  CLIENT_CPU [=SIM_CPU]
#   SCENARIOS ["small stream stream-fast"]
#   TARGETS ["direct nginx haproxy tokenrelay"]   (also: tokenrelay-epoll)
#   SMALL_SPEED [1000]  SMALL_MAX_TOKENS [1]
#   STREAM_SPEED [1]  STREAM_FAST_SPEED [20]  STREAM_MAX_TOKENS [64]
#   TR_IO [auto]  (io key of the "tokenrelay" target)
#   NICE [0]  (nice value for every process the script starts; < 0 needs root)
#   SELECT [median]  (with ROUNDS > 1, the row shown per target: median | quietest)
#   OUT [bench/out/YYYYmmdd-HHMMSS]
#
# bench/run.sh --summary OUT_DIR prints the tables of an earlier run again.
set -euo pipefail
export LC_ALL=C  # "." decimal point in awk, printf and $EPOCHREALTIME

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-1}
PROXY_CPU=${PROXY_CPU:-0}
SIM_CPU=${SIM_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-$SIM_CPU}
SCENARIOS=${SCENARIOS:-"small stream stream-fast"}
TARGETS=${TARGETS:-"direct nginx haproxy tokenrelay"}
SMALL_SPEED=${SMALL_SPEED:-1000}
SMALL_MAX_TOKENS=${SMALL_MAX_TOKENS:-1}
STREAM_SPEED=${STREAM_SPEED:-1}
STREAM_FAST_SPEED=${STREAM_FAST_SPEED:-20}
STREAM_MAX_TOKENS=${STREAM_MAX_TOKENS:-64}
TR_IO=${TR_IO:-auto}
NICE=${NICE:-0}
SELECT=${SELECT:-median}
OUT=${OUT:-$here/out/$(date +%Y%m%d-%H%M%S)}
[[ $SELECT == quietest || $SELECT == median ]] || die "SELECT must be quietest or median"

# print_summary DIR: prints, per scenario of DIR/results.tsv, a markdown table with
# one row per target and tokenrelay's ratios to nginx and HAProxy (req/s: higher is
# better; p99 and CPU-s per 1k requests: lower is better). With several rounds the
# row is, with SELECT=median, the round with the median req/s, and with
# SELECT=quietest, the round in which other processes used the least CPU on the
# bench CPUs; the ratio lines also give the ratio of each round (runs made at most
# minutes apart) and the median of those, the figure least moved by a shared box.
print_summary() {
  local dir=$1 scen scenarios targets="" t rounds
  scenarios=$(awk -F'\t' 'NR > 1 && !seen[$1]++ {printf "%s ", $1}' "$dir/results.tsv")
  for t in direct nginx haproxy tokenrelay tokenrelay-epoll; do
    if awk -F'\t' -v t="$t" '$2 == t {found = 1} END {exit !found}' "$dir/results.tsv"; then
      targets+="$t "
    fi
  done
  rounds=$(awk -F'\t' 'NR > 1 && $3 > m {m = $3} END {print m + 0}' "$dir/results.tsv")
  for scen in $scenarios; do
    awk -F'\t' -v scen="$scen" -v rounds="$rounds" -v targets="$targets" -v select="$SELECT" \
      -v info="$(grep "^$scen " "$dir/scenarios.txt" | cut -d' ' -f2-)" '
      NR > 1 && $1 == scen { row[$2, $3] = $0; rps[$2, $3] = $4; cpk[$2, $3] = $12; oth[$2, $3] = $15 }
      function ms(us) { return sprintf("%.2f", us / 1000) }
      # Share of the requests each simulator received, e.g. "50/50"; a skew means
      # the proxy routed around a replica (direct always uses sim0 only).
      function split2(a, b) { return a + b > 0 ? sprintf("%.0f/%.0f", 100 * a / (a + b), 100 * b / (a + b)) : "-" }
      # " (per round: xA xB xC, median xM)": the ratio of TR to REF in each round.
      function per_round(key, tr, ref,   r, out, n, q, i, j, x) {
        out = ""; n = 0
        for (r = 1; r <= rounds; r++) {
          if (!((tr, r) in rps) || !((ref, r) in rps)) continue
          if (key == "rps" && rps[ref, r] > 0) q[++n] = rps[tr, r] / rps[ref, r]
          else if (key == "cpk" && cpk[ref, r] + 0 > 0) q[++n] = cpk[tr, r] / cpk[ref, r]
          else continue
          out = out sprintf(" x%.2f", q[n])
        }
        if (rounds < 2 || n == 0) return ""
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (q[j] < q[i]) { x = q[i]; q[i] = q[j]; q[j] = x }
        x = n % 2 ? q[(n + 1) / 2] : (q[n / 2] + q[n / 2 + 1]) / 2
        return sprintf(" (per round:%s; median x%.2f)", out, x)
      }
      END {
        nt = split(targets, T, " ")
        stream = (scen != "small")
        how = select == "quietest" ? "round with the least CPU used by other processes" : "round with the median req/s"
        printf "\n### %s (%s%s)\n\n", scen, info, (rounds > 1 ? "; per target the " how ", of " rounds : "")
        printf "| target | req/s | p50 ms | p99 ms | errors | sim0/sim1 %% | proxy CPU %% | proxy CPU-s/1k req | sims CPU-s/1k req | wrk CPU-s/1k req | other procs CPU %% |%s\n",
          stream ? " tokens/s | events/s | incomplete | idle TTFT ms |" : ""
        printf "|---|---|---|---|---|---|---|---|---|---|---|%s\n", stream ? "---|---|---|---|" : ""
        for (t = 1; t <= nt; t++) {
          name = T[t]; m = 0
          for (r = 1; r <= rounds; r++) if ((name, r) in rps) { v[++m] = rps[name, r] + 0; vr[m] = r }
          if (m == 0) continue
          for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] < v[i]) {
            x = v[i]; v[i] = v[j]; v[j] = x; x = vr[i]; vr[i] = vr[j]; vr[j] = x }
          pick = vr[int((m + 1) / 2)]
          if (select == "quietest") {
            best = ""
            for (r = 1; r <= rounds; r++) {
              if (!((name, r) in rps) || oth[name, r] == "-") continue
              if (best == "" || oth[name, r] + 0 < oth[name, best] + 0) best = r
            }
            if (best != "") pick = best
          }
          split(row[name, pick], c, "\t")
          sel[name] = 1; R[name] = c[4]; P99[name] = c[7]; CPK[name] = c[12]
          printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |", name == "direct" ? "direct (1 sim)" : name,
            c[4], ms(c[5]), ms(c[7]), c[9], split2(c[19], c[20]), c[11], c[12], c[13], c[14], c[15]
          if (stream) printf " %s | %s | %s | %s |", c[16], c[17], c[18], c[21]
          printf "\n"
        }
        printf "\n"
        for (t = 1; t <= nt; t++) {
          tr = T[t]
          if (tr !~ /^tokenrelay/ || !(tr in sel)) continue
          split("nginx haproxy", refs, " ")
          for (k = 1; k <= 2; k++) {
            ref = refs[k]
            if (!(ref in sel) || R[ref] + 0 == 0) continue
            printf "- %s/%s: req/s x%.2f%s; p99 x%.2f; CPU-s per 1k req x%s%s\n", tr, ref,
              R[tr] / R[ref], per_round("rps", tr, ref), (P99[ref] > 0 ? P99[tr] / P99[ref] : 0),
              (CPK[ref] + 0 > 0 ? sprintf("%.2f", CPK[tr] / CPK[ref]) : "-"), per_round("cpk", tr, ref)
          }
        }
      }' "$dir/results.tsv"
  done
}

# "bench/run.sh --summary DIR" prints the tables of an earlier run again (e.g. with
# the other SELECT) and runs nothing.
if [[ ${1:-} == --summary ]]; then
  [[ -f ${2:-}/results.tsv ]] || die "usage: bench/run.sh --summary OUT_DIR (a directory with results.tsv)"
  print_summary "$2"
  exit 0
fi

build=${1:-$root/build}
[[ -d $build ]] || {
  echo "bench/run.sh: no build directory '$build' (run make first)" >&2
  exit 2
}
build=$(cd "$build" && pwd)

for tool in wrk nginx haproxy curl taskset ss; do
  command -v "$tool" >/dev/null || die "$tool is not installed (tools/install-deps.sh --bench)"
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be an integer >= 1"
[[ $NICE =~ ^-?[0-9]+$ ]] || die "NICE must be an integer"
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be an integer >= 1"
for s in $SCENARIOS; do
  [[ $s =~ ^(small|stream|stream-fast)$ ]] || die "unknown scenario '$s' (small stream stream-fast)"
done
for t in $TARGETS; do
  [[ $t =~ ^(direct|nginx|haproxy|tokenrelay|tokenrelay-epoll)$ ]] ||
    die "unknown target '$t' (direct nginx haproxy tokenrelay tokenrelay-epoll)"
done
allowed=$(taskset -pc $$ | sed 's/.*: //')
for c in "$PROXY_CPU" "$SIM_CPU" "$CLIENT_CPU"; do
  taskset -c "$c" true 2>/dev/null || die "CPU $c is not usable here (allowed: $allowed)"
done

mkdir -p "$OUT/raw" "$OUT/bin" "$OUT/run"
OUT=$(cd "$OUT" && pwd)
if [[ $(dirname "$OUT") == "$here/out" ]]; then
  ln -sfn "$(basename "$OUT")" "$here/out/latest"
fi

# Snapshot the binaries: other people may rebuild build/ while this runs.
[[ -x $build/tokenrelay ]] || die "$build/tokenrelay not found (make)"
[[ -x $build/vllm-sim ]] || die "$build/vllm-sim not found (make)"
cp -L "$build/tokenrelay" "$build/vllm-sim" "$OUT/bin/"
TOKENRELAY=$OUT/bin/tokenrelay
SIM=$OUT/bin/vllm-sim

# Every target gets the same, highest allowed, open-file limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# CPU time of wrk comes from /usr/bin/time when it is there (wrk exits before we could read /proc).
TIME_BIN=$(command -v /usr/bin/time || true)

trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# ---- run header ------------------------------------------------------------------

cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
ncpu=$(nproc)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
{
  echo "date:        $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "machine:     nproc=$ncpu, ${cpu_model:-unknown CPU}, kernel $(uname -r)"
  echo "commit:      $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "($(git -C "$root" diff --shortstat HEAD -- src 2>/dev/null | sed 's/^ *//' || true)" \
    "uncommitted in src/)"
  echo "binary:      $build/tokenrelay (modified $(date -u -r "$build/tokenrelay" '+%H:%M:%S UTC')," \
    "sha256 $(sha256sum "$TOKENRELAY" | cut -c1-12)); the commit line is the tree's"
  echo "versions:    $("$TOKENRELAY" --version), $(nginx -v 2>&1 | sed 's/.*: //')," \
    "$(haproxy -v | head -n1 | cut -d' ' -f1-3), $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2)"
  echo "command:     DURATION=$DURATION WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS THREADS=$THREADS" \
    "ROUNDS=$ROUNDS SELECT=$SELECT NICE=$NICE PROXY_CPU=$PROXY_CPU SIM_CPU=$SIM_CPU CLIENT_CPU=$CLIENT_CPU" \
    "SCENARIOS=\"$SCENARIOS\" TARGETS=\"$TARGETS\" bench/run.sh $build"
  echo "pinning:     proxy (every target, 1 worker/thread) on CPU $PROXY_CPU;" \
    "2 vllm-sim on CPU $SIM_CPU; wrk ($THREADS thread(s), $CONNECTIONS connections) on CPU $CLIENT_CPU"
  if [[ $ncpu -le 2 ]]; then
    echo "note:        this is a $ncpu-CPU box: the simulators and wrk share one CPU, so" \
      "client-side CPU can cap requests/s; compare CPU-s per 1k requests too"
  fi
  echo "load before: $load_before (1/5/15 min; >0.5 means other work shares these CPUs)"
  echo "raw output:  $OUT"
} | tee "$OUT/header.txt"

# ---- simulators --------------------------------------------------------------------

SIM_PORTS=()
SIM_PIDS=()
for i in 0 1; do
  bg_start "$OUT/run/sim$i.log" "$SIM_CPU" "$SIM" --host 127.0.0.1 --port 0 \
    --speed "$SMALL_SPEED" --seed $((i + 1))
  SIM_PIDS+=("$BG_PID")
  port=$(wait_log_port "$OUT/run/sim$i.log" 'vllm-sim listening on [^ ]+:([0-9]+)' "$BG_PID" 10) ||
    die "vllm-sim $i did not start"
  SIM_PORTS+=("$port")
done
log "simulators on ports ${SIM_PORTS[*]} (CPU $SIM_CPU)"

# set_sim_speed X: changes the speed of both simulators at run time (same processes).
set_sim_speed() {
  local p
  for p in "${SIM_PORTS[@]}"; do
    curl -sf -o /dev/null -X POST "http://127.0.0.1:$p/sim/config" -d "{\"speed\":$1}" ||
      die "cannot set the speed of the simulator on port $p"
  done
}

# check_sims WHEN: dies with a clear message if a simulator is gone (a crash, or
# someone else's "pkill vllm-sim" on a shared box): every later figure would be wrong.
check_sims() {
  local i
  for i in 0 1; do
    if ! alive "${SIM_PIDS[$i]}"; then
      die "vllm-sim $i (port ${SIM_PORTS[$i]}) is gone $1: $(exit_text "${SIM_PIDS[$i]}"); see $OUT/run/sim$i.log"
    fi
  done
}

# sim_received: prints requests_received of each simulator (GET /sim/stats), space-separated.
sim_received() {
  local p
  for p in "${SIM_PORTS[@]}"; do
    { curl -s --max-time 2 "http://127.0.0.1:$p/sim/stats" || echo '"requests_received":0'; } |
      awk 'match($0, /"requests_received":[0-9]+/) { print substr($0, RSTART + 20, RLENGTH - 20) }'
  done | paste -sd' '
}

TTFT_BODY='{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":4,"ignore_eos":true,"stream":true}'
READY_BODY='{"model":"sim-model","prompt":"ready?","max_tokens":1,"ignore_eos":true}'

# ---- targets -----------------------------------------------------------------------
# start_target NAME DIR: starts the target, sets T_PORT and T_PIDS (the pids whose
# CPU time is the proxy's; empty for direct) and T_MAIN (the pid to stop).

start_target() {
  local name=$1 dir=$2 attempt port
  T_PIDS=()
  T_MAIN=""
  case $name in
    direct)
      T_PORT=${SIM_PORTS[0]}
      return 0
      ;;
    tokenrelay | tokenrelay-epoll)
      local io=$TR_IO
      [[ $name == tokenrelay-epoll ]] && io=epoll
      fill_template "$here/configs/tokenrelay.ini.in" "$dir/tokenrelay.ini" \
        "SIM0=${SIM_PORTS[0]}" "SIM1=${SIM_PORTS[1]}" "IO=$io"
      bg_start "$dir/tokenrelay.log" "$PROXY_CPU" "$TOKENRELAY" --config "$dir/tokenrelay.ini"
      T_MAIN=$BG_PID
      T_PORT=$(wait_log_port "$dir/tokenrelay.log" 'listening on [^ ]+:([0-9]+) ' "$T_MAIN" 10) ||
        die "tokenrelay did not start"
      T_PIDS=("$T_MAIN")
      ;;
    nginx | haproxy)
      for attempt in 1 2 3 4 5; do
        port=$(free_port)
        if [[ $name == nginx ]]; then
          mkdir -p "$dir/tmp"
          fill_template "$here/configs/nginx.conf.in" "$dir/nginx.conf" "DIR=$dir" \
            "PORT=$port" "SIM0=${SIM_PORTS[0]}" "SIM1=${SIM_PORTS[1]}" "KEEPALIVE=$CONNECTIONS"
          bg_start "$dir/nginx.out" "$PROXY_CPU" nginx -p "$dir/" -e "$dir/error.log" \
            -c "$dir/nginx.conf" -g 'daemon off;'
        else
          fill_template "$here/configs/haproxy.cfg.in" "$dir/haproxy.cfg" \
            "PORT=$port" "SIM0=${SIM_PORTS[0]}" "SIM1=${SIM_PORTS[1]}"
          bg_start "$dir/haproxy.out" "$PROXY_CPU" haproxy -db -f "$dir/haproxy.cfg"
        fi
        T_MAIN=$BG_PID
        if wait_http_ok "http://127.0.0.1:$port/v1/completions" "$READY_BODY" "$T_MAIN" 10; then
          T_PORT=$port
          break
        fi
        log "$name did not come up on port $port (attempt $attempt):"
        tail -n 5 "$dir"/*.out "$dir"/error.log 2>/dev/null >&2 || true
        stop_pid "$T_MAIN"
        T_MAIN=""
      done
      [[ -n $T_MAIN ]] || die "$name did not start"
      T_PIDS=("$T_MAIN")
      if [[ $name == nginx ]]; then
        # shellcheck disable=SC2207
        T_PIDS+=($(child_pids "$T_MAIN"))
      fi
      ;;
    *) die "unknown target '$name' (direct nginx haproxy tokenrelay tokenrelay-epoll)" ;;
  esac
  wait_http_ok "http://127.0.0.1:$T_PORT/v1/completions" "$READY_BODY" "${T_MAIN:-${SIM_PIDS[0]}}" 10 ||
    die "$name does not answer POST /v1/completions on port $T_PORT"
}

# ---- one measurement -----------------------------------------------------------------

RESULTS=$OUT/results.tsv
echo "scenario target round rps p50_us p90_us p99_us requests errors proxy_cpu_s \
  proxy_util_pct proxy_cpu_s_per_1k sims_cpu_s_per_1k wrk_cpu_s_per_1k other_cpu_pct \
  tokens_per_s events_per_s incomplete sim0_requests sim1_requests ttft_idle_ms" | tr -s ' ' '\t' >"$RESULTS"
BENCH_CPUS="$PROXY_CPU,$SIM_CPU,$CLIENT_CPU"
HZ=$(getconf CLK_TCK)

# run_wrk OUTFILE DURATION SCRIPT MAX_TOKENS TIMEOUT PORT: runs wrk pinned to
# CLIENT_CPU in the background (so that the EXIT trap can stop it) and waits.
run_wrk() {
  local outfile=$1 dur=$2 script=$3 max_tokens=$4 timeout=$5 port=$6 rc=0
  local timer=()
  [[ -n $TIME_BIN ]] && timer=("$TIME_BIN" -f '%U %S' -o "$outfile.cpu")
  BENCH_MAX_TOKENS=$max_tokens bg_start "$outfile" "$CLIENT_CPU" "${timer[@]}" wrk -t"$THREADS" \
    -c"$CONNECTIONS" -d"$dur" --timeout "$timeout" --latency -s "$script" "http://127.0.0.1:$port"
  local pid=$BG_PID
  wait "$pid" || rc=$?
  local kept=() p
  for p in "${BENCH_PIDS[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
  BENCH_PIDS=("${kept[@]}")
  return "$rc"
}

# measure SCENARIO TARGET ROUND SCRIPT MAX_TOKENS TIMEOUT: starts TARGET, warms it
# up, measures one wrk run, stops it and appends one row to results.tsv.
measure() {
  local scen=$1 target=$2 round=$3 script=$4 max_tokens=$5 timeout=$6
  local tag="$scen-$target-r$round" dir="$OUT/run/$scen-$target-r$round"
  mkdir -p "$dir"
  check_sims "before $tag"
  start_target "$target" "$dir"
  if [[ $target == tokenrelay* ]]; then
    log "$target: $(grep -m1 -o 'I/O backend: .*' "$dir/tokenrelay.log" || echo 'I/O backend: ?')"
  fi
  # Streams: time to the first event of one request on the idle target (median of 3).
  local ttft="-" i t=()
  if [[ $scen == stream* ]]; then
    for i in 1 2 3; do t+=("$(stream_ttft_ms "$T_PORT" "$TTFT_BODY")"); done
    ttft=$(printf '%s\n' "${t[@]}" | sort -g | sed -n 2p)
  fi
  run_wrk "$OUT/raw/$tag.warmup.txt" "$WARMUP" "$script" "$max_tokens" "$timeout" "$T_PORT" ||
    die "wrk warm-up failed: $OUT/raw/$tag.warmup.txt"

  # Before/after: requests each sim received, CPU ticks of the proxy and of the
  # sims, and busy jiffies of the bench CPUs (for the CPU used by other processes).
  local n0 p0 s0 b0 n1 p1 s1 b1
  n0=$(sim_received)
  p0=$(cpu_ticks "${T_PIDS[@]}")
  s0=$(cpu_ticks "${SIM_PIDS[@]}")
  b0=$(cpu_busy_snapshot "$BENCH_CPUS")
  run_wrk "$OUT/raw/$tag.txt" "$DURATION" "$script" "$max_tokens" "$timeout" "$T_PORT" ||
    die "wrk failed: $OUT/raw/$tag.txt"
  p1=$(cpu_ticks "${T_PIDS[@]}")
  s1=$(cpu_ticks "${SIM_PIDS[@]}")
  b1=$(cpu_busy_snapshot "$BENCH_CPUS")
  n1=$(sim_received)
  check_sims "after $tag"
  if [[ -n $T_MAIN ]]; then
    alive "$T_MAIN" || die "$target is gone after $tag: $(exit_text "$T_MAIN"); see $dir"
    stop_pid "$T_MAIN"
  fi

  local line wrk_cpu=""
  line=$(grep -m1 '^BENCH ' "$OUT/raw/$tag.txt") || die "no BENCH line in $OUT/raw/$tag.txt"
  if [[ -f $OUT/raw/$tag.txt.cpu ]]; then
    wrk_cpu=$(awk 'NF == 2 && $1 ~ /^[0-9.]+$/ {print $1 + $2}' "$OUT/raw/$tag.txt.cpu")
  fi
  awk -v scen="$scen" -v target="$target" -v round="$round" -v hz="$HZ" \
    -v pt=$((p1 - p0)) -v st=$((s1 - s0)) -v has_proxy=${#T_PIDS[@]} -v b0="$b0" -v b1="$b1" \
    -v n0="$n0" -v n1="$n1" -v line="$line" -v wrk_cpu="$wrk_cpu" -v ttft="$ttft" '
    function f(k,   i, n, kv) {
      n = split(line, kv, " ")
      for (i = 2; i <= n; i++) if (index(kv[i], k "=") == 1) return substr(kv[i], length(k) + 2)
      return ""
    }
    function per1k(cpu_s) { return sprintf("%.4f", req > 0 ? 1000 * cpu_s / req : 0) }
    function dash(v) { return v == "" ? "-" : v }
    BEGIN {
      req = f("requests"); secs = f("duration_us") / 1e6
      err = f("err_connect") + f("err_read") + f("err_write") + f("err_timeout") + f("err_status")
      pcpu = pt / hz; scpu = st / hz
      split(b0, x, " "); split(b1, y, " "); split(n0, a, " "); split(n1, b, " ")
      # CPU that processes we did not start used on the bench CPUs, in % of one CPU.
      other = ""
      if (wrk_cpu != "" && secs > 0) {
        other = ((y[1] - x[1]) / hz - pcpu - scpu - wrk_cpu) / secs * 100
        other = sprintf("%.0f", other < 0 ? 0 : other)
      }
      printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t", scen, target, round, f("rps"), f("p50_us"),
        f("p90_us"), f("p99_us"), req, err
      if (has_proxy > 0) printf "%.2f\t%.1f\t%s\t", pcpu, 100 * pcpu / secs, per1k(pcpu)
      else printf "-\t-\t-\t"
      printf "%s\t%s\t%s\t", per1k(scpu), (wrk_cpu == "" ? "-" : per1k(wrk_cpu)), dash(other)
      printf "%s\t%s\t%s\t", dash(f("tokens_per_s")), dash(f("events_per_s")), dash(f("incomplete"))
      printf "%d\t%d\t%s\n", b[1] - a[1], b[2] - a[2], ttft
    }' >>"$RESULTS"
  log "$(tail -n1 "$RESULTS" | awk -F'\t' '{
    printf "%s %s r%s: %s req/s, p99 %.2f ms, errors %s, proxy CPU %s%%, %s CPU-s/1k req, other CPU %s%%, sim0/sim1 requests %s/%s",
      $1, $2, $3, $4, $7 / 1000, $9, $11, $12, $15, $19, $20}')"
}

# ---- scenarios -----------------------------------------------------------------------

for scen in $SCENARIOS; do
  case $scen in
    small) speed=$SMALL_SPEED script=$here/completions.lua mt=$SMALL_MAX_TOKENS timeout=10s ;;
    stream) speed=$STREAM_SPEED script=$here/stream_chat.lua mt=$STREAM_MAX_TOKENS timeout=60s ;;
    stream-fast) speed=$STREAM_FAST_SPEED script=$here/stream_chat.lua mt=$STREAM_MAX_TOKENS timeout=60s ;;
    *) die "unknown scenario '$scen' (small stream stream-fast)" ;;
  esac
  set_sim_speed "$speed"
  echo "$scen speed=$speed max_tokens=$mt" >>"$OUT/scenarios.txt"
  log "scenario $scen: simulator speed $speed, max_tokens $mt"
  read -r -a tlist <<<"$TARGETS"
  for ((r = 1; r <= ROUNDS; r++)); do
    # Rotate the order every round so that no target always runs first or last.
    n=${#tlist[@]}
    for ((k = 0; k < n; k++)); do
      measure "$scen" "${tlist[$(((k + r - 1) % n))]}" "$r" "$script" "$mt" "$timeout"
    done
  done
done

for p in "${SIM_PIDS[@]}"; do stop_pid "$p"; done

# ---- summary -------------------------------------------------------------------------

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
{
  echo
  echo "load after:  $load_after"
  print_summary "$OUT"
} | tee "$OUT/summary.md"
log "done: $OUT (results.tsv, summary.md, raw/)"

# shellcheck shell=bash
# Helpers for bench/run.sh: process bookkeeping, ports, readiness, CPU accounting.
# Sourced, not executed. Every process started through bg_start() is recorded in
# BENCH_PIDS and stopped by bench_cleanup() (run.sh installs it as the EXIT trap).

BENCH_PIDS=()

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# bg_start LOGFILE CPU CMD...: starts the program CMD (not a shell function) in
# the background pinned to CPU, at nice value $NICE (default 0), with stdout and
# stderr in LOGFILE; records its pid and sets BG_PID. taskset and nice exec, so
# the pid is CMD's own: signals and /proc/PID/stat reach the real process.
bg_start() {
  local logfile=$1 cpu=$2
  shift 2
  : >"$logfile"  # truncated now, so that a reader never sees an older run's lines
  taskset -c "$cpu" nice -n "${NICE:-0}" "$@" >>"$logfile" 2>&1 </dev/null &
  BG_PID=$!
  BENCH_PIDS+=("$BG_PID")
}

# alive PID: true while PID runs (a child that exited but is not reaped yet is a zombie: not alive).
alive() {
  kill -0 "$1" 2>/dev/null && [[ $(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) != Z ]]
}

# proc_start PID: the process's start time (/proc/PID/stat field 22), to tell it
# from a later process that got the same pid.
proc_start() {
  sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20
}

# child_pids PID: the pids whose parent is PID (nginx's workers), one per line.
child_pids() {
  ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true
}

# stop_pid PID [GRACE_S]: SIGTERM, wait up to GRACE_S (default 5) seconds, then
# SIGKILL the process and any children it left (each checked by its start time).
# Reaps it. Safe on a dead pid.
stop_pid() {
  local pid=$1 grace=${2:-5} kids=() i
  if ! alive "$pid"; then
    wait "$pid" 2>/dev/null || true
    return 0
  fi
  for i in $(child_pids "$pid"); do kids+=("$i:$(proc_start "$i")"); done
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 20; i++)); do
    alive "$pid" || break
    sleep 0.05
  done
  if alive "$pid"; then
    log "pid $pid did not stop in ${grace}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  for i in "${kids[@]}"; do
    if alive "${i%%:*}" && [[ $(proc_start "${i%%:*}") == "${i#*:}" ]]; then
      kill -KILL "${i%%:*}" 2>/dev/null || true
    fi
  done
  wait "$pid" 2>/dev/null || true
  local kept=()
  for i in "${BENCH_PIDS[@]}"; do [[ $i == "$pid" ]] || kept+=("$i"); done
  BENCH_PIDS=("${kept[@]}")
}

# bench_cleanup: stops every process bg_start() started and is still recorded.
bench_cleanup() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do stop_pid "$pid" 3; done
}

# free_port: prints a TCP port nothing on this host listens on. Another process
# may still take it before we bind, so callers retry a failed start.
free_port() {
  local used port i
  used=$(ss -Htan 2>/dev/null | awk '{n=split($4,a,":"); print a[n]}' | sort -u)
  for ((i = 0; i < 200; i++)); do
    port=$((20000 + RANDOM % 40000))
    if ! grep -qx "$port" <<<"$used"; then
      echo "$port"
      return 0
    fi
  done
  die "no free port found"
}

# wait_log_port LOGFILE REGEX PID TIMEOUT_S: waits until LOGFILE has a line that
# matches the extended REGEX, whose first parenthesised group is a port, and
# prints the port. Fails if PID exits or TIMEOUT_S passes first.
wait_log_port() {
  local logfile=$1 re=$2 pid=$3 timeout=$4 port
  local deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    port=$(sed -nE "s/.*${re}.*/\\1/p" "$logfile" 2>/dev/null | head -n1)
    if [[ -n $port ]]; then
      echo "$port"
      return 0
    fi
    alive "$pid" || break
    sleep 0.02
  done
  log "no readiness line in $logfile:"
  tail -n 20 "$logfile" >&2
  return 1
}

# wait_http_ok URL BODY PID TIMEOUT_S: polls until POST URL with the JSON BODY
# answers 200 (the target proxies to a replica end to end). Fails if PID exits.
wait_http_ok() {
  local url=$1 body=$2 pid=$3 timeout=$4 code
  local deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 \
      -H 'Content-Type: application/json' -d "$body" "$url" 2>/dev/null || true)
    [[ $code == 200 ]] && return 0
    alive "$pid" || return 1
    sleep 0.05
  done
  return 1
}

# exit_text PID: waits for the dead child PID and prints how it ended.
exit_text() {
  local rc=0
  wait "$1" 2>/dev/null || rc=$?
  if ((rc > 128)); then
    echo "killed by signal $((rc - 128)) ($(kill -l $((rc - 128)) 2>/dev/null || echo '?'))"
  else
    echo "exited with status $rc"
  fi
}

# cpu_ticks PID...: prints utime+stime of the given processes, in clock ticks
# (/proc/PID/stat fields 14 and 15; a process's figure covers all its threads).
cpu_ticks() {
  local pid total=0 t
  for pid in "$@"; do
    # Fields after the ")" that ends comm: state is $1, utime $12, stime $13.
    t=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}')
    total=$((total + ${t:-0}))
  done
  echo "$total"
}

# cpu_busy_snapshot CPUS: prints "busy total" jiffies summed over a taskset-style
# CPU list ("1", "1-3", "0,2"; repeats count once) from /proc/stat, counting every
# process on the box. busy = user + nice + system + irq + softirq, the states a
# process's utime+stime is charged in; total adds idle, iowait and steal.
cpu_busy_snapshot() {
  awk -v list="$1" '
    BEGIN {
      n = split(list, parts, ",")
      for (i = 1; i <= n; i++) {
        if (split(parts[i], r, "-") == 2) { for (c = r[1]; c <= r[2]; c++) want["cpu" c] = 1 }
        else want["cpu" parts[i]] = 1
      }
    }
    $1 in want { busy += $2 + $3 + $4 + $7 + $8; total += $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }
    END { print busy + 0, total + 0 }' /proc/stat
}

# stream_ttft_ms PORT BODY: sends one streaming chat request and prints the
# milliseconds from sending it to the first SSE "data:" line the client can
# read ("-" if none came). A proxy that buffers or corks the stream shows here,
# not in wrk's latency, which is the time to the end of the stream.
# bash reads the socket itself (/dev/tcp). The request goes out in ONE write
# through the external printf: bash's builtin writes line by line, and those
# small segments meet Nagle and delayed ACKs (HAProxy then showed +40 ms).
# The figure includes starting that printf (well under 1 ms on an idle CPU).
stream_ttft_ms() {
  local port=$1 body=$2 fd req t0 first="" line
  printf -v req 'POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
    "${#body}" "$body"
  exec {fd}<>"/dev/tcp/127.0.0.1/$port" || {
    echo "-"
    return 0
  }
  t0=$EPOCHREALTIME
  /usr/bin/printf '%s' "$req" >&"$fd"
  while IFS= read -r -t 30 -u "$fd" line; do
    if [[ -z $first && $line == data:* ]]; then first=$EPOCHREALTIME; fi
  done
  exec {fd}>&-
  if [[ -z $first ]]; then
    echo "-"
  else
    awk -v a="$t0" -v b="$first" 'BEGIN { printf "%.1f\n", (b - a) * 1000 }'
  fi
}

# fill_template IN OUT KEY=VALUE...: copies IN to OUT replacing each @KEY@.
fill_template() {
  local in=$1 out=$2 kv args=()
  shift 2
  for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
  sed "${args[@]}" "$in" >"$out"
  if grep -q '@[A-Z_0-9]*@' "$out"; then die "unfilled placeholder in $out"; fi
}

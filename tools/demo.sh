#!/usr/bin/env bash
# make demo: two simulated vLLM replicas behind tokenrelay on 127.0.0.1:8000.
# Streams one chat request so you can watch tokens arrive, then keeps serving
# in the foreground until Ctrl-C, and stops every process it started.
set -euo pipefail

build=${1:-build}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
port=${DEMO_PORT:-8000}
admin_port=${DEMO_ADMIN_PORT:-9100}
sim_ports=(${DEMO_SIM_PORTS:-8101 8102})
run=$(mktemp -d /tmp/tokenrelay-demo.XXXXXX)
pids=()

cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
  echo "demo stopped."
}
trap cleanup EXIT INT TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$port" "$admin_port" "${sim_ports[@]}"; do
  if port_busy "$p"; then
    echo "demo: port $p is in use; set DEMO_PORT / DEMO_ADMIN_PORT / DEMO_SIM_PORTS" >&2
    exit 1
  fi
done

wait_for() {  # wait_for FILE PATTERN
  for _ in $(seq 1 100); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "demo: timed out waiting for '$2' in $1:" >&2
  cat "$1" >&2
  exit 1
}

# Two replicas of a small, fast-ish simulated model (speed 1 = realistic step times).
i=0
for p in "${sim_ports[@]}"; do
  "$build/vllm-sim" --host 127.0.0.1 --port "$p" --model demo-model >"$run/sim$i.log" 2>&1 &
  pids+=($!)
  wait_for "$run/sim$i.log" "listening on"
  i=$((i + 1))
done

cat >"$run/tokenrelay.ini" <<INI
; Demo configuration written by tools/demo.sh
[proxy]
listen = 127.0.0.1:$port
workers = auto
io = auto

[admin]
listen = 127.0.0.1:$admin_port

[backend sim0]
url = http://127.0.0.1:${sim_ports[0]}

[backend sim1]
url = http://127.0.0.1:${sim_ports[1]}
INI

"$build/tokenrelay" --config "$run/tokenrelay.ini" &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.05
done

cat <<TXT

tokenrelay is up on http://127.0.0.1:$port with 2 simulated replicas.
Streaming one chat completion (tokens appear as the engine steps):

TXT
curl -sN "http://127.0.0.1:$port/v1/chat/completions" \
  -H 'Content-Type: application/json' \
  -d '{"model":"demo-model","stream":true,"max_tokens":40,"stream_options":{"include_usage":true},
       "messages":[{"role":"user","content":"Tell me about load balancers."}]}' |
  while IFS= read -r line; do
    case "$line" in
      "data: [DONE]"*) echo; echo "[DONE]" ;;
      *'"usage":{'*) echo; echo "usage: ${line#*\"usage\":}" ;;
      *'"content":"'*)
        tok=${line#*\"content\":\"}
        tok=${tok%%\",\"*}
        tok=${tok%\"\}*}
        printf '%b' "${tok//\\\"/\"}"
        ;;
    esac
  done

cat <<TXT

Try more (in another terminal):
  curl -N http://127.0.0.1:$port/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model":"demo-model","stream":true,"messages":[{"role":"user","content":"hi"}]}'
  curl http://127.0.0.1:$port/v1/models
  curl http://127.0.0.1:$admin_port/metrics

Serving in the foreground; press Ctrl-C to stop everything.
TXT
if [[ -n "${DEMO_EXIT_AFTER:-}" ]]; then  # for tests: stop after N seconds
  sleep "$DEMO_EXIT_AFTER"
  exit 0
fi
wait

#!/usr/bin/env bash
# Runs every libFuzzer target of a fuzz build for a bounded time.
# Usage: tests/fuzz/run.sh BUILD_DIR [SECONDS] [TARGET...]
#   BUILD_DIR  a build configured with -Dfuzz=true (see `make fuzz`)
#   SECONDS    per target (default 60)
#   TARGET     request response sse prom config (default: all, in that order)
# Each target mutates a copy of its checked-in corpus in a temporary directory
# (so tests/fuzz/<target>/corpus never grows), with its dictionary when there
# is one. Stops at the first crash, says where the crashing input was saved,
# and exits 1. Exits 0 when every target ran its time without a crash.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build=${1:?usage: tests/fuzz/run.sh BUILD_DIR [SECONDS] [TARGET...]}
seconds=${2:-60}
shift $(($# >= 2 ? 2 : 1))
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=(request response sse prom config)
fi
if ! [[ $seconds =~ ^[0-9]+$ ]] || [[ $seconds -eq 0 ]]; then
  echo "run.sh: SECONDS must be a positive integer, got '$seconds'" >&2
  exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/tokenrelay-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Crashing inputs outlive the temporary directory.
crash_dir=${FUZZ_CRASH_DIR:-$build/fuzz-crashes}
mkdir -p "$crash_dir"

# halt_on_error: a UBSan report is a crash, not a warning.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

jobs=()
for t in "${targets[@]}"; do
  exe=$build/tests/fuzz/fuzz_$t
  if [[ ! -x $exe ]]; then
    echo "run.sh: $exe not found: configure $build with -Dfuzz=true and build it" >&2
    exit 2
  fi
  jobs+=("$t")
done

for t in "${jobs[@]}"; do
  exe=$build/tests/fuzz/fuzz_$t
  corpus=$work/$t
  mkdir -p "$corpus"
  cp -R "$here/$t/corpus/." "$corpus/"
  args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$crash_dir/$t-")
  if [[ -f $here/$t/$t.dict ]]; then
    args+=(-dict="$here/$t/$t.dict")
  fi
  log=$work/$t.log
  echo "== fuzz_$t: ${seconds}s, corpus $(find "$corpus" -type f | wc -l) files"
  set +e
  "$exe" "${args[@]}" "$corpus" >"$log" 2>&1
  rc=$?
  set -e
  # The last status line: executions, exec/s, coverage, corpus.
  grep -E '^#[0-9]+' "$log" | tail -n 1 || true
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
  if [[ $rc -ne 0 ]]; then
    echo "run.sh: fuzz_$t failed (exit $rc); the end of its log:" >&2
    tail -n 60 "$log" >&2
    artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | sed 's/^Test unit written to //')
    if [[ -n $artifact ]]; then
      cp "$log" "$artifact.log"
      echo "run.sh: crashing input saved to $artifact (log: $artifact.log)" >&2
      echo "run.sh: reproduce with: $exe $artifact" >&2
      echo "run.sh: minimize with:  $exe -minimize_crash=1 -runs=100000 $artifact" >&2
    fi
    exit 1
  fi
done
echo "run.sh: ${#jobs[@]} target(s), ${seconds}s each, no crash"

#!/usr/bin/env bash
# Installs the Debian 12 packages tokenrelay builds, tests and benchmarks with.
# Idempotent: asks dpkg what is already there and installs only what is missing.
# Usage: tools/install-deps.sh [--bench]   (--bench adds nginx and haproxy)
set -euo pipefail

pkgs=(
  build-essential g++ clang meson ninja-build pkg-config
  liburing-dev libmimalloc-dev catch2 node-llhttp libinih-dev libsimdjson-dev libsystemd-dev
  libssl-dev libxxhash-dev
  wrk curl python3 clang-format
)
if [[ "${1:-}" == "--bench" ]]; then
  pkgs+=(nginx-light haproxy)
fi
if [[ "${1:-}" == "--fuzz" ]]; then
  pkgs+=(libclang-rt-14-dev)
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
sudo=""
if [[ $(id -u) -ne 0 ]]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq || $sudo apt-get update
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"

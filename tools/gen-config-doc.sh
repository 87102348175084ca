#!/usr/bin/env bash
# Regenerates the key reference table at the end of docs/CONFIG.md from the
# config key table (tokenrelay --config-reference). unit_config checks it.
set -euo pipefail
build=${1:-build}
cd "$(dirname "$0")/.."
doc=docs/CONFIG.md
head=$(grep -n '^| Section | Key |' "$doc" | cut -d: -f1)
{ head -n $((head - 1)) "$doc"; "$build/tokenrelay" --config-reference; } > "$doc.new"
mv "$doc.new" "$doc"

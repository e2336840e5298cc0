#!/bin/bash
# Latency with and without a control-plane change every 100 ms, alternating.
# Usage (repo root, server running on loadtest/sms-ingress.toml, after `sms-loadtest setup`):
#   loadtest/scripts/swaps.sh [RATE=7000] [SECONDS=15] [ROUNDS=3]
# Each change is a PATCH of the integration's notes through the admin socket: one
# accepted change, one snapshot swap. Prints both runs' table rows and the change times.
set -eu
cd "$(dirname "$0")/../.."
L=./target/release/sms-loadtest
RATE=${1:-7000}; DUR=${2:-15}; ROUNDS=${3:-3}
ID=$(python3 -c "import json; print(json.load(open('data/loadtest/plan.json'))['integration_id'])")
FLAG=$(mktemp); OUT=$(mktemp); rm -f "$FLAG"
patch_loop() {
  local n=0
  while [ -e "$FLAG" ]; do
    n=$((n+1))
    curl -s -o /dev/null -w "%{http_code} %{time_total}\n" --unix-socket data/loadtest/admin.sock -X PATCH \
      -H "Authorization: Bearer loadtest-admin-token" -H "Content-Type: application/json" \
      -d "{\"notes\":\"swap $n\"}" "http://admin/api/v1/integrations/$ID" >> "$OUT"
    sleep 0.1
  done
}
for r in $(seq 1 "$ROUNDS"); do
  echo -n "no swaps  "; $L run --rate "$RATE" --duration "$DUR" --connections 256 --quiet 2>&1 | grep "/s h"
  : > "$OUT"; touch "$FLAG"; patch_loop & sleep 0.2
  echo -n "swaps     "; $L run --rate "$RATE" --duration "$DUR" --connections 256 --quiet 2>&1 | grep "/s h"
  rm -f "$FLAG"; wait
  echo "  changes: $(grep -c '^200' "$OUT") ok of $(wc -l < "$OUT"); median $(sort -k2 -n "$OUT" | awk '{a[NR]=$2} END {print a[int(NR/2)+1]}') s"
done
rm -f "$OUT"

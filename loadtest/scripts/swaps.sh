#!/bin/bash
# Latency with and without a control-plane change every 100 ms, alternating.
# Usage (repo root, server running on loadtest/sms-ingress.toml, after `sms-loadtest setup`):
#   loadtest/scripts/swaps.sh [RATE=7000] [SECONDS=15] [ROUNDS=3] [MODE=notes|number]
# Each change is a PATCH of the integration's notes through the admin socket (patcher.py,
# one keep-alive connection), or with MODE=number an import or delete of +14159999990,
# a number the load does not send to: one accepted change, one snapshot swap. Prints both runs'
# table rows and the change times. From 10,000 numbers on the changes are journaled, and
# the service writes them into the state file 10 s after the last one: the script waits
# for that fold before the next round, so it never lands in a "no swaps" run.
set -eu
cd "$(dirname "$0")/../.."
L=./target/release/sms-loadtest
RATE=${1:-7000}; DUR=${2:-15}; ROUNDS=${3:-3}; MODE=${4:-notes}
ID=$(python3 -c "import json; print(json.load(open('data/loadtest/plan.json'))['integration_id'])")
NUMBER=+14159999990; QUEUE=loadtest-0
FLAG=$(mktemp); OUT=$(mktemp); rm -f "$FLAG"
folds() { curl -s 127.0.0.1:18090/metrics | awk '/^sms_ingress_control_journal_folds_total/ {print $2}' | tail -1; }
for r in $(seq 1 "$ROUNDS"); do
  echo -n "no swaps  "; $L run --rate "$RATE" --duration "$DUR" --connections 256 --quiet 2>&1 | grep "/s h"
  : > "$OUT"; touch "$FLAG"; F0=$(folds)
  python3 loadtest/scripts/patcher.py data/loadtest/admin.sock loadtest-admin-token "$ID" 100 "$FLAG" "$OUT" "$MODE" "$NUMBER" "$QUEUE" &
  sleep 0.2
  echo -n "swaps     "; $L run --rate "$RATE" --duration "$DUR" --connections 256 --quiet 2>&1 | grep "/s h"
  rm -f "$FLAG"; wait
  echo "  changes: $(grep -c '^20[014]' "$OUT") ok of $(wc -l < "$OUT"); median $(sort -k2 -n "$OUT" | awk '{a[NR]=$2} END {print a[int(NR/2)+1]}') s, p90 $(sort -k2 -n "$OUT" | awk '{a[NR]=$2} END {print a[int(NR*0.9)+1]}') s"
  if [ -s data/loadtest/state.json.journal ]; then
    for _ in $(seq 1 60); do [ "$(folds)" != "$F0" ] && break; sleep 1; done
    echo "  journal folded into the state file: $([ "$(folds)" != "$F0" ] && echo yes || echo "not within 60 s")"
  fi
done
rm -f "$OUT"

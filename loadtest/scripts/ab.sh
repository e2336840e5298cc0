#!/bin/bash
# Two sms-ingress binaries alternated on the same state, each freshly started:
# a closed-loop run and an open-loop run per start. Usage (repo root, after `setup`):
#   loadtest/scripts/ab.sh OLD_BINARY NEW_BINARY [PAIRS=3] [RATE=10000]
set -eu
cd "$(dirname "$0")/../.."
L=./target/release/sms-loadtest
OLD=$1; NEW=$2; PAIRS=${3:-3}; RATE=${4:-10000}
run_one() {
  pkill -f "sms-ingress serve" || true; sleep 0.5; rm -rf data/loadtest/spool
  "$1" serve --config loadtest/sms-ingress.toml > "data/serve-$2.log" 2>&1 &
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18080/readyz >/dev/null 2>&1 && break; sleep 0.2; done
  echo -n "$2 closed "; $L run --duration 8 --connections 256 --quiet 2>&1 | grep "closed h"
  echo -n "$2 open   "; $L run --rate "$RATE" --duration 8 --connections 256 --quiet 2>&1 | grep "/s h"
}
for _ in $(seq 1 "$PAIRS"); do run_one "$OLD" old; run_one "$NEW" new; done
pkill -f "sms-ingress serve" || true

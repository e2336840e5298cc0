#!/bin/bash
# Delivery keeps up (SPEC 7): one sms-ingress without a route and one whose queues are
# delivered to `sms-loadtest sink-server` (answering at once), the same 10k numbers each,
# closed-loop rounds alternated between them. Reports each round's ingest throughput, the
# routed server's delivery lag (largest sample during the round, and after it), and its
# end-to-end latency (Twilio POST -> 2xx at routing). Usage, from the repository root
# after `cargo build --release --workspace`:
#   loadtest/scripts/delivery.sh [ROUNDS=3] [SECONDS=8] [CONNECTIONS=256] [NUMBERS=10000]
# Environment: CONCURRENCY (the route's, 64), SINK_THREADS (the sink-server's, 1), RATE
# (open loop at RATE/s instead of closed loop).
set -eu
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}; SECS=${2:-8}; CONNS=${3:-256}; NUMBERS=${4:-10000}
CONCURRENCY=${CONCURRENCY:-64}; SINK_THREADS=${SINK_THREADS:-1}; RATE=${RATE:-}
L=./target/release/sms-loadtest; S=./target/release/sms-ingress
D=data/delivery-bench; rm -rf "$D"; mkdir -p "$D"
TOKEN=loadtest-admin-token
cleanup() { pkill -f "sms-ingress serve --config $D" || true; pkill -f "sms-loadtest sink-server" || true; }
trap cleanup EXIT
printf 'whsec_%s\n' "$(head -c 32 /dev/urandom | base64)" > "$D/route.whsec"
$L sink-server --listen 127.0.0.1:18400 --secret-file "$D/route.whsec" --out "$D/delivered.ndjson" --threads "$SINK_THREADS" > "$D/sink.log" 2>&1 &
for side in plain routed; do
  mkdir -p "$D/$side"; $S keygen > "$D/$side/master.key"
  port=$([ $side = plain ] && echo 18180 || echo 18280); mport=$((port + 10))
  sed -e "s#data/loadtest#$D/$side#g" -e "s#127.0.0.1:18080#127.0.0.1:$port#" -e "s#127.0.0.1:18090#127.0.0.1:$mport#" \
    loadtest/sms-ingress.toml > "$D/$side.toml"
  if [ $side = routed ]; then
    printf '\n[delivery]\ndir = "%s/routed/delivery"\n\n[[delivery.routes]]\nname = "bench"\nqueue = "loadtest-org/*"\nurl = "http://127.0.0.1:18400/sms"\nsecret_file = "%s/route.whsec"\nconcurrency = %s\n' "$D" "$D" "$CONCURRENCY" >> "$D/$side.toml"
  fi
  $S serve --config "$D/$side.toml" > "$D/$side.log" 2>&1 &
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
  SMS_LOADTEST_ADMIN_TOKEN=$TOKEN $L setup --config "$D/$side.toml" --numbers "$NUMBERS" --plan "$D/$side/plan.json" >/dev/null 2>&1
done
# CPU seconds (user + system) a process has used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
pid_of() { pgrep -f "$1" | head -1; }
SINK_PID=$(pid_of "sms-loadtest sink-server")
lag() { curl -s http://127.0.0.1:18290/metrics | awk '/^sms_ingress_delivery_lag_records/ {print $2}'; }
for r in $(seq 1 "$ROUNDS"); do
  for side in plain routed; do
    : > "$D/lag.txt"
    if [ $side = routed ]; then (while true; do lag >> "$D/lag.txt"; sleep 0.5; done) & SAMPLER=$!; fi
    extra=(); [ -n "$RATE" ] && extra=(--rate "$RATE"); [ $side = routed ] && extra+=(--delivered "$D/delivered.ndjson" --delivery-wait 30)
    SERVER_PID=$(pid_of "sms-ingress serve --config $D/$side.toml")
    c0=$(cpu "$SERVER_PID"); k0=$(cpu "$SINK_PID")
    out=$($L run --plan "$D/$side/plan.json" --duration "$SECS" --connections "$CONNS" --quiet --json \
      --acked "$D/$side/acked.txt" "${extra[@]}")
    if [ $side = routed ]; then kill $SAMPLER; wait $SAMPLER 2>/dev/null || true; fi
    rps=$(echo "$out" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["throughput_rps"]))')
    n=$(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["answered"])')
    # CPU per 1,000 answered requests (the routed side's includes delivering them).
    per=$(python3 -c "print('server %.0f ms, sink-server %.0f ms' % (($(cpu "$SERVER_PID") - $c0) * 1e6 / max($n, 1), ($(cpu "$SINK_PID") - $k0) * 1e6 / max($n, 1)))")
    if [ $side = routed ]; then
      d=$(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin)["delivery"]; e=d["e2e_ms"]; print("lost=%d out_of_order=%d e2e_ms p50=%d p90=%d p99=%d max=%d" % (d["lost"], d["out_of_order"], e["p50"], e["p90"], e["p99"], e["max"]))')
      max=$(sort -n "$D/lag.txt" | tail -1); after=$(lag)
      echo "round $r routed: $rps/s  lag_records max=${max:-0} after=${after}  $d  cpu per 1k: $per"
    else
      echo "round $r plain:  $rps/s  cpu per 1k: $per"
    fi
  done
done

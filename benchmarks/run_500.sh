#!/usr/bin/env bash
# The 500-participant benchmark against a local SFU, as quoted in the README:
#   [MAX_FORWARD_LATENCY_MS=50] [WORKERS=1] [PORT_RANGE=1] benchmarks/run_500.sh OUT_DIR [MAX_CPU_LOAD] [loadtest flags...]
# Starts the SFU on 127.0.0.1:17880 (fresh key, media on the single UDP port rtc.udp_port 40000,
# where the armed compiled receive path applies; PORT_RANGE=1 gives each peer connection its own
# socket from UDP 40000-49999 instead, the old layout; logging warn,
# limits.max_cpu_load MAX_CPU_LOAD, default 0.8, and limits.max_forward_latency_ms
# MAX_FORWARD_LATENCY_MS, default 50; 0 turns either off; rtc.workers WORKERS, default 1), runs
# `python -m loadtest --preset 500` against it while benchmarks/machine_sampler.py
# records OUT_DIR/machine.json, keeps the SFU's final /metrics in OUT_DIR/sfu-metrics.txt,
# stops the SFU by its PID and prints benchmarks/summarise_500.py's summary (also written to
# OUT_DIR/summary.json): subscribers served within loss < 1 % and p99 < 50 ms, what saturated.
set -euo pipefail
out=${1:?usage: benchmarks/run_500.sh OUT_DIR [MAX_CPU_LOAD] [loadtest flags...]}
max_cpu_load=${2:-0.8}
max_forward_latency_ms=${MAX_FORWARD_LATENCY_MS:-50}
workers=${WORKERS:-1}
if [ "${PORT_RANGE:-0}" = 1 ]; then
  media="port_range_start: 40000, port_range_end: 49999"
else
  media="udp_port: 40000"
fi
shift $(( $# >= 2 ? 2 : 1 ))
cd "$(dirname "$0")/.."
py=.venv/bin/python
work=$(mktemp -d)
key=APIbench500
secret=$(openssl rand -hex 32)
cat > "$work/sfu.yaml" <<YAML
port: 17880
bind_addresses: ["127.0.0.1"]
keys: {$key: $secret}
rtc: {$media, workers: $workers}
logging: {level: warn}
limits: {max_cpu_load: $max_cpu_load, max_forward_latency_ms: $max_forward_latency_ms,
         max_sessions_per_ip: 0}  # every load-test client is 127.0.0.1
YAML
$py -m sfu --config "$work/sfu.yaml" > "$work/sfu.log" 2>&1 &
sfu=$!
trap 'kill "$sfu" 2>/dev/null || true' EXIT
healthy=
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:17880/healthz > /dev/null && { healthy=1; break; }
  sleep 0.2
done
if [ -z "$healthy" ]; then
  echo "the SFU did not become healthy in 20 s; its log:" >&2
  cat "$work/sfu.log" >&2
  exit 1
fi
$py -m loadtest --preset 500 --url ws://127.0.0.1:17880 --api-key "$key" --api-secret "$secret" \
  --sfu-pid "$sfu" --out "$out" "$@" &
loadtest=$!
$py benchmarks/machine_sampler.py --sfu-pid "$sfu" --loadtest-pid "$loadtest" \
  --out "$out/machine.json" --max-duration 900 &
sampler=$!
status=0
wait "$loadtest" || status=$?
wait "$sampler" || true
curl -sf http://127.0.0.1:17880/metrics > "$out/sfu-metrics.txt" || true
kill "$sfu" 2>/dev/null || true
wait "$sfu" 2>/dev/null || true
echo "SFU log: $work/sfu.log"
if [ -f "$out/report.json" ]; then
  $py benchmarks/summarise_500.py "$out" | tee "$out/summary.json"
fi
exit "$status"

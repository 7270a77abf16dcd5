#!/usr/bin/env bash
# End-to-end load measurement of the whole pipeline on this machine, every service in its own
# process (release build) against the local stack:
#   1. closed loop at rising concurrency → the highest sustained throughput (max req/s);
#   2. open loop at 80% of that rate → end-to-end p50/p99 and the pipeline's own overhead;
#   3. each service's peak RSS (VmHWM) over the whole run.
# Uses its own namespace, so it neither sees nor disturbs other data on the stack. Stops every
# process it started (by PID) when done.
#
# Uses its own ports (api 18080, identity 18090, ops 1910x), so it runs beside the demo.
#
# Usage: benches/pipeline_load.sh [duration per step, default 20s]
# Env:   IMGPIPE_LOAD_QUERY  (default "width=512&height=512&format=jpeg&quality=80")
#        IMGPIPE_LOAD_IMAGES folder of images to send (default: the benchmark photos)
#        IMGPIPE_BIN         an imgpipe binary to use instead of building the release one
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
step_duration="${1:-20s}"
query="${IMGPIPE_LOAD_QUERY:-width=512&height=512&format=jpeg&quality=80}"
ns="load-$(date +%s)."
work="$root/.stack/load/${ns%.}"
mkdir -p "$work"
bin="${IMGPIPE_BIN:-$root/target/release/imgpipe}"
token="load-admin-token-0123456789"
api="127.0.0.1:18080"
identity="127.0.0.1:18090"

[ -n "${IMGPIPE_BIN:-}" ] || cargo build --release --locked --bin imgpipe >&2
photos="${IMGPIPE_LOAD_IMAGES:-$(benches/photos.sh)}"
compose/local/stack up >&2

export IMGPIPE_KAFKA__NAMESPACE="$ns" IMGPIPE_CLICKHOUSE__DATABASE="load_$(date +%s)"
export IMGPIPE_IDENTITY__ADMIN_TOKEN="$token" IMGPIPE_TELEMETRY__LOG_FORMAT=json RUST_LOG=warn
export IMGPIPE_API__LISTEN="$api" IMGPIPE_IDENTITY__LISTEN="$identity"
"$bin" topics ensure >/dev/null

declare -A pids
start() {
  local service="$1" port="$2"
  IMGPIPE_OPS__LISTEN="127.0.0.1:$port" "$bin" "$service" >"$work/$service.log" 2>&1 &
  pids[$service]=$!
}
stop_all() {
  for service in "${!pids[@]}"; do kill -TERM "${pids[$service]}" 2>/dev/null || true; done
  for service in "${!pids[@]}"; do wait "${pids[$service]}" 2>/dev/null || true; done
}
trap stop_all EXIT

start identity 19102
start aggregator 19104
start resizer 19103
start api 19101
for port in 19102 19104 19103 19101; do
  for _ in $(seq 1 300); do curl -sf "127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.2; done
  curl -sf "127.0.0.1:$port/readyz" >/dev/null || { echo "service on $port not ready" >&2; exit 1; }
done

tenant="$(curl -sf -X POST $identity/admin/v1/tenants -H "Authorization: Bearer $token" \
  -H 'Content-Type: application/json' -d '{"name":"load","rate_limit_per_second":100000,"burst":100000}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
key="$(curl -sf -X POST "$identity/admin/v1/tenants/$tenant/keys" -H "Authorization: Bearer $token" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')"
sleep 1

best_rate=0
for concurrency in 2 4 8 16; do
  echo "== closed loop, concurrency $concurrency" >&2
  "$bin" loadgen --url "http://$api" --key "$key" --images "$photos" --query "$query" --concurrency "$concurrency" \
    --duration "$step_duration" | tee "$work/closed-$concurrency.txt"
  rate="$(sed -n 's/.*(\([0-9]*\)[0-9.]* ok = \([0-9.]*\) ok\/s).*/\2/p' "$work/closed-$concurrency.txt" | cut -d. -f1)"
  [ -n "$rate" ] && [ "$rate" -gt "$best_rate" ] && best_rate="$rate"
done
target=$(( best_rate * 8 / 10 ))
if [ "$target" -gt 0 ]; then
  echo "== open loop at 80% of $best_rate req/s = $target req/s" >&2
  "$bin" loadgen --url "http://$api" --key "$key" --images "$photos" --query "$query" --rate "$target" --concurrency 64 \
    --duration "$step_duration" | tee "$work/open-80.txt"
else
  echo "== no open-loop step: under 1 req/s sustained (heavy requests?)" >&2
fi

echo
echo "max sustained: $best_rate req/s (closed loop); open loop at $target req/s above"
echo "peak RSS (VmHWM) per service:"
for service in identity api resizer aggregator; do
  printf '  %-11s %s\n' "$service" "$(grep VmHWM "/proc/${pids[$service]}/status" | awk '{printf "%.0f MiB", $2/1024}')"
done
echo "logs and reports: $work"

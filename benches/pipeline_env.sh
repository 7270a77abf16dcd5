# Shared by the pipeline benches (sourced, not run): builds or takes the release binary, brings the
# local stack up, starts every service in its own process on the benches' own ports (api 18080,
# identity 18090, ops 1910x: they run beside the demo's 8080/8090) in a fresh namespace and
# ClickHouse database, and creates a tenant. Afterwards: $bin, $api, $key, $work, pids[service].
# Every process started here is stopped by PID when the calling script exits.

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
ns="${bench_name:-bench}-$(date +%s)."
work="$root/.stack/load/${ns%.}"
mkdir -p "$work"
bin="${IMGPIPE_BIN:-$root/target/release/imgpipe}"
loadgen="${IMGPIPE_LOADGEN_BIN:-$root/target/release/imgpipe-loadgen}"
token="load-admin-token-0123456789"
api="127.0.0.1:18080"
identity="127.0.0.1:18090"

[ -n "${IMGPIPE_BIN:-}" ] || cargo build --release --locked --bin imgpipe >&2
[ -n "${IMGPIPE_LOADGEN_BIN:-}" ] || cargo build --release --locked -p imgpipe-loadgen >&2
compose/local/stack up >&2

export IMGPIPE_KAFKA__NAMESPACE="$ns" IMGPIPE_CLICKHOUSE__DATABASE="${ns%.}"
IMGPIPE_CLICKHOUSE__DATABASE="${IMGPIPE_CLICKHOUSE__DATABASE//[-.]/_}"
export IMGPIPE_IDENTITY__ADMIN_TOKEN="$token" IMGPIPE_TELEMETRY__LOG_FORMAT=json RUST_LOG=warn
export IMGPIPE_API__LISTEN="$api" IMGPIPE_IDENTITY__LISTEN="$identity"
"$bin" topics ensure >/dev/null

declare -A pids
start_service() {
  local service="$1" port="$2"
  IMGPIPE_OPS__LISTEN="127.0.0.1:$port" "$bin" "$service" >"$work/$service.log" 2>&1 &
  pids[$service]=$!
}
stop_services() {
  for service in "${!pids[@]}"; do kill -TERM "${pids[$service]}" 2>/dev/null || true; done
  for service in "${!pids[@]}"; do wait "${pids[$service]}" 2>/dev/null || true; done
}
trap stop_services EXIT

start_service identity 19102
start_service aggregator 19104
start_service resizer 19103
start_service api 19101
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

# Each service's peak resident memory (VmHWM) so far, one line each.
print_peak_rss() {
  for service in identity api resizer aggregator; do
    printf '  %-11s %s\n' "$service" "$(grep VmHWM "/proc/${pids[$service]}/status" | awk '{printf "%.0f MiB", $2/1024}')"
  done
}

# CPU seconds (user + system) used so far by a process: a service name, or a PID.
cpu_seconds() {
  local pid="${pids[$1]:-$1}"
  awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / hz}' "/proc/$pid/stat"
}

# Marks the start of a measured step: remembers every service's (and the stack's) CPU so far.
declare -A cpu_mark
mark_cpu() {
  for service in "${!pids[@]}"; do cpu_mark[$service]="$(cpu_seconds "$service")"; done
  for server in kafka registry clickhouse; do
    [ -f ".stack/$server.pid" ] && cpu_mark[$server]="$(cpu_seconds "$(cat ".stack/$server.pid")")"
  done
  cpu_mark_at="$(date +%s.%N)"
}

# CPU per answered request since mark_cpu, per process: the inputs of the capacity model.
print_cpu_per_request() {
  local requests="$1" elapsed
  elapsed="$(python3 -c "import time; print(time.time() - $cpu_mark_at)")"
  printf '  %-11s %14s %12s\n' process "CPU µs/request" "cores busy"
  for name in api resizer aggregator identity kafka registry clickhouse; do
    [ -n "${cpu_mark[$name]:-}" ] || continue
    local now
    if [ -n "${pids[$name]:-}" ]; then now="$(cpu_seconds "$name")"; else now="$(cpu_seconds "$(cat ".stack/$name.pid")")"; fi
    python3 -c "
used = $now - ${cpu_mark[$name]}
print(f'  {\"$name\":<11} {used / $requests * 1e6:14.0f} {used / $elapsed:12.2f}')"
  done
}

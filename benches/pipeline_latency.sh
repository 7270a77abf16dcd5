#!/usr/bin/env bash
# The pipeline against the Kafka floor, in one run on this machine: every service in its own
# process (release build) against the local stack, a 16×16 PNG (so resizing costs ~0.1 ms and what
# is measured is the pipeline), and a bare rdkafka request-reply on the same broker
# (`benches/kafka_floor.rs`: two hops, idempotent, acks=all, linger 0, no transactions).
#   1. concurrency 1: end-to-end p50/p99 of the pipeline and of the floor, and their ratios;
#   2. the mean of every Server-Timing stage (where each millisecond goes);
#   3. with --capacity: closed loop at concurrency 64 (the ceiling), then an open-loop sweep to
#      the tipping point (p99 > 50 ms or errors) with an HTML report, and each service's peak RSS.
#
# Usage: benches/pipeline_latency.sh [--capacity] [duration per step, default 20s]
# Env:   IMGPIPE_BIN  an imgpipe binary to use instead of building the release one
set -euo pipefail

capacity=false
if [ "${1:-}" = "--capacity" ]; then capacity=true; shift; fi
step_duration="${1:-20s}"
bench_name=latency
# Build the floor's bench binary before the services start: compiled between the steps, it held the
# run up for minutes on a cold build directory, and a build error surfaced only halfway through.
cargo bench --locked --bench kafka_floor --no-run >&2
# shellcheck source=benches/pipeline_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/pipeline_env.sh"

# A 16×16 RGB gradient PNG, written with the standard library only.
tiny="$work/tiny"
mkdir -p "$tiny"
python3 - "$tiny/16x16.png" <<'PY'
import struct, sys, zlib
w = h = 16
raw = b"".join(b"\0" + bytes(v for x in range(w) for v in (x * 16, y * 16, 128)) for y in range(h))
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) \
    + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
PY
query="width=8&format=png"

echo "== warm-up" >&2
"$loadgen" --url "http://$api" --key "$key" --images "$tiny" --query "$query" --concurrency 4 \
  --duration 5s >/dev/null
echo "== pipeline, concurrency 1" >&2
"$loadgen" --url "http://$api" --key "$key" --images "$tiny" --query "$query" --concurrency 1 \
  --duration "$step_duration" | tee "$work/concurrency-1.txt"
echo "== Kafka floor, concurrency 1" >&2
cargo bench --locked --bench kafka_floor 2>/dev/null | tee "$work/floor.txt"

# loadgen's summary row: "end to end  <p50> <p90> <p99> <max>" in ms.
p50="$(awk '/^end to end/ {print $4; exit}' "$work/concurrency-1.txt")"
p99="$(awk '/^end to end/ {print $6; exit}' "$work/concurrency-1.txt")"
floor_p50="$(sed -n 's/.*p50_ms=\([0-9.]*\).*/\1/p' "$work/floor.txt")"
floor_p99="$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' "$work/floor.txt")"
echo
echo "concurrency 1, 16x16 PNG          p50 ms    p99 ms"
printf '  pipeline (end to end)         %7s   %7s\n' "$p50" "$p99"
printf '  Kafka floor (two hops)        %7s   %7s\n' "$floor_p50" "$floor_p99"
python3 - "$p50" "$p99" "$floor_p50" "$floor_p99" <<'PY'
import sys
p50, p99, f50, f99 = map(float, sys.argv[1:])
print(f"  ratio (pipeline / floor)      {p50 / f50:6.2f}x   {p99 / f99:6.2f}x   (goal: <= 3x both)")
PY

if $capacity; then
  echo "== closed loop, concurrency 64 (the ceiling)" >&2
  mark_cpu
  "$loadgen" --url "http://$api" --key "$key" --images "$tiny" --query "$query" --concurrency 64 \
    --duration "$step_duration" | tee "$work/concurrency-64.txt"
  ceiling="$(sed -n 's/.*ok = \([0-9]*\)[0-9.]* ok\/s).*/\1/p' "$work/concurrency-64.txt")"
  echo "CPU per answered request at the ceiling (the load generator's own share not included):"
  print_cpu_per_request "$(sed -n 's/.*(\([0-9]*\) ok = .*/\1/p' "$work/concurrency-64.txt")"
  echo "peak RSS (VmHWM) per service, at the ceiling:"
  print_peak_rss
  # Open loop from a fifth of the ceiling up, 15% a step, until p99 > 50 ms or errors: the
  # capacity point is the last step that held.
  start=$(( ceiling / 5 ))
  echo "== open-loop sweep from $start req/s to the tipping point" >&2
  "$loadgen" --url "http://$api" --key "$key" --images "$tiny" --query "$query" --concurrency 256 \
    --rate "$start" --sweep --sweep-factor 1.15 --p99-limit 50ms --duration "$step_duration" \
    --report "$work/report" | tee "$work/sweep.txt"
  echo "report: $work/report/index.html"
fi
echo "logs and reports: $work"

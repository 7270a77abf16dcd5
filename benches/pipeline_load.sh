#!/usr/bin/env bash
# End-to-end load measurement of the whole pipeline on this machine, every service in its own
# process (release build) against the local stack:
#   1. closed loop at rising concurrency → the highest sustained throughput (max req/s);
#   2. open loop at 80% of that rate → end-to-end p50/p99 and the pipeline's own overhead;
#   3. each service's peak RSS (VmHWM) over the whole run;
#   4. the kernel alone on the same cores first (one process per core): the pipeline's ceiling,
#      and the share of it the pipeline delivers.
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

bench_name=load
step_duration="${1:-20s}"
query="${IMGPIPE_LOAD_QUERY:-width=512&height=512&format=jpeg&quality=80}"
# shellcheck source=benches/pipeline_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/pipeline_env.sh"
photos="${IMGPIPE_LOAD_IMAGES:-$(benches/photos.sh)}"

# The fleet's ceiling: the kernel alone on the same cores, one process per core, no pipeline.
cores="$(nproc)"
cargo build --release --locked -p processors --example kernel_files >&2
mapfile -t files < <(find "$photos" -maxdepth 1 -type f | sort)
echo "== kernel only: $cores processes x ${#files[@]} images x 3 runs" >&2
started="$(date +%s.%N)"
kernels=()
for _ in $(seq 1 "$cores"); do
  target/release/examples/kernel_files --runs 3 "$query" "${files[@]}" >/dev/null &
  kernels+=($!)
done
wait "${kernels[@]}"
kernel_rate="$(python3 -c "import time; print(int($cores * ${#files[@]} * 3 / (time.time() - $started)))")"
echo "kernel only: $kernel_rate images/s on $cores cores"

best_rate=0
for concurrency in 2 4 8 16; do
  echo "== closed loop, concurrency $concurrency" >&2
  "$loadgen" --url "http://$api" --key "$key" --images "$photos" --query "$query" --concurrency "$concurrency" \
    --duration "$step_duration" | tee "$work/closed-$concurrency.txt"
  rate="$(sed -n 's/.*(\([0-9]*\)[0-9.]* ok = \([0-9.]*\) ok\/s).*/\2/p' "$work/closed-$concurrency.txt" | cut -d. -f1)"
  [ -n "$rate" ] && [ "$rate" -gt "$best_rate" ] && best_rate="$rate"
done
target=$(( best_rate * 8 / 10 ))
if [ "$target" -gt 0 ]; then
  echo "== open loop at 80% of $best_rate req/s = $target req/s" >&2
  "$loadgen" --url "http://$api" --key "$key" --images "$photos" --query "$query" --rate "$target" --concurrency 64 \
    --duration "$step_duration" | tee "$work/open-80.txt"
else
  echo "== no open-loop step: under 1 req/s sustained (heavy requests?)" >&2
fi

echo
echo "max sustained: $best_rate req/s (closed loop); open loop at $target req/s above"
python3 -c "print(f'pipeline / kernel only: {$best_rate / $kernel_rate:.0%} of the fleet ceiling ($kernel_rate images/s)')"
echo "peak RSS (VmHWM) per service:"
print_peak_rss
echo "logs and reports: $work"

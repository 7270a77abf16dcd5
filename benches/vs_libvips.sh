#!/usr/bin/env bash
# Our resize kernel against libvips' vipsthumbnail on the same real photographs, both on one CPU
# core: every photo (1200–2400 px JPEG) → fit inside 512×512, JPEG Q80. Prints per-image times and
# the ratio vips / ours (above 1 means we are faster).
#
# Fairness:
# - vipsthumbnail runs with VIPS_CONCURRENCY=1 and converts the whole set in ONE invocation per
#   run (it accepts many files), timed by hyperfine; its process start-up, measured separately
#   (`vipsthumbnail --vips-version` loads and initialises libvips the same way), is subtracted
#   before dividing by the number of photos. That is the most favourable reading for vips; the raw
#   figure is printed too.
# - Both sides are pinned to the same core with taskset when it is available, so neither can
#   borrow a second core through helper threads.
# - Ours is criterion's mean for one pass over the whole set, divided by the number of photos.
#
# Needs: cargo, vipsthumbnail (libvips-tools), hyperfine, python3. Photos: benches/photos.sh.
set -euo pipefail

cd "$(dirname "$0")/.."
photos_dir="${IMGPIPE_PHOTOS_DIR:-$(benches/photos.sh)}"
export IMGPIPE_PHOTOS_DIR="$photos_dir"
mapfile -t photos < <(find "$photos_dir" -maxdepth 1 -name '*.jpg' | sort)
n=${#photos[@]}
[ "$n" -gt 0 ] || { echo "no photos in $photos_dir" >&2; exit 1; }

pin=()
if command -v taskset >/dev/null; then pin=(taskset -c "${BENCH_CPU:-0}"); fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== $n photos in $photos_dir"
for p in "${photos[@]}"; do printf '   %s  %s\n' "$(vipsheader -f width "$p")x$(vipsheader -f height "$p")" "$(basename "$p")"; done

echo "== ours: cargo bench --bench resize_kernel (criterion)"
"${pin[@]}" cargo bench --bench resize_kernel -- --noplot 'resize_kernel/' >"$work/criterion.log" 2>&1 \
  || { cat "$work/criterion.log" >&2; exit 1; }
grep -A3 "^resize_kernel/" "$work/criterion.log" || true
target_dir="${CARGO_TARGET_DIR:-target}"
estimates="$(find "$target_dir/criterion/resize_kernel" -path '*/new/estimates.json' | head -n1)"
[ -n "$estimates" ] || { echo "criterion estimates not found under $target_dir/criterion" >&2; exit 1; }

echo "== vips: vipsthumbnail $(vipsthumbnail --vips-version 2>/dev/null | head -n1), VIPS_CONCURRENCY=1"
export VIPS_CONCURRENCY=1
hyperfine --shell=none --warmup 3 --runs "${VIPS_RUNS:-20}" --export-json "$work/vips.json" \
  -n "vips start-up" "${pin[*]} vipsthumbnail --vips-version" \
  -n "vipsthumbnail x $n photos" "${pin[*]} vipsthumbnail --size 512x512 -o $work/%s.jpg[Q=80] ${photos[*]}"

python3 - "$estimates" "$work/vips.json" "$n" <<'PY'
import json, sys
est, vips, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ours_ms = json.load(open(est))["mean"]["point_estimate"] / 1e6 / n
runs = json.load(open(vips))["results"]
startup_ms, batch_ms = runs[0]["mean"] * 1e3, runs[1]["mean"] * 1e3
cpu = lambda r: (r["user"] + r["system"]) * 1e3
vips_cpu_ms = (cpu(runs[1]) - cpu(runs[0])) / n
vips_raw_ms = batch_ms / n
vips_ms = (batch_ms - startup_ms) / n
print(f"\nper image ({n} photos, fit 512x512, JPEG Q80, 1 core)")
print(f"  ours                          {ours_ms:7.2f} ms")
print(f"  vipsthumbnail (start-up out)  {vips_ms:7.2f} ms   (start-up {startup_ms:.1f} ms per run)")
print(f"  vipsthumbnail (raw batch / n) {vips_raw_ms:7.2f} ms")
print(f"  vipsthumbnail CPU (user+sys)  {vips_cpu_ms:7.2f} ms   (start-up out; a floor if the core was shared)")
print(f"ratio vips / ours: {vips_ms / ours_ms:.2f}x   (raw: {vips_raw_ms / ours_ms:.2f}x, vips CPU time / ours: {vips_cpu_ms / ours_ms:.2f}x)")
PY

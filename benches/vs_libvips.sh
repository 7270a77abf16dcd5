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
# Quality, so that speed can never hide a loss: both outputs (JPEG Q80, decoded) are compared with
# an exact reference made independently of both programs: Pillow's Lanczos3 over the fully decoded
# original (no shrink-on-load, no shortcuts), at the same size, in the same sRGB space. The script
# prints PSNR (dB, higher is better) and bytes of each side, and fails if ours is more than
# 0.5 dB below libvips' on average.
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

mkdir -p "$work/ours" "$work/vips"
echo "== ours: cargo bench --bench resize_kernel (criterion)"
IMGPIPE_BENCH_OUT="$work/ours" "${pin[@]}" cargo bench --bench resize_kernel -- --noplot 'resize_kernel/' >"$work/criterion.log" 2>&1 \
  || { cat "$work/criterion.log" >&2; exit 1; }
grep -A3 "^resize_kernel/" "$work/criterion.log" || true
target_dir="${CARGO_TARGET_DIR:-target}"
estimates="$(find "$target_dir/criterion/resize_kernel" -path '*/new/estimates.json' | head -n1)"
[ -n "$estimates" ] || { echo "criterion estimates not found under $target_dir/criterion" >&2; exit 1; }

echo "== vips: vipsthumbnail $(vipsthumbnail --vips-version 2>/dev/null | head -n1), VIPS_CONCURRENCY=1"
export VIPS_CONCURRENCY=1
hyperfine --shell=none --warmup 3 --runs "${VIPS_RUNS:-20}" --export-json "$work/vips.json" \
  -n "vips start-up" "${pin[*]} vipsthumbnail --vips-version" \
  -n "vipsthumbnail x $n photos" "${pin[*]} vipsthumbnail --size 512x512 -o $work/vips/%s.jpg[Q=80] ${photos[*]}"

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

echo "== quality against an exact reference (Pillow Lanczos3 on the full-size decode)"
cache_dir="${IMGPIPE_CACHE_DIR:-$HOME/.cache/imgpipe}"
quality_env="$cache_dir/bench-pyenv"
if ! "$quality_env/bin/python" -c "import PIL, numpy" 2>/dev/null; then
  python3 -m venv "$quality_env"
  "$quality_env/bin/pip" install -q --disable-pip-version-check "pillow==11.3.0" "numpy==2.2.6"
fi
"$quality_env/bin/python" - "$photos_dir" "$work/ours" "$work/vips" <<'PY'
import math, os, sys
import numpy as np
from PIL import Image, ImageOps

photos, ours_dir, vips_dir = sys.argv[1:4]

def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)

rows = []
for name in sorted(f[:-4] for f in os.listdir(ours_dir) if f.endswith(".jpg")):
    ours = Image.open(os.path.join(ours_dir, name + ".jpg")).convert("RGB")
    vips = Image.open(os.path.join(vips_dir, name + ".jpg")).convert("RGB")
    if ours.size != vips.size:
        sys.exit(f"{name}: ours is {ours.size}, vips {vips.size}: sizes must agree")
    original = ImageOps.exif_transpose(Image.open(os.path.join(photos, name + ".jpg"))).convert("RGB")
    reference = np.asarray(original.resize(ours.size, Image.Resampling.LANCZOS, reducing_gap=None))
    rows.append((name, psnr(np.asarray(ours), reference), psnr(np.asarray(vips), reference),
                 os.path.getsize(os.path.join(ours_dir, name + ".jpg")),
                 os.path.getsize(os.path.join(vips_dir, name + ".jpg"))))

print(f"{'photo':<24} {'ours dB':>8} {'vips dB':>8} {'ours B':>8} {'vips B':>8}")
for name, po, pv, bo, bv in rows:
    print(f"{name:<24} {po:8.2f} {pv:8.2f} {bo:8d} {bv:8d}")
mean = lambda i: sum(r[i] for r in rows) / len(rows)
print(f"{'mean':<24} {mean(1):8.2f} {mean(2):8.2f} {mean(3):8.0f} {mean(4):8.0f}")
print(f"quality: ours - vips = {mean(1) - mean(2):+.2f} dB PSNR, bytes ours / vips = {mean(3) / mean(4):.3f}")
if mean(1) < mean(2) - 0.5:
    sys.exit("ours is more than 0.5 dB below libvips: a speed claim would hide a quality loss")
PY

#!/usr/bin/env bash
# Our encoders against libvips on the same real photographs, one CPU core: every photo (1200–2400
# px JPEG) → fit inside 512×512, then
#   - WebP Q80 (lossy; libwebp effort/method 4 on both sides, libvips' default),
#   - AVIF Q50 (libvips' default AVIF quality) at each side's default effort (ours 2, rav1e
#     speed 8; libvips 4, libheif + libaom), and ours at effort 4 too (rav1e speed 6), 8-bit.
#     The two quality scales are not calibrated to each other and vips writes 4:2:0 where ravif
#     writes 4:4:4, so the bytes ratio compares settings, not visual quality,
# and prints per-format time and bytes per image with the ratios vips / ours (above 1: we are
# faster or smaller). Then the peak RSS of one kernel call on an animation at the default limits.
#
# Fairness (as in benches/vs_libvips.sh, which this follows):
# - vipsthumbnail runs with VIPS_CONCURRENCY=1, converting the whole set in ONE invocation per
#   run, timed by hyperfine; its start-up (`vipsthumbnail --vips-version`) is subtracted before
#   dividing by the number of photos. The raw figure is printed too.
# - Both sides are pinned to the same core with taskset when it is available.
# - Ours is the kernel_files example (release build): the mean wall time of a kernel call, in
#   process, over FORMATS_RUNS runs of every photo; the time includes decode and resample, as
#   vipsthumbnail's does.
#
# Needs: cargo, vipsthumbnail (libvips-tools, with libheif for AVIF), hyperfine, python3,
# /usr/bin/time (GNU time). Photos: benches/photos.sh.
set -euo pipefail

cd "$(dirname "$0")/.."
photos_dir="${IMGPIPE_PHOTOS_DIR:-$(benches/photos.sh)}"
mapfile -t photos < <(find "$photos_dir" -maxdepth 1 -name '*.jpg' | sort)
n=${#photos[@]}
[ "$n" -gt 0 ] || { echo "no photos in $photos_dir" >&2; exit 1; }
runs="${FORMATS_RUNS:-3}"
vips_runs="${VIPS_RUNS:-2}"

pin=()
if command -v taskset >/dev/null; then pin=(taskset -c "${BENCH_CPU:-0}"); fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== building the kernel_files example (release)"
cargo build --release -q -p processors --example kernel_files
kernel="${CARGO_TARGET_DIR:-target}/release/examples/kernel_files"

export VIPS_CONCURRENCY=1
echo "== $n photos in $photos_dir; vips $(vipsthumbnail --vips-version 2>/dev/null | head -n1)"

# name | our query | vips output suffix
formats=(
  "webp|width=512&height=512&format=webp&quality=80&effort=4|webp[Q=80,effort=4,strip]"
  "avif|width=512&height=512&format=avif&quality=50|avif[Q=50,effort=4,strip]"
  "avif-effort4|width=512&height=512&format=avif&quality=50&effort=4|avif[Q=50,effort=4,strip]"
)
for spec in "${formats[@]}"; do
  IFS='|' read -r name query suffix <<<"$spec"
  mkdir -p "$work/ours-$name" "$work/vips-$name"
  echo "== $name: ours ($query), $runs runs"
  "${pin[@]}" "$kernel" --runs "$runs" --out "$work/ours-$name" "$query" "${photos[@]}" >"$work/ours-$name.jsonl"
  done_as="$(grep -l -x -F "$suffix" "$work"/*.suffix 2>/dev/null | head -n1 || true)"
  if [ -n "$done_as" ]; then  # the same vips command already ran for another of our settings
    other="$(basename "$done_as" .suffix)"
    cp "$work/vips-$other.json" "$work/vips-$name.json"
    cp "$work/vips-$other"/* "$work/vips-$name/"
    continue
  fi
  echo "$suffix" >"$work/$name.suffix"
  echo "== $name: vipsthumbnail -o %s.$suffix"
  hyperfine --shell=none --warmup 1 --runs "$vips_runs" --export-json "$work/vips-$name.json" \
    -n "vips start-up" "${pin[*]} vipsthumbnail --vips-version" \
    -n "vipsthumbnail x $n" "${pin[*]} vipsthumbnail --size 512x512 -o $work/vips-$name/%s.$suffix ${photos[*]}" \
    >/dev/null
done

python3 - "$work" "$n" <<'PY'
import json, os, sys
work, n = sys.argv[1], int(sys.argv[2])
print(f"\nper image ({n} photos, fit 512x512, 1 core); ratio = vips / ours")
for name in ("webp", "avif", "avif-effort4"):
    ours = [json.loads(l) for l in open(f"{work}/ours-{name}.jsonl")]
    ours_ms = sum(o["ms"] for o in ours) / len(ours)
    ours_bytes = sum(o["bytes"] for o in ours) / len(ours)
    runs = json.load(open(f"{work}/vips-{name}.json"))["results"]
    startup_ms, batch_ms = runs[0]["mean"] * 1e3, runs[1]["mean"] * 1e3
    vips_ms, vips_raw_ms = (batch_ms - startup_ms) / n, batch_ms / n
    d = f"{work}/vips-{name}"
    sizes = [os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)]
    vips_bytes = sum(sizes) / len(sizes)
    print(f"  {name}: ours {ours_ms:8.1f} ms {ours_bytes/1024:7.1f} KiB | vips {vips_ms:8.1f} ms "
          f"(raw {vips_raw_ms:.1f}) {vips_bytes/1024:7.1f} KiB | time ratio {vips_ms/ours_ms:5.2f}x "
          f"(raw {vips_raw_ms/ours_ms:.2f}x), bytes ratio {vips_bytes/ours_bytes:5.2f}x")
    worst = max(ours, key=lambda o: o["ms"])
    print(f"        slowest of ours: {worst['ms']:.1f} ms ({os.path.basename(worst['file'])})")
PY

echo "== peak RSS of one kernel call on animations at the default limits (500 frames, 50 Mpx over all frames)"
# 500 frames of 316x316 (49.9 Mpx over all frames), every frame different, written by the
# example's --make-gif: GIF in → GIF and → WebP out at 256 px, and WebP at the input's size (WebP
# holds every output frame until it assembles them, so its peak grows with the output).
"$kernel" --make-gif 316 316 500 "$work/anim.gif"
ls -l "$work/anim.gif" | awk '{printf "   input: %.1f MiB, 500 frames of 316x316\n", $5/1048576}'
mkdir -p "$work/anim-out"
for query in "width=256&format=gif" "width=256&format=webp" "width=316&format=webp"; do
  /usr/bin/time -v "${pin[@]}" "$kernel" --out "$work/anim-out" "$query" "$work/anim.gif" >"$work/rss.json" 2>"$work/rss.txt"
  rss=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$work/rss.txt")
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f'   {sys.argv[2]:24} peak RSS {int(sys.argv[3])/1024:6.1f} MiB, {r[\"ms\"]/1000:.1f} s, {r[\"bytes\"]/1048576:.1f} MiB out')" "$work/rss.json" "$query" "$rss"
done

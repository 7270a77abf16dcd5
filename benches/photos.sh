#!/usr/bin/env bash
# Fetches real photographs for the resize-kernel benchmark into a cache directory (never committed).
#
# Source: Debian's `mate-backgrounds` package, whose `nature/` set and `Elephants` are camera
# photographs (JPEG, 4:2:0 and 4:4:4). Originals whose long side is over 2400 px are downscaled with
# vipsthumbnail to 2400 px and 1600 px variants, so every file is a 1200–2400 px photo, the range
# the kernel is tuned for.
#
# Usage: benches/photos.sh        (prints the photo directory on success)
# Env:   IMGPIPE_CACHE_DIR        cache root (default: $HOME/.cache/imgpipe)
set -euo pipefail

cache_dir="${IMGPIPE_CACHE_DIR:-$HOME/.cache/imgpipe}"
photos_dir="$cache_dir/photos"
package=mate-backgrounds

if compgen -G "$photos_dir/*.jpg" >/dev/null; then
  echo "$photos_dir"
  exit 0
fi

for tool in apt-get dpkg-deb vipsheader vipsthumbnail; do
  command -v "$tool" >/dev/null || { echo "photos.sh: '$tool' is required" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# apt warns when its sandbox user cannot write the temp dir; the download itself is fine.
(cd "$work" && apt-get download "$package" 2>&1 >/dev/null | grep -v "unsandboxed" >&2 || true)
compgen -G "$work/${package}_*.deb" >/dev/null || { echo "photos.sh: download of $package failed" >&2; exit 1; }
dpkg-deb -x "$work"/${package}_*.deb "$work/root"
src="$work/root/usr/share/backgrounds/mate"

mkdir -p "$photos_dir.tmp"
for f in "$src"/nature/*.jpg "$src"/abstract/Elephants.jpg "$src"/abstract/Elephants_3840x2160.jpg; do
  [ -f "$f" ] || continue
  name="$(basename "$f" .jpg)"
  name="${name%_3840x2160}"
  w="$(vipsheader -f width "$f")"
  h="$(vipsheader -f height "$f")"
  long=$(( w > h ? w : h ))
  if [ "$long" -le 2400 ]; then
    cp "$f" "$photos_dir.tmp/$name.jpg"
  else
    # Re-encoded at high quality so the variant is still a faithful photo, not a recompressed mush.
    vipsthumbnail "$f" --size 2400x2400 -o "$photos_dir.tmp/${name}_2400.jpg[Q=92,strip]"
    vipsthumbnail "$f" --size 1600x1600 -o "$photos_dir.tmp/${name}_1600.jpg[Q=92,strip]"
  fi
done
rm -rf "$photos_dir"
mv "$photos_dir.tmp" "$photos_dir"
echo "$photos_dir"

#!/usr/bin/env bash
# Builds imgproxy, the anchor of the GET benchmark (benches/web_get.sh), from source on this
# machine, and prints the binary's path.
#
# The Go module proxy does not serve imgproxy's own module, so its source comes from a snapshot of
# github.com/imgproxy/imgproxy at the tag below (a git directory or a source tree given in
# IMGPROXY_SRC, else the tag's tarball from GitHub); its dependencies come from the Go module
# proxy as usual. It is built as its Dockerfile does (`CGO_ENABLED=1 go build ./cli`), against
# Debian's libvips-dev (8.14 in Debian 12), with cgo. The source and the binary are cached, so a
# second run only prints the path.
#
# Usage: benches/anchors/imgproxy.sh           (prints the binary's path on success)
# Env:   IMGPIPE_CACHE_DIR   cache root (default: $HOME/.cache/imgpipe)
#        IMGPROXY_SRC        a git directory (bare or not) holding the tag, or an unpacked source
#                            tree of it; without it the tag's tarball is downloaded once
#        IMGPROXY_VERSION    the tag to build (default below)
set -euo pipefail

version="${IMGPROXY_VERSION:-v4.0.12}"
cache_dir="${IMGPIPE_CACHE_DIR:-$HOME/.cache/imgpipe}"
home="$cache_dir/imgproxy-$version"
src="$home/src"
binary="$home/bin/imgproxy"

if [ -x "$binary" ]; then
  echo "$binary"
  exit 0
fi

for tool in go pkg-config cc; do
  command -v "$tool" >/dev/null || { echo "imgproxy.sh: '$tool' is required" >&2; exit 1; }
done
if ! pkg-config --exists 'vips >= 8.14'; then
  echo "imgproxy.sh: libvips-dev 8.14 or newer is required (apt-get install -y libvips-dev);" \
    "found: $(pkg-config --modversion vips 2>/dev/null || echo none)" >&2
  exit 1
fi

mkdir -p "$home"
if [ ! -f "$src/go.mod" ]; then
  tmp="$(mktemp -d "$home/.src.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  if [ -n "${IMGPROXY_SRC:-}" ] && git --git-dir="$IMGPROXY_SRC" rev-parse -q --verify "$version^{commit}" >/dev/null 2>&1; then
    echo "imgproxy.sh: unpacking $version from the git directory $IMGPROXY_SRC" >&2
    git --git-dir="$IMGPROXY_SRC" archive "$version" | tar -x -C "$tmp"
  elif [ -n "${IMGPROXY_SRC:-}" ] && [ -d "$IMGPROXY_SRC/.git" ] \
    && git -C "$IMGPROXY_SRC" rev-parse -q --verify "$version^{commit}" >/dev/null 2>&1; then
    echo "imgproxy.sh: unpacking $version from the clone $IMGPROXY_SRC" >&2
    git -C "$IMGPROXY_SRC" archive "$version" | tar -x -C "$tmp"
  elif [ -n "${IMGPROXY_SRC:-}" ] && [ -f "$IMGPROXY_SRC/go.mod" ]; then
    echo "imgproxy.sh: copying the source tree $IMGPROXY_SRC (taken to be $version)" >&2
    cp -a "$IMGPROXY_SRC/." "$tmp/"
  elif [ -n "${IMGPROXY_SRC:-}" ]; then
    echo "imgproxy.sh: IMGPROXY_SRC=$IMGPROXY_SRC holds neither the tag $version nor a source tree" >&2
    exit 1
  else
    url="https://github.com/imgproxy/imgproxy/archive/refs/tags/$version.tar.gz"
    echo "imgproxy.sh: downloading $url" >&2
    curl -fsSL "$url" | tar -xz -C "$tmp" --strip-components=1
  fi
  grep -q '^module github.com/imgproxy/imgproxy/v4' "$tmp/go.mod" \
    || { echo "imgproxy.sh: the source is not imgproxy v4 (go.mod)" >&2; exit 1; }
  rm -rf "$src"
  mv "$tmp" "$src"
  trap - EXIT
fi

echo "imgproxy.sh: building imgproxy $version against libvips $(pkg-config --modversion vips)" \
  "(first build: its modules download from the Go proxy, then several minutes of compiling)" >&2
mkdir -p "$home/bin"
# As its Dockerfile builds it; the Makefile allows the same linker flags through cgo.
(cd "$src" && CGO_ENABLED=1 CGO_LDFLAGS_ALLOW='-s|-w' \
  go build -trimpath -ldflags "-s -w" -o "$binary.tmp" ./cli)
mv "$binary.tmp" "$binary"
echo "$binary"

#!/usr/bin/env bash
# Signed image URLs in imgproxy's format from imgproxy's own Node URL builder (see
# signed_urls.js for the options): installs the pinned @imgproxy/imgproxy-node once into the
# cache folder, then runs the builder. The URLs go to stdout, one per line.
#
# Usage: benches/web/signed_urls.sh --base URL --key HEX --salt HEX [options] SOURCE_URL...
#   e.g. benches/web/signed_urls.sh --base http://127.0.0.1:8080/v1/img/KEY_ID \
#          --key "$key" --salt "$salt" http://127.0.0.1:8070/Dune.jpg
# Env:   IMGPIPE_CACHE_DIR   cache root (default: $HOME/.cache/imgpipe); the builder goes to npm/
set -euo pipefail

builder_version=1.1.0
cache_dir="${IMGPIPE_CACHE_DIR:-$HOME/.cache/imgpipe}"
npm_dir="$cache_dir/npm"
package="$npm_dir/node_modules/@imgproxy/imgproxy-node/package.json"

for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "signed_urls.sh: '$tool' is required (apt-get install -y nodejs npm)" >&2; exit 1; }
done
if ! grep -qs "\"version\": \"$builder_version\"" "$package"; then
  echo "signed_urls.sh: installing @imgproxy/imgproxy-node@$builder_version into $npm_dir" >&2
  mkdir -p "$npm_dir"
  npm install --prefix "$npm_dir" --no-audit --no-fund --silent \
    "@imgproxy/imgproxy-node@$builder_version" >&2
fi
NODE_PATH="$npm_dir/node_modules" exec node "$(dirname "${BASH_SOURCE[0]}")/signed_urls.js" "$@"

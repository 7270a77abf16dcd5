#!/usr/bin/env bash
# Web delivery measured against the running demo, in one run (benches/web_cache.py says how):
#   1. the 304 path (a revalidation the origin confirms: no resize) against a full resize of the
#      same signed URLs: p50, p99 and the machine's CPU per request;
#   2. the bytes a browser downloads for the demo gallery with Chrome's Accept (AVIF and WebP
#      negotiated) against JPEG only;
#   3. smart crop (g:sm) against centre (g:ce) on the demo photos: resize stage, p50, CPU.
#
# imgpipe must be running as `compose/local/demo` leaves it: api 127.0.0.1:8080, the demo's origin
# on 127.0.0.1:8070 serving the benchmark photos (with Last-Modified, so answers carry an ETag),
# the signing key in .stack/demo/signing_key.json and the gallery in .stack/demo/gallery/index.html.
# Nothing is started or stopped here. Only loopback addresses are used.
#
# Usage: benches/web_cache.sh [rounds, default 5]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
[ -f .stack/demo/signing_key.json ] || {
  echo "web_cache.sh: no .stack/demo/signing_key.json: run compose/local/demo first" >&2
  exit 1
}
curl -sf -o /dev/null http://127.0.0.1:8070/ || curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8070/ | grep -q 404 || {
  echo "web_cache.sh: the demo's origin is not answering on 127.0.0.1:8070: run compose/local/demo" >&2
  exit 1
}
exec python3 benches/web_cache.py --photos "$(benches/photos.sh)" --rounds "${1:-5}"

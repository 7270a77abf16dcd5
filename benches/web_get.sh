#!/usr/bin/env bash
# Signed GETs through an origin on this machine, imgpipe against imgproxy, in one run:
#   1. an origin on loopback (`imgpipe-loadgen origin`) serves the benchmark photos to both;
#   2. imgproxy (built here: benches/anchors/imgproxy.sh) gets its own key and salt, imgpipe a
#      tenant with a signing key from the identity admin API; imgproxy's own URL builder
#      (benches/web/signed_urls.sh) makes both URL lists, so both get the same options byte for
#      byte (default: every photo → fit in 512×512, JPEG Q80, as the POST comparison);
#   3. for each: closed loop at rising concurrency → requests/s at saturation (the best step),
#      then open loop at 80% of it → p50/p99, as benches/pipeline_load.sh does for POST;
#   4. Kafka bytes per GET: every record written to image.requests during imgpipe's runs,
#      read back (key + value + headers), per record and per request;
#   5. one table: both sides, their ratios, and the Kafka bytes against the goal (< 2 KB); and
#      imgpipe's p50/p99 at imgproxy's 80% rate, so the latencies are also compared at one rate.
# Both servers use every core of this machine (imgproxy: GOMAXPROCS = nproc; imgpipe: as
# started), beside the load generator and the origin, which are the same for both.
#
# imgpipe must already be running with the GET route and the local stack, e.g. `compose/local/demo`
# (api 127.0.0.1:8080, identity 127.0.0.1:8090, topics without a namespace, loopback sources
# allowed by compose/local/imgpipe.toml). imgproxy is started and stopped here. Every process
# started here is stopped by PID when the script exits. Only loopback addresses are used.
#
# Usage: IMGPROXY_BIN=$(benches/anchors/imgproxy.sh) benches/web_get.sh [duration per step, default 20s]
# Env:   IMGPROXY_BIN             imgproxy binary (required; build it with benches/anchors/imgproxy.sh)
#        WEB_GET_SIDES            "imgproxy imgpipe" (default), or one of them alone
#        WEB_GET_RESIZE           imgproxy resizing type, fit (default) or fill; width/height 512
#        WEB_GET_CONCURRENCY      closed-loop steps (default "2 4 8 16")
#        IMGPIPE_API              imgpipe's api (default http://127.0.0.1:8080)
#        IMGPIPE_IDENTITY         imgpipe's identity admin API (default http://127.0.0.1:8090)
#        IMGPIPE_ADMIN_TOKEN      its token (default: compose/local/imgpipe.toml's)
#        IMGPIPE_KAFKA__NAMESPACE the topics' prefix imgpipe runs with (default none)
#        IMGPIPE_LOADGEN_BIN      a loadgen binary to use instead of building the release one
#        IMGPIPE_LOAD_IMAGES      folder of images (default: the benchmark photos)
#        WEB_GET_ORIGIN_PORT, WEB_GET_IMGPROXY_PORT   loopback ports (default 8070, 8071)
set -euo pipefail

step_duration="${1:-20s}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
sides="${WEB_GET_SIDES:-imgproxy imgpipe}"
resize="${WEB_GET_RESIZE:-fit}"
concurrency_steps="${WEB_GET_CONCURRENCY:-2 4 8 16}"
api="${IMGPIPE_API:-http://127.0.0.1:8080}"
identity="${IMGPIPE_IDENTITY:-http://127.0.0.1:8090}"
admin_token="${IMGPIPE_ADMIN_TOKEN:-$(sed -n 's/^admin_token *= *"\(.*\)"/\1/p' compose/local/imgpipe.toml)}"
topic="${IMGPIPE_KAFKA__NAMESPACE:-}image.requests"
origin_port="${WEB_GET_ORIGIN_PORT:-8070}"
imgproxy_port="${WEB_GET_IMGPROXY_PORT:-8071}"
python="${IMGPIPE_CACHE_DIR:-$HOME/.cache/imgpipe}/pyenv/bin/python"
work="$root/.stack/web-get/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$work"

progress() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
die() { echo "web_get.sh: $*" >&2; exit 1; }

if [[ " $sides " == *" imgproxy "* ]]; then
  [ -n "${IMGPROXY_BIN:-}" ] || die "IMGPROXY_BIN is not set: build imgproxy with" \
    "benches/anchors/imgproxy.sh and run  IMGPROXY_BIN=\$(benches/anchors/imgproxy.sh) $0"
  [ -x "$IMGPROXY_BIN" ] || die "IMGPROXY_BIN=$IMGPROXY_BIN is not an executable"
fi
if [[ " $sides " == *" imgpipe "* ]]; then
  [ -x "$python" ] || die "no Python environment at $python (run compose/local/bootstrap)"
fi
loadgen="${IMGPIPE_LOADGEN_BIN:-$root/target/release/imgpipe-loadgen}"
[ -n "${IMGPIPE_LOADGEN_BIN:-}" ] || cargo build --release --locked -p imgpipe-loadgen >&2
photos="${IMGPIPE_LOAD_IMAGES:-$(benches/photos.sh)}"

declare -a started_pids=()
stop_started() {
  for pid in "${started_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${started_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_started EXIT
wait_for() {
  local url="$1" what="$2"
  for _ in $(seq 1 150); do curl -sf -o /dev/null "$url" && return 0; sleep 0.2; done
  die "$what did not answer at $url (log: $work)"
}
random_hex() { "$python" -c 'import secrets; print(secrets.token_hex(32))' 2>/dev/null || od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }

progress "origin: $photos on http://127.0.0.1:$origin_port"
"$loadgen" origin --dir "$photos" --listen "127.0.0.1:$origin_port" >"$work/origin.log" 2>&1 &
started_pids+=($!)
mapfile -t sources < <(find "$photos" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' -o -iname '*.webp' \) \
  -printf "http://127.0.0.1:$origin_port/%f\n" | sort)
[ "${#sources[@]}" -gt 0 ] || die "no images in $photos"
wait_for "${sources[0]}" "the origin"
signed_urls() { benches/web/signed_urls.sh --type "$resize" --width 512 --height 512 --quality 80 --format jpg "$@" "${sources[@]}"; }

# One open-loop step at `rate` req/s, its output kept in `out`: adds its requests to `requests`
# and sets p50 and p99 (loadgen's summary row: "end to end  <p50> <p90> <p99> <max>" in ms).
open_loop() {
  local urls="$1" rate="$2" out="$3"
  "$loadgen" --urls "$urls" --rate "$rate" --concurrency 64 --duration "$step_duration" | tee "$out"
  requests=$(( requests + $(sed -n 's/^requests *\([0-9]*\) in.*/\1/p' "$out") ))
  p50="$(awk '/^end to end/ {print $4; exit}' "$out")"
  p99="$(awk '/^end to end/ {print $6; exit}' "$out")"
}

# Closed loop at each concurrency (the best ok/s is the saturation), then open loop at 80% of it.
# Sets sat_rate, sat_concurrency, p50, p99 and requests (every request sent, warm-up included).
measure() {
  local side="$1" urls="$2" rate concurrency
  sat_rate=0; sat_concurrency=0; requests=0
  progress "$side: warm-up, 5 s at concurrency 4"
  "$loadgen" --urls "$urls" --concurrency 4 --duration 5s >"$work/$side-warmup.txt"
  requests=$(( requests + $(sed -n 's/^requests *\([0-9]*\) in.*/\1/p' "$work/$side-warmup.txt") ))
  for concurrency in $concurrency_steps; do
    progress "$side: closed loop, concurrency $concurrency, $step_duration"
    "$loadgen" --urls "$urls" --concurrency "$concurrency" --duration "$step_duration" \
      | tee "$work/$side-closed-$concurrency.txt"
    requests=$(( requests + $(sed -n 's/^requests *\([0-9]*\) in.*/\1/p' "$work/$side-closed-$concurrency.txt") ))
    rate="$(sed -n 's/.*(\([0-9]*\) ok = \([0-9.]*\) ok\/s).*/\2/p' "$work/$side-closed-$concurrency.txt")"
    if python3 -c "import sys; sys.exit(0 if float('${rate:-0}') > float('$sat_rate') else 1)"; then
      sat_rate="$rate"; sat_concurrency="$concurrency"
    fi
  done
  local target
  target="$(python3 -c "print(round(float('$sat_rate') * 0.8, 1))")"
  if python3 -c "import sys; sys.exit(0 if float('$target') >= 1 else 1)"; then
    progress "$side: open loop at 80% of $sat_rate req/s = $target req/s, $step_duration"
    open_loop "$urls" "$target" "$work/$side-open-80.txt"
  else
    p50="-"; p99="-"
    progress "$side: no open-loop step: under 1 req/s at saturation (every request failing?)"
  fi
}

declare -A result
record_result() {
  result[$1.rate]="$sat_rate"; result[$1.concurrency]="$sat_concurrency"
  result[$1.p50]="$p50"; result[$1.p99]="$p99"
}

if [[ " $sides " == *" imgproxy "* ]]; then
  imgproxy_key="$(random_hex)"; imgproxy_salt="$(random_hex)"
  imgproxy_version="$("$IMGPROXY_BIN" version 2>/dev/null | head -1 || true)"
  progress "imgproxy ${imgproxy_version:-(version unknown)}: http://127.0.0.1:$imgproxy_port, GOMAXPROCS $(nproc)"
  # Loopback sources are refused by default (SSRF guard): the origin is on loopback.
  env IMGPROXY_BIND="127.0.0.1:$imgproxy_port" IMGPROXY_KEY="$imgproxy_key" IMGPROXY_SALT="$imgproxy_salt" \
    IMGPROXY_ALLOW_LOOPBACK_SOURCE_ADDRESSES=true GOMAXPROCS="$(nproc)" IMGPROXY_LOG_LEVEL=warn \
    "$IMGPROXY_BIN" >"$work/imgproxy.log" 2>&1 &
  imgproxy_pid=$!
  started_pids+=("$imgproxy_pid")
  wait_for "http://127.0.0.1:$imgproxy_port/health" "imgproxy"
  signed_urls --base "http://127.0.0.1:$imgproxy_port" --key "$imgproxy_key" --salt "$imgproxy_salt" \
    >"$work/imgproxy-urls.txt"
  code="$(curl -s -o "$work/imgproxy-first.jpg" -w '%{http_code}' "$(head -1 "$work/imgproxy-urls.txt")")"
  [ "$code" = 200 ] || die "imgproxy answered $code to $(head -1 "$work/imgproxy-urls.txt") (log: $work/imgproxy.log)"
  measure imgproxy "$work/imgproxy-urls.txt"
  record_result imgproxy
  imgproxy_rss="$(awk '/VmHWM/ {printf "%.0f MiB", $2 / 1024}' "/proc/$imgproxy_pid/status" 2>/dev/null || true)"
  # Stopped before imgpipe's half, so it holds no core or memory then.
  kill -TERM "$imgproxy_pid"; wait "$imgproxy_pid" 2>/dev/null || true
fi

if [[ " $sides " == *" imgpipe "* ]]; then
  progress "imgpipe: $api (identity $identity)"
  curl -sf -o /dev/null "$api/openapi.json" \
    || die "imgpipe's api does not answer at $api: start it first (compose/local/demo)"
  admin() { curl -s -w '\n%{http_code}' -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' "$@"; }
  body_of() { sed '$d' <<<"$1"; }
  code_of() { tail -1 <<<"$1"; }
  # The tenant may fetch from the origin only (allowed_sources); an identity without the
  # field refuses it, and then the tenant is made without it.
  answer="$(admin -X POST "$identity/admin/v1/tenants" -d "{\"name\":\"web-get-bench\",\"rate_limit_per_second\":100000,\"burst\":100000,\"allowed_sources\":[\"http://127.0.0.1:$origin_port/\"]}")"
  if [ "$(code_of "$answer")" -ge 400 ] && [ "$(code_of "$answer")" -lt 500 ]; then
    answer="$(admin -X POST "$identity/admin/v1/tenants" -d '{"name":"web-get-bench","rate_limit_per_second":100000,"burst":100000}')"
  fi
  [ "$(code_of "$answer")" = 201 ] || [ "$(code_of "$answer")" = 200 ] \
    || die "creating a tenant: HTTP $(code_of "$answer"): $(body_of "$answer")"
  tenant="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$(body_of "$answer")")"
  answer="$(admin -X POST "$identity/admin/v1/tenants/$tenant/signing-keys")"
  case "$(code_of "$answer")" in
    200|201) ;;
    404|405) die "route not available: POST /admin/v1/tenants/{id}/signing-keys answered" \
      "$(code_of "$answer") (this imgpipe has no signing keys yet)" ;;
    *) die "creating a signing key: HTTP $(code_of "$answer"): $(body_of "$answer")" ;;
  esac
  read -r key_id key salt < <(python3 -c 'import json,sys; k=json.load(sys.stdin); print(k["key_id"], k["key"], k["salt"])' <<<"$(body_of "$answer")")
  signed_urls --base "$api/v1/img/$key_id" --key "$key" --salt "$salt" >"$work/imgpipe-urls.txt"
  first="$(head -1 "$work/imgpipe-urls.txt")"
  # A new key reaches the api's identity view within milliseconds: retry a 403 for a moment.
  for _ in $(seq 1 50); do
    code="$(curl -s -o "$work/imgpipe-first.out" -w '%{http_code}' "$first")"
    [ "$code" != 403 ] && break
    sleep 0.1
  done
  case "$code" in
    200) ;;
    404|405) die "route not available: GET /v1/img/... answered $code ($first)" ;;
    *) die "imgpipe answered $code to $first: $(head -c 400 "$work/imgpipe-first.out")" ;;
  esac
  "$python" benches/web/topic_bytes.py mark "$topic" >"$work/kafka-mark.json"
  measure imgpipe "$work/imgpipe-urls.txt"
  record_result imgpipe
  # Each side's p99 at 80% of its own saturation compares them at different rates; this step
  # also compares them at the same one: imgpipe at imgproxy's 80% rate.
  if [ -n "${result[imgproxy.rate]:-}" ] && [ "${result[imgproxy.p99]}" != "-" ]; then
    same_rate="$(python3 -c "print(round(float('${result[imgproxy.rate]}') * 0.8, 1))")"
    progress "imgpipe: open loop at imgproxy's 80% rate, $same_rate req/s, $step_duration"
    open_loop "$work/imgpipe-urls.txt" "$same_rate" "$work/imgpipe-open-same.txt"
    result[imgpipe.same_p50]="$p50"; result[imgpipe.same_p99]="$p99"
  fi
  progress "imgpipe: reading back what $topic received"
  kafka="$("$python" benches/web/topic_bytes.py since "$topic" "$work/kafka-mark.json")"
  echo "$kafka" >"$work/kafka-bytes.txt"
  kafka_requests="$requests"
fi

echo
echo "GET, ${#sources[@]} photos from a loopback origin → $resize 512x512 JPEG Q80, $(nproc) cores, steps of $step_duration"
printf '%-22s %12s %8s %12s %12s\n' "" "req/s (sat.)" "at conc." "p50 ms @80%" "p99 ms @80%"
for side in imgpipe imgproxy; do
  [ -n "${result[$side.rate]:-}" ] || continue
  name="$side"; [ "$side" = imgproxy ] && name="imgproxy ${imgproxy_version:-}"
  printf '%-22s %12s %8s %12s %12s\n' "$name" "${result[$side.rate]}" "${result[$side.concurrency]}" \
    "${result[$side.p50]}" "${result[$side.p99]}"
done
if [ -n "${result[imgpipe.rate]:-}" ] && [ -n "${result[imgproxy.rate]:-}" ]; then
  # The ratios; then, when it ran, imgpipe at imgproxy's 80% rate against imgproxy there.
  python3 - "${result[imgpipe.rate]}" "${result[imgproxy.rate]}" "${result[imgpipe.p50]}" \
    "${result[imgproxy.p50]}" "${result[imgpipe.p99]}" "${result[imgproxy.p99]}" \
    ${result[imgpipe.same_p99]:+"$same_rate" "${result[imgpipe.same_p50]}" "${result[imgpipe.same_p99]}"} <<'PY'
import sys
def ratio(a, b):
    try:
        return f"{float(a) / float(b):.2f}x"
    except (ValueError, ZeroDivisionError):
        return "-"
r, pr, p50, pp50, p99, pp99 = sys.argv[1:7]
print(f"{'imgpipe / imgproxy':<22} {ratio(r, pr):>12} {'':>8} {ratio(p50, pp50):>12} {ratio(p99, pp99):>12}"
      "   (goal: >= 2x req/s, p99 ratio <= 1)")
if len(sys.argv) == 10:
    rate, same_p50, same_p99 = sys.argv[7:]
    print(f"at the same rate, {rate} req/s (imgproxy's 80%): imgpipe p50 {same_p50} ms, p99 {same_p99} ms;"
          f" against imgproxy {ratio(same_p50, pp50)} p50, {ratio(same_p99, pp99)} p99")
PY
fi
if [ -n "${kafka:-}" ]; then
  python3 - "$kafka" "$kafka_requests" "$topic" <<'PY'
import sys
fields = dict(part.split("=") for part in sys.argv[1].split())
records, total, requests = int(fields["records"]), int(fields["bytes"]), int(sys.argv[2])
per_request = total / requests if requests else 0
print(f"Kafka bytes per GET on {sys.argv[3]}: {per_request:.0f} B/request"
      f" ({records} records for {requests} requests, {fields['per_record']} B/record:"
      f" key {fields['key']}, value {fields['value']}, headers {fields['headers']} B in all)"
      f"   goal: < 2048 B  {'met' if per_request < 2048 else 'NOT met'}")
PY
fi
[ -n "${imgproxy_rss:-}" ] && echo "imgproxy peak RSS (VmHWM): $imgproxy_rss"
echo "logs, URL lists and loadgen outputs: $work"

"""What the web delivery features cost and save, measured against a running imgpipe in one run.

1. The 304 path: each demo photo's signed GET made in full (a resize) and revalidated
   (`If-None-Match` with its ETag: the api asks the origin, which answers 304, and no resize
   happens), interleaved photo by photo; p50/p99 latency and the whole machine's CPU per
   request of each, and their ratios.
2. Bytes a browser downloads for the gallery: every image URL of the demo's gallery page
   fetched with Chrome's `Accept` (AVIF and WebP negotiated) and with `Accept: image/jpeg`.
3. Smart crop: `rs:fill` with `g:sm` against `g:ce` on every demo photo: the resizer's
   `resize` stage from `Server-Timing`, end-to-end p50, and machine CPU per request.

Machine CPU is every core's busy time from /proc/stat over a phase, less this process's own
time, divided by the phase's requests: the api, the resizer, Kafka and the origin together,
on the same cores for both sides of each ratio. Requests are sequential (one at a time), so
latency is the pipeline's, not a queue's.

Usage: python3 benches/web_cache.py --photos DIR [--rounds N] [--gallery FILE]
(benches/web_cache.sh runs it against the demo: see there.)
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import statistics
import sys
import time
import urllib.parse
import urllib.request

CHROME_ACCEPT = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"


def progress(text):
    print(f"\033[1m== {text}\033[0m", file=sys.stderr, flush=True)


def busy_jiffies():
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle


def own_cpu_seconds():
    times = os.times()
    return times.user + times.system


class Phase:
    """Machine CPU (less our own) and latencies of one batch of requests."""

    def __init__(self, name):
        self.name = name
        self.latencies = []
        self.resize_ms = []
        self.bytes = 0
        self.cpu_s = 0.0

    def __enter__(self):
        self.jiffies = busy_jiffies()
        self.own = own_cpu_seconds()
        return self

    def __exit__(self, *exc):
        hz = os.sysconf("SC_CLK_TCK")
        machine = (busy_jiffies() - self.jiffies) / hz
        # A phase may be entered once per round: its CPU adds up like its latencies.
        self.cpu_s += max(0.0, machine - (own_cpu_seconds() - self.own))

    def cpu_ms_per_request(self):
        return 1000 * self.cpu_s / max(1, len(self.latencies))

    def quantile(self, q):
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def signed(api, key_id, key, salt, path):
    mac = hmac.new(key, salt + path.encode(), hashlib.sha256).digest()
    signature = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    return f"{api}/v1/img/{key_id}/{signature}{path}"


def get(url, headers, phase=None):
    request = urllib.request.Request(url, headers=headers)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body, status, answer_headers = response.read(), response.status, response.headers
    except urllib.error.HTTPError as error:
        body, status, answer_headers = error.read(), error.code, error.headers
    took = time.perf_counter() - started
    if phase is not None:
        phase.latencies.append(took)
        phase.bytes += len(body)
        timing = answer_headers.get("server-timing", "")
        match = re.search(r"resize;dur=([0-9.]+)", timing)
        if match:
            phase.resize_ms.append(float(match.group(1)))
    return status, answer_headers, body


def expect(status, wanted, url):
    if status != wanted:
        sys.exit(f"web_cache.py: {url} answered {status}, expected {wanted}")


def revalidation(args, url_of, photos):
    progress(f"1. 304 path against a full resize: {len(photos)} photos × {args.rounds} rounds")
    etags = {}
    for photo in photos:
        url = url_of(f"/rs:fit:512:512/q:80/plain/{args.origin}/{photo}@jpg")
        status, headers, _ = get(url, {})
        expect(status, 200, url)
        if not headers.get("etag"):
            sys.exit(f"web_cache.py: no ETag on {url}: does the origin send Last-Modified or ETag?")
        etags[photo] = (url, headers["etag"])
    full, not_modified = Phase("full resize"), Phase("304")
    for _ in range(args.rounds):
        with full:
            for url, _ in etags.values():
                expect(get(url, {}, full)[0], 200, url)
        with not_modified:
            for url, etag in etags.values():
                expect(get(url, {"If-None-Match": etag}, not_modified)[0], 304, url)
    return full, not_modified


def gallery_bytes(args, url_of, photos):
    urls = []
    if args.gallery and os.path.exists(args.gallery):
        with open(args.gallery) as page:
            html = page.read()
        for attribute in re.findall(r'(?:src|srcset)="([^"]+)"', html):
            for candidate in attribute.split(","):
                url = candidate.strip().split(" ")[0]
                if "/v1/img/" in url and url not in urls:
                    urls.append(url.replace("&amp;", "&"))
        source = args.gallery
    else:
        for photo in photos:
            for dpr in (1, 2):
                urls.append(url_of(f"/rs:fill:320:240/dpr:{dpr}/plain/{args.origin}/{photo}"))
        source = "every photo at 320×240, 1× and 2×, no format in the URL"
    progress(f"2. gallery bytes, {len(urls)} images ({source}): Chrome's Accept against JPEG only")
    negotiated, jpeg_only = Phase("Accept: Chrome's"), Phase("Accept: image/jpeg")
    types = {}
    # The bytes of the images whose format was negotiated (the URL named none), both ways.
    varied = [0, 0]
    for url in urls:
        status, headers, body = get(url, {"Accept": CHROME_ACCEPT}, negotiated)
        expect(status, 200, url)
        kind = headers.get("content-type")
        types[kind] = types.get(kind, 0) + 1
        status, _, jpeg = get(url, {"Accept": "image/jpeg"}, jpeg_only)
        expect(status, 200, url)
        if headers.get("vary") == "Accept":
            varied[0] += len(jpeg)
            varied[1] += len(body)
    return negotiated, jpeg_only, types, varied


def smart_crop(args, url_of, photos):
    progress(f"3. g:sm against g:ce (rs:fill:400:300, JPEG): {len(photos)} photos × {args.rounds} rounds")
    centre, smart = Phase("g:ce"), Phase("g:sm")
    for _ in range(args.rounds):
        for gravity, phase in (("ce", centre), ("sm", smart)):
            with phase:
                for photo in photos:
                    url = url_of(f"/rs:fill:400:300/g:{gravity}/q:80/plain/{args.origin}/{photo}@jpg")
                    expect(get(url, {}, phase)[0], 200, url)
    return centre, smart


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", required=True, help="folder the origin serves")
    parser.add_argument("--api", default="http://127.0.0.1:8080")
    parser.add_argument("--origin", default="http://127.0.0.1:8070")
    parser.add_argument("--signing-key", default=".stack/demo/signing_key.json")
    parser.add_argument("--gallery", default=".stack/demo/gallery/index.html")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with open(args.signing_key) as file:
        signing = json.load(file)
    key, salt = bytes.fromhex(signing["key"]), bytes.fromhex(signing["salt"])

    def url_of(path):
        return signed(args.api, signing["key_id"], key, salt, path)

    photos = sorted(
        urllib.parse.quote(name)
        for name in os.listdir(args.photos)
        if name.lower().endswith((".jpg", ".jpeg", ".png", ".webp"))
    )
    if not photos:
        sys.exit(f"web_cache.py: no photos in {args.photos}")

    full, not_modified = revalidation(args, url_of, photos)
    negotiated, jpeg_only, types, varied = gallery_bytes(args, url_of, photos)
    centre, smart = smart_crop(args, url_of, photos)

    print(f"\nweb delivery, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"{len(photos)} photos, {args.rounds} rounds, sequential requests\n")
    print("| measure | a | b | b / a |")
    print("|---|---|---|---|")
    for name, a, b in (
        ("p50 ms (full resize → 304)", full.quantile(0.5), not_modified.quantile(0.5)),
        ("p99 ms (full resize → 304)", full.quantile(0.99), not_modified.quantile(0.99)),
        ("machine CPU ms/request (full resize → 304)", full.cpu_ms_per_request(), not_modified.cpu_ms_per_request()),
        ("gallery KB (JPEG only → Chrome's Accept)", jpeg_only.bytes / 1024, negotiated.bytes / 1024),
        ("negotiated images' KB (JPEG only → Chrome's Accept)", varied[0] / 1024, varied[1] / 1024),
        ("resize stage p50 ms (g:ce → g:sm)", statistics.median(centre.resize_ms), statistics.median(smart.resize_ms)),
        ("end-to-end p50 ms (g:ce → g:sm)", centre.quantile(0.5), smart.quantile(0.5)),
        ("machine CPU ms/request (g:ce → g:sm)", centre.cpu_ms_per_request(), smart.cpu_ms_per_request()),
    ):
        print(f"| {name} | {a:.2f} | {b:.2f} | {b / a if a else float('nan'):.3f} |")
    print(f"\ngallery answers with Chrome's Accept, by Content-Type: {json.dumps(types, sort_keys=True)}")


if __name__ == "__main__":
    main()

//! The demo's gallery in a real browser: the page `imgpipe gallery` writes (the same code, on
//! photos served by an origin on loopback that sends ETags) is opened in Debian's headless
//! Chromium, driven over the DevTools protocol. Every picture must load at the size its
//! `data-` attributes state for the screen's pixel ratio (1, then 2 with the `srcset` 2x
//! candidate chosen), in the format they state (negotiated from Chromium's `Accept`: AVIF or
//! WebP, with `Vary: Accept`; or JPEG as the URL says, without it). A reload must revalidate
//! (304) or be served from the browser's cache, and once the answers' `max-age` has passed,
//! revalidate every picture with a 304: both with no resizer job and no full fetch from the
//! origin.
//!
//! The DevTools session is a WebSocket carrying the few protocol methods used here as JSON
//! (`Network`, `Page`, `Emulation`, `Runtime`): a binding of the whole protocol (chromiumoxide,
//! headless_chrome) is ~100k lines of generated code, which took six more CPU-minutes to
//! compile than the WebSocket client on this project's machine. `IMGPIPE_TEST_CHROMIUM` names
//! another Chromium binary (default: `chromium` on the `PATH`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use imgpipe::gallery::{GalleryArgs, Picture};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::signed_get::Pipeline;
use crate::support;

/// `max-age` of the api's image answers in this test (a day by default).
const MAX_AGE: Duration = Duration::from_secs(2);

/// How long one page load (every picture resized) may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(50);

/// An origin on loopback: `/photos/{name}` from a folder, with a strong ETag (a CRC of the
/// bytes) and `Last-Modified`, answering a matching `If-None-Match` with 304; `/gallery.html`
/// is the page. Counts full answers and 304s of photos.
struct Origin {
    addr: SocketAddr,
    full: Arc<AtomicUsize>,
    not_modified: Arc<AtomicUsize>,
}

impl Origin {
    async fn start(photos: PathBuf, page: PathBuf) -> Self {
        use axum::extract::Path as UrlPath;
        use axum::http::{HeaderMap, StatusCode, header};
        use axum::response::IntoResponse;

        let full = Arc::new(AtomicUsize::new(0));
        let not_modified = Arc::new(AtomicUsize::new(0));
        let (f, n) = (full.clone(), not_modified.clone());
        let photo = move |UrlPath(name): UrlPath<String>, headers: HeaderMap| {
            let (full, not_modified, photos) = (f.clone(), n.clone(), photos.clone());
            async move {
                if name.contains('/') || name.starts_with('.') {
                    return StatusCode::NOT_FOUND.into_response();
                }
                let Ok(bytes) = std::fs::read(photos.join(&name)) else {
                    return StatusCode::NOT_FOUND.into_response();
                };
                let etag = format!("\"{:08x}\"", crc32fast::hash(&bytes));
                let validators = [
                    (header::ETAG, etag.clone()),
                    (
                        header::LAST_MODIFIED,
                        "Tue, 01 Dec 2026 00:00:00 GMT".to_owned(),
                    ),
                ];
                let matches = headers
                    .get(header::IF_NONE_MATCH)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
                if matches {
                    not_modified.fetch_add(1, Ordering::SeqCst);
                    return (StatusCode::NOT_MODIFIED, validators).into_response();
                }
                full.fetch_add(1, Ordering::SeqCst);
                (
                    validators,
                    [(header::CONTENT_TYPE, "image/jpeg".to_owned())],
                    bytes,
                )
                    .into_response()
            }
        };
        let page = move || {
            let page = page.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    std::fs::read_to_string(page).unwrap(),
                )
            }
        };
        let app = axum::Router::new()
            .route("/photos/{name}", axum::routing::get(photo))
            .route("/gallery.html", axum::routing::get(page));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            addr,
            full,
            not_modified,
        }
    }
}

/// Debian's Chromium, headless, in a process group of its own (its renderer and GPU processes
/// included) that is killed when this is dropped, with a throwaway profile.
struct Chromium {
    group: u32,
    _child: tokio::process::Child,
    _profile: tempfile::TempDir,
    /// The DevTools port.
    port: u16,
}

impl Chromium {
    async fn launch() -> Self {
        use std::os::unix::process::CommandExt as _;
        let binary = std::env::var("IMGPIPE_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let profile = tempfile::tempdir().unwrap();
        let mut command = std::process::Command::new(&binary);
        command
            .args([
                "--headless",
                // The test runs as root in CI, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0);
        let child = tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {binary}: {e} (Debian's chromium: compose/local/bootstrap installs it)"
                )
            });
        let group = child.id().unwrap();
        // Chromium writes the port it chose into the profile once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let port = support::eventually(
            Duration::from_secs(30),
            "Chromium's DevTools port",
            || async {
                let text = std::fs::read_to_string(&port_file).ok()?;
                text.lines().next()?.trim().parse::<u16>().ok()
            },
        )
        .await;
        Self {
            group,
            _child: child,
            _profile: profile,
            port,
        }
    }

    /// A DevTools session with the page Chromium opened at start.
    async fn page(&self) -> Devtools {
        let list = format!("http://127.0.0.1:{}/json/list", self.port);
        let url = support::eventually(Duration::from_secs(10), "Chromium's page target", || {
            let list = list.clone();
            async move {
                let targets: Vec<Value> = reqwest::get(&list).await.ok()?.json().await.ok()?;
                targets
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    .map(str::to_owned)
            }
        })
        .await;
        Devtools::connect(&url).await
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The whole group: the browser's helper processes too. Its id is the browser's pid,
        // which this test started.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.group)])
            .status();
    }
}

type Socket = futures::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

/// One DevTools protocol session: commands answered by id, events kept in arrival order.
struct Devtools {
    socket: Socket,
    replies: Arc<Mutex<HashMap<u64, tokio::sync::oneshot::Sender<Value>>>>,
    events: Arc<Mutex<Vec<Value>>>,
    next_id: u64,
}

impl Devtools {
    async fn connect(url: &str) -> Self {
        let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (socket, mut incoming) = stream.split();
        let replies: Arc<Mutex<HashMap<u64, tokio::sync::oneshot::Sender<Value>>>> = Arc::default();
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (r, e) = (replies.clone(), events.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = incoming.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let value: Value = serde_json::from_str(&text).unwrap();
                match value["id"].as_u64() {
                    Some(id) => {
                        if let Some(reply) = r.lock().unwrap().remove(&id) {
                            let _ = reply.send(value);
                        }
                    }
                    None => e.lock().unwrap().push(value),
                }
            }
        });
        Self {
            socket,
            replies,
            events,
            next_id: 0,
        }
    }

    /// Sends `method` and returns its `result`; panics with the protocol's error.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.replies.lock().unwrap().insert(id, tx);
        let command = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::text(command.to_string()))
            .await
            .unwrap();
        let reply = tokio::time::timeout(LOAD_TIMEOUT, rx)
            .await
            .unwrap_or_else(|_| panic!("{method}: no answer from Chromium"))
            .unwrap();
        assert!(reply["error"].is_null(), "{method}: {}", reply["error"]);
        reply["result"].clone()
    }

    /// How many events have arrived: a mark for [`Self::events_since`].
    fn mark(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    fn events_since(&self, mark: usize) -> Vec<Value> {
        self.events.lock().unwrap()[mark..].to_vec()
    }

    async fn wait_for_event(&self, mark: usize, method: &str) {
        support::eventually(LOAD_TIMEOUT, method, || async {
            self.events_since(mark)
                .iter()
                .any(|e| e["method"] == method)
                .then_some(())
        })
        .await;
    }

    /// Runs `expression` in the page (awaiting a promise) and returns its value.
    async fn evaluate(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        assert!(
            result["exceptionDetails"].is_null(),
            "{}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// Opens `url` with the screen's pixel ratio `dpr` (or reloads the page when `url` is
    /// `None`), waits for its load event (every picture loaded or failed), and returns the
    /// network events of that load and every picture as the page sees it.
    async fn load(&mut self, url: Option<&str>, dpr: u32) -> (Vec<Value>, Vec<Shown>) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": 1000, "deviceScaleFactor": dpr, "mobile": false}),
        )
        .await;
        let mark = self.mark();
        match url {
            Some(url) => self.call("Page.navigate", json!({"url": url})).await,
            None => self.call("Page.reload", json!({})).await,
        };
        let started = std::time::Instant::now();
        self.wait_for_event(mark, "Page.loadEventFired").await;
        println!(
            "{} at {dpr}x: loaded in {:?}",
            url.unwrap_or("reload"),
            started.elapsed()
        );
        let shown = self.evaluate(SHOWN).await;
        let shown: Vec<Shown> = serde_json::from_value(shown).unwrap();
        (self.events_since(mark), shown)
    }
}

/// Every `<img>` of the page: what it claims (`data-`) and what the browser made of it.
const SHOWN: &str = r#"(async () => {
  const images = [...document.querySelectorAll('img')];
  await Promise.all(images.map(i => i.decode().catch(() => {})));
  return images.map(i => ({
    photo: i.dataset.photo,
    variant: i.dataset.variant,
    natural_1x: i.getAttribute('data-natural-1x'),
    natural_2x: i.getAttribute('data-natural-2x'),
    format: i.dataset.format,
    srcset: i.getAttribute('srcset'),
    current_src: i.currentSrc,
    complete: i.complete,
    natural_width: i.naturalWidth,
    natural_height: i.naturalHeight,
  }));
})()"#;

#[derive(Debug, serde::Deserialize)]
struct Shown {
    photo: String,
    variant: String,
    natural_1x: String,
    natural_2x: String,
    format: String,
    srcset: String,
    current_src: String,
    complete: bool,
    natural_width: u32,
    natural_height: u32,
}

impl Shown {
    fn name(&self) -> String {
        format!("{} {}", self.photo, self.variant)
    }

    /// The `srcset` candidate for pixel ratio `dpr`.
    fn candidate(&self, dpr: u32) -> &str {
        let density = format!(" {dpr}x");
        self.srcset
            .split(", ")
            .find_map(|c| c.strip_suffix(&density))
            .unwrap_or_else(|| panic!("{}: no {dpr}x candidate in {}", self.name(), self.srcset))
    }
}

/// What the network said about one URL during one load.
#[derive(Debug, Default)]
struct Fetch {
    /// The response's status, MIME type and headers (names lower-cased).
    status: Option<u16>,
    mime: String,
    headers: HashMap<String, String>,
    from_disk_cache: bool,
    from_memory_cache: bool,
    failed: Option<String>,
    request_id: String,
}

/// The network events of one load, by URL (the last request for a URL, if several).
fn fetches(events: &[Value]) -> HashMap<String, Fetch> {
    let mut by_id: HashMap<String, (String, Fetch)> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let headers = |value: &Value| -> HashMap<String, String> {
        value
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.to_lowercase(), v.as_str().unwrap_or_default().to_owned()))
            .collect()
    };
    for event in events {
        let params = &event["params"];
        let id = params["requestId"].as_str().unwrap_or_default().to_owned();
        fn entry<'a>(
            by_id: &'a mut HashMap<String, (String, Fetch)>,
            id: &str,
        ) -> &'a mut (String, Fetch) {
            by_id.entry(id.to_owned()).or_insert_with(|| {
                let fetch = Fetch {
                    request_id: id.to_owned(),
                    ..Fetch::default()
                };
                (String::new(), fetch)
            })
        }
        match event["method"].as_str().unwrap_or_default() {
            "Network.requestWillBeSent" => {
                entry(&mut by_id, &id).0 = params["request"]["url"].as_str().unwrap().to_owned();
                order.push(id.clone());
            }
            "Network.requestServedFromCache" => entry(&mut by_id, &id).1.from_memory_cache = true,
            "Network.responseReceived" => {
                let response = &params["response"];
                let (url, fetch) = entry(&mut by_id, &id);
                *url = response["url"].as_str().unwrap().to_owned();
                fetch.status = response["status"].as_u64().map(|s| s as u16);
                fetch.mime = response["mimeType"].as_str().unwrap_or_default().to_owned();
                fetch.from_disk_cache = response["fromDiskCache"] == true;
                fetch.headers = headers(&response["headers"]);
            }
            // The status and headers as they came off the wire, also for a response the
            // browser then blocked (an error's JSON body is not an image: ORB).
            "Network.responseReceivedExtraInfo" => {
                let fetch = &mut entry(&mut by_id, &id).1;
                fetch.status = fetch
                    .status
                    .or(params["statusCode"].as_u64().map(|s| s as u16));
                if fetch.headers.is_empty() {
                    fetch.headers = headers(&params["headers"]);
                }
            }
            "Network.loadingFailed" => {
                entry(&mut by_id, &id).1.failed =
                    Some(params["errorText"].as_str().unwrap_or("?").to_owned());
            }
            _ => {}
        }
    }
    let mut fetches = HashMap::new();
    for id in order {
        if let Some((url, fetch)) = by_id.remove(&id) {
            fetches.insert(url, fetch);
        }
    }
    fetches
}

impl Fetch {
    fn describe(&self) -> String {
        let header = |name: &str| self.headers.get(name).map_or("-", String::as_str);
        format!(
            "status {:?}, type {:?}, failed {:?}, disk cache {}, memory cache {}, \
             cache-control {}, etag {}, vary {}",
            self.status,
            self.mime,
            self.failed,
            self.from_disk_cache,
            self.from_memory_cache,
            header("cache-control"),
            header("etag"),
            header("vary")
        )
    }
}

/// `"320x240"` as numbers.
fn size(text: &str) -> (u32, u32) {
    let (w, h) = text.split_once('x').unwrap();
    (w.parse().unwrap(), h.parse().unwrap())
}

/// The pixel size in an AVIF, WebP or JPEG file's header, and its format by its bytes.
fn header_size(bytes: &[u8]) -> (&'static str, (u32, u32)) {
    if bytes.get(4..12) == Some(b"ftypavif") {
        // The primary item's `ispe` property: version and flags, then width and height.
        let at = bytes.windows(4).position(|w| w == b"ispe").unwrap() + 8;
        let word = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
        return ("avif", (word(at), word(at + 4)));
    }
    let format = image::guess_format(bytes).unwrap();
    let decoder = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let name = match format {
        image::ImageFormat::WebP => "webp",
        image::ImageFormat::Jpeg => "jpeg",
        other => panic!("unexpected {other:?}"),
    };
    (name, decoder.into_dimensions().unwrap())
}

/// Checks one load at pixel ratio `dpr`: every picture loaded, from its `dpr` candidate, at
/// that candidate's stated pixel size, in its stated format (by `Content-Type` and by its
/// bytes), with `Vary: Accept` exactly when the format was negotiated. Returns the failures.
async fn check_load(
    devtools: &mut Devtools,
    shown: &[Shown],
    events: &[Value],
    dpr: u32,
) -> Vec<String> {
    let fetches = fetches(events);
    let mut failures = Vec::new();
    let mut formats = std::collections::BTreeMap::<String, usize>::new();
    for image in shown {
        let name = image.name();
        let want_src = image.candidate(dpr);
        let Some(fetch) = fetches.get(want_src) else {
            failures.push(format!(
                "{name}: its {dpr}x candidate was never requested (current {})",
                image.current_src
            ));
            continue;
        };
        if !image.complete || image.natural_width == 0 {
            failures.push(format!(
                "{name}: did not load: {}; the same URL now: {}",
                fetch.describe(),
                answer_now(want_src).await
            ));
            continue;
        }
        if image.current_src != want_src {
            failures.push(format!(
                "{name}: shows {} instead of its {dpr}x candidate",
                image.current_src
            ));
        }
        let want_size = size(if dpr == 1 {
            &image.natural_1x
        } else {
            &image.natural_2x
        });
        let body = devtools
            .call(
                "Network.getResponseBody",
                json!({"requestId": fetch.request_id}),
            )
            .await;
        let bytes = if body["base64Encoded"] == true {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(body["body"].as_str().unwrap())
                .unwrap()
        } else {
            body["body"].as_str().unwrap().as_bytes().to_vec()
        };
        let (format, pixels) = header_size(&bytes);
        *formats
            .entry(format!("{} {format}", image.format))
            .or_default() += 1;
        if pixels != want_size {
            failures.push(format!(
                "{name}: {}x{} pixels at {dpr}x, expected {}x{}",
                pixels.0, pixels.1, want_size.0, want_size.1
            ));
        }
        // The page's own view: at 1x the natural size is the pixel size.
        if dpr == 1 && (image.natural_width, image.natural_height) != want_size {
            failures.push(format!(
                "{name}: naturalWidth x naturalHeight {}x{}, expected {}x{}",
                image.natural_width, image.natural_height, want_size.0, want_size.1
            ));
        }
        let vary_accept = fetch.headers.get("vary").is_some_and(|v| {
            v.split(',')
                .any(|h| h.trim().eq_ignore_ascii_case("accept"))
        });
        let ok = match image.format.as_str() {
            // Chromium accepts both; which one depends on the api's AVIF encode budget.
            "negotiated" => {
                matches!(fetch.mime.as_str(), "image/avif" | "image/webp")
                    && fetch.mime == format!("image/{format}")
                    && vary_accept
            }
            "jpeg" => fetch.mime == "image/jpeg" && format == "jpeg" && !vary_accept,
            other => panic!("{name}: unknown data-format {other}"),
        };
        if !ok {
            failures.push(format!(
                "{name}: stated format {}, got {format} bytes with {}",
                image.format,
                fetch.describe()
            ));
        }
    }
    println!("at {dpr}x: stated format → got: {formats:?}");
    failures
}

/// What the api answers `url` now, with Chromium's `Accept` for images: the status, type and
/// the start of the body (for a failure's message: the browser does not show an error's body).
async fn answer_now(url: &str) -> String {
    let response = reqwest::Client::new()
        .get(url)
        .header(
            "accept",
            "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",
        )
        .send()
        .await;
    let Ok(response) = response else {
        return format!("{response:?}");
    };
    let status = response.status();
    let header = |name: &str| {
        let value = response.headers().get(name);
        value.map_or("-", |v| v.to_str().unwrap_or("?")).to_owned()
    };
    let (content_type, timing) = (header("content-type"), header("server-timing"));
    let body = response.bytes().await.unwrap_or_default();
    if content_type.starts_with("image/") {
        format!(
            "{status} {content_type}, {} bytes, server-timing {timing}",
            body.len()
        )
    } else {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        format!("{status} {content_type} {text}")
    }
}

/// Reloads the page at 1x and checks that every picture came back without a resize: from the
/// browser's cache or as a 304 (only a 304 when `revalidated`), with no resizer job and no full
/// fetch from the origin. Returns how many pictures came back each way.
async fn check_reload(
    devtools: &mut Devtools,
    hosted: &support::Hosted,
    origin: &Origin,
    revalidated: bool,
) -> HashMap<&'static str, usize> {
    let jobs_before = counter_sum(hosted.ops, "imgpipe_resizer_jobs_total").await;
    let origin_full_before = origin.full.load(Ordering::SeqCst);
    let (events, shown) = devtools.load(None, 1).await;
    let fetches = fetches(&events);
    let mut failures = Vec::new();
    let mut how = HashMap::new();
    for image in &shown {
        if !image.complete || image.natural_width == 0 {
            failures.push(format!("{}: did not load after the reload", image.name()));
        }
        let reused = match fetches.get(image.candidate(1)) {
            // Blink's memory cache may hand the image over without a request at all.
            None if !revalidated => "memory cache (no request)",
            Some(f) if f.from_memory_cache && !revalidated => "memory cache",
            Some(f) if f.from_disk_cache && !revalidated => "disk cache",
            Some(f) if f.status == Some(304) => "304",
            other => {
                let got = other.map_or_else(|| "no request".to_owned(), Fetch::describe);
                let wanted = if revalidated {
                    "a 304"
                } else {
                    "from cache or a 304"
                };
                failures.push(format!("{}: wanted {wanted}, got {got}", image.name()));
                continue;
            }
        };
        *how.entry(reused).or_default() += 1;
    }
    let jobs_after = counter_sum(hosted.ops, "imgpipe_resizer_jobs_total").await;
    if jobs_after != jobs_before {
        failures.push(format!(
            "the reload reached the resizers: imgpipe_resizer_jobs_total {jobs_before} → {jobs_after}"
        ));
    }
    let origin_full = origin.full.load(Ordering::SeqCst) - origin_full_before;
    if origin_full != 0 {
        failures.push(format!(
            "the reload fetched {origin_full} photos in full from the origin"
        ));
    }
    let after = if revalidated { " after max-age" } else { "" };
    assert!(
        failures.is_empty(),
        "reload{after}:\n{}",
        failures.join("\n")
    );
    how
}

/// The sum of a labelled counter over its labels, from the ops endpoint at `ops`.
async fn counter_sum(ops: SocketAddr, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Writes two photo-like JPEGs (a landscape and a portrait, both large enough for every 2x
/// box) into `dir`: smooth gradients with a bright, saturated disc off centre, as a subject for
/// the smart crop. (Pixel noise, as the other tests' images have, costs AVIF's encoder seconds
/// per picture, which no photo does.)
fn write_photos(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, w, h) in [("landscape.jpg", 1024, 683), ("portrait.jpg", 720, 960)] {
        let (cx, cy, r) = (
            f64::from(w) * 0.7,
            f64::from(h) * 0.35,
            f64::from(w.min(h)) / 6.0,
        );
        let photo = image::RgbImage::from_fn(w, h, |x, y| {
            let (fx, fy) = (f64::from(x), f64::from(y));
            if (fx - cx).hypot(fy - cy) < r {
                image::Rgb([230, 60, 40])
            } else {
                let sky = (fy / f64::from(h) * 120.0) as u8;
                image::Rgb([60 + sky / 2, 110 + sky / 3, (200 - sky as u32) as u8])
            }
        });
        let photo = image::DynamicImage::ImageRgb8(photo);
        std::fs::write(
            dir.join(name),
            support::images::encode(&photo, image::ImageFormat::Jpeg),
        )
        .unwrap();
    }
}

#[tokio::test]
async fn the_gallery_loads_in_chromium_at_its_sizes_and_formats_and_a_reload_resizes_nothing() {
    let pipeline = Pipeline::start_with("gallery_browser", |config| {
        // The 1x pictures are AVIF (within the default budget by the cost model), and a test
        // build's AVIF encoder takes seconds per picture on a busy machine; this test is about
        // what the browser gets, not how fast.
        config.api.request_timeout = Duration::from_secs(45);
        // Short enough that the test sees the cached answers go stale and revalidate.
        config.api.web.max_age = MAX_AGE;
        config.api.web.error_max_age = Duration::from_secs(1);
    })
    .await;
    let hosted = &pipeline.hosted;

    let work = tempfile::tempdir().unwrap();
    let photos = work.path().join("photos");
    let page = work.path().join("site/gallery.html");
    std::fs::create_dir_all(page.parent().unwrap()).unwrap();
    write_photos(&photos);
    let origin = Origin::start(photos.clone(), page.clone()).await;

    // A tenant that may fetch from the origin's photos, and a signing key of it, as the demo
    // makes them; the key as the admin API answered it, in the file `imgpipe gallery` reads.
    let source_base = format!("http://{}/photos/", origin.addr);
    let (_, key) = pipeline.tenant_with_signing_key(&source_base).await;
    let answer = json!({
        "key_id": key.key_id,
        "key": hex::encode(&key.key),
        "salt": hex::encode(&key.salt),
    });
    let signing_key = work.path().join("signing_key.json");
    std::fs::write(&signing_key, answer.to_string()).unwrap();

    // The page, by `imgpipe gallery`'s own code.
    let pictures: Vec<Picture> = imgpipe::gallery::write(&GalleryArgs {
        api_url: format!("http://{}", pipeline.api),
        signing_key,
        source_base,
        photos,
        photo: vec!["landscape.jpg".into(), "portrait.jpg".into()],
        out: page,
    })
    .unwrap();
    assert_eq!(pictures.len(), 10);
    pipeline.wait_for_signing_key(&key).await;

    let chromium = Chromium::launch().await;
    let mut devtools = chromium.page().await;
    devtools.call("Network.enable", json!({})).await;
    devtools.call("Page.enable", json!({})).await;
    // Over HTTP, as the demo serves it: opened as a file:// page, Chromium fetched stale
    // pictures again in full (200s, each a resize) where over HTTP it revalidated them (304s).
    let gallery_url = format!("http://{}/gallery.html", origin.addr);

    // 1x: every picture as its page states.
    let (events, shown) = devtools.load(Some(&gallery_url), 1).await;
    assert_eq!(shown.len(), pictures.len(), "{shown:?}");
    let failures = check_load(&mut devtools, &shown, &events, 1).await;
    assert!(failures.is_empty(), "at 1x:\n{}", failures.join("\n"));

    // A reload: each picture revalidated (304) or from the browser's cache, and no resize.
    let how = check_reload(&mut devtools, hosted, &origin, false).await;
    println!("reload: {how:?}");
    // Once the answers' max-age has passed, a reload revalidates every picture: a 304 each,
    // still without a resize or a full fetch from the origin.
    tokio::time::sleep(MAX_AGE + Duration::from_millis(500)).await;
    let how = check_reload(&mut devtools, hosted, &origin, true).await;
    println!(
        "reload after max-age: {how:?}; the origin answered {} conditional requests with 304",
        origin.not_modified.load(Ordering::SeqCst)
    );

    // 2x: the 2x candidates, at twice the pixels.
    let (events, shown) = devtools.load(Some(&gallery_url), 2).await;
    let failures = check_load(&mut devtools, &shown, &events, 2).await;
    assert!(failures.is_empty(), "at 2x:\n{}", failures.join("\n"));

    drop(devtools);
    drop(chromium);
    pipeline.hosted.stop().await;
}

//! The fetcher against origins started in this process on loopback addresses (127.0.0.1 and
//! 127.0.0.2; never anything else): with an allow list that lets loopback through, every origin
//! outcome maps to its code; with one that does not, every way of naming loopback (a name that
//! resolves to it, its IPv4-mapped form, decimal and octal forms, a redirect to it) is refused
//! before a connection is made.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use tokio::time::Instant;

use super::*;

/// A JPEG (16×16, grey).
fn jpeg() -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(16, 16, image::Rgb([120, 120, 120]))
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

const LIMIT: usize = 64 * 1024;

/// An origin on `ip`, port chosen by the kernel; counts the connections it accepts.
struct Origin {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Origin {
    async fn start(ip: Ipv4Addr) -> Self {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |r| answer(addr, r));
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        Self { addr, connections }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn status(code: u16) -> Response<Body> {
    let mut response = Response::new(full("no"));
    *response.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
    response
}

fn redirect(to: &str) -> Response<Body> {
    let mut response = status(302);
    response
        .headers_mut()
        .insert("location", to.parse().unwrap());
    response
}

/// The origin's routes.
async fn answer(
    me: SocketAddr,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    Ok(match segments.as_slice() {
        // An image, labelled as something else: the fetcher never looks at the label.
        ["jpeg"] => {
            let mut response = Response::new(full(jpeg()));
            response
                .headers_mut()
                .insert("content-type", "text/plain".parse().unwrap());
            response
        }
        ["version"] => Response::new(full(format!("{:?}", request.version()))),
        // Validators: an entity tag, or a date; each answers its own condition with 304.
        ["tagged"] => validated(&request, "if-none-match", "etag", "\"t1\""),
        ["dated"] => validated(
            &request,
            "if-modified-since",
            "last-modified",
            "Tue, 08 Dec 2026 00:00:00 GMT",
        ),
        ["to-tagged"] => redirect("/tagged"),
        ["status", code] => status(code.parse().unwrap()),
        // /chain/N redirects N times (relative Locations), then serves the image.
        ["chain", "0"] => redirect("/jpeg"),
        ["chain", n] => redirect(&format!("/chain/{}", n.parse::<u32>().unwrap() - 1)),
        ["loop"] => redirect(&format!("http://{me}/loop")),
        // /to?<url> redirects to <url>.
        ["to"] => redirect(&query),
        ["nowhere"] => status(302),
        ["scheme"] => redirect("file:///etc/passwd"),
        ["slow"] => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Response::new(full(jpeg()))
        }
        // The declared length is over the limit.
        ["big"] => Response::new(full(vec![0xAB; LIMIT + 1])),
        ["exact"] => Response::new(full(vec![0xAB; LIMIT])),
        // No declared length (chunked): cut while reading.
        ["big-chunked"] => {
            let chunks = (0..LIMIT / 1024 + 2)
                .map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![0xCD; 1024]))));
            Response::new(StreamBody::new(futures::stream::iter(chunks)).boxed())
        }
        _ => status(404),
    })
}

/// The image with `validator` in `field`, or 304 when the request's `condition` names it.
fn validated(
    request: &Request<hyper::body::Incoming>,
    condition: &str,
    field: &'static str,
    validator: &'static str,
) -> Response<Body> {
    let mut response = if request
        .headers()
        .get(condition)
        .is_some_and(|value| value == validator)
    {
        status(304)
    } else {
        Response::new(full(jpeg()))
    };
    response
        .headers_mut()
        .insert(field, validator.parse().unwrap());
    response
}

fn settings(allow: &[&str]) -> FetchSettings {
    FetchSettings {
        allow_private: allow.iter().map(|net| net.parse().unwrap()).collect(),
        connect_timeout: Duration::from_secs(2),
        max_redirects: 5,
    }
}

fn allowing_loopback() -> Fetcher {
    Fetcher::new(&settings(&["127.0.0.0/8", "::1/128"])).unwrap()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

async fn fetch(fetcher: &Fetcher, url: &str) -> Result<Fetched, FetchError> {
    fetcher.fetch(url, soon(), LIMIT).await
}

#[tokio::test]
async fn an_image_served_as_text_is_fetched_as_it_is() {
    let origin = Origin::start(Ipv4Addr::LOCALHOST).await;
    let fetched = fetch(&allowing_loopback(), &origin.url("/jpeg"))
        .await
        .unwrap();
    assert_eq!(fetched.bytes, jpeg());
    assert_eq!(fetched.redirects, 0);
}

#[tokio::test]
async fn a_fetch_keeps_the_origins_validator_and_revalidates_with_it() {
    let origin = Origin::start(Ipv4Addr::LOCALHOST).await;
    let fetcher = allowing_loopback();
    let tagged = fetch(&fetcher, &origin.url("/tagged")).await.unwrap();
    assert_eq!(tagged.validator.as_deref(), Some("\"t1\""));
    let dated = fetch(&fetcher, &origin.url("/dated")).await.unwrap();
    assert_eq!(
        dated.validator.as_deref(),
        Some("Tue, 08 Dec 2026 00:00:00 GMT")
    );
    let none = fetch(&fetcher, &origin.url("/jpeg")).await.unwrap();
    assert_eq!(none.validator, None);

    let revalidate = |path: &str, validator: &'static str| {
        let url = origin.url(path);
        let fetcher = fetcher.clone();
        async move { fetcher.revalidate(&url, validator, soon()).await }
    };
    // The entity tag goes in If-None-Match, the date in If-Modified-Since, on every hop.
    assert_eq!(
        revalidate("/tagged", "\"t1\"").await.unwrap(),
        Revalidation::NotModified
    );
    assert_eq!(
        revalidate("/dated", "Tue, 08 Dec 2026 00:00:00 GMT")
            .await
            .unwrap(),
        Revalidation::NotModified
    );
    assert_eq!(
        revalidate("/to-tagged", "\"t1\"").await.unwrap(),
        Revalidation::NotModified
    );
    // Another validator: the origin sends the image, which is not read.
    assert_eq!(
        revalidate("/tagged", "\"t0\"").await.unwrap(),
        Revalidation::Modified
    );
    assert_eq!(
        revalidate("/status/404", "\"t1\"").await.unwrap(),
        Revalidation::Other(404)
    );
    // The guard applies as for a fetch.
    let guarded = Fetcher::new(&settings(&[])).unwrap();
    assert!(matches!(
        guarded
            .revalidate(&origin.url("/tagged"), "\"t1\"", soon())
            .await,
        Err(FetchError::AddressRefused { .. })
    ));
}

#[test]
fn entity_tags_are_told_from_dates() {
    assert!(is_entity_tag("\"abc\""));
    assert!(is_entity_tag("W/\"abc\""));
    assert!(is_entity_tag("\"\""));
    assert!(!is_entity_tag("Tue, 08 Dec 2026 00:00:00 GMT"));
    assert!(!is_entity_tag("abc"));
    assert!(!is_entity_tag("\""));
}

#[tokio::test]
async fn origin_statuses_map_to_stable_codes() {
    let origin = Origin::start(Ipv4Addr::LOCALHOST).await;
    let fetcher = allowing_loopback();
    let host = origin.addr.to_string();
    for (path, status, code, message) in [
        (
            "/status/404",
            404,
            "source_not_found",
            format!("The source {host} answered 404: no such image"),
        ),
        (
            "/status/410",
            404,
            "source_not_found",
            format!("The source {host} answered 410: no such image"),
        ),
        (
            "/status/401",
            403,
            "source_forbidden",
            format!("The source {host} answered 401: access denied"),
        ),
        (
            "/status/403",
            403,
            "source_forbidden",
            format!("The source {host} answered 403: access denied"),
        ),
        (
            "/status/500",
            502,
            "source_unreachable",
            format!("The source {host} answered 500"),
        ),
        (
            "/status/503",
            502,
            "source_unreachable",
            format!("The source {host} answered 503"),
        ),
        (
            "/status/304",
            502,
            "source_unreachable",
            format!("The source {host} answered 304"),
        ),
        (
            "/nowhere",
            502,
            "source_unreachable",
            format!("The source {host} redirected to no http or https URL"),
        ),
        (
            "/scheme",
            502,
            "source_unreachable",
            format!("The source {host} redirected to no http or https URL"),
        ),
    ] {
        let error = fetch(&fetcher, &origin.url(path)).await.unwrap_err();
        assert_eq!(
            (error.status(), error.code()),
            (status, code),
            "{path}: {error}"
        );
        assert_eq!(error.to_string(), message, "{path}");
    }
}

#[tokio::test]
async fn redirects_are_followed_up_to_the_bound_and_no_further() {
    let origin = Origin::start(Ipv4Addr::LOCALHOST).await;
    let fetcher = allowing_loopback();
    let fetched = fetch(&fetcher, &origin.url("/chain/2")).await.unwrap();
    assert_eq!((fetched.bytes, fetched.redirects), (jpeg(), 3));
    // /chain/4 is five redirects (4, 3, 2, 1, 0 → /jpeg): exactly the bound.
    assert_eq!(
        fetch(&fetcher, &origin.url("/chain/4"))
            .await
            .unwrap()
            .redirects,
        5
    );
    for path in ["/chain/5", "/loop"] {
        let error = fetch(&fetcher, &origin.url(path)).await.unwrap_err();
        assert_eq!(error.code(), "source_unreachable", "{path}");
        assert_eq!(error.to_string(), "The source redirected more than 5 times");
    }
    let strict = Fetcher::new(&FetchSettings {
        max_redirects: 0,
        ..settings(&["127.0.0.0/8"])
    })
    .unwrap();
    let error = fetch(&strict, &origin.url("/chain/0")).await.unwrap_err();
    assert_eq!(error.to_string(), "The source redirected more than 0 times");
}

#[tokio::test]
async fn a_slow_origin_is_cut_off_at_the_deadline() {
    let origin = Origin::start(Ipv4Addr::LOCALHOST).await;
    let started = Instant::now();
    let error = allowing_loopback()
        .fetch(
            &origin.url("/slow"),
            started + Duration::from_millis(300),
            LIMIT,
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!((error.status(), error.code()), (504, "source_timeout"));
    assert_eq!(
        error.to_string(),
        "The source did not answer before the request's deadline"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    // A deadline already past fails at once.
    let error = allowing_loopback()
        .fetch(&origin.url("/jpeg"), Instant::now(), LIMIT)
        .await
        .unwrap_err();
    assert_eq!(error.code(), "source_timeout");
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_or_without_a_length() {
    let origin = Origin::start(Ipv4Addr::LOCALHOST).await;
    let fetcher = allowing_loopback();
    for path in ["/big", "/big-chunked"] {
        let error = fetch(&fetcher, &origin.url(path)).await.unwrap_err();
        assert_eq!(
            (error.status(), error.code()),
            (413, "source_too_large"),
            "{path}"
        );
        assert_eq!(
            error.to_string(),
            format!("The source image is larger than the limit of {LIMIT} bytes")
        );
    }
    let exact = fetch(&fetcher, &origin.url("/exact")).await.unwrap();
    assert_eq!(exact.bytes.len(), LIMIT, "the limit itself is allowed");
}

#[tokio::test]
async fn http2_is_spoken_where_the_origin_does() {
    let origin = Origin::start(Ipv4Addr::LOCALHOST).await;
    let h2 = Fetcher::h2c_for_tests(&settings(&["127.0.0.0/8"])).unwrap();
    assert_eq!(
        fetch(&h2, &origin.url("/version")).await.unwrap().bytes,
        b"HTTP/2.0"
    );
    assert_eq!(
        fetch(&h2, &origin.url("/jpeg")).await.unwrap().bytes,
        jpeg()
    );
    let h1 = allowing_loopback();
    assert_eq!(
        fetch(&h1, &origin.url("/version")).await.unwrap().bytes,
        b"HTTP/1.1"
    );
}

#[tokio::test]
async fn connections_are_pooled() {
    let origin = Origin::start(Ipv4Addr::LOCALHOST).await;
    let fetcher = allowing_loopback();
    for _ in 0..5 {
        fetch(&fetcher, &origin.url("/jpeg")).await.unwrap();
    }
    assert_eq!(
        origin.connections(),
        1,
        "one kept-alive connection for five fetches"
    );
}

#[tokio::test]
async fn a_closed_port_is_unreachable_and_a_bad_url_is_refused() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let error = fetch(&allowing_loopback(), &format!("http://{closed}/jpeg"))
        .await
        .unwrap_err();
    assert_eq!((error.status(), error.code()), (502, "source_unreachable"));
    assert_eq!(
        error.to_string(),
        format!("Connecting to the source {closed} failed")
    );
    // (None of these may name a host that is not in /etc/hosts: resolving one would ask a
    // nameserver off this machine.)
    for url in [
        "ftp://127.0.0.1/x",
        "file:///etc/passwd",
        "not a url",
        "http://",
        "https://:80/",
    ] {
        let error = fetch(&allowing_loopback(), url).await.unwrap_err();
        assert_eq!(
            (error.status(), error.code()),
            (400, "bad_source_url"),
            "{url}"
        );
    }
}

/// A fetcher with the built-in default: nothing private allowed.
fn refusing_loopback() -> Fetcher {
    Fetcher::new(&settings(&[])).unwrap()
}

#[tokio::test]
async fn every_way_of_naming_loopback_is_refused_without_connecting() {
    let origin = Origin::start(Ipv4Addr::LOCALHOST).await;
    let port = origin.addr.port();
    let fetcher = refusing_loopback();
    for (url, host) in [
        (
            format!("http://127.0.0.1:{port}/jpeg"),
            format!("127.0.0.1:{port}"),
        ),
        (
            format!("http://127.1.2.3:{port}/jpeg"),
            format!("127.1.2.3:{port}"),
        ),
        // A name that resolves to it (through the resolver, not the literal check).
        (
            format!("http://localhost:{port}/jpeg"),
            format!("localhost:{port}"),
        ),
        (
            format!("http://LocalHost:{port}/jpeg"),
            format!("localhost:{port}"),
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/jpeg"),
            format!("[::ffff:7f00:1]:{port}"),
        ),
        (format!("http://[::1]:{port}/jpeg"), format!("[::1]:{port}")),
        // Decimal, octal and hex forms: the URL parser makes them 127.0.0.1.
        (
            format!("http://2130706433:{port}/jpeg"),
            format!("127.0.0.1:{port}"),
        ),
        (
            format!("http://0177.0.0.1:{port}/jpeg"),
            format!("127.0.0.1:{port}"),
        ),
        (
            format!("http://0x7f.1:{port}/jpeg"),
            format!("127.0.0.1:{port}"),
        ),
        (format!("http://0:{port}/jpeg"), format!("0.0.0.0:{port}")),
    ] {
        let error = fetch(&fetcher, &url).await.unwrap_err();
        assert_eq!(
            (error.status(), error.code()),
            (403, "source_address_refused"),
            "{url}: {error}"
        );
        assert!(
            matches!(&error, FetchError::AddressRefused { host: h, .. } if *h == host),
            "{url}: {error:?}"
        );
        // The same host the usage record's `source_host` takes: the URL parser's normal form.
        let parsed = url::Url::parse(&url).unwrap();
        let normal = format!("{}:{}", parsed.host_str().unwrap(), parsed.port().unwrap());
        assert_eq!(normal, host);
    }
    let error = fetch(&fetcher, &format!("http://localhost:{port}/jpeg"))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "The source host localhost:{port} is a loopback address, which this service does not fetch from"
        ),
        "names the host and the range class, not the address"
    );
    assert_eq!(origin.connections(), 0, "no connection was ever made");
}

#[tokio::test]
async fn a_redirect_to_a_refused_address_is_refused_on_the_hop() {
    // Allowed: 127.0.0.2 only. Its origin redirects to 127.0.0.1, by address and by name.
    let allowed = Origin::start(Ipv4Addr::new(127, 0, 0, 2)).await;
    let refused = Origin::start(Ipv4Addr::LOCALHOST).await;
    let fetcher = Fetcher::new(&settings(&["127.0.0.2/32"])).unwrap();
    assert_eq!(
        fetch(&fetcher, &allowed.url("/jpeg")).await.unwrap().bytes,
        jpeg()
    );
    let port = refused.addr.port();
    for target in [
        format!("http://127.0.0.1:{port}/jpeg"),
        format!("http://localhost:{port}/jpeg"),
        format!("http://2130706433:{port}/jpeg"),
    ] {
        let error = fetch(&fetcher, &allowed.url(&format!("/to?{target}")))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                FetchError::AddressRefused {
                    class: RangeClass::Loopback,
                    ..
                }
            ),
            "{target}: {error:?}"
        );
    }
    assert_eq!(
        refused.connections(),
        0,
        "the refused origin was never connected to"
    );
    // Straight to the refused one, too.
    let error = fetch(&fetcher, &refused.url("/jpeg")).await.unwrap_err();
    assert_eq!(error.code(), "source_address_refused");
    assert_eq!(refused.connections(), 0);
}

#[test]
fn every_failure_has_a_stable_code_and_status() {
    let host = || "h".to_owned();
    let all = [
        (FetchError::BadUrl("x".into()), 400),
        (
            FetchError::NotFound {
                host: host(),
                status: 404,
            },
            404,
        ),
        (
            FetchError::Forbidden {
                host: host(),
                status: 401,
            },
            403,
        ),
        (FetchError::TooLarge { limit: 1 }, 413),
        (FetchError::Timeout(Timeout::Deadline), 504),
        (FetchError::Timeout(Timeout::Connect(host())), 504),
        (FetchError::Unreachable(Unreachable::Dns(host())), 502),
        (
            FetchError::Unreachable(Unreachable::TooManyRedirects(5)),
            502,
        ),
        (
            FetchError::AddressRefused {
                host: host(),
                class: RangeClass::LinkLocal,
            },
            403,
        ),
    ];
    for (error, status) in &all {
        assert_eq!(error.status(), *status, "{error:?}");
        assert!(codes::ALL.contains(&error.code()));
    }
}

//! The fetcher: one pooled HTTP client (HTTP/1.1, and HTTP/2 where TLS negotiates it) that gets a
//! source image within the request's deadline and the input byte limit.
//!
//! Every destination passes the [`AddressGuard`]: names through [`GuardedResolver`], which
//! hands the connector only the addresses the guard allows (so the address checked is the
//! address connected to, with no second lookup in between), IP-literal hosts (which the
//! connector never resolves) here before each request. Redirects are followed by hand, so each
//! hop is checked again, up to `max_redirects`. No proxy is used: a proxy would resolve and
//! connect on our behalf, past the guard. The body is streamed and cut at the limit; the
//! `Content-Type` is ignored (the kernel sniffs the bytes).
//!
//! A fetch keeps the origin's validator (`ETag`, else `Last-Modified`), and
//! [`Fetcher::revalidate`] asks the origin, with that validator, whether the source changed: the
//! api answers a browser's `If-None-Match` with 304 on the origin's 304, without a resize.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{StatusCode, Url, header, redirect};
use tokio::time::Instant;

use super::error::{FetchError, Timeout, Unreachable};
use super::guard::{AddressGuard, RangeClass};

/// How the fetcher connects and what it may connect to.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// Ranges the guard lets through although they are not public (empty: none).
    pub allow_private: Vec<IpNet>,
    /// Longest wait for one connection (TCP and TLS), within the request's deadline.
    pub connect_timeout: Duration,
    /// Redirects followed at most; one more is `source_unreachable`.
    pub max_redirects: usize,
}

/// A fetched source.
#[derive(Debug)]
pub struct Fetched {
    /// The body, at most the limit the fetch was given.
    pub bytes: Vec<u8>,
    /// Redirects followed to get it.
    pub redirects: usize,
    /// The origin's validator: its `ETag` as sent (a weak `W/` one included), else its
    /// `Last-Modified`; `None` when it sent neither.
    pub validator: Option<String>,
}

/// What the origin said to a conditional request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revalidation {
    /// 304: the source is as it was when the validator was given.
    NotModified,
    /// 2xx: a newer source (its body is not read); the caller fetches it afresh the usual way.
    Modified,
    /// Any other status (a 404, a 5xx, ...): nothing confirmed; the caller fetches the usual way,
    /// which reports the origin's error.
    Other(u16),
}

/// Fetches sources; cheap to share (one connection pool).
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    guard: Arc<AddressGuard>,
    max_redirects: usize,
}

impl Fetcher {
    /// A fetcher with its own connection pool.
    pub fn new(settings: &FetchSettings) -> Result<Self, reqwest::Error> {
        Self::build(settings, false)
    }

    /// As [`Fetcher::new`], speaking HTTP/2 without TLS from the first byte (h2c "prior
    /// knowledge"): only for tests against loopback origins, since plain-HTTP origins on the
    /// web speak HTTP/1.1 and TLS ones negotiate HTTP/2 themselves.
    #[cfg(test)]
    pub(crate) fn h2c_for_tests(settings: &FetchSettings) -> Result<Self, reqwest::Error> {
        Self::build(settings, true)
    }

    fn build(settings: &FetchSettings, h2c: bool) -> Result<Self, reqwest::Error> {
        let guard = Arc::new(AddressGuard::new(settings.allow_private.clone()));
        let mut builder = reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .no_proxy()
            .dns_resolver(GuardedResolver {
                guard: Arc::clone(&guard),
            })
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("imgpipe/", env!("CARGO_PKG_VERSION")));
        if h2c {
            builder = builder.http2_prior_knowledge();
        }
        Ok(Self {
            client: builder.build()?,
            guard,
            max_redirects: settings.max_redirects,
        })
    }

    /// Fetches `source` (an absolute http or https URL), following redirects, before
    /// `deadline`, refusing a body of more than `max_bytes`. Holds at most `max_bytes` plus one
    /// network chunk in memory.
    pub async fn fetch(
        &self,
        source: &str,
        deadline: Instant,
        max_bytes: usize,
    ) -> Result<Fetched, FetchError> {
        let url = parse(source).ok_or_else(|| FetchError::BadUrl(source.to_owned()))?;
        // Not started past its deadline (a timer would let a fast first poll through).
        if deadline <= Instant::now() {
            return Err(FetchError::Timeout(Timeout::Deadline));
        }
        tokio::time::timeout_at(deadline, self.follow(url, max_bytes))
            .await
            .unwrap_or(Err(FetchError::Timeout(Timeout::Deadline)))
    }

    /// Asks the origin of `source` whether it changed since it answered with `validator` (an
    /// `ETag` goes in `If-None-Match`, a date in `If-Modified-Since`), following redirects and
    /// guarded as [`Fetcher::fetch`] is, before `deadline`. The body of a changed source is never
    /// read: the connection is dropped once its headers arrive.
    pub async fn revalidate(
        &self,
        source: &str,
        validator: &str,
        deadline: Instant,
    ) -> Result<Revalidation, FetchError> {
        let url = parse(source).ok_or_else(|| FetchError::BadUrl(source.to_owned()))?;
        if deadline <= Instant::now() {
            return Err(FetchError::Timeout(Timeout::Deadline));
        }
        let condition = if is_entity_tag(validator) {
            header::IF_NONE_MATCH
        } else {
            header::IF_MODIFIED_SINCE
        };
        let value = header::HeaderValue::from_str(validator)
            .map_err(|_| FetchError::BadUrl(source.to_owned()))?;
        let answered = tokio::time::timeout_at(deadline, self.send(url, Some((condition, value))))
            .await
            .unwrap_or(Err(FetchError::Timeout(Timeout::Deadline)))?;
        let status = answered.response.status();
        Ok(if status == StatusCode::NOT_MODIFIED {
            Revalidation::NotModified
        } else if status.is_success() {
            Revalidation::Modified
        } else {
            Revalidation::Other(status.as_u16())
        })
    }

    async fn follow(&self, url: Url, max_bytes: usize) -> Result<Fetched, FetchError> {
        let Answered {
            response,
            host,
            redirects,
        } = self.send(url, None).await?;
        let status = response.status();
        match status.as_u16() {
            200..=299 => {
                let validator = validator_of(response.headers());
                Ok(Fetched {
                    bytes: read_body(response, max_bytes, &host).await?,
                    redirects,
                    validator,
                })
            }
            404 | 410 => Err(FetchError::NotFound {
                host,
                status: status.as_u16(),
            }),
            401 | 403 => Err(FetchError::Forbidden {
                host,
                status: status.as_u16(),
            }),
            other => Err(FetchError::Unreachable(Unreachable::Status {
                host,
                status: other,
            })),
        }
    }

    /// Sends a GET for `url` (with `condition`, when given, on every hop), following redirects
    /// by hand, each hop guarded, and returns the first answer that is not a redirect.
    async fn send(
        &self,
        mut url: Url,
        condition: Option<(header::HeaderName, header::HeaderValue)>,
    ) -> Result<Answered, FetchError> {
        let mut redirects = 0;
        loop {
            let host = host_of(&url);
            self.check_literal(&url, &host)?;
            let mut request = self
                .client
                .get(url.clone())
                .header(header::ACCEPT, "image/*");
            if let Some((name, value)) = &condition {
                request = request.header(name, value);
            }
            let response = request
                .send()
                .await
                .map_err(|error| classify(&error, &host))?;
            if !is_redirect(response.status()) {
                return Ok(Answered {
                    response,
                    host,
                    redirects,
                });
            }
            if redirects >= self.max_redirects {
                return Err(FetchError::Unreachable(Unreachable::TooManyRedirects(
                    self.max_redirects,
                )));
            }
            url = response
                .headers()
                .get(header::LOCATION)
                .and_then(|location| location.to_str().ok())
                .and_then(|location| url.join(location).ok())
                .filter(is_fetchable)
                .ok_or(FetchError::Unreachable(Unreachable::BadRedirect(host)))?;
            redirects += 1;
        }
    }

    /// An IP-literal host is never resolved, so the guard sees it here.
    fn check_literal(&self, url: &Url, host: &str) -> Result<(), FetchError> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.into(),
            Some(url::Host::Ipv6(ip)) => ip.into(),
            _ => return Ok(()),
        };
        self.guard
            .check(ip)
            .map_err(|refused| FetchError::AddressRefused {
                host: host.to_owned(),
                class: refused.class,
            })
    }
}

/// The origin's answer that ended a chain of redirects.
struct Answered {
    response: reqwest::Response,
    host: String,
    redirects: usize,
}

/// The origin's validator of a 2xx answer: its `ETag` (kept as sent, weak or strong), else its
/// `Last-Modified`; header values that are not visible ASCII are ignored.
fn validator_of(headers: &header::HeaderMap) -> Option<String> {
    [header::ETAG, header::LAST_MODIFIED]
        .iter()
        .filter_map(|name| headers.get(name)?.to_str().ok())
        .map(str::trim)
        .find(|value| !value.is_empty())
        .map(str::to_owned)
}

/// Whether `validator` is an entity tag (`"…"` or `W/"…"`, RFC 9110 §8.8.3) rather than a date.
pub fn is_entity_tag(validator: &str) -> bool {
    let opaque = validator.strip_prefix("W/").unwrap_or(validator);
    opaque.len() >= 2 && opaque.starts_with('"') && opaque.ends_with('"')
}

fn host_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

fn parse(source: &str) -> Option<Url> {
    Url::parse(source).ok().filter(is_fetchable)
}

fn is_fetchable(url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https") && url.host_str().is_some_and(|h| !h.is_empty())
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Reads the body, refusing it once it passes `max_bytes` (at once when `Content-Length` says
/// so).
async fn read_body(
    mut response: reqwest::Response,
    max_bytes: usize,
    host: &str,
) -> Result<Vec<u8>, FetchError> {
    let too_large = || FetchError::TooLarge { limit: max_bytes };
    let declared = response.content_length();
    if declared.is_some_and(|length| length > max_bytes as u64) {
        return Err(too_large());
    }
    let capacity = declared.map_or(0, |length| usize::try_from(length).unwrap_or(max_bytes));
    let mut body = Vec::with_capacity(capacity.min(max_bytes));
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| classify(&error, host))?
    {
        if body.len() + chunk.len() > max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Sorts a client error into what the client is told; the error itself is logged here, since
/// its words (addresses, TLS details) never reach the client.
fn classify(error: &reqwest::Error, host: &str) -> FetchError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(refused) = current.downcast_ref::<AllAddressesRefused>() {
            return FetchError::AddressRefused {
                host: host.to_owned(),
                class: refused.class,
            };
        }
        if current.downcast_ref::<NoAddress>().is_some() {
            return FetchError::Unreachable(Unreachable::Dns(host.to_owned()));
        }
        cause = current.source();
    }
    tracing::debug!(host, error = %ErrorChain(error), "Source fetch failed");
    if error.is_timeout() {
        if error.is_connect() {
            FetchError::Timeout(Timeout::Connect(host.to_owned()))
        } else {
            FetchError::Timeout(Timeout::Deadline)
        }
    } else if error.is_connect() {
        FetchError::Unreachable(Unreachable::Connect(host.to_owned()))
    } else {
        FetchError::Unreachable(Unreachable::Transfer(host.to_owned()))
    }
}

/// An error with its causes, `: `-separated.
struct ErrorChain<'e>(&'e (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(current) = cause {
            write!(f, ": {current}")?;
            cause = current.source();
        }
        Ok(())
    }
}

/// Resolves names with the system resolver and keeps only the addresses the guard allows: the
/// connector connects to nothing else.
struct GuardedResolver {
    guard: Arc<AddressGuard>,
}

/// Every address of a name was refused by the guard.
#[derive(Debug, thiserror::Error)]
#[error("every address of the host is in a refused range ({class})")]
struct AllAddressesRefused {
    class: RangeClass,
}

/// The name did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("the host did not resolve: {0}")]
struct NoAddress(String);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = Arc::clone(&self.guard);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|error| NoAddress(error.to_string()))?
                .collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match guard.check(addr.ip()) {
                    Ok(()) => true,
                    Err(r) => {
                        refused.get_or_insert(r.class);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (false, _) => Ok(Box::new(allowed.into_iter()) as Addrs),
                (true, Some(class)) => Err(AllAddressesRefused { class }.into()),
                (true, None) => Err(NoAddress("no addresses".into()).into()),
            }
        })
    }
}

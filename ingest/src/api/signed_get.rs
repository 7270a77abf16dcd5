//! `GET /v1/img/{key_id}/{signature}/{options}/{source}`: signed URLs in imgproxy's format, for
//! web pages (`<img src>`, `srcset`, CSS, CDNs) that can send neither a body nor a bearer key.
//! The URL names a source image at an origin; the request event carries that URL (not the bytes)
//! and a resizer fetches it. From the produced request on, a GET is a POST: same reply, same
//! billing, same `Server-Timing`.
//!
//! Checks run cheapest and least revealing first: the signing key is looked up and the signature
//! verified before any option is parsed, so an unsigned or tampered URL costs one HMAC and learns
//! nothing (and spends none of the tenant's quota, charged only once the signature matched);
//! then the options, the expiry and the tenant's allowed sources.
//!
//! Answers are cacheable ([`web_cache`](super::web_cache)): a browser's `If-None-Match` holding
//! a tag this URL made is checked with the origin (a conditional request with the origin's own
//! validator), and the origin's 304 is answered 304 here, with no request produced and nothing
//! resized. Error answers get a short `Cache-Control`, or `no-store` for a 5xx.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use chassis::source::Revalidation;
use schemas::events::outcomes;

use super::call::{Call, Input, Next, ReadRequest, Received, UsageDraft};
use super::imgproxy;
use super::problem::{self, Problem};
use super::state::AppState;
use super::web_cache::Representation;
use crate::auth::{AuthError, Principal};

/// Where signed GETs are served; `{key_id}` follows, then imgproxy's path.
pub const PREFIX: &str = "/v1/img/";

/// Route template label for metrics.
const ROUTE: &str = "/v1/img";

/// Longest wait for an origin's answer to a revalidation (a quarter of the request's timeout
/// when that is shorter).
const REVALIDATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The handler of `GET /v1/img/...`.
pub(super) async fn image(State(state): State<AppState>, request: Request) -> Response {
    let call = Call::start(&request);
    let (request_id, received) = (call.request_id().to_owned(), call.received());
    // The body (never read: a GET) is not `Sync`, so only the head is held across awaits.
    let (head, _) = request.into_parts();
    let headers = &head.headers;
    let read = async {
        let read = read_signed(&state, head.uri.path(), headers, &request_id, received).await?;
        Ok(match not_modified(&state, &read, headers, received).await {
            Some(response) => Next::Answered(response, outcomes::NOT_MODIFIED),
            None => Next::from(read),
        })
    };
    let mut response = call.serve(&state, ROUTE, read).await;
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        let cache_control = state.config.web.error_cache_control(status);
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, cache_control);
    }
    response
}

/// A 304 for a client revalidating an answer of this URL (`If-None-Match` with a tag it made),
/// when the origin answers the conditional request with its own 304; `None` when the answer
/// must be made again (no such tag, the source changed, the origin failed to say). The 304 is
/// billed `not_modified`.
async fn not_modified(
    state: &AppState,
    read: &ReadRequest,
    headers: &HeaderMap,
    received: Received,
) -> Option<Response> {
    let (web, Input::Source { url }) = (read.web.as_ref()?, &read.input) else {
        return None;
    };
    let validator = web.revalidates(headers.get(header::IF_NONE_MATCH)?)?;
    // A quarter of the request's time, at most REVALIDATE_TIMEOUT: an origin slow to answer
    // leaves the rest for the resize the client then needs.
    let budget = (state.config.request_timeout / 4).min(REVALIDATE_TIMEOUT);
    let deadline = tokio::time::Instant::from_std(received.at + budget);
    let revalidated = state
        .sources
        .revalidate(url.as_str(), &validator, deadline)
        .await;
    state
        .metrics
        .revalidations
        .with_label_values(&[match &revalidated {
            Ok(Revalidation::NotModified) => "not_modified",
            Ok(Revalidation::Modified) => "modified",
            Ok(Revalidation::Other(_)) => "other_status",
            Err(error) => error.code(),
        }])
        .inc();
    if revalidated.ok()? != Revalidation::NotModified {
        return None;
    }
    state
        .publisher
        .record_usage(&read.usage.not_modified())
        .await;
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    web.apply(response.headers_mut(), Some(&validator));
    response.headers_mut().insert(
        "server-timing",
        HeaderValue::from_str(&format!(
            "revalidate;dur={:.3}",
            received.at.elapsed().as_secs_f64() * 1000.0
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("revalidate")),
    );
    Some(response)
}

/// Checks a signed URL and reads what it asks for. The path is the raw one the client sent: the
/// signature covers it byte for byte, before any percent-decoding.
async fn read_signed(
    state: &AppState,
    path: &str,
    headers: &HeaderMap,
    request_id: &str,
    received: Received,
) -> Result<ReadRequest, Problem> {
    let rest = path.strip_prefix(PREFIX).unwrap_or_default();
    let (key_id, signed_path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let draft = |principal: &Principal| UsageDraft {
        request_id: request_id.to_owned(),
        tenant_id: principal.tenant_id.to_string(),
        key_id: principal.key_id.to_string(),
        received,
        source_host: None,
    };
    let refused = |problem: Problem, usage: &UsageDraft| {
        let record = usage.answered(&problem, 0, None);
        async move {
            state.publisher.record_usage(&record).await;
            problem
        }
    };
    // Refused before the signature checked out: recorded against the key the URL names, when
    // it exists, like a refused API key (abuse of a key shows up per key and tenant).
    let refused_unsigned = |problem: Problem| async {
        let claimed = (problem.status != StatusCode::SERVICE_UNAVAILABLE)
            .then(|| state.auth.claimed_signing_key(key_id))
            .flatten();
        match claimed {
            Some(principal) => refused(problem, &draft(&principal)).await,
            None => problem,
        }
    };
    let Ok(signed) = imgproxy::split(signed_path) else {
        return Err(refused_unsigned(invalid_signature()).await);
    };
    let verified = state.auth.authenticate_signed(key_id, &|key| {
        imgproxy::signature_matches(&key.key, &key.salt, &signed.signed, signed.signature)
    });
    let principal = match verified {
        Ok(principal) => principal,
        Err(error) => return Err(refused_unsigned(from_signing_auth(&error)).await),
    };
    // From here on the tenant is known and the URL is theirs: every answer is a usage record.
    let usage = draft(&principal.principal());
    let img = match imgproxy::parse(&signed.signed) {
        Ok(img) => img,
        Err(error) => return Err(refused(Problem::from(error), &usage).await),
    };
    let usage = UsageDraft {
        source_host: schemas::events::source_host(img.source_url.as_str()),
        ..usage
    };
    if img.is_expired(received.at_ms / 1000) {
        let problem = Problem::new(
            StatusCode::FORBIDDEN,
            "url_expired",
            "This URL has expired (its `expires` option is in the past).",
        );
        return Err(refused(problem, &usage).await);
    }
    if !principal.allows(&img.source_url) {
        let problem = Problem::new(
            StatusCode::FORBIDDEN,
            "source_not_allowed",
            "The source URL is not under one of this tenant's allowed sources.",
        );
        return Err(refused(problem, &usage).await);
    }
    let mut params = img.params;
    params.auto_format = state.config.web.negotiate(&params, headers);
    // Tags are keyed per signing key: a tenant's tags never revalidate another's answers.
    let web = state.signing.as_ref().map(|secret| {
        Representation::new(
            secret.etag_key(key_id),
            img.source_url.as_str(),
            &params,
            img.cachebuster.as_deref(),
            state.config.web.max_age,
            img.expires_at_s,
            received.at_ms / 1000,
        )
    });
    Ok(ReadRequest {
        usage,
        params,
        input: Input::Source {
            url: img.source_url,
        },
        web,
    })
}

/// 403 for a URL whose key or signature does not check out; never says which.
fn invalid_signature() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "invalid_signature",
        "The URL's signature is not valid.",
    )
}

/// Signed URLs answer an unknown or revoked key with 403 like a bad signature (a GET has no
/// credentials to be missing, so never 401); the other refusals as for API keys.
fn from_signing_auth(error: &AuthError) -> Problem {
    match error {
        AuthError::MissingCredentials | AuthError::InvalidKey => invalid_signature(),
        other => problem::from_auth(other),
    }
}

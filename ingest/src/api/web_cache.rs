//! How answers to signed GETs are cached by browsers and CDNs: `Cache-Control`, an `ETag` built
//! from the origin's validator and the canonical request, `Vary: Accept` exactly when the format
//! came from `Accept`, and the `If-None-Match` check that lets the api answer 304 after the
//! origin's own 304, with no resize.
//!
//! The `ETag` carries the origin's validator in the clear next to a keyed digest of it:
//! `"<digest>.<validator, base64url>"`. So a browser's `If-None-Match` alone tells the api which
//! validator to ask the origin about, with no state kept anywhere. The digest is an HMAC, keyed
//! from the signing secret and the URL's signing key, over the canonical request (release and
//! kernel revision, source URL, cachebuster, every option, the `Accept` class) and that
//! validator: it proves the api made the tag for this very URL, so a tag copied from another
//! image never revalidates this one, and nobody without the secret can make one up with a
//! validator of their choosing (say a far-future date that an origin would answer 304).

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use schemas::events::{AutoFormat, ResizeParams};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

/// What changes the bytes of an answer besides the source and the options: the kernel's output
/// revision (bumped with every change to what it makes; a kernel test holds it to the bytes) and
/// the release.
fn renderer() -> String {
    format!(
        "imgpipe/{} kernel/{}",
        env!("CARGO_PKG_VERSION"),
        schemas::events::KERNEL_OUTPUT_REVISION
    )
}

/// Bytes of the digest in a tag (128 bits: a collision needs 2^64 tries).
const DIGEST_BYTES: usize = 16;

/// How signed GETs are cached and negotiated (the `[api.web]` section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// `max-age` of an image answer (`Cache-Control: public, max-age=…`), capped by the URL's
    /// `expires`. A day by default: an origin may replace an image at the same URL, and a day
    /// bounds how long a browser or CDN shows the old one, while every later view within it
    /// costs nothing; after it, a revalidation is a 304 without a resize.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub max_age: Duration,
    /// `max-age` of a 4xx answer (a bad signature, a missing source), kept short so a fixed
    /// URL or origin is seen soon; 429, 408 and 5xx answers are `no-store`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub error_max_age: Duration,
    /// A URL that names no format gets the best one the client's `Accept` allows: AVIF when
    /// accepted and within `avif_budget`, else WebP when accepted, else the source's format;
    /// such answers carry `Vary: Accept`. Off: the source's format, and no `Vary`.
    pub auto_format: bool,
    /// Longest AVIF encode, by the kernel's cost model on one core, for a format chosen from
    /// `Accept`; a larger output gets WebP instead. 250 ms keeps thumbnails and 1× images
    /// (up to about 0.2 Mpx at the default effort) in AVIF within the pipeline's p99 target.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub avif_budget: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(86_400),
            error_max_age: Duration::from_secs(10),
            auto_format: true,
            avif_budget: Duration::from_millis(250),
        }
    }
}

impl WebConfig {
    /// Rules that span fields; one message per broken rule.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.avif_budget > Duration::from_secs(60) {
            errors.push("api.web.avif_budget must be at most 60s".into());
        }
        if self.error_max_age > self.max_age {
            errors.push("api.web.error_max_age must not exceed api.web.max_age".into());
        }
    }

    /// The format negotiated for `headers`' `Accept`, when the URL names none and negotiation is
    /// on; `None` otherwise (the answer then does not depend on `Accept`).
    pub fn negotiate(&self, params: &ResizeParams, headers: &HeaderMap) -> Option<AutoFormat> {
        if !self.auto_format || params.format.is_some() {
            return None;
        }
        let accept = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        Some(AutoFormat {
            avif: accepts(&accept, "image/avif"),
            webp: accepts(&accept, "image/webp"),
            avif_budget_ms: i32::try_from(self.avif_budget.as_millis()).unwrap_or(i32::MAX),
        })
    }

    /// `Cache-Control` of an error answer with `status`: short for a 4xx that says something
    /// about the URL or its source (a bad option, a missing source), none for an answer about
    /// this moment (429 rate limited, 408 too slow, every 5xx): a CDN that kept one would refuse
    /// every visitor of the URL for what one burst or one outage did.
    pub fn error_cache_control(&self, status: StatusCode) -> HeaderValue {
        let momentary = matches!(
            status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
        );
        if status.is_client_error() && !momentary {
            max_age_value(self.error_max_age.as_secs())
        } else {
            HeaderValue::from_static("no-store")
        }
    }
}

/// Whether `accept` (an `Accept` header's value) names `mime` explicitly with a non-zero
/// quality. Wildcards (`image/*`, `*/*`) are not enough: every browser sends them, including
/// those that cannot decode AVIF or WebP, so only an explicit entry counts (as imgproxy does).
fn accepts(accept: &str, mime: &str) -> bool {
    accept.split(',').any(|entry| {
        let mut parts = entry.split(';').map(str::trim);
        let named = parts.next().is_some_and(|m| m.eq_ignore_ascii_case(mime));
        // `q` as RFC 9110 writes it, spaces around `=` tolerated; an unreadable one does not count.
        let quality = parts
            .filter_map(|p| p.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .map_or(Some(1.0), |(_, q)| q.trim().parse::<f32>().ok());
        named && quality.is_some_and(|q| q > 0.0)
    })
}

fn max_age_value(seconds: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("public, max-age={seconds}"))
        .unwrap_or_else(|_| HeaderValue::from_static("no-store"))
}

/// One cacheable answer of a signed GET before its source is known: the canonical request
/// (source, options, negotiated `Accept` class) and how long it may be kept.
#[derive(Clone)]
pub struct Representation {
    /// HMAC key of the tags: the signing key's `etag_key`.
    key: [u8; 32],
    seed: [u8; 32],
    vary_accept: bool,
    max_age_s: u64,
}

impl std::fmt::Debug for Representation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Representation")
            .field("vary_accept", &self.vary_accept)
            .field("max_age_s", &self.max_age_s)
            .finish_non_exhaustive()
    }
}

impl Representation {
    /// The representation of `params` applied to `source_url` (with `cachebuster`), kept for
    /// `max_age` but never past `expires_at_s` (unix seconds) from `now_s`; its tags are made
    /// with `key` (the URL's signing key's `etag_key`).
    pub fn new(
        key: [u8; 32],
        source_url: &str,
        params: &ResizeParams,
        cachebuster: Option<&str>,
        max_age: Duration,
        expires_at_s: Option<i64>,
        now_s: i64,
    ) -> Self {
        let mut seed = Sha256::new();
        let renderer = renderer();
        for part in [
            renderer.as_bytes(),
            source_url.as_bytes(),
            cachebuster.unwrap_or_default().as_bytes(),
            // Field order is the struct's, so the text is stable for one release (and the renderer
            // changes with the release).
            serde_json::to_string(params).unwrap_or_default().as_bytes(),
        ] {
            seed.update((part.len() as u64).to_be_bytes());
            seed.update(part);
        }
        let until_expiry = expires_at_s
            .filter(|&at| at > 0)
            .map_or(u64::MAX, |at| u64::try_from(at - now_s).unwrap_or(0));
        Self {
            key,
            seed: seed.finalize().into(),
            vary_accept: params.format.is_none() && params.auto_format.is_some(),
            max_age_s: max_age.as_secs().min(until_expiry),
        }
    }

    /// The answer's `ETag` for a source with the origin's `validator`: strong when the
    /// origin's validator is a strong entity tag (the same source bytes and request give the same
    /// answer bytes), weak for a weak tag or a date.
    pub fn etag(&self, validator: &str) -> Option<HeaderValue> {
        let weak = !chassis::source::is_entity_tag(validator) || validator.starts_with("W/");
        let tag = format!(
            "{}\"{}.{}\"",
            if weak { "W/" } else { "" },
            URL_SAFE_NO_PAD.encode(self.digest(validator)),
            URL_SAFE_NO_PAD.encode(validator)
        );
        HeaderValue::from_str(&tag).ok()
    }

    /// The origin validator inside the first tag of `if_none_match` that this representation
    /// made (weak comparison, as RFC 9110 asks of `If-None-Match`); `None` when no tag is ours.
    pub fn revalidates(&self, if_none_match: &HeaderValue) -> Option<String> {
        let list = if_none_match.to_str().ok()?;
        list.split(',').find_map(|tag| {
            let tag = tag.trim();
            let opaque = tag.strip_prefix("W/").unwrap_or(tag);
            let inner = opaque.strip_prefix('"')?.strip_suffix('"')?;
            let (digest, validator) = inner.split_once('.')?;
            let digest = URL_SAFE_NO_PAD.decode(digest).ok()?;
            let validator = String::from_utf8(URL_SAFE_NO_PAD.decode(validator).ok()?).ok()?;
            bool::from(digest.ct_eq(&self.digest(&validator))).then_some(validator)
        })
    }

    /// Sets the caching headers of a 200 or 304 answer whose source had `validator`.
    pub fn apply(&self, headers: &mut HeaderMap, validator: Option<&str>) {
        headers.insert(header::CACHE_CONTROL, max_age_value(self.max_age_s));
        if let Some(etag) = validator.and_then(|v| self.etag(v)) {
            headers.insert(header::ETAG, etag);
        }
        if self.vary_accept {
            headers.insert(header::VARY, HeaderValue::from_static("Accept"));
        }
    }

    fn digest(&self, validator: &str) -> [u8; DIGEST_BYTES] {
        // HMAC takes keys of any length, so this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            unreachable!("HMAC takes keys of any length")
        };
        mac.update(&self.seed);
        mac.update(validator.as_bytes());
        let full: [u8; 32] = mac.finalize().into_bytes().into();
        let mut short = [0; DIGEST_BYTES];
        short.copy_from_slice(&full[..DIGEST_BYTES]);
        short
    }
}

#[cfg(test)]
mod tests {
    use schemas::events::ImageFormat;

    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn representation(params: &ResizeParams) -> Representation {
        Representation::new(
            KEY,
            "https://images.example.com/a.jpg",
            params,
            None,
            Duration::from_secs(86_400),
            None,
            1_700_000_000,
        )
    }

    fn width(w: i32) -> ResizeParams {
        ResizeParams {
            width: Some(w),
            ..ResizeParams::default()
        }
    }

    #[test]
    fn a_tag_revalidates_the_representation_that_made_it_and_no_other() {
        let mine = representation(&width(300));
        let tag = mine.etag("\"abc\"").unwrap();
        assert_eq!(mine.revalidates(&tag).as_deref(), Some("\"abc\""));
        // Listed among others, and compared weakly.
        let listed = HeaderValue::from_str(&format!("\"x\", W/{}", tag.to_str().unwrap())).unwrap();
        assert_eq!(mine.revalidates(&listed).as_deref(), Some("\"abc\""));
        // Other options, another source, another Accept class: not ours.
        assert_eq!(representation(&width(301)).revalidates(&tag), None);
        let other_source = Representation::new(
            KEY,
            "https://images.example.com/b.jpg",
            &width(300),
            None,
            Duration::from_secs(1),
            None,
            0,
        );
        assert_eq!(other_source.revalidates(&tag), None);
        let negotiated = ResizeParams {
            auto_format: Some(AutoFormat {
                avif: true,
                webp: true,
                avif_budget_ms: 250,
            }),
            ..width(300)
        };
        assert_eq!(representation(&negotiated).revalidates(&tag), None);
        // A forged validator with our digest of another one.
        let forged = tag.to_str().unwrap().replace(
            &URL_SAFE_NO_PAD.encode("\"abc\""),
            &URL_SAFE_NO_PAD.encode("\"abd\""),
        );
        assert_eq!(
            mine.revalidates(&HeaderValue::from_str(&forged).unwrap()),
            None
        );
        assert_eq!(mine.revalidates(&HeaderValue::from_static("*")), None);
        // The same request under another signing key (another tenant, or a forger without the
        // secret): not ours.
        let other_key = Representation::new(
            [8; 32],
            "https://images.example.com/a.jpg",
            &width(300),
            None,
            Duration::from_secs(86_400),
            None,
            1_700_000_000,
        );
        assert_eq!(other_key.revalidates(&tag), None);
    }

    #[test]
    fn a_new_origin_validator_makes_a_new_tag() {
        let mine = representation(&width(300));
        assert_ne!(mine.etag("\"v1\""), mine.etag("\"v2\""));
        assert!(
            !mine
                .etag("\"v1\"")
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("W/")
        );
        assert!(
            mine.etag("W/\"v1\"")
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("W/")
        );
        let dated = mine.etag("Tue, 08 Dec 2026 00:00:00 GMT").unwrap();
        assert!(
            dated.to_str().unwrap().starts_with("W/"),
            "a date is a weak validator"
        );
        assert_eq!(
            mine.revalidates(&dated).as_deref(),
            Some("Tue, 08 Dec 2026 00:00:00 GMT")
        );
    }

    #[test]
    fn caching_headers_say_vary_exactly_when_the_format_was_negotiated() {
        let config = WebConfig::default();
        let mut accept = HeaderMap::new();
        accept.insert(
            header::ACCEPT,
            HeaderValue::from_static("image/avif,image/webp,image/apng,image/*,*/*;q=0.8"),
        );
        let mut params = width(300);
        params.auto_format = config.negotiate(&params, &accept);
        let mut headers = HeaderMap::new();
        representation(&params).apply(&mut headers, Some("\"v\""));
        assert_eq!(headers[header::VARY], "Accept");
        assert_eq!(headers[header::CACHE_CONTROL], "public, max-age=86400");
        assert!(headers.contains_key(header::ETAG));

        let named = ResizeParams {
            format: Some(ImageFormat::Jpeg),
            ..width(300)
        };
        assert_eq!(config.negotiate(&named, &accept), None, "the URL named one");
        let mut headers = HeaderMap::new();
        representation(&named).apply(&mut headers, None);
        assert!(!headers.contains_key(header::VARY));
        assert!(!headers.contains_key(header::ETAG), "no validator, no tag");

        let off = WebConfig {
            auto_format: false,
            ..WebConfig::default()
        };
        assert_eq!(off.negotiate(&width(300), &accept), None);
    }

    #[test]
    fn accept_counts_explicit_entries_with_a_quality_above_zero() {
        let negotiated = |accept: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
            let auto = WebConfig::default()
                .negotiate(&ResizeParams::default(), &headers)
                .unwrap();
            (auto.avif, auto.webp)
        };
        assert_eq!(negotiated("image/avif,image/webp,*/*"), (true, true));
        assert_eq!(negotiated("image/webp,image/*,*/*;q=0.8"), (false, true));
        assert_eq!(
            negotiated("image/*,*/*"),
            (false, false),
            "wildcards do not count"
        );
        assert_eq!(
            negotiated("image/avif;q=0, image/WEBP; q=0.5"),
            (false, true)
        );
        assert_eq!(negotiated(""), (false, false));
    }

    #[test]
    fn max_age_never_outlives_the_urls_expiry_and_errors_are_short_or_not_stored() {
        let soon = Representation::new(
            KEY,
            "https://images.example.com/a.jpg",
            &width(1),
            None,
            Duration::from_secs(86_400),
            Some(1_700_000_060),
            1_700_000_000,
        );
        let mut headers = HeaderMap::new();
        soon.apply(&mut headers, None);
        assert_eq!(headers[header::CACHE_CONTROL], "public, max-age=60");

        let config = WebConfig::default();
        assert_eq!(
            config.error_cache_control(StatusCode::NOT_FOUND),
            "public, max-age=10"
        );
        assert_eq!(
            config.error_cache_control(StatusCode::SERVICE_UNAVAILABLE),
            "no-store"
        );
        for momentary in [StatusCode::TOO_MANY_REQUESTS, StatusCode::REQUEST_TIMEOUT] {
            assert_eq!(config.error_cache_control(momentary), "no-store");
        }
    }
}

//! Signed GET URLs in imgproxy's format (v3): `GET /v1/img/{key_id}/{signature}/{options}/…`.
//! Everything after `{key_id}` is imgproxy's URL, so its URL builders (`@imgproxy/imgproxy-node`,
//! PyPI `imgproxy`, …) given the base URL `http://host/v1/img/{key_id}` and the key and salt
//! produce URLs accepted here unchanged.
//!
//! Pure functions, in the order the route calls them (the signature is checked before any option
//! is parsed, so an unsigned URL costs one HMAC):
//!
//! 1. [`split`]: the path after `{key_id}` → the signature and the signed part (nothing parsed);
//! 2. [`signature_matches`]: HMAC-SHA256(key, salt ‖ signed), compared in constant time;
//! 3. [`parse`]: the signed part → [`ImgRequest`] (the contract's `ResizeParams`, the source URL,
//!    `expires`, `cachebuster`, `dpr`), or a [`UrlError`] naming what is wrong.
//!
//! - [`signature`]: split, sign, verify.
//! - [`path`]: the path grammar: options, `plain/` and base64 sources, extensions.
//! - [`options`]: each option's arguments and defaults, and the mapping onto `ResizeParams`.

mod options;
mod path;
mod signature;

use axum::http::StatusCode;
use schemas::events::ResizeParams;

pub use options::{MAX_DPR, ResizingType, fit_for};
pub use signature::{SignedPath, sign, signature_matches, split};

use crate::api::problem::Problem;

/// A signed GET, understood.
#[derive(Debug, Clone, PartialEq)]
pub struct ImgRequest {
    /// What to do, in the contract's terms (`dpr` already applied to width and height).
    pub params: ResizeParams,
    /// The source image: an absolute `http` or `https` URL.
    pub source_url: url::Url,
    /// `expires`: unix seconds after which the URL is refused (see [`ImgRequest::is_expired`]).
    pub expires_at_s: Option<i64>,
    /// `cachebuster`: changes the URL (and so its signature and any cache key), nothing else.
    pub cachebuster: Option<String>,
    /// `dpr` as given (1 when absent); width and height in `params` are already multiplied.
    pub dpr: f64,
}

impl ImgRequest {
    /// Whether the URL has expired at `now_s` (unix seconds). As imgproxy: an `expires` of 0 or
    /// less never expires, any other expires once `now_s` is past it.
    pub fn is_expired(&self, now_s: i64) -> bool {
        self.expires_at_s.is_some_and(|at| at > 0 && at < now_s)
    }
}

/// Why a GET URL was refused: a 400 whose `code` is stable, naming the option when one is at
/// fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct UrlError {
    /// `bad_url` (the path's shape), `unsupported_option` (an option, or a value of one, that
    /// imgpipe does not implement), `bad_option` (an invalid value), `bad_source_url` (the
    /// source is missing, undecodable, or not an absolute http or https URL).
    pub code: &'static str,
    /// The option at fault, as written in the URL (`rs`, `resize`, …), or `dpr` when the sizes it
    /// multiplies go out of bounds, or `extension`.
    pub option: Option<String>,
    /// Safe to show: says what is wrong and what is accepted.
    pub message: String,
}

impl UrlError {
    fn bad_url(message: impl Into<String>) -> Self {
        Self {
            code: "bad_url",
            option: None,
            message: message.into(),
        }
    }

    fn bad_source_url(message: impl Into<String>) -> Self {
        Self {
            code: "bad_source_url",
            option: None,
            message: message.into(),
        }
    }

    fn bad_option(option: &str, message: impl Into<String>) -> Self {
        Self {
            code: "bad_option",
            option: Some(option.to_owned()),
            message: message.into(),
        }
    }

    fn unsupported_option(option: &str, message: impl Into<String>) -> Self {
        Self {
            code: "unsupported_option",
            option: Some(option.to_owned()),
            message: message.into(),
        }
    }
}

impl From<UrlError> for Problem {
    fn from(error: UrlError) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, error.code, error.message)
    }
}

/// Parses the signed part of a GET path (`SignedPath::signed`, after the signature has been
/// verified): options first, then the source and its extension.
pub fn parse(signed: &str) -> Result<ImgRequest, UrlError> {
    let parsed = path::parse(signed)?;
    let mut options = options::Options::default();
    for option in &parsed.options {
        options.apply(option)?;
    }
    if let Some(extension) = &parsed.extension {
        options.apply_extension(extension)?;
    }
    let params = options.to_params()?;
    let source_url = source_url(&parsed.source)?;
    Ok(ImgRequest {
        params,
        source_url,
        expires_at_s: options.expires,
        cachebuster: options.cachebuster,
        dpr: options.dpr,
    })
}

/// The source must be an absolute `http` or `https` URL with a host.
fn source_url(source: &str) -> Result<url::Url, UrlError> {
    let url = url::Url::parse(source).map_err(|e| {
        UrlError::bad_source_url(format!(
            "the source URL must be an absolute http or https URL ({e}): `{source}`"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(UrlError::bad_source_url(format!(
            "the source URL must be an absolute http or https URL, got `{source}`"
        )));
    }
    Ok(url)
}

#[cfg(test)]
mod tests;

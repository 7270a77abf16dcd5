//! The signature of a GET URL, as imgproxy computes it: HMAC-SHA256 keyed with the signing key
//! over the salt followed by the path after the signature segment (starting with its `/`),
//! URL-safe base64 without padding.
//!
//! [`split`] does no more than find the signature segment, so that an unsigned or tampered URL
//! costs one HMAC and nothing else: options are parsed only after [`signature_matches`].

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::UrlError;

type HmacSha256 = Hmac<Sha256>;

/// A GET path after `/v1/img/{key_id}`, cut at its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPath<'a> {
    /// The first segment, as sent (URL-safe base64 without padding when well formed).
    pub signature: &'a str,
    /// What the signature covers: the rest of the path from the `/` after the signature, with
    /// imgproxy's repairs of what proxies do to paths (`%3A` for `:` in the options, `http:/` for
    /// `http://` at the start of a plain source URL). Borrowed unless a repair applied.
    pub signed: Cow<'a, str>,
}

/// Cuts `path` (everything after `/v1/img/{key_id}`, raw as received: not percent-decoded) into
/// the signature and the part it signs. A query string, if the caller left one on, is cut off
/// first (imgproxy ignores it too). Parses nothing else.
pub fn split(path: &str) -> Result<SignedPath<'_>, UrlError> {
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    let path = path.strip_prefix('/').unwrap_or(path);
    let Some(end) = path.find('/') else {
        return Err(UrlError::bad_url(
            "the path must be /{signature}/{processing options}/{source URL}",
        ));
    };
    let (signature, signed) = path.split_at(end);
    if signature.is_empty() || signed.len() < 2 {
        return Err(UrlError::bad_url(
            "the path must be /{signature}/{processing options}/{source URL}",
        ));
    }
    Ok(SignedPath {
        signature,
        signed: repair(signed),
    })
}

/// Whether `signature` is the signature of `signed` under `key` and `salt` (raw bytes, i.e. the
/// hex of a tenant's key and salt decoded). Compares in constant time; a signature that is not
/// URL-safe base64 without padding, or not 32 bytes, never matches.
pub fn signature_matches(key: &[u8], salt: &[u8], signed: &str, signature: &str) -> bool {
    let Ok(given) = URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    mac(key, salt, signed).verify_slice(&given).is_ok()
}

/// The signature of `path` (which starts with the `/` that follows the signature segment):
/// `/v1/img/{key_id}/{sign(key, salt, path)}{path}` is then a signed GET URL path.
pub fn sign(key: &[u8], salt: &[u8], path: &str) -> String {
    URL_SAFE_NO_PAD.encode(mac(key, salt, path).finalize().into_bytes())
}

fn mac(key: &[u8], salt: &[u8], path: &str) -> HmacSha256 {
    // HMAC takes keys of any length (longer ones are hashed first), so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(salt);
    // As imgproxy: the signed path starts with `/`; one that lost it is signed as if it had it.
    if !path.starts_with('/') {
        mac.update(b"/");
    }
    mac.update(path.as_bytes());
    mac
}

/// imgproxy's repairs of a path that went through a proxy or CDN: `%3A` back to `:` in the
/// options, and `scheme:/host` back to `scheme://host` at the start of a plain source URL (slash
/// merging). The signature is checked over the repaired path, as imgproxy checks it, so a URL
/// signed by any imgproxy builder still verifies after such a proxy.
fn repair(signed: &str) -> Cow<'_, str> {
    let (options, plain) = match signed.split_once("/plain/") {
        Some((options, plain)) => (options, Some(plain)),
        None => (signed, None),
    };
    let options_fixed = options.contains("%3A");
    let scheme_fixed = plain.and_then(merged_scheme_end);
    if !options_fixed && scheme_fixed.is_none() {
        return Cow::Borrowed(signed);
    }
    let mut fixed = options.replace("%3A", ":");
    if let Some(plain) = plain {
        fixed.push_str("/plain/");
        match scheme_fixed {
            // `scheme:/` + the rest: put the lost slash back.
            Some(at) => {
                fixed.push_str(&plain[..at]);
                fixed.push('/');
                fixed.push_str(&plain[at..]);
            }
            None => fixed.push_str(plain),
        }
    }
    Cow::Owned(fixed)
}

/// Where a slash is missing when `plain` starts with `scheme:/` followed by anything but `/`
/// (the index after `scheme:/`).
fn merged_scheme_end(plain: &str) -> Option<usize> {
    let colon = plain.find(':')?;
    let scheme = &plain[..colon];
    let valid_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let rest = &plain[colon + 1..];
    (valid_scheme && rest.starts_with('/') && !rest.starts_with("//") && rest.len() > 1)
        .then_some(colon + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_takes_the_first_segment_only() {
        let s = split("/sig/rs:fit:1:1/plain/http://a/b.jpg").expect("valid");
        assert_eq!(s.signature, "sig");
        assert_eq!(s.signed, "/rs:fit:1:1/plain/http://a/b.jpg");
        assert!(matches!(s.signed, Cow::Borrowed(_)));
        // Without the leading slash, and with a query string left on.
        let s = split("sig/aHR0cDovL2EvYi5qcGc?x=1").expect("valid");
        assert_eq!((s.signature, &*s.signed), ("sig", "/aHR0cDovL2EvYi5qcGc"));
        // Garbage after the signature is not looked at here.
        let s = split("/sig/%%%/:::").expect("split only");
        assert_eq!(s.signed, "/%%%/:::");
    }

    #[test]
    fn split_refuses_paths_without_a_signed_part() {
        for path in ["", "/", "/sig", "/sig/", "//rs:fit:1:1/x", "sig", "?/a/b"] {
            let error = split(path).expect_err(path);
            assert_eq!(error.code, "bad_url", "{path}");
        }
    }

    #[test]
    fn split_repairs_what_proxies_do_to_paths() {
        let s = split("/sig/rs%3Afit%3A300/w%3A2/plain/https:/example.com/a%3Ab.jpg").expect("ok");
        assert_eq!(
            s.signed,
            "/rs:fit:300/w:2/plain/https://example.com/a%3Ab.jpg"
        );
        let s = split("/sig/plain/http:/a/b.jpg").expect("ok");
        assert_eq!(s.signed, "/plain/http://a/b.jpg");
        // Intact schemes and other colons are left alone.
        for path in [
            "/sig/plain/http://a/b:/c.jpg",
            "/sig/w:1/plain/http://a/b.jpg",
            "/sig/w:1/plain/1http:/a",
            "/sig/w:1/plain/http:/",
        ] {
            let s = split(path).expect(path);
            assert!(matches!(s.signed, Cow::Borrowed(_)), "{path}");
        }
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let path = "/rs:fit:300:300/plain/http://img.example.com/pretty/image.jpg";
        let signature = sign(b"key", b"salt", path);
        assert_eq!(signature.len(), 43);
        assert!(signature_matches(b"key", b"salt", path, &signature));
        // The leading slash is implied, as imgproxy does.
        assert!(signature_matches(b"key", b"salt", &path[1..], &signature));
        assert!(!signature_matches(b"key", b"salt2", path, &signature));
        assert!(!signature_matches(b"key2", b"salt", path, &signature));
        assert!(!signature_matches(
            b"key",
            b"salt",
            &path.replace("300", "301"),
            &signature
        ));
    }

    #[test]
    fn malformed_signatures_never_match() {
        let path = "/w:1/plain/http://a/b.jpg";
        let good = sign(b"k", b"s", path);
        for bad in [
            String::new(),
            format!("{good}="),
            good[..42].to_owned(),
            good[..20].to_owned(),
            format!("{good}AA"),
            good.replace('-', "+").replace('_', "/"),
            "not base64!".to_owned(),
        ] {
            if bad != good {
                assert!(!signature_matches(b"k", b"s", path, &bad), "{bad}");
            }
        }
    }
}

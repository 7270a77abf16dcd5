//! A tenant's allowed sources: the URL prefixes its signed GET URLs may fetch images from. The
//! identity service normalises each prefix when an admin sets it ([`normalise_prefix`]); the api
//! matches the source URL, parsed the same way, against the stored prefixes ([`allows`]). Both
//! sides use this one module, so the two normal forms cannot drift apart.
//!
//! Normal form is the WHATWG URL serialisation (`url::Url`): lower-case scheme and host, IDNA
//! hosts in punycode, the default port dropped, `.` and `..` segments resolved, and always a `/`
//! after the authority. The last point is what makes plain string prefixes safe: the prefix
//! `https://images.example.com` is stored as `https://images.example.com/`, so it can never match
//! `https://images.example.com.evil.test/`. Matching is by string prefix on whole URLs, so a
//! prefix that should cover a folder ends with `/` (`https://cdn.example/img/`; without the slash
//! it also covers `https://cdn.example/img-private/`).

use url::Url;

/// Most prefixes one tenant may have.
pub const MAX_PREFIXES: usize = 100;
/// Longest prefix, in bytes.
pub const MAX_PREFIX_BYTES: usize = 2048;

/// The normal form of an allowed-source prefix, or the rule it breaks: an absolute `http` or
/// `https` URL with a host, without user info, query or fragment.
pub fn normalise_prefix(prefix: &str) -> Result<String, String> {
    let prefix = prefix.trim();
    if prefix.len() > MAX_PREFIX_BYTES {
        return Err(format!(
            "a prefix may be at most {MAX_PREFIX_BYTES} bytes long"
        ));
    }
    let url = Url::parse(prefix)
        .map_err(|error| format!("{prefix:?} is not an absolute http(s) URL prefix ({error})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{prefix:?} must start with http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{prefix:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{prefix:?} must not hold a user name or password"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{prefix:?} must not hold a query or fragment"));
    }
    Ok(url.into())
}

/// Whether `source` (an already parsed source URL) starts with one of `prefixes` (each in the
/// form [`normalise_prefix`] stores). A URL with user info is never allowed. Fetch exactly the
/// URL that was matched (`source.as_str()`), never the text it was parsed from.
pub fn allows(prefixes: &[String], source: &Url) -> bool {
    if !source.username().is_empty() || source.password().is_some() {
        return false;
    }
    let source = source.as_str();
    prefixes
        .iter()
        .any(|prefix| source.starts_with(prefix.as_str()))
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_stored_in_normal_form() {
        for (given, stored) in [
            ("https://images.example.com/", "https://images.example.com/"),
            ("https://images.example.com", "https://images.example.com/"),
            (
                "  HTTPS://Images.Example.COM:443/Photos/ ",
                "https://images.example.com/Photos/",
            ),
            ("http://127.0.0.1:8081/img/", "http://127.0.0.1:8081/img/"),
            ("https://cdn.example/a/../b/", "https://cdn.example/b/"),
            ("https://cdn.example/a b/", "https://cdn.example/a%20b/"),
            ("https://bücher.example/", "https://xn--bcher-kva.example/"),
            ("http://[::1]:9000/", "http://[::1]:9000/"),
        ] {
            assert_eq!(normalise_prefix(given).as_deref(), Ok(stored), "{given}");
        }
    }

    #[test]
    fn anything_but_an_absolute_http_prefix_is_refused_with_its_rule() {
        for (given, rule) in [
            ("", "not an absolute"),
            ("/images/", "not an absolute"),
            ("images.example.com/", "not an absolute"),
            ("ftp://images.example.com/", "http:// or https://"),
            ("file:///etc/", "http:// or https://"),
            (
                "https://user:pw@images.example.com/",
                "user name or password",
            ),
            ("https://images.example.com/?a=1", "query or fragment"),
            ("https://images.example.com/#x", "query or fragment"),
        ] {
            let error = normalise_prefix(given).expect_err(given);
            assert!(error.contains(rule), "{given}: {error}");
        }
        let long = format!("https://x.example/{}", "a".repeat(MAX_PREFIX_BYTES));
        assert!(normalise_prefix(&long).unwrap_err().contains("at most"));
    }

    #[test]
    fn sources_match_whole_url_prefixes_only() {
        let prefixes = vec![
            normalise_prefix("https://images.example.com").unwrap(),
            normalise_prefix("https://cdn.example/img/").unwrap(),
        ];
        let url = |s: &str| Url::parse(s).unwrap();
        for allowed in [
            "https://images.example.com/a.jpg",
            "https://IMAGES.example.com:443/a.jpg?w=1",
            "https://cdn.example/img/x/y.png",
        ] {
            assert!(allows(&prefixes, &url(allowed)), "{allowed}");
        }
        for refused in [
            "https://images.example.com.evil.test/a.jpg",
            "https://images.example.com:8443/a.jpg",
            "http://images.example.com/a.jpg",
            "https://cdn.example/img-private/x.png",
            "https://cdn.example/img/../secret/x.png",
            "https://cdn.example/img/%2e%2e/secret/x.png",
            "https://images.example.com@evil.test/a.jpg",
            "https://user@images.example.com/a.jpg",
        ] {
            assert!(!allows(&prefixes, &url(refused)), "{refused}");
        }
        assert!(!allows(&[], &url("https://images.example.com/a.jpg")));
    }
}

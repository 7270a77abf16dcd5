//! The grammar of the signed part of a GET path, as imgproxy's (v3) parser reads it:
//! `/{option}/{option}/…/{source}`, where each option is `name:arg:arg…` and the source starts at
//! the first segment without a `:`. The source is `plain/{percent-encoded URL}[@{ext}]` or the
//! URL in URL-safe base64 (padding optional), possibly split by `/`, then `[.{ext}]`.

use base64::Engine as _;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::UrlError;

/// imgproxy's decoder for base64 sources: URL-safe, padding stripped beforehand, trailing bits
/// ignored (Go's `base64.RawURLEncoding` is not strict about them).
const SOURCE_BASE64: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// imgproxy's resizing types: a path that starts with one is its retired "basic" URL format.
const RESIZING_TYPES: [&str; 5] = ["fit", "fill", "fill-down", "force", "auto"];

/// One processing option as written: `name:arg:arg…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawOption<'a> {
    pub name: &'a str,
    /// At least one (`name:` has one empty argument).
    pub args: Vec<&'a str>,
}

/// The signed path, taken apart but not interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ParsedPath<'a> {
    pub options: Vec<RawOption<'a>>,
    /// The source URL, decoded (percent-decoded or base64-decoded), not yet checked.
    pub source: String,
    /// The extension after `@` (plain) or `.` (base64), when given and not empty.
    pub extension: Option<String>,
}

/// Takes the signed path apart (see the module header).
pub(super) fn parse(signed: &str) -> Result<ParsedPath<'_>, UrlError> {
    let trimmed = signed.strip_prefix('/').unwrap_or(signed);
    if trimmed.is_empty() {
        return Err(UrlError::bad_url(
            "the path has no processing options or source URL",
        ));
    }
    let parts: Vec<&str> = trimmed.split('/').collect();
    if RESIZING_TYPES.contains(&parts[0]) {
        return Err(UrlError::bad_url(
            "this looks like imgproxy's retired basic URL format; write options as name:args",
        ));
    }
    let source_start = parts
        .iter()
        .position(|part| !part.contains(':'))
        .unwrap_or(parts.len());
    let options = parts[..source_start]
        .iter()
        .map(|part| {
            let mut args = part.split(':');
            let name = args.next().unwrap_or_default();
            RawOption {
                name,
                args: args.collect(),
            }
        })
        .collect();
    let (source, extension) = match &parts[source_start..] {
        [] => return Err(UrlError::bad_source_url("the source URL is missing")),
        ["plain", rest @ ..] if !rest.is_empty() => plain_source(trimmed, rest.len())?,
        rest => base64_source(rest)?,
    };
    Ok(ParsedPath {
        options,
        source,
        extension,
    })
}

/// `plain/{url}[@{ext}]`: the last `segments` segments of `path`, joined by `/` as they are in
/// the path, cut at `@`, then percent-decoded.
fn plain_source(path: &str, segments: usize) -> Result<(String, Option<String>), UrlError> {
    let start = path
        .rmatch_indices('/')
        .nth(segments - 1)
        .map_or(0, |(i, _)| i + 1);
    let encoded = &path[start..];
    let (url, extension) = with_extension(encoded, '@')?;
    let decoded = percent_decode(url).ok_or_else(|| {
        UrlError::bad_source_url(format!(
            "the plain source URL has a `%` not followed by two hex digits: `{url}`"
        ))
    })?;
    Ok((decoded, extension.map(str::to_owned)))
}

/// `{base64}[/{base64}…][.{ext}]`: segments joined without separators, cut at `.`, padding
/// stripped, URL-safe base64 decoded.
fn base64_source(segments: &[&str]) -> Result<(String, Option<String>), UrlError> {
    let joined = segments.concat();
    let (encoded, extension) = with_extension(&joined, '.')?;
    let encoded = encoded.trim_end_matches('=');
    let bytes = SOURCE_BASE64.decode(encoded).map_err(|_| {
        UrlError::bad_source_url(format!(
            "the source URL is neither `plain/…` nor URL-safe base64: `{encoded}`"
        ))
    })?;
    let url = String::from_utf8(bytes)
        .map_err(|_| UrlError::bad_source_url("the base64 source URL is not UTF-8 text"))?;
    Ok((url, extension.map(str::to_owned)))
}

/// Cuts `source` at `separator` into the URL and the extension (none when empty); more than one
/// separator is an error, as in imgproxy (an `@` inside a plain URL must be written `%40`).
fn with_extension(source: &str, separator: char) -> Result<(&str, Option<&str>), UrlError> {
    let mut pieces = source.split(separator);
    let url = pieces.next().unwrap_or_default();
    let extension = pieces.next().filter(|e| !e.is_empty());
    if pieces.next().is_some() {
        return Err(UrlError::bad_source_url(format!(
            "more than one `{separator}` in the source URL: give one extension at most \
             (a literal `@` in a plain URL is written `%40`)"
        )));
    }
    if url.is_empty() {
        return Err(UrlError::bad_source_url("the source URL is empty"));
    }
    Ok((url, extension))
}

/// Percent-decoding as Go's `url.PathUnescape`: every `%` starts two hex digits, `+` stays a `+`.
/// `None` for a bad escape or a result that is not UTF-8.
fn percent_decode(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option<'a>(name: &'a str, args: &[&'a str]) -> RawOption<'a> {
        RawOption {
            name,
            args: args.to_vec(),
        }
    }

    #[test]
    fn options_end_at_the_first_segment_without_a_colon() {
        let p = parse("/rs:fit:300::/q:/cb:a:b/plain/http://a/b:c/d.jpg@webp").expect("valid");
        assert_eq!(
            p.options,
            [
                option("rs", &["fit", "300", "", ""]),
                option("q", &[""]),
                option("cb", &["a", "b"]),
            ]
        );
        // Colons in the plain URL belong to the URL.
        assert_eq!(p.source, "http://a/b:c/d.jpg");
        assert_eq!(p.extension.as_deref(), Some("webp"));
    }

    #[test]
    fn plain_sources_are_percent_decoded_after_the_extension_is_cut() {
        let p = parse("/plain/https://example.com/img.php%3Fid%3D7%26s%3Dbig%40x@png").expect("ok");
        assert_eq!(p.source, "https://example.com/img.php?id=7&s=big@x");
        assert_eq!(p.extension.as_deref(), Some("png"));
        let p = parse("/w:10/plain/http://a/b%20c+d.jpg").expect("ok");
        assert_eq!(
            (p.source.as_str(), p.extension),
            ("http://a/b c+d.jpg", None)
        );
        // An empty extension is no extension.
        let p = parse("/plain/http://a/b.jpg@").expect("ok");
        assert_eq!(p.extension, None);
        // Non-ASCII, percent-encoded as UTF-8.
        let p = parse("/plain/http://a/%C3%A9t%C3%A9.jpg").expect("ok");
        assert_eq!(p.source, "http://a/été.jpg");
    }

    #[test]
    fn base64_sources_with_or_without_padding_split_by_slashes() {
        // "http://example.com/images/curiosity.jpg"
        let whole = "aHR0cDovL2V4YW1wbGUuY29tL2ltYWdlcy9jdXJpb3NpdHkuanBn";
        for path in [
            format!("/{whole}"),
            "/aHR0cDovL2V4YW1w/bGUuY29tL2ltYWdl/cy9jdXJpb3NpdHku/anBn".to_owned(),
            format!("/w:1/{whole}.png"),
        ] {
            let p = parse(&path).expect(&path);
            assert_eq!(
                p.source, "http://example.com/images/curiosity.jpg",
                "{path}"
            );
        }
        // "http://a/b.png" is 14 bytes: base64 with padding `==`, accepted with or without it.
        for path in [
            "/aHR0cDovL2EvYi5wbmc=.webp",
            "/aHR0cDovL2EvYi5wbmc.webp",
            "/aHR0cDov/L2EvYi5wbmc==",
        ] {
            let p = parse(path).expect(path);
            assert_eq!(p.source, "http://a/b.png", "{path}");
        }
        let p = parse("/aHR0cDovL2EvYi5wbmc=.webp").expect("ok");
        assert_eq!(p.extension.as_deref(), Some("webp"));
    }

    #[test]
    fn bad_sources_are_refused() {
        for (path, code) in [
            ("", "bad_url"),
            ("/", "bad_url"),
            ("/fit/300/300/ce/0/aHR0cDovL2E", "bad_url"),
            ("/w:1", "bad_source_url"),
            ("/w:1/", "bad_source_url"),
            ("/plain/", "bad_source_url"),
            ("/plain/@png", "bad_source_url"),
            ("/plain/http://u@a/b.jpg@png", "bad_source_url"),
            ("/plain/http://a/b%zz.jpg", "bad_source_url"),
            ("/plain/http://a/b%4", "bad_source_url"),
            ("/plain/http://a/%FF.jpg", "bad_source_url"),
            ("/aHR0cDovL2E.png.webp", "bad_source_url"),
            ("/aHR0cDovL2E./x.png", "bad_source_url"),
            ("/not*base64", "bad_source_url"),
            ("/.png", "bad_source_url"),
            ("/_w", "bad_source_url"),
        ] {
            let error = parse(path).expect_err(path);
            assert_eq!(error.code, code, "{path}: {error}");
        }
    }
}

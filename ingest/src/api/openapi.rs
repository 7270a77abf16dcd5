//! The OpenAPI 3.1 document served at `/openapi.json`, describing every data-plane route, its
//! parameters and its error codes. A test checks each route of the router is described here.

use axum::Json;
use serde_json::{Value, json};

/// Every route the api serves, as `(method, path)`; the router and this document must agree.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/resize"),
    ("get", "/v1/img/{key_id}/{signature}/{path}"),
    ("get", "/v1/usage"),
    ("get", "/openapi.json"),
];

/// `GET /openapi.json`.
pub async fn document() -> Json<Value> {
    Json(spec())
}

fn problem(description: &str) -> Value {
    json!({"description": description, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

fn in_path(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

/// Every processing option of a signed GET: `(names, arguments, meaning)`. The names are
/// imgproxy's (full and short), and ours that imgproxy lacks carry the `imgpipe_` prefix.
pub const GET_OPTIONS: &[(&str, &str, &str)] = &[
    (
        "resize, rs",
        "%resizing_type:%width:%height:%enlarge:%extend",
        "Shorthand for resizing_type, width, height, enlarge and extend; empty arguments keep their defaults.",
    ),
    (
        "size, s",
        "%width:%height:%enlarge:%extend",
        "Shorthand for width, height, enlarge and extend.",
    ),
    (
        "resizing_type, rt",
        "%type",
        "fit (default: inside the box, keep the ratio), fill (cover the box, crop the overflow by gravity), fill-down (fill, but a box larger than the source shrinks keeping its ratio), force (stretch to the box), auto (fill when source and box have the same orientation, fit otherwise).",
    ),
    (
        "width, w",
        "%width",
        "Target width in pixels, 0 (default) for none; at most 8192 after dpr.",
    ),
    (
        "height, h",
        "%height",
        "Target height in pixels, 0 (default) for none; at most 8192 after dpr.",
    ),
    (
        "dpr",
        "%dpr",
        "Device pixel ratio, above 0 and at most 8 (default 1): multiplies width and height, and the products must still be at most 8192 (400 bad_option naming dpr otherwise, never a silent clamp).",
    ),
    (
        "enlarge, el",
        "%enlarge",
        "1 or true: the output may be larger than the source (default false).",
    ),
    (
        "extend, ex",
        "%extend:%gravity",
        "With fit: pad the output to exactly the box, the image placed by gravity (default centre), padding in background (transparent, or white for JPEG, by default).",
    ),
    (
        "gravity, g",
        "%type",
        "Which part fill keeps: ce (default), no, so, ea, we, noea, nowe, soea, sowe; sm (smart: the most interesting region, chosen as libvips' attention does from edges, skin and saturation, deterministic); fp:%x:%y (focus point: x and y from 0 to 1, from the left and the top, kept as near the crop's centre as the image allows). Offsets must be 0; extend refuses sm and fp.",
    ),
    (
        "quality, q",
        "%quality",
        "Encoder quality 1-100 for JPEG, lossy WebP and AVIF; 0 for the default (80).",
    ),
    (
        "format, f, ext",
        "%extension",
        "Output format: jpg/jpeg, png, webp, avif or gif; the source's @extension (plain) or .extension (base64) sets it too. Default: the input's (a still GIF becomes PNG).",
    ),
    (
        "background, bg",
        "%R:%G:%B or %hex",
        "Colour of extend's padding and of transparency flattened for a format without alpha.",
    ),
    (
        "cachebuster, cb",
        "%string",
        "Changes the URL (and so its signature and any cache key), nothing else.",
    ),
    (
        "expires, exp",
        "%timestamp",
        "Unix seconds after which the URL is refused with 403 url_expired; 0 or less never expires.",
    ),
    (
        "imgpipe_effort",
        "%effort",
        "Encoder effort 0 (fastest) to 9 (smallest) for WebP and AVIF, as POST's effort.",
    ),
    (
        "imgpipe_lossless",
        "%lossless",
        "WebP output: lossless instead of lossy, as POST's lossless.",
    ),
    (
        "imgpipe_frames",
        "%frames",
        "Animated input: all (default) or first, as POST's frames.",
    ),
];

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

/// The description of `GET /v1/img/...`, listing every option.
fn get_description() -> String {
    let mut text = String::from(
        "A signed URL in imgproxy's format (v3), for web pages and CDNs, which can send neither a body nor an API key: everything after `/v1/img/{key_id}` is imgproxy's URL, so imgproxy's own URL builders (npm `@imgproxy/imgproxy-node`, PyPI `imgproxy`, ...) given the base URL `http://host:8080/v1/img/{key_id}` and the signing key's `key` and `salt` (hex, from `POST /admin/v1/tenants/{tenant_id}/signing-keys`) produce URLs accepted unchanged.\n\nShape: `/v1/img/{key_id}/{signature}/{option}/.../plain/{percent-encoded source URL}[@{extension}]`, or `.../{URL-safe base64 of the source URL, may be split by /}[.{extension}]`. `signature` is URL-safe base64 without padding of HMAC-SHA256(key, salt || the path from the / after the signature). Options are `name:arg1:arg2`, separated by `/`, applied left to right (a later one wins); an option imgpipe does not implement is a 400 naming it, never ignored.\n\nThe source is fetched by a resizer (the request event carries only the URL): it must be an absolute http or https URL under one of the tenant's `allowed_sources`; its content is sniffed, never taken from Content-Type; destinations in loopback, private, link-local, CGNAT, multicast or reserved ranges (IPv4 and IPv6, mapped forms included) are refused after DNS resolution and on every redirect, unless the operator's `resizer.source_allow_private` allows the range. A GET is billed to the signing key's tenant, with the source's host as a usage dimension.\n\nCaching (for browsers and CDNs): a 200 carries `Cache-Control: public, max-age=N` (`api.web.max_age`, a day by default, never past the URL's `expires`) and, when the origin sent an `ETag` or `Last-Modified`, an `ETag` made from that validator and the canonical request (strong when the origin's tag is strong). A request whose `If-None-Match` holds a tag this URL made is checked with the origin by a conditional request; when the origin answers 304 the api answers 304 (same ETag, Cache-Control and Vary, no body), with no resize, billed `not_modified`. Errors carry `Cache-Control: public, max-age=10` for a 4xx about the URL or its source (`api.web.error_max_age`) and `no-store` for a 429, a 408 and a 5xx.\n\nFormat: the extension (`@ext`, `.ext`) or `f`/`format`/`ext` sets it. A URL that names none gets the best format its `Accept` header names explicitly (`api.web.auto_format`, on by default): AVIF when `image/avif` is accepted and the output is a still whose AVIF encode fits `api.web.avif_budget` (250 ms of one core by the kernel's cost model, about 0.2 Mpx), else WebP when `image/webp` is accepted, else the source's format; such answers carry `Vary: Accept`, and only they do.\n\nOptions:\n",
    );
    for (names, arguments, meaning) in GET_OPTIONS {
        text.push_str(&format!("- `{names}` (`{arguments}`): {meaning}\n"));
    }
    text
}

/// The document.
pub fn spec() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "imgpipe api",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Resize images synchronously; the work happens behind Kafka. Authenticate with `Authorization: Bearer <api key>` (the scheme in any case). Every error is application/problem+json with the request id also in X-Request-Id. A request is billed `ok` only when the image was handed to the client."
        },
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["code", "message", "request_id"],
                    "properties": {
                        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                        "code": {"type": "string", "description": "Stable machine-readable code."},
                        "message": {"type": "string"},
                        "request_id": {"type": "string"}
                    }
                },
                "UsageReport": {
                    "type": "object",
                    "properties": {
                        "tenant_id": {"type": "string"}, "from": {"type": "string"}, "to": {"type": "string"},
                        "granularity": {"type": "string"},
                        "group_by": {"type": "string", "description": "Present when the request split buckets by format, outcome or source_host."},
                        "buckets": {"type": "array", "description": "Buckets with usage, by start then group key; empty buckets are omitted.", "items": {"$ref": "#/components/schemas/UsageBucket"}}
                    }
                },
                "UsageBucket": {
                    "type": "object",
                    "required": ["start", "requests", "refused", "bytes_in", "bytes_out", "pixels_in", "pixels_out", "cpu_time_us"],
                    "properties": {
                        "start": {"type": "string", "description": "Bucket start, RFC 3339 UTC."},
                        "requests": {"type": "integer", "description": "Requests billed as work: the image was handed over (outcome ok), or made by a resizer whose api's record is missing (resized), or a signed GET revalidated with a 304 after its origin confirmed the source unchanged (not_modified, no resize). Each request counts once."},
                        "refused": {"type": "integer", "description": "Requests that got no image, never billed: refused by the api (unauthenticated, forbidden, rate_limited, bad_parameters, payload_too_large, ...), failed (undecodable_image, deadline_exceeded, ...) or abandoned by the client (client_closed_request). group_by=outcome shows each outcome."},
                        "bytes_in": {"type": "integer", "description": "Sum of request body sizes (every request)."},
                        "bytes_out": {"type": "integer", "description": "Sum of response image sizes."},
                        "pixels_in": {"type": "integer", "description": "Sum of input pixels."},
                        "pixels_out": {"type": "integer", "description": "Sum of output pixels."},
                        "cpu_time_us": {"type": "integer", "description": "Sum of decode, resize and encode CPU time (every request, refused ones that reached a resizer included)."},
                        "format": {"type": "string", "description": "Output format, with group_by=format ('' when no image was made)."},
                        "outcome": {"type": "string", "description": "Outcome, with group_by=outcome."},
                        "source_host": {"type": "string", "description": "Source host, with group_by=source_host: the host (with the port when not the scheme's default) of a signed GET's source URL, never its path; '' for images sent in the request body (POST /v1/resize) and for usage recorded before hosts were."}
                    }
                }
            }
        },
        "security": [{"apiKey": []}],
        "paths": {
            "/v1/resize": {"post": {
                "summary": "Resize an image",
                "description": "Inputs: JPEG, PNG, WebP and GIF, still or animated, and AVIF and HEIC stills (read by magic bytes; the Content-Type is not trusted). TIFF, BMP and JPEG XL are refused with 415 naming the format. HEIC is read but never written: format=heic is a 400, and a HEIC input with no format named (nor one from Accept) becomes JPEG. Outputs: JPEG, PNG, WebP (lossy by default, or lossless), AVIF and GIF. EXIF orientation is applied and metadata stripped. Resampling is Lanczos3 on 8-bit sRGB values (like vipsthumbnail's default), not in linear light.\n\nAnimation: an animated GIF or WebP with frames=all and GIF or WebP output (the default for them) is resized frame by frame into an animation with the same plan for every frame, keeping frame delays and the loop count. frames=first, or a still output format (jpeg, png, avif), gives a still of the first frame.\n\nLimits: body 8 MiB (413); 50,000,000 pixels per image from the header (422 too_many_pixels); output 8192 per side (400); output canvas 16,777,216 pixels (422 too_many_output_pixels, before anything is allocated); encoded output at most one reply record, kafka.max_message_bytes less 64 KiB (422 output_too_large); slow encoders are bounded by a cost model so that one encode takes at most max_encode_time (4 s) of one core: AVIF about 3.3 Mpx at the default effort 2, 0.28 Mpx at effort 9, lossy WebP 8 Mpx at effort 6 and up (422 too_many_output_pixels, naming the format's limit, before anything is decoded); for animations, from the headers before decoding, 500 frames (422 too_many_frames) and 50,000,000 pixels over all frames, frames × canvas (422 too_many_pixels); an animated output over 50,000,000 pixels over all frames (with enlarge) is 400. The limits are the resizers' configuration (max_input_bytes, max_pixels, max_output_side, max_frames, max_animation_pixels); these are the defaults.",
                "parameters": [
                    query("width", "Target width, 1–8192. Either width or height may be omitted with fit=inside.", json!({"type": "integer", "minimum": 1, "maximum": 8192})),
                    query("height", "Target height, 1–8192.", json!({"type": "integer", "minimum": 1, "maximum": 8192})),
                    query("fit", "inside (default), cover, contain, fill, cover_clip, auto or pad (see docs/api.md).", json!({"type": "string", "enum": ["inside", "cover", "contain", "fill", "cover_clip", "auto", "pad"]})),
                    query("gravity", "Crop anchor for cover and cover_clip, placement for contain and pad. smart: the most interesting region (edges, skin, saturation, as libvips' attention); focus_point: the point focus_x, focus_y kept as near the crop's centre as the image allows (both place as centre for contain and pad).", json!({"type": "string", "enum": ["centre", "north", "south", "east", "west", "northeast", "northwest", "southeast", "southwest", "smart", "focus_point"]})),
                    query("focus_x", "With gravity=focus_point (required with it, refused without): the point's x, 0 (left) to 1 (right), of the upright source.", json!({"type": "number", "minimum": 0, "maximum": 1})),
                    query("focus_y", "With gravity=focus_point (required with it, refused without): the point's y, 0 (top) to 1 (bottom), of the upright source.", json!({"type": "number", "minimum": 0, "maximum": 1})),
                    query("format", "Output format; default keeps the input's (a still GIF becomes PNG, an animated GIF stays GIF). gif and webp can be animated; jpeg, png and avif are stills.", json!({"type": "string", "enum": ["jpeg", "png", "webp", "avif", "gif"]})),
                    query("quality", "Encoder quality 1–100 for JPEG, lossy WebP and AVIF (8-bit 4:4:4, rav1e). Default 80.", json!({"type": "integer", "minimum": 1, "maximum": 100, "default": 80})),
                    query("lossless", "WebP output: lossless instead of lossy (quality and effort then do not apply). Allowed with webp or png output only.", json!({"type": "boolean", "default": false})),
                    query("effort", "Encoder effort, 0 (fastest) to 9 (smallest output): libwebp method (capped at 6; default 4, as libvips and sharp) for lossy WebP, rav1e speed 10 − effort for AVIF (default 2, about 0.2 s for a 512-px photo on one core).", json!({"type": "integer", "minimum": 0, "maximum": 9})),
                    query("frames", "Animated input: all (default) resizes every frame into an animated GIF or WebP; first gives a still of the first frame.", json!({"type": "string", "enum": ["all", "first"], "default": "all"})),
                    query("enlarge", "Allow output larger than the input.", json!({"type": "boolean", "default": false}))
                ],
                "requestBody": {"required": true, "content": {
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "image/webp": {"schema": {"type": "string", "format": "binary"}},
                    "image/gif": {"schema": {"type": "string", "format": "binary"}}
                }},
                "responses": {
                    "200": {"description": "The resized image. `Server-Timing` carries durations in milliseconds, in this order: accept, produce, fetch (only for a source fetched by URL), queue, decode, resize, encode, handoff, total (see docs/api.md).",
                            "headers": {"X-Request-Id": {"schema": {"type": "string"}}, "Server-Timing": {"schema": {"type": "string"}}},
                            "content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}, "image/avif": {}, "image/gif": {}}},
                    "400": problem("bad_parameters: invalid, unknown or repeated query parameter (values are percent-decoded), empty body."),
                    "405": problem("method_not_allowed."),
                    "408": problem("request_timeout: the body did not arrive within the deadline (counted from arrival), or stalled longer than the body read timeout; nothing was produced."),
                    "414": problem("uri_too_long: the request target is over 8 KiB."),
                    "431": problem("headers_too_large: the header section is over 16 KiB."),
                    "401": problem("unauthenticated: missing or invalid API key."),
                    "403": problem("forbidden: the key's tenant is suspended."),
                    "413": problem("payload_too_large: the body is over the configured limit."),
                    "415": problem("unsupported_media_type: not JPEG, PNG, WebP, GIF, AVIF or HEIC; the message names TIFF, BMP or JPEG XL when it sees one."),
                    "422": problem("undecodable_image; truncated_image (a JPEG cut inside a scan); too_many_pixels (one image, or an animation's frames × canvas); too_many_output_pixels (the output canvas, checked before allocating); too_many_frames (an animation over the frame limit); output_too_large (the encoded image is larger than one reply can carry)."),
                    "500": problem("internal_error: a bug; the detail is in the resizer's log, never in the body."),
                    "429": problem("rate_limited: see Retry-After."),
                    "503": problem("kafka_unavailable, overloaded, not_ready or auth_unavailable: retry shortly."),
                    "504": problem("deadline_exceeded: no reply within the deadline.")
                }
            }},
            "/v1/img/{key_id}/{signature}/{path}": {"get": {
                "summary": "Resize an image named by a signed URL (imgproxy's format)",
                "description": get_description(),
                "security": [],
                "parameters": [
                    in_path("key_id", "The signing key's id (not secret)."),
                    {"name": "If-None-Match", "in": "header", "required": false, "description": "ETags of answers the client holds; one this URL made is revalidated with the origin, and a 304 answered when the origin confirms.", "schema": {"type": "string"}},
                    {"name": "Accept", "in": "header", "required": false, "description": "Media types the client takes; when the URL names no format, image/avif and image/webp named here choose the output format (wildcards do not).", "schema": {"type": "string"}},
                    in_path("signature", "URL-safe base64, unpadded, of HMAC-SHA256(key, salt || the path after this segment, from its leading /)."),
                    in_path("path", "Processing options, then `plain/{source URL}[@ext]` or the base64 source `[.ext]`; spans several path segments, which an OpenAPI path parameter cannot express: a generated client would send its `/` as `%2F`, so build these URLs with imgproxy's URL builders (or by hand, docs/api.md), not a generated client.")
                ],
                "responses": {
                    "200": {"description": "The resized image, as for POST /v1/resize (same headers, Server-Timing included), with caching headers.",
                            "headers": {"X-Request-Id": {"schema": {"type": "string"}}, "Server-Timing": {"schema": {"type": "string"}},
                                        "Cache-Control": {"description": "public, max-age=N: api.web.max_age (default 86400), capped by the URL's expires.", "schema": {"type": "string"}},
                                        "ETag": {"description": "From the origin's ETag (else Last-Modified) and the canonical request; absent when the origin sent neither; weak (W/) when the origin's validator is weak or a date.", "schema": {"type": "string"}},
                                        "Vary": {"description": "Accept, exactly when the format was chosen from the Accept header (the URL named none).", "schema": {"type": "string"}}},
                            "content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}, "image/avif": {}, "image/gif": {}}},
                    "304": {"description": "Not Modified: the request's If-None-Match holds this URL's ETag and the origin confirmed, with a conditional request, that the source did not change. No body, no resize; billed not_modified. Carries ETag, Cache-Control and Vary as the 200 did.",
                            "headers": {"ETag": {"schema": {"type": "string"}}, "Cache-Control": {"schema": {"type": "string"}}, "Vary": {"schema": {"type": "string"}}}},
                    "400": problem("bad_url (the path's shape), bad_option (an invalid value; dpr products over 8192), unsupported_option (an option or value imgpipe does not implement, named in the message: presets, every imgproxy option not listed above), bad_source_url (missing, undecodable, or not an absolute http or https URL)."),
                    "403": problem("invalid_signature (unknown or revoked signing key, tampered path, wrong signature: never says which), url_expired, source_not_allowed (not under the tenant's allowed_sources), forbidden (the tenant is suspended), source_forbidden (the origin answered 401 or 403), source_address_refused (the source resolves to, or redirects to, an address in a refused range)."),
                    "404": problem("source_not_found: the origin answered 404 or 410."),
                    "413": problem("source_too_large: the source is over the resizers' input limit (Content-Length or the bytes read)."),
                    "415": problem("unsupported_media_type: the fetched source is not JPEG, PNG, WebP, GIF, AVIF or HEIC."),
                    "422": problem("As for POST /v1/resize: undecodable_image, truncated_image, too_many_pixels, too_many_output_pixels, too_many_frames, output_too_large."),
                    "429": problem("rate_limited: the tenant's quota, shared with its API keys; see Retry-After."),
                    "500": problem("internal_error."),
                    "502": problem("source_unreachable: DNS failure, connection refused or reset, the origin answered 5xx or another unexpected status, or more redirects than the configured bound."),
                    "503": problem("kafka_unavailable, overloaded, not_ready or auth_unavailable: retry shortly."),
                    "504": problem("source_timeout (the origin did not answer within the request's deadline) or deadline_exceeded.")
                }
            }},
            "/v1/usage": {"get": {
                "summary": "The caller's own usage",
                "parameters": [
                    {"name": "from", "in": "query", "required": true, "description": "Start (inclusive): epoch seconds or RFC 3339 with an offset (Z or ±hh:mm, + written %2B in a URL), whole seconds.", "schema": {"type": "string"}},
                    {"name": "to", "in": "query", "required": true, "description": "End (exclusive), in the same forms as from.", "schema": {"type": "string"}},
                    query("granularity", "minute, hour (default) or day.", json!({"type": "string", "enum": ["minute", "hour", "day"]})),
                    query("group_by", "format, outcome or source_host.", json!({"type": "string", "enum": ["format", "outcome", "source_host"]}))
                ],
                "responses": {
                    "200": {"description": "Usage buckets.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/UsageReport"}}}},
                    "400": problem("bad_parameters: bad range or parameter."),
                    "401": problem("unauthenticated."),
                    "503": problem("usage_unavailable: ClickHouse unreachable.")
                }
            }},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI document."}}}}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resize_parameter_format_and_code_is_described() {
        let spec = spec();
        let resize = &spec["paths"]["/v1/resize"]["post"];
        let names: Vec<&str> = resize["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for name in [
            "width", "height", "fit", "gravity", "focus_x", "focus_y", "format", "quality",
            "lossless", "effort", "frames", "enlarge",
        ] {
            assert!(names.contains(&name), "parameter {name} missing");
        }
        let text = resize.to_string();
        for needle in [
            "avif",
            "gif",
            "too_many_frames",
            "too_many_pixels",
            "too_many_output_pixels",
            "output_too_large",
            "truncated_image",
            "internal_error",
            "HEIC",
            "TIFF",
            "BMP",
            "sRGB",
        ] {
            assert!(text.contains(needle), "{needle} missing");
        }
    }

    #[test]
    fn every_fit_in_the_enum_is_accepted_and_the_parser_accepts_no_other() {
        let spec = spec();
        let fit = spec["paths"]["/v1/resize"]["post"]["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "fit")
            .expect("fit described");
        let listed: Vec<&str> = fit["schema"]["enum"]
            .as_array()
            .expect("an enum")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        for value in &listed {
            let query = format!("width=8&height=8&fit={value}");
            assert!(
                crate::api::params::parse(Some(&query)).is_ok(),
                "{value} listed but refused"
            );
        }
        // The parser's own error names every fit it accepts: the enum lists the same ones.
        let refused = crate::api::params::parse(Some("fit=bogus")).unwrap_err();
        let named = refused
            .split_once("must be ")
            .and_then(|(_, rest)| rest.split_once(", got"))
            .map(|(names, _)| names)
            .unwrap_or_else(|| panic!("no list in `{refused}`"));
        let mut accepted: Vec<&str> = named.split(", ").flat_map(|n| n.split(" or ")).collect();
        let mut listed = listed;
        accepted.sort_unstable();
        listed.sort_unstable();
        assert_eq!(accepted, listed);
    }

    #[test]
    fn every_gravity_in_the_enum_is_accepted() {
        let spec = spec();
        let gravity = spec["paths"]["/v1/resize"]["post"]["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "gravity")
            .expect("gravity described");
        for value in gravity["schema"]["enum"].as_array().expect("an enum") {
            let value = value.as_str().expect("a name");
            let focus = if value == "focus_point" {
                "&focus_x=0.5&focus_y=0.5"
            } else {
                ""
            };
            let query = format!("width=8&height=8&fit=cover&gravity={value}{focus}");
            assert!(
                crate::api::params::parse(Some(&query)).is_ok(),
                "{value} listed but refused"
            );
        }
        let refused = crate::api::params::parse(Some("gravity=bogus")).unwrap_err();
        for value in ["smart", "focus_point"] {
            assert!(refused.contains(value), "{refused}");
            assert!(gravity.to_string().contains(value));
        }
    }

    #[test]
    fn usage_buckets_describe_billed_and_refused_requests() {
        let bucket = &spec()["components"]["schemas"]["UsageBucket"];
        for field in [
            "requests",
            "refused",
            "cpu_time_us",
            "format",
            "outcome",
            "source_host",
        ] {
            assert!(
                bucket["properties"][field]["description"].is_string(),
                "{field} missing"
            );
        }
    }

    #[test]
    fn every_route_is_described() {
        let spec = spec();
        for (method, path) in ROUTES {
            assert!(
                spec["paths"][path][method].is_object(),
                "{method} {path} missing"
            );
        }
    }
}

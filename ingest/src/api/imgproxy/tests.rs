use schemas::events::{Fit, FocusPoint, Frames, Gravity, ImageFormat, ResizeParams, Rgb};

use super::*;

/// The key and salt of imgproxy's README and examples.
const KEY: &str = "943b421c9eb07c830af81030552c86009268de4e532ba2ee2eab8247c6da0881";
const SALT: &str = "520f986b998545b4785e0defbc4f3c1203f22de2374a3d53cb7a7fe9fea309c5";

fn key() -> Vec<u8> {
    hex::decode(KEY).expect("hex")
}

fn salt() -> Vec<u8> {
    hex::decode(SALT).expect("hex")
}

/// Splits, verifies with imgproxy's example key and salt, parses.
fn verified(path: &str) -> Result<ImgRequest, UrlError> {
    let split = split(path).expect("split");
    assert!(
        signature_matches(&key(), &salt(), &split.signed, split.signature),
        "signature of {path}"
    );
    parse(&split.signed)
}

fn ok(signed: &str) -> ImgRequest {
    parse(signed).unwrap_or_else(|e| panic!("{signed}: {e:?}"))
}

fn params(signed: &str) -> ResizeParams {
    ok(signed).params
}

fn err(signed: &str) -> UrlError {
    parse(signed).expect_err(signed)
}

const SRC: &str = "plain/http://example.com/a.jpg";

// --- Signatures ---

/// The worked example of imgproxy's documentation (docs/usage/signing_url.mdx of
/// imgproxy/imgproxy-docs, formerly docs/signing_the_url.md): key `secret`, salt `hello`.
#[test]
fn the_documentations_example_verifies() {
    let key = hex::decode("736563726574").expect("hex");
    let salt = hex::decode("68656C6C6F").expect("hex");
    let path = "/oKfUtW34Dvo2BGQehJFR4Nr0_rIjOtdtzJ3QFsUcXH8/rs:fill:300:400:0/g:sm/\
                aHR0cDovL2V4YW1w/bGUuY29tL2ltYWdl/cy9jdXJpb3NpdHku/anBn.png";
    let s = split(path).expect("split");
    assert_eq!(s.signature, "oKfUtW34Dvo2BGQehJFR4Nr0_rIjOtdtzJ3QFsUcXH8");
    assert!(signature_matches(&key, &salt, &s.signed, s.signature));
    assert_eq!(sign(&key, &salt, &s.signed), s.signature);
    let r = ok(&s.signed);
    assert_eq!(
        r.source_url.as_str(),
        "http://example.com/images/curiosity.jpg"
    );
    assert_eq!(
        (r.params.width, r.params.height, r.params.fit),
        (Some(300), Some(400), Fit::CoverClip)
    );
    assert_eq!(
        (r.params.format, r.params.gravity, r.params.focus_point),
        (Some(ImageFormat::Png), Gravity::Smart, None)
    );
}

/// imgproxy's `examples/signature.js` (imgproxy/imgproxy), run with Node 20, printed this path
/// for the README's key and salt.
#[test]
fn imgproxys_signing_example_verifies() {
    let r = verified(
        "/m3k5QADfcKPDj-SDI2AIogZbC3FlAXszuwhtWXYqavc/rs:fit:300:300/plain/\
         http://img.example.com/pretty/image.jpg",
    )
    .expect("valid");
    assert_eq!(
        r.source_url.as_str(),
        "http://img.example.com/pretty/image.jpg"
    );
    assert_eq!(
        (r.params.width, r.params.height, r.params.fit),
        (Some(300), Some(300), Fit::Inside)
    );
}

/// Built by `generateImageUrl` of `@imgproxy/imgproxy-node` 1.1.0 (with
/// `@imgproxy/imgproxy-js-core` 1.9.0) with endpoint `http://localhost:8080/v1/img/k_demo` and
/// the README's key and salt; here is each URL with the endpoint cut off, as the route passes it.
#[test]
fn urls_from_the_node_builder_verify_and_parse() {
    // { resizing_type: "fit", width: 300, gravity: { type: "no" }, enlarge: 1 },
    // url "https://example.com/image.jpg" (base64, the builder's default)
    let r = verified(
        "/4uW4k4zWDED_K07HysReVXqiGuR_TqOVXFV-KuLCCw0/el:t/g:no/rt:fit/w:300/\
         aHR0cHM6Ly9leGFtcGxlLmNvbS9pbWFnZS5qcGc",
    )
    .expect("valid");
    assert_eq!(r.source_url.as_str(), "https://example.com/image.jpg");
    assert_eq!(
        r.params,
        ResizeParams {
            width: Some(300),
            gravity: Gravity::North,
            enlarge: true,
            ..ResizeParams::default()
        }
    );

    // { resize: { resizing_type: "fill", width: 300, height: 200 }, quality: 80,
    //   format: "webp", dpr: 2 }, plain "http://127.0.0.1:9000/photos/cat.jpg"
    let r = verified(
        "/1Dt1DRwUbzHCcp7xlNEtOLOpHVBLe3u-rqpeIOo8IaE/dpr:2/f:webp/q:80/rs:fill:300:200/plain/\
         http://127.0.0.1:9000/photos/cat.jpg",
    )
    .expect("valid");
    assert_eq!(
        r.source_url.as_str(),
        "http://127.0.0.1:9000/photos/cat.jpg"
    );
    assert_eq!(r.dpr, 2.0);
    assert_eq!(
        r.params,
        ResizeParams {
            width: Some(600),
            height: Some(400),
            fit: Fit::CoverClip,
            format: Some(ImageFormat::Webp),
            quality: Some(80),
            ..ResizeParams::default()
        }
    );

    // { size: { width: 640, height: 480, enlarge: 0, extend: { extend: 1, gravity: { type:
    //   "soea" } } }, background: { r: 255, g: 0, b: 128 }, cachebuster: "v2",
    //   expires: 4102444800 }, url "https://example.com/a/very/long/path/to/some/
    //   photo-with-a-long-name.png" (base64)
    let r = verified(
        "/yEj2sBhkp2vU6_GPAjHUfzcYA0jH88U34DxQek_sWos/bg:255:0:128/cb:v2/exp:4102444800/\
         s:640:480:f:t:soea/aHR0cHM6Ly9leGFtcGxlLmNvbS9hL3ZlcnkvbG9uZy9wYXRoL3RvL3NvbWUvcGhvd\
         G8td2l0aC1hLWxvbmctbmFtZS5wbmc",
    )
    .expect("valid");
    assert_eq!(
        r.source_url.as_str(),
        "https://example.com/a/very/long/path/to/some/photo-with-a-long-name.png"
    );
    assert_eq!(
        (r.cachebuster.as_deref(), r.expires_at_s),
        (Some("v2"), Some(4_102_444_800))
    );
    assert_eq!(
        r.params,
        ResizeParams {
            width: Some(640),
            height: Some(480),
            fit: Fit::Pad,
            gravity: Gravity::SouthEast,
            background: Some(Rgb {
                r: 255,
                g: 0,
                b: 128
            }),
            ..ResizeParams::default()
        }
    );

    // { rt: "force", w: 100, h: 100, bg: "ff00ff", format: "png" },
    // plain "https://example.com/img.php%3Fid%3D7%26s%3Dbig" (the query percent-encoded)
    let r = verified(
        "/aACbHRSAvTj6yKcko8g_6FV0afnAd-bD8Qz4ALWPJHI/bg:ff00ff/f:png/h:100/rt:force/w:100/plain/\
         https://example.com/img.php%3Fid%3D7%26s%3Dbig",
    )
    .expect("valid");
    assert_eq!(
        r.source_url.as_str(),
        "https://example.com/img.php?id=7&s=big"
    );
    assert_eq!(r.source_url.query(), Some("id=7&s=big"));
    assert_eq!(
        (
            r.params.fit,
            r.params.width,
            r.params.height,
            r.params.format
        ),
        (Fit::Fill, Some(100), Some(100), Some(ImageFormat::Png))
    );
    assert_eq!(
        r.params.background,
        Some(Rgb {
            r: 255,
            g: 0,
            b: 255
        })
    );
}

#[test]
fn tampered_paths_and_signatures_do_not_verify() {
    let path = "/1Dt1DRwUbzHCcp7xlNEtOLOpHVBLe3u-rqpeIOo8IaE/dpr:2/f:webp/q:80/rs:fill:300:200/\
                plain/http://127.0.0.1:9000/photos/cat.jpg";
    let (key, salt) = (key(), salt());
    let s = split(path).expect("split");
    assert!(signature_matches(&key, &salt, &s.signed, s.signature));
    for tampered in [
        path.replace("dpr:2", "dpr:3"),
        path.replace("cat.jpg", "dog.jpg"),
        path.replace("/dpr:2/", "/"),
        format!("{path}@png"),
        path.replace("1Dt1DRwU", "1Dt1DRwV"),
        path.replace("IaE/", "IaF/"),
        path.replace("IaE/", "Ia/"),
        path.replace("IaE/", "IaE=/"),
    ] {
        let s = split(&tampered).expect("split");
        assert!(
            !signature_matches(&key, &salt, &s.signed, s.signature),
            "{tampered}"
        );
    }
    // Another tenant's key and salt.
    assert!(!signature_matches(&salt, &key, &s.signed, s.signature));
}

#[test]
fn a_signed_path_survives_proxies_that_escape_colons_or_merge_slashes() {
    let path = "/1Dt1DRwUbzHCcp7xlNEtOLOpHVBLe3u-rqpeIOo8IaE/dpr%3A2/f%3Awebp/q:80/\
                rs%3Afill%3A300%3A200/plain/http:/127.0.0.1:9000/photos/cat.jpg";
    let r = verified(path).expect("valid");
    assert_eq!(
        r.source_url.as_str(),
        "http://127.0.0.1:9000/photos/cat.jpg"
    );
    assert_eq!(r.params.width, Some(600));
}

#[test]
fn sign_then_split_round_trips() {
    let signed = "/rs:fill:64:64/imgpipe_effort:0/plain/http://127.0.0.1:8000/a.png@webp";
    let url_path = format!("/{}{signed}", sign(b"k", b"s", signed));
    let s = split(&url_path).expect("split");
    assert_eq!(s.signed, signed);
    assert!(signature_matches(b"k", b"s", &s.signed, s.signature));
}

// --- Options ---

#[test]
fn full_and_short_names_mean_the_same() {
    for (long, short) in [
        ("resize:fill:300:200:1", "rs:fill:300:200:1"),
        ("size:300:200:1", "s:300:200:1"),
        (
            "resizing_type:force/width:10/height:20",
            "rt:force/w:10/h:20",
        ),
        ("width:10/enlarge:1", "w:10/el:1"),
        ("size:10:20/extend:1:no", "s:10:20/ex:1:no"),
        ("width:10/gravity:sowe", "w:10/g:sowe"),
        ("width:10/quality:55", "w:10/q:55"),
        ("width:10/format:avif", "w:10/f:avif"),
        ("width:10/format:avif", "w:10/ext:avif"),
        ("width:10/background:10:20:30", "w:10/bg:10:20:30"),
        ("width:10/cachebuster:x", "w:10/cb:x"),
        ("width:10/expires:5", "w:10/exp:5"),
    ] {
        assert_eq!(
            ok(&format!("/{long}/{SRC}")),
            ok(&format!("/{short}/{SRC}")),
            "{long} vs {short}"
        );
    }
}

#[test]
fn every_option_maps_onto_the_contract() {
    let r = ok(&format!(
        "/rs:fill:300:200:1/g:nowe/q:70/f:webp/bg:fa0/cb:abc/exp:1700000000/dpr:1.5/\
         imgpipe_effort:3/imgpipe_lossless:1/imgpipe_frames:first/{SRC}"
    ));
    assert_eq!(
        r.params,
        ResizeParams {
            width: Some(450),
            height: Some(300),
            fit: Fit::CoverClip,
            gravity: Gravity::NorthWest,
            format: Some(ImageFormat::Webp),
            quality: Some(70),
            enlarge: true,
            lossless: true,
            effort: Some(3),
            frames: Frames::First,
            background: Some(Rgb {
                r: 255,
                g: 170,
                b: 0
            }),
            focus_point: None,
            auto_format: None,
        }
    );
    assert_eq!(
        (r.cachebuster.as_deref(), r.expires_at_s, r.dpr),
        (Some("abc"), Some(1_700_000_000), 1.5)
    );
    assert_eq!(r.source_url.as_str(), "http://example.com/a.jpg");
}

#[test]
fn defaults_without_options() {
    let r = ok(&format!("/{SRC}"));
    assert_eq!(r.params, ResizeParams::default());
    assert_eq!((r.expires_at_s, r.cachebuster, r.dpr), (None, None, 1.0));
}

#[test]
fn resizing_types_map_to_fits() {
    for (rt, fit) in [
        ("fit", Fit::Inside),
        ("fill", Fit::CoverClip),
        ("fill-down", Fit::Cover),
        ("force", Fit::Fill),
        ("auto", Fit::Auto),
    ] {
        assert_eq!(params(&format!("/rs:{rt}:10:20/{SRC}")).fit, fit, "{rt}");
        assert_eq!(params(&format!("/rt:{rt}/s:10:20/{SRC}")).fit, fit, "{rt}");
    }
    assert_eq!(fit_for(ResizingType::Fit, true, false), Ok(Fit::Pad));
    assert_eq!(fit_for(ResizingType::Fill, true, true), Ok(Fit::CoverClip));
    for rt in [
        ResizingType::Fill,
        ResizingType::FillDown,
        ResizingType::Force,
        ResizingType::Auto,
    ] {
        let refused = fit_for(rt, true, false).expect_err("extend without enlarge");
        assert_eq!(refused.option.as_deref(), Some("extend"));
    }
    assert!(fit_for(ResizingType::Auto, true, true).is_err());
    // With one side imgproxy keeps the ratio from it: our inside on that side, or pad with extend.
    for rt in ["fit", "fill", "fill-down", "auto"] {
        let p = params(&format!("/rs:{rt}:10/{SRC}"));
        assert_eq!(
            (p.fit, p.width, p.height),
            (Fit::Inside, Some(10), None),
            "{rt}"
        );
        let p = params(&format!("/rs:{rt}:0:20/{SRC}"));
        assert_eq!(
            (p.fit, p.width, p.height),
            (Fit::Inside, None, Some(20)),
            "{rt}"
        );
    }
    let p = params(&format!("/rs:fit:0:20:0:1/{SRC}"));
    assert_eq!((p.fit, p.width, p.height), (Fit::Pad, None, Some(20)));
}

#[test]
fn empty_arguments_keep_their_defaults() {
    // An empty resizing type, width, height, enlarge or extend leaves the value as it was.
    let p = params(&format!("/rt:force/w:7/h:9/el:1/rs::::/{SRC}"));
    assert_eq!(
        (p.fit, p.width, p.height, p.enlarge),
        (Fit::Fill, Some(7), Some(9), true)
    );
    let p = params(&format!("/w:7/h:9/s::/{SRC}"));
    assert_eq!((p.width, p.height), (Some(7), Some(9)));
    let p = params(&format!("/rs:fill::20/{SRC}"));
    assert_eq!((p.fit, p.width, p.height), (Fit::Inside, None, Some(20)));
    // Empty booleans are false (imgproxy reads them so), empty background and cachebuster none.
    let r = ok(&format!("/el:1/el:/bg:1:2:3/bg:/cb:x/cb:/{SRC}"));
    assert_eq!(
        (r.params.enlarge, r.params.background, r.cachebuster),
        (false, None, None)
    );
    // 0 is "not given" for sides and "the default" for quality.
    let p = params(&format!("/s:300:300/w:0/q:50/q:0/{SRC}"));
    assert_eq!((p.width, p.height, p.quality), (None, Some(300), None));
    // Empty gravity offsets.
    assert_eq!(params(&format!("/g:ea::/{SRC}")).gravity, Gravity::East);
}

#[test]
fn later_options_override_earlier_ones() {
    let p = params(&format!("/rs:fit:300:300/w:200/f:png/{SRC}@webp"));
    assert_eq!(
        (p.width, p.height, p.format),
        (Some(200), Some(300), Some(ImageFormat::Webp))
    );
}

#[test]
fn booleans_take_gos_spellings() {
    for t in ["1", "t", "T", "true", "TRUE", "True"] {
        assert!(params(&format!("/el:{t}/{SRC}")).enlarge, "{t}");
    }
    for f in ["", "0", "f", "F", "false", "FALSE", "False"] {
        assert!(!params(&format!("/el:1/el:{f}/{SRC}")).enlarge, "{f}");
    }
    let e = err(&format!("/el:yes/{SRC}"));
    assert_eq!((e.code, e.option.as_deref()), ("bad_option", Some("el")));
}

#[test]
fn the_nine_gravities() {
    for (g, gravity) in [
        ("ce", Gravity::Centre),
        ("no", Gravity::North),
        ("so", Gravity::South),
        ("ea", Gravity::East),
        ("we", Gravity::West),
        ("noea", Gravity::NorthEast),
        ("nowe", Gravity::NorthWest),
        ("soea", Gravity::SouthEast),
        ("sowe", Gravity::SouthWest),
    ] {
        assert_eq!(
            params(&format!("/rs:fill:9:9/g:{g}/{SRC}")).gravity,
            gravity
        );
        assert_eq!(
            params(&format!("/gravity:{g}:0:0.0/{SRC}")).gravity,
            gravity
        );
        // Padding takes the extend gravity, not the crop gravity.
        let p = params(&format!("/g:no/rs:fit:9:9:0:1:{g}/{SRC}"));
        assert_eq!((p.fit, p.gravity), (Fit::Pad, gravity));
    }
    // Extend without a gravity pads around the centre, whatever the crop gravity.
    let p = params(&format!("/g:no/s:9:9/ex:1/{SRC}"));
    assert_eq!((p.fit, p.gravity), (Fit::Pad, Gravity::Centre));
    // Without extend the crop gravity stays.
    let p = params(&format!("/g:no/ex:1:so/ex:0/s:9:9/{SRC}"));
    assert_eq!((p.fit, p.gravity), (Fit::Inside, Gravity::North));
}

#[test]
fn smart_and_focus_point_gravities() {
    let p = params(&format!("/rs:fill:300:200/g:sm/{SRC}"));
    assert_eq!(
        (p.fit, p.gravity, p.focus_point),
        (Fit::CoverClip, Gravity::Smart, None)
    );
    for path in ["/g:fp:0.25:1", "/gravity:fp:.25:1.0", "/g:sm/g:fp:0.25:1"] {
        let p = params(&format!("/rs:fill-down:300:200{path}/{SRC}"));
        assert_eq!(
            (p.fit, p.gravity, p.focus_point),
            (
                Fit::Cover,
                Gravity::FocusPoint,
                Some(FocusPoint { x: 0.25, y: 1.0 })
            ),
            "{path}"
        );
    }
    // A later gravity replaces the point too.
    let p = params(&format!("/g:fp:0:0/g:so/{SRC}"));
    assert_eq!((p.gravity, p.focus_point), (Gravity::South, None));
    // Padding takes the extend gravity and no point.
    let p = params(&format!("/g:fp:0.1:0.2/rs:fit:9:9:0:1:no/{SRC}"));
    assert_eq!(
        (p.fit, p.gravity, p.focus_point),
        (Fit::Pad, Gravity::North, None)
    );
}

#[test]
fn bad_smart_and_focus_point_gravities_are_named() {
    for (path, code, option, needle) in [
        (
            "/g:fp:1.5:0.5",
            "bad_option",
            "g",
            "x must be a number from 0 to 1",
        ),
        ("/g:fp:0.5:-0.1", "bad_option", "g", "y must be"),
        ("/gravity:fp:NaN:0.5", "bad_option", "gravity", "`NaN`"),
        ("/g:fp:inf:0.5", "bad_option", "g", "`inf`"),
        ("/g:fp:0.5", "bad_option", "g", "fp:%x:%y"),
        ("/g:fp:0.5:0.5:0", "bad_option", "g", "fp:%x:%y"),
        ("/g:fp:a:0.5", "bad_option", "g", "`a`"),
        ("/g:sm:1", "bad_option", "g", "no arguments"),
        ("/g:up", "bad_option", "g", "sm or fp:x:y"),
        // imgproxy refuses `sm` for extend; it takes `fp`, which imgpipe does not.
        ("/ex:1:sm", "bad_option", "ex", "`sm`"),
        ("/s:1:1:0:1:sm", "bad_option", "s", "`sm`"),
        ("/ex:1:fp:0.1:0.2", "unsupported_option", "ex", "`fp`"),
    ] {
        let e = err(&format!("{path}/{SRC}"));
        assert_eq!(
            (e.code, e.option.as_deref()),
            (code, Some(option)),
            "{path}"
        );
        assert!(e.message.contains(needle), "{path}: {e}");
    }
}

#[test]
fn backgrounds() {
    for (arg, rgb) in [
        ("0:0:0", (0, 0, 0)),
        ("255:128:7", (255, 128, 7)),
        ("fff", (255, 255, 255)),
        ("1A2b3C", (26, 43, 60)),
        ("abc", (170, 187, 204)),
    ] {
        assert_eq!(
            params(&format!("/bg:{arg}/{SRC}")).background,
            Some(Rgb {
                r: rgb.0,
                g: rgb.1,
                b: rgb.2
            }),
            "{arg}"
        );
    }
    for arg in [
        "256:0:0", "-1:0:0", "+1:0:0", "1:2", "1:2:3:4", "ffff", "ggg", "1::3", "#fff",
    ] {
        let e = err(&format!("/bg:{arg}/{SRC}"));
        assert_eq!(
            (e.code, e.option.as_deref()),
            ("bad_option", Some("bg")),
            "{arg}"
        );
    }
}

#[test]
fn formats_from_the_option_and_the_extension() {
    for (name, format) in [
        ("jpg", ImageFormat::Jpeg),
        ("jpeg", ImageFormat::Jpeg),
        ("png", ImageFormat::Png),
        ("webp", ImageFormat::Webp),
        ("gif", ImageFormat::Gif),
        ("avif", ImageFormat::Avif),
    ] {
        assert_eq!(params(&format!("/f:{name}/{SRC}")).format, Some(format));
        assert_eq!(params(&format!("/{SRC}@{name}")).format, Some(format));
        assert_eq!(
            params(&format!("/aHR0cDovL2EvYi5wbmc.{name}")).format,
            Some(format)
        );
    }
    let e = err(&format!("/f:heic/{SRC}"));
    assert_eq!(
        (e.code, e.option.as_deref()),
        ("unsupported_option", Some("f"))
    );
    assert!(
        e.message.contains("reads HEIC but does not write"),
        "{}",
        e.message
    );
    for other in ["bmp", "tiff", "heic", "jxl", "svg", "ico"] {
        let e = err(&format!("/f:{other}/{SRC}"));
        assert_eq!(
            (e.code, e.option.as_deref()),
            ("unsupported_option", Some("f"))
        );
        let e = err(&format!("/{SRC}@{other}"));
        assert_eq!(
            (e.code, e.option.as_deref()),
            ("unsupported_option", Some("extension"))
        );
    }
    for junk in ["", "JPG", "webp2"] {
        let e = err(&format!("/format:{junk}/{SRC}"));
        assert_eq!(
            (e.code, e.option.as_deref()),
            ("bad_option", Some("format")),
            "{junk}"
        );
    }
}

#[test]
fn lossless_follows_the_posts_rule() {
    for ok_format in ["webp", "png"] {
        assert!(params(&format!("/imgpipe_lossless:t/f:{ok_format}/{SRC}")).lossless);
    }
    // Without a format the resizer checks once it knows the input's.
    assert!(params(&format!("/imgpipe_lossless:1/{SRC}")).lossless);
    for bad_format in ["jpg", "gif", "avif"] {
        let e = err(&format!("/imgpipe_lossless:1/{SRC}@{bad_format}"));
        assert_eq!(
            (e.code, e.option.as_deref()),
            ("bad_option", Some("imgpipe_lossless"))
        );
    }
}

#[test]
fn dpr_multiplies_the_sides_within_the_limit() {
    let p = params(&format!("/s:100:33/dpr:1.5/{SRC}"));
    // 49.5 rounds half away from zero, as imgproxy.
    assert_eq!((p.width, p.height), (Some(150), Some(50)));
    // At the limit exactly.
    let p = params(&format!("/w:4096/dpr:2/{SRC}"));
    assert_eq!(p.width, Some(MAX_SIDE_FOR_TESTS));
    let p = params(&format!("/h:1024/dpr:8/{SRC}"));
    assert_eq!(p.height, Some(MAX_SIDE_FOR_TESTS));
    // One over: an error naming dpr and the product, not a clamp.
    let e = err(&format!("/w:4097/dpr:2/{SRC}"));
    assert_eq!((e.code, e.option.as_deref()), ("bad_option", Some("dpr")));
    assert!(
        e.message.contains("8194") && e.message.contains("8192"),
        "{e}"
    );
    let e = err(&format!("/s:10:5000/dpr:2/{SRC}"));
    assert!(e.message.starts_with("height 5000"), "{e}");
    // A fraction may shrink, but not to nothing.
    let p = params(&format!("/w:3/dpr:0.5/{SRC}"));
    assert_eq!(p.width, Some(2));
    assert_eq!(
        err(&format!("/w:1/dpr:0.4/{SRC}")).option.as_deref(),
        Some("dpr")
    );
    // Without sides dpr changes nothing.
    assert_eq!(params(&format!("/dpr:3/{SRC}")), ResizeParams::default());
    for bad in ["0", "-1", "8.01", "nan", "inf", "", "x"] {
        let e = err(&format!("/w:1/dpr:{bad}/{SRC}"));
        assert_eq!(
            (e.code, e.option.as_deref()),
            ("bad_option", Some("dpr")),
            "{bad}"
        );
    }
    assert_eq!(ok(&format!("/w:1/dpr:8/{SRC}")).dpr, MAX_DPR);
}

const MAX_SIDE_FOR_TESTS: i32 = crate::api::params::MAX_SIDE;

#[test]
fn bad_values_name_their_option() {
    for (options, option) in [
        ("w:-1", "w"),
        ("w:", "w"),
        ("width:8193", "width"),
        ("h:abc", "h"),
        ("s:1.5", "s"),
        ("rs:fit:1:99999", "rs"),
        ("rs:squash", "rs"),
        ("rt:", "rt"),
        ("resizing_type:fit:fill", "resizing_type"),
        ("q:101", "q"),
        ("q:-1", "q"),
        ("quality:", "quality"),
        ("g:up", "g"),
        ("g:re", "g"),
        ("g:no:1:2:3", "g"),
        ("g:no:x", "g"),
        ("ex:1:no:0:0:0", "ex"),
        ("rs:fit:1:1:0:1:no:0:0:0", "rs"),
        ("s:1:1:0:1:no:0:0:0", "s"),
        ("cb:a:b", "cb"),
        ("exp:soon", "exp"),
        ("exp:", "exp"),
        ("exp:1:2", "exp"),
        ("w:1:2", "w"),
        ("imgpipe_effort:10", "imgpipe_effort"),
        ("imgpipe_effort:", "imgpipe_effort"),
        ("imgpipe_frames:some", "imgpipe_frames"),
        ("imgpipe_lossless:maybe", "imgpipe_lossless"),
    ] {
        let e = err(&format!("/{options}/{SRC}"));
        assert_eq!(
            (e.code, e.option.as_deref()),
            ("bad_option", Some(option)),
            "{options}: {e}"
        );
    }
}

#[test]
fn unsupported_options_are_named_never_ignored() {
    for name in [
        "crop",
        "c",
        "trim",
        "padding",
        "pd",
        "rotate",
        "rot",
        "blur",
        "bl",
        "sharpen",
        "sh",
        "watermark",
        "wm",
        "zoom",
        "z",
        "min-width",
        "mw",
        "extend_aspect_ratio",
        "exar",
        "strip_metadata",
        "sm",
        "preset",
        "pr",
        "raw",
        "filename",
        "fn",
        "format_quality",
        "fq",
        "max_bytes",
        "mb",
        "auto_rotate",
        "ar",
        "flip",
        "fl",
        "skip_processing",
        "skp",
        "return_attachment",
        "att",
        "max_src_resolution",
        "mrd",
        "pixelate",
        "pix",
    ] {
        let e = err(&format!("/{name}:1/{SRC}"));
        assert_eq!(
            (e.code, e.option.as_deref()),
            ("unsupported_option", Some(name)),
            "{name}"
        );
        assert!(e.message.contains("imgproxy"), "{name}: {e}");
    }
    for name in [
        "widht",
        "imgpipe_",
        "imgpipe_quality",
        "effort",
        "lossless",
        "W",
        "",
    ] {
        let e = err(&format!("/{name}:1/{SRC}"));
        assert_eq!(
            (e.code, e.option.as_deref()),
            ("unsupported_option", Some(name)),
            "{name}"
        );
        assert!(e.message.contains("unknown"), "{name}: {e}");
    }
    // Force keeps the source's length on a missing side, which no fit of ours does.
    let e = err(&format!("/rs:force:100:0/{SRC}"));
    assert_eq!(
        (e.code, e.option.as_deref()),
        ("unsupported_option", Some("resizing_type"))
    );
    // Extend with fill and no enlarge pads in a way no fit of ours reproduces.
    let e = err(&format!("/rs:fill:100:100:0:1/{SRC}"));
    assert_eq!(
        (e.code, e.option.as_deref()),
        ("unsupported_option", Some("extend"))
    );
}

// --- Sources ---

#[test]
fn plain_sources_with_and_without_extension() {
    let r = ok("/w:10/plain/https://example.com/a/b.jpg");
    assert_eq!(r.source_url.as_str(), "https://example.com/a/b.jpg");
    assert_eq!(r.params.format, None);
    let r = ok("/w:10/plain/https://example.com/a/b.jpg@avif");
    assert_eq!(r.source_url.as_str(), "https://example.com/a/b.jpg");
    assert_eq!(r.params.format, Some(ImageFormat::Avif));
    // A percent-encoded query string and `@`, and a port.
    let r = ok("/plain/http://127.0.0.1:8081/img%3Fsize%3Dlarge%26v%3D2%40x@png");
    assert_eq!(
        r.source_url.as_str(),
        "http://127.0.0.1:8081/img?size=large&v=2@x"
    );
    assert_eq!(r.source_url.query(), Some("size=large&v=2@x"));
    assert_eq!(r.params.format, Some(ImageFormat::Png));
}

#[test]
fn base64_sources() {
    // "https://example.com/images/a b.jpg?x=1"
    let encoded = "aHR0cHM6Ly9leGFtcGxlLmNvbS9pbWFnZXMvYSBiLmpwZz94PTE";
    for path in [
        format!("/{encoded}"),
        format!("/{encoded}="),
        format!(
            "/w:1/{}/{}/{}",
            &encoded[..10],
            &encoded[10..30],
            &encoded[30..]
        ),
        format!("/{}/{}.webp", &encoded[..4], &encoded[4..]),
    ] {
        let r = ok(&path);
        assert_eq!(
            r.source_url.as_str(),
            "https://example.com/images/a%20b.jpg?x=1",
            "{path}"
        );
    }
}

#[test]
fn sources_must_be_absolute_http_or_https() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    for source in [
        "ftp://example.com/a.jpg",
        "file:///etc/passwd",
        "data:image/png;base64,AAAA",
        "/relative/a.jpg",
        "example.com/a.jpg",
        "http://",
        "javascript:alert(1)",
        "local:///a.jpg",
        "s3://bucket/a.jpg",
    ] {
        for path in [format!("/plain/{source}"), format!("/{}", b64(source))] {
            let e = err(&path);
            assert_eq!(
                (e.code, e.option.as_deref()),
                ("bad_source_url", None),
                "{path}: {e}"
            );
        }
    }
    let e = err("/w:1");
    assert_eq!(e.code, "bad_source_url");
}

#[test]
fn expiry_follows_imgproxy() {
    let at = |exp: &str| ok(&format!("/exp:{exp}/{SRC}"));
    assert!(!at("1000").is_expired(1000));
    assert!(at("1000").is_expired(1001));
    // 0 and negative never expire.
    assert!(!at("0").is_expired(i64::MAX));
    assert!(!at("-5").is_expired(i64::MAX));
    assert!(!ok(&format!("/{SRC}")).is_expired(i64::MAX));
}

#[test]
fn url_errors_become_400_problems() {
    let problem = Problem::from(err(&format!("/crop:1/{SRC}")));
    assert_eq!(problem.status, StatusCode::BAD_REQUEST);
    assert_eq!(problem.code, "unsupported_option");
    assert!(problem.message.contains("crop"));
}

//! The documents clients read list every error code the resizer can answer: the OpenAPI
//! document served at `/openapi.json` and docs/api.md.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use processors::kernel::KernelError;

#[test]
fn every_kernel_error_code_is_documented() {
    let openapi = ingest::api::openapi::spec().to_string();
    let readme = std::fs::read_to_string(format!("{}/docs/api.md", env!("CARGO_MANIFEST_DIR")))
        .expect("docs/api.md");
    for code in KernelError::CODES {
        assert!(
            openapi.contains(code),
            "{code} missing from the OpenAPI document"
        );
        assert!(
            readme.contains(&format!("`{code}`")),
            "{code} missing from docs/api.md"
        );
    }
}

/// Every processing option the documents list for signed GETs is one the URL parser accepts, and
/// docs/api.md lists each of them: a documented option that answers 400 `unsupported_option`, or
/// an accepted one nobody documented, fails here.
#[test]
fn every_documented_get_option_is_accepted_and_in_docs() {
    let readme = std::fs::read_to_string(format!("{}/docs/api.md", env!("CARGO_MANIFEST_DIR")))
        .expect("docs/api.md");
    // A valid argument list for each option.
    let sample = |name: &str| match name {
        "resize" | "rs" => "fill:100:80:1:0",
        "size" | "s" => "100:80:0:0",
        "resizing_type" | "rt" => "fill-down",
        "width" | "w" | "height" | "h" => "100",
        "dpr" => "2",
        "enlarge" | "el" | "imgpipe_lossless" => "1",
        "extend" | "ex" => "0:ce",
        "gravity" | "g" => "noea",
        "quality" | "q" => "75",
        "format" | "f" | "ext" => "webp",
        "background" | "bg" => "ff8800",
        "cachebuster" | "cb" => "v2",
        "expires" | "exp" => "4102444800",
        "imgpipe_effort" => "3",
        "imgpipe_frames" => "first",
        other => panic!("no sample argument for documented option {other}"),
    };
    for (names, _, _) in ingest::api::openapi::GET_OPTIONS {
        for name in names.split(", ") {
            assert!(
                readme.contains(&format!("`{name}`")),
                "{name} missing from docs/api.md"
            );
            let path = format!(
                "/w:100/{name}:{}/plain/http://img.example/a.jpg",
                sample(name)
            );
            if let Err(error) = ingest::api::imgproxy::parse(&path) {
                panic!("documented option {name} is refused: {error} ({path})");
            }
        }
    }
    // And one the parser refuses is named in its error, never ignored.
    let error = ingest::api::imgproxy::parse("/w:100/blur:5/plain/http://img.example/a.jpg")
        .expect_err("blur is not implemented");
    assert_eq!(
        (error.code, error.option.as_deref()),
        ("unsupported_option", Some("blur"))
    );
}

/// Every answer a source fetch can end in is documented for clients, with its code.
#[test]
fn every_source_fetch_code_is_documented() {
    let openapi = ingest::api::openapi::spec().to_string();
    let readme = std::fs::read_to_string(format!("{}/docs/api.md", env!("CARGO_MANIFEST_DIR")))
        .expect("docs/api.md");
    for code in chassis::source::codes::ALL {
        assert!(
            openapi.contains(code),
            "{code} missing from the OpenAPI document"
        );
        assert!(
            readme.contains(&format!("`{code}`")),
            "{code} missing from docs/api.md"
        );
    }
}

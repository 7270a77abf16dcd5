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

//! The integration tests that need no stack: the resize kernel against recorded inputs and
//! against libvips, and the documents and files that must agree with the code (the Compose file,
//! the api's error codes). One binary, one module per subject; `cargo test` runs it anywhere
//! (`kernel_vs_libvips` needs libvips' command-line tools, which `compose/local/bootstrap` installs).

mod api_document;
mod compose_file;
mod kernel_cases;
mod kernel_vs_libvips;

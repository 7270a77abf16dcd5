//! The integration tests that need no stack: the resize kernel against recorded inputs and
//! against libvips, and the documents and files that must agree with the code (the Compose file,
//! the api's error codes, every link and command of the docs, the configuration reference, no
//! import cycle between sibling modules). One binary, one module per subject; `cargo test` runs it anywhere
//! (`kernel_vs_libvips` needs libvips' command-line tools, which `compose/local/bootstrap` installs).

mod api_document;
mod compose_file;
mod docs;
mod kernel_cases;
mod kernel_vs_libvips;
mod module_cycles;

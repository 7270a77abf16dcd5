//! Sources by reference: a request whose image is a URL (`ResizeRequested::source_url`, from a
//! signed GET) has it fetched here, on the async runtime, before its image work goes to the
//! CPU pool.
//!
//! - `guard`: which addresses may be connected to (a pure function and the operator's allow
//!   list);
//! - `fetcher`: the pooled HTTP client, its guarded resolver, redirects by hand, the deadline
//!   and the byte limit;
//! - `error`: how a fetch fails, as the stable codes a client sees.

mod error;
mod fetcher;
mod guard;
#[cfg(test)]
mod tests;

pub use error::{FetchError, Timeout, Unreachable, codes};
pub use fetcher::{FetchSettings, Fetched, Fetcher};
pub use guard::{AddressGuard, RangeClass, Refused, classify};
pub use schemas::events::source_host;

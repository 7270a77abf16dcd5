//! Sources by reference: a request whose image is a URL (a signed GET's source) has it fetched
//! here by a resizer, on the async runtime, before its image work goes to the CPU pool; the api
//! revalidates one here when a browser asks whether its cached answer is still good.
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
pub use fetcher::{FetchSettings, Fetched, Fetcher, Revalidation, is_entity_tag};
pub use guard::{AddressGuard, RangeClass, Refused, classify};

//! How a source fetch fails, sorted into the stable codes a client sees: each variant has its
//! HTTP status, code and a message safe to show (the host and, for a refused address, its range
//! class; never an address, a resolver's or a TLS library's words, which go to the log).

use super::guard::RangeClass;

/// Why a source could not be fetched. All are the request's own outcome (billed as refused),
/// never a reason to retry or dead-letter the record.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The source URL is not an absolute `http` or `https` URL with a host.
    #[error("The source URL is not an http or https URL: {0}")]
    BadUrl(String),
    /// The origin answered 404 or 410.
    #[error("The source {host} answered {status}: no such image")]
    NotFound {
        /// Host (and port) of the origin that answered.
        host: String,
        /// Its status.
        status: u16,
    },
    /// The origin answered 401 or 403.
    #[error("The source {host} answered {status}: access denied")]
    Forbidden {
        /// Host (and port) of the origin that answered.
        host: String,
        /// Its status.
        status: u16,
    },
    /// The body is larger than the input limit (by its `Content-Length`, or cut off while read).
    #[error("The source image is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The resizer's `max_input_bytes`.
        limit: usize,
    },
    /// The request's deadline passed while fetching, or connecting took longer than allowed.
    #[error("{0}")]
    Timeout(Timeout),
    /// The origin could not be reached or did not answer with an image.
    #[error("{0}")]
    Unreachable(Unreachable),
    /// The host (of the URL or of a redirect) is, or resolves only to, an address the guard
    /// refuses.
    #[error("The source host {host} is a {class} address, which this service does not fetch from")]
    AddressRefused {
        /// Host (and port) named by the URL or redirect.
        host: String,
        /// The range class of the address (of the first one refused).
        class: RangeClass,
    },
}

/// Which wait ran out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Timeout {
    /// The request's deadline passed.
    #[error("The source did not answer before the request's deadline")]
    Deadline,
    /// `resizer.source_connect_timeout` passed while connecting.
    #[error("Connecting to the source {0} timed out")]
    Connect(String),
}

/// Why an origin could not be reached, as the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreachable {
    /// No address for the host.
    #[error("The source host {0} could not be resolved")]
    Dns(String),
    /// Connecting (TCP or TLS) failed.
    #[error("Connecting to the source {0} failed")]
    Connect(String),
    /// The connection broke while the request or the body was in flight.
    #[error("The source {0} broke off the transfer")]
    Transfer(String),
    /// An answer that is neither an image, a redirect, nor 401/403/404/410.
    #[error("The source {host} answered {status}")]
    Status {
        /// Host (and port) of the origin.
        host: String,
        /// Its status.
        status: u16,
    },
    /// More redirects than `resizer.source_max_redirects`.
    #[error("The source redirected more than {0} times")]
    TooManyRedirects(usize),
    /// A redirect without a usable `Location` (missing, or not an http or https URL).
    #[error("The source {0} redirected to no http or https URL")]
    BadRedirect(String),
}

impl FetchError {
    /// The HTTP status the client gets.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadUrl(_) => 400,
            Self::NotFound { .. } => 404,
            Self::Forbidden { .. } | Self::AddressRefused { .. } => 403,
            Self::TooLarge { .. } => 413,
            Self::Timeout(_) => 504,
            Self::Unreachable(_) => 502,
        }
    }

    /// The stable code the client gets, also the usage record's outcome and the fetch metric's
    /// `outcome` label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadUrl(_) => codes::BAD_SOURCE_URL,
            Self::NotFound { .. } => codes::SOURCE_NOT_FOUND,
            Self::Forbidden { .. } => codes::SOURCE_FORBIDDEN,
            Self::TooLarge { .. } => codes::SOURCE_TOO_LARGE,
            Self::Timeout(_) => codes::SOURCE_TIMEOUT,
            Self::Unreachable(_) => codes::SOURCE_UNREACHABLE,
            Self::AddressRefused { .. } => codes::SOURCE_ADDRESS_REFUSED,
        }
    }
}

/// The stable codes of source fetch failures.
pub mod codes {
    /// 400: the source URL is not an absolute http or https URL.
    pub const BAD_SOURCE_URL: &str = "bad_source_url";
    /// 404: the origin answered 404 or 410.
    pub const SOURCE_NOT_FOUND: &str = "source_not_found";
    /// 403: the origin answered 401 or 403.
    pub const SOURCE_FORBIDDEN: &str = "source_forbidden";
    /// 413: the source is larger than `resizer.max_input_bytes`.
    pub const SOURCE_TOO_LARGE: &str = "source_too_large";
    /// 504: the deadline or the connect timeout passed.
    pub const SOURCE_TIMEOUT: &str = "source_timeout";
    /// 502: DNS, connection or transfer failure, another status, too many or broken redirects.
    pub const SOURCE_UNREACHABLE: &str = "source_unreachable";
    /// 403: the source's address is refused by the address guard.
    pub const SOURCE_ADDRESS_REFUSED: &str = "source_address_refused";
    /// Every code, for catalogues and tests.
    pub const ALL: &[&str] = &[
        BAD_SOURCE_URL,
        SOURCE_NOT_FOUND,
        SOURCE_FORBIDDEN,
        SOURCE_TOO_LARGE,
        SOURCE_TIMEOUT,
        SOURCE_UNREACHABLE,
        SOURCE_ADDRESS_REFUSED,
    ];
}

//! Settings of `imgpipe resizer` (the `[resizer]` section).

use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::kernel::Limits;
use chassis::source::FetchSettings;

/// Room left in a reply record for everything but the image bytes, so a result that passed the
/// kernel's check can always be produced.
pub use schemas::topics::RECORD_ENVELOPE_BYTES as REPLY_ENVELOPE_BYTES;

/// How a resizer consumes, works and commits.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ResizerConfig {
    /// Stable identity of this resizer; its transactional id is `resizer-<instance_id>`. Reusing
    /// it after a crash lets the new process abort the dead one's open transaction at once
    /// instead of readers waiting for it to time out. Empty: a random id per process.
    pub instance_id: String,
    /// Threads of the CPU pool. 0: one per core.
    pub workers: usize,
    /// Requests decoded and queued or running on the pool at most; past this the resizer takes
    /// no more records until work drains. 0: four per worker.
    pub max_in_flight: usize,
    /// Largest encoded input accepted, in bytes.
    pub max_input_bytes: usize,
    /// Largest input, in pixels, from the image header (checked before decoding).
    pub max_pixels: u64,
    /// Largest output width or height.
    pub max_output_side: u32,
    /// Largest output, in pixels (width × height of the canvas), checked before allocating;
    /// at most `max_pixels`.
    pub max_output_pixels: u64,
    /// Most frames an animated GIF or WebP may have to be resized frame by frame (from the
    /// header, before decoding); more is refused with 422 `too_many_frames`.
    pub max_frames: u32,
    /// Most pixels over all frames of an animation (frames × canvas, from the header; and frames
    /// × output canvas); more is refused with 422 `too_many_pixels` (400 for the output side).
    pub max_animation_pixels: u64,
    /// Longest one encode may take on one core, by the kernel's cost model (AVIF at any effort,
    /// lossy WebP at effort 5 and up); a larger output is refused from the plan with 422
    /// `too_many_output_pixels`, naming the format's limit. Keep it well under
    /// `api.request_timeout`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub max_encode_time: Duration,
    /// Finished records committed in one Kafka transaction at most.
    pub transaction_max_records: usize,
    /// Longest a finished record's usage and offset wait for their transaction. Replies do not
    /// wait (they are sent as soon as ready): this trades how much work a crash makes another
    /// resizer redo, and how fresh usage is, against the cost of committing.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub transaction_max_delay: Duration,
    /// How long the resizer may hold work without committing any before it reports itself
    /// stalled (`/readyz` check `resizer_progress`, `imgpipe_consumer_stalled{consumer="resizer"}`).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub stall_after: Duration,
    /// Broker-side timeout of an open transaction; a crashed resizer's transaction blocks
    /// readers at most this long (plus the broker's abort check interval).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub transaction_timeout: Duration,
    /// Ranges (CIDR, e.g. `["127.0.0.0/8", "::1/128"]`) a source fetched by reference may be
    /// on although they are not public. Every other loopback, private, link-local (cloud
    /// metadata 169.254.169.254), CGNAT, multicast, unspecified, broadcast, documentation,
    /// benchmarking, reserved or unique-local address, and the IPv6 forms that carry such an
    /// IPv4 address, is refused with 403 `source_address_refused`, after DNS resolution and on
    /// every redirect. Empty: public addresses only. Any port is allowed.
    #[schemars(with = "Vec<String>")]
    pub source_allow_private: Vec<IpNet>,
    /// Longest wait for one connection to a source (TCP and TLS); past it 504 `source_timeout`.
    /// The whole fetch, redirects and body included, is bounded by the request's deadline.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "chassis::config::HumanDuration")]
    pub source_connect_timeout: Duration,
    /// Redirects followed at most when fetching a source (each hop checked again); one more is
    /// 502 `source_unreachable`.
    pub source_max_redirects: usize,
}

impl Default for ResizerConfig {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            instance_id: String::new(),
            workers: 0,
            max_in_flight: 0,
            max_input_bytes: limits.max_input_bytes,
            max_pixels: limits.max_pixels,
            max_output_side: limits.max_output_side,
            max_output_pixels: limits.max_output_pixels,
            max_frames: limits.max_frames,
            max_animation_pixels: limits.max_animation_pixels,
            max_encode_time: limits.max_encode_time,
            transaction_max_records: 500,
            transaction_max_delay: Duration::from_millis(100),
            transaction_timeout: Duration::from_secs(30),
            // Well past a transaction's worst case (delivery timeout plus commit), short enough
            // that an operator hears of a wedged partition within a minute.
            stall_after: Duration::from_secs(30),
            source_allow_private: Vec::new(),
            source_connect_timeout: Duration::from_secs(3),
            source_max_redirects: 5,
        }
    }
}

impl ResizerConfig {
    /// Worker threads after defaults are applied.
    pub fn effective_workers(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        }
    }

    /// In-flight bound after defaults are applied.
    pub fn effective_max_in_flight(&self) -> usize {
        if self.max_in_flight > 0 {
            self.max_in_flight
        } else {
            self.effective_workers() * 4
        }
    }

    /// The kernel's limits, for replies of at most `max_reply_bytes` encoded bytes.
    pub fn limits(&self, max_reply_bytes: usize) -> Limits {
        Limits {
            max_input_bytes: self.max_input_bytes,
            max_pixels: self.max_pixels,
            max_output_side: self.max_output_side,
            max_output_pixels: self.max_output_pixels,
            max_output_bytes: max_reply_bytes.saturating_sub(REPLY_ENVELOPE_BYTES),
            max_frames: self.max_frames,
            max_animation_pixels: self.max_animation_pixels,
            max_encode_time: self.max_encode_time,
        }
    }

    /// How the resizer fetches sources given by reference.
    pub fn fetch_settings(&self) -> FetchSettings {
        FetchSettings {
            allow_private: self.source_allow_private.clone(),
            connect_timeout: self.source_connect_timeout,
            max_redirects: self.source_max_redirects,
        }
    }

    /// Rules that span fields; one message per broken rule.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.transaction_max_records == 0 {
            errors.push("resizer.transaction_max_records must be at least 1".into());
        }
        if self.transaction_timeout < Duration::from_secs(1) {
            errors.push("resizer.transaction_timeout must be at least 1s".into());
        }
        if self.stall_after < Duration::from_secs(1) {
            errors.push("resizer.stall_after must be at least 1s".into());
        }
        if self.source_connect_timeout.is_zero() {
            errors.push("resizer.source_connect_timeout must be more than 0s".into());
        }
        self.limits(usize::MAX).validate(errors);
    }
}

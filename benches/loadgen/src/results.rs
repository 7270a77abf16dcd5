//! The numbers of a run or a sweep step, as data: what the sweep judges and the report draws
//! (both read them; neither owns them).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::histogram::us_to_ms;
use crate::stages::StageStats;

/// Latency statistics of one histogram, all in ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value.
    pub max: f64,
}

impl Percentiles {
    /// The statistics of a µs histogram; `None` when it is absent or empty.
    pub fn of(histogram: Option<&Histogram<u64>>) -> Option<Self> {
        let h = histogram.filter(|h| !h.is_empty())?;
        Some(Self {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: us_to_ms(h.value_at_quantile(0.5)),
            p90: us_to_ms(h.value_at_quantile(0.9)),
            p99: us_to_ms(h.value_at_quantile(0.99)),
            p999: us_to_ms(h.value_at_quantile(0.999)),
            max: us_to_ms(h.max()),
        })
    }
}

/// The numbers of one run, or of one sweep step.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Length, s, from the first request to the last answer.
    pub elapsed_s: f64,
    /// Requests answered or failed (not those dropped at the in-flight bound).
    pub requests: u64,
    /// Successful answers.
    pub ok: u64,
    /// `requests − ok`.
    pub errors: u64,
    /// Open loop: requests not started because the in-flight bound was reached.
    pub dropped: u64,
    /// `requests / elapsed_s`.
    pub req_per_s: f64,
    /// `ok / elapsed_s`.
    pub ok_per_s: f64,
    /// End-to-end latency of every request, ms.
    pub latency_ms: Option<Percentiles>,
    /// decode + resize + encode from `Server-Timing`, ms.
    pub work_ms: Option<Percentiles>,
    /// End to end − resize work, ms: HTTP, auth, Kafka hand-offs, queueing, reply routing.
    pub overhead_ms: Option<Percentiles>,
    /// Requests by outcome: `ok`, `<status> <problem code>`, `transport: <kind>`, ….
    pub outcomes: BTreeMap<String, u64>,
    /// Every `Server-Timing` stage, in the order first seen.
    pub stages: Vec<StageStats>,
    /// `Server-Timing` entries not kept (too many distinct names).
    pub stages_ignored: u64,
}

/// One second of a run: what was offered and answered in it, and its latency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Second {
    /// End of this second, s since the run started.
    pub t_s: f64,
    /// Sweep step (from 1) this second belongs to.
    pub step: Option<u32>,
    /// Requests due in this second (started, or dropped at the in-flight bound).
    pub offered: u64,
    /// Successful answers received in it.
    pub ok: u64,
    /// Failed requests that ended in it.
    pub errors: u64,
    /// Requests dropped at the in-flight bound.
    pub dropped: u64,
    /// Requests in flight at its end.
    pub in_flight: usize,
    /// Median latency of the requests that ended in it, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile of the same, ms.
    pub p99_ms: Option<f64>,
}

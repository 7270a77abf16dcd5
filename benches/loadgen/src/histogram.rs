//! Latency histograms in µs (1 µs to 10 min, 3 significant digits) and the µs → ms step every
//! printed number takes.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency kept, µs (10 min); longer values are clamped to it.
const MAX_US: u64 = 600_000_000;

/// An empty latency histogram in µs: 1 µs to 10 min, 3 significant digits (about 170 KiB).
pub fn new_histogram() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_US, 3).ok()
}

/// Records `value` in µs, clamped to [1 µs, 10 min].
pub fn record_us(histogram: &mut Histogram<u64>, value: Duration) {
    let us = u64::try_from(value.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_US);
    histogram.saturating_record(us);
}

/// Records `value` µs into `slot`, creating the histogram on first use.
pub fn record_into(slot: &mut Option<Histogram<u64>>, value: Duration) {
    if slot.is_none() {
        *slot = new_histogram();
    }
    if let Some(histogram) = slot {
        record_us(histogram, value);
    }
}

/// Microseconds as milliseconds.
pub fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

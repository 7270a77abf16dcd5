//! What a phase counts: every answer into the run's totals and into the current second, and
//! the seconds into a bounded time line; [`summarize`] turns totals into a [`Summary`].

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::histogram::{record_into, us_to_ms};
use crate::results::{Percentiles, Second, Summary};
use crate::stages::{self, Stage, StageTable};

/// One answered (or failed) request.
pub struct Sample {
    pub latency: Duration,
    /// `ok`, an HTTP status with the problem's code, or a transport error kind.
    pub outcome: String,
    /// The answer's `Server-Timing` entries, on success (empty otherwise).
    pub stages: Vec<Stage>,
}

/// Everything measured over one run (or one sweep step).
#[derive(Default)]
pub struct Totals {
    pub latency: Option<Histogram<u64>>,
    pub overhead: Option<Histogram<u64>>,
    pub work: Option<Histogram<u64>>,
    pub stages: StageTable,
    pub outcomes: BTreeMap<String, u64>,
    pub dropped: u64,
}

impl Totals {
    pub fn record(&mut self, sample: &Sample) {
        record_into(&mut self.latency, sample.latency);
        self.stages.record(&sample.stages);
        if let Some(work) = stages::resize_work(&sample.stages) {
            record_into(&mut self.work, work);
            record_into(&mut self.overhead, sample.latency.saturating_sub(work));
        }
        *self.outcomes.entry(sample.outcome.clone()).or_default() += 1;
    }

    pub fn count(&self) -> u64 {
        self.outcomes.values().sum()
    }

    pub fn ok(&self) -> u64 {
        self.outcomes.get("ok").copied().unwrap_or(0)
    }
}

/// The current second: counts and a latency histogram that is reset, not reallocated, at
/// every tick.
#[derive(Default)]
pub struct Window {
    pub latency: Option<Histogram<u64>>,
    pub offered: u64,
    pub dropped: u64,
    pub ok: u64,
    pub errors: u64,
}

impl Window {
    pub fn record(&mut self, sample: &Sample) {
        record_into(&mut self.latency, sample.latency);
        if sample.outcome == "ok" {
            self.ok += 1;
        } else {
            self.errors += 1;
        }
    }

    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        self.latency
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| us_to_ms(h.value_at_quantile(q)))
    }

    /// This second as a record ending `t_s` after the run started; then starts the next one.
    pub fn take(&mut self, t_s: f64, step: Option<u32>, in_flight: usize) -> Second {
        let second = Second {
            t_s,
            step,
            offered: self.offered,
            ok: self.ok,
            errors: self.errors,
            dropped: self.dropped,
            in_flight,
            p50_ms: self.quantile_ms(0.5),
            p99_ms: self.quantile_ms(0.99),
        };
        if let Some(histogram) = &mut self.latency {
            histogram.reset();
        }
        (self.offered, self.dropped, self.ok, self.errors) = (0, 0, 0, 0);
        second
    }
}

/// Seconds kept at most (one day), so memory stays bounded however long the run; later
/// seconds are counted in `Timeline::not_kept`.
const MAX_SECONDS: usize = 86_400;

/// One record per second of the whole run, all sweep steps included.
#[derive(Default)]
pub struct Timeline {
    pub seconds: Vec<Second>,
    pub not_kept: u64,
}

impl Timeline {
    pub fn push(&mut self, second: Second) {
        if self.seconds.len() < MAX_SECONDS {
            self.seconds.push(second);
        } else {
            self.not_kept += 1;
        }
    }
}

/// The numbers of a run (or step) that lasted `elapsed`.
pub fn summarize(totals: &Totals, elapsed: Duration) -> Summary {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let requests = totals.count();
    let ok = totals.ok();
    Summary {
        elapsed_s: elapsed.as_secs_f64(),
        requests,
        ok,
        errors: requests - ok,
        dropped: totals.dropped,
        req_per_s: requests as f64 / secs,
        ok_per_s: ok as f64 / secs,
        latency_ms: Percentiles::of(totals.latency.as_ref()),
        work_ms: Percentiles::of(totals.work.as_ref()),
        overhead_ms: Percentiles::of(totals.overhead.as_ref()),
        outcomes: totals.outcomes.clone(),
        stages: totals.stages.stats(),
        stages_ignored: totals.stages.ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_becomes_one_second_and_starts_afresh() {
        let sample = |ms: u64, outcome: &str| Sample {
            latency: Duration::from_millis(ms),
            outcome: outcome.to_owned(),
            stages: Vec::new(),
        };
        let mut window = Window {
            offered: 4,
            ..Window::default()
        };
        for (ms, outcome) in [(10, "ok"), (20, "ok"), (30, "503 overloaded")] {
            window.record(&sample(ms, outcome));
        }
        let second = window.take(1.0, Some(2), 1);
        assert_eq!((second.offered, second.ok, second.errors), (4, 2, 1));
        assert_eq!(second.step, Some(2));
        assert!((second.p50_ms.unwrap() - 20.0).abs() < 0.1, "{second:?}");
        assert!((second.p99_ms.unwrap() - 30.0).abs() < 0.1, "{second:?}");
        let next = window.take(2.0, Some(2), 0);
        assert_eq!((next.offered, next.ok, next.errors), (0, 0, 0));
        assert_eq!(next.p50_ms, None);
    }

    #[test]
    fn totals_split_work_from_overhead_and_keep_stages() {
        let mut totals = Totals::default();
        totals.record(&Sample {
            latency: Duration::from_millis(20),
            outcome: "ok".into(),
            stages: stages::parse_server_timing(
                "queue;dur=1, decode;dur=5, resize;dur=2, encode;dur=3, total;dur=12",
            ),
        });
        let summary = summarize(&totals, Duration::from_secs(1));
        let work = summary.work_ms.unwrap();
        let overhead = summary.overhead_ms.unwrap();
        assert!((work.p50 - 10.0).abs() < 0.05, "{work:?}");
        assert!((overhead.p50 - 10.0).abs() < 0.05, "{overhead:?}");
        let names: Vec<&str> = summary.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["queue", "decode", "resize", "encode", "total"]);
    }
}

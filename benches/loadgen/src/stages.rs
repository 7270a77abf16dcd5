//! `Server-Timing` stages: parses every `name;dur=ms` entry of an answer's header and keeps one
//! latency histogram per stage name, in the order the names were first seen, so new stages the
//! api adds show up in the summary without a change here.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::histogram::{new_histogram, record_us, us_to_ms};

/// The stages that are the resize work itself; everything else in an answer's latency is the
/// pipeline's own overhead (HTTP, auth, Kafka hand-offs, queueing, reply routing).
pub const WORK_STAGES: [&str; 3] = ["decode", "resize", "encode"];

/// Distinct stage names kept at most: a server that sent a new name in every answer must not
/// grow the load generator without bound. Entries past it are counted in `StageTable::ignored`.
const MAX_STAGES: usize = 32;

/// One `name;dur=ms` entry of a `Server-Timing` header.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// Metric name as sent (`queue`, `decode`, …).
    pub name: String,
    /// The `dur` parameter (sent in milliseconds).
    pub dur: Duration,
}

/// Every entry of a `Server-Timing` value that has a name and a finite, non-negative `dur`, in
/// header order, e.g. `queue;dur=0.4, decode;dur=5.1;desc="jpeg"`. Entries without `dur`, with an
/// unparsable or negative one, or without a name are skipped: the header is advisory, and one odd
/// entry must not hide the others.
pub fn parse_server_timing(header: &str) -> Vec<Stage> {
    split_outside_quotes(header, ',')
        .into_iter()
        .filter_map(|entry| {
            let mut parts = split_outside_quotes(entry, ';').into_iter();
            let name = parts.next()?.trim();
            let is_token = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_graphic() && !"\"(),/:;<=>?@[\\]{}".contains(c));
            if !is_token {
                return None;
            }
            let millis = parts.find_map(|param| {
                let (key, value) = param.split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case("dur")
                    .then(|| value.trim().trim_matches('"').parse::<f64>().ok())?
            })?;
            // Rejects negative, NaN and absurdly large values (no panic on overflow).
            let dur = Duration::try_from_secs_f64(millis / 1000.0).ok()?;
            Some(Stage {
                name: name.to_owned(),
                dur,
            })
        })
        .collect()
}

/// Splits on `separator` except inside double quotes: a `desc="a, b"` parameter must not cut
/// its entry in two.
fn split_outside_quotes(text: &str, separator: char) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                pieces.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    pieces.push(&text[start..]);
    pieces
}

/// decode + resize + encode of one answer; `None` when it reported none of them (then the answer
/// says nothing about the split, and counting it as zero work would skew the overhead).
pub fn resize_work(stages: &[Stage]) -> Option<Duration> {
    stages
        .iter()
        .filter(|stage| WORK_STAGES.contains(&stage.name.as_str()))
        .map(|stage| stage.dur)
        .reduce(|a, b| a + b)
}

/// Per-stage latency histograms (µs), in first-seen order; at most `MAX_STAGES` names.
#[derive(Default)]
pub struct StageTable {
    stages: Vec<(String, Histogram<u64>)>,
    /// Entries dropped because `MAX_STAGES` names were already kept.
    pub ignored: u64,
}

impl StageTable {
    /// Records each entry under its name, adding names in the order they first appear.
    pub fn record(&mut self, entries: &[Stage]) {
        for entry in entries {
            let index = match self.stages.iter().position(|(name, _)| *name == entry.name) {
                Some(index) => index,
                None if self.stages.len() < MAX_STAGES => match new_histogram() {
                    Some(histogram) => {
                        self.stages.push((entry.name.clone(), histogram));
                        self.stages.len() - 1
                    }
                    None => continue,
                },
                None => {
                    self.ignored += 1;
                    continue;
                }
            };
            record_us(&mut self.stages[index].1, entry.dur);
        }
    }

    /// Mean, p50 and p99 of every stage, in first-seen order.
    pub fn stats(&self) -> Vec<StageStats> {
        self.stages
            .iter()
            .map(|(name, histogram)| StageStats {
                name: name.clone(),
                count: histogram.len(),
                mean_ms: histogram.mean() / 1000.0,
                p50_ms: us_to_ms(histogram.value_at_quantile(0.5)),
                p99_ms: us_to_ms(histogram.value_at_quantile(0.99)),
            })
            .collect()
    }
}

/// One row of the stage table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageStats {
    /// Stage name from `Server-Timing`.
    pub name: String,
    /// Answers that reported this stage.
    pub count: u64,
    /// Mean duration, ms.
    pub mean_ms: f64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(stages: &[Stage]) -> Vec<&str> {
        stages.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn parses_every_named_stage_in_order() {
        let stages = parse_server_timing(
            "queue;dur=0.123, accept;dur=1, decode;dur=5.1, resize;dur=2.0, encode;dur=3.3, handoff;dur=0.5, total;dur=14.2",
        );
        assert_eq!(
            names(&stages),
            [
                "queue", "accept", "decode", "resize", "encode", "handoff", "total"
            ]
        );
        assert_eq!(stages[0].dur.as_micros(), 123);
        assert_eq!(stages[6].dur.as_micros(), 14_200);
    }

    #[test]
    fn skips_malformed_entries_and_keeps_the_rest() {
        let stages = parse_server_timing(
            r#"queue;dur=abc, ;dur=3, miss, decode;desc="a, b;dur=9";dur=2, neg;dur=-1, nan;dur=NaN, huge;dur=1e300, "q";dur=1, resize ; DUR = 4 ,,"#,
        );
        assert_eq!(names(&stages), ["decode", "resize"]);
        assert_eq!(stages[0].dur.as_micros(), 2_000);
        assert_eq!(stages[1].dur.as_micros(), 4_000);
        assert!(parse_server_timing("").is_empty());
    }

    #[test]
    fn resize_work_sums_the_three_stages_only() {
        let stages = parse_server_timing(
            "queue;dur=0.400, decode;dur=5.100, resize;dur=2.000, encode;dur=3.300, total;dur=14.2",
        );
        assert_eq!(resize_work(&stages).map(|d| d.as_micros()), Some(10_400));
        assert_eq!(resize_work(&parse_server_timing("total;dur=3")), None);
    }

    #[test]
    fn table_keeps_first_seen_order_and_bounds_names() {
        let mut table = StageTable::default();
        table.record(&parse_server_timing("b;dur=1, a;dur=2"));
        table.record(&parse_server_timing("c;dur=4, a;dur=4"));
        let stats = table.stats();
        assert_eq!(
            stats.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["b", "a", "c"]
        );
        assert_eq!(stats[1].count, 2);
        assert!(
            (stats[1].mean_ms - 3.0).abs() < 0.01,
            "{}",
            stats[1].mean_ms
        );

        let header = (0..MAX_STAGES + 5)
            .map(|i| format!("s{i};dur=1"))
            .collect::<Vec<_>>()
            .join(",");
        let mut table = StageTable::default();
        table.record(&parse_server_timing(&header));
        assert_eq!(table.stats().len(), MAX_STAGES);
        assert_eq!(table.ignored, 5);
    }
}

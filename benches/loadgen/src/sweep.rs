//! The open-loop sweep's rules: the rate of each step, whether a step held or tipped over, and
//! which step is the capacity point. Pure functions, so the decisions are tested without load.

use std::time::Duration;

use serde::Serialize;

use crate::results::Summary;

/// A step holds only while its achieved ok/s stays at or above this share of the offered rate:
/// below it, the service (or the in-flight bound) is shedding load rather than serving it.
pub const MIN_ACHIEVED_SHARE: f64 = 0.9;

/// Pause between steps, so queues left by one step drain before the next is measured.
pub const STEP_PAUSE: Duration = Duration::from_secs(2);

/// Sweep settings, as given on the command line.
#[derive(Debug, Clone, Serialize)]
pub struct SweepSettings {
    /// Offered rate of the first step, requests/s.
    pub start_rate: f64,
    /// Each step offers this many times the previous one (> 1).
    pub factor: f64,
    /// Steps at most.
    pub max_steps: u32,
    /// Length of each step, s.
    pub step_duration_s: f64,
    /// Pause between steps, s.
    pub pause_s: f64,
    /// A step tips over when its p99 is above this, ms.
    pub p99_limit_ms: f64,
    /// A step tips over when errors / answered requests is above this (0.01 = 1%).
    pub error_limit: f64,
    /// A step tips over when ok/s is below this share of the offered rate.
    pub min_achieved_share: f64,
}

/// Offered rate of step `index` (0-based), requests/s: `start × factor^index`.
pub fn step_rate(start: f64, factor: f64, index: u32) -> f64 {
    start * factor.powi(i32::try_from(index).unwrap_or(i32::MAX))
}

/// What the tipping-point rule looks at in one step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepMeasure {
    /// Offered rate, requests/s.
    pub offered_per_s: f64,
    /// Achieved successful answers per second.
    pub ok_per_s: f64,
    /// End-to-end p99 of the answered requests, ms; `None` when none was answered.
    pub p99_ms: Option<f64>,
    /// Answered requests (ok and errors; requests dropped at the in-flight bound are not).
    pub answered: u64,
    /// Answered requests that were not ok.
    pub errors: u64,
}

impl StepMeasure {
    /// The measure of a step offered at `offered_per_s` that produced `summary`.
    pub fn of(offered_per_s: f64, summary: &Summary) -> Self {
        Self {
            offered_per_s,
            ok_per_s: summary.ok_per_s,
            p99_ms: summary.latency_ms.as_ref().map(|l| l.p99),
            answered: summary.requests,
            errors: summary.errors,
        }
    }
}

/// Whether a step held, and if not, every limit it crossed (human-readable).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// True when no limit was crossed.
    pub held: bool,
    /// One line per crossed limit, e.g. `p99 61.2 ms > 50.0 ms`.
    pub reasons: Vec<String>,
}

impl std::fmt::Display for Verdict {
    /// `held`, or `tipped over: ` and the crossed limits joined by `; `.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.held {
            f.write_str("held")
        } else {
            write!(f, "tipped over: {}", self.reasons.join("; "))
        }
    }
}

/// The tipping-point rule: a step tips over when its p99 is above `settings.p99_limit_ms`, OR
/// its error ratio (errors / answered) is above `settings.error_limit`, OR its ok/s is below
/// `settings.min_achieved_share` of the offered rate. A step with no answer at all tips over.
pub fn judge(step: &StepMeasure, settings: &SweepSettings) -> Verdict {
    let mut reasons = Vec::new();
    match step.p99_ms {
        Some(p99) if p99 > settings.p99_limit_ms => {
            reasons.push(format!("p99 {p99:.1} ms > {:.1} ms", settings.p99_limit_ms))
        }
        Some(_) => {}
        None => reasons.push("no request was answered".to_owned()),
    }
    if step.answered > 0 {
        let ratio = step.errors as f64 / step.answered as f64;
        if ratio > settings.error_limit {
            reasons.push(format!(
                "errors {:.2}% > {:.2}%",
                ratio * 100.0,
                settings.error_limit * 100.0
            ));
        }
    }
    let floor = step.offered_per_s * settings.min_achieved_share;
    if step.ok_per_s < floor {
        reasons.push(format!(
            "{:.1} ok/s < {:.0}% of {:.1} offered",
            step.ok_per_s,
            settings.min_achieved_share * 100.0,
            step.offered_per_s
        ));
    }
    Verdict {
        held: reasons.is_empty(),
        reasons,
    }
}

/// The capacity point: index of the step with the highest offered rate among those that held;
/// `None` when no step held.
pub fn capacity(steps: &[(f64, &Verdict)]) -> Option<usize> {
    steps
        .iter()
        .enumerate()
        .filter(|(_, (_, verdict))| verdict.held)
        .max_by(|(_, (a, _)), (_, (b, _))| a.total_cmp(b))
        .map(|(index, _)| index)
}

/// One measured step of a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    /// Step number, from 1.
    pub step: u32,
    /// Offered rate, requests/s.
    pub offered_per_s: f64,
    /// What the step measured.
    pub summary: Summary,
    /// Whether it held.
    pub verdict: Verdict,
}

impl StepResult {
    /// The step's one-line account, e.g.
    /// `step  3   156.2 req/s offered   155.9 ok/s  p50 12.3 ms  p99 44.0 ms  errors 0.00%  held`.
    pub fn line(&self) -> String {
        let latency = |pick: fn(&crate::results::Percentiles) -> f64| {
            self.summary
                .latency_ms
                .as_ref()
                .map_or_else(|| "-".to_owned(), |l| format!("{:.1}", pick(l)))
        };
        let error_share = if self.summary.requests == 0 {
            0.0
        } else {
            self.summary.errors as f64 / self.summary.requests as f64
        };
        let verdict = &self.verdict;
        format!(
            "step {:>2} {:>9.1} req/s offered {:>9.1} ok/s  p50 {:>7} ms  p99 {:>7} ms  errors {:>5.2}%  {verdict}",
            self.step,
            self.offered_per_s,
            self.summary.ok_per_s,
            latency(|l| l.p50),
            latency(|l| l.p99),
            error_share * 100.0,
        )
    }
}

/// A whole sweep: its settings, every step run, and the capacity point.
#[derive(Debug, Clone, Serialize)]
pub struct SweepResults {
    /// As given.
    pub settings: SweepSettings,
    /// Steps in the order run; the last one tipped over unless `max_steps` ran out first.
    pub steps: Vec<StepResult>,
    /// Step number (from 1) of the capacity point: the highest offered rate that held.
    pub capacity_step: Option<u32>,
    /// True when the sweep ended at a tipping point (false: `max_steps` ran out first).
    pub tipped: bool,
}

impl SweepResults {
    /// Results of `steps`, with the capacity point found by `capacity`.
    pub fn new(settings: SweepSettings, steps: Vec<StepResult>) -> Self {
        let judged: Vec<(f64, &Verdict)> = steps
            .iter()
            .map(|step| (step.offered_per_s, &step.verdict))
            .collect();
        let capacity_step = capacity(&judged).map(|index| steps[index].step);
        let tipped = steps.last().is_some_and(|step| !step.verdict.held);
        Self {
            settings,
            steps,
            capacity_step,
            tipped,
        }
    }

    /// The capacity point's step, if one held.
    pub fn capacity(&self) -> Option<&StepResult> {
        let step = self.capacity_step?;
        self.steps.iter().find(|s| s.step == step)
    }

    /// The closing line: the capacity point, or why there is none.
    pub fn capacity_line(&self) -> String {
        let Some(step) = self.capacity() else {
            return format!(
                "capacity   none: the first step ({:.1} req/s) already tipped over; start the sweep lower",
                self.settings.start_rate
            );
        };
        let latency = |pick: fn(&crate::results::Percentiles) -> f64| {
            step.summary
                .latency_ms
                .as_ref()
                .map_or_else(|| "-".to_owned(), |l| format!("{:.1}", pick(l)))
        };
        let why = match self.steps.last() {
            Some(last) if self.tipped => format!("step {} tipped over", last.step),
            _ => format!(
                "no tipping point within {} steps: the capacity is at least this",
                self.steps.len()
            ),
        };
        format!(
            "capacity   step {}: {:.1} req/s offered, {:.1} ok/s achieved, p50 {} ms, p99 {} ms ({why})",
            step.step,
            step.offered_per_s,
            step.summary.ok_per_s,
            latency(|l| l.p50),
            latency(|l| l.p99),
        )
    }
}

/// Parses `--error-limit`: a percentage (`1%`, `0.5%`) or a fraction (`0.01`), in [0, 1].
pub fn parse_ratio(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let (number, scale) = match text.strip_suffix('%') {
        Some(number) => (number.trim(), 100.0),
        None => (text, 1.0),
    };
    let ratio = number
        .parse::<f64>()
        .map_err(|_| format!("`{text}` is not a percentage (1%) or a fraction (0.01)"))?
        / scale;
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!("`{text}` is outside 0%..100%"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SweepSettings {
        SweepSettings {
            start_rate: 100.0,
            factor: 1.25,
            max_steps: 20,
            step_duration_s: 10.0,
            pause_s: 2.0,
            p99_limit_ms: 50.0,
            error_limit: 0.01,
            min_achieved_share: MIN_ACHIEVED_SHARE,
        }
    }

    fn step(
        offered: f64,
        ok_per_s: f64,
        p99_ms: Option<f64>,
        answered: u64,
        errors: u64,
    ) -> StepMeasure {
        StepMeasure {
            offered_per_s: offered,
            ok_per_s,
            p99_ms,
            answered,
            errors,
        }
    }

    #[test]
    fn a_step_within_every_limit_holds() {
        let verdict = judge(&step(100.0, 99.5, Some(49.9), 1000, 10), &settings());
        assert!(verdict.held, "{verdict:?}");
        // Exactly at each limit still holds: the limits are "above", not "at".
        let verdict = judge(&step(100.0, 90.0, Some(50.0), 1000, 10), &settings());
        assert!(verdict.held, "{verdict:?}");
    }

    #[test]
    fn each_limit_alone_tips_the_step() {
        let p99 = judge(&step(100.0, 100.0, Some(50.1), 1000, 0), &settings());
        assert!(!p99.held);
        assert_eq!(p99.reasons, ["p99 50.1 ms > 50.0 ms"]);

        let errors = judge(&step(100.0, 100.0, Some(10.0), 1000, 11), &settings());
        assert!(!errors.held);
        assert_eq!(errors.reasons, ["errors 1.10% > 1.00%"]);

        let shortfall = judge(&step(100.0, 89.9, Some(10.0), 900, 0), &settings());
        assert!(!shortfall.held);
        assert_eq!(shortfall.reasons, ["89.9 ok/s < 90% of 100.0 offered"]);
    }

    #[test]
    fn every_crossed_limit_is_named_and_silence_tips() {
        let all = judge(&step(200.0, 50.0, Some(900.0), 600, 300), &settings());
        assert!(!all.held);
        assert_eq!(all.reasons.len(), 3, "{:?}", all.reasons);

        let silent = judge(&step(200.0, 0.0, None, 0, 0), &settings());
        assert!(!silent.held);
        assert!(
            silent.reasons[0].contains("no request"),
            "{:?}",
            silent.reasons
        );
    }

    #[test]
    fn capacity_is_the_highest_offered_step_that_held() {
        let held = Verdict {
            held: true,
            reasons: vec![],
        };
        let tipped = Verdict {
            held: false,
            reasons: vec!["p99".into()],
        };
        assert_eq!(
            capacity(&[(100.0, &held), (125.0, &held), (156.0, &tipped)]),
            Some(1)
        );
        // A noisy step that tipped below a later one that held does not hide the later one.
        assert_eq!(
            capacity(&[(100.0, &held), (125.0, &tipped), (156.0, &held)]),
            Some(2)
        );
        assert_eq!(capacity(&[(100.0, &tipped)]), None);
        assert_eq!(capacity(&[]), None);
    }

    #[test]
    fn rates_rise_geometrically() {
        assert!((step_rate(100.0, 1.25, 0) - 100.0).abs() < 1e-9);
        assert!((step_rate(100.0, 1.25, 2) - 156.25).abs() < 1e-9);
    }

    #[test]
    fn error_limit_accepts_percent_or_fraction() {
        assert_eq!(parse_ratio("1%"), Ok(0.01));
        assert_eq!(parse_ratio("0.5 %"), Ok(0.005));
        assert_eq!(parse_ratio("0.02"), Ok(0.02));
        assert!(parse_ratio("5").is_err());
        assert!(parse_ratio("-1%").is_err());
        assert!(parse_ratio("lots").is_err());
    }
}

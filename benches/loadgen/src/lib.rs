//! `imgpipe loadgen`: drives the api at a fixed rate (open loop) or a fixed concurrency (closed
//! loop) with a set of images, shows live progress once a second, and prints latency percentiles,
//! throughput and errors by code. From each answer's `Server-Timing` it keeps every stage's
//! latency and separates the resize work (decode + resize + encode) from the pipeline's own
//! overhead (everything else: HTTP, auth, Kafka hand-offs, queueing, reply routing).
//!
//! `--sweep` runs open-loop steps at rising rates until the tipping point and names the capacity
//! point; `--report DIR` writes the run as an HTML page with charts, SVGs and a JSON file.
//!
//! In-flight requests are bounded in both modes: an open-loop run that the service cannot keep up
//! with counts the requests it could not start as `dropped` rather than piling them up.

mod report;
mod stages;
mod sweep;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;

use report::{Percentiles, RunResults, Second, Summary};
use stages::{Stage, StageTable};
use sweep::{StepMeasure, SweepSettings};

/// Load generator options.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Base URL of the api.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key (Bearer).
    #[arg(long, env = "IMGPIPE_API_KEY", hide_env_values = true)]
    pub key: String,
    /// Folder of JPEG/PNG/WebP/GIF images to send, round robin.
    #[arg(long)]
    pub images: PathBuf,
    /// Query string of every request.
    #[arg(long, default_value = "width=512&height=512&format=jpeg&quality=80")]
    pub query: String,
    /// Requests per second (open loop). Without it, runs closed loop at --concurrency.
    /// With --sweep, the first step's rate.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Requests in flight at most (closed loop: exactly this many).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// How long to run (with --sweep: each step).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Stop after this many requests, if sooner.
    #[arg(long, conflicts_with = "sweep")]
    pub requests: Option<u64>,
    /// Per-request client timeout.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Open-loop sweep: steps of --duration at rising rates from --rate until the tipping point
    /// (p99 above --p99-limit, errors above --error-limit, or ok/s under 90% of offered), then
    /// names the capacity point. Raise --concurrency so the in-flight bound is not the limit.
    #[arg(long, requires = "rate")]
    pub sweep: bool,
    /// Sweep: each step offers this many times the previous step's rate.
    #[arg(long, default_value_t = 1.25)]
    pub sweep_factor: f64,
    /// Sweep: a step whose end-to-end p99 is above this has tipped over.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub p99_limit: Duration,
    /// Sweep: a step whose share of errors is above this has tipped over (`1%` or `0.01`).
    #[arg(long, default_value = "1%", value_parser = sweep::parse_ratio)]
    pub error_limit: f64,
    /// Sweep: steps at most.
    #[arg(long, default_value_t = 20)]
    pub sweep_max_steps: u32,
    /// Also write the run to this folder: index.html (self-contained), timeseries.svg,
    /// curve.svg (sweeps only) and results.json (every number).
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
}

/// Why a load run could not start, or its report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// The image folder could not be read or holds no images.
    #[error("reading images from {path}: {reason}")]
    Images {
        /// Folder.
        path: String,
        /// Why.
        reason: String,
    },
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// The `--report` folder or one of its files could not be written. After a run, its results
    /// were printed before this error.
    #[error("writing the report {path}: {reason}")]
    Report {
        /// The folder or file that failed.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Largest latency kept, µs (10 min); longer values are clamped to it.
const MAX_US: u64 = 600_000_000;

/// An empty latency histogram in µs: 1 µs to 10 min, 3 significant digits (about 170 KiB).
fn new_histogram() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_US, 3).ok()
}

/// Records `value` in µs, clamped to [1 µs, 10 min].
fn record_us(histogram: &mut Histogram<u64>, value: Duration) {
    let us = u64::try_from(value.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_US);
    histogram.saturating_record(us);
}

/// Records `value` µs into `slot`, creating the histogram on first use.
fn record_into(slot: &mut Option<Histogram<u64>>, value: Duration) {
    if slot.is_none() {
        *slot = new_histogram();
    }
    if let Some(histogram) = slot {
        record_us(histogram, value);
    }
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// One answered (or failed) request.
struct Sample {
    latency: Duration,
    /// `ok`, an HTTP status with the problem's code, or a transport error kind.
    outcome: String,
    /// The answer's `Server-Timing` entries, on success (empty otherwise).
    stages: Vec<Stage>,
}

/// Everything measured over one run (or one sweep step).
#[derive(Default)]
struct Totals {
    latency: Option<Histogram<u64>>,
    overhead: Option<Histogram<u64>>,
    work: Option<Histogram<u64>>,
    stages: StageTable,
    outcomes: BTreeMap<String, u64>,
    dropped: u64,
}

impl Totals {
    fn record(&mut self, sample: &Sample) {
        record_into(&mut self.latency, sample.latency);
        self.stages.record(&sample.stages);
        if let Some(work) = stages::resize_work(&sample.stages) {
            record_into(&mut self.work, work);
            record_into(&mut self.overhead, sample.latency.saturating_sub(work));
        }
        *self.outcomes.entry(sample.outcome.clone()).or_default() += 1;
    }

    fn count(&self) -> u64 {
        self.outcomes.values().sum()
    }

    fn ok(&self) -> u64 {
        self.outcomes.get("ok").copied().unwrap_or(0)
    }
}

/// The current second: counts and a latency histogram that is reset, not reallocated, at
/// every tick.
#[derive(Default)]
struct Window {
    latency: Option<Histogram<u64>>,
    offered: u64,
    dropped: u64,
    ok: u64,
    errors: u64,
}

impl Window {
    fn record(&mut self, sample: &Sample) {
        record_into(&mut self.latency, sample.latency);
        if sample.outcome == "ok" {
            self.ok += 1;
        } else {
            self.errors += 1;
        }
    }

    fn quantile_ms(&self, q: f64) -> Option<f64> {
        self.latency
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| us_to_ms(h.value_at_quantile(q)))
    }

    /// This second as a record ending `t_s` after the run started; then starts the next one.
    fn take(&mut self, t_s: f64, step: Option<u32>, in_flight: usize) -> Second {
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
struct Timeline {
    seconds: Vec<Second>,
    not_kept: u64,
}

impl Timeline {
    fn push(&mut self, second: Second) {
        if self.seconds.len() < MAX_SECONDS {
            self.seconds.push(second);
        } else {
            self.not_kept += 1;
        }
    }
}

/// What every request needs, built once for the whole run (every step of a sweep).
struct Target {
    client: reqwest::Client,
    url: String,
    key: String,
    images: Vec<Vec<u8>>,
    concurrency: usize,
}

impl Target {
    /// The body of the `n`-th request: the images round robin.
    fn body(&self, n: u64) -> Vec<u8> {
        self.images[usize::try_from(n).unwrap_or(0) % self.images.len()].clone()
    }
}

/// One stretch of load: open loop at `rate` requests/s, or closed loop at the target's
/// concurrency when `rate` is `None`.
struct Phase {
    rate: Option<f64>,
    duration: Duration,
    /// Requests at most.
    limit: u64,
    /// Sweep step (1-based), for the time series.
    step: Option<u32>,
}

fn load_images(dir: &Path) -> Result<Vec<Vec<u8>>, LoadgenError> {
    let error = |reason: String| LoadgenError::Images {
        path: dir.display().to_string(),
        reason,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| error(e.to_string()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                matches!(
                    e.to_ascii_lowercase().as_str(),
                    "jpg" | "jpeg" | "png" | "webp" | "gif"
                )
            })
        })
        .collect();
    paths.sort();
    let images: Vec<Vec<u8>> = paths
        .iter()
        .map(std::fs::read)
        .collect::<Result<_, _>>()
        .map_err(|e| error(e.to_string()))?;
    if images.is_empty() {
        return Err(error("no .jpg/.png/.webp/.gif files".into()));
    }
    Ok(images)
}

/// Checks the options; the sweep's settings when `--sweep` is on.
fn validate(args: &LoadgenArgs) -> Result<Option<SweepSettings>, LoadgenError> {
    let bad = |message: &str| Err(LoadgenError::Options(message.to_owned()));
    if args.concurrency == 0 {
        return bad("--concurrency must be at least 1");
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return bad("--rate must be a positive number");
    }
    if !args.sweep {
        return Ok(None);
    }
    let Some(start_rate) = args.rate else {
        return bad("--sweep needs --rate (the first step's rate)");
    };
    if !(args.sweep_factor > 1.0 && args.sweep_factor.is_finite()) {
        return bad("--sweep-factor must be above 1");
    }
    if args.sweep_max_steps == 0 {
        return bad("--sweep-max-steps must be at least 1");
    }
    if args.requests.is_some() {
        return bad("--requests does not combine with --sweep (each step runs for --duration)");
    }
    Ok(Some(SweepSettings {
        start_rate,
        factor: args.sweep_factor,
        max_steps: args.sweep_max_steps,
        step_duration_s: args.duration.as_secs_f64(),
        pause_s: sweep::STEP_PAUSE.as_secs_f64(),
        p99_limit_ms: args.p99_limit.as_secs_f64() * 1000.0,
        error_limit: args.error_limit,
        min_achieved_share: sweep::MIN_ACHIEVED_SHARE,
    }))
}

/// Runs the load (one run, or a sweep), prints the results, then writes the `--report` folder
/// if asked. Errors: bad options, unreadable images, an HTTP client that cannot be built, and a
/// report folder that cannot be created (before any load) or written (after the results were
/// printed).
pub async fn run(args: LoadgenArgs) -> Result<(), LoadgenError> {
    let sweep_settings = validate(&args)?;
    let images = load_images(&args.images)?;
    if let Some(dir) = &args.report {
        // Made before the run, so a bad path fails at once rather than after a long sweep.
        std::fs::create_dir_all(dir).map_err(|e| LoadgenError::Report {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let url = format!(
        "{}/v1/resize?{}",
        args.url.trim_end_matches('/'),
        args.query
    );
    let mode = match (&sweep_settings, args.rate) {
        (Some(s), _) => format!(
            "open-loop sweep from {} req/s, ×{} per step, at most {} in flight",
            s.start_rate, s.factor, args.concurrency
        ),
        (None, Some(rate)) => format!(
            "open loop, {rate} req/s, at most {} in flight",
            args.concurrency
        ),
        (None, None) => format!("closed loop, {} concurrent", args.concurrency),
    };
    eprintln!(
        "loadgen: {} images, {mode}, {:?}, {url}",
        images.len(),
        args.duration
    );
    let parameters = report::Parameters::of(&args, images.len(), &mode, sweep_settings.clone());
    let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let target = Target {
        client,
        url,
        key: args.key.clone(),
        images,
        concurrency: args.concurrency,
    };

    let clock = Instant::now();
    let mut timeline = Timeline::default();
    let (summary, sweep) = match sweep_settings {
        None => {
            let phase = Phase {
                rate: args.rate,
                duration: args.duration,
                limit: args.requests.unwrap_or(u64::MAX),
                step: None,
            };
            let (totals, elapsed) = drive(&target, &phase, clock, &mut timeline).await;
            let summary = summarize(&totals, elapsed);
            print_summary(&summary);
            (Some(summary), None)
        }
        Some(settings) => {
            let results = run_sweep(&target, settings, clock, &mut timeline).await;
            (None, Some(results))
        }
    };

    if let Some(dir) = &args.report {
        let results = RunResults {
            imgpipe_version: env!("CARGO_PKG_VERSION").to_owned(),
            parameters,
            machine: report::Machine::of_this_host(date),
            summary,
            sweep,
            timeseries: timeline.seconds,
            seconds_not_kept: timeline.not_kept,
        };
        let index = report::write(dir, &results).map_err(|e| LoadgenError::Report {
            path: e.path.display().to_string(),
            reason: e.reason,
        })?;
        eprintln!("loadgen: report written to {}", index.display());
    }
    Ok(())
}

/// Runs sweep steps at rising rates until one tips over (`sweep::judge`) or `max_steps` ran,
/// printing one line per step and then the capacity point.
async fn run_sweep(
    target: &Target,
    settings: SweepSettings,
    clock: Instant,
    timeline: &mut Timeline,
) -> sweep::SweepResults {
    let mut steps: Vec<sweep::StepResult> = Vec::new();
    for index in 0..settings.max_steps {
        if index > 0 {
            tokio::time::sleep(sweep::STEP_PAUSE).await;
        }
        let rate = sweep::step_rate(settings.start_rate, settings.factor, index);
        eprintln!("loadgen: step {} at {rate:.1} req/s", index + 1);
        let phase = Phase {
            rate: Some(rate),
            duration: Duration::from_secs_f64(settings.step_duration_s),
            limit: u64::MAX,
            step: Some(index + 1),
        };
        let (totals, elapsed) = drive(target, &phase, clock, timeline).await;
        let summary = summarize(&totals, elapsed);
        let verdict = sweep::judge(&StepMeasure::of(rate, &summary), &settings);
        let step = sweep::StepResult {
            step: index + 1,
            offered_per_s: rate,
            summary,
            verdict,
        };
        println!("{}", step.line());
        let held = step.verdict.held;
        steps.push(step);
        if !held {
            break;
        }
    }
    let results = sweep::SweepResults::new(settings, steps);
    println!("{}", results.capacity_line());
    results
}

/// Runs one phase to its end (duration or request limit reached, then every request in flight
/// answered), printing progress to stderr once a second and adding that second to `timeline`
/// (times since `clock`). Returns the phase's totals and how long it took, drain included.
async fn drive(
    target: &Target,
    phase: &Phase,
    clock: Instant,
    timeline: &mut Timeline,
) -> (Totals, Duration) {
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut window = Window::default();
    let mut in_flight = FuturesUnordered::new();
    let mut sent: u64 = 0;
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    let mut pacer = phase.rate.map(|rate| {
        let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        interval
    });
    let mut last_report = Instant::now();

    loop {
        let running = started.elapsed() < phase.duration && sent < phase.limit;
        if !running && in_flight.is_empty() {
            break;
        }
        // Closed loop: keep `concurrency` requests going.
        while pacer.is_none()
            && running
            && in_flight.len() < target.concurrency
            && sent < phase.limit
        {
            in_flight.push(one_request(target, target.body(sent)));
            sent += 1;
            window.offered += 1;
        }
        tokio::select! {
            Some(sample) = in_flight.next() => {
                totals.record(&sample);
                window.record(&sample);
            }
            () = next_tick(&mut pacer), if running => {
                window.offered += 1;
                if in_flight.len() < target.concurrency {
                    in_flight.push(one_request(target, target.body(sent)));
                    sent += 1;
                } else {
                    totals.dropped += 1;
                    window.dropped += 1;
                }
            }
            _ = progress.tick() => {
                let secs = last_report.elapsed().as_secs_f64();
                eprintln!(
                    "[{:>5.1}s] {:>7.1} req/s  ok {:>6}  errors {:>5}  dropped {:>5}  in flight {:>4}  p50 {:>7} ms  p99 {:>7} ms",
                    started.elapsed().as_secs_f64(),
                    (window.ok + window.errors) as f64 / secs,
                    totals.ok(),
                    totals.count() - totals.ok(),
                    totals.dropped,
                    in_flight.len(),
                    cell(window.quantile_ms(0.5)),
                    cell(window.quantile_ms(0.99)),
                );
                timeline.push(window.take(clock.elapsed().as_secs_f64(), phase.step, in_flight.len()));
                last_report = Instant::now();
            }
        }
    }
    (totals, started.elapsed())
}

/// The pacer's next tick; never, in closed-loop mode (no pacer).
async fn next_tick(pacer: &mut Option<tokio::time::Interval>) {
    match pacer {
        Some(pacer) => {
            pacer.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The numbers of a run (or step) that lasted `elapsed`.
fn summarize(totals: &Totals, elapsed: Duration) -> Summary {
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

/// A value in ms with one decimal, or `-` when there is none.
fn cell(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

/// Prints the summary to stdout. `benches/pipeline_load.sh` reads the first line's
/// `(N ok = X ok/s)`: keep its format.
fn print_summary(summary: &Summary) {
    println!(
        "\nrequests   {} in {:.1} s = {:.1} req/s ({} ok = {:.1} ok/s)",
        summary.requests, summary.elapsed_s, summary.req_per_s, summary.ok, summary.ok_per_s
    );
    if summary.dropped > 0 {
        println!(
            "dropped    {} (the service fell behind the rate; in-flight bound reached)",
            summary.dropped
        );
    }
    println!("                    p50       p90       p99       max   (ms)");
    for (name, percentiles) in [
        ("end to end", &summary.latency_ms),
        ("resize work", &summary.work_ms),
        ("pipeline overhead", &summary.overhead_ms),
    ] {
        let at = |pick: fn(&Percentiles) -> f64| cell(percentiles.as_ref().map(pick));
        println!(
            "{name:<17} {:>8} {:>9} {:>9} {:>9}",
            at(|p| p.p50),
            at(|p| p.p90),
            at(|p| p.p99),
            at(|p| p.max)
        );
    }
    if !summary.stages.is_empty() {
        println!("server-timing       count      mean       p50       p99   (ms)");
        for stage in &summary.stages {
            println!(
                "  {:<15} {:>8} {:>9.2} {:>9.2} {:>9.2}",
                stage.name, stage.count, stage.mean_ms, stage.p50_ms, stage.p99_ms
            );
        }
    }
    println!("outcomes");
    for (outcome, n) in &summary.outcomes {
        println!("  {outcome:<40} {n}");
    }
}

async fn one_request(target: &Target, body: Vec<u8>) -> Sample {
    let started = Instant::now();
    let response = target
        .client
        .post(&target.url)
        .bearer_auth(&target.key)
        .body(body)
        .send()
        .await;
    let (outcome, stages) = match response {
        Ok(response) => {
            let status = response.status();
            let stages = response
                .headers()
                .get("server-timing")
                .and_then(|v| v.to_str().ok())
                .map(stages::parse_server_timing)
                .unwrap_or_default();
            if status.is_success() {
                // Read the whole image: the latency is until the client has it.
                match response.bytes().await {
                    Ok(_) => ("ok".to_owned(), stages),
                    Err(error) => (format!("body error: {}", error_kind(&error)), Vec::new()),
                }
            } else {
                let code = response
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|json| json["code"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                (format!("{} {code}", status.as_u16()), Vec::new())
            }
        }
        Err(error) => (format!("transport: {}", error_kind(&error)), Vec::new()),
    };
    Sample {
        latency: started.elapsed(),
        outcome,
        stages,
    }
}

fn error_kind(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadgenArgs,
    }

    fn parse(extra: &[&str]) -> Result<LoadgenArgs, clap::Error> {
        let mut argv = vec!["loadgen", "--key", "k", "--images", "photos"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|cli| cli.args)
    }

    #[test]
    fn sweep_options_become_settings() {
        let args = parse(&[
            "--sweep",
            "--rate",
            "40",
            "--duration",
            "10s",
            "--p99-limit",
            "80ms",
            "--error-limit",
            "2%",
        ])
        .unwrap();
        let settings = validate(&args).unwrap().unwrap();
        assert_eq!(settings.start_rate, 40.0);
        assert_eq!(settings.factor, 1.25);
        assert_eq!(settings.max_steps, 20);
        assert_eq!(settings.step_duration_s, 10.0);
        assert!((settings.p99_limit_ms - 80.0).abs() < 1e-9);
        assert!((settings.error_limit - 0.02).abs() < 1e-12);
        assert!(
            validate(&parse(&["--rate", "40"]).unwrap())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_sweep_options_are_refused() {
        assert!(parse(&["--sweep"]).is_err(), "--sweep without --rate");
        assert!(parse(&["--sweep", "--rate", "5", "--requests", "9"]).is_err());
        for bad in [
            &["--sweep", "--rate", "5", "--sweep-factor", "1"][..],
            &["--sweep", "--rate", "5", "--sweep-max-steps", "0"],
            &["--rate", "0"],
            &["--concurrency", "0"],
        ] {
            let args = parse(bad).unwrap();
            assert!(validate(&args).is_err(), "{bad:?}");
        }
    }

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

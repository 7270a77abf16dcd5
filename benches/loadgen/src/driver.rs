//! The load loop: builds the requests once, drives one phase (open or closed loop) or a sweep of
//! them, and hands each answer to [`crate::measure`]; then prints and reports the results.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::LoadgenError;
use crate::args::{LoadgenArgs, validate};
use crate::console::{cell, print_summary};
use crate::measure::{Sample, Timeline, Totals, Window, summarize};
use crate::report::{self, RunResults};
use crate::stages;
use crate::sweep::{self, StepMeasure, SweepSettings};

/// What every request needs, built once for the whole run (every step of a sweep).
struct Target {
    client: reqwest::Client,
    load: Load,
    concurrency: usize,
}

/// What is sent: images to the resize endpoint, or GETs of a list of URLs.
enum Load {
    /// `POST {url}` with each image in turn as the body and the API key as bearer.
    Post {
        url: String,
        key: String,
        images: Vec<Vec<u8>>,
    },
    /// `GET` of each URL in turn, without credentials (a signed URL carries its own).
    Get { urls: Vec<reqwest::Url> },
}

impl Target {
    /// The `n`-th request: the images (or URLs) round robin.
    fn request(&self, n: u64) -> reqwest::RequestBuilder {
        let pick = |len: usize| usize::try_from(n).unwrap_or(0) % len;
        match &self.load {
            Load::Post { url, key, images } => self
                .client
                .post(url)
                .bearer_auth(key)
                .body(images[pick(images.len())].clone()),
            Load::Get { urls } => self.client.get(urls[pick(urls.len())].clone()),
        }
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

/// The URLs of a `--urls` file: one absolute http(s) URL per line; blank lines and lines
/// starting with `#` are skipped. Errors name the first bad line (1-based).
pub fn parse_url_list(text: &str) -> Result<Vec<reqwest::Url>, String> {
    let mut urls = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let url = reqwest::Url::parse(line).map_err(|e| format!("line {}: {e}", index + 1))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("line {}: not an http(s) URL", index + 1));
        }
        urls.push(url);
    }
    if urls.is_empty() {
        return Err("no URL in it".into());
    }
    Ok(urls)
}

fn load_urls(path: &Path) -> Result<Vec<reqwest::Url>, LoadgenError> {
    let error = |reason: String| LoadgenError::Urls {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    parse_url_list(&text).map_err(error)
}

/// What `args` asks to send: `--urls` (GET) or `--images` with `--key` (POST).
fn load_of(args: &LoadgenArgs) -> Result<Load, LoadgenError> {
    if let Some(path) = &args.urls {
        return Ok(Load::Get {
            urls: load_urls(path)?,
        });
    }
    let (Some(dir), Some(key)) = (&args.images, &args.key) else {
        return Err(LoadgenError::Options(
            "give --urls FILE (GET), or --images DIR and --key (POST)".into(),
        ));
    };
    Ok(Load::Post {
        url: format!(
            "{}/v1/resize?{}",
            args.url.trim_end_matches('/'),
            args.query
        ),
        key: key.clone(),
        images: load_images(dir)?,
    })
}

/// Runs the load (one run, or a sweep), prints the results, then writes the `--report` folder
/// if asked. Errors: bad options, unreadable images or URLs, an HTTP client that cannot be
/// built, and a report folder that cannot be created (before any load) or written (after the
/// results were printed).
pub async fn run(args: LoadgenArgs) -> Result<(), LoadgenError> {
    let sweep_settings = validate(&args)?;
    let load = load_of(&args)?;
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
    let (inputs, target_url, what) = match &load {
        Load::Post { url, images, .. } => (images.len(), url.clone(), "images"),
        Load::Get { urls } => (urls.len(), urls[0].to_string(), "URLs (GET)"),
    };
    eprintln!(
        "loadgen: {inputs} {what}, {mode}, {:?}, {target_url}{}",
        args.duration,
        if inputs > 1 && what != "images" {
            ", …"
        } else {
            ""
        }
    );
    let parameters =
        report::Parameters::of(&args, &target_url, inputs, &mode, sweep_settings.clone());
    let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let target = Target {
        client,
        load,
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
            in_flight.push(one_request(target.request(sent)));
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
                    in_flight.push(one_request(target.request(sent)));
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

async fn one_request(request: reqwest::RequestBuilder) -> Sample {
    let started = Instant::now();
    let response = request.send().await;
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
    use super::parse_url_list;

    #[test]
    fn a_url_list_skips_blanks_and_comments_and_names_a_bad_line() {
        let urls = parse_url_list(
            "# made by signed_urls.js\n\nhttp://127.0.0.1:8080/v1/img/k/sig/rs:fill:512:512/plain/http://127.0.0.1:8070/a.jpg@jpg\n  http://127.0.0.1:9000/x/y  \n",
        )
        .unwrap();
        assert_eq!(urls.len(), 2);
        assert_eq!(
            urls[0].path(),
            "/v1/img/k/sig/rs:fill:512:512/plain/http://127.0.0.1:8070/a.jpg@jpg"
        );
        assert_eq!(urls[1].as_str(), "http://127.0.0.1:9000/x/y");

        assert_eq!(
            parse_url_list("http://127.0.0.1/a\n/relative/path\n").unwrap_err(),
            "line 2: relative URL without a base"
        );
        assert_eq!(
            parse_url_list("ftp://127.0.0.1/a").unwrap_err(),
            "line 1: not an http(s) URL"
        );
        assert_eq!(parse_url_list("# nothing\n\n").unwrap_err(), "no URL in it");
    }
}

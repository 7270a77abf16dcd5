//! `imgpipe loadgen`: drives the api at a fixed rate (open loop) or a fixed concurrency (closed
//! loop) with a set of images, shows live progress once a second, and prints latency percentiles,
//! throughput and errors by code. From each answer's `Server-Timing` it also separates the
//! resize work (decode + resize + encode) from the pipeline's own overhead (everything else:
//! HTTP, auth, Kafka hand-offs, queueing, reply routing).
//!
//! In-flight requests are bounded in both modes: an open-loop run that the service cannot keep up
//! with counts the requests it could not start as `dropped` rather than piling them up.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;

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
    #[arg(long)]
    pub rate: Option<f64>,
    /// Requests in flight at most (closed loop: exactly this many).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// How long to run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Stop after this many requests, if sooner.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Per-request client timeout.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Why a load run could not start.
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
}

/// One answered (or failed) request.
struct Sample {
    latency: Duration,
    /// `ok`, an HTTP status with the problem's code, or a transport error kind.
    outcome: String,
    /// decode + resize + encode, from Server-Timing, on success.
    work: Option<Duration>,
}

#[derive(Default)]
struct Totals {
    latency: Option<Histogram<u64>>,
    overhead: Option<Histogram<u64>>,
    work: Option<Histogram<u64>>,
    outcomes: BTreeMap<String, u64>,
    dropped: u64,
}

/// Records `value` µs, creating the histogram on first use: 1 µs to 10 min, 3 significant
/// digits. Values past the top are clamped to it.
fn record_into(slot: &mut Option<Histogram<u64>>, value: Duration) {
    if slot.is_none() {
        *slot = Histogram::new_with_bounds(1, 600_000_000, 3).ok();
    }
    if let Some(histogram) = slot {
        let us = u64::try_from(value.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, 600_000_000);
        histogram.saturating_record(us);
    }
}

impl Totals {
    fn record(&mut self, sample: &Sample) {
        record_into(&mut self.latency, sample.latency);
        if let Some(work) = sample.work {
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

fn ms(h: &Option<Histogram<u64>>, q: f64) -> String {
    h.as_ref().map_or("-".into(), |h| {
        format!("{:.1}", h.value_at_quantile(q) as f64 / 1000.0)
    })
}

fn load_images(dir: &PathBuf) -> Result<Vec<Vec<u8>>, LoadgenError> {
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

/// Runs the load and prints the report.
pub async fn run(args: LoadgenArgs) -> Result<(), LoadgenError> {
    if args.concurrency == 0 {
        return Err(LoadgenError::Options(
            "--concurrency must be at least 1".into(),
        ));
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(LoadgenError::Options(
            "--rate must be a positive number".into(),
        ));
    }
    let images = load_images(&args.images)?;
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let url = format!(
        "{}/v1/resize?{}",
        args.url.trim_end_matches('/'),
        args.query
    );
    let mode = args.rate.map_or_else(
        || format!("closed loop, {} concurrent", args.concurrency),
        |r| {
            format!(
                "open loop, {r} req/s, at most {} in flight",
                args.concurrency
            )
        },
    );
    eprintln!(
        "loadgen: {} images, {mode}, {:?}, {url}",
        images.len(),
        args.duration
    );

    let started = Instant::now();
    let limit = args.requests.unwrap_or(u64::MAX);
    let mut totals = Totals::default();
    let mut window = Totals::default();
    let mut in_flight = FuturesUnordered::new();
    let mut sent: u64 = 0;
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    let mut pacer = args.rate.map(|rate| {
        let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        interval
    });
    let mut last_report = Instant::now();

    loop {
        let running = started.elapsed() < args.duration && sent < limit;
        if !running && in_flight.is_empty() {
            break;
        }
        // Closed loop: keep `concurrency` requests going.
        while pacer.is_none() && running && in_flight.len() < args.concurrency && sent < limit {
            let body = images[usize::try_from(sent).unwrap_or(0) % images.len()].clone();
            in_flight.push(one_request(&client, &url, &args.key, body));
            sent += 1;
        }
        tokio::select! {
            Some(sample) = in_flight.next() => {
                totals.record(&sample);
                window.record(&sample);
            }
            () = next_tick(&mut pacer), if running => {
                if in_flight.len() < args.concurrency {
                    let body = images[usize::try_from(sent).unwrap_or(0) % images.len()].clone();
                    in_flight.push(one_request(&client, &url, &args.key, body));
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
                    window.count() as f64 / secs,
                    totals.ok(),
                    totals.count() - totals.ok(),
                    totals.dropped,
                    in_flight.len(),
                    ms(&window.latency, 0.5),
                    ms(&window.latency, 0.99),
                );
                window = Totals::default();
                last_report = Instant::now();
            }
        }
    }
    report(&totals, started.elapsed());
    Ok(())
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

fn report(totals: &Totals, elapsed: Duration) {
    let count = totals.count();
    println!(
        "\nrequests   {count} in {:.1} s = {:.1} req/s ({} ok = {:.1} ok/s)",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        totals.ok(),
        totals.ok() as f64 / elapsed.as_secs_f64()
    );
    if totals.dropped > 0 {
        println!(
            "dropped    {} (the service fell behind the rate; in-flight bound reached)",
            totals.dropped
        );
    }
    println!("                    p50       p90       p99       max   (ms)");
    for (name, h) in [
        ("end to end", &totals.latency),
        ("resize work", &totals.work),
        ("pipeline overhead", &totals.overhead),
    ] {
        println!(
            "{name:<17} {:>8} {:>9} {:>9} {:>9}",
            ms(h, 0.5),
            ms(h, 0.9),
            ms(h, 0.99),
            ms(h, 1.0)
        );
    }
    println!("outcomes");
    for (outcome, n) in &totals.outcomes {
        println!("  {outcome:<40} {n}");
    }
}

async fn one_request(client: &reqwest::Client, url: &str, key: &str, body: Vec<u8>) -> Sample {
    let started = Instant::now();
    let response = client.post(url).bearer_auth(key).body(body).send().await;
    let (outcome, work) = match response {
        Ok(response) => {
            let status = response.status();
            let work = response
                .headers()
                .get("server-timing")
                .and_then(|v| v.to_str().ok())
                .map(resize_work);
            if status.is_success() {
                // Read the whole image: the latency is until the client has it.
                match response.bytes().await {
                    Ok(_) => ("ok".to_owned(), work),
                    Err(error) => (format!("body error: {}", error_kind(&error)), None),
                }
            } else {
                let code = response
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|json| json["code"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                (format!("{} {code}", status.as_u16()), None)
            }
        }
        Err(error) => (format!("transport: {}", error_kind(&error)), None),
    };
    Sample {
        latency: started.elapsed(),
        outcome,
        work,
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

/// decode + resize + encode from a `Server-Timing` value such as
/// `queue;dur=0.4, decode;dur=5.1, resize;dur=2.0, encode;dur=3.3, total;dur=14.2`.
fn resize_work(header: &str) -> Duration {
    let millis: f64 = header
        .split(',')
        .filter_map(|part| {
            let (name, rest) = part.trim().split_once(";dur=")?;
            matches!(name, "decode" | "resize" | "encode").then(|| rest.parse::<f64>().ok())?
        })
        .sum();
    Duration::from_secs_f64(millis / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_work_sums_the_three_stages() {
        let work = resize_work(
            "queue;dur=0.400, decode;dur=5.100, resize;dur=2.000, encode;dur=3.300, total;dur=14.2",
        );
        assert_eq!(work.as_micros(), 10_400);
        assert_eq!(resize_work("total;dur=3"), Duration::ZERO);
    }
}

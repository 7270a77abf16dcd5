//! The load generator's options, and the check that turns them into a plan (and a sweep's
//! settings).

use std::path::PathBuf;
use std::time::Duration;

use crate::LoadgenError;
use crate::sweep::{self, SweepSettings};

/// Load generator options.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Base URL of the api (POST mode).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key (Bearer; POST mode).
    #[arg(
        long,
        env = "IMGPIPE_API_KEY",
        hide_env_values = true,
        required_unless_present = "urls"
    )]
    pub key: Option<String>,
    /// POST mode: folder of JPEG/PNG/WebP/GIF images to send to `POST /v1/resize`, round robin.
    #[arg(long, required_unless_present = "urls", conflicts_with = "urls")]
    pub images: Option<PathBuf>,
    /// GET mode: file of absolute URLs, one per line (blank lines and `#` comments skipped),
    /// fetched round robin with `GET` and no credentials: signed image URLs of imgpipe
    /// (`/v1/img/...`) or of any other image server. Replaces --images, --key, --url and --query.
    #[arg(long, value_name = "FILE")]
    pub urls: Option<PathBuf>,
    /// Query string of every request (POST mode).
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

/// Checks the options; the sweep's settings when `--sweep` is on.
pub fn validate(args: &LoadgenArgs) -> Result<Option<SweepSettings>, LoadgenError> {
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
        parse_from(&["--key", "k", "--images", "photos"], extra)
    }

    fn parse_from(base: &[&'static str], extra: &[&str]) -> Result<LoadgenArgs, clap::Error> {
        let mut argv = vec!["loadgen"];
        argv.extend_from_slice(base);
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
    fn get_mode_needs_a_url_file_and_no_key() {
        let args = parse_from(&["--urls", "urls.txt"], &["--rate", "40"]).unwrap();
        assert_eq!(args.urls.as_deref(), Some(std::path::Path::new("urls.txt")));
        assert_eq!((args.key, args.images), (None, None));
        assert!(
            parse_from(&["--urls", "urls.txt", "--images", "photos"], &[]).is_err(),
            "--urls and --images are two modes"
        );
        assert!(parse_from(&["--key", "k"], &[]).is_err(), "neither mode");
        assert!(
            parse_from(&["--images", "photos"], &[]).is_err(),
            "POST without a key"
        );
    }
}

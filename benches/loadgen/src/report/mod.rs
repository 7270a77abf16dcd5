//! What a load run measured, as data (serialised to `results.json`), and the `--report` folder
//! drawn from it: `index.html` (self-contained: inline CSS and SVG, no script, no external
//! asset), `timeseries.svg`, `curve.svg` (sweeps only) and `results.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

use super::LoadgenArgs;
use super::stages::StageStats;
use super::sweep::{SweepResults, SweepSettings};
use super::us_to_ms;

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

/// How the run was made (never the key, and only the image folder's name).
#[derive(Debug, Clone, Serialize)]
pub struct Parameters {
    /// `host:port` of the api.
    pub target: String,
    /// Query string of every request.
    pub query: String,
    /// Name of the image folder.
    pub images_folder: String,
    /// Images in it.
    pub images: usize,
    /// Loop kind in words.
    pub mode: String,
    /// Open loop: requests/s (sweep: the first step's).
    pub rate_per_s: Option<f64>,
    /// In-flight bound.
    pub concurrency: usize,
    /// Run length (sweep: per step), s.
    pub duration_s: f64,
    /// Per-request timeout, s.
    pub timeout_s: f64,
    /// `--requests`, if given.
    pub requests_limit: Option<u64>,
    /// Sweep settings, for a sweep.
    pub sweep: Option<SweepSettings>,
}

impl Parameters {
    /// The parameters of a run with `args` over `images` images.
    pub fn of(args: &LoadgenArgs, images: usize, mode: &str, sweep: Option<SweepSettings>) -> Self {
        // Only host and port: the URL could carry credentials, and the path is always the same.
        let target = reqwest::Url::parse(&args.url)
            .ok()
            .and_then(|url| {
                let host = url.host_str()?.to_owned();
                Some(match url.port_or_known_default() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            })
            .unwrap_or_else(|| "(unparsable URL)".to_owned());
        let images_folder = args.images.file_name().map_or_else(
            || args.images.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        );
        Self {
            target,
            query: args.query.clone(),
            images_folder,
            images,
            mode: mode.to_owned(),
            rate_per_s: args.rate,
            concurrency: args.concurrency,
            duration_s: args.duration.as_secs_f64(),
            timeout_s: args.timeout.as_secs_f64(),
            requests_limit: args.requests,
            sweep,
        }
    }
}

/// The machine the load generator ran on (usually the service's too).
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `model name` from /proc/cpuinfo, or `unknown`.
    pub cpu_model: String,
    /// Logical CPUs.
    pub cores: usize,
    /// `MemTotal` from /proc/meminfo, bytes.
    pub memory_bytes: Option<u64>,
    /// Kernel release.
    pub kernel: String,
    /// When the run started, RFC 3339 (UTC).
    pub date: String,
}

impl Machine {
    /// This host's facts, read from /proc (Linux); `unknown` where a file cannot be read.
    pub fn of_this_host(date: String) -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cores = match cpuinfo_cores(&cpuinfo) {
            0 => std::thread::available_parallelism().map_or(0, usize::from),
            n => n,
        };
        let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
        Self {
            cpu_model: cpuinfo_model(&cpuinfo).unwrap_or_else(|| "unknown".to_owned()),
            cores,
            memory_bytes: meminfo_total_bytes(&read("/proc/meminfo")),
            kernel: if kernel.is_empty() {
                "unknown".to_owned()
            } else {
                kernel
            },
            date,
        }
    }
}

/// The first `model name` of a /proc/cpuinfo text.
fn cpuinfo_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// Logical CPUs listed in a /proc/cpuinfo text (its `processor` lines).
fn cpuinfo_cores(cpuinfo: &str) -> usize {
    cpuinfo
        .lines()
        .filter(|line| {
            line.split_once(':')
                .is_some_and(|(key, _)| key.trim() == "processor")
        })
        .count()
}

/// `MemTotal` of a /proc/meminfo text, in bytes (the file says kB, meaning KiB).
fn meminfo_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Everything a run produced: `results.json` is this, serialised.
#[derive(Debug, Clone, Serialize)]
pub struct RunResults {
    /// Version of the imgpipe binary that ran the load.
    pub imgpipe_version: String,
    /// How the run was made.
    pub parameters: Parameters,
    /// Where it ran.
    pub machine: Machine,
    /// A single run's numbers (`None` for a sweep: see `sweep`).
    pub summary: Option<Summary>,
    /// A sweep's steps and capacity point.
    pub sweep: Option<SweepResults>,
    /// One record per second, every step of a sweep included.
    pub timeseries: Vec<Second>,
    /// Seconds past the time series' bound, counted but not kept.
    pub seconds_not_kept: u64,
}

/// The report could not be written: which path, and why.
#[derive(Debug)]
pub struct WriteError {
    /// Folder or file that failed.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// Writes the report into `dir` (created if missing): `results.json` first (every number, so
/// nothing is lost if a chart fails), then `timeseries.svg`, `curve.svg` for a sweep (a stale
/// one is removed otherwise) and `index.html`. Returns the path of `index.html`.
pub fn write(dir: &Path, results: &RunResults) -> Result<PathBuf, WriteError> {
    let fail = |path: PathBuf| move |reason: String| WriteError { path, reason };
    std::fs::create_dir_all(dir).map_err(|e| fail(dir.to_owned())(e.to_string()))?;

    let json_path = dir.join("results.json");
    let json = serde_json::to_string_pretty(results)
        .map_err(|e| fail(json_path.clone())(e.to_string()))?;
    write_file(&json_path, &json)?;

    let timeseries_path = dir.join("timeseries.svg");
    let timeseries = timeseries_svg(&results.timeseries)
        .map_err(|e| fail(timeseries_path.clone())(e.to_string()))?;
    write_file(&timeseries_path, &timeseries)?;

    let curve_path = dir.join("curve.svg");
    let curve = match &results.sweep {
        Some(sweep) => {
            let curve = curve_svg(sweep).map_err(|e| fail(curve_path.clone())(e.to_string()))?;
            write_file(&curve_path, &curve)?;
            Some(curve)
        }
        None => {
            // A curve left by an earlier sweep in the same folder would not belong to this run.
            match std::fs::remove_file(&curve_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(fail(curve_path)(e.to_string()));
                }
                _ => None,
            }
        }
    };

    let index_path = dir.join("index.html");
    let page = html(results, &timeseries, curve.as_deref())
        .map_err(|e| fail(index_path.clone())(e.to_string()))?;
    write_file(&index_path, &page)?;
    Ok(index_path)
}

fn write_file(path: &Path, text: &str) -> Result<(), WriteError> {
    std::fs::write(path, text).map_err(|e| WriteError {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

type ChartResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const OK_COLOR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const OFFERED_COLOR: RGBColor = RGBColor(0x9a, 0x9a, 0x9a);
const ERROR_COLOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const P50_COLOR: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const P99_COLOR: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const GRID_COLOR: RGBColor = RGBColor(0xee, 0xee, 0xee);
const FONT: &str = "sans-serif";
/// Room above the data, as a multiple of its maximum, so the legend (upper left) covers no line.
const HEADROOM: f64 = 1.5;

/// The time series: ok/s and offered req/s with errors/s marked (top panel), p50 and p99 of
/// each second (bottom panel); x is seconds since the run started.
fn timeseries_svg(seconds: &[Second]) -> ChartResult<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 620)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(310);
        let t_max = seconds.iter().map(|s| s.t_s).fold(1.0, f64::max);
        let rate_max = seconds
            .iter()
            .map(|s| s.offered.max(s.ok).max(s.errors) as f64)
            .fold(1.0, f64::max)
            * HEADROOM;

        let mut chart = ChartBuilder::on(&top)
            .caption("Throughput per second", (FONT, 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..t_max, 0.0..rate_max)?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID_COLOR)
            .x_desc("time since start (s)")
            .y_desc("requests/s")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                seconds.iter().map(|s| (s.t_s, s.offered as f64)),
                OFFERED_COLOR.stroke_width(1),
            ))?
            .label("offered req/s")
            .legend(|(x, y)| {
                PathElement::new([(x, y), (x + 18, y)], OFFERED_COLOR.stroke_width(2))
            });
        chart
            .draw_series(LineSeries::new(
                seconds.iter().map(|s| (s.t_s, s.ok as f64)),
                OK_COLOR.stroke_width(2),
            ))?
            .label("ok/s")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], OK_COLOR.stroke_width(2)));
        chart
            .draw_series(
                seconds
                    .iter()
                    .filter(|s| s.errors > 0)
                    .map(|s| Cross::new((s.t_s, s.errors as f64), 4, ERROR_COLOR.stroke_width(2))),
            )?
            .label("errors/s (only seconds with errors)")
            .legend(|(x, y)| Cross::new((x + 9, y), 4, ERROR_COLOR.stroke_width(2)));
        legend(&mut chart)?;

        let latency_max = seconds.iter().filter_map(|s| s.p99_ms).fold(1.0, f64::max) * HEADROOM;
        let mut chart = ChartBuilder::on(&bottom)
            .caption("Latency of the requests ending in each second", (FONT, 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..t_max, 0.0..latency_max)?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID_COLOR)
            .x_desc("time since start (s)")
            .y_desc("ms")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&ms_label)
            .draw()?;
        for (name, color, pick) in [
            (
                "p50",
                P50_COLOR,
                (|s: &Second| s.p50_ms) as fn(&Second) -> Option<f64>,
            ),
            ("p99", P99_COLOR, |s: &Second| s.p99_ms),
        ] {
            chart
                .draw_series(LineSeries::new(
                    seconds.iter().filter_map(|s| Some((s.t_s, pick(s)?))),
                    color.stroke_width(2),
                ))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        legend(&mut chart)?;
        root.present()?;
    }
    Ok(svg)
}

/// Axis labels in ms: whole numbers once the scale is past 10 ms.
fn ms_label(value: &f64) -> String {
    if *value >= 10.0 || *value == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> ChartResult<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(0xcc, 0xcc, 0xcc))
        .label_font((FONT, 13))
        .draw()?;
    Ok(())
}

/// The sweep's curve: p50 and p99 (ms, left axis) and achieved ok/s (right axis) against the
/// offered rate, with the p99 limit as a line and the capacity point circled.
fn curve_svg(sweep: &SweepResults) -> ChartResult<String> {
    let limit = sweep.settings.p99_limit_ms;
    // x spans the offered rates swept (not from 0: the steps sit close together).
    let offered = sweep.steps.iter().map(|s| s.offered_per_s);
    let offered_min = offered.clone().fold(f64::INFINITY, f64::min);
    let offered_max = offered.fold(0.0, f64::max);
    let (x_min, x_max) = if offered_min.is_finite() && offered_max > 0.0 {
        (offered_min * 0.9, offered_max * 1.08)
    } else {
        (0.0, 1.0)
    };
    let ms_max = sweep
        .steps
        .iter()
        .filter_map(|s| s.summary.latency_ms.map(|l| l.p99))
        .fold(limit, f64::max)
        * HEADROOM;
    let ok_max = sweep
        .steps
        .iter()
        .map(|s| s.summary.ok_per_s)
        .fold(offered_max, f64::max)
        .max(1.0)
        * HEADROOM;
    let latency = |pick: fn(&Percentiles) -> f64| -> Vec<(f64, f64)> {
        sweep
            .steps
            .iter()
            .filter_map(|s| Some((s.offered_per_s, pick(s.summary.latency_ms.as_ref()?))))
            .collect()
    };
    let achieved: Vec<(f64, f64)> = sweep
        .steps
        .iter()
        .map(|s| (s.offered_per_s, s.summary.ok_per_s))
        .collect();

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 460)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Latency and throughput vs offered load", (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .right_y_label_area_size(56)
            .build_cartesian_2d(x_min..x_max, 0.0..ms_max)?
            .set_secondary_coord(x_min..x_max, 0.0..ok_max);
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID_COLOR)
            .x_desc("offered (requests/s)")
            .y_desc("latency (ms)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&ms_label)
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_desc("achieved ok/s")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;

        chart
            .draw_series(LineSeries::new(
                [(x_min, limit), (x_max, limit)],
                ERROR_COLOR.stroke_width(1),
            ))?
            .label(format!("p99 limit ({limit} ms)"))
            .legend(|(x, y)| Rectangle::new([(x, y - 1), (x + 18, y)], ERROR_COLOR.filled()));
        for (name, color, points) in [
            ("p50", P50_COLOR, latency(|l| l.p50)),
            ("p99", P99_COLOR, latency(|l| l.p99)),
        ] {
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .draw_secondary_series(LineSeries::new(
                achieved.iter().copied(),
                OK_COLOR.stroke_width(2),
            ))?
            .label("achieved ok/s (right axis)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], OK_COLOR.stroke_width(2)));
        chart.draw_secondary_series(
            achieved
                .iter()
                .map(|&p| Circle::new(p, 3, OK_COLOR.filled())),
        )?;

        if let Some((step, p99)) = sweep
            .capacity()
            .and_then(|step| Some((step, step.summary.latency_ms?.p99)))
        {
            let point = (step.offered_per_s, p99);
            chart
                .draw_series([Circle::new(point, 9, BLACK.stroke_width(2))])?
                .label("capacity point")
                .legend(|(x, y)| Circle::new((x + 9, y), 5, BLACK.stroke_width(2)));
            chart.draw_series([EmptyElement::at(point)
                + Text::new(
                    format!("capacity {:.0} req/s", step.offered_per_s),
                    (12, -24),
                    (FONT, 14),
                )])?;
        }
        legend(&mut chart)?;
        root.present()?;
    }
    Ok(svg)
}

/// Text made safe inside HTML elements and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.1}"))
}

const STYLE: &str = "\
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em;margin:0 0 .2em}
h2{font-size:1.15em;margin:1.8em 0 .5em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.lead{font-size:1.1em;background:#f3f7fb;border-left:4px solid #1f77b4;padding:.6em .9em}
.cols{display:flex;gap:2.5em;flex-wrap:wrap}
table{border-collapse:collapse;margin:.4em 0}
th,td{padding:.25em .8em;border-bottom:1px solid #eee;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}
thead th{border-bottom:2px solid #ccc}
table.kv th{text-align:left;font-weight:normal;color:#555}
table.kv td{text-align:left}
tr.capacity{background:#e8f4e8;font-weight:600}
tr.tipped td{color:#b42020}
svg{max-width:100%;height:auto}
.note{color:#666;font-size:.9em}
";

/// The page: headline, parameters, machine, charts and tables, all inline.
fn html(
    results: &RunResults,
    timeseries: &str,
    curve: Option<&str>,
) -> Result<String, std::fmt::Error> {
    let p = &results.parameters;
    let m = &results.machine;
    let mut h = String::with_capacity(64 * 1024 + timeseries.len() + curve.map_or(0, str::len));
    writeln!(
        h,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">"
    )?;
    writeln!(h, "<title>imgpipe load report, {}</title>", esc(&m.date))?;
    writeln!(h, "<style>\n{STYLE}</style>\n</head>\n<body>")?;
    writeln!(h, "<h1>imgpipe load report</h1>")?;
    writeln!(
        h,
        "<p class=\"note\">{} · imgpipe {}</p>",
        esc(&m.date),
        esc(&results.imgpipe_version)
    )?;

    // The headline: what a reader came for, in one sentence.
    let headline = match (&results.sweep, &results.summary) {
        (Some(sweep), _) => sweep_headline(sweep),
        (None, Some(s)) => format!(
            "{:.1} ok/s over {:.1} s; end to end p50 {} ms, p99 {} ms; {} errors of {} requests{}.",
            s.ok_per_s,
            s.elapsed_s,
            ms(s.latency_ms.map(|l| l.p50)),
            ms(s.latency_ms.map(|l| l.p99)),
            s.errors,
            s.requests,
            if s.dropped > 0 {
                format!(", {} dropped at the in-flight bound", s.dropped)
            } else {
                String::new()
            }
        ),
        (None, None) => "No results.".to_owned(),
    };
    writeln!(h, "<p class=\"lead\">{}</p>", esc(&headline))?;

    writeln!(
        h,
        "<div class=\"cols\">\n<div>\n<h2>Run</h2>\n<table class=\"kv\">"
    )?;
    let mut run_rows: Vec<(&str, String)> = vec![
        ("api", p.target.clone()),
        ("query", p.query.clone()),
        (
            "images",
            format!("{} ({} files)", p.images_folder, p.images),
        ),
        ("mode", p.mode.clone()),
    ];
    if let Some(rate) = p.rate_per_s {
        let what = if p.sweep.is_some() {
            "first rate"
        } else {
            "rate"
        };
        run_rows.push((what, format!("{rate} req/s")));
    }
    run_rows.push((
        "concurrency",
        format!("{} in flight at most", p.concurrency),
    ));
    let duration_name = if p.sweep.is_some() {
        "duration per step"
    } else {
        "duration"
    };
    run_rows.push((duration_name, format!("{} s", p.duration_s)));
    run_rows.push(("timeout", format!("{} s", p.timeout_s)));
    if let Some(limit) = p.requests_limit {
        run_rows.push(("request limit", limit.to_string()));
    }
    if let Some(s) = &p.sweep {
        run_rows.push((
            "sweep factor",
            format!("×{} per step, {} steps at most", s.factor, s.max_steps),
        ));
        run_rows.push((
            "tipping point",
            format!(
                "p99 > {} ms, or errors > {}%, or ok/s < {}% of offered",
                s.p99_limit_ms,
                s.error_limit * 100.0,
                s.min_achieved_share * 100.0
            ),
        ));
        run_rows.push(("pause between steps", format!("{} s", s.pause_s)));
    }
    for (name, value) in &run_rows {
        writeln!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(name), esc(value))?;
    }
    writeln!(
        h,
        "</table>\n</div>\n<div>\n<h2>Machine</h2>\n<table class=\"kv\">"
    )?;
    let memory = m.memory_bytes.map_or_else(
        || "unknown".to_owned(),
        |b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
    );
    for (name, value) in [
        ("CPU", m.cpu_model.clone()),
        ("cores", m.cores.to_string()),
        ("memory", memory),
        ("kernel", m.kernel.clone()),
        ("date", m.date.clone()),
    ] {
        writeln!(h, "<tr><th>{name}</th><td>{}</td></tr>", esc(&value))?;
    }
    writeln!(h, "</table>\n</div>\n</div>")?;

    if let (Some(sweep), Some(curve)) = (&results.sweep, curve) {
        writeln!(
            h,
            "<h2>Latency vs offered load</h2>\n<figure>\n{curve}</figure>"
        )?;
        sweep_table(&mut h, sweep)?;
    }

    writeln!(h, "<h2>Over time</h2>\n<figure>\n{timeseries}</figure>")?;
    if results.seconds_not_kept > 0 {
        writeln!(
            h,
            "<p class=\"note\">The last {} seconds are not in the time series (it keeps {} at most).</p>",
            results.seconds_not_kept,
            results.timeseries.len()
        )?;
    }

    let detail = match (&results.sweep, &results.summary) {
        (Some(sweep), _) => sweep.capacity().map(|step| {
            (
                format!(
                    "At the capacity point (step {}, {:.1} req/s offered)",
                    step.step, step.offered_per_s
                ),
                &step.summary,
            )
        }),
        (None, Some(summary)) => Some(("Summary".to_owned(), summary)),
        (None, None) => None,
    };
    if let Some((title, summary)) = detail {
        summary_tables(&mut h, &title, summary)?;
    }
    writeln!(
        h,
        "<p class=\"note\">Every number is in results.json beside this page; the charts are also timeseries.svg{}.</p>",
        if curve.is_some() {
            " and curve.svg"
        } else {
            ""
        }
    )?;
    writeln!(h, "</body>\n</html>")?;
    Ok(h)
}

/// The sweep in one sentence: the capacity point and what ended the sweep.
fn sweep_headline(sweep: &SweepResults) -> String {
    let last = sweep.steps.last();
    let ending = match last {
        // `tipped` means the last step did not hold: its verdict reads "tipped over: ...".
        Some(last) if sweep.tipped => format!(
            "step {} at {:.1} req/s {}",
            last.step, last.offered_per_s, last.verdict
        ),
        _ => format!(
            "no step tipped over within {} steps, so the capacity is at least this",
            sweep.steps.len()
        ),
    };
    match sweep.capacity() {
        Some(step) => format!(
            "Capacity: {:.1} req/s offered, {:.1} ok/s achieved, p50 {} ms, p99 {} ms (step {}); {ending}.",
            step.offered_per_s,
            step.summary.ok_per_s,
            ms(step.summary.latency_ms.map(|l| l.p50)),
            ms(step.summary.latency_ms.map(|l| l.p99)),
            step.step,
        ),
        None => format!("No step held: {ending}. Start the sweep at a lower --rate."),
    }
}

fn sweep_table(h: &mut String, sweep: &SweepResults) -> std::fmt::Result {
    writeln!(
        h,
        "<h2>Steps</h2>\n<table>\n<thead><tr><th>step</th><th>offered req/s</th><th>ok/s</th><th>p50 ms</th><th>p99 ms</th><th>errors</th><th>dropped</th><th>verdict</th></tr></thead>"
    )?;
    for step in &sweep.steps {
        let s = &step.summary;
        let class = if Some(step.step) == sweep.capacity_step {
            " class=\"capacity\""
        } else if !step.verdict.held {
            " class=\"tipped\""
        } else {
            ""
        };
        let verdict = if Some(step.step) == sweep.capacity_step {
            format!("{} (capacity point)", step.verdict)
        } else {
            step.verdict.to_string()
        };
        writeln!(
            h,
            "<tr{class}><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            step.step,
            step.offered_per_s,
            s.ok_per_s,
            ms(s.latency_ms.map(|l| l.p50)),
            ms(s.latency_ms.map(|l| l.p99)),
            s.errors,
            s.dropped,
            esc(&verdict)
        )?;
    }
    writeln!(h, "</table>")?;
    if !sweep.tipped {
        writeln!(
            h,
            "<p class=\"note\">No step tipped over within {} steps: the capacity is at least the last step.</p>",
            sweep.settings.max_steps
        )?;
    }
    Ok(())
}

fn summary_tables(h: &mut String, title: &str, s: &Summary) -> std::fmt::Result {
    writeln!(
        h,
        "<h2>{}</h2>\n<div class=\"cols\">\n<table class=\"kv\">",
        esc(title)
    )?;
    for (name, value) in [
        ("requests", s.requests.to_string()),
        ("ok", s.ok.to_string()),
        ("errors", s.errors.to_string()),
        ("dropped", s.dropped.to_string()),
        ("duration", format!("{:.1} s", s.elapsed_s)),
        ("requests/s", format!("{:.1}", s.req_per_s)),
        ("ok/s", format!("{:.1}", s.ok_per_s)),
    ] {
        writeln!(h, "<tr><th>{name}</th><td>{value}</td></tr>")?;
    }
    writeln!(
        h,
        "</table>\n<table>\n<thead><tr><th>latency (ms)</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr></thead>"
    )?;
    for (name, percentiles) in [
        ("end to end", &s.latency_ms),
        ("resize work", &s.work_ms),
        ("pipeline overhead", &s.overhead_ms),
    ] {
        let at = |pick: fn(&Percentiles) -> f64| ms(percentiles.as_ref().map(pick));
        writeln!(
            h,
            "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            at(|p| p.mean),
            at(|p| p.p50),
            at(|p| p.p90),
            at(|p| p.p99),
            at(|p| p.p999),
            at(|p| p.max)
        )?;
    }
    writeln!(h, "</table>\n</div>")?;
    writeln!(
        h,
        "<p class=\"note\">Resize work is decode + resize + encode from Server-Timing; pipeline overhead is end to end minus that work.</p>"
    )?;

    writeln!(h, "<h2>Errors by code</h2>")?;
    let errors: Vec<(&String, &u64)> = s
        .outcomes
        .iter()
        .filter(|(outcome, _)| *outcome != "ok")
        .collect();
    if errors.is_empty() {
        writeln!(h, "<p>No errors.</p>")?;
    } else {
        writeln!(
            h,
            "<table>\n<thead><tr><th>outcome</th><th>requests</th><th>share</th></tr></thead>"
        )?;
        for (outcome, n) in errors {
            let share = *n as f64 * 100.0 / s.requests.max(1) as f64;
            writeln!(
                h,
                "<tr><td>{}</td><td>{n}</td><td>{share:.2}%</td></tr>",
                esc(outcome)
            )?;
        }
        writeln!(h, "</table>")?;
    }

    writeln!(h, "<h2>Server-Timing stages</h2>")?;
    if s.stages.is_empty() {
        writeln!(h, "<p>No answer carried a Server-Timing header.</p>")?;
    } else {
        writeln!(
            h,
            "<table>\n<thead><tr><th>stage</th><th>answers</th><th>mean ms</th><th>p50 ms</th><th>p99 ms</th></tr></thead>"
        )?;
        for stage in &s.stages {
            writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
                esc(&stage.name),
                stage.count,
                stage.mean_ms,
                stage.p50_ms,
                stage.p99_ms
            )?;
        }
        writeln!(h, "</table>")?;
        if s.stages_ignored > 0 {
            writeln!(
                h,
                "<p class=\"note\">{} entries with further stage names were not kept.</p>",
                s.stages_ignored
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::stages::StageStats;
    use crate::loadgen::sweep::{StepResult, Verdict};

    fn percentiles(p50: f64, p99: f64) -> Percentiles {
        Percentiles {
            count: 100,
            mean: p50 * 1.1,
            p50,
            p90: (p50 + p99) / 2.0,
            p99,
            p999: p99 * 1.2,
            max: p99 * 1.5,
        }
    }

    fn summary(ok_per_s: f64, p50: f64, p99: f64, errors: u64) -> Summary {
        let ok = (ok_per_s * 10.0) as u64;
        let mut outcomes = BTreeMap::from([("ok".to_owned(), ok)]);
        if errors > 0 {
            outcomes.insert("503 overloaded".to_owned(), errors);
        }
        Summary {
            elapsed_s: 10.0,
            requests: ok + errors,
            ok,
            errors,
            dropped: 0,
            req_per_s: (ok + errors) as f64 / 10.0,
            ok_per_s,
            latency_ms: Some(percentiles(p50, p99)),
            work_ms: Some(percentiles(p50 / 2.0, p99 / 4.0)),
            overhead_ms: Some(percentiles(p50 / 2.0, p99 / 2.0)),
            outcomes,
            stages: ["queue", "decode", "resize", "encode", "handoff", "total"]
                .iter()
                .map(|name| StageStats {
                    name: (*name).to_owned(),
                    count: ok,
                    mean_ms: 1.5,
                    p50_ms: 1.2,
                    p99_ms: 4.0,
                })
                .collect(),
            stages_ignored: 0,
        }
    }

    fn seconds(n: usize) -> Vec<Second> {
        (0..n)
            .map(|i| Second {
                t_s: (i + 1) as f64,
                step: None,
                offered: 100,
                ok: 98 + (i % 2) as u64,
                errors: (i % 3 == 1).into(),
                dropped: 0,
                in_flight: 3,
                p50_ms: Some(10.0 + i as f64),
                p99_ms: Some(30.0 + 2.0 * i as f64),
            })
            .collect()
    }

    fn parameters(sweep: Option<SweepSettings>) -> Parameters {
        Parameters {
            target: "127.0.0.1:18080".into(),
            query: "width=512&height=512&format=jpeg&quality=80".into(),
            images_folder: "holiday-photos".into(),
            images: 24,
            mode: if sweep.is_some() {
                "open-loop sweep from 100 req/s".into()
            } else {
                "closed loop, 16 concurrent".into()
            },
            rate_per_s: sweep.as_ref().map(|s| s.start_rate),
            concurrency: 16,
            duration_s: 10.0,
            timeout_s: 30.0,
            requests_limit: None,
            sweep,
        }
    }

    fn machine() -> Machine {
        Machine {
            cpu_model: "Test CPU 3000 @ 3.0GHz".into(),
            cores: 2,
            memory_bytes: Some(24 << 30),
            kernel: "6.1.0-test".into(),
            date: "2026-01-02T03:04:05Z".into(),
        }
    }

    fn single_run() -> RunResults {
        RunResults {
            imgpipe_version: "0.1.0".into(),
            parameters: parameters(None),
            machine: machine(),
            summary: Some(summary(98.5, 12.0, 41.0, 3)),
            sweep: None,
            timeseries: seconds(7),
            seconds_not_kept: 0,
        }
    }

    fn sweep_run() -> RunResults {
        let settings = SweepSettings {
            start_rate: 100.0,
            factor: 1.25,
            max_steps: 20,
            step_duration_s: 10.0,
            pause_s: 2.0,
            p99_limit_ms: 50.0,
            error_limit: 0.01,
            min_achieved_share: 0.9,
        };
        let step = |n: u32, offered: f64, ok: f64, p99: f64, held: bool| StepResult {
            step: n,
            offered_per_s: offered,
            summary: summary(ok, p99 / 3.0, p99, 0),
            verdict: Verdict {
                held,
                reasons: if held {
                    vec![]
                } else {
                    vec!["p99 80.0 ms > 50.0 ms".into()]
                },
            },
        };
        let steps = vec![
            step(1, 100.0, 99.8, 20.0, true),
            step(2, 125.0, 124.6, 35.0, true),
            step(3, 156.25, 140.0, 80.0, false),
        ];
        RunResults {
            imgpipe_version: "0.1.0".into(),
            parameters: parameters(Some(settings.clone())),
            machine: machine(),
            summary: None,
            sweep: Some(SweepResults::new(settings, steps)),
            timeseries: seconds(30),
            seconds_not_kept: 0,
        }
    }

    /// The points of every `<polyline>` drawn in `color` (`#RRGGBB`).
    fn polylines(svg: &str, color: &str) -> Vec<Vec<(i32, i32)>> {
        svg.lines()
            .filter(|line| {
                line.starts_with("<polyline") && line.contains(&format!("stroke=\"{color}\""))
            })
            .map(|line| {
                let points = line
                    .split("points=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                points
                    .split_whitespace()
                    .map(|xy| {
                        let (x, y) = xy.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect()
            })
            .collect()
    }

    fn hex(color: RGBColor) -> String {
        format!("#{:02X}{:02X}{:02X}", color.0, color.1, color.2)
    }

    /// One line with all `n` points per series (the legend's 2-point samples aside).
    fn assert_one_path(svg: &str, color: RGBColor, n: usize) {
        let full: Vec<_> = polylines(svg, &hex(color))
            .into_iter()
            .filter(|p| p.len() == n)
            .collect();
        assert_eq!(
            full.len(),
            1,
            "series {} with {n} points: {full:?}",
            hex(color)
        );
    }

    fn assert_valid_svg(svg: &str) {
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count());
    }

    #[test]
    fn a_single_run_report_shows_its_parameters_numbers_and_time_series() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("nested").join("report");
        // A curve from an earlier sweep in the same folder does not belong to this run.
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("curve.svg"), "<svg></svg>").unwrap();

        let index = write(&out, &single_run()).unwrap();
        assert_eq!(index, out.join("index.html"));
        assert!(!out.join("curve.svg").exists());

        let page = std::fs::read_to_string(&index).unwrap();
        for expected in [
            "127.0.0.1:18080",
            "width=512&amp;height=512&amp;format=jpeg&amp;quality=80",
            "holiday-photos (24 files)",
            "closed loop, 16 concurrent",
            "30 s",
            "Test CPU 3000",
            "24.0 GiB",
            "6.1.0-test",
            "2026-01-02T03:04:05Z",
            "503 overloaded",
            "<td>handoff</td>",
            "98.5 ok/s",
        ] {
            assert!(page.contains(expected), "missing {expected:?}");
        }
        // Stages in the order they first appeared.
        let queue = page.find("<td>queue</td>").unwrap();
        let total = page.find("<td>total</td>").unwrap();
        assert!(queue < total);
        // Self-contained: the chart inline, nothing fetched, nothing run.
        assert_eq!(page.matches("<svg").count(), 1);
        assert_eq!(page.matches("</svg>").count(), 1);
        for external in ["<script", "src=", "href=", "<link", "@import"] {
            assert!(!page.contains(external), "{external}");
        }

        let svg = std::fs::read_to_string(out.join("timeseries.svg")).unwrap();
        assert_valid_svg(&svg);
        for color in [OFFERED_COLOR, OK_COLOR, P50_COLOR, P99_COLOR] {
            assert_one_path(&svg, color, 7);
        }
        // Errors are marked only in the seconds that had some (2 of 7 here): crosses of two lines.
        let error_lines = svg
            .lines()
            .filter(|l| {
                l.starts_with("<line") && l.contains(&format!("stroke=\"{}\"", hex(ERROR_COLOR)))
            })
            .count();
        assert_eq!(error_lines, 2 * 2 + 2, "two crosses and the legend's");

        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap())
                .unwrap();
        assert_eq!(json["summary"]["ok"], 985);
        assert_eq!(json["summary"]["stages"][4]["name"], "handoff");
        assert_eq!(json["timeseries"].as_array().unwrap().len(), 7);
        assert_eq!(json["parameters"]["target"], "127.0.0.1:18080");
    }

    #[test]
    fn a_sweep_report_draws_the_curve_limit_and_capacity_point() {
        let dir = tempfile::tempdir().unwrap();
        let results = sweep_run();
        let index = write(dir.path(), &results).unwrap();
        let page = std::fs::read_to_string(index).unwrap();
        assert_eq!(page.matches("<svg").count(), 2);
        assert_eq!(page.matches("</svg>").count(), 2);
        assert!(
            page.contains("Capacity: 125.0 req/s offered, 124.6 ok/s achieved"),
            "headline"
        );
        assert!(page.contains("step 3 at 156.2 req/s tipped over: p99 80.0 ms &gt; 50.0 ms"));
        assert!(page.contains("<tr class=\"capacity\"><td>2</td>"));
        assert!(page.contains("<tr class=\"tipped\"><td>3</td>"));
        assert!(page.contains("p99 &gt; 50 ms, or errors &gt; 1%"));
        assert!(page.contains("At the capacity point (step 2, 125.0 req/s offered)"));

        let curve = std::fs::read_to_string(dir.path().join("curve.svg")).unwrap();
        assert_valid_svg(&curve);
        for color in [P50_COLOR, P99_COLOR, OK_COLOR] {
            assert_one_path(&curve, color, 3);
        }
        // The p99 limit: one horizontal line across the plot.
        let limit = polylines(&curve, &hex(ERROR_COLOR));
        assert_eq!(limit.len(), 1, "{limit:?}");
        let [(x0, y0), (x1, y1)] = limit[0][..] else {
            panic!("{limit:?}")
        };
        assert_eq!(y0, y1);
        assert!(x1 - x0 > 500, "{limit:?}");
        // Above the capacity point's p99 (35 ms of 50): SVG y grows downwards.
        let capacity_y: i32 = curve
            .lines()
            .find(|l| l.starts_with("<circle") && l.contains("r=\"9\""))
            .and_then(|l| l.split("cy=\"").nth(1)?.split('"').next()?.parse().ok())
            .unwrap();
        assert!(
            y0 < capacity_y,
            "limit at {y0}, capacity point at {capacity_y}"
        );
        // The capacity point is circled, and named.
        assert!(curve.contains("r=\"9\""));
        assert!(curve.contains("capacity 125 req/s"));

        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("results.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(json["sweep"]["capacity_step"], 2);
        assert_eq!(json["sweep"]["steps"].as_array().unwrap().len(), 3);
        assert_eq!(json["summary"], serde_json::Value::Null);
    }

    #[test]
    fn a_report_that_cannot_be_written_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-folder");
        std::fs::write(&blocker, "a file").unwrap();
        let error = write(&blocker.join("report"), &single_run()).unwrap_err();
        assert!(error.path.starts_with(&blocker), "{error:?}");
        assert!(!error.reason.is_empty());
    }

    #[test]
    fn an_empty_run_still_draws() {
        let mut results = single_run();
        results.timeseries.clear();
        results.summary = None;
        let svg = timeseries_svg(&results.timeseries).unwrap();
        assert_valid_svg(&svg);
        let dir = tempfile::tempdir().unwrap();
        assert!(write(dir.path(), &results).is_ok());
    }

    #[test]
    fn machine_facts_come_from_proc_text() {
        let cpuinfo = "processor\t: 0\nmodel name\t: Test CPU 3000 @ 3.0GHz\n\nprocessor\t: 1\nmodel name\t: Test CPU 3000 @ 3.0GHz\n";
        assert_eq!(
            cpuinfo_model(cpuinfo).as_deref(),
            Some("Test CPU 3000 @ 3.0GHz")
        );
        assert_eq!(cpuinfo_cores(cpuinfo), 2);
        assert_eq!(cpuinfo_model("processor : 0\n"), None);
        assert_eq!(
            meminfo_total_bytes("MemFree:  10 kB\nMemTotal:       24576000 kB\n"),
            Some(24_576_000 * 1024)
        );
        assert_eq!(meminfo_total_bytes("MemTotal: lots\n"), None);
    }
}

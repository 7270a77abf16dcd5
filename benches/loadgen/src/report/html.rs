//! The report's page: one self-contained HTML file (inline CSS and SVG, no script).

use std::fmt::Write as _;

use super::RunResults;
use crate::results::{Percentiles, Summary};
use crate::sweep::SweepResults;

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
pub fn page(
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

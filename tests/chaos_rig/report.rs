//! The chaos run's report: a markdown table a person reads in a minute (fault → client errors →
//! recovery → billing exact) and an SVG of answers per second with the fault windows shaded.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::{FaultResult, Sample};

const OK_COLOR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const ERROR_COLOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const FAULT_COLOR: RGBColor = RGBColor(0xff, 0xe0, 0xb0);
const GRID_COLOR: RGBColor = RGBColor(0xee, 0xee, 0xee);
const FONT: &str = "sans-serif";

/// Everything the report shows.
pub struct RunSummary<'a> {
    pub title: &'a str,
    pub results: &'a [FaultResult],
    pub samples: &'a [Sample],
    pub peak_rss: &'a [(&'static str, u64)],
    pub stack_rss: &'a [(String, u64)],
    pub stack_start_s: f64,
    pub photos: &'a str,
    pub tenants: usize,
    pub clients: usize,
    pub problems: &'a [String],
    /// 200s handed over at an api kill and billed `resized` (the two-generals window).
    pub handoff_losses: usize,
}

/// The table rows, also printed by the test.
pub fn table(results: &[FaultResult]) -> String {
    let mut out = String::from(
        "| fault | fault lasted | ok | client errors (by code) | whole again after the fault was lifted | exited, restarted by supervisor | billing exact |\n|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let errors = if r.errors.is_empty() {
            "none".to_string()
        } else {
            r.errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let last = if r.last_ready.is_empty() {
            String::new()
        } else {
            format!(" (last ready: {})", r.last_ready.join(", "))
        };
        let recovered = r.recovered.map_or("not within bound".to_string(), |t| {
            format!("{:.1} s{last}", (t - r.end).as_secs_f64())
        });
        // Until the servers answered again: a restarted broker or registry takes its start-up
        // time on top of the pause the fault names.
        let lasted = format!("{:.1} s", (r.end - r.start).as_secs_f64());
        let billing = match r.billing_exact {
            Some(true) => format!("yes ({})", r.billing_detail),
            Some(false) => format!("**no** ({})", r.billing_detail),
            None => "unchecked".into(),
        };
        let restarted = if r.restarted.is_empty() {
            "none".to_string()
        } else {
            r.restarted.join(", ")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.fault, lasted, r.ok, errors, recovered, restarted, billing
        );
    }
    out
}

/// Writes `README.md` and `timeline.svg` into `dir`.
pub fn write(dir: &Path, run: &RunSummary<'_>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("timeline.svg"), timeline_svg(run)).unwrap();
    let mut md = format!("# {}\n\n", run.title);
    let total = run.samples.len();
    let ok = run.samples.iter().filter(|s| s.status == 200).count();
    let _ = writeln!(
        md,
        "{} requests from {} clients over {} tenants ({}), {} answered 200; faults one at a \
         time, each after 5 s of steady load. Stack of its own: 3 KRaft nodes, registry, \
         ClickHouse (up in {:.0} s).\n",
        total, run.clients, run.tenants, run.photos, ok, run.stack_start_s
    );
    let verdict = if run.problems.is_empty() {
        let handoff = if run.handoff_losses == 0 {
            String::new()
        } else {
            format!(
                " except {} handed to the client at the very instant the api was killed -9: its \
                 `ok` record died with it, and the request is billed `resized` once (the api \
                 bills `ok` only after handing the image over, never before)",
                run.handoff_losses
            )
        };
        format!(
            "**Every 200 was billed `ok` exactly once{handoff}, and nothing else was billed \
             `ok`.** No request hung past its deadline. Services that exited instead of healing \
             in place are named in the table (the rig restarted them, as a supervisor would)."
        )
    } else {
        format!("**Problems:** {}", run.problems.join("; "))
    };
    let _ = writeln!(md, "{verdict}\n\n{}", table(run.results));
    let _ = writeln!(
        md,
        "Client errors count requests in flight between the fault and the recovery. \"Fault \
         lasted\" runs until the servers answered again (a restarted broker or registry adds its \
         start-up to the pause the fault names). \"Whole again\" counts from then until every \
         service answered `/readyz` 200 and a request made after the fault was lifted got its \
         image; the services named were the last to be ready.\n\n![answers per second, faults shaded](timeline.svg)\n"
    );
    let _ = writeln!(
        md,
        "Peak RSS over the run (MiB):\n\n| process | peak RSS |\n|---|---|"
    );
    for (name, mib) in run.peak_rss {
        let _ = writeln!(md, "| {name} | {mib} |");
    }
    for (name, mib) in run.stack_rss {
        let _ = writeln!(md, "| {name} (at the end) | {mib} |");
    }
    std::fs::write(dir.join("README.md"), md).unwrap();
}

fn timeline_svg(run: &RunSummary<'_>) -> String {
    let end = run
        .samples
        .iter()
        .map(|s| s.end.as_secs())
        .max()
        .unwrap_or(1) as usize
        + 1;
    let mut ok = vec![0u32; end];
    let mut errors = vec![0u32; end];
    for s in run.samples {
        let second = s.end.as_secs() as usize;
        if s.status == 200 {
            ok[second] += 1;
        } else {
            errors[second] += 1;
        }
    }
    let y_max = ok.iter().chain(&errors).copied().max().unwrap_or(1) as f64 * 1.4 + 1.0;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 360)).into_drawing_area();
        root.fill(&WHITE).unwrap();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Answers per second (shaded: fault until recovery)",
                (FONT, 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..end as f64, 0.0..y_max)
            .unwrap();
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID_COLOR)
            .x_desc("time since start (s)")
            .y_desc("answers/s")
            .draw()
            .unwrap();
        for r in run.results {
            let from = r.start.as_secs_f64();
            let to = r.recovered.unwrap_or(r.end).as_secs_f64();
            chart
                .draw_series([Rectangle::new(
                    [(from, 0.0), (to, y_max)],
                    FAULT_COLOR.filled(),
                )])
                .unwrap();
            chart
                .draw_series([Text::new(
                    short(&r.fault),
                    (from, y_max * 0.97),
                    (FONT, 11).into_font().color(&BLACK),
                )])
                .unwrap();
        }
        chart
            .draw_series(LineSeries::new(
                ok.iter()
                    .enumerate()
                    .map(|(t, v)| (t as f64, f64::from(*v))),
                OK_COLOR.stroke_width(2),
            ))
            .unwrap()
            .label("200/s")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], OK_COLOR.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(
                errors
                    .iter()
                    .enumerate()
                    .map(|(t, v)| (t as f64, f64::from(*v))),
                ERROR_COLOR.stroke_width(2),
            ))
            .unwrap()
            .label("errors/s")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], ERROR_COLOR.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .label_font((FONT, 12))
            .draw()
            .unwrap();
        root.present().unwrap();
    }
    svg
}

/// A label short enough for a shaded window.
fn short(fault: &str) -> String {
    fault.split(" (").next().unwrap_or(fault).to_string()
}

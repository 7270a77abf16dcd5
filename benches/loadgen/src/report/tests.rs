use std::collections::BTreeMap;

use plotters::prelude::RGBColor;

use super::charts::*;
use super::machine::{cpuinfo_cores, cpuinfo_model, meminfo_total_bytes};
use super::*;
use crate::results::Percentiles;
use crate::stages::StageStats;
use crate::sweep::{StepResult, Verdict};

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
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
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

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap())
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

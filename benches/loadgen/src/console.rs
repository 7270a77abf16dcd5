//! What a run prints on the terminal: the summary table (stdout) and its cells.

use crate::results::{Percentiles, Summary};

/// A value in ms with one decimal, or `-` when there is none.
pub fn cell(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

/// Prints the summary to stdout. `benches/pipeline_load.sh` reads the first line's
/// `(N ok = X ok/s)`: keep its format.
pub fn print_summary(summary: &Summary) {
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

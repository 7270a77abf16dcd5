//! Fault tolerance under load, on a stack of the test's own (3 KRaft nodes, registry, ClickHouse
//! on free ports) so the faults never disturb the shared stack other tests use. Every imgpipe
//! service runs as its own process; clients of several tenants send photos the whole time; faults
//! come one at a time, each bounded. For each fault: no request hangs past its deadline, every
//! service becomes ready again by itself, and — checked at the end against ClickHouse — every 200
//! is billed `ok` exactly once and nothing else is billed `ok`.
//!
//! `chaos_short`: kill -9 of the resizer, kill -9 of one broker, ClickHouse stopped 15 s, one
//! broker's network delayed (about two minutes with the stack's start).
//! `chaos_full` (`cargo test --features stack-tests --test chaos -- --ignored --nocapture`):
//! every fault of the suite; writes its report (markdown and SVG) to `IMGPIPE_CHAOS_REPORT`
//! (default `target/chaos-report`).
#![cfg(feature = "stack-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)] // tests fail by panicking

mod chaos_rig;
mod support;

use std::time::{Duration, Instant};

use chaos_rig::{Fault, FaultResult, Rig, progress, report};

const TENANTS: usize = 3;
const CLIENTS: usize = 4;

/// Runs `faults` one after another and checks everything the suite promises; returns the rig
/// (for the report), the results and the problems (billing, or a service not ready at the end).
async fn run(faults: &[Fault]) -> (Rig, Vec<FaultResult>, Vec<String>) {
    let mut rig = Rig::start(3, TENANTS).await;
    rig.start_load(CLIENTS);
    let mut results = Vec::new();
    for fault in faults {
        results.push(rig.inject(fault).await);
    }
    // Longer than the services' stall bound (10 s here), so a stall a fault left behind shows.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let settled = rig.settled(Duration::from_secs(30)).await;
    rig.stop_load().await;
    progress(rig.t0, "load stopped; comparing answers with billing");
    let mut problems = rig.check_billing(&mut results).await;
    if !settled {
        problems.push("not every service was ready at the end of the run (see its log)".into());
    }
    println!("{}", report::table(&results));
    let handoff = rig.handoff_losses.lock().unwrap().clone();
    if !handoff.is_empty() {
        println!(
            "handed over at an api kill, billed `resized` (the one allowed loss): {handoff:?}"
        );
    }
    for (name, mib) in rig.peak_rss() {
        println!("peak RSS {name}: {mib} MiB");
    }
    (rig, results, problems)
}

/// The suite's checks, each of which fails the test: no hang, ready again by itself (no
/// service exited and needed the rig to start it), something answered, billing exact.
fn assert_whole(results: &[FaultResult], problems: &[String]) {
    for r in results {
        assert_eq!(r.hung, 0, "{}: requests hung past their deadline", r.fault);
        assert!(
            r.recovered.is_some(),
            "{}: not ready again within {:?}",
            r.fault,
            chaos_rig::RECOVERY_BOUND
        );
        assert!(
            r.ok > 0,
            "{}: no request succeeded around the fault",
            r.fault
        );
        assert!(
            r.restarted.is_empty(),
            "{}: {:?} exited instead of healing in place",
            r.fault,
            r.restarted
        );
    }
    assert!(problems.is_empty(), "the run is not whole: {problems:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_short() {
    let started = Instant::now();
    let (rig, results, problems) = run(&[
        Fault::KillService("resizer", Duration::from_secs(2)),
        Fault::KillBroker(2, Duration::from_secs(5)),
        Fault::StopServer("clickhouse", Duration::from_secs(15)),
        Fault::NetDelay(3, Duration::from_millis(100), Duration::from_secs(10)),
    ])
    .await;
    assert_whole(&results, &problems);
    progress(
        rig.t0,
        &format!("done in {:.0}s", started.elapsed().as_secs_f64()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the full suite (about 9 minutes): cargo test --features stack-tests --test chaos -- --ignored --nocapture"]
async fn chaos_full() {
    let pause = Duration::from_secs(3);
    let (rig, results, problems) = run(&[
        Fault::KillService("api", pause),
        Fault::KillService("resizer", pause),
        Fault::KillService("aggregator", pause),
        Fault::KillService("identity", pause),
        Fault::KillBroker(2, Duration::from_secs(10)),
        Fault::KillController(Duration::from_secs(10)),
        Fault::KillTwoBrokers(Duration::from_secs(15)),
        Fault::StopServer("clickhouse", Duration::from_secs(30)),
        Fault::StopServer("registry", Duration::from_secs(30)),
        Fault::StopKafka(Duration::from_secs(20)),
        Fault::NetDelay(2, Duration::from_millis(200), Duration::from_secs(20)),
        Fault::NetPartition(Duration::from_secs(20)),
        Fault::NetPartitionCoordinator("api-replies", Duration::from_secs(45)),
    ])
    .await;
    let dir = std::env::var_os("IMGPIPE_CHAOS_REPORT").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/chaos-report"),
        std::path::PathBuf::from,
    );
    let samples = rig.samples();
    let peak_rss = rig.peak_rss();
    let stack_rss = rig.stack.rss();
    report::write(
        &dir,
        &report::RunSummary {
            title: "imgpipe chaos suite",
            results: &results,
            samples: &samples,
            peak_rss: &peak_rss,
            stack_rss: &stack_rss,
            stack_start_s: rig.stack.start_time.as_secs_f64(),
            photos: &rig.photo_source,
            tenants: TENANTS,
            clients: CLIENTS,
            problems: &problems,
            handoff_losses: rig.handoff_losses.lock().unwrap().len(),
        },
    );
    progress(rig.t0, &format!("report written to {}", dir.display()));
    assert_whole(&results, &problems);
}

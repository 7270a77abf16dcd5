//! Two resizer processes under load, one killed with SIGKILL mid-run: every request still gets
//! an answer (the image, or a clean problem), none hangs, and no request is billed twice — the
//! killed resizer's open transaction is aborted and the survivor redoes exactly its work.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)] // tests and benches fail by panicking

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use imgpipe::host::Service;
use rdkafka::Message;
use rdkafka::consumer::StreamConsumer;
use reqwest::StatusCode;
use schemas::Codec;
use schemas::events::{UsageRecorded, UsageSource};

use crate::support;

/// A resizer in its own process, killed on drop if still running.
struct ResizerProcess {
    child: Child,
    ops: SocketAddr,
}

impl Drop for ResizerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_resizer(config: &imgpipe::Config, instance: &str) -> ResizerProcess {
    spawn_resizer_logging(config, instance, Stdio::inherit())
}

/// [`spawn_resizer`] with its log (stderr) going to `stderr`.
fn spawn_resizer_logging(
    config: &imgpipe::Config,
    instance: &str,
    stderr: impl Into<Stdio>,
) -> ResizerProcess {
    let ops = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let child = Command::new(env!("CARGO_BIN_EXE_imgpipe"))
        .arg("resizer")
        .env("IMGPIPE_KAFKA__BROKERS", &config.kafka.brokers)
        .env("IMGPIPE_KAFKA__NAMESPACE", &config.kafka.namespace)
        .env("IMGPIPE_REGISTRY__URL", &config.registry.url)
        .env("IMGPIPE_RESIZER__INSTANCE_ID", instance)
        .env("IMGPIPE_RESIZER__WORKERS", "1")
        .env("IMGPIPE_OPS__LISTEN", ops.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("the imgpipe binary starts");
    ResizerProcess { child, ops }
}

async fn wait_process_ready(process: &mut ResizerProcess) {
    let url = format!("http://{}/readyz", process.ops);
    for _ in 0..300 {
        assert!(
            process.child.try_wait().unwrap().is_none(),
            "resizer exited while starting"
        );
        if reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("resizer not ready after 30 s");
}

#[tokio::test]
async fn a_resizer_killed_under_load_loses_and_duplicates_nothing() {
    let mut config = support::provisioned("failover").await;
    let api = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let identity = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    config.api.listen = api;
    config.identity.listen = identity;
    config.identity.admin_token = support::ADMIN_TOKEN.into();
    // The survivor only takes over after the group notices the death (session timeout, 10 s).
    config.api.request_timeout = Duration::from_secs(25);
    let hosted = support::host(config.clone(), &[Service::Identity, Service::Api]).await;
    let mut first = spawn_resizer(&config, "failover-a");
    let mut second = spawn_resizer(&config, "failover-b");
    wait_process_ready(&mut first).await;
    wait_process_ready(&mut second).await;
    let key = support::create_tenant_key(identity, "failover", 10_000, 10_000).await;

    let http = reqwest::Client::new();
    let photo = support::images::jpeg(1600, 1200);
    support::eventually(Duration::from_secs(20), "the pipeline to answer", || {
        let (http, key, photo) = (http.clone(), key.api_key.clone(), photo.clone());
        async move {
            let response = http
                .post(format!("http://{api}/v1/resize?width=64"))
                .bearer_auth(key)
                .body(photo)
                .send()
                .await
                .ok()?;
            (response.status() == StatusCode::OK).then_some(())
        }
    })
    .await;

    const REQUESTS: usize = 80;
    const CONCURRENCY: usize = 8;
    let done = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (http, key, photo) = (http.clone(), key.api_key.clone(), photo.clone());
            let (done, next) = (done.clone(), next.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while next.fetch_add(1, Ordering::SeqCst) < REQUESTS {
                    let response = http
                        .post(format!("http://{api}/v1/resize?width=800&format=webp"))
                        .bearer_auth(&key)
                        .body(photo.clone())
                        .timeout(Duration::from_secs(40))
                        .send()
                        .await
                        .expect("every request is answered, none hangs");
                    let status = response.status();
                    let request_id = response.headers()["x-request-id"]
                        .to_str()
                        .unwrap()
                        .to_owned();
                    let content_type = response.headers()["content-type"]
                        .to_str()
                        .unwrap()
                        .to_owned();
                    let body = response.bytes().await.unwrap();
                    if status == StatusCode::OK {
                        assert_eq!(content_type, "image/webp");
                        assert!(!body.is_empty());
                    } else {
                        assert_eq!(content_type, "application/problem+json", "{status}");
                    }
                    answers.push((request_id, status));
                    done.fetch_add(1, Ordering::SeqCst);
                }
                answers
            })
        })
        .collect();

    // Kill one resizer with SIGKILL once the run is well under way.
    support::eventually(Duration::from_secs(60), "a quarter of the requests", || {
        let done = done.load(Ordering::SeqCst);
        async move { (done >= REQUESTS / 4).then_some(()) }
    })
    .await;
    first.child.kill().expect("SIGKILL");
    first.child.wait().expect("reaped");

    let mut answers = Vec::new();
    for worker in workers {
        answers.extend(worker.await.expect("worker finished"));
    }
    let elapsed = started.elapsed();
    assert_eq!(answers.len(), REQUESTS);
    let statuses: HashMap<StatusCode, usize> =
        answers.iter().fold(HashMap::new(), |mut m, (_, s)| {
            *m.entry(*s).or_default() += 1;
            m
        });
    // Only the deadline may turn a request into an error here, and it must not be the norm.
    for status in statuses.keys() {
        assert!(
            *status == StatusCode::OK || *status == StatusCode::GATEWAY_TIMEOUT,
            "unexpected {status}: {statuses:?}"
        );
    }
    assert!(
        statuses.get(&StatusCode::OK).copied().unwrap_or(0) >= REQUESTS * 3 / 4,
        "{statuses:?}"
    );
    assert!(elapsed < Duration::from_secs(120), "took {elapsed:?}");

    // Exactly once: every answered image has exactly one committed usage record.
    let (codec, consumer) = support::usage_reader(&config, "failover-usage-check");
    let ok: Vec<&String> = answers
        .iter()
        .filter(|(_, s)| *s == StatusCode::OK)
        .map(|(id, _)| id)
        .collect();
    // One record per writer: the resizer's (`resized`, in its transaction) and the api's (`ok`).
    let mut records: HashMap<(String, UsageSource), usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let both = |records: &HashMap<(String, UsageSource), usize>, id: &String| {
        [UsageSource::Resizer, UsageSource::Api]
            .into_iter()
            .all(|source| records.contains_key(&(id.clone(), source)))
    };
    while !ok.iter().all(|id| both(&records, id)) && Instant::now() < deadline {
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await
        else {
            continue;
        };
        let usage: UsageRecorded = codec.decode(message.payload().unwrap()).await.unwrap();
        *records.entry((usage.request_id, usage.source)).or_default() += 1;
    }
    // Drain what else is committed, so a late duplicate would be seen too.
    while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await
    {
        let usage: UsageRecorded = codec.decode(message.payload().unwrap()).await.unwrap();
        *records.entry((usage.request_id, usage.source)).or_default() += 1;
    }
    for id in &ok {
        for source in [UsageSource::Resizer, UsageSource::Api] {
            assert_eq!(
                records.get(&((*id).clone(), source)),
                Some(&1),
                "request {id} must be recorded exactly once by {source:?}"
            );
        }
    }
    let twice: Vec<_> = records.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "double-counted requests: {twice:?}");

    drop(second);
    hosted.stop().await;
}

/// The registry of `config`, put behind a proxy the test can cut; returns the proxy and the
/// real registry's settings (for writing requests while the service's registry is gone).
async fn registry_behind_proxy(
    config: &mut imgpipe::Config,
) -> (support::outage::Outage, schemas::RegistryConfig) {
    let real = config.registry.clone();
    let registry: SocketAddr = real
        .url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proxy = support::outage::Outage::proxy(registry).await;
    config.registry.url = real
        .url
        .replace(&registry.to_string(), &proxy.address.to_string());
    (proxy, real)
}

/// Writes one valid resize request straight to image.requests (no api involved).
async fn produce_request(config: &imgpipe::Config, registry: &schemas::RegistryConfig, id: &str) {
    let request = support::resize_request(config, id, "t", 0);
    support::produce_request(config, registry, &request, None).await;
}

/// `/readyz`'s check `name`: (ready, reason).
async fn readiness_check(ops: SocketAddr, name: &str) -> Option<(bool, String)> {
    let body: serde_json::Value = reqwest::get(format!("http://{ops}/readyz"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let check = body.get("checks")?.get(name)?;
    Some((
        check.get("ready")?.as_bool()?,
        check.get("reason")?.as_str()?.to_owned(),
    ))
}

/// While the schema registry is down, a resizer retries decoding a request it cannot read yet;
/// that wait used to ignore shutdown, so SIGTERM never got through. It now stops promptly, and
/// leaves the unread request uncommitted for the next owner of its partition.
#[tokio::test]
async fn a_resizer_stops_promptly_while_the_registry_is_down() {
    let mut config = support::provisioned("resizer_registry_down").await;
    let (proxy, real) = registry_behind_proxy(&mut config).await;
    let hosted = support::host(config.clone(), &[Service::Resizer]).await;

    // A valid request, written with the real registry; the resizer has never seen its schema id.
    proxy.cut();
    produce_request(&config, &real, "registry-down-1").await;
    // Let the resizer take the record and start waiting for the registry.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = Instant::now();
    hosted.stop().await; // panics if the services do not stop within 30 s
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    drop(proxy);
}

/// A resizer that holds work and commits nothing for longer than `stall_after` says so on
/// `/readyz` (check `resizer_progress`, with the reason) even though it is connected and its
/// loop is blocked; once it makes progress again the check turns ready by itself.
#[tokio::test]
async fn a_stalled_resizer_says_so_on_readyz_and_recovers() {
    let mut config = support::provisioned("resizer_stall").await;
    config.resizer.stall_after = Duration::from_secs(1);
    let (proxy, real) = registry_behind_proxy(&mut config).await;
    let hosted = support::host(config.clone(), &[Service::Resizer]).await;
    assert_eq!(
        readiness_check(hosted.ops, "resizer_progress").await,
        Some((true, String::new()))
    );

    proxy.cut();
    produce_request(&config, &real, "stall-1").await;
    let reason = support::eventually(Duration::from_secs(20), "the stall to show", || async {
        match readiness_check(hosted.ops, "resizer_progress").await {
            Some((false, reason)) => Some(reason),
            _ => None,
        }
    })
    .await;
    assert!(reason.contains("no progress"), "{reason}");
    let metrics = reqwest::get(format!("http://{}/metrics", hosted.ops))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("imgpipe_consumer_stalled{consumer=\"resizer\"} 1"),
        "{metrics}"
    );

    proxy.restore();
    support::eventually(
        Duration::from_secs(20),
        "the resizer to recover",
        || async {
            match readiness_check(hosted.ops, "resizer_progress").await {
                Some((true, _)) => Some(()),
                _ => None,
            }
        },
    )
    .await;
    hosted.stop().await;
}

/// Fences the transactional id `id` (namespaced) the way a coordinator does after a broker
/// outage or a second process with the same id does: a new producer initialises transactions
/// with it, which bumps the epoch, so the old producer's next write fails fatally.
async fn fence(config: &imgpipe::Config, id: &str) {
    let producer = config
        .kafka
        .transactional_producer(id)
        .await
        .expect("a producer with the resizer's transactional id");
    drop(producer);
}

/// `imgpipe_resizer_transactions_total{outcome}` of the resizer behind `ops`.
async fn transactions(ops: SocketAddr, outcome: &str) -> Option<u64> {
    let series = format!("imgpipe_resizer_transactions_total{{outcome=\"{outcome}\"}}");
    // A counter: a whole number, exact in an f64.
    support::metric(&format!("http://{ops}"), &series)
        .await
        .map(|v| v as u64)
}

/// Reads committed usage records into `seen` (request id → records by the resizer) until
/// `done(seen)` or `timeout`.
async fn read_resizer_usage(
    consumer: &StreamConsumer,
    codec: &Codec,
    seen: &mut HashMap<String, usize>,
    timeout: Duration,
    done: impl Fn(&HashMap<String, usize>) -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !done(seen) && Instant::now() < deadline {
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        else {
            continue;
        };
        let usage: UsageRecorded = codec.decode(message.payload().unwrap()).await.unwrap();
        if usage.source == UsageSource::Resizer {
            *seen.entry(usage.request_id).or_default() += 1;
        }
    }
}

/// A resizer whose transactional producer is fenced from outside does not exit: it replaces the
/// producer in-process, re-reads what was not committed, and every request is billed exactly
/// once. Fenced again and again (as by a second process with its `instance_id`), it stops after
/// three replacements with an error that says so, and another resizer finishes its work.
#[tokio::test]
async fn a_fenced_resizer_replaces_its_producer_and_bills_exactly_once() {
    let config = support::provisioned("resizer_fenced").await;
    let registry = config.registry.clone();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut resizer = spawn_resizer_logging(&config, "fenced", log.reopen().unwrap());
    wait_process_ready(&mut resizer).await;

    let (codec, consumer) = support::usage_reader(&config, "fenced-usage-check");
    let mut seen = HashMap::new();

    // Before any fence: one request, billed.
    produce_request(&config, &registry, "fenced-0").await;
    read_resizer_usage(&consumer, &codec, &mut seen, Duration::from_secs(30), |s| {
        s.contains_key("fenced-0")
    })
    .await;
    assert_eq!(seen.get("fenced-0"), Some(&1), "{seen:?}");

    // Three fences: each time the resizer replaces its producer and bills the next request once.
    for round in 1..=3u64 {
        fence(&config, "resizer-fenced").await;
        let id = format!("fenced-{round}");
        produce_request(&config, &registry, &id).await;
        read_resizer_usage(&consumer, &codec, &mut seen, Duration::from_secs(60), |s| {
            s.contains_key(&id)
        })
        .await;
        assert_eq!(seen.get(&id), Some(&1), "round {round}: {seen:?}");
        assert!(
            resizer.child.try_wait().unwrap().is_none(),
            "round {round}: the resizer exited instead of replacing its producer"
        );
        assert_eq!(
            transactions(resizer.ops, "fatal").await,
            Some(round),
            "round {round}: one fatal transaction per fence"
        );
        support::eventually(Duration::from_secs(10), "readiness back", || async {
            readiness_check(resizer.ops, "resizer")
                .await
                .filter(|(ready, _)| *ready)
        })
        .await;
    }

    // A fourth within the window: something keeps fencing it, so it stops, saying why.
    fence(&config, "resizer-fenced").await;
    produce_request(&config, &registry, "fenced-4").await;
    let status = support::eventually(Duration::from_secs(60), "the resizer to stop", || {
        let status = resizer.child.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(!status.success(), "{status}");
    let stderr = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        stderr.contains("same instance_id"),
        "the error names the likely cause: {stderr}"
    );

    // Its uncommitted request is not lost: another resizer bills it, once.
    let mut other = spawn_resizer(&config, "fenced-other");
    wait_process_ready(&mut other).await;
    read_resizer_usage(&consumer, &codec, &mut seen, Duration::from_secs(60), |s| {
        s.contains_key("fenced-4")
    })
    .await;
    // Drain what else is committed, so a late duplicate would be seen too.
    read_resizer_usage(&consumer, &codec, &mut seen, Duration::from_secs(3), |_| {
        false
    })
    .await;
    let expected: HashMap<String, usize> = (0..=4).map(|i| (format!("fenced-{i}"), 1)).collect();
    assert_eq!(
        seen, expected,
        "every request billed by the resizer exactly once"
    );
}

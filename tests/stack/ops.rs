//! The operators' tools over the real stack: an offset reset by time is refused while the group
//! has members and exact afterwards; a DLQ redrive that dies half-way neither loses nor doubles a
//! record and each redriven request is billed once; `tail` decodes every topic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)] // tests fail by panicking

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use imgpipe::Config;
use imgpipe_ops::dlq::{self, ActArgs, DlqFilter};
use imgpipe_ops::offsets::{self, ResetTarget};
use imgpipe_ops::tail::{Tail, TailArgs};
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use schemas::topics::{IMAGE_REQUESTS, IMAGE_REQUESTS_DLQ, USAGE_EVENTS};

use crate::support;

/// Sends `count` records keyed `{prefix}-{i}` to `topic`, returning each key's (partition, offset).
async fn produce(
    config: &Config,
    topic: &str,
    prefix: &str,
    count: usize,
) -> Vec<(String, i32, i64)> {
    let producer = config.kafka.producer().unwrap();
    let topic = config.kafka.name(topic);
    let mut written = Vec::new();
    for i in 0..count {
        let key = format!("{prefix}-{i}");
        let delivery = producer
            .send(
                FutureRecord::to(&topic).key(&key).payload("x"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        written.push((key, delivery.partition, delivery.offset));
    }
    written
}

/// Reads `topic` from the group's committed offsets until `expected` records or 10 s of silence,
/// and commits what it read; returns the keys.
async fn consume_as_group(
    config: &Config,
    group: &str,
    topic: &str,
    expected: usize,
) -> Vec<String> {
    let consumer: StreamConsumer = config
        .kafka
        .group_consumer_config(group, chassis::kafka::ConsumerProfile::AtLeastOnce)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&config.kafka.name(topic)]).unwrap();
    let mut keys = Vec::new();
    while keys.len() < expected {
        match tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await {
            Ok(message) => {
                let message = message.unwrap();
                keys.push(String::from_utf8_lossy(message.key().unwrap()).into_owned());
                consumer.store_offset_from_message(&message).unwrap();
            }
            Err(_) => break,
        }
    }
    // A few more seconds: anything beyond `expected` is a replay error the caller must see.
    while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await
    {
        keys.push(String::from_utf8_lossy(message.key().unwrap()).into_owned());
        consumer.store_offset_from_message(&message).unwrap();
    }
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    consumer.unsubscribe();
    keys
}

#[tokio::test]
async fn an_offset_reset_by_time_is_refused_while_the_group_is_active_and_exact_afterwards() {
    let config = support::provisioned("ops_offsets").await;
    let group = "replayers";
    let before = produce(&config, USAGE_EVENTS, "before", 30).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cut = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = produce(&config, USAGE_EVENTS, "after", 30).await;
    assert_eq!(
        consume_as_group(&config, group, USAGE_EVENTS, 60)
            .await
            .len(),
        60
    );

    // A member holds the group: the plan is shown, the reset refused.
    let member: StreamConsumer = config
        .kafka
        .group_consumer_config(group, chassis::kafka::ConsumerProfile::AtLeastOnce)
        .create()
        .unwrap();
    member
        .subscribe(&[&config.kafka.name(USAGE_EVENTS)])
        .unwrap();
    let kafka = config.kafka.clone();
    let active = support::eventually(Duration::from_secs(30), "the member to join", || {
        let kafka = kafka.clone();
        let member = &member;
        async move {
            // Polling keeps the member's join going.
            let _ = tokio::time::timeout(Duration::from_millis(200), member.recv()).await;
            let plan = tokio::task::spawn_blocking(move || {
                offsets::plan_reset(
                    &kafka,
                    "replayers",
                    Some(USAGE_EVENTS),
                    ResetTarget::Datetime(cut),
                )
            })
            .await
            .unwrap()
            .unwrap();
            (plan.state.members > 0).then_some(plan)
        }
    })
    .await;
    let refusal = offsets::execute_reset(&config.kafka, &active).unwrap_err();
    assert!(
        matches!(refusal, imgpipe_ops::OpsError::Refused(_)),
        "{refusal}"
    );
    assert!(refusal.to_string().contains("member"), "{refusal}");
    drop(member);

    // Once it left, the plan lands exactly on the first record at or after the cut.
    let kafka = config.kafka.clone();
    let plan = support::eventually(Duration::from_secs(30), "the group to empty", || {
        let kafka = kafka.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let plan =
                    offsets::plan_reset(&kafka, "replayers", None, ResetTarget::Datetime(cut))
                        .unwrap();
                (plan.state.members == 0).then_some(plan)
            })
            .await
            .unwrap()
        }
    })
    .await;
    let mut first_after: BTreeMap<i32, i64> = BTreeMap::new();
    for (_, partition, offset) in &after {
        let first = first_after.entry(*partition).or_insert(*offset);
        *first = (*first).min(*offset);
    }
    for p in &plan.partitions {
        let expected = first_after.get(&p.partition).copied().unwrap_or(p.log_end);
        assert_eq!(p.target, Some(expected), "partition {}", p.partition);
        assert_eq!(
            p.committed,
            Some(p.log_end),
            "everything was read before the reset"
        );
    }
    let rendered = offsets::render(&plan, true);
    assert!(
        rendered.contains("TARGET") && rendered.contains("LAG-AFTER"),
        "{rendered}"
    );
    offsets::execute_reset(&config.kafka, &plan).unwrap();
    // Idempotent: the same reset again commits the same offsets.
    offsets::execute_reset(&config.kafka, &plan).unwrap();

    let replayed = consume_as_group(&config, group, USAGE_EVENTS, after.len()).await;
    let replayed: BTreeSet<String> = replayed.into_iter().collect();
    let expected: BTreeSet<String> = after.iter().map(|(k, ..)| k.clone()).collect();
    assert_eq!(
        replayed, expected,
        "exactly the records after the cut, once"
    );
    assert!(before.iter().all(|(k, ..)| !replayed.contains(k)));
}

/// A DLQ record as the resizer writes one: the original bytes and key, why, and where from.
fn dead_lettered(config: &Config, class: &str, source_offset: i64) -> OwnedHeaders {
    let source_topic = config.kafka.name(IMAGE_REQUESTS);
    let offset = source_offset.to_string();
    OwnedHeaders::new()
        .insert(Header {
            key: "traceparent",
            value: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        })
        .insert(Header {
            key: "error.class",
            value: Some(class),
        })
        .insert(Header {
            key: "error.message",
            value: Some("schema 42 not found"),
        })
        .insert(Header {
            key: "source.topic",
            value: Some(&source_topic),
        })
        .insert(Header {
            key: "source.partition",
            value: Some("0"),
        })
        .insert(Header {
            key: "source.offset",
            value: Some(&offset),
        })
}

// The crash is a fault point compiled into the binary only in `failpoints` builds.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_dlq_redrive_that_dies_half_way_neither_loses_nor_doubles_and_bills_each_request_once() {
    let config = support::provisioned("ops_redrive").await;
    let codec = schemas::Codec::new(&config.registry, &config.kafka.namespace);
    let producer = config.kafka.producer().unwrap();
    let dlq_topic = config.kafka.name(IMAGE_REQUESTS_DLQ);

    // Seven requests the resizers could not read at the time (say, the registry had lost their
    // schema), and three records of another class that must stay where they are.
    let mut redrivable = BTreeSet::new();
    for i in 0..7 {
        let id = uuid::Uuid::now_v7().to_string();
        let mut request = support::resize_request(&config, &id, "tenant-redrive", 0);
        request.deadline_at_ms += 600_000;
        let payload = codec.encode(&request).await.unwrap();
        producer
            .send(
                FutureRecord::to(&dlq_topic)
                    .key(&id)
                    .payload(&payload)
                    .headers(dead_lettered(&config, "undecodable_request", i)),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        redrivable.insert(id);
    }
    for i in 0..3 {
        producer
            .send(
                FutureRecord::to(&dlq_topic)
                    .key(&format!("other-{i}"))
                    .payload("not avro")
                    .headers(dead_lettered(&config, "unwritable_output", 100 + i)),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let filter = DlqFilter {
        error_class: Some("undecodable_request".into()),
        ..Default::default()
    };
    let listed = dlq::list(&config.kafka, &codec, &filter, false)
        .await
        .unwrap();
    assert_eq!(listed.len(), 7);
    assert!(
        listed
            .iter()
            .all(|e| e.tenant.as_deref() == Some("tenant-redrive"))
    );

    // A dry run changes nothing.
    let args = ActArgs {
        filter: filter.clone(),
        to_topic: None,
        max_redrives: 3,
        batch: 3,
        execute: false,
    };
    let dry = dlq::settle(&config.ops(), &codec, &args, dlq::Mode::Redrive)
        .await
        .unwrap();
    assert_eq!(dry.redriven.values().sum::<u64>(), 7);
    assert_eq!(dry.transactions, 0);

    // The real run, as the binary, dies before its second commit (3 of 7 records committed).
    let (brokers, namespace, registry) = (
        config.kafka.brokers.clone(),
        config.kafka.namespace.clone(),
        config.registry.url.clone(),
    );
    let run = move |failpoints: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_imgpipe"))
            .args([
                "ops",
                "dlq",
                "redrive",
                "--error-class",
                "undecodable_request",
                "--batch",
                "3",
                "--execute",
            ])
            .env("IMGPIPE_KAFKA__BROKERS", &brokers)
            .env("IMGPIPE_KAFKA__NAMESPACE", &namespace)
            .env("IMGPIPE_REGISTRY__URL", &registry)
            .env("RUST_LOG", "error")
            .env("FAILPOINTS", failpoints)
            .output()
            .expect("the imgpipe binary runs")
    };
    let crashed = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run("ops-dlq-before-commit=1*off->panic(injected crash)")
    })
    .await
    .unwrap();
    assert!(
        !crashed.status.success(),
        "{}",
        String::from_utf8_lossy(&crashed.stderr)
    );
    let pending = dlq::list(&config.kafka, &codec, &filter, false)
        .await
        .unwrap();
    let committed = redriven_requests(&config).await;
    assert!(
        (1..=3).contains(&committed.len()),
        "the first transaction committed, the second did not: {committed:?}; the run said: {}",
        String::from_utf8_lossy(&crashed.stderr)
    );
    assert_eq!(
        pending.len() + committed.len(),
        7,
        "what was redriven left the pending set"
    );

    // The re-run fences the dead one (aborting its open transaction) and does the rest.
    let rerun = tokio::task::spawn_blocking(move || run("")).await.unwrap();
    let stdout = String::from_utf8_lossy(&rerun.stdout);
    assert!(
        rerun.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert!(
        stdout.contains(&format!("redrive {}, purge 0, keep 3", pending.len())),
        "{stdout}"
    );

    // image.requests holds each redriven request exactly once, committed, with its headers.
    let seen = redriven_requests(&config).await;
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), redrivable);
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");

    // The other class stays pending (appended again), nothing of the redriven class does.
    let left = dlq::list(&config.kafka, &codec, &DlqFilter::default(), false)
        .await
        .unwrap();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(left.iter().all(|e| e.error_class() == "unwritable_output"));
    // A second redrive finds nothing more to do.
    let again = dlq::settle(
        &config.ops(),
        &codec,
        &ActArgs {
            execute: true,
            ..args.clone()
        },
        dlq::Mode::Redrive,
    )
    .await
    .unwrap();
    assert_eq!(again.redriven.values().sum::<u64>(), 0);
    // Purging the rest empties the DLQ.
    let purged = dlq::settle(
        &config.ops(),
        &codec,
        &ActArgs {
            filter: DlqFilter::default(),
            execute: true,
            ..args.clone()
        },
        dlq::Mode::Purge,
    )
    .await
    .unwrap();
    assert_eq!(purged.purged, 3);
    assert!(
        dlq::list(&config.kafka, &codec, &DlqFilter::default(), false)
            .await
            .unwrap()
            .is_empty()
    );

    // A resizer now serves them: one final usage outcome per request.
    let hosted = support::host(config.clone(), &[imgpipe::host::Service::Resizer]).await;
    let usage_reader: StreamConsumer = config
        .kafka
        .reader_config(Duration::from_millis(100))
        .create()
        .unwrap();
    usage_reader
        .subscribe(&[&config.kafka.name(USAGE_EVENTS)])
        .unwrap();
    let mut billed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while billed.len() < redrivable.len() && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(message)) =
            tokio::time::timeout(Duration::from_secs(1), usage_reader.recv()).await
        {
            let usage: schemas::events::UsageRecorded =
                codec.decode(message.payload().unwrap()).await.unwrap();
            billed
                .entry(usage.request_id)
                .or_default()
                .push(usage.outcome);
        }
    }
    hosted.stop().await;
    while let Ok(Ok(message)) =
        tokio::time::timeout(Duration::from_secs(3), usage_reader.recv()).await
    {
        let usage: schemas::events::UsageRecorded =
            codec.decode(message.payload().unwrap()).await.unwrap();
        billed
            .entry(usage.request_id)
            .or_default()
            .push(usage.outcome);
    }
    assert_eq!(billed.keys().cloned().collect::<BTreeSet<_>>(), redrivable);
    for (id, outcomes) in &billed {
        assert_eq!(outcomes, &vec!["resized".to_owned()], "{id}");
    }
}

#[cfg(feature = "failpoints")]
/// The redriven records on image.requests (committed only), counted by key, after checking each
/// one's headers.
async fn redriven_requests(config: &Config) -> BTreeMap<String, usize> {
    use rdkafka::message::Headers;
    let reader: StreamConsumer = config
        .kafka
        .reader_config(Duration::from_millis(100))
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    reader
        .subscribe(&[&config.kafka.name(IMAGE_REQUESTS)])
        .unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut sources = BTreeSet::new();
    while let Ok(message) = tokio::time::timeout(Duration::from_secs(3), reader.recv()).await {
        let Ok(message) = message else { continue };
        let header = |name: &str| {
            message.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        assert_eq!(header("redrive.count").as_deref(), Some("1"));
        assert_eq!(
            header("redrive.error.class").as_deref(),
            Some("undecodable_request")
        );
        assert!(
            header("traceparent").is_some(),
            "the request's own headers stay"
        );
        assert!(header("error.class").is_none(), "the DLQ's headers go");
        assert!(
            sources.insert(header("redrive.from").unwrap()),
            "one DLQ record, one redrive"
        );
        *seen
            .entry(String::from_utf8_lossy(message.key().unwrap()).into_owned())
            .or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn tail_decodes_every_topic_and_shows_images_as_sizes() {
    let mut config = support::provisioned("ops_tail").await;
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let identity = std::net::SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    config.api.listen = api;
    config.identity.listen = identity;
    config.identity.admin_token = support::ADMIN_TOKEN.into();
    config.resizer.workers = 1;
    use imgpipe::host::Service;
    let hosted = support::host(
        config.clone(),
        &[Service::Identity, Service::Resizer, Service::Api],
    )
    .await;
    let key = support::create_tenant_key(identity, "tail", 100, 100).await;
    support::wait_for_key(api, &key.api_key).await;
    let response = reqwest::Client::new()
        .post(format!("http://{api}/v1/resize?width=8"))
        .bearer_auth(&key.api_key)
        .body(support::images::jpeg(32, 32))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    hosted.stop().await;
    // And one record the resizer could not read.
    config
        .kafka
        .producer()
        .unwrap()
        .send(
            FutureRecord::to(&config.kafka.name(IMAGE_REQUESTS_DLQ))
                .key("poison")
                .payload("not avro")
                .headers(dead_lettered(&config, "undecodable_request", 0)),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    let codec = schemas::Codec::new(&config.registry, &config.kafka.namespace);
    for spec in schemas::topics::CATALOGUE {
        let args = TailArgs {
            topic: spec.name.to_owned(),
            from_datetime: None,
            from_beginning: true,
            filters: Vec::new(),
            max: None,
            until_end: true,
            read_uncommitted: false,
        };
        let mut tail = Tail::open(&config.kafka, &args).unwrap();
        let mut lines = Vec::new();
        while let Some(line) = tokio::time::timeout(Duration::from_secs(20), tail.next(&codec))
            .await
            .expect("tail reaches the end")
            .unwrap()
        {
            lines.push(line);
        }
        assert!(!lines.is_empty(), "{}: no records", spec.name);
        for line in &lines {
            assert_eq!(line["topic"], config.kafka.name(spec.name));
            assert!(line["headers"].is_object(), "{line}");
            if spec.avro_value {
                assert!(line.get("undecodable").is_none(), "{}: {line}", spec.name);
                assert!(
                    line["schema"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("imgpipe.")),
                    "{line}"
                );
            } else {
                assert_eq!(line["value"]["bytes"], 8, "{line}");
                assert_eq!(line["headers"]["error.class"], "undecodable_request");
            }
        }
        match spec.name {
            IMAGE_REQUESTS => {
                let value = &lines[0]["value"];
                assert_eq!(value["tenant_id"], key.tenant_id.as_str());
                let size = value["image"]["bytes"].as_u64().unwrap();
                assert!(size > 100, "the image is shown as its size: {value}");
                assert!(lines[0]["headers"]["traceparent"].is_string());
            }
            schemas::topics::IMAGE_RESULTS => {
                assert!(
                    lines[0]["value"]["image"]["bytes"]["bytes"]
                        .as_u64()
                        .unwrap()
                        > 0,
                    "{}",
                    lines[0]
                );
            }
            USAGE_EVENTS => {
                assert!(
                    lines
                        .iter()
                        .all(|l| l["value"]["tenant_id"] == key.tenant_id.as_str())
                );
            }
            _ => {}
        }
    }
    // A filter on a field of the value.
    let args = TailArgs {
        topic: USAGE_EVENTS.into(),
        from_datetime: None,
        from_beginning: true,
        filters: vec![("tenant_id".into(), "somebody-else".into())],
        max: None,
        until_end: true,
        read_uncommitted: false,
    };
    let mut tail = Tail::open(&config.kafka, &args).unwrap();
    let mut matching = 0;
    while let Some(line) = tail.next(&codec).await.unwrap() {
        matching += usize::from(imgpipe_ops::tail::field_matches(
            &line,
            "tenant_id",
            "somebody-else",
        ));
    }
    assert_eq!(matching, 0);
}

/// Per tenant: requests and bytes in, as analysts read them (the exact per-minute view).
async fn analyst_totals(config: &Config) -> BTreeMap<String, (i64, i64)> {
    let db = &config.clickhouse.database;
    support::clickhouse(
        config,
        &format!(
            "SELECT tenant_id, sum(requests), sum(bytes_in) FROM {db}.usage_minute \
             GROUP BY tenant_id ORDER BY tenant_id FORMAT TSV"
        ),
    )
    .await
    .lines()
    .map(|line| {
        let f: Vec<&str> = line.split('\t').collect();
        (
            f[0].to_owned(),
            (f[1].parse().unwrap(), f[2].parse().unwrap()),
        )
    })
    .collect()
}

fn usage_event(i: usize, source: schemas::events::UsageSource) -> schemas::events::UsageRecorded {
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    schemas::events::UsageRecorded {
        request_id: uuid::Uuid::from_u128(0xfeed_0000 + i as u128).to_string(),
        tenant_id: format!("tenant-{}", i % 3),
        key_id: "key-1".into(),
        event_time_ms: now - (i % 120) as i64 * 1000,
        outcome: "ok".into(),
        status: 200,
        bytes_in: 1000 + i as i64,
        bytes_out: 100,
        pixels_in: 10_000,
        pixels_out: 500,
        cpu_time_us: 3000,
        input_format: Some("jpeg".into()),
        output_format: Some("webp".into()),
        latency_us: 5000,
        source,
        source_host: None,
    }
}

#[tokio::test]
async fn a_usage_rebuild_restores_exact_totals_from_kafka_and_is_refused_while_aggregators_run() {
    use schemas::events::UsageSource;
    let config = support::provisioned("ops_rebuild").await;
    let db = config.clickhouse.database.clone();
    // 60 requests, each recorded by the api and by a resizer (counted once by the views), and a
    // poison record that lands in usage_rejects.
    let mut events = Vec::new();
    for i in 0..60 {
        events.push(usage_event(i, UsageSource::Resizer));
        events.push(usage_event(i, UsageSource::Api));
    }
    let usage = support::UsageProducer::new(&config);
    usage.send(&events).await;
    usage
        .send_raw(&[("tenant-0".into(), b"poison".to_vec())])
        .await;
    let mut expected: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for event in events.iter().filter(|e| e.source == UsageSource::Resizer) {
        let t = expected.entry(event.tenant_id.clone()).or_default();
        t.0 += 1;
        t.1 += event.bytes_in;
    }

    let aggregator = support::host(config.clone(), &[imgpipe::host::Service::Aggregator]).await;
    support::eventually(
        Duration::from_secs(60),
        "the aggregator to store everything",
        || async { (analyst_totals(&config).await == expected).then_some(()) },
    )
    .await;
    let args = imgpipe_ops::usage::RebuildArgs {
        execute: true,
        allow_loss_before_retention: false,
        timeout: Duration::from_secs(120),
    };
    let refusal = imgpipe_ops::usage::rebuild(&config.ops(), &args)
        .await
        .unwrap_err();
    assert!(
        matches!(refusal, imgpipe_ops::OpsError::Refused(_)),
        "{refusal}"
    );
    aggregator.stop().await;

    // Damage: a third of the rows gone, as after a bad manual DELETE.
    for table in ["usage_raw", "usage_recent"] {
        support::clickhouse(
            &config,
            &format!("ALTER TABLE {db}.{table} DELETE WHERE bytes_in % 3 = 0"),
        )
        .await;
    }
    support::eventually(Duration::from_secs(30), "the delete to finish", || async {
        let left = support::clickhouse(
            &config,
            &format!(
                "SELECT count() FROM system.mutations WHERE database = '{db}' AND is_done = 0"
            ),
        )
        .await;
        (left.trim() == "0").then_some(())
    })
    .await;
    assert_ne!(analyst_totals(&config).await, expected);

    // The group may take its session timeout to empty after the stop; the rebuild says so.
    let report = support::eventually(Duration::from_secs(30), "the rebuild to run", || async {
        match imgpipe_ops::usage::rebuild(&config.ops(), &args).await {
            Ok(report) => Some(report),
            Err(imgpipe_ops::OpsError::Refused(why)) if why.contains("member") => None,
            Err(other) => panic!("{other}"),
        }
    })
    .await;
    assert!(report.swapped);
    let read: u64 = report.verified.values().map(|(records, _)| records).sum();
    assert_eq!(read, 121, "every usage record, the poison one included");
    assert_eq!(
        analyst_totals(&config).await,
        expected,
        "exact after the rebuild"
    );
    let rejects =
        support::clickhouse(&config, &format!("SELECT count() FROM {db}.usage_rejects")).await;
    assert_eq!(rejects.trim(), "1");
    // The damaged tables are kept aside, and no rebuild database is left over.
    let backup_rows = support::clickhouse(
        &config,
        &format!("SELECT count() FROM {}.usage_raw", report.backup),
    )
    .await;
    assert!(backup_rows.trim().parse::<i64>().unwrap() < 120);
    let leftovers = support::clickhouse(
        &config,
        &format!(
            "SELECT count() FROM system.databases WHERE name = '{}'",
            report.fresh
        ),
    )
    .await;
    assert_eq!(leftovers.trim(), "0");

    // An aggregator started afterwards goes on from where the rebuild stopped: no re-insert.
    let more = vec![usage_event(1000, UsageSource::Resizer)];
    usage.send(&more).await;
    let aggregator = support::host(config.clone(), &[imgpipe::host::Service::Aggregator]).await;
    let t = expected.entry(more[0].tenant_id.clone()).or_default();
    t.0 += 1;
    t.1 += more[0].bytes_in;
    support::eventually(
        Duration::from_secs(60),
        "the new record to be counted once",
        || async { (analyst_totals(&config).await == expected).then_some(()) },
    )
    .await;
    aggregator.stop().await;
    support::clickhouse(
        &config,
        &format!("DROP DATABASE IF EXISTS {}", report.backup),
    )
    .await;
}

#[tokio::test]
async fn every_admin_call_is_in_the_audit_trail_without_secrets() {
    let mut config = support::provisioned("ops_audit").await;
    let identity = std::net::SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    config.identity.listen = identity;
    config.identity.admin_token = support::ADMIN_TOKEN.into();
    let hosted = support::host(
        config.clone(),
        &[
            imgpipe::host::Service::Identity,
            imgpipe::host::Service::Aggregator,
        ],
    )
    .await;
    let key = support::create_tenant_key(identity, "audited", 10, 10).await;
    let http = reqwest::Client::new();
    let keys: serde_json::Value = http
        .get(format!(
            "http://{identity}/admin/v1/tenants/{}/keys",
            key.tenant_id
        ))
        .bearer_auth(support::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key_id = keys["keys"][0]["key_id"].as_str().unwrap().to_owned();
    let revoked = http
        .delete(format!("http://{identity}/admin/v1/keys/{key_id}"))
        .bearer_auth(support::ADMIN_TOKEN)
        .header("x-request-id", "revoke-call-1")
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    // Someone trying a token on the tenant.
    let refused = http
        .get(format!(
            "http://{identity}/admin/v1/tenants/{}",
            key.tenant_id
        ))
        .bearer_auth("guessed-token")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // The aggregator copies the trail into ClickHouse for SQL.
    let db = config.clickhouse.database.clone();
    let tenant = key.tenant_id.clone();
    let in_clickhouse = support::eventually(
        Duration::from_secs(30),
        "the trail in ClickHouse",
        || async {
            let rows = support::clickhouse(
                &config,
                &format!(
                    "SELECT action, status, actor, remote_addr FROM {db}.admin_audit FINAL \
                 WHERE tenant_id = '{tenant}' ORDER BY at_ms FORMAT TSV"
                ),
            )
            .await;
            (rows.lines().count() == 5).then_some(rows)
        },
    )
    .await;
    assert!(
        in_clickhouse.contains("DELETE /admin/v1/keys/{key_id}\t204"),
        "{in_clickhouse}"
    );
    assert!(!in_clickhouse.contains(support::ADMIN_TOKEN) && !in_clickhouse.contains(&key.api_key));
    hosted.stop().await;

    let args = imgpipe_ops::audit::AuditArgs {
        tenant: Some(key.tenant_id.clone()),
        since: Some(SystemTime::now() - Duration::from_secs(600)),
        refused: false,
        json: true,
    };
    let trail = imgpipe_ops::audit::read(&config.ops(), &args)
        .await
        .unwrap();
    let actions: Vec<(String, i64)> = trail
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["status"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            ("POST /admin/v1/tenants".to_owned(), 201),
            ("POST /admin/v1/tenants/{tenant_id}/keys".to_owned(), 201),
            ("GET /admin/v1/tenants/{tenant_id}/keys".to_owned(), 200),
            ("DELETE /admin/v1/keys/{key_id}".to_owned(), 204),
            ("GET /admin/v1/tenants/{tenant_id}".to_owned(), 401),
        ]
    );
    let admin = imgpipe_actor(support::ADMIN_TOKEN);
    for record in &trail[..4] {
        assert_eq!(record["actor"], admin.as_str());
        assert_eq!(record["authenticated"], true);
        assert!(
            record["remote_addr"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:")
        );
    }
    assert_eq!(
        trail[1]["key_id"],
        key_id.as_str(),
        "a new key's id comes from the answer"
    );
    assert_eq!(trail[3]["key_id"], key_id.as_str());
    assert_eq!(trail[3]["request_id"], "revoke-call-1");
    assert!(
        trail
            .iter()
            .all(|r| r["request_id"].as_str().is_some_and(|id| !id.is_empty())),
        "every call has its request id, given or generated"
    );
    assert_eq!(trail[4]["authenticated"], false);
    assert_ne!(trail[4]["actor"], admin.as_str());
    // No secret anywhere: not the admin token, not the issued key.
    let text = serde_json::to_string(&trail).unwrap();
    assert!(!text.contains(support::ADMIN_TOKEN) && !text.contains(&key.api_key));
    assert!(!text.contains("guessed-token"));

    // Only the refused call.
    let refused_only = imgpipe_ops::audit::read(
        &config.ops(),
        &imgpipe_ops::audit::AuditArgs {
            refused: true,
            ..args.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(refused_only.len(), 1);
    // Another tenant's calls are not in this tenant's trail.
    let other = imgpipe_ops::audit::read(
        &config.ops(),
        &imgpipe_ops::audit::AuditArgs {
            tenant: Some("no-such-tenant".into()),
            ..args
        },
    )
    .await
    .unwrap();
    assert!(other.is_empty());
}

fn imgpipe_actor(token: &str) -> String {
    ingest::identity::audit::actor(Some(token))
}

#[tokio::test]
async fn a_record_poison_again_after_a_redrive_keeps_its_count_and_stops_at_the_limit() {
    let config = support::provisioned("ops_redrive_limit").await;
    let codec = schemas::Codec::new(&config.registry, &config.kafka.namespace);
    config
        .kafka
        .producer()
        .unwrap()
        .send(
            FutureRecord::to(&config.kafka.name(IMAGE_REQUESTS))
                .key("poison-1")
                .payload("not a request"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let hosted = support::host(config.clone(), &[imgpipe::host::Service::Resizer]).await;
    let only = DlqFilter {
        key: Some("poison-1".into()),
        ..Default::default()
    };
    let pending_with = |count: u32| {
        let (config, codec, only) = (&config, &codec, &only);
        async move {
            let pending = dlq::list(&config.kafka, codec, only, false).await.unwrap();
            (pending.len() == 1 && pending[0].redrive_count() == count).then_some(())
        }
    };
    support::eventually(Duration::from_secs(30), "the poison in the DLQ", || {
        pending_with(0)
    })
    .await;
    let args = ActArgs {
        filter: only.clone(),
        to_topic: None,
        max_redrives: 1,
        batch: 10,
        execute: true,
    };
    let first = dlq::settle(&config.ops(), &codec, &args, dlq::Mode::Redrive)
        .await
        .unwrap();
    assert_eq!(first.redriven.values().sum::<u64>(), 1);
    // Poison again: the resizer dead-letters it with its redrive count kept.
    support::eventually(
        Duration::from_secs(30),
        "the poison back in the DLQ, counted",
        || pending_with(1),
    )
    .await;
    let second = dlq::settle(&config.ops(), &codec, &args, dlq::Mode::Redrive)
        .await
        .unwrap();
    assert_eq!(second.redriven.values().sum::<u64>(), 0, "the limit holds");
    assert_eq!(second.kept, 1);
    hosted.stop().await;
    let left = dlq::list(&config.kafka, &codec, &only, false)
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "kept, not lost");
    assert!(
        left[0].header(dlq::KEPT_FROM).is_some(),
        "the copy says where it was kept from"
    );
}

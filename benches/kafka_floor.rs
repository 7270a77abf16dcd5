//! The Kafka floor: a bare request-reply over two topics on the same broker, with the clients
//! configured as the pipeline's (idempotent, `acks=all`, `linger.ms=0`, no transactions), so the
//! pipeline's latency can be read as a ratio of what Kafka itself needs.
//!
//! One round trip = two hops, as a resize request makes them: the client produces a request and
//! waits for its acknowledgement (as the api does), an echo service consumes it and produces a
//! reply to the partition the client reads, and the client's reader hands the reply to the waiting
//! caller. Nothing else: no Avro, no HTTP, no image. The payload is `IMGPIPE_FLOOR_BYTES` (default
//! 256, about a tiny PNG's request) and requests go one at a time (concurrency 1).
//!
//! Prints one summary line that `benches/pipeline_latency.sh` parses:
//! `kafka floor: n=2000 p50_ms=0.712 p90_ms=... p99_ms=... max_ms=...`
//!
//! Needs the local stack (`compose/local/stack up`); uses its own namespace.
//! `cargo bench --bench kafka_floor` (`IMGPIPE_FLOOR_REQUESTS=N` for another count)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chassis::kafka::{ConsumerProfile, KafkaConfig, ProducerProfile};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::oneshot;

/// Requests before measuring: connections, metadata and the JIT of the broker warm up.
const WARM_UP: usize = 200;

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let requests: usize = env_or("IMGPIPE_FLOOR_REQUESTS", 2000);
    let payload = vec![0x5a_u8; env_or("IMGPIPE_FLOOR_BYTES", 256)];
    let mut kafka = KafkaConfig::default();
    if let Ok(brokers) = std::env::var("IMGPIPE_TEST_KAFKA") {
        kafka.brokers = brokers;
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    kafka.namespace = format!("bench-floor-{}.", &id[..8]);
    let (request_topic, reply_topic) = (kafka.name("floor.requests"), kafka.name("floor.replies"));
    create_topics(&kafka, &[&request_topic, &reply_topic]).await;

    // The echo service: a group member, as a resizer is, answering with a plain producer.
    let echo: StreamConsumer = kafka
        .group_consumer_config("floor-echo", ConsumerProfile::AtLeastOnce)
        .create()
        .unwrap();
    echo.subscribe(&[&request_topic]).unwrap();
    let echo_producer: FutureProducer = kafka
        .producer_config(ProducerProfile::LowLatency)
        .create()
        .unwrap();
    let echo_to = reply_topic.clone();
    tokio::spawn(async move {
        loop {
            let message = echo.recv().await.unwrap();
            let record = FutureRecord::to(&echo_to)
                .partition(0)
                .key(message.key().unwrap_or_default())
                .payload(message.payload().unwrap_or_default());
            echo_producer
                .send(record, Duration::from_secs(5))
                .await
                .unwrap();
        }
    });

    // The client's reply reader: assigned to its partition from the end, as an api instance is.
    let reader: StreamConsumer = kafka
        .group_consumer_config("floor-client", ConsumerProfile::LatestNoCommit)
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&reply_topic, 0, Offset::End)
        .unwrap();
    reader.assign(&assignment).unwrap();
    let waiting: Waiting = Arc::default();
    let routes = waiting.clone();
    tokio::spawn(async move {
        loop {
            let message = reader.recv().await.unwrap();
            let key = u64::from_be_bytes(message.key().unwrap().try_into().unwrap());
            if let Some(waiter) = routes.lock().unwrap().remove(&key) {
                let _ = waiter.send(());
            }
        }
    });

    let producer: FutureProducer = kafka
        .producer_config(ProducerProfile::LowLatency)
        .create()
        .unwrap();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut timed_out = 0;
    for n in 0..(WARM_UP + requests) as u64 {
        let (sender, receiver) = oneshot::channel();
        waiting.lock().unwrap().insert(n, sender);
        let key = n.to_be_bytes();
        let started = Instant::now();
        producer
            .send(
                FutureRecord::to(&request_topic)
                    .key(&key[..])
                    .payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_secs(5), receiver).await {
            Ok(Ok(())) if n >= WARM_UP as u64 => {
                latency
                    .record(started.elapsed().as_micros() as u64)
                    .unwrap();
            }
            Ok(Ok(())) => {}
            _ => {
                // The first replies can be lost while the echo member joins its group and the
                // reader positions itself; count them, never wait forever.
                waiting.lock().unwrap().remove(&n);
                if n >= WARM_UP as u64 {
                    timed_out += 1;
                }
            }
        }
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "kafka floor: n={} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} max_ms={:.3} timed_out={timed_out} payload_bytes={}",
        latency.len(),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        latency.max() as f64 / 1000.0,
        payload.len(),
    );
    delete_topics(&kafka, &[&request_topic, &reply_topic]).await;
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn create_topics(kafka: &KafkaConfig, names: &[&str]) {
    let admin = kafka.admin().unwrap();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| NewTopic::new(name, 1, TopicReplication::Fixed(1)))
        .collect();
    let results = tokio::time::timeout(
        Duration::from_secs(30),
        admin.create_topics(&topics, &AdminOptions::new()),
    )
    .await
    .expect("creating topics timed out: is the stack up? (compose/local/stack up)")
    .expect("creating topics failed: is the stack up? (compose/local/stack up)");
    for result in results {
        result.expect("topic created");
    }
}

async fn delete_topics(kafka: &KafkaConfig, names: &[&str]) {
    let admin = kafka.admin().unwrap();
    let _ = admin.delete_topics(names, &AdminOptions::new()).await;
}

//! Event contracts against the real schema registry and Kafka: records round-trip through the
//! registry, an incompatible schema change is refused, and a record imgpipe produced is read by
//! an independent client (Confluent's Python deserializer), which proves the wire format.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)] // tests and benches fail by panicking

use std::process::Command;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use schemas::events::{
    Fit, Frames, Gravity, ImageFormat, ResizeParams, ResizeRequested, UsageRecorded, UsageSource,
};
use schemas::registry::value_subject;
use schemas::{Codec, Event};

use crate::support;

fn usage(request_id: &str) -> UsageRecorded {
    UsageRecorded {
        request_id: request_id.into(),
        tenant_id: "tenant-a".into(),
        key_id: "key-1".into(),
        event_time_ms: 1_763_700_000_123,
        outcome: "ok".into(),
        status: 200,
        bytes_in: 123_456,
        bytes_out: 7_890,
        pixels_in: 2_000_000,
        pixels_out: 250_000,
        cpu_time_us: 4_321,
        input_format: Some("jpeg".into()),
        output_format: Some("webp".into()),
        latency_us: 15_000,
        source: UsageSource::Resizer,
        source_host: None,
    }
}

#[tokio::test]
async fn records_round_trip_through_kafka_and_the_registry() {
    let config = support::provisioned("contracts_round_trip").await;
    let codec = Codec::new(&config.registry, &config.kafka.namespace);
    let request = ResizeRequested {
        request_id: "req-1".into(),
        tenant_id: "tenant-a".into(),
        key_id: "key-1".into(),
        received_at_ms: 1,
        deadline_at_ms: 2,
        params: ResizeParams {
            width: Some(300),
            height: Some(200),
            fit: Fit::Contain,
            gravity: Gravity::NorthEast,
            format: Some(ImageFormat::Png),
            quality: None,
            enlarge: false,
            lossless: true,
            effort: Some(3),
            frames: Frames::First,
            background: None,
            focus_point: None,
            auto_format: None,
        },
        content_type: Some("image/gif".into()),
        image: (0..=255).collect(),
        reply_topic: config.kafka.name(schemas::topics::IMAGE_RESULTS),
        reply_partition: 7,
        source_url: None,
    };
    let payload = codec.encode(&request).await.expect("encode");
    assert_eq!(payload[0], 0, "Confluent magic byte");

    let topic = codec.topic::<ResizeRequested>();
    let producer = config.kafka.producer().expect("producer");
    producer
        .send(
            FutureRecord::to(&topic).key("req-1").payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");

    let consumer: StreamConsumer = config
        .kafka
        .group_consumer_config(
            "contracts-reader",
            chassis::kafka::ConsumerProfile::AtLeastOnce,
        )
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a record within 30 s")
        .expect("no Kafka error");
    let bytes = message.payload().expect("a value");
    // A fresh codec has an empty cache: it must fetch the writer schema by id from the registry.
    let fresh = Codec::new(&config.registry, &config.kafka.namespace);
    let decoded: ResizeRequested = fresh.decode(bytes).await.expect("decode");
    assert_eq!(decoded, request);
}

#[tokio::test]
async fn the_registry_refuses_an_incompatible_evolution_and_accepts_a_compatible_one() {
    let config = support::provisioned("contracts_evolution").await;
    let subject = value_subject(&config.kafka.name(UsageRecorded::TOPIC));
    let mut schema: serde_json::Value = serde_json::from_str(UsageRecorded::SCHEMA).expect("json");
    let fields = schema["fields"].as_array_mut().expect("fields");

    // A new field without a default: old records cannot be read with it. BACKWARD forbids it.
    fields.push(serde_json::json!({"name": "region", "type": "string"}));
    let refused = config
        .registry
        .register(&subject, &schema.to_string())
        .await;
    let error = refused.expect_err("an incompatible schema must be refused");
    assert!(!error.is_retryable(), "refusal is permanent: {error}");

    // The same field with a default is a compatible evolution.
    let fields = schema["fields"].as_array_mut().expect("fields");
    fields.pop();
    fields.push(serde_json::json!({"name": "region", "type": "string", "default": "eu"}));
    let accepted = config
        .registry
        .register(&subject, &schema.to_string())
        .await;
    let new_id = accepted.expect("a compatible schema is accepted");

    // Records written with today's schema decode directly (the codec's fast path)...
    let codec = Codec::new(&config.registry, &config.kafka.namespace);
    let current = codec
        .encode(&usage("r-old"))
        .await
        .expect("encode with current schema");
    let decoded: UsageRecorded = codec.decode(&current).await.expect("decode");
    assert_eq!(decoded, usage("r-old"));
    let current_id = u32::from_be_bytes([current[1], current[2], current[3], current[4]]);
    assert_ne!(current_id, new_id, "the evolved schema got its own id");

    // ...and a record a newer producer wrote with the evolved schema is resolved back to
    // today's type: the extra field is dropped, everything else survives.
    let evolved = apache_avro::Schema::parse_str(&schema.to_string()).expect("evolved parses");
    let apache_avro::types::Value::Record(mut fields) =
        apache_avro::to_value(usage("r-new")).expect("to value")
    else {
        panic!("a record");
    };
    fields.push((
        "region".into(),
        apache_avro::types::Value::String("us".into()),
    ));
    let value = apache_avro::types::Value::Record(fields)
        .resolve(&evolved)
        .expect("fits evolved");
    let body = apache_avro::writer::datum::GenericDatumWriter::builder(&evolved)
        .build()
        .expect("writer")
        .write_value_to_vec(value)
        .expect("encodes");
    let mut payload = vec![0];
    payload.extend_from_slice(&new_id.to_be_bytes());
    payload.extend_from_slice(&body);
    let decoded: UsageRecorded = codec
        .decode(&payload)
        .await
        .expect("resolves to today's type");
    assert_eq!(decoded, usage("r-new"));
}

/// Finds the Python that has confluent-kafka installed (set up by compose/local/bootstrap).
fn python() -> String {
    if let Ok(python) = std::env::var("IMGPIPE_PYTHON") {
        return python;
    }
    let cache = std::env::var("IMGPIPE_CACHE_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.cache/imgpipe",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    format!("{cache}/pyenv/bin/python")
}

#[tokio::test]
async fn an_independent_confluent_client_decodes_what_imgpipe_wrote() {
    let config = support::provisioned("contracts_python").await;
    let codec = Codec::new(&config.registry, &config.kafka.namespace);
    let record = usage("r-python");
    let payload = codec.encode(&record).await.expect("encode");
    let topic = codec.topic::<UsageRecorded>();
    let producer = config.kafka.producer().expect("producer");
    producer
        .send(
            FutureRecord::to(&topic).key("tenant-a").payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/decode_with_confluent.py"
    );
    let python = python();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .args([script, &config.kafka.brokers, &config.registry.url, &topic])
            .output()
    })
    .await
    .expect("join")
    .expect("python with confluent-kafka (run compose/local/bootstrap)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "decoder failed: {stderr}");
    let decoded: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("decoder prints JSON");
    assert_eq!(decoded["request_id"], "r-python");
    assert_eq!(decoded["tenant_id"], "tenant-a");
    assert_eq!(decoded["bytes_in"], 123_456);
    assert_eq!(decoded["cpu_time_us"], 4_321);
    assert_eq!(decoded["output_format"], "webp");
    assert_eq!(decoded["source"], "RESIZER");
    // timestamp-millis comes back as a UTC datetime; it must be the same instant to the ms.
    assert_eq!(decoded["event_time_ms"], "2025-11-21 04:40:00.123000+00:00");
}

/// Today's `ResizeRequested` without the output-format fields of `params` (`lossless`, `effort`,
/// `frames`): the schema the registry held before they were added.
fn resize_requested_before_format_fields(without_defaults: bool) -> serde_json::Value {
    let mut schema: serde_json::Value =
        serde_json::from_str(ResizeRequested::SCHEMA).expect("json");
    let params = schema["fields"]
        .as_array_mut()
        .expect("fields")
        .iter_mut()
        .find(|f| f["name"] == "params")
        .expect("params");
    let fields = params["type"]["fields"]
        .as_array_mut()
        .expect("params fields");
    if without_defaults {
        for field in fields.iter_mut() {
            field.as_object_mut().expect("object").remove("default");
        }
    } else {
        fields.retain(|f| !matches!(f["name"].as_str(), Some("lossless" | "effort" | "frames")));
    }
    schema
}

#[tokio::test]
async fn the_output_format_parameters_are_a_backward_compatible_evolution() {
    let config = support::provisioned("contracts_format_params").await;
    let registry = &config.registry;
    let subject = value_subject(&format!(
        "{}.format-params",
        config.kafka.name(ResizeRequested::TOPIC)
    ));
    registry
        .set_compatibility(&subject, "BACKWARD")
        .await
        .expect("compatibility");
    let previous = resize_requested_before_format_fields(false);
    let previous_id = registry
        .register(&subject, &previous.to_string())
        .await
        .expect("the previous schema registers");

    // The same fields without defaults could not read the older records: refused.
    let no_defaults = resize_requested_before_format_fields(true);
    let refused = registry.register(&subject, &no_defaults.to_string()).await;
    let error = refused.expect_err("fields without defaults must be refused");
    assert!(!error.is_retryable(), "refusal is permanent: {error}");

    // Today's schema, whose new fields have defaults, is accepted.
    let current_id = registry
        .register(&subject, ResizeRequested::SCHEMA)
        .await
        .expect("today's schema is a BACKWARD-compatible evolution");
    assert_ne!(previous_id, current_id);

    // A record an api of the previous version wrote is read with the defaults.
    let request = ResizeRequested {
        request_id: "req-old".into(),
        tenant_id: "tenant-a".into(),
        key_id: "key-1".into(),
        received_at_ms: 1,
        deadline_at_ms: 2,
        params: ResizeParams {
            width: Some(512),
            format: Some(ImageFormat::Webp),
            quality: Some(80),
            ..ResizeParams::default()
        },
        content_type: None,
        image: vec![1, 2, 3],
        reply_topic: "replies".into(),
        reply_partition: 0,
        source_url: None,
    };
    let previous_schema =
        apache_avro::Schema::parse_str(&previous.to_string()).expect("previous parses");
    let apache_avro::types::Value::Record(mut fields) =
        apache_avro::to_value(&request).expect("to value")
    else {
        panic!("a record");
    };
    for (name, value) in &mut fields {
        if let ("params", apache_avro::types::Value::Record(params)) = (name.as_str(), value) {
            params.retain(|(n, _)| !matches!(n.as_str(), "lossless" | "effort" | "frames"));
        }
    }
    let value = apache_avro::types::Value::Record(fields)
        .resolve(&previous_schema)
        .expect("fits the previous schema");
    let body = apache_avro::writer::datum::GenericDatumWriter::builder(&previous_schema)
        .build()
        .expect("writer")
        .write_value_to_vec(value)
        .expect("encodes");
    let mut payload = vec![0];
    payload.extend_from_slice(&previous_id.to_be_bytes());
    payload.extend_from_slice(&body);
    let codec = Codec::new(registry, &config.kafka.namespace);
    let decoded: ResizeRequested = codec.decode(&payload).await.expect("decodes");
    assert_eq!(decoded, request);
    assert_eq!(
        (
            decoded.params.lossless,
            decoded.params.effort,
            decoded.params.frames
        ),
        (false, None, Frames::All)
    );
}

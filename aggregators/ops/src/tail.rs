//! `imgpipe ops tail TOPIC`: a topic's records as JSON lines, values decoded from Avro through
//! the schema registry (like `kcat -s value=avro`), headers included, images shown as sizes.

use std::io::Write;
use std::time::SystemTime;

use clap::Args;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use schemas::Codec;

use super::{KAFKA_CALL_TIMEOUT, OpsError};

/// `imgpipe ops tail` options.
#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// Topic, without the namespace (e.g. `usage.events`).
    pub topic: String,
    /// Start at the first record at or after this time (RFC 3339 or Unix ms); default: only
    /// records written from now on.
    #[arg(long, value_parser = crate::parse_datetime, conflicts_with = "from_beginning")]
    pub from_datetime: Option<SystemTime>,
    /// Start at the oldest record still in the topic.
    #[arg(long)]
    pub from_beginning: bool,
    /// Only records whose decoded value has this top-level field value, or this `key=…`;
    /// repeatable, all must hold (e.g. `--filter tenant_id=acme`; `tenant=` means `tenant_id=`).
    #[arg(long = "filter", value_parser = parse_filter)]
    pub filters: Vec<(String, String)>,
    /// Stop after this many records (counted from where the tail starts: the end of the topic
    /// unless --from-beginning or --from-datetime).
    #[arg(long)]
    pub max: Option<u64>,
    /// Stop at the end of the topic as it was when the tail started, instead of following it.
    #[arg(long)]
    pub until_end: bool,
    /// Also show records of open or aborted transactions.
    #[arg(long)]
    pub read_uncommitted: bool,
}

fn parse_filter(text: &str) -> Result<(String, String), String> {
    let (field, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected FIELD=VALUE"))?;
    let field = if field == "tenant" {
        "tenant_id"
    } else {
        field
    };
    Ok((field.to_owned(), value.to_owned()))
}

/// Prints records of `args.topic` as JSON lines on stdout until `--max`, `--until-end` or
/// Ctrl-C.
pub async fn run(config: &crate::OpsConfig, args: TailArgs) -> Result<(), OpsError> {
    let codec = Codec::new(&config.registry, &config.kafka.namespace);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut written = 0u64;
    let mut tail = Tail::open(&config.kafka, &args)?;
    if let Some(notice) = start_notice(&args) {
        eprintln!("{notice}");
    }
    // A filter on a field the records do not have (a typo) would match nothing, silently.
    let mut warned = std::collections::HashSet::new();
    // A quiet topic is said to be quiet, so a wait is never mistaken for a hang.
    let mut quiet = tokio::time::interval_at(tokio::time::Instant::now() + QUIET, QUIET);
    let mut last_printed = std::time::Instant::now();
    loop {
        // Polled to completion or dropped only at Ctrl-C: `next` is not cancel-safe (a record
        // being decoded would be lost), so the quiet ticker runs beside it, never instead of it.
        let next = tail.next(&codec);
        tokio::pin!(next);
        let next = loop {
            tokio::select! {
                next = &mut next => break next?,
                _ = tokio::signal::ctrl_c() => break None,
                _ = quiet.tick() => eprintln!(
                    "ops tail: nothing new on {} for {} s ({written} printed so far); still \
                     waiting, Ctrl-C stops",
                    args.topic,
                    last_printed.elapsed().as_secs()
                ),
            }
        };
        let Some(line) = next else { break };
        for (field, _) in &args.filters {
            if let Some(fields) = missing_field(&line, field)
                && warned.insert(field.clone())
            {
                eprintln!(
                    "warning: --filter {field}=…: {} records have no field {field:?} (they have: {}); \
                     nothing of that kind will match",
                    args.topic,
                    fields.join(", ")
                );
            }
        }
        if !args
            .filters
            .iter()
            .all(|(field, value)| field_matches(&line, field, value))
        {
            continue;
        }
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        written += 1;
        last_printed = std::time::Instant::now();
        quiet.reset();
        if args.max.is_some_and(|max| written >= max) {
            break;
        }
    }
    Ok(())
}

/// How long a tail waits without printing before it says it is still waiting.
const QUIET: std::time::Duration = std::time::Duration::from_secs(10);

/// What a tail that starts at the end of the topic says first (on stderr): that only records
/// written from now on come, and how to start earlier. `None` when it starts earlier.
pub fn start_notice(args: &TailArgs) -> Option<String> {
    (!args.from_beginning && args.from_datetime.is_none()).then(|| {
        format!(
            "ops tail: starting at the end of {} (now): only records written from now on are \
             shown{}. To start earlier: --from-beginning, or --from-datetime TIME (RFC 3339 or \
             Unix ms).",
            args.topic,
            args.max
                .map(|max| format!(", until {max} have come"))
                .unwrap_or_default()
        )
    })
}

/// Whether a printed line's key or decoded value's top-level `field` equals `value`.
pub fn field_matches(line: &serde_json::Value, field: &str, value: &str) -> bool {
    let found = if field == "key" {
        line.get("key")
    } else {
        line.get("value").and_then(|v| v.get(field))
    };
    match found {
        Some(serde_json::Value::String(s)) => s == value,
        Some(serde_json::Value::Number(n)) => n.to_string() == value,
        Some(serde_json::Value::Bool(b)) => value.parse() == Ok(*b),
        _ => false,
    }
}

/// The decoded value's top-level field names when it is a record without `field` (never for
/// `key`, which every line has).
pub fn missing_field(line: &serde_json::Value, field: &str) -> Option<Vec<String>> {
    if field == "key" {
        return None;
    }
    let value = line.get("value")?.as_object()?;
    (!value.contains_key(field)).then(|| {
        let mut fields: Vec<String> = value.keys().cloned().collect();
        fields.sort_unstable();
        fields
    })
}

/// A reader of every partition of one topic from a start position.
pub struct Tail {
    consumer: StreamConsumer<crate::ScanContext>,
    topic: String,
    /// With `--until-end`: partitions not yet read to their end.
    until_end: Option<std::collections::BTreeSet<i32>>,
}

impl Tail {
    /// Assigns every partition of the topic at the start `args` asks for.
    pub fn open(kafka: &chassis::kafka::KafkaConfig, args: &TailArgs) -> Result<Self, OpsError> {
        let topic = kafka.name(&args.topic);
        let mut config = kafka.reader_config(std::time::Duration::from_millis(100));
        config.set("enable.partition.eof", "true");
        config.set(
            "fetch.message.max.bytes",
            kafka.max_message_bytes.to_string(),
        );
        if args.read_uncommitted {
            config.set("isolation.level", "read_uncommitted");
        }
        let consumer = crate::scan_consumer(&config, "tail reader")?;
        let partitions = crate::topic_partitions(&consumer, &topic)?;
        let mut assignment = TopicPartitionList::new();
        let mut unfinished = std::collections::BTreeSet::new();
        for &p in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, KAFKA_CALL_TIMEOUT)
                .map_err(OpsError::kafka(format!(
                    "reading the log bounds of {topic}/{p}"
                )))?;
            let start = if args.from_beginning {
                low
            } else if let Some(time) = args.from_datetime {
                let mut query = TopicPartitionList::new();
                query
                    .add_partition_offset(&topic, p, Offset::Offset(crate::unix_ms(time)))
                    .map_err(OpsError::kafka("building the time query"))?;
                let found = consumer
                    .offsets_for_times(query, KAFKA_CALL_TIMEOUT)
                    .map_err(OpsError::kafka(format!(
                        "looking up offsets by time on {topic}"
                    )))?;
                match found.find_partition(&topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(offset)) => offset.clamp(low, high),
                    _ => high,
                }
            } else {
                high
            };
            if start < high {
                unfinished.insert(p);
            }
            assignment
                .add_partition_offset(&topic, p, Offset::Offset(start))
                .map_err(OpsError::kafka("building the assignment"))?;
        }
        consumer
            .assign(&assignment)
            .map_err(OpsError::kafka(format!("assigning {topic}")))?;
        Ok(Self {
            consumer,
            topic,
            until_end: args.until_end.then_some(unfinished),
        })
    }

    /// The next record as a JSON object, or `None` at the end (with `--until-end`).
    pub async fn next(&mut self, codec: &Codec) -> Result<Option<serde_json::Value>, OpsError> {
        loop {
            if self.until_end.as_ref().is_some_and(|left| left.is_empty()) {
                return Ok(None);
            }
            let message = match self.consumer.recv().await {
                Ok(message) => message,
                Err(KafkaError::PartitionEOF(partition)) => {
                    if let Some(left) = &mut self.until_end {
                        left.remove(&partition);
                    }
                    continue;
                }
                Err(source) => {
                    return Err(OpsError::Kafka {
                        operation: format!("reading {}", self.topic),
                        source,
                    });
                }
            };
            let payload = message.payload().unwrap_or_default();
            let value = match codec.decode_json(payload).await {
                Ok((schema, value)) => serde_json::json!({ "schema": schema, "value": value }),
                Err(error) => serde_json::json!({
                    "value": { "bytes": payload.len() },
                    "undecodable": error.to_string(),
                }),
            };
            let headers: serde_json::Map<String, serde_json::Value> = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| {
                            let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                            (h.key.to_owned(), v.into())
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut line = serde_json::json!({
                "topic": message.topic(),
                "partition": message.partition(),
                "offset": message.offset(),
                "timestamp": message.timestamp().to_millis().map(crate::format_ms),
                "key": message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                "headers": headers,
            });
            if let (Some(line), serde_json::Value::Object(decoded)) = (line.as_object_mut(), value)
            {
                line.extend(decoded);
            }
            return Ok(Some(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_the_key_or_a_top_level_field_of_the_value() {
        let line = serde_json::json!({
            "key": "r-1",
            "value": {"tenant_id": "acme", "status": 200, "image": {"bytes": 10}},
        });
        assert!(field_matches(&line, "key", "r-1"));
        assert!(field_matches(&line, "tenant_id", "acme"));
        assert!(field_matches(&line, "status", "200"));
        assert!(!field_matches(&line, "tenant_id", "other"));
        assert!(!field_matches(&line, "missing", "x"));
        assert_eq!(
            parse_filter("tenant=acme"),
            Ok(("tenant_id".into(), "acme".into()))
        );
        assert!(parse_filter("tenant").is_err());
    }

    #[test]
    fn a_tail_from_now_says_so_and_how_to_start_earlier() {
        let mut args = TailArgs {
            topic: "usage.events".into(),
            from_datetime: None,
            from_beginning: false,
            filters: Vec::new(),
            max: Some(5),
            until_end: false,
            read_uncommitted: false,
        };
        let notice = start_notice(&args).unwrap();
        for part in [
            "end of usage.events (now)",
            "until 5 have come",
            "--from-beginning",
            "--from-datetime",
        ] {
            assert!(notice.contains(part), "{part}: {notice}");
        }
        args.from_beginning = true;
        assert_eq!(start_notice(&args), None);
        args.from_beginning = false;
        args.from_datetime = Some(SystemTime::UNIX_EPOCH);
        assert_eq!(start_notice(&args), None);
    }

    #[test]
    fn a_filter_on_a_field_the_records_lack_is_named() {
        let line = serde_json::json!({"key": "k", "value": {"tenant_id": "acme", "status": 200}});
        assert_eq!(
            missing_field(&line, "tenant"),
            Some(vec!["status".to_owned(), "tenant_id".to_owned()])
        );
        assert_eq!(missing_field(&line, "tenant_id"), None);
        assert_eq!(missing_field(&line, "key"), None);
        let raw = serde_json::json!({"key": "k", "value": {"bytes": 12}});
        assert!(missing_field(&raw, "tenant_id").is_some());
    }
}

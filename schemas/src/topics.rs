//! The topic catalogue: every topic imgpipe uses, with the settings its contract depends on.
//! `imgpipe topics ensure` and service start-up create exactly these (names prefixed with the
//! deployment's namespace).

use std::time::Duration;

/// Resize requests, api → resizers. Key: request id.
pub const IMAGE_REQUESTS: &str = "image.requests";
/// Replies, resizers → the api instance owning the partition. Key: request id.
pub const IMAGE_RESULTS: &str = "image.results";
/// Requests no resizer could read (bad schema, not an image request): original bytes, error in headers.
pub const IMAGE_REQUESTS_DLQ: &str = "image.requests.dlq";
/// The headers the resizer puts on a dead letter: the error and where the record came from (and,
/// for an output that could not be written, where it was going). A record dead-lettered again
/// has them replaced, and a redrive removes them, so both sides read this one list.
pub const DLQ_HEADERS: &[&str] = &[
    "error.class",
    "error.message",
    "source.topic",
    "source.partition",
    "source.offset",
    "target.topic",
    "target.partition",
];
/// One record per request outcome. Key: tenant id.
pub const USAGE_EVENTS: &str = "usage.events";
/// Identity state, compacted. Key: entity id.
pub const IDENTITY_CHANGES: &str = "identity.changes";
/// Every admin API call (who, what, when, from where), never compacted: the history that
/// `identity.changes` forgets. Key: tenant id.
pub const IDENTITY_AUDIT: &str = "identity.audit";

/// Inline images are capped at 8 MiB by default; topics that carry them allow the image plus the
/// rest of the record.
pub const IMAGE_TOPIC_MAX_MESSAGE_BYTES: usize = 9 * 1024 * 1024;

/// Room in a record for everything but its image bytes: the Avro envelope (ids, parameters,
/// timings, well under 1 KiB), headers and Kafka's record and batch overhead, with a wide margin.
/// An image of at most `max.message.bytes` less this always fits in one record.
pub const RECORD_ENVELOPE_BYTES: usize = 64 * 1024;

/// How a topic is cleaned up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupPolicy {
    /// Old segments are deleted after `retention`.
    Delete,
    /// Only the latest record per key is kept (tombstones remove keys).
    Compact,
}

impl CleanupPolicy {
    /// Kafka's name for it.
    pub fn as_kafka(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Compact => "compact",
        }
    }
}

/// One topic's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSpec {
    /// Base name (before the namespace).
    pub name: &'static str,
    /// Partition count: the unit of parallelism of its consumer group.
    pub partitions: i32,
    /// Cleanup policy.
    pub cleanup: CleanupPolicy,
    /// `retention.ms` for delete topics; `None` keeps forever.
    pub retention: Option<Duration>,
    /// `max.message.bytes`.
    pub max_message_bytes: usize,
    /// Whether values are Avro registered under `<topic>-value` (the DLQ keeps raw bytes).
    pub avro_value: bool,
    /// `message.timestamp.type=LogAppendTime`: each record's timestamp is the broker's clock when
    /// it was appended, not the producer's. `usage.events` needs it: the aggregator never lets
    /// a record's event time run ahead of it (see the aggregator's consumer).
    pub log_append_time: bool,
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Every topic imgpipe uses.
pub const CATALOGUE: &[TopicSpec] = &[
    TopicSpec {
        name: IMAGE_REQUESTS,
        partitions: 12,
        cleanup: CleanupPolicy::Delete,
        // A request is worthless after its deadline; an hour leaves room for incident replays.
        retention: Some(HOUR),
        max_message_bytes: IMAGE_TOPIC_MAX_MESSAGE_BYTES,
        avro_value: true,
        log_append_time: false,
    },
    TopicSpec {
        name: IMAGE_RESULTS,
        partitions: 12,
        cleanup: CleanupPolicy::Delete,
        retention: Some(HOUR),
        max_message_bytes: IMAGE_TOPIC_MAX_MESSAGE_BYTES,
        avro_value: true,
        log_append_time: false,
    },
    TopicSpec {
        name: IMAGE_REQUESTS_DLQ,
        partitions: 3,
        cleanup: CleanupPolicy::Delete,
        retention: Some(DAY.saturating_mul(7)),
        max_message_bytes: IMAGE_TOPIC_MAX_MESSAGE_BYTES,
        avro_value: false,
        log_append_time: false,
    },
    TopicSpec {
        name: USAGE_EVENTS,
        partitions: 6,
        cleanup: CleanupPolicy::Delete,
        // Long enough for an operator to rebuild ClickHouse after an incident.
        retention: Some(DAY.saturating_mul(7)),
        max_message_bytes: 1024 * 1024,
        avro_value: true,
        log_append_time: true,
    },
    TopicSpec {
        name: IDENTITY_AUDIT,
        partitions: 3,
        cleanup: CleanupPolicy::Delete,
        // An audit trail outlives incidents and their investigations.
        retention: Some(DAY.saturating_mul(365)),
        max_message_bytes: 1024 * 1024,
        avro_value: true,
        log_append_time: false,
    },
    TopicSpec {
        name: IDENTITY_CHANGES,
        partitions: 3,
        cleanup: CleanupPolicy::Compact,
        retention: None,
        max_message_bytes: 1024 * 1024,
        avro_value: true,
        log_append_time: false,
    },
];

/// The spec of a base topic name.
pub fn spec(name: &str) -> Option<&'static TopicSpec> {
    CATALOGUE.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_topics_fit_the_largest_inline_image() {
        for name in [IMAGE_REQUESTS, IMAGE_RESULTS, IMAGE_REQUESTS_DLQ] {
            let spec = spec(name).expect("in catalogue");
            assert!(spec.max_message_bytes > 8 * 1024 * 1024, "{name}");
        }
    }

    #[test]
    fn identity_changes_is_compacted_and_kept() {
        let spec = spec(IDENTITY_CHANGES).expect("in catalogue");
        assert_eq!(spec.cleanup, CleanupPolicy::Compact);
        assert_eq!(spec.retention, None);
    }
}

//! What a finished record leaves behind for its transaction: the records to write in it (a usage
//! record, or a DLQ record) and the reply already sent outside it, plus how one record is handed
//! to a producer.

use rdkafka::Message;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

/// One record to write in the next transaction.
#[derive(Debug)]
pub(super) struct OutRecord {
    /// The input record (partition, offset) this output answers.
    pub(super) source: (i32, i64),
    pub(super) topic: String,
    pub(super) partition: Option<i32>,
    pub(super) key: String,
    pub(super) payload: Vec<u8>,
    pub(super) headers: OwnedHeaders,
}

impl OutRecord {
    /// A record librdkafka handed back with its delivery failure.
    pub(super) fn returned(source: (i32, i64), message: &rdkafka::message::OwnedMessage) -> Self {
        Self {
            source,
            topic: message.topic().to_owned(),
            partition: Some(message.partition()),
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers: message.headers().cloned().unwrap_or_default(),
        }
    }
}

/// What a finished request produces.
#[derive(Default)]
pub(super) struct Outputs {
    /// Written inside the transaction: the usage record, or a DLQ record (and the reply when it
    /// could not be sent on its own, see [`SentReply`]).
    pub(super) records: Vec<OutRecord>,
    /// The reply, already sent outside the transaction.
    pub(super) reply: Option<SentReply>,
}

impl Outputs {
    /// Outputs that are all written in the transaction.
    pub(super) fn committed(record: OutRecord) -> Self {
        Self {
            records: vec![record],
            reply: None,
        }
    }
}

/// A reply sent the moment its work finished, by the plain idempotent reply producer, so the
/// requester never waits for a transaction to commit. Its input's offset is committed only once
/// its delivery is confirmed: a reply that failed for good is dead-lettered in the transaction,
/// one that failed for now aborts it, and the input is redone. A crash before the commit redoes
/// the input too, so a reply can be written twice; the api answers the first and drops the
/// second (nobody waits for it any more). Usage stays exactly once: it is in the transaction.
/// Nothing of the reply is kept here: librdkafka holds its bytes until delivered and hands them
/// back with a failure.
pub(super) struct SentReply {
    /// The input record it answers.
    pub(super) source: (i32, i64),
    pub(super) delivery: DeliveryFuture,
}

/// An output that failed permanently: where it was going and why it could not get there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unwritable {
    pub(super) topic: String,
    pub(super) partition: Option<i32>,
    pub(super) error: String,
}

impl Unwritable {
    pub(super) fn of(out: &OutRecord, error: &KafkaError) -> Self {
        Self {
            topic: out.topic.clone(),
            partition: out.partition,
            error: error.to_string(),
        }
    }
}

/// Hands one record to a producer (transactional or not).
pub(super) fn send(
    producer: &FutureProducer,
    out: &OutRecord,
) -> Result<DeliveryFuture, KafkaError> {
    let mut record = FutureRecord::to(&out.topic)
        .key(&out.key)
        .payload(&out.payload)
        .headers(out.headers.clone());
    if let Some(partition) = out.partition {
        record = record.partition(partition);
    }
    producer.send_result(record).map_err(|(error, _)| error)
}

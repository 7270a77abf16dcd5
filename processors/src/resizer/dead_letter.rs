//! Dead letters: an input the resizer cannot process (it does not decode, or an output of it can
//! never be written) leaves the pipeline as a record on `image.requests.dlq` with its original
//! bytes, and in headers why (`error.class`, `error.message`) and from where (`source.*`,
//! `target.*`), so an operator can inspect and redrive it. Pure: which record, never its sending,
//! counting or logging, which are the caller's.

use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders};

use super::outputs::{OutRecord, Unwritable};

/// The dead letter of an input record: its key and bytes, with the error class (e.g.
/// `undecodable_request`), the error and its origin in headers.
pub(super) fn of_input(
    message: &impl Message,
    class: &str,
    error: &str,
    dlq_topic: &str,
) -> OutRecord {
    let source = (message.partition(), message.offset());
    // The record's own headers stay (its trace context, and `redrive.count`: a record that is
    // poison again after a redrive keeps its count, so the operator's redrive limit holds); the
    // DLQ's own headers are set afresh below.
    let own = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                // An earlier dead-lettering's headers are replaced, not repeated.
                .filter(|h| !schemas::topics::DLQ_HEADERS.contains(&h.key))
                .fold(OwnedHeaders::new(), |kept, h| {
                    kept.insert(Header {
                        key: h.key,
                        value: h.value,
                    })
                })
        })
        .unwrap_or_default();
    OutRecord {
        source,
        topic: dlq_topic.to_owned(),
        partition: None,
        key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
        payload: message.payload().unwrap_or_default().to_vec(),
        headers: with_error(own, class, error, message.topic(), source),
    }
}

/// The dead letter of an input one of whose outputs can never be written, when it is read again
/// (see `transaction::UnwritableInputs`): as [`of_input`], plus where the output was going.
pub(super) fn of_unwritable_input(
    message: &impl Message,
    unwritable: &Unwritable,
    dlq_topic: &str,
) -> OutRecord {
    let mut dlq = of_input(message, UNWRITABLE_OUTPUT, &unwritable.error, dlq_topic);
    dlq.headers = with_target(dlq.headers, unwritable);
    dlq
}

/// The error class of an output that can never be written.
pub(super) const UNWRITABLE_OUTPUT: &str = "unwritable_output";

/// An output that can never be written, as a dead letter in its place: its bytes, with the input
/// it answers (of `requests_topic`), where it was going and why it could not get there.
pub(super) fn of_output(
    out: OutRecord,
    unwritable: &Unwritable,
    requests_topic: &str,
    dlq_topic: &str,
) -> OutRecord {
    let headers = with_error(
        out.headers,
        UNWRITABLE_OUTPUT,
        &unwritable.error,
        requests_topic,
        out.source,
    );
    OutRecord {
        source: out.source,
        topic: dlq_topic.to_owned(),
        partition: None,
        key: out.key,
        payload: out.payload,
        headers: with_target(headers, unwritable),
    }
}

/// `headers` plus why a record is dead-lettered (`error.class`, `error.message`) and which input
/// it comes from (`source.topic`, `source.partition`, `source.offset`).
fn with_error(
    headers: OwnedHeaders,
    class: &str,
    error: &str,
    source_topic: &str,
    source: (i32, i64),
) -> OwnedHeaders {
    let (partition, offset) = (source.0.to_string(), source.1.to_string());
    headers
        .insert(Header {
            key: "error.class",
            value: Some(class),
        })
        .insert(Header {
            key: "error.message",
            value: Some(error),
        })
        .insert(Header {
            key: "source.topic",
            value: Some(source_topic),
        })
        .insert(Header {
            key: "source.partition",
            value: Some(&partition),
        })
        .insert(Header {
            key: "source.offset",
            value: Some(&offset),
        })
}

/// `headers` plus where an unwritable output was going (`target.topic`, `target.partition`).
fn with_target(headers: OwnedHeaders, unwritable: &Unwritable) -> OwnedHeaders {
    let partition = unwritable
        .partition
        .map(|p| p.to_string())
        .unwrap_or_default();
    headers
        .insert(Header {
            key: "target.topic",
            value: Some(&unwritable.topic),
        })
        .insert(Header {
            key: "target.partition",
            value: Some(&partition),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    use super::*;

    fn header_values(headers: &OwnedHeaders) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn input(headers: OwnedHeaders) -> OwnedMessage {
        OwnedMessage::new(
            Some(b"not avro".to_vec()),
            Some(b"req-9".to_vec()),
            "image.requests".into(),
            Timestamp::NotAvailable,
            4,
            77,
            Some(headers),
        )
    }

    #[test]
    fn an_undecodable_input_keeps_its_bytes_and_says_why_and_whence() {
        let own = OwnedHeaders::new()
            .insert(Header {
                key: "traceparent",
                value: Some("00-abc-def-01"),
            })
            .insert(Header {
                key: "redrive.count",
                value: Some("2"),
            });
        let dlq = of_input(
            &input(own),
            "undecodable_request",
            "not Confluent wire format: too short",
            "image.requests.dlq",
        );
        assert_eq!(dlq.source, (4, 77));
        assert_eq!(
            (dlq.topic.as_str(), dlq.partition),
            ("image.requests.dlq", None)
        );
        assert_eq!(dlq.key, "req-9");
        assert_eq!(dlq.payload, b"not avro");
        assert_eq!(
            header_values(&dlq.headers),
            pairs(&[
                ("traceparent", "00-abc-def-01"),
                ("redrive.count", "2"),
                ("error.class", "undecodable_request"),
                ("error.message", "not Confluent wire format: too short"),
                ("source.topic", "image.requests"),
                ("source.partition", "4"),
                ("source.offset", "77"),
            ])
        );
    }

    #[test]
    fn a_redriven_input_gets_fresh_dlq_headers_not_a_second_set() {
        let earlier = OwnedHeaders::new()
            .insert(Header {
                key: "redrive.count",
                value: Some("1"),
            })
            .insert(Header {
                key: "error.class",
                value: Some("unwritable_output"),
            })
            .insert(Header {
                key: "source.offset",
                value: Some("3"),
            })
            .insert(Header {
                key: "target.topic",
                value: Some("gone"),
            });
        let dlq = of_input(&input(earlier), "undecodable_request", "bad", "dlq");
        assert_eq!(
            header_values(&dlq.headers),
            pairs(&[
                ("redrive.count", "1"),
                ("error.class", "undecodable_request"),
                ("error.message", "bad"),
                ("source.topic", "image.requests"),
                ("source.partition", "4"),
                ("source.offset", "77"),
            ])
        );
    }

    #[test]
    fn an_input_with_an_unwritable_output_names_the_target() {
        let unwritable = Unwritable {
            topic: "image.results".into(),
            partition: Some(99),
            error: "Unknown partition".into(),
        };
        let dlq = of_unwritable_input(&input(OwnedHeaders::new()), &unwritable, "dlq");
        assert_eq!(dlq.payload, b"not avro", "the input's bytes");
        assert_eq!(
            header_values(&dlq.headers),
            pairs(&[
                ("error.class", "unwritable_output"),
                ("error.message", "Unknown partition"),
                ("source.topic", "image.requests"),
                ("source.partition", "4"),
                ("source.offset", "77"),
                ("target.topic", "image.results"),
                ("target.partition", "99"),
            ])
        );
    }

    #[test]
    fn an_unwritable_output_takes_its_own_place_in_the_dlq() {
        let reply = OutRecord {
            source: (2, 15),
            topic: "image.results".into(),
            partition: None,
            key: "req-2".into(),
            payload: b"reply bytes".to_vec(),
            headers: OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some("00-x-y-01"),
            }),
        };
        let unwritable = Unwritable {
            topic: "image.results".into(),
            partition: None,
            error: "Message size too large".into(),
        };
        let dlq = of_output(reply, &unwritable, "image.requests", "image.requests.dlq");
        assert_eq!(dlq.source, (2, 15));
        assert_eq!(
            (dlq.topic.as_str(), dlq.partition),
            ("image.requests.dlq", None)
        );
        assert_eq!(
            (dlq.key.as_str(), dlq.payload.as_slice()),
            ("req-2", &b"reply bytes"[..])
        );
        assert_eq!(
            header_values(&dlq.headers),
            pairs(&[
                ("traceparent", "00-x-y-01"),
                ("error.class", "unwritable_output"),
                ("error.message", "Message size too large"),
                ("source.topic", "image.requests"),
                ("source.partition", "2"),
                ("source.offset", "15"),
                ("target.topic", "image.results"),
                ("target.partition", ""),
            ])
        );
    }
}

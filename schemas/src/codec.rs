//! The Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro body) over the
//! schema registry. Writer schemas are registered on first use and their ids cached; readers
//! fetch a writer schema by id once, then resolve every record against the reader's own schema,
//! which is what makes BACKWARD evolution safe for consumers running older code.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::{Schema, from_value};
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

use crate::events::Event;
use crate::registry::{RegistryConfig, RegistryError};

/// Why a record could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The registry is unreachable; the same record may succeed later.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The bytes are not in the Confluent wire format (no magic byte, too short).
    #[error("not Confluent wire format: {0}")]
    NotWireFormat(&'static str),
    /// The registry knows no schema with this id, or the body does not match it.
    #[error("undecodable record: {0}")]
    Undecodable(String),
    /// The writer's schema cannot be read as this event type.
    #[error("record does not fit {expected}: {detail}")]
    SchemaMismatch {
        /// The Rust type expected.
        expected: &'static str,
        /// Why not.
        detail: String,
    },
    /// The event does not fit its own schema (a bug in the producer).
    #[error("encoding {topic} record: {detail}")]
    Encode {
        /// Topic.
        topic: &'static str,
        /// Why.
        detail: String,
    },
}

impl CodecError {
    /// Retryable errors leave the record where it is; permanent ones make it poison (DLQ).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Registry(e) if e.is_retryable())
    }
}

/// Encoder and decoder for every imgpipe event, sharing one registry and its caches.
pub struct Codec {
    registry: RegistryConfig,
    namespace: String,
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    reader_schemas: RwLock<HashMap<&'static str, Arc<Schema>>>,
    same_schema: RwLock<HashMap<(&'static str, u32), bool>>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("registry", &self.registry.url)
            .finish_non_exhaustive()
    }
}

impl Codec {
    /// A codec for the deployment whose topics carry `namespace` as prefix.
    pub fn new(registry: &RegistryConfig, namespace: &str) -> Self {
        Self {
            encoder: AvroEncoder::new(registry.sr_settings()),
            decoder: AvroDecoder::new(registry.sr_settings()),
            registry: registry.clone(),
            namespace: namespace.to_owned(),
            reader_schemas: RwLock::default(),
            same_schema: RwLock::default(),
        }
    }

    /// The namespaced topic an event type is written to.
    pub fn topic<E: Event>(&self) -> String {
        format!("{}{}", self.namespace, E::TOPIC)
    }

    /// Encodes `event` in the wire format, registering its schema on first use.
    pub async fn encode<E: Event>(&self, event: &E) -> Result<Vec<u8>, CodecError> {
        let topic = self.topic::<E>();
        let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
            topic.clone(),
            false,
            SuppliedSchema::new(None, SchemaType::Avro, E::SCHEMA.to_owned()),
        );
        self.encoder
            .encode_struct(event, &strategy)
            .await
            .map_err(|error| {
                if error.retriable {
                    CodecError::Registry(self.registry.classify(&topic, error))
                } else {
                    CodecError::Encode {
                        topic: E::TOPIC,
                        detail: error.to_string(),
                    }
                }
            })
    }

    /// Decodes a wire-format record as `E`, resolving the writer's schema against `E`'s.
    ///
    /// Fast path: while the writer's schema is the reader's (the usual case between schema
    /// changes), the body is deserialized straight into `E`; otherwise it goes through Avro's
    /// generic value and schema resolution.
    pub async fn decode<E: Event>(&self, bytes: &[u8]) -> Result<E, CodecError> {
        let (id, body) = match bytes {
            [] | [_] | [_, _] | [_, _, _] | [_, _, _, _] => {
                return Err(CodecError::NotWireFormat("shorter than the 5-byte header"));
            }
            [0, a, b, c, d, body @ ..] => (u32::from_be_bytes([*a, *b, *c, *d]), body),
            _ => return Err(CodecError::NotWireFormat("magic byte is not 0")),
        };
        let mismatch = |detail: String| CodecError::SchemaMismatch {
            expected: std::any::type_name::<E>(),
            detail,
        };
        let writer = self.decoder.get_schema(id).await.map_err(|error| {
            if error.retriable {
                CodecError::Registry(self.registry.classify(E::TOPIC, error))
            } else {
                CodecError::Undecodable(error.to_string())
            }
        })?;
        let reader = self
            .reader_schema::<E>()
            .map_err(|e| mismatch(e.to_string()))?;
        if self.writer_is_reader::<E>(id, &writer.parsed, &reader) {
            let datum = GenericDatumReader::builder(&writer.parsed)
                .build()
                .map_err(|e| mismatch(e.to_string()))?;
            let mut body = body;
            return datum
                .read_deser::<E>(&mut body)
                .map_err(|e| CodecError::Undecodable(e.to_string()));
        }
        self.decode_resolving::<E>(bytes, &reader).await
    }

    /// Decodes a wire-format record of any registered schema into JSON, for people reading a
    /// topic (`imgpipe ops tail`): records become objects, enums and UUIDs strings, timestamps
    /// numbers, unions their branch, and `bytes`/`fixed` values `{"bytes": <length>}` so an
    /// image never floods a terminal. Returns the writer schema's full name with the value.
    pub async fn decode_json(
        &self,
        bytes: &[u8],
    ) -> Result<(Option<String>, serde_json::Value), CodecError> {
        if bytes.len() < 5 {
            return Err(CodecError::NotWireFormat("shorter than the 5-byte header"));
        }
        if bytes[0] != 0 {
            return Err(CodecError::NotWireFormat("magic byte is not 0"));
        }
        let decoded = self.decoder.decode(Some(bytes)).await.map_err(|error| {
            if error.retriable {
                CodecError::Registry(self.registry.classify("(any topic)", error))
            } else {
                CodecError::Undecodable(error.to_string())
            }
        })?;
        let name = decoded.name.map(|name| name.fullname(None));
        Ok((name, avro_to_json(decoded.value)))
    }

    /// Whether schema `id` is `E`'s own schema (same canonical form), remembered per id.
    fn writer_is_reader<E: Event>(&self, id: u32, writer: &Schema, reader: &Schema) -> bool {
        let key = (E::TOPIC, id);
        if let Some(same) = self
            .same_schema
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return *same;
        }
        let same = writer.canonical_form() == reader.canonical_form();
        self.same_schema
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, same);
        same
    }

    /// The general path: writer value, resolved against the reader's schema.
    async fn decode_resolving<E: Event>(
        &self,
        bytes: &[u8],
        reader: &Schema,
    ) -> Result<E, CodecError> {
        let decoded = self.decoder.decode(Some(bytes)).await.map_err(|error| {
            if error.retriable {
                CodecError::Registry(self.registry.classify(E::TOPIC, error))
            } else {
                CodecError::Undecodable(error.to_string())
            }
        })?;
        let mismatch = |detail: String| CodecError::SchemaMismatch {
            expected: std::any::type_name::<E>(),
            detail,
        };
        let resolved = decoded
            .value
            .resolve(reader)
            .map_err(|e| mismatch(e.to_string()))?;
        from_value::<E>(&resolved).map_err(|e| mismatch(e.to_string()))
    }

    fn reader_schema<E: Event>(&self) -> Result<Arc<Schema>, apache_avro::Error> {
        if let Some(schema) = self
            .reader_schemas
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(E::TOPIC)
        {
            return Ok(schema.clone());
        }
        let schema = Arc::new(Schema::parse_str(E::SCHEMA)?);
        self.reader_schemas
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(E::TOPIC, schema.clone());
        Ok(schema)
    }
}

/// An Avro value as JSON for reading, with binary payloads shown as their length.
fn avro_to_json(value: apache_avro::types::Value) -> serde_json::Value {
    use apache_avro::types::Value as Avro;
    use serde_json::Value as Json;
    match value {
        Avro::Null => Json::Null,
        Avro::Boolean(b) => Json::Bool(b),
        Avro::Int(n) | Avro::Date(n) | Avro::TimeMillis(n) => n.into(),
        Avro::Long(n)
        | Avro::TimeMicros(n)
        | Avro::TimestampMillis(n)
        | Avro::TimestampMicros(n)
        | Avro::TimestampNanos(n)
        | Avro::LocalTimestampMillis(n)
        | Avro::LocalTimestampMicros(n)
        | Avro::LocalTimestampNanos(n) => n.into(),
        Avro::Float(x) => {
            serde_json::Number::from_f64(f64::from(x)).map_or(Json::Null, Json::Number)
        }
        Avro::Double(x) => serde_json::Number::from_f64(x).map_or(Json::Null, Json::Number),
        Avro::Bytes(b) | Avro::Fixed(_, b) => serde_json::json!({ "bytes": b.len() }),
        Avro::String(s) | Avro::Enum(_, s) => Json::String(s),
        Avro::Uuid(u) => Json::String(u.to_string()),
        Avro::Union(_, inner) => avro_to_json(*inner),
        Avro::Array(items) => Json::Array(items.into_iter().map(avro_to_json).collect()),
        Avro::Map(entries) => Json::Object(
            entries
                .into_iter()
                .map(|(k, v)| (k, avro_to_json(v)))
                .collect(),
        ),
        Avro::Record(fields) => Json::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, avro_to_json(v)))
                .collect(),
        ),
        // Decimals, durations and big decimals do not occur in imgpipe's schemas; show their
        // debug form rather than failing a tail on a schema from elsewhere.
        other => Json::String(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{ResizeRequested, UsageRecorded};

    #[test]
    fn json_for_reading_shows_binary_payloads_as_their_length() {
        use apache_avro::types::Value;
        let value = Value::Record(vec![
            ("request_id".into(), Value::String("r-1".into())),
            ("image".into(), Value::Bytes(vec![7; 1234])),
            (
                "format".into(),
                Value::Union(1, Box::new(Value::Enum(2, "WEBP".into()))),
            ),
            ("at".into(), Value::TimestampMillis(1_700_000_000_000)),
            ("width".into(), Value::Union(0, Box::new(Value::Null))),
        ]);
        assert_eq!(
            avro_to_json(value),
            serde_json::json!({
                "request_id": "r-1",
                "image": {"bytes": 1234},
                "format": "WEBP",
                "at": 1_700_000_000_000_i64,
                "width": null,
            })
        );
    }

    #[tokio::test]
    async fn bytes_outside_the_wire_format_are_permanent_errors() {
        let codec = Codec::new(&RegistryConfig::default(), "");
        for bytes in [
            &b""[..],
            b"\x00\x00",
            b"{\"json\": true}",
            b"\x01\x00\x00\x00\x01abc",
        ] {
            let err = codec.decode::<UsageRecorded>(bytes).await.unwrap_err();
            assert!(matches!(err, CodecError::NotWireFormat(_)), "{err}");
            assert!(!err.is_retryable());
        }
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_retryable() {
        // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
        let registry = RegistryConfig {
            url: "http://127.0.0.1:9".into(),
            ..Default::default()
        };
        let codec = Codec::new(&registry, "");
        let err = codec
            .encode(&crate::events::samples::request())
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        let err = codec
            .decode::<ResizeRequested>(b"\x00\x00\x00\x00\x07abc")
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
    }
}

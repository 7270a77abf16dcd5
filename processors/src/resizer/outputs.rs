//! What a finished request produces: the reply to its requester, sent at once, and its usage
//! record (or, for a record that cannot be read, a DLQ record), waiting for the next transaction.

use super::*;

impl Worker {
    /// Turns a finished job into its reply and usage record and hands them to the tracker.
    pub(super) async fn finish(
        &mut self,
        pending: Pending,
        done: Option<JobDone>,
    ) -> Result<(), ResizerError> {
        self.metrics.in_flight.set(self.jobs.len() as i64);
        let Some(done) = done else { return Ok(()) };
        let request = &pending.request;
        let mut timings = StageTimings {
            queue_us: micros(done.queue),
            ..StageTimings::default()
        };
        let (image, error, input, outcome) = match done.result {
            Ok(resized) => {
                timings = StageTimings {
                    queue_us: timings.queue_us,
                    ..resized.timings
                };
                let input = Some((
                    resized.input_format,
                    resized.input_width,
                    resized.input_height,
                ));
                let image = ResizedImage {
                    format: resized.format,
                    width: dim(resized.width),
                    height: dim(resized.height),
                    bytes: resized.bytes,
                };
                (Some(image), None, input, "ok")
            }
            Err(JobError::Kernel(error)) => {
                if error.status() >= 500 {
                    tracing::error!(request_id = %request.request_id, %error, "Resize failed");
                }
                let failure = ResizeError {
                    status: i32::from(error.status()),
                    code: error.code().to_owned(),
                    message: if error.status() >= 500 {
                        "The image could not be processed.".to_owned()
                    } else {
                        error.to_string()
                    },
                };
                (None, Some(failure), None, error.code())
            }
            Err(JobError::Panicked(panic)) => {
                tracing::error!(request_id = %request.request_id, %panic, "Resize kernel panicked on this input; answered 500");
                let failure = ResizeError {
                    status: 500,
                    code: "internal_error".to_owned(),
                    message: "The image could not be processed.".to_owned(),
                };
                (None, Some(failure), None, "internal_error")
            }
            Err(JobError::DeadlineExceeded) => {
                let failure = ResizeError {
                    status: 504,
                    code: "deadline_exceeded".to_owned(),
                    message: "The request was not processed before its deadline.".to_owned(),
                };
                (None, Some(failure), None, "deadline_exceeded")
            }
        };
        self.metrics.jobs.with_label_values(&[outcome]).inc();
        self.observe(&timings);

        let status = error.as_ref().map_or(200, |e| e.status);
        let usage = UsageRecorded {
            request_id: request.request_id.clone(),
            tenant_id: request.tenant_id.clone(),
            key_id: request.key_id.clone(),
            // Never later than the request's deadline: the api's record of the same request
            // is stamped by then (it answers 504 at the deadline at the latest), and the usage
            // rollups pair a request's records within a minute. A request taken up after its
            // deadline (a backlog after an outage, a redo after an aborted transaction) would
            // otherwise be stamped minutes after its api record and counted twice.
            event_time_ms: now_ms().min(request.deadline_at_ms),
            // Not `ok`: only the api, which sees the client take the image, may say that.
            outcome: if image.is_some() {
                schemas::events::outcomes::RESIZED.to_owned()
            } else {
                outcome.to_owned()
            },
            status,
            bytes_in: pending.bytes_in as i64,
            bytes_out: image.as_ref().map_or(0, |i| i.bytes.len() as i64),
            pixels_in: input.map_or(0, |(_, w, h)| i64::from(w) * i64::from(h)),
            pixels_out: image
                .as_ref()
                .map_or(0, |i| i64::from(i.width) * i64::from(i.height)),
            cpu_time_us: micros(done.cpu),
            input_format: input.map(|(f, _, _)| f.name().to_owned()),
            output_format: image
                .as_ref()
                .map(|i| ImageFormat::name(i.format).to_owned()),
            latency_us: now_ms().saturating_sub(request.received_at_ms).max(0) * 1000,
            source: UsageSource::Resizer,
        };
        let result = ResizeResult {
            request_id: request.request_id.clone(),
            tenant_id: request.tenant_id.clone(),
            completed_at_ms: now_ms(),
            image,
            error,
            timings,
        };
        // Shutdown while the registry is down: the record is left unfinished, so it is never
        // committed and is redone by the partition's next owner.
        let Some(reply) = self.encode_retrying(&result).await? else {
            return Ok(());
        };
        let Some(usage_payload) = self.encode_retrying(&usage).await? else {
            return Ok(());
        };
        let traceparent = pending.trace.header();
        let headers = OwnedHeaders::new().insert(Header {
            key: TRACEPARENT,
            value: Some(&traceparent),
        });
        let source = (pending.partition, pending.offset);
        let reply = OutRecord {
            source,
            topic: request.reply_topic.clone(),
            partition: Some(request.reply_partition),
            key: request.request_id.clone(),
            payload: reply,
            headers: headers.clone(),
        };
        let mut outputs = Outputs::committed(OutRecord {
            source,
            topic: self.codec.topic::<UsageRecorded>(),
            partition: None,
            key: request.tenant_id.clone(),
            payload: usage_payload,
            headers,
        });
        match transaction::send(&self.reply_producer, &reply) {
            Ok(delivery) => outputs.reply = Some(SentReply { source, delivery }),
            // Refused before it was queued (a partition that does not exist, a full queue): it
            // goes into the transaction instead, which dead-letters or retries it as any output.
            Err(error) => {
                tracing::debug!(%error, "Reply not sent on its own; it goes in the transaction");
                outputs.records.insert(0, reply);
            }
        }
        self.tracker
            .complete(pending.partition, pending.offset, outputs);
        Ok(())
    }

    pub(super) fn observe(&self, timings: &StageTimings) {
        for (stage, us) in timings.stages() {
            self.metrics
                .stage_seconds
                .with_label_values(&[stage])
                .observe(us as f64 / 1e6);
        }
    }

    /// Encodes a result. The registry is only needed on first use per schema, so retrying only
    /// ever waits while it is down at start-up. A permanent failure means our own output does
    /// not fit its schema (a bug, or a registry refusing the schema): no record of this
    /// partition could ever be committed, so the resizer stops loudly instead of stalling.
    /// `None` when shutdown started while waiting: the record is abandoned uncommitted.
    pub(super) async fn encode_retrying<E: schemas::Event>(
        &self,
        event: &E,
    ) -> Result<Option<Vec<u8>>, ResizerError> {
        let mut backoff = RetryPolicy::DEPENDENCY.backoff();
        loop {
            match self.codec.encode(event).await {
                Ok(bytes) => return Ok(Some(bytes)),
                Err(error) if error.is_retryable() => {
                    tracing::warn!(%error, attempt = backoff.attempts() + 1, "Schema registry unavailable; retrying the encode");
                    if backoff.wait(&self.shutdown).await.is_err() {
                        return Ok(None);
                    }
                }
                Err(error) => {
                    tracing::error!(%error, topic = E::TOPIC, "Result does not fit its schema; stopping");
                    return Err(ResizerError::Encode(error));
                }
            }
        }
    }

    /// A record that cannot be processed: its original bytes, with the error class (e.g.
    /// `undecodable_request`), the error and its origin in headers.
    pub(super) fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        class: &'static str,
        error: &dyn std::fmt::Display,
    ) -> OutRecord {
        self.metrics.dlq_records.inc();
        self.metrics.jobs.with_label_values(&[class]).inc();
        tracing::warn!(
            partition = message.partition(),
            offset = message.offset(),
            class,
            %error,
            "Record sent to the dead-letter topic"
        );
        let source = (message.partition(), message.offset());
        // The record's own headers stay (its trace context, and `redrive.count`: a record that
        // is poison again after a redrive keeps its count, so the operator's redrive limit
        // holds); the DLQ's own headers are set afresh below.
        let own = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .filter(|h| !DLQ_HEADERS.contains(&h.key))
                    .fold(OwnedHeaders::new(), |kept, h| {
                        kept.insert(Header {
                            key: h.key,
                            value: h.value,
                        })
                    })
            })
            .unwrap_or_default();
        let headers = with_error(own, class, &error.to_string(), message.topic(), source);
        OutRecord {
            source,
            topic: self.committer.dlq_topic.clone(),
            partition: None,
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        }
    }
}

/// The headers a dead letter gets from the resizer (an input carrying them from an earlier
/// dead-lettering has them replaced, not repeated).
const DLQ_HEADERS: &[&str] = &[
    "error.class",
    "error.message",
    "source.topic",
    "source.partition",
    "source.offset",
    "target.topic",
    "target.partition",
];

/// `headers` plus why a record is dead-lettered (`error.class`, `error.message`) and which input
/// it comes from (`source.topic`, `source.partition`, `source.offset`).
pub(super) fn with_error(
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

pub(super) fn dim(pixels: u32) -> i32 {
    i32::try_from(pixels).unwrap_or(i32::MAX)
}

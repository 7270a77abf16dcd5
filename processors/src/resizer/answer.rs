//! What a finished request answers: the reply its requester gets and the usage record it is
//! billed by, decided from the request and its job's result alone. No I/O and no clock (the
//! caller passes `now_ms`), so every rule of the answer is a unit test away; encoding and sending
//! are the loop's.

use std::time::Duration;

use schemas::events::{
    ImageFormat, ResizeError, ResizeRequested, ResizeResult, ResizedImage, StageTimings,
    UsageRecorded, UsageSource, outcomes,
};

use super::job::{JobDone, JobError};
use schemas::events::source_host;

/// A finished request's reply, usage record and `outcome` label (the jobs metric's).
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) reply: ResizeResult,
    pub(super) usage: UsageRecorded,
    pub(super) outcome: &'static str,
}

/// The message of every 5xx answer: what failed inside is for the log, not the client.
const INTERNAL_MESSAGE: &str = "The image could not be processed.";

/// Answers `request` (whose encoded input was `bytes_in` bytes, inline or fetched) with its
/// job's result, at `now_ms`. A request with a `source_url` is billed with that URL's host as
/// `source_host`.
pub(super) fn answer(
    request: &ResizeRequested,
    bytes_in: usize,
    done: JobDone,
    now_ms: i64,
) -> Answer {
    let mut timings = StageTimings {
        queue_us: micros(done.queue),
        fetch_us: micros(done.fetch),
        ..StageTimings::default()
    };
    let (image, error, input, outcome) = match done.result {
        Ok(resized) => {
            timings = StageTimings {
                queue_us: timings.queue_us,
                fetch_us: timings.fetch_us,
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
            let failure = ResizeError {
                status: i32::from(error.status()),
                code: error.code().to_owned(),
                message: if error.status() >= 500 {
                    INTERNAL_MESSAGE.to_owned()
                } else {
                    error.to_string()
                },
            };
            (None, Some(failure), None, error.code())
        }
        Err(JobError::Panicked(_)) => {
            let failure = ResizeError {
                status: 500,
                code: "internal_error".to_owned(),
                message: INTERNAL_MESSAGE.to_owned(),
            };
            (None, Some(failure), None, "internal_error")
        }
        // The client's problem or the origin's, so its message is shown as it is (it names the
        // host and at most a range class, never an address or a library's words).
        Err(JobError::Source(error)) => {
            let failure = ResizeError {
                status: i32::from(error.status()),
                code: error.code().to_owned(),
                message: error.to_string(),
            };
            (None, Some(failure), None, error.code())
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
    let usage = UsageRecorded {
        request_id: request.request_id.clone(),
        tenant_id: request.tenant_id.clone(),
        key_id: request.key_id.clone(),
        // Never later than the request's deadline: the api's record of the same request is
        // stamped by then (it answers 504 at the deadline at the latest), and the usage rollups
        // pair a request's records within a minute. A request taken up after its deadline (a
        // backlog after an outage, a redo after an aborted transaction) would otherwise be
        // stamped minutes after its api record and counted twice.
        event_time_ms: now_ms.min(request.deadline_at_ms),
        // Not `ok`: only the api, which sees the client take the image, may say that.
        outcome: if image.is_some() {
            outcomes::RESIZED.to_owned()
        } else {
            outcome.to_owned()
        },
        status: error.as_ref().map_or(200, |e| e.status),
        bytes_in: bytes_in as i64,
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
        latency_us: now_ms.saturating_sub(request.received_at_ms).max(0) * 1000,
        source: UsageSource::Resizer,
        source_host: request.source_url.as_deref().and_then(source_host),
    };
    let reply = ResizeResult {
        request_id: request.request_id.clone(),
        tenant_id: request.tenant_id.clone(),
        completed_at_ms: now_ms,
        image,
        error,
        timings,
        source_validator: None,
    };
    Answer {
        reply,
        usage,
        outcome,
    }
}

fn dim(pixels: u32) -> i32 {
    i32::try_from(pixels).unwrap_or(i32::MAX)
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::kernel::{KernelError, Resized};

    const RECEIVED: i64 = 1_764_547_200_000;
    const DEADLINE: i64 = RECEIVED + 30_000;

    fn request() -> ResizeRequested {
        ResizeRequested {
            request_id: "req-1".into(),
            tenant_id: "tenant-1".into(),
            key_id: "key-1".into(),
            received_at_ms: RECEIVED,
            deadline_at_ms: DEADLINE,
            params: Default::default(),
            content_type: None,
            image: Vec::new(),
            reply_topic: "image.results".into(),
            reply_partition: 3,
            source_url: None,
        }
    }

    fn done(result: Result<Resized, JobError>, cpu_us: u64) -> JobDone {
        JobDone {
            result,
            cpu: Duration::from_micros(cpu_us),
            queue: Duration::from_micros(250),
            fetch: Duration::ZERO,
        }
    }

    /// The reply's timings for [`resized`] after [`done`]'s 250 µs on the pool's queue, with
    /// `fetch_us` for the source's download.
    fn replied_timings(fetch_us: i64) -> StageTimings {
        StageTimings {
            queue_us: 250,
            decode_us: 10,
            resize_us: 20,
            encode_us: 30,
            fetch_us,
        }
    }

    fn resized() -> Resized {
        Resized {
            format: ImageFormat::Webp,
            width: 40,
            height: 30,
            bytes: vec![1; 700],
            input_format: ImageFormat::Jpeg,
            input_width: 400,
            input_height: 300,
            timings: StageTimings {
                queue_us: 0,
                decode_us: 10,
                resize_us: 20,
                encode_us: 30,
                fetch_us: 0,
            },
        }
    }

    #[test]
    fn a_resized_image_is_replied_and_billed_as_resized() {
        let now = RECEIVED + 80;
        let a = answer(&request(), 5_000, done(Ok(resized()), 900), now);
        assert_eq!(a.outcome, "ok");
        let image = a.reply.image.as_ref().unwrap();
        assert_eq!(
            (image.format, image.width, image.height),
            (ImageFormat::Webp, 40, 30)
        );
        assert_eq!(a.reply.error, None);
        assert_eq!(a.reply.request_id, "req-1");
        assert_eq!(a.reply.completed_at_ms, now);
        assert_eq!(
            a.reply.timings,
            replied_timings(0),
            "the pool's queue time with the kernel's stages"
        );
        let u = &a.usage;
        assert_eq!(u.outcome, outcomes::RESIZED, "only the api may say ok");
        assert_eq!(u.status, 200);
        assert_eq!((u.bytes_in, u.bytes_out), (5_000, 700));
        assert_eq!((u.pixels_in, u.pixels_out), (120_000, 1_200));
        assert_eq!(u.cpu_time_us, 900);
        assert_eq!(u.input_format.as_deref(), Some("jpeg"));
        assert_eq!(u.output_format.as_deref(), Some("webp"));
        assert_eq!(u.event_time_ms, now);
        assert_eq!(u.latency_us, 80_000);
        assert_eq!(u.source, UsageSource::Resizer);
        assert_eq!(
            (
                u.request_id.as_str(),
                u.tenant_id.as_str(),
                u.key_id.as_str()
            ),
            ("req-1", "tenant-1", "key-1")
        );
    }

    #[test]
    fn a_client_error_says_what_was_wrong() {
        let error = KernelError::BadParameters("width must be positive".into());
        let text = error.to_string();
        let a = answer(
            &request(),
            10,
            done(Err(JobError::Kernel(error)), 40),
            RECEIVED,
        );
        assert_eq!(a.outcome, "bad_parameters");
        assert_eq!(a.reply.image, None);
        let failure = a.reply.error.unwrap();
        assert_eq!(
            (
                failure.status,
                failure.code.as_str(),
                failure.message.as_str()
            ),
            (400, "bad_parameters", text.as_str())
        );
        let u = &a.usage;
        assert_eq!((u.outcome.as_str(), u.status), ("bad_parameters", 400));
        assert_eq!((u.bytes_out, u.pixels_in, u.pixels_out), (0, 0, 0));
        assert_eq!(
            (u.input_format.as_ref(), u.output_format.as_ref()),
            (None, None)
        );
        assert_eq!(u.cpu_time_us, 40, "refused work still used CPU");
        assert_eq!(
            a.reply.timings,
            StageTimings {
                queue_us: 250,
                ..StageTimings::default()
            }
        );
    }

    #[test]
    fn server_errors_and_panics_hide_their_detail() {
        let failed = KernelError::Encode {
            format: "avif",
            source: "encoder ran out of memory".into(),
        };
        let a = answer(
            &request(),
            10,
            done(Err(JobError::Kernel(failed)), 5),
            RECEIVED,
        );
        let failure = a.reply.error.unwrap();
        assert_eq!(
            (failure.status, failure.code.as_str()),
            (500, "internal_error")
        );
        assert_eq!(failure.message, INTERNAL_MESSAGE);
        assert_eq!(a.outcome, "internal_error");

        let panicked = JobError::Panicked("index out of bounds".into());
        let a = answer(&request(), 10, done(Err(panicked), 5), RECEIVED);
        let failure = a.reply.error.unwrap();
        assert_eq!(
            (
                failure.status,
                failure.code.as_str(),
                failure.message.as_str()
            ),
            (500, "internal_error", INTERNAL_MESSAGE)
        );
        assert_eq!(
            (a.usage.outcome.as_str(), a.usage.status),
            ("internal_error", 500)
        );
        assert_eq!(a.outcome, "internal_error");
    }

    #[test]
    fn a_request_past_its_deadline_is_answered_504_and_billed_no_cpu() {
        let late = DEADLINE + 120_000;
        let a = answer(
            &request(),
            10,
            done(Err(JobError::DeadlineExceeded), 0),
            late,
        );
        let failure = a.reply.error.unwrap();
        assert_eq!(
            (failure.status, failure.code.as_str()),
            (504, "deadline_exceeded")
        );
        assert_eq!(a.outcome, "deadline_exceeded");
        assert_eq!(
            (a.usage.outcome.as_str(), a.usage.status),
            ("deadline_exceeded", 504)
        );
        assert_eq!(a.usage.cpu_time_us, 0);
        assert_eq!(
            a.usage.event_time_ms, DEADLINE,
            "stamped no later than the deadline, beside the api's record of the same request"
        );
        assert_eq!(a.reply.completed_at_ms, late);
    }

    fn by_url(url: &str) -> ResizeRequested {
        ResizeRequested {
            source_url: Some(url.into()),
            ..request()
        }
    }

    #[test]
    fn a_fetched_source_is_billed_with_its_host_and_fetched_bytes() {
        let a = answer(
            &by_url("https://images.example.com:8443/cat.jpg?v=2"),
            5_000,
            done(Ok(resized()), 900),
            RECEIVED + 80,
        );
        assert_eq!(a.outcome, "ok");
        assert_eq!(
            a.usage.source_host.as_deref(),
            Some("images.example.com:8443"),
            "the host, never the full URL"
        );
        assert_eq!(a.usage.bytes_in, 5_000);
        let inline = answer(&request(), 5_000, done(Ok(resized()), 900), RECEIVED);
        assert_eq!(inline.usage.source_host, None);
        assert_eq!(inline.reply.timings.fetch_us, 0, "nothing was fetched");
    }

    #[test]
    fn the_sources_download_is_a_stage_of_its_own_whatever_the_outcome() {
        let fetched = |result| JobDone {
            fetch: Duration::from_micros(7_000),
            ..done(result, 900)
        };
        let a = answer(
            &by_url("http://images.example.com/a.jpg"),
            5_000,
            fetched(Ok(resized())),
            RECEIVED + 80,
        );
        assert_eq!(a.reply.timings, replied_timings(7_000));
        assert_eq!(a.reply.timings.stages()[0], ("fetch", 7_000));
        let failed = answer(
            &by_url("http://images.example.com/a.jpg"),
            0,
            fetched(Err(JobError::Source(
                chassis::source::FetchError::TooLarge { limit: 10 },
            ))),
            RECEIVED + 80,
        );
        assert_eq!(failed.reply.timings.fetch_us, 7_000);
    }

    #[test]
    fn a_source_that_could_not_be_fetched_is_answered_with_its_code_and_billed_as_refused() {
        use chassis::source::{FetchError, RangeClass};
        let cases = [
            (
                FetchError::NotFound {
                    host: "images.example.com".into(),
                    status: 410,
                },
                404,
                "source_not_found",
            ),
            (
                FetchError::AddressRefused {
                    host: "images.example.com".into(),
                    class: RangeClass::LinkLocal,
                },
                403,
                "source_address_refused",
            ),
            (FetchError::TooLarge { limit: 10 }, 413, "source_too_large"),
        ];
        for (error, status, code) in cases {
            let message = error.to_string();
            let a = answer(
                &by_url("http://images.example.com/a.jpg"),
                0,
                done(Err(JobError::Source(error)), 0),
                RECEIVED + 5,
            );
            assert_eq!(a.outcome, code);
            assert_eq!(a.reply.image, None);
            let failure = a.reply.error.unwrap();
            assert_eq!(
                (failure.status, failure.code.as_str(), failure.message),
                (status, code, message),
                "4xx and 5xx alike: the message names the host, never an address"
            );
            let u = &a.usage;
            assert_eq!((u.outcome.as_str(), u.status), (code, status));
            assert_ne!(u.outcome, outcomes::RESIZED, "billed as refused");
            assert_eq!(u.source_host.as_deref(), Some("images.example.com"));
            assert_eq!((u.bytes_in, u.bytes_out, u.cpu_time_us), (0, 0, 0));
        }
    }

    #[test]
    fn latency_never_goes_negative() {
        let a = answer(&request(), 10, done(Ok(resized()), 1), RECEIVED - 5);
        assert_eq!(a.usage.latency_us, 0, "a clock behind the api's");
    }
}

//! One image request from arrival to answer, whichever route read it ([`Call`]): the request
//! produced to `image.requests` within its deadline, the reply awaited on the correlation topic,
//! the answer built from it, and the api's usage record of what the client got.
//!
//! Billing follows what the client got, not what a resizer did: once a request is produced, the
//! api writes the final usage record itself ([`Delivery`]): `ok` only when the 200's body was
//! handed to the connection, `client_closed_request` when the client went away first, the error
//! code otherwise. A resizer's own record says `resized`; the usage views prefer the api's record,
//! so a request whose api died before answering stays `resized`, never `ok`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chassis::http::RequestId;
use chassis::trace::{TRACEPARENT, TraceContext};
use schemas::events::{
    ImageFormat, ResizeParams, ResizeRequested, ResizeResult, StageTimings, UsageRecorded,
    UsageSource, outcomes,
};
use tracing::Instrument as _;

use super::metrics::ApiMetrics;
use super::problem::{self, Problem};
use super::publisher::{PublishError, RequestPublisher};
use super::replies::{ReplySlot, ReserveError};
use super::state::AppState;
use super::web_cache::Representation;

/// One image request from arrival to answer, whichever route read it: its id, its arrival, its
/// trace; [`Call::serve`] produces what the route read, waits for the reply and answers.
pub(super) struct Call {
    request_id: RequestId,
    received: Received,
    trace: TraceContext,
}

impl Call {
    /// The request's id (from the HTTP face), arrival time and trace (the client's, continued,
    /// or a new one).
    pub(super) fn start(request: &Request) -> Self {
        let received = Received::now();
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate);
        let trace = TraceContext::continue_or_start(
            request
                .headers()
                .get(TRACEPARENT)
                .and_then(|v| v.to_str().ok()),
        );
        Self {
            request_id,
            received,
            trace,
        }
    }

    pub(super) fn request_id(&self) -> &str {
        self.request_id.as_str()
    }

    pub(super) fn received(&self) -> Received {
        self.received
    }

    /// Awaits `read` (the route's checks), then produces the request and answers with its
    /// reply, unless the route answered already ([`Next::Answered`]); every log line of it
    /// carries the trace, and `route` labels its duration.
    pub(super) async fn serve(
        mut self,
        state: &AppState,
        route: &str,
        read: impl Future<Output = Result<Next, Problem>>,
    ) -> Response {
        let span = self.trace.span(self.request_id.as_str());
        let request_id = self.request_id.as_str();
        let (received, trace) = (self.received, &self.trace);
        let handled = async {
            let read = match read.await? {
                Next::Produce(read) => *read,
                Next::Answered(response, outcome) => return Ok::<_, Problem>((response, outcome)),
            };
            let published = publish_request(state, read, request_id, received, trace).await?;
            let response = await_reply(state, published, received).await?;
            Ok((response, outcomes::OK))
        };
        let (response, outcome) = match handled.instrument(span).await {
            Ok((response, outcome)) => (response, outcome.to_owned()),
            Err(problem) => {
                let code = problem.code.to_string();
                (problem.into_response(), code)
            }
        };
        state
            .metrics
            .request_seconds
            .with_label_values(&[route, outcome.as_str()])
            .observe(self.received.at.elapsed().as_secs_f64());
        response
    }
}

/// When a request arrived: its deadline counts from here, before the body is read.
#[derive(Debug, Clone, Copy)]
pub(super) struct Received {
    pub(super) at: Instant,
    pub(super) at_ms: i64,
}

impl Received {
    pub(super) fn now() -> Self {
        Self {
            at: Instant::now(),
            at_ms: now_ms(),
        }
    }

    fn latency_us(&self) -> i64 {
        i64::try_from(self.at.elapsed().as_micros()).unwrap_or(i64::MAX)
    }
}

/// What a route's checks lead to.
pub(super) enum Next {
    /// A request to produce and await (boxed: it is large, the other variant small).
    Produce(Box<ReadRequest>),
    /// Answered without a resize (a signed GET's 304), with the outcome its usage record and
    /// metrics carry (the record is written already).
    Answered(Response, &'static str),
}

impl From<ReadRequest> for Next {
    fn from(read: ReadRequest) -> Self {
        Self::Produce(Box::new(read))
    }
}

/// A request read and checked: who sent it, what to do, and the image.
pub(super) struct ReadRequest {
    /// The tenant's usage record so far (every answer from here on is also a usage record).
    pub(super) usage: UsageDraft,
    pub(super) params: ResizeParams,
    pub(super) input: Input,
    /// How a signed GET's answer is cached (`None` for a POST: not cacheable).
    pub(super) web: Option<Representation>,
}

/// Where the image of a request is.
pub(super) enum Input {
    /// In the request's body (`POST /v1/resize`), already sniffed.
    Inline {
        image: bytes::Bytes,
        format: ImageFormat,
        /// As the client sent it; the resizer sniffs regardless.
        content_type: Option<String>,
    },
    /// At an origin (a signed GET): the resizer fetches it, so only the URL rides Kafka.
    Source { url: url::Url },
}

impl Input {
    fn bytes_in(&self) -> usize {
        match self {
            Self::Inline { image, .. } => image.len(),
            Self::Source { .. } => 0,
        }
    }

    fn format(&self) -> Option<ImageFormat> {
        match self {
            Self::Inline { format, .. } => Some(*format),
            Self::Source { .. } => None,
        }
    }
}

/// A request the broker acknowledged, waiting for its reply.
pub(super) struct Published {
    slot: ReplySlot,
    /// Writes the request's final usage record, whatever happens from here.
    delivery: Delivery,
    /// Counts the request in flight until the answer is built.
    _in_flight: InFlight,
    /// A signed GET's caching headers.
    web: Option<Representation>,
    /// Arrival → the request record handed to the producer.
    accept: Duration,
    produce_started: Instant,
    acknowledged: Instant,
}

/// Reserves the reply slot and produces the request within what is left of its deadline.
pub(super) async fn publish_request(
    state: &AppState,
    read: ReadRequest,
    request_id: &str,
    received: Received,
    trace: &TraceContext,
) -> Result<Published, Problem> {
    let slot = state
        .replies
        .reserve(request_id)
        .map_err(|error| match error {
            ReserveError::NoPartition => {
                Problem::unavailable("not_ready", "The service is starting; retry shortly.")
            }
            ReserveError::Full => problem::overloaded(),
        })?;
    let in_flight = InFlight::enter(&state.metrics);

    let timeout = state.config.request_timeout;
    let deadline_at_ms = received.at_ms + i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    let (bytes_in, input_format) = (read.input.bytes_in(), read.input.format());
    let web = read.web;
    let (image, content_type, source_url) = match read.input {
        Input::Inline {
            image,
            content_type,
            ..
        } => (image.to_vec(), content_type, None),
        Input::Source { url } => (Vec::new(), None, Some(url.into())),
    };
    let event = ResizeRequested {
        request_id: request_id.to_owned(),
        tenant_id: read.usage.tenant_id.clone(),
        key_id: read.usage.key_id.clone(),
        received_at_ms: received.at_ms,
        deadline_at_ms,
        params: read.params,
        content_type,
        image,
        reply_topic: state.replies.topic().to_owned(),
        reply_partition: slot.partition,
        source_url,
    };
    let traceparent = trace.header();
    let produce_started = Instant::now();
    let accept = produce_started - received.at;
    let remaining = timeout.saturating_sub(received.at.elapsed());
    let produced = tokio::time::timeout(remaining, state.publisher.publish(&event, &traceparent));
    // Whatever happens from here (the client leaving included), the api writes this request's
    // final usage record.
    let delivery = Delivery::new(state.publisher.clone(), read.usage, bytes_in, input_format);
    match produced.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%request_id, %error, "Producing a resize request failed");
            let problem = match error {
                PublishError::Overloaded => problem::overloaded(),
                // A bug or a misconfiguration the config checks did not catch: not retryable.
                PublishError::Rejected(_) => Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "The request could not be accepted.",
                ),
                PublishError::Unavailable(_) | PublishError::Encode(_) => Problem::unavailable(
                    "kafka_unavailable",
                    "The service cannot accept requests right now; retry shortly.",
                ),
            };
            return Err(delivery.refused(problem));
        }
        Err(_) => return Err(delivery.refused(problem::deadline_exceeded())),
    }
    Ok(Published {
        slot,
        delivery,
        _in_flight: in_flight,
        web,
        accept,
        produce_started,
        acknowledged: Instant::now(),
    })
}

/// Waits for the resizer's reply within what is left of the deadline and answers with it.
pub(super) async fn await_reply(
    state: &AppState,
    mut published: Published,
    received: Received,
) -> Result<Response, Problem> {
    let remaining = state
        .config
        .request_timeout
        .saturating_sub(received.at.elapsed());
    let result = match tokio::time::timeout(remaining, published.slot.wait()).await {
        Ok(Some(result)) => result,
        Ok(None) | Err(_) => return Err(published.delivery.refused(problem::deadline_exceeded())),
    };
    let timings = ApiTimings {
        accept: published.accept,
        produce: published.acknowledged - published.produce_started,
        remote: published.acknowledged.elapsed(),
    };
    reply_response(
        state,
        result,
        received,
        timings,
        published.delivery,
        published.web.as_ref(),
    )
}

/// Where the api's time of one request went, next to the resizer's [`StageTimings`].
#[derive(Debug, Clone, Copy)]
struct ApiTimings {
    /// Arrival → the request record handed to the producer: body, authentication, validation.
    accept: Duration,
    /// Producing the request until the broker acknowledged it (`acks=all`).
    produce: Duration,
    /// Acknowledged → the reply handed to this request: the resizer's stages plus every Kafka
    /// hand-off (the request fetched, the reply produced and fetched, routed to the request).
    remote: Duration,
}

impl ApiTimings {
    /// Every stage in pipeline order with its duration in µs: `accept`, `produce`, the
    /// resizer's stages, then `handoff` (what `remote` spent outside the resizer's stages).
    fn stages(&self, resizer: &StageTimings) -> Vec<(&'static str, i64)> {
        let us = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        let resizer = resizer.stages();
        let in_resizer: i64 = resizer.iter().map(|(_, us)| us).sum();
        let mut stages = vec![("accept", us(self.accept)), ("produce", us(self.produce))];
        stages.extend(resizer);
        stages.push(("handoff", (us(self.remote) - in_resizer).max(0)));
        stages
    }
}

/// The client's answer from a resizer's reply: the image, or the resizer's problem.
fn reply_response(
    state: &AppState,
    result: ResizeResult,
    received: Received,
    timings: ApiTimings,
    delivery: Delivery,
    web: Option<&Representation>,
) -> Result<Response, Problem> {
    let stages = timings.stages(&result.timings);
    for &(stage, us) in &stages {
        state
            .metrics
            .stage_seconds
            .with_label_values(&[stage])
            .observe(us as f64 / 1e6);
    }
    let Some(image) = result.image else {
        let error = result
            .error
            .unwrap_or_else(|| schemas::events::ResizeError {
                status: 500,
                code: "internal_error".into(),
                message: "The image could not be processed.".into(),
            });
        let status = u16::try_from(error.status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Err(delivery.refused(Problem::new(status, error.code, error.message)));
    };
    let mut timing = String::new();
    for (stage, us) in stages {
        let _ = write!(timing, "{stage};dur={:.3}, ", us as f64 / 1000.0);
    }
    let _ = write!(
        timing,
        "total;dur={:.3}",
        received.at.elapsed().as_secs_f64() * 1000.0
    );
    let content_type = HeaderValue::from_static(image.format.mime());
    let body = delivery.image_body(image.bytes, image.format);
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    if let Ok(value) = HeaderValue::from_str(&timing) {
        headers.insert("server-timing", value);
    }
    if let Some(web) = web {
        web.apply(headers, result.source_validator.as_deref());
    }
    Ok(response)
}

/// What the api knows of a request for its usage record, once the tenant is authenticated.
#[derive(Debug, Clone)]
pub(super) struct UsageDraft {
    pub(super) request_id: String,
    pub(super) tenant_id: String,
    pub(super) key_id: String,
    pub(super) received: Received,
    /// Host of a signed GET's source URL (a billing dimension); `None` for an inline image.
    pub(super) source_host: Option<String>,
}

impl UsageDraft {
    /// The api's record of the answer `problem` (or of a delivered image when `problem` is
    /// `None`, with its size and format).
    fn record(
        &self,
        outcome: &str,
        status: u16,
        bytes_in: usize,
        input_format: Option<ImageFormat>,
        output: Option<(usize, ImageFormat)>,
    ) -> UsageRecorded {
        UsageRecorded {
            request_id: self.request_id.clone(),
            tenant_id: self.tenant_id.clone(),
            key_id: self.key_id.clone(),
            event_time_ms: now_ms(),
            outcome: outcome.to_owned(),
            status: i32::from(status),
            bytes_in: i64::try_from(bytes_in).unwrap_or(i64::MAX),
            bytes_out: output.map_or(0, |(bytes, _)| i64::try_from(bytes).unwrap_or(i64::MAX)),
            pixels_in: 0,
            pixels_out: 0,
            cpu_time_us: 0,
            input_format: input_format.map(|f| f.name().to_owned()),
            output_format: output.map(|(_, f)| f.name().to_owned()),
            latency_us: self.received.latency_us(),
            source: UsageSource::Api,
            source_host: self.source_host.clone(),
        }
    }

    /// The record of a signed GET answered 304 after its origin's own 304: no resize, no
    /// bytes, billed as `not_modified`.
    pub(super) fn not_modified(&self) -> UsageRecorded {
        self.record(
            outcomes::NOT_MODIFIED,
            StatusCode::NOT_MODIFIED.as_u16(),
            0,
            None,
            None,
        )
    }

    /// The record of a request answered with `problem`.
    pub(super) fn answered(
        &self,
        problem: &Problem,
        bytes_in: usize,
        input_format: Option<ImageFormat>,
    ) -> UsageRecorded {
        self.record(
            &problem.code,
            problem.status.as_u16(),
            bytes_in,
            input_format,
            None,
        )
    }
}

/// The api's final usage record of a produced request, written exactly once: by
/// [`Delivery::refused`], by the image body when its last byte is handed to the connection
/// (`ok`), or on drop when neither happened because the client went away
/// (`client_closed_request`, nginx's 499).
struct Delivery {
    publisher: Arc<dyn RequestPublisher>,
    usage: UsageDraft,
    bytes_in: usize,
    input_format: Option<ImageFormat>,
    output: Option<(usize, ImageFormat)>,
    settled: bool,
}

/// Status recorded for a client that left before its answer (nginx's convention; never sent).
const CLIENT_CLOSED_STATUS: u16 = 499;

impl Delivery {
    fn new(
        publisher: Arc<dyn RequestPublisher>,
        usage: UsageDraft,
        bytes_in: usize,
        input_format: Option<ImageFormat>,
    ) -> Self {
        Self {
            publisher,
            usage,
            bytes_in,
            input_format,
            output: None,
            settled: false,
        }
    }

    /// Records the request as answered with `problem`, and hands the problem back.
    fn refused(mut self, problem: Problem) -> Problem {
        let record = self
            .usage
            .answered(&problem, self.bytes_in, self.input_format);
        self.settle(record);
        problem
    }

    /// The 200 body, which records `ok` once it has been read to the end.
    fn image_body(mut self, bytes: Vec<u8>, format: ImageFormat) -> Body {
        self.output = Some((bytes.len(), format));
        Body::new(DeliveredBody {
            inner: http_body_util::Full::new(bytes::Bytes::from(bytes)),
            delivery: Some(self),
        })
    }

    fn delivered(mut self) {
        let record = self.usage.record(
            outcomes::OK,
            200,
            self.bytes_in,
            self.input_format,
            self.output,
        );
        self.settle(record);
    }

    fn settle(&mut self, record: UsageRecorded) {
        self.settled = true;
        let publisher = self.publisher.clone();
        // Drop may run outside a task (a connection torn down); the runtime is still there.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { publisher.record_usage(&record).await });
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.settled {
            let record = self.usage.record(
                outcomes::CLIENT_CLOSED,
                CLIENT_CLOSED_STATUS,
                self.bytes_in,
                self.input_format,
                None,
            );
            self.settle(record);
        }
    }
}

/// The image body of a 200: reports the delivery once its one frame is taken by the connection.
struct DeliveredBody {
    inner: http_body_util::Full<bytes::Bytes>,
    delivery: Option<Delivery>,
}

impl axum::body::HttpBody for DeliveredBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if frame.is_ready()
            && self.inner.is_end_stream()
            && let Some(delivery) = self.delivery.take()
        {
            delivery.delivered();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Counts a request as in flight for as long as it lives.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn enter(metrics: &ApiMetrics) -> Self {
        metrics.in_flight.inc();
        Self(metrics.in_flight.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoff_is_the_remote_time_outside_the_resizers_stages() {
        let timings = ApiTimings {
            accept: Duration::from_micros(150),
            produce: Duration::from_micros(700),
            remote: Duration::from_micros(5_000),
        };
        let resizer = StageTimings {
            queue_us: 100,
            decode_us: 200,
            resize_us: 300,
            encode_us: 400,
            fetch_us: 0,
        };
        // An image sent in the request: no fetch stage.
        assert_eq!(
            timings.stages(&resizer),
            vec![
                ("accept", 150),
                ("produce", 700),
                ("queue", 100),
                ("decode", 200),
                ("resize", 300),
                ("encode", 400),
                ("handoff", 4_000),
            ]
        );
        // A source fetched by URL: its download is a stage of its own, before the pool's
        // queue, and no longer part of the handoff.
        let fetched = StageTimings {
            fetch_us: 1_500,
            ..resizer
        };
        assert_eq!(
            timings.stages(&fetched),
            vec![
                ("accept", 150),
                ("produce", 700),
                ("fetch", 1_500),
                ("queue", 100),
                ("decode", 200),
                ("resize", 300),
                ("encode", 400),
                ("handoff", 2_500),
            ]
        );
        // A resizer reporting more than the api waited (a clock it cannot have) never makes a
        // negative stage.
        let slow = StageTimings {
            decode_us: 9_000,
            ..resizer
        };
        assert_eq!(timings.stages(&slow).last(), Some(&("handoff", 0)));
    }
}

//! W3C Trace Context: one `traceparent` per request, continued from the client (or started at
//! the api), carried in Kafka record headers to the resizer and back on the reply, and put on
//! every log line of the request as `trace_id` (through a [`tracing`] span, see [`TraceContext::span`]).

/// The header name, on HTTP requests and Kafka records alike.
pub const TRACEPARENT: &str = "traceparent";

/// One position in a trace: the trace, this hop's span, the caller's span it continues (if any),
/// and whether the caller samples it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    parent_span_id: Option<u64>,
    flags: u8,
}

impl TraceContext {
    /// Parses a `traceparent` value (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`).
    /// Versions above 00 are read as 00, as the spec asks; version `ff`, all-zero ids, upper-case
    /// hex and wrong lengths are refused (`None`).
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || !lower_hex(version) {
            return None;
        }
        // Version 00 has exactly four fields; later versions may append more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        if !(lower_hex(trace) && lower_hex(span) && lower_hex(flags)) {
            return None;
        }
        let context = Self {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            parent_span_id: None,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (context.trace_id != 0 && context.span_id != 0).then_some(context)
    }

    /// A new trace, sampled.
    pub fn start() -> Self {
        Self {
            trace_id: nonzero_u128(),
            span_id: nonzero_u64(),
            parent_span_id: None,
            flags: 0x01,
        }
    }

    /// The next hop of the same trace: a new span id, the same trace id and flags.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero_u64(),
            parent_span_id: Some(self.span_id),
            ..*self
        }
    }

    /// The caller's trace continued (a child of its span), or a new trace when it sent none or
    /// an invalid one.
    pub fn continue_or_start(header: Option<&str>) -> Self {
        header
            .and_then(Self::parse)
            .map_or_else(Self::start, |caller| caller.child())
    }

    /// The trace id, 32 lower-case hex digits.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The `traceparent` value of this hop.
    pub fn header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// The `request` span of this hop: every log line written inside it carries its `trace_id`
    /// and `request_id` (JSON lines under `span`). When spans are exported over OTLP, the
    /// exported span continues the caller's span in this trace, and this hop adopts its span id,
    /// so the `traceparent` sent on names a span the collector has.
    pub fn span(&mut self, request_id: &str) -> tracing::Span {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
        };
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let span = tracing::info_span!("request", trace_id = tracing::field::Empty, request_id);
        // The exported span continues the caller's; a trace started here is a new root.
        let parent = match self.parent_span_id {
            Some(caller) => {
                opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
                    TraceId::from_bytes(self.trace_id.to_be_bytes()),
                    SpanId::from_bytes(caller.to_be_bytes()),
                    TraceFlags::new(self.flags),
                    true,
                    TraceState::default(),
                ))
            }
            None => opentelemetry::Context::new(),
        };
        // Fails (harmlessly) when no OTLP layer is installed: this hop then keeps its own ids.
        if span.set_parent(parent).is_ok() {
            let context = span.context();
            let exported = context.span().span_context().clone();
            if exported.is_valid() {
                self.trace_id = u128::from_be_bytes(exported.trace_id().to_bytes());
                self.span_id = u64::from_be_bytes(exported.span_id().to_bytes());
            }
        }
        span.record("trace_id", self.trace_id());
        span
    }
}

fn lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn nonzero_u128() -> u128 {
    // UUID v4 is 122 random bits from the OS generator: plenty for a trace id.
    uuid::Uuid::new_v4().as_u128().max(1)
}

fn nonzero_u64() -> u64 {
    (uuid::Uuid::new_v4().as_u128() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_clients_trace_is_continued_with_a_new_span() {
        let caller = TraceContext::parse(CLIENT).expect("valid");
        assert_eq!(caller.header(), CLIENT, "round trip");
        let next = TraceContext::continue_or_start(Some(CLIENT));
        assert_eq!(next.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(next.header(), CLIENT, "a new span id");
        assert!(next.header().ends_with("-01"), "flags kept");
        let hop = next.child();
        assert_eq!(hop.trace_id(), next.trace_id());
        assert_ne!(hop, next);
    }

    #[test]
    fn invalid_headers_start_a_new_trace() {
        for bad in [
            "",
            "garbage",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
            let started = TraceContext::continue_or_start(Some(bad));
            assert_ne!(started.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(TraceContext::parse(&started.header()), Some(started));
        }
        // A later version with more fields is read as version 00.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        assert!(TraceContext::parse(future).is_some());
    }
}

//! Instants in usage queries: accepted as integer epoch seconds or RFC 3339
//! (`2025-01-31T12:00:00Z`, `2025-01-31T13:00:00+01:00`), written back as RFC 3339 in UTC.
//! Whole seconds, because `usage_raw.event_time` is a `DateTime` (18.16 has no `DateTime64`):
//! a fraction other than zero is refused rather than truncated, which would widen the range
//! the caller asked for. Parsing and formatting are `jiff`'s.

/// Seconds since the Unix epoch, within ClickHouse `DateTime`'s range (1970 – 2106).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(i64);

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not epoch seconds or an RFC 3339 time between 1970 and 2106: {reason}")]
pub struct TimestampError {
    /// The text given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

const MAX_SECONDS: i64 = u32::MAX as i64;

impl Timestamp {
    /// From epoch seconds.
    pub fn from_epoch_seconds(seconds: i64) -> Option<Self> {
        (0..=MAX_SECONDS)
            .contains(&seconds)
            .then_some(Self(seconds))
    }

    /// Epoch seconds.
    pub fn epoch_seconds(self) -> i64 {
        self.0
    }

    /// Parses epoch seconds or RFC 3339 (an offset is required: `Z` or `±hh:mm`).
    pub fn parse(input: &str) -> Result<Self, TimestampError> {
        let error = |reason| TimestampError {
            input: input.chars().take(64).collect(),
            reason,
        };
        let text = input.trim();
        let seconds = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            text.parse::<i64>().map_err(|_| error("too large"))?
        } else {
            let instant = text.parse::<jiff::Timestamp>().map_err(|_| {
                // An unescaped `+` in a query string arrives as a space.
                if text.len() > 19 && text[19..].starts_with(' ') {
                    error("not RFC 3339 (a `+` offset in a URL must be written %2B)")
                } else {
                    error("not RFC 3339")
                }
            })?;
            if instant.subsec_nanosecond() != 0 {
                return Err(error("usage is counted in whole seconds: no fraction"));
            }
            instant.as_second()
        };
        Self::from_epoch_seconds(seconds).ok_or_else(|| error("out of range"))
    }

    /// RFC 3339 in UTC, e.g. `2025-01-31T12:00:00Z`.
    pub fn to_rfc3339(self) -> String {
        // Within 1970..2106 by construction, far inside jiff's range.
        jiff::Timestamp::from_second(self.0).map_or_else(|_| self.0.to_string(), |t| t.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_epoch_and_rfc3339_alike() {
        let epoch = Timestamp::parse("1700000000").expect("epoch");
        assert_eq!(Timestamp::parse("2023-11-14T22:13:20Z"), Ok(epoch));
        assert_eq!(Timestamp::parse("2023-11-14T23:13:20+01:00"), Ok(epoch));
        assert_eq!(Timestamp::parse("2023-11-14T22:13:20.000Z"), Ok(epoch));
        assert_eq!(Timestamp::parse("2023-11-14t22:13:20z"), Ok(epoch));
        assert_eq!(epoch.to_rfc3339(), "2023-11-14T22:13:20Z");
        assert_eq!(
            Timestamp::parse("2024-02-29T00:00:00Z").map(Timestamp::to_rfc3339),
            Ok("2024-02-29T00:00:00Z".to_owned())
        );
        assert_eq!(
            Timestamp::from_epoch_seconds(u32::MAX.into())
                .unwrap()
                .to_rfc3339(),
            "2106-02-07T06:28:15Z"
        );
    }

    #[test]
    fn refuses_what_is_not_a_time() {
        for bad in [
            "",
            "yesterday",
            "2023-02-29T00:00:00Z",
            "2023-11-14T22:13:20",
            "2023-11-14T25:00:00Z",
            "2023-11-14T22:13:20.Z",
            "1969-12-31T23:59:59Z",
            "99999999999",
            "-5",
            "2023-11-14T22:13:20+1:00",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fractions_and_unescaped_plus_get_their_own_reason() {
        let fraction = Timestamp::parse("2023-11-14T22:13:20.123Z").unwrap_err();
        assert!(fraction.reason.contains("whole seconds"), "{fraction}");
        // `+01:00` sent unescaped in a query string decodes to ` 01:00`.
        let plus = Timestamp::parse("2023-11-14T23:13:20 01:00").unwrap_err();
        assert!(plus.reason.contains("%2B"), "{plus}");
    }
}

//! Instants in usage queries: accepted as integer epoch seconds or RFC 3339
//! (`2025-01-31T12:00:00Z`, `2025-01-31T13:00:00+01:00`), written back as RFC 3339 in UTC.
//! Whole seconds, because `usage_raw.event_time` is a `DateTime` (18.16 has no `DateTime64`);
//! fractions are truncated. Hand-rolled to avoid a date library for two conversions.

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

    /// Parses epoch seconds or RFC 3339.
    pub fn parse(input: &str) -> Result<Self, TimestampError> {
        let error = |reason| TimestampError {
            input: input.chars().take(64).collect(),
            reason,
        };
        let text = input.trim();
        let seconds = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            text.parse::<i64>().map_err(|_| error("too large"))?
        } else {
            parse_rfc3339(text).ok_or_else(|| error("not RFC 3339"))?
        };
        Self::from_epoch_seconds(seconds).ok_or_else(|| error("out of range"))
    }

    /// RFC 3339 in UTC, e.g. `2025-01-31T12:00:00Z`.
    pub fn to_rfc3339(self) -> String {
        let days = self.0.div_euclid(86_400);
        let rest = self.0.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            rest / 3600,
            rest % 3600 / 60,
            rest % 60
        )
    }
}

fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let offset = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let value = |a: u8, b: u8| i64::from(a - b'0') * 10 + i64::from(b - b'0');
            let (hours, minutes) = (value(*h1, *h2), value(*m1, *m2));
            if hours > 23 || minutes > 59 {
                return None;
            }
            let total = hours * 3600 + minutes * 60;
            if *sign == b'+' { total } else { -total }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_epoch_and_rfc3339_alike() {
        let epoch = Timestamp::parse("1700000000").expect("epoch");
        assert_eq!(Timestamp::parse("2023-11-14T22:13:20Z"), Ok(epoch));
        assert_eq!(Timestamp::parse("2023-11-14T23:13:20.999+01:00"), Ok(epoch));
        assert_eq!(Timestamp::parse("2023-11-14t22:13:20z"), Ok(epoch));
        assert_eq!(epoch.to_rfc3339(), "2023-11-14T22:13:20Z");
        assert_eq!(
            Timestamp::parse("2024-02-29T00:00:00Z").map(Timestamp::to_rfc3339),
            Ok("2024-02-29T00:00:00Z".to_owned())
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
    fn round_trips_every_day_across_leap_years() {
        for days in (0..60_000).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}

//! Durations as runbook authors write them: `90s`, `5m`, `1h30m`, `250ms`, `1d`.

use std::fmt::Write;
use std::time::Duration;

/// Why a duration did not parse; the message tells how to write one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing was written.
    #[error("empty duration")]
    Empty,
    /// A number without a unit, e.g. `30`.
    #[error("`{0}` has no unit")]
    MissingUnit(String),
    /// An unknown unit, e.g. `5min` or `5 minutes`.
    #[error("unknown unit `{unit}` in `{text}`{}", .suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default())]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// The unit found.
        unit: String,
        /// The text with that unit written the way durations are (`5 minutes` → `5m`), when the
        /// unit is a known spelling of one.
        suggestion: Option<String>,
    },
    /// Something that is not a number where one was expected.
    #[error("`{0}` is not a duration")]
    Malformed(String),
    /// More than [`MAX`] (ten years): no procedure waits that long, and sums of such
    /// durations (timeouts × attempts, worst cases) must stay computable.
    #[error("`{0}` is too long: durations are limited to 3650d (ten years)")]
    Overflow(String),
}

/// The longest duration a runbook, drill or trigger may write: ten years.
pub const MAX: Duration = Duration::from_hours(3650 * 24);

/// How to write a duration, for error help texts.
pub const DURATION_HELP: &str =
    "write a duration as numbers with units ms, s, m, h or d, e.g. `90s`, `5m`, `1h30m`";

/// Parse a duration.
///
/// # Errors
/// When the text is not a sequence of `<number><unit>`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total: u128 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::Malformed(t.to_owned()));
        }
        let n: u128 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::Overflow(t.to_owned()))?;
        let number = &rest[..digits];
        let segment_start = t.len() - rest.len();
        rest = &rest[digits..];
        // `5 minutes`: a unit after spaces is read as one, so the error names it.
        let spaced = rest.trim_start();
        let unit_len = spaced.bytes().take_while(u8::is_ascii_alphabetic).count();
        if unit_len == 0 {
            return Err(DurationError::MissingUnit(t.to_owned()));
        }
        let unit = &spaced[..unit_len];
        let after = &spaced[unit_len..];
        if spaced.len() != rest.len() {
            return Err(unknown_unit(t, unit, segment_start, number, after));
        }
        rest = after;
        let ms: u128 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(unknown_unit(t, unit, segment_start, number, after)),
        };
        total = n
            .checked_mul(ms)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(|| DurationError::Overflow(t.to_owned()))?;
    }
    let ms = u64::try_from(total).map_err(|_| DurationError::Overflow(t.to_owned()))?;
    let d = Duration::from_millis(ms);
    if d > MAX {
        return Err(DurationError::Overflow(t.to_owned()));
    }
    Ok(d)
}

/// The error for `number unit` at `segment_start` of `text`, with the text rewritten around a
/// known spelling of a unit (`min`, `minutes`, `sec`, `hours`, …, or a valid unit after a space).
fn unknown_unit(
    text: &str,
    unit: &str,
    segment_start: usize,
    number: &str,
    after: &str,
) -> DurationError {
    let canonical = match unit.to_ascii_lowercase().as_str() {
        "ms" | "msec" | "msecs" | "millis" | "millisecond" | "milliseconds" => Some("ms"),
        "s" | "sec" | "secs" | "second" | "seconds" => Some("s"),
        "m" | "min" | "mins" | "minute" | "minutes" => Some("m"),
        "h" | "hr" | "hrs" | "hour" | "hours" => Some("h"),
        "d" | "day" | "days" => Some("d"),
        _ => None,
    };
    DurationError::UnknownUnit {
        text: text.to_owned(),
        unit: unit.to_owned(),
        suggestion: canonical.map(|c| {
            format!(
                "{}{number}{c}{}",
                &text[..segment_start],
                after.split_whitespace().collect::<String>()
            )
        }),
    }
}

/// Format a duration the way authors write them (`1h30m`, `90ms`).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if !ms.is_multiple_of(1000) && ms < 60_000 {
        if ms < 1000 {
            return format!("{ms}ms");
        }
        return format!("{:.1}s", d.as_secs_f64());
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= n {
            let _ = write!(out, "{}{unit}", secs / n);
            secs %= n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_compound_durations() {
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_mins(90));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("1d").unwrap(), Duration::from_hours(24));
    }

    #[test]
    fn rejects_with_reason() {
        assert_eq!(parse("30"), Err(DurationError::MissingUnit("30".into())));
        assert!(matches!(
            parse("5min"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(parse("m5"), Err(DurationError::Malformed(_))));
        assert_eq!(
            parse("5 minutes").unwrap_err().to_string(),
            "unknown unit `minutes` in `5 minutes`; did you mean `5m`?"
        );
        assert_eq!(
            parse("1h30min").unwrap_err().to_string(),
            "unknown unit `min` in `1h30min`; did you mean `1h30m`?"
        );
        assert_eq!(
            parse("2 s").unwrap_err().to_string(),
            "unknown unit `s` in `2 s`; did you mean `2s`?"
        );
        assert_eq!(
            parse("5 fortnights").unwrap_err().to_string(),
            "unknown unit `fortnights` in `5 fortnights`"
        );
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert!(matches!(
            parse("99999999999999999999999d"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse("18446744073709551615ms"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(parse("3651d"), Err(DurationError::Overflow(_))));
        assert_eq!(parse("3650d").unwrap(), MAX);
    }

    proptest! {
        #[test]
        fn format_round_trips(secs in 0u64..10_000_000) {
            let d = Duration::from_secs(secs);
            prop_assert_eq!(parse(&format(d)).unwrap(), d);
        }
    }
}

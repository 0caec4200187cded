//! Durations as people write them: `250ms`, `3s`, `1m`, `1h`, `1m30s`, `1.5s`.
//!
//! A bare number is refused on purpose: `timeout = 30` could mean seconds or milliseconds, and a
//! gateway that guesses wrong is down for a long time or not at all.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration read from the config. Zero is allowed here; [`NonZeroDuration`] refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ConfigDuration(pub Duration);

/// A duration that must be greater than zero (intervals, timeouts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NonZeroDuration(pub Duration);

/// Why a duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing was written.
    #[error("empty duration: write it like `250ms`, `3s` or `1m`")]
    Empty,
    /// A number without a unit, or an unknown unit.
    #[error(
        "`{0}` is not a duration: write it like `250ms`, `3s`, `1m` or `1h` (units: ms, s, m, h)"
    )]
    Malformed(String),
    /// Larger than any timer we would honour (over 100 years).
    #[error("`{0}` is too long")]
    TooLong(String),
}

/// Parses `250ms`, `3s`, `1m`, `1h`, `1m30s`, `1.5s` (also `us` and `d`).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError::Empty);
    }
    let malformed = || DurationError::Malformed(trimmed.to_owned());
    let mut total_nanos: u128 = 0;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(malformed)?;
        if number_len == 0 {
            return Err(malformed());
        }
        let (number, after_number) = rest.split_at(number_len);
        let unit_len = after_number
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_number.len());
        let (unit, after_unit) = after_number.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return Err(malformed()),
        };
        total_nanos = total_nanos
            .checked_add(scaled(number, nanos_per_unit).ok_or_else(malformed)?)
            .ok_or_else(|| DurationError::TooLong(trimmed.to_owned()))?;
        rest = after_unit;
    }
    const HUNDRED_YEARS_NANOS: u128 = 100 * 365 * 86_400 * 1_000_000_000;
    if total_nanos > HUNDRED_YEARS_NANOS {
        return Err(DurationError::TooLong(trimmed.to_owned()));
    }
    let secs = (total_nanos / 1_000_000_000) as u64;
    let nanos = (total_nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// `number` (digits with at most one dot) times `nanos_per_unit`, in whole nanoseconds.
fn scaled(number: &str, nanos_per_unit: u128) -> Option<u128> {
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') || fraction.len() > 9 {
        return None;
    }
    let whole_value: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut result = whole_value.checked_mul(nanos_per_unit)?;
    if !fraction.is_empty() {
        let digits = fraction.len() as u32;
        let fraction_value: u128 = fraction.parse().ok()?;
        result = result.checked_add(fraction_value * nanos_per_unit / 10u128.pow(digits))?;
    }
    Some(result)
}

/// Writes a duration back the way it would be configured (`1m30s`, `250ms`).
pub fn format_duration(duration: Duration) -> String {
    let total_ms = duration.as_millis();
    if total_ms == 0 {
        return if duration.is_zero() {
            "0s".to_owned()
        } else {
            format!("{}us", duration.as_micros())
        };
    }
    if !total_ms.is_multiple_of(1000) {
        return format!("{total_ms}ms");
    }
    let mut secs = total_ms / 1000;
    let mut text = String::new();
    for (unit, size) in [("h", 3600), ("m", 60)] {
        if secs >= size {
            text.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if secs > 0 || text.is_empty() {
        text.push_str(&format!("{secs}s"));
    }
    text
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl fmt::Display for NonZeroDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl ConfigDuration {
    /// Shorthand for tests and defaults.
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }
}

impl NonZeroDuration {
    /// Shorthand for defaults; `ms` must be non-zero.
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }
    /// The duration itself.
    pub const fn get(self) -> Duration {
        self.0
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string like \"250ms\", \"3s\" or \"1m\"")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Duration, E> {
        parse_duration(value).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "`{value}` has no unit: write a duration as a string like \"{value}s\" or \"{value}ms\""
        )))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Duration, E> {
        self.visit_i64(value as i64)
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "`{value}` has no unit: write a duration as a string like \"{value}s\""
        )))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DurationVisitor).map(Self)
    }
}

impl<'de> Deserialize<'de> for NonZeroDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let duration = deserializer.deserialize_any(DurationVisitor)?;
        if duration.is_zero() {
            return Err(de::Error::custom("must be greater than zero"));
        }
        Ok(Self(duration))
    }
}

fn duration_schema(generator: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
    let mut schema = String::json_schema(generator).into_object();
    schema.string().pattern = Some(r"^\s*([0-9]+(\.[0-9]+)?(us|µs|ms|s|m|h|d))+\s*$".to_owned());
    schema.metadata().description =
        Some("A duration such as \"250ms\", \"3s\", \"1m\" or \"1m30s\".".to_owned());
    schema.into()
}

impl JsonSchema for ConfigDuration {
    fn schema_name() -> String {
        "Duration".to_owned()
    }
    fn json_schema(generator: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        duration_schema(generator)
    }
}

impl JsonSchema for NonZeroDuration {
    fn schema_name() -> String {
        "NonZeroDuration".to_owned()
    }
    fn json_schema(generator: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        duration_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_the_units_of_the_contract() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for text in ["", "30", "s", "3x", "1..5s", "ms3", "-1s", "3 s", "1.5.2s"] {
            assert!(parse_duration(text).is_err(), "{text:?} was accepted");
        }
        assert!(matches!(
            parse_duration("99999999999d"),
            Err(DurationError::TooLong(_))
        ));
    }

    proptest! {
        #[test]
        fn formatting_then_parsing_gives_the_same_duration(ms in 0u64..10_000_000_000) {
            let duration = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }

        #[test]
        fn units_compose_additively(h in 0u64..100, m in 0u64..60, s in 0u64..60, ms in 0u64..1000) {
            let text = format!("{h}h{m}m{s}s{ms}ms");
            let expected = Duration::from_millis(((h * 60 + m) * 60 + s) * 1000 + ms);
            prop_assert_eq!(parse_duration(&text), Ok(expected));
        }

        #[test]
        fn never_panics_on_arbitrary_text(text in "\\PC{0,24}") {
            let _ = parse_duration(&text);
        }
    }
}

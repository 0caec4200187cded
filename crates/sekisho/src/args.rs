//! Parsers of command-line values shared by the subcommands.

use std::time::Duration;

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    sekisho_config::parse_duration(text).map_err(|e| e.to_string())
}

/// `MIN..MAX` or a single duration.
pub(crate) fn parse_think(text: &str) -> Result<(Duration, Duration), String> {
    match text.split_once("..") {
        Some((min, max)) => {
            let (min, max) = (parse_duration(min)?, parse_duration(max)?);
            if min > max {
                return Err(format!(
                    "{text}: the shortest think time is longer than the longest"
                ));
            }
            Ok((min, max))
        }
        None => parse_duration(text).map(|d| (d, d)),
    }
}

pub(crate) fn parse_ratio(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not between 0 and 1"))
    }
}

//! Rules over any exported metric: the gateway's `/metrics` text read back into samples, the
//! series a rule selects (a name and label matchers), and the readings a rule keeps over its
//! `window` for `avg` and `rate`.
//!
//! The monitor does not know the gateway: the binary hands it the Prometheus text exposition
//! (the same text `/metrics` serves), once per cycle and only when some rule watches a metric.
//! A series is a sample name as the text writes it (`sekisho_requests_total`,
//! `sekisho_request_duration_seconds_count`) with its labels; a rule matches every series of
//! that name whose labels include its matchers, one alert per series.
//!
//! `rate` is Prometheus's without extrapolation: the increase between the oldest reading kept
//! (the newest at or before `now - window`, or the first one while the window fills) and the
//! latest, over the time between them, a fall taken as a counter reset. `avg` is the mean of the
//! readings within the window. Both need the monitor's interval to be shorter than the window
//! to see more than one reading.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::manager::Labels;

/// One sample of a text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (`_total`, `_bucket`, `_count`, `_sum` included).
    pub name: String,
    /// Its labels.
    pub labels: Labels,
    /// Its value.
    pub value: f64,
}

/// The samples of a Prometheus text exposition (format 0.0.4, which OpenMetrics' samples also
/// follow); comments, and lines that cannot be read, are skipped.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim_start();
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Labels::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Reads `name="value",…}` into `labels`; what follows the `}`.
fn parse_labels<'a>(mut text: &'a str, labels: &mut Labels) -> Option<&'a str> {
    loop {
        text = text.trim_start_matches([' ', ',']);
        if let Some(after) = text.strip_prefix('}') {
            return Some(after);
        }
        let (name, after) = text.split_once('=')?;
        let mut chars = after.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (at, '"') => break at,
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.trim().to_owned(), value);
        // `after` starts with the opening quote, which `end` does not count.
        text = &after[end + 2..];
    }
}

/// The series a rule watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// The sample name.
    pub metric: String,
    /// Labels a series must have, with these values.
    pub matchers: Labels,
}

impl Selector {
    /// Whether `sample` is one of its series.
    pub fn matches(&self, sample: &Sample) -> bool {
        sample.name == self.metric
            && self
                .matchers
                .iter()
                .all(|(name, value)| sample.labels.get(name) == Some(value))
    }
}

/// The alert target of a series: its labels as Prometheus writes them
/// (`{class="5xx",route="orders"}`), or the metric's name when it has none.
pub fn series_target(sample: &Sample) -> String {
    if sample.labels.is_empty() {
        return sample.name.clone();
    }
    let inner: Vec<String> = sample
        .labels
        .iter()
        .map(|(name, value)| {
            let escaped = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{name}=\"{escaped}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// What a threshold rule compares with its thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// The latest reading.
    Value,
    /// The mean of the readings within the window.
    Avg(Duration),
    /// The per-second increase of a counter over the window.
    Rate(Duration),
}

impl Function {
    /// The window it keeps readings for, if any.
    pub fn window(self) -> Option<Duration> {
        match self {
            Self::Value => None,
            Self::Avg(window) | Self::Rate(window) => Some(window),
        }
    }
}

/// One series' readings over a window, oldest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct Readings {
    kept: VecDeque<(Instant, f64)>,
}

impl Readings {
    /// Adds the reading at `now`, forgets what the window no longer needs (the newest reading
    /// at or before its start stays, as the base of a rate), and computes `function`: `None`
    /// while a rate has a single reading. `value` keeps nothing.
    pub(crate) fn push(&mut self, now: Instant, value: f64, function: Function) -> Option<f64> {
        let Some(window) = function.window() else {
            return Some(value);
        };
        if self.kept.back().is_some_and(|(at, _)| *at >= now) {
            // The same evaluation seen twice (or a clock that did not move): keep the newer.
            self.kept.pop_back();
        }
        self.kept.push_back((now, value));
        if let Some(start) = now.checked_sub(window) {
            while self.kept.get(1).is_some_and(|(at, _)| *at <= start) {
                self.kept.pop_front();
            }
        }
        match function {
            Function::Value => Some(value),
            Function::Avg(window) => {
                let start = now.checked_sub(window);
                let within: Vec<f64> = self
                    .kept
                    .iter()
                    .filter(|(at, _)| start.is_none_or(|start| *at >= start))
                    .map(|(_, v)| *v)
                    .collect();
                (!within.is_empty()).then(|| within.iter().sum::<f64>() / within.len() as f64)
            }
            Function::Rate(_) => {
                let (first_at, _) = *self.kept.front()?;
                let (last_at, _) = *self.kept.back()?;
                let seconds = last_at.saturating_duration_since(first_at).as_secs_f64();
                if seconds <= 0.0 {
                    return None;
                }
                let mut increase = 0.0;
                let mut previous: Option<f64> = None;
                for (_, v) in &self.kept {
                    if let Some(p) = previous {
                        // A counter that fell was reset: it counted `v` since.
                        increase += if *v >= p { v - p } else { *v };
                    }
                    previous = Some(*v);
                }
                Some(increase / seconds)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_text_exposition_is_read_back_with_escaped_labels_and_special_values() {
        let text = "# HELP sekisho_requests Requests answered.\n\
                    # TYPE sekisho_requests counter\n\
                    sekisho_requests_total{route=\"orders\",upstream=\"orders\",class=\"5xx\"} 10\n\
                    sekisho_requests_total{route=\"we\\\"ird, one\",upstream=\"u\",class=\"2xx\"} 1\n\
                    sekisho_request_duration_seconds_bucket{route=\"r\",le=\"+Inf\"} 3 1700000000000\n\
                    sekisho_requests_in_flight 2\n\
                    sekisho_gauge{a=\"x\\ny\\\\\"} NaN\n\
                    sekisho_up{a=\"1\"} +Inf\n\
                    garbage{a=\"unterminated} 1\n\n";
        let samples = parse_exposition(text);
        assert_eq!(samples.len(), 6, "{samples:?}");
        assert_eq!(samples[0].name, "sekisho_requests_total");
        assert_eq!(samples[0].labels["class"], "5xx");
        assert_eq!(samples[0].value, 10.0);
        assert_eq!(samples[1].labels["route"], "we\"ird, one");
        assert_eq!(samples[2].labels["le"], "+Inf");
        assert_eq!(samples[2].value, 3.0);
        assert!(samples[3].labels.is_empty() && samples[3].value == 2.0);
        assert_eq!(samples[4].labels["a"], "x\ny\\");
        assert!(samples[4].value.is_nan());
        assert_eq!(samples[5].value, f64::INFINITY);
        assert_eq!(
            series_target(&samples[1]),
            "{class=\"2xx\",route=\"we\\\"ird, one\",upstream=\"u\"}"
        );
        assert_eq!(series_target(&samples[3]), "sekisho_requests_in_flight");
        let selector = Selector {
            metric: "sekisho_requests_total".to_owned(),
            matchers: [("class".to_owned(), "5xx".to_owned())].into(),
        };
        let matched: Vec<_> = samples.iter().filter(|s| selector.matches(s)).collect();
        assert_eq!(matched.len(), 1);
        assert_eq!(matched[0].labels["route"], "orders");
    }

    #[test]
    fn a_rate_is_the_increase_over_the_window_with_resets_and_an_avg_the_mean_within_it() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let rate = Function::Rate(Duration::from_secs(30));
        let mut readings = Readings::default();
        assert_eq!(readings.push(at(0), 100.0, rate), None, "one reading");
        assert_eq!(readings.push(at(10), 150.0, rate), Some(5.0));
        assert_eq!(readings.push(at(20), 250.0, rate), Some(7.5));
        // A restart of the counter: 250 → 20 counts 20, not −230.
        assert_eq!(readings.push(at(30), 20.0, rate), Some(170.0 / 30.0));
        // The window moved: the base is now the reading at 10 s (at or before 40 − 30).
        assert_eq!(
            readings.push(at(40), 20.0, rate),
            Some((100.0 + 20.0) / 30.0)
        );
        assert_eq!(readings.kept.len(), 4);
        // Quiet for a whole window: zero.
        readings.push(at(70), 20.0, rate);
        assert_eq!(readings.push(at(80), 20.0, rate), Some(0.0));

        let avg = Function::Avg(Duration::from_secs(20));
        let mut readings = Readings::default();
        assert_eq!(readings.push(at(0), 1.0, avg), Some(1.0));
        assert_eq!(readings.push(at(10), 0.0, avg), Some(0.5));
        // The reading at 0 s has left the window.
        assert_eq!(readings.push(at(30), 0.0, avg), Some(0.0));
        let mut latest = Readings::default();
        assert_eq!(latest.push(at(0), 3.0, Function::Value), Some(3.0));
        assert!(latest.kept.is_empty(), "value keeps no readings");
    }
}

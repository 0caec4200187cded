//! The gateway's own figures, read from its Prometheus `/metrics` (text format 0.0.4): cache
//! lookups by result, process CPU and memory, circuit states.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Uri};
use tokio::time::Instant;

use super::ScenarioOptions;
use crate::generator::{parse_url, HttpVersion, LoadClient};
use crate::report::GatewayFigures;
use crate::LoadError;

/// One sample of the exposition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub(crate) fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// The samples of a text exposition; lines it cannot read are skipped.
pub(crate) fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, rest) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, rest)
        }
        None => {
            let space = line.find(' ')?;
            (&line[..space], Vec::new(), &line[space..])
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name: name.trim().to_owned(),
        labels,
        value,
    })
}

/// `a="x",b="y"} rest` → the labels and `rest`.
fn parse_labels(text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let equals = rest.find('=')?;
        let key = rest[..equals].trim().to_owned();
        let mut chars = rest[equals + 1..].char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut escaped = false;
        let mut end = None;
        for (index, c) in chars {
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false;
                }
                (true, other) => {
                    value.push(other);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(index);
                    break;
                }
                (false, other) => value.push(other),
            }
        }
        let end = end?;
        labels.push((key, value));
        rest = &rest[equals + 1 + end + 1..];
    }
}

/// The sum of the samples named `name`, by the value of their label `label`.
fn sum_by(samples: &[Sample], name: &str, label: &str) -> std::collections::BTreeMap<String, f64> {
    let mut sums = std::collections::BTreeMap::new();
    for sample in samples.iter().filter(|s| s.name == name) {
        if let Some(key) = sample.label(label) {
            *sums.entry(key.to_owned()).or_insert(0.0) += sample.value;
        }
    }
    sums
}

fn single(samples: &[Sample], name: &str) -> Option<f64> {
    samples.iter().find(|s| s.name == name).map(|s| s.value)
}

/// The gateway's circuits at a glance: `open` when any circuit is open (or forced open), else
/// `half_open` when any is probing, else `closed` (also when there is no circuit at all).
pub(crate) fn circuits(samples: &[Sample]) -> &'static str {
    let in_state = |states: &[&str]| {
        samples.iter().any(|sample| {
            sample.name == "sekisho_circuit_state"
                && sample.value >= 1.0
                && sample.label("state").is_some_and(|s| states.contains(&s))
        })
    };
    if in_state(&["open", "forced_open"]) {
        "open"
    } else if in_state(&["half_open"]) {
        "half_open"
    } else {
        "closed"
    }
}

/// Scrapes a gateway's `/metrics`.
#[derive(Debug, Clone)]
pub(crate) struct Scraper {
    client: LoadClient,
    uri: Uri,
}

impl Scraper {
    pub(crate) fn new(url: &str) -> Result<Self, LoadError> {
        Ok(Self {
            client: LoadClient::new(HttpVersion::Http1, Duration::from_secs(5), None),
            uri: parse_url(url)?,
        })
    }

    pub(crate) async fn scrape(&self) -> Result<Vec<Sample>, String> {
        let (status, body) = self
            .client
            .fetch(Method::GET, self.uri.clone(), Bytes::new())
            .await?;
        if status != 200 {
            return Err(format!("{} answered {status}", self.uri));
        }
        Ok(parse(&String::from_utf8_lossy(&body)))
    }
}

/// The gateway's figures before a run, to be compared with those after it.
#[derive(Debug)]
pub(crate) struct Gauge {
    scraper: Scraper,
    before: Vec<Sample>,
    at: Instant,
}

const CACHE_LOOKUPS: &str = "sekisho_cache_lookups_total";
const CPU_SECONDS: &str = "process_cpu_seconds_total";
const RESIDENT_MEMORY: &str = "process_resident_memory_bytes";

impl Gauge {
    /// Scrapes `options.metrics` once, when it is set; an unreachable URL is an error before the
    /// run rather than a report without the figures.
    pub(crate) async fn start(options: &ScenarioOptions) -> Result<Option<Self>, LoadError> {
        let Some(url) = &options.metrics else {
            return Ok(None);
        };
        let scraper = Scraper::new(url)?;
        let before = scraper.scrape().await.map_err(|why| LoadError::Metrics {
            url: url.clone(),
            why,
        })?;
        Ok(Some(Self {
            scraper,
            before,
            at: Instant::now(),
        }))
    }

    pub(crate) fn scraper(&self) -> &Scraper {
        &self.scraper
    }

    /// Scrapes again and compares; figures that could not be read stay empty.
    pub(crate) async fn finish(self) -> GatewayFigures {
        let Ok(after) = self.scraper.scrape().await else {
            return GatewayFigures::default();
        };
        figures(&self.before, &after, self.at.elapsed())
    }
}

/// What changed between two scrapes `elapsed` apart.
pub(crate) fn figures(before: &[Sample], after: &[Sample], elapsed: Duration) -> GatewayFigures {
    let old = sum_by(before, CACHE_LOOKUPS, "result");
    let mut lookups = sum_by(after, CACHE_LOOKUPS, "result");
    for (result, count) in &mut lookups {
        *count -= old.get(result).copied().unwrap_or(0.0);
    }
    let count = |results: &[&str]| -> f64 {
        results
            .iter()
            .map(|r| lookups.get(*r).copied().unwrap_or(0.0))
            .sum()
    };
    let hits = count(&["hit", "stale", "stale_if_error", "negative"]);
    let all: f64 = lookups
        .iter()
        .filter(|(result, _)| result.as_str() != "bypass")
        .map(|(_, count)| count)
        .sum();
    let cpu = match (single(before, CPU_SECONDS), single(after, CPU_SECONDS)) {
        (Some(old), Some(new)) if !elapsed.is_zero() => {
            Some((new - old).max(0.0) / elapsed.as_secs_f64())
        }
        _ => None,
    };
    GatewayFigures {
        cache_hit_rate: (all > 0.0).then(|| hits / all),
        cache_lookups: lookups,
        cpu_cores: cpu,
        memory_mib: single(after, RESIDENT_MEMORY).map(|bytes| bytes / (1024.0 * 1024.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP sekisho_cache_lookups Requests of cached routes
# TYPE sekisho_cache_lookups counter
sekisho_cache_lookups_total{route="catalog",result="hit"} 90
sekisho_cache_lookups_total{route="catalog",result="miss"} 10
sekisho_cache_lookups_total{route="other",result="bypass"} 50
sekisho_circuit_state{upstream="payments",state="closed"} 0
sekisho_circuit_state{upstream="payments",state="open"} 1
sekisho_circuit_state{upstream="orders",state="open"} 0
sekisho_circuit_state{upstream="orders",state="half_open"} 1
process_cpu_seconds_total 12.5
process_resident_memory_bytes 10485760
odd{a="x\"y,}"} 3
"#;

    #[test]
    fn the_exposition_is_read_with_its_labels() {
        let samples = parse(TEXT);
        assert_eq!(samples.len(), 10);
        assert_eq!(samples[0].label("result"), Some("hit"));
        assert_eq!(samples[9].label("a"), Some("x\"y,}"));
        assert_eq!(samples[9].value, 3.0);
        assert_eq!(circuits(&samples), "open");
        assert_eq!(circuits(&samples[5..7]), "half_open");
        assert_eq!(circuits(&samples[..4]), "closed");
    }

    #[test]
    fn figures_are_the_difference_between_two_scrapes() {
        let after = parse(TEXT);
        let before = parse(
            "sekisho_cache_lookups_total{route=\"catalog\",result=\"hit\"} 10\nprocess_cpu_seconds_total 10.5\n",
        );
        let figures = figures(&before, &after, Duration::from_secs(4));
        assert_eq!(figures.cache_lookups["hit"], 80.0);
        // 80 hits of 90 lookups; bypass is not a lookup.
        assert!((figures.cache_hit_rate.expect("rate") - 80.0 / 90.0).abs() < 1e-9);
        assert_eq!(figures.cpu_cores, Some(0.5));
        assert_eq!(figures.memory_mib, Some(10.0));
    }
}

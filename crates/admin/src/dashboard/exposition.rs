//! Reads the gateway's own Prometheus exposition back into numbers: the request counters and
//! latency histograms, rate-limit decisions, cache lookups and retries the dashboard's snapshot
//! turns into rates and percentiles. The registry already keeps these figures for `/metrics`;
//! reading its text once per snapshot (not per viewer) keeps the data path untouched.

use std::collections::BTreeMap;

/// The metric names read here; they are the gateway's (`sekisho_gateway`'s `metrics::names`,
/// with `_total` on counters as the Prometheus text format writes them).
pub(crate) mod names {
    pub(crate) const REQUESTS: &str = "sekisho_requests_total";
    pub(crate) const DURATION_BUCKET: &str = "sekisho_request_duration_seconds_bucket";
    pub(crate) const RATE_LIMIT_DECISIONS: &str = "sekisho_rate_limit_decisions_total";
    pub(crate) const CACHE_LOOKUPS: &str = "sekisho_cache_lookups_total";
    pub(crate) const RETRIES: &str = "sekisho_retries_total";
    pub(crate) const RETRY_BUDGET_EXHAUSTED: &str = "sekisho_retry_budget_exhausted_total";
    pub(crate) const CONFIG_RELOADS: &str = "sekisho_config_reloads_total";
}

/// A route and the upstream it sends to.
pub(crate) type RouteKey = (String, String);

/// Cumulative figures of one route (→ upstream), as read from one exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RouteCounters {
    /// Answers by status class: 1xx … 5xx.
    pub(crate) by_class: [f64; 5],
    /// Latency histogram: (upper bound in seconds, cumulative count), ascending, +Inf last.
    pub(crate) buckets: Vec<(f64, f64)>,
}

impl RouteCounters {
    pub(crate) fn total(&self) -> f64 {
        self.by_class.iter().sum()
    }
}

/// Everything the snapshot reads from one exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Counters {
    pub(crate) routes: BTreeMap<RouteKey, RouteCounters>,
    /// Rate-limit decisions by scope (`*` or a route): (allowed, limited).
    pub(crate) rate_limits: BTreeMap<String, (f64, f64)>,
    /// Cache lookups by route and result.
    pub(crate) cache: BTreeMap<String, BTreeMap<String, f64>>,
    /// Retries by route (every reason).
    pub(crate) retries: BTreeMap<String, f64>,
    /// Retries refused by the route's budget.
    pub(crate) budget_exhausted: BTreeMap<String, f64>,
    /// Config reloads: (ok, error).
    pub(crate) reloads: (f64, f64),
}

impl Counters {
    /// Parses the Prometheus text format; lines it does not need, or cannot read, are skipped.
    pub(crate) fn parse(text: &str) -> Self {
        let mut counters = Self::default();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let Some((name, labels, value)) = sample(line) else {
                continue;
            };
            let label = |wanted: &str| {
                labels
                    .iter()
                    .find(|(name, _)| name == wanted)
                    .map(|(_, value)| value.clone())
                    .unwrap_or_default()
            };
            match name {
                names::REQUESTS => {
                    let class = label("class");
                    let index = match class.as_bytes().first() {
                        Some(digit @ b'1'..=b'5') => usize::from(digit - b'1'),
                        _ => continue,
                    };
                    let route = counters
                        .routes
                        .entry((label("route"), label("upstream")))
                        .or_default();
                    route.by_class[index] += value;
                }
                names::DURATION_BUCKET => {
                    let bound = match label("le").as_str() {
                        "+Inf" => f64::INFINITY,
                        other => match other.parse::<f64>() {
                            Ok(bound) => bound,
                            Err(_) => continue,
                        },
                    };
                    let route = counters
                        .routes
                        .entry((label("route"), label("upstream")))
                        .or_default();
                    route.buckets.push((bound, value));
                }
                names::RATE_LIMIT_DECISIONS => {
                    let entry = counters.rate_limits.entry(label("route")).or_default();
                    match label("result").as_str() {
                        "allowed" => entry.0 += value,
                        "limited" => entry.1 += value,
                        _ => {}
                    }
                }
                names::CACHE_LOOKUPS => {
                    *counters
                        .cache
                        .entry(label("route"))
                        .or_default()
                        .entry(label("result"))
                        .or_default() += value;
                }
                names::RETRIES => *counters.retries.entry(label("route")).or_default() += value,
                names::RETRY_BUDGET_EXHAUSTED => {
                    *counters.budget_exhausted.entry(label("route")).or_default() += value;
                }
                names::CONFIG_RELOADS => match label("result").as_str() {
                    "ok" => counters.reloads.0 += value,
                    "error" => counters.reloads.1 += value,
                    _ => {}
                },
                _ => {}
            }
        }
        for route in counters.routes.values_mut() {
            route
                .buckets
                .sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        }
        counters
    }
}

/// A sample's name, labels and value.
type Sample<'a> = (&'a str, Vec<(String, String)>, f64);

/// One sample line: `name{label="value",…} value` (a timestamp after the value is ignored).
fn sample(line: &str) -> Option<Sample<'_>> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut label_name = String::new();
        let end = loop {
            let (index, c) = chars.next()?;
            match c {
                '}' => break index,
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut label_name), value));
                }
                other => label_name.push(other),
            }
        };
        rest = &inner[end + 1..];
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some((name, labels, value))
}

/// The `quantile` (0..1) of the observations between two cumulative histograms of the same
/// buckets (`later` minus `earlier`), interpolated linearly inside the bucket, as Prometheus's
/// `histogram_quantile` does; `None` without observations. In seconds.
pub(crate) fn quantile(later: &[(f64, f64)], earlier: &[(f64, f64)], quantile: f64) -> Option<f64> {
    let counts: Vec<(f64, f64)> = later
        .iter()
        .map(|&(bound, count)| {
            let before = earlier
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0.0, |(_, c)| *c);
            (bound, (count - before).max(0.0))
        })
        .collect();
    let total = counts.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = quantile * total;
    let mut lower_bound = 0.0;
    let mut lower_count = 0.0;
    for &(bound, count) in &counts {
        if count >= rank {
            if bound.is_infinite() {
                // Beyond the last finite bucket: its bound is the best known figure.
                return Some(lower_bound);
            }
            let in_bucket = count - lower_count;
            if in_bucket <= 0.0 {
                return Some(bound);
            }
            return Some(lower_bound + (bound - lower_bound) * (rank - lower_count) / in_bucket);
        }
        lower_bound = bound;
        lower_count = count;
    }
    Some(lower_bound)
}

/// Sums histograms with the same buckets (a route's several label sets, an upstream's routes).
pub(crate) fn add_buckets(into: &mut Vec<(f64, f64)>, from: &[(f64, f64)]) {
    if into.is_empty() {
        into.extend_from_slice(from);
        return;
    }
    for (bucket, (_, count)) in into.iter_mut().zip(from) {
        bucket.1 += count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP sekisho_requests_total Requests answered.
# TYPE sekisho_requests_total counter
sekisho_requests_total{route="orders",upstream="orders",class="2xx"} 90
sekisho_requests_total{route="orders",upstream="orders",class="5xx"} 10
sekisho_requests_total{route="we\"ird, one",upstream="u",class="2xx"} 1
sekisho_request_duration_seconds_bucket{route="orders",upstream="orders",le="0.01"} 50
sekisho_request_duration_seconds_bucket{route="orders",upstream="orders",le="0.1"} 100
sekisho_request_duration_seconds_bucket{route="orders",upstream="orders",le="+Inf"} 100
sekisho_rate_limit_decisions_total{route="*",result="allowed"} 7
sekisho_rate_limit_decisions_total{route="*",result="limited"} 3
sekisho_cache_lookups_total{route="catalog",result="hit"} 4
sekisho_config_reloads_total{result="error"} 2
"#;

    #[test]
    fn the_exposition_is_read_back() {
        let counters = Counters::parse(TEXT);
        let orders = &counters.routes[&("orders".to_owned(), "orders".to_owned())];
        assert_eq!(orders.by_class, [0.0, 90.0, 0.0, 0.0, 10.0]);
        assert_eq!(orders.buckets.len(), 3);
        assert!(counters
            .routes
            .contains_key(&("we\"ird, one".to_owned(), "u".to_owned())));
        assert_eq!(counters.rate_limits["*"], (7.0, 3.0));
        assert_eq!(counters.cache["catalog"]["hit"], 4.0);
        assert_eq!(counters.reloads, (0.0, 2.0));
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let counters = Counters::parse(TEXT);
        let buckets = &counters.routes[&("orders".to_owned(), "orders".to_owned())].buckets;
        let median = quantile(buckets, &[], 0.5).expect("observations");
        assert!((median - 0.01).abs() < 1e-9, "{median}");
        let p75 = quantile(buckets, &[], 0.75).expect("observations");
        assert!((p75 - 0.055).abs() < 1e-9, "{p75}");
        // Only what happened between the two readings counts.
        let earlier = vec![(0.01, 50.0), (0.1, 50.0), (f64::INFINITY, 50.0)];
        let p50 = quantile(buckets, &earlier, 0.5).expect("observations");
        assert!(p50 > 0.01, "{p50}");
        assert_eq!(quantile(&earlier, &earlier, 0.5), None);
    }
}

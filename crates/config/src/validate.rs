//! Checks that need more than one value: references, combinations, files.
//!
//! Each problem is returned with the byte span it is about, so that it is reported at the value
//! the user must change, not at the top of the file.

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;

use crate::model::{
    AdaptiveConcurrency, Config, RateLimit, RateLimitAlgorithm, RateLimitBackend, Route,
    SessionStore, Spanned, Upstream,
};

mod alerts;
use alerts::validate_alerts;

type Problems = Vec<(Range<usize>, String)>;

pub(crate) fn validate(config: &Config, base_dir: Option<&Path>) -> Problems {
    let mut problems = Problems::new();
    validate_server(config, base_dir, &mut problems);
    for (name, upstream) in &config.upstreams {
        validate_upstream(name, upstream, &mut problems);
    }
    let mut route_names = HashSet::new();
    for route in &config.routes {
        if !route_names.insert(route.get_ref().name.as_str()) {
            problems.push((
                route.span(),
                format!(
                    "a route named `{}` is already defined: route names must be unique",
                    route.get_ref().name
                ),
            ));
        }
        validate_route(config, route, &mut problems);
    }
    validate_alerts(config, base_dir, &mut problems);
    validate_auth(config, &mut problems);
    problems
}

fn validate_auth(config: &Config, problems: &mut Problems) {
    let Some(auth) = &config.auth else {
        for route in &config.routes {
            if let Some(requirement) = &route.get_ref().auth {
                problems.push((
                    requirement.span(),
                    format!(
                        "route `{}` asks for `auth` but there is no [auth] section: add [auth] (users and sessions) or remove the route's `auth`",
                        route.get_ref().name
                    ),
                ));
            }
        }
        return;
    };
    let span = auth.span();
    let auth = auth.get_ref();
    if !auth.path_prefix.starts_with('/')
        || auth.path_prefix.len() < 2
        || auth.path_prefix.ends_with('/')
    {
        problems.push((
            span.clone(),
            format!(
                "auth.path_prefix `{}` must start with `/`, not end with one, and not be `/` alone (e.g. \"/auth\")",
                auth.path_prefix
            ),
        ));
    }
    if auth.redis_prefix.is_empty()
        || !auth
            .redis_prefix
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '*' | '?' | '[' | ']' | '\\'))
    {
        problems.push((
            span.clone(),
            format!(
                "auth.redis_prefix `{}` must be visible ASCII without glob characters (e.g. \"sekisho:auth:\")",
                auth.redis_prefix
            ),
        ));
    }
    if auth.session_store == SessionStore::Redis && config.store.redis.is_none() {
        problems.push((
            span.clone(),
            "auth.session_store = \"redis\" needs store.redis".to_owned(),
        ));
    }
    let argon2 = auth.argon2;
    if argon2.iterations == 0
        || argon2.parallelism == 0
        || argon2.parallelism > 255
        || u64::from(argon2.memory_kib) < 8 * u64::from(argon2.parallelism)
    {
        problems.push((
            span.clone(),
            format!(
                "auth.argon2: iterations and parallelism must be at least 1 (parallelism at most 255) and memory_kib at least 8 × parallelism, not {{ memory_kib = {}, iterations = {}, parallelism = {} }}",
                argon2.memory_kib, argon2.iterations, argon2.parallelism
            ),
        ));
    }
    if auth.access_ttl.get() > auth.session_absolute.get() {
        problems.push((
            span,
            format!(
                "auth.access_ttl ({}) is longer than auth.session_absolute ({})",
                auth.access_ttl, auth.session_absolute
            ),
        ));
    }
}

fn validate_server(config: &Config, base_dir: Option<&Path>, problems: &mut Problems) {
    for proxy in &config.server.trusted_proxies {
        if parse_network(proxy.get_ref()).is_none() {
            problems.push((
                proxy.span(),
                format!(
                    "trusted_proxies: `{}` is neither an address nor a network (e.g. \"10.0.0.0/8\", \"127.0.0.1\")",
                    proxy.get_ref()
                ),
            ));
        }
    }
    if let Some(limit) = &config.server.rate_limit {
        validate_rate_limit(config, "server.rate_limit", limit, problems);
    }
    if let Some(adaptive) = &config.server.adaptive_concurrency {
        validate_adaptive_concurrency("[server.adaptive_concurrency]", adaptive, problems);
    }
    if let Some(tls) = &config.server.tls {
        for (what, file, marker) in [
            ("certificate", &tls.get_ref().cert, "CERTIFICATE-----"),
            ("key", &tls.get_ref().key, "PRIVATE KEY-----"),
        ] {
            let path = match base_dir {
                Some(dir) if Path::new(file).is_relative() => dir.join(file),
                _ => Path::new(file).to_owned(),
            };
            match std::fs::read_to_string(&path) {
                Ok(text) if text.contains(marker) => {}
                Ok(_) => problems.push((
                    tls.span(),
                    format!("TLS {what} file `{}` holds no PEM {what}", path.display()),
                )),
                Err(error) => problems.push((
                    tls.span(),
                    format!("cannot read TLS {what} file `{}`: {error}", path.display()),
                )),
            }
        }
    }
    if config.admin.token.is_none() && !config.admin.listen.is_loopback() {
        problems.push((
            0..0,
            format!(
                "[admin] listens on {} without a `token`: set admin.token, or listen on a loopback address",
                config.admin.listen
            ),
        ));
    }
    if config.server.listen == config.admin.listen && config.server.listen.host_port().1 != 0 {
        problems.push((
            0..0,
            format!(
                "server.listen and admin.listen are both {}: they need different ports",
                config.server.listen
            ),
        ));
    }
}

fn validate_upstream(name: &Spanned<String>, upstream: &Upstream, problems: &mut Problems) {
    let targets = upstream.targets.get_ref();
    if targets.is_empty() {
        problems.push((
            upstream.targets.span(),
            format!("upstream `{}` has no targets", name.get_ref()),
        ));
    } else if targets.iter().all(|t| t.backup) {
        problems.push((
            upstream.targets.span(),
            format!(
                "every target of upstream `{}` is a backup: at least one must be primary",
                name.get_ref()
            ),
        ));
    }
    let mut seen = HashSet::new();
    for target in targets {
        if !seen.insert(target.address.as_str()) {
            problems.push((
                upstream.targets.span(),
                format!(
                    "target {} appears twice in upstream `{}`: use `weight` to give it a larger share",
                    target.address,
                    name.get_ref()
                ),
            ));
        }
    }
    if let Some(breaker) = &upstream.circuit_breaker {
        if !(breaker.open_for_multiplier >= 1.0 && breaker.open_for_multiplier.is_finite()) {
            problems.push((
                name.span(),
                format!(
                    "upstream `{}`: circuit_breaker.open_for_multiplier must be a number ≥ 1",
                    name.get_ref()
                ),
            ));
        }
    }
}

fn validate_route(config: &Config, spanned_route: &Spanned<Route>, problems: &mut Problems) {
    let route = spanned_route.get_ref();
    match (&route.path, &route.path_prefix) {
        (None, None) => problems.push((
            spanned_route.span(),
            format!(
                "route `{}` needs `path_prefix` (e.g. \"/\") or `path`",
                route.name
            ),
        )),
        (Some(path), Some(_)) => problems.push((
            path.span(),
            format!(
                "route `{}` has both `path` and `path_prefix`: keep one",
                route.name
            ),
        )),
        (Some(path), None) | (None, Some(path)) => {
            if !path.get_ref().starts_with('/') {
                problems.push((
                    path.span(),
                    format!("`{}` must start with `/`", path.get_ref()),
                ));
            }
        }
    }
    if route.strip_prefix && route.path_prefix.is_none() {
        problems.push((
            spanned_route.span(),
            format!(
                "route `{}` has `strip_prefix = true` but no `path_prefix`",
                route.name
            ),
        ));
    }
    if let Some(host) = &route.host {
        let bare = host.strip_prefix("*.").unwrap_or(host);
        let valid = !bare.is_empty()
            && bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid {
            problems.push((
                spanned_route.span(),
                format!(
                    "route `{}`: host `{host}` is not a host name (write it without port or scheme; \"*.example.com\" for a suffix)",
                    route.name
                ),
            ));
        }
    }
    check_upstream_reference(config, &route.name, &route.upstream, problems);
    if let Some(fallback) = &route.fallback {
        if let Some(alternate) = &fallback.get_ref().upstream {
            check_upstream_reference(config, &route.name, alternate, problems);
        }
        let fallback_ref = fallback.get_ref();
        if fallback_ref.upstream.is_none() && !fallback_ref.has_static() {
            problems.push((
                fallback.span(),
                format!(
                    "route `{}`: fallback needs an `upstream` or a static answer (`status`, `body`)",
                    route.name
                ),
            ));
        }
        if let Some(status) = fallback_ref.status {
            if !(200..=599).contains(&status) {
                problems.push((
                    fallback.span(),
                    format!(
                        "route `{}`: fallback.status {status} is not a final HTTP status (200–599)",
                        route.name
                    ),
                ));
            }
        }
    }
    if let Some(retry) = &route.retry {
        if retry.max_backoff < retry.backoff {
            problems.push((
                spanned_route.span(),
                format!(
                    "route `{}`: retry.max_backoff ({}) is shorter than retry.backoff ({})",
                    route.name, retry.max_backoff, retry.backoff
                ),
            ));
        }
    }
    if let Some(limit) = &route.rate_limit {
        let context = format!("route `{}`: rate_limit", route.name);
        validate_rate_limit(config, &context, limit, problems);
    }
    if let Some(adaptive) = &route.adaptive_concurrency {
        let context = format!("route `{}`: adaptive_concurrency", route.name);
        validate_adaptive_concurrency(&context, adaptive, problems);
    }
    if let Some(cache) = &route.cache {
        for name in &cache.targeted {
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token || name.eq_ignore_ascii_case("cache-control") {
                problems.push((
                    spanned_route.span(),
                    format!(
                        "route `{}`: cache.targeted: `{name}` is not a targeted field name (e.g. \"CDN-Cache-Control\")",
                        route.name
                    ),
                ));
            }
        }
        if cache.ttl_jitter.0 >= 1.0 {
            problems.push((
                spanned_route.span(),
                format!(
                    "route `{}`: cache.ttl_jitter must be below 1 (0.1 spreads expiries by ±10 %)",
                    route.name
                ),
            ));
        }
    }
}

/// Bounds in order, and factors that keep the limit moving the right way.
fn validate_adaptive_concurrency(
    context: &str,
    spanned: &Spanned<AdaptiveConcurrency>,
    problems: &mut Problems,
) {
    let settings = spanned.get_ref();
    let mut complain =
        |message: String| problems.push((spanned.span(), format!("{context}: {message}")));
    let (min, initial, max) = (
        settings.min_limit.0,
        settings.initial_limit.0,
        settings.max_limit.0,
    );
    if !(min <= initial && initial <= max) {
        complain(format!(
            "limits must satisfy min_limit ≤ initial_limit ≤ max_limit (got {min} ≤ {initial} ≤ {max})"
        ));
    }
    if !(settings.tolerance.is_finite() && settings.tolerance >= 1.0) {
        complain(format!(
            "tolerance {} must be at least 1.0 (1.5: latency may grow by half before the limit shrinks)",
            settings.tolerance
        ));
    }
    if settings.smoothing.0 <= 0.0 {
        complain("smoothing must be above 0 (0.2 is usual)".to_owned());
    }
    if !(0.5..=0.99).contains(&settings.backoff_ratio) {
        complain(format!(
            "backoff_ratio {} must lie between 0.5 and 0.99",
            settings.backoff_ratio
        ));
    }
}

/// A route's reference to an upstream, checked with a did-you-mean.
fn check_upstream_reference(
    config: &Config,
    route: &str,
    reference: &Spanned<String>,
    problems: &mut Problems,
) {
    let upstream_name = reference.get_ref();
    if config.upstream(upstream_name).is_some() {
        return;
    }
    let known: Vec<&str> = config
        .upstreams
        .keys()
        .map(|k| k.get_ref().as_str())
        .collect();
    let suggestion = known
        .iter()
        .map(|candidate| (strsim::jaro_winkler(upstream_name, candidate), *candidate))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, name)| format!(": did you mean `{name}`?"))
        .unwrap_or_else(|| {
            if known.is_empty() {
                ": no upstream is defined ([upstreams.NAME] with targets)".to_owned()
            } else {
                format!(" (defined: {})", known.join(", "))
            }
        });
    problems.push((
        reference.span(),
        format!("route `{route}` names unknown upstream `{upstream_name}`{suggestion}"),
    ));
}

fn validate_rate_limit(
    config: &Config,
    context: &str,
    spanned: &Spanned<RateLimit>,
    problems: &mut Problems,
) {
    let limit = spanned.get_ref();
    let mut complain = |message: String| problems.push((spanned.span(), message));
    match limit.algorithm {
        RateLimitAlgorithm::TokenBucket | RateLimitAlgorithm::Gcra => {
            if limit.capacity.is_none() || limit.refill_per_second.is_none() {
                complain(format!(
                    "{context} with {:?} needs `capacity` and `refill_per_second`",
                    limit.algorithm
                ));
            }
            if let Some(rate) = limit.refill_per_second {
                if !(rate > 0.0 && rate.is_finite()) {
                    complain(format!(
                        "{context}.refill_per_second must be greater than 0"
                    ));
                }
            }
        }
        RateLimitAlgorithm::FixedWindow
        | RateLimitAlgorithm::SlidingWindowLog
        | RateLimitAlgorithm::SlidingWindowCounter => {
            if limit.limit.is_none() || limit.window.is_none() {
                complain(format!(
                    "{context} with {:?} needs `limit` and `window`",
                    limit.algorithm
                ));
            }
        }
    }
    let quota = limit.capacity.or(limit.limit).map(|q| q.0);
    if let Some(quota) = quota.filter(|quota| limit.cost.0 > *quota) {
        complain(format!(
            "{context}.cost ({}) is larger than the quota ({quota}): no request could ever pass",
            limit.cost.0
        ));
    }
    for part in limit.key.split('+') {
        let valid = match part.split_once(':') {
            None => matches!(part, "client_ip" | "user" | "route" | "api_key"),
            Some(("header", name)) => http::HeaderName::from_bytes(name.as_bytes()).is_ok(),
            Some(_) => false,
        };
        if !valid {
            complain(format!(
                "{context}.key part `{part}` is not one of client_ip, header:NAME, user, route, api_key"
            ));
        }
    }
    if limit.backend == RateLimitBackend::Redis && config.store.redis.is_none() {
        complain(format!("{context}.backend = \"redis\" needs store.redis"));
    }
}

/// A network in CIDR notation, or one address (as a /32 or /128).
pub fn parse_network(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

//! Checks that need more than one value: references, combinations, files.
//!
//! Each problem is returned with the byte span it is about, so that it is reported at the value
//! the user must change, not at the top of the file.

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;

use crate::model::{
    AdaptiveConcurrency, AlertFunction, AlertRule, Config, RateLimit, RateLimitAlgorithm,
    RateLimitBackend, Route, SessionStore, Spanned, Upstream, DEFAULT_RULES, SIGNALS,
};

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

/// `[alerts]`: each rule a threshold rule or a compound one, naming what exists; receivers
/// with a name of their own and at least one channel.
fn validate_alerts(config: &Config, base_dir: Option<&Path>, problems: &mut Problems) {
    let alerts = &config.alerts;
    let mut names: HashSet<&str> = DEFAULT_RULES.iter().copied().collect();
    let mut own = HashSet::new();
    for rule in &alerts.rules {
        let r = rule.get_ref();
        if !own.insert(r.name.as_str()) {
            problems.push((
                rule.span(),
                format!("alert rule `{}` is defined twice", r.name),
            ));
        }
        names.insert(r.name.as_str());
    }
    for name in &alerts.disable {
        if !DEFAULT_RULES.contains(&name.get_ref().as_str()) {
            problems.push((
                name.span(),
                format!(
                    "[alerts] disable: `{}` is not a default rule (they are {})",
                    name.get_ref(),
                    DEFAULT_RULES.join(", ")
                ),
            ));
        }
    }
    for rule in &alerts.rules {
        let r = rule.get_ref();
        // Problems at a value of the rule rather than at the rule (pushed after `fail`'s).
        let mut at_value: Problems = Vec::new();
        let mut fail = |message: String| {
            problems.push((rule.span(), format!("alert rule `{}`: {message}", r.name)));
        };
        let compound = !r.all_of.is_empty() || !r.any_of.is_empty();
        let threshold = r.signal.is_some() || r.metric.is_some();
        match (threshold, compound) {
            (true, true) => {
                fail("a rule has a `signal` or a `metric`, or `all_of`/`any_of`: not both".into())
            }
            (false, false) => {
                fail("needs a `signal` or a `metric` with thresholds, or `all_of`/`any_of`".into())
            }
            (true, false) => {
                if r.signal.is_some() && r.metric.is_some() {
                    fail("a `signal` or a `metric`, not both".into());
                }
                if let Some(signal) = &r.signal {
                    if !SIGNALS.contains(&signal.as_str()) {
                        fail(format!(
                            "unknown signal `{signal}` (one of {})",
                            SIGNALS.join(", ")
                        ));
                    }
                }
                if r.thresholds().is_empty() {
                    fail(
                        "needs at least one threshold: info, warning, critical or emergency".into(),
                    );
                }
                if r.severity.is_some() {
                    fail("`severity` is for compound rules; a threshold rule's severity is the highest threshold crossed".into());
                }
            }
            (false, true) => {
                if !r.all_of.is_empty() && !r.any_of.is_empty() {
                    fail("`all_of` or `any_of`, not both".into());
                }
                if r.severity.is_none() {
                    fail("a compound rule needs its `severity`".into());
                }
                for name in r.all_of.iter().chain(&r.any_of) {
                    if name == &r.name || !names.contains(name.as_str()) {
                        fail(format!("`{name}` is not another alert rule"));
                    }
                }
            }
        }
        if let Some(upstream) = &r.upstream {
            if !config.upstreams.keys().any(|u| u.get_ref() == upstream) {
                fail(format!("no upstream named `{upstream}`"));
            }
        }
        if let Some(route) = &r.route {
            if !config.routes.iter().any(|x| &x.get_ref().name == route) {
                fail(format!("no route named `{route}`"));
            }
        }
        validate_rule_series(r, compound, &mut at_value);
        problems.extend(
            at_value
                .into_iter()
                .map(|(span, message)| (span, format!("alert rule `{}`: {message}", r.name))),
        );
    }
    if let Some(outbox) = &alerts.outbox_section {
        let o = outbox.get_ref();
        if o.backoff_initial.0 > o.backoff_max.0 {
            problems.push((
                outbox.span(),
                "[alerts.outbox] backoff_initial is longer than backoff_max".to_owned(),
            ));
        }
    }
    let mut receivers = HashSet::new();
    for receiver in &alerts.receivers {
        let r = receiver.get_ref();
        let mut fail = |message: String| {
            problems.push((
                receiver.span(),
                format!("alert receiver `{}`: {message}", r.name),
            ));
        };
        if !receivers.insert(r.name.as_str()) {
            fail("defined twice".into());
        }
        let urls = [&r.webhook, &r.alertmanager, &r.slack, &r.discord];
        if urls.iter().all(|u| u.is_none()) && r.email.is_none() {
            fail("needs a channel: webhook, alertmanager, slack, discord or email".into());
        }
        for url in urls.into_iter().flatten() {
            let ok = url.parse::<http::Uri>().ok().is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                fail(format!("`{url}` is not an http(s) URL"));
            }
        }
        if let Some(email) = &r.email {
            if email.to.is_empty() {
                fail("email needs at least one address in `to`".into());
            }
            let port_ok = email
                .smtp
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                fail(format!(
                    "email.smtp `{}` is not `host:port` (e.g. \"127.0.0.1:25\")",
                    email.smtp
                ));
            }
            for address in std::iter::once(&email.from).chain(&email.to) {
                if !looks_like_mailbox(address) {
                    fail(format!(
                        "`{address}` is not an e-mail address (`ops@example.com` or `Ops <ops@example.com>`)"
                    ));
                }
            }
            if email.ca.is_some() && !email.starttls {
                fail("email.ca is only used with `starttls = true`".into());
            }
            match (&email.username, &email.password_file) {
                (Some(_), None) | (None, Some(_)) => {
                    fail("email.username and email.password_file go together (SMTP AUTH)".into())
                }
                (Some(_), Some(_)) if !email.starttls => fail(
                    "SMTP credentials are only sent over STARTTLS: set `starttls = true`".into(),
                ),
                _ => {}
            }
        }
        if let Some(ca_file) = &r.ca_file {
            let https = urls
                .into_iter()
                .flatten()
                .any(|url| url.starts_with("https://"));
            if !https {
                problems.push((
                    ca_file.span(),
                    format!(
                        "alert receiver `{}`: ca_file is only used with https:// URLs (webhook, alertmanager, slack or discord)",
                        r.name
                    ),
                ));
            }
            if let Err(message) = check_ca_file(ca_file.get_ref(), base_dir) {
                problems.push((
                    ca_file.span(),
                    format!("alert receiver `{}`: {message}", r.name),
                ));
            }
        }
    }
}

/// A rule's `metric`, `match`, `function` and `window`, each reported at its value.
fn validate_rule_series(r: &AlertRule, compound: bool, problems: &mut Problems) {
    if let Some(metric) = &r.metric {
        if !is_metric_name(metric.get_ref()) {
            problems.push((
                metric.span(),
                format!(
                    "`{}` is not a metric name (letters, digits, `_` and `:`, not starting with a digit; e.g. \"sekisho_requests_total\")",
                    metric.get_ref()
                ),
            ));
        }
        if r.upstream.is_some() || r.route.is_some() {
            problems.push((
                metric.span(),
                "a `metric` rule picks its series with `match` (e.g. match = { route = \"orders\" }), not `upstream` or `route`".to_owned(),
            ));
        }
    }
    if let Some(matchers) = &r.match_labels {
        if r.metric.is_none() {
            problems.push((
                matchers.span(),
                "`match` selects the series of a `metric`; this rule has none".to_owned(),
            ));
        }
        for name in matchers.get_ref().keys() {
            if !is_metric_name(name) || name.contains(':') {
                problems.push((
                    matchers.span(),
                    format!("`{name}` is not a label name (letters, digits and `_`)"),
                ));
            }
        }
    }
    if compound {
        for (span, key) in [
            (r.function.as_ref().map(Spanned::span), "function"),
            (r.window.as_ref().map(Spanned::span), "window"),
        ] {
            if let Some(span) = span {
                problems.push((
                    span,
                    format!("`{key}` is for threshold rules (`signal` or `metric`)"),
                ));
            }
        }
        return;
    }
    match (r.function(), &r.window, &r.function) {
        (AlertFunction::Rate, None, Some(function)) => problems.push((
            function.span(),
            "`rate` needs a `window` (e.g. window = \"1m\")".to_owned(),
        )),
        (AlertFunction::Value, Some(window), _) => problems.push((
            window.span(),
            "`function = \"value\"` takes the latest reading and no `window`; use `avg` or `rate`, or remove `window`".to_owned(),
        )),
        _ => {}
    }
}

/// Prometheus's metric names: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A receiver's `ca_file`: readable, and holding at least one PEM certificate (the monitor
/// parses them when it starts; this catches the missing file and the wrong one at `check`).
fn check_ca_file(file: &str, base_dir: Option<&Path>) -> Result<(), String> {
    let path = match base_dir {
        Some(dir) if Path::new(file).is_relative() => dir.join(file),
        _ => Path::new(file).to_owned(),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => Ok(()),
        Ok(_) => Err(format!(
            "ca_file `{}` holds no PEM certificate",
            path.display()
        )),
        Err(error) => Err(format!("cannot read ca_file `{}`: {error}", path.display())),
    }
}

/// `local@domain`, bare or in angle brackets after a display name; the SMTP client checks the
/// rest when it sends.
fn looks_like_mailbox(text: &str) -> bool {
    let address = match (text.find('<'), text.strip_suffix('>')) {
        (Some(open), Some(inner)) => &inner[open + 1..],
        (None, None) => text,
        _ => return false,
    };
    address.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && !domain.is_empty()
            && !address.contains(char::is_whitespace)
            && !domain.contains('@')
    })
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

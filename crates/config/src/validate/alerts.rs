//! `[alerts]` and `[monitor]`: rules (threshold, compound, over a metric series), receivers
//! and their channels' settings.

use std::collections::HashSet;
use std::path::Path;

use super::Problems;
use crate::model::{AlertFunction, AlertRule, Config, Spanned, DEFAULT_RULES, SIGNALS};

/// `[alerts]`: each rule a threshold rule or a compound one, naming what exists; receivers
/// with a name of their own and at least one channel.
pub(super) fn validate_alerts(config: &Config, base_dir: Option<&Path>, problems: &mut Problems) {
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

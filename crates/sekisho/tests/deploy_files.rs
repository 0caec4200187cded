//! The files for teams running their own Prometheus and Grafana (`deploy/`): the rules pass
//! `promtool check rules`, and every `sekisho_*` series the rules and the dashboard name is in a
//! live gateway's exposition — a renamed metric breaks this test, not someone's alerting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use bytes::Bytes;
use sekisho_testkit::{chaos_upstream, client, get, promtool, send, Sekisho, TempDir};

const RULES: &str = include_str!("../../../deploy/prometheus/sekisho-rules.yml");
const DASHBOARD: &str = include_str!("../../../deploy/grafana/sekisho-dashboard.json");

/// The `sekisho_…` and `process_…` names a text refers to.
fn series_named(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["sekisho_", "process_"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_and_the_dashboard_name_only_series_the_gateway_exports() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    assert!(dashboard["panels"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));

    // A gateway with every policy whose series the files use, and alerting (the monitor's own).
    let upstream = chaos_upstream("app").await;
    let dir = TempDir::new("deploy-files");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
         [server.adaptive_concurrency]\ninitial_limit = 50\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.app]\ntargets = [\"{}\"]\n\
         [upstreams.app.circuit_breaker]\nminimum_calls = 5\n\
         [upstreams.app.bulkhead]\nmax_concurrent = 10\n\
         [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
         [routes.retry]\nattempts = 2\n\
         [routes.cache]\nttl = \"1s\"\n\
         [[alerts.receivers]]\nname = \"ops\"\nwebhook = \"http://127.0.0.1:9/hook\"\n",
        upstream.address
    );
    let path = dir.write("sekisho.toml", &config);
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_sekisho"));
    let gateway = Sekisho::start(&binary, &path);
    send(&client(), "GET", &gateway.url("/x"), &[], Bytes::new()).await;
    let exposition =
        String::from_utf8(get(&gateway.admin_url("/metrics")).await.body.to_vec()).unwrap();
    let exported = series_named(&exposition);

    for (file, text) in [("rules", RULES), ("dashboard", DASHBOARD)] {
        let named = series_named(text);
        assert!(!named.is_empty(), "{file} names no series");
        let missing: Vec<_> = named.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} names series the gateway does not export: {missing:?}"
        );
    }

    // promtool, when here (scripts/test installs it and requires it).
    let rules = dir.write("rules.yml", RULES);
    promtool(&["check", "rules", rules.to_str().unwrap()], "");
}

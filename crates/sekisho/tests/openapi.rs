//! The admin API's OpenAPI document (`crates/admin/assets/openapi.json`) against a real gateway:
//! it is served as kept in the repo, and each of its `x-sekisho-checks` (a request, in order) is
//! sent to `sekisho run` and answered with the documented status and a body of the documented
//! example's shape — the same keys and JSON types, where a documented `null` or empty list allows
//! anything and an answered `null` fills any documented field. Every documented success with an
//! example is exercised by some check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sekisho_testkit::{chaos_upstream, client, send, Sekisho, TempDir};
use serde_json::Value;

const TOKEN: &str = "openapi-token";

/// Documented successes no check reaches, and why.
const UNCHECKED: &[(&str, &str, &str)] = &[
    // Needs a firing alert; the alerting test and the browser test acknowledge real ones.
    ("/api/v1/alerts/{fingerprint}/ack", "post", "200"),
];

fn document() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../admin/assets/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Where `actual` differs in shape from `documented`, as paths; empty when it matches.
fn differences(documented: &Value, actual: &Value, at: &str, found: &mut Vec<String>) {
    match (documented, actual) {
        (Value::Null, _) | (_, Value::Null) => {}
        (Value::Object(documented), Value::Object(actual)) => {
            let keys: BTreeSet<&String> = documented.keys().chain(actual.keys()).collect();
            for key in keys {
                match (documented.get(key), actual.get(key)) {
                    (Some(d), Some(a)) => differences(d, a, &format!("{at}.{key}"), found),
                    (Some(_), None) => found.push(format!("{at}.{key}: documented, not answered")),
                    (None, Some(_)) => found.push(format!("{at}.{key}: answered, not documented")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(documented), Value::Array(actual)) => {
            if let Some(first) = documented.first() {
                for (index, item) in actual.iter().enumerate() {
                    differences(first, item, &format!("{at}[{index}]"), found);
                }
            }
        }
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_)) => {}
        (documented, actual) => {
            found.push(format!("{at}: documented {documented}, answered {actual}"))
        }
    }
}

/// The documented example of `status` for `method operation`, through `$ref`s.
fn example(document: &Value, operation: &str, method: &str, status: &str) -> Option<Value> {
    let mut response = &document["paths"][operation][method]["responses"][status];
    if let Some(reference) = response["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/responses/");
        response = &document["components"]["responses"][name];
    }
    assert!(
        !response.is_null(),
        "{method} {operation} documents no {status} answer"
    );
    response["content"]["application/json"]
        .get("example")
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_example_matches_a_real_answer() {
    let upstream = chaos_upstream("app").await;
    let dir = TempDir::new("openapi");
    let config = dir.write(
        "sekisho.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
             [store]\ndata_dir = \"{}\"\n\
             [auth]\nargon2 = {{ memory_kib = 64, iterations = 1, parallelism = 1 }}\n\
             [upstreams.app]\ntargets = [\"{}\"]\n\
             [upstreams.app.circuit_breaker]\nminimum_calls = 5\n\
             [upstreams.app.bulkhead]\nmax_concurrent = 10\n\
             [[routes]]\nname = \"catalog\"\npath_prefix = \"/catalog\"\nupstream = \"app\"\n\
             [routes.cache]\nttl = \"60s\"\n\
             [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
             [routes.rate_limit]\nalgorithm = \"token_bucket\"\ncapacity = 100\nrefill_per_second = 10\n\
             [monitor]\ninterval = \"1s\"\n\
             [alerts]\ndefault_rules = false\n\
             [[alerts.rules]]\nname = \"AppCircuitOpen\"\nsignal = \"circuit_open\"\nupstream = \"app\"\nwarning = 1\n\
             [[alerts.receivers]]\nname = \"ops\"\nwebhook = \"http://127.0.0.1:9/hook\"\n",
            dir.path().join("data").display(),
            upstream.address
        ),
    );
    let gateway = Sekisho::start(&PathBuf::from(env!("CARGO_BIN_EXE_sekisho")), &config);
    let http = client();
    let auth = format!("Bearer {TOKEN}");
    let headers = [("authorization", auth.as_str())];
    // Traffic, so the figures are not all empty.
    for path in ["/catalog/1", "/catalog/1", "/x"] {
        send(&http, "GET", &gateway.url(path), &[], Bytes::new()).await;
    }

    let document = document();
    let served = send(
        &http,
        "GET",
        &gateway.admin_url("/api/v1/openapi.json"),
        &headers,
        Bytes::new(),
    )
    .await;
    assert_eq!(served.status, 200);
    assert_eq!(served.json(), document, "the served document is the repo's");

    let mut reached = BTreeSet::new();
    let mut failures = Vec::new();
    for check in document["x-sekisho-checks"].as_array().unwrap() {
        let method = check["method"].as_str().unwrap();
        let path = check["path"].as_str().unwrap();
        let operation = check["operation"].as_str().unwrap();
        let status = check["status"].as_u64().unwrap();
        // A string body (a TOML config) goes as it stands, anything else as JSON.
        let body = check
            .get("body")
            .map(|b| Bytes::from(b.as_str().map_or_else(|| b.to_string(), str::to_owned)))
            .unwrap_or_default();
        let answer = send(&http, method, &gateway.admin_url(path), &headers, body).await;
        let what = format!("{method} {path}");
        if u64::from(answer.status) != status {
            failures.push(format!(
                "{what}: answered {}, documented {status}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ));
            continue;
        }
        let method = method.to_ascii_lowercase();
        reached.insert((operation.to_owned(), method.clone(), status.to_string()));
        if let Some(example) = example(&document, operation, &method, &status.to_string()) {
            let mut found = Vec::new();
            differences(&example, &answer.json(), "$", &mut found);
            failures.extend(found.into_iter().map(|f| format!("{what}: {f}")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Every documented success with an example was reached by a check.
    for (operation, item) in document["paths"].as_object().unwrap() {
        for (method, spec) in item.as_object().unwrap() {
            for (status, response) in spec["responses"].as_object().unwrap() {
                let documented = response["content"]["application/json"]
                    .get("example")
                    .is_some();
                let key = (operation.clone(), method.clone(), status.clone());
                if status.starts_with('2')
                    && documented
                    && !reached.contains(&key)
                    && !UNCHECKED.contains(&(operation.as_str(), method.as_str(), status.as_str()))
                {
                    failures.push(format!(
                        "{method} {operation} {status}: no check reaches it"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

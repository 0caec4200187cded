//! Credentials never leave the process: a password planted in `store.redis` appears in no admin
//! answer (open or behind the token), in no log line, and not in `sekisho check`'s output, while
//! the masked URL does appear where the URL is shown.
//!
//! The real Redis on 127.0.0.1:6379 has no password, so the planted one makes every connection
//! attempt fail with an AUTH error: the failure paths (last error, log lines) are exercised too.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use sekisho_testkit::{chaos_upstream, client, send, Sekisho, TempDir};

const PASSWORD: &str = "PLANTEDpassw0rd-4f9c";
const TOKEN: &str = "t0ken";

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sekisho"))
}

fn text(body: &Bytes) -> String {
    String::from_utf8_lossy(body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_redis_password_is_never_shown() {
    let upstream = chaos_upstream("app").await;
    let dir = TempDir::new("redaction");
    let config = dir.write(
        "sekisho.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = true\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
             [store]\nredis = \"redis://:{PASSWORD}@127.0.0.1:6379/0\"\n\
             [upstreams.app]\ntargets = [\"{}\"]\n\
             [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
             [routes.rate_limit]\nbackend = \"redis\"\nalgorithm = \"fixed_window\"\n\
             limit = 100\nwindow = \"1m\"\non_store_error = \"allow\"\n",
            upstream.address
        ),
    );

    let checked = std::process::Command::new(binary())
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(checked.status.success());
    let checked = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(!checked.contains(PASSWORD), "check shows it: {checked}");

    let gateway = Sekisho::start(&binary(), &config);
    let http = client();
    // Until the first connection attempt has failed, Redis has no last error to show.
    let detailed_url = gateway.admin_url("/health/detailed");
    let detailed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let answer = send(&http, "GET", &detailed_url, &[], Bytes::new()).await;
            let json = answer.json();
            if json["checks"]["redis"]["last_error"].is_string() {
                return (answer, json);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the failed AUTH shows as Redis's last error within 10 s");
    let (detailed, json) = detailed;
    assert_eq!(
        json["checks"]["redis"]["url"], "redis://:***@127.0.0.1:6379/0",
        "{json}"
    );
    let body = String::from_utf8_lossy(&detailed.body);
    assert!(!body.contains(PASSWORD), "{body}");

    // Traffic through the Redis-backed limit, then every admin answer.
    let answer = send(&http, "GET", &gateway.url("/x"), &[], Bytes::new()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    let mut answers = Vec::new();
    for path in [
        "/",
        "/health",
        "/ready",
        "/health/detailed",
        "/metrics",
        "/api/v1/upstreams",
        "/api/v1/config",
        "/api/v1/circuits",
        "/api/v1/ratelimits",
        "/api/v1/ratelimits?key=x",
        "/api/v1/cache",
        "/api/v1/dashboard",
    ] {
        let answer = send(&http, "GET", &gateway.admin_url(path), &auth, Bytes::new()).await;
        answers.push((path, answer.status, text(&answer.body)));
    }
    let reload = send(
        &http,
        "POST",
        &gateway.admin_url("/api/v1/config/reload"),
        &auth,
        Bytes::new(),
    )
    .await;
    assert_eq!(reload.status, 200, "{:?}", reload.body);
    answers.push(("/api/v1/config/reload", reload.status, text(&reload.body)));
    for (path, status, body) in &answers {
        assert!(
            !body.contains(PASSWORD),
            "{path} ({status}) shows it: {body}"
        );
    }
    let log = gateway.log();
    assert!(
        log.contains("sekisho::access"),
        "an access line was logged: {log}"
    );
    assert!(!log.contains(PASSWORD), "the log shows it: {log}");
}

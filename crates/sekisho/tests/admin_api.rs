//! The admin side's own rules (issue 17): the dashboard's page and its event stream, the token
//! on every `/api` path with a lockout after repeated wrong tokens, and the viewers counted and
//! released. Against a real `sekisho run` and a chaos upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sekisho_testkit::{chaos_upstream, client, send, Sekisho, TempDir};

const TOKEN: &str = "admin-api-token";

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sekisho"))
}

async fn gateway(dir: &TempDir) -> Sekisho {
    let upstream = chaos_upstream("app").await;
    let config = dir.write(
        "sekisho.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
             [upstreams.app]\ntargets = [\"{}\"]\n\
             [upstreams.app.circuit_breaker]\nminimum_calls = 5\n\
             [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n",
            upstream.address
        ),
    );
    // The upstream serves from a task of the test's runtime, whatever becomes of its handle.
    Sekisho::start(&binary(), &config)
}

/// An open event stream: reads until `wanted` has arrived in full (≤ 10 s), returns all read.
struct Stream {
    body: hyper::body::Incoming,
    read: String,
}

impl Stream {
    async fn open(url: &str, token: &str) -> (u16, Option<Self>) {
        let request = http::Request::get(url)
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client().request(request).await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        if status != 200 {
            return (status, None);
        }
        assert_eq!(
            content_type.as_deref(),
            Some("text/event-stream; charset=utf-8")
        );
        let body = response.into_body();
        (
            status,
            Some(Self {
                body,
                read: String::new(),
            }),
        )
    }

    /// Reads until the stream holds `count` complete events named `name`.
    async fn until(&mut self, name: &str, count: usize) -> Vec<serde_json::Value> {
        let header = format!("event: {name}\ndata: ");
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let events: Vec<serde_json::Value> = self
                    .read
                    .split("\n\n")
                    .filter_map(|block| block.strip_prefix(header.as_str()))
                    .filter_map(|data| serde_json::from_str(data).ok())
                    .collect();
                if events.len() >= count {
                    return events;
                }
                let frame = self.body.frame().await.expect("the stream ended").unwrap();
                if let Ok(data) = frame.into_data() {
                    self.read.push_str(std::str::from_utf8(&data).unwrap());
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {count} `{name}` events within 10 s: {}", self.read))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_whole_and_the_stream_needs_the_token_and_counts_its_viewers() {
    let dir = TempDir::new("admin-api-stream");
    let gateway = gateway(&dir).await;
    let http = client();

    // The page and its files: no token needed, served with a closed CSP.
    let page = send(&http, "GET", &gateway.admin_url("/"), &[], Bytes::new()).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    let html = String::from_utf8_lossy(&page.body);
    for file in ["/dashboard.js", "/dashboard.css"] {
        assert!(html.contains(file), "{html}");
        let asset = send(&http, "GET", &gateway.admin_url(file), &[], Bytes::new()).await;
        assert_eq!(asset.status, 200, "{file}");
        assert!(!asset.body.is_empty());
    }
    // No file from anywhere else.
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );

    let stream_url = gateway.admin_url("/api/v1/stream");
    let (status, _) = Stream::open(&stream_url, "wrong").await;
    assert_eq!(status, 401);

    let (status, first) = Stream::open(&stream_url, TOKEN).await;
    assert_eq!(status, 200);
    let mut first = first.unwrap();
    assert!(first.until("history", 1).await[0].is_array());
    let (_, second) = Stream::open(&stream_url, TOKEN).await;
    let mut second = second.unwrap();
    // Snapshots come once a second; within a few the second viewer is counted.
    let mut seen = 0;
    for count in 1..=5 {
        let snapshots = second.until("snapshot", count).await;
        let latest = snapshots.last().unwrap();
        assert_eq!(latest["upstreams"][0]["name"], "app");
        assert_eq!(latest["circuits"][0]["name"], "app");
        seen = latest["viewers"].as_u64().unwrap();
        if seen == 2 {
            break;
        }
    }
    assert_eq!(seen, 2, "both streams counted");
    let both = first.until("snapshot", 1).await;
    assert!(both[0]["status"].is_string());

    // Traffic after a snapshot shows in the next ones: rate, error rate, percentiles.
    for _ in 0..5 {
        let answer = send(&http, "GET", &gateway.url("/x"), &[], Bytes::new()).await;
        assert_eq!(answer.status, 200);
    }
    let taken = second.until("snapshot", 1).await.len();
    let mut figures = serde_json::Value::Null;
    for count in taken + 1..=taken + 5 {
        let snapshots = second.until("snapshot", count).await;
        let upstream = &snapshots.last().unwrap()["upstreams"][0];
        if upstream["requests_per_second"].as_f64().unwrap() > 0.0 {
            figures = upstream.clone();
            break;
        }
    }
    assert!(figures["p50_ms"].as_f64().unwrap() > 0.0, "{figures}");
    assert!(figures["p99_ms"].as_f64().unwrap() >= figures["p50_ms"].as_f64().unwrap());
    assert_eq!(figures["error_rate"], 0.0);
    assert_eq!(figures["state"], "healthy");

    // A viewer that goes away is no longer counted.
    drop(first);
    let mut counted = 2;
    for count in 1..=10 {
        let snapshots = second.until("snapshot", count).await;
        counted = snapshots.last().unwrap()["viewers"].as_u64().unwrap();
        if counted == 1 {
            break;
        }
    }
    assert_eq!(counted, 1, "the closed stream was released");

    // The same snapshot, without streaming.
    let auth = format!("Bearer {TOKEN}");
    let latest = send(
        &http,
        "GET",
        &gateway.admin_url("/api/v1/dashboard"),
        &[("authorization", &auth)],
        Bytes::new(),
    )
    .await;
    assert_eq!(latest.status, 200);
    let latest = latest.json();
    assert_eq!(latest["status"], "ok");
    assert_eq!(latest["snapshot"]["upstreams"][0]["state"], "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_lock_the_address_out_for_a_while_even_with_the_right_one() {
    let dir = TempDir::new("admin-api-lockout");
    let gateway = gateway(&dir).await;
    let http = client();
    let url = gateway.admin_url("/api/v1/upstreams");
    for attempt in 1..=10 {
        let answer = send(
            &http,
            "GET",
            &url,
            &[("authorization", "Bearer guess")],
            Bytes::new(),
        )
        .await;
        assert_eq!(answer.status, 401, "attempt {attempt}");
        assert_eq!(answer.error_code(), "UNAUTHENTICATED");
    }
    let auth = format!("Bearer {TOKEN}");
    let locked = send(
        &http,
        "GET",
        &url,
        &[("authorization", &auth)],
        Bytes::new(),
    )
    .await;
    assert_eq!(locked.status, 429);
    assert_eq!(locked.error_code(), "RATE_LIMITED");
    let retry_after: u64 = locked.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // The open endpoints stay open.
    let health = send(
        &http,
        "GET",
        &gateway.admin_url("/health"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(health.status, 200);
}

/// The latest snapshot on `stream` for which `wanted` holds, within 30 snapshots.
async fn snapshot_where(
    stream: &mut Stream,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let taken = stream.until("snapshot", 1).await.len();
    for count in taken..taken + 30 {
        let snapshots = stream.until("snapshot", count).await;
        let latest = snapshots.last().unwrap();
        if wanted(latest) {
            return latest.clone();
        }
    }
    panic!("no snapshot as wanted: {}", stream.read);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_17_routes_retry_budgets_recent_reloads_and_no_cors() {
    let upstream = chaos_upstream("app").await;
    let dir = TempDir::new("admin-api-routes");
    let good = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
         [upstreams.app]\ntargets = [\"{}\"]\n\
         [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
         [routes.retry]\nattempts = 2\nretry_on = [500]\nbudget_ratio = 0.0\nbudget_min_per_second = 1\n",
        upstream.address
    );
    let config = dir.write("sekisho.toml", &good);
    let gateway = Sekisho::start(&binary(), &config);
    let http = client();
    let auth = format!("Bearer {TOKEN}");
    let get = |path: &'static str| {
        let http = http.clone();
        let url = gateway.admin_url(path);
        let auth = auth.clone();
        async move {
            send(
                &http,
                "GET",
                &url,
                &[("authorization", &auth)],
                Bytes::new(),
            )
            .await
        }
    };

    // Each route, with its retry budget: the floor alone (1 a second over 10 s) before traffic.
    let routes = get("/api/v1/routes").await;
    assert_eq!(routes.status, 200);
    let route = &routes.json()["routes"][0];
    assert_eq!(route["name"], "app");
    assert_eq!(route["upstream"], "app");
    assert_eq!(route["path_match"], "prefix");
    assert_eq!(route["path"], "/");
    assert_eq!(route["retry"]["attempts"], 2);
    assert_eq!(route["retry"]["budget"]["available"], 10, "{route}");
    // Failures retried until the budget is spent: the API and the dashboard's snapshot say so.
    let chaos = format!("http://{}/_chaos", upstream.address);
    let set = send(
        &http,
        "POST",
        &chaos,
        &[],
        Bytes::from(r#"{"error_rate":1.0}"#),
    )
    .await;
    assert_eq!(set.status, 200);
    for _ in 0..15 {
        let answer = send(&http, "GET", &gateway.url("/x"), &[], Bytes::new()).await;
        assert_eq!(answer.status, 500);
    }
    let budget = &get("/api/v1/routes").await.json()["routes"][0]["retry"]["budget"];
    assert_eq!(budget["available"], 0, "{budget}");
    assert_eq!(budget["retries"], 10, "{budget}");
    let (_, stream) = Stream::open(&gateway.admin_url("/api/v1/stream"), TOKEN).await;
    let mut stream = stream.unwrap();
    let spent = snapshot_where(&mut stream, |s| {
        s["routes"][0]["retry_budget"]["retries"].as_u64() > Some(0)
    })
    .await;
    // Retries leave the 10 s window as time goes by; what is left is what they did not take.
    let in_window = &spent["routes"][0]["retry_budget"];
    assert_eq!(
        in_window["available"].as_u64().unwrap() + in_window["retries"].as_u64().unwrap(),
        10,
        "{in_window}"
    );

    // A reload applied, then one refused: both listed, newest first, in the snapshot and the
    // status. The second waits until the first was seen, so each is its own entry.
    assert!(spent["reloads"]["recent"].as_array().unwrap().is_empty());
    let post = |path: &'static str| {
        let http = http.clone();
        let url = gateway.admin_url(path);
        let auth = auth.clone();
        async move {
            send(
                &http,
                "POST",
                &url,
                &[("authorization", &auth)],
                Bytes::new(),
            )
            .await
        }
    };
    assert_eq!(post("/api/v1/config/reload").await.status, 200);
    snapshot_where(&mut stream, |s| s["reloads"]["recent"][0]["ok"] == true).await;
    std::fs::write(
        &config,
        good.replace(
            "upstream = \"app\"\n[routes.retry]",
            "upstream = \"nowhere\"\n[routes.retry]",
        ),
    )
    .unwrap();
    assert_eq!(post("/api/v1/config/reload").await.status, 400);
    let both = snapshot_where(&mut stream, |s| s["reloads"]["recent"][0]["ok"] == false).await;
    let recent = both["reloads"]["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 2, "{recent:?}");
    assert_eq!(
        recent[0]["generation"], 2,
        "the refused one leaves generation 2 in force"
    );
    assert!(
        recent[0]["error"].as_str().unwrap().contains("nowhere"),
        "{recent:?}"
    );
    assert_eq!(recent[1]["ok"], true);
    assert_eq!(recent[1]["generation"], 2);
    assert!(recent[1]["error"].is_null());
    let status = get("/api/v1/status").await;
    assert_eq!(status.status, 200);
    let status = status.json();
    assert_eq!(status["ready"], true);
    assert_eq!(status["generation"], 2);
    assert!(status["last_reload"]["error"].is_string(), "{status}");
    assert_eq!(
        status["recent_reloads"].as_array().unwrap().len(),
        2,
        "{status}"
    );

    // CORS stays closed: no preflight passes and no answer names an origin it may be read from.
    let preflight = send(
        &http,
        "OPTIONS",
        &gateway.admin_url("/api/v1/circuits/app"),
        &[
            ("origin", "https://elsewhere.example"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, content-type",
            ),
        ],
        Bytes::new(),
    )
    .await;
    assert!(preflight.status >= 400, "{}", preflight.status);
    let read = send(
        &http,
        "GET",
        &gateway.admin_url("/api/v1/upstreams"),
        &[
            ("authorization", &auth),
            ("origin", "https://elsewhere.example"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(read.status, 200);
    for answer in [&preflight, &read] {
        let named: Vec<_> = answer
            .headers
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .collect();
        assert!(named.is_empty(), "{named:?}");
    }
}

/// GET `path` on the admin listener with the token: the status and the body as JSON.
async fn admin_get(gateway: &Sekisho, path: &str) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {TOKEN}");
    let answer = send(
        &client(),
        "GET",
        &gateway.admin_url(path),
        &[("authorization", &auth)],
        Bytes::new(),
    )
    .await;
    let body = serde_json::from_slice(&answer.body).unwrap_or(serde_json::Value::Null);
    (answer.status, body)
}

/// Every page of `list` (under `path`, `extra` query parameters), `limit` at a time, following
/// `next_cursor`; each answer in the envelope. The item keys named by `key`, page by page.
async fn pages(
    gateway: &Sekisho,
    path: &str,
    extra: &str,
    list: &str,
    limit: usize,
    key: impl Fn(&serde_json::Value) -> String,
) -> Vec<Vec<String>> {
    let mut cursor: Option<String> = None;
    let mut seen = Vec::new();
    for _ in 0..20 {
        let mut query = format!("?limit={limit}{extra}");
        if let Some(cursor) = &cursor {
            query.push_str(&format!("&cursor={}", urlencode(cursor)));
        }
        let (status, body) = admin_get(gateway, &format!("{path}{query}")).await;
        assert_eq!(status, 200, "{path}{query}: {body}");
        assert_eq!(body["status"], "ok", "{path}{query}: the envelope: {body}");
        let items = body[list].as_array().unwrap();
        assert!(items.len() <= limit, "{body}");
        seen.push(items.iter().map(&key).collect());
        // A cursor is the key of the page's last item: a name, or a number for ids.
        match &body["next_cursor"] {
            serde_json::Value::Null => return seen,
            serde_json::Value::String(next) => cursor = Some(next.clone()),
            serde_json::Value::Number(next) => cursor = Some(next.to_string()),
            other => panic!("{path}: next_cursor {other}"),
        }
    }
    panic!("{path}: more than 20 pages");
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_17_every_list_comes_a_page_at_a_time_in_the_envelope() {
    let upstream = chaos_upstream("app").await;
    let dir = TempDir::new("admin-api-pages");
    let config = dir.write(
        "sekisho.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
             [store]\ndata_dir = \"{}\"\n\
             [auth]\nargon2 = {{ memory_kib = 64, iterations = 1, parallelism = 1 }}\n\
             lockout = {{ max_failures = 1, window = \"5m\", duration = \"15m\" }}\n\
             [[alerts.receivers]]\nname = \"ops\"\nwebhook = \"http://{}/hook\"\n\
             [upstreams.app]\ntargets = [\"{}\"]\n\
             [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n",
            dir.path().join("data").display(),
            upstream.address,
            upstream.address
        ),
    );
    let gateway = Sekisho::start(&binary(), &config);
    let http = client();
    let auth = format!("Bearer {TOKEN}");
    let call = |method: &'static str, path: String, body: String| {
        let http = http.clone();
        let url = gateway.admin_url(&path);
        let auth = auth.clone();
        async move {
            send(
                &http,
                method,
                &url,
                &[("authorization", &auth)],
                Bytes::from(body),
            )
            .await
        }
    };
    for name in ["cy", "ann", "bo", "dee", "eve"] {
        let body = format!(r#"{{"username":"{name}","password":"correct horse battery"}}"#);
        let created = call("POST", "/api/v1/users".to_owned(), body).await;
        assert_eq!(created.status, 201, "{name}");
        assert_eq!(created.json()["status"], "ok");
    }

    // Users by name: two a page, the last page's cursor null.
    let users = pages(&gateway, "/api/v1/users", "", "users", 2, |u| {
        u["username"].as_str().unwrap().to_owned()
    })
    .await;
    assert_eq!(users, [vec!["ann", "bo"], vec!["cy", "dee"], vec!["eve"]]);

    // Three sessions of ann, by id: each once, over two pages.
    for _ in 0..3 {
        let login = send(
            &http,
            "POST",
            &gateway.url("/auth/login"),
            &[],
            Bytes::from(r#"{"username":"ann","password":"correct horse battery"}"#),
        )
        .await;
        assert_eq!(login.status, 200);
    }
    let sessions = pages(
        &gateway,
        "/api/v1/sessions",
        "&user=ann",
        "sessions",
        2,
        |s| s["id"].as_str().unwrap().to_owned(),
    )
    .await;
    assert_eq!(sessions.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
    let mut ids: Vec<_> = sessions.concat();
    ids.dedup();
    assert_eq!(ids.len(), 3, "{sessions:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "by id: {ids:?}");

    // Lockouts, by KIND:NAME: a wrong password locks the account and the address
    // (max_failures 1); the address is cleared before the second.
    for name in ["cy", "bo"] {
        let wrong = send(
            &http,
            "POST",
            &gateway.url("/auth/login"),
            &[],
            Bytes::from(format!(r#"{{"username":"{name}","password":"wrong"}}"#)),
        )
        .await;
        assert_eq!(wrong.status, 401, "{name}");
        if name == "cy" {
            let cleared = call(
                "DELETE",
                "/api/v1/lockouts?address=127.0.0.1".to_owned(),
                String::new(),
            )
            .await;
            assert_eq!(cleared.json()["was_locked"], true);
        }
    }
    let lockouts = pages(&gateway, "/api/v1/lockouts", "", "lockouts", 1, |l| {
        format!(
            "{}:{}",
            l["kind"].as_str().unwrap(),
            l["name"].as_str().unwrap()
        )
    })
    .await;
    assert_eq!(
        lockouts,
        [
            vec!["account:bo"],
            vec!["account:cy"],
            vec!["address:127.0.0.1"]
        ]
    );

    // Silences, by id.
    for comment in ["a", "b", "c"] {
        let body = format!(
            r#"{{"matchers":[{{"name":"alertname","value":"X"}}],"duration_seconds":60,"comment":"{comment}"}}"#
        );
        let created = call("POST", "/api/v1/silences".to_owned(), body).await;
        assert_eq!(created.status, 201);
        assert_eq!(created.json()["status"], "ok");
    }
    let silences = pages(&gateway, "/api/v1/silences", "", "silences", 2, |s| {
        s["comment"].as_str().unwrap().to_owned()
    })
    .await;
    assert_eq!(silences, [vec!["a", "b"], vec!["c"]]);

    // Active alerts (none here) and the delivery log: one empty page, in the envelope.
    for (path, list) in [
        ("/api/v1/alerts", "alerts"),
        ("/api/v1/alerts/history", "alerts"),
    ] {
        let seen = pages(&gateway, path, "", list, 5, |a| a.to_string()).await;
        assert_eq!(seen.len(), 1, "{path}");
    }

    // A limit out of range, a cursor of the wrong kind or an unknown parameter: 400 in the
    // error shape, on every list.
    for bad in [
        "/api/v1/users?limit=0",
        "/api/v1/users?limit=501",
        "/api/v1/users?page=2",
        "/api/v1/silences?cursor=abc",
        "/api/v1/alerts?colour=red",
        "/api/v1/lockouts?limit=x",
        "/api/v1/sessions?user=ann&offset=3",
        "/api/v1/notifications?cursor=x",
    ] {
        let (status, body) = admin_get(&gateway, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["status"], "error", "{bad}");
        assert_eq!(body["error"]["code"], "BAD_REQUEST", "{bad}");
    }

    // Every other answer of the API is in the envelope too; the probes keep the contract's.
    for path in [
        "/api/v1/routes",
        "/api/v1/upstreams",
        "/api/v1/circuits",
        "/api/v1/config",
        "/api/v1/bulkheads",
        "/api/v1/cache",
        "/api/v1/alerts/stats",
        "/api/v1/users/ann",
    ] {
        let (status, body) = admin_get(&gateway, path).await;
        assert_eq!(
            (status, &body["status"]),
            (200, &"ok".into()),
            "{path}: {body}"
        );
    }
    let (_, status) = admin_get(&gateway, "/api/v1/status").await;
    assert_eq!(status["status"], "ok");
    assert!(status["overall"].is_string(), "{status}");
    let (_, ready) = admin_get(&gateway, "/ready").await;
    assert_eq!(ready["status"], "ready");
}

/// Runs `sql` on the test PostgreSQL server's own database.
async fn on_postgres_server(sql: &str) {
    let server = sekisho_db::testing::postgres_server();
    let admin = sekisho_db::Database::connect(&format!("{server}/postgres"), 1)
        .await
        .unwrap();
    sekisho_db::sqlx::raw_sql(sql)
        .execute(admin.pool())
        .await
        .unwrap();
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_detailed_checks_the_database_and_the_disk_and_sees_the_database_go() {
    use sekisho_db::{testing::TestDatabase, Dialect};
    let upstream = chaos_upstream("app").await;
    let database = TestDatabase::new(Dialect::Postgres).await.unwrap();
    let name = database.url.rsplit('/').next().unwrap().to_owned();
    let dir = TempDir::new("admin-api-health");
    let config = dir.write(
        "sekisho.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
             {}\
             [auth]\nargon2 = {{ memory_kib = 64, iterations = 1, parallelism = 1 }}\n\
             [upstreams.app]\ntargets = [\"{}\"]\n\
             [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n",
            database.store_toml(),
            upstream.address
        ),
    );
    let gateway = Sekisho::start(&binary(), &config);
    // Ready a moment after it says it listens: wait as a load balancer would, on /ready.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while admin_get(&gateway, "/ready").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, health) = admin_get(&gateway, "/health/detailed").await;
    assert_eq!(
        (status, &health["status"]),
        (200, &"healthy".into()),
        "{health}"
    );
    let checks = &health["checks"];
    assert_eq!(checks["database"]["status"], "healthy", "{health}");
    assert_eq!(checks["database"]["kind"], "postgres");
    assert!(checks["database"]["rtt_ms"].as_f64().unwrap() >= 0.0);
    assert!(
        !health.to_string().contains(&name),
        "no URL shown: {health}"
    );
    let disk = &checks["disk"];
    assert!(["healthy", "degraded", "unhealthy"].contains(&disk["status"].as_str().unwrap()));
    let used = disk["used"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&used), "{disk}");
    assert!(disk["free_bytes"].as_u64().unwrap() > 0, "{disk}");

    // The database refuses connections and drops those it has: the check says so, the
    // gateway is degraded (still serving, 200), not taken out.
    on_postgres_server(&format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await;
    let (status, health) = admin_get(&gateway, "/health/detailed").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(
        health["checks"]["database"]["status"], "unhealthy",
        "{health}"
    );
    assert!(
        health["checks"]["database"]["error"].is_string(),
        "{health}"
    );
    let proxied = send(&client(), "GET", &gateway.url("/"), &[], Bytes::new()).await;
    assert_eq!(proxied.status, 200, "a route without auth still serves");

    // Back: healthy again on the next check.
    on_postgres_server(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
    let (_, health) = admin_get(&gateway, "/health/detailed").await;
    assert_eq!(
        health["checks"]["database"]["status"], "healthy",
        "{health}"
    );
    drop(gateway);
    database.remove().await.unwrap();
}

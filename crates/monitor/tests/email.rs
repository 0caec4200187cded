#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The e-mail channel against a real SMTP server (issue 16): Python's `aiosmtpd` on a socket of
//! its own, in the clear or requiring STARTTLS with a certificate made here. An alert fires;
//! the monitor writes the message to the outbox; the worker sends it; the server's copy has the
//! subject, a plain-text and an HTML part with the severity's colour, the fingerprint — and,
//! with `starttls = true`, it came over TLS. A receiver that asks for STARTTLS from a server
//! that does not offer it gets nothing (the row stays pending with the reason). Skipped loudly
//! without aiosmtpd, unless SEKISHO_REQUIRE_SMTP is set (scripts/test installs it and sets it).

use std::process::Stdio;
use std::time::{Duration, Instant};

use std::io::BufRead;
use std::process::{Child, Command};

use sekisho_db::testing::TestDatabase;
use sekisho_db::Dialect;
use sekisho_monitor::{DeliveryState, Monitor, Outbox, OutboxSettings, Signals};
use serde_json::Value;
use tokio::sync::mpsc;

/// The SMTP sink: prints `{"port": N}` once it listens, then one JSON line per message.
const SINK: &str = r#"
import asyncio, json, ssl, sys
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

class Handler:
    async def handle_DATA(self, server, session, envelope):
        print(json.dumps({
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "tls": session.ssl is not None,
            "data": envelope.content.decode("utf-8", "replace"),
        }), flush=True)
        return "250 OK"

# With a third argument `user:password`, AUTH is required (over TLS), and only that pair passes.
credentials = sys.argv[3].encode().split(b":", 1) if len(sys.argv) > 3 else None

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and [auth_data.login, auth_data.password] == credentials
    return AuthResult(success=ok, handled=False)

async def main():
    context = None
    if len(sys.argv) > 2:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(sys.argv[1], sys.argv[2])
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Handler(), hostname="sink.test", tls_context=context,
                     require_starttls=context is not None,
                     authenticator=authenticator if credentials else None,
                     auth_required=credentials is not None, auth_require_tls=True),
        "127.0.0.1", 0)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"#;

struct Sink {
    child: Child,
    port: u16,
    /// The sink's stdout, a line at a time (read on a thread of its own).
    lines: mpsc::UnboundedReceiver<String>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sink {
    /// Starts the sink (with STARTTLS required when `tls` names a certificate and its key), or
    /// `None` when aiosmtpd is missing and not required.
    async fn start(tls: Option<(&std::path::Path, &std::path::Path)>) -> Option<Self> {
        Self::start_with(tls, None).await
    }

    /// [`Sink::start`], requiring AUTH with `credentials` (`user:password`) when given.
    async fn start_with(
        tls: Option<(&std::path::Path, &std::path::Path)>,
        credentials: Option<&str>,
    ) -> Option<Self> {
        let importable = std::process::Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !importable {
            assert!(
                std::env::var_os("SEKISHO_REQUIRE_SMTP").is_none(),
                "python3 with aiosmtpd is required but missing"
            );
            eprintln!("SKIPPED: python3 -m pip install aiosmtpd to test the e-mail channel");
            return None;
        }
        let mut command = Command::new("python3");
        command.args(["-c", SINK]).stdin(Stdio::null());
        if let Some((cert, key)) = tls {
            command.arg(cert).arg(key);
            if let Some(credentials) = credentials {
                command.arg(credentials);
            }
        }
        let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, mut lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let first = next_line(&mut lines, "the sink's port").await;
        let port = u16::try_from(first["port"].as_u64().unwrap()).unwrap();
        Some(Self { child, port, lines })
    }

    async fn message(&mut self) -> Value {
        next_line(&mut self.lines, "a message at the SMTP sink").await
    }
}

async fn next_line(lines: &mut mpsc::UnboundedReceiver<String>, what: &str) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(30), lines.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 30 s"))
        .unwrap_or_else(|| panic!("{what}: the sink ended"));
    serde_json::from_str(&line).unwrap()
}

fn config(port: u16, starttls: Option<&std::path::Path>) -> sekisho_config::Config {
    config_with(port, starttls, "")
}

/// [`config`], with `extra` keys in the receiver's `email` table.
fn config_with(
    port: u16,
    starttls: Option<&std::path::Path>,
    extra: &str,
) -> sekisho_config::Config {
    let tls = match starttls {
        Some(ca) => format!(", starttls = true, ca = \"{}\"{extra}", ca.display()),
        None => String::new(),
    };
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n[upstreams.api]\ntargets = [\"127.0.0.1:9001\"]\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"api\"\n\
         [alerts]\ngroup_wait = \"0s\"\ngroup_interval = \"10ms\"\ndefault_rules = false\n\
         [[alerts.rules]]\nname = \"ApiCircuitOpen\"\nsignal = \"circuit_open\"\nupstream = \"api\"\ncritical = 1\n\
         annotations = {{ summary = \"the api's circuit is open\", runbook_url = \"https://runbooks.example/api\" }}\n\
         [[alerts.receivers]]\nname = \"ops\"\n\
         email = {{ smtp = \"127.0.0.1:{port}\", from = \"Sekisho <sekisho@example.com>\", to = [\"ops@example.com\", \"oncall@example.com\"]{tls} }}\n"
    );
    sekisho_config::parse(&text, "email.toml").unwrap()
}

/// Fires the alert (one cycle after the signal is set) and writes its e-mail to the outbox;
/// the row's id.
async fn fire(monitor: &mut Monitor, outbox: &Outbox, now: &mut Instant, value: f64) -> i64 {
    let mut signals = Signals::new();
    signals.insert(("circuit_open".to_owned(), "api".to_owned()), value);
    for _ in 0..10 {
        *now += Duration::from_secs(1);
        let due = monitor.cycle(&signals, *now);
        if let Some(delivery) = due.first() {
            assert_eq!(due.len(), 1, "one channel, one delivery");
            assert_eq!(delivery.channel.as_str(), "email");
            return outbox.enqueue(delivery).await.unwrap();
        }
    }
    panic!("nothing due");
}

/// The row `id` once `wanted` holds of it, within 10 s (polled: a row of the database).
async fn row_when(
    outbox: &Outbox,
    id: i64,
    wanted: impl Fn(&sekisho_monitor::LoggedNotification) -> bool,
) -> sekisho_monitor::LoggedNotification {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let row = outbox.list(None, Some(id + 1), 1).await.unwrap().remove(0);
        if wanted(&row) {
            return row;
        }
        assert!(tokio::time::Instant::now() < deadline, "{row:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn delivered(outbox: &Outbox, id: i64) -> sekisho_monitor::LoggedNotification {
    // The row is marked after the server's 250, which the sink printed before answering.
    row_when(outbox, id, |row| {
        row.state == DeliveryState::Delivered.as_str()
    })
    .await
}

/// A temporary directory with a certificate for 127.0.0.1 and its key.
fn certificate() -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "sekisho_smtp_{}_{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (dir, cert, key)
}

async fn an_alert_is_mailed_firing_then_resolved(dialect: Dialect, starttls: bool) {
    let (dir, cert, key) = certificate();
    let Some(mut sink) = Sink::start(starttls.then_some((cert.as_path(), key.as_path()))).await
    else {
        return;
    };
    let config = config(sink.port, starttls.then_some(cert.as_path()));
    let test = TestDatabase::new(dialect).await.unwrap();
    let outbox = Outbox::open(test.open().await.unwrap(), OutboxSettings::default())
        .await
        .unwrap();
    let worker = tokio::spawn(sekisho_monitor::worker::run(outbox.clone()));
    let mut now = Instant::now();
    let mut monitor = Monitor::new(&config.alerts, now);

    let id = fire(&mut monitor, &outbox, &mut now, 1.0).await;
    let message = sink.message().await;
    assert_eq!(message["from"], "sekisho@example.com");
    assert_eq!(
        message["to"],
        serde_json::json!(["ops@example.com", "oncall@example.com"])
    );
    assert_eq!(message["tls"], starttls, "{message}");
    let data = message["data"].as_str().unwrap();
    assert!(
        data.contains("Subject: sekisho [FIRING] ApiCircuitOpen (1 alert)"),
        "{data}"
    );
    assert!(data.contains("multipart/alternative"), "{data}");
    assert!(
        data.contains("text/plain") && data.contains("text/html"),
        "{data}"
    );
    // The critical colour (the seed's red), the runbook, the fingerprint.
    assert!(data.contains("#FF0000"), "{data}");
    assert!(data.contains("https://runbooks.example/api"), "{data}");
    let row = delivered(&outbox, id).await;
    assert_eq!(row.channel, "email");
    assert_eq!(row.url, format!("smtp://127.0.0.1:{}", sink.port));
    assert_eq!(row.last_status, Some(250));
    let fingerprint = &row.fingerprints[0];
    assert!(data.contains(fingerprint.as_str()), "{data}");

    // Cleared: the resolved message follows, in green.
    let id = fire(&mut monitor, &outbox, &mut now, 0.0).await;
    let message = sink.message().await;
    let data = message["data"].as_str().unwrap();
    assert!(data.contains("[RESOLVED] ApiCircuitOpen"), "{data}");
    assert!(
        data.contains("#2EB67D") && !data.contains("#FF0000"),
        "{data}"
    );
    assert!(data.contains(fingerprint.as_str()), "{data}");
    delivered(&outbox, id).await;

    worker.abort();
    test.remove().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_alert_is_mailed_firing_then_resolved() {
    an_alert_is_mailed_firing_then_resolved(Dialect::Sqlite, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_alert_is_mailed_firing_then_resolved() {
    an_alert_is_mailed_firing_then_resolved(Dialect::Postgres, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_alert_is_mailed_over_starttls_to_a_server_of_a_private_ca() {
    an_alert_is_mailed_firing_then_resolved(Dialect::Sqlite, true).await;
}

/// `starttls = true` and a server without STARTTLS: nothing is sent in the clear; the row stays
/// pending (the server may be fixed) with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_asked_of_a_server_without_it_sends_nothing() {
    let (dir, cert, _key) = certificate();
    let Some(sink) = Sink::start(None).await else {
        return;
    };
    let config = config(sink.port, Some(cert.as_path()));
    let test = TestDatabase::new(Dialect::Sqlite).await.unwrap();
    let outbox = Outbox::open(test.open().await.unwrap(), OutboxSettings::default())
        .await
        .unwrap();
    let worker = tokio::spawn(sekisho_monitor::worker::run(outbox.clone()));
    let mut now = Instant::now();
    let mut monitor = Monitor::new(&config.alerts, now);
    let id = fire(&mut monitor, &outbox, &mut now, 1.0).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let row = loop {
        let row = outbox.list(None, Some(id + 1), 1).await.unwrap().remove(0);
        if row.last_error.is_some() {
            break row;
        }
        assert!(tokio::time::Instant::now() < deadline, "{row:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(row.state, "pending", "{row:?}");
    assert!(
        row.last_error.as_deref().unwrap().contains("STARTTLS"),
        "{row:?}"
    );
    worker.abort();
    drop(sink);
    test.remove().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// The row `id` once a send of it has failed (its last error), within 10 s.
async fn failed(outbox: &Outbox, id: i64) -> sekisho_monitor::LoggedNotification {
    row_when(outbox, id, |row| row.last_error.is_some()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_auth_logs_in_with_the_password_file_read_at_each_send() {
    let (dir, cert, key) = certificate();
    let Some(mut sink) =
        Sink::start_with(Some((cert.as_path(), key.as_path())), Some("alerts:s3cret")).await
    else {
        return;
    };
    // A wrong password first: refused by the server, kept for a retry, nothing in the log but
    // the server's word.
    let password = dir.join("smtp-password");
    std::fs::write(&password, "wrong\n").unwrap();
    let extra = format!(
        ", username = \"alerts\", password_file = \"{}\"",
        password.display()
    );
    let config = config_with(sink.port, Some(cert.as_path()), &extra);
    let test = TestDatabase::new(Dialect::Sqlite).await.unwrap();
    let settings = OutboxSettings {
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(100),
        ..OutboxSettings::default()
    };
    let outbox = Outbox::open(test.open().await.unwrap(), settings)
        .await
        .unwrap();
    let worker = tokio::spawn(sekisho_monitor::worker::run(outbox.clone()));
    let mut now = Instant::now();
    let mut monitor = Monitor::new(&config.alerts, now);
    let id = fire(&mut monitor, &outbox, &mut now, 1.0).await;
    let row = failed(&outbox, id).await;
    let error = row.last_error.clone().unwrap();
    assert!(error.to_lowercase().contains("auth"), "{error}");
    assert!(
        !error.contains("s3cret") && !error.contains("wrong"),
        "{error}"
    );
    assert_eq!(row.state, DeliveryState::Pending.as_str(), "{row:?}");
    // The secret is rotated in its file: the next attempt logs in and the message goes.
    std::fs::write(&password, "s3cret\n").unwrap();
    let message = sink.message().await;
    assert_eq!(message["tls"], true, "{message}");
    assert!(message["data"]
        .as_str()
        .unwrap()
        .contains("[FIRING] ApiCircuitOpen"));
    delivered(&outbox, id).await;
    // The row keeps where the password is, never the password.
    let stored: String =
        sekisho_db::sqlx::query_scalar("SELECT payload FROM notifications WHERE id = $1")
            .bind(id)
            .fetch_one(outbox.database().pool())
            .await
            .unwrap();
    assert!(
        !stored.contains("s3cret") && stored.contains("smtp-password"),
        "{stored}"
    );

    worker.abort();
    test.remove().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `https://` receivers (issue 16): a real HTTPS receiver on 127.0.0.1 port 0 (tokio-rustls,
//! a CA and a leaf for `localhost` made with rcgen) gets its notification when its CA is in the
//! receiver's `ca_file`, with SNI; without it (the system's store only, or another CA) the
//! attempt fails saying the certificate is not trusted, and the row stays pending until a
//! worker that trusts it delivers it; a URL whose host the certificate does not name fails
//! saying so. Through the outbox on SQLite and its worker, over real sockets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sekisho_db::testing::TestDatabase;
use sekisho_db::Dialect;
use sekisho_monitor::https::Clients;
use sekisho_monitor::{Channel, Delivery, DeliveryState, Outbox, OutboxSettings};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// A request as the HTTPS receiver saw it: the SNI of its connection and the body.
#[derive(Debug)]
struct Received {
    sni: Option<String>,
    body: Value,
}

/// A directory of its own with `ca.pem` (a CA), `other-ca.pem` (a CA that signed nothing
/// here), and `leaf.pem`/`leaf.key` (a certificate for `localhost` only, signed by `ca.pem`).
fn certificates() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sekisho_https_{}_{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert, Issuer::new(params, key))
    };
    let (ca_cert, issuer) = ca("sekisho test CA");
    let (other_cert, _) = ca("another CA");
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.is_ca = IsCa::ExplicitNoCa;
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("other-ca.pem"), other_cert.pem()).unwrap();
    std::fs::write(dir.join("leaf.pem"), leaf_cert.pem()).unwrap();
    std::fs::write(dir.join("leaf.key"), leaf_key.serialize_pem()).unwrap();
    dir
}

/// An HTTPS server on 127.0.0.1:0 with the leaf of `dir`, answering 200 and sending each
/// request it got down the channel.
async fn https_receiver(dir: &Path) -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("leaf.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (sender, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to serve.
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let sni = stream.get_ref().1.server_name().map(str::to_owned);
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let sender = sender.clone();
                    let sni = sni.clone();
                    async move {
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let _ = sender.send(Received {
                            sni,
                            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        });
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, received)
}

/// The config's receivers: `trusting` with the CA in its `ca_file`, `stranger` with another
/// CA's, `system` with none, and `by_address` trusting the CA but calling 127.0.0.1 (which the
/// certificate does not name). `trust_system` gives `system` the CA too (a fixed config).
fn clients(dir: &Path, port: u16, trust_system: bool) -> Clients {
    let ca = dir.join("ca.pem");
    let other = dir.join("other-ca.pem");
    let system_ca = if trust_system {
        format!("ca_file = \"{}\"\n", ca.display())
    } else {
        String::new()
    };
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n[upstreams.api]\ntargets = [\"127.0.0.1:9001\"]\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"api\"\n\
         [[alerts.receivers]]\nname = \"trusting\"\nwebhook = \"https://localhost:{port}/hook\"\nca_file = \"{}\"\n\
         [[alerts.receivers]]\nname = \"stranger\"\nwebhook = \"https://localhost:{port}/hook\"\nca_file = \"{}\"\n\
         [[alerts.receivers]]\nname = \"system\"\nwebhook = \"https://localhost:{port}/hook\"\n{system_ca}\
         [[alerts.receivers]]\nname = \"by_address\"\nwebhook = \"https://127.0.0.1:{port}/hook\"\nca_file = \"{}\"\n",
        ca.display(),
        other.display(),
        ca.display(),
    );
    let config = sekisho_config::parse(&text, "https.toml").unwrap();
    Clients::from_config(&config.alerts, None).unwrap()
}

fn delivery(receiver: &str, url: String) -> Delivery {
    Delivery {
        receiver: receiver.to_owned(),
        channel: Channel::Webhook,
        url,
        group_key: format!("group-{receiver}"),
        status: "firing".to_owned(),
        fingerprints: vec![format!("fp-{receiver}")],
        body: json!({ "receiver": receiver }),
    }
}

/// The row `id` once its first attempt is recorded (polled: the outcome is a database write).
async fn after_first_attempt(outbox: &Outbox, id: i64) -> sekisho_monitor::LoggedNotification {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let row = outbox.list(None, Some(id + 1), 1).await.unwrap().remove(0);
        if row.last_error.is_some() || row.state != DeliveryState::Pending.as_str() {
            return row;
        }
        assert!(tokio::time::Instant::now() < deadline, "{row:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn https_receivers_are_verified(dialect: Dialect) {
    let dir = certificates();
    let (address, mut received) = https_receiver(&dir).await;
    let port = address.port();
    let test = TestDatabase::new(dialect).await.unwrap();
    let settings = OutboxSettings {
        // Long enough that a failed row is not tried again by the first worker, which is then
        // idle when it is stopped (not inside an attempt, whose lease would hold the row).
        backoff_initial: Duration::from_secs(60),
        backoff_max: Duration::from_secs(60),
        ..OutboxSettings::default()
    };
    let outbox = Outbox::open(test.open().await.unwrap(), settings)
        .await
        .unwrap();
    let named = format!("https://localhost:{port}/hook");
    let trusting = outbox
        .enqueue(&delivery("trusting", named.clone()))
        .await
        .unwrap();
    let stranger = outbox
        .enqueue(&delivery("stranger", named.clone()))
        .await
        .unwrap();
    let system = outbox
        .enqueue(&delivery("system", named.clone()))
        .await
        .unwrap();
    let by_address = outbox
        .enqueue(&delivery(
            "by_address",
            format!("https://127.0.0.1:{port}/hook"),
        ))
        .await
        .unwrap();
    let worker = tokio::spawn(sekisho_monitor::worker::run_with(
        outbox.clone(),
        clients(&dir, port, false),
    ));

    // Its CA in `ca_file`: delivered, the host name sent as SNI.
    let got = tokio::time::timeout(Duration::from_secs(20), received.recv())
        .await
        .expect("the trusting receiver's delivery")
        .unwrap();
    assert_eq!(got.sni.as_deref(), Some("localhost"));
    assert_eq!(got.body, json!({ "receiver": "trusting" }));
    let row = after_first_attempt(&outbox, trusting).await;
    assert_eq!(row.state, DeliveryState::Delivered.as_str(), "{row:?}");
    assert_eq!(row.last_status, Some(200));

    // Not trusted: a clear error, and the row stays pending for its retry.
    for id in [stranger, system] {
        let row = after_first_attempt(&outbox, id).await;
        assert_eq!(row.state, DeliveryState::Pending.as_str(), "{row:?}");
        let error = row.last_error.clone().unwrap_or_default();
        assert!(
            error.contains("TLS handshake with localhost failed")
                && error.contains("certificate not trusted"),
            "{error}"
        );
        assert!(row.next_attempt_at.is_some(), "{row:?}");
    }
    // Trusted, but for another name: the certificate names localhost, not 127.0.0.1.
    let row = after_first_attempt(&outbox, by_address).await;
    assert_eq!(row.state, DeliveryState::Pending.as_str(), "{row:?}");
    let error = row.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("certificate not valid for name \"127.0.0.1\"")
            && error.contains("localhost"),
        "{error}"
    );
    worker.abort();
    let _ = worker.await;
    // Nothing reached the receiver but the trusted delivery.
    assert!(received.try_recv().is_err());

    // The config fixed (the CA given to `system` too): a new worker delivers the row that
    // waited, once it is due (made due now rather than after its minute of backoff).
    sekisho_db::sqlx::query("UPDATE notifications SET next_attempt_at = $1 WHERE id = $2")
        .bind(sekisho_db::now_millis())
        .bind(system)
        .execute(outbox.database().pool())
        .await
        .unwrap();
    let worker = tokio::spawn(sekisho_monitor::worker::run_with(
        outbox.clone(),
        clients(&dir, port, true),
    ));
    let got = tokio::time::timeout(Duration::from_secs(20), received.recv())
        .await
        .expect("the retried delivery")
        .unwrap();
    assert_eq!(got.body, json!({ "receiver": "system" }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let row = outbox
            .list(None, Some(system + 1), 1)
            .await
            .unwrap()
            .remove(0);
        if row.state == DeliveryState::Delivered.as_str() {
            assert!(row.attempts >= 2, "{row:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{row:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.abort();
    test.remove().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_https_receivers_are_verified_against_the_ca_file() {
    https_receivers_are_verified(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_https_receivers_are_verified_against_the_ca_file() {
    https_receivers_are_verified(Dialect::Postgres).await;
}

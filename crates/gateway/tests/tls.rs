//! HTTPS on the traffic listener: rustls from PEM files, h2 and http/1.1 by ALPN, and the
//! certificate re-read on reload. Certificates are made in process with rcgen.
// The helpers outside the #[test] functions fail their test as an assert does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use sekisho_testkit::{chaos_upstream, InProcess, TempDir};

/// A CA and a leaf for 127.0.0.1 and localhost signed by it, as `ca.pem`, `leaf.pem` and
/// `leaf.key` (ECDSA P-256).
fn make_certificates(dir: &Path) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "sekisho test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let ca = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.is_ca = IsCa::ExplicitNoCa;
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca).unwrap();

    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("leaf.pem"), leaf_cert.pem()).unwrap();
    std::fs::write(dir.join("leaf.key"), leaf_key.serialize_pem()).unwrap();
}

fn tls_connector(ca_pem: &Path, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca_pem).unwrap();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_h2_and_http1_by_alpn() {
    let dir = TempDir::new("tls");
    make_certificates(dir.path());
    let up = chaos_upstream("up").await;
    let config = format!(
        r#"[server]
listen = "127.0.0.1:0"
access_log = false
tls = {{ cert = "{}", key = "{}" }}
[admin]
listen = "127.0.0.1:0"
[upstreams.up]
targets = ["{}"]
[[routes]]
name = "r"
path_prefix = "/"
upstream = "up"
"#,
        dir.path().join("leaf.pem").display(),
        dir.path().join("leaf.key").display(),
        up.address
    );
    let gateway = InProcess::start(&config).await;
    let server_name = ServerName::try_from("127.0.0.1").unwrap();

    // HTTP/2 chosen by ALPN.
    let connector = tls_connector(&dir.path().join("ca.pem"), &[b"h2", b"http/1.1"]);
    let tcp = tokio::net::TcpStream::connect(gateway.address)
        .await
        .unwrap();
    let tls = connector.connect(server_name.clone(), tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .uri(format!(
            "https://127.0.0.1:{}/secure",
            gateway.address.port()
        ))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echoed["path"], "/secure");
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https");

    // HTTP/1.1 for a client that offers only that.
    let connector = tls_connector(&dir.path().join("ca.pem"), &[b"http/1.1"]);
    let tcp = tokio::net::TcpStream::connect(gateway.address)
        .await
        .unwrap();
    let tls = connector.connect(server_name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .uri("/one")
        .header("host", "127.0.0.1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);

    // A plain-text client on the TLS port gets no answer rather than a hang.
    let answer = tokio::task::spawn_blocking({
        let address = gateway.address;
        move || {
            sekisho_testkit::raw_exchange(
                address,
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                std::time::Duration::from_secs(10),
            )
        }
    })
    .await
    .unwrap();
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_certificate_is_refused_at_build() {
    let dir = TempDir::new("tls-bad");
    std::fs::write(
        dir.path().join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("key.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display()
    );
    let config = sekisho_config::parse(&config, "t.toml").unwrap();
    let error = sekisho_gateway::Gateway::new(config, None).expect_err("bad certificate");
    assert!(error.to_string().contains("cert.pem"), "{error}");
}

/// The build error for the TLS files of `[server]`: `remove` is deleted between the config's
/// validation (which reads both files) and the gateway's build.
fn tls_build_error(cert: &Path, key: &Path, remove: Option<&Path>) -> String {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
        cert.display(),
        key.display()
    );
    let config = sekisho_config::parse(&config, "t.toml").unwrap();
    if let Some(file) = remove {
        std::fs::remove_file(file).unwrap();
    }
    let error = sekisho_gateway::Gateway::new(config, None).expect_err("bad TLS files");
    error.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_file_error_names_the_file_and_the_fault() {
    let dir = TempDir::new("tls-faults");
    let write = |name: &str, label: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n"),
        )
        .unwrap();
        path
    };
    let cert = write("cert.pem", "CERTIFICATE");
    // Past the config's marker check, but sections the PEM parser does not take.
    let trusted = write("trusted.pem", "TRUSTED CERTIFICATE");
    let encrypted = write("encrypted.pem", "ENCRYPTED PRIVATE KEY");

    let error = tls_build_error(&trusted, &encrypted, None);
    assert!(
        error.contains("trusted.pem: no certificate found"),
        "{error}"
    );
    let error = tls_build_error(&cert, &encrypted, None);
    assert!(
        error.contains("encrypted.pem: no private key found"),
        "{error}"
    );
    let gone = write("gone.pem", "CERTIFICATE");
    let error = tls_build_error(&gone, &encrypted, Some(&gone));
    assert!(error.contains("cannot read"), "{error}");
    assert!(error.contains("gone.pem"), "{error}");
}

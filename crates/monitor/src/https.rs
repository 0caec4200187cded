//! The delivery worker's HTTP client, `https://` receivers included: hyper-util's pooled client
//! over a connector that speaks plain TCP for `http://` and rustls (ring) for `https://`.
//!
//! Trust: the system's CA store (rustls-native-certs, read once when the worker starts), plus,
//! per receiver, the certificates of its `ca_file` (a private receiver's own CA). The server's
//! certificate is always verified and its names checked against the URL's host (SNI sent for a
//! DNS name); there is no switch to turn verification off, so a receiver with a certificate of
//! its own gives its CA instead ([decision 0016](../../../docs/decisions/0016-https-receivers.md)).
//!
//! A failed handshake says what failed ("certificate not trusted", "not valid for name …",
//! "expired"), for the delivery log; it is not permanent: the row stays pending and is retried,
//! so a receiver whose certificate is fixed gets what waited.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How long a TCP connect may take (a call's whole time limit is the worker's).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP client of the deliveries: `http://` and `https://`.
pub type DeliveryClient = Client<Connector, Full<Bytes>>;

/// An error on the way to a receiver (boxed, as hyper-util's client carries it).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The deliveries' clients: one trusting the system's CA store, and one per receiver with a
/// `ca_file` trusting that file's certificates too. Cheap to clone.
#[derive(Clone)]
pub struct Clients {
    system: DeliveryClient,
    by_receiver: HashMap<String, DeliveryClient>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("with_ca_file", &self.by_receiver.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why the clients cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A receiver's `ca_file` is unreadable or holds no usable certificate.
    #[error("alert receiver `{receiver}`: ca_file `{}`: {message}", path.display())]
    CaFile {
        /// The receiver.
        receiver: String,
        /// The file, resolved.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the client's settings (not expected with ring's defaults).
    #[error("TLS client: {0}")]
    Tls(String),
}

impl Clients {
    /// Clients trusting the system's CA store only (no receiver has a `ca_file`).
    pub fn system() -> Result<Self, SetupError> {
        Ok(Self {
            system: client(system_roots())?,
            by_receiver: HashMap::new(),
        })
    }

    /// The clients of the config's receivers: each `ca_file` (relative to `base_dir`, the
    /// config file's directory) read and added to the system's store for its receiver.
    pub fn from_config(
        alerts: &sekisho_config::Alerts,
        base_dir: Option<&Path>,
    ) -> Result<Self, SetupError> {
        let system = system_roots();
        let mut by_receiver = HashMap::new();
        for receiver in &alerts.receivers {
            let receiver = receiver.get_ref();
            let Some(file) = &receiver.ca_file else {
                continue;
            };
            let path = match base_dir {
                Some(dir) if Path::new(file.get_ref()).is_relative() => dir.join(file.get_ref()),
                _ => PathBuf::from(file.get_ref()),
            };
            let fail = |message: String| SetupError::CaFile {
                receiver: receiver.name.clone(),
                path: path.clone(),
                message,
            };
            let pem = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
            let mut roots = system.clone();
            let mut added = 0;
            for certificate in CertificateDer::pem_slice_iter(&pem) {
                let certificate = certificate.map_err(|e| fail(e.to_string()))?;
                roots
                    .add(certificate)
                    .map_err(|e| fail(format!("not a CA certificate rustls accepts: {e}")))?;
                added += 1;
            }
            if added == 0 {
                return Err(fail("holds no PEM certificate".to_owned()));
            }
            by_receiver.insert(receiver.name.clone(), client(roots)?);
        }
        Ok(Self {
            system: client(system)?,
            by_receiver,
        })
    }

    /// The client of `receiver`'s deliveries (the system's store only for a receiver without a
    /// `ca_file`, or one the config no longer has).
    pub fn for_receiver(&self, receiver: &str) -> &DeliveryClient {
        self.by_receiver.get(receiver).unwrap_or(&self.system)
    }
}

/// The system's CA store; certificates it cannot read are left out, loudly (an empty store
/// still serves `http://` receivers and those with a `ca_file`).
fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "cannot read part of the system's CA store");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::warn!(
            ignored,
            "certificates of the system's CA store rustls cannot use"
        );
    }
    if added == 0 {
        tracing::warn!("no CA certificate in the system's store: https receivers need a ca_file");
    }
    roots
}

fn client(roots: RootCertStore) -> Result<DeliveryClient, SetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SetupError::Tls(e.to_string()))?;
    let mut tls = tls.with_root_certificates(roots).with_no_client_auth();
    // The client speaks HTTP/1.1 only; say so, for servers that choose by ALPN.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let connector = Connector {
        http,
        tls: TlsConnector::from(Arc::new(tls)),
    };
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector))
}

/// Connects to a receiver: TCP, then TLS for an `https` URL.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: TlsConnector,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let connecting = tower_service::Service::call(&mut self.http, uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            if !https {
                return Ok(TokioIo::new(Stream::Plain(tcp)));
            }
            // A DNS name is sent as SNI and must be among the certificate's names; an IP
            // address must be among its IP addresses.
            let name = ServerName::try_from(host.clone())
                .map_err(|e| TlsError(format!("`{host}` is not a TLS server name: {e}")))?;
            match tls.connect(name, tcp).await {
                Ok(stream) => Ok(TokioIo::new(Stream::Tls(Box::new(stream)))),
                Err(error) => Err(TlsError(handshake_failure(&host, &error)).into()),
            }
        })
    }
}

/// A TLS failure, said plainly for the delivery log.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// What a failed handshake with `host` comes to, in words an operator can act on.
fn handshake_failure(host: &str, error: &std::io::Error) -> String {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let what = match rustls_error {
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            "certificate not trusted: its issuer is in neither the system's CA store nor the \
             receiver's ca_file"
                .to_owned()
        }
        Some(rustls::Error::InvalidCertificate(CertificateError::BadSignature)) => {
            "certificate not trusted: its signature does not verify".to_owned()
        }
        // rustls says the rest well: "certificate not valid for name …; certificate is only
        // valid for …", "certificate expired: …".
        Some(rustls::Error::InvalidCertificate(certificate)) => {
            format!("certificate rejected: {certificate}")
        }
        Some(other) => other.to_string(),
        None => error.to_string(),
    };
    format!("TLS handshake with {host} failed: {what}")
}

/// A connection to a receiver.
#[derive(Debug)]
pub enum Stream {
    /// `http://`.
    Plain(TcpStream),
    /// `https://`.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Self::Plain(tcp) => tcp.connected(),
            Self::Tls(tls) => tls.get_ref().0.connected(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(tcp) => tcp.is_write_vectored(),
            Self::Tls(tls) => tls.is_write_vectored(),
        }
    }
}

//! TLS for the traffic listener: rustls from PEM files, h2 and http/1.1 offered by ALPN.
//!
//! The acceptor is part of a config generation, so a reload re-reads the certificate files:
//! rotating a certificate is a file change plus a reload (or the file watch).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::build_error::BuildError;

fn resolve(file: &str, base_dir: Option<&Path>) -> PathBuf {
    match base_dir {
        Some(dir) if Path::new(file).is_relative() => dir.join(file),
        _ => PathBuf::from(file),
    }
}

/// Loads the certificate chain and key named by `tls`.
pub(crate) fn acceptor(
    tls: &sekisho_config::Tls,
    base_dir: Option<&Path>,
) -> Result<TlsAcceptor, BuildError> {
    let cert_path = resolve(&tls.cert, base_dir);
    let key_path = resolve(&tls.key, base_dir);
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| BuildError(format!("cannot read {}: {e}", path.display())))
    };
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&key_path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| BuildError(format!("{}: {e}", cert_path.display())))?;
    if certs.is_empty() {
        return Err(BuildError(format!(
            "{}: no certificate found",
            cert_path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            BuildError(format!("{}: no private key found", key_path.display()))
        }
        e => BuildError(format!("{}: {e}", key_path.display())),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BuildError(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            BuildError(format!(
                "{} / {}: {e}",
                cert_path.display(),
                key_path.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

//! rustls server configuration with mandatory client certificates, and the
//! peer's identity (certificate common name). Used only by `net` and `app`.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A TLS identity that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{file}: {message}")]
    File {
        /// File name.
        file: PathBuf,
        /// What was expected.
        message: String,
    },
    /// rustls refused the combination.
    #[error("tls configuration: {0}")]
    Rustls(String),
}

/// How a listener's TLS behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Binary socket: no session tickets, so a client that writes and closes
    /// at once never has unread data that turns its close into a reset.
    Socket,
    /// HTTP: ALPN h2 and http/1.1.
    Http,
}

fn file_error(file: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        file: file.to_path_buf(),
        message: message.into(),
    }
}

/// Reads every certificate of a PEM file.
///
/// # Errors
/// Unreadable file, bad PEM, or no certificate in it.
pub fn load_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| file_error(file, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(file, format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            file,
            "no CERTIFICATE block, expected a PEM certificate",
        ));
    }
    Ok(certs)
}

/// Builds the server configuration for one listener: TLS 1.2+, client
/// certificate required and verified against `client_ca`.
///
/// # Errors
/// Unreadable or mismatched files.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    kind: ListenerKind,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_error(key, format!("cannot read a PEM private key: {e}")))?;
    let mut roots = RootCertStore::empty();
    for ca in load_certs(client_ca)? {
        roots
            .add(ca)
            .map_err(|e| file_error(client_ca, format!("not a usable CA certificate: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    match kind {
        ListenerKind::Socket => {
            config.send_tls13_tickets = 0;
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        }
        ListenerKind::Http => {
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        }
    }
    Ok(Arc::new(config))
}

/// The common name of the peer's leaf certificate, if it has one.
pub fn peer_name(conn: &rustls::ServerConnection) -> Option<String> {
    let leaf = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

//! Fetches one target's body: a fresh TCP connection, TLS (rustls, the
//! job's CA, an optional client certificate) for https, one HTTP/1.1 GET
//! (hyper's client connection), and a body read up to the job's cap. The
//! caller bounds the whole fetch with the job's timeout.

use super::{ScrapeJob, ScrapeScheme};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Why a scrape got no body.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The job's TLS files cannot be used.
    #[error("{file}: {message}")]
    TlsFiles {
        /// File name.
        file: String,
        /// What was wrong.
        message: String,
    },
    /// TCP connect failed.
    #[error("connect to {target}: {source}")]
    Connect {
        /// `host:port`.
        target: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TLS handshake failed.
    #[error("tls handshake with {target}: {source}")]
    Tls {
        /// `host:port`.
        target: String,
        /// The I/O error carrying rustls' reason.
        source: std::io::Error,
    },
    /// HTTP-level failure (handshake, request, reading the body).
    #[error("http: {0}")]
    Http(String),
    /// The target answered with a status other than 200.
    #[error("status {0}, expected 200")]
    Status(u16),
    /// The body is larger than the job's `body_limit_bytes`.
    #[error("body over the limit of {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: u64,
    },
    /// The whole scrape took longer than the job's timeout.
    #[error("no complete answer within the timeout of {0:?}")]
    Timeout(Duration),
}

impl FetchError {
    /// Label value used in self-metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            FetchError::TlsFiles { .. } => "tls_files",
            FetchError::Connect { .. } => "connect",
            FetchError::Tls { .. } => "tls",
            FetchError::Http(_) => "http",
            FetchError::Status(_) => "status",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::Timeout(_) => "timeout",
        }
    }
}

fn file_error(file: &Path, message: impl std::fmt::Display) -> FetchError {
    FetchError::TlsFiles {
        file: file.display().to_string(),
        message: message.to_string(),
    }
}

/// The TLS client of an https job: server certificates must chain to the
/// job's `ca`; `cert`/`key` (if set) are presented to targets that ask.
/// `None` for http jobs. Reads the files (blocking, small).
///
/// # Errors
/// A file that cannot be read or used, named in the error.
pub fn connector(job: &ScrapeJob) -> Result<Option<TlsConnector>, FetchError> {
    if job.scheme == ScrapeScheme::Http {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &job.ca {
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| file_error(ca, format!("cannot read certificates: {e}")))?;
        for cert in certs {
            let cert = cert.map_err(|e| file_error(ca, format!("bad PEM certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| file_error(ca, format!("not a usable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(file_error(
                ca,
                "no CERTIFICATE block, expected a PEM CA certificate",
            ));
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| file_error(Path::new("tls"), e))?
        .with_root_certificates(roots);
    let mut config = match (&job.cert, &job.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_error(cert, format!("cannot read certificates: {e}")))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_error(cert, format!("bad PEM certificate: {e}")))?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| file_error(key, format!("cannot read a PEM private key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| file_error(cert, format!("certificate and key do not fit: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsConnector::from(Arc::new(config))))
}

/// An error and its causes (hyper's own message is often only the step
/// that failed, the reason, such as a TLS alert, is in the source).
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The host part of `host:port`, brackets of an IPv6 address removed.
fn host_of(target: &str) -> &str {
    let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// GETs the job's metrics path from `target` and returns the body.
///
/// # Errors
/// [`FetchError`] saying which step failed.
pub async fn fetch(
    job: &ScrapeJob,
    target: &str,
    tls: Option<&TlsConnector>,
) -> Result<Bytes, FetchError> {
    let tcp = TcpStream::connect(target)
        .await
        .map_err(|source| FetchError::Connect {
            target: target.to_string(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => get(job, target, tcp).await,
        Some(connector) => {
            let name =
                ServerName::try_from(host_of(target).to_string()).map_err(|e| FetchError::Tls {
                    target: target.to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                })?;
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|source| FetchError::Tls {
                    target: target.to_string(),
                    source,
                })?;
            get(job, target, stream).await
        }
    }
}

async fn get<S>(job: &ScrapeJob, target: &str, io: S) -> Result<Bytes, FetchError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| FetchError::Http(with_causes(&e));
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(http)?;
    let request = hyper::Request::get(job.metrics_path.as_str())
        .header(hyper::header::HOST, target)
        .header(
            hyper::header::ACCEPT,
            "text/plain;version=0.0.4;q=1.0,*/*;q=0.1",
        )
        .header(
            hyper::header::USER_AGENT,
            concat!("ringdb/", env!("CARGO_PKG_VERSION")),
        )
        .header(
            "X-Prometheus-Scrape-Timeout-Seconds",
            format!("{}", job.timeout.as_secs_f64()),
        )
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let limit = job.body_limit_bytes;
    let exchange = async move {
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(FetchError::Status(status));
        }
        let declared = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(FetchError::TooLarge { limit });
        }
        let cap = usize::try_from(limit).unwrap_or(usize::MAX);
        let body = Limited::new(response.into_body(), cap)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge { limit }
                } else {
                    FetchError::Http(with_causes(e.as_ref()))
                }
            })?;
        Ok(body.to_bytes())
    };
    // The connection is driven here, not in a spawned task, so nothing of a
    // scrape outlives it. It may finish before the exchange has taken the
    // last body bytes out of hyper's channel: then the exchange still runs.
    tokio::pin!(exchange);
    tokio::pin!(conn);
    let mut conn_done = false;
    loop {
        tokio::select! {
            result = &mut exchange => return result,
            result = &mut conn, if !conn_done => {
                conn_done = true;
                result.map_err(http)?;
            }
        }
    }
}

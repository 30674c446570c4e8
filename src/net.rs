//! The one accept loop every listener uses: a bounded number of connections
//! (permits), the TLS handshake inside the connection's task with a
//! timeout, the peer's identity, one tracing span per connection, and
//! cancellation.

use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Remote address.
    pub addr: SocketAddr,
    /// Common name of the client certificate.
    pub name: Option<String>,
}

/// Caps of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Most connections open at once; further ones wait in the kernel's
    /// backlog.
    pub max_connections: usize,
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Accepts connections until shutdown, completing the TLS handshake in each
/// connection's own task and then running `handle` on it.
pub async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: ListenerLimits,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    handle: H,
) where
    H: Fn(TlsStream<TcpStream>, Peer) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let handle = Arc::new(handle);
    loop {
        let permit = tokio::select! {
            _ = shutdown.token().cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, addr) = tokio::select! {
            _ = shutdown.token().cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handle = handle.clone();
        let metrics = metrics.clone();
        shutdown.spawn(format!("{name} connection {addr}"), async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics.add("ringdb_tls_handshake_failures_total", &[("listener", name)], 1);
                    tracing::info!(listener = name, peer = %addr, error = %e, "tls handshake refused");
                    return;
                }
                Err(_) => {
                    metrics.add("ringdb_tls_handshake_failures_total", &[("listener", name)], 1);
                    tracing::info!(listener = name, peer = %addr, "tls handshake timed out");
                    return;
                }
            };
            metrics.add("ringdb_connections_total", &[("listener", name)], 1);
            let peer = Peer {
                addr,
                name: crate::tls::peer_name(stream.get_ref().1),
            };
            let span = tracing::info_span!("conn", listener = name, peer = %addr, client = peer.name.as_deref().unwrap_or("-"));
            handle(stream, peer).instrument(span).await;
        });
    }
    tracing::info!(listener = name, "stopped accepting");
}

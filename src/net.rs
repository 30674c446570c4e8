//! The one accept loop every listener uses: a bounded number of connections
//! (refused at accept when full, never queued behind slow ones), a cap on
//! the connections of one IP still in the TLS handshake, the handshake
//! inside the connection's task with a timeout, admission of the peer's
//! certificate (`clients:`), a cap on the connections of one certificate,
//! one tracing span per connection, and cancellation.
//!
//! Every refusal is counted in `ringdb_connections_refused_total{listener,
//! reason}` (reason = the limit's name, or `unlisted`) and logged at most
//! once per [`LOG_EVERY`] per kind, so a flood of bad clients cannot flood
//! the log. Nothing here reads the clock or the configuration on its own.

use crate::shutdown::Shutdown;
use crate::telemetry::{Metrics, RateLimited};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

/// How often one kind of connection refusal may be logged.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// How long a refused connection gets to take its TLS close_notify.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Remote address.
    pub addr: SocketAddr,
    /// Common name of the client certificate.
    pub name: Option<String>,
}

/// Caps of one listener (the `limits:` of the same names).
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Most connections open at once; further ones are closed at accept.
    pub max_connections: usize,
    /// Most connections one certificate common name may hold open; further
    /// ones are closed right after the handshake.
    pub max_client_connections: usize,
    /// Most connections of one IP address in the TLS handshake at once;
    /// further ones are closed at accept.
    pub max_handshakes_per_ip: usize,
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 4096,
            max_client_connections: 512,
            max_handshakes_per_ip: 256,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Counts of open things per key (IP address, certificate name), each
/// given back by dropping its [`Slot`].
struct Counts<K: Eq + Hash + Clone>(Mutex<HashMap<K, usize>>);

/// One counted thing; gives its place back when dropped.
struct Slot<K: Eq + Hash + Clone> {
    counts: Arc<Counts<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Counts<K> {
    fn new() -> Arc<Self> {
        Arc::new(Counts(Mutex::new(HashMap::new())))
    }

    /// A slot for `key`, or None when `key` already holds `max`.
    fn enter(self: &Arc<Self>, key: K, max: usize) -> Option<Slot<K>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self.clone(),
            key,
        })
    }
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Counting and rate-limited logging of one listener's refusals.
struct Refusals {
    listener: &'static str,
    metrics: Arc<Metrics>,
    log: RateLimited,
}

impl Refusals {
    /// Counts a connection closed by `reason` and logs it at most once per
    /// [`LOG_EVERY`] for that reason.
    fn refuse(&self, reason: &'static str, peer: &Peer) {
        self.metrics.add(
            "ringdb_connections_refused_total",
            &[("listener", self.listener), ("reason", reason)],
            1,
        );
        self.log.warn(reason, |suppressed| {
            tracing::warn!(
                listener = self.listener,
                peer = %peer.addr,
                client = peer.name.as_deref().unwrap_or("-"),
                reason,
                suppressed,
                "connection refused"
            );
        });
    }

    /// Counts a failed TLS handshake (`timed_out`: it took longer than
    /// limits.handshake_timeout) and logs it at most once per [`LOG_EVERY`].
    fn handshake_failed(&self, addr: SocketAddr, error: Option<&std::io::Error>) {
        let labels = [("listener", self.listener)];
        self.metrics
            .add("ringdb_tls_handshake_failures_total", &labels, 1);
        match error {
            Some(e) => self.log.warn("handshake_refused", |suppressed| {
                tracing::info!(listener = self.listener, peer = %addr, error = %e, suppressed, "tls handshake refused");
            }),
            None => {
                self.metrics.add(
                    "ringdb_connection_timeouts_total",
                    &[("listener", self.listener), ("phase", "handshake")],
                    1,
                );
                self.log.warn("handshake_timeout", |suppressed| {
                    tracing::info!(listener = self.listener, peer = %addr, suppressed, "tls handshake timed out (limits.handshake_timeout)");
                });
            }
        }
    }
}

/// Accepts connections until shutdown, completing the TLS handshake in each
/// connection's own task, then asking `admit` whether the peer may connect
/// at all (`Err(reason)` closes it, counted under that reason), then running
/// `handle` on it.
#[allow(clippy::too_many_arguments)]
pub async fn serve<A, H, F>(
    name: &'static str,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: ListenerLimits,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    admit: A,
    handle: H,
) where
    A: Fn(&Peer) -> Result<(), &'static str> + Send + Sync + 'static,
    H: Fn(TlsStream<TcpStream>, Peer) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes: Arc<Counts<IpAddr>> = Counts::new();
    let clients: Arc<Counts<Option<String>>> = Counts::new();
    let refusals = Arc::new(Refusals {
        listener: name,
        metrics: metrics.clone(),
        log: RateLimited::new(LOG_EVERY),
    });
    let admit = Arc::new(admit);
    let handle = Arc::new(handle);
    loop {
        let (tcp, addr) = tokio::select! {
            _ = shutdown.token().cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    refusals.log.warn("accept_failed", |suppressed| {
                        tracing::warn!(listener = name, error = %e, suppressed, "accept failed");
                    });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let anonymous = Peer { addr, name: None };
        // Refused here the connection is closed at once: waiting for a
        // permit would leave every later client queued behind idle ones.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refusals.refuse("max_connections", &anonymous);
            continue;
        };
        let Some(handshaking) = handshakes.enter(addr.ip(), limits.max_handshakes_per_ip) else {
            refusals.refuse("max_handshakes_per_ip", &anonymous);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let (admit, handle) = (admit.clone(), handle.clone());
        let (clients, refusals, metrics) = (clients.clone(), refusals.clone(), metrics.clone());
        shutdown.spawn(format!("{name} connection {addr}"), async move {
            let _permit = permit;
            let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
            let stream = match handshake.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return refusals.handshake_failed(addr, Some(&e)),
                Err(_) => return refusals.handshake_failed(addr, None),
            };
            drop(handshaking);
            let peer = Peer {
                addr,
                name: crate::tls::peer_name(stream.get_ref().1),
            };
            if let Err(reason) = admit(&peer) {
                refusals.refuse(reason, &peer);
                return close(stream).await;
            }
            let Some(_client) = clients.enter(peer.name.clone(), limits.max_client_connections)
            else {
                refusals.refuse("max_client_connections", &peer);
                return close(stream).await;
            };
            metrics.add("ringdb_connections_total", &[("listener", name)], 1);
            let span = tracing::info_span!("conn", listener = name, peer = %addr, client = peer.name.as_deref().unwrap_or("-"));
            handle(stream, peer).instrument(span).await;
        });
    }
    tracing::info!(listener = name, "stopped accepting");
}

/// Ends a refused connection with a TLS close_notify, bounded in time.
async fn close(mut stream: TlsStream<TcpStream>) {
    let _ = tokio::time::timeout(CLOSE_GRACE, stream.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cap_each_key_and_give_back_on_drop() {
        let counts: Arc<Counts<&str>> = Counts::new();
        let a1 = counts.enter("a", 2).expect("first a");
        let a2 = counts.enter("a", 2).expect("second a");
        assert!(counts.enter("a", 2).is_none(), "third a over the cap");
        let b = counts.enter("b", 2).expect("b has its own count");
        drop(a1);
        let a3 = counts.enter("a", 2).expect("a slot given back");
        drop((a2, a3, b));
        assert!(
            counts.0.lock().unwrap().is_empty(),
            "no key left once every slot is dropped"
        );
    }
}

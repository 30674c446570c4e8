//! Query slots: how many reads evaluate at once, in total
//! (`limits.max_concurrent_queries`) and per client certificate
//! (`limits.max_client_queries`), so that one client can never take every
//! slot. A read first waits for one of its client's slots, then for a
//! free slot in total, both within the query timeout; a client with more
//! than [`MAX_CLIENT_WAITING`] reads in flight is refused at once. Health,
//! readiness and /metrics never take a slot.
//!
//! Choice: a client over its share waits rather than being refused,
//! because Grafana sends every panel of a dashboard at once with one
//! certificate and does not retry a 429.
//!
//! Sync bookkeeping (a std mutex held for a map update, never across
//! `.await`) around tokio semaphores; no knowledge of HTTP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Reads of one client in flight (running or waiting) beyond which the
/// next is refused at once with 429: a bound on the memory and tasks one
/// client can park, well above a dashboard's panel count.
pub const MAX_CLIENT_WAITING: usize = 256;

/// The client identity a slot is counted against: the certificate's
/// common name (empty when the certificate has none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ClientId(pub Arc<str>);

/// Why a read got no slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// The client already has too many reads running or waiting.
    #[error(
        "client {client:?} already has {running} queries running or waiting \
         (at most {MAX_CLIENT_WAITING}; limits.max_client_queries = {limit} of them run at once)"
    )]
    ClientBusy {
        /// Certificate common name.
        client: String,
        /// Reads of that client in flight.
        running: usize,
        /// `limits.max_client_queries`.
        limit: usize,
    },
    /// The client's share, or every slot, stayed taken for the whole query
    /// timeout.
    #[error(
        "no free query slot within the query timeout ({timeout:?}): \
         limits.max_client_queries = {per_client} for this client and \
         limits.max_concurrent_queries = {limit} in all"
    )]
    Timeout {
        /// `limits.query_timeout`.
        timeout: Duration,
        /// `limits.max_concurrent_queries`.
        limit: usize,
        /// `limits.max_client_queries`.
        per_client: usize,
    },
    /// The daemon is shutting down.
    #[error("shutting down")]
    Closed,
}

impl SlotError {
    /// Label value for the refusal counter.
    pub fn reason(&self) -> &'static str {
        match self {
            SlotError::ClientBusy { .. } => "max_client_queries",
            SlotError::Timeout { .. } => "max_concurrent_queries",
            SlotError::Closed => "shutting_down",
        }
    }
}

/// One client's reads in flight and its own slots.
#[derive(Debug)]
struct ClientShare {
    in_flight: usize,
    slots: Arc<Semaphore>,
}

/// The slots of one daemon.
#[derive(Debug)]
pub struct QuerySlots {
    global: Arc<Semaphore>,
    total: usize,
    per_client: usize,
    /// Per active client; an entry goes when its count drops to zero, so
    /// the map holds only active clients.
    clients: Arc<Mutex<HashMap<ClientId, ClientShare>>>,
}

/// A held slot: the read may run until this is dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    _client_permit: OwnedSemaphorePermit,
    _share: Share,
}

/// One client's count of reads in flight, given back on drop (also when
/// the request is cancelled while it waits).
#[derive(Debug)]
struct Share {
    client: ClientId,
    clients: Arc<Mutex<HashMap<ClientId, ClientShare>>>,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut map = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(share) = map.get_mut(&self.client) {
            share.in_flight = share.in_flight.saturating_sub(1);
            if share.in_flight == 0 {
                map.remove(&self.client);
            }
        }
    }
}

impl QuerySlots {
    /// `total` slots, at most `per_client` of them running per client;
    /// both at least 1.
    pub fn new(total: usize, per_client: usize) -> QuerySlots {
        let total = total.max(1);
        QuerySlots {
            global: Arc::new(Semaphore::new(total)),
            total,
            per_client: per_client.max(1),
            clients: Arc::default(),
        }
    }

    /// Takes a slot for `client`: one of the client's own first, then one
    /// of all, waiting at most `timeout` in all.
    ///
    /// # Errors
    /// [`SlotError::ClientBusy`] at once when the client has
    /// [`MAX_CLIENT_WAITING`] reads in flight; [`SlotError::Timeout`] when
    /// no slot freed up in time.
    pub async fn acquire(&self, client: &ClientId, timeout: Duration) -> Result<Slot, SlotError> {
        let (share, own) = self.share(client)?;
        let timed_out = || SlotError::Timeout {
            timeout,
            limit: self.total,
            per_client: self.per_client,
        };
        let wait = async {
            let client_permit = own.acquire_owned().await.map_err(|_| SlotError::Closed)?;
            let permit = self
                .global
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| SlotError::Closed)?;
            Ok::<_, SlotError>((permit, client_permit))
        };
        let (permit, client_permit) = tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| timed_out())??;
        Ok(Slot {
            _permit: permit,
            _client_permit: client_permit,
            _share: share,
        })
    }

    fn share(&self, client: &ClientId) -> Result<(Share, Arc<Semaphore>), SlotError> {
        let mut map = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(client.clone()).or_insert_with(|| ClientShare {
            in_flight: 0,
            slots: Arc::new(Semaphore::new(self.per_client)),
        });
        if entry.in_flight >= MAX_CLIENT_WAITING {
            return Err(SlotError::ClientBusy {
                client: client.0.to_string(),
                running: entry.in_flight,
                limit: self.per_client,
            });
        }
        entry.in_flight += 1;
        Ok((
            Share {
                client: client.clone(),
                clients: self.clients.clone(),
            },
            entry.slots.clone(),
        ))
    }

    /// Slots free right now (for tests and self-metrics).
    pub fn available(&self) -> usize {
        self.global.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> ClientId {
        ClientId(Arc::from(name))
    }

    #[tokio::test]
    async fn shares_and_waits() {
        const SHORT: Duration = Duration::from_millis(20);
        struct Case {
            name: &'static str,
            /// Clients holding a slot before the attempt.
            held: &'static [&'static str],
            attempt: &'static str,
            want: Result<(), &'static str>,
        }
        let cases = [
            Case {
                name: "free slot",
                held: &[],
                attempt: "a",
                want: Ok(()),
            },
            Case {
                name: "client at its share waits, then times out",
                held: &["a", "a"],
                attempt: "a",
                want: Err("max_concurrent_queries"),
            },
            Case {
                name: "another client still gets a slot",
                held: &["a", "a"],
                attempt: "b",
                want: Ok(()),
            },
            Case {
                name: "all slots taken: waits, then times out",
                held: &["a", "a", "b", "b"],
                attempt: "c",
                want: Err("max_concurrent_queries"),
            },
        ];
        for case in cases {
            let slots = QuerySlots::new(4, 2);
            let mut held = Vec::new();
            for c in case.held {
                held.push(slots.acquire(&id(c), SHORT).await.expect(case.name));
            }
            let got = slots
                .acquire(&id(case.attempt), SHORT)
                .await
                .map(|_| ())
                .map_err(|e| e.reason());
            assert_eq!(got, case.want, "case {}", case.name);
        }
    }

    #[tokio::test]
    async fn a_waiting_read_runs_when_its_client_frees_a_slot() {
        let slots = Arc::new(QuerySlots::new(4, 1));
        let first = slots.acquire(&id("a"), Duration::ZERO).await.unwrap();
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move {
                slots
                    .acquire(&id("a"), Duration::from_secs(60))
                    .await
                    .map(|_| ())
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "second read of a waits for a's slot");
        drop(first);
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn too_many_waiting_is_refused_at_once() {
        let slots = QuerySlots::new(1, 1);
        let _running = slots.acquire(&id("a"), Duration::ZERO).await.unwrap();
        let mut parked = Vec::new();
        for _ in 1..MAX_CLIENT_WAITING {
            let (share, _) = slots.share(&id("a")).unwrap();
            parked.push(share);
        }
        let got = slots
            .acquire(&id("a"), Duration::from_secs(60))
            .await
            .map(|_| ())
            .map_err(|e| e.reason());
        assert_eq!(got, Err("max_client_queries"));
        drop(parked);
        assert_eq!(
            slots
                .clients
                .lock()
                .unwrap()
                .get(&id("a"))
                .map(|s| s.in_flight),
            Some(1)
        );
    }

    #[tokio::test]
    async fn slots_come_back() {
        let slots = QuerySlots::new(2, 1);
        let first = slots.acquire(&id("a"), Duration::ZERO).await.unwrap();
        assert!(slots.acquire(&id("a"), Duration::ZERO).await.is_err());
        drop(first);
        assert_eq!(slots.available(), 2);
        assert!(slots.clients.lock().unwrap().is_empty(), "entry removed");
        // A request cancelled while waiting gives its share back too.
        let blocker = slots.acquire(&id("b"), Duration::ZERO).await.unwrap();
        let _other = slots.acquire(&id("c"), Duration::ZERO).await.unwrap();
        let a = id("a");
        let waiting = slots.acquire(&a, Duration::from_secs(60));
        let _ = tokio::time::timeout(Duration::from_millis(10), waiting).await;
        drop(blocker);
        assert!(slots.acquire(&id("a"), Duration::ZERO).await.is_ok());
    }
}

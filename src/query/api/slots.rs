//! Query slots: how many reads evaluate at once, in total
//! (`limits.max_concurrent_queries`) and per client certificate
//! (`limits.max_client_queries`), so that one client can never take every
//! slot. A client over its share is refused at once; a read waiting for a
//! free slot waits at most the query timeout. Health, readiness and
//! /metrics never take a slot.
//!
//! Sync bookkeeping (a std mutex held for a map update, never across
//! `.await`) around a tokio semaphore; no knowledge of HTTP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The client identity a slot is counted against: the certificate's
/// common name (empty when the certificate has none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ClientId(pub Arc<str>);

/// Why a read got no slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// The client already has its share of reads running or waiting.
    #[error(
        "client {client:?} already has {running} queries running or waiting, \
         at most limits.max_client_queries = {limit}"
    )]
    ClientBusy {
        /// Certificate common name.
        client: String,
        /// Reads of that client in flight.
        running: usize,
        /// `limits.max_client_queries`.
        limit: usize,
    },
    /// Every slot stayed taken for the whole query timeout.
    #[error(
        "no free query slot within the query timeout ({timeout:?}): all \
         limits.max_concurrent_queries = {limit} slots are busy"
    )]
    Timeout {
        /// `limits.query_timeout`.
        timeout: Duration,
        /// `limits.max_concurrent_queries`.
        limit: usize,
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

/// The slots of one daemon.
#[derive(Debug)]
pub struct QuerySlots {
    global: Arc<Semaphore>,
    total: usize,
    per_client: usize,
    /// Reads in flight (waiting or running) per client; an entry goes when
    /// its count drops to zero, so the map holds only active clients.
    in_flight: Arc<Mutex<HashMap<ClientId, usize>>>,
}

/// A held slot: the read may run until this is dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    _share: Share,
}

/// One client's count of reads in flight, given back on drop (also when
/// the request is cancelled while it waits).
#[derive(Debug)]
struct Share {
    client: ClientId,
    in_flight: Arc<Mutex<HashMap<ClientId, usize>>>,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.client);
            }
        }
    }
}

impl QuerySlots {
    /// `total` slots, at most `per_client` of them (running or waiting) per
    /// client; both at least 1.
    pub fn new(total: usize, per_client: usize) -> QuerySlots {
        let total = total.max(1);
        QuerySlots {
            global: Arc::new(Semaphore::new(total)),
            total,
            per_client: per_client.max(1),
            in_flight: Arc::default(),
        }
    }

    /// Takes a slot for `client`, waiting at most `timeout` for one to be
    /// free.
    ///
    /// # Errors
    /// [`SlotError::ClientBusy`] at once when the client has its share in
    /// flight; [`SlotError::Timeout`] when no slot freed up in time.
    pub async fn acquire(&self, client: &ClientId, timeout: Duration) -> Result<Slot, SlotError> {
        let share = self.share(client)?;
        let permit = match tokio::time::timeout(timeout, self.global.clone().acquire_owned()).await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(SlotError::Closed),
            Err(_) => {
                return Err(SlotError::Timeout {
                    timeout,
                    limit: self.total,
                })
            }
        };
        Ok(Slot {
            _permit: permit,
            _share: share,
        })
    }

    fn share(&self, client: &ClientId) -> Result<Share, SlotError> {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(client.clone()).or_insert(0);
        if *n >= self.per_client {
            return Err(SlotError::ClientBusy {
                client: client.0.to_string(),
                running: *n,
                limit: self.per_client,
            });
        }
        *n += 1;
        Ok(Share {
            client: client.clone(),
            in_flight: self.in_flight.clone(),
        })
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
                name: "client at its share is refused at once",
                held: &["a", "a"],
                attempt: "a",
                want: Err("max_client_queries"),
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
    async fn slots_come_back() {
        let slots = QuerySlots::new(2, 1);
        let first = slots.acquire(&id("a"), Duration::ZERO).await.unwrap();
        assert!(slots.acquire(&id("a"), Duration::ZERO).await.is_err());
        drop(first);
        assert_eq!(slots.available(), 2);
        assert!(slots.in_flight.lock().unwrap().is_empty(), "entry removed");
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

//! One shutdown signal for every task (a CancellationToken) and one tracker
//! of running tasks (a TaskTracker), drained with a deadline that names the
//! tasks that were late.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cancellation plus the set of tasks that must finish before exit.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
    running: Arc<Mutex<HashMap<u64, String>>>,
    next_id: Arc<AtomicU64>,
}

impl Shutdown {
    /// A fresh, untriggered shutdown.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// The token tasks watch.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Whether shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Spawns a tracked task; `name` appears in the log if it is late.
    pub fn spawn<F>(&self, name: impl Into<String>, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, name.into());
        let running = self.running.clone();
        self.tracker.spawn(async move {
            task.await;
            running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
    }

    /// Signals every task to stop.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Waits for tracked tasks up to `deadline`.
    ///
    /// # Errors
    /// The names of the tasks still running at the deadline.
    pub async fn drain(&self, deadline: Duration) -> Result<(), Vec<String>> {
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
        {
            return Ok(());
        }
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        Err(running.values().cloned().collect())
    }
}

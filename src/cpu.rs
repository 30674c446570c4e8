//! Bulk work that may wait for the CPU: a fixed pool of threads, one a
//! core, at a lower scheduling priority than the rest of the daemon.
//!
//! Decoding and storing a large remote_write request is the most CPU one
//! client can ask for. On the blocking pool every such request took a
//! thread of the same priority as the query threads and the TLS workers,
//! so a client writing as fast as it could left a query a small share of
//! the CPU among many (scripts/flood, storm_429: the other clients' query
//! p99 went from 4 ms to 138 ms on 2 cores). Here at most one job a core
//! runs, [`BULK_NICE`] nicer than the daemon: when the CPU is idle it runs as fast as
//! before; when queries or handshakes want the CPU, Linux gives each of
//! them about three times a bulk thread's share.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// How much nicer the bulk threads are than the daemon's other threads.
/// At nice 5 a thread weighs 335 against 1,024 at nice 0 in Linux's CFS.
pub const BULK_NICE: i32 = 5;

type Job = Box<dyn FnOnce() + Send>;

/// Why a job did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// Every thread of the pool is gone (the process is exiting).
    #[error("bulk work pool stopped")]
    Stopped,
    /// The job panicked (caught; the thread lives on).
    #[error("bulk job panicked")]
    Panicked,
}

/// A fixed pool of low-priority threads fed by one queue.
pub struct BulkPool {
    queue: SyncSender<Job>,
}

impl BulkPool {
    /// `threads` threads named `ringdb-bulk-<i>`, [`BULK_NICE`] nicer than
    /// the daemon where the system allows it (else at its own priority). The queue
    /// holds at most `queued` jobs; callers bound what they submit (the
    /// remote_write route admits `max_inflight_writes` requests).
    ///
    /// # Errors
    /// A thread cannot be spawned.
    pub fn new(threads: usize, queued: usize) -> std::io::Result<BulkPool> {
        let (queue, jobs) = sync_channel::<Job>(queued.max(1));
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..threads.max(1) {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("ringdb-bulk-{i}"))
                .spawn(move || {
                    lower_priority();
                    work(&jobs);
                })?;
        }
        Ok(BulkPool { queue })
    }

    /// A pool of one thread a core.
    ///
    /// # Errors
    /// A thread cannot be spawned.
    pub fn per_core(queued: usize) -> std::io::Result<BulkPool> {
        BulkPool::new(
            std::thread::available_parallelism().map_or(1, usize::from),
            queued,
        )
    }

    /// Runs `f` on the pool and waits for its result without holding an
    /// async worker.
    ///
    /// # Errors
    /// The pool stopped, or `f` panicked.
    pub async fn run<R, F>(&self, f: F) -> Result<R, BulkError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(out.map_err(|_| BulkError::Panicked));
        });
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Disconnected(_)) => return Err(BulkError::Stopped),
            Err(TrySendError::Full(job)) => {
                // Wait for room off the async workers.
                let queue = self.queue.clone();
                tokio::task::spawn_blocking(move || queue.send(job))
                    .await
                    .map_err(|_| BulkError::Stopped)?
                    .map_err(|_| BulkError::Stopped)?;
            }
        }
        rx.await.map_err(|_| BulkError::Stopped)?
    }
}

fn work(jobs: &Mutex<Receiver<Job>>) {
    loop {
        let next = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
        match next {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// Lowers the calling thread's priority by [`BULK_NICE`] (on Linux nice
/// values are per thread), to 19 at most; a refusal leaves it as it is.
fn lower_priority() {
    // SAFETY: gettid takes no argument; getpriority and setpriority only
    // read their arguments and read or change this thread's niceness.
    let failed = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, (now + BULK_NICE).min(19)) != 0
    };
    if failed {
        tracing::debug!("bulk thread keeps the daemon's priority (setpriority refused)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        // SAFETY: as in lower_priority; getpriority only reads.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::getpriority(libc::PRIO_PROCESS, tid)
        }
    }

    #[tokio::test]
    async fn jobs_run_at_lower_priority_and_panics_are_caught() {
        let pool = BulkPool::new(2, 4).unwrap();
        let mine = nice_of_this_thread();
        let theirs = pool.run(nice_of_this_thread).await.unwrap();
        assert_eq!(theirs, (mine + BULK_NICE).min(19), "mine {mine}");
        assert_eq!(
            mine,
            nice_of_this_thread(),
            "the caller's thread is untouched"
        );
        let panicked = pool.run(|| panic!("boom")).await;
        assert!(matches!(panicked, Err(BulkError::Panicked)));
        // Both threads still serve.
        let sums = futures_sum(&pool).await;
        assert_eq!(sums, (0..16).map(|i| i * 2).sum::<u64>());
    }

    async fn futures_sum(pool: &BulkPool) -> u64 {
        let mut total = 0;
        for i in 0..16u64 {
            total += pool.run(move || i * 2).await.unwrap();
        }
        total
    }
}

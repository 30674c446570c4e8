//! Scraping (DESIGN §6): every target of every `scrape:` job is fetched at
//! its job's interval, its text exposition body parsed ([`text`], sans-I/O)
//! and written through the store like any other write ([`write`]), with
//! `job`/`instance` labels and the `up`, `scrape_duration_seconds`,
//! `scrape_samples_scraped` series.
//!
//! One task per target: scrapes of a target never overlap (the task is
//! sequential, and a task replaced on reload waits for its predecessor's
//! scrape in flight), are spread over the interval by a hash of job and
//! target, and are each bounded by the job's timeout and body cap. A down
//! target costs only its own task. Parsing and store writes run on the
//! blocking pool. On shutdown each task finishes the scrape in flight and
//! stops. [`Scraper::set_jobs`] swaps the job list at run time (reload):
//! targets whose settings did not change keep running undisturbed.
//!
//! It may use the store, telemetry, rustls/hyper for its own client
//! connections; it must never read the environment or the wall clock on
//! its own (the [`Clock`] comes in), nor keep anything unbounded.

pub mod client;
pub mod text;
pub mod write;

use crate::model::Clock;
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::telemetry::Metrics;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use write::{Health, Origin};

/// Scrapes every target of every job until shutdown (no reload; see
/// [`Scraper`] for that).
pub async fn run(
    jobs: Vec<ScrapeJob>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    clock: Clock,
    shutdown: Shutdown,
) {
    Scraper::new(jobs, store, metrics, clock)
        .run(shutdown)
        .await;
}

/// One `scrape:` job: static targets scraped at an interval (DESIGN §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeJob {
    /// Job name, unique in the file; the `job` label of its series.
    pub job: String,
    /// Time between two scrapes of one target.
    pub interval: Duration,
    /// Longest one scrape may take (connect, TLS, request, body); at most
    /// `interval`.
    pub timeout: Duration,
    /// `host:port` of each target; the `instance` label.
    pub targets: Vec<String>,
    /// http or https.
    pub scheme: ScrapeScheme,
    /// CA the targets' server certificates must chain to (https).
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate chain presented to targets that require one.
    pub cert: Option<std::path::PathBuf>,
    /// Private key of `cert`.
    pub key: Option<std::path::PathBuf>,
    /// Path requested on each target, `/metrics` by default.
    pub metrics_path: String,
    /// Largest response body read; a bigger one fails the scrape.
    pub body_limit_bytes: u64,
}

/// How a scrape job talks to its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScrapeScheme {
    /// Plain HTTP/1.1.
    Http,
    /// HTTP/1.1 over TLS (rustls), optionally with a client certificate.
    Https,
}

/// The scrape scheduler, whose job list can be replaced while it runs.
pub struct Scraper {
    jobs: watch::Sender<Arc<Vec<ScrapeJob>>>,
    shared: Arc<Shared>,
}

/// What every target task needs.
struct Shared {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    clock: Clock,
}

/// One running target task.
struct Running {
    /// The job's settings, `targets` emptied (what the task was started with).
    settings: Arc<ScrapeJob>,
    stop: CancellationToken,
}

type TargetKey = (String, String);

impl Scraper {
    /// A scraper for `jobs`; nothing runs until [`Scraper::run`].
    pub fn new(
        jobs: Vec<ScrapeJob>,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Scraper {
        let (jobs, _) = watch::channel(Arc::new(jobs));
        Scraper {
            jobs,
            shared: Arc::new(Shared {
                store,
                metrics,
                clock,
            }),
        }
    }

    /// Replaces the job list: new targets start, removed ones stop after
    /// their scrape in flight, targets of a job whose settings changed
    /// restart with the new settings, the others are left alone. Call it
    /// with validated settings (`config::load`).
    pub fn set_jobs(&self, jobs: Vec<ScrapeJob>) {
        self.jobs.send_replace(Arc::new(jobs));
    }

    /// The job list in force.
    pub fn jobs(&self) -> Arc<Vec<ScrapeJob>> {
        self.jobs.borrow().clone()
    }

    /// Runs the target tasks (tracked by `shutdown`) until shutdown,
    /// following [`Scraper::set_jobs`].
    pub async fn run(&self, shutdown: Shutdown) {
        let mut changes = self.jobs.subscribe();
        let mut running: HashMap<TargetKey, Running> = HashMap::new();
        let mut slots: HashMap<TargetKey, Arc<tokio::sync::Mutex<()>>> = HashMap::new();
        loop {
            let jobs = changes.borrow_and_update().clone();
            self.reconcile(&jobs, &mut running, &mut slots, &shutdown);
            tokio::select! {
                _ = shutdown.token().cancelled() => break,
                changed = changes.changed() => if changed.is_err() { break },
            }
        }
        // Target tasks watch child tokens of the shutdown token: they are
        // already stopping; `shutdown.drain` waits for them.
        tracing::debug!(targets = running.len(), "scraper stopping");
    }

    fn reconcile(
        &self,
        jobs: &[ScrapeJob],
        running: &mut HashMap<TargetKey, Running>,
        slots: &mut HashMap<TargetKey, Arc<tokio::sync::Mutex<()>>>,
        shutdown: &Shutdown,
    ) {
        let mut wanted: HashMap<TargetKey, Arc<ScrapeJob>> = HashMap::new();
        for job in jobs {
            let settings = Arc::new(ScrapeJob {
                targets: Vec::new(),
                ..job.clone()
            });
            for target in &job.targets {
                wanted.insert((job.job.clone(), target.clone()), settings.clone());
            }
        }
        running.retain(|key, r| {
            let keep = wanted.get(key).is_some_and(|s| *s == r.settings);
            if !keep {
                r.stop.cancel();
                tracing::info!(job = %key.0, target = %key.1, "scrape target stopped");
            }
            keep
        });
        // A slot no task holds any more and no target wants is dropped.
        slots.retain(|key, slot| wanted.contains_key(key) || Arc::strong_count(slot) > 1);
        for (key, settings) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let stop = shutdown.token().child_token();
            let slot = slots.entry(key.clone()).or_default().clone();
            tracing::info!(job = %key.0, target = %key.1, interval = ?settings.interval, "scrape target started");
            let task = TargetTask {
                shared: self.shared.clone(),
                job: settings.clone(),
                target: key.1.clone(),
                stop: stop.clone(),
                slot,
            };
            shutdown.spawn(format!("scrape {} {}", key.0, key.1), task.run());
            running.insert(key, Running { settings, stop });
        }
    }
}

/// When a target is scraped and what time its samples get, on the wall
/// clock: at every multiple of the interval plus an offset (a stable hash
/// of job and target, so restarts and reloads keep the phase and targets
/// spread out). The offset stays in [5%, 95%) of the interval, so that a
/// scrape started a little late or early never crosses a multiple of the
/// interval, where a rule with timeframe = interval starts a new bucket;
/// and a scrape started within that margin of its scheduled time is
/// stamped with the scheduled time, as Prometheus does, so one bucket gets
/// exactly one scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Schedule {
    interval_ms: u64,
    offset_ms: u64,
}

impl Schedule {
    fn new(job: &str, target: &str, interval: Duration) -> Schedule {
        let mut h = std::hash::DefaultHasher::new();
        (job, target).hash(&mut h);
        let interval_ms = u64::try_from(interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let margin = interval_ms / 20;
        let span = (interval_ms - 2 * margin).max(1);
        Schedule {
            interval_ms,
            offset_ms: margin + h.finish() % span,
        }
    }

    /// How far from its scheduled time a scrape still gets that time.
    fn margin_ms(&self) -> u64 {
        self.interval_ms / 20
    }

    /// The latest scheduled time at or before `now_ms`.
    fn previous(&self, now_ms: u64) -> u64 {
        let since =
            (now_ms % self.interval_ms + self.interval_ms - self.offset_ms) % self.interval_ms;
        now_ms.saturating_sub(since)
    }

    /// The scheduled time of the next scrape: the first at or after `now_ms`
    /// for a task's first scrape (`last` None), else the first after `last`
    /// that is not more than the margin behind `now_ms` (scheduled times
    /// missed by a long scrape are skipped).
    fn next(&self, now_ms: u64, last: Option<u64>) -> u64 {
        let previous = self.previous(now_ms);
        let mut next = match last {
            None if previous == now_ms => previous,
            None => previous + self.interval_ms,
            Some(_) if now_ms - previous <= self.margin_ms() => previous,
            Some(_) => previous + self.interval_ms,
        };
        if let Some(last) = last {
            while next <= last {
                next += self.interval_ms;
            }
        }
        next
    }

    /// The timestamp of a scrape scheduled at `scheduled_ms` that started
    /// at `started_ms`.
    fn stamp(&self, scheduled_ms: u64, started_ms: u64) -> u64 {
        if started_ms.abs_diff(scheduled_ms) <= self.margin_ms() {
            scheduled_ms
        } else {
            started_ms
        }
    }
}

/// What a target task remembers between scrapes, to log changes only.
#[derive(Default)]
struct Memory {
    up: Option<bool>,
    malformed: bool,
}

struct TargetTask {
    shared: Arc<Shared>,
    job: Arc<ScrapeJob>,
    target: String,
    stop: CancellationToken,
    /// Held during a scrape; shared with a replacement task for the same
    /// target so that the two never scrape at once.
    slot: Arc<tokio::sync::Mutex<()>>,
}

impl TargetTask {
    async fn run(self) {
        let schedule = Schedule::new(&self.job.job, &self.target, self.job.interval);
        let mut tls: Option<Option<TlsConnector>> = None;
        let mut memory = Memory::default();
        let mut last = None;
        loop {
            // Each wait is measured from the wall clock again, so the
            // scrapes stay on their scheduled times however long the task
            // runs (a monotonic timer drifts from the wall clock).
            let now_ms = (self.shared.clock)();
            let scheduled_ms = schedule.next(now_ms, last);
            let delay = Duration::from_millis(scheduled_ms.saturating_sub(now_ms));
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            let _slot = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                guard = self.slot.lock() => guard,
            };
            let scrape_ms = schedule.stamp(scheduled_ms, (self.shared.clock)());
            self.scrape(scrape_ms, &mut tls, &mut memory).await;
            last = Some(scheduled_ms);
        }
    }

    /// One scrape, start to finish, its samples stamped `scrape_ms` (unless
    /// the target sends timestamps); never returns early on failure: a
    /// failed scrape still writes `up 0`.
    async fn scrape(
        &self,
        scrape_ms: u64,
        tls: &mut Option<Option<TlsConnector>>,
        memory: &mut Memory,
    ) {
        let job = &self.job;
        let started = tokio::time::Instant::now();
        // TLS files are read when the task starts and again after a failed
        // scrape, so rotated certificates are picked up without a reload.
        if tls.is_none() {
            let settings = job.clone();
            let loaded = tokio::task::spawn_blocking(move || client::connector(&settings))
                .await
                .unwrap_or_else(|e| {
                    Err(client::FetchError::TlsFiles {
                        file: "-".into(),
                        message: format!("loading task failed: {e}"),
                    })
                });
            match loaded {
                Ok(c) => *tls = Some(c),
                Err(e) => {
                    self.finish(Err(e), started, scrape_ms, memory).await;
                    return;
                }
            }
        }
        let connector = tls.as_ref().and_then(Option::as_ref);
        let fetched =
            match tokio::time::timeout(job.timeout, client::fetch(job, &self.target, connector))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(client::FetchError::Timeout(job.timeout)),
            };
        if fetched.is_err() {
            *tls = None;
        }
        self.finish(fetched, started, scrape_ms, memory).await;
    }

    /// Parses and stores the body (if any) and the health series on the
    /// blocking pool, then counts and logs.
    async fn finish(
        &self,
        fetched: Result<hyper::body::Bytes, client::FetchError>,
        started: tokio::time::Instant,
        scrape_ms: u64,
        memory: &mut Memory,
    ) {
        let duration = started.elapsed();
        let (job, target) = (self.job.clone(), self.target.clone());
        let shared = self.shared.clone();
        let (failure, body) = match fetched {
            Ok(body) => (None, Some(body)),
            Err(e) => (Some(e), None),
        };
        let work = tokio::task::spawn_blocking(move || {
            let origin = Origin {
                job: &job.job,
                instance: &target,
            };
            let now_ms = (shared.clock)();
            let (mut report, scraped, first_error, malformed) = match body {
                Some(body) => {
                    let exposition = text::parse(&body);
                    let report = write::write_exposition(
                        &shared.store,
                        &exposition,
                        origin,
                        scrape_ms,
                        now_ms,
                    );
                    let first = exposition.errors.first().cloned();
                    (
                        report,
                        exposition.samples.len() as u64,
                        first,
                        exposition.errors.len() as u64,
                    )
                }
                None => (write::Report::default(), 0, None, 0),
            };
            let health = Health {
                up: failure.is_none(),
                duration,
                samples_scraped: scraped,
            };
            write::write_health(
                &shared.store,
                origin,
                health,
                scrape_ms,
                now_ms,
                &mut report,
            );
            (report, failure, first_error, malformed)
        })
        .await;
        let (report, failure, first_error, malformed) = match work {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(job = %self.job.job, target = %self.target, error = %e, "scrape ingest task failed");
                return;
            }
        };
        self.count(&report, failure.as_ref(), malformed);
        self.log(failure.as_ref(), first_error, malformed, memory);
    }

    fn count(&self, report: &write::Report, failure: Option<&client::FetchError>, malformed: u64) {
        let m = &self.shared.metrics;
        m.count_samples(
            "scrape",
            report.accepted,
            report.rejected.iter().map(|(r, n)| (*r, *n)),
        );
        let result = failure.map_or("up", client::FetchError::as_str);
        m.add(
            "ringdb_scrapes_total",
            &[("job", &self.job.job), ("result", result)],
            1,
        );
        m.add(
            "ringdb_scrape_malformed_lines_total",
            &[("job", &self.job.job)],
            malformed,
        );
        for (reason, n) in &report.metadata_skipped {
            m.add(
                "ringdb_metadata_skipped_total",
                &[("protocol", "scrape"), ("reason", reason)],
                *n,
            );
        }
    }

    /// Logs changes (up → down, down → up, malformed lines appearing), not
    /// every scrape: a target down for a day must not flood the log.
    fn log(
        &self,
        failure: Option<&client::FetchError>,
        first_error: Option<text::LineError>,
        malformed: u64,
        memory: &mut Memory,
    ) {
        let (job, target) = (&self.job.job, &self.target);
        let up = failure.is_none();
        match (memory.up, failure) {
            (Some(false), None) => tracing::info!(%job, %target, "scrape target up again"),
            (None | Some(true), Some(e)) => {
                tracing::warn!(%job, %target, error = %e, "scrape target down")
            }
            (_, Some(e)) => tracing::debug!(%job, %target, error = %e, "scrape failed"),
            _ => {}
        }
        memory.up = Some(up);
        if let Some(e) = first_error {
            if !memory.malformed {
                tracing::warn!(%job, %target, malformed, first = %e, "scrape body has malformed lines; the other lines were stored");
            }
        }
        memory.malformed = malformed > 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_stable_spread_and_away_from_bucket_edges() {
        for secs in [1, 10, 15, 60, 3600] {
            let i = Duration::from_secs(secs);
            let a = Schedule::new("node", "h:9100", i);
            assert_eq!(a, Schedule::new("node", "h:9100", i), "stable, {secs}s");
            let offsets: Vec<u64> = (0..1000)
                .map(|k| Schedule::new("node", &format!("h{k}:9100"), i).offset_ms)
                .collect();
            let (low, high) = (secs * 1000 / 20, secs * 1000 * 19 / 20);
            for (k, o) in offsets.iter().enumerate() {
                assert!((low..high).contains(o), "{secs}s target {k}: offset {o} ms");
            }
            let spread: std::collections::HashSet<_> =
                offsets.iter().map(|o| o * 10 / (secs * 1000)).collect();
            assert_eq!(
                spread.len(),
                10,
                "{secs}s: targets over every tenth of the interval"
            );
        }
    }

    fn schedule(offset_ms: u64) -> Schedule {
        Schedule {
            interval_ms: 10_000,
            offset_ms,
        }
    }

    #[test]
    fn next_scheduled_time() {
        // (case, offset, now, last, want); interval 10 s, margin 500 ms.
        let cases = [
            ("first, offset ahead", 3_000, 100_000, None, 103_000),
            ("first, offset passed", 3_000, 105_000, None, 113_000),
            ("first, exactly now", 3_000, 103_000, None, 103_000),
            (
                "after a scrape that took 1 s",
                3_000,
                104_000,
                Some(103_000),
                113_000,
            ),
            ("woken 2 ms early", 3_000, 112_998, Some(103_000), 113_000),
            ("woken 2 ms late", 3_000, 113_002, Some(103_000), 113_000),
            (
                "long scrape: a missed time is skipped",
                3_000,
                114_000,
                Some(103_000),
                123_000,
            ),
            (
                "never the same time twice",
                3_000,
                103_100,
                Some(103_000),
                113_000,
            ),
        ];
        for (case, offset, now, last, want) in cases {
            assert_eq!(schedule(offset).next(now, last), want, "case {case}");
        }
    }

    #[test]
    fn stamps_are_the_scheduled_time_within_the_margin() {
        let cases = [
            ("on time", 103_000, 103_000),
            ("3 ms late", 103_003, 103_000),
            ("2 ms early", 102_998, 103_000),
            ("at the margin", 103_500, 103_000),
            ("later than the margin", 103_501, 103_501),
        ];
        for (case, started, want) in cases {
            assert_eq!(schedule(3_000).stamp(103_000, started), want, "case {case}");
        }
    }

    /// A target task's timing against an injected clock whose scrapes
    /// start up to 30 ms late or 5 ms early: a rule with timeframe =
    /// interval gets exactly one scrape in every bucket, for any target.
    #[test]
    fn every_bucket_of_the_interval_gets_one_scrape() {
        let interval = Duration::from_secs(10);
        let mut jitter = 0x2545_f491_4f6c_dd1du64;
        for k in 0..200 {
            let schedule = Schedule::new("node", &format!("h{k}:9100"), interval);
            let mut clock = 1_700_000_000_123u64;
            let mut last = None;
            let mut buckets = Vec::new();
            for _ in 0..50 {
                let scheduled = schedule.next(clock, last);
                jitter ^= jitter << 13;
                jitter ^= jitter >> 7;
                jitter ^= jitter << 17;
                // The clock when the task wakes: 5 ms early to 30 ms late.
                clock = (scheduled + jitter % 36).saturating_sub(5).max(clock);
                let stamp = schedule.stamp(scheduled, clock);
                buckets.push(stamp / 10_000);
                clock += 150; // the scrape itself
                last = Some(scheduled);
            }
            for pair in buckets.windows(2) {
                assert_eq!(pair[1], pair[0] + 1, "target {k}: buckets {buckets:?}");
            }
        }
    }
}

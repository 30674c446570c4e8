//! Tracing setup, rate-limited warnings, and the self-metrics registry
//! rendered at `GET /metrics` in the Prometheus text format.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Starts the tracing subscriber (`RUST_LOG` style filter, default `info`).
pub fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// What kind of number a metric family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down (stored as f64 bits).
    Gauge,
}

/// Metric families: name, kind, help. Anything registered must be here.
const FAMILIES: &[(&str, Kind, &str)] = &[
    (
        "ringdb_samples_accepted_total",
        Kind::Counter,
        "Samples stored in at least one archive, by protocol.",
    ),
    (
        "ringdb_samples_rejected_total",
        Kind::Counter,
        "Samples (or frames) refused, by protocol and reason.",
    ),
    (
        "ringdb_archive_rejects_total",
        Kind::Counter,
        "Archive-level refusals of samples, by reason.",
    ),
    (
        "ringdb_connections_total",
        Kind::Counter,
        "Connections that completed the TLS handshake, by listener.",
    ),
    (
        "ringdb_tls_handshake_failures_total",
        Kind::Counter,
        "Connections refused during the TLS handshake, by listener.",
    ),
    (
        "ringdb_connections_refused_total",
        Kind::Counter,
        "Connections closed at accept or after the TLS handshake (or HTTP requests refused with 403 and close), by listener and reason: the limit (max_connections, max_handshakes_per_ip, max_client_connections) or unlisted (certificate not in clients:).",
    ),
    (
        "ringdb_connection_timeouts_total",
        Kind::Counter,
        "Connections closed or requests refused because the client was too slow or idle, by listener and phase (handshake, header, idle, body).",
    ),
    (
        "ringdb_http_requests_total",
        Kind::Counter,
        "HTTP requests by listener, route and status code.",
    ),
    (
        "ringdb_scrapes_total",
        Kind::Counter,
        "Scrapes by job and result (up, or why the target was down).",
    ),
    (
        "ringdb_scrape_malformed_lines_total",
        Kind::Counter,
        "Scraped lines that could not be parsed (skipped), by job.",
    ),
    ("ringdb_series", Kind::Gauge, "Series held in memory."),
    ("ringdb_archives", Kind::Gauge, "Archives held in memory."),
    (
        "ringdb_archive_bytes",
        Kind::Gauge,
        "Bytes of archive memory (cells, means, dirty bits).",
    ),
    (
        "ringdb_snapshots_total",
        Kind::Counter,
        "Snapshots completed.",
    ),
    (
        "ringdb_snapshot_errors_total",
        Kind::Counter,
        "Snapshots that failed (each is retried at the next interval).",
    ),
    (
        "ringdb_last_snapshot_success_timestamp_seconds",
        Kind::Gauge,
        "When the last snapshot succeeded (start-up after restore counts as one).",
    ),
    (
        "ringdb_snapshot_duration_seconds",
        Kind::Gauge,
        "Duration of the last snapshot.",
    ),
    (
        "ringdb_snapshot_bytes",
        Kind::Gauge,
        "Bytes written by the last snapshot.",
    ),
    (
        "ringdb_snapshot_pages",
        Kind::Gauge,
        "Pages written by the last snapshot.",
    ),
    (
        "ringdb_snapshot_bytes_total",
        Kind::Counter,
        "Bytes written by all snapshots (keys and values), counted as each write lands.",
    ),
    (
        "ringdb_snapshot_removed_records_total",
        Kind::Counter,
        "Records removed by snapshots (old pages of migrated archives, records of rules whose history moved).",
    ),
    (
        "ringdb_snapshots_stopped_total",
        Kind::Counter,
        "Snapshots stopped by shutdown or the final snapshot's deadline before writing everything.",
    ),
    (
        "ringdb_snapshot_disk_bytes",
        Kind::Gauge,
        "Size of the snapshot store on disk after the last snapshot.",
    ),
    (
        "ringdb_restore_skipped_total",
        Kind::Counter,
        "Saved archives or records not loaded at start, by reason (corrupt, rule_changed_or_removed, missing, no_pages, orphan_pages).",
    ),
    (
        "ringdb_ready",
        Kind::Gauge,
        "1 once restore finished and listeners are up; 0 while snapshots fail for too long.",
    ),
    (
        "ringdb_remote_write_refused_total",
        Kind::Counter,
        "remote_write requests refused whole, by reason.",
    ),
    (
        "ringdb_remote_write_stale_markers_total",
        Kind::Counter,
        "Stale markers received (accepted, not stored).",
    ),
    (
        "ringdb_remote_write_skipped_total",
        Kind::Counter,
        "Exemplars and native histogram samples skipped, by kind.",
    ),
    (
        "ringdb_remote_write_metadata_total",
        Kind::Counter,
        "Metadata entries received.",
    ),
    (
        "ringdb_metadata_skipped_total",
        Kind::Counter,
        "Metadata entries (remote_write) or HELP/TYPE (scrape) not kept, by protocol and reason.",
    ),
    (
        "ringdb_metadata_bytes",
        Kind::Gauge,
        "Bytes of metadata held (limits.max_metadata_bytes).",
    ),
    (
        "ringdb_series_key_bytes",
        Kind::Gauge,
        "Bytes of series keys held (limits.max_series_key_bytes_total).",
    ),
    (
        "ringdb_queries_total",
        Kind::Counter,
        "Prometheus API requests by endpoint and outcome.",
    ),
    (
        "ringdb_query_refusals_total",
        Kind::Counter,
        "PromQL queries refused by the limit that refused them (limits.*).",
    ),
    (
        "ringdb_query_panics_total",
        Kind::Counter,
        "PromQL parses or evaluations that panicked, caught and answered 422.",
    ),
    (
        "ringdb_query_duration_microseconds_total",
        Kind::Counter,
        "Time spent answering Prometheus API requests, by endpoint.",
    ),
    (
        "ringdb_query_refused_total",
        Kind::Counter,
        "Reads (PromQL and YAWNDB) refused before evaluation, by reason: \
         no_read_permission, max_client_queries, max_concurrent_queries (slot wait timed out), \
         max_slice_buckets, max_response_bytes.",
    ),
    (
        "ringdb_reloads_total",
        Kind::Counter,
        "SIGHUP reloads by outcome (ok, error, no_file).",
    ),
    (
        "ringdb_autoremoved_archives_total",
        Kind::Counter,
        "Idle autoremove archives dropped from memory and disk.",
    ),
    (
        "ringdb_migrations_total",
        Kind::Gauge,
        "Archives migrated into a changed rule's shape, or made for a rule that newly applies from the history of rules that no longer do, since start.",
    ),
];

/// A registry of labelled counters and gauges. Hot paths keep the
/// `Arc<AtomicU64>` handle instead of looking the name up each time.
#[derive(Default)]
pub struct Metrics {
    values: RwLock<BTreeMap<(&'static str, String), Arc<AtomicU64>>>,
}

fn labels_text(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let body: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", body.join(","))
}

impl Metrics {
    /// The handle of one labelled value, created at zero on first use.
    pub fn handle(&self, name: &'static str, labels: &[(&str, &str)]) -> Arc<AtomicU64> {
        debug_assert!(
            FAMILIES.iter().any(|f| f.0 == name),
            "unregistered metric {name}"
        );
        let key = (name, labels_text(labels));
        if let Some(h) = self
            .values
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return h.clone();
        }
        self.values
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone()
    }

    /// Adds to a counter.
    pub fn add(&self, name: &'static str, labels: &[(&str, &str)], n: u64) {
        if n > 0 {
            self.handle(name, labels).fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts samples of one protocol: accepted, and refused by reason.
    pub fn count_samples<'a>(
        &self,
        protocol: &str,
        accepted: u64,
        rejected: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        self.add(
            "ringdb_samples_accepted_total",
            &[("protocol", protocol)],
            accepted,
        );
        for (reason, n) in rejected {
            self.add(
                "ringdb_samples_rejected_total",
                &[("protocol", protocol), ("reason", reason)],
                n,
            );
        }
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, labels: &[(&str, &str)], v: f64) {
        self.handle(name, labels)
            .store(v.to_bits(), Ordering::Relaxed);
    }

    /// Renders every value in the text exposition format.
    pub fn render(&self) -> String {
        let values = self.values.read().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, kind, help) in FAMILIES {
            let mut rows = values
                .range((*name, String::new())..)
                .take_while(|((n, _), _)| n == name)
                .peekable();
            if rows.peek().is_none() {
                continue;
            }
            let type_name = if *kind == Kind::Counter {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {type_name}");
            for ((_, labels), v) in rows {
                let raw = v.load(Ordering::Relaxed);
                match kind {
                    Kind::Counter => {
                        let _ = writeln!(out, "{name}{labels} {raw}");
                    }
                    Kind::Gauge => {
                        let _ = writeln!(out, "{name}{labels} {}", f64::from_bits(raw));
                    }
                }
            }
        }
        out
    }
}

/// Logs a warning at most once per `every` for each key, saying how many
/// were suppressed in between, so one bad agent cannot flood the log.
pub struct RateLimited {
    every: Duration,
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl RateLimited {
    /// A limiter allowing one warning per key per `every`.
    pub fn new(every: Duration) -> RateLimited {
        RateLimited {
            every,
            last: Mutex::default(),
        }
    }

    /// Calls `log` with the number suppressed since the last one, or counts
    /// this one as suppressed.
    pub fn warn(&self, key: &'static str, log: impl FnOnce(u64)) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match last.get_mut(key) {
            Some((at, suppressed)) if now.duration_since(*at) < self.every => *suppressed += 1,
            Some((at, suppressed)) => {
                let n = std::mem::take(suppressed);
                *at = now;
                log(n);
            }
            None => {
                last.insert(key, (now, 0));
                log(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_groups_families_with_help() {
        let m = Metrics::default();
        m.add(
            "ringdb_samples_accepted_total",
            &[("protocol", "socket")],
            3,
        );
        m.add(
            "ringdb_samples_rejected_total",
            &[("protocol", "socket"), ("reason", "bad \"x\"")],
            1,
        );
        m.set("ringdb_series", &[], 2.0);
        let text = m.render();
        assert!(text.contains("# TYPE ringdb_samples_accepted_total counter\nringdb_samples_accepted_total{protocol=\"socket\"} 3\n"), "{text}");
        assert!(text.contains("reason=\"bad \\\"x\\\"\""), "{text}");
        assert!(text.contains("ringdb_series 2\n"), "{text}");
    }

    /// Every `"ringdb_…"` name in the sources is a registered family, so
    /// nothing is left out of /metrics.
    #[test]
    fn every_metric_name_in_the_sources_is_registered() {
        fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        let mut sources = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut sources,
        );
        let mut missing = Vec::new();
        for text in &sources {
            for (i, _) in text.match_indices("\"ringdb_") {
                let name: String = text[i + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let call = &text[i.saturating_sub(60)..i];
                let used = ["add(", "set(", "handle("].iter().any(|c| call.contains(c));
                if used && !FAMILIES.iter().any(|f| f.0 == name) {
                    missing.push(name);
                }
            }
        }
        assert!(missing.is_empty(), "unregistered metrics: {missing:?}");
    }

    #[test]
    fn rate_limit_counts_suppressed() {
        let r = RateLimited::new(Duration::from_secs(3600));
        let mut logged = Vec::new();
        for _ in 0..3 {
            r.warn("k", |n| logged.push(n));
        }
        assert_eq!(logged, [0]);
    }
}

//! Snapshots of archives in sled (DESIGN §9), the only sled user: save what
//! changed (headers and pages) on an interval, restore everything on start,
//! report and skip corrupt records.
//!
//! Keys: `h` + u16 len + series + rule → header; `p` + u16 len + series +
//! u16 len + rule + u32 page → page. Blocking calls run on the blocking pool.

use crate::model::Clock;
use crate::rrd::codec::{self, CodecError};
use crate::rrd::Archive;
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::telemetry::Metrics;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The snapshot store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// sled failed.
    #[error("snapshot store {dir}: {source}")]
    Sled {
        /// Folder of the store.
        dir: String,
        /// sled's error.
        source: sled::Error,
    },
}

/// What a restore found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// Archives loaded into the store.
    pub archives: u64,
    /// Records that could not be decoded (reported, skipped).
    pub corrupt: u64,
    /// Archives left on disk because no configured rule takes them.
    pub kept_on_disk: u64,
}

/// What one save wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct SaveReport {
    /// Archives with something to save.
    pub archives: u64,
    /// Pages written.
    pub pages: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Wall time of the save, flush included.
    pub duration: Duration,
}

/// The sled database holding every saved archive.
pub struct Snapshotter {
    db: sled::Db,
    dir: String,
    /// Held by a save and by a delete, so a save that took a series' pages
    /// before its deletion cannot write them back after it.
    busy: std::sync::Mutex<()>,
}

fn series_rule_key(tag: u8, series: &str, rule: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + series.len() + rule.len());
    key.push(tag);
    key.extend_from_slice(&(series.len() as u16).to_be_bytes());
    key.extend_from_slice(series.as_bytes());
    key.extend_from_slice(&(rule.len() as u16).to_be_bytes());
    key.extend_from_slice(rule.as_bytes());
    key
}

fn page_key(series: &str, rule: &str, page: u32) -> Vec<u8> {
    let mut key = series_rule_key(b'p', series, rule);
    key.extend_from_slice(&page.to_be_bytes());
    key
}

/// Splits a header key back into (series, rule).
fn parse_header_key(key: &[u8]) -> Option<(String, String)> {
    let rest = key.strip_prefix(b"h")?;
    let (series, rest) = take_str(rest)?;
    let (rule, rest) = take_str(rest)?;
    rest.is_empty().then_some((series, rule))
}

fn take_str(bytes: &[u8]) -> Option<(String, &[u8])> {
    let len = usize::from(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]));
    let text = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?;
    Some((text.to_owned(), &bytes[2 + len..]))
}

impl Snapshotter {
    /// Opens (or creates) the store under `dir`.
    ///
    /// # Errors
    /// sled cannot open the folder (permissions, another process holds it).
    pub fn open(dir: &Path) -> Result<Snapshotter, SnapshotError> {
        let name = dir.display().to_string();
        // The flusher calls `flush` itself after each save; sled's own
        // periodic flush would only add fsyncs in between.
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            // Snapshots are written, and read only at start: a bounded page
            // cache keeps sled from holding a second copy of the archives
            // (64 MiB made saves twice as slow; sled's default is 1 GiB).
            .cache_capacity(256 << 20)
            .open()
            .map_err(|source| SnapshotError::Sled {
                dir: name.clone(),
                source,
            })?;
        Ok(Snapshotter {
            db,
            dir: name,
            busy: std::sync::Mutex::new(()),
        })
    }

    fn err(&self, source: sled::Error) -> SnapshotError {
        SnapshotError::Sled {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Loads every saved archive whose rule still applies with the same
    /// shape; the rest stays on disk. Corrupt records are logged and skipped.
    ///
    /// # Errors
    /// sled fails to iterate.
    pub fn restore(&self, store: &Store) -> Result<RestoreReport, SnapshotError> {
        let mut report = RestoreReport::default();
        // Headers and pages share one key order (series, rule), so one pass
        // over each, merged, finds every archive's pages without a lookup.
        let mut page_entries = self.db.scan_prefix(b"p").peekable();
        for entry in self.db.scan_prefix(b"h") {
            let (key, value) = entry.map_err(|e| self.err(e))?;
            let suffix = &key[1..];
            let mut pages = Vec::new();
            while let Some(next) = page_entries.peek() {
                let page_key = match next {
                    Ok((k, _)) => &k[1..],
                    Err(_) => {
                        let e = page_entries.next().and_then(Result::err);
                        return Err(self.err(e.expect("peeked an error")));
                    }
                };
                if page_key.len() == suffix.len() + 4 && page_key.starts_with(suffix) {
                    let n =
                        u32::from_be_bytes(page_key[suffix.len()..].try_into().expect("4 bytes"));
                    if let Some(Ok((_, v))) = page_entries.next() {
                        pages.push((n, v));
                    }
                } else if page_key < suffix {
                    page_entries.next(); // a page whose header is gone
                } else {
                    break;
                }
            }
            let Some((series, rule)) = parse_header_key(&key) else {
                report.corrupt += 1;
                tracing::warn!(key = ?String::from_utf8_lossy(&key), "snapshot: unreadable header key skipped");
                continue;
            };
            let header = match codec::decode_header(&value) {
                Ok(h) => h,
                Err(e) => {
                    report.corrupt += 1;
                    tracing::warn!(series, rule, error = %e, "snapshot: corrupt header skipped");
                    continue;
                }
            };
            let (archive, errors) =
                Archive::restore(&header, pages.iter().map(|(n, v)| (*n, v.as_ref())));
            for e in &errors {
                log_codec_error(&series, &rule, e);
            }
            report.corrupt += errors.len() as u64;
            match store.restore(
                &series,
                &header.series_prefix,
                header.series_labels.clone(),
                &rule,
                archive,
            ) {
                Ok(()) => report.archives += 1,
                Err(why) => {
                    report.kept_on_disk += 1;
                    tracing::warn!(series, rule, reason = %why, "snapshot: archive kept on disk, not loaded");
                }
            }
        }
        Ok(report)
    }

    /// Saves everything changed since the last save, shard by shard, then
    /// flushes sled. A failed shard is marked dirty again for the next save.
    ///
    /// # Errors
    /// sled fails to write or flush.
    pub fn save(&self, store: &Store) -> Result<SaveReport, SnapshotError> {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let mut report = SaveReport::default();
        let mut first_error = None;
        for shard in 0..store.shard_count() {
            let dirty = store.take_dirty(shard);
            if dirty.is_empty() {
                continue;
            }
            let mut batch = sled::Batch::default();
            for d in &dirty {
                if d.dirty.replace_all {
                    for key in self
                        .db
                        .scan_prefix(series_rule_key(b'p', &d.series, &d.rule))
                        .keys()
                    {
                        batch.remove(key.map_err(|e| self.err(e))?);
                    }
                }
                if let Some(h) = &d.dirty.header {
                    batch.insert(series_rule_key(b'h', &d.series, &d.rule), h.as_slice());
                }
                for (n, bytes) in &d.dirty.pages {
                    batch.insert(page_key(&d.series, &d.rule, *n), bytes.as_slice());
                }
            }
            match self.db.apply_batch(batch) {
                Ok(()) => {
                    report.archives += dirty.len() as u64;
                    report.pages += dirty
                        .iter()
                        .map(|d| d.dirty.pages.len() as u64)
                        .sum::<u64>();
                    report.bytes += dirty.iter().map(|d| d.dirty.bytes() as u64).sum::<u64>();
                }
                Err(e) => {
                    for d in &dirty {
                        store.mark_dirty(&d.series, &d.rule);
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(self.err(e));
        }
        self.db.flush().map_err(|e| self.err(e))?;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// Removes saved archives (autoremove sweeps) from disk.
    ///
    /// # Errors
    /// sled fails.
    pub fn delete_archives(&self, archives: &[(String, String)]) -> Result<(), SnapshotError> {
        if archives.is_empty() {
            return Ok(());
        }
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = sled::Batch::default();
        for (series, rule) in archives {
            batch.remove(series_rule_key(b'h', series, rule));
            for key in self
                .db
                .scan_prefix(series_rule_key(b'p', series, rule))
                .keys()
            {
                batch.remove(key.map_err(|e| self.err(e))?);
            }
        }
        self.db.apply_batch(batch).map_err(|e| self.err(e))?;
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Removes a series from the store and every saved archive of it from
    /// disk; false when the store did not hold it (disk is cleaned anyway).
    ///
    /// # Errors
    /// sled fails.
    pub fn delete_series(&self, store: &Store, series: &str) -> Result<bool, SnapshotError> {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let held = store.remove(series);
        let mut prefix = vec![b'h'];
        prefix.extend_from_slice(&(series.len() as u16).to_be_bytes());
        prefix.extend_from_slice(series.as_bytes());
        for tag in [b'h', b'p'] {
            prefix[0] = tag;
            let keys: Vec<_> = self
                .db
                .scan_prefix(&prefix)
                .keys()
                .collect::<Result<_, _>>()
                .map_err(|e| self.err(e))?;
            let mut batch = sled::Batch::default();
            keys.into_iter().for_each(|k| batch.remove(k));
            self.db.apply_batch(batch).map_err(|e| self.err(e))?;
        }
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(held)
    }
}

fn log_codec_error(series: &str, rule: &str, e: &CodecError) {
    tracing::warn!(series, rule, error = %e, "snapshot: corrupt page skipped (left empty)");
}

/// Drops idle autoremove archives from memory, then from disk.
async fn sweep(snapshotter: &Arc<Snapshotter>, store: &Arc<Store>, metrics: &Metrics, now_ms: u64) {
    let removed = store.sweep(now_ms);
    if removed.is_empty() {
        return;
    }
    metrics.add(
        "ringdb_autoremoved_archives_total",
        &[],
        removed.len() as u64,
    );
    let s = snapshotter.clone();
    let n = removed.len();
    match tokio::task::spawn_blocking(move || s.delete_archives(&removed)).await {
        Ok(Ok(())) => tracing::info!(archives = n, "autoremove: idle archives removed"),
        Ok(Err(e)) => tracing::error!(error = %e, "autoremove: archives left on disk"),
        Err(e) => tracing::error!(error = %e, "autoremove task failed"),
    }
}

/// Saves on blocking threads and records the outcome in self-metrics.
pub async fn save_now(
    snapshotter: &Arc<Snapshotter>,
    store: &Arc<Store>,
    metrics: &Metrics,
) -> bool {
    let (s, st) = (snapshotter.clone(), store.clone());
    let result = tokio::task::spawn_blocking(move || s.save(&st)).await;
    match result {
        Ok(Ok(report)) => {
            metrics.add("ringdb_snapshots_total", &[], 1);
            metrics.set(
                "ringdb_snapshot_duration_seconds",
                &[],
                report.duration.as_secs_f64(),
            );
            metrics.set("ringdb_snapshot_bytes", &[], report.bytes as f64);
            metrics.set("ringdb_snapshot_pages", &[], report.pages as f64);
            metrics.add("ringdb_snapshot_bytes_total", &[], report.bytes);
            tracing::debug!(
                archives = report.archives,
                pages = report.pages,
                bytes = report.bytes,
                ms = report.duration.as_millis() as u64,
                "snapshot saved"
            );
            true
        }
        Ok(Err(e)) => {
            metrics.add("ringdb_snapshot_errors_total", &[], 1);
            tracing::error!(error = %e, "snapshot failed; changes stay dirty for the next one");
            false
        }
        Err(e) => {
            metrics.add("ringdb_snapshot_errors_total", &[], 1);
            tracing::error!(error = %e, "snapshot task failed");
            false
        }
    }
}

/// Every `interval` until shutdown: sweeps idle `autoremove` archives out
/// of memory and disk, then saves what changed. The final snapshot is the
/// caller's, after the listeners have drained.
pub async fn run_flusher(
    snapshotter: Arc<Snapshotter>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    clock: Clock,
    interval: Duration,
    shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.token().cancelled() => break,
            _ = ticker.tick() => {
                sweep(&snapshotter, &store, &metrics, clock()).await;
                save_now(&snapshotter, &store, &metrics).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let key = series_rule_key(b'h', "traffic-a-b", "rule_1");
        assert_eq!(
            parse_header_key(&key),
            Some(("traffic-a-b".into(), "rule_1".into()))
        );
        assert_eq!(parse_header_key(b"h\x00"), None);
        assert!(page_key("s", "r", 1).starts_with(&series_rule_key(b'p', "s", "r")));
    }
}

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
use crate::store::{DirtyArchive, Store};
use crate::telemetry::Metrics;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Threads a save writes with: sled runs plain inserts concurrently, and
/// per-key work inside sled is what a save costs.
const SAVE_THREADS: usize = 2;

/// sled's page cache (its default is 1 GiB); see [`Snapshotter::open`].
const SLED_CACHE_BYTES: u64 = 16 << 20;

/// Archives with several records (new, slid or migrated ones) go to sled
/// in batches of at most this many. sled keeps memory in proportion to a
/// batch long after applying it: one batch per store shard (1,500 new
/// archives each for 100K label-set series) left the daemon 3.5 KB RSS a
/// series above its store, batches of 64 leave 0.8 KB, and the first save
/// of 100K archives is no slower (1.75 s, against 2.13 s).
const BATCH_ARCHIVES: usize = 64;

/// Threads a restore decodes with (besides the one reading sled): decoding
/// and filling the store cost about twice what reading sled does.
const RESTORE_THREADS: usize = 2;

/// Archives handed to a restore thread at once, and chunks read ahead:
/// enough to keep the threads busy, a bounded copy of what sled holds.
const RESTORE_CHUNK_ARCHIVES: usize = 1024;
const RESTORE_QUEUE_CHUNKS: usize = 8;

impl SaveReport {
    fn add(&mut self, d: &DirtyArchive) {
        self.archives += 1;
        self.pages += d.dirty.pages.len() as u64;
        self.bytes += d.dirty.bytes() as u64;
    }
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
fn parse_header_key(key: &[u8]) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(b"h")?;
    let (series, rest) = take_str(rest)?;
    let (rule, rest) = take_str(rest)?;
    rest.is_empty().then_some((series, rule))
}

fn take_str(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let len = usize::from(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]));
    let text = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?;
    Some((text, &bytes[2 + len..]))
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
            // Snapshots are written, and read only at start: a small page
            // cache keeps sled from holding a second copy of the archives.
            // Measured (RSS per series after two saves; one new sample in
            // each of 100K archives): 256 MiB 1,939 B and 0.34 s,
            // 16 MiB 1,553 B and 0.50 s, 8 MiB 1,440 B and 0.67 s.
            .cache_capacity(SLED_CACHE_BYTES)
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
    /// One thread reads sled in key order; [`RESTORE_THREADS`] decode and
    /// fill the store.
    ///
    /// # Errors
    /// sled fails to iterate.
    pub fn restore(&self, store: &Store) -> Result<RestoreReport, SnapshotError> {
        let (chunks, receiver) = std::sync::mpsc::sync_channel(RESTORE_QUEUE_CHUNKS);
        let receiver = std::sync::Mutex::new(receiver);
        let work = || {
            let mut report = RestoreReport::default();
            loop {
                let next = receiver.lock().unwrap_or_else(|e| e.into_inner()).recv();
                let Ok(chunk) = next else { return report };
                for records in chunk {
                    restore_archive(store, records, &mut report);
                }
            }
        };
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..RESTORE_THREADS).map(|_| scope.spawn(work)).collect();
            let read = self.read_records(|chunk| chunks.send(chunk).is_ok());
            drop(chunks);
            let mut report = RestoreReport::default();
            for worker in workers {
                let part = worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                report.archives += part.archives;
                report.corrupt += part.corrupt;
                report.kept_on_disk += part.kept_on_disk;
            }
            read.map(|()| report)
        })
    }

    /// Reads every header with its pages and hands them to `send` in
    /// chunks, until `send` returns false. Headers and pages share one key
    /// order (series, rule), so one pass over each, merged, finds every
    /// archive's pages without a lookup.
    fn read_records(
        &self,
        mut send: impl FnMut(Vec<Records>) -> bool,
    ) -> Result<(), SnapshotError> {
        let mut page_entries = self.db.scan_prefix(b"p").peekable();
        let mut chunk = Vec::with_capacity(RESTORE_CHUNK_ARCHIVES);
        for entry in self.db.scan_prefix(b"h") {
            let (key, header) = entry.map_err(|e| self.err(e))?;
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
            chunk.push(Records { key, header, pages });
            if chunk.len() == RESTORE_CHUNK_ARCHIVES {
                let full =
                    std::mem::replace(&mut chunk, Vec::with_capacity(RESTORE_CHUNK_ARCHIVES));
                if !send(full) {
                    return Ok(());
                }
            }
        }
        if !chunk.is_empty() {
            send(chunk);
        }
        Ok(())
    }

    /// Saves everything changed since the last save, shard by shard on
    /// [`SAVE_THREADS`] threads, then flushes sled. An archive whose records
    /// failed is marked dirty again for the next save.
    ///
    /// # Errors
    /// sled fails to write or flush.
    pub fn save(&self, store: &Store) -> Result<SaveReport, SnapshotError> {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let next_shard = AtomicUsize::new(0);
        let work = || self.save_shards(store, &next_shard);
        let results: Vec<_> = std::thread::scope(|scope| {
            let helpers: Vec<_> = (1..SAVE_THREADS).map(|_| scope.spawn(work)).collect();
            let mine = work();
            helpers
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .chain([mine])
                .collect()
        });
        let mut report = SaveReport::default();
        let mut first_error = None;
        for (part, error) in results {
            report.archives += part.archives;
            report.pages += part.pages;
            report.bytes += part.bytes;
            first_error = first_error.or(error);
        }
        if let Some(e) = first_error {
            return Err(self.err(e));
        }
        self.db.flush().map_err(|e| self.err(e))?;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// Takes shards from `next_shard` until none is left and writes their
    /// dirty archives; returns what was written and the first error.
    fn save_shards(
        &self,
        store: &Store,
        next_shard: &AtomicUsize,
    ) -> (SaveReport, Option<sled::Error>) {
        let mut report = SaveReport::default();
        let mut first_error = None;
        loop {
            let shard = next_shard.fetch_add(1, Ordering::Relaxed);
            if shard >= store.shard_count() {
                return (report, first_error);
            }
            let dirty = store.take_dirty(shard);
            // Archives with several records go in batches (sled serialises
            // batches and each costs a log reservation; see BATCH_ARCHIVES).
            let mut batched = Vec::new();
            let mut batch = sled::Batch::default();
            for d in &dirty {
                match self.save_archive(d, &mut batch) {
                    Ok(true) => report.add(d),
                    Ok(false) => batched.push(d),
                    Err(e) => {
                        store.mark_dirty(&d.series, &d.rule.name);
                        first_error.get_or_insert(e);
                    }
                }
                if batched.len() == BATCH_ARCHIVES {
                    let full = std::mem::take(&mut batch);
                    self.apply_batch(store, full, &mut batched, &mut report, &mut first_error);
                }
            }
            self.apply_batch(store, batch, &mut batched, &mut report, &mut first_error);
        }
    }

    /// Applies `batch`, holding the records of the archives `batched`
    /// (emptied): counted in `report` when written, else marked dirty again.
    fn apply_batch(
        &self,
        store: &Store,
        batch: sled::Batch,
        batched: &mut Vec<&DirtyArchive>,
        report: &mut SaveReport,
        first_error: &mut Option<sled::Error>,
    ) {
        if batched.is_empty() {
            return;
        }
        match self.db.apply_batch(batch) {
            Ok(()) => batched.iter().for_each(|d| report.add(d)),
            Err(e) => {
                batched
                    .iter()
                    .for_each(|d| store.mark_dirty(&d.series, &d.rule.name));
                first_error.get_or_insert(e);
            }
        }
        batched.clear();
    }

    /// Writes one archive's records. A single record (the common case: one
    /// page with the moved head) is a plain insert, which sled runs
    /// concurrently: true when written. Several records go into `batch`
    /// (false), applied at once, so a crash never keeps a slid head
    /// without the pages the slide emptied, nor half a migration.
    fn save_archive(&self, d: &DirtyArchive, batch: &mut sled::Batch) -> Result<bool, sled::Error> {
        let (series, rule) = (&*d.series, d.rule.name.as_str());
        if let (None, [(n, bytes)], false) = (
            &d.dirty.header,
            d.dirty.pages.as_slice(),
            d.dirty.replace_all,
        ) {
            self.db
                .insert(page_key(series, rule, *n), bytes.as_slice())?;
            return Ok(true);
        }
        if d.dirty.replace_all {
            for key in self
                .db
                .scan_prefix(series_rule_key(b'p', series, rule))
                .keys()
            {
                batch.remove(key?);
            }
        }
        if let Some(h) = &d.dirty.header {
            batch.insert(series_rule_key(b'h', series, rule), h.as_slice());
        }
        for (n, bytes) in &d.dirty.pages {
            batch.insert(page_key(series, rule, *n), bytes.as_slice());
        }
        Ok(false)
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

/// One saved archive's records, as read.
struct Records {
    key: sled::IVec,
    header: sled::IVec,
    pages: Vec<(u32, sled::IVec)>,
}

/// Decodes one archive and puts it in the store, counting the outcome.
fn restore_archive(store: &Store, records: Records, report: &mut RestoreReport) {
    let Some((series, rule)) = parse_header_key(&records.key) else {
        report.corrupt += 1;
        tracing::warn!(key = ?String::from_utf8_lossy(&records.key), "snapshot: unreadable header key skipped");
        return;
    };
    let header = match codec::decode_header(&records.header) {
        Ok(h) => h,
        Err(e) => {
            report.corrupt += 1;
            tracing::warn!(series, rule, error = %e, "snapshot: corrupt header skipped");
            return;
        }
    };
    let pages = records.pages.iter().map(|(n, v)| (*n, v.as_ref()));
    let (archive, errors) = Archive::restore(&header, pages);
    for e in &errors {
        log_codec_error(series, rule, e);
    }
    report.corrupt += errors.len() as u64;
    match store.restore(
        series,
        &header.series_prefix,
        header.series_labels,
        rule,
        archive,
    ) {
        Ok(()) => report.archives += 1,
        Err(why) => {
            report.kept_on_disk += 1;
            tracing::warn!(series, rule, reason = %why, "snapshot: archive kept on disk, not loaded");
        }
    }
}

/// Restores one archive from its raw records, as [`Snapshotter::restore`]
/// does for each header it reads (for the fuzz entry points: the whole
/// path from sled's bytes to the store, without sled on disk).
pub(crate) fn restore_record(
    store: &Store,
    series: &[u8],
    rule: &[u8],
    header: &[u8],
    pages: &[(u32, &[u8])],
) -> RestoreReport {
    let mut key = vec![b'h'];
    for part in [series, rule] {
        key.extend_from_slice(&(part.len() as u16).to_be_bytes());
        key.extend_from_slice(part);
    }
    let records = Records {
        key: key.into(),
        header: header.into(),
        pages: pages.iter().map(|(n, v)| (*n, (*v).into())).collect(),
    };
    let mut report = RestoreReport::default();
    restore_archive(store, records, &mut report);
    report
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
        assert_eq!(parse_header_key(&key), Some(("traffic-a-b", "rule_1")));
        assert_eq!(parse_header_key(b"h\x00"), None);
        assert!(page_key("s", "r", 1).starts_with(&series_rule_key(b'p', "s", "r")));
    }
}

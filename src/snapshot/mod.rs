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
use crate::store::{DirtyArchive, Orphan, Store};
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
    /// Series whose saved archives of rules that no longer apply moved
    /// into rules that newly apply (see [`Store::adopt_orphans`]).
    pub moved_series: u64,
    /// Archives made for those rules.
    pub moved_archives: u64,
}

/// What one save wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct SaveReport {
    /// Archives with something to save.
    pub archives: u64,
    /// Pages written.
    pub pages: u64,
    /// Bytes written: keys and values of the records inserted.
    pub bytes: u64,
    /// Records removed (old pages of migrated archives, records of rules
    /// whose history moved).
    pub removed: u64,
    /// Wall time of the save, flush included.
    pub duration: Duration,
    /// Stopped by shutdown or its deadline before everything was written:
    /// what was left stays dirty in the store.
    pub stopped: bool,
}

/// When a save stops before it has written everything, and who hears of
/// each write as it is applied.
#[derive(Clone, Copy)]
pub struct SaveControl<'a> {
    /// Checked before each write: true stops the save (shutdown began).
    pub stop: &'a (dyn Fn() -> bool + Sync),
    /// No write starts after this instant.
    pub deadline: Option<Instant>,
    /// Called with the bytes of each write once it is applied, so that
    /// `ringdb_snapshot_bytes_total` grows while a long save runs.
    pub written: &'a (dyn Fn(u64) + Sync),
}

impl SaveControl<'_> {
    /// A save that runs to the end and reports nothing on the way.
    pub const UNBOUNDED: SaveControl<'static> = SaveControl {
        stop: &|| false,
        deadline: None,
        written: &|_| {},
    };

    fn should_stop(&self) -> bool {
        (self.stop)() || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// Threads a save writes with: sled runs plain inserts concurrently, and
/// per-key work inside sled is what a save costs.
const SAVE_THREADS: usize = 2;

/// sled's page cache (its default is 1 GiB); see [`Snapshotter::open`].
const SLED_CACHE_BYTES: u64 = 16 << 20;

/// Archives with several records (new, slid or migrated ones) go to sled
/// in batches of at most this many archives (a series' archives are never
/// split between batches: records of rules whose history moved go with
/// the archives that took it) and about [`BATCH_RECORDS`] records. sled keeps memory in proportion to a
/// batch long after applying it: one batch per store shard (1,500 new
/// archives each for 100K label-set series) left the daemon 3.5 KB RSS a
/// series above its store, batches of 64 leave 0.8 KB, and the first save
/// of 100K archives is no slower (1.75 s, against 2.13 s).
const BATCH_ARCHIVES: usize = 64;

/// Records (inserts and removals) after which a batch is applied at the
/// next series: a migrated archive whose ring is full writes every page.
const BATCH_RECORDS: usize = 4096;

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
        self.bytes += written_bytes(d);
    }
}

/// Bytes of the records written for `d`, keys included (what sled stores).
fn written_bytes(d: &DirtyArchive) -> u64 {
    let key = 5 + d.series.len() + d.rule.name.len();
    let header = d.dirty.header.as_ref().map_or(0, |h| key + h.len());
    let pages: usize = d.dirty.pages.iter().map(|p| key + 4 + p.1.len()).sum();
    (header + pages) as u64
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
            let mut orphans = Vec::new();
            loop {
                let next = receiver.lock().unwrap_or_else(|e| e.into_inner()).recv();
                let Ok(chunk) = next else {
                    return (report, orphans);
                };
                for records in chunk {
                    restore_archive(store, records, &mut report, &mut orphans);
                }
            }
        };
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..RESTORE_THREADS).map(|_| scope.spawn(work)).collect();
            let read = self.read_records(|chunk| chunks.send(chunk).is_ok());
            drop(chunks);
            let mut report = RestoreReport::default();
            let mut orphans = Vec::new();
            for worker in workers {
                let (part, found) = worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                report.archives += part.archives;
                report.corrupt += part.corrupt;
                report.kept_on_disk += part.kept_on_disk;
                orphans.extend(found);
            }
            // After every archive is in place: a rule that newly applies
            // and was saved already takes nothing.
            let adopted = store.adopt_orphans(orphans);
            report.kept_on_disk += adopted.unloaded;
            report.moved_series = adopted.moved_series;
            report.moved_archives = adopted.moved_archives;
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
        self.save_until(store, SaveControl::UNBOUNDED)
    }

    /// [`Snapshotter::save`] that stops before the next write once
    /// `control` says so: archives taken and not written are put back
    /// dirty ([`Store::return_dirty`]), shards not reached stay dirty, and
    /// the report says `stopped`. What was written is flushed.
    ///
    /// # Errors
    /// sled fails to write or flush.
    pub fn save_until(
        &self,
        store: &Store,
        control: SaveControl<'_>,
    ) -> Result<SaveReport, SnapshotError> {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let next_shard = AtomicUsize::new(0);
        let work = || self.save_shards(store, &next_shard, control);
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
            report.removed += part.removed;
            report.stopped |= part.stopped;
            first_error = first_error.or(error);
        }
        if let Some(e) = first_error {
            return Err(self.err(e));
        }
        self.db.flush().map_err(|e| self.err(e))?;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// Takes shards from `next_shard` until none is left (or `control`
    /// stops it) and writes their dirty archives; returns what was written
    /// and the first error.
    fn save_shards(
        &self,
        store: &Store,
        next_shard: &AtomicUsize,
        control: SaveControl<'_>,
    ) -> (SaveReport, Option<sled::Error>) {
        let mut report = SaveReport::default();
        let mut first_error = None;
        loop {
            if control.should_stop() {
                report.stopped = true;
                return (report, first_error);
            }
            let shard = next_shard.fetch_add(1, Ordering::Relaxed);
            if shard >= store.shard_count() {
                return (report, first_error);
            }
            let dirty = store.take_dirty(shard);
            // Archives with several records go in batches (sled serialises
            // batches and each costs a log reservation; see BATCH_ARCHIVES).
            let mut pending = Pending::default();
            for (i, d) in dirty.iter().enumerate() {
                let boundary = pending.batched.last().is_none_or(|l| l.series != d.series);
                if boundary && pending.full() {
                    self.apply_batch(store, &mut pending, &mut report, &mut first_error, control);
                }
                if boundary && control.should_stop() {
                    self.apply_batch(store, &mut pending, &mut report, &mut first_error, control);
                    dirty[i..].iter().for_each(|d| store.return_dirty(d));
                    report.stopped = true;
                    return (report, first_error);
                }
                match self.save_archive(d, &mut pending) {
                    Ok(true) => {
                        report.add(d);
                        (control.written)(written_bytes(d));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        store.mark_dirty(&d.series, &d.rule.name);
                        store.return_dirty(d);
                        first_error.get_or_insert(e);
                    }
                }
            }
            self.apply_batch(store, &mut pending, &mut report, &mut first_error, control);
        }
    }

    /// Applies the pending batch, holding the records of the archives it
    /// lists (emptied): counted in `report` when written, else marked
    /// dirty again.
    fn apply_batch<'d>(
        &self,
        store: &Store,
        pending: &mut Pending<'d>,
        report: &mut SaveReport,
        first_error: &mut Option<sled::Error>,
        control: SaveControl<'_>,
    ) {
        let Pending {
            batch,
            batched,
            removed,
            ..
        } = std::mem::take(pending);
        if batched.is_empty() {
            return;
        }
        match self.db.apply_batch(batch) {
            Ok(()) => {
                let bytes: u64 = batched.iter().map(|d| written_bytes(d)).sum();
                batched.iter().for_each(|d| report.add(d));
                report.removed += removed;
                (control.written)(bytes);
            }
            Err(e) => {
                batched.iter().for_each(|d| {
                    store.mark_dirty(&d.series, &d.rule.name);
                    store.return_dirty(d);
                });
                first_error.get_or_insert(e);
            }
        }
    }

    /// Writes one archive's records. A single record (the common case: one
    /// page with the moved head) is a plain insert, which sled runs
    /// concurrently: true when written. Several records go into the
    /// pending batch (false), applied at once, so a crash never keeps a
    /// slid head without the pages the slide emptied, nor half a migration:
    /// a migrated archive's header, its non-empty pages, the removal of
    /// its shape's older pages and of the records of rules whose history
    /// it took are one write.
    fn save_archive<'d>(
        &self,
        d: &'d DirtyArchive,
        pending: &mut Pending<'d>,
    ) -> Result<bool, sled::Error> {
        let (series, rule) = (&*d.series, d.rule.name.as_str());
        if let (None, [(n, bytes)], false, true) = (
            &d.dirty.header,
            d.dirty.pages.as_slice(),
            d.dirty.replace_all,
            d.retire.is_empty(),
        ) {
            self.db
                .insert(page_key(series, rule, *n), bytes.as_slice())?;
            return Ok(true);
        }
        let batch = &mut pending.batch;
        let remove_pages = |batch: &mut sled::Batch, rule: &str| -> Result<u64, sled::Error> {
            let mut removed = 0;
            for key in self
                .db
                .scan_prefix(series_rule_key(b'p', series, rule))
                .keys()
            {
                batch.remove(key?);
                removed += 1;
            }
            Ok(removed)
        };
        let mut removed = 0;
        if d.dirty.replace_all {
            removed += remove_pages(batch, rule)?;
        }
        for old in &d.retire {
            removed += remove_pages(batch, old)?;
            batch.remove(series_rule_key(b'h', series, old));
            removed += 1;
        }
        if let Some(h) = &d.dirty.header {
            batch.insert(series_rule_key(b'h', series, rule), h.as_slice());
        }
        for (n, bytes) in &d.dirty.pages {
            batch.insert(page_key(series, rule, *n), bytes.as_slice());
        }
        pending.records += removed as usize + d.dirty.pages.len() + 1;
        pending.removed += removed;
        pending.batched.push(d);
        Ok(false)
    }

    /// Bytes the store takes on disk, if sled can tell.
    pub fn size_on_disk(&self) -> Option<u64> {
        self.db.size_on_disk().ok()
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

/// A batch being filled and the archives whose records it holds.
#[derive(Default)]
struct Pending<'d> {
    batch: sled::Batch,
    batched: Vec<&'d DirtyArchive>,
    /// Inserts and removals in `batch`.
    records: usize,
    /// Removals in `batch`.
    removed: u64,
}

impl Pending<'_> {
    fn full(&self) -> bool {
        self.batched.len() >= BATCH_ARCHIVES || self.records >= BATCH_RECORDS
    }
}

/// One saved archive's records, as read.
struct Records {
    key: sled::IVec,
    header: sled::IVec,
    pages: Vec<(u32, sled::IVec)>,
}

/// Decodes one archive and puts it in the store, counting the outcome.
fn restore_archive(
    store: &Store,
    records: Records,
    report: &mut RestoreReport,
    orphans: &mut Vec<Orphan>,
) {
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
    if !store.rule_applies(&header.series_prefix, rule) {
        orphans.push(Orphan {
            key: series.to_owned(),
            prefix: header.series_prefix,
            labels: header.series_labels,
            rule: rule.to_owned(),
            archive,
        });
        return;
    }
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

/// Saves on blocking threads and records the outcome in self-metrics;
/// the report, or `None` when the save failed. The save stops before its
/// next write once `stop` is triggered (the flusher's saves, so that
/// shutdown is not held by one) or `deadline` has passed (the final
/// snapshot); what it did not write stays dirty.
pub async fn save_now(
    snapshotter: &Arc<Snapshotter>,
    store: &Arc<Store>,
    metrics: &Arc<Metrics>,
    stop: Option<Shutdown>,
    deadline: Option<Duration>,
) -> Option<SaveReport> {
    let (s, st, m) = (snapshotter.clone(), store.clone(), metrics.clone());
    let result = tokio::task::spawn_blocking(move || {
        let stop = move || stop.as_ref().is_some_and(Shutdown::is_triggered);
        let written = |bytes| m.add("ringdb_snapshot_bytes_total", &[], bytes);
        let control = SaveControl {
            stop: &stop,
            deadline: deadline.map(|d| Instant::now() + d),
            written: &written,
        };
        let report = s.save_until(&st, control);
        (report, s.size_on_disk())
    })
    .await;
    match result {
        Ok((Ok(report), disk)) => {
            if report.stopped {
                metrics.add("ringdb_snapshots_stopped_total", &[], 1);
            } else {
                metrics.add("ringdb_snapshots_total", &[], 1);
            }
            metrics.set(
                "ringdb_snapshot_duration_seconds",
                &[],
                report.duration.as_secs_f64(),
            );
            metrics.set("ringdb_snapshot_bytes", &[], report.bytes as f64);
            metrics.set("ringdb_snapshot_pages", &[], report.pages as f64);
            metrics.add("ringdb_snapshot_removed_records_total", &[], report.removed);
            if let Some(disk) = disk {
                metrics.set("ringdb_snapshot_disk_bytes", &[], disk as f64);
            }
            tracing::debug!(
                archives = report.archives,
                pages = report.pages,
                bytes = report.bytes,
                removed = report.removed,
                stopped = report.stopped,
                ms = report.duration.as_millis() as u64,
                "snapshot saved"
            );
            Some(report)
        }
        Ok((Err(e), _)) => {
            metrics.add("ringdb_snapshot_errors_total", &[], 1);
            tracing::error!(error = %e, "snapshot failed; changes stay dirty for the next one");
            None
        }
        Err(e) => {
            metrics.add("ringdb_snapshot_errors_total", &[], 1);
            tracing::error!(error = %e, "snapshot task failed");
            None
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
                save_now(&snapshotter, &store, &metrics, Some(shutdown.clone()), None).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Sample, Value};
    use crate::rrd::{Consolidation, Reading};
    use crate::rules::{Rule, RuleSet};
    use crate::store::StoreLimits;

    const T0: u64 = 1_699_999_200;

    fn rule(name: &str, prefix: &str, tf: u64, limit: u32) -> Rule {
        let mut r = Rule::for_test(name, prefix, Consolidation::Sum);
        r.shape.timeframe_secs = tf;
        r.shape.limit = limit;
        r
    }

    fn store(rules: Vec<Rule>) -> Store {
        Store::new(
            RuleSet::new(rules),
            StoreLimits {
                max_future_ms: u64::MAX / 2,
                max_series: 1_000_000,
            },
        )
    }

    /// `n` series `p-i` of 20 samples, one every 10 s, valued 1.
    fn fill(s: &Store, prefix: &str, n: usize) {
        for i in 0..n {
            for k in 0..20u64 {
                let t = (T0 + k * 10) * 1000;
                let sample = Sample {
                    timestamp_ms: t,
                    value: Value::Uint(1),
                };
                s.write(&format!("{prefix}-{i}"), prefix, sample, t)
                    .unwrap();
            }
        }
    }

    /// Every (series, rule, bucket secs, value) held, sorted.
    fn held(s: &Store) -> Vec<(String, String, u64, String)> {
        let mut out = Vec::new();
        s.scan(|key, series| {
            for a in series.archives() {
                for (t, r) in a.archive.filled() {
                    let v = match r {
                        Reading::Uint(v) => v.to_string(),
                        r => format!("{r:?}"),
                    };
                    out.push((key.to_owned(), a.rule.name.clone(), t, v));
                }
            }
            true
        });
        out.sort();
        out
    }

    /// Records on disk by kind: (headers, pages).
    fn records(snap: &Snapshotter) -> (usize, usize) {
        (
            snap.db.scan_prefix(b"h").count(),
            snap.db.scan_prefix(b"p").count(),
        )
    }

    /// Issue 15: a rule change on 8,640-bucket rings holding 20 buckets
    /// wrote all 135 pages of every migrated archive (378 MB for 10K
    /// series); now the header and the non-empty page, and the old page
    /// goes.
    #[test]
    fn a_changed_rule_saves_only_the_pages_migrated_archives_hold() {
        let dir = tempfile::tempdir().unwrap();
        let snap = Snapshotter::open(dir.path()).unwrap();
        let s = store(vec![rule("any", "*", 10, 8640)]);
        fill(&s, "x", 50);
        snap.save(&s).unwrap();
        assert_eq!(records(&snap), (50, 50));
        s.set_rules(RuleSet::new(vec![rule("any", "*", 20, 8640)]));
        let report = snap.save(&s).unwrap();
        assert_eq!(report.archives, 50);
        assert!(report.pages <= 50, "pages written: {}", report.pages);
        assert_eq!(report.removed, 50, "the old pages");
        assert_eq!(records(&snap), (50, 50));
        let back = store(vec![rule("any", "*", 20, 8640)]);
        snap.restore(&back).unwrap();
        assert_eq!(held(&back), held(&s));
        assert_eq!(held(&back).len(), 50 * 10);
    }

    /// A save stopped part-way (shutdown) puts back what it took: the next
    /// save writes it, and a restore finds everything.
    #[test]
    fn a_stopped_save_leaves_the_rest_for_the_next() {
        struct Case {
            name: &'static str,
            stop_after_checks: usize,
        }
        let cases = [
            Case {
                name: "before the first write",
                stop_after_checks: 0,
            },
            Case {
                name: "in the first shard",
                stop_after_checks: 3,
            },
            Case {
                name: "after a few shards",
                stop_after_checks: 60,
            },
        ];
        for case in cases {
            let dir = tempfile::tempdir().unwrap();
            let snap = Snapshotter::open(dir.path()).unwrap();
            let s = store(vec![rule("any", "*", 10, 8640)]);
            fill(&s, "x", 300);
            snap.save(&s).unwrap();
            s.set_rules(RuleSet::new(vec![rule("any", "*", 20, 8640)]));
            let checks = AtomicUsize::new(0);
            let stop = || checks.fetch_add(1, Ordering::Relaxed) >= case.stop_after_checks;
            let written = AtomicUsize::new(0);
            let count = |b: u64| {
                written.fetch_add(b as usize, Ordering::Relaxed);
            };
            let control = SaveControl {
                stop: &stop,
                deadline: None,
                written: &count,
            };
            let first = snap.save_until(&s, control).unwrap();
            assert!(first.stopped, "{}", case.name);
            assert!(first.archives < 300, "{}: {}", case.name, first.archives);
            assert_eq!(
                written.load(Ordering::Relaxed) as u64,
                first.bytes,
                "{}",
                case.name
            );
            assert_eq!(s.dirty_series(), 300 - first.archives, "{}", case.name);
            let rest = snap.save(&s).unwrap();
            assert_eq!(first.archives + rest.archives, 300, "{}", case.name);
            assert_eq!(s.dirty_series(), 0, "{}", case.name);
            let back = store(vec![rule("any", "*", 20, 8640)]);
            snap.restore(&back).unwrap();
            assert_eq!(held(&back), held(&s), "{}", case.name);
        }
    }

    /// Issue 15: a rule added for a prefix hid its series' history. On
    /// reload it moves into the new rule; the `"*"` records go in the same
    /// write as the new archive's, so a restart finds it once.
    #[test]
    fn history_moved_to_a_newly_applying_rule_is_saved_and_the_old_records_go() {
        let dir = tempfile::tempdir().unwrap();
        let snap = Snapshotter::open(dir.path()).unwrap();
        let star = vec![rule("any", "*", 10, 8640), rule("any_1m", "*", 60, 100)];
        let s = store(star.clone());
        fill(&s, "x", 20);
        fill(&s, "y", 5);
        snap.save(&s).unwrap();
        assert_eq!(records(&snap).0, 50);
        let mut next = star.clone();
        next.push(rule("x_30s", "x", 30, 100));
        let change = s.set_rules(RuleSet::new(next.clone()));
        assert_eq!((change.moved_series, change.moved_archives), (20, 20));
        let report = snap.save(&s).unwrap();
        assert_eq!(report.archives, 20);
        assert_eq!(records(&snap).0, 20 + 10, "x: x_30s; y: any, any_1m");
        let back = store(next.clone());
        let restored = snap.restore(&back).unwrap();
        assert_eq!((restored.kept_on_disk, restored.moved_series), (0, 0));
        assert_eq!(held(&back), held(&s));
        let x: Vec<_> = held(&back).into_iter().filter(|h| h.0 == "x-3").collect();
        let want: Vec<_> = (0..7)
            .map(|k| {
                (
                    "x-3".to_owned(),
                    "x_30s".to_owned(),
                    T0 + k * 30,
                    if k < 6 { "3" } else { "2" }.to_owned(),
                )
            })
            .collect();
        assert_eq!(x, want);
    }

    /// The same with the changed file read on restart: the orphans are
    /// adopted after the restore, and the next save removes them.
    #[test]
    fn a_restart_with_a_rule_added_for_a_prefix_moves_the_saved_history() {
        let dir = tempfile::tempdir().unwrap();
        let snap = Snapshotter::open(dir.path()).unwrap();
        let star = vec![rule("any", "*", 10, 8640)];
        let s = store(star.clone());
        fill(&s, "x", 20);
        snap.save(&s).unwrap();
        let mut next = star.clone();
        next.push(rule("x_30s", "x", 30, 100));
        let back = store(next.clone());
        let restored = snap.restore(&back).unwrap();
        assert_eq!(
            (
                restored.archives,
                restored.moved_series,
                restored.moved_archives,
                restored.kept_on_disk
            ),
            (0, 20, 20, 0)
        );
        assert_eq!(held(&back).len(), 20 * 7);
        snap.save(&back).unwrap();
        assert_eq!(records(&snap), (20, 20), "the \"*\" records are gone");
        let again = store(next);
        let restored = snap.restore(&again).unwrap();
        assert_eq!((restored.archives, restored.moved_series), (20, 0));
        assert_eq!(held(&again), held(&back));
    }

    #[test]
    fn keys_round_trip() {
        let key = series_rule_key(b'h', "traffic-a-b", "rule_1");
        assert_eq!(parse_header_key(&key), Some(("traffic-a-b", "rule_1")));
        assert_eq!(parse_header_key(b"h\x00"), None);
        assert!(page_key("s", "r", 1).starts_with(&series_rule_key(b'p', "s", "r")));
    }
}

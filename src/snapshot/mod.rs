//! Snapshots of archives in sled (DESIGN §9), the only sled user: save what
//! changed (headers and pages) on an interval, restore everything on start,
//! report and skip corrupt or missing records, retry a failed save until
//! one succeeds, and salvage a damaged store ([`recover`]).
//!
//! Keys: see [`key`] (format 3, u32 lengths; formats 1 and 2 are upgraded
//! on open). Beside sled's folder, a [`manifest`] holds the archive count
//! of the last save, so a restore notices archives sled no longer gives
//! back. Blocking calls run on the blocking pool.
//!
//! sled 0.34 keeps the first I/O error it meets as a global error and
//! fails every later call with it until the store is reopened
//! (`Config::set_global_error`, reset only in `PageCache::start`). So a
//! failed save drops the sled handle, marks everything it had taken dirty
//! again (what the poisoned instance held in memory may never reach the
//! disk), and the next save reopens the store.

pub mod key;
pub mod manifest;
pub mod recover;
mod salvage;

use crate::model::Clock;
use crate::rrd::codec::{self, CodecError};
use crate::rrd::Archive;
use crate::shutdown::Shutdown;
use crate::store::{DirtyArchive, Orphan, Store};
use crate::telemetry::Metrics;
use key::{HEADER, LEGACY_HEADER, LEGACY_PAGE, PAGE};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The snapshot store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// sled refused to open the store (damaged files, permissions, another
    /// process holds it).
    #[error("snapshot store {dir}: cannot open: {source}")]
    Open {
        /// Folder of the store.
        dir: String,
        /// sled's error.
        source: sled::Error,
    },
    /// Another process (a running ringdb) holds the store.
    #[error("snapshot store {dir}: in use by another process (is ringdb already running on this data_dir?)")]
    Locked {
        /// Folder of the store.
        dir: String,
    },
    /// A damaged record in sled's log with sound records after it: sled
    /// would stop reading there and overwrite the rest (see [`salvage`]).
    #[error(
        "snapshot store {dir}: damaged record at byte {offset} of its log, sound records after it \
         (sled would drop them and overwrite them)"
    )]
    Damaged {
        /// Folder of the store.
        dir: String,
        /// Byte offset of the damaged record in `db`.
        offset: usize,
    },
    /// sled's log file could not be checked before opening.
    #[error("snapshot store {dir}: cannot check its log: {source}")]
    Check {
        /// Folder of the store.
        dir: String,
        /// The read error.
        source: std::io::Error,
    },
    /// sled failed while reading or writing an open store.
    #[error("snapshot store {dir}: {source}")]
    Sled {
        /// Folder of the store.
        dir: String,
        /// sled's error.
        source: sled::Error,
    },
    /// The manifest beside the store could not be written.
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
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
    /// Archives the manifest counted that sled did not give back.
    pub missing: u64,
    /// Archives whose header came back without any page (loaded empty).
    pub no_pages: u64,
    /// Page records without a header (not loadable; left on disk).
    pub orphan_pages: u64,
    /// Header records found (what the next manifest starts from).
    pub headers: u64,
    /// The manifest's archive count (`None`: no manifest, or unreadable).
    pub manifest: Option<u64>,
    /// Series whose saved archives of rules that no longer apply moved
    /// into rules that newly apply (see [`Store::adopt_orphans`]).
    pub moved_series: u64,
    /// Archives made for those rules.
    pub moved_archives: u64,
}

impl RestoreReport {
    /// Losses it knows of, as `(reason, count)` for
    /// `ringdb_restore_skipped_total{reason}` (zero counts included).
    pub fn skipped(&self) -> [(&'static str, u64); 5] {
        [
            ("corrupt", self.corrupt),
            ("rule_changed_or_removed", self.kept_on_disk),
            ("missing", self.missing),
            ("no_pages", self.no_pages),
            ("orphan_pages", self.orphan_pages),
        ]
    }

    /// True when something saved did not come back whole.
    pub fn lost_anything(&self) -> bool {
        self.corrupt + self.missing + self.no_pages + self.orphan_pages > 0
    }
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

/// sled's page cache (its default is 1 GiB); see [`open_sled`].
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

/// Records rewritten per batch when upgrading format 1/2 keys.
const UPGRADE_BATCH_RECORDS: usize = 4096;

/// Snapshot intervals without a successful save after which `/-/ready`
/// answers 503.
pub const UNREADY_AFTER_INTERVALS: u32 = 3;

impl SaveReport {
    fn add(&mut self, d: &DirtyArchive) {
        self.archives += 1;
        self.pages += d.dirty.pages.len() as u64;
        self.bytes += written_bytes(d);
    }
}

/// Whether snapshots succeed, for `/-/ready` and self-metrics. Times are
/// milliseconds since the epoch from the flusher's clock; 0 is "never".
#[derive(Default)]
struct Health {
    last_success_ms: AtomicU64,
    failing_since_ms: AtomicU64,
    unready_since_ms: AtomicU64,
    unready_after_ms: AtomicU64,
}

/// Bytes of the records written for `d`, keys included (what sled stores).
fn written_bytes(d: &DirtyArchive) -> u64 {
    let key = 9 + d.series.len() + d.rule.name.len();
    let header = d.dirty.header.as_ref().map_or(0, |h| key + h.len());
    let pages: usize = d.dirty.pages.iter().map(|p| key + 4 + p.1.len()).sum();
    (header + pages) as u64
}

/// The sled database holding every saved archive.
pub struct Snapshotter {
    /// `None` after a failed save: sled is poisoned by an I/O error (see
    /// the module doc), the next save reopens it.
    db: RwLock<Option<sled::Db>>,
    path: PathBuf,
    dir: String,
    manifest: PathBuf,
    /// Held by a save and by a delete, so a save that took a series' pages
    /// before its deletion cannot write them back after it; also the only
    /// times the handle is replaced.
    busy: Mutex<()>,
    /// Header records in sled (archives on disk), for the manifest.
    archives_on_disk: AtomicU64,
    /// The count in the manifest file (`u64::MAX`: unknown, write it).
    manifest_archives: AtomicU64,
    /// The log length in the manifest file (`u64::MAX`: unknown).
    manifest_log_bytes: AtomicU64,
    health: Health,
    /// Writes still to fail (tests of the retry path).
    #[cfg(test)]
    fail_writes: AtomicUsize,
}

/// Opens sled under `dir` with the daemon's settings.
fn open_sled(dir: &Path) -> sled::Result<sled::Db> {
    // The flusher calls `flush` itself after each save; sled's own
    // periodic flush would only add fsyncs in between.
    sled::Config::new()
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
}

/// The length of sled's log file (`db`) in `dir`; `None` when it cannot be
/// read (no store yet).
fn log_bytes(dir: &Path) -> Option<u64> {
    std::fs::metadata(dir.join("db")).ok().map(|m| m.len())
}

/// sled's log found shorter than the last save left it (see
/// [`shorter_log`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShorterLog {
    /// Length of `db` now.
    pub log_bytes: u64,
    /// Length of `db` after the last save (manifest).
    pub saved_log_bytes: u64,
}

impl std::fmt::Display for ShorterLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sled's log is {} bytes, the last save left {} (truncated, or sled dropped free \
             segments at its end since)",
            self.log_bytes, self.saved_log_bytes
        )
    }
}

/// Checks, without sled, that the log of the store in `dir` is not
/// shorter than the manifest says the last save left it. sled's open
/// rewrites a truncated log before giving back less than `ringdb recover`
/// reads from the untouched files, so a shorter log must be seen first.
/// A longer log is normal (writes after the last manifest, e.g. before a
/// kill -9). A shorter one is not always damage: sled truncates free
/// segments at the end of its log, possibly after the manifest was
/// written, so the caller keeps a copy and lets the restore decide (see
/// [`recover::Untouched`]). `None` also when there is no log, no
/// manifest, or a manifest without a log length (written by an older
/// ringdb): nothing to compare.
///
/// # Errors
/// Another process holds the store ([`SnapshotError::Locked`]).
pub fn shorter_log(dir: &Path) -> Result<Option<ShorterLog>, SnapshotError> {
    let Some(log_bytes) = log_bytes(dir) else {
        return Ok(None);
    };
    if in_use(&dir.join("db")) {
        return Err(SnapshotError::Locked {
            dir: dir.display().to_string(),
        });
    }
    let saved = manifest::read(&manifest::path_for(dir))
        .ok()
        .flatten()
        .and_then(|m| m.log_bytes);
    Ok(saved
        .filter(|&saved| log_bytes < saved)
        .map(|saved_log_bytes| ShorterLog {
            log_bytes,
            saved_log_bytes,
        }))
}

/// True when another process holds sled's lock on the log file `log`
/// (sled takes an exclusive `flock` on it while open). A lock still held
/// after [`LOCK_GRACE`] counts: sled's background threads keep it for a
/// moment after the last handle in this process is dropped (a store
/// closed just before, e.g. to be recovered at start, looked "in use" on
/// a loaded machine).
pub fn in_use(log: &Path) -> bool {
    let locked = || match std::fs::File::open(log) {
        Ok(file) => matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    };
    let deadline = Instant::now() + LOCK_GRACE;
    while locked() {
        if Instant::now() >= deadline {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// How long [`in_use`] waits for a lock to go before calling it held.
pub const LOCK_GRACE: Duration = Duration::from_secs(3);

/// [`open_sled`], with a panic inside sled (it panics on some damaged
/// stores, e.g. "tried to serialize Uninitialized") turned into an error.
fn open_sled_caught(dir: &Path) -> sled::Result<sled::Db> {
    caught(|| open_sled(dir))
}

/// Runs `f`, turning a panic (sled panics on some damaged stores) into
/// `sled::Error::ReportableBug`.
fn caught<T>(f: impl FnOnce() -> sled::Result<T>) -> sled::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(sled::Error::ReportableBug(format!("sled panicked: {what}")))
    })
}

/// Rewrites every format 1/2 key (`h`/`p`, u16 lengths) as format 3, in
/// atomic batches (a crash leaves each record under one key, old or new);
/// returns (upgraded, unreadable) record counts. Unreadable legacy keys
/// stay where they are and are logged.
fn upgrade_legacy_keys(db: &sled::Db) -> sled::Result<(u64, u64)> {
    let (mut upgraded, mut unreadable) = (0, 0);
    for tag in [LEGACY_HEADER, LEGACY_PAGE] {
        let mut from = vec![tag];
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            let mut last = None;
            for entry in db.range(from.clone()..vec![tag + 1]) {
                let (k, v) = entry?;
                match key::upgrade_legacy(&k) {
                    Some(new) => {
                        batch.insert(new, v);
                        batch.remove(k.clone());
                        upgraded += 1;
                    }
                    None => {
                        unreadable += 1;
                        tracing::warn!(key = ?String::from_utf8_lossy(&k), "snapshot: unreadable format 2 key left alone");
                    }
                }
                last = Some(k);
                n += 1;
                if n == UPGRADE_BATCH_RECORDS {
                    break;
                }
            }
            db.apply_batch(batch)?;
            let Some(last) = last else { break };
            from = last.to_vec();
            from.push(0); // the next key after `last`
            if n < UPGRADE_BATCH_RECORDS {
                break;
            }
        }
    }
    if upgraded > 0 {
        db.flush()?;
        tracing::info!(
            records = upgraded,
            "snapshot: keys upgraded to format 3 (u32 lengths)"
        );
    }
    Ok((upgraded, unreadable))
}

impl Snapshotter {
    /// Opens (or creates) the store under `dir`, upgrading format 1/2 keys.
    ///
    /// # Errors
    /// The log holds a damaged record with sound ones after it
    /// ([`SnapshotError::Damaged`], checked before sled opens it); sled
    /// cannot open the folder ([`SnapshotError::Open`]: damaged files,
    /// permissions, another process holds it); the upgrade fails.
    pub fn open(dir: &Path) -> Result<Snapshotter, SnapshotError> {
        let name = dir.display().to_string();
        // sled's recovery overwrites its log after the first record it
        // cannot read: look before it does.
        let log = dir.join("db");
        if log.exists() {
            if in_use(&log) {
                return Err(SnapshotError::Locked { dir: name });
            }
            let segment_bytes = salvage::segment_size_of(dir);
            let damaged = salvage::check_file(&log, segment_bytes).map_err(|source| {
                SnapshotError::Check {
                    dir: name.clone(),
                    source,
                }
            })?;
            if let Some(offset) = damaged {
                return Err(SnapshotError::Damaged { dir: name, offset });
            }
        }
        let db = open_sled_caught(dir).map_err(|source| SnapshotError::Open {
            dir: name.clone(),
            source,
        })?;
        upgrade_legacy_keys(&db).map_err(|source| SnapshotError::Sled {
            dir: name.clone(),
            source,
        })?;
        Ok(Snapshotter {
            db: RwLock::new(Some(db)),
            path: dir.to_path_buf(),
            dir: name,
            manifest: manifest::path_for(dir),
            busy: Mutex::new(()),
            archives_on_disk: AtomicU64::new(0),
            manifest_archives: AtomicU64::new(u64::MAX),
            manifest_log_bytes: AtomicU64::new(u64::MAX),
            health: Health::default(),
            #[cfg(test)]
            fail_writes: AtomicUsize::new(0),
        })
    }

    fn err(&self, source: sled::Error) -> SnapshotError {
        SnapshotError::Sled {
            dir: self.dir.clone(),
            source,
        }
    }

    /// The open sled handle, reopening the store after a failure. Callers
    /// hold `busy` (or run before the flusher starts).
    fn db(&self) -> Result<sled::Db, SnapshotError> {
        if let Some(db) = &*self.db.read().unwrap_or_else(|e| e.into_inner()) {
            return Ok(db.clone());
        }
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = &*slot {
            return Ok(db.clone());
        }
        // The handle a failed save dropped may keep sled's lock a moment.
        in_use(&self.path.join("db"));
        let db = open_sled_caught(&self.path).map_err(|source| SnapshotError::Open {
            dir: self.dir.clone(),
            source,
        })?;
        // Records of the failed save may or may not have reached the disk:
        // count the headers again.
        let mut headers = 0;
        for k in db.scan_prefix([HEADER]).keys() {
            k.map_err(|e| self.err(e))?;
            headers += 1;
        }
        self.archives_on_disk.store(headers, Ordering::Relaxed);
        tracing::info!(dir = %self.dir, archives = headers, "snapshot store reopened");
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Drops the sled handle (poisoned by an error); the next call reopens.
    fn close(&self) {
        let old = self.db.write().unwrap_or_else(|e| e.into_inner()).take();
        drop(old);
    }

    /// Loads every saved archive whose rule still applies with the same
    /// shape; the rest stays on disk. Corrupt records are logged and
    /// skipped; archives the manifest counts but sled does not give back,
    /// headers without pages and pages without a header are logged and
    /// counted. One thread reads sled in key order; [`RESTORE_THREADS`]
    /// decode and fill the store.
    ///
    /// # Errors
    /// sled fails to iterate (a damaged store: see [`recover`]).
    pub fn restore(&self, store: &Store) -> Result<RestoreReport, SnapshotError> {
        let db = self.db()?;
        let (chunks, receiver) = std::sync::mpsc::sync_channel(RESTORE_QUEUE_CHUNKS);
        let receiver = Mutex::new(receiver);
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
        let mut report = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..RESTORE_THREADS).map(|_| scope.spawn(work)).collect();
            let read = caught(|| read_records(&db, |chunk| chunks.send(chunk).is_ok()));
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
            read.map(|found| {
                report.headers = found.headers;
                report.no_pages = found.no_pages;
                report.orphan_pages = found.orphan_pages;
                report
            })
        })
        .map_err(|e| self.err(e))?;
        self.archives_on_disk
            .store(report.headers, Ordering::Relaxed);
        match manifest::read(&self.manifest) {
            Ok(Some(m)) => {
                let n = m.archives;
                report.manifest = Some(n);
                self.manifest_archives.store(n, Ordering::Relaxed);
                self.manifest_log_bytes
                    .store(m.log_bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
                report.missing = n.saturating_sub(report.headers);
                if report.missing > 0 {
                    tracing::error!(
                        manifest = n,
                        found = report.headers,
                        missing = report.missing,
                        "snapshot: the store gave back fewer archives than its last save wrote; \
                         they are lost (a damaged or truncated store)"
                    );
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "snapshot: manifest unreadable; losses cannot be counted")
            }
        }
        if report.no_pages > 0 {
            tracing::error!(
                archives = report.no_pages,
                "snapshot: archive headers without any page (their data is lost; loaded empty)"
            );
        }
        if report.orphan_pages > 0 {
            tracing::error!(
                pages = report.orphan_pages,
                "snapshot: pages without their archive header (not loadable)"
            );
        }
        Ok(report)
    }

    /// Saves everything changed since the last save, shard by shard on
    /// [`SAVE_THREADS`] threads, then flushes sled and updates the manifest.
    /// When anything fails, every archive this save took is marked dirty
    /// again and the sled handle is dropped: the next save reopens the
    /// store and writes them all.
    ///
    /// # Errors
    /// sled fails to open, write or flush; the manifest cannot be written.
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
        // Nothing is taken from the store until sled is usable.
        let db = self.db()?;
        let next_shard = AtomicUsize::new(0);
        let work = || self.save_shards(&db, store, &next_shard, control);
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
        let (mut new_headers, mut removed_headers) = (0, 0);
        let mut taken = Vec::new();
        for part in results {
            report.archives += part.report.archives;
            report.pages += part.report.pages;
            report.bytes += part.report.bytes;
            report.removed += part.report.removed;
            report.stopped |= part.report.stopped;
            new_headers += part.new_headers;
            removed_headers += part.removed_headers;
            first_error = first_error.or(part.error);
            taken.extend(part.taken);
        }
        let outcome = match first_error {
            Some(e) => Err(e),
            None => self.flush(&db),
        };
        if let Err(e) = outcome {
            // Nothing of this save is known to be on disk: all of it again.
            for t in taken {
                store.mark_dirty(&t.series, &t.rule.name);
                if !t.retire.is_empty() {
                    store.return_dirty(&t);
                }
            }
            drop(db);
            self.close();
            return Err(self.err(e));
        }
        // Saves and deletes hold `busy`: nothing else changes the count.
        let on_disk = (self.archives_on_disk.load(Ordering::Relaxed) + new_headers)
            .saturating_sub(removed_headers);
        self.archives_on_disk.store(on_disk, Ordering::Relaxed);
        self.write_manifest(on_disk)?;
        report.duration = started.elapsed();
        Ok(report)
    }

    fn flush(&self, db: &sled::Db) -> sled::Result<()> {
        self.injected_failure()?;
        db.flush().map(drop)
    }

    /// Writes the manifest when its count or sled's log length changed
    /// (the log grows with nearly every save: one small fsynced file per
    /// save keeps the start-up truncation check tight).
    fn write_manifest(&self, archives: u64) -> Result<(), SnapshotError> {
        let log_bytes = log_bytes(&self.path);
        let unchanged = self.manifest_archives.load(Ordering::Relaxed) == archives
            && log_bytes == Some(self.manifest_log_bytes.load(Ordering::Relaxed));
        if !unchanged {
            manifest::write(
                &self.manifest,
                &manifest::Manifest {
                    archives,
                    log_bytes,
                },
            )?;
            self.manifest_archives.store(archives, Ordering::Relaxed);
            self.manifest_log_bytes
                .store(log_bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        Ok(())
    }

    /// A test's injected write failure, as sled reports a failed write.
    fn injected_failure(&self) -> sled::Result<()> {
        #[cfg(test)]
        if self
            .fail_writes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(sled::Error::Io(std::io::Error::other(
                "injected write failure",
            )));
        }
        Ok(())
    }

    /// Takes shards from `next_shard` until none is left, one fails, or
    /// `control` stops it, and writes their dirty archives. Archives taken
    /// and not written because of a stop are put back dirty at once; after
    /// an error the caller puts back everything taken.
    fn save_shards(
        &self,
        db: &sled::Db,
        store: &Store,
        next_shard: &AtomicUsize,
        control: SaveControl<'_>,
    ) -> ShardsSaved {
        let mut out = ShardsSaved::default();
        loop {
            if out.error.is_some() {
                return out;
            }
            if control.should_stop() {
                out.report.stopped = true;
                return out;
            }
            let shard = next_shard.fetch_add(1, Ordering::Relaxed);
            // After an error or a stop, shards not yet taken stay dirty.
            if shard >= store.shard_count() {
                return out;
            }
            let dirty = store.take_dirty(shard);
            out.taken.extend(dirty.iter().map(|d| DirtyArchive {
                series: d.series.clone(),
                rule: d.rule.clone(),
                dirty: codec::Dirty::default(),
                retire: d.retire.clone(),
            }));
            // Archives with several records go in batches (sled serialises
            // batches and each costs a log reservation; see BATCH_ARCHIVES).
            let mut pending = Pending::default();
            for (i, d) in dirty.iter().enumerate() {
                let boundary = pending.batched.last().is_none_or(|l| l.series != d.series);
                if boundary && pending.full() {
                    self.apply_batch(db, &mut pending, &mut out, control);
                }
                if out.error.is_some() {
                    return out;
                }
                if boundary && control.should_stop() {
                    self.apply_batch(db, &mut pending, &mut out, control);
                    dirty[i..].iter().for_each(|d| store.return_dirty(d));
                    out.report.stopped = true;
                    return out;
                }
                match self.save_archive(db, d, &mut pending) {
                    Ok(true) => {
                        out.report.add(d);
                        (control.written)(written_bytes(d));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        out.error = Some(e);
                        return out;
                    }
                }
            }
            self.apply_batch(db, &mut pending, &mut out, control);
        }
    }

    /// Applies the pending batch, holding the records of the archives it
    /// lists (emptied): counted in `out` when written, else the error is
    /// kept.
    fn apply_batch(
        &self,
        db: &sled::Db,
        pending: &mut Pending<'_>,
        out: &mut ShardsSaved,
        control: SaveControl<'_>,
    ) {
        let Pending {
            batch,
            batched,
            removed,
            new_headers,
            removed_headers,
            ..
        } = std::mem::take(pending);
        if batched.is_empty() {
            return;
        }
        match self.injected_failure().and_then(|()| db.apply_batch(batch)) {
            Ok(()) => {
                let bytes: u64 = batched.iter().map(|d| written_bytes(d)).sum();
                batched.iter().for_each(|d| out.report.add(d));
                out.report.removed += removed;
                out.new_headers += new_headers;
                out.removed_headers += removed_headers;
                (control.written)(bytes);
            }
            Err(e) => out.error = Some(e),
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
        db: &sled::Db,
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
            self.injected_failure()?;
            db.insert(key::page_key(series, rule, *n), bytes.as_slice())?;
            return Ok(true);
        }
        let batch = &mut pending.batch;
        let remove_pages = |batch: &mut sled::Batch, rule: &str| -> Result<u64, sled::Error> {
            let mut removed = 0;
            for key in db.scan_prefix(key::archive_key(PAGE, series, rule)).keys() {
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
            let old_header = key::archive_key(HEADER, series, old);
            if db.contains_key(&old_header)? {
                pending.removed_headers += 1;
            }
            batch.remove(old_header);
            removed += 1;
        }
        if let Some(h) = &d.dirty.header {
            let header_key = key::archive_key(HEADER, series, rule);
            if !db.contains_key(&header_key)? {
                pending.new_headers += 1;
            }
            batch.insert(header_key, h.as_slice());
        }
        for (n, bytes) in &d.dirty.pages {
            batch.insert(key::page_key(series, rule, *n), bytes.as_slice());
        }
        pending.records += removed as usize + d.dirty.pages.len() + 1;
        pending.removed += removed;
        pending.batched.push(d);
        Ok(false)
    }

    /// Bytes the store takes on disk, if sled can tell.
    pub fn size_on_disk(&self) -> Option<u64> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        db.as_ref().and_then(|db| db.size_on_disk().ok())
    }

    /// Removes saved archives (autoremove sweeps) from disk.
    ///
    /// # Errors
    /// sled fails; the manifest cannot be written.
    pub fn delete_archives(&self, archives: &[(String, String)]) -> Result<(), SnapshotError> {
        if archives.is_empty() {
            return Ok(());
        }
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let db = self.db()?;
        let mut batch = sled::Batch::default();
        let mut headers = 0;
        for (series, rule) in archives {
            let header_key = key::archive_key(HEADER, series, rule);
            headers += u64::from(db.contains_key(&header_key).map_err(|e| self.err(e))?);
            batch.remove(header_key);
            for key in db.scan_prefix(key::archive_key(PAGE, series, rule)).keys() {
                batch.remove(key.map_err(|e| self.err(e))?);
            }
        }
        self.remove(&db, batch, headers)
    }

    /// Writes the manifest with `headers` fewer archives, then applies
    /// `batch` (the removal) and flushes: a crash in between leaves a
    /// manifest that counts too few, never a false loss.
    fn remove(&self, db: &sled::Db, batch: sled::Batch, headers: u64) -> Result<(), SnapshotError> {
        let left = self
            .archives_on_disk
            .load(Ordering::Relaxed)
            .saturating_sub(headers);
        self.write_manifest(left)?;
        let applied = db.apply_batch(batch).and_then(|()| db.flush().map(drop));
        if let Err(e) = applied {
            self.close();
            return Err(self.err(e));
        }
        self.archives_on_disk.store(left, Ordering::Relaxed);
        Ok(())
    }

    /// Removes a series from the store and every saved archive of it from
    /// disk; false when the store did not hold it (disk is cleaned anyway).
    ///
    /// # Errors
    /// sled fails; the manifest cannot be written.
    pub fn delete_series(&self, store: &Store, series: &str) -> Result<bool, SnapshotError> {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let db = self.db()?;
        let held = store.remove(series);
        let mut batch = sled::Batch::default();
        let mut headers = 0;
        for tag in [HEADER, PAGE] {
            for k in db.scan_prefix(key::series_prefix(tag, series)).keys() {
                let k = k.map_err(|e| self.err(e))?;
                headers += u64::from(tag == HEADER);
                batch.remove(k);
            }
        }
        self.remove(&db, batch, headers)?;
        Ok(held)
    }

    /// Since when snapshots have been failing, once the last successful
    /// one is older than [`UNREADY_AFTER_INTERVALS`] intervals (ms since
    /// the epoch); `None` while they succeed.
    pub fn failing_since_ms(&self) -> Option<u64> {
        match self.health.unready_since_ms.load(Ordering::Relaxed) {
            0 => None,
            _ => Some(self.health.failing_since_ms.load(Ordering::Relaxed)),
        }
    }

    /// Records a save's outcome at `now_ms`; true when this made the
    /// daemon unready (snapshots failing for too long).
    fn record_outcome(&self, ok: bool, now_ms: u64) -> bool {
        let h = &self.health;
        if ok {
            h.last_success_ms.store(now_ms, Ordering::Relaxed);
            h.failing_since_ms.store(0, Ordering::Relaxed);
            h.unready_since_ms.store(0, Ordering::Relaxed);
            return false;
        }
        let _ = h.failing_since_ms.compare_exchange(
            0,
            now_ms.max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let stale = now_ms.saturating_sub(h.last_success_ms.load(Ordering::Relaxed))
            > h.unready_after_ms.load(Ordering::Relaxed);
        stale
            && h.unready_since_ms
                .compare_exchange(0, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// What one save thread did.
#[derive(Default)]
struct ShardsSaved {
    report: SaveReport,
    error: Option<sled::Error>,
    /// Every archive taken from the store, without its records (put back
    /// dirty on failure).
    taken: Vec<DirtyArchive>,
    /// Header records written where none was.
    new_headers: u64,
    /// Header records removed (rules whose history moved).
    removed_headers: u64,
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
    /// Header records `batch` writes where none was.
    new_headers: u64,
    /// Header records `batch` removes.
    removed_headers: u64,
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

/// What [`read_records`] saw besides the records it handed on.
#[derive(Default)]
struct Found {
    headers: u64,
    no_pages: u64,
    orphan_pages: u64,
}

/// Reads every header with its pages and hands them to `send` in chunks,
/// until `send` returns false. Headers and pages share one key order
/// (series, rule), so one pass over each, merged, finds every archive's
/// pages without a lookup.
fn read_records(db: &sled::Db, mut send: impl FnMut(Vec<Records>) -> bool) -> sled::Result<Found> {
    let mut found = Found::default();
    let mut page_entries = db.scan_prefix([PAGE]).peekable();
    let mut chunk = Vec::with_capacity(RESTORE_CHUNK_ARCHIVES);
    for entry in db.scan_prefix([HEADER]) {
        let (key, header) = entry?;
        found.headers += 1;
        let suffix = &key[1..];
        let mut pages = Vec::new();
        while let Some(next) = page_entries.peek() {
            let page_key = match next {
                Ok((k, _)) => &k[1..],
                Err(_) => return Err(next_error(&mut page_entries)),
            };
            if page_key.len() == suffix.len() + 4 && page_key.starts_with(suffix) {
                let n = key::parse(&[&[PAGE], page_key].concat()).and_then(|k| k.page);
                if let (Some(n), Some(Ok((_, v)))) = (n, page_entries.next()) {
                    pages.push((n, v));
                }
            } else if page_key < suffix {
                page_entries.next(); // a page whose header is gone
                found.orphan_pages += 1;
            } else {
                break;
            }
        }
        found.no_pages += u64::from(pages.is_empty());
        chunk.push(Records { key, header, pages });
        if chunk.len() == RESTORE_CHUNK_ARCHIVES {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(RESTORE_CHUNK_ARCHIVES));
            if !send(full) {
                return Ok(found);
            }
        }
    }
    for rest in page_entries {
        rest?;
        found.orphan_pages += 1;
    }
    if !chunk.is_empty() {
        send(chunk);
    }
    Ok(found)
}

/// The error a peeked iterator holds.
fn next_error(entries: &mut std::iter::Peekable<sled::Iter>) -> sled::Error {
    match entries.next() {
        Some(Err(e)) => e,
        _ => sled::Error::Unsupported("sled iterator error vanished".into()),
    }
}

/// Decodes one archive and puts it in the store, counting the outcome.
fn restore_archive(
    store: &Store,
    records: Records,
    report: &mut RestoreReport,
    orphans: &mut Vec<Orphan>,
) {
    let Some(key::RecordKey {
        series,
        rule,
        page: None,
        ..
    }) = key::parse(&records.key)
    else {
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
    let mut orphans = Vec::new();
    restore_archive(store, records, &mut report, &mut orphans);
    report.kept_on_disk += store.adopt_orphans(orphans).unloaded;
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

/// Saves on blocking threads and records the outcome (at `clock()`) in
/// self-metrics and the readiness state; the report, or `None` when the
/// save failed. The save stops before its next write once `stop` is
/// triggered (the flusher's saves, so that shutdown is not held by one)
/// or `deadline` has passed (the final snapshot); what it did not write
/// stays dirty.
pub async fn save_now(
    snapshotter: &Arc<Snapshotter>,
    store: &Arc<Store>,
    metrics: &Arc<Metrics>,
    clock: &Clock,
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
    let now_ms = clock();
    match result {
        Ok((Ok(report), disk)) => {
            if snapshotter.failing_since_ms().is_some() {
                tracing::info!("snapshots succeed again; ready");
                metrics.set("ringdb_ready", &[], 1.0);
            }
            snapshotter.record_outcome(true, now_ms);
            if report.stopped {
                metrics.add("ringdb_snapshots_stopped_total", &[], 1);
            } else {
                metrics.add("ringdb_snapshots_total", &[], 1);
            }
            metrics.set(
                "ringdb_last_snapshot_success_timestamp_seconds",
                &[],
                now_ms as f64 / 1000.0,
            );
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
            tracing::error!(error = %e, "snapshot failed; every change stays dirty, the next one retries");
            if snapshotter.record_outcome(false, now_ms) {
                metrics.set("ringdb_ready", &[], 0.0);
                tracing::error!(
                    "snapshots failing for more than {UNREADY_AFTER_INTERVALS} intervals: /-/ready answers 503"
                );
            }
            None
        }
        Err(e) => {
            metrics.add("ringdb_snapshot_errors_total", &[], 1);
            tracing::error!(error = %e, "snapshot task failed");
            snapshotter.record_outcome(false, now_ms);
            None
        }
    }
}

/// Every `interval` until shutdown: sweeps idle `autoremove` archives out
/// of memory and disk, then saves what changed (a failed save is retried
/// on the next tick, with everything it had taken). The final snapshot is
/// the caller's, after the listeners have drained.
pub async fn run_flusher(
    snapshotter: Arc<Snapshotter>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    clock: Clock,
    interval: Duration,
    shutdown: Shutdown,
) {
    // The store is what the disk holds once restored: that counts as the
    // last success until the first save.
    let h = &snapshotter.health;
    h.unready_after_ms.store(
        (interval * UNREADY_AFTER_INTERVALS).as_millis() as u64,
        Ordering::Relaxed,
    );
    let now_ms = clock();
    h.last_success_ms.store(now_ms, Ordering::Relaxed);
    metrics.set(
        "ringdb_last_snapshot_success_timestamp_seconds",
        &[],
        now_ms as f64 / 1000.0,
    );
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.token().cancelled() => break,
            _ = ticker.tick() => {
                sweep(&snapshotter, &store, &metrics, clock()).await;
                save_now(&snapshotter, &store, &metrics, &clock, Some(shutdown.clone()), None).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;

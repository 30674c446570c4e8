//! `ringdb recover`: salvage a damaged snapshot store. Copies the store to
//! a scratch folder (the damaged files stay byte for byte as found), opens
//! the copy with sled as far as it goes, copies every record that reads and
//! decodes into a fresh store, then moves the damaged store aside
//! (`snapshots.damaged-<stamp>`) and the fresh one into its place.
//!
//! Opening: the copy's log is repaired first ([`salvage`]: a damaged
//! message is skipped instead of ending the log); then sled opens it as is;
//! when sled refuses, again without its own snapshot files (`snap.*`: sled
//! rebuilds its page table from the log, so a damaged table costs nothing),
//! then with a fresh `conf`. When sled gives back fewer archives than the
//! manifest counts (a truncated log: sled's replay stops at the first
//! missing segment), the log is also read without sled
//! ([`salvage::scan_records`]) and what sled missed is added. Reading: forward in key order until the
//! first error, then backward from the end down to it, so one damaged tree
//! node loses the keys it held, not every key after it. An [`Untouched`]
//! copy a start that did not finish left beside the store is put back
//! first.
//!
//! Never run it while the daemon runs on the same data_dir.

use super::key::{self, HEADER, PAGE};
use super::{caught, manifest, open_sled, open_sled_caught, salvage};
use crate::rrd::codec;
use crate::rrd::Archive;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why recovery stopped before replacing the store (the store is untouched).
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// No store to recover.
    #[error("no snapshot store at {0}")]
    NoStore(String),
    /// A running ringdb holds the store.
    #[error("snapshot store {0} is in use: stop ringdb first")]
    InUse(String),
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or folder.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The fresh store could not be written.
    #[error("fresh store {dir}: {source}")]
    Fresh {
        /// Folder of the fresh store.
        dir: String,
        /// sled's error.
        source: sled::Error,
    },
    /// Every way of opening the damaged store with sled failed (recover
    /// then reads the log without sled).
    #[error(
        "snapshot store {dir} cannot be opened by sled ({first}; without its snapshot files: {second})"
    )]
    Unreadable {
        /// Folder of the store.
        dir: String,
        /// sled's error opening it as is.
        first: sled::Error,
        /// sled's error opening it without `snap.*`.
        second: sled::Error,
    },
    /// The manifest of the fresh store could not be written.
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
}

/// What a recovery read, kept and lost.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoverReport {
    /// How sled opened the damaged copy.
    pub opened: &'static str,
    /// Damaged log messages skipped: (file offset, bytes) in `db`.
    pub log_repairs: Vec<(usize, usize)>,
    /// Log segments whose header is damaged (sled skips them).
    pub bad_segment_headers: u64,
    /// True when the log was also read without sled (sled gave back fewer
    /// archives than the manifest counts).
    pub opened_raw: bool,
    /// Records found only by reading the log without sled.
    pub raw_records: u64,
    /// sled errors met while reading (each ends one direction of the scan).
    pub read_errors: Vec<String>,
    /// Archives copied (a decodable header).
    pub archives: u64,
    /// Pages copied.
    pub pages: u64,
    /// Headers that did not decode (archive lost).
    pub corrupt_headers: u64,
    /// Pages that did not decode (their buckets lost).
    pub corrupt_pages: u64,
    /// Pages whose header is gone (lost).
    pub orphan_pages: u64,
    /// Archives copied without any page (their buckets lost).
    pub no_pages: u64,
    /// Records whose key is no record key.
    pub unknown_keys: u64,
    /// The damaged store's manifest count, when it had one.
    pub manifest: Option<u64>,
    /// Where the damaged store now is.
    pub damaged: PathBuf,
}

impl RecoverReport {
    /// Archives the manifest counted that are not in the fresh store.
    pub fn archives_lost(&self) -> Option<u64> {
        self.manifest.map(|n| n.saturating_sub(self.archives))
    }
}

impl std::fmt::Display for RecoverReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "opened: {}", self.opened)?;
        if self.opened_raw {
            writeln!(
                f,
                "log also read without sled: {} records sled did not give back",
                self.raw_records
            )?;
        }
        for (offset, bytes) in &self.log_repairs {
            writeln!(
                f,
                "log repaired: damaged message at byte {offset} of db ({bytes} bytes) skipped"
            )?;
        }
        if self.bad_segment_headers > 0 {
            writeln!(
                f,
                "log segments with a damaged header (their records are lost): {}",
                self.bad_segment_headers
            )?;
        }
        for e in &self.read_errors {
            writeln!(f, "read error (records past it unreadable): {e}")?;
        }
        writeln!(
            f,
            "recovered: {} archives ({} of them without any page: their buckets are lost), {} pages",
            self.archives, self.no_pages, self.pages
        )?;
        match (self.manifest, self.archives_lost()) {
            (Some(n), Some(lost)) => writeln!(
                f,
                "lost: {lost} of the {n} archives the last save wrote (manifest)"
            )?,
            _ => writeln!(
                f,
                "lost: unknown number of archives (no manifest beside the store)"
            )?,
        }
        writeln!(
            f,
            "dropped: {} corrupt headers, {} corrupt pages, {} pages without header, {} unknown keys",
            self.corrupt_headers, self.corrupt_pages, self.orphan_pages, self.unknown_keys
        )?;
        write!(f, "damaged store moved to {}", self.damaged.display())
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RecoverError {
    let path = path.display().to_string();
    move |source| RecoverError::Io { what, path, source }
}

/// `dir` + `suffix` as a sibling path.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), RecoverError> {
    std::fs::create_dir_all(to).map_err(io("creating", to))?;
    for entry in std::fs::read_dir(from).map_err(io("reading", from))? {
        let entry = entry.map_err(io("reading", from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().map_err(io("reading", &src))?.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(io("copying", &src))?;
        }
    }
    Ok(())
}

/// Recovers the store in `dir` (see the module doc); `stamp` names the
/// folder the damaged store moves to (`<dir>.damaged-<stamp>`).
///
/// # Errors
/// No store, the store is in use, a file operation fails, or the fresh
/// store cannot be written. (When sled cannot open the store in any way,
/// its log is read without sled.) The store in `dir` is only
/// replaced when everything else succeeded.
pub fn recover(dir: &Path, stamp: &str) -> Result<RecoverReport, RecoverError> {
    // A start that did not finish may have left the store as it found it
    // beside what sled's open made of it: that is what is recovered.
    Untouched::put_back_leftover(dir)?;
    if !dir.join("db").exists() {
        return Err(RecoverError::NoStore(dir.display().to_string()));
    }
    if super::in_use(&dir.join("db")) {
        return Err(RecoverError::InUse(dir.display().to_string()));
    }
    let scratch = sibling(dir, ".recover-scratch");
    let fresh = sibling(dir, ".recovering");
    let damaged = sibling(dir, &format!(".damaged-{stamp}"));
    for old in [&scratch, &fresh] {
        if old.exists() {
            std::fs::remove_dir_all(old).map_err(io("removing", old))?;
        }
    }
    copy_dir(dir, &scratch)?;
    let mut report = RecoverReport {
        manifest: manifest::read(&manifest::path_for(dir))
            .ok()
            .flatten()
            .map(|m| m.archives),
        ..RecoverReport::default()
    };
    let mut records = match open_damaged(&scratch, dir, &mut report) {
        Ok(source) => {
            let records = read_all(&source, &mut report);
            drop(source);
            records
        }
        // sled cannot open it in any way: the log is all there is.
        Err(RecoverError::Unreadable { first, second, .. }) => {
            report.read_errors.push(format!(
                "sled cannot open the store ({first}; without its snapshot files: {second})"
            ));
            report.opened = "not by sled: the log read directly";
            let mut records = BTreeMap::new();
            add_raw_records(dir, &mut records, &mut report)?;
            records
        }
        Err(e) => return Err(e),
    };
    // sled gave back fewer archives than the last save wrote (segments
    // lost to truncation stop its replay): read the log without sled.
    let headers = records.range(vec![HEADER]..vec![HEADER + 1]).count() as u64;
    if !report.opened_raw && report.manifest.is_some_and(|n| headers < n) {
        add_raw_records(dir, &mut records, &mut report)?;
    }
    let fresh_db = open_sled(&fresh).map_err(|source| RecoverError::Fresh {
        dir: fresh.display().to_string(),
        source,
    })?;
    write_fresh(&fresh_db, records, &mut report).map_err(|source| RecoverError::Fresh {
        dir: fresh.display().to_string(),
        source,
    })?;
    drop(fresh_db);
    std::fs::rename(dir, &damaged).map_err(io("moving aside", dir))?;
    let manifest_file = manifest::path_for(dir);
    if manifest_file.exists() {
        std::fs::rename(&manifest_file, manifest::path_for(&damaged))
            .map_err(io("moving aside", &manifest_file))?;
    }
    std::fs::rename(&fresh, dir).map_err(io("moving into place", &fresh))?;
    manifest::write(
        &manifest_file,
        &manifest::Manifest {
            archives: report.archives,
            log_bytes: super::log_bytes(dir),
        },
    )?;
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(io("removing", &scratch))?;
    }
    report.damaged = damaged;
    Ok(report)
}

/// A copy of a store taken before sled first opens it at start, when the
/// checks without sled cannot vouch for it ([`super::shorter_log`]): sled's
/// open rewrites a damaged log, so if the restore then finds archives
/// missing, the copy is put back and recovered instead of what sled left.
/// A healthy store is not copied.
///
/// The copy is made as `<dir>.untouched-partial` and renamed to
/// `<dir>.untouched` once whole. A whole copy found at the next start
/// means the last start stopped between copying and deciding, or while
/// putting it back (nothing was saved since): [`Untouched::put_back_leftover`]
/// puts it back before anything else, whatever the log looks like then
/// (sled's open may have rewritten it to any length).
#[derive(Debug)]
pub struct Untouched {
    dir: PathBuf,
    copy: PathBuf,
}

impl Untouched {
    /// Puts back the copy a start that did not finish left beside `dir`,
    /// and removes a partial one; true when a copy was put back. Run at
    /// every start before the store is looked at: a copy left behind and
    /// put back later would undo every save in between.
    ///
    /// # Errors
    /// Another process holds the store ([`RecoverError::InUse`]: the copy
    /// may be its own), or a file operation fails.
    pub fn put_back_leftover(dir: &Path) -> Result<bool, RecoverError> {
        if super::in_use(&dir.join("db")) {
            return Err(RecoverError::InUse(dir.display().to_string()));
        }
        let partial = sibling(dir, ".untouched-partial");
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(io("removing", &partial))?;
        }
        let leftover = Untouched {
            dir: dir.to_path_buf(),
            copy: sibling(dir, ".untouched"),
        };
        if !leftover.copy.exists() {
            return Ok(false);
        }
        tracing::warn!(
            copy = %leftover.copy.display(),
            "snapshot: an untouched copy left by a start that did not finish is put back"
        );
        leftover.replace_store()?;
        Ok(true)
    }

    /// Copies the store in `dir` (after [`Untouched::put_back_leftover`]).
    ///
    /// # Errors
    /// See [`Untouched::put_back_leftover`]; a file operation fails.
    pub fn take(dir: &Path) -> Result<Untouched, RecoverError> {
        Untouched::put_back_leftover(dir)?;
        let untouched = Untouched {
            dir: dir.to_path_buf(),
            copy: sibling(dir, ".untouched"),
        };
        let partial = sibling(dir, ".untouched-partial");
        copy_dir(dir, &partial)?;
        std::fs::rename(&partial, &untouched.copy).map_err(io("moving into place", &partial))?;
        Ok(untouched)
    }

    /// Removes the copy: the store restored whole.
    ///
    /// # Errors
    /// The copy cannot be removed (left as it is, the next start would put
    /// it back over later saves: the caller must not go on).
    pub fn discard(self) -> Result<(), RecoverError> {
        let doomed = sibling(&self.dir, ".untouched-partial");
        std::fs::rename(&self.copy, &doomed).map_err(io("moving aside", &self.copy))?;
        std::fs::remove_dir_all(&doomed).map_err(io("removing", &doomed))
    }

    /// Replaces the store (as sled's open left it) with the copy. sled
    /// must have closed the store.
    ///
    /// # Errors
    /// A file operation fails.
    pub fn put_back(self) -> Result<(), RecoverError> {
        self.replace_store()
    }

    fn replace_store(&self) -> Result<(), RecoverError> {
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(io("removing", &self.dir))?;
        }
        std::fs::rename(&self.copy, &self.dir).map_err(io("moving into place", &self.copy))
    }
}

/// Removes sled's snapshot files (`snap.*`) from `scratch`: sled then
/// rebuilds its page table from the whole log.
fn remove_sled_snapshots(scratch: &Path) -> Result<(), RecoverError> {
    for entry in std::fs::read_dir(scratch).map_err(io("reading", scratch))? {
        let entry = entry.map_err(io("reading", scratch))?;
        if entry.file_name().to_string_lossy().starts_with("snap.") {
            std::fs::remove_file(entry.path()).map_err(io("removing", &entry.path()))?;
        }
    }
    Ok(())
}

/// Repairs the scratch copy's log (see [`salvage`]) and opens it: as is,
/// else without sled's snapshot files, else with a fresh `conf`.
fn open_damaged(
    scratch: &Path,
    dir: &Path,
    report: &mut RecoverReport,
) -> Result<sled::Db, RecoverError> {
    let log_file = scratch.join("db");
    let segment_bytes = salvage::segment_size_of(scratch);
    let original = sibling(scratch, ".log");
    std::fs::copy(&log_file, &original).map_err(io("copying", &log_file))?;
    let mut first = None;
    for free_pages in [false, true] {
        std::fs::copy(&original, &log_file).map_err(io("copying", &original))?;
        let repair = salvage::repair_file(&log_file, segment_bytes, free_pages)
            .map_err(io("repairing", &log_file))?;
        if repair.canceled.is_empty() && free_pages {
            break; // nothing different to try
        }
        if !repair.canceled.is_empty() {
            // sled's page table may point into what was canceled.
            remove_sled_snapshots(scratch)?;
        }
        report.log_repairs = repair.canceled;
        report.bad_segment_headers = repair.bad_segment_headers.len() as u64;
        match open_sled_caught(scratch) {
            Ok(db) => {
                let _ = std::fs::remove_file(&original);
                report.opened = if free_pages {
                    "log repaired, damaged tree pages freed"
                } else {
                    "as is (after the log repair, if any)"
                };
                return Ok(db);
            }
            Err(e) => first = first.or(Some(e)),
        }
    }
    let _ = std::fs::remove_file(&original);
    let first = first.unwrap_or_else(|| sled::Error::Unsupported("not opened".into()));
    remove_sled_snapshots(scratch)?;
    let second = match open_sled_caught(scratch) {
        Ok(db) => {
            report.opened = "without sled's snapshot files (page table rebuilt from the log)";
            return Ok(db);
        }
        Err(e) => e,
    };
    // A damaged `conf` (sled's settings file, checksummed): sled writes a
    // new one from the daemon's settings, the same ones that made the store.
    let conf = scratch.join("conf");
    if conf.exists() {
        std::fs::remove_file(&conf).map_err(io("removing", &conf))?;
        if let Ok(db) = open_sled_caught(scratch) {
            report.opened = "with a fresh conf and without sled's snapshot files";
            return Ok(db);
        }
    }
    let _ = std::fs::remove_dir_all(scratch);
    Err(RecoverError::Unreadable {
        dir: dir.display().to_string(),
        first,
        second,
    })
}

/// Every record sled gives back, format 3 keys (legacy keys upgraded):
/// forward until an error (or a panic inside sled), then backward down to
/// the last key read.
fn read_all(db: &sled::Db, report: &mut RecoverReport) -> BTreeMap<Vec<u8>, sled::IVec> {
    let mut records = BTreeMap::new();
    let mut unknown = 0;
    let mut keep = |k: sled::IVec, v: sled::IVec| match key::upgrade_legacy(&k)
        .or_else(|| key::parse(&k).map(|_| k.to_vec()))
    {
        Some(k) => {
            records.insert(k, v);
        }
        None => unknown += 1,
    };
    let mut last_forward: Option<sled::IVec> = None;
    let forward = caught(|| {
        for entry in db.iter() {
            let (k, v) = entry?;
            last_forward = Some(k.clone());
            keep(k, v);
        }
        Ok(())
    });
    if let Err(e) = forward {
        report.read_errors.push(format!("reading forward: {e}"));
        let backward = caught(|| {
            let rest = match &last_forward {
                Some(after) => db.range::<&[u8], _>((
                    std::ops::Bound::Excluded(after.as_ref()),
                    std::ops::Bound::Unbounded,
                )),
                None => db.iter(),
            };
            for entry in rest.rev() {
                let (k, v) = entry?;
                keep(k, v);
            }
            Ok(())
        });
        if let Err(e) = backward {
            report.read_errors.push(format!("reading backward: {e}"));
        }
    }
    report.unknown_keys += unknown;
    records
}

/// Adds the records [`salvage::scan_records`] finds in the damaged log
/// (read in place, read-only) that sled did not give back.
fn add_raw_records(
    dir: &Path,
    records: &mut BTreeMap<Vec<u8>, sled::IVec>,
    report: &mut RecoverReport,
) -> Result<(), RecoverError> {
    let log = dir.join("db");
    let segment_bytes = salvage::segment_size_of(dir);
    let raw = salvage::scan_records(&log, segment_bytes).map_err(io("reading", &log))?;
    for (k, (_, value)) in raw {
        let Some(value) = value else { continue };
        let Some(k) = key::upgrade_legacy(&k).or_else(|| key::parse(&k).map(|_| k.clone())) else {
            continue;
        };
        if let std::collections::btree_map::Entry::Vacant(slot) = records.entry(k) {
            slot.insert(value.into());
            report.raw_records += 1;
        }
    }
    report.opened_raw = true;
    Ok(())
}

/// Writes the decodable archives of `records` into `db` and counts what is
/// dropped.
fn write_fresh(
    db: &sled::Db,
    records: BTreeMap<Vec<u8>, sled::IVec>,
    report: &mut RecoverReport,
) -> sled::Result<()> {
    // Headers and pages share the (series, rule) order: walk the pages
    // beside the headers, as a restore does.
    let pages_start = vec![PAGE];
    let headers: Vec<_> = records.range(vec![HEADER]..pages_start.clone()).collect();
    let mut pages = records.range(pages_start..vec![PAGE + 1]).peekable();
    for (hkey, hval) in headers {
        let suffix = &hkey[1..];
        let mut own = Vec::new();
        while let Some((pkey, _)) = pages.peek() {
            let pk = &pkey[1..];
            if pk.len() == suffix.len() + 4 && pk.starts_with(suffix) {
                if let Some((k, v)) = pages.next() {
                    own.push((k, v));
                }
            } else if pk < suffix {
                pages.next();
                report.orphan_pages += 1;
            } else {
                break;
            }
        }
        let Ok(header) = codec::decode_header(hval) else {
            report.corrupt_headers += 1;
            continue;
        };
        let mut batch = sled::Batch::default();
        batch.insert(hkey.as_slice(), hval.clone());
        let mut kept = 0;
        for (pkey, pval) in own {
            let n = key::parse(pkey).and_then(|k| k.page);
            let decodes =
                n.is_some_and(|n| Archive::restore(&header, [(n, pval.as_ref())]).1.is_empty());
            if decodes {
                batch.insert(pkey.as_slice(), pval.clone());
                kept += 1;
            } else {
                report.corrupt_pages += 1;
            }
        }
        db.apply_batch(batch)?;
        report.archives += 1;
        report.pages += kept;
        report.no_pages += u64::from(kept == 0);
    }
    report.orphan_pages += pages.count() as u64;
    db.flush()?;
    Ok(())
}

//! The manifest: how many archives the snapshot store held after its last
//! successful save, in a small file beside sled's folder
//! (`snapshots.manifest`), so a restore can tell "sled lost records" (a
//! truncated or damaged log gives back fewer archives, without an error)
//! from "there were none". It lives outside sled on purpose: damage to
//! sled's files does not take it along.
//!
//! A second line holds the length of sled's log (`db`) after that save:
//! a log found shorter at start may have lost records, and sled's own
//! open would overwrite what is left of it, so the start-up keeps an
//! untouched copy first (see [`super::recover::Untouched`]). The first
//! line is unchanged, so an older ringdb still reads the count.
//!
//! Written with write-to-temp + fsync + rename, so it is the old or the new
//! manifest, never half. A save writes it after sled's flush (a crash in
//! between leaves a count and a length too low: no false alarm); a delete
//! writes it before removing records (same reason).

use std::io::Write;
use std::path::{Path, PathBuf};

/// The manifest could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file system failed.
    #[error("manifest {file}: {source}")]
    Io {
        /// The manifest file.
        file: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a manifest.
    #[error("manifest {file}: expected \"ringdb-manifest 1 archives=N\", found {found:?}")]
    Malformed {
        /// The manifest file.
        file: String,
        /// Its first line (at most 80 bytes).
        found: String,
    },
}

const MAGIC: &str = "ringdb-manifest 1 archives=";
const LOG_BYTES: &str = "log_bytes=";

/// What the last save left on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manifest {
    /// Archives (header records) in the store.
    pub archives: u64,
    /// Length of sled's log file `db` after the save; `None` in a manifest
    /// written before ringdb recorded it.
    pub log_bytes: Option<u64>,
}

/// The manifest file of the store in `dir`: `dir` + `.manifest`.
pub fn path_for(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".manifest");
    dir.with_file_name(name)
}

/// The manifest saved in `file`; `None` when there is no manifest (a new
/// store, or one written before manifests).
///
/// # Errors
/// The file cannot be read or is not a manifest.
pub fn read(file: &Path) -> Result<Option<Manifest>, ManifestError> {
    let text = match std::fs::read(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ManifestError::Io {
                file: file.display().to_string(),
                source,
            })
        }
    };
    let text = String::from_utf8_lossy(&text);
    let mut lines = text.lines();
    let line = lines.next().unwrap_or("");
    let archives = line
        .strip_prefix(MAGIC)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ManifestError::Malformed {
            file: file.display().to_string(),
            found: line.chars().take(80).collect(),
        })?;
    let log_bytes = lines
        .next()
        .and_then(|l| l.strip_prefix(LOG_BYTES))
        .and_then(|n| n.parse().ok());
    Ok(Some(Manifest {
        archives,
        log_bytes,
    }))
}

/// Replaces `file` with `manifest`.
///
/// # Errors
/// The temp file cannot be written, synced or renamed.
pub fn write(file: &Path, manifest: &Manifest) -> Result<(), ManifestError> {
    let io = |source| ManifestError::Io {
        file: file.display().to_string(),
        source,
    };
    let mut tmp_name = file.as_os_str().to_os_string();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    let mut text = format!("{MAGIC}{}\n", manifest.archives);
    if let Some(n) = manifest.log_bytes {
        text.push_str(&format!("{LOG_BYTES}{n}\n"));
    }
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, file).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = path_for(&dir.path().join("snapshots"));
        assert_eq!(file, dir.path().join("snapshots.manifest"));
        assert_eq!(read(&file).unwrap(), None, "absent");
        for (name, m) in [
            ("with log length", (2500, Some(1 << 20))),
            ("empty store", (0, Some(0))),
            ("no log length", (7, None)),
        ] {
            let m = Manifest {
                archives: m.0,
                log_bytes: m.1,
            };
            write(&file, &m).unwrap();
            assert_eq!(read(&file).unwrap(), Some(m), "{name}");
        }
        // Written by an older ringdb: the count alone.
        std::fs::write(&file, "ringdb-manifest 1 archives=12\n").unwrap();
        assert_eq!(
            read(&file).unwrap(),
            Some(Manifest {
                archives: 12,
                log_bytes: None
            })
        );
        for (name, text) in [
            ("garbage", &b"\x00\xffxyz"[..]),
            ("empty", b""),
            ("no number", b"ringdb-manifest 1 archives=\n"),
        ] {
            std::fs::write(&file, text).unwrap();
            let e = read(&file).expect_err(name);
            assert!(e.to_string().contains("expected"), "{name}: {e}");
        }
    }
}

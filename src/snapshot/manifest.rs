//! The manifest: how many archives the snapshot store held after its last
//! successful save, in a small file beside sled's folder
//! (`snapshots.manifest`), so a restore can tell "sled lost records" (a
//! truncated or damaged log gives back fewer archives, without an error)
//! from "there were none". It lives outside sled on purpose: damage to
//! sled's files does not take it along.
//!
//! Written with write-to-temp + fsync + rename, so it is the old or the new
//! count, never half. A save writes it after sled's flush (a crash in
//! between leaves a count too low: no false alarm); a delete writes it
//! before removing records (same reason).

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

/// The manifest file of the store in `dir`: `dir` + `.manifest`.
pub fn path_for(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".manifest");
    dir.with_file_name(name)
}

/// The archive count saved in `file`; `None` when there is no manifest (a
/// new store, or one written before manifests).
///
/// # Errors
/// The file cannot be read or is not a manifest.
pub fn read(file: &Path) -> Result<Option<u64>, ManifestError> {
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
    let line = text.lines().next().unwrap_or("");
    line.strip_prefix(MAGIC)
        .and_then(|n| n.parse().ok())
        .map(Some)
        .ok_or_else(|| ManifestError::Malformed {
            file: file.display().to_string(),
            found: line.chars().take(80).collect(),
        })
}

/// Replaces `file` with a manifest of `archives`.
///
/// # Errors
/// The temp file cannot be written, synced or renamed.
pub fn write(file: &Path, archives: u64) -> Result<(), ManifestError> {
    let io = |source| ManifestError::Io {
        file: file.display().to_string(),
        source,
    };
    let mut tmp_name = file.as_os_str().to_os_string();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(format!("{MAGIC}{archives}\n").as_bytes())
        .map_err(io)?;
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
        write(&file, 2500).unwrap();
        assert_eq!(read(&file).unwrap(), Some(2500));
        write(&file, 0).unwrap();
        assert_eq!(read(&file).unwrap(), Some(0));
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

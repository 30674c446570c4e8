//! Versioned snapshot encoding of an archive (the only bincode user): a small
//! header (version, rule name, shape, newest bucket, head) and pages of
//! [`PAGE_BUCKETS`] cells each, so a snapshot writes only what changed.

use super::{Archive, Shape, PAGE_BUCKETS};
use serde::{Deserialize, Serialize};

/// Current format version of headers and pages.
pub const CODEC_VERSION: u16 = 1;

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// bincode could not read the bytes.
    #[error("{what}: cannot decode: {source}")]
    Decode {
        /// Which record.
        what: &'static str,
        /// The decoder's error.
        source: bincode::error::DecodeError,
    },
    /// A version this build does not know.
    #[error("{what}: format version {found}, expected {CODEC_VERSION}")]
    Version {
        /// Which record.
        what: &'static str,
        /// Version found.
        found: u16,
    },
    /// Fields that contradict the shape.
    #[error("{what}: {detail}")]
    Invalid {
        /// Which record.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// The header of a saved archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Format version.
    pub version: u16,
    /// Name of the rule the archive was built for.
    pub rule: String,
    /// Prefix of the series (selects rules on restore).
    pub series_prefix: String,
    /// Labels of a label-set series (`None` for a socket path).
    pub series_labels: Option<Vec<(String, String)>>,
    /// Shape of the archive (the rule's fingerprint).
    pub shape: Shape,
    /// Newest bucket number seen.
    pub newest: Option<u64>,
    /// Ring position of the newest bucket.
    pub head: u32,
}

#[derive(Serialize, Deserialize)]
struct Page {
    version: u16,
    cells: Vec<u8>,
    means: Vec<f64>,
}

/// What changed in an archive since its last save, encoded.
#[derive(Debug, Default)]
pub struct Dirty {
    /// The header, when the window or anything else moved.
    pub header: Option<Vec<u8>>,
    /// Changed pages: (page number, bytes).
    pub pages: Vec<(u32, Vec<u8>)>,
    /// Every saved page of this archive must go first (its shape changed).
    pub replace_all: bool,
}

impl Dirty {
    /// Encoded bytes in all.
    pub fn bytes(&self) -> usize {
        self.header.as_ref().map_or(0, Vec::len)
            + self.pages.iter().map(|p| p.1.len()).sum::<usize>()
    }
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, config()).expect("in-memory encoding cannot fail")
}

fn decode<T: for<'de> Deserialize<'de>>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|source| CodecError::Decode { what, source })?;
    if used != bytes.len() {
        return Err(CodecError::Invalid {
            what,
            detail: format!("{} trailing bytes", bytes.len() - used),
        });
    }
    Ok(value)
}

/// Decodes a header.
///
/// # Errors
/// Truncated or corrupt bytes, an unknown version, or a shape that cannot be.
pub fn decode_header(bytes: &[u8]) -> Result<Header, CodecError> {
    let header: Header = decode("header", bytes)?;
    if header.version != CODEC_VERSION {
        return Err(CodecError::Version {
            what: "header",
            found: header.version,
        });
    }
    let shape = &header.shape;
    if shape.limit == 0 || shape.timeframe_secs == 0 || header.head >= shape.limit {
        return Err(CodecError::Invalid {
            what: "header",
            detail: format!(
                "limit {}, timeframe {}, head {}: expected limit ≥ 1, timeframe ≥ 1, head < limit",
                shape.limit, shape.timeframe_secs, header.head
            ),
        });
    }
    Ok(header)
}

impl Archive {
    /// Encodes what changed since the last call and marks it clean. Called
    /// under the store's lock, so a write that lands after this call marks
    /// its page dirty again and is saved next time.
    pub fn take_dirty(
        &mut self,
        rule: &str,
        series_prefix: &str,
        series_labels: Option<&[(String, String)]>,
    ) -> Dirty {
        let mut dirty = Dirty {
            replace_all: std::mem::take(&mut self.rewrite),
            ..Dirty::default()
        };
        if self.header_dirty {
            dirty.header = Some(encode(&Header {
                version: CODEC_VERSION,
                rule: rule.to_owned(),
                series_prefix: series_prefix.to_owned(),
                series_labels: series_labels.map(<[_]>::to_vec),
                shape: self.shape.clone(),
                newest: self.newest,
                head: self.head,
            }));
            self.header_dirty = false;
        }
        let limit = self.shape.limit as usize;
        for (word_index, word) in self.dirty_pages.iter_mut().enumerate() {
            let mut bits = std::mem::take(word);
            while bits != 0 {
                let page = word_index * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let range = page * PAGE_BUCKETS..((page + 1) * PAGE_BUCKETS).min(limit);
                let means = self
                    .means
                    .as_ref()
                    .map(|m| m[range.clone()].to_vec())
                    .unwrap_or_default();
                let page_bytes = encode(&Page {
                    version: CODEC_VERSION,
                    cells: self.cells.raw_bytes(range),
                    means,
                });
                dirty.pages.push((page as u32, page_bytes));
            }
        }
        dirty
    }

    /// Rebuilds an archive from its header and pages. A page that does not
    /// decode is left empty and reported in the returned list.
    pub fn restore<'a>(
        header: &Header,
        pages: impl IntoIterator<Item = (u32, &'a [u8])>,
    ) -> (Archive, Vec<CodecError>) {
        let mut archive = Archive::new(header.shape.clone());
        archive.newest = header.newest;
        archive.head = header.head;
        archive.header_dirty = false;
        let mut errors = Vec::new();
        let limit = header.shape.limit as usize;
        for (page, bytes) in pages {
            let start = page as usize * PAGE_BUCKETS;
            let len = PAGE_BUCKETS.min(limit.saturating_sub(start));
            match decode::<Page>("page", bytes) {
                Ok(p) if p.version != CODEC_VERSION => errors.push(CodecError::Version {
                    what: "page",
                    found: p.version,
                }),
                Ok(p)
                    if len == 0
                        || p.cells.len() != len * archive.cells.width()
                        || (archive.means.is_some() && p.means.len() != len) =>
                {
                    errors.push(CodecError::Invalid {
                        what: "page",
                        detail: format!(
                            "page {page}: {} cell bytes, expected {}",
                            p.cells.len(),
                            len * archive.cells.width()
                        ),
                    })
                }
                Ok(p) => {
                    archive.cells.load_raw(start, &p.cells);
                    if let Some(means) = archive.means.as_mut() {
                        means[start..start + len].copy_from_slice(&p.means);
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        (archive, errors)
    }
}

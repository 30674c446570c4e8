//! Versioned snapshot encoding of an archive (the only bincode user): a small
//! header (version, rule name, series, shape) and pages of [`PAGE_BUCKETS`]
//! cells each, so a snapshot writes only what changed.
//!
//! Version 2 keeps the moving part of an archive (newest bucket, ring head)
//! in every page instead of the header: a new sample in the newest bucket
//! rewrites one page record, not a page and the header. The header is
//! written when the archive is created or migrated. On restore the page
//! with the greatest newest bucket gives the head; the others stay valid
//! because cells sit at ring positions, and a slide that empties a bucket
//! dirties its page. Version 1 records (head in the header, raw cell bytes)
//! are still read.

use super::cells::Cell;
use super::{Archive, Shape, MAX_SPECIALS, MAX_TIMEFRAME_SECS, MAX_WINDOW_SECS, PAGE_BUCKETS};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Format version of the headers and pages written.
pub const CODEC_VERSION: u16 = 2;

/// The older version still read.
const CODEC_V1: u16 = 1;

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
    #[error("{what}: format version {found}, expected {CODEC_V1} or {CODEC_VERSION}")]
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

/// The header of a saved archive, as decoded (and the version 1 layout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Format version found.
    pub version: u16,
    /// Name of the rule the archive was built for.
    pub rule: String,
    /// Prefix of the series (selects rules on restore).
    pub series_prefix: String,
    /// Labels of a label-set series (`None` for a socket path).
    pub series_labels: Option<Vec<(String, String)>>,
    /// Shape of the archive (the rule's fingerprint).
    pub shape: Shape,
    /// Newest bucket number seen (version 1; a version 2 header has
    /// `None` and its pages carry it).
    pub newest: Option<u64>,
    /// Ring position of the newest bucket (version 1; 0 in version 2).
    pub head: u32,
}

/// Version 2 header: what changes only on create or migration.
#[derive(Serialize, Deserialize)]
struct HeaderV2<'a> {
    version: u16,
    rule: Cow<'a, str>,
    series_prefix: Cow<'a, str>,
    series_labels: Option<Cow<'a, [(String, String)]>>,
    shape: Cow<'a, Shape>,
}

/// Version 1 page: raw little-endian cells.
#[derive(Deserialize)]
struct PageV1 {
    _version: u16,
    cells: Vec<u8>,
    means: Vec<f64>,
}

/// Version 2 page: the archive's head as of the save, and cells as varints
/// (see `Cells::page_values`: empty cells and small numbers take a byte).
#[derive(Serialize, Deserialize)]
struct PageV2<'a> {
    version: u16,
    newest: Option<u64>,
    head: u32,
    cells: Cow<'a, [u64]>,
    means: Cow<'a, [f64]>,
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

/// Most bytes one record's decoding may claim for its containers. bincode
/// allocates what a length prefix claims before reading the elements: a
/// damaged prefix claimed up to 2^63 bytes and aborted the process (found
/// by the `snapshot` fuzz target). The largest sound record (a header
/// with 64 labels of 4 KiB) claims well under 1 MiB.
pub const MAX_DECODE_BYTES: usize = 64 << 20;

/// [`config`] with the [`MAX_DECODE_BYTES`] limit: the same encoding.
fn decode_config() -> impl bincode::config::Config {
    config().with_limit::<MAX_DECODE_BYTES>()
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, config()).expect("in-memory encoding cannot fail")
}

/// Encodes into `scratch` (reused, so it grows once), then copies out at
/// the exact size: one allocation a record instead of a growing Vec.
fn encode_with<T: Serialize>(scratch: &mut Vec<u8>, value: &T) -> Vec<u8> {
    scratch.clear();
    bincode::serde::encode_into_std_write(value, scratch, config())
        .expect("in-memory encoding cannot fail");
    scratch.clone()
}

fn decode<T: for<'de> Deserialize<'de>>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, decode_config())
        .map_err(|source| CodecError::Decode { what, source })?;
    if used != bytes.len() {
        return Err(CodecError::Invalid {
            what,
            detail: format!("{} trailing bytes", bytes.len() - used),
        });
    }
    Ok(value)
}

/// The version every record starts with.
fn version_of(what: &'static str, bytes: &[u8]) -> Result<u16, CodecError> {
    bincode::serde::decode_from_slice(bytes, decode_config())
        .map(|(version, _)| version)
        .map_err(|source| CodecError::Decode { what, source })
}

/// Decodes a header (version 1 or 2).
///
/// # Errors
/// Truncated or corrupt bytes, an unknown version, or a shape that cannot be.
pub fn decode_header(bytes: &[u8]) -> Result<Header, CodecError> {
    let header = match version_of("header", bytes)? {
        CODEC_V1 => decode::<Header>("header", bytes)?,
        CODEC_VERSION => {
            let h: HeaderV2<'static> = decode("header", bytes)?;
            Header {
                version: h.version,
                rule: h.rule.into_owned(),
                series_prefix: h.series_prefix.into_owned(),
                series_labels: h.series_labels.map(Cow::into_owned),
                shape: h.shape.into_owned(),
                newest: None,
                head: 0,
            }
        }
        found => {
            return Err(CodecError::Version {
                what: "header",
                found,
            })
        }
    };
    check_header(&header).map_err(|detail| CodecError::Invalid {
        what: "header",
        detail,
    })?;
    Ok(header)
}

/// A saved header holds a shape config could have made (so bucket
/// arithmetic cannot overflow and cells can hold its specials) and a
/// head inside the ring.
fn check_header(header: &Header) -> Result<(), String> {
    let shape = &header.shape;
    let (limit, tf) = (u64::from(shape.limit), shape.timeframe_secs);
    if limit == 0 || limit > shape.value_size.max_limit() || header.head >= shape.limit {
        return Err(format!(
            "limit {limit}, head {}: expected 1 ≤ limit ≤ {} and head < limit",
            header.head,
            shape.value_size.max_limit()
        ));
    }
    if tf == 0 || tf > MAX_TIMEFRAME_SECS || limit * tf > MAX_WINDOW_SECS {
        return Err(format!(
            "timeframe {tf}s, window {limit} × {tf}s: expected 1 ≤ timeframe ≤ \
             {MAX_TIMEFRAME_SECS}s and a window ≤ {MAX_WINDOW_SECS}s"
        ));
    }
    if shape.specials.len() > MAX_SPECIALS {
        return Err(format!(
            "{} specials, expected at most {MAX_SPECIALS}",
            shape.specials.len()
        ));
    }
    check_newest(header.newest, tf)
}

/// The newest bucket's start, in milliseconds, fits a timestamp.
fn check_newest(newest: Option<u64>, timeframe_secs: u64) -> Result<(), String> {
    match newest {
        Some(n) if n.checked_mul(timeframe_secs * 1000).is_none() => Err(format!(
            "newest bucket {n} of {timeframe_secs}s is past the last timestamp"
        )),
        _ => Ok(()),
    }
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
            dirty.header = Some(encode(&HeaderV2 {
                version: CODEC_VERSION,
                rule: Cow::Borrowed(rule),
                series_prefix: Cow::Borrowed(series_prefix),
                series_labels: series_labels.map(Cow::Borrowed),
                shape: Cow::Borrowed(&self.shape),
            }));
            self.header_dirty = false;
        }
        let limit = self.shape.limit as usize;
        let mut values = Vec::with_capacity(PAGE_BUCKETS);
        let mut scratch = Vec::new();
        for word_index in 0..self.dirty_pages.words() {
            let mut bits = self.dirty_pages.take_word(word_index);
            while bits != 0 {
                let page = word_index * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let range = page * PAGE_BUCKETS..((page + 1) * PAGE_BUCKETS).min(limit);
                values.clear();
                self.cells.page_values(range.clone(), &mut values);
                let means = self.means.as_deref().map_or(&[][..], |m| &m[range]);
                let page_bytes = encode_with(
                    &mut scratch,
                    &PageV2 {
                        version: CODEC_VERSION,
                        newest: self.newest,
                        head: self.head,
                        cells: Cow::Borrowed(&values),
                        means: Cow::Borrowed(means),
                    },
                );
                dirty.pages.push((page as u32, page_bytes));
            }
        }
        dirty
    }

    /// Rebuilds an archive from its header and pages (version 1 or 2). A
    /// page that does not decode is left empty and reported in the
    /// returned list. The head is the one of the page saved last (greatest
    /// newest bucket), or the version 1 header's.
    pub fn restore<'a>(
        header: &Header,
        pages: impl IntoIterator<Item = (u32, &'a [u8])>,
    ) -> (Archive, Vec<CodecError>) {
        let mut archive = Archive::new(header.shape.clone());
        archive.header_dirty = false;
        let mut head = (header.newest, header.head);
        let mut errors = Vec::new();
        for (page, bytes) in pages {
            match archive.load_page(page, bytes) {
                Ok(Some(page_head)) if page_head.0 > head.0 => head = page_head,
                Ok(_) => {}
                Err(e) => errors.push(e),
            }
        }
        (archive.newest, archive.head) = head;
        (archive, errors)
    }

    /// Loads one page; returns the head a version 2 page carries.
    fn load_page(
        &mut self,
        page: u32,
        bytes: &[u8],
    ) -> Result<Option<(Option<u64>, u32)>, CodecError> {
        let limit = self.shape.limit as usize;
        let start = page as usize * PAGE_BUCKETS;
        let len = PAGE_BUCKETS.min(limit.saturating_sub(start));
        let invalid = |detail: String| CodecError::Invalid {
            what: "page",
            detail: format!("page {page}: {detail}"),
        };
        let means_ok = |means: &[f64]| self.means.is_none() || means.len() == len;
        match version_of("page", bytes)? {
            CODEC_V1 => {
                let p: PageV1 = decode("page", bytes)?;
                let width = self.cells.width();
                if len == 0 || p.cells.len() != len * width || !means_ok(&p.means) {
                    return Err(invalid(format!(
                        "{} cell bytes, expected {}",
                        p.cells.len(),
                        len * width
                    )));
                }
                self.cells.load_raw(start, &p.cells);
                self.check_specials(start, len).map_err(invalid)?;
                self.load_means(start, &p.means);
                Ok(None)
            }
            CODEC_VERSION => {
                let p: PageV2<'static> = decode("page", bytes)?;
                if len == 0 || p.cells.len() != len || !means_ok(&p.means) {
                    return Err(invalid(format!("{} cells, expected {len}", p.cells.len())));
                }
                if p.head >= self.shape.limit {
                    return Err(invalid(format!("head {}, expected < {limit}", p.head)));
                }
                check_newest(p.newest, self.shape.timeframe_secs).map_err(invalid)?;
                if !self.cells.load_page_values(start, &p.cells) {
                    return Err(invalid("a cell too wide for the value size".into()));
                }
                self.check_specials(start, len).map_err(invalid)?;
                self.load_means(start, &p.means);
                Ok(Some((p.newest, p.head)))
            }
            found => Err(CodecError::Version {
                what: "page",
                found,
            }),
        }
    }

    /// A loaded page may only hold specials its shape defines: reading a
    /// cell looks its special up by index. One that does not is left empty.
    fn check_specials(&mut self, start: usize, len: usize) -> Result<(), String> {
        let defined = self.shape.specials.len();
        let unknown = (start..start + len).find_map(|pos| match self.cells.get(pos) {
            Cell::Special(tag) if usize::from(tag) > defined => Some(tag),
            _ => None,
        });
        let Some(tag) = unknown else {
            return Ok(());
        };
        for pos in start..start + len {
            self.cells.set(pos, Cell::Empty);
        }
        Err(format!("special {tag}, the shape defines {defined}"))
    }

    fn load_means(&mut self, start: usize, page: &[f64]) {
        if let Some(means) = self.means.as_mut() {
            means[start..start + page.len()].copy_from_slice(page);
        }
    }
}

/// Version 1 records of a whole archive, as earlier builds wrote them, for
/// the tests that check they are still read.
#[cfg(test)]
pub(crate) fn encode_v1(
    archive: &Archive,
    rule: &str,
    prefix: &str,
) -> (Vec<u8>, Vec<(u32, Vec<u8>)>) {
    #[derive(Serialize)]
    struct PageV1Out {
        version: u16,
        cells: Vec<u8>,
        means: Vec<f64>,
    }
    let header = encode(&Header {
        version: CODEC_V1,
        rule: rule.to_owned(),
        series_prefix: prefix.to_owned(),
        series_labels: None,
        shape: archive.shape.clone(),
        newest: archive.newest,
        head: archive.head,
    });
    let limit = archive.shape.limit as usize;
    let pages = (0..limit.div_ceil(PAGE_BUCKETS))
        .map(|page| {
            let range = page * PAGE_BUCKETS..((page + 1) * PAGE_BUCKETS).min(limit);
            let cells = archive.cells.raw_bytes(range.clone());
            let means = archive
                .means
                .as_deref()
                .map_or(Vec::new(), |m| m[range].to_vec());
            let bytes = encode(&PageV1Out {
                version: CODEC_V1,
                cells,
                means,
            });
            (page as u32, bytes)
        })
        .collect();
    (header, pages)
}

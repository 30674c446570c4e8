//! Log repair for `ringdb recover`: lets sled read past a damaged record.
//!
//! sled 0.34 recovers its log message by message and stops at the first
//! one whose checksum fails, taking it for the end of the log: one flipped
//! bit early in `db` silently loses everything written after it. This
//! module walks the log of a *scratch copy* the way sled does (segments of
//! `segment_size` bytes, a 20-byte segment header, then messages: crc32
//! u32 LE, kind u8, then varint len, segment number and page id), and turns
//! each damaged message that has a sound message after it in its segment
//! into a `Canceled` message spanning the gap, with a valid checksum.
//! sled skips `Canceled` messages, so recovery goes on past it; what is
//! lost is that one message (one tree-page update). A damaged message with
//! nothing sound after it is the real end of the log and stays.
//!
//! [`check_file`] is the read-only half, run before the daemon opens the
//! store: sled's recovery overwrites the log after the point where it
//! stopped, so a damaged record must be found before sled sees it.
//!
//! The layout is sled 0.34's (`pagecache/logger.rs`, `serialization.rs`,
//! `lib.rs::calculate_message_crc32`); a sled upgrade must revisit it.
//! No sled calls: bytes in, bytes out.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// sled's default segment size, used when `conf` is unreadable.
pub const DEFAULT_SEGMENT_BYTES: usize = 512 * 1024;

const SEG_HEADER_LEN: usize = 20;
const MAX_MSG_HEADER_LEN: usize = 32;
const KIND_CANCELED: u8 = 1;
const KIND_CAP: u8 = 2;
const KIND_FREE: u8 = 4;
const KIND_INLINE_NODE: u8 = 8;
const KIND_INLINE_LINK: u8 = 10;
const KIND_MAX: u8 = 11;

/// What a repair changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repair {
    /// Damaged messages turned into `Canceled` ones: (file offset, bytes).
    pub canceled: Vec<(usize, usize)>,
    /// Segments whose header checksum fails (left alone: sled skips them).
    pub bad_segment_headers: Vec<usize>,
}

/// The segment size written in sled's `conf` text, if readable.
pub fn segment_size(conf: &[u8]) -> Option<usize> {
    String::from_utf8_lossy(conf)
        .lines()
        .find_map(|l| l.strip_prefix("segment_size: "))
        .and_then(|n| n.trim().parse().ok())
        .filter(|n: &usize| n.is_power_of_two() && *n >= 256)
}

/// The segment size of the store in `dir`, from its `conf`, else sled's
/// default.
pub fn segment_size_of(dir: &Path) -> usize {
    std::fs::read(dir.join("conf"))
        .ok()
        .and_then(|conf| segment_size(&conf))
        .unwrap_or(DEFAULT_SEGMENT_BYTES)
}

/// Repairs the log file `path` in place, segment by segment (see
/// [`repair`]).
///
/// # Errors
/// The file cannot be read or written.
pub fn repair_file(path: &Path, segment_bytes: usize, free_pages: bool) -> io::Result<Repair> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut total = Repair::default();
    for_each_segment(&file, segment_bytes, |base, segment| {
        let part = repair(segment, segment_bytes, free_pages);
        let changed = !part.canceled.is_empty();
        total
            .canceled
            .extend(part.canceled.iter().map(|&(at, n)| (base + at, n)));
        total
            .bad_segment_headers
            .extend(part.bad_segment_headers.iter().map(|at| base + at));
        if changed {
            file.write_all_at(segment, base as u64)?;
        }
        Ok(())
    })?;
    Ok(total)
}

/// The file offset of the first damaged record of the log file `path`
/// that sled would take for the end of its log although sound records
/// follow it in its segment (sled would lose them, and writing on would
/// overwrite them). Only a record whose header still reads (a known kind,
/// this segment's number, a length that fits) and whose checksum fails
/// counts: unwritten space (zeros) or an older use of the segment, which
/// a kill -9 can leave between records, does not. Read-only.
///
/// # Errors
/// The file cannot be read.
pub fn check_file(path: &Path, segment_bytes: usize) -> io::Result<Option<usize>> {
    let file = std::fs::File::open(path)?;
    let mut found = None;
    for_each_segment(&file, segment_bytes, |base, segment| {
        if found.is_none() {
            found = damaged_in_segment(segment, segment_bytes).map(|at| base + at);
        }
        Ok(())
    })?;
    Ok(found)
}

/// A record read straight from the log: the log position (LSN) of the
/// message that last wrote it, and its value (`None`: deleted).
pub type RawRecords = std::collections::BTreeMap<Vec<u8>, (u64, Option<Vec<u8>>)>;

/// Reads the records of the log file `path` without sled: the last whole
/// tree node of every page, with the later updates of that page applied,
/// and for each key the newest write over all pages. For a log sled
/// cannot replay (segments lost to truncation); records of pages whose
/// node is lost, and values kept in blob files, are not found.
///
/// # Errors
/// The file cannot be read.
pub fn scan_records(path: &Path, segment_bytes: usize) -> io::Result<RawRecords> {
    let file = std::fs::File::open(path)?;
    // page id → messages (lsn, kind, body)
    let mut pages: std::collections::HashMap<u64, Vec<(u64, u8, Vec<u8>)>> = Default::default();
    for_each_segment(&file, segment_bytes, |_, segment| {
        if segment.len() < SEG_HEADER_LEN + MAX_MSG_HEADER_LEN {
            return Ok(());
        }
        let Some(number) = segment_number(&segment[..SEG_HEADER_LEN], segment_bytes) else {
            return Ok(());
        };
        let seg_lsn = number * segment_bytes as u64;
        let end = segment.len();
        let mut at = SEG_HEADER_LEN;
        while end - at >= MAX_MSG_HEADER_LEN {
            let Some((kind, len)) = message_at(segment, at, end, number) else {
                match next_sound(segment, at, end, number) {
                    Some(next) => {
                        at = next;
                        continue;
                    }
                    None => break,
                }
            };
            if kind == KIND_CAP {
                break;
            }
            if kind == KIND_INLINE_NODE || kind == KIND_INLINE_LINK {
                let mut p = at + 5;
                let body_len = varint(segment, &mut p).unwrap_or(0) as usize;
                let _seg = varint(segment, &mut p);
                let pid = varint(segment, &mut p).unwrap_or(0);
                let body = segment[p..p + body_len].to_vec();
                pages
                    .entry(pid)
                    .or_default()
                    .push((seg_lsn + at as u64, kind, body));
            }
            at += len;
        }
        Ok(())
    })?;
    let mut records = RawRecords::new();
    for (_, mut messages) in pages {
        messages.sort_by_key(|m| m.0);
        let Some(base) = messages.iter().rposition(|m| m.1 == KIND_INLINE_NODE) else {
            continue; // the page's node is lost: its keys cannot be rebuilt
        };
        let Some((prefix, mut leaf)) = decode_leaf(&messages[base].2, messages[base].0) else {
            continue; // an index node, or unreadable
        };
        for (lsn, _, body) in &messages[base + 1..] {
            apply_link(&mut leaf, body, *lsn);
        }
        for (suffix, (lsn, value)) in leaf {
            let key = [prefix.as_slice(), &suffix].concat();
            match records.get(&key) {
                Some((newer, _)) if *newer >= lsn => {}
                _ => {
                    records.insert(key, (lsn, value));
                }
            }
        }
    }
    Ok(records)
}

/// A leaf node's key prefix and its (key suffix → (lsn, value)) entries.
type Leaf = std::collections::BTreeMap<Vec<u8>, (u64, Option<Vec<u8>>)>;

/// Decodes a serialized sled `Node` (next, merging_child, merging,
/// prefix_len, lo, hi, data); `None` for an index node.
fn decode_leaf(body: &[u8], lsn: u64) -> Option<(Vec<u8>, Leaf)> {
    let mut p = 0;
    let _next = varint(body, &mut p)?;
    let _merging_child = varint(body, &mut p)?;
    let _merging = *body.get(p)?;
    let prefix_len = usize::from(*body.get(p + 1)?);
    p += 2;
    let lo = ivec(body, &mut p)?;
    let _hi = ivec(body, &mut p)?;
    if *body.get(p)? != 0 {
        return None; // Data::Index
    }
    p += 1;
    let count = usize::try_from(varint(body, &mut p)?).ok()?;
    let mut keys = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        keys.push(ivec(body, &mut p)?.to_vec());
    }
    let mut leaf = Leaf::new();
    for key in keys {
        let value = ivec(body, &mut p)?.to_vec();
        leaf.insert(key, (lsn, Some(value)));
    }
    Some((lo.get(..prefix_len)?.to_vec(), leaf))
}

/// Applies a serialized sled `Link` (Set or Del) to `leaf`.
fn apply_link(leaf: &mut Leaf, body: &[u8], lsn: u64) {
    let mut p = 1;
    match body.first() {
        Some(0) => {
            let Some(k) = ivec(body, &mut p).map(<[u8]>::to_vec) else {
                return;
            };
            if let Some(v) = ivec(body, &mut p) {
                leaf.insert(k, (lsn, Some(v.to_vec())));
            }
        }
        Some(1) => {
            if let Some(k) = ivec(body, &mut p) {
                leaf.insert(k.to_vec(), (lsn, None));
            }
        }
        _ => {}
    }
}

/// A length-prefixed byte string (sled's `IVec` serialization).
fn ivec<'a>(buf: &'a [u8], p: &mut usize) -> Option<&'a [u8]> {
    let len = usize::try_from(varint(buf, p)?).ok()?;
    let bytes = buf.get(*p..p.checked_add(len)?)?;
    *p += len;
    Some(bytes)
}

/// Calls `f(offset, bytes)` for each segment of `file`.
fn for_each_segment(
    file: &std::fs::File,
    segment_bytes: usize,
    mut f: impl FnMut(usize, &mut [u8]) -> io::Result<()>,
) -> io::Result<()> {
    let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
    let mut buf = vec![0; segment_bytes];
    let mut base = 0;
    while base < len {
        let n = segment_bytes.min(len - base);
        file.read_exact_at(&mut buf[..n], base as u64)?;
        f(base, &mut buf[..n])?;
        base += segment_bytes;
    }
    Ok(())
}

fn damaged_in_segment(segment: &[u8], segment_bytes: usize) -> Option<usize> {
    if segment.len() < SEG_HEADER_LEN + MAX_MSG_HEADER_LEN {
        return None;
    }
    let number = segment_number(&segment[..SEG_HEADER_LEN], segment_bytes)?;
    let end = segment.len();
    let mut at = SEG_HEADER_LEN;
    while end - at >= MAX_MSG_HEADER_LEN {
        match message_at(segment, at, end, number) {
            Some((KIND_CAP, _)) => return None,
            Some((_, len)) => at += len,
            None => {
                let plausible = header_reads(segment, at, end, number);
                let sound_after = next_sound(segment, at, end, number).is_some();
                return (plausible && sound_after).then_some(at);
            }
        }
    }
    None
}

/// True when the message header at `at` reads: a known kind, this
/// segment's number, a length that fits.
fn header_reads(log: &[u8], at: usize, end: usize, number: u64) -> bool {
    let Some(&kind) = log.get(at + 4) else {
        return false;
    };
    let mut p = at + 5;
    let (Some(len), Some(seg), Some(_pid)) = (
        varint(log, &mut p),
        varint(log, &mut p),
        varint(log, &mut p),
    ) else {
        return false;
    };
    (1..=KIND_MAX).contains(&kind)
        && seg == number
        && usize::try_from(len).is_ok_and(|len| p.saturating_add(len) <= end)
}

/// Repairs `log` (whole segments of sled's `db` file) in place. With
/// `free_pages`, a damaged tree-page message whose header still reads
/// becomes a `Free` of that page (then `Canceled` for the rest): sled
/// panics ("tried to serialize Uninitialized") on a page left with no
/// state at all, and reads around a freed one.
pub fn repair(log: &mut [u8], segment_bytes: usize, free_pages: bool) -> Repair {
    let mut repair = Repair::default();
    let mut base = 0;
    while base + SEG_HEADER_LEN + MAX_MSG_HEADER_LEN <= log.len() {
        let end = (base + segment_bytes).min(log.len());
        match segment_number(&log[base..base + SEG_HEADER_LEN], segment_bytes) {
            Some(number) => repair_segment(log, base, end, number, free_pages, &mut repair),
            None => repair.bad_segment_headers.push(base),
        }
        base += segment_bytes;
    }
    repair
}

/// The segment number of a sound segment header.
fn segment_number(header: &[u8], segment_bytes: usize) -> Option<u64> {
    let stored = u32::from_le_bytes(header[0..4].try_into().ok()?) ^ 0xFFFF_FFFF;
    if crc32(&header[4..20]) != stored {
        return None;
    }
    let lsn = u64::from_le_bytes(header[4..12].try_into().ok()?) ^ 0x7FFF_FFFF_FFFF_FFFF;
    Some(lsn / segment_bytes as u64)
}

fn repair_segment(
    log: &mut [u8],
    base: usize,
    end: usize,
    number: u64,
    free_pages: bool,
    repair: &mut Repair,
) {
    let mut at = base + SEG_HEADER_LEN;
    while end - at >= MAX_MSG_HEADER_LEN {
        match message_at(log, at, end, number) {
            Some((KIND_CAP, _)) => return,
            Some((_, len)) => at += len,
            None => {
                // The next sound message in this segment, if any.
                let Some(next) = next_sound(log, at, end, number) else {
                    return; // the end of the log, or a tail lost for good
                };
                let mut from = at;
                if free_pages {
                    if let Some(pid) = page_of_damaged(log, at, number) {
                        let free = header_bytes(KIND_FREE, 0, number, pid, &[]);
                        if at + free.len() < next {
                            log[at..at + free.len()].copy_from_slice(&free);
                            from = at + free.len();
                        }
                    }
                }
                if !write_canceled(log, from, next, number) {
                    return;
                }
                repair.canceled.push((at, next - at));
                at = next;
            }
        }
    }
}

/// The offset of the first sound message after `at` in this segment.
fn next_sound(log: &[u8], at: usize, end: usize, number: u64) -> Option<usize> {
    (at + 1..end.saturating_sub(MAX_MSG_HEADER_LEN))
        .find(|&p| message_at(log, p, end, number).is_some())
}

/// (kind, total length) of a sound message at `at`.
fn message_at(log: &[u8], at: usize, end: usize, number: u64) -> Option<(u8, usize)> {
    let stored = u32::from_le_bytes(log.get(at..at + 4)?.try_into().ok()?);
    let kind = *log.get(at + 4)?;
    if kind == 0 || kind > KIND_MAX {
        return None;
    }
    let mut p = at + 5;
    let len = varint(log, &mut p)?;
    let seg = varint(log, &mut p)?;
    let _pid = varint(log, &mut p)?;
    if seg != number {
        return None;
    }
    let body_end = p.checked_add(usize::try_from(len).ok()?)?;
    if body_end > end {
        return None;
    }
    (message_crc(&log[at..p], &log[p..body_end]) == stored).then_some((kind, body_end - at))
}

/// The page id of a damaged tree-page message (node or link, inline or
/// blob) whose header still reads with this segment's number.
fn page_of_damaged(log: &[u8], at: usize, number: u64) -> Option<u64> {
    let kind = *log.get(at + 4)?;
    if !(KIND_INLINE_NODE..=KIND_MAX).contains(&kind) {
        return None;
    }
    let mut p = at + 5;
    let _len = varint(log, &mut p)?;
    let seg = varint(log, &mut p)?;
    let pid = varint(log, &mut p)?;
    (seg == number).then_some(pid)
}

/// A message header with its checksum over `body`.
fn header_bytes(kind: u8, len: u64, number: u64, pid: u64, body: &[u8]) -> Vec<u8> {
    let mut header = vec![0, 0, 0, 0, kind];
    header.extend_from_slice(&encode_varint(len));
    header.extend_from_slice(&encode_varint(number));
    header.extend_from_slice(&encode_varint(pid));
    let crc = message_crc(&header, body);
    header[..4].copy_from_slice(&crc.to_le_bytes());
    header
}

/// sled's `calculate_message_crc32`: body, then the header after the crc.
fn message_crc(header: &[u8], body: &[u8]) -> u32 {
    let mut c = Crc::default();
    c.update(body);
    c.update(&header[4..]);
    c.finish() ^ 0xFFFF_FFFF
}

/// Writes a `Canceled` message header at `at` whose body ends at `next`;
/// false when the gap is too short for a header.
fn write_canceled(log: &mut [u8], at: usize, next: usize, number: u64) -> bool {
    let gap = next - at;
    let seg = encode_varint(number);
    for len_bytes in 1..=9 {
        let header_len = 5 + len_bytes + seg.len() + 1;
        let Some(len) = gap.checked_sub(header_len) else {
            return false;
        };
        let len_enc = encode_varint(len as u64);
        if len_enc.len() != len_bytes {
            continue;
        }
        let header = header_bytes(
            KIND_CANCELED,
            len as u64,
            number,
            0,
            &log[at + header_len..next],
        );
        log[at..at + header_len].copy_from_slice(&header);
        return true;
    }
    false
}

/// sled's varint (serialization.rs `impl Serialize for u64`).
fn varint(buf: &[u8], p: &mut usize) -> Option<u64> {
    let first = *buf.get(*p)?;
    let (value, size) = match first {
        0..=240 => (u64::from(first), 1),
        241..=248 => (
            240 + 256 * (u64::from(first) - 241) + u64::from(*buf.get(*p + 1)?),
            2,
        ),
        249 => (
            2288 + 256 * u64::from(*buf.get(*p + 1)?) + u64::from(*buf.get(*p + 2)?),
            3,
        ),
        other => {
            let n = usize::from(other) - 247;
            let mut bytes = [0; 8];
            bytes[..n].copy_from_slice(buf.get(*p + 1..*p + 1 + n)?);
            (u64::from_le_bytes(bytes), n + 1)
        }
    };
    *p += size;
    Some(value)
}

fn encode_varint(v: u64) -> Vec<u8> {
    if v <= 240 {
        vec![v as u8]
    } else if v <= 2287 {
        vec![((v - 240) / 256 + 241) as u8, ((v - 240) % 256) as u8]
    } else if v <= 67823 {
        vec![249, ((v - 2288) / 256) as u8, ((v - 2288) % 256) as u8]
    } else {
        let bytes = v.to_le_bytes();
        let n = 8 - (v.leading_zeros() / 8) as usize;
        let n = n.max(3);
        let mut out = vec![(247 + n) as u8];
        out.extend_from_slice(&bytes[..n]);
        out
    }
}

/// CRC-32 (IEEE), as crc32fast computes it; one table lookup a byte.
#[derive(Default)]
struct Crc(u32);

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

impl Crc {
    fn update(&mut self, bytes: &[u8]) {
        let mut c = !self.0;
        for &b in bytes {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
        }
        self.0 = !c;
    }

    fn finish(&self) -> u32 {
        self.0
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = Crc::default();
    c.update(bytes);
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_varint_match_sled() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926, "CRC-32 check value");
        for v in [
            0,
            240,
            241,
            2287,
            2288,
            67823,
            67824,
            0xFF_FFFF,
            1 << 40,
            u64::MAX,
        ] {
            let enc = encode_varint(v);
            let mut p = 0;
            assert_eq!(varint(&enc, &mut p), Some(v), "{v}");
            assert_eq!(p, enc.len(), "{v}");
        }
    }

    /// A sled log of `n` single-key writes, and its first segment's
    /// message offsets.
    fn sled_log(dir: &Path, n: u32) -> (Vec<u8>, Vec<usize>) {
        let db = crate::snapshot::open_sled(dir).unwrap();
        for i in 0..n {
            db.insert(format!("key-{i:05}"), vec![i as u8; 100])
                .unwrap();
        }
        db.flush().unwrap();
        drop(db);
        let log = std::fs::read(dir.join("db")).unwrap();
        let number = segment_number(&log[..SEG_HEADER_LEN], DEFAULT_SEGMENT_BYTES).unwrap();
        let end = log.len().min(DEFAULT_SEGMENT_BYTES);
        let mut starts = Vec::new();
        let mut at = SEG_HEADER_LEN;
        while let Some((_, len)) = message_at(&log, at, end, number) {
            starts.push(at);
            at += len;
        }
        (log, starts)
    }

    fn keys_sled_reads(dir: &Path) -> usize {
        crate::snapshot::open_sled(dir).unwrap().len()
    }

    #[test]
    fn damage_is_flagged_and_skipped_unwritten_space_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (log, starts) = sled_log(dir.path(), 2000);
        assert!(starts.len() > 1000, "{} messages", starts.len());
        let (a, b) = (starts[starts.len() / 3], starts[starts.len() / 3 + 1]);
        let file = dir.path().join("db");
        struct Case {
            name: &'static str,
            damage: fn(&mut [u8], usize, usize),
            flagged: bool,
        }
        let cases = [
            Case {
                name: "sound",
                damage: |_, _, _| {},
                flagged: false,
            },
            Case {
                name: "flipped body bit",
                damage: |l, _, b| l[b - 1] ^= 0x04,
                flagged: true,
            },
            Case {
                name: "flipped crc bit",
                damage: |l, a, _| l[a] ^= 0x80,
                flagged: true,
            },
            Case {
                name: "unwritten space (a kill -9 between two writes)",
                damage: |l, a, b| l[a..b].fill(0),
                flagged: false,
            },
        ];
        for c in cases {
            let mut damaged = log.clone();
            (c.damage)(&mut damaged, a, b);
            std::fs::write(&file, &damaged).unwrap();
            let found = check_file(&file, DEFAULT_SEGMENT_BYTES).unwrap();
            assert_eq!(found, c.flagged.then_some(a), "{}", c.name);
            if !c.flagged {
                continue;
            }
            // sled alone stops at the damage; repaired, it reads past it.
            let scratch = tempfile::tempdir().unwrap();
            std::fs::write(scratch.path().join("db"), &damaged).unwrap();
            std::fs::copy(dir.path().join("conf"), scratch.path().join("conf")).unwrap();
            assert!(
                keys_sled_reads(scratch.path()) < 1999,
                "{}: sled alone",
                c.name
            );
            let scratch = tempfile::tempdir().unwrap();
            let copy = scratch.path().join("db");
            std::fs::write(&copy, &damaged).unwrap();
            std::fs::copy(dir.path().join("conf"), scratch.path().join("conf")).unwrap();
            let repair = repair_file(&copy, DEFAULT_SEGMENT_BYTES, false).unwrap();
            assert_eq!(repair.canceled, vec![(a, b - a)], "{}", c.name);
            assert!(keys_sled_reads(scratch.path()) >= 1999, "{}", c.name);
        }
    }

    #[test]
    fn segment_size_from_conf() {
        let cases: [(&str, &[u8], Option<usize>); 3] = [
            (
                "sled's conf",
                b"segment_size: 524288\nuse_compression: false\n",
                Some(524288),
            ),
            ("damaged", b"segment_size: 52x288\n", None),
            ("not a power of two", b"segment_size: 1000\n", None),
        ];
        for (name, conf, want) in cases {
            assert_eq!(segment_size(conf), want, "{name}");
        }
    }
}

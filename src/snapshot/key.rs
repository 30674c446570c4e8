//! Record keys of the snapshot store: which archive (series, rule) and
//! which record (header or page) a sled key names. Pure byte functions, no
//! sled.
//!
//! Format 3 (written since issue 15): `H` + u32 len + series + u32 len +
//! rule → header; `P` + the same + u32 page → page. Lengths are big-endian
//! u32, so no accepted series key can overflow them (format 2 used u16 and
//! dropped keys over 65,535 bytes as "corrupt"). Keys of formats 1 and 2
//! (`h` / `p` with u16 lengths) are still read: [`upgrade_legacy`] rewrites
//! them when a store is opened.

/// Tag of a header record.
pub const HEADER: u8 = b'H';
/// Tag of a page record.
pub const PAGE: u8 = b'P';
/// Tags of formats 1 and 2 (u16 lengths).
pub const LEGACY_HEADER: u8 = b'h';
/// See [`LEGACY_HEADER`].
pub const LEGACY_PAGE: u8 = b'p';

/// `tag` + u32 len + series: the prefix of every record of a series.
pub fn series_prefix(tag: u8, series: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + series.len());
    key.push(tag);
    push_str(&mut key, series);
    key
}

/// The key of an archive's header (`tag` [`HEADER`]), or the prefix of its
/// pages (`tag` [`PAGE`]).
pub fn archive_key(tag: u8, series: &str, rule: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(13 + series.len() + rule.len());
    key.push(tag);
    push_str(&mut key, series);
    push_str(&mut key, rule);
    key
}

/// The key of page `page` of an archive.
pub fn page_key(series: &str, rule: &str, page: u32) -> Vec<u8> {
    let mut key = archive_key(PAGE, series, rule);
    key.extend_from_slice(&page.to_be_bytes());
    key
}

fn push_str(key: &mut Vec<u8>, s: &str) {
    // Series keys are capped far below 4 GiB (limits.max_series_key_bytes
    // ≤ 65,535, rule names by the config); saturating keeps a bad length
    // from wrapping into a key that parses as another archive.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(s.as_bytes());
}

/// A parsed record key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordKey<'a> {
    /// [`HEADER`] or [`PAGE`] (after [`parse`]), or the legacy tags.
    pub tag: u8,
    /// Series key.
    pub series: &'a str,
    /// Rule name.
    pub rule: &'a str,
    /// Page number (pages only).
    pub page: Option<u32>,
}

/// Splits a format 3 key; `None` when it is not one.
pub fn parse(key: &[u8]) -> Option<RecordKey<'_>> {
    parse_with(key, 4, HEADER, PAGE)
}

/// Splits a format 1/2 key (u16 lengths); `None` when it is not one.
pub fn parse_legacy(key: &[u8]) -> Option<RecordKey<'_>> {
    parse_with(key, 2, LEGACY_HEADER, LEGACY_PAGE)
}

fn parse_with(key: &[u8], width: usize, header: u8, page: u8) -> Option<RecordKey<'_>> {
    let (&tag, rest) = key.split_first()?;
    if tag != header && tag != page {
        return None;
    }
    let (series, rest) = take_str(rest, width)?;
    let (rule, rest) = take_str(rest, width)?;
    let page = match (tag == page, rest) {
        (false, []) => None,
        (true, [a, b, c, d]) => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => return None,
    };
    Some(RecordKey {
        tag,
        series,
        rule,
        page,
    })
}

fn take_str(bytes: &[u8], width: usize) -> Option<(&str, &[u8])> {
    let len_bytes = bytes.get(..width)?;
    let len = len_bytes
        .iter()
        .fold(0usize, |n, b| (n << 8) | usize::from(*b));
    let end = width.checked_add(len)?;
    let text = std::str::from_utf8(bytes.get(width..end)?).ok()?;
    Some((text, &bytes[end..]))
}

/// The format 3 key of a format 1/2 key; `None` when `key` is not one.
pub fn upgrade_legacy(key: &[u8]) -> Option<Vec<u8>> {
    let k = parse_legacy(key)?;
    Some(match k.page {
        None => archive_key(HEADER, k.series, k.rule),
        Some(n) => page_key(k.series, k.rule, n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        struct Case {
            name: &'static str,
            series: String,
            rule: &'static str,
            page: Option<u32>,
        }
        let cases = [
            Case {
                name: "socket path",
                series: "traffic-a-b".into(),
                rule: "rule_1",
                page: None,
            },
            Case {
                name: "page",
                series: "s".into(),
                rule: "r",
                page: Some(7),
            },
            Case {
                name: "key over u16",
                series: "x".repeat(70_000),
                rule: "m",
                page: Some(u32::MAX),
            },
            Case {
                name: "empty names",
                series: String::new(),
                rule: "",
                page: None,
            },
        ];
        for c in &cases {
            let key = match c.page {
                None => archive_key(HEADER, &c.series, c.rule),
                Some(n) => page_key(&c.series, c.rule, n),
            };
            let parsed = parse(&key).unwrap_or_else(|| panic!("{}: no parse", c.name));
            assert_eq!(parsed.series, c.series, "{}", c.name);
            assert_eq!(parsed.rule, c.rule, "{}", c.name);
            assert_eq!(parsed.page, c.page, "{}", c.name);
            assert!(parse_legacy(&key).is_none(), "{}", c.name);
        }
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        let header = archive_key(HEADER, "s", "r");
        let cases: [(&str, Vec<u8>); 6] = [
            ("empty", vec![]),
            ("tag only", vec![HEADER]),
            ("short length", vec![HEADER, 0, 0]),
            ("length past the end", vec![HEADER, 0, 0, 0, 9, b'a']),
            (
                "header with a page number",
                [&header[..], &[0, 0, 0, 1]].concat(),
            ),
            ("unknown tag", [b"X", &header[1..]].concat()),
        ];
        for (name, key) in cases {
            assert_eq!(parse(&key), None, "{name}");
        }
        let mut page = archive_key(PAGE, "s", "r");
        page.extend_from_slice(&[0, 1]);
        assert_eq!(parse(&page), None, "page with a 2-byte number");
    }

    #[test]
    fn legacy_keys_upgrade() {
        // Format 2 as written before: u16 lengths.
        let legacy = |tag: u8, series: &str, rule: &str, page: Option<u32>| {
            let mut key = vec![tag];
            key.extend_from_slice(&(series.len() as u16).to_be_bytes());
            key.extend_from_slice(series.as_bytes());
            key.extend_from_slice(&(rule.len() as u16).to_be_bytes());
            key.extend_from_slice(rule.as_bytes());
            if let Some(n) = page {
                key.extend_from_slice(&n.to_be_bytes());
            }
            key
        };
        assert_eq!(
            upgrade_legacy(&legacy(LEGACY_HEADER, "traffic-a", "m", None)),
            Some(archive_key(HEADER, "traffic-a", "m"))
        );
        assert_eq!(
            upgrade_legacy(&legacy(LEGACY_PAGE, "traffic-a", "m", Some(3))),
            Some(page_key("traffic-a", "m", 3))
        );
        assert_eq!(upgrade_legacy(&archive_key(HEADER, "s", "r")), None);
        assert_eq!(upgrade_legacy(b"h\x00"), None);
    }
}

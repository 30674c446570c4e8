//! Plain values shared by every layer: samples, timestamps, values, series
//! keys. No I/O, no clock, no runtime.

use std::time::Duration;

/// Milliseconds since the Unix epoch. Socket samples (seconds) are scaled up,
/// remote_write samples arrive in milliseconds.
pub type TimestampMs = u64;

/// The wall clock, handed down from `app` so that nothing below it reads
/// time on its own (tests pass a fixed clock).
pub type Clock = std::sync::Arc<dyn Fn() -> TimestampMs + Send + Sync>;

/// A sample value as it arrives on the wire, before a rule's cell type
/// decides whether it fits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// An unsigned integer (binary socket protocol).
    Uint(u64),
    /// A float (remote_write, scraping).
    Float(f64),
    /// A 1-based index into a rule's `additional_values`.
    Special(u64),
}

/// One sample for one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When the sample was taken.
    pub timestamp_ms: TimestampMs,
    /// What was measured.
    pub value: Value,
}

/// The bit pattern Prometheus uses to mark a series as stale.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// The prefix of a socket path: the bytes before the first `-`, or the whole
/// path when it has none (DESIGN §1).
pub fn path_prefix(path: &str) -> &str {
    path.split('-').next().unwrap_or(path)
}

/// Checks a socket path: 1..=1024 bytes, no `/` (UTF-8 is guaranteed by
/// `&str`).
///
/// # Errors
/// A message saying what was expected.
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("path is empty, expected 1..1024 bytes".into());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!(
            "path is {} bytes, expected at most {MAX_PATH_BYTES}",
            path.len()
        ));
    }
    if path.contains('/') {
        return Err("path contains '/', which is not allowed".into());
    }
    Ok(())
}

/// Longest socket path accepted (YAWNDB's limit).
pub const MAX_PATH_BYTES: usize = 1024;

/// Whether `name` is a valid Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Whether `name` is a valid Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`).
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A prefix made into a metric name: bad characters become `_` (DESIGN §7).
pub fn metric_name_of_prefix(prefix: &str) -> String {
    let mut out: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// The canonical key of a label-set series: `name{a="b",c="d"}` with the
/// other labels in the given (sorted) order and values escaped as
/// Prometheus prints them; `name` alone when there are no other labels.
pub fn series_key<'a>(name: &str, labels: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut key = String::with_capacity(64);
    key.push_str(name);
    let mut first = true;
    for (k, v) in labels {
        key.push(if first { '{' } else { ',' });
        first = false;
        key.push_str(k);
        key.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => key.push_str("\\\\"),
                '"' => key.push_str("\\\""),
                '\n' => key.push_str("\\n"),
                c => key.push(c),
            }
        }
        key.push('"');
    }
    if !first {
        key.push('}');
    }
    key
}

/// The metric name of a canonical series key (see [`series_key`]): the
/// bytes before its `{`.
pub fn series_key_name(key: &str) -> &str {
    let end = key.bytes().position(|b| b == b'{').unwrap_or(key.len());
    &key[..end]
}

/// The labels other than `__name__` of a canonical series key, in key
/// order, each value still escaped (see [`unescape_label_value`]). Stops at
/// the first byte out of that form; [`labels_of_series_key`] tells whether
/// a key is in it. Scans bytes once: queries call it for every series.
pub fn series_key_labels(key: &str) -> SeriesKeyLabels<'_> {
    let at = series_key_name(key).len() + 1;
    SeriesKeyLabels { key, at }
}

/// Iterator of [`series_key_labels`].
pub struct SeriesKeyLabels<'k> {
    key: &'k str,
    /// Where the next label's name starts.
    at: usize,
}

impl<'k> Iterator for SeriesKeyLabels<'k> {
    type Item = (&'k str, &'k str);

    fn next(&mut self) -> Option<(&'k str, &'k str)> {
        let bytes = self.key.as_bytes();
        let start = self.at;
        let eq = start + bytes.get(start..)?.iter().position(|&b| b == b'=')?;
        if bytes.get(eq + 1) != Some(&b'"') {
            self.at = bytes.len();
            return None;
        }
        let mut i = eq + 2;
        while i < bytes.len() && bytes[i] != b'"' {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        // `=`, `"` and the closing quote are ASCII: these are char bounds.
        let name = self.key.get(start..eq)?;
        let value = self.key.get(eq + 2..i)?;
        // After the closing quote: `,` and the next label, or `}`.
        self.at = i + 2;
        Some((name, value))
    }
}

/// A label value as written in a series key, unescaped (borrowed when it
/// has no escape).
pub fn unescape_label_value(escaped: &str) -> std::borrow::Cow<'_, str> {
    if !escaped.contains('\\') {
        return std::borrow::Cow::Borrowed(escaped);
    }
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => {}
            },
            (c, false) => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The label set a canonical series key stands for, sorted by name with
/// `__name__` in place (absent when the name is empty); `None` when the
/// key is not exactly what [`series_key`] makes of valid names in that
/// order.
pub fn labels_of_series_key(key: &str) -> Option<Vec<(String, String)>> {
    let labels = series_key_label_set(key);
    let name = series_key_name(key);
    let others: Vec<(&str, &str)> = labels
        .iter()
        .filter(|(n, _)| n != "__name__")
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let names_ok = (name.is_empty() || is_metric_name(name))
        && others.iter().all(|(n, _)| is_label_name(n))
        && others.windows(2).all(|w| w[0].0 < w[1].0);
    (names_ok && series_key(name, others.into_iter()) == key).then_some(labels)
}

/// The label set of a key known to be canonical (see
/// [`labels_of_series_key`], which checks), sorted by name with `__name__`
/// in place.
pub fn series_key_label_set(key: &str) -> Vec<(String, String)> {
    let mut labels = Vec::with_capacity(4);
    each_series_key_label(key, &mut |n, v| labels.push((n.to_string(), v.to_string())));
    labels
}

/// Hands each pair of a canonical key's label set to `f`, sorted by name
/// with `__name__` in place, values unescaped, without building the set.
pub fn each_series_key_label(key: &str, f: &mut dyn FnMut(&str, &str)) {
    let name = series_key_name(key);
    let mut name_pending = !name.is_empty();
    for (n, v) in series_key_labels(key) {
        if name_pending && n > "__name__" {
            f("__name__", name);
            name_pending = false;
        }
        f(n, &unescape_label_value(v));
    }
    if name_pending {
        f("__name__", name);
    }
}

/// Parses `10s`, `1m`, `1h30m`, `1d`, `500ms` (units ms, s, m, h, d, w, y).
///
/// # Errors
/// A message saying what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration {text:?}, expected e.g. 10s, 1m, 1h, 1d");
    let mut total: u64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = rest.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_millis(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_text_before_first_dash() {
        let cases = [
            ("stats-a-foo", "stats"),
            ("stats", "stats"),
            ("interface_in-ae0.69", "interface_in"),
            ("-x", ""),
        ];
        for (path, want) in cases {
            assert_eq!(path_prefix(path), want, "case {path}");
        }
    }

    #[test]
    fn canonical_keys_and_names() {
        let labels = [("instance", "a:9090"), ("q", "x\"y\\z\n")];
        assert_eq!(
            series_key("up", labels.into_iter()),
            "up{instance=\"a:9090\",q=\"x\\\"y\\\\z\\n\"}"
        );
        assert_eq!(series_key("up", std::iter::empty()), "up");
        assert!(is_metric_name("a:b_c1") && !is_metric_name("1a") && !is_metric_name(""));
        assert!(is_label_name("_a1") && !is_label_name("a:b"));
        assert_eq!(metric_name_of_prefix("interface_in"), "interface_in");
        assert_eq!(metric_name_of_prefix("if.in"), "if_in");
        assert_eq!(metric_name_of_prefix("5xx"), "_5xx");
    }

    #[test]
    fn series_keys_parse_back_to_their_labels() {
        let pairs = [
            ("Zone", "eu"),
            ("instance", "a:9090"),
            ("q", "x\"y\\z\n,}{="),
        ];
        let key = series_key("up", pairs.into_iter());
        let mut want: Vec<(String, String)> = pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        want.insert(1, ("__name__".into(), "up".into()));
        assert_eq!(labels_of_series_key(&key), Some(want));
        assert_eq!(series_key_name(&key), "up");
        let found: Vec<_> = series_key_labels(&key)
            .map(|(n, v)| (n, unescape_label_value(v).into_owned()))
            .collect();
        assert_eq!(found[2], ("q", "x\"y\\z\n,}{=".to_string()));
        assert_eq!(
            labels_of_series_key("up"),
            Some(vec![("__name__".into(), "up".into())])
        );
        assert_eq!(
            labels_of_series_key("{a=\"b\"}"),
            Some(vec![("a".into(), "b".into())])
        );
        // Not the canonical form: a space, unsorted labels, a truncated
        // key, unquoted or trailing text.
        let bad = [
            "up{a=\"b\", c=\"d\"}",
            "up{c=\"d\",a=\"b\"}",
            "up{a=\"b\"",
            "up{a=b}",
            "up{a=\"b\"}x",
        ];
        for bad in bad {
            assert_eq!(labels_of_series_key(bad), None, "case {bad}");
        }
    }

    #[test]
    fn path_checks() {
        assert!(check_path("a-b").is_ok());
        assert!(check_path("").is_err());
        assert!(check_path("a/b").is_err());
        assert!(check_path(&"x".repeat(1025)).is_err());
        assert!(check_path(&"x".repeat(1024)).is_ok());
    }
}

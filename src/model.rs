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
    fn path_checks() {
        assert!(check_path("a-b").is_ok());
        assert!(check_path("").is_err());
        assert!(check_path("a/b").is_err());
        assert!(check_path(&"x".repeat(1025)).is_err());
        assert!(check_path(&"x".repeat(1024)).is_ok());
    }
}

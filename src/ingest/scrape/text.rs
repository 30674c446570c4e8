//! Sans-I/O parser of the Prometheus text exposition format 0.0.4: bytes
//! in, samples, family metadata and per-line errors out. No clock, no
//! store, no runtime.
//!
//! A malformed line is reported with its 1-based line number and skipped;
//! the rest of the body is still used (as Prometheus' own parser is not:
//! it drops the whole scrape, which for an RRD fed at a fixed interval
//! would punch a hole into every series for one bad line).
//!
//! What a line may be:
//! - empty or only blanks: ignored;
//! - `# HELP name text` (text escapes `\\` and `\n`), `# TYPE name type`
//!   (counter, gauge, histogram, summary, untyped); any other `#` line is a
//!   comment (this includes OpenMetrics' `# EOF` and `# UNIT`);
//! - `name[{label="value",...}] value [timestamp_ms]`, blanks or tabs
//!   between tokens and around `{ , = }`, an optional trailing comma in the
//!   label list, label values with escapes `\\`, `\"`, `\n` (any other
//!   escape is kept as written, as Prometheus keeps it), values as Go's
//!   `ParseFloat` reads them (`NaN`, `+Inf`, `-Inf`, exponents), an integer
//!   timestamp in milliseconds.
//!
//! Histogram (`_bucket{le=…}`, `_sum`, `_count`) and summary
//! (`{quantile=…}`, `_sum`, `_count`) lines are plain samples: the `le` and
//! `quantile` values are kept exactly as the target wrote them.

use crate::model::{is_label_name, is_metric_name};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSample {
    /// Metric name (`__name__`).
    pub name: String,
    /// Other labels in the order written, unescaped; names are unique.
    pub labels: Vec<(String, String)>,
    /// The value; NaN and ±Inf included.
    pub value: f64,
    /// The target's own timestamp in milliseconds, if it gave one.
    pub timestamp_ms: Option<i64>,
}

/// `# TYPE` and `# HELP` of one metric family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Family {
    /// Family name as written after HELP/TYPE.
    pub name: String,
    /// counter, gauge, histogram, summary or untyped (empty: no TYPE line).
    pub kind: String,
    /// HELP text, unescaped (empty: no HELP line).
    pub help: String,
}

/// A line that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What was expected and what was found.
    pub message: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Everything one body held.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    /// Sample lines in body order.
    pub samples: Vec<ParsedSample>,
    /// Families with HELP or TYPE, in order of first mention.
    pub families: Vec<Family>,
    /// Malformed lines, in body order.
    pub errors: Vec<LineError>,
}

const TYPES: &[&str] = &["counter", "gauge", "histogram", "summary", "untyped"];

/// Parses a whole body. Never fails: bad lines land in
/// [`Exposition::errors`].
pub fn parse(body: &[u8]) -> Exposition {
    let mut out = Exposition::default();
    for (index, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => {
                out.errors.push(LineError {
                    line,
                    message: format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                });
                continue;
            }
        };
        if let Err(message) = parse_line(text, &mut out) {
            out.errors.push(LineError { line, message });
        }
    }
    out
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn parse_line(text: &str, out: &mut Exposition) -> Result<(), String> {
    let text = text.trim_start_matches(is_blank);
    if text.is_empty() {
        return Ok(());
    }
    if let Some(comment) = text.strip_prefix('#') {
        return parse_comment(comment, out);
    }
    out.samples.push(parse_sample(text)?);
    Ok(())
}

/// Splits off the next blank-separated token.
fn token(text: &str) -> (&str, &str) {
    let text = text.trim_start_matches(is_blank);
    let end = text.find(is_blank).unwrap_or(text.len());
    (&text[..end], &text[end..])
}

fn parse_comment(comment: &str, out: &mut Exposition) -> Result<(), String> {
    let (keyword, rest) = token(comment);
    if keyword != "HELP" && keyword != "TYPE" {
        return Ok(());
    }
    let (name, rest) = token(rest);
    if !is_metric_name(name) {
        return Err(format!(
            "# {keyword} expects a metric name, found {}",
            shown(name)
        ));
    }
    let rest = rest.strip_prefix(is_blank).unwrap_or(rest);
    let family = family_mut(out, name);
    if keyword == "TYPE" {
        let (kind, trailing) = token(rest);
        if !TYPES.contains(&kind) {
            return Err(format!(
                "# TYPE {name}: unknown type {}, expected one of {}",
                shown(kind),
                TYPES.join(", ")
            ));
        }
        if !trailing.trim_matches(is_blank).is_empty() {
            return Err(format!(
                "# TYPE {name} {kind}: unexpected text after the type: {:?}",
                trailing.trim_matches(is_blank)
            ));
        }
        family.kind = kind.to_string();
    } else {
        family.help = unescape_help(rest);
    }
    Ok(())
}

fn family_mut<'a>(out: &'a mut Exposition, name: &str) -> &'a mut Family {
    let index = match out.families.iter().position(|f| f.name == name) {
        Some(i) => i,
        None => {
            out.families.push(Family {
                name: name.to_string(),
                ..Family::default()
            });
            out.families.len() - 1
        }
    };
    &mut out.families[index]
}

fn unescape_help(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn shown(text: &str) -> String {
    if text.is_empty() {
        "nothing".to_string()
    } else {
        format!("{text:?}")
    }
}

fn parse_sample(text: &str) -> Result<ParsedSample, String> {
    let name_end = text
        .find(|c: char| c == '{' || is_blank(c))
        .unwrap_or(text.len());
    let name = &text[..name_end];
    if !is_metric_name(name) {
        return Err(format!(
            "expected a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*), found {}",
            shown(name)
        ));
    }
    let mut rest = text[name_end..].trim_start_matches(is_blank);
    let mut labels: Vec<(String, String)> = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let (value_text, rest) = token(rest);
    let value = parse_value(value_text).ok_or_else(|| {
        format!(
            "{name}: expected a number value, found {}",
            shown(value_text)
        )
    })?;
    let (ts_text, rest) = token(rest);
    let timestamp_ms = if ts_text.is_empty() {
        None
    } else {
        Some(ts_text.parse::<i64>().map_err(|_| {
            format!("{name}: expected an integer timestamp in milliseconds, found {ts_text:?}")
        })?)
    };
    let trailing = rest.trim_matches(is_blank);
    if !trailing.is_empty() {
        return Err(format!(
            "{name}: unexpected text after the timestamp: {trailing:?}"
        ));
    }
    Ok(ParsedSample {
        name: name.to_string(),
        labels,
        value,
        timestamp_ms,
    })
}

/// Parses `label="value",...}` (the `{` already consumed); returns the text
/// after the closing brace.
fn parse_labels<'a>(
    mut rest: &'a str,
    labels: &mut Vec<(String, String)>,
) -> Result<&'a str, String> {
    loop {
        rest = rest.trim_start_matches(is_blank);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let name_end = rest
            .find(|c: char| c == '=' || is_blank(c))
            .ok_or_else(|| format!("expected label=\"value\" or '}}', found {}", shown(rest)))?;
        let name = &rest[..name_end];
        if !is_label_name(name) {
            return Err(format!(
                "expected a label name ([a-zA-Z_][a-zA-Z0-9_]*), found {}",
                shown(name)
            ));
        }
        if name == "__name__" {
            return Err("label __name__ inside braces; the metric name goes before '{'".into());
        }
        if labels.iter().any(|(n, _)| n == name) {
            return Err(format!("duplicate label {name:?}"));
        }
        rest = rest[name_end..].trim_start_matches(is_blank);
        rest = rest
            .strip_prefix('=')
            .ok_or_else(|| format!("label {name}: expected '=', found {}", shown(rest)))?;
        rest = rest.trim_start_matches(is_blank);
        rest = rest.strip_prefix('"').ok_or_else(|| {
            format!(
                "label {name}: expected a quoted value, found {}",
                shown(rest)
            )
        })?;
        let (value, after) = quoted_value(rest)
            .ok_or_else(|| format!("label {name}: value has no closing quote"))?;
        labels.push((name.to_string(), value));
        rest = after.trim_start_matches(is_blank);
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(format!(
                "after label {name}: expected ',' or '}}', found {}",
                shown(rest)
            ));
        }
    }
}

/// Reads an escaped label value up to its closing quote; returns the value
/// and the text after the quote.
fn quoted_value(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[i + 1..])),
            '\\' => match chars.next()?.1 {
                '\\' => value.push('\\'),
                '"' => value.push('"'),
                'n' => value.push('\n'),
                other => {
                    value.push('\\');
                    value.push(other);
                }
            },
            c => value.push(c),
        }
    }
    None
}

/// A value as Go's `strconv.ParseFloat` reads the exposition format's
/// numbers: decimal and exponent forms, `NaN`, `Inf` with an optional sign
/// (any case).
fn parse_value(text: &str) -> Option<f64> {
    if text.is_empty() {
        return None;
    }
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let special = unsigned.eq_ignore_ascii_case("nan")
        || unsigned.eq_ignore_ascii_case("inf")
        || unsigned.eq_ignore_ascii_case("infinity");
    let numeric = unsigned
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
    if !special && !numeric {
        return None;
    }
    text.parse::<f64>().ok()
}

#[cfg(test)]
mod tests;

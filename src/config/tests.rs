use super::*;
use crate::rrd::{Consolidation, Split, ValueSize};

fn issues(text: &str) -> Vec<String> {
    match parse(text, "test.yaml", Path::new("/etc/ringdb")) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { issues, .. }) => issues.iter().map(|i| i.to_string()).collect(),
        Err(e) => vec![e.to_string()],
    }
}

#[test]
fn embedded_default_is_valid() {
    let s = parse(DEFAULT_CONFIG, "rules.example.yaml", Path::new(".")).unwrap();
    assert_eq!(s.rules.len(), 5);
    let hourly = &s.rules[1];
    assert_eq!(hourly.shape.limit, 720, "retention 30d / 1h");
    assert_eq!(hourly.shape.split, Split::Proportional);
    assert_eq!(s.rules[3].shape.value_size, ValueSize::Float);
    assert_eq!(s.rules[3].shape.consolidation, Consolidation::Avg);
    assert_eq!(s.snapshot_interval, Duration::from_secs(10));
    assert!(s.tls.is_none());
}

#[test]
fn relative_names_follow_the_file() {
    let s = parse(
        "data_dir: d\ntls: {cert: c.pem, key: k.pem, client_ca: ca.pem}\nrules: [{name: a, prefix: p, type: sum, timeframe: 60, limit: 10}]",
        "x",
        Path::new("/etc/ringdb"),
    )
    .unwrap();
    assert_eq!(s.data_dir, Path::new("/etc/ringdb/d"));
    assert_eq!(s.tls.unwrap().client_ca, Path::new("/etc/ringdb/ca.pem"));
}

#[test]
fn every_error_is_reported_at_once() {
    let text = r#"
colour: blue
listen: {socket: "nowhere"}
rules:
  - name: a
    prefix: traffic
    type: mean
    timeframe: 1m
    limit: 70000
    value_size: small
    wat: 1
  - name: a
    prefix: traffic
    type: sum
    timeframe: 0
    limit: 10
    split: sideways
  - name: b
    prefix: x
    type: sum
    timeframe: 60
    limit: 10
    additional_values: [{empty: weak}, {t: maybe}]
"#;
    let got = issues(text);
    let want = [
        "colour: unknown key",
        "listen.socket: expected IP:port",
        "rules[0].wat: unknown key",
        "rules[0].type: unknown value \"mean\"",
        "rules[0].limit: 70000 buckets is beyond",
        "rules[1].name: duplicate rule name \"a\"",
        "rules[1].split: unknown value \"sideways\"",
        "rules[1].timeframe: expected whole seconds",
        "rules[2].additional_values[0].empty: special name \"empty\" is reserved",
        "rules[2].additional_values[1].t: unknown value \"maybe\"",
    ];
    for w in want {
        assert!(
            got.iter().any(|g| g.starts_with(w)),
            "missing {w:?} in {got:#?}"
        );
    }
    assert_eq!(got.len(), want.len(), "{got:#?}");
}

#[test]
fn duplicate_names_and_too_many_specials() {
    let specials: Vec<String> = (0..15).map(|i| format!("{{s{i}: weak}}")).collect();
    let text = format!(
        "rules:\n  - {{name: a, prefix: p, type: sum, timeframe: 60, limit: 10}}\n  - {{name: a, prefix: q, type: sum, timeframe: 60, limit: 10, additional_values: [{}]}}\n",
        specials.join(", ")
    );
    let got = issues(&text);
    assert!(
        got.iter()
            .any(|g| g.starts_with("rules[1].name: duplicate rule name")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|g| g.contains("15 additional values, expected at most 14")),
        "{got:?}"
    );
}

#[test]
fn syntax_error_names_the_line() {
    let err = parse("rules: [", "f.yaml", Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("f.yaml:") && err.contains("line"), "{err}");
}

#[test]
fn durations() {
    let cases = [
        ("10s", Some(10_000)),
        ("1m", Some(60_000)),
        ("1h30m", Some(5_400_000)),
        ("1d", Some(86_400_000)),
        ("500ms", Some(500)),
        ("42", Some(42_000)),
        ("", None),
        ("1x", None),
        ("m", None),
    ];
    for (text, want) in cases {
        assert_eq!(
            parse_duration(text).ok().map(|d| d.as_millis() as u64),
            want,
            "case {text:?}"
        );
    }
}

/// Config numbers are bounded where arithmetic on them could overflow or
/// where a value makes no sense; each case names its key.
#[test]
fn numbers_out_of_range_name_their_key() {
    let rule = "rules: [{name: a, prefix: p, type: sum, timeframe: 60, limit: 10}]";
    let cases = [
        (
            "huge timeframe",
            "rules: [{name: a, prefix: p, type: sum, timeframe: 18446744073709551, limit: 10}]",
            "rules[0].timeframe: expected whole seconds from 1 to",
        ),
        (
            "timeframe over a year",
            "rules: [{name: a, prefix: p, type: sum, timeframe: 400d, limit: 10}]",
            "rules[0].timeframe: expected whole seconds from 1 to",
        ),
        (
            "window over 100 years",
            "rules: [{name: a, prefix: p, type: sum, timeframe: 1d, limit: 40000}]",
            "rules[0].limit: a window of 40000",
        ),
        (
            "zero max_series",
            &format!("limits: {{max_series: 0}}\n{rule}"),
            "limits.max_series: 0 is out of range",
        ),
        (
            "huge max_future",
            &format!("limits: {{max_future: 100000y}}\n{rule}"),
            "limits.max_future:",
        ),
        (
            "zero query timeout",
            &format!("limits: {{query_timeout: 0}}\n{rule}"),
            "limits.query_timeout:",
        ),
        (
            "depth over 1024",
            &format!("limits: {{max_query_depth: 5000}}\n{rule}"),
            "limits.max_query_depth: 5000 is out of range",
        ),
        (
            "key bytes over u16",
            &format!("limits: {{max_series_key_bytes: 70000}}\n{rule}"),
            "limits.max_series_key_bytes: 70000 is out of range",
        ),
        (
            "client queries over total",
            &format!("limits: {{max_concurrent_queries: 2, max_client_queries: 3}}\n{rule}"),
            "limits.max_client_queries: 3 is more than",
        ),
        (
            "unknown limits key",
            &format!("limits: {{max_everything: 1}}\n{rule}"),
            "limits.max_everything: unknown key",
        ),
        (
            "zero snapshot interval",
            &format!("snapshot: {{interval: 0}}\n{rule}"),
            "snapshot.interval:",
        ),
        (
            "zero scrape interval",
            &format!("scrape: [{{job: j, interval: 0, targets: [\"127.0.0.1:1\"]}}]\n{rule}"),
            "scrape[0].interval:",
        ),
    ];
    for (name, text, want) in cases {
        let got = issues(text);
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "case {name}: missing {want:?} in {got:#?}"
        );
    }
}

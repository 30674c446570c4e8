use super::*;

fn sample(name: &str, labels: &[(&str, &str)], value: f64, ts: Option<i64>) -> ParsedSample {
    ParsedSample {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        value,
        timestamp_ms: ts,
    }
}

/// One line in, one sample (or nothing, for comments and blanks) out.
#[test]
fn good_lines() {
    let cases: &[(&str, &str, Option<ParsedSample>)] = &[
        ("bare", "up 1", Some(sample("up", &[], 1.0, None))),
        (
            "colon name",
            "a:b_c 2.5",
            Some(sample("a:b_c", &[], 2.5, None)),
        ),
        (
            "labels",
            r#"http_requests_total{method="post",code="200"} 1027 1395066363000"#,
            Some(sample(
                "http_requests_total",
                &[("method", "post"), ("code", "200")],
                1027.0,
                Some(1395066363000),
            )),
        ),
        (
            "escapes in label value",
            r#"msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9"#,
            Some(sample(
                "msdos_file_access_time_seconds",
                &[
                    ("path", "C:\\DIR\\FILE.TXT"),
                    ("error", "Cannot find file:\n\"FILE.TXT\""),
                ],
                1.458255915e9,
                None,
            )),
        ),
        (
            "unknown escape kept as written",
            r#"x{a="tab\there"} 1"#,
            Some(sample("x", &[("a", "tab\\there")], 1.0, None)),
        ),
        (
            "braces and comma inside value",
            r#"x{a="}{,=",b="2"} 1"#,
            Some(sample("x", &[("a", "}{,="), ("b", "2")], 1.0, None)),
        ),
        (
            "trailing comma",
            r#"x{a="1",} 3"#,
            Some(sample("x", &[("a", "1")], 3.0, None)),
        ),
        (
            "blanks around tokens",
            "x { a = \"1\" , b=\"2\" }\t4   -5",
            Some(sample("x", &[("a", "1"), ("b", "2")], 4.0, Some(-5))),
        ),
        ("empty braces", "x{} 1", Some(sample("x", &[], 1.0, None))),
        (
            "empty label value",
            r#"x{a=""} 1"#,
            Some(sample("x", &[("a", "")], 1.0, None)),
        ),
        (
            "utf-8 label value",
            r#"x{a="żółw ✓"} 1"#,
            Some(sample("x", &[("a", "żółw ✓")], 1.0, None)),
        ),
        (
            "plus inf",
            "x +Inf",
            Some(sample("x", &[], f64::INFINITY, None)),
        ),
        (
            "minus inf",
            "x -Inf",
            Some(sample("x", &[], f64::NEG_INFINITY, None)),
        ),
        (
            "exponent",
            "x -1.5e-3",
            Some(sample("x", &[], -1.5e-3, None)),
        ),
        (
            "leading blanks",
            "   x 1",
            Some(sample("x", &[], 1.0, None)),
        ),
        (
            "trailing blanks and CR",
            "x 1 2 \r",
            Some(sample("x", &[], 1.0, Some(2))),
        ),
        (
            "histogram bucket",
            r#"rpc_duration_seconds_bucket{le="+Inf"} 144320"#,
            Some(sample(
                "rpc_duration_seconds_bucket",
                &[("le", "+Inf")],
                144320.0,
                None,
            )),
        ),
        (
            "summary quantile",
            r#"rpc_duration_seconds{quantile="0.99"} 76656"#,
            Some(sample(
                "rpc_duration_seconds",
                &[("quantile", "0.99")],
                76656.0,
                None,
            )),
        ),
        ("blank line", "", None),
        ("blanks only", " \t ", None),
        ("comment", "# just a comment", None),
        ("bare hash", "#", None),
        ("openmetrics eof", "# EOF", None),
    ];
    for (case, line, want) in cases {
        let got = parse(line.as_bytes());
        assert!(got.errors.is_empty(), "case {case}: {:?}", got.errors);
        assert_eq!(got.samples.first(), want.as_ref(), "case {case}");
        assert!(got.samples.len() <= 1, "case {case}");
    }
}

#[test]
fn nan_value() {
    for (case, line) in [
        ("NaN", "x NaN"),
        ("lower nan", "x nan"),
        ("signed", "x -NaN"),
    ] {
        let got = parse(line.as_bytes());
        assert!(got.samples[0].value.is_nan(), "case {case}");
    }
}

/// Each bad line gives one error naming the problem; nothing else.
#[test]
fn malformed_lines() {
    let cases: &[(&str, &str, &str)] = &[
        ("no value", "x", "expected a number value, found nothing"),
        (
            "bad value",
            "x abc",
            "expected a number value, found \"abc\"",
        ),
        ("hex value", "x 0x10", "expected a number value"),
        (
            "float timestamp",
            "x 1 1.5",
            "expected an integer timestamp",
        ),
        (
            "trailing text",
            "x 1 2 3",
            "unexpected text after the timestamp",
        ),
        ("bad metric name", "1x 1", "expected a metric name"),
        ("dash in name", "a-b 1", "expected a metric name"),
        ("bad label name", r#"x{a-b="1"} 1"#, "expected a label name"),
        (
            "colon in label name",
            r#"x{a:b="1"} 1"#,
            "expected a label name",
        ),
        ("unquoted value", "x{a=1} 1", "expected a quoted value"),
        ("missing equals", r#"x{a "1"} 1"#, "expected '='"),
        ("unterminated value", r#"x{a="1} 1"#, "no closing quote"),
        ("unterminated braces", r#"x{a="1" 1"#, "expected ',' or '}'"),
        (
            "duplicate label",
            r#"x{a="1",a="2"} 1"#,
            "duplicate label \"a\"",
        ),
        (
            "name label in braces",
            r#"x{__name__="y"} 1"#,
            "label __name__ inside braces",
        ),
        (
            "unknown type",
            "# TYPE x histogrm",
            "unknown type \"histogrm\"",
        ),
        (
            "type without name",
            "# TYPE",
            "expects a metric name, found nothing",
        ),
        (
            "text after type",
            "# TYPE x counter extra",
            "unexpected text after the type",
        ),
        ("help bad name", "# HELP 9x text", "expects a metric name"),
        ("bad utf-8", "x{a=\"\u{fffd}\"} 1", ""),
    ];
    for (case, line, want) in cases {
        let body: Vec<u8> = if *case == "bad utf-8" {
            b"x{a=\"\xff\"} 1".to_vec()
        } else {
            line.as_bytes().to_vec()
        };
        let got = parse(&body);
        assert!(got.samples.is_empty(), "case {case}: {:?}", got.samples);
        assert_eq!(got.errors.len(), 1, "case {case}");
        assert_eq!(got.errors[0].line, 1, "case {case}");
        assert!(
            got.errors[0].message.contains(want),
            "case {case}: {:?} does not contain {want:?}",
            got.errors[0].message
        );
    }
}

#[test]
fn help_and_type_make_families() {
    let body = "# HELP a Some \\\\ help\\nover two lines \\x\n# TYPE a counter\n# TYPE b gauge\n#  HELP   c  spaced  help\n";
    let got = parse(body.as_bytes());
    assert!(got.errors.is_empty(), "{:?}", got.errors);
    assert_eq!(
        got.families,
        vec![
            Family {
                name: "a".into(),
                kind: "counter".into(),
                help: "Some \\ help\nover two lines \\x".into(),
            },
            Family {
                name: "b".into(),
                kind: "gauge".into(),
                help: String::new(),
            },
            Family {
                name: "c".into(),
                kind: String::new(),
                help: " spaced  help".into(),
            },
        ]
    );
}

/// A whole body with histogram, summary, comments and bad lines: the bad
/// lines are reported by number and every good line is still used.
#[test]
fn bad_lines_do_not_spoil_the_body() {
    let body = "\
# HELP http_request_duration_seconds A histogram of the request duration.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le=\"0.05\"} 24054
http_request_duration_seconds_bucket{le=\"+Inf\"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320

this line is bad
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile=\"0.5\"} 4773
rpc_duration_seconds_sum 1.7560473e+07
rpc_duration_seconds_count 2693
x{a=\"1\" 2
up 1 1700000000000
";
    let got = parse(body.as_bytes());
    let lines: Vec<usize> = got.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![8, 13], "{:?}", got.errors);
    let names: Vec<&str> = got.samples.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "http_request_duration_seconds_bucket",
            "http_request_duration_seconds_bucket",
            "http_request_duration_seconds_sum",
            "http_request_duration_seconds_count",
            "rpc_duration_seconds",
            "rpc_duration_seconds_sum",
            "rpc_duration_seconds_count",
            "up",
        ]
    );
    assert_eq!(got.samples[5].value, 1.7560473e7);
    assert_eq!(got.samples[7].timestamp_ms, Some(1_700_000_000_000));
    assert_eq!(got.families.len(), 2);
    assert_eq!(got.families[1].kind, "summary");
    assert_eq!(
        got.errors[0].to_string(),
        "line 8: this: expected a number value, found \"line\""
    );
}

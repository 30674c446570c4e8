//! Issue 14, the PromQL part: nothing one reader sends can crash, stall or
//! exhaust the daemon. Deep nesting, long texts, durations the parser
//! panicked on, subqueries that grow without bound and huge answers are
//! each refused with Prometheus' error envelope, the right status, a
//! message naming the limit and a counter in /metrics, on every endpoint
//! that parses PromQL; the daemon answers the next query.

use crate::common::{enc, http_request, Daemon};
use serde_json::Value as Json;

const RULES: &str =
    "rules:\n  - {name: x_10s, prefix: x, type: last, timeframe: 10s, limit: 360}\n";
const CONFIG: &str = "limits: {max_query_samples: 200000, max_response_bytes: 4096}\n\
    rules:\n  - {name: x_10s, prefix: x, type: last, timeframe: 10s, limit: 360}\n";

fn post(d: &Daemon, path: &str, form: &str) -> (u16, Json) {
    let (code, body) = http_request(&d.pki, "client", d.http, "POST", path, form);
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (code, json)
}

/// Every endpoint that parses PromQL, with the form that carries `q`.
fn endpoints(q: &str) -> Vec<(&'static str, String, String)> {
    let q = enc(q);
    vec![
        (
            "query",
            "/api/v1/query".into(),
            format!("query={q}&time=100"),
        ),
        (
            "query_range",
            "/api/v1/query_range".into(),
            format!("query={q}&start=0&end=100&step=10"),
        ),
        (
            "format_query",
            "/api/v1/format_query".into(),
            format!("query={q}"),
        ),
        (
            "query_exemplars",
            "/api/v1/query_exemplars".into(),
            format!("query={q}"),
        ),
        ("series", "/api/v1/series".into(), format!("match[]={q}")),
        ("labels", "/api/v1/labels".into(), format!("match[]={q}")),
        // GET only: the query string carries the selector.
        (
            "label values",
            format!("/api/v1/label/path/values?match[]={q}"),
            String::new(),
        ),
    ]
}

fn call(d: &Daemon, path: &str, form: &str) -> (u16, Json) {
    if form.is_empty() {
        let (code, body) = d.get(path);
        let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        (code, json)
    } else {
        post(d, path, form)
    }
}

fn assert_alive(d: &Daemon, after: &str) {
    let (code, v) = post(d, "/api/v1/query", "query=vector(1)&time=100");
    assert_eq!(code, 200, "daemon answers after {after}: {v}");
}

#[test]
fn nested_and_long_queries_are_refused_on_every_endpoint() {
    let d = Daemon::start(CONFIG);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "2000 nested sum(",
            format!("{}x{}", "sum(".repeat(2000), ")".repeat(2000)),
            "limits.max_query_depth",
        ),
        (
            "4875 chained +",
            format!("x{}", "+x".repeat(4875)),
            "limits.max_query_depth",
        ),
        (
            "33000 parentheses",
            format!("{}x{}", "(".repeat(33_000), ")".repeat(33_000)),
            "limits.max_query_bytes",
        ),
        (
            "5000 parentheses",
            format!("{}x{}", "(".repeat(5000), ")".repeat(5000)),
            "limits.max_query_depth",
        ),
        (
            "2750 nested abs(",
            format!("{}x{}", "abs(".repeat(2750), ")".repeat(2750)),
            "limits.max_query_depth",
        ),
        (
            "8000 unary minus",
            format!("{}x", "-".repeat(8000)),
            "limits.max_query_depth",
        ),
        (
            "selector of 20000 bytes",
            format!("x{{path=\"{}\"}}", "a".repeat(20_000)),
            "limits.max_query_bytes",
        ),
    ];
    let mut refused = std::collections::HashMap::new();
    for (name, q, limit) in &cases {
        for (endpoint, path, form) in endpoints(q) {
            // A GET URL of tens of KB is not what this checks.
            if form.is_empty() && q.len() > 12_000 {
                continue;
            }
            let (code, v) = call(&d, &path, &form);
            assert_eq!(code, 400, "case {name} on {endpoint}: {v}");
            assert_eq!(v["errorType"], "bad_data", "case {name} on {endpoint}: {v}");
            let msg = v["error"].as_str().unwrap_or_default();
            assert!(msg.contains(limit), "case {name} on {endpoint}: {msg}");
            *refused.entry(*limit).or_insert(0.0) += 1.0;
        }
        assert_alive(&d, name);
    }
    for (limit, n) in refused {
        let series = format!("ringdb_query_refusals_total{{limit=\"{limit}\"}}");
        assert_eq!(d.metric(&series), n, "{series}");
    }
}

#[test]
fn deep_queries_within_the_limit_are_answered_everywhere() {
    // Deeper than what runs on a blocking thread's own stack, within the
    // default limits.max_query_depth (128): each endpoint answers. Default
    // limits: the formatted query is longer than CONFIG's 4 KiB answers.
    let d = Daemon::start(RULES);
    let cases = [
        (
            "100 nested sum(",
            format!("{}x{}", "sum(".repeat(100), ")".repeat(100)),
        ),
        (
            "120 parentheses",
            format!("{}x{}", "(".repeat(120), ")".repeat(120)),
        ),
        ("100 chained +", format!("x{}", "+x".repeat(100))),
    ];
    for (name, q) in &cases {
        for (endpoint, path, form) in endpoints(q) {
            let (code, v) = call(&d, &path, &form);
            // match[] takes selectors only: parsed, then refused as such.
            let selector_only = matches!(endpoint, "series" | "labels" | "label values");
            let want = if selector_only { 400 } else { 200 };
            if selector_only {
                let msg = v["error"].as_str().unwrap_or_default();
                assert!(
                    msg.contains("not a series selector"),
                    "case {name} on {endpoint}: {msg}"
                );
            }
            assert_eq!(code, want, "case {name} on {endpoint}: {v}");
        }
    }
}

#[test]
fn durations_that_panicked_the_parser_are_bad_data_everywhere() {
    let d = Daemon::start(CONFIG);
    let cases = [
        "x offset NaN",
        "x offset Inf",
        "x offset -Inf",
        "x offset 1e30",
        "x[1e30]",
        "x[5m:1e30]",
        "x[5m:Inf]",
        "x @ NaN",
        "x @ Inf",
        "x @ 1e30",
        "x[4294967295y]",
        "x offset 0x7fffffffffffffff",
    ];
    for q in cases {
        for (endpoint, path, form) in endpoints(q) {
            let (code, v) = call(&d, &path, &form);
            // series/labels take selectors only: a range is refused there
            // as "not a series selector", still bad_data.
            assert_eq!(code, 400, "case {q} on {endpoint}: {v}");
            assert_eq!(v["errorType"], "bad_data", "case {q} on {endpoint}: {v}");
        }
        assert_alive(&d, q);
    }
    assert_eq!(d.metric("ringdb_query_panics_total"), 0.0);
}

#[test]
fn samples_answer_bytes_and_their_counters() {
    let d = Daemon::start(CONFIG);
    let cases = [
        (
            "subquery over a year at 1ms",
            "/api/v1/query",
            format!(
                "query={}&time=100",
                enc("count_over_time(vector(1)[1y:1ms])")
            ),
            422,
            "limits.max_query_samples",
        ),
        (
            "range query over a subquery",
            "/api/v1/query_range",
            format!(
                "query={}&start=0&end=100&step=10",
                enc("sum_over_time(vector(1)[1d:1ms])")
            ),
            422,
            "limits.max_query_samples",
        ),
        (
            "10001 points of vector(1)",
            "/api/v1/query_range",
            "query=vector(1)&start=0&end=10000&step=1".to_string(),
            422,
            "limits.max_response_bytes",
        ),
    ];
    for (name, path, form, status, limit) in &cases {
        let started = std::time::Instant::now();
        let (code, v) = post(&d, path, form);
        println!("{name}: {code} in {:?}", started.elapsed());
        assert_eq!(code, *status, "case {name}: {v}");
        assert_eq!(v["errorType"], "execution", "case {name}: {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(limit), "case {name}: {msg}");
        assert_alive(&d, name);
    }
    let series = "ringdb_query_refusals_total{limit=\"limits.max_query_samples\"}";
    assert_eq!(d.metric(series), 2.0, "{series}");
    let series = "ringdb_query_refusals_total{limit=\"limits.max_response_bytes\"}";
    assert_eq!(d.metric(series), 1.0, "{series}");
}

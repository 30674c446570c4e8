//! The Prometheus HTTP API as Grafana uses it, the resolution choice of
//! DESIGN §7, and Prometheus' error types and codes.

use crate::common::{enc, frame, http_request, now_secs, Daemon};
use serde_json::{json, Value as Json};

fn get(d: &Daemon, path: &str) -> (u16, Json) {
    let (code, body) = d.get(path);
    (
        code,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
    )
}

fn post(d: &Daemon, path: &str, form: &str) -> (u16, Json) {
    let (code, body) = http_request(&d.pki, "client", d.http, "POST", path, form);
    (
        code,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
    )
}
const RULES: &str = "rules:\n  - {name: x_10s, prefix: x, type: last, timeframe: 10s, limit: 360}\n  - {name: x_1m, prefix: x, type: last, timeframe: 1m, limit: 1440}\n  - {name: x_1h, prefix: x, type: last, timeframe: 1h, limit: 720}\n  - {name: other, prefix: '*', type: last, timeframe: 10s, limit: 8640}\n";

/// Hourly samples for 30 days and 10-second samples for the last hour, each
/// valued at its own timestamp: a bucket's value then tells which archive
/// answered (10s: T, 1m: T+50, 1h: T+3590 for recent buckets).
fn load_history(d: &Daemon, now: u64) {
    let mut bytes = Vec::new();
    let hour = now / 3600 * 3600;
    for h in (1..=30 * 24).rev() {
        let t = hour - h * 3600;
        bytes.extend(frame(false, t, t, "x-host1"));
    }
    let start = now / 10 * 10 - 3600;
    for t in (start..=now).step_by(10) {
        bytes.extend(frame(false, t, t, "x-host1"));
    }
    bytes.extend(frame(false, now, 42, "cpu_busy-host1"));
    let n = (bytes.len() / 44) as f64;
    d.send_raw("client", &bytes);
    assert!(
        d.wait_metric(
            "ringdb_samples_accepted_total{protocol=\"socket\"}",
            n - 1.0
        ) >= n - 1.0
    );
}

#[test]
fn resolution_follows_the_query_range_and_the_rule_label() {
    let d = Daemon::start(RULES);
    let now = now_secs();
    load_history(&d, now);

    // A recent instant: the 10s archive answers with the bucket's own time.
    let t = (now - 1800) / 60 * 60;
    let (code, v) = get(&d, &format!("/api/v1/query?query=x&time={t}"));
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v["data"]["result"][0]["value"],
        json!([t, t.to_string()]),
        "10s archive"
    );
    assert_eq!(
        v["data"]["result"][0]["metric"],
        json!({"__name__": "x", "path": "x-host1"})
    );

    // The same instant forced to the 1m archive: the minute's last sample.
    let (_, v) = get(
        &d,
        &format!("/api/v1/query?query={}&time={t}", enc("x{rule=\"x_1m\"}")),
    );
    assert_eq!(
        v["data"]["result"][0]["value"][1],
        json!((t + 50).to_string()),
        "1m archive"
    );

    // A one-hour range: 10s archive, every point its own timestamp.
    let (code, v) = get(
        &d,
        &format!(
            "/api/v1/query_range?query=x&start={}&end={}&step=60",
            t - 1200,
            t
        ),
    );
    assert_eq!(code, 200, "{v}");
    for p in v["data"]["result"][0]["values"].as_array().unwrap() {
        assert_eq!(
            p[1].as_str().unwrap(),
            p[0].as_u64().unwrap().to_string(),
            "1h range from the 10s archive"
        );
    }

    // A 30-day range reaches past the 10s and 1m windows: the 1h archive.
    let start = (now - 29 * 86400) / 3600 * 3600;
    let end = start + 27 * 86400;
    let (code, v) = get(
        &d,
        &format!("/api/v1/query_range?query=x&start={start}&end={end}&step=3600"),
    );
    assert_eq!(code, 200, "{v}");
    let points = v["data"]["result"][0]["values"].as_array().unwrap();
    assert_eq!(points.len(), 27 * 24 + 1);
    assert!(points
        .iter()
        .all(|p| p[1].as_str().unwrap() == p[0].as_u64().unwrap().to_string()));

    // The 1h archive's lookback is its timeframe: 30 minutes after an hourly
    // bucket still sees it.
    let at = start + 86400 + 1800;
    let (_, v) = get(
        &d,
        &format!("/api/v1/query?query={}&time={at}", enc("x{rule=\"x_1h\"}")),
    );
    assert_eq!(
        v["data"]["result"][0]["value"][1],
        json!((at - 1800).to_string())
    );
    // ... while the 10s archive has nothing that old.
    let (_, v) = get(
        &d,
        &format!("/api/v1/query?query={}&time={at}", enc("x{rule=\"x_10s\"}")),
    );
    assert_eq!(v["data"]["result"], json!([]));
}

#[test]
fn grafana_requests() {
    let d = Daemon::start(RULES);
    let now = now_secs();
    load_history(&d, now);
    let window = format!("start={}&end={}", now - 3600, now + 60);
    struct Case {
        name: &'static str,
        post: bool,
        path: String,
        form: String,
        want: Json,
    }
    let cases = vec![
        Case {
            name: "health check: 1+1 at time 4, POST",
            post: true,
            path: "/api/v1/query".into(),
            form: "query=1%2B1&time=4".into(),
            want: json!({"status":"success","data":{"resultType":"scalar","result":[4,"2"]}}),
        },
        Case {
            name: "metric names",
            post: false,
            path: format!("/api/v1/label/__name__/values?{window}"),
            form: String::new(),
            want: json!({"status":"success","data":["cpu_busy","x"]}),
        },
        Case {
            name: "label names with match[], POST",
            post: true,
            path: "/api/v1/labels".into(),
            form: format!("match[]=x&{window}"),
            want: json!({"status":"success","data":["__name__","path"]}),
        },
        Case {
            name: "label values with match[]",
            post: false,
            path: format!("/api/v1/label/path/values?match[]=cpu_busy&{window}"),
            form: String::new(),
            want: json!({"status":"success","data":["cpu_busy-host1"]}),
        },
        Case {
            name: "series, POST",
            post: true,
            path: "/api/v1/series".into(),
            form: format!("match[]={}&{window}", enc("{__name__=~\"x|cpu_busy\"}")),
            want: json!({"status":"success","data":[{"__name__":"cpu_busy","path":"cpu_busy-host1"},{"__name__":"x","path":"x-host1"}]}),
        },
        Case {
            name: "exemplars: none kept",
            post: true,
            path: "/api/v1/query_exemplars".into(),
            form: format!("query=x&{window}"),
            want: json!({"status":"success","data":[]}),
        },
        Case {
            name: "format_query",
            post: false,
            path: format!(
                "/api/v1/format_query?query={}",
                enc("sum(rate(x[5m]))by(path)")
            ),
            form: String::new(),
            want: json!({"status":"success","data":"sum by (path) (rate(x[5m]))"}),
        },
        Case {
            name: "instant panel with float time",
            post: true,
            path: "/api/v1/query".into(),
            form: format!("query=cpu_busy&time={now}.5"),
            want: json!({"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"cpu_busy","path":"cpu_busy-host1"},"value":[format!("{now}.500").parse::<f64>().unwrap(),"42"]}]}}),
        },
    ];
    for c in cases {
        let (code, got) = if c.post {
            post(&d, &c.path, &c.form)
        } else {
            get(&d, &c.path)
        };
        assert_eq!(code, 200, "case {}: {got}", c.name);
        assert_eq!(got, c.want, "case {}", c.name);
    }
    // A range panel: POST form with float seconds, start/end aligned to the step.
    let step = 15.0;
    let end = (now as f64 / step).floor() * step;
    let (code, v) = post(
        &d,
        "/api/v1/query_range",
        &format!("query=x&start={}&end={end}&step={step}", end - 600.0),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"]["resultType"], "matrix");
    assert_eq!(
        v["data"]["result"][0]["values"].as_array().unwrap().len(),
        41
    );
    // buildinfo: a semver version and no features map (plain Prometheus).
    let (code, v) = get(&d, "/api/v1/status/buildinfo");
    assert_eq!(code, 200);
    assert!(v["data"]["version"].as_str().unwrap().starts_with("2."));
    assert!(v["data"].get("features").is_none());
    // metadata answers an object.
    let (code, v) = get(&d, "/api/v1/metadata");
    assert_eq!(code, 200);
    assert!(v["data"].is_object());
}

#[test]
fn errors_have_prometheus_types_and_codes() {
    let d = Daemon::start(&format!("limits: {{max_query_samples: 10}}\n{RULES}"));
    load_history(&d, now_secs());
    let now = now_secs();
    let cases = [
        (
            "parse error",
            format!("/api/v1/query?query={}", enc("sum((")),
            400,
            "bad_data",
        ),
        ("no query", "/api/v1/query".to_string(), 400, "bad_data"),
        (
            "bad time",
            "/api/v1/query?query=1&time=yesterday".to_string(),
            400,
            "bad_data",
        ),
        (
            "too many points",
            format!("/api/v1/query_range?query=x&start=0&end={now}&step=1"),
            400,
            "bad_data",
        ),
        (
            "end before start",
            "/api/v1/query_range?query=x&start=100&end=50&step=1".to_string(),
            400,
            "bad_data",
        ),
        (
            "zero step",
            "/api/v1/query_range?query=x&start=0&end=50&step=0".to_string(),
            400,
            "bad_data",
        ),
        (
            "series without match[]",
            "/api/v1/series".to_string(),
            400,
            "bad_data",
        ),
        (
            "too many samples",
            format!(
                "/api/v1/query?query={}&time={now}",
                enc("count_over_time(x[1d])")
            ),
            422,
            "execution",
        ),
        (
            "range vector in a range query",
            format!(
                "/api/v1/query_range?query={}&start={}&end={now}&step=60",
                enc("x[5m]"),
                now - 600
            ),
            400,
            "bad_data",
        ),
    ];
    for (name, path, status, error_type) in cases {
        let (code, v) = get(&d, &path);
        assert_eq!(code, status, "case {name}: {v}");
        assert_eq!(v["status"], "error", "case {name}");
        assert_eq!(v["errorType"], error_type, "case {name}: {v}");
        assert!(!v["error"].as_str().unwrap().is_empty(), "case {name}");
    }
    let (_, v) = get(
        &d,
        &format!("/api/v1/query_range?query=x&start=0&end={now}&step=1"),
    );
    assert!(
        v["error"].as_str().unwrap().contains("11,000 points"),
        "{v}"
    );
    let (code, _) = http_request(&d.pki, "client", d.http, "PUT", "/api/v1/query", "");
    assert_eq!(
        code, 405,
        "unsupported methods are 405 so Grafana retries with GET"
    );
}

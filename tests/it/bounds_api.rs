//! Issue 14, the read side: nothing one client sends to the query API can
//! take every query slot, read without permission, or make ringdb walk or
//! answer without bound. Real daemon, real certificates, real HTTP.

use crate::common::{enc, frame, http_request, now_secs, Daemon};
use ringdb::ingest::remote_write::{encode, label, proto};
use serde_json::Value as Json;
use std::time::{Duration, Instant};

/// `client` reads everything and is admin; `agent-7` reads `traffic` only;
/// `reader` may write and use admin routes but read nothing.
const CLIENTS: &str = "clients:\n  \
    - {name: client, write: ['*'], read: ['*'], admin: true}\n  \
    - {name: agent-7, write: ['*'], read: [traffic], admin: false}\n  \
    - {name: reader, write: ['*'], read: [], admin: true}\n";

const RULES: &str = "rules:\n  \
    - {name: t, prefix: traffic, type: last, timeframe: 60, limit: 1440}\n  \
    - {name: raw, prefix: '*', type: last, timeframe: 1s, limit: 3600}\n";

fn start(limits: &str) -> Daemon {
    Daemon::start(&format!("{limits}\n{CLIENTS}{RULES}"))
}

fn request(d: &Daemon, client: &str, method: &str, path: &str, body: &str) -> (u16, Json) {
    let addr = if path.starts_with("/status")
        || path.starts_with("/paths/all")
        || path.starts_with("/aggregate")
    {
        d.admin
    } else {
        d.http
    };
    let (code, text) = http_request(&d.pki, client, addr, method, path, body);
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path} as {client}: {e}: {text:?}"));
    (code, json)
}

/// Socket samples for `paths`, one each, a minute ago; waits until stored.
fn write_paths(d: &Daemon, paths: &[String]) {
    let ts = now_secs() - 60;
    let mut bytes = Vec::new();
    for p in paths {
        bytes.extend(frame(false, ts, 7, p));
    }
    d.send_raw("client", &bytes);
    d.wait_metric("ringdb_series", paths.len() as f64);
}

#[test]
fn a_client_that_reads_nothing_is_refused_before_parsing() {
    let d = start("");
    write_paths(&d, &["traffic-a".to_string()]);
    let now = now_secs();
    // Malformed queries: a 400 would mean they were parsed first.
    let prometheus = [
        ("query", format!("/api/v1/query?query={}", enc("sum(("))),
        (
            "query_range",
            format!(
                "/api/v1/query_range?query={}&start={}&end={now}&step=60",
                enc("rate(("),
                now - 3600
            ),
        ),
        ("series", "/api/v1/series?match[]=%7B".to_string()),
        ("labels", "/api/v1/labels".to_string()),
        ("label values", "/api/v1/label/path/values".to_string()),
        ("metadata", "/api/v1/metadata".to_string()),
    ];
    for (name, path) in &prometheus {
        let (code, body) = request(&d, "reader", "GET", path, "");
        assert_eq!(code, 403, "case {name}: {body}");
        assert_eq!(body["status"], "error", "case {name}");
        assert_eq!(body["errorType"], "forbidden", "case {name}: {body}");
    }
    let yawndb = [
        ("slice", "GET", "/paths/traffic-a/t/slice?from=0&to=60", ""),
        ("last", "GET", "/paths/traffic-a/t/last?n=1", ""),
        ("rules", "GET", "/paths/traffic-a/rules", ""),
        (
            "multi-slice",
            "POST",
            "/paths/slice?from=0&to=60",
            "paths=traffic-a/t",
        ),
        ("all paths", "GET", "/paths/all", ""),
        (
            "aggregate",
            "POST",
            "/aggregate?from=0&to=60&rule=t&aggregate=sum",
            "paths=traffic-a",
        ),
    ];
    for (name, method, path, body) in yawndb {
        let (code, answer) = request(&d, "reader", method, path, body);
        assert_eq!(code, 403, "case {name}: {answer}");
        assert_eq!(answer["code"], "forbidden", "case {name}: {answer}");
    }
    let refused = d.metric("ringdb_query_refused_total{reason=\"no_read_permission\"}");
    assert_eq!(refused, (prometheus.len() + yawndb.len()) as f64);
    // The same reads by a client that may read still work.
    let (code, body) = request(&d, "client", "GET", "/paths/traffic-a/rules", "");
    assert_eq!((code, &body["answer"]), (200, &serde_json::json!(["t"])));
}

#[test]
fn metadata_shows_only_the_metrics_a_client_may_read() {
    let d = start("");
    let family = |name: &str, help: &str| proto::MetricMetadata {
        r#type: 2,
        metric_family_name: name.into(),
        help: help.into(),
        unit: String::new(),
    };
    let t = now_secs() as i64 * 1000;
    let request_body = proto::WriteRequest {
        timeseries: vec![proto::TimeSeries {
            labels: vec![label("__name__", "traffic")],
            samples: vec![proto::Sample {
                value: 1.0,
                timestamp: t,
            }],
            ..Default::default()
        }],
        metadata: vec![
            family("traffic", "bytes moved"),
            family("secret_load", "another tenant's help text"),
        ],
    };
    let (code, _, body) = crate::common::http_raw(
        &d.pki,
        "client",
        d.http,
        "POST",
        "/api/v1/write",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        &encode(&request_body),
    );
    assert_eq!(code, 204, "{body}");
    let cases: [(&str, &str, &[&str]); 3] = [
        ("reads everything", "client", &["secret_load", "traffic"]),
        ("reads traffic only", "agent-7", &["traffic"]),
        ("asks for another tenant's metric", "agent-7", &[]),
    ];
    for (name, client, want) in cases {
        let path = if want.is_empty() {
            "/api/v1/metadata?metric=secret_load"
        } else {
            "/api/v1/metadata"
        };
        let (code, body) = request(&d, client, "GET", path, "");
        assert_eq!(code, 200, "case {name}: {body}");
        let got: Vec<&str> = body["data"]
            .as_object()
            .unwrap_or_else(|| panic!("case {name}: {body}"))
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(got, want, "case {name}: {body}");
    }
}

/// A query that keeps a slot busy for a while (a subquery of 259,200
/// steps; about a second in a dev build).
const HEAVY: &str = "count_over_time(vector(1)[3d:1s])";

#[test]
fn one_client_cannot_take_every_query_slot() {
    let d = start("limits: {max_concurrent_queries: 4, max_client_queries: 1}");
    let heavy = format!("/api/v1/query?query={}", enc(HEAVY));
    let started = Instant::now();
    let (code, body) = request(&d, "client", "GET", &heavy, "");
    let alone = started.elapsed();
    assert_eq!(code, 200, "{body}");
    // Four at once from one certificate: they take turns on its one slot
    // (waiting, not refused: Grafana sends a dashboard's panels at once and
    // does not retry a 429), while another client is served beside them.
    let burst_started = Instant::now();
    let (outcomes, other): (Vec<(u16, Json, Duration)>, Duration) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let (code, body) = request(&d, "client", "GET", &heavy, "");
                    (code, body, burst_started.elapsed())
                })
            })
            .collect();
        // Meanwhile another client and the health routes are served.
        std::thread::sleep(Duration::from_millis(50));
        let (code, body) = request(&d, "agent-7", "GET", &heavy, "");
        assert_eq!(code, 200, "another client: {body}");
        let other = burst_started.elapsed();
        let t = Instant::now();
        let (code, _) = http_request(&d.pki, "client", d.http, "GET", "/-/healthy", "");
        assert_eq!(code, 200);
        println!(
            "bounds_api: heavy query alone {:.0} ms; another client's done {:.0} ms into the burst; \
             /-/healthy during it {:.1} ms",
            alone.as_secs_f64() * 1e3,
            other.as_secs_f64() * 1e3,
            t.elapsed().as_secs_f64() * 1e3
        );
        (
            handles.into_iter().map(|h| h.join().unwrap()).collect(),
            other,
        )
    });
    for (code, body, _) in &outcomes {
        assert_eq!(*code, 200, "{body}");
    }
    // With the burst holding every slot, the other client would have waited
    // for the burst's first query to end, and finished after all four.
    let last = outcomes.iter().map(|o| o.2).max().unwrap_or_default();
    assert!(
        other < last,
        "another client finished at {other:?}, after the burst's last query at {last:?}"
    );
}

#[test]
fn yawndb_reads_are_capped_by_buckets_and_answer_bytes() {
    let d = start("limits: {max_slice_buckets: 10, max_response_bytes: 1024}");
    let paths: Vec<String> = (0..60)
        .map(|i| format!("traffic-client{i:04}-in"))
        .collect();
    write_paths(&d, &paths);
    let to = 60 * 6; // 7 buckets a path: one path fits, two do not
    let cases: [(&str, &str, String, &str, u16, &str); 8] = [
        (
            "one slice over the cap",
            "GET",
            format!("/paths/traffic-client0000-in/t/slice?from=0&to={}", 60 * 20),
            "",
            413,
            "slice_too_big",
        ),
        (
            "last n over the cap",
            "GET",
            "/paths/traffic-client0000-in/t/last?n=11".to_string(),
            "",
            413,
            "slice_too_big",
        ),
        (
            "multi-slice within the cap",
            "POST",
            format!("/paths/slice?from=0&to={to}"),
            "paths=traffic-client0000-in/t",
            200,
            "ok",
        ),
        (
            "multi-slice over the cap",
            "POST",
            format!("/paths/slice?from=0&to={to}"),
            "paths=traffic-client0000-in/t,traffic-client0001-in/t",
            413,
            "slice_too_big",
        ),
        (
            "aggregate over the cap",
            "POST",
            format!("/aggregate?from=0&to={to}&rule=t&aggregate=sum"),
            "paths=traffic-client0000-in,traffic-client0001-in",
            413,
            "slice_too_big",
        ),
        (
            "aggregate within the cap",
            "POST",
            format!("/aggregate?from=0&to={to}&rule=t&aggregate=sum"),
            "paths=traffic-client0000-in",
            200,
            "ok",
        ),
        (
            "every path: more than max_response_bytes",
            "GET",
            "/paths/all".to_string(),
            "",
            413,
            "response_too_big",
        ),
        ("status", "GET", "/status".to_string(), "", 200, "ok"),
    ];
    for (name, method, path, body, status, code) in &cases {
        let (got, answer) = request(&d, "client", method, path, body);
        assert_eq!(
            (got, answer["code"].as_str()),
            (*status, Some(*code)),
            "case {name}: {answer}"
        );
        if *status == 413 {
            let limit = if *code == "slice_too_big" {
                "limits.max_slice_buckets"
            } else {
                "limits.max_response_bytes"
            };
            let message = answer["answer"].as_str().unwrap_or_default();
            assert!(message.contains(limit), "case {name}: {message}");
        }
    }
    // A client that reads fewer series gets its shorter listing.
    let (code, answer) = request(&d, "agent-7", "GET", "/paths/all", "");
    assert_eq!(code, 403, "agent-7 is not admin: {answer}");
    // The Prometheus listings are capped the same way.
    let (code, body) = request(&d, "client", "GET", "/api/v1/series?match[]=traffic", "");
    assert_eq!(code, 422, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(message.contains("limits.max_response_bytes"), "{message}");
    let (code, body) = request(
        &d,
        "client",
        "GET",
        "/api/v1/series?match[]=traffic&limit=2",
        "",
    );
    assert_eq!(code, 200, "{body}");
    let refused = |reason: &str| {
        d.metric(&format!(
            "ringdb_query_refused_total{{reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(refused("max_slice_buckets"), 4.0);
    assert_eq!(refused("max_response_bytes"), 2.0);
}

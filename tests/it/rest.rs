//! The YAWNDB routes: shapes, codes and statuses of reference/yawndb.md §4
//! (with the documented divergences: no 500s, JSON 404s).

use crate::common::{frame, http_request, Daemon};
use serde_json::json;

const RULES: &str = "rules:\n  - {name: m, prefix: stats, type: sum, timeframe: 60, limit: 10, value_size: large, additional_values: [{timeout: weak}]}\n  - {name: a, prefix: stats, type: avg, timeframe: 60, limit: 10, value_size: small}\n  - {name: f, prefix: load, type: last, timeframe: 60, limit: 10}\n";

fn daemon() -> Daemon {
    let d = Daemon::start(RULES);
    let t = 1_700_000_040; // aligned to 60
    let mut bytes = Vec::new();
    bytes.extend(frame(false, t, 5, "stats-a"));
    bytes.extend(frame(false, t, 6, "stats-a"));
    bytes.extend(frame(false, t + 120, 1, "stats-a"));
    bytes.extend(frame(true, t + 60, 1, "stats-a"));
    bytes.extend(frame(false, t, 2, "load-x"));
    d.send_raw("client", &bytes);
    d.wait_metric("ringdb_samples_accepted_total{protocol=\"socket\"}", 5.0);
    d
}

#[test]
fn slice_last_rules_and_errors() {
    let d = daemon();
    let t = 1_700_000_040u64;
    let cases: Vec<(&str, String, u16, serde_json::Value)> = vec![
        (
            "slice aligns outward and lists every bucket",
            format!("/paths/stats-a/m/slice?from={}&to={}", t + 1, t + 119),
            200,
            json!({"status":"ok","code":"ok","answer":[[t,11],[t+60,"timeout"],[t+120,1]]}),
        ),
        (
            "avg over integer cells reads as the rounded mean",
            format!("/paths/stats-a/a/slice?from={t}&to={t}"),
            200,
            json!({"status":"ok","code":"ok","answer":[[t,6]]}),
        ),
        (
            "last n ends at the newest bucket",
            "/paths/stats-a/m/last?n=2".into(),
            200,
            json!({"status":"ok","code":"ok","answer":[[t+60,"timeout"],[t+120,1]]}),
        ),
        (
            "last n=0",
            "/paths/stats-a/m/last?n=0".into(),
            200,
            json!({"status":"ok","code":"ok","answer":[]}),
        ),
        (
            "rules in config order",
            "/paths/stats-a/rules".into(),
            200,
            json!({"status":"ok","code":"ok","answer":["m","a"]}),
        ),
        (
            "float rule",
            format!("/paths/load-x/f/slice?from={t}&to={t}"),
            200,
            json!({"status":"ok","code":"ok","answer":[[t,2.0]]}),
        ),
    ];
    for (name, url, status, want) in cases {
        assert_eq!(d.get_json(&url, status), want, "case {name}");
    }
    let errors = [
        (
            "unknown path",
            "/paths/stats-zz/m/slice?from=0&to=60",
            404,
            "path_not_found",
        ),
        (
            "rule of another prefix",
            "/paths/stats-a/f/slice?from=0&to=60",
            404,
            "rule_not_found",
        ),
        (
            "missing from",
            "/paths/stats-a/m/slice?to=60",
            400,
            "no_from",
        ),
        (
            "non-numeric to",
            "/paths/stats-a/m/slice?from=0&to=abc",
            400,
            "no_to",
        ),
        (
            "negative from",
            "/paths/stats-a/m/slice?from=-1&to=60",
            400,
            "no_from",
        ),
        (
            "from after to",
            "/paths/stats-a/m/slice?from=120&to=60",
            400,
            "from_to_order",
        ),
        (
            "too wide",
            "/paths/stats-a/m/slice?from=0&to=6000061",
            413,
            "slice_too_big",
        ),
        ("bad n", "/paths/stats-a/m/last?n=x", 400, "no_n"),
        (
            "n too big",
            "/paths/stats-a/m/last?n=100001",
            413,
            "slice_too_big",
        ),
        ("unknown route", "/nothing/here", 404, "not_found"),
        (
            "rules of unknown path",
            "/paths/nope-1/rules",
            404,
            "path_not_found",
        ),
    ];
    for (name, url, status, code) in errors {
        let v = d.get_json(url, status);
        assert_eq!(v["status"], "error", "case {name}");
        assert_eq!(v["code"], code, "case {name}: {v}");
        assert!(
            v["answer"].as_str().is_some_and(|m| !m.is_empty()),
            "case {name}: message"
        );
    }
}

#[test]
fn multi_slice_and_admin_routes() {
    let d = daemon();
    let t = 1_700_000_040u64;
    let (code, body) = http_request(
        &d.pki,
        "client",
        d.http,
        "POST",
        &format!("/paths/slice?from={t}&to={}", t + 60),
        "paths=stats-a/m,load-x/f,stats-a/a",
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["answer"],
        json!([[t, 11, 2.0, 6], [t + 60, "timeout", "empty", "empty"]])
    );

    let (code, body) = http_request(&d.pki, "client", d.admin, "GET", "/paths/all", "");
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["answer"],
        json!(["load-x", "stats-a"])
    );
    let (code, body) = http_request(&d.pki, "client", d.admin, "GET", "/status", "");
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["answer"]["paths_count"],
        2
    );

    let (code, _) = http_request(&d.pki, "client", d.admin, "DELETE", "/paths/load-x", "");
    assert_eq!(code, 200);
    let (code, body) = http_request(&d.pki, "client", d.admin, "DELETE", "/paths/load-x", "");
    assert_eq!(code, 404, "{body}");
    assert_eq!(
        d.get_json("/paths/load-x/rules", 404)["code"],
        "path_not_found"
    );
    let (code, body) = http_request(&d.pki, "client", d.admin, "GET", "/paths/all", "");
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["answer"],
        json!(["stats-a"])
    );
}

#[test]
fn health_and_readiness() {
    let d = Daemon::start(RULES);
    let (code, body) = d.get("/-/healthy");
    assert_eq!((code, body.as_str()), (200, "ringdb is Healthy.\n"));
    // Listeners bind only after the restore, so a reachable daemon is ready.
    let (code, body) = d.get("/-/ready");
    assert_eq!((code, body.as_str()), (200, "ringdb is Ready.\n"));
    assert_eq!(d.metric("ringdb_ready"), 1.0);
}

#[test]
fn aggregate_combines_paths_per_timestamp() {
    let d = Daemon::start(RULES);
    let t = 1_700_000_040u64;
    let mut bytes = Vec::new();
    for (path, values) in [("stats-a", [5u64, 7]), ("stats-b", [2, 4])] {
        bytes.extend(frame(false, t, values[0], path));
        bytes.extend(frame(false, t + 60, values[1], path));
    }
    bytes.extend(frame(false, t + 120, 9, "stats-a"));
    d.send_raw("client", &bytes);
    d.wait_metric("ringdb_samples_accepted_total{protocol=\"socket\"}", 5.0);
    let agg = |q: &str, body: &str| {
        let (code, text) = http_request(
            &d.pki,
            "client",
            d.admin,
            "POST",
            &format!("/aggregate?{q}"),
            body,
        );
        (
            code,
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        )
    };
    let range = format!("from={t}&to={}", t + 120);
    let cases = [
        ("sum", json!([[t, 7], [t + 60, 11], [t + 120, "empty"]])),
        ("avg", json!([[t, 4], [t + 60, 6], [t + 120, "empty"]])),
        ("max", json!([[t, 5], [t + 60, 7], [t + 120, "empty"]])),
        ("min", json!([[t, 2], [t + 60, 4], [t + 120, "empty"]])),
    ];
    for (how, want) in cases {
        let (code, v) = agg(
            &format!("{range}&rule=m&aggregate={how}"),
            "paths=stats-a,stats-b",
        );
        assert_eq!(code, 200, "case {how}: {v}");
        assert_eq!(v["answer"], want, "case {how}");
    }
    let errors = [
        (
            "no from",
            format!("to={t}&rule=m&aggregate=sum"),
            "paths=stats-a",
            400,
            "no_from",
        ),
        (
            "no rule",
            format!("{range}&aggregate=sum"),
            "paths=stats-a",
            400,
            "no_rule",
        ),
        (
            "bad aggregate",
            format!("{range}&rule=m&aggregate=median"),
            "paths=stats-a",
            400,
            "no_aggregate",
        ),
        (
            "no paths",
            format!("{range}&rule=m&aggregate=sum"),
            "paths=",
            400,
            "no_paths",
        ),
        (
            "unknown path",
            format!("{range}&rule=m&aggregate=sum"),
            "paths=stats-zz",
            404,
            "path_not_found",
        ),
    ];
    for (name, q, body, status, code) in errors {
        let (got, v) = agg(&q, body);
        assert_eq!(
            (got, v["code"].as_str().unwrap()),
            (status, code),
            "case {name}: {v}"
        );
    }
}

//! Differential test against the real Prometheus 2.42 (Debian package): the
//! same series are remote-written into both, then the same instant and range
//! queries go to both and every answer is compared within 1e-9 relative.
//! Skipped, with a message, where `prometheus` is not installed.

use crate::common::{dechunk, enc, free_port, http_raw, now_secs, Daemon, KillOnDrop};
use ringdb::ingest::remote_write::{encode, label, proto};
use serde_json::Value as Json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STEP_S: u64 = 15;
const POINTS: u64 = 200;
fn plain(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}
/// Deterministic pseudo-random numbers.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The data set: counters with resets and gauges, sampled every 15 s.
/// Labels and samples of one series.
type SeriesRows = (Vec<(String, String)>, Vec<(i64, f64)>);

fn dataset(start: u64) -> Vec<SeriesRows> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::new();
    for job in ["api", "db"] {
        for instance in ["a:1", "b:2", "c:3"] {
            for method in ["get", "post"] {
                let mut v = 0.0;
                let samples = (0..POINTS)
                    .map(|i| {
                        v += (rng.next() * 10.0).floor();
                        if i == 120 && instance == "b:2" {
                            v = 3.0; // a counter reset
                        }
                        (((start + i * STEP_S) * 1000) as i64, v)
                    })
                    .collect();
                out.push((
                    vec![
                        ("__name__".to_string(), "http_requests_total".to_string()),
                        ("instance".to_string(), instance.to_string()),
                        ("job".to_string(), job.to_string()),
                        ("method".to_string(), method.to_string()),
                    ],
                    samples,
                ));
            }
            let samples = (0..POINTS)
                .map(|i| {
                    (
                        ((start + i * STEP_S) * 1000) as i64,
                        20.0 + (rng.next() * 400.0).round() / 10.0,
                    )
                })
                .collect();
            out.push((
                vec![
                    ("__name__".to_string(), "node_temp_celsius".to_string()),
                    ("instance".to_string(), instance.to_string()),
                    ("job".to_string(), job.to_string()),
                ],
                samples,
            ));
        }
    }
    out
}

/// Remote-write bodies in time order (all series per step), so Prometheus's
/// head accepts every sample.
fn bodies(data: &[SeriesRows]) -> Vec<Vec<u8>> {
    (0..POINTS as usize)
        .collect::<Vec<_>>()
        .chunks(20)
        .map(|steps| {
            let timeseries = data
                .iter()
                .map(|(labels, samples)| proto::TimeSeries {
                    labels: labels.iter().map(|(n, v)| label(n, v)).collect(),
                    samples: steps
                        .iter()
                        .map(|&i| proto::Sample {
                            value: samples[i].1,
                            timestamp: samples[i].0,
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect();
            encode(&proto::WriteRequest {
                timeseries,
                metadata: vec![],
            })
        })
        .collect()
}

fn queries() -> Vec<String> {
    let c = "http_requests_total";
    let g = "node_temp_celsius";
    let mut q: Vec<String> = Vec::new();
    for f in [
        "rate", "irate", "increase", "delta", "idelta", "resets", "changes", "deriv",
    ] {
        let m = if matches!(f, "delta" | "idelta" | "deriv") {
            g
        } else {
            c
        };
        q.push(format!("{f}({m}[5m])"));
        q.push(format!("sum by (job) ({f}({m}[2m]))"));
    }
    for f in [
        "avg", "min", "max", "sum", "count", "stddev", "stdvar", "last", "present",
    ] {
        q.push(format!("{f}_over_time({g}[10m])"));
    }
    q.push(format!("quantile_over_time(0.9, {g}[10m])"));
    q.push(format!("predict_linear({g}[10m], 600)"));
    for agg in [
        "sum", "avg", "min", "max", "count", "stddev", "stdvar", "group",
    ] {
        q.push(format!("{agg}({g})"));
        q.push(format!("{agg} by (job) ({g})"));
        q.push(format!("{agg} without (instance) (rate({c}[5m]))"));
    }
    q.push(format!("topk(2, {g})"));
    q.push(format!("bottomk(2, rate({c}[5m]))"));
    q.push(format!("quantile(0.5, {g})"));
    q.push(format!("count_values(\"v\", round({g}))"));
    for op in ["+", "-", "*", "/", "%", "^"] {
        q.push(format!("{g} {op} 2"));
        q.push(format!("2 {op} {g}"));
    }
    for op in ["==", "!=", ">", "<", ">=", "<="] {
        q.push(format!("{g} {op} 40"));
        q.push(format!("{g} {op} bool 40"));
    }
    q.push(format!("rate({c}[5m]) / on (instance, job) group_left {g}"));
    q.push(format!(
        "sum by (instance, job) (rate({c}[5m])) / ignoring (method) {g}"
    ));
    q.push(format!("{g} and on (instance) {c}{{method=\"get\"}}"));
    q.push(format!("{g}{{job=\"api\"}} or {g}{{job=\"db\"}}"));
    q.push(format!("{g} unless {g}{{instance=\"a:1\"}}"));
    for f in [
        "abs", "ceil", "floor", "round", "sqrt", "exp", "ln", "log2", "log10", "sgn",
    ] {
        q.push(format!("{f}({g})"));
    }
    q.push(format!("clamp({g}, 30, 50)"));
    q.push(format!("clamp_min({g}, 40)"));
    q.push(format!("clamp_max({g}, 40)"));
    q.push(format!(
        "label_replace({g}, \"host\", \"$1\", \"instance\", \"(.*):.*\")"
    ));
    q.push(format!(
        "label_join({g}, \"both\", \"-\", \"job\", \"instance\")"
    ));
    q.push(format!("timestamp({g})"));
    q.push(format!("absent({g}{{job=\"nope\"}})"));
    q.push(format!("absent_over_time({g}[5m])"));
    q.push(format!("{g} offset 5m"));
    q.push(format!("max_over_time(rate({c}[2m])[10m:1m])"));
    q.push(format!("sum(rate({c}{{method=~\"g.*\"}}[5m]))"));
    q.push(format!("{c}{{job!=\"api\", method!~\"p.*\"}}"));
    q.push("vector(1) + 1".into());
    q.push(format!("scalar(sum({g})) * 2"));
    q.push(format!("sort_desc(sum by (instance) ({g}))"));
    q.push(format!("-{g}"));
    q.push(format!("hour({g}) + minute({g})"));
    q
}

fn same(a: &Json, b: &Json) -> bool {
    match (a.as_str(), b.as_str()) {
        (Some(x), Some(y)) => match (x.parse::<f64>(), y.parse::<f64>()) {
            (Ok(p), Ok(q)) => p == q || (p.is_nan() && q.is_nan()) || ((p - q) / q).abs() <= 1e-9,
            _ => x == y,
        },
        _ => a == b,
    }
}

/// Compares two `data` objects (vector order ignored, matrix sorted).
fn equal(a: &Json, b: &Json) -> bool {
    if a["resultType"] != b["resultType"] {
        return false;
    }
    match a["resultType"].as_str() {
        Some("scalar") | Some("string") => {
            a["result"][0] == b["result"][0] && same(&a["result"][1], &b["result"][1])
        }
        _ => {
            let sorted = |v: &Json| {
                let mut items = v["result"].as_array().cloned().unwrap_or_default();
                items.sort_by_key(|i| i["metric"].to_string());
                items
            };
            let (x, y) = (sorted(a), sorted(b));
            x.len() == y.len()
                && x.iter().zip(&y).all(|(p, q)| {
                    p["metric"] == q["metric"]
                        && match (p.get("value"), q.get("value")) {
                            (Some(pv), Some(qv)) => pv[0] == qv[0] && same(&pv[1], &qv[1]),
                            _ => {
                                let (pv, qv) = (p["values"].as_array(), q["values"].as_array());
                                match (pv, qv) {
                                    (Some(pv), Some(qv)) => {
                                        pv.len() == qv.len()
                                            && pv
                                                .iter()
                                                .zip(qv)
                                                .all(|(r, s)| r[0] == s[0] && same(&r[1], &s[1]))
                                    }
                                    _ => false,
                                }
                            }
                        }
                })
        }
    }
}

#[test]
fn answers_match_prometheus() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED answers_match_prometheus: `prometheus` is not installed (apt-get install prometheus)");
        return;
    }
    let d = Daemon::start(
        "rules:\n  - {name: raw, prefix: '*', type: last, timeframe: 15s, limit: 1000}\n",
    );
    let port = free_port();
    let prom: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = d.dir.path();
    std::fs::write(dir.join("prom.yml"), "global: {scrape_interval: 1h}\n").unwrap();
    let _p = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prom.yml").display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("promdata").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .arg("--web.enable-remote-write-receiver")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(prom).is_err() || plain(prom, "GET", "/-/ready", &[], b"").0 != 200 {
        assert!(Instant::now() < deadline, "prometheus did not become ready");
        std::thread::sleep(Duration::from_millis(200));
    }

    let start = (now_secs() - POINTS * STEP_S - 60) / STEP_S * STEP_S;
    let data = dataset(start);
    let headers = [
        ("Content-Type", "application/x-protobuf"),
        ("Content-Encoding", "snappy"),
        ("X-Prometheus-Remote-Write-Version", "0.1.0"),
    ];
    for body in bodies(&data) {
        let (code, _) = plain(prom, "POST", "/api/v1/write", &headers, &body);
        assert_eq!(code, 204, "prometheus refused the write");
        let (code, _, text) = http_raw(
            &d.pki,
            "client",
            d.http,
            "POST",
            "/api/v1/write",
            &headers,
            &body,
        );
        assert_eq!(code, 204, "ringdb refused the write: {text}");
    }

    let end = start + (POINTS - 1) * STEP_S;
    let mut requests = Vec::new();
    for q in queries() {
        for t in [end - 1200 + 7, end - 300, end] {
            requests.push(format!("/api/v1/query?query={}&time={t}", enc(&q)));
        }
        requests.push(format!(
            "/api/v1/query_range?query={}&start={}&end={end}&step=60",
            enc(&q),
            end - 1800
        ));
    }
    let (mut matched, mut nonempty, mut mismatches) = (0, 0, Vec::new());
    for path in &requests {
        let (pc, pb) = plain(prom, "GET", path, &[], b"");
        let (rc, rb) = d.get(path);
        let (pj, rj): (Json, Json) = (
            serde_json::from_str(&pb).unwrap_or(Json::Null),
            serde_json::from_str(&rb).unwrap_or(Json::Null),
        );
        if pj["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            nonempty += 1;
        }
        if pc == rc && (pc != 200 || equal(&pj["data"], &rj["data"])) {
            matched += 1;
        } else {
            mismatches.push(format!(
                "{path}\n  prometheus {pc}: {pb:.300}\n  ringdb     {rc}: {rb:.300}"
            ));
        }
    }
    let total = requests.len();
    eprintln!("promql differential: {matched}/{total} answers match Prometheus 2.42 ({:.1}%), {nonempty} with data", 100.0 * matched as f64 / total as f64);
    assert!(total >= 200, "only {total} queries");
    assert!(
        nonempty * 4 >= total * 3,
        "only {nonempty} of {total} answers hold data: the comparison would be weak"
    );
    assert!(
        mismatches.is_empty(),
        "{} of {total} differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

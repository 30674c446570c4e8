//! A real Prometheus (Debian's 2.42 package) scrapes itself and
//! remote-writes to ringdb over mTLS; ringdb must then hold `up` and
//! `prometheus_*` series whose values match Prometheus' own API at the same
//! timestamps. Skipped, with a message, where `prometheus` is not installed
//! (.ci/run installs it).

use crate::common::{enc, free_port, Daemon, KillOnDrop};
use serde_json::Value as Json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
fn plain_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.to_string())
}

fn ringdb_rows(d: &Daemon, key: &str, from: u64, to: u64) -> Vec<Json> {
    let v = d.get_json(
        &format!("/paths/{}/raw/slice?from={from}&to={to}", enc(key)),
        200,
    );
    v["answer"].as_array().cloned().unwrap_or_default()
}

fn key_of(metric: &serde_json::Map<String, Json>) -> String {
    let name = metric["__name__"].as_str().unwrap();
    let mut others: Vec<(&str, &str)> = metric
        .iter()
        .filter(|(k, _)| *k != "__name__")
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
        .collect();
    others.sort();
    ringdb::model::series_key(name, others.into_iter())
}

#[test]
fn prometheus_remote_writes_what_it_scrapes() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED prometheus_remote_writes_what_it_scrapes: `prometheus` is not installed (apt-get install prometheus)");
        return;
    }
    let d = Daemon::start(
        "rules:\n  - {name: raw, prefix: '*', type: last, timeframe: 1s, limit: 3600}\n",
    );
    let port = free_port();
    let prom_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = d.dir.path();
    let (cert, key) = d.pki.client_files("client");
    let config = format!(
        "global: {{scrape_interval: 2s, evaluation_interval: 2s}}\n\
         scrape_configs:\n  - job_name: prometheus\n    static_configs: [{{targets: ['{prom_addr}']}}]\n\
         remote_write:\n  - url: https://localhost:{http}/api/v1/write\n    \
         tls_config: {{ca_file: '{ca}', cert_file: '{cert}', key_file: '{key}'}}\n    \
         queue_config: {{batch_send_deadline: 1s, max_samples_per_send: 500}}\n    \
         metadata_config: {{send_interval: 2s}}\n",
        http = d.http.port(),
        ca = d.pki.file("ca.pem").display(),
        cert = cert.display(),
        key = key.display(),
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let _prom = KillOnDrop(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prom").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );

    // Wait for a few scrapes to reach ringdb.
    let up_key = format!("up{{instance=\"{prom_addr}\",job=\"prometheus\"}}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = crate::common::now_secs();
        let (code, body) = d.get(&format!(
            "/paths/{}/raw/slice?from={}&to={now}",
            enc(&up_key),
            now - 60
        ));
        let filled = body.matches(",1.0]").count();
        if code == 200 && filled >= 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ringdb did not receive 6 scrapes of up: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Compare every raw sample Prometheus holds for these series, up to a
    // point remote_write has certainly delivered.
    let until = crate::common::now_secs() - 3;
    std::thread::sleep(Duration::from_secs(3));
    let query = r#"{__name__=~"up|prometheus_tsdb_head_series|scrape_samples_scraped|prometheus_http_requests_total"}[1m]"#;
    let body = plain_get(
        prom_addr,
        &format!("/api/v1/query?query={}&time={until}", enc(query)),
    )
    .expect("prometheus answers its API");
    let v: Json = serde_json::from_str(&body).unwrap();
    let result = v["data"]["result"].as_array().unwrap();
    assert!(
        result.len() >= 4,
        "prometheus returned {} series",
        result.len()
    );
    let (mut compared, mut mismatches) = (0, Vec::new());
    for series in result {
        let key = key_of(series["metric"].as_object().unwrap());
        let values = series["values"].as_array().unwrap();
        let first = values[0][0].as_f64().unwrap() as u64;
        let rows = ringdb_rows(&d, &key, first, until);
        for sample in values {
            let t = sample[0].as_f64().unwrap() as u64;
            let want: f64 = sample[1].as_str().unwrap().parse().unwrap();
            let got = rows.iter().find(|r| r[0] == t).map(|r| r[1].clone());
            compared += 1;
            match got.as_ref().and_then(Json::as_f64) {
                Some(g) if g == want || ((g - want) / want).abs() <= 1e-9 => {}
                _ => mismatches.push(format!("{key} @{t}: prometheus {want}, ringdb {got:?}")),
            }
        }
    }
    assert!(compared >= 10, "only {compared} samples compared");
    assert!(
        mismatches.is_empty(),
        "{} of {compared} differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    let rejected: f64 = {
        let (_, text) = d.get("/metrics");
        text.lines()
            .filter(|l| l.starts_with("ringdb_samples_rejected_total{protocol=\"remote_write\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(rejected, 0.0, "ringdb refused samples from Prometheus");
    assert!(
        d.metric("ringdb_remote_write_metadata_total") > 0.0,
        "metadata-only requests arrive and are accepted"
    );
    eprintln!("prometheus e2e: {compared} samples compared, all equal");
}

//! A real vmagent (Debian package victoria-metrics) relaying pushed data to
//! ringdb over remote_write with mutual TLS. vmagent keeps label sets in
//! the order they were pushed, so unsorted sets reach ringdb; every sample
//! must arrive. Skipped, with a message, where `vmagent` is not installed.

use crate::common::{free_port, now_secs, Daemon, KillOnDrop};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SERIES: u64 = 500;
const SAMPLES_PER_SERIES: u64 = 4;

/// POSTs `body` to vmagent's plain-HTTP listener with curl; the status code.
fn curl_post(url: &str, body: &str) -> Option<u16> {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
            "@-",
        ])
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(body.as_bytes())?;
            }
            child.wait_with_output()
        })
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[test]
fn vmagent_relays_unsorted_label_sets_and_everything_arrives() {
    let installed = |tool: &str| Command::new(tool).arg("-version").output().is_ok();
    if !installed("vmagent") || !installed("curl") {
        eprintln!("SKIPPED vmagent_relays_unsorted_label_sets_and_everything_arrives: `vmagent` or `curl` is not installed (apt-get install victoria-metrics curl)");
        return;
    }
    let d = Daemon::start(
        "rules:\n  - {name: raw, prefix: '*', type: last, timeframe: 1s, limit: 3600}\n",
    );
    let port = free_port();
    let (cert, key) = d.pki.client_files("client");
    let dir = d.dir.path();
    let _vmagent = KillOnDrop(
        Command::new("vmagent")
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!(
                "-remoteWrite.url=https://localhost:{}/api/v1/write",
                d.http.port()
            ))
            .arg(format!(
                "-remoteWrite.tlsCAFile={}",
                d.pki.file("ca.pem").display()
            ))
            .arg(format!("-remoteWrite.tlsCertFile={}", cert.display()))
            .arg(format!("-remoteWrite.tlsKeyFile={}", key.display()))
            .arg(format!(
                "-remoteWrite.tmpDataPath={}",
                dir.join("vmagent").display()
            ))
            .arg("-remoteWrite.flushInterval=200ms")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start vmagent"),
    );
    // Label sets deliberately unsorted (z before a, the name in between).
    let t0 = (now_secs() - 30) * 1000;
    let mut body = String::new();
    for i in 0..SERIES {
        for k in 0..SAMPLES_PER_SERIES {
            body.push_str(&format!(
                "relayed{{zone=\"z{}\",instance=\"i{i}\",app=\"a\"}} {} {}\n",
                i % 7,
                i * 10 + k,
                t0 + k * 1000
            ));
        }
    }
    let url = format!("http://127.0.0.1:{port}/api/v1/import/prometheus");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match curl_post(&url, &body) {
            Some(204) | Some(200) => break,
            status => assert!(
                Instant::now() < deadline,
                "vmagent did not take the import: {status:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let want = (SERIES * SAMPLES_PER_SERIES) as f64;
    let accepted = d.wait_metric(
        "ringdb_samples_accepted_total{protocol=\"remote_write\"}",
        want,
    );
    let (_, metrics) = d.get("/metrics");
    let rejected: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("ringdb_samples_rejected_total{protocol=\"remote_write\""))
        .collect();
    assert_eq!(
        accepted, want,
        "samples relayed by vmagent; rejected: {rejected:?}"
    );
    // Every series under its canonical (sorted) key, every sample in it.
    let at = t0 / 1000 + SAMPLES_PER_SERIES - 1;
    let answer = d.get_json(
        &format!(
            "/api/v1/query?query=count(count_over_time(relayed%5B10s%5D)%20%3D%3D%20{SAMPLES_PER_SERIES})&time={at}"
        ),
        200,
    );
    let count = &answer["data"]["result"][0]["value"][1];
    assert_eq!(count, &serde_json::json!(SERIES.to_string()), "{answer}");
    let key = "relayed{app=\"a\",instance=\"i3\",zone=\"z3\"}";
    let (code, _) = d.get(&format!(
        "/paths/{}/raw/slice?from={}&to={at}",
        crate::common::enc(key),
        t0 / 1000
    ));
    assert_eq!(code, 200, "canonical key {key}");
    eprintln!(
        "vmagent e2e: {accepted} samples of {SERIES} unsorted label sets relayed, all stored"
    );
}

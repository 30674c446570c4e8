//! Scraping (DESIGN §6): the `scrape:` section's validation, the real node
//! exporter (Debian's `prometheus-node-exporter`, installed by .ci/run;
//! skipped with a message elsewhere) scraped over http next to targets
//! that are down, and one ringdb scraping another's /metrics over https
//! with a client certificate.

use crate::common::Daemon;
use ringdb::ingest::scrape::Scraper;
use serde_json::Value as Json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RULES: &str =
    "rules:\n  - {name: all_1s, prefix: '*', type: last, timeframe: 1s, limit: 600}\n";

fn issues(text: &str) -> Vec<String> {
    match ringdb::config::parse(text, "t.yaml", Path::new("/etc/ringdb")) {
        Ok(_) => Vec::new(),
        Err(ringdb::config::ConfigError::Invalid { issues, .. }) => {
            issues.iter().map(|i| i.to_string()).collect()
        }
        Err(e) => vec![e.to_string()],
    }
}

#[test]
fn scrape_section_is_validated_with_locations() {
    let ok = format!(
        "scrape:\n  - job: node\n    targets: [127.0.0.1:9100]\n  - job: peer\n    interval: 15s\n    timeout: 5s\n    scheme: https\n    ca: tls/ca.pem\n    cert: /abs/client.pem\n    key: tls/client-key.pem\n    metrics_path: /federate\n    body_limit_bytes: 1000\n    targets: ['localhost:9201', '[::1]:9201']\n{RULES}"
    );
    let s = ringdb::config::parse(&ok, "t.yaml", Path::new("/etc/ringdb")).unwrap();
    let (node, peer) = (&s.scrape[0], &s.scrape[1]);
    assert_eq!(node.interval, Duration::from_secs(60), "default interval");
    assert_eq!(node.timeout, Duration::from_secs(10), "default timeout");
    assert_eq!(node.metrics_path, "/metrics");
    assert_eq!(node.body_limit_bytes, 16 << 20);
    assert_eq!(node.scheme, ringdb::config::ScrapeScheme::Http);
    assert_eq!(
        peer.ca.as_deref(),
        Some(Path::new("/etc/ringdb/tls/ca.pem"))
    );
    assert_eq!(peer.cert.as_deref(), Some(Path::new("/abs/client.pem")));
    assert_eq!(peer.timeout, Duration::from_secs(5));
    assert_eq!(peer.targets.len(), 2);
    let short = ringdb::config::parse(
        &format!("scrape: [{{job: a, interval: 2s, targets: ['h:1']}}]\n{RULES}"),
        "t.yaml",
        Path::new("."),
    )
    .unwrap();
    assert_eq!(
        short.scrape[0].timeout,
        Duration::from_secs(2),
        "default timeout is at most the interval"
    );

    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown key",
            "[{job: a, targets: ['h:1'], honor_labels: true}]",
            "scrape[0].honor_labels: unknown key",
        ),
        (
            "missing job",
            "[{targets: ['h:1']}]",
            "scrape[0].job: missing",
        ),
        (
            "duplicate job",
            "[{job: a, targets: ['h:1']}, {job: a, targets: ['h:2']}]",
            "scrape[1].job: duplicate job name \"a\"",
        ),
        (
            "timeout over interval",
            "[{job: a, interval: 5s, timeout: 10s, targets: ['h:1']}]",
            "scrape[0].timeout: timeout 10s is longer than the interval 5s",
        ),
        (
            "zero interval",
            "[{job: a, interval: 0, targets: ['h:1']}]",
            "scrape[0].interval: 0ns is out of range; expected 100ms to 86400s",
        ),
        (
            "missing targets",
            "[{job: a}]",
            "scrape[0].targets: missing",
        ),
        (
            "empty targets",
            "[{job: a, targets: []}]",
            "scrape[0].targets: empty",
        ),
        (
            "url as target",
            "[{job: a, targets: ['http://h:1/metrics']}]",
            "scrape[0].targets[0]: expected host:port",
        ),
        (
            "no port",
            "[{job: a, targets: ['h']}]",
            "scrape[0].targets[0]: expected host:port",
        ),
        (
            "duplicate target",
            "[{job: a, targets: ['h:1', 'h:1']}]",
            "scrape[0].targets[1]: duplicate target",
        ),
        (
            "bad scheme",
            "[{job: a, scheme: ftp, targets: ['h:1']}]",
            "scrape[0].scheme: unknown value \"ftp\", expected one of http, https",
        ),
        (
            "https without ca",
            "[{job: a, scheme: https, targets: ['h:1']}]",
            "scrape[0].ca: missing; scheme https needs ca",
        ),
        (
            "tls files with http",
            "[{job: a, ca: ca.pem, targets: ['h:1']}]",
            "scrape[0].ca: only used with scheme: https",
        ),
        (
            "cert without key",
            "[{job: a, scheme: https, ca: c, cert: x, targets: ['h:1']}]",
            "scrape[0].key: missing; a client certificate needs both",
        ),
        (
            "relative metrics path",
            "[{job: a, metrics_path: metrics, targets: ['h:1']}]",
            "scrape[0].metrics_path: expected an absolute path",
        ),
        (
            "zero body limit",
            "[{job: a, body_limit_bytes: 0, targets: ['h:1']}]",
            "scrape[0].body_limit_bytes: expected a positive",
        ),
    ];
    for (case, scrape, want) in cases {
        let got = issues(&format!("scrape: {scrape}\n{RULES}"));
        assert!(
            got.iter().any(|i| i.starts_with(want)),
            "case {case}: {got:?} has no {want:?}"
        );
    }
}

/// The instant vector of a PromQL query, now.
fn query(d: &Daemon, promql: &str) -> Vec<Json> {
    let v = d.get_json(
        &format!("/api/v1/query?query={}", crate::common::enc(promql)),
        200,
    );
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Polls `query` until `ok` holds on its result or 20 s pass; returns the
/// last result.
fn wait_query(d: &Daemon, promql: &str, ok: impl Fn(&[Json]) -> bool) -> Vec<Json> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let result = query(d, promql);
        if ok(&result) || Instant::now() > deadline {
            return result;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn values(result: &[Json]) -> Vec<String> {
    result
        .iter()
        .map(|r| r["value"][1].as_str().unwrap_or("").to_string())
        .collect()
}

struct NodeExporter(Child);

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_node_exporter() -> Option<(NodeExporter, SocketAddr)> {
    let port = crate::common::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address={addr}"))
        .args([
            "--collector.disable-defaults",
            "--collector.cpu",
            "--collector.loadavg",
            "--collector.meminfo",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let exporter = NodeExporter(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "node exporter did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((exporter, addr))
}

#[test]
fn node_exporter_is_scraped_and_down_targets_do_not_stall_it() {
    if Command::new("prometheus-node-exporter")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "SKIPPED node_exporter_is_scraped_and_down_targets_do_not_stall_it: \
             `prometheus-node-exporter` is not installed (apt-get install prometheus-node-exporter)"
        );
        return;
    }
    let (_exporter, node) = start_node_exporter().expect("start prometheus-node-exporter");
    // Down two ways: nothing listening, and a listener that never answers
    // (connections sit in its backlog until the scrape times out).
    let closed = crate::common::free_port();
    let black_hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = black_hole.local_addr().unwrap();
    let d = Daemon::start(&format!(
        "scrape:\n  - {{job: node, interval: 1s, timeout: 1s, targets: ['{node}']}}\n  \
         - {{job: down, interval: 1s, timeout: 900ms, targets: ['127.0.0.1:{closed}', '{hole}']}}\n{RULES}"
    ));

    let up = wait_query(&d, "up{job=\"node\"}", |r| values(r) == ["1"]);
    assert_eq!(values(&up), ["1"], "up{{job=\"node\"}}: {up:?}");
    assert_eq!(up[0]["metric"]["instance"], node.to_string());

    let cpu = wait_query(&d, "node_cpu_seconds_total", |r| !r.is_empty());
    assert!(!cpu.is_empty(), "no node_cpu_seconds_total");
    let m = &cpu[0]["metric"];
    assert_eq!(m["job"], "node");
    assert_eq!(m["instance"], node.to_string());
    assert!(m["cpu"].is_string() && m["mode"].is_string(), "{m}");
    assert!(values(&cpu).iter().all(|v| v.parse::<f64>().is_ok()));

    let down = wait_query(&d, "up{job=\"down\"}", |r| values(r) == ["0", "0"]);
    assert_eq!(values(&down), ["0", "0"], "up{{job=\"down\"}}: {down:?}");

    let scraped = query(&d, "scrape_samples_scraped{job=\"node\"}");
    assert!(
        values(&scraped)[0].parse::<f64>().unwrap() > 10.0,
        "{scraped:?}"
    );
    assert_eq!(query(&d, "scrape_duration_seconds").len(), 3);

    // The black hole times out every second; node scrapes keep coming.
    let before = d.metric("ringdb_scrapes_total{job=\"node\",result=\"up\"}");
    std::thread::sleep(Duration::from_millis(4500));
    let after = d.metric("ringdb_scrapes_total{job=\"node\",result=\"up\"}");
    assert!(
        after >= before + 2.0,
        "node scrapes stalled: {before} → {after}"
    );
    assert!(d.metric("ringdb_scrapes_total{job=\"down\",result=\"timeout\"}") >= 1.0);
    assert!(d.metric("ringdb_scrapes_total{job=\"down\",result=\"connect\"}") >= 1.0);
    assert!(d.metric("ringdb_samples_accepted_total{protocol=\"scrape\"}") > 10.0);
    // Shutdown waits at most for the scrapes in flight (the black hole's
    // is bounded by its timeout), then exits cleanly.
    let mut d = d;
    assert!(d.stop().success(), "ringdb did not shut down cleanly");
    drop(black_hole);
}

#[test]
fn ringdb_scrapes_another_ringdb_over_mtls() {
    let target = Daemon::start(RULES);
    let pki = &target.pki.dir;
    let (ca, cert, key) = (
        pki.join("ca.pem"),
        pki.join("client.pem"),
        pki.join("client-key.pem"),
    );
    let t = target.http;
    let d = Daemon::start(&format!(
        "scrape:\n  - job: peer\n    interval: 1s\n    scheme: https\n    ca: {ca}\n    cert: {cert}\n    key: {key}\n    targets: ['{t}']\n  \
         - job: no_cert\n    interval: 1s\n    scheme: https\n    ca: {ca}\n    targets: ['{t}']\n  \
         - job: plain\n    interval: 1s\n    targets: ['{t}']\n{RULES}",
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
    ));
    let up = wait_query(&d, "up{job=\"peer\"}", |r| values(r) == ["1"]);
    assert_eq!(values(&up), ["1"], "{up:?}");
    // The target's own self-metrics, under the scraper's job/instance.
    let ready = wait_query(&d, "ringdb_ready{job=\"peer\"}", |r| !r.is_empty());
    assert_eq!(values(&ready), ["1"], "{ready:?}");
    assert_eq!(ready[0]["metric"]["instance"], t.to_string());

    // The target refuses a client without a certificate, and plain http.
    for job in ["no_cert", "plain"] {
        let r = wait_query(&d, &format!("up{{job=\"{job}\"}}"), |r| values(r) == ["0"]);
        assert_eq!(values(&r), ["0"], "job {job}: {r:?}");
    }
    assert!(
        d.metric("ringdb_scrapes_total{job=\"no_cert\",result=\"tls\"}") >= 1.0
            || d.metric("ringdb_scrapes_total{job=\"no_cert\",result=\"http\"}") >= 1.0
    );
}

/// A tiny HTTP/1.1 server on a thread answering every request with
/// `response`; returns its address and a request counter.
fn serve(response: Vec<u8>) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = conn.write_all(&response);
        }
    });
    (addr, count)
}

fn ok_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn chunked_response(body: &str) -> Vec<u8> {
    let mut out =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for chunk in body.as_bytes().chunks(100) {
        out.extend(format!("{:x}\r\n", chunk.len()).into_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// In process: `Scraper::set_jobs` swaps targets while running (the
/// removed one is no longer asked), bodies over the cap fail the scrape
/// whether or not they declare a length, and shutdown drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraper_follows_set_jobs_and_caps_bodies() {
    let (x, x_count) = serve(ok_response("x_metric{job=\"inner\"} 1\n"));
    let (y, _) = serve(ok_response("# TYPE y_metric gauge\ny_metric 2\nbad line\n"));
    let big_body = format!("big {}\n", "1".repeat(2000));
    let (big, _) = serve(ok_response(&big_body));
    let (chunked, _) = serve(chunked_response(&big_body));
    let config = |a_target: SocketAddr| {
        format!(
            "scrape:\n  - {{job: a, interval: 200ms, timeout: 200ms, targets: ['{a_target}']}}\n  \
             - {{job: big, interval: 200ms, timeout: 200ms, body_limit_bytes: 1000, targets: ['{big}', '{chunked}']}}\n{RULES}"
        )
    };
    let settings = ringdb::config::parse(&config(x), "t.yaml", Path::new(".")).unwrap();
    let store = Arc::new(ringdb::store::Store::new(
        ringdb::rules::RuleSet::new(settings.rules.clone()),
        ringdb::store::StoreLimits {
            max_future_ms: 600_000,
            max_series: 1000,
        },
    ));
    let metrics = Arc::new(ringdb::telemetry::Metrics::default());
    let clock: ringdb::model::Clock = Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    });
    let scraper = Arc::new(Scraper::new(
        settings.scrape,
        store.clone(),
        metrics.clone(),
        clock,
    ));
    let shutdown = ringdb::shutdown::Shutdown::new();
    let running = {
        let (scraper, shutdown) = (scraper.clone(), shutdown.clone());
        tokio::spawn(async move { scraper.run(shutdown).await })
    };
    let metric = |series: &str| -> f64 {
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    let has = |key: &str| store.read(key, |_| ()).is_some();

    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(x_count.load(Ordering::SeqCst) >= 3, "x scraped every 200ms");
    assert!(has(&format!(
        "x_metric{{exported_job=\"inner\",instance=\"{x}\",job=\"a\"}}"
    )));
    assert!(has(&format!("up{{instance=\"{x}\",job=\"a\"}}")));
    assert!(
        metric("ringdb_scrapes_total{job=\"big\",result=\"too_large\"}") >= 4.0,
        "declared and chunked bodies over the cap:\n{}",
        metrics.render()
    );
    assert!(!has(&format!("big{{instance=\"{big}\",job=\"big\"}}")));

    let next = ringdb::config::parse(&config(y), "t.yaml", Path::new(".")).unwrap();
    scraper.set_jobs(next.scrape);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let x_after_swap = x_count.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        x_count.load(Ordering::SeqCst),
        x_after_swap,
        "removed target still scraped"
    );
    assert!(has(&format!("y_metric{{instance=\"{y}\",job=\"a\"}}")));
    assert!(metric("ringdb_scrape_malformed_lines_total{job=\"a\"}") >= 1.0);
    assert_eq!(scraper.jobs()[0].targets, [y.to_string()]);

    shutdown.trigger();
    shutdown
        .drain(Duration::from_secs(5))
        .await
        .expect("scrape tasks drain");
    running.await.unwrap();
}

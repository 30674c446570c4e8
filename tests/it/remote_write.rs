//! remote_write 1.0 over mTLS with real prost + snappy bodies: status codes
//! as DESIGN §5, valid samples kept beside invalid ones, every refusal
//! counted.

use crate::common::{http_raw, now_secs, Daemon};
use ringdb::ingest::remote_write::{encode, label, proto};
use std::io::Write;

const CONFIG: &str = "limits: {max_body_bytes: 20000}\nrules:\n  - {name: raw, prefix: '*', type: last, timeframe: 1s, limit: 3600}\n  - {name: up_min, prefix: up, type: max, timeframe: 60, limit: 60, value_size: small}\n";

fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> proto::TimeSeries {
    proto::TimeSeries {
        labels: labels.iter().map(|(n, v)| label(n, v)).collect(),
        samples: samples
            .iter()
            .map(|&(timestamp, value)| proto::Sample { value, timestamp })
            .collect(),
        ..Default::default()
    }
}

const PROTOBUF: [(&str, &str); 3] = [
    ("Content-Type", "application/x-protobuf"),
    ("Content-Encoding", "snappy"),
    ("X-Prometheus-Remote-Write-Version", "0.1.0"),
];

fn post(d: &Daemon, body: &[u8]) -> (u16, String, String) {
    http_raw(
        &d.pki,
        "client",
        d.http,
        "POST",
        "/api/v1/write",
        &PROTOBUF,
        body,
    )
}

fn read(d: &Daemon, key: &str, rule: &str, from: u64, to: u64) -> serde_json::Value {
    let path = key
        .replace('%', "%25")
        .replace('{', "%7B")
        .replace('}', "%7D")
        .replace('"', "%22")
        .replace(',', "%2C")
        .replace('/', "%2F")
        .replace(' ', "%20");
    d.get_json(
        &format!("/paths/{path}/{rule}/slice?from={from}&to={to}"),
        200,
    )["answer"]
        .clone()
}

#[test]
fn valid_batch_is_stored_and_readable() {
    let d = Daemon::start(CONFIG);
    let t = (now_secs() * 1000 / 60_000 * 60_000) as i64;
    let req = proto::WriteRequest {
        timeseries: vec![
            series(
                &[("__name__", "up"), ("instance", "a:9090"), ("job", "node")],
                &[(t, 1.0), (t + 1000, 0.0)],
            ),
            series(
                &[("__name__", "node_load1"), ("instance", "a:9100")],
                &[(t, 0.25), (t + 1000, 0.5)],
            ),
            series(
                &[("__name__", "http_requests_total"), ("path", "/api/v1")],
                &[(t, 12.5)],
            ),
        ],
        metadata: vec![],
    };
    let (code, _, body) = post(&d, &encode(&req));
    assert_eq!(code, 204, "{body}");
    let s = (t / 1000) as u64;
    assert_eq!(
        read(&d, "node_load1{instance=\"a:9100\"}", "raw", s, s + 1),
        serde_json::json!([[s, 0.25], [s + 1, 0.5]])
    );
    // `up` has a rule of its own, so the "*" rule does not apply to it.
    assert_eq!(
        read(&d, "up{instance=\"a:9090\",job=\"node\"}", "up_min", s, s),
        serde_json::json!([[s, 1]])
    );
    assert_eq!(
        read(&d, "http_requests_total{path=\"/api/v1\"}", "raw", s, s),
        serde_json::json!([[s, 12.5]])
    );
    assert_eq!(
        d.metric("ringdb_samples_accepted_total{protocol=\"remote_write\"}"),
        5.0
    );
}

#[test]
fn mixed_batch_is_400_and_keeps_the_valid_samples() {
    let d = Daemon::start(CONFIG);
    let t = now_secs() as i64 * 1000;
    let req = proto::WriteRequest {
        timeseries: vec![
            series(&[("__name__", "good"), ("a", "1")], &[(t, 1.0)]),
            series(&[("__name__", "bad"), ("a-b", "1")], &[(t, 1.0), (t, 2.0)]),
            series(&[("__name__", "dup"), ("a", "1"), ("a", "2")], &[(t, 1.0)]),
            // Accepted: the order is repaired (vmagent relays label sets unsorted).
            series(
                &[("__name__", "unsorted"), ("z", "1"), ("a", "1")],
                &[(t, 1.0)],
            ),
            series(&[("job", "x")], &[(t, 1.0)]),
            series(&[("__name__", "future")], &[(t + 3_600_000, 1.0)]),
            series(&[("__name__", "old")], &[(-5, 1.0)]),
            // 1.5 cannot go into `up`'s small integer cell.
            series(&[("__name__", "up")], &[(t, 1.5)]),
        ],
        metadata: vec![],
    };
    let (code, _, body) = post(&d, &encode(&req));
    assert_eq!(code, 400, "{body}");
    for want in [
        "rejected 7 of 9 samples",
        "out_of_range: 1",
        "invalid_label_name: 2",
        "duplicate_label: 1",
        "missing_metric_name: 1",
        "too_far_future: 1",
        "too_old: 1",
    ] {
        assert!(body.contains(want), "missing {want:?} in {body:?}");
    }
    assert!(!body.contains("unsorted"), "{body}");
    let s = (t / 1000) as u64;
    assert_eq!(
        read(&d, "good{a=\"1\"}", "raw", s, s),
        serde_json::json!([[s, 1.0]])
    );
    assert_eq!(
        read(&d, "unsorted{a=\"1\",z=\"1\"}", "raw", s, s),
        serde_json::json!([[s, 1.0]]),
        "stored under its canonical key"
    );
    assert_eq!(
        d.metric("ringdb_samples_rejected_total{protocol=\"remote_write\",reason=\"invalid_label_name\"}"),
        2.0
    );
    assert_eq!(
        d.metric(
            "ringdb_samples_rejected_total{protocol=\"remote_write\",reason=\"out_of_range\"}"
        ),
        1.0
    );
}

#[test]
fn bad_bodies_are_refused_with_a_message() {
    let d = Daemon::start(CONFIG);
    let t = now_secs() as i64 * 1000;
    let big = proto::WriteRequest {
        timeseries: (0..3000u64)
            .map(|i| {
                let noise = format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                series(&[("__name__", "m"), ("i", &noise)], &[(t, i as f64)])
            })
            .collect(),
        metadata: vec![],
    };
    let big_body = encode(&big);
    assert!(big_body.len() > 20_000);
    let valid = encode(&proto::WriteRequest {
        timeseries: vec![series(&[("__name__", "m")], &[(t, 1.0)])],
        metadata: vec![],
    });
    // A small body whose snappy header declares a huge decompressed length.
    let mut bomb = Vec::new();
    snap_len_header(&mut bomb, 1 << 30);
    bomb.extend_from_slice(&[0; 16]);
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "oversized body",
            PROTOBUF.to_vec(),
            big_body,
            413,
            "over the limit",
        ),
        (
            "declared length over the cap",
            PROTOBUF.to_vec(),
            bomb,
            413,
            "over the limit",
        ),
        (
            "garbage",
            PROTOBUF.to_vec(),
            b"this is not snappy at all".to_vec(),
            400,
            "snappy",
        ),
        (
            "truncated snappy",
            PROTOBUF.to_vec(),
            valid[..valid.len() - 3].to_vec(),
            400,
            "snappy",
        ),
        (
            "snappy but not protobuf",
            PROTOBUF.to_vec(),
            snap::raw::Encoder::new().compress_vec(&[0xff; 40]).unwrap(),
            400,
            "protobuf",
        ),
        (
            "wrong content-type",
            vec![("Content-Type", "application/json")],
            valid.clone(),
            400,
            "expected application/x-protobuf",
        ),
        (
            "wrong content-encoding",
            vec![
                ("Content-Type", "application/x-protobuf"),
                ("Content-Encoding", "gzip"),
            ],
            valid.clone(),
            400,
            "expected snappy",
        ),
    ];
    for (name, headers, body, status, message) in cases {
        let (code, _, text) = http_raw(
            &d.pki,
            "client",
            d.http,
            "POST",
            "/api/v1/write",
            &headers,
            &body,
        );
        assert_eq!(code, status, "case {name}: {text}");
        assert!(text.contains(message), "case {name}: {text:?}");
    }
    assert!(d.metric("ringdb_remote_write_refused_total{reason=\"too_large\"}") >= 2.0);
    assert_eq!(
        d.metric("ringdb_samples_accepted_total{protocol=\"remote_write\"}"),
        0.0
    );
    // The daemon is still serving.
    let (code, _, _) = post(&d, &valid);
    assert_eq!(code, 204);
}

/// Writes snappy's varint length preamble.
fn snap_len_header(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[test]
fn metadata_only_stale_markers_exemplars_and_histograms() {
    let d = Daemon::start(CONFIG);
    let t = now_secs() as i64 * 1000;
    let metadata_only = proto::WriteRequest {
        timeseries: vec![],
        metadata: vec![proto::MetricMetadata {
            r#type: 1,
            metric_family_name: "up".into(),
            help: "target up".into(),
            unit: String::new(),
        }],
    };
    let (code, _, _) = post(&d, &encode(&metadata_only));
    assert_eq!(code, 204);
    let stale = f64::from_bits(0x7ff0_0000_0000_0002);
    let mut with_extras = series(&[("__name__", "s")], &[(t - 1000, 3.0), (t, stale)]);
    with_extras.exemplars.push(proto::Exemplar {
        labels: vec![],
        value: 1.0,
        timestamp: t,
    });
    with_extras.histograms.push(proto::Histogram {
        timestamp: t,
        ..Default::default()
    });
    let (code, _, body) = post(
        &d,
        &encode(&proto::WriteRequest {
            timeseries: vec![with_extras],
            metadata: vec![],
        }),
    );
    assert_eq!(code, 204, "{body}");
    let s = now_secs();
    assert_eq!(
        read(&d, "s", "raw", s - 1, s),
        serde_json::json!([[s - 1, 3.0], [s, "empty"]])
    );
    assert_eq!(d.metric("ringdb_remote_write_stale_markers_total"), 1.0);
    assert_eq!(
        d.metric("ringdb_remote_write_skipped_total{kind=\"exemplar\"}"),
        1.0
    );
    assert_eq!(
        d.metric("ringdb_remote_write_skipped_total{kind=\"histogram\"}"),
        1.0
    );
    assert_eq!(d.metric("ringdb_remote_write_metadata_total"), 1.0);
}

/// A daemon with one remote_write slot, held by a connection that sent
/// headers and part of a body; and the body of a one-sample write.
fn one_slot_held() -> (Daemon, impl std::io::Write + Send, Vec<u8>) {
    let d = Daemon::start(&format!(
        "limits: {{max_inflight_writes: 1}}\n{}",
        CONFIG.split_once('\n').unwrap().1
    ));
    let mut slow = crate::common::tls_stream(&d.pki, Some("client"), d.http);
    slow.write_all(
        b"POST /api/v1/write HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\nContent-Length: 1000\r\n\r\nabc",
    )
    .unwrap();
    slow.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let body = encode(&proto::WriteRequest {
        timeseries: vec![series(
            &[("__name__", "m")],
            &[(now_secs() as i64 * 1000, 1.0)],
        )],
        metadata: vec![],
    });
    (d, slow, body)
}

#[test]
fn a_full_in_flight_limit_answers_429_with_retry_after() {
    let (d, slow, body) = one_slot_held();
    let (code, head, text) = post(&d, &body);
    assert_eq!(code, 429, "{text}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    drop(slow);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(post(&d, &body).0, 204);
}

/// A write that finds every slot busy waits (up to 2 s) for one instead of
/// a 429 at once: the slot freed 500 ms later takes it (before: 429).
#[test]
fn a_write_over_the_in_flight_limit_waits_briefly_for_a_slot() {
    let (d, slow, body) = one_slot_held();
    // The holder goes away 500 ms from now: its slot is freed.
    let holder = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        drop(slow);
    });
    let started = std::time::Instant::now();
    let (code, _, text) = post(&d, &body);
    assert_eq!(code, 204, "{text}");
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(300),
        "it should have waited for the slot: {waited:?}"
    );
    holder.join().unwrap();
}

fn post_as(d: &Daemon, client: &str, body: &[u8]) -> (u16, String, String) {
    http_raw(
        &d.pki,
        client,
        d.http,
        "POST",
        "/api/v1/write",
        &PROTOBUF,
        body,
    )
}

#[test]
fn key_and_label_limits_come_from_the_config_and_are_counted() {
    let d = Daemon::start(
        "limits: {max_labels_per_series: 3, max_label_value_bytes: 100, max_series_key_bytes: 120}\n\
         rules:\n  - {name: raw, prefix: '*', type: last, timeframe: 1s, limit: 3600}\n",
    );
    let t = now_secs() as i64 * 1000;
    let v60 = "v".repeat(60);
    let v101 = "v".repeat(101);
    let req = proto::WriteRequest {
        timeseries: vec![
            series(&[("__name__", "fits"), ("a", &v60)], &[(t, 1.0)]),
            series(
                &[("__name__", "many"), ("a", "1"), ("b", "2"), ("c", "3")],
                &[(t, 1.0)],
            ),
            series(&[("__name__", "long"), ("a", &v101)], &[(t, 1.0)]),
            series(
                &[("__name__", "key"), ("a", &v60), ("b", &v60)],
                &[(t, 1.0), (t - 1000, 2.0)],
            ),
        ],
        metadata: vec![],
    };
    let (code, _, body) = post(&d, &encode(&req));
    assert_eq!(code, 400, "{body}");
    for want in [
        "rejected 4 of 5 samples",
        "too_many_labels: 1",
        "label_too_long: 1",
        "series_key_too_long: 2 (limits.max_series_key_bytes)",
        "too_many_labels: 1 (limits.max_labels_per_series)",
    ] {
        assert!(body.contains(want), "missing {want:?} in {body:?}");
    }
    assert_eq!(
        d.metric("ringdb_samples_rejected_total{protocol=\"remote_write\",reason=\"series_key_too_long\"}"),
        2.0
    );
    // The same cap for a socket path.
    let path = format!("key-{}", "p".repeat(200));
    d.send_raw("client", &crate::common::frame(false, now_secs(), 1, &path));
    assert_eq!(
        d.wait_metric(
            "ringdb_samples_rejected_total{protocol=\"socket\",reason=\"series_key_too_long\"}",
            1.0
        ),
        1.0
    );
    assert!(d.metric("ringdb_series_key_bytes") > 0.0);
}

#[test]
fn metadata_is_written_only_by_who_may_write_the_family_and_capped() {
    let d = Daemon::start(
        "limits: {max_help_bytes: 16}\n\
         clients:\n  - {name: agent-7, write: [traffic], read: ['*']}\n  - {name: reader, write: [up], read: ['*'], admin: true}\n\
         rules:\n  - {name: raw, prefix: '*', type: last, timeframe: 1s, limit: 3600}\n",
    );
    let meta = |family: &str, help: &str| proto::MetricMetadata {
        r#type: proto::metric_metadata::MetricType::Counter as i32,
        metric_family_name: family.into(),
        help: help.into(),
        unit: String::new(),
    };
    let request = |entries: Vec<proto::MetricMetadata>| {
        encode(&proto::WriteRequest {
            timeseries: vec![],
            metadata: entries,
        })
    };
    let big_help = "h".repeat(8 << 10);
    let (code, _, body) = post_as(
        &d,
        "reader",
        &request(vec![meta("up", &format!("targets up {big_help}"))]),
    );
    assert_eq!(code, 204, "{body}");
    // `client` is not listed in `clients:`: its connection is closed after
    // the handshake (no status at all). agent-7 may write only traffic: its
    // metadata for `up` is dropped, the request still succeeds.
    let (code, _, body) = post_as(&d, "client", &request(vec![meta("up", &big_help)]));
    assert_eq!(code, 0, "an unlisted client got an answer: {body}");
    for (who, family) in [("agent-7", "up"), ("agent-7", "traffic")] {
        let (code, _, body) = post_as(&d, who, &request(vec![meta(family, &big_help)]));
        assert_eq!(code, 204, "{who} {family}: {body}");
    }
    let get = |path: &str| {
        let (code, body) = crate::common::http_request(&d.pki, "reader", d.http, "GET", path, "");
        assert_eq!(code, 200, "GET {path}: {body}");
        body
    };
    let answer: serde_json::Value = serde_json::from_str(&get("/api/v1/metadata")).unwrap();
    assert_eq!(
        answer["data"]["up"][0]["help"],
        serde_json::json!("targets up hhhhh"),
        "kept and cut to 16 bytes: {answer}"
    );
    assert_eq!(
        answer["data"]["traffic"][0]["help"],
        serde_json::json!("hhhhhhhhhhhhhhhh")
    );
    let metrics = get("/metrics");
    let skipped = "ringdb_metadata_skipped_total{protocol=\"remote_write\",reason=\"forbidden\"} 1";
    assert!(metrics.contains(skipped), "missing {skipped:?}");
}

//! The binary socket protocol end to end: bad frames skipped and counted,
//! a burst closed at once loses nothing, permissions by certificate name.

use crate::common::{frame, now_secs, Daemon};

const RULES: &str = "rules:\n  - {name: t_sum, prefix: traffic, type: sum, timeframe: 60, limit: 100, value_size: large}\n";

fn sum_of(d: &Daemon, path: &str, rule: &str, n: u64) -> u64 {
    let v = d.get_json(&format!("/paths/{path}/{rule}/last?n={n}"), 200);
    v["answer"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|row| row[1].as_u64())
        .sum()
}

#[test]
fn bad_frames_are_skipped_counted_and_the_stream_goes_on() {
    let d = Daemon::start(RULES);
    let t = now_secs() / 60 * 60;
    let mut bytes = frame(false, t, 1, "traffic-a");
    let mut bad_version = frame(false, t, 100, "traffic-a");
    bad_version[2] = 2;
    bytes.extend(bad_version);
    bytes.extend([0, 3, 3, 0, 0]); // short payload
    bytes.extend(frame(false, t, 100, "traffic/a")); // '/' in path
    bytes.extend(frame(false, t, 100, "unknown-prefix"));
    bytes.extend(frame(false, t + 3600, 100, "traffic-a")); // too far ahead
    bytes.extend(frame(false, t, 2, "traffic-a"));
    bytes.extend(frame(false, t, 4, "traffic-b"));
    d.send_raw("client", &bytes);
    assert_eq!(
        d.wait_metric("ringdb_samples_accepted_total{protocol=\"socket\"}", 3.0),
        3.0
    );
    for (reason, n) in [
        ("bad_version", 1.0),
        ("short_frame", 1.0),
        ("bad_path", 1.0),
        ("no_rule", 1.0),
        ("too_far_future", 1.0),
    ] {
        let series =
            format!("ringdb_samples_rejected_total{{protocol=\"socket\",reason=\"{reason}\"}}");
        assert_eq!(d.metric(&series), n, "{reason}");
    }
    assert_eq!(sum_of(&d, "traffic-a", "t_sum", 3), 3);
    assert_eq!(sum_of(&d, "traffic-b", "t_sum", 3), 4);
}

#[test]
fn a_burst_closed_at_once_loses_nothing() {
    let d = Daemon::start(RULES);
    let t = now_secs() / 60 * 60;
    let mut bytes = Vec::with_capacity(100_000 * 40);
    for i in 0..100_000u64 {
        bytes.extend(frame(
            false,
            t - (i % 50) * 60,
            1,
            &format!("traffic-c{}", i % 100),
        ));
    }
    // Written whole, then the TCP socket is dropped: no read, no close_notify.
    d.send_raw("client", &bytes);
    let accepted = d.wait_metric(
        "ringdb_samples_accepted_total{protocol=\"socket\"}",
        100_000.0,
    );
    assert_eq!(accepted, 100_000.0);
    let total: u64 = (0..100)
        .map(|c| sum_of(&d, &format!("traffic-c{c}"), "t_sum", 60))
        .sum();
    assert_eq!(total, 100_000);
}

#[test]
fn clients_may_write_only_their_prefixes() {
    let d = Daemon::start(&format!(
        "clients:\n  - {{name: agent-7, write: [traffic], read: [traffic]}}\n  - {{name: client, write: ['*'], read: ['*'], admin: true}}\n{RULES}  - {{name: l, prefix: load, type: last, timeframe: 60, limit: 10}}\n"
    ));
    let t = now_secs() / 60 * 60;
    let mut bytes = frame(false, t, 5, "traffic-a");
    bytes.extend(frame(false, t, 5, "load-a"));
    d.send_raw("agent-7", &bytes);
    d.wait_metric("ringdb_samples_accepted_total{protocol=\"socket\"}", 1.0);
    assert_eq!(
        d.wait_metric(
            "ringdb_samples_rejected_total{protocol=\"socket\",reason=\"forbidden\"}",
            1.0
        ),
        1.0
    );
    // reader is not on the list: it may do nothing, its connection is
    // closed right after the handshake (issue 14).
    let got = crate::common::try_request(&d.pki, Some("reader"), d.http, "/paths/traffic-a/rules");
    assert!(got.is_err(), "an unlisted client got an answer: {got:?}");
    let (code, _) = crate::common::http_request(
        &d.pki,
        "agent-7",
        d.http,
        "GET",
        "/paths/traffic-a/rules",
        "",
    );
    assert_eq!(code, 200);
    let (code, _) = crate::common::http_request(&d.pki, "agent-7", d.admin, "GET", "/status", "");
    assert_eq!(code, 403);
}

//! Persistence: SIGTERM then start again gives identical answers; kill -9
//! loses at most one snapshot interval; a corrupt record is skipped.

use crate::common::{frame, now_secs, Daemon};
use std::time::Duration;

const RULES: &str = "snapshot: {interval: 1s}\nrules:\n  - {name: m, prefix: traffic, type: sum, timeframe: 60, limit: 200, value_size: large}\n  - {name: h, prefix: traffic, type: avg, timeframe: 3600, limit: 48, value_size: float}\n  - {name: any, prefix: '*', type: last, timeframe: 10, limit: 100, additional_values: [{timeout: weak}]}\n";

fn answers(d: &Daemon, paths: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for p in paths {
        for rule in ["m", "h", "any"] {
            let (code, body) = d.get(&format!("/paths/{p}/{rule}/last?n=300"));
            out.push(format!("{p}/{rule}: {code} {body}"));
        }
    }
    out
}

fn write_batch(d: &Daemon, tag: &str, count: u64) -> Vec<String> {
    let t = now_secs();
    let mut bytes = Vec::new();
    let mut paths = Vec::new();
    for i in 0..count {
        let path = format!("traffic-{tag}{i}");
        for k in 0..20u64 {
            bytes.extend(frame(false, t - k * 37, i * 100 + k, &path));
        }
        bytes.extend(frame(false, t, 1 + i, &format!("other-{tag}{i}")));
        bytes.extend(frame(true, t - 10, 1, &format!("other-{tag}{i}")));
        paths.push(path);
        paths.push(format!("other-{tag}{i}"));
    }
    let before = d.metric("ringdb_samples_accepted_total{protocol=\"socket\"}");
    d.send_raw("client", &bytes);
    let want = before + (count * 22) as f64;
    assert_eq!(
        d.wait_metric("ringdb_samples_accepted_total{protocol=\"socket\"}", want),
        want
    );
    paths
}

#[test]
fn sigterm_and_restart_give_identical_answers() {
    // An interval longer than the test: only the final snapshot saves.
    let mut d = Daemon::start(&RULES.replace("interval: 1s", "interval: 1h"));
    let paths = write_batch(&d, "a", 50);
    let before = answers(&d, &paths);
    let status = d.stop();
    assert!(status.success(), "exit status {status:?}");
    d.spawn();
    assert_eq!(answers(&d, &paths), before);
    assert_eq!(d.metric("ringdb_series"), 100.0);
}

#[test]
fn many_new_archives_in_one_save_all_come_back() {
    // 6,000 archives over the store's 64 shards: about 94 new
    // archives a shard, so a save writes each shard in two batches.
    let mut d = Daemon::start(&RULES.replace("interval: 1s", "interval: 1h"));
    let paths = write_batch(&d, "many", 2000);
    let archives = d.metric("ringdb_archives");
    assert_eq!(archives, 6000.0);
    let sample: Vec<String> = paths.iter().step_by(97).cloned().collect();
    let before = answers(&d, &sample);
    let status = d.stop();
    assert!(status.success(), "exit status {status:?}");
    d.spawn();
    assert_eq!(d.metric("ringdb_archives"), archives);
    assert_eq!(d.metric("ringdb_series"), 4000.0);
    assert_eq!(answers(&d, &sample), before);
}

#[test]
fn kill_9_loses_at_most_one_interval() {
    let mut d = Daemon::start(RULES);
    let saved = write_batch(&d, "a", 20);
    let before = answers(&d, &saved);
    // Two intervals pass: the first batch is on disk.
    let snapshots = d.metric("ringdb_snapshots_total");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(d.metric("ringdb_snapshots_total") >= snapshots + 2.0);
    let _maybe_lost = write_batch(&d, "b", 20);
    d.kill9();
    d.spawn();
    assert_eq!(answers(&d, &saved), before);
}

#[test]
fn corrupt_records_are_reported_and_skipped() {
    let mut d = Daemon::start(RULES);
    let paths = write_batch(&d, "a", 3);
    let before = answers(&d, &paths);
    assert!(d.stop().success());
    // Corrupt one header in place with sled itself (the daemon is stopped).
    {
        let db = sled::open(d.dir.path().join("data/snapshots")).unwrap();
        let key = db
            .scan_prefix(b"h")
            .keys()
            .map(|k| k.unwrap())
            .find(|k| String::from_utf8_lossy(k).contains("traffic-a0"))
            .unwrap();
        db.insert(key, &b"\x01garbage"[..]).unwrap();
        db.flush().unwrap();
    }
    d.spawn();
    assert_eq!(
        d.metric("ringdb_restore_skipped_total{reason=\"corrupt\"}"),
        1.0
    );
    let after = answers(&d, &paths);
    let changed: Vec<_> = before.iter().zip(&after).filter(|(a, b)| a != b).collect();
    assert_eq!(
        changed.len(),
        1,
        "only the corrupt archive is missing: {changed:?}"
    );
}

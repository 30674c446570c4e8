//! Rule changes on SIGHUP and on restart: old history re-bucketed into the
//! new shape with the values an independent model predicts; a broken file
//! changes nothing and is reported.

use crate::common::{frame, now_secs, Daemon};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn rules(tf: u64, limit: u64) -> String {
    format!("snapshot: {{interval: 1h}}\nrules:\n  - {{name: t, prefix: traffic, type: sum, timeframe: {tf}, limit: {limit}, value_size: large}}\n  - {{name: gone, prefix: traffic, type: max, timeframe: 60, limit: 10}}\n")
}

/// One sample per minute for 3 hours, valued 1..=180.
fn history(d: &Daemon) -> Vec<(u64, u64)> {
    let end = now_secs() / 3600 * 3600;
    let samples: Vec<(u64, u64)> = (0..180)
        .map(|i| (end - 10_800 + i * 60 + 7, i + 1))
        .collect();
    let mut bytes = Vec::new();
    for (t, v) in &samples {
        bytes.extend(frame(false, *t, *v, "traffic-a"));
    }
    d.send_raw("client", &bytes);
    assert_eq!(
        d.wait_metric("ringdb_samples_accepted_total{protocol=\"socket\"}", 180.0),
        180.0
    );
    samples
}

/// The independent model: sums per `tf` bucket of the 60 s buckets, the
/// newest `limit` kept, as YAWNDB slice rows.
fn model(samples: &[(u64, u64)], tf: u64, limit: u64) -> Vec<(u64, u64)> {
    let mut minute = BTreeMap::new();
    for (t, v) in samples {
        *minute.entry(t / 60 * 60).or_insert(0) += v;
    }
    let mut sums = BTreeMap::new();
    for (t, v) in minute {
        *sums.entry(t / tf * tf).or_insert(0) += v;
    }
    let newest = *sums.keys().last().unwrap();
    sums.into_iter()
        .filter(|(t, _)| t + (limit - 1) * tf >= newest)
        .collect()
}

fn filled(d: &Daemon, limit: u64) -> Vec<(u64, u64)> {
    let v = d.get_json(&format!("/paths/traffic-a/t/last?n={limit}"), 200);
    v["answer"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| Some((r[0].as_u64()?, r[1].as_u64()?)))
        .collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_migrates_a_changed_rule() {
    let d = Daemon::start(&rules(60, 300));
    let samples = history(&d);
    assert_eq!(filled(&d, 300), model(&samples, 60, 300));
    // 1m x 300 → 15m x 8: re-bucketed sums, only the newest 8 kept.
    d.rewrite_config(&rules(900, 8).replace(
        "  - {name: gone, prefix: traffic, type: max, timeframe: 60, limit: 10}\n",
        "",
    ));
    d.hup();
    wait_for("the reload", || {
        d.metric("ringdb_reloads_total{outcome=\"ok\"}") == 1.0
    });
    assert_eq!(filled(&d, 8), model(&samples, 900, 8));
    assert_eq!(
        d.get_json("/paths/traffic-a/rules", 200)["answer"],
        serde_json::json!(["t"])
    );
    assert_eq!(
        d.metric("ringdb_archives"),
        1.0,
        "the removed rule's archive left memory"
    );
}

#[test]
fn a_broken_file_leaves_the_running_rules_untouched() {
    let d = Daemon::start(&rules(60, 300));
    let samples = history(&d);
    d.rewrite_config("rules:\n  - {name: t, prefix: traffic, type: mean, timeframe: 60, limit: 300}\n  - {name: t, prefix: x, type: sum}\n");
    d.hup();
    wait_for("the failed reload", || {
        d.metric("ringdb_reloads_total{outcome=\"error\"}") == 1.0
    });
    assert_eq!(filled(&d, 300), model(&samples, 60, 300));
    assert_eq!(
        d.get_json("/paths/traffic-a/rules", 200)["answer"],
        serde_json::json!(["t", "gone"])
    );
}

#[test]
fn restart_with_a_changed_rule_migrates_the_saved_history() {
    let mut d = Daemon::start(&rules(60, 300));
    let samples = history(&d);
    assert!(d.stop().success());
    d.rewrite_config(&rules(3600, 48));
    d.spawn();
    assert_eq!(filled(&d, 48), model(&samples, 3600, 48));
    assert_eq!(d.metric("ringdb_migrations_total"), 1.0);
    // Saved again in the new shape: a second restart reads it unchanged.
    assert!(d.stop().success());
    d.spawn();
    assert_eq!(filled(&d, 48), model(&samples, 3600, 48));
    assert_eq!(
        d.metric("ringdb_restore_skipped_total{reason=\"corrupt\"}"),
        0.0
    );
}

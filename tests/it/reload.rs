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

fn star_rules() -> String {
    "snapshot: {interval: 1h}\nrules:\n  - {name: any, prefix: \"*\", type: sum, timeframe: 60, limit: 300, value_size: large}\n".to_string()
}

/// `star_rules` plus a rule of the series' own prefix.
fn star_and_traffic_rules() -> String {
    star_rules()
        + "  - {name: t, prefix: traffic, type: sum, timeframe: 900, limit: 8, value_size: large}\n"
}

/// Issue 15: adding a rule for a prefix hid every series of that prefix
/// that the `"*"` rule kept (`unloaded` at reload, skipped on restart);
/// now the new rule takes their history, on reload and after restarts.
#[test]
fn a_rule_added_for_a_prefix_takes_its_series_history_on_reload() {
    let mut d = Daemon::start(&star_rules());
    let samples = history(&d);
    d.rewrite_config(&star_and_traffic_rules());
    d.hup();
    wait_for("the reload", || {
        d.metric("ringdb_reloads_total{outcome=\"ok\"}") == 1.0
    });
    assert_eq!(filled(&d, 8), model(&samples, 900, 8));
    assert_eq!(
        d.get_json("/paths/traffic-a/rules", 200)["answer"],
        serde_json::json!(["t"])
    );
    for _ in 0..2 {
        assert!(d.stop().success());
        d.spawn();
        assert_eq!(filled(&d, 8), model(&samples, 900, 8));
        assert_eq!(
            d.metric("ringdb_restore_skipped_total{reason=\"rule_changed_or_removed\"}"),
            0.0,
            "the \"*\" records went with the first save of the new archive"
        );
    }
}

#[test]
fn a_rule_added_for_a_prefix_takes_its_series_history_on_restart() {
    let mut d = Daemon::start(&star_rules());
    let samples = history(&d);
    assert!(d.stop().success());
    d.rewrite_config(&star_and_traffic_rules());
    d.spawn();
    assert_eq!(filled(&d, 8), model(&samples, 900, 8));
    assert_eq!(d.metric("ringdb_migrations_total"), 1.0);
    assert!(d.stop().success());
    d.spawn();
    assert_eq!(filled(&d, 8), model(&samples, 900, 8));
    assert_eq!(d.metric("ringdb_migrations_total"), 0.0);
    assert_eq!(
        d.metric("ringdb_restore_skipped_total{reason=\"rule_changed_or_removed\"}"),
        0.0
    );
}

/// Issue 15: 10K series of 20 samples, the `"*"` rule changed from 10 s to
/// 20 s buckets: each migrated archive wrote its whole ring (135 pages,
/// 1.2 GB RSS and 378 MB on disk), and SIGTERM hung behind that save.
/// Now a save writes about what the archives hold, and shutdown right
/// after the reload exits cleanly (the harness' stop gives up after 30 s);
/// the time it took is printed.
#[test]
fn a_reloaded_rule_change_saves_what_the_archives_hold_and_shutdown_follows() {
    const SERIES: u64 = 10_000;
    let rules = |tf: u64| {
        format!("snapshot: {{interval: 1s}}\nrules:\n  - {{name: any, prefix: \"*\", type: last, timeframe: {tf}, limit: 8640}}\n")
    };
    let mut d = Daemon::start(&rules(10));
    let start = now_secs() / 3600 * 3600 - 3600;
    let mut bytes = Vec::new();
    for i in 0..SERIES {
        for k in 0..20 {
            bytes.extend(frame(false, start + k * 10, k, &format!("load-{i}")));
        }
    }
    d.send_raw("client", &bytes);
    let want = (SERIES * 20) as f64;
    assert_eq!(
        d.wait_metric("ringdb_samples_accepted_total{protocol=\"socket\"}", want),
        want
    );
    // A save that began after the last sample saved everything.
    let saves = d.metric("ringdb_snapshots_total");
    wait_for("a save of every series", || {
        d.metric("ringdb_snapshots_total") >= saves + 2.0
    });
    let before = d.metric("ringdb_snapshot_bytes_total");
    d.rewrite_config(&rules(20));
    d.hup();
    wait_for("the reload", || {
        d.metric("ringdb_reloads_total{outcome=\"ok\"}") == 1.0
    });
    let saves = d.metric("ringdb_snapshots_total");
    wait_for("a save of the migrated archives", || {
        d.metric("ringdb_snapshots_total") >= saves + 2.0
    });
    let written = d.metric("ringdb_snapshot_bytes_total") - before;
    let per_series = written / SERIES as f64;
    println!("migrated save: {written} bytes, {per_series:.0} per series");
    // A header and one page of 10 buckets: about 150 bytes with keys.
    // The whole ring was 135 pages of at least 70 bytes each.
    assert!(per_series < 400.0, "{per_series} bytes per series");
    // Shutdown at once after another change, with everything pending.
    d.rewrite_config(&rules(30));
    d.hup();
    wait_for("the second reload", || {
        d.metric("ringdb_reloads_total{outcome=\"ok\"}") == 2.0
    });
    let stopping = Instant::now();
    assert!(d.stop().success());
    println!("shutdown after the reload: {:?}", stopping.elapsed());
    d.spawn();
    // 10 s → 20 s → 30 s, `last`: the odd values win each 20 s bucket,
    // then the later of each pair in a 30 s bucket.
    let v = d.get_json("/paths/load-7/any/last?n=10", 200);
    let got: Vec<f64> = v["answer"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r[1].as_f64())
        .collect();
    assert_eq!(got, [3.0, 5.0, 9.0, 11.0, 15.0, 17.0, 19.0], "{v}");
}

use super::*;
use crate::rrd::{Consolidation, Reading, Shape, Split, ValueSize};
use std::collections::BTreeMap;

const NOW: u64 = 1_700_000_000_000;

fn rule(name: &str, prefix: &str, tf: u64, value_size: ValueSize) -> Rule {
    Rule {
        name: name.into(),
        prefix: prefix.into(),
        shape: Shape {
            consolidation: Consolidation::Sum,
            timeframe_secs: tf,
            limit: 100,
            split: Split::Backward,
            value_size,
            specials: vec![],
        },
        autoremove: false,
    }
}

fn store() -> Store {
    Store::new(
        RuleSet::new(vec![
            rule("t_min", "traffic", 60, ValueSize::Large),
            rule("t_small", "traffic", 3600, ValueSize::Small),
            rule("any", "*", 10, ValueSize::Float),
        ]),
        StoreLimits {
            max_future_ms: 600_000,
            max_series: 3,
        },
    )
}

fn sample(ts_ms: u64, v: u64) -> Sample {
    Sample {
        timestamp_ms: ts_ms,
        value: Value::Uint(v),
    }
}

#[test]
fn fan_out_by_prefix_and_fallback() {
    let s = store();
    assert_eq!(s.write("traffic-a", "traffic", sample(NOW, 5), NOW), Ok(2));
    assert_eq!(s.write("other-a", "other", sample(NOW, 5), NOW), Ok(1));
    let rules = s.read("traffic-a", |series| {
        series
            .archives()
            .iter()
            .map(|a| a.rule.name.clone())
            .collect::<Vec<_>>()
    });
    assert_eq!(rules.unwrap(), ["t_min", "t_small"]);
    let stats = s.stats();
    assert_eq!((stats.series, stats.archives), (2, 3));
}

#[test]
fn partial_acceptance_counts_archive_rejects() {
    let s = store();
    // 5000 fits a large cell but not a small one.
    assert_eq!(
        s.write("traffic-a", "traffic", sample(NOW, 5000), NOW),
        Ok(1)
    );
    let stats = s.stats();
    let out_of_range = stats
        .archive_rejects
        .iter()
        .find(|r| r.0 == "out_of_range")
        .unwrap();
    assert_eq!(out_of_range.1, 1);
}

#[test]
fn refusals() {
    let s = Store::new(
        RuleSet::new(vec![rule("t", "traffic", 60, ValueSize::Small)]),
        StoreLimits {
            max_future_ms: 600_000,
            max_series: 1,
        },
    );
    let cases = [
        (
            "no rule",
            "x-1",
            "x",
            sample(NOW, 1),
            Err(WriteReject::NoRule),
        ),
        (
            "future",
            "traffic-1",
            "traffic",
            sample(NOW + 600_001, 1),
            Err(WriteReject::TooFarFuture),
        ),
        (
            "edge of future",
            "traffic-1",
            "traffic",
            sample(NOW + 600_000, 1),
            Ok(1),
        ),
        (
            "too big",
            "traffic-1",
            "traffic",
            sample(NOW, 4096),
            Err(Reject::OutOfRange.into()),
        ),
        (
            "series cap",
            "traffic-2",
            "traffic",
            sample(NOW, 1),
            Err(WriteReject::TooManySeries),
        ),
    ];
    for (name, key, prefix, smp, want) in cases {
        assert_eq!(s.write(key, prefix, smp, NOW), want, "case {name}");
    }
}

#[test]
fn a_write_after_take_dirty_stays_dirty() {
    let s = store();
    s.write("traffic-a", "traffic", sample(NOW, 1), NOW)
        .unwrap();
    let shard = s.shard_of("traffic-a");
    let first = s.take_dirty(shard);
    assert_eq!(first.len(), 2);
    assert!(s.take_dirty(shard).is_empty(), "clean after take");
    s.write("traffic-a", "traffic", sample(NOW, 1), NOW)
        .unwrap();
    assert_eq!(s.take_dirty(shard).len(), 2, "new write is dirty again");
}

#[test]
fn restore_requires_the_rule_and_migrates_a_changed_shape() {
    let s = store();
    let r = rule("t_min", "traffic", 60, ValueSize::Large);
    let mut a = Archive::new(r.shape.clone());
    a.update(sample(NOW, 9)).unwrap();
    assert_eq!(
        s.restore("traffic-a", "traffic", None, "gone", a.clone()),
        Err(RestoreSkip::NoSuchRule)
    );
    // Saved with 30s buckets: re-bucketed into the rule's 60s ones.
    let mut old = Archive::new(rule("t_min", "traffic", 30, ValueSize::Large).shape);
    old.update(sample(NOW, 4)).unwrap();
    old.update(sample(NOW + 30_000, 5)).unwrap();
    s.restore("traffic-b", "traffic", None, "t_min", old)
        .unwrap();
    let got = s.read("traffic-b", |x| {
        x.archive("t_min").unwrap().get(NOW / 60_000).as_f64()
    });
    assert_eq!(got, Some(Some(9.0)), "two 30s sums in one 60s bucket");
    assert_eq!(s.stats().migrations, 1);
    s.restore("traffic-a", "traffic", None, "t_min", a).unwrap();
    let got = s.read("traffic-a", |series| {
        series.archive("t_min").unwrap().get(NOW / 60_000).as_f64()
    });
    assert_eq!(got, Some(Some(9.0)));
    let empty = s.read("traffic-a", |x| {
        x.archive("t_min").map(|a| a.get(0) == Reading::Empty)
    });
    assert_eq!(empty, Some(Some(true)));
    // Restoring the same archive again replaces it: counted once.
    let before = s.stats();
    let mut again = Archive::new(r.shape.clone());
    again.update(sample(NOW, 1)).unwrap();
    s.restore("traffic-a", "traffic", None, "t_min", again)
        .unwrap();
    let after = s.stats();
    assert_eq!(after.archives, before.archives);
    assert_eq!(after.archive_bytes, before.archive_bytes);
}

/// An independent model of a migration: sum the old buckets into the new
/// timeframe's buckets and keep the newest `limit`.
fn rebucket(old: &[(u64, u64)], tf: u64, limit: u64) -> Vec<(u64, u64)> {
    let mut sums = std::collections::BTreeMap::new();
    for (t, v) in old {
        *sums.entry(t / tf * tf).or_insert(0) += v;
    }
    let newest = *sums.keys().last().unwrap();
    sums.into_iter()
        .filter(|(t, _)| *t + (limit - 1) * tf >= newest)
        .collect()
}

#[test]
fn changed_rules_migrate_unloaded_rules_leave_memory() {
    let s = store();
    let mut old = Vec::new();
    for i in 0..90u64 {
        let t = NOW / 60_000 * 60 + i * 60;
        s.write(
            "traffic-a",
            "traffic",
            sample(t * 1000, i + 1),
            t * 1000 + 1,
        )
        .unwrap();
        old.push((t, i + 1));
    }
    s.write("other-a", "other", sample(NOW, 1), NOW).unwrap();
    let before = s.stats();
    assert_eq!((before.series, before.archives), (2, 3));

    // t_min: 60s x 100 → 300s x 10 (sum); t_small and the "*" rule are gone.
    let mut changed = rule("t_min", "traffic", 300, ValueSize::Large);
    changed.shape.limit = 10;
    let change = s.set_rules(RuleSet::new(vec![changed]));
    assert_eq!(change.migrated, 1);
    assert_eq!(change.unloaded, 2);
    let got: Vec<(u64, u64)> = s
        .read("traffic-a", |x| {
            x.archive("t_min")
                .unwrap()
                .filled()
                .map(|(t, r)| (t, r.as_f64().unwrap() as u64))
                .collect()
        })
        .unwrap();
    assert_eq!(got, rebucket(&old, 300, 10));
    assert!(
        s.read("other-a", |_| ()).is_none(),
        "a series with no archive left is gone"
    );
    let after = s.stats();
    assert_eq!((after.series, after.archives), (1, 1));
    assert!(s.take_dirty(s.shard_of("traffic-a"))[0].dirty.replace_all);
}

#[test]
fn autoremove_sweeps_idle_archives_by_the_given_clock() {
    let mut r = rule("t_auto", "traffic", 60, ValueSize::Large);
    r.autoremove = true;
    r.shape.limit = 10; // a 10-minute window
    let s = Store::new(
        RuleSet::new(vec![r, rule("t_keep", "load", 60, ValueSize::Large)]),
        StoreLimits {
            max_future_ms: 600_000,
            max_series: 100,
        },
    );
    s.write("traffic-a", "traffic", sample(NOW, 1), NOW)
        .unwrap();
    s.write("load-a", "load", sample(NOW, 1), NOW).unwrap();
    // Older than the window by the clock: ignored on write.
    assert_eq!(
        s.write("traffic-b", "traffic", sample(NOW - 11 * 60_000, 1), NOW),
        Err(Reject::TooOld.into())
    );
    assert!(
        s.sweep(NOW + 9 * 60_000).is_empty(),
        "still inside the window"
    );
    let removed = s.sweep(NOW + 11 * 60_000);
    assert_eq!(removed, [("traffic-a".to_string(), "t_auto".to_string())]);
    assert!(s.read("traffic-a", |_| ()).is_none());
    assert!(
        s.read("load-a", |_| ()).is_some(),
        "rules without autoremove stay"
    );
    assert!(!s.series_keys().iter().any(|(k, _)| &**k == "traffic-a"));
}

#[test]
fn short_long_and_shared_keys_are_the_same_series_everywhere() {
    let store = Store::new(
        RuleSet::new(vec![rule("any", "*", 10, ValueSize::Float)]),
        StoreLimits {
            max_future_ms: 600_000,
            max_series: 10,
        },
    );
    let keys = [
        "x".repeat(INLINE_KEY),
        "y".repeat(INLINE_KEY + 1),
        "z".repeat(300),
    ];
    let shared: Arc<str> = Arc::from(keys[2].as_str());
    for (i, key) in keys.iter().enumerate() {
        for k in 0..2u64 {
            let id = SeriesId {
                key,
                shared: (i == 2).then_some(&shared),
                prefix: "p",
                labels: None,
            };
            store.write_batch(&id, &[sample(NOW - 20_000 + k * 10_000, k)], NOW, |r| {
                assert_eq!(r, Ok(1), "{key}");
            });
        }
        assert_eq!(store.read(key, |s| s.archives().len()), Some(1), "{key}");
    }
    assert_eq!(
        store.stats().series,
        3,
        "one series per key, whatever its length"
    );
    let mut scanned: Vec<String> = Vec::new();
    store.scan(|key, _| {
        scanned.push(key.to_owned());
        true
    });
    scanned.sort();
    assert_eq!(scanned, keys.to_vec());
    let mut dirty: Vec<String> = (0..store.shard_count())
        .flat_map(|i| store.take_dirty(i))
        .map(|d| d.series.to_string())
        .collect();
    dirty.sort();
    assert_eq!(dirty, keys.to_vec());
    for key in &keys {
        assert!(store.remove(key), "{key}");
    }
    assert_eq!(store.stats().series, 0);
}

#[test]
fn archive_bytes_follow_the_cells_written() {
    let s = store();
    let held = |s: &Store| {
        ["traffic-a", "other-a"]
            .iter()
            .filter_map(|key| {
                s.read(key, |series| {
                    series
                        .archives()
                        .iter()
                        .map(|a| a.archive.memory_bytes() as u64)
                        .sum::<u64>()
                })
            })
            .sum::<u64>()
    };
    s.write("traffic-a", "traffic", sample(NOW, 5), NOW)
        .unwrap();
    s.write("other-a", "other", sample(NOW, 5), NOW).unwrap();
    let first = s.stats().archive_bytes;
    assert_eq!(first, held(&s));
    // 100 minutes: the 1-minute archive's ring (100 buckets) fills.
    for m in 1..100 {
        let t = NOW + m * 60_000;
        s.write("traffic-a", "traffic", sample(t, 1), t).unwrap();
    }
    let full = s.stats().archive_bytes;
    assert!(full > first, "{full} after 100 minutes, {first} after one");
    assert_eq!(full, held(&s));
    // A gap longer than the window empties the 1-minute ring.
    let later = NOW + 500 * 60_000;
    s.write("traffic-a", "traffic", sample(later, 1), later)
        .unwrap();
    assert!(s.stats().archive_bytes < full);
    assert_eq!(s.stats().archive_bytes, held(&s));
}

#[test]
fn prefixes_and_labels_come_from_the_key_or_as_given() {
    let store = Store::new(
        RuleSet::new(vec![rule("any", "*", 10, ValueSize::Float)]),
        StoreLimits {
            max_future_ms: 600_000,
            max_series: 10,
        },
    );
    let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
        p.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    };
    let canonical = pairs(&[("__name__", "up"), ("job", "a\"b"), ("x", "1")]);
    let unsorted = pairs(&[("__name__", "up"), ("x", "1"), ("job", "a")]);
    type Pairs = Option<Vec<(String, String)>>;
    // (key, prefix, labels, expected compact form)
    let cases: Vec<(&str, &str, Pairs, bool)> = vec![
        ("traffic-a-b", "traffic", None, true),
        ("traffic-a-b", "other", None, false),
        (
            r#"up{job="a\"b",x="1"}"#,
            "up",
            Some(canonical.clone()),
            true,
        ),
        (r#"up{x="1",job="a"}"#, "up", Some(unsorted.clone()), false),
        (
            r#"up{job="a\"b",x="1"}"#,
            "down",
            Some(canonical.clone()),
            false,
        ),
    ];
    for (i, (key, prefix, labels, compact)) in cases.into_iter().enumerate() {
        let make = labels.clone().map(|l| move || l.clone());
        let id = SeriesId {
            key,
            shared: None,
            prefix,
            labels: make
                .as_ref()
                .map(|f| f as &dyn Fn() -> Vec<(String, String)>),
        };
        store.remove(key);
        store.write_batch(&id, &[sample(NOW - 10_000, 1)], NOW, |r| {
            assert_eq!(r, Ok(1), "case {i}");
        });
        let seen = store.read(key, |s| {
            let x = s.label(key, "x").map(Cow::into_owned);
            let name = s.label(key, "__name__").map(Cow::into_owned);
            let form_compact = !matches!(s.form, Form::Given(_));
            (
                s.prefix(key).to_string(),
                s.labels(key).map(|l| l.to_vec()),
                x,
                name,
                form_compact,
            )
        });
        let (got_prefix, got_labels, x, name, form_compact) = seen.expect("series kept");
        assert_eq!(got_prefix, prefix, "case {i}");
        assert_eq!(got_labels, labels, "case {i}");
        assert_eq!(x, labels.as_ref().map(|_| "1".to_string()), "case {i}");
        assert_eq!(name, labels.as_ref().map(|_| "up".to_string()), "case {i}");
        assert_eq!(form_compact, compact, "case {i}");
        // A restored series takes the same form.
        let archive = store.read(key, |s| s.archives()[0].archive.clone());
        store.remove(key);
        let restored = store.restore(
            key,
            prefix,
            labels.clone(),
            "any",
            archive.expect("archive"),
        );
        assert_eq!(restored, Ok(()), "case {i}");
        let again = store.read(key, |s| {
            (s.prefix(key).to_string(), s.labels(key).map(|l| l.to_vec()))
        });
        assert_eq!(
            again,
            Some((prefix.to_string(), labels)),
            "case {i} restored"
        );
    }
}

// --- size caps of new series (issue 14: keys, labels, bytes held) ---

fn capped_store(max_series: u64, sizes: SizeLimits) -> Store {
    Store::new(
        RuleSet::new(vec![rule("any", "*", 10, ValueSize::Float)]),
        StoreLimits {
            max_future_ms: 600_000,
            max_series,
        },
    )
    .with_size_limits(sizes)
}

/// Writes one sample of a label set (`__name__` first) through the store.
fn write_set(s: &Store, labels: &[(&str, &str)]) -> Result<usize, WriteReject> {
    let all: Vec<(String, String)> = labels
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let name = all[0].1.clone();
    let key = model::series_key(
        &name,
        all[1..].iter().map(|(n, v)| (n.as_str(), v.as_str())),
    );
    let make = || {
        let mut sorted = all.clone();
        sorted.sort();
        sorted
    };
    let id = SeriesId {
        key: &key,
        shared: None,
        prefix: &name,
        labels: Some(&make),
    };
    let mut result = Ok(0);
    s.write_batch(
        &id,
        &[Sample {
            timestamp_ms: NOW,
            value: Value::Float(1.0),
        }],
        NOW,
        |r| result = r,
    );
    result
}

#[test]
fn new_series_are_refused_over_the_size_caps() {
    let sizes = SizeLimits {
        max_labels_per_series: 3,
        max_label_name_bytes: 8,
        max_label_value_bytes: 16,
        max_series_key_bytes: 40,
        max_series_key_bytes_total: 1000,
        ..SizeLimits::default()
    };
    let long_value = "v".repeat(17);
    let long_key_value = "v".repeat(16);
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Result<usize, WriteReject>);
    let cases: Vec<Case> = vec![
        (
            "within every cap",
            vec![("__name__", "up"), ("a", "1"), ("b", "2")],
            Ok(1),
        ),
        (
            "too many labels",
            vec![("__name__", "up"), ("a", "1"), ("b", "2"), ("c", "3")],
            Err(WriteReject::TooManyLabels),
        ),
        (
            "name too long",
            vec![("__name__", "up"), ("abcdefghi", "1")],
            Err(WriteReject::LabelTooLong),
        ),
        (
            "value too long",
            vec![("__name__", "up"), ("a", &long_value)],
            Err(WriteReject::LabelTooLong),
        ),
        (
            "key too long",
            vec![
                ("__name__", "up"),
                ("a", &long_key_value),
                ("b", &long_key_value),
            ],
            Err(WriteReject::SeriesKeyTooLong),
        ),
    ];
    let s = capped_store(100, sizes);
    for (case, labels, want) in cases {
        assert_eq!(write_set(&s, &labels), want, "case {case}");
    }
    let path_too_long = "p-".to_string() + &"x".repeat(39);
    assert_eq!(
        s.write(&path_too_long, "p", sample(NOW, 1), NOW),
        Err(WriteReject::SeriesKeyTooLong),
        "case socket path"
    );
    assert_eq!(s.write("p-ok", "p", sample(NOW, 1), NOW), Ok(1));
    let held = s.stats();
    assert_eq!(held.series, 2);
    assert_eq!(
        held.series_key_bytes,
        (r#"up{a="1",b="2"}"#.len() + "p-ok".len()) as u64
    );
}

#[test]
fn key_bytes_held_are_capped_and_given_back() {
    // Keys of 10 bytes; room for 3 of them.
    let s = capped_store(
        100,
        SizeLimits {
            max_series_key_bytes_total: 35,
            ..SizeLimits::default()
        },
    );
    for i in 0..3 {
        assert_eq!(
            s.write(&format!("p-key{i:05}"), "p", sample(NOW, 1), NOW),
            Ok(1),
            "key {i}"
        );
    }
    assert_eq!(
        s.write("p-key00003", "p", sample(NOW, 1), NOW),
        Err(WriteReject::TooManySeriesBytes)
    );
    assert_eq!(
        s.write("p-key00000", "p", sample(NOW, 2), NOW),
        Ok(1),
        "held series still written"
    );
    assert_eq!(s.stats().series, 3, "a refused series is not counted");
    assert!(s.remove("p-key00001"));
    assert_eq!(s.stats().series_key_bytes, 20);
    assert_eq!(
        s.write("p-key00003", "p", sample(NOW, 1), NOW),
        Ok(1),
        "room given back"
    );
}

#[test]
fn max_series_holds_under_concurrent_writers() {
    // Rounds of threads racing to create the last series a store has room
    // for, each on its own key (so mostly on different shard locks): one
    // wins, the others are refused. With the former load-then-add check,
    // 3 runs of this test on 2 busy cores overshot in 7, 2 and 0 rounds.
    const THREADS: usize = 4;
    const MAX: u64 = 5;
    let mut overshoots = 0;
    for round in 0..3000 {
        let s = capped_store(MAX, SizeLimits::default());
        for i in 0..MAX - 1 {
            s.write(&format!("p-held{i}"), "p", sample(NOW, 1), NOW)
                .unwrap();
        }
        let barrier = std::sync::Barrier::new(THREADS);
        let accepted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (s, barrier, accepted) = (&s, &barrier, &accepted);
                scope.spawn(move || {
                    let key = format!("p-{round}-{t}");
                    barrier.wait();
                    if s.write(&key, "p", sample(NOW, 1), NOW).is_ok() {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        let held = s.series_keys().len() as u64;
        assert_eq!(
            s.stats().series,
            held,
            "round {round}: counter matches the map"
        );
        assert_eq!(
            accepted.load(Ordering::Relaxed) + MAX - 1,
            held,
            "round {round}"
        );
        if held > MAX {
            overshoots += 1;
        }
    }
    assert_eq!(
        overshoots, 0,
        "rounds of 3000 where max_series was overshot"
    );
}

#[test]
fn metadata_help_is_cut_and_bytes_held_are_capped() {
    let s = capped_store(
        10,
        SizeLimits {
            max_help_bytes: 5,
            max_metadata_bytes: 40,
            ..SizeLimits::default()
        },
    );
    let meta = |help: &str| MetricMetadata {
        kind: "gauge".into(),
        help: help.into(),
        unit: String::new(),
    };
    // "é" is 2 bytes: the cut falls inside the third one and backs off.
    assert_eq!(s.set_metadata("aaaa", meta("ééé long")), Ok(()));
    assert_eq!(s.metadata()[0].1.help, "éé");
    let long_unit = MetricMetadata {
        unit: "seconds".into(),
        ..meta("")
    };
    assert_eq!(s.set_metadata("unit", long_unit), Ok(()));
    assert_eq!(s.metadata()[1].1.unit, "secon", "unit cut too");
    assert_eq!(s.set_metadata("unit", meta("")), Ok(()));
    assert_eq!(s.stats().metadata_bytes, 13 + 9, "replaced: 4 + 5 + 0");
    // Held: aaaa 4 + 5 + 4 = 13, unit 9 → 22; "bbbb" 4 + 5 + 5 = 14 → 36.
    assert_eq!(s.set_metadata("bbbb", meta("12345678")), Ok(()));
    assert_eq!(s.stats().metadata_bytes, 36);
    // A fourth family of 14 would make 50 > 40.
    assert_eq!(
        s.set_metadata("cccc", meta("12345")),
        Err(MetadataSkip::TooMuchMetadata)
    );
    // Replacing a held family counts only the difference: 36 - 5 = 31.
    assert_eq!(s.set_metadata("bbbb", meta("")), Ok(()));
    assert_eq!(s.stats().metadata_bytes, 31);
    // cccc of 10 would make 41; of 9 exactly the cap.
    assert_eq!(
        s.set_metadata("cccc", meta("1")),
        Err(MetadataSkip::TooMuchMetadata)
    );
    assert_eq!(s.set_metadata("cccc", meta("")), Ok(()));
    assert_eq!(s.stats().metadata_bytes, 40);
    assert_eq!(s.metadata().len(), 4);
}

/// Issue 14: the autoremove sweep write-locked every shard every interval,
/// even with no `autoremove` rule or nothing idle, so it waited behind
/// (and then blocked) every reader. Here a reader holds a shard's read
/// lock while the sweep runs on another thread: it must finish anyway
/// (the 10 s wait is only a deadlock guard).
#[test]
fn sweep_write_locks_no_shard_without_idle_archives() {
    use std::sync::mpsc;
    use std::time::Duration;
    let cases = [
        ("no rule has autoremove", false, NOW),
        ("autoremove, nothing idle", true, NOW + 60_000),
    ];
    for (name, autoremove, sweep_at) in cases {
        let mut r = rule("t", "traffic", 60, ValueSize::Large);
        r.autoremove = autoremove;
        let s = Store::new(
            RuleSet::new(vec![r]),
            StoreLimits {
                max_future_ms: 600_000,
                max_series: 100,
            },
        );
        s.write("traffic-a", "traffic", sample(NOW, 1), NOW)
            .unwrap();
        let mut finished = None;
        std::thread::scope(|scope| {
            s.scan(|_, _| {
                let (done, wait) = mpsc::channel();
                let s = &s;
                scope.spawn(move || {
                    let _ = done.send(s.sweep(sweep_at));
                });
                finished = wait.recv_timeout(Duration::from_secs(10)).ok();
                false
            });
        });
        assert_eq!(finished, Some(Vec::new()), "case {name}");
        assert!(s.read("traffic-a", |_| ()).is_some(), "case {name}");
    }
}

/// (timestamp secs, value) of every filled bucket of the series' archive.
fn history_of(s: &Store, key: &str, rule: &str) -> Option<Vec<(u64, u64)>> {
    s.read(key, |x| {
        x.archive(rule).map(|a| {
            a.filled()
                .map(|(t, r)| (t, r.as_f64().unwrap() as u64))
                .collect()
        })
    })
    .flatten()
}

fn star_store(fine_limit: u32) -> Store {
    let mut fine = rule("fine", "*", 10, ValueSize::Large);
    fine.shape.limit = fine_limit;
    Store::new(
        RuleSet::new(vec![fine, rule("coarse", "*", 60, ValueSize::Large)]),
        StoreLimits {
            max_future_ms: 600_000,
            max_series: 10,
        },
    )
}

/// Sums of one sample every 10 s, valued 1.., per `tf` bucket.
fn sums(samples: &[(u64, u64)], tf: u64) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    for (t, v) in samples {
        *out.entry(t / tf * tf).or_insert(0) += v;
    }
    out
}

/// Issue 15: a rule added for a prefix hid the history the `"*"` rules
/// kept for its series (`unloaded`, never shown again). Each newly
/// applying rule now gets it, finest source first, coarser ones only for
/// what ends before the finer ones begin, so a sum is never counted twice.
#[test]
fn a_rule_added_for_a_prefix_takes_the_star_rules_history() {
    struct Case {
        name: &'static str,
        fine_limit: u32,
        samples: u64,
    }
    let cases = [
        Case {
            name: "the fine rule holds everything",
            fine_limit: 100,
            samples: 30,
        },
        Case {
            name: "older history only in the coarse rule",
            fine_limit: 10,
            samples: 300,
        },
    ];
    for case in cases {
        let s = star_store(case.fine_limit);
        let base = NOW / 1000 / 3600 * 3600;
        let samples: Vec<(u64, u64)> = (0..case.samples).map(|i| (base + i * 10, i + 1)).collect();
        for (t, v) in &samples {
            s.write("other-a", "other", sample(t * 1000, *v), t * 1000)
                .unwrap();
        }
        let fine_oldest = history_of(&s, "other-a", "fine").unwrap()[0].0;
        let rules = s.rules();
        let mut next: Vec<Rule> = rules
            .for_prefix("x")
            .iter()
            .map(|r| (**r).clone())
            .collect();
        next.push(rule("o", "other", 60, ValueSize::Large));
        let change = s.set_rules(RuleSet::new(next));
        assert_eq!(
            (change.moved_series, change.moved_archives, change.unloaded),
            (1, 1, 0),
            "{}",
            case.name
        );
        // Model: 60 s sums of the fine buckets where the fine rule holds
        // them, the coarse rule's sums for whole minutes before that.
        let all = sums(&samples, 60);
        let fine: Vec<(u64, u64)> = samples
            .iter()
            .copied()
            .filter(|(t, _)| *t >= fine_oldest)
            .collect();
        let mut want = sums(&fine, 60);
        for (t, v) in &all {
            if t + 60 <= fine_oldest {
                want.insert(*t, *v);
            }
        }
        let want: Vec<(u64, u64)> = want.into_iter().collect();
        assert_eq!(history_of(&s, "other-a", "o"), Some(want), "{}", case.name);
        let dirty = s.take_dirty(s.shard_of("other-a"));
        assert_eq!(dirty.len(), 1, "{}", case.name);
        assert!(dirty[0].dirty.replace_all, "{}", case.name);
        assert_eq!(dirty[0].retire, ["fine", "coarse"], "{}", case.name);
        // A save that did not write it puts it all back.
        s.return_dirty(&dirty[0]);
        let again = s.take_dirty(s.shard_of("other-a"));
        assert_eq!(again[0].retire, ["fine", "coarse"], "{}", case.name);
        assert_eq!(again[0].dirty.pages, dirty[0].dirty.pages, "{}", case.name);
    }
}

/// The same on restart: saved archives of rules that no longer apply are
/// adopted after the restore; with no newly applying rule they stay on disk.
#[test]
fn orphans_read_on_restore_are_adopted_by_newly_applying_rules() {
    let old = star_store(100);
    let base = NOW / 1000 / 3600 * 3600;
    for i in 0..30u64 {
        let t = (base + i * 10) * 1000;
        old.write("other-a", "other", sample(t, 1), t).unwrap();
        old.write("traffic-a", "traffic", sample(t, 1), t).unwrap();
    }
    let mut orphans = Vec::new();
    for key in ["other-a", "traffic-a"] {
        for name in ["fine", "coarse"] {
            orphans.push(Orphan {
                key: key.into(),
                prefix: key.split('-').next().unwrap().into(),
                labels: None,
                rule: name.into(),
                archive: old.read(key, |x| x.archive(name).unwrap().clone()).unwrap(),
            });
        }
    }
    // "traffic" has its rules and their archives already; "other" gets one.
    let s = Store::new(
        RuleSet::new(vec![
            rule("t_min", "traffic", 60, ValueSize::Large),
            rule("o", "other", 300, ValueSize::Large),
        ]),
        StoreLimits {
            max_future_ms: 600_000,
            max_series: 10,
        },
    );
    let t = (base + 600) * 1000;
    s.write("traffic-a", "traffic", sample(t, 1), t).unwrap();
    let change = s.adopt_orphans(orphans);
    assert_eq!(
        (change.moved_series, change.moved_archives, change.unloaded),
        (1, 1, 2)
    );
    assert_eq!(history_of(&s, "other-a", "o"), Some(vec![(base, 30)]));
    assert_eq!(
        history_of(&s, "traffic-a", "t_min"),
        Some(vec![(base + 600, 1)])
    );
    assert_eq!((s.stats().series, s.stats().archives), (2, 2));
    // The series made for "other-a" holds its key's bytes like any other
    // (they were not counted: removing it wrapped the total below zero,
    // and every new series was then refused as too many key bytes).
    assert_eq!(s.stats().series_key_bytes, 16);
    assert!(s.remove("other-a") && s.remove("traffic-a"));
    assert_eq!(s.stats().series_key_bytes, 0);
    let s = Store::new(
        RuleSet::new(vec![rule("o", "other", 300, ValueSize::Large)]),
        StoreLimits {
            max_future_ms: 600_000,
            max_series: 10,
        },
    );
    let orphan = |rule: &str| Orphan {
        key: "other-a".into(),
        prefix: "other".into(),
        labels: None,
        rule: rule.into(),
        archive: old
            .read("other-a", |x| x.archive(rule).unwrap().clone())
            .unwrap(),
    };
    s.adopt_orphans(vec![orphan("fine"), orphan("coarse")]);
    let dirty = s.take_dirty(s.shard_of("other-a"));
    let other = dirty.iter().find(|d| &*d.series == "other-a").unwrap();
    assert_eq!(other.retire, ["fine", "coarse"]);
}

/// Rules changed and changed back before a save: the rule that applies
/// again keeps its records (they are not retired with the others).
#[test]
fn a_rule_that_applies_again_before_the_save_is_not_retired() {
    let s = star_store(100);
    let base = NOW / 1000 / 3600 * 3600;
    for i in 0..30u64 {
        let t = (base + i * 10) * 1000;
        s.write("other-a", "other", sample(t, 1), t).unwrap();
    }
    let star: Vec<Rule> = s
        .rules()
        .for_prefix("x")
        .iter()
        .map(|r| (**r).clone())
        .collect();
    let mut with_o = star.clone();
    with_o.push(rule("o", "other", 60, ValueSize::Large));
    s.set_rules(RuleSet::new(with_o));
    let change = s.set_rules(RuleSet::new(star));
    assert_eq!((change.moved_series, change.moved_archives), (1, 2));
    let dirty = s.take_dirty(s.shard_of("other-a"));
    let retired: Vec<&String> = dirty.iter().flat_map(|d| &d.retire).collect();
    assert_eq!(retired, ["o"]);
    assert_eq!(
        history_of(&s, "other-a", "coarse").map(|h| h.iter().map(|x| x.1).sum::<u64>()),
        Some(30)
    );
}

use super::*;
use crate::model::{Sample, Value};
use crate::rrd::{Consolidation, Shape, Split, ValueSize};
use crate::rules::Rule;
use crate::rules::RuleSet;
use crate::store::StoreLimits;

const NOW: u64 = 1_700_000_000_000;

fn store() -> Store {
    let rule = |name: &str, tf: u64| Rule {
        name: name.into(),
        prefix: "*".into(),
        shape: Shape {
            consolidation: Consolidation::Sum,
            timeframe_secs: tf,
            limit: 200,
            split: Split::Backward,
            value_size: ValueSize::Large,
            specials: vec![],
        },
        autoremove: false,
    };
    Store::new(
        RuleSet::new(vec![rule("m", 60), rule("s", 1)]),
        StoreLimits {
            max_future_ms: 600_000,
            max_series: u64::MAX,
        },
    )
}

/// Writes `n` samples a second apart ending at `end_ms` into `key`.
fn write(s: &Store, key: &str, n: u64, end_ms: u64) {
    for i in 0..n {
        let sample = Sample {
            timestamp_ms: end_ms - (n - 1 - i) * 1000,
            value: Value::Uint(i + 1),
        };
        s.write(key, key.split('-').next().unwrap_or(key), sample, NOW)
            .unwrap_or_else(|e| panic!("{key}: {e:?}"));
    }
}

/// Every series, archive and filled bucket, in order: equal dumps are
/// equal stores.
fn dump(s: &Store) -> Vec<String> {
    let mut out = Vec::new();
    s.scan(|key, series| {
        for a in series.archives() {
            let cells: Vec<_> = a
                .archive
                .filled()
                .map(|(b, r)| format!("{b}={r:?}"))
                .collect();
            out.push(format!(
                "{}/{}: {}",
                &key[..key.len().min(40)],
                a.rule.name,
                cells.join(",")
            ));
        }
        true
    });
    out.sort();
    out
}

/// sled on `dir` once the lock of a handle dropped just before is gone.
fn reopened(dir: &Path) -> sled::Db {
    assert!(!in_use(&dir.join("db")), "still locked after the grace");
    open_sled(dir).unwrap()
}

fn restored(dir: &Path) -> (Store, RestoreReport) {
    let fresh = store();
    let report = Snapshotter::open(dir).unwrap().restore(&fresh).unwrap();
    (fresh, report)
}

#[test]
fn series_key_over_u16_survives_restart() {
    // Format 2 wrote the key length as u16: 70,000 bytes came back as
    // "corrupt" and were dropped.
    let dir = tempfile::tempdir().unwrap();
    // A store whose key cap (limits.max_series_key_bytes stops at 65,535)
    // is lifted, as a store of an older version without the cap was.
    let live = store().with_size_limits(crate::store::SizeLimits {
        max_series_key_bytes: 100_000,
        ..crate::store::SizeLimits::default()
    });
    let long = format!("traffic-{}", "k".repeat(70_000));
    write(&live, &long, 30, NOW);
    write(&live, "traffic-short", 5, NOW);
    Snapshotter::open(dir.path()).unwrap().save(&live).unwrap();
    let (back, report) = restored(dir.path());
    assert_eq!((report.archives, report.corrupt), (4, 0), "{report:?}");
    assert!(!report.lost_anything(), "{report:?}");
    assert_eq!(dump(&back), dump(&live));
}

#[test]
fn format_2_keys_are_upgraded_and_restored() {
    // Records under format 2 keys (u16 lengths, tags h/p), as an older
    // ringdb left them.
    let dir = tempfile::tempdir().unwrap();
    let live = store();
    for i in 0..40 {
        write(&live, &format!("traffic-{i}"), 3 + i % 5, NOW);
    }
    {
        let db = reopened(dir.path());
        let legacy = |tag: u8, series: &str, rule: &str| {
            let mut k = vec![tag];
            k.extend_from_slice(&(series.len() as u16).to_be_bytes());
            k.extend_from_slice(series.as_bytes());
            k.extend_from_slice(&(rule.len() as u16).to_be_bytes());
            k.extend_from_slice(rule.as_bytes());
            k
        };
        for shard in 0..live.shard_count() {
            for d in live.take_dirty(shard) {
                let (series, rule) = (&*d.series, d.rule.name.as_str());
                let header = d.dirty.header.expect("a new archive has a header");
                db.insert(legacy(LEGACY_HEADER, series, rule), header)
                    .unwrap();
                for (n, bytes) in d.dirty.pages {
                    let mut k = legacy(LEGACY_PAGE, series, rule);
                    k.extend_from_slice(&n.to_be_bytes());
                    db.insert(k, bytes).unwrap();
                }
            }
        }
        db.flush().unwrap();
    }
    let (back, report) = restored(dir.path());
    assert_eq!((report.archives, report.corrupt), (80, 0), "{report:?}");
    assert_eq!(dump(&back), dump(&live));
    let db = reopened(dir.path());
    assert_eq!(
        db.scan_prefix([LEGACY_HEADER]).count(),
        0,
        "legacy headers left"
    );
    assert_eq!(
        db.scan_prefix([LEGACY_PAGE]).count(),
        0,
        "legacy pages left"
    );
}

#[test]
fn failed_saves_are_retried_with_nothing_skipped() {
    struct Case {
        name: &'static str,
        /// Write calls (inserts, batches, flushes) that fail, in a row.
        failures: usize,
    }
    let cases = [
        Case {
            name: "first write fails",
            failures: 1,
        },
        Case {
            name: "every write of one save fails",
            failures: 1000,
        },
    ];
    for c in cases {
        let dir = tempfile::tempdir().unwrap();
        let live = store();
        for i in 0..100 {
            write(&live, &format!("traffic-{i}"), 10, NOW);
        }
        let s = Snapshotter::open(dir.path()).unwrap();
        s.save(&live).unwrap();
        // One new sample per archive (single-page inserts), plus new
        // archives (batches).
        for i in 0..100 {
            write(&live, &format!("traffic-{i}"), 1, NOW + 1000);
        }
        for i in 0..30 {
            write(&live, &format!("other-{i}"), 4, NOW);
        }
        s.fail_writes.store(c.failures, Ordering::Relaxed);
        assert!(s.save(&live).is_err(), "{}: injected failure", c.name);
        assert!(s.db.read().unwrap().is_none(), "{}: handle dropped", c.name);
        s.fail_writes.store(0, Ordering::Relaxed);
        // The next save reopens sled (the first handle's lock is gone) and
        // writes everything the failed one had taken.
        s.save(&live)
            .unwrap_or_else(|e| panic!("{}: retry: {e}", c.name));
        drop(s);
        let (back, report) = restored(dir.path());
        assert!(!report.lost_anything(), "{}: {report:?}", c.name);
        assert_eq!(report.manifest, Some(260), "{}", c.name);
        assert_eq!(dump(&back), dump(&live), "{}", c.name);
    }
}

#[test]
fn losses_are_counted_on_restore() {
    let dir = tempfile::tempdir().unwrap();
    let live = store();
    for name in ["a", "b", "c", "d"] {
        write(&live, &format!("traffic-{name}"), 5, NOW);
    }
    Snapshotter::open(dir.path()).unwrap().save(&live).unwrap();
    {
        let db = reopened(dir.path());
        let remove_prefix = |prefix: Vec<u8>| {
            for k in db.scan_prefix(prefix).keys() {
                db.remove(k.unwrap()).unwrap();
            }
        };
        // a/m: header gone, pages left. b/m: pages gone. c: everything gone.
        db.remove(key::archive_key(HEADER, "traffic-a", "m"))
            .unwrap();
        remove_prefix(key::archive_key(PAGE, "traffic-b", "m"));
        remove_prefix(key::series_prefix(HEADER, "traffic-c"));
        remove_prefix(key::series_prefix(PAGE, "traffic-c"));
        db.flush().unwrap();
    }
    let (_, report) = restored(dir.path());
    let want = RestoreReport {
        archives: 5,
        corrupt: 0,
        kept_on_disk: 0,
        missing: 3,
        no_pages: 1,
        orphan_pages: 1,
        headers: 5,
        manifest: Some(8),
        moved_series: 0,
        moved_archives: 0,
    };
    assert_eq!(report, want);
}

#[test]
fn deletes_keep_the_manifest_exact() {
    let dir = tempfile::tempdir().unwrap();
    let live = store();
    for name in ["a", "b", "c"] {
        write(&live, &format!("traffic-{name}"), 5, NOW);
    }
    let s = Snapshotter::open(dir.path()).unwrap();
    s.save(&live).unwrap();
    assert!(s.delete_series(&live, "traffic-a").unwrap());
    s.delete_archives(&[("traffic-b".into(), "s".into())])
        .unwrap();
    drop(s);
    assert_eq!(
        manifest::read(&manifest::path_for(dir.path()))
            .unwrap()
            .map(|m| m.archives),
        Some(3)
    );
    let (_, report) = restored(dir.path());
    assert_eq!((report.archives, report.missing), (3, 0), "{report:?}");
}

#[test]
fn readiness_follows_snapshot_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Snapshotter::open(dir.path()).unwrap();
    s.health.unready_after_ms.store(3_000, Ordering::Relaxed);
    struct Step {
        name: &'static str,
        ok: bool,
        now_ms: u64,
        made_unready: bool,
        failing_since: Option<u64>,
    }
    let steps = [
        Step {
            name: "success",
            ok: true,
            now_ms: 1_000,
            made_unready: false,
            failing_since: None,
        },
        Step {
            name: "first failure",
            ok: false,
            now_ms: 2_000,
            made_unready: false,
            failing_since: None,
        },
        Step {
            name: "within the window",
            ok: false,
            now_ms: 4_000,
            made_unready: false,
            failing_since: None,
        },
        Step {
            name: "past the window",
            ok: false,
            now_ms: 4_001,
            made_unready: true,
            failing_since: Some(2_000),
        },
        Step {
            name: "still failing",
            ok: false,
            now_ms: 9_000,
            made_unready: false,
            failing_since: Some(2_000),
        },
        Step {
            name: "success again",
            ok: true,
            now_ms: 10_000,
            made_unready: false,
            failing_since: None,
        },
        Step {
            name: "new failure",
            ok: false,
            now_ms: 11_000,
            made_unready: false,
            failing_since: None,
        },
    ];
    for step in steps {
        assert_eq!(
            s.record_outcome(step.ok, step.now_ms),
            step.made_unready,
            "{}",
            step.name
        );
        assert_eq!(s.failing_since_ms(), step.failing_since, "{}", step.name);
    }
}

#[test]
fn recover_copies_a_sound_store_whole() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("snapshots");
    let live = store();
    for i in 0..50 {
        write(&live, &format!("traffic-{i}"), 7, NOW);
    }
    Snapshotter::open(&dir).unwrap().save(&live).unwrap();
    let report = recover::recover(&dir, "T1").unwrap();
    assert_eq!(
        (report.archives, report.manifest),
        (100, Some(100)),
        "{report}"
    );
    assert_eq!(report.archives_lost(), Some(0));
    assert!(report.read_errors.is_empty(), "{report}");
    assert!(data.path().join("snapshots.damaged-T1/db").exists());
    assert!(!data.path().join("snapshots.recover-scratch").exists());
    let (back, restore) = restored(&dir);
    assert!(!restore.lost_anything(), "{restore:?}");
    assert_eq!(dump(&back), dump(&live));
    let none = recover::recover(&data.path().join("nothing"), "T2");
    assert!(matches!(none, Err(recover::RecoverError::NoStore(_))));
}

#[test]
fn a_store_in_use_is_neither_opened_nor_recovered() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("snapshots");
    let running = Snapshotter::open(&dir).unwrap();
    running.save(&store()).unwrap();
    assert!(matches!(
        Snapshotter::open(&dir),
        Err(SnapshotError::Locked { .. })
    ));
    assert!(matches!(
        recover::recover(&dir, "T"),
        Err(recover::RecoverError::InUse(_))
    ));
    assert!(matches!(
        shorter_log(&dir),
        Err(SnapshotError::Locked { .. })
    ));
    assert!(matches!(
        recover::Untouched::put_back_leftover(&dir),
        Err(recover::RecoverError::InUse(_))
    ));
    drop(running);
    assert!(Snapshotter::open(&dir).is_ok(), "free once closed");
}

#[test]
fn recover_reads_the_log_itself_when_sled_cannot_open_the_store() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("snapshots");
    let live = store();
    for i in 0..50 {
        write(&live, &format!("traffic-{i}"), 7, NOW);
    }
    Snapshotter::open(&dir).unwrap().save(&live).unwrap();
    // sled needs `blobs` to be a folder: with a file there it refuses to
    // open in every way, while its log is intact.
    std::fs::remove_dir_all(dir.join("blobs")).unwrap();
    std::fs::write(dir.join("blobs"), b"not a folder").unwrap();
    assert!(matches!(
        Snapshotter::open(&dir),
        Err(SnapshotError::Open { .. })
    ));
    let report = recover::recover(&dir, "T").unwrap();
    assert_eq!(
        report.opened, "not by sled: the log read directly",
        "{report}"
    );
    assert_eq!((report.archives, report.no_pages), (100, 0), "{report}");
    let (back, restore) = restored(&dir);
    assert!(!restore.lost_anything(), "{restore:?}");
    assert_eq!(dump(&back), dump(&live));
}

#[test]
fn a_shorter_log_is_kept_untouched_while_sled_opens_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("snapshots");
    let live = store();
    write(&live, "traffic-a", 5, NOW);
    let s = Snapshotter::open(&dir).unwrap();
    s.save(&live).unwrap();
    drop(s);
    let log = dir.join("db");
    let len = |f: &Path| std::fs::metadata(f).unwrap().len();
    let saved = manifest::read(&manifest::path_for(&dir))
        .unwrap()
        .and_then(|m| m.log_bytes)
        .expect("the save recorded the log length");
    assert!(saved > 0 && saved <= len(&log), "{saved} {}", len(&log));
    assert_eq!(shorter_log(&dir).unwrap(), None, "as the save left it");
    let file = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    file.set_len(saved + 100).unwrap();
    assert_eq!(shorter_log(&dir).unwrap(), None, "longer: written after");
    file.set_len(saved / 2).unwrap();
    drop(file);
    assert_eq!(
        shorter_log(&dir).unwrap(),
        Some(ShorterLog {
            log_bytes: saved / 2,
            saved_log_bytes: saved
        })
    );
    let damaged = std::fs::read(&log).unwrap();
    let siblings = || {
        let mut names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let alone = ["snapshots", "snapshots.manifest"];

    // Restore failed: the copy replaces what sled's open left.
    let copy = recover::Untouched::take(&dir).unwrap();
    assert_eq!(
        siblings(),
        ["snapshots", "snapshots.manifest", "snapshots.untouched"]
    );
    std::fs::write(&log, b"rewritten by sled").unwrap();
    copy.put_back().unwrap();
    assert_eq!(std::fs::read(&log).unwrap(), damaged);
    assert_eq!(siblings(), alone);

    // Restore whole: the copy goes.
    recover::Untouched::take(&dir).unwrap().discard().unwrap();
    assert_eq!(std::fs::read(&log).unwrap(), damaged);
    assert_eq!(siblings(), alone);

    // A start that stopped between copying and deciding: the next one
    // puts its copy back first.
    drop(recover::Untouched::take(&dir).unwrap());
    std::fs::write(&log, b"rewritten by sled").unwrap();
    recover::Untouched::take(&dir).unwrap().discard().unwrap();
    assert_eq!(std::fs::read(&log).unwrap(), damaged);
    assert_eq!(siblings(), alone);

    // ... even when sled left a log no shorter than the last save: the
    // copy must not wait for a later shorter log (it would undo every
    // save in between). A partial copy is removed.
    drop(recover::Untouched::take(&dir).unwrap());
    std::fs::write(&log, vec![0; saved as usize + 1]).unwrap();
    assert_eq!(shorter_log(&dir).unwrap(), None);
    std::fs::create_dir(root.path().join("snapshots.untouched-partial")).unwrap();
    assert!(recover::Untouched::put_back_leftover(&dir).unwrap());
    assert_eq!(std::fs::read(&log).unwrap(), damaged);
    assert_eq!(siblings(), alone);
    assert!(
        !recover::Untouched::put_back_leftover(&dir).unwrap(),
        "none left"
    );

    // Stopped while putting it back, the store already removed.
    drop(recover::Untouched::take(&dir).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(recover::Untouched::put_back_leftover(&dir).unwrap());
    assert_eq!(std::fs::read(&log).unwrap(), damaged);
    assert_eq!(siblings(), alone);

    // `ringdb recover` after a start that did not finish recovers the
    // store as found, not what sled's open made of it.
    drop(recover::Untouched::take(&dir).unwrap());
    std::fs::write(&log, b"rewritten by sled").unwrap();
    recover::recover(&dir, "T").unwrap();
    let aside = root.path().join("snapshots.damaged-T").join("db");
    assert_eq!(std::fs::read(aside).unwrap(), damaged);
    assert!(!siblings().iter().any(|n| n.contains("untouched")));
}

#[test]
fn a_save_with_nothing_new_leaves_the_manifest_alone() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("snapshots");
    let file = manifest::path_for(&dir);
    let live = store();
    write(&live, "traffic-a", 5, NOW);
    let s = Snapshotter::open(&dir).unwrap();
    s.save(&live).unwrap();
    // Replaced by a rename on each write: a new inode.
    let inode = || std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&file).unwrap());
    let first = inode();
    for _ in 0..3 {
        s.save(&live).unwrap();
    }
    assert_eq!(inode(), first, "nothing saved: not rewritten");
    write(&live, "traffic-a", 1, NOW + 1000);
    s.save(&live).unwrap();
    let m = manifest::read(&file).unwrap().unwrap();
    assert_eq!(m.log_bytes, log_bytes(&dir), "the log grew: recorded");
    assert_ne!(inode(), first);
}

/// Archives of rules that change: what a save writes and what a restart
/// moves (issue 15).
mod migration {
    use super::super::*;
    use crate::model::{Sample, Value};
    use crate::rrd::{Consolidation, Reading};
    use crate::rules::{Rule, RuleSet};
    use crate::store::StoreLimits;

    const T0: u64 = 1_699_999_200;

    fn rule(name: &str, prefix: &str, tf: u64, limit: u32) -> Rule {
        let mut r = Rule::for_test(name, prefix, Consolidation::Sum);
        r.shape.timeframe_secs = tf;
        r.shape.limit = limit;
        r
    }

    fn store(rules: Vec<Rule>) -> Store {
        Store::new(
            RuleSet::new(rules),
            StoreLimits {
                max_future_ms: u64::MAX / 2,
                max_series: 1_000_000,
            },
        )
    }

    /// `n` series `p-i` of 20 samples, one every 10 s, valued 1.
    fn fill(s: &Store, prefix: &str, n: usize) {
        for i in 0..n {
            for k in 0..20u64 {
                let t = (T0 + k * 10) * 1000;
                let sample = Sample {
                    timestamp_ms: t,
                    value: Value::Uint(1),
                };
                s.write(&format!("{prefix}-{i}"), prefix, sample, t)
                    .unwrap();
            }
        }
    }

    /// Every (series, rule, bucket secs, value) held, sorted.
    fn held(s: &Store) -> Vec<(String, String, u64, String)> {
        let mut out = Vec::new();
        s.scan(|key, series| {
            for a in series.archives() {
                for (t, r) in a.archive.filled() {
                    let v = match r {
                        Reading::Uint(v) => v.to_string(),
                        r => format!("{r:?}"),
                    };
                    out.push((key.to_owned(), a.rule.name.clone(), t, v));
                }
            }
            true
        });
        out.sort();
        out
    }

    /// Records on disk by kind: (headers, pages).
    fn records(snap: &Snapshotter) -> (usize, usize) {
        (
            snap.db().unwrap().scan_prefix([HEADER]).count(),
            snap.db().unwrap().scan_prefix([PAGE]).count(),
        )
    }

    /// Issue 15: a rule change on 8,640-bucket rings holding 20 buckets
    /// wrote all 135 pages of every migrated archive (378 MB for 10K
    /// series); now the header and the non-empty page, and the old page
    /// goes.
    #[test]
    fn a_changed_rule_saves_only_the_pages_migrated_archives_hold() {
        let dir = tempfile::tempdir().unwrap();
        let snap = Snapshotter::open(dir.path()).unwrap();
        let s = store(vec![rule("any", "*", 10, 8640)]);
        fill(&s, "x", 50);
        snap.save(&s).unwrap();
        assert_eq!(records(&snap), (50, 50));
        s.set_rules(RuleSet::new(vec![rule("any", "*", 20, 8640)]));
        let report = snap.save(&s).unwrap();
        assert_eq!(report.archives, 50);
        assert!(report.pages <= 50, "pages written: {}", report.pages);
        assert_eq!(report.removed, 50, "the old pages");
        assert_eq!(records(&snap), (50, 50));
        let back = store(vec![rule("any", "*", 20, 8640)]);
        snap.restore(&back).unwrap();
        assert_eq!(held(&back), held(&s));
        assert_eq!(held(&back).len(), 50 * 10);
    }

    /// A save stopped part-way (shutdown) puts back what it took: the next
    /// save writes it, and a restore finds everything.
    #[test]
    fn a_stopped_save_leaves_the_rest_for_the_next() {
        struct Case {
            name: &'static str,
            stop_after_checks: usize,
        }
        let cases = [
            Case {
                name: "before the first write",
                stop_after_checks: 0,
            },
            Case {
                name: "in the first shard",
                stop_after_checks: 3,
            },
            Case {
                name: "after a few shards",
                stop_after_checks: 60,
            },
        ];
        for case in cases {
            let dir = tempfile::tempdir().unwrap();
            let snap = Snapshotter::open(dir.path()).unwrap();
            let s = store(vec![rule("any", "*", 10, 8640)]);
            fill(&s, "x", 300);
            snap.save(&s).unwrap();
            s.set_rules(RuleSet::new(vec![rule("any", "*", 20, 8640)]));
            let checks = AtomicUsize::new(0);
            let stop = || checks.fetch_add(1, Ordering::Relaxed) >= case.stop_after_checks;
            let written = AtomicUsize::new(0);
            let count = |b: u64| {
                written.fetch_add(b as usize, Ordering::Relaxed);
            };
            let control = SaveControl {
                stop: &stop,
                deadline: None,
                written: &count,
            };
            let first = snap.save_until(&s, control).unwrap();
            assert!(first.stopped, "{}", case.name);
            assert!(first.archives < 300, "{}: {}", case.name, first.archives);
            assert_eq!(
                written.load(Ordering::Relaxed) as u64,
                first.bytes,
                "{}",
                case.name
            );
            assert_eq!(s.dirty_series(), 300 - first.archives, "{}", case.name);
            let rest = snap.save(&s).unwrap();
            assert_eq!(first.archives + rest.archives, 300, "{}", case.name);
            assert_eq!(s.dirty_series(), 0, "{}", case.name);
            let back = store(vec![rule("any", "*", 20, 8640)]);
            snap.restore(&back).unwrap();
            assert_eq!(held(&back), held(&s), "{}", case.name);
        }
    }

    /// Issue 15: a rule added for a prefix hid its series' history. On
    /// reload it moves into the new rule; the `"*"` records go in the same
    /// write as the new archive's, so a restart finds it once.
    #[test]
    fn history_moved_to_a_newly_applying_rule_is_saved_and_the_old_records_go() {
        let dir = tempfile::tempdir().unwrap();
        let snap = Snapshotter::open(dir.path()).unwrap();
        let star = vec![rule("any", "*", 10, 8640), rule("any_1m", "*", 60, 100)];
        let s = store(star.clone());
        fill(&s, "x", 20);
        fill(&s, "y", 5);
        snap.save(&s).unwrap();
        assert_eq!(records(&snap).0, 50);
        let mut next = star.clone();
        next.push(rule("x_30s", "x", 30, 100));
        let change = s.set_rules(RuleSet::new(next.clone()));
        assert_eq!((change.moved_series, change.moved_archives), (20, 20));
        let report = snap.save(&s).unwrap();
        assert_eq!(report.archives, 20);
        assert_eq!(records(&snap).0, 20 + 10, "x: x_30s; y: any, any_1m");
        // The manifest counts what is on disk: the 40 headers removed went
        // out of it (else the next start would call 40 archives missing).
        let m = manifest::read(&manifest::path_for(dir.path())).unwrap();
        assert_eq!(m.map(|m| m.archives), Some(30));
        let back = store(next.clone());
        let restored = snap.restore(&back).unwrap();
        assert_eq!((restored.kept_on_disk, restored.moved_series), (0, 0));
        assert_eq!(restored.missing, 0);
        assert_eq!(held(&back), held(&s));
        let x: Vec<_> = held(&back).into_iter().filter(|h| h.0 == "x-3").collect();
        let want: Vec<_> = (0..7)
            .map(|k| {
                (
                    "x-3".to_owned(),
                    "x_30s".to_owned(),
                    T0 + k * 30,
                    if k < 6 { "3" } else { "2" }.to_owned(),
                )
            })
            .collect();
        assert_eq!(x, want);
    }

    /// The same with the changed file read on restart: the orphans are
    /// adopted after the restore, and the next save removes them.
    #[test]
    fn a_restart_with_a_rule_added_for_a_prefix_moves_the_saved_history() {
        let dir = tempfile::tempdir().unwrap();
        let snap = Snapshotter::open(dir.path()).unwrap();
        let star = vec![rule("any", "*", 10, 8640)];
        let s = store(star.clone());
        fill(&s, "x", 20);
        snap.save(&s).unwrap();
        let mut next = star.clone();
        next.push(rule("x_30s", "x", 30, 100));
        let back = store(next.clone());
        let restored = snap.restore(&back).unwrap();
        assert_eq!(
            (
                restored.archives,
                restored.moved_series,
                restored.moved_archives,
                restored.kept_on_disk
            ),
            (0, 20, 20, 0)
        );
        assert_eq!(held(&back).len(), 20 * 7);
        snap.save(&back).unwrap();
        assert_eq!(records(&snap), (20, 20), "the \"*\" records are gone");
        let again = store(next);
        let restored = snap.restore(&again).unwrap();
        assert_eq!((restored.archives, restored.moved_series), (20, 0));
        assert_eq!(held(&again), held(&back));
    }
}

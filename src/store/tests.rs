use super::*;
use crate::rrd::{Consolidation, Reading, Shape, Split, ValueSize};

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
fn restore_requires_same_rule_and_shape() {
    let s = store();
    let r = rule("t_min", "traffic", 60, ValueSize::Large);
    let mut a = Archive::new(r.shape.clone());
    a.update(sample(NOW, 9)).unwrap();
    assert_eq!(
        s.restore("traffic-a", "traffic", None, "gone", a.clone()),
        Err(RestoreSkip::NoSuchRule)
    );
    let other = Archive::new(rule("t_min", "traffic", 30, ValueSize::Large).shape);
    assert_eq!(
        s.restore("traffic-a", "traffic", None, "t_min", other),
        Err(RestoreSkip::ShapeChanged)
    );
    s.restore("traffic-a", "traffic", None, "t_min", a).unwrap();
    let got = s.read("traffic-a", |series| {
        series.archive("t_min").unwrap().get(NOW / 60_000).as_f64()
    });
    assert_eq!(got, Some(Some(9.0)));
    let empty = s.read("traffic-a", |x| {
        x.archive("t_min").map(|a| a.get(0) == Reading::Empty)
    });
    assert_eq!(empty, Some(Some(true)));
}

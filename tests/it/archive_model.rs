//! Property tests of `rrd::Archive` against the naive model in
//! tests/common/model.rs (DESIGN §2–3), and of the snapshot codec: a whole
//! snapshot and incremental saves both restore the live archive.
//!
//! Failures are not persisted to proptest-regressions/: a failing case is
//! printed shrunk, and the fix should come with a named case below.

use crate::common::model::{shape_with_specials, Expected, Model};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use ringdb::model::{Sample, Value};
use ringdb::rrd::codec::{self, Header};
use ringdb::rrd::{
    Archive, Consolidation, Reading, Reject, Shape, Special, Split, Strength, ValueSize,
    PAGE_BUCKETS,
};
use std::collections::BTreeMap;

const CONSOLIDATIONS: [Consolidation; 5] = [
    Consolidation::Last,
    Consolidation::Min,
    Consolidation::Max,
    Consolidation::Sum,
    Consolidation::Avg,
];
const SPLITS: [Split; 4] = [
    Split::Backward,
    Split::Forward,
    Split::Equal,
    Split::Proportional,
];
const VALUE_SIZES: [ValueSize; 4] = [
    ValueSize::Small,
    ValueSize::Medium,
    ValueSize::Large,
    ValueSize::Float,
];
const SPECIAL_NAMES: [&str; 3] = ["timeout", "error", "late"];

fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------- inputs

/// Where in its bucket a sample lands.
#[derive(Debug, Clone, Copy)]
enum Offset {
    Aligned,
    /// 1 ms after the bucket start.
    FirstMs,
    /// 1 ms before the next bucket.
    LastMs,
    Permille(u64),
}

/// How the next timestamp moves from the cursor (a bucket number).
#[derive(Debug, Clone, Copy)]
enum Step {
    /// The cursor moves forward by 0..=2 buckets.
    Forward(u64, Offset),
    /// Out of order: this many buckets behind the cursor, which stays.
    Back(u64, Offset),
    /// Out of order, around the window's edge: `limit − 1 + delta` buckets
    /// behind the cursor.
    Edge(u64, Offset),
    /// The cursor jumps by `limit + extra` buckets, past the whole window.
    Jump(u64, Offset),
}

/// An integer relative to the cell's maximum.
#[derive(Debug, Clone, Copy)]
enum Num {
    Zero,
    One,
    Small(u64),
    /// max/2 + 1: two of them overflow a sum.
    HalfMax,
    Max,
    MaxPlus1,
    Any(u64),
}

#[derive(Debug, Clone, Copy)]
enum Val {
    /// `Value::Uint`.
    Uint(Num),
    /// The same number as a whole `Value::Float`.
    Whole(Num),
    /// Any other float.
    Float(f64),
    /// `Value::Special` with an index that may not exist.
    Special(u64),
}

/// Input of one case: everything but the shape's kind.
#[derive(Debug, Clone)]
struct Run {
    timeframe_secs: u64,
    limit: u32,
    /// Strong or not, one per special.
    specials: Vec<bool>,
    /// First cursor bucket.
    base: u64,
    steps: Vec<(Step, Val)>,
}

fn offset() -> impl Strategy<Value = Offset> {
    prop_oneof![
        2 => Just(Offset::Aligned),
        1 => Just(Offset::FirstMs),
        1 => Just(Offset::LastMs),
        4 => (0..1000u64).prop_map(Offset::Permille),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => (0..=2u64, offset()).prop_map(|(n, o)| Step::Forward(n, o)),
        3 => (0..=24u64, offset()).prop_map(|(n, o)| Step::Back(n, o)),
        2 => (0..=2u64, offset()).prop_map(|(n, o)| Step::Edge(n, o)),
        1 => (0..=3u64, offset()).prop_map(|(n, o)| Step::Jump(n, o)),
    ]
}

fn num() -> impl Strategy<Value = Num> {
    prop_oneof![
        1 => Just(Num::Zero),
        1 => Just(Num::One),
        8 => (0..=100u64).prop_map(Num::Small),
        2 => Just(Num::HalfMax),
        1 => Just(Num::Max),
        1 => Just(Num::MaxPlus1),
        1 => any::<u64>().prop_map(Num::Any),
    ]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.5),
        Just(2.25),
        Just(-1.0),
        Just(-0.5),
        Just(-0.0),
        Just(f64::NAN),
        Just(-f64::NAN),
        // NaNs whose payloads look like the archive's own empty/special
        // markers: they must still read back as NaN.
        Just(f64::from_bits(0x7ff4_2a00_0000_000f)),
        Just(f64::from_bits(0x7ff4_2a00_0000_0001)),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
        Just(1e300),
        -1000.0..1000.0f64,
        any::<f64>(),
    ]
}

fn val() -> impl Strategy<Value = Val> {
    prop_oneof![
        10 => num().prop_map(Val::Uint),
        3 => num().prop_map(Val::Whole),
        3 => float().prop_map(Val::Float),
        2 => (0..=4u64).prop_map(Val::Special),
    ]
}

fn run(limits: impl Strategy<Value = u32>, max_samples: usize) -> impl Strategy<Value = Run> {
    (
        prop::sample::select(vec![1u64, 7, 60]),
        limits,
        prop::collection::vec(any::<bool>(), 0..=3),
        prop_oneof![Just(0u64), 0..50u64, Just(28_333_333u64)],
        prop::collection::vec((step(), val()), 1..max_samples),
    )
        .prop_map(|(timeframe_secs, limit, specials, base, steps)| Run {
            timeframe_secs,
            limit,
            specials,
            base,
            steps,
        })
}

/// Limits of the model comparison: mostly 1..=20 as in the brief, sometimes
/// more than a page so the ring spans several pages.
fn model_limits() -> impl Strategy<Value = u32> {
    prop_oneof![6 => 1..=20u32, 1 => (PAGE_BUCKETS as u32 - 4)..=140]
}

/// Limits of the codec properties: several pages, and a last partial one.
fn codec_limits() -> impl Strategy<Value = u32> {
    prop_oneof![
        1..=20u32,
        (PAGE_BUCKETS as u32 - 2)..=(3 * PAGE_BUCKETS as u32 + 2)
    ]
}

fn kind() -> impl Strategy<Value = (Consolidation, Split, ValueSize)> {
    (
        prop::sample::select(CONSOLIDATIONS.to_vec()),
        prop::sample::select(SPLITS.to_vec()),
        prop::sample::select(VALUE_SIZES.to_vec()),
    )
}

fn shape_of(kind: (Consolidation, Split, ValueSize), run: &Run) -> Shape {
    Shape {
        consolidation: kind.0,
        timeframe_secs: run.timeframe_secs,
        limit: run.limit,
        split: kind.1,
        value_size: kind.2,
        specials: run
            .specials
            .iter()
            .zip(SPECIAL_NAMES)
            .map(|(&strong, name)| Special {
                name: name.into(),
                strength: if strong {
                    Strength::Strong
                } else {
                    Strength::Weak
                },
            })
            .collect(),
    }
}

/// Turns the abstract steps into samples for this shape.
fn samples(shape: &Shape, run: &Run) -> Vec<Sample> {
    let tf_ms = shape.timeframe_secs * 1000;
    let limit = u64::from(shape.limit);
    let max = (1u64 << shape.value_size.value_bits().unwrap_or(60)) - 1;
    let mut cursor = run.base;
    run.steps
        .iter()
        .map(|&(step, val)| {
            let (bucket, offset) = match step {
                Step::Forward(n, o) => {
                    cursor += n;
                    (cursor, o)
                }
                Step::Back(n, o) => (cursor.saturating_sub(n), o),
                Step::Edge(delta, o) => (cursor.saturating_sub(limit - 1 + delta), o),
                Step::Jump(extra, o) => {
                    cursor += limit + extra;
                    (cursor, o)
                }
            };
            let offset_ms = match offset {
                Offset::Aligned => 0,
                Offset::FirstMs => 1,
                Offset::LastMs => tf_ms - 1,
                Offset::Permille(p) => tf_ms * p / 1000,
            };
            let n = |num: Num| match num {
                Num::Zero => 0,
                Num::One => 1,
                Num::Small(v) => v,
                Num::HalfMax => max / 2 + 1,
                Num::Max => max,
                Num::MaxPlus1 => max + 1,
                Num::Any(v) => v,
            };
            let value = match val {
                Val::Uint(num) => Value::Uint(n(num)),
                Val::Whole(num) => Value::Float(n(num) as f64),
                Val::Float(v) => Value::Float(v),
                Val::Special(i) => Value::Special(i),
            };
            Sample {
                timestamp_ms: bucket * tf_ms + offset_ms,
                value,
            }
        })
        .collect()
}

// ---------------------------------------------------------------- comparing

fn same_float(a: f64, b: f64, avg: bool) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if avg {
        a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
    } else {
        a.to_bits() == b.to_bits()
    }
}

fn agrees(got: Reading<'_>, want: &Expected, avg: bool) -> bool {
    match (got, want) {
        (Reading::Empty, Expected::Empty) => true,
        (Reading::Special(a), Expected::Special(b)) => a == b,
        (Reading::Uint(a), Expected::Uint(b)) => a == *b,
        (Reading::Float(a), Expected::Float(b)) => same_float(a, *b, avg),
        _ => false,
    }
}

/// Buckets around the window: three past each edge.
fn around_window(newest: Option<u64>, limit: u32) -> std::ops::RangeInclusive<u64> {
    match newest {
        Some(n) => n.saturating_sub(u64::from(limit) + 3)..=n + 3,
        None => 0..=3,
    }
}

fn check_readings(archive: &Archive, model: &Model, context: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        archive.newest_bucket(),
        model.newest_bucket(),
        "newest bucket {}",
        context
    );
    let avg = archive.shape().consolidation == Consolidation::Avg;
    let range = around_window(model.newest_bucket(), archive.shape().limit);
    for (bucket, want) in model.slice(*range.start(), *range.end()) {
        let got = archive.get(bucket);
        prop_assert!(
            agrees(got, &want, avg),
            "bucket {} reads {:?}, model says {:?} ({})",
            bucket,
            got,
            want,
            context
        );
    }
    Ok(())
}

/// Feeds every sample to both, comparing each result, the buckets it
/// touched, and at the end the whole window and its surroundings.
fn check_against_model(shape: &Shape, run: &Run) -> Result<(), TestCaseError> {
    let mut archive = Archive::new(shape.clone());
    let mut model = Model::new(shape);
    let avg = shape.consolidation == Consolidation::Avg;
    let tf_ms = shape.timeframe_secs * 1000;
    for (i, sample) in samples(shape, run).into_iter().enumerate() {
        let got = archive.update(sample);
        let want = model.update(sample.timestamp_ms, sample.value);
        prop_assert_eq!(got, want, "result of sample #{} {:?}", i, sample);
        let lo = sample.timestamp_ms / tf_ms;
        for bucket in [lo, lo + 1] {
            let (got, want) = (archive.get(bucket), model.read(bucket));
            prop_assert!(
                agrees(got, &want, avg),
                "after sample #{} {:?}: bucket {} reads {:?}, model says {:?}",
                i,
                sample,
                bucket,
                got,
                want
            );
        }
    }
    check_readings(&archive, &model, "at the end")
}

/// Archive against archive: exact, NaN equal to NaN.
fn check_same(got: &Archive, want: &Archive, context: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.shape(), want.shape(), "shape {}", context);
    prop_assert_eq!(
        got.newest_bucket(),
        want.newest_bucket(),
        "newest bucket {}",
        context
    );
    prop_assert_eq!(
        got.oldest_bucket(),
        want.oldest_bucket(),
        "oldest bucket {}",
        context
    );
    for bucket in around_window(want.newest_bucket(), want.shape().limit) {
        let (a, b) = (got.get(bucket), want.get(bucket));
        let same = match (a, b) {
            (Reading::Float(x), Reading::Float(y)) => same_float(x, y, false),
            _ => a == b,
        };
        prop_assert!(same, "bucket {}: {:?} vs {:?} ({})", bucket, a, b, context);
    }
    Ok(())
}

// ---------------------------------------------------------------- codec

const RULE: &str = "traffic_minutely";
const PREFIX: &str = "traffic";

fn restore(header: &Header, pages: &BTreeMap<u32, Vec<u8>>) -> Result<Archive, TestCaseError> {
    let (archive, errors) = Archive::restore(header, pages.iter().map(|(&n, b)| (n, b.as_slice())));
    prop_assert!(errors.is_empty(), "restore errors: {:?}", errors);
    Ok(archive)
}

fn decode_header(bytes: &[u8]) -> Result<Header, TestCaseError> {
    let header = codec::decode_header(bytes)
        .map_err(|e| TestCaseError::fail(format!("header does not decode: {e}")))?;
    prop_assert_eq!(&header.rule, RULE);
    prop_assert_eq!(&header.series_prefix, PREFIX);
    Ok(header)
}

/// A whole snapshot of a clone (`mark_all_dirty`), restored.
fn whole_snapshot(archive: &Archive) -> Result<Archive, TestCaseError> {
    let mut copy = archive.clone();
    copy.mark_all_dirty();
    let dirty = copy.take_dirty(RULE, PREFIX, None);
    prop_assert!(!copy.is_dirty(), "take_dirty leaves the archive clean");
    let pages = (archive.shape().limit as usize).div_ceil(PAGE_BUCKETS);
    prop_assert_eq!(dirty.pages.len(), pages, "every page is written");
    let header = decode_header(dirty.header.as_deref().expect("a header"))?;
    prop_assert_eq!(&header.shape, archive.shape());
    restore(&header, &dirty.pages.into_iter().collect())
}

/// A simulated key-value store fed by `take_dirty`, as the flusher does.
#[derive(Default)]
struct Saved {
    header: Option<Vec<u8>>,
    pages: BTreeMap<u32, Vec<u8>>,
}

impl Saved {
    fn save(&mut self, archive: &mut Archive) -> Result<(), TestCaseError> {
        let dirty = archive.take_dirty(RULE, PREFIX, None);
        if let Some(header) = dirty.header {
            self.header = Some(header);
        }
        self.pages.extend(dirty.pages);
        prop_assert!(!archive.is_dirty(), "take_dirty leaves the archive clean");
        let again = archive.take_dirty(RULE, PREFIX, None);
        prop_assert!(
            again.header.is_none() && again.pages.is_empty(),
            "a clean archive has nothing to save"
        );
        Ok(())
    }

    fn restore(&self) -> Result<Archive, TestCaseError> {
        let header = decode_header(self.header.as_deref().expect("a saved header"))?;
        restore(&header, &self.pages)
    }
}

/// Feeds `samples` to every archive, comparing the results.
fn feed_both(a: &mut Archive, b: &mut Archive, samples: &[Sample]) -> Result<(), TestCaseError> {
    for (i, sample) in samples.iter().enumerate() {
        prop_assert_eq!(
            a.update(*sample),
            b.update(*sample),
            "sample #{} {:?} after restore",
            i,
            sample
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- properties

/// Every consolidation × split × value size, each with its own runner so a
/// failure names its kind and no kind is left to chance.
#[test]
fn archive_agrees_with_model_for_every_kind() {
    let cases = (config().cases / 8).max(1);
    let mut failures = Vec::new();
    for consolidation in CONSOLIDATIONS {
        for split in SPLITS {
            for value_size in VALUE_SIZES {
                let kind = (consolidation, split, value_size);
                let mut runner = TestRunner::new(Config { cases, ..config() });
                let result = runner.run(&run(model_limits(), 200), |run| {
                    check_against_model(&shape_of(kind, &run), &run)
                });
                if let Err(e) = result {
                    failures.push(format!("{consolidation:?}/{split:?}/{value_size:?}: {e}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

proptest! {
    #![proptest_config(config())]

    /// A whole snapshot restores an archive that reads the same and goes on
    /// taking samples the same way (head and window restored).
    #[test]
    fn whole_snapshot_restores_the_archive(
        kind in kind(),
        run in run(codec_limits(), 200),
        cut in any::<prop::sample::Index>(),
    ) {
        let shape = shape_of(kind, &run);
        let samples = samples(&shape, &run);
        let (before, after) = samples.split_at(cut.index(samples.len() + 1));
        let mut live = Archive::new(shape);
        for sample in before {
            let _ = live.update(*sample);
        }
        let mut restored = whole_snapshot(&live)?;
        check_same(&restored, &live, "right after restore")?;
        feed_both(&mut restored, &mut live, after)?;
        check_same(&restored, &live, "after more samples")?;
    }

    /// Saving only what changed every few samples into a key-value map,
    /// then restoring from the map, gives the live archive at every save.
    #[test]
    fn incremental_saves_restore_the_live_archive(
        kind in kind(),
        run in run(codec_limits(), 200),
        every in 1..=12usize,
    ) {
        let shape = shape_of(kind, &run);
        let mut live = Archive::new(shape);
        let mut saved = Saved::default();
        saved.save(&mut live)?;
        check_same(&saved.restore()?, &live, "empty archive")?;
        for (i, sample) in samples(live.shape(), &run).into_iter().enumerate() {
            let _ = live.update(sample);
            if (i + 1) % every == 0 {
                saved.save(&mut live)?;
                check_same(&saved.restore()?, &live, &format!("after sample #{i}"))?;
            }
        }
        saved.save(&mut live)?;
        check_same(&saved.restore()?, &live, "at the end")?;
    }
}

// ---------------------------------------------------------------- named cases

fn shape(consolidation: Consolidation, split: Split, value_size: ValueSize, limit: u32) -> Shape {
    shape_with_specials(consolidation, split, value_size, 60, limit)
}

/// The avg count is capped at the cell's maximum (4095 for small): the
/// 4096th sample in one bucket overflows; too many for random sequences.
#[test]
fn avg_count_overflows_at_small_cell_max() {
    let shape = shape(Consolidation::Avg, Split::Backward, ValueSize::Small, 4);
    let mut archive = Archive::new(shape.clone());
    let mut model = Model::new(&shape);
    let mut results = Vec::new();
    for i in 0..4097u64 {
        let sample = Sample {
            timestamp_ms: 120_000 + i % 60_000,
            value: Value::Uint(i % 7),
        };
        let got = archive.update(sample);
        assert_eq!(
            got,
            model.update(sample.timestamp_ms, sample.value),
            "sample #{i}"
        );
        results.push(got);
    }
    assert!(results[..4095].iter().all(Result::is_ok));
    assert_eq!(
        results[4095..],
        [Err(Reject::Overflow), Err(Reject::Overflow)]
    );
    // 4095 samples of i % 7: 585 full rounds of 0..=6, mean 3.
    let mean = archive.get(2).as_f64().expect("a mean");
    assert!((mean - 3.0).abs() < 1e-9, "mean {mean}");
}

struct Case {
    name: &'static str,
    shape: Shape,
    samples: Vec<(u64, Value)>,
    results: Vec<Result<(), Reject>>,
    /// (bucket, reading) checked at the end.
    want: Vec<(u64, Expected)>,
}

/// Cases read off DESIGN §2–3, in timestamps of milliseconds.
fn design_cases() -> Vec<Case> {
    use Consolidation::*;
    use Split::*;
    use Value::{Float, Special as Sp, Uint};
    use ValueSize::{Large, Medium, Small};
    let ok = Ok(());
    vec![
        Case {
            name: "equal split: earlier bucket gets the odd unit",
            shape: shape(Sum, Equal, Large, 10),
            samples: vec![(90_000, Uint(7))],
            results: vec![ok],
            want: vec![(1, Expected::Uint(4)), (2, Expected::Uint(3))],
        },
        Case {
            name: "proportional split: floor of the share for the earlier bucket",
            shape: shape(Sum, Proportional, Medium, 10),
            samples: vec![(75_000, Uint(101))],
            results: vec![ok],
            want: vec![(1, Expected::Uint(75)), (2, Expected::Uint(26))],
        },
        Case {
            name: "specials go whole to lo even with a forward split",
            shape: shape(Last, Forward, Small, 10),
            samples: vec![(90_000, Sp(2))],
            results: vec![ok],
            want: vec![(1, Expected::Special("error".into())), (2, Expected::Empty)],
        },
        Case {
            name: "a number never overwrites a strong special; a weak one yields",
            shape: shape(Max, Backward, Small, 10),
            samples: vec![
                (60_000, Sp(2)),
                (60_000, Uint(3)),
                (120_000, Sp(1)),
                (120_000, Uint(3)),
            ],
            results: vec![ok, ok, ok, ok],
            want: vec![
                (1, Expected::Special("error".into())),
                (2, Expected::Uint(3)),
            ],
        },
        Case {
            name: "unknown special indexes",
            shape: shape(Last, Backward, Small, 10),
            samples: vec![(60_000, Sp(0)), (60_000, Sp(3))],
            results: vec![Err(Reject::UnknownSpecial), Err(Reject::UnknownSpecial)],
            want: vec![(1, Expected::Empty)],
        },
        Case {
            name: "sum overflow rejects and keeps the bucket",
            shape: shape(Sum, Backward, Small, 10),
            samples: vec![(60_000, Uint(4000)), (60_000, Uint(96)), (60_000, Uint(95))],
            results: vec![ok, Err(Reject::Overflow), ok],
            want: vec![(1, Expected::Uint(4095))],
        },
        Case {
            name: "2^60 as a float is out of range for a large cell",
            shape: shape(Last, Backward, Large, 10),
            samples: vec![(60_000, Float((1u64 << 60) as f64))],
            results: vec![Err(Reject::OutOfRange)],
            want: vec![(1, Expected::Empty)],
        },
        Case {
            name: "fractional, negative and infinite floats are out of range for integer cells",
            shape: shape(Last, Backward, Medium, 10),
            samples: vec![
                (60_000, Float(0.5)),
                (60_000, Float(-1.0)),
                (60_000, Float(f64::INFINITY)),
                (60_000, Float(f64::NAN)),
                (60_000, Float(5.0)),
            ],
            results: vec![
                Err(Reject::OutOfRange),
                Err(Reject::OutOfRange),
                Err(Reject::OutOfRange),
                Err(Reject::OutOfRange),
                ok,
            ],
            want: vec![(1, Expected::Uint(5))],
        },
        Case {
            name: "the window's edge: limit−1 back is kept, limit back is too old",
            shape: shape(Last, Backward, Small, 3),
            samples: vec![(300_000, Uint(5)), (180_000, Uint(3)), (120_000, Uint(2))],
            results: vec![ok, ok, Err(Reject::TooOld)],
            want: vec![
                (2, Expected::Empty),
                (3, Expected::Uint(3)),
                (5, Expected::Uint(5)),
            ],
        },
        Case {
            name: "a split whose second half slides the window keeps both halves in range",
            shape: shape(Sum, Equal, Small, 2),
            samples: vec![(60_000, Uint(1)), (90_000, Uint(9))],
            results: vec![ok, ok],
            want: vec![(1, Expected::Uint(6)), (2, Expected::Uint(4))],
        },
        Case {
            name: "a split whose second half pushes the first out of a one-bucket window",
            shape: shape(Sum, Equal, Small, 1),
            samples: vec![(90_000, Uint(9))],
            results: vec![ok],
            want: vec![(1, Expected::Empty), (2, Expected::Uint(4))],
        },
    ]
}

/// The model on its own, so a wrong model fails here and not only as a
/// disagreement with the archive.
#[test]
fn model_follows_design_cases() {
    for case in design_cases() {
        let mut model = Model::new(&case.shape);
        let results: Vec<_> = case
            .samples
            .iter()
            .map(|&(t, v)| model.update(t, v))
            .collect();
        assert_eq!(results, case.results, "case {}: results", case.name);
        for (bucket, want) in &case.want {
            assert_eq!(
                &model.read(*bucket),
                want,
                "case {}: bucket {bucket}",
                case.name
            );
        }
    }
}

/// The archive on the same cases, compared with the model.
#[test]
fn archive_agrees_on_design_cases() {
    let mut failures = Vec::new();
    for case in design_cases() {
        let mut archive = Archive::new(case.shape.clone());
        let mut model = Model::new(&case.shape);
        let mut check = || -> Result<(), TestCaseError> {
            for &(t, v) in &case.samples {
                let sample = Sample {
                    timestamp_ms: t,
                    value: v,
                };
                prop_assert_eq!(archive.update(sample), model.update(t, v), "{:?}", sample);
            }
            check_readings(&archive, &model, "at the end")
        };
        if let Err(e) = check() {
            failures.push(format!("case {}: {e}", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

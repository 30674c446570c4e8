use super::*;
use crate::model::{Sample, Value};

fn shape(consolidation: Consolidation, split: Split, value_size: ValueSize, limit: u32) -> Shape {
    Shape {
        consolidation,
        timeframe_secs: 60,
        limit,
        split,
        value_size,
        specials: vec![
            Special {
                name: "timeout".into(),
                strength: Strength::Weak,
            },
            Special {
                name: "error".into(),
                strength: Strength::Strong,
            },
        ],
    }
}

fn s(secs: u64, value: Value) -> Sample {
    Sample {
        timestamp_ms: secs * 1000,
        value,
    }
}

/// Buckets `from..=to` (timestamps in seconds) rendered as strings.
fn render(a: &Archive, from: u64, to: u64) -> Vec<String> {
    a.range(from / 60, to / 60)
        .map(|(b, r)| {
            let v = match r {
                Reading::Empty => "empty".to_string(),
                Reading::Special(n) => n.to_string(),
                Reading::Uint(v) => v.to_string(),
                Reading::Float(v) => v.to_string(),
            };
            format!("{}:{v}", b * 60)
        })
        .collect()
}

struct Case {
    name: &'static str,
    shape: Shape,
    samples: Vec<(u64, Value)>,
    from: u64,
    to: u64,
    want: &'static [&'static str],
    rejects: &'static [Option<Reject>],
}

#[test]
fn table() {
    use Consolidation::*;
    use Split::*;
    use Value::*;
    use ValueSize::{Large, Medium, Small};
    let cases = vec![
        Case {
            name: "yawndb sum_test: forward split into the next bucket, twice",
            shape: shape(Sum, Forward, Large, 10),
            samples: vec![(0, Uint(0)), (15, Uint(60)), (15, Uint(60))],
            from: 0,
            to: 120,
            want: &["0:0", "60:120", "120:empty"],
            rejects: &[None, None, None],
        },
        Case {
            name: "aligned timestamps are never split",
            shape: shape(Sum, Equal, Large, 10),
            samples: vec![(60, Uint(7))],
            from: 0,
            to: 120,
            want: &["0:empty", "60:7", "120:empty"],
            rejects: &[None],
        },
        Case {
            name: "equal split gives the odd unit to the earlier bucket",
            shape: shape(Sum, Equal, Large, 10),
            samples: vec![(90, Uint(7))],
            from: 60,
            to: 120,
            want: &["60:4", "120:3"],
            rejects: &[None],
        },
        Case {
            name: "proportional split: nearer bucket gets more, exact integers",
            shape: shape(Sum, Proportional, Large, 10),
            samples: vec![(75, Uint(100))],
            from: 60,
            to: 120,
            want: &["60:75", "120:25"],
            rejects: &[None],
        },
        Case {
            name: "equal split after a gap lands both halves correctly (yawndb bug 10.1)",
            shape: shape(Sum, Equal, Large, 10),
            samples: vec![(120, Uint(15)), (180, Uint(5)), (250, Uint(100))],
            from: 120,
            to: 300,
            want: &["120:15", "180:5", "240:50", "300:50"],
            rejects: &[None, None, None],
        },
        Case {
            name: "sum overflow rejects and keeps the bucket",
            shape: shape(Sum, Backward, Small, 10),
            samples: vec![(60, Uint(4000)), (60, Uint(96)), (60, Uint(95))],
            from: 60,
            to: 60,
            want: &["60:4095"],
            rejects: &[None, Some(Reject::Overflow), None],
        },
        Case {
            name: "value beyond a small cell is out of range",
            shape: shape(Last, Backward, Small, 10),
            samples: vec![(60, Uint(4096)), (60, Uint(4095))],
            from: 60,
            to: 60,
            want: &["60:4095"],
            rejects: &[Some(Reject::OutOfRange), None],
        },
        Case {
            name: "weak special is replaced by the next number",
            shape: shape(Max, Backward, Large, 10),
            samples: vec![(60, Special(1)), (61, Uint(5))],
            from: 60,
            to: 60,
            want: &["60:5"],
            rejects: &[None, None],
        },
        Case {
            name: "weak special does not replace a number",
            shape: shape(Max, Backward, Large, 10),
            samples: vec![(61, Uint(5)), (60, Special(1))],
            from: 60,
            to: 60,
            want: &["60:5"],
            rejects: &[None, None],
        },
        Case {
            name: "strong special sticks against numbers and weak specials",
            shape: shape(Sum, Backward, Large, 10),
            samples: vec![
                (60, Uint(5)),
                (60, Special(2)),
                (61, Uint(3)),
                (62, Special(1)),
            ],
            from: 60,
            to: 60,
            want: &["60:error"],
            rejects: &[None, None, None, None],
        },
        Case {
            name: "unknown special index is rejected",
            shape: shape(Sum, Backward, Large, 10),
            samples: vec![(60, Special(3)), (60, Special(0))],
            from: 60,
            to: 60,
            want: &["60:empty"],
            rejects: &[Some(Reject::UnknownSpecial), Some(Reject::UnknownSpecial)],
        },
        Case {
            name: "specials go whole to the lower bucket under equal split",
            shape: shape(Sum, Equal, Large, 10),
            samples: vec![(90, Special(2))],
            from: 60,
            to: 120,
            want: &["60:error", "120:empty"],
            rejects: &[None],
        },
        Case {
            name: "sample older than the window is rejected",
            shape: shape(Last, Backward, Large, 3),
            samples: vec![(600, Uint(1)), (480, Uint(2)), (420, Uint(3))],
            from: 420,
            to: 600,
            want: &["420:empty", "480:2", "540:empty", "600:1"],
            rejects: &[None, None, Some(Reject::TooOld)],
        },
        Case {
            name: "a gap longer than the window clears it",
            shape: shape(Last, Backward, Large, 3),
            samples: vec![(60, Uint(1)), (120, Uint(2)), (60_000, Uint(3))],
            from: 59_880,
            to: 60_000,
            want: &["59880:empty", "59940:empty", "60000:3"],
            rejects: &[None, None, None],
        },
        Case {
            name: "avg is the running mean, float reading",
            shape: shape(Avg, Backward, Small, 10),
            samples: vec![(60, Uint(1)), (61, Uint(2)), (62, Uint(4))],
            from: 60,
            to: 60,
            want: &["60:2.3333333333333335"],
            rejects: &[None, None, None],
        },
        Case {
            name: "float cells keep NaN and infinities",
            shape: shape(Last, Backward, ValueSize::Float, 10),
            samples: vec![
                (60, Float(f64::NAN)),
                (120, Float(f64::INFINITY)),
                (180, Float(-1.5)),
            ],
            from: 60,
            to: 180,
            want: &["60:NaN", "120:inf", "180:-1.5"],
            rejects: &[None, None, None],
        },
        Case {
            name: "integer cells refuse fractions and negatives",
            shape: shape(Last, Backward, Medium, 10),
            samples: vec![(60, Float(1.5)), (60, Float(-1.0)), (60, Float(2.0))],
            from: 60,
            to: 60,
            want: &["60:2"],
            rejects: &[Some(Reject::OutOfRange), Some(Reject::OutOfRange), None],
        },
    ];
    for case in cases {
        let mut a = Archive::new(case.shape.clone());
        let got: Vec<Option<Reject>> = case
            .samples
            .iter()
            .map(|&(t, v)| a.update(s(t, v)).err())
            .collect();
        assert_eq!(got, case.rejects, "case {}: rejects", case.name);
        assert_eq!(
            render(&a, case.from, case.to),
            case.want,
            "case {}: buckets",
            case.name
        );
        assert_eq!(
            numbers(&a, case.from / 60, case.to / 60),
            numbers_by_range(&a, case.from / 60, case.to / 60),
            "case {}: for_each_number",
            case.name
        );
    }
}

/// The numbers of buckets `from..=to` read by [`Archive::for_each_number`].
fn numbers(a: &Archive, from: u64, to: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    a.for_each_number(from, to, |b, v| out.push((b, v.to_bits())));
    out
}

/// The same read bucket by bucket through [`Archive::range`].
fn numbers_by_range(a: &Archive, from: u64, to: u64) -> Vec<(u64, u64)> {
    a.range(from, to)
        .filter_map(|(b, r)| r.as_f64().map(|v| (b, v.to_bits())))
        .collect()
}

#[test]
fn for_each_number_matches_range_across_the_ring_wrap() {
    for (value_size, consolidation) in [
        (ValueSize::Small, Consolidation::Sum),
        (ValueSize::Medium, Consolidation::Avg),
        (ValueSize::Large, Consolidation::Last),
        (ValueSize::Float, Consolidation::Max),
        (ValueSize::Float, Consolidation::Avg),
    ] {
        let mut a = Archive::new(shape(consolidation, Split::Backward, value_size, 7));
        // 17 buckets into a ring of 7: the window wraps; some buckets are
        // empty and some hold specials.
        for i in 0..17u64 {
            let v = match i % 5 {
                3 => continue,
                4 => Value::Special(1 + i % 2),
                _ => Value::Uint(i),
            };
            a.update(s(i * 60, v)).unwrap();
        }
        for from in 0..20 {
            for to in from..20 {
                assert_eq!(
                    numbers(&a, from, to),
                    numbers_by_range(&a, from, to),
                    "{value_size:?} {consolidation:?} buckets {from}..={to}"
                );
            }
        }
        assert_eq!(numbers(&a, 0, u64::MAX), numbers_by_range(&a, 10, 16));
    }
}

#[test]
fn codec_round_trip_and_dirty_pages() {
    let mut a = Archive::new(shape(
        Consolidation::Avg,
        Split::Backward,
        ValueSize::Medium,
        200,
    ));
    for i in 0..150u64 {
        a.update(s(i * 60 + 1, Value::Uint(i))).unwrap();
    }
    let dirty = a.take_dirty("r", "p", None);
    assert!(dirty.header.is_some());
    assert_eq!(dirty.pages.len(), 3);
    assert!(!a.is_dirty());
    a.update(s(149 * 60, Value::Uint(7))).unwrap();
    let again = a.take_dirty("r", "p", None);
    assert!(again.header.is_none(), "no slide, header unchanged");
    assert_eq!(again.pages.len(), 1, "one page touched");

    let mut full = a.clone();
    full.mark_all_dirty();
    let all = full.take_dirty("r", "p", None);
    let header = codec::decode_header(all.header.as_ref().unwrap()).unwrap();
    assert_eq!(header.rule, "r");
    let (back, errors) =
        Archive::restore(&header, all.pages.iter().map(|(n, b)| (*n, b.as_slice())));
    assert!(errors.is_empty());
    assert_eq!(render(&back, 0, 200 * 60), render(&a, 0, 200 * 60));
}

#[test]
fn corrupt_records_are_reported() {
    assert!(codec::decode_header(b"\x01\x02").is_err());
    let mut a = Archive::new(shape(
        Consolidation::Sum,
        Split::Backward,
        ValueSize::Small,
        100,
    ));
    a.update(s(60, Value::Uint(1))).unwrap();
    let d = a.take_dirty("r", "p", None);
    let header = codec::decode_header(d.header.as_ref().unwrap()).unwrap();
    let truncated = &d.pages[0].1[..5];
    let (back, errors) = Archive::restore(&header, [(0, truncated)]);
    assert_eq!(errors.len(), 1);
    assert_eq!(back.get(1), Reading::Empty);
}

/// Every value size and avg: (consolidation, value size, value).
const CODEC_KINDS: [(Consolidation, ValueSize, Value); 5] = [
    (Consolidation::Sum, ValueSize::Small, Value::Uint(4000)),
    (Consolidation::Max, ValueSize::Medium, Value::Uint(1 << 27)),
    (Consolidation::Last, ValueSize::Large, Value::Uint(1 << 59)),
    (Consolidation::Last, ValueSize::Float, Value::Float(-0.1)),
    (Consolidation::Avg, ValueSize::Float, Value::Float(2.5)),
];

fn sample_archive(consolidation: Consolidation, size: ValueSize, value: Value) -> Archive {
    let mut a = Archive::new(shape(consolidation, Split::Backward, size, 150));
    for i in 0..100u64 {
        let v = if i % 3 == 0 { value } else { Value::Uint(i) };
        a.update(s(i * 60, v)).unwrap();
    }
    a.update(s(50 * 60, Value::Special(2))).unwrap();
    a
}

#[test]
fn a_new_sample_in_the_newest_bucket_writes_one_page_and_no_header() {
    for (consolidation, size, value) in CODEC_KINDS {
        let case = format!("{consolidation:?} {size:?}");
        let mut a = sample_archive(consolidation, size, value);
        let first = a.take_dirty("r", "p", None);
        let header = codec::decode_header(first.header.as_ref().unwrap()).unwrap();
        let mut saved: std::collections::BTreeMap<u32, Vec<u8>> = first.pages.into_iter().collect();
        // Slide past the end of the ring: the head moves into page 0 and
        // the emptied buckets' pages are rewritten with it.
        for t in [160u64, 161, 230] {
            a.update(s(t * 60, Value::Uint(3))).unwrap();
            let dirty = a.take_dirty("r", "p", None);
            assert!(
                dirty.header.is_none(),
                "case {case}: header written on a slide"
            );
            assert!(!dirty.pages.is_empty(), "case {case}: the head's page");
            saved.extend(dirty.pages);
            let (back, errors) =
                Archive::restore(&header, saved.iter().map(|(n, b)| (*n, b.as_slice())));
            assert!(errors.is_empty(), "case {case}: {errors:?}");
            assert_eq!(
                back.newest_bucket(),
                a.newest_bucket(),
                "case {case}: newest"
            );
            assert_eq!(
                render(&back, 0, 240 * 60),
                render(&a, 0, 240 * 60),
                "case {case}"
            );
        }
        a.update(s(230 * 60, Value::Uint(3))).unwrap();
        assert_eq!(
            a.take_dirty("r", "p", None).pages.len(),
            1,
            "case {case}: same bucket, one page"
        );
    }
}

#[test]
fn version_1_records_are_still_read() {
    for (consolidation, size, value) in CODEC_KINDS {
        let case = format!("{consolidation:?} {size:?}");
        let mut a = sample_archive(consolidation, size, value);
        let (header_bytes, mut pages) = codec::encode_v1(&a, "r", "p");
        let header = codec::decode_header(&header_bytes).unwrap();
        assert_eq!(header.version, 1, "case {case}");
        assert_restores(&header, &pages, &a, &case);
        // Version 2 pages saved after an upgrade, on top of version 1 ones.
        a.update(s(120 * 60, Value::Uint(1))).unwrap();
        pages.extend(a.take_dirty("r", "p", None).pages);
        let mut merged: std::collections::BTreeMap<u32, Vec<u8>> = Default::default();
        merged.extend(pages);
        let merged: Vec<_> = merged.into_iter().collect();
        assert_restores(&header, &merged, &a, &format!("{case}: mixed"));
    }
}

/// `pages` with `header` restore `want`.
fn assert_restores(header: &codec::Header, pages: &[(u32, Vec<u8>)], want: &Archive, case: &str) {
    let (back, errors) = Archive::restore(header, pages.iter().map(|(n, b)| (*n, b.as_slice())));
    assert!(errors.is_empty(), "case {case}: {errors:?}");
    assert_eq!(
        render(&back, 0, 240 * 60),
        render(want, 0, 240 * 60),
        "case {case}"
    );
}

#[test]
fn a_page_with_a_cell_too_wide_is_reported() {
    let mut wide = Archive::new(shape(
        Consolidation::Sum,
        Split::Backward,
        ValueSize::Large,
        100,
    ));
    wide.update(s(60, Value::Uint(1 << 40))).unwrap();
    let page = wide.take_dirty("r", "p", None).pages.remove(0);
    let mut small = Archive::new(shape(
        Consolidation::Sum,
        Split::Backward,
        ValueSize::Small,
        100,
    ));
    let header =
        codec::decode_header(small.take_dirty("r", "p", None).header.as_ref().unwrap()).unwrap();
    let (back, errors) = Archive::restore(&header, [(page.0, page.1.as_slice())]);
    assert_eq!(errors.len(), 1);
    assert_eq!(back.get(1), Reading::Empty);
}

/// Found while writing the snapshot fuzz target (its input:
/// fuzz/regressions/snapshot/undefined-special): a page holding a special
/// its header's shape does not define made the first read of that bucket
/// index past the shape's specials and panic. Such a page is refused and
/// left empty, for version 1 and version 2 pages alike.
#[test]
fn a_page_with_an_undefined_special_is_refused() {
    let mut with = Archive::new(shape(
        Consolidation::Last,
        Split::Backward,
        ValueSize::Small,
        100,
    ));
    with.update(s(60, Value::Uint(3))).unwrap();
    with.update(s(120, Value::Special(2))).unwrap();
    let v2 = with.take_dirty("r", "p", None);
    let (v1_header, v1_pages) = codec::encode_v1(&with, "r", "p");
    let cases = [
        ("version 2", v2.header.unwrap(), v2.pages[0].clone()),
        ("version 1", v1_header, v1_pages[0].clone()),
    ];
    for (case, header_bytes, page) in cases {
        // The header of a rule that defines one special, not two.
        let mut header = codec::decode_header(&header_bytes).unwrap();
        header.shape.specials.truncate(1);
        let (back, errors) = Archive::restore(&header, [(page.0, page.1.as_slice())]);
        assert_eq!(errors.len(), 1, "case {case}");
        assert_eq!(back.get(1), Reading::Empty, "case {case}");
        assert_eq!(back.get(2), Reading::Empty, "case {case}");
        assert_eq!(back.filled().count(), 0, "case {case}");
    }
}

/// A saved header must hold a shape config could have made, and a page's
/// newest bucket must start at a representable millisecond: otherwise
/// reading or migrating the restored archive overflowed `bucket ×
/// timeframe` (a panic in debug builds, wrapped timestamps in release).
#[test]
fn headers_and_pages_beyond_the_rule_bounds_are_refused() {
    let base = || shape(Consolidation::Last, Split::Backward, ValueSize::Small, 100);
    let header_of = |shape: Shape| {
        Archive::new(shape)
            .take_dirty("r", "p", None)
            .header
            .unwrap()
    };
    let cases: Vec<(&str, Shape)> = vec![
        (
            "timeframe over a year",
            Shape {
                timeframe_secs: MAX_TIMEFRAME_SECS + 1,
                ..base()
            },
        ),
        (
            "window over 100 years",
            Shape {
                timeframe_secs: MAX_TIMEFRAME_SECS,
                limit: 101,
                ..base()
            },
        ),
        (
            "limit over the small cells' range",
            Shape {
                limit: 70_000,
                ..base()
            },
        ),
        (
            "15 specials",
            Shape {
                specials: [base().specials, vec![base().specials[0].clone(); 13]].concat(),
                ..base()
            },
        ),
    ];
    for (case, bad) in cases {
        assert!(
            codec::decode_header(&header_of(bad)).is_err(),
            "case {case}"
        );
    }
    let mut a = Archive::new(base());
    a.update(s(60, Value::Uint(3))).unwrap();
    a.newest = Some(u64::MAX / 60);
    let page = a.take_dirty("r", "p", None).pages.remove(0);
    let header = codec::decode_header(&header_of(base())).unwrap();
    let (back, errors) = Archive::restore(&header, [(page.0, page.1.as_slice())]);
    assert_eq!(
        errors.len(),
        1,
        "case newest bucket past the last timestamp"
    );
    assert_eq!(back.filled().count(), 0);
}

/// One change to a ring of cells, for the model test below.
#[derive(Debug, Clone)]
enum CellOp {
    Set(usize, cells::Cell),
    Clear,
}

fn cell_op(len: usize) -> impl proptest::strategy::Strategy<Value = CellOp> {
    use proptest::prelude::*;
    let cell = prop_oneof![
        Just(cells::Cell::Empty),
        (1u8..=2).prop_map(cells::Cell::Special),
        (0u64..4000).prop_map(cells::Cell::Num),
    ];
    prop_oneof![
        20 => (0..len, cell).prop_map(|(pos, c)| CellOp::Set(pos, c)),
        1 => Just(CellOp::Clear),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
    /// Cells that hold only the span written read, page and reload exactly
    /// as a plain array of the whole ring would, wherever writes start
    /// and however the span wraps.
    #[test]
    fn growing_cells_match_a_whole_array(
        kind in proptest::sample::select(vec![
            ValueSize::Small, ValueSize::Medium, ValueSize::Large, ValueSize::Float,
        ]),
        len in 1usize..200,
        seed_ops in proptest::collection::vec(cell_op(1000), 0..300),
        from in 0usize..1000,
        to in 0usize..1000,
    ) {
        use cells::{Cell, Cells};
        let mut model = vec![Cell::Empty; len];
        let mut c = Cells::new(kind, len);
        for op in seed_ops {
            match op {
                CellOp::Set(pos, cell) => {
                    // Floats keep the bits; integers fit every width here.
                    c.set(pos % len, cell);
                    model[pos % len] = cell;
                }
                CellOp::Clear => {
                    c.clear();
                    model.fill(Cell::Empty);
                }
            }
            proptest::prop_assert!(c.heap_bytes() <= len * c.width());
        }
        for (pos, want) in model.iter().enumerate() {
            proptest::prop_assert_eq!(c.get(pos), *want, "position {}", pos);
        }
        let (from, to) = (from % len, to % len);
        let range = from.min(to)..from.max(to) + 1;
        let mut seen = Vec::new();
        c.for_each_num(range.clone(), |pos, n| seen.push((pos, n)));
        let want: Vec<_> = range
            .clone()
            .filter_map(|pos| match model[pos] {
                Cell::Num(n) => Some((pos, n)),
                _ => None,
            })
            .collect();
        proptest::prop_assert_eq!(seen, want);
        // Paged out and loaded into a fresh ring, page by page.
        let mut back = Cells::new(kind, len);
        for start in (0..len).step_by(PAGE_BUCKETS) {
            let mut values = Vec::new();
            c.page_values(start..(start + PAGE_BUCKETS).min(len), &mut values);
            proptest::prop_assert!(back.load_page_values(start, &values));
        }
        for (pos, want) in model.iter().enumerate() {
            proptest::prop_assert_eq!(back.get(pos), *want, "reloaded position {}", pos);
        }
        let mut raw = Cells::new(kind, len);
        raw.load_raw(0, &c.raw_bytes(0..len));
        for (pos, want) in model.iter().enumerate() {
            proptest::prop_assert_eq!(raw.get(pos), *want, "raw position {}", pos);
        }
    }
}

#[test]
fn an_archive_holds_memory_for_the_span_written_up_to_its_ring() {
    let mut a = Archive::new(shape(
        Consolidation::Last,
        Split::Backward,
        ValueSize::Float,
        480,
    ));
    let fixed = a.memory_bytes();
    a.update(s(600, Value::Float(1.0))).unwrap();
    let one = a.memory_bytes() - fixed;
    assert!(one > 0 && one <= 16 * 8, "one bucket: {one} bytes of cells");
    for i in 0..100u64 {
        a.update(s(600 + i * 60, Value::Float(i as f64))).unwrap();
    }
    let hundred = a.memory_bytes() - fixed;
    assert!(
        (100 * 8..=128 * 8).contains(&hundred),
        "100 buckets: {hundred}"
    );
    for i in 0..1000u64 {
        a.update(s(600 + i * 60, Value::Float(i as f64))).unwrap();
    }
    assert_eq!(a.memory_bytes() - fixed, 480 * 8, "a full window: the ring");
    // A gap longer than the window empties it and gives the memory back;
    // writes go on from where the head is, wrapping around the ring.
    a.update(s(600 + 2000 * 60, Value::Float(7.0))).unwrap();
    assert_eq!(a.memory_bytes() - fixed, 16 * 8);
    for i in 1..=40u64 {
        a.update(s(600 + (2000 + i) * 60, Value::Float(i as f64)))
            .unwrap();
    }
    assert!(a.memory_bytes() - fixed <= 64 * 8);
    let newest = 10 + 2040;
    let got = numbers(&a, newest - 40, newest);
    assert_eq!(got.len(), 41);
    assert_eq!(f64::from_bits(got[0].1), 7.0);
    assert_eq!(f64::from_bits(got[40].1), 40.0);
    // Saved and restored, it holds the same span again.
    a.mark_all_dirty();
    let all = a.take_dirty("r", "p", None);
    let header = codec::decode_header(all.header.as_ref().unwrap()).unwrap();
    let (back, errors) =
        Archive::restore(&header, all.pages.iter().map(|(n, b)| (*n, b.as_slice())));
    assert!(errors.is_empty());
    assert_eq!(numbers(&back, 0, u64::MAX), numbers(&a, 0, u64::MAX));
    assert!(
        back.memory_bytes() - fixed <= 128 * 8,
        "{}",
        back.memory_bytes()
    );
}

#[test]
fn an_older_sample_grows_the_cells_backward_not_around_the_ring() {
    let mut a = Archive::new(shape(
        Consolidation::Sum,
        Split::Backward,
        ValueSize::Large,
        1440,
    ));
    let fixed = a.memory_bytes();
    // Newest first, as a pipelined agent may send them.
    for back in 0..30u64 {
        a.update(s((10_000 - back) * 60, Value::Uint(back)))
            .unwrap();
    }
    assert!(a.memory_bytes() - fixed <= 64 * 8, "{}", a.memory_bytes());
    let got = numbers(&a, 0, u64::MAX);
    assert_eq!(got.len(), 30);
    assert_eq!(got[0], (10_000 - 29, 29f64.to_bits()));
}

/// Issue 15: a rule change on a ring of 8,640 buckets holding 20 of them
/// encoded all 135 pages of the migrated archive, and read every bucket
/// of the old ring.
#[test]
fn a_migrated_archive_saves_only_the_pages_it_holds() {
    struct Case {
        name: &'static str,
        old_timeframe: u64,
        new_timeframe: u64,
        samples: u64,
        want_pages: usize,
    }
    let cases = [
        Case {
            name: "10s to 20s, 20 samples",
            old_timeframe: 10,
            new_timeframe: 20,
            samples: 20,
            want_pages: 1,
        },
        Case {
            name: "60s to 10s, 20 samples",
            old_timeframe: 60,
            new_timeframe: 10,
            samples: 20,
            want_pages: 2,
        },
        Case {
            name: "10s to 60s, 900 samples",
            old_timeframe: 10,
            new_timeframe: 60,
            samples: 900,
            want_pages: 3,
        },
        Case {
            name: "no samples",
            old_timeframe: 10,
            new_timeframe: 20,
            samples: 0,
            want_pages: 0,
        },
    ];
    for case in cases {
        let mut old_shape = shape(Consolidation::Last, Split::Backward, ValueSize::Float, 8640);
        old_shape.timeframe_secs = case.old_timeframe;
        let mut new_shape = old_shape.clone();
        new_shape.timeframe_secs = case.new_timeframe;
        let mut a = Archive::new(old_shape);
        // Starts at a page boundary of the new ring (64 new buckets).
        let start = 1_000_000 * 64 * case.new_timeframe;
        for i in 0..case.samples {
            a.update(s(start + i * case.old_timeframe, Value::Float(i as f64)))
                .unwrap();
        }
        let (mut migrated, report) = a.migrate(new_shape.clone());
        assert_eq!(report.moved, case.samples, "{}", case.name);
        let dirty = migrated.take_dirty("r", "p", None);
        assert!(dirty.replace_all, "{}: old pages go", case.name);
        assert!(dirty.header.is_some(), "{}", case.name);
        let pages: Vec<u32> = dirty.pages.iter().map(|p| p.0).collect();
        assert!(
            pages.len() <= case.want_pages,
            "{}: pages {pages:?}, expected at most {}",
            case.name,
            case.want_pages
        );
        let header = codec::decode_header(dirty.header.as_ref().unwrap()).unwrap();
        let (back, errors) =
            Archive::restore(&header, dirty.pages.iter().map(|(n, b)| (*n, b.as_slice())));
        assert!(errors.is_empty(), "{}", case.name);
        let want: Vec<(u64, String)> = migrated
            .filled()
            .map(|(t, r)| (t, format!("{r:?}")))
            .collect();
        let got: Vec<(u64, String)> = back.filled().map(|(t, r)| (t, format!("{r:?}"))).collect();
        assert_eq!(got, want, "{}: restored", case.name);
        assert_eq!(
            back.newest_bucket(),
            migrated.newest_bucket(),
            "{}",
            case.name
        );
    }
}

/// `filled` walks the cells held; the model walks every bucket of the
/// window through `get`.
#[test]
fn filled_matches_every_bucket_read_across_the_ring_wrap() {
    let mut a = Archive::new(shape(
        Consolidation::Max,
        Split::Backward,
        ValueSize::Small,
        50,
    ));
    for (i, t) in [3u64, 4, 10, 49, 52, 60, 61, 70, 30].iter().enumerate() {
        let _ = a.update(s(t * 60, Value::Uint(i as u64 + 1)));
    }
    a.update(s(65 * 60, Value::Special(2))).unwrap();
    let (oldest, newest) = (a.oldest_bucket().unwrap(), a.newest_bucket().unwrap());
    let want: Vec<(u64, String)> = (oldest..=newest)
        .filter_map(|b| match a.get(b) {
            Reading::Empty => None,
            r => Some((b * 60, format!("{r:?}"))),
        })
        .collect();
    let got: Vec<(u64, String)> = a.filled().map(|(t, r)| (t, format!("{r:?}"))).collect();
    assert_eq!(got, want);
    assert!(!got.is_empty());
}

/// A save stopped by shutdown puts back exactly what it took.
#[test]
fn returned_dirty_pages_are_saved_next_time() {
    let mut a = Archive::new(shape(
        Consolidation::Sum,
        Split::Backward,
        ValueSize::Large,
        640,
    ));
    for i in 0..200u64 {
        a.update(s(i * 60, Value::Uint(i))).unwrap();
    }
    let (mut m, _) = a.migrate(shape(
        Consolidation::Sum,
        Split::Backward,
        ValueSize::Large,
        300,
    ));
    let taken = m.take_dirty("r", "p", None);
    assert!(!m.is_dirty());
    m.return_dirty(
        &shape(Consolidation::Sum, Split::Backward, ValueSize::Large, 300),
        &taken,
    );
    let again = m.take_dirty("r", "p", None);
    assert_eq!(again.header, taken.header);
    assert_eq!(again.pages, taken.pages);
    assert!(again.replace_all);
    // Taken from another shape: ignored.
    m.return_dirty(
        &shape(Consolidation::Sum, Split::Backward, ValueSize::Large, 640),
        &taken,
    );
    assert!(!m.is_dirty());
}

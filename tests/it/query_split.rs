//! A selection split in parts over a store big enough to scan them on
//! separate threads sees the same series, in the same order, as one scan,
//! and the sample limit holds for the selection as a whole.

use ringdb::query::engine::{MatchOp, Matcher, SeriesData, SharedLabels, SplitVisitor, Storage};
use ringdb::query::source::StoreSource;

/// More series than a store needs before a split runs on threads.
const N: usize = 5000;
const T0_MS: i64 = 1_700_000_100_000;

fn store() -> ringdb::store::Store {
    let store = crate::common::float_store(15, 8);
    for i in 0..N {
        let labels = vec![
            ("__name__".to_string(), "split_metric".to_string()),
            ("instance".to_string(), format!("host-{i:05}")),
        ];
        let samples: Vec<(i64, f64)> = (0..3)
            .map(|k| (T0_MS + k * 15_000, (i + k as usize) as f64))
            .collect();
        assert_eq!(crate::common::write_labelled(&store, &labels, &samples), 0);
    }
    store
}

fn matchers() -> Vec<Matcher> {
    vec![Matcher {
        name: "__name__".into(),
        op: MatchOp::Equal("split_metric".into()),
    }]
}

type Seen = Vec<(SharedLabels, Vec<(i64, f64)>)>;

/// The selection split in `parts`, each part's series in arrival order.
fn select_split(source: &StoreSource<'_>, parts: usize) -> Result<Vec<Seen>, String> {
    let mut seen: Vec<Seen> = vec![Vec::new(); parts];
    let mut visits: Vec<_> = seen
        .iter_mut()
        .map(|out| {
            |s: &SeriesData| {
                out.push((s.labels.clone(), s.samples.clone()));
                true
            }
        })
        .collect();
    let mut visitors: Vec<&mut SplitVisitor<'_>> = visits
        .iter_mut()
        .map(|v| v as &mut SplitVisitor<'_>)
        .collect();
    source.select_each_split(&matchers(), T0_MS, T0_MS + 60_000, &mut visitors)?;
    drop(visitors);
    drop(visits);
    Ok(seen)
}

#[test]
fn query_split_sees_what_one_scan_sees() {
    let store = store();
    let source = StoreSource {
        store: &store,
        grant: &ringdb::access::Grant::All,
        max_samples: usize::MAX,
    };
    let mut whole: Seen = Vec::new();
    source
        .select_each(&matchers(), T0_MS, T0_MS + 60_000, &mut |s| {
            whole.push((s.labels.clone(), s.samples.clone()));
            true
        })
        .expect("selects");
    assert_eq!(whole.len(), N);
    for parts in [1, 2, 3] {
        let seen = select_split(&source, parts).expect("selects");
        assert!(
            parts == 1 || seen.iter().all(|p| !p.is_empty()),
            "{parts} parts: every part has series"
        );
        assert_eq!(
            seen.concat(),
            whole,
            "{parts} parts: same series, same order"
        );
    }
}

#[test]
fn query_split_sample_limit_counts_every_part() {
    let store = store();
    let total = 3 * N;
    for (max_samples, ok) in [(total, true), (total - 1, false)] {
        let source = StoreSource {
            store: &store,
            grant: &ringdb::access::Grant::All,
            max_samples,
        };
        let got = select_split(&source, 2);
        assert_eq!(got.is_ok(), ok, "max_samples {max_samples}: {got:?}");
    }
}

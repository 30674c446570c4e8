//! The store seen as PromQL series (DESIGN §7): a socket path is
//! `{__name__="<prefix>", path="<path>"}`, a label set keeps its labels; a
//! bucket is a sample at the bucket's timestamp (empty buckets and specials
//! are absent); each series is read from one rule, chosen by resolution, or
//! forced by a matcher on the reserved `rule` label.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::access::Grant;
use crate::model;
use crate::query::engine::{Labels, Matcher, SeriesData, SharedLabels, SplitVisitor, Storage};
use crate::rrd::Archive;
use crate::store::{RuleArchive, Series, Store};

/// The reserved label that forces the choice of rule.
pub const RULE_LABEL: &str = "rule";

/// PromQL's view of the store for one request (its client's grant).
pub struct StoreSource<'a> {
    /// The store.
    pub store: &'a Store,
    /// What the client may read.
    pub grant: &'a Grant,
    /// Most samples one selection may load.
    pub max_samples: usize,
}

/// The labels PromQL sees for a series.
pub fn series_labels(key: &str, series: &Series) -> Labels {
    shared_labels(key, series).to_vec()
}

/// One label of a series as [`series_labels`] would give it, without
/// building the label set (empty when absent).
fn series_label<'s>(key: &'s str, series: &'s Series, name: &str) -> Cow<'s, str> {
    if series.is_label_set() {
        return series.label(key, name).unwrap_or_default();
    }
    match name {
        "__name__" => Cow::Owned(model::metric_name_of_prefix(series.prefix(key))),
        "path" => Cow::Borrowed(key),
        _ => Cow::Borrowed(""),
    }
}

/// Whether the series matches every matcher.
fn matches_all(key: &str, series: &Series, matchers: &[&Matcher]) -> bool {
    matchers
        .iter()
        .all(|m| m.matches(&series_label(key, series, &m.name)))
}

/// Splits off matchers on the reserved `rule` label.
fn split_rule(matchers: &[Matcher]) -> (Vec<&Matcher>, Vec<&Matcher>) {
    matchers.iter().partition(|m| m.name == RULE_LABEL)
}

fn oldest_ms(a: &RuleArchive) -> Option<i64> {
    a.archive
        .oldest_bucket()
        .map(|b| (b * a.rule.shape.timeframe_secs * 1000) as i64)
}

/// The archive a selection reads for this series: among the archives of the
/// same type as the prefix's first rule (or those the `rule` matchers
/// allow), the finest whose window reaches back to `earliest_ms`; if none
/// does, the one that reaches furthest back.
pub fn choose<'s>(
    series: &'s Series,
    first_rule_type: Option<crate::rrd::Consolidation>,
    forced: &[&Matcher],
    earliest_ms: i64,
) -> Option<&'s RuleArchive> {
    // Called once per series of every selection: filters, not vectors.
    let with_data = || {
        series
            .archives()
            .iter()
            .filter(|a| a.archive.newest_bucket().is_some())
    };
    let any_same_type = forced.is_empty()
        && with_data().any(|a| Some(a.rule.shape.consolidation) == first_rule_type);
    let candidate = |a: &&RuleArchive| {
        if !forced.is_empty() {
            forced.iter().all(|m| m.matches(&a.rule.name))
        } else {
            !any_same_type || Some(a.rule.shape.consolidation) == first_rule_type
        }
    };
    let covering = with_data()
        .filter(candidate)
        .filter(|a| oldest_ms(a).is_some_and(|o| o <= earliest_ms))
        .min_by_key(|a| a.rule.shape.timeframe_secs);
    covering.or_else(|| {
        with_data().filter(candidate).min_by_key(|a| {
            (
                oldest_ms(a).unwrap_or(i64::MAX),
                a.rule.shape.timeframe_secs,
            )
        })
    })
}

impl StoreSource<'_> {
    /// Series matching `matchers` (the `rule` matcher applies to the rules
    /// a series has) that may hold data in `[start_ms, end_ms]`.
    pub fn series(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<Labels> {
        let (forced, others) = split_rule(matchers);
        let mut out = Vec::new();
        self.store.scan(|key, series| {
            if !self.grant.may_read(series.prefix(key)) {
                return true;
            }
            if !matches_all(key, series, &others) {
                return true;
            }
            let overlaps = series.archives().iter().any(|a| {
                forced.iter().all(|m| m.matches(&a.rule.name))
                    && a.archive.newest_timestamp_secs().is_some_and(|n| {
                        let newest = (n * 1000) as i64;
                        newest >= start_ms && oldest_ms(a).is_some_and(|o| o <= end_ms)
                    })
            });
            if overlaps {
                out.push(series_labels(key, series));
            }
            true
        });
        out
    }
}

/// Appends the numeric buckets of `archive` whose timestamps (ms) fall in
/// `[start_ms, end_ms]` to `out`, ascending; only those buckets are visited.
fn read_samples(
    archive: &Archive,
    tf_ms: i64,
    start_ms: i64,
    end_ms: i64,
    out: &mut Vec<(i64, f64)>,
) {
    if tf_ms <= 0 || end_ms < 0 || end_ms < start_ms {
        return;
    }
    // First bucket at or after start_ms, last at or before end_ms.
    let first = if start_ms <= 0 {
        0
    } else {
        (start_ms as u64).div_ceil(tf_ms as u64)
    };
    let last = end_ms as u64 / tf_ms as u64;
    let (Some(oldest), Some(newest)) = (archive.oldest_bucket(), archive.newest_bucket()) else {
        return;
    };
    let (from, to) = (first.max(oldest), last.min(newest));
    if from > to {
        return;
    }
    out.reserve((to - from + 1) as usize);
    archive.for_each_number(from, to, |b, v| out.push(((b * tf_ms as u64) as i64, v)));
}

/// The labels a selection hands out: a label set's canonical key as it
/// is (parsed only where the engine needs strings), a socket path's made
/// from its key and prefix (DESIGN §7).
fn shared_labels(key: &str, series: &Series) -> SharedLabels {
    if series.labels_are_key() {
        return SharedLabels::Key(Arc::from(key));
    }
    match series.labels(key) {
        Some(labels) => SharedLabels::Pairs(labels),
        None => {
            let name = model::metric_name_of_prefix(series.prefix(key));
            SharedLabels::from([
                ("__name__".to_string(), name),
                ("path".to_string(), key.to_string()),
            ])
        }
    }
}

impl Storage for StoreSource<'_> {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesData>, String> {
        let mut out = Vec::new();
        self.select_each(matchers, start_ms, end_ms, &mut |s| {
            out.push(s.clone());
            true
        })?;
        Ok(out)
    }

    fn select_each(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        f: &mut dyn FnMut(&SeriesData) -> bool,
    ) -> Result<(), String> {
        let selection = Selection::new(matchers, start_ms, end_ms);
        let stop = AtomicBool::new(false);
        let loaded = self.select_shards(&selection, 0..self.store.shard_count(), &stop, f);
        self.check_loaded(loaded)
    }

    fn select_each_split(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        visitors: &mut [&mut SplitVisitor<'_>],
    ) -> Result<(), String> {
        let selection = Selection::new(matchers, start_ms, end_ms);
        let stop = AtomicBool::new(false);
        let (n_shards, n_parts) = (self.store.shard_count(), visitors.len());
        let shards = |part: usize| part * n_shards / n_parts..(part + 1) * n_shards / n_parts;
        let mut parts = visitors.iter_mut().enumerate();
        let loaded = if n_parts < 2 || self.store.stats().series < SPLIT_MIN_SERIES {
            parts
                .map(|(part, f)| self.select_shards(&selection, shards(part), &stop, &mut **f))
                .sum()
        } else {
            std::thread::scope(|scope| {
                let (selection, stop) = (&selection, &stop);
                let first = parts.next();
                let spawned: Vec<_> = parts
                    .map(|(part, f)| {
                        scope.spawn(move || {
                            self.select_shards(selection, shards(part), stop, &mut **f)
                        })
                    })
                    .collect();
                let mut loaded = first.map_or(0, |(part, f)| {
                    self.select_shards(selection, shards(part), stop, &mut **f)
                });
                for handle in spawned {
                    loaded += handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                }
                loaded
            })
        };
        self.check_loaded(loaded)
    }
}

/// Stores with fewer series than this are scanned on the calling thread
/// even when asked for a split: starting a thread would cost more than
/// the second core saves.
const SPLIT_MIN_SERIES: u64 = 4096;

/// One selection's matchers and time range.
struct Selection<'m> {
    /// Matchers on the reserved `rule` label.
    forced: Vec<&'m Matcher>,
    /// The other matchers.
    others: Vec<&'m Matcher>,
    start_ms: i64,
    end_ms: i64,
}

impl<'m> Selection<'m> {
    fn new(matchers: &'m [Matcher], start_ms: i64, end_ms: i64) -> Selection<'m> {
        let (forced, others) = split_rule(matchers);
        Selection {
            forced,
            others,
            start_ms,
            end_ms,
        }
    }
}

impl StoreSource<'_> {
    /// Hands each matching series in `shards` to `f`, until `f` returns
    /// false, `stop` is set, or more than `max_samples` are loaded (then
    /// sets `stop`). Returns the number of samples loaded.
    ///
    /// Shard by shard: under the shard's read lock only the matching
    /// series' labels and samples are copied out; `f` (the evaluation)
    /// runs after the lock is released, so writers to that shard wait for
    /// a copy, never for a query's computation. One shard's copy is held
    /// at a time, and its sample buffers are reused for the next shard.
    fn select_shards(
        &self,
        selection: &Selection<'_>,
        shards: std::ops::Range<usize>,
        stop: &AtomicBool,
        f: &mut dyn FnMut(&SeriesData) -> bool,
    ) -> usize {
        let (forced, others) = (&selection.forced, &selection.others);
        let (start_ms, end_ms) = (selection.start_ms, selection.end_ms);
        let rules = self.store.rules();
        // The first rule's type, for the last prefix seen (series of one
        // metric share it).
        let mut first_type: Option<(String, Option<crate::rrd::Consolidation>)> = None;
        let mut batch: Vec<SeriesData> = Vec::new();
        let mut spare: Vec<Vec<(i64, f64)>> = Vec::new();
        let mut loaded = 0usize;
        for shard in shards {
            let mut over = false;
            self.store.scan_shards(shard..shard + 1, |key, series| {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                if !self.grant.may_read(series.prefix(key)) {
                    return true;
                }
                if !matches_all(key, series, others) {
                    return true;
                }
                let prefix = series.prefix(key);
                let first_type = match &first_type {
                    Some((p, t)) if p == prefix => *t,
                    _ => {
                        let t = rules
                            .for_prefix(prefix)
                            .first()
                            .map(|r| r.shape.consolidation);
                        first_type = Some((prefix.to_string(), t));
                        t
                    }
                };
                let Some(chosen) = choose(series, first_type, forced, start_ms) else {
                    return true;
                };
                let tf_ms = (chosen.rule.shape.timeframe_secs * 1000) as i64;
                let mut samples = spare.pop().unwrap_or_default();
                read_samples(&chosen.archive, tf_ms, start_ms, end_ms, &mut samples);
                loaded += samples.len();
                if loaded > self.max_samples {
                    stop.store(true, Ordering::Relaxed);
                    over = true;
                    return false;
                }
                batch.push(SeriesData {
                    labels: shared_labels(key, series),
                    samples,
                    resolution_ms: Some(tf_ms),
                });
                true
            });
            // The shard's lock is released: compute.
            for mut data in batch.drain(..) {
                if !over && !stop.load(Ordering::Relaxed) && !f(&data) {
                    stop.store(true, Ordering::Relaxed);
                }
                data.samples.clear();
                spare.push(data.samples);
            }
            if over || stop.load(Ordering::Relaxed) {
                break;
            }
        }
        loaded
    }

    /// The selection's error when it loaded more than `max_samples`.
    fn check_loaded(&self, loaded: usize) -> Result<(), String> {
        if loaded > self.max_samples {
            return Err(
                "query processing would load too many samples into memory in query execution"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Sample, Value};
    use crate::rrd::{Consolidation, Shape, Split, ValueSize};
    use crate::rules::{Rule, RuleSet};
    use crate::store::StoreLimits;
    use std::sync::mpsc;
    use std::time::Duration;

    const NOW_MS: u64 = 1_700_000_000_000;

    fn store() -> Store {
        let rule = Rule {
            name: "t".into(),
            prefix: "traffic".into(),
            shape: Shape {
                consolidation: Consolidation::Last,
                timeframe_secs: 60,
                limit: 100,
                split: Split::Backward,
                value_size: ValueSize::Float,
                specials: vec![],
            },
            autoremove: false,
        };
        Store::new(
            RuleSet::new(vec![rule]),
            StoreLimits {
                max_future_ms: 600_000,
                max_series: 1000,
            },
        )
    }

    fn sample(ts_ms: u64, v: f64) -> Sample {
        Sample {
            timestamp_ms: ts_ms,
            value: Value::Float(v),
        }
    }

    /// Issue 14: a selection used to call its visitor (the evaluation)
    /// under the shard's read guard, so a write to that shard waited for
    /// the whole computation. Here the visitor itself waits for a write to
    /// the series it is looking at: with the guard held, the write could
    /// not finish (the 10 s wait is only a deadlock guard).
    #[test]
    fn visitor_runs_without_the_shard_lock() {
        let store = store();
        for (i, key) in ["traffic-a", "traffic-b", "traffic-c"].iter().enumerate() {
            let written = store.write(key, "traffic", sample(NOW_MS - 60_000, i as f64), NOW_MS);
            assert_eq!(written, Ok(1), "{key}");
        }
        let source = StoreSource {
            store: &store,
            grant: &Grant::All,
            max_samples: usize::MAX,
        };
        let (mut visited, mut written) = (0, 0);
        std::thread::scope(|scope| {
            source
                .select_each(&[], 0, NOW_MS as i64, &mut |data| {
                    visited += 1;
                    let key = data
                        .labels
                        .to_vec()
                        .into_iter()
                        .find(|(k, _)| k == "path")
                        .map(|(_, v)| v)
                        .expect("a path series");
                    let (done, wait) = mpsc::channel();
                    let store = &store;
                    scope.spawn(move || {
                        let r = store.write(&key, "traffic", sample(NOW_MS, 1.0), NOW_MS);
                        let _ = done.send(r);
                    });
                    match wait.recv_timeout(Duration::from_secs(10)) {
                        Ok(r) => {
                            assert_eq!(r, Ok(1));
                            written += 1;
                            true
                        }
                        // Stop: the writer finishes once the guard goes.
                        Err(_) => false,
                    }
                })
                .expect("selection runs");
        });
        assert_eq!(
            (visited, written),
            (3, 3),
            "writes finished during the visit"
        );
    }
}

//! The store seen as PromQL series (DESIGN §7): a socket path is
//! `{__name__="<prefix>", path="<path>"}`, a label set keeps its labels; a
//! bucket is a sample at the bucket's timestamp (empty buckets and specials
//! are absent); each series is read from one rule, chosen by resolution, or
//! forced by a matcher on the reserved `rule` label.

use crate::access::Grant;
use crate::model;
use crate::query::engine::{Labels, Matcher, SeriesData, Storage};
use crate::rrd::Reading;
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
    match series.labels() {
        Some(labels) => labels.to_vec(),
        None => vec![
            (
                "__name__".to_string(),
                model::metric_name_of_prefix(series.prefix()),
            ),
            ("path".to_string(), key.to_string()),
        ],
    }
}

fn label_value<'l>(labels: &'l Labels, name: &str) -> &'l str {
    labels
        .iter()
        .find(|(n, _)| n == name)
        .map_or("", |(_, v)| v.as_str())
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
    let with_data = series
        .archives()
        .iter()
        .filter(|a| a.archive.newest_bucket().is_some());
    let candidates: Vec<&RuleArchive> = if forced.is_empty() {
        let all: Vec<&RuleArchive> = with_data.collect();
        let same_type: Vec<&RuleArchive> = all
            .iter()
            .copied()
            .filter(|a| Some(a.rule.shape.consolidation) == first_rule_type)
            .collect();
        if same_type.is_empty() {
            all
        } else {
            same_type
        }
    } else {
        with_data
            .filter(|a| forced.iter().all(|m| m.matches(&a.rule.name)))
            .collect()
    };
    let covering = candidates
        .iter()
        .copied()
        .filter(|a| oldest_ms(a).is_some_and(|o| o <= earliest_ms))
        .min_by_key(|a| a.rule.shape.timeframe_secs);
    covering.or_else(|| {
        candidates.iter().copied().min_by_key(|a| {
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
            if !self.grant.may_read(series.prefix()) {
                return true;
            }
            let labels = series_labels(key, series);
            if !others
                .iter()
                .all(|m| m.matches(label_value(&labels, &m.name)))
            {
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
                out.push(labels);
            }
            true
        });
        out
    }
}

impl Storage for StoreSource<'_> {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesData>, String> {
        let (forced, others) = split_rule(matchers);
        let rules = self.store.rules();
        let mut out = Vec::new();
        let mut loaded = 0usize;
        let mut over = false;
        self.store.scan(|key, series| {
            if !self.grant.may_read(series.prefix()) {
                return true;
            }
            let labels = series_labels(key, series);
            if !others
                .iter()
                .all(|m| m.matches(label_value(&labels, &m.name)))
            {
                return true;
            }
            let first_type = rules
                .for_prefix(series.prefix())
                .first()
                .map(|r| r.shape.consolidation);
            let Some(chosen) = choose(series, first_type, &forced, start_ms) else {
                return true;
            };
            let tf_ms = (chosen.rule.shape.timeframe_secs * 1000) as i64;
            let samples: Vec<(i64, f64)> = chosen
                .archive
                .filled()
                .map(|(secs, r)| ((secs * 1000) as i64, r))
                .filter(|(t, _)| *t >= start_ms && *t <= end_ms)
                .filter_map(|(t, r)| match r {
                    Reading::Uint(_) | Reading::Float(_) => r.as_f64().map(|v| (t, v)),
                    _ => None,
                })
                .collect();
            loaded += samples.len();
            if loaded > self.max_samples {
                over = true;
                return false;
            }
            out.push(SeriesData {
                labels,
                samples,
                resolution_ms: Some(tf_ms),
            });
            true
        });
        if over {
            return Err(
                "query processing would load too many samples into memory in query execution"
                    .into(),
            );
        }
        Ok(out)
    }
}

//! Prometheus remote_write 1.0 ingest (DESIGN §5), the only prost and snap
//! user: snappy block + protobuf `WriteRequest` in, label sets validated and
//! written to the store series by series, an honest status code out.

pub mod handler;
mod wire;

use crate::access::Grant;
use crate::model::{self, Sample, Value};
use crate::store::{MetadataSkip, MetricMetadata, SeriesId, Store, WriteReject};
use prost::Message;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};

/// The messages of proto/remote.proto and proto/types.proto.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/prometheus.rs"));
}

/// Per-series label limits.
#[derive(Debug, Clone, Copy)]
pub struct LabelLimits {
    /// Most labels per series, `__name__` included.
    pub max_labels: usize,
    /// Longest label name in bytes.
    pub max_name_bytes: usize,
    /// Longest label value in bytes.
    pub max_value_bytes: usize,
}

impl Default for LabelLimits {
    fn default() -> Self {
        LabelLimits {
            max_labels: 64,
            max_name_bytes: 256,
            max_value_bytes: 4096,
        }
    }
}

/// A body that cannot be decoded at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The snappy header declares more than the cap.
    #[error("decompressed body of {declared} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// Declared decompressed length.
        declared: usize,
        /// The cap.
        max: usize,
    },
    /// Not snappy block format.
    #[error("body is not snappy block-compressed: {0}")]
    Snappy(String),
    /// Not a WriteRequest.
    #[error("body is not a protobuf WriteRequest: {0}")]
    Protobuf(String),
}

impl DecodeError {
    /// Label value used in self-metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Snappy(_) => "bad_snappy",
            DecodeError::Protobuf(_) => "bad_protobuf",
        }
    }
}

/// Decompresses a body, checking the declared decompressed length against
/// `max_bytes` before allocating.
///
/// # Errors
/// [`DecodeError`] saying what was expected.
pub fn decompress(body: &[u8], max_bytes: usize) -> Result<Vec<u8>, DecodeError> {
    let declared =
        snap::raw::decompress_len(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
    if declared > max_bytes {
        return Err(DecodeError::TooLarge {
            declared,
            max: max_bytes,
        });
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| DecodeError::Snappy(e.to_string()))
}

/// A label (for tests, load generators and agents written in Rust).
pub fn label(name: &str, value: &str) -> proto::Label {
    proto::Label {
        name: bytes::Bytes::copy_from_slice(name.as_bytes()),
        value: bytes::Bytes::copy_from_slice(value.as_bytes()),
    }
}

/// Encodes a request as a remote_write body (for tests, load generators and
/// agents written in Rust).
pub fn encode(request: &proto::WriteRequest) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .expect("snappy compression of an in-memory buffer cannot fail")
}

/// What one request did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Samples stored in at least one archive.
    pub accepted: u64,
    /// Stale markers (accepted, not stored).
    pub stale_markers: u64,
    /// Refused samples by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Exemplars skipped.
    pub exemplars: u64,
    /// Native histogram samples skipped.
    pub histograms: u64,
    /// Metadata entries received.
    pub metadata: u64,
    /// Metadata entries not kept, by reason.
    pub metadata_skipped: BTreeMap<&'static str, u64>,
}

impl Report {
    /// Samples refused, all reasons.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    fn reject(&mut self, reason: &'static str, n: u64) {
        if n > 0 {
            *self.rejected.entry(reason).or_default() += n;
        }
    }
}

/// The labels of a series sorted by name: borrowed when the sender sorted
/// them (Prometheus does), else a sorted copy. vmagent relays label sets in
/// the order it received them, and Prometheus's own receiver accepts that,
/// so the order is repaired here rather than refused.
fn sorted_labels<'r, 'a>(labels: &'r [(&'a [u8], &'a [u8])]) -> Cow<'r, [(&'a [u8], &'a [u8])]> {
    if labels.windows(2).all(|w| w[0].0 <= w[1].0) {
        Cow::Borrowed(labels)
    } else {
        let mut sorted = labels.to_vec();
        // Stable: duplicate names stay next to each other for `check_labels`.
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        Cow::Owned(sorted)
    }
}

/// The `limits:` key behind a refusal reason, for the 400 answer's text.
pub fn limit_of(reason: &str) -> Option<&'static str> {
    Some(match reason {
        "too_many_labels" => "limits.max_labels_per_series",
        "label_too_long" => "limits.max_label_name_bytes, limits.max_label_value_bytes",
        "series_key_too_long" => "limits.max_series_key_bytes",
        "too_many_series_bytes" => "limits.max_series_key_bytes_total",
        "too_many_series" => "limits.max_series",
        "too_far_future" => "limits.max_future",
        _ => return None,
    })
}

/// Why a whole series was refused; `labels` sorted by name
/// ([`sorted_labels`]).
fn check_labels(labels: &[(&[u8], &[u8])], limits: &LabelLimits) -> Result<(), &'static str> {
    if labels.len() > limits.max_labels {
        return Err("too_many_labels");
    }
    let mut previous: Option<&[u8]> = None;
    let mut name_seen = false;
    for &(name, value) in labels {
        let (Ok(name_text), Ok(value_text)) =
            (std::str::from_utf8(name), std::str::from_utf8(value))
        else {
            return Err("bad_utf8");
        };
        if name.len() > limits.max_name_bytes || value.len() > limits.max_value_bytes {
            return Err("label_too_long");
        }
        if !model::is_label_name(name_text) {
            return Err("invalid_label_name");
        }
        if value.is_empty() {
            return Err("empty_label_value");
        }
        if previous == Some(name) {
            return Err("duplicate_label");
        }
        if name_text == "__name__" {
            name_seen = true;
            if !model::is_metric_name(value_text) {
                return Err("invalid_metric_name");
            }
        }
        previous = Some(name);
    }
    if name_seen {
        Ok(())
    } else {
        Err("missing_metric_name")
    }
}

fn text(bytes: &[u8]) -> &str {
    // Checked by `check_labels` before any caller gets here.
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// Series keys of label sets seen before, found by a 128-bit seeded hash of
/// their label bytes, so that a known series is written without checking,
/// decoding or formatting its labels again. Each shard is emptied when it
/// reaches its share of the capacity.
pub struct KnownSeries {
    shards: Box<[KnownShard]>,
    seeds: [foldhash::fast::RandomState; 2],
    per_shard: usize,
}

const KNOWN_SHARDS: usize = 64;
type KnownTable = hashbrown::HashTable<(u128, Arc<str>)>;
type KnownShard = Mutex<KnownTable>;

impl KnownSeries {
    /// Remembers up to about `capacity` label sets.
    pub fn new(capacity: usize) -> KnownSeries {
        KnownSeries {
            shards: (0..KNOWN_SHARDS).map(|_| Mutex::default()).collect(),
            seeds: Default::default(),
            per_shard: capacity.div_ceil(KNOWN_SHARDS).max(1),
        }
    }

    fn hash(&self, labels: &[(&[u8], &[u8])]) -> u128 {
        let [a, b] = self.seeds.each_ref().map(|seed| {
            let mut h = seed.build_hasher();
            for (name, value) in labels {
                h.write_usize(name.len());
                h.write(name);
                h.write_usize(value.len());
                h.write(value);
            }
            h.finish()
        });
        (u128::from(a) << 64) | u128::from(b)
    }

    fn shard_index(hash: u128) -> usize {
        (hash >> 64) as usize % KNOWN_SHARDS
    }

    fn shard(&self, hash: u128) -> std::sync::MutexGuard<'_, KnownTable> {
        self.shards[Self::shard_index(hash)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The keys of these label hashes, where known, in their order. Looked
    /// up shard by shard, so each shard's lock is taken once.
    fn get_all(&self, hashes: &[u128]) -> Vec<Option<Arc<str>>> {
        let mut order: Vec<usize> = (0..hashes.len()).collect();
        order.sort_unstable_by_key(|&i| Self::shard_index(hashes[i]));
        let mut keys = vec![None; hashes.len()];
        let same_shard =
            |a: &usize, b: &usize| Self::shard_index(hashes[*a]) == Self::shard_index(hashes[*b]);
        for group in order.chunk_by(same_shard) {
            let shard = self.shard(hashes[group[0]]);
            for &i in group {
                let hash = hashes[i];
                keys[i] = shard
                    .find(hash as u64, |(h, _)| *h == hash)
                    .map(|(_, key)| key.clone());
            }
        }
        keys
    }

    fn insert(&self, hash: u128, key: Arc<str>) {
        let mut shard = self.shard(hash);
        if shard.len() >= self.per_shard {
            shard.clear();
        }
        shard.insert_unique(hash as u64, (hash, key), |(h, _)| *h as u64);
    }
}

/// Checks a decompressed `WriteRequest` whole, then writes every valid
/// series into the store.
///
/// # Errors
/// [`DecodeError::Protobuf`] when the body is not a `WriteRequest`; nothing
/// of it is stored then.
pub fn ingest(
    store: &Store,
    known: &KnownSeries,
    raw: &[u8],
    grant: &Grant,
    limits: &LabelLimits,
    now_ms: u64,
) -> Result<Report, DecodeError> {
    let request = wire::Request::parse(raw).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    let mut report = Report {
        metadata: request.metadata.len() as u64,
        ..Report::default()
    };
    for m in &request.metadata {
        let family = m.metric_family_name.as_str();
        if !model::is_metric_name(family) {
            *report
                .metadata_skipped
                .entry("invalid_metric_name")
                .or_default() += 1;
            continue;
        }
        // Only a client that may write the family may describe it: another
        // tenant's help and type are not anyone's to overwrite.
        let kept = if may_write_family(grant, family) {
            let kind = proto::metric_metadata::MetricType::try_from(m.r#type)
                .map_or("unknown", |t| t.as_str_name())
                .to_ascii_lowercase();
            store.set_metadata(
                family,
                MetricMetadata {
                    kind,
                    help: m.help.clone(),
                    unit: m.unit.clone(),
                },
            )
        } else {
            Err(MetadataSkip::Forbidden)
        };
        if let Err(skip) = kept {
            *report.metadata_skipped.entry(skip.as_str()).or_default() += 1;
        }
    }
    // Checked series first, then written grouped by store shard: each
    // shard's lock is taken once per request instead of once per series
    // (a series sent twice keeps its order).
    let writer = store.writer();
    let mut samples: Vec<Sample> = Vec::new();
    let mut pending: Vec<Pending<'_>> = Vec::new();
    let all: Vec<_> = request.series().collect();
    let hashes: Vec<u128> = all.iter().map(|s| known.hash(s.labels)).collect();
    let keys = known.get_all(&hashes);
    for ((series, hash), key) in all.iter().zip(hashes).zip(keys) {
        report.exemplars += series.exemplars;
        report.histograms += series.histograms;
        if series.samples.is_empty() {
            continue;
        }
        let n = series.samples.len() as u64;
        // Read before the labels are checked; used only once they are.
        let name = metric_name(series.labels);
        // A label set in another order is another cache entry for the same
        // canonical key.
        let key = match key {
            Some(key) => key,
            None => {
                let sorted = sorted_labels(series.labels);
                if let Err(reason) = check_labels(&sorted, limits) {
                    report.reject(reason, n);
                    continue;
                }
                let key: Arc<str> = series_key(name, &sorted).into();
                known.insert(hash, key.clone());
                key
            }
        };
        if !grant.may_write(name) {
            report.reject(WriteReject::Forbidden.as_str(), n);
            continue;
        }
        let first = samples.len();
        let mut negative = 0;
        for &(timestamp, value) in series.samples {
            match u64::try_from(timestamp) {
                Ok(timestamp_ms) => samples.push(Sample {
                    timestamp_ms,
                    value: Value::Float(value),
                }),
                Err(_) => negative += 1,
            }
        }
        report.reject(
            WriteReject::Archive(crate::rrd::Reject::TooOld).as_str(),
            negative,
        );
        pending.push(Pending {
            key,
            name,
            labels: series.labels,
            samples: first..samples.len(),
        });
    }
    writer.write_grouped(&pending, |p| &p.key, |shard, p| {
        // Only for a new series; sorted, as the store keeps them.
        let make_labels = || {
            let mut labels: Vec<_> = p
                .labels
                .iter()
                .map(|(name, value)| (text(name).to_owned(), text(value).to_owned()))
                .collect();
            labels.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            labels
        };
        let id = SeriesId {
            key: &p.key,
            shared: Some(&p.key),
            prefix: p.name,
            labels: Some(&make_labels),
        };
        let written = &samples[p.samples.clone()];
        let mut i = 0;
        shard.write_batch(&id, written, now_ms, |outcome| {
            match outcome {
                Ok(_) if matches!(written[i].value, Value::Float(v) if crate::rrd::is_stale_marker(v)) => {
                    report.stale_markers += 1
                }
                Ok(_) => report.accepted += 1,
                Err(reason) => report.reject(reason.as_str(), 1),
            }
            i += 1;
        });
    });
    Ok(report)
}

/// Whether the client may write a metric family: its name, or one of the
/// series names Prometheus derives from it (a histogram `x` is written as
/// `x_bucket`, `x_sum`, `x_count`).
fn may_write_family(grant: &Grant, family: &str) -> bool {
    const SUFFIXES: [&str; 6] = ["", "_bucket", "_sum", "_count", "_total", "_created"];
    SUFFIXES.iter().any(|suffix| {
        if suffix.is_empty() {
            grant.may_write(family)
        } else {
            grant.may_write(&format!("{family}{suffix}"))
        }
    })
}

/// A checked series of a request, waiting to be written.
struct Pending<'r> {
    key: Arc<str>,
    name: &'r str,
    labels: &'r [(&'r [u8], &'r [u8])],
    /// Its samples in the request's flat list.
    samples: std::ops::Range<usize>,
}

/// The value of `__name__` ("" when missing or not UTF-8).
fn metric_name<'a>(labels: &[(&'a [u8], &'a [u8])]) -> &'a str {
    labels
        .iter()
        .find(|(name, _)| *name == b"__name__")
        .map_or("", |(_, value)| text(value))
}

/// The canonical `name{a="b",...}` key of checked labels.
fn series_key(name: &str, labels: &[(&[u8], &[u8])]) -> String {
    let others = labels
        .iter()
        .filter(|(name, _)| *name != b"__name__")
        .map(|(name, value)| (text(name), text(value)));
    model::series_key(name, others)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_checks() {
        let limits = LabelLimits::default();
        let cases: Vec<(&str, Vec<proto::Label>, Result<(), &str>)> = vec![
            (
                "valid",
                vec![label("__name__", "up"), label("job", "x")],
                Ok(()),
            ),
            (
                "no name",
                vec![label("job", "x")],
                Err("missing_metric_name"),
            ),
            (
                "bad metric name",
                vec![label("__name__", "1up")],
                Err("invalid_metric_name"),
            ),
            (
                "bad label name",
                vec![label("__name__", "up"), label("a-b", "x")],
                Err("invalid_label_name"),
            ),
            (
                "unsorted is repaired",
                vec![label("z", "1"), label("__name__", "up"), label("a", "1")],
                Ok(()),
            ),
            (
                "duplicate",
                vec![label("__name__", "up"), label("a", "1"), label("a", "2")],
                Err("duplicate_label"),
            ),
            (
                "duplicate apart in an unsorted set",
                vec![label("a", "1"), label("__name__", "up"), label("a", "2")],
                Err("duplicate_label"),
            ),
            (
                "empty value",
                vec![label("__name__", "up"), label("a", "")],
                Err("empty_label_value"),
            ),
            (
                "bad utf-8",
                vec![
                    label("__name__", "up"),
                    proto::Label {
                        name: bytes::Bytes::from_static(b"a"),
                        value: bytes::Bytes::from_static(&[0xff]),
                    },
                ],
                Err("bad_utf8"),
            ),
            (
                "too long",
                vec![label("__name__", "up"), label("a", &"x".repeat(4097))],
                Err("label_too_long"),
            ),
        ];
        for (name, labels, want) in cases {
            let pairs: Vec<(&[u8], &[u8])> = labels
                .iter()
                .map(|l| (l.name.as_ref(), l.value.as_ref()))
                .collect();
            assert_eq!(
                check_labels(&sorted_labels(&pairs), &limits),
                want,
                "case {name}"
            );
        }
    }

    fn float_store() -> Store {
        use crate::rrd::{Consolidation, Shape, Split, ValueSize};
        let rule = crate::rules::Rule {
            name: "raw".into(),
            prefix: "*".into(),
            shape: Shape {
                consolidation: Consolidation::Last,
                timeframe_secs: 1,
                limit: 100,
                split: Split::Backward,
                value_size: ValueSize::Float,
                specials: vec![],
            },
            autoremove: false,
        };
        Store::new(
            crate::rules::RuleSet::new(vec![rule]),
            crate::store::StoreLimits {
                max_future_ms: 600_000,
                max_series: 100,
            },
        )
    }

    fn one_series(labels: &[(&str, &str)], t_ms: i64) -> Vec<u8> {
        proto::WriteRequest {
            timeseries: vec![proto::TimeSeries {
                labels: labels.iter().map(|(n, v)| label(n, v)).collect(),
                samples: vec![proto::Sample {
                    value: 1.0,
                    timestamp: t_ms,
                }],
                ..Default::default()
            }],
            metadata: vec![],
        }
        .encode_to_vec()
    }

    #[test]
    fn known_series_are_recreated_after_removal_and_bad_ones_never_known() {
        let store = float_store();
        let known = KnownSeries::new(2);
        let now = 1_700_000_000_000;
        let write = |labels: &[(&str, &str)], t: u64, grant: &Grant| {
            let body = one_series(labels, t as i64);
            ingest(&store, &known, &body, grant, &LabelLimits::default(), now).unwrap()
        };
        let good = [("__name__", "up"), ("job", "a")];
        for (i, t) in [now - 3000, now - 2000].into_iter().enumerate() {
            assert_eq!(write(&good, t, &Grant::All).accepted, 1, "write {i}");
        }
        let key = r#"up{job="a"}"#;
        assert!(store.remove(key));
        assert_eq!(write(&good, now - 1000, &Grant::All).accepted, 1);
        let labels = store.read(key, |s| s.labels(key).map(|l| l.to_vec()));
        let labels = labels.flatten().expect("series recreated with labels");
        assert_eq!(labels.len(), 2, "labels rebuilt from the request");
        let bad = [("__name__", "up"), ("a", "1"), ("a", "2")];
        for _ in 0..2 {
            let report = write(&bad, now, &Grant::All);
            assert_eq!(report.rejected.get("duplicate_label"), Some(&1));
        }
        // More label sets than the capacity: shards are emptied, writes go on.
        for i in 0..50 {
            let job = format!("j{i}");
            let labels = [("__name__", "up"), ("job", job.as_str())];
            assert_eq!(write(&labels, now, &Grant::All).accepted, 1);
        }
        let forbidden = Grant::Limited(Arc::new(crate::access::ClientSettings {
            name: "agent".into(),
            write: vec!["other".into()],
            read: vec![],
            admin: false,
        }));
        let report = write(&good, now, &forbidden);
        assert_eq!(
            report.rejected.get("forbidden"),
            Some(&1),
            "grant checked for known series"
        );
    }

    #[test]
    fn unsorted_label_sets_are_the_same_series_as_sorted_ones() {
        let store = float_store();
        let known = KnownSeries::new(100);
        let now = 1_700_000_000_000u64;
        let orders: [(&str, &[(&str, &str)]); 4] = [
            ("sorted", &[("__name__", "up"), ("a", "1"), ("z", "2")]),
            ("name last", &[("a", "1"), ("z", "2"), ("__name__", "up")]),
            ("reversed", &[("z", "2"), ("a", "1"), ("__name__", "up")]),
            // Sent again: now found in the known-series cache.
            (
                "reversed, cached",
                &[("z", "2"), ("a", "1"), ("__name__", "up")],
            ),
        ];
        for (i, (case, labels)) in orders.iter().enumerate() {
            let body = one_series(labels, (now - 4000 + 1000 * i as u64) as i64);
            let report = ingest(
                &store,
                &known,
                &body,
                &Grant::All,
                &LabelLimits::default(),
                now,
            )
            .unwrap();
            assert_eq!(report.accepted, 1, "case {case}: {report:?}");
        }
        assert_eq!(store.stats().series, 1, "one canonical series");
        let key = r#"up{a="1",z="2"}"#;
        let (labels, is_key) = store
            .read(key, |s| {
                (s.labels(key).map(|l| l.to_vec()), s.labels_are_key())
            })
            .expect("canonical series");
        assert!(is_key, "labels kept as the canonical key");
        let names: Vec<_> = labels.unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["__name__", "a", "z"]);
        // Removed, then recreated from the cache with unsorted wire labels.
        assert!(store.remove(key));
        let body = one_series(orders[2].1, now as i64);
        ingest(
            &store,
            &known,
            &body,
            &Grant::All,
            &LabelLimits::default(),
            now,
        )
        .unwrap();
        let is_key = store.read(key, |s| s.labels_are_key());
        assert_eq!(is_key, Some(true), "recreated in canonical form");
    }

    #[test]
    fn metadata_is_kept_only_for_families_the_client_may_write() {
        use proto::metric_metadata::MetricType;
        let store = float_store().with_size_limits(crate::store::SizeLimits {
            max_help_bytes: 10,
            ..Default::default()
        });
        let known = KnownSeries::new(10);
        let meta = |family: &str, help: &str| proto::MetricMetadata {
            r#type: MetricType::Gauge as i32,
            metric_family_name: family.into(),
            help: help.into(),
            unit: String::new(),
        };
        let agent = Grant::Limited(Arc::new(crate::access::ClientSettings {
            name: "agent".into(),
            write: vec!["traffic".into(), "latency_bucket".into()],
            read: vec![],
            admin: false,
        }));
        type Case<'a> = (&'a str, &'a Grant, proto::MetricMetadata, Option<&'a str>);
        let cases: Vec<Case> = vec![
            ("own family", &agent, meta("traffic", "bytes seen"), None),
            (
                "histogram family of own _bucket",
                &agent,
                meta("latency", "h"),
                None,
            ),
            (
                "another tenant's family",
                &agent,
                meta("up", "overwritten"),
                Some("forbidden"),
            ),
            (
                "unlisted certificate",
                &Grant::Nothing,
                meta("traffic", "evil"),
                Some("forbidden"),
            ),
            (
                "bad family name",
                &Grant::All,
                meta("1x", "h"),
                Some("invalid_metric_name"),
            ),
            (
                "operator",
                &Grant::All,
                meta("up", "1234567890 and more"),
                None,
            ),
        ];
        for (case, grant, m, skipped) in cases {
            let body = proto::WriteRequest {
                timeseries: vec![],
                metadata: vec![m],
            }
            .encode_to_vec();
            let report = ingest(&store, &known, &body, grant, &LabelLimits::default(), 0).unwrap();
            let want: BTreeMap<&str, u64> = skipped.into_iter().map(|r| (r, 1)).collect();
            assert_eq!(report.metadata_skipped, want, "case {case}");
        }
        let kept: BTreeMap<String, String> = store
            .metadata()
            .into_iter()
            .map(|(family, m)| (family, m.help))
            .collect();
        let want: BTreeMap<String, String> = [
            ("latency", "h"),
            ("traffic", "bytes seen"),
            ("up", "1234567890"),
        ]
        .into_iter()
        .map(|(f, h)| (f.to_string(), h.to_string()))
        .collect();
        assert_eq!(
            kept, want,
            "nothing overwritten by others; help cut to 10 bytes"
        );
    }

    #[test]
    fn series_spread_over_shards_are_all_written_and_a_repeat_keeps_its_order() {
        let store = float_store();
        let known = KnownSeries::new(1000);
        let now: i64 = 1_700_000_000_000;
        let series = |job: &str, value: f64| proto::TimeSeries {
            labels: vec![label("__name__", "up"), label("job", job)],
            samples: vec![proto::Sample {
                value,
                timestamp: now - 1000,
            }],
            ..Default::default()
        };
        // Sent first, then 60 others (over many shards), then again: the
        // same bucket, so the archive (last) keeps the value sent last.
        let mut timeseries = vec![series("twice", 1.0)];
        timeseries.extend((0..60).map(|i| series(&format!("j{i}"), f64::from(i))));
        timeseries.push(series("twice", 2.0));
        let body = proto::WriteRequest {
            timeseries,
            metadata: vec![],
        }
        .encode_to_vec();
        let report = ingest(
            &store,
            &known,
            &body,
            &Grant::All,
            &LabelLimits::default(),
            now as u64,
        )
        .unwrap();
        assert_eq!(report.accepted, 62);
        let bucket = (now as u64 - 1000) / 1000;
        let value = |job: &str| {
            store
                .read(&format!(r#"up{{job="{job}"}}"#), |s| {
                    s.archive("raw").and_then(|a| a.get(bucket).as_f64())
                })
                .flatten()
        };
        assert_eq!(value("twice"), Some(2.0), "the repeat was written last");
        for i in 0..60 {
            assert_eq!(value(&format!("j{i}")), Some(f64::from(i)), "series j{i}");
        }
    }

    #[test]
    fn declared_length_is_checked_before_decompressing() {
        let body = encode(&proto::WriteRequest {
            timeseries: vec![proto::TimeSeries {
                labels: vec![label("__name__", &"x".repeat(200))],
                ..Default::default()
            }],
            metadata: vec![],
        });
        assert!(matches!(
            decompress(&body, 100),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(decompress(&body, 1000).is_ok());
        assert!(matches!(
            decompress(b"\xff\xff\xff\xff\xff\xff", 1000),
            Err(DecodeError::Snappy(_))
        ));
    }
}

//! The series map: series sharded by hash, each holding one [`Archive`] per
//! rule that matches its prefix; fan-out of writes, read access for queries,
//! dirty tracking for the snapshot flusher.
//!
//! Sync: std locks held briefly (never two shard locks at once, never across
//! I/O), atomics for counters. The clock is a parameter. It must never import
//! tokio, hyper, rustls or sled.

use crate::model::{self, Sample, TimestampMs, Value};
use crate::rrd::codec::Dirty;
use crate::rrd::{self, Archive, Reject};
use crate::rules::{Rule, RuleSet};
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::ops::DerefMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

const SHARDS: usize = 64;

/// Most items one write holds a shard's lock for (see
/// [`Writer::write_grouped`]). A reader waits for the write holding the
/// lock (std's RwLock also makes it wait behind a waiting writer): a
/// remote_write request of 20,000 series held each shard for about 300
/// writes, and a query over every shard waited for many of them
/// (scripts/flood, storm_429).
pub const WRITE_GROUP_ITEMS: usize = 32;

/// Series keys come from authenticated clients; foldhash's seeded hash is
/// fast and not trivially collided.
type Hasher = foldhash::fast::RandomState;
type Shard = hashbrown::HashMap<SeriesKey, Series, Hasher>;

/// Longest key kept inline in its map slot.
const INLINE_KEY: usize = 30;

/// A series key as the map holds it: short keys (most socket paths) inline
/// in the slot, so that finding a series reads no other memory; longer ones
/// shared.
#[derive(Clone)]
enum SeriesKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Shared(Arc<str>),
}

impl SeriesKey {
    fn new(key: &str, shared: Option<&Arc<str>>) -> SeriesKey {
        if key.len() > INLINE_KEY {
            return SeriesKey::Shared(shared.map_or_else(|| Arc::from(key), Arc::clone));
        }
        let mut bytes = [0; INLINE_KEY];
        bytes[..key.len()].copy_from_slice(key.as_bytes());
        SeriesKey::Inline {
            len: key.len() as u8,
            bytes,
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Built from a &str in `new`: always whole UTF-8.
            SeriesKey::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            SeriesKey::Shared(arc) => arc,
        }
    }

    fn to_arc(&self) -> Arc<str> {
        match self {
            SeriesKey::Inline { .. } => Arc::from(self.as_str()),
            SeriesKey::Shared(arc) => arc.clone(),
        }
    }
}

impl std::hash::Hash for SeriesKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq for SeriesKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SeriesKey {}

impl std::borrow::Borrow<str> for SeriesKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// Why a write was refused (by every archive it was aimed at).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WriteReject {
    /// No rule for the prefix and no `"*"` rule.
    #[error("no rule matches the series prefix")]
    NoRule,
    /// More than `max_future` ahead of the wall clock.
    #[error("timestamp too far in the future")]
    TooFarFuture,
    /// The series would pass `max_series`.
    #[error("series limit reached (limits.max_series)")]
    TooManySeries,
    /// A new label set with more labels than `max_labels_per_series`.
    #[error("more labels than limits.max_labels_per_series")]
    TooManyLabels,
    /// A new label set with a name or value over `max_label_name_bytes` or
    /// `max_label_value_bytes`.
    #[error("label name or value longer than limits.max_label_name_bytes or limits.max_label_value_bytes")]
    LabelTooLong,
    /// A new series whose key is over `max_series_key_bytes`.
    #[error("series key longer than limits.max_series_key_bytes")]
    SeriesKeyTooLong,
    /// A new series whose key would take the keys held past
    /// `max_series_key_bytes_total`.
    #[error("series keys held would pass limits.max_series_key_bytes_total")]
    TooManySeriesBytes,
    /// The client may not write this prefix.
    #[error("client may not write this prefix")]
    Forbidden,
    /// The archive refused it.
    #[error(transparent)]
    Archive(#[from] Reject),
}

impl WriteReject {
    /// Every reason, for self-metrics.
    pub const ALL: [WriteReject; 12] = [
        WriteReject::NoRule,
        WriteReject::TooFarFuture,
        WriteReject::TooManySeries,
        WriteReject::TooManyLabels,
        WriteReject::LabelTooLong,
        WriteReject::SeriesKeyTooLong,
        WriteReject::TooManySeriesBytes,
        WriteReject::Forbidden,
        WriteReject::Archive(Reject::TooOld),
        WriteReject::Archive(Reject::OutOfRange),
        WriteReject::Archive(Reject::Overflow),
        WriteReject::Archive(Reject::UnknownSpecial),
    ];

    /// Label value used in self-metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteReject::NoRule => "no_rule",
            WriteReject::TooFarFuture => "too_far_future",
            WriteReject::TooManySeries => "too_many_series",
            WriteReject::TooManyLabels => "too_many_labels",
            WriteReject::LabelTooLong => "label_too_long",
            WriteReject::SeriesKeyTooLong => "series_key_too_long",
            WriteReject::TooManySeriesBytes => "too_many_series_bytes",
            WriteReject::Forbidden => "forbidden",
            WriteReject::Archive(r) => r.as_str(),
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// Caps the store enforces.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// How far ahead of `now` a sample may be, in milliseconds.
    pub max_future_ms: u64,
    /// Most series held.
    pub max_series: u64,
}

/// Size caps on what a new series and the metadata may hold, the same for
/// every protocol (`limits:` in the config). A series already held is never
/// refused by them (a restored key may be longer than a lowered cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeLimits {
    /// Most labels in a new label set, `__name__` included.
    pub max_labels_per_series: usize,
    /// Longest label name of a new label set.
    pub max_label_name_bytes: usize,
    /// Longest label value of a new label set.
    pub max_label_value_bytes: usize,
    /// Longest key of a new series (a socket path or a label set's
    /// canonical key).
    pub max_series_key_bytes: usize,
    /// Most bytes of series keys held in all.
    pub max_series_key_bytes_total: u64,
    /// Longest help text kept; longer ones are cut (on a character
    /// boundary).
    pub max_help_bytes: usize,
    /// Most bytes of metadata (family names, type, help, unit) kept in all.
    pub max_metadata_bytes: u64,
}

impl Default for SizeLimits {
    /// The defaults of `limits:`.
    fn default() -> Self {
        SizeLimits {
            max_labels_per_series: 64,
            max_label_name_bytes: 256,
            max_label_value_bytes: 4096,
            max_series_key_bytes: 16 << 10,
            max_series_key_bytes_total: 2 << 30,
            max_help_bytes: 4096,
            max_metadata_bytes: 16 << 20,
        }
    }
}

impl SizeLimits {
    /// Why a new label set (`__name__` included) is refused, if it is.
    ///
    /// # Errors
    /// [`WriteReject::TooManyLabels`] or [`WriteReject::LabelTooLong`].
    pub fn check_labels<'l>(
        &self,
        labels: impl ExactSizeIterator<Item = (&'l str, &'l str)>,
    ) -> Result<(), WriteReject> {
        if labels.len() > self.max_labels_per_series {
            return Err(WriteReject::TooManyLabels);
        }
        for (name, value) in labels {
            if name.len() > self.max_label_name_bytes || value.len() > self.max_label_value_bytes {
                return Err(WriteReject::LabelTooLong);
            }
        }
        Ok(())
    }
}

/// One archive of a series with the rule it was built for.
#[derive(Debug)]
pub struct RuleArchive {
    /// The rule (as configured when the archive was made or restored).
    pub rule: Arc<Rule>,
    /// The ring.
    pub archive: Archive,
}

/// One series: how its prefix and labels are found, and its archives.
#[derive(Debug)]
pub struct Series {
    form: Form,
    archives: Vec<RuleArchive>,
}

/// Where a series' prefix and labels are kept. Most series need nothing
/// beside their key: a socket path's prefix is its first part, and a label
/// set's canonical key holds its name and labels (parsed when asked for,
/// which only queries do). Measured with 100K label sets of 3 labels:
/// 1,500 → 1,200 B RSS per series after two saves.
#[derive(Debug)]
enum Form {
    /// A socket path whose prefix is [`model::path_prefix`] of the key.
    Path,
    /// A label set whose key is [`model::series_key`] of its labels.
    LabelKey,
    /// Anything else, kept as given.
    Given(Box<GivenForm>),
}

#[derive(Debug)]
struct GivenForm {
    prefix: Box<str>,
    labels: Option<Labels>,
}

impl Form {
    fn new(key: &str, prefix: &str, labels: Option<Vec<(String, String)>>) -> Form {
        match labels {
            None if model::path_prefix(key) == prefix => Form::Path,
            Some(labels)
                if model::series_key_name(key) == prefix
                    && model::labels_of_series_key(key).as_ref() == Some(&labels) =>
            {
                Form::LabelKey
            }
            labels => Form::Given(Box::new(GivenForm {
                prefix: prefix.into(),
                labels: labels.map(Arc::from),
            })),
        }
    }

    fn prefix<'s>(&'s self, key: &'s str) -> &'s str {
        match self {
            Form::Path => model::path_prefix(key),
            Form::LabelKey => model::series_key_name(key),
            Form::Given(given) => &given.prefix,
        }
    }

    fn labels(&self, key: &str) -> Option<Labels> {
        match self {
            Form::Path => None,
            Form::LabelKey => Some(Arc::from(model::series_key_label_set(key))),
            Form::Given(given) => given.labels.clone(),
        }
    }
}

/// The labels of a label-set series, sorted by name, `__name__` included.
pub type Labels = Arc<[(String, String)]>;

/// Which series a write is for.
pub struct SeriesId<'a> {
    /// Series key: a socket path, or the canonical `name{a="b"}` form.
    pub key: &'a str,
    /// The same key already shared: a new series keeps a clone of it
    /// instead of a copy.
    pub shared: Option<&'a Arc<str>>,
    /// Prefix selecting the rules (path prefix or `__name__`).
    pub prefix: &'a str,
    /// For label-set series: builds the labels, called only for a new series.
    pub labels: Option<&'a dyn Fn() -> Vec<(String, String)>>,
}

impl<'a> SeriesId<'a> {
    /// A socket path: its key, and the prefix selecting its rules.
    pub fn path(key: &'a str, prefix: &'a str) -> SeriesId<'a> {
        SeriesId {
            key,
            shared: None,
            prefix,
            labels: None,
        }
    }
}

/// A key looked up in a shard: when it is the map's own shared key, equal
/// by pointer without reading the key's bytes.
struct Lookup<'a> {
    key: &'a str,
    shared: Option<&'a Arc<str>>,
}

impl std::hash::Hash for Lookup<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl hashbrown::Equivalent<SeriesKey> for Lookup<'_> {
    fn equivalent(&self, key: &SeriesKey) -> bool {
        match key {
            SeriesKey::Shared(arc) if self.shared.is_some_and(|s| Arc::ptr_eq(s, arc)) => true,
            _ => key.as_str() == self.key,
        }
    }
}

impl Series {
    /// The prefix that selects the series' rules; `key` is the series' own.
    pub fn prefix<'s>(&'s self, key: &'s str) -> &'s str {
        self.form.prefix(key)
    }

    /// The archive kept for the named rule.
    pub fn archive(&self, rule: &str) -> Option<&Archive> {
        self.archives
            .iter()
            .find(|a| a.rule.name == rule)
            .map(|a| &a.archive)
    }

    /// Labels of a label-set series, sorted by name; `None` for a socket
    /// path. `key` is the series' own.
    pub fn labels(&self, key: &str) -> Option<Labels> {
        self.form.labels(key)
    }

    /// One label's value of a label-set series without building its set:
    /// `None` when absent or for a socket path. `key` is the series' own.
    pub fn label<'s>(&'s self, key: &'s str, name: &str) -> Option<Cow<'s, str>> {
        match &self.form {
            Form::Path => None,
            Form::LabelKey if name == "__name__" => {
                Some(Cow::Borrowed(model::series_key_name(key))).filter(|n| !n.is_empty())
            }
            Form::LabelKey => model::series_key_labels(key)
                .find(|(n, _)| *n == name)
                .map(|(_, v)| model::unescape_label_value(v)),
            Form::Given(given) => given
                .labels
                .as_ref()?
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| Cow::Borrowed(v.as_str())),
        }
    }

    /// Whether the series is a label set whose key is the canonical form
    /// of its labels ([`crate::model::series_key`]).
    pub fn labels_are_key(&self) -> bool {
        matches!(self.form, Form::LabelKey)
    }

    /// Whether the series is a label set (not a socket path).
    pub fn is_label_set(&self) -> bool {
        match &self.form {
            Form::Path => false,
            Form::LabelKey => true,
            Form::Given(given) => given.labels.is_some(),
        }
    }

    /// Every archive, in the order they were created.
    pub fn archives(&self) -> &[RuleArchive] {
        &self.archives
    }
}

/// A snapshot record taken from the store: what to save for one archive.
#[derive(Debug)]
pub struct DirtyArchive {
    /// Series key.
    pub series: Arc<str>,
    /// The rule (its name keys the records).
    pub rule: Arc<Rule>,
    /// Encoded header and pages.
    pub dirty: Dirty,
    /// Rules of the same series whose saved records go in the same write:
    /// their history was migrated into this series' new archives (a rule
    /// that newly applies), and they stay on disk until those are saved.
    pub retire: Vec<String>,
}

/// Counters and gauges for self-metrics.
#[derive(Debug, Default, Clone)]
pub struct StoreStats {
    /// Series held.
    pub series: u64,
    /// Archives held.
    pub archives: u64,
    /// Bytes of archive memory.
    pub archive_bytes: u64,
    /// Archive-level refusals by reason (a sample aimed at three archives
    /// may count up to three).
    pub archive_rejects: Vec<(&'static str, u64)>,
    /// Archives migrated into a changed rule's shape.
    pub migrations: u64,
    /// Old buckets dropped by migrations.
    pub migration_dropped_buckets: u64,
    /// Bytes of the series keys held.
    pub series_key_bytes: u64,
    /// Bytes of the metadata held.
    pub metadata_bytes: u64,
}

/// Why a family's metadata was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MetadataSkip {
    /// The client may not write the family's name (checked by the caller).
    #[error("client may not write this metric name")]
    Forbidden,
    /// Keeping it would pass `max_metadata_bytes` (or the family count cap).
    #[error("metadata held would pass limits.max_metadata_bytes")]
    TooMuchMetadata,
}

impl MetadataSkip {
    /// Label value used in self-metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            MetadataSkip::Forbidden => "forbidden",
            MetadataSkip::TooMuchMetadata => "too_much_metadata",
        }
    }
}

/// Metadata of one metric family, as remote_write senders report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricMetadata {
    /// `counter`, `gauge`, `histogram`, `gaugehistogram`, `summary`, `info`,
    /// `stateset` or `unknown`.
    pub kind: String,
    /// Help text.
    pub help: String,
    /// Unit.
    pub unit: String,
}

impl MetricMetadata {
    /// Bytes it holds, its family name included, for `max_metadata_bytes`.
    fn bytes(&self, family: &str) -> u64 {
        (family.len() + self.kind.len() + self.help.len() + self.unit.len()) as u64
    }
}

/// Kept metadata and the bytes it holds.
#[derive(Default)]
struct MetadataMap {
    families: HashMap<String, MetricMetadata>,
    bytes: u64,
}

/// Most metric families whose metadata is kept.
const MAX_METADATA: usize = 100_000;

/// The sharded series map.
pub struct Store {
    metadata: RwLock<MetadataMap>,
    shards: Box<[RwLock<Shard>]>,
    hasher: Hasher,
    rules: RwLock<Arc<RuleSet>>,
    limits: StoreLimits,
    sizes: SizeLimits,
    series: AtomicU64,
    /// Bytes of the series keys held (see [`SizeLimits`]).
    key_bytes: AtomicU64,
    archives: AtomicU64,
    archive_bytes: AtomicU64,
    archive_rejects: [AtomicU64; WriteReject::ALL.len()],
    migrations: AtomicU64,
    migration_dropped: AtomicU64,
    /// Series key → rules whose saved records go with the next save of the
    /// series (see [`DirtyArchive::retire`]). Taken after a shard lock.
    retiring: Mutex<HashMap<Box<str>, Vec<String>>>,
}

/// What a rule change did to the archives held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RulesChange {
    /// Archives migrated into a new shape.
    pub migrated: u64,
    /// Old buckets the new shapes could not take.
    pub dropped_buckets: u64,
    /// Archives whose rule no longer applies and whose history no newly
    /// applying rule took: out of memory, still on disk.
    pub unloaded: u64,
    /// Series whose history moved into rules that newly apply to them (a
    /// rule added for their prefix, in place of the `"*"` rules).
    pub moved_series: u64,
    /// Archives made for those rules from that history.
    pub moved_archives: u64,
}

/// A saved archive whose rule no longer applies to its series, read on
/// restore: [`Store::adopt_orphans`] migrates it into the rules that newly
/// apply, or leaves it on disk.
#[derive(Debug)]
pub struct Orphan {
    /// Series key.
    pub key: String,
    /// The series' prefix.
    pub prefix: String,
    /// Labels of a label-set series.
    pub labels: Option<Vec<(String, String)>>,
    /// The rule it was saved for.
    pub rule: String,
    /// Its history.
    pub archive: Archive,
}

/// Writes under one hold of the rule set (see [`Store::writer`]).
pub struct Writer<'s> {
    store: &'s Store,
    rules: RwLockReadGuard<'s, Arc<RuleSet>>,
}

impl Writer<'_> {
    /// See [`Store::write_batch`].
    pub fn write_batch(
        &self,
        id: &SeriesId<'_>,
        samples: &[Sample],
        now_ms: TimestampMs,
        outcome: impl FnMut(Result<usize, WriteReject>),
    ) {
        let store = self.store;
        let lock = || store.write_shard(store.shard_of(id.key));
        self.write_locked(lock, id, samples, now_ms, outcome);
    }

    /// Writes `items` grouped by the store shard of each one's series key:
    /// each shard's lock is taken once for up to [`WRITE_GROUP_ITEMS`] of
    /// its items, and the items of one key are written in their order in
    /// `items`.
    pub fn write_grouped<T>(
        &self,
        items: &[T],
        key: impl Fn(&T) -> &str,
        mut write: impl FnMut(&mut ShardWriter<'_, '_>, &T),
    ) {
        let mut order: Vec<(usize, usize)> = items
            .iter()
            .enumerate()
            .map(|(i, item)| (self.store.shard_of(key(item)), i))
            .collect();
        // (shard, position): within a shard, the order of `items`.
        order.sort_unstable();
        for group in order.chunk_by(|a, b| a.0 == b.0) {
            for part in group.chunks(WRITE_GROUP_ITEMS) {
                let mut shard = self.lock(part[0].0);
                for &(_, i) in part {
                    write(&mut shard, &items[i]);
                }
            }
        }
    }

    /// Holds one shard's write lock for the writes of series whose keys are
    /// all in that shard.
    fn lock(&self, shard: usize) -> ShardWriter<'_, '_> {
        ShardWriter {
            writer: self,
            index: shard,
            shard: self.store.write_shard(shard),
        }
    }

    /// [`Store::write_batch`] with the series' shard from `lock`, taken only
    /// when a sample needs it.
    fn write_locked<G: DerefMut<Target = Shard>>(
        &self,
        lock: impl FnOnce() -> G,
        id: &SeriesId<'_>,
        samples: &[Sample],
        now_ms: TimestampMs,
        mut outcome: impl FnMut(Result<usize, WriteReject>),
    ) {
        let store = self.store;
        let matching = self.rules.for_prefix(id.prefix);
        if matching.is_empty() {
            samples
                .iter()
                .for_each(|_| outcome(Err(WriteReject::NoRule)));
            return;
        }
        let max_future = now_ms.saturating_add(store.limits.max_future_ms);
        // What a sample gets without touching the series, if anything.
        let precheck = |s: &Sample| -> Option<Result<usize, WriteReject>> {
            if s.timestamp_ms > max_future {
                Some(Err(WriteReject::TooFarFuture))
            } else if matches!(s.value, Value::Float(v) if rrd::is_stale_marker(v)) {
                Some(Ok(0))
            } else {
                None
            }
        };
        let mut rest = samples.iter();
        let first = loop {
            match rest.next() {
                None => return,
                Some(s) => match precheck(s) {
                    Some(r) => outcome(r),
                    None => break *s,
                },
            }
        };
        let mut shard = lock();
        // One hash lookup per batch; the key is copied only for a new series.
        let lookup = Lookup {
            key: id.key,
            shared: id.shared,
        };
        let series = match shard.entry_ref(&lookup) {
            hashbrown::hash_map::EntryRef::Occupied(e) => e.into_mut(),
            hashbrown::hash_map::EntryRef::Vacant(v) => {
                let labels = id.labels.map(|make| make());
                if let Err(reject) = store.admit(id.key, labels.as_deref()) {
                    outcome(Err(reject));
                    for s in rest {
                        outcome(precheck(s).unwrap_or(Err(reject)));
                    }
                    return;
                }
                let series = Series {
                    form: Form::new(id.key, id.prefix, labels),
                    archives: Vec::with_capacity(matching.len()),
                };
                v.insert_with_key(SeriesKey::new(id.key, id.shared), series)
            }
        };
        outcome(store.apply(series, matching, first, now_ms));
        for s in rest {
            outcome(precheck(s).unwrap_or_else(|| store.apply(series, matching, *s, now_ms)));
        }
    }
}

/// A [`Writer`] holding one shard's write lock (see [`Writer::write_grouped`]).
pub struct ShardWriter<'w, 's> {
    writer: &'w Writer<'s>,
    index: usize,
    shard: RwLockWriteGuard<'s, Shard>,
}

impl ShardWriter<'_, '_> {
    /// [`Store::write`] for a socket path of this shard.
    ///
    /// # Errors
    /// The reason, when no archive took the sample.
    pub fn write(
        &mut self,
        key: &str,
        prefix: &str,
        sample: Sample,
        now_ms: TimestampMs,
    ) -> Result<usize, WriteReject> {
        let mut result = Ok(0);
        let id = SeriesId::path(key, prefix);
        self.write_batch(&id, &[sample], now_ms, |r| result = r);
        result
    }

    /// [`Store::write_batch`] for a series of this shard.
    pub fn write_batch(
        &mut self,
        id: &SeriesId<'_>,
        samples: &[Sample],
        now_ms: TimestampMs,
        outcome: impl FnMut(Result<usize, WriteReject>),
    ) {
        debug_assert_eq!(self.writer.store.shard_of(id.key), self.index, "{}", id.key);
        let shard = &mut *self.shard;
        self.writer
            .write_locked(|| shard, id, samples, now_ms, outcome);
    }
}

impl Store {
    /// The same store with these size caps (the defaults of `limits:`
    /// until set).
    pub fn with_size_limits(mut self, sizes: SizeLimits) -> Store {
        self.sizes = sizes;
        self
    }

    /// Checks a new series against the size caps and reserves its place:
    /// one more series and its key's bytes, each taken with a
    /// compare-and-swap so that writers on other shards cannot overshoot
    /// `max_series` or `max_series_key_bytes_total` between check and add.
    fn admit(&self, key: &str, labels: Option<&[(String, String)]>) -> Result<(), WriteReject> {
        if key.len() > self.sizes.max_series_key_bytes {
            return Err(WriteReject::SeriesKeyTooLong);
        }
        if let Some(labels) = labels {
            self.sizes
                .check_labels(labels.iter().map(|(n, v)| (n.as_str(), v.as_str())))?;
        }
        let max_series = self.limits.max_series;
        self.series
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max_series).then_some(n + 1)
            })
            .map_err(|_| WriteReject::TooManySeries)?;
        let (bytes, max_bytes) = (key.len() as u64, self.sizes.max_series_key_bytes_total);
        let reserved = self
            .key_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|&total| total <= max_bytes)
            });
        if reserved.is_err() {
            self.series.fetch_sub(1, Ordering::Relaxed);
            return Err(WriteReject::TooManySeriesBytes);
        }
        Ok(())
    }

    /// Counts a series that is taken without the checks of a new one
    /// (restored or moved from disk): undone by [`Store::forget_series`].
    fn count_series(&self, key: &str) {
        self.series.fetch_add(1, Ordering::Relaxed);
        self.key_bytes
            .fetch_add(key.len() as u64, Ordering::Relaxed);
    }

    /// Counts a series (with key `key`) leaving memory.
    fn forget_series(&self, key: &str) {
        self.series.fetch_sub(1, Ordering::Relaxed);
        self.key_bytes
            .fetch_sub(key.len() as u64, Ordering::Relaxed);
    }

    /// An empty store with these rules.
    pub fn new(rules: RuleSet, limits: StoreLimits) -> Store {
        Store {
            metadata: RwLock::default(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: Hasher::default(),
            rules: RwLock::new(Arc::new(rules)),
            limits,
            sizes: SizeLimits::default(),
            series: AtomicU64::new(0),
            key_bytes: AtomicU64::new(0),
            archives: AtomicU64::new(0),
            archive_bytes: AtomicU64::new(0),
            archive_rejects: Default::default(),
            migrations: AtomicU64::new(0),
            migration_dropped: AtomicU64::new(0),
            retiring: Mutex::default(),
        }
    }

    /// The current rule set.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % self.shards.len()
    }

    fn read_shard(&self, i: usize) -> RwLockReadGuard<'_, Shard> {
        self.shards[i].read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_shard(&self, i: usize) -> RwLockWriteGuard<'_, Shard> {
        self.shards[i].write().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes one sample of a socket path to every archive its prefix
    /// selects (see [`Store::write_batch`]).
    ///
    /// # Errors
    /// The reason, when no archive took the sample.
    pub fn write(
        &self,
        key: &str,
        prefix: &str,
        sample: Sample,
        now_ms: TimestampMs,
    ) -> Result<usize, WriteReject> {
        let writer = self.writer();
        let mut shard = writer.lock(self.shard_of(key));
        shard.write(key, prefix, sample, now_ms)
    }

    /// Writes samples of one series (in order) to every archive its prefix
    /// selects, creating the series and archives as needed, under one lock.
    /// `outcome` hears, per sample, how many archives stored it or why none
    /// did. Prometheus stale markers are accepted and not stored (`Ok(0)`).
    /// Archives that refused a sample that others took are counted in
    /// [`StoreStats`].
    pub fn write_batch(
        &self,
        id: &SeriesId<'_>,
        samples: &[Sample],
        now_ms: TimestampMs,
        outcome: impl FnMut(Result<usize, WriteReject>),
    ) {
        self.writer().write_batch(id, samples, now_ms, outcome);
    }

    /// A writer for many series in a row: it holds the rule set's read
    /// guard, so that a burst of writes takes that shared lock once.
    /// `set_rules` (a reload) waits for it: keep it for one burst.
    pub fn writer(&self) -> Writer<'_> {
        Writer {
            store: self,
            rules: self.rules.read().unwrap_or_else(|e| e.into_inner()),
        }
    }

    fn apply(
        &self,
        series: &mut Series,
        matching: &[Arc<Rule>],
        sample: Sample,
        now_ms: TimestampMs,
    ) -> Result<usize, WriteReject> {
        if matching.len() > 1 {
            for a in &series.archives {
                a.archive.prefetch(sample.timestamp_ms);
            }
        }
        let mut stored = 0;
        let mut first_reject = None;
        for rule in matching {
            let result = if rule.autoremove
                && sample.timestamp_ms.saturating_add(rule.window_ms()) < now_ms
            {
                Err(Reject::TooOld)
            } else {
                let archive = self.archive_for(series, rule);
                let before = archive.memory_bytes();
                let result = archive.update(sample);
                self.resized(before, archive.memory_bytes());
                result
            };
            match result {
                Ok(()) => stored += 1,
                Err(reject) => {
                    self.archive_rejects[WriteReject::Archive(reject).index()]
                        .fetch_add(1, Ordering::Relaxed);
                    first_reject.get_or_insert(reject);
                }
            }
        }
        match first_reject {
            Some(reject) if stored == 0 => Err(reject.into()),
            _ => Ok(stored),
        }
    }

    /// The series' archive for `rule`, created empty when missing (YAWNDB
    /// back-fills a conveyor for every configured rule on write).
    fn archive_for<'s>(&self, series: &'s mut Series, rule: &Arc<Rule>) -> &'s mut Archive {
        let index = match series
            .archives
            .iter()
            .position(|a| Arc::ptr_eq(&a.rule, rule) || a.rule.name == rule.name)
        {
            Some(i) => i,
            None => {
                let archive = Archive::new(rule.shape.clone());
                self.archives.fetch_add(1, Ordering::Relaxed);
                self.archive_bytes
                    .fetch_add(archive.memory_bytes() as u64, Ordering::Relaxed);
                series.archives.push(RuleArchive {
                    rule: rule.clone(),
                    archive,
                });
                series.archives.len() - 1
            }
        };
        &mut series.archives[index].archive
    }

    /// Runs `f` on the series under its shard's read lock; copy out what
    /// you need, do no I/O inside.
    pub fn read<R>(&self, key: &str, f: impl FnOnce(&Series) -> R) -> Option<R> {
        let shard = self.read_shard(self.shard_of(key));
        shard.get(key).map(f)
    }

    /// Calls `f` on every series, shard by shard, under each shard's read
    /// lock: copy out what you need, do no I/O inside. Stops early when `f`
    /// returns false.
    pub fn scan(&self, f: impl FnMut(&str, &Series) -> bool) {
        self.scan_shards(0..self.shards.len(), f);
    }

    /// [`Store::scan`] over the shards in `shards` only (clamped to
    /// [`Store::shard_count`]), so that callers can walk disjoint ranges at
    /// once on separate threads. Stops early when `f` returns false.
    pub fn scan_shards(
        &self,
        shards: std::ops::Range<usize>,
        mut f: impl FnMut(&str, &Series) -> bool,
    ) {
        for i in shards.start..shards.end.min(self.shards.len()) {
            for (key, series) in self.read_shard(i).iter() {
                if !f(key.as_str(), series) {
                    return;
                }
            }
        }
    }

    /// Every series key with its prefix, in no particular order.
    pub fn series_keys(&self) -> Vec<(Arc<str>, Box<str>)> {
        (0..self.shards.len())
            .flat_map(|i| {
                self.read_shard(i)
                    .iter()
                    .map(|(k, s)| (k.to_arc(), s.prefix(k.as_str()).into()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Removes a series and its archives from memory; false if unknown.
    pub fn remove(&self, key: &str) -> bool {
        let removed = self.write_shard(self.shard_of(key)).remove(key);
        let Some(series) = removed else { return false };
        self.forget_series(key);
        self.retiring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        for a in &series.archives {
            self.forget_archive(&a.archive);
        }
        true
    }

    /// Number of series with unsaved changes.
    pub fn dirty_series(&self) -> u64 {
        (0..self.shards.len())
            .map(|i| {
                self.read_shard(i)
                    .values()
                    .filter(|s| s.archives.iter().any(|a| a.archive.is_dirty()))
                    .count() as u64
            })
            .sum()
    }

    /// Number of shards, for callers that walk the store shard by shard.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Encodes and marks clean everything that changed in one shard since
    /// the last call. A write after this call marks its page dirty again.
    pub fn take_dirty(&self, shard: usize) -> Vec<DirtyArchive> {
        let mut guard = self.write_shard(shard);
        let mut out = Vec::new();
        let mut retiring = self.retiring.lock().unwrap_or_else(|e| e.into_inner());
        for (key, series) in guard.iter_mut() {
            let taken = out.len();
            let (mut shared, mut labels) = (None, None);
            for a in &mut series.archives {
                if a.archive.is_dirty() {
                    let labels = labels.get_or_insert_with(|| series.form.labels(key.as_str()));
                    out.push(DirtyArchive {
                        series: shared.get_or_insert_with(|| key.to_arc()).clone(),
                        rule: a.rule.clone(),
                        dirty: a.archive.take_dirty(
                            &a.rule.name,
                            series.form.prefix(key.as_str()),
                            labels.as_deref(),
                        ),
                        retire: Vec::new(),
                    });
                }
            }
            // Its migrated archives are dirty: the old records go with them.
            if out.len() > taken && !retiring.is_empty() {
                if let Some(mut rules) = retiring.remove(key.as_str()) {
                    // A rule that applies again (rules changed back) has
                    // its own archive now, saved whole: keep its records.
                    rules.retain(|r| !series.archives.iter().any(|a| a.rule.name == *r));
                    if let Some(last) = out.last_mut() {
                        last.retire = rules;
                    }
                }
            }
        }
        out
    }

    /// Marks dirty again what a save took with [`Store::take_dirty`] and
    /// did not write (stopped by shutdown or its deadline), so that the
    /// next save writes it: nothing else is rewritten.
    pub fn return_dirty(&self, dirty: &DirtyArchive) {
        let mut shard = self.write_shard(self.shard_of(&dirty.series));
        let Some(series) = shard.get_mut(&*dirty.series) else {
            return;
        };
        for a in series.archives.iter_mut() {
            if a.rule.name == dirty.rule.name {
                a.archive.return_dirty(&dirty.rule.shape, &dirty.dirty);
            }
        }
        if !dirty.retire.is_empty() {
            let mut retiring = self.retiring.lock().unwrap_or_else(|e| e.into_inner());
            let rules = retiring.entry(dirty.series.as_ref().into()).or_default();
            rules.extend(dirty.retire.iter().cloned());
        }
    }

    /// Marks an archive wholly dirty again (after a failed save).
    pub fn mark_dirty(&self, key: &str, rule: &str) {
        let mut shard = self.write_shard(self.shard_of(key));
        if let Some(series) = shard.get_mut(key) {
            for a in series.archives.iter_mut().filter(|a| a.rule.name == rule) {
                a.archive.mark_all_dirty();
            }
        }
    }

    /// Puts a restored archive in place, if a configured rule of that name
    /// applies to the prefix; an archive saved for another shape of that
    /// rule is migrated into the current one.
    ///
    /// # Errors
    /// Why it was not taken; the caller keeps the record on disk.
    pub fn restore(
        &self,
        key: &str,
        prefix: &str,
        labels: Option<Vec<(String, String)>>,
        rule_name: &str,
        archive: Archive,
    ) -> Result<(), RestoreSkip> {
        // The read guard, not a clone of the Arc: restore runs once per
        // archive (see `write_batch` for the lock order).
        let rules = self.rules.read().unwrap_or_else(|e| e.into_inner());
        let rule = rules
            .for_prefix(prefix)
            .iter()
            .find(|r| r.name == rule_name)
            .ok_or(RestoreSkip::NoSuchRule)?;
        let archive = if rule.shape == *archive.shape() {
            archive
        } else {
            let (migrated, report) = archive.migrate(rule.shape.clone());
            self.migrations.fetch_add(1, Ordering::Relaxed);
            self.migration_dropped
                .fetch_add(report.dropped, Ordering::Relaxed);
            migrated
        };
        let mut shard = self.write_shard(self.shard_of(key));
        let series = match shard.entry_ref(key) {
            hashbrown::hash_map::EntryRef::Occupied(e) => e.into_mut(),
            hashbrown::hash_map::EntryRef::Vacant(v) => {
                // Restored series are counted, never refused.
                self.count_series(key);
                let series = Series {
                    form: Form::new(key, prefix, labels),
                    archives: Vec::new(),
                };
                v.insert_with_key(SeriesKey::new(key, None), series)
            }
        };
        self.archives.fetch_add(1, Ordering::Relaxed);
        self.archive_bytes
            .fetch_add(archive.memory_bytes() as u64, Ordering::Relaxed);
        series.archives.retain(|a| {
            let replaced = a.rule.name == rule_name;
            if replaced {
                self.forget_archive(&a.archive);
            }
            !replaced
        });
        series.archives.push(RuleArchive {
            rule: rule.clone(),
            archive,
        });
        Ok(())
    }

    /// Whether a rule of that name applies to the prefix now: a saved
    /// archive of a rule that does not is an [`Orphan`].
    pub fn rule_applies(&self, prefix: &str, rule: &str) -> bool {
        let rules = self.rules.read().unwrap_or_else(|e| e.into_inner());
        rules.for_prefix(prefix).iter().any(|r| r.name == rule)
    }

    /// Replaces the rule set. Archives whose rule changed shape are migrated
    /// (see [`Archive::migrate`]). Archives whose rule is gone or no longer
    /// applies to the series' prefix (a rule was added for the prefix, so
    /// the `"*"` rules no longer apply) are migrated the same way into each
    /// rule that newly applies to the series (see [`Store::adopt_orphans`]
    /// for which history goes where); their saved records are removed in
    /// the same write as the migrated archives'. When no rule newly
    /// applies, they leave memory and stay on disk until the series is
    /// deleted. A series left with no archive leaves memory.
    ///
    /// Holds the rule set's write lock throughout: a write that came
    /// between the swap and its shard's migration would create a newly
    /// applying rule's archive empty, and its history would not move.
    pub fn set_rules(&self, rules: RuleSet) -> RulesChange {
        let rules = Arc::new(rules);
        let mut current = self.rules.write().unwrap_or_else(|e| e.into_inner());
        *current = rules.clone();
        let mut change = RulesChange::default();
        for i in 0..self.shards.len() {
            let mut shard = self.write_shard(i);
            shard.retain(|key, series| {
                let applying = rules.for_prefix(series.prefix(key.as_str()));
                let mut orphans = Vec::new();
                for mut a in std::mem::take(&mut series.archives) {
                    let Some(rule) = applying.iter().find(|r| r.name == a.rule.name) else {
                        orphans.push(a);
                        continue;
                    };
                    if rule.shape != a.rule.shape {
                        let (migrated, report) = a.archive.migrate(rule.shape.clone());
                        self.resized(a.archive.memory_bytes(), migrated.memory_bytes());
                        a.archive = migrated;
                        change.migrated += 1;
                        change.dropped_buckets += report.dropped;
                    }
                    a.rule = rule.clone();
                    series.archives.push(a);
                }
                if !orphans.is_empty() {
                    let sources: Vec<&Archive> = orphans.iter().map(|a| &a.archive).collect();
                    let (made, report) = self.adopt(&mut series.archives, applying, &sources);
                    if made > 0 {
                        change.moved_series += 1;
                        change.moved_archives += made;
                        change.dropped_buckets += report.dropped;
                        self.retire(key.as_str(), orphans.iter().map(|a| a.rule.name.clone()));
                    } else {
                        change.unloaded += orphans.len() as u64;
                    }
                    orphans.iter().for_each(|a| self.forget_archive(&a.archive));
                }
                let keep = !series.archives.is_empty();
                if !keep {
                    self.forget_series(key.as_str());
                }
                keep
            });
        }
        drop(current);
        self.migrations
            .fetch_add(change.migrated + change.moved_archives, Ordering::Relaxed);
        self.migration_dropped
            .fetch_add(change.dropped_buckets, Ordering::Relaxed);
        change
    }

    /// Puts saved archives whose rule no longer applies to their series
    /// (read by a restore, after every other archive is in place) into the
    /// rules that newly apply: each applying rule the series has no archive
    /// for gets one, migrated from them as a changed rule's is (every
    /// filled bucket as a sample at its start), finest timeframe first,
    /// coarser ones only for what is older than the finer ones hold (a sum
    /// is not counted twice). Their records are removed with the first save
    /// of those archives. Orphans no rule takes stay on disk, unloaded.
    pub fn adopt_orphans(&self, mut orphans: Vec<Orphan>) -> RulesChange {
        let rules = self.rules.read().unwrap_or_else(|e| e.into_inner());
        let mut change = RulesChange::default();
        orphans.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        for group in orphans.chunk_by(|a, b| a.key == b.key) {
            let first = &group[0];
            let applying = rules.for_prefix(&first.prefix);
            let mut shard = self.write_shard(self.shard_of(&first.key));
            let mut fresh = Vec::new();
            let archives = match shard.get_mut(first.key.as_str()) {
                Some(series) => &mut series.archives,
                None => &mut fresh,
            };
            let sources: Vec<&Archive> = group.iter().map(|o| &o.archive).collect();
            let (made, report) = self.adopt(archives, applying, &sources);
            if made == 0 {
                change.unloaded += group.len() as u64;
                continue;
            }
            change.moved_series += 1;
            change.moved_archives += made;
            change.dropped_buckets += report.dropped;
            if !fresh.is_empty() {
                self.count_series(&first.key);
                let series = Series {
                    form: Form::new(&first.key, &first.prefix, first.labels.clone()),
                    archives: fresh,
                };
                shard.insert(SeriesKey::new(&first.key, None), series);
            }
            self.retire(&first.key, group.iter().map(|o| o.rule.clone()));
        }
        self.migrations
            .fetch_add(change.moved_archives, Ordering::Relaxed);
        self.migration_dropped
            .fetch_add(change.dropped_buckets, Ordering::Relaxed);
        change
    }

    /// Makes an archive for each rule of `applying` missing from
    /// `archives`, from the history of `sources` (see
    /// [`Store::adopt_orphans`]); returns how many it made.
    fn adopt(
        &self,
        archives: &mut Vec<RuleArchive>,
        applying: &[Arc<Rule>],
        sources: &[&Archive],
    ) -> (u64, rrd::Migration) {
        let mut sources = sources.to_vec();
        sources.sort_by_key(|a| a.shape().timeframe_secs);
        let mut made = 0;
        let mut total = rrd::Migration::default();
        for rule in applying {
            if archives.iter().any(|a| a.rule.name == rule.name) {
                continue;
            }
            let mut next = Archive::new(rule.shape.clone());
            // Start of the oldest bucket taken so far: coarser sources fill
            // only what ends before it.
            let mut covered: Option<u64> = None;
            for source in &sources {
                let tf = source.shape().timeframe_secs;
                let before = covered.map(|c| c.checked_sub(tf).map_or(0, |end| end + 1));
                let report = source.migrate_into(&mut next, before);
                total.moved += report.moved;
                total.dropped += report.dropped;
                if let Some(oldest) = source.oldest_filled_secs() {
                    covered = Some(covered.map_or(oldest, |c| c.min(oldest)));
                }
            }
            self.archives.fetch_add(1, Ordering::Relaxed);
            self.archive_bytes
                .fetch_add(next.memory_bytes() as u64, Ordering::Relaxed);
            archives.push(RuleArchive {
                rule: rule.clone(),
                archive: next,
            });
            made += 1;
        }
        (made, total)
    }

    /// Records that `rules`' saved records of `key` go with its next save.
    fn retire(&self, key: &str, rules: impl Iterator<Item = String>) {
        let mut retiring = self.retiring.lock().unwrap_or_else(|e| e.into_inner());
        let entry = retiring.entry(key.into()).or_default();
        for rule in rules {
            if !entry.contains(&rule) {
                entry.push(rule);
            }
        }
    }

    /// Counts an archive's memory going from `before` to `after` bytes
    /// (its cells grow with the span written, and shrink when a gap
    /// empties it).
    fn resized(&self, before: usize, after: usize) {
        if after > before {
            self.archive_bytes
                .fetch_add((after - before) as u64, Ordering::Relaxed);
        } else if after < before {
            self.archive_bytes
                .fetch_sub((before - after) as u64, Ordering::Relaxed);
        }
    }

    fn forget_archive(&self, archive: &Archive) {
        self.archives.fetch_sub(1, Ordering::Relaxed);
        self.archive_bytes
            .fetch_sub(archive.memory_bytes() as u64, Ordering::Relaxed);
    }

    /// Drops the archives of `autoremove` rules idle for a whole window
    /// (newest bucket older than `now − limit·timeframe`), and series left
    /// with none. Returns the (series, rule) pairs removed, for the caller
    /// to delete from disk.
    ///
    /// Does nothing when no rule has `autoremove`. Otherwise each shard is
    /// walked under its read lock to find the series with an idle archive;
    /// only a shard that has some is write-locked, for those series only.
    pub fn sweep(&self, now_ms: TimestampMs) -> Vec<(String, String)> {
        let mut removed = Vec::new();
        if !self.rules().all().iter().any(|r| r.autoremove) {
            return removed;
        }
        let idle = |a: &RuleArchive| {
            a.rule.autoremove
                && a.archive.newest_timestamp_secs().is_none_or(|newest| {
                    (newest * 1000).saturating_add(a.rule.window_ms()) < now_ms
                })
        };
        for i in 0..self.shards.len() {
            let found: Vec<Arc<str>> = self
                .read_shard(i)
                .iter()
                .filter(|(_, series)| series.archives.iter().any(idle))
                .map(|(key, _)| key.to_arc())
                .collect();
            if found.is_empty() {
                continue;
            }
            let mut shard = self.write_shard(i);
            for key in found {
                let Some(series) = shard.get_mut(&*key) else {
                    continue;
                };
                // Checked again: a write may have landed since the walk.
                series.archives.retain(|a| {
                    let gone = idle(a);
                    if gone {
                        removed.push((key.to_string(), a.rule.name.clone()));
                        self.forget_archive(&a.archive);
                    }
                    !gone
                });
                if series.archives.is_empty() {
                    shard.remove(&*key);
                    self.forget_series(&key);
                }
            }
        }
        removed
    }

    /// Records a metric family's metadata: the newest report wins, its help
    /// text and unit cut to `max_help_bytes`. Whoever may write the family's name
    /// decides (the caller checks that).
    ///
    /// # Errors
    /// [`MetadataSkip::TooMuchMetadata`] when keeping it would take the
    /// metadata held past `max_metadata_bytes` (or past `MAX_METADATA`
    /// families); what was kept stays.
    pub fn set_metadata(
        &self,
        family: &str,
        mut metadata: MetricMetadata,
    ) -> Result<(), MetadataSkip> {
        truncate_utf8(&mut metadata.help, self.sizes.max_help_bytes);
        // A unit is a word ("seconds"); the same cap keeps it from being
        // a second help text.
        truncate_utf8(&mut metadata.unit, self.sizes.max_help_bytes);
        let added = metadata.bytes(family);
        let mut map = self.metadata.write().unwrap_or_else(|e| e.into_inner());
        let map = &mut *map;
        let replaced = map.families.get(family).map_or(0, |old| old.bytes(family));
        if replaced == 0 && map.families.len() >= MAX_METADATA {
            return Err(MetadataSkip::TooMuchMetadata);
        }
        let total = map.bytes - replaced + added;
        if total > self.sizes.max_metadata_bytes {
            return Err(MetadataSkip::TooMuchMetadata);
        }
        map.bytes = total;
        map.families.insert(family.to_owned(), metadata);
        Ok(())
    }

    /// Every known family's metadata, sorted by family name.
    pub fn metadata(&self) -> Vec<(String, MetricMetadata)> {
        let map = self.metadata.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = map
            .families
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Gauges and counters for /metrics.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            series: self.series.load(Ordering::Relaxed),
            archives: self.archives.load(Ordering::Relaxed),
            archive_bytes: self.archive_bytes.load(Ordering::Relaxed),
            archive_rejects: WriteReject::ALL
                .iter()
                .zip(&self.archive_rejects)
                .map(|(r, c)| (r.as_str(), c.load(Ordering::Relaxed)))
                .collect(),
            migrations: self.migrations.load(Ordering::Relaxed),
            migration_dropped_buckets: self.migration_dropped.load(Ordering::Relaxed),
            series_key_bytes: self.key_bytes.load(Ordering::Relaxed),
            metadata_bytes: self
                .metadata
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .bytes,
        }
    }
}

/// Cuts `text` to at most `max` bytes, on a character boundary.
fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Why a saved archive was not loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RestoreSkip {
    /// No rule of that name applies to the series' prefix any more.
    #[error("its rule is no longer configured for this prefix")]
    NoSuchRule,
}

#[cfg(test)]
mod tests;

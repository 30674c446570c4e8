//! The round-robin archive: one fixed ring of buckets for one (series, rule)
//! pair, consolidated at write time (DESIGN §2–3).
//!
//! Sync and clock-free: the caller passes every timestamp. It may use
//! `model` only; it must never do I/O, lock, or read the wall clock.
//! [`codec`] turns an archive into a versioned header plus fixed-size pages
//! for the snapshot store.

pub mod codec;

mod cells;

use crate::model::{Sample, Value, STALE_NAN_BITS};
use cells::{Cell, Cells};
use serde::{Deserialize, Serialize};

/// Buckets per snapshot page (DESIGN §9).
pub const PAGE_BUCKETS: usize = 64;

/// How samples landing in one bucket combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Consolidation {
    /// The newest arrival wins.
    Last,
    /// The smallest value.
    Min,
    /// The largest value.
    Max,
    /// The sum; integer overflow rejects the sample.
    Sum,
    /// The mean, kept as count + running mean.
    Avg,
}

/// Where an unaligned sample goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Split {
    /// Whole into the bucket that starts before it.
    Backward,
    /// Whole into the bucket that starts after it.
    Forward,
    /// Half to each neighbour (the earlier one gets the odd unit).
    Equal,
    /// Shared by distance: the nearer bucket gets more.
    Proportional,
}

/// Cell type of an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ValueSize {
    /// 12-bit unsigned values in 2-byte cells.
    Small,
    /// 28-bit unsigned values in 4-byte cells.
    Medium,
    /// 60-bit unsigned values in 8-byte cells.
    Large,
    /// f64 values in 8-byte cells.
    Float,
}

impl ValueSize {
    /// Value bits of an integer cell; `None` for floats.
    pub fn value_bits(self) -> Option<u32> {
        match self {
            ValueSize::Small => Some(12),
            ValueSize::Medium => Some(28),
            ValueSize::Large => Some(60),
            ValueSize::Float => None,
        }
    }

    /// Largest value an integer cell holds (also the largest avg count).
    pub fn max_value(self) -> u64 {
        (1u64 << self.value_bits().unwrap_or(60)) - 1
    }

    /// Most buckets an archive of this cell type may have.
    pub fn max_limit(self) -> u64 {
        match self {
            ValueSize::Small => u64::from(u16::MAX),
            _ => u64::from(u32::MAX),
        }
    }

    /// Whether cells hold integers.
    pub fn is_integer(self) -> bool {
        self != ValueSize::Float
    }
}

/// Whether a special sticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Strength {
    /// Replaced by the next number.
    Weak,
    /// Replaced only by another strong special.
    Strong,
}

/// A named non-numeric marker of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Special {
    /// Name returned on read (`timeout`, `error`).
    pub name: String,
    /// Weak or strong.
    pub strength: Strength,
}

/// Most specials a rule may have (tags 1..=14 of a cell).
pub const MAX_SPECIALS: usize = 14;

/// Longest rule timeframe: a year, so that `timeframe × 1000` (ms) and
/// bucket arithmetic never overflow. Config checks rules against it, the
/// codec checks saved headers against it.
pub const MAX_TIMEFRAME_SECS: u64 = 31_536_000;

/// Longest rule window (`limit × timeframe`): 100 years.
pub const MAX_WINDOW_SECS: u64 = 100 * 31_536_000;

/// Everything that fixes an archive's layout and semantics. Two archives
/// with equal shapes are interchangeable; a changed shape needs migration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    /// Consolidation of samples in one bucket.
    pub consolidation: Consolidation,
    /// Bucket width in seconds (≥ 1).
    pub timeframe_secs: u64,
    /// Number of buckets (≥ 1, ≤ `value_size.max_limit()`).
    pub limit: u32,
    /// Split of unaligned samples.
    pub split: Split,
    /// Cell type.
    pub value_size: ValueSize,
    /// Specials, index 1.. in order.
    pub specials: Vec<Special>,
}

impl Shape {
    fn timeframe_ms(&self) -> u64 {
        self.timeframe_secs * 1000
    }
}

/// Why an archive refused a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Reject {
    /// The bucket is older than the window.
    #[error("sample is older than the archive window")]
    TooOld,
    /// The value does not fit the cell (negative, fractional, too big, or
    /// not a float for a float cell).
    #[error("value out of range for the rule's value_size")]
    OutOfRange,
    /// A sum or an avg count would pass the cell's maximum.
    #[error("consolidation overflows the cell")]
    Overflow,
    /// The special index is 0 or beyond the rule's additional_values.
    #[error("unknown special index")]
    UnknownSpecial,
}

impl Reject {
    /// Label value used in self-metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::TooOld => "too_old",
            Reject::OutOfRange => "out_of_range",
            Reject::Overflow => "overflow",
            Reject::UnknownSpecial => "unknown_special",
        }
    }
}

/// What a bucket holds, as read back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reading<'a> {
    /// No data (or outside the window).
    Empty,
    /// A special, by name.
    Special(&'a str),
    /// An integer cell's value.
    Uint(u64),
    /// A float cell's value, or the mean of an avg archive.
    Float(f64),
}

impl Reading<'_> {
    /// The number, if the bucket holds one.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Reading::Uint(v) => Some(v as f64),
            Reading::Float(v) => Some(v),
            _ => None,
        }
    }
}

/// A part of a sample aimed at one bucket, already checked against the cell
/// type.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Part {
    Int(u64),
    Float(f64),
    Special(u8),
}

/// One bit per page. The first 64 pages' bits are inline, so marking a
/// page of an ordinary archive reads no other cache line than the
/// archive's own.
#[derive(Debug, Clone)]
struct DirtyPages {
    first: u64,
    rest: Box<[u64]>,
}

impl DirtyPages {
    fn new(pages: usize) -> DirtyPages {
        DirtyPages {
            first: 0,
            rest: vec![0; pages.div_ceil(64).saturating_sub(1)].into_boxed_slice(),
        }
    }

    fn mark(&mut self, page: usize) {
        let bit = 1 << (page % 64);
        match page / 64 {
            0 => self.first |= bit,
            word => self.rest[word - 1] |= bit,
        }
    }

    fn any(&self) -> bool {
        self.first != 0 || self.rest.iter().any(|w| *w != 0)
    }

    /// Number of words (64 pages each).
    fn words(&self) -> usize {
        1 + self.rest.len()
    }

    /// Word `i` (pages `64·i ..`), cleared.
    fn take_word(&mut self, i: usize) -> u64 {
        std::mem::take(match i {
            0 => &mut self.first,
            _ => &mut self.rest[i - 1],
        })
    }

    fn heap_bytes(&self) -> usize {
        self.rest.len() * 8
    }
}

/// One ring of `limit` buckets.
#[derive(Debug, Clone)]
pub struct Archive {
    shape: Shape,
    /// Bucket number (timestamp / timeframe) of the newest bucket seen.
    newest: Option<u64>,
    /// Ring position of the newest bucket.
    head: u32,
    cells: Cells,
    /// Running means, only for `avg`.
    means: Option<Box<[f64]>>,
    /// One bit per page changed since the last `take_dirty`.
    dirty_pages: DirtyPages,
    /// The header (rule, series, shape) must be saved: a new or migrated
    /// archive. A moved head dirties the head's page instead.
    header_dirty: bool,
    /// The saved copy has another shape: replace all its pages on save.
    rewrite: bool,
}

/// What a migration moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Old buckets written into the new archive.
    pub moved: u64,
    /// Old buckets the new shape could not take.
    pub dropped: u64,
}

impl Archive {
    /// An empty archive of the given shape; every bucket is empty.
    pub fn new(shape: Shape) -> Archive {
        let limit = shape.limit.max(1) as usize;
        let cells = Cells::new(cell_kind(&shape), limit);
        let means = (shape.consolidation == Consolidation::Avg)
            .then(|| vec![0.0; limit].into_boxed_slice());
        let pages = limit.div_ceil(PAGE_BUCKETS);
        Archive {
            shape,
            newest: None,
            head: 0,
            cells,
            means,
            dirty_pages: DirtyPages::new(pages),
            header_dirty: true,
            rewrite: false,
        }
    }

    /// The shape this archive was built for.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Bytes held in memory for buckets, means and dirty bits. Cells are
    /// held for the span written so far (see `Cells`), so this grows with
    /// writes up to the whole ring.
    pub fn memory_bytes(&self) -> usize {
        self.cells.heap_bytes()
            + self.means.as_ref().map_or(0, |m| m.len() * 8)
            + self.dirty_pages.heap_bytes()
            + std::mem::size_of::<Self>()
    }

    /// Bucket number of the newest bucket seen, if any.
    pub fn newest_bucket(&self) -> Option<u64> {
        self.newest
    }

    /// Timestamp (seconds) of the newest bucket seen, if any.
    pub fn newest_timestamp_secs(&self) -> Option<u64> {
        self.newest.map(|n| n * self.shape.timeframe_secs)
    }

    /// Oldest bucket number still inside the window.
    pub fn oldest_bucket(&self) -> Option<u64> {
        self.newest
            .map(|n| n.saturating_sub(u64::from(self.shape.limit) - 1))
    }

    /// Adds a sample: split, slide the window, consolidate.
    ///
    /// # Errors
    /// The first [`Reject`] met. When a split sample's first half was
    /// stored and its second half refused, the first half stays.
    pub fn update(&mut self, sample: Sample) -> Result<(), Reject> {
        self.update_with(sample, self.shape.split)
    }

    /// Reads the cell a sample at `timestamp_ms` lands in and changes
    /// nothing: called for each of a sample's archives before
    /// [`Archive::update`] runs on each, their cells load in parallel.
    pub fn prefetch(&self, timestamp_ms: u64) {
        let limit = u64::from(self.shape.limit.max(1));
        let bucket = timestamp_ms / self.shape.timeframe_ms();
        let pos = match self.newest {
            Some(newest) if bucket > newest => {
                (u64::from(self.head) + (bucket - newest) % limit) % limit
            }
            Some(newest) if newest - bucket < limit => self.position_back(newest - bucket) as u64,
            _ => u64::from(self.head),
        };
        self.cells.touch(pos as usize);
    }

    fn update_with(&mut self, sample: Sample, split: Split) -> Result<(), Reject> {
        let tf = self.shape.timeframe_ms();
        let t = sample.timestamp_ms;
        let lo = t / tf;
        let offset = t % tf;
        let part = self.check(sample.value)?;
        if offset == 0 || matches!(part, Part::Special(_)) {
            return self.apply(lo, part);
        }
        match split {
            Split::Backward => self.apply(lo, part),
            Split::Forward => self.apply(lo + 1, part),
            Split::Equal => {
                let (first, second) = match part {
                    Part::Int(v) => (Part::Int(v - v / 2), Part::Int(v / 2)),
                    Part::Float(v) => (Part::Float(v - v / 2.0), Part::Float(v / 2.0)),
                    Part::Special(_) => unreachable!("specials are never split"),
                };
                self.apply(lo, first)?;
                self.apply(lo + 1, second)
            }
            Split::Proportional => {
                let remaining = tf - offset;
                let (first, second) = match part {
                    Part::Int(v) => {
                        let share = (u128::from(v) * u128::from(remaining) / u128::from(tf)) as u64;
                        (Part::Int(share), Part::Int(v - share))
                    }
                    Part::Float(v) => {
                        let share = v * remaining as f64 / tf as f64;
                        (Part::Float(share), Part::Float(v - share))
                    }
                    Part::Special(_) => unreachable!("specials are never split"),
                };
                self.apply(lo, first)?;
                self.apply(lo + 1, second)
            }
        }
    }

    /// Checks a value against the cell type before anything changes.
    fn check(&self, value: Value) -> Result<Part, Reject> {
        let max = self.shape.value_size.max_value();
        match (value, self.shape.value_size.is_integer()) {
            (Value::Special(i), _) => {
                if i >= 1 && i <= self.shape.specials.len() as u64 {
                    Ok(Part::Special(i as u8))
                } else {
                    Err(Reject::UnknownSpecial)
                }
            }
            (Value::Uint(v), true) if v <= max => Ok(Part::Int(v)),
            (Value::Uint(_), true) => Err(Reject::OutOfRange),
            (Value::Float(v), true) => {
                // `max as f64` rounds up to 2^bits for large cells, so compare
                // the converted integer, not the float.
                if v.is_finite()
                    && v >= 0.0
                    && v.fract() == 0.0
                    && v < 18_446_744_073_709_551_616.0
                    && (v as u64) <= max
                {
                    Ok(Part::Int(v as u64))
                } else {
                    Err(Reject::OutOfRange)
                }
            }
            (Value::Uint(v), false) => Ok(Part::Float(v as f64)),
            (Value::Float(v), false) => Ok(Part::Float(v)),
        }
    }

    /// Ring position of `bucket`, sliding the window forward first if the
    /// bucket is newer than anything seen.
    fn position_for(&mut self, bucket: u64) -> Result<usize, Reject> {
        let limit = u64::from(self.shape.limit);
        let newest = match self.newest {
            None => {
                self.newest = Some(bucket);
                // Pages carry the head (codec v2): the head's page saves it.
                self.mark_dirty(self.head as usize);
                return Ok(self.head as usize);
            }
            Some(n) => n,
        };
        if bucket > newest {
            let gap = bucket - newest;
            if gap >= limit {
                self.clear_all();
            } else {
                for _ in 0..gap {
                    self.head = if u64::from(self.head) + 1 == limit {
                        0
                    } else {
                        self.head + 1
                    };
                    self.clear_position(self.head as usize);
                }
            }
            self.newest = Some(bucket);
            self.mark_dirty(self.head as usize);
            return Ok(self.head as usize);
        }
        let back = newest - bucket;
        if back >= limit {
            return Err(Reject::TooOld);
        }
        Ok(self.position_back(back))
    }

    /// Ring position `back` buckets before the newest (`back < limit`);
    /// a compare instead of a division on the write path.
    fn position_back(&self, back: u64) -> usize {
        let limit = u64::from(self.shape.limit);
        let head = u64::from(self.head);
        (if back <= head {
            head - back
        } else {
            head + limit - back
        }) as usize
    }

    /// Empties every bucket and gives the cells' memory back.
    fn clear_all(&mut self) {
        for pos in 0..self.shape.limit as usize {
            self.clear_position(pos);
        }
        self.cells.clear();
    }

    fn clear_position(&mut self, pos: usize) {
        if self.cells.get(pos) != Cell::Empty {
            self.cells.set(pos, Cell::Empty);
            self.mark_dirty(pos);
        }
    }

    fn mark_dirty(&mut self, pos: usize) {
        let page = pos / PAGE_BUCKETS;
        self.dirty_pages.mark(page);
    }

    fn apply(&mut self, bucket: u64, part: Part) -> Result<(), Reject> {
        let pos = self.position_for(bucket)?;
        let current = self.cells.get(pos);
        let next = self.consolidate(pos, current, part)?;
        if let Some((cell, mean)) = next {
            self.cells.set(pos, cell);
            if let (Some(means), Some(mean)) = (self.means.as_mut(), mean) {
                means[pos] = mean;
            }
            self.mark_dirty(pos);
        }
        Ok(())
    }

    /// The new cell (and mean, for avg) after `part` meets `current`;
    /// `None` when the cell stays as it is.
    fn consolidate(
        &self,
        pos: usize,
        current: Cell,
        part: Part,
    ) -> Result<Option<(Cell, Option<f64>)>, Reject> {
        let strong = |tag: u8| self.shape.specials[tag as usize - 1].strength == Strength::Strong;
        if let Part::Special(tag) = part {
            return Ok(match current {
                Cell::Empty => Some((Cell::Special(tag), None)),
                _ if strong(tag) => Some((Cell::Special(tag), None)),
                _ => None,
            });
        }
        let fresh = |part: Part| match part {
            Part::Int(v) if self.means.is_some() => (Cell::Num(1), Some(v as f64)),
            Part::Float(v) if self.means.is_some() => (Cell::Num(1), Some(v)),
            Part::Int(v) => (Cell::Num(v), None),
            Part::Float(v) => (Cell::Num(cells::float_to_bits(v)), None),
            Part::Special(_) => unreachable!("handled above"),
        };
        let old = match current {
            Cell::Special(tag) if strong(tag) => return Ok(None),
            Cell::Empty | Cell::Special(_) => return Ok(Some(fresh(part))),
            Cell::Num(old) => old,
        };
        let max = self.shape.value_size.max_value();
        if let Some(means) = &self.means {
            let count = old + 1;
            if count > max {
                return Err(Reject::Overflow);
            }
            let v = match part {
                Part::Int(v) => v as f64,
                Part::Float(v) => v,
                Part::Special(_) => unreachable!("handled above"),
            };
            let mean = means[pos] + (v - means[pos]) / count as f64;
            return Ok(Some((Cell::Num(count), Some(mean))));
        }
        let new = match part {
            Part::Int(v) => match self.shape.consolidation {
                Consolidation::Last => v,
                Consolidation::Min => old.min(v),
                Consolidation::Max => old.max(v),
                Consolidation::Sum => match old.checked_add(v) {
                    Some(s) if s <= max => s,
                    _ => return Err(Reject::Overflow),
                },
                Consolidation::Avg => unreachable!("avg keeps means"),
            },
            Part::Float(v) => {
                let a = cells::bits_to_float(old);
                cells::float_to_bits(match self.shape.consolidation {
                    Consolidation::Last => v,
                    Consolidation::Min => float_min(a, v),
                    Consolidation::Max => float_max(a, v),
                    Consolidation::Sum => a + v,
                    Consolidation::Avg => unreachable!("avg keeps means"),
                })
            }
            Part::Special(_) => unreachable!("handled above"),
        };
        Ok(Some((Cell::Num(new), None)))
    }

    /// What the bucket with this number holds; `Empty` outside the window.
    pub fn get(&self, bucket: u64) -> Reading<'_> {
        let (Some(newest), Some(oldest)) = (self.newest, self.oldest_bucket()) else {
            return Reading::Empty;
        };
        if bucket > newest || bucket < oldest {
            return Reading::Empty;
        }
        let pos = self.position_back(newest - bucket);
        self.read_position(pos)
    }

    fn read_position(&self, pos: usize) -> Reading<'_> {
        match self.cells.get(pos) {
            Cell::Empty => Reading::Empty,
            Cell::Special(tag) => Reading::Special(&self.shape.specials[tag as usize - 1].name),
            Cell::Num(n) => match &self.means {
                Some(means) => Reading::Float(means[pos]),
                None if self.shape.value_size.is_integer() => Reading::Uint(n),
                None => Reading::Float(cells::bits_to_float(n)),
            },
        }
    }

    /// Buckets `from..=to` (bucket numbers) with what they hold, ascending.
    pub fn range(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, Reading<'_>)> + '_ {
        (from..=to).map(move |b| (b, self.get(b)))
    }

    /// Calls `f(bucket, value)` for every bucket `from..=to` (bucket
    /// numbers, clamped to the window) that holds a number, ascending:
    /// what [`Archive::range`] gives as `Uint` or `Float`, without the
    /// per-bucket window check and cell dispatch. Query reads use it.
    pub fn for_each_number(&self, from: u64, to: u64, mut f: impl FnMut(u64, f64)) {
        let (Some(newest), Some(oldest)) = (self.newest, self.oldest_bucket()) else {
            return;
        };
        let (from, to) = (from.max(oldest), to.min(newest));
        if from > to {
            return;
        }
        let limit = self.shape.limit as usize;
        let first = self.position_back(newest - from);
        let count = (to - from) as usize + 1;
        // The buckets are one run of ring positions, wrapping at most once.
        let tail = count.min(limit - first);
        // Bucket of a position: `from + (pos - first)` before the wrap,
        // `from + (limit - first) + pos` after it.
        let runs = [
            (first..first + tail, from.wrapping_sub(first as u64)),
            (0..count - tail, from + (limit - first) as u64),
        ];
        for (positions, base) in runs {
            let bucket = |pos: usize| base.wrapping_add(pos as u64);
            match &self.means {
                Some(means) => self
                    .cells
                    .for_each_num(positions, |pos, _| f(bucket(pos), means[pos])),
                None if self.shape.value_size.is_integer() => self
                    .cells
                    .for_each_num(positions, |pos, n| f(bucket(pos), n as f64)),
                None => self
                    .cells
                    .for_each_num(positions, |pos, n| f(bucket(pos), cells::bits_to_float(n))),
            }
        }
    }

    /// Non-empty buckets in the window, ascending, as (timestamp secs, reading).
    /// Reads only the cells held (see `Cells`): an archive of 20 buckets in
    /// a ring of 8,640 costs 20 steps, not 8,640.
    pub fn filled(&self) -> impl Iterator<Item = (u64, Reading<'_>)> + '_ {
        let mut buckets = Vec::new();
        if let Some(newest) = self.newest {
            let (limit, head) = (u64::from(self.shape.limit), u64::from(self.head));
            self.cells.for_each_held(|pos, _| {
                let back = (head + limit - pos as u64) % limit;
                // A cell before bucket 0 (only a damaged record restores
                // one: found by the snapshot fuzz target) is not a bucket.
                if let Some(bucket) = newest.checked_sub(back) {
                    buckets.push((bucket, pos));
                }
            });
        }
        buckets.sort_unstable();
        let tf = self.shape.timeframe_secs;
        buckets
            .into_iter()
            .filter_map(move |(bucket, pos)| match self.read_position(pos) {
                Reading::Empty => None,
                r => Some((bucket * tf, r)),
            })
    }

    /// This archive's history re-bucketed into a new shape (a changed
    /// rule): see [`Archive::migrate_into`], into an empty archive of
    /// `shape`.
    pub fn migrate(&self, shape: Shape) -> (Archive, Migration) {
        let mut next = Archive::new(shape);
        let report = self.migrate_into(&mut next, None);
        (next, report)
    }

    /// Writes this archive's history into `next` (a changed rule, or a rule
    /// that newly applies to the series): every filled bucket starting
    /// before `before_secs` (all of them with `None`), oldest first, as a
    /// sample at the bucket's start, consolidated with `next`'s type and
    /// always split backward (a bucket goes whole into the new bucket that
    /// contains its start). Means of avg archives move as one sample each
    /// (rounded for integer cells); specials move by name. Buckets `next`
    /// cannot hold (older than its window, values out of its range,
    /// specials it does not define) are dropped and counted.
    ///
    /// `next` is then saved as a new archive: its header, the pages that
    /// hold something (only those: a migrated archive of 20 buckets writes
    /// one or two pages, not its whole ring), and the removal of every page
    /// saved for its rule before.
    pub fn migrate_into(&self, next: &mut Archive, before_secs: Option<u64>) -> Migration {
        let mut report = Migration::default();
        let end = before_secs.unwrap_or(u64::MAX);
        for (secs, reading) in self.filled().take_while(|(secs, _)| *secs < end) {
            let value = match reading {
                Reading::Uint(v) => Some(Value::Uint(v)),
                Reading::Float(v)
                    if next.shape.value_size.is_integer() && v.is_finite() && v >= 0.0 =>
                {
                    Some(Value::Float(v.round()))
                }
                Reading::Float(v) => Some(Value::Float(v)),
                Reading::Special(name) => next
                    .shape
                    .specials
                    .iter()
                    .position(|s| s.name == name)
                    .map(|i| Value::Special(i as u64 + 1)),
                Reading::Empty => None,
            };
            let sample = value.map(|value| Sample {
                timestamp_ms: secs.saturating_mul(1000),
                value,
            });
            match sample.map(|s| next.update_with(s, Split::Backward)) {
                Some(Ok(())) => report.moved += 1,
                _ => report.dropped += 1,
            }
        }
        next.header_dirty = true;
        next.rewrite = true;
        report
    }

    /// Timestamp (seconds) of the oldest non-empty bucket, if any.
    pub fn oldest_filled_secs(&self) -> Option<u64> {
        self.filled().next().map(|(secs, _)| secs)
    }

    /// Whether anything changed since the last `take_dirty`.
    pub fn is_dirty(&self) -> bool {
        self.header_dirty || self.dirty_pages.any()
    }

    /// Marks everything dirty, so the next save writes the whole archive.
    pub fn mark_all_dirty(&mut self) {
        self.header_dirty = true;
        let pages = (self.shape.limit as usize).div_ceil(PAGE_BUCKETS);
        for page in 0..pages {
            self.dirty_pages.mark(page);
        }
    }

    /// Marks dirty again what `dirty` held when [`Archive::take_dirty`]
    /// took it from an archive of `shape`, after a save that did not write
    /// it (stopped by shutdown): its header, its pages and the removal of
    /// older pages. Nothing is marked when this archive has another shape
    /// by now (migrated since: it is wholly dirty already).
    pub fn return_dirty(&mut self, shape: &Shape, dirty: &codec::Dirty) {
        if *shape != self.shape {
            return;
        }
        self.header_dirty |= dirty.header.is_some();
        self.rewrite |= dirty.replace_all;
        let pages = (self.shape.limit as usize).div_ceil(PAGE_BUCKETS);
        for (page, _) in &dirty.pages {
            if (*page as usize) < pages {
                self.dirty_pages.mark(*page as usize);
            }
        }
    }
}

fn cell_kind(shape: &Shape) -> ValueSize {
    // Avg cells hold a count; a float archive's count needs an integer cell.
    if shape.consolidation == Consolidation::Avg && shape.value_size == ValueSize::Float {
        ValueSize::Large
    } else {
        shape.value_size
    }
}

/// Min that prefers a number over NaN, as Prometheus' `min_over_time` does.
fn float_min(a: f64, b: f64) -> f64 {
    if b < a || a.is_nan() {
        b
    } else {
        a
    }
}

fn float_max(a: f64, b: f64) -> f64 {
    if b > a || a.is_nan() {
        b
    } else {
        a
    }
}

/// Whether a float is Prometheus' stale marker (accepted, never stored).
pub fn is_stale_marker(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

#[cfg(test)]
mod tests;

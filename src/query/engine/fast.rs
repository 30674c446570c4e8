//! A fast path for the most common dashboard shapes:
//! `f(sel[r])` and `agg [by|without (...)] (f(sel[r]))` where `f` is a range
//! function without scalar arguments and `agg` an aggregation without a
//! parameter. Instead of fetching every series' samples and re-walking the
//! AST at every step (cloning every series' labels and window per step),
//! the selection is streamed one series at a time
//! ([`Storage::select_each`]): while a series' samples are in cache, its
//! window slides with two pointers over every step (a series sampled at
//! the same times as the one before reuses its windows) and only the
//! range function's value per step is kept. The rows then meet their
//! groups in label order, on several threads for large tables, each
//! taking a share of the steps. Results are bit-identical to the general
//! evaluator: the same arithmetic runs in the same order. Anything unusual
//! (e.g. output label sets that collide) falls back to the general path.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::Instant;

use promql_parser::parser::token::*;
use promql_parser::parser::{Expr, LabelModifier, MatrixSelector};

use super::aggregate::group_labels;
use super::eval::{check_deadline, drop_name, Evaluator};
use super::functions::{range_value, Extrapolation, WindowSpan};
use super::plan::{selector_matchers, LabelKeys, LabelOrder};
use super::{
    is_stale_nan, EngineError, Labels, Matcher, Sample, Series, SeriesData, SharedLabels,
    SplitVisitor, Storage, Value,
};

fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unparen(&p.expr),
        other => other,
    }
}

/// Range functions taking only the range vector.
const FUNCS: &[&str] = &[
    "rate",
    "increase",
    "delta",
    "irate",
    "idelta",
    "changes",
    "resets",
    "deriv",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "present_over_time",
    "stddev_over_time",
    "stdvar_over_time",
];

struct Shape<'e> {
    func: &'static str,
    ms: &'e MatrixSelector,
    /// `(op, without, grouping)` of the enclosing aggregation, if any.
    agg: Option<(TokenId, bool, Vec<String>)>,
}

fn call_shape(e: &Expr) -> Option<(&'static str, &MatrixSelector)> {
    let Expr::Call(c) = unparen(e) else {
        return None;
    };
    if c.args.args.len() != 1 {
        return None;
    }
    let func = FUNCS.iter().copied().find(|f| *f == c.func.name)?;
    match unparen(&c.args.args[0]) {
        Expr::MatrixSelector(ms) => Some((func, ms)),
        _ => None,
    }
}

fn shape(e: &Expr) -> Option<Shape<'_>> {
    match unparen(e) {
        Expr::Aggregate(a) => {
            let op = a.op.id();
            if a.param.is_some()
                || !matches!(
                    op,
                    T_SUM | T_AVG | T_COUNT | T_MIN | T_MAX | T_GROUP | T_STDDEV | T_STDVAR
                )
            {
                return None;
            }
            let (func, ms) = call_shape(&a.expr)?;
            let (without, grouping) = match &a.modifier {
                Some(LabelModifier::Include(ls)) => (false, ls.labels.clone()),
                Some(LabelModifier::Exclude(ls)) => (true, ls.labels.clone()),
                None => (false, Vec::new()),
            };
            Some(Shape {
                func,
                ms,
                agg: Some((op, without, grouping)),
            })
        }
        other => {
            let (func, ms) = call_shape(other)?;
            Some(Shape {
                func,
                ms,
                agg: None,
            })
        }
    }
}

/// One aggregation group's running state, as `aggregate::aggregate` keeps it.
#[derive(Clone, Copy)]
struct Acc {
    value: f64,
    mean: f64,
    count: usize,
}

impl Acc {
    fn new(op: TokenId, v: f64) -> Acc {
        let mut a = Acc {
            value: v,
            mean: v,
            count: 1,
        };
        match op {
            T_STDDEV | T_STDVAR => a.value = 0.0,
            T_GROUP => a.value = 1.0,
            _ => {}
        }
        a
    }

    fn add(&mut self, op: TokenId, v: f64) {
        match op {
            T_SUM => self.value += v,
            T_AVG => {
                self.count += 1;
                if self.mean.is_infinite() {
                    if v.is_infinite() && (self.mean > 0.0) == (v > 0.0) {
                        return;
                    }
                    if !v.is_infinite() && !v.is_nan() {
                        return;
                    }
                }
                let c = self.count as f64;
                self.mean += v / c - self.mean / c;
            }
            T_COUNT => self.count += 1,
            T_MAX if self.value < v || self.value.is_nan() => self.value = v,
            T_MIN if self.value > v || self.value.is_nan() => self.value = v,
            T_STDDEV | T_STDVAR => {
                self.count += 1;
                let delta = v - self.mean;
                self.mean += delta / self.count as f64;
                self.value += delta * (v - self.mean);
            }
            _ => {} // T_GROUP
        }
    }

    fn finish(&self, op: TokenId) -> f64 {
        match op {
            T_AVG => self.mean,
            T_COUNT => self.count as f64,
            T_STDVAR => self.value / self.count as f64,
            T_STDDEV => (self.value / self.count as f64).sqrt(),
            _ => self.value,
        }
    }
}

/// Rows of `n_steps` values (and whether each is present), one row per
/// series in arrival order.
///
/// The rows are summed in label order, not in the order they arrive, so
/// the table is laid out for that: steps are grouped in blocks of up to
/// [`LANES`], and a block's values for one row fill one cache line next
/// to the same block of the next row. Adding up one block over all rows
/// then reads a block's worth of the table (it stays in cache) rather
/// than jumping between whole rows, and the sums of the steps in a block
/// advance side by side.
///
/// The number of series is not known before the scan, so rows go into
/// chunks, which double in size up to [`MAX_CHUNK_ROWS`]: a new chunk
/// never copies the rows already held (as growing one vector would), and
/// chunks of one size are reused by the allocator from query to query.
struct StepTable {
    n_steps: usize,
    /// Steps per block.
    lanes: usize,
    /// Index of each chunk's first row.
    starts: Vec<usize>,
    chunks: Vec<Chunk>,
    len: usize,
}

/// Steps per block of a [`StepTable`]: eight values, one cache line.
const LANES: usize = 8;

/// Up to `capacity_rows` rows of a [`StepTable`], block by block: the
/// value of row `r` at step `b * lanes + j` is at
/// `(b * capacity_rows + r) * lanes + j`.
struct Chunk {
    rows: usize,
    capacity_rows: usize,
    values: Vec<f64>,
    present: Vec<bool>,
}

/// Rows in a table's first chunk.
const FIRST_CHUNK_ROWS: usize = 16;
/// Rows in a table's largest chunks.
const MAX_CHUNK_ROWS: usize = 256;
/// Values in a table's largest chunks (512 KiB), whatever the step count.
const MAX_CHUNK_VALUES: usize = 1 << 16;

impl StepTable {
    fn new(n_steps: usize) -> StepTable {
        StepTable {
            n_steps,
            // A power of two: rows find a step's block with a shift.
            lanes: n_steps.clamp(1, LANES).next_power_of_two(),
            starts: Vec::new(),
            chunks: Vec::new(),
            len: 0,
        }
    }

    fn n_blocks(&self) -> usize {
        self.n_steps.div_ceil(self.lanes)
    }

    /// A new row, all absent.
    fn push_row(&mut self) -> RowMut<'_> {
        let row_values = self.n_blocks() * self.lanes;
        if self.chunks.last().is_none_or(|c| c.rows == c.capacity_rows) {
            let rows = self
                .len
                .clamp(FIRST_CHUNK_ROWS, MAX_CHUNK_ROWS)
                .min((MAX_CHUNK_VALUES / row_values.max(1)).max(1));
            self.starts.push(self.len);
            // Zeroed: rows start absent.
            self.chunks.push(Chunk {
                rows: 0,
                capacity_rows: rows,
                values: vec![0.0; rows * row_values],
                present: vec![false; rows * row_values],
            });
        }
        self.len += 1;
        let last = self.chunks.len() - 1;
        let chunk = &mut self.chunks[last];
        chunk.rows += 1;
        RowMut {
            row: chunk.rows - 1,
            capacity_rows: chunk.capacity_rows,
            lanes: self.lanes,
            values: &mut chunk.values,
            present: &mut chunk.present,
        }
    }

    /// Row `i`.
    fn row(&self, i: usize) -> RowRef<'_> {
        let c = self.starts.partition_point(|&s| s <= i) - 1;
        RowRef {
            chunk: &self.chunks[c],
            row: i - self.starts[c],
            lanes: self.lanes,
        }
    }

    /// Adds to `counts[k]` the rows with a value at step `k`.
    fn count_present(&self, counts: &mut [usize]) {
        for chunk in &self.chunks {
            let block_values = chunk.capacity_rows * self.lanes;
            for (b, block) in chunk.present.chunks(block_values).enumerate() {
                let counts = &mut counts[b * self.lanes..];
                for row in block[..chunk.rows * self.lanes].chunks(self.lanes) {
                    for (count, &p) in counts.iter_mut().zip(row) {
                        *count += usize::from(p);
                    }
                }
            }
        }
    }
}

/// Step `k`'s block and lane: `k / lanes` and `k % lanes`, for a power
/// of two without dividing.
#[inline]
fn block_lane(k: usize, lanes: usize) -> (usize, usize) {
    (k >> lanes.trailing_zeros(), k & (lanes - 1))
}

/// One row of a [`StepTable`] being written.
struct RowMut<'t> {
    row: usize,
    capacity_rows: usize,
    lanes: usize,
    values: &'t mut [f64],
    present: &'t mut [bool],
}

impl RowMut<'_> {
    /// Sets the value at step `k`.
    #[inline]
    fn set(&mut self, k: usize, v: f64) {
        let (b, j) = block_lane(k, self.lanes);
        let at = (b * self.capacity_rows + self.row) * self.lanes + j;
        self.values[at] = v;
        self.present[at] = true;
    }
}

/// One row of a [`StepTable`].
#[derive(Clone, Copy)]
struct RowRef<'t> {
    chunk: &'t Chunk,
    row: usize,
    lanes: usize,
}

impl<'t> RowRef<'t> {
    /// The value at step `k`, if there is one.
    fn get(&self, k: usize) -> Option<f64> {
        let (b, j) = block_lane(k, self.lanes);
        let (values, present) = self.block(b);
        present[j].then(|| values[j])
    }

    /// The values of block `b` (steps from `b * lanes` on) and whether
    /// each is present: `lanes` of them, past the last step all absent.
    #[inline]
    fn block(&self, b: usize) -> (&'t [f64], &'t [bool]) {
        let at = (b * self.chunk.capacity_rows + self.row) * self.lanes;
        (
            &self.chunk.values[at..][..self.lanes],
            &self.chunk.present[at..][..self.lanes],
        )
    }
}

/// What streaming the selection kept: per series its labels and, for
/// every step, the range function's value (if it has one).
struct Rows {
    labels: Vec<SharedLabels>,
    /// One row per series, in arrival order.
    table: StepTable,
    /// Samples in each step's windows, over all series.
    n_points: Vec<usize>,
    /// The series' label sets, encoded for sorting while at hand.
    keys: LabelKeys,
}

/// The rows of every part of a split selection, in part order: series `i`
/// overall is in the first part whose series reach past `i`.
struct SplitRows {
    labels: Vec<SharedLabels>,
    keys: LabelKeys,
    parts: Vec<Rows>,
    /// Index of each part's first series.
    starts: Vec<usize>,
    n_points: Vec<usize>,
}

impl SplitRows {
    fn new(mut parts: Vec<Rows>, n_steps: usize) -> SplitRows {
        let mut n_points = vec![0; n_steps];
        let mut keys = LabelKeys::default();
        for part in &mut parts {
            keys.append(std::mem::take(&mut part.keys));
        }
        let mut starts = Vec::with_capacity(parts.len());
        let mut labels = Vec::with_capacity(parts.iter().map(|p| p.labels.len()).sum());
        for part in &parts {
            starts.push(labels.len());
            labels.extend_from_slice(&part.labels);
            for (total, n) in n_points.iter_mut().zip(&part.n_points) {
                *total += n;
            }
        }
        SplitRows {
            labels,
            keys,
            parts,
            starts,
            n_points,
        }
    }

    /// Series `i`'s row.
    fn row(&self, i: usize) -> RowRef<'_> {
        let p = self.starts.partition_point(|&s| s <= i) - 1;
        self.parts[p].table.row(i - self.starts[p])
    }
}

/// Streams one part of a selection into [`Rows`]: the range function at
/// every step of each series, while its samples are in cache. Holds only
/// copies of the evaluator's settings, so parts can run on other threads.
struct RowBuilder<'s> {
    func: &'static str,
    steps: &'s [(i64, i64, i64)],
    deadline: Option<Instant>,
    max_samples: usize,
    rows: Rows,
    /// Buffers reused from series to series.
    unstale: Vec<(i64, f64)>,
    resets: Vec<usize>,
    /// Per step, the last window span extrapolated and its figures: over
    /// regularly spaced samples, series share one span at each step.
    spans: Vec<Option<(WindowSpan, Extrapolation)>>,
    /// The last series' sample times and windows.
    grid: Grid,
    failed: Option<EngineError>,
    too_many: bool,
}

impl<'s> RowBuilder<'s> {
    fn new(
        func: &'static str,
        steps: &'s [(i64, i64, i64)],
        deadline: Option<Instant>,
        max_samples: usize,
    ) -> RowBuilder<'s> {
        RowBuilder {
            func,
            steps,
            deadline,
            max_samples,
            rows: Rows {
                labels: Vec::new(),
                table: StepTable::new(steps.len()),
                n_points: vec![0; steps.len()],
                keys: LabelKeys::default(),
            },
            unstale: Vec::new(),
            resets: Vec::new(),
            spans: vec![None; steps.len()],
            grid: Grid::default(),
            failed: None,
            too_many: false,
        }
    }

    /// Takes in one series; false to stop the selection.
    fn visit(&mut self, s: &SeriesData) -> bool {
        self.row(s).unwrap_or_else(|e| {
            self.failed = Some(e);
            false
        })
    }

    fn row(&mut self, s: &SeriesData) -> Result<bool, EngineError> {
        let steps = self.steps;
        let n_steps = steps.len();
        let is_counter_rate = matches!(self.func, "rate" | "increase");
        let is_rate = self.func == "rate";
        let rows = &mut self.rows;
        if rows.labels.len().is_multiple_of(256) {
            check_deadline(self.deadline)?;
        }
        if (rows.labels.len() + 1).saturating_mul(n_steps) > self.max_samples {
            // The general path stops at the limit as it goes; this one
            // would hold every output first.
            self.too_many = true;
            return Ok(false);
        }
        let pts: &[(i64, f64)] = if any_stale(&s.samples) {
            self.unstale.clear();
            self.unstale
                .extend(s.samples.iter().filter(|(_, v)| !is_stale_nan(*v)));
            &self.unstale
        } else {
            &s.samples
        };
        let resets = &mut self.resets;
        resets.clear();
        if is_counter_rate && any_decrease(pts) {
            resets.extend((1..pts.len()).filter(|&i| pts[i].1 < pts[i - 1].1));
        }
        rows.labels.push(s.labels.clone());
        rows.keys.push_shared(&s.labels);
        let mut out = rows.table.push_row();
        // Series of one metric are mostly sampled at the same times: then
        // their windows are the last series' ones.
        let same_times = pts.len() == self.grid.times.len()
            && pts
                .iter()
                .zip(&self.grid.times)
                .fold(true, |same, (p, &t)| same & (p.0 == t));
        if !same_times {
            self.grid.times.clear();
            self.grid.times.extend(pts.iter().map(|p| p.0));
            windows(pts, steps, &mut self.grid.windows);
            self.grid.extrapolations.clear();
            self.grid.extrapolations.resize(n_steps, None);
        }
        let grid = &mut self.grid;
        let windows = grid.windows.iter().zip(&mut grid.extrapolations);
        let cached = windows.zip(&mut self.spans);
        for ((k, &(t, wstart, te)), ((&(lo, hi), grid_ex), last_span)) in
            steps.iter().enumerate().zip(cached)
        {
            let w = &pts[lo..hi];
            if w.is_empty() {
                continue;
            }
            rows.n_points[k] += w.len();
            let v = if is_counter_rate {
                if w.len() < 2 {
                    None
                } else {
                    let mut result = w[w.len() - 1].1 - w[0].1;
                    let from = resets.partition_point(|&i| i <= lo);
                    for &i in &resets[from..] {
                        if i >= hi {
                            break;
                        }
                        result += pts[i - 1].1;
                    }
                    let ex = match *grid_ex {
                        Some(ex) => ex,
                        None => {
                            let span =
                                WindowSpan::new(w[0].0, w[w.len() - 1].0, w.len(), wstart, te);
                            let ex = match *last_span {
                                Some((last, ex)) if last == span => ex,
                                _ => {
                                    let ex = Extrapolation::new(span);
                                    *last_span = Some((span, ex));
                                    ex
                                }
                            };
                            *grid_ex = Some(ex);
                            ex
                        }
                    };
                    Some(ex.apply(result, w[0].1, true, is_rate))
                }
            } else {
                range_value(self.func, w, wstart, te, t, &[])?
            };
            if let Some(v) = v {
                out.set(k, v);
            }
        }
        Ok(true)
    }
}

/// Sample times and, per step, the window over them.
#[derive(Default)]
struct Grid {
    times: Vec<i64>,
    /// Per step, the window's samples as `lo..hi`.
    windows: Vec<(usize, usize)>,
    /// Per step, the window's extrapolation figures once worked out: they
    /// depend on the sample times alone.
    extrapolations: Vec<Option<Extrapolation>>,
}

/// Each step's window over `pts` as `lo..hi` (samples with `wstart <= t
/// <= te`), into `out`.
fn windows(pts: &[(i64, f64)], steps: &[(i64, i64, i64)], out: &mut Vec<(usize, usize)>) {
    out.clear();
    let (mut lo, mut hi) = (0usize, 0usize);
    // How far each end of the window moved at the last step: over
    // regularly spaced samples, it moves as far at the next one.
    let (mut lo_moved, mut hi_moved) = (0usize, 0usize);
    for &(_, wstart, te) in steps {
        // Windows only move forward with t (or stay, with `@`).
        if lo > 0 && pts[lo - 1].0 >= wstart || hi > 0 && pts[hi - 1].0 > te {
            lo = 0;
            hi = 0;
        }
        let (lo_was, hi_was) = (lo, hi);
        // Samples are in ascending order: if the one before the guess is
        // still before the window, so are all before it.
        let guess = (lo + lo_moved).min(pts.len());
        if guess > lo && pts[guess - 1].0 < wstart {
            lo = guess;
        }
        while lo < pts.len() && pts[lo].0 < wstart {
            lo += 1;
        }
        hi = hi.max(lo);
        let guess = (hi + hi_moved).min(pts.len());
        if guess > hi && pts[guess - 1].0 <= te {
            hi = guess;
        }
        while hi < pts.len() && pts[hi].0 <= te {
            hi += 1;
        }
        (lo_moved, hi_moved) = (lo - lo_was, hi - hi_was);
        out.push((lo, hi));
    }
}

/// Whether any sample is a staleness marker. No early exit, so that the
/// compiler can compare several samples at once: most series have none.
fn any_stale(pts: &[(i64, f64)]) -> bool {
    pts.iter().fold(false, |any, &(_, v)| any | is_stale_nan(v))
}

/// Whether any sample is below the one before (a counter reset), in the
/// same way as [`any_stale`]: most windows of most series have none.
fn any_decrease(pts: &[(i64, f64)]) -> bool {
    let next = pts.iter().skip(1);
    pts.iter()
        .zip(next)
        .fold(false, |any, (a, b)| any | (b.1 < a.1))
}

/// How many parts a selection is split into: one per core, at most four.
fn split_parts() -> usize {
    static PARTS: OnceLock<usize> = OnceLock::new();
    *PARTS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 4)
    })
}

impl Evaluator<'_> {
    /// [`Evaluator::run_range`] for the shapes this module handles, read
    /// straight from `storage`; `Ok(None)` when `expr` is not one of them.
    pub(crate) fn fast_range(
        &self,
        storage: &dyn Storage,
        expr: &Expr,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Option<Value>, EngineError> {
        self.fast(storage, expr, start, end, step, true)
    }

    /// [`Evaluator::run_instant`] for the shapes this module handles, read
    /// straight from `storage`; `Ok(None)` when `expr` is not one of them.
    pub(crate) fn fast_instant(
        &self,
        storage: &dyn Storage,
        expr: &Expr,
        t: i64,
    ) -> Result<Option<Value>, EngineError> {
        self.fast(storage, expr, t, t, 1, false)
    }

    fn fast(
        &self,
        storage: &dyn Storage,
        expr: &Expr,
        start: i64,
        end: i64,
        step: i64,
        range_mode: bool,
    ) -> Result<Option<Value>, EngineError> {
        let Some(shape) = shape(expr) else {
            return Ok(None);
        };
        // The 3.x `{a="1" or b="2"}` form: the general path merges the
        // alternatives.
        let [matchers] = selector_matchers(&shape.ms.vs)
            .try_into()
            .unwrap_or_else(|_: Vec<_>| [Vec::new()]);
        if matchers.is_empty() {
            return Ok(None);
        }
        let range_ms = shape.ms.range.as_millis() as i64;
        // Step times, and each step's window [wstart, te].
        let mut steps: Vec<(i64, i64, i64)> = Vec::new();
        let mut t = start;
        while t <= end {
            let te = self.selector_time(&shape.ms.vs.at, &shape.ms.vs.offset, t);
            steps.push((t, te - range_ms, te));
            t += step;
        }
        let Some(rows) = self.stream_rows(storage, &shape, &matchers, &steps)? else {
            return Ok(None);
        };
        self.combine(&shape, &steps, rows, range_mode)
    }

    /// Reads the selection one series at a time, split in parts that the
    /// storage may scan at once on separate threads, and works out the
    /// range function for every step while the series' samples are in
    /// cache: no series' samples are held after its turn. `Ok(None)` when
    /// the rows would pass the sample limit (the general path reports it).
    fn stream_rows(
        &self,
        storage: &dyn Storage,
        shape: &Shape<'_>,
        matchers: &[Matcher],
        steps: &[(i64, i64, i64)],
    ) -> Result<Option<SplitRows>, EngineError> {
        let max_samples = self.engine.max_samples;
        let (from, to) = steps
            .iter()
            .fold((i64::MAX, i64::MIN), |(f, t), &(_, ws, te)| {
                (f.min(ws), t.max(te))
            });
        let mut builders: Vec<RowBuilder<'_>> = (0..split_parts())
            .map(|_| RowBuilder::new(shape.func, steps, self.deadline(), max_samples))
            .collect();
        let mut visits: Vec<_> = builders
            .iter_mut()
            .map(|b| |s: &SeriesData| b.visit(s))
            .collect();
        let mut visitors: Vec<&mut SplitVisitor<'_>> = visits
            .iter_mut()
            .map(|v| v as &mut SplitVisitor<'_>)
            .collect();
        storage
            .select_each_split(matchers, from, to, &mut visitors)
            .map_err(super::plan::storage_error)?;
        drop(visitors);
        drop(visits);
        let mut parts = Vec::with_capacity(builders.len());
        let mut too_many = false;
        for b in builders {
            if let Some(e) = b.failed {
                return Err(e);
            }
            too_many |= b.too_many;
            parts.push(b.rows);
        }
        let rows = SplitRows::new(parts, steps.len());
        // Each part checked only its own rows against the limit.
        too_many |= rows.labels.len().saturating_mul(steps.len()) > max_samples;
        Ok((!too_many).then_some(rows))
    }

    /// The rows in label order (as the general path sees the series)
    /// through the aggregation, checked against the limits, as the result.
    /// `Ok(None)` when output label sets collide.
    fn combine(
        &self,
        shape: &Shape<'_>,
        steps: &[(i64, i64, i64)],
        rows: SplitRows,
        range_mode: bool,
    ) -> Result<Option<Value>, EngineError> {
        let n_steps = steps.len();
        let labels = &rows.labels;
        let LabelOrder { order, distinct } = rows.keys.order();

        let keeps_name = shape.func == "last_over_time";
        let fn_labels_of = |i: usize| -> Labels {
            if keeps_name {
                labels[i].to_vec()
            } else {
                drop_name(&labels[i].to_vec())
            }
        };
        // A collision of output labels would be an error (or not)
        // depending on the step: leave that to the general path. Distinct
        // series that share one metric name cannot collide once it is
        // dropped, which spares building and hashing every label set.
        if !(distinct && (keeps_name || one_metric_name(labels))) {
            let fn_labels: Vec<Labels> = (0..labels.len()).map(fn_labels_of).collect();
            let mut seen: HashSet<&Labels> = HashSet::with_capacity(fn_labels.len());
            if !fn_labels.iter().all(|l| seen.insert(l)) {
                return Ok(None);
            }
        }

        // Output label sets (aggregations), and each series' output index,
        // numbered in label order.
        let mut out_labels: Vec<Labels> = Vec::new();
        let mut series_out: Vec<usize> = (0..labels.len()).collect();
        match &shape.agg {
            None => {}
            Some((_, false, grouping)) if grouping.is_empty() => {
                // `agg(...)` or `agg by ()`: one group without labels.
                if !labels.is_empty() {
                    out_labels.push(Labels::new());
                }
                series_out.fill(0);
            }
            Some((_, without, grouping)) => {
                let mut index: HashMap<Labels, usize> = HashMap::new();
                for &i in &order {
                    let key = group_labels(&fn_labels_of(i), *without, grouping);
                    let next = index.len();
                    series_out[i] = *index.entry(key).or_insert_with_key(|key| {
                        out_labels.push(key.clone());
                        next
                    });
                }
            }
        }
        let op = shape.agg.as_ref().map(|(op, _, _)| *op);
        let n_out = match op {
            None => labels.len(),
            Some(_) => out_labels.len(),
        };

        let mut out_count = vec![0usize; n_steps];
        let mut accs: Vec<Option<Acc>> = Vec::new();
        let mut appeared: Vec<usize> = Vec::new();
        match op {
            None => {
                for part in &rows.parts {
                    part.table.count_present(&mut out_count);
                }
            }
            Some(op) => {
                let ordered: Vec<OrderedRow<'_>> = order
                    .iter()
                    .map(|&i| OrderedRow {
                        row: rows.row(i),
                        out: series_out[i],
                    })
                    .collect();
                accs = vec![None; n_out * n_steps];
                let all = StepAccs {
                    first_step: 0,
                    accs: &mut accs,
                    out_count: &mut out_count,
                    appeared: &mut appeared,
                };
                accumulate(op, &ordered, n_out, all);
            }
        }

        // The general path's limits: samples held by a step plus those
        // already output.
        let max_samples = self.engine.max_samples;
        let mut output_samples = 0usize;
        for (&n_points, &outs) in rows.n_points.iter().zip(&out_count) {
            if n_points > max_samples {
                return Err(EngineError::TooManySamples("query execution"));
            }
            if range_mode {
                output_samples += outs;
                if n_points + output_samples > max_samples {
                    return Err(EngineError::TooManySamples("query execution"));
                }
            }
        }

        let labels_of = |o: usize| -> Labels {
            match op {
                None => fn_labels_of(o),
                Some(_) => out_labels[o].clone(),
            }
        };
        // Output `o`'s value at step `k`, if it has one.
        let value_at = |o: usize, k: usize| -> Option<f64> {
            match op {
                None => rows.row(o).get(k),
                Some(op) => accs[k * n_out + o].map(|a| a.finish(op)),
            }
        };
        Ok(Some(if range_mode {
            let mut out: Vec<Series> = (0..n_out)
                .filter_map(|o| {
                    let points: Vec<(i64, f64)> = steps
                        .iter()
                        .enumerate()
                        .filter_map(|(k, &(t, _, _))| value_at(o, k).map(|v| (t, v)))
                        .collect();
                    (!points.is_empty()).then(|| Series {
                        labels: labels_of(o),
                        points,
                    })
                })
                .collect();
            out.sort_by(|a, b| a.labels.cmp(&b.labels));
            Value::Matrix(out)
        } else {
            let outs: Vec<usize> = match op {
                None => order,
                Some(_) => appeared,
            };
            let t = steps.first().map_or(0, |s| s.0);
            Value::Vector(
                outs.into_iter()
                    .filter_map(|o| {
                        value_at(o, 0).map(|v| Sample {
                            labels: labels_of(o),
                            t,
                            v,
                        })
                    })
                    .collect(),
            )
        }))
    }
}

/// One series' row as [`accumulate`] takes it.
struct OrderedRow<'r> {
    row: RowRef<'r>,
    /// The output (aggregation group) it adds to.
    out: usize,
}

/// Fewest values (series times steps) worth splitting [`accumulate`]
/// over threads for.
const SPLIT_MIN_VALUES: usize = 1 << 17;

/// The accumulators of a run of steps, which [`accumulate`] fills.
struct StepAccs<'a> {
    /// Index of the first step, a multiple of the table's lanes.
    first_step: usize,
    /// `accs[k * n_out + out]`: output `out` at step `first_step + k`.
    accs: &'a mut [Option<Acc>],
    /// How many outputs have a value, at each step.
    out_count: &'a mut [usize],
    /// Each output when it first has a value, step by step.
    appeared: &'a mut Vec<usize>,
}

/// Adds every row's values to its output's accumulator, rows in the
/// order given: per step, series meet their group in label order, so
/// sums add up in the same order as the general path. Large tables are
/// split by blocks of steps over threads: each step's order of additions
/// stays the same.
fn accumulate(op: TokenId, ordered: &[OrderedRow<'_>], n_out: usize, all: StepAccs<'_>) {
    let Some(first) = ordered.first() else {
        return;
    };
    let lanes = first.row.lanes;
    let n_steps = all.out_count.len();
    let n_blocks = n_steps.div_ceil(lanes);
    let parts = if ordered.len().saturating_mul(n_steps) < SPLIT_MIN_VALUES || n_out == 0 {
        1
    } else {
        split_parts().min(n_blocks)
    };
    if parts <= 1 {
        accumulate_steps(op, ordered, n_out, all);
        return;
    }
    let per_part = n_blocks.div_ceil(parts) * lanes;
    let mut appeared_parts: Vec<Vec<usize>> = vec![Vec::new(); parts];
    let mut step_accs = all
        .accs
        .chunks_mut(per_part * n_out)
        .zip(all.out_count.chunks_mut(per_part))
        .zip(&mut appeared_parts)
        .enumerate()
        .map(|(part, ((accs, out_count), appeared))| StepAccs {
            first_step: part * per_part,
            accs,
            out_count,
            appeared,
        });
    std::thread::scope(|scope| {
        let first = step_accs.next();
        for part in step_accs {
            scope.spawn(move || accumulate_steps(op, ordered, n_out, part));
        }
        if let Some(part) = first {
            accumulate_steps(op, ordered, n_out, part);
        }
    });
    all.appeared.extend(appeared_parts.into_iter().flatten());
}

/// [`accumulate`] for one run of steps, on the calling thread.
fn accumulate_steps(op: TokenId, ordered: &[OrderedRow<'_>], n_out: usize, part: StepAccs<'_>) {
    // `sum` is the common case: spelled out, its addition is inlined
    // rather than matched on `op` for every value.
    match op {
        T_SUM => accumulate_with(op, ordered, n_out, part, |a, v| a.add(T_SUM, v)),
        _ => accumulate_with(op, ordered, n_out, part, |a, v| a.add(op, v)),
    }
}

fn accumulate_with(
    op: TokenId,
    ordered: &[OrderedRow<'_>],
    n_out: usize,
    part: StepAccs<'_>,
    add: impl Fn(&mut Acc, f64),
) {
    let Some(first) = ordered.first() else {
        return;
    };
    let lanes = first.row.lanes;
    let n_steps = part.out_count.len();
    let first_block = part.first_step / lanes;
    for b in 0..n_steps.div_ceil(lanes) {
        let k0 = b * lanes;
        let width = lanes.min(n_steps - k0);
        for row in ordered {
            let (values, present) = row.row.block(first_block + b);
            for (j, (&v, &p)) in values[..width].iter().zip(present).enumerate() {
                if !p {
                    continue;
                }
                match &mut part.accs[(k0 + j) * n_out + row.out] {
                    Some(a) => add(a, v),
                    slot @ None => {
                        *slot = Some(Acc::new(op, v));
                        part.out_count[k0 + j] += 1;
                        part.appeared.push(row.out);
                    }
                }
            }
        }
    }
}

/// Whether every series has the same `__name__` (or none has one): then
/// dropping it keeps distinct label sets distinct.
fn one_metric_name(labels: &[SharedLabels]) -> bool {
    labels.first().is_none_or(|first| {
        let name = first.metric_name();
        labels.iter().all(|l| l.metric_name() == name)
    })
}

//! The evaluator: walks the AST once per evaluation time over the series
//! the planner read, like Prometheus's engine evaluates each step.

use std::cell::Cell;
use std::collections::HashMap;
use std::time::Instant;

use promql_parser::parser::{Expr, MatrixSelector, SubqueryExpr, VectorSelector};

use super::plan::{self, SelectorData};
use super::{is_stale_nan, Engine, EngineError, Labels, Sample, Series, Storage, Value};

/// An intermediate value at one evaluation time.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Scalar(f64),
    Str(String),
    Vector(Vec<Sample>),
    Matrix(Vec<Series>),
}

impl Val {
    fn type_name(&self) -> &'static str {
        match self {
            Val::Scalar(_) => "scalar",
            Val::Str(_) => "string",
            Val::Vector(_) => "instant vector",
            Val::Matrix(_) => "range vector",
        }
    }
}

/// A range-vector argument: its series and the window it covers.
pub(crate) struct RangeArg {
    pub series: Vec<Series>,
    /// Start of the window (ms, inclusive).
    pub start: i64,
    /// End of the window (ms, inclusive).
    pub end: i64,
}

pub(crate) struct Evaluator<'a> {
    pub(crate) engine: &'a Engine,
    pub(crate) query_start: i64,
    pub(crate) query_end: i64,
    data: SelectorData,
    deadline: Option<Instant>,
    /// Samples held by the current step (selectors, subqueries).
    step_samples: Cell<usize>,
    /// Samples already in the range query's output.
    output_samples: Cell<usize>,
    ticks: Cell<u32>,
}

/// A timeout error once `deadline` has passed.
pub(crate) fn check_deadline(deadline: Option<Instant>) -> Result<(), EngineError> {
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return Err(EngineError::Timeout("expression evaluation"));
    }
    Ok(())
}

pub(crate) const DUPLICATE_LABELSET: &str = "vector cannot contain metrics with the same labelset";

impl<'a> Evaluator<'a> {
    pub(crate) fn new(
        engine: &'a Engine,
        storage: &dyn Storage,
        expr: &Expr,
        query_start: i64,
        query_end: i64,
        _step_ms: i64,
        deadline: Option<Instant>,
    ) -> Result<Self, EngineError> {
        let data = plan::fetch(
            storage,
            expr,
            query_start,
            query_end,
            engine.lookback_delta_ms,
        )?;
        Ok(Evaluator {
            data,
            ..Evaluator::unfetched(engine, query_start, query_end, deadline)
        })
    }

    /// An evaluator that has read nothing yet: the fast path streams its
    /// selection itself.
    pub(crate) fn unfetched(
        engine: &'a Engine,
        query_start: i64,
        query_end: i64,
        deadline: Option<Instant>,
    ) -> Self {
        Evaluator {
            engine,
            query_start,
            query_end,
            data: SelectorData::new(),
            deadline,
            step_samples: Cell::new(0),
            output_samples: Cell::new(0),
            ticks: Cell::new(0),
        }
    }

    pub(crate) fn run_instant(&self, expr: &Expr, t: i64) -> Result<Value, EngineError> {
        self.check_deadline()?;
        let v = self.eval(expr, t)?;
        Ok(match v {
            Val::Scalar(x) => Value::Scalar(t, x),
            Val::Str(s) => Value::String(t, s),
            Val::Vector(vs) => {
                check_duplicates(&vs)?;
                Value::Vector(vs.into_iter().map(|s| Sample { t, ..s }).collect())
            }
            Val::Matrix(mut m) => {
                m.sort_by(|a, b| a.labels.cmp(&b.labels));
                Value::Matrix(m)
            }
        })
    }

    pub(crate) fn run_range(
        &self,
        expr: &Expr,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Value, EngineError> {
        let mut index: HashMap<Labels, usize> = HashMap::new();
        let mut out: Vec<Series> = Vec::new();
        let mut t = start;
        while t <= end {
            self.check_deadline()?;
            self.step_samples.set(0);
            match self.eval(expr, t)? {
                Val::Scalar(x) => {
                    push_point(&mut index, &mut out, Vec::new(), t, x);
                    self.add_output(1)?;
                }
                Val::Vector(vs) => {
                    check_duplicates(&vs)?;
                    self.step_samples.set(0);
                    for s in vs {
                        push_point(&mut index, &mut out, s.labels, t, s.v);
                        self.add_output(1)?;
                    }
                }
                other => {
                    return Err(EngineError::BadData(format!(
                        "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                        other.type_name()
                    )))
                }
            }
            t += step;
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(Value::Matrix(out))
    }

    pub(crate) fn check_deadline(&self) -> Result<(), EngineError> {
        check_deadline(self.deadline)
    }

    /// When evaluation must stop, if ever.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Accounts `n` more points in the range query's output.
    fn add_output(&self, n: usize) -> Result<(), EngineError> {
        self.output_samples.set(self.output_samples.get() + n);
        self.check_samples(0)
    }

    /// Accounts `n` more samples held by this step.
    pub(crate) fn check_samples(&self, n: usize) -> Result<(), EngineError> {
        let now = self.step_samples.get() + n;
        self.step_samples.set(now);
        if now + self.output_samples.get() > self.engine.max_samples {
            return Err(EngineError::TooManySamples("query execution"));
        }
        Ok(())
    }

    fn tick(&self) -> Result<(), EngineError> {
        let n = self.ticks.get().wrapping_add(1);
        self.ticks.set(n);
        if n.is_multiple_of(256) {
            self.check_deadline()?;
        }
        Ok(())
    }

    /// Evaluates `e` at time `t` (ms). Afterwards the step holds what it
    /// held before plus `e`'s value: the inputs `e` consumed are gone, as
    /// Prometheus counts samples held at once.
    pub(crate) fn eval(&self, e: &Expr, t: i64) -> Result<Val, EngineError> {
        let before = self.step_samples.get();
        let v = self.eval_node(e, t)?;
        let held = match &v {
            Val::Vector(vs) => vs.len(),
            Val::Matrix(m) => m.iter().map(|s| s.points.len()).sum(),
            Val::Scalar(_) | Val::Str(_) => 0,
        };
        self.step_samples.set(before);
        self.check_samples(held)?;
        Ok(v)
    }

    fn eval_node(&self, e: &Expr, t: i64) -> Result<Val, EngineError> {
        self.tick()?;
        match e {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Val::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Val::Scalar(x) => Ok(Val::Scalar(-x)),
                Val::Vector(vs) => {
                    let out: Vec<Sample> =
                        vs.into_iter().map(|s| Sample { labels: drop_name(&s.labels), t: s.t, v: -s.v }).collect();
                    check_duplicates(&out)?;
                    Ok(Val::Vector(out))
                }
                other => Err(EngineError::BadData(format!(
                    "unary expression only allowed on expressions of type scalar or instant vector, got \"{}\"",
                    other.type_name()
                ))),
            },
            Expr::VectorSelector(vs) => Ok(Val::Vector(self.eval_vector_selector(vs, t)?)),
            Expr::MatrixSelector(ms) => Ok(Val::Matrix(self.eval_matrix_selector(ms, t)?.series)),
            Expr::Subquery(sq) => Ok(Val::Matrix(self.eval_subquery(sq, t)?.series)),
            Expr::Binary(b) => self.eval_binary(b, t),
            Expr::Aggregate(a) => self.eval_aggregate(a, t),
            Expr::Call(c) => self.eval_call(c, t),
            Expr::Extension(_) => Err(EngineError::BadData("extension expressions are not supported".into())),
        }
    }

    pub(crate) fn eval_vector(&self, e: &Expr, t: i64) -> Result<Vec<Sample>, EngineError> {
        match self.eval(e, t)? {
            Val::Vector(v) => Ok(v),
            other => Err(EngineError::BadData(format!(
                "expected instant vector, got {}",
                other.type_name()
            ))),
        }
    }

    pub(crate) fn eval_scalar(&self, e: &Expr, t: i64) -> Result<f64, EngineError> {
        match self.eval(e, t)? {
            Val::Scalar(v) => Ok(v),
            other => Err(EngineError::BadData(format!(
                "expected scalar, got {}",
                other.type_name()
            ))),
        }
    }

    pub(crate) fn eval_string(&self, e: &Expr, t: i64) -> Result<String, EngineError> {
        match self.eval(e, t)? {
            Val::Str(v) => Ok(v),
            other => Err(EngineError::BadData(format!(
                "expected string, got {}",
                other.type_name()
            ))),
        }
    }

    /// The time a selector (or subquery) with `@`/offset looks at when
    /// evaluated at `t`.
    pub(crate) fn selector_time(
        &self,
        at: &Option<promql_parser::parser::AtModifier>,
        off: &Option<promql_parser::parser::Offset>,
        t: i64,
    ) -> i64 {
        plan::at_ms(at, self.query_start, self.query_end).unwrap_or(t) - plan::offset_ms(off)
    }

    pub(crate) fn series_of(&self, vs: &VectorSelector) -> &[super::SeriesData] {
        self.data
            .get(&plan::node_key(vs))
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    /// Instant selector: the latest sample in `[te - lookback, te]` of each
    /// series, unless it is a staleness marker. `Sample::t` is the sample's
    /// own timestamp (used by `timestamp()`).
    pub(crate) fn eval_vector_selector(
        &self,
        vs: &VectorSelector,
        t: i64,
    ) -> Result<Vec<Sample>, EngineError> {
        let te = self.selector_time(&vs.at, &vs.offset, t);
        let mut out = Vec::new();
        for s in self.series_of(vs) {
            let lookback = self
                .engine
                .lookback_delta_ms
                .max(s.resolution_ms.unwrap_or(0));
            let idx = s.samples.partition_point(|(ts, _)| *ts <= te);
            if idx == 0 {
                continue;
            }
            let (ts, v) = s.samples[idx - 1];
            if ts < te - lookback || is_stale_nan(v) {
                continue;
            }
            self.check_samples(1)?;
            self.tick()?;
            out.push(Sample {
                labels: s.labels.to_vec(),
                t: ts,
                v,
            });
        }
        Ok(out)
    }

    /// Range selector: the samples in `[te - range, te]` (2.x: both ends
    /// closed), staleness markers skipped; series without any are dropped.
    pub(crate) fn eval_matrix_selector(
        &self,
        ms: &MatrixSelector,
        t: i64,
    ) -> Result<RangeArg, EngineError> {
        let te = self.selector_time(&ms.vs.at, &ms.vs.offset, t);
        let start = te - ms.range.as_millis() as i64;
        let mut out = Vec::new();
        for s in self.series_of(&ms.vs) {
            self.tick()?;
            let lo = s.samples.partition_point(|(ts, _)| *ts < start);
            let hi = s.samples.partition_point(|(ts, _)| *ts <= te);
            // Counted before copying: the copy is what would be held.
            self.check_samples(hi.saturating_sub(lo))?;
            let points: Vec<(i64, f64)> = s.samples[lo..hi.max(lo)]
                .iter()
                .copied()
                .filter(|(_, v)| !is_stale_nan(*v))
                .collect();
            if points.is_empty() {
                continue;
            }
            out.push(Series {
                labels: s.labels.to_vec(),
                points,
            });
        }
        Ok(RangeArg {
            series: out,
            start,
            end: te,
        })
    }

    /// Subquery: the inner expression at every multiple of the step in
    /// `[te - range, te]`.
    pub(crate) fn eval_subquery(&self, sq: &SubqueryExpr, t: i64) -> Result<RangeArg, EngineError> {
        let te = self.selector_time(&sq.at, &sq.offset, t);
        let range = sq.range.as_millis() as i64;
        let step = match sq.step {
            Some(d) if d.as_millis() > 0 => d.as_millis() as i64,
            _ => self.engine.default_subquery_step_ms.max(1),
        };
        let start = te - range;
        let mut ti = div_ceil(start, step) * step;
        let mut index: HashMap<Labels, usize> = HashMap::new();
        let mut out: Vec<Series> = Vec::new();
        // Points of the subquery held so far, on top of what the step held
        // before: checked at every inner step, not once at the end, so a
        // `[1y:1ms]` stops at the limit instead of growing to the deadline.
        let base = self.step_samples.get();
        let mut n = 0usize;
        while ti <= te {
            self.check_deadline()?;
            match self.eval(&sq.expr, ti)? {
                Val::Vector(vs) => {
                    n += vs.len();
                    self.step_samples.set(base + n);
                    self.check_samples(0)?;
                    for s in vs {
                        push_point(&mut index, &mut out, s.labels, ti, s.v);
                    }
                }
                Val::Scalar(x) => {
                    n += 1;
                    self.step_samples.set(base + n);
                    self.check_samples(0)?;
                    push_point(&mut index, &mut out, Vec::new(), ti, x);
                }
                other => {
                    return Err(EngineError::BadData(format!(
                        "subquery is only allowed on instant vector, got {}",
                        other.type_name()
                    )))
                }
            }
            ti += step;
        }
        // The points stay held by the returned range until its consumer's
        // node finishes (see `eval`).
        self.step_samples.set(base + n);
        Ok(RangeArg {
            series: out,
            start,
            end: te,
        })
    }

    /// Evaluates a range-vector expression (selector or subquery, maybe in
    /// parentheses).
    pub(crate) fn eval_range_arg(&self, e: &Expr, t: i64) -> Result<RangeArg, EngineError> {
        match e {
            Expr::Paren(p) => self.eval_range_arg(&p.expr, t),
            Expr::MatrixSelector(ms) => self.eval_matrix_selector(ms, t),
            Expr::Subquery(sq) => self.eval_subquery(sq, t),
            _ => Err(EngineError::BadData("expected type range vector".into())),
        }
    }
}

fn push_point(
    index: &mut HashMap<Labels, usize>,
    out: &mut Vec<Series>,
    labels: Labels,
    t: i64,
    v: f64,
) {
    match index.get(&labels) {
        Some(&i) => out[i].points.push((t, v)),
        None => {
            index.insert(labels.clone(), out.len());
            out.push(Series {
                labels,
                points: vec![(t, v)],
            });
        }
    }
}

/// Ceiling division that also rounds up for negative numerators.
pub(crate) fn div_ceil(a: i64, b: i64) -> i64 {
    let q = a.div_euclid(b);
    if q * b < a {
        q + 1
    } else {
        q
    }
}

/// Fails when two samples carry the same labels (Prometheus checks every
/// function, operator and aggregation result).
pub(crate) fn check_duplicates(vs: &[Sample]) -> Result<(), EngineError> {
    if vs.len() < 2 {
        return Ok(());
    }
    let mut seen = std::collections::HashSet::with_capacity(vs.len());
    for s in vs {
        if !seen.insert(&s.labels) {
            return Err(EngineError::Execution(DUPLICATE_LABELSET.into()));
        }
    }
    Ok(())
}

// ---- label helpers -------------------------------------------------------

pub(crate) fn label_value<'l>(labels: &'l Labels, name: &str) -> &'l str {
    match labels.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
        Ok(i) => &labels[i].1,
        Err(_) => "",
    }
}

pub(crate) fn drop_name(labels: &[(String, String)]) -> Labels {
    labels
        .iter()
        .filter(|(n, _)| n != "__name__")
        .cloned()
        .collect()
}

/// Sets `name` to `value`; an empty value removes the label, as in Prometheus.
pub(crate) fn set_label(labels: &mut Labels, name: &str, value: &str) {
    match labels.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
        Ok(i) => {
            if value.is_empty() {
                labels.remove(i);
            } else {
                labels[i].1 = value.to_string();
            }
        }
        Err(i) => {
            if !value.is_empty() {
                labels.insert(i, (name.to_string(), value.to_string()));
            }
        }
    }
}

/// Whether `name` is a valid Prometheus 2.x label name.
pub(crate) fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

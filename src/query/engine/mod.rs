//! PromQL evaluation (DESIGN §7): promql-parser parses, this module
//! evaluates every float feature of Prometheus 2.42 over a [`Storage`].
//! Sync and CPU-bound: callers run it off the async workers. It never reads
//! the clock; evaluation times come in as parameters.

/// A label set, sorted by name, `__name__` included.
pub type Labels = Vec<(String, String)>;

/// A series' label set as storage hands it out: shared rather than copied,
/// so a selection clones a pointer, and read pair by pair without building
/// strings where the fast path only sorts or compares them.
#[derive(Debug, Clone)]
pub enum SharedLabels {
    /// Pairs sorted by name, `__name__` included.
    Pairs(std::sync::Arc<[(String, String)]>),
    /// A canonical series key (`name{a="b",...}`, see
    /// [`crate::model::series_key`]) standing for its labels.
    Key(std::sync::Arc<str>),
}

impl SharedLabels {
    /// Each pair, sorted by name, `__name__` in place.
    pub fn for_each(&self, f: &mut dyn FnMut(&str, &str)) {
        match self {
            SharedLabels::Pairs(pairs) => pairs.iter().for_each(|(n, v)| f(n, v)),
            SharedLabels::Key(key) => crate::model::each_series_key_label(key, f),
        }
    }

    /// The pairs, built.
    pub fn to_vec(&self) -> Labels {
        match self {
            SharedLabels::Pairs(pairs) => pairs.to_vec(),
            SharedLabels::Key(key) => crate::model::series_key_label_set(key),
        }
    }

    /// The value of `__name__`, if any.
    pub fn metric_name(&self) -> Option<&str> {
        match self {
            SharedLabels::Pairs(pairs) => pairs
                .iter()
                .find(|(n, _)| n == "__name__")
                .map(|(_, v)| v.as_str()),
            SharedLabels::Key(key) => {
                Some(crate::model::series_key_name(key)).filter(|n| !n.is_empty())
            }
        }
    }
}

impl PartialEq for SharedLabels {
    fn eq(&self, other: &SharedLabels) -> bool {
        self.to_vec() == other.to_vec()
    }
}

impl<T: Into<std::sync::Arc<[(String, String)]>>> From<T> for SharedLabels {
    fn from(pairs: T) -> SharedLabels {
        SharedLabels::Pairs(pairs.into())
    }
}

/// One series as the storage returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    /// The series' labels, sorted by name, `__name__` included.
    pub labels: SharedLabels,
    /// Samples in the requested range, ascending by timestamp (ms).
    pub samples: Vec<(i64, f64)>,
    /// Spacing of the archive the samples were read from (ms), if any: the
    /// lookback for instant selectors is max(lookback_delta, this).
    pub resolution_ms: Option<i64>,
}

/// One part's visitor in [`Storage::select_each_split`]: sees each series
/// of its part (the reference is valid for the call only), returns false
/// to stop the selection; `Send`, as parts may run on other threads.
pub type SplitVisitor<'v> = dyn FnMut(&SeriesData) -> bool + Send + 'v;

/// How a matcher compares a label value.
#[derive(Debug, Clone)]
pub enum MatchOp {
    /// `=`
    Equal(String),
    /// `!=`
    NotEqual(String),
    /// `=~` (anchored)
    Regex(regex::Regex),
    /// `!~` (anchored)
    NotRegex(regex::Regex),
}

/// One label matcher of a selector.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// Label name (`__name__` for the metric name).
    pub name: String,
    /// Comparison.
    pub op: MatchOp,
}

impl Matcher {
    /// Whether a label value (empty when the label is absent) matches.
    pub fn matches(&self, value: &str) -> bool {
        match &self.op {
            MatchOp::Equal(v) => value == v,
            MatchOp::NotEqual(v) => value != v,
            MatchOp::Regex(r) => r.is_match(value),
            MatchOp::NotRegex(r) => !r.is_match(value),
        }
    }

    /// Whether a label set matches (an absent label reads as empty).
    pub fn matches_labels(&self, labels: &[(String, String)]) -> bool {
        let value = labels.iter().find(|(n, _)| *n == self.name);
        self.matches(value.map_or("", |(_, v)| v.as_str()))
    }
}

/// Where series come from.
pub trait Storage: Send + Sync {
    /// Every series matching all `matchers`, with its samples in
    /// `[start_ms, end_ms]` (both inclusive), ascending.
    ///
    /// # Errors
    /// A limit was hit (too many samples) or the selection is invalid.
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesData>, String>;

    /// [`Storage::select`] one series at a time, for callers that keep
    /// only what they work out from each: `f` sees every matching series
    /// (in no particular order; the reference is valid for the call only)
    /// and returns false to stop early.
    ///
    /// # Errors
    /// As [`Storage::select`].
    fn select_each(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        f: &mut dyn FnMut(&SeriesData) -> bool,
    ) -> Result<(), String> {
        for s in self.select(matchers, start_ms, end_ms)? {
            if !f(&s) {
                break;
            }
        }
        Ok(())
    }

    /// [`Storage::select_each`] with the selection split into
    /// `visitors.len()` disjoint parts, part `i` seen by `visitors[i]`,
    /// possibly at once on separate threads. Taken in part order, the parts
    /// hold the series in [`Storage::select_each`]'s order. A visitor that
    /// returns false stops every part, soon rather than at once. Storages
    /// that cannot split hand every series to the first visitor.
    ///
    /// # Errors
    /// As [`Storage::select`], for the selection as a whole.
    fn select_each_split(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        visitors: &mut [&mut SplitVisitor<'_>],
    ) -> Result<(), String> {
        match visitors.first_mut() {
            Some(f) => self.select_each(matchers, start_ms, end_ms, &mut **f),
            None => Ok(()),
        }
    }
}

mod aggregate;
mod binary;
mod eval;
mod fast;
mod functions;
mod guard;
mod plan;
pub use guard::{
    check_expr, check_text, on_query_stack, QueryLimits, INLINE_DEPTH, QUERY_STACK_BYTES,
};
pub(crate) use plan::selector_matchers;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

pub use promql_parser::parser::Expr;

/// The bit pattern Prometheus writes as a staleness marker: a NaN that ends
/// a series for instant selectors and is skipped by range selectors.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether `v` is Prometheus's staleness marker (not just any NaN).
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Labels, sorted by name.
    pub labels: Labels,
    /// Timestamp (ms): the evaluation time in results.
    pub t: i64,
    /// Value.
    pub v: f64,
}

/// One series of a range vector (matrix).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Labels, sorted by name.
    pub labels: Labels,
    /// Points (ms, value), ascending.
    pub points: Vec<(i64, f64)>,
}

/// The result of a query, as Prometheus's `resultType`s.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `scalar`: evaluation time (ms) and value.
    Scalar(i64, f64),
    /// `string`: evaluation time (ms) and value.
    String(i64, String),
    /// `vector`: one sample per series, in evaluation order (unsorted
    /// unless the expression sorts).
    Vector(Vec<Sample>),
    /// `matrix`: series sorted by labels.
    Matrix(Vec<Series>),
}

/// Why a query failed; each kind maps to one Prometheus `errorType`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The query does not parse or has the wrong type (`bad_data`, 400).
    #[error("{0}")]
    BadData(String),
    /// Evaluation failed, e.g. many-to-many matching (`execution`, 422).
    #[error("{0}")]
    Execution(String),
    /// The deadline passed (`timeout`, 503).
    #[error("query timed out in {0} (limits.query_timeout)")]
    Timeout(&'static str),
    /// `max_samples` would be exceeded (`execution`, 422).
    #[error("query processing would load too many samples into memory in {0} (limits.max_query_samples)")]
    TooManySamples(&'static str),
    /// The query text is too long or nests too deeply (`bad_data`, 400).
    #[error("{message}")]
    TooLarge {
        /// The limit's config key, e.g. `limits.max_query_depth`.
        limit: &'static str,
        /// What was found and what the limit is.
        message: String,
    },
    /// Parsing or evaluation panicked; caught, counted, answered
    /// (`execution`, 422): a bug in ringdb or promql-parser, never a crash.
    #[error(
        "internal error in {0}: the query was abandoned (counted in ringdb_query_panics_total)"
    )]
    Panicked(&'static str),
}

impl EngineError {
    /// The Prometheus API `errorType` for this error.
    pub fn error_type(&self) -> &'static str {
        match self {
            EngineError::BadData(_) | EngineError::TooLarge { .. } => "bad_data",
            EngineError::Execution(_)
            | EngineError::TooManySamples(_)
            | EngineError::Panicked(_) => "execution",
            EngineError::Timeout(_) => "timeout",
        }
    }

    /// The limit (config key) that refused the query, if one did; a caught
    /// panic reads `panic`. For the refusal counters in /metrics.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            EngineError::TooLarge { limit, .. } => Some(limit),
            EngineError::TooManySamples(_) => Some("limits.max_query_samples"),
            EngineError::Timeout(_) => Some("limits.query_timeout"),
            EngineError::Panicked(_) => Some("panic"),
            EngineError::BadData(_) | EngineError::Execution(_) => None,
        }
    }

    /// The HTTP status Prometheus answers with for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            EngineError::BadData(_) | EngineError::TooLarge { .. } => 400,
            EngineError::Execution(_)
            | EngineError::TooManySamples(_)
            | EngineError::Panicked(_) => 422,
            EngineError::Timeout(_) => 503,
        }
    }
}

/// Evaluation settings. Stateless between queries: one `Engine` can serve
/// every request.
#[derive(Debug, Clone)]
pub struct Engine {
    /// How far back an instant selector looks for a sample (Prometheus's
    /// `--query.lookback-delta`, 5m by default). A series read from an
    /// archive with a coarser resolution uses that resolution instead.
    pub lookback_delta_ms: i64,
    /// Most samples a query may hold at once (`--query.max-samples`).
    pub max_samples: usize,
    /// Wall-clock budget per query (`--query.timeout`); `None` for none.
    pub timeout: Option<Duration>,
    /// Step of subqueries written without one (`[5m:]`): Prometheus's
    /// global evaluation interval, 1m by default.
    pub default_subquery_step_ms: i64,
}

impl Default for Engine {
    fn default() -> Self {
        Engine {
            lookback_delta_ms: 5 * 60 * 1000,
            max_samples: 50_000_000,
            timeout: Some(Duration::from_secs(120)),
            default_subquery_step_ms: 60 * 1000,
        }
    }
}

/// Parses a PromQL expression (promql-parser, plus Prometheus 2.x's
/// `holt_winters`, which newer parsers lack) under the default
/// [`QueryLimits`]; see [`parse_with`].
///
/// # Errors
/// As [`parse_with`].
pub fn parse(query: &str) -> Result<Expr, EngineError> {
    parse_with(query, &QueryLimits::default())
}

/// Parses a PromQL expression within `limits`: the text is checked before
/// the parser sees it ([`guard::check_text`]) and the tree after
/// ([`guard::check_expr`]). Recursion is bounded by the depth limit; run
/// it (and evaluation) inside [`on_query_stack`] with the bound
/// [`check_text`] returns. A panic inside promql-parser that got past the
/// checks is caught and answered as [`EngineError::Panicked`].
///
/// # Errors
/// [`EngineError::BadData`] with the parser's message, or for a duration
/// or time out of range; [`EngineError::TooLarge`] for
/// `limits.max_query_bytes` or `limits.max_query_depth`;
/// [`EngineError::Panicked`].
pub fn parse_with(query: &str, limits: &QueryLimits) -> Result<Expr, EngineError> {
    guard::check_text(query, limits)?;
    functions::register_legacy_functions();
    let parsed = std::panic::catch_unwind(|| promql_parser::parser::parse(query))
        .map_err(|_| EngineError::Panicked("the query parser"))?;
    let expr = parsed.map_err(|e| EngineError::BadData(format!("parse error: {e}")))?;
    guard::check_expr(&expr, limits)?;
    Ok(expr)
}

/// Refuses evaluation times the millisecond arithmetic cannot hold.
fn check_time(name: &str, ms: i64) -> Result<(), EngineError> {
    if ms.unsigned_abs() > guard::MAX_TIME_MS as u64 {
        return Err(EngineError::BadData(format!(
            "{name} {ms}ms out of range, expected at most ±{}ms",
            guard::MAX_TIME_MS
        )));
    }
    Ok(())
}

impl Engine {
    /// Refuses a lookback or subquery step the millisecond arithmetic
    /// cannot hold (both come from request parameters).
    fn check_settings(&self) -> Result<(), EngineError> {
        let max = guard::MAX_DURATION.as_millis() as i64;
        for (name, ms) in [
            ("lookback_delta", self.lookback_delta_ms),
            ("default subquery step", self.default_subquery_step_ms),
        ] {
            if !(0..=max).contains(&ms) {
                return Err(EngineError::BadData(format!(
                    "{name} {ms}ms out of range, expected 0 to {max}ms"
                )));
            }
        }
        Ok(())
    }

    /// Evaluates `expr` at one instant (`/api/v1/query`).
    ///
    /// # Errors
    /// Type errors ([`EngineError::BadData`]), evaluation errors, storage
    /// errors ([`EngineError::Execution`]), the deadline or the sample limit.
    pub fn instant(
        &self,
        storage: &dyn Storage,
        expr: &Expr,
        at_ms: i64,
    ) -> Result<Value, EngineError> {
        let deadline = self.timeout.map(|d| Instant::now() + d);
        self.instant_with_deadline(storage, expr, at_ms, deadline)
    }

    /// [`Engine::instant`] with an explicit deadline instead of `timeout`.
    ///
    /// # Errors
    /// As [`Engine::instant`].
    pub fn instant_with_deadline(
        &self,
        storage: &dyn Storage,
        expr: &Expr,
        at_ms: i64,
        deadline: Option<Instant>,
    ) -> Result<Value, EngineError> {
        check_time("evaluation time", at_ms)?;
        self.check_settings()?;
        let fast = eval::Evaluator::unfetched(self, at_ms, at_ms, deadline);
        fast.check_deadline()?;
        if let Some(v) = fast.fast_instant(storage, expr, at_ms)? {
            return Ok(v);
        }
        let ev = eval::Evaluator::new(self, storage, expr, at_ms, at_ms, 0, deadline)?;
        ev.run_instant(expr, at_ms)
    }

    /// Evaluates `expr` at every step from `start_ms` to `end_ms`
    /// (`/api/v1/query_range`); the result is always a matrix.
    ///
    /// # Errors
    /// As [`Engine::instant`]; also [`EngineError::BadData`] when `expr` is
    /// not a scalar or instant vector, or the step is not positive.
    pub fn range(
        &self,
        storage: &dyn Storage,
        expr: &Expr,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Value, EngineError> {
        let deadline = self.timeout.map(|d| Instant::now() + d);
        self.range_with_deadline(storage, expr, start_ms, end_ms, step_ms, deadline)
    }

    /// [`Engine::range`] with an explicit deadline instead of `timeout`.
    ///
    /// # Errors
    /// As [`Engine::range`].
    pub fn range_with_deadline(
        &self,
        storage: &dyn Storage,
        expr: &Expr,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        deadline: Option<Instant>,
    ) -> Result<Value, EngineError> {
        if step_ms <= 0 {
            return Err(EngineError::BadData(format!(
                "step {step_ms}ms, expected a positive step"
            )));
        }
        if end_ms < start_ms {
            return Err(EngineError::BadData(
                "end timestamp must not be before start time".into(),
            ));
        }
        check_time("start", start_ms)?;
        check_time("end", end_ms)?;
        check_time("step", step_ms)?;
        self.check_settings()?;
        use promql_parser::parser::value::ValueType;
        match expr.value_type() {
            ValueType::Scalar | ValueType::Vector => {}
            other => {
                let name = match other {
                    ValueType::Matrix => "range vector",
                    ValueType::String => "string",
                    _ => "unknown",
                };
                return Err(EngineError::BadData(format!(
                    "invalid expression type \"{name}\" for range query, must be Scalar or instant Vector"
                )));
            }
        }
        let fast = eval::Evaluator::unfetched(self, start_ms, end_ms, deadline);
        if let Some(v) = fast.fast_range(storage, expr, start_ms, end_ms, step_ms)? {
            return Ok(v);
        }
        let ev = eval::Evaluator::new(self, storage, expr, start_ms, end_ms, step_ms, deadline)?;
        ev.run_range(expr, start_ms, end_ms, step_ms)
    }
}

/// A series selector's matchers in storage form (the metric name becomes a
/// `__name__` matcher), e.g. for `match[]` on `/api/v1/series`. For the
/// 3.x `{a="1" or b="2"}` form, only the first alternative.
pub fn matchers_of(vs: &promql_parser::parser::VectorSelector) -> Vec<Matcher> {
    plan::selector_matchers(vs)
        .into_iter()
        .next()
        .unwrap_or_default()
}

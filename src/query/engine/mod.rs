//! PromQL evaluation (DESIGN §7): promql-parser parses, this module
//! evaluates every float feature of Prometheus 2.42 over a [`Storage`].
//! Sync and CPU-bound: callers run it off the async workers. It never reads
//! the clock; evaluation times come in as parameters.

/// A label set, sorted by name, `__name__` included.
pub type Labels = Vec<(String, String)>;

/// One series as the storage returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    /// The series' labels.
    pub labels: Labels,
    /// Samples in the requested range, ascending by timestamp (ms).
    pub samples: Vec<(i64, f64)>,
    /// Spacing of the archive the samples were read from (ms), if any: the
    /// lookback for instant selectors is max(lookback_delta, this).
    pub resolution_ms: Option<i64>,
}

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
}

/// Where series come from.
pub trait Storage: Send + Sync {
    /// Every series matching all `matchers`, with its samples in
    /// `[start_ms, end_ms]` (both inclusive), ascending.
    ///
    /// # Errors
    /// A limit was hit (too many samples) or the selection is invalid.
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Result<Vec<SeriesData>, String>;
}

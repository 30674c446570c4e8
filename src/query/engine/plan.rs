//! Works out, before evaluation, which samples each selector can need
//! (offsets, `@`, ranges, subqueries and lookback taken into account) and
//! reads them with one `Storage::select` per distinct selector.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{AtModifier, Expr, Offset, VectorSelector};

use super::{EngineError, MatchOp, Matcher, SeriesData, SharedLabels, Storage};

/// Selector data keyed by the address of its `VectorSelector` node.
pub(crate) type SelectorData = HashMap<usize, Rc<Vec<SeriesData>>>;

/// Key identifying a selector node for the lifetime of one evaluation.
pub(crate) fn node_key(vs: &VectorSelector) -> usize {
    vs as *const VectorSelector as usize
}

/// Milliseconds since the epoch of a `SystemTime` (negative before it).
pub(crate) fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// The signed offset in ms (`offset -5m` is -300000).
pub(crate) fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => d.as_millis() as i64,
        Some(Offset::Neg(d)) => -(d.as_millis() as i64),
    }
}

/// The time an `@` modifier pins to, if any.
pub(crate) fn at_ms(at: &Option<AtModifier>, query_start: i64, query_end: i64) -> Option<i64> {
    match at {
        None => None,
        Some(AtModifier::Start) => Some(query_start),
        Some(AtModifier::End) => Some(query_end),
        Some(AtModifier::At(t)) => Some(system_time_ms(t)),
    }
}

/// The selector's matchers in storage form: the metric name becomes a
/// `__name__` matcher. Each element is one alternative (3.x `or` groups).
pub(crate) fn selector_matchers(vs: &VectorSelector) -> Vec<Vec<Matcher>> {
    let convert = |ms: &[promql_parser::label::Matcher]| -> Vec<Matcher> {
        let mut out: Vec<Matcher> = ms
            .iter()
            .map(|m| Matcher {
                name: m.name.clone(),
                op: match &m.op {
                    PMatchOp::Equal => MatchOp::Equal(m.value.clone()),
                    PMatchOp::NotEqual => MatchOp::NotEqual(m.value.clone()),
                    PMatchOp::Re(r) => MatchOp::Regex(r.clone()),
                    PMatchOp::NotRe(r) => MatchOp::NotRegex(r.clone()),
                },
            })
            .collect();
        if let Some(name) = &vs.name {
            if !out.iter().any(|m| m.name == "__name__") {
                out.insert(
                    0,
                    Matcher {
                        name: "__name__".into(),
                        op: MatchOp::Equal(name.clone()),
                    },
                );
            }
        }
        out
    };
    if vs.matchers.or_matchers.is_empty() {
        vec![convert(&vs.matchers.matchers)]
    } else {
        vs.matchers.or_matchers.iter().map(|g| convert(g)).collect()
    }
}

fn matcher_key(groups: &[Vec<Matcher>]) -> String {
    let mut parts: Vec<String> = groups
        .iter()
        .map(|g| {
            let mut ms: Vec<String> = g
                .iter()
                .map(|m| match &m.op {
                    MatchOp::Equal(v) => format!("{}={:?}", m.name, v),
                    MatchOp::NotEqual(v) => format!("{}!={:?}", m.name, v),
                    MatchOp::Regex(r) => format!("{}=~{:?}", m.name, r.as_str()),
                    MatchOp::NotRegex(r) => format!("{}!~{:?}", m.name, r.as_str()),
                })
                .collect();
            ms.sort();
            ms.join(",")
        })
        .collect();
    parts.sort();
    parts.join(" or ")
}

struct Need<'e> {
    vs: &'e VectorSelector,
    /// Earliest evaluation time of the selector itself (after @/offset).
    from: i64,
    /// Latest evaluation time (after @/offset).
    to: i64,
    /// Range of a matrix selector; `None` for an instant selector.
    range_ms: Option<i64>,
}

struct Walker<'e> {
    query_start: i64,
    query_end: i64,
    needs: Vec<Need<'e>>,
}

impl<'e> Walker<'e> {
    fn selector_times(&self, vs: &VectorSelector, lo: i64, hi: i64) -> (i64, i64) {
        let off = offset_ms(&vs.offset);
        match at_ms(&vs.at, self.query_start, self.query_end) {
            Some(a) => (a - off, a - off),
            None => (lo - off, hi - off),
        }
    }

    fn walk(&mut self, e: &'e Expr, lo: i64, hi: i64) {
        match e {
            Expr::VectorSelector(vs) => {
                let (from, to) = self.selector_times(vs, lo, hi);
                self.needs.push(Need {
                    vs,
                    from,
                    to,
                    range_ms: None,
                });
            }
            Expr::MatrixSelector(ms) => {
                let (from, to) = self.selector_times(&ms.vs, lo, hi);
                self.needs.push(Need {
                    vs: &ms.vs,
                    from,
                    to,
                    range_ms: Some(ms.range.as_millis() as i64),
                });
            }
            Expr::Subquery(sq) => {
                let off = offset_ms(&sq.offset);
                let (from, to) = match at_ms(&sq.at, self.query_start, self.query_end) {
                    Some(a) => (a - off, a - off),
                    None => (lo - off, hi - off),
                };
                self.walk(&sq.expr, from - sq.range.as_millis() as i64, to);
            }
            Expr::Aggregate(a) => {
                if let Some(p) = &a.param {
                    self.walk(p, lo, hi);
                }
                self.walk(&a.expr, lo, hi);
            }
            Expr::Unary(u) => self.walk(&u.expr, lo, hi),
            Expr::Binary(b) => {
                self.walk(&b.lhs, lo, hi);
                self.walk(&b.rhs, lo, hi);
            }
            Expr::Paren(p) => self.walk(&p.expr, lo, hi),
            Expr::Call(c) => {
                for a in &c.args.args {
                    self.walk(a, lo, hi);
                }
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }
}

/// Reads every selector's series for an evaluation over
/// `[query_start, query_end]`.
///
/// # Errors
/// The storage's error, as [`EngineError::Execution`].
pub(crate) fn fetch(
    storage: &dyn Storage,
    expr: &Expr,
    query_start: i64,
    query_end: i64,
    lookback_ms: i64,
) -> Result<SelectorData, EngineError> {
    let mut w = Walker {
        query_start,
        query_end,
        needs: Vec::new(),
    };
    w.walk(expr, query_start, query_end);

    // Group by distinct matcher set; one select per group over the union.
    struct Group {
        matchers: Vec<Vec<Matcher>>,
        start: i64,
        end: i64,
        has_instant: bool,
        nodes: Vec<usize>,
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for n in &w.needs {
        let matchers = selector_matchers(n.vs);
        let key = matcher_key(&matchers);
        let start = n.from - n.range_ms.unwrap_or(lookback_ms);
        let idx = *by_key.entry(key).or_insert_with(|| {
            groups.push(Group {
                matchers,
                start,
                end: n.to,
                has_instant: false,
                nodes: Vec::new(),
            });
            groups.len() - 1
        });
        let g = &mut groups[idx];
        g.start = g.start.min(start);
        g.end = g.end.max(n.to);
        g.has_instant |= n.range_ms.is_none();
        g.nodes.push(node_key(n.vs));
    }

    let mut data = SelectorData::new();
    for g in groups {
        let mut series = select_all(storage, &g.matchers, g.start, g.end)?;
        // A coarse archive needs a longer lookback than the default: read
        // again from further back when one showed up.
        if g.has_instant {
            let max_res = series
                .iter()
                .filter_map(|s| s.resolution_ms)
                .max()
                .unwrap_or(0);
            if max_res > lookback_ms {
                series = select_all(
                    storage,
                    &g.matchers,
                    g.start - (max_res - lookback_ms),
                    g.end,
                )?;
            }
        }
        let rc = Rc::new(sorted_by_labels(series));
        for n in g.nodes {
            data.insert(n, rc.clone());
        }
    }
    Ok(data)
}

/// `series` sorted by labels, ties kept in their order (a stable sort).
fn sorted_by_labels(series: Vec<SeriesData>) -> Vec<SeriesData> {
    let mut keys = LabelKeys::default();
    series.iter().for_each(|s| keys.push_shared(&s.labels));
    let order = keys.order().order;
    let mut slots: Vec<Option<SeriesData>> = series.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// Label sets in order, see [`LabelKeys::order`].
pub(crate) struct LabelOrder {
    /// Indices, by label set; equal sets in index order.
    pub order: Vec<usize>,
    /// Whether no two label sets are equal.
    pub distinct: bool,
}

/// Label sets encoded into bytes that sort the same way (every string ends
/// in `00 00`, a zero byte inside one becomes `00 01`), in the order they
/// were pushed. Sets are then compared first by the 8 bytes after the
/// prefix all of them share (series of one metric share a long one), then
/// by the whole encoding, then by index. Encoding is the costly part and
/// needs one set at a time, so parts of a selection can encode their own
/// sets on their own threads and be joined with [`LabelKeys::append`].
#[derive(Default)]
pub(crate) struct LabelKeys {
    bytes: Vec<u8>,
    /// End of each set's encoding in `bytes`.
    ends: Vec<usize>,
}

impl LabelKeys {
    /// Encodes one more label set.
    pub(crate) fn push_shared(&mut self, labels: &SharedLabels) {
        let each = |f: &mut dyn FnMut(&str, &str)| labels.for_each(f);
        let bytes = &mut self.bytes;
        let start = bytes.len();
        let mut pairs = 0;
        each(&mut |name, value| {
            pairs += 1;
            for s in [name.as_bytes(), value.as_bytes()] {
                bytes.extend_from_slice(s);
                bytes.extend([0, 0]);
            }
        });
        // Zero bytes inside strings are rare: one count over the set tells
        // whether it must be encoded again escaping them.
        let zeros = bytes[start..].iter().filter(|&&b| b == 0).count();
        if zeros != 4 * pairs {
            bytes.truncate(start);
            each(&mut |name, value| {
                for s in [name.as_bytes(), value.as_bytes()] {
                    for &b in s {
                        match b {
                            0 => bytes.extend([0, 1]),
                            b => bytes.push(b),
                        }
                    }
                    bytes.extend([0, 0]);
                }
            });
        }
        self.ends.push(bytes.len());
    }

    /// Moves `other`'s sets after these.
    pub(crate) fn append(&mut self, other: LabelKeys) {
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&other.bytes);
        self.ends.extend(other.ends.iter().map(|e| base + e));
    }

    fn key(&self, i: usize) -> &[u8] {
        &self.bytes[if i == 0 { 0 } else { self.ends[i - 1] }..self.ends[i]]
    }

    /// The sets' indices in label order.
    pub(crate) fn order(&self) -> LabelOrder {
        let n = self.ends.len();
        let key = |i: usize| self.key(i);
        let shared = (1..n).fold(if n == 0 { 0 } else { key(0).len() }, |len, i| {
            let (first, other) = (&key(0)[..len], key(i));
            if other.starts_with(first) {
                return len;
            }
            first.iter().zip(other).take_while(|(a, b)| a == b).count()
        });
        // Heads next to their indices: the sort mostly compares them
        // without looking anything up.
        let mut heads: Vec<(u64, usize)> = (0..n)
            .map(|i| {
                // Padding with zeros keeps the order: a shorter key sorts first.
                let rest = &key(i)[shared..];
                let mut head = [0u8; 8];
                let len = rest.len().min(8);
                head[..len].copy_from_slice(&rest[..len]);
                (u64::from_be_bytes(head), i)
            })
            .collect();
        heads.sort_unstable_by(|&(ha, a), &(hb, b)| {
            ha.cmp(&hb).then_with(|| key(a).cmp(key(b))).then(a.cmp(&b))
        });
        let order: Vec<usize> = heads.into_iter().map(|(_, i)| i).collect();
        let distinct = order.windows(2).all(|w| key(w[0]) != key(w[1]));
        LabelOrder { order, distinct }
    }
}

/// A storage error as the engine's: the storage's own sample limit
/// (Prometheus' message) is [`EngineError::TooManySamples`], so that it is
/// counted under `limits.max_query_samples` like the evaluator's.
pub(crate) fn storage_error(e: String) -> EngineError {
    if e.starts_with("query processing would load too many samples") {
        EngineError::TooManySamples("query execution")
    } else {
        EngineError::Execution(e)
    }
}

fn select_all(
    storage: &dyn Storage,
    groups: &[Vec<Matcher>],
    start: i64,
    end: i64,
) -> Result<Vec<SeriesData>, EngineError> {
    if groups.len() == 1 {
        return storage
            .select(&groups[0], start, end)
            .map_err(storage_error);
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for g in groups {
        for s in storage.select(g, start, end).map_err(storage_error)? {
            if seen.insert(s.labels.to_vec()) {
                out.push(s);
            }
        }
    }
    Ok(out)
}

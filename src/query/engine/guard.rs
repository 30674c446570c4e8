//! Limits on a query's text and shape (issue 14): what makes sure that no
//! query text, whatever its size up to the HTTP body cap, can overflow a
//! stack or panic inside promql-parser, ringdb's planner or evaluator.
//!
//! Three layers, each cheap:
//! - [`check_text`], before the parser: `limits.max_query_bytes`, then one
//!   iterative pass over the text that bounds the depth of the tree the
//!   parser could build from it (`limits.max_query_depth`) and refuses the
//!   duration numbers promql-parser would panic on (`offset NaN`, `[1e30]`).
//! - [`check_expr`], after it: the tree's real depth (walked with an
//!   explicit stack), and durations, offsets and `@` times that fit the
//!   millisecond arithmetic of the evaluator.
//! - [`on_query_stack`]: parsing, evaluating, formatting and dropping a
//!   tree run on a thread with a known, large stack, which also turns a
//!   panic that got through into an error instead of a dead worker.
//!
//! Sync, no I/O, no clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use promql_parser::parser::{AtModifier, Expr, Offset};

use super::EngineError;

/// Stack of the threads that parse, evaluate and format deep queries. At
/// the config bound of `limits.max_query_depth` (1024), the deepest
/// recursion measured (1023 nested `abs(` in a debug build) needs between
/// 8 and 16 MiB; the rest is margin. Only touched pages cost memory.
pub const QUERY_STACK_BYTES: usize = 64 << 20;

/// Deepest query (as bounded by [`check_text`]) run on the caller's own
/// stack: at most ~16 KiB a level in a debug build, 32 levels fit well in
/// the 2 MiB of a tokio blocking thread or a test thread; deeper ones pay
/// for a thread of their own (about 0.1-0.2 ms).
pub const INLINE_DEPTH: usize = 32;

/// Longest duration (range, subquery step, offset) a query may use:
/// Prometheus' int64 nanoseconds, about 292 years.
pub const MAX_DURATION: Duration = Duration::from_nanos(i64::MAX as u64);

/// Latest (and, negated, earliest) time a query may name, in ms: about
/// 285,000 years, so that times, ranges, offsets and lookbacks add up
/// without overflowing an i64.
pub const MAX_TIME_MS: i64 = 1 << 53;

/// The limits on one query's text and tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Most bytes of query text (`limits.max_query_bytes`).
    pub max_query_bytes: usize,
    /// Deepest expression tree (`limits.max_query_depth`): a selector is
    /// depth 1, each operator, call, aggregation, parenthesis or subquery
    /// above it adds one.
    pub max_query_depth: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_query_bytes: 16 * 1024,
            max_query_depth: 128,
        }
    }
}

fn too_deep(bound: usize, limits: &QueryLimits, how: &str) -> EngineError {
    EngineError::TooLarge {
        limit: "limits.max_query_depth",
        message: format!(
            "query is nested too deeply: {how} {bound}, more than limits.max_query_depth ({})",
            limits.max_query_depth
        ),
    }
}

/// Which bracket opened a [`Group`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bracket {
    /// `(`, and the text outside every bracket.
    Paren,
    /// `{`: label matchers, where `=`, `!=` and `=~` are not operators.
    Brace,
    /// `[`: a range or subquery, where `:` separates two durations.
    Square,
}

/// One bracket group open during [`check_text`].
struct Group {
    kind: Bracket,
    /// Operators seen at this level: binary, unary and `[` (a range or
    /// subquery node wraps what stands before it).
    ops: usize,
    /// Highest bound of a group closed inside this one.
    max_child: usize,
}

impl Group {
    fn new(kind: Bracket) -> Group {
        Group {
            kind,
            ops: 0,
            max_child: 0,
        }
    }

    /// Bound on the depth of the tree of the level's content: each
    /// operator adds at most one node on any path, above its deepest
    /// operand (a leaf, or a group's tree).
    fn content_depth(&self) -> usize {
        self.ops.saturating_add(self.max_child.max(1))
    }
}

/// Checks a query's text before it reaches the parser: its size, a bound
/// on the depth of any tree the parser could build from it, and the
/// numbers written where a duration goes (`offset NaN`, `[1e30]`, `[5m:Inf]`)
/// that promql-parser's `Duration::from_secs_f64` would panic on. One pass,
/// no recursion, memory proportional to the bracket nesting only.
///
/// The depth bound: within one bracket level, the tree of the level's
/// content has each operator as at most one node on a path, so its depth
/// is at most the level's operators plus its deepest operand; a bracket
/// group is an operand one node (its call, aggregation or parenthesis)
/// above its own content. Matrix and subquery brackets count as operators
/// of the level they follow. The bound is never below the real depth.
///
/// Returns the bound, for [`on_query_stack`].
///
/// # Errors
/// [`EngineError::TooLarge`] naming `limits.max_query_bytes` or
/// `limits.max_query_depth`; [`EngineError::BadData`] for a duration out
/// of range.
pub fn check_text(query: &str, limits: &QueryLimits) -> Result<usize, EngineError> {
    if query.len() > limits.max_query_bytes {
        return Err(EngineError::TooLarge {
            limit: "limits.max_query_bytes",
            message: format!(
                "query is {} bytes, more than limits.max_query_bytes ({})",
                query.len(),
                limits.max_query_bytes
            ),
        });
    }
    let b = query.as_bytes();
    let mut stack: Vec<Group> = vec![Group::new(Bracket::Paren)];
    // Whether the next token stands where the grammar takes a duration:
    // after `offset` (and its sign), after `[`, after `:` inside `[...]`.
    let mut expect_duration = false;
    let mut i = 0;
    let close = |stack: &mut Vec<Group>| {
        if stack.len() > 1 {
            if let Some(g) = stack.pop() {
                let h = if g.kind == Bracket::Brace {
                    1
                } else {
                    g.content_depth().saturating_add(1)
                };
                if let Some(parent) = stack.last_mut() {
                    parent.max_child = parent.max_child.max(h);
                }
            }
        }
    };
    while i < b.len() {
        let c = b[i];
        let kind = stack.last().map_or(Bracket::Paren, |g| g.kind);
        let op = |stack: &mut Vec<Group>| {
            if let Some(g) = stack.last_mut() {
                if g.kind != Bracket::Brace {
                    g.ops += 1;
                }
            }
        };
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' | b'`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    if b[i] == b'\\' && c != b'`' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                expect_duration = false;
                continue;
            }
            b'0'..=b'9' | b'.' => {
                let start = i;
                let hex = b[i..].starts_with(b"0x") || b[i..].starts_with(b"0X");
                i += 1;
                while i < b.len() {
                    let d = b[i];
                    let sign_after_exponent =
                        (d == b'+' || d == b'-') && !hex && matches!(b[i - 1], b'e' | b'E');
                    if d.is_ascii_alphanumeric() || d == b'_' || d == b'.' || sign_after_exponent {
                        i += 1;
                    } else {
                        break;
                    }
                }
                if expect_duration {
                    check_duration_token(&query[start..i])?;
                }
                expect_duration = false;
                continue;
            }
            b':' if kind == Bracket::Square => {
                // A subquery's `:`: its step, if any, comes next.
                expect_duration = true;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &query[start..i];
                if expect_duration {
                    check_duration_token(word)?;
                    expect_duration = false;
                } else if word.eq_ignore_ascii_case("offset") {
                    expect_duration = true;
                } else if ["and", "or", "unless", "atan2"]
                    .iter()
                    .any(|k| word.eq_ignore_ascii_case(k))
                {
                    op(&mut stack);
                }
                continue;
            }
            b'(' | b'{' => {
                stack.push(Group::new(if c == b'{' {
                    Bracket::Brace
                } else {
                    Bracket::Paren
                }));
                expect_duration = false;
            }
            b'[' => {
                op(&mut stack);
                stack.push(Group::new(Bracket::Square));
                expect_duration = true;
            }
            b')' | b'}' | b']' => {
                close(&mut stack);
                expect_duration = false;
            }
            b'+' | b'-' => {
                op(&mut stack);
                // `offset -5m`: the duration still comes.
            }
            b'*' | b'/' | b'%' | b'^' => {
                op(&mut stack);
                expect_duration = false;
            }
            b'=' | b'!' | b'<' | b'>' => {
                let next = b.get(i + 1).copied();
                // `=~`, `!~` and a lone `=` match labels; `==`, `!=`, `<`,
                // `<=`, `>`, `>=` compare (not counted inside braces).
                let compares = matches!(
                    (c, next),
                    (b'=', Some(b'=')) | (b'!', Some(b'=')) | (b'<' | b'>', _)
                );
                if compares {
                    op(&mut stack);
                }
                if matches!(next, Some(b'=' | b'~')) {
                    i += 1;
                }
                expect_duration = false;
            }
            _ => expect_duration = false,
        }
        i += 1;
        if stack.len() > limits.max_query_depth {
            return Err(too_deep(stack.len(), limits, "brackets nested"));
        }
    }
    while stack.len() > 1 {
        close(&mut stack);
    }
    let bound = stack.last().map_or(0, Group::content_depth);
    if bound > limits.max_query_depth {
        return Err(too_deep(
            bound,
            limits,
            "operators and brackets nested up to",
        ));
    }
    Ok(bound)
}

/// Refuses a number written as a duration that promql-parser would turn
/// into a `Duration` with `from_secs_f64`, which panics on NaN, infinities,
/// negatives and values past u64 seconds.
fn check_duration_token(token: &str) -> Result<(), EngineError> {
    let lower = token.to_ascii_lowercase();
    // Durations with units (`5m`, `1h30m`) go through checked arithmetic
    // in the parser and are bounded by `check_expr`; only plain numbers
    // (decimal, exponent, inf, nan) reach `from_secs_f64`.
    let Ok(secs) = lower.replace('_', "").parse::<f64>() else {
        return Ok(());
    };
    if secs.is_finite() && (0.0..=MAX_DURATION.as_secs_f64()).contains(&secs) {
        return Ok(());
    }
    Err(EngineError::BadData(format!(
        "parse error: duration {token:?} out of range, expected 0 to {} seconds",
        MAX_DURATION.as_secs()
    )))
}

fn check_duration(what: &str, d: &Duration) -> Result<(), EngineError> {
    if *d > MAX_DURATION {
        return Err(EngineError::BadData(format!(
            "{what} {}s out of range, at most {}s (292 years)",
            d.as_secs(),
            MAX_DURATION.as_secs()
        )));
    }
    Ok(())
}

fn check_offset(o: &Option<Offset>) -> Result<(), EngineError> {
    match o {
        Some(Offset::Pos(d)) | Some(Offset::Neg(d)) => check_duration("offset", d),
        None => Ok(()),
    }
}

fn check_at(at: &Option<AtModifier>) -> Result<(), EngineError> {
    let Some(AtModifier::At(t)) = at else {
        return Ok(());
    };
    let ms = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis(),
        Err(e) => e.duration().as_millis(),
    };
    if ms > MAX_TIME_MS as u128 {
        let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_secs() as f64,
            Err(e) => -(e.duration().as_secs() as f64),
        };
        return Err(EngineError::BadData(format!(
            "timestamp out of bounds for @ modifier: {secs}, expected at most ±{} seconds",
            MAX_TIME_MS / 1000
        )));
    }
    Ok(())
}

/// Checks a parsed tree: its depth against `limits.max_query_depth`, and
/// every range, step, offset and `@` time against what the evaluator's
/// millisecond arithmetic holds. Walks with an explicit stack, so a tree
/// deeper than any limit is still measured without recursion.
///
/// # Errors
/// [`EngineError::TooLarge`] naming `limits.max_query_depth`;
/// [`EngineError::BadData`] for a duration or time out of range.
pub fn check_expr(expr: &Expr, limits: &QueryLimits) -> Result<(), EngineError> {
    let mut todo: Vec<(&Expr, usize)> = vec![(expr, 1)];
    while let Some((e, depth)) = todo.pop() {
        if depth > limits.max_query_depth {
            return Err(too_deep(depth, limits, "expression depth"));
        }
        let below = depth + 1;
        match e {
            Expr::VectorSelector(vs) => {
                check_offset(&vs.offset)?;
                check_at(&vs.at)?;
            }
            Expr::MatrixSelector(ms) => {
                check_duration("range", &ms.range)?;
                check_offset(&ms.vs.offset)?;
                check_at(&ms.vs.at)?;
            }
            Expr::Subquery(sq) => {
                check_duration("subquery range", &sq.range)?;
                if let Some(step) = &sq.step {
                    check_duration("subquery step", step)?;
                }
                check_offset(&sq.offset)?;
                check_at(&sq.at)?;
                todo.push((&sq.expr, below));
            }
            Expr::Aggregate(a) => {
                if let Some(p) = &a.param {
                    todo.push((p, below));
                }
                todo.push((&a.expr, below));
            }
            Expr::Unary(u) => todo.push((&u.expr, below)),
            Expr::Binary(b) => {
                todo.push((&b.lhs, below));
                todo.push((&b.rhs, below));
            }
            Expr::Paren(p) => todo.push((&p.expr, below)),
            Expr::Call(c) => todo.extend(c.args.args.iter().map(|a| (a.as_ref(), below))),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }
    Ok(())
}

/// Runs `work` (parsing, evaluating, formatting, dropping a tree whose
/// depth [`check_text`] bounded by `depth_bound`) where its recursion
/// fits: on the calling thread up to [`INLINE_DEPTH`], else on a fresh
/// thread with a [`QUERY_STACK_BYTES`] stack, waited for. Either way a
/// panic in `work` comes back as [`EngineError::Panicked`] rather than
/// killing a worker (no profile sets `panic = "abort"`).
///
/// # Errors
/// `work`'s own error, [`EngineError::Panicked`], or
/// [`EngineError::Execution`] when no thread can be started.
pub fn on_query_stack<T: Send>(
    depth_bound: usize,
    work: impl FnOnce() -> Result<T, EngineError> + Send,
) -> Result<T, EngineError> {
    let panicked = EngineError::Panicked("query evaluation");
    if depth_bound <= INLINE_DEPTH {
        // The caller's state is not touched again after a panic: `work`
        // owns what it builds, and shared store locks are read locks.
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
            .unwrap_or(Err(panicked));
    }
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("ringdb-query".into())
            .stack_size(QUERY_STACK_BYTES)
            .spawn_scoped(scope, work);
        match spawned {
            Ok(handle) => handle.join().unwrap_or(Err(panicked)),
            Err(e) => Err(EngineError::Execution(format!(
                "cannot start a query thread: {e}"
            ))),
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The shapes that overflowed the stack (issue 14), nested `n` deep.
    pub(crate) fn nested(shape: &str, n: usize) -> String {
        match shape {
            "sum" => format!("{}x{}", "sum(".repeat(n), ")".repeat(n)),
            "abs" => format!("{}x{}", "abs(".repeat(n), ")".repeat(n)),
            "parens" => format!("{}x{}", "(".repeat(n), ")".repeat(n)),
            "plus" => format!("x{}", "+x".repeat(n)),
            "unary" => format!("{}x", "-".repeat(n)),
            "paren_plus" => format!("{}x{}", "(x+".repeat(n), ")".repeat(n)),
            "subquery" => format!("{}x{}", "max_over_time(".repeat(n), "[5m:1m])".repeat(n)),
            "and" => format!("x{}", " and x".repeat(n)),
            _ => unreachable!("unknown shape {shape}"),
        }
    }

    pub(crate) const SHAPES: [&str; 8] = [
        "sum",
        "abs",
        "parens",
        "plus",
        "unary",
        "paren_plus",
        "subquery",
        "and",
    ];

    /// Runs `f` on a thread with a small stack: the checks must not
    /// recurse on their input.
    fn on_small_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn_scoped(s, f)
                .expect("spawn")
                .join()
                .expect("no overflow, no panic")
        })
    }

    #[test]
    fn the_reported_shapes_are_refused_on_a_small_stack() {
        // The sizes that aborted the process, and far past them, with the
        // largest text the config allows.
        let limits = QueryLimits {
            max_query_bytes: 16 << 20,
            max_query_depth: 1024,
        };
        let cases = [
            ("2000 nested sum(", nested("sum", 2000)),
            ("4875 chained +", nested("plus", 4875)),
            ("33000 parentheses", nested("parens", 33_000)),
            ("2750 nested abs(", nested("abs", 2750)),
            ("1 MiB of unary minus", nested("unary", 1 << 20)),
            ("4 MiB of parentheses", nested("parens", 2 << 20)),
            ("100000 chained and", nested("and", 100_000)),
            ("5000 nested subqueries", nested("subquery", 5000)),
            ("unclosed 1 MiB of (", "(".repeat(1 << 20)),
        ];
        for (name, q) in cases {
            let err = on_small_stack(|| check_text(&q, &limits)).expect_err(name);
            match &err {
                EngineError::TooLarge { limit, .. } => {
                    assert_eq!(*limit, "limits.max_query_depth", "case {name}: {err}")
                }
                other => panic!("case {name}: {other:?}"),
            }
            assert!(
                err.to_string().contains("limits.max_query_depth"),
                "case {name}: {err}"
            );
            assert_eq!(err.http_status(), 400, "case {name}");
        }
    }

    #[test]
    fn query_bytes_limit() {
        let limits = QueryLimits::default();
        let long = format!("x{}", " + x".repeat(5000));
        let err = check_text(&long, &limits).expect_err("case 20 KB query");
        assert!(
            err.to_string().contains("limits.max_query_bytes"),
            "case 20 KB query: {err}"
        );
        assert_eq!(err.error_type(), "bad_data", "case 20 KB query type");
        let at_limit = format!("x{}", " ".repeat(16 * 1024 - 1));
        check_text(&at_limit, &limits).expect("case exactly at the limit");
    }

    /// The smallest depth limit `check_text` lets `q` through with.
    fn text_bound(q: &str) -> usize {
        (1..=4096)
            .find(|&d| {
                check_text(
                    q,
                    &QueryLimits {
                        max_query_bytes: 1 << 20,
                        max_query_depth: d,
                    },
                )
                .is_ok()
            })
            .expect("a bound under 4096")
    }

    /// The tree's real depth, as `check_expr` measures it.
    fn tree_depth(q: &str) -> usize {
        let expr = promql_parser::parser::parse(q).expect(q);
        (1..=4096)
            .find(|&d| {
                check_expr(
                    &expr,
                    &QueryLimits {
                        max_query_bytes: 1 << 20,
                        max_query_depth: d,
                    },
                )
                .is_ok()
            })
            .expect("a depth under 4096")
    }

    #[test]
    fn the_text_bound_is_never_below_the_tree_depth_and_close_to_it() {
        // (name, query, how far above the real depth the text bound may be)
        let cases: Vec<(&str, String, usize)> = vec![
            ("selector", "x".into(), 0),
            ("matchers", r#"x{a="1",b!="2",c=~"3",d!~"4"}"#.into(), 1),
            (
                "many matchers",
                format!("x{{{}}}", "a=\"1\",".repeat(500)),
                1,
            ),
            ("rate", "rate(x[5m])".into(), 2),
            (
                "grafana sum by rate",
                r#"sum by (job) (rate(http_requests_total{job=~"a|b"}[$__rate_interval]))"#
                    .replace("$__rate_interval", "5m"),
                3,
            ),
            ("binary chain", "a + b * c / d - e".into(), 0),
            (
                "comparison chain",
                "a == b != c >= d <= e > f < g".into(),
                1,
            ),
            ("set ops", "a and b or c unless d".into(), 1),
            ("unary", "-(-x)".into(), 0),
            (
                "subquery of paren",
                "max_over_time((x + 1)[5m:1m])".into(),
                2,
            ),
            (
                "offset and at",
                "x offset 5m @ 100 + y offset -1h".into(),
                2,
            ),
            ("exponent numbers", "x * 1e-5 + 2.5E+3 - 0x1F".into(), 0),
            (
                "strings and comments",
                "label_replace(x, \"a\", \"$1 (\", \"b\", \"(.*)\") # ((((\n+ y".into(),
                2,
            ),
            ("aggregate param", "topk(5, sum without (a) (x))".into(), 2),
            (
                "bool and matching",
                "a > bool on (x) group_left (y) b".into(),
                1,
            ),
            ("atan2", "a atan2 b".into(), 0),
            ("colon metric", "job:rate5m:sum + x".into(), 0),
            ("nested sum 50", nested("sum", 50), 0),
            ("chained plus 50", nested("plus", 50), 0),
            ("parens 50", nested("parens", 50), 0),
            ("unary 50", nested("unary", 50), 0),
            ("paren plus 50", nested("paren_plus", 50), 0),
            ("subqueries 20", nested("subquery", 20), 20),
            ("and 50", nested("and", 50), 0),
        ];
        let mut wrong = Vec::new();
        for (name, q, slack) in cases {
            let (bound, depth) = (text_bound(&q), tree_depth(&q));
            if bound < depth || bound > depth + slack {
                wrong.push(format!(
                    "case {name}: text bound {bound}, tree depth {depth}, slack {slack}"
                ));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn durations_the_parser_panicked_on_are_refused() {
        // Each of these panicked inside promql-parser 0.11 (or overflowed
        // ringdb's millisecond arithmetic); all must be bad_data.
        let cases = [
            ("offset NaN", "x offset NaN"),
            ("offset Inf", "x offset Inf"),
            ("offset +Inf", "x offset +Inf"),
            ("offset -Inf", "x offset -Inf"),
            ("offset 1e30", "x offset 1e30"),
            ("offset -1e30", "x offset -1e30"),
            ("range 1e30", "x[1e30]"),
            ("range NaN", "x[NaN]"),
            ("subquery step 1e30", "x[5m:1e30]"),
            ("subquery step Inf", "x[5m:Inf]"),
            ("range 1e30s", "rate(x[1e30s])"),
            ("at NaN", "x @ NaN"),
            ("at Inf", "x @ Inf"),
            ("at 1e30", "x @ 1e30"),
            ("at -1e30", "x @ -1e30"),
            ("offset 1e19", "x offset 1e19"),
            ("offset hex max", "x offset 0x7fffffffffffffff"),
            ("range of 4294967295 years", "x[4294967295y]"),
            (
                "subquery offset of 4294967295 years",
                "x[1y:1ms] offset 4294967295y",
            ),
        ];
        for (name, q) in cases {
            let err = crate::query::engine::parse(q).expect_err(name);
            assert_eq!(err.error_type(), "bad_data", "case {name}: {err}");
        }
        for q in ["x offset 1e-30", "x[0.5]", "x[5m:0.5]", "x offset 292y"] {
            crate::query::engine::parse(q).unwrap_or_else(|e| panic!("case {q}: {e}"));
        }
    }

    #[test]
    fn a_panic_on_the_query_stack_is_an_error() {
        for (name, depth) in [("inline", 1), ("own thread", INLINE_DEPTH + 1)] {
            let err = on_query_stack(depth, || -> Result<(), EngineError> { panic!("boom") })
                .expect_err(name);
            assert_eq!(
                err,
                EngineError::Panicked("query evaluation"),
                "case {name}"
            );
            assert_eq!(err.http_status(), 422, "case {name}");
            assert_eq!(err.limit(), Some("panic"), "case {name}");
        }
    }
}

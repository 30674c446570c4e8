//! Prometheus v2.42's own promqltest files (shared/promqltest/) run
//! against ringdb's PromQL engine: every `eval` is counted, a table is
//! printed, and the number passed must not fall below
//! tests/it/promql_floor.txt. Native-histogram evals (histograms.test)
//! are reported but left out of the total.
//!
//! Set `PROMQL_CORPUS_VERBOSE=1` to print every failing eval.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use promql_parser::parser::{AtModifier, Expr};

use ringdb::query::engine::{
    self, Engine, Labels, Matcher, Sample, SeriesData, Storage, Value, STALE_NAN_BITS,
};

const CORPUS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/promqltest");
const FLOOR_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/promql_floor.txt");
/// Files counted outside the total (native histograms in later versions;
/// classic `le` buckets in 2.42, still out of the brief's scope).
const EXCLUDED_FILES: &[&str] = &["histograms.test"];

/// A plain in-memory store: every series and every sample.
#[derive(Default)]
struct MemStorage {
    series: Vec<SeriesData>,
}

impl Storage for MemStorage {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesData>, String> {
        let mut out = Vec::new();
        for s in &self.series {
            let ok = matchers
                .iter()
                .all(|m| m.matches_labels(&s.labels.to_vec()));
            if !ok {
                continue;
            }
            let samples: Vec<(i64, f64)> = s
                .samples
                .iter()
                .copied()
                .filter(|(t, _)| *t >= start_ms && *t <= end_ms)
                .collect();
            out.push(SeriesData {
                labels: s.labels.clone(),
                samples,
                resolution_ms: None,
            });
        }
        Ok(out)
    }
}

/// What the test file loaded, and the real ringdb store it is read through
/// (shared/promqltest/README.md): one `"*"` rule of type `last`, float
/// cells, a timeframe dividing every load interval (whole seconds, so the
/// one `load 1ms` block collapses), enough buckets for every sample. The
/// store is rebuilt after each load. Stale markers are accepted and not
/// stored (DESIGN §2), so evals that depend on them may fail here.
#[derive(Default)]
struct Loaded {
    raw: MemStorage,
    intervals_ms: Vec<i64>,
    store: Option<ringdb::store::Store>,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Loaded {
    fn load(&mut self, interval_ms: i64, series: Vec<(Labels, Vec<(i64, f64)>)>) {
        self.intervals_ms.push(interval_ms);
        load_into(&mut self.raw, series);
        self.store = None;
    }

    fn store(&mut self) -> &ringdb::store::Store {
        if self.store.is_none() {
            let tf = self
                .intervals_ms
                .iter()
                .map(|ms| (*ms as u64 / 1000).max(1))
                .fold(0, gcd)
                .max(1);
            let max_t = self
                .raw
                .series
                .iter()
                .flat_map(|s| s.samples.iter().map(|(t, _)| *t))
                .max()
                .unwrap_or(0)
                .max(0) as u64;
            let store = crate::common::float_store(tf, (max_t / 1000 / tf + 2) as u32);
            for s in &self.raw.series {
                // Refusals are what the corpus figure measures; not asserted here.
                crate::common::write_labelled(&store, &s.labels.to_vec(), &s.samples);
            }
            self.store = Some(store);
        }
        self.store.as_ref().expect("just built")
    }
}

/// Loads parsed series into the raw copy; loads add to earlier loads.
fn load_into(storage: &mut MemStorage, series: Vec<(Labels, Vec<(i64, f64)>)>) {
    for (labels, samples) in series {
        match storage
            .series
            .iter_mut()
            .find(|s| s.labels.to_vec() == labels)
        {
            Some(s) => {
                s.samples.extend(samples);
                s.samples.sort_by_key(|(t, _)| *t);
                s.samples.dedup_by_key(|(t, _)| *t);
            }
            None => storage.series.push(SeriesData {
                labels: labels.into(),
                samples,
                resolution_ms: None,
            }),
        }
    }
}

// ---- the promqltest language ---------------------------------------------

fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(0);
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total = 0i64;
    if bytes.is_empty() {
        return Err("empty duration".into());
    }
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(format!("bad duration {s:?}"));
        }
        let n: i64 = s[start..i]
            .parse()
            .map_err(|_| format!("bad duration {s:?}"))?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = match &s[ustart..i] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            u => return Err(format!("bad duration unit {u:?} in {s:?}")),
        };
        total += n * unit;
    }
    Ok(total)
}

fn parse_float(s: &str) -> Result<f64, String> {
    match s {
        "Inf" | "+Inf" | "inf" | "+inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        "NaN" | "nan" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|_| format!("bad number {s:?}")),
    }
}

fn parse_quoted(s: &str) -> Result<(String, &str), String> {
    let mut chars = s.char_indices();
    let quote = match chars.next() {
        Some((_, q @ ('"' | '\'' | '`'))) => q,
        _ => return Err(format!("expected a quoted string at {s:?}")),
    };
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            return Ok((out, &s[i + 1..]));
        }
        if c == '\\' && quote != '`' {
            match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, c2)) => out.push(c2),
                None => break,
            }
        } else {
            out.push(c);
        }
    }
    Err(format!("unterminated string in {s:?}"))
}

/// `name{a="b", ...}` (either part optional) → labels and the rest.
fn parse_series_desc(s: &str) -> Result<(Labels, &str), String> {
    let s = s.trim_start();
    let name_end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len());
    let mut labels: Labels = Vec::new();
    if name_end > 0 {
        labels.push(("__name__".into(), s[..name_end].to_string()));
    }
    let mut rest = &s[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let (name, r) = if rest.starts_with('"') {
                parse_quoted(rest)?
            } else {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                if end == 0 {
                    return Err(format!("bad label name at {rest:?}"));
                }
                (rest[..end].to_string(), &rest[end..])
            };
            let r = r
                .trim_start()
                .strip_prefix('=')
                .ok_or_else(|| format!("expected '=' at {r:?}"))?;
            let (value, r) = parse_quoted(r.trim_start())?;
            labels.retain(|(n, _)| *n != name);
            labels.push((name, value));
            rest = r.trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            }
        }
    } else if name_end == 0 {
        return Err(format!("expected a series description at {s:?}"));
    }
    labels.sort();
    Ok((labels, rest))
}

/// The expanding notation: `1+2x3`, `1-1x3`, `5x2`, `_`, `_x3`, `stale`.
/// `None` is a missing sample.
fn expand_values(s: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for tok in s.split_whitespace() {
        if tok == "_" {
            out.push(None);
            continue;
        }
        if tok == "stale" {
            out.push(Some(f64::from_bits(STALE_NAN_BITS)));
            continue;
        }
        let (base, times) = match tok.rfind('x') {
            Some(i) if tok[i + 1..].chars().all(|c| c.is_ascii_digit()) && i + 1 < tok.len() => (
                &tok[..i],
                Some(tok[i + 1..].parse::<u64>().map_err(|e| e.to_string())?),
            ),
            _ => (tok, None),
        };
        let Some(n) = times else {
            out.push(Some(parse_float(tok)?));
            continue;
        };
        if base == "_" {
            out.extend((0..n).map(|_| None));
            continue;
        }
        // Split `a+b` / `a-b` at the operator that is not a sign or an
        // exponent's sign.
        let bytes = base.as_bytes();
        let mut split = None;
        for i in 1..bytes.len() {
            if (bytes[i] == b'+' || bytes[i] == b'-') && !matches!(bytes[i - 1], b'e' | b'E') {
                split = Some(i);
                break;
            }
        }
        match split {
            Some(i) => {
                let mut cur = parse_float(&base[..i])?;
                let mut inc = parse_float(&base[i + 1..])?;
                if bytes[i] == b'-' {
                    inc = -inc;
                }
                for _ in 0..=n {
                    out.push(Some(cur));
                    cur += inc;
                }
            }
            None => {
                let v = if base == "stale" {
                    f64::from_bits(STALE_NAN_BITS)
                } else {
                    parse_float(base)?
                };
                out.extend((0..=n).map(|_| Some(v)));
            }
        }
    }
    Ok(out)
}

enum Expected {
    Scalar(f64),
    Series(Labels, Vec<f64>),
}

struct Eval {
    line: usize,
    expr: String,
    at_ms: i64,
    fail: bool,
    ordered: bool,
    expected: Vec<Expected>,
}

fn almost_equal(a: f64, b: f64) -> bool {
    const EPSILON: f64 = 0.000001;
    const MIN_NORMAL: f64 = 2.2250738585072014e-308;
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || diff < MIN_NORMAL {
        return diff < EPSILON * MIN_NORMAL;
    }
    diff / (a.abs() + b.abs()) < EPSILON
}

fn fmt_labels(l: &Labels) -> String {
    let inner: Vec<String> = l.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// Functions whose result depends on the evaluation time even when every
/// selector is pinned with `@` (Prometheus's `AtModifierUnsafeFunctions`).
const AT_UNSAFE_FUNCTIONS: &[&str] = &[
    "days_in_month",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "hour",
    "minute",
    "month",
    "year",
    "predict_linear",
    "time",
    "timestamp",
];

/// Pins every selector and outermost subquery without `@` to `ts` (ms), as
/// Prometheus's runner does; returns false when the expression calls an
/// `@`-unsafe function.
fn pin_at(e: &mut Expr, ts: i64) -> bool {
    let at = || {
        let t = if ts >= 0 {
            UNIX_EPOCH + Duration::from_millis(ts as u64)
        } else {
            UNIX_EPOCH - Duration::from_millis(ts.unsigned_abs())
        };
        Some(AtModifier::At(t))
    };
    match e {
        Expr::VectorSelector(vs) => {
            if vs.at.is_none() {
                vs.at = at();
            }
            true
        }
        Expr::MatrixSelector(ms) => {
            if ms.vs.at.is_none() {
                ms.vs.at = at();
            }
            true
        }
        Expr::Subquery(sq) => {
            if sq.at.is_none() {
                sq.at = at();
            }
            // Selectors inside keep their own times; only look for unsafe calls.
            !calls_unsafe(&sq.expr)
        }
        Expr::Aggregate(a) => {
            let p = a.param.as_mut().is_none_or(|p| pin_at(p, ts));
            pin_at(&mut a.expr, ts) && p
        }
        Expr::Unary(u) => pin_at(&mut u.expr, ts),
        Expr::Binary(b) => {
            let l = pin_at(&mut b.lhs, ts);
            pin_at(&mut b.rhs, ts) && l
        }
        Expr::Paren(p) => pin_at(&mut p.expr, ts),
        Expr::Call(c) => {
            let mut ok = !AT_UNSAFE_FUNCTIONS.contains(&c.func.name);
            for a in c.args.args.iter_mut() {
                ok &= pin_at(a, ts);
            }
            ok
        }
        _ => true,
    }
}

fn calls_unsafe(e: &Expr) -> bool {
    let mut copy = e.clone();
    !pin_at(&mut copy, 0)
}

/// Compares one result with the expectations of `ev`.
fn compare(ev: &Eval, value: Value) -> Result<(), String> {
    match value {
        Value::Scalar(_, v) => match ev.expected.as_slice() {
            [Expected::Scalar(x)] if almost_equal(*x, v) => Ok(()),
            _ => Err(format!("got scalar {v}")),
        },
        Value::String(_, s) => Err(format!("got string {s:?}")),
        Value::Vector(samples) => {
            let mut want: HashMap<&Labels, (usize, f64)> = HashMap::new();
            for (i, e) in ev.expected.iter().enumerate() {
                match e {
                    Expected::Series(l, vals) if vals.len() == 1 => {
                        want.insert(l, (i, vals[0]));
                    }
                    Expected::Series(..) => return Err("expected a matrix, got a vector".into()),
                    Expected::Scalar(_) => {
                        return Err(format!("expected a scalar, got vector {samples:?}"))
                    }
                }
            }
            for (pos, s) in samples.iter().enumerate() {
                let Some((epos, v)) = want.get(&s.labels) else {
                    return Err(format!(
                        "unexpected metric {} {} in result",
                        fmt_labels(&s.labels),
                        s.v
                    ));
                };
                if ev.ordered && *epos != pos {
                    return Err(format!(
                        "{} at position {pos}, expected {epos}",
                        fmt_labels(&s.labels)
                    ));
                }
                if !almost_equal(*v, s.v) {
                    return Err(format!(
                        "expected {v} for {} but got {}",
                        fmt_labels(&s.labels),
                        s.v
                    ));
                }
            }
            if samples.len() != want.len() {
                let got: Vec<&Labels> = samples.iter().map(|s| &s.labels).collect();
                let missing: Vec<String> = want
                    .keys()
                    .filter(|l| !got.contains(l))
                    .map(|l| fmt_labels(l))
                    .collect();
                return Err(format!("expected metrics not found: {}", missing.join(" ")));
            }
            Ok(())
        }
        Value::Matrix(series) => {
            if ev.ordered {
                return Err("expected ordered result, but query returned a matrix".into());
            }
            let mut want: HashMap<&Labels, &Vec<f64>> = HashMap::new();
            for e in &ev.expected {
                match e {
                    Expected::Series(l, vals) => {
                        want.insert(l, vals);
                    }
                    Expected::Scalar(_) => return Err("expected a scalar, got a matrix".into()),
                }
            }
            for s in &series {
                let Some(vals) = want.get(&s.labels) else {
                    return Err(format!(
                        "unexpected metric {} in result",
                        fmt_labels(&s.labels)
                    ));
                };
                let got: Vec<f64> = s.points.iter().map(|p| p.1).collect();
                if got.len() != vals.len()
                    || !got
                        .iter()
                        .zip(vals.iter())
                        .all(|(a, b)| almost_equal(*a, *b))
                {
                    return Err(format!(
                        "expected {vals:?} for {} but got {got:?}",
                        fmt_labels(&s.labels)
                    ));
                }
            }
            if series.len() != want.len() {
                return Err("expected metrics not found".into());
            }
            Ok(())
        }
    }
}

/// Runs one eval the way Prometheus 2.42's runner does: as an instant
/// query, then as a range query (t-1m..t+1m, step 1m) compared at t, and
/// again with `@ t` pinned on every selector at other evaluation times.
fn check(
    ev: &Eval,
    engine: &Engine,
    storage: &dyn Storage,
    runs: &mut usize,
) -> Result<(), String> {
    let parsed = engine::parse(&ev.expr);
    let mut variants: Vec<(Expr, i64)> = Vec::new();
    if let Ok(expr) = &parsed {
        variants.push((expr.clone(), ev.at_ms));
        let mut pinned = expr.clone();
        if pin_at(&mut pinned, ev.at_ms) {
            let ts = ev.at_ms;
            let times = if ts == 0 {
                vec![-1000, 0, 1000]
            } else {
                vec![-10 * ts, 0, ts / 5, ts, 10 * ts]
            };
            variants.extend(times.into_iter().map(|t| (pinned.clone(), t)));
        }
    }
    if ev.fail {
        let Ok(expr) = parsed else { return Ok(()) };
        return match engine.instant(storage, &expr, ev.at_ms) {
            Err(_) => Ok(()),
            Ok(v) => Err(format!("expected an error, got {v:?}")),
        };
    }
    if let Err(e) = parsed {
        return Err(format!("error: {e}"));
    }
    for (i, (expr, t)) in variants.iter().enumerate() {
        *runs += if ev.ordered { 1 } else { 2 };
        let tag = if i == 0 {
            String::new()
        } else {
            format!(" [@-pinned, at {t}ms]")
        };
        let value = engine
            .instant(storage, expr, *t)
            .map_err(|e| format!("error{tag}: {e}"))?;
        let is_scalar = matches!(value, Value::Scalar(..));
        compare(ev, value).map_err(|e| format!("{e}{tag}"))?;
        if ev.ordered {
            continue;
        }
        let range = engine
            .range(storage, expr, t - 60_000, t + 60_000, 60_000)
            .map_err(|e| format!("range mode{tag}: error: {e}"))?;
        let Value::Matrix(series) = range else {
            return Err(format!("range mode{tag}: not a matrix"));
        };
        let mut vec = Vec::new();
        for s in series {
            if let Some(p) = s.points.iter().find(|p| p.0 == *t) {
                vec.push(Sample {
                    labels: s.labels,
                    t: *t,
                    v: p.1,
                });
            }
        }
        let as_value = if is_scalar {
            match vec.first() {
                Some(s) => Value::Scalar(*t, s.v),
                None => return Err(format!("range mode{tag}: no scalar point at t")),
            }
        } else {
            Value::Vector(vec)
        };
        compare(ev, as_value).map_err(|e| format!("range mode{tag}: {e}"))?;
    }
    Ok(())
}

#[derive(Default)]
struct FileStats {
    /// Queries executed (instant, range-mode and `@`-pinned variants).
    runs: usize,
    passed: usize,
    total: usize,
    failures: Vec<String>,
}

fn run_file(text: &str, engine: &Engine) -> Result<FileStats, String> {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim())
        .map(|l| if l.starts_with('#') { "" } else { l })
        .collect();
    let mut loaded = Loaded::default();
    let mut stats = FileStats::default();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let lineno = i + 1;
        i += 1;
        if line.is_empty() {
            continue;
        }
        if line == "clear" {
            loaded = Loaded::default();
            continue;
        }
        if let Some(rest) = line.strip_prefix("load ") {
            let interval = parse_duration_ms(rest).map_err(|e| format!("line {lineno}: {e}"))?;
            let mut batch = Vec::new();
            while i < lines.len() && !lines[i].is_empty() {
                let (labels, values) =
                    parse_series_desc(lines[i]).map_err(|e| format!("line {}: {e}", i + 1))?;
                let vals = expand_values(values).map_err(|e| format!("line {}: {e}", i + 1))?;
                let samples: Vec<(i64, f64)> = vals
                    .into_iter()
                    .enumerate()
                    .filter_map(|(k, v)| v.map(|v| (k as i64 * interval, v)))
                    .collect();
                // Within one block a repeated series replaces the earlier
                // line (Prometheus keys the block by label hash).
                batch.retain(|(l, _): &(Labels, Vec<(i64, f64)>)| *l != labels);
                batch.push((labels, samples));
                i += 1;
            }
            loaded.load(interval, batch);
            continue;
        }
        let (cmd, rest) = line
            .split_once(' ')
            .ok_or_else(|| format!("line {lineno}: bad command {line:?}"))?;
        let (fail, ordered) = match cmd {
            "eval" => (false, false),
            "eval_fail" => (true, false),
            "eval_ordered" => (false, true),
            _ => return Err(format!("line {lineno}: unknown command {cmd:?}")),
        };
        let rest = rest.strip_prefix("instant at ").ok_or_else(|| {
            format!("line {lineno}: only `instant at` evals are supported: {line:?}")
        })?;
        let (at, expr) = rest
            .split_once(' ')
            .ok_or_else(|| format!("line {lineno}: no expression"))?;
        let at_ms = parse_duration_ms(at).map_err(|e| format!("line {lineno}: {e}"))?;
        let mut expected = Vec::new();
        while i < lines.len() && !lines[i].is_empty() {
            let l = lines[i];
            if let Ok(v) = parse_float(l) {
                expected.push(Expected::Scalar(v));
            } else {
                let (labels, values) =
                    parse_series_desc(l).map_err(|e| format!("line {}: {e}", i + 1))?;
                let vals = expand_values(values).map_err(|e| format!("line {}: {e}", i + 1))?;
                expected.push(Expected::Series(
                    labels,
                    vals.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect(),
                ));
            }
            i += 1;
        }
        let ev = Eval {
            line: lineno,
            expr: expr.trim().to_string(),
            at_ms,
            fail,
            ordered,
            expected,
        };
        stats.total += 1;
        let source = ringdb::query::source::StoreSource {
            store: loaded.store(),
            grant: &ringdb::access::Grant::All,
            max_samples: usize::MAX,
        };
        match check(&ev, engine, &source, &mut stats.runs) {
            Ok(()) => stats.passed += 1,
            Err(why) => stats.failures.push(format!(
                "line {}: {} @ {}ms: {why}",
                ev.line, ev.expr, ev.at_ms
            )),
        }
    }
    Ok(stats)
}

#[test]
fn promqltest_corpus_v2_42() {
    let dir = Path::new(CORPUS_DIR);
    if !dir.is_dir() {
        println!("SKIPPED promqltest corpus: {} not found", dir.display());
        return;
    }
    let engine = Engine {
        timeout: None,
        ..Engine::default()
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("read corpus dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .collect();
    files.sort();
    let verbose = std::env::var_os("PROMQL_CORPUS_VERBOSE").is_some();
    let (mut passed, mut total) = (0, 0);
    println!(
        "\n{:<22} {:>6} {:>6} {:>7} {:>8}",
        "file", "passed", "evals", "pct", "queries"
    );
    for path in &files {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let text = std::fs::read_to_string(path).expect("read corpus file");
        let stats = run_file(&text, &engine).unwrap_or_else(|e| panic!("{name}: {e}"));
        let excluded = EXCLUDED_FILES.contains(&name.as_str());
        if !excluded {
            passed += stats.passed;
            total += stats.total;
        }
        let pct = if stats.total == 0 {
            100.0
        } else {
            100.0 * stats.passed as f64 / stats.total as f64
        };
        println!(
            "{:<22} {:>6} {:>6} {:>6.1}% {:>8}{}",
            name,
            stats.passed,
            stats.total,
            pct,
            stats.runs,
            if excluded {
                "  (excluded from total)"
            } else {
                ""
            }
        );
        if verbose {
            for f in &stats.failures {
                println!("    FAIL {name} {f}");
            }
        }
    }
    let pct = if total == 0 {
        100.0
    } else {
        100.0 * passed as f64 / total as f64
    };
    println!("{:<22} {:>6} {:>6} {:>6.1}%", "TOTAL", passed, total, pct);
    let floor: usize = std::fs::read_to_string(FLOOR_FILE)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        passed >= floor,
        "promqltest corpus: {passed} evals passed, floor is {floor} ({FLOOR_FILE})"
    );
}

#[test]
fn expanding_notation() {
    struct Case {
        name: &'static str,
        input: &'static str,
        want: Vec<Option<f64>>,
    }
    let cases = [
        Case {
            name: "plain",
            input: "1 2",
            want: vec![Some(1.0), Some(2.0)],
        },
        Case {
            name: "increment",
            input: "1+2x3",
            want: vec![Some(1.0), Some(3.0), Some(5.0), Some(7.0)],
        },
        Case {
            name: "decrement",
            input: "1-1x2",
            want: vec![Some(1.0), Some(0.0), Some(-1.0)],
        },
        Case {
            name: "negative start",
            input: "-2+1x1",
            want: vec![Some(-2.0), Some(-1.0)],
        },
        Case {
            name: "repeat",
            input: "0x2",
            want: vec![Some(0.0), Some(0.0), Some(0.0)],
        },
        Case {
            name: "blanks",
            input: "_ _x2 3",
            want: vec![None, None, None, Some(3.0)],
        },
        Case {
            name: "exponent",
            input: "1e3",
            want: vec![Some(1000.0)],
        },
    ];
    for c in cases {
        assert_eq!(expand_values(c.input).unwrap(), c.want, "case {}", c.name);
    }
    let stale = expand_values("stale").unwrap();
    assert_eq!(
        stale[0].map(f64::to_bits),
        Some(STALE_NAN_BITS),
        "case stale"
    );
}

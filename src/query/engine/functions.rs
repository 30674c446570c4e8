//! PromQL functions of Prometheus 2.42 (float samples only), with 2.42's
//! arithmetic: extrapolated rate, running means, Go's NaN-propagating
//! min/max, Go's float formatting for labels.

use std::collections::HashMap;
use std::sync::Once;

use promql_parser::parser::value::ValueType;
use promql_parser::parser::{Call, Expr, Function};

use super::eval::{
    check_duplicates, drop_name, is_valid_label_name, label_value, set_label, Evaluator, RangeArg,
    Val,
};
use super::{EngineError, Labels, Sample};

/// Teaches promql-parser the 2.x functions it dropped (`holt_winters`).
/// Global to the process; idempotent.
pub(crate) fn register_legacy_functions() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // An error means another caller registered it already: fine.
        let _ = promql_parser::parser::register_extra_functions(vec![Function::new(
            "holt_winters",
            vec![ValueType::Matrix, ValueType::Scalar, ValueType::Scalar],
            0,
            ValueType::Vector,
            false,
        )]);
    });
}

fn unwrap_paren(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unwrap_paren(&p.expr),
        other => other,
    }
}

/// Go's `math.Max`: NaN wins.
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() {
            b
        } else {
            a
        }
    } else if a > b {
        a
    } else {
        b
    }
}

/// Go's `math.Min`: NaN wins.
fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() {
            a
        } else {
            b
        }
    } else if a < b {
        a
    } else {
        b
    }
}

/// Go's `strconv.FormatFloat(v, 'f', -1, 64)`: shortest digits, no
/// exponent, `+Inf`/`-Inf`/`NaN`.
pub(crate) fn format_go_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Prometheus's `quantile`: linear interpolation between closest ranks,
/// NaN sorted lowest; q < 0 is -Inf and q > 1 is +Inf.
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Prometheus's `extrapolatedRate` for `rate`, `increase` and `delta`.
fn extrapolated_rate(
    points: &[(i64, f64)],
    range_start: i64,
    range_end: i64,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (_, first_v) = points[0];
    let (_, last_v) = points[points.len() - 1];
    let mut result = last_v - first_v;
    if is_counter {
        let mut prev = first_v;
        for &(_, v) in &points[1..] {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    Some(extrapolate(
        result,
        points,
        range_start,
        range_end,
        is_counter,
        is_rate,
    ))
}

/// `ms as f64 / 1000.0`, bit for bit, without the division when `ms` is
/// whole seconds (then the quotient is an integer, exact as f64): rate
/// windows over aligned samples take this branch four times per step.
pub(crate) fn ms_to_secs(ms: i64) -> f64 {
    const EXACT: i64 = 1 << 53;
    if ms % 1000 == 0 && (-EXACT..EXACT).contains(&ms) {
        (ms / 1000) as f64
    } else {
        ms as f64 / 1000.0
    }
}

/// The extrapolation half of [`extrapolated_rate`]: `result` is the raw
/// increase (counter resets already added) over `points` (at least two).
#[inline]
pub(crate) fn extrapolate(
    result: f64,
    points: &[(i64, f64)],
    range_start: i64,
    range_end: i64,
    is_counter: bool,
    is_rate: bool,
) -> f64 {
    let (first_t, first_v) = points[0];
    let (last_t, _) = points[points.len() - 1];
    let span = WindowSpan::new(first_t, last_t, points.len(), range_start, range_end);
    Extrapolation::new(span).apply(result, first_v, is_counter, is_rate)
}

/// Where a window's samples sit in it: all that [`Extrapolation`] depends
/// on. Windows over regularly spaced samples share one span from step to
/// step and series to series, so its conversions and divisions can be
/// worked out once and reused while the span stays the same.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct WindowSpan {
    /// First sample's time minus the window's start (ms).
    to_start_ms: i64,
    /// The window's end minus its last sample's time (ms).
    to_end_ms: i64,
    /// Last sample's time minus the first's (ms).
    sampled_ms: i64,
    /// The window's length (ms).
    range_ms: i64,
    /// Samples in the window (at least two).
    n_points: usize,
}

impl WindowSpan {
    /// The span of a window `[range_start, range_end]` whose `n_points`
    /// samples run from `first_t` to `last_t`.
    #[inline]
    pub(crate) fn new(
        first_t: i64,
        last_t: i64,
        n_points: usize,
        range_start: i64,
        range_end: i64,
    ) -> WindowSpan {
        WindowSpan {
            to_start_ms: first_t - range_start,
            to_end_ms: range_end - last_t,
            sampled_ms: last_t - first_t,
            range_ms: range_end - range_start,
            n_points,
        }
    }
}

/// The figures [`extrapolate`] derives from a [`WindowSpan`] alone, each
/// computed exactly as Prometheus does, so that applying them to a result
/// gives the same bits as the whole computation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Extrapolation {
    duration_to_start: f64,
    sampled_interval: f64,
    half_avg_between: f64,
    threshold: f64,
    /// What the end of the window adds to the extrapolated interval.
    end_term: f64,
    range_secs: f64,
    /// The factor for `increase` and `delta` when the start of the window
    /// is not moved to the counter's zero (most windows): the divisions
    /// done once per span rather than once per window.
    factor: f64,
    /// `factor` divided by the window's length, for `rate`.
    rate_factor: f64,
    /// See [`Extrapolation::zero_before_start_impossible`]; 0 when that
    /// shortcut does not apply to the span.
    zero_ratio: f64,
}

impl Extrapolation {
    #[inline]
    pub(crate) fn new(span: WindowSpan) -> Extrapolation {
        let duration_to_start = ms_to_secs(span.to_start_ms);
        let duration_to_end = ms_to_secs(span.to_end_ms);
        let sampled_interval = ms_to_secs(span.sampled_ms);
        let avg_between = sampled_interval / (span.n_points - 1) as f64;
        let threshold = avg_between * 1.1;
        let half_avg_between = avg_between / 2.0;
        let end_term = if duration_to_end < threshold {
            duration_to_end
        } else {
            half_avg_between
        };
        let range_secs = ms_to_secs(span.range_ms);
        let factor = Self::factor_of(
            sampled_interval,
            duration_to_start,
            threshold,
            half_avg_between,
            end_term,
        );
        // A ratio K with sampled_interval * K >= duration_to_start (as
        // rounded): see `zero_before_start_impossible`. Twice the quotient
        // leaves room for its rounding; the check makes sure.
        let zero_ratio = duration_to_start / sampled_interval * 2.0;
        let zero_ratio = if sampled_interval > 0.0
            && zero_ratio > 0.0
            && zero_ratio.is_finite()
            && sampled_interval * zero_ratio >= duration_to_start
        {
            zero_ratio
        } else {
            0.0
        };
        Extrapolation {
            duration_to_start,
            sampled_interval,
            half_avg_between,
            threshold,
            end_term,
            range_secs,
            factor,
            rate_factor: factor / range_secs,
            zero_ratio,
        }
    }

    /// Prometheus's extrapolation factor (before dividing by the range)
    /// for a window whose start counts as `duration_to_start` away.
    #[inline]
    fn factor_of(
        sampled_interval: f64,
        duration_to_start: f64,
        threshold: f64,
        half_avg_between: f64,
        end_term: f64,
    ) -> f64 {
        let mut extrapolate_to = sampled_interval;
        extrapolate_to += if duration_to_start < threshold {
            duration_to_start
        } else {
            half_avg_between
        };
        extrapolate_to += end_term;
        extrapolate_to / sampled_interval
    }

    /// Whether Prometheus's `durationToZero = sampledInterval * (first_v /
    /// result)` surely is not below the duration to the window's start,
    /// decided without dividing (`result > 0`, `first_v >= 0`). False
    /// means "work it out".
    ///
    /// When the first sample is at the window's start (steps aligned with
    /// the samples, as dashboards ask), durationToStart is 0 and
    /// durationToZero, a product and quotient of numbers at least 0, is
    /// never below it (a NaN is not below anything either).
    ///
    /// With K = `zero_ratio` > 0 and sampledInterval * K >= durationToStart
    /// as rounded (checked in `new`): let p = result * K as rounded, a
    /// finite normal number. Rounding to nearest errs by at most 2^-53
    /// relatively, so the exact result * K is below 2p, and first_v >= 2p
    /// gives first_v / result > K exactly. Rounding is monotonic and K is
    /// a float, so the rounded quotient is at least K and durationToZero
    /// at least the rounded sampledInterval * K, hence at least
    /// durationToStart: the start stays where it is.
    #[inline]
    fn zero_before_start_impossible(&self, result: f64, first_v: f64) -> bool {
        if self.duration_to_start <= 0.0 {
            return true;
        }
        let p = result * self.zero_ratio;
        p >= f64::MIN_POSITIVE && p.is_finite() && first_v >= 2.0 * p
    }

    /// The extrapolated `result` of a window whose first sample is
    /// `first_v`.
    #[inline]
    pub(crate) fn apply(&self, result: f64, first_v: f64, is_counter: bool, is_rate: bool) -> f64 {
        if is_counter
            && result > 0.0
            && first_v >= 0.0
            && !self.zero_before_start_impossible(result, first_v)
        {
            let duration_to_zero = self.sampled_interval * (first_v / result);
            if duration_to_zero < self.duration_to_start {
                let mut factor = Self::factor_of(
                    self.sampled_interval,
                    duration_to_zero,
                    self.threshold,
                    self.half_avg_between,
                    self.end_term,
                );
                if is_rate {
                    factor /= self.range_secs;
                }
                return result * factor;
            }
        }
        result
            * if is_rate {
                self.rate_factor
            } else {
                self.factor
            }
    }
}

/// Prometheus's `instantValue` for `irate` and `idelta`.
fn instant_value(points: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (lt, lv) = points[points.len() - 1];
    let (pt, pv) = points[points.len() - 2];
    let mut result = if is_rate && lv < pv { lv } else { lv - pv };
    let interval = lt - pt;
    if interval == 0 {
        return None;
    }
    if is_rate {
        result /= interval as f64 / 1000.0;
    }
    Some(result)
}

fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Least-squares fit; x is seconds relative to `intercept_time`.
fn linear_regression(points: &[(i64, f64)], intercept_time: i64) -> (f64, f64) {
    let (mut n, mut sum_x, mut c_x, mut sum_y, mut c_y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sum_xy, mut c_xy, mut sum_x2, mut c_x2) = (0.0, 0.0, 0.0, 0.0);
    let init_y = points[0].1;
    let mut const_y = true;
    for (i, &(t, v)) in points.iter().enumerate() {
        if const_y && i > 0 && v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (t - intercept_time) as f64 / 1e3;
        (sum_x, c_x) = kahan_inc(x, sum_x, c_x);
        (sum_y, c_y) = kahan_inc(v, sum_y, c_y);
        (sum_xy, c_xy) = kahan_inc(x * v, sum_xy, c_xy);
        (sum_x2, c_x2) = kahan_inc(x * x, sum_x2, c_x2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (sum_x, sum_y, sum_xy, sum_x2) = (sum_x + c_x, sum_y + c_y, sum_xy + c_xy, sum_x2 + c_x2);
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

fn holt_winters(points: &[(i64, f64)], sf: f64, tf: f64) -> Result<Option<f64>, EngineError> {
    if sf <= 0.0 || sf >= 1.0 {
        return Err(EngineError::Execution(format!(
            "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:.6}"
        )));
    }
    if tf <= 0.0 || tf >= 1.0 {
        return Err(EngineError::Execution(format!(
            "invalid trend factor. Expected: 0 < tf < 1, got: {tf:.6}"
        )));
    }
    if points.len() < 2 {
        return Ok(None);
    }
    let (mut s0, mut s1) = (0.0, points[0].1);
    let mut b = points[1].1 - points[0].1;
    for (i, &(_, v)) in points.iter().enumerate().skip(1) {
        let x = sf * v;
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let y = (1.0 - sf) * (s1 + b);
        s0 = s1;
        s1 = x + y;
    }
    Ok(Some(s1))
}

fn avg_over_time(points: &[(i64, f64)]) -> f64 {
    let (mut mean, mut count) = (0.0f64, 0.0f64);
    for &(_, v) in points {
        count += 1.0;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        mean += v / count - mean / count;
    }
    mean
}

fn stdvar_over_time(points: &[(i64, f64)]) -> f64 {
    let (mut count, mut mean, mut aux) = (0.0, 0.0, 0.0);
    for &(_, v) in points {
        count += 1.0;
        let delta = v - mean;
        mean += delta / count;
        aux += delta * (v - mean);
    }
    aux / count
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic
/// Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A date function applied to a Unix time in seconds (UTC).
pub(crate) fn date_part(name: &str, v: f64) -> f64 {
    let secs = v as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    match name {
        "year" => y as f64,
        "month" => m as f64,
        "day_of_month" => d as f64,
        "day_of_week" => (days + 4).rem_euclid(7) as f64,
        "day_of_year" => {
            let cum: u32 = (1..m).map(|mm| days_in_month(y, mm)).sum();
            (cum + d) as f64
        }
        "days_in_month" => days_in_month(y, m) as f64,
        "hour" => (sod / 3600) as f64,
        "minute" => ((sod % 3600) / 60) as f64,
        _ => f64::NAN,
    }
}

fn simple_math(name: &str, v: f64) -> Option<f64> {
    Some(match name {
        "abs" => v.abs(),
        "ceil" => v.ceil(),
        "floor" => v.floor(),
        "exp" => v.exp(),
        "sqrt" => v.sqrt(),
        "ln" => v.ln(),
        "log2" => v.log2(),
        "log10" => v.log10(),
        "sgn" => {
            if v < 0.0 {
                -1.0
            } else if v > 0.0 {
                1.0
            } else {
                v
            }
        }
        "acos" => v.acos(),
        "acosh" => v.acosh(),
        "asin" => v.asin(),
        "asinh" => v.asinh(),
        "atan" => v.atan(),
        "atanh" => v.atanh(),
        "cos" => v.cos(),
        "cosh" => v.cosh(),
        "sin" => v.sin(),
        "sinh" => v.sinh(),
        "tan" => v.tan(),
        "tanh" => v.tanh(),
        "deg" => v * 180.0 / std::f64::consts::PI,
        "rad" => v * std::f64::consts::PI / 180.0,
        _ => return None,
    })
}

/// Labels `absent()`/`absent_over_time()` report: the selector's
/// equality matchers, minus names matched more than once or otherwise.
fn absent_labels(e: &Expr) -> Labels {
    let vs = match unwrap_paren(e) {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Vec::new(),
    };
    let mut labels: Labels = Vec::new();
    let mut empty: Vec<&str> = Vec::new();
    for m in &vs.matchers.matchers {
        if m.name == "__name__" {
            continue;
        }
        let has = labels.iter().any(|(n, _)| n == &m.name);
        if matches!(m.op, promql_parser::label::MatchOp::Equal) && !has {
            set_label(&mut labels, &m.name, &m.value);
        } else {
            empty.push(&m.name);
        }
    }
    labels.retain(|(n, _)| !empty.contains(&n.as_str()));
    labels
}

struct Bucket {
    upper: f64,
    count: f64,
}

/// Prometheus's `bucketQuantile` over classic `le` buckets.
fn bucket_quantile(q: f64, buckets: &mut Vec<Bucket>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| {
        a.upper
            .partial_cmp(&b.upper)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    if buckets.last().map(|b| b.upper) != Some(f64::INFINITY) {
        return f64::NAN;
    }
    // Coalesce equal bounds.
    let mut merged: Vec<Bucket> = Vec::with_capacity(buckets.len());
    for b in buckets.drain(..) {
        match merged.last_mut() {
            Some(last) if last.upper == b.upper => last.count += b.count,
            _ => merged.push(b),
        }
    }
    // Ensure monotonic counts.
    let mut max = f64::NEG_INFINITY;
    for b in merged.iter_mut() {
        if b.count > max {
            max = b.count;
        } else if b.count < max {
            b.count = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].count;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let n = merged.len() - 1;
    let b = merged[..n].partition_point(|bk| bk.count < rank);
    if b == n {
        return merged[n - 1].upper;
    }
    if b == 0 && merged[0].upper <= 0.0 {
        return merged[0].upper;
    }
    let mut start = 0.0;
    let end = merged[b].upper;
    let mut count = merged[b].count;
    if b > 0 {
        start = merged[b - 1].upper;
        count -= merged[b - 1].count;
        rank -= merged[b - 1].count;
    }
    start + (end - start) * (rank / count)
}

fn exec_err<T>(msg: String) -> Result<T, EngineError> {
    Err(EngineError::Execution(msg))
}

impl Evaluator<'_> {
    pub(crate) fn eval_call(&self, c: &Call, t: i64) -> Result<Val, EngineError> {
        let name = c.func.name;
        let args: Vec<&Expr> = c.args.args.iter().map(|a| unwrap_paren(a)).collect();
        let out = match name {
            "rate" | "increase" | "delta" | "irate" | "idelta" | "changes" | "resets" | "deriv"
            | "predict_linear" | "holt_winters" | "avg_over_time" | "min_over_time"
            | "max_over_time" | "sum_over_time" | "count_over_time" | "last_over_time"
            | "present_over_time" | "stddev_over_time" | "stdvar_over_time"
            | "quantile_over_time" | "absent_over_time" => {
                return self.range_function(name, &args, t);
            }
            "time" => return Ok(Val::Scalar(t as f64 / 1000.0)),
            "pi" => return Ok(Val::Scalar(std::f64::consts::PI)),
            "vector" => {
                let v = self.eval_scalar(args[0], t)?;
                return Ok(Val::Vector(vec![Sample {
                    labels: Vec::new(),
                    t,
                    v,
                }]));
            }
            "scalar" => {
                let v = self.eval_vector(args[0], t)?;
                return Ok(Val::Scalar(if v.len() == 1 { v[0].v } else { f64::NAN }));
            }
            "timestamp" => {
                let vec = match args[0] {
                    Expr::VectorSelector(vs) => self.eval_vector_selector(vs, t)?,
                    other => self
                        .eval_vector(other, t)?
                        .into_iter()
                        .map(|s| Sample { t, ..s })
                        .collect(),
                };
                vec.into_iter()
                    .map(|s| Sample {
                        labels: drop_name(&s.labels),
                        t,
                        v: s.t as f64 / 1000.0,
                    })
                    .collect()
            }
            "absent" => {
                let v = self.eval_vector(args[0], t)?;
                if v.is_empty() {
                    vec![Sample {
                        labels: absent_labels(args[0]),
                        t,
                        v: 1.0,
                    }]
                } else {
                    Vec::new()
                }
            }
            "sort" | "sort_desc" => {
                let mut v = self.eval_vector(args[0], t)?;
                let desc = name == "sort_desc";
                v.sort_by(|a, b| match (a.v.is_nan(), b.v.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ => {
                        let o = a.v.partial_cmp(&b.v).unwrap_or(std::cmp::Ordering::Equal);
                        if desc {
                            o.reverse()
                        } else {
                            o
                        }
                    }
                });
                return Ok(Val::Vector(v));
            }
            "label_replace" => self.label_replace(&args, t)?,
            "label_join" => self.label_join(&args, t)?,
            "histogram_quantile" => {
                let q = self.eval_scalar(args[0], t)?;
                let v = self.eval_vector(args[1], t)?;
                let mut order: Vec<Labels> = Vec::new();
                let mut groups: HashMap<Labels, (Labels, Vec<Bucket>)> = HashMap::new();
                for s in v {
                    let Ok(upper) = parse_go_float(label_value(&s.labels, "le")) else {
                        continue;
                    };
                    let key: Labels = s
                        .labels
                        .iter()
                        .filter(|(n, _)| n != "le")
                        .cloned()
                        .collect();
                    let entry = groups.entry(key.clone()).or_insert_with(|| {
                        order.push(key.clone());
                        let out: Labels = key
                            .iter()
                            .filter(|(n, _)| n != "__name__")
                            .cloned()
                            .collect();
                        (out, Vec::new())
                    });
                    entry.1.push(Bucket { upper, count: s.v });
                }
                let mut out = Vec::new();
                for k in order {
                    if let Some((labels, mut buckets)) = groups.remove(&k) {
                        out.push(Sample {
                            labels,
                            t,
                            v: bucket_quantile(q, &mut buckets),
                        });
                    }
                }
                out
            }
            "clamp" => {
                let v = self.eval_vector(args[0], t)?;
                let min = self.eval_scalar(args[1], t)?;
                let max = self.eval_scalar(args[2], t)?;
                if max < min {
                    Vec::new()
                } else {
                    map_drop(v, |x| go_max(min, go_min(max, x)))
                }
            }
            "clamp_max" => {
                let v = self.eval_vector(args[0], t)?;
                let max = self.eval_scalar(args[1], t)?;
                map_drop(v, |x| go_min(max, x))
            }
            "clamp_min" => {
                let v = self.eval_vector(args[0], t)?;
                let min = self.eval_scalar(args[1], t)?;
                map_drop(v, |x| go_max(min, x))
            }
            "round" => {
                let v = self.eval_vector(args[0], t)?;
                let to_nearest = if args.len() > 1 {
                    self.eval_scalar(args[1], t)?
                } else {
                    1.0
                };
                let inv = 1.0 / to_nearest;
                map_drop(v, |x| (x * inv + 0.5).floor() / inv)
            }
            "year" | "month" | "day_of_month" | "day_of_week" | "day_of_year" | "days_in_month"
            | "hour" | "minute" => {
                let v = if args.is_empty() {
                    vec![Sample {
                        labels: Vec::new(),
                        t,
                        v: t as f64 / 1000.0,
                    }]
                } else {
                    self.eval_vector(args[0], t)?
                };
                map_drop(v, |x| date_part(name, x))
            }
            _ => {
                if simple_math(name, 0.0).is_none() {
                    return Err(EngineError::BadData(format!(
                        "unknown function with name {name:?}"
                    )));
                }
                let v = self.eval_vector(args[0], t)?;
                map_drop(v, |x| simple_math(name, x).unwrap_or(f64::NAN))
            }
        };
        check_duplicates(&out)?;
        Ok(Val::Vector(out))
    }

    fn label_replace(&self, args: &[&Expr], t: i64) -> Result<Vec<Sample>, EngineError> {
        let v = self.eval_vector(args[0], t)?;
        let dst = self.eval_string(args[1], t)?;
        let repl = self.eval_string(args[2], t)?;
        let src = self.eval_string(args[3], t)?;
        let re_str = self.eval_string(args[4], t)?;
        let Ok(re) = regex::Regex::new(&format!("^(?:{re_str})$")) else {
            return exec_err(format!(
                "invalid regular expression in label_replace(): {re_str}"
            ));
        };
        if !is_valid_label_name(&dst) {
            return exec_err(format!(
                "invalid destination label name in label_replace(): {dst}"
            ));
        }
        let mut out = Vec::with_capacity(v.len());
        for mut s in v {
            let src_val = label_value(&s.labels, &src).to_string();
            if let Some(caps) = re.captures(&src_val) {
                let mut res = String::new();
                caps.expand(&repl, &mut res);
                set_label(&mut s.labels, &dst, &res);
            }
            out.push(s);
        }
        Ok(out)
    }

    fn label_join(&self, args: &[&Expr], t: i64) -> Result<Vec<Sample>, EngineError> {
        let v = self.eval_vector(args[0], t)?;
        let dst = self.eval_string(args[1], t)?;
        let sep = self.eval_string(args[2], t)?;
        let mut srcs = Vec::new();
        for a in &args[3..] {
            let s = self.eval_string(a, t)?;
            if !is_valid_label_name(&s) {
                return exec_err(format!("invalid source label name in label_join(): {s}"));
            }
            srcs.push(s);
        }
        if !is_valid_label_name(&dst) {
            return exec_err(format!(
                "invalid destination label name in label_join(): {dst}"
            ));
        }
        let mut out = Vec::with_capacity(v.len());
        for mut s in v {
            let joined: Vec<&str> = srcs.iter().map(|n| label_value(&s.labels, n)).collect();
            let joined = joined.join(&sep);
            set_label(&mut s.labels, &dst, &joined);
            out.push(s);
        }
        Ok(out)
    }

    fn range_function(&self, name: &str, args: &[&Expr], t: i64) -> Result<Val, EngineError> {
        let matrix_idx = if name == "quantile_over_time" { 1 } else { 0 };
        let mut scalars = Vec::new();
        for (i, a) in args.iter().enumerate() {
            if i != matrix_idx {
                scalars.push(self.eval_scalar(a, t)?);
            }
        }
        let arg: RangeArg = self.eval_range_arg(args[matrix_idx], t)?;
        if name == "absent_over_time" {
            if arg.series.iter().any(|s| !s.points.is_empty()) {
                return Ok(Val::Vector(Vec::new()));
            }
            return Ok(Val::Vector(vec![Sample {
                labels: absent_labels(args[matrix_idx]),
                t,
                v: 1.0,
            }]));
        }
        let mut out = Vec::with_capacity(arg.series.len());
        for s in &arg.series {
            let p = &s.points;
            if p.is_empty() {
                continue;
            }
            let v = range_value(name, p, arg.start, arg.end, t, &scalars)?;
            if let Some(v) = v {
                let labels = if name == "last_over_time" {
                    s.labels.clone()
                } else {
                    drop_name(&s.labels)
                };
                out.push(Sample { labels, t, v });
            }
        }
        check_duplicates(&out)?;
        Ok(Val::Vector(out))
    }
}

/// The value of range function `name` over one series' window `p` (not
/// empty) covering `[start, end]`, evaluated at `t`; `None` when the
/// function has no value for it.
pub(crate) fn range_value(
    name: &str,
    p: &[(i64, f64)],
    start: i64,
    end: i64,
    t: i64,
    scalars: &[f64],
) -> Result<Option<f64>, EngineError> {
    Ok(match name {
        "rate" => extrapolated_rate(p, start, end, true, true),
        "increase" => extrapolated_rate(p, start, end, true, false),
        "delta" => extrapolated_rate(p, start, end, false, false),
        "irate" => instant_value(p, true),
        "idelta" => instant_value(p, false),
        "changes" => Some(
            p.windows(2)
                .filter(|w| w[1].1 != w[0].1 && !(w[1].1.is_nan() && w[0].1.is_nan()))
                .count() as f64,
        ),
        "resets" => Some(p.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64),
        "deriv" => {
            if p.len() < 2 {
                None
            } else {
                Some(linear_regression(p, p[0].0).0)
            }
        }
        "predict_linear" => {
            if p.len() < 2 {
                None
            } else {
                let (slope, intercept) = linear_regression(p, t);
                Some(slope * scalars[0] + intercept)
            }
        }
        "holt_winters" => holt_winters(p, scalars[0], scalars[1])?,
        "avg_over_time" => Some(avg_over_time(p)),
        "min_over_time" => Some(
            p.iter()
                .fold(p[0].1, |m, &(_, v)| if v < m || m.is_nan() { v } else { m }),
        ),
        "max_over_time" => Some(
            p.iter()
                .fold(p[0].1, |m, &(_, v)| if v > m || m.is_nan() { v } else { m }),
        ),
        "sum_over_time" => Some(p.iter().map(|x| x.1).sum()),
        "count_over_time" => Some(p.len() as f64),
        "last_over_time" => Some(p[p.len() - 1].1),
        "present_over_time" => Some(1.0),
        "stddev_over_time" => Some(stdvar_over_time(p).sqrt()),
        "stdvar_over_time" => Some(stdvar_over_time(p)),
        "quantile_over_time" => {
            let mut vals: Vec<f64> = p.iter().map(|x| x.1).collect();
            Some(quantile(scalars[0], &mut vals))
        }
        _ => {
            return Err(EngineError::BadData(format!(
                "unknown function with name {name:?}"
            )))
        }
    })
}

fn map_drop(v: Vec<Sample>, f: impl Fn(f64) -> f64) -> Vec<Sample> {
    v.into_iter()
        .map(|s| Sample {
            labels: drop_name(&s.labels),
            t: s.t,
            v: f(s.v),
        })
        .collect()
}

/// Go's `strconv.ParseFloat` for label values like `+Inf` or `0.5`.
fn parse_go_float(s: &str) -> Result<f64, ()> {
    let trimmed = s.trim_start_matches(['+']);
    match trimmed.to_ascii_lowercase().as_str() {
        "inf" | "infinity" => {
            return Ok(if s.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            })
        }
        _ => {}
    }
    s.parse::<f64>().map_err(|_| ())
}

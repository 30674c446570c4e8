//! A fast path for the most common dashboard shapes:
//! `f(sel[r])` and `agg [by|without (...)] (f(sel[r]))` where `f` is a range
//! function without scalar arguments and `agg` an aggregation without a
//! parameter. Instead of re-walking the AST at every step (cloning every
//! series' labels and window per step), the series are prepared once
//! (stale markers dropped, output labels and groups worked out) and every
//! step slides each series' window with two pointers over the borrowed
//! samples. Results are bit-identical to the general evaluator: the same
//! arithmetic runs in the same order. Anything unusual (e.g. output label
//! sets that collide) falls back to the general path.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use promql_parser::parser::token::*;
use promql_parser::parser::{Expr, LabelModifier, MatrixSelector};

use super::aggregate::group_labels;
use super::eval::{drop_name, Evaluator};
use super::functions::{extrapolate, range_value};
use super::{is_stale_nan, EngineError, Labels, Sample, Series, SeriesData, Value};

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

/// A series prepared once for every step.
struct Prepared<'d> {
    /// Samples without staleness markers (borrowed when it had none).
    points: Cow<'d, [(i64, f64)]>,
    /// Indices `i` where `points[i].1 < points[i - 1].1` (counter resets).
    resets: Vec<usize>,
    /// Output series (plain) or group (aggregation) index.
    out: usize,
}

impl Evaluator<'_> {
    /// [`Evaluator::run_range`] for the shapes this module handles;
    /// `Ok(None)` when `expr` is not one of them.
    pub(crate) fn fast_range(
        &self,
        expr: &Expr,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Option<Value>, EngineError> {
        self.fast(expr, start, end, step, true)
    }

    /// [`Evaluator::run_instant`] for the shapes this module handles;
    /// `Ok(None)` when `expr` is not one of them.
    pub(crate) fn fast_instant(&self, expr: &Expr, t: i64) -> Result<Option<Value>, EngineError> {
        self.fast(expr, t, t, 1, false)
    }

    fn fast(
        &self,
        expr: &Expr,
        start: i64,
        end: i64,
        step: i64,
        range_mode: bool,
    ) -> Result<Option<Value>, EngineError> {
        let Some(shape) = shape(expr) else {
            return Ok(None);
        };
        let data = self.series_of(&shape.ms.vs);
        let is_counter_rate = matches!(shape.func, "rate" | "increase");
        let keeps_name = shape.func == "last_over_time";
        let fn_labels_of = |s: &SeriesData| -> Labels {
            if keeps_name {
                s.labels.to_vec()
            } else {
                drop_name(&s.labels)
            }
        };

        // A collision of output labels would be an error (or not)
        // depending on the step: leave that to the general path. Distinct
        // series that share one metric name cannot collide once it is
        // dropped, which spares building and hashing every label set.
        if !(keeps_name || one_metric_name(data)) || !all_distinct(data) {
            let fn_labels: Vec<Labels> = data.iter().map(fn_labels_of).collect();
            let mut seen: HashSet<&Labels> = HashSet::with_capacity(fn_labels.len());
            if !fn_labels.iter().all(|l| seen.insert(l)) {
                return Ok(None);
            }
        }

        // Output label sets, and each series' output index.
        let mut out_labels: Vec<Labels> = Vec::new();
        let mut series_out: Vec<usize> = Vec::with_capacity(data.len());
        match &shape.agg {
            None => {
                series_out.extend(0..data.len());
            }
            Some((_, false, grouping)) if grouping.is_empty() => {
                // `agg(...)` or `agg by ()`: one group without labels.
                if !data.is_empty() {
                    out_labels.push(Labels::new());
                }
                series_out.resize(data.len(), 0);
            }
            Some((_, without, grouping)) => {
                let mut index: HashMap<Labels, usize> = HashMap::new();
                for s in data {
                    let key = group_labels(&fn_labels_of(s), *without, grouping);
                    let next = index.len();
                    let i = *index.entry(key).or_insert_with_key(|key| {
                        out_labels.push(key.clone());
                        next
                    });
                    series_out.push(i);
                }
            }
        }
        let n_out = match &shape.agg {
            None => data.len(),
            Some(_) => out_labels.len(),
        };

        let prepared: Vec<Prepared<'_>> = data
            .iter()
            .zip(&series_out)
            .map(|(s, &out)| {
                let points: Cow<'_, [(i64, f64)]> =
                    if s.samples.iter().any(|(_, v)| is_stale_nan(*v)) {
                        Cow::Owned(
                            s.samples
                                .iter()
                                .copied()
                                .filter(|(_, v)| !is_stale_nan(*v))
                                .collect(),
                        )
                    } else {
                        Cow::Borrowed(s.samples.as_slice())
                    };
                let resets = if is_counter_rate {
                    (1..points.len())
                        .filter(|&i| points[i].1 < points[i - 1].1)
                        .collect()
                } else {
                    Vec::new()
                };
                Prepared {
                    points,
                    resets,
                    out,
                }
            })
            .collect();

        let range_ms = shape.ms.range.as_millis() as i64;
        let op = shape.agg.as_ref().map(|(op, _, _)| *op);
        let max_samples = self.engine.max_samples;
        // Step times, and each step's window [wstart, te].
        let mut steps: Vec<(i64, i64, i64)> = Vec::new();
        let mut t = start;
        while t <= end {
            let te = self.selector_time(&shape.ms.vs.at, &shape.ms.vs.offset, t);
            steps.push((t, te - range_ms, te));
            t += step;
        }
        let n_steps = steps.len();
        if n_out.saturating_mul(n_steps) > max_samples {
            // The general path stops at the limit as it goes; this one
            // would hold every output first.
            return Ok(None);
        }

        // Series by series (each series' samples stay in cache), every
        // step; per step, series still meet their group in series order,
        // so sums add up in the same order as the general path.
        let mut n_points = vec![0usize; n_steps];
        let mut out_count = vec![0usize; n_steps];
        let mut accs: Vec<Option<Acc>> = vec![None; if op.is_some() { n_out * n_steps } else { 0 }];
        let mut appeared: Vec<usize> = Vec::new();
        let mut plain_points: Vec<Vec<(i64, f64)>> = Vec::new();
        let mut plain_instant: Vec<(usize, f64)> = Vec::new();
        for (si, p) in prepared.iter().enumerate() {
            if si.is_multiple_of(256) {
                self.check_deadline()?;
            }
            let pts: &[(i64, f64)] = &p.points;
            let mut series_points: Vec<(i64, f64)> = Vec::new();
            let (mut lo, mut hi) = (0usize, 0usize);
            for (k, &(t, wstart, te)) in steps.iter().enumerate() {
                // Windows only move forward with t (or stay, with `@`).
                if lo > 0 && pts[lo - 1].0 >= wstart || hi > 0 && pts[hi - 1].0 > te {
                    lo = 0;
                    hi = 0;
                }
                while lo < pts.len() && pts[lo].0 < wstart {
                    lo += 1;
                }
                hi = hi.max(lo);
                while hi < pts.len() && pts[hi].0 <= te {
                    hi += 1;
                }
                let w = &pts[lo..hi];
                if w.is_empty() {
                    continue;
                }
                n_points[k] += w.len();
                let v = if is_counter_rate {
                    if w.len() < 2 {
                        None
                    } else {
                        let mut result = w[w.len() - 1].1 - w[0].1;
                        let from = p.resets.partition_point(|&i| i <= lo);
                        for &i in &p.resets[from..] {
                            if i >= hi {
                                break;
                            }
                            result += pts[i - 1].1;
                        }
                        Some(extrapolate(
                            result,
                            w,
                            wstart,
                            te,
                            true,
                            shape.func == "rate",
                        ))
                    }
                } else {
                    range_value(shape.func, w, wstart, te, t, &[])?
                };
                let Some(v) = v else { continue };
                match op {
                    None => {
                        out_count[k] += 1;
                        if range_mode {
                            series_points.push((t, v));
                        } else {
                            plain_instant.push((p.out, v));
                        }
                    }
                    Some(op) => match &mut accs[k * n_out + p.out] {
                        Some(a) => a.add(op, v),
                        slot @ None => {
                            *slot = Some(Acc::new(op, v));
                            out_count[k] += 1;
                            appeared.push(p.out);
                        }
                    },
                }
            }
            if range_mode && op.is_none() {
                plain_points.push(series_points);
            }
        }

        // The general path's limits: samples held by a step plus those
        // already output.
        let mut output_samples = 0usize;
        for k in 0..n_steps {
            if n_points[k] > max_samples {
                return Err(EngineError::TooManySamples("query execution"));
            }
            if range_mode {
                output_samples += out_count[k];
                if n_points[k] + output_samples > max_samples {
                    return Err(EngineError::TooManySamples("query execution"));
                }
            }
        }

        let labels_of = |o: usize| -> Labels {
            match op {
                None => fn_labels_of(&data[o]),
                Some(_) => out_labels[o].clone(),
            }
        };
        Ok(Some(if range_mode {
            let points: Vec<Vec<(i64, f64)>> = match op {
                None => plain_points,
                Some(op) => (0..n_out)
                    .map(|g| {
                        steps
                            .iter()
                            .enumerate()
                            .filter_map(|(k, &(t, _, _))| {
                                accs[k * n_out + g].map(|a| (t, a.finish(op)))
                            })
                            .collect()
                    })
                    .collect(),
            };
            let mut out: Vec<Series> = points
                .into_iter()
                .enumerate()
                .filter(|(_, p)| !p.is_empty())
                .map(|(o, points)| Series {
                    labels: labels_of(o),
                    points,
                })
                .collect();
            out.sort_by(|a, b| a.labels.cmp(&b.labels));
            Value::Matrix(out)
        } else {
            let vs: Vec<(usize, f64)> = match op {
                None => plain_instant,
                Some(op) => appeared
                    .iter()
                    .filter_map(|&g| accs[g].map(|a| (g, a.finish(op))))
                    .collect(),
            };
            Value::Vector(
                vs.into_iter()
                    .map(|(o, v)| Sample {
                        labels: labels_of(o),
                        t: start,
                        v,
                    })
                    .collect(),
            )
        }))
    }
}

/// Whether every series has the same `__name__` (or none has one): then
/// dropping it keeps distinct label sets distinct.
fn one_metric_name(data: &[SeriesData]) -> bool {
    fn name(s: &SeriesData) -> Option<&str> {
        s.labels
            .iter()
            .find(|(n, _)| n == "__name__")
            .map(|(_, v)| v.as_str())
    }
    data.first()
        .is_none_or(|first| data.iter().all(|s| name(s) == name(first)))
}

/// Whether no two series have the same labels (they come sorted, so equal
/// ones would be neighbours).
fn all_distinct(data: &[SeriesData]) -> bool {
    data.windows(2).all(|w| w[0].labels != w[1].labels)
}

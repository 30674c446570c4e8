//! Aggregation operators (`sum`, `avg`, `topk`, `count_values`, ...) with
//! `by`/`without`, following Prometheus 2.42's arithmetic exactly (running
//! mean for avg, Welford for stddev/stdvar, heaps for topk/bottomk).

use std::collections::HashMap;

use promql_parser::parser::token::*;
use promql_parser::parser::{AggregateExpr, LabelModifier};

use super::eval::{is_valid_label_name, set_label, Evaluator, Val};
use super::functions::{format_go_float, quantile};
use super::{EngineError, Labels, Sample};

struct Group {
    labels: Labels,
    value: f64,
    mean: f64,
    count: usize,
    heap: Vec<Sample>,
    values: Vec<f64>,
}

impl Evaluator<'_> {
    pub(crate) fn eval_aggregate(&self, a: &AggregateExpr, t: i64) -> Result<Val, EngineError> {
        let op = a.op.id();
        let input = self.eval_vector(&a.expr, t)?;
        let (without, grouping): (bool, Vec<String>) = match &a.modifier {
            Some(LabelModifier::Include(ls)) => (false, ls.labels.clone()),
            Some(LabelModifier::Exclude(ls)) => (true, ls.labels.clone()),
            None => (false, Vec::new()),
        };
        let mut param_f = 0.0;
        let mut value_label = String::new();
        match op {
            T_TOPK | T_BOTTOMK | T_QUANTILE => {
                let p = a.param.as_ref().ok_or_else(|| {
                    EngineError::BadData("aggregation requires a parameter".into())
                })?;
                param_f = self.eval_scalar(p, t)?;
            }
            T_COUNT_VALUES => {
                let p = a.param.as_ref().ok_or_else(|| {
                    EngineError::BadData("aggregation requires a parameter".into())
                })?;
                value_label = self.eval_string(p, t)?;
                if !is_valid_label_name(&value_label) {
                    return Err(EngineError::Execution(format!(
                        "invalid label name {value_label:?}"
                    )));
                }
            }
            _ => {}
        }
        Ok(Val::Vector(aggregate(
            op,
            input,
            without,
            &grouping,
            param_f,
            &value_label,
        )?))
    }
}

pub(crate) fn group_labels(
    labels: &[(String, String)],
    without: bool,
    grouping: &[String],
) -> Labels {
    if without {
        labels
            .iter()
            .filter(|(n, _)| n != "__name__" && !grouping.iter().any(|g| g == n))
            .cloned()
            .collect()
    } else {
        labels
            .iter()
            .filter(|(n, _)| grouping.iter().any(|g| g == n))
            .cloned()
            .collect()
    }
}

/// Go's `vectorByValueHeap.Less`: NaN sorts lowest.
fn less_value(a: f64, b: f64) -> bool {
    a.is_nan() || a < b
}

/// Go's `vectorByReverseValueHeap.Less`: NaN sorts lowest, then descending.
fn less_reverse(a: f64, b: f64) -> bool {
    a.is_nan() || a > b
}

// container/heap, as Go implements it, so ties resolve the same way.
fn heap_up(h: &mut [Sample], mut j: usize, less: fn(f64, f64) -> bool) {
    while j > 0 {
        let i = (j - 1) / 2;
        if !less(h[j].v, h[i].v) {
            break;
        }
        h.swap(i, j);
        j = i;
    }
}

fn heap_down(h: &mut [Sample], i0: usize, less: fn(f64, f64) -> bool) -> bool {
    let n = h.len();
    let mut i = i0;
    loop {
        let j1 = 2 * i + 1;
        if j1 >= n {
            break;
        }
        let mut j = j1;
        let j2 = j1 + 1;
        if j2 < n && less(h[j2].v, h[j1].v) {
            j = j2;
        }
        if !less(h[j].v, h[i].v) {
            break;
        }
        h.swap(i, j);
        i = j;
    }
    i > i0
}

fn heap_fix(h: &mut [Sample], i: usize, less: fn(f64, f64) -> bool) {
    if !heap_down(h, i, less) {
        heap_up(h, i, less);
    }
}

/// Aggregates one instant vector.
pub(crate) fn aggregate(
    op: TokenId,
    input: Vec<Sample>,
    without: bool,
    grouping: &[String],
    param: f64,
    value_label: &str,
) -> Result<Vec<Sample>, EngineError> {
    let mut grouping: Vec<String> = grouping.to_vec();
    let mut k: usize = 0;
    if op == T_TOPK || op == T_BOTTOMK {
        let kf = param as i64;
        if kf < 1 {
            return Ok(Vec::new());
        }
        k = (kf as u64).min(input.len() as u64) as usize;
    }
    if op == T_COUNT_VALUES && !without {
        grouping.push(value_label.to_string());
    }

    let mut order: Vec<Labels> = Vec::new();
    let mut groups: HashMap<Labels, Group> = HashMap::new();
    for s in input {
        let metric = if op == T_COUNT_VALUES {
            let mut m = s.labels.clone();
            set_label(&mut m, value_label, &format_go_float(s.v));
            m
        } else {
            s.labels.clone()
        };
        let key = group_labels(&metric, without, &grouping);
        let Some(g) = groups.get_mut(&key) else {
            let mut g = Group {
                labels: key.clone(),
                value: s.v,
                mean: s.v,
                count: 1,
                heap: Vec::new(),
                values: Vec::new(),
            };
            match op {
                T_STDDEV | T_STDVAR => g.value = 0.0,
                T_TOPK | T_BOTTOMK => g.heap.push(Sample {
                    labels: s.labels.clone(),
                    t: s.t,
                    v: s.v,
                }),
                T_QUANTILE => g.values.push(s.v),
                T_GROUP => g.value = 1.0,
                _ => {}
            }
            order.push(key.clone());
            groups.insert(key, g);
            continue;
        };
        match op {
            T_SUM => g.value += s.v,
            T_AVG => {
                g.count += 1;
                if g.mean.is_infinite() {
                    if s.v.is_infinite() && (g.mean > 0.0) == (s.v > 0.0) {
                        continue;
                    }
                    if !s.v.is_infinite() && !s.v.is_nan() {
                        continue;
                    }
                }
                let c = g.count as f64;
                g.mean += s.v / c - g.mean / c;
            }
            T_GROUP => {}
            T_COUNT | T_COUNT_VALUES => g.count += 1,
            T_MAX => {
                if g.value < s.v || g.value.is_nan() {
                    g.value = s.v;
                }
            }
            T_MIN => {
                if g.value > s.v || g.value.is_nan() {
                    g.value = s.v;
                }
            }
            T_STDDEV | T_STDVAR => {
                g.count += 1;
                let delta = s.v - g.mean;
                g.mean += delta / g.count as f64;
                g.value += delta * (s.v - g.mean);
            }
            T_TOPK => {
                if g.heap.len() < k {
                    g.heap.push(s.clone());
                    let n = g.heap.len() - 1;
                    heap_up(&mut g.heap, n, less_value);
                } else if g.heap[0].v < s.v || (g.heap[0].v.is_nan() && !s.v.is_nan()) {
                    g.heap[0] = s.clone();
                    if k > 1 {
                        heap_fix(&mut g.heap, 0, less_value);
                    }
                }
            }
            T_BOTTOMK => {
                if g.heap.len() < k {
                    g.heap.push(s.clone());
                    let n = g.heap.len() - 1;
                    heap_up(&mut g.heap, n, less_reverse);
                } else if g.heap[0].v > s.v || (g.heap[0].v.is_nan() && !s.v.is_nan()) {
                    g.heap[0] = s.clone();
                    if k > 1 {
                        heap_fix(&mut g.heap, 0, less_reverse);
                    }
                }
            }
            T_QUANTILE => g.values.push(s.v),
            _ => {
                return Err(EngineError::BadData(format!(
                    "unknown aggregation operator {op}"
                )))
            }
        }
    }

    let mut out = Vec::with_capacity(order.len());
    for key in order {
        let Some(mut g) = groups.remove(&key) else {
            continue;
        };
        let v = match op {
            T_AVG => g.mean,
            T_COUNT | T_COUNT_VALUES => g.count as f64,
            T_STDVAR => g.value / g.count as f64,
            T_STDDEV => (g.value / g.count as f64).sqrt(),
            T_TOPK | T_BOTTOMK => {
                // Go sorts the heap with sort.Reverse; for the small inputs
                // seen here that is an insertion sort, i.e. stable.
                let less = if op == T_TOPK {
                    less_value
                } else {
                    less_reverse
                };
                g.heap.sort_by(|a, b| {
                    if a.v.is_nan() && b.v.is_nan() {
                        std::cmp::Ordering::Equal
                    } else if less(b.v, a.v) {
                        std::cmp::Ordering::Less
                    } else if less(a.v, b.v) {
                        std::cmp::Ordering::Greater
                    } else {
                        std::cmp::Ordering::Equal
                    }
                });
                out.extend(g.heap);
                continue;
            }
            T_QUANTILE => quantile(param, &mut g.values),
            _ => g.value,
        };
        out.push(Sample {
            labels: g.labels,
            t: 0,
            v,
        });
    }
    Ok(out)
}

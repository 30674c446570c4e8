//! Binary operators: arithmetic, comparison (with `bool`), set operators
//! and vector matching (`on`/`ignoring`, `group_left`/`group_right`).

use std::collections::{HashMap, HashSet};

use promql_parser::parser::token::*;
use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};

use super::eval::{check_duplicates, drop_name, label_value, set_label, Evaluator, Val};
use super::{EngineError, Labels, Sample};

/// How the two sides of a vector/vector operation are matched.
struct Matching<'m> {
    card: &'m VectorMatchCardinality,
    on: bool,
    names: Vec<String>,
    include: Vec<String>,
}

impl Evaluator<'_> {
    pub(crate) fn eval_binary(&self, b: &BinaryExpr, t: i64) -> Result<Val, EngineError> {
        let op = b.op.id();
        let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        match (lhs, rhs) {
            (Val::Scalar(l), Val::Scalar(r)) => {
                let (v, keep) = elem_binop(op, l, r)?;
                if is_comparison(op) {
                    Ok(Val::Scalar(if keep { 1.0 } else { 0.0 }))
                } else {
                    Ok(Val::Scalar(v))
                }
            }
            (Val::Vector(l), Val::Scalar(r)) => {
                let out = vector_scalar(op, l, r, false, return_bool)?;
                check_duplicates(&out)?;
                Ok(Val::Vector(out))
            }
            (Val::Scalar(l), Val::Vector(r)) => {
                let out = vector_scalar(op, r, l, true, return_bool)?;
                check_duplicates(&out)?;
                Ok(Val::Vector(out))
            }
            (Val::Vector(l), Val::Vector(r)) => {
                let default_card = if is_set_op(op) {
                    VectorMatchCardinality::ManyToMany
                } else {
                    VectorMatchCardinality::OneToOne
                };
                let (card, on, names) = match &b.modifier {
                    Some(m) => {
                        let (on, names) = match &m.matching {
                            Some(LabelModifier::Include(ls)) => (true, ls.labels.clone()),
                            Some(LabelModifier::Exclude(ls)) => (false, ls.labels.clone()),
                            None => (false, Vec::new()),
                        };
                        (&m.card, on, names)
                    }
                    None => (&default_card, false, Vec::new()),
                };
                let include = match card {
                    VectorMatchCardinality::ManyToOne(ls) | VectorMatchCardinality::OneToMany(ls) => ls.labels.clone(),
                    _ => Vec::new(),
                };
                let m = Matching { card, on, names, include };
                let out = match op {
                    T_LAND => and(l, r, &m),
                    T_LOR => or(l, r, &m),
                    T_LUNLESS => unless(l, r, &m),
                    _ => vector_binop(op, l, r, &m, return_bool)?,
                };
                check_duplicates(&out)?;
                Ok(Val::Vector(out))
            }
            (l, r) => Err(EngineError::BadData(format!(
                "binary expression must contain only scalar and instant vector types, got {:?} and {:?}",
                kind(&l),
                kind(&r)
            ))),
        }
    }
}

fn kind(v: &Val) -> &'static str {
    match v {
        Val::Scalar(_) => "scalar",
        Val::Str(_) => "string",
        Val::Vector(_) => "vector",
        Val::Matrix(_) => "matrix",
    }
}

pub(crate) fn is_comparison(op: TokenId) -> bool {
    matches!(op, T_EQLC | T_NEQ | T_GTR | T_LSS | T_GTE | T_LTE)
}

fn is_set_op(op: TokenId) -> bool {
    matches!(op, T_LAND | T_LOR | T_LUNLESS)
}

/// Arithmetic operators drop the metric name; comparisons keep it, and so
/// does `atan2` in 2.42.
fn drops_name(op: TokenId) -> bool {
    matches!(op, T_ADD | T_SUB | T_MUL | T_DIV | T_MOD | T_POW)
}

/// Prometheus's `vectorElemBinop`: the value and, for comparisons,
/// whether the comparison holds.
pub(crate) fn elem_binop(op: TokenId, l: f64, r: f64) -> Result<(f64, bool), EngineError> {
    Ok(match op {
        T_ADD => (l + r, true),
        T_SUB => (l - r, true),
        T_MUL => (l * r, true),
        T_DIV => (l / r, true),
        T_POW => (l.powf(r), true),
        T_MOD => (l % r, true),
        T_ATAN2 => (l.atan2(r), true),
        T_EQLC => (l, l == r),
        T_NEQ => (l, l != r),
        T_GTR => (l, l > r),
        T_LSS => (l, l < r),
        T_GTE => (l, l >= r),
        T_LTE => (l, l <= r),
        _ => {
            return Err(EngineError::BadData(format!(
                "operator {op} not allowed here"
            )))
        }
    })
}

fn vector_scalar(
    op: TokenId,
    vec: Vec<Sample>,
    scalar: f64,
    swap: bool,
    return_bool: bool,
) -> Result<Vec<Sample>, EngineError> {
    let mut out = Vec::with_capacity(vec.len());
    for mut s in vec {
        let (l, r) = if swap { (scalar, s.v) } else { (s.v, scalar) };
        let (mut value, mut keep) = elem_binop(op, l, r)?;
        if is_comparison(op) && swap {
            value = r;
        }
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if keep {
            s.v = value;
            if drops_name(op) || return_bool {
                s.labels = drop_name(&s.labels);
            }
            out.push(s);
        }
    }
    Ok(out)
}

/// The labels two samples are matched on.
fn signature(labels: &Labels, on: bool, names: &[String]) -> Labels {
    if on {
        labels
            .iter()
            .filter(|(n, _)| names.iter().any(|x| x == n))
            .cloned()
            .collect()
    } else {
        labels
            .iter()
            .filter(|(n, _)| n != "__name__" && !names.iter().any(|x| x == n))
            .cloned()
            .collect()
    }
}

fn and(l: Vec<Sample>, r: Vec<Sample>, m: &Matching) -> Vec<Sample> {
    if l.is_empty() || r.is_empty() {
        return Vec::new();
    }
    let right: HashSet<Labels> = r
        .iter()
        .map(|s| signature(&s.labels, m.on, &m.names))
        .collect();
    l.into_iter()
        .filter(|s| right.contains(&signature(&s.labels, m.on, &m.names)))
        .collect()
}

fn or(l: Vec<Sample>, r: Vec<Sample>, m: &Matching) -> Vec<Sample> {
    if l.is_empty() {
        return r;
    }
    if r.is_empty() {
        return l;
    }
    let left: HashSet<Labels> = l
        .iter()
        .map(|s| signature(&s.labels, m.on, &m.names))
        .collect();
    let mut out = l;
    out.extend(
        r.into_iter()
            .filter(|s| !left.contains(&signature(&s.labels, m.on, &m.names))),
    );
    out
}

fn unless(l: Vec<Sample>, r: Vec<Sample>, m: &Matching) -> Vec<Sample> {
    if l.is_empty() || r.is_empty() {
        return l;
    }
    let right: HashSet<Labels> = r
        .iter()
        .map(|s| signature(&s.labels, m.on, &m.names))
        .collect();
    l.into_iter()
        .filter(|s| !right.contains(&signature(&s.labels, m.on, &m.names)))
        .collect()
}

fn labels_string(labels: &Labels) -> String {
    let inner: Vec<String> = labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// Prometheus's `VectorBinop` for one-to-one and many-to-one/one-to-many.
fn vector_binop(
    op: TokenId,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    m: &Matching,
    return_bool: bool,
) -> Result<Vec<Sample>, EngineError> {
    if matches!(m.card, VectorMatchCardinality::ManyToMany) {
        return Err(EngineError::BadData(
            "many-to-many only allowed for set operators".into(),
        ));
    }
    if lhs.is_empty() || rhs.is_empty() {
        return Ok(Vec::new());
    }
    let one_to_many = matches!(m.card, VectorMatchCardinality::OneToMany(_));
    let (lhs, rhs) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };

    let mut right: HashMap<Labels, &Sample> = HashMap::with_capacity(rhs.len());
    for rs in &rhs {
        let sig = signature(&rs.labels, m.on, &m.names);
        if let Some(dup) = right.get(&sig) {
            let side = if one_to_many { "left" } else { "right" };
            return Err(EngineError::Execution(format!(
                "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                labels_string(&sig),
                labels_string(&rs.labels),
                labels_string(&dup.labels)
            )));
        }
        right.insert(sig, rs);
    }

    let one_to_one = matches!(m.card, VectorMatchCardinality::OneToOne);
    let mut matched: HashMap<Labels, HashSet<Labels>> = HashMap::new();
    let mut out = Vec::new();
    for ls in &lhs {
        let sig = signature(&ls.labels, m.on, &m.names);
        let Some(rs) = right.get(&sig) else { continue };
        let (vl, vr) = if one_to_many {
            (rs.v, ls.v)
        } else {
            (ls.v, rs.v)
        };
        let (mut value, keep) = elem_binop(op, vl, vr)?;
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
        } else if !keep {
            continue;
        }
        let mut metric = result_metric(&ls.labels, &rs.labels, op, m);
        if return_bool {
            metric = drop_name(&metric);
        }
        if one_to_one {
            if matched.contains_key(&sig) {
                return Err(EngineError::Execution(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                ));
            }
            matched.insert(sig, HashSet::new());
        } else {
            let set = matched.entry(sig).or_default();
            if !set.insert(metric.clone()) {
                return Err(EngineError::Execution(
                    "multiple matches for labels: grouping labels must ensure unique results"
                        .into(),
                ));
            }
        }
        out.push(Sample {
            labels: metric,
            t: ls.t,
            v: value,
        });
    }
    Ok(out)
}

fn result_metric(lhs: &Labels, rhs: &Labels, op: TokenId, m: &Matching) -> Labels {
    let mut labels: Labels = lhs.clone();
    if drops_name(op) {
        labels.retain(|(n, _)| n != "__name__");
    }
    if matches!(m.card, VectorMatchCardinality::OneToOne) {
        if m.on {
            labels.retain(|(n, _)| m.names.iter().any(|x| x == n));
        } else {
            labels.retain(|(n, _)| !m.names.iter().any(|x| x == n));
        }
    }
    for name in &m.include {
        let v = label_value(rhs, name).to_string();
        set_label(&mut labels, name, &v);
    }
    labels
}

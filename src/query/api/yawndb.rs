//! YAWNDB-compatible REST routes (DESIGN §8, reference/yawndb.md §4):
//! envelope `{"status","code","answer"}`, YAWNDB's codes and statuses, and
//! never a 500 for bad input.

use super::ApiContext;
use crate::access::Grant;
use crate::rrd::{Consolidation, Reading};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value as Json};
use std::collections::HashMap;
use std::sync::Arc;

/// Widest slice (in buckets) and largest `n`, as YAWNDB's `max_slice`.
pub const MAX_SLICE: u64 = 100_000;

/// A YAWNDB error: code and message, mapped to the wire in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    code: &'static str,
    message: String,
}

fn err(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        code,
        message: message.into(),
    }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self.code {
            "path_not_found" | "rule_not_found" | "not_found" => StatusCode::NOT_FOUND,
            "slice_too_big" => StatusCode::PAYLOAD_TOO_LARGE,
            "internal" => StatusCode::INTERNAL_SERVER_ERROR,
            "forbidden" => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        envelope(
            self.status(),
            "error",
            self.code,
            Json::String(self.message),
        )
    }
}

fn envelope(status: StatusCode, state: &str, code: &str, answer: Json) -> Response {
    let body = json!({"status": state, "code": code, "answer": answer});
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// A successful answer.
pub fn ok(answer: Json) -> Response {
    envelope(StatusCode::OK, "ok", "ok", answer)
}

/// The JSON 404 for unknown routes (YAWNDB answered a bare 404).
pub async fn not_found(uri: axum::http::Uri) -> Response {
    err("not_found", format!("no route {}", uri.path())).into_response()
}

type Params = Query<HashMap<String, String>>;

fn number(
    params: &HashMap<String, String>,
    name: &str,
    code: &'static str,
) -> Result<u64, ApiError> {
    let raw = params.get(name).ok_or_else(|| {
        err(
            code,
            format!("missing parameter {name}, expected a non-negative integer"),
        )
    })?;
    raw.parse::<u64>().map_err(|_| {
        err(
            code,
            format!("parameter {name}={raw:?}, expected a non-negative integer"),
        )
    })
}

/// One rendered bucket value.
fn render(reading: Reading<'_>, integer_mean: bool) -> Json {
    match reading {
        Reading::Empty => json!("empty"),
        Reading::Special(name) => json!(name),
        Reading::Uint(v) => json!(v),
        // An avg over integer cells reads as the rounded mean, as in YAWNDB.
        Reading::Float(v) if integer_mean && v.is_finite() => json!(v.round() as u64),
        Reading::Float(v) if v.is_nan() => json!("NaN"),
        Reading::Float(v) if v.is_infinite() => json!(if v > 0.0 { "+Inf" } else { "-Inf" }),
        Reading::Float(v) => json!(v),
    }
}

/// The slice answer: `Some(rows)`, or `None` when the series has no data
/// for the rule (YAWNDB's bare `"empty"`).
fn slice_rows(
    ctx: &ApiContext,
    grant: &Grant,
    path: &str,
    rule: &str,
    bounds: impl FnOnce(u64, Option<u64>) -> Result<(u64, u64), ApiError>,
) -> Result<Option<Vec<(u64, Json)>>, ApiError> {
    let rules = ctx.store.rules();
    let found = ctx.store.read(path, |series| {
        if !grant.may_read(series.prefix(path)) {
            return Err(err("path_not_found", format!("path {path:?} not found")));
        }
        let configured = rules
            .for_prefix(series.prefix(path))
            .iter()
            .find(|r| r.name == rule)
            .ok_or_else(|| {
                err(
                    "rule_not_found",
                    format!("rule {rule:?} not found for path {path:?}"),
                )
            })?;
        let tf = configured.shape.timeframe_secs;
        let Some(archive) = series.archive(rule).filter(|a| a.newest_bucket().is_some()) else {
            bounds(tf, None)?;
            return Ok(None);
        };
        let (from, to) = bounds(tf, archive.newest_timestamp_secs())?;
        let shape = archive.shape();
        let integer_mean =
            shape.consolidation == Consolidation::Avg && shape.value_size.is_integer();
        let (first, last) = (from / tf, to.div_ceil(tf));
        Ok(Some(
            archive
                .range(first, last)
                .map(|(b, r)| (b * tf, render(r, integer_mean)))
                .collect(),
        ))
    });
    found.unwrap_or_else(|| Err(err("path_not_found", format!("path {path:?} not found"))))
}

fn rows_json(rows: Option<Vec<(u64, Json)>>) -> Json {
    match rows {
        None => json!("empty"),
        Some(rows) => Json::Array(rows.into_iter().map(|(t, v)| json!([t, v])).collect()),
    }
}

fn from_to(params: &HashMap<String, String>) -> Result<(u64, u64), ApiError> {
    let from = number(params, "from", "no_from")?;
    let to = number(params, "to", "no_to")?;
    if from > to {
        return Err(err(
            "from_to_order",
            format!("from={from} is after to={to}, expected from <= to"),
        ));
    }
    Ok((from, to))
}

/// The bounds for `slice_rows` of a request with explicit `from`/`to`,
/// refused when wider than [`MAX_SLICE`] buckets.
fn fixed_range(
    from: u64,
    to: u64,
) -> impl FnOnce(u64, Option<u64>) -> Result<(u64, u64), ApiError> {
    move |tf, _| {
        check_width(from, to, tf)?;
        Ok((from, to))
    }
}

fn check_width(from: u64, to: u64, tf: u64) -> Result<(), ApiError> {
    if (to - from) / tf > MAX_SLICE {
        return Err(err(
            "slice_too_big",
            format!(
                "{} buckets requested, at most {MAX_SLICE}",
                (to - from) / tf
            ),
        ));
    }
    Ok(())
}

/// `GET /paths/<path>/<rule>/slice?from&to`
pub async fn slice(
    State(ctx): State<Arc<ApiContext>>,
    Extension(grant): Extension<Grant>,
    Path((path, rule)): Path<(String, String)>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let (from, to) = from_to(&params)?;
    let rows = slice_rows(&ctx, &grant, &path, &rule, fixed_range(from, to))?;
    Ok(ok(rows_json(rows)))
}

/// `GET /paths/<path>/<rule>/last?n`
pub async fn last(
    State(ctx): State<Arc<ApiContext>>,
    Extension(grant): Extension<Grant>,
    Path((path, rule)): Path<(String, String)>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let n = number(&params, "n", "no_n")?;
    if n > MAX_SLICE {
        return Err(err("slice_too_big", format!("n={n}, at most {MAX_SLICE}")));
    }
    let rows = slice_rows(&ctx, &grant, &path, &rule, |tf, newest| {
        let newest = newest.unwrap_or(0);
        Ok((newest.saturating_sub(n.saturating_sub(1) * tf), newest))
    })?;
    let rows = match (n, rows) {
        (0, Some(_)) => Some(Vec::new()),
        (_, rows) => rows,
    };
    Ok(ok(rows_json(rows)))
}

/// `GET /paths/<path>/rules`: every configured rule for the path's prefix.
pub async fn rules(
    State(ctx): State<Arc<ApiContext>>,
    Extension(grant): Extension<Grant>,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let rules = ctx.store.rules();
    let names = ctx
        .store
        .read(&path, |series| {
            grant.may_read(series.prefix(&path)).then(|| {
                rules
                    .for_prefix(series.prefix(&path))
                    .iter()
                    .map(|r| r.name.clone())
                    .collect::<Vec<_>>()
            })
        })
        .flatten()
        .ok_or_else(|| err("path_not_found", format!("path {path:?} not found")))?;
    Ok(ok(json!(names)))
}

/// Items of a `paths=` form body: `p1/r1,p2/r2` (multi-slice) or `p1,p2`.
fn form_paths(query: Option<&str>, body: &str) -> Vec<String> {
    let mut found = Vec::new();
    for source in [body, query.unwrap_or("")] {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(source).unwrap_or_default();
        for (k, v) in pairs {
            if k == "paths" {
                found.extend(v.split(',').filter(|s| !s.is_empty()).map(str::to_owned));
            }
        }
    }
    found
}

/// `POST /paths/slice?from&to` with body `paths=p1/r1,p2/r2`: rows keyed by
/// the first item's timestamps, later items looked up by timestamp.
pub async fn multi_slice(
    State(ctx): State<Arc<ApiContext>>,
    Extension(grant): Extension<Grant>,
    Query(params): Params,
    RawQuery(raw): RawQuery,
    body: String,
) -> Result<Response, ApiError> {
    let (from, to) = from_to(&params)?;
    let items = form_paths(raw.as_deref(), &body);
    if items.is_empty() {
        return Err(err(
            "no_paths",
            "expected paths=path/rule,path/rule in the body",
        ));
    }
    let mut columns = Vec::new();
    for item in &items {
        let (path, rule) = item
            .split_once('/')
            .filter(|(p, r)| !p.is_empty() && !r.is_empty())
            .ok_or_else(|| err("no_paths", format!("item {item:?}, expected path/rule")))?;
        let rows = slice_rows(&ctx, &grant, path, rule, fixed_range(from, to))?;
        columns.push(rows.unwrap_or_default());
    }
    let lookups: Vec<HashMap<u64, Json>> = columns[1..]
        .iter()
        .map(|c| c.iter().cloned().collect())
        .collect();
    let rows: Vec<Json> = columns[0]
        .iter()
        .map(|(t, v)| {
            let mut row = vec![json!(t), v.clone()];
            row.extend(
                lookups
                    .iter()
                    .map(|l| l.get(t).cloned().unwrap_or(json!("empty"))),
            );
            Json::Array(row)
        })
        .collect();
    Ok(ok(Json::Array(rows)))
}

/// How `POST /aggregate` combines the paths' values at one timestamp.
#[derive(Debug, Clone, Copy)]
enum Aggregate {
    Max,
    Min,
    Avg,
    Sum,
}

/// Combines one timestamp's values: `"empty"` when any path has no number
/// there (YAWNDB's rule; a special counts as no number, where YAWNDB
/// crashed or compared atoms); integers stay integers, `avg` of integers is
/// rounded as in YAWNDB.
fn combine(values: &[&Json], how: Aggregate) -> Json {
    if values.iter().any(|v| !v.is_number()) {
        return json!("empty");
    }
    if let Some(ints) = values
        .iter()
        .map(|v| v.as_u64())
        .collect::<Option<Vec<u64>>>()
    {
        let sum: u128 = ints.iter().map(|&v| u128::from(v)).sum();
        let n = ints.len() as u128;
        return match how {
            Aggregate::Max => json!(ints.iter().max()),
            Aggregate::Min => json!(ints.iter().min()),
            Aggregate::Sum => u64::try_from(sum).map_or_else(|_| json!(sum as f64), |s| json!(s)),
            Aggregate::Avg => json!(((sum + n / 2) / n) as u64),
        };
    }
    let floats: Vec<f64> = values.iter().filter_map(|v| v.as_f64()).collect();
    let sum: f64 = floats.iter().sum();
    let v = match how {
        Aggregate::Max => floats.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        Aggregate::Min => floats.iter().copied().fold(f64::INFINITY, f64::min),
        Aggregate::Sum => sum,
        Aggregate::Avg => sum / floats.len() as f64,
    };
    render(Reading::Float(v), false)
}

/// `POST /aggregate?from&to&rule&aggregate=max|min|avg|sum` (admin), body
/// `paths=p1,p2`: every path sliced with the same rule and range, combined
/// per timestamp.
pub async fn aggregate(
    State(ctx): State<Arc<ApiContext>>,
    Extension(grant): Extension<Grant>,
    Query(params): Params,
    RawQuery(raw): RawQuery,
    body: String,
) -> Result<Response, ApiError> {
    number(&params, "from", "no_from")?;
    number(&params, "to", "no_to")?;
    let rule = params
        .get("rule")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| err("no_rule", "missing parameter rule"))?;
    let how = params.get("aggregate").ok_or_else(|| {
        err(
            "no_aggregate",
            "missing parameter aggregate, expected max, min, avg or sum",
        )
    })?;
    let (from, to) = from_to(&params)?;
    let how = match how.as_str() {
        "max" => Aggregate::Max,
        "min" => Aggregate::Min,
        "avg" => Aggregate::Avg,
        "sum" => Aggregate::Sum,
        other => {
            return Err(err(
                "no_aggregate",
                format!("aggregate={other:?}, expected max, min, avg or sum"),
            ))
        }
    };
    let paths = form_paths(raw.as_deref(), &body);
    if paths.is_empty() {
        return Err(err("no_paths", "expected paths=path1,path2 in the body"));
    }
    let mut columns = Vec::new();
    for path in &paths {
        let rows = slice_rows(&ctx, &grant, path, rule, fixed_range(from, to))?;
        columns.push(rows);
    }
    // Every slice has the same timestamps (same rule, same range); a path
    // with no data for the rule has none, and makes every row empty.
    let Some(stamps) = columns
        .iter()
        .flatten()
        .next()
        .map(|c| c.iter().map(|(t, _)| *t).collect::<Vec<_>>())
    else {
        return Ok(ok(json!("empty")));
    };
    let empty = json!("empty");
    let rows: Vec<Json> = stamps
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let values: Vec<&Json> = columns
                .iter()
                .map(|c| c.as_ref().map_or(&empty, |rows| &rows[i].1))
                .collect();
            json!([t, combine(&values, how)])
        })
        .collect();
    Ok(ok(Json::Array(rows)))
}

/// `GET /status` (admin): counts of series, archives and dirty series.
pub async fn status(State(ctx): State<Arc<ApiContext>>) -> Response {
    let stats = ctx.store.stats();
    ok(json!({
        "paths_count": stats.series,
        "archives_count": stats.archives,
        "archive_bytes": stats.archive_bytes,
        "dirty_paths_count": ctx.store.dirty_series(),
    }))
}

/// `GET /paths/all` (admin): every series key.
pub async fn all_paths(
    State(ctx): State<Arc<ApiContext>>,
    Extension(grant): Extension<Grant>,
) -> Response {
    let mut keys: Vec<String> = ctx
        .store
        .series_keys()
        .into_iter()
        .filter(|(_, prefix)| grant.may_read(prefix))
        .map(|(k, _)| k.to_string())
        .collect();
    keys.sort();
    ok(json!(keys))
}

/// `DELETE /paths/<path>` (admin): drop the series from memory and disk.
pub async fn delete_path(
    State(ctx): State<Arc<ApiContext>>,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let snapshotter = ctx.snapshotter.clone();
    let store = ctx.store.clone();
    let key = path.clone();
    let held = tokio::task::spawn_blocking(move || snapshotter.delete_series(&store, &key))
        .await
        .map_err(|e| err("internal", e.to_string()))?
        .map_err(|e| err("internal", e.to_string()))?;
    if !held {
        return Err(err("path_not_found", format!("path {path:?} not found")));
    }
    Ok(ok(json!("deleted")))
}

/// Admin guard: a client without `admin: true` gets 403.
pub async fn require_admin(
    Extension(grant): Extension<Grant>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if grant.is_admin() {
        next.run(req).await
    } else {
        err(
            "forbidden",
            "this client certificate may not use the admin routes",
        )
        .into_response()
    }
}

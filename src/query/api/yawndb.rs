//! YAWNDB-compatible REST routes (DESIGN §8, reference/yawndb.md §4):
//! envelope `{"status","code","answer"}`, YAWNDB's codes and statuses, and
//! never a 500 for bad input.

use super::{ApiContext, ReadError, Reader, SlotError};
use crate::access::Grant;
use crate::rrd::{Consolidation, Reading};
use axum::extract::{FromRequestParts, Path, Query, RawQuery, State};
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
            "slice_too_big" | "response_too_big" => StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_requests" => StatusCode::TOO_MANY_REQUESTS,
            "timeout" | "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
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

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        let code = match &e {
            ReadError::Slot(SlotError::ClientBusy { .. }) => "too_many_requests",
            ReadError::Slot(SlotError::Timeout { .. }) => "timeout",
            ReadError::Slot(SlotError::Closed) => "unavailable",
            ReadError::Failed(_) => "internal",
        };
        err(code, e.to_string())
    }
}

/// The reading client of a YAWNDB route: refused with 403 (YAWNDB
/// envelope) before anything is read when its grant reads nothing.
pub struct ReadAccess(Reader);

impl FromRequestParts<Arc<ApiContext>> for ReadAccess {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        ctx: &Arc<ApiContext>,
    ) -> Result<Self, Self::Rejection> {
        Reader::from_parts(parts, ctx)
            .map(ReadAccess)
            .ok_or_else(|| {
                err(
                    "forbidden",
                    "this client certificate may not read any series (clients: read is empty)",
                )
            })
    }
}

/// Runs a read on the blocking pool under one of the client's query
/// slots; `work` builds the whole response there.
async fn run_read(
    ctx: &Arc<ApiContext>,
    reader: &Reader,
    work: impl FnOnce(&ApiContext) -> Result<Response, ApiError> + Send + 'static,
) -> Result<Response, ApiError> {
    super::run_read(ctx, &reader.client, work).await?
}

fn envelope(status: StatusCode, state: &str, code: &str, answer: Json) -> Response {
    let body = json!({"status": state, "code": code, "answer": answer});
    text_response(status, body.to_string())
}

fn text_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body,
    )
        .into_response()
}

/// A successful answer, refused with 413 `response_too_big` when its
/// encoding passes `limits.max_response_bytes`.
fn ok_capped(ctx: &ApiContext, answer: Json) -> Result<Response, ApiError> {
    let max_bytes = ctx.max_response_bytes;
    let body = json!({"status": "ok", "code": "ok", "answer": answer}).to_string();
    if body.len() > max_bytes {
        return Err(response_too_big(ctx, body.len()));
    }
    Ok(text_response(StatusCode::OK, body))
}

/// The refusal (counted) of an answer of `bytes` or more.
fn response_too_big(ctx: &ApiContext, bytes: usize) -> ApiError {
    let max_bytes = ctx.max_response_bytes;
    ctx.metrics.add(
        super::REFUSED_METRIC,
        &[("reason", "max_response_bytes")],
        1,
    );
    err(
        "response_too_big",
        format!(
            "the answer takes {bytes} bytes or more, more than limits.max_response_bytes = {max_bytes}"
        ),
    )
}

/// Refuses a multi-slice or aggregate reading more than
/// `limits.max_slice_buckets` buckets in all: `rules` are the rule names
/// the items read, each over `[from, to]`. Unknown rules count nothing
/// here (they are refused when read).
fn check_total_buckets<'r>(
    ctx: &ApiContext,
    rules: impl IntoIterator<Item = &'r str>,
    from: u64,
    to: u64,
) -> Result<(), ApiError> {
    let ruleset = ctx.store.rules();
    let (mut items, mut total) = (0u64, 0u64);
    for name in rules {
        items += 1;
        let Some(rule) = ruleset.by_name(name) else {
            continue;
        };
        let tf = rule.shape.timeframe_secs.max(1);
        total = total.saturating_add(to.div_ceil(tf) - from / tf + 1);
    }
    if total > ctx.max_slice_buckets {
        ctx.metrics
            .add(super::REFUSED_METRIC, &[("reason", "max_slice_buckets")], 1);
        return Err(err(
            "slice_too_big",
            format!(
                "{items} paths x buckets = {total} buckets requested, at most \
                 limits.max_slice_buckets = {}",
                ctx.max_slice_buckets
            ),
        ));
    }
    Ok(())
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
        // Only copied under the shard's lock; rendered after it is released.
        let cells: Vec<Cell> = archive.range(first, last).map(|(_, r)| r.into()).collect();
        Ok(Some((first, tf, integer_mean, cells)))
    });
    let copied =
        found.unwrap_or_else(|| Err(err("path_not_found", format!("path {path:?} not found"))))?;
    Ok(copied.map(|(first, tf, integer_mean, cells)| {
        (first..)
            .zip(cells)
            .map(|(b, cell)| (b * tf, render(cell.reading(), integer_mean)))
            .collect()
    }))
}

/// A bucket's reading copied out of its archive (specials by name).
enum Cell {
    Empty,
    Special(Box<str>),
    Uint(u64),
    Float(f64),
}

impl From<Reading<'_>> for Cell {
    fn from(r: Reading<'_>) -> Cell {
        match r {
            Reading::Empty => Cell::Empty,
            Reading::Special(name) => Cell::Special(name.into()),
            Reading::Uint(v) => Cell::Uint(v),
            Reading::Float(v) => Cell::Float(v),
        }
    }
}

impl Cell {
    fn reading(&self) -> Reading<'_> {
        match self {
            Cell::Empty => Reading::Empty,
            Cell::Special(name) => Reading::Special(name),
            Cell::Uint(v) => Reading::Uint(*v),
            Cell::Float(v) => Reading::Float(*v),
        }
    }
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
    ReadAccess(reader): ReadAccess,
    Path((path, rule)): Path<(String, String)>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let (from, to) = from_to(&params)?;
    check_total_buckets(&ctx, [rule.as_str()], from, to)?;
    let grant = reader.grant.clone();
    run_read(&ctx, &reader, move |ctx| {
        let rows = slice_rows(ctx, &grant, &path, &rule, fixed_range(from, to))?;
        ok_capped(ctx, rows_json(rows))
    })
    .await
}

/// `GET /paths/<path>/<rule>/last?n`
pub async fn last(
    State(ctx): State<Arc<ApiContext>>,
    ReadAccess(reader): ReadAccess,
    Path((path, rule)): Path<(String, String)>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let n = number(&params, "n", "no_n")?;
    if n > MAX_SLICE {
        return Err(err("slice_too_big", format!("n={n}, at most {MAX_SLICE}")));
    }
    if n > ctx.max_slice_buckets {
        ctx.metrics
            .add(super::REFUSED_METRIC, &[("reason", "max_slice_buckets")], 1);
        return Err(err(
            "slice_too_big",
            format!(
                "n={n}, at most limits.max_slice_buckets = {}",
                ctx.max_slice_buckets
            ),
        ));
    }
    let grant = reader.grant.clone();
    run_read(&ctx, &reader, move |ctx| {
        let rows = slice_rows(ctx, &grant, &path, &rule, |tf, newest| {
            let newest = newest.unwrap_or(0);
            Ok((newest.saturating_sub(n.saturating_sub(1) * tf), newest))
        })?;
        let rows = match (n, rows) {
            (0, Some(_)) => Some(Vec::new()),
            (_, rows) => rows,
        };
        ok_capped(ctx, rows_json(rows))
    })
    .await
}

/// `GET /paths/<path>/rules`: every configured rule for the path's prefix.
pub async fn rules(
    State(ctx): State<Arc<ApiContext>>,
    ReadAccess(Reader { grant, .. }): ReadAccess,
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
    ReadAccess(reader): ReadAccess,
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
    let pairs = items
        .iter()
        .map(|item| {
            item.split_once('/')
                .filter(|(p, r)| !p.is_empty() && !r.is_empty())
                .map(|(p, r)| (p.to_owned(), r.to_owned()))
                .ok_or_else(|| err("no_paths", format!("item {item:?}, expected path/rule")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_total_buckets(&ctx, pairs.iter().map(|(_, r)| r.as_str()), from, to)?;
    let grant = reader.grant.clone();
    run_read(&ctx, &reader, move |ctx| {
        multi_slice_rows(ctx, &grant, &pairs, from, to)
    })
    .await
}

/// The multi-slice answer, built on the blocking pool.
fn multi_slice_rows(
    ctx: &ApiContext,
    grant: &Grant,
    pairs: &[(String, String)],
    from: u64,
    to: u64,
) -> Result<Response, ApiError> {
    let mut columns = Vec::new();
    for (path, rule) in pairs {
        let rows = slice_rows(ctx, grant, path, rule, fixed_range(from, to))?;
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
    ok_capped(ctx, Json::Array(rows))
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
    ReadAccess(reader): ReadAccess,
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
    check_total_buckets(&ctx, paths.iter().map(|_| rule.as_str()), from, to)?;
    let (grant, rule) = (reader.grant.clone(), rule.clone());
    run_read(&ctx, &reader, move |ctx| {
        aggregate_rows(ctx, &grant, &paths, &rule, (from, to), how)
    })
    .await
}

/// The aggregate answer, built on the blocking pool.
fn aggregate_rows(
    ctx: &ApiContext,
    grant: &Grant,
    paths: &[String],
    rule: &str,
    (from, to): (u64, u64),
    how: Aggregate,
) -> Result<Response, ApiError> {
    let mut columns = Vec::new();
    for path in paths {
        let rows = slice_rows(ctx, grant, path, rule, fixed_range(from, to))?;
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
    ok_capped(ctx, Json::Array(rows))
}

/// `GET /status` (admin): counts of series, archives and dirty series
/// (counting dirty series walks every shard: on the blocking pool).
pub async fn status(State(ctx): State<Arc<ApiContext>>) -> Result<Response, ApiError> {
    let answer = super::run_walk(&ctx, |ctx| {
        let stats = ctx.store.stats();
        json!({
            "paths_count": stats.series,
            "archives_count": stats.archives,
            "archive_bytes": stats.archive_bytes,
            "dirty_paths_count": ctx.store.dirty_series(),
        })
    })
    .await?;
    Ok(ok(answer))
}

/// `GET /paths/all` (admin): every series key the client may read, sorted;
/// walked on the blocking pool under a query slot. An answer that would
/// pass `limits.max_response_bytes` is refused (413 `response_too_big`)
/// as soon as the walk has seen that many bytes of keys.
pub async fn all_paths(
    State(ctx): State<Arc<ApiContext>>,
    ReadAccess(reader): ReadAccess,
) -> Result<Response, ApiError> {
    let grant = reader.grant.clone();
    run_read(&ctx, &reader, move |ctx| {
        let max_bytes = ctx.max_response_bytes;
        let (mut keys, mut bytes) = (Vec::new(), 0usize);
        ctx.store.scan(|key, series| {
            if grant.may_read(series.prefix(key)) {
                // Quotes and a comma; escapes only make it longer.
                bytes += key.len() + 3;
                keys.push(key.to_owned());
            }
            bytes <= max_bytes
        });
        if bytes > max_bytes {
            return Err(response_too_big(ctx, bytes));
        }
        keys.sort_unstable();
        ok_capped(ctx, json!(keys))
    })
    .await
}

/// `DELETE /paths/<path>` (admin): drop the series from memory and disk.
pub async fn delete_path(
    State(ctx): State<Arc<ApiContext>>,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let disk = ctx.disk.clone();
    let store = ctx.store.clone();
    let key = path.clone();
    let held = tokio::task::spawn_blocking(move || disk.delete_series(&store, &key))
        .await
        .map_err(|e| err("internal", e.to_string()))?
        .map_err(|e| err("internal", e))?;
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

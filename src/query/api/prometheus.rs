//! The Prometheus HTTP API (DESIGN §7; reference/prometheus-compat.md §2):
//! GET and form POST, times in seconds (float or RFC 3339), Prometheus'
//! envelope, result encodings, Go-style float strings, error types and
//! codes, the 11,000-points limit. Evaluation runs on the blocking pool
//! under a concurrency limit.

use super::{ApiContext, ClientId, ReadError, Reader, SlotError};
use crate::query::engine::{self, Engine, EngineError, Labels, Matcher, Value};
use crate::query::source::StoreSource;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Router;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Most points a range query may return per series.
pub const MAX_POINTS: i64 = 11_000;
/// Version reported by buildinfo: the Prometheus API level implemented.
pub const COMPAT_VERSION: &str = "2.42.0";

/// A Prometheus API error: `errorType` + message, mapped to the wire once.
#[derive(Debug)]
pub struct ApiError {
    error_type: &'static str,
    message: String,
}

fn bad_data(message: impl Into<String>) -> ApiError {
    ApiError {
        error_type: "bad_data",
        message: message.into(),
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError {
            error_type: e.error_type(),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.error_type {
            "bad_data" => StatusCode::BAD_REQUEST,
            "execution" => StatusCode::UNPROCESSABLE_ENTITY,
            "timeout" | "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "not_found" => StatusCode::NOT_FOUND,
            "forbidden" => StatusCode::FORBIDDEN,
            "too_many_requests" => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = format!(
            "{{\"status\":\"error\",\"errorType\":\"{}\",\"error\":{}}}",
            self.error_type,
            json_string(&self.message)
        );
        json_response(status, body)
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn success(data: &str) -> Response {
    json_response(
        StatusCode::OK,
        format!("{{\"status\":\"success\",\"data\":{data}}}"),
    )
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Formats a float as Go's `strconv.FormatFloat(v, 'f' or 'e', -1, 64)`
/// does in Prometheus' JSON: `NaN`, `+Inf`, `-Inf`, plain decimals for
/// 1e-6 ≤ |v| < 1e21, else `1e+21`, `1.5e-07`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let abs = v.abs();
    if abs == 0.0 || (1e-6..1e21).contains(&abs) {
        return format!("{v}");
    }
    let e = format!("{v:e}");
    let (mantissa, exponent) = e.split_once('e').unwrap_or((&e, "0"));
    let (sign, digits) = match exponent.strip_prefix('-') {
        Some(d) => ('-', d),
        None => ('+', exponent),
    };
    format!("{mantissa}e{sign}{digits:0>2}")
}

/// Formats milliseconds as Prometheus' JSON timestamp in seconds.
pub fn format_timestamp(ms: i64) -> String {
    let (secs, frac) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    if frac == 0 {
        secs.to_string()
    } else {
        format!("{secs}.{frac:03}")
    }
}

fn write_labels(out: &mut String, labels: &Labels) {
    out.push('{');
    write_joined(out, labels, |out, (k, v)| {
        let _ = write!(out, "{}:{}", json_string(k), json_string(v));
    });
    out.push('}');
}

/// Writes the items with `f`, a comma between two.
fn write_joined<T>(
    out: &mut String,
    items: impl IntoIterator<Item = T>,
    mut f: impl FnMut(&mut String, T),
) {
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        f(out, item);
    }
}

fn write_point(out: &mut String, t: i64, v: f64) {
    let _ = write!(out, "[{},\"{}\"]", format_timestamp(t), format_value(v));
}

/// Encodes a query result as Prometheus' `{"resultType","result"}`.
pub fn encode_result(value: &Value) -> String {
    encode_result_within(value, usize::MAX).unwrap_or_default()
}

/// [`encode_result`], stopping as soon as the text passes `max_bytes`
/// (`limits.max_response_bytes`) rather than building all of it first.
///
/// # Errors
/// The size was passed: nothing is returned.
pub fn encode_result_within(value: &Value, max_bytes: usize) -> Result<String, ResponseTooLarge> {
    let mut out = String::with_capacity(256);
    let check = |out: &String| {
        if out.len() > max_bytes {
            Err(ResponseTooLarge { max_bytes })
        } else {
            Ok(())
        }
    };
    match value {
        Value::Scalar(t, v) => {
            out.push_str("{\"resultType\":\"scalar\",\"result\":");
            write_point(&mut out, *t, *v);
        }
        Value::String(t, s) => {
            let _ = write!(
                out,
                "{{\"resultType\":\"string\",\"result\":[{},{}]",
                format_timestamp(*t),
                json_string(s)
            );
        }
        Value::Vector(samples) => {
            out.push_str("{\"resultType\":\"vector\",\"result\":[");
            for (i, s) in samples.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                write_labels(&mut out, &s.labels);
                out.push_str(",\"value\":");
                write_point(&mut out, s.t, s.v);
                out.push('}');
                check(&out)?;
            }
            out.push(']');
        }
        Value::Matrix(series) => {
            out.push_str("{\"resultType\":\"matrix\",\"result\":[");
            for (i, s) in series.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                write_labels(&mut out, &s.labels);
                out.push_str(",\"values\":[");
                for (j, (t, v)) in s.points.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    write_point(&mut out, *t, *v);
                    check(&out)?;
                }
                out.push_str("]}");
            }
            out.push(']');
        }
    }
    out.push('}');
    check(&out)?;
    Ok(out)
}

/// An answer would pass `limits.max_response_bytes`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("response would be more than limits.max_response_bytes ({max_bytes} bytes); narrow the query or its range")]
pub struct ResponseTooLarge {
    /// The limit.
    pub max_bytes: usize,
}

/// Request parameters from the query string and, for POST, a form body.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: Option<&str>, body: &str) -> Result<Params, ApiError> {
        let mut all: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|e| bad_data(format!("invalid query string: {e}")))?;
        if !body.is_empty() {
            let form: Vec<(String, String)> = serde_urlencoded::from_str(body)
                .map_err(|e| bad_data(format!("invalid form body: {e}")))?;
            all.extend(form);
        }
        Ok(Params(all))
    }

    /// The required `query` parameter.
    fn query(&self) -> Result<&str, ApiError> {
        self.get("query")
            .ok_or_else(|| bad_data("invalid parameter \"query\": no query given"))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn time(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .filter(|s| !s.is_empty())
            .map(|s| {
                parse_time(s).map_err(|e| bad_data(format!("invalid parameter \"{name}\": {e}")))
            })
            .transpose()
    }

    fn duration_ms(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .filter(|s| !s.is_empty())
            .map(|s| {
                parse_duration_ms(s)
                    .map_err(|e| bad_data(format!("invalid parameter \"{name}\": {e}")))
            })
            .transpose()
    }
}

/// Seconds as a float (`1435781451.781`) or RFC 3339 → milliseconds.
///
/// # Errors
/// A message saying what was expected.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs.abs() < 9.2e15 {
            return Ok((secs * 1000.0).round() as i64);
        }
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| format!("cannot parse {s:?} to a valid timestamp"))
}

/// Float seconds (`15`, `0.5`) or a duration (`1m30s`) → milliseconds.
///
/// # Errors
/// A message saying what was expected.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs.abs() < 9.2e15 {
            return Ok((secs * 1000.0).round() as i64);
        }
        return Err(format!(
            "cannot parse {s:?} to a valid duration. It overflows int64"
        ));
    }
    crate::model::parse_duration(s)
        .map(|d| d.as_millis() as i64)
        .map_err(|_| format!("cannot parse {s:?} to a valid duration"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Parses `match[]` selectors into matcher lists, within the query limits
/// and on the query stack (a selector's text is a query's text).
fn selectors(ctx: &ApiContext, texts: &[String]) -> Result<Vec<Vec<Matcher>>, ApiError> {
    let limits = ctx.query_limits;
    let bound = texts.iter().try_fold(0, |max, s| {
        engine::check_text(s, &limits).map(|b| b.max(max))
    });
    let parsed = bound.and_then(|bound| {
        engine::on_query_stack(bound, || {
            let mut sets = Vec::new();
            for s in texts {
                match engine::parse_with(s, &limits)? {
                    engine::Expr::VectorSelector(vs) => sets.extend(engine::selector_matchers(&vs)),
                    _ => {
                        return Err(EngineError::BadData(format!(
                            "invalid parameter \"match[]\": {s:?} is not a series selector"
                        )))
                    }
                }
            }
            Ok(sets)
        })
    });
    parsed.map_err(|e| refused(ctx, e))
}

/// Maps an engine error to the wire, counting refusals by the limit that
/// refused (`ringdb_query_refusals_total{limit}`) and caught panics
/// (`ringdb_query_panics_total`).
fn refused(ctx: &ApiContext, e: EngineError) -> ApiError {
    match e.limit() {
        Some("panic") => ctx.metrics.add("ringdb_query_panics_total", &[], 1),
        Some(limit) => ctx
            .metrics
            .add("ringdb_query_refusals_total", &[("limit", limit)], 1),
        None => {}
    }
    ApiError::from(e)
}

/// Runs `work` (which parses `text`) where its recursion fits: see
/// [`engine::on_query_stack`]; the text is checked first for the bound.
fn query_stack<T: Send>(
    ctx: &ApiContext,
    text: &str,
    work: impl FnOnce() -> Result<T, EngineError> + Send,
) -> Result<T, EngineError> {
    let bound = engine::check_text(text, &ctx.query_limits)?;
    engine::on_query_stack(bound, work)
}

/// Parses `text` within the query limits and checks the deadline after.
fn parse_query(
    ctx: &ApiContext,
    text: &str,
    deadline: Instant,
) -> Result<engine::Expr, EngineError> {
    let expr = engine::parse_with(text, &ctx.query_limits)?;
    if Instant::now() >= deadline {
        return Err(EngineError::Timeout("query parsing"));
    }
    Ok(expr)
}

type Ctx = State<Arc<ApiContext>>;

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        let error_type = match &e {
            ReadError::Slot(SlotError::ClientBusy { .. }) => "too_many_requests",
            ReadError::Slot(SlotError::Timeout { .. }) => "timeout",
            ReadError::Slot(SlotError::Closed) => "unavailable",
            ReadError::Failed(_) => "internal",
        };
        ApiError {
            error_type,
            message: e.to_string(),
        }
    }
}

/// The reading client of a Prometheus API request: refused with 403
/// before anything is parsed when its grant reads nothing.
struct ReadAccess(Reader);

impl FromRequestParts<Arc<ApiContext>> for ReadAccess {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        ctx: &Arc<ApiContext>,
    ) -> Result<Self, Self::Rejection> {
        Reader::from_parts(parts, ctx)
            .map(ReadAccess)
            .ok_or_else(|| {
                let e = ApiError {
                    error_type: "forbidden",
                    message:
                        "this client certificate may not read any series (clients: read is empty)"
                            .into(),
                };
                e.into_response()
            })
    }
}

/// Runs CPU-bound work on the blocking pool under one of the client's
/// query slots (see [`super::run_read`]).
async fn run_blocking<T: Send + 'static>(
    ctx: &Arc<ApiContext>,
    client: &ClientId,
    work: impl FnOnce(&ApiContext) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    super::run_read(ctx, client, work).await?
}

fn engine_for(ctx: &ApiContext, params: &Params) -> Result<Engine, ApiError> {
    let mut timeout = ctx.query_timeout;
    if let Some(ms) = params.duration_ms("timeout")? {
        timeout = timeout.min(Duration::from_millis(ms.max(0) as u64));
    }
    let mut engine = Engine {
        max_samples: ctx.max_query_samples,
        timeout: Some(timeout),
        ..Engine::default()
    };
    if let Some(ms) = params.duration_ms("lookback_delta")? {
        if ms > 0 {
            engine.lookback_delta_ms = ms;
        }
    }
    Ok(engine)
}

/// Parses and evaluates a query on the blocking pool over the store, as
/// the client's grant allows, and encodes the result.
async fn evaluate(
    ctx: &Arc<ApiContext>,
    Reader { grant, client }: Reader,
    text: String,
    run: impl FnOnce(&StoreSource<'_>, &engine::Expr) -> Result<Value, EngineError> + Send + 'static,
) -> Result<String, ApiError> {
    let deadline = Instant::now() + ctx.query_timeout;
    run_blocking(ctx, &client, move |ctx| {
        // Parsing, evaluating and dropping the tree recurse once per level:
        // all on a thread with a known stack (see engine::on_query_stack).
        let value = query_stack(ctx, &text, || {
            let expr = parse_query(ctx, &text, deadline)?;
            let source = StoreSource {
                store: &ctx.store,
                grant: &grant,
                max_samples: ctx.max_query_samples,
            };
            run(&source, &expr)
        })
        .map_err(|e| refused(ctx, e))?;
        encode_result_within(&value, ctx.max_response_bytes)
            .map_err(|e| response_too_large(ctx, e.max_bytes))
    })
    .await
}

async fn query(
    State(ctx): Ctx,
    ReadAccess(reader): ReadAccess,
    RawQuery(q): RawQuery,
    body: String,
) -> Response {
    let started = Instant::now();
    let result = async {
        let params = Params::parse(q.as_deref(), &body)?;
        let text = params.query()?.to_string();
        let at = params.time("time")?.unwrap_or_else(now_ms);
        let engine = engine_for(&ctx, &params)?;
        evaluate(&ctx, reader, text, move |source, expr| {
            engine.instant(source, expr, at)
        })
        .await
    }
    .await;
    finish(&ctx, "query", started, result)
}

async fn query_range(
    State(ctx): Ctx,
    ReadAccess(reader): ReadAccess,
    RawQuery(q): RawQuery,
    body: String,
) -> Response {
    let started = Instant::now();
    let result = async {
        let params = Params::parse(q.as_deref(), &body)?;
        let text = params.query()?.to_string();
        let start = params
            .time("start")?
            .ok_or_else(|| bad_data("invalid parameter \"start\": missing"))?;
        let end = params
            .time("end")?
            .ok_or_else(|| bad_data("invalid parameter \"end\": missing"))?;
        if end < start {
            return Err(bad_data("invalid parameter \"end\": end timestamp must not be before start time"));
        }
        let step = params
            .duration_ms("step")?
            .ok_or_else(|| bad_data("invalid parameter \"step\": missing"))?;
        if step <= 0 {
            return Err(bad_data(
                "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        if end.saturating_sub(start) / step > MAX_POINTS {
            return Err(bad_data(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
            ));
        }
        let engine = engine_for(&ctx, &params)?;
        evaluate(&ctx, reader, text, move |source, expr| {
            engine.range(source, expr, start, end, step)
        })
        .await
    }
    .await;
    finish(&ctx, "query_range", started, result)
}

fn finish(
    ctx: &ApiContext,
    endpoint: &'static str,
    started: Instant,
    result: Result<String, ApiError>,
) -> Response {
    let outcome = if result.is_ok() { "success" } else { "error" };
    ctx.metrics.add(
        "ringdb_queries_total",
        &[("endpoint", endpoint), ("outcome", outcome)],
        1,
    );
    ctx.metrics.add(
        "ringdb_query_duration_microseconds_total",
        &[("endpoint", endpoint)],
        started.elapsed().as_micros() as u64,
    );
    match result {
        Ok(data) => success(&data),
        Err(e) => e.into_response(),
    }
}

/// Series (as label sets) matching any `match[]` in the time range, handed
/// to `encode` on the blocking pool (a listing of millions of series is
/// sorted and encoded off the async workers too).
async fn matching(
    ctx: &Arc<ApiContext>,
    Reader { grant, client }: Reader,
    params: &Params,
    required: bool,
    encode: impl FnOnce(BTreeSet<Labels>, usize) -> Result<String, ApiError> + Send + 'static,
) -> Result<String, ApiError> {
    let texts: Vec<String> = params
        .all("match[]")
        .into_iter()
        .map(String::from)
        .collect();
    if required && texts.is_empty() {
        return Err(bad_data("no match[] parameter provided"));
    }
    let start = params.time("start")?.unwrap_or(i64::MIN / 2);
    let end = params.time("end")?.unwrap_or(i64::MAX / 2);
    run_blocking(ctx, &client, move |ctx| {
        let sets = selectors(ctx, &texts)?;
        let source = StoreSource {
            store: &ctx.store,
            grant: &grant,
            max_samples: ctx.max_query_samples,
        };
        let mut found: BTreeSet<Labels> = BTreeSet::new();
        if sets.is_empty() {
            found.extend(source.series(&[], start, end));
        }
        for matchers in &sets {
            found.extend(source.series(matchers, start, end));
        }
        let encoded = encode(found, ctx.max_response_bytes);
        if encoded.is_err() {
            // The only refusal of `encode`: too big an answer.
            count_too_big(ctx);
        }
        encoded
    })
    .await
}

fn count_too_big(ctx: &ApiContext) {
    ctx.metrics.add(
        super::REFUSED_METRIC,
        &[("reason", "max_response_bytes")],
        1,
    );
}

/// The refusal of a listing whose answer would pass
/// `limits.max_response_bytes`.
fn response_too_big(max_bytes: usize) -> ApiError {
    ApiError {
        error_type: "execution",
        message: format!(
            "the answer would be larger than limits.max_response_bytes = {max_bytes} bytes: \
             narrow match[], start/end, or pass limit="
        ),
    }
}

/// A JSON array of `items` written with `f`, refused as soon as it passes
/// `max_bytes` (so a refused listing is never built whole).
fn capped_array<T>(
    items: impl IntoIterator<Item = T>,
    max_bytes: usize,
    mut f: impl FnMut(&mut String, T),
) -> Result<String, ApiError> {
    let mut out = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        f(&mut out, item);
        if out.len() >= max_bytes {
            return Err(response_too_big(max_bytes));
        }
    }
    out.push(']');
    Ok(out)
}

fn limit(params: &Params) -> Result<usize, ApiError> {
    match params.get("limit").filter(|s| !s.is_empty()) {
        None => Ok(usize::MAX),
        Some(s) => match s.parse::<usize>() {
            Ok(0) => Ok(usize::MAX),
            Ok(n) => Ok(n),
            Err(_) => Err(bad_data(format!(
                "invalid parameter \"limit\": {s:?} is not a number"
            ))),
        },
    }
}

async fn series(
    State(ctx): Ctx,
    ReadAccess(reader): ReadAccess,
    RawQuery(q): RawQuery,
    body: String,
) -> Response {
    let result = async {
        let params = Params::parse(q.as_deref(), &body)?;
        let limit = limit(&params)?;
        matching(&ctx, reader, &params, true, move |found, max_bytes| {
            capped_array(found.iter().take(limit), max_bytes, write_labels)
        })
        .await
    }
    .await;
    finish(&ctx, "series", Instant::now(), result)
}

fn write_json_string(out: &mut String, s: &str) {
    out.push_str(&json_string(s));
}

async fn labels(
    State(ctx): Ctx,
    ReadAccess(reader): ReadAccess,
    RawQuery(q): RawQuery,
    body: String,
) -> Response {
    let result = async {
        let params = Params::parse(q.as_deref(), &body)?;
        let limit = limit(&params)?;
        matching(&ctx, reader, &params, false, move |found, max_bytes| {
            let names: BTreeSet<&str> = found
                .iter()
                .flat_map(|l| l.iter().map(|(k, _)| k.as_str()))
                .collect();
            capped_array(names.into_iter().take(limit), max_bytes, write_json_string)
        })
        .await
    }
    .await;
    finish(&ctx, "labels", Instant::now(), result)
}

/// Undoes Grafana's `U__` escaping of label names.
fn unescape_label_name(name: &str) -> String {
    let Some(rest) = name.strip_prefix("U__") else {
        return name.to_string();
    };
    let mut out = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '_' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'_') {
            chars.next();
            out.push('_');
            continue;
        }
        let hex: String = chars.by_ref().take_while(|c| *c != '_').collect();
        match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
            Some(ch) => out.push(ch),
            None => return name.to_string(),
        }
    }
    out
}

async fn label_values(
    State(ctx): Ctx,
    ReadAccess(reader): ReadAccess,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let result = async {
        let params = Params::parse(q.as_deref(), "")?;
        let limit = limit(&params)?;
        let name = unescape_label_name(&name);
        if !crate::model::is_label_name(&name) {
            return Err(bad_data(format!("invalid label name: {name:?}")));
        }
        matching(&ctx, reader, &params, false, move |found, max_bytes| {
            let values: BTreeSet<&str> = found
                .iter()
                .filter_map(|l| l.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str()))
                .collect();
            capped_array(values.into_iter().take(limit), max_bytes, write_json_string)
        })
        .await
    }
    .await;
    finish(&ctx, "label_values", Instant::now(), result)
}

/// `/api/v1/metadata`: the families whose name (a prefix) the client may
/// read, on the blocking pool.
async fn metadata(
    State(ctx): Ctx,
    ReadAccess(reader): ReadAccess,
    RawQuery(q): RawQuery,
) -> Response {
    let result = async {
        let params = Params::parse(q.as_deref(), "")?;
        let limit = limit(&params)?;
        let metric = params
            .get("metric")
            .filter(|m| !m.is_empty())
            .map(str::to_owned);
        let grant = reader.grant;
        let encoded = super::run_walk(&ctx, move |ctx| {
            let entries = ctx
                .store
                .metadata()
                .into_iter()
                .filter(|(name, _)| grant.may_read(name))
                .filter(|(name, _)| metric.as_ref().is_none_or(|m| m == name))
                .take(limit);
            let array = capped_array(entries, ctx.max_response_bytes, |out, (name, m)| {
                let _ = write!(
                    out,
                    "{}:[{{\"type\":{},\"help\":{},\"unit\":{}}}]",
                    json_string(&name),
                    json_string(&m.kind),
                    json_string(&m.help),
                    json_string(&m.unit)
                );
            })
            .inspect_err(|_| count_too_big(ctx))?;
            // The same entries as an object: `[…]` → `{…}`.
            Ok::<_, ApiError>(format!("{{{}}}", &array[1..array.len() - 1]))
        })
        .await?;
        encoded
    }
    .await;
    finish(&ctx, "metadata", Instant::now(), result)
}

async fn buildinfo() -> Response {
    success(&format!(
        "{{\"version\":\"{COMPAT_VERSION}\",\"revision\":\"ringdb-{}\",\"branch\":\"main\",\"buildUser\":\"ringdb\",\"buildDate\":\"\",\"goVersion\":\"none (ringdb is written in Rust)\"}}",
        env!("CARGO_PKG_VERSION")
    ))
}

/// ringdb keeps no exemplars (remote_write skips and counts them), so every
/// query has none; the query is still checked.
async fn query_exemplars(
    State(ctx): Ctx,
    ReadAccess(reader): ReadAccess,
    RawQuery(q): RawQuery,
    body: String,
) -> Response {
    let started = Instant::now();
    let result = async {
        let params = Params::parse(q.as_deref(), &body)?;
        let text = params.query()?.to_string();
        parse_off_workers(&ctx, &reader.client, text, |_| "[]".to_string()).await
    }
    .await;
    finish(&ctx, "query_exemplars", started, result)
}

async fn format_query(
    State(ctx): Ctx,
    client: Option<axum::Extension<ClientId>>,
    RawQuery(q): RawQuery,
    body: String,
) -> Response {
    let client = client.map(|c| c.0).unwrap_or_default();
    let started = Instant::now();
    let result = async {
        let params = Params::parse(q.as_deref(), &body)?;
        let text = params.query()?.to_string();
        parse_off_workers(&ctx, &client, text, |expr| json_string(&expr.prettify())).await
    }
    .await;
    finish(&ctx, "format_query", started, result)
}

/// Parses `text` as [`evaluate`] does (blocking pool, query stack, limits,
/// deadline) and answers `answer` of the tree, worked out on that stack
/// too (prettifying recurses).
async fn parse_off_workers(
    ctx: &Arc<ApiContext>,
    client: &ClientId,
    text: String,
    answer: impl FnOnce(&engine::Expr) -> String + Send + 'static,
) -> Result<String, ApiError> {
    let deadline = Instant::now() + ctx.query_timeout;
    run_blocking(ctx, client, move |ctx| {
        let out = query_stack(ctx, &text, || {
            let expr = parse_query(ctx, &text, deadline)?;
            Ok(answer(&expr))
        })
        .map_err(|e| refused(ctx, e))?;
        if out.len() > ctx.max_response_bytes {
            return Err(response_too_large(ctx, ctx.max_response_bytes));
        }
        Ok(out)
    })
    .await
}

/// The answer would pass `limits.max_response_bytes`: 422, counted.
fn response_too_large(ctx: &ApiContext, max_bytes: usize) -> ApiError {
    ctx.metrics.add(
        "ringdb_query_refusals_total",
        &[("limit", "limits.max_response_bytes")],
        1,
    );
    ApiError {
        error_type: "execution",
        message: ResponseTooLarge { max_bytes }.to_string(),
    }
}

/// 405 (not 404) for a method an endpoint lacks: Grafana then retries as GET.
async fn method_not_allowed(method: Method) -> Response {
    let body = format!(
        "{{\"status\":\"error\",\"errorType\":\"bad_data\",\"error\":{}}}",
        json_string(&format!("method {method} not allowed for this endpoint"))
    );
    json_response(StatusCode::METHOD_NOT_ALLOWED, body)
}

fn get_and_post<H, T>(handler: H) -> MethodRouter<Arc<ApiContext>>
where
    H: axum::handler::Handler<T, Arc<ApiContext>> + Clone,
    T: 'static,
{
    get(handler.clone()).post(handler)
}

/// The Prometheus API routes.
pub fn router() -> Router<Arc<ApiContext>> {
    Router::new()
        .route("/api/v1/query", get_and_post(query))
        .route("/api/v1/query_range", get_and_post(query_range))
        .route("/api/v1/series", get_and_post(series))
        .route("/api/v1/labels", get_and_post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/metadata", get(metadata))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/api/v1/query_exemplars", get_and_post(query_exemplars))
        .route("/api/v1/format_query", get_and_post(format_query))
        .method_not_allowed_fallback(method_not_allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_float_format() {
        let cases = [
            (1.0, "1"),
            (0.5, "0.5"),
            (-0.0, "-0"),
            (0.0, "0"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (1e-7, "1e-07"),
            (1.5e-7, "1.5e-07"),
            (0.000001, "0.000001"),
            (123456789.125, "123456789.125"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
        ];
        for (v, want) in cases {
            assert_eq!(format_value(v), want, "case {v:?}");
        }
    }

    #[test]
    fn capped_arrays() {
        let items = ["ab", "cd", "ef"];
        let cases: [(&str, usize, Option<&str>); 4] = [
            ("well under", 100, Some(r#"["ab","cd","ef"]"#)),
            ("just room", 16, Some(r#"["ab","cd","ef"]"#)),
            ("the last item passes the cap", 15, None),
            ("the first item passes the cap", 4, None),
        ];
        for (name, max, want) in cases {
            let got = capped_array(items, max, write_json_string);
            match want {
                Some(w) => assert_eq!(got.as_deref().ok(), Some(w), "case {name}"),
                None => {
                    let e = got.expect_err(name);
                    assert!(
                        e.message.contains("limits.max_response_bytes"),
                        "case {name}"
                    );
                }
            }
        }
    }

    #[test]
    fn timestamps_and_inputs() {
        assert_eq!(format_timestamp(1435781451781), "1435781451.781");
        assert_eq!(format_timestamp(1435781451000), "1435781451");
        assert_eq!(format_timestamp(1435781451050), "1435781451.050");
        assert_eq!(parse_time("1435781451.781"), Ok(1435781451781));
        assert_eq!(parse_time("2015-07-01T20:10:51.781Z"), Ok(1435781451781));
        assert!(parse_time("yesterday").is_err());
        assert_eq!(parse_duration_ms("15"), Ok(15_000));
        assert_eq!(parse_duration_ms("0.5"), Ok(500));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert!(parse_duration_ms("1.5h").is_err());
        assert_eq!(unescape_label_name("U__my_2e_label__x"), "my.label_x");
        assert_eq!(unescape_label_name("job"), "job");
    }
}

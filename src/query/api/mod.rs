//! HTTP routes: the YAWNDB user routes, /metrics and health on the HTTP
//! listener; the YAWNDB admin routes on the admin listener. Handlers read
//! the store through its read API and map errors to the wire once per
//! protocol.
//!
//! Every read (PromQL, listings, YAWNDB slices) first checks that the
//! client may read something at all ([`Reader`]), then runs on the
//! blocking pool under one of its client's query slots ([`run_read`]):
//! nothing that walks series or evaluates runs on the async workers, so
//! `/-/healthy`, `/-/ready` and `/metrics` (which take no slot) never wait
//! behind queries. Answers are capped by `limits.max_response_bytes`.

pub mod prometheus;
pub mod slots;
pub mod yawndb;

use crate::access::Grant;
use crate::http::{count_requests, RequestCounter};
use crate::store::Store;
use crate::telemetry::Metrics;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use slots::{ClientId, QuerySlots, SlotError};

/// What the routes need of the snapshot store, which they do not import
/// (they read archives only through the store): the composition root
/// (`app`) implements it over the sled snapshotter.
pub trait Disk: Send + Sync {
    /// Removes a series from memory and from disk; false when it was not
    /// held. Blocking.
    ///
    /// # Errors
    /// The disk could not be written; the message says why.
    fn delete_series(&self, store: &Store, key: &str) -> Result<bool, String>;

    /// When snapshots started failing for long enough to make the daemon
    /// unready (milliseconds since the epoch), if they are.
    fn failing_since_ms(&self) -> Option<u64>;
}

/// What every handler may use.
pub struct ApiContext {
    /// The series map.
    pub store: Arc<Store>,
    /// Self-metrics.
    pub metrics: Arc<Metrics>,
    /// The snapshot store, seen from the routes: DELETE and readiness.
    pub disk: Arc<dyn Disk>,
    /// Restore finished and listeners up.
    pub ready: AtomicBool,
    /// Reads evaluated at once, in total and per client (more wait for a
    /// slot, up to the query timeout; a client over its share is refused).
    pub slots: QuerySlots,
    /// Longest a query may run, and longest a read waits for a slot.
    pub query_timeout: std::time::Duration,
    /// Most samples a query may load.
    pub max_query_samples: usize,
    /// Most bytes and deepest nesting of a query's text.
    pub query_limits: crate::query::engine::QueryLimits,
    /// `limits.max_slice_buckets`: most paths × buckets one YAWNDB
    /// multi-slice or aggregate may read.
    pub max_slice_buckets: u64,
    /// `limits.max_response_bytes`: largest listing answer.
    pub max_response_bytes: usize,
}

/// Counter of reads refused before or instead of evaluation, by the limit
/// (or permission) that refused them.
pub const REFUSED_METRIC: &str = "ringdb_query_refused_total";

/// Who is reading: the connection's grant and certificate name. Taken by
/// every read handler; a client whose grant reads nothing is refused
/// before its request is parsed.
#[derive(Debug, Clone)]
pub struct Reader {
    /// What the client may read.
    pub grant: Grant,
    /// Whose query slots the read counts against.
    pub client: ClientId,
}

impl Reader {
    /// The reader of a request, or `None` (counted) when its grant reads no
    /// prefix at all.
    fn from_parts(parts: &Parts, ctx: &ApiContext) -> Option<Reader> {
        let grant = parts
            .extensions
            .get::<Grant>()
            .cloned()
            .unwrap_or(Grant::Nothing);
        if !grant.may_read_some() {
            ctx.metrics
                .add(REFUSED_METRIC, &[("reason", "no_read_permission")], 1);
            return None;
        }
        let client = parts
            .extensions
            .get::<ClientId>()
            .cloned()
            .unwrap_or_default();
        Some(Reader { grant, client })
    }
}

/// Why a read did not run to completion, before the protocol maps it.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No query slot (counted).
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The work panicked: our fault, not the input's.
    #[error("query failed: {0}")]
    Failed(String),
}

/// Runs one read on the blocking pool (never on the async workers) under
/// a query slot of its client. The slot moves into the blocking task, so a
/// client that hangs up does not free it while its work still runs.
///
/// # Errors
/// [`ReadError::Slot`] when refused a slot; [`ReadError::Failed`] when the
/// work panicked.
pub async fn run_read<T: Send + 'static>(
    ctx: &Arc<ApiContext>,
    client: &ClientId,
    work: impl FnOnce(&ApiContext) -> T + Send + 'static,
) -> Result<T, ReadError> {
    let slot = match ctx.slots.acquire(client, ctx.query_timeout).await {
        Ok(slot) => slot,
        Err(e) => {
            ctx.metrics
                .add(REFUSED_METRIC, &[("reason", e.reason())], 1);
            return Err(e.into());
        }
    };
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        work(&ctx)
    })
    .await
    .map_err(|e| ReadError::Failed(e.to_string()))
}

/// Runs a listing walk (no slot: admin and health views) on the blocking
/// pool, off the async workers.
///
/// # Errors
/// [`ReadError::Failed`] when the work panicked.
pub async fn run_walk<T: Send + 'static>(
    ctx: &Arc<ApiContext>,
    work: impl FnOnce(&ApiContext) -> T + Send + 'static,
) -> Result<T, ReadError> {
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || work(&ctx))
        .await
        .map_err(|e| ReadError::Failed(e.to_string()))
}

/// Routes of the HTTP listener.
pub fn http_router(ctx: Arc<ApiContext>) -> Router {
    let counter = RequestCounter {
        listener: "http",
        metrics: ctx.metrics.clone(),
    };
    Router::new()
        .route("/paths/{path}/{rule}/slice", get(yawndb::slice))
        .route("/paths/{path}/{rule}/last", get(yawndb::last))
        .route("/paths/{path}/rules", get(yawndb::rules))
        .route("/paths/slice", post(yawndb::multi_slice))
        .route("/metrics", get(metrics))
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(ready))
        .merge(prometheus::router())
        .fallback(yawndb::not_found)
        .layer(axum::middleware::from_fn_with_state(
            counter,
            count_requests,
        ))
        .with_state(ctx)
}

/// Routes of the admin listener: the user routes plus the admin ones, all
/// behind the admin grant.
pub fn admin_router(ctx: Arc<ApiContext>) -> Router {
    let counter = RequestCounter {
        listener: "admin",
        metrics: ctx.metrics.clone(),
    };
    Router::new()
        .route("/status", get(yawndb::status))
        .route("/paths/all", get(yawndb::all_paths))
        .route("/paths/{path}", delete(yawndb::delete_path))
        .route("/aggregate", post(yawndb::aggregate))
        .route("/paths/slice", post(yawndb::multi_slice))
        .route("/paths/{path}/{rule}/slice", get(yawndb::slice))
        .route("/paths/{path}/{rule}/last", get(yawndb::last))
        .route("/paths/{path}/rules", get(yawndb::rules))
        .fallback(yawndb::not_found)
        .layer(axum::middleware::from_fn(yawndb::require_admin))
        .layer(axum::middleware::from_fn_with_state(
            counter,
            count_requests,
        ))
        .with_state(ctx)
}

async fn metrics(State(ctx): State<Arc<ApiContext>>) -> Response {
    let stats = ctx.store.stats();
    let m = &ctx.metrics;
    m.set("ringdb_series", &[], stats.series as f64);
    m.set("ringdb_archives", &[], stats.archives as f64);
    m.set("ringdb_archive_bytes", &[], stats.archive_bytes as f64);
    m.set(
        "ringdb_series_key_bytes",
        &[],
        stats.series_key_bytes as f64,
    );
    m.set("ringdb_metadata_bytes", &[], stats.metadata_bytes as f64);
    m.set("ringdb_migrations_total", &[], stats.migrations as f64);
    for (reason, n) in &stats.archive_rejects {
        m.handle("ringdb_archive_rejects_total", &[("reason", reason)])
            .store(*n, Ordering::Relaxed);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}

async fn healthy() -> &'static str {
    "ringdb is Healthy.\n"
}

/// 200 once restored and listening, unless snapshots have been failing
/// for several intervals (a full or failing disk: what is accepted would
/// be lost on a restart); `/-/healthy` stays 200 either way.
async fn ready(State(ctx): State<Arc<ApiContext>>) -> Response {
    if let Some(since_ms) = ctx.disk.failing_since_ms() {
        let since = chrono::DateTime::from_timestamp_millis(since_ms as i64)
            .map_or_else(|| format!("{since_ms} ms"), |t| t.to_rfc3339());
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("ringdb is not ready: snapshots failing since {since} (see ringdb_snapshot_errors_total).\n"),
        )
            .into_response();
    }
    if ctx.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ringdb is Ready.\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "ringdb is not ready: restoring snapshots.\n",
        )
            .into_response()
    }
}

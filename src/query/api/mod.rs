//! HTTP routes: the YAWNDB user routes, /metrics and health on the HTTP
//! listener; the YAWNDB admin routes on the admin listener. Handlers read
//! the store through its read API and map errors to the wire once per
//! protocol.

pub mod prometheus;
pub mod yawndb;

use crate::http::{count_requests, RequestCounter};
use crate::snapshot::Snapshotter;
use crate::store::Store;
use crate::telemetry::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What every handler may use.
pub struct ApiContext {
    /// The series map.
    pub store: Arc<Store>,
    /// Self-metrics.
    pub metrics: Arc<Metrics>,
    /// For DELETE.
    pub snapshotter: Arc<Snapshotter>,
    /// Restore finished and listeners up.
    pub ready: AtomicBool,
    /// Queries evaluated at once (more wait for a slot).
    pub query_slots: Arc<tokio::sync::Semaphore>,
    /// Longest a query may run.
    pub query_timeout: std::time::Duration,
    /// Most samples a query may load.
    pub max_query_samples: usize,
    /// Most bytes and deepest nesting of a query's text.
    pub query_limits: crate::query::engine::QueryLimits,
    /// Most bytes of one query answer.
    pub max_response_bytes: usize,
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

async fn ready(State(ctx): State<Arc<ApiContext>>) -> Response {
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

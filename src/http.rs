//! hyper/axum plumbing shared by the HTTP and admin listeners: serve one
//! TLS connection with graceful shutdown, the peer's grant as a request
//! extension, request counting, body limits.

use crate::access::Grant;
use crate::telemetry::Metrics;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// Serves HTTP/1.1 or HTTP/2 on one connection until the client closes or
/// shutdown finishes the request in flight.
pub async fn serve_connection<S>(
    stream: S,
    router: Router,
    grant: Grant,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router.layer(Extension(grant)));
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

/// Listener name and metrics, for [`count_requests`].
#[derive(Clone)]
pub struct RequestCounter {
    /// `http` or `admin`.
    pub listener: &'static str,
    /// Where the counts go.
    pub metrics: Arc<Metrics>,
}

/// Middleware counting requests by listener, route and status code.
pub async fn count_requests(State(c): State<RequestCounter>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(req).await;
    let code = response.status().as_u16().to_string();
    c.metrics.add(
        "ringdb_http_requests_total",
        &[("listener", c.listener), ("route", &route), ("code", &code)],
        1,
    );
    response
}

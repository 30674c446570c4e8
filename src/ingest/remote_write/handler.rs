//! `POST /api/v1/write`: headers and caps checked first, then decode and
//! store on the blocking pool under a bounded in-flight limit (429 with
//! `Retry-After` when it is full: a limit, not a queue), and the status
//! code Prometheus' retry logic expects, sent after the samples are stored.

use super::{decompress, ingest, KnownSeries, LabelLimits, Report};
use crate::access::Grant;
use crate::cpu::BulkPool;
use crate::model::Clock;
use crate::store::Store;
use crate::telemetry::Metrics;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What the write route needs.
pub struct RemoteWriteContext {
    /// Where samples go.
    pub store: Arc<Store>,
    /// Self-metrics.
    pub metrics: Arc<Metrics>,
    /// Wall clock for the too-far-future check.
    pub clock: Clock,
    /// Per-series label limits.
    pub label_limits: LabelLimits,
    /// Cap on the compressed and the decompressed body.
    pub max_body_bytes: usize,
    /// Requests admitted at once (their bodies read, waiting or being
    /// decoded and stored); more wait briefly, then get 429.
    pub in_flight: Arc<Semaphore>,
    /// The slots of `in_flight`.
    pub max_inflight: usize,
    /// Requests waiting for a slot (see [`write_slot`]).
    pub waiting: AtomicUsize,
    /// Decodes and stores admitted requests, one at a time a core, below
    /// the priority of queries and handshakes (see [`crate::cpu`]).
    pub bulk: Arc<BulkPool>,
    /// Label sets seen before and their series keys.
    pub known: KnownSeries,
}

/// Longest a request waits for an in-flight slot before its 429.
pub const WRITE_WAIT: Duration = Duration::from_secs(2);

/// Requests that may wait for a slot at once, per slot; more get their
/// 429 at once.
pub const WAITING_PER_SLOT: usize = 4;

/// An in-flight slot: at once when one is free, else after waiting up to
/// [`WRITE_WAIT`] (while fewer than [`WAITING_PER_SLOT`] × slots wait);
/// `None` means 429. Choice: a short wait before the 429 (which the sender
/// answers by reconnecting and sending the whole body again after a
/// backoff) keeps a sender with many parallel shards from turning its
/// excess into a stream of refused bodies and new TLS handshakes
/// (scripts/flood, storm_429). The body is read only once the slot is
/// held: a waiting request holds a connection, not memory.
async fn write_slot(ctx: &RemoteWriteContext) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = ctx.in_flight.clone().try_acquire_owned() {
        return Some(permit);
    }
    // Counted out on drop: the request may be dropped while it waits (the
    // client went away).
    struct Waiting<'a>(&'a AtomicUsize);
    impl Drop for Waiting<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let before = ctx.waiting.fetch_add(1, Ordering::Relaxed);
    let _waiting = Waiting(&ctx.waiting);
    if before >= ctx.max_inflight.saturating_mul(WAITING_PER_SLOT) {
        return None;
    }
    tokio::time::timeout(WRITE_WAIT, ctx.in_flight.clone().acquire_owned())
        .await
        .ok()
        .and_then(Result::ok)
}

/// The route, to merge into the HTTP listener's router.
pub fn router(ctx: Arc<RemoteWriteContext>) -> Router {
    Router::new()
        .route("/api/v1/write", post(write))
        .with_state(ctx)
}

fn refuse(
    ctx: &RemoteWriteContext,
    status: StatusCode,
    reason: &'static str,
    message: String,
) -> Response {
    ctx.metrics.add(
        "ringdb_remote_write_refused_total",
        &[("reason", reason)],
        1,
    );
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response()
}

/// Most of a refused body read and discarded before answering, so that the
/// close that follows does not become a reset that destroys the answer
/// (Go's net/http does the same with 256 KiB).
const DRAIN_BYTES: usize = 4 << 20;
/// Longest the discard may take.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

async fn drain(mut body: Body) {
    use http_body_util::BodyExt;
    let mut seen = 0;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while seen < DRAIN_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
    })
    .await;
}

/// Why a body could not be read whole.
enum BodyError {
    /// Over the limit, or broken.
    Unreadable(String),
    /// Not received within limits.body_timeout.
    TimedOut(String),
}

/// Reads the body, failing as soon as it passes `max` bytes.
async fn read_capped(body: &mut Body, max: usize) -> Result<bytes::Bytes, BodyError> {
    use http_body_util::BodyExt;
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if crate::http::is_body_timeout(&e) {
                BodyError::TimedOut(e.to_string())
            } else {
                BodyError::Unreadable(e.to_string())
            }
        })?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > max {
                return Err(BodyError::Unreadable("length limit exceeded".into()));
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out.freeze())
}

fn check_headers(headers: &HeaderMap) -> Result<(), String> {
    let get = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let content_type = get(header::CONTENT_TYPE);
    let media = content_type.split(';').next().unwrap_or("").trim();
    if media != "application/x-protobuf" {
        return Err(format!(
            "content-type {content_type:?}, expected application/x-protobuf (remote_write 1.0)"
        ));
    }
    let encoding = get(header::CONTENT_ENCODING);
    if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("snappy") {
        return Err(format!("content-encoding {encoding:?}, expected snappy"));
    }
    Ok(())
}

async fn write(
    State(ctx): State<Arc<RemoteWriteContext>>,
    Extension(grant): Extension<Grant>,
    request: Request,
) -> Response {
    if let Err(message) = check_headers(request.headers()) {
        drain(request.into_body()).await;
        return refuse(&ctx, StatusCode::BAD_REQUEST, "bad_headers", message);
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > ctx.max_body_bytes) {
        drain(request.into_body()).await;
        return refuse(
            &ctx,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "body of {} bytes is over the limit of {} bytes",
                declared.unwrap_or(0),
                ctx.max_body_bytes
            ),
        );
    }
    let Some(permit) = write_slot(&ctx).await else {
        let mut response = refuse(
            &ctx,
            StatusCode::TOO_MANY_REQUESTS,
            "overloaded",
            "too many remote_write requests in flight; retry later".into(),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return response;
    };
    let body: Body = request.into_body();
    let mut body = body;
    let bytes = match read_capped(&mut body, ctx.max_body_bytes).await {
        Ok(b) => b,
        Err(BodyError::TimedOut(message)) => {
            // The HTTP layer answers 408 and closes; counted here by reason.
            return refuse(&ctx, StatusCode::REQUEST_TIMEOUT, "body_timeout", message);
        }
        Err(BodyError::Unreadable(e)) => {
            drain(body).await;
            return refuse(
                &ctx,
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "body over the limit of {} bytes or unreadable: {e}",
                    ctx.max_body_bytes
                ),
            );
        }
    };
    let work = ctx.clone();
    let outcome = ctx
        .bulk
        .run(move || {
            let _permit = permit;
            let raw = decompress(&bytes, work.max_body_bytes)?;
            ingest(
                &work.store,
                &work.known,
                &raw,
                &grant,
                &work.label_limits,
                (work.clock)(),
            )
        })
        .await;
    match outcome {
        Ok(Ok(report)) => answer(&ctx, &report),
        Ok(Err(e)) => {
            let status = if matches!(e, super::DecodeError::TooLarge { .. }) {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            refuse(&ctx, status, e.as_str(), e.to_string())
        }
        Err(e) => refuse(
            &ctx,
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error while storing: {e}"),
        ),
    }
}

/// Counts the report and picks the status: 204 when everything was taken,
/// 400 (no retry) naming the reasons when some samples were refused.
fn answer(ctx: &RemoteWriteContext, report: &Report) -> Response {
    let m = &ctx.metrics;
    m.count_samples(
        "remote_write",
        report.accepted,
        report.rejected.iter().map(|(r, n)| (*r, *n)),
    );
    m.add(
        "ringdb_remote_write_stale_markers_total",
        &[],
        report.stale_markers,
    );
    m.add(
        "ringdb_remote_write_skipped_total",
        &[("kind", "exemplar")],
        report.exemplars,
    );
    m.add(
        "ringdb_remote_write_skipped_total",
        &[("kind", "histogram")],
        report.histograms,
    );
    m.add("ringdb_remote_write_metadata_total", &[], report.metadata);
    for (reason, n) in &report.metadata_skipped {
        m.add(
            "ringdb_metadata_skipped_total",
            &[("protocol", "remote_write"), ("reason", reason)],
            *n,
        );
    }
    let rejected = report.rejected_total();
    if rejected == 0 {
        return StatusCode::NO_CONTENT.into_response();
    }
    let reasons: Vec<String> = report
        .rejected
        .iter()
        .map(|(r, n)| match super::limit_of(r) {
            Some(limit) => format!("{r}: {n} ({limit})"),
            None => format!("{r}: {n}"),
        })
        .collect();
    let message = format!(
        "rejected {rejected} of {} samples ({}); the other {} were stored\n",
        rejected + report.accepted + report.stale_markers,
        reasons.join(", "),
        report.accepted + report.stale_markers
    );
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

//! hyper/axum plumbing shared by the HTTP and admin listeners: serve one
//! TLS connection with its timeouts and graceful shutdown, the peer's grant
//! looked up again for every request (so a reload takes effect on open
//! connections), request counting, body limits, and a lingering close so a
//! client still sending a refused body reads its answer instead of a reset.
//!
//! Timeouts (the `limits:` of the same names), each counted in
//! `ringdb_connection_timeouts_total{listener,phase}`:
//! - `header`: a new connection must complete its first request's headers
//!   within header_timeout of the handshake; on HTTP/1.1 hyper also bounds
//!   every later request's headers, counted from the end of the previous
//!   answer, by it (so an idle HTTP/1.1 keep-alive connection lasts
//!   min(header_timeout, idle_timeout));
//! - `idle`: a connection with no request in flight that moves no byte for
//!   idle_timeout is closed (HTTP/2, and HTTP/1.1 when idle_timeout is the
//!   shorter of the two);
//! - `body`: a request body must arrive whole within body_timeout of its
//!   headers, else the answer is 408 and the connection closes.

use crate::access::{Grant, SharedAccess};
use crate::net::Peer;
use crate::telemetry::Metrics;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use hyper::body::{Body as _, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Timeouts and the lingering close of one HTTP connection.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A new connection's first request headers, and (HTTP/1.1) each next
    /// request's headers.
    pub header_timeout: Duration,
    /// No request in flight and no byte moved for this long: closed.
    pub idle_timeout: Duration,
    /// A request body must arrive whole within this of its headers; also
    /// the longest a lingering close reads.
    pub body_timeout: Duration,
    /// Most bytes a lingering close reads and discards.
    pub linger_bytes: u64,
}

/// What one HTTP connection serves and for whom.
pub struct HttpConnection {
    /// `http` or `admin`.
    pub listener: &'static str,
    /// The client.
    pub peer: Peer,
    /// `clients:` now; the grant is looked up for every request.
    pub access: Arc<SharedAccess>,
    /// Self-metrics.
    pub metrics: Arc<Metrics>,
    /// Timeouts.
    pub limits: HttpLimits,
}

/// The error a request body gives when it did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within limits.body_timeout ({0:?})")]
pub struct BodyTimeout(Duration);

/// Whether a body read failed because of [`BodyTimeout`] (axum may wrap
/// the error more than once: the whole source chain is searched).
pub fn is_body_timeout(e: &axum::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<BodyTimeout>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// When the connection last moved a byte and how many requests are in
/// flight, for the idle watchdog.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    requests: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis();
        self.last_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One request in flight; the watchdog leaves the connection alone while
/// any exists.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: &Arc<Activity>) -> Busy {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.requests.fetch_add(1, Ordering::Relaxed);
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves HTTP/1.1 or HTTP/2 on one connection until the client closes, a
/// timeout closes it, or shutdown finishes the request in flight.
pub async fn serve_connection<S>(
    stream: S,
    router: Router,
    conn: HttpConnection,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = conn.limits;
    let (listener, metrics) = (conn.listener, conn.metrics.clone());
    let activity = Arc::new(Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        requests: AtomicU64::new(0),
    });
    let gate = Arc::new(Gate {
        conn,
        activity: activity.clone(),
    });
    let router = router.layer(axum::middleware::from_fn_with_state(gate, gate_request));
    let service = TowerToHyperService::new(router);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let io = Watched {
        inner: stream,
        activity: activity.clone(),
        linger: Linger::Open,
        limits,
        shutdown: shutdown.clone(),
    };
    let served = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    let mut draining = false;
    let result = loop {
        let requests = activity.requests.load(Ordering::Relaxed);
        let busy = activity.in_flight.load(Ordering::Relaxed) > 0;
        // Until its first request's headers are in, a connection is timed
        // from its start (bytes trickling in do not extend it); then from
        // its last byte. While a request runs, only look again later: its
        // own timeouts (body_timeout, query_timeout) bound it.
        let (phase, deadline) = if requests == 0 {
            ("header", activity.start + limits.header_timeout)
        } else if busy {
            ("idle", Instant::now() + limits.idle_timeout)
        } else {
            ("idle", activity.last() + limits.idle_timeout)
        };
        tokio::select! {
            r = served.as_mut() => break r,
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                served.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(deadline) => {
                let still = activity.requests.load(Ordering::Relaxed) == requests
                    && activity.in_flight.load(Ordering::Relaxed) == 0
                    && (requests == 0 || activity.last() + limits.idle_timeout <= Instant::now());
                if still {
                    count_timeout(&metrics, listener, phase);
                    tracing::debug!(phase, "http connection closed: timeout");
                    return;
                }
                // Otherwise something happened meanwhile: look again.
            }
        }
    };
    if let Err(e) = result {
        let header_timeout = e
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout);
        if header_timeout {
            count_timeout(&metrics, listener, "header");
        }
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

fn count_timeout(metrics: &Metrics, listener: &'static str, phase: &'static str) {
    metrics.add(
        "ringdb_connection_timeouts_total",
        &[("listener", listener), ("phase", phase)],
        1,
    );
}

/// The per-request checks of one connection.
struct Gate {
    conn: HttpConnection,
    activity: Arc<Activity>,
}

fn close_with(status: StatusCode, message: String) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Looks the grant up under the `clients:` in force now (403 and close when
/// the client is no longer listed), puts it and the peer into the request,
/// bounds the body's arrival by body_timeout (408 and close), and marks
/// the connection busy while the request runs.
async fn gate_request(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    let conn = &gate.conn;
    let _busy = Busy::new(&gate.activity);
    let grant = conn.access.grant(conn.peer.name.as_deref());
    if matches!(grant, Grant::Nothing) {
        conn.metrics.add(
            "ringdb_connections_refused_total",
            &[("listener", conn.listener), ("reason", "unlisted")],
            1,
        );
        return close_with(
            StatusCode::FORBIDDEN,
            format!(
                "client certificate {:?} is not listed in clients:",
                conn.peer.name.as_deref().unwrap_or("")
            ),
        );
    }
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(grant);
    parts.extensions.insert(conn.peer.clone());
    let expired = Arc::new(AtomicBool::new(false));
    let body = if body.is_end_stream() {
        body
    } else {
        Body::new(TimedBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(conn.limits.body_timeout)),
            timeout: conn.limits.body_timeout,
            expired: expired.clone(),
        })
    };
    let response = next.run(Request::from_parts(parts, body)).await;
    if expired.load(Ordering::Relaxed) {
        count_timeout(&conn.metrics, conn.listener, "body");
        return close_with(
            StatusCode::REQUEST_TIMEOUT,
            BodyTimeout(conn.limits.body_timeout).to_string(),
        );
    }
    response
}

/// A request body that fails with [`BodyTimeout`] once its deadline passes.
struct TimedBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    expired: Arc<AtomicBool>,
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(this.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where a connection's close is.
enum Linger {
    /// Serving.
    Open,
    /// Our side is shut (close_notify and FIN sent); reading and discarding
    /// what the client still sends, so that closing with unread bytes does
    /// not reset the connection before the client read its answer.
    Draining {
        until: Pin<Box<Sleep>>,
        cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
        left: u64,
    },
    /// Done.
    Closed,
}

/// The connection's stream, noting activity for the watchdog and lingering
/// on close.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    linger: Linger,
    limits: HttpLimits,
    shutdown: CancellationToken,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    /// Shuts our side, then reads and discards until the client closes,
    /// linger_bytes were read, body_timeout passed or shutdown began.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.linger {
                Linger::Open => {
                    ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                    this.linger = Linger::Draining {
                        until: Box::pin(tokio::time::sleep(this.limits.body_timeout)),
                        cancelled: Box::pin(this.shutdown.clone().cancelled_owned()),
                        left: this.limits.linger_bytes,
                    };
                }
                Linger::Draining {
                    until,
                    cancelled,
                    left,
                } => {
                    if until.as_mut().poll(cx).is_ready() || cancelled.as_mut().poll(cx).is_ready()
                    {
                        this.linger = Linger::Closed;
                        continue;
                    }
                    let mut scratch = [0u8; 16 * 1024];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                            *left = left.saturating_sub(buf.filled().len() as u64);
                            if *left == 0 {
                                this.linger = Linger::Closed;
                            }
                        }
                        // The client closed, or the connection broke: done.
                        Poll::Ready(_) => this.linger = Linger::Closed,
                    }
                }
                Linger::Closed => return Poll::Ready(Ok(())),
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body whose bytes never come.
    struct Stalled;

    impl hyper::body::Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_stalled_body_fails_with_a_recognisable_timeout() {
        let expired = Arc::new(AtomicBool::new(false));
        // Wrapped as the gate does, then once more as a handler sees it.
        let timed = Body::new(TimedBody {
            inner: Body::new(Stalled),
            deadline: Box::pin(tokio::time::sleep(Duration::from_millis(1))),
            timeout: Duration::from_millis(1),
            expired: expired.clone(),
        });
        let mut body = Body::new(timed);
        let error = match body.frame().await {
            Some(Err(e)) => e,
            other => panic!("expected an error, got {:?}", other.map(|f| f.is_ok())),
        };
        assert!(is_body_timeout(&error), "not recognised: {error}");
        assert!(expired.load(Ordering::Relaxed), "the gate is told");
        assert!(!is_body_timeout(&axum::Error::new("other")), "other errors");
    }
}

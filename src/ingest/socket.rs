//! The binary socket listener's connection handler (DESIGN §4): decode
//! frames as bytes arrive, write each into the store from this task (so a
//! slow store reads the socket more slowly: TCP backpressure), skip and
//! count bad frames, never reply.

use super::frame::{self, Decoded};
use crate::access::Grant;
use crate::model::{self, Clock, Sample, Value};
use crate::store::{Store, WriteReject, Writer};
use crate::telemetry::{Metrics, RateLimited};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

/// Read chunk size; a whole frame is at most 65,537 bytes.
const READ_BYTES: usize = 64 * 1024;
/// After shutdown begins, how long to wait for bytes already on the way.
const DRAIN_IDLE: Duration = Duration::from_millis(200);

/// What a socket connection needs.
pub struct SocketContext {
    /// Where samples go.
    pub store: Arc<Store>,
    /// Self-metrics.
    pub metrics: Arc<Metrics>,
    /// Wall clock for the too-far-future check.
    pub clock: Clock,
    /// Warnings about bad frames, rate-limited.
    pub warnings: Arc<RateLimited>,
}

/// Counts for one read, added to the shared metrics once per read.
#[derive(Default)]
struct Tally {
    accepted: u64,
    rejected: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn reject(&mut self, reason: &'static str) {
        *self.rejected.entry(reason).or_default() += 1;
    }

    fn flush(&mut self, metrics: &Metrics) {
        metrics.count_samples("socket", self.accepted, std::mem::take(&mut self.rejected));
        self.accepted = 0;
    }
}

/// Serves one connection until the client closes, sends a zero length, or
/// shutdown ends the drain.
pub async fn handle<S: AsyncRead + Unpin>(
    mut stream: S,
    grant: Grant,
    ctx: Arc<SocketContext>,
    shutdown: CancellationToken,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(2 * READ_BYTES);
    let mut tally = Tally::default();
    let mut frames: u64 = 0;
    loop {
        buf.reserve(READ_BYTES);
        let read = if shutdown.is_cancelled() {
            match tokio::time::timeout(DRAIN_IDLE, stream.read_buf(&mut buf)).await {
                Ok(r) => r,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                r = stream.read_buf(&mut buf) => r,
                _ = shutdown.cancelled() => continue,
            }
        };
        let done = match read {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => {
                // A client that closes without close_notify ends here; what it
                // sent before is already in `buf`.
                tracing::debug!(error = %e, "socket read ended");
                true
            }
        };
        let (used, close) = decode_all(&buf, &grant, &ctx, &mut tally, &mut frames);
        buf.drain(..used);
        tally.flush(&ctx.metrics);
        if close || done {
            if !buf.is_empty() && !close {
                tally.reject("truncated_frame");
                tally.flush(&ctx.metrics);
            }
            break;
        }
    }
    tracing::debug!(frames, "socket connection closed");
}

/// Decodes and stores every whole frame in `buf`; returns the bytes used and
/// whether the client asked to close.
fn decode_all(
    buf: &[u8],
    grant: &Grant,
    ctx: &SocketContext,
    tally: &mut Tally,
    frames: &mut u64,
) -> (usize, bool) {
    let mut at = 0;
    let now = (ctx.clock)();
    let writer = ctx.store.writer();
    loop {
        match frame::decode(&buf[at..]) {
            Decoded::NeedMore => return (at, false),
            Decoded::Close => return (at + 2, true),
            Decoded::Bad(e, used) => {
                at += used;
                tally.reject(e.as_str());
                ctx.warnings.warn("bad_frame", |suppressed| {
                    tracing::warn!(error = %e, suppressed, "bad frame skipped");
                });
            }
            Decoded::Frame(f, used) => {
                at += used;
                *frames += 1;
                match store_frame(&f, grant, &writer, now) {
                    Ok(_) => tally.accepted += 1,
                    Err(reason) => tally.reject(reason.as_str()),
                }
            }
        }
    }
}

fn store_frame(
    f: &frame::Frame<'_>,
    grant: &Grant,
    writer: &Writer<'_>,
    now: u64,
) -> Result<usize, WriteReject> {
    let prefix = model::path_prefix(f.path);
    if !grant.may_write(prefix) {
        return Err(WriteReject::Forbidden);
    }
    let timestamp_ms = f
        .timestamp_secs
        .checked_mul(1000)
        .ok_or(WriteReject::TooFarFuture)?;
    let value = if f.special {
        Value::Special(f.value)
    } else {
        Value::Uint(f.value)
    };
    writer.write(
        f.path,
        prefix,
        Sample {
            timestamp_ms,
            value,
        },
        now,
    )
}

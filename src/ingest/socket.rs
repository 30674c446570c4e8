//! The binary socket listener's connection handler (DESIGN §4): decode
//! frames as bytes arrive, write each into the store from this task (so a
//! slow store reads the socket more slowly: TCP backpressure), skip and
//! count bad frames, never reply. The client's grant is looked up again
//! after a reload, before each read's frames are written; a client no
//! longer listed is disconnected. A connection that sends nothing for
//! limits.socket_idle_timeout is closed.

use super::frame::{self, Decoded};
use crate::access::{ConnectionGrant, Grant};
use crate::model::{self, Clock, Sample, Value};
use crate::store::{Store, WriteReject};
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
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
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

/// Serves one connection until the client closes, sends a zero length,
/// stays silent for `ctx.idle_timeout`, loses its grant on a reload, or
/// shutdown ends the drain.
pub async fn handle<S: AsyncRead + Unpin>(
    mut stream: S,
    mut grant: ConnectionGrant,
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
                r = tokio::time::timeout(ctx.idle_timeout, stream.read_buf(&mut buf)) => match r {
                    Ok(r) => r,
                    Err(_) => {
                        ctx.metrics.add(
                            "ringdb_connection_timeouts_total",
                            &[("listener", "socket"), ("phase", "idle")],
                            1,
                        );
                        tracing::debug!("socket connection idle for limits.socket_idle_timeout: closed");
                        break;
                    }
                },
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
        let grant = grant.current();
        let (used, close) = decode_all(&buf, grant, &ctx, &mut tally, &mut frames);
        buf.drain(..used);
        tally.flush(&ctx.metrics);
        if matches!(grant, Grant::Nothing) {
            // Removed from clients: by a reload (an unlisted client never
            // gets here): this read's frames were refused, and no more.
            ctx.metrics.add(
                "ringdb_connections_refused_total",
                &[("listener", "socket"), ("reason", "unlisted")],
                1,
            );
            tracing::info!("client no longer listed in clients: after a reload: disconnected");
            break;
        }
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
/// whether the client asked to close. The frames of one read are written
/// grouped by store shard (in their order within a path), so that each
/// shard's lock is taken once per read instead of once per frame.
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
    let mut pending = Vec::new();
    let ended = loop {
        match frame::decode(&buf[at..]) {
            Decoded::NeedMore => break (at, false),
            Decoded::Close => break (at + 2, true),
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
                match check_frame(&f, grant) {
                    Ok((prefix, sample)) => pending.push(Pending {
                        path: f.path,
                        prefix,
                        sample,
                    }),
                    Err(reason) => tally.reject(reason.as_str()),
                }
            }
        }
    };
    writer.write_grouped(
        &pending,
        |p| p.path,
        |shard, p| match shard.write(p.path, p.prefix, p.sample, now) {
            Ok(_) => tally.accepted += 1,
            Err(reason) => tally.reject(reason.as_str()),
        },
    );
    ended
}

/// A checked frame of one read, waiting to be written.
struct Pending<'b> {
    path: &'b str,
    prefix: &'b str,
    sample: Sample,
}

/// The prefix and sample of a frame this client may write.
fn check_frame<'b>(f: &frame::Frame<'b>, grant: &Grant) -> Result<(&'b str, Sample), WriteReject> {
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
    Ok((
        prefix,
        Sample {
            timestamp_ms,
            value,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rrd::Consolidation;
    use crate::rules::{Rule, RuleSet};
    use crate::store::StoreLimits;

    #[test]
    fn frames_of_one_read_are_all_written_and_a_path_keeps_its_order() {
        let rule = Rule::for_test("last", "*", Consolidation::Last);
        let limits = StoreLimits {
            max_future_ms: 600_000,
            max_series: 1000,
        };
        let now_ms = 1_700_000_000_000;
        let ctx = SocketContext {
            store: Arc::new(Store::new(RuleSet::new(vec![rule]), limits)),
            metrics: Arc::default(),
            clock: Arc::new(move || now_ms),
            warnings: Arc::new(RateLimited::new(Duration::from_secs(3600))),
            idle_timeout: Duration::from_secs(300),
        };
        // One path sent first, then 60 others (over many shards), then
        // again in the same bucket: the archive (last) keeps the later value.
        let t = now_ms / 1000 - 60;
        let mut buf = Vec::new();
        frame::encode(&mut buf, false, t, 1, "twice");
        for i in 0..60 {
            frame::encode(&mut buf, false, t, i, &format!("p{i}"));
        }
        frame::encode(&mut buf, false, t, 2, "twice");
        let (mut tally, mut frames) = (Tally::default(), 0);
        let (used, close) = decode_all(&buf, &Grant::All, &ctx, &mut tally, &mut frames);
        assert_eq!(
            (used, close, frames, tally.accepted),
            (buf.len(), false, 62, 62)
        );
        let value = |path: &str| {
            ctx.store
                .read(path, |s| {
                    s.archive("last").and_then(|a| a.get(t / 60).as_f64())
                })
                .flatten()
        };
        assert_eq!(value("twice"), Some(2.0), "the repeat was written last");
        for i in 0..60 {
            assert_eq!(value(&format!("p{i}")), Some(i as f64), "path p{i}");
        }
    }
}

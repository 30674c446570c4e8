//! Fuzz entry points (issue 14), not part of ringdb's API: one function per
//! decoder that takes arbitrary bytes, runs them through the same public
//! code the daemon runs, and checks what that code promises. A panic here is
//! a finding.
//!
//! Shared by the cargo-fuzz targets under `fuzz/` (nightly, libFuzzer) and
//! by `tests/it/fuzz_replay.rs`, which replays every committed corpus file
//! and regression input through them on stable with plain `cargo test`.
//! Sync, no I/O beyond what the decoders themselves do, no clock: every
//! "now" is the fixed [`NOW_MS`], so an input always does the same thing.

use crate::access::Grant;
use crate::ingest::frame::{self, Decoded};
use crate::ingest::remote_write::{self, KnownSeries, LabelLimits};
use crate::ingest::scrape::{text, write};
use crate::model::{Sample, Value};
use crate::query::api::prometheus;
use crate::query::engine::{self, Engine};
use crate::query::source::StoreSource;
use crate::rrd::{self, codec, Archive, Reading};
use crate::rules::RuleSet;
use crate::store::{Store, StoreLimits};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

/// The wall clock every entry point pretends it is (2023-11-14T22:13:20Z).
pub const NOW_MS: u64 = 1_700_000_000_000;

/// Longest PromQL input [`promql`] evaluates. The parser and evaluator
/// recurse once per nesting level; until `limits.max_query_depth` guards
/// the engine itself, the harness bounds the input so that nesting stays
/// shallow enough for the stack.
pub const PROMQL_MAX_BYTES: usize = 512;

/// The rules of every store the entry points write to: small rings, one
/// rule per consolidation and cell type, specials, every split.
const RULES_YAML: &str = r#"
rules:
  - {name: traffic_minutely, prefix: traffic, type: sum, timeframe: 1m, limit: 120, split: proportional, value_size: large}
  - {name: traffic_hourly, prefix: traffic, type: sum, timeframe: 1h, limit: 48, split: equal, value_size: medium}
  - name: response_last
    prefix: response
    type: last
    timeframe: 60
    limit: 100
    value_size: small
    split: forward
    additional_values: [{timeout: weak}, {error: strong}]
  - {name: load_avg, prefix: load, type: avg, timeframe: 10s, limit: 90}
  - {name: up_min, prefix: up, type: min, timeframe: 15s, limit: 80}
  - {name: up_max, prefix: up, type: max, timeframe: 1m, limit: 30, value_size: float}
  - {name: default_10s, prefix: "*", type: last, timeframe: 10s, limit: 100}
"#;

/// The rules of [`RULES_YAML`], parsed once (a parse costs more than the
/// rest of most inputs).
fn rule_set() -> RuleSet {
    static RULES: OnceLock<Vec<crate::rules::Rule>> = OnceLock::new();
    let rules = RULES.get_or_init(|| {
        crate::config::parse(RULES_YAML, "fuzz rules", Path::new("/"))
            .unwrap_or_else(|e| panic!("the fuzz rule set must be valid: {e}"))
            .rules
    });
    RuleSet::new(rules.clone())
}

/// An empty store with the fuzz rules; small caps, so limits are reached.
pub fn small_store() -> Store {
    Store::new(
        rule_set(),
        StoreLimits {
            max_future_ms: 10 * 60 * 1000,
            max_series: 64,
        },
    )
}

// ---------------------------------------------------------------- frame

/// A decoded item, owned, so that decodings of one stream can be compared.
#[derive(Debug, PartialEq, Eq)]
enum FrameOut {
    Frame(bool, u64, u64, String, usize),
    Bad(String, usize),
    Close,
}

/// Decodes a stream that arrives in `chunks`, as the socket task does:
/// append, decode until more is needed, drop what was used. Returns the
/// items and the bytes left waiting (`None` after a close).
fn decode_stream<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> (Vec<FrameOut>, Option<usize>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        let mut at = 0;
        loop {
            match frame::decode(&buf[at..]) {
                Decoded::NeedMore => break,
                Decoded::Close => {
                    out.push(FrameOut::Close);
                    return (out, None);
                }
                Decoded::Frame(f, used) => {
                    check_frame(&f, used, &buf[at..at + used]);
                    out.push(FrameOut::Frame(
                        f.special,
                        f.timestamp_secs,
                        f.value,
                        f.path.to_string(),
                        used,
                    ));
                    at += used;
                }
                Decoded::Bad(e, used) => {
                    assert!(used > 2 && at + used <= buf.len(), "bad frame used {used}");
                    out.push(FrameOut::Bad(e.to_string(), used));
                    at += used;
                }
            }
        }
        buf.drain(..at);
    }
    (out, Some(buf.len()))
}

/// A good frame is what its bytes say, and encodes back to them.
fn check_frame(f: &frame::Frame<'_>, used: usize, bytes: &[u8]) {
    assert_eq!(used, 2 + frame::HEADER_BYTES + f.path.len(), "frame length");
    assert!(!f.path.is_empty() && f.path.len() <= 1024 && !f.path.contains('/'));
    let mut again = Vec::new();
    frame::encode(&mut again, f.special, f.timestamp_secs, f.value, f.path);
    // The special flag is any non-zero byte on the wire, 1 when encoded.
    assert_eq!(again[..3], bytes[..3]);
    assert_eq!(again[4..], bytes[4..]);
}

/// The socket frame decoder (DESIGN §4) on arbitrary bytes: the stream
/// decodes to the same frames whole, one byte at a time, and cut at
/// points drawn from the input itself.
pub fn frame(data: &[u8]) {
    let whole = decode_stream(std::iter::once(data));
    let bytewise = decode_stream(data.chunks(1));
    assert_eq!(whole, bytewise, "whole vs one byte at a time");
    // Cut points from a small generator seeded by the input.
    let mut seed = data.iter().fold(0x9e37_79b9_7f4a_7c15_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut pieces = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = 1 + (seed >> 33) as usize % (rest.len().min(64));
        let (head, tail) = rest.split_at(n);
        pieces.push(head);
        rest = tail;
    }
    let split = decode_stream(pieces.into_iter());
    assert_eq!(whole, split, "whole vs random splits");
}

// --------------------------------------------------------- remote_write

/// Small label limits, so that every limit is reachable by a fuzzer.
const FUZZ_LABEL_LIMITS: LabelLimits = LabelLimits {
    max_labels: 8,
    max_name_bytes: 32,
    max_value_bytes: 64,
};

/// Largest decompressed remote_write body accepted.
const FUZZ_MAX_BODY_BYTES: usize = 1 << 20;

/// remote_write (DESIGN §5) on arbitrary bytes: as a snappy body
/// (decompressed under a cap) and as a bare protobuf `WriteRequest`, each
/// checked, validated and written into a fresh small store. A second
/// ingest into another fresh store through the same known-series cache
/// (keys reused, labels not checked again) must report the same.
pub fn remote_write(data: &[u8]) {
    if let Ok(raw) = remote_write::decompress(data, FUZZ_MAX_BODY_BYTES) {
        assert!(
            raw.len() <= FUZZ_MAX_BODY_BYTES,
            "decompressed over the cap"
        );
        remote_write_raw(&raw);
    }
    remote_write_raw(data);
}

fn remote_write_raw(raw: &[u8]) {
    let known = KnownSeries::new(16);
    let ingest = |store: &Store| {
        remote_write::ingest(store, &known, raw, &Grant::All, &FUZZ_LABEL_LIMITS, NOW_MS)
    };
    let first_store = small_store();
    let first = ingest(&first_store);
    let second = ingest(&small_store());
    assert_eq!(
        first, second,
        "same body, fresh store, known-series cache warm"
    );
    if let Ok(report) = first {
        let stored = first_store.stats().series;
        assert!(stored <= 64, "{stored} series over max_series 64");
        assert!(
            report.accepted == 0 || stored > 0,
            "accepted without a series"
        );
    }
}

// ----------------------------------------------------------- exposition

/// The text exposition parser (DESIGN §6) on arbitrary bytes: what it
/// keeps is well-formed, its errors point at real lines, and the samples
/// go through the scrape writer into a small store.
pub fn exposition(data: &[u8]) {
    let parsed = text::parse(data);
    let lines = data.split(|&b| b == b'\n').count();
    let mut last = 0;
    for e in &parsed.errors {
        assert!(
            e.line > last && e.line <= lines,
            "error line {} of {lines}",
            e.line
        );
        last = e.line;
    }
    for s in &parsed.samples {
        assert!(
            crate::model::is_metric_name(&s.name),
            "kept name {:?}",
            s.name
        );
        for (i, (name, _)) in s.labels.iter().enumerate() {
            assert!(crate::model::is_label_name(name), "kept label {name:?}");
            assert!(
                s.labels[..i].iter().all(|(n, _)| n != name),
                "duplicate label {name:?} kept"
            );
        }
    }
    let store = small_store();
    let origin = write::Origin {
        job: "fuzz",
        instance: "127.0.0.1:9100",
    };
    let report = write::write_exposition(&store, &parsed, origin, NOW_MS, NOW_MS);
    let handled = report.accepted + report.rejected.values().sum::<u64>();
    assert_eq!(
        handled,
        parsed.samples.len() as u64,
        "every sample counted once"
    );
}

// ---------------------------------------------------------------- promql

/// The store PromQL reads in [`promql`]: path and label-set series over
/// the last hour before [`NOW_MS`], specials and NaN included.
fn query_store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| {
        let store = small_store();
        let start = NOW_MS - 3_600_000;
        for i in 0..360u64 {
            let t = start + i * 10_000;
            let write = |key: &str, prefix: &str, value: Value| {
                let _ = store.write(
                    key,
                    prefix,
                    Sample {
                        timestamp_ms: t,
                        value,
                    },
                    NOW_MS,
                );
            };
            write("traffic-client1-in", "traffic", Value::Uint(i * 7 % 1000));
            write("traffic-client2-out", "traffic", Value::Uint(i));
            let special = if i % 17 == 0 {
                Value::Special(1 + i % 2)
            } else {
                Value::Uint(i % 300)
            };
            write("response-web1", "response", special);
            write("load-host1", "load", Value::Float((i as f64 / 10.0).sin()));
            let odd = if i % 50 == 0 {
                f64::NAN
            } else {
                i as f64 - 100.0
            };
            write("other-thing", "other", Value::Float(odd));
        }
        let body = remote_write_seed(start);
        let known = KnownSeries::new(64);
        let _ = remote_write::ingest(
            &store,
            &known,
            &body,
            &Grant::All,
            &LabelLimits::default(),
            NOW_MS,
        );
        store
    })
}

/// A bare protobuf `WriteRequest` with a few label-set series (counters,
/// gauges, histogram buckets), samples every 15 s from `start_ms`.
pub fn remote_write_seed(start_ms: u64) -> Vec<u8> {
    use prost::Message;
    use remote_write::{label, proto};
    let series = |labels: Vec<proto::Label>, f: &dyn Fn(u64) -> f64| proto::TimeSeries {
        labels,
        samples: (0..240u64)
            .map(|i| proto::Sample {
                value: f(i),
                timestamp: (start_ms + i * 15_000) as i64,
            })
            .collect(),
        ..Default::default()
    };
    let mut timeseries = Vec::new();
    for (job, k) in [("api", 1.0), ("db", 3.0)] {
        timeseries.push(series(
            vec![
                label("__name__", "http_requests_total"),
                label("code", "200"),
                label("job", job),
            ],
            &|i| i as f64 * k,
        ));
        timeseries.push(series(
            vec![
                label("__name__", "up"),
                label("instance", "h:9100"),
                label("job", job),
            ],
            &|i| f64::from(i % 20 != 0),
        ));
        for le in ["0.1", "1", "+Inf"] {
            let w = le.parse::<f64>().unwrap_or(10.0).min(10.0);
            timeseries.push(series(
                vec![
                    label("__name__", "rpc_duration_seconds_bucket"),
                    label("job", job),
                    label("le", le),
                ],
                &|i| (i as f64 * k * (w + 1.0)).floor(),
            ));
        }
    }
    proto::WriteRequest {
        timeseries,
        metadata: vec![proto::MetricMetadata {
            r#type: proto::metric_metadata::MetricType::Counter as i32,
            metric_family_name: "http_requests_total".into(),
            help: "Requests served.".into(),
            unit: String::new(),
        }],
    }
    .encode_to_vec()
}

/// Most steps of a range query [`promql`] evaluates.
const FUZZ_MAX_STEPS: i64 = 120;

/// PromQL (DESIGN §7) on arbitrary text, with small limits over the fixed
/// data set of [`query_store`]. The first line is the expression; optional
/// further lines are the API's `time` (or `start`), `end` and `step`
/// parameters, parsed as the API parses them. The expression is evaluated
/// as an instant query, and as a range query of at most
/// [`FUZZ_MAX_STEPS`] steps; results are encoded as the API encodes them.
pub fn promql(data: &[u8]) {
    if data.len() > PROMQL_MAX_BYTES {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let query = lines.next().unwrap_or_default();
    let start = lines.next().map(prometheus::parse_time);
    let end = lines.next().map(prometheus::parse_time);
    let step = lines.next().map(prometheus::parse_duration_ms);
    let Ok(expr) = engine::parse(query) else {
        return;
    };
    let engine = Engine {
        max_samples: 20_000,
        timeout: Some(Duration::from_secs(1)),
        ..Engine::default()
    };
    let source = StoreSource {
        store: query_store(),
        grant: &Grant::All,
        max_samples: 20_000,
    };
    let now = NOW_MS as i64;
    let at = match start {
        Some(Ok(t)) => t,
        _ => now,
    };
    if let Ok(value) = engine.instant(&source, &expr, at) {
        prometheus::encode_result(&value);
    }
    let end = match end {
        Some(Ok(t)) => t,
        _ => at.saturating_add(600_000),
    };
    let step = match step {
        Some(Ok(s)) if s > 0 => s,
        _ => 60_000,
    };
    if end >= at && (end - at) / step <= FUZZ_MAX_STEPS {
        if let Ok(value) = engine.range(&source, &expr, at, end, step) {
            prometheus::encode_result(&value);
        }
    }
}

// ---------------------------------------------------------------- config

/// The config loader (DESIGN §11) on arbitrary text: parse and validate;
/// a valid file's rules index and make archives' shapes the rrd accepts.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Relative file names resolve under a folder that does not exist.
    let Ok(settings) =
        crate::config::parse(text, "fuzz.yaml", Path::new("/nonexistent-ringdb-fuzz"))
    else {
        return;
    };
    for rule in &settings.rules {
        let shape = &rule.shape;
        assert!(shape.limit >= 1 && u64::from(shape.limit) <= shape.value_size.max_limit());
        assert!(shape.timeframe_secs >= 1 && shape.specials.len() <= rrd::MAX_SPECIALS);
        let _ = rule.window_ms();
    }
    let _ = RuleSet::new(settings.rules);
}

// -------------------------------------------------------------- snapshot

/// The snapshot codec (DESIGN §9) on arbitrary bytes, read as one saved
/// archive: `u16 BE length` + header record, then any number of
/// `u16 BE page number` + `u16 BE length` + page record. The records go
/// through the daemon's restore of one archive (decode, restore, migrate
/// into the fuzz rule set); an archive that decodes is also re-encoded
/// whole and decoded again, which must give the same buckets.
pub fn snapshot(data: &[u8]) {
    let Some((header, mut rest)) = take_record(data) else {
        return;
    };
    let mut pages = Vec::new();
    while let Some((number, tail)) = rest.split_first_chunk::<2>() {
        let Some((page, tail)) = take_record(tail) else {
            break;
        };
        pages.push((u32::from(u16::from_be_bytes(*number)), page));
        rest = tail;
    }
    // A well-formed header may declare up to 2^32 buckets, which the
    // restore and the round trip below walk bucket by bucket: bounded
    // here so that one input stays within the fuzzer's time limit.
    if codec::decode_header(header).is_ok_and(|h| h.shape.limit > FUZZ_MAX_LIMIT) {
        return;
    }
    let store = small_store();
    crate::snapshot::restore_record(
        &store,
        b"traffic-fuzz-in",
        b"traffic_minutely",
        header,
        &pages,
    );
    let Ok(decoded) = codec::decode_header(header) else {
        return;
    };
    let (mut archive, _errors) = Archive::restore(&decoded, pages.iter().copied());
    archive.mark_all_dirty();
    let dirty = archive.take_dirty("rule", &decoded.series_prefix, None);
    let header_bytes = dirty.header.as_deref().unwrap_or_default();
    let again_header = codec::decode_header(header_bytes)
        .unwrap_or_else(|e| panic!("re-encoded header does not decode: {e}"));
    assert_eq!(again_header.shape, decoded.shape, "shape round trip");
    let again_pages = dirty.pages.iter().map(|(n, b)| (*n, b.as_slice()));
    let (again, errors) = Archive::restore(&again_header, again_pages);
    assert!(
        errors.is_empty(),
        "re-encoded pages do not decode: {errors:?}"
    );
    assert_eq!(readings(&archive), readings(&again), "buckets round trip");
}

/// Largest archive (buckets) [`snapshot`] restores.
const FUZZ_MAX_LIMIT: u32 = 1 << 16;

/// `u16 BE length` + that many bytes.
fn take_record(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = data.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Every filled bucket, floats by bits (NaN equals NaN).
fn readings(archive: &Archive) -> Vec<(u64, String)> {
    archive
        .filled()
        .map(|(t, r)| {
            let r = match r {
                Reading::Float(v) => format!("f{:x}", v.to_bits()),
                other => format!("{other:?}"),
            };
            (t, r)
        })
        .collect()
}

/// A saved archive in the layout [`snapshot`] reads: one archive of
/// `shape` filled with `samples` (seconds, value), encoded by the codec.
pub fn snapshot_seed(shape: rrd::Shape, samples: &[(u64, Value)]) -> Vec<u8> {
    let mut archive = Archive::new(shape);
    for (secs, value) in samples {
        let _ = archive.update(Sample {
            timestamp_ms: secs * 1000,
            value: *value,
        });
    }
    archive.mark_all_dirty();
    let dirty = archive.take_dirty("traffic_minutely", "traffic", None);
    let header = dirty.header.unwrap_or_default();
    let mut out = Vec::new();
    out.extend_from_slice(&(header.len() as u16).to_be_bytes());
    out.extend_from_slice(&header);
    for (page, bytes) in dirty.pages {
        out.extend_from_slice(&(page as u16).to_be_bytes());
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

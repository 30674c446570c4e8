//! Prometheus remote_write 1.0 ingest (DESIGN §5), the only prost and snap
//! user: snappy block + protobuf `WriteRequest` in, label sets validated and
//! written to the store series by series, an honest status code out.

pub mod handler;

use crate::access::Grant;
use crate::model::{self, Sample, Value};
use crate::store::{MetricMetadata, SeriesId, Store, WriteReject};
use prost::Message;
use std::collections::BTreeMap;

/// The messages of proto/remote.proto and proto/types.proto.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/prometheus.rs"));
}

/// Per-series label limits.
#[derive(Debug, Clone, Copy)]
pub struct LabelLimits {
    /// Most labels per series, `__name__` included.
    pub max_labels: usize,
    /// Longest label name in bytes.
    pub max_name_bytes: usize,
    /// Longest label value in bytes.
    pub max_value_bytes: usize,
}

impl Default for LabelLimits {
    fn default() -> Self {
        LabelLimits {
            max_labels: 64,
            max_name_bytes: 256,
            max_value_bytes: 4096,
        }
    }
}

/// A body that cannot be decoded at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The snappy header declares more than the cap.
    #[error("decompressed body of {declared} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// Declared decompressed length.
        declared: usize,
        /// The cap.
        max: usize,
    },
    /// Not snappy block format.
    #[error("body is not snappy block-compressed: {0}")]
    Snappy(String),
    /// Not a WriteRequest.
    #[error("body is not a protobuf WriteRequest: {0}")]
    Protobuf(String),
}

impl DecodeError {
    /// Label value used in self-metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Snappy(_) => "bad_snappy",
            DecodeError::Protobuf(_) => "bad_protobuf",
        }
    }
}

/// Decompresses and decodes a body, checking the declared decompressed
/// length against `max_bytes` before allocating.
///
/// # Errors
/// [`DecodeError`] saying what was expected.
pub fn decode(body: &[u8], max_bytes: usize) -> Result<proto::WriteRequest, DecodeError> {
    let declared =
        snap::raw::decompress_len(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
    if declared > max_bytes {
        return Err(DecodeError::TooLarge {
            declared,
            max: max_bytes,
        });
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| DecodeError::Snappy(e.to_string()))?;
    // Decoding from `Bytes` makes every label a slice of `raw`, not a copy.
    proto::WriteRequest::decode(bytes::Bytes::from(raw))
        .map_err(|e| DecodeError::Protobuf(e.to_string()))
}

/// A label (for tests, load generators and agents written in Rust).
pub fn label(name: &str, value: &str) -> proto::Label {
    proto::Label {
        name: bytes::Bytes::copy_from_slice(name.as_bytes()),
        value: bytes::Bytes::copy_from_slice(value.as_bytes()),
    }
}

/// Encodes a request as a remote_write body (for tests, load generators and
/// agents written in Rust).
pub fn encode(request: &proto::WriteRequest) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .expect("snappy compression of an in-memory buffer cannot fail")
}

/// What one request did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Samples stored in at least one archive.
    pub accepted: u64,
    /// Stale markers (accepted, not stored).
    pub stale_markers: u64,
    /// Refused samples by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Exemplars skipped.
    pub exemplars: u64,
    /// Native histogram samples skipped.
    pub histograms: u64,
    /// Metadata entries received (not stored).
    pub metadata: u64,
}

impl Report {
    /// Samples refused, all reasons.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    fn reject(&mut self, reason: &'static str, n: u64) {
        if n > 0 {
            *self.rejected.entry(reason).or_default() += n;
        }
    }
}

/// Why a whole series was refused.
fn check_labels(labels: &[proto::Label], limits: &LabelLimits) -> Result<(), &'static str> {
    if labels.len() > limits.max_labels {
        return Err("too_many_labels");
    }
    let mut previous: Option<&[u8]> = None;
    let mut name_seen = false;
    for label in labels {
        let (name, value) = (label.name.as_ref(), label.value.as_ref());
        let (Ok(name_text), Ok(value_text)) =
            (std::str::from_utf8(name), std::str::from_utf8(value))
        else {
            return Err("bad_utf8");
        };
        if name.len() > limits.max_name_bytes || value.len() > limits.max_value_bytes {
            return Err("label_too_long");
        }
        if !model::is_label_name(name_text) {
            return Err("invalid_label_name");
        }
        if value.is_empty() {
            return Err("empty_label_value");
        }
        match previous {
            Some(p) if p == name => return Err("duplicate_label"),
            Some(p) if p > name => return Err("unsorted_labels"),
            _ => {}
        }
        if name_text == "__name__" {
            name_seen = true;
            if !model::is_metric_name(value_text) {
                return Err("invalid_metric_name");
            }
        }
        previous = Some(name);
    }
    if name_seen {
        Ok(())
    } else {
        Err("missing_metric_name")
    }
}

fn text(bytes: &[u8]) -> &str {
    // Checked by `check_labels` before any caller gets here.
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// Writes every valid series of a request into the store.
pub fn ingest(
    store: &Store,
    request: &proto::WriteRequest,
    grant: &Grant,
    limits: &LabelLimits,
    now_ms: u64,
) -> Report {
    let mut report = Report {
        metadata: request.metadata.len() as u64,
        ..Report::default()
    };
    for m in &request.metadata {
        if model::is_metric_name(&m.metric_family_name) {
            let kind = proto::metric_metadata::MetricType::try_from(m.r#type)
                .map_or("unknown", |t| t.as_str_name())
                .to_ascii_lowercase();
            store.set_metadata(
                &m.metric_family_name,
                MetricMetadata {
                    kind,
                    help: m.help.clone(),
                    unit: m.unit.clone(),
                },
            );
        }
    }
    let mut samples: Vec<Sample> = Vec::new();
    for series in &request.timeseries {
        report.exemplars += series.exemplars.len() as u64;
        report.histograms += series.histograms.len() as u64;
        if series.samples.is_empty() {
            continue;
        }
        let n = series.samples.len() as u64;
        if let Err(reason) = check_labels(&series.labels, limits) {
            report.reject(reason, n);
            continue;
        }
        let name = series
            .labels
            .iter()
            .find(|l| l.name.as_ref() == b"__name__")
            .map_or("", |l| text(&l.value));
        if !grant.may_write(name) {
            report.reject(WriteReject::Forbidden.as_str(), n);
            continue;
        }
        let others = || {
            series
                .labels
                .iter()
                .filter(|l| l.name.as_ref() != b"__name__")
                .map(|l| (text(&l.name), text(&l.value)))
        };
        let key = model::series_key(name, others());
        let make_labels = || {
            series
                .labels
                .iter()
                .map(|l| (text(&l.name).to_owned(), text(&l.value).to_owned()))
                .collect::<Vec<_>>()
        };
        samples.clear();
        let mut negative = 0;
        for s in &series.samples {
            match u64::try_from(s.timestamp) {
                Ok(timestamp_ms) => samples.push(Sample {
                    timestamp_ms,
                    value: Value::Float(s.value),
                }),
                Err(_) => negative += 1,
            }
        }
        report.reject(
            WriteReject::Archive(crate::rrd::Reject::TooOld).as_str(),
            negative,
        );
        let id = SeriesId {
            key: &key,
            prefix: name,
            labels: Some(&make_labels),
        };
        let mut i = 0;
        store.write_batch(&id, &samples, now_ms, |outcome| {
            match outcome {
                Ok(_) if matches!(samples[i].value, Value::Float(v) if crate::rrd::is_stale_marker(v)) => {
                    report.stale_markers += 1
                }
                Ok(_) => report.accepted += 1,
                Err(reason) => report.reject(reason.as_str(), 1),
            }
            i += 1;
        });
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_checks() {
        let limits = LabelLimits::default();
        let cases: Vec<(&str, Vec<proto::Label>, Result<(), &str>)> = vec![
            (
                "valid",
                vec![label("__name__", "up"), label("job", "x")],
                Ok(()),
            ),
            (
                "no name",
                vec![label("job", "x")],
                Err("missing_metric_name"),
            ),
            (
                "bad metric name",
                vec![label("__name__", "1up")],
                Err("invalid_metric_name"),
            ),
            (
                "bad label name",
                vec![label("__name__", "up"), label("a-b", "x")],
                Err("invalid_label_name"),
            ),
            (
                "unsorted",
                vec![label("__name__", "up"), label("z", "1"), label("a", "1")],
                Err("unsorted_labels"),
            ),
            (
                "duplicate",
                vec![label("__name__", "up"), label("a", "1"), label("a", "2")],
                Err("duplicate_label"),
            ),
            (
                "empty value",
                vec![label("__name__", "up"), label("a", "")],
                Err("empty_label_value"),
            ),
            (
                "bad utf-8",
                vec![
                    label("__name__", "up"),
                    proto::Label {
                        name: bytes::Bytes::from_static(b"a"),
                        value: bytes::Bytes::from_static(&[0xff]),
                    },
                ],
                Err("bad_utf8"),
            ),
            (
                "too long",
                vec![label("__name__", "up"), label("a", &"x".repeat(4097))],
                Err("label_too_long"),
            ),
        ];
        for (name, labels, want) in cases {
            assert_eq!(check_labels(&labels, &limits), want, "case {name}");
        }
    }

    #[test]
    fn declared_length_is_checked_before_decompressing() {
        let body = encode(&proto::WriteRequest {
            timeseries: vec![proto::TimeSeries {
                labels: vec![label("__name__", &"x".repeat(200))],
                ..Default::default()
            }],
            metadata: vec![],
        });
        assert!(matches!(
            decode(&body, 100),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(decode(&body, 1000).is_ok());
        assert!(matches!(
            decode(b"\xff\xff\xff\xff\xff\xff", 1000),
            Err(DecodeError::Snappy(_))
        ));
    }
}

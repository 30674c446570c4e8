//! A zero-copy reader of the hot part of a `WriteRequest` (proto/remote.proto,
//! proto/types.proto): time series are walked in place, their labels and
//! samples land in scratch vectors reused from series to series, so a known
//! series costs no allocation. Metadata entries, rare and small, are decoded
//! with prost. The reader is as strict as prost: a truncated field, a field
//! number 0 or a known field with the wrong wire type is an error; unknown
//! fields, groups included, are skipped.

use super::proto;
use prost::Message;

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// Why the body is not a `WriteRequest`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

fn error(what: impl Into<String>) -> WireError {
    WireError(what.into())
}

/// One field's payload.
#[derive(Debug, Clone, Copy)]
enum Payload<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
    /// A whole group, skipped (only unknown fields may be groups).
    Group,
    EndGroup,
}

impl Payload<'_> {
    fn wire_type(self) -> u8 {
        match self {
            Payload::Varint(_) => VARINT,
            Payload::Fixed64(_) => FIXED64,
            Payload::Bytes(_) => LEN,
            Payload::Fixed32 => FIXED32,
            Payload::Group => START_GROUP,
            Payload::EndGroup => END_GROUP,
        }
    }
}

#[inline]
fn varint(buf: &mut &[u8]) -> Result<u64, WireError> {
    if let Some(&byte) = buf.first() {
        if byte < 0x80 {
            *buf = &buf[1..];
            return Ok(u64::from(byte));
        }
    }
    let mut value = 0u64;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            if i == 9 && byte > 1 {
                break;
            }
            *buf = &buf[i + 1..];
            return Ok(value);
        }
    }
    Err(error("invalid or truncated varint"))
}

fn take<'a>(buf: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], WireError> {
    if buf.len() < n {
        return Err(error(format!(
            "{what}: {n} bytes announced, {} left",
            buf.len()
        )));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// The next field of a message: its number and payload, `None` at the end.
fn field<'a>(buf: &mut &'a [u8]) -> Result<Option<(u64, Payload<'a>)>, WireError> {
    if buf.is_empty() {
        return Ok(None);
    }
    match next(buf, 0)? {
        (number, Payload::EndGroup) => Err(error(format!("unexpected end of group {number}"))),
        field => Ok(Some(field)),
    }
}

/// Deepest group nesting skipped (prost's recursion limit).
const MAX_DEPTH: u32 = 100;

fn next<'a>(buf: &mut &'a [u8], depth: u32) -> Result<(u64, Payload<'a>), WireError> {
    let key = varint(buf)?;
    let (number, wire_type) = (key >> 3, (key & 7) as u8);
    if number == 0 || number > u64::from(u32::MAX >> 3) {
        return Err(error(format!("invalid field number {number}")));
    }
    let payload = match wire_type {
        VARINT => Payload::Varint(varint(buf)?),
        FIXED64 => {
            let bytes = take(buf, 8, "fixed64 field")?;
            Payload::Fixed64(u64::from_le_bytes(bytes.try_into().unwrap_or_default()))
        }
        LEN => {
            let n = usize::try_from(varint(buf)?).map_err(|_| error("length too large"))?;
            Payload::Bytes(take(buf, n, "length-delimited field")?)
        }
        START_GROUP => {
            if depth >= MAX_DEPTH {
                return Err(error("groups nested too deeply"));
            }
            loop {
                match next(buf, depth + 1)? {
                    (end, Payload::EndGroup) if end == number => break,
                    (end, Payload::EndGroup) => {
                        return Err(error(format!("group {number} closed as {end}")))
                    }
                    _ => {}
                }
            }
            Payload::Group
        }
        END_GROUP => Payload::EndGroup,
        FIXED32 => {
            take(buf, 4, "fixed32 field")?;
            Payload::Fixed32
        }
        other => return Err(error(format!("invalid wire type {other}"))),
    };
    Ok((number, payload))
}

/// The payload of a known field, which must have `wire_type`.
fn expect(
    message: &str,
    number: u64,
    payload: Payload<'_>,
    wire_type: u8,
) -> Result<(), WireError> {
    if payload.wire_type() == wire_type {
        Ok(())
    } else {
        Err(error(format!(
            "{message} field {number}: wire type {}, expected {wire_type}",
            payload.wire_type()
        )))
    }
}

/// A checked `WriteRequest`, borrowing from the body: the labels and samples
/// of all series in two flat vectors, each series a span of both.
#[derive(Debug, Default)]
pub struct Request<'a> {
    labels: Vec<(&'a [u8], &'a [u8])>,
    samples: Vec<(i64, f64)>,
    series: Vec<Span>,
    /// The metadata entries.
    pub metadata: Vec<proto::MetricMetadata>,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    labels_end: usize,
    samples_end: usize,
    exemplars: u64,
    histograms: u64,
}

/// One time series of a [`Request`].
#[derive(Debug, Clone, Copy)]
pub struct Series<'r, 'a> {
    /// `(name, value)` pairs in wire order, bytes not yet checked.
    pub labels: &'r [(&'a [u8], &'a [u8])],
    /// `(timestamp_ms, value)` in wire order.
    pub samples: &'r [(i64, f64)],
    /// Exemplars present (skipped).
    pub exemplars: u64,
    /// Native histogram samples present (skipped).
    pub histograms: u64,
}

impl<'a> Request<'a> {
    /// Reads a whole body; a malformed body is refused before any of it is
    /// used.
    ///
    /// # Errors
    /// What was malformed.
    pub fn parse(mut buf: &'a [u8]) -> Result<Request<'a>, WireError> {
        let mut request = Request::default();
        while let Some((number, payload)) = field(&mut buf)? {
            match (number, payload) {
                (1, Payload::Bytes(inner)) => request.read_series(inner)?,
                (3, Payload::Bytes(inner)) => request.metadata.push(
                    proto::MetricMetadata::decode(inner)
                        .map_err(|e| error(format!("MetricMetadata: {e}")))?,
                ),
                (1 | 3, other) => expect("WriteRequest", number, other, LEN)?,
                _ => {}
            }
        }
        Ok(request)
    }

    fn read_series(&mut self, mut buf: &'a [u8]) -> Result<(), WireError> {
        let (mut exemplars, mut histograms) = (0, 0);
        while let Some((number, payload)) = field(&mut buf)? {
            match (number, payload) {
                (1, Payload::Bytes(inner)) => self.labels.push(label(inner)?),
                (2, Payload::Bytes(inner)) => self.samples.push(sample(inner)?),
                (3, Payload::Bytes(_)) => exemplars += 1,
                (4, Payload::Bytes(_)) => histograms += 1,
                (1..=4, other) => expect("TimeSeries", number, other, LEN)?,
                _ => {}
            }
        }
        self.series.push(Span {
            labels_end: self.labels.len(),
            samples_end: self.samples.len(),
            exemplars,
            histograms,
        });
        Ok(())
    }

    /// The time series, in order.
    pub fn series(&self) -> impl Iterator<Item = Series<'_, 'a>> {
        let mut start = (0, 0);
        self.series.iter().map(move |span| {
            let (labels, samples) = start;
            start = (span.labels_end, span.samples_end);
            Series {
                labels: &self.labels[labels..span.labels_end],
                samples: &self.samples[samples..span.samples_end],
                exemplars: span.exemplars,
                histograms: span.histograms,
            }
        })
    }
}

fn label(mut buf: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    let (mut name, mut value): (&[u8], &[u8]) = (b"", b"");
    while let Some((number, payload)) = field(&mut buf)? {
        match (number, payload) {
            (1, Payload::Bytes(b)) => name = b,
            (2, Payload::Bytes(b)) => value = b,
            (1 | 2, other) => expect("Label", number, other, LEN)?,
            _ => {}
        }
    }
    Ok((name, value))
}

fn sample(mut buf: &[u8]) -> Result<(i64, f64), WireError> {
    let (mut timestamp, mut value) = (0i64, 0f64);
    while let Some((number, payload)) = field(&mut buf)? {
        match (number, payload) {
            (1, Payload::Fixed64(bits)) => value = f64::from_bits(bits),
            (2, Payload::Varint(v)) => timestamp = v as i64,
            (1, other) => expect("Sample", number, other, FIXED64)?,
            (2, other) => expect("Sample", number, other, VARINT)?,
            _ => {}
        }
    }
    Ok((timestamp, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::remote_write::label as l;
    use proptest::prelude::*;

    type SeriesSpec<'s> = (Vec<(&'s str, &'s str)>, Vec<(i64, f64)>);

    fn request(series: Vec<SeriesSpec<'_>>) -> proto::WriteRequest {
        proto::WriteRequest {
            timeseries: series
                .into_iter()
                .map(|(labels, samples)| proto::TimeSeries {
                    labels: labels.into_iter().map(|(n, v)| l(n, v)).collect(),
                    samples: samples
                        .into_iter()
                        .map(|(timestamp, value)| proto::Sample { value, timestamp })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            metadata: vec![proto::MetricMetadata {
                r#type: 1,
                metric_family_name: "up".into(),
                help: "h".into(),
                unit: String::new(),
            }],
        }
    }

    type Read = Vec<(Vec<(Vec<u8>, Vec<u8>)>, Vec<(i64, f64)>)>;

    fn read_all(raw: &[u8]) -> Result<Read, WireError> {
        Ok(Request::parse(raw)?
            .series()
            .map(|s| {
                let labels = s.labels.iter().map(|(n, v)| (n.to_vec(), v.to_vec()));
                (labels.collect(), s.samples.to_vec())
            })
            .collect())
    }

    fn check(raw: &[u8]) -> Result<Vec<proto::MetricMetadata>, WireError> {
        Request::parse(raw).map(|r| r.metadata)
    }

    #[test]
    fn reads_what_prost_writes() {
        let req = request(vec![
            (
                vec![("__name__", "up"), ("job", "a")],
                vec![(1, 1.5), (-2, f64::NAN)],
            ),
            (vec![("__name__", "x")], vec![]),
        ]);
        let raw = req.encode_to_vec();
        let got = read_all(&raw).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0[1], (b"job".to_vec(), b"a".to_vec()));
        assert_eq!(got[0].1[0], (1, 1.5));
        assert_eq!(got[0].1[1].0, -2);
        assert!(got[0].1[1].1.is_nan());
        assert_eq!(check(&raw).unwrap(), req.metadata);
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let raw = request(vec![(vec![("__name__", "up")], vec![(1, 1.0)])]).encode_to_vec();
        // Cut anywhere inside the first time series (its length fits one byte).
        let first_end = 2 + usize::from(raw[1]);
        for cut in 1..first_end {
            assert!(check(&raw[..cut]).is_err(), "truncated at {cut}");
        }
        assert!(check(&raw[..first_end]).is_ok());
        // Field 1 (timeseries) as a varint.
        assert!(check(&[0x08, 0x01]).is_err());
        // Field number 0.
        assert!(check(&[0x02, 0x00]).is_err());
        // An unclosed group.
        assert!(check(&[0x2b]).is_err());
        // Unknown fields, a group among them, are skipped.
        assert_eq!(
            check(&[0x28, 0x05, 0x2b, 0x08, 0x01, 0x2c]).unwrap(),
            vec![]
        );
    }

    /// Encodings of random requests, some with one byte changed.
    fn mutated_requests() -> impl Strategy<Value = Vec<u8>> {
        let label = ("[a-z_]{0,6}", "[a-z0-9]{0,6}");
        let sample = (any::<i64>(), any::<f64>());
        let series = (
            proptest::collection::vec(label, 0..4),
            proptest::collection::vec(sample, 0..4),
        );
        (
            proptest::collection::vec(series, 0..4),
            any::<proptest::sample::Index>(),
            any::<u8>(),
            any::<bool>(),
        )
            .prop_map(|(series, at, byte, mutate)| {
                let series = series
                    .iter()
                    .map(|(labels, samples)| {
                        let labels = labels.iter().map(|(n, v)| (n.as_str(), v.as_str()));
                        (labels.collect(), samples.clone())
                    })
                    .collect();
                let mut req = request(series);
                req.metadata.clear();
                let mut raw = req.encode_to_vec();
                if mutate && !raw.is_empty() {
                    let i = at.index(raw.len());
                    raw[i] = byte;
                }
                raw
            })
    }

    proptest! {
        #[test]
        fn agrees_with_prost_on_requests(bytes in mutated_requests()) {
            agree(&bytes)?;
        }

        #[test]
        fn agrees_with_prost(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            agree(&bytes)?;
        }
    }

    /// The reader accepts what prost accepts and reads the same series.
    fn agree(bytes: &[u8]) -> Result<(), TestCaseError> {
        let got = read_all(bytes);
        let want = proto::WriteRequest::decode(bytes);
        prop_assert_eq!(
            got.is_ok(),
            want.is_ok(),
            "reader {:?} prost {:?}",
            got,
            want
        );
        if let (Ok(got), Ok(req)) = (got, want) {
            prop_assert_eq!(got.len(), req.timeseries.len());
            for (g, w) in got.iter().zip(&req.timeseries) {
                let labels: Vec<(Vec<u8>, Vec<u8>)> = w
                    .labels
                    .iter()
                    .map(|l| (l.name.to_vec(), l.value.to_vec()))
                    .collect();
                prop_assert_eq!(&g.0, &labels);
                let samples: Vec<(i64, u64)> = w
                    .samples
                    .iter()
                    .map(|s| (s.timestamp, s.value.to_bits()))
                    .collect();
                let got_samples: Vec<(i64, u64)> =
                    g.1.iter().map(|(t, v)| (*t, v.to_bits())).collect();
                prop_assert_eq!(got_samples, samples);
            }
        }
        Ok(())
    }
}

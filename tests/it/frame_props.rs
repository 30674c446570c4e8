//! Property tests of the sans-I/O frame decoder (DESIGN §4): a stream of
//! good and bad frames decodes to what was encoded, the same whether it
//! arrives whole, one byte at a time, or in random splits.
//!
//! Failures are not persisted to proptest-regressions/: a failing case is
//! printed shrunk, and the fix should come with a named case.

use proptest::prelude::*;
use proptest::test_runner::Config;
use ringdb::ingest::frame::{self, Decoded, FrameError, HEADER_BYTES, VERSION};

fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

/// One frame of the stream, good or bad.
#[derive(Debug, Clone)]
enum Item {
    Valid {
        special: bool,
        timestamp_secs: u64,
        value: u64,
        path: String,
    },
    /// A well-formed frame with another version byte.
    Version(u8, String),
    /// A payload of 1..=18 bytes: no room for a path.
    Short(Vec<u8>),
    /// A path with '/'.
    Slash(String),
    /// Path bytes that are not UTF-8 (and have no '/').
    NotUtf8(Vec<u8>),
    /// A path of more than 1024 bytes.
    TooLong(usize),
}

/// What follows the frames.
#[derive(Debug, Clone)]
enum Tail {
    Nothing,
    /// A zero-length frame, then bytes the decoder must never look at.
    Close(Vec<u8>),
    /// The first `n` bytes of one more frame (`n` < its length).
    Partial(String, prop::sample::Index),
}

/// A decoding result, owned; a bad path's message is not compared.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Frame {
        special: bool,
        timestamp_secs: u64,
        value: u64,
        path: String,
        used: usize,
    },
    Version(u8, usize),
    Short(usize, usize),
    NotUtf8(usize),
    BadPath(usize),
    Close,
}

/// How the stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Closed,
    /// Bytes still waiting for the rest of their frame.
    Pending(usize),
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        20 => "[a-z0-9_.-]{1,40}",
        1 => Just("p".repeat(1024)),
    ]
}

fn item() -> impl Strategy<Value = Item> {
    let bad_utf8 = prop::sample::select(vec![
        vec![0xff],
        vec![0xfe],
        vec![0x80],
        vec![0xc0, 0x80],
        vec![0xe2, 0x82],
        vec![0xed, 0xa0, 0x80],
    ]);
    prop_oneof![
        12 => (any::<bool>(), any::<u64>(), any::<u64>(), path()).prop_map(
            |(special, timestamp_secs, value, path)| Item::Valid {
                special,
                timestamp_secs,
                value,
                path,
            }
        ),
        2 => (any::<u8>(), path())
            .prop_map(|(v, path)| Item::Version(if v == VERSION { 4 } else { v }, path)),
        2 => prop::collection::vec(any::<u8>(), 0..HEADER_BYTES).prop_map(|mut rest| {
            rest.insert(0, VERSION);
            Item::Short(rest)
        }),
        2 => ("[a-z0-9_.-]{0,20}", "[a-z0-9_./-]{0,20}")
            .prop_map(|(a, b)| Item::Slash(format!("{a}/{b}"))),
        2 => ("[a-z0-9_.-]{0,20}", bad_utf8, "[a-z0-9_.-]{0,20}").prop_map(|(a, bad, b)| {
            Item::NotUtf8([a.as_bytes(), &bad, b.as_bytes()].concat())
        }),
        1 => (1025..=1100usize).prop_map(Item::TooLong),
    ]
}

fn tail() -> impl Strategy<Value = Tail> {
    prop_oneof![
        Just(Tail::Nothing),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(Tail::Close),
        ("[a-z0-9_.-]{1,40}", any::<prop::sample::Index>())
            .prop_map(|(p, cut)| Tail::Partial(p, cut)),
    ]
}

/// `u16 BE length` + payload.
fn framed(out: &mut Vec<u8>, payload: &[u8]) -> usize {
    let len = u16::try_from(payload.len()).expect("payload fits a u16 length");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    2 + payload.len()
}

/// A valid payload (version 3, not special) with these path bytes.
fn payload_with_path(path: &[u8]) -> Vec<u8> {
    let mut payload = vec![VERSION, 0];
    payload.extend_from_slice(&1_349_695_853u64.to_be_bytes());
    payload.extend_from_slice(&1024u64.to_be_bytes());
    payload.extend_from_slice(path);
    payload
}

/// Appends the item's bytes and returns what decoding them must give.
fn encode(out: &mut Vec<u8>, item: &Item) -> Out {
    match item {
        Item::Valid {
            special,
            timestamp_secs,
            value,
            path,
        } => {
            let start = out.len();
            frame::encode(out, *special, *timestamp_secs, *value, path);
            Out::Frame {
                special: *special,
                timestamp_secs: *timestamp_secs,
                value: *value,
                path: path.clone(),
                used: out.len() - start,
            }
        }
        Item::Version(version, path) => {
            let mut payload = payload_with_path(path.as_bytes());
            payload[0] = *version;
            Out::Version(*version, framed(out, &payload))
        }
        Item::Short(payload) => Out::Short(payload.len(), framed(out, payload)),
        Item::Slash(path) => Out::BadPath(framed(out, &payload_with_path(path.as_bytes()))),
        Item::NotUtf8(path) => Out::NotUtf8(framed(out, &payload_with_path(path))),
        Item::TooLong(len) => Out::BadPath(framed(out, &payload_with_path(&vec![b'x'; *len]))),
    }
}

/// The whole stream and what decoding it must give.
fn stream(items: &[Item], tail: &Tail) -> (Vec<u8>, Vec<Out>, End) {
    let mut bytes = Vec::new();
    let mut outs: Vec<Out> = items.iter().map(|item| encode(&mut bytes, item)).collect();
    let end = match tail {
        Tail::Nothing => End::Pending(0),
        Tail::Close(after) => {
            bytes.extend_from_slice(&[0, 0]);
            bytes.extend_from_slice(after);
            outs.push(Out::Close);
            End::Closed
        }
        Tail::Partial(path, cut) => {
            let mut whole = Vec::new();
            frame::encode(&mut whole, true, 1, 2, path);
            let n = 1 + cut.index(whole.len() - 1);
            bytes.extend_from_slice(&whole[..n]);
            End::Pending(n)
        }
    };
    (bytes, outs, end)
}

fn owned(decoded: Decoded<'_>) -> Option<Out> {
    Some(match decoded {
        Decoded::NeedMore => return None,
        Decoded::Close => Out::Close,
        Decoded::Frame(f, used) => Out::Frame {
            special: f.special,
            timestamp_secs: f.timestamp_secs,
            value: f.value,
            path: f.path.to_owned(),
            used,
        },
        Decoded::Bad(FrameError::Version(v), used) => Out::Version(v, used),
        Decoded::Bad(FrameError::Short(n), used) => Out::Short(n, used),
        Decoded::Bad(FrameError::PathNotUtf8, used) => Out::NotUtf8(used),
        Decoded::Bad(FrameError::BadPath(_), used) => Out::BadPath(used),
    })
}

/// A connection's read loop: accumulate each chunk, decode until NeedMore,
/// drop what each frame used, stop at Close.
fn drive<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Result<(Vec<Out>, End), TestCaseError> {
    let mut pending = Vec::new();
    let mut outs = Vec::new();
    for chunk in chunks {
        pending.extend_from_slice(chunk);
        while let Some(out) = owned(frame::decode(&pending)) {
            let used = match &out {
                Out::Close => {
                    outs.push(out);
                    return Ok((outs, End::Closed));
                }
                Out::Frame { used, .. }
                | Out::Version(_, used)
                | Out::Short(_, used)
                | Out::NotUtf8(used)
                | Out::BadPath(used) => *used,
            };
            prop_assert!(
                used > 2 && used <= pending.len(),
                "used {} of {} buffered bytes",
                used,
                pending.len()
            );
            pending.drain(..used);
            outs.push(out);
        }
    }
    Ok((outs, End::Pending(pending.len())))
}

fn chunks_at<'a>(bytes: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

proptest! {
    #![proptest_config(config())]

    /// Whole, byte by byte and in random splits, the stream decodes to
    /// exactly the frames and errors that were encoded.
    #[test]
    fn decoding_is_independent_of_how_bytes_arrive(
        items in prop::collection::vec(item(), 0..30),
        tail in tail(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
    ) {
        let (bytes, outs, end) = stream(&items, &tail);
        let want = (outs, end);
        prop_assert_eq!(&drive([bytes.as_slice()])?, &want, "whole buffer");
        prop_assert_eq!(&drive(bytes.chunks(1))?, &want, "one byte at a time");
        prop_assert_eq!(&drive(chunks_at(&bytes, &cuts))?, &want, "random splits");
    }

    /// Arbitrary bytes never panic the decoder, every step makes progress,
    /// and the chunking does not change the result.
    #[test]
    fn arbitrary_bytes_decode_the_same_in_any_split(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
    ) {
        let whole = drive([bytes.as_slice()])?;
        prop_assert_eq!(&drive(bytes.chunks(1))?, &whole, "one byte at a time");
        prop_assert_eq!(&drive(chunks_at(&bytes, &cuts))?, &whole, "random splits");
    }
}

//! Sans-I/O decoder of the binary socket protocol (YAWNDB v3, DESIGN §4):
//! `u16 BE length` + payload `u8 version | u8 special | u64 ts | u64 value |
//! path`. Bytes in, frames out; no sockets, no clock.

use crate::model;

/// Protocol version accepted.
pub const VERSION: u8 = 3;
/// Payload bytes before the path.
pub const HEADER_BYTES: usize = 18;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Non-zero on the wire: `value` is a special's 1-based index.
    pub special: bool,
    /// Seconds since the epoch.
    pub timestamp_secs: u64,
    /// Value, or special index.
    pub value: u64,
    /// Series path.
    pub path: &'a str,
}

/// A frame with a valid length but bad contents; the stream goes on after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Version byte other than 3.
    #[error("frame version {0}, expected {VERSION}")]
    Version(u8),
    /// Payload too short for the header plus a path.
    #[error("frame payload of {0} bytes, expected at least {min}", min = HEADER_BYTES + 1)]
    Short(usize),
    /// Path bytes not UTF-8.
    #[error("frame path is not valid UTF-8")]
    PathNotUtf8,
    /// Path with '/' or longer than 1024 bytes.
    #[error("frame path: {0}")]
    BadPath(String),
}

impl FrameError {
    /// Label value used in self-metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            FrameError::Version(_) => "bad_version",
            FrameError::Short(_) => "short_frame",
            FrameError::PathNotUtf8 | FrameError::BadPath(_) => "bad_path",
        }
    }
}

/// What the front of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Not a whole frame yet: read more.
    NeedMore,
    /// A zero length: the client asks to close.
    Close,
    /// A frame, and how many bytes it took.
    Frame(Frame<'a>, usize),
    /// A bad frame to skip, and how many bytes it took.
    Bad(FrameError, usize),
}

/// Decodes the frame at the front of `buf`.
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    let Some(len_bytes) = buf.get(..2) else {
        return Decoded::NeedMore;
    };
    let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
    if len == 0 {
        return Decoded::Close;
    }
    let Some(payload) = buf.get(2..2 + len) else {
        return Decoded::NeedMore;
    };
    let used = 2 + len;
    match parse(payload) {
        Ok(frame) => Decoded::Frame(frame, used),
        Err(e) => Decoded::Bad(e, used),
    }
}

fn parse(payload: &[u8]) -> Result<Frame<'_>, FrameError> {
    if payload.len() <= HEADER_BYTES {
        return Err(FrameError::Short(payload.len()));
    }
    if payload[0] != VERSION {
        return Err(FrameError::Version(payload[0]));
    }
    let word = |at: usize| u64::from_be_bytes(payload[at..at + 8].try_into().expect("8 bytes"));
    let path =
        std::str::from_utf8(&payload[HEADER_BYTES..]).map_err(|_| FrameError::PathNotUtf8)?;
    model::check_path(path).map_err(FrameError::BadPath)?;
    Ok(Frame {
        special: payload[1] != 0,
        timestamp_secs: word(2),
        value: word(10),
        path,
    })
}

/// Encodes a frame (for tests, benchmarks and Rust agents).
pub fn encode(out: &mut Vec<u8>, special: bool, timestamp_secs: u64, value: u64, path: &str) {
    let len = (HEADER_BYTES + path.len()) as u16;
    out.extend_from_slice(&len.to_be_bytes());
    out.push(VERSION);
    out.push(u8::from(special));
    out.extend_from_slice(&timestamp_secs.to_be_bytes());
    out.extend_from_slice(&value.to_be_bytes());
    out.extend_from_slice(path.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_test_vector() {
        let mut bytes = vec![
            0x00, 0x25, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x50, 0x72, 0xb9, 0x6d, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
        ];
        bytes.extend_from_slice(b"interface_in-ae0.69");
        assert_eq!(bytes.len(), 39);
        let want = Frame {
            special: false,
            timestamp_secs: 1349695853,
            value: 1024,
            path: "interface_in-ae0.69",
        };
        assert_eq!(decode(&bytes), Decoded::Frame(want, 39));
        let mut encoded = Vec::new();
        encode(&mut encoded, false, 1349695853, 1024, "interface_in-ae0.69");
        assert_eq!(encoded, bytes);
    }

    #[test]
    fn bad_frames_are_skipped_by_length() {
        let frame = |payload: &[u8]| {
            let mut v = (payload.len() as u16).to_be_bytes().to_vec();
            v.extend_from_slice(payload);
            v
        };
        let mut ok = vec![3, 0];
        ok.extend_from_slice(&[0; 16]);
        ok.extend_from_slice(b"a-b");
        let cases: Vec<(&str, Vec<u8>, Decoded)> = vec![
            ("empty buffer", vec![], Decoded::NeedMore),
            ("one length byte", vec![0], Decoded::NeedMore),
            ("zero length closes", vec![0, 0, 9], Decoded::Close),
            ("partial payload", vec![0, 5, 3, 0], Decoded::NeedMore),
            (
                "short payload",
                frame(&[3, 0, 0]),
                Decoded::Bad(FrameError::Short(3), 5),
            ),
            (
                "header without path",
                frame(&[3; 18]),
                Decoded::Bad(FrameError::Short(18), 20),
            ),
            (
                "version 2",
                frame(&[&[2u8][..], &ok[1..]].concat()),
                Decoded::Bad(FrameError::Version(2), ok.len() + 2),
            ),
            (
                "slash in path",
                frame(&[&ok[..18], b"a/b"].concat()),
                Decoded::Bad(
                    FrameError::BadPath("path contains '/', which is not allowed".into()),
                    23,
                ),
            ),
            (
                "not utf-8",
                frame(&[&ok[..18], &[0xff, 0xfe][..]].concat()),
                Decoded::Bad(FrameError::PathNotUtf8, 22),
            ),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(decode(&bytes), want, "case {name}");
        }
    }
}

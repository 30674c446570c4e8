//! Cell storage at the rule's width. Integer cells keep a 4-bit tag in their
//! top bits (0 number, 1..=14 special, 15 empty) as ecirca does; float cells
//! mark specials and empty with reserved NaN payloads that real values can
//! never carry (incoming NaNs are canonicalised).
//!
//! Cells are stored XOR the empty pattern, so an empty cell is all zero
//! bits and a new archive is one zeroed allocation (`calloc`). The
//! allocator skips clearing memory it takes fresh from the OS, which is
//! then mapped lazily and touched only where buckets are written; memory it
//! reuses (after a free) it clears, touching the whole archive.
//!
//! Cell arrays come from the system allocator whatever the process's
//! global allocator is: glibc's calloc has that lazy mapping and a 16-byte
//! overhead per array, where jemalloc (the daemon's global allocator)
//! rounds an archive up to its next size class (2880 bytes take 3072) and
//! clears memory it hands out zeroed.

use super::ValueSize;
use allocator_api2::alloc::System;
use allocator_api2::boxed::Box;

/// A fixed array of cells, owned by the system allocator.
type CellArray<T> = Box<[T], System>;

/// An unsigned integer cell word: all zero bits are a valid value.
trait Word: Copy {}
impl Word for u16 {}
impl Word for u32 {}
impl Word for u64 {}

/// `len` zero words in one zeroed allocation.
fn zeroed<T: Word>(len: usize) -> CellArray<T> {
    let words = Box::<[T], System>::new_zeroed_slice_in(len, System);
    // SAFETY: `Word` is implemented only for unsigned integers, for which
    // all zero bits are a valid, initialised value.
    unsafe { words.assume_init() }
}

/// A decoded cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cell {
    Empty,
    Special(u8),
    /// An integer value, an avg count, or the bits of an f64.
    Num(u64),
}

const EMPTY_TAG: u64 = 15;
/// Float cells whose bits match this (low 4 bits masked) are tags.
const FLOAT_TAG_BASE: u64 = 0x7ff4_2a00_0000_0000;
const CANONICAL_NAN: u64 = 0x7ff8_0000_0000_0000;
/// A float cell's empty pattern (stored as zero).
const FLOAT_EMPTY: u64 = FLOAT_TAG_BASE | EMPTY_TAG;

#[derive(Debug, Clone)]
pub(crate) enum Cells {
    Small(CellArray<u16>),
    Medium(CellArray<u32>),
    Large(CellArray<u64>),
    Float(CellArray<u64>),
}

impl Cells {
    pub(crate) fn new(kind: ValueSize, len: usize) -> Cells {
        match kind {
            ValueSize::Small => Cells::Small(zeroed(len)),
            ValueSize::Medium => Cells::Medium(zeroed(len)),
            ValueSize::Large => Cells::Large(zeroed(len)),
            ValueSize::Float => Cells::Float(zeroed(len)),
        }
    }

    pub(crate) fn get(&self, pos: usize) -> Cell {
        match self {
            Cells::Small(c) => decode_int(u64::from(c[pos] ^ u16::MAX), 12),
            Cells::Medium(c) => decode_int(u64::from(c[pos] ^ u32::MAX), 28),
            Cells::Large(c) => decode_int(c[pos] ^ u64::MAX, 60),
            Cells::Float(c) => {
                let raw = c[pos] ^ FLOAT_EMPTY;
                if raw & !0xf == FLOAT_TAG_BASE {
                    tag_cell(raw & 0xf)
                } else {
                    Cell::Num(raw)
                }
            }
        }
    }

    /// Reads the cell at `pos` and drops it: issued for several archives
    /// back to back, their cache misses overlap instead of queueing one
    /// behind the other.
    #[inline]
    pub(crate) fn touch(&self, pos: usize) {
        let word = match self {
            Cells::Small(c) => u64::from(c[pos]),
            Cells::Medium(c) => u64::from(c[pos]),
            Cells::Large(c) | Cells::Float(c) => c[pos],
        };
        std::hint::black_box(word);
    }

    pub(crate) fn set(&mut self, pos: usize, cell: Cell) {
        match self {
            Cells::Small(c) => c[pos] = encode_int(cell, 12) as u16 ^ u16::MAX,
            Cells::Medium(c) => c[pos] = encode_int(cell, 28) as u32 ^ u32::MAX,
            Cells::Large(c) => c[pos] = encode_int(cell, 60) ^ u64::MAX,
            Cells::Float(c) => {
                c[pos] = FLOAT_EMPTY
                    ^ match cell {
                        Cell::Empty => FLOAT_EMPTY,
                        Cell::Special(t) => FLOAT_TAG_BASE | u64::from(t),
                        Cell::Num(bits) => bits,
                    }
            }
        }
    }

    /// Calls `f(pos, n)` for every cell in `positions` holding a number,
    /// in order: [`Cells::get`] over a run of cells with the width matched
    /// once, for bulk reads.
    pub(crate) fn for_each_num(
        &self,
        positions: std::ops::Range<usize>,
        mut f: impl FnMut(usize, u64),
    ) {
        let start = positions.start;
        match self {
            Cells::Small(c) => each_num(&c[positions], start, |v| u64::from(v ^ u16::MAX), 12, f),
            Cells::Medium(c) => each_num(&c[positions], start, |v| u64::from(v ^ u32::MAX), 28, f),
            Cells::Large(c) => each_num(&c[positions], start, |v| v ^ u64::MAX, 60, f),
            Cells::Float(c) => {
                for (i, &v) in c[positions].iter().enumerate() {
                    let raw = v ^ FLOAT_EMPTY;
                    if raw & !0xf != FLOAT_TAG_BASE {
                        f(start + i, raw);
                    }
                }
            }
        }
    }

    /// Bytes per cell in the encoded page format.
    pub(crate) fn width(&self) -> usize {
        match self {
            Cells::Small(_) => 2,
            Cells::Medium(_) => 4,
            Cells::Large(_) | Cells::Float(_) => 8,
        }
    }

    /// Overwrites cells from `start` with raw little-endian bytes (codec v1
    /// pages).
    pub(crate) fn load_raw(&mut self, start: usize, bytes: &[u8]) {
        match self {
            Cells::Small(c) => bytes
                .chunks_exact(2)
                .zip(&mut c[start..])
                .for_each(|(b, v)| *v = u16::from_le_bytes([b[0], b[1]])),
            Cells::Medium(c) => bytes
                .chunks_exact(4)
                .zip(&mut c[start..])
                .for_each(|(b, v)| *v = u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Cells::Large(c) | Cells::Float(c) => bytes
                .chunks_exact(8)
                .zip(&mut c[start..])
                .for_each(|(b, v)| *v = u64::from_le_bytes(b.try_into().expect("8 bytes"))),
        }
    }

    /// Cells `range` as small numbers for the varint page codec (v2): an
    /// empty cell is 0. Integer cells are stored as `!encoded` (see the
    /// module doc), so their negation is `encoded + 1`: small counts stay
    /// small. A float is its bits byte-swapped plus one, so floats with
    /// short mantissas (integers, halves) are small too.
    pub(crate) fn page_values(&self, range: std::ops::Range<usize>, out: &mut Vec<u64>) {
        match self {
            Cells::Small(c) => out.extend(c[range].iter().map(|v| u64::from(v.wrapping_neg()))),
            Cells::Medium(c) => out.extend(c[range].iter().map(|v| u64::from(v.wrapping_neg()))),
            Cells::Large(c) => out.extend(c[range].iter().map(|v| v.wrapping_neg())),
            Cells::Float(c) => out.extend(c[range].iter().map(|&v| match v {
                0 => 0,
                v => (v ^ FLOAT_EMPTY).swap_bytes().wrapping_add(1),
            })),
        }
    }

    /// Overwrites cells from `start` with [`Cells::page_values`]; false
    /// (nothing written) when a value does not fit the cell width.
    pub(crate) fn load_page_values(&mut self, start: usize, values: &[u64]) -> bool {
        fn load<T: TryFrom<u64>>(cells: &mut [T], values: &[u64], neg: fn(T) -> T) -> bool {
            if values.iter().any(|v| T::try_from(*v).is_err()) {
                return false;
            }
            for (cell, v) in cells.iter_mut().zip(values) {
                if let Ok(v) = T::try_from(*v) {
                    *cell = neg(v);
                }
            }
            true
        }
        let end = start + values.len();
        match self {
            Cells::Small(c) => load(&mut c[start..end], values, u16::wrapping_neg),
            Cells::Medium(c) => load(&mut c[start..end], values, u32::wrapping_neg),
            Cells::Large(c) => load(&mut c[start..end], values, u64::wrapping_neg),
            Cells::Float(c) => {
                c[start..end].iter_mut().zip(values).for_each(|(c, &v)| {
                    *c = match v {
                        0 => 0,
                        v => v.wrapping_sub(1).swap_bytes() ^ FLOAT_EMPTY,
                    }
                });
                true
            }
        }
    }
}

/// The integer cells of `cells` (first at `start`) that hold a number.
fn each_num<T: Copy>(
    cells: &[T],
    start: usize,
    raw: impl Fn(T) -> u64,
    bits: u32,
    mut f: impl FnMut(usize, u64),
) {
    for (i, &v) in cells.iter().enumerate() {
        let r = raw(v);
        if r >> bits == 0 {
            f(start + i, r);
        }
    }
}

fn tag_cell(tag: u64) -> Cell {
    match tag {
        0 | EMPTY_TAG => Cell::Empty,
        t => Cell::Special(t as u8),
    }
}

fn decode_int(raw: u64, bits: u32) -> Cell {
    match raw >> bits {
        0 => Cell::Num(raw),
        tag => tag_cell(tag),
    }
}

fn encode_int(cell: Cell, bits: u32) -> u64 {
    match cell {
        Cell::Empty => (EMPTY_TAG << bits) | ((1 << bits) - 1),
        Cell::Special(t) => u64::from(t) << bits,
        Cell::Num(v) => v,
    }
}

/// Bits of a float for a cell: NaNs are canonicalised so they never look
/// like a tag.
pub(crate) fn float_to_bits(v: f64) -> u64 {
    if v.is_nan() {
        CANONICAL_NAN
    } else {
        v.to_bits()
    }
}

pub(crate) fn bits_to_float(bits: u64) -> f64 {
    f64::from_bits(bits)
}

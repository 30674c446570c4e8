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
use std::ops::Range;

/// A fixed array of cells, owned by the system allocator.
type CellArray<T> = Box<[T], System>;

/// An unsigned integer cell word: all zero bits are a valid value.
trait Word: Copy {
    /// The word from a stored value that fits its width.
    fn from_stored(v: u64) -> Self;
    fn stored(self) -> u64;
}

macro_rules! word {
    ($t:ty) => {
        impl Word for $t {
            #[inline]
            fn from_stored(v: u64) -> Self {
                v as $t
            }
            #[inline]
            fn stored(self) -> u64 {
                u64::from(self)
            }
        }
    };
}
word!(u16);
word!(u32);
word!(u64);

/// `len` zero words in one zeroed allocation.
fn zeroed<T: Word>(len: usize) -> CellArray<T> {
    let words = Box::<[T], System>::new_zeroed_slice_in(len, System);
    // SAFETY: `Word` is implemented only for unsigned integers, for which
    // all zero bits are a valid, initialised value.
    unsafe { words.assume_init() }
}

/// `old` copied into a zeroed array of `len` words, from word `front`.
fn grown<T: Word>(old: &CellArray<T>, front: usize, len: usize) -> CellArray<T> {
    let mut words = zeroed(len);
    words[front..front + old.len()].copy_from_slice(old);
    words
}

/// Words a ring holds once it holds any: growth then doubles.
const FIRST_WORDS: usize = 16;

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
enum Words {
    Small(CellArray<u16>),
    Medium(CellArray<u32>),
    Large(CellArray<u64>),
    Float(CellArray<u64>),
}

/// `$body` with `$c` bound to the word array, whatever its width.
macro_rules! each_width {
    ($words:expr, $c:ident => $body:expr) => {
        match $words {
            Words::Small($c) => $body,
            Words::Medium($c) => $body,
            Words::Large($c) => $body,
            Words::Float($c) => $body,
        }
    };
}

/// The cells of a ring of `len` positions. Words are allocated for the
/// span written so far, not for the whole ring: word 0 holds ring
/// position `origin` (at first the position written first) and word `i`
/// the position `i` after it, wrapping at `len`. A position past the words
/// is empty. A write past them grows the words (doubling, at most to
/// `len`) at whichever end is nearer, so an archive costs what it holds
/// until its window is full, and then `len` words.
#[derive(Debug, Clone)]
pub(crate) struct Cells {
    /// Ring position of word 0.
    origin: u32,
    /// Ring positions.
    len: u32,
    words: Words,
}

/// Positions `positions` (ascending, no wrap) held from word `first` on.
struct Run {
    positions: Range<usize>,
    first: usize,
}

impl Cells {
    /// A ring of `len` empty cells; nothing is allocated until a write.
    pub(crate) fn new(kind: ValueSize, len: usize) -> Cells {
        let words = match kind {
            ValueSize::Small => Words::Small(zeroed(0)),
            ValueSize::Medium => Words::Medium(zeroed(0)),
            ValueSize::Large => Words::Large(zeroed(0)),
            ValueSize::Float => Words::Float(zeroed(0)),
        };
        Cells {
            origin: 0,
            len: u32::try_from(len).expect("ring length fits u32"),
            words,
        }
    }

    /// Words allocated.
    fn capacity(&self) -> usize {
        each_width!(&self.words, c => c.len())
    }

    /// Bytes held for cells.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.capacity() * self.width()
    }

    /// Word index of ring position `pos` (held only when below the
    /// capacity); a compare instead of a division.
    #[inline]
    fn index(&self, pos: usize) -> usize {
        let origin = self.origin as usize;
        if pos >= origin {
            pos - origin
        } else {
            pos + self.len as usize - origin
        }
    }

    /// The stored word of position `pos` (0 when empty).
    #[inline]
    fn stored(&self, pos: usize) -> u64 {
        let i = self.index(pos);
        each_width!(&self.words, c => c.get(i).map_or(0, |w| w.stored()))
    }

    /// Word index of `pos`, growing the words to hold it: at their end,
    /// or at their start (moving the origin back) when `pos` is nearer
    /// before the origin than after the last word, as an older sample is.
    fn reserve(&mut self, pos: usize) -> usize {
        let cap = self.capacity();
        if cap == 0 {
            self.origin = pos as u32;
        }
        let i = self.index(pos);
        if i < cap {
            return i;
        }
        let len = self.len as usize;
        let after = i + 1 - cap;
        let before = len - i;
        let more = |need: usize| (cap * 2).max(cap + need).max(FIRST_WORDS).min(len) - cap;
        if cap == 0 || after <= before {
            self.grow(0, more(after));
        } else {
            let front = more(before);
            self.origin = ((self.origin as usize + len - front) % len) as u32;
            self.grow(front, 0);
        }
        self.index(pos)
    }

    /// Adds `front` empty words before the words held and `back` after.
    fn grow(&mut self, front: usize, back: usize) {
        let len = self.capacity() + front + back;
        self.words = match &self.words {
            Words::Small(c) => Words::Small(grown(c, front, len)),
            Words::Medium(c) => Words::Medium(grown(c, front, len)),
            Words::Large(c) => Words::Large(grown(c, front, len)),
            Words::Float(c) => Words::Float(grown(c, front, len)),
        };
    }

    /// Drops every cell: the ring is empty and holds no words.
    pub(crate) fn clear(&mut self) {
        *self = Cells::new(self.kind(), self.len as usize);
    }

    fn kind(&self) -> ValueSize {
        match self.words {
            Words::Small(_) => ValueSize::Small,
            Words::Medium(_) => ValueSize::Medium,
            Words::Large(_) => ValueSize::Large,
            Words::Float(_) => ValueSize::Float,
        }
    }

    /// `positions` (ascending, within the ring) as at most two runs of
    /// consecutive words, in position order: those before the origin,
    /// then those from it.
    fn runs(&self, positions: Range<usize>) -> [Run; 2] {
        let origin = self.origin as usize;
        let split = positions.end.min(origin).max(positions.start);
        [
            Run {
                first: self.index(positions.start),
                positions: positions.start..split,
            },
            Run {
                first: split.saturating_sub(origin),
                positions: split..positions.end,
            },
        ]
    }

    pub(crate) fn get(&self, pos: usize) -> Cell {
        self.decode(self.stored(pos))
    }

    fn decode(&self, stored: u64) -> Cell {
        match self.words {
            Words::Small(_) => decode_int(stored ^ u64::from(u16::MAX), 12),
            Words::Medium(_) => decode_int(stored ^ u64::from(u32::MAX), 28),
            Words::Large(_) => decode_int(stored ^ u64::MAX, 60),
            Words::Float(_) => {
                let raw = stored ^ FLOAT_EMPTY;
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
        std::hint::black_box(self.stored(pos));
    }

    pub(crate) fn set(&mut self, pos: usize, cell: Cell) {
        let stored = match self.words {
            Words::Small(_) => encode_int(cell, 12) ^ u64::from(u16::MAX),
            Words::Medium(_) => encode_int(cell, 28) ^ u64::from(u32::MAX),
            Words::Large(_) => encode_int(cell, 60) ^ u64::MAX,
            Words::Float(_) => {
                FLOAT_EMPTY
                    ^ match cell {
                        Cell::Empty => FLOAT_EMPTY,
                        Cell::Special(t) => FLOAT_TAG_BASE | u64::from(t),
                        Cell::Num(bits) => bits,
                    }
            }
        };
        let i = if stored == 0 {
            match self.index(pos) {
                i if i < self.capacity() => i,
                // Empty past the words already.
                _ => return,
            }
        } else {
            self.reserve(pos)
        };
        each_width!(&mut self.words, c => c[i] = Word::from_stored(stored));
    }

    /// Calls `f(pos, n)` for every cell in `positions` holding a number,
    /// in order: [`Cells::get`] over a run of cells with the width matched
    /// once, for bulk reads.
    pub(crate) fn for_each_num(&self, positions: Range<usize>, mut f: impl FnMut(usize, u64)) {
        for run in self.runs(positions) {
            let held = run.first..(run.first + run.positions.len()).min(self.capacity());
            if held.is_empty() {
                continue;
            }
            let start = run.positions.start;
            match &self.words {
                Words::Small(c) => {
                    each_num(&c[held], start, |v| u64::from(v ^ u16::MAX), 12, &mut f)
                }
                Words::Medium(c) => {
                    each_num(&c[held], start, |v| u64::from(v ^ u32::MAX), 28, &mut f)
                }
                Words::Large(c) => each_num(&c[held], start, |v| v ^ u64::MAX, 60, &mut f),
                Words::Float(c) => {
                    for (i, &v) in c[held].iter().enumerate() {
                        let raw = v ^ FLOAT_EMPTY;
                        if raw & !0xf != FLOAT_TAG_BASE {
                            f(start + i, raw);
                        }
                    }
                }
            }
        }
    }

    /// Calls `f(pos, cell)` for every non-empty cell held, in word order
    /// (from the origin, wrapping): only the words allocated are read, so
    /// this costs what the archive holds, not its ring.
    pub(crate) fn for_each_held(&self, mut f: impl FnMut(usize, Cell)) {
        let (origin, len) = (self.origin as usize, self.len as usize);
        each_width!(&self.words, c => {
            for (i, w) in c.iter().enumerate() {
                let stored = w.stored();
                if stored != 0 {
                    let pos = if origin + i >= len { origin + i - len } else { origin + i };
                    f(pos, self.decode(stored));
                }
            }
        });
    }

    /// Bytes per cell in the encoded page format.
    pub(crate) fn width(&self) -> usize {
        match self.words {
            Words::Small(_) => 2,
            Words::Medium(_) => 4,
            Words::Large(_) | Words::Float(_) => 8,
        }
    }

    /// Calls `f` with the stored word (0 when empty) of every position in
    /// `positions`, in order.
    fn each_stored(&self, positions: Range<usize>, mut f: impl FnMut(u64)) {
        for run in self.runs(positions) {
            let n = run.positions.len();
            let held = run.first.min(self.capacity())..(run.first + n).min(self.capacity());
            let held_len = held.len();
            each_width!(&self.words, c => c[held].iter().for_each(|w| f(w.stored())));
            (held_len..n).for_each(|_| f(0));
        }
    }

    /// Overwrites the cells from `start` with `stored(k)` for the `n`
    /// positions `start + k`; words are grown to hold the non-empty ones.
    fn load_stored(&mut self, start: usize, n: usize, stored: impl Fn(usize) -> u64) {
        // Empty cells past the words need none; the rest are overwritten.
        for k in 0..n {
            if stored(k) != 0 {
                self.reserve(start + k);
            }
        }
        let cap = self.capacity();
        for run in self.runs(start..start + n) {
            let offset = run.positions.start - start;
            let held = run.first.min(cap)..(run.first + run.positions.len()).min(cap);
            each_width!(&mut self.words, c => c[held]
                .iter_mut()
                .enumerate()
                .for_each(|(k, w)| *w = Word::from_stored(stored(offset + k))));
        }
    }

    /// Overwrites cells from `start` with raw little-endian bytes (codec v1
    /// pages).
    pub(crate) fn load_raw(&mut self, start: usize, bytes: &[u8]) {
        let width = self.width();
        let n = bytes.len() / width;
        self.load_stored(start, n, |k| {
            let mut word = [0u8; 8];
            word[..width].copy_from_slice(&bytes[k * width..(k + 1) * width]);
            u64::from_le_bytes(word)
        });
    }

    /// Cells `range` as raw little-endian bytes (codec v1 pages, for the
    /// tests that check those are still read).
    #[cfg(test)]
    pub(crate) fn raw_bytes(&self, range: Range<usize>) -> Vec<u8> {
        let width = self.width();
        let mut out = Vec::with_capacity(range.len() * width);
        self.each_stored(range, |w| out.extend_from_slice(&w.to_le_bytes()[..width]));
        out
    }

    /// Cells `range` as small numbers for the varint page codec (v2): an
    /// empty cell is 0. Integer cells are stored as `!encoded` (see the
    /// module doc), so their negation is `encoded + 1`: small counts stay
    /// small. A float is its bits byte-swapped plus one, so floats with
    /// short mantissas (integers, halves) are small too.
    pub(crate) fn page_values(&self, range: Range<usize>, out: &mut Vec<u64>) {
        let mask = self.mask();
        let float = matches!(self.words, Words::Float(_));
        self.each_stored(range, |w| {
            out.push(match w {
                0 => 0,
                w if float => (w ^ FLOAT_EMPTY).swap_bytes().wrapping_add(1),
                w => w.wrapping_neg() & mask,
            })
        });
    }

    /// All ones at the cell width.
    fn mask(&self) -> u64 {
        match self.words {
            Words::Small(_) => u64::from(u16::MAX),
            Words::Medium(_) => u64::from(u32::MAX),
            Words::Large(_) | Words::Float(_) => u64::MAX,
        }
    }

    /// Overwrites cells from `start` with [`Cells::page_values`]; false
    /// (nothing written) when a value does not fit the cell width.
    pub(crate) fn load_page_values(&mut self, start: usize, values: &[u64]) -> bool {
        let mask = self.mask();
        if matches!(self.words, Words::Float(_)) {
            self.load_stored(start, values.len(), |k| match values[k] {
                0 => 0,
                v => v.wrapping_sub(1).swap_bytes() ^ FLOAT_EMPTY,
            });
            return true;
        }
        if values.iter().any(|v| v & !mask != 0) {
            return false;
        }
        self.load_stored(start, values.len(), |k| values[k].wrapping_neg() & mask);
        true
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

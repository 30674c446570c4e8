//! A naive model of one archive, written from DESIGN.md §2–3 and not from
//! src/rrd: it keeps every accepted (bucket, part) event in arrival order
//! plus the newest bucket seen, and consolidates on read by replaying the
//! events of a bucket. There is no ring, no head, no cell encoding and no
//! clearing on slide: a bucket outside `[newest − limit + 1, newest]` simply
//! reads as empty, and since the window only moves forward a bucket that
//! left it can never take an event again.
//!
//! The result of an update is decided at arrival time by replaying the
//! bucket's events so far and trying the new part on top; only accepted
//! parts are recorded, so a replay always meets the same states again.
//!
//! Prometheus' stale marker is filtered by the store before an archive sees
//! it, so the model treats it as an ordinary NaN.

use ringdb::model::Value;
use ringdb::rrd::{Consolidation, Reject, Shape, Special, Split, Strength, ValueSize};

/// What a bucket should read as.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// No data, or outside the window.
    Empty,
    /// A special, by name.
    Special(String),
    /// An integer cell's value.
    Uint(u64),
    /// A float cell's value, or an avg archive's mean.
    Float(f64),
}

/// A checked part of a sample aimed at one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Part {
    Int(u64),
    Float(f64),
    /// 1-based index into the specials.
    Special(usize),
}

/// What a bucket holds after replaying its events.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Empty,
    Special(usize),
    Int(u64),
    Float(f64),
    Avg { count: u64, mean: f64 },
}

/// One archive, modelled naively.
#[derive(Debug, Clone)]
pub struct Model {
    /// How samples in one bucket combine.
    pub consolidation: Consolidation,
    /// Bucket width in milliseconds.
    pub timeframe_ms: u64,
    /// Buckets in the window.
    pub limit: u64,
    /// Where unaligned samples go.
    pub split: Split,
    /// Cell type.
    pub value_size: ValueSize,
    /// Specials by 1-based index: (name, strong).
    pub specials: Vec<(String, bool)>,
    /// Every accepted part, in arrival order.
    events: Vec<(u64, Part)>,
    /// Newest bucket seen.
    newest: Option<u64>,
}

impl Model {
    /// An empty model of an archive with this shape.
    pub fn new(shape: &Shape) -> Model {
        Model {
            consolidation: shape.consolidation,
            timeframe_ms: shape.timeframe_secs * 1000,
            limit: u64::from(shape.limit),
            split: shape.split,
            value_size: shape.value_size,
            specials: shape
                .specials
                .iter()
                .map(|s| (s.name.clone(), s.strength == Strength::Strong))
                .collect(),
            events: Vec::new(),
            newest: None,
        }
    }

    /// Newest bucket seen, if any.
    pub fn newest_bucket(&self) -> Option<u64> {
        self.newest
    }

    /// Value bits of a cell: 12/28/60; float archives count avg samples
    /// in 60 bits.
    fn bits(&self) -> u32 {
        match self.value_size {
            ValueSize::Small => 12,
            ValueSize::Medium => 28,
            ValueSize::Large | ValueSize::Float => 60,
        }
    }

    /// Largest integer a cell holds: 2^bits − 1.
    pub fn max_value(&self) -> u64 {
        (1u64 << self.bits()) - 1
    }

    /// Largest avg count: the cell maximum, 2^60 − 1 for float archives.
    fn max_count(&self) -> u64 {
        self.max_value()
    }

    fn is_integer(&self) -> bool {
        self.value_size != ValueSize::Float
    }

    /// Adds a sample at `timestamp_ms`.
    ///
    /// # Errors
    /// The first [`Reject`]: the value is checked first, then the parts
    /// are applied lo then hi, and a refused part stops the sample (DESIGN:
    /// an overflow "rejects the sample", a sample older than the window "is
    /// dropped"); a first half already stored stays.
    pub fn update(&mut self, timestamp_ms: u64, value: Value) -> Result<(), Reject> {
        let part = self.check(value)?;
        let lo = timestamp_ms / self.timeframe_ms;
        let offset = timestamp_ms % self.timeframe_ms;
        if offset == 0 || matches!(part, Part::Special(_)) {
            return self.apply(lo, part);
        }
        let (first, second) = match self.split {
            Split::Backward => (Some(part), None),
            Split::Forward => (None, Some(part)),
            Split::Equal => match part {
                Part::Int(v) => (Some(Part::Int(v - v / 2)), Some(Part::Int(v / 2))),
                Part::Float(v) => (Some(Part::Float(v - v / 2.0)), Some(Part::Float(v / 2.0))),
                Part::Special(_) => unreachable!("specials are never split"),
            },
            Split::Proportional => {
                let remaining = self.timeframe_ms - offset;
                match part {
                    Part::Int(v) => {
                        let share =
                            u128::from(v) * u128::from(remaining) / u128::from(self.timeframe_ms);
                        let share = u64::try_from(share).expect("share ≤ v");
                        (Some(Part::Int(share)), Some(Part::Int(v - share)))
                    }
                    Part::Float(v) => {
                        let share = v * remaining as f64 / self.timeframe_ms as f64;
                        (Some(Part::Float(share)), Some(Part::Float(v - share)))
                    }
                    Part::Special(_) => unreachable!("specials are never split"),
                }
            }
        };
        if let Some(first) = first {
            self.apply(lo, first)?;
        }
        if let Some(second) = second {
            self.apply(lo + 1, second)?;
        }
        Ok(())
    }

    /// Value checks, before anything changes (DESIGN §2 last bullet).
    fn check(&self, value: Value) -> Result<Part, Reject> {
        match value {
            Value::Special(i) => {
                if i >= 1 && i <= self.specials.len() as u64 {
                    Ok(Part::Special(i as usize))
                } else {
                    Err(Reject::UnknownSpecial)
                }
            }
            Value::Uint(v) if self.is_integer() => {
                if v <= self.max_value() {
                    Ok(Part::Int(v))
                } else {
                    Err(Reject::OutOfRange)
                }
            }
            Value::Float(v) if self.is_integer() => {
                // 2^bits is exact in an f64 (2^bits − 1 is not for 60 bits),
                // so `v < limit` is an exact range check.
                let limit = (1u64 << self.bits()) as f64;
                if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < limit {
                    Ok(Part::Int(v as u64))
                } else {
                    Err(Reject::OutOfRange)
                }
            }
            Value::Uint(v) => Ok(Part::Float(v as f64)),
            Value::Float(v) => Ok(Part::Float(v)),
        }
    }

    /// Applies one part: slide first (a part refused for overflow has
    /// still moved the window), then the age check, then consolidation.
    fn apply(&mut self, bucket: u64, part: Part) -> Result<(), Reject> {
        match self.newest {
            Some(newest) if bucket <= newest => {
                if bucket + (self.limit - 1) < newest {
                    return Err(Reject::TooOld);
                }
            }
            _ => self.newest = Some(bucket),
        }
        let state = self.state(bucket);
        self.step(state, part)?;
        self.events.push((bucket, part));
        Ok(())
    }

    /// Whether `bucket` is inside the current window.
    fn in_window(&self, bucket: u64) -> bool {
        match self.newest {
            Some(newest) => bucket <= newest && bucket + (self.limit - 1) >= newest,
            None => false,
        }
    }

    /// Replays the accepted events of `bucket` in arrival order.
    fn state(&self, bucket: u64) -> State {
        if !self.in_window(bucket) {
            return State::Empty;
        }
        self.events
            .iter()
            .filter(|(b, _)| *b == bucket)
            .fold(State::Empty, |state, (_, part)| {
                self.step(state, *part)
                    .expect("an accepted part is accepted again on replay")
            })
    }

    fn strong(&self, index: usize) -> bool {
        self.specials[index - 1].1
    }

    /// A bucket holding only this number.
    fn fresh(&self, part: Part) -> State {
        let v = match part {
            Part::Int(v) if self.consolidation != Consolidation::Avg => return State::Int(v),
            Part::Float(v) if self.consolidation != Consolidation::Avg => return State::Float(v),
            Part::Int(v) => v as f64,
            Part::Float(v) => v,
            Part::Special(_) => unreachable!("numbers only"),
        };
        State::Avg { count: 1, mean: v }
    }

    /// One consolidation step (DESIGN §2, consolidation and specials).
    fn step(&self, state: State, part: Part) -> Result<State, Reject> {
        if let Part::Special(index) = part {
            return Ok(match state {
                State::Empty => State::Special(index),
                _ if self.strong(index) => State::Special(index),
                other => other,
            });
        }
        match state {
            State::Special(index) if self.strong(index) => Ok(state),
            State::Empty | State::Special(_) => Ok(self.fresh(part)),
            State::Avg { count, mean } => {
                let count = count + 1;
                if count > self.max_count() {
                    return Err(Reject::Overflow);
                }
                let v = match part {
                    Part::Int(v) => v as f64,
                    Part::Float(v) => v,
                    Part::Special(_) => unreachable!("handled above"),
                };
                Ok(State::Avg {
                    count,
                    mean: mean + (v - mean) / count as f64,
                })
            }
            State::Int(a) => {
                let Part::Int(b) = part else {
                    unreachable!("integer cells take integer parts")
                };
                Ok(State::Int(match self.consolidation {
                    Consolidation::Last => b,
                    Consolidation::Min => a.min(b),
                    Consolidation::Max => a.max(b),
                    Consolidation::Sum => {
                        let sum = u128::from(a) + u128::from(b);
                        if sum > u128::from(self.max_value()) {
                            return Err(Reject::Overflow);
                        }
                        sum as u64
                    }
                    Consolidation::Avg => unreachable!("avg buckets are State::Avg"),
                }))
            }
            State::Float(a) => {
                let Part::Float(b) = part else {
                    unreachable!("float cells take float parts")
                };
                // min/max prefer a number over NaN, as Prometheus'
                // min_over_time/max_over_time do.
                Ok(State::Float(match self.consolidation {
                    Consolidation::Last => b,
                    Consolidation::Min => {
                        if b < a || a.is_nan() {
                            b
                        } else {
                            a
                        }
                    }
                    Consolidation::Max => {
                        if b > a || a.is_nan() {
                            b
                        } else {
                            a
                        }
                    }
                    Consolidation::Sum => a + b,
                    Consolidation::Avg => unreachable!("avg buckets are State::Avg"),
                }))
            }
        }
    }

    /// What bucket number `bucket` reads as.
    pub fn read(&self, bucket: u64) -> Expected {
        match self.state(bucket) {
            State::Empty => Expected::Empty,
            State::Special(index) => Expected::Special(self.specials[index - 1].0.clone()),
            State::Int(v) => Expected::Uint(v),
            State::Float(v) => Expected::Float(v),
            State::Avg { mean, .. } => Expected::Float(mean),
        }
    }

    /// Buckets `from_bucket..=to_bucket`, ascending.
    pub fn slice(&self, from_bucket: u64, to_bucket: u64) -> Vec<(u64, Expected)> {
        (from_bucket..=to_bucket)
            .map(|b| (b, self.read(b)))
            .collect()
    }
}

/// The shape the model tests use: two specials, `timeout` (weak) and
/// `error` (strong).
pub fn shape_with_specials(
    consolidation: Consolidation,
    split: Split,
    value_size: ValueSize,
    timeframe_secs: u64,
    limit: u32,
) -> Shape {
    Shape {
        consolidation,
        timeframe_secs,
        limit,
        split,
        value_size,
        specials: vec![
            Special {
                name: "timeout".into(),
                strength: Strength::Weak,
            },
            Special {
                name: "error".into(),
                strength: Strength::Strong,
            },
        ],
    }
}

//! Ways samples come in: the binary socket protocol ([`frame`] decoder,
//! [`socket`] listener). Each turns wire input into store writes; none keeps
//! an unbounded queue.

pub mod frame;
pub mod socket;

//! ringdb: a round-robin, in-memory metrics database with a YAWNDB heart and
//! a Prometheus face.
//!
//! ```text
//!            app (composition root)
//!   ingest ─────► store ◄───── query
//!     │            │  ▲
//!     │          rrd rules      snapshot (sled) ──► store
//!     └─ net ─ tls                                   
//! model: plain values used by all
//! ```
//!
//! Arrows point inward: `model`, `rrd`, `rules` and `store` are synchronous
//! and import nothing from tokio, hyper, rustls or sled.

pub mod config;
pub mod ingest;
pub mod model;
pub mod rrd;
pub mod rules;
pub mod store;

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

pub mod access;
pub mod app;
pub mod certs;
pub mod config;
pub mod cpu;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod ingest;
pub mod model;
pub mod net;
pub mod query;
pub mod rrd;
pub mod rules;
pub mod shutdown;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod tls;

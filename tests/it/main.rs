//! One integration crate: real daemons on 127.0.0.1:0, real certificates,
//! real protocols.

#[path = "../common/mod.rs"]
mod common;

mod archive_model;
mod bounds_api;
mod bounds_net;
mod cli;
mod clients;
mod frame_props;
mod fuzz_replay;
mod mtls;
mod prometheus;
mod promql;
mod promql_corpus;
mod promql_diff;
mod query_limits;
mod query_speed;
mod query_split;
mod read_locks;
mod reload;
mod remote_write;
mod rest;
mod scrape;
mod snapshot;
mod socket;
mod vmagent;

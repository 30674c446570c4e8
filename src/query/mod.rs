//! Reading archives back: the HTTP APIs ([`api`]). Reads go through the
//! store's read API only.

pub mod api;
pub mod engine;
pub mod source;

//! Ways samples come in: the binary socket protocol ([`frame`] decoder,
//! [`socket`] listener), Prometheus remote_write ([`remote_write`]) and
//! scraping ([`scrape`]). Each turns wire input into store writes; none keeps
//! an unbounded queue.

pub mod frame;
pub mod remote_write;
pub mod scrape;
pub mod socket;

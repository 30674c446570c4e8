//! Configuration: the YAML file (the only serde_yaml user) read in two
//! stages, raw serde structs ([`raw`]) then validated [`Settings`]
//! ([`validate`]), reporting every problem at once with its location.
//! It never reads the environment or picks file names itself.

mod raw;
mod validate;

use crate::rules::Rule;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// rules.example.yaml, the embedded default configuration.
pub const DEFAULT_CONFIG: &str = include_str!("../../rules.example.yaml");

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Folder of the sled store and the generated dev certificates.
    pub data_dir: PathBuf,
    /// Listener addresses.
    pub listen: Listen,
    /// Certificate files; `None` means dev certificates under `data_dir/tls/`.
    pub tls: Option<TlsFiles>,
    /// How often dirty archives are saved.
    pub snapshot_interval: Duration,
    /// Input and resource caps.
    pub limits: Limits,
    /// Per-certificate permissions; `None` lets every CA-signed client do
    /// everything.
    pub clients: Option<Vec<ClientSettings>>,
    /// Scrape jobs in file order (empty: no scraping).
    pub scrape: Vec<ScrapeJob>,
    /// Rules in file order.
    pub rules: Vec<Rule>,
}

/// Listener addresses.
#[derive(Debug, Clone, Copy)]
pub struct Listen {
    /// Binary protocol v3.
    pub socket: SocketAddr,
    /// Prometheus API, remote_write, YAWNDB user routes, /metrics.
    pub http: SocketAddr,
    /// YAWNDB admin routes.
    pub admin: SocketAddr,
}

/// PEM files of the server's TLS identity.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// CA that client certificates must chain to.
    pub client_ca: PathBuf,
}

/// Caps on input and resources.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How far ahead of the wall clock a sample may be.
    pub max_future: Duration,
    /// Most series held.
    pub max_series: u64,
    /// Largest remote_write body, compressed or not.
    pub max_body_bytes: u64,
    /// Longest a query may run.
    pub query_timeout: Duration,
    /// Most samples a query may load.
    pub max_query_samples: u64,
    /// remote_write requests decoded or stored at once; more get 429.
    pub max_inflight_writes: usize,
    /// Longest PromQL expression accepted, in bytes.
    pub max_query_bytes: usize,
    /// Deepest nesting of a PromQL expression (calls, operators,
    /// parentheses, subqueries).
    pub max_query_depth: usize,
    /// Largest body of one HTTP answer.
    pub max_response_bytes: usize,
    /// Most buckets one YAWNDB request may read (paths × buckets).
    pub max_slice_buckets: u64,
    /// Queries (PromQL and YAWNDB reads) evaluated at once.
    pub max_concurrent_queries: usize,
    /// Queries one client certificate may have evaluated at once.
    pub max_client_queries: usize,
    /// Connections open at once on one listener.
    pub max_connections: usize,
    /// Connections one client certificate may hold open on one listener.
    pub max_client_connections: usize,
    /// Connections from one IP address still in the TLS handshake at once.
    pub max_handshakes_per_ip: usize,
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// Longest an HTTP client may take to send a request's headers.
    pub header_timeout: Duration,
    /// Longest an HTTP connection may stay idle between requests.
    pub idle_timeout: Duration,
    /// Longest an HTTP client may take to send one request body.
    pub body_timeout: Duration,
    /// A socket connection that sends nothing for this long is closed.
    pub socket_idle_timeout: Duration,
    /// Most labels in one label set.
    pub max_labels_per_series: usize,
    /// Longest label name.
    pub max_label_name_bytes: usize,
    /// Longest label value.
    pub max_label_value_bytes: usize,
    /// Longest series key (a path, or a label set's canonical form), for
    /// every protocol.
    pub max_series_key_bytes: usize,
    /// Most bytes of series keys held in all.
    pub max_series_key_bytes_total: u64,
    /// Longest metadata help text kept.
    pub max_help_bytes: usize,
    /// Most bytes of metadata (names, help, unit) kept in all.
    pub max_metadata_bytes: u64,
}

/// One problem in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    /// Where in the YAML (`rules[2].type`), empty for the whole file.
    pub location: String,
    /// What was expected and what was found.
    pub message: String,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// File name.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not the YAML structure expected.
    #[error("{file}: {message}")]
    Syntax {
        /// File name.
        file: String,
        /// Parser message with line and column.
        message: String,
    },
    /// Values that do not validate, all of them.
    #[error("{file}: {} problem(s):\n{}", issues.len(), render(issues))]
    Invalid {
        /// File name.
        file: String,
        /// Every problem found.
        issues: Vec<Issue>,
    },
}

fn render(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| format!("  {}: {}", i.location, i.message))
        .collect::<Vec<_>>()
        .join("\n")
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Parses and validates YAML text. `name` is used in messages, `base` is the
/// folder relative file names are resolved from.
///
/// # Errors
/// [`ConfigError::Syntax`] or [`ConfigError::Invalid`] with every problem.
pub fn parse(text: &str, name: &str, base: &Path) -> Result<Settings, ConfigError> {
    let raw: raw::RawConfig = if text.trim().is_empty() {
        raw::RawConfig::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: name.to_string(),
            message: e.to_string(),
        })?
    };
    validate::validate(raw, base).map_err(|issues| ConfigError::Invalid {
        file: name.to_string(),
        issues,
    })
}

/// Reads and validates a file; relative names inside it are relative to its
/// folder.
///
/// # Errors
/// As [`parse`], plus [`ConfigError::Read`].
pub fn load(file: &Path) -> Result<Settings, ConfigError> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: name.clone(),
        source,
    })?;
    let base = file.parent().unwrap_or(Path::new("."));
    parse(&text, &name, base)
}

pub use crate::access::ClientSettings;
pub use crate::ingest::scrape::{ScrapeJob, ScrapeScheme};
pub use crate::model::parse_duration;

#[cfg(test)]
mod tests;

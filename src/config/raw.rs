//! serde structs mirroring the YAML file. Leaves stay untyped YAML values so
//! that validation can report every bad value at once, each with its
//! location; unknown keys are collected, not fatal here.

use serde::Deserialize;
use serde_yaml::Value;
use std::collections::BTreeMap;

/// Keys this section did not expect.
pub type Unknown = BTreeMap<String, Value>;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    pub data_dir: Option<Value>,
    pub listen: Option<ListenConfig>,
    pub tls: Option<TlsConfig>,
    pub snapshot: Option<SnapshotConfig>,
    pub limits: Option<LimitsConfig>,
    pub clients: Option<Vec<ClientConfig>>,
    pub scrape: Option<Vec<ScrapeConfig>>,
    pub rules: Option<Vec<RuleConfig>>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `listen:`
#[derive(Debug, Default, Deserialize)]
pub struct ListenConfig {
    pub socket: Option<Value>,
    pub http: Option<Value>,
    pub admin: Option<Value>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `tls:`
#[derive(Debug, Default, Deserialize)]
pub struct TlsConfig {
    pub cert: Option<Value>,
    pub key: Option<Value>,
    pub client_ca: Option<Value>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `snapshot:`
#[derive(Debug, Default, Deserialize)]
pub struct SnapshotConfig {
    pub interval: Option<Value>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `limits:`
#[derive(Debug, Default, Deserialize)]
pub struct LimitsConfig {
    pub max_future: Option<Value>,
    pub max_series: Option<Value>,
    pub max_body_bytes: Option<Value>,
    pub query_timeout: Option<Value>,
    pub max_query_samples: Option<Value>,
    pub max_inflight_writes: Option<Value>,
    pub max_query_bytes: Option<Value>,
    pub max_query_depth: Option<Value>,
    pub max_response_bytes: Option<Value>,
    pub max_slice_buckets: Option<Value>,
    pub max_concurrent_queries: Option<Value>,
    pub max_client_queries: Option<Value>,
    pub max_connections: Option<Value>,
    pub max_client_connections: Option<Value>,
    pub max_handshakes_per_ip: Option<Value>,
    pub handshake_timeout: Option<Value>,
    pub header_timeout: Option<Value>,
    pub idle_timeout: Option<Value>,
    pub body_timeout: Option<Value>,
    pub socket_idle_timeout: Option<Value>,
    pub max_labels_per_series: Option<Value>,
    pub max_label_name_bytes: Option<Value>,
    pub max_label_value_bytes: Option<Value>,
    pub max_series_key_bytes: Option<Value>,
    pub max_series_key_bytes_total: Option<Value>,
    pub max_help_bytes: Option<Value>,
    pub max_metadata_bytes: Option<Value>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// One entry of `clients:`.
#[derive(Debug, Default, Deserialize)]
pub struct ClientConfig {
    pub name: Option<Value>,
    pub write: Option<Value>,
    pub read: Option<Value>,
    pub admin: Option<Value>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// One entry of `scrape:`.
#[derive(Debug, Default, Deserialize)]
pub struct ScrapeConfig {
    pub job: Option<Value>,
    pub interval: Option<Value>,
    pub timeout: Option<Value>,
    pub targets: Option<Value>,
    pub scheme: Option<Value>,
    pub ca: Option<Value>,
    pub cert: Option<Value>,
    pub key: Option<Value>,
    pub metrics_path: Option<Value>,
    pub body_limit_bytes: Option<Value>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// One entry of `rules:`.
#[derive(Debug, Default, Deserialize)]
pub struct RuleConfig {
    pub name: Option<Value>,
    pub prefix: Option<Value>,
    #[serde(rename = "type")]
    pub consolidation: Option<Value>,
    pub timeframe: Option<Value>,
    pub limit: Option<Value>,
    pub retention: Option<Value>,
    pub split: Option<Value>,
    pub value_size: Option<Value>,
    pub additional_values: Option<Value>,
    pub autoremove: Option<Value>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

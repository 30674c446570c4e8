//! Raw YAML → typed [`Settings`], collecting every problem with its location
//! instead of stopping at the first.

use super::raw::{self, RawConfig, Unknown};
use super::{ClientSettings, Issue, Limits, Listen, ScrapeJob, ScrapeScheme, Settings, TlsFiles};
use crate::rrd::{
    Consolidation, Shape, Special, Split, Strength, ValueSize, MAX_SPECIALS, MAX_TIMEFRAME_SECS,
    MAX_WINDOW_SECS,
};
use crate::rules::{Rule, FALLBACK_PREFIX};
use serde_yaml::Value;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Collects issues while walking the file.
struct Checker {
    issues: Vec<Issue>,
}

impl Checker {
    fn issue(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            location: location.into(),
            message: message.into(),
        });
    }

    fn unknown(&mut self, at: &str, unknown: &Unknown, expected: &str) {
        for key in unknown.keys() {
            self.issue(
                join(at, key),
                format!("unknown key {key:?}, expected one of: {expected}"),
            );
        }
    }

    fn string(&mut self, at: &str, value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.issue(at, format!("expected a string, found {}", kind(other)));
                None
            }
        }
    }

    fn bool(&mut self, at: &str, value: Option<&Value>, default: bool) -> bool {
        match value {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.issue(at, format!("expected true or false, found {}", show(other)));
                default
            }
        }
    }

    fn unsigned(&mut self, at: &str, value: Option<&Value>, default: u64) -> u64 {
        match value {
            None => default,
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or(default),
            Some(other) => {
                self.issue(
                    at,
                    format!("expected a non-negative integer, found {}", show(other)),
                );
                default
            }
        }
    }

    /// An integer within `min..=max` (both named in the message when not).
    fn unsigned_in(
        &mut self,
        at: &str,
        value: Option<&Value>,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        let v = self.unsigned(at, value, default);
        if (min..=max).contains(&v) {
            v
        } else {
            self.issue(at, format!("{v} is out of range; expected {min} to {max}"));
            default
        }
    }

    /// A duration within `min..=max` (both named in the message when not).
    fn duration_in(
        &mut self,
        at: &str,
        value: Option<&Value>,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let d = self.duration(at, value, default);
        if (min..=max).contains(&d) {
            d
        } else {
            self.issue(
                at,
                format!("{d:?} is out of range; expected {min:?} to {max:?}"),
            );
            default
        }
    }

    fn duration(&mut self, at: &str, value: Option<&Value>, default: Duration) -> Duration {
        let Some(value) = value else { return default };
        match value {
            Value::Number(n) if n.as_u64().is_some() => {
                Duration::from_secs(n.as_u64().unwrap_or_default())
            }
            Value::String(s) => match super::parse_duration(s) {
                Ok(d) => d,
                Err(e) => {
                    self.issue(at, e);
                    default
                }
            },
            other => {
                self.issue(
                    at,
                    format!(
                        "expected seconds or a duration such as 10s, 1m, 1h, 1d, found {}",
                        show(other)
                    ),
                );
                default
            }
        }
    }

    fn address(&mut self, at: &str, value: Option<&Value>, default: &str) -> SocketAddr {
        let fallback: SocketAddr = default.parse().expect("default address parses");
        let Some(value) = value else { return fallback };
        let Some(text) = self.string(at, value) else {
            return fallback;
        };
        text.parse().unwrap_or_else(|_| {
            self.issue(
                at,
                format!("expected IP:port such as 127.0.0.1:9201, found {text:?}"),
            );
            fallback
        })
    }

    fn enum_value<T: Copy>(&mut self, at: &str, value: &Value, options: &[(&str, T)]) -> Option<T> {
        let text = self.string(at, value)?;
        match options.iter().find(|(name, _)| *name == text) {
            Some((_, v)) => Some(*v),
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.issue(
                    at,
                    format!(
                        "unknown value {text:?}, expected one of {}",
                        names.join(", ")
                    ),
                );
                None
            }
        }
    }

    fn string_list(&mut self, at: &str, value: Option<&Value>) -> Vec<String> {
        match value {
            None => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| self.string(&format!("{at}[{i}]"), v))
                .collect(),
            Some(other) => {
                self.issue(at, format!("expected a list, found {}", kind(other)));
                Vec::new()
            }
        }
    }
}

/// Every key of `limits:`, for the unknown-key message.
const LIMIT_KEYS: &str =
    "max_future, max_series, max_body_bytes, query_timeout, max_query_samples, \
    max_inflight_writes, max_query_bytes, max_query_depth, max_response_bytes, max_slice_buckets, \
    max_concurrent_queries, max_client_queries, max_connections, max_client_connections, \
    max_handshakes_per_ip, handshake_timeout, header_timeout, idle_timeout, body_timeout, \
    socket_idle_timeout, max_labels_per_series, max_label_name_bytes, max_label_value_bytes, \
    max_series_key_bytes, max_series_key_bytes_total, max_help_bytes, max_metadata_bytes";

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => kind(other).to_string(),
    }
}

/// Validates the whole file; `base` is the folder relative names start from.
pub(super) fn validate(raw: RawConfig, base: &Path) -> Result<Settings, Vec<Issue>> {
    let mut c = Checker { issues: Vec::new() };
    c.unknown(
        "",
        &raw.unknown,
        "data_dir, listen, tls, snapshot, limits, clients, scrape, rules",
    );
    let resolve = |p: String| -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            base.join(p)
        }
    };
    let data_dir = raw
        .data_dir
        .as_ref()
        .and_then(|v| c.string("data_dir", v))
        .unwrap_or_else(|| "./ringdb-data".into());
    let data_dir = resolve(data_dir);

    let l = raw.listen.unwrap_or_default();
    c.unknown("listen", &l.unknown, "socket, http, admin");
    let listen = Listen {
        socket: c.address("listen.socket", l.socket.as_ref(), "127.0.0.1:2011"),
        http: c.address("listen.http", l.http.as_ref(), "127.0.0.1:9201"),
        admin: c.address("listen.admin", l.admin.as_ref(), "127.0.0.1:9202"),
    };

    let tls = raw.tls.map(|t| {
        c.unknown("tls", &t.unknown, "cert, key, client_ca");
        let mut file = |name: &str, v: Option<Value>| -> PathBuf {
            let at = format!("tls.{name}");
            match v {
                None => {
                    c.issue(&at, "missing; tls needs cert, key and client_ca");
                    PathBuf::new()
                }
                Some(v) => c.string(&at, &v).map(&resolve).unwrap_or_default(),
            }
        };
        TlsFiles {
            cert: file("cert", t.cert),
            key: file("key", t.key),
            client_ca: file("client_ca", t.client_ca),
        }
    });

    let s = raw.snapshot.unwrap_or_default();
    c.unknown("snapshot", &s.unknown, "interval");
    let snapshot_interval = c.duration(
        "snapshot.interval",
        s.interval.as_ref(),
        Duration::from_secs(10),
    );
    if snapshot_interval < Duration::from_millis(100)
        || snapshot_interval > Duration::from_secs(86_400)
    {
        c.issue(
            "snapshot.interval",
            format!("{snapshot_interval:?} is out of range; expected 100ms to 1d"),
        );
    }

    let l = raw.limits.unwrap_or_default();
    c.unknown("limits", &l.unknown, LIMIT_KEYS);
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    let secs = Duration::from_secs;
    let limits = Limits {
        max_future: c.duration_in(
            "limits.max_future",
            l.max_future.as_ref(),
            secs(600),
            secs(0),
            secs(366 * 86_400),
        ),
        max_series: c.unsigned_in(
            "limits.max_series",
            l.max_series.as_ref(),
            5_000_000,
            1,
            1 << 40,
        ),
        max_inflight_writes: c.unsigned_in(
            "limits.max_inflight_writes",
            l.max_inflight_writes.as_ref(),
            64,
            1,
            1 << 16,
        ) as usize,
        max_body_bytes: c.unsigned_in(
            "limits.max_body_bytes",
            l.max_body_bytes.as_ref(),
            32 * MIB,
            KIB,
            4 * GIB,
        ),
        query_timeout: c.duration_in(
            "limits.query_timeout",
            l.query_timeout.as_ref(),
            secs(120),
            Duration::from_millis(1),
            secs(86_400),
        ),
        max_query_samples: c.unsigned_in(
            "limits.max_query_samples",
            l.max_query_samples.as_ref(),
            50_000_000,
            1,
            1 << 40,
        ),
        max_query_bytes: c.unsigned_in(
            "limits.max_query_bytes",
            l.max_query_bytes.as_ref(),
            16 * KIB,
            1,
            16 * MIB,
        ) as usize,
        max_query_depth: c.unsigned_in(
            "limits.max_query_depth",
            l.max_query_depth.as_ref(),
            128,
            1,
            1024,
        ) as usize,
        max_response_bytes: c.unsigned_in(
            "limits.max_response_bytes",
            l.max_response_bytes.as_ref(),
            64 * MIB,
            KIB,
            4 * GIB,
        ) as usize,
        max_slice_buckets: c.unsigned_in(
            "limits.max_slice_buckets",
            l.max_slice_buckets.as_ref(),
            1_000_000,
            1,
            1 << 32,
        ),
        max_concurrent_queries: c.unsigned_in(
            "limits.max_concurrent_queries",
            l.max_concurrent_queries.as_ref(),
            4,
            1,
            1024,
        ) as usize,
        max_client_queries: c.unsigned_in(
            "limits.max_client_queries",
            l.max_client_queries.as_ref(),
            2,
            1,
            1024,
        ) as usize,
        max_connections: c.unsigned_in(
            "limits.max_connections",
            l.max_connections.as_ref(),
            4096,
            1,
            1 << 20,
        ) as usize,
        max_client_connections: c.unsigned_in(
            "limits.max_client_connections",
            l.max_client_connections.as_ref(),
            512,
            1,
            1 << 20,
        ) as usize,
        max_handshakes_per_ip: c.unsigned_in(
            "limits.max_handshakes_per_ip",
            l.max_handshakes_per_ip.as_ref(),
            256,
            1,
            1 << 20,
        ) as usize,
        handshake_timeout: c.duration_in(
            "limits.handshake_timeout",
            l.handshake_timeout.as_ref(),
            secs(10),
            Duration::from_millis(10),
            secs(3600),
        ),
        header_timeout: c.duration_in(
            "limits.header_timeout",
            l.header_timeout.as_ref(),
            secs(10),
            Duration::from_millis(10),
            secs(3600),
        ),
        idle_timeout: c.duration_in(
            "limits.idle_timeout",
            l.idle_timeout.as_ref(),
            secs(120),
            Duration::from_millis(10),
            secs(86_400),
        ),
        body_timeout: c.duration_in(
            "limits.body_timeout",
            l.body_timeout.as_ref(),
            secs(60),
            Duration::from_millis(10),
            secs(3600),
        ),
        socket_idle_timeout: c.duration_in(
            "limits.socket_idle_timeout",
            l.socket_idle_timeout.as_ref(),
            secs(300),
            Duration::from_millis(10),
            secs(86_400),
        ),
        max_labels_per_series: c.unsigned_in(
            "limits.max_labels_per_series",
            l.max_labels_per_series.as_ref(),
            64,
            1,
            1024,
        ) as usize,
        max_label_name_bytes: c.unsigned_in(
            "limits.max_label_name_bytes",
            l.max_label_name_bytes.as_ref(),
            256,
            1,
            64 * KIB,
        ) as usize,
        max_label_value_bytes: c.unsigned_in(
            "limits.max_label_value_bytes",
            l.max_label_value_bytes.as_ref(),
            4 * KIB,
            1,
            64 * KIB,
        ) as usize,
        max_series_key_bytes: c.unsigned_in(
            "limits.max_series_key_bytes",
            l.max_series_key_bytes.as_ref(),
            16 * KIB,
            64,
            64 * KIB - 1,
        ) as usize,
        max_series_key_bytes_total: c.unsigned_in(
            "limits.max_series_key_bytes_total",
            l.max_series_key_bytes_total.as_ref(),
            2 * GIB,
            MIB,
            1 << 40,
        ),
        max_help_bytes: c.unsigned_in(
            "limits.max_help_bytes",
            l.max_help_bytes.as_ref(),
            4 * KIB,
            0,
            MIB,
        ) as usize,
        max_metadata_bytes: c.unsigned_in(
            "limits.max_metadata_bytes",
            l.max_metadata_bytes.as_ref(),
            16 * MIB,
            0,
            GIB,
        ),
    };
    if limits.max_client_queries > limits.max_concurrent_queries {
        c.issue(
            "limits.max_client_queries",
            format!(
                "{} is more than limits.max_concurrent_queries ({}); expected at most that",
                limits.max_client_queries, limits.max_concurrent_queries
            ),
        );
    }

    let clients = raw.clients.map(|list| {
        let mut seen = HashSet::new();
        list.into_iter()
            .enumerate()
            .filter_map(|(i, client)| {
                let at = format!("clients[{i}]");
                c.unknown(&at, &client.unknown, "name, write, read, admin");
                let name = match client.name.as_ref() {
                    None => {
                        c.issue(
                            join(&at, "name"),
                            "missing; expected the certificate's common name",
                        );
                        None
                    }
                    Some(v) => c.string(&join(&at, "name"), v),
                }?;
                if !seen.insert(name.clone()) {
                    c.issue(join(&at, "name"), format!("duplicate client name {name:?}"));
                }
                Some(ClientSettings {
                    write: c.string_list(&join(&at, "write"), client.write.as_ref()),
                    read: c.string_list(&join(&at, "read"), client.read.as_ref()),
                    admin: c.bool(&join(&at, "admin"), client.admin.as_ref(), false),
                    name,
                })
            })
            .collect()
    });

    let scrape = scrape_jobs(&mut c, raw.scrape, base);

    let mut rules = Vec::new();
    match raw.rules {
        None => c.issue("rules", "missing; expected a list of rules (DESIGN §2)"),
        Some(list) if list.is_empty() => c.issue("rules", "empty; expected at least one rule"),
        Some(list) => {
            let mut names = HashSet::new();
            for (i, r) in list.into_iter().enumerate() {
                let at = format!("rules[{i}]");
                if let Some(Value::String(name)) = &r.name {
                    if !names.insert(name.clone()) {
                        c.issue(join(&at, "name"), format!("duplicate rule name {name:?}"));
                    }
                }
                rules.extend(rule(&mut c, &at, r));
            }
        }
    }

    if c.issues.is_empty() {
        Ok(Settings {
            data_dir,
            listen,
            tls,
            snapshot_interval,
            limits,
            clients,
            scrape,
            rules,
        })
    } else {
        Err(c.issues)
    }
}

const CONSOLIDATIONS: &[(&str, Consolidation)] = &[
    ("last", Consolidation::Last),
    ("min", Consolidation::Min),
    ("max", Consolidation::Max),
    ("sum", Consolidation::Sum),
    ("avg", Consolidation::Avg),
];
const SPLITS: &[(&str, Split)] = &[
    ("backward", Split::Backward),
    ("forward", Split::Forward),
    ("equal", Split::Equal),
    ("proportional", Split::Proportional),
];
const VALUE_SIZES: &[(&str, ValueSize)] = &[
    ("small", ValueSize::Small),
    ("medium", ValueSize::Medium),
    ("large", ValueSize::Large),
    ("float", ValueSize::Float),
];
const STRENGTHS: &[(&str, Strength)] = &[("weak", Strength::Weak), ("strong", Strength::Strong)];

fn rule(c: &mut Checker, at: &str, r: raw::RuleConfig) -> Option<Rule> {
    c.unknown(
        at,
        &r.unknown,
        "name, prefix, type, timeframe, limit, retention, split, value_size, additional_values, autoremove",
    );
    let mut required = |key: &str, v: Option<&Value>| -> Option<Value> {
        if v.is_none() {
            c.issue(
                join(at, key),
                "missing; every rule needs name, prefix, type, timeframe and limit (or retention)",
            );
        }
        v.cloned()
    };
    let name = required("name", r.name.as_ref());
    let prefix = required("prefix", r.prefix.as_ref());
    let consolidation = required("type", r.consolidation.as_ref());
    let timeframe = required("timeframe", r.timeframe.as_ref());

    let name = name
        .and_then(|v| c.string(&join(at, "name"), &v))
        .and_then(|n| {
            if n.is_empty()
                || !n
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "_.:-".contains(ch))
            {
                c.issue(
                    join(at, "name"),
                    format!("bad rule name {n:?}, expected letters, digits, _ . : -"),
                );
                None
            } else {
                Some(n)
            }
        });
    let prefix = prefix.and_then(|v| c.string(&join(at, "prefix"), &v)).and_then(|p| {
        if p.is_empty() || (p != FALLBACK_PREFIX && (p.contains('-') || p.contains('/'))) {
            c.issue(
                join(at, "prefix"),
                format!("bad prefix {p:?}: expected the text before a path's first '-' (no '-' or '/'), or \"*\""),
            );
            None
        } else {
            Some(p)
        }
    });
    let consolidation =
        consolidation.and_then(|v| c.enum_value(&join(at, "type"), &v, CONSOLIDATIONS));
    let split = match r.split.as_ref() {
        None => Some(Split::Backward),
        Some(v) => c.enum_value(&join(at, "split"), v, SPLITS),
    };
    let value_size = match r.value_size.as_ref() {
        None => Some(ValueSize::Float),
        Some(v) => c.enum_value(&join(at, "value_size"), v, VALUE_SIZES),
    };
    let timeframe_secs = timeframe.and_then(|v| {
        let d = c.duration(&join(at, "timeframe"), Some(&v), Duration::ZERO);
        if d.is_zero() || d.subsec_nanos() != 0 || d.as_secs() > MAX_TIMEFRAME_SECS {
            c.issue(
                join(at, "timeframe"),
                format!(
                    "expected whole seconds from 1 to {MAX_TIMEFRAME_SECS} (a year), found {}",
                    show(&v)
                ),
            );
            None
        } else {
            Some(d.as_secs())
        }
    });
    let limit = match (r.limit.as_ref(), r.retention.as_ref()) {
        (Some(_), Some(_)) => {
            c.issue(
                join(at, "retention"),
                "give either limit or retention, not both",
            );
            None
        }
        (None, None) => {
            c.issue(
                join(at, "limit"),
                "missing; give limit (buckets) or retention (a duration)",
            );
            None
        }
        (Some(v), None) => match v {
            Value::Number(n) if n.as_u64().is_some_and(|l| l >= 1) => n.as_u64(),
            other => {
                c.issue(
                    join(at, "limit"),
                    format!("expected a positive integer, found {}", show(other)),
                );
                None
            }
        },
        (None, Some(v)) => {
            let d = c.duration(&join(at, "retention"), Some(v), Duration::ZERO);
            timeframe_secs
                .filter(|_| !d.is_zero())
                .map(|tf| d.as_secs().div_ceil(tf).max(1))
        }
    };
    if let (Some(limit), Some(vs)) = (limit, value_size) {
        if limit > vs.max_limit() {
            c.issue(
                join(
                    at,
                    if r.limit.is_some() {
                        "limit"
                    } else {
                        "retention"
                    },
                ),
                format!(
                    "{limit} buckets is beyond a {} archive's maximum of {}",
                    format!("{vs:?}").to_lowercase(),
                    vs.max_limit()
                ),
            );
        }
    }
    if let (Some(limit), Some(tf)) = (limit, timeframe_secs) {
        if limit.saturating_mul(tf) > MAX_WINDOW_SECS {
            c.issue(
                join(at, if r.limit.is_some() { "limit" } else { "retention" }),
                format!(
                    "a window of {limit} × {tf}s is beyond {MAX_WINDOW_SECS}s (100 years); expected less"
                ),
            );
        }
    }
    let specials = specials(
        c,
        &join(at, "additional_values"),
        r.additional_values.as_ref(),
    );
    let autoremove = c.bool(&join(at, "autoremove"), r.autoremove.as_ref(), false);
    let limit = limit.filter(|l| value_size.is_some_and(|vs| *l <= vs.max_limit()))?;
    if limit.saturating_mul(timeframe_secs?) > MAX_WINDOW_SECS {
        return None;
    }
    Some(Rule {
        name: name?,
        prefix: prefix?,
        shape: Shape {
            consolidation: consolidation?,
            timeframe_secs: timeframe_secs?,
            limit: u32::try_from(limit).ok()?,
            split: split?,
            value_size: value_size?,
            specials: specials?,
        },
        autoremove,
    })
}

/// `additional_values`: a list of one-key maps (`[{timeout: weak}]`) or one
/// map (`{timeout: weak, error: strong}`), as YAWNDB accepts.
fn specials(c: &mut Checker, at: &str, value: Option<&Value>) -> Option<Vec<Special>> {
    let mut pairs: Vec<(String, &Value, String)> = Vec::new();
    match value {
        None | Some(Value::Null) => return Some(Vec::new()),
        Some(Value::Sequence(items)) => {
            for (i, item) in items.iter().enumerate() {
                let item_at = format!("{at}[{i}]");
                match item {
                    Value::Mapping(m) if m.len() == 1 => {
                        for (k, v) in m {
                            if let Some(k) = c.string(&item_at, k) {
                                pairs.push((k.clone(), v, join(&item_at, &k)));
                            }
                        }
                    }
                    other => c.issue(
                        &item_at,
                        format!(
                            "expected one `name: weak|strong` pair, found {}",
                            kind(other)
                        ),
                    ),
                }
            }
        }
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                if let Some(k) = c.string(at, k) {
                    pairs.push((k.clone(), v, join(at, &k)));
                }
            }
        }
        Some(other) => {
            c.issue(
                at,
                format!(
                    "expected a list of `name: weak|strong`, found {}",
                    kind(other)
                ),
            );
            return None;
        }
    }
    if pairs.len() > MAX_SPECIALS {
        c.issue(
            at,
            format!(
                "{} additional values, expected at most {MAX_SPECIALS}",
                pairs.len()
            ),
        );
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let before = c.issues.len();
    for (name, strength, item_at) in pairs {
        if name == "empty" || name == "none" || name.is_empty() {
            c.issue(
                &item_at,
                format!("special name {name:?} is reserved, choose another"),
            );
        } else if !seen.insert(name.clone()) {
            c.issue(&item_at, format!("duplicate special {name:?}"));
        }
        if let Some(strength) = c.enum_value(&item_at, strength, STRENGTHS) {
            out.push(Special { name, strength });
        }
    }
    (c.issues.len() == before && out.len() <= MAX_SPECIALS).then_some(out)
}

/// Default cap on a scraped body.
const SCRAPE_BODY_LIMIT_BYTES: u64 = 16 << 20;

const SCHEMES: &[(&str, ScrapeScheme)] =
    &[("http", ScrapeScheme::Http), ("https", ScrapeScheme::Https)];

/// `scrape:`: jobs with unique names, `timeout ≤ interval`, `host:port`
/// targets, and TLS files (relative to `base`) only where https uses them.
fn scrape_jobs(
    c: &mut Checker,
    list: Option<Vec<raw::ScrapeConfig>>,
    base: &Path,
) -> Vec<ScrapeJob> {
    let mut names = HashSet::new();
    let mut jobs = Vec::new();
    for (i, j) in list.unwrap_or_default().into_iter().enumerate() {
        let at = format!("scrape[{i}]");
        c.unknown(
            &at,
            &j.unknown,
            "job, interval, timeout, targets, scheme, ca, cert, key, metrics_path, body_limit_bytes",
        );
        let before = c.issues.len();
        let job = match j.job.as_ref() {
            None => {
                c.issue(
                    join(&at, "job"),
                    "missing; expected the job name (its `job` label)",
                );
                String::new()
            }
            Some(v) => c.string(&join(&at, "job"), v).unwrap_or_default(),
        };
        if j.job.is_some() && job.is_empty() {
            c.issue(join(&at, "job"), "empty; expected a job name");
        } else if !job.is_empty() && !names.insert(job.clone()) {
            c.issue(join(&at, "job"), format!("duplicate job name {job:?}"));
        }
        let interval = c.duration_in(
            &join(&at, "interval"),
            j.interval.as_ref(),
            Duration::from_secs(60),
            Duration::from_millis(100),
            Duration::from_secs(86_400),
        );
        let timeout = c.duration(
            &join(&at, "timeout"),
            j.timeout.as_ref(),
            interval.min(Duration::from_secs(10)),
        );
        if timeout.is_zero() {
            c.issue(
                join(&at, "timeout"),
                "expected a positive duration, found 0",
            );
        } else if timeout > interval {
            c.issue(
                join(&at, "timeout"),
                format!("timeout {timeout:?} is longer than the interval {interval:?}; expected at most the interval"),
            );
        }
        let targets = match j.targets.as_ref() {
            None => {
                c.issue(
                    join(&at, "targets"),
                    "missing; expected a list of host:port",
                );
                Vec::new()
            }
            Some(v) => c.string_list(&join(&at, "targets"), Some(v)),
        };
        if j.targets.is_some() && targets.is_empty() && c.issues.len() == before {
            c.issue(
                join(&at, "targets"),
                "empty; expected at least one host:port",
            );
        }
        let mut seen = HashSet::new();
        for (k, t) in targets.iter().enumerate() {
            let t_at = format!("{at}.targets[{k}]");
            if !is_host_port(t) {
                c.issue(
                    &t_at,
                    format!("expected host:port such as 127.0.0.1:9100 or [::1]:9100, found {t:?}"),
                );
            } else if !seen.insert(t.as_str()) {
                c.issue(&t_at, format!("duplicate target {t:?}"));
            }
        }
        let scheme = match j.scheme.as_ref() {
            None => Some(ScrapeScheme::Http),
            Some(v) => c.enum_value(&join(&at, "scheme"), v, SCHEMES),
        };
        let mut file = |key: &str, v: Option<&Value>| -> Option<PathBuf> {
            let text = c.string(&join(&at, key), v?)?;
            let p = PathBuf::from(text);
            Some(if p.is_absolute() { p } else { base.join(p) })
        };
        let ca = file("ca", j.ca.as_ref());
        let cert = file("cert", j.cert.as_ref());
        let key = file("key", j.key.as_ref());
        if scheme == Some(ScrapeScheme::Https) && ca.is_none() && j.ca.is_none() {
            c.issue(
                join(&at, "ca"),
                "missing; scheme https needs ca, the CA file that signed the targets' certificates",
            );
        }
        if scheme == Some(ScrapeScheme::Http) {
            for (name, v) in [("ca", &j.ca), ("cert", &j.cert), ("key", &j.key)] {
                if v.is_some() {
                    c.issue(
                        join(&at, name),
                        "only used with scheme: https; remove it or set scheme: https",
                    );
                }
            }
        }
        if j.cert.is_some() != j.key.is_some() {
            let missing = if j.cert.is_some() { "key" } else { "cert" };
            c.issue(
                join(&at, missing),
                "missing; a client certificate needs both cert and key",
            );
        }
        let metrics_path = match j.metrics_path.as_ref() {
            None => Some("/metrics".to_string()),
            Some(v) => c.string(&join(&at, "metrics_path"), v),
        }
        .unwrap_or_default();
        if !metrics_path.starts_with('/')
            || metrics_path
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control())
        {
            c.issue(
                join(&at, "metrics_path"),
                format!("expected an absolute path such as /metrics, found {metrics_path:?}"),
            );
        }
        let body_limit_bytes = c.unsigned(
            &join(&at, "body_limit_bytes"),
            j.body_limit_bytes.as_ref(),
            SCRAPE_BODY_LIMIT_BYTES,
        );
        if body_limit_bytes == 0 {
            c.issue(
                join(&at, "body_limit_bytes"),
                "expected a positive number of bytes, found 0",
            );
        }
        if c.issues.len() == before {
            jobs.push(ScrapeJob {
                job,
                interval,
                timeout,
                targets,
                scheme: scheme.unwrap_or(ScrapeScheme::Http),
                ca,
                cert,
                key,
                metrics_path,
                body_limit_bytes,
            });
        }
    }
    jobs
}

/// `host:port` with a non-empty host (a name, an IPv4 address or a
/// bracketed IPv6 address) and a port in 1..=65535.
fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '.' || ch == '-' || ch == '_')
        }
    };
    port_ok && host_ok
}

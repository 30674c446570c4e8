//! Replays the committed fuzz corpora (fuzz/corpus/<target>/) and crash
//! regressions (fuzz/regressions/<target>/) through the fuzz entry points
//! of `ringdb::fuzzing`, on stable with plain `cargo test`: CI re-runs what
//! the fuzzers found without fuzzing.
//!
//! A regression file whose name starts with `open-` is a finding whose fix
//! belongs to another part of the code and has not landed yet: it is listed
//! with a visible "skipped" line, not replayed. Rename it (drop `open-`)
//! with its fix.
//!
//! `write_seed_corpora` (ignored) wrote the seeds the fuzzers started from:
//! `cargo test --test it fuzz_replay::write_seed_corpora -- --ignored`.

use ringdb::fuzzing;
use std::path::{Path, PathBuf};

type Entry = fn(&[u8]);

/// Every fuzz target and its entry point.
const TARGETS: &[(&str, Entry)] = &[
    ("frame", fuzzing::frame),
    ("remote_write", fuzzing::remote_write),
    ("exposition", fuzzing::exposition),
    ("promql", fuzzing::promql),
    ("config", fuzzing::config),
    ("snapshot", fuzzing::snapshot),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of a folder, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn is_open(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("open-"))
}

/// Runs every input of `target`; a panic names the file.
fn replay(target: &str, entry: Entry) -> (usize, usize) {
    let corpus = files(&fuzz_dir().join("corpus").join(target));
    let regressions = files(&fuzz_dir().join("regressions").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ is empty or missing: the replay would test nothing"
    );
    let mut fixed = 0;
    for path in corpus.iter().chain(&regressions) {
        if is_open(path) {
            println!(
                "fuzz replay: skipped open finding {} (its fix has not landed)",
                path.display()
            );
            continue;
        }
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| entry(&bytes));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!(
                "fuzz target {target}: {} panicked: {message}",
                path.display()
            );
        }
        if regressions.contains(path) {
            fixed += 1;
        }
    }
    (corpus.len(), fixed)
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let entry = TARGETS
                .iter()
                .find(|(t, _)| *t == stringify!($name))
                .map(|(_, e)| *e)
                .expect("a target of that name");
            let (corpus, fixed) = replay(stringify!($name), entry);
            println!(
                "fuzz replay {}: {corpus} corpus files, {fixed} regressions",
                stringify!($name)
            );
        }
    )*};
}

replay_tests!(frame, remote_write, exposition, promql, config, snapshot);

/// Every target has a replay test above.
#[test]
fn every_target_is_replayed() {
    let targets = files(&fuzz_dir().join("fuzz_targets"));
    let names: Vec<String> = targets
        .iter()
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_owned))
        .collect();
    let mut known: Vec<&str> = TARGETS.iter().map(|(t, _)| *t).collect();
    known.sort_unstable();
    let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, known, "fuzz/fuzz_targets/ and TARGETS differ");
}

/// Writes the seed inputs the fuzzers started from (run by hand; the
/// minimized corpora that grew from them are what is committed).
#[test]
#[ignore = "writes the fuzz seed corpora; run by hand"]
fn write_seed_corpora() {
    let root = fuzz_dir().join("seeds");
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("seed folder");
        std::fs::write(dir.join(name), bytes).expect("seed file");
    };
    for (name, bytes) in seeds::frame() {
        put("frame", &name, &bytes);
    }
    for (name, bytes) in seeds::remote_write() {
        put("remote_write", &name, &bytes);
    }
    for (name, bytes) in seeds::exposition() {
        put("exposition", &name, &bytes);
    }
    for (name, bytes) in seeds::promql() {
        put("promql", &name, &bytes);
    }
    for (name, bytes) in seeds::config() {
        put("config", &name, &bytes);
    }
    for (name, bytes) in seeds::snapshot() {
        put("snapshot", &name, &bytes);
    }
}

mod seeds {
    use ringdb::fuzzing;
    use ringdb::ingest::frame;
    use ringdb::ingest::remote_write::{self, label, proto};
    use ringdb::model::Value;
    use ringdb::rrd::{Consolidation, Shape, Special, Split, Strength, ValueSize};

    pub type Seeds = Vec<(String, Vec<u8>)>;

    pub fn frame() -> Seeds {
        let mut vector = vec![
            0x00, 0x25, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x50, 0x72, 0xb9, 0x6d, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
        ];
        vector.extend_from_slice(b"interface_in-ae0.69");
        let mut stream = Vec::new();
        frame::encode(&mut stream, false, 1_700_000_000, 42, "traffic-client1-in");
        frame::encode(&mut stream, true, 1_700_000_060, 2, "response-web1");
        stream.extend_from_slice(&[0, 3, 2, 0, 0]); // short, version 2
        frame::encode(&mut stream, false, 1_700_000_120, u64::MAX, "a/b");
        frame::encode(&mut stream, false, 0, 0, &"p".repeat(1024));
        let mut closed = stream.clone();
        closed.extend_from_slice(&[0, 0, 1, 2, 3]);
        let mut partial = vector.clone();
        partial.extend_from_slice(&vector[..20]);
        vec![
            ("design-vector".into(), vector),
            ("stream".into(), stream),
            ("stream-closed".into(), closed),
            ("partial".into(), partial),
        ]
    }

    pub fn remote_write() -> Seeds {
        let raw = fuzzing::remote_write_seed(fuzzing::NOW_MS - 3_600_000);
        let compressed = snap::raw::Encoder::new()
            .compress_vec(&raw)
            .expect("compress");
        let bad = proto::WriteRequest {
            timeseries: vec![
                proto::TimeSeries {
                    labels: vec![label("__name__", "up"), label("z", "1"), label("a", "2")],
                    samples: vec![proto::Sample {
                        value: 1.0,
                        timestamp: fuzzing::NOW_MS as i64,
                    }],
                    ..Default::default()
                },
                proto::TimeSeries {
                    labels: vec![label("__name__", "x"), label("a-b", "")],
                    samples: vec![proto::Sample {
                        value: f64::from_bits(0x7ff0_0000_0000_0002),
                        timestamp: fuzzing::NOW_MS as i64 + 3_600_000,
                    }],
                    ..Default::default()
                },
            ],
            metadata: vec![],
        };
        let metadata_only = proto::WriteRequest {
            timeseries: vec![],
            metadata: vec![proto::MetricMetadata {
                r#type: 3,
                metric_family_name: "rpc_duration_seconds".into(),
                help: "RPC latency.".into(),
                unit: "seconds".into(),
            }],
        };
        vec![
            ("series-raw".into(), raw),
            ("series-snappy".into(), compressed),
            ("bad-labels-snappy".into(), remote_write::encode(&bad)),
            (
                "metadata-snappy".into(),
                remote_write::encode(&metadata_only),
            ),
        ]
    }

    pub fn exposition() -> Seeds {
        let text = r#"# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{cpu="0",mode="idle"} 12345.67
node_cpu_seconds_total{cpu="0",mode="user"} 89.1 1700000000000
# HELP node_load1 1m load average.
# TYPE node_load1 gauge
node_load1 0.42
# HELP http_request_duration_seconds A histogram.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.05"} 24054
http_request_duration_seconds_bucket{le="+Inf"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile="0.5",job="x"} 4773
rpc_duration_seconds_sum{} 1.7560473e+07
escaped{path="C:\\dir\\",msg="a \"quote\"\nline"} NaN
  spaced { a = "1" , b="2", } -Inf
bad line here
"#;
        vec![("node-like".into(), text.as_bytes().to_vec())]
    }

    pub fn promql() -> Seeds {
        let mut out: Seeds = Vec::new();
        let dir = std::path::Path::new("/work/shared/promqltest");
        let mut n = 0;
        for file in super::files(dir) {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            for line in text.lines() {
                let Some(rest) = line.strip_prefix("eval ") else {
                    continue;
                };
                // "instant at 50m <expr>" or "range from 0 to 10m step 1m <expr>"
                let expr = if let Some(r) = rest.strip_prefix("instant at ") {
                    r.split_once(' ').map(|(_, e)| e)
                } else {
                    rest.split_once(" step ")
                        .and_then(|(_, r)| r.split_once(' '))
                        .map(|(_, e)| e)
                };
                if let Some(expr) = expr.filter(|e| e.len() <= fuzzing::PROMQL_MAX_BYTES) {
                    out.push((format!("promqltest-{n:04}"), expr.as_bytes().to_vec()));
                    n += 1;
                }
            }
        }
        let own = [
            "rate(http_requests_total[5m])",
            "sum by (job) (rate(http_requests_total{code=~\"2..\"}[5m]))",
            "histogram_quantile(0.9, sum by (le) (rate(rpc_duration_seconds_bucket[10m])))",
            "traffic{rule=\"traffic_hourly\"}",
            "avg_over_time(load[10m:1m]) offset 5m",
            "max_over_time(response{path=\"response-web1\"}[1h] @ 1700000000)",
            "up == bool 0 or on() vector(1)",
            "topk(2, other) / ignoring(path) group_left sum(traffic)",
            "label_replace(up, \"x\", \"$1\", \"job\", \"(.*)\")",
            "count_values(\"v\", traffic)",
        ];
        for (i, q) in own.iter().enumerate() {
            out.push((format!("own-{i:02}"), q.as_bytes().to_vec()));
        }
        out.push((
            "own-range".into(),
            b"sum(rate(traffic[5m]))\n1699998000\n2023-11-14T22:13:20Z\n30s".to_vec(),
        ));
        out.push(("own-instant".into(), b"up\n1699999000.5".to_vec()));
        out
    }

    pub fn config() -> Seeds {
        let example = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules.example.yaml"),
        )
        .expect("rules.example.yaml");
        let full = r#"data_dir: /tmp/x
listen: {socket: "127.0.0.1:0", http: "[::1]:9201", admin: "0.0.0.0:9202"}
tls: {cert: s.pem, key: k.pem, client_ca: ca.pem}
snapshot: {interval: 1m}
limits: {max_future: 1h, max_series: 10, query_timeout: 30s}
clients:
  - {name: agent-7, write: [traffic], read: ["*"], admin: true}
scrape:
  - {job: node, interval: 15s, timeout: 10s, targets: ["127.0.0.1:9100"], scheme: http}
rules:
  - {name: r, prefix: "*", type: avg, timeframe: 1d, retention: 30d, split: equal, value_size: small, additional_values: [{timeout: weak}], autoremove: true}
"#;
        vec![
            ("rules-example".into(), example),
            ("full".into(), full.as_bytes().to_vec()),
        ]
    }

    pub fn snapshot() -> Seeds {
        let shape = |consolidation, value_size, limit, specials: Vec<Special>| Shape {
            consolidation,
            timeframe_secs: 60,
            limit,
            split: Split::Backward,
            value_size,
            specials,
        };
        let specials = vec![
            Special {
                name: "timeout".into(),
                strength: Strength::Weak,
            },
            Special {
                name: "error".into(),
                strength: Strength::Strong,
            },
        ];
        let t0 = fuzzing::NOW_MS / 1000 - 7200;
        let numbers: Vec<(u64, Value)> = (0..150u64)
            .map(|i| (t0 + i * 60, Value::Uint(i * 3 % 40)))
            .collect();
        let floats: Vec<(u64, Value)> = (0..150u64)
            .map(|i| (t0 + i * 60, Value::Float(i as f64 / 7.0 - 3.0)))
            .collect();
        let mut with_specials = numbers.clone();
        with_specials.push((t0 + 151 * 60, Value::Special(1)));
        with_specials.push((t0 + 152 * 60, Value::Special(2)));
        vec![
            (
                "sum-large".into(),
                fuzzing::snapshot_seed(
                    shape(Consolidation::Sum, ValueSize::Large, 120, vec![]),
                    &numbers,
                ),
            ),
            (
                "last-small-specials".into(),
                fuzzing::snapshot_seed(
                    shape(Consolidation::Last, ValueSize::Small, 100, specials),
                    &with_specials,
                ),
            ),
            (
                "avg-float".into(),
                fuzzing::snapshot_seed(
                    shape(Consolidation::Avg, ValueSize::Float, 90, vec![]),
                    &floats,
                ),
            ),
            (
                "max-medium-empty".into(),
                fuzzing::snapshot_seed(
                    shape(Consolidation::Max, ValueSize::Medium, 30, vec![]),
                    &[],
                ),
            ),
        ]
    }
}

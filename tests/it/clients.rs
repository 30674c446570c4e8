//! Both shipped agents (scripts/ringdb_client.py and the C client) write
//! over real mTLS to a daemon; every type × split × value size is read back
//! over the YAWNDB slice route and compared with the naive model of
//! tests/common/model.rs: out-of-order samples, gaps longer than the window,
//! specials, integer overflow, too-old and too-far-future timestamps.

use crate::common::model::{shape_with_specials, Expected, Model};
use crate::common::{now_secs, Daemon};
use ringdb::model::Value;
use ringdb::rrd::{Consolidation, Shape, Split, ValueSize};
use serde_json::Value as Json;
use std::path::Path;
use std::process::Command;

const TYPES: [(&str, Consolidation); 5] = [
    ("last", Consolidation::Last),
    ("min", Consolidation::Min),
    ("max", Consolidation::Max),
    ("sum", Consolidation::Sum),
    ("avg", Consolidation::Avg),
];
const SPLITS: [(&str, Split); 4] = [
    ("backward", Split::Backward),
    ("forward", Split::Forward),
    ("equal", Split::Equal),
    ("proportional", Split::Proportional),
];
const SIZES: [(&str, ValueSize); 4] = [
    ("small", ValueSize::Small),
    ("medium", ValueSize::Medium),
    ("large", ValueSize::Large),
    ("float", ValueSize::Float),
];
const TF: u64 = 60;
const LIMIT: u32 = 6;

struct Combo {
    index: usize,
    shape: Shape,
    type_name: &'static str,
    split_name: &'static str,
    size_name: &'static str,
}

fn combos() -> Vec<Combo> {
    let mut out = Vec::new();
    for (type_name, consolidation) in TYPES {
        for (split_name, split) in SPLITS {
            for (size_name, value_size) in SIZES {
                out.push(Combo {
                    index: out.len(),
                    shape: shape_with_specials(consolidation, split, value_size, TF, LIMIT),
                    type_name,
                    split_name,
                    size_name,
                });
            }
        }
    }
    out
}

/// (timestamp secs, value) for one combo; `Value::Special(n)` is sent as `@n`.
fn script(combo: &Combo, now: u64) -> Vec<(u64, Value)> {
    let max = combo.shape.value_size.max_value();
    let base = (now - 3 * 3600) / TF * TF;
    let mut s = vec![
        (base + 7, Value::Uint(10)),
        (base + 30, Value::Uint(25)),
        (base + 60, Value::Uint(4000)),
        (base + 61, Value::Uint(200)), // a small sum overflows here
        (base + 125, Value::Uint(7)),
        (base + 61, Value::Uint(3)), // out of order, still in the window
        (base + 150, Value::Special(1)),
        (base + 151, Value::Uint(9)), // replaces the weak special
        (base + 185, Value::Special(2)),
        (base + 186, Value::Uint(11)),   // the strong special sticks
        (base + 190, Value::Special(3)), // unknown special
        (base + 240, Value::Uint(max)),
        (base + 241, Value::Uint(max)), // sum overflow for every integer size
        (base + 300, Value::Uint(max.saturating_add(1))), // out of range for integers
        (base + 300 + 13 * TF + 17, Value::Uint(42)), // gap longer than the window
        (base + 300, Value::Uint(5)),   // now too old
        (base + 300 + 12 * TF, Value::Uint(6)),
        (base + 300 + 14 * TF + 59, Value::Uint(1_000_001)),
        (base + 300 + 15 * TF + 1, Value::Uint(0)),
    ];
    // Near the wall clock, and one sample far ahead that must be refused.
    s.push((now - 30, Value::Uint(77)));
    s.push((now - 29, Value::Uint(78)));
    s.push((now + 3600, Value::Uint(1)));
    s
}

fn config(combos: &[Combo]) -> String {
    let mut rules = String::from("snapshot: {interval: 1h}\nrules:\n");
    for c in combos {
        rules.push_str(&format!(
            "  - {{name: r{i}, prefix: k{i}, type: {}, timeframe: {TF}, limit: {LIMIT}, split: {}, value_size: {}, additional_values: [{{timeout: weak}}, {{error: strong}}]}}\n",
            c.type_name,
            c.split_name,
            c.size_name,
            i = c.index
        ));
    }
    rules
}

fn line(path: &str, ts: u64, v: Value) -> String {
    match v {
        Value::Special(n) => format!("{path} {ts} @{n}\n"),
        Value::Uint(n) => format!("{path} {ts} {n}\n"),
        Value::Float(_) => unreachable!("the socket protocol carries integers"),
    }
}

fn expected_json(e: &Expected, shape: &Shape) -> Json {
    match e {
        Expected::Empty => Json::from("empty"),
        Expected::Special(name) => Json::from(name.as_str()),
        Expected::Uint(v) => Json::from(*v),
        Expected::Float(v) if shape.value_size.is_integer() => Json::from(v.round() as u64),
        Expected::Float(v) => Json::from(*v),
    }
}

fn same(got: &Json, want: &Json) -> bool {
    match (got.as_f64(), want.as_f64()) {
        (Some(a), Some(b)) => a == b || ((a - b) / b).abs() < 1e-12,
        _ => got == want,
    }
}

fn build_c_client() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/c");
    let out = Command::new("make")
        .arg("-C")
        .arg(&dir)
        .output()
        .expect("run make");
    assert!(
        out.status.success(),
        "building the C client failed (needs gcc and libssl-dev):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("ringdb_send")
}

fn run_client(d: &Daemon, program: &mut Command, input: &Path) {
    let (cert, key) = d.pki.client_files("client");
    let out = program
        .args([
            "--host",
            "127.0.0.1",
            "--server-name",
            "localhost",
            "--port",
        ])
        .arg(d.socket.port().to_string())
        .arg("--ca")
        .arg(d.pki.file("ca.pem"))
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg(input)
        .output()
        .expect("run client");
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn both_clients_match_the_model_for_every_kind() {
    let combos = combos();
    let d = Daemon::start(&config(&combos));
    let now = now_secs();
    let c_client = build_c_client();

    let mut inputs = [String::new(), String::new()];
    let mut models = Vec::new();
    let mut sent = 0.0;
    for c in &combos {
        let path = format!("k{}-x", c.index);
        let mut model = Model::new(&c.shape);
        for (ts, v) in script(c, now) {
            inputs[c.index % 2].push_str(&line(&path, ts, v));
            sent += 1.0;
            if ts <= now + 600 {
                let _ = model.update(ts * 1000, v);
            }
        }
        models.push((path, model));
    }
    let py_input = d.dir.path().join("python.txt");
    let c_input = d.dir.path().join("c.txt");
    std::fs::write(&py_input, &inputs[0]).unwrap();
    std::fs::write(&c_input, &inputs[1]).unwrap();
    let script_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ringdb_client.py");
    run_client(&d, Command::new("python3").arg(script_path), &py_input);
    run_client(&d, &mut Command::new(&c_client), &c_input);

    // Every frame is either accepted or rejected with a reason.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, text) = d.get("/metrics");
        let counted: f64 = text
            .lines()
            .filter(|l| l.starts_with("ringdb_samples_") && l.contains("protocol=\"socket\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if counted >= sent || std::time::Instant::now() > deadline {
            assert_eq!(counted, sent, "every frame is counted once");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        d.metric("ringdb_samples_rejected_total{protocol=\"socket\",reason=\"too_far_future\"}"),
        combos.len() as f64
    );

    let mut mismatches = Vec::new();
    for (c, (path, model)) in combos.iter().zip(&models) {
        let newest = model.newest_bucket().expect("model saw samples");
        let (from, to) = (newest - u64::from(LIMIT) - 2, newest + 2);
        let answer = d.get_json(
            &format!(
                "/paths/{path}/r{}/slice?from={}&to={}",
                c.index,
                from * TF,
                to * TF
            ),
            200,
        );
        let rows = answer["answer"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: {answer}"));
        let want = model.slice(from, to);
        assert_eq!(rows.len(), want.len(), "{path}: row count");
        for (row, (bucket, e)) in rows.iter().zip(&want) {
            let want_json = expected_json(e, &c.shape);
            if row[0] != bucket * TF || !same(&row[1], &want_json) {
                mismatches.push(format!(
                    "{} {} {} ({path}) bucket {}: got {}, model {}",
                    c.type_name,
                    c.split_name,
                    c.size_name,
                    bucket * TF,
                    row,
                    want_json
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

//! Writers under a heavy query loop (figures only: the times are printed,
//! not asserted). A query must copy what it reads under a shard's lock and
//! compute after releasing it, so a write to that shard waits for a copy,
//! not for the query. Run with
//! `cargo test --release --test it read_locks -- --ignored --nocapture`;
//! `RINGDB_RL_SERIES` overrides the number of series (10,000).

use ringdb::query::engine::{parse, Engine};
use ringdb::store::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const STEP_SECS: u64 = 15;
const T0_MS: i64 = 1_700_000_100_000;
/// One hour of samples, then writes continue after it.
const SPAN_MS: i64 = 3_600_000;
const METRIC: &str = "bench_metric_0";

fn labels_of(i: usize) -> Vec<(String, String)> {
    vec![
        ("__name__".into(), METRIC.into()),
        ("instance".into(), format!("host-{i:05}:9100")),
        ("job".into(), "node".into()),
    ]
}

fn build_store(n: usize) -> Store {
    let store =
        crate::common::float_store(STEP_SECS, (2 * SPAN_MS as u64 / 1000 / STEP_SECS) as u32);
    for i in 0..n {
        let samples: Vec<(i64, f64)> = (0..=SPAN_MS / 1000 / STEP_SECS as i64)
            .map(|k| {
                (
                    T0_MS + k * STEP_SECS as i64 * 1000,
                    (k * (1 + i as i64 % 7)) as f64,
                )
            })
            .collect();
        crate::common::write_labelled(&store, &labels_of(i), &samples);
    }
    store
}

fn percentiles(mut ms: Vec<f64>) -> (f64, f64, f64) {
    if ms.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), at(1.0))
}

/// Write latencies (ms) of one write every millisecond for `run`, to the
/// series in turn.
fn write_loop(store: &Store, n: usize, run: Duration) -> Vec<f64> {
    let mut out = Vec::new();
    let until = Instant::now() + run;
    let mut k = 0usize;
    while Instant::now() < until {
        let i = k % n;
        let t = T0_MS + SPAN_MS + STEP_SECS as i64 * 1000 * (1 + (k / n) as i64);
        let started = Instant::now();
        crate::common::write_labelled(store, &labels_of(i), &[(t, k as f64)]);
        out.push(started.elapsed().as_secs_f64() * 1e3);
        k += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    out
}

#[test]
#[ignore = "timing figures; run with --release -- --ignored --nocapture"]
fn writers_under_query_load() {
    let n: usize = std::env::var("RINGDB_RL_SERIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let store = build_store(n);
    let run = Duration::from_secs(10);
    let (idle_p50, idle_p99, idle_max) = percentiles(write_loop(&store, n, run / 2));
    let stop = AtomicBool::new(false);
    let (writes, queries) = std::thread::scope(|scope| {
        let querier = scope.spawn(|| {
            let source = ringdb::query::source::StoreSource {
                store: &store,
                grant: &ringdb::access::Grant::All,
                max_samples: usize::MAX,
            };
            let engine = Engine::default();
            let expr = parse(&format!("sum(rate({METRIC}[5m]))")).expect("query parses");
            let end = T0_MS + SPAN_MS;
            let mut times = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                engine
                    .range(&source, &expr, end - SPAN_MS, end, 60_000)
                    .expect("query runs");
                times.push(started.elapsed().as_secs_f64() * 1e3);
            }
            times
        });
        let writes = write_loop(&store, n, run);
        stop.store(true, Ordering::Relaxed);
        (writes, querier.join().expect("query thread"))
    });
    let (p50, p99, max) = percentiles(writes);
    let queries_run = queries.len();
    let (q50, q99, _) = percentiles(queries);
    println!(
        "read_locks: {n} series; write ms idle p50 {idle_p50:.3} p99 {idle_p99:.3} max {idle_max:.3}; \
         under a sum(rate[5m]) 1h/60s query loop p50 {p50:.3} p99 {p99:.3} max {max:.3}; \
         {queries_run} queries, p50 {q50:.1} ms p99 {q99:.1} ms"
    );
}

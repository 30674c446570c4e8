//! Speed of a Grafana-style range query over a real store (figures only;
//! the result is checked, the time is not). Run with
//! `cargo test --release --test it query_speed -- --ignored --nocapture`;
//! `RINGDB_QS_SERIES` overrides the number of series (10,000).

use std::time::Instant;

use ringdb::query::engine::{parse, Engine, Value};
use ringdb::store::Store;

const STEP_SECS: u64 = 15;
/// First sample (ms), a multiple of the 15 s timeframe.
const T0_MS: i64 = 1_700_000_100_000;
/// 1 h + 10 min of samples.
const SPAN_MS: i64 = 70 * 60 * 1000;
const METRIC: &str = "bench_metric_0";

/// The raw samples of series `i`: a counter with a per-series slope, a
/// little jitter and, for every 7th series, a reset half-way.
fn samples_of(i: usize) -> Vec<(i64, f64)> {
    let slope = 1.0 + (i % 13) as f64 * 0.37;
    let mut out = Vec::new();
    let mut v = (i % 101) as f64;
    let mut t = T0_MS;
    let mut k = 0u64;
    while t <= T0_MS + SPAN_MS {
        if i.is_multiple_of(7) && k == 140 {
            v = 0.5;
        }
        out.push((t, v));
        v += slope * 15.0 + ((k * 31 + i as u64) % 5) as f64 * 0.25;
        t += STEP_SECS as i64 * 1000;
        k += 1;
    }
    out
}

fn labels_of(i: usize) -> Vec<(String, String)> {
    vec![
        ("__name__".into(), METRIC.into()),
        ("instance".into(), format!("host-{i:05}:9100")),
        ("job".into(), "node".into()),
    ]
}

fn build_store(n: usize) -> Store {
    let store =
        crate::common::float_store(STEP_SECS, (SPAN_MS as u64 / 1000 / STEP_SECS + 2) as u32);
    for i in 0..n {
        let refused = crate::common::write_labelled(&store, &labels_of(i), &samples_of(i));
        assert_eq!(refused, 0, "series {i}: samples refused");
    }
    store
}

/// Prometheus 2.42's extrapolated `rate`, written out plainly.
fn reference_rate(samples: &[(i64, f64)], t: i64, range_ms: i64) -> Option<f64> {
    let start = t - range_ms;
    let w: Vec<(i64, f64)> = samples
        .iter()
        .copied()
        .filter(|(ts, _)| *ts >= start && *ts <= t)
        .collect();
    if w.len() < 2 {
        return None;
    }
    let (ft, fv) = w[0];
    let (lt, lv) = w[w.len() - 1];
    let mut result = lv - fv;
    for p in w.windows(2) {
        if p[1].1 < p[0].1 {
            result += p[0].1;
        }
    }
    let mut to_start = (ft - start) as f64 / 1000.0;
    let to_end = (t - lt) as f64 / 1000.0;
    let sampled = (lt - ft) as f64 / 1000.0;
    let avg = sampled / (w.len() - 1) as f64;
    if result > 0.0 && fv >= 0.0 {
        to_start = to_start.min(sampled * (fv / result));
    }
    let mut ext = sampled;
    ext += if to_start < avg * 1.1 {
        to_start
    } else {
        avg / 2.0
    };
    ext += if to_end < avg * 1.1 {
        to_end
    } else {
        avg / 2.0
    };
    Some(result * ext / sampled / (range_ms as f64 / 1000.0))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn percentiles(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(|a, b| a.partial_cmp(b).expect("no NaN timings"));
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// FNV-1a over the result's timestamps and value bits: any change in the
/// numbers changes it.
fn fingerprint(points: &[(i64, f64)]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for (t, v) in points {
        for b in t.to_le_bytes().into_iter().chain(v.to_bits().to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

#[test]
#[ignore = "timing figures; run with --release -- --ignored --nocapture"]
fn query_speed_sum_rate() {
    let n: usize = std::env::var("RINGDB_QS_SERIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let t_build = Instant::now();
    let store = build_store(n);
    println!(
        "query_speed: {n} series stored in {:.0} ms",
        t_build.elapsed().as_secs_f64() * 1e3
    );
    let source = ringdb::query::source::StoreSource {
        store: &store,
        grant: &ringdb::access::Grant::All,
        max_samples: usize::MAX,
    };
    let engine = Engine::default();
    let raw: Vec<Vec<(i64, f64)>> = (0..n).map(samples_of).collect();
    let end = T0_MS + SPAN_MS;
    let start = end - 3_600_000;
    let step = 60_000;
    let range_ms = 300_000;

    // sum(rate(...)) over the range: checked against the plain computation.
    let sum_rate = parse(&format!("sum(rate({METRIC}[5m]))")).expect("parses");
    let check_range = |v: &Value| {
        let Value::Matrix(m) = v else {
            panic!("range result not a matrix: {v:?}")
        };
        assert_eq!(m.len(), 1, "one output series");
        assert!(m[0].labels.is_empty(), "sum() has no labels");
        assert_eq!(m[0].points.len(), 61, "61 steps");
        for (k, (t, got)) in m[0].points.iter().enumerate() {
            assert_eq!(*t, start + k as i64 * step);
            let want: f64 = raw
                .iter()
                .filter_map(|s| reference_rate(s, *t, range_ms))
                .sum();
            assert!(close(*got, want), "step {t}: got {got}, want {want}");
        }
        let fp = fingerprint(&m[0].points);
        println!("query_speed: result fingerprint {fp:#x}");
        if n == 10_000 {
            // The exact figures ringdb gave before the speed work.
            assert_eq!(fp, EXPECTED_10K_FINGERPRINT, "result bits changed");
        }
    };
    let mut times = Vec::new();
    for i in 0..20 {
        let t0 = Instant::now();
        let v = engine
            .range(&source, &sum_rate, start, end, step)
            .expect("range query");
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        if i == 0 {
            check_range(&v);
        }
    }
    let (p50, p99) = percentiles(times);
    println!("query_speed: range sum(rate({METRIC}[5m])) 1h/60s, {n} series: p50 {p50:.2} ms, p99 {p99:.2} ms");

    // Instant sum(rate(...)).
    let mut times = Vec::new();
    for i in 0..20 {
        let t0 = Instant::now();
        let v = engine
            .instant(&source, &sum_rate, end)
            .expect("instant query");
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        if i == 0 {
            let Value::Vector(vs) = &v else {
                panic!("not a vector: {v:?}")
            };
            assert_eq!(vs.len(), 1);
            let want: f64 = raw
                .iter()
                .filter_map(|s| reference_rate(s, end, range_ms))
                .sum();
            assert!(close(vs[0].v, want), "got {}, want {want}", vs[0].v);
        }
    }
    let (p50, p99) = percentiles(times);
    println!("query_speed: instant sum(rate({METRIC}[5m])), {n} series: p50 {p50:.2} ms, p99 {p99:.2} ms");

    // Instant rate(...): one sample per series, `__name__` dropped.
    let rate = parse(&format!("rate({METRIC}[5m])")).expect("parses");
    let mut times = Vec::new();
    for i in 0..20 {
        let t0 = Instant::now();
        let v = engine.instant(&source, &rate, end).expect("instant query");
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        if i == 0 {
            let Value::Vector(vs) = &v else {
                panic!("not a vector: {v:?}")
            };
            assert_eq!(vs.len(), n);
            let mut seen = vec![false; n];
            for s in vs {
                assert_eq!(s.labels.len(), 2, "labels {:?}", s.labels);
                assert_eq!(s.labels[1], ("job".to_string(), "node".to_string()));
                let inst = &s.labels[0];
                assert_eq!(inst.0, "instance");
                let i: usize = inst.1["host-".len().."host-00000".len()]
                    .parse()
                    .expect("instance number");
                assert!(!seen[i], "series {i} twice");
                seen[i] = true;
                let want = reference_rate(&raw[i], end, range_ms).expect("has samples");
                assert!(close(s.v, want), "series {i}: got {}, want {want}", s.v);
            }
        }
    }
    let (p50, p99) = percentiles(times);
    println!(
        "query_speed: instant rate({METRIC}[5m]), {n} series: p50 {p50:.2} ms, p99 {p99:.2} ms"
    );
}

/// [`fingerprint`] of the 10,000-series range result before the speed work.
const EXPECTED_10K_FINGERPRINT: u64 = 0xda50_ae51_bffc_4961;

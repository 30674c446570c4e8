//! Table-driven tests of the engine's tricky corners: lookback and
//! staleness, window edges, subquery alignment, `@`/offset in range
//! queries, limits, error kinds and planning (one select per selector).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::*;

const STALE: f64 = f64::from_bits(STALE_NAN_BITS);

/// One stored series: labels, samples, archive resolution.
type SeriesDef<'a> = (&'a [(&'a str, &'a str)], &'a [(i64, f64)], Option<i64>);

struct Mem {
    series: Vec<SeriesData>,
    calls: Mutex<Vec<(Vec<String>, i64, i64)>>,
}

impl Mem {
    fn new(series: &[SeriesDef]) -> Self {
        let series = series
            .iter()
            .map(|(labels, samples, res)| {
                let mut labels: Labels = labels
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect();
                labels.sort();
                SeriesData {
                    labels: labels.into(),
                    samples: samples.to_vec(),
                    resolution_ms: *res,
                }
            })
            .collect();
        Mem {
            series,
            calls: Mutex::new(Vec::new()),
        }
    }
}

impl Storage for Mem {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesData>, String> {
        let names = matchers.iter().map(|m| m.name.clone()).collect();
        self.calls
            .lock()
            .map_err(|e| e.to_string())?
            .push((names, start_ms, end_ms));
        Ok(self
            .series
            .iter()
            .filter(|s| {
                matchers
                    .iter()
                    .all(|m| m.matches_labels(&s.labels.to_vec()))
            })
            .map(|s| SeriesData {
                labels: s.labels.clone(),
                samples: s
                    .samples
                    .iter()
                    .copied()
                    .filter(|(t, _)| *t >= start_ms && *t <= end_ms)
                    .collect(),
                resolution_ms: s.resolution_ms,
            })
            .collect())
    }
}

fn engine() -> Engine {
    Engine {
        timeout: None,
        ..Engine::default()
    }
}

fn instant(storage: &Mem, q: &str, t: i64) -> Result<Value, EngineError> {
    let expr = parse(q)?;
    engine().instant(storage, &expr, t)
}

/// The instant result as (labels rendered, value) pairs; a scalar is `("", v)`.
fn flat(v: Value) -> Vec<(String, f64)> {
    let render = |l: &Labels| {
        l.iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    match v {
        Value::Scalar(_, x) => vec![(String::new(), x)],
        Value::Vector(s) => s.iter().map(|s| (render(&s.labels), s.v)).collect(),
        Value::Matrix(m) => m
            .iter()
            .flat_map(|s| s.points.iter().map(move |p| (render(&s.labels), p.1)))
            .collect(),
        Value::String(_, s) => vec![(s, f64::NAN)],
    }
}

#[test]
fn instant_selector_lookback_and_staleness() {
    struct Case {
        name: &'static str,
        samples: &'static [(i64, f64)],
        resolution_ms: Option<i64>,
        at_ms: i64,
        want: Option<f64>,
    }
    let cases = [
        Case {
            name: "latest sample",
            samples: &[(0, 1.0), (10_000, 2.0)],
            resolution_ms: None,
            at_ms: 15_000,
            want: Some(2.0),
        },
        Case {
            name: "lookback edge is inclusive",
            samples: &[(0, 1.0)],
            resolution_ms: None,
            at_ms: 300_000,
            want: Some(1.0),
        },
        Case {
            name: "past lookback",
            samples: &[(0, 1.0)],
            resolution_ms: None,
            at_ms: 300_001,
            want: None,
        },
        Case {
            name: "stale marker ends series",
            samples: &[(0, 1.0), (10_000, STALE)],
            resolution_ms: None,
            at_ms: 15_000,
            want: None,
        },
        Case {
            name: "sample after stale",
            samples: &[(0, 1.0), (10_000, STALE), (20_000, 3.0)],
            resolution_ms: None,
            at_ms: 25_000,
            want: Some(3.0),
        },
        Case {
            name: "ordinary NaN is a value",
            samples: &[(0, f64::NAN)],
            resolution_ms: None,
            at_ms: 1,
            want: Some(f64::NAN),
        },
        Case {
            name: "coarse archive widens lookback",
            samples: &[(0, 7.0)],
            resolution_ms: Some(3_600_000),
            at_ms: 3_000_000,
            want: Some(7.0),
        },
        Case {
            name: "coarse archive lookback still ends",
            samples: &[(0, 7.0)],
            resolution_ms: Some(3_600_000),
            at_ms: 3_600_001,
            want: None,
        },
        Case {
            name: "before first sample",
            samples: &[(10_000, 1.0)],
            resolution_ms: None,
            at_ms: 5_000,
            want: None,
        },
    ];
    for c in cases {
        let mem = Mem::new(&[(&[("__name__", "m")], c.samples, c.resolution_ms)]);
        let got =
            flat(instant(&mem, "m", c.at_ms).unwrap_or_else(|e| panic!("case {}: {e}", c.name)));
        match c.want {
            None => assert!(got.is_empty(), "case {}: got {got:?}", c.name),
            Some(w) => {
                assert_eq!(got.len(), 1, "case {}: got {got:?}", c.name);
                assert!(
                    got[0].1 == w || (w.is_nan() && got[0].1.is_nan()),
                    "case {}: got {got:?}",
                    c.name
                );
            }
        }
    }
}

#[test]
fn expressions() {
    struct Case {
        name: &'static str,
        query: &'static str,
        at_ms: i64,
        want: &'static [(&'static str, f64)],
    }
    // m: 0,1,2,... every 10s from 0 to 600s; n{a="x"} 10 at 0 and 60s.
    let m: Vec<(i64, f64)> = (0..=60).map(|i| (i * 10_000, i as f64)).collect();
    let mem = Mem::new(&[
        (&[("__name__", "m")], &m, None),
        (
            &[("__name__", "n"), ("a", "x")],
            &[(0, 10.0), (60_000, 10.0)],
            None,
        ),
        (
            &[("__name__", "c"), ("a", "x")],
            &[(0, 1.0), (10_000, 1.0), (20_000, 1.0)],
            None,
        ),
        (
            &[("__name__", "c"), ("a", "y")],
            &[(0, 2.0), (10_000, 2.0), (20_000, 2.0)],
            None,
        ),
    ]);
    let cases = [
        Case {
            name: "range selector closed at both ends",
            query: "count_over_time(m[30s])",
            at_ms: 60_000,
            want: &[("", 4.0)],
        },
        Case {
            name: "offset",
            query: "m offset 1m",
            at_ms: 120_000,
            want: &[("__name__=m", 6.0)],
        },
        Case {
            name: "negative offset",
            query: "m offset -1m",
            at_ms: 0,
            want: &[("__name__=m", 6.0)],
        },
        Case {
            name: "at pins time",
            query: "m @ 30",
            at_ms: 500_000,
            want: &[("__name__=m", 3.0)],
        },
        Case {
            name: "at start() in instant query",
            query: "m @ start()",
            at_ms: 70_000,
            want: &[("__name__=m", 7.0)],
        },
        Case {
            name: "subquery aligned to step",
            query: "count_over_time(m[1m:20s])",
            at_ms: 70_000,
            want: &[("", 3.0)],
        },
        Case {
            name: "subquery includes left edge",
            query: "count_over_time(m[1m:20s])",
            at_ms: 80_000,
            want: &[("", 4.0)],
        },
        Case {
            name: "rate extrapolates",
            query: "rate(m[1m])",
            at_ms: 120_000,
            want: &[("", 0.1)],
        },
        Case {
            name: "unary minus drops name",
            query: "-m",
            at_ms: 10_000,
            want: &[("", -1.0)],
        },
        Case {
            name: "comparison keeps name",
            query: "m > 0",
            at_ms: 10_000,
            want: &[("__name__=m", 1.0)],
        },
        Case {
            name: "bool drops name",
            query: "m > bool 5",
            at_ms: 10_000,
            want: &[("", 0.0)],
        },
        Case {
            name: "scalar comparison with bool",
            query: "1 < bool 2",
            at_ms: 0,
            want: &[("", 1.0)],
        },
        Case {
            name: "on() one-to-one",
            query: "m + on() n",
            at_ms: 10_000,
            want: &[("", 11.0)],
        },
        Case {
            name: "group_left copies labels",
            query: "m * on() group_left(a) n",
            at_ms: 10_000,
            want: &[("a=x", 10.0)],
        },
        Case {
            name: "or fills from rhs",
            query: "n or m",
            at_ms: 10_000,
            want: &[("__name__=n,a=x", 10.0), ("__name__=m", 1.0)],
        },
        Case {
            name: "unless",
            query: "c unless on(a) n",
            at_ms: 10_000,
            want: &[("__name__=c,a=y", 2.0)],
        },
        Case {
            name: "count_values formats like Go",
            query: "count_values(\"v\", c / 4)",
            at_ms: 10_000,
            want: &[("v=0.25", 1.0), ("v=0.5", 1.0)],
        },
        Case {
            name: "topk orders descending",
            query: "topk(2, c)",
            at_ms: 10_000,
            want: &[("__name__=c,a=y", 2.0), ("__name__=c,a=x", 1.0)],
        },
        Case {
            name: "quantile interpolates",
            query: "quantile(0.5, c)",
            at_ms: 10_000,
            want: &[("", 1.5)],
        },
        Case {
            name: "label_replace",
            query: "label_replace(n, \"b\", \"$1-z\", \"a\", \"(.*)\")",
            at_ms: 0,
            want: &[("__name__=n,a=x,b=x-z", 10.0)],
        },
        Case {
            name: "absent labels from equality matchers",
            query: "absent(nope{a=\"1\", b=~\"x\"})",
            at_ms: 0,
            want: &[("a=1", 1.0)],
        },
        Case {
            name: "timestamp of sample, not eval time",
            query: "timestamp(n)",
            at_ms: 30_000,
            want: &[("a=x", 0.0)],
        },
        Case {
            name: "day_of_week of epoch is Thursday",
            query: "day_of_week(vector(0))",
            at_ms: 0,
            want: &[("", 4.0)],
        },
        Case {
            name: "days_in_month leap February",
            query: "days_in_month(vector(951782400))",
            at_ms: 0,
            want: &[("", 29.0)],
        },
        Case {
            name: "holt_winters parses",
            query: "holt_winters(m[1m], 0.5, 0.5)",
            at_ms: 60_000,
            want: &[("", 6.0)],
        },
        Case {
            name: "clamp_max keeps NaN",
            query: "clamp_max(vector(NaN), 1)",
            at_ms: 0,
            want: &[("", f64::NAN)],
        },
    ];
    for c in cases {
        let got = flat(
            instant(&mem, c.query, c.at_ms).unwrap_or_else(|e| panic!("case {}: {e}", c.name)),
        );
        let ok = got.len() == c.want.len()
            && got.iter().zip(c.want.iter()).all(|(g, w)| {
                g.0 == w.0
                    && (w.1.is_nan() && g.1.is_nan()
                        || (g.1 - w.1).abs() <= 1e-9 * w.1.abs().max(1.0))
            });
        assert!(ok, "case {}: got {got:?}, want {:?}", c.name, c.want);
    }
}

#[test]
fn range_queries() {
    struct Case {
        name: &'static str,
        query: &'static str,
        want: &'static [(&'static str, &'static [(i64, f64)])],
    }
    let m: Vec<(i64, f64)> = (0..=10).map(|i| (i * 60_000, i as f64)).collect();
    let mem = Mem::new(&[(&[("__name__", "m")], &m, None)]);
    let cases = [
        Case {
            name: "every step",
            query: "m",
            want: &[("m", &[(60_000, 1.0), (120_000, 2.0), (180_000, 3.0)])],
        },
        Case {
            name: "scalar",
            query: "time()",
            want: &[("", &[(60_000, 60.0), (120_000, 120.0), (180_000, 180.0)])],
        },
        Case {
            name: "at end() is step invariant",
            query: "m @ end()",
            want: &[("m", &[(60_000, 3.0), (120_000, 3.0), (180_000, 3.0)])],
        },
        Case {
            name: "offset shifts each step",
            query: "m offset 1m",
            want: &[("m", &[(60_000, 0.0), (120_000, 1.0), (180_000, 2.0)])],
        },
    ];
    for c in cases {
        let expr = parse(c.query).unwrap_or_else(|e| panic!("case {}: {e}", c.name));
        let got = engine()
            .range(&mem, &expr, 60_000, 180_000, 60_000)
            .unwrap_or_else(|e| panic!("case {}: {e}", c.name));
        let Value::Matrix(series) = got else {
            panic!("case {}: not a matrix", c.name)
        };
        let got: Vec<(String, Vec<(i64, f64)>)> = series
            .into_iter()
            .map(|s| {
                (
                    s.labels
                        .iter()
                        .map(|(_, v)| v.clone())
                        .collect::<Vec<_>>()
                        .join(","),
                    s.points,
                )
            })
            .collect();
        let want: Vec<(String, Vec<(i64, f64)>)> = c
            .want
            .iter()
            .map(|(l, p)| (l.to_string(), p.to_vec()))
            .collect();
        assert_eq!(got, want, "case {}", c.name);
    }
}

#[test]
fn errors_map_to_prometheus_kinds() {
    struct Case {
        name: &'static str,
        query: &'static str,
        range: bool,
        want_type: &'static str,
    }
    let mem = Mem::new(&[
        (&[("__name__", "a"), ("x", "1")], &[(0, 1.0)], None),
        (&[("__name__", "b"), ("x", "1")], &[(0, 1.0)], None),
        (
            &[("__name__", "c"), ("x", "1"), ("y", "1")],
            &[(0, 1.0)],
            None,
        ),
        (
            &[("__name__", "c"), ("x", "1"), ("y", "2")],
            &[(0, 1.0)],
            None,
        ),
    ]);
    let cases = [
        Case {
            name: "parse error",
            query: "sum(",
            range: false,
            want_type: "bad_data",
        },
        Case {
            name: "range query over a range vector",
            query: "a[5m]",
            range: true,
            want_type: "bad_data",
        },
        Case {
            name: "many-to-many",
            query: "a + on(x) c",
            range: false,
            want_type: "execution",
        },
        Case {
            name: "duplicate labelset after dropping name",
            query: "ceil({x=\"1\", __name__=~\"a|b\"})",
            range: false,
            want_type: "execution",
        },
        Case {
            name: "bad label_replace regex",
            query: "label_replace(a, \"d\", \"\", \"x\", \"(\")",
            range: false,
            want_type: "execution",
        },
    ];
    for c in cases {
        let res = parse(c.query).and_then(|e| {
            if c.range {
                engine().range(&mem, &e, 0, 60_000, 10_000)
            } else {
                engine().instant(&mem, &e, 0)
            }
        });
        let err = res.expect_err(c.name);
        assert_eq!(err.error_type(), c.want_type, "case {}: {err}", c.name);
    }
}

#[test]
fn limits() {
    let m: Vec<(i64, f64)> = (0..100).map(|i| (i * 1000, 1.0)).collect();
    let mem = Mem::new(&[(&[("__name__", "m")], &m, None)]);
    let expr = parse("sum_over_time(m[1m])").unwrap();
    let small = Engine {
        max_samples: 10,
        ..engine()
    };
    let err = small.instant(&mem, &expr, 99_000).unwrap_err();
    assert_eq!(
        err.to_string(),
        "query processing would load too many samples into memory in query execution (limits.max_query_samples)",
        "case too many samples"
    );
    assert_eq!(err.http_status(), 422, "case too many samples status");

    let past = Instant::now()
        .checked_sub(Duration::from_millis(1))
        .unwrap_or_else(Instant::now);
    let err = engine()
        .instant_with_deadline(&mem, &expr, 99_000, Some(past))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "query timed out in expression evaluation (limits.query_timeout)",
        "case deadline passed"
    );
    assert_eq!(err.http_status(), 503, "case deadline status");
}

#[test]
fn one_select_per_distinct_selector_with_full_window() {
    struct Case {
        name: &'static str,
        query: &'static str,
        start: i64,
        end: i64,
        want: &'static [(i64, i64)],
    }
    let cases = [
        Case {
            name: "instant selector: lookback",
            query: "m",
            start: 1_000_000,
            end: 1_000_000,
            want: &[(700_000, 1_000_000)],
        },
        Case {
            name: "same selector twice: one select",
            query: "m + m",
            start: 1_000_000,
            end: 1_000_000,
            want: &[(700_000, 1_000_000)],
        },
        Case {
            name: "range and offset",
            query: "rate(m[1m] offset 1m)",
            start: 1_000_000,
            end: 1_060_000,
            want: &[(880_000, 1_000_000)],
        },
        Case {
            name: "at pins the window",
            query: "m @ 100",
            start: 1_000_000,
            end: 2_000_000,
            want: &[(-200_000, 100_000)],
        },
        Case {
            name: "subquery widens",
            query: "max_over_time(m[10m:1m])",
            start: 1_000_000,
            end: 1_000_000,
            want: &[(100_000, 1_000_000)],
        },
    ];
    for c in cases {
        let mem = Mem::new(&[(&[("__name__", "m")], &[(0, 1.0)], None)]);
        let expr = parse(c.query).unwrap();
        if c.start == c.end {
            engine().instant(&mem, &expr, c.start).unwrap();
        } else {
            engine().range(&mem, &expr, c.start, c.end, 60_000).unwrap();
        }
        let calls: Vec<(i64, i64)> = mem
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| (c.1, c.2))
            .collect();
        assert_eq!(calls, c.want, "case {}", c.name);
    }
}

#[test]
fn go_float_formatting() {
    let cases = [
        ("integer", 2.0, "2"),
        ("fraction", 0.25, "0.25"),
        ("no exponent when large", 1e21, "1000000000000000000000"),
        ("no exponent when small", 1e-7, "0.0000001"),
        ("positive infinity", f64::INFINITY, "+Inf"),
        ("negative infinity", f64::NEG_INFINITY, "-Inf"),
        ("nan", f64::NAN, "NaN"),
    ];
    for (name, v, want) in cases {
        assert_eq!(functions::format_go_float(v), want, "case {name}");
    }
}

#[test]
fn ms_to_secs_is_the_division_bit_for_bit() {
    let cases: &[(&str, i64)] = &[
        ("zero", 0),
        ("whole seconds", 300_000),
        ("negative whole seconds", -15_000),
        ("fraction", 1_234),
        ("negative fraction", -999),
        ("timestamp", 1_700_000_100_000),
        ("largest exact", (1 << 53) - 1000 + 992),
        ("past 2^53, whole", 9_007_199_254_741_000),
        ("past 2^53, fraction", 9_007_199_254_740_993),
        ("min", i64::MIN),
        ("max", i64::MAX),
    ];
    for &(name, ms) in cases {
        assert_eq!(
            super::functions::ms_to_secs(ms).to_bits(),
            (ms as f64 / 1000.0).to_bits(),
            "case {name}: {ms} ms"
        );
    }
}

#[test]
fn extrapolation_is_prometheus_bit_for_bit() {
    use super::functions::{Extrapolation, WindowSpan};
    // Prometheus's extrapolatedRate: the increase (resets added for
    // counters), then its extrapolation spelled out (plain_extrapolation).
    fn plain(points: &[(i64, f64)], start: i64, end: i64, counter: bool, rate: bool) -> f64 {
        let (ft, fv) = points[0];
        let (lt, lv) = points[points.len() - 1];
        let mut result = lv - fv;
        if counter {
            for p in points.windows(2) {
                if p[1].1 < p[0].1 {
                    result += p[0].1;
                }
            }
        }
        plain_extrapolation(
            result,
            fv,
            ft - start,
            end - lt,
            lt - ft,
            points.len(),
            end - start,
            counter,
            rate,
        )
    }
    struct Case {
        name: &'static str,
        points: &'static [(i64, f64)],
        start: i64,
        end: i64,
    }
    let cases = [
        Case {
            name: "aligned",
            points: &[(15_000, 1.0), (30_000, 4.0), (45_000, 9.5)],
            start: 0,
            end: 60_000,
        },
        Case {
            name: "counter starts near zero",
            points: &[(1_000, 0.25), (16_000, 30.0), (31_000, 61.0)],
            start: 0,
            end: 40_000,
        },
        Case {
            name: "reset",
            points: &[(10_000, 50.0), (20_000, 3.0), (30_000, 9.0)],
            start: 5_000,
            end: 35_000,
        },
        Case {
            name: "fractional seconds",
            points: &[(1_234, 2.0), (17_001, 7.5)],
            start: 999,
            end: 20_333,
        },
        Case {
            name: "negative first value",
            points: &[(0, -4.0), (15_000, -1.0), (30_000, 2.0)],
            start: -7_000,
            end: 31_000,
        },
        Case {
            name: "first sample at the window's start",
            points: &[(0, 0.5), (15_000, 30.0), (30_000, 61.0)],
            start: 0,
            end: 30_000,
        },
        Case {
            name: "first value zero at the window's start",
            points: &[(60_000, 0.0), (75_000, 30.0), (90_000, 61.0)],
            start: 60_000,
            end: 95_000,
        },
        Case {
            name: "first value zero",
            points: &[(61_000, 0.0), (75_000, 30.0), (90_000, 61.0)],
            start: 60_000,
            end: 95_000,
        },
        Case {
            name: "zero just before the start",
            // durationToZero = 15 * (0.9 / 13.5) = 1.0, the start is 1 s away.
            points: &[(16_000, 0.9), (31_000, 14.4)],
            start: 15_000,
            end: 31_000,
        },
        Case {
            name: "large counter, small increase",
            points: &[(7_000, 1.795_719e6), (22_000, 1.795_719_015e6)],
            start: 0,
            end: 30_000,
        },
        Case {
            name: "tiny values",
            points: &[(1_000, 1e-310), (16_000, 3e-308)],
            start: 0,
            end: 20_000,
        },
        Case {
            name: "huge values",
            points: &[(1_000, 1e300), (16_000, 1.7e308)],
            start: 0,
            end: 20_000,
        },
    ];
    for c in &cases {
        let (ft, fv) = c.points[0];
        let lt = c.points[c.points.len() - 1].0;
        let span = WindowSpan::new(ft, lt, c.points.len(), c.start, c.end);
        for (counter, rate) in [(true, true), (true, false), (false, false)] {
            let want = plain(c.points, c.start, c.end, counter, rate);
            let mut result = c.points[c.points.len() - 1].1 - fv;
            if counter {
                for p in c.points.windows(2) {
                    if p[1].1 < p[0].1 {
                        result += p[0].1;
                    }
                }
            }
            let got = Extrapolation::new(span).apply(result, fv, counter, rate);
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "case {} (counter {counter}, rate {rate}): {got} != {want}",
                c.name
            );
        }
    }
}

#[test]
fn label_order_sorts_as_label_sets_compare() {
    let set = |pairs: &[(&str, &str)]| -> Labels {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    };
    struct Case {
        name: &'static str,
        sets: Vec<Labels>,
        distinct: bool,
    }
    let long = "host-0000000000000000000";
    let cases = [
        Case {
            name: "empty",
            sets: vec![],
            distinct: true,
        },
        Case {
            name: "one",
            sets: vec![set(&[("a", "1")])],
            distinct: true,
        },
        Case {
            name: "shared long prefix, differing late",
            sets: (0..40)
                .rev()
                .map(|i| set(&[("__name__", "m"), ("instance", &format!("{long}{i}"))]))
                .collect(),
            distinct: true,
        },
        Case {
            name: "prefixes of each other",
            sets: vec![
                set(&[("a", "1"), ("b", "2")]),
                set(&[("a", "1")]),
                set(&[]),
                set(&[("a", "")]),
                set(&[("a", "10")]),
            ],
            distinct: true,
        },
        Case {
            name: "zero bytes and low bytes",
            sets: vec![
                set(&[("a", "x\u{1}")]),
                set(&[("a", "x\0")]),
                set(&[("a", "x")]),
                set(&[("a", "x\0\0")]),
                set(&[("a\0", "")]),
                set(&[("a", "x"), ("\0", "")]),
            ],
            distinct: true,
        },
        Case {
            name: "names before values",
            sets: vec![set(&[("ab", "")]), set(&[("a", "b")]), set(&[("a", "c")])],
            distinct: true,
        },
        Case {
            name: "names around __name__, escaped values",
            sets: vec![
                set(&[("Zone", "b"), ("__name__", "m"), ("a", "q\"\\\n")]),
                set(&[("Zone", "b"), ("__name__", "m"), ("a", "q")]),
                set(&[("Zone", "a"), ("__name__", "n")]),
                set(&[("__name__", "m"), ("a", "q\"")]),
                set(&[("__name__", "m")]),
            ],
            distinct: true,
        },
        Case {
            name: "equal sets keep their order",
            sets: vec![
                set(&[("b", "1")]),
                set(&[("a", "1")]),
                set(&[("b", "1")]),
                set(&[("a", "1")]),
            ],
            distinct: false,
        },
    ];
    let order_of = |sets: &[SharedLabels]| {
        let mut keys = super::plan::LabelKeys::default();
        sets.iter().for_each(|s| keys.push_shared(s));
        keys.order()
    };
    // A set as a canonical series key, when it has one.
    let key_form = |set: &Labels| {
        let name = set
            .iter()
            .find(|(n, _)| n == "__name__")
            .map_or("", |(_, v)| v.as_str());
        let others = set.iter().filter(|(n, _)| n != "__name__");
        let key = crate::model::series_key(name, others.map(|(n, v)| (n.as_str(), v.as_str())));
        (crate::model::labels_of_series_key(&key).as_ref() == Some(set))
            .then(|| SharedLabels::Key(key.into()))
    };
    for case in cases {
        let shared: Vec<SharedLabels> = case.sets.iter().map(|s| s.clone().into()).collect();
        let got = order_of(&shared);
        let mut want: Vec<usize> = (0..case.sets.len()).collect();
        want.sort_by(|&a, &b| case.sets[a].cmp(&case.sets[b]));
        assert_eq!(got.order, want, "case {}: order", case.name);
        assert_eq!(got.distinct, case.distinct, "case {}: distinct", case.name);
        // The same sets handed out as canonical keys sort alike.
        let keyed: Option<Vec<SharedLabels>> = case.sets.iter().map(key_form).collect();
        if let Some(keyed) = keyed {
            assert_eq!(
                order_of(&keyed).order,
                want,
                "case {}: keyed order",
                case.name
            );
            for (k, set) in keyed.iter().zip(&case.sets) {
                assert_eq!(&k.to_vec(), set, "case {}: keyed labels", case.name);
            }
        }
        // Encoded in two parts (as a split selection does) and joined.
        let half = case.sets.len() / 2;
        let mut keys = super::plan::LabelKeys::default();
        let mut second = super::plan::LabelKeys::default();
        shared[..half].iter().for_each(|s| keys.push_shared(s));
        shared[half..].iter().for_each(|s| second.push_shared(s));
        keys.append(second);
        let joined = keys.order();
        assert_eq!(joined.order, want, "case {}: order in parts", case.name);
        assert_eq!(
            joined.distinct, case.distinct,
            "case {}: distinct in parts",
            case.name
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(2048))]

    /// The extrapolation's shortcuts (figures kept per span, the counter's
    /// zero ruled out without dividing) give Prometheus's bits, with
    /// values over the whole float range and windows of any alignment.
    #[test]
    fn extrapolation_shortcuts_are_bit_for_bit(
        to_start_ms in proptest::prop_oneof![proptest::strategy::Just(0i64), 0i64..20_000],
        to_end_ms in proptest::prop_oneof![proptest::strategy::Just(0i64), 0i64..20_000],
        sampled_ms in 1i64..400_000,
        n_points in 2usize..40,
        result in proptest::prop_oneof![
            proptest::num::f64::POSITIVE | proptest::num::f64::SUBNORMAL,
            0.0f64..1e3,
            proptest::num::f64::ANY,
        ],
        first_v in proptest::prop_oneof![
            proptest::num::f64::POSITIVE | proptest::num::f64::SUBNORMAL,
            0.0f64..1e3,
            proptest::num::f64::ANY,
        ],
        near_zero in proptest::bool::ANY,
        scale in 0.25f64..4.0,
    ) {
        use super::functions::{Extrapolation, WindowSpan};
        // Half the cases put the counter's zero about as far before the
        // first sample as the window's start, where the shortcut gives up.
        let first_v = if near_zero {
            result * (to_start_ms as f64 / sampled_ms as f64) * scale
        } else {
            first_v
        };
        let (start, first_t) = (0i64, to_start_ms);
        let last_t = first_t + sampled_ms;
        let end = last_t + to_end_ms;
        let span = WindowSpan::new(first_t, last_t, n_points, start, end);
        let ex = Extrapolation::new(span);
        for (counter, rate) in [(true, true), (true, false), (false, false)] {
            let want = plain_extrapolation(
                result, first_v, to_start_ms, to_end_ms, sampled_ms, n_points, end - start,
                counter, rate,
            );
            let got = ex.apply(result, first_v, counter, rate);
            proptest::prop_assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "counter {} rate {}: {} != {}", counter, rate, got, want
            );
        }
    }
}

/// Prometheus's extrapolation of `result` spelled out, from where the
/// window's samples sit in it.
#[allow(clippy::too_many_arguments)]
fn plain_extrapolation(
    result: f64,
    first_v: f64,
    to_start_ms: i64,
    to_end_ms: i64,
    sampled_ms: i64,
    n_points: usize,
    range_ms: i64,
    counter: bool,
    rate: bool,
) -> f64 {
    let mut to_start = to_start_ms as f64 / 1000.0;
    let to_end = to_end_ms as f64 / 1000.0;
    let sampled = sampled_ms as f64 / 1000.0;
    let avg = sampled / (n_points - 1) as f64;
    if counter && result > 0.0 && first_v >= 0.0 {
        let to_zero = sampled * (first_v / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
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
    let mut factor = ext / sampled;
    if rate {
        factor /= range_ms as f64 / 1000.0;
    }
    result * factor
}

/// The streamed fast path against the general evaluator, bit for bit, over
/// enough series and steps that its table spans many chunks and its sums
/// are split over threads: counters with resets, gaps, staleness markers
/// and values near zero, steps aligned and not with the samples.
#[test]
fn fast_path_is_the_general_path_bit_for_bit() {
    const N: usize = 2500;
    let labels: Vec<[(String, String); 3]> = (0..N)
        .map(|i| {
            [
                ("__name__".to_string(), "m".to_string()),
                // Label order unlike arrival order.
                ("instance".to_string(), format!("h{:04}", (i * 7919) % N)),
                ("grp".to_string(), ["a", "b", "c"][i % 3].to_string()),
            ]
        })
        .collect();
    let samples: Vec<Vec<(i64, f64)>> = (0..N)
        .map(|i| {
            let mut v = (i % 5) as f64 * 0.1;
            (0..280i64)
                .filter(|k| i % 11 != 0 || k % 9 != 4)
                .map(|k| {
                    v += 1.0 + ((k as usize * 31 + i) % 7) as f64 * 0.37;
                    if i % 7 == 0 && k == 140 {
                        v = 0.25;
                    }
                    // Runs of series sampled at the same times.
                    let at = 1_000 * ((i / 100) % 3) as i64 + k * 15_000;
                    match i % 13 == 0 && k % 50 == 7 {
                        true => (at, STALE),
                        false => (at, v),
                    }
                })
                .collect()
        })
        .collect();
    let pairs: Vec<Vec<(&str, &str)>> = labels
        .iter()
        .map(|l| l.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect())
        .collect();
    let defs: Vec<SeriesDef> = pairs
        .iter()
        .zip(&samples)
        .map(|(l, s)| (l.as_slice(), s.as_slice(), Some(15_000)))
        .collect();
    let mem = Mem::new(&defs);
    let engine = engine();
    let queries = [
        "sum(rate(m[5m]))",
        "sum by (grp) (rate(m[5m]))",
        "avg without (instance) (increase(m[5m]))",
        "stddev by (grp) (irate(m[1m]))",
        "rate(m[5m])",
    ];
    // (start, end, step): aligned with the samples, and not.
    let ranges = [(600_000, 4_200_000, 60_000), (601_234, 4_000_000, 45_000)];
    for q in queries {
        let expr = parse(q).expect("parses");
        for (start, end, step) in ranges {
            let fast = engine
                .range(&mem, &expr, start, end, step)
                .expect("fast path");
            let general = eval::Evaluator::new(&engine, &mem, &expr, start, end, step, None)
                .and_then(|ev| ev.run_range(&expr, start, end, step))
                .expect("general path");
            let (Value::Matrix(fast), Value::Matrix(general)) = (fast, general) else {
                panic!("{q}: not matrices");
            };
            assert_eq!(fast.len(), general.len(), "{q} from {start}: series");
            for (f, g) in fast.iter().zip(&general) {
                assert_eq!(f.labels, g.labels, "{q} from {start}: labels");
                let bits = |s: &Series| -> Vec<(i64, u64)> {
                    s.points.iter().map(|(t, v)| (*t, v.to_bits())).collect()
                };
                assert_eq!(bits(f), bits(g), "{q} from {start}: {:?}", f.labels);
            }
        }
    }
}

/// The deepest queries `limits.max_query_depth` can let through (its
/// config bound, 1024) parse, evaluate (instant and range), prettify and
/// drop on the query stack, in a debug build, for every shape that used to
/// overflow; one level more is refused before the parser.
#[test]
fn deepest_allowed_queries_run_on_the_query_stack() {
    let x: Vec<(i64, f64)> = (0..=60).map(|i| (i * 10_000, 2.0)).collect();
    let mem = Mem::new(&[(&[("__name__", "x")], &x, None)]);
    let limits = QueryLimits {
        max_query_bytes: 16 << 20,
        max_query_depth: 1024,
    };
    // Nested subqueries multiply their steps: the deadline or the sample
    // limit ends them, which is all this needs.
    let quick = Engine {
        timeout: Some(Duration::from_secs(1)),
        max_samples: 1_000_000,
        ..engine()
    };
    for shape in super::guard::tests::SHAPES {
        // The largest nesting the text check lets through.
        let n = (1..=1024)
            .rev()
            .find(|&n| check_text(&super::guard::tests::nested(shape, n), &limits).is_ok())
            .expect("some nesting passes");
        let q = super::guard::tests::nested(shape, n);
        let started = Instant::now();
        let bound = check_text(&q, &limits).expect("passes");
        assert!(
            bound > super::guard::INLINE_DEPTH,
            "case {shape}: runs on its own thread"
        );
        let out = on_query_stack(bound, || {
            let expr = parse_with(&q, &limits)?;
            let pretty = expr.prettify();
            let instant = quick.instant(&mem, &expr, 600_000);
            let range = quick.range(&mem, &expr, 0, 600_000, 60_000);
            drop(expr);
            Ok((pretty.len(), instant, range))
        });
        let (pretty_len, instant, range) = out.unwrap_or_else(|e| panic!("case {shape} {n}: {e}"));
        for (what, r) in [("instant", instant), ("range", range)] {
            match r {
                Ok(_) | Err(EngineError::TooManySamples(_)) | Err(EngineError::Timeout(_)) => {}
                Err(e) => panic!("case {shape} {n} {what}: {e}"),
            }
        }
        println!(
            "{shape}: nesting {n}, formatted {pretty_len} bytes, parse+eval+format in {:?}",
            started.elapsed()
        );
        let deeper = super::guard::tests::nested(shape, n + 1);
        let err = parse_with(&deeper, &limits).expect_err(shape);
        assert!(
            err.to_string().contains("limits.max_query_depth"),
            "case {shape} {}: {err}",
            n + 1
        );
    }
}

/// A subquery's points count against the sample limit at every inner step:
/// `count_over_time(vector(1)[1y:1ms])` (3.15e10 points) is refused when
/// it reaches the limit, not evaluated to the deadline first.
#[test]
fn subquery_points_are_limited_as_they_grow() {
    let mem = Mem::new(&[]);
    let x: Vec<(i64, f64)> = (0..=360).map(|i| (i * 10_000, 1.0)).collect();
    let one = Mem::new(&[(&[("__name__", "x")], &x, None)]);
    let small = Engine {
        max_samples: 200_000,
        // The refusal must come from the limit, long before this.
        timeout: Some(Duration::from_secs(60)),
        ..engine()
    };
    let cases: [(&str, &Mem, &str); 4] = [
        (
            "vector over a year at 1ms",
            &mem,
            "count_over_time(vector(1)[1y:1ms])",
        ),
        (
            "one series over an hour at 1ms",
            &one,
            "count_over_time(x[1h:1ms])",
        ),
        (
            "nested subquery",
            &one,
            "max_over_time(count_over_time(x[1h:1ms])[5m:1m])",
        ),
        (
            "range over the subquery",
            &one,
            "sum_over_time(x[1h:1ms]) + 1",
        ),
    ];
    for (name, storage, q) in cases {
        let expr = parse(q).unwrap_or_else(|e| panic!("case {name}: {e}"));
        let started = Instant::now();
        let err = small.instant(storage, &expr, 3_600_000).expect_err(name);
        println!("{name}: refused in {:?}", started.elapsed());
        assert_eq!(
            err,
            EngineError::TooManySamples("query execution"),
            "case {name}"
        );
        assert!(
            err.to_string().contains("limits.max_query_samples"),
            "case {name}"
        );
    }
}

/// A loop that holds nothing still stops at the deadline.
#[test]
fn a_subquery_that_holds_nothing_stops_at_the_deadline() {
    let mem = Mem::new(&[]);
    let e = Engine {
        timeout: Some(Duration::from_millis(300)),
        ..engine()
    };
    let expr = parse("count_over_time(nothing[1y:1ms])").expect("parses");
    let started = Instant::now();
    let err = e.instant(&mem, &expr, 0).expect_err("deadline");
    println!("stopped {:?} after a 300ms deadline", started.elapsed());
    assert_eq!(err.error_type(), "timeout");
    assert!(err.to_string().contains("limits.query_timeout"));
}

/// Times and settings outside what millisecond arithmetic holds are
/// refused, not wrapped or overflowed.
#[test]
fn times_out_of_range_are_bad_data() {
    let mem = Mem::new(&[]);
    let expr = parse("x").expect("parses");
    let cases: [(&str, Result<Value, EngineError>); 4] = [
        (
            "instant at i64::MAX",
            engine().instant(&mem, &expr, i64::MAX),
        ),
        (
            "range from i64::MIN",
            engine().range(&mem, &expr, i64::MIN, 0, 1000),
        ),
        (
            "range step i64::MAX",
            engine().range(&mem, &expr, 0, 1000, i64::MAX),
        ),
        (
            "lookback i64::MAX",
            Engine {
                lookback_delta_ms: i64::MAX,
                ..engine()
            }
            .instant(&mem, &expr, 0),
        ),
    ];
    for (name, r) in cases {
        let err = r.expect_err(name);
        assert_eq!(err.error_type(), "bad_data", "case {name}: {err}");
    }
}

/// The storage's own sample limit is the same refusal as the evaluator's
/// (counted under limits.max_query_samples); other storage errors stay
/// execution errors.
#[test]
fn storage_sample_limit_is_too_many_samples() {
    struct Refusing(&'static str);
    impl Storage for Refusing {
        fn select(&self, _: &[Matcher], _: i64, _: i64) -> Result<Vec<SeriesData>, String> {
            Err(self.0.to_string())
        }
    }
    let cases = [
        (
            "sample limit",
            "query processing would load too many samples into memory in query execution",
            Some("limits.max_query_samples"),
        ),
        ("other error", "store is closed", None),
    ];
    for (name, message, limit) in cases {
        for q in ["x", "rate(x[5m])", "sum(x)"] {
            let expr = parse(q).expect("parses");
            let err = engine()
                .instant(&Refusing(message), &expr, 0)
                .expect_err(name);
            assert_eq!(err.limit(), limit, "case {name} {q}: {err}");
            assert_eq!(err.http_status(), 422, "case {name} {q}");
        }
    }
}

/// What [`on_query_stack`] runs on the caller's stack (text bound up to
/// INLINE_DEPTH) fits in the 2 MiB of a tokio blocking thread, debug build
/// included, for every shape.
#[test]
fn inline_depth_fits_a_blocking_thread_stack() {
    let x: Vec<(i64, f64)> = (0..=60).map(|i| (i * 10_000, 2.0)).collect();
    let mem = Mem::new(&[(&[("__name__", "x")], &x, None)]);
    let limits = QueryLimits::default();
    for shape in super::guard::tests::SHAPES {
        let n = (1..=INLINE_DEPTH)
            .rev()
            .find(|&n| {
                check_text(&super::guard::tests::nested(shape, n), &limits)
                    .is_ok_and(|b| b <= INLINE_DEPTH)
            })
            .expect("some nesting runs inline");
        let q = super::guard::tests::nested(shape, n);
        // Nested subqueries multiply their steps: a deadline ends them.
        let quick = Engine {
            timeout: Some(Duration::from_secs(1)),
            max_samples: 1_000_000,
            ..engine()
        };
        let run = || {
            on_query_stack(INLINE_DEPTH, || {
                let expr = parse_with(&q, &limits)?;
                let _ = expr.prettify();
                quick.instant(&mem, &expr, 600_000)?;
                quick.range(&mem, &expr, 0, 600_000, 60_000)
            })
        };
        let out = std::thread::scope(|s| {
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn_scoped(s, run)
                .expect("spawn")
                .join()
                .expect("no overflow")
        });
        match out {
            Ok(_) | Err(EngineError::TooManySamples(_)) | Err(EngineError::Timeout(_)) => {}
            Err(e) => panic!("case {shape} {n}: {e}"),
        }
    }
}

//! One scrape's samples into the store, as Prometheus would label them:
//! `job` and `instance` from the target (a scraped `job`/`instance` becomes
//! `exported_job`/`exported_instance`, honor_labels false), empty label
//! values dropped, the scrape time for samples without a timestamp, and
//! the `up`, `scrape_duration_seconds`, `scrape_samples_scraped` series.
//! Sync: no I/O, no clock (times are parameters).

use super::text::Exposition;
use crate::model::{self, Sample, TimestampMs, Value};
use crate::rrd::Reject;
use crate::store::{MetricMetadata, SeriesId, Store, WriteReject};
use std::collections::BTreeMap;
use std::time::Duration;

/// The target a scrape came from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The job name (`job` label).
    pub job: &'a str,
    /// The target's `host:port` (`instance` label).
    pub instance: &'a str,
}

/// What the store made of one scrape's samples.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Samples stored in at least one archive (stale markers included).
    pub accepted: u64,
    /// Refused samples by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// HELP/TYPE of families not kept, by reason.
    pub metadata_skipped: BTreeMap<&'static str, u64>,
}

impl Report {
    fn count(&mut self, outcome: Result<usize, WriteReject>) {
        match outcome {
            Ok(_) => self.accepted += 1,
            Err(reason) => self.reject(reason.as_str()),
        }
    }

    fn reject(&mut self, reason: &'static str) {
        *self.rejected.entry(reason).or_default() += 1;
    }
}

/// The labels of a scraped sample as stored: its own labels with empty
/// values dropped and `job`/`instance` renamed to `exported_*`, plus the
/// target's `job` and `instance`, sorted by name (`__name__` not included).
pub fn target_labels(labels: &[(String, String)], origin: Origin<'_>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = labels
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .cloned()
        .collect();
    for (target_name, target_value) in [("job", origin.job), ("instance", origin.instance)] {
        if let Some(i) = out.iter().position(|(n, _)| n == target_name) {
            // Prometheus prepends `exported_` until the name is free.
            let mut renamed = format!("exported_{target_name}");
            while out.iter().any(|(n, _)| *n == renamed) {
                renamed.insert_str(0, "exported_");
            }
            out[i].0 = renamed;
        }
        out.push((target_name.to_string(), target_value.to_string()));
    }
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Writes one series' sample through the store like any other write.
fn write_one(
    store: &Store,
    name: &str,
    labels: &[(String, String)],
    sample: Sample,
    now_ms: TimestampMs,
) -> Result<usize, WriteReject> {
    let key = model::series_key(name, labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let make_labels = || {
        let mut all: Vec<(String, String)> = Vec::with_capacity(labels.len() + 1);
        all.push(("__name__".to_string(), name.to_string()));
        all.extend(labels.iter().cloned());
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    };
    let id = SeriesId {
        key: &key,
        shared: None,
        prefix: name,
        labels: Some(&make_labels),
    };
    let mut result = Ok(0);
    store.write_batch(&id, &[sample], now_ms, |r| result = r);
    result
}

/// Writes every sample of a parsed body; samples without a timestamp get
/// `scrape_ms`. Family HELP/TYPE become store metadata.
pub fn write_exposition(
    store: &Store,
    exposition: &Exposition,
    origin: Origin<'_>,
    scrape_ms: TimestampMs,
    now_ms: TimestampMs,
) -> Report {
    let mut report = Report::default();
    for family in &exposition.families {
        let kind = match family.kind.as_str() {
            "" | "untyped" => "unknown",
            k => k,
        };
        let kept = store.set_metadata(
            &family.name,
            MetricMetadata {
                kind: kind.to_string(),
                help: family.help.clone(),
                unit: String::new(),
            },
        );
        if let Err(skip) = kept {
            *report.metadata_skipped.entry(skip.as_str()).or_default() += 1;
        }
    }
    for s in &exposition.samples {
        let timestamp_ms = match s.timestamp_ms {
            None => scrape_ms,
            Some(ts) => match u64::try_from(ts) {
                Ok(ts) => ts,
                Err(_) => {
                    report.reject(WriteReject::Archive(Reject::TooOld).as_str());
                    continue;
                }
            },
        };
        let labels = target_labels(&s.labels, origin);
        let sample = Sample {
            timestamp_ms,
            value: Value::Float(s.value),
        };
        report.count(write_one(store, &s.name, &labels, sample, now_ms));
    }
    report
}

/// How one scrape went, for the series Prometheus adds to every target.
#[derive(Debug, Clone, Copy)]
pub struct Health {
    /// Whether the target answered with a body that was read whole.
    pub up: bool,
    /// From the start of the scrape to the body parsed.
    pub duration: Duration,
    /// Samples in the body (well-formed sample lines).
    pub samples_scraped: u64,
}

/// Writes `up`, `scrape_duration_seconds` and `scrape_samples_scraped` for
/// the target at `scrape_ms`, counting them into `report`.
pub fn write_health(
    store: &Store,
    origin: Origin<'_>,
    health: Health,
    scrape_ms: TimestampMs,
    now_ms: TimestampMs,
    report: &mut Report,
) {
    let labels = target_labels(&[], origin);
    for (name, value) in [
        ("up", if health.up { 1.0 } else { 0.0 }),
        ("scrape_duration_seconds", health.duration.as_secs_f64()),
        ("scrape_samples_scraped", health.samples_scraped as f64),
    ] {
        let sample = Sample {
            timestamp_ms: scrape_ms,
            value: Value::Float(value),
        };
        report.count(write_one(store, name, &labels, sample, now_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::scrape::text;
    use crate::rrd::{Consolidation, Shape, Split, ValueSize};
    use crate::rules::{Rule, RuleSet};
    use crate::store::StoreLimits;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const ORIGIN: Origin<'static> = Origin {
        job: "node",
        instance: "h:9100",
    };

    #[test]
    fn target_labels_follow_honor_labels_false() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [(&'a str, &'a str)]);
        let cases: &[Case] = &[
            (
                "plain",
                &[("cpu", "0")],
                &[("cpu", "0"), ("instance", "h:9100"), ("job", "node")],
            ),
            (
                "scraped job and instance are exported",
                &[("job", "x"), ("instance", "y")],
                &[
                    ("exported_instance", "y"),
                    ("exported_job", "x"),
                    ("instance", "h:9100"),
                    ("job", "node"),
                ],
            ),
            (
                "exported_job taken too",
                &[("job", "x"), ("exported_job", "z")],
                &[
                    ("exported_exported_job", "x"),
                    ("exported_job", "z"),
                    ("instance", "h:9100"),
                    ("job", "node"),
                ],
            ),
            (
                "empty value means no label",
                &[("a", ""), ("Z", "1")],
                &[("Z", "1"), ("instance", "h:9100"), ("job", "node")],
            ),
        ];
        for (case, input, want) in cases {
            assert_eq!(
                target_labels(&pairs(input), ORIGIN),
                pairs(want),
                "case {case}"
            );
        }
    }

    fn store(prefix: &str) -> Store {
        Store::new(
            RuleSet::new(vec![Rule {
                name: "r".into(),
                prefix: prefix.into(),
                shape: Shape {
                    consolidation: Consolidation::Last,
                    timeframe_secs: 10,
                    limit: 100,
                    split: Split::Backward,
                    value_size: ValueSize::Float,
                    specials: Vec::new(),
                },
                autoremove: false,
            }]),
            StoreLimits {
                max_future_ms: 600_000,
                max_series: 1000,
            },
        )
    }

    #[test]
    fn samples_and_health_reach_the_store() {
        let s = store("*");
        let now = 1_700_000_000_000;
        let body = "# TYPE c counter\nc{job=\"inner\",x=\"1\"} 5\nd 7 1699999990000\ne 1 -5\nf 1 1800000000000\n";
        let exposition = text::parse(body.as_bytes());
        let mut report = write_exposition(&s, &exposition, ORIGIN, now, now);
        assert_eq!(report.accepted, 2);
        assert_eq!(
            report.rejected.get("too_old"),
            Some(&1),
            "negative timestamp"
        );
        assert_eq!(report.rejected.get("too_far_future"), Some(&1));
        let key = "c{exported_job=\"inner\",instance=\"h:9100\",job=\"node\",x=\"1\"}";
        let labels = s
            .read(key, |series| series.labels(key).map(|l| l.to_vec()))
            .flatten();
        assert_eq!(
            labels,
            Some(pairs(&[
                ("__name__", "c"),
                ("exported_job", "inner"),
                ("instance", "h:9100"),
                ("job", "node"),
                ("x", "1"),
            ]))
        );
        assert!(s
            .metadata()
            .iter()
            .any(|(n, m)| n == "c" && m.kind == "counter"));

        let health = Health {
            up: false,
            duration: Duration::from_millis(250),
            samples_scraped: 0,
        };
        write_health(&s, ORIGIN, health, now, now, &mut report);
        assert_eq!(report.accepted, 5);
        assert!(s
            .read("up{instance=\"h:9100\",job=\"node\"}", |_| ())
            .is_some());
        assert!(s
            .read(
                "scrape_duration_seconds{instance=\"h:9100\",job=\"node\"}",
                |_| ()
            )
            .is_some());
    }

    #[test]
    fn lines_over_the_size_caps_are_skipped_and_counted() {
        let s = store("*").with_size_limits(crate::store::SizeLimits {
            max_labels_per_series: 5,
            max_label_value_bytes: 8,
            max_series_key_bytes: 80,
            ..Default::default()
        });
        let long_name = "m".repeat(90);
        // __name__, job and instance are 3 of the 5 labels a series may have.
        let body = format!(
            "ok{{a=\"1\"}} 1\ncount{{a=\"1\",b=\"2\",c=\"3\"}} 1\nvalue{{a=\"123456789\"}} 1\n{long_name} 1\n"
        );
        let exposition = text::parse(body.as_bytes());
        assert!(exposition.errors.is_empty(), "{:?}", exposition.errors);
        let report = write_exposition(&s, &exposition, ORIGIN, 1_000_000, 1_000_000);
        assert_eq!(report.accepted, 1, "{report:?}");
        let want: BTreeMap<&str, u64> = [
            ("too_many_labels", 1),
            ("label_too_long", 1),
            ("series_key_too_long", 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(report.rejected, want);
    }

    #[test]
    fn metadata_over_the_cap_is_skipped_and_counted() {
        let s = store("*").with_size_limits(crate::store::SizeLimits {
            max_metadata_bytes: 30,
            ..Default::default()
        });
        let body = "# HELP first 0123456789\n# TYPE first gauge\nfirst 1\n# HELP second 0123456789\n# TYPE second gauge\nsecond 1\n";
        let report = write_exposition(&s, &text::parse(body.as_bytes()), ORIGIN, 1000, 1000);
        assert_eq!(report.metadata_skipped.get("too_much_metadata"), Some(&1));
        let kept: Vec<String> = s.metadata().into_iter().map(|(f, _)| f).collect();
        assert_eq!(kept, ["first"]);
    }

    #[test]
    fn no_rule_is_counted() {
        let s = store("other");
        let exposition = text::parse(b"x 1\n");
        let report = write_exposition(&s, &exposition, ORIGIN, 1000, 1000);
        assert_eq!(report.accepted, 0);
        assert_eq!(report.rejected.get("no_rule"), Some(&1));
    }
}

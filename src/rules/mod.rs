//! Rules and the prefix → rules lookup (DESIGN §2). Sync, no I/O; built by
//! `config`, read by `store` on every write.

use crate::rrd::Shape;
use std::collections::HashMap;
use std::sync::Arc;

/// The prefix of the fallback rules, used by any prefix with no rule of its
/// own.
pub const FALLBACK_PREFIX: &str = "*";

/// One validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique name, used in URLs and as the PromQL `rule` label.
    pub name: String,
    /// Exact prefix this rule applies to, or `"*"`.
    pub prefix: String,
    /// Archive layout and semantics.
    pub shape: Shape,
    /// Drop samples and archives older than the window (by wall clock).
    pub autoremove: bool,
}

impl Rule {
    /// Length of the window in milliseconds (`limit × timeframe`).
    pub fn window_ms(&self) -> u64 {
        u64::from(self.shape.limit) * self.shape.timeframe_secs * 1000
    }
}

/// Every configured rule, indexed by prefix.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
    by_prefix: HashMap<String, Vec<Arc<Rule>>>,
    fallback: Vec<Arc<Rule>>,
}

impl RuleSet {
    /// Indexes rules in file order. Names are assumed unique (config checks).
    pub fn new(rules: Vec<Rule>) -> RuleSet {
        let mut set = RuleSet::default();
        for rule in rules {
            let rule = Arc::new(rule);
            if rule.prefix == FALLBACK_PREFIX {
                set.fallback.push(rule.clone());
            } else {
                set.by_prefix
                    .entry(rule.prefix.clone())
                    .or_default()
                    .push(rule.clone());
            }
            set.rules.push(rule);
        }
        set
    }

    /// The rules a series with this prefix is written to, in file order:
    /// its own, or else the `"*"` rules; empty when neither exists.
    pub fn for_prefix(&self, prefix: &str) -> &[Arc<Rule>] {
        self.by_prefix
            .get(prefix)
            .map_or(self.fallback.as_slice(), Vec::as_slice)
    }

    /// The rule with this name.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Rule>> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// All rules in file order.
    pub fn all(&self) -> &[Arc<Rule>] {
        &self.rules
    }
}

#[cfg(test)]
impl Rule {
    /// A rule for unit tests: one-minute buckets, ten of them, large cells.
    pub(crate) fn for_test(
        name: &str,
        prefix: &str,
        consolidation: crate::rrd::Consolidation,
    ) -> Rule {
        Rule {
            name: name.into(),
            prefix: prefix.into(),
            shape: Shape {
                consolidation,
                timeframe_secs: 60,
                limit: 10,
                split: crate::rrd::Split::Backward,
                value_size: crate::rrd::ValueSize::Large,
                specials: vec![],
            },
            autoremove: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rrd::Consolidation;

    fn rule(name: &str, prefix: &str) -> Rule {
        Rule::for_test(name, prefix, Consolidation::Sum)
    }

    #[test]
    fn prefix_lookup_with_fallback() {
        let set = RuleSet::new(vec![
            rule("a", "traffic"),
            rule("b", "traffic"),
            rule("any", "*"),
        ]);
        let names = |p: &str| {
            set.for_prefix(p)
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names("traffic"), ["a", "b"]);
        assert_eq!(names("other"), ["any"]);
        let none = RuleSet::new(vec![rule("a", "traffic")]);
        assert!(none.for_prefix("other").is_empty());
        assert_eq!(set.by_name("b").unwrap().prefix, "traffic");
    }
}

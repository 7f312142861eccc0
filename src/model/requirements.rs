//! Label requirements with Kubernetes semantics: `In`, `NotIn`, `Exists`, `DoesNotExist`, `Gt`,
//! `Lt`. Expressions in a [`Requirements`] are ANDed; the terms of a [`Terms`] are ORed.
//!
//! Keys are stored canonical (Karpenter aliases mapped to Gantry keys by
//! [`labels::canonical_key`](super::labels::canonical_key)), so a pool written with
//! `karpenter.sh/capacity-type` and a pod selecting `gantry.dev/capacity-type` agree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::labels::canonical_key;

/// How a requirement compares a label's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Operator {
    /// The label is present with one of the values.
    In,
    /// The label is absent, or present with none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
    /// The label is an integer greater than the single value.
    Gt,
    /// The label is an integer less than the single value.
    Lt,
}

impl Operator {
    /// Parses the Kubernetes spelling.
    pub fn parse(s: &str) -> Option<Operator> {
        match s {
            "In" => Some(Operator::In),
            "NotIn" => Some(Operator::NotIn),
            "Exists" => Some(Operator::Exists),
            "DoesNotExist" => Some(Operator::DoesNotExist),
            "Gt" => Some(Operator::Gt),
            "Lt" => Some(Operator::Lt),
            _ => None,
        }
    }
}

/// A requirement that cannot be evaluated, named so the user can fix the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequirementError {
    /// The operator is not one of the six.
    #[error("requirement on {key:?}: unknown operator {operator:?}")]
    UnknownOperator {
        /// Label key.
        key: String,
        /// What was given.
        operator: String,
    },
    /// `Gt`/`Lt` need exactly one integer value.
    #[error("requirement on {key:?}: {operator:?} needs one integer value")]
    BadNumber {
        /// Label key.
        key: String,
        /// `Gt` or `Lt`.
        operator: String,
    },
    /// `In`/`NotIn` need at least one value.
    #[error("requirement on {key:?}: {operator:?} needs values")]
    NoValues {
        /// Label key.
        key: String,
        /// `In` or `NotIn`.
        operator: String,
    },
}

/// One label expression, e.g. `gantry.dev/capacity-type In [spot]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Requirement {
    /// Canonical label key.
    pub key: String,
    /// Comparison.
    pub operator: Operator,
    /// Values, sorted (a single integer for `Gt`/`Lt`).
    pub values: Vec<String>,
}

impl Requirement {
    /// Builds and validates a requirement; the key is made canonical and the values sorted.
    ///
    /// # Errors
    /// An unknown operator, `In`/`NotIn` without values, or `Gt`/`Lt` without one integer.
    pub fn new(key: &str, operator: &str, values: &[String]) -> Result<Self, RequirementError> {
        let op = Operator::parse(operator).ok_or_else(|| RequirementError::UnknownOperator {
            key: key.to_string(),
            operator: operator.to_string(),
        })?;
        match op {
            Operator::Gt | Operator::Lt
                if values.len() != 1 || values.iter().any(|v| v.parse::<i64>().is_err()) =>
            {
                return Err(RequirementError::BadNumber {
                    key: key.to_string(),
                    operator: operator.to_string(),
                });
            }
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(RequirementError::NoValues {
                    key: key.to_string(),
                    operator: operator.to_string(),
                });
            }
            _ => {}
        }
        let mut values = values.to_vec();
        values.sort();
        values.dedup();
        Ok(Requirement {
            key: canonical_key(key).to_string(),
            operator: op,
            values,
        })
    }

    /// `key In [values]`, for code that builds requirements directly.
    pub fn is_in(key: &str, values: &[&str]) -> Self {
        let mut values: Vec<String> = values.iter().map(|v| (*v).to_string()).collect();
        values.sort();
        values.dedup();
        Requirement {
            key: canonical_key(key).to_string(),
            operator: Operator::In,
            values,
        }
    }

    /// Whether a label value (or its absence) satisfies the requirement.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (self.operator, value) {
            (Operator::In, Some(v)) => self.values.iter().any(|x| x == v),
            (Operator::In, None) => false,
            (Operator::NotIn, Some(v)) => !self.values.iter().any(|x| x == v),
            (Operator::NotIn, None) => true,
            (Operator::Exists, v) => v.is_some(),
            (Operator::DoesNotExist, v) => v.is_none(),
            (Operator::Gt | Operator::Lt, None) => false,
            (op, Some(v)) => {
                let (Ok(have), Some(Ok(bound))) = (
                    v.parse::<i64>(),
                    self.values.first().map(|b| b.parse::<i64>()),
                ) else {
                    return false;
                };
                if op == Operator::Gt {
                    have > bound
                } else {
                    have < bound
                }
            }
        }
    }

    /// A short human form, `key In [a, b]`, for reasons.
    pub fn describe(&self) -> String {
        match self.operator {
            Operator::Exists | Operator::DoesNotExist => {
                format!("{} {:?}", self.key, self.operator)
            }
            _ => format!(
                "{} {:?} [{}]",
                self.key,
                self.operator,
                self.values.join(", ")
            ),
        }
    }
}

/// Expressions that must all hold (one node-selector term, or a pool's requirements).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Requirements(pub Vec<Requirement>);

impl Requirements {
    /// Whether every requirement holds for the labels given by `get`.
    pub fn matches<'a, F>(&self, get: F) -> bool
    where
        F: Fn(&str) -> Option<&'a str>,
    {
        self.0.iter().all(|r| r.matches(get(&r.key)))
    }

    /// Whether every requirement holds on a label map (keys compared canonically).
    pub fn matches_map(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| r.matches(lookup(labels, &r.key)))
    }

    /// The first requirement that fails, for a reason a person can act on.
    pub fn first_failure<'a, F>(&self, get: F) -> Option<&Requirement>
    where
        F: Fn(&str) -> Option<&'a str>,
    {
        self.0.iter().find(|r| !r.matches(get(&r.key)))
    }

    /// Adds `key In [value]` for each entry of a `nodeSelector`.
    pub fn from_node_selector(selector: &BTreeMap<String, String>) -> Self {
        Requirements(
            selector
                .iter()
                .map(|(k, v)| Requirement::is_in(k, &[v.as_str()]))
                .collect(),
        )
    }

    /// Parses Kubernetes-shaped `(key, operator, values)` triples.
    ///
    /// # Errors
    /// The first invalid requirement.
    pub fn parse<'a, I>(items: I) -> Result<Self, RequirementError>
    where
        I: IntoIterator<Item = (&'a str, &'a str, &'a [String])>,
    {
        let mut out = Vec::new();
        for (k, op, vals) in items {
            out.push(Requirement::new(k, op, vals)?);
        }
        out.sort();
        Ok(Requirements(out))
    }

    /// The requirements on one key.
    pub fn on_key<'s>(&'s self, key: &'s str) -> impl Iterator<Item = &'s Requirement> + 's {
        self.0.iter().filter(move |r| r.key == key)
    }

    /// Whether a value of `key` is allowed by every requirement on that key (others ignored).
    pub fn allows(&self, key: &str, value: &str) -> bool {
        self.on_key(key).all(|r| r.matches(Some(value)))
    }

    /// Both sets ANDed.
    pub fn and(&self, other: &Requirements) -> Requirements {
        let mut v = self.0.clone();
        v.extend(other.0.iter().cloned());
        v.sort();
        v.dedup();
        Requirements(v)
    }
}

/// Looks a key up in a label map, trying the Karpenter spelling when the Gantry one is absent.
pub fn lookup<'a>(labels: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    if let Some(v) = labels.get(key) {
        return Some(v.as_str());
    }
    super::labels::KARPENTER_ALIASES
        .iter()
        .find(|(_, g)| *g == key)
        .and_then(|(k, _)| labels.get(*k))
        .map(String::as_str)
}

/// Node-selector terms ORed together; no terms means no constraint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Terms(pub Vec<Requirements>);

impl Terms {
    /// Whether some term holds (or there are no terms).
    pub fn matches<'a, F>(&self, get: F) -> bool
    where
        F: Fn(&str) -> Option<&'a str> + Copy,
    {
        self.0.is_empty() || self.0.iter().any(|t| t.matches(get))
    }

    /// Whether some term holds on a label map.
    pub fn matches_map(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.is_empty() || self.0.iter().any(|t| t.matches_map(labels))
    }
}

/// A pod label selector (`matchLabels` + `matchExpressions`), scoped to namespaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodSelector {
    /// ANDed expressions; `matchLabels` become `In` with one value.
    pub requirements: Requirements,
    /// Namespaces the selector looks in; empty means the owning pod's namespace.
    pub namespaces: Vec<String>,
    /// `None` (an absent selector) matches no pod, as in Kubernetes.
    pub present: bool,
}

impl PodSelector {
    /// Whether a pod in `namespace` with `labels` is selected, from a pod in `own_namespace`.
    pub fn selects(
        &self,
        own_namespace: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        if !self.present {
            return false;
        }
        let ns_ok = if self.namespaces.is_empty() {
            namespace == own_namespace
        } else {
            self.namespaces.iter().any(|n| n == namespace)
        };
        // Pod labels are compared literally; canonical keys only matter for node labels.
        ns_ok
            && self
                .requirements
                .0
                .iter()
                .all(|r| r.matches(labels.get(&r.key).map(String::as_str)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(k: &str, op: &str, vals: &[&str]) -> Requirement {
        let v: Vec<String> = vals.iter().map(|s| s.to_string()).collect();
        Requirement::new(k, op, &v).unwrap()
    }

    #[test]
    fn operator_table() {
        let cases = [
            (req("a", "In", &["x", "y"]), Some("x"), true),
            (req("a", "In", &["x"]), Some("z"), false),
            (req("a", "In", &["x"]), None, false),
            (req("a", "NotIn", &["x"]), Some("x"), false),
            (req("a", "NotIn", &["x"]), None, true),
            (req("a", "Exists", &[]), Some(""), true),
            (req("a", "Exists", &[]), None, false),
            (req("a", "DoesNotExist", &[]), None, true),
            (req("a", "DoesNotExist", &[]), Some("x"), false),
            (req("a", "Gt", &["4"]), Some("8"), true),
            (req("a", "Gt", &["4"]), Some("4"), false),
            (req("a", "Gt", &["4"]), Some("big"), false),
            (req("a", "Lt", &["4"]), Some("2"), true),
            (req("a", "Lt", &["4"]), None, false),
        ];
        for (r, v, want) in cases {
            assert_eq!(r.matches(v), want, "{r:?} on {v:?}");
        }
    }

    #[test]
    fn bad_requirements_are_named() {
        let e = Requirement::new("k", "Near", &[]).unwrap_err().to_string();
        assert!(e.contains("\"k\"") && e.contains("Near"), "{e}");
        assert!(Requirement::new("k", "Gt", &["x".into()]).is_err());
        assert!(Requirement::new("k", "In", &[]).is_err());
    }

    #[test]
    fn terms_or_expressions_and() {
        let mut labels = BTreeMap::new();
        labels.insert("a".to_string(), "1".to_string());
        labels.insert("karpenter.sh/capacity-type".to_string(), "spot".to_string());
        let t1 = Requirements(vec![req("a", "In", &["1"]), req("b", "Exists", &[])]);
        let t2 = Requirements(vec![req("gantry.dev/capacity-type", "In", &["spot"])]);
        assert!(!t1.matches_map(&labels));
        assert!(t2.matches_map(&labels), "alias lookup");
        assert!(Terms(vec![t1.clone(), t2]).matches_map(&labels));
        assert!(!Terms(vec![t1]).matches_map(&labels));
        assert!(Terms::default().matches_map(&labels));
    }

    #[test]
    fn karpenter_keys_become_canonical() {
        let r = req("karpenter.sh/capacity-type", "In", &["spot"]);
        assert_eq!(r.key, "gantry.dev/capacity-type");
    }

    #[test]
    fn pod_selector_scopes_namespace() {
        let mut labels = BTreeMap::new();
        labels.insert("app".to_string(), "web".to_string());
        let s = PodSelector {
            requirements: Requirements(vec![req("app", "In", &["web"])]),
            namespaces: vec![],
            present: true,
        };
        assert!(s.selects("default", "default", &labels));
        assert!(!s.selects("default", "other", &labels));
        assert!(!PodSelector::default().selects("default", "default", &labels));
    }
}

//! A deliberately small label-requirement evaluator, local to admission.
//!
//! It answers one question: "would a node whose label `key` has this value pass this
//! requirement?". A general requirements model (`model::requirements`) is being written
//! elsewhere; when it lands, the call sites in `hints.rs` swap to it and this file goes away.
//!
//! # Guarantees
//! Unknown operators are treated as admitting everything: admission only denies when it is
//! certain, and the apiserver's own validation rejects unknown operators anyway.

/// A node-selector operator, as Kubernetes and Karpenter spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintOperator {
    /// The label is present and its value is one of the values.
    In,
    /// The label is absent, or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
    /// The label is present and, as an integer, greater than the single value.
    Gt,
    /// The label is present and, as an integer, less than the single value.
    Lt,
}

impl HintOperator {
    /// Parses the operator text; `None` for anything Kubernetes would reject.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "In" => Some(HintOperator::In),
            "NotIn" => Some(HintOperator::NotIn),
            "Exists" => Some(HintOperator::Exists),
            "DoesNotExist" => Some(HintOperator::DoesNotExist),
            "Gt" => Some(HintOperator::Gt),
            "Lt" => Some(HintOperator::Lt),
            _ => None,
        }
    }
}

/// Whether a node whose label has value `label` (`None` = the label is absent) passes
/// `operator values`. Unknown operators admit (see the module's guarantees).
pub fn hint_requirement_admits(operator: &str, values: &[String], label: Option<&str>) -> bool {
    let Some(op) = HintOperator::parse(operator) else {
        return true;
    };
    match (op, label) {
        (HintOperator::In, Some(v)) => values.iter().any(|x| x == v),
        (HintOperator::In, None) => false,
        (HintOperator::NotIn, Some(v)) => !values.iter().any(|x| x == v),
        (HintOperator::NotIn, None) => true,
        (HintOperator::Exists, l) => l.is_some(),
        (HintOperator::DoesNotExist, l) => l.is_none(),
        (HintOperator::Gt | HintOperator::Lt, None) => false,
        (HintOperator::Gt | HintOperator::Lt, Some(v)) => {
            let (Ok(node), Some(Ok(bound))) =
                (v.parse::<i64>(), values.first().map(|b| b.parse::<i64>()))
            else {
                return false;
            };
            if op == HintOperator::Gt {
                node > bound
            } else {
                node < bound
            }
        }
    }
}

/// Renders a requirement for denial messages, e.g. `kubernetes.io/arch In [amd64]`.
pub fn describe_requirement(key: &str, operator: &str, values: &[String]) -> String {
    if values.is_empty() {
        format!("{key} {operator}")
    } else {
        format!("{key} {operator} [{}]", values.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn operators_follow_kubernetes_semantics() {
        let table: &[(&str, &[&str], Option<&str>, bool)] = &[
            ("In", &["a", "b"], Some("a"), true),
            ("In", &["a", "b"], Some("c"), false),
            ("In", &["a"], None, false),
            ("NotIn", &["a"], Some("a"), false),
            ("NotIn", &["a"], Some("b"), true),
            ("NotIn", &["a"], None, true),
            ("Exists", &[], Some("x"), true),
            ("Exists", &[], None, false),
            ("DoesNotExist", &[], None, true),
            ("DoesNotExist", &[], Some("x"), false),
            ("Gt", &["4"], Some("8"), true),
            ("Gt", &["4"], Some("4"), false),
            ("Gt", &["4"], Some("x"), false),
            ("Gt", &["x"], Some("8"), false),
            ("Lt", &["4"], Some("2"), true),
            ("Lt", &["4"], None, false),
            ("Bogus", &[], None, true),
        ];
        for (op, values, label, want) in table {
            assert_eq!(
                hint_requirement_admits(op, &v(values), *label),
                *want,
                "{op} {values:?} {label:?}"
            );
        }
    }

    #[test]
    fn describes_requirements() {
        assert_eq!(
            describe_requirement("k", "In", &v(&["a", "b"])),
            "k In [a,b]"
        );
        assert_eq!(describe_requirement("k", "Exists", &[]), "k Exists");
    }
}

//! Taints and tolerations with Kubernetes semantics (`Equal`/`Exists`, every effect, empty key).

use serde::{Deserialize, Serialize};

/// What a taint does to pods that do not tolerate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Effect {
    /// New pods are not scheduled.
    NoSchedule,
    /// The scheduler avoids the node but may still use it.
    PreferNoSchedule,
    /// New pods are not scheduled and running ones are evicted.
    NoExecute,
}

impl Effect {
    /// Parses the Kubernetes spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<Effect> {
        match s {
            "NoSchedule" => Some(Effect::NoSchedule),
            "PreferNoSchedule" => Some(Effect::PreferNoSchedule),
            "NoExecute" => Some(Effect::NoExecute),
            _ => None,
        }
    }

    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::NoSchedule => "NoSchedule",
            Effect::PreferNoSchedule => "PreferNoSchedule",
            Effect::NoExecute => "NoExecute",
        }
    }
}

/// A node taint, as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Taint {
    /// Taint key.
    pub key: String,
    /// Taint value (may be empty).
    pub value: String,
    /// Effect.
    pub effect: Effect,
}

impl Taint {
    /// A taint from its parts.
    pub fn new(key: &str, value: &str, effect: Effect) -> Self {
        Taint {
            key: key.to_string(),
            value: value.to_string(),
            effect,
        }
    }

    /// Whether this taint keeps pods that do not tolerate it off the node (PreferNoSchedule does not).
    pub fn is_hard(&self) -> bool {
        self.effect != Effect::PreferNoSchedule
    }
}

/// How a toleration matches a taint's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum TolerationOperator {
    /// Key and value must match.
    #[default]
    Equal,
    /// Key must match (an empty key matches every key).
    Exists,
}

/// A pod toleration, as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Toleration {
    /// Empty means every key (only with `Exists`).
    pub key: String,
    /// Equal or Exists.
    pub operator: TolerationOperator,
    /// Compared with `Equal`.
    pub value: String,
    /// `None` matches every effect.
    pub effect: Option<Effect>,
}

impl Toleration {
    /// Tolerates every taint with `key`, whatever its value and effect (an empty key: any taint).
    pub fn exists(key: &str) -> Self {
        Toleration {
            key: key.to_string(),
            operator: TolerationOperator::Exists,
            ..Default::default()
        }
    }

    /// Whether this toleration matches the taint, by the rules of `v1.Toleration.ToleratesTaint`.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.operator {
            TolerationOperator::Exists => true,
            TolerationOperator::Equal => self.value == taint.value,
        }
    }
}

/// The first hard taint that no toleration matches, or `None` if the pod may land.
pub fn first_untolerated<'a>(tolerations: &[Toleration], taints: &'a [Taint]) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| t.is_hard())
        .find(|t| !tolerations.iter().any(|tol| tol.tolerates(t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tol(key: &str, op: TolerationOperator, value: &str, effect: Option<Effect>) -> Toleration {
        Toleration {
            key: key.into(),
            operator: op,
            value: value.into(),
            effect,
        }
    }

    #[test]
    fn toleration_table() {
        use Effect::*;
        use TolerationOperator::*;
        let gpu = Taint::new("nvidia.com/gpu", "true", NoSchedule);
        let cases = [
            (tol("nvidia.com/gpu", Equal, "true", Some(NoSchedule)), true),
            (
                tol("nvidia.com/gpu", Equal, "false", Some(NoSchedule)),
                false,
            ),
            (tol("nvidia.com/gpu", Exists, "", None), true),
            (tol("nvidia.com/gpu", Exists, "", Some(NoExecute)), false),
            (tol("", Exists, "", None), true),
            (tol("", Exists, "", Some(NoSchedule)), true),
            (tol("other", Exists, "", None), false),
            (tol("nvidia.com/gpu", Equal, "true", None), true),
        ];
        for (t, want) in cases {
            assert_eq!(t.tolerates(&gpu), want, "{t:?}");
        }
    }

    #[test]
    fn prefer_no_schedule_never_blocks() {
        let taints = [Taint::new("a", "b", Effect::PreferNoSchedule)];
        assert!(first_untolerated(&[], &taints).is_none());
        let hard = [Taint::new("a", "b", Effect::NoExecute)];
        assert_eq!(first_untolerated(&[], &hard).unwrap().key, "a");
    }
}

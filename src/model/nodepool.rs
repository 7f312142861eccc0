//! `NodePoolView`: the plain model of a NodePool that the planner decides with.
//!
//! Converted once from the CRD (`gantry.dev/v1`, or `karpenter.sh/v1` YAML, which has the same
//! field names), so the planner never sees kube types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::quantity::{Quantity, QuantityError};
use super::requirements::{Requirement, RequirementError, Requirements};
use super::resources::Resources;
use super::taints::{Effect, Taint};
use crate::kube::crd::{NodePool, NodePoolSpec, TaintSpec};

/// A NodePool that cannot be used; names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NodePoolError {
    /// A requirement is invalid.
    #[error("nodepool {pool}: spec.template.spec.requirements")]
    Requirement {
        /// Pool name.
        pool: String,
        /// The bad expression.
        #[source]
        source: RequirementError,
    },
    /// A taint has an unknown effect.
    #[error("nodepool {pool}: {field}: unknown taint effect {effect:?}")]
    Taint {
        /// Pool name.
        pool: String,
        /// `spec.template.spec.taints` or `...startupTaints`.
        field: &'static str,
        /// What was given.
        effect: String,
    },
    /// A limit does not parse.
    #[error("nodepool {pool}: spec.limits.{resource}")]
    Limit {
        /// Pool name.
        pool: String,
        /// `cpu`, `memory` or `nodes`.
        resource: String,
        /// Why.
        #[source]
        source: QuantityError,
    },
}

/// Caps on what a pool may hold in total, counting nodes it already has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolLimits {
    /// Millicores.
    pub cpu: Option<i64>,
    /// Bytes.
    pub memory: Option<i64>,
    /// Node count.
    pub nodes: Option<i64>,
}

/// A NodePool as the planner sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodePoolView {
    /// Pool name.
    pub name: String,
    /// Higher weights are tried first.
    pub weight: i32,
    /// Constraints on every node (keys canonical).
    pub requirements: Requirements,
    /// Labels stamped on every node, which pod selectors may match.
    pub labels: BTreeMap<String, String>,
    /// Taints pods must tolerate.
    pub taints: Vec<Taint>,
    /// Taints removed after boot; pods need not tolerate them.
    pub startup_taints: Vec<Taint>,
    /// Caps on total cpu, memory and nodes.
    pub limits: PoolLimits,
    /// Requests of the DaemonSet pods that will run on every node of the pool.
    pub daemon_overhead: Resources,
    /// The NodeClass `kubelet.maxPods`, which caps each type's pod slots.
    pub max_pods: Option<u32>,
}

impl NodePoolView {
    /// The pool used when none is given: every type, spot and on-demand, no limits.
    pub fn default_pool() -> Self {
        NodePoolView {
            name: "default".to_string(),
            weight: 0,
            ..Default::default()
        }
    }

    /// Converts the CRD.
    ///
    /// # Errors
    /// [`NodePoolError`] naming the bad field.
    pub fn from_crd(pool: &NodePool) -> Result<Self, NodePoolError> {
        let name = pool.metadata.name.clone().unwrap_or_default();
        Self::from_spec(&name, &pool.spec)
    }

    /// Converts a pool spec (shared by `gantry.dev/v1` and `karpenter.sh/v1` documents).
    ///
    /// # Errors
    /// [`NodePoolError`] naming the bad field.
    pub fn from_spec(name: &str, spec: &NodePoolSpec) -> Result<Self, NodePoolError> {
        let t = &spec.template.spec;
        let mut reqs = Vec::new();
        for r in &t.requirements {
            reqs.push(
                Requirement::new(&r.key, &r.operator, &r.values).map_err(|source| {
                    NodePoolError::Requirement {
                        pool: name.to_string(),
                        source,
                    }
                })?,
            );
        }
        reqs.sort();
        let taints = taints_of(name, "spec.template.spec.taints", &t.taints)?;
        let startup_taints =
            taints_of(name, "spec.template.spec.startupTaints", &t.startup_taints)?;
        let mut limits = PoolLimits::default();
        for (k, v) in &spec.limits {
            let q = Quantity::parse(v).map_err(|source| NodePoolError::Limit {
                pool: name.to_string(),
                resource: k.clone(),
                source,
            })?;
            match k.as_str() {
                "cpu" => limits.cpu = Some(q.milli()),
                "memory" => limits.memory = Some(q.units()),
                "nodes" => limits.nodes = Some(q.units()),
                _ => {}
            }
        }
        Ok(NodePoolView {
            name: name.to_string(),
            weight: spec.weight.unwrap_or(0),
            requirements: Requirements(reqs),
            labels: spec.template.metadata.labels.clone(),
            taints,
            startup_taints,
            limits,
            daemon_overhead: Resources::default(),
            max_pods: None,
        })
    }
}

fn taints_of(
    pool: &str,
    field: &'static str,
    specs: &[TaintSpec],
) -> Result<Vec<Taint>, NodePoolError> {
    specs
        .iter()
        .map(|t| {
            let effect = Effect::parse(&t.effect).ok_or_else(|| NodePoolError::Taint {
                pool: pool.to_string(),
                field,
                effect: t.effect.clone(),
            })?;
            Ok(Taint::new(&t.key, t.value.as_deref().unwrap_or(""), effect))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn karpenter_yaml_converts() {
        let yaml = r#"
apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {name: spot}
spec:
  weight: 10
  limits: {cpu: "1000", memory: 1000Gi}
  template:
    metadata: {labels: {team: a}}
    spec:
      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}
      requirements:
      - {key: karpenter.sh/capacity-type, operator: In, values: [spot]}
      - {key: karpenter.k8s.aws/instance-cpu, operator: Gt, values: ["3"]}
      taints: [{key: spot, value: "true", effect: NoSchedule}]
"#;
        let np: NodePool = serde_yaml::from_str(yaml).unwrap();
        let v = NodePoolView::from_crd(&np).unwrap();
        assert_eq!(v.name, "spot");
        assert_eq!(v.weight, 10);
        assert_eq!(v.limits.cpu, Some(1_000_000));
        assert_eq!(v.limits.memory, Some(1000 << 30));
        assert!(
            v.requirements
                .0
                .iter()
                .any(|r| r.key == "gantry.dev/capacity-type")
        );
        assert_eq!(v.taints.len(), 1);
        assert_eq!(v.labels.get("team").map(String::as_str), Some("a"));
    }

    #[test]
    fn bad_limit_is_named() {
        let yaml = r#"
metadata: {name: p}
apiVersion: gantry.dev/v1
kind: NodePool
spec:
  limits: {cpu: lots}
  template: {spec: {nodeClassRef: {name: d}}}
"#;
        let np: NodePool = serde_yaml::from_str(yaml).unwrap();
        let e = NodePoolView::from_crd(&np).unwrap_err().to_string();
        assert!(e.contains("spec.limits.cpu"), "{e}");
    }
}

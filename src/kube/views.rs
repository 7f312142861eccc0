//! Translations from Kubernetes objects into the plain views decisions use.
//!
//! Malformed fields never fail a translation: a bad quantity counts as zero and is reported, so
//! one odd object cannot break a watch stream or a scheduler call.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

pub use crate::model::pod::pod_requests;
use crate::model::taints::Effect;
use crate::model::{Resources, Taint};
use crate::state::{NodeView, PodView};

/// A node's view; bad allocatable quantities count as zero (the node then takes nothing).
pub fn node_view(node: &Node) -> NodeView {
    let meta = &node.metadata;
    let spec = node.spec.as_ref();
    let status = node.status.as_ref();
    let allocatable = status
        .and_then(|s| s.allocatable.as_ref())
        .map(|m| Resources::from_map(m.iter().map(|(k, v)| (k, v.0.as_str()))).unwrap_or_default())
        .unwrap_or_default();
    let taints = spec
        .and_then(|s| s.taints.as_ref())
        .map(|ts| {
            ts.iter()
                .filter_map(|t| {
                    Some(Taint {
                        key: t.key.clone(),
                        value: t.value.clone().unwrap_or_default(),
                        effect: Effect::parse(&t.effect)?,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    NodeView {
        name: meta.name.clone().unwrap_or_default(),
        labels: Arc::new(meta.labels.clone().unwrap_or_default()),
        taints,
        allocatable,
        requested: Resources::default(),
        reserved: Resources::default(),
        reserved_pods: Vec::new(),
        deleting: meta.deletion_timestamp.is_some(),
        unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
        ready,
        provider_id: spec.and_then(|s| s.provider_id.clone()),
    }
}

/// A pod's view; a pod with unparseable requests counts as requesting nothing but a slot.
pub fn pod_view(pod: &Pod) -> PodView {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let requests = spec
        .and_then(|s| pod_requests(s).ok())
        .unwrap_or(Resources {
            pods: 1,
            ..Default::default()
        });
    let phase = status.and_then(|s| s.phase.as_deref());
    let unschedulable = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        });
    PodView {
        uid: meta.uid.clone().unwrap_or_default(),
        node_name: spec.and_then(|s| s.node_name.clone()),
        requests,
        terminal: matches!(phase, Some("Succeeded") | Some("Failed")),
        unschedulable,
        object: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn requests_follow_scheduler_rules() {
        let p = pod(serde_json::json!({
            "metadata": {"uid": "u", "name": "p", "namespace": "ns"},
            "spec": {
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}},
                    {"name": "b", "resources": {"requests": {"cpu": "200m"}}}
                ],
                "initContainers": [
                    {"name": "big-init", "resources": {"requests": {"cpu": "1", "memory": "64Mi"}}},
                    {"name": "sidecar", "restartPolicy": "Always",
                     "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}}}
                ],
                "overhead": {"cpu": "10m"}
            }
        }));
        let r = pod_requests(p.spec.as_ref().unwrap()).unwrap();
        // max(300m + 50m sidecar, 1000m init) + 10m overhead
        assert_eq!(r.cpu, 1010);
        assert_eq!(r.memory, (128 + 32) << 20);
        assert_eq!(r.pods, 1);
    }

    #[test]
    fn sidecar_before_init_counts_in_its_peak() {
        let p = pod(serde_json::json!({
            "spec": {
                "containers": [{"name": "a", "resources": {"requests": {"cpu": "100m"}}}],
                "initContainers": [
                    {"name": "s", "restartPolicy": "Always", "resources": {"requests": {"cpu": "500m"}}},
                    {"name": "i", "resources": {"requests": {"cpu": "1"}}}
                ]
            }
        }));
        assert_eq!(pod_requests(p.spec.as_ref().unwrap()).unwrap().cpu, 1500);
    }

    #[test]
    fn unschedulable_condition_and_phase() {
        let p = pod(serde_json::json!({
            "metadata": {"uid": "u"},
            "spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "bad"}}}]},
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}
        }));
        let v = pod_view(&p);
        assert!(v.unschedulable);
        assert_eq!(v.requests.pods, 1);
        assert_eq!(v.requests.cpu, 0);
    }
}

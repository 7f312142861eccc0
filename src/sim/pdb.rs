//! PodDisruptionBudgets as the API server applies them, so the simulation's Eviction API refuses
//! what a real cluster would refuse.
//!
//! Two pieces of Kubernetes are modelled, both pure functions over pods:
//!
//! - the **disruption controller**'s status ([`status`]): `expectedPods`, `currentHealthy`,
//!   `desiredHealthy` and `disruptionsAllowed`, computed as `pkg/controller/disruption` does;
//! - the **eviction subresource**'s verdict ([`eviction_verdict`]), as
//!   `pkg/registry/core/pod/storage/eviction.go` decides it (429 when no disruption is allowed).
//!
//! The one simplification: the sim has no ReplicaSet or StatefulSet objects, so a controller's
//! scale (`spec.replicas`) comes from a map the driver keeps (see `SimStore::scales`); a
//! scalable controller missing from it counts its current pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// A budget's status, as `kubectl get pdb` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PdbStatus {
    /// Pods the budget expects (the controllers' scale, or the matching pods for an integer
    /// `minAvailable`).
    pub expected: i32,
    /// Matching pods that are Ready and not terminating.
    pub current_healthy: i32,
    /// Healthy pods the budget wants kept.
    pub desired_healthy: i32,
    /// Evictions the API server would accept now (never negative).
    pub disruptions_allowed: i32,
}

/// What the eviction subresource answers for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvictionVerdict {
    /// The pod may go; `budget` names the PDB it was charged to, if any.
    Allowed {
        /// `namespace/name` of the budget the eviction counted against.
        budget: Option<String>,
    },
    /// HTTP 429: the named budget allows no disruption now.
    Refused(String),
    /// HTTP 500: more than one budget covers the pod, which the API server does not support.
    Ambiguous(Vec<String>),
}

/// `namespace/name` of a budget.
pub fn key(pdb: &PodDisruptionBudget) -> String {
    format!(
        "{}/{}",
        pdb.metadata.namespace.as_deref().unwrap_or("default"),
        pdb.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Whether a label selector selects these labels (`matchLabels` and `matchExpressions`, ANDed).
/// As in `policy/v1`, an empty selector selects every pod; an absent one (handled by the caller)
/// selects none.
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    by_labels
        && sel.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                // An unknown operator is rejected by the API server; select nothing.
                _ => false,
            }
        })
}

/// Whether the budget covers the pod: same namespace, and its selector selects the pod's labels.
pub fn covers(pdb: &PodDisruptionBudget, pod: &Pod) -> bool {
    let ns = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        m.namespace.clone().unwrap_or_else(|| "default".into())
    };
    if ns(&pdb.metadata) != ns(&pod.metadata) {
        return false;
    }
    let Some(sel) = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    let empty = BTreeMap::new();
    selector_matches(sel, pod.metadata.labels.as_ref().unwrap_or(&empty))
}

/// `IsPodReady`: the Ready condition is True.
pub fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Counts towards `currentHealthy`: Ready and not terminating.
pub fn healthy(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && ready(pod)
}

/// Kinds whose scale the disruption controller can read (its finders, plus Deployments behind
/// ReplicaSets).
const SCALABLE: [&str; 4] = [
    "ReplicaSet",
    "Deployment",
    "StatefulSet",
    "ReplicationController",
];

/// The sum of the scales of the controllers of `pods`, or `None` where the API server's
/// controller fails (a pod with no controller, or a controller with no scale, such as a Job).
fn expected_scale(pods: &[&Pod], scales: &BTreeMap<String, i32>) -> Option<i32> {
    let mut seen: BTreeMap<String, i32> = BTreeMap::new();
    for pod in pods {
        let owner = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))?;
        if !SCALABLE.contains(&owner.kind.as_str()) {
            return None;
        }
        *seen.entry(owner.uid.clone()).or_default() += 1;
    }
    Some(
        seen.iter()
            .map(|(uid, count)| scales.get(uid).copied().unwrap_or(*count))
            .sum(),
    )
}

/// `GetScaledValueFromIntOrPercent(v, total, roundUp = true)`; `None` for a malformed value.
fn scaled(v: &IntOrString, total: i32) -> Option<i32> {
    match v {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(s) => {
            let pct: i64 = s.strip_suffix('%')?.trim().parse().ok()?;
            let total = i64::from(total);
            i32::try_from((pct * total + 99).div_euclid(100)).ok()
        }
    }
}

/// The budget's status over the cluster's `pods` (any pods; those it does not cover are
/// ignored), as the disruption controller computes it. A budget whose expected count cannot be
/// computed allows nothing, as the controller's fail-safe does.
pub fn status<'a>(
    pdb: &PodDisruptionBudget,
    pods: impl IntoIterator<Item = &'a Pod>,
    scales: &BTreeMap<String, i32>,
) -> PdbStatus {
    let matching: Vec<&Pod> = pods.into_iter().filter(|p| covers(pdb, p)).collect();
    let current_healthy = matching.iter().filter(|p| healthy(p)).count() as i32;
    let spec = pdb.spec.clone().unwrap_or_default();
    let fail_safe = PdbStatus {
        current_healthy,
        ..Default::default()
    };
    let (expected, desired_healthy) = if let Some(max) = &spec.max_unavailable {
        let Some(expected) = expected_scale(&matching, scales) else {
            return fail_safe;
        };
        let Some(max) = scaled(max, expected) else {
            return fail_safe;
        };
        (expected, (expected - max).max(0))
    } else if let Some(min) = &spec.min_available {
        match min {
            IntOrString::Int(n) => (matching.len() as i32, *n),
            IntOrString::String(_) => {
                let Some(expected) = expected_scale(&matching, scales) else {
                    return fail_safe;
                };
                let Some(min) = scaled(min, expected) else {
                    return fail_safe;
                };
                (expected, min)
            }
        }
    } else {
        (0, 0)
    };
    let allowed = current_healthy - desired_healthy;
    PdbStatus {
        expected,
        current_healthy,
        desired_healthy,
        disruptions_allowed: if expected <= 0 || allowed <= 0 {
            0
        } else {
            allowed
        },
    }
}

/// The eviction subresource's answer for `pod`, given every budget and every pod in the cluster.
///
/// Finished, pending and terminating pods go without a budget check; a pod covered by two
/// budgets is a server error; a pod that is not Ready goes when its budget is healthy
/// (`IfHealthyBudget`, the default) or says `AlwaysAllow`; otherwise the budget must allow a
/// disruption (HTTP 429 if it does not).
pub fn eviction_verdict<'a>(
    pod: &Pod,
    pdbs: impl IntoIterator<Item = &'a PodDisruptionBudget>,
    pods: impl IntoIterator<Item = &'a Pod> + Clone,
    scales: &BTreeMap<String, i32>,
) -> EvictionVerdict {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed" | "Pending"))
        || pod.metadata.deletion_timestamp.is_some()
    {
        return EvictionVerdict::Allowed { budget: None };
    }
    let covering: Vec<&PodDisruptionBudget> = pdbs.into_iter().filter(|b| covers(b, pod)).collect();
    let pdb = match covering.as_slice() {
        [] => return EvictionVerdict::Allowed { budget: None },
        [one] => *one,
        many => return EvictionVerdict::Ambiguous(many.iter().map(|b| key(b)).collect()),
    };
    let st = status(pdb, pods, scales);
    if !ready(pod) {
        let always = pdb
            .spec
            .as_ref()
            .and_then(|s| s.unhealthy_pod_eviction_policy.as_deref())
            == Some("AlwaysAllow");
        if always || (st.current_healthy >= st.desired_healthy && st.desired_healthy > 0) {
            return EvictionVerdict::Allowed {
                budget: Some(key(pdb)),
            };
        }
    }
    if st.disruptions_allowed > 0 {
        EvictionVerdict::Allowed {
            budget: Some(key(pdb)),
        }
    } else {
        EvictionVerdict::Refused(key(pdb))
    }
}

/// Whether removing `pod` now breaks a budget: it is healthy, and some budget covering it allows
/// no disruption. This is how the simulation counts violations, whatever removed the pod.
pub fn removal_violates<'a>(
    pod: &Pod,
    pdbs: impl IntoIterator<Item = &'a PodDisruptionBudget>,
    pods: impl IntoIterator<Item = &'a Pod> + Clone,
    scales: &BTreeMap<String, i32>,
) -> bool {
    healthy(pod)
        && pdbs
            .into_iter()
            .filter(|b| covers(b, pod))
            .any(|b| status(b, pods.clone(), scales).disruptions_allowed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdb(yaml: &str) -> PodDisruptionBudget {
        serde_yaml::from_str(yaml).unwrap()
    }

    /// `n` pods of app `web` owned by ReplicaSet `rs-web`, the first `ready` of them Ready.
    fn pods(n: usize, ready: usize) -> Vec<Pod> {
        (0..n)
            .map(|i| {
                let cond = if i < ready { "True" } else { "False" };
                serde_yaml::from_str(&format!(
                    r#"
metadata:
  name: web-{i}
  namespace: shop
  labels: {{app: web}}
  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: web, uid: rs-web, controller: true}}]
status: {{phase: Running, conditions: [{{type: Ready, status: "{cond}"}}]}}
"#
                ))
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn status_follows_the_disruption_controller() {
        let scales: BTreeMap<String, i32> = [("rs-web".to_string(), 10)].into();
        let all = pods(10, 10);
        // maxUnavailable 20% of the scale (10) → desired 8.
        let b = pdb(
            "metadata: {name: web, namespace: shop}\nspec: {maxUnavailable: 20%, selector: {matchLabels: {app: web}}}",
        );
        let s = status(&b, &all, &scales);
        assert_eq!(
            (s.expected, s.current_healthy, s.desired_healthy),
            (10, 10, 8)
        );
        assert_eq!(s.disruptions_allowed, 2);
        // Percentages round up: 15% of 10 is 2 unavailable; minAvailable 15% is 2 healthy.
        let b = pdb(
            "metadata: {name: web, namespace: shop}\nspec: {maxUnavailable: 15%, selector: {matchLabels: {app: web}}}",
        );
        assert_eq!(status(&b, &all, &scales).desired_healthy, 8);
        let b = pdb(
            "metadata: {name: web, namespace: shop}\nspec: {minAvailable: 15%, selector: {matchLabels: {app: web}}}",
        );
        assert_eq!(status(&b, &all, &scales).desired_healthy, 2);
        // Integer minAvailable counts the matching pods, not the scale.
        let b = pdb(
            "metadata: {name: web, namespace: shop}\nspec: {minAvailable: 9, selector: {matchLabels: {app: web}}}",
        );
        let few = pods(10, 9);
        assert_eq!(status(&b, &few, &scales).disruptions_allowed, 0);
        // An evicted pod whose replacement is not up yet still counts in the scale.
        let b = pdb(
            "metadata: {name: web, namespace: shop}\nspec: {maxUnavailable: 1, selector: {matchLabels: {app: web}}}",
        );
        assert_eq!(status(&b, &all[1..], &scales).disruptions_allowed, 0);
        assert_eq!(status(&b, &all, &scales).disruptions_allowed, 1);
        // Another namespace, or a selector that does not match: nothing covered, nothing allowed.
        let b = pdb(
            "metadata: {name: web, namespace: other}\nspec: {maxUnavailable: 1, selector: {matchLabels: {app: web}}}",
        );
        assert_eq!(status(&b, &all, &scales), PdbStatus::default());
    }

    #[test]
    fn pods_without_a_scalable_controller_fail_safe() {
        let mut all = pods(3, 3);
        for p in &mut all {
            p.metadata.owner_references.as_mut().unwrap()[0].kind = "Job".into();
        }
        let b = pdb(
            "metadata: {name: web, namespace: shop}\nspec: {maxUnavailable: 1, selector: {matchLabels: {app: web}}}",
        );
        assert_eq!(status(&b, &all, &BTreeMap::new()).disruptions_allowed, 0);
    }

    #[test]
    fn eviction_is_refused_at_zero_and_unready_pods_go_when_the_budget_is_healthy() {
        let scales: BTreeMap<String, i32> = [("rs-web".to_string(), 4)].into();
        let b = pdb(
            "metadata: {name: web, namespace: shop}\nspec: {minAvailable: 3, selector: {matchExpressions: [{key: app, operator: In, values: [web]}]}}",
        );
        let all = pods(4, 3);
        // Three of four Ready, minAvailable 3: no disruption allowed for a Ready pod...
        assert_eq!(
            eviction_verdict(&all[0], [&b], &all, &scales),
            EvictionVerdict::Refused("shop/web".into())
        );
        assert!(removal_violates(&all[0], [&b], &all, &scales));
        // ...but the unready one may go: the budget is met without it.
        assert_eq!(
            eviction_verdict(&all[3], [&b], &all, &scales),
            EvictionVerdict::Allowed {
                budget: Some("shop/web".into())
            }
        );
        assert!(!removal_violates(&all[3], [&b], &all, &scales));
        // Two budgets on one pod is a server error.
        let c = pdb(
            "metadata: {name: all, namespace: shop}\nspec: {maxUnavailable: 100%, selector: {}}",
        );
        assert!(matches!(
            eviction_verdict(&all[0], [&b, &c], &all, &scales),
            EvictionVerdict::Ambiguous(_)
        ));
    }
}

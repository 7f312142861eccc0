//! The launcher: persist the NodeClaim (with its reservations) first, then ask the cloud.
//!
//! # Guarantees
//! An instance is only ever requested for a NodeClaim that already exists in the API server, so
//! a crash at any point leaves either a claim to finish or delete, or nothing — never an
//! instance without an owner. `CloudProvider::create` adopts an instance already tagged with the
//! claim, so retrying after a crash does not buy a second one.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::cloud::{CloudError, CloudProvider, Instance};
use crate::kube::api::{ClusterApi, ClusterError, EventRecord};
use crate::kube::crd::{
    ClaimResources, Condition, EC2NodeClass, NodeClaim, NodeClaimSpec, NodeClaimStatus, NodePool,
    NodeSelectorRequirementSpec, ReservedPod, conditions,
};
use crate::model::labels::{CAPACITY_TYPE, INSTANCE_TYPE, NODEPOOL, ZONE, canonical_key};
use crate::model::{Catalog, PodDemand};
use crate::plan::NewClaim;

/// Claims whose launch is in progress in this process, so the lifecycle controller does not
/// start a second, concurrent launch for the same claim.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Mutex<HashSet<String>>>);

impl InFlight {
    /// Marks a claim as launching; false if it already was.
    pub fn begin(&self, name: &str) -> bool {
        self.0
            .lock()
            .map(|mut s| s.insert(name.to_string()))
            .unwrap_or(false)
    }

    /// Clears the mark.
    pub fn end(&self, name: &str) {
        if let Ok(mut s) = self.0.lock() {
            s.remove(name);
        }
    }

    /// Whether a launch is in progress.
    pub fn contains(&self, name: &str) -> bool {
        self.0.lock().map(|s| s.contains(name)).unwrap_or(true)
    }
}

/// What one launch came to.
#[derive(Debug)]
pub enum LaunchOutcome {
    /// The instance exists and the claim records it.
    Launched(Box<Instance>),
    /// No capacity in any allowed offering; the claim was deleted and its pods go back to demand.
    NoCapacity(String),
    /// The claim could not be created or the NodeClass cannot launch; nothing was bought.
    Failed(String),
    /// A transient failure after the claim was persisted; the lifecycle controller retries.
    Retry(String),
}

/// A short, unique-enough suffix for claim names (`default-k3x9z`).
pub fn claim_suffix(seed: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut s = String::with_capacity(5);
    for _ in 0..5 {
        h = h.wrapping_mul(0x0000_0100_0000_01b3) ^ (h >> 29);
        let idx = (h % ALPHABET.len() as u64) as usize;
        s.push(char::from(ALPHABET.get(idx).copied().unwrap_or(b'x')));
    }
    s
}

/// Builds the NodeClaim object for a planned claim: the pool's template, narrowed to the options.
pub fn claim_object(name: &str, pool: &NodePool, planned: &NewClaim) -> NodeClaim {
    let t = &pool.spec.template;
    let mut labels = t.metadata.labels.clone();
    labels.insert(NODEPOOL.to_string(), planned.pool.clone());
    let narrowed = [INSTANCE_TYPE, ZONE, CAPACITY_TYPE];
    let mut requirements: Vec<NodeSelectorRequirementSpec> = t
        .spec
        .requirements
        .iter()
        .filter(|r| !narrowed.contains(&canonical_key(&r.key)))
        .cloned()
        .collect();
    let req = |key: &str, values: Vec<String>| NodeSelectorRequirementSpec {
        key: key.to_string(),
        operator: "In".to_string(),
        values,
        min_values: None,
    };
    requirements.push(req(
        INSTANCE_TYPE,
        planned
            .options
            .iter()
            .map(|o| o.instance_type.clone())
            .collect(),
    ));
    requirements.push(req(ZONE, planned.zones.clone()));
    requirements.push(req(
        CAPACITY_TYPE,
        planned
            .capacity_types
            .iter()
            .map(|c| c.as_str().to_string())
            .collect(),
    ));
    NodeClaim {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            annotations: Some(t.metadata.annotations.clone()).filter(|a| !a.is_empty()),
            ..Default::default()
        },
        spec: NodeClaimSpec {
            requirements,
            resources: ClaimResources {
                requests: planned.requests.to_map(),
            },
            taints: t.spec.taints.clone(),
            startup_taints: t.spec.startup_taints.clone(),
            node_class_ref: t.spec.node_class_ref.clone(),
            expire_after: t.spec.expire_after.clone(),
            termination_grace_period: t.spec.termination_grace_period.clone(),
        },
        status: None,
    }
}

/// Sets (or replaces) a condition, stamping the transition time when the status changes.
pub fn set_condition(
    status: &mut NodeClaimStatus,
    type_: &str,
    value: bool,
    reason: &str,
    now: jiff::Timestamp,
) {
    let v = if value { "True" } else { "False" };
    if let Some(c) = status.conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != v {
            c.status = v.to_string();
            c.last_transition_time = Some(now.to_string());
        }
        c.reason = Some(reason.to_string());
        return;
    }
    status.conditions.push(Condition {
        type_: type_.to_string(),
        status: v.to_string(),
        reason: Some(reason.to_string()),
        message: None,
        last_transition_time: Some(now.to_string()),
        observed_generation: None,
    });
}

/// Records a launched instance in the claim's status.
pub fn record_instance(
    status: &mut NodeClaimStatus,
    inst: &Instance,
    catalog: &Catalog,
    max_pods: Option<u32>,
    now: jiff::Timestamp,
) {
    status.provider_id = Some(inst.provider_id.clone());
    status.instance_type = Some(inst.instance_type.clone());
    status.zone = Some(inst.zone.clone());
    status.capacity_type = Some(inst.capacity_type.as_str().to_string());
    status.image_id = inst.image_id.clone();
    if let Some(t) = catalog.get(&inst.instance_type) {
        status.capacity = t.capacity(max_pods).to_map();
        status.allocatable = t.allocatable(max_pods).to_map();
        let price = inst.price.or_else(|| {
            t.offerings
                .iter()
                .find(|o| o.zone == inst.zone && o.capacity_type == inst.capacity_type)
                .map(|o| o.price)
        });
        status.price_per_hour = price.map(|p| format!("{p:.4}"));
    }
    set_condition(status, conditions::LAUNCHED, true, "Launched", now);
}

/// Persists and launches one planned claim.
#[allow(clippy::too_many_arguments)]
pub async fn launch(
    cluster: &dyn ClusterApi,
    cloud: &dyn CloudProvider,
    inflight: &InFlight,
    name: &str,
    pool: &NodePool,
    class: &EC2NodeClass,
    planned: &NewClaim,
    pods: &[(&PodDemand, &str)],
    catalog: &Catalog,
    max_pods: Option<u32>,
    now: jiff::Timestamp,
) -> LaunchOutcome {
    let object = claim_object(name, pool, planned);
    let created = match cluster.create_nodeclaim(&object).await {
        Ok(c) => c,
        Err(e) => return LaunchOutcome::Failed(e.to_string()),
    };
    let mut status = NodeClaimStatus {
        reserved_pods: pods
            .iter()
            .map(|(d, uid)| ReservedPod {
                uid: (*uid).to_string(),
                namespace: d.namespace.clone(),
                name: d.name.clone(),
            })
            .collect(),
        ..Default::default()
    };
    set_condition(&mut status, conditions::LAUNCHED, false, "Launching", now);
    if let Err(e) = cluster.update_nodeclaim_status(name, &status).await {
        // The claim exists without reservations; the lifecycle controller still launches it.
        tracing::warn!(nodeclaim = name, error = %e, "cannot record reservations");
    }
    if !inflight.begin(name) {
        return LaunchOutcome::Retry("launch already in progress".into());
    }
    let result = cloud.create(&created, class).await;
    inflight.end(name);
    match result {
        Ok(inst) => {
            record_instance(&mut status, &inst, catalog, max_pods, now);
            if let Err(e) = cluster.update_nodeclaim_status(name, &status).await {
                // The instance is tagged with the claim; the next lifecycle pass adopts it.
                return LaunchOutcome::Retry(format!("launched but not recorded: {e}"));
            }
            announce(cluster, &created, &inst, pods).await;
            LaunchOutcome::Launched(Box::new(inst))
        }
        Err(CloudError::InsufficientCapacity { offerings }) => {
            let why = format!("insufficient capacity in {} offering(s)", offerings.len());
            abandon(cluster, name).await;
            LaunchOutcome::NoCapacity(why)
        }
        Err(CloudError::Config { reason }) => {
            cluster
                .record_event(claim_event(
                    &created,
                    "Warning",
                    "LaunchFailed",
                    reason.clone(),
                ))
                .await;
            abandon(cluster, name).await;
            LaunchOutcome::Failed(reason)
        }
        Err(e) => LaunchOutcome::Retry(e.to_string()),
    }
}

/// Deletes a claim that never got an instance.
pub async fn abandon(cluster: &dyn ClusterApi, name: &str) {
    let _ = cluster.delete_nodeclaim(name).await;
    let _ = cluster.remove_nodeclaim_finalizer(name).await;
}

fn claim_event(
    claim: &NodeClaim,
    type_: &'static str,
    reason: &'static str,
    message: String,
) -> EventRecord {
    EventRecord {
        kind: "NodeClaim",
        namespace: String::new(),
        name: claim.metadata.name.clone().unwrap_or_default(),
        uid: claim.metadata.uid.clone().unwrap_or_default(),
        type_,
        reason,
        message,
    }
}

/// Most pods a single launch puts an event on, so a burst does not flood the API server.
const MAX_POD_EVENTS: usize = 50;

async fn announce(
    cluster: &dyn ClusterApi,
    claim: &NodeClaim,
    inst: &Instance,
    pods: &[(&PodDemand, &str)],
) {
    let name = claim.metadata.name.clone().unwrap_or_default();
    let msg = format!(
        "launched nodeclaim {name} ({}, {}, {}) for this pod",
        inst.instance_type, inst.zone, inst.capacity_type
    );
    cluster
        .record_event(claim_event(
            claim,
            "Normal",
            "Launched",
            format!(
                "launched {} {} in {} for {} pod(s)",
                inst.capacity_type,
                inst.instance_type,
                inst.zone,
                pods.len()
            ),
        ))
        .await;
    for (d, uid) in pods.iter().take(MAX_POD_EVENTS) {
        cluster
            .record_event(EventRecord {
                kind: "Pod",
                namespace: d.namespace.clone(),
                name: d.name.clone(),
                uid: (*uid).to_string(),
                type_: "Normal",
                reason: "Nominated",
                message: msg.clone(),
            })
            .await;
    }
}

/// Reservation additions for in-flight claims, merged into their status.
pub async fn add_reservations(
    cluster: &dyn ClusterApi,
    claim: &NodeClaim,
    pods: &[ReservedPod],
) -> Result<(), ClusterError> {
    let name = claim.metadata.name.clone().unwrap_or_default();
    let mut status = claim.status.clone().unwrap_or_default();
    let mut seen: BTreeMap<String, ()> = status
        .reserved_pods
        .iter()
        .map(|p| (p.uid.clone(), ()))
        .collect();
    for p in pods {
        if seen.insert(p.uid.clone(), ()).is_none() {
            status.reserved_pods.push(p.clone());
        }
    }
    cluster.update_nodeclaim_status(&name, &status).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_short_and_vary() {
        let a = claim_suffix(1);
        let b = claim_suffix(2);
        assert_eq!(a.len(), 5);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}

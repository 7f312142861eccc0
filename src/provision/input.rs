//! Turns a cluster snapshot into the planner's plain input: pending pods, pools, nodes and
//! in-flight claims. Objects that do not translate are skipped with a reason, never fatal.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::Pod;

use crate::kube::crd::NodeClaim;
use crate::model::labels::{
    CAPACITY_TYPE, INSTANCE_TYPE, NODEPOOL, SCHEDULER_NAME, TAINT_DISRUPTED, TAINT_INITIALIZING,
    TAINT_UNREGISTERED, ZONE,
};
use crate::model::pod::HostPort;
use crate::model::{CapacityType, Catalog, NodePoolView, PodDemand, Resources};
use crate::plan::{ClaimView, NodeView as PlanNode, PodView as PlanPod};
use crate::state::ClusterSnapshot;

/// Everything a planning round needs, owned, so planning can run on a blocking thread.
#[derive(Debug, Clone, Default)]
pub struct RoundInput {
    /// Pending pods to place.
    pub pods: Vec<PodDemand>,
    /// Their UIDs, index-aligned with `pods`.
    pub uids: Vec<String>,
    /// Pools.
    pub pools: Vec<NodePoolView>,
    /// Existing nodes.
    pub nodes: Vec<PlanNode>,
    /// Launching claims.
    pub in_flight: Vec<ClaimView>,
    /// Pods or objects that could not be translated, with why.
    pub skipped: Vec<(String, String)>,
}

/// Whether a claim still holds its reservations: not being deleted, and not Initialized longer
/// than `window` ago. A pod still pending after that was not served by it (the node filled up
/// differently than planned) and goes back to demand, so no pod waits on a stale promise.
pub fn holds_reservations(
    claim: &NodeClaim,
    now: jiff::Timestamp,
    window: std::time::Duration,
) -> bool {
    if claim.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let initialized_at = claim
        .status
        .as_ref()
        .and_then(|s| {
            s.conditions.iter().find(|c| {
                c.type_ == crate::kube::crd::conditions::INITIALIZED && c.status == "True"
            })
        })
        .and_then(|c| c.last_transition_time.as_deref())
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    match initialized_at {
        None => true,
        Some(t) => now.duration_since(t).as_secs_f64() <= window.as_secs_f64(),
    }
}

/// UIDs of pending pods reserved on a claim that still holds them; they are being served.
pub fn reserved_uids(
    snapshot: &ClusterSnapshot,
    now: jiff::Timestamp,
    window: std::time::Duration,
) -> HashSet<String> {
    snapshot
        .nodeclaims
        .values()
        .filter(|c| holds_reservations(c, now, window))
        .filter_map(|c| c.status.as_ref())
        .flat_map(|s| s.reserved_pods.iter().map(|p| p.uid.clone()))
        .collect()
}

/// Pending Gantry pods in the demand ledger that no claim is serving, oldest first.
pub fn unserved(
    snapshot: &ClusterSnapshot,
    demand: &HashSet<String>,
    now: jiff::Timestamp,
    window: std::time::Duration,
) -> Vec<String> {
    let reserved = reserved_uids(snapshot, now, window);
    let mut out: Vec<(&Pod, &String)> = snapshot
        .pending
        .iter()
        .filter(|(uid, _)| demand.contains(*uid) && !reserved.contains(*uid))
        .filter(|(_, p)| {
            p.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()) == Some(SCHEDULER_NAME)
        })
        .map(|(uid, p)| (p.as_ref(), uid))
        .collect();
    out.sort_by(|a, b| {
        let ta = a.0.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let tb = b.0.metadata.creation_timestamp.as_ref().map(|t| t.0);
        ta.cmp(&tb).then_with(|| a.1.cmp(b.1))
    });
    out.into_iter().map(|(_, u)| u.clone()).collect()
}

/// Pools as the planner sees them, with DaemonSet overhead and the NodeClass pod cap.
pub fn pools(snapshot: &ClusterSnapshot, skipped: &mut Vec<(String, String)>) -> Vec<NodePoolView> {
    let mut overhead = Resources::default();
    for ds in snapshot.daemonsets.values() {
        if let Some(spec) = ds.spec.template.spec.as_ref()
            && let Ok(r) = crate::model::pod::pod_requests(spec)
        {
            overhead.add(&r);
        }
    }
    let mut out = Vec::new();
    let mut names: Vec<&String> = snapshot.nodepools.keys().collect();
    names.sort();
    for name in names {
        let Some(pool) = snapshot.nodepools.get(name) else {
            continue;
        };
        match NodePoolView::from_crd(pool) {
            Ok(mut view) => {
                view.daemon_overhead = overhead.clone();
                let class = &pool.spec.template.spec.node_class_ref.name;
                view.max_pods = snapshot
                    .nodeclasses
                    .get(class)
                    .and_then(|c| c.spec.kubelet.as_ref())
                    .and_then(|k| k.max_pods);
                out.push(view);
            }
            Err(e) => skipped.push((format!("nodepool/{name}"), e.to_string())),
        }
    }
    out
}

fn plan_pod(pod: &Pod) -> PlanPod {
    let mut host_ports = Vec::new();
    if let Some(spec) = &pod.spec {
        for c in &spec.containers {
            for p in c.ports.iter().flatten() {
                if let Some(port) = p.host_port.filter(|p| *p > 0) {
                    host_ports.push(HostPort {
                        port,
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        ip: p.host_ip.clone().unwrap_or_default(),
                    });
                }
            }
        }
    }
    PlanPod {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        host_ports,
    }
}

/// Builds the round's input for the given pending pods.
pub fn build(snapshot: &ClusterSnapshot, pending: &[String], catalog: &Catalog) -> RoundInput {
    let mut input = RoundInput::default();
    for uid in pending {
        let Some(pod) = snapshot.pending.get(uid) else {
            continue;
        };
        match PodDemand::from_pod(pod) {
            Ok(d) => {
                input.pods.push(d);
                input.uids.push(uid.clone());
            }
            Err(e) => input.skipped.push((uid.clone(), e.to_string())),
        }
    }
    input.pools = pools(snapshot, &mut input.skipped);

    // Registered claims are counted as nodes; the rest are in flight.
    let mut names: Vec<&String> = snapshot.nodes.keys().collect();
    names.sort();
    for name in names {
        let Some(n) = snapshot.nodes.get(name) else {
            continue;
        };
        if n.deleting || n.unschedulable || n.has_taint(TAINT_DISRUPTED) {
            continue;
        }
        let mut requested = n.requested.plus(&n.reserved);
        requested.pods = requested.pods.max(n.requested.pods);
        input.nodes.push(PlanNode {
            name: n.name.clone(),
            pool: n.labels.get(NODEPOOL).cloned(),
            labels: (*n.labels).clone(),
            // The gates lift on their own; planning treats gated nodes as capacity to come.
            taints: n
                .taints
                .iter()
                .filter(|t| t.key != TAINT_INITIALIZING && t.key != TAINT_UNREGISTERED)
                .cloned()
                .collect(),
            allocatable: n.allocatable.clone(),
            requested,
            pods: snapshot
                .pods_by_node
                .get(name)
                .map(|ps| ps.iter().map(|p| plan_pod(p)).collect())
                .unwrap_or_default(),
        });
    }
    let mut claims: Vec<&NodeClaim> = snapshot.nodeclaims.values().map(AsRef::as_ref).collect();
    claims.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for c in claims {
        if c.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let registered = c.status.as_ref().and_then(|s| s.node_name.as_ref());
        if registered.is_some_and(|n| snapshot.nodes.contains_key(n)) {
            continue;
        }
        if let Some(view) = claim_view(c, snapshot, catalog, &input.pools) {
            input.in_flight.push(view);
        }
    }
    input
}

fn claim_view(
    c: &NodeClaim,
    snapshot: &ClusterSnapshot,
    catalog: &Catalog,
    pools: &[NodePoolView],
) -> Option<ClaimView> {
    let name = c.metadata.name.clone()?;
    let pool = c.metadata.labels.as_ref()?.get(NODEPOOL)?.clone();
    let status = c.status.as_ref();
    let launched_type = status.and_then(|s| s.instance_type.clone());
    let options: Vec<String> = match launched_type {
        Some(t) => vec![t],
        None => c.requirement_values(INSTANCE_TYPE)?.to_vec(),
    };
    let zones: Vec<String> = match status.and_then(|s| s.zone.clone()) {
        Some(z) => vec![z],
        None => c
            .requirement_values(ZONE)
            .map(<[String]>::to_vec)
            .unwrap_or_default(),
    };
    let capacity_types: Vec<CapacityType> = match status.and_then(|s| s.capacity_type.as_deref()) {
        Some(ct) => CapacityType::parse(ct).into_iter().collect(),
        None => c
            .requirement_values(CAPACITY_TYPE)
            .map(|v| v.iter().filter_map(|s| CapacityType::parse(s)).collect())
            .unwrap_or_default(),
    };
    let max_pods = pools
        .iter()
        .find(|p| p.name == pool)
        .and_then(|p| p.max_pods);
    // Room on the smallest option, so whatever launches still holds what is reserved.
    let smallest = options
        .iter()
        .filter_map(|o| catalog.get(o))
        .map(|t| t.allocatable(max_pods))
        .min_by_key(|a| (a.cpu, a.memory))?;
    let requests = Resources::from_map(
        c.spec
            .resources
            .requests
            .iter()
            .map(|(k, v)| (k, v.as_str())),
    )
    .unwrap_or_default();
    let reserved: Vec<PlanPod> = status
        .map(|s| {
            s.reserved_pods
                .iter()
                .filter_map(|r| snapshot.pending.get(&r.uid))
                .map(|p| plan_pod(p))
                .collect()
        })
        .unwrap_or_default();
    Some(ClaimView {
        name,
        pool,
        options,
        zones,
        capacity_types,
        remaining: smallest.minus(&requests),
        pods: reserved,
    })
}

/// Labels the launcher stamps on a claim from its pool template.
pub fn template_labels(pool: &crate::kube::crd::NodePool) -> BTreeMap<String, String> {
    pool.spec.template.metadata.labels.clone()
}

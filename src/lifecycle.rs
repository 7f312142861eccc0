//! The NodeClaim controller: registration, the startup gate, timeouts, finalization and
//! garbage collection in both directions.
//!
//! `decide` holds the pure per-claim decision; this module executes it against the cluster and
//! the cloud.
//!
//! # Guarantees
//! - An instance leaves only through `CloudProvider::delete`, called before the claim's
//!   finalizer is removed, so a deleted claim never strands its instance.
//! - A claim whose instance was never recorded (a crash between launch and record) is either
//!   relaunched, which adopts the tagged instance, or finalized, which looks the instance up by
//!   tag and terminates it.
//! - An instance tagged for this cluster whose claim is gone is terminated once it has been seen
//!   orphaned for the grace period in two passes, so a claim still on its way to the snapshot is
//!   not mistaken for a missing one.

pub mod decide;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::cloud::{CloudError, CloudProvider};
use crate::kube::api::{ClusterApi, EventRecord, NodePatch};
use crate::kube::crd::{NodeClaim, conditions};
use crate::model::labels::{
    CAPACITY_TYPE, NODECLAIM, NODEPOOL, REGION, TAINT_INITIALIZING, TAINT_UNREGISTERED, ZONE,
};
use crate::model::taints::{Toleration, first_untolerated};
use crate::model::{Catalog, Taint};
use crate::provision::launch::{InFlight, abandon, record_instance, set_condition};
use crate::state::{ClusterSnapshot, NodeView, SharedState};
use decide::{ClaimAction, ClaimFacts, Timeouts};

/// Settings for the lifecycle controller.
#[derive(Debug, Clone, Copy)]
pub struct LifecycleConfig {
    /// Phase timeouts.
    pub timeouts: Timeouts,
    /// How often garbage collection lists the cloud.
    pub gc_interval: Duration,
    /// How long something must look orphaned before it is collected.
    pub gc_grace: Duration,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            timeouts: Timeouts::default(),
            gc_interval: Duration::from_secs(60),
            gc_grace: Duration::from_secs(30),
        }
    }
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LifecycleReport {
    /// Claims launched or adopted on retry.
    pub launched: usize,
    /// Nodes linked to their claims.
    pub registered: usize,
    /// Startup gates lifted.
    pub initialized: usize,
    /// Claims given up (timeouts, lost nodes, lost instances).
    pub deleted: usize,
    /// Claims whose finalizer ran.
    pub finalized: usize,
    /// Orphaned instances terminated.
    pub orphans_terminated: usize,
    /// Unused cloud resources deleted (launch templates).
    pub unused_deleted: usize,
}

/// The controller; one per leader.
pub struct Lifecycle {
    cluster: Arc<dyn ClusterApi>,
    cloud: Arc<dyn CloudProvider>,
    state: SharedState,
    inflight: InFlight,
    config: LifecycleConfig,
    last_gc: Option<jiff::Timestamp>,
    orphan_seen: HashMap<String, jiff::Timestamp>,
    missing_seen: HashMap<String, jiff::Timestamp>,
}

fn since(now: jiff::Timestamp, then: jiff::Timestamp) -> Duration {
    Duration::try_from(now.duration_since(then)).unwrap_or(Duration::ZERO)
}

impl Lifecycle {
    /// A controller over the given cluster and cloud.
    pub fn new(
        cluster: Arc<dyn ClusterApi>,
        cloud: Arc<dyn CloudProvider>,
        state: SharedState,
        inflight: InFlight,
        config: LifecycleConfig,
    ) -> Self {
        Lifecycle {
            cluster,
            cloud,
            state,
            inflight,
            config,
            last_gc: None,
            orphan_seen: HashMap::new(),
            missing_seen: HashMap::new(),
        }
    }

    /// One pass over every claim, plus garbage collection when it is due.
    #[tracing::instrument(skip_all)]
    pub async fn tick(&mut self, now: jiff::Timestamp) -> LifecycleReport {
        let mut report = LifecycleReport::default();
        let snapshot = self.state.load();
        if !snapshot.synced {
            return report;
        }
        let catalog = self.cloud.catalog().await.ok();
        let by_provider: HashMap<&str, &NodeView> = snapshot
            .nodes
            .values()
            .filter_map(|n| n.provider_id.as_deref().map(|p| (p, n.as_ref())))
            .collect();
        let mut names: Vec<&String> = snapshot.nodeclaims.keys().collect();
        names.sort();
        for name in names {
            let Some(claim) = snapshot.nodeclaims.get(name) else {
                continue;
            };
            let status = claim.status.as_ref();
            let node_by_name = status
                .and_then(|s| s.node_name.as_deref())
                .and_then(|n| snapshot.node(n));
            let startup: Vec<String> = claim
                .spec
                .startup_taints
                .iter()
                .map(|t| t.key.clone())
                .collect();
            let facts = ClaimFacts {
                node_by_provider: status
                    .and_then(|s| s.provider_id.as_deref())
                    .and_then(|p| by_provider.get(p).copied()),
                node_by_name,
                startup_taints: &startup,
                daemon_pods_missing: node_by_name
                    .map(|n| daemon_pods_missing(&snapshot, n, &startup))
                    .unwrap_or(0),
                launching: self.inflight.contains(name),
            };
            let action = decide::decide(claim, &facts, now, &self.config.timeouts);
            self.execute(
                claim,
                action,
                &snapshot,
                catalog.as_deref(),
                now,
                &mut report,
            )
            .await;
        }
        let due = self
            .last_gc
            .is_none_or(|t| since(now, t) >= self.config.gc_interval);
        if due {
            self.last_gc = Some(now);
            self.collect_garbage(&snapshot, now, &mut report).await;
        }
        report
    }

    async fn execute(
        &self,
        claim: &NodeClaim,
        action: ClaimAction,
        snapshot: &ClusterSnapshot,
        catalog: Option<&Catalog>,
        now: jiff::Timestamp,
        report: &mut LifecycleReport,
    ) {
        let name = claim.metadata.name.clone().unwrap_or_default();
        match action {
            ClaimAction::Wait => {}
            ClaimAction::Finalize => {
                if self.finalize(claim, snapshot).await {
                    report.finalized += 1;
                }
            }
            ClaimAction::Launch => {
                if self.relaunch(claim, snapshot, catalog, now).await {
                    report.launched += 1;
                }
            }
            ClaimAction::Register { node } => {
                let labels = registration_labels(claim, catalog, snapshot);
                let patch = NodePatch {
                    labels,
                    remove_taints: vec![TAINT_UNREGISTERED.to_string()],
                    ..Default::default()
                };
                if let Err(e) = self.cluster.patch_node(&node, &patch).await {
                    warn!(nodeclaim = %name, node.name = %node, error = %e, "cannot register node");
                    return;
                }
                let mut status = claim.status.clone().unwrap_or_default();
                status.node_name = Some(node.clone());
                set_condition(&mut status, conditions::REGISTERED, true, "Registered", now);
                if self
                    .cluster
                    .update_nodeclaim_status(&name, &status)
                    .await
                    .is_ok()
                {
                    report.registered += 1;
                    info!(nodeclaim = %name, node.name = %node, "registered");
                }
            }
            ClaimAction::Initialize { node } => {
                let patch = NodePatch {
                    remove_taints: vec![TAINT_INITIALIZING.to_string()],
                    ..Default::default()
                };
                if let Err(e) = self.cluster.patch_node(&node, &patch).await {
                    warn!(nodeclaim = %name, node.name = %node, error = %e, "cannot lift the startup gate");
                    return;
                }
                let mut status = claim.status.clone().unwrap_or_default();
                set_condition(
                    &mut status,
                    conditions::INITIALIZED,
                    true,
                    "Initialized",
                    now,
                );
                if self
                    .cluster
                    .update_nodeclaim_status(&name, &status)
                    .await
                    .is_ok()
                {
                    report.initialized += 1;
                    info!(nodeclaim = %name, node.name = %node, "initialized; startup gate lifted");
                }
            }
            ClaimAction::Delete { reason } => {
                warn!(nodeclaim = %name, reason = %reason, "deleting nodeclaim");
                self.cluster
                    .record_event(EventRecord {
                        kind: "NodeClaim",
                        namespace: String::new(),
                        name: name.clone(),
                        uid: claim.metadata.uid.clone().unwrap_or_default(),
                        type_: "Warning",
                        reason: "Deleting",
                        message: reason,
                    })
                    .await;
                if self.cluster.delete_nodeclaim(&name).await.is_ok() {
                    report.deleted += 1;
                }
            }
        }
    }

    /// Terminates the instance (found by providerID, or by tag if never recorded), deletes the
    /// Node, then removes the finalizer. Returns whether the claim is released.
    async fn finalize(&self, claim: &NodeClaim, snapshot: &ClusterSnapshot) -> bool {
        let name = claim.metadata.name.clone().unwrap_or_default();
        if self.inflight.contains(&name) {
            return false;
        }
        let status = claim.status.as_ref();
        let mut ids: Vec<String> = status
            .and_then(|s| s.provider_id.clone())
            .into_iter()
            .collect();
        if ids.is_empty() {
            match self.cloud.list().await {
                Ok(list) => ids.extend(
                    list.into_iter()
                        .filter(|i| i.nodeclaim.as_deref() == Some(name.as_str()))
                        .map(|i| i.provider_id),
                ),
                Err(e) => {
                    warn!(nodeclaim = %name, error = %e, "cannot look up instances; will retry");
                    return false;
                }
            }
        }
        for id in &ids {
            match self.cloud.delete(id).await {
                Ok(()) | Err(CloudError::NotFound(_)) => {}
                Err(e) => {
                    warn!(nodeclaim = %name, provider_id = %id, error = %e, "terminate failed; will retry");
                    return false;
                }
            }
        }
        if let Some(node) = status.and_then(|s| s.node_name.as_deref())
            && snapshot.nodes.contains_key(node)
            && let Err(e) = self.cluster.delete_node(node).await
        {
            warn!(nodeclaim = %name, node.name = %node, error = %e, "cannot delete node; will retry");
            return false;
        }
        match self.cluster.remove_nodeclaim_finalizer(&name).await {
            Ok(()) => {
                info!(nodeclaim = %name, instances = ids.len(), "finalized");
                true
            }
            Err(e) => {
                warn!(nodeclaim = %name, error = %e, "cannot remove finalizer; will retry");
                false
            }
        }
    }

    /// Launches (or adopts) the instance of a persisted claim that has none recorded.
    async fn relaunch(
        &self,
        claim: &NodeClaim,
        snapshot: &ClusterSnapshot,
        catalog: Option<&Catalog>,
        now: jiff::Timestamp,
    ) -> bool {
        let name = claim.metadata.name.clone().unwrap_or_default();
        let class_name = &claim.spec.node_class_ref.name;
        let Some(class) = snapshot.nodeclasses.get(class_name) else {
            warn!(nodeclaim = %name, nodeclass = %class_name, "nodeclass not found");
            return false;
        };
        let Some(catalog) = catalog else { return false };
        if !self.inflight.begin(&name) {
            return false;
        }
        let result = self.cloud.create(claim, class).await;
        self.inflight.end(&name);
        match result {
            Ok(inst) => {
                let mut status = claim.status.clone().unwrap_or_default();
                let max_pods = class.spec.kubelet.as_ref().and_then(|k| k.max_pods);
                record_instance(&mut status, &inst, catalog, max_pods, now);
                let ok = self
                    .cluster
                    .update_nodeclaim_status(&name, &status)
                    .await
                    .is_ok();
                info!(nodeclaim = %name, provider_id = %inst.provider_id, "launched on retry");
                ok
            }
            Err(CloudError::InsufficientCapacity { .. }) | Err(CloudError::Config { .. }) => {
                abandon(self.cluster.as_ref(), &name).await;
                false
            }
            Err(e) => {
                warn!(nodeclaim = %name, error = %e, "launch retry failed");
                false
            }
        }
    }

    async fn collect_garbage(
        &mut self,
        snapshot: &ClusterSnapshot,
        now: jiff::Timestamp,
        report: &mut LifecycleReport,
    ) {
        let instances = match self.cloud.list().await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "gc: cannot list instances");
                return;
            }
        };
        let claims: HashSet<&str> = snapshot.nodeclaims.keys().map(String::as_str).collect();
        let mut orphans_now = HashSet::new();
        for inst in instances.iter().filter(|i| i.state.is_alive()) {
            let owned = inst
                .nodeclaim
                .as_deref()
                .is_some_and(|c| claims.contains(c) || self.inflight.contains(c));
            if owned {
                continue;
            }
            orphans_now.insert(inst.provider_id.clone());
            let first = *self
                .orphan_seen
                .entry(inst.provider_id.clone())
                .or_insert(now);
            if since(now, first) >= self.config.gc_grace {
                match self.cloud.delete(&inst.provider_id).await {
                    Ok(()) | Err(CloudError::NotFound(_)) => {
                        warn!(provider_id = %inst.provider_id, nodeclaim = ?inst.nodeclaim, "terminated orphaned instance");
                        report.orphans_terminated += 1;
                    }
                    Err(e) => {
                        warn!(provider_id = %inst.provider_id, error = %e, "gc: terminate failed")
                    }
                }
            }
        }
        self.orphan_seen.retain(|k, _| orphans_now.contains(k));

        let alive: HashSet<&str> = instances
            .iter()
            .filter(|i| i.state.is_alive())
            .map(|i| i.provider_id.as_str())
            .collect();
        let mut missing_now = HashSet::new();
        for (name, claim) in &snapshot.nodeclaims {
            let Some(pid) = claim.status.as_ref().and_then(|s| s.provider_id.as_deref()) else {
                continue;
            };
            if claim.metadata.deletion_timestamp.is_some() || alive.contains(pid) {
                continue;
            }
            missing_now.insert(name.clone());
            let first = *self.missing_seen.entry(name.clone()).or_insert(now);
            if since(now, first) >= self.config.gc_grace
                && self.cluster.delete_nodeclaim(name).await.is_ok()
            {
                warn!(nodeclaim = %name, provider_id = %pid, "instance is gone; deleting nodeclaim");
                report.deleted += 1;
            }
        }
        self.missing_seen.retain(|k, _| missing_now.contains(k));

        match self.cloud.collect_unused().await {
            Ok(n) => report.unused_deleted += n,
            Err(e) => warn!(error = %e, "gc: cannot collect unused launch templates"),
        }
    }
}

/// Labels the controller stamps on a Node at registration: ownership, capacity type, instance facts,
/// zone and the pool's template labels.
fn registration_labels(
    claim: &NodeClaim,
    catalog: Option<&Catalog>,
    snapshot: &ClusterSnapshot,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let name = claim.metadata.name.clone().unwrap_or_default();
    labels.insert(NODECLAIM.to_string(), name);
    if let Some(pool) = claim.metadata.labels.as_ref().and_then(|l| l.get(NODEPOOL)) {
        labels.insert(NODEPOOL.to_string(), pool.clone());
        if let Some(p) = snapshot.nodepools.get(pool) {
            labels.extend(p.spec.template.metadata.labels.clone());
        }
    }
    if let Some(s) = &claim.status {
        if let Some(ct) = &s.capacity_type {
            labels.insert(CAPACITY_TYPE.to_string(), ct.clone());
        }
        if let Some(z) = &s.zone {
            labels.insert(ZONE.to_string(), z.clone());
        }
        if let Some(t) = s.instance_type.as_deref().and_then(|t| catalog?.get(t)) {
            for (k, v) in t.labels() {
                labels.insert(k.to_string(), v);
            }
            if let Some(c) = catalog {
                labels.insert(REGION.to_string(), c.region.clone());
            }
        }
    }
    labels
}

/// DaemonSet pods that should run on the node (their template tolerates its lasting taints) but
/// are not Running there yet.
pub fn daemon_pods_missing(
    snapshot: &ClusterSnapshot,
    node: &NodeView,
    startup: &[String],
) -> usize {
    let lasting: Vec<Taint> = node
        .taints
        .iter()
        .filter(|t| {
            t.key != TAINT_INITIALIZING && t.key != TAINT_UNREGISTERED && !startup.contains(&t.key)
        })
        .cloned()
        .collect();
    let running: HashSet<String> = snapshot
        .pods_by_node
        .get(&node.name)
        .into_iter()
        .flatten()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .flat_map(|p| {
            p.metadata
                .owner_references
                .iter()
                .flatten()
                .filter(|o| o.kind == "DaemonSet")
                .map(|o| o.name.clone())
                .collect::<Vec<_>>()
        })
        .collect();
    snapshot
        .daemonsets
        .values()
        .filter(|ds| {
            let tolerations: Vec<Toleration> = ds
                .spec
                .template
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.as_ref())
                .map(|ts| {
                    ts.iter()
                        .filter_map(|t| crate::model::pod::toleration(t).ok())
                        .collect()
                })
                .unwrap_or_default();
            first_untolerated(&tolerations, &lasting).is_none()
        })
        .filter(|ds| {
            let name = ds.metadata.name.as_deref().unwrap_or_default();
            !running.contains(name)
        })
        .count()
}

//! The simulated cluster: an in-memory API server holding real Kubernetes objects.
//!
//! It implements [`ClusterApi`] for the loops, and feeds the same `ClusterIndex` and demand
//! ledger that the watches feed in `serve` (through `kube::watch::index_pod` and the view
//! translations), publishing a snapshot after every change. The fake kubelet and the scheduler
//! stand-in act on it directly, as the rest of Kubernetes would.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod, PodCondition, PodStatus, Taint as K8sTaint};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::disruption::execute;
use crate::kube::api::{ClusterApi, ClusterError, EventRecord, NodePatch};
use crate::kube::crd::{EC2NodeClass, NodeClaim, NodeClaimStatus, NodePool};
use crate::kube::views::node_view;
use crate::kube::watch::index_pod;
use crate::model::labels::TERMINATION_FINALIZER;
use crate::sim::pdb::{self, EvictionVerdict};
use crate::state::{ClusterIndex, DemandLedger, SharedState};

/// Counters the demo reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimCounters {
    /// Pods evicted.
    pub evictions: u64,
    /// Evictions refused by a budget.
    pub evictions_blocked: u64,
    /// Events recorded.
    pub events: u64,
    /// Healthy pods covered by a PodDisruptionBudget that allowed no disruption, removed anyway
    /// (by an eviction or with their node). Counted here, at the removal, whatever asked for it.
    pub pdb_violations: u64,
    /// Workload pods (not DaemonSet pods) deleted because their node was deleted.
    pub pods_removed_with_node: u64,
}

/// The object store behind [`SimCluster`].
#[derive(Debug, Default)]
pub struct SimStore {
    /// Virtual time.
    pub now: jiff::Timestamp,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// Pods by UID, shared with the index (one copy per pod, copied on write).
    pub pods: BTreeMap<String, Arc<Pod>>,
    /// NodeClaims by name.
    pub claims: BTreeMap<String, Arc<NodeClaim>>,
    /// NodePools by name.
    pub pools: BTreeMap<String, NodePool>,
    /// EC2NodeClasses by name.
    pub classes: BTreeMap<String, EC2NodeClass>,
    /// DaemonSets.
    pub daemonsets: Vec<DaemonSet>,
    /// Recent events (bounded).
    pub events: Vec<EventRecord>,
    /// Counters.
    pub counters: SimCounters,
    /// Evictions a test wants refused, by `namespace/name`, with how many more times.
    pub refuse_evictions: BTreeMap<String, u32>,
    /// PodDisruptionBudgets by `namespace/name`; the Eviction API honours them.
    pub pdbs: BTreeMap<String, PodDisruptionBudget>,
    /// Desired replicas by controller UID: the scale PDBs with `maxUnavailable` or a percentage
    /// count against (the sim has no ReplicaSet objects to read it from).
    pub scales: BTreeMap<String, i32>,
    /// How long after it starts a bound pod turns Ready (its readiness probe); zero is at once.
    pub pod_ready_delay: Duration,
    index: ClusterIndex,
    seq: u64,
    dirty: bool,
    /// When set, every write is deferred to the next [`SimCluster::flush`] (see
    /// [`SimCluster::set_batched`]).
    batched: bool,
}

impl SimStore {
    fn next_uid(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}-{:08x}-sim", self.seq)
    }

    /// Every pod, as the PDB model reads them.
    pub fn pod_objects(&self) -> impl Iterator<Item = &Pod> + Clone {
        self.pods.values().map(AsRef::as_ref)
    }

    fn time(&self) -> Time {
        Time(self.now)
    }
}

/// The simulated cluster; cheap to share (`Arc`).
#[derive(Debug)]
pub struct SimCluster {
    store: Mutex<SimStore>,
    shared: SharedState,
    ledger: DemandLedger,
    reservation_window: Duration,
}

impl SimCluster {
    /// An empty, synced cluster at virtual time `now`.
    pub fn new(
        now: jiff::Timestamp,
        shared: SharedState,
        ledger: DemandLedger,
        reservation_window: Duration,
    ) -> Arc<Self> {
        let mut store = SimStore {
            now,
            ..Default::default()
        };
        store.index.set_nodes_synced();
        store.index.set_pods_synced();
        let c = Arc::new(SimCluster {
            store: Mutex::new(store),
            shared,
            ledger,
            reservation_window,
        });
        c.mutate(|_| ());
        c
    }

    fn lock(&self) -> MutexGuard<'_, SimStore> {
        // A poisoned lock means a panic elsewhere already failed the run; keep going with the data.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a change and publishes a fresh snapshot.
    pub fn mutate<R>(&self, f: impl FnOnce(&mut SimStore) -> R) -> R {
        let mut s = self.lock();
        let r = f(&mut s);
        if s.batched {
            s.dirty = true;
        } else {
            self.publish_locked(&mut s);
        }
        r
    }

    /// Defers every write to the next [`SimCluster::flush`], as a watch delivers with lag.
    ///
    /// Publishing rebuilds the whole snapshot (O(pods + nodes)); per write, a tick that registers
    /// or opens n nodes costs O(n × pods), which made a 10,000-pod demo take minutes per phase.
    /// The demo flushes between its controllers instead.
    pub fn set_batched(&self, on: bool) {
        let mut s = self.lock();
        s.batched = on;
        if !on && s.dirty {
            self.publish_locked(&mut s);
        }
    }

    /// Applies a change without publishing; readers see it at the next [`SimCluster::flush`].
    ///
    /// Binds use this: publishing rebuilds the snapshot, and doing that per bind makes a tick
    /// that binds n pods cost n². A real scheduler's binds also reach watchers with some lag.
    pub fn mutate_deferred<R>(&self, f: impl FnOnce(&mut SimStore) -> R) -> R {
        let mut s = self.lock();
        let r = f(&mut s);
        s.dirty = true;
        r
    }

    /// Publishes deferred changes, if any.
    pub fn flush(&self) {
        let mut s = self.lock();
        if s.dirty {
            self.publish_locked(&mut s);
        }
    }

    fn publish_locked(&self, s: &mut SimStore) {
        let now = s.now;
        s.index.refresh_reservations(now, self.reservation_window);
        let snap = s.index.snapshot();
        self.shared.publish(snap);
        s.dirty = false;
    }

    /// Reads the store.
    pub fn read<R>(&self, f: impl FnOnce(&SimStore) -> R) -> R {
        f(&self.lock())
    }

    /// The virtual time.
    pub fn now(&self) -> jiff::Timestamp {
        self.lock().now
    }

    /// Advances virtual time (reservations expire by it, and started pods turn Ready).
    pub fn set_now(&self, now: jiff::Timestamp) {
        let ledger = self.ledger.clone();
        self.mutate(|s| {
            s.now = now;
            let delay = jiff::SignedDuration::try_from(s.pod_ready_delay).unwrap_or_default();
            let due: Vec<String> = s
                .pods
                .iter()
                .filter(|(_, p)| !pdb::ready(p) && started_before(p, now - delay))
                .map(|(u, _)| u.clone())
                .collect();
            let t = s.time();
            for uid in due {
                if let Some(pod) = s.pods.get_mut(&uid) {
                    let status = Arc::make_mut(pod)
                        .status
                        .get_or_insert_with(PodStatus::default);
                    set_pod_condition(status, "Ready", "True", None, t.clone());
                    index_pod(&mut s.index, &ledger, pod.clone(), now);
                }
            }
        });
    }

    /// Sets how long bound pods take to turn Ready (PDBs count only Ready pods).
    pub fn set_pod_ready_delay(&self, delay: Duration) {
        self.mutate(|s| s.pod_ready_delay = delay);
    }

    /// Creates or replaces a PodDisruptionBudget.
    pub fn put_pdb(&self, budget: PodDisruptionBudget) {
        self.mutate(|s| {
            s.pdbs.insert(pdb::key(&budget), budget);
        });
    }

    /// Sets a controller's desired replicas (by its UID), as scaling its ReplicaSet would.
    pub fn set_scale(&self, controller_uid: &str, replicas: i32) {
        self.mutate(|s| {
            s.scales.insert(controller_uid.to_string(), replicas);
        });
    }

    /// A budget's status now, as `kubectl get pdb` would show it.
    pub fn pdb_status(&self, key: &str) -> Option<pdb::PdbStatus> {
        self.read(|s| {
            s.pdbs
                .get(key)
                .map(|b| pdb::status(b, s.pod_objects(), &s.scales))
        })
    }

    /// The snapshot readers see.
    pub fn shared(&self) -> &SharedState {
        &self.shared
    }

    /// Creates a pod (assigning a UID and creation time) and returns its UID.
    pub fn add_pod(&self, mut pod: Pod) -> String {
        let ledger = self.ledger.clone();
        self.mutate(|s| {
            let uid = s.next_uid("pod");
            pod.metadata.uid = Some(uid.clone());
            pod.metadata.creation_timestamp = Some(s.time());
            pod.status.get_or_insert_with(PodStatus::default).phase = Some("Pending".into());
            let now = s.now;
            let pod = Arc::new(pod);
            index_pod(&mut s.index, &ledger, pod.clone(), now);
            s.pods.insert(uid.clone(), pod);
            uid
        })
    }

    /// Replaces a pod object (after a bind, a status change, …).
    pub fn put_pod(&self, pod: Pod) {
        let ledger = self.ledger.clone();
        self.mutate(|s| {
            let now = s.now;
            let pod = Arc::new(pod);
            index_pod(&mut s.index, &ledger, pod.clone(), now);
            if let Some(uid) = pod.metadata.uid.clone() {
                s.pods.insert(uid, pod);
            }
        });
    }

    /// Deletes a pod.
    pub fn delete_pod(&self, uid: &str) {
        let ledger = self.ledger.clone();
        self.mutate(|s| {
            s.pods.remove(uid);
            s.index.delete_pod(uid);
            ledger.remove(uid);
        });
    }

    /// Binds a pending pod to a node, as the scheduler's binding call does; the kubelet starts it.
    ///
    /// # Errors
    /// The pod or node is gone, or the pod is already bound.
    pub fn bind(&self, uid: &str, node: &str) -> Result<(), ClusterError> {
        let ledger = self.ledger.clone();
        self.mutate_deferred(|s| {
            if !s.nodes.contains_key(node) {
                return Err(ClusterError::NotFound(format!("node {node}")));
            }
            let now = s.now;
            let t = s.time();
            let shared = s
                .pods
                .get_mut(uid)
                .ok_or_else(|| ClusterError::NotFound(format!("pod {uid}")))?;
            if shared
                .spec
                .as_ref()
                .is_some_and(|sp| sp.node_name.is_some())
            {
                return Err(ClusterError::Conflict(format!("pod {uid} already bound")));
            }
            let pod = Arc::make_mut(shared);
            let spec = pod.spec.get_or_insert_with(Default::default);
            spec.node_name = Some(node.to_string());
            let status = pod.status.get_or_insert_with(PodStatus::default);
            status.phase = Some("Running".into());
            status.start_time = Some(t.clone());
            set_pod_condition(status, "PodScheduled", "True", None, t.clone());
            let ready = if s.pod_ready_delay.is_zero() {
                "True"
            } else {
                "False"
            };
            set_pod_condition(status, "Ready", ready, None, t);
            index_pod(&mut s.index, &ledger, shared.clone(), now);
            Ok(())
        })
    }

    /// Marks a pod unschedulable, as kube-scheduler does when no node fits.
    pub fn mark_unschedulable(&self, uid: &str, message: &str) {
        let ledger = self.ledger.clone();
        self.mutate_deferred(|s| {
            let now = s.now;
            let t = s.time();
            if let Some(shared) = s.pods.get_mut(uid) {
                let status = Arc::make_mut(shared)
                    .status
                    .get_or_insert_with(PodStatus::default);
                let already = status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "PodScheduled" && c.status == "False");
                set_pod_condition(
                    status,
                    "PodScheduled",
                    "False",
                    Some(("Unschedulable", message)),
                    t,
                );
                if !already {
                    index_pod(&mut s.index, &ledger, shared.clone(), now);
                }
            }
        });
    }

    /// Creates or replaces a Node.
    pub fn put_node(&self, node: Node) {
        self.mutate(|s| {
            let name = node.metadata.name.clone().unwrap_or_default();
            s.index.apply_node(node_view(&node));
            s.nodes.insert(name, node);
        });
    }

    /// Creates or replaces a NodePool.
    pub fn put_nodepool(&self, pool: NodePool) {
        self.mutate(|s| {
            let name = pool.metadata.name.clone().unwrap_or_default();
            s.index.apply_nodepool(pool.clone());
            s.pools.insert(name, pool);
        });
    }

    /// Creates or replaces an EC2NodeClass.
    pub fn put_nodeclass(&self, class: EC2NodeClass) {
        self.mutate(|s| {
            let name = class.metadata.name.clone().unwrap_or_default();
            s.index.apply_nodeclass(class.clone());
            s.classes.insert(name, class);
        });
    }

    /// Adds a DaemonSet.
    pub fn put_daemonset(&self, ds: DaemonSet) {
        self.mutate(|s| {
            s.index.apply_daemonset(ds.clone());
            s.daemonsets.push(ds);
        });
    }

    /// Simulates a crash of the operator: the objects stay, nothing else does. Returns the store's
    /// NodeClaims for inspection.
    pub fn nodeclaims(&self) -> Vec<NodeClaim> {
        self.read(|s| s.claims.values().map(|c| NodeClaim::clone(c)).collect())
    }
}

/// Whether a bound pod started at or before `t`.
fn started_before(pod: &Pod, t: jiff::Timestamp) -> bool {
    let bound = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
    bound
        && pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .is_some_and(|st| st.0 <= t)
}

fn set_pod_condition(
    status: &mut PodStatus,
    type_: &str,
    value: &str,
    reason: Option<(&str, &str)>,
    now: Time,
) {
    let conds = status.conditions.get_or_insert_with(Vec::new);
    conds.retain(|c| c.type_ != type_);
    // Exactly one more: a doubled capacity would hold ~0.4 kB of nothing in every pod.
    conds.reserve_exact(1);
    conds.push(PodCondition {
        type_: type_.to_string(),
        status: value.to_string(),
        reason: reason.map(|r| r.0.to_string()),
        message: reason.map(|r| r.1.to_string()),
        last_transition_time: Some(now),
        ..Default::default()
    });
}

fn k8s_taint(t: &crate::model::Taint) -> K8sTaint {
    K8sTaint {
        key: t.key.clone(),
        value: Some(t.value.clone()),
        effect: t.effect.as_str().to_string(),
        time_added: None,
    }
}

#[async_trait::async_trait]
impl ClusterApi for SimCluster {
    async fn create_nodeclaim(&self, claim: &NodeClaim) -> Result<NodeClaim, ClusterError> {
        self.mutate(|s| {
            let name = claim.metadata.name.clone().unwrap_or_default();
            if s.claims.contains_key(&name) {
                return Err(ClusterError::AlreadyExists(name));
            }
            let mut c = claim.clone();
            c.metadata.uid = Some(s.next_uid("nc"));
            c.metadata.creation_timestamp = Some(s.time());
            let fins = c.metadata.finalizers.get_or_insert_with(Vec::new);
            if !fins.iter().any(|f| f == TERMINATION_FINALIZER) {
                fins.push(TERMINATION_FINALIZER.to_string());
            }
            let shared = Arc::new(c);
            s.index.apply_shared_nodeclaim(shared.clone());
            s.claims.insert(name, shared.clone());
            Ok(NodeClaim::clone(&shared))
        })
    }

    async fn update_nodeclaim_status(
        &self,
        name: &str,
        status: &NodeClaimStatus,
    ) -> Result<(), ClusterError> {
        self.mutate(|s| {
            let c = s
                .claims
                .get_mut(name)
                .ok_or_else(|| ClusterError::NotFound(format!("nodeclaim {name}")))?;
            Arc::make_mut(c).status = Some(status.clone());
            s.index.apply_shared_nodeclaim(c.clone());
            Ok(())
        })
    }

    async fn delete_nodeclaim(&self, name: &str) -> Result<(), ClusterError> {
        self.mutate(|s| {
            let t = s.time();
            let Some(c) = s.claims.get_mut(name) else {
                return Ok(());
            };
            if c.metadata
                .finalizers
                .as_ref()
                .is_some_and(|f| !f.is_empty())
            {
                if c.metadata.deletion_timestamp.is_none() {
                    Arc::make_mut(c).metadata.deletion_timestamp = Some(t);
                }
                s.index.apply_shared_nodeclaim(c.clone());
            } else {
                s.claims.remove(name);
                s.index.delete_nodeclaim(name);
            }
            Ok(())
        })
    }

    async fn remove_nodeclaim_finalizer(&self, name: &str) -> Result<(), ClusterError> {
        self.mutate(|s| {
            let Some(shared) = s.claims.get_mut(name) else {
                return Ok(());
            };
            let c = Arc::make_mut(shared);
            if let Some(f) = c.metadata.finalizers.as_mut() {
                f.retain(|x| x != TERMINATION_FINALIZER);
            }
            let gone = c.metadata.deletion_timestamp.is_some()
                && c.metadata.finalizers.as_ref().is_none_or(Vec::is_empty);
            if gone {
                s.claims.remove(name);
                s.index.delete_nodeclaim(name);
            } else {
                s.index.apply_shared_nodeclaim(shared.clone());
            }
            Ok(())
        })
    }

    async fn patch_node(&self, name: &str, patch: &NodePatch) -> Result<(), ClusterError> {
        self.mutate(|s| {
            let node = s
                .nodes
                .get_mut(name)
                .ok_or_else(|| ClusterError::NotFound(format!("node {name}")))?;
            let labels = node.metadata.labels.get_or_insert_with(BTreeMap::new);
            for (k, v) in &patch.labels {
                labels.insert(k.clone(), v.clone());
            }
            let spec = node.spec.get_or_insert_with(Default::default);
            let taints = spec.taints.get_or_insert_with(Vec::new);
            taints.retain(|t| !patch.remove_taints.contains(&t.key));
            for t in &patch.add_taints {
                if !taints
                    .iter()
                    .any(|x| x.key == t.key && x.effect == t.effect.as_str())
                {
                    taints.push(k8s_taint(t));
                }
            }
            let view = node_view(node);
            s.index.apply_node(view);
            Ok(())
        })
    }

    async fn delete_node(&self, name: &str) -> Result<(), ClusterError> {
        let ledger = self.ledger.clone();
        self.mutate(|s| {
            s.nodes.remove(name);
            s.index.delete_node(name);
            // The pod garbage collector deletes pods bound to a deleted node.
            let orphans: Vec<String> = s
                .pods
                .iter()
                .filter(|(_, p)| {
                    p.spec.as_ref().and_then(|sp| sp.node_name.as_deref()) == Some(name)
                })
                .map(|(u, _)| u.clone())
                .collect();
            for uid in orphans {
                if let Some(pod) = s.pods.get(&uid)
                    && execute::evictable(pod)
                {
                    s.counters.pods_removed_with_node += 1;
                    if pdb::removal_violates(pod, s.pdbs.values(), s.pod_objects(), &s.scales) {
                        s.counters.pdb_violations += 1;
                    }
                }
                s.pods.remove(&uid);
                s.index.delete_pod(&uid);
                ledger.remove(&uid);
            }
            Ok(())
        })
    }

    async fn evict_pod(&self, namespace: &str, name: &str) -> Result<(), ClusterError> {
        let ledger = self.ledger.clone();
        self.mutate(|s| {
            let key = format!("{namespace}/{name}");
            if let Some(n) = s.refuse_evictions.get_mut(&key)
                && *n > 0
            {
                *n -= 1;
                s.counters.evictions_blocked += 1;
                return Err(ClusterError::Blocked(key));
            }
            let uid = s
                .pods
                .iter()
                .find(|(_, p)| {
                    p.metadata.namespace.as_deref() == Some(namespace)
                        && p.metadata.name.as_deref() == Some(name)
                })
                .map(|(u, _)| u.clone());
            let Some(uid) = uid else {
                return Ok(());
            };
            let Some(pod) = s.pods.get(&uid) else {
                return Ok(());
            };
            match pdb::eviction_verdict(pod, s.pdbs.values(), s.pod_objects(), &s.scales) {
                EvictionVerdict::Allowed { .. } => {}
                EvictionVerdict::Refused(budget) => {
                    s.counters.evictions_blocked += 1;
                    return Err(ClusterError::Blocked(format!("{key} (budget {budget})")));
                }
                EvictionVerdict::Ambiguous(budgets) => {
                    return Err(ClusterError::Api(format!(
                        "pod {key} has more than one pod disruption budget: {}",
                        budgets.join(", ")
                    )));
                }
            }
            // Checked apart from the verdict above, as for removals with a node.
            if pdb::removal_violates(pod, s.pdbs.values(), s.pod_objects(), &s.scales) {
                s.counters.pdb_violations += 1;
            }
            s.pods.remove(&uid);
            s.index.delete_pod(&uid);
            ledger.remove(&uid);
            s.counters.evictions += 1;
            Ok(())
        })
    }

    async fn record_event(&self, event: EventRecord) {
        self.mutate(|s| {
            s.counters.events += 1;
            if s.events.len() >= 10_000 {
                s.events.remove(0);
            }
            s.events.push(event);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> jiff::Timestamp {
        "2026-01-05T09:00:00Z".parse().unwrap()
    }

    /// A node with three `web` pods of ReplicaSet `rs-web` (scale 3), and a budget over them.
    fn cluster(budget: &str) -> Arc<SimCluster> {
        let c = SimCluster::new(
            t0(),
            SharedState::new(),
            DemandLedger::new(Duration::from_secs(600), 100),
            Duration::from_secs(120),
        );
        c.put_node(serde_yaml::from_str("metadata: {name: n1}").unwrap());
        for i in 0..3 {
            let pod: Pod = serde_yaml::from_str(&format!(
                r#"
metadata:
  name: web-{i}
  namespace: shop
  labels: {{app: web}}
  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: web, uid: rs-web, controller: true}}]
spec: {{containers: [{{name: c}}]}}
"#
            ))
            .unwrap();
            let uid = c.add_pod(pod);
            c.bind(&uid, "n1").unwrap();
        }
        c.flush();
        c.set_scale("rs-web", 3);
        c.put_pdb(serde_yaml::from_str(budget).unwrap());
        c
    }

    #[tokio::test]
    async fn eviction_honours_a_pod_disruption_budget() {
        let c = cluster(
            "metadata: {name: web, namespace: shop}\nspec: {maxUnavailable: 1, selector: {matchLabels: {app: web}}}",
        );
        assert_eq!(c.pdb_status("shop/web").unwrap().disruptions_allowed, 1);
        c.evict_pod("shop", "web-0").await.unwrap();
        // The ReplicaSet still wants 3: with 2 healthy, the budget allows nothing more (429).
        assert_eq!(c.pdb_status("shop/web").unwrap().disruptions_allowed, 0);
        let e = c.evict_pod("shop", "web-1").await.unwrap_err();
        assert!(matches!(e, ClusterError::Blocked(_)), "{e:?}");
        let counters = c.read(|s| s.counters.clone());
        assert_eq!(
            (
                counters.evictions,
                counters.evictions_blocked,
                counters.pdb_violations
            ),
            (1, 1, 0)
        );
        // The replacement binds but is not Ready until its readiness delay has passed.
        c.set_pod_ready_delay(Duration::from_secs(10));
        let mut again: Pod = c.read(|s| s.pods.values().next().map(|p| (**p).clone()).unwrap());
        again.metadata.name = Some("web-0-r".into());
        again.spec.as_mut().unwrap().node_name = None;
        again.status = None;
        let uid = c.add_pod(again);
        c.bind(&uid, "n1").unwrap();
        c.set_now(t0() + jiff::SignedDuration::from_secs(5));
        assert!(matches!(
            c.evict_pod("shop", "web-1").await,
            Err(ClusterError::Blocked(_))
        ));
        c.set_now(t0() + jiff::SignedDuration::from_secs(10));
        assert_eq!(c.pdb_status("shop/web").unwrap().disruptions_allowed, 1);
        c.evict_pod("shop", "web-1").await.unwrap();
    }

    #[tokio::test]
    async fn pods_deleted_with_their_node_past_the_budget_are_violations() {
        let c = cluster(
            "metadata: {name: web, namespace: shop}\nspec: {minAvailable: 2, selector: {matchLabels: {app: web}}}",
        );
        // Three healthy, two must stay: the first pod may go, the next two break the budget.
        c.delete_node("n1").await.unwrap();
        let counters = c.read(|s| s.counters.clone());
        assert_eq!(counters.pods_removed_with_node, 3);
        assert_eq!(counters.pdb_violations, 2);
    }
}

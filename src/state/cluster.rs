//! `ClusterIndex` (the single writer's mutable index) and `ClusterSnapshot` (what readers see).
//!
//! The index has synchronous `apply_*` / `delete_*` / `reset` methods over plain views, so tests
//! drive it without an API server; the kube adapter turns watch events into these calls and
//! publishes a new snapshot after each batch of events.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;

use crate::kube::crd::{EC2NodeClass, NodeClaim, NodePool, conditions};
use crate::model::labels;
use crate::model::{Resources, Taint};

/// FNV-1a over the key's bytes: node names are short, trusted strings, and the extender looks up
/// hundreds per request, where SipHash's DoS resistance costs more than it buys.
#[derive(Debug, Clone, Copy, Default)]
pub struct FnvHasher(u64);

impl std::hash::Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// The hasher for node-name maps.
pub type FnvBuild = std::hash::BuildHasherDefault<FnvHasher>;

/// Nodes by name.
pub type NodeMap = HashMap<String, Arc<NodeView>, FnvBuild>;

/// A node as decisions need it: identity, labels, taints, room and gating state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// Node labels, shared: a view is copied on every bind (its `requested` changes) and the
    /// fit checks take the labels too, so copying them each time would dominate.
    pub labels: Arc<BTreeMap<String, String>>,
    /// Node taints.
    pub taints: Vec<Taint>,
    /// What pods may use.
    pub allocatable: Resources,
    /// Sum of the requests of the non-terminal pods bound here.
    pub requested: Resources,
    /// Room held for pending pods reserved on this node (by their NodeClaim).
    pub reserved: Resources,
    /// UIDs of the pending pods that room is held for.
    pub reserved_pods: Vec<String>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// The Ready condition is True.
    pub ready: bool,
    /// `spec.providerID`.
    pub provider_id: Option<String>,
}

impl NodeView {
    /// Whether a taint with this key is present.
    pub fn has_taint(&self, key: &str) -> bool {
        self.taints.iter().any(|t| t.key == key)
    }

    /// The NodeClaim that owns this node, from its label.
    pub fn nodeclaim(&self) -> Option<&str> {
        self.labels.get(labels::NODECLAIM).map(String::as_str)
    }
}

/// A pod as the index needs it: where it is bound and what it requests. It carries only what
/// the index's bookkeeping reads (the rest is in `object`), because there is one per pod in the
/// cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodView {
    /// Pod UID, the key.
    pub uid: String,
    /// `spec.nodeName`, once bound.
    pub node_name: Option<String>,
    /// Effective requests (containers, init containers, overhead).
    pub requests: Resources,
    /// Succeeded or Failed pods no longer hold resources.
    pub terminal: bool,
    /// `PodScheduled=False` with reason `Unschedulable`.
    pub unschedulable: bool,
    /// The full object, shared with whoever else holds it, for planning and drains.
    pub object: Option<Arc<Pod>>,
}

/// An immutable view of the cluster; readers hold an `Arc` of it for as long as they like.
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    /// Nodes by name.
    pub nodes: NodeMap,
    /// Pods not yet bound (and not terminal), with their full objects for planning.
    pub pending: HashMap<String, Arc<Pod>>,
    /// Pods bound to each node, by node name (for topology and drains).
    pub pods_by_node: HashMap<String, Vec<Arc<Pod>>>,
    /// NodeClaims by name.
    pub nodeclaims: HashMap<String, Arc<NodeClaim>>,
    /// NodePools by name.
    pub nodepools: HashMap<String, Arc<NodePool>>,
    /// EC2NodeClasses by name.
    pub nodeclasses: HashMap<String, Arc<EC2NodeClass>>,
    /// DaemonSets by namespace/name.
    pub daemonsets: HashMap<String, Arc<DaemonSet>>,
    /// Whether the initial list of nodes and pods has completed.
    pub synced: bool,
    /// Monotonic version, bumped on every publish.
    pub version: u64,
}

impl ClusterSnapshot {
    /// Looks a node up by name.
    pub fn node(&self, name: &str) -> Option<&NodeView> {
        self.nodes.get(name).map(AsRef::as_ref)
    }
}

/// The object kinds the index holds besides nodes and pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// `gantry.dev/v1` NodeClaim.
    NodeClaim,
    /// `gantry.dev/v1` NodePool.
    NodePool,
    /// `gantry.dev/v1` EC2NodeClass.
    NodeClass,
    /// `apps/v1` DaemonSet.
    DaemonSet,
}

/// The single writer's index of nodes and pods.
#[derive(Debug, Default)]
pub struct ClusterIndex {
    nodes: NodeMap,
    pods: HashMap<String, PodView>,
    nodeclaims: HashMap<String, Arc<NodeClaim>>,
    nodepools: HashMap<String, Arc<NodePool>>,
    nodeclasses: HashMap<String, Arc<EC2NodeClass>>,
    daemonsets: HashMap<String, Arc<DaemonSet>>,
    /// Requests of pods bound to nodes not (yet) seen, so a late node starts with the right sum.
    orphan_requests: HashMap<String, Resources>,
    nodes_synced: bool,
    pods_synced: bool,
    version: u64,
}

impl ClusterIndex {
    /// An empty, unsynced index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a node, keeping the requested sum the pods give it.
    pub fn apply_node(&mut self, mut node: NodeView) {
        node.requested = self
            .nodes
            .get(&node.name)
            .map(|n| n.requested.clone())
            .or_else(|| self.orphan_requests.remove(&node.name))
            .unwrap_or_default();
        if let Some(old) = self.nodes.get(&node.name) {
            node.reserved = old.reserved.clone();
            node.reserved_pods = old.reserved_pods.clone();
        }
        self.nodes.insert(node.name.clone(), Arc::new(node));
    }

    /// Removes a node; its pods' requests are parked until it (or another of that name) returns.
    pub fn delete_node(&mut self, name: &str) {
        if let Some(n) = self.nodes.remove(name)
            && !n.requested.is_empty()
        {
            self.orphan_requests
                .insert(name.to_string(), n.requested.clone());
        }
    }

    /// Adds or replaces a pod, moving its requests between nodes as needed.
    pub fn apply_pod(&mut self, pod: PodView) {
        if let Some(old) = self.pods.remove(&pod.uid) {
            self.unaccount(&old);
        }
        self.account(&pod);
        self.pods.insert(pod.uid.clone(), pod);
    }

    /// Adds or replaces a pod together with its full object (kept for planning and drains).
    pub fn apply_pod_object(&mut self, mut view: PodView, pod: Arc<Pod>) {
        view.object = Some(pod);
        self.apply_pod(view);
    }

    /// Removes a pod and its requests.
    pub fn delete_pod(&mut self, uid: &str) {
        if let Some(old) = self.pods.remove(uid) {
            self.unaccount(&old);
        }
    }

    /// Adds or replaces a NodeClaim.
    pub fn apply_nodeclaim(&mut self, claim: NodeClaim) {
        self.apply_shared_nodeclaim(Arc::new(claim));
    }

    /// [`Self::apply_nodeclaim`] for a claim the caller already shares, so both hold one copy.
    pub fn apply_shared_nodeclaim(&mut self, claim: Arc<NodeClaim>) {
        let name = claim.metadata.name.clone().unwrap_or_default();
        self.nodeclaims.insert(name, claim);
    }

    /// Forgets every NodeClaim, NodePool, EC2NodeClass or DaemonSet before a relist of that kind.
    pub fn clear_kind(&mut self, kind: ObjectKind) {
        match kind {
            ObjectKind::NodeClaim => self.nodeclaims.clear(),
            ObjectKind::NodePool => self.nodepools.clear(),
            ObjectKind::NodeClass => self.nodeclasses.clear(),
            ObjectKind::DaemonSet => self.daemonsets.clear(),
        }
    }

    /// Removes a NodeClaim.
    pub fn delete_nodeclaim(&mut self, name: &str) {
        self.nodeclaims.remove(name);
    }

    /// Adds or replaces a NodePool.
    pub fn apply_nodepool(&mut self, pool: NodePool) {
        let name = pool.metadata.name.clone().unwrap_or_default();
        self.nodepools.insert(name, Arc::new(pool));
    }

    /// Removes a NodePool.
    pub fn delete_nodepool(&mut self, name: &str) {
        self.nodepools.remove(name);
    }

    /// Adds or replaces an EC2NodeClass.
    pub fn apply_nodeclass(&mut self, class: EC2NodeClass) {
        let name = class.metadata.name.clone().unwrap_or_default();
        self.nodeclasses.insert(name, Arc::new(class));
    }

    /// Removes an EC2NodeClass.
    pub fn delete_nodeclass(&mut self, name: &str) {
        self.nodeclasses.remove(name);
    }

    /// Adds or replaces a DaemonSet.
    pub fn apply_daemonset(&mut self, ds: DaemonSet) {
        let key = format!(
            "{}/{}",
            ds.metadata.namespace.as_deref().unwrap_or_default(),
            ds.metadata.name.as_deref().unwrap_or_default()
        );
        self.daemonsets.insert(key, Arc::new(ds));
    }

    /// Removes a DaemonSet by `namespace/name`.
    pub fn delete_daemonset(&mut self, key: &str) {
        self.daemonsets.remove(key);
    }

    /// Recomputes the room held on nodes for the pending pods their NodeClaims were launched for.
    ///
    /// A reservation holds from launch until `window` after the claim is Initialized; after that
    /// a pod that has not bound there competes like any other.
    pub fn refresh_reservations(&mut self, now: jiff::Timestamp, window: std::time::Duration) {
        let mut by_node: HashMap<String, Vec<String>> = HashMap::new();
        for claim in self.nodeclaims.values() {
            let Some(status) = &claim.status else {
                continue;
            };
            let Some(node) = &status.node_name else {
                continue;
            };
            let expired = status
                .conditions
                .iter()
                .find(|c| c.type_ == conditions::INITIALIZED && c.status == "True")
                .and_then(|c| c.last_transition_time.as_deref())
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| now.duration_since(t).as_secs_f64() > window.as_secs_f64());
            if !expired {
                by_node
                    .entry(node.clone())
                    .or_default()
                    .extend(status.reserved_pods.iter().map(|p| p.uid.clone()));
            }
        }
        self.set_reservations(&by_node);
    }

    /// Marks the initial node list done.
    pub fn set_nodes_synced(&mut self) {
        self.nodes_synced = true;
    }

    /// Marks the initial pod list done.
    pub fn set_pods_synced(&mut self) {
        self.pods_synced = true;
    }

    /// Clears nodes before a relist (the watcher restarted), keeping pods.
    pub fn reset_nodes(&mut self) {
        self.nodes.clear();
        self.orphan_requests.clear();
        for pod in self.pods.values() {
            if let Some(n) = &pod.node_name
                && !pod.terminal
            {
                self.orphan_requests
                    .entry(n.clone())
                    .or_default()
                    .add(&pod.requests);
            }
        }
    }

    /// Clears pods before a relist, zeroing every node's requested sum.
    pub fn reset_pods(&mut self) {
        self.pods.clear();
        self.orphan_requests.clear();
        for n in self.nodes.values_mut() {
            Arc::make_mut(n).requested = Resources::default();
        }
    }

    /// Sets the room reserved on each node for pending pods (replacing the previous reservations).
    ///
    /// Pods already bound are dropped from a reservation: their requests are counted in `requested`.
    pub fn set_reservations(&mut self, reserved: &HashMap<String, Vec<String>>) {
        let pods = &self.pods;
        for (name, node) in &mut self.nodes {
            let mut total = Resources::default();
            let mut uids = Vec::new();
            for uid in reserved.get(name).map(Vec::as_slice).unwrap_or_default() {
                if let Some(p) = pods.get(uid)
                    && p.node_name.is_none()
                    && !p.terminal
                {
                    total.add(&p.requests);
                    uids.push(uid.clone());
                }
            }
            if node.reserved != total || node.reserved_pods != uids {
                let n = Arc::make_mut(node);
                n.reserved = total;
                n.reserved_pods = uids;
            }
        }
    }

    /// Every NodePool, for the admission webhook's satisfiability check.
    pub fn nodepools(&self) -> Vec<NodePool> {
        self.nodepools
            .values()
            .map(|p| p.as_ref().clone())
            .collect()
    }

    /// Number of pods indexed.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Builds an immutable snapshot; cheap, since node views and objects are shared.
    pub fn snapshot(&mut self) -> ClusterSnapshot {
        self.version += 1;
        let mut pending = HashMap::new();
        let mut pods_by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        for (uid, view) in &self.pods {
            if view.terminal {
                continue;
            }
            let Some(obj) = &view.object else {
                continue;
            };
            match &view.node_name {
                None => {
                    pending.insert(uid.clone(), obj.clone());
                }
                Some(node) => pods_by_node
                    .entry(node.clone())
                    .or_default()
                    .push(obj.clone()),
            }
        }
        ClusterSnapshot {
            nodes: self.nodes.clone(),
            pending,
            pods_by_node,
            nodeclaims: self.nodeclaims.clone(),
            nodepools: self.nodepools.clone(),
            nodeclasses: self.nodeclasses.clone(),
            daemonsets: self.daemonsets.clone(),
            synced: self.nodes_synced && self.pods_synced,
            version: self.version,
        }
    }

    fn account(&mut self, pod: &PodView) {
        if pod.terminal {
            return;
        }
        if let Some(node) = &pod.node_name {
            match self.nodes.get_mut(node) {
                Some(n) => Arc::make_mut(n).requested.add(&pod.requests),
                None => self
                    .orphan_requests
                    .entry(node.clone())
                    .or_default()
                    .add(&pod.requests),
            }
        }
    }

    fn unaccount(&mut self, pod: &PodView) {
        if pod.terminal {
            return;
        }
        if let Some(node) = &pod.node_name {
            if let Some(n) = self.nodes.get_mut(node) {
                Arc::make_mut(n).requested.sub(&pod.requests);
            } else if let Some(r) = self.orphan_requests.get_mut(node) {
                r.sub(&pod.requests);
            }
        }
    }
}

/// Where the writer publishes snapshots and readers load them, lock-free.
#[derive(Debug, Clone, Default)]
pub struct SharedState {
    inner: Arc<ArcSwap<ClusterSnapshot>>,
}

impl SharedState {
    /// A shared state holding an empty, unsynced snapshot.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<ClusterSnapshot> {
        self.inner.load_full()
    }

    /// Replaces the snapshot (writer only).
    pub fn publish(&self, snapshot: ClusterSnapshot) {
        self.inner.store(Arc::new(snapshot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeView {
        NodeView {
            name: name.into(),
            allocatable: Resources::cpu_mem(4000, 8 << 30),
            ready: true,
            ..Default::default()
        }
    }

    fn pod(uid: &str, node: Option<&str>, cpu: i64) -> PodView {
        PodView {
            uid: uid.into(),
            node_name: node.map(Into::into),
            requests: Resources::cpu_mem(cpu, 0),
            ..Default::default()
        }
    }

    #[test]
    fn requested_follows_pods_in_any_order() {
        let mut idx = ClusterIndex::new();
        idx.apply_pod(pod("a", Some("n1"), 100)); // before its node exists
        idx.apply_node(node("n1"));
        idx.apply_pod(pod("b", Some("n1"), 200));
        assert_eq!(idx.snapshot().node("n1").unwrap().requested.cpu, 300);
        // Rebinding (or an update) moves the request.
        idx.apply_pod(pod("b", Some("n2"), 200));
        idx.apply_node(node("n2"));
        let s = idx.snapshot();
        assert_eq!(s.node("n1").unwrap().requested.cpu, 100);
        assert_eq!(s.node("n2").unwrap().requested.cpu, 200);
        idx.delete_pod("a");
        let mut done = pod("b", Some("n2"), 200);
        done.terminal = true;
        idx.apply_pod(done);
        let s = idx.snapshot();
        assert_eq!(s.node("n1").unwrap().requested.cpu, 0);
        assert_eq!(s.node("n2").unwrap().requested.cpu, 0);
    }

    #[test]
    fn snapshots_are_immutable_and_sync_needs_both_lists() {
        let mut idx = ClusterIndex::new();
        idx.apply_node(node("n1"));
        let before = idx.snapshot();
        idx.apply_pod(pod("a", Some("n1"), 100));
        assert_eq!(before.node("n1").unwrap().requested.cpu, 0);
        assert!(!before.synced);
        idx.set_nodes_synced();
        assert!(!idx.snapshot().synced);
        idx.set_pods_synced();
        assert!(idx.snapshot().synced);
    }

    #[test]
    fn relists_rebuild_sums() {
        let mut idx = ClusterIndex::new();
        idx.apply_node(node("n1"));
        idx.apply_pod(pod("a", Some("n1"), 100));
        idx.reset_nodes();
        idx.apply_node(node("n1"));
        assert_eq!(idx.snapshot().node("n1").unwrap().requested.cpu, 100);
        idx.reset_pods();
        assert_eq!(idx.snapshot().node("n1").unwrap().requested.cpu, 0);
    }
}

//! The fake kubelet: turns the cloud's instances into Nodes, as user data and kubelets would.
//!
//! For every live instance it registers a Node (named like EC2's private DNS names, with the
//! labels and taints the launch's user data would give the kubelet), turns it Ready after a
//! delay and starts the DaemonSet pods there, then removes the claim's startup taints after
//! another delay, as a CNI agent would. When an instance goes away its Node is deleted.
//!
//! # Guarantees
//! - Nothing here sleeps or reads the wall clock: virtual time comes only from `now`.
//! - It never removes `gantry.dev/unregistered` or `gantry.dev/initializing`; lifting them is the
//!   lifecycle controller's job.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, Pod, PodCondition, PodSpec,
    Taint as K8sTaint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

use super::cluster::SimCluster;
use crate::cloud::{CloudProvider, Instance};
use crate::kube::api::{ClusterApi, NodePatch};
use crate::kube::crd::{NodeClaim, NodePool, TaintSpec};
use crate::model::labels::{
    CAPACITY_TYPE, HOSTNAME, NODECLAIM, NODEPOOL, REGION, TAINT_INITIALIZING, TAINT_UNREGISTERED,
    ZONE,
};
use crate::model::taints::first_untolerated;
use crate::model::{Catalog, Effect, PodDemand, Resources, Taint};

/// The region nodes are labelled with when the catalog does not name one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Delays (virtual time) and the catalog nodes are sized from.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// From the instance first appearing alive to its Node registering.
    pub register_delay: Duration,
    /// From registration to the Node turning Ready (and its DaemonSet pods starting).
    pub ready_delay: Duration,
    /// From Ready to the claim's startup taints being removed.
    pub startup_taint_delay: Duration,
    /// Instance types, for capacity, allocatable and instance labels.
    pub catalog: Arc<Catalog>,
}

impl KubeletConfig {
    /// Delays typical of EKS nodes (30 s to register, 10 s to Ready, 5 s for the CNI agent).
    pub fn typical(catalog: Arc<Catalog>) -> Self {
        KubeletConfig {
            register_delay: Duration::from_secs(30),
            ready_delay: Duration::from_secs(10),
            startup_taint_delay: Duration::from_secs(5),
            catalog,
        }
    }
}

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeletStats {
    /// Live instances the kubelet follows.
    pub instances: usize,
    /// Nodes registered this tick.
    pub registered: usize,
    /// Nodes that turned Ready this tick.
    pub became_ready: usize,
    /// Nodes whose startup taints were removed this tick.
    pub startup_taints_removed: usize,
    /// DaemonSet pods started this tick.
    pub daemon_pods: usize,
    /// Nodes deleted because their instance went away.
    pub deleted: usize,
    /// Instances whose type is not in the catalog (their Node has no room).
    pub unknown_types: usize,
    /// Listing the cloud failed; nothing else happened this tick.
    pub list_error: Option<String>,
}

/// How far one instance has got.
#[derive(Debug, Clone)]
struct Tracked {
    first_seen: jiff::Timestamp,
    node: Option<String>,
    registered_at: Option<jiff::Timestamp>,
    ready_at: Option<jiff::Timestamp>,
    startup_done: bool,
    claim: Option<String>,
}

/// The kubelets of every simulated instance.
#[derive(Debug)]
pub struct SimKubelet {
    config: KubeletConfig,
    tracked: BTreeMap<String, Tracked>,
    next_ip: u32,
}

impl SimKubelet {
    /// A kubelet that has seen no instance yet.
    pub fn new(config: KubeletConfig) -> Self {
        SimKubelet {
            config,
            tracked: BTreeMap::new(),
            next_ip: 10,
        }
    }

    /// The Node name given to an instance, once it registered.
    pub fn node_for(&self, provider_id: &str) -> Option<&str> {
        self.tracked
            .get(provider_id)
            .and_then(|t| t.node.as_deref())
    }

    /// One tick at virtual time `now`: register, ready, untaint and delete Nodes as due.
    pub async fn step(
        &mut self,
        now: jiff::Timestamp,
        cloud: &dyn CloudProvider,
        cluster: &SimCluster,
    ) -> KubeletStats {
        let mut stats = KubeletStats::default();
        let instances = match cloud.list().await {
            Ok(list) => list,
            Err(e) => {
                // Never delete Nodes on a failed list: the instances may well be there.
                stats.list_error = Some(e.to_string());
                return stats;
            }
        };
        let alive: BTreeMap<String, Instance> = instances
            .into_iter()
            .filter(|i| i.state.is_alive())
            .map(|i| (i.provider_id.clone(), i))
            .collect();
        stats.instances = alive.len();

        let gone: Vec<String> = self
            .tracked
            .keys()
            .filter(|id| !alive.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(t) = self.tracked.remove(&id)
                && let Some(node) = t.node
            {
                // The API cannot refuse deleting a Node in the simulation; a stale one is GC'd.
                let _ = cluster.delete_node(&node).await;
                stats.deleted += 1;
            }
        }

        for (id, inst) in &alive {
            if !self.tracked.contains_key(id) {
                let t = adopt(cluster, inst, now);
                self.tracked.insert(id.clone(), t);
            }
        }

        let ids: Vec<String> = self.tracked.keys().cloned().collect();
        for id in ids {
            let Some(inst) = alive.get(&id) else { continue };
            self.advance(&id, inst, now, cluster, &mut stats).await;
        }
        stats
    }

    /// Moves one instance through every stage that is due (several at once with zero delays).
    async fn advance(
        &mut self,
        id: &str,
        inst: &Instance,
        now: jiff::Timestamp,
        cluster: &SimCluster,
        stats: &mut KubeletStats,
    ) {
        let Some(mut t) = self.tracked.get(id).cloned() else {
            return;
        };
        if t.registered_at.is_none() && due(t.first_seen, self.config.register_delay, now) {
            let name = self.fresh_name(cluster);
            let (node, claim, known) = build_node(&self.config.catalog, cluster, inst, &name, now);
            if !known {
                stats.unknown_types += 1;
            }
            cluster.put_node(node);
            t.node = Some(name);
            t.claim = claim;
            t.registered_at = Some(now);
            stats.registered += 1;
        }
        if let (Some(reg), None, Some(node)) = (t.registered_at, t.ready_at, t.node.clone())
            && due(reg, self.config.ready_delay, now)
        {
            if set_ready(cluster, &node, now) {
                stats.became_ready += 1;
                stats.daemon_pods += start_daemon_pods(cluster, &node, t.claim.as_deref());
            }
            t.ready_at = Some(now);
        }
        if let (Some(ready), false, Some(node)) = (t.ready_at, t.startup_done, t.node.clone())
            && due(ready, self.config.startup_taint_delay, now)
        {
            let keys = startup_taint_keys(cluster, t.claim.as_deref());
            if !keys.is_empty() {
                let patch = NodePatch {
                    remove_taints: keys,
                    ..Default::default()
                };
                if cluster.patch_node(&node, &patch).await.is_ok() {
                    stats.startup_taints_removed += 1;
                }
            }
            t.startup_done = true;
        }
        self.tracked.insert(id.to_string(), t);
    }

    /// A private-DNS style name (`ip-10-0-x-y.ec2.internal`) no Node has yet.
    fn fresh_name(&mut self, cluster: &SimCluster) -> String {
        loop {
            let n = self.next_ip;
            self.next_ip = self.next_ip.wrapping_add(1);
            let (x, y) = ((n / 250) % 256, n % 250 + 1);
            let name = format!("ip-10-0-{x}-{y}.ec2.internal");
            if !cluster.read(|s| s.nodes.contains_key(&name)) {
                return name;
            }
        }
    }
}

fn due(since: jiff::Timestamp, delay: Duration, now: jiff::Timestamp) -> bool {
    let elapsed = Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO);
    elapsed >= delay
}

/// Starts following an instance; a Node already carrying its providerID (a kubelet restart)
/// is taken over in whatever state it is in.
fn adopt(cluster: &SimCluster, inst: &Instance, now: jiff::Timestamp) -> Tracked {
    let existing = cluster.read(|s| {
        s.nodes
            .values()
            .find(|n| {
                n.spec.as_ref().and_then(|sp| sp.provider_id.as_deref())
                    == Some(inst.provider_id.as_str())
            })
            .cloned()
    });
    let mut t = Tracked {
        first_seen: now,
        node: None,
        registered_at: None,
        ready_at: None,
        startup_done: false,
        claim: inst.nodeclaim.clone(),
    };
    if let Some(node) = existing {
        t.node = node.metadata.name.clone();
        t.registered_at = Some(now);
        if is_ready(&node) {
            t.ready_at = Some(now);
        }
        if let Some(c) = node.metadata.labels.as_ref().and_then(|l| l.get(NODECLAIM)) {
            t.claim = Some(c.clone());
        }
    }
    t
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Parses taint specs, skipping any with an unknown effect.
pub fn taints_of(specs: &[TaintSpec]) -> Vec<Taint> {
    specs
        .iter()
        .filter_map(|t| {
            Some(Taint::new(
                &t.key,
                t.value.as_deref().unwrap_or_default(),
                Effect::parse(&t.effect)?,
            ))
        })
        .collect()
}

/// The taints a new Node registers with: the two gates, then the claim's taints and startup taints.
pub fn registration_taints(claim: Option<&NodeClaim>, pool: Option<&NodePool>) -> Vec<Taint> {
    let mut out = vec![
        Taint::new(TAINT_UNREGISTERED, "true", Effect::NoExecute),
        Taint::new(TAINT_INITIALIZING, "true", Effect::NoSchedule),
    ];
    let (taints, startup) = match (claim, pool) {
        (Some(c), _) => (&c.spec.taints, &c.spec.startup_taints),
        (None, Some(p)) => (
            &p.spec.template.spec.taints,
            &p.spec.template.spec.startup_taints,
        ),
        (None, None) => return out,
    };
    for t in taints_of(taints).into_iter().chain(taints_of(startup)) {
        if !out.iter().any(|x| x.key == t.key && x.effect == t.effect) {
            out.push(t);
        }
    }
    out
}

/// Whether a DaemonSet runs a pod on a node: its template tolerates the pool's lasting taints
/// and its node selector and required affinity match the node's labels.
///
/// Gates and startup taints are not considered: DaemonSet pods are the agents that open them.
pub fn daemonset_runs_on(
    ds: &DaemonSet,
    node_labels: &BTreeMap<String, String>,
    pool_taints: &[Taint],
) -> bool {
    let Some(spec) = ds.spec.template.spec.as_ref() else {
        return false;
    };
    let ns = ds.metadata.namespace.as_deref().unwrap_or("default");
    let Ok(d) = PodDemand::from_spec(ns, spec) else {
        return false;
    };
    first_untolerated(&d.tolerations, pool_taints).is_none()
        && d.node_terms().matches_map(node_labels)
}

/// Builds the Node for an instance; also returns its claim's name and whether the type was known.
fn build_node(
    catalog: &Catalog,
    cluster: &SimCluster,
    inst: &Instance,
    name: &str,
    now: jiff::Timestamp,
) -> (Node, Option<String>, bool) {
    let (claim, pool, max_pods) = cluster.read(|s| {
        let claim = inst
            .nodeclaim
            .as_ref()
            .and_then(|c| s.claims.get(c))
            .cloned();
        let pool_name = inst.nodepool.clone().or_else(|| {
            claim
                .as_ref()
                .and_then(|c| c.metadata.labels.as_ref()?.get(NODEPOOL).cloned())
        });
        let pool = pool_name.and_then(|p| s.pools.get(&p)).cloned();
        let class = claim
            .as_ref()
            .map(|c| c.spec.node_class_ref.name.clone())
            .or_else(|| {
                pool.as_ref()
                    .map(|p| p.spec.template.spec.node_class_ref.name.clone())
            });
        let max_pods = class
            .and_then(|c| s.classes.get(&c))
            .and_then(|c| c.spec.kubelet.as_ref())
            .and_then(|k| k.max_pods);
        (claim, pool, max_pods)
    });

    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    if let Some(p) = &pool {
        labels.extend(p.spec.template.metadata.labels.clone());
    }
    if let Some(c) = &claim {
        labels.extend(c.metadata.labels.clone().unwrap_or_default());
    }
    let it = catalog.get(&inst.instance_type);
    if let Some(it) = it {
        for (k, v) in it.labels() {
            labels.insert(k.to_string(), v);
        }
    } else {
        labels.insert(
            crate::model::labels::INSTANCE_TYPE.to_string(),
            inst.instance_type.clone(),
        );
    }
    let region = if catalog.region.is_empty() {
        DEFAULT_REGION.to_string()
    } else {
        catalog.region.clone()
    };
    labels.insert(HOSTNAME.to_string(), name.to_string());
    labels.insert(ZONE.to_string(), inst.zone.clone());
    labels.insert(REGION.to_string(), region);
    labels.insert(
        CAPACITY_TYPE.to_string(),
        inst.capacity_type.as_str().to_string(),
    );
    let pool_name = inst
        .nodepool
        .clone()
        .or_else(|| pool.as_ref().and_then(|p| p.metadata.name.clone()));
    if let Some(p) = pool_name {
        labels.insert(NODEPOOL.to_string(), p);
    }
    if let Some(c) = &inst.nodeclaim {
        labels.insert(NODECLAIM.to_string(), c.clone());
    }

    let taints = registration_taints(claim.as_deref(), pool.as_ref())
        .into_iter()
        .map(|t| K8sTaint {
            key: t.key,
            value: Some(t.value),
            effect: t.effect.as_str().to_string(),
            time_added: None,
        })
        .collect();
    let (capacity, allocatable) = it.map_or_else(
        || (Resources::default(), Resources::default()),
        |it| (it.capacity(max_pods), it.allocatable(max_pods)),
    );
    let ip = name
        .trim_start_matches("ip-")
        .trim_end_matches(".ec2.internal")
        .replace('-', ".");
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            creation_timestamp: Some(Time(now)),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            provider_id: Some(inst.provider_id.clone()),
            taints: Some(taints),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            capacity: Some(quantities(&capacity)),
            allocatable: Some(quantities(&allocatable)),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: Some("KubeletNotReady".into()),
                message: Some("container runtime network not ready".into()),
                last_heartbeat_time: Some(Time(now)),
                last_transition_time: Some(Time(now)),
            }]),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip,
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.to_string(),
                },
            ]),
            ..Default::default()
        }),
    };
    let claim_name = claim
        .and_then(|c| c.metadata.name.clone())
        .or_else(|| inst.nodeclaim.clone());
    (node, claim_name, it.is_some())
}

fn quantities(r: &Resources) -> BTreeMap<String, Quantity> {
    r.to_map()
        .into_iter()
        .map(|(k, v)| (k, Quantity(v)))
        .collect()
}

/// Flips the Node's Ready condition to True; false if the Node is gone.
fn set_ready(cluster: &SimCluster, node: &str, now: jiff::Timestamp) -> bool {
    let Some(mut n) = cluster.read(|s| s.nodes.get(node).cloned()) else {
        return false;
    };
    let status = n.status.get_or_insert_with(NodeStatus::default);
    let conds = status.conditions.get_or_insert_with(Vec::new);
    conds.retain(|c| c.type_ != "Ready");
    conds.push(NodeCondition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: Some("KubeletReady".into()),
        message: Some("kubelet is posting ready status".into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    });
    cluster.put_node(n);
    true
}

/// The claim's startup taint keys, minus the gates (which are never the kubelet's to remove).
fn startup_taint_keys(cluster: &SimCluster, claim: Option<&str>) -> Vec<String> {
    let Some(claim) = claim else {
        return Vec::new();
    };
    cluster.read(|s| {
        s.claims
            .get(claim)
            .map(|c| {
                c.spec
                    .startup_taints
                    .iter()
                    .map(|t| t.key.clone())
                    .filter(|k| k != TAINT_UNREGISTERED && k != TAINT_INITIALIZING)
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Starts one pod per eligible DaemonSet on the node; returns how many.
fn start_daemon_pods(cluster: &SimCluster, node: &str, claim: Option<&str>) -> usize {
    let (daemonsets, labels, pool_taints, existing) = cluster.read(|s| {
        let labels = s
            .nodes
            .get(node)
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        let pool_taints = claim
            .and_then(|c| s.claims.get(c))
            .map(|c| taints_of(&c.spec.taints))
            .or_else(|| {
                labels
                    .get(NODEPOOL)
                    .and_then(|p| s.pools.get(p))
                    .map(|p| taints_of(&p.spec.template.spec.taints))
            })
            .unwrap_or_default();
        // DaemonSet owners already running a pod here (a restart must not start twins).
        let existing: HashSet<String> = s
            .pods
            .values()
            .filter(|p| p.spec.as_ref().and_then(|sp| sp.node_name.as_deref()) == Some(node))
            .flat_map(|p| p.metadata.owner_references.iter().flatten())
            .filter(|o| o.kind == "DaemonSet")
            .map(|o| o.uid.clone())
            .collect();
        (s.daemonsets.clone(), labels, pool_taints, existing)
    });
    let mut started = 0;
    for ds in &daemonsets {
        let ds_key = ds_uid(ds);
        if existing.contains(&ds_key) || !daemonset_runs_on(ds, &labels, &pool_taints) {
            continue;
        }
        let pod = daemon_pod(ds, &ds_key, node);
        let uid = cluster.add_pod(pod);
        if let Some(mut p) = cluster.read(|s| s.pods.get(&uid).map(|p| Pod::clone(p))) {
            let status = p.status.get_or_insert_with(Default::default);
            status.phase = Some("Running".into());
            let t = p.metadata.creation_timestamp.clone();
            status.start_time = t.clone();
            status.conditions = Some(
                ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
                    .into_iter()
                    .map(|c| PodCondition {
                        type_: c.into(),
                        status: "True".into(),
                        last_transition_time: t.clone(),
                        ..Default::default()
                    })
                    .collect(),
            );
            cluster.put_pod(p);
        }
        started += 1;
    }
    started
}

/// The DaemonSet's identity for owner references (its UID, or `namespace/name` without one).
fn ds_uid(ds: &DaemonSet) -> String {
    ds.metadata.uid.clone().unwrap_or_else(|| {
        format!(
            "{}/{}",
            ds.metadata.namespace.as_deref().unwrap_or("default"),
            ds.metadata.name.as_deref().unwrap_or_default()
        )
    })
}

/// A pod for the DaemonSet, already bound to the node, owned by the DaemonSet.
fn daemon_pod(ds: &DaemonSet, owner_uid: &str, node: &str) -> Pod {
    let template = ds.spec.template.clone();
    let ds_name = ds.metadata.name.clone().unwrap_or_default();
    let short = node
        .trim_start_matches("ip-")
        .trim_end_matches(".ec2.internal");
    let meta = template.metadata.unwrap_or_default();
    let spec = PodSpec {
        node_name: Some(node.to_string()),
        ..template.spec.unwrap_or_default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{ds_name}-{short}")),
            namespace: Some(
                ds.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
            ),
            labels: meta.labels,
            annotations: meta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "DaemonSet".into(),
                name: ds_name,
                uid: owner_uid.to_string(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

    use super::*;

    fn ds(yaml: &str) -> DaemonSet {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn daemonsets_respect_pool_taints_and_selectors() {
        let plain = ds(r#"
metadata: {name: kube-proxy, namespace: kube-system}
spec:
  selector: {matchLabels: {app: kp}}
  template:
    metadata: {labels: {app: kp}}
    spec: {containers: [{name: c, resources: {requests: {cpu: 100m}}}]}
"#);
        let gpu_only = ds(r#"
metadata: {name: dcgm, namespace: kube-system}
spec:
  selector: {matchLabels: {app: dcgm}}
  template:
    metadata: {labels: {app: dcgm}}
    spec:
      nodeSelector: {karpenter.k8s.aws/instance-gpu-count: "1"}
      tolerations: [{key: nvidia.com/gpu, operator: Exists}]
      containers: [{name: c}]
"#);
        let gpu_taint = vec![Taint::new("nvidia.com/gpu", "true", Effect::NoSchedule)];
        let mut labels = BTreeMap::new();
        labels.insert(
            crate::model::labels::INSTANCE_GPU_COUNT.to_string(),
            "1".to_string(),
        );
        assert!(daemonset_runs_on(&plain, &labels, &[]));
        assert!(!daemonset_runs_on(&plain, &labels, &gpu_taint));
        assert!(daemonset_runs_on(&gpu_only, &labels, &gpu_taint));
        assert!(!daemonset_runs_on(&gpu_only, &BTreeMap::new(), &[]));
    }

    #[test]
    fn registration_taints_gate_first_then_claim() {
        let mut claim = NodeClaim::new("c", Default::default());
        claim.spec.taints.push(TaintSpec {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
        });
        claim.spec.startup_taints.push(TaintSpec {
            key: "node.cilium.io/agent-not-ready".into(),
            value: None,
            effect: "NoExecute".into(),
        });
        let t = registration_taints(Some(&claim), None);
        let keys: Vec<&str> = t.iter().map(|t| t.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                TAINT_UNREGISTERED,
                TAINT_INITIALIZING,
                "dedicated",
                "node.cilium.io/agent-not-ready"
            ]
        );
        assert_eq!(t[0].effect, Effect::NoExecute);
        assert_eq!(t[1].effect, Effect::NoSchedule);
        assert_eq!(registration_taints(None, None).len(), 2);
    }

    // ------------------------------------------------------------ the kubelet against a cluster

    use std::sync::Mutex;

    use crate::cloud::{CloudError, InstanceState};
    use crate::kube::crd::EC2NodeClass;
    use crate::model::CapacityType;
    use crate::state::{DemandLedger, SharedState};

    /// The smallest cloud the kubelet needs: a list a test edits.
    #[derive(Default)]
    pub(crate) struct StubCloud {
        pub instances: Mutex<Vec<Instance>>,
        pub fail_list: Mutex<bool>,
    }

    #[async_trait::async_trait]
    impl CloudProvider for StubCloud {
        async fn create(&self, _: &NodeClaim, _: &EC2NodeClass) -> Result<Instance, CloudError> {
            Err(CloudError::Other("stub cannot launch".into()))
        }
        async fn delete(&self, id: &str) -> Result<(), CloudError> {
            self.instances
                .lock()
                .unwrap()
                .retain(|i| i.provider_id != id);
            Ok(())
        }
        async fn get(&self, id: &str) -> Result<Instance, CloudError> {
            let list = self.instances.lock().unwrap();
            list.iter()
                .find(|i| i.provider_id == id)
                .cloned()
                .ok_or_else(|| CloudError::NotFound(id.into()))
        }
        async fn list(&self) -> Result<Vec<Instance>, CloudError> {
            if *self.fail_list.lock().unwrap() {
                return Err(CloudError::Throttled);
            }
            Ok(self.instances.lock().unwrap().clone())
        }
        async fn catalog(&self) -> Result<Arc<Catalog>, CloudError> {
            Ok(Arc::new(Catalog::embedded().unwrap()))
        }
    }

    pub(crate) fn instance(id: &str, claim: &str) -> Instance {
        Instance {
            provider_id: crate::cloud::provider_id("us-east-1b", id),
            instance_id: id.into(),
            instance_type: "m7i.large".into(),
            zone: "us-east-1b".into(),
            capacity_type: CapacityType::Spot,
            state: InstanceState::Running,
            nodeclaim: Some(claim.into()),
            nodepool: Some("general".into()),
            image_id: None,
            price: None,
            launch_time_unix: None,
        }
    }

    fn node(c: &SimCluster, name: &str) -> Node {
        c.read(|s| s.nodes.get(name).cloned()).unwrap()
    }

    fn taint_keys(n: &Node) -> Vec<String> {
        n.spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .map(|ts| ts.iter().map(|t| t.key.clone()).collect())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn instances_become_nodes_then_ready_then_untainted_then_gone() {
        let t0: jiff::Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
        let secs = |n: i64| t0 + jiff::SignedDuration::from_secs(n);
        let cluster = SimCluster::new(
            t0,
            SharedState::new(),
            DemandLedger::new(Duration::from_secs(600), 1000),
            Duration::from_secs(120),
        );
        let pool: NodePool = serde_yaml::from_str(
            r#"
metadata: {name: general}
spec:
  template:
    metadata: {labels: {team: web}}
    spec:
      nodeClassRef: {name: default}
      startupTaints: [{key: node.cilium.io/agent-not-ready, value: "true", effect: NoExecute}]
"#,
        )
        .unwrap();
        cluster.put_nodepool(pool.clone());
        let class: EC2NodeClass =
            serde_yaml::from_str("metadata: {name: default}\nspec: {kubelet: {maxPods: 17}}")
                .unwrap();
        cluster.put_nodeclass(class);
        let mut claim = NodeClaim::new("general-abcde", Default::default());
        claim.metadata.labels = Some([(NODEPOOL.to_string(), "general".to_string())].into());
        claim.spec.node_class_ref.name = "default".into();
        claim.spec.startup_taints = pool.spec.template.spec.startup_taints.clone();
        cluster.create_nodeclaim(&claim).await.unwrap();
        cluster.put_daemonset(ds(r#"
metadata: {name: kube-proxy, namespace: kube-system, uid: ds-kp}
spec:
  selector: {matchLabels: {app: kp}}
  template:
    metadata: {labels: {app: kp}}
    spec:
      tolerations: [{operator: Exists}]
      containers: [{name: c, resources: {requests: {cpu: 100m, memory: 64Mi}}}]
"#));
        cluster.put_daemonset(ds(r#"
metadata: {name: gpu-plugin, namespace: kube-system, uid: ds-gpu}
spec:
  selector: {matchLabels: {app: gp}}
  template:
    metadata: {labels: {app: gp}}
    spec:
      nodeSelector: {nvidia.com/gpu.present: "true"}
      containers: [{name: c}]
"#));

        let cloud = StubCloud::default();
        cloud
            .instances
            .lock()
            .unwrap()
            .push(instance("i-0001", "general-abcde"));
        let catalog = Arc::new(Catalog::embedded().unwrap());
        let mut kubelet = SimKubelet::new(KubeletConfig::typical(catalog.clone()));

        let s = kubelet.step(t0, &cloud, &cluster).await;
        assert_eq!((s.instances, s.registered), (1, 0));
        assert!(cluster.read(|s| s.nodes.is_empty()), "not before the delay");

        let s = kubelet.step(secs(30), &cloud, &cluster).await;
        assert_eq!(s.registered, 1);
        let pid = crate::cloud::provider_id("us-east-1b", "i-0001");
        let name = kubelet.node_for(&pid).unwrap().to_string();
        assert!(name.starts_with("ip-10-0-") && name.ends_with(".ec2.internal"));
        let n = node(&cluster, &name);
        assert_eq!(
            n.spec.as_ref().unwrap().provider_id.as_deref(),
            Some(pid.as_str())
        );
        assert_eq!(
            taint_keys(&n),
            [
                TAINT_UNREGISTERED,
                TAINT_INITIALIZING,
                "node.cilium.io/agent-not-ready"
            ]
        );
        let labels = n.metadata.labels.clone().unwrap();
        for (k, v) in [
            (HOSTNAME, name.as_str()),
            (crate::model::labels::INSTANCE_TYPE, "m7i.large"),
            (ZONE, "us-east-1b"),
            (REGION, "us-east-1"),
            (CAPACITY_TYPE, "spot"),
            (NODEPOOL, "general"),
            (NODECLAIM, "general-abcde"),
            (crate::model::labels::INSTANCE_FAMILY, "m7i"),
            (crate::model::labels::ARCH, "amd64"),
            ("team", "web"),
        ] {
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
        }
        let view = cluster.shared().load().node(&name).cloned().unwrap();
        let it = catalog.get("m7i.large").unwrap();
        assert_eq!(view.allocatable, it.allocatable(Some(17)));
        assert_eq!(view.allocatable.pods, 17, "the class caps max pods");
        assert!(!view.ready);

        let s = kubelet.step(secs(39), &cloud, &cluster).await;
        assert_eq!(s.became_ready, 0);
        let s = kubelet.step(secs(40), &cloud, &cluster).await;
        assert_eq!(
            (s.became_ready, s.daemon_pods),
            (1, 1),
            "the GPU plugin skips this node"
        );
        let snap = cluster.shared().load();
        assert!(snap.node(&name).unwrap().ready);
        let pods = snap.pods_by_node.get(&name).unwrap();
        assert_eq!(pods.len(), 1);
        let dp = &pods[0];
        assert_eq!(
            dp.metadata.owner_references.as_ref().unwrap()[0].kind,
            "DaemonSet"
        );
        assert_eq!(
            dp.status.as_ref().unwrap().phase.as_deref(),
            Some("Running")
        );
        assert_eq!(snap.node(&name).unwrap().requested.cpu, 100);
        assert!(snap.pending.is_empty());

        // Startup taints go; the gates stay for the lifecycle controller.
        let s = kubelet.step(secs(45), &cloud, &cluster).await;
        assert_eq!(s.startup_taints_removed, 1);
        assert_eq!(
            taint_keys(&node(&cluster, &name)),
            [TAINT_UNREGISTERED, TAINT_INITIALIZING]
        );
        let s = kubelet.step(secs(100), &cloud, &cluster).await;
        assert_eq!(
            s,
            KubeletStats {
                instances: 1,
                ..Default::default()
            },
            "idle once done"
        );

        // A failed list deletes nothing; a vanished instance takes its Node (and pods) along.
        *cloud.fail_list.lock().unwrap() = true;
        cloud.instances.lock().unwrap().clear();
        let s = kubelet.step(secs(101), &cloud, &cluster).await;
        assert!(s.list_error.is_some());
        assert!(cluster.read(|s| s.nodes.contains_key(&name)));
        *cloud.fail_list.lock().unwrap() = false;
        let s = kubelet.step(secs(102), &cloud, &cluster).await;
        assert_eq!(s.deleted, 1);
        assert!(cluster.read(|s| s.nodes.is_empty() && s.pods.is_empty()));
    }

    #[tokio::test]
    async fn zero_delays_do_every_stage_in_one_tick_and_restarts_adopt_nodes() {
        let t0: jiff::Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
        let cluster = SimCluster::new(
            t0,
            SharedState::new(),
            DemandLedger::new(Duration::from_secs(600), 1000),
            Duration::from_secs(120),
        );
        let cloud = StubCloud::default();
        // No claim in the store (a leak the GC will reap): the Node still registers, gated.
        cloud
            .instances
            .lock()
            .unwrap()
            .push(instance("i-0002", "missing"));
        let catalog = Arc::new(Catalog::embedded().unwrap());
        let config = KubeletConfig {
            register_delay: Duration::ZERO,
            ready_delay: Duration::ZERO,
            startup_taint_delay: Duration::ZERO,
            catalog,
        };
        let mut kubelet = SimKubelet::new(config.clone());
        let s = kubelet.step(t0, &cloud, &cluster).await;
        assert_eq!((s.registered, s.became_ready), (1, 1));
        let names: Vec<String> = cluster.read(|s| s.nodes.keys().cloned().collect());
        assert_eq!(names.len(), 1);
        assert_eq!(
            taint_keys(&node(&cluster, &names[0])),
            [TAINT_UNREGISTERED, TAINT_INITIALIZING]
        );
        // A new kubelet (restart) adopts the Node instead of registering a twin.
        let mut again = SimKubelet::new(config);
        let s = again.step(t0, &cloud, &cluster).await;
        assert_eq!(s.registered, 0);
        assert_eq!(cluster.read(|s| s.nodes.len()), 1);
    }
}

//! The scheduler stand-in: kube-scheduler with a `gantry` profile, as far as the demo needs it.
//!
//! Each tick it takes the pending `gantry` pods (oldest first), runs its own in-tree style fit
//! check over every node, and only then calls the real extender over HTTPS, exactly as
//! kube-scheduler does: `filter` when at least one node is feasible, `prioritize` when at least
//! two pass, then binds to the best node. A pod that no node takes is marked
//! `PodScheduled=False/Unschedulable`, which is how the pod watch feeds the demand ledger.
//!
//! Failed pods are retried the way kube-scheduler's queue does: after a cluster change that
//! could help them (a node added or changed, room freed, or, for pods with topology rules,
//! another pod bound), and never before their exponential back-off (1 s doubling to 10 s) ends.
//!
//! # Guarantees
//! Nothing here sleeps or reads the wall clock: virtual time comes only from `now`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use k8s_openapi::api::core::v1::Pod;

use super::cluster::SimCluster;
use crate::extender::client::ExtenderClient;
use crate::model::labels::{HOSTNAME, SCHEDULER_NAME, TAINT_INITIALIZING, TAINT_UNREGISTERED};
use crate::model::pod::{HostPort, TopologyKey};
use crate::model::requirements::{PodSelector, lookup};
use crate::model::taints::first_untolerated;
use crate::model::{PodDemand, Resources, Taint};
use crate::state::ClusterSnapshot;

/// The in-tree plugin set's best score per node (NodeResourcesFit MostAllocated).
pub const MAX_NODE_SCORE: i64 = 100;

/// How the stand-in behaves; defaults are kube-scheduler's and the README's.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// The profile name pods opt into with `schedulerName`.
    pub scheduler_name: String,
    /// The extender's `weight` (README: "Choosing the extender weight").
    pub extender_weight: i64,
    /// Most scheduling attempts per tick, so one tick stays bounded.
    pub max_attempts_per_tick: usize,
    /// First retry delay after a failed attempt (kube-scheduler: 1 s).
    pub initial_backoff: Duration,
    /// Largest retry delay (kube-scheduler: 10 s).
    pub max_backoff: Duration,
    /// A failed pod is retried after this long even if nothing changed (kube-scheduler: 5 min).
    pub flush_unschedulable_after: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            scheduler_name: SCHEDULER_NAME.to_string(),
            extender_weight: 20,
            max_attempts_per_tick: 2_000,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            flush_unschedulable_after: Duration::from_secs(300),
        }
    }
}

/// One bind, with what the demo report needs to know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// Pod UID.
    pub uid: String,
    /// `namespace/name`.
    pub pod: String,
    /// The node it bound to.
    pub node: String,
    /// Virtual time of the bind.
    pub at: jiff::Timestamp,
    /// The pod's creation time, for time-to-bound.
    pub created: Option<jiff::Timestamp>,
    /// The node still carried `gantry.dev/initializing` or `gantry.dev/unregistered` (a bug).
    pub gated: bool,
    /// Some NodeClaim reserved the pod.
    pub reserved: bool,
    /// The pod was reserved on another node (or on a claim with no node yet).
    pub off_reservation: bool,
}

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepStats {
    /// Pending `gantry` pods seen.
    pub pending: usize,
    /// Scheduling attempts made.
    pub attempted: usize,
    /// Pods bound, in order.
    pub bound: Vec<Binding>,
    /// Attempts that ended with the pod marked unschedulable.
    pub unschedulable: usize,
    /// `filter` calls made.
    pub filter_calls: usize,
    /// `prioritize` calls made.
    pub prioritize_calls: usize,
    /// Extender calls that failed or answered `Error` (ignored, as `ignorable: true` does).
    pub extender_errors: usize,
    /// Binds refused by the API (pod already bound or node gone).
    pub bind_errors: usize,
    /// Binds to a node still gated (must stay 0).
    pub bound_to_gated: usize,
    /// Binds away from the pod's reservation.
    pub bound_off_reservation: usize,
}

/// A pod already on a node, as the fit check needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PlacedPod {
    /// Namespace.
    pub namespace: String,
    /// Labels, which selectors match.
    pub labels: BTreeMap<String, String>,
    /// Host ports it holds.
    pub host_ports: Vec<HostPort>,
    /// Its own required hostname anti-affinity, which incoming pods must respect too.
    pub anti_affinity_hostname: Vec<PodSelector>,
}

impl PlacedPod {
    /// The placement facts of a demand.
    pub fn from_demand(d: &PodDemand) -> Self {
        PlacedPod {
            namespace: d.namespace.clone(),
            labels: d.labels.clone(),
            host_ports: d.host_ports.clone(),
            anti_affinity_hostname: d.anti_affinity_hostname.clone(),
        }
    }
}

/// The shared copy of a placement, made on first sight.
fn intern(shapes: &mut HashSet<Arc<PlacedPod>>, shape: PlacedPod) -> Arc<PlacedPod> {
    if let Some(shared) = shapes.get(&shape) {
        return shared.clone();
    }
    let shared = Arc::new(shape);
    shapes.insert(shared.clone());
    shared
}

/// A node as the fit check sees it, including pods assumed onto it earlier in the tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeCandidate {
    /// Node name.
    pub name: String,
    /// Labels.
    pub labels: Arc<BTreeMap<String, String>>,
    /// Taints.
    pub taints: Vec<Taint>,
    /// What pods may use.
    pub allocatable: Resources,
    /// Requests of the pods on it (bound or assumed).
    pub requested: Resources,
    /// Cordoned.
    pub unschedulable: bool,
    /// Has a deletion timestamp.
    pub deleting: bool,
    /// Pods on it.
    pub pods: Vec<Arc<PlacedPod>>,
}

impl NodeCandidate {
    /// The node's value for a topology key; hostname falls back to the node name.
    pub fn domain(&self, key: TopologyKey) -> Option<&str> {
        match key {
            TopologyKey::Hostname => Some(
                self.labels
                    .get(HOSTNAME)
                    .map_or(self.name.as_str(), String::as_str),
            ),
            TopologyKey::Zone => lookup(&self.labels, crate::model::labels::ZONE),
        }
    }
}

/// Matching-pod counts per domain for one hard topology spread constraint of the pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpreadCounts {
    /// Zone or hostname.
    pub key: Option<TopologyKey>,
    /// Largest allowed skew.
    pub max_skew: u32,
    /// The pod matches its own selector (it counts once placed).
    pub self_match: bool,
    /// Matching pods per eligible domain (domains with none are present with 0).
    pub counts: HashMap<String, u32>,
    /// The smallest count over eligible domains.
    pub min: u32,
}

/// Fit failure reasons, worded as kube-scheduler words them so messages read familiarly.
pub mod reasons {
    /// Cordoned.
    pub const UNSCHEDULABLE: &str = "node(s) were unschedulable";
    /// Deletion timestamp set.
    pub const DELETING: &str = "node(s) were being deleted";
    /// A NoSchedule/NoExecute taint the pod does not tolerate.
    pub const TAINT: &str = "node(s) had untolerated taint";
    /// nodeSelector or required node affinity.
    pub const AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
    /// CPU.
    pub const CPU: &str = "Insufficient cpu";
    /// Memory.
    pub const MEMORY: &str = "Insufficient memory";
    /// Ephemeral storage.
    pub const EPHEMERAL: &str = "Insufficient ephemeral-storage";
    /// Pod slots.
    pub const PODS: &str = "Too many pods";
    /// GPUs or another extended resource.
    pub const EXTENDED: &str = "Insufficient extended resources";
    /// Host ports taken.
    pub const PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
    /// The pod's own anti-affinity.
    pub const ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
    /// Another pod's anti-affinity.
    pub const EXISTING_ANTI_AFFINITY: &str =
        "node(s) didn't satisfy existing pods anti-affinity rules";
    /// Required zonal pod affinity: no selected pod in the node's zone.
    pub const AFFINITY_ZONE: &str = "node(s) didn't match pod affinity rules";
    /// Topology spread skew.
    pub const SPREAD: &str = "node(s) didn't match pod topology spread constraints";
    /// The node lacks the topology label.
    pub const SPREAD_LABEL: &str =
        "node(s) didn't match pod topology spread constraints (missing required label)";
    /// The extender rejected the node.
    pub const EXTENDER: &str = "node(s) rejected by the gantry extender";
}

/// The in-tree filters over one node: `Ok` if the pod may land there.
///
/// `topo` holds what the pod's topology rules need to know about the other nodes, from
/// [`topology`] over the same node list.
///
/// # Errors
/// The first failing filter's reason, from [`reasons`].
pub fn fits(pod: &PodDemand, node: &NodeCandidate, topo: &Topology) -> Result<(), &'static str> {
    if node.unschedulable {
        return Err(reasons::UNSCHEDULABLE);
    }
    if node.deleting {
        return Err(reasons::DELETING);
    }
    if first_untolerated(&pod.tolerations, &node.taints).is_some() {
        return Err(reasons::TAINT);
    }
    if !pod.node_terms().matches_map(&node.labels) {
        return Err(reasons::AFFINITY);
    }
    let free = node.allocatable.minus(&node.requested);
    let r = &pod.requests;
    if r.cpu > free.cpu {
        return Err(reasons::CPU);
    }
    if r.memory > free.memory {
        return Err(reasons::MEMORY);
    }
    if r.ephemeral > free.ephemeral {
        return Err(reasons::EPHEMERAL);
    }
    if r.pods > free.pods {
        return Err(reasons::PODS);
    }
    if !r.fits_in(&free) {
        return Err(reasons::EXTENDED);
    }
    if pod.host_ports.iter().any(|hp| {
        node.pods
            .iter()
            .any(|p| p.host_ports.iter().any(|o| hp.conflicts(o)))
    }) {
        return Err(reasons::PORTS);
    }
    for sel in &pod.anti_affinity_hostname {
        if node
            .pods
            .iter()
            .any(|p| sel.selects(&pod.namespace, &p.namespace, &p.labels))
        {
            return Err(reasons::ANTI_AFFINITY);
        }
    }
    if node.pods.iter().any(|p| {
        p.anti_affinity_hostname
            .iter()
            .any(|sel| sel.selects(&p.namespace, &pod.namespace, &pod.labels))
    }) {
        return Err(reasons::EXISTING_ANTI_AFFINITY);
    }
    for zones in topo.zone_affinity.iter().flatten() {
        let ok = node
            .domain(TopologyKey::Zone)
            .is_some_and(|z| zones.contains(z));
        if !ok {
            return Err(reasons::AFFINITY_ZONE);
        }
    }
    for c in &topo.spread {
        let Some(key) = c.key else { continue };
        let Some(domain) = node.domain(key) else {
            return Err(reasons::SPREAD_LABEL);
        };
        let here = c.counts.get(domain).copied().unwrap_or(0);
        let skew = i64::from(here) + i64::from(c.self_match) - i64::from(c.min);
        if skew > i64::from(c.max_skew) {
            return Err(reasons::SPREAD);
        }
    }
    Ok(())
}

/// What a pod's topology rules need to know about all nodes, computed once per attempt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    /// One entry per hard topology spread constraint, from [`spread_counts`].
    pub spread: Vec<SpreadCounts>,
    /// One entry per required zonal pod-affinity term: the zones holding a selected pod, or
    /// `None` when no pod matches anywhere and the pod matches its own term (the first of a
    /// group may go anywhere, as kube-scheduler allows).
    pub zone_affinity: Vec<Option<HashSet<String>>>,
}

/// Builds the [`Topology`] of a pod over the node list.
pub fn topology(pod: &PodDemand, nodes: &[NodeCandidate]) -> Topology {
    let zone_affinity = pod
        .affinity_zone
        .iter()
        .map(|sel| {
            let zones: HashSet<String> = nodes
                .iter()
                .filter(|n| {
                    n.pods
                        .iter()
                        .any(|p| sel.selects(&pod.namespace, &p.namespace, &p.labels))
                })
                .filter_map(|n| n.domain(TopologyKey::Zone).map(str::to_string))
                .collect();
            let first_of_group =
                zones.is_empty() && sel.selects(&pod.namespace, &pod.namespace, &pod.labels);
            (!first_of_group).then_some(zones)
        })
        .collect();
    Topology {
        spread: spread_counts(pod, nodes),
        zone_affinity,
    }
}

/// Counts, for each hard topology spread constraint of the pod, its matching pods per domain.
///
/// Eligible domains are those of nodes that match the pod's node selector and affinity and have
/// the topology label; taints are ignored, as `nodeTaintsPolicy: Ignore` (the default) says.
pub fn spread_counts(pod: &PodDemand, nodes: &[NodeCandidate]) -> Vec<SpreadCounts> {
    let hard: Vec<_> = pod.topology_spread.iter().filter(|c| c.hard).collect();
    if hard.is_empty() {
        return Vec::new();
    }
    let terms = pod.node_terms();
    let eligible: Vec<&NodeCandidate> = nodes
        .iter()
        .filter(|n| terms.matches_map(&n.labels))
        .collect();
    hard.iter()
        .map(|c| {
            let mut counts: HashMap<String, u32> = HashMap::new();
            for n in &eligible {
                let Some(domain) = n.domain(c.key) else {
                    continue;
                };
                let matching = n
                    .pods
                    .iter()
                    .filter(|p| c.selector.selects(&pod.namespace, &p.namespace, &p.labels))
                    .count();
                *counts.entry(domain.to_string()).or_default() +=
                    u32::try_from(matching).unwrap_or(u32::MAX);
            }
            let min = counts.values().copied().min().unwrap_or(0);
            SpreadCounts {
                key: Some(c.key),
                max_skew: c.max_skew,
                self_match: c
                    .selector
                    .selects(&pod.namespace, &pod.namespace, &pod.labels),
                counts,
                min,
            }
        })
        .collect()
}

/// NodeResourcesFit's MostAllocated score (0–100): CPU and memory use after placing the pod.
pub fn most_allocated(pod: &Resources, node: &NodeCandidate) -> i64 {
    let after = node.requested.plus(pod);
    let part = |used: i64, cap: i64| {
        if cap <= 0 {
            0
        } else {
            (used.clamp(0, cap) as i128 * i128::from(MAX_NODE_SCORE) / cap as i128) as i64
        }
    };
    (part(after.cpu, node.allocatable.cpu) + part(after.memory, node.allocatable.memory)) / 2
}

/// kube-scheduler's "0/N nodes are available: …" text, reasons counted and sorted.
pub fn unschedulable_message(total: usize, failures: &BTreeMap<&'static str, usize>) -> String {
    let parts: Vec<String> = failures.iter().map(|(r, n)| format!("{n} {r}")).collect();
    if parts.is_empty() {
        format!("0/{total} nodes are available.")
    } else {
        format!("0/{total} nodes are available: {}.", parts.join(", "))
    }
}

/// The scheduling-queue state of a pod that failed at least once.
#[derive(Debug, Clone)]
struct Queued {
    attempts: u32,
    last_attempt: jiff::Timestamp,
    cluster_gen: u64,
    pod_gen: u64,
    message: String,
}

/// The stand-in for kube-scheduler; one per simulation.
#[derive(Debug)]
pub struct SchedulerStandIn {
    config: SchedulerConfig,
    queue: HashMap<String, Queued>,
    placed: HashMap<String, Arc<PlacedPod>>,
    /// One shared copy per distinct placement (a Deployment's replicas are all alike), so that
    /// the stand-in's memory grows with workloads, not pods.
    shapes: HashSet<Arc<PlacedPod>>,
    /// Bumped on a node change or freed room: failed pods may now fit.
    cluster_gen: u64,
    /// Bumped when pods bound or gated nodes came or went: pods with topology rules may now fit.
    pod_gen: u64,
    node_fingerprint: (u64, u64),
    last_room: HashMap<String, Resources>,
}

impl Default for SchedulerStandIn {
    fn default() -> Self {
        Self::new(SchedulerConfig::default())
    }
}

impl SchedulerStandIn {
    /// A stand-in with an empty queue.
    pub fn new(config: SchedulerConfig) -> Self {
        SchedulerStandIn {
            config,
            queue: HashMap::new(),
            placed: HashMap::new(),
            shapes: HashSet::new(),
            cluster_gen: 0,
            pod_gen: 0,
            node_fingerprint: (0, 0),
            last_room: HashMap::new(),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Pods that failed at least once and wait in the queue, for progress output.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// One scheduling cycle over the pending `gantry` pods at virtual time `now`.
    pub async fn step(
        &mut self,
        now: jiff::Timestamp,
        cluster: &SimCluster,
        client: &mut ExtenderClient,
    ) -> StepStats {
        let snap = cluster.shared().load();
        let mut stats = StepStats::default();
        self.observe_cluster(&snap);
        let mut nodes = self.candidates(&snap);
        let index: HashMap<String, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        let reservations = reservations(&snap);

        let mut pending: Vec<&Arc<Pod>> = snap
            .pending
            .values()
            .filter(|p| {
                p.spec.as_ref().and_then(|s| s.scheduler_name.as_deref())
                    == Some(self.config.scheduler_name.as_str())
                    && p.metadata.deletion_timestamp.is_none()
            })
            .collect();
        stats.pending = pending.len();
        let live: HashSet<&str> = pending
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        self.queue.retain(|uid, _| live.contains(uid.as_str()));
        pending.sort_by(|a, b| queue_order(a).cmp(&queue_order(b)));

        let mut bound_any = false;
        for pod in pending {
            if stats.attempted >= self.config.max_attempts_per_tick {
                break;
            }
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            let demand = match PodDemand::from_pod(pod) {
                Ok(d) => d,
                Err(e) => {
                    if self.due(&uid, false, now) {
                        stats.attempted += 1;
                        stats.unschedulable += 1;
                        self.fail(cluster, &uid, now, &format!("invalid pod: {e}"));
                    }
                    continue;
                }
            };
            if !self.due(&uid, demand.has_topology(), now) {
                continue;
            }
            stats.attempted += 1;
            match self
                .schedule_one(pod, &demand, &nodes, client, &mut stats)
                .await
            {
                Err(message) => {
                    stats.unschedulable += 1;
                    self.fail(cluster, &uid, now, &message);
                }
                Ok(node) => {
                    // The node as the API server holds it at bind time, not as the tick began.
                    let gated = cluster.shared().load().node(&node).is_some_and(|n| {
                        n.has_taint(TAINT_INITIALIZING) || n.has_taint(TAINT_UNREGISTERED)
                    });
                    if cluster.bind(&uid, &node).is_err() {
                        stats.bind_errors += 1;
                        continue;
                    }
                    self.queue.remove(&uid);
                    bound_any = true;
                    let placed = intern(&mut self.shapes, PlacedPod::from_demand(&demand));
                    self.placed.insert(uid.clone(), placed.clone());
                    if let Some(n) = index.get(&node).and_then(|i| nodes.get_mut(*i)) {
                        n.requested.add(&demand.requests);
                        n.pods.push(placed);
                    }
                    let reserved_on = reservations.get(uid.as_str());
                    let off = reserved_on.is_some_and(|r| r.as_deref() != Some(node.as_str()));
                    stats.bound_to_gated += usize::from(gated);
                    stats.bound_off_reservation += usize::from(off);
                    stats.bound.push(Binding {
                        pod: format!("{}/{}", demand.namespace, demand.name),
                        uid,
                        node,
                        at: now,
                        created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
                        gated,
                        reserved: reserved_on.is_some(),
                        off_reservation: off,
                    });
                }
            }
        }
        if bound_any {
            self.pod_gen += 1;
        }
        // Binds were deferred; publish them once, as a watch would deliver them.
        cluster.flush();
        stats
    }

    /// Runs the filters, the extender and the scoring for one pod; the chosen node or why none.
    async fn schedule_one(
        &self,
        pod: &Pod,
        demand: &PodDemand,
        nodes: &[NodeCandidate],
        client: &mut ExtenderClient,
        stats: &mut StepStats,
    ) -> Result<String, String> {
        let topo = topology(demand, nodes);
        let mut failures: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut feasible: Vec<String> = Vec::new();
        for n in nodes.iter() {
            match fits(demand, n, &topo) {
                Ok(()) => feasible.push(n.name.clone()),
                Err(r) => *failures.entry(r).or_default() += 1,
            }
        }
        if feasible.is_empty() {
            return Err(unschedulable_message(nodes.len(), &failures));
        }

        // Serialized once for both calls; kube-scheduler also sends the same Pod to each verb.
        let pod_json = serde_json::to_vec(pod).unwrap_or_default();
        stats.filter_calls += 1;
        let passing = match client.filter(args_body(&pod_json, &feasible)).await {
            Ok(reply) if reply.error.is_empty() => {
                let allowed: HashSet<String> =
                    reply.node_names.unwrap_or_default().into_iter().collect();
                let rejected = feasible.iter().filter(|n| !allowed.contains(*n)).count();
                if rejected > 0 {
                    *failures.entry(reasons::EXTENDER).or_default() += rejected;
                }
                feasible
                    .into_iter()
                    .filter(|n| allowed.contains(n))
                    .collect()
            }
            // `ignorable: true`: an extender failure leaves the in-tree result standing.
            Ok(_) | Err(_) => {
                stats.extender_errors += 1;
                feasible
            }
        };
        if passing.is_empty() {
            return Err(unschedulable_message(nodes.len(), &failures));
        }
        if passing.len() == 1 {
            return passing.into_iter().next().ok_or_else(String::new);
        }

        stats.prioritize_calls += 1;
        let ext: HashMap<String, i64> =
            match client.prioritize(args_body(&pod_json, &passing)).await {
                Ok(list) => list.into_iter().map(|h| (h.host, h.score)).collect(),
                Err(_) => {
                    stats.extender_errors += 1;
                    HashMap::new()
                }
            };
        let by_name: HashMap<&str, &NodeCandidate> =
            nodes.iter().map(|n| (n.name.as_str(), n)).collect();
        let mut best: Option<(i64, &String)> = None;
        for name in &passing {
            let in_tree = by_name
                .get(name.as_str())
                .map_or(0, |n| most_allocated(&demand.requests, n));
            let extender = ext.get(name).copied().unwrap_or(0).clamp(0, 10)
                * self.config.extender_weight
                * (MAX_NODE_SCORE / 10);
            let total = in_tree + extender;
            // Highest total wins; ties go to the smallest name, so runs are reproducible.
            if best.is_none_or(|(b, bn)| total > b || (total == b && name < bn)) {
                best = Some((total, name));
            }
        }
        best.map(|(_, n)| n.clone()).ok_or_else(String::new)
    }

    /// Whether a pod should be attempted now, by the queue's rules.
    fn due(&self, uid: &str, topology: bool, now: jiff::Timestamp) -> bool {
        let Some(q) = self.queue.get(uid) else {
            return true;
        };
        let since = duration_between(q.last_attempt, now);
        if since < self.backoff(q.attempts) {
            return false;
        }
        q.cluster_gen != self.cluster_gen
            || (topology && q.pod_gen != self.pod_gen)
            || since >= self.config.flush_unschedulable_after
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let shift = attempts.saturating_sub(1).min(16);
        self.config
            .initial_backoff
            .saturating_mul(1u32 << shift)
            .min(self.config.max_backoff)
    }

    /// Records a failed attempt and reports it on the pod, as kube-scheduler does.
    fn fail(&mut self, cluster: &SimCluster, uid: &str, now: jiff::Timestamp, message: &str) {
        let q = self.queue.entry(uid.to_string()).or_insert_with(|| Queued {
            attempts: 0,
            last_attempt: now,
            cluster_gen: 0,
            pod_gen: 0,
            message: String::new(),
        });
        q.attempts += 1;
        q.last_attempt = now;
        q.cluster_gen = self.cluster_gen;
        q.pod_gen = self.pod_gen;
        // Only a changed condition is written back, as the scheduler's status update does.
        if q.message != message {
            q.message = message.to_string();
            cluster.mark_unschedulable(uid, message);
        }
    }

    /// Bumps the generations when something changed since the last tick that could help a
    /// failed pod, as kube-scheduler's queueing hints do.
    ///
    /// A change to an open node (added, relabelled, re-tainted, cordoned) or freed room helps
    /// any pod. A node that still carries a gate helps nobody (no pod tolerates the gates), so
    /// its arrival is no event; but gated nodes are topology domains, so their coming and going
    /// is an event for pods with topology rules.
    fn observe_cluster(&mut self, snap: &ClusterSnapshot) {
        let mut names: Vec<&String> = snap.nodes.keys().collect();
        names.sort();
        let mut open = std::collections::hash_map::DefaultHasher::new();
        let mut gated = std::collections::hash_map::DefaultHasher::new();
        let mut freed = false;
        let mut room = HashMap::with_capacity(names.len());
        for name in names {
            let Some(n) = snap.nodes.get(name) else {
                continue;
            };
            if n.has_taint(TAINT_INITIALIZING) || n.has_taint(TAINT_UNREGISTERED) {
                name.hash(&mut gated);
                continue;
            }
            name.hash(&mut open);
            n.labels.hash(&mut open);
            n.taints.hash(&mut open);
            n.allocatable.hash(&mut open);
            n.unschedulable.hash(&mut open);
            n.deleting.hash(&mut open);
            // Room held is requests plus reservations: a reserved pod binding frees nothing.
            let held = n.requested.plus(&n.reserved);
            if self
                .last_room
                .get(name.as_str())
                .is_some_and(|before| !before.fits_in(&held))
            {
                freed = true;
            }
            room.insert(name.clone(), held);
        }
        let fp = (open.finish(), gated.finish());
        if fp.0 != self.node_fingerprint.0 || freed {
            self.cluster_gen += 1;
        }
        if fp.1 != self.node_fingerprint.1 {
            self.pod_gen += 1;
        }
        self.node_fingerprint = fp;
        self.last_room = room;
    }

    /// Builds the fit check's node list from a snapshot, sorted by name.
    fn candidates(&mut self, snap: &ClusterSnapshot) -> Vec<NodeCandidate> {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut out: Vec<NodeCandidate> = snap
            .nodes
            .values()
            .map(|n| {
                let pods = snap
                    .pods_by_node
                    .get(&n.name)
                    .map(|ps| {
                        ps.iter()
                            .map(|p| {
                                let uid = p.metadata.uid.as_deref().unwrap_or_default();
                                seen.insert(uid);
                                if let Some(known) = self.placed.get(uid) {
                                    return known.clone();
                                }
                                // A pod whose spec does not parse still holds its labels.
                                let shape = PodDemand::from_pod(p).map_or_else(
                                    |_| PlacedPod {
                                        namespace: p.metadata.namespace.clone().unwrap_or_default(),
                                        labels: p.metadata.labels.clone().unwrap_or_default(),
                                        ..Default::default()
                                    },
                                    |d| PlacedPod::from_demand(&d),
                                );
                                let shared = intern(&mut self.shapes, shape);
                                self.placed.insert(uid.to_string(), shared.clone());
                                shared
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                NodeCandidate {
                    name: n.name.clone(),
                    labels: n.labels.clone(),
                    taints: n.taints.clone(),
                    allocatable: n.allocatable.clone(),
                    requested: n.requested.clone(),
                    unschedulable: n.unschedulable,
                    deleting: n.deleting,
                    pods,
                }
            })
            .collect();
        self.placed.retain(|uid, _| seen.contains(uid.as_str()));
        // Shapes no placed pod uses any more (the set holds the last reference).
        self.shapes.retain(|s| Arc::strong_count(s) > 1);
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// Pod UID → the node its NodeClaim registered as (`None` while the claim has no node).
fn reservations(snap: &ClusterSnapshot) -> HashMap<&str, Option<String>> {
    let mut out = HashMap::new();
    for claim in snap.nodeclaims.values() {
        let Some(status) = &claim.status else {
            continue;
        };
        for p in &status.reserved_pods {
            out.insert(p.uid.as_str(), status.node_name.clone());
        }
    }
    out
}

/// kube-scheduler's default queue order: priority, then creation time (then UID, for ties).
fn queue_order(p: &Pod) -> (i32, Option<jiff::Timestamp>, &str) {
    (
        -p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
        p.metadata.creation_timestamp.as_ref().map(|t| t.0),
        p.metadata.uid.as_deref().unwrap_or_default(),
    )
}

fn duration_between(from: jiff::Timestamp, to: jiff::Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}

/// The `ExtenderArgs` body kube-scheduler sends in cache mode, around an already serialized Pod.
fn args_body(pod_json: &[u8], names: &[String]) -> Bytes {
    // Serializing strings cannot fail; an empty list would only make the extender pass nothing.
    let names = serde_json::to_vec(names).unwrap_or_else(|_| b"[]".to_vec());
    let mut out = Vec::with_capacity(pod_json.len() + names.len() + 48);
    out.extend_from_slice(b"{\"Pod\":");
    out.extend_from_slice(if pod_json.is_empty() { b"{}" } else { pod_json });
    out.extend_from_slice(b",\"Nodes\":null,\"NodeNames\":");
    out.extend_from_slice(&names);
    out.push(b'}');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

    use super::*;
    use crate::model::Effect;

    fn node(name: &str, cpu: i64) -> NodeCandidate {
        let mut labels = BTreeMap::new();
        labels.insert(HOSTNAME.to_string(), name.to_string());
        labels.insert(
            crate::model::labels::ZONE.to_string(),
            "us-east-1a".to_string(),
        );
        NodeCandidate {
            name: name.into(),
            labels: Arc::new(labels),
            allocatable: Resources {
                cpu,
                memory: 8 << 30,
                ephemeral: 10 << 30,
                pods: 10,
                extended: Vec::new(),
            },
            ..Default::default()
        }
    }

    fn demand(yaml: &str) -> PodDemand {
        let pod: Pod = serde_yaml::from_str(yaml).unwrap();
        PodDemand::from_pod(&pod).unwrap()
    }

    const PLAIN: &str = r#"
metadata: {name: p, namespace: ns, labels: {app: web}}
spec:
  containers: [{name: c, resources: {requests: {cpu: 500m, memory: 1Gi}}}]
"#;

    fn placed(labels: &[(&str, &str)]) -> Arc<PlacedPod> {
        Arc::new(PlacedPod {
            namespace: "ns".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
    }

    #[test]
    fn fit_table() {
        let plain = demand(PLAIN);
        let mut cordoned = node("n", 4000);
        cordoned.unschedulable = true;
        let mut deleting = node("n", 4000);
        deleting.deleting = true;
        let tainted = |key: &str, effect: Effect| {
            let mut n = node("n", 4000);
            n.taints.push(Taint::new(key, "true", effect));
            n
        };
        let mut full = node("n", 4000);
        full.requested = Resources::cpu_mem(3600, 0);
        let mut no_mem = node("n", 4000);
        no_mem.requested = Resources::cpu_mem(0, (15 << 30) / 2);
        let mut no_slots = node("n", 4000);
        no_slots.requested.pods = 10;
        let cases: Vec<(&str, NodeCandidate, Result<(), &str>)> = vec![
            ("empty node", node("n", 4000), Ok(())),
            ("cordoned", cordoned, Err(reasons::UNSCHEDULABLE)),
            ("deleting", deleting, Err(reasons::DELETING)),
            (
                "initializing",
                tainted(TAINT_INITIALIZING, Effect::NoSchedule),
                Err(reasons::TAINT),
            ),
            (
                "unregistered",
                tainted(TAINT_UNREGISTERED, Effect::NoExecute),
                Err(reasons::TAINT),
            ),
            (
                "prefer-no-schedule is soft",
                tainted("x", Effect::PreferNoSchedule),
                Ok(()),
            ),
            ("cpu", full, Err(reasons::CPU)),
            ("memory", no_mem, Err(reasons::MEMORY)),
            ("pod slots", no_slots, Err(reasons::PODS)),
        ];
        for (what, n, want) in cases {
            assert_eq!(fits(&plain, &n, &Topology::default()), want, "{what}");
        }
    }

    #[test]
    fn selectors_tolerations_gpus_and_ports() {
        let gpu = demand(
            r#"
metadata: {name: g, namespace: ns}
spec:
  nodeSelector: {karpenter.sh/capacity-type: on-demand}
  tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
  containers:
  - name: c
    resources: {limits: {nvidia.com/gpu: "1"}}
    ports: [{containerPort: 80, hostPort: 9100}]
"#,
        );
        let mut n = node("n", 4000);
        assert_eq!(fits(&gpu, &n, &Topology::default()), Err(reasons::AFFINITY));
        Arc::make_mut(&mut n.labels).insert(
            crate::model::labels::CAPACITY_TYPE.into(),
            "on-demand".into(),
        );
        assert_eq!(fits(&gpu, &n, &Topology::default()), Err(reasons::EXTENDED));
        n.allocatable.set_extended("nvidia.com/gpu", 1);
        n.taints
            .push(Taint::new("nvidia.com/gpu", "true", Effect::NoSchedule));
        assert_eq!(
            fits(&gpu, &n, &Topology::default()),
            Ok(()),
            "toleration covers the taint"
        );
        n.pods.push(Arc::new(PlacedPod {
            namespace: "other".into(),
            host_ports: vec![HostPort {
                port: 9100,
                protocol: "TCP".into(),
                ip: String::new(),
            }],
            ..Default::default()
        }));
        assert_eq!(fits(&gpu, &n, &Topology::default()), Err(reasons::PORTS));
        // The plain pod does not tolerate the GPU taint.
        let mut plain_node = node("m", 4000);
        plain_node
            .taints
            .push(Taint::new("nvidia.com/gpu", "true", Effect::NoSchedule));
        assert_eq!(
            fits(&demand(PLAIN), &plain_node, &Topology::default()),
            Err(reasons::TAINT)
        );
    }

    #[test]
    fn anti_affinity_both_ways() {
        let anti = demand(
            r#"
metadata: {name: a, namespace: ns, labels: {app: web}}
spec:
  affinity:
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
      - {topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app: web}}}
  containers: [{name: c}]
"#,
        );
        let mut n = node("n", 4000);
        n.pods.push(placed(&[("app", "db")]));
        assert_eq!(fits(&anti, &n, &Topology::default()), Ok(()));
        n.pods.push(placed(&[("app", "web")]));
        assert_eq!(
            fits(&anti, &n, &Topology::default()),
            Err(reasons::ANTI_AFFINITY)
        );
        // An existing pod's anti-affinity keeps a selected newcomer away.
        let mut m = node("m", 4000);
        m.pods.push(Arc::new(PlacedPod::from_demand(&anti)));
        assert_eq!(
            fits(&demand(PLAIN), &m, &Topology::default()),
            Err(reasons::EXISTING_ANTI_AFFINITY)
        );
    }

    #[test]
    fn topology_spread_on_zone_and_hostname() {
        let zonal = demand(
            r#"
metadata: {name: z, namespace: ns, labels: {app: web}}
spec:
  topologySpreadConstraints:
  - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}
  containers: [{name: c}]
"#,
        );
        let mut a = node("a", 4000);
        a.pods.push(placed(&[("app", "web")]));
        let mut b = node("b", 4000);
        Arc::make_mut(&mut b.labels).insert(
            crate::model::labels::ZONE.to_string(),
            "us-east-1b".to_string(),
        );
        let nodes = vec![a, b];
        let spread = topology(&zonal, &nodes);
        assert_eq!(spread.spread.len(), 1);
        assert_eq!(spread.spread[0].min, 0);
        assert!(spread.spread[0].self_match);
        assert_eq!(fits(&zonal, &nodes[0], &spread), Err(reasons::SPREAD));
        assert_eq!(fits(&zonal, &nodes[1], &spread), Ok(()));
        let mut unlabeled = node("c", 4000);
        Arc::make_mut(&mut unlabeled.labels).remove(crate::model::labels::ZONE);
        assert_eq!(
            fits(&zonal, &unlabeled, &spread),
            Err(reasons::SPREAD_LABEL)
        );

        let host = demand(
            r#"
metadata: {name: h, namespace: ns, labels: {app: web}}
spec:
  topologySpreadConstraints:
  - {maxSkew: 2, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}
  - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {app: web}}}
  containers: [{name: c}]
"#,
        );
        let spread = topology(&host, &nodes);
        assert_eq!(spread.spread.len(), 1, "soft constraints are not filters");
        assert_eq!(fits(&host, &nodes[0], &spread), Ok(()), "skew 1+1-0 = 2");
    }

    #[test]
    fn zonal_pod_affinity_follows_its_group() {
        let follower = demand(
            r#"
metadata: {name: f, namespace: ns, labels: {app: cache}}
spec:
  affinity:
    podAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
      - {topologyKey: topology.kubernetes.io/zone, labelSelector: {matchLabels: {app: cache}}}
  containers: [{name: c}]
"#,
        );
        let a = node("a", 4000);
        let mut b = node("b", 4000);
        Arc::make_mut(&mut b.labels).insert(
            crate::model::labels::ZONE.to_string(),
            "us-east-1b".to_string(),
        );
        // The first pod of the group may go anywhere.
        let nodes = vec![a.clone(), b.clone()];
        let topo = topology(&follower, &nodes);
        assert_eq!(topo.zone_affinity, vec![None]);
        assert_eq!(fits(&follower, &b, &topo), Ok(()));
        // Once one runs in us-east-1a, the rest follow it there.
        let mut a2 = a;
        a2.pods.push(placed(&[("app", "cache")]));
        let nodes = vec![a2.clone(), b.clone()];
        let topo = topology(&follower, &nodes);
        assert_eq!(fits(&follower, &a2, &topo), Ok(()));
        assert_eq!(fits(&follower, &b, &topo), Err(reasons::AFFINITY_ZONE));
    }

    #[test]
    fn most_allocated_prefers_fuller_nodes() {
        let r = Resources::cpu_mem(1000, 1 << 30);
        let idle = node("idle", 4000);
        let mut busy = node("busy", 4000);
        busy.requested = Resources::cpu_mem(2000, 4 << 30);
        assert_eq!(most_allocated(&r, &idle), (25 + 12) / 2);
        assert!(most_allocated(&r, &busy) > most_allocated(&r, &idle));
        let mut failures = BTreeMap::new();
        failures.insert(reasons::CPU, 2);
        failures.insert(reasons::TAINT, 1);
        assert_eq!(
            unschedulable_message(3, &failures),
            "0/3 nodes are available: 2 Insufficient cpu, 1 node(s) had untolerated taint."
        );
    }

    #[test]
    fn args_body_is_what_kube_scheduler_sends() {
        let pod: Pod = serde_yaml::from_str(PLAIN).unwrap();
        let body = args_body(
            &serde_json::to_vec(&pod).unwrap(),
            &["a".into(), "b".into()],
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["NodeNames"], serde_json::json!(["a", "b"]));
        assert!(v["Nodes"].is_null());
        assert_eq!(v["Pod"]["metadata"]["name"], "p");
        let args = crate::extender::wire::parse_args(&body).unwrap();
        assert_eq!(args.candidates.len(), 2);
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let s = SchedulerStandIn::default();
        assert_eq!(s.backoff(1), Duration::from_secs(1));
        assert_eq!(s.backoff(2), Duration::from_secs(2));
        assert_eq!(s.backoff(4), Duration::from_secs(8));
        assert_eq!(s.backoff(5), Duration::from_secs(10));
        assert_eq!(s.backoff(40), Duration::from_secs(10));
    }

    // ------------------------------------------------------------ against the real extender

    mod live {
        use super::*;
        use crate::extender::client::{Alpn, tls_config};
        use crate::extender::routes::RequestLimits;
        use crate::kube::api::ClusterApi;
        use crate::kube::crd::{NodeClaim, NodeClaimStatus, ReservedPod};
        use crate::server::tls::{TlsFiles, TlsReloader};
        use crate::server::{AppState, https_router};
        use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Taint as K8sTaint};
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        use tokio_util::sync::CancellationToken;

        /// The real HTTPS extender in-process, serving the simulated cluster's snapshots.
        pub(crate) struct Rig {
            pub cluster: Arc<SimCluster>,
            pub client: ExtenderClient,
            pub app: AppState,
            stop: CancellationToken,
            _dir: tempfile::TempDir,
        }

        impl Drop for Rig {
            fn drop(&mut self) {
                self.stop.cancel();
            }
        }

        pub(crate) async fn rig(now: jiff::Timestamp) -> Rig {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let app = AppState::new(Duration::from_secs(600));
            let cluster = SimCluster::new(
                now,
                app.cluster.clone(),
                app.ledger.clone(),
                Duration::from_secs(120),
            );
            let dir = tempfile::tempdir().unwrap();
            let set =
                crate::certs::generate(&["localhost".to_string()], &["127.0.0.1".parse().unwrap()])
                    .unwrap();
            crate::certs::write(&set, dir.path()).unwrap();
            let files = TlsFiles {
                cert: dir.path().join("server.crt"),
                key: dir.path().join("server.key"),
                client_ca: None,
            };
            let live = Arc::new(arc_swap::ArcSwapOption::empty());
            let mut reloader = TlsReloader::new(files, live.clone(), app.metrics.clone());
            reloader.poll_once();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let stop = CancellationToken::new();
            let limits = RequestLimits {
                max_body_bytes: 64 << 20,
                timeout: Duration::from_secs(5),
            };
            tokio::spawn(crate::server::https::serve_tls(
                listener,
                https_router(&app, limits, false, None),
                live,
                stop.clone(),
                Duration::from_secs(1),
            ));
            let cfg = Arc::new(tls_config(set.ca_cert.as_bytes(), None, Alpn::Http1).unwrap());
            let client = ExtenderClient::connect(addr, "localhost", cfg, "/scheduler")
                .await
                .unwrap();
            Rig {
                cluster,
                client,
                app,
                stop,
                _dir: dir,
            }
        }

        pub(crate) fn k8s_node(name: &str, cpu: &str, gated: bool) -> Node {
            let mut labels = BTreeMap::new();
            labels.insert(HOSTNAME.to_string(), name.to_string());
            labels.insert(
                crate::model::labels::ZONE.to_string(),
                "us-east-1a".to_string(),
            );
            let alloc: BTreeMap<String, Quantity> = [
                ("cpu", cpu),
                ("memory", "64Gi"),
                ("pods", "110"),
                ("ephemeral-storage", "10Gi"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect();
            Node {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(labels),
                    ..Default::default()
                },
                spec: Some(NodeSpec {
                    taints: gated.then(|| {
                        vec![K8sTaint {
                            key: TAINT_INITIALIZING.into(),
                            value: Some("true".into()),
                            effect: "NoSchedule".into(),
                            time_added: None,
                        }]
                    }),
                    ..Default::default()
                }),
                status: Some(NodeStatus {
                    allocatable: Some(alloc.clone()),
                    capacity: Some(alloc),
                    ..Default::default()
                }),
            }
        }

        pub(crate) fn k8s_pod(name: &str, cpu: &str, scheduler: &str) -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
                "spec": {
                    "schedulerName": scheduler,
                    "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "256Mi"}}}]
                }
            }))
            .unwrap()
        }

        fn node_of(cluster: &SimCluster, uid: &str) -> Option<String> {
            cluster.read(|s| s.pods.get(uid)?.spec.as_ref()?.node_name.clone())
        }

        fn message_of(cluster: &SimCluster, uid: &str) -> Option<String> {
            cluster.read(|s| {
                s.pods
                    .get(uid)?
                    .status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .find(|c| c.type_ == "PodScheduled" && c.status == "False")?
                    .message
                    .clone()
            })
        }

        #[tokio::test]
        async fn reservations_win_packing_decides_the_rest_and_gates_hold() {
            let t0: jiff::Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
            let mut rig = rig(t0).await;
            let c = rig.cluster.clone();
            c.put_node(k8s_node("a", "4", false));
            c.put_node(k8s_node("b", "4", false));
            c.put_node(k8s_node("gated", "128", true));
            // b is busier, so packing alone prefers it.
            let filler = c.add_pod(k8s_pod("filler", "2", "default-scheduler"));
            c.bind(&filler, "b").unwrap();

            let reserved = c.add_pod(k8s_pod("reserved", "500m", SCHEDULER_NAME));
            let packed = c.add_pod(k8s_pod("packed", "500m", SCHEDULER_NAME));
            let huge = c.add_pod(k8s_pod("huge", "100", SCHEDULER_NAME));
            let other = c.add_pod(k8s_pod("other", "100m", "default-scheduler"));
            let claim = c
                .create_nodeclaim(&NodeClaim::new("pool-a", Default::default()))
                .await
                .unwrap();
            c.update_nodeclaim_status(
                claim.metadata.name.as_deref().unwrap(),
                &NodeClaimStatus {
                    node_name: Some("a".into()),
                    reserved_pods: vec![ReservedPod {
                        uid: reserved.clone(),
                        namespace: "default".into(),
                        name: "reserved".into(),
                    }],
                    ..Default::default()
                },
            )
            .await
            .unwrap();

            let mut sched = SchedulerStandIn::default();
            let stats = sched.step(t0, &c, &mut rig.client).await;
            assert_eq!(stats.pending, 3, "only gantry pods count");
            assert_eq!(
                node_of(&c, &reserved).as_deref(),
                Some("a"),
                "reservation wins"
            );
            assert_eq!(node_of(&c, &packed).as_deref(), Some("b"), "packing");
            assert_eq!(node_of(&c, &huge), None);
            assert_eq!(node_of(&c, &other), None, "not ours to schedule");
            let msg = message_of(&c, &huge).unwrap();
            assert!(msg.starts_with("0/3 nodes are available"), "{msg}");
            assert!(msg.contains("Insufficient cpu"), "{msg}");
            assert!(msg.contains("untolerated taint"), "{msg}");
            assert!(
                rig.app.ledger.contains(&huge),
                "the pod watch path feeds demand"
            );
            assert_eq!(stats.bound.len(), 2);
            assert_eq!(stats.bound_to_gated, 0);
            assert_eq!(stats.bound_off_reservation, 0);
            assert!(stats.bound.iter().any(|b| b.uid == reserved && b.reserved));
            assert_eq!(stats.filter_calls, 2);
            assert_eq!(stats.prioritize_calls, 2);
            assert_eq!(stats.extender_errors, 0);
            assert_eq!(stats.unschedulable, 1);
            assert_eq!(sched.waiting(), 1);

            // Nothing changed: the failed pod waits in the queue instead of retrying.
            let t1 = t0 + jiff::SignedDuration::from_secs(2);
            let stats = sched.step(t1, &c, &mut rig.client).await;
            assert_eq!(stats.attempted, 0);
            // Nor does a node arriving still gated (no pod tolerates the gates).
            c.put_node(k8s_node("late", "128", true));
            let stats = sched
                .step(
                    t1 + jiff::SignedDuration::from_millis(500),
                    &c,
                    &mut rig.client,
                )
                .await;
            assert_eq!(stats.attempted, 0);

            // The gate lifts: the pod is retried at once (its back-off has passed) and binds.
            c.patch_node(
                "gated",
                &crate::kube::api::NodePatch {
                    remove_taints: vec![TAINT_INITIALIZING.into()],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            let t2 = t1 + jiff::SignedDuration::from_secs(1);
            let stats = sched.step(t2, &c, &mut rig.client).await;
            assert_eq!(stats.attempted, 1);
            assert_eq!(node_of(&c, &huge).as_deref(), Some("gated"));
            assert_eq!(stats.bound[0].at, t2);
            assert_eq!(stats.bound_to_gated, 0);
            assert!(!rig.app.ledger.contains(&huge));
        }

        #[tokio::test]
        async fn one_tick_never_overfills_and_reserved_room_is_held() {
            let t0: jiff::Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
            let mut rig = rig(t0).await;
            let c = rig.cluster.clone();
            c.put_node(k8s_node("only", "4", false));
            // Older pods first: the two 2.5-CPU pods cannot share a 4-CPU node.
            let first = c.add_pod(k8s_pod("first", "2500m", SCHEDULER_NAME));
            c.set_now(t0 + jiff::SignedDuration::from_secs(1));
            let second = c.add_pod(k8s_pod("second", "2500m", SCHEDULER_NAME));
            let mut sched = SchedulerStandIn::default();
            let stats = sched.step(t0, &c, &mut rig.client).await;
            assert_eq!(node_of(&c, &first).as_deref(), Some("only"));
            assert_eq!(node_of(&c, &second), None);
            assert_eq!(stats.bound.len(), 1);
            assert_eq!(
                stats.prioritize_calls, 0,
                "one feasible node: no prioritize"
            );

            // A fresh node whose room is reserved for a pending pod: the extender keeps others off.
            c.put_node(k8s_node("fresh", "4", false));
            let owner = c.add_pod(k8s_pod("owner", "3", SCHEDULER_NAME));
            let claim = c
                .create_nodeclaim(&NodeClaim::new("pool-b", Default::default()))
                .await
                .unwrap();
            c.update_nodeclaim_status(
                claim.metadata.name.as_deref().unwrap(),
                &NodeClaimStatus {
                    node_name: Some("fresh".into()),
                    reserved_pods: vec![ReservedPod {
                        uid: owner.clone(),
                        namespace: "default".into(),
                        name: "owner".into(),
                    }],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            let t1 = t0 + jiff::SignedDuration::from_secs(5);
            let stats = sched.step(t1, &c, &mut rig.client).await;
            // `second` (older) fits "fresh" by resources, but the extender holds it for `owner`.
            assert_eq!(node_of(&c, &second), None);
            let msg = message_of(&c, &second).unwrap();
            assert!(msg.contains("rejected by the gantry extender"), "{msg}");
            assert_eq!(node_of(&c, &owner).as_deref(), Some("fresh"));
            assert_eq!(stats.bound_off_reservation, 0);
        }

        #[tokio::test]
        async fn six_hundred_pods_bind_in_one_tick() {
            let t0: jiff::Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
            let mut rig = rig(t0).await;
            let c = rig.cluster.clone();
            let zones = ["us-east-1a", "us-east-1b", "us-east-1c"];
            for i in 0..40 {
                let mut n = k8s_node(&format!("n{i:03}"), "16", false);
                n.metadata.labels.as_mut().unwrap().insert(
                    crate::model::labels::ZONE.to_string(),
                    zones[i % 3].to_string(),
                );
                c.put_node(n);
            }
            let mut spread: Pod = k8s_pod("spread", "100m", SCHEDULER_NAME);
            spread.spec.as_mut().unwrap().topology_spread_constraints = Some(vec![
                serde_json::from_value(serde_json::json!({
                    "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "DoNotSchedule",
                    "labelSelector": {"matchLabels": {"app": "spread"}}
                }))
                .unwrap(),
            ]);
            for i in 0..600 {
                let mut p = if i % 4 == 0 {
                    spread.clone()
                } else {
                    k8s_pod("web", "500m", SCHEDULER_NAME)
                };
                p.metadata.name = Some(format!("p{i:04}"));
                c.add_pod(p);
            }
            let mut sched = SchedulerStandIn::default();
            let stats = sched.step(t0, &c, &mut rig.client).await;
            assert_eq!(stats.bound.len(), 600);
            assert_eq!(stats.bound_to_gated, 0);
            let snap = c.shared().load();
            let mut per_zone: BTreeMap<String, usize> = BTreeMap::new();
            let mut used = 0;
            for n in snap.nodes.values() {
                assert!(n.requested.fits_in(&n.allocatable), "{} overfilled", n.name);
                used += usize::from(n.requested.pods > 0);
                let here = snap.pods_by_node.get(&n.name).map_or(0, |ps| {
                    ps.iter()
                        .filter(|p| p.metadata.labels.as_ref().unwrap()["app"] == "spread")
                        .count()
                });
                *per_zone
                    .entry(n.labels[crate::model::labels::ZONE].clone())
                    .or_default() += here;
            }
            let (lo, hi) = (
                per_zone.values().min().unwrap(),
                per_zone.values().max().unwrap(),
            );
            assert!(hi - lo <= 1, "{per_zone:?}");
            // MostAllocated packs: 240 vCPU of requests need 15 of the 40 nodes, not all of them.
            assert!(used <= 20, "{used} nodes used");
        }

        /// Kubelet, scheduler and real extender together, with the test playing the lifecycle
        /// controller: the pod waits through registration and the startup gate, then binds to
        /// the node launched for it.
        #[tokio::test]
        async fn a_reserved_pod_waits_for_the_gate_then_lands_on_its_node() {
            use crate::sim::kubelet::tests::{StubCloud, instance};
            use crate::sim::kubelet::{KubeletConfig, SimKubelet};

            let t0: jiff::Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
            let mut rig = rig(t0).await;
            let c = rig.cluster.clone();
            let catalog = Arc::new(crate::model::Catalog::embedded().unwrap());
            c.put_daemonset(
                serde_yaml::from_str(
                    r#"
metadata: {name: kube-proxy, namespace: kube-system, uid: ds-kp}
spec:
  selector: {matchLabels: {app: kp}}
  template:
    metadata: {labels: {app: kp}}
    spec: {containers: [{name: c, resources: {requests: {cpu: 100m}}}]}
"#,
                )
                .unwrap(),
            );
            let uid = c.add_pod(k8s_pod("app", "1", SCHEDULER_NAME));
            let mut claim = NodeClaim::new("general-x", Default::default());
            claim.spec.startup_taints = vec![crate::kube::crd::TaintSpec {
                key: "agent-not-ready".into(),
                value: Some("true".into()),
                effect: "NoSchedule".into(),
            }];
            c.create_nodeclaim(&claim).await.unwrap();
            let mut status = NodeClaimStatus {
                reserved_pods: vec![ReservedPod {
                    uid: uid.clone(),
                    namespace: "default".into(),
                    name: "app".into(),
                }],
                ..Default::default()
            };
            c.update_nodeclaim_status("general-x", &status)
                .await
                .unwrap();
            let cloud = StubCloud::default();
            cloud
                .instances
                .lock()
                .unwrap()
                .push(instance("i-0abc", "general-x"));

            let mut kubelet = SimKubelet::new(KubeletConfig::typical(catalog));
            let mut sched = SchedulerStandIn::default();
            let mut bound_at = None;
            for tick in 0..90 {
                let now = t0 + jiff::SignedDuration::from_secs(tick);
                c.set_now(now);
                kubelet.step(now, &cloud, &c).await;
                // The lifecycle controller's part, reduced to its rules.
                let pid = crate::cloud::provider_id("us-east-1b", "i-0abc");
                if let Some(node) = kubelet.node_for(&pid).map(str::to_string) {
                    let view = c.shared().load().node(&node).cloned().unwrap();
                    if view.has_taint(TAINT_UNREGISTERED) {
                        status.node_name = Some(node.clone());
                        c.update_nodeclaim_status("general-x", &status)
                            .await
                            .unwrap();
                        let patch = crate::kube::api::NodePatch {
                            remove_taints: vec![TAINT_UNREGISTERED.into()],
                            ..Default::default()
                        };
                        c.patch_node(&node, &patch).await.unwrap();
                    } else if view.has_taint(TAINT_INITIALIZING)
                        && view.ready
                        && !view.has_taint("agent-not-ready")
                        && c.shared().load().pods_by_node.contains_key(&node)
                    {
                        let patch = crate::kube::api::NodePatch {
                            remove_taints: vec![TAINT_INITIALIZING.into()],
                            ..Default::default()
                        };
                        c.patch_node(&node, &patch).await.unwrap();
                    }
                }
                let stats = sched.step(now, &c, &mut rig.client).await;
                assert_eq!(stats.bound_to_gated, 0, "tick {tick}");
                if let Some(b) = stats.bound.first() {
                    assert_eq!(b.uid, uid);
                    assert!(b.reserved && !b.off_reservation);
                    assert_eq!(Some(b.node.as_str()), kubelet.node_for(&pid));
                    bound_at = Some(tick);
                    break;
                }
                if tick == 0 {
                    assert!(rig.app.ledger.contains(&uid), "no node yet: demand");
                }
            }
            // Registered at 30 s, Ready at 40 s, startup taint gone at 45 s, gate lifted at 45 s.
            assert_eq!(bound_at, Some(45));
        }
    }
}

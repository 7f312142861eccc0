//! Scale-down: removes empty and underused nodes, replaces expired ones and reacts to spot
//! interruptions, without breaking PodDisruptionBudgets or churning.
//!
//! ```text
//! snapshot ──facts()──▶ NodeFacts[] ──decide (pure, planner what-ifs)──▶ Decision[]
//! InterruptionSource ──poll──▶ decide::interruption ───────────────────────┤
//!                                                                            ▼
//!                          Executor: taint ▶ launch ▶ await Initialized ▶ evict ▶ delete claim
//! ```
//!
//! `decide` is pure (which nodes, why); `execute` is the per-command state machine;
//! `interruption` turns cloud notices into events; and `sqs` reads them from the EventBridge
//! queue on AWS. [`Disruption`] ties them together behind one
//! `tick(now)`.

pub mod decide;
pub mod execute;
pub mod interruption;
pub mod sqs;

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use crate::cloud::{CloudProvider, instance_id_from_provider_id};
use crate::kube::api::{ClusterApi, NodePatch};
use crate::kube::crd::{NodeClaim, conditions};
use crate::model::labels::{
    CAPACITY_TYPE, DO_NOT_DISRUPT, INSTANCE_TYPE, NODEPOOL, TAINT_DISRUPTED, ZONE, canonical_key,
};
use crate::model::{CapacityType, Catalog, NodePoolView, PodDemand};
use crate::provision::input;
use crate::provision::launch::InFlight;
use crate::state::{ClusterSnapshot, SharedState};
use decide::{DecideConfig, DecideInput, Decision, NodeFacts, PoolPolicy, Reason};
use execute::{ExecConfig, ExecStats, Executor, evictable};
use interruption::InterruptionSource;

/// Settings for the disruption controller.
#[derive(Debug, Clone, Copy)]
pub struct DisruptionConfig {
    /// Decision tunables (churn factor, candidate caps).
    pub decide: DecideConfig,
    /// Executor tunables (back-off, timeouts).
    pub exec: ExecConfig,
    /// After a move finishes, new moves wait this long while pods are pending, so the next
    /// what-if does not count room the moved pods are about to take; and nodes younger than
    /// this (since Initialized) are not disrupted voluntarily.
    pub settle: std::time::Duration,
    /// Voluntary decisions (and the facts they need) are made at most this often; jobs and
    /// interruptions are still handled every tick. Karpenter polls every 10 s; zero decides on
    /// every tick.
    pub decide_every: std::time::Duration,
}

impl Default for DisruptionConfig {
    fn default() -> Self {
        DisruptionConfig {
            decide: DecideConfig::default(),
            exec: ExecConfig::default(),
            settle: std::time::Duration::from_secs(120),
            decide_every: std::time::Duration::ZERO,
        }
    }
}

/// What one tick did, for logs and the demo.
#[derive(Debug, Clone, Default)]
pub struct DisruptionReport {
    /// Decisions started this tick (interruptions first).
    pub started: Vec<Decision>,
    /// Interruption notices received.
    pub interruptions: usize,
    /// Wall time spent deciding, in milliseconds.
    pub decide_millis: f64,
    /// Executor counters so far.
    pub stats: ExecStats,
    /// Jobs still running.
    pub active_jobs: usize,
}

/// The snapshot turned into decision input.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Every node.
    pub nodes: Vec<NodeFacts>,
    /// Pools as the planner sees them.
    pub pools: Vec<NodePoolView>,
    /// Pools' disruption settings.
    pub policies: Vec<PoolPolicy>,
}

/// When each node's pod set last changed, so `consolidateAfter` counts from there.
#[derive(Debug, Default, Clone)]
pub struct PodChurn(HashMap<String, (u64, jiff::Timestamp)>);

impl PodChurn {
    /// Records the node's current pod set and returns since when it has been unchanged.
    fn observe(&mut self, node: &str, pods: u64, now: jiff::Timestamp) -> jiff::Timestamp {
        let e = self.0.entry(node.to_string()).or_insert((pods, now));
        if e.0 != pods {
            *e = (pods, now);
        }
        e.1
    }

    fn retain(&mut self, live: &HashSet<&str>) {
        self.0.retain(|k, _| live.contains(k.as_str()));
    }
}

fn claim_of<'a>(snapshot: &'a ClusterSnapshot, node: &str) -> Option<&'a NodeClaim> {
    let by_label = snapshot
        .node(node)
        .and_then(|n| n.nodeclaim())
        .and_then(|c| snapshot.nodeclaims.get(c));
    by_label.map(AsRef::as_ref).or_else(|| {
        snapshot
            .nodeclaims
            .values()
            .find(|c| c.status.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .map(AsRef::as_ref)
    })
}

fn price_of(
    claim: Option<&NodeClaim>,
    labels: &std::collections::BTreeMap<String, String>,
    catalog: &Catalog,
) -> f64 {
    if let Some(p) = claim
        .and_then(|c| c.status.as_ref())
        .and_then(|s| s.price_per_hour.as_deref())
        .and_then(|p| p.parse::<f64>().ok())
    {
        return p;
    }
    let ct = labels
        .get(CAPACITY_TYPE)
        .and_then(|c| CapacityType::parse(c));
    let zone = labels.get(ZONE);
    labels
        .get(INSTANCE_TYPE)
        .and_then(|t| catalog.get(t))
        .and_then(|t| {
            t.offerings
                .iter()
                .filter(|o| ct.is_none_or(|c| o.capacity_type == c))
                .filter(|o| zone.is_none_or(|z| &o.zone == z))
                .map(|o| o.price)
                .reduce(f64::min)
        })
        .unwrap_or(0.0)
}

/// When the claim's Initialized condition last became True.
fn initialized_at(c: &NodeClaim) -> Option<jiff::Timestamp> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|x| x.type_ == conditions::INITIALIZED && x.status == "True")?
        .last_transition_time
        .as_deref()?
        .parse()
        .ok()
}

/// Builds decision input from a snapshot. `busy` names nodes a job is already disrupting;
/// nodes initialized less than `young` ago count as not yet initialized, so fresh capacity (a
/// replacement above all) gets its pods before it can look empty.
pub fn facts(
    snapshot: &ClusterSnapshot,
    catalog: &Catalog,
    busy: &HashSet<String>,
    churn: &mut PodChurn,
    young: std::time::Duration,
    now: jiff::Timestamp,
) -> Facts {
    let round = input::build(snapshot, &[], catalog);
    for (what, why) in &round.skipped {
        warn!(object = %what, reason = %why, "skipped in disruption");
    }
    let mut receivers: HashMap<String, crate::plan::NodeView> = round
        .nodes
        .into_iter()
        .map(|n| (n.name.clone(), n))
        .collect();
    let mut names: Vec<&String> = snapshot.nodes.keys().collect();
    names.sort();
    let mut nodes = Vec::with_capacity(names.len());
    for name in names {
        let Some(n) = snapshot.node(name) else {
            continue;
        };
        let claim = claim_of(snapshot, name);
        let mut pods = Vec::new();
        let mut do_not_disrupt = false;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for pod in snapshot.pods_by_node.get(name).into_iter().flatten() {
            if !evictable(pod) {
                continue;
            }
            pod.metadata.uid.hash(&mut h);
            let annotated = pod
                .metadata
                .annotations
                .iter()
                .flatten()
                .any(|(k, v)| canonical_key(k) == DO_NOT_DISRUPT && v == "true");
            match PodDemand::from_pod(pod) {
                Ok(d) => pods.push(d),
                // A pod the planner cannot read cannot be placed elsewhere: leave the node be.
                Err(_) => do_not_disrupt = true,
            }
            do_not_disrupt |= annotated;
        }
        let since = churn.observe(name, h.finish(), now);
        let view = receivers.remove(name.as_str());
        let disrupting = view.is_none()
            || busy.contains(name.as_str())
            || claim.is_some_and(|c| {
                c.metadata.deletion_timestamp.is_some()
                    || c.is_condition_true(conditions::DISRUPTING)
            });
        let expires_at = claim.and_then(|c| {
            let after = c.spec.expire_after.as_deref().filter(|e| *e != "Never")?;
            let d = crate::cli::parse_duration(after).ok()?;
            let created = c.metadata.creation_timestamp.as_ref()?.0;
            created
                .checked_add(jiff::SignedDuration::try_from(d).ok()?)
                .ok()
        });
        nodes.push(NodeFacts {
            view: view.unwrap_or_else(|| crate::plan::NodeView {
                name: name.clone(),
                pool: n.labels.get(NODEPOOL).cloned(),
                ..Default::default()
            }),
            claim: claim.and_then(|c| c.metadata.name.clone()),
            price: price_of(claim, &n.labels, catalog),
            pods,
            do_not_disrupt,
            disrupting,
            initialized: claim
                .and_then(initialized_at)
                .is_some_and(|t| now.duration_since(t).as_secs_f64() >= young.as_secs_f64()),
            since,
            expires_at,
        });
    }
    churn.retain(&snapshot.nodes.keys().map(String::as_str).collect());
    let mut policies = Vec::new();
    for pool in snapshot.nodepools.values() {
        match PoolPolicy::from_crd(pool) {
            Ok(p) => policies.push(p),
            Err(e) => {
                warn!(nodepool = ?pool.metadata.name, error = %e, "disruption settings ignored; pool is not disrupted")
            }
        }
    }
    policies.sort_by(|a, b| a.name.cmp(&b.name));
    Facts {
        nodes,
        pools: round.pools,
        policies,
    }
}

/// The disruption controller; one per leader. Call [`Disruption::tick`] periodically.
pub struct Disruption {
    cluster: Arc<dyn ClusterApi>,
    cloud: Arc<dyn CloudProvider>,
    state: SharedState,
    config: DisruptionConfig,
    executor: Executor,
    source: Option<Arc<dyn InterruptionSource>>,
    churn: PodChurn,
    last_decided: Option<jiff::Timestamp>,
}

impl Disruption {
    /// A controller over the given cluster and cloud (share `inflight` with the provisioner).
    pub fn new(
        cluster: Arc<dyn ClusterApi>,
        cloud: Arc<dyn CloudProvider>,
        state: SharedState,
        inflight: InFlight,
        config: DisruptionConfig,
    ) -> Self {
        let executor = Executor::new(cluster.clone(), cloud.clone(), inflight, config.exec);
        Disruption {
            cluster,
            cloud,
            state,
            config,
            executor,
            source: None,
            churn: PodChurn::default(),
            last_decided: None,
        }
    }

    /// Adds a source of interruption notices.
    pub fn with_interruptions(mut self, source: Arc<dyn InterruptionSource>) -> Self {
        self.source = Some(source);
        self
    }

    /// The executor, for its jobs and counters.
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// The pods evicted since the last call (see [`Executor::take_evicted`]).
    pub fn take_evicted(&mut self) -> Vec<Arc<k8s_openapi::api::core::v1::Pod>> {
        self.executor.take_evicted()
    }

    /// The cluster writes go to.
    pub fn cluster(&self) -> &Arc<dyn ClusterApi> {
        &self.cluster
    }

    /// Handles interruptions, decides, starts jobs and advances every job.
    #[tracing::instrument(skip_all)]
    pub async fn tick(&mut self, now: jiff::Timestamp) -> DisruptionReport {
        let mut report = DisruptionReport::default();
        let snapshot = self.state.load();
        if !snapshot.synced {
            return report;
        }
        let catalog = match self.cloud.catalog().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot read the catalog; skipping disruption");
                return report;
            }
        };
        self.executor.prune();
        let events = match &self.source {
            Some(s) => s.poll().await,
            None => Vec::new(),
        };
        let due = self.last_decided.is_none_or(|t| {
            now.duration_since(t).as_secs_f64() >= self.config.decide_every.as_secs_f64()
        });
        if !due && events.is_empty() {
            // Between decision rounds only the running jobs move.
            return self.advance_jobs(report, now).await;
        }
        let busy = self.executor.busy_nodes();
        let mut facts = facts(
            &snapshot,
            &catalog,
            &busy,
            &mut self.churn,
            self.config.settle,
            now,
        );

        // Interruptions first: the instance goes whatever the budgets say.
        report.interruptions = events.len();
        for ev in events {
            if !ev.kind.actionable() {
                // A node arriving (`pending`, `running`) is no reason to replace it.
                tracing::debug!(instance = %ev.instance_id, kind = ?ev.kind, "notice needs no action");
                continue;
            }
            let Some(idx) = facts.nodes.iter().position(|n| {
                snapshot
                    .node(&n.view.name)
                    .and_then(|v| v.provider_id.as_deref())
                    .and_then(instance_id_from_provider_id)
                    == Some(ev.instance_id.as_str())
            }) else {
                info!(instance = %ev.instance_id, kind = ?ev.kind, "interruption for an instance with no node");
                continue;
            };
            let input = DecideInput {
                nodes: &facts.nodes,
                policies: &facts.policies,
                pools: &facts.pools,
                catalog: &catalog,
                config: self.config.decide,
                now,
            };
            match decide::interruption(&input, idx, ev.kind.urgent()) {
                Some(d) => {
                    info!(instance = %ev.instance_id, kind = ?ev.kind, urgent = d.urgent, message = %d.message, "interruption handled");
                    if self.executor.start(d.clone(), &snapshot, now) {
                        report.started.push(d);
                        if let Some(n) = facts.nodes.get_mut(idx) {
                            n.disrupting = true;
                        }
                    }
                }
                None => {
                    info!(instance = %ev.instance_id, kind = ?ev.kind, "no equal or cheaper alternative; notice logged only")
                }
            }
        }

        // Voluntary disruption, off the async threads.
        if !due {
            return self.advance_jobs(report, now).await;
        }
        self.last_decided = Some(now);
        self.recover(&snapshot, &mut facts, &catalog, now, &mut report)
            .await;
        let mut config = self.config.decide;
        let settling = !snapshot.pending.is_empty()
            && self.executor.last_move_done().is_some_and(|t| {
                now.duration_since(t).as_secs_f64() < self.config.settle.as_secs_f64()
            });
        config.moves_allowed = config.moves_allowed && !self.executor.moving() && !settling;
        let started = Instant::now();
        let cat = catalog.clone();
        let decided = tokio::task::spawn_blocking(move || {
            decide::decide(&DecideInput {
                nodes: &facts.nodes,
                policies: &facts.policies,
                pools: &facts.pools,
                catalog: &cat,
                config,
                now,
            })
        })
        .await;
        report.decide_millis = started.elapsed().as_secs_f64() * 1000.0;
        match decided {
            Ok(decisions) => {
                for d in decisions {
                    info!(reason = d.reason.as_str(), savings = d.savings, message = %d.message, "disruption decided");
                    if self.executor.start(d.clone(), &snapshot, now) {
                        report.started.push(d);
                    }
                }
            }
            Err(e) => warn!(error = %e, "disruption decision task failed"),
        }
        self.advance_jobs(report, now).await
    }

    /// Picks up nodes left half-disrupted by a previous controller (a restart or a leader
    /// change loses the executor's jobs, which live in memory): a node tainted
    /// `gantry.dev/disrupted` or with a `Disrupting=True` claim, that no job holds and whose claim
    /// exists and is not being deleted. An interruption (condition reason `Interrupted`) is
    /// resumed as an urgent replacement and drain, since the instance is still going away;
    /// anything else is restored (taint removed, `Disrupting=False`, reason `Recovered`) and
    /// judged afresh by later rounds.
    async fn recover(
        &mut self,
        snapshot: &ClusterSnapshot,
        facts: &mut Facts,
        catalog: &Catalog,
        now: jiff::Timestamp,
        report: &mut DisruptionReport,
    ) {
        let busy = self.executor.busy_nodes();
        for idx in 0..facts.nodes.len() {
            let Some(n) = facts.nodes.get(idx) else {
                continue;
            };
            let name = n.view.name.clone();
            let Some(claim) = claim_of(snapshot, &name) else {
                continue;
            };
            let tainted = snapshot
                .node(&name)
                .is_some_and(|v| v.has_taint(TAINT_DISRUPTED));
            let marked = claim.is_condition_true(conditions::DISRUPTING);
            if busy.contains(&name)
                || claim.metadata.deletion_timestamp.is_some()
                || !(tainted || marked)
            {
                continue;
            }
            let interrupted = claim
                .status
                .as_ref()
                .and_then(|s| {
                    s.conditions
                        .iter()
                        .find(|c| c.type_ == conditions::DISRUPTING)
                })
                .and_then(|c| c.reason.as_deref())
                == Some(Reason::Interrupted.as_str());
            if interrupted {
                if let Some(n) = facts.nodes.get_mut(idx) {
                    n.disrupting = false;
                }
                let input = DecideInput {
                    nodes: &facts.nodes,
                    policies: &facts.policies,
                    pools: &facts.pools,
                    catalog,
                    config: self.config.decide,
                    now,
                };
                let decision = decide::interruption(&input, idx, true);
                if let Some(n) = facts.nodes.get_mut(idx) {
                    n.disrupting = true;
                }
                if let Some(d) = decision {
                    info!(node = %name, "resuming an interrupted node's drain after a restart");
                    if self.executor.start(d.clone(), snapshot, now) {
                        report.started.push(d);
                    }
                    continue;
                }
            }
            info!(node = %name, "restoring a node a previous controller left disrupting");
            let patch = NodePatch {
                remove_taints: vec![TAINT_DISRUPTED.to_string()],
                ..Default::default()
            };
            if let Err(e) = self.cluster.patch_node(&name, &patch).await {
                warn!(node = %name, error = %e, "cannot remove the disrupted taint");
                continue;
            }
            let mut status = claim.status.clone().unwrap_or_default();
            crate::provision::launch::set_condition(
                &mut status,
                conditions::DISRUPTING,
                false,
                "Recovered",
                now,
            );
            let claim_name = claim.metadata.name.clone().unwrap_or_default();
            if let Err(e) = self
                .cluster
                .update_nodeclaim_status(&claim_name, &status)
                .await
            {
                warn!(nodeclaim = %claim_name, error = %e, "cannot clear Disrupting");
            }
        }
    }

    /// Advances every job on a fresh snapshot and fills in the report's counters.
    async fn advance_jobs(
        &mut self,
        mut report: DisruptionReport,
        now: jiff::Timestamp,
    ) -> DisruptionReport {
        let fresh = self.state.load();
        self.executor.tick(&fresh, now).await;
        report.stats = self.executor.stats().clone();
        report.active_jobs = self.executor.jobs().iter().filter(|j| j.active()).count();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::sim::{SimCloud, SimConfig};
    use crate::kube::crd::{EC2NodeClass, NodeClaimStatus, NodePool};
    use crate::model::labels::NODECLAIM;
    use crate::provision::launch::set_condition;
    use crate::sim::cluster::SimCluster;
    use crate::state::DemandLedger;
    use interruption::{InterruptionEvent, InterruptionKind, SimInterruptions};
    use k8s_openapi::api::core::v1::{Node, Pod};
    use std::time::Duration;

    fn t0() -> jiff::Timestamp {
        "2026-12-04T12:00:00Z".parse().unwrap()
    }

    struct World {
        cluster: Arc<SimCluster>,
        cloud: Arc<SimCloud>,
    }

    /// Nodes `n0..` of m5.2xlarge (8 vCPU), each with `pods[i]` one-vCPU pods; the pods of node
    /// `dnd` carry `karpenter.sh/do-not-disrupt`.
    async fn world(pods: &[usize], dnd: Option<usize>) -> World {
        let cluster = SimCluster::new(
            t0(),
            SharedState::new(),
            DemandLedger::new(Duration::from_secs(600), 1000),
            Duration::from_secs(120),
        );
        let pool: NodePool = serde_yaml::from_str(
            r#"
metadata: {name: default}
spec:
  template: {spec: {nodeClassRef: {name: default}}}
  disruption: {budgets: [{nodes: "100%"}]}
"#,
        )
        .unwrap();
        cluster.put_nodepool(pool);
        cluster.put_nodeclass(
            serde_yaml::from_str::<EC2NodeClass>("metadata: {name: default}\nspec: {}").unwrap(),
        );
        let catalog = Catalog::embedded().unwrap();
        let alloc = catalog
            .get("m5.2xlarge")
            .unwrap()
            .allocatable(None)
            .to_map();
        for (i, count) in pods.iter().enumerate() {
            let name = format!("n{i}");
            let claim_name = format!("default-{i}");
            let mut claim = NodeClaim::new(&claim_name, Default::default());
            claim.metadata.labels = Some([(NODEPOOL.to_string(), "default".to_string())].into());
            claim.spec.node_class_ref.name = "default".into();
            cluster.create_nodeclaim(&claim).await.unwrap();
            let mut status = NodeClaimStatus {
                node_name: Some(name.clone()),
                instance_type: Some("m5.2xlarge".into()),
                price_per_hour: Some("0.3840".into()),
                provider_id: Some(format!("aws:///us-east-1a/i-{i}")),
                ..Default::default()
            };
            set_condition(
                &mut status,
                conditions::INITIALIZED,
                true,
                "Initialized",
                t0() - jiff::SignedDuration::from_hours(1),
            );
            cluster
                .update_nodeclaim_status(&claim_name, &status)
                .await
                .unwrap();
            let mut node = Node::default();
            node.metadata.name = Some(name.clone());
            node.metadata.labels = Some(
                [
                    (NODEPOOL, "default"),
                    (NODECLAIM, claim_name.as_str()),
                    (INSTANCE_TYPE, "m5.2xlarge"),
                    (ZONE, "us-east-1a"),
                    (CAPACITY_TYPE, "spot"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            );
            node.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
                provider_id: Some(format!("aws:///us-east-1a/i-{i}")),
                ..Default::default()
            });
            node.status = Some(k8s_openapi::api::core::v1::NodeStatus {
                allocatable: Some(
                    alloc
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                k8s_openapi::apimachinery::pkg::api::resource::Quantity(v.clone()),
                            )
                        })
                        .collect(),
                ),
                ..Default::default()
            });
            cluster.put_node(node);
            for j in 0..*count {
                let ann = if dnd == Some(i) {
                    "annotations: {karpenter.sh/do-not-disrupt: 'true'}, "
                } else {
                    ""
                };
                let pod: Pod = serde_yaml::from_str(&format!(
                    "metadata: {{name: p{i}-{j}, namespace: default, {ann}}}\nspec: {{containers: [{{name: c, resources: {{requests: {{cpu: '1', memory: 1Gi}}}}}}]}}"
                ))
                .unwrap();
                let uid = cluster.add_pod(pod);
                cluster.bind(&uid, &name).unwrap();
            }
        }
        cluster.flush();
        let cloud = Arc::new(SimCloud::new(catalog, SimConfig::default()));
        World { cluster, cloud }
    }

    fn controller(w: &World) -> Disruption {
        Disruption::new(
            w.cluster.clone(),
            w.cloud.clone(),
            w.cluster.shared().clone(),
            InFlight::default(),
            DisruptionConfig::default(),
        )
    }

    fn deleting(w: &World, claim: &str) -> bool {
        w.cluster.read(|s| {
            s.claims
                .get(claim)
                .is_some_and(|c| c.metadata.deletion_timestamp.is_some())
        })
    }

    #[tokio::test]
    async fn an_empty_node_is_removed_in_one_tick() {
        let w = world(&[7, 7, 0], None).await;
        let mut d = controller(&w);
        let r = d.tick(t0()).await;
        assert_eq!(r.started.len(), 1, "{:?}", r.started);
        assert_eq!(r.started[0].command.nodes(), ["n2".to_string()]);
        assert!(deleting(&w, "default-2"));
        assert!(!deleting(&w, "default-0") && !deleting(&w, "default-1"));
        assert_eq!(r.stats.nodes_removed, 1);
        // Nothing more to do: the full nodes stay.
        let r = d.tick(t0() + jiff::SignedDuration::from_secs(10)).await;
        assert!(r.started.is_empty(), "{:?}", r.started);
    }

    #[tokio::test]
    async fn do_not_disrupt_pods_pin_their_node() {
        // n2's single pod would fit on n1, but it asks not to be disrupted.
        let w = world(&[7, 6, 1], Some(2)).await;
        let mut d = controller(&w);
        let r = d.tick(t0()).await;
        assert!(
            r.started
                .iter()
                .all(|d| !d.command.nodes().contains(&"n2".to_string())),
            "{:?}",
            r.started
        );
        let w = world(&[7, 6, 1], None).await;
        let mut d = controller(&w);
        let r = d.tick(t0()).await;
        assert_eq!(r.started.len(), 1, "{:?}", r.started);
        assert_eq!(r.started[0].command.nodes(), ["n2".to_string()]);
        assert_eq!(r.stats.evictions, 1);
    }

    #[tokio::test]
    async fn a_spot_warning_replaces_and_drains_at_once() {
        let w = world(&[7, 7], None).await;
        let source = Arc::new(SimInterruptions::new());
        let mut d = controller(&w).with_interruptions(source.clone());
        source.push(InterruptionEvent {
            instance_id: "i-0".into(),
            kind: InterruptionKind::SpotInterruption,
        });
        let r = d.tick(t0()).await;
        assert_eq!(r.interruptions, 1);
        let first = &r.started[0];
        assert!(first.urgent, "{first:?}");
        assert!(
            matches!(first.command, decide::Command::Replace { .. }),
            "{first:?}"
        );
        assert_eq!(
            r.stats.launched as usize,
            first.command.replacements().len(),
            "every replacement the planner asked for"
        );
        assert_eq!(
            r.stats.evictions, 7,
            "drained without waiting for the replacement"
        );
    }

    #[tokio::test]
    async fn a_state_change_to_running_starts_nothing() {
        let w = world(&[7, 7], None).await;
        let source = Arc::new(SimInterruptions::new());
        let mut d = controller(&w).with_interruptions(source.clone());
        for state in ["pending", "running"] {
            source.push(InterruptionEvent {
                instance_id: "i-0".into(),
                kind: InterruptionKind::StateChange(state.into()),
            });
        }
        let r = d.tick(t0()).await;
        assert_eq!(r.interruptions, 2);
        assert!(r.started.is_empty(), "{:?}", r.started);
        assert_eq!(r.stats.launched, 0);
    }

    #[tokio::test]
    async fn a_rebalance_recommendation_without_a_cheaper_alternative_is_only_logged() {
        let w = world(&[7, 7], None).await;
        // Priced at nothing, no alternative is equal or cheaper.
        for i in 0..2 {
            let name = format!("default-{i}");
            let mut status = w.cluster.read(|s| s.claims[&name].status.clone().unwrap());
            status.price_per_hour = Some("0".into());
            w.cluster
                .update_nodeclaim_status(&name, &status)
                .await
                .unwrap();
        }
        let source = Arc::new(SimInterruptions::new());
        let mut d = controller(&w).with_interruptions(source.clone());
        source.push(InterruptionEvent {
            instance_id: "i-0".into(),
            kind: InterruptionKind::RebalanceRecommendation,
        });
        let r = d.tick(t0()).await;
        assert_eq!(r.interruptions, 1);
        assert!(r.started.is_empty(), "{:?}", r.started);
        assert_eq!(r.stats.launched, 0);
    }

    /// A restarted controller has no jobs: a node a lost job left tainted is restored, and an
    /// interrupted one is drained again at once.
    #[tokio::test]
    async fn lost_jobs_are_resumed_or_restored() {
        let w = world(&[7, 7, 3], None).await;
        for (node, claim, reason) in [
            ("n1", "default-1", "Underutilized"),
            ("n2", "default-2", "Interrupted"),
        ] {
            let patch = NodePatch {
                add_taints: vec![crate::model::Taint::new(
                    TAINT_DISRUPTED,
                    "true",
                    crate::model::Effect::NoSchedule,
                )],
                ..Default::default()
            };
            w.cluster.patch_node(node, &patch).await.unwrap();
            let mut status = w.cluster.read(|s| s.claims[claim].status.clone().unwrap());
            set_condition(&mut status, conditions::DISRUPTING, true, reason, t0());
            w.cluster
                .update_nodeclaim_status(claim, &status)
                .await
                .unwrap();
        }
        let mut d = controller(&w);
        let r = d.tick(t0()).await;
        let tainted = |node: &str| {
            w.cluster.read(|s| {
                s.nodes[node]
                    .spec
                    .as_ref()
                    .and_then(|sp| sp.taints.as_ref())
                    .is_some_and(|t| t.iter().any(|t| t.key == TAINT_DISRUPTED))
            })
        };
        assert!(!tainted("n1"), "the lost voluntary job's node is restored");
        let claim1 = w.cluster.read(|s| s.claims["default-1"].clone());
        assert!(!claim1.is_condition_true(conditions::DISRUPTING));
        let resumed: Vec<_> = r
            .started
            .iter()
            .filter(|d| d.reason == Reason::Interrupted)
            .collect();
        assert_eq!(resumed.len(), 1, "{:?}", r.started);
        assert!(resumed[0].urgent);
        assert_eq!(resumed[0].command.nodes(), ["n2".to_string()]);
        assert_eq!(r.stats.evictions, 3, "n2 drained at once");
    }

    /// The whole loop on the simulation: the lifecycle controller and the fake kubelet bring
    /// up three nodes, the disruption controller replaces the underused one with a cheaper type,
    /// waits for the replacement to initialize, drains, and the lifecycle controller's finalizer
    /// terminates the old instance.
    #[tokio::test]
    async fn an_underused_node_is_replaced_end_to_end() {
        use crate::lifecycle::{Lifecycle, LifecycleConfig};
        use crate::model::CapacityType;
        use crate::plan::{ClaimOption, NewClaim};
        use crate::provision::launch::{LaunchOutcome, launch};
        use crate::sim::kubelet::{KubeletConfig, SimKubelet};

        let w = world(&[], None).await;
        let api: Arc<dyn ClusterApi> = w.cluster.clone();
        let cloud: Arc<dyn CloudProvider> = w.cloud.clone();
        let catalog = cloud.catalog().await.unwrap();
        let inflight = InFlight::default();
        let snap = w.cluster.shared().load();
        let pool = snap.nodepools["default"].clone();
        let class = snap.nodeclasses["default"].clone();
        let planned = NewClaim {
            pool: "default".into(),
            options: vec![ClaimOption {
                instance_type: "m5.2xlarge".into(),
                price: 0.384,
            }],
            zones: vec!["us-east-1a".into()],
            capacity_types: vec![CapacityType::OnDemand],
            capacity_type: CapacityType::OnDemand,
            price: 0.384,
            pods: vec![],
            requests: Default::default(),
        };
        for i in 0..3 {
            let out = launch(
                api.as_ref(),
                cloud.as_ref(),
                &inflight,
                &format!("default-{i}"),
                &pool,
                &class,
                &planned,
                &[],
                &catalog,
                None,
                t0(),
            )
            .await;
            assert!(matches!(out, LaunchOutcome::Launched(_)), "{out:?}");
        }
        let mut lifecycle = Lifecycle::new(
            api.clone(),
            cloud.clone(),
            w.cluster.shared().clone(),
            inflight.clone(),
            LifecycleConfig::default(),
        );
        let mut kubelet = SimKubelet::new(KubeletConfig::typical(catalog.clone()));
        let mut now = t0();
        let step = jiff::SignedDuration::from_secs(5);
        let initialized = |w: &World| {
            w.cluster.read(|s| {
                s.claims
                    .values()
                    .filter(|c| c.is_condition_true(conditions::INITIALIZED))
                    .filter_map(|c| c.status.as_ref()?.node_name.clone())
                    .collect::<Vec<String>>()
            })
        };
        while initialized(&w).len() < 3 {
            assert!(
                now < t0() + jiff::SignedDuration::from_secs(600),
                "nodes never came up"
            );
            now += step;
            w.cluster.set_now(now);
            w.cloud.advance(Duration::from_secs(5));
            kubelet.step(now, cloud.as_ref(), &w.cluster).await;
            lifecycle.tick(now).await;
        }
        let mut nodes = initialized(&w);
        nodes.sort();
        // Two full nodes, one holding a single pod that fits nowhere else.
        for (i, node) in nodes.iter().enumerate() {
            let count = if i == 2 { 1 } else { 7 };
            for j in 0..count {
                let pod: Pod = serde_yaml::from_str(&format!(
                    "metadata: {{name: p{i}-{j}, namespace: default}}\nspec: {{containers: [{{name: c, resources: {{requests: {{cpu: '1', memory: 1Gi}}}}}}]}}"
                ))
                .unwrap();
                let uid = w.cluster.add_pod(pod);
                w.cluster.bind(&uid, node).unwrap();
            }
        }
        w.cluster.flush();
        let mut d = Disruption::new(
            api.clone(),
            cloud.clone(),
            w.cluster.shared().clone(),
            inflight.clone(),
            DisruptionConfig::default(),
        );
        let mut decisions = Vec::new();
        let victim = nodes[2].clone();
        loop {
            assert!(
                now < t0() + jiff::SignedDuration::from_secs(1800),
                "never finished: {decisions:?}"
            );
            let r = d.tick(now).await;
            decisions.extend(r.started);
            lifecycle.tick(now).await;
            kubelet.step(now, cloud.as_ref(), &w.cluster).await;
            if w.cluster.read(|s| !s.nodes.contains_key(&victim)) {
                break;
            }
            now += step;
            w.cluster.set_now(now);
            w.cloud.advance(Duration::from_secs(5));
        }
        assert_eq!(decisions.len(), 1, "{decisions:?}");
        let decision = &decisions[0];
        assert_eq!(decision.command.nodes(), std::slice::from_ref(&victim));
        let decide::Command::Replace { replacement, .. } = &decision.command else {
            panic!("expected a replacement: {decision:?}");
        };
        assert!(replacement.price < 0.384);
        assert_eq!(d.executor().stats().evictions, 1);
        assert_eq!(d.take_evicted().len(), 1);
        // The old claim went through its finalizer: instance terminated, claim gone.
        assert!(w.cluster.read(|s| !s.claims.contains_key("default-2")));
        let live = w
            .cloud
            .instances()
            .into_iter()
            .filter(|i| i.state.is_alive())
            .count();
        assert_eq!(live, 3, "two old nodes and the replacement");
    }
}

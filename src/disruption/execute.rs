//! The executor: carries each [`Decision`] out as a state machine advanced by `tick(now)`, so a
//! drain that waits on a PodDisruptionBudget or a replacement that is still booting never blocks
//! the loop and never sleeps.
//!
//! ```text
//! Start ─taint gantry.dev/disrupted, Disrupting=True─▶ Launching ─launch─▶ AwaitReplacement
//!   │ (Delete)                                          │ (urgent: drain at once)   │ Initialized
//!   └──────────────────────────────────────────────────▶ Draining ◀────────────────┘
//!            evict (429 → exponential back-off; terminationGracePeriod forces) │
//!                                                                              ▼
//!                         Deleting ─delete NodeClaim (its finalizer terminates)─▶ Done
//! ```
//!
//! A failed launch (or a replacement that never initializes) aborts the job: the taint and the
//! Disrupting condition are removed and nothing was evicted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tracing::{info, warn};

use super::decide::{Command, Decision};
use crate::cloud::CloudProvider;
use crate::kube::api::{ClusterApi, ClusterError, EventRecord, NodePatch};
use crate::kube::crd::conditions;
use crate::model::labels::TAINT_DISRUPTED;
use crate::model::{Effect, Taint};
use crate::provision::launch::{self, InFlight, LaunchOutcome};
use crate::state::ClusterSnapshot;

/// Annotation the kubelet puts on mirror pods of static pods; they cannot be evicted.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Executor tunables.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExecConfig {
    /// First back-off after a PDB refusal; doubles per refusal.
    pub backoff_base: Duration,
    /// Longest back-off. Short, because pods blocked by one budget take turns: with a 5 min
    /// cap, a drain of 10 pods under `maxUnavailable: 1` took about 28 min in `gantry demo`
    /// (Karpenter's eviction queue caps at 10 s).
    pub backoff_max: Duration,
    /// Give up on a replacement that is not Initialized by then.
    pub replacement_timeout: Duration,
    /// Re-issue an eviction for a pod still present this long after it was accepted.
    pub reevict_after: Duration,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(30),
            replacement_timeout: Duration::from_secs(900),
            reevict_after: Duration::from_secs(30),
        }
    }
}

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not yet tainted.
    Start,
    /// Tainted; the replacement is to be launched.
    Launching,
    /// Waiting for the replacement NodeClaim to be Initialized.
    AwaitReplacement,
    /// Evicting pods.
    Draining,
    /// Deleting the NodeClaims.
    Deleting,
    /// Finished.
    Done,
    /// Abandoned, with why; the nodes were restored.
    Failed(String),
}

/// PDB back-off state of one pod.
#[derive(Debug, Clone, Copy)]
struct Blocked {
    refusals: u32,
    retry_at: jiff::Timestamp,
}

/// One decision being carried out.
#[derive(Debug, Clone)]
pub struct Job {
    /// Sequence number, for logs.
    pub id: u64,
    /// What is being done and why.
    pub decision: Decision,
    /// Where it is.
    pub phase: Phase,
    /// The replacement NodeClaims, as they are created.
    pub replacements: Vec<String>,
    /// When the current phase began.
    pub phase_since: jiff::Timestamp,
    /// When the drain is forced (from the NodeClaims' `terminationGracePeriod`).
    pub deadline: Option<jiff::Timestamp>,
    /// Node name → its NodeClaim, captured at start.
    claims: Vec<(String, Option<String>)>,
    blocked: HashMap<String, Blocked>,
    evicted: HashMap<String, jiff::Timestamp>,
}

impl Job {
    /// Whether the job still runs.
    pub fn active(&self) -> bool {
        !matches!(self.phase, Phase::Done | Phase::Failed(_))
    }

    /// Whether the job still has pods to move (a drain of nodes that held pods).
    pub fn moving(&self) -> bool {
        self.active() && self.decision.pods > 0
    }
}

/// Counters for reports and the demo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecStats {
    /// Evictions accepted.
    pub evictions: u64,
    /// Evictions a PDB refused.
    pub blocked: u64,
    /// Pods left behind when a deadline forced the drain.
    pub forced: u64,
    /// Replacements launched.
    pub launched: u64,
    /// Nodes whose NodeClaims were deleted.
    pub nodes_removed: u64,
    /// Jobs finished.
    pub completed: u64,
    /// Jobs abandoned.
    pub failed: u64,
}

/// Runs disruption jobs against the cluster and the cloud.
pub struct Executor {
    cluster: Arc<dyn ClusterApi>,
    cloud: Arc<dyn CloudProvider>,
    inflight: InFlight,
    config: ExecConfig,
    jobs: Vec<Job>,
    seq: u64,
    stats: ExecStats,
    evicted: Vec<Arc<Pod>>,
    last_move_done: Option<jiff::Timestamp>,
}

fn after(t: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(jiff::Timestamp::MAX)
}

fn elapsed(now: jiff::Timestamp, since: jiff::Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

/// Whether a pod must be evicted from a node being drained.
pub fn evictable(pod: &Pod) -> bool {
    let meta = &pod.metadata;
    let daemon = meta
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet");
    let mirror = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION));
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    !daemon && !mirror && !finished && meta.deletion_timestamp.is_none()
}

impl Executor {
    /// An executor with no jobs.
    pub fn new(
        cluster: Arc<dyn ClusterApi>,
        cloud: Arc<dyn CloudProvider>,
        inflight: InFlight,
        config: ExecConfig,
    ) -> Self {
        Executor {
            cluster,
            cloud,
            inflight,
            config,
            jobs: Vec::new(),
            seq: 0,
            stats: ExecStats::default(),
            evicted: Vec::new(),
            last_move_done: None,
        }
    }

    /// Every job, finished ones included (until [`Executor::prune`]).
    pub fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    /// Counters so far.
    pub fn stats(&self) -> &ExecStats {
        &self.stats
    }

    /// The pods evicted since the last call, as they were; a simulation without ReplicaSets
    /// re-creates them to model their controllers.
    pub fn take_evicted(&mut self) -> Vec<Arc<Pod>> {
        std::mem::take(&mut self.evicted)
    }

    /// When the last job that moved pods finished.
    pub fn last_move_done(&self) -> Option<jiff::Timestamp> {
        self.last_move_done
    }

    /// Forgets finished jobs.
    pub fn prune(&mut self) {
        self.jobs.retain(Job::active);
    }

    /// Nodes some active job is disrupting.
    pub fn busy_nodes(&self) -> HashSet<String> {
        self.jobs
            .iter()
            .filter(|j| j.active())
            .flat_map(|j| j.decision.command.nodes().iter().cloned())
            .collect()
    }

    /// Whether an active job is still moving pods (new moves wait for it).
    pub fn moving(&self) -> bool {
        self.jobs.iter().any(Job::moving)
    }

    /// Queues a decision; false (and nothing queued) if one of its nodes is already in a job.
    pub fn start(
        &mut self,
        decision: Decision,
        snapshot: &ClusterSnapshot,
        now: jiff::Timestamp,
    ) -> bool {
        let busy = self.busy_nodes();
        if decision.command.nodes().iter().any(|n| busy.contains(n)) {
            return false;
        }
        self.seq += 1;
        let claims = decision
            .command
            .nodes()
            .iter()
            .map(|n| {
                let claim = snapshot
                    .node(n)
                    .and_then(|v| v.nodeclaim().map(str::to_string))
                    .or_else(|| {
                        snapshot
                            .nodeclaims
                            .iter()
                            .find(|(_, c)| {
                                c.status.as_ref().and_then(|s| s.node_name.as_deref())
                                    == Some(n.as_str())
                            })
                            .map(|(k, _)| k.clone())
                    });
                (n.clone(), claim)
            })
            .collect();
        info!(job = self.seq, reason = decision.reason.as_str(), message = %decision.message, "disruption starts");
        self.jobs.push(Job {
            id: self.seq,
            decision,
            phase: Phase::Start,
            replacements: Vec::new(),
            phase_since: now,
            deadline: None,
            claims,
            blocked: HashMap::new(),
            evicted: HashMap::new(),
        });
        true
    }

    /// Advances every job as far as it can go now.
    pub async fn tick(&mut self, snapshot: &ClusterSnapshot, now: jiff::Timestamp) {
        let mut jobs = std::mem::take(&mut self.jobs);
        for job in jobs.iter_mut().filter(|j| j.active()) {
            // Each step either changes phase or waits; a handful of steps reaches a wait.
            for _ in 0..6 {
                let before = job.phase.clone();
                self.step(job, snapshot, now).await;
                if job.phase == before || !job.active() {
                    break;
                }
                job.phase_since = now;
            }
        }
        self.jobs = jobs;
    }

    async fn step(&mut self, job: &mut Job, snapshot: &ClusterSnapshot, now: jiff::Timestamp) {
        match job.phase.clone() {
            Phase::Start => self.taint(job, snapshot, now).await,
            Phase::Launching => self.launch(job, snapshot, now).await,
            Phase::AwaitReplacement => self.await_replacement(job, snapshot, now).await,
            Phase::Draining => self.drain(job, snapshot, now).await,
            Phase::Deleting => self.delete(job, now).await,
            Phase::Done | Phase::Failed(_) => {}
        }
    }

    async fn taint(&mut self, job: &mut Job, snapshot: &ClusterSnapshot, now: jiff::Timestamp) {
        let patch = NodePatch {
            add_taints: vec![Taint::new(TAINT_DISRUPTED, "true", Effect::NoSchedule)],
            ..Default::default()
        };
        for (node, claim) in &job.claims {
            match self.cluster.patch_node(node, &patch).await {
                Ok(()) | Err(ClusterError::NotFound(_)) => {}
                Err(e) => {
                    warn!(node = %node, error = %e, "cannot taint; retrying next tick");
                    return;
                }
            }
            if let Some(c) = claim.as_ref().and_then(|c| snapshot.nodeclaims.get(c)) {
                let mut status = c.status.clone().unwrap_or_default();
                launch::set_condition(
                    &mut status,
                    conditions::DISRUPTING,
                    true,
                    job.decision.reason.as_str(),
                    now,
                );
                let name = c.metadata.name.clone().unwrap_or_default();
                if let Err(e) = self.cluster.update_nodeclaim_status(&name, &status).await {
                    warn!(nodeclaim = %name, error = %e, "cannot mark Disrupting");
                }
                self.cluster
                    .record_event(EventRecord {
                        kind: "NodeClaim",
                        namespace: String::new(),
                        name,
                        uid: c.metadata.uid.clone().unwrap_or_default(),
                        type_: "Normal",
                        reason: "DisruptionStarted",
                        message: job.decision.message.clone(),
                    })
                    .await;
            }
        }
        job.phase = match job.decision.command {
            Command::Replace { .. } => Phase::Launching,
            Command::Delete { .. } => self.begin_drain(job, snapshot, now),
        };
    }

    fn begin_drain(
        &self,
        job: &mut Job,
        snapshot: &ClusterSnapshot,
        now: jiff::Timestamp,
    ) -> Phase {
        // The shortest terminationGracePeriod among the claims bounds the whole drain.
        job.deadline = job
            .claims
            .iter()
            .filter_map(|(_, c)| snapshot.nodeclaims.get(c.as_ref()?))
            .filter_map(|c| c.spec.termination_grace_period.as_deref())
            .filter_map(|t| crate::cli::parse_duration(t).ok())
            .min()
            .map(|d| after(now, d));
        Phase::Draining
    }

    async fn launch(&mut self, job: &mut Job, snapshot: &ClusterSnapshot, now: jiff::Timestamp) {
        let wanted: Vec<crate::plan::NewClaim> = job
            .decision
            .command
            .replacements()
            .into_iter()
            .cloned()
            .collect();
        let catalog = match self.cloud.catalog().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot read the catalog; launch retried next tick");
                return;
            }
        };
        // Launched ones are remembered, so a retried tick resumes where it stopped.
        for (k, replacement) in wanted.iter().enumerate().skip(job.replacements.len()) {
            let Some(pool) = snapshot.nodepools.get(&replacement.pool) else {
                let why = format!("replacement pool {} is gone", replacement.pool);
                self.abort(job, snapshot, now, why).await;
                return;
            };
            let class_name = &pool.spec.template.spec.node_class_ref.name;
            let Some(class) = snapshot.nodeclasses.get(class_name) else {
                let why = format!("nodeclass {class_name} not found");
                self.abort(job, snapshot, now, why).await;
                return;
            };
            let max_pods = class.spec.kubelet.as_ref().and_then(|k| k.max_pods);
            let seed = (now.as_nanosecond() as u64)
                ^ job.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (k as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
            let name = format!("{}-{}", replacement.pool, launch::claim_suffix(seed));
            let out = launch::launch(
                self.cluster.as_ref(),
                self.cloud.as_ref(),
                &self.inflight,
                &name,
                pool,
                class,
                replacement,
                &[],
                &catalog,
                max_pods,
                now,
            )
            .await;
            match out {
                LaunchOutcome::Launched(_) | LaunchOutcome::Retry(_) => {
                    self.stats.launched += 1;
                    job.replacements.push(name);
                }
                LaunchOutcome::NoCapacity(why) | LaunchOutcome::Failed(why) => {
                    self.abort(job, snapshot, now, format!("replacement failed: {why}"))
                        .await;
                    return;
                }
            }
        }
        job.phase = if job.decision.urgent {
            self.begin_drain(job, snapshot, now)
        } else {
            Phase::AwaitReplacement
        };
    }

    async fn await_replacement(
        &mut self,
        job: &mut Job,
        snapshot: &ClusterSnapshot,
        now: jiff::Timestamp,
    ) {
        let waited = elapsed(now, job.phase_since);
        let mut ready = true;
        for name in job.replacements.clone() {
            match snapshot.nodeclaims.get(&name) {
                Some(c) if c.metadata.deletion_timestamp.is_some() => {
                    let why = format!("replacement {name} was deleted");
                    self.abort(job, snapshot, now, why).await;
                    return;
                }
                Some(c) if c.is_condition_true(conditions::INITIALIZED) => {}
                // Absent for a while: the lifecycle controller gave up on it.
                None if waited > Duration::from_secs(60) => {
                    self.abort(job, snapshot, now, format!("replacement {name} is gone"))
                        .await;
                    return;
                }
                _ => ready = false,
            }
        }
        if ready {
            job.phase = self.begin_drain(job, snapshot, now);
        } else if waited > self.config.replacement_timeout {
            let why = "replacement did not initialize in time".to_string();
            self.abort(job, snapshot, now, why).await;
        }
    }

    async fn drain(&mut self, job: &mut Job, snapshot: &ClusterSnapshot, now: jiff::Timestamp) {
        let mut remaining = 0u64;
        let forced = job.deadline.is_some_and(|d| now >= d);
        for (node, _) in &job.claims {
            for pod in snapshot.pods_by_node.get(node).into_iter().flatten() {
                if !evictable(pod) {
                    continue;
                }
                remaining += 1;
                if forced {
                    continue;
                }
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let name = pod.metadata.name.clone().unwrap_or_default();
                let key = format!("{ns}/{name}");
                if job.blocked.get(&key).is_some_and(|b| now < b.retry_at) {
                    continue;
                }
                if job
                    .evicted
                    .get(&key)
                    .is_some_and(|t| elapsed(now, *t) < self.config.reevict_after)
                {
                    continue;
                }
                match self.cluster.evict_pod(&ns, &name).await {
                    Ok(()) | Err(ClusterError::NotFound(_)) => {
                        self.stats.evictions += 1;
                        self.evicted.push(pod.clone());
                        job.blocked.remove(&key);
                        job.evicted.insert(key, now);
                    }
                    Err(e) => {
                        if matches!(e, ClusterError::Blocked(_)) {
                            self.stats.blocked += 1;
                        } else {
                            warn!(pod = %key, error = %e, "eviction failed; backing off");
                        }
                        let refusals = job.blocked.get(&key).map_or(0, |b| b.refusals) + 1;
                        let wait = self
                            .config
                            .backoff_base
                            .saturating_mul(1u32 << (refusals - 1).min(16))
                            .min(self.config.backoff_max);
                        job.blocked.insert(
                            key,
                            Blocked {
                                refusals,
                                retry_at: after(now, wait),
                            },
                        );
                    }
                }
            }
        }
        if remaining == 0 {
            job.phase = Phase::Deleting;
        } else if forced {
            warn!(
                job = job.id,
                pods = remaining,
                "terminationGracePeriod passed; forcing the drain"
            );
            self.stats.forced += remaining;
            job.phase = Phase::Deleting;
        }
    }

    async fn delete(&mut self, job: &mut Job, now: jiff::Timestamp) {
        for (node, claim) in &job.claims {
            let r = match claim {
                Some(c) => self.cluster.delete_nodeclaim(c).await,
                // Not Gantry's claim-backed node: delete the Node itself.
                None => self.cluster.delete_node(node).await,
            };
            if let Err(e) = r {
                warn!(node = %node, error = %e, "cannot delete; retrying next tick");
                return;
            }
        }
        self.stats.nodes_removed += job.claims.len() as u64;
        self.stats.completed += 1;
        if job.decision.pods > 0 {
            self.last_move_done = Some(now);
        }
        info!(
            job = job.id,
            nodes = job.claims.len(),
            savings = job.decision.savings,
            "disruption done"
        );
        job.phase = Phase::Done;
    }

    async fn abort(
        &mut self,
        job: &mut Job,
        snapshot: &ClusterSnapshot,
        now: jiff::Timestamp,
        why: String,
    ) {
        warn!(job = job.id, reason = %why, "disruption abandoned; restoring nodes");
        let patch = NodePatch {
            remove_taints: vec![TAINT_DISRUPTED.to_string()],
            ..Default::default()
        };
        for (node, claim) in &job.claims {
            let _ = self.cluster.patch_node(node, &patch).await;
            if let Some(c) = claim.as_ref().and_then(|c| snapshot.nodeclaims.get(c)) {
                let mut status = c.status.clone().unwrap_or_default();
                launch::set_condition(&mut status, conditions::DISRUPTING, false, "Abandoned", now);
                let name = c.metadata.name.clone().unwrap_or_default();
                let _ = self.cluster.update_nodeclaim_status(&name, &status).await;
            }
        }
        for r in &job.replacements {
            // Launched but not needed: its finalizer terminates the instance.
            let _ = self.cluster.delete_nodeclaim(r).await;
        }
        self.stats.failed += 1;
        job.phase = Phase::Failed(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::sim::{SimCloud, SimConfig};
    use crate::disruption::decide::Reason;
    use crate::kube::crd::{EC2NodeClass, NodeClaim, NodeClaimStatus, NodePool};
    use crate::model::CapacityType;
    use crate::model::labels::{NODECLAIM, NODEPOOL};
    use crate::plan::{ClaimOption, NewClaim};
    use crate::sim::cluster::SimCluster;
    use crate::state::{DemandLedger, SharedState};
    use k8s_openapi::api::core::v1::Node;

    fn t0() -> jiff::Timestamp {
        "2026-12-04T12:00:00Z".parse().unwrap()
    }

    fn at(s: i64) -> jiff::Timestamp {
        t0() + jiff::SignedDuration::from_secs(s)
    }

    struct Fixture {
        cluster: Arc<SimCluster>,
        exec: Executor,
    }

    impl Fixture {
        fn snap(&self) -> Arc<ClusterSnapshot> {
            self.cluster.flush();
            self.cluster.shared().load()
        }

        async fn tick(&mut self, s: i64) {
            let snap = self.snap();
            self.exec.tick(&snap, at(s)).await;
        }

        fn taints(&self, node: &str) -> Vec<String> {
            self.cluster.read(|s| {
                s.nodes[node]
                    .spec
                    .as_ref()
                    .and_then(|sp| sp.taints.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| t.key)
                    .collect()
            })
        }

        fn claim(&self, name: &str) -> Option<NodeClaim> {
            self.cluster
                .read(|s| s.claims.get(name).map(|c| NodeClaim::clone(c)))
        }
    }

    async fn fixture(grace: Option<&str>) -> Fixture {
        let cluster = SimCluster::new(
            t0(),
            SharedState::new(),
            DemandLedger::new(Duration::from_secs(600), 1000),
            Duration::from_secs(120),
        );
        let pool: NodePool = serde_yaml::from_str(
            "metadata: {name: default}\nspec: {template: {spec: {nodeClassRef: {name: default}}}}",
        )
        .unwrap();
        cluster.put_nodepool(pool);
        let class: EC2NodeClass =
            serde_yaml::from_str("metadata: {name: default}\nspec: {}").unwrap();
        cluster.put_nodeclass(class);
        // One node, its claim, two workload pods and one DaemonSet pod.
        let mut claim = NodeClaim::new("default-aaaaa", Default::default());
        claim.metadata.labels = Some([(NODEPOOL.to_string(), "default".to_string())].into());
        claim.spec.node_class_ref.name = "default".into();
        claim.spec.termination_grace_period = grace.map(str::to_string);
        cluster.create_nodeclaim(&claim).await.unwrap();
        let mut status = NodeClaimStatus {
            node_name: Some("n1".into()),
            ..Default::default()
        };
        launch::set_condition(
            &mut status,
            conditions::INITIALIZED,
            true,
            "Initialized",
            t0(),
        );
        cluster
            .update_nodeclaim_status("default-aaaaa", &status)
            .await
            .unwrap();
        let node: Node = serde_yaml::from_str(&format!(
            "metadata: {{name: n1, labels: {{{NODEPOOL}: default, {NODECLAIM}: default-aaaaa}}}}\nstatus: {{allocatable: {{cpu: '2', memory: 8Gi, pods: '29'}}}}"
        ))
        .unwrap();
        cluster.put_node(node);
        for (name, daemon) in [("a", false), ("b", false), ("kube-proxy-x", true)] {
            let owner = if daemon {
                "ownerReferences: [{apiVersion: apps/v1, kind: DaemonSet, name: kp, uid: u}]"
            } else {
                ""
            };
            let pod: Pod = serde_yaml::from_str(&format!(
                "metadata: {{name: {name}, namespace: default, {owner}}}\nspec: {{containers: [{{name: c}}]}}"
            ))
            .unwrap();
            let uid = cluster.add_pod(pod);
            cluster.bind(&uid, "n1").unwrap();
        }
        let cloud = Arc::new(SimCloud::embedded(SimConfig::default()).unwrap());
        let exec = Executor::new(
            cluster.clone(),
            cloud,
            InFlight::default(),
            ExecConfig::default(),
        );
        Fixture { cluster, exec }
    }

    fn delete_n1() -> Decision {
        Decision {
            command: Command::Delete {
                nodes: vec!["n1".into()],
            },
            reason: Reason::Underutilized,
            message: "test".into(),
            savings: 0.1,
            pods: 2,
            urgent: false,
        }
    }

    fn replace_n1(pool: &str, urgent: bool) -> Decision {
        Decision {
            command: Command::Replace {
                nodes: vec!["n1".into()],
                replacement: NewClaim {
                    pool: pool.into(),
                    options: vec![ClaimOption {
                        instance_type: "m5.large".into(),
                        price: 0.096,
                    }],
                    zones: vec!["us-east-1a".into()],
                    capacity_types: vec![CapacityType::OnDemand],
                    capacity_type: CapacityType::OnDemand,
                    price: 0.096,
                    pods: vec![],
                    requests: Default::default(),
                },
                extra: vec![],
            },
            urgent,
            reason: if urgent {
                Reason::Interrupted
            } else {
                Reason::Underutilized
            },
            ..delete_n1()
        }
    }

    #[tokio::test]
    async fn a_pdb_refusal_backs_off_and_retries_then_the_claim_is_deleted() {
        let mut f = fixture(None).await;
        f.cluster
            .mutate(|s| s.refuse_evictions.insert("default/a".into(), 2));
        let snap = f.snap();
        assert!(f.exec.start(delete_n1(), &snap, t0()));
        assert!(
            !f.exec.start(delete_n1(), &snap, t0()),
            "a node is in one job at a time"
        );
        f.tick(0).await;
        assert!(f.taints("n1").contains(&TAINT_DISRUPTED.to_string()));
        assert!(
            f.claim("default-aaaaa")
                .unwrap()
                .is_condition_true(conditions::DISRUPTING)
        );
        assert_eq!(f.exec.jobs()[0].phase, Phase::Draining);
        assert_eq!((f.exec.stats().evictions, f.exec.stats().blocked), (1, 1));
        // Backing off: nothing is retried before 5 s, then the second refusal waits 10 s more.
        f.tick(4).await;
        assert_eq!(f.exec.stats().blocked, 1);
        f.tick(5).await;
        assert_eq!(f.exec.stats().blocked, 2);
        f.tick(14).await;
        assert_eq!(f.exec.stats().evictions, 1);
        f.tick(15).await;
        assert_eq!(f.exec.stats().evictions, 2);
        // The DaemonSet pod is never evicted; the claim gets deleted (its finalizer holds it).
        f.tick(16).await;
        assert_eq!(f.exec.jobs()[0].phase, Phase::Done);
        let claim = f.claim("default-aaaaa").unwrap();
        assert!(claim.metadata.deletion_timestamp.is_some());
        let left: Vec<String> = f.cluster.read(|s| {
            s.pods
                .values()
                .filter_map(|p| p.metadata.name.clone())
                .collect()
        });
        assert_eq!(left, ["kube-proxy-x"]);
        assert_eq!(f.cluster.read(|s| s.counters.evictions), 2);
        assert_eq!(f.exec.stats().nodes_removed, 1);
        assert!(!f.exec.moving());
    }

    #[tokio::test]
    async fn the_grace_period_forces_a_blocked_drain() {
        let mut f = fixture(Some("30s")).await;
        f.cluster
            .mutate(|s| s.refuse_evictions.insert("default/a".into(), u32::MAX));
        let snap = f.snap();
        f.exec.start(delete_n1(), &snap, t0());
        for s in [0, 10, 20, 29] {
            f.tick(s).await;
            assert_eq!(f.exec.jobs()[0].phase, Phase::Draining, "at {s}s");
        }
        f.tick(30).await;
        assert_eq!(f.exec.jobs()[0].phase, Phase::Done);
        assert_eq!(f.exec.stats().forced, 1);
        assert!(
            f.claim("default-aaaaa")
                .unwrap()
                .metadata
                .deletion_timestamp
                .is_some()
        );
    }

    #[tokio::test]
    async fn a_replacement_is_launched_and_awaited_before_the_drain() {
        let mut f = fixture(None).await;
        let snap = f.snap();
        f.exec.start(replace_n1("default", false), &snap, t0());
        f.tick(0).await;
        let job = &f.exec.jobs()[0];
        assert_eq!(job.phase, Phase::AwaitReplacement);
        let r = job.replacements[0].clone();
        assert!(f.claim(&r).unwrap().is_condition_true(conditions::LAUNCHED));
        f.tick(20).await;
        assert_eq!(
            f.exec.stats().evictions,
            0,
            "no eviction before the replacement is up"
        );
        // The lifecycle controller initializes it.
        let mut status = f.claim(&r).unwrap().status.unwrap();
        launch::set_condition(
            &mut status,
            conditions::INITIALIZED,
            true,
            "Initialized",
            at(40),
        );
        f.cluster
            .update_nodeclaim_status(&r, &status)
            .await
            .unwrap();
        f.tick(40).await;
        assert_eq!(f.exec.stats().evictions, 2);
        f.tick(41).await;
        assert_eq!(f.exec.jobs()[0].phase, Phase::Done);
        assert!(f.claim(&r).unwrap().metadata.deletion_timestamp.is_none());
    }

    #[tokio::test]
    async fn an_urgent_replacement_drains_at_once() {
        let mut f = fixture(None).await;
        let snap = f.snap();
        f.exec.start(replace_n1("default", true), &snap, t0());
        f.tick(0).await;
        assert_eq!(f.exec.stats().launched, 1);
        assert_eq!(f.exec.stats().evictions, 2);
    }

    #[tokio::test]
    async fn a_failed_launch_restores_the_node() {
        let mut f = fixture(None).await;
        let snap = f.snap();
        f.exec.start(replace_n1("nope", false), &snap, t0());
        f.tick(0).await;
        assert!(matches!(f.exec.jobs()[0].phase, Phase::Failed(_)));
        assert!(!f.taints("n1").contains(&TAINT_DISRUPTED.to_string()));
        assert_eq!(f.exec.stats().evictions, 0);
        f.exec.prune();
        assert!(f.exec.jobs().is_empty());
    }

    /// The mock-API-server pattern (STYLE.md): the executor writes through the real
    /// `KubeCluster`, whose client reaches a tower-test handle that plays the API server —
    /// a PDB's 429 on the first eviction, success afterwards.
    #[tokio::test]
    async fn the_executor_drains_through_the_api_server_and_backs_off_a_429() {
        use crate::kube::cluster::KubeCluster;
        use axum::http::{Request, Response};
        use kube::client::Body;
        use std::sync::Mutex;
        use tower_test::mock;

        let f = fixture(None).await;
        let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let api = Arc::new(KubeCluster::new(kube::Client::new(svc, "default"), "test"));
        let cloud = Arc::new(SimCloud::embedded(SimConfig::default()).unwrap());
        let mut exec = Executor::new(api, cloud, InFlight::default(), ExecConfig::default());
        let calls = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = calls.clone();
        let server = tokio::spawn(async move {
            let mut refused = false;
            while let Some((req, send)) = handle.next_request().await {
                let call = format!("{} {}", req.method(), req.uri().path());
                let body = req.into_body().collect_bytes().await.unwrap();
                let body: serde_json::Value = if body.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_slice(&body).unwrap()
                };
                let (code, reply) = match call.as_str() {
                    "GET /api/v1/nodes/n1" | "PATCH /api/v1/nodes/n1" => (
                        200,
                        serde_json::json!({"apiVersion": "v1", "kind": "Node",
                            "metadata": {"name": "n1", "resourceVersion": "1"}}),
                    ),
                    "POST /api/v1/namespaces/default/pods/a/eviction" if !refused => {
                        refused = true;
                        (
                            429,
                            serde_json::json!({"apiVersion": "v1", "kind": "Status",
                                "status": "Failure", "code": 429, "reason": "TooManyRequests",
                                "message": "Cannot evict pod as it would violate the pod's disruption budget."}),
                        )
                    }
                    c if c.ends_with("/eviction") => (
                        201,
                        serde_json::json!({"apiVersion": "v1", "kind": "Status",
                            "status": "Success", "metadata": {}}),
                    ),
                    c if c.starts_with("PATCH /apis/gantry.dev/v1/nodeclaims/")
                        || c.starts_with("DELETE /apis/gantry.dev/v1/nodeclaims/") =>
                    {
                        (
                            200,
                            serde_json::json!({"apiVersion": "gantry.dev/v1", "kind": "NodeClaim",
                                "metadata": {"name": "default-aaaaa"},
                                "spec": {"nodeClassRef": {"name": "default"}}}),
                        )
                    }
                    // Events (created or patched as a series): echo them back.
                    c if c.contains("/events") => (201, body.clone()),
                    _ => (
                        404,
                        serde_json::json!({"apiVersion": "v1", "kind": "Status",
                        "status": "Failure", "code": 404, "reason": "NotFound"}),
                    ),
                };
                if call.starts_with("PATCH /api/v1/nodes/") {
                    let keys: Vec<&str> = body["spec"]["taints"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| t["key"].as_str().unwrap())
                        .collect();
                    assert_eq!(keys, [TAINT_DISRUPTED]);
                }
                if call.ends_with("/status") {
                    let conds = body["status"]["conditions"].as_array().unwrap();
                    assert!(conds.iter().any(|c| c["type"] == conditions::DISRUPTING
                        && c["status"] == "True"
                        && c["reason"] == "Underutilized"));
                }
                seen.lock().unwrap().push(call);
                send.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                        .unwrap(),
                );
            }
        });

        let snap = f.snap();
        assert!(exec.start(delete_n1(), &snap, t0()));
        exec.tick(&snap, t0()).await;
        assert_eq!(exec.jobs()[0].phase, Phase::Draining);
        assert_eq!((exec.stats().evictions, exec.stats().blocked), (1, 1));
        // Within the 5 s back-off nothing is retried; at 5 s the refused pod goes.
        exec.tick(&snap, at(4)).await;
        assert_eq!(exec.stats().blocked, 1);
        exec.tick(&snap, at(5)).await;
        assert_eq!((exec.stats().evictions, exec.stats().blocked), (2, 1));
        // The API server deleted both evicted pods; the claim is deleted next.
        for name in ["a", "b"] {
            let uid = f.cluster.read(|s| {
                s.pods
                    .iter()
                    .find(|(_, p)| p.metadata.name.as_deref() == Some(name))
                    .map(|(u, _)| u.clone())
                    .unwrap()
            });
            f.cluster.delete_pod(&uid);
        }
        let snap = f.snap();
        exec.tick(&snap, at(6)).await;
        assert_eq!(exec.jobs()[0].phase, Phase::Done);
        drop(exec);
        let calls = calls.lock().unwrap().clone();
        let pos = |c: &str| {
            calls
                .iter()
                .position(|x| x == c)
                .unwrap_or_else(|| panic!("{c} never called: {calls:?}"))
        };
        let evict_a = "POST /api/v1/namespaces/default/pods/a/eviction";
        assert!(
            pos("PATCH /api/v1/nodes/n1") < pos(evict_a),
            "taint before evictions"
        );
        assert!(
            pos("PATCH /apis/gantry.dev/v1/nodeclaims/default-aaaaa/status") < pos(evict_a),
            "Disrupting before evictions"
        );
        assert_eq!(
            calls.iter().filter(|c| *c == evict_a).count(),
            2,
            "{calls:?}"
        );
        assert!(
            !calls.iter().any(|c| c.contains("kube-proxy")),
            "DaemonSet pods are not evicted: {calls:?}"
        );
        assert_eq!(
            calls.last().map(String::as_str),
            Some("DELETE /apis/gantry.dev/v1/nodeclaims/default-aaaaa")
        );
        server.abort();
    }
}

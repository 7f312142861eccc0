//! The provisioning loop: demand → batching window → one planning round → launches.
//!
//! `batch` is the window state machine, `input` turns a snapshot into the planner's input, and
//! `launch` persists each claim before asking the cloud for its instance.

pub mod batch;
pub mod input;
pub mod launch;

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tracing::{info, warn};

use crate::cloud::CloudProvider;
use crate::kube::api::{ClusterApi, EventRecord};
use crate::kube::crd::ReservedPod;
use crate::plan::{Plan, PlanInput, Target};
use crate::state::{DemandLedger, SharedState};
use batch::{BatchPolicy, Batcher};
use input::RoundInput;
use launch::{InFlight, LaunchOutcome};

/// Settings for the provisioner.
#[derive(Debug, Clone, Copy)]
pub struct ProvisionerConfig {
    /// Batching window.
    pub batch: BatchPolicy,
    /// Launches run concurrently up to this many.
    pub max_parallel_launches: usize,
    /// How long after Initialized a claim's reservations hold (the extender uses the same).
    pub reservation_window: std::time::Duration,
}

impl Default for ProvisionerConfig {
    fn default() -> Self {
        ProvisionerConfig {
            batch: BatchPolicy::default(),
            max_parallel_launches: 32,
            reservation_window: std::time::Duration::from_secs(120),
        }
    }
}

/// What a planning round did, for logs, metrics and the demo.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoundReport {
    /// Pods planned.
    pub pods: usize,
    /// Claims the plan asked for.
    pub claims_planned: usize,
    /// Claims launched.
    pub launched: usize,
    /// Claims dropped for insufficient capacity (their pods are re-planned).
    pub no_capacity: usize,
    /// Claims that failed for other reasons.
    pub failed: usize,
    /// Pods placed on existing nodes or in-flight claims.
    pub placed_existing: usize,
    /// Pods that fit nowhere, with the planner's reason.
    pub unschedulable: Vec<(String, String)>,
    /// Wall time spent planning, in milliseconds.
    pub plan_millis: f64,
    /// USD/hour of the launched claims.
    pub launched_cost: f64,
}

/// The provisioner; one per leader.
pub struct Provisioner {
    cluster: Arc<dyn ClusterApi>,
    cloud: Arc<dyn CloudProvider>,
    state: SharedState,
    ledger: DemandLedger,
    batcher: Batcher,
    config: ProvisionerConfig,
    inflight: InFlight,
    seq: u64,
}

impl Provisioner {
    /// A provisioner over the given cluster and cloud.
    pub fn new(
        cluster: Arc<dyn ClusterApi>,
        cloud: Arc<dyn CloudProvider>,
        state: SharedState,
        ledger: DemandLedger,
        inflight: InFlight,
        config: ProvisionerConfig,
    ) -> Self {
        Provisioner {
            cluster,
            cloud,
            state,
            ledger,
            batcher: Batcher::new(config.batch),
            config,
            inflight,
            seq: 0,
        }
    }

    fn unserved(&self, now: jiff::Timestamp) -> Vec<String> {
        let snapshot = self.state.load();
        let demand: HashSet<String> = self
            .ledger
            .entries()
            .iter()
            .map(|e| e.uid.clone())
            .collect();
        input::unserved(&snapshot, &demand, now, self.config.reservation_window)
    }

    /// Observes demand and runs a round when the window says so.
    pub async fn tick(&mut self, now: jiff::Timestamp) -> Option<RoundReport> {
        let pending = self.unserved(now);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        pending.hash(&mut h);
        self.batcher.observe(now, pending.len(), h.finish());
        if !self.batcher.ready(now) {
            return None;
        }
        self.batcher.fired(now);
        Some(self.round(now, pending).await)
    }

    /// Plans and launches for the given pending pods.
    #[tracing::instrument(skip_all, fields(batch.size = pending.len()))]
    pub async fn round(&mut self, now: jiff::Timestamp, pending: Vec<String>) -> RoundReport {
        let mut report = RoundReport::default();
        let snapshot = self.state.load();
        let catalog = match self.cloud.catalog().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot read the catalog; skipping this round");
                return report;
            }
        };
        let round = input::build(&snapshot, &pending, &catalog);
        for (what, why) in &round.skipped {
            warn!(object = %what, reason = %why, "skipped in planning");
        }
        report.pods = round.pods.len();
        if round.pods.is_empty() {
            return report;
        }
        let started = Instant::now();
        let cat = catalog.clone();
        let planned = tokio::task::spawn_blocking(move || {
            let plan = crate::plan::plan(&PlanInput {
                pods: &round.pods,
                pools: &round.pools,
                catalog: &cat,
                nodes: &round.nodes,
                in_flight: &round.in_flight,
                now,
            });
            (round, plan)
        })
        .await;
        report.plan_millis = started.elapsed().as_secs_f64() * 1000.0;
        let (round, plan) = match planned {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "planning task failed");
                return report;
            }
        };
        report.claims_planned = plan.claims.len();
        self.reserve_in_flight(&snapshot, &round, &plan, &mut report)
            .await;
        self.launch_all(&snapshot, &round, &plan, &catalog, now, &mut report)
            .await;
        for u in &plan.unschedulable {
            let (Some(d), Some(uid)) = (round.pods.get(u.pod), round.uids.get(u.pod)) else {
                continue;
            };
            report.unschedulable.push((d.key(), u.reason.clone()));
            self.cluster
                .record_event(EventRecord {
                    kind: "Pod",
                    namespace: d.namespace.clone(),
                    name: d.name.clone(),
                    uid: uid.clone(),
                    type_: "Warning",
                    reason: "FailedProvisioning",
                    message: u.reason.clone(),
                })
                .await;
        }
        info!(
            pods = report.pods,
            claims = report.claims_planned,
            launched = report.launched,
            no_capacity = report.no_capacity,
            unschedulable = report.unschedulable.len(),
            plan_ms = report.plan_millis,
            "planning round"
        );
        report
    }

    async fn reserve_in_flight(
        &self,
        snapshot: &crate::state::ClusterSnapshot,
        round: &RoundInput,
        plan: &Plan,
        report: &mut RoundReport,
    ) {
        let mut by_claim: HashMap<&str, Vec<ReservedPod>> = HashMap::new();
        for p in &plan.placements {
            report.placed_existing += 1;
            if let Target::Claim(name) = &p.target
                && let (Some(d), Some(uid)) = (round.pods.get(p.pod), round.uids.get(p.pod))
            {
                by_claim
                    .entry(name.as_str())
                    .or_default()
                    .push(ReservedPod {
                        uid: uid.clone(),
                        namespace: d.namespace.clone(),
                        name: d.name.clone(),
                    });
            }
        }
        for (name, pods) in by_claim {
            if let Some(claim) = snapshot.nodeclaims.get(name)
                && let Err(e) = launch::add_reservations(self.cluster.as_ref(), claim, &pods).await
            {
                warn!(nodeclaim = name, error = %e, "cannot add reservations");
            }
        }
    }

    async fn launch_all(
        &mut self,
        snapshot: &crate::state::ClusterSnapshot,
        round: &RoundInput,
        plan: &Plan,
        catalog: &Arc<crate::model::Catalog>,
        now: jiff::Timestamp,
        report: &mut RoundReport,
    ) {
        let mut jobs = Vec::new();
        for claim in &plan.claims {
            let Some(pool) = snapshot.nodepools.get(&claim.pool) else {
                continue;
            };
            let class_name = &pool.spec.template.spec.node_class_ref.name;
            let Some(class) = snapshot.nodeclasses.get(class_name) else {
                warn!(nodepool = %claim.pool, nodeclass = %class_name, "nodeclass not found; cannot launch");
                report.failed += 1;
                continue;
            };
            self.seq += 1;
            let seed = now.as_nanosecond() as u64 ^ self.seq.wrapping_mul(0x2545_F491_4F6C_DD1D);
            let name = format!("{}-{}", claim.pool, launch::claim_suffix(seed));
            let pods: Vec<(&crate::model::PodDemand, &str)> = claim
                .pods
                .iter()
                .filter_map(|i| Some((round.pods.get(*i)?, round.uids.get(*i)?.as_str())))
                .collect();
            let max_pods = round
                .pools
                .iter()
                .find(|p| p.name == claim.pool)
                .and_then(|p| p.max_pods);
            jobs.push((name, pool.clone(), class.clone(), claim, pods, max_pods));
        }
        let cluster = self.cluster.clone();
        let cloud = self.cloud.clone();
        let inflight = self.inflight.clone();
        let outcomes: Vec<(f64, LaunchOutcome)> = futures::stream::iter(jobs)
            .map(|(name, pool, class, claim, pods, max_pods)| {
                let (cluster, cloud, inflight) = (cluster.clone(), cloud.clone(), inflight.clone());
                async move {
                    let out = launch::launch(
                        cluster.as_ref(),
                        cloud.as_ref(),
                        &inflight,
                        &name,
                        &pool,
                        &class,
                        claim,
                        &pods,
                        catalog,
                        max_pods,
                        now,
                    )
                    .await;
                    (claim.price, out)
                }
            })
            .buffer_unordered(self.config.max_parallel_launches.max(1))
            .collect()
            .await;
        for (price, out) in outcomes {
            match out {
                LaunchOutcome::Launched(_) => {
                    report.launched += 1;
                    report.launched_cost += price;
                }
                LaunchOutcome::NoCapacity(why) => {
                    report.no_capacity += 1;
                    info!(reason = %why, "no capacity; pods return to demand");
                }
                LaunchOutcome::Failed(why) => {
                    report.failed += 1;
                    warn!(reason = %why, "launch failed");
                }
                LaunchOutcome::Retry(why) => {
                    warn!(reason = %why, "launch will be retried by the lifecycle controller");
                }
            }
        }
    }
}

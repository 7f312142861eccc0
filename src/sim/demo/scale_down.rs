//! Phase 2 of `gantry demo`: once the burst has settled, the Deployments scale in, spot capacity
//! is interrupted, and the disruption controller consolidates what is left, under
//! PodDisruptionBudgets.
//!
//! ```text
//! begin_scale_down: PDB-free deletion of 70% of each Deployment's pods (as its ReplicaSet
//!                   picks them), interruptions scheduled, "before" figures taken
//! every tick:       inject due interruption ─▶ scheduler ─▶ provisioner ─▶ disruption
//!                   ─▶ re-create evicted pods (their ReplicaSet / Job) ─▶ lifecycle ─▶ kubelet
//! done:             everything bound and initialized, no job running, and no decision for
//!                   `quiet` — or `max_time`
//! ```
//!
//! PDB violations are counted by the simulated API server at each removal
//! (`SimCounters::pdb_violations`), not by the executor, so a bug there would show.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;

use super::{DemoArgs, Fleet, Simulation};
use crate::cloud::instance_id_from_provider_id;
use crate::disruption::Disruption;
use crate::disruption::execute::{ExecStats, evictable};
use crate::disruption::interruption::{InterruptionEvent, InterruptionKind};
use crate::kube::crd::conditions;
use crate::model::Catalog;
use crate::model::labels::{CAPACITY_TYPE, TAINT_DISRUPTED};
use crate::sim::cluster::{SimCluster, SimCounters};
use crate::sim::scenario::Scenario;
use crate::sim::scheduler::Binding;
use crate::state::ClusterSnapshot;

/// How long a bound pod takes to turn Ready in the demo (a readiness probe's first success).
/// PDBs count only Ready pods, so an evicted pod's replacement restores the budget this late.
pub const POD_READY_DELAY: Duration = Duration::from_secs(5);

/// Parses a share between 0 and 1 (`--scale-down`).
///
/// # Errors
/// Not a number, or outside `[0, 1]`.
pub fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0 and 1"))
    }
}

/// What phase 2 does; tests build it directly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleDown {
    /// Share of each Deployment's (ReplicaSet's, StatefulSet's) pods deleted. Jobs are not
    /// scaled: their pods keep running.
    pub fraction: f64,
    /// Spot interruption warnings to inject.
    pub interruptions: usize,
    /// The first one this long after the scale-down.
    pub first_interruption_after: Duration,
    /// Then one every this long.
    pub interruption_every: Duration,
    /// The cluster counts as consolidated after this long with nothing pending, no disruption
    /// job running and no new decision. Longer than the controller's settle time (2 min) plus
    /// `consolidateAfter`, so fresh nodes get their chance to be judged.
    pub quiet: Duration,
    /// Phase 2 stops after this much virtual time regardless.
    pub max_time: Duration,
}

impl Default for ScaleDown {
    fn default() -> Self {
        ScaleDown {
            fraction: 0.7,
            interruptions: 3,
            first_interruption_after: Duration::from_secs(30),
            interruption_every: Duration::from_secs(60),
            quiet: Duration::from_secs(300),
            max_time: Duration::from_secs(1800),
        }
    }
}

impl ScaleDown {
    /// The plan `gantry demo`'s flags describe.
    pub fn from_args(args: &DemoArgs) -> Self {
        ScaleDown {
            fraction: args.scale_down,
            interruptions: args.interruptions,
            max_time: args.scale_down_max_time,
            ..Default::default()
        }
    }
}

/// Phase 2's figures, under `scale_down` in the JSON report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ScaleDownReport {
    /// Pods the scale-down deleted (Deployments scaled in; not evictions).
    pub pods_deleted: usize,
    /// Workload pods (not DaemonSet pods) in the cluster at the end.
    pub pods_total: usize,
    /// Of those, bound at the end.
    pub pods_bound: usize,
    /// Gantry's nodes when phase 2 began.
    pub nodes_before: usize,
    /// Gantry's nodes at the end.
    pub nodes_after: usize,
    /// Nodes alive when phase 2 began and gone at the end.
    pub nodes_removed: usize,
    /// Nodes added during phase 2 (replacements and provisioner launches) still there at the end.
    pub nodes_added: usize,
    /// Replacement NodeClaims the disruption executor launched (interruptions, cheaper types).
    pub replacements_launched: u64,
    /// USD/hour when phase 2 began.
    pub cost_per_hour_before: f64,
    /// USD/hour at the end.
    pub cost_per_hour_after: f64,
    /// The LP lower bound for the pods left, USD/hour.
    pub lower_bound_per_hour_after: f64,
    /// Requested CPU over allocatable CPU at the end.
    pub cpu_utilization_after: f64,
    /// Requested memory over allocatable memory at the end.
    pub memory_utilization_after: f64,
    /// Evictions the simulated API server accepted.
    pub evictions: u64,
    /// Evictions it refused with HTTP 429 because a PDB allowed no disruption.
    pub evictions_refused: u64,
    /// Healthy pods removed while a PDB covering them allowed no disruption (must be 0).
    pub pdb_violations: u64,
    /// Workload pods deleted with their node instead of evicted (a forced drain).
    pub pods_removed_with_node: u64,
    /// The longest any pod stayed unscheduled during phase 2, virtual seconds.
    pub max_unscheduled_seconds: f64,
    /// Disruption decisions started, by reason (`Empty`, `Underutilized`, `Interrupted`, ...).
    pub decisions: BTreeMap<String, usize>,
    /// Disruption jobs abandoned (a replacement that failed or never initialized).
    pub decisions_failed: u64,
    /// Spot interruption warnings injected.
    pub interruptions_injected: usize,
    /// Of those, whose node was drained (every workload pod moved off) before the end.
    pub interruptions_handled: usize,
    /// The longest time from a warning to its node holding no workload pod, virtual seconds
    /// (AWS reclaims the instance 120 s after the warning).
    pub interruption_drain_seconds_max: f64,
    /// The slowest disruption tick's decision time, wall milliseconds.
    pub decide_millis_max: f64,
    /// Whether it ended consolidated (quiet) rather than at its time limit.
    pub consolidated: bool,
    /// Nodes at the end by `type/zone/capacity-type`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes_by_type_after: BTreeMap<String, usize>,
    /// Virtual seconds phase 2 ran.
    pub simulated_seconds: f64,
    /// Wall-clock seconds phase 2 took.
    pub wall_seconds: f64,
}

/// A node whose instance got a spot warning.
#[derive(Debug, Clone)]
struct Interrupted {
    node: String,
    at: jiff::Timestamp,
    drained_after: Option<f64>,
}

/// Phase 2's running state.
#[derive(Debug)]
pub(super) struct Phase2 {
    plan: ScaleDown,
    began: jiff::Timestamp,
    wall: Instant,
    claims_before: HashSet<String>,
    counters_before: SimCounters,
    report: ScaleDownReport,
    next_interruption: jiff::Timestamp,
    interrupted: Vec<Interrupted>,
    last_activity: jiff::Timestamp,
    active_jobs: usize,
    recreated: u64,
    /// Executor counters of controllers replaced by a restart.
    carried: ExecStats,
}

fn after(t: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(jiff::Timestamp::MAX)
}

/// Puts the scenario's PodDisruptionBudgets and workload scales into the cluster, and makes
/// pods turn Ready [`POD_READY_DELAY`] after they start.
pub fn load_budgets(cluster: &SimCluster, scenario: &Scenario) {
    cluster.set_pod_ready_delay(POD_READY_DELAY);
    for w in &scenario.workloads {
        cluster.set_scale(
            &w.controller_uid,
            i32::try_from(w.replicas).unwrap_or(i32::MAX),
        );
    }
    for b in &scenario.pdbs {
        cluster.put_pdb(b.clone());
    }
}

/// The controller `ownerReference` UID of a pod.
fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// The order a ReplicaSet deletes pods in when scaled down (`ActivePodsWithRanks`): unbound
/// first, then pending, then not Ready, then those on nodes crowded with this workload, then the
/// newest. StatefulSets remove the highest ordinals first.
fn deletion_order(pods: &mut [Arc<Pod>], stateful: bool) {
    if stateful {
        let ordinal = |p: &Pod| -> u64 {
            p.metadata
                .name
                .as_deref()
                .and_then(|n| n.rsplit('-').next())
                .and_then(|o| o.parse().ok())
                .unwrap_or(0)
        };
        pods.sort_by_key(|p| std::cmp::Reverse(ordinal(p)));
        return;
    }
    let node = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
    let mut crowd: HashMap<String, usize> = HashMap::new();
    for p in pods.iter() {
        if let Some(n) = node(p) {
            *crowd.entry(n).or_default() += 1;
        }
    }
    let running = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    pods.sort_by(|a, b| {
        let key = |p: &Pod| {
            (
                node(p).is_some(),
                running(p),
                crate::sim::pdb::ready(p),
                std::cmp::Reverse(node(p).and_then(|n| crowd.get(&n).copied()).unwrap_or(0)),
                std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)),
                p.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
}

/// The pod an owner re-creates for an evicted one: same spec and labels, new name and UID,
/// unbound.
fn recreated(pod: &Pod, seq: u64) -> Pod {
    let mut p = pod.clone();
    let name = p.metadata.name.clone().unwrap_or_default();
    // Strip an earlier re-creation's suffix so names do not grow with every eviction.
    let base = match name.rsplit_once("-r") {
        Some((b, n)) if !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) => b.to_string(),
        _ => name,
    };
    p.metadata.name = Some(format!("{base}-r{seq}"));
    p.metadata.uid = None;
    p.metadata.resource_version = None;
    p.metadata.creation_timestamp = None;
    p.metadata.deletion_timestamp = None;
    if let Some(s) = p.spec.as_mut() {
        s.node_name = None;
    }
    p.status = None;
    p
}

/// Workload pods: not DaemonSet pods, mirror pods or finished pods.
fn workload_pods(cluster: &SimCluster) -> Vec<Arc<Pod>> {
    cluster.read(|s| s.pods.values().filter(|p| evictable(p)).cloned().collect())
}

impl Simulation {
    /// Starts phase 2: takes the "before" figures, scales every Deployment (and ReplicaSet and
    /// StatefulSet) of the scenario down by `plan.fraction`, as its ReplicaSet would pick the
    /// pods, and from now on ticks the disruption controller and injects interruptions.
    /// Jobs are not scaled.
    pub fn begin_scale_down(&mut self, scenario: &Scenario, plan: ScaleDown) {
        let now = self.now;
        let snap = self.app.cluster.load();
        // The burst's figures stay the top-level report.
        let f = Fleet::of(&snap);
        self.report.nodes = f.nodes;
        self.report.cost_per_hour = f.cost_per_hour;
        self.report.cpu_utilization = f.cpu_utilization;
        self.report.memory_utilization = f.memory_utilization;
        self.report.nodes_by_type = f.nodes_by_type;
        self.report.pods_bound = self.report.pods_total.saturating_sub(snap.pending.len());

        let mut deleted = 0;
        let pods = workload_pods(&self.cluster);
        for w in &scenario.workloads {
            if !matches!(w.kind.as_str(), "Deployment" | "ReplicaSet" | "StatefulSet") {
                continue;
            }
            let mut mine: Vec<Arc<Pod>> = pods
                .iter()
                .filter(|p| controller_uid(p) == Some(w.controller_uid.as_str()))
                .cloned()
                .collect();
            let keep = (mine.len() as f64 * (1.0 - plan.fraction)).round() as usize;
            deletion_order(&mut mine, w.kind == "StatefulSet");
            let drop = mine.len().saturating_sub(keep);
            for p in mine.iter().take(drop) {
                if let Some(uid) = p.metadata.uid.as_deref() {
                    self.cluster.delete_pod(uid);
                    deleted += 1;
                }
            }
            self.cluster
                .set_scale(&w.controller_uid, i32::try_from(keep).unwrap_or(i32::MAX));
        }
        self.deadline = after(now, plan.max_time);
        self.phase2 = Some(Phase2 {
            plan,
            began: now,
            wall: Instant::now(),
            claims_before: snap.nodeclaims.keys().cloned().collect(),
            counters_before: self.cluster.read(|s| s.counters.clone()),
            report: ScaleDownReport {
                pods_deleted: deleted,
                nodes_before: f.nodes,
                cost_per_hour_before: f.cost_per_hour,
                ..Default::default()
            },
            next_interruption: after(now, plan.first_interruption_after),
            interrupted: Vec::new(),
            last_activity: now,
            active_jobs: 0,
            recreated: 0,
            carried: ExecStats::default(),
        });
        if !self.quiet {
            let _ = writeln!(
                std::io::stderr(),
                "phase 2: deleted {deleted} pods ({:.0}% of each Deployment); consolidating under PDBs, {} spot interruptions to come",
                plan.fraction * 100.0,
                plan.interruptions
            );
        }
    }

    /// Injects the next spot interruption when it is due, on the spot node that is hardest on
    /// the budgets: the most pods under a PodDisruptionBudget, then the most workload pods (a
    /// node already being disrupted is skipped).
    pub(super) fn inject_interruptions(&mut self, now: jiff::Timestamp) {
        let Some(p2) = self.phase2.as_mut() else {
            return;
        };
        if p2.report.interruptions_injected >= p2.plan.interruptions || now < p2.next_interruption {
            return;
        }
        let snap = self.app.cluster.load();
        let budgets: Vec<_> = self.cluster.read(|s| s.pdbs.values().cloned().collect());
        let hit: HashSet<&str> = p2.interrupted.iter().map(|i| i.node.as_str()).collect();
        let target = snap
            .nodes
            .values()
            .filter(|n| n.labels.get(CAPACITY_TYPE).map(String::as_str) == Some("spot"))
            .filter(|n| {
                !n.has_taint(TAINT_DISRUPTED) && !n.deleting && !hit.contains(n.name.as_str())
            })
            .filter(|n| {
                n.nodeclaim()
                    .and_then(|c| snap.nodeclaims.get(c))
                    .is_some_and(|c| {
                        c.metadata.deletion_timestamp.is_none()
                            && c.is_condition_true(conditions::INITIALIZED)
                            && !c.is_condition_true(conditions::DISRUPTING)
                    })
            })
            .filter_map(|n| {
                let pods: Vec<&Arc<Pod>> = snap
                    .pods_by_node
                    .get(&n.name)?
                    .iter()
                    .filter(|p| evictable(p))
                    .collect();
                let covered = pods
                    .iter()
                    .filter(|p| budgets.iter().any(|b| crate::sim::pdb::covers(b, p)))
                    .count();
                let id = n
                    .provider_id
                    .as_deref()
                    .and_then(instance_id_from_provider_id)?;
                (!pods.is_empty()).then(|| ((covered, pods.len()), n.name.clone(), id.to_string()))
            })
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)));
        // No spot node with pods right now: try again next tick.
        let Some((_, node, instance_id)) = target else {
            return;
        };
        self.interruptions.push(InterruptionEvent {
            instance_id,
            kind: InterruptionKind::SpotInterruption,
        });
        p2.interrupted.push(Interrupted {
            node,
            at: now,
            drained_after: None,
        });
        p2.report.interruptions_injected += 1;
        p2.next_interruption = after(now, p2.plan.interruption_every);
        p2.last_activity = now;
    }

    /// Phase 2's part of a tick, after the provisioner: the disruption controller, then the
    /// owners of evicted pods re-creating them.
    pub(super) async fn disrupt(&mut self, now: jiff::Timestamp, bound: &[Binding]) {
        let Some(p2) = self.phase2.as_mut() else {
            return;
        };
        for b in bound {
            if let Some(c) = b.created {
                let waited = now.duration_since(c).as_secs_f64();
                p2.report.max_unscheduled_seconds = p2.report.max_unscheduled_seconds.max(waited);
            }
        }
        let r = self.disruption.tick(now).await;
        p2.report.decide_millis_max = p2.report.decide_millis_max.max(r.decide_millis);
        for d in &r.started {
            *p2.report
                .decisions
                .entry(d.reason.as_str().to_string())
                .or_default() += 1;
        }
        p2.active_jobs = r.active_jobs;
        if !r.started.is_empty() || r.active_jobs > 0 {
            p2.last_activity = now;
        }
        for pod in self.disruption.take_evicted() {
            p2.recreated += 1;
            self.cluster.add_pod(recreated(&pod, p2.recreated));
        }
        let snap = self.app.cluster.load();
        for i in p2
            .interrupted
            .iter_mut()
            .filter(|i| i.drained_after.is_none())
        {
            let left = snap
                .pods_by_node
                .get(&i.node)
                .map_or(0, |ps| ps.iter().filter(|p| evictable(p)).count());
            if left == 0 {
                i.drained_after = Some(now.duration_since(i.at).as_secs_f64());
            }
        }
    }
}

impl Phase2 {
    /// Keeps the counters of a disruption controller about to be replaced by a restart.
    pub(super) fn carry_stats(&mut self, stats: &ExecStats) {
        self.carried.launched += stats.launched;
        self.carried.failed += stats.failed;
    }

    /// Whether phase 2 is over: `settled` (nothing pending, every claim initialized), every
    /// interruption injected, no job running, and quiet for `plan.quiet`.
    pub(super) fn done(
        &mut self,
        settled: bool,
        snap: &ClusterSnapshot,
        now: jiff::Timestamp,
    ) -> bool {
        let busy = !settled
            || self.active_jobs > 0
            || self.report.interruptions_injected < self.plan.interruptions
            || snap
                .nodeclaims
                .values()
                .any(|c| c.metadata.deletion_timestamp.is_some());
        if busy {
            self.last_activity = now;
            return false;
        }
        let quiet = now.duration_since(self.last_activity).as_secs_f64();
        self.report.consolidated = quiet >= self.plan.quiet.as_secs_f64();
        self.report.consolidated
    }

    /// One progress line on stderr.
    pub(super) fn progress(&self, cluster: &SimCluster) {
        let c = cluster.read(|s| s.counters.clone());
        let decisions: usize = self.report.decisions.values().sum();
        let _ = writeln!(
            std::io::stderr(),
            "            phase 2: decisions {decisions:>3}  jobs {:>2}  evictions {:>4} (refused {:>3})  interruptions {}/{}  PDB violations {}",
            self.active_jobs,
            c.evictions - self.counters_before.evictions,
            c.evictions_blocked - self.counters_before.evictions_blocked,
            self.report.interruptions_injected,
            self.plan.interruptions,
            c.pdb_violations - self.counters_before.pdb_violations,
        );
    }

    /// The phase's figures, from the final state.
    pub(super) fn report(
        self,
        snap: &ClusterSnapshot,
        cluster: &Arc<SimCluster>,
        disruption: &Disruption,
        catalog: &Catalog,
        now: jiff::Timestamp,
    ) -> ScaleDownReport {
        let mut r = self.report;
        let f = Fleet::of(snap);
        r.nodes_after = f.nodes;
        r.cost_per_hour_after = f.cost_per_hour;
        r.cpu_utilization_after = f.cpu_utilization;
        r.memory_utilization_after = f.memory_utilization;
        r.nodes_by_type_after = f.nodes_by_type;
        let after: HashSet<&String> = snap.nodeclaims.keys().collect();
        r.nodes_removed = self
            .claims_before
            .iter()
            .filter(|c| !after.contains(c))
            .count();
        r.nodes_added = after
            .iter()
            .filter(|c| !self.claims_before.contains(c.as_str()))
            .count();
        let stats = disruption.executor().stats();
        r.replacements_launched = self.carried.launched + stats.launched;
        r.decisions_failed = self.carried.failed + stats.failed;
        let c = cluster.read(|s| s.counters.clone());
        let b = &self.counters_before;
        r.evictions = c.evictions - b.evictions;
        r.evictions_refused = c.evictions_blocked - b.evictions_blocked;
        r.pdb_violations = c.pdb_violations - b.pdb_violations;
        r.pods_removed_with_node = c.pods_removed_with_node - b.pods_removed_with_node;
        let pods = workload_pods(cluster);
        r.pods_total = pods.len();
        r.pods_bound = pods
            .iter()
            .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
            .count();
        // Pods still waiting at the end have waited at least this long.
        for p in pods
            .iter()
            .filter(|p| p.spec.as_ref().is_none_or(|s| s.node_name.is_none()))
        {
            if let Some(t) = &p.metadata.creation_timestamp {
                let waited = now.duration_since(t.0).as_secs_f64();
                r.max_unscheduled_seconds = r.max_unscheduled_seconds.max(waited);
            }
        }
        r.interruptions_handled = self
            .interrupted
            .iter()
            .filter(|i| i.drained_after.is_some())
            .count();
        r.interruption_drain_seconds_max = self
            .interrupted
            .iter()
            .map(|i| {
                i.drained_after
                    .unwrap_or_else(|| now.duration_since(i.at).as_secs_f64())
            })
            .fold(0.0, f64::max);
        let (pools, daemonsets) = cluster.read(|s| {
            (
                s.pools.values().cloned().collect::<Vec<_>>(),
                s.daemonsets.clone(),
            )
        });
        r.lower_bound_per_hour_after =
            super::lower_bound(pods.iter().map(|p| &**p), &pools, &daemonsets, catalog, now);
        r.simulated_seconds = now.duration_since(self.began).as_secs_f64();
        r.wall_seconds = self.wall.elapsed().as_secs_f64();
        r
    }
}

/// Renders phase 2's figures for people.
pub fn render(d: &ScaleDownReport) -> String {
    let mut s = String::new();
    s.push_str("\nphase 2: scale-down, consolidation, spot interruptions\n");
    s.push_str("-------------------------------------------------------\n");
    s.push_str(&format!(
        "deleted {} pods (Deployments scaled in); {} of {} workload pods bound at the end\n",
        d.pods_deleted, d.pods_bound, d.pods_total
    ));
    let ratio = super::cost_ratio(d.cost_per_hour_after, d.lower_bound_per_hour_after);
    s.push_str(&format!(
        "nodes: {} -> {}   removed {}, added {}   replacements launched: {}\n",
        d.nodes_before, d.nodes_after, d.nodes_removed, d.nodes_added, d.replacements_launched
    ));
    s.push_str(&format!(
        "cost: ${:.3}/h -> ${:.3}/h   lower bound after ${:.3}/h   ratio {:.3}\n",
        d.cost_per_hour_before, d.cost_per_hour_after, d.lower_bound_per_hour_after, ratio
    ));
    s.push_str(&format!(
        "utilisation after: cpu {:.1}%   memory {:.1}%\n",
        d.cpu_utilization_after * 100.0,
        d.memory_utilization_after * 100.0
    ));
    let decisions: Vec<String> = d
        .decisions
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    s.push_str(&format!(
        "decisions: {}   failed {}\n",
        if decisions.is_empty() {
            "none".to_string()
        } else {
            decisions.join(", ")
        },
        d.decisions_failed
    ));
    s.push_str(&format!(
        "evictions: {}   refused by PDBs (429): {}   PDB violations: {}   pods deleted with their node: {}\n",
        d.evictions, d.evictions_refused, d.pdb_violations, d.pods_removed_with_node
    ));
    s.push_str(&format!(
        "spot interruptions: {} injected, {} handled, drained within {:.0}s of the warning (AWS reclaims at 120s)\n",
        d.interruptions_injected, d.interruptions_handled, d.interruption_drain_seconds_max
    ));
    s.push_str(&format!(
        "longest unscheduled: {:.0}s   slowest decision {:.0} ms\n",
        d.max_unscheduled_seconds, d.decide_millis_max
    ));
    s.push_str(&format!(
        "{} after {:.0}s simulated in {:.1}s wall\n",
        if d.consolidated {
            "consolidated"
        } else {
            "stopped at the time limit, not yet consolidated,"
        },
        d.simulated_seconds,
        d.wall_seconds
    ));
    s
}

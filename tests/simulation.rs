//! Full-loop simulations: the provisioner and lifecycle controller `serve` runs, against the
//! simulated cluster and cloud, with the scheduler stand-in calling the real HTTPS extender.
//! Includes capacity failures and crash-restarts at the points that could leak or double-buy.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gantry::cloud::sim::{SimCloud, SimFault};
use gantry::cloud::{CloudError, CloudProvider, Instance};
use gantry::kube::crd::{EC2NodeClass, NodeClaim};
use gantry::model::{CapacityType, Catalog, OfferingKey};
use gantry::sim::demo::{DemoArgs, ScaleDown, Simulation};
use gantry::sim::scenario;

const SCENARIO: &str = r#"
apiVersion: gantry.dev/v1
kind: EC2NodeClass
metadata: {name: default}
spec: {}
---
apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {name: general}
spec:
  template:
    spec:
      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}
      requirements:
        - {key: karpenter.sh/capacity-type, operator: In, values: [spot, on-demand]}
        - {key: gantry.dev/instance-gpu-count, operator: In, values: ["0"]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: kube-system}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      tolerations: [{operator: Exists}]
      containers: [{name: a, image: a, resources: {requests: {cpu: 50m, memory: 64Mi}}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 90
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: web, resources: {requests: {cpu: 250m, memory: 512Mi}}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  replicas: 24
  template:
    metadata: {labels: {app: api}}
    spec:
      topologySpreadConstraints:
        - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: api}}}
      containers: [{name: api, image: api, resources: {requests: {cpu: 500m, memory: 1Gi}}}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: crunch, namespace: batch}
spec:
  parallelism: 20
  template:
    spec:
      containers: [{name: c, image: c, resources: {requests: {cpu: "2", memory: 4Gi}}}]
"#;

/// Budgets over the scenario's services: web loses at most 10% at once, api one pod at a time.
const BUDGETS: &str = r#"
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: shop}
spec:
  maxUnavailable: 10%
  selector: {matchLabels: {app: web}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: api, namespace: shop}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app: api}}
"#;

fn args() -> DemoArgs {
    DemoArgs {
        max_time: std::time::Duration::from_secs(1200),
        ..Default::default()
    }
}

async fn run_to_end(sim: &mut Simulation, mut each_tick: impl FnMut(&mut Simulation, usize)) {
    for tick in 0.. {
        each_tick(sim, tick);
        if sim.step().await || sim.now >= sim.deadline {
            break;
        }
        sim.advance();
    }
}

/// Instances ever launched per claim, terminated ones included (adoptions reuse one).
fn launches_per_claim(cloud: &SimCloud) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for i in cloud.instances() {
        *m.entry(i.nodeclaim.clone().unwrap_or_default())
            .or_default() += 1;
    }
    m
}

fn alive_per_claim(cloud: &SimCloud) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for i in cloud.instances().iter().filter(|i| i.state.is_alive()) {
        *m.entry(i.nodeclaim.clone().unwrap_or_default())
            .or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_binds_every_pod_on_right_sized_nodes() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let s = scenario::parse(SCENARIO).unwrap();
    let mut sim = Simulation::start(&s, &args(), None).await.unwrap();
    run_to_end(&mut sim, |_, _| {}).await;
    let cloud = sim.sim_cloud.clone();
    let r = sim.finish().await;
    assert_eq!(r.pods_bound, r.pods_total, "{r:?}");
    assert_eq!(r.leaked_instances, 0);
    assert_eq!(r.pods_bound_to_gated_nodes, 0);
    assert!(r.nodes > 0 && r.cost_per_hour > 0.0);
    assert!(r.cost_per_hour <= r.lower_bound_per_hour * 1.6, "{r:?}");
    assert!(r.cpu_utilization > 0.5, "{r:?}");
    assert!(launches_per_claim(&cloud).values().all(|n| *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_errors_fall_back_to_other_offerings() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let s = scenario::parse(SCENARIO).unwrap();
    let catalog = Catalog::embedded().unwrap();
    // Every spot offering of the small burstable types the packer likes is out of capacity.
    let wrap: gantry::sim::demo::CloudWrapper = Box::new(move |sim: Arc<SimCloud>| {
        for t in catalog.types.iter().filter(|t| t.vcpu <= 8) {
            for o in &t.offerings {
                if o.capacity_type == CapacityType::Spot {
                    let key = OfferingKey {
                        instance_type: t.name.clone(),
                        zone: o.zone.clone(),
                        capacity_type: CapacityType::Spot,
                    };
                    sim.inject(key, SimFault::Capacity, 1_000);
                }
            }
        }
        sim as Arc<dyn CloudProvider>
    });
    let mut sim = Simulation::start(&s, &args(), Some(wrap)).await.unwrap();
    let cloud = sim.sim_cloud.clone();
    // A few ticks in, the first round's launches have met the injected errors and backed those
    // offerings off (for a minute at first, so look before it expires).
    for _ in 0..5 {
        sim.step().await;
        sim.advance();
    }
    let backed_off = cloud.backoff().backed_off(cloud.now().into_std());
    assert!(
        !backed_off.is_empty(),
        "no launch ever hit the injected capacity errors"
    );
    assert!(
        backed_off
            .iter()
            .all(|k| k.capacity_type == CapacityType::Spot)
    );
    run_to_end(&mut sim, |_, _| {}).await;
    let r = sim.finish().await;
    assert_eq!(r.pods_bound, r.pods_total, "{r:?}");
    assert_eq!(r.leaked_instances, 0);
    let fell_back = r.nodes_by_type.keys().all(|k| {
        let ty = k.split('/').next().unwrap();
        let small = Catalog::embedded().unwrap().get(ty).unwrap().vcpu <= 8;
        !(small && k.ends_with("/spot"))
    });
    assert!(
        fell_back,
        "launched into an offering with no capacity: {:?}",
        r.nodes_by_type
    );
}

/// A cloud whose answers get lost: sometimes before the call reaches the cloud (the claim is
/// persisted but nothing launched), sometimes after (launched but never recorded). Both are what a
/// crash at those points leaves behind.
struct LossyCloud {
    inner: Arc<SimCloud>,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl CloudProvider for LossyCloud {
    async fn create(
        &self,
        claim: &NodeClaim,
        class: &EC2NodeClass,
    ) -> Result<Instance, CloudError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        match n % 3 {
            0 => Err(CloudError::Other(
                "connection reset before the request was sent".into(),
            )),
            1 => {
                self.inner.create(claim, class).await?;
                Err(CloudError::Other(
                    "connection reset before the reply arrived".into(),
                ))
            }
            _ => self.inner.create(claim, class).await,
        }
    }
    async fn delete(&self, provider_id: &str) -> Result<(), CloudError> {
        self.inner.delete(provider_id).await
    }
    async fn get(&self, provider_id: &str) -> Result<Instance, CloudError> {
        self.inner.get(provider_id).await
    }
    async fn list(&self) -> Result<Vec<Instance>, CloudError> {
        self.inner.list().await
    }
    async fn catalog(&self) -> Result<Arc<Catalog>, CloudError> {
        self.inner.catalog().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_never_double_buy_or_leak() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let s = scenario::parse(SCENARIO).unwrap();
    let wrap: gantry::sim::demo::CloudWrapper = Box::new(|sim: Arc<SimCloud>| {
        Arc::new(LossyCloud {
            inner: sim,
            calls: AtomicUsize::new(0),
        }) as Arc<dyn CloudProvider>
    });
    let mut sim = Simulation::start(&s, &args(), Some(wrap)).await.unwrap();
    let mut restarts = 0;
    // Restart the controllers every few ticks for the first minutes: every in-memory record of
    // launches, batches and GC sightings is lost, only the persisted objects remain.
    let mut ticks = 0;
    run_to_end(&mut sim, |sim, tick| {
        ticks = tick;
        if tick > 0 && tick < 180 && tick % 5 == 0 {
            sim.restart_controllers();
            restarts += 1;
        }
    })
    .await;
    let cloud = sim.sim_cloud.clone();
    let claims = sim.cluster.nodeclaims();
    let snap = sim.state().load();
    let mut stuck = Vec::new();
    for (uid, p) in &snap.pending {
        let owner = claims.iter().find(|c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.reserved_pods.iter().any(|r| &r.uid == uid))
        });
        stuck.push(format!(
            "{} reserved on {:?} (node {:?}, initialized {:?}) msg {:?}",
            p.metadata.name.clone().unwrap_or_default(),
            owner.and_then(|c| c.metadata.name.clone()),
            owner.and_then(|c| c.status.as_ref().and_then(|s| s.node_name.clone())),
            owner.map(|c| c.is_condition_true("Initialized")),
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.message.clone()),
        ));
    }
    let r = sim.finish().await;
    assert!(stuck.is_empty(), "stuck: {stuck:#?}");
    assert!(restarts > 10, "{restarts} restarts in {ticks} ticks");
    assert_eq!(r.pods_bound, r.pods_total, "{r:?}");
    assert_eq!(r.leaked_instances, 0, "{r:?}");
    assert_eq!(r.pods_bound_to_gated_nodes, 0);
    for (claim, n) in launches_per_claim(&cloud) {
        assert_eq!(n, 1, "nodeclaim {claim} got {n} instances");
    }
    for (claim, n) in alive_per_claim(&cloud) {
        assert_eq!(n, 1, "nodeclaim {claim} has {n} live instances");
        assert!(
            claims
                .iter()
                .any(|c| c.metadata.name.as_deref() == Some(claim.as_str())),
            "live instance for unknown claim {claim}"
        );
    }
}

/// Phase 2 of the demo on the small scenario: the Deployments lose 70% of their pods, three spot
/// nodes get interruption warnings, and the disruption controller consolidates under the PDBs.
/// Violations are counted by the simulated API server at every pod removal, apart from the
/// executor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_consolidates_under_pdbs_through_spot_interruptions() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let s = scenario::parse(&format!("{SCENARIO}{BUDGETS}")).unwrap();
    assert_eq!(s.pdbs.len(), 2);
    let mut sim = Simulation::start(&s, &args(), None).await.unwrap();
    run_to_end(&mut sim, |_, _| {}).await;
    assert!(
        sim.state().load().pending.is_empty(),
        "the burst never settled"
    );
    sim.begin_scale_down(
        &s,
        ScaleDown {
            max_time: std::time::Duration::from_secs(1800),
            ..Default::default()
        },
    );
    let budget_floor = |sim: &Simulation| {
        ["shop/web", "shop/api"]
            .map(|k| sim.cluster.pdb_status(k).unwrap())
            .into_iter()
            .all(|st| st.disruptions_allowed >= 0)
    };
    sim.advance();
    run_to_end(&mut sim, |sim, _| assert!(budget_floor(sim))).await;
    let cloud = sim.sim_cloud.clone();
    let r = sim.finish().await;
    let d = r.scale_down.clone().expect("phase 2 ran");
    assert_eq!(d.pdb_violations, 0, "{d:#?}");
    assert_eq!(d.pods_removed_with_node, 0, "a drain was forced: {d:#?}");
    assert!(d.consolidated, "{d:#?}");
    assert!(d.nodes_removed > 0, "{d:#?}");
    assert!(d.cost_per_hour_after < d.cost_per_hour_before, "{d:#?}");
    assert_eq!(d.pods_bound, d.pods_total, "{d:#?}");
    assert_eq!(d.pods_deleted, 63 + 17, "70% of web (90) and api (24)");
    assert_eq!((d.interruptions_injected, d.interruptions_handled), (3, 3));
    assert!(d.evictions > 0, "{d:#?}");
    assert_eq!(d.decisions_failed, 0, "{d:#?}");
    assert_eq!(r.leaked_instances, 0, "{r:#?}");
    assert_eq!(r.pods_bound_to_gated_nodes, 0);
    // Every live instance belongs to a NodeClaim, one each.
    for (claim, n) in alive_per_claim(&cloud) {
        assert_eq!(n, 1, "nodeclaim {claim} has {n} live instances");
    }
}

/// The violation count does not trust the executor: with a budget that allows nothing and a
/// pool whose `terminationGracePeriod` forces drains after 1 s, an interrupted node's pods go
/// with it, and the simulated API server counts each healthy one as a violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_drains_past_a_budget_are_counted_as_violations() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let strict = r#"
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: shop}
spec:
  minAvailable: 100%
  selector: {matchLabels: {app: web}}
"#;
    let text = format!("{SCENARIO}{strict}").replace(
        "      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}\n",
        "      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}\n      terminationGracePeriod: 1s\n",
    );
    let s = scenario::parse(&text).unwrap();
    assert_eq!(
        s.nodepools[0]
            .spec
            .template
            .spec
            .termination_grace_period
            .as_deref(),
        Some("1s")
    );
    let mut sim = Simulation::start(&s, &args(), None).await.unwrap();
    run_to_end(&mut sim, |_, _| {}).await;
    sim.begin_scale_down(
        &s,
        ScaleDown {
            interruptions: 1,
            max_time: std::time::Duration::from_secs(300),
            ..Default::default()
        },
    );
    sim.advance();
    run_to_end(&mut sim, |_, _| {}).await;
    let r = sim.finish().await;
    let d = r.scale_down.expect("phase 2 ran");
    assert_eq!(d.interruptions_handled, 1, "{d:#?}");
    assert!(d.pods_removed_with_node > 0, "{d:#?}");
    assert!(d.pdb_violations > 0, "{d:#?}");
    assert!(d.evictions_refused > 0, "{d:#?}");
}

/// Crash-restarts during phase 2: every restart loses the disruption executor's jobs, which live
/// in memory. The new controller must resume interrupted drains and restore nodes a lost job left
/// tainted, so the end state matches a run without restarts: consolidated, no node left
/// `gantry.dev/disrupted`, no PDB violation, no leak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_during_scale_down_resume_or_restore_lost_jobs() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let s = scenario::parse(&format!("{SCENARIO}{BUDGETS}")).unwrap();
    let mut sim = Simulation::start(&s, &args(), None).await.unwrap();
    run_to_end(&mut sim, |_, _| {}).await;
    sim.begin_scale_down(&s, ScaleDown::default());
    sim.advance();
    let mut restarts = 0;
    run_to_end(&mut sim, |sim, tick| {
        if tick % 13 == 5 && tick < 400 {
            sim.restart_controllers();
            restarts += 1;
        }
    })
    .await;
    let snap = sim.state().load();
    let tainted: Vec<String> = snap
        .nodes
        .values()
        .filter(|n| n.has_taint("gantry.dev/disrupted"))
        .map(|n| n.name.clone())
        .collect();
    let r = sim.finish().await;
    let d = r.scale_down.clone().expect("phase 2 ran");
    assert!(restarts > 20);
    assert!(tainted.is_empty(), "left disrupting: {tainted:?}");
    assert!(d.consolidated, "{d:#?}");
    assert_eq!(d.pdb_violations, 0, "{d:#?}");
    assert_eq!(d.interruptions_handled, 3, "{d:#?}");
    assert!(
        d.interruption_drain_seconds_max < 120.0,
        "an interrupted node outlived its warning: {d:#?}"
    );
    assert!(d.cost_per_hour_after < d.cost_per_hour_before, "{d:#?}");
    assert_eq!(d.pods_bound, d.pods_total, "{d:#?}");
    assert_eq!(r.leaked_instances, 0, "{r:#?}");
    assert_eq!(r.pods_bound_to_gated_nodes, 0);
}

//! Consolidation decision latency over 1,000 nodes and 20,000 pods (goal ≤ 1 s): 900 busy
//! m5.4xlarge nodes with 22 pods each and 100 underused ones with 2 pods each, one pool with the
//! default 10% budget, so multi-node consolidation searches the full 100-candidate window; and
//! the worst case, 1,000 nodes with 20 pods each where nothing can go, so every multi-node probe
//! and 50 single-node what-ifs run and fail.
//!
//! `CARGO_TARGET_DIR=/root/.cache/gantry-release cargo bench --bench disruption`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;
use gantry::disruption::decide::{DecideConfig, DecideInput, NodeFacts, PoolPolicy, decide};
use gantry::model::labels::{INSTANCE_TYPE, ZONE};
use gantry::model::{Catalog, NodePoolView, PodDemand, Resources};
use gantry::plan::{NodeView, PodView};

const GI: i64 = 1 << 30;

fn cluster(catalog: &Catalog, underused: bool) -> Vec<NodeFacts> {
    // INVARIANT: the embedded catalog has m5.4xlarge; a bench may panic at start-up.
    #[allow(clippy::expect_used)]
    let ty = catalog
        .get("m5.4xlarge")
        .expect("m5.4xlarge in the catalog");
    let t0: jiff::Timestamp = jiff::Timestamp::UNIX_EPOCH;
    (0..1000)
        .map(|i| {
            let count = if underused && i % 10 == 0 {
                2
            } else {
                20 + (i % 3)
            };
            let zone = ["us-east-1a", "us-east-1b", "us-east-1c"][i % 3];
            let pods: Vec<PodDemand> = (0..count)
                .map(|j| {
                    let mut d = PodDemand::simple(
                        "default",
                        &format!("web-{i}-{j}"),
                        Resources::cpu_mem(600, 2 * GI),
                    );
                    d.labels
                        .insert("app".into(), format!("app-{}", (i * 31 + j) % 200));
                    d
                })
                .collect();
            let mut requested = Resources::default();
            for p in &pods {
                requested.add(&p.requests);
            }
            let mut labels = BTreeMap::new();
            labels.insert(INSTANCE_TYPE.to_string(), ty.name.clone());
            labels.insert(ZONE.to_string(), zone.to_string());
            NodeFacts {
                view: NodeView {
                    name: format!("node-{i:04}"),
                    pool: Some("default".into()),
                    labels,
                    taints: Vec::new(),
                    allocatable: ty.allocatable(None),
                    requested,
                    pods: pods
                        .iter()
                        .map(|p| PodView {
                            namespace: p.namespace.clone(),
                            labels: p.labels.clone(),
                            host_ports: Vec::new(),
                        })
                        .collect(),
                },
                claim: Some(format!("default-{i:04}")),
                price: 0.768,
                pods,
                do_not_disrupt: false,
                disrupting: false,
                initialized: true,
                since: t0,
                expires_at: None,
            }
        })
        .collect()
}

fn main() {
    // INVARIANT: the embedded catalog is compiled in; a bench may panic at start-up.
    #[allow(clippy::expect_used)]
    let catalog = Catalog::embedded().expect("embedded catalog");
    let nodes = cluster(&catalog, true);
    let busy = cluster(&catalog, false);
    let pools = vec![NodePoolView::default_pool()];
    let policies = vec![PoolPolicy::new("default")];
    let now = jiff::Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_hours(1);
    let input = DecideInput {
        nodes: &nodes,
        policies: &policies,
        pools: &pools,
        catalog: &catalog,
        config: DecideConfig::default(),
        now,
    };
    let started = Instant::now();
    let decisions = decide(&input);
    let took = started.elapsed();
    for d in &decisions {
        println!(
            "decision: {:?} nodes={} savings=${:.2}/h pods={} — {}",
            d.reason,
            d.command.nodes().len(),
            d.savings,
            d.pods,
            d.message.chars().take(120).collect::<String>()
        );
    }
    println!(
        "one decision over {} nodes / {} pods: {:.1} ms",
        nodes.len(),
        nodes.iter().map(|n| n.pods.len()).sum::<usize>(),
        took.as_secs_f64() * 1000.0
    );
    // Worst case: nothing can go, so every multi-node probe and 50 single-node what-ifs fail.
    let busy_input = DecideInput {
        nodes: &busy,
        ..input
    };
    let started = Instant::now();
    let none = decide(&busy_input);
    println!(
        "no-op decision over {} busy nodes / {} pods: {:.1} ms ({} decisions)",
        busy.len(),
        busy.iter().map(|n| n.pods.len()).sum::<usize>(),
        started.elapsed().as_secs_f64() * 1000.0,
        none.len()
    );
    let mut c = Criterion::default().sample_size(10).configure_from_args();
    c.bench_function("disruption/decide_1000_nodes_20000_pods", |b| {
        b.iter(|| black_box(decide(black_box(&input))))
    });
    c.bench_function("disruption/decide_1000_busy_nodes_noop", |b| {
        b.iter(|| black_box(decide(black_box(&busy_input))))
    });
    c.final_summary();
}

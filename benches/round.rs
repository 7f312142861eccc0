//! One provisioning round at scale: 10,000 pending pods and 1,000 existing nodes, from a cluster
//! snapshot to a plan (snapshot → planner input → plan), as the provisioner runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark harness: a panic is a failed run

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use gantry::kube::views::{node_view, pod_view};
use gantry::model::Catalog;
use gantry::plan::PlanInput;
use gantry::provision::input;
use gantry::sim::scenario;
use gantry::state::ClusterIndex;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;

const PENDING: usize = 10_000;
const NODES: usize = 1_000;

fn node(i: usize, catalog: &Catalog) -> Node {
    let types = ["m5.xlarge", "c6g.2xlarge", "r6i.large", "m7i.2xlarge"];
    let t = catalog.get(types[i % types.len()]).unwrap();
    let alloc = t.allocatable(None).to_map();
    serde_json::from_value(json!({
        "metadata": {"name": format!("node-{i:04}"), "labels": {
            "gantry.dev/nodepool": "general",
            "node.kubernetes.io/instance-type": t.name,
            "topology.kubernetes.io/zone": format!("us-east-1{}", ["a","b","c","d","f"][i % 5]),
            "kubernetes.io/arch": t.arch.as_str(),
            "gantry.dev/capacity-type": "spot"}},
        "spec": {"providerID": format!("aws:///us-east-1a/i-{i:08x}")},
        "status": {"allocatable": alloc, "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let catalog = Catalog::embedded().unwrap();
    let s = scenario::parse(scenario::BUILTIN).unwrap();
    let mut idx = ClusterIndex::new();
    for p in &s.nodepools {
        // The built-in pools' limits would stop a 1,000-node cluster from growing.
        let mut p = p.clone();
        p.spec.limits.clear();
        idx.apply_nodepool(p);
    }
    for cl in &s.nodeclasses {
        idx.apply_nodeclass(cl.clone());
    }
    for d in &s.daemonsets {
        idx.apply_daemonset(d.clone());
    }
    for i in 0..NODES {
        idx.apply_node(node_view(&node(i, &catalog)));
    }
    // Existing nodes are two-thirds full of running pods.
    let pods: Vec<Pod> = s.pods().collect();
    let template = &pods[0];
    for i in 0..NODES * 8 {
        let mut p: Pod = template.clone();
        p.metadata.uid = Some(format!("run-{i}"));
        p.metadata.name = Some(format!("run-{i}"));
        p.spec.as_mut().unwrap().node_name = Some(format!("node-{:04}", i % NODES));
        p.status = Some(serde_json::from_value(json!({"phase": "Running"})).unwrap());
        idx.apply_pod_object(pod_view(&p), Arc::new(p));
    }
    // 10,000 pending pods cycling through the built-in scenario's workloads.
    let mut pending = Vec::with_capacity(PENDING);
    for i in 0..PENDING {
        let mut p: Pod = pods[i % pods.len()].clone();
        let uid = format!("pend-{i}");
        p.metadata.uid = Some(uid.clone());
        p.metadata.name = Some(format!("pend-{i}"));
        idx.apply_pod_object(pod_view(&p), Arc::new(p));
        pending.push(uid);
    }
    idx.set_nodes_synced();
    idx.set_pods_synced();
    let snapshot = idx.snapshot();

    let round = |snapshot: &gantry::state::ClusterSnapshot| {
        let r = input::build(snapshot, &pending, &catalog);
        let plan = gantry::plan::plan(&PlanInput {
            pods: &r.pods,
            pools: &r.pools,
            catalog: &catalog,
            nodes: &r.nodes,
            in_flight: &r.in_flight,
            now: jiff::Timestamp::UNIX_EPOCH,
        });
        (r.pods.len(), plan)
    };
    let t = Instant::now();
    let (n, plan) = round(&snapshot);
    println!(
        "round: {n} pending pods, {NODES} nodes -> {} placed on existing nodes, {} new claims, {} unschedulable in {:.1} ms",
        plan.placements.len(),
        plan.claims.len(),
        plan.unschedulable.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let mut g = c.benchmark_group("provisioning");
    g.sample_size(10);
    g.bench_function("round/10000 pending/1000 nodes", |b| {
        b.iter(|| black_box(round(&snapshot)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

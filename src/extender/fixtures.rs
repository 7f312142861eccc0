//! Synthetic clusters and scheduler requests, shared by the extender benchmark, the HTTPS load
//! generator and tests, so every figure is measured on the same shapes.

use serde_json::json;

use crate::model::labels::{TAINT_DISRUPTED, TAINT_INITIALIZING};
use crate::model::{Effect, Resources, Taint};
use crate::state::{ClusterIndex, ClusterSnapshot, NodeView};

/// A small deterministic generator (SplitMix64), so fixtures need no RNG crate.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A synced snapshot of `n` nodes (`node-00000`…): varied room, 2% gated, 1% being disrupted,
/// and every tenth node holding a reservation.
pub fn synthetic_cluster(n: usize, seed: u64) -> ClusterSnapshot {
    let mut rng = SplitMix(seed);
    let mut idx = ClusterIndex::new();
    for i in 0..n {
        let cpu = [2000, 4000, 8000, 16000][rng.below(4) as usize];
        let mut node = NodeView {
            name: format!("node-{i:05}"),
            allocatable: Resources::cpu_mem(cpu, cpu * 4 * (1 << 20)),
            requested: Resources::cpu_mem(
                (rng.below(90) as i64) * cpu / 100,
                (rng.below(90) as i64) * cpu * 4 * (1 << 20) / 100,
            ),
            ready: true,
            ..Default::default()
        };
        match rng.below(100) {
            0 | 1 => node
                .taints
                .push(Taint::new(TAINT_INITIALIZING, "true", Effect::NoSchedule)),
            2 => node
                .taints
                .push(Taint::new(TAINT_DISRUPTED, "true", Effect::NoSchedule)),
            _ => {}
        }
        idx.apply_node(node);
    }
    idx.set_nodes_synced();
    idx.set_pods_synced();
    idx.snapshot()
}

/// A cache-mode `ExtenderArgs` body for a typical web pod and `names` candidate nodes drawn from
/// a cluster of `cluster_size` (the scheduler samples 10% of 5,000 nodes, i.e. 500).
pub fn filter_request(cluster_size: usize, names: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix(seed);
    let picked: Vec<String> = (0..names)
        .map(|_| format!("node-{:05}", rng.below(cluster_size as u64)))
        .collect();
    let body = json!({
        "Pod": {
            "metadata": {
                "name": format!("web-7d4b9c8f6-{seed:05}"),
                "namespace": "default",
                "uid": format!("3f0c2f1e-6a43-4f4b-9d4e-{seed:012}"),
                "labels": {"app": "web", "pod-template-hash": "7d4b9c8f6"}
            },
            "spec": {
                "containers": [{
                    "name": "web", "image": "nginx:1.27",
                    "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}
                }],
                "schedulerName": "gantry",
                "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                 "effect": "NoExecute", "tolerationSeconds": 300}]
            },
            "status": {"phase": "Pending"}
        },
        "Nodes": null,
        "NodeNames": picked
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

//! Pure filter and prioritize decisions over plain node views.
//!
//! # Guarantees
//! Every decision is a function of the pod facts and the node views alone: no I/O, no clock.

use crate::model::Resources;
use crate::model::labels::{TAINT_DISRUPTED, TAINT_INITIALIZING, TAINT_UNREGISTERED};
use crate::state::NodeView;

/// Reasons are short and fixed, so kube-scheduler's event text groups them (`0/N nodes are
/// available: 3 node is still initializing`).
pub mod reasons {
    /// The node carries `gantry.dev/disrupted`.
    pub const DISRUPTED: &str = "node is being disrupted by gantry";
    /// The node carries `gantry.dev/initializing`.
    pub const INITIALIZING: &str = "node is still initializing";
    /// The node carries `gantry.dev/unregistered`.
    pub const UNREGISTERED: &str = "node is not registered yet";
    /// The node has a deletion timestamp.
    pub const DELETING: &str = "node is being deleted";
    /// Taking the pod would eat room held for other pending pods.
    pub const RESERVED: &str = "room on node is reserved for other pending pods";
}

/// What the decisions need to know about the pod being scheduled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodFacts {
    /// Pod UID, to recognise its own reservation.
    pub uid: String,
    /// Effective requests.
    pub requests: Resources,
}

/// Whether a node may take the pod: `None` to pass, or the reason it may not.
///
/// A node missing from the cache is passed by the caller (Gantry has no opinion on it).
pub fn filter_node(pod: &PodFacts, node: &NodeView) -> Option<&'static str> {
    if node.deleting {
        return Some(reasons::DELETING);
    }
    // One pass over the taints (this runs for every candidate of every call); the most
    // telling reason wins when several gating taints are present.
    let mut gate: Option<(u8, &'static str)> = None;
    for t in &node.taints {
        let hit = match t.key.as_str() {
            TAINT_DISRUPTED => (0, reasons::DISRUPTED),
            TAINT_UNREGISTERED => (1, reasons::UNREGISTERED),
            TAINT_INITIALIZING => (2, reasons::INITIALIZING),
            _ => continue,
        };
        if gate.is_none_or(|g| hit.0 < g.0) {
            gate = Some(hit);
        }
    }
    if let Some((_, reason)) = gate {
        return Some(reason);
    }
    if !node.reserved_pods.is_empty() && !node.reserved_pods.contains(&pod.uid) {
        let held = node.requested.plus(&node.reserved);
        if !held.fits_with(&pod.requests, &node.allocatable) {
            return Some(reasons::RESERVED);
        }
    }
    None
}

/// The score of the node reserved for the pod.
pub const RESERVED_SCORE: i64 = 10;

/// The highest packing score. Kept well below [`RESERVED_SCORE`] so that, at the extender weight
/// the README derives (20), a reservation outweighs every in-tree score (1200 points at most):
/// (10 − 3) × 20 × 10 = 1400 > 1200; while packing alone moves at most 3 × 20 × 10 = 600 points.
pub const PACKING_MAX: i64 = 3;

/// A 0–10 score: [`RESERVED_SCORE`] for the node reserved for this pod, otherwise packing.
///
/// Packing uses the larger of the CPU and memory fractions requested after placing the pod, so
/// pods gather on busy nodes and consolidation finds empty ones. Unknown nodes score 0.
pub fn score_node(pod: &PodFacts, node: Option<&NodeView>) -> i64 {
    let Some(node) = node else { return 0 };
    if node.reserved_pods.contains(&pod.uid) {
        return RESERVED_SCORE;
    }
    if !node.requested.fits_with(&pod.requests, &node.allocatable) {
        return 0;
    }
    let a = &node.allocatable;
    let frac = |used: i64, add: i64, cap: i64| {
        if cap > 0 {
            (used + add) as f64 / cap as f64
        } else {
            0.0
        }
    };
    let share = frac(node.requested.cpu, pod.requests.cpu, a.cpu)
        .max(frac(node.requested.memory, pod.requests.memory, a.memory))
        .clamp(0.0, 1.0);
    ((share * PACKING_MAX as f64).round() as i64).clamp(0, PACKING_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Effect, Taint};

    fn node(name: &str) -> NodeView {
        NodeView {
            name: name.into(),
            allocatable: Resources::cpu_mem(4000, 16 << 30),
            ready: true,
            ..Default::default()
        }
    }

    fn pod(uid: &str, cpu: i64) -> PodFacts {
        PodFacts {
            uid: uid.into(),
            requests: Resources::cpu_mem(cpu, 1 << 30),
        }
    }

    #[test]
    fn filter_table() {
        let p = pod("p", 500);
        let tainted = |key: &str| {
            let mut n = node("n");
            n.taints.push(Taint::new(key, "true", Effect::NoSchedule));
            n
        };
        assert_eq!(filter_node(&p, &node("n")), None);
        assert_eq!(
            filter_node(&p, &tainted(TAINT_DISRUPTED)),
            Some(reasons::DISRUPTED)
        );
        assert_eq!(
            filter_node(&p, &tainted(TAINT_INITIALIZING)),
            Some(reasons::INITIALIZING)
        );
        assert_eq!(
            filter_node(&p, &tainted(TAINT_UNREGISTERED)),
            Some(reasons::UNREGISTERED)
        );
        assert_eq!(filter_node(&p, &tainted("other")), None);
        let mut deleting = node("n");
        deleting.deleting = true;
        assert_eq!(filter_node(&p, &deleting), Some(reasons::DELETING));
    }

    #[test]
    fn reservations_hold_room_for_their_pods_only() {
        let mut n = node("n");
        n.reserved = Resources::cpu_mem(3800, 1 << 30);
        n.reserved_pods = vec!["r".into()];
        assert_eq!(filter_node(&pod("other", 500), &n), Some(reasons::RESERVED));
        assert_eq!(filter_node(&pod("other", 100), &n), None);
        assert_eq!(filter_node(&pod("r", 3800), &n), None);
        assert_eq!(score_node(&pod("r", 3800), Some(&n)), 10);
    }

    #[test]
    fn scores_pack_and_unknown_is_zero() {
        let mut busy = node("busy");
        busy.requested = Resources::cpu_mem(3000, 1 << 30);
        let idle = node("idle");
        let p = pod("p", 500);
        let (b, i) = (score_node(&p, Some(&busy)), score_node(&p, Some(&idle)));
        assert!(b > i, "{b} > {i}");
        assert!((0..=10).contains(&b) && (0..=10).contains(&i));
        assert_eq!(score_node(&p, None), 0);
        let mut full = node("full");
        full.requested = Resources::cpu_mem(3900, 0);
        assert_eq!(score_node(&p, Some(&full)), 0);
    }
}

//! Label, taint and annotation names Gantry puts on nodes and reads from pods (DESIGN.md §4).

/// The API group of Gantry's CRDs, labels and annotations.
pub const GROUP: &str = "gantry.dev";

/// Owning NodePool.
pub const NODEPOOL: &str = "gantry.dev/nodepool";
/// Owning NodeClaim.
pub const NODECLAIM: &str = "gantry.dev/nodeclaim";
/// `spot` or `on-demand`.
pub const CAPACITY_TYPE: &str = "gantry.dev/capacity-type";
/// Instance family, e.g. `m7i`.
pub const INSTANCE_FAMILY: &str = "gantry.dev/instance-family";
/// Instance size, e.g. `large`.
pub const INSTANCE_SIZE: &str = "gantry.dev/instance-size";
/// vCPU count.
pub const INSTANCE_CPU: &str = "gantry.dev/instance-cpu";
/// Memory in MiB.
pub const INSTANCE_MEMORY: &str = "gantry.dev/instance-memory";
/// GPU count.
pub const INSTANCE_GPU_COUNT: &str = "gantry.dev/instance-gpu-count";

/// Well-known instance type label.
pub const INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
/// Well-known zone label.
pub const ZONE: &str = "topology.kubernetes.io/zone";
/// Well-known region label.
pub const REGION: &str = "topology.kubernetes.io/region";
/// Well-known architecture label.
pub const ARCH: &str = "kubernetes.io/arch";
/// Well-known OS label.
pub const OS: &str = "kubernetes.io/os";
/// Well-known hostname label.
pub const HOSTNAME: &str = "kubernetes.io/hostname";

/// Taint the kubelet registers with; removed once Gantry links the Node to its NodeClaim.
pub const TAINT_UNREGISTERED: &str = "gantry.dev/unregistered";
/// The startup gate: removed only when the node is really ready for pods.
pub const TAINT_INITIALIZING: &str = "gantry.dev/initializing";
/// Put on before a node is drained.
pub const TAINT_DISRUPTED: &str = "gantry.dev/disrupted";

/// Pod annotation that blocks voluntary disruption of its node.
pub const DO_NOT_DISRUPT: &str = "gantry.dev/do-not-disrupt";
/// Namespace label that opts every pod in the namespace into Gantry.
pub const MANAGED_NAMESPACE: &str = "gantry.dev/managed";
/// The scheduler profile name Gantry's extender is attached to.
pub const SCHEDULER_NAME: &str = "gantry";
/// Finalizer that makes NodeClaim deletion terminate the instance first.
pub const TERMINATION_FINALIZER: &str = "gantry.dev/termination";

/// Karpenter's label keys and the Gantry keys they alias, so Karpenter YAML moves over unchanged.
pub const KARPENTER_ALIASES: [(&str, &str); 9] = [
    ("karpenter.sh/capacity-type", CAPACITY_TYPE),
    ("karpenter.sh/nodepool", NODEPOOL),
    ("karpenter.k8s.aws/instance-family", INSTANCE_FAMILY),
    ("karpenter.k8s.aws/instance-size", INSTANCE_SIZE),
    ("karpenter.k8s.aws/instance-cpu", INSTANCE_CPU),
    ("karpenter.k8s.aws/instance-memory", INSTANCE_MEMORY),
    ("karpenter.k8s.aws/instance-gpu-count", INSTANCE_GPU_COUNT),
    ("karpenter.sh/do-not-disrupt", DO_NOT_DISRUPT),
    ("node.kubernetes.io/instance-type", INSTANCE_TYPE),
];

/// Maps a Karpenter key to its Gantry equivalent; other keys pass through unchanged.
pub fn canonical_key(key: &str) -> &str {
    KARPENTER_ALIASES
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(key, |(_, g)| g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_map_to_gantry_keys() {
        assert_eq!(canonical_key("karpenter.sh/capacity-type"), CAPACITY_TYPE);
        assert_eq!(
            canonical_key("karpenter.k8s.aws/instance-family"),
            INSTANCE_FAMILY
        );
        assert_eq!(canonical_key("topology.kubernetes.io/zone"), ZONE);
    }
}

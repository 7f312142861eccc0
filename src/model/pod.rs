//! `PodDemand`: everything the planner and the extender need from a pod, derived once.
//!
//! Deriving it is the only place Kubernetes pod types are read; after that, decisions work on this
//! plain value, and identical pods (replicas of one template) share a [`PodDemand::group_key`].

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::{
    Container, NodeSelectorRequirement, Pod, PodAffinityTerm, PodSpec, Toleration as K8sToleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::labels::{HOSTNAME, ZONE};
use super::requirements::{PodSelector, Requirement, RequirementError, Requirements, Terms};
use super::resources::{ResourceError, Resources};
use super::taints::{Effect, Toleration, TolerationOperator};

/// Why a pod could not be turned into a demand; names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PodError {
    /// A request or overhead quantity does not parse.
    #[error("{field}")]
    Quantity {
        /// Where, e.g. `containers[app].resources.requests`.
        field: String,
        /// The bad resource.
        #[source]
        source: ResourceError,
    },
    /// A node-affinity or selector expression is invalid.
    #[error("{field}")]
    Requirement {
        /// Where, e.g. `affinity.nodeAffinity`.
        field: String,
        /// The bad expression.
        #[source]
        source: RequirementError,
    },
    /// A toleration has an unknown operator or effect.
    #[error("tolerations: bad {what} {value:?}")]
    Toleration {
        /// `operator` or `effect`.
        what: &'static str,
        /// The text found.
        value: String,
    },
    /// The pod has no spec.
    #[error("pod has no spec")]
    NoSpec,
}

/// Which topology domain a constraint spreads or groups over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TopologyKey {
    /// `topology.kubernetes.io/zone`.
    Zone,
    /// `kubernetes.io/hostname`.
    Hostname,
}

impl TopologyKey {
    /// Maps a topology key; `None` for keys the planner does not model.
    pub fn parse(key: &str) -> Option<TopologyKey> {
        match key {
            ZONE | "failure-domain.beta.kubernetes.io/zone" => Some(TopologyKey::Zone),
            HOSTNAME => Some(TopologyKey::Hostname),
            _ => None,
        }
    }
}

/// One `topologySpreadConstraint` on zone or hostname.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TopologySpread {
    /// Zone or hostname.
    pub key: TopologyKey,
    /// Largest allowed difference between domains.
    pub max_skew: u32,
    /// `DoNotSchedule` (true) is hard; `ScheduleAnyway` is a preference.
    pub hard: bool,
    /// Which pods are counted.
    pub selector: PodSelector,
}

/// A host port a pod binds, which no two pods on one node may share.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostPort {
    /// Port number.
    pub port: i32,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Host IP; empty means every address.
    pub ip: String,
}

impl HostPort {
    /// Whether two bindings collide, by the kubelet's rule (same port and protocol, overlapping IP).
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip.is_empty()
                || other.ip.is_empty()
                || self.ip == "0.0.0.0"
                || other.ip == "0.0.0.0"
                || self.ip == other.ip)
    }
}

/// What a pending pod needs from a node, as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodDemand {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID, when known (the ledger keys on it).
    pub uid: String,
    /// Pod labels, which other pods' selectors match.
    pub labels: BTreeMap<String, String>,
    /// Effective requests, including one pod slot.
    pub requests: Resources,
    /// `nodeSelector` as `In` requirements, ANDed into every affinity term.
    pub node_selector: Requirements,
    /// Required node-affinity terms (ORed); empty means none.
    pub node_affinity: Terms,
    /// Preferred node-affinity terms with weights, used as tie-breaks.
    pub preferred_affinity: Vec<(i32, Requirements)>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
    /// Topology spread on zone or hostname.
    pub topology_spread: Vec<TopologySpread>,
    /// Required pod anti-affinity on hostname: no selected pod may share the node.
    pub anti_affinity_hostname: Vec<PodSelector>,
    /// Required pod affinity on zone: the pod must be in a zone that has a selected pod.
    pub affinity_zone: Vec<PodSelector>,
    /// Host ports bound.
    pub host_ports: Vec<HostPort>,
}

impl PodDemand {
    /// A demand with only requests (plus its pod slot), for tests and benchmarks.
    pub fn simple(namespace: &str, name: &str, mut requests: Resources) -> Self {
        if requests.pods == 0 {
            requests.pods = 1;
        }
        PodDemand {
            namespace: namespace.to_string(),
            name: name.to_string(),
            requests,
            ..Default::default()
        }
    }

    /// `namespace/name`, the identity used in plans and reasons.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Derives the demand from a Pod, reading every field the planner honours.
    ///
    /// # Errors
    /// [`PodError`] naming the field whose value is invalid.
    pub fn from_pod(pod: &Pod) -> Result<Self, PodError> {
        let spec = pod.spec.as_ref().ok_or(PodError::NoSpec)?;
        let meta = &pod.metadata;
        let namespace = meta
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let mut d = Self::from_spec(&namespace, spec)?;
        d.name = meta.name.clone().unwrap_or_default();
        d.uid = meta.uid.clone().unwrap_or_default();
        d.labels = meta.labels.clone().unwrap_or_default();
        Ok(d)
    }

    /// Derives the demand from a pod template's spec (name and labels are set by the caller).
    ///
    /// # Errors
    /// [`PodError`] naming the field whose value is invalid.
    pub fn from_spec(namespace: &str, spec: &PodSpec) -> Result<Self, PodError> {
        let mut d = PodDemand {
            namespace: namespace.to_string(),
            requests: pod_requests(spec)?,
            ..Default::default()
        };
        if let Some(sel) = &spec.node_selector {
            d.node_selector = Requirements::from_node_selector(sel);
        }
        for t in spec.tolerations.iter().flatten() {
            d.tolerations.push(toleration(t)?);
        }
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            for p in c.ports.iter().flatten() {
                if let Some(port) = p.host_port.filter(|p| *p > 0) {
                    d.host_ports.push(HostPort {
                        port,
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
                        ip: p.host_ip.clone().unwrap_or_default(),
                    });
                }
            }
        }
        d.host_ports.sort();
        d.host_ports.dedup();
        if let Some(aff) = &spec.affinity {
            if let Some(na) = &aff.node_affinity {
                if let Some(req) = &na.required_during_scheduling_ignored_during_execution {
                    let mut terms = Vec::new();
                    for t in &req.node_selector_terms {
                        terms.push(node_term(
                            t.match_expressions.as_deref().unwrap_or_default(),
                            "affinity.nodeAffinity.required",
                        )?);
                    }
                    d.node_affinity = Terms(terms);
                }
                for p in na
                    .preferred_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                {
                    let t = node_term(
                        p.preference
                            .match_expressions
                            .as_deref()
                            .unwrap_or_default(),
                        "affinity.nodeAffinity.preferred",
                    )?;
                    d.preferred_affinity.push((p.weight, t));
                }
            }
            if let Some(pa) = &aff.pod_affinity {
                for term in pa
                    .required_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                {
                    // Only zonal pod affinity is modelled; hostname affinity is left to the scheduler.
                    if TopologyKey::parse(&term.topology_key) == Some(TopologyKey::Zone) {
                        d.affinity_zone
                            .push(affinity_selector(term, "affinity.podAffinity")?);
                    }
                }
            }
            if let Some(pa) = &aff.pod_anti_affinity {
                for term in pa
                    .required_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                {
                    if TopologyKey::parse(&term.topology_key) == Some(TopologyKey::Hostname) {
                        d.anti_affinity_hostname
                            .push(affinity_selector(term, "affinity.podAntiAffinity")?);
                    }
                }
            }
        }
        for c in spec.topology_spread_constraints.iter().flatten() {
            let Some(key) = TopologyKey::parse(&c.topology_key) else {
                continue;
            };
            d.topology_spread.push(TopologySpread {
                key,
                max_skew: u32::try_from(c.max_skew.max(1)).unwrap_or(1),
                hard: c.when_unsatisfiable != "ScheduleAnyway",
                selector: selector(c.label_selector.as_ref(), &[], "topologySpreadConstraints")?,
            });
        }
        Ok(d)
    }

    /// A key equal for pods that are interchangeable to the planner (same template), so they
    /// are planned once as a group. Cheap: one pass over the fields, no allocation.
    pub fn group_key(&self) -> u64 {
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        self.namespace.hash(&mut h);
        self.labels.hash(&mut h);
        self.requests.hash(&mut h);
        self.node_selector.hash(&mut h);
        self.node_affinity.hash(&mut h);
        self.preferred_affinity.hash(&mut h);
        self.tolerations.hash(&mut h);
        self.topology_spread.hash(&mut h);
        self.anti_affinity_hostname.hash(&mut h);
        self.affinity_zone.hash(&mut h);
        self.host_ports.hash(&mut h);
        h.0
    }

    /// Whether the pod matters to topology beyond its own requests.
    pub fn has_topology(&self) -> bool {
        !self.topology_spread.is_empty()
            || !self.anti_affinity_hostname.is_empty()
            || !self.affinity_zone.is_empty()
    }

    /// The effective node terms: `nodeSelector` ANDed into each required affinity term.
    pub fn node_terms(&self) -> Terms {
        if self.node_affinity.0.is_empty() {
            if self.node_selector.0.is_empty() {
                return Terms::default();
            }
            return Terms(vec![self.node_selector.clone()]);
        }
        Terms(
            self.node_affinity
                .0
                .iter()
                .map(|t| t.and(&self.node_selector))
                .collect(),
        )
    }
}

/// FNV-1a as a `Hasher`: deterministic across runs and processes, unlike `DefaultHasher` seeds.
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Sums a pod's effective requests, as the scheduler does.
///
/// The larger of the app containers' sum (plus sidecars) and the largest init container (plus the
/// sidecars started before it), plus the pod overhead, plus one pod slot.
///
/// # Errors
/// [`PodError::Quantity`] naming the container whose request does not parse.
pub fn pod_requests(spec: &PodSpec) -> Result<Resources, PodError> {
    let mut apps = Resources::default();
    for c in &spec.containers {
        apps.add(&container_requests(c, "containers")?);
    }
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c, "initContainers")?;
        if c.restart_policy.as_deref() == Some("Always") {
            // A sidecar runs alongside everything started after it.
            sidecars.add(&r);
            init_peak.max_each(&sidecars);
        } else {
            init_peak.max_each(&sidecars.plus(&r));
        }
    }
    let mut total = apps.plus(&sidecars);
    total.max_each(&init_peak);
    if let Some(overhead) = &spec.overhead {
        let o = Resources::from_map(overhead.iter().map(|(k, v)| (k, v.0.as_str()))).map_err(
            |source| PodError::Quantity {
                field: "overhead".to_string(),
                source,
            },
        )?;
        total.add(&o);
    }
    total.pods = 1;
    Ok(total)
}

fn container_requests(c: &Container, list: &str) -> Result<Resources, PodError> {
    let Some(res) = &c.resources else {
        return Ok(Resources::default());
    };
    // Kubernetes defaults requests to limits when only limits are set.
    let mut r = match &res.limits {
        Some(l) => {
            Resources::from_map(l.iter().map(|(k, v)| (k, v.0.as_str()))).map_err(|source| {
                PodError::Quantity {
                    field: format!("{list}[{}].resources.limits", c.name),
                    source,
                }
            })?
        }
        None => Resources::default(),
    };
    // Requests win over limits resource by resource.
    for (k, v) in res.requests.iter().flatten() {
        let q = super::quantity::Quantity::parse(&v.0).map_err(|source| PodError::Quantity {
            field: format!("{list}[{}].resources.requests", c.name),
            source: ResourceError {
                resource: k.clone(),
                source,
            },
        })?;
        r.set(k, q);
    }
    Ok(r)
}

fn node_term(exprs: &[NodeSelectorRequirement], field: &str) -> Result<Requirements, PodError> {
    let mut out = Vec::with_capacity(exprs.len());
    for e in exprs {
        out.push(
            Requirement::new(&e.key, &e.operator, e.values.as_deref().unwrap_or_default())
                .map_err(|source| PodError::Requirement {
                    field: field.to_string(),
                    source,
                })?,
        );
    }
    out.sort();
    Ok(Requirements(out))
}

fn selector(
    sel: Option<&LabelSelector>,
    namespaces: &[String],
    field: &str,
) -> Result<PodSelector, PodError> {
    let Some(sel) = sel else {
        return Ok(PodSelector::default());
    };
    let mut reqs = Vec::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        reqs.push(Requirement {
            key: k.clone(),
            operator: super::requirements::Operator::In,
            values: vec![v.clone()],
        });
    }
    for e in sel.match_expressions.iter().flatten() {
        let mut r = Requirement::new(&e.key, &e.operator, e.values.as_deref().unwrap_or_default())
            .map_err(|source| PodError::Requirement {
                field: field.to_string(),
                source,
            })?;
        // Pod label keys are literal; undo node-label aliasing.
        r.key = e.key.clone();
        reqs.push(r);
    }
    reqs.sort();
    let mut namespaces = namespaces.to_vec();
    namespaces.sort();
    Ok(PodSelector {
        requirements: Requirements(reqs),
        namespaces,
        present: true,
    })
}

fn affinity_selector(term: &PodAffinityTerm, field: &str) -> Result<PodSelector, PodError> {
    selector(
        term.label_selector.as_ref(),
        term.namespaces.as_deref().unwrap_or_default(),
        field,
    )
}

/// Converts a Kubernetes toleration; shared with the lifecycle gate's DaemonSet check.
pub fn toleration(t: &K8sToleration) -> Result<Toleration, PodError> {
    let operator = match t.operator.as_deref() {
        None | Some("Equal") | Some("") => TolerationOperator::Equal,
        Some("Exists") => TolerationOperator::Exists,
        Some(other) => {
            return Err(PodError::Toleration {
                what: "operator",
                value: other.to_string(),
            });
        }
    };
    let effect = match t.effect.as_deref() {
        None | Some("") => None,
        Some(e) => Some(Effect::parse(e).ok_or_else(|| PodError::Toleration {
            what: "effect",
            value: e.to_string(),
        })?),
    };
    Ok(Toleration {
        key: t.key.clone().unwrap_or_default(),
        operator,
        value: t.value.clone().unwrap_or_default(),
        effect,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn requests_take_init_peak_sidecars_and_overhead() {
        let p = pod(r#"
metadata: {name: p, namespace: ns}
spec:
  overhead: {cpu: 100m}
  initContainers:
  - name: init
    resources: {requests: {cpu: "3", memory: 1Gi}}
  - name: sidecar
    restartPolicy: Always
    resources: {requests: {cpu: 200m, memory: 128Mi}}
  containers:
  - name: a
    resources: {requests: {cpu: 500m, memory: 256Mi}}
  - name: b
    resources: {limits: {cpu: "1", memory: 512Mi}}
"#);
        let d = PodDemand::from_pod(&p).unwrap();
        // apps 1.5 + sidecar 0.2 = 1.7 < init 3.0 → 3.0, + overhead 0.1
        assert_eq!(d.requests.cpu, 3100);
        // apps 768Mi + sidecar 128Mi = 896Mi < init 1Gi
        assert_eq!(d.requests.memory, 1 << 30);
        assert_eq!(d.requests.pods, 1);
        assert_eq!(d.key(), "ns/p");
    }

    #[test]
    fn bad_quantity_names_container() {
        let p = pod(r#"
metadata: {name: p}
spec:
  containers:
  - name: app
    resources: {requests: {memory: lots}}
"#);
        let e = PodDemand::from_pod(&p).unwrap_err();
        let msg = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(
            msg.contains("containers[app]") && msg.contains("memory"),
            "{msg}"
        );
    }

    #[test]
    fn constraints_are_read() {
        let p = pod(r#"
metadata: {name: p, namespace: ns, labels: {app: web}}
spec:
  nodeSelector: {karpenter.sh/capacity-type: spot}
  tolerations: [{key: gpu, operator: Exists, effect: NoSchedule}]
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
        - matchExpressions: [{key: kubernetes.io/arch, operator: In, values: [arm64]}]
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector: {matchLabels: {app: web}}
    podAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: topology.kubernetes.io/zone
        labelSelector: {matchLabels: {app: db}}
  topologySpreadConstraints:
  - {maxSkew: 2, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {app: web}}}
  containers:
  - name: a
    ports: [{containerPort: 80, hostPort: 8080}]
"#);
        let d = PodDemand::from_pod(&p).unwrap();
        assert_eq!(d.node_selector.0[0].key, "gantry.dev/capacity-type");
        assert_eq!(d.node_terms().0.len(), 1);
        assert_eq!(d.node_terms().0[0].0.len(), 2);
        assert_eq!(d.tolerations.len(), 1);
        assert_eq!(d.anti_affinity_hostname.len(), 1);
        assert!(d.anti_affinity_hostname[0].selects("ns", "ns", &d.labels));
        assert_eq!(d.affinity_zone.len(), 1);
        assert_eq!(d.topology_spread[0].max_skew, 2);
        assert!(!d.topology_spread[0].hard);
        assert_eq!(d.host_ports[0].port, 8080);
        assert_eq!(d.host_ports[0].protocol, "TCP");
    }

    #[test]
    fn replicas_share_a_group_key() {
        let mut a = PodDemand::simple("ns", "a", Resources::cpu_mem(100, 100));
        let mut b = a.clone();
        b.name = "b".into();
        b.uid = "u".into();
        assert_eq!(a.group_key(), b.group_key());
        a.labels.insert("x".into(), "y".into());
        assert_ne!(a.group_key(), b.group_key());
    }
}

//! Scenarios for the simulation: the same YAML kinds `gantry plan` reads, turned into the objects
//! a cluster would hold (workloads expanded into Pods, Karpenter kinds accepted).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use crate::kube::crd::{EC2NodeClass, NodePool};
use crate::model::labels::SCHEDULER_NAME;

/// The built-in scenario (`gantry demo` with no `--scenario`).
pub const BUILTIN: &str = include_str!("scenario.yaml");

/// Why a scenario could not be read; names the document and what is wrong.
#[derive(Debug, Error)]
pub enum ScenarioError {
    /// YAML syntax.
    #[error("document {doc}: invalid yaml")]
    Yaml {
        /// 1-based document number.
        doc: usize,
        /// Parser error.
        #[source]
        source: serde_yaml::Error,
    },
    /// A known kind with a bad field.
    #[error("document {doc} ({kind} {name}): {problem}")]
    Object {
        /// 1-based document number.
        doc: usize,
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// What is wrong.
        problem: String,
    },
}

/// Everything a scenario puts into the cluster.
#[derive(Debug, Clone, Default)]
pub struct Scenario {
    /// Pods given as `Pod` documents (workloads' pods come from [`Scenario::pods`]).
    pub bare_pods: Vec<Pod>,
    /// NodePools.
    pub nodepools: Vec<NodePool>,
    /// EC2NodeClasses.
    pub nodeclasses: Vec<EC2NodeClass>,
    /// DaemonSets.
    pub daemonsets: Vec<DaemonSet>,
    /// PodDisruptionBudgets, which the simulated Eviction API honours.
    pub pdbs: Vec<PodDisruptionBudget>,
    /// The workloads the pods came from, so the demo can scale them and PDBs can read their scale.
    pub workloads: Vec<Workload>,
}

impl Scenario {
    /// Every pod the scenario creates, pending and scheduled by the `gantry` profile: the bare
    /// pods, then each workload's replicas.
    ///
    /// Made on demand rather than stored: at 10,000 pods a second copy of every pod next to the
    /// cluster's was a quarter of the demo's peak memory.
    pub fn pods(&self) -> impl Iterator<Item = Pod> + '_ {
        self.bare_pods.iter().cloned().chain(
            self.workloads
                .iter()
                .flat_map(|w| (0..w.replicas).map(move |i| w.pod(i))),
        )
    }

    /// How many pods [`Scenario::pods`] yields.
    pub fn pod_count(&self) -> usize {
        self.bare_pods.len() + self.workloads.iter().map(|w| w.replicas).sum::<usize>()
    }
}

/// A Deployment, StatefulSet, ReplicaSet or Job of the scenario, as its pods' controller.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// The document's kind (`Deployment`, `StatefulSet`, `ReplicaSet`, `Job`).
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The UID in its pods' controller `ownerReference` (the ReplicaSet's, for a Deployment).
    pub controller_uid: String,
    /// Pods created: `replicas`, or `parallelism` for a Job.
    pub replicas: usize,
    /// The kind in the pods' controller `ownerReference`.
    pub owner_kind: String,
    /// The pod template.
    pub template: PodTemplateSpec,
}

impl Workload {
    /// Replica `i`: the template, named `<workload>-<i>`, owned by the workload's controller.
    pub fn pod(&self, i: usize) -> Pod {
        let mut meta = self.template.metadata.clone().unwrap_or_default();
        meta.name = Some(format!("{}-{i}", self.name));
        meta.namespace = Some(self.namespace.clone());
        meta.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: self.owner_kind.clone(),
            name: self.name.clone(),
            uid: self.controller_uid.clone(),
            controller: Some(true),
            ..Default::default()
        }]);
        let mut spec = self.template.spec.clone().unwrap_or_default();
        spec.scheduler_name = Some(SCHEDULER_NAME.to_string());
        Pod {
            metadata: meta,
            spec: Some(spec),
            status: None,
        }
    }
}

/// The controller UID scenario pods of a workload carry.
fn controller_uid(namespace: &str, workload: &str) -> String {
    format!("{namespace}-{workload}")
}

fn field<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    v.pointer(path)
}

/// Parses multi-document YAML into a scenario.
///
/// # Errors
/// [`ScenarioError`] naming the document and field.
pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    let mut s = Scenario::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let v = Value::deserialize(doc).map_err(|source| ScenarioError::Yaml { doc: n, source })?;
        if v.is_null() {
            continue;
        }
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        let name = field(&v, "/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let namespace = field(&v, "/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let bad = |problem: String| ScenarioError::Object {
            doc: n,
            kind: kind.clone(),
            name: name.clone(),
            problem,
        };
        let template = || -> Result<PodTemplateSpec, ScenarioError> {
            let t = field(&v, "/spec/template")
                .cloned()
                .ok_or_else(|| bad("spec.template is missing".into()))?;
            serde_json::from_value(t).map_err(|e| bad(format!("spec.template: {e}")))
        };
        let count = |path: &str, default: u64| -> usize {
            field(&v, path).and_then(Value::as_u64).unwrap_or(default) as usize
        };
        match kind.as_str() {
            "Pod" => {
                let mut pod: Pod =
                    serde_json::from_value(v.clone()).map_err(|e| bad(e.to_string()))?;
                pod.metadata.namespace.get_or_insert(namespace.clone());
                pod.spec.get_or_insert_with(Default::default).scheduler_name =
                    Some(SCHEDULER_NAME.to_string());
                s.bare_pods.push(pod);
            }
            "Deployment" | "StatefulSet" | "ReplicaSet" => {
                let owner = if kind == "StatefulSet" {
                    "StatefulSet"
                } else {
                    "ReplicaSet"
                };
                let replicas = count("/spec/replicas", 1);
                s.workloads.push(Workload {
                    kind: kind.clone(),
                    namespace: namespace.clone(),
                    name: name.clone(),
                    controller_uid: controller_uid(&namespace, &name),
                    replicas,
                    owner_kind: owner.to_string(),
                    template: template()?,
                });
            }
            "Job" => {
                let parallelism = count("/spec/parallelism", 1);
                s.workloads.push(Workload {
                    kind: kind.clone(),
                    namespace: namespace.clone(),
                    name: name.clone(),
                    controller_uid: controller_uid(&namespace, &name),
                    replicas: parallelism,
                    owner_kind: "Job".to_string(),
                    template: template()?,
                });
            }
            "PodDisruptionBudget" => {
                let mut pdb: PodDisruptionBudget =
                    serde_json::from_value(v.clone()).map_err(|e| bad(e.to_string()))?;
                pdb.metadata.namespace.get_or_insert(namespace.clone());
                let spec = pdb.spec.as_ref();
                if spec.is_some_and(|s| s.min_available.is_some() && s.max_unavailable.is_some()) {
                    return Err(bad(
                        "minAvailable and maxUnavailable cannot both be set".into()
                    ));
                }
                s.pdbs.push(pdb);
            }
            "DaemonSet" => {
                s.daemonsets
                    .push(serde_json::from_value(v.clone()).map_err(|e| bad(e.to_string()))?);
            }
            "NodePool" => {
                let mut pool: NodePool =
                    serde_json::from_value(with_gantry_api(&v)).map_err(|e| bad(e.to_string()))?;
                pool.metadata.namespace = None;
                s.nodepools.push(pool);
            }
            "EC2NodeClass" => {
                let class: EC2NodeClass =
                    serde_json::from_value(with_gantry_api(&v)).map_err(|e| bad(e.to_string()))?;
                s.nodeclasses.push(class);
            }
            other => return Err(bad(format!("kind {other:?} is not supported"))),
        }
    }
    if s.nodeclasses.is_empty() {
        s.nodeclasses
            .push(EC2NodeClass::new("default", Default::default()));
    }
    if s.nodepools.is_empty() {
        let mut spec: crate::kube::crd::NodePoolSpec = serde_json::from_value(serde_json::json!({
            "template": {"spec": {"nodeClassRef": {"group": "gantry.dev", "kind": "EC2NodeClass",
                "name": s.nodeclasses.first().and_then(|c| c.metadata.name.clone()).unwrap_or_default()}}}
        }))
        .map_err(|e| ScenarioError::Object {
            doc: 0,
            kind: "NodePool".into(),
            name: "default".into(),
            problem: e.to_string(),
        })?;
        spec.weight = Some(1);
        s.nodepools.push(NodePool::new("default", spec));
    }
    Ok(s)
}

/// Karpenter documents carry their own apiVersion; the fields are the same.
fn with_gantry_api(v: &Value) -> Value {
    let mut v = v.clone();
    v["apiVersion"] = Value::String("gantry.dev/v1".into());
    if let Some(r) = v.pointer_mut("/spec/template/spec/nodeClassRef") {
        r["group"] = Value::String("gantry.dev".into());
    }
    v
}

/// Pods per workload, for the report.
pub fn workload_counts(pods: &[Pod]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for p in pods {
        let w = p
            .metadata
            .owner_references
            .as_ref()
            .and_then(|o| o.first())
            .map(|o| o.name.clone())
            .or_else(|| p.metadata.name.clone())
            .unwrap_or_default();
        *m.entry(w).or_default() += 1;
    }
    m
}

/// Empty metadata helper for tests.
pub fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_scenario_expands() {
        let s = parse(BUILTIN).unwrap();
        let pods: Vec<Pod> = s.pods().collect();
        assert!(pods.len() >= 1000, "{}", pods.len());
        assert_eq!(pods.len(), s.pod_count());
        assert_eq!(s.nodepools.len(), 2);
        assert_eq!(s.daemonsets.len(), 2);
        assert_eq!(s.pdbs.len(), 2);
        let web = s.workloads.iter().find(|w| w.name == "web").unwrap();
        assert_eq!((web.kind.as_str(), web.replicas), ("Deployment", 400));
        let owner = &pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("web-0"))
            .unwrap()
            .metadata
            .owner_references
            .as_ref()
            .unwrap()[0];
        assert_eq!(owner.uid, web.controller_uid);
        let counts = workload_counts(&pods);
        assert_eq!(counts["web"], 400);
        assert_eq!(counts["train"], 8);
        assert!(
            pods.iter()
                .all(|p| p.spec.as_ref().unwrap().scheduler_name.as_deref() == Some("gantry"))
        );
    }

    #[test]
    fn karpenter_pool_and_unknown_kind() {
        let s = parse(
            "apiVersion: karpenter.sh/v1\nkind: NodePool\nmetadata: {name: k}\nspec:\n  template:\n    spec:\n      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}\n",
        )
        .unwrap();
        assert_eq!(
            s.nodepools[0].spec.template.spec.node_class_ref.group,
            "gantry.dev"
        );
        let e = parse("kind: Secret\nmetadata: {name: x}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Secret"), "{e}");
    }
}

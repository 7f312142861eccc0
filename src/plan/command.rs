//! `gantry plan -f FILE... [--catalog CSV] [--output table|json]`: plan a cluster from manifests,
//! offline, and show what it would cost against the LP lower bound.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use thiserror::Error;

use super::lower_bound::plan_lower_bound;
use super::{Plan, PlanInput, plan};
use crate::kube::crd::{EC2NodeClassSpec, NodePoolSpec};
use crate::model::catalog::{CatalogError, US_EAST_1_ZONES};
use crate::model::nodepool::NodePoolError;
use crate::model::pod::PodError;
use crate::model::quantity::{format_bytes, format_milli};
use crate::model::{Catalog, NodePoolView, PodDemand, Resources, pod_requests};

/// How the plan is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A table of claims and a summary, for people.
    Table,
    /// The JSON schema in docs/planner.md, for scripts.
    Json,
}

/// `gantry plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Multi-document YAML files: Pods, workloads, DaemonSets, NodePools, EC2NodeClasses.
    #[arg(short = 'f', long = "filename", env = "GANTRY_PLAN_FILES", required = true, num_args = 1.., value_delimiter = ',')]
    pub files: Vec<PathBuf>,
    /// A CSV with the columns of the embedded catalog, used in its place.
    #[arg(long, env = "GANTRY_PLAN_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', env = "GANTRY_PLAN_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Why `gantry plan` could not run; names the file, document and field.
#[derive(Debug, Error)]
pub enum PlanCommandError {
    /// A file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML or does not match its kind's schema.
    #[error("{path}: document {doc}: {message}")]
    Document {
        /// The file.
        path: String,
        /// 1-based document number.
        doc: usize,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A pod template is invalid.
    #[error("{path}: document {doc}")]
    Pod {
        /// The file.
        path: String,
        /// 1-based document number.
        doc: usize,
        /// Why.
        #[source]
        source: PodError,
    },
    /// A NodePool is invalid.
    #[error("{path}: document {doc}")]
    NodePool {
        /// The file.
        path: String,
        /// 1-based document number.
        doc: usize,
        /// Why.
        #[source]
        source: NodePoolError,
    },
    /// The catalog CSV is invalid.
    #[error("catalog {path}")]
    Catalog {
        /// The file (or `embedded`).
        path: String,
        /// Why.
        #[source]
        source: CatalogError,
    },
    /// Writing the output failed.
    #[error("writing output")]
    Write(#[from] std::io::Error),
    /// JSON encoding failed.
    #[error("encoding output")]
    Json(#[from] serde_json::Error),
}

/// Everything read from the manifests.
#[derive(Debug, Default)]
pub struct Manifests {
    /// Pending pods, replicas expanded.
    pub pods: Vec<PodDemand>,
    /// Pools (the default pool when none was given).
    pub pools: Vec<NodePoolView>,
}

/// Runs the command.
///
/// # Errors
/// [`PlanCommandError`] naming the file, document and field at fault.
pub fn run(args: PlanArgs) -> Result<(), PlanCommandError> {
    let catalog = match &args.catalog {
        Some(p) => {
            let text = read(p)?;
            Catalog::from_csv(&text, &US_EAST_1_ZONES).map_err(|source| {
                PlanCommandError::Catalog {
                    path: p.display().to_string(),
                    source,
                }
            })?
        }
        None => Catalog::embedded().map_err(|source| PlanCommandError::Catalog {
            path: "embedded".to_string(),
            source,
        })?,
    };
    let mut texts = Vec::new();
    for f in &args.files {
        texts.push((f.display().to_string(), read(f)?));
    }
    let manifests = parse_manifests(&texts)?;
    let input = PlanInput {
        pods: &manifests.pods,
        pools: &manifests.pools,
        catalog: &catalog,
        nodes: &[],
        in_flight: &[],
        now: jiff::Timestamp::now(),
    };
    let plan = plan(&input);
    let bound = plan_lower_bound(&input, &plan);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut out, &json_report(&input, &plan, bound))?;
            writeln!(out)?;
        }
        Output::Table => write_table(&mut out, &input, &plan, bound)?,
    }
    Ok(())
}

fn read(p: &Path) -> Result<String, PlanCommandError> {
    std::fs::read_to_string(p).map_err(|source| PlanCommandError::Read {
        path: p.display().to_string(),
        source,
    })
}

/// Parses manifests: `(file name, text)` pairs of multi-document YAML.
///
/// # Errors
/// [`PlanCommandError`] naming the file, document and field at fault.
pub fn parse_manifests(texts: &[(String, String)]) -> Result<Manifests, PlanCommandError> {
    let mut m = Manifests::default();
    let mut overhead = Resources::default();
    let mut pool_classes: Vec<String> = Vec::new();
    let mut class_max_pods: BTreeMap<String, u32> = BTreeMap::new();
    for (path, text) in texts {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let n = i + 1;
            let doc_err = |message: String| PlanCommandError::Document {
                path: path.clone(),
                doc: n,
                message,
            };
            let value: Value = serde::Deserialize::deserialize(doc)
                .map_err(|e| doc_err(format!("invalid YAML: {e}")))?;
            if value.is_null() {
                continue;
            }
            let mut value = value;
            stringify_quantities(&mut value, false);
            let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
            let api = value
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            let name = value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let ns = value
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string();
            let label = format!("{kind} {name}");
            let pod_err = |source| PlanCommandError::Pod {
                path: path.clone(),
                doc: n,
                source,
            };
            match kind {
                "Pod" => {
                    let pod: Pod = typed(&value, &label).map_err(doc_err)?;
                    let mut d = PodDemand::from_pod(&pod).map_err(pod_err)?;
                    d.namespace = ns;
                    m.pods.push(d);
                }
                "Deployment" | "StatefulSet" | "ReplicaSet" | "Job" => {
                    let (count, template) = match kind {
                        "Deployment" => {
                            let o: Deployment = typed(&value, &label).map_err(doc_err)?;
                            let s = o.spec;
                            (s.replicas.unwrap_or(1), s.template)
                        }
                        "StatefulSet" => {
                            let o: StatefulSet = typed(&value, &label).map_err(doc_err)?;
                            let s = o.spec;
                            (s.replicas.unwrap_or(1), s.template)
                        }
                        "ReplicaSet" => {
                            let o: ReplicaSet = typed(&value, &label).map_err(doc_err)?;
                            let s = o.spec;
                            (s.replicas.unwrap_or(1), s.template.unwrap_or_default())
                        }
                        _ => {
                            let o: Job = typed(&value, &label).map_err(doc_err)?;
                            let s = o.spec.unwrap_or_default();
                            (s.parallelism.unwrap_or(1), s.template)
                        }
                    };
                    let base = template_demand(&ns, &template).map_err(pod_err)?;
                    for r in 0..count.max(0) {
                        let mut d = base.clone();
                        d.name = format!("{name}-{r}");
                        m.pods.push(d);
                    }
                }
                "DaemonSet" => {
                    let o: DaemonSet = typed(&value, &label).map_err(doc_err)?;
                    let spec = o.spec.template.spec.unwrap_or_default();
                    let mut r = pod_requests(&spec).map_err(pod_err)?;
                    r.pods = 1;
                    overhead.add(&r);
                }
                "NodePool" if api == "gantry.dev/v1" || api == "karpenter.sh/v1" => {
                    let spec_v = value.get("spec").cloned().unwrap_or(Value::Null);
                    let spec: NodePoolSpec = typed(&spec_v, &format!("{label}: spec"))
                        .map_err(|e| doc_err(e.replacen(": spec: field ", ": field spec.", 1)))?;
                    let view = NodePoolView::from_spec(&name, &spec).map_err(|source| {
                        PlanCommandError::NodePool {
                            path: path.clone(),
                            doc: n,
                            source,
                        }
                    })?;
                    pool_classes.push(spec.template.spec.node_class_ref.name.clone());
                    m.pools.push(view);
                }
                "EC2NodeClass" if api == "gantry.dev/v1" || api == "karpenter.k8s.aws/v1" => {
                    let spec_v = value.get("spec").cloned().unwrap_or(Value::Null);
                    let spec: EC2NodeClassSpec =
                        typed(&spec_v, &format!("{label}: spec")).map_err(doc_err)?;
                    if let Some(mp) = spec.kubelet.and_then(|k| k.max_pods) {
                        class_max_pods.insert(name, mp);
                    }
                }
                // Budgets limit evictions, not placement: nothing to plan (the demo reads them).
                "PodDisruptionBudget" => {}
                "" => return Err(doc_err("has no kind".to_string())),
                other => {
                    return Err(doc_err(format!(
                        "unsupported kind {other:?} (apiVersion {api:?})"
                    )));
                }
            }
        }
    }
    if m.pools.is_empty() {
        m.pools.push(NodePoolView::default_pool());
        pool_classes.push(String::new());
    }
    for (pool, class) in m.pools.iter_mut().zip(&pool_classes) {
        pool.daemon_overhead = overhead.clone();
        pool.max_pods = class_max_pods.get(class).copied();
    }
    Ok(m)
}

fn template_demand(ns: &str, t: &PodTemplateSpec) -> Result<PodDemand, PodError> {
    let spec = t.spec.as_ref().ok_or(PodError::NoSpec)?;
    let mut d = PodDemand::from_spec(ns, spec)?;
    if let Some(meta) = &t.metadata {
        d.labels = meta.labels.clone().unwrap_or_default();
    }
    Ok(d)
}

/// Deserializes `value` as `T`, then reports the first field `T` does not know.
fn typed<T: DeserializeOwned + Serialize>(value: &Value, label: &str) -> Result<T, String> {
    let t: T = serde_json::from_value(value.clone()).map_err(|e| format!("{label}: {e}"))?;
    let back = serde_json::to_value(&t).map_err(|e| format!("{label}: {e}"))?;
    if let Some(field) = unknown_field(value, &back, "") {
        return Err(format!("{label}: field {field}: unknown field"));
    }
    Ok(t)
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// The path of the first non-empty field of `input` missing from `known` (its typed round trip).
fn unknown_field(input: &Value, known: &Value, path: &str) -> Option<String> {
    match (input, known) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    None if !is_empty(v) => return Some(p),
                    None => {}
                    Some(kv) => {
                        if let Some(f) = unknown_field(v, kv, &p) {
                            return Some(f);
                        }
                    }
                }
            }
            None
        }
        (Value::Array(a), Value::Array(b)) => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| unknown_field(x, y, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Turns numbers under resource maps into strings, as Kubernetes accepts `cpu: 1`.
fn stringify_quantities(v: &mut Value, in_map: bool) {
    match v {
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                let map = matches!(
                    k.as_str(),
                    "requests" | "limits" | "overhead" | "capacity" | "allocatable"
                );
                if in_map && let Value::Number(n) = child {
                    *child = Value::String(n.to_string());
                    continue;
                }
                stringify_quantities(child, map);
            }
        }
        Value::Array(a) => {
            for child in a {
                stringify_quantities(child, false);
            }
        }
        _ => {}
    }
}

/// The JSON schema of `gantry plan --output json`.
#[derive(Debug, Serialize)]
pub struct JsonReport {
    /// Total $/h of the new claims.
    pub cost_per_hour: f64,
    /// LP lower bound, $/h.
    pub lower_bound_per_hour: f64,
    /// New claims.
    pub nodeclaims: Vec<JsonClaim>,
    /// Pods that fit nowhere.
    pub unschedulable: Vec<JsonUnschedulable>,
}

/// One claim in the JSON report.
#[derive(Debug, Serialize)]
pub struct JsonClaim {
    /// Pool name.
    pub nodepool: String,
    /// The cheapest option.
    pub instance_type: String,
    /// All options, cheapest first.
    pub options: Vec<String>,
    /// Zones it may launch in.
    pub zones: Vec<String>,
    /// Capacity type the price is counted at.
    pub capacity_type: crate::model::CapacityType,
    /// $/h.
    pub price_per_hour: f64,
    /// `ns/name` of its pods.
    pub pods: Vec<String>,
}

/// One unschedulable pod in the JSON report.
#[derive(Debug, Serialize)]
pub struct JsonUnschedulable {
    /// `ns/name`.
    pub pod: String,
    /// Why.
    pub reason: String,
}

/// Builds the JSON report.
pub fn json_report(input: &PlanInput<'_>, plan: &Plan, bound: f64) -> JsonReport {
    let name = |i: usize| input.pods.get(i).map(PodDemand::key).unwrap_or_default();
    JsonReport {
        cost_per_hour: round6(plan.cost_per_hour()),
        lower_bound_per_hour: round6(bound),
        nodeclaims: plan
            .claims
            .iter()
            .map(|c| JsonClaim {
                nodepool: c.pool.clone(),
                instance_type: c
                    .options
                    .first()
                    .map(|o| o.instance_type.clone())
                    .unwrap_or_default(),
                options: c.options.iter().map(|o| o.instance_type.clone()).collect(),
                zones: c.zones.clone(),
                capacity_type: c.capacity_type,
                price_per_hour: c.price,
                pods: c.pods.iter().map(|p| name(*p)).collect(),
            })
            .collect(),
        unschedulable: plan
            .unschedulable
            .iter()
            .map(|u| JsonUnschedulable {
                pod: name(u.pod),
                reason: u.reason.clone(),
            })
            .collect(),
    }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Requested ÷ allocatable (cpu, memory) over the new claims, at their cheapest option.
pub fn utilisation(input: &PlanInput<'_>, plan: &Plan) -> (f64, f64) {
    let (mut rc, mut rm, mut ac, mut am) = (0i64, 0i64, 0i64, 0i64);
    for c in &plan.claims {
        let pool = input.pools.iter().find(|p| p.name == c.pool);
        let Some(t) = c
            .options
            .first()
            .and_then(|o| input.catalog.get(&o.instance_type))
        else {
            continue;
        };
        let a = t.allocatable(pool.and_then(|p| p.max_pods));
        ac += a.cpu;
        am += a.memory;
        rc += c.requests.cpu;
        rm += c.requests.memory;
    }
    let ratio = |a: i64, b: i64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    (ratio(rc, ac), ratio(rm, am))
}

fn write_table(
    out: &mut impl Write,
    input: &PlanInput<'_>,
    plan: &Plan,
    bound: f64,
) -> Result<(), PlanCommandError> {
    writeln!(
        out,
        "{:<8} {:<20} {:<14} {:<10} {:>5} {:>10}",
        "POOL", "TYPE", "ZONE", "CAPACITY", "PODS", "$/H"
    )?;
    for c in &plan.claims {
        let zone = match c.zones.as_slice() {
            [one] => one.clone(),
            [] => "-".to_string(),
            many => format!("any of {}", many.len()),
        };
        writeln!(
            out,
            "{:<8} {:<20} {:<14} {:<10} {:>5} {:>10.4}",
            c.pool,
            c.options
                .first()
                .map(|o| o.instance_type.as_str())
                .unwrap_or("-"),
            zone,
            c.capacity_type.as_str(),
            c.pods.len(),
            c.price
        )?;
    }
    let cost = plan.cost_per_hour();
    let (uc, um) = utilisation(input, plan);
    let requested: Resources = plan.claims.iter().fold(Resources::default(), |mut r, c| {
        r.add(&c.requests);
        r
    });
    writeln!(out)?;
    writeln!(
        out,
        "{} nodeclaims for {} pods ({} vCPU, {} memory requested)",
        plan.claims.len(),
        plan.claims.iter().map(|c| c.pods.len()).sum::<usize>(),
        format_milli(requested.cpu),
        format_bytes(requested.memory)
    )?;
    writeln!(out, "cost:        ${cost:.4}/h")?;
    writeln!(out, "lower bound: ${bound:.4}/h")?;
    if bound > 0.0 {
        writeln!(out, "ratio:       {:.3}", cost / bound)?;
    }
    writeln!(
        out,
        "utilisation: cpu {:.1}%, memory {:.1}%",
        uc * 100.0,
        um * 100.0
    )?;
    if !plan.unschedulable.is_empty() {
        writeln!(out, "\nunschedulable ({}):", plan.unschedulable.len())?;
        for u in &plan.unschedulable {
            let name = input
                .pods
                .get(u.pod)
                .map(PodDemand::key)
                .unwrap_or_default();
            writeln!(out, "  {name}: {}", u.reason)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Manifests, PlanCommandError> {
        parse_manifests(&[("test.yaml".to_string(), yaml.to_string())])
    }

    #[test]
    fn workloads_expand_and_daemonsets_become_overhead() {
        let m = parse(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: a, resources: {requests: {cpu: 1, memory: 1Gi}}}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: crunch}
spec:
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: a, resources: {requests: {cpu: "2"}}}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    spec:
      containers: [{name: a, resources: {requests: {cpu: 100m, memory: 64Mi}}}]
"#,
        )
        .unwrap();
        let names: Vec<String> = m.pods.iter().map(PodDemand::key).collect();
        assert_eq!(
            names,
            [
                "shop/web-0",
                "shop/web-1",
                "shop/web-2",
                "default/crunch-0",
                "default/crunch-1"
            ]
        );
        assert_eq!(m.pods[0].requests.cpu, 1000);
        assert_eq!(m.pools.len(), 1);
        assert_eq!(m.pools[0].name, "default");
        assert_eq!(m.pools[0].daemon_overhead.cpu, 100);
    }

    #[test]
    fn unknown_field_names_document_and_field() {
        let e = parse(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: a}
spec: {containers: [{name: a}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b}
spec: {containers: [{name: a, resourcez: {requests: {cpu: 1}}}]}
"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("document 2") && e.contains("spec.containers[0].resourcez"),
            "{e}"
        );
        let e = parse("kind: NodePool\napiVersion: karpenter.sh/v1\nmetadata: {name: x}\nspec: {template: {spec: {nodeClassRef: {name: d}, requirement: []}}, weigth: 3}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("weigth"), "{e}");
        let e = parse("a: [1\n").unwrap_err().to_string();
        assert!(
            e.contains("document 1") && e.contains("invalid YAML"),
            "{e}"
        );
    }

    #[test]
    fn karpenter_pools_and_node_classes_are_read() {
        let m = parse(
            r#"
apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {name: general}
spec:
  template:
    spec:
      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: small}
      requirements: [{key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}]
---
apiVersion: karpenter.k8s.aws/v1
kind: EC2NodeClass
metadata: {name: small}
spec:
  kubelet: {maxPods: 20}
"#,
        )
        .unwrap();
        assert_eq!(m.pools[0].name, "general");
        assert_eq!(m.pools[0].max_pods, Some(20));
    }
}

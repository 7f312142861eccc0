//! Table tests and invariants for the hint decision; patches are applied with `json-patch`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::kube::crd::{
    NodeClaimTemplate, NodeClaimTemplateSpec, NodeClassRef, NodePoolSpec,
    NodeSelectorRequirementSpec,
};

const CSV: &str =
    "instance_type,vcpu,memory_mib,gpus,arch,max_enis,ipv4_per_eni,max_pods,on_demand_usd_per_hour
m7i.large,2,8192,0,amd64,3,10,29,0.1008
m7i.xlarge,4,16384,0,amd64,4,15,58,0.2016
c7i.large,2,4096,0,amd64,3,10,29,0.08925
m7g.large,2,8192,0,arm64,3,10,29,0.0816
c7g.xlarge,4,8192,0,arm64,4,15,58,0.145
";

fn catalog() -> CatalogIndex {
    let c = Catalog::from_csv(CSV, &["us-east-1a", "us-east-1b"]).unwrap();
    CatalogIndex::from_catalog(&c)
}

fn pool(name: &str, reqs: &[(&str, &str, &[&str])]) -> NodePool {
    NodePool::new(
        name,
        NodePoolSpec {
            template: NodeClaimTemplate {
                metadata: Default::default(),
                spec: NodeClaimTemplateSpec {
                    requirements: reqs
                        .iter()
                        .map(|(k, op, vs)| NodeSelectorRequirementSpec {
                            key: k.to_string(),
                            operator: op.to_string(),
                            values: vs.iter().map(|v| v.to_string()).collect(),
                            min_values: None,
                        })
                        .collect(),
                    node_class_ref: NodeClassRef {
                        group: "gantry.dev".into(),
                        kind: "EC2NodeClass".into(),
                        name: "default".into(),
                    },
                    ..Default::default()
                },
            },
            disruption: Default::default(),
            limits: BTreeMap::new(),
            weight: None,
        },
    )
}

fn ctx<'a>(catalog: &'a CatalogIndex, pools: Option<&'a [NodePool]>) -> HintContext<'a> {
    HintContext {
        catalog,
        node_pools: pools,
        set_scheduler_name: true,
        spot_preferred_weight: DEFAULT_SPOT_PREFERRED_WEIGHT,
    }
}

fn pod(annotations: &[(&str, &str)], spec_extra: Value) -> Pod {
    let mut spec = json!({
        "containers": [{"name": "c", "image": "app:1", "resources": {"requests": {"cpu": "100m"}}}],
        "schedulerName": "default-scheduler",
        "tolerations": [{"key": "k", "operator": "Exists"}],
    });
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let mut metadata = json!({"generateName": "web-", "namespace": "default"});
    if !annotations.is_empty() {
        metadata["annotations"] = Value::Object(annotations);
    }
    serde_json::from_value(json!({"metadata": metadata, "spec": spec})).unwrap()
}

fn apply(pod: &Pod, patch: &[PatchOp]) -> Pod {
    let mut doc = serde_json::to_value(pod).unwrap();
    let ops: json_patch::Patch =
        serde_json::from_value(serde_json::to_value(patch).unwrap()).unwrap();
    json_patch::patch(&mut doc, &ops.0).unwrap();
    serde_json::from_value(doc).unwrap()
}

fn admitted(v: Verdict) -> (Vec<PatchOp>, Vec<String>) {
    match v {
        Verdict::Admit { patch, warnings } => (patch, warnings),
        Verdict::Deny(d) => panic!("unexpected denial: {d}"),
    }
}

fn denied(v: Verdict) -> Denial {
    match v {
        Verdict::Deny(d) => d,
        Verdict::Admit { patch, .. } => panic!("unexpected admission with patch {patch:?}"),
    }
}

/// Decides, applies, checks that a second pass changes nothing, and returns the patched pod.
fn mutate(p: &Pod, ns_opted_in: bool, c: &HintContext<'_>) -> (Pod, Vec<PatchOp>) {
    let (patch, _) = admitted(decide(p, ns_opted_in, c));
    let patched = apply(p, &patch);
    let (again, _) = admitted(decide(&patched, ns_opted_in, c));
    assert!(again.is_empty(), "second pass added {again:?}");
    (patched, patch)
}

fn affinity_json(p: &Pod) -> Value {
    serde_json::to_value(&p.spec.as_ref().unwrap().affinity).unwrap()
}

#[test]
fn pods_that_do_not_opt_in_are_left_alone() {
    let cat = catalog();
    let p = pod(&[("example.com/x", "y")], json!({}));
    assert_eq!(decide(&p, false, &ctx(&cat, None)), Verdict::unchanged());
}

#[test]
fn managed_namespace_sets_only_the_scheduler_name() {
    let cat = catalog();
    let p = pod(&[], json!({}));
    let (patched, patch) = mutate(&p, true, &ctx(&cat, None));
    assert_eq!(
        serde_json::to_value(&patch).unwrap(),
        json!([{"op": "add", "path": "/spec/schedulerName", "value": "gantry"}])
    );
    assert_eq!(
        patched.spec.unwrap().scheduler_name.as_deref(),
        Some("gantry")
    );
}

#[test]
fn scheduler_name_flag_off_keeps_the_name() {
    let cat = catalog();
    let mut c = ctx(&cat, None);
    c.set_scheduler_name = false;
    let p = pod(&[("gantry.dev/arch", "arm64")], json!({}));
    let (patched, _) = mutate(&p, true, &c);
    assert_eq!(
        patched.spec.unwrap().scheduler_name.as_deref(),
        Some("default-scheduler")
    );
}

#[test]
fn a_pod_already_on_gantry_without_hints_needs_nothing() {
    let cat = catalog();
    let p = pod(&[], json!({"schedulerName": "gantry"}));
    assert_eq!(decide(&p, false, &ctx(&cat, None)), Verdict::unchanged());
}

#[test]
fn another_custom_scheduler_is_kept_with_a_warning() {
    let cat = catalog();
    let p = pod(
        &[("gantry.dev/arch", "amd64")],
        json!({"schedulerName": "volcano"}),
    );
    let (patch, warnings) = admitted(decide(&p, false, &ctx(&cat, None)));
    assert!(patch.iter().all(|op| op.path != "/spec/schedulerName"));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("volcano"));
}

#[test]
fn hints_create_the_whole_affinity_when_absent() {
    let cat = catalog();
    let p = pod(
        &[
            ("gantry.dev/capacity-type", "spot"),
            ("gantry.dev/instance-family", "m7i, c7i"),
            ("gantry.dev/zone", "us-east-1a"),
            ("gantry.dev/do-not-disrupt", "true"),
        ],
        json!({}),
    );
    let (patched, patch) = mutate(&p, false, &ctx(&cat, None));
    assert_eq!(patch.len(), 2, "{patch:?}");
    assert_eq!(patch[1].path, "/spec/affinity");
    assert_eq!(
        affinity_json(&patched),
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "gantry.dev/capacity-type", "operator": "In", "values": ["spot"]},
            {"key": "gantry.dev/instance-family", "operator": "In", "values": ["m7i", "c7i"]},
            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1a"]},
        ]}]}}})
    );
}

#[test]
fn hints_are_anded_into_every_existing_term() {
    let cat = catalog();
    let p = pod(
        &[("gantry.dev/arch", "arm64")],
        json!({"affinity": {
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []},
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]},
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]},
            {"matchExpressions": []},
        ]}}}}),
    );
    let (patched, patch) = mutate(&p, false, &ctx(&cat, None));
    let paths: Vec<&str> = patch.iter().map(|op| op.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/spec/schedulerName",
            "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchExpressions/-",
            "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/1/matchExpressions",
        ]
    );
    let arch = json!({"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]});
    let terms = affinity_json(&patched)["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .clone();
    assert_eq!(terms[0]["matchExpressions"][1], arch);
    assert_eq!(terms[1]["matchExpressions"], json!([arch]));
    assert_eq!(terms[1]["matchFields"][0]["key"], "metadata.name");
    assert_eq!(terms[2]["matchExpressions"], json!([arch]));
    // The empty term matches nothing; filling it would loosen the pod.
    assert_eq!(terms[3]["matchExpressions"], json!([]));
}

#[test]
fn spot_preferred_adds_only_a_preferred_term() {
    let cat = catalog();
    let p = pod(
        &[("gantry.dev/capacity-type", "spot-preferred")],
        json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]}}
        ]}}}),
    );
    let (patched, patch) = mutate(&p, false, &ctx(&cat, None));
    assert_eq!(
        patch[1].path,
        "/spec/affinity/nodeAffinity/preferredDuringSchedulingIgnoredDuringExecution/-"
    );
    let na = &affinity_json(&patched)["nodeAffinity"];
    assert!(
        na.get("requiredDuringSchedulingIgnoredDuringExecution")
            .is_none()
    );
    assert_eq!(
        na["preferredDuringSchedulingIgnoredDuringExecution"][1],
        json!({"weight": 50, "preference": {"matchExpressions": [{"key": "gantry.dev/capacity-type", "operator": "In", "values": ["spot"]}]}})
    );
}

#[test]
fn missing_parents_are_added_whole() {
    let cat = catalog();
    let hints = [
        ("gantry.dev/nodepool", "general"),
        ("gantry.dev/capacity-type", "spot-preferred"),
    ];
    let p = pod(&hints, json!({"affinity": {}}));
    let (_, patch) = mutate(&p, false, &ctx(&cat, None));
    assert_eq!(patch[1].path, "/spec/affinity/nodeAffinity");
    let p = pod(&hints, json!({"affinity": {"nodeAffinity": {}}}));
    let (patched, patch) = mutate(&p, false, &ctx(&cat, None));
    let paths: Vec<&str> = patch.iter().map(|op| op.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/spec/schedulerName",
            "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution",
            "/spec/affinity/nodeAffinity/preferredDuringSchedulingIgnoredDuringExecution",
        ]
    );
    assert_eq!(
        affinity_json(&patched)["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
        json!({"nodeSelectorTerms": [{"matchExpressions": [{"key": "gantry.dev/nodepool", "operator": "In", "values": ["general"]}]}]})
    );
}

#[test]
fn a_stricter_existing_requirement_is_not_repeated() {
    let cat = catalog();
    let p = pod(
        &[("gantry.dev/zone", "us-east-1a,us-east-1b")],
        json!({"schedulerName": "gantry", "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1b"]}]}
        ]}}}}),
    );
    assert_eq!(decide(&p, false, &ctx(&cat, None)), Verdict::unchanged());
}

fn deny_of(annotations: &[(&str, &str)], spec: Value, pools: Option<&[NodePool]>) -> Denial {
    let cat = catalog();
    denied(decide(&pod(annotations, spec), false, &ctx(&cat, pools)))
}

#[test]
fn bad_hints_are_denied_with_annotation_value_and_reason() {
    let cases: &[(&str, &str, DenialKind, &str)] = &[
        (
            "gantry.dev/zones",
            "us-east-1a",
            DenialKind::UnknownKey,
            "placement hint gantry.dev/zones=us-east-1a: unknown hint; the known hints are gantry.dev/capacity-type, gantry.dev/instance-family, gantry.dev/arch, gantry.dev/zone, gantry.dev/nodepool, gantry.dev/do-not-disrupt",
        ),
        (
            "gantry.dev/capacity-type",
            "cheap",
            DenialKind::InvalidValue,
            "placement hint gantry.dev/capacity-type=cheap: invalid value; expected spot, on-demand or spot-preferred",
        ),
        (
            "gantry.dev/arch",
            "x86_64",
            DenialKind::InvalidValue,
            "placement hint gantry.dev/arch=x86_64: invalid value; expected amd64 or arm64",
        ),
        (
            "gantry.dev/instance-family",
            "m7i,,c7i",
            DenialKind::InvalidValue,
            "placement hint gantry.dev/instance-family=m7i,,c7i: invalid value; expected a comma-separated list of instance families with no empty items",
        ),
        (
            "gantry.dev/zone",
            "us east",
            DenialKind::InvalidValue,
            "placement hint gantry.dev/zone=us east: invalid value; \"us east\" is not a valid label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)",
        ),
        (
            "gantry.dev/nodepool",
            "Gen",
            DenialKind::InvalidValue,
            "placement hint gantry.dev/nodepool=Gen: invalid value; expected a NodePool name (lower-case letters, digits, '-' or '.', at most 63 characters)",
        ),
        (
            "gantry.dev/do-not-disrupt",
            "yes",
            DenialKind::InvalidValue,
            "placement hint gantry.dev/do-not-disrupt=yes: invalid value; expected \"true\"",
        ),
        (
            "gantry.dev/instance-family",
            "m7i,x9z",
            DenialKind::NotInCatalog,
            "placement hint gantry.dev/instance-family=m7i,x9z: instance family x9z is not in the catalog",
        ),
        (
            "gantry.dev/zone",
            "zone-z",
            DenialKind::NotInCatalog,
            "placement hint gantry.dev/zone=zone-z: zone-z is not a known zone (known zones: us-east-1a, us-east-1b)",
        ),
    ];
    for (annotation, value, kind, message) in cases {
        let d = deny_of(&[(annotation, value)], json!({}), None);
        assert_eq!(d.kind, *kind, "{annotation}={value}");
        assert_eq!(d.to_string(), *message);
    }
}

#[test]
fn long_values_are_cut_in_messages() {
    let long = "x".repeat(500);
    let d = deny_of(&[("gantry.dev/arch", &long)], json!({}), None);
    assert!(d.to_string().len() < 200, "{d}");
}

#[test]
fn family_and_arch_must_meet_in_the_catalog() {
    let d = deny_of(
        &[
            ("gantry.dev/arch", "amd64"),
            ("gantry.dev/instance-family", "m7g"),
        ],
        json!({}),
        None,
    );
    assert_eq!(d.kind, DenialKind::NotInCatalog);
    assert_eq!(
        d.to_string(),
        "placement hints gantry.dev/arch=amd64, gantry.dev/instance-family=m7g: none of the instance families has amd64 instance types in the catalog"
    );
}

#[test]
fn contradictions_with_the_pod_are_denied() {
    let d = deny_of(
        &[("gantry.dev/arch", "arm64")],
        json!({"nodeSelector": {"kubernetes.io/arch": "amd64"}}),
        None,
    );
    assert_eq!(d.kind, DenialKind::ContradictsPod);
    assert_eq!(
        d.to_string(),
        "placement hint gantry.dev/arch=arm64: contradicts the pod's nodeSelector kubernetes.io/arch=amd64"
    );
    // Karpenter's key is an alias of Gantry's.
    let d = deny_of(
        &[("gantry.dev/capacity-type", "spot-preferred")],
        json!({"nodeSelector": {"karpenter.sh/capacity-type": "on-demand"}}),
        None,
    );
    assert_eq!(d.kind, DenialKind::ContradictsPod);
    // An instance type pins the family.
    let d = deny_of(
        &[("gantry.dev/instance-family", "c7i")],
        json!({"nodeSelector": {"node.kubernetes.io/instance-type": "m7i.large"}}),
        None,
    );
    assert_eq!(d.kind, DenialKind::ContradictsPod);
    let d = deny_of(
        &[("gantry.dev/zone", "us-east-1a")],
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "NotIn", "values": ["us-east-1a"]}]}
        ]}}}}),
        None,
    );
    assert_eq!(
        d.to_string(),
        "placement hint gantry.dev/zone=us-east-1a: contradicts the pod's required node affinity (topology.kubernetes.io/zone NotIn [us-east-1a])"
    );
    // Each hint fits one term, but no term takes both.
    let d = deny_of(
        &[
            ("gantry.dev/arch", "arm64"),
            ("gantry.dev/zone", "us-east-1a"),
        ],
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}, {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1b"]}]},
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}
        ]}}}}),
        None,
    );
    assert_eq!(
        d.to_string(),
        "placement hints gantry.dev/arch=arm64, gantry.dev/zone=us-east-1a: no required node-affinity term of the pod admits all of them together"
    );
}

#[test]
fn a_hint_compatible_with_one_term_is_admitted() {
    let cat = catalog();
    let p = pod(
        &[("gantry.dev/arch", "arm64")],
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]},
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "Exists"}]}
        ]}}}}),
    );
    mutate(&p, false, &ctx(&cat, None));
}

fn pools() -> Vec<NodePool> {
    vec![
        pool(
            "general",
            &[
                ("kubernetes.io/arch", "In", &["amd64"]),
                ("karpenter.sh/capacity-type", "In", &["on-demand", "spot"]),
                ("karpenter.k8s.aws/instance-family", "In", &["m7i", "c7i"]),
            ],
        ),
        pool(
            "graviton",
            &[
                ("kubernetes.io/arch", "In", &["arm64"]),
                ("gantry.dev/capacity-type", "NotIn", &["spot"]),
                ("topology.kubernetes.io/zone", "In", &["us-east-1b"]),
                ("gantry.dev/instance-family", "In", &["m7g"]),
            ],
        ),
        pool(
            "pinned",
            &[("node.kubernetes.io/instance-type", "In", &["m7i.xlarge"])],
        ),
    ]
}

#[test]
fn hints_no_nodepool_can_satisfy_are_denied() {
    let ps = pools();
    let d = deny_of(&[("gantry.dev/nodepool", "gpu")], json!({}), Some(&ps));
    assert_eq!(d.kind, DenialKind::NoNodePool);
    assert_eq!(
        d.to_string(),
        "placement hint gantry.dev/nodepool=gpu: no NodePool named gpu exists"
    );
    let d = deny_of(
        &[("gantry.dev/instance-family", "c7g")],
        json!({}),
        Some(&ps),
    );
    assert_eq!(
        d.to_string(),
        "placement hint gantry.dev/instance-family=c7g: no NodePool allows it (general requires kubernetes.io/arch In [amd64] and karpenter.k8s.aws/instance-family In [m7i,c7i]; graviton requires kubernetes.io/arch In [arm64] and gantry.dev/instance-family In [m7g]; pinned requires node.kubernetes.io/instance-type In [m7i.xlarge])"
    );
    // Spot in us-east-1b: general allows spot, graviton allows the zone, neither both.
    let d = deny_of(
        &[
            ("gantry.dev/capacity-type", "spot"),
            ("gantry.dev/arch", "arm64"),
        ],
        json!({}),
        Some(&ps),
    );
    assert_eq!(d.kind, DenialKind::NoNodePool);
    assert_eq!(
        d.to_string(),
        "placement hints gantry.dev/arch=arm64, gantry.dev/capacity-type=spot: each is allowed by some NodePool, but no single NodePool allows all of them"
    );
    let d = deny_of(&[("gantry.dev/arch", "amd64")], json!({}), Some(&[]));
    assert_eq!(
        d.to_string(),
        "placement hint gantry.dev/arch=amd64: no NodePool exists, so no node can be launched for it"
    );
}

#[test]
fn hints_some_nodepool_satisfies_are_admitted() {
    let cat = catalog();
    let ps = pools();
    for hints in [
        vec![("gantry.dev/instance-family", "m7g")],
        vec![
            ("gantry.dev/arch", "arm64"),
            ("gantry.dev/zone", "us-east-1b"),
        ],
        vec![
            ("gantry.dev/nodepool", "pinned"),
            ("gantry.dev/instance-family", "m7i"),
        ],
        vec![
            ("gantry.dev/capacity-type", "spot"),
            ("gantry.dev/instance-family", "c7i"),
        ],
    ] {
        let p = pod(&hints, json!({}));
        mutate(&p, false, &ctx(&cat, Some(&ps)));
    }
    // Before the cache syncs, only the local checks run.
    let p = pod(&[("gantry.dev/nodepool", "gpu")], json!({}));
    mutate(&p, false, &ctx(&cat, None));
}

#[test]
fn spot_preferred_without_spot_pools_warns() {
    let cat = catalog();
    let ps = vec![pool(
        "od",
        &[("gantry.dev/capacity-type", "In", &["on-demand"])],
    )];
    let p = pod(&[("gantry.dev/capacity-type", "spot-preferred")], json!({}));
    let (_, warnings) = admitted(decide(&p, false, &ctx(&cat, Some(&ps))));
    assert_eq!(
        warnings,
        [
            "gantry.dev/capacity-type=spot-preferred: no NodePool allows spot capacity, so the preference has no effect"
        ]
    );
}

#[test]
fn pointer_tokens_are_escaped() {
    assert_eq!(escape_pointer_token("gantry.dev/a~b"), "gantry.dev~1a~0b");
    assert_eq!(escape_pointer_token("~1"), "~01");
    assert_eq!(pointer(&["spec", "a/b", "-"]), "/spec/a~1b/-");
}

// ---- invariants -------------------------------------------------------------------------

const KEYS: [&str; 6] = [
    "kubernetes.io/arch",
    "gantry.dev/capacity-type",
    "karpenter.sh/capacity-type",
    "topology.kubernetes.io/zone",
    "gantry.dev/instance-family",
    "team",
];
const VALUES: [&str; 8] = [
    "amd64",
    "arm64",
    "spot",
    "on-demand",
    "us-east-1a",
    "us-east-1b",
    "m7i",
    "m7g",
];
const OPS: [&str; 5] = ["In", "NotIn", "Exists", "DoesNotExist", "Gt"];

fn expression() -> impl Strategy<Value = Value> {
    (
        0..KEYS.len(),
        0..OPS.len(),
        proptest::sample::subsequence(VALUES.to_vec(), 1..3),
    )
        .prop_map(|(k, o, vs)| {
            let op = OPS[o];
            let values: Vec<&str> = match op {
                "Exists" | "DoesNotExist" => vec![],
                "Gt" => vec!["3"],
                _ => vs,
            };
            json!({"key": KEYS[k], "operator": op, "values": values})
        })
}

fn term() -> impl Strategy<Value = Value> {
    (proptest::collection::vec(expression(), 0..3), any::<bool>()).prop_map(|(exprs, fields)| {
        let mut t = json!({"matchExpressions": exprs});
        if fields {
            t["matchFields"] =
                json!([{"key": "metadata.name", "operator": "In", "values": ["n1"]}]);
        }
        t
    })
}

/// Affinity at every level of presence: absent, empty, nodeAffinity empty, or with terms.
fn affinity() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(json!({}))),
        Just(Some(json!({"nodeAffinity": {}}))),
        (
            proptest::option::of(proptest::collection::vec(term(), 0..3)),
            proptest::option::of(proptest::collection::vec(term(), 0..2)),
        )
            .prop_map(|(required, preferred)| {
                let mut na = json!({});
                if let Some(terms) = required {
                    na["requiredDuringSchedulingIgnoredDuringExecution"] =
                        json!({"nodeSelectorTerms": terms});
                }
                if let Some(terms) = preferred {
                    na["preferredDuringSchedulingIgnoredDuringExecution"] = Value::Array(
                        terms
                            .into_iter()
                            .map(|t| json!({"weight": 7, "preference": t}))
                            .collect(),
                    );
                }
                Some(json!({"nodeAffinity": na}))
            }),
    ]
}

fn hints() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
    (
        proptest::option::of(proptest::sample::select(vec![
            "spot",
            "on-demand",
            "spot-preferred",
        ])),
        proptest::option::of(proptest::sample::select(vec!["m7i", "m7g", "m7i,c7i"])),
        proptest::option::of(proptest::sample::select(vec!["amd64", "arm64"])),
        proptest::option::of(proptest::sample::select(vec![
            "us-east-1a",
            "us-east-1a,us-east-1b",
        ])),
        any::<bool>(),
    )
        .prop_map(|(ct, fam, arch, zone, dnd)| {
            let mut out = Vec::new();
            if let Some(v) = ct {
                out.push(("gantry.dev/capacity-type", v));
            }
            if let Some(v) = fam {
                out.push(("gantry.dev/instance-family", v));
            }
            if let Some(v) = arch {
                out.push(("gantry.dev/arch", v));
            }
            if let Some(v) = zone {
                out.push(("gantry.dev/zone", v));
            }
            if dnd {
                out.push(("gantry.dev/do-not-disrupt", "true"));
            }
            out
        })
}

fn node_selector() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(
        proptest::sample::select(KEYS.to_vec()).prop_map(str::to_string),
        proptest::sample::select(VALUES.to_vec()).prop_map(str::to_string),
        0..2,
    )
}

/// A random node: each key is absent or carries one of the values.
fn node() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(
        proptest::sample::select(KEYS.to_vec()).prop_map(str::to_string),
        proptest::sample::select(VALUES.to_vec()).prop_map(str::to_string),
        0..KEYS.len(),
    )
}

/// Whether the scheduler's required node-affinity and nodeSelector admit the node
/// (matchFields are taken as matching: the webhook never touches them).
fn schedulable_on(p: &Pod, node: &BTreeMap<String, String>) -> bool {
    let spec = p.spec.as_ref().unwrap();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| node.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affinity_ok = required.is_none_or(|sel| {
        sel.node_selector_terms.iter().any(|t| {
            !term_is_empty(t)
                && t.match_expressions.iter().flatten().all(|e| {
                    hint_requirement_admits(
                        &e.operator,
                        e.values.as_deref().unwrap_or_default(),
                        node.get(&e.key).map(String::as_str),
                    )
                })
        })
    });
    selector_ok && affinity_ok
}

fn without_placement(p: &Pod) -> Value {
    let mut v = serde_json::to_value(p).unwrap();
    v["spec"]["affinity"] = Value::Null;
    v["spec"]["schedulerName"] = Value::Null;
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_patch_never_removes_or_loosens_a_constraint(
        hints in hints(),
        selector in node_selector(),
        aff in affinity(),
        ns_opted_in in any::<bool>(),
        with_pools in any::<bool>(),
        nodes in proptest::collection::vec(node(), 16),
    ) {
        let cat = catalog();
        let ps = pools();
        let c = ctx(&cat, with_pools.then_some(ps.as_slice()));
        let mut extra = json!({"nodeSelector": selector});
        if let Some(a) = aff {
            extra["affinity"] = a;
        }
        let original = pod(&hints, extra);
        let Verdict::Admit { patch, .. } = decide(&original, ns_opted_in, &c) else {
            return Ok(());
        };
        prop_assert!(patch.iter().all(|op| op.op == "add"));
        let patched = apply(&original, &patch);

        // Nothing outside affinity and schedulerName changed.
        prop_assert_eq!(without_placement(&original), without_placement(&patched));
        // Every original term is still there, in place, as a prefix of its patched self.
        let terms = |p: &Pod| {
            affinity_json(p)["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"].clone()
        };
        if let Value::Array(before) = terms(&original) {
            let after = terms(&patched);
            let after = after.as_array().unwrap();
            prop_assert_eq!(before.len(), after.len());
            for (b, a) in before.iter().zip(after) {
                prop_assert_eq!(&b["matchFields"], &a["matchFields"]);
                let (b, a) = (b["matchExpressions"].as_array().cloned().unwrap_or_default(),
                              a["matchExpressions"].as_array().cloned().unwrap_or_default());
                prop_assert!(a.starts_with(&b));
            }
        }
        let preferred = |p: &Pod| {
            affinity_json(p)["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
                .as_array().cloned().unwrap_or_default()
        };
        prop_assert!(preferred(&patched).starts_with(&preferred(&original)));
        // Semantically: every node the patched pod may land on, the original could too.
        for n in &nodes {
            if schedulable_on(&patched, n) {
                prop_assert!(schedulable_on(&original, n), "loosened for node {:?}", n);
            }
        }
        // And a second pass adds nothing.
        let again = decide(&patched, ns_opted_in, &c);
        prop_assert!(matches!(&again, Verdict::Admit { patch, .. } if patch.is_empty()), "{:?}", again);
    }

    #[test]
    fn arbitrary_annotations_never_panic(
        entries in proptest::collection::btree_map("gantry\\.dev/[a-z-]{0,16}", "\\PC{0,40}", 0..4),
    ) {
        let cat = catalog();
        let ps = pools();
        let pairs: Vec<(&str, &str)> = entries.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let p = pod(&pairs, json!({}));
        let _ = decide(&p, true, &ctx(&cat, Some(&ps)));
    }
}

#[test]
fn family_and_arch_hints_are_checked_across_keys_against_the_pod() {
    // The family is arm64-only, the pod pins amd64.
    let d = deny_of(
        &[("gantry.dev/instance-family", "m7g")],
        json!({"nodeSelector": {"kubernetes.io/arch": "amd64"}}),
        None,
    );
    assert_eq!(d.kind, DenialKind::ContradictsPod);
    assert_eq!(
        d.to_string(),
        "placement hint gantry.dev/instance-family=m7g: contradicts the pod's nodeSelector kubernetes.io/arch=amd64: no instance family in the catalog fits both"
    );
    // The pod pins an amd64 instance type, the hint asks for arm64.
    let d = deny_of(
        &[
            ("gantry.dev/arch", "arm64"),
            ("gantry.dev/instance-family", "m7i,m7g"),
        ],
        json!({"nodeSelector": {"node.kubernetes.io/instance-type": "m7i.large"}}),
        None,
    );
    assert_eq!(d.kind, DenialKind::ContradictsPod);
    // Same in required affinity.
    let d = deny_of(
        &[("gantry.dev/arch", "amd64")],
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "karpenter.k8s.aws/instance-family", "operator": "In", "values": ["m7g", "c7g"]}]}
        ]}}}}),
        None,
    );
    assert_eq!(
        d.to_string(),
        "placement hint gantry.dev/arch=amd64: contradicts the pod's required node affinity: no instance family in the catalog fits both"
    );
    // A compatible mix is admitted.
    let cat = catalog();
    let p = pod(
        &[("gantry.dev/arch", "arm64")],
        json!({"nodeSelector": {"gantry.dev/instance-family": "m7g"},
               "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "gantry.dev/instance-family", "operator": "NotIn", "values": ["m7i"]}]}
        ]}}}}),
    );
    mutate(&p, false, &ctx(&cat, None));
}

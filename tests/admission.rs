//! The admission webhook over HTTP, in-process with `oneshot`: golden AdmissionReviews with
//! their decoded patches, patches applied with `json-patch`, and malformed input.
//!
//! Goldens live in `tests/admission/golden/`: `NN-name.review.json` holds the request path and
//! the AdmissionReview; `NN-name.expected.json` the expected status, allowed flag, decoded
//! patch and message. `GANTRY_UPDATE_GOLDENS=1 cargo test --test admission` rewrites the
//! expected files (review the diff before committing).

// A test binary: helpers outside #[test] fns may panic on broken fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use gantry::admission::wire::AdmissionReviewOut;
use gantry::admission::{AdmissionConfig, AdmissionState, NodePoolSnapshot, router};
use gantry::kube::crd::NodePool;
use gantry::model::Catalog;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/admission/golden")
}

fn node_pools() -> Vec<NodePool> {
    serde_json::from_value(json!([
        {"apiVersion": "gantry.dev/v1", "kind": "NodePool", "metadata": {"name": "general"},
         "spec": {"template": {"spec": {
            "nodeClassRef": {"group": "gantry.dev", "kind": "EC2NodeClass", "name": "default"},
            "requirements": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
                {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot", "on-demand"]},
                {"key": "karpenter.k8s.aws/instance-family", "operator": "In", "values": ["m7i", "c7i", "r7i"]}
            ]}}}},
        {"apiVersion": "gantry.dev/v1", "kind": "NodePool", "metadata": {"name": "graviton"},
         "spec": {"template": {"spec": {
            "nodeClassRef": {"group": "gantry.dev", "kind": "EC2NodeClass", "name": "default"},
            "requirements": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]},
                {"key": "gantry.dev/instance-family", "operator": "NotIn", "values": ["a1"]}
            ]}}}}
    ]))
    .expect("node pools parse")
}

fn state_with(pools: Option<Vec<NodePool>>, config: AdmissionConfig) -> AdmissionState {
    let snapshot: NodePoolSnapshot = AdmissionState::unsynced_node_pools();
    snapshot.store(Arc::new(pools));
    let catalog = Catalog::embedded().expect("embedded catalog");
    AdmissionState::new(config, snapshot, &catalog)
}

fn state() -> AdmissionState {
    state_with(Some(node_pools()), AdmissionConfig::default())
}

async fn post(state: AdmissionState, path: &str, body: Vec<u8>) -> (StatusCode, String, Vec<u8>) {
    let request = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("request");
    let response = router(state).oneshot(request).await.expect("infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, content_type, body)
}

fn decoded_patch(out: &AdmissionReviewOut) -> Option<Value> {
    out.response.patch.as_ref().map(|p| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(p)
            .expect("patch is standard base64");
        serde_json::from_slice(&bytes).expect("patch is JSON")
    })
}

fn apply(object: &Value, patch: &Value) -> Value {
    let mut doc = object.clone();
    let ops: json_patch::Patch = serde_json::from_value(patch.clone()).expect("valid JSON Patch");
    json_patch::patch(&mut doc, &ops.0).expect("patch applies");
    doc
}

#[tokio::test]
async fn golden_reviews_give_the_expected_verdicts_and_patches() {
    let update = std::env::var_os("GANTRY_UPDATE_GOLDENS").is_some();
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("golden dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".review.json"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "goldens missing: {files:?}");
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let case: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let path = case["path"].as_str().unwrap();
        let review = &case["review"];
        let uid = review["request"]["uid"].as_str().unwrap();
        let (status, content_type, body) =
            post(state(), path, serde_json::to_vec(review).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(content_type, "application/json", "{name}");
        let raw: Value = serde_json::from_slice(&body).unwrap();
        let out: AdmissionReviewOut = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(out.api_version, "admission.k8s.io/v1", "{name}");
        assert_eq!(out.kind, "AdmissionReview", "{name}");
        assert_eq!(out.response.uid, uid, "{name}");
        // patch and patchType come together or not at all (PROTOCOL.md §H.5).
        assert_eq!(
            out.response.patch.is_some(),
            out.response.patch_type.as_deref() == Some("JSONPatch"),
            "{name}"
        );
        let patch = decoded_patch(&out);
        let got = json!({
            "allowed": out.response.allowed,
            "patch": patch,
            "code": out.response.status.as_ref().map(|s| s.code),
            "message": out.response.status.as_ref().map(|s| s.message.clone()),
            "warnings": out.response.warnings,
        });
        let expected_file = golden_dir().join(name.replace(".review.json", ".expected.json"));
        if update {
            let mut text = serde_json::to_string_pretty(&got).unwrap();
            text.push('\n');
            std::fs::write(&expected_file, text).unwrap();
        } else {
            let expected: Value = serde_json::from_slice(
                &std::fs::read(&expected_file)
                    .unwrap_or_else(|_| panic!("{} missing", expected_file.display())),
            )
            .unwrap();
            assert_eq!(got, expected, "{name}");
        }
        // The patch applies to the object as sent, and a second pass adds nothing.
        if let Some(patch) = patch {
            let patched = apply(&review["request"]["object"], &patch);
            let mut again = review.clone();
            again["request"]["object"] = patched.clone();
            let (status, _, body) = post(state(), path, serde_json::to_vec(&again).unwrap()).await;
            assert_eq!(status, StatusCode::OK, "{name}");
            let out: AdmissionReviewOut = serde_json::from_slice(&body).unwrap();
            assert!(out.response.allowed, "{name}: second pass denied");
            assert_eq!(out.response.patch, None, "{name}: second pass patched");
            assert_eq!(
                patched["spec"]["schedulerName"], "gantry",
                "{name}: patched pod must go to gantry"
            );
        }
    }
}

fn golden_review(prefix: &str) -> Value {
    let file = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with(prefix) && n.ends_with(".review.json")
        })
        .unwrap();
    let case: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    case["review"].clone()
}

#[tokio::test]
async fn the_applied_patch_gives_the_pod_its_constraints() {
    let review = golden_review("03-");
    let (_, _, body) = post(
        state(),
        "/admission/pods",
        serde_json::to_vec(&review).unwrap(),
    )
    .await;
    let out: AdmissionReviewOut = serde_json::from_slice(&body).unwrap();
    let patched = apply(&review["request"]["object"], &decoded_patch(&out).unwrap());
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(patched).unwrap();
    let spec = pod.spec.unwrap();
    assert_eq!(spec.scheduler_name.as_deref(), Some("gantry"));
    let terms = spec
        .affinity
        .unwrap()
        .node_affinity
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .unwrap()
        .node_selector_terms;
    assert_eq!(terms.len(), 1);
    let exprs = terms[0].match_expressions.clone().unwrap();
    let keys: Vec<&str> = exprs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "gantry.dev/capacity-type",
            "gantry.dev/instance-family",
            "topology.kubernetes.io/zone"
        ]
    );
    // The rest of the pod is untouched.
    assert_eq!(spec.containers.len(), 1);
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
}

#[tokio::test]
async fn the_nodepool_check_is_skipped_until_the_cache_syncs() {
    let review = golden_review("11-");
    let unsynced = state_with(None, AdmissionConfig::default());
    let (status, _, body) = post(
        unsynced,
        "/admission/pods",
        serde_json::to_vec(&review).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let out: AdmissionReviewOut = serde_json::from_slice(&body).unwrap();
    assert!(out.response.allowed);
    assert!(out.response.patch.is_some());
}

#[tokio::test]
async fn the_scheduler_name_flag_can_turn_the_rename_off() {
    let review = golden_review("02-");
    let config = AdmissionConfig {
        set_scheduler_name: false,
        ..AdmissionConfig::default()
    };
    let (_, _, body) = post(
        state_with(Some(node_pools()), config),
        "/admission/pods/managed-namespace",
        serde_json::to_vec(&review).unwrap(),
    )
    .await;
    let out: AdmissionReviewOut = serde_json::from_slice(&body).unwrap();
    assert!(out.response.allowed);
    assert_eq!(out.response.patch, None);
}

#[tokio::test]
async fn malformed_reviews_get_400_with_a_message() {
    let good = golden_review("03-");
    let mut wrong_version = good.clone();
    wrong_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut no_request = good.clone();
    no_request.as_object_mut().unwrap().remove("request");
    let mut no_uid = good.clone();
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    let mut bad_object = good.clone();
    bad_object["request"]["object"]["spec"] = json!("not a spec");
    let mut wrong_object_kind = good.clone();
    wrong_object_kind["request"]["object"]["kind"] = json!("Service");
    let mut no_object = good.clone();
    no_object["request"]["object"] = Value::Null;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty body", Vec::new(), "body is not an AdmissionReview"),
        (
            "not JSON",
            b"{\"kind\":".to_vec(),
            "body is not an AdmissionReview",
        ),
        (
            "JSON array",
            b"[1,2]".to_vec(),
            "body is not an AdmissionReview",
        ),
        (
            "wrong version",
            serde_json::to_vec(&wrong_version).unwrap(),
            "expected apiVersion admission.k8s.io/v1",
        ),
        (
            "no request",
            serde_json::to_vec(&no_request).unwrap(),
            "AdmissionReview has no request",
        ),
        (
            "no uid",
            serde_json::to_vec(&no_uid).unwrap(),
            "missing field `uid`",
        ),
        (
            "bad object",
            serde_json::to_vec(&bad_object).unwrap(),
            "request.object is not a Pod",
        ),
        (
            "object of another kind",
            serde_json::to_vec(&wrong_object_kind).unwrap(),
            "request.object is not a Pod",
        ),
        (
            "no object",
            serde_json::to_vec(&no_object).unwrap(),
            "pod CREATE review has no object",
        ),
    ];
    for (what, body, message) in cases {
        let (status, content_type, body) = post(state(), "/admission/pods", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}");
        assert!(
            content_type.starts_with("text/plain"),
            "{what}: {content_type}"
        );
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains(message), "{what}: {text}");
    }
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused() {
    let config = AdmissionConfig {
        body_limit_bytes: 1024,
        ..AdmissionConfig::default()
    };
    let review = golden_review("03-");
    let body = serde_json::to_vec(&review).unwrap();
    assert!(body.len() > 1024);
    let (status, _, _) = post(state_with(None, config), "/admission/pods", body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn only_post_on_the_two_paths_is_served() {
    let review = serde_json::to_vec(&golden_review("01-")).unwrap();
    let (status, _, _) = post(state(), "/admission/pod", review.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let request = Request::get("/admission/pods").body(Body::empty()).unwrap();
    let response = router(state()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn the_manifest_points_at_the_served_paths() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/webhook.yaml"),
    )
    .unwrap();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    let config = docs
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("a MutatingWebhookConfiguration");
    let webhooks = config["webhooks"].as_array().unwrap();
    assert_eq!(webhooks.len(), 2);
    for w in webhooks {
        let svc = &w["clientConfig"]["service"];
        assert_eq!(svc["name"], "gantry");
        assert_eq!(svc["namespace"], "gantry-system");
        assert_eq!(svc["port"], 8443);
        let path = svc["path"].as_str().unwrap();
        assert!(
            path == "/admission/pods" || path == "/admission/pods/managed-namespace",
            "{path}"
        );
        assert_eq!(w["failurePolicy"], "Ignore");
        assert_eq!(w["sideEffects"], "None");
        assert_eq!(w["timeoutSeconds"], 5);
        assert_eq!(w["admissionReviewVersions"], json!(["v1"]));
        let excluded = w["namespaceSelector"]["matchExpressions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == "kubernetes.io/metadata.name")
            .unwrap();
        assert_eq!(excluded["operator"], "NotIn");
        assert_eq!(excluded["values"], json!(["gantry-system", "kube-system"]));
        assert!(w["objectSelector"]["matchExpressions"].is_array());
    }
}

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! Foundation tests: wire goldens on the real captures, in-process router tests for every
//! outcome, bad input, the plain port, a real-TLS suite, and manifest parsing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use gantry::extender::client::{Alpn, ClientError, ExtenderClient, tls_config};
use gantry::extender::decide::PodFacts;
use gantry::extender::routes::{RequestLimits, decide_filter, decide_prioritize};
use gantry::extender::wire::{Candidates, parse_args};
use gantry::model::labels::{TAINT_DISRUPTED, TAINT_INITIALIZING};
use gantry::model::{Effect, Resources, Taint};
use gantry::server::tls::{ReloadOutcome, TlsFiles, TlsReloader};
use gantry::server::{AppState, health_router, https_router};
use gantry::state::{ClusterIndex, NodeView};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const FILTER_KEYS: [&str; 5] = [
    "Error",
    "FailedAndUnresolvableNodes",
    "FailedNodes",
    "NodeNames",
    "Nodes",
];

fn captures_dir() -> PathBuf {
    // The shared captures sit beside the repository (../shared), in CI and on developer machines.
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    for cand in [here.join("../shared/captures"), here.join("tests/captures")] {
        if cand.is_dir() {
            return cand;
        }
    }
    panic!("no captures directory found beside the repository");
}

fn capture(name: &str) -> Vec<u8> {
    std::fs::read(captures_dir().join(name)).unwrap()
}

fn node(name: &str, taint: Option<&str>) -> NodeView {
    NodeView {
        name: name.into(),
        allocatable: Resources::cpu_mem(4000, 8 << 30),
        ready: true,
        taints: taint
            .map(|k| vec![Taint::new(k, "true", Effect::NoSchedule)])
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// The rig's three nodes, with rig-node-c still gated, as in the recorded session.
fn rig_state() -> AppState {
    let app = AppState::new(Duration::from_secs(60));
    let mut idx = ClusterIndex::new();
    idx.apply_node(node("rig-node-a", None));
    idx.apply_node(node("rig-node-b", None));
    idx.apply_node(node("rig-node-c", Some(TAINT_INITIALIZING)));
    idx.set_nodes_synced();
    idx.set_pods_synced();
    app.cluster.publish(idx.snapshot());
    app
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn limits() -> RequestLimits {
    RequestLimits {
        max_body_bytes: 64 << 20,
        timeout: Duration::from_secs(5),
    }
}

// ---------------------------------------------------------------- goldens on the captures

#[test]
fn golden_filter_nodenames() {
    let app = rig_state();
    let args = parse_args(&capture("003-filter-nodenames.json")).unwrap();
    assert_eq!(
        args.pod.metadata.name.as_deref().map(|n| !n.is_empty()),
        Some(true)
    );
    let input: Vec<String> = match &args.candidates {
        Candidates::Names(n) => n.clone(),
        Candidates::Objects { .. } => panic!("cache-mode capture parsed as objects"),
    };
    let facts = PodFacts {
        uid: args.pod.metadata.uid.clone().unwrap(),
        ..Default::default()
    };
    let (reply, passed) = decide_filter(&app.cluster.load(), &facts, args.candidates.clone());
    let v = serde_json::to_value(&reply).unwrap();
    assert_eq!(
        keys(&v),
        FILTER_KEYS.iter().map(|s| s.to_string()).collect()
    );
    assert!(v["Nodes"].is_null(), "cache mode answers in NodeNames");
    assert_eq!(v["NodeNames"], json!(["rig-node-a", "rig-node-b"]));
    assert_eq!(passed, 2);
    let failed = v["FailedAndUnresolvableNodes"].as_object().unwrap();
    assert_eq!(failed.keys().collect::<Vec<_>>(), vec!["rig-node-c"]);
    assert_eq!(v["Error"], "");
    for n in v["NodeNames"].as_array().unwrap() {
        assert!(input.contains(&n.as_str().unwrap().to_string()));
    }
}

#[test]
fn golden_filter_full_nodes() {
    let app = AppState::new(Duration::from_secs(60));
    let mut idx = ClusterIndex::new();
    idx.set_nodes_synced();
    idx.set_pods_synced();
    app.cluster.publish(idx.snapshot());
    // The recorded answer rejected rig-node-c; in full-node mode the decision comes from the
    // objects themselves, so give rig-node-c the startup-gate taint in the request.
    let mut raw: Value = serde_json::from_slice(&capture("001-filter-nodes.json")).unwrap();
    let items = raw["Nodes"]["items"].as_array_mut().unwrap();
    let c = items
        .iter_mut()
        .find(|n| n["metadata"]["name"] == "rig-node-c")
        .unwrap();
    c["spec"]["taints"] =
        json!([{"key": TAINT_DISRUPTED, "value": "true", "effect": "NoSchedule"}]);
    let originals: Vec<Value> = items.clone();
    let args = parse_args(&serde_json::to_vec(&raw).unwrap()).unwrap();
    let (reply, passed) = decide_filter(
        &app.cluster.load(),
        &PodFacts::default(),
        args.candidates.clone(),
    );
    let v = serde_json::to_value(&reply).unwrap();
    assert_eq!(
        keys(&v),
        FILTER_KEYS.iter().map(|s| s.to_string()).collect()
    );
    assert!(v["NodeNames"].is_null(), "full mode answers in Nodes");
    assert_eq!(passed, 2);
    let out = v["Nodes"]["items"].as_array().unwrap();
    let names: Vec<&str> = out
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["rig-node-a", "rig-node-b"]);
    // Returned Node objects are the ones we were given, unchanged (unknown fields included).
    for n in out {
        assert!(originals.contains(n));
    }
    assert!(v["FailedAndUnresolvableNodes"]["rig-node-c"].is_string());
}

#[test]
fn golden_prioritize_both_modes() {
    let app = rig_state();
    for f in ["002-prioritize-nodes.json", "004-prioritize-nodenames.json"] {
        let args = parse_args(&capture(f)).unwrap();
        let facts = PodFacts::default();
        let scores = decide_prioritize(&app.cluster.load(), &facts, args.candidates.clone());
        let v = serde_json::to_value(&scores).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 2, "{f}");
        for e in arr {
            assert_eq!(
                keys(e),
                ["Host", "Score"].iter().map(|s| s.to_string()).collect()
            );
            assert!(e["Score"].is_i64(), "scores are JSON integers");
            let s = e["Score"].as_i64().unwrap();
            assert!((0..=10).contains(&s));
            assert!(["rig-node-a", "rig-node-b"].contains(&e["Host"].as_str().unwrap()));
        }
    }
}

#[test]
fn every_capture_parses() {
    let mut n = 0;
    for entry in std::fs::read_dir(captures_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("json") {
            let bytes = std::fs::read(&path).unwrap();
            let a = parse_args(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!a.candidates.is_empty());
            n += 1;
        }
    }
    assert_eq!(n, 4);
}

// ---------------------------------------------------------------- in-process router

async fn call(router: &axum::Router, path: &str, body: impl Into<Body>) -> (StatusCode, Value) {
    let resp = router
        .clone()
        .oneshot(
            Request::post(path)
                .header("content-type", "application/json")
                .body(body.into())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("non-JSON reply {e}: {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

#[tokio::test]
async fn router_filter_and_prioritize_ok() {
    let app = rig_state();
    let r = https_router(&app, limits(), false, None);
    let (s, v) = call(
        &r,
        "/scheduler/filter",
        capture("003-filter-nodenames.json"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["NodeNames"], json!(["rig-node-a", "rig-node-b"]));
    let (s, v) = call(&r, "/scheduler/filter", capture("001-filter-nodes.json")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["Nodes"]["items"].as_array().unwrap().len(), 3);
    let (s, v) = call(
        &r,
        "/scheduler/prioritize",
        capture("004-prioritize-nodenames.json"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 2);
    // Apiserver-style query strings do not change routing.
    let (s, _) = call(
        &r,
        "/scheduler/prioritize?timeout=5s",
        capture("004-prioritize-nodenames.json"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        app.metrics
            .render()
            .contains("gantry_requests_total{verb=\"filter\",outcome=\"ok\"} 2")
    );
}

#[tokio::test]
async fn router_records_demand_when_nothing_passes() {
    let app = rig_state();
    let r = https_router(&app, limits(), false, None);
    let body = json!({"Pod": {"metadata": {"uid": "u-1", "name": "p", "namespace": "ns"},
                               "spec": {"containers": []}},
                      "NodeNames": ["rig-node-c"]});
    let (_, v) = call(&r, "/scheduler/filter", body.to_string()).await;
    assert_eq!(v["NodeNames"], json!([]));
    assert_eq!(
        v["FailedAndUnresolvableNodes"]["rig-node-c"],
        "node is still initializing"
    );
    assert!(app.ledger.contains("u-1"));
    let e = &app.ledger.entries()[0];
    assert_eq!(e.reason, "1 node is still initializing");
    // Unknown node names pass: Gantry has no opinion on them.
    let body = json!({"Pod": {"metadata": {"uid": "u-2"}}, "NodeNames": ["somebody-elses"]});
    let (_, v) = call(&r, "/scheduler/filter", body.to_string()).await;
    assert_eq!(v["NodeNames"], json!(["somebody-elses"]));
    assert!(!app.ledger.contains("u-2"));
}

#[tokio::test]
async fn router_unsynced_cache_is_a_protocol_error() {
    let app = AppState::new(Duration::from_secs(60));
    let r = https_router(&app, limits(), false, None);
    let (s, v) = call(
        &r,
        "/scheduler/filter",
        capture("003-filter-nodenames.json"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["Error"], "gantry node cache not synced");
    assert_eq!(keys(&v).len(), 5);
}

#[tokio::test]
async fn bad_input_gets_protocol_answers() {
    let app = rig_state();
    let small = RequestLimits {
        max_body_bytes: 2048,
        timeout: Duration::from_secs(5),
    };
    let r = https_router(&app, small, false, None);
    let huge = format!(r#"{{"Pod":{{}},"NodeNames":["{}"]}}"#, "x".repeat(4096));
    let cases: Vec<(&str, String, &str)> = vec![
        ("empty", String::new(), "empty request body"),
        ("not json", "{nope".into(), "malformed request body"),
        ("array", "[]".into(), "expected a JSON object"),
        (
            "wrong type",
            r#"{"Pod":{},"NodeNames":{"a":1}}"#.into(),
            "NodeNames",
        ),
        ("pod wrong type", r#"{"Pod":"x"}"#.into(), "Pod"),
        (
            "pod null",
            r#"{"Pod":null,"NodeNames":["a"]}"#.into(),
            "Pod",
        ),
        ("over limit", huge, "exceeds the limit of 2048 bytes"),
    ];
    for (what, body, needle) in cases {
        let (s, v) = call(&r, "/scheduler/filter", body.clone()).await;
        assert_eq!(s, StatusCode::OK, "{what}");
        assert_eq!(keys(&v).len(), 5, "{what}");
        let err = v["Error"].as_str().unwrap();
        assert!(err.contains(needle), "{what}: {err}");
        let (s, v) = call(&r, "/scheduler/prioritize", body).await;
        assert_eq!(s, StatusCode::OK, "{what}");
        assert_eq!(v, json!([]), "{what}");
    }
    // Unknown fields and nulls are fine.
    let ok = r#"{"Pod":{"metadata":{"uid":"u","creationTimestamp":null},"spec":{"containers":[{"name":"c","resources":null}],"extra":1},"status":null},"Nodes":null,"NodeNames":["rig-node-a"],"Future":true}"#;
    let (_, v) = call(&r, "/scheduler/filter", ok).await;
    assert_eq!(v["Error"], "");
    assert_eq!(v["NodeNames"], json!(["rig-node-a"]));
    let text = app.metrics.render();
    assert!(
        text.contains("gantry_malformed_requests_total{verb=\"filter\"} 7"),
        "{text}"
    );
}

#[tokio::test]
async fn health_port_reports_reasons() {
    let app = AppState::new(Duration::from_secs(60));
    let r = health_router(&app);
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let resp = r.clone().oneshot(get("/healthz")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = r.clone().oneshot(get("/readyz")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let reasons = v["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 2, "{v}");
    app.readiness
        .set_kube_error(Some("connection refused".into()));
    let resp = r.clone().oneshot(get("/readyz")).await.unwrap();
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert!(v.to_string().contains("connection refused"));
    app.readiness.set_tls_loaded(true);
    let mut idx = ClusterIndex::new();
    idx.set_nodes_synced();
    idx.set_pods_synced();
    app.cluster.publish(idx.snapshot());
    let resp = r.clone().oneshot(get("/readyz")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    app.readiness.set_shutting_down();
    let resp = r.clone().oneshot(get("/readyz")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let resp = r.clone().oneshot(get("/metrics")).await.unwrap();
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains("gantry_pending_pods"));
    assert!(text.contains("gantry_build_info"));
    let resp = r.clone().oneshot(get("/debug/demand")).await.unwrap();
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["pending"], 0);
}

// ---------------------------------------------------------------- real TLS

struct TlsRig {
    dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    reloader: TlsReloader,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

fn write_certs(dir: &Path) -> gantry::certs::CertSet {
    let set = gantry::certs::generate(&["localhost".to_string()], &["127.0.0.1".parse().unwrap()])
        .unwrap();
    gantry::certs::write(&set, dir).unwrap();
    set
}

async fn start_tls(client_ca: bool) -> TlsRig {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path());
    let files = TlsFiles {
        cert: dir.path().join("server.crt"),
        key: dir.path().join("server.key"),
        client_ca: client_ca.then(|| dir.path().join("ca.crt")),
    };
    let app = rig_state();
    let live = Arc::new(ArcSwapOption::empty());
    let mut reloader = TlsReloader::new(files, live.clone(), app.metrics.clone());
    assert_eq!(reloader.poll_once(), ReloadOutcome::Reloaded);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(gantry::server::https::serve_tls(
        listener,
        https_router(&app, limits(), client_ca, None),
        live,
        stop.clone(),
        Duration::from_secs(5),
    ));
    TlsRig {
        dir,
        addr,
        reloader,
        stop,
        server,
    }
}

fn read(dir: &Path, f: &str) -> Vec<u8> {
    std::fs::read(dir.join(f)).unwrap()
}

async fn connect(
    rig: &TlsRig,
    ca: &[u8],
    id: Option<(&[u8], &[u8])>,
    alpn: Alpn,
) -> Result<ExtenderClient, ClientError> {
    let cfg = Arc::new(tls_config(ca, id, alpn).unwrap());
    ExtenderClient::connect(rig.addr, "localhost", cfg, "/scheduler").await
}

async fn roundtrip(c: &mut ExtenderClient) -> Result<(), ClientError> {
    let r = c
        .filter(Bytes::from(capture("003-filter-nodenames.json")))
        .await?;
    assert_eq!(
        r.node_names,
        Some(vec!["rig-node-a".into(), "rig-node-b".into()])
    );
    let p = c
        .prioritize(Bytes::from(capture("004-prioritize-nodenames.json")))
        .await?;
    assert_eq!(p.len(), 2);
    Ok(())
}

#[tokio::test]
async fn tls_http1_and_h2_keepalive() {
    let rig = start_tls(false).await;
    let ca = read(rig.dir.path(), "ca.crt");
    for alpn in [Alpn::Http1, Alpn::H2] {
        let mut c = connect(&rig, &ca, None, alpn).await.unwrap();
        assert_eq!(c.is_h2(), alpn == Alpn::H2);
        for _ in 0..3 {
            roundtrip(&mut c).await.unwrap();
        }
    }
    rig.stop.cancel();
    rig.server.await.unwrap();
}

#[tokio::test]
async fn tls_untrusted_ca_is_refused() {
    let rig = start_tls(false).await;
    let other = tempfile::tempdir().unwrap();
    let other_set = write_certs(other.path());
    let r = connect(&rig, other_set.ca_cert.as_bytes(), None, Alpn::Http1).await;
    assert!(
        matches!(r, Err(ClientError::Handshake(_))),
        "connected with a foreign CA"
    );
    rig.stop.cancel();
}

#[tokio::test]
async fn tls_client_certificates_required_when_configured() {
    let rig = start_tls(true).await;
    let dir = rig.dir.path();
    let ca = read(dir, "ca.crt");
    // Without a certificate the handshake succeeds (the admission webhook shares the port),
    // but the extender refuses the call.
    let mut c = connect(&rig, &ca, None, Alpn::Http1).await.unwrap();
    let (status, _) = c
        .post("filter", Bytes::from(capture("003-filter-nodenames.json")))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (cert, key) = (read(dir, "client.crt"), read(dir, "client.key"));
    let mut c = connect(&rig, &ca, Some((&cert, &key)), Alpn::H2)
        .await
        .unwrap();
    roundtrip(&mut c).await.unwrap();
    // A client certificate from another CA is refused too.
    let other = tempfile::tempdir().unwrap();
    let o = write_certs(other.path());
    let foreign = match connect(
        &rig,
        &ca,
        Some((o.client_cert.as_bytes(), o.client_key.as_bytes())),
        Alpn::Http1,
    )
    .await
    {
        Err(_) => true,
        Ok(mut c) => roundtrip(&mut c).await.is_err(),
    };
    assert!(foreign, "a foreign client certificate was accepted");
    rig.stop.cancel();
}

#[tokio::test]
async fn tls_rotation_without_restart() {
    let mut rig = start_tls(false).await;
    let old_ca = read(rig.dir.path(), "ca.crt");
    assert_eq!(rig.reloader.poll_once(), ReloadOutcome::Unchanged);
    // Rotate to a certificate from a new CA, the way a Secret update would.
    let new = write_certs(rig.dir.path());
    assert_eq!(rig.reloader.poll_once(), ReloadOutcome::Reloaded);
    let mut c = connect(&rig, new.ca_cert.as_bytes(), None, Alpn::Http1)
        .await
        .unwrap();
    roundtrip(&mut c).await.unwrap();
    assert!(connect(&rig, &old_ca, None, Alpn::Http1).await.is_err());
    // A half-written rotation keeps the working certificate.
    std::fs::write(rig.dir.path().join("server.key"), "garbage").unwrap();
    assert_eq!(rig.reloader.poll_once(), ReloadOutcome::Failed);
    let mut c = connect(&rig, new.ca_cert.as_bytes(), None, Alpn::H2)
        .await
        .unwrap();
    roundtrip(&mut c).await.unwrap();
    rig.stop.cancel();
}

#[tokio::test]
async fn tls_graceful_shutdown_finishes_and_stops_accepting() {
    let mut rig = start_tls(false).await;
    let ca = read(rig.dir.path(), "ca.crt");
    let mut c = connect(&rig, &ca, None, Alpn::Http1).await.unwrap();
    roundtrip(&mut c).await.unwrap();
    rig.stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), &mut rig.server)
        .await
        .unwrap()
        .unwrap();
    assert!(connect(&rig, &ca, None, Alpn::Http1).await.is_err());
}

// ---------------------------------------------------------------- manifests

#[test]
fn every_manifest_parses_and_kustomization_lists_them() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let kust: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let listed: BTreeSet<String> = kust["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if !name.ends_with(".yaml") || name == "kustomization.yaml" {
            continue;
        }
        assert!(
            listed.contains(&name),
            "{name} is not in kustomization.yaml"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if v.is_null() {
                continue;
            }
            assert!(
                v["apiVersion"].is_string(),
                "{name}: document without apiVersion"
            );
            let kind = v["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no kind"))
                .to_string();
            *kinds.entry(kind).or_default() += 1;
        }
    }
    for f in &listed {
        assert!(
            dir.join(f).is_file(),
            "kustomization lists missing file {f}"
        );
    }
    for want in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ConfigMap",
    ] {
        assert!(
            kinds.contains_key(want),
            "no {want} in manifests: {kinds:?}"
        );
    }
}

#[test]
fn scheduler_config_matches_the_design() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let text = std::fs::read_to_string(dir.join("scheduler.yaml")).unwrap();
    let cm = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .find(|v| v["kind"] == "ConfigMap")
        .unwrap();
    let cfg: Value = serde_yaml::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(cfg["apiVersion"], "kubescheduler.config.k8s.io/v1");
    assert_eq!(cfg["profiles"][0]["schedulerName"], "gantry");
    let ext = &cfg["extenders"][0];
    assert_eq!(
        ext["urlPrefix"],
        "https://gantry.gantry-system.svc:8443/scheduler"
    );
    assert_eq!(ext["filterVerb"], "filter");
    assert_eq!(ext["prioritizeVerb"], "prioritize");
    assert_eq!(ext["nodeCacheCapable"], true);
    assert_eq!(ext["enableHTTPS"], true);
    assert_eq!(ext["ignorable"], true);
    assert_eq!(ext["httpTimeout"], "2s");
    assert!(ext["weight"].as_i64().unwrap() > 0);
    assert_eq!(ext["tlsConfig"]["serverName"], "gantry.gantry-system.svc");
}

use serde::Deserialize as _;

#[test]
fn crd_manifest_is_generated_from_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/crds.yaml");
    let on_disk = std::fs::read_to_string(&path).unwrap();
    let fresh = gantry::kube::crds_yaml().unwrap();
    assert!(
        on_disk == fresh,
        "manifests/crds.yaml is stale: run `cargo run -- crds --out manifests/crds.yaml`"
    );
    for crd in [
        "nodepools.gantry.dev",
        "ec2nodeclasses.gantry.dev",
        "nodeclaims.gantry.dev",
    ] {
        assert!(fresh.contains(crd), "{crd}");
    }
}

#[test]
fn sample_objects_parse_as_gantry_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/samples/nodepool.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let s = gantry::sim::scenario::parse(&text).unwrap();
    assert_eq!(s.nodepools.len(), 1);
    assert_eq!(s.nodeclasses.len(), 1);
    gantry::model::NodePoolView::from_crd(&s.nodepools[0]).unwrap();
}

//! [`ClusterApi`] against a real API server.
//!
//! Writes are patches. Those that read-modify-write a list (taints, finalizers) carry the
//! `resourceVersion` they read, so a concurrent writer makes them fail with a conflict, and they
//! re-read and retry a few times instead of overwriting someone else's change.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, Taint as K8sTaint};
use kube::api::{Api, DeleteParams, EvictParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use serde_json::json;
use tracing::warn;

use super::api::{ClusterApi, ClusterError, EventRecord, NodePatch};
use super::crd::{NodeClaim, NodeClaimStatus};
use crate::model::labels::TERMINATION_FINALIZER;

/// How many times a conflicting read-modify-write is retried.
const CONFLICT_RETRIES: usize = 5;
/// Every API call's deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The API-server-backed cluster.
#[derive(Clone)]
pub struct KubeCluster {
    client: Client,
    recorder: Recorder,
    field_manager: String,
}

impl KubeCluster {
    /// A cluster client that reports events as `gantry` from `instance` (the pod name).
    pub fn new(client: Client, instance: &str) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "gantry".into(),
                instance: Some(instance.to_string()),
            },
        );
        KubeCluster {
            client,
            recorder,
            field_manager: "gantry".into(),
        }
    }
}

impl KubeCluster {
    fn params(&self) -> PatchParams {
        PatchParams {
            field_manager: Some(self.field_manager.clone()),
            ..Default::default()
        }
    }
}

/// Maps a kube error onto the trait's classification.
pub fn classify(e: kube::Error, what: &str) -> ClusterError {
    match &e {
        kube::Error::Api(s) if s.code == 404 => ClusterError::NotFound(what.to_string()),
        kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists" => {
            ClusterError::AlreadyExists(what.to_string())
        }
        kube::Error::Api(s) if s.code == 409 => ClusterError::Conflict(what.to_string()),
        kube::Error::Api(s) if s.code == 429 => ClusterError::Blocked(what.to_string()),
        _ => ClusterError::Api(format!("{what}: {e}")),
    }
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| classify(e, what)),
        Err(_) => Err(ClusterError::Api(format!("{what}: timed out"))),
    }
}

/// The node's taints after a patch: removals first, then additions not already present.
pub fn patched_taints(current: &[K8sTaint], patch: &NodePatch) -> Vec<K8sTaint> {
    let mut out: Vec<K8sTaint> = current
        .iter()
        .filter(|t| !patch.remove_taints.contains(&t.key))
        .cloned()
        .collect();
    for t in &patch.add_taints {
        if !out
            .iter()
            .any(|x| x.key == t.key && x.effect == t.effect.as_str())
        {
            out.push(K8sTaint {
                key: t.key.clone(),
                value: Some(t.value.clone()),
                effect: t.effect.as_str().to_string(),
                time_added: None,
            });
        }
    }
    out
}

#[async_trait::async_trait]
impl ClusterApi for KubeCluster {
    async fn create_nodeclaim(&self, claim: &NodeClaim) -> Result<NodeClaim, ClusterError> {
        let mut c = claim.clone();
        let fins = c.metadata.finalizers.get_or_insert_with(Vec::new);
        if !fins.iter().any(|f| f == TERMINATION_FINALIZER) {
            fins.push(TERMINATION_FINALIZER.to_string());
        }
        let name = c.metadata.name.clone().unwrap_or_default();
        let api: Api<NodeClaim> = Api::all(self.client.clone());
        timed(
            &format!("nodeclaim {name}"),
            api.create(&PostParams::default(), &c),
        )
        .await
    }

    async fn update_nodeclaim_status(
        &self,
        name: &str,
        status: &NodeClaimStatus,
    ) -> Result<(), ClusterError> {
        let api: Api<NodeClaim> = Api::all(self.client.clone());
        // A merge patch of the whole status: lists (conditions, reservedPods) are replaced,
        // which is what the single writer intends.
        let patch = json!({ "status": status });
        timed(
            &format!("nodeclaim {name} status"),
            api.patch_status(name, &self.params(), &Patch::Merge(&patch)),
        )
        .await
        .map(|_| ())
    }

    async fn delete_nodeclaim(&self, name: &str) -> Result<(), ClusterError> {
        let api: Api<NodeClaim> = Api::all(self.client.clone());
        match timed(
            &format!("nodeclaim {name}"),
            api.delete(name, &DeleteParams::default()),
        )
        .await
        {
            Ok(_) | Err(ClusterError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn remove_nodeclaim_finalizer(&self, name: &str) -> Result<(), ClusterError> {
        let api: Api<NodeClaim> = Api::all(self.client.clone());
        let what = format!("nodeclaim {name}");
        for _ in 0..CONFLICT_RETRIES {
            let current = match timed(&what, api.get(name)).await {
                Ok(c) => c,
                Err(ClusterError::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
            let fins: Vec<String> = current
                .metadata
                .finalizers
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|f| f != TERMINATION_FINALIZER)
                .collect();
            let patch = json!({"metadata": {
                "finalizers": fins,
                "resourceVersion": current.metadata.resource_version,
            }});
            match timed(
                &what,
                api.patch(name, &self.params(), &Patch::Merge(&patch)),
            )
            .await
            {
                Ok(_) | Err(ClusterError::NotFound(_)) => return Ok(()),
                Err(ClusterError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ClusterError::Conflict(what))
    }

    async fn patch_node(&self, name: &str, patch: &NodePatch) -> Result<(), ClusterError> {
        let api: Api<Node> = Api::all(self.client.clone());
        let what = format!("node {name}");
        for _ in 0..CONFLICT_RETRIES {
            let current = timed(&what, api.get(name)).await?;
            let taints = patched_taints(
                current
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.as_deref())
                    .unwrap_or_default(),
                patch,
            );
            let labels: BTreeMap<&String, &String> = patch.labels.iter().collect();
            let body = json!({
                "metadata": {"labels": labels, "resourceVersion": current.metadata.resource_version},
                "spec": {"taints": taints},
            });
            match timed(&what, api.patch(name, &self.params(), &Patch::Merge(&body))).await {
                Ok(_) => return Ok(()),
                Err(ClusterError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ClusterError::Conflict(what))
    }

    async fn delete_node(&self, name: &str) -> Result<(), ClusterError> {
        let api: Api<Node> = Api::all(self.client.clone());
        match timed(
            &format!("node {name}"),
            api.delete(name, &DeleteParams::default()),
        )
        .await
        {
            Ok(_) | Err(ClusterError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn evict_pod(&self, namespace: &str, name: &str) -> Result<(), ClusterError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match timed(
            &format!("pod {namespace}/{name}"),
            api.evict(name, &EvictParams::default()),
        )
        .await
        {
            Ok(_) | Err(ClusterError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn record_event(&self, event: EventRecord) {
        let (api_version, kind) = match event.kind {
            "NodeClaim" => (NodeClaim::api_version(&()).to_string(), "NodeClaim"),
            _ => ("v1".to_string(), event.kind),
        };
        let reference = ObjectReference {
            api_version: Some(api_version),
            kind: Some(kind.to_string()),
            name: Some(event.name.clone()),
            namespace: Some(event.namespace.clone()).filter(|n| !n.is_empty()),
            uid: Some(event.uid.clone()).filter(|u| !u.is_empty()),
            ..Default::default()
        };
        let ev = Event {
            type_: if event.type_ == "Warning" {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.to_string(),
            note: Some(event.message),
            action: event.reason.to_string(),
            secondary: None,
        };
        if let Err(e) = tokio::time::timeout(CALL_TIMEOUT, self.recorder.publish(&ev, &reference))
            .await
            .unwrap_or_else(|_| Ok(()))
        {
            warn!(error = %e, "cannot record event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Effect, Taint};
    use axum::http::{Request, Response, StatusCode};
    use kube::client::Body;
    use tower_test::mock;

    type Handle = mock::Handle<Request<Body>, Response<Body>>;

    /// The mock-API-server pattern: a client whose every request reaches `handle`, where a
    /// verifier task asserts method, path and body and answers.
    fn mock_cluster() -> (KubeCluster, Handle) {
        let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (
            KubeCluster::new(Client::new(svc, "default"), "test"),
            handle,
        )
    }

    async fn expect(
        handle: &mut Handle,
        method: &str,
        path: &str,
    ) -> (serde_json::Value, mock::SendResponse<Response<Body>>) {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .expect("no request arrived")
            .expect("service dropped");
        assert_eq!(req.method().as_str(), method);
        assert_eq!(req.uri().path(), path, "{}", req.uri());
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (body, send)
    }

    fn respond(send: mock::SendResponse<Response<Body>>, code: u16, body: serde_json::Value) {
        send.send_response(
            Response::builder()
                .status(StatusCode::from_u16(code).unwrap())
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
    }

    fn status(code: u16, reason: &str) -> serde_json::Value {
        serde_json::json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                           "code": code, "reason": reason, "message": reason})
    }

    fn node(rv: &str) -> serde_json::Value {
        serde_json::json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "resourceVersion": rv},
            "spec": {"taints": [
                {"key": "gantry.dev/unregistered", "value": "true", "effect": "NoExecute"},
                {"key": "gantry.dev/initializing", "value": "true", "effect": "NoSchedule"}]}})
    }

    #[tokio::test]
    async fn create_nodeclaim_posts_with_the_finalizer() {
        let (cluster, mut handle) = mock_cluster();
        let verifier = tokio::spawn(async move {
            let (body, send) = expect(&mut handle, "POST", "/apis/gantry.dev/v1/nodeclaims").await;
            assert_eq!(body["metadata"]["finalizers"][0], TERMINATION_FINALIZER);
            let mut created = body.clone();
            created["metadata"]["uid"] = "uid-1".into();
            respond(send, 201, created);
        });
        let claim = NodeClaim::new("general-abcde", Default::default());
        let got = cluster.create_nodeclaim(&claim).await.unwrap();
        assert_eq!(got.metadata.uid.as_deref(), Some("uid-1"));
        verifier.await.unwrap();
    }

    #[tokio::test]
    async fn node_patch_retries_a_conflict_with_a_fresh_read() {
        let (cluster, mut handle) = mock_cluster();
        let verifier = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", "/api/v1/nodes/n1").await;
            respond(send, 200, node("1"));
            let (body, send) = expect(&mut handle, "PATCH", "/api/v1/nodes/n1").await;
            assert_eq!(body["metadata"]["resourceVersion"], "1");
            respond(send, 409, status(409, "Conflict"));
            let (_, send) = expect(&mut handle, "GET", "/api/v1/nodes/n1").await;
            respond(send, 200, node("2"));
            let (body, send) = expect(&mut handle, "PATCH", "/api/v1/nodes/n1").await;
            assert_eq!(body["metadata"]["resourceVersion"], "2");
            assert_eq!(body["metadata"]["labels"]["gantry.dev/nodeclaim"], "c1");
            let keys: Vec<&str> = body["spec"]["taints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["key"].as_str().unwrap())
                .collect();
            assert_eq!(keys, vec!["gantry.dev/initializing"]);
            respond(send, 200, node("3"));
        });
        let patch = NodePatch {
            labels: [("gantry.dev/nodeclaim".to_string(), "c1".to_string())].into(),
            remove_taints: vec!["gantry.dev/unregistered".into()],
            ..Default::default()
        };
        cluster.patch_node("n1", &patch).await.unwrap();
        verifier.await.unwrap();
    }

    #[tokio::test]
    async fn eviction_refused_by_a_budget_is_blocked() {
        let (cluster, mut handle) = mock_cluster();
        let verifier = tokio::spawn(async move {
            let (body, send) = expect(
                &mut handle,
                "POST",
                "/api/v1/namespaces/shop/pods/web-1/eviction",
            )
            .await;
            assert_eq!(body["metadata"]["name"], "web-1");
            respond(send, 429, status(429, "TooManyRequests"));
        });
        let err = cluster.evict_pod("shop", "web-1").await.unwrap_err();
        assert!(matches!(err, ClusterError::Blocked(_)), "{err:?}");
        verifier.await.unwrap();
    }

    #[tokio::test]
    async fn finalizer_removal_keeps_other_finalizers_and_deletes_are_idempotent() {
        let (cluster, mut handle) = mock_cluster();
        let verifier = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", "/apis/gantry.dev/v1/nodeclaims/c1").await;
            respond(
                send,
                200,
                serde_json::json!({"apiVersion": "gantry.dev/v1", "kind": "NodeClaim",
                "metadata": {"name": "c1", "resourceVersion": "7",
                             "finalizers": [TERMINATION_FINALIZER, "other/keep"]},
                "spec": {"nodeClassRef": {"name": "default"}}}),
            );
            let (body, send) =
                expect(&mut handle, "PATCH", "/apis/gantry.dev/v1/nodeclaims/c1").await;
            assert_eq!(
                body["metadata"]["finalizers"],
                serde_json::json!(["other/keep"])
            );
            assert_eq!(body["metadata"]["resourceVersion"], "7");
            respond(
                send,
                200,
                serde_json::json!({"apiVersion": "gantry.dev/v1", "kind": "NodeClaim",
                "metadata": {"name": "c1"}, "spec": {"nodeClassRef": {"name": "default"}}}),
            );
            let (_, send) =
                expect(&mut handle, "DELETE", "/apis/gantry.dev/v1/nodeclaims/c1").await;
            respond(send, 404, status(404, "NotFound"));
            let (body, send) = expect(
                &mut handle,
                "PATCH",
                "/apis/gantry.dev/v1/nodeclaims/c1/status",
            )
            .await;
            assert_eq!(body["status"]["providerID"], "aws:///us-east-1a/i-1");
            respond(
                send,
                200,
                serde_json::json!({"apiVersion": "gantry.dev/v1", "kind": "NodeClaim",
                "metadata": {"name": "c1"}, "spec": {"nodeClassRef": {"name": "default"}}}),
            );
        });
        cluster.remove_nodeclaim_finalizer("c1").await.unwrap();
        cluster.delete_nodeclaim("c1").await.unwrap();
        let status = NodeClaimStatus {
            provider_id: Some("aws:///us-east-1a/i-1".into()),
            ..Default::default()
        };
        cluster
            .update_nodeclaim_status("c1", &status)
            .await
            .unwrap();
        verifier.await.unwrap();
    }

    #[tokio::test]
    async fn node_deletes_are_idempotent_and_events_name_their_object() {
        let (cluster, mut handle) = mock_cluster();
        let verifier = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "DELETE", "/api/v1/nodes/n1").await;
            respond(send, 404, status(404, "NotFound"));
            let (body, send) = tokio::time::timeout(Duration::from_secs(5), async {
                let (req, send) = handle.next_request().await.expect("service dropped");
                assert_eq!(req.method().as_str(), "POST");
                assert!(req.uri().path().ends_with("/events"), "{}", req.uri());
                let bytes = req.into_body().collect_bytes().await.unwrap();
                (
                    serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
                    send,
                )
            })
            .await
            .expect("no event arrived");
            assert_eq!(body["regarding"]["kind"], "Pod");
            assert_eq!(body["regarding"]["name"], "web-1");
            assert_eq!(body["reason"], "Launched");
            respond(send, 201, body);
        });
        cluster.delete_node("n1").await.unwrap();
        cluster
            .record_event(EventRecord {
                kind: "Pod",
                namespace: "shop".into(),
                name: "web-1".into(),
                uid: "u1".into(),
                type_: "Normal",
                reason: "Launched",
                message: "launched nodeclaim general-abcde (m7i.large, us-east-1b) for this pod"
                    .into(),
            })
            .await;
        verifier.await.unwrap();
    }

    #[test]
    fn taint_patches_remove_then_add_once() {
        let current = vec![
            K8sTaint {
                key: "gantry.dev/unregistered".into(),
                value: Some("true".into()),
                effect: "NoExecute".into(),
                time_added: None,
            },
            K8sTaint {
                key: "keep".into(),
                value: None,
                effect: "NoSchedule".into(),
                time_added: None,
            },
        ];
        let patch = NodePatch {
            remove_taints: vec!["gantry.dev/unregistered".into()],
            add_taints: vec![
                Taint::new("keep", "", Effect::NoSchedule),
                Taint::new("gantry.dev/disrupted", "true", Effect::NoSchedule),
            ],
            ..Default::default()
        };
        let out = patched_taints(&current, &patch);
        let keys: Vec<&str> = out.iter().map(|t| t.key.as_str()).collect();
        assert_eq!(keys, vec!["keep", "gantry.dev/disrupted"]);
    }
}

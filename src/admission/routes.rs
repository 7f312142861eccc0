//! The HTTP side: an axum `Router` serving the webhook, for the HTTPS server to mount.
//!
//! Routes (path only; the apiserver appends `?timeout=…`, which is ignored):
//! - `POST /admission/pods`: pods whose namespace is not labelled `gantry.dev/managed=true`;
//!   only pods that opt in themselves (hints or `schedulerName: gantry`) are changed.
//! - `POST /admission/pods/managed-namespace`: pods of labelled namespaces, all opted in. The
//!   webhook configuration sends each namespace to exactly one of the two paths by label.
//!
//! # Errors
//! An undecodable or malformed AdmissionReview gets HTTP 400 with a plain-text message; a body
//! over the limit gets 413. Every decision, including a denial, is HTTP 200.

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::core::v1::Pod;
use tracing::{Span, debug, instrument, warn};

use super::AdmissionConfig;
use super::hints::{CatalogIndex, HintContext, Verdict, decide};
use super::wire::{self, AdmissionResponse, AdmissionReviewIn, AdmissionReviewOut};
use crate::kube::crd::NodePool;
use crate::model::catalog::Catalog;

/// The path for pods of namespaces that did not opt in as a whole.
pub const PODS_PATH: &str = "/admission/pods";
/// The path for pods of namespaces labelled `gantry.dev/managed=true`.
pub const MANAGED_NAMESPACE_PODS_PATH: &str = "/admission/pods/managed-namespace";

/// The NodePool cache as the webhook sees it: one writer swaps in a new list, each request
/// loads the current one. `None` means the cache has not synced yet.
pub type NodePoolSnapshot = Arc<ArcSwap<Option<Vec<NodePool>>>>;

/// What the handlers share: settings, the NodePool snapshot source and the catalog index.
#[derive(Clone)]
pub struct AdmissionState {
    config: AdmissionConfig,
    node_pools: NodePoolSnapshot,
    catalog: Arc<CatalogIndex>,
}

impl AdmissionState {
    /// Builds the state; the catalog is indexed once here, not per request.
    pub fn new(config: AdmissionConfig, node_pools: NodePoolSnapshot, catalog: &Catalog) -> Self {
        AdmissionState {
            config,
            node_pools,
            catalog: Arc::new(CatalogIndex::from_catalog(catalog)),
        }
    }

    /// An empty, not-yet-synced NodePool snapshot source for callers and tests to fill.
    pub fn unsynced_node_pools() -> NodePoolSnapshot {
        Arc::new(ArcSwap::from_pointee(None))
    }

    /// The settings in force.
    pub fn config(&self) -> &AdmissionConfig {
        &self.config
    }
}

/// Builds the webhook's routes, body-limited to `config.body_limit_bytes`.
pub fn router(state: AdmissionState) -> Router {
    let limit = state.config.body_limit_bytes;
    Router::new()
        .route(PODS_PATH, post(pods))
        .route(MANAGED_NAMESPACE_PODS_PATH, post(managed_namespace_pods))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn pods(State(state): State<AdmissionState>, body: Bytes) -> Response {
    review(&state, &body, false)
}

async fn managed_namespace_pods(State(state): State<AdmissionState>, body: Bytes) -> Response {
    review(&state, &body, true)
}

fn bad_request(message: String) -> Response {
    warn!(error = %message, "malformed admission review");
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

fn reply(response: AdmissionResponse) -> Response {
    match serde_json::to_vec(&AdmissionReviewOut::new(response)) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => {
            warn!(error = %e, "cannot encode admission response");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode admission response",
            )
                .into_response()
        }
    }
}

/// Decodes the review, decides, and encodes the reply. Synchronous: a decision takes µs.
#[instrument(
    skip_all,
    fields(pod.uid, pod.namespace, namespace_opted_in, verdict)
)]
pub fn review(state: &AdmissionState, body: &[u8], namespace_opted_in: bool) -> Response {
    let span = Span::current();
    span.record("namespace_opted_in", namespace_opted_in);
    let review: AdmissionReviewIn = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("body is not an AdmissionReview: {e}")),
    };
    if review.api_version != wire::API_VERSION || review.kind != wire::KIND {
        return bad_request(format!(
            "expected apiVersion {} and kind {}, got {:?} and {:?}",
            wire::API_VERSION,
            wire::KIND,
            review.api_version,
            review.kind
        ));
    }
    let Some(request) = review.request else {
        return bad_request("AdmissionReview has no request".to_string());
    };
    span.record("pod.uid", request.uid.as_str());
    if let Some(ns) = request.namespace.as_deref() {
        span.record("pod.namespace", ns);
    }
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    let is_subresource = request
        .sub_resource
        .as_deref()
        .is_some_and(|s| !s.is_empty());
    if !is_pod || is_subresource || request.operation != "CREATE" {
        span.record("verdict", "ignored");
        return reply(AdmissionResponse::allow(&request.uid));
    }
    let Some(object) = request.object else {
        return bad_request("pod CREATE review has no object".to_string());
    };
    let pod: Pod = match serde_json::from_value(object) {
        Ok(p) => p,
        Err(e) => return bad_request(format!("request.object is not a Pod: {e}")),
    };
    let pools = state.node_pools.load();
    let ctx = HintContext {
        catalog: &state.catalog,
        node_pools: pools.as_deref(),
        set_scheduler_name: state.config.set_scheduler_name,
        spot_preferred_weight: state.config.spot_preferred_weight,
    };
    match decide(&pod, namespace_opted_in, &ctx) {
        Verdict::Admit { patch, warnings } if patch.is_empty() => {
            span.record("verdict", "allowed");
            reply(AdmissionResponse::allow(&request.uid).with_warnings(warnings))
        }
        Verdict::Admit { patch, warnings } => match serde_json::to_vec(&patch) {
            Ok(text) => {
                span.record("verdict", "patched");
                debug!(ops = patch.len(), "pod patched");
                reply(
                    AdmissionResponse::allow_with_patch(&request.uid, &text)
                        .with_warnings(warnings),
                )
            }
            Err(e) => {
                warn!(error = %e, "cannot encode patch");
                (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode patch").into_response()
            }
        },
        Verdict::Deny(denial) => {
            span.record("verdict", "denied");
            debug!(reason = %denial, "pod denied");
            reply(AdmissionResponse::deny(&request.uid, denial.to_string()))
        }
    }
}

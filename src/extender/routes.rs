//! axum handlers for `POST /scheduler/filter` and `POST /scheduler/prioritize`.
//!
//! # Guarantees
//! Every request gets HTTP 200 with a protocol-shaped JSON body: a malformed, oversized or slow
//! request gets a filter reply whose `Error` explains it, or `[]` from prioritize.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::Value;
use tracing::{Span, instrument, warn};

use super::decide::{PodFacts, filter_node, score_node};
use super::wire::{
    Candidates, ExtenderArgs, ExtenderFilterResult, HostPriority, WireError, parse_args,
    strip_nulls,
};
use crate::kube::views::{node_view, pod_requests};
use crate::metrics::{Metrics, VerbLabels};
use crate::model::Resources;
use crate::state::{
    ClusterSnapshot, DemandEntry, DemandLedger, DemandSource, NodeView, SharedState,
};

/// Limits applied to every request on the HTTPS port.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Deadline for reading the body and deciding.
    pub timeout: Duration,
}

/// What the extender handlers share.
#[derive(Clone)]
pub struct ExtenderState {
    /// Cluster snapshots from the watches.
    pub cluster: SharedState,
    /// Where unplaceable pods are recorded.
    pub ledger: DemandLedger,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Body and time limits.
    pub limits: RequestLimits,
}

/// The extender's routes, mounted under `/scheduler`.
pub fn router(state: ExtenderState) -> Router {
    Router::new()
        .route("/scheduler/filter", post(filter))
        .route("/scheduler/prioritize", post(prioritize))
        .with_state(state)
}

/// Reads a body up to `limit` bytes.
///
/// # Errors
/// `TooLarge` past the limit, `Read` on transport failure.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, WireError> {
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(WireError::TooLarge { limit })
        }
        Err(e) => Err(WireError::Read(e.to_string())),
    }
}

async fn read_args(state: &ExtenderState, body: Body) -> Result<ExtenderArgs, WireError> {
    let limits = state.limits;
    match tokio::time::timeout(limits.timeout, read_body(body, limits.max_body_bytes)).await {
        Ok(bytes) => parse_args(&bytes?),
        Err(_) => Err(WireError::Read("timed out".into())),
    }
}

fn pod_facts(pod: &Pod) -> PodFacts {
    PodFacts {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        // A pod with a bad quantity gets no packing preference rather than an error.
        requests: pod
            .spec
            .as_ref()
            .and_then(|s| pod_requests(s).ok())
            .unwrap_or_default(),
    }
}

fn malformed(state: &ExtenderState, verb: &'static str, err: &WireError, start: Instant) {
    warn!(verb, error = %err, "malformed extender request");
    state
        .metrics
        .malformed
        .get_or_create(&VerbLabels { verb })
        .inc();
    state
        .metrics
        .observe(verb, "malformed", start.elapsed().as_secs_f64());
}

#[instrument(skip_all, fields(pod.uid, nodes, passed))]
async fn filter(State(state): State<ExtenderState>, body: Body) -> Response {
    let start = Instant::now();
    let args = match read_args(&state, body).await {
        Ok(a) => a,
        Err(e) => {
            malformed(&state, "filter", &e, start);
            return Json(ExtenderFilterResult::failure(e.to_string())).into_response();
        }
    };
    let snapshot = state.cluster.load();
    if !snapshot.synced {
        state
            .metrics
            .observe("filter", "error", start.elapsed().as_secs_f64());
        return Json(ExtenderFilterResult::failure(
            "gantry node cache not synced",
        ))
        .into_response();
    }
    let facts = pod_facts(&args.pod);
    let span = Span::current();
    span.record("pod.uid", facts.uid.as_str());
    span.record("nodes", args.candidates.len());
    let (reply, passed) = decide_filter(&snapshot, &facts, args.candidates);
    span.record("passed", passed);
    if passed == 0 {
        record_demand(&state, &args.pod, &reply);
    }
    state
        .metrics
        .observe("filter", "ok", start.elapsed().as_secs_f64());
    Json(reply).into_response()
}

/// Applies the filter to every candidate and renders the reply in the request's mode.
///
/// Returns the reply and how many nodes passed.
pub fn decide_filter(
    snapshot: &ClusterSnapshot,
    pod: &PodFacts,
    candidates: Candidates,
) -> (ExtenderFilterResult, usize) {
    let mut failed = BTreeMap::new();
    match candidates {
        Candidates::Names(names) => {
            // The names are moved into the reply, not copied: the request owns them already.
            let mut passed = Vec::with_capacity(names.len());
            for name in names {
                match snapshot.node(&name).and_then(|n| filter_node(pod, n)) {
                    Some(reason) => {
                        failed.insert(name, reason.to_string());
                    }
                    None => passed.push(name),
                }
            }
            let n = passed.len();
            let reply = ExtenderFilterResult {
                nodes: None,
                node_names: Some(passed),
                failed_nodes: Some(BTreeMap::new()),
                failed_and_unresolvable_nodes: Some(failed),
                error: String::new(),
            };
            (reply, n)
        }
        Candidates::Objects { mut list, items } => {
            let mut passed = Vec::with_capacity(items.len());
            for item in items {
                let view = object_view(snapshot, &item);
                match filter_node(pod, &view) {
                    Some(reason) => {
                        failed.insert(view.name, reason.to_string());
                    }
                    None => passed.push(item),
                }
            }
            let n = passed.len();
            list.insert("items".into(), Value::Array(passed));
            let reply = ExtenderFilterResult {
                nodes: Some(Value::Object(list)),
                node_names: None,
                failed_nodes: Some(BTreeMap::new()),
                failed_and_unresolvable_nodes: Some(failed),
                error: String::new(),
            };
            (reply, n)
        }
    }
}

/// A full-mode Node object's view: taints and deletion from the object itself (freshest), room
/// and reservations from the cache (the request carries no pods).
fn object_view(snapshot: &ClusterSnapshot, item: &Value) -> NodeView {
    let mut v = item.clone();
    strip_nulls(&mut v);
    let mut view = serde_json::from_value::<Node>(v)
        .map(|n| node_view(&n))
        .unwrap_or_else(|_| NodeView {
            name: item
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            ..Default::default()
        });
    if let Some(cached) = snapshot.node(&view.name) {
        view.requested = cached.requested.clone();
        view.reserved = cached.reserved.clone();
        view.reserved_pods = cached.reserved_pods.clone();
        if view.allocatable == Resources::default() {
            view.allocatable = cached.allocatable.clone();
        }
    }
    view
}

fn record_demand(state: &ExtenderState, pod: &Pod, reply: &ExtenderFilterResult) {
    let meta = &pod.metadata;
    let Some(uid) = meta.uid.clone() else { return };
    let reason = match reply.failed_and_unresolvable_nodes.as_ref() {
        Some(f) if !f.is_empty() => summarize(f),
        _ => "no candidate nodes".to_string(),
    };
    state.ledger.record(DemandEntry {
        uid,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        source: DemandSource::Filter,
        reason,
        first_seen_unix: jiff::Timestamp::now().as_second(),
    });
    state.metrics.pending_pods.set(state.ledger.len() as i64);
}

/// `3 node is still initializing, 1 node is being deleted`, like the scheduler's event text.
fn summarize(failed: &BTreeMap<String, String>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in failed.values() {
        *counts.entry(r.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(r, n)| format!("{n} {r}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[instrument(skip_all, fields(pod.uid, nodes))]
async fn prioritize(State(state): State<ExtenderState>, body: Body) -> Response {
    let start = Instant::now();
    let args = match read_args(&state, body).await {
        Ok(a) => a,
        Err(e) => {
            malformed(&state, "prioritize", &e, start);
            return Json(Vec::<HostPriority>::new()).into_response();
        }
    };
    let snapshot = state.cluster.load();
    let facts = pod_facts(&args.pod);
    let span = Span::current();
    span.record("pod.uid", facts.uid.as_str());
    span.record("nodes", args.candidates.len());
    let scores = decide_prioritize(&snapshot, &facts, args.candidates);
    state
        .metrics
        .observe("prioritize", "ok", start.elapsed().as_secs_f64());
    Json(scores).into_response()
}

/// Scores every candidate 0–10.
pub fn decide_prioritize(
    snapshot: &ClusterSnapshot,
    pod: &PodFacts,
    candidates: Candidates,
) -> Vec<HostPriority> {
    match candidates {
        Candidates::Names(names) => names
            .into_iter()
            .map(|name| HostPriority {
                score: score_node(pod, snapshot.node(&name)),
                host: name,
            })
            .collect(),
        Candidates::Objects { items, .. } => items
            .iter()
            .map(|item| {
                let view = object_view(snapshot, item);
                let known = snapshot.node(&view.name).is_some();
                HostPriority {
                    score: score_node(pod, known.then_some(&view)),
                    host: view.name,
                }
            })
            .collect(),
    }
}

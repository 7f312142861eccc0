//! The plain-HTTP port: `/healthz`, `/readyz`, `/metrics`, `/debug/demand`.
//!
//! It needs no client certificate and stays up until the very end of shutdown, so probes and
//! load balancers always get an answer.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::metrics::Metrics;
use crate::state::{DemandLedger, SharedState};

/// What decides readiness besides the cache: certificate loaded, shutdown, API errors.
#[derive(Debug, Default)]
pub struct Readiness {
    tls_loaded: AtomicBool,
    shutting_down: AtomicBool,
    kube_error: Mutex<Option<String>>,
}

impl Readiness {
    /// Fresh: not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records whether a certificate is being served.
    pub fn set_tls_loaded(&self, loaded: bool) {
        self.tls_loaded.store(loaded, Ordering::Release);
    }

    /// Readiness goes false for the rest of the process's life.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Records (or clears) the last Kubernetes API problem, shown as the not-ready reason.
    pub fn set_kube_error(&self, error: Option<String>) {
        if let Ok(mut slot) = self.kube_error.lock() {
            *slot = error;
        }
    }

    /// The reasons the process is not ready; empty means ready.
    pub fn reasons(&self, cache_synced: bool) -> Vec<String> {
        let mut out = Vec::new();
        if self.shutting_down.load(Ordering::Acquire) {
            out.push("shutting down".to_string());
        }
        if !self.tls_loaded.load(Ordering::Acquire) {
            out.push("serving certificate not loaded".to_string());
        }
        if !cache_synced {
            let detail = self
                .kube_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            out.push(format!("node and pod cache not synced{detail}"));
        }
        out
    }
}

/// What the health routes read.
#[derive(Clone)]
pub struct HealthState {
    /// Readiness inputs.
    pub readiness: Arc<Readiness>,
    /// For the cache-synced flag.
    pub cluster: SharedState,
    /// For `/debug/demand` and the pending gauge.
    pub ledger: DemandLedger,
    /// For `/metrics`.
    pub metrics: Arc<Metrics>,
}

/// The plain-port router.
pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/demand", get(demand))
        .with_state(state)
}

async fn readyz(State(s): State<HealthState>) -> Response {
    let reasons = s.readiness.reasons(s.cluster.load().synced);
    if reasons.is_empty() {
        (StatusCode::OK, Json(json!({"ready": true}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reasons": reasons})),
        )
            .into_response()
    }
}

async fn metrics(State(s): State<HealthState>) -> Response {
    s.metrics.pending_pods.set(s.ledger.len() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn demand(State(s): State<HealthState>) -> Response {
    let entries = s.ledger.entries();
    let pods: Vec<_> = entries.iter().map(AsRef::as_ref).collect();
    Json(json!({"pending": pods.len(), "pods": pods})).into_response()
}

//! `gantry serve`: the HTTPS port (extender, admission), the plain port (health, metrics), the
//! certificate reloader and the watches, with an orderly shutdown.
//!
//! Shutdown on SIGTERM: readiness goes false, a drain delay lets load balancers notice, the
//! HTTPS server stops accepting and drains, then the loops are cancelled and the plain port closes.

pub mod controllers;
pub mod health;
pub mod https;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span};

use crate::extender::routes::{ExtenderState, RequestLimits};
use crate::metrics::Metrics;
use crate::state::{DemandLedger, SharedState};
use health::{HealthState, Readiness};
use tls::{LiveTlsConfig, TlsFiles};

/// Validated settings for `gantry serve`; tests build it directly.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// HTTPS address (extender, admission).
    pub listen: SocketAddr,
    /// Plain-HTTP address (health, metrics).
    pub health_listen: SocketAddr,
    /// Serving certificate, key and optional client CA.
    pub tls: TlsFiles,
    /// Kubeconfig file; `None` means in-cluster config or `KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// Body size and time limits per request.
    pub limits: RequestLimits,
    /// How long readiness is false before the HTTPS server stops accepting.
    pub drain_delay: Duration,
    /// How long in-flight requests get to finish after that.
    pub shutdown_timeout: Duration,
    /// How often the certificate files are checked for rotation.
    pub cert_reload_interval: Duration,
    /// How long a pending pod stays in the demand ledger without being seen again.
    pub demand_ttl: Duration,
    /// The admission webhook's settings.
    pub admission: crate::admission::AdmissionConfig,
    /// The provisioning and lifecycle loops, when this replica may launch nodes.
    pub controllers: Option<controllers::ControllersConfig>,
}

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServeError {
    /// A listener could not bind.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The shared parts every handler and loop gets.
#[derive(Clone)]
pub struct AppState {
    /// Cluster snapshots.
    pub cluster: SharedState,
    /// Pending pods.
    pub ledger: DemandLedger,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Readiness inputs.
    pub readiness: Arc<Readiness>,
    /// NodePools for the admission webhook; `None` until the NodePool watch has synced.
    pub nodepools: crate::admission::routes::NodePoolSnapshot,
    /// How long after Initialized a node keeps room for the pods it was launched for.
    pub reservation_window: Duration,
}

impl AppState {
    /// Fresh state with a ledger of the given TTL.
    pub fn new(demand_ttl: Duration) -> Self {
        AppState {
            cluster: SharedState::new(),
            ledger: DemandLedger::new(demand_ttl, 1_000_000),
            metrics: Arc::new(Metrics::new()),
            readiness: Arc::new(Readiness::new()),
            nodepools: crate::admission::routes::AdmissionState::unsynced_node_pools(),
            reservation_window: Duration::from_secs(120),
        }
    }
}

/// The HTTPS router: the extender plus any extra routes (the admission webhook).
///
/// With `require_client_cert`, extender calls without a verified client certificate get 403.
pub fn https_router(
    app: &AppState,
    limits: RequestLimits,
    require_client_cert: bool,
    extra: Option<Router>,
) -> Router {
    let mut extender = crate::extender::routes::router(ExtenderState {
        cluster: app.cluster.clone(),
        ledger: app.ledger.clone(),
        metrics: app.metrics.clone(),
        limits,
    });
    if require_client_cert {
        extender = extender.layer(axum::middleware::from_fn(require_peer_certificate));
    }
    let router = match extra {
        Some(extra) => extender.merge(extra),
        None => extender,
    };
    router.layer(DefaultBodyLimit::max(limits.max_body_bytes))
}

async fn require_peer_certificate(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let verified = req
        .extensions()
        .get::<https::PeerIdentity>()
        .is_some_and(|p| p.verified);
    if verified {
        next.run(req).await
    } else {
        (
            axum::http::StatusCode::FORBIDDEN,
            "a client certificate signed by the configured CA is required\n",
        )
            .into_response()
    }
}

/// The plain-port router.
pub fn health_router(app: &AppState) -> Router {
    health::router(HealthState {
        readiness: app.readiness.clone(),
        cluster: app.cluster.clone(),
        ledger: app.ledger.clone(),
        metrics: app.metrics.clone(),
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Runs `gantry serve` until SIGTERM or Ctrl-C.
///
/// # Errors
/// Only start-up failures (a port cannot bind). A missing certificate or an unreachable API
/// server does not stop the process: it reports not-ready and keeps retrying.
pub async fn run(config: ServeConfig, extra_routes: Option<Router>) -> Result<(), ServeError> {
    let app = AppState::new(config.demand_ttl);
    let health_listener = bind(config.health_listen).await?;
    let https_listener = bind(config.listen).await?;
    info!(https = %config.listen, health = %config.health_listen, "listening");

    let loops = CancellationToken::new();
    let https_stop = CancellationToken::new();
    let health_stop = CancellationToken::new();
    let tasks = TaskTracker::new();

    let health = health_router(&app);
    let stop = health_stop.clone();
    tasks.spawn(
        async move {
            let _ = axum::serve(health_listener, health)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        }
        .instrument(info_span!("health_server")),
    );

    let live: LiveTlsConfig = Arc::new(ArcSwapOption::empty());
    tasks.spawn(
        tls::TlsReloader::new(config.tls.clone(), live.clone(), app.metrics.clone())
            .run(config.cert_reload_interval, loops.clone())
            .instrument(info_span!("tls_reload")),
    );
    // Readiness follows whether a certificate is live.
    let (ready_live, ready, cancel) = (live.clone(), app.readiness.clone(), loops.clone());
    tasks.spawn(async move {
        loop {
            ready.set_tls_loaded(ready_live.load().is_some());
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    });

    // The admission webhook shares the port; it checks hints against the embedded catalog and
    // the NodePools the watch keeps in `app.nodepools`.
    let admission = match crate::model::Catalog::embedded() {
        Ok(catalog) => Some(crate::admission::routes::router(
            crate::admission::routes::AdmissionState::new(
                config.admission.clone(),
                app.nodepools.clone(),
                &catalog,
            ),
        )),
        Err(e) => {
            tracing::error!(error = %e, "embedded catalog unreadable; admission webhook disabled");
            None
        }
    };
    let extra = match (admission, extra_routes) {
        (Some(a), Some(b)) => Some(a.merge(b)),
        (a, b) => a.or(b),
    };
    let router = https_router(&app, config.limits, config.tls.client_ca.is_some(), extra);
    let https_task = tokio::spawn(
        https::serve_tls(
            https_listener,
            router,
            live,
            https_stop.clone(),
            config.shutdown_timeout,
        )
        .instrument(info_span!("https_server")),
    );

    tasks.spawn(
        crate::kube::watch::run_forever(config.kubeconfig.clone(), app.clone(), loops.clone())
            .instrument(info_span!("watches")),
    );
    let controllers = match config.controllers.clone() {
        Some(c) => {
            match controllers::spawn_thread(
                config.kubeconfig.clone(),
                app.clone(),
                c,
                loops.clone(),
            ) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the controllers");
                    None
                }
            }
        }
        None => None,
    };

    wait_for_signal().await;
    info!("shutdown requested; readiness is now false");
    app.readiness.set_shutting_down();
    tokio::time::sleep(config.drain_delay).await;
    https_stop.cancel();
    let _ = https_task.await;
    loops.cancel();
    if let Some(h) = controllers {
        let _ = tokio::task::spawn_blocking(move || h.join()).await;
    }
    health_stop.cancel();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

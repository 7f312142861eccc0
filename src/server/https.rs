//! The TLS accept loop: rustls handshake, then hyper serving HTTP/1.1 or h2 as ALPN chose.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::tls::LiveTlsConfig;

/// Whether the TLS peer presented a client certificate that the configured CA verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdentity {
    /// A verified client certificate was presented.
    pub verified: bool,
}

/// How long a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` over TLS on `listener` until `shutdown`, then drains connections for up to
/// `grace` (in-flight requests finish; idle keep-alive connections close).
///
/// Connections arriving before a certificate is loaded are closed at once.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    tls: LiveTlsConfig,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let tracker = TaskTracker::new();
    let conn_shutdown = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(config) = tls.load_full() else {
            debug!(%peer, "no certificate loaded yet; closing connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let stop = conn_shutdown.clone();
        tracker.spawn(async move {
            let acceptor = TlsAcceptor::from(Arc::clone(&config));
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "tls handshake timed out");
                    return;
                }
            };
            // Record whether the peer proved a client certificate; routes that need one check it.
            let verified = stream
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            let service = TowerToHyperService::new(
                tower::ServiceBuilder::new()
                    .map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(PeerIdentity { verified });
                        req
                    })
                    .service(router),
            );
            let builder = Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!(%peer, error = %e, "connection ended with error");
                    }
                }
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    conn_shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            open = tracker.len(),
            "connections still open after the grace period"
        );
    } else {
        info!("https server drained");
    }
}

//! rustls server configuration from PEM files, reloaded when the files change.
//!
//! Kubernetes updates a mounted Secret by swapping a `..data` symlink, which inotify-based
//! watchers miss; so the files are polled and their contents hashed instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Why a TLS configuration could not be built; names the file at fault.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM object of the expected kind.
    #[error("{path} holds no {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
    },
    /// rustls rejected the combination (key does not match, bad CA, …).
    #[error("invalid tls configuration")]
    Rustls(#[from] rustls::Error),
    /// The client CA bundle could not build a verifier.
    #[error("invalid client ca")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Where the serving certificate, key and optional client CA live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    pub client_ca: Option<PathBuf>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl TlsFiles {
    /// A hash of every file's contents, to detect rotation cheaply.
    ///
    /// # Errors
    /// A file cannot be read.
    pub fn fingerprint(&self) -> Result<[u8; 32], TlsError> {
        let mut h = Sha256::new();
        for p in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
        {
            let bytes = read(p)?;
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
        Ok(h.finalize().into())
    }

    /// Builds the server configuration: TLS 1.2/1.3, ALPN `h2` + `http/1.1`, optional mTLS.
    ///
    /// # Errors
    /// [`TlsError`] naming the file or the rustls failure.
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cert_pem = read(&self.cert)?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .filter_map(Result::ok)
            .collect();
        if certs.is_empty() {
            return Err(TlsError::Pem {
                path: self.cert.clone(),
                what: "certificate",
            });
        }
        let key_pem = read(&self.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Pem {
            path: self.key.clone(),
            what: "private key",
        })?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let ca_pem = read(ca)?;
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&ca_pem).filter_map(Result::ok) {
                    roots.add(c)?;
                }
                if roots.is_empty() {
                    return Err(TlsError::Pem {
                        path: ca.clone(),
                        what: "certificate",
                    });
                }
                // Certificates are verified whenever presented, but not demanded at the TLS layer:
                // the apiserver calls the admission webhook without one. The extender routes
                // demand a verified certificate themselves (see `require_client_cert`).
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .allow_unauthenticated()
                        .build()?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The live server configuration; `None` until the files first load.
pub type LiveTlsConfig = Arc<ArcSwapOption<ServerConfig>>;

/// Polls the TLS files and swaps in a new configuration when their contents change.
///
/// # Guarantees
/// A broken rotation (half-written files, mismatched key) keeps the previous configuration.
#[derive(Debug)]
pub struct TlsReloader {
    files: TlsFiles,
    live: LiveTlsConfig,
    metrics: Arc<Metrics>,
    last: Option<[u8; 32]>,
}

/// What one poll did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The files are unchanged.
    Unchanged,
    /// A new configuration is live.
    Reloaded,
    /// The files changed (or are unreadable) but did not load; the old configuration stays.
    Failed,
}

impl TlsReloader {
    /// A reloader that publishes into `live`.
    pub fn new(files: TlsFiles, live: LiveTlsConfig, metrics: Arc<Metrics>) -> Self {
        TlsReloader {
            files,
            live,
            metrics,
            last: None,
        }
    }

    /// Checks the files once; tests call this directly instead of waiting for a timer.
    pub fn poll_once(&mut self) -> ReloadOutcome {
        let fp = match self.files.fingerprint() {
            Ok(fp) => fp,
            Err(e) => {
                warn!(error = %e, "tls files unreadable");
                return ReloadOutcome::Failed;
            }
        };
        if Some(fp) == self.last {
            return ReloadOutcome::Unchanged;
        }
        match self.files.server_config() {
            Ok(cfg) => {
                self.live.store(Some(Arc::new(cfg)));
                if self.last.is_some() {
                    self.metrics.cert_reloads.inc();
                    info!(cert = %self.files.cert.display(), "serving certificate reloaded");
                } else {
                    info!(cert = %self.files.cert.display(), "serving certificate loaded");
                }
                self.last = Some(fp);
                ReloadOutcome::Reloaded
            }
            Err(e) => {
                warn!(error = %e, "tls files changed but do not load; keeping the previous configuration");
                ReloadOutcome::Failed
            }
        }
    }

    /// Polls every `interval` until cancelled.
    pub async fn run(mut self, interval: Duration, cancel: CancellationToken) {
        loop {
            self.poll_once();
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}

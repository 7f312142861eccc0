//! An HTTPS client that speaks to the extender the way kube-scheduler does: one keep-alive
//! connection, HTTP/1.1 or h2 by ALPN, a JSON POST per call.
//!
//! Used by the scheduler stand-in of the simulation, by the load generator and by tests.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::wire::{ExtenderFilterResult, HostPriority};

/// Why a call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// TCP connect failed.
    #[error("connect failed")]
    Connect(#[source] std::io::Error),
    /// The TLS handshake failed (untrusted server, client certificate refused, …).
    #[error("tls handshake failed")]
    Handshake(#[source] std::io::Error),
    /// HTTP-level failure.
    #[error("http error")]
    Http(#[from] hyper::Error),
    /// The server name is not valid for TLS.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// A PEM input was unusable.
    #[error("invalid pem: {0}")]
    Pem(String),
    /// rustls rejected the configuration.
    #[error("tls configuration")]
    Tls(#[from] rustls::Error),
    /// The reply was not HTTP 200.
    #[error("unexpected status {0}")]
    Status(StatusCode),
    /// The reply body was not the expected JSON.
    #[error("invalid reply")]
    Decode(#[from] serde_json::Error),
    /// The request could not be built.
    #[error("invalid request")]
    Request(#[from] hyper::http::Error),
}

/// Which HTTP version to offer in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `http/1.1` only (what the apiserver offers webhooks).
    Http1,
    /// `h2` only.
    H2,
}

/// Builds a client TLS configuration trusting `ca_pem`, optionally presenting a certificate.
///
/// # Errors
/// Unusable PEM or a key that does not match the certificate.
pub fn tls_config(
    ca_pem: &[u8],
    client_identity: Option<(&[u8], &[u8])>,
    alpn: Alpn,
) -> Result<ClientConfig, ClientError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.map_err(|e| ClientError::Pem(e.to_string()))?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match client_identity {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| ClientError::Pem(e.to_string()))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|e| ClientError::Pem(e.to_string()))?;
            builder.with_client_auth_cert(certs, key)?
        }
    };
    config.alpn_protocols = match alpn {
        Alpn::Http1 => vec![b"http/1.1".to_vec()],
        Alpn::H2 => vec![b"h2".to_vec()],
    };
    Ok(config)
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One keep-alive connection to the extender.
pub struct ExtenderClient {
    sender: Sender,
    authority: String,
    prefix: String,
}

impl ExtenderClient {
    /// Connects and completes the TLS handshake; the protocol follows the negotiated ALPN.
    ///
    /// # Errors
    /// Connect, handshake or HTTP setup failures.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<ClientConfig>,
        url_prefix: &str,
    ) -> Result<Self, ClientError> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| ClientError::ServerName(server_name.to_string()))?;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(ClientError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(ClientError::Handshake)?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let sender = if h2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = http1::handshake(io).await?;
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Ok(ExtenderClient {
            sender,
            authority: format!("{server_name}:{}", addr.port()),
            prefix: url_prefix.trim_end_matches('/').to_string(),
        })
    }

    /// Whether the connection negotiated h2.
    pub fn is_h2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    /// POSTs a JSON body to `{prefix}/{verb}` and returns status and body.
    ///
    /// # Errors
    /// HTTP failures.
    pub async fn post(
        &mut self,
        verb: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let uri = format!("https://{}{}/{}", self.authority, self.prefix, verb);
        let req = Request::post(uri)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Calls `filter` as kube-scheduler does (non-200 is an error).
    ///
    /// # Errors
    /// HTTP failures, non-200, or an undecodable reply.
    pub async fn filter(&mut self, args: Bytes) -> Result<ExtenderFilterResult, ClientError> {
        let (status, body) = self.post("filter", args).await?;
        if status != StatusCode::OK {
            return Err(ClientError::Status(status));
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Calls `prioritize` as kube-scheduler does.
    ///
    /// # Errors
    /// HTTP failures, non-200, or an undecodable reply.
    pub async fn prioritize(&mut self, args: Bytes) -> Result<Vec<HostPriority>, ClientError> {
        let (status, body) = self.post("prioritize", args).await?;
        if status != StatusCode::OK {
            return Err(ClientError::Status(status));
        }
        Ok(serde_json::from_slice(&body)?)
    }
}

//! The kubelet HTTPS API on `kubelet.address:kubelet.port`.
//!
//! Serves TLS with the configured serving certificate, or a self-signed one generated at
//! start-up (as the kubelet does without `--tls-cert-file`). When `kubelet.client_ca_file` is
//! set, client certificates are verified against it (the API server presents one signed by the
//! cluster's client CA). Served: `/healthz` and the streaming endpoints (`/exec/`, `/attach/`,
//! `/portForward/`, see [`stream`]); every other path answers 404.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::KubeletConfig;

pub mod stream;

/// A bound, not yet serving, kubelet API.
pub struct KubeletServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    identity: Arc<ServingIdentity>,
    streams: stream::StreamContext,
}

/// The serving certificate, replaceable while serving (renewal, a newly issued certificate):
/// each TLS handshake uses the one current at that moment.
#[derive(Debug)]
pub struct ServingIdentity {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ServingIdentity {
    fn new(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<ServingIdentity> {
        let ck = rustls::sign::CertifiedKey::from_der(certs, key, &provider())
            .context("kubelet serving certificate and key do not match")?;
        Ok(ServingIdentity { current: std::sync::RwLock::new(Arc::new(ck)) })
    }

    /// Serves `pair` (chain and key, PEM) from the next handshake on.
    pub fn set(&self, pair: &crate::join::files::KeyPairPem) -> Result<(), String> {
        let (certs, key) = pair.to_der()?;
        let ck = rustls::sign::CertifiedKey::from_der(certs, key, &provider())
            .map_err(|e| format!("serving certificate and key do not match: {e}"))?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ServingIdentity {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads the configured key pair, or makes a self-signed one for `names` (node name and IPs).
fn key_pair(cfg: &KubeletConfig, names: &[String]) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    if let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
        let certs = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("reading kubelet.tls_cert_file {}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing kubelet.tls_cert_file {}", cert.display()))?;
        anyhow::ensure!(!certs.is_empty(), "kubelet.tls_cert_file {} holds no certificate", cert.display());
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading kubelet.tls_key_file {}", key.display()))?;
        return Ok((certs, key));
    }
    let ck =
        rcgen::generate_simple_self_signed(names.to_vec()).context("generating a self-signed serving certificate")?;
    let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("encoding the generated key: {e}"))?;
    Ok((vec![ck.cert.der().clone()], key))
}

fn tls_config(cfg: &KubeletConfig, identity: Arc<ServingIdentity>) -> Result<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &cfg.client_ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("reading kubelet.client_ca_file {}", ca.display()))?
            {
                let c = c.with_context(|| format!("parsing kubelet.client_ca_file {}", ca.display()))?;
                roots.add(c).with_context(|| format!("adding a CA of kubelet.client_ca_file {}", ca.display()))?;
            }
            // Unauthenticated TLS clients are let through to the HTTP layer, which decides per
            // path (bearer tokens are an alternative to client certificates).
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .context("building the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(identity);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl KubeletServer {
    /// Binds the port and loads the TLS material: `initial` (a certificate vks obtained), else
    /// the configured files, else a self-signed certificate for `names`.
    pub async fn bind(
        cfg: &KubeletConfig,
        names: &[String],
        initial: Option<&crate::join::files::KeyPairPem>,
    ) -> Result<KubeletServer> {
        let (certs, key) = match initial {
            Some(pair) => pair.to_der().map_err(|e| anyhow::anyhow!("the stored serving certificate: {e}"))?,
            None => key_pair(cfg, names)?,
        };
        let identity = Arc::new(ServingIdentity::new(certs, key)?);
        let tls = tls_config(cfg, identity.clone())?;
        let addr = SocketAddr::new(cfg.address, cfg.port);
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the kubelet API to {addr}"))?;
        let streams =
            stream::StreamContext::new(Arc::new(stream::host::HostContainers::default()), stream::Limits::default());
        Ok(KubeletServer { listener, acceptor: TlsAcceptor::from(Arc::new(tls)), identity, streams })
    }

    /// The serving certificate, to replace it while serving.
    pub fn identity(&self) -> Arc<ServingIdentity> {
        self.identity.clone()
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `cancel` fires.
    pub async fn serve(self, cancel: CancellationToken) {
        loop {
            let (tcp, peer) = tokio::select! {
                () = cancel.cancelled() => return,
                r = self.listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        log::warn!("kubelet API accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let acceptor = self.acceptor.clone();
            let cancel = cancel.clone();
            let streams = self.streams.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        log::debug!("kubelet API TLS handshake with {peer}: {e}");
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |req| {
                    let streams = streams.clone();
                    async move { handle(req, &streams).await }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades();
                tokio::select! {
                    () = cancel.cancelled() => {}
                    r = conn => if let Err(e) = r { log::debug!("kubelet API connection from {peer}: {e}") },
                }
            });
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    streams: &stream::StreamContext,
) -> Result<Response<stream::Body>, std::convert::Infallible> {
    if stream::is_stream_path(req.uri().path()) {
        return Ok(stream::serve(req, streams).await);
    }
    let (status, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/healthz") => (StatusCode::OK, "ok"),
        _ => (StatusCode::NOT_FOUND, "404 page not found\n"),
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())).map_err(|e| match e {}).boxed());
    *resp.status_mut() = status;
    Ok(resp)
}

//! The k3s agent tunnel: vks keeps a WebSocket open to the k3s supervisor
//! (`wss://<server>/v1-k3s/connect`, authenticated with the node's client certificate, as the k3s
//! agent's `pkg/agent/tunnel` does) and speaks the rancher/remotedialer client protocol on it
//! ([`session`], frames in [`message`]). Through it the API server reaches this node's kubelet
//! API when it cannot (or, with k3s's egress selector, may not) dial the node: every connection
//! the server opens to the kubelet port is served by the kubelet API's own connection handler,
//! TLS and client authentication included; other targets are refused.
//!
//! The connection is kept: on failure it is dialed again with capped back-off (1 s to 30 s), and
//! when the client certificate in the kubeconfig changes (renewal) the session is closed and
//! opened again with the new one.

pub mod message;
pub mod session;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use anyhow::{Context, Result};
use futures::future::BoxFuture;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::api::Backoff;
use crate::kubelet_api::ConnectionHandler;
use crate::pki::KeyPairPem;
pub use session::{End, Policy, Serve, Stats};

/// What the tunnel needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The supervisor URL (`cluster.server`, `https://host:port`).
    pub supervisor: String,
    /// The kubeconfig with the node's client certificate and the cluster CA.
    pub kubeconfig: PathBuf,
    /// The kubelet API port: the only target served.
    pub kubelet_port: u16,
    /// The node name (for logs).
    pub node: String,
}

impl Serve for ConnectionHandler {
    fn serve(&self, stream: tokio::io::DuplexStream, peer: String) -> BoxFuture<'static, ()> {
        let handler = self.clone();
        Box::pin(async move { handler.serve(stream, peer).await })
    }
}

/// How often the kubeconfig is checked for a renewed client certificate.
const CREDENTIALS_CHECK: Duration = Duration::from_secs(5);
/// Connect and handshake timeout.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// A session that lasted this long resets the back-off.
const STABLE: Duration = Duration::from_secs(30);

/// Keeps the tunnel open until `cancel` fires.
pub async fn run(
    settings: Settings,
    serve: Arc<dyn Serve>,
    stats: Arc<Stats>,
    heartbeat: crate::notify::Heartbeat,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let policy = Policy { kubelet_port: settings.kubelet_port };
    let mut backoff = Backoff::new(Duration::from_secs(30));
    let mut failing = false;
    loop {
        heartbeat.beat();
        let attempt = async {
            let creds = Credentials::read(&settings)?;
            let ws = dial(&settings.supervisor, &creds).await?;
            Ok::<_, anyhow::Error>((creds, ws))
        };
        let delay = match tokio::select! { () = cancel.cancelled() => return Ok(()), r = attempt => r } {
            Ok((creds, ws)) => {
                log::info!(node = settings.node.as_str(); "tunnel to {} connected (client certificate {})", settings.supervisor, creds.serial);
                failing = false;
                let started = Instant::now();
                let renewed = renewed(&settings, creds.serial.clone());
                let stop = async {
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = renewed => log::info!(node = settings.node.as_str(); "tunnel to {}: the client certificate was renewed; reconnecting with it", settings.supervisor),
                    }
                };
                // The session pings the server and ends when it stops answering.
                let session =
                    session::run(ws, session::Timing::REMOTEDIALER, policy, serve.clone(), stats.clone(), stop);
                let end = crate::notify::beating(&heartbeat, BEAT, session).await;
                if cancel.is_cancelled() {
                    return Ok(());
                }
                match &end {
                    End::Stopped => {
                        backoff.reset();
                        continue;
                    }
                    End::Closed => {
                        log::warn!(node = settings.node.as_str(); "tunnel to {}: the server closed it; reconnecting", settings.supervisor)
                    }
                    End::Failed(why) => {
                        log::warn!(node = settings.node.as_str(); "tunnel to {} failed: {why}; reconnecting", settings.supervisor)
                    }
                }
                if started.elapsed() > STABLE {
                    backoff.reset();
                }
                backoff.next_delay()
            }
            Err(e) => {
                if failing {
                    log::debug!("tunnel to {}: {e:#}", settings.supervisor);
                } else {
                    log::warn!(node = settings.node.as_str(); "tunnel to {}: {e:#}; retrying with back-off", settings.supervisor);
                    failing = true;
                }
                backoff.next_delay()
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// How often the tunnel loop shows progress while a session runs.
const BEAT: Duration = Duration::from_secs(10);

/// Resolves when the client certificate in the kubeconfig is no longer the one with `serial`.
async fn renewed(settings: &Settings, serial: String) {
    loop {
        tokio::time::sleep(CREDENTIALS_CHECK).await;
        if let Ok(c) = Credentials::read(settings)
            && c.serial != serial
        {
            return;
        }
    }
}

/// The node's client certificate and the CA of the cluster, from the kubeconfig.
struct Credentials {
    client: KeyPairPem,
    ca_pem: String,
    serial: String,
}

impl Credentials {
    fn read(settings: &Settings) -> Result<Credentials> {
        let creds = crate::join::files::read_kubeconfig(&settings.kubeconfig).map_err(anyhow::Error::msg)?;
        let ca_pem = creds
            .ca_pem
            .with_context(|| format!("kubeconfig {} has no CA for the server", settings.kubeconfig.display()))?;
        let serial = creds.client.leaf().map_err(anyhow::Error::msg)?.serial;
        Ok(Credentials { client: creds.client, ca_pem, serial })
    }
}

/// TCP, TLS (server verified against the cluster CA, the node's client certificate presented),
/// then the WebSocket handshake for `/v1-k3s/connect`.
async fn dial(
    supervisor: &str,
    creds: &Credentials,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>> {
    let uri: http::Uri = supervisor.parse().with_context(|| format!("supervisor URL {supervisor:?}"))?;
    let host = uri.host().with_context(|| format!("supervisor URL {supervisor:?} has no host"))?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let bare = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let mut roots = rustls::RootCertStore::empty();
    for der in crate::join::http::pem_certs(&creds.ca_pem)? {
        roots.add(der.into()).context("adding the cluster CA")?;
    }
    let (chain, key) = creds.client.to_der().map_err(anyhow::Error::msg)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("the node's client certificate")?;
    let name = rustls::pki_types::ServerName::try_from(bare.clone()).context("supervisor host name")?;
    let connect = async {
        let tcp =
            TcpStream::connect((bare.as_str(), port)).await.with_context(|| format!("connecting to {host}:{port}"))?;
        tcp.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS with {host}:{port}"))?;
        let url = format!("wss://{host}:{port}/v1-k3s/connect");
        let (ws, _) = tokio_tungstenite::client_async(url.as_str(), tls).await.map_err(|e| handshake_error(&url, e))?;
        Ok::<_, anyhow::Error>(ws)
    };
    tokio::time::timeout(DIAL_TIMEOUT, connect)
        .await
        .with_context(|| format!("no tunnel to {host}:{port} within {}s", DIAL_TIMEOUT.as_secs()))?
}

/// The handshake error, with the server's answer when it refused (401, 403).
fn handshake_error(url: &str, e: tokio_tungstenite::tungstenite::Error) -> anyhow::Error {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Http(resp) => {
            let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().trim().to_owned();
            anyhow::anyhow!("{url} refused the tunnel: HTTP {} {body}", resp.status())
        }
        other => anyhow::anyhow!("opening {url}: {other}"),
    }
}

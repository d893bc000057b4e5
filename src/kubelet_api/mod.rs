//! The kubelet HTTPS API on `kubelet.address:kubelet.port`, as the API server, `kubectl` and
//! metrics-server expect it.
//!
//! - TLS (`tls.rs`): the node's serving certificate, replaceable while serving
//!   ([`ServingIdentity`]); client certificates verified against the cluster's client CA,
//!   which is re-read when its file changes.
//! - Who may call (`auth/`): the kubelet's webhook mode — client certificate or TokenReview,
//!   then a SubjectAccessReview on `nodes/<subresource>`; 401/403 otherwise.
//! - Overload (`limits.rs`, `conn.rs`): caps on connections (global, per client address) and
//!   on streams per client, TLS handshake and header timeouts, header and body size limits,
//!   the streaming idle timeout; `max_connections` stays below half the file descriptor limit.
//! - Endpoints (`router.rs`): `/healthz`, `/pods`, `/containerLogs` (`logs/`), `/stats/summary`
//!   and `/metrics/resource` (`stats/`), `/metrics` (vks's own, [`crate::metrics`]);
//!   `/exec`, `/attach`, `/portForward` go to the streaming module.
//!
//! A connection of any origin is served by [`ConnectionHandler::serve`]; [`KubeletServer`]
//! accepts TCP connections on the port and applies the connection caps.

pub mod auth;
pub mod body;
mod conn;
pub mod limits;
pub mod logs;
pub mod pods;
mod router;
pub mod stats;
pub mod stream;
pub mod tls;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use self::conn::ConnectionHandler;
use self::limits::{Limiter, Limits, Refused};
pub use self::tls::ServingIdentity;
use crate::config::KubeletConfig;
use crate::metrics::metrics;
use crate::systemd::Systemd;

/// What the kubelet API serves from.
pub struct Deps {
    /// API client with the node's identity (TokenReview, SubjectAccessReview).
    pub client: kube::Client,
    /// The pods bound to this node.
    pub pods: Arc<dyn pods::PodSource>,
    /// systemd (container runs, units).
    pub systemd: Arc<dyn Systemd>,
    /// The node's name.
    pub node: String,
    /// `paths.state_dir` (node file system; default client CA location).
    pub state_dir: PathBuf,
    /// `paths.pod_dir` (pod directories).
    pub pod_dir: PathBuf,
}

/// A bound, not yet serving, kubelet API.
pub struct KubeletServer {
    listener: TcpListener,
    identity: Arc<ServingIdentity>,
    tls: Arc<tls::TlsState>,
    app: Arc<router::App>,
    limits: Limits,
}

/// Raises the soft limit on open files to the hard one (as Go programs do at start); returns
/// the limit in force.
fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                log::warn!("raising the open files limit from {soft} to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            log::warn!("reading the open files limit: {e}");
            1024
        }
    }
}

impl KubeletServer {
    /// Binds the port and loads the TLS material: `initial` (a certificate vks obtained), else
    /// the configured files, else a self-signed certificate for `names`.
    pub async fn bind(
        cfg: &KubeletConfig,
        names: &[String],
        initial: Option<&crate::join::files::KeyPairPem>,
        deps: Deps,
    ) -> Result<KubeletServer> {
        let (certs, key) = match initial {
            Some(pair) => pair.to_der().map_err(|e| anyhow::anyhow!("the stored serving certificate: {e}"))?,
            None => tls::key_pair(cfg, names)?,
        };
        let identity = Arc::new(ServingIdentity::new(certs, key)?);
        let ca = tls::CaSource::from_config(cfg, &deps.state_dir);
        let tls = Arc::new(tls::TlsState::new(identity.clone(), ca)?);
        let limits = Limits::from_config(cfg).fit_to_fd_limit(raise_nofile_limit());
        let reviewer = auth::CachedReviewer::new(Arc::new(auth::api::ApiReviewer::new(deps.client, deps.node.clone())));
        let runs = Arc::new(logs::SystemdRuns(deps.systemd.clone()));
        let app = Arc::new(router::App {
            access: auth::Access::new(Arc::new(reviewer), cfg.anonymous_auth, cfg.healthz_anonymous),
            logs: Arc::new(logs::Logs::new(deps.pods.clone(), runs)),
            stats: Arc::new(stats::Stats::new(
                deps.systemd,
                std::path::Path::new("/sys/fs/cgroup"),
                deps.node,
                deps.state_dir,
                deps.pod_dir,
            )),
            pods: deps.pods,
            streams: Limiter::new(usize::MAX, limits.max_streams_per_client),
            stream: stream::StreamContext::new(
                Arc::new(stream::host::HostContainers::new(
                    std::path::Path::new(crate::systemd::UNIT_DIR),
                    cfg.exec_helpers.then_some(cfg.exec_helper_idle),
                )),
                stream::Limits { idle_timeout: cfg.streaming_idle_timeout, ..stream::Limits::default() },
            ),
            limits: limits.clone(),
        });
        let addr = SocketAddr::new(cfg.address, cfg.port);
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the kubelet API to {addr}"))?;
        Ok(KubeletServer { listener, identity, tls, app, limits })
    }

    /// The serving certificate, to replace it while serving.
    pub fn identity(&self) -> Arc<ServingIdentity> {
        self.identity.clone()
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// The per-connection entry point (for connections that do not come through the port,
    /// e.g. tunneled ones).
    pub fn handler(&self, cancel: CancellationToken) -> ConnectionHandler {
        ConnectionHandler::new(self.tls.clone(), self.app.clone(), self.limits.clone(), cancel)
    }

    /// Serves until `cancel` fires; `heartbeat` beats while the accept loop runs.
    pub async fn serve(self, heartbeat: crate::notify::Heartbeat, cancel: CancellationToken) -> Result<()> {
        tokio::spawn(self.tls.clone().watch(cancel.clone()));
        let handler = self.handler(cancel.clone());
        let conns: Arc<Limiter<IpAddr>> =
            Limiter::new(self.limits.max_connections, self.limits.max_connections_per_client);
        let refusals = RefusalLog::default();
        let mut beat = tokio::time::interval(Duration::from_secs(5));
        loop {
            heartbeat.beat();
            let (tcp, peer) = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = beat.tick() => continue,
                r = self.listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: wait instead of spinning; connections close and free up.
                        log::warn!("kubelet API accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let permit = match conns.try_acquire(peer.ip()) {
                Ok(p) => p,
                Err(why) => {
                    let reason = match why {
                        Refused::Total => "max_connections",
                        Refused::PerClient => "max_connections_per_client",
                    };
                    metrics().kubelet_refused(reason);
                    refusals.note(reason, &peer, &self.limits);
                    drop(tcp);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let handler = handler.clone();
            tokio::spawn(async move {
                metrics().kubelet_api_connections.inc();
                handler.serve(tcp, peer.to_string()).await;
                metrics().kubelet_api_connections.dec();
                drop(permit);
            });
        }
    }
}

/// Logs refused connections at most once every 10 s, with how many were refused meanwhile.
#[derive(Default)]
struct RefusalLog {
    last_ms: AtomicU64,
    count: AtomicU64,
}

impl RefusalLog {
    fn note(&self, reason: &str, peer: &SocketAddr, limits: &Limits) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 10_000
            && self.last_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
            log::warn!(
                "kubelet API: refused {n} connection(s) in the last 10 s (latest from {peer}: kubelet.{reason}; \
                 limits {} in total, {} per client)",
                limits.max_connections,
                limits.max_connections_per_client
            );
        }
    }
}

//! The API server connection: client construction from the kubeconfig, and one shared tracker
//! of whether the API server is reachable, so that an outage is logged once when it starts and
//! once when it ends, not once per retry.

use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Timeout for connecting to the API server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout for one non-watch response; watches have their own idle timeout in kube-runtime.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The two API clients vks uses, from one kubeconfig.
#[derive(Clone)]
pub struct Clients {
    /// For ordinary requests: a response must come within [`READ_TIMEOUT`].
    pub requests: kube::Client,
    /// For watches, which legitimately stay silent for minutes: no read timeout (kube-runtime's
    /// watcher has its own idle timeout).
    pub watches: kube::Client,
    /// Requests sent so far by both clients (a watch counts once).
    pub sent: Arc<AtomicU64>,
    /// What `requests` and `watches` delegate to; replaced by [`Clients::reload`].
    current: Arc<std::sync::RwLock<(kube::Client, kube::Client)>>,
    /// The kubeconfig they come from.
    path: std::path::PathBuf,
}

impl Clients {
    /// Requests sent to the API server so far.
    pub fn requests_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Re-reads the kubeconfig (a renewed client certificate) and sends every later request
    /// with it, through every clone of these clients. Requests in flight (a watch) finish on the
    /// connection they have.
    pub async fn reload(&self) -> Result<()> {
        let (requests, watches) = inner_clients(&self.path, &self.sent).await?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (requests, watches);
        log::info!("API clients reloaded from {}", self.path.display());
        Ok(())
    }
}

/// A client whose requests go to whichever client is current (see [`Clients::reload`]).
#[derive(Clone)]
struct Switch {
    current: Arc<std::sync::RwLock<(kube::Client, kube::Client)>>,
    watches: bool,
}

impl tower::Service<http::Request<kube::client::Body>> for Switch {
    type Response = http::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, kube::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), kube::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
        let client = {
            let pair = self.current.read().unwrap_or_else(|e| e.into_inner());
            if self.watches { pair.1.clone() } else { pair.0.clone() }
        };
        Box::pin(async move { client.send(req).await })
    }
}

/// Counts a response (its status code) or a request that got none, in [`crate::metrics`].
fn observe<B, E>(r: Result<http::Response<B>, E>) -> Result<http::Response<B>, E> {
    crate::metrics::metrics().api_response(r.as_ref().ok().map(|resp| resp.status().as_u16()));
    r
}

fn counting_client(config: kube::Config, sent: &Arc<AtomicU64>) -> Result<kube::Client, kube::Error> {
    let sent = sent.clone();
    let count = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        sent.fetch_add(1, Ordering::Relaxed);
        crate::metrics::metrics().api_request(req.method().as_str());
        req
    });
    let responses = tower::util::MapResultLayer::new(observe);
    Ok(kube::client::ClientBuilder::try_from(config)?.with_layer(&responses).with_layer(&count).build())
}

/// Builds the clients from a kubeconfig file (its current context).
pub async fn clients_from_kubeconfig(path: &Path) -> Result<Clients> {
    let sent = Arc::new(AtomicU64::new(0));
    let (requests, watches) = inner_clients(path, &sent).await?;
    let namespace = requests.default_namespace().to_owned();
    let current = Arc::new(std::sync::RwLock::new((requests, watches)));
    let switch = |watches| kube::Client::new(Switch { current: current.clone(), watches }, namespace.clone());
    Ok(Clients { requests: switch(false), watches: switch(true), sent, current, path: path.to_owned() })
}

async fn inner_clients(path: &Path, sent: &Arc<AtomicU64>) -> Result<(kube::Client, kube::Client)> {
    let kubeconfig = Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    let watches = counting_client(config.clone(), sent)
        .with_context(|| format!("building an API client from {}", path.display()))?;
    config.read_timeout = Some(READ_TIMEOUT);
    config.reset_reader_on_write = true;
    let requests =
        counting_client(config, sent).with_context(|| format!("building an API client from {}", path.display()))?;
    Ok((requests, watches))
}

/// Which pod: its namespace and name, and the UID that tells it from a later pod of the same
/// name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

impl PodRef {
    /// The reference of a pod object.
    pub fn of(pod: &k8s_openapi::api::core::v1::Pod) -> PodRef {
        let m = &pod.metadata;
        PodRef {
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Whether the API server answered the last request, shared by every loop that talks to it.
#[derive(Debug, Default)]
pub struct ApiHealth {
    down_since: Mutex<Option<Instant>>,
}

impl ApiHealth {
    /// A request succeeded.
    pub fn ok(&self) {
        let mut down = self.down_since.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(since) = down.take() {
            log::info!("API server reachable again after {}s", since.elapsed().as_secs());
        }
    }

    /// A request failed in a way that suggests the API server cannot be reached or is unhealthy.
    /// Returns true when this starts an outage (the caller need not log the error again).
    pub fn failed(&self, what: &str, err: &dyn std::fmt::Display) -> bool {
        let mut down = self.down_since.lock().unwrap_or_else(|e| e.into_inner());
        if down.is_none() {
            *down = Some(Instant::now());
            log::warn!("API server unreachable ({what}: {err}); vks keeps running and retries");
            true
        } else {
            false
        }
    }

    /// Logs a failed request: a transport error starts (or continues, silently) an outage;
    /// anything else is logged as a warning naming `what`.
    pub fn report(&self, what: &str, err: &anyhow::Error) {
        let transport = err.chain().any(|c| c.downcast_ref::<kube::Error>().is_some_and(is_transport_error));
        if transport {
            self.failed(what, &format!("{err:#}"));
        } else {
            log::warn!("{what}: {err:#}");
        }
    }

    /// True while an outage is ongoing.
    pub fn is_down(&self) -> bool {
        self.down_since.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

/// Whether an error from kube looks like the API server being unreachable or overloaded (as
/// opposed to a request it understood and refused).
pub fn is_transport_error(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => matches!(status.code, 429 | 500 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::HttpError(_) => true,
        _ => false,
    }
}

/// Capped exponential back-off: 200 ms doubling to a cap, as the kubelet's lease client.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    /// Starts at 200 ms, never exceeds `cap`.
    pub fn new(cap: Duration) -> Backoff {
        Backoff { next: Duration::from_millis(200), cap }
    }

    /// The delay before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        d
    }

    /// Back to the first delay after a success.
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(200);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(7));
        let got: Vec<u64> = (0..8).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(got, [200, 400, 800, 1600, 3200, 6400, 7000, 7000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(200));
    }

    #[test]
    fn health_reports_transitions_once() {
        let h = ApiHealth::default();
        assert!(!h.is_down());
        assert!(h.failed("x", &"boom"));
        assert!(!h.failed("x", &"boom"));
        assert!(h.is_down());
        h.ok();
        assert!(!h.is_down());
        assert!(h.failed("x", &"again"));
    }
}

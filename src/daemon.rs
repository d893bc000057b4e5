//! `vks run`: wires the boundaries together and runs the node until shutdown.
//!
//! Order matters and is the contract with systemd (`Type=notify`): the config is already valid;
//! then systemd's bus, the kubeconfig and the kubelet port are set up (failures here are fatal);
//! then the Node is registered (retried until it works); only then `READY=1`. On shutdown the
//! loops are cancelled together and given a few seconds to finish. Pods keep running: their
//! units belong to systemd, not to vks.
//!
//! Supervision: every long-running loop is a named task of one [`Tasks`] set and beats its own
//! heartbeat (see [`crate::notify`]). A loop that ends or panics while vks is not shutting down
//! is a failure of the whole daemon: vks logs which one, stops the others and exits non-zero, and
//! systemd restarts it (`Restart=on-failure`); the new vks adopts the running pods untouched. A
//! loop that hangs stops its heartbeat, so the watchdog pings stop and systemd restarts vks the
//! same way. A node is never left Ready with a dead loop behind it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiHealth};
use crate::clock::Clock;
use crate::config::Config;
use crate::host;
use crate::images::Images;
use crate::join;
use crate::kubelet_api::KubeletServer;
use crate::node::lease::LeaseKeeper;
use crate::node::{NodeAgent, NodeIdentity};
use crate::notify::{self, Heartbeats};
use crate::pods::api::KubePodApi;
use crate::pods::{PodManager, Shared};
use crate::systemd::dbus::DbusSystemd;
use crate::systemd::{Systemd, UNIT_DIR};
use crate::unit::NodeContext;

/// Keeps systemd's status line (`systemctl status vks`) current: pods, API requests, outages.
async fn status_line(
    node: String,
    pods: Arc<std::sync::atomic::AtomicUsize>,
    clients: api::Clients,
    health: Arc<ApiHealth>,
    cancel: CancellationToken,
) -> Result<()> {
    let mut last = String::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let api = if health.is_down() { "; API server unreachable" } else { "" };
        let line = format!(
            "node {node}: {} pods, {} API requests{api}",
            pods.load(std::sync::atomic::Ordering::Relaxed),
            clients.requests_sent()
        );
        if line != last {
            notify::status(&line);
            last = line;
        }
    }
}

/// Joins (or renews the client certificate) before anything talks to the API server. An
/// unreachable server is retried until it answers; a refusal (wrong token, CA hash, node name
/// taken) is fatal. Returns false when shut down while waiting.
async fn ensure_joined(settings: &join::Settings, shutdown: &CancellationToken) -> Result<bool> {
    let mut backoff = api::Backoff::new(Duration::from_secs(30));
    let mut logged = false;
    loop {
        match join::ensure(settings).await {
            Ok(_) => return Ok(true),
            Err(e) if e.is_transient() => {
                if !logged {
                    log::warn!(node = settings.node.as_str(); "{e}; retrying until it answers");
                    logged = true;
                }
            }
            Err(e) => return Err(e).with_context(|| format!("joining {} as node {}", settings.server, settings.node)),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(false),
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// `vks join`: makes sure this machine has node credentials; says what it did.
pub async fn join(config: &Config) -> Result<String> {
    let internal_ip = match config.node.internal_ip {
        Some(ip) => ip,
        None => host::detect_node_ip()?,
    };
    let mut ips = vec![internal_ip];
    ips.extend(config.node.external_ip);
    let Some(settings) = join::Settings::from_config(config, ips) else {
        anyhow::bail!("nothing to join: set [cluster] server and token (or token_file) in the configuration");
    };
    let node = &settings.node;
    Ok(match join::ensure(&settings).await? {
        join::Outcome::AlreadyJoined => {
            format!("node {node} already joined {} (credentials in {})", settings.server, settings.kubeconfig.display())
        }
        join::Outcome::Renewed => {
            format!("node {node}: client certificate renewed ({})", settings.kubeconfig.display())
        }
        join::Outcome::Joined => {
            format!("node {node} joined {} (credentials in {})", settings.server, settings.kubeconfig.display())
        }
    })
}

/// The image provider: apt-get with vks's deny-all policy-rc.d, the https downloader, aliases
/// and apt sources from `[images]`.
fn images(config: &Config, systemd: Arc<dyn Systemd>) -> Result<Arc<dyn Images>> {
    use crate::images::{apt::Apt, debian, download::Downloader};
    let c = &config.images;
    let downloader = Downloader::new(c.download_timeout, c.download_max_size, c.download_ca_file.as_deref())
        .context("setting up the https client for .deb images")?;
    let policy = config.paths.state_dir.join("policy-rc.d");
    crate::fsutil::write_atomic(&policy, debian::POLICY_RC_D.as_bytes(), 0o755)
        .with_context(|| format!("writing {}", policy.display()))?;
    match std::fs::read_to_string("/usr/sbin/policy-rc.d") {
        Ok(t) if t.contains("POLICYRCD") => {}
        Ok(_) => log::warn!(
            "/usr/sbin/policy-rc.d does not honor POLICYRCD (is policyrcd-script-zg2 installed?): packages vks \
             installs follow its policy"
        ),
        Err(_) => log::warn!(
            "/usr/sbin/policy-rc.d is missing (install policyrcd-script-zg2): packages vks installs may start \
             their daemons"
        ),
    }
    // Under systemd (as vks.service), apt-get runs as its own transient unit: stopping vks must
    // not kill dpkg half-way through an install.
    let detach = std::env::var_os("INVOCATION_ID").is_some();
    let apt = Apt { policy_rc_d: policy, timeout: c.install_timeout, lock_timeout: c.lock_timeout, detach };
    let settings = debian::Settings {
        aliases: c.aliases.clone(),
        sources: c.apt_sources.clone(),
        sources_dir: "/etc/apt/sources.list.d".into(),
        download_dir: config.paths.state_dir.join("downloads"),
    };
    Ok(Arc::new(debian::DebianImages::new(Arc::new(apt), systemd, Some(downloader), settings)))
}

/// How long the loops get to finish after a shutdown request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long each loop may go without a heartbeat before the watchdog is starved. Each is well
/// above the loop's own period plus its slowest call (API requests time out after 30 s).
const LIMIT_POD_MANAGER: Duration = Duration::from_secs(30);
const LIMIT_DBUS: Duration = Duration::from_secs(45);
const LIMIT_NODE_STATUS: Duration = Duration::from_secs(120);
const LIMIT_LEASE: Duration = Duration::from_secs(120);
const LIMIT_KUBELET_API: Duration = Duration::from_secs(30);
const LIMIT_RENEWAL: Duration = Duration::from_secs(60);
const LIMIT_TUNNEL: Duration = Duration::from_secs(60);

/// The daemon's long-running loops, by name. Any of them ending before shutdown is a failure.
struct Tasks {
    set: JoinSet<(&'static str, Result<()>)>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl Tasks {
    fn new() -> Tasks {
        Tasks { set: JoinSet::new(), names: Default::default() }
    }

    fn spawn(&mut self, name: &'static str, task: impl Future<Output = Result<()>> + Send + 'static) {
        let h = self.set.spawn(async move { (name, task.await) });
        self.names.insert(h.id(), name);
    }

    /// Waits until `shutdown` fires (Ok) or a task ends or panics first (the error says which).
    /// Tasks ending because of the shutdown itself are not failures.
    async fn until_shutdown_or_failure(&mut self, shutdown: &CancellationToken) -> Result<()> {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => Ok(()),
            Some(done) = self.set.join_next_with_id() => {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                Err(match done {
                Ok((_, (name, Ok(())))) => anyhow::anyhow!("the {name} loop ended unexpectedly"),
                Ok((_, (name, Err(e)))) => e.context(format!("the {name} loop failed")),
                Err(e) => {
                    let name = self.names.get(&e.id()).copied().unwrap_or("unknown");
                    anyhow::anyhow!("the {name} loop panicked: {e}")
                }
            })
            }
        }
    }

    /// Gives the tasks [`SHUTDOWN_GRACE`] to finish after cancellation.
    async fn drain(&mut self) {
        if tokio::time::timeout(SHUTDOWN_GRACE, async { while self.set.join_next().await.is_some() {} }).await.is_err()
        {
            log::warn!("some tasks did not finish within {}s; exiting anyway", SHUTDOWN_GRACE.as_secs());
        }
    }
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let config = Arc::new(config);
    for dir in [&config.paths.state_dir, &config.paths.pod_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let internal_ip = match config.node.internal_ip {
        Some(ip) => ip,
        None => host::detect_node_ip()?,
    };
    let id = NodeIdentity {
        name: config.node.name.clone(),
        internal_ip,
        external_ip: config.node.external_ip,
        kubelet_port: config.kubelet.port,
    };
    log::info!(node = id.name.as_str(); "vks {} starting as node {} ({})", env!("CARGO_PKG_VERSION"), id.name, internal_ip);

    let mut ips = vec![internal_ip];
    ips.extend(config.node.external_ip);
    let joining = join::Settings::from_config(&config, ips);
    if let Some(settings) = &joining {
        notify::status(&format!("joining {}", settings.server));
        if !ensure_joined(settings, &shutdown).await? {
            return Ok(());
        }
    }

    notify::status("connecting to systemd");
    let dbus =
        Arc::new(DbusSystemd::connect(None, Path::new(UNIT_DIR)).await.context("connecting to systemd over D-Bus")?);
    let systemd: Arc<dyn Systemd> = dbus.clone();
    let version = systemd.version().await.context("reading systemd's version")?;
    log::info!("systemd {version} reachable over D-Bus");

    let images = images(&config, systemd.clone())?;

    let clients = api::clients_from_kubeconfig(&config.cluster.kubeconfig).await?;
    let client = clients.requests.clone();
    let mut names = vec![id.name.clone(), internal_ip.to_string()];
    names.extend(id.external_ip.map(|ip| ip.to_string()));
    // A joined node gets its serving certificate from the cluster (join::renew); until then,
    // or without a join, the configured files or a self-signed certificate.
    let managed_serving = joining.is_some() && config.kubelet.tls_cert_file.is_none();
    let stored = joining.as_ref().filter(|_| managed_serving).and_then(join::renew::stored_serving);
    let server = KubeletServer::bind(&config.kubelet, &names, stored.as_ref().map(|(pair, _)| pair)).await?;
    let serving_identity = server.identity();
    log::info!("kubelet API listening on https://{}", server.local_addr()?);

    let health = Arc::new(ApiHealth::default());
    let password_hash = joining.as_ref().map(join::Settings::password_hash).transpose()?;
    let beats = Heartbeats::default();
    let pods_synced = tokio::sync::watch::Sender::new(false);
    let agent = Arc::new(
        NodeAgent::new(client.clone(), config.clone(), id.clone(), systemd.clone(), health.clone())
            .with_password_hash(password_hash)
            .with_loops(beats.clone(), pods_synced.subscribe()),
    );
    notify::status(&format!("registering node {}", id.name));
    match agent.register(&shutdown).await {
        Ok(_) => {}
        Err(_) if shutdown.is_cancelled() => return Ok(()),
        Err(e) => return Err(e),
    }

    let mut tasks = Tasks::new();
    // Every loop stops on `cancel`: the shutdown token, or a failure of another loop.
    let cancel = shutdown.child_token();
    // Joined through a k3s supervisor: keep the agent tunnel, served by the kubelet API's handler.
    if let Some(s) = joining.as_ref().filter(|s| s.joined_k3s()) {
        let t = crate::tunnel::Settings {
            supervisor: s.server.clone(),
            kubeconfig: s.kubeconfig.clone(),
            kubelet_port: config.kubelet.port,
            node: id.name.clone(),
        };
        let handler = Arc::new(server.connection_handler());
        let hb = beats.register("k3s tunnel", LIMIT_TUNNEL);
        tasks.spawn("k3s tunnel", crate::tunnel::run(t, handler, Default::default(), hb, cancel.clone()));
    }
    {
        let (dbus, hb, c) = (dbus.clone(), beats.register("D-Bus", LIMIT_DBUS), cancel.clone());
        tasks.spawn("D-Bus", async move { dbus.keep_connected(hb, c).await });
    }
    tasks.spawn("kubelet API", server.serve(beats.register("kubelet API", LIMIT_KUBELET_API), cancel.clone()));
    tasks.spawn(
        "lease",
        LeaseKeeper::new(client.clone(), &id.name, health.clone())
            .run(beats.register("lease", LIMIT_LEASE), cancel.clone()),
    );
    {
        let (agent, hb, c) = (agent.clone(), beats.register("node status", LIMIT_NODE_STATUS), cancel.clone());
        tasks.spawn("node status", async move { agent.status_loop(hb, c).await });
    }
    if let Some(settings) = joining {
        let serving = managed_serving.then_some(serving_identity);
        let hb = beats.register("certificate renewal", LIMIT_RENEWAL);
        tasks.spawn(
            "certificate renewal",
            join::renew::maintain(settings, clients.clone(), serving, hb, cancel.clone()),
        );
    }
    tasks.spawn("watchdog", notify::watchdog(beats.clone(), cancel.clone()));

    let (events, event_task) = crate::events::EventSink::new(client.clone(), &id.name, cancel.clone());
    tasks.spawn("events", event_task);
    let facts = {
        let state_dir = config.paths.state_dir.clone();
        tokio::task::spawn_blocking(move || host::HostFacts::read(&state_dir)).await.context("host probe task")??
    };
    let allocatable = crate::node::status::allocatable(&config, &facts);
    let pods_memory_max = crate::node::status::pods_memory_max(&config, &facts);
    let shared = Arc::new(
        Shared::new(
            Arc::new(KubePodApi::new(client.clone())),
            Arc::new(events),
            systemd.clone(),
            images,
            Clock::system(),
            NodeContext { node_name: id.name.clone(), node_ip: internal_ip.to_string(), policy: config.node_policy() },
            config.paths.pod_dir.clone(),
            health.clone(),
        )
        .with_node_resources(allocatable, pods_memory_max, config.security.report_exposure),
    );
    let pod_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let manager = PodManager::new(shared, cancel.clone(), pod_count.clone()).reporting_sync_to(pods_synced);
        let api: Api<Pod> = Api::all(clients.watches.clone());
        let selector = watcher::Config::default().fields(&format!("spec.nodeName={}", id.name));
        let pods = watcher::watcher(api, selector).default_backoff().boxed();
        let hb = beats.register("pod manager", LIMIT_POD_MANAGER);
        tasks.spawn("pod manager", manager.run(pods, hb));
    }

    notify::ready(&format!("node {} registered", id.name));
    log::info!(node = id.name.as_str(); "node {} ready", id.name);
    tasks
        .spawn("status line", status_line(id.name.clone(), pod_count, clients.clone(), health.clone(), cancel.clone()));

    let outcome = tasks.until_shutdown_or_failure(&shutdown).await;
    if let Err(e) = &outcome {
        log::error!("{e:#}; stopping so that systemd restarts vks (running pods are adopted untouched)");
    }
    cancel.cancel();
    notify::stopping();
    log::info!("shutting down");
    tasks.drain().await;
    outcome
}

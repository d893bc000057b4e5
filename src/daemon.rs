//! `vks run`: wires the boundaries together and runs the node until shutdown.
//!
//! Order matters and is the contract with systemd (`Type=notify`): the config is already valid;
//! then systemd's bus and the images (fatal if they fail); then the static pods are read and the
//! pod manager starts, so static pods run with or without a cluster. Without `[cluster]`
//! (standalone) that is all: `READY=1` once the pod manager took the static pods and the units
//! on the node, no join, no Node, no API call. With a cluster, vks then joins (if configured and
//! needed), reads the kubeconfig, binds the kubelet port (fatal if they fail) and registers the
//! Node (retried until it works); then the cluster's loops start, the pod manager gets the
//! node's pod watch, and only then `READY=1` (`cluster.rs`). On shutdown the loops are cancelled
//! together and given a few seconds to finish. Pods keep running: their units belong to
//! systemd, not to vks.
//!
//! Supervision: every long-running loop is a named task of one [`Tasks`] set and beats its own
//! heartbeat (see [`crate::notify`]). A loop that ends or panics while vks is not shutting down
//! is a failure of the whole daemon (also while vks is still joining or registering): vks logs
//! which one, stops the others and exits non-zero, and systemd restarts it
//! (`Restart=on-failure`); the new vks adopts the running pods untouched. A loop that hangs stops
//! its heartbeat, so the watchdog pings stop and systemd restarts vks the same way. A node is
//! never left Ready with a dead loop behind it.

mod cluster;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
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
use crate::pods::local::{Events as LocalEvents, LocalPodApi, STATUS_DIR, StatusStore};
use crate::pods::{PodManager, Shared};
use crate::static_pods::{self, merge::Merge};
use crate::systemd::dbus::DbusSystemd;
use crate::systemd::{Systemd, UNIT_DIR};
use crate::unit::NodeContext;
use cluster::{ClusterLink, connect_cluster, start_cluster_loops};

/// Keeps systemd's status line (`systemctl status vks`) current: pods, API requests, outages.
async fn status_line(
    node: String,
    pods: Arc<std::sync::atomic::AtomicUsize>,
    clients: Option<api::Clients>,
    health: Arc<ApiHealth>,
    cancel: CancellationToken,
) -> Result<()> {
    let mut last = String::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let count = pods.load(std::sync::atomic::Ordering::Relaxed);
        let line = match &clients {
            None => format!("node {node} (standalone): {count} pods"),
            Some(clients) => {
                let api = if health.is_down() { "; API server unreachable" } else { "" };
                format!("node {node}: {count} pods, {} API requests{api}", clients.requests_sent())
            }
        };
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
const LIMIT_STATIC: Duration = Duration::from_secs(30);
/// A round of the mirror pods makes up to three API requests per static pod, beating between.
const LIMIT_MIRRORS: Duration = Duration::from_secs(120);
const LIMIT_SERVICES: Duration = Duration::from_secs(30);

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

/// The node's InternalIP: configured, or detected. A standalone node needs none to run its
/// static pods: without one it uses the loopback address.
fn node_ip(config: &Config) -> Result<std::net::IpAddr> {
    match config.node.internal_ip {
        Some(ip) => Ok(ip),
        None if config.standalone() => Ok(host::detect_node_ip().unwrap_or_else(|e| {
            log::warn!("{e:#}; pods see 127.0.0.1 as their host and pod IP");
            std::net::IpAddr::from([127, 0, 0, 1])
        })),
        None => host::detect_node_ip(),
    }
}

/// Runs the daemon until `shutdown` is cancelled.
///
/// The pods come first: systemd, images and the static pods run at once, with or without a
/// cluster (the kubelet's way, so a static pod can even be the control plane). Without a
/// cluster, `READY=1` follows as soon as the pod manager has taken the static pods and the
/// units on the node. With one, vks then joins, binds the kubelet port and registers the Node
/// ([`connect_cluster`]), starts the cluster's loops and gives the pod manager the node's pod
/// watch; `READY=1` follows the Node's registration.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let config = Arc::new(config);
    for dir in [&config.paths.state_dir, &config.paths.pod_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let volumes = Arc::new(crate::volumes::Volumes::new(
        config.paths.pod_dir.clone(),
        config.paths.run_dir.clone(),
        config.volumes.host_path_allow.clone(),
        Clock::system(),
    ));
    volumes.prepare_node().map_err(anyhow::Error::msg).context("preparing the pod directories")?;
    let internal_ip = node_ip(&config)?;
    let id = NodeIdentity {
        name: config.node.name.clone(),
        internal_ip,
        external_ip: config.node.external_ip,
        kubelet_port: config.kubelet.port,
    };
    let mode = if config.standalone() { " standalone (no [cluster] configured: static pods only)" } else { "" };
    log::info!(node = id.name.as_str(); "vks {} starting as node {} ({internal_ip}){mode}", env!("CARGO_PKG_VERSION"), id.name);

    notify::status("connecting to systemd");
    let dbus =
        Arc::new(DbusSystemd::connect(None, Path::new(UNIT_DIR)).await.context("connecting to systemd over D-Bus")?);
    let systemd: Arc<dyn Systemd> = dbus.clone();
    let version = systemd.version().await.context("reading systemd's version")?;
    log::info!("systemd {version} reachable over D-Bus");
    let images = images(&config, systemd.clone())?;

    // The static pods, read once before anything runs; the records of pods that are not on the
    // node any more are dropped (scheduled pods' records come back with their next status).
    let store = Arc::new(StatusStore::open(Path::new(STATUS_DIR)));
    let (mut source, statics) = static_pods::source::Source::new(config.static_pods.manifest_dir.clone(), &id.name);
    source.rescan().await;
    let current: HashSet<String> = statics.borrow().pods.iter().map(|p| p.id().uid).collect();
    store.retain(|r| current.contains(&r.uid));

    let beats = Heartbeats::default();
    let mut tasks = Tasks::new();
    // Every loop stops on `cancel`: the shutdown token, or a failure of another loop.
    let cancel = shutdown.child_token();
    tasks.spawn("static pods", source.run(beats.register("static pods", LIMIT_STATIC), cancel.clone()));
    {
        let (dbus, hb, c) = (dbus.clone(), beats.register("D-Bus", LIMIT_DBUS), cancel.clone());
        tasks.spawn("D-Bus", async move { dbus.keep_connected(hb, c).await });
    }
    tasks.spawn("watchdog", notify::watchdog(beats.clone(), cancel.clone()));

    let pod_api = Arc::new(LocalPodApi::new(store.clone()));
    let events = Arc::new(LocalEvents::default());
    let health = Arc::new(ApiHealth::default());
    let pods_synced = tokio::sync::watch::Sender::new(false);
    let (pod_events, cluster_link) = if config.standalone() {
        (Merge::standalone(statics.clone(), store.clone()).into_stream(), None)
    } else {
        let (watch_tx, watch_rx) = tokio::sync::oneshot::channel();
        let (mirror_tx, mirror_rx) = tokio::sync::mpsc::unbounded_channel();
        let merged = Merge::with_cluster(watch_rx, statics.clone(), store.clone(), mirror_tx);
        (merged.into_stream(), Some((watch_tx, mirror_rx)))
    };
    crate::systemd::run::SystemdRun::sweep(crate::systemd::UNIT_DIR.as_ref());
    let facts = {
        let state_dir = config.paths.state_dir.clone();
        tokio::task::spawn_blocking(move || host::HostFacts::read(&state_dir)).await.context("host probe task")??
    };
    let node_allocatable = crate::node::status::allocatable(&config, &facts);
    let pods_memory_max = crate::node::status::pods_memory_max(&config, &facts);
    let mut shared = Shared::new(
        pod_api.clone(),
        events.clone(),
        systemd.clone(),
        images,
        Clock::system(),
        NodeContext { node_name: id.name.clone(), node_ip: internal_ip.to_string(), policy: config.node_policy() },
        config.paths.pod_dir.clone(),
        health.clone(),
    )
    .with_node_resources(node_allocatable, pods_memory_max, config.security.report_exposure);
    // ConfigMaps, Secrets, tokens and Services of the pods, read through the API once the node
    // is connected (static pods refer to none); their volumes (issue 12).
    let object_api = Arc::new(crate::objects::Deferred::default());
    shared.objects = crate::objects::Objects::with_node(
        object_api.clone(),
        Clock::system(),
        None,
        crate::unit::data::Allocatable {
            cpu_millis: node_allocatable.cpu,
            memory: node_allocatable.memory,
            ephemeral_storage: node_allocatable.ephemeral_storage,
        },
    );
    shared.volumes = volumes;
    let objects = shared.objects.clone();
    let shared = Arc::new(shared);
    let pod_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let manager = PodManager::new(shared, cancel.clone(), pod_count.clone()).reporting_sync_to(pods_synced.clone());
        let hb = beats.register("pod manager", LIMIT_POD_MANAGER);
        tasks.spawn("pod manager", manager.run(pod_events, hb));
    }

    let clients = match cluster_link {
        None => {
            notify::status("starting the static pods");
            let mut synced = pods_synced.subscribe();
            let outcome = tokio::select! {
                r = synced.wait_for(|s| *s) => r.map(drop).map_err(|_| anyhow::anyhow!("the pod manager stopped")),
                o = tasks.until_shutdown_or_failure(&shutdown) => o.and(Err(anyhow::anyhow!("shut down"))),
            };
            if outcome.is_err() {
                return stop(tasks, cancel, tasks_outcome(outcome, &shutdown)).await;
            }
            notify::ready(&format!("standalone: {} static pod(s)", statics.borrow().pods.len()));
            log::info!(node = id.name.as_str(); "node {} ready (standalone)", id.name);
            None
        }
        Some((watch_tx, mirror_rx)) => {
            let link = ClusterLink {
                pod_api,
                events,
                health: health.clone(),
                watch_tx,
                mirror_rx,
                statics,
                store,
                objects,
                object_api,
            };
            let connected = tokio::select! {
                r = connect_cluster(&config, &id, systemd.clone(), health.clone(), &beats, pods_synced.subscribe()) => r,
                o = tasks.until_shutdown_or_failure(&shutdown) => o.and(Err(anyhow::anyhow!("shut down"))),
            };
            let cluster = match connected {
                Ok(Some(c)) => c,
                Ok(None) => return stop(tasks, cancel, Ok(())).await,
                Err(e) => return stop(tasks, cancel, tasks_outcome(Err(e), &shutdown)).await,
            };
            let clients = cluster.clients.clone();
            start_cluster_loops(cluster, link, &config, &id, &beats, &mut tasks, &cancel);
            notify::ready(&format!("node {} registered", id.name));
            log::info!(node = id.name.as_str(); "node {} ready", id.name);
            Some(clients)
        }
    };
    tasks.spawn("status line", status_line(id.name.clone(), pod_count, clients, health.clone(), cancel.clone()));

    let outcome = tasks.until_shutdown_or_failure(&shutdown).await;
    stop(tasks, cancel, outcome).await
}

/// A shutdown while starting is no failure; anything else is.
fn tasks_outcome(outcome: Result<()>, shutdown: &CancellationToken) -> Result<()> {
    if shutdown.is_cancelled() { Ok(()) } else { outcome }
}

/// The one way out: stop every loop (logging why when it is a failure) and drain them.
async fn stop(mut tasks: Tasks, cancel: CancellationToken, outcome: Result<()>) -> Result<()> {
    if let Err(e) = &outcome {
        log::error!("{e:#}; stopping so that systemd restarts vks (running pods are adopted untouched)");
    }
    cancel.cancel();
    notify::stopping();
    log::info!("shutting down");
    tasks.drain().await;
    outcome
}

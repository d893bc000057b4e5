//! Pods bound to this node, run as systemd units.
//!
//! [`PodManager`] watches the pods with `spec.nodeName=<node>` (the only pods the Node
//! authorizer lets a node see) through kube-runtime's watcher, and routes every pod event and
//! every unit change (D-Bus `PropertiesChanged` signals) to that pod's [`worker::Worker`]. At
//! start-up it reads the vks units already on the node (their `[X-Kubernetes]` sections) and
//! hands them to the workers of their pods, so running units are adopted, never restarted.
//! Units whose pod no longer exists are stopped and removed (at start-up, after every re-list,
//! and periodically); files without a complete `[X-Kubernetes]` section are never touched.

pub mod backoff;
pub mod status;
pub mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::systemd::UnitEvent;
use crate::unit::{ContainerKind, UnitMeta, name::PREFIX};
pub use worker::Shared;
use worker::{Adopted, Msg, Worker};

/// How often every worker re-reads its units even without signals (the safety net).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(60);

struct Handle {
    tx: mpsc::UnboundedSender<Msg>,
    units: Vec<String>,
}

/// Runs the pods of this node.
pub struct PodManager {
    shared: Arc<Shared>,
    workers: HashMap<String, Handle>,
    /// unit name → UIDs of the workers using that name (two while one pod replaces another).
    index: HashMap<String, Vec<String>>,
    /// Units found on the node that no worker has claimed yet, by pod UID.
    adopted: HashMap<String, Vec<Adopted>>,
    tasks: JoinSet<String>,
    cancel: CancellationToken,
    /// Number of pods with a worker, for the service status line.
    count: Arc<std::sync::atomic::AtomicUsize>,
}

impl PodManager {
    /// A manager; nothing happens until [`PodManager::run`].
    pub fn new(
        shared: Arc<Shared>,
        cancel: CancellationToken,
        count: Arc<std::sync::atomic::AtomicUsize>,
    ) -> PodManager {
        PodManager {
            shared,
            workers: HashMap::new(),
            index: HashMap::new(),
            adopted: HashMap::new(),
            tasks: JoinSet::new(),
            cancel,
            count,
        }
    }

    /// Reads the `[X-Kubernetes]` section of every vks unit file not known to a worker.
    async fn scan_units(&self) -> HashMap<String, Vec<Adopted>> {
        let sd = &self.shared.systemd;
        let mut found: HashMap<String, Vec<Adopted>> = HashMap::new();
        let names = match sd.list_unit_files(PREFIX).await {
            Ok(n) => n,
            Err(e) => {
                log::warn!("listing vks units: {e}");
                return found;
            }
        };
        for name in names {
            if self.index.contains_key(&name) {
                continue;
            }
            match sd.read_unit_file(&name).await {
                Ok(Some(text)) => match UnitMeta::parse(&text) {
                    Some(meta) => found.entry(meta.pod_uid.clone()).or_default().push(Adopted { unit: name, meta }),
                    None => log::debug!("{name} has no complete [X-Kubernetes] section; not vks's, left alone"),
                },
                Ok(None) => {}
                Err(e) => log::warn!("reading {name}: {e}"),
            }
        }
        found
    }

    fn spawn(&mut self, pod: Pod, adopted: Vec<Adopted>, gone: bool) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let (worker, tx) = Worker::new(self.shared.clone(), pod, adopted);
        let units = worker.unit_names();
        for u in &units {
            self.index.entry(u.clone()).or_default().push(uid.clone());
        }
        if gone {
            let _ = tx.send(Msg::Gone);
        }
        self.workers.insert(uid.clone(), Handle { tx, units });
        self.count.store(self.workers.len(), std::sync::atomic::Ordering::Relaxed);
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            worker.run(cancel).await;
            uid
        });
    }

    fn route(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else { return };
        if let Some(h) = self.workers.get(&uid) {
            let _ = h.tx.send(Msg::Pod(Box::new(pod)));
            return;
        }
        let adopted = self.adopted.remove(&uid).unwrap_or_default();
        self.spawn(pod, adopted, false);
    }

    fn gone(&mut self, uid: &str) {
        if let Some(h) = self.workers.get(uid) {
            let _ = h.tx.send(Msg::Gone);
        }
    }

    fn finished(&mut self, uid: &str) {
        if let Some(h) = self.workers.remove(uid) {
            self.count.store(self.workers.len(), std::sync::atomic::Ordering::Relaxed);
            for u in h.units {
                if let Some(list) = self.index.get_mut(&u) {
                    list.retain(|x| x != uid);
                    if list.is_empty() {
                        self.index.remove(&u);
                    }
                }
            }
        }
    }

    /// Stops and removes units whose pod is not on this node any more.
    async fn sweep(&mut self) {
        let mut orphans = std::mem::take(&mut self.adopted);
        for (uid, units) in self.scan_units().await {
            if !self.workers.contains_key(&uid) {
                orphans.entry(uid).or_default().extend(units);
            }
        }
        for (uid, mut units) in orphans {
            if self.workers.contains_key(&uid) {
                continue;
            }
            units.sort_by(|a, b| a.unit.cmp(&b.unit));
            units.dedup_by(|a, b| a.unit == b.unit);
            let m = &units[0].meta;
            log::info!(
                pod = format!("{}/{}", m.namespace, m.pod).as_str();
                "pod {}/{} ({uid}) is no longer on this node: removing its {} unit(s)",
                m.namespace,
                m.pod,
                units.len()
            );
            let pod = orphan_pod(&units);
            self.spawn(pod, units, true);
        }
    }

    /// Runs until `cancel` fires.
    pub async fn run(mut self, node_name: &str) -> anyhow::Result<()> {
        self.adopted = self.scan_units().await;
        let adopted_units: usize = self.adopted.values().map(Vec::len).sum();
        if adopted_units > 0 {
            log::info!("found {adopted_units} vks unit(s) on the node; adopting them");
        }
        let mut unit_events = self.shared.systemd.watch(PREFIX).await?;
        let api: Api<Pod> = Api::all(self.shared.watch_client.clone());
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
        let mut pods = watcher::watcher(api, config).default_backoff().boxed();
        let mut listing: Option<HashSet<String>> = None;
        let mut resync = tokio::time::interval(RESYNC_INTERVAL);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => break,
                ev = pods.next() => match ev {
                    None => break,
                    Some(Err(e)) => self.shared.health.report("watching pods", &e.into()),
                    Some(Ok(ev)) => {
                        self.shared.health.ok();
                        match ev {
                            Event::Init => listing = Some(HashSet::new()),
                            Event::InitApply(p) => {
                                if let (Some(l), Some(uid)) = (listing.as_mut(), p.metadata.uid.clone()) {
                                    l.insert(uid);
                                }
                                self.route(p);
                            }
                            Event::InitDone => {
                                let seen = listing.take().unwrap_or_default();
                                let missing: Vec<String> =
                                    self.workers.keys().filter(|u| !seen.contains(*u)).cloned().collect();
                                for uid in missing {
                                    self.gone(&uid);
                                }
                                self.sweep().await;
                            }
                            Event::Apply(p) => self.route(p),
                            Event::Delete(p) => {
                                if let Some(uid) = p.metadata.uid.as_deref() {
                                    self.gone(uid);
                                }
                            }
                        }
                    }
                },
                ue = unit_events.recv() => match ue {
                    Some(UnitEvent::Changed(name, delta)) => {
                        for uid in self.index.get(&name).into_iter().flatten() {
                            if let Some(h) = self.workers.get(uid) {
                                let _ = h.tx.send(Msg::Unit(name.clone(), delta.clone()));
                            }
                        }
                    }
                    Some(UnitEvent::Resync) => self.resync_all(),
                    None => {
                        log::error!("lost the D-Bus signal stream from systemd; relying on resync");
                        unit_events = match self.shared.systemd.watch(PREFIX).await {
                            Ok(rx) => rx,
                            Err(e) => {
                                log::error!("re-subscribing to systemd signals: {e}");
                                let (_tx, rx) = mpsc::unbounded_channel();
                                rx
                            }
                        };
                    }
                },
                _ = resync.tick() => {
                    self.resync_all();
                    if listing.is_none() {
                        self.sweep().await;
                    }
                }
                Some(done) = self.tasks.join_next() => {
                    match done {
                        Ok(uid) => self.finished(&uid),
                        Err(e) => log::error!("a pod worker failed: {e}"),
                    }
                }
            }
        }
        // vks is stopping: workers exit on the same cancellation; the pods keep running.
        while self.tasks.join_next().await.is_some() {}
        Ok(())
    }

    fn resync_all(&self) {
        for h in self.workers.values() {
            let _ = h.tx.send(Msg::Resync);
        }
    }

    /// Number of pods with a worker.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether no pod has a worker.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }
}

/// A stand-in pod for units whose pod is gone from the API: enough for a worker to stop and
/// remove them.
fn orphan_pod(units: &[Adopted]) -> Pod {
    let m = &units[0].meta;
    let container = |a: &Adopted| Container {
        name: a.meta.container.clone(),
        image: Some(a.meta.image.clone()),
        restart_policy: (a.meta.kind == ContainerKind::Sidecar).then(|| "Always".to_owned()),
        ..Container::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(m.pod.clone()),
            namespace: Some(m.namespace.clone()),
            uid: Some(m.pod_uid.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            init_containers: Some(units.iter().filter(|a| a.meta.kind != ContainerKind::App).map(container).collect()),
            containers: units.iter().filter(|a| a.meta.kind == ContainerKind::App).map(container).collect(),
            ..PodSpec::default()
        }),
        status: None,
    }
}

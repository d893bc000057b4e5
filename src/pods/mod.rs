//! Pods bound to this node, run as systemd units.
//!
//! [`PodManager`] consumes the stream of pod events of this node (the daemon gives it
//! kube-runtime's watcher on `spec.nodeName=<node>`, the only pods the Node authorizer lets a
//! node see; tests give it a channel) and routes every pod event and every unit change (D-Bus
//! `PropertiesChanged` signals) to that pod's [`worker::Worker`]. At start-up it reads the vks
//! units already on the node (their `[X-Kubernetes]` sections) and hands them to the workers of
//! their pods, so running units are adopted, never restarted. Units whose pod no longer exists
//! are stopped and removed (at start-up, after every re-list, and periodically), and so are the
//! pod directories (volumes, env files) of pods that are gone; files without a complete
//! `[X-Kubernetes]` section are never touched.
//!
//! Workers are supervised: a worker that panics is logged with its pod and replaced by a new one
//! (after a back-off that grows with repeated panics), which adopts the pod's units and drives
//! the pod again.

pub mod api;
pub mod backoff;
pub mod data;
pub mod fields;
pub mod local;
pub mod status;
pub mod termination;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_probes;
pub mod worker;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{Container, EphemeralContainer, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, Event};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::PodRef;
use crate::notify::Heartbeat;
use crate::systemd::UnitEvent;
use crate::unit::{ContainerKind, UnitMeta, name::PREFIX};
pub use worker::Shared;
use worker::{Adopted, Msg, Worker};

/// How often every worker re-reads its units even without signals (the safety net).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(60);
/// How often the manager's loop shows progress to the watchdog while nothing happens.
const BEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait before a worker that panicked is replaced.
const RESPAWN_MAX: Duration = Duration::from_secs(60);

/// The pod events of this node, as kube-runtime's watcher delivers them.
pub type PodEvents = BoxStream<'static, Result<Event<Pod>, watcher::Error>>;

struct Handle {
    tx: tokio::sync::mpsc::UnboundedSender<Msg>,
    units: Vec<String>,
    /// The pod as last seen, to start a new worker from if this one panics.
    pod: Pod,
    gone: bool,
}

/// A pod whose worker panicked, waiting to get a new one.
struct Respawn {
    pod: Pod,
    gone: bool,
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
    task_pods: HashMap<tokio::task::Id, String>,
    /// Pods whose worker panicked, by UID, and when to start a new one.
    respawn: HashMap<String, Respawn>,
    respawn_at: BTreeSet<(Instant, String)>,
    /// Panics per pod UID, for the back-off.
    panics: HashMap<String, u32>,
    cancel: CancellationToken,
    /// Number of pods with a worker, for the service status line.
    count: Arc<AtomicUsize>,
    /// Turns true once the first pod list was handled and the units on the node adopted.
    synced: tokio::sync::watch::Sender<bool>,
}

fn panic_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let p = e.into_panic();
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

impl PodManager {
    /// A manager; nothing happens until [`PodManager::run`].
    pub fn new(shared: Arc<Shared>, cancel: CancellationToken, count: Arc<AtomicUsize>) -> PodManager {
        PodManager {
            shared,
            workers: HashMap::new(),
            index: HashMap::new(),
            adopted: HashMap::new(),
            tasks: JoinSet::new(),
            task_pods: HashMap::new(),
            respawn: HashMap::new(),
            respawn_at: BTreeSet::new(),
            panics: HashMap::new(),
            cancel,
            count,
            synced: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Makes the manager set `synced` to true once it has handled the first pod list and adopted
    /// the units on the node (see [`crate::node::NodeAgent::with_loops`]).
    pub fn reporting_sync_to(mut self, synced: tokio::sync::watch::Sender<bool>) -> PodManager {
        self.synced = synced;
        self
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
        let (worker, tx) = Worker::new(self.shared.clone(), pod.clone(), adopted);
        let units = worker.unit_names();
        for u in &units {
            self.index.entry(u.clone()).or_default().push(uid.clone());
        }
        if gone {
            let _ = tx.send(Msg::Gone);
        }
        self.workers.insert(uid.clone(), Handle { tx, units, pod, gone });
        self.count.store(self.workers.len(), Ordering::Relaxed);
        let cancel = self.cancel.clone();
        let task_uid = uid.clone();
        let handle = self.tasks.spawn(async move {
            worker.run(cancel).await;
            task_uid
        });
        self.task_pods.insert(handle.id(), uid);
    }

    fn route(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else { return };
        if let Some(h) = self.workers.get_mut(&uid) {
            // Ephemeral containers are added to a running pod: their units join the index.
            for unit in worker::unit_names_of(&pod) {
                if !h.units.contains(&unit) {
                    self.index.entry(unit.clone()).or_default().push(uid.clone());
                    h.units.push(unit);
                }
            }
            h.pod = pod.clone();
            let _ = h.tx.send(Msg::Pod(Box::new(pod)));
            return;
        }
        if let Some(r) = self.respawn.get_mut(&uid) {
            r.pod = pod;
            return;
        }
        let adopted = self.adopted.remove(&uid).unwrap_or_default();
        self.spawn(pod, adopted, false);
    }

    fn gone(&mut self, uid: &str) {
        if let Some(h) = self.workers.get_mut(uid) {
            h.gone = true;
            let _ = h.tx.send(Msg::Gone);
        }
        if let Some(r) = self.respawn.get_mut(uid) {
            r.gone = true;
        }
    }

    /// Forgets a worker that ended; returns its handle.
    fn finished(&mut self, uid: &str) -> Option<Handle> {
        let h = self.workers.remove(uid)?;
        self.count.store(self.workers.len(), Ordering::Relaxed);
        for u in &h.units {
            if let Some(list) = self.index.get_mut(u) {
                list.retain(|x| x != uid);
                if list.is_empty() {
                    self.index.remove(u);
                }
            }
        }
        Some(h)
    }

    /// A worker task ended: normally (its pod is gone from the node) or by a panic, in which
    /// case a new worker is started for the pod after a back-off.
    fn worker_ended(&mut self, done: Result<(tokio::task::Id, String), tokio::task::JoinError>) {
        let (id, result) = match done {
            Ok((id, uid)) => (id, Ok(uid)),
            Err(e) => (e.id(), Err(e)),
        };
        let Some(uid) = self.task_pods.remove(&id) else { return };
        let e = match result {
            Ok(_) => {
                if let Some(h) = self.finished(&uid) {
                    self.shared.api.forget(&PodRef::of(&h.pod));
                }
                self.panics.remove(&uid);
                return;
            }
            Err(e) => e,
        };
        if e.is_cancelled() {
            self.finished(&uid);
            return;
        }
        let Some(h) = self.finished(&uid) else { return };
        let n = self.panics.entry(uid.clone()).or_default();
        *n += 1;
        let delay = (Duration::from_secs(1) * 2u32.saturating_pow((*n - 1).min(10))).min(RESPAWN_MAX);
        let pod = PodRef::of(&h.pod);
        log::error!(
            pod = pod.to_string().as_str();
            "the worker of pod {pod} panicked ({}); a new worker takes over in {}s",
            panic_message(e),
            delay.as_secs()
        );
        self.respawn_at.insert((Instant::now() + delay, uid.clone()));
        self.respawn.insert(uid, Respawn { pod: h.pod, gone: h.gone });
    }

    /// Starts new workers for the pods whose respawn time has come.
    async fn respawn_due(&mut self) {
        let now = Instant::now();
        let due: Vec<(Instant, String)> = self.respawn_at.iter().take_while(|(at, _)| *at <= now).cloned().collect();
        if due.is_empty() {
            return;
        }
        let mut found = self.scan_units().await;
        for key in due {
            self.respawn_at.remove(&key);
            let Some(r) = self.respawn.remove(&key.1) else { continue };
            let adopted = found.remove(&key.1).unwrap_or_default();
            self.spawn(r.pod, adopted, r.gone);
        }
    }

    /// Stops and removes units whose pod is not on this node any more.
    async fn sweep(&mut self) {
        let mut orphans = std::mem::take(&mut self.adopted);
        for (uid, units) in self.scan_units().await {
            if !self.workers.contains_key(&uid) && !self.respawn.contains_key(&uid) {
                orphans.entry(uid).or_default().extend(units);
            }
        }
        for (uid, mut units) in orphans {
            if self.workers.contains_key(&uid) || self.respawn.contains_key(&uid) {
                continue;
            }
            units.sort_by(|a, b| a.unit.cmp(&b.unit));
            units.dedup_by(|a, b| a.unit == b.unit);
            let pod = orphan_pod(&units);
            let id = PodRef::of(&pod);
            log::info!(
                pod = id.to_string().as_str();
                "pod {id} ({uid}) is no longer on this node: removing its {} unit(s)",
                units.len()
            );
            self.spawn(pod, units, true);
        }
        // Pod directories whose pod is gone (deleted while vks was not running, or a removal
        // that was interrupted): nothing of a deleted pod stays on the node.
        let keep: HashSet<String> =
            self.workers.keys().chain(self.respawn.keys()).chain(self.adopted.keys()).cloned().collect();
        for uid in self.shared.volumes.sweep(keep).await {
            log::info!("removed the directories of gone pod {uid}");
        }
        self.sweep_slices().await;
    }

    /// Stops and removes pod and container slices whose pod has no worker (left behind when
    /// vks stopped between removing a pod's units and its slices).
    async fn sweep_slices(&self) {
        let sd = &self.shared.systemd;
        let names = match sd.list_slice_files("vks-").await {
            Ok(n) => n,
            Err(e) => {
                log::warn!("listing vks slices: {e}");
                return;
            }
        };
        for name in names.into_iter().filter(|n| crate::unit::resources::is_pod_slice(n)) {
            let Ok(Some(text)) = sd.read_unit_file(&name).await else { continue };
            let Some(uid) = crate::unit::resources::slice_owner_uid(&text) else { continue };
            if self.workers.contains_key(&uid) || self.respawn.contains_key(&uid) || self.adopted.contains_key(&uid) {
                continue;
            }
            log::info!(unit = name.as_str(); "slice {name} belongs to pod {uid}, which is no longer on this node: removing it");
            let _ = sd.stop(&name).await;
            if let Err(e) = sd.remove_unit_file(&name).await {
                log::warn!(unit = name.as_str(); "{e}");
            }
        }
    }

    /// Runs until `cancel` fires, or returns an error when the pod event stream ends.
    pub async fn run(mut self, mut pods: PodEvents, heartbeat: Heartbeat) -> anyhow::Result<()> {
        self.shared.write_node_slices().await;
        self.adopted = self.scan_units().await;
        for (uid, units) in &self.adopted {
            for a in units {
                self.shared.claim_found(&a.unit, uid);
            }
        }
        let adopted_units: usize = self.adopted.values().map(Vec::len).sum();
        if adopted_units > 0 {
            log::info!("found {adopted_units} vks unit(s) on the node; adopting them");
        }
        let mut unit_events = self.shared.systemd.watch(PREFIX).await?;
        let mut listing: Option<HashSet<String>> = None;
        let mut resync = tokio::time::interval(RESYNC_INTERVAL);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        let mut beat = tokio::time::interval(BEAT_INTERVAL);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            heartbeat.beat();
            crate::failpoint!("pod-manager-exit", |_| Ok(()));
            crate::failpoint_hang!("pod-manager-stall");
            let next_respawn = self.respawn_at.first().map(|(at, _)| *at);
            tokio::select! {
                () = self.cancel.cancelled() => break,
                ev = pods.next() => match ev {
                    None => anyhow::bail!("the pod watch ended"),
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
                                let missing: Vec<String> = self
                                    .workers
                                    .keys()
                                    .chain(self.respawn.keys())
                                    .filter(|u| !seen.contains(*u))
                                    .cloned()
                                    .collect();
                                for uid in missing {
                                    self.gone(&uid);
                                }
                                self.sweep().await;
                                self.synced.send_replace(true);
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
                    None => anyhow::bail!("the stream of unit changes from systemd ended"),
                },
                _ = resync.tick() => {
                    self.resync_all();
                    // Only once a full listing was seen: before it, every unit would look
                    // orphaned (an API server unreachable at start-up must not stop pods).
                    if listing.is_none() && *self.synced.borrow() {
                        self.sweep().await;
                    }
                }
                _ = beat.tick() => {}
                () = sleep_until(next_respawn) => self.respawn_due().await,
                Some(done) = self.tasks.join_next_with_id() => self.worker_ended(done),
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

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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
    let ephemeral = |a: &Adopted| EphemeralContainer {
        name: a.meta.container.clone(),
        image: Some(a.meta.image.clone()),
        ..EphemeralContainer::default()
    };
    let of = |kinds: &'static [ContainerKind]| units.iter().filter(move |a| kinds.contains(&a.meta.kind));
    Pod {
        metadata: ObjectMeta {
            name: Some(m.pod.clone()),
            namespace: Some(m.namespace.clone()),
            uid: Some(m.pod_uid.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            init_containers: Some(of(&[ContainerKind::Init, ContainerKind::Sidecar]).map(container).collect()),
            containers: of(&[ContainerKind::App]).map(container).collect(),
            ephemeral_containers: Some(of(&[ContainerKind::Ephemeral]).map(ephemeral).collect()),
            ..PodSpec::default()
        }),
        status: None,
    }
}

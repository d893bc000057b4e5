//! The "mirror pods" loop: with a cluster, every static pod appears in the API as a mirror pod,
//! as the kubelet makes them (pkg/kubelet/pod/mirror_client.go, `SyncPod`):
//!
//! - a copy of the static pod with the `kubernetes.io/config.mirror` annotation (the static pod's
//!   UID), `spec.nodeName` this node and one controller ownerReference to the Node (with its UID,
//!   without blockOwnerDeletion) — what the NodeRestriction admission plugin lets a node create;
//!   static pods refer to no API object, the other condition of that plugin;
//! - its status is the static pod's, patched (with a UID precondition) whenever the worker
//!   records a new one;
//! - a mirror pod that is being deleted, or mirrors an older version of the static pod, is
//!   deleted for good (grace 0, UID precondition) and created again: deleting a mirror pod never
//!   stops the static pod;
//! - mirror pods on this node whose static pod is gone are deleted, once the pod watch listed
//!   them.
//!
//! What exists in the API comes from the pod watch of the node (the merger diverts mirror pods
//! here). Failed requests are retried every few seconds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher::Event;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Snapshot;
use super::StaticPod;
use super::manifest::{CONFIG_MIRROR, CONFIG_SEEN};
use crate::api::ApiHealth;
use crate::notify::Heartbeat;
use crate::pods::local::StatusStore;

/// How often the loop looks again when nothing woke it (retries of failed requests).
const TICK: Duration = Duration::from_secs(3);

/// A mirror pod in the API.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Known {
    uid: String,
    /// Its `kubernetes.io/config.mirror`: the UID of the static pod it mirrors.
    hash: String,
    deleting: bool,
}

type Key = (String, String);

fn key_of(p: &Pod) -> Key {
    (p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default())
}

fn known_of(p: &Pod) -> Known {
    Known {
        uid: p.metadata.uid.clone().unwrap_or_default(),
        hash: p.metadata.annotations.as_ref().and_then(|a| a.get(CONFIG_MIRROR)).cloned().unwrap_or_default(),
        deleting: p.metadata.deletion_timestamp.is_some(),
    }
}

fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Keeps the mirror pods of this node's static pods.
pub struct Mirrors {
    client: kube::Client,
    node: String,
    node_uid: Option<String>,
    store: Arc<StatusStore>,
    statics: watch::Receiver<Arc<Snapshot>>,
    events: mpsc::UnboundedReceiver<Event<Pod>>,
    health: Arc<ApiHealth>,
    known: BTreeMap<Key, Known>,
    relist: Option<BTreeMap<Key, Known>>,
    listed: bool,
    /// Mirror UID → the status last patched into it.
    patched: HashMap<String, PodStatus>,
    /// Names taken by pods that are not mirrors (logged once).
    conflicts: HashSet<Key>,
    /// Mirror pods this loop deleted: later watch events about them are stale.
    deleted: HashSet<String>,
}

impl Mirrors {
    /// The loop for node `node`: static pods from `statics`, their status from `store`, mirror
    /// pods seen by the node's pod watch from `events`.
    pub fn new(
        client: kube::Client,
        node: &str,
        store: Arc<StatusStore>,
        statics: watch::Receiver<Arc<Snapshot>>,
        events: mpsc::UnboundedReceiver<Event<Pod>>,
        health: Arc<ApiHealth>,
    ) -> Mirrors {
        Mirrors {
            client,
            node: node.to_owned(),
            node_uid: None,
            store,
            statics,
            events,
            health,
            known: BTreeMap::new(),
            relist: None,
            listed: false,
            patched: HashMap::new(),
            conflicts: HashSet::new(),
            deleted: HashSet::new(),
        }
    }

    /// Runs until `cancel` fires; an error when the mirror pod events stop.
    pub async fn run(mut self, heartbeat: Heartbeat, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            heartbeat.beat();
            self.round(&heartbeat).await;
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                changed = self.statics.changed() => {
                    if changed.is_err() {
                        // The static pod loop ended: vks is stopping.
                        cancel.cancelled().await;
                        return Ok(());
                    }
                }
                ev = self.events.recv() => match ev {
                    Some(ev) => self.observe(ev),
                    None => anyhow::bail!("the mirror pod events ended"),
                },
                () = self.store.static_changed.notified() => {}
                _ = tick.tick() => {}
            }
            while let Ok(ev) = self.events.try_recv() {
                self.observe(ev);
            }
        }
    }

    fn observe(&mut self, ev: Event<Pod>) {
        match ev {
            Event::Init => self.relist = Some(BTreeMap::new()),
            Event::InitApply(p) => {
                if let Some(r) = self.relist.as_mut() {
                    r.insert(key_of(&p), known_of(&p));
                }
            }
            Event::InitDone => {
                if let Some(r) = self.relist.take() {
                    self.known = r;
                    self.listed = true;
                }
            }
            Event::Apply(p) => {
                let m = known_of(&p);
                if !self.deleted.contains(&m.uid) {
                    self.known.insert(key_of(&p), m);
                }
            }
            Event::Delete(p) => {
                if let Some(uid) = &p.metadata.uid {
                    self.deleted.remove(uid);
                }
                let k = key_of(&p);
                if self.known.get(&k).is_some_and(|m| Some(&m.uid) == p.metadata.uid.as_ref()) {
                    self.known.remove(&k);
                }
            }
        }
    }

    /// One pass over the static pods and the mirror pods.
    async fn round(&mut self, heartbeat: &Heartbeat) {
        let snap = self.statics.borrow().clone();
        if !snap.complete {
            return;
        }
        let mut desired: BTreeMap<Key, &StaticPod> = BTreeMap::new();
        for p in &snap.pods {
            desired.insert(key_of(&p.pod), p);
        }
        for (key, sp) in &desired {
            heartbeat.beat();
            let static_uid = sp.pod.metadata.uid.clone().unwrap_or_default();
            match self.known.get(key).cloned() {
                Some(m) if m.hash == static_uid && !m.deleting => self.sync_status(key, &m.uid, &static_uid).await,
                Some(m) => {
                    let why = if m.deleting { "is being deleted" } else { "mirrors an older version of the pod" };
                    log::info!("mirror pod {}/{} {why}: replacing it", key.0, key.1);
                    if self.delete(key, &m.uid).await {
                        self.create(key, sp).await;
                    }
                }
                None => self.create(key, sp).await,
            }
        }
        if !self.listed {
            return;
        }
        let orphans: Vec<(Key, String)> = self
            .known
            .iter()
            .filter(|(k, _)| !desired.contains_key(*k))
            .map(|(k, m)| (k.clone(), m.uid.clone()))
            .collect();
        for (key, uid) in orphans {
            heartbeat.beat();
            log::info!("mirror pod {}/{} has no static pod on this node any more: deleting it", key.0, key.1);
            self.delete(&key, &uid).await;
        }
    }

    /// The UID of this node's Node object, for the ownerReference; `None` while it cannot be
    /// read or the Node is being deleted.
    async fn node_uid(&mut self) -> Option<String> {
        if self.node_uid.is_none() {
            match Api::<Node>::all(self.client.clone()).get(&self.node).await {
                Ok(n) if n.metadata.deletion_timestamp.is_none() => self.node_uid = n.metadata.uid,
                Ok(_) => log::debug!("node {} is being deleted: no mirror pods", self.node),
                Err(e) => self.health.report(&format!("reading node {}", self.node), &e.into()),
            }
        }
        self.node_uid.clone()
    }

    async fn create(&mut self, key: &Key, sp: &StaticPod) {
        let Some(node_uid) = self.node_uid().await else { return };
        let static_uid = sp.pod.metadata.uid.clone().unwrap_or_default();
        let mut pod = sp.pod.clone();
        pod.status = None;
        pod.metadata.uid = None;
        pod.metadata.resource_version = None;
        let annotations = pod.metadata.annotations.get_or_insert_default();
        annotations.insert(CONFIG_MIRROR.into(), static_uid.clone());
        annotations.insert(CONFIG_SEEN.into(), k8s_openapi::jiff::Timestamp::now().to_string());
        pod.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: self.node.clone(),
            uid: node_uid,
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
        match api.create(&PostParams::default(), &pod).await {
            Ok(created) => {
                self.health.ok();
                self.conflicts.remove(key);
                let m = known_of(&created);
                log::info!(
                    pod = format!("{}/{}", key.0, key.1).as_str();
                    "mirror pod {}/{} ({}) created for static pod {static_uid}", key.0, key.1, m.uid
                );
                let mirror_uid = m.uid.clone();
                self.known.insert(key.clone(), m);
                self.sync_status(key, &mirror_uid, &static_uid).await;
            }
            Err(e) if code(&e) == Some(409) => {
                // Known once the pod watch shows it; a pod of that name that is not a mirror
                // stays (it is not this node's to delete).
                if self.listed && !self.known.contains_key(key) && self.conflicts.insert(key.clone()) {
                    log::warn!(
                        "pod {}/{} exists in the API and is not the mirror of static pod {static_uid}: no mirror pod",
                        key.0,
                        key.1
                    );
                }
            }
            Err(e) if code(&e) == Some(403) => {
                // The Node may have been re-created (a new UID): read it again next time.
                self.node_uid = None;
                log::warn!("creating mirror pod {}/{}: {e}", key.0, key.1);
            }
            Err(e) => self.health.report(&format!("creating mirror pod {}/{}", key.0, key.1), &e.into()),
        }
    }

    /// Copies the static pod's recorded status into its mirror pod if it changed.
    async fn sync_status(&mut self, key: &Key, mirror_uid: &str, static_uid: &str) {
        let Some(status) = self.store.status(static_uid) else { return };
        if self.patched.get(mirror_uid) == Some(&status) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
        let body = serde_json::json!({ "metadata": { "uid": mirror_uid }, "status": patch_status(&status) });
        match api.patch_status(&key.1, &PatchParams::default(), &Patch::Strategic(&body)).await {
            Ok(_) => {
                self.health.ok();
                self.patched.insert(mirror_uid.to_owned(), status);
            }
            Err(e) if matches!(code(&e), Some(404 | 409)) => {
                // Gone or replaced: created again next round.
                self.known.remove(key);
                self.patched.remove(mirror_uid);
            }
            Err(e) => self.health.report(&format!("patching the status of mirror pod {}/{}", key.0, key.1), &e.into()),
        }
    }

    /// Deletes a mirror pod for good (grace 0, only if it still has `uid`). True when it is gone.
    async fn delete(&mut self, key: &Key, uid: &str) -> bool {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(uid.to_owned()), resource_version: None }),
            ..DeleteParams::default()
        };
        match api.delete(&key.1, &dp).await {
            Ok(_) => {}
            Err(e) if matches!(code(&e), Some(404 | 409)) => {}
            Err(e) => {
                self.health.report(&format!("deleting mirror pod {}/{}", key.0, key.1), &e.into());
                return false;
            }
        }
        self.health.ok();
        self.patched.remove(uid);
        self.deleted.insert(uid.to_owned());
        if self.known.get(key).is_some_and(|m| m.uid == uid) {
            self.known.remove(key);
        }
        true
    }
}

/// A status as a strategic-merge patch body: conditions carry reason and message explicitly
/// (null when absent), so nothing stale survives in a mirror pod's conditions.
fn patch_status(status: &PodStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(status).unwrap_or_default();
    if let Some(serde_json::Value::Array(conds)) = v.get_mut("conditions") {
        for c in conds.iter_mut().filter_map(|c| c.as_object_mut()) {
            for k in ["reason", "message"] {
                c.entry(k).or_insert(serde_json::Value::Null);
            }
        }
    }
    v
}

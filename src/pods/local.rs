//! Pod status kept on the node: what `vks pods` shows, and where static pods' status lives.
//!
//! [`StatusStore`] keeps one record per pod with a worker (namespace, name, UID, the manifest
//! file of a static pod, the last status) in memory and as a JSON file in [`STATUS_DIR`]
//! (`/run/vks/status/<uid>.json`, a tmpfs: like the units, the records are gone after a reboot).
//! [`LocalPodApi`] is the [`PodApi`] of the workers: without a cluster every status stays here;
//! with one (once connected), a scheduled pod's status goes to the API server (and is recorded here once
//! accepted), while a static pod's stays here and is copied to its mirror pod by
//! [`crate::static_pods::mirror`]. [`Events`] logs events to the journal while there is no API
//! server to send them to.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::PodStatus;
use serde::{Deserialize, Serialize};

use super::api::{KubePodApi, PodApi, PodApiError};
use crate::api::PodRef;
use crate::events::{EventType, Recorder};

/// Where the daemon keeps the records (a tmpfs).
pub const STATUS_DIR: &str = "/run/vks/status";

/// What the node knows about one of its pods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// The manifest file of a static pod; `None` for a pod from the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<PathBuf>,
    /// The last status the worker published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodStatus>,
}

/// The records of the node's pods, in memory and in a directory.
#[derive(Debug)]
pub struct StatusStore {
    dir: PathBuf,
    records: Mutex<HashMap<String, Record>>,
    /// Woken whenever a static pod's status changed (for the mirror pods).
    pub static_changed: tokio::sync::Notify,
}

fn safe_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= 128 && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl StatusStore {
    /// A store in `dir`, with the records found there.
    pub fn open(dir: &Path) -> StatusStore {
        let records = read_records(dir).into_iter().map(|r| (r.uid.clone(), r)).collect();
        StatusStore { dir: dir.to_owned(), records: Mutex::new(records), static_changed: tokio::sync::Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, uid: &str) -> PathBuf {
        self.dir.join(format!("{uid}.json"))
    }

    /// Writes one record (under the lock, so writes of one record never overtake each other;
    /// the directory is a tmpfs).
    fn write(&self, r: &Record) {
        if !safe_uid(&r.uid) {
            return;
        }
        let body = match serde_json::to_vec(r) {
            Ok(b) => b,
            Err(_) => return,
        };
        if let Err(e) = std::fs::create_dir_all(&self.dir)
            .and_then(|()| crate::fsutil::write_atomic(&self.path(&r.uid), &body, 0o644))
        {
            log::warn!("recording the status of pod {}/{}: {}: {e}", r.namespace, r.name, self.path(&r.uid).display());
        }
    }

    fn remove_file(&self, uid: &str) {
        if !safe_uid(uid) {
            return;
        }
        let path = self.path(uid);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("removing {}: {e}", path.display());
        }
    }

    /// Notes a static pod and its manifest (before its worker starts).
    pub fn note_static(&self, pod: &PodRef, manifest: &Path) {
        let mut records = self.lock();
        let r = records.entry(pod.uid.clone()).or_default();
        let before = r.clone();
        r.namespace.clone_from(&pod.namespace);
        r.name.clone_from(&pod.name);
        r.uid.clone_from(&pod.uid);
        r.manifest = Some(manifest.to_owned());
        if *r != before {
            let r = r.clone();
            self.write(&r);
        }
    }

    /// Whether the pod with this UID is a static pod.
    pub fn is_static(&self, uid: &str) -> bool {
        self.lock().get(uid).is_some_and(|r| r.manifest.is_some())
    }

    /// The last status recorded for the pod with this UID.
    pub fn status(&self, uid: &str) -> Option<PodStatus> {
        self.lock().get(uid).and_then(|r| r.status.clone())
    }

    /// Records a pod's status.
    pub fn set_status(&self, pod: &PodRef, status: PodStatus) {
        let mut records = self.lock();
        let r = records.entry(pod.uid.clone()).or_default();
        r.namespace.clone_from(&pod.namespace);
        r.name.clone_from(&pod.name);
        r.uid.clone_from(&pod.uid);
        r.status = Some(status);
        let (r, is_static) = (r.clone(), r.manifest.is_some());
        self.write(&r);
        drop(records);
        if is_static {
            self.static_changed.notify_one();
        }
    }

    /// Drops the record of a pod that left the node.
    pub fn forget(&self, uid: &str) {
        let was_static = self.lock().remove(uid).is_some_and(|r| r.manifest.is_some());
        self.remove_file(uid);
        if was_static {
            self.static_changed.notify_one();
        }
    }

    /// Keeps only the records for which `keep` is true.
    pub fn retain(&self, keep: impl Fn(&Record) -> bool) {
        let gone: Vec<String> = self.lock().values().filter(|r| !keep(r)).map(|r| r.uid.clone()).collect();
        for uid in gone {
            self.forget(&uid);
        }
    }

    /// Every record.
    pub fn records(&self) -> Vec<Record> {
        self.lock().values().cloned().collect()
    }
}

/// The records in `dir` (what `vks pods` reads); unreadable files are skipped.
pub fn read_records(dir: &Path) -> Vec<Record> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        match std::fs::read(&path).map(|b| serde_json::from_slice::<Record>(&b)) {
            Ok(Ok(r)) if safe_uid(&r.uid) && path.file_stem().is_some_and(|s| *s == *r.uid) => out.push(r),
            _ => log::debug!("skipping {}: not a pod record", path.display()),
        }
    }
    out
}

/// The workers' [`PodApi`] on a node: status recorded in the [`StatusStore`]; once vks is
/// connected to a cluster ([`LocalPodApi::connect`]), scheduled pods' requests go to the API
/// server too, while static pods' status stays here (their mirror pods get a copy).
pub struct LocalPodApi {
    store: std::sync::Arc<StatusStore>,
    kube: std::sync::OnceLock<KubePodApi>,
}

impl LocalPodApi {
    /// Status stays on the node until [`LocalPodApi::connect`].
    pub fn new(store: std::sync::Arc<StatusStore>) -> LocalPodApi {
        LocalPodApi { store, kube: std::sync::OnceLock::new() }
    }

    /// From now on, scheduled pods' requests go to `kube`.
    pub fn connect(&self, kube: KubePodApi) {
        let _ = self.kube.set(kube);
    }

    /// The API for a pod, if it is a scheduled pod and vks is connected.
    fn kube_for(&self, pod: &PodRef) -> Option<&KubePodApi> {
        self.kube.get().filter(|_| !self.store.is_static(&pod.uid))
    }
}

fn parse_status(status: &serde_json::Value) -> PodStatus {
    serde_json::from_value(status.clone()).unwrap_or_default()
}

#[async_trait]
impl PodApi for LocalPodApi {
    async fn patch_status(&self, pod: &PodRef, status: &serde_json::Value) -> Result<Option<PodStatus>, PodApiError> {
        if let Some(kube) = self.kube_for(pod) {
            let new = kube.patch_status(pod, status).await?;
            self.store.set_status(pod, new.clone().unwrap_or_else(|| parse_status(status)));
            return Ok(new);
        }
        let s = parse_status(status);
        self.store.set_status(pod, s.clone());
        Ok(Some(s))
    }

    async fn delete(&self, pod: &PodRef) -> Result<(), PodApiError> {
        if let Some(kube) = self.kube_for(pod) {
            kube.delete(pod).await?;
        }
        self.store.forget(&pod.uid);
        Ok(())
    }

    fn forget(&self, pod: &PodRef) {
        self.store.forget(&pod.uid);
    }
}

/// Events: written to the journal (with the pod's name) until a recorder that sends them to the
/// API server is connected ([`Events::connect`]); without a cluster, always.
#[derive(Default)]
pub struct Events {
    api: std::sync::OnceLock<std::sync::Arc<dyn Recorder>>,
}

impl Events {
    /// From now on, events go to `api`.
    pub fn connect(&self, api: std::sync::Arc<dyn Recorder>) {
        let _ = self.api.set(api);
    }
}

impl Recorder for Events {
    fn pod(&self, pod: &PodRef, type_: EventType, reason: &str, note: String) {
        if let Some(api) = self.api.get() {
            return api.pod(pod, type_, reason, note);
        }
        let key = pod.to_string();
        match type_ {
            EventType::Warning => log::warn!(pod = key.as_str(); "pod {key}: {reason}: {note}"),
            EventType::Normal => log::info!(pod = key.as_str(); "pod {key}: {reason}: {note}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str) -> PodRef {
        PodRef { namespace: "default".into(), name: format!("p-{uid}"), uid: uid.into() }
    }

    #[tokio::test]
    async fn standalone_status_is_recorded_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(StatusStore::open(dir.path()));
        store.note_static(&pod("a1"), Path::new("/etc/vks/manifests/a.yaml"));
        let api = LocalPodApi::new(store.clone());
        let status = serde_json::json!({ "phase": "Running", "containerStatuses": [
            { "name": "c", "image": "x", "imageID": "", "ready": true, "restartCount": 3, "state": { "running": {} } } ] });
        let back = api.patch_status(&pod("a1"), &status).await.unwrap().unwrap();
        assert_eq!(back.phase.as_deref(), Some("Running"));
        let again = StatusStore::open(dir.path());
        assert!(again.is_static("a1"));
        let s = again.status("a1").unwrap();
        assert_eq!(s.container_statuses.unwrap()[0].restart_count, 3);
        let records = read_records(dir.path());
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].manifest.as_deref(), Some(Path::new("/etc/vks/manifests/a.yaml")));
        api.delete(&pod("a1")).await.unwrap();
        assert!(read_records(dir.path()).is_empty());
        assert!(!store.is_static("a1"));
    }

    #[test]
    fn forgotten_and_unsafe_records_leave_no_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = StatusStore::open(dir.path());
        store.set_status(&pod("b2"), PodStatus::default());
        store.set_status(&pod("../x"), PodStatus::default());
        store.set_status(&pod("c3"), PodStatus::default());
        store.retain(|r| r.uid == "c3");
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, ["c3.json"]);
        store.forget("c3");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

//! What a pod worker asks of the API server, behind the narrow [`PodApi`] trait: patch the
//! pod's status, and finish a deletion. [`KubePodApi`] is the real one; [`FakePodApi`] keeps
//! what it is sent, for the worker's scenario tests.

use std::sync::Mutex;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};

use crate::api::PodRef;

/// Why a request about a pod failed.
#[derive(Debug, thiserror::Error)]
pub enum PodApiError {
    /// The pod is gone, or its name now belongs to another pod (404, or 409 on the UID
    /// precondition).
    #[error("pod {0} is gone or replaced")]
    Gone(PodRef),
    /// Anything else (unreachable API server, refused request): retried.
    #[error("{what} of pod {pod}: {source}")]
    Failed {
        /// The request.
        what: &'static str,
        /// The pod.
        pod: PodRef,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

/// The pod requests of a worker.
#[async_trait]
pub trait PodApi: Send + Sync + 'static {
    /// Strategic-merge patches `status` into the pod, if it still has `pod.uid`. Returns the
    /// status the API server now holds.
    async fn patch_status(&self, pod: &PodRef, status: &serde_json::Value) -> Result<Option<PodStatus>, PodApiError>;
    /// Deletes the pod for good (grace period 0) if it still has `pod.uid`: the last step of a
    /// graceful deletion, after its containers stopped.
    async fn delete(&self, pod: &PodRef) -> Result<(), PodApiError>;
    /// The pod's worker ended: the pod left this node. Nothing is sent to the API server;
    /// an implementation that keeps pods' status on the node drops this pod's.
    fn forget(&self, _pod: &PodRef) {}
}

/// [`PodApi`] against the API server.
pub struct KubePodApi {
    client: kube::Client,
}

impl KubePodApi {
    /// Requests go through `client` (the node's identity).
    pub fn new(client: kube::Client) -> KubePodApi {
        KubePodApi { client }
    }
}

fn classify(what: &'static str, pod: &PodRef, e: kube::Error) -> PodApiError {
    match e {
        kube::Error::Api(s) if s.code == 404 || s.code == 409 => PodApiError::Gone(pod.clone()),
        source => PodApiError::Failed { what, pod: pod.clone(), source },
    }
}

#[async_trait]
impl PodApi for KubePodApi {
    async fn patch_status(&self, pod: &PodRef, status: &serde_json::Value) -> Result<Option<PodStatus>, PodApiError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let patch = serde_json::json!({ "metadata": { "uid": pod.uid }, "status": status });
        api.patch_status(&pod.name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .map(|p| p.status)
            .map_err(|e| classify("patching the status", pod, e))
    }

    async fn delete(&self, pod: &PodRef) -> Result<(), PodApiError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        // The kubelet's way: grace 0, and a UID precondition so that a new pod of the same name
        // is never deleted.
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(pod.uid.clone()), resource_version: None }),
            ..DeleteParams::default()
        };
        api.delete(&pod.name, &dp).await.map(drop).map_err(|e| classify("deleting", pod, e))
    }
}

#[derive(Debug, Default)]
struct FakeState {
    statuses: Vec<(PodRef, serde_json::Value)>,
    /// The status as the API server would hold it, by UID: patches merged (conditions by type).
    merged: std::collections::HashMap<String, serde_json::Value>,
    deleted: Vec<PodRef>,
    gone: Vec<String>,
    failing: bool,
}

/// Merges a status patch as the API server's strategic merge does for pod status: fields are
/// replaced, conditions are merged by their type.
fn merge_status(old: &mut serde_json::Value, patch: &serde_json::Value) {
    let (Some(old), Some(patch)) = (old.as_object_mut(), patch.as_object()) else { return };
    for (k, v) in patch {
        if k != "conditions" {
            old.insert(k.clone(), v.clone());
            continue;
        }
        let conds = old.entry("conditions").or_insert_with(|| serde_json::json!([]));
        let Some(list) = conds.as_array_mut() else { continue };
        for c in v.as_array().into_iter().flatten() {
            match list.iter_mut().find(|o| o.get("type") == c.get("type")) {
                Some(o) => *o = c.clone(),
                None => list.push(c.clone()),
            }
        }
    }
}

/// Keeps every status patch and deletion in memory.
#[derive(Debug, Default)]
pub struct FakePodApi(Mutex<FakeState>);

impl FakePodApi {
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every status patched so far for the pod with this UID, oldest first.
    pub fn statuses(&self, uid: &str) -> Vec<PodStatus> {
        self.lock()
            .statuses
            .iter()
            .filter(|(p, _)| p.uid == uid)
            .filter_map(|(_, s)| serde_json::from_value(s.clone()).ok())
            .collect()
    }

    /// The last status patched for the pod with this UID.
    pub fn status(&self, uid: &str) -> Option<PodStatus> {
        self.statuses(uid).pop()
    }

    /// Pods deleted so far.
    pub fn deleted(&self) -> Vec<PodRef> {
        self.lock().deleted.clone()
    }

    /// From now on, requests about the pod with this UID answer "gone".
    pub fn remove(&self, uid: &str) {
        self.lock().gone.push(uid.to_owned());
    }

    /// Sets a condition on the pod's status, as another controller would.
    pub fn set_condition(&self, uid: &str, condition: serde_json::Value) {
        let mut s = self.lock();
        let m = s.merged.entry(uid.to_owned()).or_insert_with(|| serde_json::json!({}));
        merge_status(m, &serde_json::json!({ "conditions": [condition] }));
    }

    /// Makes every request fail (an unreachable API server) until called with false.
    pub fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
    }

    fn unreachable(pod: &PodRef, what: &'static str) -> PodApiError {
        let source = kube::Error::Service("API server unreachable (fake)".into());
        PodApiError::Failed { what, pod: pod.clone(), source }
    }
}

#[async_trait]
impl PodApi for FakePodApi {
    async fn patch_status(&self, pod: &PodRef, status: &serde_json::Value) -> Result<Option<PodStatus>, PodApiError> {
        let mut s = self.lock();
        if s.failing {
            return Err(FakePodApi::unreachable(pod, "patching the status"));
        }
        if s.gone.contains(&pod.uid) {
            return Err(PodApiError::Gone(pod.clone()));
        }
        s.statuses.push((pod.clone(), status.clone()));
        let m = s.merged.entry(pod.uid.clone()).or_insert_with(|| serde_json::json!({}));
        merge_status(m, status);
        Ok(serde_json::from_value(m.clone()).ok())
    }

    async fn delete(&self, pod: &PodRef) -> Result<(), PodApiError> {
        let mut s = self.lock();
        if s.failing {
            return Err(FakePodApi::unreachable(pod, "deleting"));
        }
        if s.gone.contains(&pod.uid) {
            return Err(PodApiError::Gone(pod.clone()));
        }
        s.deleted.push(pod.clone());
        s.gone.push(pod.uid.clone());
        Ok(())
    }
}

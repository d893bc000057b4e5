//! What pods refer to outside their spec: ConfigMaps and Secrets (env and volumes),
//! service-account tokens, and the Services of the service links. Behind the narrow
//! [`ObjectApi`] trait (the real one in `kube.rs`, an in-memory one in `fake.rs`).
//!
//! The Node authorizer lets a node read only the ConfigMaps and Secrets its pods refer to, and
//! only one at a time: [`Objects`] keeps one watch per referenced object (`metadata.name=` field
//! selector, as the kubelet's watch-based manager does), shared by every pod that refers to it,
//! started when the first pod subscribes and stopped when the last one is gone. Each change of
//! an object wakes the pods that refer to it (their workers update files and retry containers
//! that waited for it). Tokens come from the TokenRequest API, bound to their pod, cached per
//! pod and refreshed at 80 % of their lifetime (at the latest after 24 h), as the kubelet does.

pub mod fake;
pub mod kube;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Service;

use crate::api::PodRef;
use crate::clock::Clock;
use crate::unit::data::{Allocatable, ObjData, ObjKey, ObjState, Token, TokenSpec};

/// A token as the API server issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The token.
    pub token: Token,
    /// `status.expirationTimestamp`.
    pub expires: SystemTime,
    /// `spec.expirationSeconds` of the answer (the lifetime the expiry counts from).
    pub ttl_secs: i64,
}

/// The API requests behind [`Objects`].
#[async_trait]
pub trait ObjectApi: Send + Sync + 'static {
    /// Watches one object: its content each time it changes (`None`: it does not exist). The
    /// stream retries by itself and does not end; an `Err` says why the object cannot be read
    /// right now.
    fn watch(&self, key: &ObjKey) -> BoxStream<'static, Result<Option<ObjData>, String>>;

    /// A token for `spec`'s service account, bound to `pod` (TokenRequest API).
    async fn request_token(&self, pod: &PodRef, spec: &TokenSpec) -> Result<IssuedToken, String>;

    /// The Services of `namespace` (for the service links); an error while they are not known.
    async fn services(&self, namespace: &str) -> Result<Vec<Service>, String>;
}

/// No API server: objects stay pending, tokens cannot be had, there are no Services. What a
/// worker has until the daemon gives it the real [`kube::KubeObjects`].
pub struct Offline;

#[async_trait]
impl ObjectApi for Offline {
    fn watch(&self, _: &ObjKey) -> BoxStream<'static, Result<Option<ObjData>, String>> {
        futures::stream::pending().boxed()
    }

    async fn request_token(&self, _: &PodRef, _: &TokenSpec) -> Result<IssuedToken, String> {
        Err("no API server to request tokens from".into())
    }

    async fn services(&self, _: &str) -> Result<Vec<Service>, String> {
        Ok(Vec::new())
    }
}

/// The API of a node that is not connected yet: [`Offline`] until [`Deferred::connect`] gives
/// it the real one (the daemon starts the pods before it has joined the cluster; only pods
/// from the API, which come after that, refer to objects). A watch begun before waits for it.
pub struct Deferred {
    api: tokio::sync::watch::Sender<Option<Arc<dyn ObjectApi>>>,
}

impl Default for Deferred {
    fn default() -> Deferred {
        Deferred { api: tokio::sync::watch::Sender::new(None) }
    }
}

impl Deferred {
    /// From now on requests go to `api`.
    pub fn connect(&self, api: Arc<dyn ObjectApi>) {
        self.api.send_replace(Some(api));
    }

    fn current(&self) -> Option<Arc<dyn ObjectApi>> {
        self.api.borrow().clone()
    }
}

#[async_trait]
impl ObjectApi for Deferred {
    fn watch(&self, key: &ObjKey) -> BoxStream<'static, Result<Option<ObjData>, String>> {
        if let Some(api) = self.current() {
            return api.watch(key);
        }
        let (mut rx, key) = (self.api.subscribe(), key.clone());
        futures::stream::once(async move {
            match rx.wait_for(Option::is_some).await.ok().and_then(|a| a.clone()) {
                Some(api) => api.watch(&key),
                None => futures::stream::pending().boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    async fn request_token(&self, pod: &PodRef, spec: &TokenSpec) -> Result<IssuedToken, String> {
        match self.current() {
            Some(api) => api.request_token(pod, spec).await,
            None => Offline.request_token(pod, spec).await,
        }
    }

    async fn services(&self, namespace: &str) -> Result<Vec<Service>, String> {
        match self.current() {
            Some(api) => api.services(namespace).await,
            None => Offline.services(namespace).await,
        }
    }
}

/// Wakes a pod's worker when an object it refers to changed.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

struct Entry {
    state: ObjState,
    /// UIDs of the pods referring to the object.
    pods: BTreeSet<String>,
    watch: tokio::task::AbortHandle,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<ObjKey, Entry>,
    /// Per pod UID: what it refers to, and how to wake it.
    pods: HashMap<String, (BTreeSet<ObjKey>, Waker)>,
}

struct Cached {
    token: IssuedToken,
    refresh_at: SystemTime,
}

/// When the kubelet refreshes a token: at 80 % of its lifetime, and at the latest 24 h after it
/// was issued (`token_manager.go` `requiresRefresh`).
pub fn refresh_time(t: &IssuedToken) -> SystemTime {
    let ttl = Duration::from_secs(t.ttl_secs.max(0) as u64);
    let issued = t.expires.checked_sub(ttl).unwrap_or(t.expires);
    let at = issued + ttl.mul_f64(0.8);
    at.min(issued + Duration::from_secs(24 * 3600))
}

/// The objects, tokens and services of the node's pods.
pub struct Objects {
    api: Arc<dyn ObjectApi>,
    clock: Clock,
    inner: Mutex<Inner>,
    tokens: Mutex<HashMap<(String, TokenSpec), Cached>>,
    /// The API server as pods reach it (`KUBERNETES_SERVICE_HOST`, `_PORT`), once known.
    api_server: std::sync::OnceLock<(String, u16)>,
    /// The node's allocatable resources (for resourceFieldRef).
    pub allocatable: Allocatable,
}

impl Objects {
    /// Objects read through `api`.
    pub fn new(api: Arc<dyn ObjectApi>, clock: Clock) -> Arc<Objects> {
        Objects::with_node(api, clock, None, Allocatable::default())
    }

    /// The same, with the API server's address and the node's allocatable resources.
    pub fn with_node(
        api: Arc<dyn ObjectApi>,
        clock: Clock,
        api_server: Option<(String, u16)>,
        allocatable: Allocatable,
    ) -> Arc<Objects> {
        let o = Objects {
            api,
            clock,
            inner: Mutex::default(),
            tokens: Mutex::default(),
            api_server: std::sync::OnceLock::new(),
            allocatable,
        };
        if let Some(a) = api_server {
            o.set_api_server(a);
        }
        Arc::new(o)
    }

    /// The API server as pods reach it, when known.
    pub fn api_server(&self) -> Option<&(String, u16)> {
        self.api_server.get()
    }

    /// Sets the API server's address (once: the kubeconfig does not change while vks runs).
    pub fn set_api_server(&self, a: (String, u16)) {
        let _ = self.api_server.set(a);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Says which objects the pod `uid` refers to now; watches start for new ones and stop for
    /// those no pod refers to any more. `wake` is called whenever one of them changes.
    pub fn subscribe(self: &Arc<Self>, uid: &str, keys: BTreeSet<ObjKey>, wake: Waker) {
        let mut inner = self.lock();
        let old = inner.pods.insert(uid.to_owned(), (keys.clone(), wake)).map(|(k, _)| k).unwrap_or_default();
        for key in old.difference(&keys) {
            drop_ref(&mut inner, key, uid);
        }
        for key in keys {
            if let Some(e) = inner.entries.get_mut(&key) {
                e.pods.insert(uid.to_owned());
                continue;
            }
            let watch = self.start_watch(&key);
            inner
                .entries
                .insert(key, Entry { state: ObjState::Pending, pods: BTreeSet::from([uid.to_owned()]), watch });
        }
    }

    /// The pod `uid` is gone: its references and tokens are dropped.
    pub fn release(&self, uid: &str) {
        let mut inner = self.lock();
        if let Some((keys, _)) = inner.pods.remove(uid) {
            for key in &keys {
                drop_ref(&mut inner, key, uid);
            }
        }
        drop(inner);
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).retain(|(u, _), _| u != uid);
    }

    /// What is known about an object now (pending when nobody subscribed to it).
    pub fn state(&self, key: &ObjKey) -> ObjState {
        self.lock().entries.get(key).map_or(ObjState::Pending, |e| e.state.clone())
    }

    /// Number of objects watched (for tests and the status line).
    pub fn watched(&self) -> usize {
        self.lock().entries.len()
    }

    fn start_watch(self: &Arc<Self>, key: &ObjKey) -> tokio::task::AbortHandle {
        let mut stream = self.api.watch(key);
        let me: Weak<Objects> = Arc::downgrade(self);
        let key = key.clone();
        let task = tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let Some(objects) = me.upgrade() else { return };
                objects.update(&key, item);
            }
        });
        task.abort_handle()
    }

    fn update(&self, key: &ObjKey, item: Result<Option<ObjData>, String>) {
        let wakers: Vec<Waker> = {
            let mut inner = self.lock();
            let Some(entry) = inner.entries.get_mut(key) else { return };
            let new = match item {
                Ok(Some(d)) => ObjState::Present(Arc::new(d)),
                Ok(None) => ObjState::Absent,
                // A broken watch keeps what was read last, as the kubelet's cache does.
                Err(e) => match &entry.state {
                    ObjState::Pending | ObjState::Failed(_) => {
                        log::debug!("watching {key}: {e}");
                        ObjState::Failed(e)
                    }
                    _ => {
                        log::debug!("watching {key}: {e} (keeping what was read)");
                        return;
                    }
                },
            };
            if new == entry.state {
                return;
            }
            entry.state = new;
            let pods: Vec<String> = entry.pods.iter().cloned().collect();
            pods.iter().filter_map(|p| inner.pods.get(p).map(|(_, w)| w.clone())).collect()
        };
        for w in wakers {
            w();
        }
    }

    /// The token for `spec` of `pod`: the cached one until its refresh time, else a new one.
    /// Returns it with the time it must be refreshed.
    pub async fn token(&self, pod: &PodRef, spec: &TokenSpec) -> Result<(Token, SystemTime), String> {
        let key = (pod.uid.clone(), spec.clone());
        let now = self.clock.wall();
        if let Some(c) = self.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && now < c.refresh_at
        {
            return Ok((c.token.token.clone(), c.refresh_at));
        }
        let issued = self.api.request_token(pod, spec).await?;
        let refresh_at = refresh_time(&issued);
        log::debug!(
            pod = pod.to_string().as_str();
            "token of service account {} for pod {pod} issued (refresh in {}s)",
            spec.service_account,
            refresh_at.duration_since(now).unwrap_or_default().as_secs()
        );
        let token = issued.token.clone();
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).insert(key, Cached { token: issued, refresh_at });
        Ok((token, refresh_at))
    }

    /// The Services of a namespace.
    pub async fn services(&self, namespace: &str) -> Result<Vec<Service>, String> {
        self.api.services(namespace).await
    }
}

fn drop_ref(inner: &mut Inner, key: &ObjKey, uid: &str) {
    if let Some(e) = inner.entries.get_mut(key) {
        e.pods.remove(uid);
        if e.pods.is_empty() {
            e.watch.abort();
            inner.entries.remove(key);
        }
    }
}

impl Drop for Objects {
    fn drop(&mut self) {
        for e in self.lock().entries.values() {
            e.watch.abort();
        }
    }
}

#[cfg(test)]
mod tests;

//! One stream of pod events for the [`crate::pods::PodManager`], from the API's pod watch (if
//! there is a cluster) and the static pod snapshots: static pods run through the same workers as
//! scheduled ones.
//!
//! The manager treats `Init … InitDone` as a complete listing (pods not in it are gone), so:
//! - without a cluster, the first snapshot is sent as that listing, later snapshots as `Apply`
//!   of the pods whose UID appeared, and of those whose UID disappeared marked deleted with their
//!   grace period, as the kubelet stops them (a changed manifest gives a new UID: the old pod is
//!   stopped, the new one started);
//! - with a cluster, static pods are sent the same way as they come, and every listing of the
//!   API watch gets the current static pods (and those still stopping) before its `InitDone`.
//!
//! Mirror pods in the API watch are not pods to run: they go to the mirror pod loop instead.
//! Every static pod is sent with the status last recorded for it ([`StatusStore`]), so a new
//! worker continues its restart counts, and a repeated event does not reset what the worker
//! published.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{mpsc, oneshot, watch};

use super::manifest::is_mirror;
use super::{Snapshot, StaticPod};
use crate::pods::PodEvents;
use crate::pods::local::StatusStore;

type Item = Result<Event<Pod>, watcher::Error>;

/// Merges the static pods into the pod events.
pub struct Merge {
    api: Option<PodEvents>,
    /// The API's pod watch, once vks is connected to its cluster.
    api_later: Option<oneshot::Receiver<PodEvents>>,
    statics: watch::Receiver<Arc<Snapshot>>,
    store: Arc<StatusStore>,
    mirrors: Option<mpsc::UnboundedSender<Event<Pod>>>,
    /// The static pods the manager was given, by UID.
    current: BTreeMap<String, StaticPod>,
    /// Static pods removed from their manifests and being stopped (with their grace period),
    /// by UID, until their worker is done with them.
    stopping: BTreeMap<String, Pod>,
    queue: VecDeque<Item>,
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

impl Merge {
    /// Without a cluster: the static pods alone. The current snapshot is the first listing.
    pub fn standalone(statics: watch::Receiver<Arc<Snapshot>>, store: Arc<StatusStore>) -> Merge {
        let mut m = Merge {
            api: None,
            api_later: None,
            statics,
            store,
            mirrors: None,
            current: BTreeMap::new(),
            stopping: BTreeMap::new(),
            queue: VecDeque::new(),
        };
        let snap = m.statics.borrow_and_update().clone();
        m.queue.push_back(Ok(Event::Init));
        for p in &snap.pods {
            let pod = m.admit(p);
            m.queue.push_back(Ok(Event::InitApply(pod)));
        }
        m.queue.push_back(Ok(Event::InitDone));
        m
    }

    /// With a cluster: the static pods at once, and the API's pod watch of this node once it
    /// arrives on `api` (vks joined and registered); mirror pods from the watch go to `mirrors`.
    pub fn with_cluster(
        api: oneshot::Receiver<PodEvents>,
        statics: watch::Receiver<Arc<Snapshot>>,
        store: Arc<StatusStore>,
        mirrors: mpsc::UnboundedSender<Event<Pod>>,
    ) -> Merge {
        let mut m = Merge {
            api: None,
            api_later: Some(api),
            statics,
            store,
            mirrors: Some(mirrors),
            current: BTreeMap::new(),
            stopping: BTreeMap::new(),
            queue: VecDeque::new(),
        };
        m.snapshot_changed();
        m
    }

    /// The merged stream.
    pub fn into_stream(self) -> PodEvents {
        futures::stream::unfold(self, |mut m| async move { m.next().await.map(|item| (item, m)) }).boxed()
    }

    /// Takes a static pod into `current` and returns it as sent: with its recorded status.
    fn admit(&mut self, p: &StaticPod) -> Pod {
        let id = p.id();
        self.store.note_static(&id, &p.file);
        self.current.insert(id.uid.clone(), p.clone());
        self.with_status(&p.pod)
    }

    fn with_status(&self, pod: &Pod) -> Pod {
        let mut pod = pod.clone();
        pod.status = self.store.status(&uid(&pod));
        pod
    }

    /// Sends `Apply` for pods new in the snapshot, and for pods no longer in it a deletion with
    /// the pod's grace period (as the kubelet stops a static pod whose manifest is gone).
    fn snapshot_changed(&mut self) {
        let snap = self.statics.borrow_and_update().clone();
        let store = &self.store;
        self.stopping.retain(|u, _| store.is_static(u));
        let gone: Vec<String> =
            self.current.keys().filter(|u| !snap.pods.iter().any(|p| uid(&p.pod) == **u)).cloned().collect();
        for u in gone {
            if let Some(p) = self.current.remove(&u) {
                let pod = deleted(self.with_status(&p.pod));
                self.stopping.insert(u, pod.clone());
                self.queue.push_back(Ok(Event::Apply(pod)));
            }
        }
        for p in &snap.pods {
            if !self.current.contains_key(&uid(&p.pod)) {
                let pod = self.admit(p);
                self.queue.push_back(Ok(Event::Apply(pod)));
            }
        }
    }

    fn api_event(&mut self, ev: Event<Pod>) {
        let to_mirrors = match &ev {
            Event::Init | Event::InitDone => true,
            Event::InitApply(p) | Event::Apply(p) | Event::Delete(p) => is_mirror(p),
        };
        if to_mirrors && let Some(tx) = &self.mirrors {
            let _ = tx.send(ev.clone());
        }
        match ev {
            Event::InitApply(p) | Event::Apply(p) | Event::Delete(p) if is_mirror(&p) => {}
            Event::InitDone => {
                // Pods still being stopped stay in the listing (else they would be cut short).
                let store = &self.store;
                self.stopping.retain(|u, _| store.is_static(u));
                let mut statics: Vec<Pod> = self.current.values().map(|p| self.with_status(&p.pod)).collect();
                statics.extend(self.stopping.values().map(|p| self.with_status(p)));
                self.queue.extend(statics.into_iter().map(|p| Ok(Event::InitApply(p))));
                self.queue.push_back(Ok(Event::InitDone));
            }
            other => self.queue.push_back(Ok(other)),
        }
    }

    async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some(item);
            }
            let api = async {
                match self.api.as_mut() {
                    Some(a) => a.next().await,
                    None => std::future::pending().await,
                }
            };
            let later = async {
                match self.api_later.as_mut() {
                    Some(rx) => rx.await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                got = later => {
                    self.api_later = None;
                    // Without a watch (vks never connected) only the static pods come.
                    self.api = got;
                }
                changed = self.statics.changed() => {
                    // The static pod loop ended: so does the stream (the daemon is stopping).
                    changed.ok()?;
                    self.snapshot_changed();
                }
                ev = api => match ev? {
                    Ok(ev) => self.api_event(ev),
                    Err(e) => return Some(Err(e)),
                },
            }
        }
    }
}

/// The pod marked deleted now, with its own grace period (default 30 s).
fn deleted(mut pod: Pod) -> Pod {
    let grace = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
    pod.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
    pod.metadata.deletion_grace_period_seconds = Some(grace);
    pod
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::static_pods::manifest::CONFIG_MIRROR;

    fn pod(name: &str, uid: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some(uid.into());
        p
    }

    fn snap(pods: &[(&str, &str)]) -> Arc<Snapshot> {
        let pods =
            pods.iter().map(|(n, u)| StaticPod { pod: pod(n, u), file: format!("/m/{n}.yaml").into() }).collect();
        Arc::new(Snapshot { pods, invalid: vec![], complete: true })
    }

    fn describe(item: Item) -> String {
        match item.unwrap() {
            Event::Init => "Init".into(),
            Event::InitDone => "InitDone".into(),
            Event::InitApply(p) => format!("InitApply {}", uid(&p)),
            Event::Apply(p) if p.metadata.deletion_timestamp.is_some() => format!("Delete {}", uid(&p)),
            Event::Apply(p) => format!("Apply {}", uid(&p)),
            Event::Delete(p) => format!("Delete {}", uid(&p)),
        }
    }

    async fn take(s: &mut PodEvents, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let item = tokio::time::timeout(std::time::Duration::from_secs(5), s.next()).await.unwrap().unwrap();
            out.push(describe(item));
        }
        out
    }

    #[tokio::test]
    async fn standalone_lists_then_applies_changes_by_uid() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StatusStore::open(dir.path()));
        let (tx, rx) = watch::channel(snap(&[("a", "u1"), ("b", "u2")]));
        let mut s = Merge::standalone(rx, store.clone()).into_stream();
        assert_eq!(take(&mut s, 4).await, ["Init", "InitApply u1", "InitApply u2", "InitDone"]);
        assert!(store.is_static("u1"));
        // b changed (new UID), a unchanged, c added.
        tx.send_replace(snap(&[("a", "u1"), ("b", "u3"), ("c", "u4")]));
        let first = s.next().await.unwrap().unwrap();
        let Event::Apply(p) = &first else { panic!("{}", describe(Ok(first))) };
        assert!(p.metadata.deletion_timestamp.is_some(), "the old pod is stopped gracefully");
        assert_eq!(p.metadata.deletion_grace_period_seconds, Some(30));
        assert_eq!(take(&mut s, 2).await, ["Apply u3", "Apply u4"]);
        drop(tx);
        assert!(s.next().await.is_none(), "the stream ends with the static pod loop");
    }

    #[tokio::test]
    async fn api_listings_carry_the_static_pods_and_mirrors_are_diverted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StatusStore::open(dir.path()));
        store.set_status(
            &crate::api::PodRef::of(&pod("a", "u1")),
            serde_json::from_value(serde_json::json!({"phase": "Running"})).unwrap(),
        );
        let (_tx, rx) = watch::channel(snap(&[("a", "u1")]));
        let (api_tx, api_rx) = mpsc::unbounded_channel::<Item>();
        let (later_tx, later) = oneshot::channel();
        let (mtx, mut mrx) = mpsc::unbounded_channel();
        let mut s = Merge::with_cluster(later, rx, store, mtx).into_stream();
        let first = s.next().await.unwrap().unwrap();
        let Event::Apply(p) = &first else { panic!("{}", describe(Ok(first))) };
        assert_eq!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Running"),
            "sent with its recorded status"
        );
        assert_eq!(describe(Ok(first)), "Apply u1");
        let _ = later_tx.send(tokio_stream_of(api_rx));
        let mut mirror = pod("a", "m1");
        mirror.metadata.annotations = Some([(CONFIG_MIRROR.to_owned(), "u1".to_owned())].into());
        for ev in [Event::Init, Event::InitApply(pod("x", "api1")), Event::InitApply(mirror.clone()), Event::InitDone] {
            api_tx.send(Ok(ev)).unwrap();
        }
        api_tx.send(Ok(Event::Delete(mirror))).unwrap();
        api_tx.send(Ok(Event::Apply(pod("y", "api2")))).unwrap();
        let got = take(&mut s, 5).await;
        assert_eq!(got, ["Init", "InitApply api1", "InitApply u1", "InitDone", "Apply api2"]);
        let mut mirror_events = Vec::new();
        while let Ok(ev) = mrx.try_recv() {
            mirror_events.push(describe(Ok(ev)));
        }
        assert_eq!(mirror_events, ["Init", "InitApply m1", "InitDone", "Delete m1"]);
    }

    fn tokio_stream_of(mut rx: mpsc::UnboundedReceiver<Item>) -> PodEvents {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }
}

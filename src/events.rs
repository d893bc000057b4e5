//! Kubernetes Events (`kubectl describe` → Events), behind the narrow [`Recorder`] trait.
//!
//! [`EventSink`] is the real recorder: events are informative, status is not, so they go through
//! a queue and are sent one at a time by one background task, never delaying a pod's status or
//! competing with it in bursts (the kubelet rate-limits its events for the same reason). A full
//! queue drops events rather than grow without bound. [`FakeRecorder`] keeps them for tests.

use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
pub use kube::runtime::events::EventType;
use kube::runtime::events::{Event, Recorder as KubeRecorder, Reporter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::PodRef;

/// Events waiting to be sent before new ones are dropped.
const QUEUE: usize = 4096;

/// Where events about pods go.
pub trait Recorder: Send + Sync + 'static {
    /// Records an event about `pod`.
    fn pod(&self, pod: &PodRef, type_: EventType, reason: &str, note: String);
}

/// Events sent to the API server by a background task.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<(Event, ObjectReference)>,
}

impl EventSink {
    /// A sink and the task that sends what it receives, as reporter `vks` on `node`.
    pub fn new(
        client: kube::Client,
        node: &str,
        cancel: CancellationToken,
    ) -> (EventSink, impl Future<Output = anyhow::Result<()>> + use<>) {
        let (tx, mut rx) = mpsc::channel::<(Event, ObjectReference)>(QUEUE);
        let recorder =
            KubeRecorder::new(client, Reporter { controller: "vks".into(), instance: Some(node.to_owned()) });
        let task = async move {
            loop {
                let (ev, reference) = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    item = rx.recv() => match item {
                        Some(i) => i,
                        None => return Ok(()),
                    },
                };
                if let Err(e) = recorder.publish(&ev, &reference).await {
                    log::debug!("publishing event {} for {:?}: {e}", ev.reason, reference.name);
                }
            }
        };
        (EventSink { tx }, task)
    }
}

impl Recorder for EventSink {
    fn pod(&self, pod: &PodRef, type_: EventType, reason: &str, note: String) {
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(pod.uid.clone()),
            ..ObjectReference::default()
        };
        // The recorder folds events with the same reason and action into one series (count++)
        // and keeps the first note: the note is part of the action so that different messages
        // stay different events, as with the kubelet's recorder (the API allows 128 bytes).
        let mut action = note.clone();
        while action.len() > 128 {
            action.pop();
        }
        let ev = Event { type_, reason: reason.to_owned(), note: Some(note), action, secondary: None };
        if self.tx.try_send((ev, reference)).is_err() {
            log::debug!("event queue full: dropped {reason} for pod {pod}");
        }
    }
}

/// One recorded event (for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The pod.
    pub pod: String,
    /// Normal or Warning.
    pub warning: bool,
    /// The reason, e.g. `Started`.
    pub reason: String,
    /// The message.
    pub note: String,
}

/// Keeps events in memory.
#[derive(Debug, Default)]
pub struct FakeRecorder(Mutex<Vec<Recorded>>);

impl FakeRecorder {
    /// Everything recorded so far.
    pub fn all(&self) -> Vec<Recorded> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The reasons recorded so far, in order.
    pub fn reasons(&self) -> Vec<String> {
        self.all().into_iter().map(|e| e.reason).collect()
    }
}

impl Recorder for FakeRecorder {
    fn pod(&self, pod: &PodRef, type_: EventType, reason: &str, note: String) {
        let warning = matches!(type_, EventType::Warning);
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(Recorded {
            pod: pod.to_string(),
            warning,
            reason: reason.to_owned(),
            note,
        });
    }
}

/// Events about one pod, for code that runs outside the pod's worker (image pulls).
#[derive(Clone)]
pub struct PodEvents {
    recorder: Arc<dyn Recorder>,
    pod: PodRef,
}

impl PodEvents {
    /// Events about `pod`.
    pub fn new(recorder: Arc<dyn Recorder>, pod: PodRef) -> PodEvents {
        PodEvents { recorder, pod }
    }

    /// A Normal event.
    pub fn normal(&self, reason: &str, note: String) {
        self.recorder.pod(&self.pod, EventType::Normal, reason, note);
    }

    /// A Warning event.
    pub fn warning(&self, reason: &str, note: String) {
        self.recorder.pod(&self.pod, EventType::Warning, reason, note);
    }
}

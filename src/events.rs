//! Kubernetes Events (`kubectl describe` → Events), published by one background task.
//!
//! Events are informative, status is not: so they go through a queue and are sent one at a
//! time, never delaying a pod's status or competing with it in bursts (the kubelet rate-limits
//! its events for the same reason). A full queue drops events rather than grow without bound.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events waiting to be sent before new ones are dropped.
const QUEUE: usize = 4096;

/// Where events are queued.
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
    ) -> (EventSink, impl Future<Output = ()> + use<>) {
        let (tx, mut rx) = mpsc::channel::<(Event, ObjectReference)>(QUEUE);
        let recorder = Recorder::new(client, Reporter { controller: "vks".into(), instance: Some(node.to_owned()) });
        let task = async move {
            loop {
                let (ev, reference) = tokio::select! {
                    () = cancel.cancelled() => return,
                    item = rx.recv() => match item {
                        Some(i) => i,
                        None => return,
                    },
                };
                if let Err(e) = recorder.publish(&ev, &reference).await {
                    log::debug!("publishing event {} for {:?}: {e}", ev.reason, reference.name);
                }
            }
        };
        (EventSink { tx }, task)
    }

    /// Queues an event about a pod.
    pub fn pod(&self, namespace: &str, name: &str, uid: &str, type_: EventType, reason: &str, note: String) {
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            uid: Some(uid.to_owned()),
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
            log::debug!("event queue full: dropped {reason} for pod {namespace}/{name}");
        }
    }
}

/// Events about one pod, for code that runs outside the pod's worker (image pulls).
#[derive(Clone)]
pub struct PodEvents {
    sink: EventSink,
    namespace: String,
    name: String,
    uid: String,
}

impl PodEvents {
    /// Events about pod `namespace/name` (`uid`).
    pub fn new(sink: EventSink, namespace: &str, name: &str, uid: &str) -> PodEvents {
        PodEvents { sink, namespace: namespace.to_owned(), name: name.to_owned(), uid: uid.to_owned() }
    }

    /// A Normal event.
    pub fn normal(&self, reason: &str, note: String) {
        self.sink.pod(&self.namespace, &self.name, &self.uid, EventType::Normal, reason, note);
    }

    /// A Warning event.
    pub fn warning(&self, reason: &str, note: String) {
        self.sink.pod(&self.namespace, &self.name, &self.uid, EventType::Warning, reason, note);
    }
}

//! One shared, unfiltered `journalctl -f` for every `kubectl logs -f` on the node.
//!
//! A filtered follower misses entries when its match value did not exist yet when it started
//! (systemd 252; seen on the test nodes), and one journalctl per idle follow stream would cost
//! a process each. So a single reader follows the whole journal while anyone listens and
//! routes entries by `(VKS_POD_UID, VKS_CONTAINER)` to the [`Subscription`]s. A subscriber that
//! does not keep up is dropped with the cursor of the first entry it missed
//! ([`Subscription::lagged_at`]); it then follows on its own from there (by then the values
//! exist, so a filtered follower is safe), and never holds back the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::journal::{Entry, Query, Start};

/// Entries queued per subscriber before it counts as lagging.
const QUEUE: usize = 1024;

type Key = (String, String);

struct Sub {
    id: u64,
    tx: mpsc::Sender<Entry>,
    lag: Arc<Mutex<Option<String>>>,
}

#[derive(Default)]
struct State {
    subs: HashMap<Key, Vec<Sub>>,
    next_id: u64,
    reader: Option<JoinHandle<()>>,
}

/// The shared follower. Cheap to clone.
#[derive(Clone, Default)]
pub struct Hub {
    state: Arc<Mutex<State>>,
}

/// Entries of one container, from the moment of subscribing.
pub struct Subscription {
    hub: Hub,
    key: Key,
    id: u64,
    /// The entries.
    pub rx: mpsc::Receiver<Entry>,
    lag: Arc<Mutex<Option<String>>>,
}

impl Subscription {
    /// After `rx` closed: the cursor of the first entry this subscriber did not get, if it was
    /// dropped for lagging.
    pub fn lagged_at(&self) -> Option<String> {
        self.lag.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.key, self.id);
    }
}

impl Hub {
    /// Starts receiving the entries of container `container` of pod `pod_uid` (starting the
    /// reader if none runs).
    pub fn subscribe(&self, pod_uid: &str, container: &str) -> Subscription {
        let (tx, rx) = mpsc::channel(QUEUE);
        let lag = Arc::new(Mutex::new(None));
        let key = (pod_uid.to_owned(), container.to_owned());
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.next_id += 1;
        let id = st.next_id;
        st.subs.entry(key.clone()).or_default().push(Sub { id, tx, lag: lag.clone() });
        if st.reader.is_none() {
            st.reader = Some(tokio::spawn(self.clone().read()));
        }
        Subscription { hub: self.clone(), key, id, rx, lag }
    }

    fn unsubscribe(&self, key: &Key, id: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = st.subs.get_mut(key) {
            v.retain(|s| s.id != id);
            if v.is_empty() {
                st.subs.remove(key);
            }
        }
        if st.subs.is_empty()
            && let Some(reader) = st.reader.take()
        {
            // Stops journalctl too (kill on drop).
            reader.abort();
        }
    }

    /// Number of subscriptions (for tests and diagnostics).
    pub fn subscribers(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).subs.values().map(Vec::len).sum()
    }

    fn dispatch(&self, e: Entry) {
        let (Some(uid), Some(c)) = (&e.pod_uid, &e.container) else { return };
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(subs) = st.subs.get_mut(&(uid.clone(), c.clone())) else { return };
        subs.retain(|s| match s.tx.try_send(e.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                *s.lag.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.cursor.clone());
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// The reader: journalctl from two seconds ago (subscribers drop what they already have),
    /// restarted after the last cursor if it fails.
    async fn read(self) {
        let since = SystemTime::now()
            .checked_sub(Duration::from_secs(2))
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_micros() as u64);
        let mut last: Option<String> = None;
        loop {
            let q = match &last {
                Some(c) => Query { matches: vec![], since_us: None, start: Start::After(c.clone()), follow: true },
                None => Query { matches: vec![], since_us: since, start: Start::Beginning, follow: true },
            };
            match q.spawn() {
                Ok(mut reader) => loop {
                    match reader.next().await {
                        Ok(Some(e)) => {
                            last = Some(e.cursor.clone());
                            self.dispatch(e);
                        }
                        Ok(None) => {
                            log::warn!("kubelet API: the journal follower (journalctl -f) ended; restarting it");
                            break;
                        }
                        Err(e) => {
                            log::warn!("kubelet API: the journal follower failed: {e}; restarting it");
                            break;
                        }
                    }
                },
                Err(e) => log::warn!("kubelet API: cannot start journalctl: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uid: &str, c: &str, i: u64) -> Entry {
        Entry {
            cursor: format!("s=a;i={i:x}"),
            pod_uid: Some(uid.into()),
            container: Some(c.into()),
            message: format!("line {i}").into_bytes(),
            ends_line: true,
            ..Entry::default()
        }
    }

    #[tokio::test]
    async fn routes_by_container_and_drops_laggards() {
        let hub = Hub::default();
        // Subscribing starts a real journalctl where there is one; these tests only dispatch.
        let mut a = hub.subscribe("u1", "app");
        let mut b = hub.subscribe("u1", "side");
        let slow = hub.subscribe("u1", "app");
        assert_eq!(hub.subscribers(), 3);
        hub.dispatch(entry("u1", "app", 1));
        hub.dispatch(entry("u1", "side", 2));
        hub.dispatch(entry("u2", "app", 3));
        assert_eq!(a.rx.recv().await.unwrap().message, b"line 1");
        assert_eq!(b.rx.recv().await.unwrap().message, b"line 2");
        for i in 0..QUEUE as u64 {
            hub.dispatch(entry("u1", "app", 10 + i));
            a.rx.recv().await.unwrap();
        }
        // `slow` never read: dropped with the cursor of the first entry it missed.
        assert_eq!(hub.subscribers(), 2);
        assert_eq!(slow.lagged_at(), Some(format!("s=a;i={:x}", 10 + QUEUE as u64 - 1)));
        drop((a, b, slow));
        assert_eq!(hub.subscribers(), 0);
        assert!(hub.state.lock().unwrap().reader.is_none(), "the reader stops with the last subscriber");
    }
}

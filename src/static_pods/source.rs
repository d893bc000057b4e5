//! The "static pods" loop: keeps the [`Snapshot`] of the manifest directory current.
//!
//! The directory is watched with inotify (the `notify` crate): a change is read ~100 ms after the
//! last event (editors write in steps), so additions, changes and removals take effect within
//! about a second. It is also re-read every 10 s as a safety net, and every second while it does
//! not exist or cannot be watched (it may be created later, or replaced). Snapshots go out on a
//! `watch` channel: the pod event merger and the mirror pods read the latest one.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ::notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Snapshot, read_dir, snapshot};
use crate::notify::Heartbeat;

/// How long after a file-system event the directory is read.
const SETTLE: Duration = Duration::from_millis(100);
/// The loop's tick: a re-read while the directory is not watched, and the heartbeat.
const TICK: Duration = Duration::from_secs(1);
/// Ticks between re-reads of a watched directory (the safety net).
const FULL_RESCAN_TICKS: u32 = 10;

/// Watches one manifest directory.
pub struct Source {
    dir: PathBuf,
    node: String,
    last_good: BTreeMap<PathBuf, Vec<Pod>>,
    tx: watch::Sender<Arc<Snapshot>>,
    /// The inotify watch and the (device, inode) of the directory it watches.
    watching: Option<(RecommendedWatcher, (u64, u64))>,
    events_tx: mpsc::UnboundedSender<()>,
    events: mpsc::UnboundedReceiver<()>,
    /// The last read error of the directory itself, reported once.
    dir_error: Option<String>,
}

impl Source {
    /// A source for `dir` on node `node`, and the receiver of its snapshots. Nothing is read
    /// until [`Source::rescan`] or [`Source::run`].
    pub fn new(dir: PathBuf, node: &str) -> (Source, watch::Receiver<Arc<Snapshot>>) {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let (events_tx, events) = mpsc::unbounded_channel();
        let source = Source {
            dir,
            node: node.to_owned(),
            last_good: BTreeMap::new(),
            tx,
            watching: None,
            events_tx,
            events,
            dir_error: None,
        };
        (source, rx)
    }

    /// Reads the directory and publishes the snapshot if it changed.
    pub async fn rescan(&mut self) {
        let (dir, node) = (self.dir.clone(), self.node.clone());
        let files = match tokio::task::spawn_blocking(move || read_dir(&dir, &node)).await {
            Ok(Ok(files)) => {
                self.dir_error = None;
                files
            }
            Ok(Err(e)) => {
                let msg = format!("cannot read the static pod directory {}: {e}", self.dir.display());
                if self.dir_error.as_ref() != Some(&msg) {
                    log::warn!("{msg}; its pods are kept as they were");
                    self.dir_error = Some(msg);
                }
                return;
            }
            Err(e) => {
                log::warn!("reading the static pod directory {}: {e}", self.dir.display());
                return;
            }
        };
        let snap = snapshot(files, &mut self.last_good);
        let old = self.tx.borrow().clone();
        if *old == snap {
            return;
        }
        report(&old, &snap);
        self.tx.send_replace(Arc::new(snap));
    }

    /// The directory's (device, inode), if it exists.
    fn dir_id(&self) -> Option<(u64, u64)> {
        std::fs::metadata(&self.dir).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()))
    }

    /// Starts (or restarts) the inotify watch when the directory exists and is not watched yet
    /// (or was replaced). Returns true when a new watch was set up.
    fn ensure_watch(&mut self) -> bool {
        let id = self.dir_id();
        match (&self.watching, id) {
            (Some((_, watched)), Some(id)) if *watched == id => return false,
            (_, None) => {
                self.watching = None;
                return false;
            }
            _ => {}
        }
        let Some(id) = id else { return false };
        let tx = self.events_tx.clone();
        let watcher = ::notify::recommended_watcher(move |r: ::notify::Result<::notify::Event>| {
            if r.is_ok() {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| w.watch(&self.dir, RecursiveMode::NonRecursive).map(|()| w));
        match watcher {
            Ok(w) => {
                log::debug!("watching {} for static pod manifests", self.dir.display());
                self.watching = Some((w, id));
                true
            }
            Err(e) => {
                log::warn!("cannot watch {} ({e}); reading it every second instead", self.dir.display());
                self.watching = None;
                false
            }
        }
    }

    /// Runs until `cancel` fires.
    pub async fn run(mut self, heartbeat: Heartbeat, cancel: CancellationToken) -> anyhow::Result<()> {
        self.ensure_watch();
        self.rescan().await;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u32;
        loop {
            heartbeat.beat();
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                Some(()) = self.events.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while self.events.try_recv().is_ok() {}
                    self.rescan().await;
                }
                _ = tick.tick() => {
                    ticks += 1;
                    let new_watch = self.ensure_watch();
                    if new_watch || self.watching.is_none() || ticks.is_multiple_of(FULL_RESCAN_TICKS) {
                        self.rescan().await;
                    }
                }
            }
        }
    }
}

/// Logs what changed between two snapshots: invalid files (once per distinct error), files
/// that became valid, pods added and removed.
fn report(old: &Snapshot, new: &Snapshot) {
    for i in &new.invalid {
        if !old.invalid.contains(i) {
            log::warn!("static pod manifest {} is not valid: {}", i.file.display(), i.error);
        }
    }
    for i in &old.invalid {
        if !new.invalid.iter().any(|n| n.file == i.file) {
            log::info!("static pod manifest {} is valid again", i.file.display());
        }
    }
    let uid = |p: &super::StaticPod| p.pod.metadata.uid.clone().unwrap_or_default();
    for p in &new.pods {
        if !old.pods.iter().any(|o| uid(o) == uid(p)) {
            let id = p.id();
            log::info!(pod = id.to_string().as_str(); "static pod {id} ({}) from {}", id.uid, p.file.display());
        }
    }
    for p in &old.pods {
        if !new.pods.iter().any(|n| uid(n) == uid(p)) {
            let id = p.id();
            log::info!(pod = id.to_string().as_str(); "static pod {id} ({}) is no longer in {}", id.uid, p.file.display());
        }
    }
}

//! One task per pod: it owns the pod's units, applies the kubelet's rules (init containers in
//! order, sidecars, restart policy with back-off, graceful deletion) and reports status.
//!
//! A worker reacts to messages (a new version of the pod, a change of one of its units, an
//! image that became available, a resync) and to its own timers (back-off expiry, retries, the
//! end of a grace period). Each round re-reads the pod's units from systemd, acts, and patches
//! the pod status when it changed. Nothing it decides is kept outside systemd and the API:
//! after a vks restart a new worker reads the same facts back (units, their `[X-Kubernetes]`
//! section, and the restart counts in the pod status).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Container, ContainerStateTerminated, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::EventType;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::backoff::CrashBackoff;
use super::status::{self, CState, ContainerView, PodFacts, UnitRun};
use crate::api::ApiHealth;
use crate::images::{ImageError, ImageInfo, Images};
use crate::systemd::{ActiveState, ExitKind, KillWhom, Systemd, SystemdError, UnitDelta, UnitStatus};
use crate::unit::{self, ContainerKind, NodeContext, UnitMeta};

/// How long a force-deleted pod's containers get after SIGTERM (the kubelet's minimum).
const FORCE_DELETE_GRACE: Duration = Duration::from_secs(2);
/// Retry interval for containers that cannot be created yet (spec or image problems).
const CREATE_RETRY: Duration = Duration::from_secs(10);
/// Retry interval for failed API or systemd calls.
const CALL_RETRY: Duration = Duration::from_secs(2);
/// How long vks waits for systemd to report on a start job before trying again.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a status waits for a run's InvocationID before the unit is read.
const ID_WAIT: Duration = Duration::from_millis(500);
/// How long a new pod's first status waits for its containers to start.
const FIRST_STATUS_HOLD: Duration = Duration::from_secs(1);

/// What every worker shares.
pub struct Shared {
    /// API client (the node's identity) for requests.
    pub client: kube::Client,
    /// API client for watches (no read timeout).
    pub watch_client: kube::Client,
    /// systemd.
    pub systemd: Arc<dyn Systemd>,
    /// Image provider.
    pub images: Arc<dyn Images>,
    /// Node name and IP.
    pub node: NodeContext,
    /// Where pod directories live.
    pub pod_dir: std::path::PathBuf,
    /// Unit name → UID of the pod that owns it; a unit name is used by one pod at a time.
    pub owners: Mutex<HashMap<String, String>>,
    /// Unit names whose pod was removed: systemd may still have them loaded, so a new unit file
    /// under such a name needs a check for `NeedDaemonReload`.
    pub released: Mutex<std::collections::HashSet<String>>,
    /// Events.
    pub events: crate::events::EventSink,
    /// API reachability.
    pub health: Arc<ApiHealth>,
}

impl Shared {
    fn claim(&self, unit: &str, uid: &str) -> Result<(), String> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        match owners.get(unit) {
            Some(other) if other != uid => Err(other.clone()),
            _ => {
                owners.insert(unit.to_owned(), uid.to_owned());
                Ok(())
            }
        }
    }

    fn release(&self, unit: &str, uid: &str) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if owners.get(unit).is_some_and(|o| o == uid) {
            owners.remove(unit);
            self.released.lock().unwrap_or_else(|e| e.into_inner()).insert(unit.to_owned());
        }
    }

    fn was_released(&self, unit: &str) -> bool {
        self.released.lock().unwrap_or_else(|e| e.into_inner()).remove(unit)
    }
}

/// Messages to a worker.
#[derive(Debug)]
pub enum Msg {
    /// The pod as the API has it now.
    Pod(Box<Pod>),
    /// The pod object is gone from the API.
    Gone,
    /// One of the pod's units changed: the new property values from systemd's signal.
    Unit(String, Box<UnitDelta>),
    /// Re-read everything.
    Resync,
    /// An image resolution finished for the container at this index.
    Image(usize, Result<ImageInfo, ImageError>),
}

/// A unit of this pod found on the node when the worker started.
#[derive(Debug, Clone)]
pub struct Adopted {
    /// Unit name.
    pub unit: String,
    /// Its `[X-Kubernetes]` identity.
    pub meta: UnitMeta,
}

#[derive(Debug, Clone)]
enum ImageState {
    Unresolved,
    Resolving,
    /// Resolving failed at `failed`; try again at `retry`.
    Failed {
        error: ImageError,
        failed: Instant,
        retry: Instant,
    },
    Ready(ImageInfo),
}

/// Image pull back-off: the kubelet's (10 s doubling up to 5 minutes).
fn pull_backoff(failures: u32) -> Duration {
    (super::backoff::INITIAL * 2u32.saturating_pow(failures.saturating_sub(1).min(16))).min(super::backoff::MAX)
}

/// How long after a failed pull the status says ErrImagePull before ImagePullBackOff (the
/// kubelet shows the error once, then the back-off on its next sync).
const PULL_ERROR_SHOWN: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Ctr {
    spec: Container,
    kind: ContainerKind,
    unit: String,
    image: ImageState,
    /// Hash of the unit file on disk, `None` when there is none.
    written: Option<String>,
    /// Last known status: read from systemd, then kept current by its signals.
    unit_status: Option<UnitStatus>,
    /// The status must be read again (start-up, resync, or a signal without values).
    stale: bool,
    /// A start job was queued at this time and systemd has not reported the result yet.
    starting: Option<Instant>,
    restart_count: i32,
    last_state: Option<ContainerStateTerminated>,
    backoff: CrashBackoff,
    /// A restart is due at this time.
    restart_at: Option<SystemTime>,
    /// The run (start and exit time) whose exit was already handled.
    handled_exit: Option<(u64, u64)>,
    /// Why the container cannot be created right now, and when to retry.
    blocked: Option<(String, String, Instant)>,
    /// `imageID` recorded in an adopted unit.
    adopted_image_id: Option<String>,
    /// Consecutive failed image pulls.
    image_failures: u32,
    /// The last exit seen of the current run (cleared when the container is started again).
    observed_exit: Option<Box<ContainerStateTerminated>>,
    /// The API says this container ran, but its unit is gone (the node rebooted): the next
    /// start counts as a restart, as the kubelet counts a container lost with its sandbox.
    lost_run: Option<ContainerStateTerminated>,
}

impl Ctr {
    /// The container's run as systemd reports it; a run whose exit was seen stays exited even
    /// if its unit is stopped or unloaded afterwards (for example while the node shuts down).
    fn run(&self) -> UnitRun {
        match self.unit_status.as_ref().map_or(UnitRun::NotStarted, status::unit_run) {
            UnitRun::NotStarted => self.observed_exit.clone().map_or(UnitRun::NotStarted, UnitRun::Exited),
            run => run,
        }
    }

    fn running(&self) -> bool {
        matches!(self.run(), UnitRun::Running(_))
    }

    fn exited(&self) -> Option<Box<ContainerStateTerminated>> {
        match self.run() {
            UnitRun::Exited(t) => Some(t),
            _ => None,
        }
    }

    fn succeeded(&self) -> bool {
        self.exited().is_some_and(|t| t.exit_code == 0)
    }

    fn policy<'a>(&self, pod_policy: &'a str) -> &'a str {
        unit::effective_restart_policy(pod_policy, self.kind)
    }

    fn will_restart(&self, pod_policy: &str, exit_code: i32) -> bool {
        match self.policy(pod_policy) {
            "Always" => true,
            "OnFailure" => exit_code != 0,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Stopping app and init containers.
    Apps,
    /// Stopping sidecars, after the app containers.
    Sidecars,
}

#[derive(Debug)]
struct Deletion {
    deadline: Instant,
    stage: Stage,
    sent_sigterm: Vec<String>,
    sent_sigkill: bool,
}

/// Whether the worker goes on.
enum Flow {
    Continue,
    Done,
}

/// A pod worker.
pub struct Worker {
    shared: Arc<Shared>,
    uid: String,
    pod: Pod,
    ctrs: Vec<Ctr>,
    api_gone: bool,
    deletion: Option<Deletion>,
    /// vks decided the pod will not run again (all containers done under its restart policy).
    terminal: bool,
    /// The pod was already terminal in the API when this worker started and has no units:
    /// its status is final and must not be overwritten.
    frozen: bool,
    start_time: Timestamp,
    last_status: Option<serde_json::Value>,
    status_retry: Option<Instant>,
    /// A new pod's first status waits this long for its containers to start, so that a pod that
    /// starts at once costs one status write instead of two.
    first_publish_hold: Option<Instant>,
    /// A run is known from the Service interface's signal but not yet its InvocationID (the
    /// Unit interface's signal comes separately): publishing waits for it until this time, then
    /// reads the units once.
    id_wait: Option<(Instant, bool)>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
}

fn label(pod: &Pod) -> String {
    format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""))
}

fn system_time(t: &ContainerStateTerminated) -> SystemTime {
    t.finished_at
        .as_ref()
        .and_then(|f| SystemTime::UNIX_EPOCH.checked_add(Duration::from_micros(f.0.as_microsecond().max(0) as u64)))
        .unwrap_or_else(SystemTime::now)
}

impl Worker {
    /// A worker for `pod`, adopting the units already on the node. Returns the worker and the
    /// sender of its mailbox.
    pub fn new(shared: Arc<Shared>, pod: Pod, adopted: Vec<Adopted>) -> (Worker, mpsc::UnboundedSender<Msg>) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let (tx, rx) = mpsc::unbounded_channel();
        let spec = pod.spec.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api_status = pod.status.clone().unwrap_or_default();
        let previous = |init: bool, n: &str| {
            let list = if init { &api_status.init_container_statuses } else { &api_status.container_statuses };
            list.iter().flatten().find(|s| s.name == n).cloned()
        };
        let mut ctrs = Vec::new();
        let init = spec.init_containers.iter().flatten().map(|c| {
            let kind = if c.restart_policy.as_deref() == Some("Always") {
                ContainerKind::Sidecar
            } else {
                ContainerKind::Init
            };
            (c, kind)
        });
        for (c, kind) in init.chain(spec.containers.iter().map(|c| (c, ContainerKind::App))) {
            let prev = previous(kind != ContainerKind::App, &c.name);
            let restart_count = prev.as_ref().map_or(0, |p| p.restart_count);
            let last_state = prev.as_ref().and_then(|p| p.last_state.as_ref()).and_then(|s| s.terminated.clone());
            let unit = unit::name::unit_name(&ns, &name, &c.name);
            let adopted_meta = adopted.iter().find(|a| a.unit == unit).map(|a| &a.meta);
            let written = adopted_meta.map(|m| m.spec_hash.clone());
            let ran = prev.as_ref().is_some_and(|p| {
                p.restart_count > 0
                    || p.state.as_ref().is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                    || p.last_state.as_ref().is_some_and(|s| s.terminated.is_some())
            });
            let lost_run = (written.is_none() && ran).then(|| ContainerStateTerminated {
                exit_code: 255,
                reason: Some("Unknown".into()),
                message: Some("the container's unit was lost (the node restarted)".into()),
                ..ContainerStateTerminated::default()
            });
            let backoff =
                CrashBackoff::seeded(restart_count, last_state.as_ref().map_or_else(SystemTime::now, system_time));
            ctrs.push(Ctr {
                spec: c.clone(),
                kind,
                unit,
                image: ImageState::Unresolved,
                written,
                unit_status: None,
                stale: true,
                starting: None,
                restart_count,
                last_state,
                backoff,
                restart_at: None,
                handled_exit: None,
                blocked: None,
                adopted_image_id: adopted_meta.map(|m| m.image_id.clone()),
                image_failures: 0,
                observed_exit: None,
                lost_run,
            });
        }
        for c in &ctrs {
            if c.lost_run.is_some() {
                log::info!(
                    pod = format!("{ns}/{name}").as_str();
                    "container {} of pod {ns}/{name} ran before but its unit is gone (node restarted): starting it again",
                    c.spec.name
                );
            }
            if c.written.is_some() {
                let _ = shared.claim(&c.unit, &uid);
            }
        }
        let phase = api_status.phase.as_deref().unwrap_or("");
        let terminal = matches!(phase, "Succeeded" | "Failed");
        let start_time = api_status.start_time.as_ref().map_or_else(Timestamp::now, |t| t.0);
        let frozen = terminal && adopted.is_empty();
        let first_publish_hold = api_status.container_statuses.is_none().then(|| Instant::now() + FIRST_STATUS_HOLD);
        let worker = Worker {
            shared,
            uid,
            pod,
            ctrs,
            api_gone: false,
            deletion: None,
            terminal,
            frozen,
            start_time,
            last_status: None,
            status_retry: None,
            first_publish_hold,
            id_wait: None,
            tx: tx.clone(),
            rx,
        };
        (worker, tx)
    }

    /// The units this worker owns (for routing unit events).
    pub fn unit_names(&self) -> Vec<String> {
        self.ctrs.iter().map(|c| c.unit.clone()).collect()
    }

    /// Runs until the pod is gone and its units removed, or `cancel` fires (vks shutting down:
    /// units are left alone).
    pub async fn run(mut self, cancel: CancellationToken) {
        let key = label(&self.pod);
        log::debug!(pod = key.as_str(); "pod worker started for {key} ({})", self.uid);
        loop {
            match self.round().await {
                Flow::Done => break,
                Flow::Continue => {}
            }
            let wake = self.next_wake();
            let msg = tokio::select! {
                () = cancel.cancelled() => return,
                m = self.rx.recv() => m,
                () = sleep_until(wake) => None,
            };
            if let Some(m) = msg {
                self.apply(m);
            }
            while let Ok(m) = self.rx.try_recv() {
                self.apply(m);
            }
        }
        log::info!(pod = key.as_str(); "pod {key} removed from the node");
    }

    fn apply(&mut self, msg: Msg) {
        match msg {
            Msg::Pod(p) => {
                if p.metadata.uid.as_deref() == Some(self.uid.as_str()) {
                    let spec_changed = p.spec != self.pod.spec;
                    self.pod = *p;
                    if spec_changed {
                        self.update_specs();
                    }
                }
            }
            Msg::Gone => self.api_gone = true,
            Msg::Unit(name, delta) => {
                log::trace!(unit = name.as_str(); "signal for {name}: {delta:?}");
                for c in self.ctrs.iter_mut().filter(|c| c.unit == name) {
                    match c.unit_status.as_mut() {
                        // A signal about an earlier run (queued before a restart or a full read)
                        // must not undo what is known about a later one.
                        Some(s) if delta.started_usec.is_some_and(|t| t < s.started_usec) => {}
                        Some(s) if !delta.incomplete => delta.apply(s),
                        _ => c.stale = true,
                    }
                    // The Service interface says when a run began or ended (the Unit interface's
                    // ActiveState may describe an earlier run while a restart is under way).
                    if !matches!(c.run(), UnitRun::NotStarted) {
                        c.starting = None;
                    }
                }
            }
            Msg::Resync => {
                for c in &mut self.ctrs {
                    c.stale = true;
                }
            }
            Msg::Image(i, r) => self.image_resolved(i, r),
        }
    }

    /// Records the outcome of resolving container `i`'s image, with the kubelet's events.
    fn image_resolved(&mut self, i: usize, r: Result<ImageInfo, ImageError>) {
        let Some(c) = self.ctrs.get_mut(i) else { return };
        let image = c.spec.image.clone().unwrap_or_default();
        let now = Instant::now();
        match r {
            Ok(img) => {
                c.image_failures = 0;
                c.image = ImageState::Ready(img);
            }
            Err(e) if e.reason == "ErrImagePull" => {
                c.image_failures += 1;
                let wait = pull_backoff(c.image_failures);
                c.image = ImageState::Failed { error: e.clone(), failed: now, retry: now + wait };
                log::warn!(pod = label(&self.pod).as_str(); "pod {}: {}; next try in {}s", label(&self.pod), e.message, wait.as_secs());
                self.event(EventType::Warning, "Failed", format!("Failed to pull image {image:?}: {}", e.message));
                self.event(EventType::Warning, "Failed", "Error: ErrImagePull".into());
                self.event(EventType::Normal, "BackOff", format!("Back-off pulling image {image:?}"));
                self.event(EventType::Warning, "Failed", "Error: ImagePullBackOff".into());
            }
            Err(e) => {
                let repeated = matches!(&c.image, ImageState::Failed { error, .. } if *error == e);
                c.image = ImageState::Failed { error: e.clone(), failed: now, retry: now + CREATE_RETRY };
                if !repeated {
                    log::warn!(pod = label(&self.pod).as_str(); "pod {}: {}", label(&self.pod), e.message);
                    self.event(EventType::Warning, e.reason, format!("Error: {}", e.message));
                }
            }
        }
    }

    /// Picks up changed container specs (only images may change in a pod).
    fn update_specs(&mut self) {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let all: Vec<&Container> = spec.init_containers.iter().flatten().chain(spec.containers.iter()).collect();
        for c in &mut self.ctrs {
            if let Some(new) = all.iter().find(|n| n.name == c.spec.name) {
                if new.image != c.spec.image {
                    c.image = ImageState::Unresolved;
                }
                c.spec = (*new).clone();
            }
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let now_sys = SystemTime::now();
        let now = Instant::now();
        let mut wake: Vec<Instant> = Vec::new();
        for c in &self.ctrs {
            if let Some(at) = c.restart_at {
                wake.push(now + at.duration_since(now_sys).unwrap_or_default());
            }
            if let Some((_, _, at)) = &c.blocked {
                wake.push(*at);
            }
            if let ImageState::Failed { error, failed, retry } = &c.image {
                wake.push(*retry);
                let shown = *failed + PULL_ERROR_SHOWN;
                if error.reason == "ErrImagePull" && shown > now {
                    wake.push(shown);
                }
            }
        }
        if let Some(d) = &self.deletion {
            wake.push(d.deadline);
        }
        wake.extend(self.status_retry);
        wake.extend(self.first_publish_hold);
        wake.extend(self.id_wait.map(|(at, _)| at));
        wake.into_iter().min()
    }

    fn policy(&self) -> String {
        self.pod.spec.as_ref().and_then(|s| s.restart_policy.clone()).unwrap_or_else(|| "Always".into())
    }

    fn event(&self, type_: EventType, reason: &str, note: String) {
        let m = &self.pod.metadata;
        self.shared.events.pod(
            m.namespace.as_deref().unwrap_or(""),
            m.name.as_deref().unwrap_or(""),
            &self.uid,
            type_,
            reason,
            note,
        );
    }

    /// Reads the units whose known status is missing or stale; the others are kept current by
    /// systemd's signals.
    async fn refresh(&mut self) {
        for i in 0..self.ctrs.len() {
            if self.ctrs[i].written.is_none() {
                self.ctrs[i].unit_status = None;
                continue;
            }
            if !self.ctrs[i].stale && self.ctrs[i].unit_status.is_some() {
                continue;
            }
            self.ctrs[i].stale = false;
            let unit = self.ctrs[i].unit.clone();
            match self.shared.systemd.status(&unit).await {
                Ok(s) => {
                    log::trace!(unit = unit.as_str(); "read {unit}: {s:?}");
                    let c = &mut self.ctrs[i];
                    // A read that raced with a start vks just made may still show the earlier
                    // run: what is known about the later one wins.
                    let older = c.unit_status.as_ref().is_some_and(|known| s.started_usec < known.started_usec);
                    if !older {
                        c.unit_status = Some(s);
                        if !matches!(c.run(), UnitRun::NotStarted) {
                            c.starting = None;
                        }
                    }
                }
                Err(SystemdError::NoSuchUnit(_)) => {
                    self.ctrs[i].unit_status = None;
                    self.ctrs[i].written = None;
                }
                Err(e) => log::warn!(unit = unit.as_str(); "reading unit {unit}: {e}"),
            }
        }
    }

    async fn round(&mut self) -> Flow {
        self.refresh().await;
        self.handle_exits().await;
        let deleting = self.api_gone || self.pod.metadata.deletion_timestamp.is_some();
        if deleting {
            return self.terminate().await;
        }
        if !self.terminal {
            self.start_containers().await;
            self.check_terminal();
        }
        if self.terminal {
            self.stop_sidecars().await;
        }
        self.publish().await
    }

    /// Reacts to containers whose process just exited: kills what is left in their cgroup and
    /// schedules a restart when the policy asks for one.
    async fn handle_exits(&mut self) {
        let policy = self.policy();
        let now = SystemTime::now();
        let deleting = self.api_gone || self.pod.metadata.deletion_timestamp.is_some();
        for i in 0..self.ctrs.len() {
            let c = &self.ctrs[i];
            let Some(t) = c.exited() else { continue };
            // Without a unit status the exit is the remembered one, handled already.
            let Some(run_key) = c.unit_status.as_ref().map(|s| (s.started_usec, s.exited_usec)) else { continue };
            if c.handled_exit == Some(run_key) {
                continue;
            }
            let unit = c.unit.clone();
            // A container is its main process: once it exits, nothing of it may keep running.
            let _ = self.shared.systemd.kill(&unit, KillWhom::All, 9).await;
            let restart = !deleting && !self.terminal && c.will_restart(&policy, t.exit_code);
            let c = &mut self.ctrs[i];
            c.handled_exit = Some(run_key);
            c.observed_exit = Some(t.clone());
            if restart {
                let finished = system_time(&t);
                let delay = c.backoff.delay(finished, now);
                c.restart_at = Some(now + delay);
            }
            if t.exit_code != 0 {
                log::info!(
                    unit = unit.as_str();
                    "container {} of pod {} exited with {}{}",
                    c.spec.name,
                    label(&self.pod),
                    t.exit_code,
                    if restart { "; restarting with back-off" } else { "" }
                );
            }
        }
    }

    async fn start_containers(&mut self) {
        let now = SystemTime::now();
        // Init containers, one at a time; sidecars are started in order and keep running.
        for i in 0..self.ctrs.len() {
            match self.ctrs[i].kind {
                ContainerKind::App => continue,
                ContainerKind::Init => {
                    let c = &self.ctrs[i];
                    if c.succeeded() {
                        continue;
                    }
                    if c.running() {
                        return;
                    }
                    if c.exited().is_some() {
                        if c.restart_at.is_some_and(|at| at <= now) {
                            self.launch(i).await;
                        }
                        return;
                    }
                    self.launch(i).await;
                    return;
                }
                ContainerKind::Sidecar => {
                    let c = &self.ctrs[i];
                    if c.running() {
                        continue;
                    }
                    if c.exited().is_some() {
                        if c.restart_at.is_some_and(|at| at <= now) {
                            self.launch(i).await;
                        }
                        continue;
                    }
                    self.launch(i).await;
                    if !self.ctrs[i].running() {
                        return;
                    }
                }
            }
        }
        for i in 0..self.ctrs.len() {
            let c = &self.ctrs[i];
            if c.kind != ContainerKind::App || c.running() {
                continue;
            }
            if c.exited().is_some() {
                if c.restart_at.is_some_and(|at| at <= now) {
                    self.launch(i).await;
                }
                continue;
            }
            self.launch(i).await;
        }
    }

    /// Creates (or re-creates) the container's unit and starts it.
    async fn launch(&mut self, i: usize) {
        let now = Instant::now();
        if self.ctrs[i].blocked.as_ref().is_some_and(|(_, _, at)| *at > now) {
            return;
        }
        // A start job is under way: wait for systemd to report how it went (a start that
        // reports nothing for long is tried again).
        if self.ctrs[i].starting.is_some_and(|t| now.duration_since(t) < START_TIMEOUT) {
            return;
        }
        // The image first: resolving may take long, so it runs in its own task.
        let image = match &self.ctrs[i].image {
            ImageState::Ready(img) => img.clone(),
            ImageState::Resolving => return,
            ImageState::Failed { retry, .. } if *retry > now => return,
            ImageState::Unresolved | ImageState::Failed { .. } => {
                self.ctrs[i].image = ImageState::Resolving;
                let (images, tx) = (self.shared.images.clone(), self.tx.clone());
                let image = self.ctrs[i].spec.image.clone().unwrap_or_default();
                let policy = self.ctrs[i].spec.image_pull_policy.clone().unwrap_or_else(|| "IfNotPresent".into());
                let m = &self.pod.metadata;
                let events = crate::events::PodEvents::new(
                    self.shared.events.clone(),
                    m.namespace.as_deref().unwrap_or(""),
                    m.name.as_deref().unwrap_or(""),
                    &self.uid,
                );
                tokio::spawn(async move {
                    let r = images.ensure(&image, &policy, &events).await;
                    let _ = tx.send(Msg::Image(i, r));
                });
                return;
            }
        };
        let c = &self.ctrs[i];
        let plan = unit::plan(&self.pod, &c.spec, c.kind, &image, &self.shared.node, crate::images::is_executable);
        let plan = match plan {
            Ok(p) => p,
            Err(e) => {
                if self.ctrs[i].blocked.as_ref().is_none_or(|(_, m, _)| *m != e.message) {
                    log::warn!(pod = label(&self.pod).as_str(); "pod {}: {}", label(&self.pod), e.message);
                    self.event(EventType::Warning, "Failed", format!("Error: {}", e.message));
                }
                self.ctrs[i].blocked = Some((e.reason.to_owned(), e.message, now + CREATE_RETRY));
                return;
            }
        };
        if let Err(other) = self.shared.claim(&plan.name, &self.uid) {
            self.ctrs[i].blocked = Some((
                "ContainerCreating".into(),
                format!("waiting for unit {} of the previous pod {other} to be removed", plan.name),
                now + Duration::from_secs(1),
            ));
            return;
        }
        self.ctrs[i].blocked = None;
        let sd = self.shared.systemd.clone();
        let unit = plan.name.clone();
        let ran_before = self.ctrs[i].exited().is_some() || self.ctrs[i].restart_at.is_some();
        if self.ctrs[i].written.as_deref() != Some(plan.meta.spec_hash.as_str()) {
            let maybe_loaded = self.ctrs[i].written.is_some() || self.shared.was_released(&unit);
            let text = match unit::render(&plan) {
                Ok(t) => t,
                Err(e) => {
                    self.ctrs[i].blocked = Some((e.reason.to_owned(), e.message, now + CREATE_RETRY));
                    return;
                }
            };
            if let Err(e) = sd.write_unit(&unit, &text).await {
                self.ctrs[i].blocked = Some(("CreateContainerError".into(), e.to_string(), now + CALL_RETRY));
                return;
            }
            self.ctrs[i].written = Some(plan.meta.spec_hash.clone());
            // A unit systemd still has loaded from an earlier file needs a reload to see the new
            // one; a unit it never loaded is read fresh at start.
            if maybe_loaded
                && sd.status(&unit).await.is_ok_and(|s| s.need_daemon_reload)
                && let Err(e) = sd.reload().await
            {
                log::warn!("daemon-reload for {unit}: {e}");
            }
        }
        log::debug!(unit = unit.as_str(); "starting unit {unit}");
        let result = if ran_before { sd.restart(&unit).await } else { sd.start(&unit).await };
        log::debug!(unit = unit.as_str(); "start job for {unit} queued");
        let c = &mut self.ctrs[i];
        match result {
            Ok(()) => {
                if ran_before {
                    if let Some(t) = c.exited() {
                        c.backoff.restarted(system_time(&t));
                        c.last_state = Some(*t);
                    }
                    c.restart_count += 1;
                } else if let Some(lost) = c.lost_run.take() {
                    c.last_state = Some(lost);
                    c.restart_count += 1;
                }
                c.adopted_image_id = Some(plan.meta.image_id.clone());
                c.restart_at = None;
                c.observed_exit = None;
                c.starting = Some(Instant::now());
                let what = if ran_before { "Restarted" } else { "Started" };
                // Until systemd's signals say more, the container is starting: nothing of an
                // earlier run may show through (signals about it carry an older start time).
                let previous_start = c.unit_status.as_ref().map_or(0, |s| s.started_usec);
                c.unit_status = Some(UnitStatus {
                    load_state: "loaded".into(),
                    active_state: ActiveState::Activating,
                    started_usec: previous_start + 1,
                    ..UnitStatus::default()
                });
                c.stale = false;
                let note = format!("{what} container {} (unit {unit})", c.spec.name);
                self.event(EventType::Normal, "Started", note);
            }
            Err(e) => {
                let msg = format!("starting unit {unit}: {e}");
                log::warn!(unit = unit.as_str(); "{msg}");
                c.blocked = Some(("RunContainerError".into(), msg.clone(), now + CALL_RETRY));
                self.event(EventType::Warning, "Failed", msg);
            }
        }
    }

    /// Decides whether the pod is done: every app container exited and none will restart, or a
    /// failed init container that will not be retried.
    fn check_terminal(&mut self) {
        let policy = self.policy();
        let init_failed_for_good = self.ctrs.iter().any(|c| {
            c.kind == ContainerKind::Init && c.exited().is_some_and(|t| t.exit_code != 0) && !c.will_restart(&policy, 1)
        });
        let apps: Vec<&Ctr> = self.ctrs.iter().filter(|c| c.kind == ContainerKind::App).collect();
        let apps_done =
            !apps.is_empty() && apps.iter().all(|c| c.exited().is_some_and(|t| !c.will_restart(&policy, t.exit_code)));
        if init_failed_for_good || apps_done {
            self.terminal = true;
            for c in &mut self.ctrs {
                c.restart_at = None;
            }
            log::info!(pod = label(&self.pod).as_str(); "pod {} finished", label(&self.pod));
        }
    }

    async fn stop_sidecars(&mut self) {
        for i in (0..self.ctrs.len()).rev() {
            let c = &self.ctrs[i];
            if c.kind == ContainerKind::Sidecar && c.running() {
                let unit = c.unit.clone();
                if let Err(e) = self.shared.systemd.stop(&unit).await {
                    log::warn!(unit = unit.as_str(); "stopping sidecar unit {unit}: {e}");
                }
            }
        }
    }

    fn grace(&self) -> Duration {
        if self.api_gone {
            return FORCE_DELETE_GRACE;
        }
        let secs = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| self.pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0);
        Duration::from_secs(secs as u64)
    }

    async fn signal(&mut self, kinds: &[ContainerKind], signal: i32) {
        for i in (0..self.ctrs.len()).rev() {
            let c = &self.ctrs[i];
            if !kinds.contains(&c.kind) || !c.running() {
                continue;
            }
            let unit = c.unit.clone();
            let d = self.deletion.as_mut().expect("deletion in progress");
            if signal == 15 {
                if d.sent_sigterm.contains(&unit) {
                    continue;
                }
                d.sent_sigterm.push(unit.clone());
                let note = format!("Stopping container {}", c.spec.name);
                self.event(EventType::Normal, "Killing", note);
            }
            let whom = if signal == 15 { KillWhom::Main } else { KillWhom::All };
            if let Err(e) = self.shared.systemd.kill(&unit, whom, signal).await {
                log::debug!(unit = unit.as_str(); "signal {signal} to {unit}: {e}");
            }
        }
    }

    /// Graceful termination: SIGTERM to app (and init) containers, then to sidecars once the
    /// apps are gone, SIGKILL to whatever still runs at the end of the grace period; then the
    /// units and pod directory are removed and the pod object deleted.
    async fn terminate(&mut self) -> Flow {
        let now = Instant::now();
        let grace = self.grace();
        match &mut self.deletion {
            None => {
                log::info!(pod = label(&self.pod).as_str(); "stopping pod {} (grace {}s)", label(&self.pod), grace.as_secs());
                self.deletion = Some(Deletion {
                    deadline: now + grace,
                    stage: Stage::Apps,
                    sent_sigterm: Vec::new(),
                    sent_sigkill: false,
                });
            }
            // A shorter grace period (a second delete, or a force delete) moves the deadline in.
            Some(d) => d.deadline = d.deadline.min(now + grace),
        }
        for c in &mut self.ctrs {
            c.restart_at = None;
        }
        let past_deadline = self.deletion.as_ref().is_some_and(|d| now >= d.deadline);
        if past_deadline {
            self.signal(&[ContainerKind::App, ContainerKind::Init, ContainerKind::Sidecar], 9).await;
            if let Some(d) = self.deletion.as_mut() {
                if !d.sent_sigkill {
                    log::info!("grace period of pod {} over: killing what still runs", label(&self.pod));
                }
                d.sent_sigkill = true;
                // Check again shortly (and repeat SIGKILL) until everything is gone.
                d.deadline = now + Duration::from_millis(500);
            }
        }
        let apps_running = self.ctrs.iter().any(|c| c.kind != ContainerKind::Sidecar && c.running());
        if apps_running {
            self.signal(&[ContainerKind::App, ContainerKind::Init], 15).await;
            self.publish().await;
            return Flow::Continue;
        }
        if let Some(d) = self.deletion.as_mut() {
            d.stage = Stage::Sidecars;
        }
        if self.ctrs.iter().any(|c| c.running()) {
            self.signal(&[ContainerKind::Sidecar], 15).await;
            self.publish().await;
            return Flow::Continue;
        }
        // Everything stopped: remove the units and the pod directory.
        for c in &self.ctrs {
            if c.written.is_none() && c.unit_status.is_none() {
                continue;
            }
            let sd = &self.shared.systemd;
            if let Err(e) = sd.stop(&c.unit).await
                && !matches!(e, SystemdError::NoSuchUnit(_))
            {
                log::warn!(unit = c.unit.as_str(); "stopping unit {}: {e}", c.unit);
            }
            if let Err(e) = sd.remove_unit_file(&c.unit).await {
                log::warn!(unit = c.unit.as_str(); "{e}");
                return Flow::Continue;
            }
            let _ = sd.reset_failed(&c.unit).await;
        }
        let dir = self.shared.pod_dir.join(&self.uid);
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("removing pod directory {}: {e}", dir.display());
        }
        for c in &mut self.ctrs {
            c.written = None;
        }
        if !self.api_gone {
            // Final status, then finish the deletion the way the kubelet does: grace 0, UID
            // precondition so a new pod of the same name is never deleted.
            self.terminal = true;
            if let Flow::Done = self.publish().await {
                return self.finish();
            }
            let api: Api<Pod> = Api::namespaced(
                self.shared.client.clone(),
                self.pod.metadata.namespace.as_deref().unwrap_or("default"),
            );
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions { uid: Some(self.uid.clone()), resource_version: None }),
                ..DeleteParams::default()
            };
            match api.delete(self.pod.metadata.name.as_deref().unwrap_or(""), &dp).await {
                Ok(_) => self.shared.health.ok(),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    self.shared.health.report(&format!("deleting pod {}", label(&self.pod)), &e.into());
                    self.status_retry = Some(Instant::now() + CALL_RETRY);
                    return Flow::Continue;
                }
            }
        }
        self.finish()
    }

    fn finish(&mut self) -> Flow {
        for c in &self.ctrs {
            self.shared.release(&c.unit, &self.uid);
        }
        Flow::Done
    }

    fn views(&self) -> Vec<ContainerView> {
        let pending_init = self.ctrs.iter().any(|c| match c.kind {
            ContainerKind::Init => !c.succeeded(),
            ContainerKind::Sidecar => !c.running() && c.exited().is_none(),
            ContainerKind::App => false,
        });
        self.ctrs
            .iter()
            .map(|c| {
                let run = c.run();
                let container_id = c
                    .unit_status
                    .as_ref()
                    .filter(|s| !s.invocation_id.is_empty())
                    .map(|s| format!("systemd://{}", s.invocation_id));
                let mut last_state = c.last_state.clone();
                let state = match (&run, &c.blocked, &c.image, c.restart_at) {
                    (UnitRun::Running(started), _, _, _) => CState::Running { started_at: *started },
                    (UnitRun::Exited(t), _, _, Some(_)) if self.deletion.is_none() => {
                        let wait =
                            c.restart_at.and_then(|at| at.duration_since(SystemTime::now()).ok()).unwrap_or_default();
                        last_state = Some((**t).clone());
                        CState::waiting(
                            "CrashLoopBackOff",
                            format!(
                                "back-off {}s restarting failed container={} pod={}_{}({})",
                                c.backoff.current().as_secs().max(wait.as_secs()),
                                c.spec.name,
                                self.pod.metadata.name.as_deref().unwrap_or(""),
                                self.pod.metadata.namespace.as_deref().unwrap_or(""),
                                self.uid
                            ),
                        )
                    }
                    (UnitRun::Exited(t), _, _, _) => CState::Terminated(t.clone()),
                    (UnitRun::NotStarted, Some((reason, message, _)), _, _) => CState::waiting(reason, message.clone()),
                    (UnitRun::NotStarted, None, ImageState::Failed { error, failed, .. }, _) => {
                        if error.reason == "ErrImagePull" && failed.elapsed() >= PULL_ERROR_SHOWN {
                            CState::waiting(
                                "ImagePullBackOff",
                                format!(
                                    "Back-off pulling image {:?}: ErrImagePull: {}",
                                    c.spec.image.as_deref().unwrap_or(""),
                                    error.message
                                ),
                            )
                        } else {
                            CState::waiting(error.reason, error.message.clone())
                        }
                    }
                    (UnitRun::NotStarted, None, _, _) if c.kind == ContainerKind::App && pending_init => {
                        CState::waiting("PodInitializing", None)
                    }
                    (UnitRun::NotStarted, None, _, _) => CState::waiting("ContainerCreating", None),
                };
                // As the kubelet: the image ID is the one of the container's run, none before.
                let image_id = match (&state, &c.image) {
                    (CState::Waiting { .. }, _) if last_state.is_none() => String::new(),
                    (_, ImageState::Ready(img)) => img.image_id.clone(),
                    _ => c.adopted_image_id.clone().unwrap_or_default(),
                };
                ContainerView {
                    name: c.spec.name.clone(),
                    kind: c.kind,
                    image: c.spec.image.clone().unwrap_or_default(),
                    image_id,
                    state,
                    last_state,
                    restart_count: c.restart_count,
                    container_id,
                }
            })
            .collect()
    }

    /// Patches the pod status when it changed. Returns `Done` when the pod object turned out
    /// to be gone or replaced.
    async fn publish(&mut self) -> Flow {
        if self.frozen || self.api_gone {
            return Flow::Continue;
        }
        if self.status_retry.is_some_and(|t| t > Instant::now()) {
            return Flow::Continue;
        }
        self.status_retry = None;
        // A container id is never published missing for a run that has one.
        let now = Instant::now();
        let missing_id: Vec<usize> = (0..self.ctrs.len())
            .filter(|&i| {
                self.ctrs[i]
                    .unit_status
                    .as_ref()
                    .is_some_and(|s| s.invocation_id.is_empty() && (s.main_pid != 0 || s.exit_kind != ExitKind::None))
            })
            .collect();
        if missing_id.is_empty() {
            self.id_wait = None;
        } else {
            match self.id_wait {
                None => {
                    self.id_wait = Some((now + ID_WAIT, false));
                    return Flow::Continue;
                }
                Some((at, _)) if now < at => return Flow::Continue,
                Some((_, false)) => {
                    for i in missing_id {
                        self.ctrs[i].stale = true;
                    }
                    self.id_wait = Some((now, true));
                    return Flow::Continue;
                }
                Some((_, true)) => self.id_wait = None,
            }
        }
        let views = self.views();
        if let Some(hold) = self.first_publish_hold {
            let settled = views.iter().all(|v| !matches!(v.state, CState::Waiting { ref reason, .. } if reason == "ContainerCreating" || reason == "PodInitializing"));
            if !settled && Instant::now() < hold && self.deletion.is_none() {
                return Flow::Continue;
            }
            self.first_publish_hold = None;
        }
        let facts = PodFacts {
            pod: &self.pod,
            node_ip: &self.shared.node.node_ip,
            start_time: self.start_time,
            terminal: self.terminal,
            now: Timestamp::now(),
        };
        let status = status::pod_status(&facts, &views);
        let body = patch_body(&status);
        if self.last_status.as_ref() == Some(&body) {
            return Flow::Continue;
        }
        let api: Api<Pod> =
            Api::namespaced(self.shared.client.clone(), self.pod.metadata.namespace.as_deref().unwrap_or("default"));
        let patch = serde_json::json!({ "metadata": { "uid": self.uid }, "status": body });
        log::debug!(pod = label(&self.pod).as_str(); "patching the status of pod {}", label(&self.pod));
        let sent = Instant::now();
        match api
            .patch_status(
                self.pod.metadata.name.as_deref().unwrap_or(""),
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            Ok(p) => {
                self.shared.health.ok();
                log::debug!(
                    pod = label(&self.pod).as_str();
                    "status of pod {} patched in {}ms: {} {:?}",
                    label(&self.pod),
                    sent.elapsed().as_millis(),
                    status.phase.as_deref().unwrap_or(""),
                    views.iter().map(|v| match &v.state {
                        CState::Waiting { reason, .. } => reason.clone(),
                        CState::Running { .. } => "Running".to_owned(),
                        CState::Terminated(t) => format!("Terminated({})", t.exit_code),
                    }).collect::<Vec<_>>()
                );
                self.last_status = Some(body);
                // Keep the API's view (conditions' transition times) for the next computation.
                self.pod.status = p.status;
                Flow::Continue
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                // Deleted, or replaced by a pod with another UID: this pod is gone.
                self.api_gone = true;
                Flow::Continue
            }
            Err(e) => {
                self.shared.health.report(&format!("patching the status of pod {}", label(&self.pod)), &e.into());
                self.status_retry = Some(Instant::now() + CALL_RETRY);
                Flow::Continue
            }
        }
    }
}

/// The status as a strategic-merge patch body. Container status lists are atomic in the API
/// (a patch replaces them whole); conditions merge by type, so each carries every field
/// explicitly and nothing stale survives from an earlier status.
fn patch_body(status: &k8s_openapi::api::core::v1::PodStatus) -> serde_json::Value {
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

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

//! One task per pod: it owns the pod's units, applies the kubelet's rules (init containers in
//! order, sidecars, restart policy with back-off, graceful deletion) and reports status.
//!
//! A worker reacts to messages (a new version of the pod, a change of one of its units, an
//! image that became available, a resync) and to its own timers (back-off expiry, retries, the
//! end of a grace period). Each round re-reads the pod's stale units from systemd, acts, and
//! patches the pod status when it changed. Nothing it decides is kept outside systemd and the
//! API: after a vks restart a new worker reads the same facts back (units, their
//! `[X-Kubernetes]` section, and the restart counts in the pod status).
//!
//! The worker's world comes in through [`Shared`]: systemd, images, the API ([`PodApi`]), events
//! and a [`Clock`], each behind a narrow trait, so its scenarios run in unit tests against fakes
//! with tokio's paused clock (`pods/tests.rs`). The parts:
//! - `container.rs`: one container's state and the pure decision what to start next;
//! - `launch.rs`: images, unit files and starts;
//! - `data.rs`: ConfigMaps, Secrets, tokens, service links and volumes (issue 12);
//! - `terminate.rs`: graceful deletion (and the stop at `activeDeadlineSeconds`);
//! - `stop.rs`: stopping one container (preStop hook, stop signal, SIGKILL after the grace period);
//! - `probe.rs`: liveness, readiness and startup probes;
//! - `hooks.rs`: postStart hooks;
//! - `publish.rs`: the status as the API sees it, and the patch;
//! - `shared.rs`: what every worker shares ([`Shared`]).

mod confine;
mod container;
mod data;
mod deadline;
mod hooks;
mod launch;
mod probe;
mod publish;
mod resize;
mod shared;
mod stop;
mod terminate;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::container::{Ctr, ImageState};
pub use self::container::{Next, launches, next};
pub use self::hooks::HookDone;
pub use self::probe::ProbeDone;
pub use self::shared::Shared;
use super::backoff::CrashBackoff;

use crate::api::PodRef;
use crate::events::EventType;
use crate::images::{ImageError, ImageInfo};
use crate::policy::RestartPolicy;
use crate::systemd::{SystemdError, UnitDelta};
use crate::unit::{self, ContainerKind, UnitMeta};

/// Retry interval for containers that cannot be created yet (spec or image problems).
const CREATE_RETRY: Duration = Duration::from_secs(10);
/// Retry interval for failed API or systemd calls.
const CALL_RETRY: Duration = Duration::from_secs(2);

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
    /// A ConfigMap or Secret the pod refers to changed.
    Data,
    /// A probe run ended.
    Probe(Box<ProbeDone>),
    /// A lifecycle hook ended.
    Hook(Box<HookDone>),
}

/// The units of every container of `pod`, ephemeral ones included (a worker adds the units of
/// ephemeral containers when they are added to its pod).
pub fn unit_names_of(pod: &Pod) -> Vec<String> {
    let id = PodRef::of(pod);
    let Some(spec) = pod.spec.as_ref() else { return Vec::new() };
    // Names only: called for every pod event, it builds no container.
    let names = spec.init_containers.iter().flatten().chain(&spec.containers).map(|c| &c.name);
    let ephemeral = spec.ephemeral_containers.iter().flatten().map(|c| &c.name);
    names.chain(ephemeral).map(|n| unit::name::unit_name(&id.namespace, &id.name, n)).collect()
}

/// A unit of this pod found on the node when the worker started.
#[derive(Debug, Clone)]
pub struct Adopted {
    /// Unit name.
    pub unit: String,
    /// Its `[X-Kubernetes]` identity.
    pub meta: UnitMeta,
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
    pod: Pod,
    id: PodRef,
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
    /// A unit could not be read (systemd unreachable): nothing is decided on a guess until it
    /// is read, which is tried again at this time (or when a resync comes first).
    read_retry: Option<Instant>,
    /// The phase and container states last reported (for vks's own metrics).
    reported: (Option<String>, Vec<&'static str>),
    /// Why the pod was rejected at admission (reason, message): it never runs here.
    rejected: Option<(String, String)>,
    /// The pod's in-place resize as the status shows it (see `resize.rs`).
    resize: resize::ResizeState,
    /// The pod ran longer than its `activeDeadlineSeconds`: it stops and fails.
    deadline_exceeded: bool,
    /// A run is known from the Service interface's signal but not yet its InvocationID (the
    /// Unit interface's signal comes separately): publishing waits for it until this time, then
    /// reads the units once.
    id_wait: Option<(Instant, bool)>,
    /// ConfigMaps, Secrets, tokens and volumes (`data.rs`).
    data: data::DataState,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
}

fn system_time(t: &ContainerStateTerminated) -> Option<SystemTime> {
    t.finished_at
        .as_ref()
        .and_then(|f| SystemTime::UNIX_EPOCH.checked_add(Duration::from_micros(f.0.as_microsecond().max(0) as u64)))
}

impl Worker {
    /// A worker for `pod`, adopting the units already on the node. Returns the worker and the
    /// sender of its mailbox.
    pub fn new(shared: Arc<Shared>, pod: Pod, adopted: Vec<Adopted>) -> (Worker, mpsc::UnboundedSender<Msg>) {
        let id = PodRef::of(&pod);
        let (tx, rx) = mpsc::unbounded_channel();
        let spec = pod.spec.clone().unwrap_or_default();
        let api_status = pod.status.clone().unwrap_or_default();
        let pod_policy = RestartPolicy::of_pod(Some(&spec));
        let now = shared.clock.wall();
        let mut ctrs = Vec::new();
        for (c, kind) in unit::all_containers(&spec) {
            let list = match kind {
                ContainerKind::App => &api_status.container_statuses,
                ContainerKind::Init | ContainerKind::Sidecar => &api_status.init_container_statuses,
                ContainerKind::Ephemeral => &api_status.ephemeral_container_statuses,
            };
            let prev = list.iter().flatten().find(|s| s.name == c.name);
            let unit = unit::name::unit_name(&id.namespace, &id.name, &c.name);
            let adopted_meta = adopted.iter().find(|a| a.unit == unit).map(|a| &a.meta);
            let probes = crate::probes::ProbeSpec::of_container(&c);
            let mut ctr = Ctr::new(c, kind, pod_policy.for_container(kind), unit, prev, adopted_meta, now);
            ctr.probes = probes.into_iter().map(probe::ProbeState::new).collect();
            if ctr.written.is_some() {
                let _ = shared.claim(&ctr.unit, &id.uid);
            }
            if ctr.lost_run.is_some() {
                log::info!(
                    pod = id.to_string().as_str();
                    "container {} of pod {id} ran before but its unit is gone (node restarted): starting it again",
                    ctr.spec.name
                );
            }
            ctr.backoff =
                CrashBackoff::seeded(ctr.restart_count, ctr.last_state.as_ref().and_then(system_time).unwrap_or(now));
            ctrs.push(ctr);
        }
        let phase = api_status.phase.as_deref().unwrap_or("");
        let terminal = matches!(phase, "Succeeded" | "Failed");
        let start_time = api_status.start_time.as_ref().map_or_else(|| shared.clock.timestamp(), |t| t.0);
        let frozen = terminal && adopted.is_empty();
        let first_publish_hold =
            api_status.container_statuses.is_none().then(|| Instant::now() + publish::FIRST_STATUS_HOLD);
        let rejected = if terminal { None } else { shared.admit(&pod, adopted.is_empty()) };
        if rejected.is_none() && !terminal {
            for w in super::fields::warnings(&pod) {
                log::warn!(pod = id.to_string().as_str(); "pod {id}: {w}");
                shared.events.pod(&id, EventType::Warning, "FieldIgnored", w);
            }
        }
        let worker = Worker {
            shared,
            pod,
            id,
            ctrs,
            api_gone: false,
            deletion: None,
            terminal,
            frozen,
            start_time,
            last_status: None,
            status_retry: None,
            first_publish_hold,
            read_retry: None,
            rejected,
            resize: resize::ResizeState::default(),
            reported: (None, Vec::new()),
            deadline_exceeded: false,
            id_wait: None,
            data: data::DataState::default(),
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
        let key = self.id.to_string();
        log::debug!(pod = key.as_str(); "pod worker started for {key} ({})", self.id.uid);
        loop {
            if let Flow::Done = self.round().await {
                break;
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
        self.report_metrics(None, Vec::new());
        log::info!(pod = key.as_str(); "pod {key} removed from the node");
    }

    fn apply(&mut self, msg: Msg) {
        match msg {
            Msg::Pod(p) => {
                if p.metadata.uid.as_deref() == Some(self.id.uid.as_str()) {
                    let spec_changed = p.spec != self.pod.spec;
                    for w in super::fields::added_ephemeral_containers(&self.pod, &p) {
                        log::warn!(pod = self.id.to_string().as_str(); "pod {}: {w}", self.id);
                        self.event(EventType::Warning, "FieldIgnored", w);
                    }
                    if p.metadata.labels != self.pod.metadata.labels
                        || p.metadata.annotations != self.pod.metadata.annotations
                    {
                        self.data.dirty = true;
                    }
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
                    c.apply_signal(&delta);
                }
            }
            Msg::Resync => {
                for c in &mut self.ctrs {
                    c.stale = true;
                }
                self.data.dirty = true;
            }
            Msg::Image(i, r) => self.image_resolved(i, r),
            Msg::Data => self.data_changed(),
            Msg::Probe(d) => self.probe_done(*d),
            Msg::Hook(d) => self.hook_done(*d),
        }
    }

    /// Picks up changed container specs (only images may change in a pod).
    fn update_specs(&mut self) {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let policy = RestartPolicy::of_pod(Some(&spec));
        let now = self.shared.clock.wall();
        for (new, kind) in unit::all_containers(&spec) {
            if let Some(c) = self.ctrs.iter_mut().find(|c| c.spec.name == new.name) {
                if new.image != c.spec.image {
                    c.image = ImageState::Unresolved;
                }
                c.spec = new;
            } else if kind == ContainerKind::Ephemeral {
                // `kubectl debug` added it: it starts in the next round.
                let unit = unit::name::unit_name(&self.id.namespace, &self.id.name, &new.name);
                log::info!(pod = self.id.to_string().as_str(); "pod {}: ephemeral container {} added", self.id, new.name);
                self.ctrs.push(Ctr::new(new, kind, policy.for_container(kind), unit, None, None, now));
            }
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        // Until its units are read, a worker decides nothing: its other timers wait.
        if self.read_retry.is_some() {
            return self.read_retry;
        }
        let clock = &self.shared.clock;
        let mut wake: Vec<Instant> = Vec::new();
        for c in &self.ctrs {
            wake.extend(c.restart_at.map(|at| clock.instant_at(at)));
            wake.extend(c.blocked.as_ref().map(|b| b.retry));
            wake.extend(c.image.wake());
        }
        wake.extend(self.deletion.as_ref().map(|d| d.deadline));
        wake.extend(self.probe_wakes());
        wake.extend(self.ctrs.iter().filter_map(|c| c.stopping.as_ref().map(|s| s.wake())));
        wake.extend(self.active_deadline().filter(|_| !self.terminal).map(|at| clock.instant_at(at)));
        wake.extend(self.status_retry);
        wake.extend(self.first_publish_hold);
        wake.extend(self.id_wait.map(|(at, _)| at));
        wake.extend(self.data_wake());
        wake.into_iter().min()
    }

    fn event(&self, type_: EventType, reason: &str, note: String) {
        self.shared.events.pod(&self.id, type_, reason, note);
    }

    /// Reads the units whose known status is missing or stale; the others are kept current by
    /// systemd's signals. False when a unit could not be read.
    async fn refresh(&mut self) -> bool {
        let mut all_read = true;
        for i in 0..self.ctrs.len() {
            if self.ctrs[i].written.is_none() {
                self.ctrs[i].unit_status = None;
                continue;
            }
            if !self.ctrs[i].stale && self.ctrs[i].unit_status.is_some() {
                continue;
            }
            let unit = self.ctrs[i].unit.clone();
            match self.shared.systemd.status(&unit).await {
                Ok(s) => {
                    log::trace!(unit = unit.as_str(); "read {unit}: {s:?}");
                    self.ctrs[i].stale = false;
                    self.ctrs[i].read(s);
                }
                Err(SystemdError::NoSuchUnit(_)) => {
                    self.ctrs[i].stale = false;
                    self.ctrs[i].unit_status = None;
                    self.ctrs[i].written = None;
                }
                // Stays stale: read again next round (a reconnection resyncs every unit).
                Err(e) => {
                    log::warn!(unit = unit.as_str(); "reading unit {unit}: {e}");
                    all_read = false;
                }
            }
        }
        all_read
    }

    async fn round(&mut self) -> Flow {
        // A unit whose state is unknown is neither started, stopped nor removed on a guess (an
        // adopted unit read as "not started" would be started again; one read as "not running"
        // would lose its file while it runs on, out of every pod's reach).
        if !self.refresh().await {
            self.read_retry = Some(Instant::now() + CALL_RETRY);
            return Flow::Continue;
        }
        self.read_retry = None;
        self.handle_exits().await;
        self.sync_hooks();
        self.sync_probes();
        self.drive_stops().await;
        self.check_active_deadline();
        let deleting = self.api_gone || self.pod.metadata.deletion_timestamp.is_some();
        if deleting || self.deadline_exceeded {
            return self.terminate().await;
        }
        if let Some((reason, message)) = self.rejected.clone() {
            return self.publish_rejected(reason, message).await;
        }
        if !self.terminal {
            self.sync_data().await;
            self.start_containers().await;
            self.check_terminal();
        }
        if self.terminal {
            self.shared.leave(&self.id.uid);
            self.stop_sidecars().await;
        } else {
            self.resize().await;
        }
        self.publish().await
    }

    /// Reacts to containers whose process just exited: kills what is left in their cgroup and
    /// schedules a restart when the policy asks for one.
    async fn handle_exits(&mut self) {
        let now = self.shared.clock.wall();
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
            let _ =
                self.shared.systemd.kill(&unit, crate::systemd::KillWhom::All, crate::systemd::Signal::SIGKILL).await;
            // vks stopped it for a failed probe or hook: it runs again unless its policy is Never.
            let stopped = self.ctrs[i].stopping.take().filter(|s| s.run == run_key.0);
            if let Some(h) = stopped.as_ref().and_then(|s| s.pre_stop.as_ref()) {
                h.abort();
            }
            let forced = self.ctrs[i].resize_restart && !deleting;
            let c = &self.ctrs[i];
            let restart = forced
                || (!deleting
                    && !self.terminal
                    && match stopped.map(|s| s.why).filter(|w| w.restarts()) {
                        Some(_) => c.policy != RestartPolicy::Never,
                        None => c.policy.restarts_after(t.exit_code),
                    });
            if !deleting {
                self.check_oom(i, run_key).await;
            }
            let mut t = self.ctrs[i].exited().unwrap_or(t);
            let c = &self.ctrs[i];
            let file = super::termination::message_file(&self.shared.pod_dir, &self.id.uid, &c.spec.name);
            let run = super::termination::Run {
                unit: unit.clone(),
                pod_uid: self.id.uid.clone(),
                invocation: c.unit_status.as_ref().map(|s| s.invocation_id.clone()).unwrap_or_default(),
                started_us: c.unit_status.as_ref().map_or(0, |s| s.started_usec),
                until_us: None,
            };
            let message =
                super::termination::read_message(&file, &c.spec, t.exit_code, &run, self.shared.logs.as_ref()).await;
            let c = &mut self.ctrs[i];
            if let Some(m) = message {
                c.message = Some((run_key.0, m.clone()));
                t.message = Some(m);
            }
            c.handled_exit = Some(run_key);
            c.observed_exit = Some(t.clone());
            c.resize_restart = false;
            if restart {
                let finished = system_time(&t).unwrap_or(now);
                c.restart_at = Some(if forced { now } else { now + c.backoff.delay(finished, now) });
            }
            if t.exit_code != 0 {
                log::info!(
                    unit = unit.as_str();
                    "container {} of pod {} exited with {}{}",
                    c.spec.name,
                    self.id,
                    t.exit_code,
                    if restart { "; restarting with back-off" } else { "" }
                );
            }
        }
    }

    /// Decides whether the pod is done: every app container exited and none will restart, or a
    /// failed init container that will not be retried.
    fn check_terminal(&mut self) {
        let init_failed_for_good = self.ctrs.iter().any(|c| {
            c.kind == ContainerKind::Init && c.exited().is_some_and(|t| t.exit_code != 0) && !c.policy.restarts_after(1)
        });
        let apps: Vec<&Ctr> = self.ctrs.iter().filter(|c| c.kind == ContainerKind::App).collect();
        let apps_done =
            !apps.is_empty() && apps.iter().all(|c| c.exited().is_some_and(|t| !c.policy.restarts_after(t.exit_code)));
        if init_failed_for_good || apps_done {
            self.terminal = true;
            for c in &mut self.ctrs {
                c.restart_at = None;
            }
            log::info!(pod = self.id.to_string().as_str(); "pod {} finished", self.id);
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

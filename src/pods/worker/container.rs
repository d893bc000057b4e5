//! One container as its worker knows it, and the pure decisions about it: what its unit says
//! ([`Ctr::run`]), what should happen to it now ([`next`]), and which containers of a pod to start
//! in this round ([`launches`]: init containers one at a time, sidecars in order, then the apps).

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, ContainerStateTerminated, ContainerStatus};
use tokio::time::Instant;

use super::super::backoff::{self, CrashBackoff};
use super::super::status::{self, UnitRun};
use crate::images::{ImageError, ImageInfo};
use crate::policy::RestartPolicy;
use crate::reason::WaitingReason;
use crate::systemd::{UnitDelta, UnitStatus};
use crate::unit::{ContainerKind, UnitMeta};

/// How long after a failed pull the status says ErrImagePull before ImagePullBackOff (the
/// kubelet shows the error once, then the back-off on its next sync).
pub(super) const PULL_ERROR_SHOWN: Duration = Duration::from_secs(1);

/// Image pull back-off: the kubelet's (10 s doubling up to 5 minutes).
pub(super) fn pull_backoff(failures: u32) -> Duration {
    (backoff::INITIAL * 2u32.saturating_pow(failures.saturating_sub(1).min(16))).min(backoff::MAX)
}

/// Where a container's image stands.
#[derive(Debug, Clone)]
pub(super) enum ImageState {
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

impl ImageState {
    /// When the worker must look at this image again.
    pub(super) fn wake(&self) -> Vec<Instant> {
        match self {
            ImageState::Failed { error, failed, retry } => {
                let shown = *failed + PULL_ERROR_SHOWN;
                let mut w = vec![*retry];
                if error.reason == WaitingReason::ErrImagePull && shown > Instant::now() {
                    w.push(shown);
                }
                w
            }
            _ => Vec::new(),
        }
    }
}

/// Why a container cannot be created right now, and when to try again.
#[derive(Debug, Clone)]
pub(super) struct Blocked {
    pub reason: WaitingReason,
    pub message: String,
    pub retry: Instant,
}

#[derive(Debug)]
pub(super) struct Ctr {
    pub spec: Container,
    pub kind: ContainerKind,
    /// The restart policy that applies to this container.
    pub policy: RestartPolicy,
    pub unit: String,
    pub image: ImageState,
    /// Hash of the unit file on disk, `None` when there is none.
    pub written: Option<String>,
    /// Last known status: read from systemd, then kept current by its signals.
    pub unit_status: Option<UnitStatus>,
    /// The status must be read again (start-up, resync, or a signal without values).
    pub stale: bool,
    /// A start job was queued at this time and systemd has not reported the result yet.
    pub starting: Option<Instant>,
    pub restart_count: i32,
    pub last_state: Option<ContainerStateTerminated>,
    pub backoff: CrashBackoff,
    /// A restart is due at this time.
    pub restart_at: Option<SystemTime>,
    /// The run (start and exit time) whose exit was already handled.
    pub handled_exit: Option<(u64, u64)>,
    pub blocked: Option<Blocked>,
    /// `imageID` recorded in an adopted unit.
    pub adopted_image_id: Option<String>,
    /// Consecutive failed image pulls.
    pub image_failures: u32,
    /// The last exit seen of the current run (cleared when the container is started again).
    pub observed_exit: Option<Box<ContainerStateTerminated>>,
    /// The API says this container ran, but its unit is gone (the node rebooted): the next
    /// start counts as a restart, as the kubelet counts a container lost with its sandbox.
    pub lost_run: Option<ContainerStateTerminated>,
    /// The run (start and exit time) the kernel's OOM killer ended (seen on cgroup v1).
    pub oom_exit: Option<(u64, u64)>,
    /// The resource settings the running unit was started or resized with.
    pub applied: Option<crate::unit::resources::ContainerLimits>,
    /// The container was stopped for a resize: it starts again at once when it exits.
    pub resize_restart: bool,
    /// Its probes (`probe.rs`).
    pub probes: Vec<super::probe::ProbeState>,
    /// Its postStart hook (`hooks.rs`).
    pub post_start: super::hooks::PostStart,
    /// vks is stopping it (`stop.rs`).
    pub stopping: Option<super::stop::Stopping>,
    /// The termination message of a run: (its start time in µs, the message).
    pub message: Option<(u64, String)>,
    /// Why the last start failed after the process ran (a postStart hook): shown instead of
    /// CrashLoopBackOff until it starts again.
    pub start_error: Option<(WaitingReason, String)>,
}

impl Ctr {
    /// A container as the worker first sees it: `prev` is its status in the API (restart count,
    /// last termination), `adopted` the identity of its unit if one is on the node.
    pub(super) fn new(
        spec: Container,
        kind: ContainerKind,
        policy: RestartPolicy,
        unit: String,
        prev: Option<&ContainerStatus>,
        adopted: Option<&UnitMeta>,
        _now: SystemTime,
    ) -> Ctr {
        let restart_count = prev.map_or(0, |p| p.restart_count);
        let last_state = prev.and_then(|p| p.last_state.as_ref()).and_then(|s| s.terminated.clone());
        let written = adopted.map(|m| m.spec_hash.clone());
        let ran = prev.is_some_and(|p| {
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
        // An ephemeral container never runs twice: a lost run stays its last word.
        let (lost_run, observed_exit) = match (kind, lost_run) {
            (ContainerKind::Ephemeral, Some(lost)) => {
                (None, Some(prev.and_then(|p| p.state.as_ref()?.terminated.clone()).unwrap_or(lost)))
            }
            (_, lost) => (lost, None),
        };
        Ctr {
            spec,
            kind,
            policy,
            unit,
            image: ImageState::Unresolved,
            written,
            unit_status: None,
            stale: true,
            starting: None,
            restart_count,
            last_state,
            backoff: CrashBackoff::default(),
            restart_at: None,
            handled_exit: None,
            blocked: None,
            adopted_image_id: adopted.map(|m| m.image_id.clone()),
            image_failures: 0,
            observed_exit: observed_exit.map(Box::new),
            lost_run,
            oom_exit: None,
            applied: None,
            resize_restart: false,
            probes: Vec::new(),
            post_start: Default::default(),
            stopping: None,
            message: None,
            start_error: None,
        }
    }

    /// The container's run as systemd reports it; a run whose exit was seen stays exited even
    /// if its unit is stopped or unloaded afterwards (for example while the node shuts down).
    pub(super) fn run(&self) -> UnitRun {
        match self.unit_status.as_ref().map_or(UnitRun::NotStarted, status::unit_run) {
            UnitRun::NotStarted => self.observed_exit.clone().map_or(UnitRun::NotStarted, UnitRun::Exited),
            UnitRun::Exited(mut t) => {
                if self.oom_exit.is_some()
                    && self.oom_exit == self.unit_status.as_ref().map(|s| (s.started_usec, s.exited_usec))
                {
                    t.reason = Some("OOMKilled".into());
                }
                let run = self.unit_status.as_ref().map_or(0, |s| s.started_usec);
                if let Some((_, m)) = self.message.as_ref().filter(|(r, _)| *r == run) {
                    t.message = Some(m.clone());
                }
                UnitRun::Exited(t)
            }
            run => run,
        }
    }

    /// Whether its process exists: it runs, or systemd is still setting it up.
    pub(super) fn running(&self) -> bool {
        matches!(self.run(), UnitRun::Running(_) | UnitRun::Starting)
    }

    pub(super) fn exited(&self) -> Option<Box<ContainerStateTerminated>> {
        match self.run() {
            UnitRun::Exited(t) => Some(t),
            _ => None,
        }
    }

    pub(super) fn succeeded(&self) -> bool {
        self.exited().is_some_and(|t| t.exit_code == 0)
    }

    /// Applies the values of a `PropertiesChanged` signal.
    /// A start job was answered: the run began (or ended) `starting` ago.
    fn started(&mut self) {
        if let Some(t) = self.starting.take() {
            crate::metrics::metrics().unit_start_duration.observe(t.elapsed().as_secs_f64());
        }
    }

    pub(super) fn apply_signal(&mut self, delta: &UnitDelta) {
        match self.unit_status.as_mut() {
            // A signal about an earlier run (queued before a restart or a full read) must not
            // undo what is known about a later one.
            Some(s) if delta.started_usec.is_some_and(|t| t < s.started_usec) => {}
            Some(s) if !delta.incomplete => delta.apply(s),
            _ => self.stale = true,
        }
        // The Service interface says when a run began or ended (the Unit interface's
        // ActiveState may describe an earlier run while a restart is under way).
        if !matches!(self.run(), UnitRun::NotStarted) {
            self.started();
        }
    }

    /// Takes a status read from systemd.
    pub(super) fn read(&mut self, s: UnitStatus) {
        // A read that raced with a start vks just made may still show the earlier run: what is
        // known about the later one wins.
        let older = self.unit_status.as_ref().is_some_and(|known| s.started_usec < known.started_usec);
        if !older {
            self.unit_status = Some(s);
            if !matches!(self.run(), UnitRun::NotStarted) {
                self.started();
            }
        }
    }

    /// What should happen to this container now.
    pub(super) fn next(&self, now: SystemTime) -> Next {
        match next(&self.run(), self.policy, self.restart_at, now) {
            // A sidecar counts as started once its startup probe passed (the kubelet starts the
            // next container only then).
            Next::Running
                if self.post_start_pending() || (self.kind == ContainerKind::Sidecar && !self.startup_passed()) =>
            {
                Next::Starting
            }
            n => n,
        }
    }
}

/// What should happen to a container now, from what its unit says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Its process runs.
    Running,
    /// Its process exists but counts as not started yet: systemd is still setting it up, its
    /// postStart hook has not finished, or (for a sidecar) its startup probe has not passed.
    Starting,
    /// It exited with 0 and will not run again.
    Succeeded,
    /// It exited with an error and will not run again.
    Failed,
    /// It exited and restarts when its back-off expires.
    Waiting,
    /// Start it: it never ran, or its restart is due.
    Launch,
}

/// The decision of [`Ctr::next`], pure: `restart_at` is when a restart was scheduled after the
/// last exit (none: the exit was final under `policy`, or not handled yet).
pub fn next(run: &UnitRun, policy: RestartPolicy, restart_at: Option<SystemTime>, now: SystemTime) -> Next {
    match run {
        UnitRun::Running(_) => Next::Running,
        UnitRun::Starting => Next::Starting,
        UnitRun::NotStarted => Next::Launch,
        UnitRun::Exited(t) => match restart_at {
            Some(at) if at <= now => Next::Launch,
            Some(_) => Next::Waiting,
            None if policy.restarts_after(t.exit_code) => Next::Waiting,
            None if t.exit_code == 0 => Next::Succeeded,
            None => Next::Failed,
        },
    }
}

/// Which containers to start in this round, given each container's kind and [`Next`] in pod
/// order (init containers and sidecars first): an init container only when every one before it
/// succeeded and no earlier one is running or restarting; a sidecar when the ones before it are
/// running, one at a time (the next waits until it runs); app containers once every init
/// container succeeded and every sidecar runs, in order, an app whose postStart hook runs
/// (`Starting`) holding back the apps after it (the kubelet starts them one by one). Ephemeral
/// containers start as soon as they are added, also before initialization finished (as the
/// kubelet), and come first in the list.
pub fn launches(containers: &[(ContainerKind, Next)]) -> Vec<usize> {
    let mut out: Vec<usize> = containers
        .iter()
        .enumerate()
        .filter(|(_, (kind, next))| *kind == ContainerKind::Ephemeral && *next == Next::Launch)
        .map(|(i, _)| i)
        .collect();
    for (i, (kind, next)) in containers.iter().enumerate() {
        match (kind, next) {
            (ContainerKind::App | ContainerKind::Ephemeral, _) => continue,
            (ContainerKind::Init, Next::Succeeded) => continue,
            (ContainerKind::Init, Next::Launch) => {
                out.push(i);
                return out;
            }
            (ContainerKind::Init, _) => return out,
            (ContainerKind::Sidecar, Next::Launch) => {
                out.push(i);
                return out;
            }
            (ContainerKind::Sidecar, Next::Starting) => return out,
            (ContainerKind::Sidecar, _) => continue,
        }
    }
    for (i, (kind, next)) in containers.iter().enumerate().filter(|(_, (kind, _))| *kind == ContainerKind::App) {
        match (kind, next) {
            (_, Next::Starting) => break,
            (_, Next::Launch) => out.push(i),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContainerKind::{App, Ephemeral, Init, Sidecar};

    fn exited(code: i32) -> UnitRun {
        UnitRun::Exited(Box::new(ContainerStateTerminated { exit_code: code, ..Default::default() }))
    }

    #[test]
    fn next_follows_the_restart_policy_and_the_back_off() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let later = t + Duration::from_secs(10);
        use RestartPolicy::*;
        assert_eq!(next(&UnitRun::NotStarted, Never, None, t), Next::Launch);
        assert_eq!(next(&UnitRun::Running(None), Never, None, t), Next::Running);
        assert_eq!(next(&UnitRun::Starting, Never, None, t), Next::Starting);
        assert_eq!(next(&exited(0), Never, None, t), Next::Succeeded);
        assert_eq!(next(&exited(1), Never, None, t), Next::Failed);
        assert_eq!(next(&exited(0), OnFailure, None, t), Next::Succeeded);
        assert_eq!(next(&exited(1), OnFailure, Some(later), t), Next::Waiting);
        assert_eq!(next(&exited(1), OnFailure, Some(later), later), Next::Launch);
        assert_eq!(next(&exited(0), Always, Some(t), t), Next::Launch);
        // An exit not yet handled (no restart scheduled) waits under a restarting policy.
        assert_eq!(next(&exited(0), Always, None, t), Next::Waiting);
    }

    #[test]
    fn init_containers_one_at_a_time_then_sidecars_in_order_then_apps() {
        use Next::*;
        assert_eq!(launches(&[(Init, Launch), (Init, Launch), (App, Launch)]), [0]);
        assert_eq!(launches(&[(Init, Succeeded), (Init, Launch), (App, Launch)]), [1]);
        assert_eq!(launches(&[(Init, Running), (Init, Launch), (App, Launch)]), Vec::<usize>::new());
        assert_eq!(launches(&[(Init, Waiting), (App, Launch)]), Vec::<usize>::new());
        assert_eq!(launches(&[(Init, Failed), (App, Launch)]), Vec::<usize>::new());
        assert_eq!(launches(&[(Sidecar, Launch), (Sidecar, Launch), (App, Launch)]), [0]);
        assert_eq!(launches(&[(Sidecar, Running), (Sidecar, Launch), (App, Launch)]), [1]);
        assert_eq!(launches(&[(Sidecar, Running), (Init, Launch), (App, Launch)]), [1]);
        assert_eq!(launches(&[(Sidecar, Running), (Init, Succeeded), (App, Launch), (App, Running)]), [2]);
        // A sidecar waiting for its restart does not hold the apps back.
        assert_eq!(launches(&[(Sidecar, Waiting), (App, Launch)]), [1]);
        assert_eq!(launches(&[(App, Launch), (App, Waiting), (App, Launch)]), [0, 2]);
        // A postStart hook holds back what comes after its container.
        assert_eq!(launches(&[(Sidecar, Starting), (Sidecar, Launch), (App, Launch)]), Vec::<usize>::new());
        assert_eq!(launches(&[(App, Running), (App, Starting), (App, Launch)]), Vec::<usize>::new());
        assert_eq!(launches(&[(App, Launch), (App, Starting), (App, Launch)]), [0]);
        // Ephemeral containers start whenever they are added, and never again.
        assert_eq!(launches(&[(Init, Running), (App, Launch), (Ephemeral, Launch)]), [2]);
        assert_eq!(launches(&[(App, Running), (Ephemeral, Succeeded), (Ephemeral, Launch)]), [2]);
        assert_eq!(launches(&[(App, Launch), (Ephemeral, Launch)]), [1, 0]);
    }
}

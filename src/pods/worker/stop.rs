//! Stopping one container the kubelet's way (`killContainer` in pkg/kubelet/kuberuntime): its
//! preStop hook first (bounded by the grace period), then its stop signal (`lifecycle.stopSignal`,
//! SIGTERM by default) to its main process, then SIGKILL to everything in its unit at the end of
//! the grace period, but never sooner than 2 s after the stop signal. Used when a liveness or
//! startup probe or a postStart hook fails, and for every container when the pod stops (graceful
//! deletion, activeDeadlineSeconds).

use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::super::status::UnitRun;
use super::Worker;
use super::container::Ctr;
use crate::events::EventType;
use crate::systemd::{KillWhom, Signal};

/// The shortest time between the stop signal and SIGKILL (the kubelet's
/// `minimumGracePeriodInSeconds`).
const MIN_AFTER_SIGNAL: Duration = Duration::from_secs(2);
/// How often SIGKILL is repeated until the container is gone.
const KILL_REPEAT: Duration = Duration::from_millis(500);

/// Why vks stops a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopWhy {
    /// Its liveness probe failed.
    Liveness,
    /// Its startup probe failed.
    Startup,
    /// Its postStart hook failed.
    PostStart,
    /// The pod stops (deletion, active deadline).
    Pod,
}

impl StopWhy {
    /// Whether the container runs again after this stop (policy permitting, whatever its exit
    /// code), as the kubelet restarts a container it killed for a failed probe or hook.
    pub(super) fn restarts(self) -> bool {
        self != StopWhy::Pod
    }
}

/// A stop under way.
#[derive(Debug)]
pub(super) struct Stopping {
    pub why: StopWhy,
    /// The run being stopped (its start time, µs).
    pub run: u64,
    /// The end of the grace period.
    pub grace_end: Instant,
    /// The preStop hook, while it runs.
    pub pre_stop: Option<AbortHandle>,
    /// When the stop signal was sent.
    pub signalled: Option<Instant>,
    /// When SIGKILL was last sent.
    pub killed: Option<Instant>,
}

impl Stopping {
    /// When SIGKILL is due, once the stop signal was sent.
    pub(super) fn kill_at(&self) -> Option<Instant> {
        self.signalled.map(|s| self.grace_end.max(s + MIN_AFTER_SIGNAL))
    }

    /// When the worker must act on this stop next.
    pub(super) fn wake(&self) -> Instant {
        match (self.pre_stop.is_some(), self.kill_at()) {
            (true, _) => self.grace_end,
            (false, None) => Instant::now(),
            (false, Some(at)) => self.killed.map_or(at, |k| at.max(k + KILL_REPEAT)),
        }
    }
}

impl Ctr {
    /// The start time (µs) of the run whose process exists now (it may still be set up).
    pub(super) fn running_run(&self) -> Option<u64> {
        self.running().then(|| self.unit_status.as_ref().map_or(0, |s| s.started_usec))
    }

    /// The start time (µs) of the run whose program runs now: what hooks and probes act on.
    pub(super) fn program_run(&self) -> Option<u64> {
        matches!(self.run(), UnitRun::Running(_)).then(|| self.unit_status.as_ref().map_or(0, |s| s.started_usec))
    }

    /// The signal that stops this container (`lifecycle.stopSignal`, validated when its unit was
    /// planned; SIGTERM otherwise).
    pub(super) fn stop_signal(&self) -> Signal {
        self.spec
            .lifecycle
            .as_ref()
            .and_then(|l| l.stop_signal.as_deref())
            .and_then(|s| s.parse().ok())
            .unwrap_or(Signal::SIGTERM)
    }
}

impl Worker {
    /// The pod's grace period (`terminationGracePeriodSeconds`, 30 s by default).
    pub(super) fn pod_grace(&self) -> Duration {
        let secs = self.pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
        Duration::from_secs(secs.max(0) as u64)
    }

    /// Begins stopping container `i` if it runs: its preStop hook, or its stop signal at once (by
    /// [`Worker::drive_stops`]); the grace period ends at `grace_end`. A stop already under way
    /// keeps going, with the earlier of the two ends.
    pub(super) fn begin_stop(&mut self, i: usize, why: StopWhy, grace_end: Instant) {
        let Some(run) = self.ctrs[i].running_run() else { return };
        if let Some(s) = self.ctrs[i].stopping.as_mut().filter(|s| s.run == run) {
            s.grace_end = s.grace_end.min(grace_end);
            return;
        }
        self.abort_post_start(i);
        let pre_stop = self.ctrs[i]
            .spec
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.clone())
            .filter(|_| grace_end > Instant::now())
            .map(|h| self.spawn_hook(i, run, super::hooks::Hook::PreStop, &h));
        self.ctrs[i].stopping = Some(Stopping { why, run, grace_end, pre_stop, signalled: None, killed: None });
    }

    /// The preStop hook of container `i` ended.
    pub(super) fn pre_stop_done(&mut self, i: usize, run: u64, result: Result<(), String>) {
        let Some(s) = self.ctrs[i].stopping.as_mut().filter(|s| s.run == run) else { return };
        s.pre_stop = None;
        if let Err(m) = result {
            log::warn!(pod = self.id.to_string().as_str(); "pod {}: {m}", self.id);
            self.event(EventType::Warning, "FailedPreStopHook", m);
        }
    }

    /// Sends the stop signals and SIGKILLs that are due.
    pub(super) async fn drive_stops(&mut self) {
        let now = Instant::now();
        // Last container first, as the kubelet's deletion order.
        for i in (0..self.ctrs.len()).rev() {
            let run = self.ctrs[i].running_run();
            let signal = self.ctrs[i].stop_signal();
            let unit = self.ctrs[i].unit.clone();
            let Some(s) = self.ctrs[i].stopping.as_mut() else { continue };
            if run != Some(s.run) {
                continue;
            }
            if let Some(h) = &s.pre_stop {
                if now < s.grace_end {
                    continue;
                }
                h.abort();
                s.pre_stop = None;
                log::info!(unit = unit.as_str(); "the preStop hook of {unit} did not finish within the grace period");
            }
            if s.signalled.is_none() {
                s.signalled = Some(now);
                if let Err(e) = self.shared.systemd.kill(&unit, KillWhom::Main, signal).await {
                    log::debug!(unit = unit.as_str(); "{signal} to {unit}: {e}");
                }
                continue;
            }
            let Some(s) = self.ctrs[i].stopping.as_mut() else { continue };
            if s.kill_at().is_some_and(|at| now >= at) && s.killed.is_none_or(|k| now >= k + KILL_REPEAT) {
                if s.killed.is_none() {
                    log::info!(unit = unit.as_str(); "grace period of {unit} over: killing it");
                }
                s.killed = Some(now);
                if let Err(e) = self.shared.systemd.kill(&unit, KillWhom::All, Signal::SIGKILL).await {
                    log::debug!(unit = unit.as_str(); "SIGKILL to {unit}: {e}");
                }
            }
        }
    }

    /// Whether container `i` may be killed now by the pod's deadline: not while its own stop
    /// still owes it time (a preStop hook that ran late gets 2 s after its stop signal).
    pub(super) fn killable(&self, i: usize, now: Instant) -> bool {
        match &self.ctrs[i].stopping {
            Some(s) if Some(s.run) == self.ctrs[i].running_run() => s.kill_at().is_some_and(|at| at <= now),
            _ => true,
        }
    }
}

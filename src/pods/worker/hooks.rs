//! Lifecycle hooks. postStart runs once the container's process runs, in its own task; until it
//! finishes the container is not Running (its status says ContainerCreating, its probes wait, and
//! the containers after it in the kubelet's start order wait too). A failed postStart kills the
//! container (the kubelet's `FailedPostStartHook` events), which then restarts under its policy.
//! preStop is run by `stop.rs` before the stop signal.
//!
//! Hooks run only for runs this worker started: a vks that restarts adopts running containers
//! without running their postStart again.

use k8s_openapi::api::core::v1::LifecycleHandler;
use tokio::task::AbortHandle;

use super::container::Ctr;
use super::stop::StopWhy;
use super::{Msg, Worker};
use crate::events::EventType;
use crate::probes::{Target, spec};
use crate::reason::WaitingReason;

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// After the process started.
    PostStart,
    /// Before the stop signal.
    PreStop,
}

/// A hook that ended.
#[derive(Debug)]
pub struct HookDone {
    /// The container's index.
    pub index: usize,
    /// The run it was for (start time, µs).
    pub run: u64,
    /// Which hook.
    pub hook: Hook,
    /// How it went (the kubelet's message when it failed).
    pub result: Result<(), String>,
}

/// A container's postStart bookkeeping.
#[derive(Debug, Default)]
pub(super) struct PostStart {
    /// This worker started the container: its next run gets the hook.
    pub expected: bool,
    /// The run whose hook finished (or that needs none).
    pub done_for: Option<u64>,
    /// The hook running now, and for which run.
    pub running: Option<(u64, AbortHandle)>,
}

impl Ctr {
    fn post_start_hook(&self) -> Option<&LifecycleHandler> {
        self.spec.lifecycle.as_ref().and_then(|l| l.post_start.as_ref())
    }

    /// Whether the container runs but its postStart hook has not finished.
    pub(super) fn post_start_pending(&self) -> bool {
        self.post_start_hook().is_some() && self.program_run().is_some_and(|r| self.post_start.done_for != Some(r))
    }

    /// Whether later containers must wait for this one: it has a postStart hook and was started
    /// (its start job is queued or its hook runs).
    pub(super) fn holds_later_starts(&self) -> bool {
        self.post_start_hook().is_some() && (self.starting.is_some() || self.post_start_pending())
    }
}

impl Worker {
    /// The target of container `i`'s probes and hooks.
    pub(super) fn target(&self, i: usize) -> Target {
        Target {
            unit: self.ctrs[i].unit.clone(),
            container: self.ctrs[i].spec.name.clone(),
            pod: format!("{}_{}({})", self.id.name, self.id.namespace, self.id.uid),
        }
    }

    /// Runs handler `h` of container `i` for run `run` in a task that reports with
    /// [`Msg::Hook`].
    pub(super) fn spawn_hook(&self, i: usize, run: u64, hook: Hook, h: &LifecycleHandler) -> AbortHandle {
        let action = spec::handler_action(h, &self.ctrs[i].spec, &self.shared.node.node_ip);
        let (prober, tx, target) = (self.shared.prober.clone(), self.tx.clone(), self.target(i));
        log::debug!(unit = target.unit.as_str(); "running the {hook:?} hook of {}", target.unit);
        tokio::spawn(async move {
            let result = match action {
                Ok(a) => prober.handle(&target, &a).await,
                Err(e) => {
                    Err(format!("lifecycle hook for Container {:?} in Pod {:?}: {e}", target.container, target.pod))
                }
            };
            let _ = tx.send(Msg::Hook(Box::new(HookDone { index: i, run, hook, result })));
        })
        .abort_handle()
    }

    /// Starts the postStart hooks of runs that have just begun; forgets hooks of runs that ended.
    pub(super) fn sync_hooks(&mut self) {
        for i in 0..self.ctrs.len() {
            let Some(h) = self.ctrs[i].post_start_hook().cloned() else { continue };
            let run = self.ctrs[i].program_run();
            let ps = &mut self.ctrs[i].post_start;
            if let Some((r, task)) = &ps.running
                && Some(*r) != run
            {
                task.abort();
                ps.running = None;
            }
            let Some(run) = run else { continue };
            if ps.done_for == Some(run) || ps.running.is_some() || self.ctrs[i].stopping.is_some() {
                continue;
            }
            if !std::mem::take(&mut self.ctrs[i].post_start.expected) {
                // A run this worker did not start (adopted): it had its hook.
                self.ctrs[i].post_start.done_for = Some(run);
                continue;
            }
            let task = self.spawn_hook(i, run, Hook::PostStart, &h);
            self.ctrs[i].post_start.running = Some((run, task));
        }
    }

    /// Gives up on container `i`'s running postStart hook (the container is being stopped).
    pub(super) fn abort_post_start(&mut self, i: usize) {
        if let Some((_, task)) = self.ctrs[i].post_start.running.take() {
            task.abort();
        }
    }

    /// A hook ended.
    pub(super) fn hook_done(&mut self, d: HookDone) {
        let i = d.index;
        if i >= self.ctrs.len() {
            return;
        }
        match d.hook {
            Hook::PreStop => self.pre_stop_done(i, d.run, d.result),
            Hook::PostStart => {
                let ps = &mut self.ctrs[i].post_start;
                if ps.running.as_ref().is_none_or(|(r, _)| *r != d.run) {
                    return;
                }
                ps.running = None;
                match d.result {
                    Ok(()) => ps.done_for = Some(d.run),
                    Err(m) => {
                        let name = self.ctrs[i].spec.name.clone();
                        log::warn!(pod = self.id.to_string().as_str(); "pod {}: {m}", self.id);
                        // As the kubelet: the handler's output stays out of the event (it may hold
                        // secrets); the container's waiting state shows it.
                        self.event(EventType::Warning, "FailedPostStartHook", "PostStartHook failed".into());
                        self.ctrs[i].start_error = Some((WaitingReason::PostStartHookError, m));
                        self.event(EventType::Normal, "Killing", "FailedPostStartHook".into());
                        log::info!(pod = self.id.to_string().as_str(); "killing container {name} of pod {}: its postStart hook failed", self.id);
                        let grace = tokio::time::Instant::now() + self.pod_grace();
                        self.begin_stop(i, StopWhy::PostStart, grace);
                    }
                }
            }
        }
    }
}

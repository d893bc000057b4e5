//! Graceful deletion, as the kubelet does it: the stop signal (after the preStop hook, see
//! `stop.rs`) to the app (init, ephemeral) containers, then to the sidecars once the apps are gone,
//! SIGKILL to whatever still runs at the end of the grace period; then the units and the pod
//! directory are removed and the pod object deleted. A pod past its `activeDeadlineSeconds`
//! stops the same way but stays (Failed, its units kept) until it is deleted.

use std::time::Duration;

use tokio::time::Instant;

use super::super::api::PodApiError;
use super::stop::StopWhy;
use super::{CALL_RETRY, Deletion, Flow, Stage, Worker};
use crate::events::EventType;
use crate::systemd::{KillWhom, Signal, SystemdError};
use crate::unit::ContainerKind;

/// How long a force-deleted pod's containers get after SIGTERM (the kubelet's minimum).
const FORCE_DELETE_GRACE: Duration = Duration::from_secs(2);
/// How often SIGKILL is repeated after the grace period until everything is gone.
const KILL_REPEAT: Duration = Duration::from_millis(500);

impl Worker {
    /// The grace period: the deletion's, else the pod's, else 30 s; short when the pod is gone.
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

    /// Stops the running containers of `kinds`, last container first: SIGTERM stands for the
    /// graceful stop (preStop hook, then the container's stop signal, once per container, see
    /// `stop.rs`); SIGKILL goes to every process of the unit, except while a container's own stop
    /// still owes it time.
    async fn signal(&mut self, kinds: &[ContainerKind], signal: Signal) {
        let now = Instant::now();
        for i in (0..self.ctrs.len()).rev() {
            let c = &self.ctrs[i];
            if !kinds.contains(&c.kind) || !c.running() {
                continue;
            }
            let unit = c.unit.clone();
            if signal == Signal::SIGTERM {
                let Some(d) = self.deletion.as_mut() else { return };
                if d.sent_sigterm.contains(&unit) {
                    continue;
                }
                d.sent_sigterm.push(unit.clone());
                let deadline = d.deadline;
                let note = format!("Stopping container {}", c.spec.name);
                self.event(EventType::Normal, "Killing", note);
                self.begin_stop(i, StopWhy::Pod, deadline);
                continue;
            }
            if !self.killable(i, now) {
                continue;
            }
            if let Err(e) = self.shared.systemd.kill(&unit, KillWhom::All, signal).await {
                log::debug!(unit = unit.as_str(); "{signal} to {unit}: {e}");
            }
        }
        if signal == Signal::SIGTERM {
            self.drive_stops().await;
        }
    }

    /// One round of a graceful deletion.
    pub(super) async fn terminate(&mut self) -> Flow {
        let now = Instant::now();
        let grace = self.grace();
        match &mut self.deletion {
            None => {
                log::info!(pod = self.id.to_string().as_str(); "stopping pod {} (grace {}s)", self.id, grace.as_secs());
                self.deletion = Some(Deletion {
                    deadline: now + grace,
                    stage: Stage::Apps,
                    sent_sigterm: Vec::new(),
                    sent_sigkill: false,
                });
            }
            // A shorter grace period (a second delete, or a force delete) moves the deadline in.
            Some(d) => {
                d.deadline = d.deadline.min(now + grace);
                let deadline = d.deadline;
                for s in self.ctrs.iter_mut().filter_map(|c| c.stopping.as_mut()) {
                    s.grace_end = s.grace_end.min(deadline);
                }
            }
        }
        for c in &mut self.ctrs {
            c.restart_at = None;
        }
        if self.deletion.as_ref().is_some_and(|d| now >= d.deadline) {
            let all = [ContainerKind::App, ContainerKind::Init, ContainerKind::Ephemeral, ContainerKind::Sidecar];
            self.signal(&all, Signal::SIGKILL).await;
            if let Some(d) = self.deletion.as_mut() {
                if !d.sent_sigkill {
                    log::info!(pod = self.id.to_string().as_str(); "grace period of pod {} over: killing what still runs", self.id);
                }
                d.sent_sigkill = true;
                d.deadline = now + KILL_REPEAT;
            }
        }
        if self.ctrs.iter().any(|c| c.kind != ContainerKind::Sidecar && c.running()) {
            self.signal(&[ContainerKind::App, ContainerKind::Init, ContainerKind::Ephemeral], Signal::SIGTERM).await;
            self.publish().await;
            return Flow::Continue;
        }
        if let Some(d) = self.deletion.as_mut() {
            d.stage = Stage::Sidecars;
        }
        if self.ctrs.iter().any(|c| c.running()) {
            self.signal(&[ContainerKind::Sidecar], Signal::SIGTERM).await;
            self.publish().await;
            return Flow::Continue;
        }
        if !self.api_gone && self.pod.metadata.deletion_timestamp.is_none() {
            // Stopped at its active deadline: the pod stays, Failed, until it is deleted.
            return self.publish().await;
        }
        if !self.remove_units().await {
            return Flow::Continue;
        }
        if !self.api_gone {
            // Final status, then the deletion for good (see PodApi::delete).
            self.terminal = true;
            if let Flow::Done = self.publish().await {
                return self.finish();
            }
            match self.shared.api.delete(&self.id).await {
                Ok(()) => self.shared.health.ok(),
                Err(PodApiError::Gone(_)) => {}
                Err(e) => {
                    self.shared.health.report(&format!("deleting pod {}", self.id), &e.into());
                    self.status_retry = Some(Instant::now() + CALL_RETRY);
                    return Flow::Continue;
                }
            }
        }
        self.finish()
    }

    /// Everything stopped: removes the units and the pod directory. False when a unit could not
    /// be stopped or its file removed (tried again next round): a unit file is removed only once
    /// its unit is stopped, or the unit would run on with nothing left to find it by.
    async fn remove_units(&mut self) -> bool {
        for c in &self.ctrs {
            if c.written.is_none() && c.unit_status.is_none() {
                continue;
            }
            let sd = &self.shared.systemd;
            if let Err(e) = sd.stop(&c.unit).await
                && !matches!(e, SystemdError::NoSuchUnit(_))
            {
                log::warn!(unit = c.unit.as_str(); "stopping unit {}: {e}", c.unit);
                return false;
            }
            if let Err(e) = sd.remove_unit_file(&c.unit).await {
                log::warn!(unit = c.unit.as_str(); "{e}");
                return false;
            }
            let _ = sd.reset_failed(&c.unit).await;
        }
        if !self.remove_slices().await {
            return false;
        }
        self.release_data().await;
        for c in &mut self.ctrs {
            c.written = None;
        }
        true
    }

    pub(super) fn finish(&mut self) -> Flow {
        self.shared.leave(&self.id.uid);
        self.shared.objects.release(&self.id.uid);
        for c in &self.ctrs {
            self.shared.release(&c.unit, &self.id.uid);
        }
        Flow::Done
    }

    /// Stops the sidecars and ephemeral containers of a pod whose app containers are done, last
    /// first.
    pub(super) async fn stop_sidecars(&mut self) {
        for i in (0..self.ctrs.len()).rev() {
            let c = &self.ctrs[i];
            if matches!(c.kind, ContainerKind::Sidecar | ContainerKind::Ephemeral) && c.running() {
                let unit = c.unit.clone();
                if let Err(e) = self.shared.systemd.stop(&unit).await {
                    log::warn!(unit = unit.as_str(); "stopping {} unit {unit}: {e}", c.kind);
                }
            }
        }
    }
}

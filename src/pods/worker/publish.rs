//! What the API sees: each container's state from its unit, image and blocks ([`Worker::views`],
//! pure apart from the clock), and the status patch, sent only when it changed.

use std::time::Duration;

use tokio::time::Instant;

use super::super::api::PodApiError;
use super::super::status::{self, CState, ContainerView, PodFacts, UnitRun};
use super::container::{ImageState, PULL_ERROR_SHOWN};
use super::{CALL_RETRY, Flow, Worker};
use crate::reason::WaitingReason;
use crate::systemd::ExitKind;
use crate::unit::ContainerKind;

/// How long a status waits for a run's InvocationID before the unit is read.
const ID_WAIT: Duration = Duration::from_millis(500);
/// How long a new pod's first status waits for its containers to start.
pub(super) const FIRST_STATUS_HOLD: Duration = Duration::from_secs(1);

impl Worker {
    /// Every container's status as the API should show it now.
    pub(super) fn views(&self) -> Vec<ContainerView> {
        let now = self.shared.clock.wall();
        let pending_init = self.ctrs.iter().any(|c| match c.kind {
            ContainerKind::Init => !c.succeeded(),
            ContainerKind::Sidecar => !c.running() && c.exited().is_none(),
            ContainerKind::App | ContainerKind::Ephemeral => false,
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
                    // Not Running until its postStart hook finished (as the kubelet reports it).
                    (UnitRun::Running(_), _, _, _) if c.post_start_pending() => {
                        CState::waiting(WaitingReason::ContainerCreating, None)
                    }
                    (UnitRun::Running(started), _, _, _) => CState::Running { started_at: *started },
                    // systemd is still setting the process up (or a notify daemon is not ready).
                    (UnitRun::Starting, _, _, _) => CState::waiting(WaitingReason::ContainerCreating, None),
                    (UnitRun::Exited(t), _, _, Some(_)) if self.deletion.is_none() && c.start_error.is_some() => {
                        last_state = Some((**t).clone());
                        let (reason, message) =
                            c.start_error.clone().unwrap_or((WaitingReason::CrashLoopBackOff, String::new()));
                        CState::waiting(reason, message)
                    }
                    (UnitRun::Exited(t), _, _, Some(at)) if self.deletion.is_none() => {
                        let wait = at.duration_since(now).unwrap_or_default();
                        last_state = Some((**t).clone());
                        CState::waiting(
                            WaitingReason::CrashLoopBackOff,
                            format!(
                                "back-off {}s restarting failed container={} pod={}_{}({})",
                                c.backoff.current().as_secs().max(wait.as_secs()),
                                c.spec.name,
                                self.id.name,
                                self.id.namespace,
                                self.id.uid
                            ),
                        )
                    }
                    (UnitRun::Exited(t), _, _, _) => CState::Terminated(t.clone()),
                    (UnitRun::NotStarted, Some(b), _, _) => CState::waiting(b.reason, b.message.clone()),
                    (UnitRun::NotStarted, None, ImageState::Failed { error, failed, .. }, _) => {
                        if error.reason == WaitingReason::ErrImagePull && failed.elapsed() >= PULL_ERROR_SHOWN {
                            CState::waiting(
                                WaitingReason::ImagePullBackOff,
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
                        CState::waiting(WaitingReason::PodInitializing, None)
                    }
                    (UnitRun::NotStarted, None, _, _) => CState::waiting(WaitingReason::ContainerCreating, None),
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
                    startup_passed: c.startup_passed(),
                    readiness_passes: c.readiness_passes(),
                }
            })
            .collect()
    }

    /// Whether publishing waits for the InvocationID of a run systemd reported without it.
    fn waiting_for_ids(&mut self) -> bool {
        let now = Instant::now();
        let missing: Vec<usize> = (0..self.ctrs.len())
            .filter(|&i| {
                self.ctrs[i]
                    .unit_status
                    .as_ref()
                    .is_some_and(|s| s.invocation_id.is_empty() && (s.main_pid != 0 || s.exit_kind != ExitKind::None))
            })
            .collect();
        if missing.is_empty() {
            self.id_wait = None;
            return false;
        }
        match self.id_wait {
            None => {
                self.id_wait = Some((now + ID_WAIT, false));
                true
            }
            Some((at, _)) if now < at => true,
            Some((_, false)) => {
                for i in missing {
                    self.ctrs[i].stale = true;
                }
                self.id_wait = Some((now, true));
                true
            }
            Some((_, true)) => {
                self.id_wait = None;
                false
            }
        }
    }

    /// Patches the pod status when it changed. Returns `Done` when the pod object turned out
    /// to be gone or replaced.
    pub(super) async fn publish(&mut self) -> Flow {
        if self.frozen || self.api_gone {
            return Flow::Continue;
        }
        if self.status_retry.is_some_and(|t| t > Instant::now()) {
            return Flow::Continue;
        }
        self.status_retry = None;
        // A container id is never published missing for a run that has one.
        if self.waiting_for_ids() {
            return Flow::Continue;
        }
        let views = self.views();
        if let Some(hold) = self.first_publish_hold {
            let settled = views.iter().all(|v| {
                !matches!(v.state, CState::Waiting { reason, .. }
                    if reason == WaitingReason::ContainerCreating || reason == WaitingReason::PodInitializing)
            });
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
            now: self.shared.clock.timestamp(),
            failed: self.deadline_exceeded.then_some((super::deadline::REASON, super::deadline::MESSAGE)),
        };
        let mut status = status::pod_status(&facts, &views);
        let ended = self.resize_status(&mut status);
        status.observed_generation = self.pod.metadata.generation;
        let body = patch_body(&status, &ended);
        if self.last_status.as_ref() == Some(&body) {
            return Flow::Continue;
        }
        let sent = Instant::now();
        match self.shared.api.patch_status(&self.id, &body).await {
            Ok(new) => {
                self.shared.health.ok();
                crate::metrics::metrics().status_patch_duration.observe(sent.elapsed().as_secs_f64());
                let states = views.iter().map(|v| v.state.kind()).collect();
                self.report_metrics(status.phase.clone(), states);
                log::debug!(
                    pod = self.id.to_string().as_str();
                    "status of pod {} patched in {}ms: {} {:?}",
                    self.id,
                    sent.elapsed().as_millis(),
                    status.phase.as_deref().unwrap_or(""),
                    views.iter().map(|v| v.state.summary()).collect::<Vec<_>>()
                );
                self.last_status = Some(body);
                // Keep the API's view (conditions' transition times) for the next computation.
                self.pod.status = new;
                Flow::Continue
            }
            Err(PodApiError::Gone(_)) => {
                // Deleted, or replaced by a pod with another UID: this pod is gone.
                self.api_gone = true;
                Flow::Continue
            }
            Err(e) => {
                self.shared.health.report(&format!("patching the status of pod {}", self.id), &e.into());
                self.status_retry = Some(Instant::now() + CALL_RETRY);
                Flow::Continue
            }
        }
    }
}

impl Worker {
    /// Moves this pod's contribution to vks's pod and unit gauges to what was just reported.
    pub(super) fn report_metrics(&mut self, phase: Option<String>, states: Vec<&'static str>) {
        let m = crate::metrics::metrics();
        m.pod_phase(self.reported.0.as_deref(), phase.as_deref());
        for (i, old) in self.reported.1.iter().enumerate() {
            m.unit_state(Some(old), states.get(i).copied());
        }
        for new in states.iter().skip(self.reported.1.len()) {
            m.unit_state(None, Some(new));
        }
        self.reported = (phase, states);
    }

    /// The status of a pod rejected at admission: Failed, with the kubelet's reason; no
    /// container ever ran.
    pub(super) async fn publish_rejected(&mut self, reason: String, message: String) -> Flow {
        // No container status is coming to wait for (a hold left set would wake the worker
        // at once, forever).
        self.first_publish_hold = None;
        if self.last_status.is_some() || self.status_retry.is_some_and(|t| t > Instant::now()) {
            return Flow::Continue;
        }
        let status = k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Failed".into()),
            reason: Some(reason.clone()),
            message: Some(message.clone()),
            ..Default::default()
        };
        let body = serde_json::to_value(&status).unwrap_or_default();
        match self.shared.api.patch_status(&self.id, &body).await {
            Ok(_) => {
                log::warn!(pod = self.id.to_string().as_str(); "pod {} rejected: {message}", self.id);
                self.event(crate::events::EventType::Warning, &reason, message);
                self.last_status = Some(body);
                self.terminal = true;
            }
            Err(PodApiError::Gone(_)) => self.api_gone = true,
            Err(e) => {
                self.shared.health.report(&format!("patching the status of pod {}", self.id), &e.into());
                self.status_retry = Some(Instant::now() + CALL_RETRY);
            }
        }
        Flow::Continue
    }
}

/// The status as a strategic-merge patch body. Container status lists are atomic in the API
/// (a patch replaces them whole); conditions merge by type, so each carries every field
/// explicitly and nothing stale survives from an earlier status.
fn patch_body(status: &k8s_openapi::api::core::v1::PodStatus, ended: &[&str]) -> serde_json::Value {
    let mut v = serde_json::to_value(status).unwrap_or_default();
    if let Some(serde_json::Value::Array(conds)) = v.get_mut("conditions") {
        for c in conds.iter_mut().filter_map(|c| c.as_object_mut()) {
            for k in ["reason", "message"] {
                c.entry(k).or_insert(serde_json::Value::Null);
            }
        }
        // Conditions that ended (an in-place resize's) are deleted by type.
        conds.extend(ended.iter().map(|t| serde_json::json!({"type": t, "$patch": "delete"})));
    }
    v
}

//! Starting containers: resolving the image (in its own task: installs take long), planning and
//! writing the unit file, and queuing the start or restart job.

use tokio::time::Instant;

use super::container::{Blocked, ImageState, launches, pull_backoff};
use super::{CALL_RETRY, CREATE_RETRY, Msg, Worker, system_time};
use crate::events::{EventType, PodEvents};
use crate::images::{ImageError, ImageInfo};
use crate::pods::termination;
use crate::policy::PullPolicy;
use crate::reason::WaitingReason;
use crate::systemd::{ActiveState, UnitStatus};
use crate::unit::{self, BindMount, ContainerKind, UnitSpec};

/// How long vks waits for systemd to report on a start job before trying again.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Worker {
    /// Starts what the kubelet's ordering allows now (see [`launches`]).
    pub(super) async fn start_containers(&mut self) {
        let now = self.shared.clock.wall();
        let decisions: Vec<_> = self.ctrs.iter().map(|c| (c.kind, c.next(now))).collect();
        for i in launches(&decisions) {
            self.launch(i).await;
            // App containers start one by one: a postStart hook holds back the ones after it.
            if self.ctrs[i].kind == ContainerKind::App && self.ctrs[i].holds_later_starts() {
                break;
            }
        }
    }

    /// The files of container `i` under the pod directory, bound into its unit: its termination
    /// message file (emptied for the new run) and, with host aliases, the pod's hosts file.
    async fn pod_files(&self, i: usize, plan: &mut UnitSpec) -> Result<(), String> {
        let c = &self.ctrs[i];
        let file = termination::message_file(&self.shared.pod_dir, &self.id.uid, &c.spec.name);
        termination::prepare_message_file(&file)
            .await
            .map_err(|e| format!("preparing the termination message file {}: {e}", file.display()))?;
        plan.mounts.push(BindMount {
            source: file.display().to_string(),
            target: termination::message_path(&c.spec).to_owned(),
            read_only: false,
        });
        let aliases = self.pod.spec.as_ref().and_then(|s| s.host_aliases.clone()).unwrap_or_default();
        if !aliases.is_empty() {
            let node_hosts = tokio::fs::read_to_string("/etc/hosts")
                .await
                .map_err(|e| format!("reading the node's /etc/hosts for hostAliases: {e}"))?;
            let hosts = termination::hosts_file(&self.shared.pod_dir, &self.id.uid);
            let content = termination::hosts_content(&node_hosts, &aliases);
            crate::fsutil::write_atomic_async(hosts.clone(), content.into_bytes(), 0o644)
                .await
                .map_err(|e| format!("writing the pod's hosts file {}: {e}", hosts.display()))?;
            plan.mounts.push(BindMount {
                source: hosts.display().to_string(),
                target: "/etc/hosts".into(),
                read_only: true,
            });
        }
        Ok(())
    }

    /// Records the outcome of resolving container `i`'s image, with the kubelet's events.
    pub(super) fn image_resolved(&mut self, i: usize, r: Result<ImageInfo, ImageError>) {
        let Some(c) = self.ctrs.get_mut(i) else { return };
        let image = c.spec.image.clone().unwrap_or_default();
        let now = Instant::now();
        match r {
            Ok(img) => {
                c.image_failures = 0;
                c.image = ImageState::Ready(img);
            }
            Err(e) if e.reason == WaitingReason::ErrImagePull => {
                c.image_failures += 1;
                let wait = pull_backoff(c.image_failures);
                c.image = ImageState::Failed { error: e.clone(), failed: now, retry: now + wait };
                log::warn!(pod = self.id.to_string().as_str(); "pod {}: {}; next try in {}s", self.id, e.message, wait.as_secs());
                self.event(EventType::Warning, "Failed", format!("Failed to pull image {image:?}: {}", e.message));
                self.event(EventType::Warning, "Failed", "Error: ErrImagePull".into());
                self.event(EventType::Normal, "BackOff", format!("Back-off pulling image {image:?}"));
                self.event(EventType::Warning, "Failed", "Error: ImagePullBackOff".into());
            }
            Err(e) => {
                let repeated = matches!(&c.image, ImageState::Failed { error, .. } if *error == e);
                c.image = ImageState::Failed { error: e.clone(), failed: now, retry: now + CREATE_RETRY };
                if !repeated {
                    log::warn!(pod = self.id.to_string().as_str(); "pod {}: {}", self.id, e.message);
                    self.event(EventType::Warning, e.reason.as_str(), format!("Error: {}", e.message));
                }
            }
        }
    }

    /// The image of container `i` when it is available; otherwise starts or awaits resolving it.
    fn image(&mut self, i: usize) -> Option<ImageInfo> {
        let now = Instant::now();
        match &self.ctrs[i].image {
            ImageState::Ready(img) => Some(img.clone()),
            ImageState::Resolving => None,
            ImageState::Failed { retry, .. } if *retry > now => None,
            ImageState::Unresolved | ImageState::Failed { .. } => {
                self.ctrs[i].image = ImageState::Resolving;
                let (images, tx) = (self.shared.images.clone(), self.tx.clone());
                let image = self.ctrs[i].spec.image.clone().unwrap_or_default();
                let policy = PullPolicy::of(&self.ctrs[i].spec);
                let events = PodEvents::new(self.shared.events.clone(), self.id.clone());
                tokio::spawn(async move {
                    let r = images.ensure(&image, policy, &events).await;
                    let _ = tx.send(Msg::Image(i, r));
                });
                None
            }
        }
    }

    fn block(&mut self, i: usize, reason: WaitingReason, message: String, retry: std::time::Duration) {
        self.ctrs[i].blocked = Some(Blocked { reason, message, retry: Instant::now() + retry });
    }

    /// Creates (or re-creates) the container's unit and starts it.
    async fn launch(&mut self, i: usize) {
        let now = Instant::now();
        if self.ctrs[i].blocked.as_ref().is_some_and(|b| b.retry > now) {
            return;
        }
        // A start job is under way: wait for systemd to report how it went (a start that
        // reports nothing for long is tried again).
        if self.ctrs[i].starting.is_some_and(|t| now.duration_since(t) < START_TIMEOUT) {
            return;
        }
        if let Some(message) = super::super::fields::refusal(&self.pod, &self.ctrs[i].spec) {
            if self.ctrs[i].blocked.as_ref().is_none_or(|b| b.message != message) {
                log::warn!(pod = self.id.to_string().as_str(); "pod {}: {message}", self.id);
                self.event(EventType::Warning, "Failed", format!("Error: {message}"));
            }
            self.block(i, WaitingReason::CreateContainerConfigError, message, CREATE_RETRY);
            return;
        }
        let Some(image) = self.image(i) else { return };
        let data = match self.container_data(i, &image).await {
            Ok(d) => d,
            Err(b) => {
                if let Some((t, reason, note)) = b.event
                    && self.ctrs[i].blocked.as_ref().is_none_or(|x| x.message != b.message)
                {
                    log::warn!(pod = self.id.to_string().as_str(); "pod {}: {}", self.id, b.message);
                    self.event(t, reason, note);
                }
                self.block(i, b.reason, b.message, CREATE_RETRY);
                return;
            }
        };
        let (c, node) = (&self.ctrs[i], &self.shared.node);
        let mut plan = match unit::plan(&self.pod, &c.spec, c.kind, &image, node, &data, self.shared.is_executable) {
            Ok(p) => p,
            Err(e) => {
                if self.ctrs[i].blocked.as_ref().is_none_or(|b| b.message != e.message) {
                    log::warn!(pod = self.id.to_string().as_str(); "pod {}: {}", self.id, e.message);
                    self.event(EventType::Warning, "Failed", format!("Error: {}", e.message));
                }
                self.block(i, e.reason, e.message, CREATE_RETRY);
                return;
            }
        };
        if let Err(other) = self.shared.claim(&plan.name, &self.id.uid) {
            let message = format!("waiting for unit {} of the previous pod {other} to be removed", plan.name);
            self.block(i, WaitingReason::ContainerCreating, message, std::time::Duration::from_secs(1));
            return;
        }
        if let Err((reason, message)) = self.prepare(&plan).await {
            if self.ctrs[i].blocked.as_ref().is_none_or(|b| b.message != message) {
                log::warn!(pod = self.id.to_string().as_str(); "pod {}: {message}", self.id);
                self.event(EventType::Warning, "Failed", format!("Error: {message}"));
            }
            self.block(i, reason, message, CREATE_RETRY);
            return;
        }
        if let Err(message) = self.pod_files(i, &mut plan).await {
            if self.ctrs[i].blocked.as_ref().is_none_or(|b| b.message != message) {
                log::warn!(pod = self.id.to_string().as_str(); "pod {}: {message}", self.id);
                self.event(EventType::Warning, "Failed", format!("Error: {message}"));
            }
            self.block(i, WaitingReason::CreateContainerError, message, CREATE_RETRY);
            return;
        }
        self.ctrs[i].blocked = None;
        let sd = self.shared.systemd.clone();
        let mut wrote = false;
        let unit = plan.name.clone();
        let ran_before = self.ctrs[i].exited().is_some() || self.ctrs[i].restart_at.is_some();
        if self.ctrs[i].written.as_deref() != Some(plan.meta.spec_hash.as_str()) {
            let maybe_loaded = self.ctrs[i].written.is_some() || self.shared.was_released(&unit);
            let text = match unit::render(&plan) {
                Ok(t) => t,
                Err(e) => {
                    self.block(i, e.reason, e.message, CREATE_RETRY);
                    return;
                }
            };
            if let Err(e) = sd.write_unit(&unit, &text).await {
                self.block(i, WaitingReason::CreateContainerError, e.to_string(), CALL_RETRY);
                return;
            }
            self.ctrs[i].written = Some(plan.meta.spec_hash.clone());
            wrote = true;
            // A unit systemd still has loaded from an earlier file needs a reload to see the new
            // one; a unit it never loaded is read fresh at start.
            if maybe_loaded
                && sd.status(&unit).await.is_ok_and(|s| s.need_daemon_reload)
                && let Err(e) = sd.reload().await
            {
                log::warn!("daemon-reload for {unit}: {e}");
            }
        }
        // Env values from Secrets: written (again) before every start, never into the unit.
        if let Some(file) = &plan.env_file
            && let Err(e) = self.shared.volumes.write_env_file(file, &plan.secret_env.0).await
        {
            self.block(i, WaitingReason::CreateContainerError, e, CALL_RETRY);
            return;
        }
        log::debug!(unit = unit.as_str(); "starting unit {unit}");
        let result = if ran_before { sd.restart(&unit).await } else { sd.start(&unit).await };
        let c = &mut self.ctrs[i];
        match result {
            Ok(()) => {
                if ran_before {
                    if let Some(t) = c.exited() {
                        c.backoff.restarted(system_time(&t).unwrap_or_else(|| self.shared.clock.wall()));
                        c.last_state = Some(*t);
                    }
                    c.restart_count += 1;
                } else if let Some(lost) = c.lost_run.take() {
                    c.last_state = Some(lost);
                    c.restart_count += 1;
                }
                c.adopted_image_id = Some(plan.meta.image_id.clone());
                c.applied = Some(plan.confinement.limits.clone());
                c.restart_at = None;
                c.observed_exit = None;
                c.start_error = None;
                c.post_start.expected = true;
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
                let name = c.spec.name.clone();
                self.event(EventType::Normal, "Started", note);
                if wrote {
                    self.report_exposure(&unit, &name, &plan.confinement.security.summary);
                }
            }
            Err(e) => {
                let msg = format!("starting unit {unit}: {e}");
                log::warn!(unit = unit.as_str(); "{msg}");
                self.block(i, WaitingReason::RunContainerError, msg.clone(), CALL_RETRY);
                self.event(EventType::Warning, "Failed", msg);
            }
        }
    }
}

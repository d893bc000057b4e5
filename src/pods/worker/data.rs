//! The data of a pod's containers (issue 12): the ConfigMaps and Secrets it refers to (watched
//! for it by `objects::Objects`, which wakes the worker with [`Msg::Data`] when one changes),
//! its tokens, service links and volumes.
//!
//! Before a container starts, every volume of the pod is set up (as the kubelet mounts them
//! all first), the container's environment is resolved and its mounts are planned; what is
//! missing makes it wait (`ContainerCreating` with a `FailedMount` event for volumes,
//! `CreateContainerConfigError` for env, as the kubelet) and it is retried as soon as the
//! object appears. While the pod runs, its files follow the objects, the pod's labels and
//! annotations, and the token refreshes.

use std::time::SystemTime;

use tokio::time::Instant;

use super::{Msg, Worker};
use crate::events::EventType;
use crate::images::ImageInfo;
use crate::reason::WaitingReason;
use crate::unit::data::{ContainerData, PodData};
use crate::volumes::{self, VolumeError};

/// The worker's view of its pod's data.
#[derive(Debug, Default)]
pub(super) struct DataState {
    /// The references the objects are watched for (`None`: not subscribed yet).
    subscribed: Option<std::collections::BTreeSet<crate::unit::data::ObjKey>>,
    /// The volumes were set up (by this worker, or by an earlier vks whose units it adopted).
    pub ready: bool,
    /// The files may be out of date.
    pub dirty: bool,
    /// When the next token must be refreshed.
    pub refresh_at: Option<SystemTime>,
    /// Warnings already sent as events (once each).
    warned: std::collections::HashSet<String>,
}

/// Why a container cannot get its data now.
pub(super) struct DataBlock {
    pub reason: WaitingReason,
    pub message: String,
    /// The event to send when this is new: (type, reason, note).
    pub event: Option<(EventType, &'static str, String)>,
}

impl DataBlock {
    fn waiting(message: String) -> DataBlock {
        DataBlock { reason: WaitingReason::ContainerCreating, message, event: None }
    }
}

impl Worker {
    /// Watches the objects the pod refers to (again, after a change of the pod).
    fn subscribe_data(&mut self) {
        let refs = crate::pods::data::references(&self.pod);
        if self.data.subscribed.as_ref() == Some(&refs) {
            return;
        }
        let tx = self.tx.clone();
        let wake: crate::objects::Waker = std::sync::Arc::new(move || {
            let _ = tx.send(Msg::Data);
        });
        self.shared.objects.subscribe(&self.id.uid, refs.clone(), wake);
        self.data.subscribed = Some(refs);
    }

    /// Everything the pod's env and volumes are resolved against, as known now.
    async fn gather(&mut self) -> Result<PodData, DataBlock> {
        self.subscribe_data();
        let objects = self.shared.objects.clone();
        let mut data = PodData { allocatable: objects.allocatable, ..PodData::default() };
        for key in self.data.subscribed.iter().flatten() {
            data.objects.insert(key.clone(), objects.state(key));
        }
        let mut refresh: Option<SystemTime> = None;
        for spec in crate::pods::data::token_specs(&self.pod) {
            match objects.token(&self.id, &spec).await {
                Ok((token, at)) => {
                    data.tokens.insert(spec, token);
                    refresh = Some(refresh.map_or(at, |r| r.min(at)));
                }
                Err(e) => {
                    let message = format!("MountVolume.SetUp failed: failed to fetch token: {e}");
                    return Err(DataBlock {
                        reason: WaitingReason::ContainerCreating,
                        event: Some((EventType::Warning, "FailedMount", message.clone())),
                        message,
                    });
                }
            }
        }
        self.data.refresh_at = refresh;
        let spec = self.pod.spec.as_ref();
        let links = spec.and_then(|s| s.enable_service_links).unwrap_or(true);
        let ns = self.id.namespace.clone();
        let services = if links { objects.services(&ns).await.map_err(DataBlock::waiting)? } else { Vec::new() };
        data.service_env = crate::pods::data::service_env(objects.api_server(), &services, &ns, links);
        Ok(data)
    }

    fn warn_once(&mut self, reason: &'static str, note: String) {
        if self.data.warned.insert(note.clone()) {
            log::warn!(pod = self.id.to_string().as_str(); "pod {}: {note}", self.id);
            self.event(EventType::Warning, reason, note);
        }
    }

    /// Sets up the pod's volumes and resolves what container `i` (with `image`) needs.
    pub(super) async fn container_data(&mut self, i: usize, image: &ImageInfo) -> Result<ContainerData, DataBlock> {
        let data = self.gather().await?;
        match self.shared.volumes.setup(&self.pod, &self.shared.node, &data).await {
            Ok(_) => {
                self.data.ready = true;
                self.data.dirty = false;
            }
            Err(VolumeError::Pending(m)) => return Err(DataBlock::waiting(m)),
            Err(e @ VolumeError::Failed { .. }) => {
                let message = e.to_string();
                return Err(DataBlock {
                    reason: WaitingReason::ContainerCreating,
                    event: Some((EventType::Warning, "FailedMount", message.clone())),
                    message,
                });
            }
            Err(VolumeError::Refused(m)) => {
                return Err(DataBlock {
                    reason: WaitingReason::CreateContainerConfigError,
                    event: Some((EventType::Warning, "Failed", format!("Error: {m}"))),
                    message: m,
                });
            }
        }
        let c = self.ctrs[i].spec.clone();
        let run_as = volumes::run_as(&self.pod, &c, image);
        if let Err(m) = self.shared.volumes.claim(&self.pod, &c, run_as).await {
            return Err(DataBlock {
                reason: WaitingReason::ContainerCreating,
                event: Some((EventType::Warning, "FailedMount", m.clone())),
                message: m,
            });
        }
        let env = crate::unit::resolve_env(&self.pod, &c, &self.shared.node, &data).map_err(|e| DataBlock {
            event: (e.reason != WaitingReason::ContainerCreating)
                .then(|| (EventType::Warning, "Failed", format!("Error: {}", e.message))),
            reason: e.reason,
            message: e.message,
        })?;
        for w in &env.warnings {
            self.warn_once("InvalidEnvironmentVariableNames", w.clone());
        }
        let (vols, pod) = (self.shared.volumes.clone(), self.pod.clone());
        let mounts = if c.volume_mounts.as_ref().is_none_or(Vec::is_empty) {
            Ok(Vec::new())
        } else {
            tokio::task::spawn_blocking(move || volumes::container_mounts(&vols, &pod, &c, &env))
                .await
                .map_err(|e| DataBlock::waiting(format!("planning mounts: {e}")))?
        };
        let mounts = mounts.map_err(|e| DataBlock {
            reason: e.reason,
            event: Some((EventType::Warning, "Failed", format!("Error: {}", e.message))),
            message: e.message,
        })?;
        let env_file = self.shared.volumes.env_file(&self.id.uid, &self.ctrs[i].spec.name);
        Ok(ContainerData { pod: data, mounts, env_file })
    }

    /// Something the pod's data depends on changed: files are brought up to date and waiting
    /// containers try again now.
    pub(super) fn data_changed(&mut self) {
        self.data.dirty = true;
        let now = Instant::now();
        for c in &mut self.ctrs {
            if let Some(b) = c.blocked.as_mut() {
                b.retry = b.retry.min(now);
            }
        }
    }

    /// Keeps the files of a running pod current (objects, labels and annotations, tokens).
    pub(super) async fn sync_data(&mut self) {
        if !self.data.ready {
            // Units adopted from an earlier vks: their volumes were set up by it.
            self.data.ready = self.ctrs.iter().any(|c| c.written.is_some());
            self.data.dirty = true;
            if !self.data.ready {
                return;
            }
        }
        if self.data.refresh_at.is_some_and(|at| at <= self.shared.clock.wall()) {
            self.data.dirty = true;
        }
        if !self.data.dirty {
            return;
        }
        self.data.dirty = false;
        let data = match self.gather().await {
            Ok(d) => d,
            Err(b) => {
                log::debug!(pod = self.id.to_string().as_str(); "pod {}: files not updated: {}", self.id, b.message);
                // A refresh that failed is tried again later, not at once.
                let now = self.shared.clock.wall();
                if self.data.refresh_at.is_some_and(|at| at <= now) {
                    self.data.refresh_at = Some(now + super::CREATE_RETRY);
                }
                return;
            }
        };
        match self.shared.volumes.setup(&self.pod, &self.shared.node, &data).await {
            Ok(true) => log::debug!(pod = self.id.to_string().as_str(); "pod {}: volume files updated", self.id),
            Ok(false) => {}
            // What cannot be read now keeps the files as they are, as with the kubelet.
            Err(e) => log::debug!(pod = self.id.to_string().as_str(); "pod {}: volumes not updated: {e}", self.id),
        }
    }

    /// When the data needs the worker next (a token refresh).
    pub(super) fn data_wake(&self) -> Option<Instant> {
        self.data.refresh_at.map(|at| self.shared.clock.instant_at(at))
    }

    /// The pod is gone: its directories are removed and its objects no longer watched.
    pub(super) async fn release_data(&mut self) {
        if let Err(e) = self.shared.volumes.remove_pod(&self.id.uid).await {
            log::warn!(pod = self.id.to_string().as_str(); "removing the directories of pod {}: {e}", self.id);
        }
        self.shared.objects.release(&self.id.uid);
        self.data.subscribed = None;
    }
}

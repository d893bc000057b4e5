//! The worker's side of resources and confinement (the settings themselves come from
//! `unit::resources` and `unit::security`, pure): the pod's and containers' slices, the numeric
//! IDs a container runs with, the `runAsNonRoot` check of a named user, OOM kills on cgroup v1,
//! and the exposure event.

use crate::events::EventType;
use crate::reason::WaitingReason;
use crate::systemd::SystemdError;
use crate::unit::resources::{self, ContainerLimits, Settings, SliceOwner};
use crate::unit::{UnitSpec, security};

use super::shared::Admitted;
use super::{Shared, Worker};

impl Worker {
    /// The description of the pod's slice: its identity.
    fn slice_owner(&self, container: Option<&str>) -> SliceOwner {
        SliceOwner {
            namespace: self.id.namespace.clone(),
            pod: self.id.name.clone(),
            pod_uid: self.id.uid.clone(),
            container: container.map(str::to_owned),
        }
    }

    /// Writes a slice file unless it says this already; a slice systemd has loaded gets the new
    /// settings live (a loaded unit does not re-read its file).
    pub(super) async fn write_slice(&self, name: &str, text: &str, settings: &Settings) -> Result<(), SystemdError> {
        let sd = &self.shared.systemd;
        let old = sd.read_unit_file(name).await?;
        if old.as_deref() == Some(text) {
            return Ok(());
        }
        sd.write_unit(name, text).await?;
        if old.is_some() {
            match sd.set_unit_properties(name, &settings.properties()).await {
                Ok(()) | Err(SystemdError::NoSuchUnit(_)) => {}
                Err(e) => log::warn!(unit = name; "changing slice {name} live: {e}"),
            }
        }
        Ok(())
    }

    /// The pod's slice and the container's slice, as `limits` says.
    pub(super) async fn write_slices(&self, container: &str, limits: &ContainerLimits) -> Result<(), SystemdError> {
        let pod = format!("vks pod {}/{} ({})", self.id.namespace, self.id.name, self.id.uid);
        let to_error = |e: crate::unit::SpecError| SystemdError::Io {
            action: "rendering",
            path: limits.slice.clone(),
            source: std::io::Error::other(e.message),
        };
        let owner = self.slice_owner(None);
        let text = resources::slice_file(&pod, &limits.pod_settings, Some(&owner)).map_err(to_error)?;
        self.write_slice(&limits.pod_slice, &text, &limits.pod_settings).await?;
        let owner = self.slice_owner(Some(container));
        let text = resources::slice_file(&format!("{pod} container {container}"), &limits.settings, Some(&owner))
            .map_err(to_error)?;
        self.write_slice(&limits.slice, &text, &limits.settings).await
    }

    /// What container `i`'s unit needs before it starts: its slices, the numeric IDs it runs
    /// with in the node's user database, the `runAsNonRoot` check of a named user, and a fresh
    /// memory peak of its slice (cgroup v1, see [`Worker::check_oom`]).
    pub(super) async fn prepare(&mut self, plan: &UnitSpec) -> Result<(), (WaitingReason, String)> {
        let sd = self.shared.systemd.clone();
        let sec = &plan.confinement.security;
        let c = &plan.meta.container;
        if sec.non_root_name.is_some() {
            let name = sec.non_root_name.clone().unwrap_or_default();
            let uid = sd.user_id(&name).await.map_err(|e| (WaitingReason::CreateContainerError, e.to_string()))?;
            security::check_non_root(sec, c, |_| uid).map_err(|e| (e.reason, e.message))?;
        }
        if sec.ids.user.is_some() || !sec.ids.groups.is_empty() {
            sd.ensure_ids(&sec.ids).await.map_err(|e| (WaitingReason::CreateContainerError, e.to_string()))?;
        }
        let limits = &plan.confinement.limits;
        self.write_slices(c, limits).await.map_err(|e| (WaitingReason::CreateContainerError, e.to_string()))?;
        if let Err(e) = sd.reset_slice_peak(&limits.slice).await {
            log::debug!(unit = plan.name.as_str(); "resetting the memory peak of {}: {e}", limits.slice);
        }
        Ok(())
    }

    /// Whether the exit of container `i` that just happened was the kernel's OOM killer on
    /// cgroup v1, where systemd reports only `signal` (SIGKILL): the container's slice reached
    /// its memory limit during this run. On cgroup v2 systemd's own `oom-kill` result says it.
    pub(super) async fn check_oom(&mut self, i: usize, run_key: (u64, u64)) {
        let c = &self.ctrs[i];
        let Some(t) = c.exited() else { return };
        let oom_by_systemd = t.reason.as_deref() == Some("OOMKilled");
        if !oom_by_systemd && t.signal != Some(9) {
            return;
        }
        let Some(limits) = resources::plan(&self.pod, &c.spec).ok() else { return };
        let Some(limit) = limits.settings.memory_max.or(limits.pod_settings.memory_max) else { return };
        if !oom_by_systemd {
            match self.shared.systemd.slice_memory(&limits.slice).await {
                Ok(Some(m)) if m.reached_limit() => {}
                Ok(_) => return,
                Err(e) => {
                    log::debug!(unit = c.unit.as_str(); "reading the memory of {}: {e}", limits.slice);
                    return;
                }
            }
        }
        let name = c.spec.name.clone();
        self.ctrs[i].oom_exit = Some(run_key);
        let limit = crate::quantity::format_bytes(limit);
        log::warn!(pod = self.id.to_string().as_str(); "container {name} of pod {} was OOM-killed (memory limit {limit})", self.id);
        self.event(
            EventType::Warning,
            "OOMKilled",
            format!("Container {name} was killed by the kernel's OOM killer: it reached its memory limit of {limit}"),
        );
    }

    /// Reports the exposure of container `name`'s unit as an event, in the background (one
    /// `systemd-analyze security` run at a time).
    pub(super) fn report_exposure(&self, unit: &str, name: &str, summary: &str) {
        if !self.shared.report_exposure {
            return;
        }
        let (sd, events, id) = (self.shared.systemd.clone(), self.shared.events.clone(), self.id.clone());
        let (unit, name, summary) = (unit.to_owned(), name.to_owned(), summary.to_owned());
        tokio::spawn(async move {
            match sd.exposure(&unit).await {
                Ok(x) => events.pod(
                    &id,
                    EventType::Normal,
                    "SecurityExposure",
                    format!(
                        "Container {name}: systemd-analyze security exposure {:.1} {} under {summary} (0 = confined, 10 = exposed)",
                        x.score, x.predicate
                    ),
                ),
                Err(e) => log::debug!(unit = unit.as_str(); "exposure of {unit}: {e}"),
            }
        });
    }

    /// Stops and removes the pod's slices (after its units). False when a file could not be
    /// removed.
    pub(super) async fn remove_slices(&mut self) -> bool {
        let sd = self.shared.systemd.clone();
        let mut names: Vec<String> = Vec::new();
        for q in [resources::Qos::Guaranteed, resources::Qos::Burstable, resources::Qos::BestEffort] {
            let pod_slice = resources::pod_slice(&self.id.uid, q);
            names.extend(self.ctrs.iter().map(|c| resources::container_slice(&pod_slice, &c.spec.name)));
            names.push(pod_slice);
        }
        for name in names {
            if matches!(sd.read_unit_file(&name).await, Ok(None)) {
                continue;
            }
            match sd.stop(&name).await {
                Ok(()) | Err(SystemdError::NoSuchUnit(_)) => {}
                Err(e) => log::debug!(unit = name.as_str(); "stopping slice {name}: {e}"),
            }
            if let Err(e) = sd.remove_unit_file(&name).await {
                log::warn!(unit = name.as_str(); "{e}");
                return false;
            }
        }
        true
    }
}

impl Shared {
    /// Admits pods against `allocatable` (the kubelet's resource admission), limits every pod
    /// together to `pods_memory_max` (node allocatable enforced), and reports each container's
    /// exposure when `report_exposure`.
    pub fn with_node_resources(
        mut self,
        allocatable: crate::unit::resources::NodeAllocatable,
        pods_memory_max: Option<u64>,
        report_exposure: bool,
    ) -> Shared {
        self.allocatable = Some(allocatable);
        self.node_slices = crate::unit::resources::node_slices(&allocatable, pods_memory_max);
        self.report_exposure = report_exposure;
        self
    }

    /// Writes the node-level slices that changed; reloads systemd when one it had loaded
    /// changed (a new configuration).
    pub async fn write_node_slices(&self) {
        let mut reload = false;
        for (name, text) in &self.node_slices {
            match self.systemd.read_unit_file(name).await {
                Ok(Some(old)) if old == *text => continue,
                Ok(old) => reload |= old.is_some(),
                Err(e) => log::warn!("reading {name}: {e}"),
            }
            if let Err(e) = self.systemd.write_unit(name, text).await {
                log::warn!("writing {name}: {e}");
            }
        }
        if reload && let Err(e) = self.systemd.reload().await {
            log::warn!("daemon-reload after changing the node's slices: {e}");
        }
    }

    /// What the node has left for pod `uid`: allocatable, and what the other admitted pods use.
    pub(super) fn load_without(&self, uid: &str) -> Option<crate::pods::fields::NodeLoad> {
        let allocatable = self.allocatable?;
        let admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        let mut load = crate::pods::fields::NodeLoad { allocatable, ..Default::default() };
        for (_, a) in admitted.iter().filter(|(u, _)| *u != uid) {
            let add = |x: Option<u64>, y: Option<u64>| Some(x.unwrap_or(0) + y.unwrap_or(0));
            load.used.cpu = add(load.used.cpu, a.requests.cpu);
            load.used.memory = add(load.used.memory, a.requests.memory);
            load.used.ephemeral_storage = add(load.used.ephemeral_storage, a.requests.ephemeral_storage);
            for (k, v) in &a.extended {
                *load.used_extended.entry(k.clone()).or_default() += v;
            }
            load.pods += 1;
        }
        Some(load)
    }

    /// Admits `pod` (unless `check` is false: its units already run) and counts its requests;
    /// returns why it is rejected, as the kubelet would.
    pub(super) fn admit(&self, pod: &k8s_openapi::api::core::v1::Pod, check: bool) -> Option<(String, String)> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if check && let Some(why) = crate::pods::fields::admission(pod, self.load_without(&uid).as_ref()) {
            return Some(why);
        }
        let (requests, extended) = crate::unit::resources::admission_requests(pod).unwrap_or_default();
        self.admitted.lock().unwrap_or_else(|e| e.into_inner()).insert(uid, Admitted { requests, extended });
        None
    }

    /// Pod `uid` no longer holds resources (it finished or is gone).
    pub(super) fn leave(&self, uid: &str) {
        self.admitted.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
    }
}

//! In-place resize (`kubectl patch --subresource resize`): new container resources are
//! admitted against node allocatable like the kubelet's (`PodResizePending`: `Infeasible` when
//! the node could never hold them, `Deferred` while other pods use what is needed), then applied
//! to the running containers: live with `SetUnitProperties` when every changed resource's
//! `resizePolicy` is `NotRequired` (the default), by a restart of the container when one says
//! `RestartContainer` (`PodResizeInProgress` until it runs again). The status shows each running
//! container's `allocatedResources` and `resources` as applied.
//!
//! A live change goes through the pod slice, the container's slice and its unit twice: first
//! to the looser of the old and new settings from the top down, then to the new ones from the
//! bottom up, because on cgroup v1 a child's CPU quota may not exceed its parent's. The unit
//! file keeps the settings it was started with; the change is kept by systemd
//! (/run/systemd/system.control) until the container's next start rewrites the file.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodCondition, PodStatus, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::Worker;
use crate::events::EventType;
use crate::unit::resources::{self, ContainerLimits, Resources, Settings};

const PENDING: &str = "PodResizePending";
const IN_PROGRESS: &str = "PodResizeInProgress";

/// The resize conditions the status shows.
#[derive(Debug, Clone, Default)]
pub(super) struct ResizeState {
    /// `PodResizePending`: (reason, message, since).
    pending: Option<(String, String, Timestamp)>,
    /// `PodResizeInProgress`: (reason, message, since); empty reason while it goes well.
    in_progress: Option<(String, String, Timestamp)>,
    /// Containers restarting for a resize (`PodResizeInProgress` until they run again).
    restarting: Vec<usize>,
}

/// Which resources differ between two settings: `cpu`, `memory`.
fn changed(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.cpu_weight != new.cpu_weight || old.cpu_limit != new.cpu_limit {
        out.push("cpu");
    }
    if old.memory_max != new.memory_max || old.memory_low != new.memory_low {
        out.push("memory");
    }
    out
}

/// A container's resources as the API writes them.
pub(super) fn requirements(r: &Resources) -> ResourceRequirements {
    let map = |a: &resources::Amounts| {
        let mut m = BTreeMap::new();
        if let Some(c) = a.cpu {
            m.insert("cpu".to_owned(), Quantity(format!("{c}m")));
        }
        if let Some(b) = a.memory {
            m.insert("memory".to_owned(), Quantity(b.to_string()));
        }
        if let Some(b) = a.ephemeral_storage {
            m.insert("ephemeral-storage".to_owned(), Quantity(b.to_string()));
        }
        (!m.is_empty()).then_some(m)
    };
    ResourceRequirements { limits: map(&r.limits), requests: map(&r.requests), claims: None }
}

impl Worker {
    /// Admits and applies changed resources of running containers.
    pub(super) async fn resize(&mut self) {
        let mut todo: Vec<(usize, ContainerLimits, Vec<&'static str>)> = Vec::new();
        for (i, c) in self.ctrs.iter().enumerate() {
            let (Some(applied), true) = (&c.applied, c.running()) else { continue };
            let Ok(want) = resources::plan(&self.pod, &c.spec) else { continue };
            let mut what = changed(&applied.settings, &want.settings);
            if what.is_empty() && applied.pod_settings != want.pod_settings {
                what.push("cpu");
            }
            if !what.is_empty() {
                todo.push((i, want, what));
            }
        }
        let ctrs = &self.ctrs;
        self.resize.restarting.retain(|&i| !(ctrs[i].running() && ctrs[i].applied.is_some()));
        if todo.is_empty() {
            self.resize.pending = None;
            let clear = self.resize.in_progress.as_ref().is_some_and(|(r, _, _)| r.is_empty());
            if clear && self.resize.restarting.is_empty() {
                self.resize.in_progress = None;
            }
            return;
        }
        if let Some((reason, message)) = self.resize_fits() {
            if self.resize.pending.as_ref().is_none_or(|(r, m, _)| *r != reason || *m != message) {
                self.event(EventType::Warning, "ResizeDeferred", format!("{reason}: {message}"));
                self.resize.pending = Some((reason, message, self.shared.clock.timestamp()));
            }
            return;
        }
        self.resize.pending = None;
        self.shared.admit(&self.pod, false);
        let now = self.shared.clock.timestamp();
        for (i, want, what) in todo {
            let restart = what.iter().any(|r| self.restart_policy(i, r) == "RestartContainer");
            let result = if restart { self.resize_by_restart(i).await } else { self.resize_live(i, &want).await };
            let name = self.ctrs[i].spec.name.clone();
            match result {
                Ok(()) => {
                    let how = if restart { "restarted with" } else { "applied live:" };
                    let r = requirements(&want.resources);
                    self.event(EventType::Normal, "Resized", format!("Container {name}: {how} {}", describe(&r)));
                    if restart {
                        self.resize.restarting.push(i);
                        self.resize.in_progress.get_or_insert((String::new(), String::new(), now));
                    }
                }
                Err(e) => {
                    let message = format!("container {name}: {e}");
                    self.event(EventType::Warning, "ResizeError", message.clone());
                    self.resize.in_progress = Some(("Error".into(), message, now));
                }
            }
        }
    }

    /// `resizePolicy` of container `i` for `resource`.
    fn restart_policy(&self, i: usize, resource: &str) -> String {
        let mut policies = self.ctrs[i].spec.resize_policy.iter().flatten();
        policies.find(|p| p.resource_name == resource).map_or("NotRequired".into(), |p| p.restart_policy.clone())
    }

    /// Why the new resources cannot be admitted now: (`Infeasible`|`Deferred`, message).
    fn resize_fits(&self) -> Option<(String, String)> {
        let load = self.shared.load_without(&self.id.uid)?;
        let (req, _) = resources::admission_requests(&self.pod).ok()?;
        let a = &load.allocatable;
        for (name, want, used, capacity) in [
            ("cpu", req.cpu.unwrap_or(0), load.used.cpu.unwrap_or(0), a.cpu),
            ("memory", req.memory.unwrap_or(0), load.used.memory.unwrap_or(0), a.memory),
        ] {
            if want > capacity {
                return Some((
                    "Infeasible".into(),
                    format!("Node didn't have enough capacity: {name}, requested: {want}, capacity: {capacity}"),
                ));
            }
            if used + want > capacity {
                return Some((
                    "Deferred".into(),
                    format!(
                        "Node didn't have enough resource: {name}, requested: {want}, used: {used}, capacity: {capacity}"
                    ),
                ));
            }
        }
        None
    }

    /// Applies `want` to container `i`'s slices and unit without a restart.
    async fn resize_live(&mut self, i: usize, want: &ContainerLimits) -> Result<(), String> {
        let Some(old) = self.ctrs[i].applied.clone() else { return Ok(()) };
        let sd = self.shared.systemd.clone();
        let unit = self.ctrs[i].unit.clone();
        let steps = [
            (want.pod_slice.clone(), old.pod_settings, want.pod_settings),
            (want.slice.clone(), old.settings, want.settings),
            (unit, old.settings, want.settings),
        ];
        for (name, old, new) in &steps {
            sd.set_unit_properties(name, &old.loosest(new).properties()).await.map_err(|e| e.to_string())?;
        }
        for (name, _, new) in steps.iter().rev() {
            sd.set_unit_properties(name, &new.properties()).await.map_err(|e| e.to_string())?;
        }
        let name = self.ctrs[i].spec.name.clone();
        self.write_slices(&name, want).await.map_err(|e| e.to_string())?;
        log::info!(unit = self.ctrs[i].unit.as_str(); "resized container {name} of pod {} live", self.id);
        self.ctrs[i].applied = Some(want.clone());
        Ok(())
    }

    /// Restarts container `i` so that its unit is written with the new resources.
    async fn resize_by_restart(&mut self, i: usize) -> Result<(), String> {
        let unit = self.ctrs[i].unit.clone();
        self.shared.systemd.stop(&unit).await.map_err(|e| e.to_string())?;
        let c = &mut self.ctrs[i];
        // The stop ends this run; the container starts again at once, whatever its restart
        // policy, with the new unit (the kubelet counts it as a restart).
        c.applied = None;
        c.resize_restart = true;
        log::info!(unit = unit.as_str(); "restarting container {} of pod {} for a resize", c.spec.name, self.id);
        Ok(())
    }

    /// Adds the resize conditions and each running container's resources to `status`; returns
    /// the resize conditions the API still shows that have ended (to be deleted by the patch).
    pub(super) fn resize_status(&self, status: &mut PodStatus) -> Vec<&'static str> {
        let generation = self.pod.metadata.generation;
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        let mut ended = Vec::new();
        for (t, state) in [(PENDING, &self.resize.pending), (IN_PROGRESS, &self.resize.in_progress)] {
            match state {
                Some((reason, message, since)) => conditions.push(PodCondition {
                    type_: t.into(),
                    status: "True".into(),
                    reason: (!reason.is_empty()).then(|| reason.clone()),
                    message: (!message.is_empty()).then(|| message.clone()),
                    last_transition_time: Some(Time(*since)),
                    last_probe_time: None,
                    observed_generation: generation,
                }),
                None => {
                    let api = self.pod.status.as_ref().and_then(|s| s.conditions.as_ref());
                    if api.is_some_and(|c| c.iter().any(|c| c.type_ == t)) {
                        ended.push(t);
                    }
                }
            }
        }
        for s in
            status.container_statuses.iter_mut().flatten().chain(status.init_container_statuses.iter_mut().flatten())
        {
            let Some(c) = self.ctrs.iter().find(|c| c.spec.name == s.name) else { continue };
            if let (Some(a), true) = (&c.applied, s.state.as_ref().is_some_and(|st| st.running.is_some())) {
                let r = requirements(&a.resources);
                s.allocated_resources = r.requests.clone();
                s.resources = Some(r);
            }
        }
        ended
    }
}

fn describe(r: &ResourceRequirements) -> String {
    let show = |m: &Option<BTreeMap<String, Quantity>>| {
        m.iter().flatten().map(|(k, v)| format!("{k}={}", v.0)).collect::<Vec<_>>().join(",")
    };
    format!("requests {{{}}} limits {{{}}}", show(&r.requests), show(&r.limits))
}

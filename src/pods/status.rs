//! Pure computation of container and pod status, ported from the kubelet (`getPhase` in
//! pkg/kubelet/kubelet_pods.go, the conditions in pkg/kubelet/status/generate.go) so that
//! `kubectl get pods`, Jobs and Deployments see what they would see from a kubelet.
//!
//! A container is `started` once it runs and its startup probe passed, `ready` once it is
//! started and its readiness probe passes. The pod's Ready condition also waits for its
//! `readinessGates`: conditions that others (controllers) set on the pod. vks writes only the
//! conditions the kubelet owns; the status patch merges conditions by type, so the others' stay.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, HostIP,
    Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::policy::RestartPolicy;
use crate::reason::WaitingReason;
use crate::systemd::{ActiveState, ExitKind, UnitStatus};
use crate::unit::ContainerKind;

/// A container's current state as vks reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum CState {
    /// Not running; `reason` is the kubelet's (ContainerCreating, CrashLoopBackOff, ...).
    Waiting {
        /// Machine-readable reason.
        reason: WaitingReason,
        /// Human-readable detail.
        message: Option<String>,
    },
    /// The main process runs.
    Running {
        /// When it was started.
        started_at: Option<Timestamp>,
    },
    /// The main process exited.
    Terminated(Box<ContainerStateTerminated>),
}

impl CState {
    /// A waiting state.
    pub fn waiting(reason: WaitingReason, message: impl Into<Option<String>>) -> CState {
        CState::Waiting { reason, message: message.into() }
    }

    /// `waiting`, `running` or `terminated`.
    pub fn kind(&self) -> &'static str {
        match self {
            CState::Waiting { .. } => "waiting",
            CState::Running { .. } => "running",
            CState::Terminated(_) => "terminated",
        }
    }

    /// One word for logs: the waiting reason, `Running` or `Terminated(<exit code>)`.
    pub fn summary(&self) -> String {
        match self {
            CState::Waiting { reason, .. } => reason.to_string(),
            CState::Running { .. } => "Running".to_owned(),
            CState::Terminated(t) => format!("Terminated({})", t.exit_code),
        }
    }

    fn to_api(&self) -> ContainerState {
        match self {
            CState::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting { reason: Some(reason.to_string()), message: message.clone() }),
                ..ContainerState::default()
            },
            CState::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning { started_at: started_at.map(Time) }),
                ..ContainerState::default()
            },
            CState::Terminated(t) => ContainerState { terminated: Some((**t).clone()), ..ContainerState::default() },
        }
    }
}

/// What a unit says about its container's process.
#[derive(Debug, Clone, PartialEq)]
pub enum UnitRun {
    /// No process has been started by this unit (or it is still being started).
    NotStarted,
    /// systemd forked the main process but the unit is not active yet: systemd is still setting
    /// the process up (namespaces, mounts, credentials) before it executes the program, or a
    /// `Type=notify` daemon has not reported READY=1. The kubelet's container is not running
    /// yet either: it shows as ContainerCreating, and probes and hooks wait.
    Starting,
    /// The main process runs.
    Running(Option<Timestamp>),
    /// The main process exited; the termination as the API shows it.
    Exited(Box<ContainerStateTerminated>),
}

fn usec(t: u64) -> Option<Timestamp> {
    (t > 0).then(|| Timestamp::from_microsecond(t as i64).ok()).flatten()
}

/// systemd's exit statuses for failures while setting up the process (before the program
/// runs), with what they mean; see systemd.exec(5) "Process Exit Codes".
fn setup_failure(code: i32) -> Option<&'static str> {
    Some(match code {
        200 => "CHDIR: the working directory could not be entered",
        203 => "EXEC: the program could not be executed",
        204 => "MEMORY: out of memory while starting",
        208 => "SIGNAL_MASK",
        209 => "STDIN",
        210 => "CHROOT",
        214 => "SETSCHEDULER",
        216 => "GROUP: the group could not be resolved",
        217 => "USER: the user could not be resolved",
        218 => "CAPABILITIES",
        226 => "NAMESPACE: the mount namespace could not be set up",
        227 => "NO_NEW_PRIVILEGES",
        228 => "SECCOMP",
        _ => return None,
    })
}

/// Reads a unit's status as a container state. `container_id` identifies the run.
pub fn unit_run(u: &UnitStatus) -> UnitRun {
    let container_id = (!u.invocation_id.is_empty()).then(|| format!("systemd://{}", u.invocation_id));
    // The Service interface's main-process properties decide whether a run began or ended: they
    // change together (one signal, one GetAll), whereas the Unit interface's ActiveState comes in
    // a separate signal and may lag behind. systemd zeroes the exit status when it starts a new
    // main process.
    match u.exit_kind {
        ExitKind::None if u.main_pid == 0 => UnitRun::NotStarted,
        // Only an active unit runs its program. While a start is under way the Unit interface's
        // ActiveState may still be the earlier run's (failed, inactive): that counts as starting
        // too, so a run never goes from Running back to Starting.
        ExitKind::None => match u.active_state {
            ActiveState::Active | ActiveState::Reloading | ActiveState::Deactivating => {
                UnitRun::Running(usec(u.started_usec))
            }
            ActiveState::Activating | ActiveState::Inactive | ActiveState::Failed => UnitRun::Starting,
        },
        kind => {
            let (exit_code, signal) = match kind {
                ExitKind::Exited => (u.exit_status, None),
                _ => (128 + u.exit_status, Some(u.exit_status)),
            };
            let (reason, message) = if u.result == "oom-kill" {
                ("OOMKilled", None)
            } else if kind == ExitKind::Exited && u.exit_status == 0 {
                ("Completed", None)
            } else if let (ExitKind::Exited, "exit-code", Some(what)) =
                (kind, u.result.as_str(), setup_failure(u.exit_status))
            {
                (
                    "StartError",
                    Some(format!("systemd could not start the process: exit status {} ({what})", u.exit_status)),
                )
            } else {
                ("Error", None)
            };
            UnitRun::Exited(Box::new(ContainerStateTerminated {
                container_id,
                exit_code,
                signal,
                reason: Some(reason.to_owned()),
                message,
                started_at: usec(u.started_usec).map(Time),
                finished_at: usec(u.exited_usec).map(Time),
            }))
        }
    }
}

/// One container as the status needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    /// Container name.
    pub name: String,
    /// Init, sidecar or app.
    pub kind: ContainerKind,
    /// Image as in the spec.
    pub image: String,
    /// What vks ran for the image.
    pub image_id: String,
    /// Current state.
    pub state: CState,
    /// The previous termination, if it restarted.
    pub last_state: Option<ContainerStateTerminated>,
    /// Restarts so far.
    pub restart_count: i32,
    /// The `systemd://<invocation id>` of the current or last run.
    pub container_id: Option<String>,
    /// Its startup probe passed (true without one).
    pub startup_passed: bool,
    /// Its readiness probe passes (true without one).
    pub readiness_passes: bool,
}

impl ContainerView {
    fn running(&self) -> bool {
        matches!(self.state, CState::Running { .. })
    }

    /// Started: running, and its startup probe passed.
    pub fn started(&self) -> bool {
        self.running() && self.startup_passed
    }

    /// Ready: for app containers and sidecars, started and passing its readiness probe;
    /// completed with 0 for init containers; never for ephemeral containers (the kubelet probes
    /// no ephemeral container).
    pub fn ready(&self) -> bool {
        match self.kind {
            ContainerKind::Init => matches!(&self.state, CState::Terminated(t) if t.exit_code == 0),
            ContainerKind::Ephemeral => false,
            _ => self.started() && self.readiness_passes,
        }
    }

    fn api(&self) -> ContainerStatus {
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            container_id: self.container_id.clone(),
            ready: self.ready(),
            started: (self.kind != ContainerKind::Ephemeral).then(|| self.started()),
            restart_count: self.restart_count,
            state: Some(self.state.to_api()),
            last_state: Some(
                self.last_state
                    .clone()
                    .map(|t| ContainerState { terminated: Some(t), ..ContainerState::default() })
                    .unwrap_or_default(),
            ),
            ..ContainerStatus::default()
        }
    }
}

/// The kubelet's pod phase for these containers (`getPhase`, without alpha feature gates).
/// `terminal` means vks has decided the pod will not run again.
pub fn phase(restart_policy: RestartPolicy, containers: &[ContainerView], terminal: bool) -> &'static str {
    let (mut pending_init, mut pending_sidecars, mut failed_init) = (0, 0, 0);
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    let restarting = |c: &ContainerView| matches!(c.state, CState::Waiting { .. }) && c.last_state.is_some();
    for c in containers {
        match c.kind {
            ContainerKind::Init => match &c.state {
                CState::Running { .. } => pending_init += 1,
                CState::Terminated(t) if t.exit_code != 0 => failed_init += 1,
                CState::Terminated(_) => {}
                CState::Waiting { .. } => match &c.last_state {
                    Some(t) if t.exit_code != 0 => failed_init += 1,
                    Some(_) => {}
                    None => pending_init += 1,
                },
            },
            ContainerKind::Sidecar => match &c.state {
                CState::Running { .. } => running += 1,
                CState::Terminated(_) => {}
                CState::Waiting { .. } if restarting(c) => {}
                CState::Waiting { .. } => {
                    pending_sidecars += 1;
                    waiting += 1;
                }
            },
            ContainerKind::App => match &c.state {
                CState::Running { .. } => running += 1,
                CState::Terminated(t) => {
                    stopped += 1;
                    if t.exit_code == 0 {
                        succeeded += 1;
                    }
                }
                CState::Waiting { .. } if restarting(c) => stopped += 1,
                CState::Waiting { .. } => waiting += 1,
            },
            // No part of the phase (as the kubelet's getPhase).
            ContainerKind::Ephemeral => {}
        }
    }
    let initialized = containers
        .iter()
        .any(|c| c.kind == ContainerKind::App && !matches!(c.state, CState::Waiting { .. } if !restarting(c)));
    if failed_init > 0 && restart_policy == RestartPolicy::Never {
        return "Failed";
    }
    if pending_init > 0 || (pending_sidecars > 0 && !initialized) || waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        if terminal {
            return if stopped == succeeded { "Succeeded" } else { "Failed" };
        }
        return match restart_policy {
            RestartPolicy::Always => "Running",
            _ if stopped == succeeded => "Succeeded",
            RestartPolicy::Never => "Failed",
            _ => "Running",
        };
    }
    "Pending"
}

fn names(list: &[&str]) -> String {
    format!("[{}]", list.join(" "))
}

fn condition(
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    old: &[PodCondition],
    now: Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let transition = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    PodCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.map(str::to_owned),
        message,
        last_transition_time: Some(transition),
        ..PodCondition::default()
    }
}

/// Inputs of [`pod_status`] besides the containers.
#[derive(Debug, Clone)]
pub struct PodFacts<'a> {
    /// The pod as in the API (spec and current status).
    pub pod: &'a Pod,
    /// The node's IP (host IP and, with host networking, the pod IP).
    pub node_ip: &'a str,
    /// When vks accepted the pod.
    pub start_time: Timestamp,
    /// vks has decided the pod will not run again.
    pub terminal: bool,
    /// The time to stamp new condition transitions with.
    pub now: Timestamp,
    /// vks failed the pod (reason, message), e.g. `DeadlineExceeded`: its phase is Failed.
    pub failed: Option<(&'a str, &'a str)>,
}

/// The full pod status: phase, conditions, container statuses, IPs, start time, QoS class.
pub fn pod_status(f: &PodFacts<'_>, containers: &[ContainerView]) -> PodStatus {
    let spec = f.pod.spec.as_ref();
    let policy = RestartPolicy::of_pod(spec);
    let phase = if f.failed.is_some() { "Failed" } else { phase(policy, containers, f.terminal) };
    let old = f.pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();

    let init_incomplete: Vec<&str> = containers
        .iter()
        .filter(|c| match c.kind {
            ContainerKind::Init => !c.ready(),
            ContainerKind::Sidecar => !c.running(),
            ContainerKind::App | ContainerKind::Ephemeral => false,
        })
        .map(|c| c.name.as_str())
        .collect();
    let any_app_started = containers.iter().any(|c| {
        c.kind == ContainerKind::App
            && (c.running() || matches!(c.state, CState::Terminated(_)) || c.last_state.is_some())
    });
    let initialized = if phase == "Succeeded" {
        condition("Initialized", true, Some("PodCompleted"), None, &old, f.now)
    } else if any_app_started || init_incomplete.is_empty() {
        condition("Initialized", true, None, None, &old, f.now)
    } else {
        let msg = format!("containers with incomplete status: {}", names(&init_incomplete));
        condition("Initialized", false, Some("ContainersNotInitialized"), Some(msg), &old, f.now)
    };

    let unready: Vec<&str> = containers
        .iter()
        .filter(|c| !matches!(c.kind, ContainerKind::Init | ContainerKind::Ephemeral) && !c.ready())
        .map(|c| c.name.as_str())
        .collect();
    let (containers_ready, ready) = match phase {
        "Succeeded" | "Failed" => {
            let reason = if phase == "Failed" { "PodFailed" } else { "PodCompleted" };
            (
                condition("ContainersReady", false, Some(reason), None, &old, f.now),
                condition("Ready", false, Some(reason), None, &old, f.now),
            )
        }
        _ if unready.is_empty() => {
            let gates =
                unready_gates(spec.map(|s| s.readiness_gates.as_deref().unwrap_or_default()).unwrap_or_default(), &old);
            let ready = if gates.is_empty() {
                condition("Ready", true, None, None, &old, f.now)
            } else {
                condition("Ready", false, Some("ReadinessGatesNotReady"), Some(gates.join(", ")), &old, f.now)
            };
            (condition("ContainersReady", true, None, None, &old, f.now), ready)
        }
        _ => {
            let msg = format!("containers with unready status: {}", names(&unready));
            (
                condition("ContainersReady", false, Some("ContainersNotReady"), Some(msg.clone()), &old, f.now),
                condition("Ready", false, Some("ContainersNotReady"), Some(msg), &old, f.now),
            )
        }
    };
    let conditions = vec![
        condition("PodReadyToStartContainers", !f.terminal, None, None, &old, f.now),
        initialized,
        ready,
        containers_ready,
        condition("PodScheduled", true, None, None, &old, f.now),
    ];

    let of = |kinds: &[ContainerKind]| -> Vec<ContainerStatus> {
        containers.iter().filter(|c| kinds.contains(&c.kind)).map(|c| c.api()).collect()
    };
    let init = of(&[ContainerKind::Init, ContainerKind::Sidecar]);
    let ephemeral = of(&[ContainerKind::Ephemeral]);
    PodStatus {
        phase: Some(phase.to_owned()),
        reason: f.failed.map(|(r, _)| r.to_owned()),
        message: f.failed.map(|(_, m)| m.to_owned()),
        conditions: Some(conditions),
        host_ip: Some(f.node_ip.to_owned()),
        host_ips: Some(vec![HostIP { ip: f.node_ip.to_owned() }]),
        pod_ip: Some(f.node_ip.to_owned()),
        pod_ips: Some(vec![PodIP { ip: f.node_ip.to_owned() }]),
        start_time: Some(Time(f.start_time)),
        qos_class: Some(qos_class(f.pod).to_owned()),
        init_container_statuses: (!init.is_empty()).then_some(init),
        container_statuses: Some(of(&[ContainerKind::App])),
        ephemeral_container_statuses: (!ephemeral.is_empty()).then_some(ephemeral),
        ..PodStatus::default()
    }
}

/// Why the readiness gates of a pod hold its Ready condition back (the kubelet's messages), from
/// the conditions the pod has now; empty when every gate's condition is True.
pub fn unready_gates(
    gates: &[k8s_openapi::api::core::v1::PodReadinessGate],
    conditions: &[PodCondition],
) -> Vec<String> {
    gates
        .iter()
        .filter_map(|g| match conditions.iter().find(|c| c.type_ == g.condition_type) {
            None => {
                Some(format!("corresponding condition of pod readiness gate {:?} does not exist.", g.condition_type))
            }
            Some(c) if c.status != "True" => Some(format!(
                "the status of pod readiness gate {:?} is not \"True\", but {}",
                g.condition_type, c.status
            )),
            Some(_) => None,
        })
        .collect()
}

/// The pod's QoS class (k8s.io/kubernetes pkg/apis/core/helper/qos): Guaranteed when every
/// container has cpu and memory limits equal to its requests, BestEffort when none has any,
/// Burstable otherwise.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else { return "BestEffort" };
    let all = spec.init_containers.iter().flatten().chain(spec.containers.iter());
    let mut any = false;
    let mut guaranteed = true;
    for c in all {
        let r = c.resources.as_ref();
        let req = r.and_then(|r| r.requests.clone()).unwrap_or_default();
        let lim = r.and_then(|r| r.limits.clone()).unwrap_or_default();
        let relevant = |k: &String| k == "cpu" || k == "memory";
        if req.keys().chain(lim.keys()).any(relevant) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            match (lim.get(res), req.get(res)) {
                (Some(l), Some(q)) if l == q => {}
                (Some(_), None) => {} // requests default to limits
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;

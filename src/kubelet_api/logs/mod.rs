//! `/containerLogs/{namespace}/{pod}/{container}`: a container's output from the journal.
//!
//! Which lines: those journald stamped with the container's `VKS_POD_UID` and `VKS_CONTAINER`
//! (the unit's `LogExtraFields`) *and* the run's `_SYSTEMD_INVOCATION_ID` — never those of an
//! earlier pod with the same name, nor of another run. The last lines of a run that ended
//! quickly may lack the invocation ID: they are the run's when they fall in its window (see
//! [`journal::Run`]), which is why a run that ended is read by its unit and filtered here. The
//! current run is the container status's `containerID` (`systemd://<InvocationID>`), or the
//! unit's InvocationID while the status lags; `previous=true` takes
//! `lastState.terminated.containerID`. stdout and stderr share one journal stream, so their
//! order is kept.
//!
//! How: the lines so far come from one read of the journal files ([`crate::journal`], vks's own
//! reader in a child process); with `follow=true` and a running container, new lines come
//! through the shared follower (`hub.rs`, `journalctl -f`) until the run ends, or until the
//! client goes away.

pub mod hub;
pub mod options;
mod stream;

use std::sync::Arc;

use async_trait::async_trait;
use hyper::{Response, StatusCode};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use self::options::LogOptions;
use super::body::{self, Body};
use super::pods::PodSource;
use crate::journal;
use crate::systemd::{ActiveState, Systemd, SystemdError};

/// Whether a container's run is still going, from systemd.
#[async_trait]
pub trait Runs: Send + Sync + 'static {
    /// Whether `unit` is in run `invocation` and its process still runs (or is starting or
    /// stopping). Unknown (systemd unreachable): true, so that a follow is not cut short.
    async fn is_running(&self, unit: &str, invocation: &str) -> bool;
    /// The current run of `unit` if the unit belongs to pod `pod_uid`.
    async fn current_run(&self, unit: &str, pod_uid: &str) -> Option<String>;
}

/// [`Runs`] asking systemd.
pub struct SystemdRuns(pub Arc<dyn Systemd>);

#[async_trait]
impl Runs for SystemdRuns {
    async fn is_running(&self, unit: &str, invocation: &str) -> bool {
        match self.0.status(unit).await {
            Ok(s) => {
                s.invocation_id == invocation
                    && (s.main_pid != 0
                        || matches!(s.active_state, ActiveState::Activating | ActiveState::Deactivating))
            }
            Err(SystemdError::NoSuchUnit(_)) => false,
            Err(e) => {
                log::debug!("kubelet API: reading {unit} for a log follow: {e}");
                true
            }
        }
    }

    async fn current_run(&self, unit: &str, pod_uid: &str) -> Option<String> {
        let file = self.0.read_unit_file(unit).await.ok()??;
        let meta = crate::unit::meta::UnitMeta::parse(&file)?;
        if meta.pod_uid != pod_uid {
            return None;
        }
        let s = self.0.status(unit).await.ok()?;
        (!s.invocation_id.is_empty()).then_some(s.invocation_id)
    }
}

/// The run whose lines are wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Pod UID.
    pub pod_uid: String,
    /// Container name.
    pub container: String,
    /// The run's InvocationID.
    pub invocation: String,
    /// The container's unit.
    pub unit: String,
    /// When the run started (µs since the epoch, 0 unknown), from the container status.
    pub started_us: u64,
    /// When the next run started, for a previous run.
    pub until_us: Option<u64>,
}

impl Target {
    /// The run, as its lines are found in the journal.
    pub fn run(&self) -> journal::Run {
        journal::Run {
            unit: self.unit.clone(),
            pod_uid: self.pod_uid.clone(),
            invocation: self.invocation.clone(),
            started_us: self.started_us,
            until_us: self.until_us,
        }
    }
}

/// The container's status, wherever it is listed.
fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let st = pod.status.as_ref()?;
    [&st.container_statuses, &st.init_container_statuses, &st.ephemeral_container_statuses]
        .into_iter()
        .flatten()
        .flatten()
        .find(|s| s.name == name)
}

fn has_container(pod: &Pod, name: &str) -> bool {
    let Some(spec) = &pod.spec else { return false };
    spec.containers.iter().any(|c| c.name == name)
        || spec.init_containers.iter().flatten().any(|c| c.name == name)
        || spec.ephemeral_containers.iter().flatten().any(|c| c.name == name)
}

/// The window of the run (`previous` or current) in the journal: its start and, for the
/// previous run, the current run's start (status times are whole seconds). While a container
/// waits to restart, its current run is the one that ended last, as its `containerID` says.
pub fn run_window(pod: &Pod, container: &str, previous: bool) -> (u64, Option<u64>) {
    let us = |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.map(|t| u64::try_from(t.0.as_microsecond()).unwrap_or(0))
    };
    let Some(s) = container_status(pod, container) else { return (0, None) };
    let current = s.state.as_ref().and_then(|st| {
        us(st.running.as_ref().and_then(|r| r.started_at.as_ref()))
            .or_else(|| us(st.terminated.as_ref().and_then(|t| t.started_at.as_ref())))
    });
    let prev = s.last_state.as_ref().and_then(|l| us(l.terminated.as_ref()?.started_at.as_ref()));
    match (previous, current) {
        (true, _) => (prev.unwrap_or(0), current),
        (false, Some(cur)) => (cur, None),
        // Waiting to restart: the current run is the one that ended last.
        (false, None) => (prev.unwrap_or(0), None),
    }
}

fn invocation_of(container_id: Option<&String>) -> Option<String> {
    container_id.and_then(|id| id.strip_prefix("systemd://")).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Why a request cannot be served, with the kubelet's status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub StatusCode, pub String);

/// Picks the run (pure): the status's current or previous container ID. `Ok(None)` for the
/// current run when the status has no container ID yet (the caller asks systemd).
pub fn pick_run(pod: &Pod, container: &str, previous: bool) -> Result<Option<String>, Refusal> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    if !has_container(pod, container) {
        return Err(Refusal(StatusCode::NOT_FOUND, format!("container {container:?} not found in pod {pod_name:?}")));
    }
    let status = container_status(pod, container);
    if previous {
        let prev = status.and_then(|s| s.last_state.as_ref()?.terminated.as_ref()?.container_id.as_ref());
        return match invocation_of(prev) {
            Some(inv) => Ok(Some(inv)),
            None => Err(Refusal(
                StatusCode::BAD_REQUEST,
                format!("previous terminated container {container:?} in pod {pod_name:?} not found"),
            )),
        };
    }
    Ok(invocation_of(status.and_then(|s| s.container_id.as_ref())))
}

/// Why a container has no run yet, as the kubelet words it.
fn waiting(pod: &Pod, container: &str) -> Refusal {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    let reason = container_status(pod, container)
        .and_then(|s| s.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .unwrap_or_else(|| "ContainerCreating".into());
    Refusal(
        StatusCode::BAD_REQUEST,
        format!("container {container:?} in pod {pod_name:?} is waiting to start: {reason}"),
    )
}

/// The `/containerLogs` handler.
pub struct Logs {
    pods: Arc<dyn PodSource>,
    runs: Arc<dyn Runs>,
    hub: hub::Hub,
}

impl Logs {
    /// Serves logs of the pods `pods` knows, runs as `runs` tells.
    pub fn new(pods: Arc<dyn PodSource>, runs: Arc<dyn Runs>) -> Logs {
        Logs { pods, runs, hub: hub::Hub::default() }
    }

    /// Finds the run `namespace/pod/container` (with `opts.previous`) names.
    pub async fn target(&self, namespace: &str, pod: &str, container: &str, previous: bool) -> Result<Target, Refusal> {
        let p = match self.pods.get(namespace, pod).await {
            Ok(Some(p)) => p,
            Ok(None) => return Err(Refusal(StatusCode::NOT_FOUND, format!("pod {namespace}/{pod} does not exist"))),
            Err(e) => return Err(Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.0)),
        };
        let pod_uid = p.metadata.uid.clone().unwrap_or_default();
        let unit = crate::unit::name::unit_name(namespace, pod, container);
        let invocation = match pick_run(&p, container, previous)? {
            Some(inv) => inv,
            None => self.runs.current_run(&unit, &pod_uid).await.ok_or_else(|| waiting(&p, container))?,
        };
        let (started_us, until_us) = run_window(&p, container, previous);
        Ok(Target { pod_uid, container: container.to_owned(), invocation, unit, started_us, until_us })
    }

    /// Serves `/containerLogs/<rest>` with `query`.
    pub async fn serve(self: &Arc<Self>, rest: &str, query: Option<&str>) -> Response<Body> {
        let parts: Vec<&str> = rest.split('/').collect();
        let [ns, pod, container] = parts[..] else {
            return body::text(StatusCode::NOT_FOUND, format!("404 page not found: /containerLogs/{rest}"));
        };
        if [ns, pod, container].iter().any(|s| s.is_empty()) {
            return body::text(StatusCode::NOT_FOUND, format!("404 page not found: /containerLogs/{rest}"));
        }
        let opts = match LogOptions::parse(query, std::time::SystemTime::now()) {
            Ok(o) => o,
            Err(e) => return body::text(StatusCode::BAD_REQUEST, e),
        };
        let target = match self.target(ns, pod, container, opts.previous).await {
            Ok(t) => t,
            Err(Refusal(code, msg)) => return body::text(code, msg),
        };
        let (tx, out) = body::channel(4);
        tokio::spawn(stream::run(self.clone(), target, opts, tx));
        body::typed("text/plain", out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "init"}]},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn runs_come_from_the_container_status() {
        let p = pod(serde_json::json!({
            "containerStatuses": [{"name": "app", "image": "", "imageID": "", "ready": true, "restartCount": 1,
                "containerID": "systemd://cur",
                "lastState": {"terminated": {"exitCode": 3, "containerID": "systemd://prev"}}}],
            "initContainerStatuses": [{"name": "init", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                "containerID": "systemd://i1"}]
        }));
        assert_eq!(pick_run(&p, "app", false), Ok(Some("cur".into())));
        assert_eq!(pick_run(&p, "app", true), Ok(Some("prev".into())));
        assert_eq!(pick_run(&p, "init", false), Ok(Some("i1".into())));
        let windowed = pod(serde_json::json!({
            "containerStatuses": [{"name": "app", "image": "", "imageID": "", "ready": true, "restartCount": 1,
                "state": {"running": {"startedAt": "2024-05-01T10:00:20Z"}},
                "lastState": {"terminated": {"exitCode": 3, "startedAt": "2024-05-01T10:00:00Z"}}}]
        }));
        assert_eq!(run_window(&windowed, "app", false), (1_714_557_620_000_000, None));
        assert_eq!(run_window(&windowed, "app", true), (1_714_557_600_000_000, Some(1_714_557_620_000_000)));
        assert_eq!(run_window(&windowed, "init", false), (0, None));
        let backing_off = pod(serde_json::json!({
            "containerStatuses": [{"name": "app", "image": "", "imageID": "", "ready": false, "restartCount": 2,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 3, "startedAt": "2024-05-01T10:00:00Z"}}}]
        }));
        assert_eq!(run_window(&backing_off, "app", false), (1_714_557_600_000_000, None));
        let e = pick_run(&p, "init", true).unwrap_err();
        assert_eq!(
            e,
            Refusal(StatusCode::BAD_REQUEST, "previous terminated container \"init\" in pod \"p\" not found".into())
        );
        let e = pick_run(&p, "nope", false).unwrap_err();
        assert_eq!(e.0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn a_container_without_a_run_is_waiting() {
        let p = pod(serde_json::json!({
            "containerStatuses": [{"name": "app", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImagePull"}}}]
        }));
        assert_eq!(pick_run(&p, "app", false), Ok(None));
        assert_eq!(waiting(&p, "app").1, "container \"app\" in pod \"p\" is waiting to start: ErrImagePull");
        assert_eq!(waiting(&p, "init").1, "container \"init\" in pod \"p\" is waiting to start: ContainerCreating");
    }
}

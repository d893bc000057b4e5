//! `vks pods` and `vks logs`: what this node runs, read the way the daemon reads it and without
//! it: the vks units in systemd's unit directory (their `[X-Kubernetes]` sections) and their
//! state over D-Bus, the status records the daemon keeps ([`crate::pods::local`]), and the
//! static pod manifests (read with the daemon's parser, so invalid files are shown too).
//!
//! - this file: gathering ([`gather`]) into [`PodView`]s;
//! - `table.rs`: the table `vks pods` prints (pure);
//! - `logs.rs`: `vks logs`, which runs `journalctl` on the journal fields the units carry.

pub mod logs;
mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::PodStatus;

use crate::config::Config;
use crate::pods::local::{STATUS_DIR, read_records};
use crate::static_pods::{self, Invalid};
use crate::systemd::dbus::DbusSystemd;
use crate::systemd::{ActiveState, ExitKind, Systemd, UNIT_DIR, UnitStatus};
use crate::unit::{ContainerKind, UnitMeta, name::PREFIX};
pub use table::render;

/// One container of a pod, as far as the node knows it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContainerView {
    /// Name.
    pub name: String,
    /// Init, sidecar or app.
    pub kind: Option<ContainerKind>,
    /// Its unit, when it has one.
    pub unit: Option<String>,
    /// What systemd says about the unit.
    pub unit_status: Option<UnitStatus>,
    /// Restarts (from the recorded status).
    pub restarts: i32,
    /// Ready (from the recorded status).
    pub ready: bool,
    /// The recorded state: `Running`, a waiting reason, `Completed`, `Error` ...
    pub recorded: Option<String>,
}

impl ContainerView {
    /// Its state now: systemd's word for a running unit, else the recorded state, else what
    /// the unit's exit says.
    pub fn state(&self) -> String {
        let s = self.unit_status.as_ref();
        if s.is_some_and(|s| s.main_pid != 0 && s.active_state == ActiveState::Active) {
            return "Running".into();
        }
        if let Some(r) = &self.recorded {
            return r.clone();
        }
        match s {
            Some(s) if s.exit_kind == ExitKind::Exited && s.exit_status == 0 => "Completed".into(),
            Some(s) if s.exit_kind == ExitKind::Exited => format!("Error (exit {})", s.exit_status),
            Some(s) if matches!(s.exit_kind, ExitKind::Killed | ExitKind::Dumped) => {
                format!("Error (signal {})", s.exit_status)
            }
            _ => "Waiting".into(),
        }
    }
}

/// One pod of the node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// The manifest of a static pod.
    pub manifest: Option<PathBuf>,
    /// Containers, init containers first.
    pub containers: Vec<ContainerView>,
    /// The recorded status.
    pub status: Option<PodStatus>,
}

impl PodView {
    /// The phase: the recorded one, else what the units say.
    pub fn phase(&self) -> String {
        if let Some(p) = self.status.as_ref().and_then(|s| s.phase.clone()) {
            return p;
        }
        let apps: Vec<&ContainerView> =
            self.containers.iter().filter(|c| c.kind.is_none_or(|k| k == ContainerKind::App)).collect();
        if apps.iter().any(|c| c.state() == "Running") {
            "Running".into()
        } else if !apps.is_empty() && apps.iter().all(|c| c.state() == "Completed") {
            "Succeeded".into()
        } else {
            "Pending".into()
        }
    }

    /// When the pod started, µs since the epoch: the recorded start time, else the earliest
    /// start of a unit.
    pub fn started_usec(&self) -> Option<u64> {
        if let Some(t) = self.status.as_ref().and_then(|s| s.start_time.as_ref()) {
            return u64::try_from(t.0.as_microsecond()).ok();
        }
        self.containers.iter().filter_map(|c| c.unit_status.as_ref()).map(|s| s.started_usec).filter(|t| *t > 0).min()
    }
}

/// What `vks pods` shows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Listing {
    /// The node.
    pub node: String,
    /// Pods, by namespace and name.
    pub pods: Vec<PodView>,
    /// Manifest files that are not run.
    pub invalid: Vec<Invalid>,
    /// The manifest directory.
    pub manifest_dir: PathBuf,
    /// Whether vks.service is running (`None`: unknown).
    pub daemon_active: Option<bool>,
}

/// The summary of a recorded container state: the kubelet's words.
fn recorded_state(s: &k8s_openapi::api::core::v1::ContainerStatus) -> Option<String> {
    let st = s.state.as_ref()?;
    if st.running.is_some() {
        return Some("Running".into());
    }
    if let Some(w) = &st.waiting {
        return Some(w.reason.clone().unwrap_or_else(|| "Waiting".into()));
    }
    let t = st.terminated.as_ref()?;
    Some(match (t.reason.as_deref(), t.exit_code) {
        (Some("Completed"), _) | (None, 0) => "Completed".into(),
        (Some(r), code) => format!("{r} (exit {code})"),
        (None, code) => format!("Error (exit {code})"),
    })
}

/// Reads what the node runs: units and their state, records, manifests.
pub async fn gather(config: &Config) -> Result<Listing> {
    let systemd = DbusSystemd::connect(None, Path::new(UNIT_DIR))
        .await
        .context("connecting to systemd over D-Bus (vks pods needs root)")?;
    let mut pods: BTreeMap<String, PodView> = BTreeMap::new();
    let names = systemd.list_unit_files(PREFIX).await.context("listing the vks units")?;
    for unit in names {
        let Ok(Some(text)) = systemd.read_unit_file(&unit).await else { continue };
        let Some(meta) = UnitMeta::parse(&text) else { continue };
        let status = systemd.status(&unit).await.ok();
        let p = pods.entry(meta.pod_uid.clone()).or_insert_with(|| PodView {
            namespace: meta.namespace.clone(),
            name: meta.pod.clone(),
            uid: meta.pod_uid.clone(),
            ..PodView::default()
        });
        p.containers.push(ContainerView {
            name: meta.container.clone(),
            kind: Some(meta.kind),
            unit: Some(unit),
            unit_status: status,
            ..ContainerView::default()
        });
    }
    for r in read_records(Path::new(STATUS_DIR)) {
        let p = pods.entry(r.uid.clone()).or_insert_with(|| PodView {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
            ..PodView::default()
        });
        p.manifest = p.manifest.take().or(r.manifest);
        p.status = r.status;
    }
    let dir = config.static_pods.manifest_dir.clone();
    let node = config.node.name.clone();
    let files = tokio::task::spawn_blocking(move || static_pods::read_dir(&dir, &node))
        .await
        .context("reading the manifests")?
        .with_context(|| format!("reading {}", config.static_pods.manifest_dir.display()))?;
    let snap = static_pods::snapshot(files, &mut BTreeMap::new());
    for sp in &snap.pods {
        let id = sp.id();
        let p = pods.entry(id.uid.clone()).or_insert_with(|| PodView {
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            uid: id.uid.clone(),
            ..PodView::default()
        });
        p.manifest = Some(sp.file.clone());
        for (c, kind) in crate::unit::pod_containers(sp.pod.spec.as_ref().unwrap_or(&Default::default())) {
            if !p.containers.iter().any(|v| v.name == c.name) {
                p.containers.push(ContainerView { name: c.name.clone(), kind: Some(kind), ..ContainerView::default() });
            }
        }
    }
    for p in pods.values_mut() {
        merge_recorded(p);
    }
    let daemon_active = systemd.status("vks.service").await.ok().map(|s| s.active_state == ActiveState::Active);
    let mut pods: Vec<PodView> = pods.into_values().collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name, &a.uid).cmp(&(&b.namespace, &b.name, &b.uid)));
    Ok(Listing {
        node: config.node.name.clone(),
        pods,
        invalid: snap.invalid,
        manifest_dir: config.static_pods.manifest_dir.clone(),
        daemon_active,
    })
}

/// Adds the recorded container statuses (restarts, readiness, states) to the containers.
fn merge_recorded(p: &mut PodView) {
    let Some(status) = p.status.clone() else { return };
    let lists = [
        (status.init_container_statuses, ContainerKind::Init),
        (status.container_statuses, ContainerKind::App),
        (status.ephemeral_container_statuses, ContainerKind::Ephemeral),
    ];
    for (list, kind) in lists {
        for s in list.into_iter().flatten() {
            let c = match p.containers.iter_mut().position(|c| c.name == s.name) {
                Some(i) => &mut p.containers[i],
                None => {
                    p.containers.push(ContainerView { name: s.name.clone(), kind: Some(kind), ..Default::default() });
                    let last = p.containers.len() - 1;
                    &mut p.containers[last]
                }
            };
            c.restarts = s.restart_count;
            c.ready = s.ready;
            c.recorded = recorded_state(&s);
        }
    }
    let order = |k: Option<ContainerKind>| match k {
        Some(ContainerKind::Init | ContainerKind::Sidecar) => 0,
        Some(ContainerKind::Ephemeral) => 2,
        _ => 1,
    };
    p.containers.sort_by_key(|c| order(c.kind));
}

/// `vks pods`: the table, printed.
pub async fn pods(config: &Config, namespace: Option<&str>) -> Result<String> {
    let mut listing = gather(config).await?;
    if let Some(ns) = namespace {
        listing.pods.retain(|p| p.namespace == ns);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default();
    Ok(render(&listing, now))
}

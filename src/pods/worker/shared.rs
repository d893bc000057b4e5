//! What every pod worker shares ([`Shared`]): the outside world behind its traits, the node's
//! context, and which pod owns which unit name.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::api::ApiHealth;
use crate::clock::Clock;
use crate::events::Recorder;
use crate::images::Images;
use crate::pods::api::PodApi;
use crate::systemd::Systemd;
use crate::unit::NodeContext;

/// What every worker shares: the outside world, and which pod owns which unit name.
pub struct Shared {
    /// The API requests of a pod (status, final deletion).
    pub api: Arc<dyn PodApi>,
    /// Events.
    pub events: Arc<dyn Recorder>,
    /// systemd.
    pub systemd: Arc<dyn Systemd>,
    /// Image provider.
    pub images: Arc<dyn Images>,
    /// Wall-clock time.
    pub clock: Clock,
    /// Whether a path is an executable file (the one file-system question of unit planning).
    pub is_executable: fn(&str) -> bool,
    /// Node name and IP.
    pub node: NodeContext,
    /// Where pod directories live.
    pub pod_dir: std::path::PathBuf,
    /// The ConfigMaps, Secrets, tokens and Services pods refer to (issue 12).
    pub objects: Arc<crate::objects::Objects>,
    /// The pods' volumes and env files on the node (issue 12).
    pub volumes: Arc<crate::volumes::Volumes>,
    /// API reachability.
    pub health: Arc<ApiHealth>,
    /// Runs probes and lifecycle hooks.
    pub prober: Arc<dyn crate::probes::Prober>,
    /// The tail of a container's log (for `FallbackToLogsOnError`).
    pub logs: Arc<dyn crate::pods::termination::LogTail>,
    /// Unit name → UID of the pod that owns it; a unit name is used by one pod at a time.
    pub(super) owners: Mutex<HashMap<String, String>>,
    /// Unit names whose pod was removed: systemd may still have them loaded, so a new unit file
    /// under such a name needs a check for `NeedDaemonReload`.
    pub(super) released: Mutex<HashSet<String>>,
    /// Node allocatable, against which pods are admitted (none: no resource check).
    pub(super) allocatable: Option<crate::unit::resources::NodeAllocatable>,
    /// Whether each container's `systemd-analyze security` exposure is reported as an event.
    pub(super) report_exposure: bool,
    /// The node-level slices (`vks.slice` and the QoS slices), as (name, file).
    pub(super) node_slices: Vec<(String, String)>,
    /// What the admitted, not yet finished pods request, by UID.
    pub(super) admitted: Mutex<BTreeMap<String, Admitted>>,
}

/// What an admitted pod holds of node allocatable.
#[derive(Debug, Clone, Default)]
pub(super) struct Admitted {
    pub(super) requests: crate::unit::resources::Amounts,
    pub(super) extended: BTreeMap<String, u64>,
}

impl Shared {
    /// The shared world of the workers; the systemd, images, API and events are given. Probes
    /// and hooks run with [`crate::probes::NodeProber`] (exec through `systemd-run`), logs come
    /// from the journal; both fields may be replaced (tests use fakes).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        api: Arc<dyn PodApi>,
        events: Arc<dyn Recorder>,
        systemd: Arc<dyn Systemd>,
        images: Arc<dyn Images>,
        clock: Clock,
        node: NodeContext,
        pod_dir: std::path::PathBuf,
        health: Arc<ApiHealth>,
    ) -> Shared {
        let exec = Arc::new(crate::systemd::run::SystemdRun::new(systemd.clone(), crate::systemd::UNIT_DIR.as_ref()));
        let prober: Arc<dyn crate::probes::Prober> = match crate::probes::NodeProber::new(exec) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                log::error!("cannot set up the HTTP client of probes ({e}); probes will fail");
                Arc::new(crate::probes::fake::FakeProber::default())
            }
        };
        Shared {
            api,
            events,
            systemd,
            images,
            clock,
            is_executable: crate::images::is_executable,
            node,
            objects: crate::objects::Objects::new(Arc::new(crate::objects::Offline), clock),
            volumes: Arc::new(crate::volumes::Volumes::new(pod_dir.clone(), pod_dir.join(".run"), Vec::new(), clock)),
            pod_dir,
            health,
            prober,
            logs: Arc::new(crate::pods::termination::JournalTail),
            owners: Mutex::default(),
            released: Mutex::default(),
            allocatable: None,
            report_exposure: false,
            node_slices: crate::unit::resources::node_slices(&Default::default(), None),
            admitted: Mutex::default(),
        }
    }

    pub(super) fn claim(&self, unit: &str, uid: &str) -> Result<(), String> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        match owners.get(unit) {
            Some(other) if other != uid => Err(other.clone()),
            _ => {
                owners.insert(unit.to_owned(), uid.to_owned());
                Ok(())
            }
        }
    }

    /// Records the pod named in a unit file found on the node as the owner of that unit, before
    /// any worker runs: a new pod reusing the name (deleted and created again while vks was
    /// down) then waits until the old pod's worker removed the unit, instead of racing it.
    pub fn claim_found(&self, unit: &str, uid: &str) {
        let _ = self.claim(unit, uid);
    }

    pub(super) fn release(&self, unit: &str, uid: &str) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if owners.get(unit).is_some_and(|o| o == uid) {
            owners.remove(unit);
            self.released.lock().unwrap_or_else(|e| e.into_inner()).insert(unit.to_owned());
        }
    }

    pub(super) fn was_released(&self, unit: &str) -> bool {
        self.released.lock().unwrap_or_else(|e| e.into_inner()).remove(unit)
    }
}

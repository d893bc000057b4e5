//! The boundary to systemd: a narrow [`Systemd`] trait, its D-Bus implementation
//! ([`dbus::DbusSystemd`], the only code that speaks D-Bus) and an in-memory fake for tests
//! ([`fake::FakeSystemd`]).
//!
//! Every D-Bus call has a deadline (25 s, as sd-bus), and a lost connection is re-established by
//! [`dbus::DbusSystemd::keep_connected`], which then tells every watcher to re-read its units.
//!
//! vks never edits a unit file in place: files are written whole (atomically) into the unit
//! directory, started by name, and removed after the unit stopped. State is always read back
//! from systemd; nothing here caches it.

pub mod dbus;
pub mod exec;
pub mod fake;
mod local;
pub mod run;

/// Where vks writes its unit files: runtime units, gone after a reboot (vks recreates them
/// from the API), read by systemd without a `daemon-reload` for units it has not loaded yet.
pub const UNIT_DIR: &str = "/run/systemd/system";

use async_trait::async_trait;
pub use nix::sys::signal::Signal;
use tokio::sync::mpsc;

pub use crate::unit::resources::SliceMemory;
pub use crate::unit::security::Ids;

/// `systemd-analyze security`'s verdict on a unit: 0.0 (confined) to 10.0 (exposed).
#[derive(Debug, Clone, PartialEq)]
pub struct Exposure {
    /// The overall exposure level.
    pub score: f32,
    /// systemd's word for it: SAFE, OK, MEDIUM, EXPOSED, UNSAFE.
    pub predicate: String,
}

/// Reads the overall exposure from `systemd-analyze security UNIT` output, whose last line is
/// `→ Overall exposure level for UNIT: 9.6 UNSAFE 😨`.
pub fn parse_exposure(output: &str) -> Option<Exposure> {
    let line = output.lines().rev().find(|l| l.contains("Overall exposure level for"))?;
    let (_, rest) = line.rsplit_once(": ")?;
    let mut words = rest.split_whitespace();
    let score = words.next()?.parse().ok()?;
    let predicate = words.next()?.to_owned();
    Some(Exposure { score, predicate })
}

/// What can go wrong talking to systemd. Callers branch on [`SystemdError::NoSuchUnit`].
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// The connection to the bus is lost; it is being re-established.
    #[error("not connected to systemd over D-Bus (reconnecting)")]
    Disconnected,
    /// The unit is not known to systemd (and has no unit file).
    #[error("unit {0} does not exist")]
    NoSuchUnit(String),
    /// A D-Bus call failed.
    #[error("systemd D-Bus call {call} failed: {source}")]
    Bus {
        /// The method and unit, e.g. `StartUnit(vks.default.web.app.service)`.
        call: String,
        /// The underlying error.
        #[source]
        source: zbus::Error,
    },
    /// Reading or writing a unit file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// `ActiveState` of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActiveState {
    /// Started (for a `RemainAfterExit=yes` service: also after its process exited with 0).
    Active,
    /// Reloading.
    Reloading,
    /// Stopped, or never started.
    #[default]
    Inactive,
    /// Stopped with an error (kept loaded until `ResetFailedUnit`).
    Failed,
    /// Starting.
    Activating,
    /// Stopping.
    Deactivating,
}

impl ActiveState {
    /// Parses systemd's spelling; unknown values count as `Inactive`.
    pub fn parse(s: &str) -> ActiveState {
        match s {
            "active" => ActiveState::Active,
            "reloading" => ActiveState::Reloading,
            "failed" => ActiveState::Failed,
            "activating" => ActiveState::Activating,
            "deactivating" => ActiveState::Deactivating,
            _ => ActiveState::Inactive,
        }
    }
}

/// How the main process of a service ended (`ExecMainCode`, a `CLD_*` code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExitKind {
    /// Not exited (or never ran).
    #[default]
    None,
    /// Exited with a status (`ExecMainStatus` is the exit code).
    Exited,
    /// Killed by a signal (`ExecMainStatus` is the signal number).
    Killed,
    /// Killed by a signal and dumped core.
    Dumped,
}

impl ExitKind {
    /// Maps `CLD_EXITED` (1), `CLD_KILLED` (2) and `CLD_DUMPED` (3).
    pub fn from_code(code: i32) -> ExitKind {
        match code {
            1 => ExitKind::Exited,
            2 => ExitKind::Killed,
            3 => ExitKind::Dumped,
            _ => ExitKind::None,
        }
    }
}

/// What systemd reports about one service unit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitStatus {
    /// `LoadState`: loaded, not-found, bad-setting, error, masked.
    pub load_state: String,
    /// `ActiveState`.
    pub active_state: ActiveState,
    /// `SubState`, e.g. running, exited, dead, failed, start.
    pub sub_state: String,
    /// Service `Result`: success, exit-code, signal, core-dump, timeout, oom-kill, ...
    pub result: String,
    /// How the main process ended.
    pub exit_kind: ExitKind,
    /// Exit code, or signal number when killed.
    pub exit_status: i32,
    /// When the main process was started, µs since the epoch (0 = never).
    pub started_usec: u64,
    /// When the main process exited, µs since the epoch (0 = not exited).
    pub exited_usec: u64,
    /// PID of the main process (in systemd's PID namespace), 0 when none.
    pub main_pid: u32,
    /// `InvocationID` as hex (changes with every start).
    pub invocation_id: String,
    /// The unit file changed on disk since it was loaded.
    pub need_daemon_reload: bool,
}

/// Which processes of a unit a signal goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillWhom {
    /// The main process only.
    Main,
    /// Every process of the unit's cgroup.
    All,
}

/// New values of some unit properties, as a `PropertiesChanged` signal carries them. systemd
/// sends every property vks reads with its value (`EMITS_CHANGE`), the Unit and the Service
/// interface in separate signals, each with the full set of that interface.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitDelta {
    /// `ActiveState`.
    pub active_state: Option<ActiveState>,
    /// `SubState`.
    pub sub_state: Option<String>,
    /// `InvocationID` (hex).
    pub invocation_id: Option<String>,
    /// Service `Result`.
    pub result: Option<String>,
    /// `ExecMainCode`.
    pub exit_kind: Option<ExitKind>,
    /// `ExecMainStatus`.
    pub exit_status: Option<i32>,
    /// `ExecMainStartTimestamp`.
    pub started_usec: Option<u64>,
    /// `ExecMainExitTimestamp`.
    pub exited_usec: Option<u64>,
    /// `MainPID`.
    pub main_pid: Option<u32>,
    /// A property vks reads was only invalidated (no value): the status must be re-read.
    pub incomplete: bool,
}

impl UnitDelta {
    /// Applies the new values to a known status.
    pub fn apply(&self, s: &mut UnitStatus) {
        if let Some(v) = self.active_state {
            s.active_state = v;
        }
        if let Some(v) = &self.sub_state {
            s.sub_state.clone_from(v);
        }
        if let Some(v) = &self.invocation_id {
            s.invocation_id.clone_from(v);
        }
        if let Some(v) = &self.result {
            s.result.clone_from(v);
        }
        if let Some(v) = self.exit_kind {
            s.exit_kind = v;
        }
        if let Some(v) = self.exit_status {
            s.exit_status = v;
        }
        if let Some(v) = self.started_usec {
            s.started_usec = v;
        }
        if let Some(v) = self.exited_usec {
            s.exited_usec = v;
        }
        if let Some(v) = self.main_pid {
            s.main_pid = v;
        }
    }
}

/// A change notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitEvent {
    /// Properties of the unit with this name changed.
    Changed(String, Box<UnitDelta>),
    /// Signals may have been lost (reconnect, queue overflow): re-read everything.
    Resync,
}

/// The operations vks needs from systemd, and nothing more.
#[async_trait]
pub trait Systemd: Send + Sync + 'static {
    /// systemd's version string, e.g. `252.38-1~deb12u1`.
    async fn version(&self) -> Result<String, SystemdError>;
    /// Writes (atomically) or replaces a unit file in the unit directory.
    async fn write_unit(&self, name: &str, content: &str) -> Result<(), SystemdError>;
    /// Removes a unit file; a missing file is not an error.
    async fn remove_unit_file(&self, name: &str) -> Result<(), SystemdError>;
    /// Reads a unit file of the unit directory, `None` when it does not exist.
    async fn read_unit_file(&self, name: &str) -> Result<Option<String>, SystemdError>;
    /// Names of the unit files in the unit directory that start with `prefix`.
    async fn list_unit_files(&self, prefix: &str) -> Result<Vec<String>, SystemdError>;
    /// Names of the slice files (`*.slice`) in the unit directory that start with `prefix`.
    async fn list_slice_files(&self, prefix: &str) -> Result<Vec<String>, SystemdError>;
    /// Changes cgroup properties of a loaded unit or slice at once (`SetUnitProperties` with
    /// runtime=true: kept in /run until the unit file is written again), e.g. for an in-place
    /// resize. Values are systemd's `t` properties (`MemoryMax`, `CPUQuotaPerSecUSec`,
    /// `CPUWeight`, `MemoryLow`), `u64::MAX` for infinity.
    async fn set_unit_properties(&self, name: &str, props: &[(&'static str, u64)]) -> Result<(), SystemdError>;
    /// The memory peak and limit of a slice's cgroup on cgroup v1, to tell an OOM kill (systemd
    /// 252 reports `oom-kill` only on cgroup v2); `None` on cgroup v2 or without a cgroup.
    async fn slice_memory(&self, slice: &str) -> Result<Option<SliceMemory>, SystemdError>;
    /// Resets the memory peak of a slice's cgroup (cgroup v1; nothing to do on v2).
    async fn reset_slice_peak(&self, slice: &str) -> Result<(), SystemdError>;
    /// The UID of a user in the node's user database.
    async fn user_id(&self, name: &str) -> Result<Option<u32>, SystemdError>;
    /// Makes numeric IDs known to the node's user database (systemd runs services only as known
    /// users): missing ones are registered as `vks-<id>` records in systemd's userdb
    /// (/run/userdb, gone after a reboot).
    async fn ensure_ids(&self, ids: &Ids) -> Result<(), SystemdError>;
    /// How exposed a loaded unit is (`systemd-analyze security`).
    async fn exposure(&self, name: &str) -> Result<Exposure, SystemdError>;
    /// `daemon-reload`.
    async fn reload(&self) -> Result<(), SystemdError>;
    /// Queues a start job (replace mode); returns once queued.
    async fn start(&self, name: &str) -> Result<(), SystemdError>;
    /// Queues a restart job (replace mode): a new run of a unit that ran before.
    async fn restart(&self, name: &str) -> Result<(), SystemdError>;
    /// Queues a stop job (replace mode); returns once queued.
    async fn stop(&self, name: &str) -> Result<(), SystemdError>;
    /// Sends a signal.
    async fn kill(&self, name: &str, whom: KillWhom, signal: Signal) -> Result<(), SystemdError>;
    /// Forgets a failed state so the unit can be unloaded.
    async fn reset_failed(&self, name: &str) -> Result<(), SystemdError>;
    /// Current state of a unit (loading it if needed).
    async fn status(&self, name: &str) -> Result<UnitStatus, SystemdError>;
    /// Disables and masks (persistently) the named units of a package, then reloads: only vks
    /// runs what a package vks installed provides.
    async fn disable_and_mask(&self, names: &[String]) -> Result<(), SystemdError>;
    /// Starts delivering change notifications for units whose name starts with `prefix`. After
    /// a reconnection (D-Bus or systemd restarted) the receiver gets [`UnitEvent::Resync`]: every
    /// unit's state must be read again.
    async fn watch(&self, prefix: &str) -> Result<mpsc::UnboundedReceiver<UnitEvent>, SystemdError>;
}

/// Escapes a unit name into the last element of its D-Bus object path, as systemd's
/// `bus_label_escape` does: every byte but ASCII letters and digits (and a leading digit)
/// becomes `_xx`.
pub fn unit_path(name: &str) -> String {
    let mut out = String::from("/org/freedesktop/systemd1/unit/");
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// The inverse of [`unit_path`] for the last path element; `None` if it is not one.
pub fn unit_name_from_path(path: &str) -> Option<String> {
    let label = path.strip_prefix("/org/freedesktop/systemd1/unit/")?;
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = label.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure_lines() {
        let out = "  NAME  DESCRIPTION  EXPOSURE\n✗ UMask= Files created by service are world-readable  0.1\n\n\
                   → Overall exposure level for vks.a.b.c.service: 2.9 OK 🙂\n";
        assert_eq!(parse_exposure(out), Some(Exposure { score: 2.9, predicate: "OK".into() }));
        assert_eq!(parse_exposure("Unit x.service not found, cannot analyze."), None);
    }

    #[test]
    fn object_paths_round_trip() {
        let name = "vks.default.web-0.app.service";
        let p = unit_path(name);
        assert_eq!(p, "/org/freedesktop/systemd1/unit/vks_2edefault_2eweb_2d0_2eapp_2eservice");
        assert_eq!(unit_name_from_path(&p).as_deref(), Some(name));
        assert_eq!(unit_path("1a.service"), "/org/freedesktop/systemd1/unit/_31a_2eservice");
        assert_eq!(unit_name_from_path("/org/freedesktop/systemd1/unit/_31a_2eservice").as_deref(), Some("1a.service"));
        assert_eq!(unit_name_from_path("/org/freedesktop/systemd1/job/1"), None);
        assert_eq!(unit_name_from_path("/org/freedesktop/systemd1/unit/bad_z"), None);
    }
}

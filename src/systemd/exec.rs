//! Transient units for `kubectl exec`: a command runs as its own transient service started over
//! D-Bus (`StartTransientUnit`), with its standard streams passed as file descriptors
//! (`StandardInputFileDescriptor=`, ...) or a terminal (`TTYPath=`), and the container's own
//! settings applied through a drop-in written next to it (so they are read by systemd's own
//! unit-file parser, exactly as in the container's unit). `RemainAfterExit=yes` keeps the exit
//! status readable until vks stopped the unit, which also ends whatever the command started.
//!
//! The same start serves the exec helper ([`crate::exec_helper`]): its stdin is a socket
//! ([`ExecStdio::Socket`]), it is bound to the container's unit and its unit is collected when it
//! exits.
//!
//! Units are named `vks-exec-<16 hex digits>.service` or `vks-exec-helper-<16 hex
//! digits>.service` (never `vks.*`, the prefix of container units); [`ExecUnits::sweep`] stops
//! what a previous vks left behind.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use zbus::fdo::PropertiesProxy;
use zbus::names::InterfaceName;
use zbus::proxy::CacheProperties;
use zbus::{Connection, OwnedVariant, Variant};
use zbus_systemd::systemd1::ManagerProxy;

use super::{ExitKind, SystemdError, unit_path};

/// Prefix of exec units.
pub const PREFIX: &str = "vks-exec-";

/// The standard streams of an exec unit.
pub enum ExecStdio {
    /// Pipes or sockets (vks holds the other ends).
    Fds {
        /// Read end for stdin (or /dev/null).
        stdin: OwnedFd,
        /// Write end for stdout.
        stdout: OwnedFd,
        /// Write end for stderr.
        stderr: OwnedFd,
    },
    /// A terminal: the slave of a pty vks holds the master of. systemd opens it and makes it the
    /// controlling terminal of the command.
    Tty {
        /// `/dev/pts/N`.
        path: String,
    },
    /// A socket as stdin (the exec helper's connection to vks); stdout and stderr go to the
    /// journal.
    Socket(OwnedFd),
}

/// What to start.
pub struct ExecSpec {
    /// Unit name (`vks-exec-*.service`).
    pub name: String,
    /// `Description=`.
    pub description: String,
    /// Absolute path of the program.
    pub path: String,
    /// Its arguments, `argv[0]` included; passed as they are (no `$VAR` expansion).
    pub argv: Vec<String>,
    /// Standard streams.
    pub stdio: ExecStdio,
    /// `Slice=` (the container unit's).
    pub slice: Option<String>,
    /// Environment set before the container's own (which may override it), `KEY=VALUE`.
    pub environment: Vec<String>,
    /// Drop-in text with the container's settings (`[Unit]` and `[Service]` sections).
    pub dropin: String,
    /// A unit this one stops with (`BindsTo=` and `After=`): the container's, for the exec
    /// helper.
    pub binds_to: Option<String>,
}

/// Why a command could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// systemd could not set up or execute the program.
    #[error("exec unit {unit}: {why}")]
    Start {
        /// The exec unit.
        unit: String,
        /// What systemd reported.
        why: String,
    },
    /// Talking to systemd or writing the drop-in failed.
    #[error(transparent)]
    Systemd(#[from] SystemdError),
}

/// Starts and watches exec units.
pub struct ExecUnits {
    conn: Connection,
    manager: ManagerProxy<'static>,
    unit_dir: PathBuf,
}

fn bus(call: impl Into<String>) -> impl FnOnce(zbus::Error) -> SystemdError {
    let call = call.into();
    move |source| SystemdError::Bus { call, source }
}

fn variant<'a>(v: impl Into<Variant<'a>>) -> Result<OwnedVariant, SystemdError> {
    OwnedVariant::try_from(v.into()).map_err(bus("encoding a StartTransientUnit property"))
}

fn fd(f: OwnedFd) -> Result<OwnedVariant, SystemdError> {
    OwnedVariant::try_from(zbus::Fd::from(f)).map_err(bus("passing a file descriptor"))
}

/// What systemd's exit statuses 200..=243 mean (systemd.exec(5), "Process Exit Codes"), for
/// the errors vks reports when a command could not be started.
fn exec_failure(status: i32) -> &'static str {
    match status {
        200 => "changing to the working directory failed",
        201 => "setting the nice level failed",
        202 => "closing file descriptors failed",
        203 => "the program could not be executed",
        204 => "out of memory",
        205 => "setting resource limits failed",
        206 => "setting the OOM score failed",
        208 => "setting up standard input failed",
        209 => "setting up standard output failed",
        214 => "setting the scheduling policy failed",
        216 => "looking up the group failed",
        217 => "looking up the user failed",
        218 => "dropping capabilities failed",
        226 => "setting up the namespaces (sandboxing, mounts) failed",
        227 => "setting no-new-privileges failed",
        228 => "installing the system call filter failed",
        233 => "setting up the runtime directory failed",
        238 => "setting up the state, cache or logs directory failed",
        _ => "setting up the process failed",
    }
}

impl ExecUnits {
    /// Connects to the system bus and subscribes to systemd's signals. `unit_dir` is where
    /// drop-ins are written (`/run/systemd/system`).
    pub async fn connect(unit_dir: &Path) -> Result<ExecUnits, SystemdError> {
        let conn = Connection::system().await.map_err(bus("connect(system bus)"))?;
        let manager = ManagerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(bus("Manager proxy"))?;
        manager.subscribe().await.map_err(bus("Subscribe"))?;
        Ok(ExecUnits { conn, manager, unit_dir: unit_dir.to_owned() })
    }

    fn dropin_dir(&self, name: &str) -> PathBuf {
        self.unit_dir.join(format!("{name}.d"))
    }

    /// Stops the exec units and removes the drop-ins a previous vks left (its clients are gone).
    pub async fn sweep(&self) {
        let pattern = format!("{PREFIX}*");
        if let Ok(units) = self.manager.list_units_by_patterns(Vec::new(), vec![pattern]).await {
            for u in units {
                log::info!("stopping exec unit {} left from before (its client is gone)", u.0);
                let _ = self.manager.stop_unit(u.0.clone(), "replace".into()).await;
                let _ = self.manager.reset_failed_unit(u.0).await;
            }
        }
        if let Ok(dir) = std::fs::read_dir(&self.unit_dir) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(PREFIX) && name.ends_with(".service.d") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }

    /// Starts a command; returns once it runs (its program was executed), or why it could not.
    pub async fn start(&self, spec: ExecSpec) -> Result<ExecHandle, ExecError> {
        let name = spec.name.clone();
        let dir = self.dropin_dir(&name);
        let io = |action, source| SystemdError::Io { action, path: dir.display().to_string(), source };
        std::fs::create_dir_all(&dir).map_err(|e| io("creating", e))?;
        std::fs::write(dir.join("50-container.conf"), &spec.dropin).map_err(|e| io("writing a drop-in in", e))?;
        let handle = ExecHandle {
            name: name.clone(),
            manager: self.manager.clone(),
            props: PropertiesProxy::builder(&self.conn)
                .destination("org.freedesktop.systemd1")
                .path(unit_path(&name))
                .cache_properties(CacheProperties::No)
                .build()
                .await
                .map_err(bus("Properties proxy"))?,
            dropin_dir: dir,
            done: false,
        };
        match self.start_unit(spec).await {
            Ok(()) => Ok(handle),
            Err(e) => {
                let mut handle = handle;
                let why = match handle.service_state().await {
                    // Type=exec calls the start failed when the program already exited before
                    // systemd saw it start; it ran, and its exit status is the command's. (Only
                    // statuses 200-243 are systemd's own: failures to set the process up.)
                    Ok(s) if s.exit_kind != ExitKind::None && !(200..=243).contains(&s.exit_status) => {
                        return Ok(handle);
                    }
                    Ok(s) if s.exit_status >= 200 => {
                        format!("{} (systemd exit status {})", exec_failure(s.exit_status), s.exit_status)
                    }
                    Ok(s) => format!("systemd reports {}: {e}", s.result),
                    Err(_) => e.to_string(),
                };
                handle.release().await;
                Err(ExecError::Start { unit: name, why })
            }
        }
    }

    async fn start_unit(&self, spec: ExecSpec) -> Result<(), SystemdError> {
        let name = spec.name.clone();
        let mut props: Vec<(String, OwnedVariant)> = vec![
            ("Description".into(), variant(spec.description.as_str())?),
            ("Type".into(), variant("exec")?),
            // Keeps the command's exit status readable; an exec helper reports its commands'
            // itself, and its unit goes away when it exits (e.g. with the vks that started it).
            ("RemainAfterExit".into(), variant(!matches!(spec.stdio, ExecStdio::Socket(_)))?),
            ("TimeoutStopUSec".into(), variant(10_000_000u64)?),
            (
                "ExecStartEx".into(),
                variant(vec![(spec.path.clone(), spec.argv.clone(), vec!["no-env-expand".to_owned()])])?,
            ),
        ];
        if !spec.environment.is_empty() {
            props.push(("Environment".into(), variant(spec.environment.clone())?));
        }
        if let Some(slice) = &spec.slice {
            props.push(("Slice".into(), variant(slice.as_str())?));
        }
        if let Some(unit) = &spec.binds_to {
            props.push(("BindsTo".into(), variant(vec![unit.clone()])?));
            props.push(("After".into(), variant(vec![unit.clone()])?));
        }
        match spec.stdio {
            ExecStdio::Fds { stdin, stdout, stderr } => {
                props.push(("StandardInputFileDescriptor".into(), fd(stdin)?));
                props.push(("StandardOutputFileDescriptor".into(), fd(stdout)?));
                props.push(("StandardErrorFileDescriptor".into(), fd(stderr)?));
            }
            ExecStdio::Socket(sock) => {
                props.push(("StandardInputFileDescriptor".into(), fd(sock)?));
                // The exec helper: one of its commands killed for memory does not stop it, and
                // its unit goes away when it ends, however it ended.
                props.push(("OOMPolicy".into(), variant("continue")?));
                props.push(("CollectMode".into(), variant("inactive-or-failed")?));
            }
            ExecStdio::Tty { path } => {
                props.push(("TTYPath".into(), variant(path.as_str())?));
                for p in ["StandardInput", "StandardOutput", "StandardError"] {
                    props.push((p.into(), variant("tty")?));
                }
            }
        }
        let mut removed = self.manager.receive_job_removed().await.map_err(bus("JobRemoved signal"))?;
        let job = self
            .manager
            .start_transient_unit(name.clone(), "fail".into(), props, Vec::new())
            .await
            .map_err(bus(format!("StartTransientUnit({name})")))?;
        // Type=exec: the job is done once the program was executed, failed if it could not be.
        while let Some(sig) = removed.next().await {
            let Ok(args) = sig.args() else { continue };
            if args.job.as_str() != job.as_str() {
                continue;
            }
            return match args.result.as_str() {
                "done" => Ok(()),
                other => Err(SystemdError::Bus {
                    call: format!("start job of {name}"),
                    source: zbus::Error::Failure(format!("the start job ended with result {other:?}")),
                }),
            };
        }
        Err(SystemdError::Bus {
            call: format!("start job of {name}"),
            source: zbus::Error::Failure("signal stream ended".into()),
        })
    }

    /// The user a service runs as, as systemd resolved it (for `DynamicUser=` without `User=`,
    /// the name it derived); empty when it runs as root.
    pub async fn unit_user(&self, unit: &str) -> Result<String, SystemdError> {
        let props = PropertiesProxy::builder(&self.conn)
            .destination("org.freedesktop.systemd1")
            .path(unit_path(unit))
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(bus("Properties proxy"))?;
        let v = props
            .get(InterfaceName::from_static_str_unchecked("org.freedesktop.systemd1.Service"), "User")
            .await
            .map_err(|e| SystemdError::Bus { call: format!("Get({unit}, User)"), source: e.into() })?;
        Ok(String::try_from(v).unwrap_or_default())
    }

    /// PIDs of every process of `unit` (its main process and all it started).
    pub async fn unit_pids(&self, unit: &str) -> Result<Vec<u32>, SystemdError> {
        Ok(self
            .manager
            .get_unit_processes(unit.to_owned())
            .await
            .map_err(bus(format!("GetUnitProcesses({unit})")))?
            .into_iter()
            .map(|(_, pid, _)| pid)
            .collect())
    }
}

/// A state of the exec unit's service.
#[derive(Debug, Clone, Default)]
pub struct ServiceState {
    /// `ActiveState`.
    pub active_state: String,
    /// Service `Result`.
    pub result: String,
    /// How the main process ended.
    pub exit_kind: ExitKind,
    /// Exit code or signal.
    pub exit_status: i32,
}

/// A started exec unit.
pub struct ExecHandle {
    name: String,
    manager: ManagerProxy<'static>,
    props: PropertiesProxy<'static>,
    dropin_dir: PathBuf,
    done: bool,
}

fn get<T: TryFrom<OwnedVariant>>(m: &mut HashMap<String, OwnedVariant>, k: &str) -> Option<T> {
    m.remove(k).and_then(|v| T::try_from(v).ok())
}

impl ExecHandle {
    /// The unit name.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn service_state(&self) -> Result<ServiceState, SystemdError> {
        let call = |i: &str| format!("GetAll({}, {i})", self.name);
        let mut unit = self
            .props
            .get_all(InterfaceName::from_static_str_unchecked("org.freedesktop.systemd1.Unit"))
            .await
            .map_err(|e| SystemdError::Bus { call: call("Unit"), source: e.into() })?;
        let mut svc = self
            .props
            .get_all(InterfaceName::from_static_str_unchecked("org.freedesktop.systemd1.Service"))
            .await
            .map_err(|e| SystemdError::Bus { call: call("Service"), source: e.into() })?;
        Ok(ServiceState {
            active_state: get(&mut unit, "ActiveState").unwrap_or_default(),
            result: get(&mut svc, "Result").unwrap_or_default(),
            exit_kind: ExitKind::from_code(get(&mut svc, "ExecMainCode").unwrap_or(0)),
            exit_status: get(&mut svc, "ExecMainStatus").unwrap_or(0),
        })
    }

    /// Waits until the command exited; then stops the unit, which ends everything the command
    /// left running (and so closes its output), and forgets it.
    pub async fn wait(&mut self) -> Result<(ExitKind, i32), SystemdError> {
        let mut changes = self.props.receive_properties_changed().await.map_err(bus("PropertiesChanged signal"))?;
        let ended = loop {
            let s = self.service_state().await?;
            if s.exit_kind != ExitKind::None && s.active_state != "activating" {
                break (s.exit_kind, s.exit_status);
            }
            if matches!(s.active_state.as_str(), "inactive" | "failed") {
                break (ExitKind::Killed, 9);
            }
            // A signal, or a look every few seconds in case one was missed.
            let _ = tokio::time::timeout(Duration::from_secs(2), changes.next()).await;
        };
        self.release().await;
        Ok(ended)
    }

    /// Stops the command and everything it started (the client left).
    pub async fn stop(&mut self) {
        self.release().await;
    }

    async fn release(&mut self) {
        self.done = true;
        // The stop job ends the unit's processes (so output pipes close); wait for it, by its
        // JobRemoved signal (subscribed before the job exists). TimeoutStopUSec bounds it.
        let removed = self.manager.receive_job_removed().await;
        match (self.manager.stop_unit(self.name.clone(), "replace".into()).await, removed) {
            (Ok(job), Ok(mut removed)) => {
                let done = async {
                    while let Some(sig) = removed.next().await {
                        if sig.args().is_ok_and(|a| a.job.as_str() == job.as_str()) {
                            return;
                        }
                    }
                };
                if tokio::time::timeout(Duration::from_secs(30), done).await.is_err() {
                    log::warn!("exec unit {} did not stop within 30 s", self.name);
                }
            }
            (Err(e), _) => log::debug!("stopping exec unit {}: {e}", self.name),
            (Ok(_), Err(e)) => log::debug!("watching exec unit {} stop: {e}", self.name),
        }
        let _ = self.manager.reset_failed_unit(self.name.clone()).await;
        let _ = std::fs::remove_dir_all(&self.dropin_dir);
    }
}

impl Drop for ExecHandle {
    fn drop(&mut self) {
        if !self.done {
            // Dropped without wait/stop (a cancelled task): stop it in the background.
            let (manager, name, dir) = (self.manager.clone(), self.name.clone(), self.dropin_dir.clone());
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = manager.stop_unit(name.clone(), "replace".into()).await;
                    let _ = manager.reset_failed_unit(name).await;
                    let _ = std::fs::remove_dir_all(dir);
                });
            }
        }
    }
}

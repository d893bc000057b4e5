//! The real [`Containers`]: container units read through the [`Systemd`] boundary; commands run
//! by the container's exec helper ([`crate::exec_helper`], started on the first command and
//! closed after `kubelet.exec_helper_idle` without one), or as their own transient units ([`ExecUnits`]) when they
//! need a terminal, the container has its own root directory or its helper cannot run; attach
//! through the container's journal and its stdin FIFO, port-forward to the pod's own listeners
//! ([`super::ports`]). The D-Bus connections are made on first use, so a node that never serves
//! a stream never opens them.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Mutex, OnceCell};

use super::backend::{Conn, ContainerUnit, Containers, Control, ExitStatus, Process, Stdio};
use super::pty::Pty;
use crate::exec_helper::client::{Command as HelperCommand, Ended, Helper, RunError};
use crate::systemd::dbus::DbusSystemd;
use crate::systemd::exec::{ExecHandle, ExecSpec, ExecStdio, ExecUnits, PREFIX};
use crate::systemd::{ActiveState, ExitKind, Systemd, UNIT_DIR};
use crate::unit::UnitMeta;
use crate::unit::exec_context::ExecContext;
use crate::unit::name::PREFIX as UNIT_PREFIX;
use crate::unit::stdin::VKS_BIN;

/// A container's exec helper, for one run of the container (its invocation).
enum HelperSlot {
    Running {
        invocation: String,
        helper: Arc<Helper>,
    },
    /// It could not be started (e.g. the container's system call filter refuses what it needs):
    /// this run's commands are units of their own. (Kept until the unit runs again; one short
    /// entry per such container.)
    Unusable {
        invocation: String,
    },
}

/// Exec helpers by container unit.
type Helpers = Arc<Mutex<HashMap<String, HelperSlot>>>;

/// The node's containers, through systemd.
pub struct HostContainers {
    unit_dir: PathBuf,
    systemd: OnceCell<Arc<dyn Systemd>>,
    exec: OnceCell<ExecUnits>,
    helpers: Helpers,
    /// How long a helper may go without commands; `None`: no helpers.
    helper_idle: Option<Duration>,
}

impl Default for HostContainers {
    fn default() -> Self {
        HostContainers::new(Path::new(UNIT_DIR), Some(Duration::from_secs(120)))
    }
}

fn state_name(s: ActiveState) -> &'static str {
    match s {
        ActiveState::Active => "active",
        ActiveState::Reloading => "reloading",
        ActiveState::Inactive => "inactive",
        ActiveState::Failed => "failed",
        ActiveState::Activating => "activating",
        ActiveState::Deactivating => "deactivating",
    }
}

fn random_hex() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // Unique enough within this process when the system RNG fails.
        b = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()) as u64)
            .to_be_bytes();
    }
    hex::encode(b)
}

fn dev_null(write: bool) -> std::io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new().read(!write).write(write).open("/dev/null")?;
    Ok(f.into())
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

impl HostContainers {
    /// Containers whose units are in `unit_dir`; exec helpers are closed after `helper_idle`
    /// without commands (`None`: none are started).
    pub fn new(unit_dir: &Path, helper_idle: Option<Duration>) -> HostContainers {
        HostContainers {
            unit_dir: unit_dir.to_owned(),
            systemd: OnceCell::new(),
            exec: OnceCell::new(),
            helpers: Helpers::default(),
            helper_idle,
        }
    }

    async fn systemd(&self) -> Result<&Arc<dyn Systemd>, String> {
        self.systemd
            .get_or_try_init(|| async {
                let s = DbusSystemd::connect(None, &self.unit_dir).await.map_err(|e| e.to_string())?;
                Ok::<Arc<dyn Systemd>, String>(Arc::new(s))
            })
            .await
    }

    async fn exec_units(&self) -> Result<&ExecUnits, String> {
        self.exec
            .get_or_try_init(|| async {
                let e = ExecUnits::connect(&self.unit_dir).await.map_err(|e| e.to_string())?;
                e.sweep().await;
                Ok::<ExecUnits, String>(e)
            })
            .await
    }

    /// The exec helper of container `c` for its current run, started when it has none; `None`
    /// when it cannot have one (its commands then run as units of their own).
    async fn helper(&self, units: &ExecUnits, c: &ContainerUnit, ctx: &ExecContext) -> Option<Arc<Helper>> {
        let idle = self.helper_idle?;
        let mut helpers = self.helpers.lock().await;
        match helpers.get(&c.unit) {
            Some(HelperSlot::Running { invocation, helper })
                if *invocation == c.invocation && !helper.closed().is_cancelled() =>
            {
                // Handed out: not idle now, whatever the reaper sees next.
                helper.touch();
                return Some(helper.clone());
            }
            Some(HelperSlot::Unusable { invocation }) if *invocation == c.invocation => return None,
            _ => {}
        }
        match start_helper(units, c, ctx).await {
            Ok((helper, handle)) => {
                log::info!("started the exec helper {} for {}", handle.name(), c.unit);
                helpers.insert(
                    c.unit.clone(),
                    HelperSlot::Running { invocation: c.invocation.clone(), helper: helper.clone() },
                );
                tokio::spawn(watch_helper(self.helpers.clone(), c.unit.clone(), helper.clone(), handle, idle));
                Some(helper)
            }
            Err(e) => {
                log::warn!("{}: no exec helper ({e}); its commands run as units of their own", c.unit);
                helpers.insert(c.unit.clone(), HelperSlot::Unusable { invocation: c.invocation.clone() });
                None
            }
        }
    }
}

/// Starts the exec helper of container `c`: `vks exec-helper` as a transient unit with the
/// container's settings, bound to the container's unit.
async fn start_helper(
    units: &ExecUnits,
    c: &ContainerUnit,
    ctx: &ExecContext,
) -> Result<(Arc<Helper>, ExecHandle), String> {
    let (ours, theirs) = crate::exec_helper::socket_pair().map_err(|e| format!("a socket pair: {e}"))?;
    let spec = ExecSpec {
        name: format!("{PREFIX}helper-{}.service", random_hex()),
        description: format!("vks exec helper for {}/{}/{}", c.meta.namespace, c.meta.pod, c.meta.container),
        path: VKS_BIN.to_owned(),
        argv: vec!["vks".into(), "exec-helper".into()],
        stdio: ExecStdio::Socket(theirs),
        slice: ctx.slice.clone(),
        environment: Vec::new(),
        dropin: ctx.dropin.clone(),
        binds_to: Some(c.unit.clone()),
    };
    let mut handle = units.start(spec).await.map_err(|e| e.to_string())?;
    match Helper::connect(ours, Duration::from_secs(10)).await {
        Ok(helper) => Ok((helper, handle)),
        Err(e) => {
            handle.stop().await;
            Err(format!("{}: {e}", handle.name()))
        }
    }
}

/// Closes the helper after `idle` without commands; stops its unit once it ended (which ends
/// whatever its commands left running) and forgets it.
async fn watch_helper(helpers: Helpers, unit: String, helper: Arc<Helper>, mut handle: ExecHandle, idle: Duration) {
    let mut closed_by_us = false;
    loop {
        tokio::select! {
            () = helper.closed().cancelled() => break,
            () = tokio::time::sleep(idle / 4) => {
                let mut map = helpers.lock().await;
                if helper.is_idle(idle) {
                    if matches!(map.get(&unit), Some(HelperSlot::Running { helper: h, .. }) if Arc::ptr_eq(h, &helper)) {
                        map.remove(&unit);
                    }
                    drop(map);
                    closed_by_us = true;
                    helper.close();
                    let _ = tokio::time::timeout(Duration::from_secs(5), helper.closed().cancelled()).await;
                    break;
                }
            }
        }
    }
    {
        let mut map = helpers.lock().await;
        // Forgotten however it ended (a slot kept for every stopped container would grow with
        // the pods the node ever ran); a helper that ended by itself is started again on the
        // next command.
        if matches!(map.get(&unit), Some(HelperSlot::Running { helper: h, .. }) if Arc::ptr_eq(h, &helper)) {
            map.remove(&unit);
        }
        if !closed_by_us {
            log::info!("the exec helper {} of {unit} ended (with its container, or by itself)", handle.name());
        }
    }
    handle.stop().await;
    log::debug!("exec helper {} of {unit} stopped", handle.name());
}

/// A command the exec helper runs.
struct HelperControl {
    command: HelperCommand,
}

#[async_trait]
impl Control for HelperControl {
    async fn wait(&mut self) -> Result<ExitStatus, String> {
        match self.command.wait().await {
            Ok(Ended::Code(c)) => Ok(ExitStatus::Code(c)),
            Ok(Ended::Signal(s)) => Ok(ExitStatus::Signal(s)),
            Err(e) => Err(format!("waiting for the command: {e}")),
        }
    }

    async fn kill(&mut self) {
        self.command.kill().await;
    }
}

struct ExecControl {
    handle: ExecHandle,
}

#[async_trait]
impl Control for ExecControl {
    async fn wait(&mut self) -> Result<ExitStatus, String> {
        match self.handle.wait().await {
            Ok((ExitKind::Exited, code)) => Ok(ExitStatus::Code(code)),
            Ok((_, signal)) => Ok(ExitStatus::Signal(signal)),
            Err(e) => Err(format!("waiting for the command ({}): {e}", self.handle.name())),
        }
    }

    async fn kill(&mut self) {
        self.handle.stop().await;
    }
}

#[async_trait]
impl Containers for HostContainers {
    async fn pod(&self, namespace: &str, pod: &str) -> Result<Vec<ContainerUnit>, String> {
        let systemd = self.systemd().await?;
        let names = systemd.list_unit_files(&format!("{UNIT_PREFIX}{namespace}.")).await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for name in names.into_iter().filter(|n| n.ends_with(".service")) {
            let Ok(Some(file)) = systemd.read_unit_file(&name).await else { continue };
            let Some(meta) = UnitMeta::parse(&file) else { continue };
            if meta.namespace != namespace || meta.pod != pod {
                continue;
            }
            let st = systemd.status(&name).await.map_err(|e| e.to_string())?;
            out.push(ContainerUnit {
                running: st.active_state == ActiveState::Active && st.sub_state == "running",
                state: format!("{}/{}", state_name(st.active_state), st.sub_state),
                invocation: st.invocation_id,
                unit: name,
                meta,
                file,
            });
        }
        Ok(out)
    }

    async fn exec(&self, c: &ContainerUnit, command: &[String], stdio: Stdio) -> Result<Process, String> {
        let units = self.exec_units().await?;
        let user = units.unit_user(&c.unit).await.ok();
        let ctx = crate::unit::exec_context::context(&c.unit, &c.file, user.as_deref());
        let argv0 = command.first().ok_or("no command given")?;
        let program = crate::unit::exec_context::find_program(argv0, &ctx, crate::images::is_executable)?;
        let failed = |e: &dyn std::fmt::Display| format!("starting {argv0:?} in container {}: {e}", c.meta.container);
        // Without a terminal, through the container's helper (the helper could not chroot into
        // a root directory of its own).
        if stdio.tty.is_none()
            && ctx.root.is_none()
            && let Some(helper) = self.helper(units, c, &ctx).await
        {
            let (mut process, fds) = with_pipes(stdio)?;
            match helper.run(&program, command, fds).await {
                Ok(command) => {
                    process.control = Box::new(HelperControl { command });
                    return Ok(process);
                }
                Err(RunError::Failed(e)) => return Err(failed(&e)),
                Err(e @ RunError::Unavailable(_)) => {
                    log::info!("{}: {e}; running {argv0:?} as a unit of its own", c.unit);
                }
            }
        }
        let (mut process, exec_stdio, environment) = match stdio.tty {
            Some(size) => {
                let io_err = |what: &str, e: std::io::Error| format!("{what} for the command: {e}");
                let pty = Pty::open().map_err(|e| io_err("opening a terminal", e))?;
                let terminal = pty.terminal();
                if let Some(size) = size {
                    super::backend::Terminal::resize(&terminal, size).map_err(|e| io_err("sizing the terminal", e))?;
                }
                let path = pty.path.clone();
                let (r, w) = pty.split();
                let process = Process {
                    stdin: stdio.stdin.then(|| Box::new(w) as _),
                    stdout: Some(Box::new(r)),
                    stderr: None,
                    terminal: Some(Box::new(terminal)),
                    control: Box::new(NoControl),
                };
                (process, ExecStdio::Tty { path }, vec!["TERM=xterm".to_owned()])
            }
            None => {
                let (process, [stdin, stdout, stderr]) = with_pipes(stdio)?;
                (process, ExecStdio::Fds { stdin, stdout, stderr }, Vec::new())
            }
        };
        let shown: String = command.join(" ").chars().take(200).collect();
        let spec = ExecSpec {
            name: format!("{PREFIX}{}.service", random_hex()),
            description: format!("vks exec in {}/{}/{}: {shown}", c.meta.namespace, c.meta.pod, c.meta.container),
            path: program,
            argv: command.to_vec(),
            stdio: exec_stdio,
            slice: ctx.slice.clone(),
            environment,
            dropin: ctx.dropin,
            binds_to: None,
        };
        let handle = units.start(spec).await.map_err(|e| failed(&e))?;
        process.control = Box::new(ExecControl { handle });
        Ok(process)
    }

    async fn attach(&self, c: &ContainerUnit, stdio: Stdio) -> Result<Process, String> {
        super::attach::attach(c, stdio, self.systemd().await?.clone()).await
    }

    async fn connect(&self, pod: &[ContainerUnit], port: u16) -> Result<Box<dyn Conn>, String> {
        let units = self.exec_units().await?;
        let mut pids = Vec::new();
        for c in pod {
            pids.extend(units.unit_pids(&c.unit).await.unwrap_or_default());
        }
        let targets = super::ports::targets(Path::new("/proc"), &pids, port);
        if targets.is_empty() {
            return Err(format!("no process of the pod listens on TCP port {port}"));
        }
        let mut last = String::new();
        for addr in targets {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => return Ok(Box::new(s)),
                Err(e) => last = format!("connecting to {addr}: {e}"),
            }
        }
        Err(last)
    }
}

/// A process without a terminal: pipes for the streams the client wants (the others are
/// /dev/null); the command's ends are returned as stdin, stdout, stderr.
fn with_pipes(stdio: Stdio) -> Result<(Process, [OwnedFd; 3]), String> {
    let io_err = |what: &str, e: std::io::Error| format!("{what} for the command: {e}");
    let mut process = Process { stdin: None, stdout: None, stderr: None, terminal: None, control: Box::new(NoControl) };
    let stdin = if stdio.stdin {
        let (r, w) = pipe().map_err(|e| io_err("a stdin pipe", e))?;
        let w = tokio::net::unix::pipe::Sender::from_owned_fd(w).map_err(|e| io_err("a stdin pipe", e))?;
        process.stdin = Some(Box::new(w));
        r
    } else {
        dev_null(false).map_err(|e| io_err("opening /dev/null", e))?
    };
    let mut out = |wanted: bool, stderr: bool| -> Result<OwnedFd, String> {
        if !wanted {
            return dev_null(true).map_err(|e| io_err("opening /dev/null", e));
        }
        let (r, w) = pipe().map_err(|e| io_err("an output pipe", e))?;
        let r = tokio::net::unix::pipe::Receiver::from_owned_fd(r).map_err(|e| io_err("an output pipe", e))?;
        if stderr {
            process.stderr = Some(Box::new(r));
        } else {
            process.stdout = Some(Box::new(r));
        }
        Ok(w)
    };
    let stdout = out(stdio.stdout, false)?;
    let stderr = out(stdio.stderr, true)?;
    Ok((process, [stdin, stdout, stderr]))
}

/// A placeholder until the process is started.
struct NoControl;

#[async_trait]
impl Control for NoControl {
    async fn wait(&mut self) -> Result<ExitStatus, String> {
        Err("the command was not started".into())
    }

    async fn kill(&mut self) {}
}

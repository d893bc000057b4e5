//! The real [`Containers`]: container units read through the [`Systemd`] boundary, commands run
//! as transient units ([`ExecUnits`]), attach through the container's journal and its stdin
//! FIFO, port-forward to the pod's own listeners ([`super::ports`]). The D-Bus connections are
//! made on first use, so a node that never serves a stream never opens them.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::backend::{Conn, ContainerUnit, Containers, Control, ExitStatus, Process, Stdio};
use super::pty::Pty;
use crate::systemd::dbus::DbusSystemd;
use crate::systemd::exec::{ExecHandle, ExecSpec, ExecStdio, ExecUnits, PREFIX};
use crate::systemd::{ActiveState, ExitKind, Systemd, UNIT_DIR};
use crate::unit::UnitMeta;
use crate::unit::name::PREFIX as UNIT_PREFIX;

/// The node's containers, through systemd.
pub struct HostContainers {
    unit_dir: PathBuf,
    systemd: OnceCell<Arc<dyn Systemd>>,
    exec: OnceCell<ExecUnits>,
}

impl Default for HostContainers {
    fn default() -> Self {
        HostContainers::new(Path::new(UNIT_DIR))
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
    /// Containers whose units are in `unit_dir`.
    pub fn new(unit_dir: &Path) -> HostContainers {
        HostContainers { unit_dir: unit_dir.to_owned(), systemd: OnceCell::new(), exec: OnceCell::new() }
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
        let mut process =
            Process { stdin: None, stdout: None, stderr: None, terminal: None, control: Box::new(NoControl) };
        let io_err = |what: &str, e: std::io::Error| format!("{what} for the command: {e}");
        let (exec_stdio, environment) = match stdio.tty {
            Some(size) => {
                let pty = Pty::open().map_err(|e| io_err("opening a terminal", e))?;
                let terminal = pty.terminal();
                if let Some(size) = size {
                    super::backend::Terminal::resize(&terminal, size).map_err(|e| io_err("sizing the terminal", e))?;
                }
                let path = pty.path.clone();
                let (r, w) = pty.split();
                process.stdin = stdio.stdin.then(|| Box::new(w) as _);
                process.stdout = Some(Box::new(r));
                process.terminal = Some(Box::new(terminal));
                (ExecStdio::Tty { path }, vec!["TERM=xterm".to_owned()])
            }
            None => {
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
                    let r =
                        tokio::net::unix::pipe::Receiver::from_owned_fd(r).map_err(|e| io_err("an output pipe", e))?;
                    if stderr {
                        process.stderr = Some(Box::new(r));
                    } else {
                        process.stdout = Some(Box::new(r));
                    }
                    Ok(w)
                };
                let stdout = out(stdio.stdout, false)?;
                let stderr = out(stdio.stderr, true)?;
                (ExecStdio::Fds { stdin, stdout, stderr }, Vec::new())
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
        };
        let handle = units
            .start(spec)
            .await
            .map_err(|e| format!("starting {argv0:?} in container {}: {e}", c.meta.container))?;
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

/// A placeholder until the process is started.
struct NoControl;

#[async_trait]
impl Control for NoControl {
    async fn wait(&mut self) -> Result<ExitStatus, String> {
        Err("the command was not started".into())
    }

    async fn kill(&mut self) {}
}

//! [`ContainerExec`] through `systemd-run --wait --pipe`: the command runs as a transient service
//! `vks-probe-<pid>-<n>.service` whose drop-in (written first, in the unit directory) carries the
//! container unit's execution settings verbatim (`probes::exec::context_dropin`), so systemd's own
//! parser reads them exactly as in the container's unit. Its standard output and error are one
//! pipe that vks reads (at most 10 KiB kept). `--collect` unloads the unit when it ends; a command
//! that times out, or whose caller gave up, is stopped through [`Systemd::stop`], which also ends
//! whatever it left running.
//!
//! One process (`systemd-run`) per command: exec probes cost a process, HTTP, TCP and gRPC
//! probes do not.

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncReadExt as _;

use super::Systemd;
use crate::probes::exec::{ContainerExec, ExecError, ExecOutput, ExecStatus, MAX_OUTPUT, context_dropin};

/// Prefix of the transient units.
pub const PREFIX: &str = "vks-probe-";

/// Runs commands in containers' contexts with `systemd-run`.
pub struct SystemdRun {
    systemd: Arc<dyn Systemd>,
    unit_dir: PathBuf,
    next: AtomicU64,
}

/// Removes the drop-in, and stops the unit unless the command finished.
struct Cleanup {
    systemd: Arc<dyn Systemd>,
    name: String,
    dir: PathBuf,
    finished: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if !self.finished
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (systemd, name) = (self.systemd.clone(), self.name.clone());
            rt.spawn(async move {
                if let Err(e) = systemd.stop(&name).await {
                    log::debug!("stopping {name}: {e}");
                }
            });
        }
    }
}

fn keep(buf: &mut Vec<u8>, data: &[u8]) {
    let room = MAX_OUTPUT.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

impl SystemdRun {
    /// Runs commands through `systemd`, writing drop-ins into `unit_dir`.
    pub fn new(systemd: Arc<dyn Systemd>, unit_dir: &Path) -> SystemdRun {
        SystemdRun { systemd, unit_dir: unit_dir.to_owned(), next: AtomicU64::new(1) }
    }

    /// Removes the drop-ins an earlier vks left behind (it stopped while a command ran; the
    /// command's unit itself was collected by systemd). Called once at start-up.
    pub fn sweep(unit_dir: &Path) {
        let Ok(dir) = std::fs::read_dir(unit_dir) else { return };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(PREFIX) && name.ends_with(".service.d") {
                log::info!("removing {name}, left by an earlier vks");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    async fn run(
        &self,
        unit: &str,
        command: &[String],
        timeout: Option<Duration>,
        err: impl Fn(String) -> ExecError,
    ) -> Result<ExecOutput, ExecError> {
        let file = self
            .systemd
            .read_unit_file(unit)
            .await
            .map_err(|e| err(e.to_string()))?
            .ok_or_else(|| err("the container's unit file does not exist".into()))?;
        let (dropin, slice) = context_dropin(unit, &file);
        let name = format!("{PREFIX}{:x}-{:x}.service", std::process::id(), self.next.fetch_add(1, Ordering::Relaxed));
        let dir = self.unit_dir.join(format!("{name}.d"));
        let mut cleanup =
            Cleanup { systemd: self.systemd.clone(), name: name.clone(), dir: dir.clone(), finished: false };
        tokio::fs::create_dir_all(&dir).await.map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
        let conf = dir.join("50-container.conf");
        crate::fsutil::write_atomic_async(conf.clone(), dropin.into_bytes(), 0o644)
            .await
            .map_err(|e| err(format!("writing {}: {e}", conf.display())))?;
        let (reader, writer) = std::io::pipe().map_err(|e| err(format!("creating a pipe: {e}")))?;
        let writer2 = writer.try_clone().map_err(|e| err(format!("creating a pipe: {e}")))?;
        let mut cmd = tokio::process::Command::new("systemd-run");
        cmd.args(["--quiet", "--wait", "--pipe", "--collect", "--service-type=exec"]).arg(format!("--unit={name}"));
        if let Some(s) = slice {
            cmd.arg(format!("--slice={s}"));
        }
        cmd.arg("--").args(command);
        cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2).kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| err(format!("starting systemd-run: {e}")))?;
        // Only the child (and the command it starts) hold the write end now.
        drop(cmd);
        let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into())
            .map_err(|e| err(format!("reading the command's output: {e}")))?;
        let work = async {
            let mut out = Vec::new();
            let mut chunk = [0u8; 4096];
            let mut eof = false;
            let status = loop {
                tokio::select! {
                    r = rx.read(&mut chunk), if !eof => match r {
                        Ok(0) | Err(_) => eof = true,
                        Ok(n) => keep(&mut out, &chunk[..n]),
                    },
                    s = child.wait() => break s,
                }
            };
            // What the command wrote just before it ended (a process it left behind may keep the
            // pipe open: stopping the unit ends it).
            while !eof {
                match tokio::time::timeout(Duration::from_millis(200), rx.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => keep(&mut out, &chunk[..n]),
                    _ => eof = true,
                }
            }
            (status, out)
        };
        let done = match timeout {
            Some(t) => tokio::time::timeout(t, work).await.ok(),
            None => Some(work.await),
        };
        let Some((status, output)) = done else {
            return Ok(ExecOutput { status: ExecStatus::TimedOut, output: Vec::new() });
        };
        let status = status.map_err(|e| err(format!("waiting for systemd-run: {e}")))?;
        cleanup.finished = true;
        // `--collect` unloads it; stop anything the command left running.
        let _ = self.systemd.stop(&name).await;
        let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        Ok(ExecOutput { status: ExecStatus::Exited(code), output })
    }
}

#[async_trait]
impl ContainerExec for SystemdRun {
    async fn exec(&self, unit: &str, command: &[String], timeout: Option<Duration>) -> Result<ExecOutput, ExecError> {
        let err = |why: String| ExecError { unit: unit.to_owned(), command: command.to_vec(), why };
        if command.is_empty() {
            return Err(err("the command is empty".into()));
        }
        self.run(unit, command, timeout, err).await
    }
}

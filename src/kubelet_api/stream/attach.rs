//! Attach: the container's own process, not a new one. Its output is read from the journal
//! (vks units log stdout and stderr there), from the moment of attaching, for the container's
//! current run only (`_SYSTEMD_INVOCATION_ID`). Its input is the FIFO the unit of a container
//! with `stdin: true` reads ([`stdin_fifo`], see `unit::render`). The session ends when the
//! container stops or the client detaches.
//!
//! Not supported: a terminal (`tty: true` containers get none from vks yet), telling stdout from
//! stderr (the journal keeps them apart only by priority; both arrive on the client's stdout),
//! and `stdinOnce` (the container's stdin stays open after the client detaches).

use std::process::Stdio as ProcessStdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::backend::{ContainerUnit, Control, ExitStatus, Process, Stdio};
use crate::systemd::{ActiveState, Systemd};

use crate::unit::stdin_fifo;

struct AttachControl {
    systemd: Arc<dyn Systemd>,
    unit: String,
    invocation: String,
    follower: tokio::process::Child,
}

#[async_trait]
impl Control for AttachControl {
    async fn wait(&mut self) -> Result<ExitStatus, String> {
        loop {
            tokio::select! {
                _ = self.follower.wait() => return Err(format!("following the journal of {} ended", self.unit)),
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            match self.systemd.status(&self.unit).await {
                Ok(s)
                    if s.active_state == ActiveState::Active
                        && s.sub_state == "running"
                        && s.invocation_id == self.invocation => {}
                // Stopped, exited, restarted (a new run) or gone: the attached process ended.
                _ => {
                    // Give the journal a moment to deliver its last lines.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let _ = self.follower.start_kill();
                    return Ok(ExitStatus::Code(0));
                }
            }
        }
    }

    async fn kill(&mut self) {
        let _ = self.follower.start_kill();
        let _ = self.follower.wait().await;
    }
}

/// Attaches to the container of `c`.
pub async fn attach(c: &ContainerUnit, stdio: Stdio, systemd: Arc<dyn Systemd>) -> Result<Process, String> {
    let name = &c.meta.container;
    if stdio.tty.is_some() {
        return Err(format!(
            "container {name:?} has no terminal to attach to: vks does not give containers a terminal (tty: true) yet"
        ));
    }
    let stdin = if stdio.stdin {
        let path = stdin_fifo(&c.unit);
        let w = tokio::net::unix::pipe::OpenOptions::new().open_sender(&path).map_err(|e| {
            format!(
                "container {name:?} takes no input (its unit reads none; the pod must set stdin: true): {path}: {e}"
            )
        })?;
        Some(Box::new(w) as _)
    } else {
        None
    };
    let mut follower = tokio::process::Command::new("journalctl")
        .args(["--follow", "--lines=0", "--output=cat", "--all", "--no-pager", "--quiet"])
        .arg(format!("_SYSTEMD_UNIT={}", c.unit))
        .arg(format!("_SYSTEMD_INVOCATION_ID={}", c.invocation))
        .stdin(ProcessStdio::null())
        .stdout(ProcessStdio::piped())
        .stderr(ProcessStdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("following the journal of {}: {e}", c.unit))?;
    let output = follower.stdout.take().map(|o| Box::new(o) as _);
    let (stdout, stderr) = if stdio.stdout { (output, None) } else { (None, output) };
    Ok(Process {
        stdin,
        stdout,
        stderr,
        terminal: None,
        control: Box::new(AttachControl { systemd, unit: c.unit.clone(), invocation: c.invocation.clone(), follower }),
    })
}

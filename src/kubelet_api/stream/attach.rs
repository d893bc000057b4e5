//! Attach: the container's own process, not a new one. Its output is read from the journal
//! (vks units log stdout and stderr there), from the moment of attaching, for the container's
//! current run only (`_SYSTEMD_INVOCATION_ID`). Its input is the FIFO the unit of a container
//! with `stdin: true` reads ([`stdin_fifo`], see `unit::render`). The session ends when the
//! container stops or the client detaches.
//!
//! A container with `tty: true` runs under `vks tty-shim` ([`crate::tty_shim`]), which holds its
//! terminal: attach then connects to the shim's socket, a data session (the terminal's output
//! from now on; the client's input typed into it) and, with `-t`, a control session for the
//! client's window size.
//!
//! Not supported: telling stdout from stderr (the journal keeps them apart only by priority; both
//! arrive on the client's stdout), and `stdinOnce` (the container's stdin stays open after the
//! client detaches).

use std::process::Stdio as ProcessStdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use tokio::io::AsyncWriteExt;

use super::backend::{ContainerUnit, Control, ExitStatus, Process, Stdio, Terminal};
use super::channels::TermSize;
use crate::systemd::{ActiveState, Systemd};

use crate::unit::{stdin_fifo, tty_socket};

struct AttachControl {
    systemd: Arc<dyn Systemd>,
    unit: String,
    invocation: String,
    /// journalctl following the output (none with a terminal: the shim sends it).
    follower: Option<tokio::process::Child>,
}

impl AttachControl {
    async fn follower_ended(&mut self) {
        match self.follower.as_mut() {
            Some(f) => {
                let _ = f.wait().await;
            }
            None => std::future::pending().await,
        }
    }
}

#[async_trait]
impl Control for AttachControl {
    async fn wait(&mut self) -> Result<ExitStatus, String> {
        loop {
            tokio::select! {
                () = self.follower_ended() => return Err(format!("following the journal of {} ended", self.unit)),
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
                    if let Some(f) = self.follower.as_mut() {
                        let _ = f.start_kill();
                    }
                    return Ok(ExitStatus::Code(0));
                }
            }
        }
    }

    async fn kill(&mut self) {
        if let Some(f) = self.follower.as_mut() {
            let _ = f.start_kill();
            let _ = f.wait().await;
        }
    }
}

/// The window size of a terminal held by `vks tty-shim`, set through its control session.
struct ShimTerminal {
    control: std::sync::Mutex<std::os::unix::net::UnixStream>,
}

impl Terminal for ShimTerminal {
    fn resize(&self, size: TermSize) -> std::io::Result<()> {
        use std::io::Write;
        let mut c = self.control.lock().unwrap_or_else(|e| e.into_inner());
        // A line of a few bytes on a local socket the shim reads at once: it does not block.
        c.write_all(format!("{} {}\n", size.height, size.width).as_bytes())
    }
}

/// Attaches to the terminal of a `tty: true` container through its shim's socket.
async fn attach_terminal(
    c: &ContainerUnit,
    socket: &str,
    stdio: Stdio,
    systemd: Arc<dyn Systemd>,
) -> Result<Process, String> {
    let name = &c.meta.container;
    let failed = |e: std::io::Error| format!("attaching to the terminal of container {name:?} ({socket}): {e}");
    let mut data = tokio::net::UnixStream::connect(socket).await.map_err(failed)?;
    data.write_all(&[crate::tty_shim::DATA]).await.map_err(failed)?;
    let terminal = match stdio.tty {
        Some(size) => {
            let mut control = std::os::unix::net::UnixStream::connect(socket).map_err(failed)?;
            std::io::Write::write_all(&mut control, &[crate::tty_shim::CONTROL]).map_err(failed)?;
            let t = ShimTerminal { control: std::sync::Mutex::new(control) };
            if let Some(size) = size {
                t.resize(size).map_err(failed)?;
            }
            Some(Box::new(t) as Box<dyn Terminal>)
        }
        None => None,
    };
    let (read, write) = data.into_split();
    Ok(Process {
        stdin: stdio.stdin.then(|| Box::new(write) as _),
        stdout: Some(Box::new(read) as _),
        stderr: None,
        terminal,
        control: Box::new(AttachControl {
            systemd,
            unit: c.unit.clone(),
            invocation: c.invocation.clone(),
            follower: None,
        }),
    })
}

/// How long a container's process may take to make its FIFO or terminal socket.
const IO_APPEARS_WITHIN: Duration = Duration::from_secs(5);

/// Waits until `path` exists, [`IO_APPEARS_WITHIN`] at most (then the caller reports it missing).
async fn appears(path: &str) {
    let deadline = tokio::time::Instant::now() + IO_APPEARS_WITHIN;
    while !tokio::fs::try_exists(path).await.unwrap_or(false) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Attaches to the container of `c`.
pub async fn attach(c: &ContainerUnit, stdio: Stdio, systemd: Arc<dyn Systemd>) -> Result<Process, String> {
    let name = &c.meta.container;
    let socket = tty_socket(&c.unit);
    // The container's process makes its FIFO or terminal socket just after it started: a client
    // that attaches at once (`kubectl debug -i` does) waits for it.
    let (fifo, tty) = crate::unit::stdin::io_of(&c.unit, &c.file);
    if tty {
        appears(&socket).await;
    } else if fifo && stdio.stdin {
        appears(&stdin_fifo(&c.unit)).await;
    }
    if tokio::fs::try_exists(&socket).await.unwrap_or(false) {
        return attach_terminal(c, &socket, stdio, systemd).await;
    }
    if stdio.tty.is_some() {
        return Err(format!(
            "container {name:?} has no terminal to attach to: its run started without one (a container gets one with tty: true)"
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
        control: Box::new(AttachControl {
            systemd,
            unit: c.unit.clone(),
            invocation: c.invocation.clone(),
            follower: Some(follower),
        }),
    })
}

//! Runs a started process (exec) or an attachment for a client session: copies stdin, stdout,
//! stderr and terminal sizes between the [`Channels`] and the [`Process`] until the process ends
//! or the client goes away, then reports the outcome.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::backend::{ExitStatus, Process};
use super::channels::{Channels, Out, Outcome};

/// How long output may still flow after the process ended (its unit is stopped by then, so its
/// pipes close; this only bounds a stuck client).
const DRAIN: Duration = Duration::from_secs(10);
/// Read size for the process's output.
const CHUNK: usize = 32 * 1024;

/// What a session is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A command run for the client: its exit code is the outcome.
    Exec,
    /// The container's own process: detaching or the container stopping ends it successfully.
    Attach,
}

async fn pump(mut from: Box<dyn AsyncRead + Send + Unpin>, out: mpsc::Sender<Out>, wrap: fn(Bytes) -> Out) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            // A terminal's master reads EIO once the last process holding it exited: its end.
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if out.send(wrap(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Drives `process` for the session `ch` until it ends; the client gets everything the process
/// wrote, then the outcome.
pub async fn drive(mut process: Process, ch: Channels, kind: Kind) {
    let Channels { stdin, resize, out, gone, .. } = ch;
    let mut inputs = JoinSet::new();
    if let (Some(mut w), Some(mut rx)) = (process.stdin.take(), stdin) {
        inputs.spawn(async move {
            while let Some(b) = rx.recv().await {
                if w.write_all(&b).await.is_err() || w.flush().await.is_err() {
                    return;
                }
            }
            // The client's end of input: the process reads EOF (on a terminal the client sends
            // its own ^D instead).
            let _ = w.shutdown().await;
        });
    }
    if let (Some(t), Some(mut rx)) = (process.terminal.take(), resize) {
        inputs.spawn(async move {
            while let Some(size) = rx.recv().await {
                if let Err(e) = t.resize(size) {
                    log::debug!("resizing a terminal to {}x{}: {e}", size.width, size.height);
                }
            }
        });
    }
    let mut outputs = JoinSet::new();
    if let Some(r) = process.stdout.take() {
        outputs.spawn(pump(r, out.clone(), Out::Stdout));
    }
    if let Some(r) = process.stderr.take() {
        outputs.spawn(pump(r, out.clone(), Out::Stderr));
    }
    let ended = tokio::select! {
        r = process.control.wait() => r,
        () = gone.cancelled() => {
            process.control.kill().await;
            inputs.abort_all();
            outputs.abort_all();
            return;
        }
    };
    let outcome = match (kind, ended) {
        (_, Err(e)) => Outcome::Error(e),
        (Kind::Attach, Ok(_)) | (Kind::Exec, Ok(ExitStatus::Code(0))) => Outcome::Success,
        (Kind::Exec, Ok(ExitStatus::Code(c))) => Outcome::ExitCode(u8::try_from(c).unwrap_or(255)),
        (Kind::Exec, Ok(ExitStatus::Signal(s))) => Outcome::ExitCode(u8::try_from(128 + s).unwrap_or(255)),
    };
    let drained = tokio::time::timeout(DRAIN, async { while outputs.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        log::warn!("output of an ended process still flowing after {DRAIN:?}: cut off");
        outputs.abort_all();
    }
    inputs.abort_all();
    let _ = out.send(Out::Done(outcome)).await;
}

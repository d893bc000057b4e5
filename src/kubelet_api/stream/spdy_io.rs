//! Exec and attach over SPDY: the client opens one stream per channel, named by its
//! `streamType` header (`error`, `stdin`, `stdout`, `stderr`, `resize`); vks accepts them,
//! waits until all it expects are there, and wires them to a [`Channels`].

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::channels::{Channels, Options, Out, ResizeParser, Version};
use super::spdy::{self, StreamReader, StreamWriter};

/// Waits for the streams of an exec or attach session (at most `creation_timeout`) and starts
/// moving data between them and the returned [`Channels`]. Extra or late streams are refused.
pub async fn channels(
    mut session: spdy::Session,
    options: Options,
    version: Version,
    creation_timeout: Duration,
) -> Result<Channels, String> {
    let closer = session.closer();
    let wants_resize = options.tty && version.resizes();
    let expected = 1 + [options.stdin, options.stdout, options.stderr, wants_resize].iter().filter(|b| **b).count();
    let (mut error, mut stdin, mut stdout, mut stderr, mut resize) = (None, None, None, None, None);
    let deadline = Instant::now() + creation_timeout;
    let mut received = 0;
    while received < expected {
        let incoming = match tokio::time::timeout_at(deadline, session.next_stream()).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err("the client closed the connection before opening its streams".into()),
            Err(_) => {
                closer.close().await;
                return Err(format!(
                    "timed out after {creation_timeout:?} waiting for the client's streams ({received} of {expected})"
                ));
            }
        };
        let kind = incoming.headers.get("streamType").unwrap_or("").to_owned();
        let s = incoming.accept().await.map_err(|e| e.to_string())?;
        let slot = match kind.as_str() {
            "error" => &mut error,
            "stdin" => &mut stdin,
            "stdout" => &mut stdout,
            "stderr" => &mut stderr,
            "resize" => &mut resize,
            other => {
                log::debug!("SPDY exec: ignoring a stream of unexpected type {other:?}");
                continue;
            }
        };
        if slot.is_none() {
            received += 1;
        }
        *slot = Some(s);
    }
    // Later streams are refused once `session` is dropped.
    drop(session);
    let Some(error) = error else { return Err("the client opened no error stream".into()) };
    let gone = closer.closed();

    let stdin_rx = stdin.map(|s| forward_input(s.reader));
    let resize_rx = resize.filter(|_| wants_resize).map(|s| {
        let (tx, rx) = mpsc::channel(8);
        let mut reader = s.reader;
        tokio::spawn(async move {
            let mut parser = ResizeParser::default();
            while let Some(b) = reader.recv().await {
                for size in parser.feed(&b) {
                    if tx.send(size).await.is_err() {
                        return;
                    }
                }
            }
        });
        rx
    });
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(64);
    let stdout_w = stdout.map(|s| s.writer);
    let stderr_w = stderr.map(|s| s.writer);
    tokio::spawn(async move {
        while let Some(o) = out_rx.recv().await {
            let r = match o {
                Out::Stdout(b) => write(&stdout_w, b).await,
                Out::Stderr(b) => write(&stderr_w, b).await,
                Out::Done(outcome) => {
                    for w in stdout_w.iter().chain(stderr_w.iter()) {
                        let _ = w.finish().await;
                    }
                    if let Some(msg) = outcome.encode(version) {
                        let _ = error.writer.write(msg).await;
                    }
                    let _ = error.writer.finish().await;
                    closer.close().await;
                    return;
                }
            };
            if r.is_err() {
                // The client reset a stream or left: the session is over.
                closer.close().await;
                return;
            }
        }
        closer.close().await;
    });
    Ok(Channels { options, version, stdin: stdin_rx, resize: resize_rx, out: out_tx, gone })
}

async fn write(w: &Option<StreamWriter>, b: bytes::Bytes) -> std::io::Result<()> {
    match w {
        Some(w) => w.write(b).await,
        None => Ok(()),
    }
}

/// Moves a stream's data into a channel that closes when the client closes its half.
fn forward_input(mut reader: StreamReader) -> mpsc::Receiver<bytes::Bytes> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(b) = reader.recv().await {
            if tx.send(b).await.is_err() {
                return;
            }
        }
    });
    rx
}

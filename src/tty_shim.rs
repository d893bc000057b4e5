//! `vks tty-shim DIR PROGRAM [ARGS...]`: the main process of a container with `tty: true`.
//!
//! A terminal needs a process that holds its master side for as long as the container runs,
//! also while vks restarts: so the container's unit runs this shim (inside the container's
//! sandbox, as its user), which opens a pseudo-terminal, starts PROGRAM on it as the leader of
//! a new session with the terminal as its controlling terminal (`setsid --ctty`, so ^C, job
//! control and SIGWINCH work), and then
//! - copies everything PROGRAM writes to the terminal to its own stdout, the journal (so
//!   `kubectl logs` shows it, as the kubelet logs a tty container's output);
//! - serves attach sessions on the Unix socket `DIR/tty` ([`crate::unit::tty_socket`]): a
//!   connection that starts with `D` is a data session (what it sends is typed into the
//!   terminal; it receives the terminal's output from then on), one that starts with `C` is a
//!   control session (lines `ROWS COLS` resize the terminal);
//! - passes the stop signals systemd and vks send it (TERM, INT, HUP, QUIT, USR1, USR2) on to
//!   PROGRAM's process group;
//! - exits with PROGRAM's exit code (128+N when a signal N ended it) once the terminal is
//!   closed.
//!
//! Known differences: PROGRAM's `argv[0]` is its path, and the unit's main process is the shim
//! (PROGRAM is its child, in the same cgroup).

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::kubelet_api::stream::backend::Terminal;
use crate::kubelet_api::stream::channels::TermSize;
use crate::kubelet_api::stream::pty::Pty;

/// How long the shim waits for its attach sessions to send the last output when the terminal
/// closed.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The first byte of a data session.
pub const DATA: u8 = b'D';
/// The first byte of a control session.
pub const CONTROL: u8 = b'C';

/// Runs PROGRAM on a terminal until it ends; returns the exit code for the shim.
pub fn main(dir: &Path, program: &str, args: &[String]) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vks tty-shim: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(serve(dir, program, args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vks tty-shim: {program}: {e}");
            // As systemd reports a program it could not execute.
            203
        }
    }
}

/// A parsed control line: `ROWS COLS`.
pub fn parse_size(line: &str) -> Option<TermSize> {
    let mut it = line.split_whitespace();
    let height = it.next()?.parse().ok()?;
    let width = it.next()?.parse().ok()?;
    it.next().is_none().then_some(TermSize { width, height })
}

async fn serve(dir: &Path, program: &str, args: &[String]) -> io::Result<i32> {
    let pty = Pty::open()?;
    // Opened without becoming the shim's controlling terminal (the shim leads a session).
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(&pty.path)?;
    let socket = dir.join("tty");
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    let mut child = tokio::process::Command::new("setsid")
        .args(["--ctty", "--"])
        .arg(program)
        .args(args)
        .stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave)
        .spawn()?;
    let group = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32));
    let terminal = pty.terminal();
    let (mut master_out, mut master_in) = pty.split();
    let (output, _) = broadcast::channel::<Vec<u8>>(256);
    let (input_tx, mut input) = mpsc::channel::<Vec<u8>>(64);
    let (size_tx, mut sizes) = mpsc::channel::<TermSize>(16);
    let mut stop_signals = Vec::new();
    for kind in [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ] {
        stop_signals.push((kind, signal(kind)?));
    }
    let mut sessions = tokio::task::JoinSet::new();
    let done = CancellationToken::new();
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let forwarded = async {
            let futures = stop_signals.iter_mut().map(|(k, s)| Box::pin(async move { s.recv().await.map(|_| *k) }));
            futures::future::select_all(futures).await.0
        };
        tokio::select! {
            n = master_out.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    break;
                }
                let _ = stdout.write_all(&buf[..n]).await;
                let _ = stdout.flush().await;
                let _ = output.send(buf[..n].to_vec());
            }
            Some(data) = input.recv() => master_in.write_all(&data).await?,
            Some(size) = sizes.recv() => {
                let _ = terminal.resize(size);
            }
            conn = listener.accept() => {
                if let Ok((conn, _)) = conn {
                    sessions.spawn(session(conn, output.subscribe(), input_tx.clone(), size_tx.clone(), done.clone()));
                }
            }
            Some(kind) = forwarded => {
                if let (Some(pid), Some(sig)) = (group, rustix::process::Signal::from_named_raw(kind.as_raw_value())) {
                    let _ = rustix::process::kill_process_group(pid, sig);
                }
            }
        }
    }
    let _ = std::fs::remove_file(&socket);
    // The sessions deliver the last output before the shim exits (and its tasks with it).
    drop(output);
    done.cancel();
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, async { while sessions.join_next().await.is_some() {} }).await;
    let status = child.wait().await?;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// One attach connection: a data or a control session, by its first byte.
async fn session(
    conn: UnixStream,
    mut output: broadcast::Receiver<Vec<u8>>,
    input: mpsc::Sender<Vec<u8>>,
    sizes: mpsc::Sender<TermSize>,
    done: CancellationToken,
) {
    let (read, mut write) = conn.into_split();
    let mut read = BufReader::new(read);
    let mut kind = [0u8; 1];
    if read.read_exact(&mut kind).await.is_err() {
        return;
    }
    match kind[0] {
        CONTROL => {
            let mut lines = read.lines();
            loop {
                let line = tokio::select! {
                    () = done.cancelled() => break,
                    l = lines.next_line() => l,
                };
                let Ok(Some(line)) = line else { break };
                if let Some(size) = parse_size(&line) {
                    let _ = sizes.send(size).await;
                }
            }
        }
        DATA => {
            // A client that stops typing (end of its input) still sees the output, until the
            // terminal closes.
            let typing = async {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = read.read(&mut buf).await {
                    if n == 0 || input.send(buf[..n].to_vec()).await.is_err() {
                        break;
                    }
                }
                std::future::pending::<()>().await;
            };
            let showing = async {
                loop {
                    match output.recv().await {
                        Ok(data) => {
                            if write.write_all(&data).await.is_err() {
                                break;
                            }
                        }
                        // A client too slow for the output misses some of it, never the others.
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            };
            tokio::select! {
                () = typing => {}
                () = showing => {}
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_lines_are_rows_then_columns() {
        assert_eq!(parse_size("33 111"), Some(TermSize { width: 111, height: 33 }));
        assert_eq!(parse_size(" 5  7 "), Some(TermSize { width: 7, height: 5 }));
        assert_eq!(parse_size("5"), None);
        assert_eq!(parse_size("5 7 9"), None);
        assert_eq!(parse_size("a b"), None);
    }

    #[tokio::test]
    async fn a_program_on_the_shims_terminal_is_typed_into_resized_and_its_code_returned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let shim = tokio::spawn(async move {
            serve(
                &path,
                "/bin/sh",
                &["-c".into(), "read size; i=0; until [ \"$(stty size)\" = '17 91' ] || [ $i -ge 200 ]; do i=$((i+1)); sleep 0.05; done; tty; stty size; read line; echo got $line; exit 7".into()],
            )
            .await
        });
        let socket = dir.path().join("tty");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let data = loop {
            if let Ok(s) = UnixStream::connect(&socket).await {
                break s;
            }
            assert!(tokio::time::Instant::now() < deadline, "the shim never listened on {}", socket.display());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let (mut out, mut typed) = data.into_split();
        typed.write_all(&[DATA]).await.unwrap();
        let mut control = UnixStream::connect(&socket).await.unwrap();
        control.write_all(b"C17 91\n").await.unwrap();
        typed.write_all(b"go\nhello\n").await.unwrap();
        let mut seen = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), out.read_to_end(&mut seen)).await;
        let code = shim.await.unwrap().unwrap();
        let seen = String::from_utf8_lossy(&seen);
        assert_eq!(code, 7, "{seen}");
        assert!(seen.contains("/dev/pts/"), "{seen}");
        assert!(seen.contains("17 91"), "{seen}");
        assert!(seen.contains("got hello"), "{seen}");
    }
}

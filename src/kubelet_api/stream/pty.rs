//! A pseudo-terminal for `exec -t`: vks keeps the master (read: the command's output, write: the
//! client's keystrokes, size: the client's window), systemd opens the slave by its path as the
//! command's controlling terminal. vks never opens the slave itself, so reading the master ends
//! (EIO) once the last process holding the terminal exited.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{Winsize, tcsetwinsize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::backend::Terminal;
use super::channels::TermSize;

/// Registers the master with tokio's reactor. `AsyncFd::new` is deprecated because a *borrowed*
/// descriptor could be closed while registered; here the `AsyncFd` owns the `OwnedFd`, which
/// stays open exactly as long as the registration (and `register`, its replacement, is unsafe).
#[allow(deprecated)]
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::new(fd)
}

/// The master side of a new pseudo-terminal.
pub struct Pty {
    master: Arc<AsyncFd<OwnedFd>>,
    /// The slave's path (`/dev/pts/N`).
    pub path: String,
}

impl Pty {
    /// Opens a new pseudo-terminal.
    pub fn open() -> io::Result<Pty> {
        let fd = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        grantpt(&fd)?;
        unlockpt(&fd)?;
        let path = ptsname(&fd, Vec::new())?.into_string().map_err(|_| io::Error::other("pty name is not UTF-8"))?;
        let flags = fcntl_getfl(&fd)?;
        fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?;
        Ok(Pty { master: Arc::new(register(fd)?), path })
    }

    /// A handle that resizes the terminal.
    pub fn terminal(&self) -> PtyTerminal {
        PtyTerminal { master: self.master.clone() }
    }

    /// The reading and the writing side of the master.
    pub fn split(self) -> (PtyReader, PtyWriter) {
        (PtyReader { master: self.master.clone() }, PtyWriter { master: self.master })
    }
}

/// Sets the terminal size.
pub struct PtyTerminal {
    master: Arc<AsyncFd<OwnedFd>>,
}

impl Terminal for PtyTerminal {
    fn resize(&self, size: TermSize) -> io::Result<()> {
        let ws = Winsize { ws_row: size.height, ws_col: size.width, ws_xpixel: 0, ws_ypixel: 0 };
        Ok(tcsetwinsize(self.master.get_ref().as_fd(), ws)?)
    }
}

/// Reads what the command writes to its terminal.
pub struct PtyReader {
    master: Arc<AsyncFd<OwnedFd>>,
}

/// Types into the command's terminal.
pub struct PtyWriter {
    master: Arc<AsyncFd<OwnedFd>>,
}

impl AsyncRead for PtyReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.master.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut *unfilled)?)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO: no process holds the terminal any more; that is its end.
                Ok(Err(e)) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.master.poll_write_ready(cx))?;
            match guard.try_io(|fd| Ok(rustix::io::write(fd.get_ref(), data)?)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A terminal has no end of input; the client types ^D itself.
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_child_on_the_slave_is_read_and_sized_through_the_master() {
        let pty = Pty::open().unwrap();
        pty.terminal().resize(TermSize { width: 91, height: 17 }).unwrap();
        let path = pty.path.clone();
        let (mut r, mut w) = pty.split();
        // stty reads the size from its stdin, the slave; then the shell echoes a line.
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!("exec <{path} >{path} 2>&1; stty size; read line; echo got $line"))
            .spawn()
            .unwrap();
        w.write_all(b"hello\n").await.unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains("17 91"), "{out}");
        assert!(out.contains("got hello"), "{out}");
        let _ = child.wait_with_output().await;
    }
}

//! vks's side of the exec helper: sends [`Request`]s over the socket pair and hands each
//! command its [`Reply`]s (a task reads them and dispatches by command id).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Reply, Request};

/// Why a command did not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The helper is gone or could not be asked (the command can still run another way).
    #[error("the exec helper is not available: {0}")]
    Unavailable(String),
    /// The helper could not execute the program.
    #[error("{0}")]
    Failed(String),
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this code.
    Code(i32),
    /// This signal ended it.
    Signal(i32),
}

/// How long the helper may take to say whether it started a command.
const START_WITHIN: Duration = Duration::from_secs(30);

type Pending = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Reply>>>>;

/// A connection to one helper.
pub struct Helper {
    /// The socket pair's vks end. A `SOCK_SEQPACKET` socket held as tokio's datagram socket for
    /// its readiness only: messages go through [`super::send`] and [`super::recv`].
    sock: Arc<UnixDatagram>,
    pending: Pending,
    next: AtomicU64,
    closed: CancellationToken,
    users: AtomicUsize,
    last_used: Mutex<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Helper {
    /// Talks to the helper on the other end of `sock` once it said it is ready (within
    /// `ready_within`); starts the task that reads its replies (it ends, and
    /// [`Helper::closed`] fires, when the helper's end closes).
    pub async fn connect(sock: OwnedFd, ready_within: Duration) -> io::Result<Arc<Helper>> {
        let sock = {
            let s = std::os::unix::net::UnixDatagram::from(sock);
            s.set_nonblocking(true)?;
            UnixDatagram::from_std(s)?
        };
        let first = tokio::time::timeout(ready_within, sock.async_io(Interest::READABLE, || super::recv(&sock, true)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("not ready within {ready_within:?}")))??;
        match serde_json::from_slice::<Reply>(&first.bytes) {
            Ok(Reply::Ready) => {}
            _ if first.bytes.is_empty() => {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "it exited (its journal says why)"));
            }
            _ => {
                let said = String::from_utf8_lossy(&first.bytes).into_owned();
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("it said {said:?} first")));
            }
        }
        let helper = Arc::new(Helper {
            sock: Arc::new(sock),
            pending: Pending::default(),
            next: AtomicU64::new(1),
            closed: CancellationToken::new(),
            users: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
        });
        let (sock, pending, closed) = (helper.sock.clone(), helper.pending.clone(), helper.closed.clone());
        tokio::spawn(async move {
            if let Err(e) = read_replies(&sock, &pending).await {
                log::debug!("exec helper connection: {e}");
            }
            closed.cancel();
            // Waiting commands see their channel end.
            lock(&pending).clear();
        });
        Ok(helper)
    }

    /// Fires when the connection ended (the helper exited or was stopped).
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// Whether no command runs and none did for `idle`.
    pub fn is_idle(&self, idle: Duration) -> bool {
        self.users.load(Ordering::SeqCst) == 0 && lock(&self.last_used).elapsed() >= idle
    }

    /// Counts as used now (it was just handed out for a command).
    pub fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }

    /// Closes vks's end: the helper kills what still runs and exits.
    pub fn close(&self) {
        let _ = rustix::net::shutdown(&*self.sock, rustix::net::Shutdown::Both);
    }

    async fn send(&self, msg: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<()> {
        self.sock.async_io(Interest::WRITABLE, || super::send(self.sock.as_fd(), msg, fds, true)).await
    }

    /// Runs `program` (`argv[0]` included in `argv`) on `stdio` (stdin, stdout, stderr); returns
    /// once the program was executed. vks's copies of the descriptors are closed on return.
    pub async fn run(
        self: &Arc<Self>,
        program: &str,
        argv: &[String],
        stdio: [OwnedFd; 3],
    ) -> Result<Command, RunError> {
        if self.closed.is_cancelled() {
            return Err(RunError::Unavailable("its connection ended".into()));
        }
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let msg = serde_json::to_vec(&Request::Run { id, program: program.to_owned(), argv: argv.to_vec() })
            .map_err(|e| RunError::Unavailable(e.to_string()))?;
        if msg.len() > super::MAX_MESSAGE {
            return Err(RunError::Unavailable(format!("a command line of {} bytes is too long for it", msg.len())));
        }
        let (tx, replies) = mpsc::unbounded_channel();
        lock(&self.pending).insert(id, tx);
        self.users.fetch_add(1, Ordering::SeqCst);
        // From here on, dropping the command undoes the registration.
        let mut command = Command { helper: self.clone(), id, replies, done: false };
        let fds = [stdio[0].as_fd(), stdio[1].as_fd(), stdio[2].as_fd()];
        self.send(&msg, &fds).await.map_err(|e| RunError::Unavailable(format!("sending the command: {e}")))?;
        drop(stdio);
        let first = tokio::time::timeout(START_WITHIN, command.replies.recv()).await;
        let Ok(first) = first else {
            return Err(RunError::Failed(format!("no answer from the exec helper within {START_WITHIN:?}")));
        };
        match first {
            Some(Reply::Started { .. }) => Ok(command),
            Some(Reply::Failed { error, .. }) => {
                command.done = true;
                Err(RunError::Failed(error))
            }
            // The request went out: whether the command started is unknown, so it is not run
            // another way.
            Some(other) => Err(RunError::Failed(format!("the exec helper answered {other:?}"))),
            None => Err(RunError::Failed("the container's exec helper ended before the command started".into())),
        }
    }
}

async fn read_replies(sock: &UnixDatagram, pending: &Pending) -> io::Result<()> {
    loop {
        let got = sock.async_io(Interest::READABLE, || super::recv(sock, true)).await?;
        if got.bytes.is_empty() {
            return Ok(());
        }
        match serde_json::from_slice::<Reply>(&got.bytes) {
            Ok(r) => {
                let id = match &r {
                    Reply::Ready => continue,
                    Reply::Started { id }
                    | Reply::Failed { id, .. }
                    | Reply::Exited { id, .. }
                    | Reply::Signaled { id, .. } => *id,
                };
                match lock(pending).get(&id) {
                    Some(tx) => {
                        let _ = tx.send(r);
                    }
                    None => log::debug!("exec helper: a reply for no waiting command: {r:?}"),
                }
            }
            Err(e) => log::warn!("exec helper: a reply that is not one ({e}): {}", String::from_utf8_lossy(&got.bytes)),
        }
    }
}

/// A command the helper runs.
pub struct Command {
    helper: Arc<Helper>,
    id: u64,
    replies: mpsc::UnboundedReceiver<Reply>,
    done: bool,
}

impl Command {
    /// Waits until the command ended and the rest of its process group was killed.
    pub async fn wait(&mut self) -> Result<Ended, String> {
        loop {
            match self.replies.recv().await {
                Some(Reply::Exited { code, .. }) => {
                    self.done = true;
                    return Ok(Ended::Code(code));
                }
                Some(Reply::Signaled { signal, .. }) => {
                    self.done = true;
                    return Ok(Ended::Signal(signal));
                }
                Some(Reply::Failed { error, .. }) => {
                    self.done = true;
                    return Err(error);
                }
                Some(Reply::Started { .. } | Reply::Ready) => {}
                // The helper's unit stopped (with the container): so did the command.
                None => {
                    self.done = true;
                    return Ok(Ended::Signal(9));
                }
            }
        }
    }

    /// Kills the command and its process group (the client went away).
    pub async fn kill(&mut self) {
        if self.done {
            return;
        }
        if let Ok(msg) = serde_json::to_vec(&Request::Kill { id: self.id }) {
            let _ = self.helper.send(&msg, &[]).await;
        }
        self.done = true;
    }
}

impl Drop for Command {
    fn drop(&mut self) {
        lock(&self.helper.pending).remove(&self.id);
        if !self.done {
            // Dropped while it runs (a cancelled task): kill it, without waiting.
            if let Ok(msg) = serde_json::to_vec(&Request::Kill { id: self.id }) {
                let _ = super::send(self.helper.sock.as_fd(), &msg, &[], true);
            }
        }
        *lock(&self.helper.last_used) = Instant::now();
        self.helper.users.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use super::*;
    use crate::exec_helper::{server, socket_pair};

    fn null() -> [OwnedFd; 3] {
        let r = std::fs::File::open("/dev/null").unwrap();
        let w = || std::fs::OpenOptions::new().write(true).open("/dev/null").unwrap();
        [r.into(), w().into(), w().into()]
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn a_helper_that_does_not_say_it_is_ready_is_not_used() {
        let (vks, theirs) = socket_pair().unwrap();
        drop(theirs);
        let e = Helper::connect(vks, Duration::from_secs(10)).await.err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");

        let (vks, theirs) = socket_pair().unwrap();
        crate::exec_helper::send(theirs.as_fd(), br#"{"reply":"exited","id":1,"code":0}"#, &[], false).unwrap();
        let e = Helper::connect(vks, Duration::from_secs(10)).await.err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");

        let (vks, _theirs) = socket_pair().unwrap();
        let e = Helper::connect(vks, Duration::from_millis(50)).await.err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    }

    #[tokio::test]
    async fn commands_run_concurrently_and_the_end_of_the_helper_is_seen() {
        let (vks, theirs) = socket_pair().unwrap();
        let server = std::thread::spawn(move || server::serve(&theirs));
        let helper = Helper::connect(vks, Duration::from_secs(10)).await.unwrap();
        let mut slow = helper.run("/bin/sh", &argv(&["sh", "-c", "sleep 0.5; exit 4"]), null()).await.unwrap();
        let mut fast = helper.run("/bin/sh", &argv(&["sh", "-c", "exit 5"]), null()).await.unwrap();
        assert!(!helper.is_idle(Duration::ZERO));
        assert_eq!(fast.wait().await, Ok(Ended::Code(5)));
        assert_eq!(slow.wait().await, Ok(Ended::Code(4)));
        drop((slow, fast));
        assert!(helper.is_idle(Duration::ZERO));
        assert!(!helper.is_idle(Duration::from_secs(60)));

        let e = helper.run("/no/such", &argv(&["x"]), null()).await.err().unwrap();
        assert!(matches!(&e, RunError::Failed(m) if m.contains("No such file")), "{e}");

        let mut sleeper = helper.run("/bin/sleep", &argv(&["sleep", "60"]), null()).await.unwrap();
        sleeper.kill().await;
        drop(sleeper);

        helper.close();
        assert_eq!(server.join().unwrap(), 0);
        tokio::time::timeout(Duration::from_secs(10), helper.closed().cancelled()).await.unwrap();
        assert!(matches!(helper.run("/bin/true", &argv(&["true"]), null()).await, Err(RunError::Unavailable(_))));
    }
}

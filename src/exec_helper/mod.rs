//! The exec helper: `vks exec-helper`, one long-running process per container that runs the
//! commands of `kubectl exec` (without a terminal) for it.
//!
//! Starting every command as its own transient unit makes systemd set up the container's
//! sandbox (mount namespace, file-system protections, ...) each time, which on systemd 252
//! takes 50-70 ms of the round trip. The helper is started once, as a transient unit with the
//! container's settings (the same drop-in a command's unit gets, [`crate::unit::exec_context`]),
//! and forks each command inside that sandbox, as the container's user, with its environment,
//! working directory, limits and slice: a command sees exactly what it would see in its own
//! unit, and systemd is no longer on the command's path.
//!
//! vks talks to the helper over a `SOCK_SEQPACKET` socket pair whose other end is the helper's
//! stdin. The helper first says [`Reply::Ready`]. Each message is one JSON document
//! ([`Request`], [`Reply`]); a [`Request::Run`]
//! carries the command's stdin, stdout and stderr as three file descriptors (`SCM_RIGHTS`), so
//! the command writes straight into vks's pipes. The helper replies [`Reply::Started`] (or
//! [`Reply::Failed`] when the program could not be executed) and, when the command ended and
//! what it left in its process group was killed, [`Reply::Exited`] or [`Reply::Signaled`].
//!
//! Lifetime: the helper's unit is bound to the container's unit (`BindsTo=`), so it stops with
//! the container (and the commands with it, as a container runtime ends an exec's processes
//! with the container); it exits when vks closes its end of the socket (vks does after
//! `kubelet.exec_helper_idle` without commands, and the kernel does when vks exits), killing what still
//! runs. vks sweeps helper units a previous vks left like every `vks-exec-*` unit.

pub mod client;
pub mod server;

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};
use serde::{Deserialize, Serialize};

/// The largest message either side sends or accepts (a command line longer than this is run
/// as its own unit instead).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// What vks asks the helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Run `program` with `argv` (`argv[0]` included) on the three descriptors that come with
    /// the message (stdin, stdout, stderr).
    Run {
        /// Chosen by vks, unique per helper.
        id: u64,
        /// Absolute path of the program in the container's view.
        program: String,
        /// The arguments, `argv[0]` included.
        argv: Vec<String>,
    },
    /// Kill command `id` and everything in its process group (its client went away).
    Kill {
        /// The command.
        id: u64,
    },
}

/// What the helper answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// The helper runs and can watch commands (its first message; a helper that cannot exits
    /// instead, and its container's commands run as units of their own).
    Ready,
    /// The program was executed.
    Started {
        /// The command.
        id: u64,
    },
    /// The program could not be executed (or the request was malformed).
    Failed {
        /// The command (0 when the request could not be read at all).
        id: u64,
        /// Why, e.g. `No such file or directory (os error 2)`.
        error: String,
    },
    /// The command exited with `code`.
    Exited {
        /// The command.
        id: u64,
        /// Its exit code.
        code: i32,
    },
    /// A signal ended the command.
    Signaled {
        /// The command.
        id: u64,
        /// The signal number.
        signal: i32,
    },
}

/// Sends one message with `fds` attached (at most 3).
pub fn send(sock: BorrowedFd<'_>, msg: &[u8], fds: &[BorrowedFd<'_>], nonblocking: bool) -> io::Result<()> {
    if msg.len() > MAX_MESSAGE {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("message of {} bytes", msg.len())));
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} descriptors", fds.len())));
    }
    let mut flags = SendFlags::NOSIGNAL;
    if nonblocking {
        flags |= SendFlags::DONTWAIT;
    }
    let n = rustix::net::sendmsg(sock, &[IoSlice::new(msg)], &mut control, flags)?;
    if n != msg.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, format!("sent {n} of {} bytes", msg.len())));
    }
    Ok(())
}

/// A received message: its bytes (empty at the end of the connection) and descriptors.
pub struct Received {
    /// The message.
    pub bytes: Vec<u8>,
    /// The descriptors that came with it (close on exec).
    pub fds: Vec<OwnedFd>,
}

/// Receives one message (up to [`MAX_MESSAGE`] bytes and 3 descriptors); a truncated one is
/// an error (its descriptors are closed).
pub fn recv(sock: impl AsFd, nonblocking: bool) -> io::Result<Received> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if nonblocking {
        flags |= RecvFlags::DONTWAIT;
    }
    let got = rustix::net::recvmsg(sock, &mut [IoSliceMut::new(&mut buf)], &mut control, flags)?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    if got.flags.intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "a message or its descriptors were cut off"));
    }
    buf.truncate(got.bytes);
    Ok(Received { bytes: buf, fds })
}

/// A connected `SOCK_SEQPACKET` pair (close on exec).
pub fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    Ok(rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn messages_are_json_with_a_tag() {
        let r = Request::Run { id: 7, program: "/bin/sh".into(), argv: vec!["sh".into(), "-c".into(), "true".into()] };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"run","id":7,"program":"/bin/sh","argv":["sh","-c","true"]}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let e = Reply::Exited { id: 7, code: 3 };
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"reply":"exited","id":7,"code":3}"#);
    }

    #[test]
    fn descriptors_travel_with_a_message_and_the_end_reads_empty() {
        let (a, b) = socket_pair().unwrap();
        let (mut r, w) = std::io::pipe().unwrap();
        send(a.as_fd(), b"hello", &[w.as_fd()], false).unwrap();
        drop(w);
        let got = recv(&b, false).unwrap();
        assert_eq!(got.bytes, b"hello");
        assert_eq!(got.fds.len(), 1);
        let mut passed = std::fs::File::from(got.fds.into_iter().next().unwrap());
        passed.write_all(b"through").unwrap();
        drop(passed);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "through");
        drop(a);
        let end = recv(&b, false).unwrap();
        assert!(end.bytes.is_empty() && end.fds.is_empty());
    }

    #[test]
    fn too_large_a_message_is_refused_before_sending() {
        let (a, _b) = socket_pair().unwrap();
        let e = send(a.as_fd(), &vec![b'x'; MAX_MESSAGE + 1], &[], false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}

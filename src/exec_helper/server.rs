//! `vks exec-helper`: runs in a container's sandbox with the socket to vks as its stdin (see
//! [`super`]). One thread: it polls the socket and a pidfd per running command.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command};

use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, PidfdFlags, Signal};

use super::{Reply, Request};

/// A command that runs.
struct Running {
    id: u64,
    child: Child,
    pid: Pid,
    pidfd: OwnedFd,
}

/// Serves vks on stdin until vks closes it; returns the exit code.
pub fn main() -> i32 {
    match io::stdin().as_fd().try_clone_to_owned() {
        Ok(sock) => serve(&sock),
        Err(e) => {
            eprintln!("vks exec-helper: stdin: {e}");
            1
        }
    }
}

fn reply(sock: &OwnedFd, r: &Reply) {
    let Ok(msg) = serde_json::to_vec(r) else { return };
    if let Err(e) = super::send(sock.as_fd(), &msg, &[], false) {
        eprintln!("vks exec-helper: replying {r:?}: {e}");
    }
}

/// Serves the requests on `sock` until its peer closes it; kills what still runs then.
pub fn serve(sock: &OwnedFd) -> i32 {
    // Commands are watched through pidfds: a sandbox whose system call filter refuses them gets
    // no helper.
    if let Err(e) = rustix::process::pidfd_open(rustix::process::getpid(), PidfdFlags::empty()) {
        eprintln!("vks exec-helper: cannot watch processes (pidfd_open: {e})");
        return 1;
    }
    reply(sock, &Reply::Ready);
    let mut running: Vec<Running> = Vec::new();
    let code = loop {
        let (sock_ready, exited) = {
            let mut fds = vec![PollFd::new(sock, PollFlags::IN)];
            fds.extend(running.iter().map(|r| PollFd::new(&r.pidfd, PollFlags::IN)));
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    eprintln!("vks exec-helper: poll: {e}");
                    break 1;
                }
            }
            let exited: Vec<usize> = (1..fds.len()).filter(|&i| !fds[i].revents().is_empty()).map(|i| i - 1).collect();
            (!fds[0].revents().is_empty(), exited)
        };
        // Highest index first, so that the others stay valid.
        for i in exited.into_iter().rev() {
            finish(sock, running.swap_remove(i));
        }
        if !sock_ready {
            continue;
        }
        let msg = match super::recv(sock, false) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // vks exited with a reply of ours unread: the kernel reports that as a reset.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break 0,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                reply(sock, &Reply::Failed { id: 0, error: e.to_string() });
                continue;
            }
            Err(e) => {
                eprintln!("vks exec-helper: reading a request: {e}");
                break 1;
            }
        };
        if msg.bytes.is_empty() && msg.fds.is_empty() {
            break 0; // vks closed its end
        }
        match serde_json::from_slice::<Request>(&msg.bytes) {
            Ok(Request::Run { id, program, argv }) => match start(id, &program, &argv, msg.fds) {
                Ok(r) => {
                    reply(sock, &Reply::Started { id });
                    running.push(r);
                }
                Err(error) => reply(sock, &Reply::Failed { id, error }),
            },
            Ok(Request::Kill { id }) => {
                if let Some(r) = running.iter().find(|r| r.id == id) {
                    // Not reaped yet, so the group is still the command's.
                    let _ = rustix::process::kill_process_group(r.pid, Signal::KILL);
                }
            }
            Err(e) => reply(sock, &Reply::Failed { id: 0, error: format!("a request that is not one: {e}") }),
        }
    };
    for r in running {
        let _ = rustix::process::kill_process_group(r.pid, Signal::KILL);
        let mut child = r.child;
        let _ = child.wait();
    }
    code
}

/// Starts `program` as the leader of a new process group on the three descriptors.
fn start(id: u64, program: &str, argv: &[String], fds: Vec<OwnedFd>) -> Result<Running, String> {
    let Ok([stdin, stdout, stderr]) = <[OwnedFd; 3]>::try_from(fds) else {
        return Err("a command comes with exactly three descriptors (stdin, stdout, stderr)".into());
    };
    let Some((argv0, args)) = argv.split_first() else { return Err("an empty command".into()) };
    let child = Command::new(program)
        .arg0(argv0)
        .args(args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(|e| e.to_string())?;
    let started = i32::try_from(child.id()).ok().and_then(Pid::from_raw).ok_or("no process id");
    let pidfd = started.and_then(|pid| {
        rustix::process::pidfd_open(pid, PidfdFlags::empty()).map(|fd| (pid, fd)).map_err(|_| "no pidfd")
    });
    match pidfd {
        Ok((pid, pidfd)) => Ok(Running { id, child, pid, pidfd }),
        Err(why) => {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("watching the started command: {why}"))
        }
    }
}

/// The command exited (it is a zombie until reaped here): kill what it left in its process
/// group (its output then ends), reap it, report how it ended.
fn finish(sock: &OwnedFd, r: Running) {
    let Running { id, mut child, pid, .. } = r;
    let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    match child.wait() {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => reply(sock, &Reply::Exited { id, code }),
            (None, Some(signal)) => reply(sock, &Reply::Signaled { id, signal }),
            (None, None) => reply(sock, &Reply::Failed { id, error: format!("an exit status of {s:?}") }),
        },
        Err(e) => reply(sock, &Reply::Failed { id, error: format!("waiting for the command: {e}") }),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsFd;

    use super::super::{Received, recv, send, socket_pair};
    use super::*;

    fn ask(sock: &OwnedFd, r: &Request, fds: &[std::os::fd::BorrowedFd<'_>]) {
        send(sock.as_fd(), &serde_json::to_vec(r).unwrap(), fds, false).unwrap();
    }

    fn answer(sock: &OwnedFd) -> Reply {
        let Received { bytes, .. } = recv(sock, false).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn runs_commands_reports_codes_and_signals_and_kills_on_request() {
        let (vks, helper) = socket_pair().unwrap();
        let server = std::thread::spawn(move || serve(&helper));
        assert_eq!(answer(&vks), Reply::Ready);
        let null = std::fs::File::open("/dev/null").unwrap();
        let (mut out_r, out_w) = std::io::pipe().unwrap();
        let (mut err_r, err_w) = std::io::pipe().unwrap();
        let run = |id, argv: &[&str]| Request::Run {
            id,
            program: "/bin/sh".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
        };
        ask(
            &vks,
            &run(1, &["sh", "-c", "echo out; echo err >&2; sleep 60 & exit 3"]),
            &[null.as_fd(), out_w.as_fd(), err_w.as_fd()],
        );
        drop((out_w, err_w));
        assert_eq!(answer(&vks), Reply::Started { id: 1 });
        assert_eq!(answer(&vks), Reply::Exited { id: 1, code: 3 });
        // The background sleep was killed with the group, so the output ends.
        let mut s = String::new();
        out_r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "out\n");
        s.clear();
        err_r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "err\n");

        let sink = std::fs::OpenOptions::new().write(true).open("/dev/null").unwrap();
        ask(&vks, &run(2, &["sh", "-c", "exec sleep 60"]), &[null.as_fd(), sink.as_fd(), sink.as_fd()]);
        assert_eq!(answer(&vks), Reply::Started { id: 2 });
        ask(&vks, &Request::Kill { id: 2 }, &[]);
        assert_eq!(answer(&vks), Reply::Signaled { id: 2, signal: 9 });

        let missing = Request::Run { id: 3, program: "/no/such/program".into(), argv: vec!["x".into()] };
        ask(&vks, &missing, &[null.as_fd(), sink.as_fd(), sink.as_fd()]);
        let Reply::Failed { id: 3, error } = answer(&vks) else { panic!() };
        assert!(error.contains("No such file"), "{error}");

        ask(&vks, &run(4, &["sh"]), &[null.as_fd()]);
        let Reply::Failed { id: 4, error } = answer(&vks) else { panic!() };
        assert!(error.contains("exactly three descriptors"), "{error}");

        send(vks.as_fd(), b"{not json", &[], false).unwrap();
        assert!(matches!(answer(&vks), Reply::Failed { id: 0, .. }));

        // vks ending with a reply unread is the end too (the kernel reports a reset), not a
        // failure of the helper.
        let (vks2, helper2) = socket_pair().unwrap();
        let server2 = std::thread::spawn(move || serve(&helper2));
        assert_eq!(answer(&vks2), Reply::Ready);
        ask(&vks2, &run(9, &["sh", "-c", "exit 0"]), &[null.as_fd(), sink.as_fd(), sink.as_fd()]);
        // Wait until a reply sits unread in vks's queue, then leave without reading it.
        rustix::event::poll(&mut [PollFd::new(&vks2, PollFlags::IN)], None).unwrap();
        drop(vks2);
        assert_eq!(server2.join().unwrap(), 0);

        // A command still running when vks closes its end is killed; the helper exits 0.
        ask(&vks, &run(5, &["sh", "-c", "exec sleep 60"]), &[null.as_fd(), sink.as_fd(), sink.as_fd()]);
        assert_eq!(answer(&vks), Reply::Started { id: 5 });
        drop(vks);
        assert_eq!(server.join().unwrap(), 0);
    }
}

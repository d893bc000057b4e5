//! exec, attach and port-forward with the real kubectl through the real API server to a real
//! systemd node, once over each stream protocol: the node declares ExtendWebSocketsToKubelet
//! (the API server passes kubectl's WebSockets through to vks) or not (the API server speaks
//! SPDY/3.1 to vks).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

const LONG: Duration = Duration::from_secs(90);

/// A kubectl child whose output is collected in the background.
struct Running {
    child: Child,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
    seen_out: String,
    seen_err: String,
}

impl Running {
    fn spawn(args: &[&str], stdin: bool) -> Running {
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", kubeconfig())
            .args(args)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        let lines = |r: Box<dyn Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
            rx
        };
        let out = lines(Box::new(child.stdout.take().unwrap()));
        let err = lines(Box::new(child.stderr.take().unwrap()));
        Running { child, out, err, seen_out: String::new(), seen_err: String::new() }
    }

    /// Waits for a stdout line containing `what`; returns it.
    fn wait_out(&mut self, what: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            while let Ok(l) = self.err.try_recv() {
                self.seen_err.push_str(&l);
                self.seen_err.push('\n');
            }
            if let Ok(l) = self.out.recv_timeout(left.min(Duration::from_millis(200))) {
                self.seen_out.push_str(&l);
                self.seen_out.push('\n');
                if l.contains(what) {
                    return l;
                }
            }
        }
        panic!("no {what:?} from kubectl within {timeout:?}; stdout:\n{}\nstderr:\n{}", self.seen_out, self.seen_err);
    }

    /// Waits for a stderr line containing `what`.
    fn wait_err(&mut self, what: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            if let Ok(l) = self.err.recv_timeout(left.min(Duration::from_millis(200))) {
                self.seen_err.push_str(&l);
                self.seen_err.push('\n');
                if l.contains(what) {
                    return l;
                }
            }
        }
        panic!("no {what:?} on kubectl's stderr within {timeout:?}; stderr:\n{}", self.seen_err);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// kubectl's stderr without kubectl's own log lines (klog: `E1202 19:03:11.123456 ...`).
///
/// Over SPDY the API server translates kubectl's WebSocket and, as soon as the connection is open,
/// writes an empty message on stdout to say so; kubectl's reader can see it before it registered
/// its stdout stream and logs "Unknown stream id 1, discarding message". That race is between
/// kubectl and the API server (the message carries no data), so it is not the command's output.
fn program_stderr(stderr: &[u8]) -> String {
    let klog = |l: &str| {
        let b = l.as_bytes();
        b.len() > 5 && b"EWIF".contains(&b[0]) && b[1..5].iter().all(u8::is_ascii_digit) && b[5] == b' '
    };
    String::from_utf8_lossy(stderr).split_inclusive('\n').filter(|l| !klog(l)).collect()
}

/// Runs kubectl with `input` on stdin; (exit code, stdout, stderr).
fn kubectl_with_input(args: &[&str], input: &str) -> (i32, String, String) {
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Gives kubectl a terminal of `rows`x`cols` (a Python pty), types `input` once the remote shell
/// prompted; (exit code, everything the terminal showed).
fn kubectl_in_terminal(rows: u16, cols: u16, input: &str, args: &[&str]) -> (i32, String) {
    kubectl_in_terminal_after("# ", rows, cols, input, args)
}

/// [`kubectl_in_terminal`], typing once `ready` was seen on the terminal.
fn kubectl_in_terminal_after(ready: &str, rows: u16, cols: u16, input: &str, args: &[&str]) -> (i32, String) {
    const PTY: &str = r#"
import fcntl, os, pty, select, struct, sys, termios, time
rows, cols, inp, ready, cmd = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4].encode(), sys.argv[5:]
pid, fd = pty.fork()
if pid == 0:
    fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack('HHHH', rows, cols, 0, 0))
    os.execvp(cmd[0], cmd)
out, sent, start = b'', False, time.time()
while time.time() - start < 60:
    r, _, _ = select.select([fd], [], [], 0.2)
    if fd in r:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
    if not sent and (ready in out or time.time() - start > 10):
        os.write(fd, inp)
        sent = True
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let out = Command::new("python3")
        .env("KUBECONFIG", kubeconfig())
        .args(["-c", PTY, &rows.to_string(), &cols.to_string(), input, ready, "kubectl"])
        .args(args)
        .output()
        .expect("python3");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).replace('\r', ""))
}

/// Types `text` into kubectl `session` (an attach with stdin to a `cat`) until it comes back: the
/// session may need a moment to start. Ends the session.
fn echo_through(mut session: Running, text: &str) {
    let end = Instant::now() + LONG;
    let mut stdin = session.child.stdin.take().unwrap();
    loop {
        writeln!(stdin, "{text}").unwrap();
        stdin.flush().unwrap();
        if session.out.recv_timeout(Duration::from_secs(1)).is_ok_and(|l| l.contains(text)) {
            break;
        }
        let err: Vec<String> = session.err.try_iter().collect();
        assert!(Instant::now() < end, "{text} did not come back; stderr: {err:?}");
    }
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("the forwarded port");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

/// A pod with: `main` (records its own user, working directory and environment, then sleeps),
/// `echo` (`cat` with stdin: true), `talker` (a line every 0.3 s) and `web` (an HTTP server on
/// 127.0.0.1:`port`).
fn streams_pod(name: &str, node: &Node, port: u16) -> serde_json::Value {
    let record = format!(
        "mkdir -p /run/e2e-{name} && id > /run/e2e-{name}/id && pwd > /run/e2e-{name}/pwd && \
         echo \"$GREETING|$POD_NAME\" > /run/e2e-{name}/env && exec sleep infinity"
    );
    let web = format!(
        "$s=IO::Socket::INET->new(LocalAddr=>'127.0.0.1',LocalPort=>{port},Listen=>5,ReuseAddr=>1) or die $!; \
         while($c=$s->accept){{ while(<$c>){{ last if /^\\r?$/ }} \
         print $c \"HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\nhello from $ENV{{POD_NAME}}\\n\"; close $c }}"
    );
    let pod_env = json!([{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]);
    json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "nodeName": node.name, "terminationGracePeriodSeconds": 2,
            "containers": [
                {"name": "main", "image": "/bin/sh", "command": ["/bin/sh", "-c", record], "workingDir": "/var/lib",
                 "env": [{"name": "GREETING", "value": "hello world"},
                         {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
                {"name": "echo", "image": "/bin/cat", "command": ["/bin/cat"], "stdin": true},
                {"name": "term", "image": "/bin/sh", "command": ["/bin/sh"], "stdin": true, "tty": true},
                {"name": "talker", "image": "/bin/sh",
                 "command": ["/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.3; done"]},
                {"name": "web", "image": "/usr/bin/perl", "command": ["/usr/bin/perl", "-MIO::Socket::INET", "-e", web],
                 "env": pod_env},
            ]
        }
    })
}

/// Everything kubectl streams, against pod `p` on `node`; `transport` is what vks must log.
async fn battery(node: &Node, ns: &str, transport: &str, port: u16) {
    let client = client().await;
    let p = "streams";
    create_pod(&client, ns, streams_pod(p, node, port)).await;
    wait_phase(&client, ns, p, "Running", LONG).await;
    wait_for("the main container to record its context", LONG, async || {
        node.exec_output(&["test", "-s", &format!("/run/e2e-{p}/env")])
            .status
            .success()
            .then_some(())
            .ok_or("not yet".into())
    })
    .await;

    // Exit codes come back as kubectl's own.
    let ok = kubectl_output(&["-n", ns, "exec", p, "-c", "main", "--", "true"]);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    let three =
        kubectl_output(&["-n", ns, "exec", p, "-c", "main", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(three.status.code(), Some(3), "{}", String::from_utf8_lossy(&three.stderr));
    assert_eq!(String::from_utf8_lossy(&three.stdout), "out\n");
    assert!(program_stderr(&three.stderr).starts_with("err\n"), "{}", String::from_utf8_lossy(&three.stderr));
    assert!(
        node.vks_journal().contains(&format!("exec in {ns}/{p}/main: [\"true\"] over {transport}")),
        "vks did not log an exec over {transport}:\n{}",
        node.vks_journal()
    );

    // A program that does not exist is a clear error, not an exit code of the shell.
    let missing = kubectl_output(&["-n", ns, "exec", p, "-c", "main", "--", "no-such-program"]);
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("executable \"no-such-program\" not found in PATH"), "{err}");

    // The command runs as the container does: user, working directory, environment.
    let seen = kubectl(&["-n", ns, "exec", p, "-c", "main", "--", "sh", "-c", "id; pwd; echo \"$GREETING|$POD_NAME\""]);
    let own = format!(
        "{}{}{}",
        node.exec(&["cat", &format!("/run/e2e-{p}/id")]),
        node.exec(&["cat", &format!("/run/e2e-{p}/pwd")]),
        node.exec(&["cat", &format!("/run/e2e-{p}/env")])
    );
    assert_eq!(seen, own);
    assert!(seen.contains("/var/lib\nhello world|streams\n"), "{seen}");
    // Arguments arrive exactly, $ and all.
    assert_eq!(
        kubectl(&["-n", ns, "exec", p, "-c", "main", "--", "printf", "%s|", "$HOME", "a b", "'q'"]),
        "$HOME|a b|'q'|"
    );

    // Commands without a terminal run through the container's one exec helper (started once,
    // not per command), in the container's slice, so they count against the pod's limits.
    let main_unit = format!("vks.{ns}.{p}.main.service");
    let helpers = node.vks_journal().matches(&format!(" for {main_unit}\n")).count();
    assert_eq!(helpers, 1, "one exec helper for {main_unit}:\n{}", node.vks_journal());
    let slice = node.unit_prop(&main_unit, "Slice");
    let cgroup = kubectl(&["-n", ns, "exec", p, "-c", "main", "--", "cat", "/proc/self/cgroup"]);
    assert!(cgroup.contains(&format!("/{slice}/vks-exec-helper-")), "{slice}: {cgroup}");

    // stdin, to its end.
    let (code, out, err) =
        kubectl_with_input(&["-n", ns, "exec", "-i", p, "-c", "main", "--", "sh", "-c", "wc -l; cat"], "a\nb\n");
    assert_eq!((code, out.as_str()), (0, "2\n"), "{err}");

    // A terminal of the client's size, the shell's exit code.
    let (code, screen) = kubectl_in_terminal(
        33,
        111,
        "tty; stty size; exit 7\n",
        &["-n", ns, "exec", "-it", p, "-c", "main", "--", "sh"],
    );
    assert_eq!(code, 7, "{screen}");
    assert!(screen.contains("/dev/pts/"), "{screen}");
    assert!(screen.contains("33 111"), "{screen}");

    // A command whose client goes away is stopped.
    let mut sleeper =
        Running::spawn(&["-n", ns, "exec", p, "-c", "main", "--", "sh", "-c", "echo started; exec sleep 1234"], false);
    sleeper.wait_out("started", LONG);
    drop(sleeper);
    wait_for("the command to go away with its client", LONG, async || {
        // The container's exec helper stays (until idle); nothing else does.
        let units = node.sh("systemctl list-units --all --no-legend 'vks-exec-*' | grep -v 'vks-exec-helper-' || true");
        let procs = node.sh("pgrep -f 'sleep 123[4]' || true");
        if units.trim().is_empty() && procs.trim().is_empty() { Ok(()) } else { Err(format!("{units}{procs}")) }
    })
    .await;

    // attach: the container's output, and its input when it has stdin.
    let mut talk = Running::spawn(&["-n", ns, "attach", p, "-c", "talker"], false);
    talk.wait_out("tick", LONG);
    drop(talk);
    echo_through(Running::spawn(&["-n", ns, "attach", "-i", p, "-c", "echo"], true), "ping-through-attach");

    // attach -it: the terminal of a tty: true container, of the client's size; the shell's
    // output is the container's log too.
    let (_, screen) = kubectl_in_terminal_after(
        "try pressing enter",
        27,
        93,
        "sleep 1; tty; stty size; echo $((6 * 7))-from-the-terminal; exit 3\n",
        &["-n", ns, "attach", "-it", p, "-c", "term"],
    );
    assert!(screen.contains("/dev/pts/"), "{screen}");
    assert!(screen.contains("27 93"), "{screen}");
    assert!(screen.contains("42-from-the-terminal"), "{screen}");
    let ended = wait_for("the shell's exit in the container status", LONG, async || {
        let pod = get_pod(&client, ns, p).await.ok_or("gone")?;
        let statuses = pod.status.and_then(|s| s.container_statuses).unwrap_or_default();
        let term = statuses.into_iter().find(|c| c.name == "term").ok_or("no status")?;
        match term.last_state.and_then(|s| s.terminated) {
            Some(t) => Ok(t),
            None => Err(format!("{:?}", term.state)),
        }
    })
    .await;
    assert_eq!(ended.exit_code, 3, "the shim exits with the program's code");
    let logs = kubectl(&["-n", ns, "logs", p, "-c", "term", "--previous"]);
    assert!(logs.contains("42-from-the-terminal"), "{logs}");

    ephemeral_containers(ns, p, &seen).await;

    // port-forward carries an HTTP request to the pod's port.
    let mut pf = Running::spawn(&["-n", ns, "port-forward", &format!("pod/{p}"), &format!(":{port}")], false);
    let line = pf.wait_out("Forwarding from 127.0.0.1:", LONG);
    let local: u16 = line.split("127.0.0.1:").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let body = http_get(local, "/");
    assert!(body.starts_with("HTTP/1.0 200 OK"), "{body}");
    assert!(body.ends_with("hello from streams\n"), "{body}");
    assert!(http_get(local, "/again").ends_with("hello from streams\n"), "a second connection");
    drop(pf);
    // A port of the node the pod does not listen on (vks's own) is refused.
    let mut pf = Running::spawn(&["-n", ns, "port-forward", &format!("pod/{p}"), ":10250"], false);
    let line = pf.wait_out("Forwarding from 127.0.0.1:", LONG);
    let local: u16 = line.split("127.0.0.1:").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let _ = TcpStream::connect(("127.0.0.1", local)).map(|mut s| {
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = s.read(&mut [0u8; 16]);
    });
    pf.wait_err("no process of the pod listens on TCP port 10250", LONG);
    // The exec helper stops with its container; the container's next run gets a new one. (An
    // exec first: the helper may have been closed as idle meanwhile.)
    kubectl(&["-n", ns, "exec", p, "-c", "main", "--", "true"]);
    let before = node.vks_journal().matches(&format!(" for {main_unit}\n")).count();
    let helper = node.sh("systemctl list-units --no-legend --plain 'vks-exec-helper-*' | cut -d' ' -f1");
    let helper = helper.trim().to_owned();
    assert!(helper.starts_with("vks-exec-helper-") && !helper.contains('\n'), "{helper:?}");
    node.exec(&["systemctl", "kill", "-s", "SIGKILL", &main_unit]);
    wait_for("main's exec helper to stop with main", LONG, async || {
        let state = node.unit_prop(&helper, "ActiveState");
        if state == "active" { Err(state) } else { Ok(()) }
    })
    .await;
    wait_for("an exec into main's next run", LONG, async || {
        let out = kubectl_output(&["-n", ns, "exec", p, "-c", "main", "--", "echo", "again"]);
        if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
    })
    .await;
    let helpers = node.vks_journal().matches(&format!(" for {main_unit}\n")).count();
    assert_eq!(helpers, before + 1, "a new helper for main's new run:\n{}", node.vks_journal());

    let pf_how = if transport == "WebSocket" { "tunnelled in WebSocket" } else { "over SPDY" };
    let journal = node.vks_journal();
    assert!(journal.contains(&format!("port-forward to pod {ns}/{p} {pf_how}")), "{journal}");
    assert!(journal.contains(&format!("attach in {ns}/{p}/echo: [] over {transport}")), "{journal}");
}

/// The status of ephemeral container `name` of pod `p`.
async fn ephemeral_status(ns: &str, p: &str, name: &str) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    let pod = get_pod(&client().await, ns, p).await?;
    pod.status?.ephemeral_container_statuses?.into_iter().find(|c| c.name == name)
}

/// `kubectl debug` on pod `p`, whose container `main` runs with the user, working directory and
/// environment `main_context` shows: an ephemeral container with `--target=main` runs once in
/// that context, is never restarted and leaves the pod Running and Ready; one with `-i` is
/// attached to.
async fn ephemeral_containers(ns: &str, p: &str, main_context: &str) {
    let ctx = "id; pwd; echo \"$GREETING|$POD_NAME\"";
    // kubectl wants an image reference: Debian packages the node has (dash gives /bin/sh,
    // coreutils /bin/cat), with the policy Never so that nothing is downloaded.
    let debug = ["-n", ns, "debug", p, "--image-pull-policy=Never", "--target=main"];
    kubectl(&[&debug[..], &["--image=dash", "-c", "dbg", "--", "/bin/sh", "-c", ctx]].concat());
    let done = wait_for("the ephemeral container to complete", LONG, async || {
        let s = ephemeral_status(ns, p, "dbg").await;
        match s.as_ref().and_then(|s| s.state.as_ref()?.terminated.clone()) {
            Some(t) => Ok(t),
            None => Err(format!("{s:?}")),
        }
    })
    .await;
    assert_eq!((done.exit_code, done.reason.as_deref()), (0, Some("Completed")));
    let logs = kubectl(&["-n", ns, "logs", p, "-c", "dbg"]);
    assert_eq!(logs, main_context, "the ephemeral container runs as its target does");
    hold_for("the ephemeral container not to run again", Duration::from_secs(3), async || {
        let s = ephemeral_status(ns, p, "dbg").await.ok_or("gone")?;
        let again = s.restart_count != 0 || s.state.as_ref().is_none_or(|st| st.terminated.is_none());
        if again { Err(format!("{s:?}")) } else { Ok(()) }
    })
    .await;
    let pod = get_pod(&client().await, ns, p).await.unwrap();
    assert_eq!(phase(&pod), "Running");
    let conditions = pod.status.unwrap().conditions.unwrap();
    assert!(conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"), "{conditions:?}");
    assert!(!crate::data::events(ns, p).iter().any(|e| e.contains("FieldIgnored")), "nothing is ignored");

    // `kubectl debug -i`: kubectl waits for it to run, then attaches to its stdin and output.
    let dbg =
        Running::spawn(&[&debug[..], &["-i", "--image=coreutils", "-c", "dbg-i", "--", "/bin/cat"]].concat(), true);
    echo_through(dbg, "ping-through-debug");
    let s = ephemeral_status(ns, p, "dbg-i").await.unwrap();
    assert!(s.state.unwrap().running.is_some(), "it runs on after the session");

    // `kubectl debug -it`: a shell on a terminal of the client's size, in the target's context.
    let (_, screen) = kubectl_in_terminal_after(
        "try pressing enter",
        21,
        77,
        "sleep 1; stty size; echo \"debug-$((6 * 7))|$GREETING\"; exit 0\n",
        &[&debug[..], &["-it", "--image=dash", "-c", "dbg-t", "--", "/bin/sh"]].concat(),
    );
    assert!(screen.contains("21 77") && screen.contains("debug-42|hello world"), "{screen}");
}

fn port_for(offset: u16) -> u16 {
    20_000 + (std::process::id() % 4000) as u16 * 2 + offset
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn exec_attach_port_forward_over_websocket() {
    let node = Node::up("streams-ws");
    let ns = Namespace::new("streams-ws");
    let client = client().await;
    let features = node.object(&client).await.status.and_then(|s| s.declared_features).unwrap_or_default();
    assert_eq!(features, ["ExtendWebSocketsToKubelet"]);
    battery(&node, &ns.name, "WebSocket", port_for(0)).await;
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn exec_attach_port_forward_over_spdy() {
    let node = Node::up("streams-spdy");
    node.sh(
        "sed -i 's/^\\[kubelet\\]$/[kubelet]\\nwebsocket_streaming = false/' /etc/vks/config.toml && systemctl restart vks",
    );
    let ns = Namespace::new("streams-spdy");
    let client = client().await;
    wait_for("the node to withdraw ExtendWebSocketsToKubelet", LONG, async || {
        let f = node.object(&client).await.status.and_then(|s| s.declared_features).unwrap_or_default();
        if f.is_empty() { Ok(()) } else { Err(format!("{f:?}")) }
    })
    .await;
    battery(&node, &ns.name, "SPDY", port_for(1)).await;
}

/// The exec helper's life: closed when idle, ended with vks (and its running command with it,
/// the container untouched), and off with `exec_helpers = false`.
#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn exec_helper_idles_out_ends_with_vks_and_can_be_turned_off() {
    let node = Node::up("exec-helper");
    node.sh(
        "sed -i 's/^\\[kubelet\\]$/[kubelet]\\nexec_helper_idle = \"3s\"/' /etc/vks/config.toml && systemctl restart vks",
    );
    let ns = Namespace::new("exec-helper");
    let (ns, p) = (ns.name.as_str(), "h");
    let client = client().await;
    let spec = json!({ "terminationGracePeriodSeconds": 2,
        "containers": [{ "name": "c", "image": "/bin/sh", "command": ["/bin/sh", "-c", "exec sleep infinity"] }] });
    create_pod(&client, ns, crate::data::pod(p, &node, spec)).await;
    wait_phase(&client, ns, p, "Running", LONG).await;
    let unit = unit_name(ns, p, "c");
    let helpers = || node.sh("systemctl list-units --no-legend --plain 'vks-exec-helper-*' | cut -d' ' -f1");
    let started = || node.vks_journal().matches(&format!(" for {unit}\n")).count();

    assert_eq!(kubectl(&["-n", ns, "exec", p, "-c", "c", "--", "echo", "one"]), "one\n");
    assert!(helpers().contains("vks-exec-helper-"), "a helper after the first command");
    wait_for("the idle helper to be closed", LONG, async || {
        let h = helpers();
        if h.trim().is_empty() { Ok(()) } else { Err(h) }
    })
    .await;
    assert_eq!(kubectl(&["-n", ns, "exec", p, "-c", "c", "--", "echo", "two"]), "two\n");
    assert_eq!(started(), 2, "a new helper after the idle one was closed");

    // vks restarts while a command runs: the helper and the command end, the container runs on.
    let main_pid = node.unit_prop(&unit, "MainPID");
    let mut long =
        Running::spawn(&["-n", ns, "exec", p, "-c", "c", "--", "sh", "-c", "echo started; exec sleep 2345"], false);
    long.wait_out("started", LONG);
    node.exec(&["systemctl", "restart", "vks"]);
    drop(long);
    wait_for("the helper and its command to end with vks", LONG, async || {
        let left = format!("{}{}", helpers(), node.sh("pgrep -f 'sleep 234[5]' || true"));
        if left.trim().is_empty() { Ok(()) } else { Err(left) }
    })
    .await;
    assert_eq!(node.unit_prop(&unit, "MainPID"), main_pid, "the container was not touched");

    // Turned off: the command is a transient unit of its own.
    node.sh(
        "sed -i 's/^\\[kubelet\\]$/[kubelet]\\nexec_helpers = false/' /etc/vks/config.toml && systemctl restart vks",
    );
    let cgroup = wait_for("an exec after vks restarted", LONG, async || {
        let out = kubectl_output(&["-n", ns, "exec", p, "-c", "c", "--", "cat", "/proc/self/cgroup"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() { Ok(text) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
    })
    .await;
    assert!(cgroup.contains("/vks-exec-") && !cgroup.contains("/vks-exec-helper-"), "{cgroup}");
    assert!(helpers().trim().is_empty(), "no helper: {}", helpers());
}

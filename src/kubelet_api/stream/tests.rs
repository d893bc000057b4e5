//! The streaming endpoints end to end inside the process: requests through hyper's HTTP/1
//! server (with upgrades) into [`serve`], against a fake node. The SPDY tests replay bytes the
//! Go clients sent in recorded exchanges (tests/testdata/spdy) and compare vks's answers with
//! those of the Go server; the WebSocket tests use tungstenite as the client.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::codec::Decoder;

use super::backend::{Conn, ContainerUnit, Containers, Control, ExitStatus, Process, Stdio};
use super::spdy::Frame;
use super::spdy::frame::Codec;
use super::spdy::tests::{frames, recording};
use super::{Limits, StreamContext, serve};
use crate::unit::{ContainerKind, UnitMeta};

/// A pod `ns/pod` (UID `uid`) with a running container `c` and an exited one `done`. Commands
/// echo their stdin to stdout (after "size WxH" with a terminal), write "to stderr" and exit with
/// `code`; port connections answer "pong PORT <what they read>".
struct Fake {
    code: i32,
}

fn unit(container: &str, running: bool) -> ContainerUnit {
    ContainerUnit {
        unit: format!("vks.ns.pod.{container}.service"),
        meta: UnitMeta {
            namespace: "ns".into(),
            pod: "pod".into(),
            pod_uid: "uid".into(),
            container: container.into(),
            kind: ContainerKind::App,
            image: "/bin/sh".into(),
            image_id: "file:///bin/sh".into(),
            restart_policy: "Always".into(),
            spec_hash: "h".into(),
        },
        file: String::new(),
        state: if running { "active/running".into() } else { "active/exited".into() },
        running,
        invocation: "0123".into(),
    }
}

struct FakeControl(Option<oneshot::Receiver<i32>>);

#[async_trait]
impl Control for FakeControl {
    async fn wait(&mut self) -> Result<ExitStatus, String> {
        match self.0.take() {
            Some(rx) => rx.await.map(ExitStatus::Code).map_err(|_| "gone".into()),
            None => Err("waited twice".into()),
        }
    }
    async fn kill(&mut self) {}
}

#[async_trait]
impl Containers for Fake {
    async fn pod(&self, namespace: &str, pod: &str) -> Result<Vec<ContainerUnit>, String> {
        Ok(if (namespace, pod) == ("ns", "pod") { vec![unit("c", true), unit("done", false)] } else { vec![] })
    }

    async fn exec(&self, _: &ContainerUnit, command: &[String], stdio: Stdio) -> Result<Process, String> {
        if command.first().map(String::as_str) == Some("missing") {
            return Err("executable \"missing\" not found in PATH (/bin)".into());
        }
        let (stdin_ours, mut stdin_theirs) = tokio::io::duplex(1 << 16);
        let (stdout_ours, mut stdout_theirs) = tokio::io::duplex(1 << 16);
        let (stderr_ours, mut stderr_theirs) = tokio::io::duplex(1 << 16);
        let (tx, rx) = oneshot::channel();
        let code = self.code;
        let tty = stdio.tty;
        tokio::spawn(async move {
            if let Some(Some(size)) = tty {
                let _ = stdout_theirs.write_all(format!("size {}x{}\n", size.width, size.height).as_bytes()).await;
            }
            let mut input = Vec::new();
            let _ = stdin_theirs.read_to_end(&mut input).await;
            let _ = stdout_theirs.write_all(&input).await;
            if tty.is_none() {
                let _ = stderr_theirs.write_all(b"to stderr\n").await;
            }
            drop((stdout_theirs, stderr_theirs));
            let _ = tx.send(code);
        });
        Ok(Process {
            stdin: stdio.stdin.then(|| Box::new(stdin_ours) as _),
            stdout: stdio.stdout.then(|| Box::new(stdout_ours) as _),
            stderr: (stdio.stderr && stdio.tty.is_none()).then(|| Box::new(stderr_ours) as _),
            terminal: None,
            control: Box::new(FakeControl(Some(rx))),
        })
    }

    async fn attach(&self, c: &ContainerUnit, stdio: Stdio) -> Result<Process, String> {
        self.exec(c, &["attach".into()], stdio).await
    }

    async fn connect(&self, _: &[ContainerUnit], port: u16) -> Result<Box<dyn Conn>, String> {
        if port == 1 {
            return Err("no process of the pod listens on TCP port 1".into());
        }
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut b = [0u8; 64];
            let n = theirs.read(&mut b).await.unwrap_or(0);
            let _ = theirs.write_all(format!("pong {port} ").as_bytes()).await;
            let _ = theirs.write_all(&b[..n]).await;
        });
        Ok(Box::new(ours))
    }
}

fn context(code: i32) -> StreamContext {
    StreamContext::new(Arc::new(Fake { code }), Limits::default())
}

/// A client connection to an HTTP/1 server that routes everything to [`serve`].
fn connect(ctx: StreamContext) -> DuplexStream {
    let (client, server) = tokio::io::duplex(1 << 20);
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(serve(req, &ctx).await) }
    });
    tokio::spawn(
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), service).with_upgrades(),
    );
    client
}

async fn read_all(mut c: DuplexStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await.expect("the server closes").unwrap();
    out
}

fn split_head(raw: &[u8]) -> (String, Vec<u8>) {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").map_or(raw.len(), |p| p + 4);
    (String::from_utf8_lossy(&raw[..end]).into_owned(), raw[end..].to_vec())
}

fn data_of(frames: &[Frame], id: u32) -> Vec<u8> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Data { stream_id, data, .. } if *stream_id == id => Some(data.to_vec()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn status_json(frames: &[Frame], id: u32) -> serde_json::Value {
    serde_json::from_slice(&data_of(frames, id)).unwrap()
}

/// End offsets of the frames in `bytes`.
fn frame_ends(bytes: &[u8]) -> Vec<usize> {
    let mut codec = Codec::default();
    let mut buf = BytesMut::from(bytes);
    let mut ends = Vec::new();
    while codec.decode(&mut buf).unwrap().is_some() {
        ends.push(bytes.len() - buf.len());
    }
    ends
}

#[tokio::test]
async fn the_recorded_go_exec_client_gets_what_the_go_server_sent() {
    let (head, spdy) = recording("exec-v4-pipes-exit3.c2s");
    let mut c = connect(context(3));
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&spdy).await.unwrap();
    let (ours_head, ours) = split_head(&read_all(c).await);
    assert!(ours_head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{ours_head}");
    assert!(ours_head.to_ascii_lowercase().contains("x-stream-protocol-version: v4.channel.k8s.io\r\n"), "{ours_head}");
    let (_, go) = recording("exec-v4-pipes-exit3.s2c");
    let (go, ours) = (frames(&go), frames(&ours));
    assert_eq!(data_of(&ours, 5), data_of(&go, 5), "stdout");
    assert_eq!(data_of(&ours, 7), data_of(&go, 7), "stderr");
    let (g, o) = (status_json(&go, 1), status_json(&ours, 1));
    assert_eq!((&o["status"], &o["reason"], &o["details"]), (&g["status"], &g["reason"], &g["details"]));
}

#[tokio::test]
async fn the_recorded_go_tty_client_gets_its_size_and_output() {
    let (head, spdy) = recording("exec-v4-tty.c2s");
    let mut c = connect(context(0));
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&spdy).await.unwrap();
    let (_, ours) = split_head(&read_all(c).await);
    let (_, go) = recording("exec-v4-tty.s2c");
    let (go, ours) = (frames(&go), frames(&ours));
    assert_eq!(data_of(&ours, 5), data_of(&go, 5), "the initial size reached the command, then stdin came back");
    assert_eq!(status_json(&ours, 1)["status"], "Success");
}

#[tokio::test]
async fn the_recorded_go_port_forward_client_gets_the_pods_answer() {
    let (head, spdy) = recording("portforward.c2s");
    let ends = frame_ends(&spdy);
    // The client reset its data stream only after it had the answer: send that part later.
    let before_reset = ends[3];
    let mut c = connect(context(0));
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&spdy[..before_reset]).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    let (_, go) = recording("portforward.s2c");
    let want = data_of(&frames(&go), 3);
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
            let (_, spdy) = split_head(&got);
            let ends = frame_ends(&spdy);
            if let Some(&end) = ends.last()
                && data_of(&frames(&spdy[..end]), 3) == want
            {
                break;
            }
        }
    })
    .await
    .expect("the pod's answer");
    c.write_all(&spdy[before_reset..]).await.unwrap();
    // The Go client closes the connection after its GOAWAY; vks's side ends then.
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await.expect("vks closes").unwrap();
}

async fn http(ctx: StreamContext, request: &str) -> (String, String) {
    let mut c = connect(ctx);
    c.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    // Error responses keep the connection open: read until the body is complete.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await.unwrap().unwrap();
        out.extend_from_slice(&buf[..n]);
        let (head, body) = split_head(&out);
        let len = head.lines().find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse::<usize>().unwrap())
        });
        if n == 0 || len.is_some_and(|l| body.len() >= l) {
            return (head, String::from_utf8_lossy(&body).into_owned());
        }
    }
}

fn spdy_request(path: &str, versions: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n{}Content-Length: 0\r\n\r\n",
        if versions.is_empty() { String::new() } else { format!("X-Stream-Protocol-Version: {versions}\r\n") }
    )
}

#[tokio::test]
async fn requests_that_cannot_be_served_get_a_status_naming_the_problem() {
    let cases = [
        (
            spdy_request("/exec/ns/other/c?command=sh&output=1", "v4.channel.k8s.io"),
            "404",
            "pod ns/other does not run on this node",
        ),
        (
            spdy_request("/exec/ns/pod/c/wrong-uid?command=sh&output=1", "v4.channel.k8s.io"),
            "404",
            "pod ns/pod with UID wrong-uid",
        ),
        (
            spdy_request("/exec/ns/pod/nope?command=sh&output=1", "v4.channel.k8s.io"),
            "404",
            "container \\\"nope\\\" not found in pod ns/pod",
        ),
        (
            spdy_request("/exec/ns/pod/done?command=sh&output=1", "v4.channel.k8s.io"),
            "400",
            "is not running (unit vks.ns.pod.done.service is active/exited)",
        ),
        (spdy_request("/exec/ns/pod/c?output=1", "v4.channel.k8s.io"), "400", "no command given"),
        (spdy_request("/exec/ns/pod/c?command=sh", "v4.channel.k8s.io"), "400", "at least 1 of stdin, stdout, stderr"),
        (spdy_request("/exec/ns/pod/c?command=sh&output=1", ""), "400", "X-Stream-Protocol-Version is missing"),
        (
            spdy_request("/exec/ns/pod/c?command=sh&output=1", "v9.channel.k8s.io"),
            "403",
            "unable to negotiate protocol",
        ),
        (
            "GET /exec/ns/pod/c?command=sh&output=1 HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            "400",
            "needs a connection upgrade",
        ),
        (spdy_request("/exec/ns/pod", "v4.channel.k8s.io"), "404", "no streaming endpoint at /exec/ns/pod"),
    ];
    for (req, code, message) in cases {
        let (head, body) = http(context(0), &req).await;
        assert!(head.starts_with(&format!("HTTP/1.1 {code} ")), "{req}\n{head}");
        assert!(body.contains(message), "{req}\nwanted {message:?} in {body}");
        assert!(body.contains("\"kind\":\"Status\""), "{body}");
    }
    let (head, _) = http(context(0), &spdy_request("/exec/ns/pod/c?command=sh&output=1", "v9.channel.k8s.io")).await;
    assert!(head.to_ascii_lowercase().contains("x-accepted-stream-protocol-versions: v4.channel.k8s.io"), "{head}");
}

async fn ws_client(
    path: &str,
    protocol: &str,
    code: i32,
) -> (tokio_tungstenite::WebSocketStream<DuplexStream>, String) {
    let mut req = format!("ws://localhost{path}").into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::client_async(req, connect(context(code))).await.expect("WebSocket handshake");
    let chosen = resp.headers().get("Sec-WebSocket-Protocol").unwrap().to_str().unwrap().to_owned();
    (ws, chosen)
}

/// Messages until the server closes: (channel, payload).
async fn ws_messages(ws: &mut tokio_tungstenite::WebSocketStream<DuplexStream>) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(Ok(m)) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("messages") {
        match m {
            Message::Binary(b) if !b.is_empty() => out.push((b[0], b[1..].to_vec())),
            Message::Close(_) => break,
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn websocket_v5_exec_carries_stdin_close_output_and_the_exit_code() {
    let (mut ws, chosen) =
        ws_client("/exec/ns/pod/c?command=cat&input=1&output=1&error=1", "v5.channel.k8s.io, v4.channel.k8s.io", 3)
            .await;
    assert_eq!(chosen, "v5.channel.k8s.io");
    ws.send(Message::Binary(Bytes::from_static(b"\x00hello\n"))).await.unwrap();
    // v5 CLOSE of stdin: the command reads EOF.
    ws.send(Message::Binary(Bytes::from_static(&[255, 0]))).await.unwrap();
    let msgs = ws_messages(&mut ws).await;
    assert_eq!(msgs.first(), Some(&(1, vec![])), "the empty first message on stdout: {msgs:?}");
    let on = |ch| msgs.iter().filter(|(c, _)| *c == ch).flat_map(|(_, d)| d.clone()).collect::<Vec<u8>>();
    assert_eq!(on(1), b"hello\n");
    assert_eq!(on(2), b"to stderr\n");
    let status: serde_json::Value = serde_json::from_slice(&on(3)).unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
}

#[tokio::test]
async fn websocket_v4_exec_reports_start_failures_on_the_error_channel() {
    let (mut ws, chosen) = ws_client("/exec/ns/pod/c?command=missing&output=1", "v4.channel.k8s.io", 0).await;
    assert_eq!(chosen, "v4.channel.k8s.io");
    let msgs = ws_messages(&mut ws).await;
    let status: serde_json::Value =
        serde_json::from_slice(&msgs.iter().find(|(c, d)| *c == 3 && !d.is_empty()).unwrap().1).unwrap();
    assert_eq!(status["reason"], "InternalError");
    assert!(status["message"].as_str().unwrap().contains("executable \"missing\" not found"), "{status}");
}

#[tokio::test]
async fn websocket_tunnelled_port_forward_speaks_spdy_inside() {
    let (mut ws, chosen) = ws_client("/portForward/ns/pod", "SPDY/3.1+portforward.k8s.io", 0).await;
    assert_eq!(chosen, "SPDY/3.1+portforward.k8s.io");
    let (_, spdy) = recording("portforward.c2s");
    let ends = frame_ends(&spdy);
    ws.send(Message::Binary(Bytes::copy_from_slice(&spdy[..ends[3]]))).await.unwrap();
    let mut got = Vec::new();
    while data_of(&frames(&got[..frame_ends(&got).last().copied().unwrap_or(0)]), 3) != b"pong 8080 ping" {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("an answer") {
            Some(Ok(Message::Binary(b))) => got.extend_from_slice(&b),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_port_nobody_listens_on_is_reported_on_the_error_stream() {
    // The recorded client asked for 8080; the same exchange for port 1 fails.
    use super::spdy::Headers;
    use super::spdy::frame::Codec as C;
    use tokio_util::codec::Encoder;
    let mut enc = C::default();
    let mut buf = BytesMut::new();
    for (id, kind) in [(1, "error"), (3, "data")] {
        let mut h = Headers::new();
        h.push("streamType", kind);
        h.push("port", "1");
        h.push("requestID", "0");
        enc.encode(Frame::SynStream { stream_id: id, associated: 0, priority: 0, flags: 0, headers: h }, &mut buf)
            .unwrap();
    }
    let mut c = connect(context(0));
    c.write_all(spdy_request("/portForward/ns/pod", "portforward.k8s.io").as_bytes()).await.unwrap();
    c.write_all(&buf).await.unwrap();
    let mut got = Vec::new();
    let mut b = vec![0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut b)).await.unwrap().unwrap();
        assert!(n > 0);
        got.extend_from_slice(&b[..n]);
        let (_, spdy) = split_head(&got);
        let fs = frames(&spdy[..frame_ends(&spdy).last().copied().unwrap_or(0)]);
        if fs.iter().any(|f| matches!(f, Frame::RstStream { stream_id: 3, .. })) {
            let msg = String::from_utf8(data_of(&fs, 1)).unwrap();
            assert_eq!(msg, "error forwarding port 1 to pod ns/pod: no process of the pod listens on TCP port 1");
            break;
        }
    }
}

#[tokio::test]
async fn idle_sessions_are_closed() {
    let limits = Limits { idle_timeout: Duration::from_millis(300), ..Limits::default() };
    let ctx = StreamContext::new(Arc::new(Fake { code: 0 }), limits);
    // WebSocket: a command waiting for input that never comes.
    let mut req = "ws://localhost/exec/ns/pod/c?command=cat&input=1&output=1".into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", "v5.channel.k8s.io".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(req, connect(ctx.clone())).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(_) = m {
                return;
            }
        }
    });
    end.await.expect("the idle WebSocket session is closed");
    // SPDY: a port-forward connection on which nothing happens.
    let mut c = connect(ctx);
    c.write_all(spdy_request("/portForward/ns/pod", "portforward.k8s.io").as_bytes()).await.unwrap();
    let raw = read_all(c).await;
    let (head, spdy) = split_head(&raw);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(matches!(frames(&spdy).last(), Some(Frame::GoAway { .. })), "GOAWAY before closing");
}

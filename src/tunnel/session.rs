//! One remotedialer client session over an open WebSocket (remotedialer's `Session` on the
//! client side: `session.go`, `session_serve.go`, `client_dialer.go`, `connection.go`).
//!
//! The server sends `Connect` for a connection id; an allowed target gets an in-memory stream
//! whose other end is handed to [`Serve`] (the kubelet API's connection handler), and the bytes
//! flow as `Data` frames both ways. Either side ends a connection with `Error` (`EOF` when it
//! closed cleanly). `Pause`/`Resume` are honoured and sent (when more than 2 MiB of a
//! connection wait to be written); a WebSocket ping goes out every 5 s and the session ends when
//! nothing arrived for 60 s; every 60 s the open connection ids are sent (`SyncConnections`).
//!
//! One difference from remotedialer's client: a `Connect` the policy refuses ends that
//! connection with an `Error` ("connect not allowed") instead of the whole session.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as Ws;

use super::message::{Kind, Message};

/// remotedialer's `PingWriteInterval`.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// remotedialer's `PingWaitDuration`: the session is dead when nothing arrived for this long.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// remotedialer's `SyncConnectionsInterval`.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(60);
/// remotedialer's `MaxBuffer`: more than this waiting for a connection pauses its sender.
pub const MAX_BUFFER: usize = 1 << 21;
/// remotedialer's `MaxRead`: the largest Data frame sent.
const MAX_READ: usize = 8192;
/// The in-memory pipe between a connection and its handler.
const PIPE_SIZE: usize = 64 * 1024;

/// Serves a tunneled connection (the kubelet API's handler, in vks).
pub trait Serve: Send + Sync + 'static {
    /// Serves `stream` until it ends; `peer` names the connection in logs.
    fn serve(&self, stream: DuplexStream, peer: String) -> BoxFuture<'static, ()>;
}

/// The session's clock: remotedialer's intervals ([`Timing::REMOTEDIALER`]), shorter in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often a WebSocket ping is sent.
    pub ping: Duration,
    /// The session is dead when nothing arrived for this long.
    pub read_timeout: Duration,
    /// How often the open connection ids are sent.
    pub sync: Duration,
}

impl Timing {
    /// remotedialer's values.
    pub const REMOTEDIALER: Timing = Timing { ping: PING_INTERVAL, read_timeout: READ_TIMEOUT, sync: SYNC_INTERVAL };
}

/// Which dial requests are served: TCP to the loopback address at the kubelet port only (what
/// the k3s server asks for a node's kubelet), like the k3s agent's tunnel authorizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The kubelet API port.
    pub kubelet_port: u16,
}

impl Policy {
    /// Whether a `Connect` for `proto`/`address` is served.
    pub fn allows(&self, proto: &str, address: &str) -> bool {
        let Ok(addr) = address.parse::<std::net::SocketAddr>() else { return false };
        proto == "tcp" && addr.ip().is_loopback() && addr.port() == self.kubelet_port
    }
}

/// Why a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// `stop` resolved (shutdown, or new credentials to re-authenticate with).
    Stopped,
    /// The server closed the WebSocket.
    Closed,
    /// The WebSocket failed or went silent; the text says how.
    Failed(String),
}

/// Counters of a session (for logs and tests).
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections served.
    pub served: AtomicUsize,
    /// Connections refused by the policy.
    pub refused: AtomicUsize,
}

struct Conn {
    data: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
    paused_by_us: Arc<AtomicBool>,
    remote_paused: watch::Sender<bool>,
    reader: JoinHandle<()>,
}

struct Shared {
    out: mpsc::Sender<Ws>,
    next_id: AtomicI64,
}

impl Shared {
    fn frame(&self, conn_id: i64, kind: Kind, payload: Vec<u8>) -> Ws {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ws::Binary(Message::new(id, conn_id, kind, payload).encode().into())
    }

    async fn send(&self, conn_id: i64, kind: Kind, payload: Vec<u8>) {
        let _ = self.out.send(self.frame(conn_id, kind, payload)).await;
    }
}

/// Runs one session until `stop` resolves or the WebSocket ends.
pub async fn run<S>(
    ws: WebSocketStream<S>,
    timing: Timing,
    policy: Policy,
    serve: Arc<dyn Serve>,
    stats: Arc<Stats>,
    stop: impl std::future::Future<Output = ()>,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Ws>(256);
    let shared = Arc::new(Shared { out: out_tx, next_id: AtomicI64::new(1) });
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + timing.ping, timing.ping);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let msg = tokio::select! {
                m = out_rx.recv() => match m { Some(m) => m, None => break },
                _ = ping.tick() => Ws::Ping(Bytes::new()),
            };
            let close = matches!(msg, Ws::Close(_));
            if let Err(e) = sink.send(msg).await {
                return Err(e.to_string());
            }
            if close {
                break;
            }
        }
        Ok(())
    });
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel::<i64>();
    let mut conns: HashMap<i64, Conn> = HashMap::new();
    let mut sync = tokio::time::interval_at(tokio::time::Instant::now() + timing.sync, timing.sync);
    tokio::pin!(stop);
    let mut last_received = tokio::time::Instant::now();
    let end = loop {
        let frame = tokio::select! {
            () = &mut stop => break End::Stopped,
            Some(id) = closed_rx.recv() => {
                if let Some(c) = conns.remove(&id) { c.reader.abort(); }
                continue;
            }
            _ = sync.tick() => {
                let mut ids: Vec<i64> = conns.keys().copied().collect();
                ids.sort_unstable();
                shared.send(0, Kind::SyncConnections, Message::sync_payload(&ids)).await;
                continue;
            }
            f = tokio::time::timeout_at(last_received + timing.read_timeout, stream.next()) => f,
        };
        last_received = tokio::time::Instant::now();
        let bytes = match frame {
            Err(_) => break End::Failed(format!("nothing received for {:?}", timing.read_timeout)),
            Ok(None) => break End::Closed,
            Ok(Some(Err(e))) => break End::Failed(e.to_string()),
            Ok(Some(Ok(Ws::Binary(b)))) => b,
            Ok(Some(Ok(Ws::Close(_)))) => break End::Closed,
            Ok(Some(Ok(Ws::Text(_)))) => break End::Failed("the server sent a text message".to_owned()),
            Ok(Some(Ok(_))) => continue, // ping (answered by tungstenite), pong
        };
        let msg = match Message::decode(&bytes) {
            Ok(m) => m,
            Err(e) => break End::Failed(format!("undecodable frame: {e}")),
        };
        handle(msg, &mut conns, &shared, &policy, &serve, &stats, &closed_tx).await;
    };
    for (_, c) in conns.drain() {
        c.reader.abort();
    }
    if end == End::Stopped {
        let _ = shared.out.send(Ws::Close(None)).await;
    }
    drop(shared);
    match tokio::time::timeout(Duration::from_secs(2), writer).await {
        Ok(Ok(Err(e))) if end == End::Stopped => End::Failed(e),
        _ => end,
    }
}

async fn handle(
    msg: Message,
    conns: &mut HashMap<i64, Conn>,
    shared: &Arc<Shared>,
    policy: &Policy,
    serve: &Arc<dyn Serve>,
    stats: &Arc<Stats>,
    closed: &mpsc::UnboundedSender<i64>,
) {
    let id = msg.conn_id;
    match msg.kind {
        Kind::Connect => {
            let target = msg.connect_target();
            match target {
                Some((proto, address)) if policy.allows(&proto, &address) => {
                    stats.served.fetch_add(1, Ordering::Relaxed);
                    log::debug!("tunnel: connection {id} to {proto}/{address}");
                    let conn = open(id, address, shared.clone(), serve, closed.clone());
                    if let Some(old) = conns.insert(id, conn) {
                        old.reader.abort();
                    }
                }
                _ => {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "tunnel: refused connection {id} to {:?}: only the kubelet port {} on the loopback address is served",
                        msg.error_text(),
                        policy.kubelet_port
                    );
                    shared.send(id, Kind::Error, b"connect not allowed".to_vec()).await;
                }
            }
        }
        Kind::Data => match conns.get(&id) {
            Some(c) => {
                let n = msg.payload.len();
                let queued = c.queued.fetch_add(n, Ordering::AcqRel) + n;
                if queued > MAX_BUFFER && !c.paused_by_us.swap(true, Ordering::AcqRel) {
                    shared.send(id, Kind::Pause, Vec::new()).await;
                }
                let _ = c.data.send(Bytes::from(msg.payload));
            }
            None => {
                let text = format!("connection not found client/{id}");
                shared.send(id, Kind::Error, text.into_bytes()).await;
            }
        },
        Kind::Error => {
            if let Some(c) = conns.remove(&id) {
                log::debug!("tunnel: connection {id} closed by the server ({})", msg.error_text());
                c.reader.abort();
            }
        }
        Kind::Pause | Kind::Resume => {
            if let Some(c) = conns.get(&id) {
                let _ = c.remote_paused.send(msg.kind == Kind::Pause);
            }
        }
        Kind::SyncConnections => {
            if let Some(ids) = msg.connection_ids() {
                conns.retain(|k, c| {
                    let keep = ids.contains(k);
                    if !keep {
                        c.reader.abort();
                    }
                    keep
                });
            }
        }
        Kind::AddClient | Kind::RemoveClient => {}
    }
}

/// Starts a tunneled connection: the handler on one end of a pipe; a reader task sending what
/// the handler writes as Data frames (Error `EOF` at its end); a writer task writing Data frames
/// into the pipe.
fn open(
    id: i64,
    address: String,
    shared: Arc<Shared>,
    serve: &Arc<dyn Serve>,
    closed: mpsc::UnboundedSender<i64>,
) -> Conn {
    let (local, remote) = tokio::io::duplex(PIPE_SIZE);
    tokio::spawn(serve.serve(local, format!("tunnel connection {id} for {address}")));
    let (mut rd, mut wr) = tokio::io::split(remote);
    let (data_tx, mut data_rx) = mpsc::unbounded_channel::<Bytes>();
    let queued = Arc::new(AtomicUsize::new(0));
    let paused_by_us = Arc::new(AtomicBool::new(false));
    let (remote_paused, mut paused_rx) = watch::channel(false);
    {
        let (queued, paused_by_us, shared) = (queued.clone(), paused_by_us.clone(), shared.clone());
        tokio::spawn(async move {
            while let Some(b) = data_rx.recv().await {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
                let left = queued.fetch_sub(b.len(), Ordering::AcqRel) - b.len();
                if left < MAX_BUFFER / 8 && paused_by_us.swap(false, Ordering::AcqRel) {
                    shared.send(id, Kind::Resume, Vec::new()).await;
                }
            }
            let _ = wr.shutdown().await;
        });
    }
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_READ];
        let end = loop {
            if paused_rx.wait_for(|p| !*p).await.is_err() {
                break "EOF".to_owned();
            }
            match rd.read(&mut buf).await {
                Ok(0) => break "EOF".to_owned(),
                Ok(n) => shared.send(id, Kind::Data, buf[..n].to_vec()).await,
                Err(e) => break e.to_string(),
            }
        };
        shared.send(id, Kind::Error, end.into_bytes()).await;
        let _ = closed.send(id);
    });
    Conn { data: data_tx, queued, paused_by_us, remote_paused, reader }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// Serves a connection like a tiny echo server: answers each read with "echo:<bytes>", and
    /// closes after reading "bye".
    struct Echo;

    impl Serve for Echo {
        fn serve(&self, mut stream: DuplexStream, _peer: String) -> BoxFuture<'static, ()> {
            Box::pin(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let _ = stream.write_all(&[b"echo:", &buf[..n]].concat()).await;
                    if &buf[..n] == b"bye" {
                        break;
                    }
                }
            })
        }
    }

    struct Server {
        ws: WebSocketStream<DuplexStream>,
        next: i64,
    }

    impl Server {
        async fn send(&mut self, conn: i64, kind: Kind, payload: &[u8]) {
            self.next += 1;
            let m = Message::new(self.next, conn, kind, payload.to_vec());
            self.ws.send(Ws::Binary(m.encode().into())).await.unwrap();
        }

        /// The next remotedialer frame (pings and pongs skipped).
        async fn recv(&mut self) -> Message {
            loop {
                let m = tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await.expect("a frame");
                if let Ws::Binary(b) = m.expect("open").expect("ok") {
                    return Message::decode(&b).unwrap();
                }
            }
        }
    }

    async fn start() -> (Server, Arc<Stats>, tokio::sync::oneshot::Sender<()>, JoinHandle<End>) {
        start_with(Timing::REMOTEDIALER).await
    }

    async fn start_with(timing: Timing) -> (Server, Arc<Stats>, tokio::sync::oneshot::Sender<()>, JoinHandle<End>) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let client = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let server = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        let stats = Arc::new(Stats::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            let _ = stop_rx.await;
        };
        let task =
            tokio::spawn(run(client, timing, Policy { kubelet_port: 10250 }, Arc::new(Echo), stats.clone(), stop));
        (Server { ws: server, next: 0 }, stats, stop_tx, task)
    }

    #[tokio::test]
    async fn a_kubelet_connection_carries_data_both_ways_and_ends_with_eof() {
        let (mut srv, stats, stop, task) = start().await;
        srv.send(7, Kind::Connect, b"tcp/127.0.0.1:10250").await;
        srv.send(7, Kind::Data, b"hello").await;
        let m = srv.recv().await;
        assert_eq!((m.conn_id, m.kind, m.payload.as_slice()), (7, Kind::Data, &b"echo:hello"[..]));
        srv.send(7, Kind::Data, b"bye").await;
        let m = srv.recv().await;
        assert_eq!((m.kind, m.payload.as_slice()), (Kind::Data, &b"echo:bye"[..]));
        let m = srv.recv().await;
        assert_eq!((m.conn_id, m.kind, m.error_text().as_str()), (7, Kind::Error, "EOF"));
        // The connection is gone: more data for it is answered with an error.
        srv.send(7, Kind::Data, b"late").await;
        let m = srv.recv().await;
        assert_eq!((m.conn_id, m.kind), (7, Kind::Error));
        assert!(m.error_text().contains("connection not found"), "{}", m.error_text());
        assert_eq!(stats.served.load(Ordering::Relaxed), 1);
        stop.send(()).unwrap();
        assert_eq!(task.await.unwrap(), End::Stopped);
        // A clean stop closes the WebSocket.
        let last = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match srv.ws.next().await {
                    Some(Ok(Ws::Close(_))) | None => return true,
                    Some(Ok(_)) => continue,
                    Some(Err(_)) => return false,
                }
            }
        })
        .await
        .unwrap();
        assert!(last, "the session sent a Close frame");
    }

    #[tokio::test]
    async fn other_targets_are_refused_without_ending_the_session() {
        let (mut srv, stats, _stop, task) = start().await;
        for target in ["tcp/127.0.0.1:22", "tcp/10.0.0.1:10250", "udp/127.0.0.1:10250", "tcp/localhost:10250", "junk"] {
            srv.send(3, Kind::Connect, target.as_bytes()).await;
            let m = srv.recv().await;
            assert_eq!(
                (m.conn_id, m.kind, m.error_text().as_str()),
                (3, Kind::Error, "connect not allowed"),
                "{target}"
            );
        }
        assert_eq!(stats.refused.load(Ordering::Relaxed), 5);
        // The session still serves the kubelet port (IPv6 loopback too).
        srv.send(4, Kind::Connect, b"tcp/[::1]:10250").await;
        srv.send(4, Kind::Data, b"x").await;
        assert_eq!(srv.recv().await.payload, b"echo:x");
        assert!(!task.is_finished());
    }

    #[tokio::test]
    async fn an_error_from_the_server_closes_the_connection() {
        let (mut srv, _stats, _stop, _task) = start().await;
        srv.send(9, Kind::Connect, b"tcp/127.0.0.1:10250").await;
        srv.send(9, Kind::Data, b"a").await;
        assert_eq!(srv.recv().await.payload, b"echo:a");
        srv.send(9, Kind::Error, b"EOF").await;
        // Nothing more comes from connection 9; data for it is unknown now.
        srv.send(9, Kind::Data, b"b").await;
        let m = srv.recv().await;
        assert_eq!(m.kind, Kind::Error);
        assert!(m.error_text().contains("connection not found"));
    }

    #[tokio::test]
    async fn a_paused_connection_sends_nothing_until_resumed() {
        let (mut srv, _stats, _stop, _task) = start().await;
        srv.send(5, Kind::Connect, b"tcp/127.0.0.1:10250").await;
        srv.send(5, Kind::Pause, b"").await;
        srv.send(5, Kind::Data, b"held").await;
        let quiet = tokio::time::timeout(Duration::from_millis(300), srv.recv()).await;
        assert!(quiet.is_err(), "no data while paused: {quiet:?}");
        srv.send(5, Kind::Resume, b"").await;
        assert_eq!(srv.recv().await.payload, b"echo:held");
    }

    #[tokio::test]
    async fn a_closed_websocket_ends_the_session() {
        let (mut srv, _stats, _stop, task) = start().await;
        srv.ws.close(None).await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
        assert_eq!(end, End::Closed);
    }

    #[tokio::test]
    async fn pings_and_syncs_are_sent_and_a_silent_server_ends_the_session() {
        let ms = Duration::from_millis;
        let (mut srv, _stats, _stop, task) =
            start_with(Timing { ping: ms(100), read_timeout: ms(1500), sync: ms(300) }).await;
        srv.send(2, Kind::Connect, b"tcp/127.0.0.1:10250").await;
        let (mut pinged, mut synced) = (false, None);
        while !(pinged && synced.is_some()) {
            match tokio::time::timeout(Duration::from_secs(1), srv.ws.next()).await.unwrap().unwrap().unwrap() {
                Ws::Ping(_) => pinged = true,
                Ws::Binary(b) => {
                    let m = Message::decode(&b).unwrap();
                    if m.kind == Kind::SyncConnections {
                        synced = m.connection_ids();
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(synced, Some(vec![2]), "the open connection ids");
        // Sending nothing (the WebSocket's pongs are not read here either): the session ends.
        let end = tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
        assert!(matches!(&end, End::Failed(why) if why.contains("nothing received")), "{end:?}");
    }

    #[test]
    fn the_policy_serves_only_the_loopback_kubelet_port() {
        let p = Policy { kubelet_port: 10250 };
        assert!(p.allows("tcp", "127.0.0.1:10250"));
        assert!(p.allows("tcp", "[::1]:10250"));
        assert!(!p.allows("tcp", "127.0.0.1:10255"));
        assert!(!p.allows("tcp", "192.168.1.1:10250"));
        assert!(!p.allows("unix", "127.0.0.1:10250"));
        assert!(!p.allows("tcp", "kubelet:10250"));
    }
}

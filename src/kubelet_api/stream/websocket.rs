//! Exec, attach and port-forward over WebSocket.
//!
//! Remote command (`v5.channel.k8s.io`, `v4.channel.k8s.io`): every binary message starts with a
//! channel byte — 0 stdin, 1 stdout, 2 stderr, 3 error (the JSON status), 4 resize — and v5 adds
//! 255, CLOSE, whose second byte names the channel the client is done with (stdin). As the
//! kubelet does, vks first sends an empty message on the lowest channel it writes, and ends
//! with the status on channel 3 and a normal close.
//!
//! Port-forward (`SPDY/3.1+portforward.k8s.io`, KEP-4006): the binary messages carry a SPDY/3.1
//! connection; [`Tunnel`] turns them back into a byte stream for [`super::spdy::Session`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use super::channels::{Channels, Options, Out, ResizeParser, Version};

/// The subprotocol of port-forward tunnelled in WebSocket.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// Limits of the WebSocket layer: messages up to 16 MiB (Go clients send at most 32 KiB).
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(16 << 20)).max_frame_size(Some(16 << 20))
}

/// Wraps an upgraded connection (the handshake was answered already).
pub async fn server<S: AsyncRead + AsyncWrite + Unpin>(io: S) -> WebSocketStream<S> {
    WebSocketStream::from_raw_socket(io, Role::Server, Some(config())).await
}

/// The first protocol the client offers (in its order, as Kubernetes' wsstream picks) that is
/// among `supported`.
pub fn choose<'a>(offered: impl Iterator<Item = &'a str>, supported: &[&'static str]) -> Option<&'static str> {
    offered.flat_map(|h| h.split(',')).map(str::trim).find_map(|p| supported.iter().copied().find(|s| *s == p))
}

fn binary(channel: u8, data: &[u8]) -> Message {
    let mut b = BytesMut::with_capacity(1 + data.len());
    b.extend_from_slice(&[channel]);
    b.extend_from_slice(data);
    Message::Binary(b.freeze())
}

/// Starts serving an exec or attach session on `ws`; it is closed after `idle_timeout` without
/// data in either direction.
pub fn channels<S>(ws: WebSocketStream<S>, options: Options, version: Version, idle_timeout: Duration) -> Channels
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let gone = CancellationToken::new();
    let activity = Arc::new(Activity::new());
    tokio::spawn(idle_watch(activity.clone(), idle_timeout, gone.clone()));
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let (resize_tx, resize_rx) = mpsc::channel(8);
    let wants_resize = options.tty;
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(64);

    let reader_gone = gone.clone();
    let reader_activity = activity.clone();
    tokio::spawn(async move {
        let mut stdin_tx = options.stdin.then_some(stdin_tx);
        let resize_tx = wants_resize.then_some(resize_tx);
        let mut parser = ResizeParser::default();
        while let Some(msg) = stream.next().await {
            let data = match msg {
                Ok(Message::Binary(d)) => {
                    reader_activity.touch();
                    d
                }
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue, // pings are answered by tungstenite; text is not a channel message
            };
            let Some((&channel, payload)) = data.split_first() else { continue };
            match channel {
                STDIN => {
                    if let Some(tx) = &stdin_tx
                        && !payload.is_empty()
                        && tx.send(data.slice(1..)).await.is_err()
                    {
                        stdin_tx = None;
                    }
                }
                RESIZE => {
                    for size in parser.feed(payload) {
                        if let Some(tx) = &resize_tx {
                            let _ = tx.send(size).await;
                        }
                    }
                }
                CLOSE if version >= Version::V5 && payload.first() == Some(&STDIN) => stdin_tx = None,
                _ => {}
            }
        }
        reader_gone.cancel();
    });

    let writer_gone = gone.clone();
    tokio::spawn(async move {
        let first = if options.stdout {
            STDOUT
        } else if options.stderr {
            STDERR
        } else {
            ERROR
        };
        if sink.send(binary(first, &[])).await.is_err() {
            writer_gone.cancel();
            return;
        }
        loop {
            let o = tokio::select! {
                biased;
                o = out_rx.recv() => o,
                () = writer_gone.cancelled() => {
                    // The client left or the session idled out: say goodbye if it still listens.
                    let _ = sink.close().await;
                    return;
                }
            };
            let Some(o) = o else { break };
            activity.touch();
            let msg = match o {
                Out::Stdout(b) if options.stdout => binary(STDOUT, &b),
                Out::Stderr(b) if options.stderr => binary(STDERR, &b),
                Out::Stdout(_) | Out::Stderr(_) => continue,
                Out::Done(outcome) => {
                    if let Some(status) = outcome.encode(version) {
                        let _ = sink.send(binary(ERROR, &status)).await;
                    }
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() })))
                        .await;
                    let _ = sink.close().await;
                    return;
                }
            };
            if sink.send(msg).await.is_err() {
                writer_gone.cancel();
                return;
            }
        }
        let _ = sink.close().await;
    });

    Channels {
        options,
        version,
        stdin: options.stdin.then_some(stdin_rx),
        resize: wants_resize.then_some(resize_rx),
        out: out_tx,
        gone,
    }
}

/// When data last went either way.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        self.start.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Ends the session (`gone`) after `timeout` without data.
async fn idle_watch(activity: Arc<Activity>, timeout: Duration, gone: CancellationToken) {
    loop {
        let left = timeout.saturating_sub(activity.idle());
        if left.is_zero() {
            log::info!("stream session idle for {timeout:?}: closing it");
            gone.cancel();
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(left) => {}
            () = gone.cancelled() => return,
        }
    }
}

/// A byte stream carried in the binary messages of a WebSocket (port-forward's SPDY tunnel).
pub struct Tunnel<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
    close_sent: bool,
}

impl<S> Tunnel<S> {
    /// Wraps `ws`.
    pub fn new(ws: WebSocketStream<S>) -> Tunnel<S> {
        Tunnel { ws, pending: Bytes::new(), close_sent: false }
    }
}

fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Tunnel<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => self.pending = b,
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message in a SPDY tunnel",
                    )));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(ws_err(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tunnel<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_err)?;
        Pin::new(&mut self.ws).start_send(Message::Binary(Bytes::copy_from_slice(data))).map_err(ws_err)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(ws_err)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.close_sent {
            // A normal close: the Go client reads it as the end of the stream, not an error.
            if ready!(Pin::new(&mut self.ws).poll_ready(cx)).is_ok() {
                let normal = Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }));
                let _ = Pin::new(&mut self.ws).start_send(normal);
            }
            self.close_sent = true;
        }
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) | Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(ws_err(e))),
        }
    }
}

//! The server side of a SPDY/3.1 connection: accepts the streams the client opens, delivers
//! their data, and writes replies, data and resets. One task reads frames, one writes them.
//!
//! Behaviour follows what the Kubernetes peers (moby/spdystream under client-go) expect: every
//! accepted stream gets a SYN_REPLY before any data, a refused one a RST_STREAM; PINGs the client
//! starts are echoed; SETTINGS and WINDOW_UPDATE are read and ignored (spdystream does no flow
//! control, so neither side waits for window updates); closing sends GOAWAY. A stream's data is
//! delivered through a bounded queue: a reader that does not keep up slows the whole connection
//! down rather than growing memory, as in spdystream.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::SpdyError;
use super::frame::{Codec, FLAG_FIN, FLAG_UNIDIRECTIONAL, Frame, goaway, rst};
use super::headers::Headers;

/// Frames of data queued per stream before the connection's reader waits.
const STREAM_QUEUE: usize = 64;
/// Frames queued for the writer.
const WRITE_QUEUE: usize = 256;
/// Streams announced to the application and not yet taken.
const ACCEPT_QUEUE: usize = 64;

/// Limits of a session.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The connection is closed after this long without a frame in either direction.
    pub idle_timeout: Duration,
    /// Streams open at the same time; more are refused.
    pub max_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { idle_timeout: Duration::from_secs(4 * 3600), max_streams: 1000 }
    }
}

enum Out {
    Frame(Frame),
    Close(u32),
}

struct Shared {
    out: mpsc::Sender<Out>,
    /// Fired when the connection is gone (either side closed it, or an error).
    closed: CancellationToken,
    start: Instant,
    /// Milliseconds since `start` of the last frame read or written.
    last_activity: AtomicU64,
}

impl Shared {
    fn touch(&self) {
        self.last_activity.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// A SPDY connection being served.
pub struct Session {
    incoming: mpsc::Receiver<Incoming>,
    shared: Arc<Shared>,
}

/// A stream the client opened, not yet accepted or refused.
pub struct Incoming {
    /// Stream id.
    pub id: u32,
    /// Its headers (e.g. `streamType`, `port`, `requestID`).
    pub headers: Headers,
    data: mpsc::Receiver<Bytes>,
    reset: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

/// An accepted stream: what the client sends arrives on `reader`, `writer` sends back.
pub struct Stream {
    /// Stream id.
    pub id: u32,
    /// The headers it was opened with.
    pub headers: Headers,
    /// Data from the client.
    pub reader: StreamReader,
    /// Sends to the client.
    pub writer: StreamWriter,
}

/// The receiving half of a stream.
pub struct StreamReader {
    data: mpsc::Receiver<Bytes>,
}

impl StreamReader {
    /// The next chunk from the client; `None` once the client closed its half (FIN), reset the
    /// stream, or the connection ended.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.data.recv().await
    }
}

/// The sending half of a stream; cheap to clone.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    reset: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the SPDY connection is closed")
}

impl StreamWriter {
    /// Stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    async fn send(&self, f: Frame) -> io::Result<()> {
        if self.reset.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, format!("SPDY stream {} was reset", self.id)));
        }
        self.shared.out.send(Out::Frame(f)).await.map_err(|_| gone())
    }

    /// Sends data.
    pub async fn write(&self, data: Bytes) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.send(Frame::Data { stream_id: self.id, flags: 0, data }).await
    }

    /// Closes this side of the stream (an empty DATA frame with FIN).
    pub async fn finish(&self) -> io::Result<()> {
        self.send(Frame::Data { stream_id: self.id, flags: FLAG_FIN, data: Bytes::new() }).await
    }

    /// Resets the stream.
    pub async fn reset(&self, status: u32) -> io::Result<()> {
        let r = self.send(Frame::RstStream { stream_id: self.id, status }).await;
        self.reset.store(true, Ordering::Relaxed);
        r
    }
}

impl Incoming {
    /// Accepts the stream (sends SYN_REPLY).
    pub async fn accept(self) -> io::Result<Stream> {
        let writer = StreamWriter { id: self.id, reset: self.reset, shared: self.shared };
        writer.send(Frame::SynReply { stream_id: self.id, flags: 0, headers: Headers::new() }).await?;
        Ok(Stream { id: self.id, headers: self.headers, reader: StreamReader { data: self.data }, writer })
    }

    /// Refuses the stream (sends RST_STREAM with `status`).
    pub async fn refuse(self, status: u32) {
        let _ = self.shared.out.send(Out::Frame(Frame::RstStream { stream_id: self.id, status })).await;
    }
}

/// Closes the session from elsewhere; cheap to clone.
#[derive(Clone)]
pub struct Closer {
    shared: Arc<Shared>,
}

impl Closer {
    /// Sends GOAWAY after everything queued before, then closes the connection.
    pub async fn close(&self) {
        if self.shared.out.send(Out::Close(goaway::OK)).await.is_err() {
            self.shared.closed.cancel();
        }
    }

    /// Fires when the connection is gone.
    pub fn closed(&self) -> CancellationToken {
        self.shared.closed.clone()
    }
}

impl Session {
    /// Serves SPDY on `io` (the connection after the HTTP upgrade, or a WebSocket tunnel).
    pub fn start<T>(io: T, limits: Limits) -> Session
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(WRITE_QUEUE);
        let (in_tx, in_rx) = mpsc::channel(ACCEPT_QUEUE);
        let shared = Arc::new(Shared {
            out: out_tx,
            closed: CancellationToken::new(),
            start: Instant::now(),
            last_activity: AtomicU64::new(0),
        });
        tokio::spawn(write_loop(FramedWrite::new(w, Codec::default()), out_rx, shared.clone()));
        tokio::spawn(read_loop(FramedRead::new(r, Codec::default()), in_tx, shared.clone(), limits));
        Session { incoming: in_rx, shared }
    }

    /// The next stream the client opens; `None` once the connection is gone.
    pub async fn next_stream(&mut self) -> Option<Incoming> {
        self.incoming.recv().await
    }

    /// A handle that closes the session.
    pub fn closer(&self) -> Closer {
        Closer { shared: self.shared.clone() }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut sink: FramedWrite<W, Codec>,
    mut out: mpsc::Receiver<Out>,
    shared: Arc<Shared>,
) {
    loop {
        let first = tokio::select! {
            () = shared.closed.cancelled() => break,
            o = out.recv() => o,
        };
        let Some(first) = first else { break };
        let mut item = Some(first);
        let mut closing = None;
        // Feed everything queued, then flush once.
        while let Some(o) = item.take() {
            match o {
                Out::Frame(f) => {
                    if let Err(e) = sink.feed(f).await {
                        log::debug!("SPDY write: {e}");
                        shared.closed.cancel();
                        return;
                    }
                }
                Out::Close(status) => {
                    closing = Some(status);
                    break;
                }
            }
            item = out.try_recv().ok();
        }
        if let Some(status) = closing {
            let _ = sink.feed(Frame::GoAway { last_good: 0, status }).await;
            let _ = sink.flush().await;
            let _ = sink.close().await;
            break;
        }
        if let Err(e) = sink.flush().await {
            log::debug!("SPDY write: {e}");
            break;
        }
        shared.touch();
    }
    shared.closed.cancel();
}

struct Open {
    data: Option<mpsc::Sender<Bytes>>,
    reset: Arc<AtomicBool>,
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut frames: FramedRead<R, Codec>,
    incoming: mpsc::Sender<Incoming>,
    shared: Arc<Shared>,
    limits: Limits,
) {
    let mut streams: HashMap<u32, Open> = HashMap::new();
    let mut last_id = 0u32;
    let mut going_away = false;
    // Ok(true): the connection ended (EOF, or closed from this side); Ok(false): idle, GOAWAY
    // queued.
    let result: Result<bool, SpdyError> = async {
        loop {
            let idle_ms = limits.idle_timeout.as_millis() as u64;
            let deadline = shared.start + Duration::from_millis(shared.last_activity.load(Ordering::Relaxed) + idle_ms);
            let frame = tokio::select! {
                () = shared.closed.cancelled() => return Ok(true),
                () = tokio::time::sleep_until(deadline) => {
                    if shared.start.elapsed().as_millis() as u64 >= shared.last_activity.load(Ordering::Relaxed) + idle_ms {
                        log::info!("SPDY connection idle for {:?}: closing it", limits.idle_timeout);
                        let _ = shared.out.send(Out::Close(goaway::OK)).await;
                        return Ok(false);
                    }
                    continue;
                }
                f = frames.next() => match f {
                    None => return Ok(true),
                    Some(f) => f?,
                },
            };
            shared.touch();
            match frame {
                Frame::SynStream { stream_id, flags, headers, .. } => {
                    if stream_id % 2 == 0 || stream_id <= last_id {
                        let status = if streams.contains_key(&stream_id) { rst::STREAM_IN_USE } else { rst::PROTOCOL_ERROR };
                        let _ = shared.out.send(Out::Frame(Frame::RstStream { stream_id, status })).await;
                        continue;
                    }
                    last_id = stream_id;
                    if going_away || streams.len() >= limits.max_streams {
                        let _ = shared.out.send(Out::Frame(Frame::RstStream { stream_id, status: rst::REFUSED_STREAM })).await;
                        continue;
                    }
                    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
                    let reset = Arc::new(AtomicBool::new(false));
                    // A FIN or UNIDIRECTIONAL client half is closed from the start.
                    let data = (flags & (FLAG_FIN | FLAG_UNIDIRECTIONAL) == 0).then_some(tx);
                    streams.insert(stream_id, Open { data, reset: reset.clone() });
                    let s = Incoming { id: stream_id, headers, data: rx, reset, shared: shared.clone() };
                    if let Err(mpsc::error::SendError(s)) = incoming.send(s).await {
                        streams.remove(&stream_id);
                        s.refuse(rst::REFUSED_STREAM).await;
                    }
                }
                Frame::Data { stream_id, flags, data } => match streams.get_mut(&stream_id) {
                    Some(open) => {
                        if let Some(tx) = &open.data
                            && !data.is_empty()
                            && tx.send(data).await.is_err()
                        {
                            // The application stopped reading this stream: drop what comes.
                            open.data = None;
                        }
                        if flags & FLAG_FIN != 0 {
                            open.data = None;
                        }
                    }
                    None if stream_id > last_id => {
                        let _ = shared.out.send(Out::Frame(Frame::RstStream { stream_id, status: rst::INVALID_STREAM })).await;
                    }
                    None => {} // a stream that ended; late data is dropped
                },
                Frame::Headers { stream_id, flags, .. } => {
                    if flags & FLAG_FIN != 0
                        && let Some(open) = streams.get_mut(&stream_id)
                    {
                        open.data = None;
                    }
                }
                Frame::RstStream { stream_id, .. } => {
                    if let Some(open) = streams.remove(&stream_id) {
                        open.reset.store(true, Ordering::Relaxed);
                    }
                }
                Frame::Ping { id } => {
                    if id % 2 == 1 {
                        let _ = shared.out.send(Out::Frame(Frame::Ping { id })).await;
                    }
                }
                Frame::GoAway { .. } => going_away = true,
                Frame::SynReply { .. } | Frame::Settings { .. } | Frame::WindowUpdate { .. } | Frame::Unknown { .. } => {}
            }
            // Forget streams whose client half is closed and whose reader is gone.
            streams.retain(|_, o| o.data.as_ref().is_some_and(|tx| !tx.is_closed()) || Arc::strong_count(&o.reset) > 1);
        }
    }
    .await;
    drop(streams);
    match result {
        Ok(true) => shared.closed.cancel(),
        // The writer sends the GOAWAY, then ends the connection.
        Ok(false) => {}
        Err(e) => {
            log::debug!("SPDY read: {e}");
            let status = if matches!(e, SpdyError::Io(_)) { goaway::INTERNAL_ERROR } else { goaway::PROTOCOL_ERROR };
            if shared.out.try_send(Out::Close(status)).is_err() {
                shared.closed.cancel();
            }
        }
    }
}

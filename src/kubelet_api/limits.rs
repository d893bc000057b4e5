//! What keeps the kubelet port alive under overload: caps on connections (global and per
//! client address) and on concurrent streams per client ([`Limiter`]), and the streaming idle
//! timeout ([`Activity`], [`IdleIo`]). The TLS handshake timeout, the header size limit and the
//! header read timeout are applied where the connection is served (`conn.rs`).
//!
//! Refusals never crash anything: a connection over a cap is closed at once (before TLS, so it
//! costs nothing), a stream over the cap gets 429.

use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::KubeletConfig;

/// The limits, from `[kubelet]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open connections on the port, all clients together.
    pub max_connections: usize,
    /// Open connections from one client address.
    pub max_connections_per_client: usize,
    /// Concurrent long-running requests (log follows, exec, attach, port-forward) per client.
    pub max_streams_per_client: usize,
    /// Time allowed for the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Time allowed for a complete request header, after connecting or after the previous
    /// response (so also how long an idle keep-alive connection stays open).
    pub idle_timeout: Duration,
    /// A stream (follow, exec, ...) with no byte read or written for this long is closed.
    pub streaming_idle_timeout: Duration,
    /// Largest request header.
    pub max_header_bytes: usize,
    /// Largest request body (vks's endpoints take none; exec and friends upgrade).
    pub max_body_bytes: u64,
}

impl Limits {
    /// From the configuration.
    pub fn from_config(c: &KubeletConfig) -> Limits {
        Limits {
            max_connections: c.max_connections,
            max_connections_per_client: c.max_connections_per_client,
            max_streams_per_client: c.max_streams_per_client,
            tls_handshake_timeout: c.tls_handshake_timeout,
            idle_timeout: c.idle_timeout,
            streaming_idle_timeout: c.streaming_idle_timeout,
            max_header_bytes: c.max_header_bytes,
            max_body_bytes: c.max_body_bytes,
        }
    }

    /// `max_connections` lowered to half of the file descriptors vks may open, so that the
    /// port can never take the descriptors vks needs for systemd, the API server and the
    /// journal (issue: 1500 idle connections used to exhaust a limit of 1024).
    pub fn fit_to_fd_limit(mut self, nofile: u64) -> Limits {
        let cap = usize::try_from(nofile / 2).unwrap_or(usize::MAX).max(16);
        if self.max_connections > cap {
            log::warn!(
                "kubelet.max_connections {} lowered to {cap}: vks may open only {nofile} files (LimitNOFILE)",
                self.max_connections
            );
            self.max_connections = cap;
        }
        self.max_connections_per_client = self.max_connections_per_client.min(self.max_connections);
        self
    }
}

/// Why a [`Limiter`] said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The global cap.
    Total,
    /// The per-client cap.
    PerClient,
}

/// Counts holders globally and per key, up to two caps.
pub struct Limiter<K> {
    total: usize,
    per_key: usize,
    state: Mutex<(usize, HashMap<K, usize>)>,
}

/// One slot of a [`Limiter`], given back on drop.
pub struct Permit<K: Hash + Eq + Clone> {
    limiter: Arc<Limiter<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// At most `total` holders, at most `per_key` with the same key.
    pub fn new(total: usize, per_key: usize) -> Arc<Limiter<K>> {
        Arc::new(Limiter { total, per_key, state: Mutex::new((0, HashMap::new())) })
    }

    /// Takes a slot for `key`, or says which cap is reached.
    pub fn try_acquire(self: &Arc<Self>, key: K) -> Result<Permit<K>, Refused> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.0 >= self.total {
            return Err(Refused::Total);
        }
        let n = st.1.entry(key.clone()).or_insert(0);
        if *n >= self.per_key {
            return Err(Refused::PerClient);
        }
        *n += 1;
        st.0 += 1;
        Ok(Permit { limiter: self.clone(), key })
    }

    /// Slots taken (all keys).
    pub fn in_use(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl<K: Hash + Eq + Clone> Drop for Permit<K> {
    fn drop(&mut self) {
        let mut st = self.limiter.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 = st.0.saturating_sub(1);
        if let Some(n) = st.1.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                st.1.remove(&self.key);
            }
        }
    }
}

/// What a connection is doing: when it last moved a byte, how many requests are being served
/// on it, and whether it carries a stream. Shared by the connection's [`IdleIo`], its requests
/// and its idle watcher ([`Activity::watch`]).
pub struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    streaming: AtomicBool,
    closed: AtomicBool,
    /// The connection's byte stream was dropped: nothing left to watch.
    gone: AtomicBool,
    read_waker: AtomicWaker,
    write_waker: AtomicWaker,
    changed: Notify,
    /// Slots held for as long as the connection lives (the stream permit of an upgraded
    /// connection).
    held: Mutex<Vec<Box<dyn Send>>>,
}

impl Activity {
    /// A fresh connection.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            streaming: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            read_waker: AtomicWaker::new(),
            write_waker: AtomicWaker::new(),
            changed: Notify::new(),
            held: Mutex::new(Vec::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A request is being served until the returned guard is dropped (with its response body).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// The connection carries a stream (exec, attach, port-forward): the streaming idle timeout
    /// applies for as long as it lives, also after it was upgraded and no request is in flight.
    pub fn mark_streaming(&self) {
        self.streaming.store(true, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// Keeps `thing` (e.g. a stream permit) until the connection is gone.
    pub fn hold(&self, thing: Box<dyn Send>) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).push(thing);
    }

    /// Makes every further read and write fail, and wakes whoever waits on them.
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.read_waker.wake();
        self.write_waker.wake();
        self.changed.notify_one();
    }

    /// Whether the connection was closed for idleness.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Closes the connection once it carries a stream (a request in flight, or an upgrade) and
    /// has moved no byte for `streaming_idle`. Returns when it closed it or when the
    /// connection's [`IdleIo`] is dropped (also after an upgrade handed it to a stream), so it
    /// can run as a task of its own.
    pub async fn watch(self: Arc<Self>, streaming_idle: Duration) {
        loop {
            if self.gone.load(Ordering::Relaxed) {
                return;
            }
            let streaming = self.in_flight.load(Ordering::Relaxed) > 0 || self.streaming.load(Ordering::Relaxed);
            if !streaming {
                self.changed.notified().await;
                continue;
            }
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.epoch + last + streaming_idle;
            if Instant::now() >= deadline {
                log::debug!("kubelet API: closing a stream idle for {}s", streaming_idle.as_secs());
                self.close();
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = self.changed.notified() => {}
            }
        }
    }
}

/// A request in flight (see [`Activity::begin`]).
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
        self.0.changed.notify_one();
    }
}

/// A connection's byte stream, recording activity and failing every operation once the idle
/// watcher closed it.
pub struct IdleIo<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> IdleIo<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, activity: Arc<Activity>) -> IdleIo<S> {
        IdleIo { inner, activity }
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "stream idle timeout")
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.activity.is_closed() {
            return Poll::Ready(Err(idle_error()));
        }
        self.activity.read_waker.register(cx.waker());
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.activity.is_closed() {
            return Poll::Ready(Err(idle_error()));
        }
        self.activity.write_waker.register(cx.waker());
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.activity.is_closed() {
            return Poll::Ready(Err(idle_error()));
        }
        self.activity.write_waker.register(cx.waker());
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.activity.is_closed() {
            return Poll::Ready(Err(idle_error()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> Drop for IdleIo<S> {
    fn drop(&mut self) {
        // Whatever the connection held (a stream permit) is released with it.
        self.activity.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.activity.gone.store(true, Ordering::Relaxed);
        self.activity.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn limiter_caps_globally_and_per_key() {
        let l = Limiter::new(3, 2);
        let a1 = l.try_acquire("a").unwrap();
        let _a2 = l.try_acquire("a").unwrap();
        assert_eq!(l.try_acquire("a").err(), Some(Refused::PerClient));
        let _b1 = l.try_acquire("b").unwrap();
        assert_eq!(l.try_acquire("c").err(), Some(Refused::Total));
        drop(a1);
        assert_eq!(l.in_use(), 2);
        let _c1 = l.try_acquire("c").unwrap();
        assert_eq!(l.try_acquire("a").err(), Some(Refused::Total));
    }

    #[test]
    fn connection_cap_follows_the_fd_limit() {
        let cfg = crate::config::Config::from_toml(toml::Table::new(), "n1").unwrap();
        let l = Limits::from_config(&cfg.kubelet).fit_to_fd_limit(1024);
        assert_eq!(l.max_connections, 512);
        assert!(l.max_connections_per_client <= 512);
        let l = Limits::from_config(&cfg.kubelet).fit_to_fd_limit(1 << 20);
        assert_eq!(l.max_connections, cfg.kubelet.max_connections);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_streams_are_closed_and_busy_ones_are_not() {
        let activity = Activity::new();
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = IdleIo::new(a, activity.clone());
        let watcher = tokio::spawn(activity.clone().watch(Duration::from_secs(60)));
        // Nothing in flight: no timeout applies (hyper's header timeout does).
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!activity.is_closed());
        let req = activity.begin();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            b.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            io.read_exact(&mut one).await.unwrap();
        }
        assert!(!activity.is_closed(), "traffic every 50 s keeps a 60 s stream open");
        tokio::time::sleep(Duration::from_secs(61)).await;
        watcher.await.unwrap();
        assert!(activity.is_closed());
        let mut one = [0u8; 1];
        assert_eq!(io.read(&mut one).await.unwrap_err().kind(), io::ErrorKind::TimedOut);
        drop(req);
    }

    #[tokio::test(start_paused = true)]
    async fn the_watcher_ends_with_the_connection() {
        let activity = Activity::new();
        let io = IdleIo::new(tokio::io::empty(), activity.clone());
        let watcher = tokio::spawn(activity.clone().watch(Duration::from_secs(3600)));
        activity.mark_streaming();
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(io);
        tokio::time::timeout(Duration::from_secs(1), watcher).await.unwrap().unwrap();
        assert!(!activity.is_closed());
    }

    #[test]
    fn held_permits_go_with_the_connection() {
        let l = Limiter::new(10, 1);
        let activity = Activity::new();
        let io = IdleIo::new(tokio::io::empty(), activity.clone());
        activity.hold(Box::new(l.try_acquire("peer").unwrap()));
        assert_eq!(l.try_acquire("peer").err(), Some(Refused::PerClient));
        drop(io);
        assert!(l.try_acquire("peer").is_ok());
    }
}

//! Producing a log response: the lines so far, then (following) the new ones until the run
//! ends or the client leaves; `limitBytes` cuts the output wherever it falls, as the kubelet's.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::body::Frame;
use tokio::sync::mpsc;

use super::options::{LogOptions, format_line};
use super::{Logs, Target};
use crate::journal::{Entry, Query, Run, Seqnum, Start};
use crate::kubelet_api::body::Sender;

/// A frame is sent once this much is buffered (or when no more input is ready).
const FRAME: usize = 64 << 10;
/// After the run ended, lines still arriving within this time are sent.
const DRAIN: Duration = Duration::from_secs(1);
/// How often a follow checks whether the run ended.
const CHECK: Duration = Duration::from_secs(1);

/// The response body being written.
struct Sink {
    tx: Sender,
    buf: Vec<u8>,
    remaining: Option<u64>,
    timestamps: bool,
    /// The client left, or the byte limit was reached.
    done: bool,
}

impl Sink {
    /// Adds a line; false once nothing more will be sent.
    fn push(&mut self, e: &Entry) -> bool {
        if self.done {
            return false;
        }
        let start = self.buf.len();
        format_line(&mut self.buf, e.realtime_us, &e.message, e.ends_line, self.timestamps);
        if let Some(left) = &mut self.remaining {
            let added = (self.buf.len() - start) as u64;
            if added >= *left {
                self.buf.truncate(start + *left as usize);
                *left = 0;
                self.done = true;
                return false;
            }
            *left -= added;
        }
        true
    }

    /// Sends what is buffered; false once the client is gone.
    async fn flush(&mut self) -> bool {
        if !self.buf.is_empty() {
            let frame = Frame::data(Bytes::from(std::mem::take(&mut self.buf)));
            if self.tx.send(Ok(frame)).await.is_err() {
                self.done = true;
            }
        }
        !self.done
    }

    async fn fail(&mut self, what: String) {
        log::warn!("kubelet API: {what}");
        let _ = self.tx.send(Err(std::io::Error::other(what))).await;
        self.done = true;
    }
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl Target {
    /// The container's lines (of every run).
    fn container_matches(&self) -> Vec<(&'static str, String)> {
        vec![("VKS_POD_UID", self.pod_uid.clone()), ("VKS_CONTAINER", self.container.clone())]
    }

    /// The lines of a running run: while the unit runs, journald stamps each with the run's
    /// invocation ID.
    fn running_matches(&self) -> Vec<(&'static str, String)> {
        let mut m = self.container_matches();
        m.push(("_SYSTEMD_INVOCATION_ID", self.invocation.clone()));
        m
    }
}

/// Which followed entries to send: the run's, not before `since`, and not already sent (after
/// the last one sent, or when none was, written after the follow began).
struct Wanted {
    run: Run,
    since_us: Option<u64>,
    last: Option<Seqnum>,
    began_us: u64,
}

impl Wanted {
    fn check(&mut self, e: &Entry) -> bool {
        if !self.run.owns(e) {
            return false;
        }
        if self.since_us.is_some_and(|s| e.realtime_us < s) {
            return false;
        }
        let new = match &self.last {
            Some(l) => e.is_after(l),
            None => e.realtime_us >= self.began_us,
        };
        if new && let Some(s) = e.seqnum() {
            self.last = Some(s);
        }
        new
    }
}

/// Writes the response for `t` with `o` into `tx`.
pub(super) async fn run(logs: Arc<Logs>, t: Target, o: LogOptions, tx: Sender) {
    let mut sink = Sink { tx, buf: Vec::new(), remaining: o.limit_bytes, timestamps: o.timestamps, done: false };
    let running = !o.previous && logs.runs.is_running(&t.unit, &t.invocation).await;
    let live = o.follow && running;
    // Subscribe before reading the past, so nothing falls in between.
    let sub = live.then(|| logs.hub.subscribe(&t.pod_uid, &t.container));
    let began_us = now_us();
    let Some(last) = history(&t, &o, &mut sink, running).await else { return };
    let Some(mut sub) = sub else {
        sink.flush().await;
        return;
    };
    let mut wanted = Wanted { run: t.run(), since_us: o.since_us, last, began_us };
    if !follow(&logs, &t, &mut sub.rx, &mut wanted, &mut sink).await {
        return;
    }
    // The shared follower dropped us (we lagged) or stopped: follow on our own from the first
    // entry we did not get (its values exist now, so a filtered journalctl is safe).
    let start = match sub.lagged_at() {
        Some(c) => Start::At(c),
        None => Start::Beginning,
    };
    drop(sub);
    let since_us = if matches!(start, Start::Beginning) { Some(wanted.since_us.unwrap_or(began_us)) } else { None };
    let q = Query { matches: t.container_matches(), since_us, start, follow: true };
    let (mut rx, reader) = spawn_follower(q);
    follow(&logs, &t, &mut rx, &mut wanted, &mut sink).await;
    reader.abort();
}

/// The lines so far. Returns the sequence number of the last line read (`Some(None)`: none),
/// or `None` when the response is complete or failed. A `running` run is matched by journalctl
/// (which also takes a tail itself); a run that ended is read by its unit and filtered here,
/// since its last lines may lack the invocation ID (see [`Run`]).
async fn history(t: &Target, o: &LogOptions, sink: &mut Sink, running: bool) -> Option<Option<Seqnum>> {
    let ended = (!running).then(|| t.run());
    if let (Some(run), Some(n), None) = (&ended, o.tail_lines, o.since_us) {
        // A tail of a run that ended: the stamped tail and the late lines, not the whole run.
        let entries = match run.tail(n.min(usize::MAX as u64) as usize).await {
            Ok(e) => e,
            Err(e) => {
                sink.fail(format!("reading the journal for {}: {e}", t.unit)).await;
                return None;
            }
        };
        for e in &entries {
            let more = sink.push(e);
            if (!more || sink.buf.len() >= FRAME) && !sink.flush().await {
                return None;
            }
            if !more {
                return None;
            }
        }
        return sink.flush().await.then(|| entries.last().and_then(Entry::seqnum));
    }
    let q = match &ended {
        None => {
            let start = match (o.tail_lines, o.since_us) {
                (Some(n), None) => Start::Tail(n),
                _ => Start::Beginning,
            };
            Query { matches: t.running_matches(), since_us: o.since_us, start, follow: false }
        }
        Some(run) => run.query(o.since_us),
    };
    let mut reader = match q.spawn() {
        Ok(r) => r,
        Err(e) => {
            sink.fail(format!("cannot start journalctl for the logs of {}: {e}", t.unit)).await;
            return None;
        }
    };
    // A tail after `since` (or of filtered lines) is cut here: journalctl would give the first N.
    let mut tail: Option<VecDeque<Entry>> = match (o.tail_lines, &q.start) {
        (Some(n), Start::Beginning) => Some(VecDeque::with_capacity(n.min(10_000) as usize)),
        _ => None,
    };
    let mut last = None;
    loop {
        match reader.next().await {
            Ok(Some(e)) => {
                last = e.seqnum().or(last);
                if ended.as_ref().is_some_and(|r| !r.owns(&e)) {
                    continue;
                }
                if let Some(q) = &mut tail {
                    if o.tail_lines != Some(0) {
                        if q.len() as u64 == o.tail_lines.unwrap_or(0) {
                            q.pop_front();
                        }
                        q.push_back(e);
                    }
                    continue;
                }
                let more = sink.push(&e);
                if (!more || sink.buf.len() >= FRAME || !reader.has_buffered()) && !sink.flush().await {
                    return None;
                }
                if !more {
                    return None;
                }
            }
            Ok(None) => break,
            Err(e) => {
                sink.fail(format!("reading the journal for {}: {e}", t.unit)).await;
                return None;
            }
        }
    }
    for e in tail.into_iter().flatten() {
        let more = sink.push(&e);
        if (!more || sink.buf.len() >= FRAME) && !sink.flush().await {
            return None;
        }
        if !more {
            return None;
        }
    }
    if !sink.flush().await {
        return None;
    }
    Some(last)
}

/// Sends the wanted entries of `rx` until the run ends (true: `rx` closed first, the caller
/// may continue from elsewhere; false: done).
async fn follow(logs: &Logs, t: &Target, rx: &mut mpsc::Receiver<Entry>, wanted: &mut Wanted, sink: &mut Sink) -> bool {
    let mut check = tokio::time::interval(CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ended: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            e = rx.recv() => match e {
                Some(e) => {
                    if wanted.check(&e) {
                        if ended.is_some() {
                            ended = Some(tokio::time::Instant::now());
                        }
                        let more = sink.push(&e);
                        if (!more || sink.buf.len() >= FRAME || rx.is_empty()) && !sink.flush().await {
                            return false;
                        }
                        if !more {
                            return false;
                        }
                    }
                }
                None => {
                    sink.flush().await;
                    return !sink.done;
                }
            },
            _ = check.tick() => match ended {
                None => {
                    if !logs.runs.is_running(&t.unit, &t.invocation).await {
                        ended = Some(tokio::time::Instant::now());
                    }
                }
                Some(at) if at.elapsed() >= DRAIN => {
                    sink.flush().await;
                    return false;
                }
                Some(_) => {}
            },
            () = sink.tx.closed() => return false,
        }
    }
}

/// A filtered follower of its own, feeding a channel.
fn spawn_follower(q: Query) -> (mpsc::Receiver<Entry>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1024);
    let task = tokio::spawn(async move {
        let mut reader = match q.spawn() {
            Ok(r) => r,
            Err(e) => {
                log::warn!("kubelet API: cannot start journalctl to follow logs: {e}");
                return;
            }
        };
        loop {
            match reader.next().await {
                Ok(Some(e)) => {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    log::warn!("kubelet API: following logs: {e}");
                    return;
                }
            }
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64, inv: &str, t: u64) -> Entry {
        Entry {
            cursor: format!("s=a;i={i:x}"),
            realtime_us: t,
            invocation: Some(inv.into()),
            message: format!("line {i}").into_bytes(),
            ends_line: true,
            ..Entry::default()
        }
    }

    #[test]
    fn followed_entries_are_deduplicated_and_filtered() {
        let run = |started_us| Run {
            unit: "vks.ns.p.c.service".into(),
            pod_uid: "u1".into(),
            invocation: "inv".into(),
            started_us,
            until_us: None,
        };
        let mut w = Wanted {
            run: run(100),
            since_us: Some(100),
            last: Some(Seqnum { id: Some("a".into()), n: 5 }),
            began_us: 1000,
        };
        assert!(!w.check(&entry(5, "inv", 500)), "already sent by the history");
        assert!(!w.check(&entry(6, "other", 500)), "another run");
        assert!(!w.check(&entry(7, "inv", 50)), "before since");
        assert!(w.check(&entry(8, "inv", 500)));
        assert!(!w.check(&entry(8, "inv", 500)), "the hub and a private follower may both deliver it");
        let mut late = entry(9, "x", 600);
        (late.invocation, late.pod_uid) = (None, Some("u1".into()));
        assert!(w.check(&late), "a last line read after the unit stopped, without the invocation ID");
        let mut fresh = Wanted { run: run(0), since_us: None, last: None, began_us: 1000 };
        assert!(!fresh.check(&entry(1, "inv", 999)), "older than the follow, not in the (empty) history");
        assert!(fresh.check(&entry(2, "inv", 1000)));
    }

    #[tokio::test]
    async fn the_byte_limit_cuts_inside_a_line() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut sink = Sink { tx, buf: Vec::new(), remaining: Some(10), timestamps: false, done: false };
        assert!(sink.push(&entry(1, "i", 0)));
        assert!(!sink.push(&entry(2, "i", 0)));
        assert!(!sink.flush().await);
        let got = rx.recv().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&got[..], b"line 1\nlin");
    }
}

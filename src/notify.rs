//! Talking to the service manager that started vks (sd_notify): `READY=1`, `STATUS=`,
//! `WATCHDOG=1`, `STOPPING=1`. Every call is a no-op when vks was not started by systemd.
//!
//! The watchdog is fed only while *every* long-running loop of the daemon shows progress: each
//! loop holds a [`Heartbeat`] from the one [`Heartbeats`] registry and beats at least once per
//! round (loops that wait on outside events also beat on a timer). A loop that stops beating for
//! longer than its own limit stops the pings; systemd then kills vks after `WatchdogSec=` and
//! restarts it, and the new vks adopts the running pods untouched.
//!
//! Child processes vks spawns must not inherit `NOTIFY_SOCKET` (they would speak for vks):
//! spawn them with `Command::env_remove("NOTIFY_SOCKET")`. The variable is not unset in-process
//! because that is unsound once threads run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("sd_notify {states:?}: {e}");
    }
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STATUS=...`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `STOPPING=1` with a status line.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

#[derive(Debug)]
struct Entry {
    name: &'static str,
    limit: Duration,
    last: Mutex<Instant>,
}

/// The progress of one loop.
#[derive(Debug, Clone)]
pub struct Heartbeat(Arc<Entry>);

impl Heartbeat {
    /// Records one round of work.
    pub fn beat(&self) {
        *self.0.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// The loop's name.
    pub fn name(&self) -> &'static str {
        self.0.name
    }
}

/// Awaits `work`, beating `heartbeat` every `every` meanwhile: for a loop step that legitimately
/// takes long (a tunnel session, a wait for a CSR's approval) and has deadlines of its own.
pub async fn beating<F: Future>(heartbeat: &Heartbeat, every: Duration, work: F) -> F::Output {
    tokio::pin!(work);
    loop {
        heartbeat.beat();
        tokio::select! {
            out = &mut work => return out,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Every loop whose progress the watchdog depends on.
#[derive(Debug, Clone, Default)]
pub struct Heartbeats(Arc<Mutex<Vec<Arc<Entry>>>>);

impl Heartbeats {
    /// Registers a loop that beats at least once every `limit` while it works.
    pub fn register(&self, name: &'static str, limit: Duration) -> Heartbeat {
        let e = Arc::new(Entry { name, limit, last: Mutex::new(Instant::now()) });
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(e.clone());
        Heartbeat(e)
    }

    /// The loops that have not beaten within their limit, with how long ago they last did.
    pub fn stalled(&self) -> Vec<(&'static str, Duration)> {
        let now = Instant::now();
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|e| {
                let age = now.saturating_duration_since(*e.last.lock().unwrap_or_else(|e| e.into_inner()));
                (age > e.limit).then_some((e.name, age))
            })
            .collect()
    }
}

/// When the unit sets `WatchdogSec=`, sends `WATCHDOG=1` every half interval for as long as no
/// loop in `beats` has stalled. An unreachable API server does not stop the pings: the loops keep
/// beating while they retry.
pub async fn watchdog(beats: Heartbeats, cancel: CancellationToken) -> anyhow::Result<()> {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        cancel.cancelled().await;
        return Ok(());
    };
    let period = interval / 2;
    log::info!("systemd watchdog enabled: pinging every {}ms while every loop makes progress", period.as_millis());
    let mut reported = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(period) => {}
        }
        let stalled = beats.stalled();
        if stalled.is_empty() {
            send(&[NotifyState::Watchdog]);
            reported = false;
        } else if !reported {
            let list: Vec<String> = stalled.iter().map(|(n, age)| format!("{n} ({}s)", age.as_secs())).collect();
            log::error!("no progress in {}; no longer pinging the watchdog (systemd restarts vks)", list.join(", "));
            reported = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_stops_beating_is_reported() {
        let beats = Heartbeats::default();
        let fast = beats.register("fast", Duration::from_secs(10));
        let slow = beats.register("slow", Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(beats.stalled().is_empty());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(beats.stalled().iter().map(|s| s.0).collect::<Vec<_>>(), ["fast"]);
        fast.beat();
        slow.beat();
        assert!(beats.stalled().is_empty());
    }
}

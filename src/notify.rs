//! Talking to the service manager that started vks (sd_notify): `READY=1`, `STATUS=`,
//! `WATCHDOG=1`, `STOPPING=1`. Every call is a no-op when vks was not started by systemd.
//!
//! Child processes vks spawns must not inherit `NOTIFY_SOCKET` (they would speak for vks):
//! spawn them with `Command::env_remove("NOTIFY_SOCKET")`. The variable is not unset in-process
//! because that is unsound once threads run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
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

/// Progress counter of the daemon's main loops; the watchdog only pings while it advances.
#[derive(Debug, Default, Clone)]
pub struct Liveness(Arc<AtomicU64>);

impl Liveness {
    /// Records one round of work.
    pub fn tick(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn value(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// When the unit sets `WatchdogSec=`, sends `WATCHDOG=1` every half interval for as long as
/// `liveness` keeps advancing (a stuck main loop stops the pings and systemd restarts vks).
/// An unreachable API server does not stop the pings: the loops keep ticking while they retry.
pub async fn watchdog(liveness: Liveness, stall_limit: Duration, cancel: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else { return };
    let period = interval / 2;
    log::info!("systemd watchdog enabled: pinging every {}ms", period.as_millis());
    let mut last = (liveness.value(), tokio::time::Instant::now());
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let v = liveness.value();
        if v != last.0 {
            last = (v, tokio::time::Instant::now());
        }
        if last.1.elapsed() <= stall_limit {
            send(&[NotifyState::Watchdog]);
        } else {
            log::error!(
                "main loop made no progress for {}s; no longer pinging the watchdog",
                last.1.elapsed().as_secs()
            );
        }
    }
}

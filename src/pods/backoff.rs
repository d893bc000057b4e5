//! The kubelet's crash-loop back-off (k8s.io/client-go util/flowcontrol `Backoff` as used by
//! `doBackOff` in pkg/kubelet/kuberuntime): the first restart after a crash is immediate, then
//! the wait doubles from 10 s up to 5 minutes, counted from when the container finished; an
//! entry older than 10 minutes (twice the cap) starts over.

use std::time::{Duration, SystemTime};

/// First back-off.
pub const INITIAL: Duration = Duration::from_secs(10);
/// Cap.
pub const MAX: Duration = Duration::from_secs(300);

/// Back-off state of one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashBackoff {
    entry: Option<(Duration, SystemTime)>,
}

fn expired(event: SystemTime, last_update: SystemTime) -> bool {
    event.duration_since(last_update).is_ok_and(|d| d > MAX * 2)
}

impl CrashBackoff {
    /// A container that already restarted `restarts` times (e.g. when vks restarts and reads the
    /// count from the API): assume the crashes were consecutive.
    pub fn seeded(restarts: i32, last_finished: SystemTime) -> CrashBackoff {
        if restarts <= 0 {
            return CrashBackoff::default();
        }
        let mut d = INITIAL;
        for _ in 1..restarts {
            d = (d * 2).min(MAX);
        }
        CrashBackoff { entry: Some((d, last_finished)) }
    }

    /// The container finished at `finished`; how long from `now` until it may be restarted.
    /// Zero means restart now — call [`CrashBackoff::restarted`] when doing so.
    pub fn delay(&self, finished: SystemTime, now: SystemTime) -> Duration {
        match self.entry {
            Some((backoff, last)) if !expired(finished, last) => {
                let since = now.duration_since(finished).unwrap_or_default();
                backoff.saturating_sub(since)
            }
            _ => Duration::ZERO,
        }
    }

    /// Records a restart of a container that finished at `finished` (flowcontrol `Next`).
    pub fn restarted(&mut self, finished: SystemTime) {
        let next = match self.entry {
            Some((backoff, last)) if !expired(finished, last) => (backoff * 2).min(MAX),
            _ => INITIAL,
        };
        self.entry = Some((next, finished));
    }

    /// The back-off that applies after the next crash (for messages).
    pub fn current(&self) -> Duration {
        self.entry.map_or(INITIAL, |(d, _)| d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_sequence_immediate_then_10_20_40_capped_at_300() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut b = CrashBackoff::default();
        let mut finished = t0;
        let mut waits = Vec::new();
        for _ in 0..9 {
            let wait = b.delay(finished, finished);
            waits.push(wait.as_secs());
            let restart_at = finished + wait;
            b.restarted(finished);
            // It runs for one second and crashes again.
            finished = restart_at + Duration::from_secs(1);
        }
        assert_eq!(waits, [0, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn waiting_counts_from_the_finish_time() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut b = CrashBackoff::default();
        b.restarted(t0);
        let finished = t0 + Duration::from_secs(5);
        assert_eq!(b.delay(finished, finished + Duration::from_secs(4)), Duration::from_secs(6));
        assert_eq!(b.delay(finished, finished + Duration::from_secs(30)), Duration::ZERO);
    }

    #[test]
    fn resets_after_ten_minutes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut b = CrashBackoff::seeded(6, t0);
        assert_eq!(b.current(), MAX);
        let much_later = t0 + Duration::from_secs(601);
        assert_eq!(b.delay(much_later, much_later), Duration::ZERO);
        b.restarted(much_later);
        assert_eq!(b.current(), INITIAL);
    }

    #[test]
    fn seeding_from_a_restart_count() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(CrashBackoff::seeded(0, t0), CrashBackoff::default());
        assert_eq!(CrashBackoff::seeded(1, t0).current(), Duration::from_secs(10));
        assert_eq!(CrashBackoff::seeded(3, t0).current(), Duration::from_secs(40));
        assert_eq!(CrashBackoff::seeded(50, t0).current(), MAX);
    }
}

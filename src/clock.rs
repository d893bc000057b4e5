//! Time as vks's loops see it. Monotonic time is always tokio's (`tokio::time::Instant`), so
//! tests can pause and advance it; wall-clock time (status timestamps, back-off measured from a
//! container's finish time) comes from a [`Clock`], which in production is the system clock and
//! in tests follows tokio's paused clock from a fixed start.

use std::time::{Duration, SystemTime};

use k8s_openapi::jiff::Timestamp;

/// A source of wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// `None`: the system clock; `Some((wall, at))`: `wall` at tokio instant `at`, advancing with
    /// tokio's clock.
    base: Option<(SystemTime, tokio::time::Instant)>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { base: None }
    }

    /// A clock that reads `start` now and then advances with tokio's clock (for tests that
    /// pause time).
    pub fn following_tokio(start: SystemTime) -> Clock {
        Clock { base: Some((start, tokio::time::Instant::now())) }
    }

    /// The current wall-clock time.
    pub fn wall(&self) -> SystemTime {
        match self.base {
            None => SystemTime::now(),
            Some((wall, at)) => wall + tokio::time::Instant::now().saturating_duration_since(at),
        }
    }

    /// The current wall-clock time as a Kubernetes timestamp.
    pub fn timestamp(&self) -> Timestamp {
        let micros = self.wall().duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_micros();
        Timestamp::from_microsecond(micros as i64).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    /// Microseconds since the epoch (systemd's timestamps).
    pub fn usec(&self) -> u64 {
        self.wall().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
    }

    /// The monotonic instant corresponding to wall-clock time `at` (now for times in the past).
    pub fn instant_at(&self, at: SystemTime) -> tokio::time::Instant {
        tokio::time::Instant::now() + at.duration_since(self.wall()).unwrap_or_default()
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_test_clock_follows_paused_time() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = Clock::following_tokio(start);
        assert_eq!(c.wall(), start);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(c.wall(), start + Duration::from_secs(90));
        assert_eq!(c.usec(), 1_000_090_000_000);
        let later = c.wall() + Duration::from_secs(5);
        assert_eq!(c.instant_at(later) - tokio::time::Instant::now(), Duration::from_secs(5));
    }
}

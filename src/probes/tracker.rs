//! A probe's result over successive runs, as the kubelet's probe worker keeps it
//! (pkg/kubelet/prober/worker.go): each probe starts from its initial result (liveness: success,
//! readiness: failure, startup: unknown), and only `successThreshold` consecutive successes or
//! `failureThreshold` consecutive failures change it. A liveness or startup failure puts the probe
//! on hold until the container runs again (it is being restarted). Pure.

use super::spec::ProbeKind;

/// A probe's current result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not known yet (a startup probe that has not passed).
    Unknown,
    /// Passing.
    Success,
    /// Failing.
    Failure,
}

/// One probe of one container run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    kind: ProbeKind,
    verdict: Verdict,
    last: Option<bool>,
    streak: u32,
    on_hold: bool,
}

impl Tracker {
    /// A probe of a container that has just started.
    pub fn new(kind: ProbeKind) -> Tracker {
        let verdict = match kind {
            ProbeKind::Liveness => Verdict::Success,
            ProbeKind::Readiness => Verdict::Failure,
            ProbeKind::Startup => Verdict::Unknown,
        };
        Tracker { kind, verdict, last: None, streak: 0, on_hold: false }
    }

    /// The current result.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Whether probing stopped until the container runs again.
    pub fn on_hold(&self) -> bool {
        self.on_hold
    }

    /// Records one run (`success` or not). Returns the result when the thresholds set it (which
    /// may be the result it already had).
    pub fn record(&mut self, success: bool, success_threshold: u32, failure_threshold: u32) -> Option<Verdict> {
        if self.on_hold {
            return None;
        }
        if self.last == Some(success) {
            self.streak = self.streak.saturating_add(1);
        } else {
            self.last = Some(success);
            self.streak = 1;
        }
        let needed = if success { success_threshold } else { failure_threshold };
        if self.streak < needed.max(1) {
            return None;
        }
        self.verdict = if success { Verdict::Success } else { Verdict::Failure };
        if !success && self.kind != ProbeKind::Readiness {
            self.on_hold = true;
            self.streak = 0;
        }
        Some(self.verdict)
    }

    /// The result set from outside (a liveness probe of a pod being deleted counts as passing).
    pub fn set(&mut self, verdict: Verdict) {
        self.verdict = verdict;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_count_consecutive_results() {
        let mut r = Tracker::new(ProbeKind::Readiness);
        assert_eq!(r.verdict(), Verdict::Failure);
        assert_eq!(r.record(true, 2, 3), None);
        assert_eq!(r.record(true, 2, 3), Some(Verdict::Success));
        assert_eq!(r.record(false, 2, 3), None);
        assert_eq!(r.record(true, 2, 3), None, "a success breaks the run of failures");
        assert_eq!(r.record(false, 2, 3), None);
        assert_eq!(r.record(false, 2, 3), None);
        assert_eq!(r.record(false, 2, 3), Some(Verdict::Failure));
        assert!(!r.on_hold(), "readiness keeps probing");
        assert_eq!(r.record(false, 2, 3), Some(Verdict::Failure));
    }

    #[test]
    fn liveness_and_startup_failures_hold_until_the_container_restarts() {
        let mut l = Tracker::new(ProbeKind::Liveness);
        assert_eq!(l.verdict(), Verdict::Success);
        assert_eq!(l.record(false, 1, 2), None);
        assert_eq!(l.record(false, 1, 2), Some(Verdict::Failure));
        assert!(l.on_hold());
        assert_eq!(l.record(true, 1, 2), None);
        let mut s = Tracker::new(ProbeKind::Startup);
        assert_eq!(s.verdict(), Verdict::Unknown);
        assert_eq!(s.record(true, 1, 3), Some(Verdict::Success));
    }
}

//! `activeDeadlineSeconds`: a pod that has been active on the node longer than that (counted
//! from its `status.startTime`, as the kubelet's `activeDeadlineHandler`) fails with reason
//! `DeadlineExceeded`; its containers are stopped as in a graceful deletion (preStop hooks, stop
//! signals, SIGKILL after the pod's grace period) and not restarted. The field may be set or
//! lowered on a running pod: the deadline is computed from the pod as it is now, every round.

use std::time::{Duration, SystemTime};

use super::Worker;
use crate::events::EventType;

/// The pod's reason and message once its deadline passed (the kubelet's).
pub(super) const REASON: &str = "DeadlineExceeded";
pub(super) const MESSAGE: &str = "Pod was active on the node longer than the specified deadline";

impl Worker {
    /// When the pod's active deadline ends, if it has one.
    pub(super) fn active_deadline(&self) -> Option<SystemTime> {
        let secs = self.pod.spec.as_ref()?.active_deadline_seconds?;
        let start = SystemTime::UNIX_EPOCH + Duration::from_micros(self.start_time.as_microsecond().max(0) as u64);
        Some(start + Duration::from_secs(secs.max(0) as u64))
    }

    /// Marks the pod as past its deadline once it is.
    pub(super) fn check_active_deadline(&mut self) {
        let deleting = self.api_gone || self.pod.metadata.deletion_timestamp.is_some();
        if self.deadline_exceeded || self.terminal || deleting || self.rejected.is_some() {
            return;
        }
        let Some(at) = self.active_deadline() else { return };
        if self.shared.clock.wall() < at {
            return;
        }
        self.deadline_exceeded = true;
        self.terminal = true;
        log::info!(pod = self.id.to_string().as_str(); "pod {}: {MESSAGE}; stopping it", self.id);
        self.event(EventType::Normal, REASON, MESSAGE.into());
    }
}

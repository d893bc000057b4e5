//! When to probe, and what a probe's result means for its container (the kubelet's probe
//! workers, pkg/kubelet/prober). Each probe of a running container is due at its start time plus
//! `initialDelaySeconds`, then every `periodSeconds`; a due probe runs in its own task (a future:
//! HTTP, TCP and gRPC probes cost no thread or process) and reports with [`Msg::Probe`]. Results
//! are kept per container run, so a result about an earlier run is dropped.
//!
//! - startup: while it has not passed, the other probes wait; when it fails `failureThreshold`
//!   times the container is killed ("failed startup probe") and restarts under its policy;
//! - liveness: failing `failureThreshold` times kills the container ("failed liveness probe,
//!   will be restarted"), with the probe's `terminationGracePeriodSeconds` if it has one; the
//!   restart counts in `restartCount` and the crash-loop back-off;
//! - readiness: the container is ready only while it passes; it keeps probing while the pod
//!   is being deleted (liveness and startup stop then).
//!
//! Every failed run is a Warning event `Unhealthy` ("Liveness probe failed: ..."), as from the
//! kubelet.

use std::time::Duration;

use tokio::time::Instant;

use super::container::Ctr;
use super::stop::StopWhy;
use super::{Msg, Worker};
use crate::events::EventType;
use crate::probes::Outcome;
use crate::probes::spec::{self, ProbeKind, ProbeSpec};
use crate::probes::tracker::{Tracker, Verdict};

/// One probe of one container.
#[derive(Debug)]
pub(super) struct ProbeState {
    pub spec: ProbeSpec,
    pub tracker: Tracker,
    /// The run the tracker is about (its start time, µs; 0 before the first).
    pub run: u64,
    /// When it is due next (none while it must not run).
    pub next_at: Option<Instant>,
    /// When the run under way was due.
    pub in_flight: Option<Instant>,
}

impl ProbeState {
    pub(super) fn new(spec: ProbeSpec) -> ProbeState {
        ProbeState { tracker: Tracker::new(spec.kind), spec, run: 0, next_at: None, in_flight: None }
    }
}

/// A probe run that ended.
#[derive(Debug)]
pub struct ProbeDone {
    /// The container's index.
    pub index: usize,
    /// Which probe.
    pub kind: ProbeKind,
    /// The run it probed.
    pub run: u64,
    /// How it went.
    pub outcome: Outcome,
}

impl Ctr {
    fn probe(&self, kind: ProbeKind) -> Option<&ProbeState> {
        self.probes.iter().find(|p| p.spec.kind == kind)
    }

    /// The verdict of probe `kind` about the current run, `None` without such a probe.
    fn verdict(&self, kind: ProbeKind) -> Option<Verdict> {
        let p = self.probe(kind)?;
        Some(if Some(p.run) == self.program_run() { p.tracker.verdict() } else { Tracker::new(kind).verdict() })
    }

    /// Whether the startup probe passed (true without one).
    pub(super) fn startup_passed(&self) -> bool {
        self.verdict(ProbeKind::Startup).is_none_or(|v| v == Verdict::Success)
    }

    /// Whether the readiness probe passes (true without one).
    pub(super) fn readiness_passes(&self) -> bool {
        self.verdict(ProbeKind::Readiness).is_none_or(|v| v == Verdict::Success)
    }
}

impl Worker {
    /// Brings every probe up to date with its container's run and starts the due ones.
    pub(super) fn sync_probes(&mut self) {
        let now = Instant::now();
        let deleting = self.api_gone || self.pod.metadata.deletion_timestamp.is_some() || self.terminal;
        for i in 0..self.ctrs.len() {
            let c = &self.ctrs[i];
            // A run is probed once its postStart hook finished, and until vks stops it.
            let live = c
                .program_run()
                .filter(|_| !c.post_start_pending())
                .map(|r| (r, c.run_started()))
                .filter(|(r, _)| c.stopping.as_ref().is_none_or(|s| s.run != *r || s.why == StopWhy::Pod));
            let started = c.startup_passed();
            let clock = self.shared.clock;
            let mut due = Vec::new();
            for (k, p) in self.ctrs[i].probes.iter_mut().enumerate() {
                let Some((run, started_at)) = live else {
                    p.next_at = None;
                    continue;
                };
                if p.run != run {
                    *p = ProbeState { run, ..ProbeState::new(p.spec.clone()) };
                }
                let active = match p.spec.kind {
                    ProbeKind::Startup => !started && !deleting,
                    ProbeKind::Liveness => started && !deleting,
                    ProbeKind::Readiness => started,
                } && !p.tracker.on_hold();
                if !active {
                    p.next_at = None;
                    continue;
                }
                if p.next_at.is_none() && p.in_flight.is_none() {
                    let first = started_at.map_or(now, |t| clock.instant_at(t + p.spec.initial_delay));
                    p.next_at = Some(first.max(now));
                }
                if p.in_flight.is_none() && p.next_at.is_some_and(|at| at <= now) {
                    p.in_flight = p.next_at.take();
                    due.push(k);
                }
            }
            for k in due {
                self.spawn_probe(i, k);
            }
        }
    }

    fn spawn_probe(&self, i: usize, k: usize) {
        let p = &self.ctrs[i].probes[k];
        let action = spec::probe_action(&p.spec.probe, &self.ctrs[i].spec, &self.shared.node.node_ip);
        let (prober, tx, target) = (self.shared.prober.clone(), self.tx.clone(), self.target(i));
        let (kind, run, timeout) = (p.spec.kind, p.run, p.spec.timeout);
        tokio::spawn(async move {
            let outcome = match action {
                Ok(a) => prober.probe(&target, &a, timeout).await,
                Err(e) => Outcome::Error(e),
            };
            let _ = tx.send(Msg::Probe(Box::new(ProbeDone { index: i, kind, run, outcome })));
        });
    }

    /// When the next probe is due.
    pub(super) fn probe_wakes(&self) -> impl Iterator<Item = Instant> + '_ {
        self.ctrs.iter().flat_map(|c| c.probes.iter().filter_map(|p| p.next_at))
    }

    /// A probe run ended: counts it, and acts when its result changes the container.
    pub(super) fn probe_done(&mut self, d: ProbeDone) {
        let now = Instant::now();
        let kind = d.kind;
        let (name, verdict, note) = {
            let Some(c) = self.ctrs.get_mut(d.index) else { return };
            let name = c.spec.name.clone();
            let Some(p) = c.probes.iter_mut().find(|p| p.spec.kind == kind && p.run == d.run) else { return };
            let Some(due) = p.in_flight.take() else { return };
            p.next_at = Some((due + p.spec.period).max(now));
            let (st, ft) = (p.spec.success_threshold, p.spec.failure_threshold);
            let (verdict, note) = match &d.outcome {
                Outcome::Success(_) => (p.tracker.record(true, st, ft), None),
                Outcome::Warning(m) => {
                    (p.tracker.record(true, st, ft), Some(("ProbeWarning", format!("{kind} probe warning: {m}"))))
                }
                Outcome::Failure(m) => {
                    (p.tracker.record(false, st, ft), Some(("Unhealthy", format!("{kind} probe failed: {m}"))))
                }
                Outcome::Error(m) => (None, Some(("Unhealthy", format!("{kind} probe errored: {m}")))),
            };
            (name, verdict, note)
        };
        if let Some((reason, note)) = note {
            log::info!(pod = self.id.to_string().as_str(); "pod {} container {name}: {note}", self.id);
            self.event(EventType::Warning, reason, note);
        }
        match (kind, verdict) {
            (ProbeKind::Liveness | ProbeKind::Startup, Some(Verdict::Failure)) => self.probe_kill(d.index, kind),
            (ProbeKind::Startup, Some(Verdict::Success)) => {
                log::debug!(pod = self.id.to_string().as_str(); "pod {} container {name}: started", self.id);
            }
            _ => {}
        }
    }

    /// Kills container `i` because its liveness or startup probe failed.
    fn probe_kill(&mut self, i: usize, kind: ProbeKind) {
        let c = &self.ctrs[i];
        let why = if kind == ProbeKind::Liveness { StopWhy::Liveness } else { StopWhy::Startup };
        let probe = if kind == ProbeKind::Liveness { "liveness" } else { "startup" };
        let restarts = c.policy != crate::policy::RestartPolicy::Never;
        let mut note = format!("Container {} failed {probe} probe", c.spec.name);
        if restarts {
            note.push_str(", will be restarted");
        }
        let grace = c.probe(kind).and_then(|p| p.spec.termination_grace).unwrap_or_else(|| self.pod_grace());
        log::info!(pod = self.id.to_string().as_str(); "pod {}: {note}", self.id);
        self.event(EventType::Normal, "Killing", note);
        self.begin_stop(i, why, Instant::now() + grace);
    }
}

impl Ctr {
    /// When the current run's process started (wall clock).
    pub(super) fn run_started(&self) -> Option<std::time::SystemTime> {
        let us = self.unit_status.as_ref()?.started_usec;
        (us > 0).then(|| std::time::SystemTime::UNIX_EPOCH + Duration::from_micros(us))
    }
}

//! An in-memory [`Systemd`] for unit tests: unit files in a map, units that "run" until the test
//! makes them exit (or a signal does), and the same change notifications the real one sends.
//! Timestamps come from a [`Clock`], so tests with paused tokio time see consistent times.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{
    ActiveState, ExitKind, Exposure, Ids, KillWhom, Signal, SliceMemory, Systemd, SystemdError, UnitDelta, UnitEvent,
    UnitStatus,
};
use crate::clock::Clock;

/// One call made to the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// When (by the fake's clock).
    pub at: SystemTime,
    /// What, e.g. `start vks.a.b.c.service`.
    pub what: String,
}

#[derive(Default)]
struct State {
    files: BTreeMap<String, String>,
    units: BTreeMap<String, UnitStatus>,
    watchers: Vec<(String, mpsc::UnboundedSender<UnitEvent>)>,
    calls: Vec<Call>,
    invocations: u64,
    pids: u32,
    /// Units whose process ignores SIGTERM.
    stubborn: HashSet<String>,
    /// Units that fail to start (exit code 203, as systemd reports an exec failure).
    broken: HashSet<String>,
    /// Units whose starts stay `activating` (process forked, still being set up) until
    /// [`FakeSystemd::finish_start`].
    slow: HashSet<String>,
    /// Units whose next status read panics (to test the supervision of the caller).
    panic_once: HashSet<String>,
    /// The D-Bus connection is down: every call to systemd fails (unit files still work).
    disconnected: bool,
    /// Live property changes per unit, in order.
    properties: BTreeMap<String, Vec<(String, u64)>>,
    /// Memory peak and limit per slice (cgroup v1 as tests set it).
    slices: BTreeMap<String, SliceMemory>,
    /// IDs registered with `ensure_ids`.
    ids: Vec<Ids>,
}

/// A fake systemd. Started units stay `active/running` until [`FakeSystemd::exit`] or a signal.
#[derive(Default)]
pub struct FakeSystemd {
    state: Mutex<State>,
    clock: Clock,
}

fn delta_of(u: &UnitStatus) -> UnitDelta {
    UnitDelta {
        active_state: Some(u.active_state),
        sub_state: Some(u.sub_state.clone()),
        invocation_id: Some(u.invocation_id.clone()),
        result: Some(u.result.clone()),
        exit_kind: Some(u.exit_kind),
        exit_status: Some(u.exit_status),
        started_usec: Some(u.started_usec),
        exited_usec: Some(u.exited_usec),
        main_pid: Some(u.main_pid),
        incomplete: false,
    }
}

impl FakeSystemd {
    /// An empty fake on the system clock.
    pub fn new() -> FakeSystemd {
        FakeSystemd::default()
    }

    /// An empty fake whose timestamps come from `clock`.
    pub fn with_clock(clock: Clock) -> FakeSystemd {
        FakeSystemd { state: Mutex::default(), clock }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(state: &mut State, name: &str) {
        let Some(u) = state.units.get(name) else { return };
        let d = delta_of(u);
        state.watchers.retain(|(prefix, tx)| {
            !name.starts_with(prefix.as_str())
                || tx.send(UnitEvent::Changed(name.to_owned(), Box::new(d.clone()))).is_ok()
        });
    }

    fn record(&self, s: &mut State, what: String) {
        s.calls.push(Call { at: self.clock.wall(), what });
    }

    fn end(&self, s: &mut State, name: &str, kind: ExitKind, status: i32) {
        let now = self.clock.usec();
        if let Some(u) = s.units.get_mut(name)
            && u.main_pid != 0
        {
            u.exit_kind = kind;
            u.exit_status = status;
            u.exited_usec = now;
            u.main_pid = 0;
            if kind == ExitKind::Exited && status == 0 {
                u.active_state = ActiveState::Active;
                u.sub_state = "exited".into();
                u.result = "success".into();
            } else {
                u.active_state = ActiveState::Failed;
                u.sub_state = "failed".into();
                u.result = if kind == ExitKind::Exited { "exit-code" } else { "signal" }.into();
            }
        }
        FakeSystemd::notify(s, name);
    }

    /// Makes a running unit's main process exit with `code` (like a `RemainAfterExit=yes`
    /// service: success leaves it active/exited, failure makes it failed).
    pub fn exit(&self, name: &str, code: i32) {
        let mut s = self.lock();
        self.end(&mut s, name, ExitKind::Exited, code);
    }

    /// Makes the unit's process ignore SIGTERM (only SIGKILL ends it).
    pub fn ignore_sigterm(&self, name: &str) {
        self.lock().stubborn.insert(name.to_owned());
    }

    /// Makes every later start of the unit fail the way a missing executable does (exit 203).
    pub fn break_unit(&self, name: &str) {
        self.lock().broken.insert(name.to_owned());
    }

    /// Makes every later start of the unit stay `activating` with its process forked (as while
    /// systemd sets up a sandbox, or a notify daemon has not reported READY=1) until
    /// [`FakeSystemd::finish_start`].
    pub fn slow_start(&self, name: &str) {
        self.lock().slow.insert(name.to_owned());
    }

    /// Ends the set-up of a slowly starting unit: it becomes `active/running`.
    pub fn finish_start(&self, name: &str) {
        let mut s = self.lock();
        s.slow.remove(name);
        if let Some(u) = s.units.get_mut(name).filter(|u| u.active_state == ActiveState::Activating) {
            u.active_state = ActiveState::Active;
            u.sub_state = "running".into();
            FakeSystemd::notify(&mut s, name);
        }
    }

    /// Makes the next status read of the unit panic, as a bug in its caller would.
    pub fn panic_on_next_read(&self, name: &str) {
        self.lock().panic_once.insert(name.to_owned());
    }

    /// Makes a running unit's main process exit with `code` without sending a signal (a change
    /// lost while the D-Bus connection was down).
    pub fn exit_unnoticed(&self, name: &str, code: i32) {
        let watchers = std::mem::take(&mut self.lock().watchers);
        self.exit(name, code);
        self.lock().watchers = watchers;
    }

    /// Drops the D-Bus connection: calls to systemd fail with `Disconnected` until
    /// [`FakeSystemd::reconnect`] (unit files are files: they still work).
    pub fn disconnect(&self) {
        self.lock().disconnected = true;
    }

    /// Restores the connection and resyncs every watcher, as vks does after a reconnection.
    pub fn reconnect(&self) {
        self.lock().disconnected = false;
        self.resync();
    }

    fn connected(&self) -> Result<(), SystemdError> {
        if self.lock().disconnected { Err(SystemdError::Disconnected) } else { Ok(()) }
    }

    /// Tells every watcher to re-read its units, as after a reconnection.
    pub fn resync(&self) {
        self.lock().watchers.retain(|(_, tx)| tx.send(UnitEvent::Resync).is_ok());
    }

    fn start_inner(&self, name: &str) -> Result<(), SystemdError> {
        let mut s = self.lock();
        if !s.files.contains_key(name) {
            return Err(SystemdError::NoSuchUnit(name.to_owned()));
        }
        let running = s.units.get(name).is_some_and(|u| u.main_pid != 0);
        if !running {
            s.invocations += 1;
            s.pids += 1;
            let slow = s.slow.contains(name);
            let u = UnitStatus {
                load_state: "loaded".into(),
                active_state: if slow { ActiveState::Activating } else { ActiveState::Active },
                sub_state: if slow { "start" } else { "running" }.into(),
                result: "success".into(),
                started_usec: self.clock.usec(),
                main_pid: 1000 + s.pids,
                invocation_id: format!("{:032x}", s.invocations),
                ..UnitStatus::default()
            };
            s.units.insert(name.to_owned(), u);
        }
        FakeSystemd::notify(&mut s, name);
        if !running && s.broken.contains(name) {
            self.end(&mut s, name, ExitKind::Exited, 203);
        }
        Ok(())
    }

    /// Unit files currently written.
    pub fn files(&self) -> BTreeMap<String, String> {
        self.lock().files.clone()
    }

    /// Every call made so far, e.g. `start vks.a.b.c.service`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.iter().map(|c| c.what.clone()).collect()
    }

    /// Every call made so far, with when it was made.
    pub fn timed_calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Makes a running unit's main process die of SIGKILL as the kernel's OOM killer does on
    /// cgroup v1: the container's slice shows its peak usage at its limit, systemd only a signal.
    pub fn oom_kill(&self, name: &str, slice: &str, limit: u64) {
        let mut s = self.lock();
        s.slices.insert(slice.to_owned(), SliceMemory { peak: limit, limit });
        self.end(&mut s, name, ExitKind::Killed, Signal::SIGKILL as i32);
    }

    /// The live property changes made to a unit or slice, in order.
    pub fn properties(&self, name: &str) -> Vec<(String, u64)> {
        self.lock().properties.get(name).cloned().unwrap_or_default()
    }

    /// The IDs registered so far.
    pub fn registered_ids(&self) -> Vec<Ids> {
        self.lock().ids.clone()
    }

    /// The unit's status as systemd would report it, if it is loaded.
    pub fn unit(&self, name: &str) -> Option<UnitStatus> {
        self.lock().units.get(name).cloned()
    }
}

#[async_trait]
impl Systemd for FakeSystemd {
    async fn version(&self) -> Result<String, SystemdError> {
        Ok("252-fake".into())
    }

    async fn write_unit(&self, name: &str, content: &str) -> Result<(), SystemdError> {
        let mut s = self.lock();
        self.record(&mut s, format!("write {name}"));
        s.files.insert(name.to_owned(), content.to_owned());
        Ok(())
    }

    async fn remove_unit_file(&self, name: &str) -> Result<(), SystemdError> {
        let mut s = self.lock();
        self.record(&mut s, format!("remove {name}"));
        s.files.remove(name);
        Ok(())
    }

    async fn read_unit_file(&self, name: &str) -> Result<Option<String>, SystemdError> {
        Ok(self.lock().files.get(name).cloned())
    }

    async fn list_unit_files(&self, prefix: &str) -> Result<Vec<String>, SystemdError> {
        Ok(self.lock().files.keys().filter(|n| n.starts_with(prefix) && n.ends_with(".service")).cloned().collect())
    }

    async fn list_slice_files(&self, prefix: &str) -> Result<Vec<String>, SystemdError> {
        Ok(self.lock().files.keys().filter(|n| n.starts_with(prefix) && n.ends_with(".slice")).cloned().collect())
    }

    async fn set_unit_properties(&self, name: &str, props: &[(&'static str, u64)]) -> Result<(), SystemdError> {
        let mut s = self.lock();
        let what: Vec<String> = props.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.record(&mut s, format!("set-property {name} {}", what.join(" ")));
        if !s.files.contains_key(name) && !s.units.contains_key(name) {
            return Err(SystemdError::NoSuchUnit(name.to_owned()));
        }
        let list = s.properties.entry(name.to_owned()).or_default();
        list.extend(props.iter().map(|(k, v)| ((*k).to_owned(), *v)));
        Ok(())
    }

    async fn slice_memory(&self, slice: &str) -> Result<Option<SliceMemory>, SystemdError> {
        Ok(self.lock().slices.get(slice).copied())
    }

    async fn reset_slice_peak(&self, slice: &str) -> Result<(), SystemdError> {
        if let Some(m) = self.lock().slices.get_mut(slice) {
            m.peak = 0;
        }
        Ok(())
    }

    async fn user_id(&self, name: &str) -> Result<Option<u32>, SystemdError> {
        Ok(match name {
            "root" => Some(0),
            "daemon" => Some(1),
            "toor" => Some(0),
            "www-data" => Some(33),
            "nobody" => Some(65534),
            _ => None,
        })
    }

    async fn ensure_ids(&self, ids: &Ids) -> Result<(), SystemdError> {
        let mut s = self.lock();
        self.record(&mut s, format!("ensure-ids {ids:?}"));
        s.ids.push(ids.clone());
        Ok(())
    }

    async fn exposure(&self, _name: &str) -> Result<Exposure, SystemdError> {
        Ok(Exposure { score: 2.9, predicate: "OK".into() })
    }

    async fn reload(&self) -> Result<(), SystemdError> {
        self.connected()?;
        let mut s = self.lock();
        self.record(&mut s, "reload".into());
        Ok(())
    }

    async fn restart(&self, name: &str) -> Result<(), SystemdError> {
        self.connected()?;
        {
            let mut s = self.lock();
            self.record(&mut s, format!("restart {name}"));
            if s.units.get(name).is_some_and(|u| u.main_pid != 0) {
                self.end(&mut s, name, ExitKind::Killed, Signal::SIGTERM as i32);
            }
        }
        self.start_inner(name)
    }

    async fn start(&self, name: &str) -> Result<(), SystemdError> {
        self.connected()?;
        {
            let mut s = self.lock();
            self.record(&mut s, format!("start {name}"));
        }
        self.start_inner(name)
    }

    async fn stop(&self, name: &str) -> Result<(), SystemdError> {
        self.connected()?;
        let mut s = self.lock();
        self.record(&mut s, format!("stop {name}"));
        if !s.units.contains_key(name) {
            return if s.files.contains_key(name) { Ok(()) } else { Err(SystemdError::NoSuchUnit(name.to_owned())) };
        }
        self.end(&mut s, name, ExitKind::Killed, Signal::SIGTERM as i32);
        if let Some(u) = s.units.get_mut(name) {
            u.active_state = ActiveState::Inactive;
            u.sub_state = "dead".into();
        }
        FakeSystemd::notify(&mut s, name);
        Ok(())
    }

    async fn kill(&self, name: &str, whom: KillWhom, signal: Signal) -> Result<(), SystemdError> {
        self.connected()?;
        let mut s = self.lock();
        self.record(&mut s, format!("kill {name} {whom:?} {signal}"));
        if !s.units.contains_key(name) {
            return Err(SystemdError::NoSuchUnit(name.to_owned()));
        }
        let dies = signal == Signal::SIGKILL || (signal == Signal::SIGTERM && !s.stubborn.contains(name));
        if dies && s.units.get(name).is_some_and(|u| u.main_pid != 0) {
            self.end(&mut s, name, ExitKind::Killed, signal as i32);
        }
        Ok(())
    }

    async fn reset_failed(&self, name: &str) -> Result<(), SystemdError> {
        self.connected()?;
        let mut s = self.lock();
        self.record(&mut s, format!("reset-failed {name}"));
        if s.units.get(name).is_some_and(|u| u.active_state == ActiveState::Failed) {
            s.units.remove(name);
        }
        Ok(())
    }

    async fn status(&self, name: &str) -> Result<UnitStatus, SystemdError> {
        self.connected()?;
        let injected = self.lock().panic_once.remove(name);
        assert!(!injected, "injected panic reading {name}");
        let s = self.lock();
        match (s.units.get(name), s.files.contains_key(name)) {
            (Some(u), _) => Ok(u.clone()),
            (None, true) => {
                Ok(UnitStatus { load_state: "loaded".into(), sub_state: "dead".into(), ..UnitStatus::default() })
            }
            (None, false) => Err(SystemdError::NoSuchUnit(name.to_owned())),
        }
    }

    async fn disable_and_mask(&self, names: &[String]) -> Result<(), SystemdError> {
        let mut s = self.lock();
        self.record(&mut s, format!("disable_and_mask {}", names.join(" ")));
        for n in names {
            s.units.entry(n.clone()).or_default().load_state = "masked".into();
        }
        Ok(())
    }

    async fn watch(&self, prefix: &str) -> Result<mpsc::UnboundedReceiver<UnitEvent>, SystemdError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().watchers.push((prefix.to_owned(), tx));
        Ok(rx)
    }
}

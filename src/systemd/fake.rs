//! An in-memory [`Systemd`] for unit tests: unit files in a map, units that "run" until the test
//! makes them exit, and the same change notifications the real one sends.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{ActiveState, ExitKind, KillWhom, Systemd, SystemdError, UnitDelta, UnitEvent, UnitStatus};

#[derive(Default)]
struct State {
    files: BTreeMap<String, String>,
    units: BTreeMap<String, UnitStatus>,
    watchers: Vec<(String, mpsc::UnboundedSender<UnitEvent>)>,
    calls: Vec<String>,
    invocations: u64,
}

/// A fake systemd. Started units stay `active/running` until [`FakeSystemd::exit`].
#[derive(Default)]
pub struct FakeSystemd {
    state: Mutex<State>,
}

fn now_usec() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl FakeSystemd {
    /// An empty fake.
    pub fn new() -> FakeSystemd {
        FakeSystemd::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(state: &mut State, name: &str) {
        let Some(u) = state.units.get(name) else { return };
        let d = UnitDelta {
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
        };
        state.watchers.retain(|(prefix, tx)| {
            !name.starts_with(prefix.as_str())
                || tx.send(UnitEvent::Changed(name.to_owned(), Box::new(d.clone()))).is_ok()
        });
    }

    /// Makes a running unit's main process exit with `code` (like a `RemainAfterExit=yes`
    /// service: success leaves it active/exited, failure makes it failed).
    pub fn exit(&self, name: &str, code: i32) {
        let mut s = self.lock();
        if let Some(u) = s.units.get_mut(name) {
            u.exit_kind = ExitKind::Exited;
            u.exit_status = code;
            u.exited_usec = now_usec();
            u.main_pid = 0;
            if code == 0 {
                u.active_state = ActiveState::Active;
                u.sub_state = "exited".into();
                u.result = "success".into();
            } else {
                u.active_state = ActiveState::Failed;
                u.sub_state = "failed".into();
                u.result = "exit-code".into();
            }
        }
        FakeSystemd::notify(&mut s, name);
    }

    fn start_inner(&self, name: &str) -> Result<(), SystemdError> {
        let mut s = self.lock();
        if !s.files.contains_key(name) {
            return Err(SystemdError::NoSuchUnit(name.to_owned()));
        }
        s.invocations += 1;
        let invocation = format!("{:032x}", s.invocations);
        let u = s.units.entry(name.to_owned()).or_default();
        if u.active_state != ActiveState::Active || u.sub_state != "running" {
            *u = UnitStatus {
                load_state: "loaded".into(),
                active_state: ActiveState::Active,
                sub_state: "running".into(),
                result: "success".into(),
                started_usec: now_usec(),
                main_pid: 4242,
                invocation_id: invocation,
                ..UnitStatus::default()
            };
        }
        FakeSystemd::notify(&mut s, name);
        Ok(())
    }

    /// Unit files currently written.
    pub fn files(&self) -> BTreeMap<String, String> {
        self.lock().files.clone()
    }

    /// Every call made so far, e.g. `start vks.a.b.c.service`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }
}

#[async_trait]
impl Systemd for FakeSystemd {
    async fn version(&self) -> Result<String, SystemdError> {
        Ok("252-fake".into())
    }

    async fn write_unit(&self, name: &str, content: &str) -> Result<(), SystemdError> {
        let mut s = self.lock();
        s.calls.push(format!("write {name}"));
        s.files.insert(name.to_owned(), content.to_owned());
        Ok(())
    }

    async fn remove_unit_file(&self, name: &str) -> Result<(), SystemdError> {
        let mut s = self.lock();
        s.calls.push(format!("remove {name}"));
        s.files.remove(name);
        Ok(())
    }

    async fn read_unit_file(&self, name: &str) -> Result<Option<String>, SystemdError> {
        Ok(self.lock().files.get(name).cloned())
    }

    async fn list_unit_files(&self, prefix: &str) -> Result<Vec<String>, SystemdError> {
        Ok(self.lock().files.keys().filter(|n| n.starts_with(prefix)).cloned().collect())
    }

    async fn reload(&self) -> Result<(), SystemdError> {
        self.lock().calls.push("reload".into());
        Ok(())
    }

    async fn restart(&self, name: &str) -> Result<(), SystemdError> {
        {
            let mut s = self.lock();
            s.calls.push(format!("restart {name}"));
            if let Some(u) = s.units.get_mut(name) {
                u.sub_state = "dead".into();
            }
        }
        self.start_inner(name)
    }

    async fn start(&self, name: &str) -> Result<(), SystemdError> {
        self.lock().calls.push(format!("start {name}"));
        self.start_inner(name)
    }

    async fn stop(&self, name: &str) -> Result<(), SystemdError> {
        let mut s = self.lock();
        s.calls.push(format!("stop {name}"));
        let Some(u) = s.units.get_mut(name) else {
            return if s.files.contains_key(name) { Ok(()) } else { Err(SystemdError::NoSuchUnit(name.to_owned())) };
        };
        if u.sub_state == "running" {
            u.exit_kind = ExitKind::Killed;
            u.exit_status = 15;
            u.exited_usec = now_usec();
        }
        u.active_state = ActiveState::Inactive;
        u.sub_state = "dead".into();
        u.main_pid = 0;
        FakeSystemd::notify(&mut s, name);
        Ok(())
    }

    async fn kill(&self, name: &str, whom: KillWhom, signal: i32) -> Result<(), SystemdError> {
        let mut s = self.lock();
        s.calls.push(format!("kill {name} {whom:?} {signal}"));
        if !s.units.contains_key(name) {
            return Err(SystemdError::NoSuchUnit(name.to_owned()));
        }
        Ok(())
    }

    async fn reset_failed(&self, name: &str) -> Result<(), SystemdError> {
        let mut s = self.lock();
        s.calls.push(format!("reset-failed {name}"));
        if s.units.get(name).is_some_and(|u| u.active_state == ActiveState::Failed) {
            s.units.remove(name);
        }
        Ok(())
    }

    async fn status(&self, name: &str) -> Result<UnitStatus, SystemdError> {
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
        s.calls.push(format!("disable_and_mask {}", names.join(" ")));
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

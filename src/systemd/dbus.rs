//! [`Systemd`] over D-Bus (zbus + zbus_systemd): the only module that speaks D-Bus.
//!
//! Unit files are plain files in the unit directory (by default `/run/systemd/system`, which
//! systemd reads without a `daemon-reload` for units it has not loaded yet). Unit state comes
//! from `org.freedesktop.DBus.Properties.GetAll` on the unit's object path, and changes arrive as
//! `PropertiesChanged` signals, which systemd only sends after `Subscribe()`.
//!
//! The connection is not forever: `systemctl restart dbus` or a systemd re-exec drops it.
//! [`DbusSystemd::keep_connected`] is the one loop that owns it: it forwards signals to the
//! watchers, pings systemd every few seconds (the heartbeat the watchdog sees), and when the
//! connection is lost reconnects with back-off, subscribes again and sends every watcher
//! [`UnitEvent::Resync`]. Meanwhile calls fail fast with [`SystemdError::Disconnected`] and
//! their callers retry. Every call has a deadline ([`CALL_TIMEOUT`]).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zbus::fdo::PropertiesProxy;
use zbus::message::Type as MessageType;
use zbus::names::InterfaceName;
use zbus::proxy::CacheProperties;
use zbus::{Connection, MatchRule, MessageStream, OwnedVariant};
use zbus_systemd::systemd1::ManagerProxy;

use super::{
    ActiveState, ExitKind, Exposure, Ids, KillWhom, Signal, SliceMemory, Systemd, SystemdError, UnitDelta, UnitEvent,
    UnitStatus, local, unit_name_from_path, unit_path,
};
use crate::notify::Heartbeat;

/// Deadline of one D-Bus method call (sd-bus's default).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(25);
/// How often the connection is checked (and the heartbeat given) while nothing else happens.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait between two reconnection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Signals queued per match rule before zbus drops the oldest; a burst of 500 pods starting
/// makes a few thousand property changes. Lost signals are covered by the periodic resync.
const SIGNAL_QUEUE: usize = 16_384;

#[derive(Clone)]
struct Bus {
    conn: Connection,
    manager: ManagerProxy<'static>,
}

/// systemd reached over the system bus (or a given D-Bus address).
pub struct DbusSystemd {
    address: Option<String>,
    unit_dir: PathBuf,
    bus: RwLock<Option<Bus>>,
    watchers: Mutex<Vec<(String, mpsc::UnboundedSender<UnitEvent>)>>,
    /// One `systemd-analyze security` at a time: it reads every unit over D-Bus.
    analyze: tokio::sync::Semaphore,
}

fn bus(call: impl Into<String>) -> impl FnOnce(zbus::Error) -> SystemdError {
    let call = call.into();
    move |source| SystemdError::Bus { call, source }
}

async fn open(address: Option<&str>) -> Result<Bus, SystemdError> {
    let (builder, what) = match address {
        Some(a) => (zbus::connection::Builder::address(a), format!("connect({a})")),
        None => (zbus::connection::Builder::system(), "connect(system bus)".to_owned()),
    };
    let conn = builder.method_timeout(CALL_TIMEOUT).build().await.map_err(bus(what))?;
    let manager = ManagerProxy::builder(&conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(bus("Manager proxy"))?;
    manager.subscribe().await.map_err(bus("Subscribe"))?;
    Ok(Bus { conn, manager })
}

impl DbusSystemd {
    /// Connects to the system bus (or `address`, a D-Bus address such as
    /// `unix:path=/run/dbus/system_bus_socket`) and subscribes to systemd's signals. Signals
    /// reach watchers once [`DbusSystemd::keep_connected`] runs.
    pub async fn connect(address: Option<&str>, unit_dir: &Path) -> Result<DbusSystemd, SystemdError> {
        let b = open(address).await?;
        Ok(DbusSystemd {
            address: address.map(str::to_owned),
            unit_dir: unit_dir.to_owned(),
            bus: RwLock::new(Some(b)),
            watchers: Mutex::new(Vec::new()),
            analyze: tokio::sync::Semaphore::new(1),
        })
    }

    fn current(&self) -> Result<Bus, SystemdError> {
        self.bus.read().unwrap_or_else(|e| e.into_inner()).clone().ok_or(SystemdError::Disconnected)
    }

    fn manager(&self) -> Result<ManagerProxy<'static>, SystemdError> {
        Ok(self.current()?.manager)
    }

    fn broadcast(&self, make: impl Fn() -> Option<UnitEvent>, name: Option<&str>) {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner()).retain(|(prefix, tx)| {
            if name.is_some_and(|n| !n.starts_with(prefix.as_str())) {
                return !tx.is_closed();
            }
            make().is_none_or(|ev| tx.send(ev).is_ok())
        });
    }

    /// Owns the connection until `cancel` fires: forwards signals, beats `heartbeat` after every
    /// successful ping, and reconnects (then resyncs every watcher) when the connection is lost.
    /// Returns only on cancellation.
    pub async fn keep_connected(&self, heartbeat: Heartbeat, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut retry = crate::api::Backoff::new(RECONNECT_MAX);
        loop {
            let b = match self.current() {
                Ok(b) => b,
                Err(_) => match open(self.address.as_deref()).await {
                    Ok(b) => {
                        log::info!("reconnected to systemd over D-Bus; re-reading every unit");
                        *self.bus.write().unwrap_or_else(|e| e.into_inner()) = Some(b.clone());
                        self.broadcast(|| Some(UnitEvent::Resync), None);
                        retry.reset();
                        b
                    }
                    Err(e) => {
                        log::debug!("reconnecting to systemd: {e}");
                        tokio::select! {
                            () = cancel.cancelled() => return Ok(()),
                            () = tokio::time::sleep(retry.next_delay()) => continue,
                        }
                    }
                },
            };
            if self.forward(&b, &heartbeat, &cancel).await {
                return Ok(());
            }
            log::warn!("lost the D-Bus connection to systemd; reconnecting");
            *self.bus.write().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Forwards signals of `b` until the connection is lost (false) or `cancel` fires (true).
    async fn forward(&self, b: &Bus, heartbeat: &Heartbeat, cancel: &CancellationToken) -> bool {
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender("org.freedesktop.systemd1")
            .interface("org.freedesktop.DBus.Properties")
            .member("PropertiesChanged")
            .path_namespace("/org/freedesktop/systemd1/unit")
            .build();
        let stream = match rule {
            Ok(rule) => MessageStream::for_match_rule(rule, &b.conn, NonZeroUsize::new(SIGNAL_QUEUE)).await,
            Err(e) => Err(e),
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                log::warn!("subscribing to systemd's PropertiesChanged signals: {e}");
                return false;
            }
        };
        // Signals sent before the match rule existed are lost: re-read what might have changed.
        self.broadcast(|| Some(UnitEvent::Resync), None);
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return true,
                msg = stream.next() => match msg {
                    None => return false,
                    Some(Err(e)) => {
                        log::debug!("D-Bus signal stream: {e}");
                        self.broadcast(|| Some(UnitEvent::Resync), None);
                    }
                    Some(Ok(msg)) => {
                        let header = msg.header();
                        let Some(name) = header.path().and_then(|p| unit_name_from_path(p.as_str())) else { continue };
                        let Some(d) = delta(&msg) else { continue };
                        observe_lag(&d);
                        self.broadcast(|| Some(UnitEvent::Changed(name.clone(), Box::new(d.clone()))), Some(&name));
                    }
                },
                _ = ping.tick() => {
                    if b.conn.is_closed() {
                        return false;
                    }
                    match b.manager.version().await {
                        Ok(_) => heartbeat.beat(),
                        Err(e) => {
                            log::warn!("systemd does not answer on D-Bus: {e}");
                            if b.conn.is_closed() {
                                return false;
                            }
                        }
                    }
                }
            }
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.unit_dir.join(name)
    }

    /// Where `SetUnitProperties(runtime=true)` keeps a unit's changes: the `system.control`
    /// directory next to the unit directory (/run/systemd/system.control/NAME.d).
    fn control_dropins(&self, name: &str) -> PathBuf {
        self.unit_dir.with_file_name("system.control").join(format!("{name}.d"))
    }

    /// Forgets live changes of a unit whose file is written or removed: the file decides again.
    async fn clear_control_dropins(&self, name: &str) -> Result<(), SystemdError> {
        let dir = self.control_dropins(name);
        match tokio::fs::remove_dir_all(&dir).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(SystemdError::Io { action: "removing", path: dir.display().to_string(), source: e })
            }
            _ => Ok(()),
        }
    }

    async fn list_files(&self, prefix: &str, suffix: &str) -> Result<Vec<String>, SystemdError> {
        let io = |source| SystemdError::Io { action: "listing", path: self.unit_dir.display().to_string(), source };
        let mut dir = match tokio::fs::read_dir(&self.unit_dir).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(e)),
        };
        let mut out = Vec::new();
        while let Some(entry) = dir.next_entry().await.map_err(io)? {
            if let Some(name) = entry.file_name().to_str()
                && name.starts_with(prefix)
                && name.ends_with(suffix)
            {
                out.push(name.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// The `ControlGroup` of a loaded slice (empty when it has none).
    async fn slice_cgroup(&self, slice: &str) -> Result<String, SystemdError> {
        match self.get_all(slice, "org.freedesktop.systemd1.Slice").await {
            Ok(mut props) => Ok(prop(&mut props, "ControlGroup").unwrap_or_default()),
            Err(SystemdError::Bus { .. }) => Ok(String::new()),
            Err(e) => Err(e),
        }
    }

    async fn get_all(
        &self,
        name: &str,
        interface: &'static str,
    ) -> Result<HashMap<String, OwnedVariant>, SystemdError> {
        let conn = self.current()?.conn;
        let props = PropertiesProxy::builder(&conn)
            .destination("org.freedesktop.systemd1")
            .path(unit_path(name))
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(bus(format!("Properties proxy({name})")))?;
        let iface = InterfaceName::from_static_str_unchecked(interface);
        props
            .get_all(iface)
            .await
            .map_err(|e| SystemdError::Bus { call: format!("GetAll({name}, {interface})"), source: e.into() })
    }
}

fn prop<T: TryFrom<OwnedVariant>>(map: &mut HashMap<String, OwnedVariant>, key: &str) -> Option<T> {
    map.remove(key).and_then(|v| T::try_from(v).ok())
}

/// Decodes the body of a `PropertiesChanged` signal of a unit.
fn delta(msg: &zbus::Message) -> Option<UnitDelta> {
    let (iface, mut changed, invalidated): (String, HashMap<String, OwnedVariant>, Vec<String>) =
        msg.body().deserialize().ok()?;
    const WATCHED: &[&str] = &[
        "ActiveState",
        "SubState",
        "InvocationID",
        "Result",
        "ExecMainCode",
        "ExecMainStatus",
        "ExecMainStartTimestamp",
        "ExecMainExitTimestamp",
        "MainPID",
    ];
    let mut d =
        UnitDelta { incomplete: invalidated.iter().any(|p| WATCHED.contains(&p.as_str())), ..UnitDelta::default() };
    match iface.as_str() {
        "org.freedesktop.systemd1.Unit" => {
            d.active_state = prop::<String>(&mut changed, "ActiveState").map(|s| ActiveState::parse(&s));
            d.sub_state = prop(&mut changed, "SubState");
            d.invocation_id = prop::<Vec<u8>>(&mut changed, "InvocationID").map(hex::encode);
        }
        "org.freedesktop.systemd1.Service" => {
            d.result = prop(&mut changed, "Result");
            d.exit_kind = prop(&mut changed, "ExecMainCode").map(ExitKind::from_code);
            d.exit_status = prop(&mut changed, "ExecMainStatus");
            d.started_usec = prop(&mut changed, "ExecMainStartTimestamp");
            d.exited_usec = prop(&mut changed, "ExecMainExitTimestamp");
            d.main_pid = prop(&mut changed, "MainPID");
        }
        _ => return None,
    }
    Some(d)
}

/// Records how long after a run started or ended its signal reached vks.
fn observe_lag(d: &UnitDelta) {
    let at = match (d.exited_usec, d.started_usec, d.main_pid) {
        (Some(t), _, _) if t > 0 && d.main_pid == Some(0) => t,
        (_, Some(t), Some(pid)) if t > 0 && pid != 0 => t,
        _ => return,
    };
    let now = crate::clock::Clock::system().usec();
    if now >= at {
        crate::metrics::metrics().dbus_signal_lag.observe((now - at) as f64 / 1e6);
    }
}

fn is_no_such_unit(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _) if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit")
}

/// Maps a failed call on a unit: a unit systemd does not know is [`SystemdError::NoSuchUnit`].
fn unit_call(call: &str, name: &str) -> impl FnOnce(zbus::Error) -> SystemdError {
    let (call, name) = (call.to_owned(), name.to_owned());
    move |e| {
        if is_no_such_unit(&e) { SystemdError::NoSuchUnit(name) } else { bus(format!("{call}({name})"))(e) }
    }
}

#[async_trait]
impl Systemd for DbusSystemd {
    async fn version(&self) -> Result<String, SystemdError> {
        self.manager()?.version().await.map_err(bus("Get(Version)"))
    }

    async fn write_unit(&self, name: &str, content: &str) -> Result<(), SystemdError> {
        let path = self.file(name);
        crate::fsutil::write_atomic_async(path.clone(), content.as_bytes().to_vec(), 0o644)
            .await
            .map_err(|source| SystemdError::Io { action: "writing", path: path.display().to_string(), source })?;
        self.clear_control_dropins(name).await
    }

    async fn remove_unit_file(&self, name: &str) -> Result<(), SystemdError> {
        self.clear_control_dropins(name).await?;
        let path = self.file(name);
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(SystemdError::Io { action: "removing", path: path.display().to_string(), source: e })
            }
            _ => Ok(()),
        }
    }

    async fn read_unit_file(&self, name: &str) -> Result<Option<String>, SystemdError> {
        let path = self.file(name);
        match tokio::fs::read_to_string(&path).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SystemdError::Io { action: "reading", path: path.display().to_string(), source: e }),
        }
    }

    async fn list_unit_files(&self, prefix: &str) -> Result<Vec<String>, SystemdError> {
        self.list_files(prefix, ".service").await
    }

    async fn list_slice_files(&self, prefix: &str) -> Result<Vec<String>, SystemdError> {
        self.list_files(prefix, ".slice").await
    }

    async fn set_unit_properties(&self, name: &str, props: &[(&'static str, u64)]) -> Result<(), SystemdError> {
        let list: Vec<(String, OwnedVariant)> =
            props.iter().map(|(k, v)| ((*k).to_owned(), OwnedVariant::from(*v))).collect();
        let what: Vec<String> = props.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.manager()?
            .set_unit_properties(name.to_owned(), true, list)
            .await
            .map_err(unit_call(&format!("SetUnitProperties[{}]", what.join(" ")), name))
    }

    async fn slice_memory(&self, slice: &str) -> Result<Option<SliceMemory>, SystemdError> {
        let cg = self.slice_cgroup(slice).await?;
        tokio::task::spawn_blocking(move || local::slice_memory(&cg)).await.unwrap_or(Ok(None))
    }

    async fn reset_slice_peak(&self, slice: &str) -> Result<(), SystemdError> {
        let cg = self.slice_cgroup(slice).await?;
        tokio::task::spawn_blocking(move || local::reset_peak(&cg)).await.unwrap_or(Ok(()))
    }

    async fn user_id(&self, name: &str) -> Result<Option<u32>, SystemdError> {
        let name = name.to_owned();
        Ok(tokio::task::spawn_blocking(move || local::user_id(&name)).await.unwrap_or(None))
    }

    async fn ensure_ids(&self, ids: &Ids) -> Result<(), SystemdError> {
        let ids = ids.clone();
        tokio::task::spawn_blocking(move || local::ensure_ids(&ids)).await.unwrap_or(Ok(()))
    }

    async fn exposure(&self, name: &str) -> Result<Exposure, SystemdError> {
        let _one = self.analyze.acquire().await;
        local::exposure(name).await
    }

    async fn reload(&self) -> Result<(), SystemdError> {
        self.manager()?.reload().await.map_err(bus("Reload"))
    }

    async fn start(&self, name: &str) -> Result<(), SystemdError> {
        self.manager()?
            .start_unit(name.to_owned(), "replace".to_owned())
            .await
            .map(drop)
            .map_err(unit_call("StartUnit", name))
    }

    async fn restart(&self, name: &str) -> Result<(), SystemdError> {
        self.manager()?
            .restart_unit(name.to_owned(), "replace".to_owned())
            .await
            .map(drop)
            .map_err(unit_call("RestartUnit", name))
    }

    async fn stop(&self, name: &str) -> Result<(), SystemdError> {
        self.manager()?
            .stop_unit(name.to_owned(), "replace".to_owned())
            .await
            .map(drop)
            .map_err(unit_call("StopUnit", name))
    }

    async fn kill(&self, name: &str, whom: KillWhom, signal: Signal) -> Result<(), SystemdError> {
        let whom = match whom {
            KillWhom::Main => "main",
            KillWhom::All => "all",
        };
        self.manager()?
            .kill_unit(name.to_owned(), whom.to_owned(), signal as i32)
            .await
            .map_err(unit_call(&format!("KillUnit[{whom}, {signal}]"), name))
    }

    async fn reset_failed(&self, name: &str) -> Result<(), SystemdError> {
        self.manager()?.reset_failed_unit(name.to_owned()).await.map_err(unit_call("ResetFailedUnit", name))
    }

    async fn disable_and_mask(&self, names: &[String]) -> Result<(), SystemdError> {
        let list = names.join(", ");
        let manager = self.manager()?;
        manager.disable_unit_files(names.to_vec(), false).await.map_err(bus(format!("DisableUnitFiles({list})")))?;
        manager.mask_unit_files(names.to_vec(), false, true).await.map_err(bus(format!("MaskUnitFiles({list})")))?;
        manager.reload().await.map_err(bus("Reload"))
    }

    async fn status(&self, name: &str) -> Result<UnitStatus, SystemdError> {
        let mut unit = self.get_all(name, "org.freedesktop.systemd1.Unit").await?;
        let load_state: String = prop(&mut unit, "LoadState").unwrap_or_default();
        if load_state == "not-found" && !tokio::fs::try_exists(self.file(name)).await.unwrap_or(false) {
            return Err(SystemdError::NoSuchUnit(name.to_owned()));
        }
        let mut status = UnitStatus {
            load_state,
            active_state: super::ActiveState::parse(&prop::<String>(&mut unit, "ActiveState").unwrap_or_default()),
            sub_state: prop(&mut unit, "SubState").unwrap_or_default(),
            invocation_id: hex::encode(prop::<Vec<u8>>(&mut unit, "InvocationID").unwrap_or_default()),
            need_daemon_reload: prop(&mut unit, "NeedDaemonReload").unwrap_or(false),
            ..UnitStatus::default()
        };
        if status.load_state == "loaded" {
            let mut svc = self.get_all(name, "org.freedesktop.systemd1.Service").await?;
            status.result = prop(&mut svc, "Result").unwrap_or_default();
            status.exit_kind = ExitKind::from_code(prop(&mut svc, "ExecMainCode").unwrap_or(0));
            status.exit_status = prop(&mut svc, "ExecMainStatus").unwrap_or(0);
            status.started_usec = prop(&mut svc, "ExecMainStartTimestamp").unwrap_or(0);
            status.exited_usec = prop(&mut svc, "ExecMainExitTimestamp").unwrap_or(0);
            status.main_pid = prop(&mut svc, "MainPID").unwrap_or(0);
        }
        Ok(status)
    }

    async fn watch(&self, prefix: &str) -> Result<mpsc::UnboundedReceiver<UnitEvent>, SystemdError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.watchers.lock().unwrap_or_else(|e| e.into_inner()).push((prefix.to_owned(), tx));
        Ok(rx)
    }
}

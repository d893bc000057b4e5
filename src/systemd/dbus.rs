//! [`Systemd`] over D-Bus (zbus + zbus_systemd): the only module that speaks D-Bus.
//!
//! Unit files are plain files in the unit directory (by default `/run/systemd/system`, which
//! systemd reads without a `daemon-reload` for units it has not loaded yet). Unit state comes
//! from `org.freedesktop.DBus.Properties.GetAll` on the unit's object path, and changes arrive as
//! `PropertiesChanged` signals, which systemd only sends after `Subscribe()`.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::mpsc;
use zbus::fdo::PropertiesProxy;
use zbus::message::Type as MessageType;
use zbus::names::InterfaceName;
use zbus::proxy::CacheProperties;
use zbus::{Connection, MatchRule, MessageStream, OwnedVariant};
use zbus_systemd::systemd1::ManagerProxy;

use super::{
    ActiveState, ExitKind, KillWhom, Systemd, SystemdError, UnitDelta, UnitEvent, UnitStatus, unit_name_from_path,
    unit_path,
};

/// Signals queued per match rule before zbus drops the oldest; a burst of 500 pods starting
/// makes a few thousand property changes. Lost signals are covered by the periodic resync.
const SIGNAL_QUEUE: usize = 16_384;

/// systemd reached over the system bus.
pub struct DbusSystemd {
    conn: Connection,
    manager: ManagerProxy<'static>,
    unit_dir: PathBuf,
}

fn bus(call: impl Into<String>) -> impl FnOnce(zbus::Error) -> SystemdError {
    let call = call.into();
    move |source| SystemdError::Bus { call, source }
}

impl DbusSystemd {
    /// Connects to the system bus (or `address`, a D-Bus address such as
    /// `unix:path=/run/dbus/system_bus_socket`) and subscribes to systemd's signals.
    pub async fn connect(address: Option<&str>, unit_dir: &Path) -> Result<DbusSystemd, SystemdError> {
        let conn = match address {
            Some(a) => zbus::connection::Builder::address(a).build().await.map_err(bus(format!("connect({a})")))?,
            None => Connection::system().await.map_err(bus("connect(system bus)"))?,
        };
        let manager = ManagerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(bus("Manager proxy"))?;
        manager.subscribe().await.map_err(bus("Subscribe"))?;
        Ok(DbusSystemd { conn, manager, unit_dir: unit_dir.to_owned() })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.unit_dir.join(name)
    }

    async fn get_all(
        &self,
        name: &str,
        interface: &'static str,
    ) -> Result<HashMap<String, OwnedVariant>, SystemdError> {
        let props = PropertiesProxy::builder(&self.conn)
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

fn is_no_such_unit(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _) if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit")
}

#[async_trait]
impl Systemd for DbusSystemd {
    async fn version(&self) -> Result<String, SystemdError> {
        self.manager.version().await.map_err(bus("Get(Version)"))
    }

    async fn write_unit(&self, name: &str, content: &str) -> Result<(), SystemdError> {
        let path = self.file(name);
        let tmp = self.unit_dir.join(format!(".{name}.tmp"));
        let io = |action, source| SystemdError::Io { action, path: path.display().to_string(), source };
        tokio::fs::write(&tmp, content).await.map_err(|e| io("writing", e))?;
        tokio::fs::rename(&tmp, &path).await.map_err(|e| io("renaming into place", e))
    }

    async fn remove_unit_file(&self, name: &str) -> Result<(), SystemdError> {
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
                && name.ends_with(".service")
            {
                out.push(name.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    async fn reload(&self) -> Result<(), SystemdError> {
        self.manager.reload().await.map_err(bus("Reload"))
    }

    async fn start(&self, name: &str) -> Result<(), SystemdError> {
        self.manager
            .start_unit(name.to_owned(), "replace".to_owned())
            .await
            .map(drop)
            .map_err(bus(format!("StartUnit({name})")))
    }

    async fn restart(&self, name: &str) -> Result<(), SystemdError> {
        self.manager
            .restart_unit(name.to_owned(), "replace".to_owned())
            .await
            .map(drop)
            .map_err(bus(format!("RestartUnit({name})")))
    }

    async fn stop(&self, name: &str) -> Result<(), SystemdError> {
        match self.manager.stop_unit(name.to_owned(), "replace".to_owned()).await {
            Ok(_) => Ok(()),
            Err(e) if is_no_such_unit(&e) => Err(SystemdError::NoSuchUnit(name.to_owned())),
            Err(e) => Err(bus(format!("StopUnit({name})"))(e)),
        }
    }

    async fn kill(&self, name: &str, whom: KillWhom, signal: i32) -> Result<(), SystemdError> {
        let whom = match whom {
            KillWhom::Main => "main",
            KillWhom::All => "all",
        };
        match self.manager.kill_unit(name.to_owned(), whom.to_owned(), signal).await {
            Ok(()) => Ok(()),
            Err(e) if is_no_such_unit(&e) => Err(SystemdError::NoSuchUnit(name.to_owned())),
            Err(e) => Err(bus(format!("KillUnit({name}, {whom}, {signal})"))(e)),
        }
    }

    async fn reset_failed(&self, name: &str) -> Result<(), SystemdError> {
        match self.manager.reset_failed_unit(name.to_owned()).await {
            Ok(()) => Ok(()),
            Err(e) if is_no_such_unit(&e) => Err(SystemdError::NoSuchUnit(name.to_owned())),
            Err(e) => Err(bus(format!("ResetFailedUnit({name})"))(e)),
        }
    }

    async fn disable_and_mask(&self, names: &[String]) -> Result<(), SystemdError> {
        let list = names.join(", ");
        self.manager
            .disable_unit_files(names.to_vec(), false)
            .await
            .map_err(bus(format!("DisableUnitFiles({list})")))?;
        self.manager
            .mask_unit_files(names.to_vec(), false, true)
            .await
            .map_err(bus(format!("MaskUnitFiles({list})")))?;
        self.manager.reload().await.map_err(bus("Reload"))
    }

    async fn status(&self, name: &str) -> Result<UnitStatus, SystemdError> {
        let mut unit = self.get_all(name, "org.freedesktop.systemd1.Unit").await?;
        let load_state: String = prop(&mut unit, "LoadState").unwrap_or_default();
        if load_state == "not-found" && !self.file(name).exists() {
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
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender("org.freedesktop.systemd1")
            .interface("org.freedesktop.DBus.Properties")
            .member("PropertiesChanged")
            .path_namespace("/org/freedesktop/systemd1/unit")
            .build()
            .map_err(bus("match rule"))?;
        let mut stream = MessageStream::for_match_rule(rule, &self.conn, NonZeroUsize::new(SIGNAL_QUEUE))
            .await
            .map_err(bus("AddMatch(PropertiesChanged)"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                let Ok(msg) = msg else {
                    if tx.send(UnitEvent::Resync).is_err() {
                        return;
                    }
                    continue;
                };
                let header = msg.header();
                let Some(name) = header.path().and_then(|p| unit_name_from_path(p.as_str())) else { continue };
                if !name.starts_with(&prefix) {
                    continue;
                }
                let Some(d) = delta(&msg) else { continue };
                if tx.send(UnitEvent::Changed(name, Box::new(d))).is_err() {
                    return;
                }
            }
            log::warn!("the D-Bus signal stream from systemd ended; unit changes are seen by resync only");
            let _ = tx.send(UnitEvent::Resync);
        });
        Ok(rx)
    }
}

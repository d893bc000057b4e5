//! What vks asks the node about units that D-Bus does not carry: a slice's memory cgroup files
//! (cgroup v1), the user database (NSS, and systemd's userdb drop-in records for numeric IDs a
//! pod runs with), and `systemd-analyze security`. Used by [`super::dbus::DbusSystemd`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Exposure, Ids, SliceMemory, SystemdError, parse_exposure};

/// Where systemd's userdb reads drop-in user and group records (runtime: gone after a reboot).
const USERDB_DIR: &str = "/run/userdb";
/// The cgroup v1 memory hierarchy; absent on a unified (v2) host.
const MEMORY_V1: &str = "/sys/fs/cgroup/memory";
/// Deadline of one `systemd-analyze security` run.
const ANALYZE_TIMEOUT: Duration = Duration::from_secs(30);

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SystemdError {
    let path = path.display().to_string();
    move |source| SystemdError::Io { action, path, source }
}

/// The memory peak and limit of the cgroup `cg` (as systemd's `ControlGroup`), on cgroup v1.
pub fn slice_memory(cg: &str) -> Result<Option<SliceMemory>, SystemdError> {
    let dir = PathBuf::from(format!("{MEMORY_V1}{cg}"));
    if cg.is_empty() || !Path::new(MEMORY_V1).join("memory.limit_in_bytes").exists() || !dir.is_dir() {
        return Ok(None);
    }
    let read = |f: &str| -> Result<u64, SystemdError> {
        let p = dir.join(f);
        let t = std::fs::read_to_string(&p).map_err(io("reading", &p))?;
        Ok(t.trim().parse().unwrap_or(0))
    };
    Ok(Some(SliceMemory { peak: read("memory.max_usage_in_bytes")?, limit: read("memory.limit_in_bytes")? }))
}

/// Resets the memory peak of the cgroup `cg` on cgroup v1.
pub fn reset_peak(cg: &str) -> Result<(), SystemdError> {
    let p = PathBuf::from(format!("{MEMORY_V1}{cg}/memory.max_usage_in_bytes"));
    if cg.is_empty() || !p.exists() {
        return Ok(());
    }
    std::fs::write(&p, "0").map_err(io("resetting", &p))
}

/// The UID of `name` in the node's user database.
pub fn user_id(name: &str) -> Option<u32> {
    nix::unistd::User::from_name(name).ok().flatten().map(|u| u.uid.as_raw())
}

/// Registers the IDs the user database lacks as `vks-<id>` records in systemd's userdb.
pub fn ensure_ids(ids: &Ids) -> Result<(), SystemdError> {
    use nix::unistd::{Gid, Group, Uid, User};
    let dir = Path::new(USERDB_DIR);
    let mut wrote = false;
    if let Some(uid) = ids.user
        && User::from_uid(Uid::from_raw(uid)).ok().flatten().is_none()
    {
        // Group 0 for a UID nobody knows, as container runtimes give one their image lacks.
        let record = format!(
            "{{\"userName\":\"vks-{uid}\",\"uid\":{uid},\"gid\":0,\"realName\":\"vks pod user {uid}\",\
             \"homeDirectory\":\"/\",\"shell\":\"/usr/sbin/nologin\"}}\n"
        );
        record_file(dir, &format!("vks-{uid}.user"), &format!("{uid}.user"), &record)?;
        wrote = true;
    }
    for gid in &ids.groups {
        if Group::from_gid(Gid::from_raw(*gid)).ok().flatten().is_none() {
            let record = format!("{{\"groupName\":\"vks-{gid}\",\"gid\":{gid}}}\n");
            record_file(dir, &format!("vks-{gid}.group"), &format!("{gid}.group"), &record)?;
            wrote = true;
        }
    }
    if wrote {
        log::info!("registered user and group IDs {ids:?} in {USERDB_DIR} (pods run with them)");
    }
    Ok(())
}

fn record_file(dir: &Path, name: &str, by_id: &str, record: &str) -> Result<(), SystemdError> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let path = dir.join(name);
    crate::fsutil::write_atomic(&path, record.as_bytes(), 0o644).map_err(io("writing", &path))?;
    let link = dir.join(by_id);
    match std::os::unix::fs::symlink(name, &link) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io("linking", &link)(e)),
        _ => Ok(()),
    }
}

/// Runs `systemd-analyze security UNIT` (with a deadline) and reads the overall exposure.
pub async fn exposure(unit: &str) -> Result<Exposure, SystemdError> {
    let mut cmd = tokio::process::Command::new("systemd-analyze");
    cmd.args(["security", "--no-pager", unit]).kill_on_drop(true);
    let out = tokio::time::timeout(ANALYZE_TIMEOUT, cmd.output())
        .await
        .map_err(|_| io("running systemd-analyze security for", Path::new(unit))(std::io::ErrorKind::TimedOut.into()))?
        .map_err(io("running systemd-analyze security for", Path::new(unit)))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_exposure(&text).ok_or_else(|| {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        io("reading systemd-analyze security output for", Path::new(unit))(std::io::Error::other(format!(
            "no overall exposure in its output ({}): {why}",
            out.status
        )))
    })
}

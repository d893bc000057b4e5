//! A pod's volumes on the node, and the files of its env values from Secrets.
//!
//! Where they live (`<uid>` is the pod's UID):
//!
//! | volume | directory |
//! |---|---|
//! | emptyDir | `<pod_dir>/<uid>/volumes/empty-dir/<name>` (disk, mode 0777) |
//! | emptyDir, medium Memory | `<run_dir>/<uid>/volumes/empty-dir/<name>`, its own tmpfs (`size=` sizeLimit) |
//! | configMap, downwardAPI | `<pod_dir>/<uid>/volumes/{configmap,downward-api}/<name>` (disk) |
//! | secret, projected (tokens) | `<run_dir>/<uid>/volumes/{secret,projected}/<name>` (tmpfs) |
//! | hostPath | the host path itself, if `[volumes] host_path_allow` allows it |
//! | env values from Secrets | `<run_dir>/<uid>/env/<container>.env`, 0600 root (systemd reads it) |
//!
//! `pod_dir` and `run_dir` are 0700 root: a container reaches its volumes only through the bind
//! mounts of its unit, other users (other pods' included) not at all. `run_dir` must be on tmpfs,
//! so Secrets and tokens never reach persistent storage. Files of configMap, secret,
//! downwardAPI and projected volumes are written with the kubelet's `..data` swap
//! ([`atomic`]); volumes are owned by root (vks) until a container that runs as another user
//! mounts them (then by that user, [`Volumes::claim`]); with `fsGroup` they belong to that group and
//! their files are group-readable, as the kubelet makes them. A pod's directories are removed
//! with it, and by the orphan sweep when its pod is gone ([`Volumes::sweep`]).

pub mod atomic;
pub mod content;
pub mod host_path;
mod mounts;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, Volume};

use self::atomic::Ownership;
use crate::clock::Clock;
use crate::images::ImageInfo;
use crate::unit::NodeContext;
use crate::unit::data::PodData;

pub use self::mounts::container_mounts;

/// Why a pod's volumes cannot be set up now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeError {
    /// Waiting for an object or a token (no event: it comes by itself).
    Pending(String),
    /// The kubelet's `FailedMount`: `MountVolume.SetUp failed for volume "x" : <why>`; retried.
    Failed {
        /// The volume.
        volume: String,
        /// Why.
        message: String,
    },
    /// The pod asks for something this node refuses (a hostPath not allowed); no retry helps.
    Refused(String),
}

impl std::fmt::Display for VolumeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VolumeError::Pending(m) | VolumeError::Refused(m) => f.write_str(m),
            VolumeError::Failed { volume, message } => {
                write!(f, "MountVolume.SetUp failed for volume {volume:?} : {message}")
            }
        }
    }
}

/// Who a container runs as, for the ownership of the volumes it mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// User.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// The pod directories of the node.
#[derive(Debug, Clone)]
pub struct Volumes {
    pod_dir: PathBuf,
    run_dir: PathBuf,
    host_path_allow: Vec<PathBuf>,
    clock: Clock,
}

/// Whether a UID can name a directory (what the API server generates, a UUID).
fn safe_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// The kind of directory a volume lives in, and whether it is on tmpfs.
fn place(v: &Volume) -> Option<(&'static str, bool)> {
    if let Some(e) = &v.empty_dir {
        return Some(("empty-dir", e.medium.as_deref() == Some("Memory")));
    }
    if v.config_map.is_some() {
        return Some(("configmap", false));
    }
    if v.downward_api.is_some() {
        return Some(("downward-api", false));
    }
    if v.secret.is_some() {
        return Some(("secret", true));
    }
    if v.projected.is_some() {
        return Some(("projected", true));
    }
    None
}

/// `securityContext.fsGroup` of the pod.
pub fn fs_group(pod: &Pod) -> Option<i64> {
    pod.spec.as_ref()?.security_context.as_ref()?.fs_group
}

fn lookup_user(v: &str) -> Option<(u32, u32)> {
    if let Ok(uid) = v.parse::<u32>() {
        let gid = nix::unistd::User::from_uid(uid.into()).ok().flatten().map_or(uid, |u| u.gid.as_raw());
        return Some((uid, gid));
    }
    nix::unistd::User::from_name(v).ok().flatten().map(|u| (u.uid.as_raw(), u.gid.as_raw()))
}

fn lookup_group(v: &str) -> Option<u32> {
    v.parse::<u32>().ok().or_else(|| nix::unistd::Group::from_name(v).ok().flatten().map(|g| g.gid.as_raw()))
}

/// Who container `c` runs as: `securityContext.runAsUser`/`runAsGroup` (the container's, else
/// the pod's), else the `User=`/`Group=` its unit takes from the package (when it keeps the
/// image's command). `None` for root, a `DynamicUser=` (allocated by systemd at start) or a user
/// that does not exist.
pub fn run_as(pod: &Pod, c: &Container, image: &ImageInfo) -> Option<RunAs> {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let csc = c.security_context.as_ref();
    let sc_uid = csc.and_then(|s| s.run_as_user).or_else(|| psc.and_then(|s| s.run_as_user));
    let sc_gid = csc.and_then(|s| s.run_as_group).or_else(|| psc.and_then(|s| s.run_as_group));
    let (uid, gid) = if let Some(uid) = sc_uid {
        let uid = u32::try_from(uid).ok()?;
        let gid = sc_gid.and_then(|g| u32::try_from(g).ok()).or_else(|| lookup_user(&uid.to_string()).map(|u| u.1));
        (uid, gid.unwrap_or(0))
    } else {
        let keeps_image = c.command.as_ref().is_none_or(|v| v.is_empty());
        let base: &[(String, String)] = if keeps_image { &image.service } else { &[] };
        let last = |k: &str| base.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.trim().to_owned());
        if last("DynamicUser").is_some_and(|v| matches!(v.as_str(), "yes" | "true" | "1" | "on")) {
            return None;
        }
        let (uid, gid) = lookup_user(&last("User")?)?;
        (uid, last("Group").and_then(|g| lookup_group(&g)).unwrap_or(gid))
    };
    (uid != 0).then_some(RunAs { uid, gid })
}

impl Volumes {
    /// Pod directories under `pod_dir` (disk) and `run_dir` (tmpfs); hostPath volumes below
    /// `host_path_allow`.
    pub fn new(pod_dir: PathBuf, run_dir: PathBuf, host_path_allow: Vec<PathBuf>, clock: Clock) -> Volumes {
        Volumes { pod_dir, run_dir, host_path_allow, clock }
    }

    /// Creates both base directories (mode 0700) and checks that `run_dir` is on tmpfs.
    pub fn prepare_node(&self) -> Result<(), String> {
        for d in [&self.pod_dir, &self.run_dir] {
            std::fs::create_dir_all(d)
                .and_then(|()| std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)))
                .map_err(io(format!("preparing {}", d.display())))?;
        }
        let fs =
            nix::sys::statfs::statfs(&self.run_dir).map_err(|e| format!("statfs {}: {e}", self.run_dir.display()))?;
        if fs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
            return Err(format!(
                "paths.run_dir {} is not on tmpfs: Secrets and tokens would reach persistent storage",
                self.run_dir.display()
            ));
        }
        Ok(())
    }

    fn dirs(&self, uid: &str) -> Result<[PathBuf; 2], String> {
        if !safe_uid(uid) {
            return Err(format!("pod UID {uid:?} cannot name a directory"));
        }
        Ok([self.pod_dir.join(uid), self.run_dir.join(uid)])
    }

    /// The directory of volume `v` of pod `uid` (`None` for hostPath and unsupported types).
    pub fn volume_dir(&self, uid: &str, v: &Volume) -> Option<PathBuf> {
        let (kind, tmpfs) = place(v)?;
        let [disk, run] = self.dirs(uid).ok()?;
        if v.name.is_empty() || v.name.contains('/') || v.name.starts_with('.') {
            return None;
        }
        Some(if tmpfs { run } else { disk }.join("volumes").join(kind).join(&v.name))
    }

    /// The environment file of container `container` of pod `uid`.
    pub fn env_file(&self, uid: &str, container: &str) -> Option<String> {
        let [_, run] = self.dirs(uid).ok()?;
        if container.is_empty() || !container.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return None;
        }
        run.join("env").join(format!("{container}.env")).to_str().map(str::to_owned)
    }

    /// Writes the env values from Secrets of one container (root only, on tmpfs).
    pub async fn write_env_file(&self, path: &str, vars: &[(String, String)]) -> Result<(), String> {
        let mut text = String::new();
        for (k, v) in vars {
            let line = crate::unit::escape::env_file_line(k, v).map_err(|e| format!("env {k} {e}"))?;
            text.push_str(&line);
        }
        let path = PathBuf::from(path);
        if !path.starts_with(&self.run_dir) {
            return Err(format!("{} is not below {}", path.display(), self.run_dir.display()));
        }
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let p = path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            crate::fsutil::write_atomic(&p, text.as_bytes(), 0o600)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(io(format!("writing {}", path.display())))
    }

    /// Sets up every volume of `pod` (the kubelet mounts them all before any container starts)
    /// and brings the files of configMap, secret, downwardAPI and projected volumes up to date.
    /// Returns whether a file changed. The first problem is returned after every volume was
    /// tried.
    pub async fn setup(&self, pod: &Pod, node: &NodeContext, data: &PodData) -> Result<bool, VolumeError> {
        if pod.spec.as_ref().is_none_or(|s| s.volumes.as_ref().is_none_or(Vec::is_empty)) {
            return Ok(false);
        }
        let (me, pod, node, data) = (self.clone(), pod.clone(), node.clone(), data.clone());
        tokio::task::spawn_blocking(move || me.setup_blocking(&pod, &node, &data))
            .await
            .unwrap_or_else(|e| Err(VolumeError::Pending(format!("volume task failed: {e}"))))
    }

    fn setup_blocking(&self, pod: &Pod, node: &NodeContext, data: &PodData) -> Result<bool, VolumeError> {
        let uid = pod.metadata.uid.as_deref().unwrap_or("");
        self.dirs(uid).map_err(VolumeError::Refused)?;
        let fs_group = fs_group(pod);
        let ctx = content::Ctx { pod, node, data, fs_group };
        let mut changed = false;
        let mut first: Option<VolumeError> = None;
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            match self.setup_one(uid, v, &ctx) {
                Ok(c) => changed |= c,
                Err(e) => {
                    if first.is_none() {
                        first = Some(e);
                    }
                }
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }

    fn setup_one(&self, uid: &str, v: &Volume, ctx: &content::Ctx) -> Result<bool, VolumeError> {
        let failed = |message: String| VolumeError::Failed { volume: v.name.clone(), message };
        if let Some(h) = &v.host_path {
            return match host_path::prepare(&h.path, h.type_.as_deref(), &self.host_path_allow) {
                Ok(_) => Ok(false),
                Err(host_path::HostPathError::NotAllowed(m)) => {
                    Err(VolumeError::Refused(format!("volume {}: {m}", v.name)))
                }
                Err(host_path::HostPathError::Check(m)) => Err(failed(m)),
            };
        }
        let Some(dir) = self.volume_dir(uid, v) else {
            return Err(VolumeError::Refused(format!("volume {}: this volume type is not supported by vks", v.name)));
        };
        let gid = ctx.fs_group.and_then(|g| u32::try_from(g).ok());
        if let Some(e) = &v.empty_dir {
            let mode = e.mode.map_or(0o777, |m| (m as u32) & 0o777) | if gid.is_some() { 0o2000 } else { 0 };
            let memory = e.medium.as_deref() == Some("Memory");
            let size = e.size_limit.as_ref().map(|q| q.0.clone());
            return empty_dir(&dir, mode, gid, memory.then_some(size)).map(|()| false).map_err(failed);
        }
        let payload = match content::payload(ctx, v) {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(false),
            Err(content::ContentError::Pending(m)) => return Err(VolumeError::Pending(m)),
            Err(content::ContentError::Failed(m)) => return Err(failed(m)),
        };
        // The owner stays whoever has the volume (root until a container claims it).
        let own = match std::fs::metadata(&dir) {
            Ok(md) => Ownership { uid: md.uid(), gid: md.gid(), dir_mode: md.mode() & 0o7777 },
            Err(_) => Ownership {
                uid: nix::unistd::geteuid().as_raw(),
                gid: gid.unwrap_or_else(|| nix::unistd::getegid().as_raw()),
                dir_mode: if gid.is_some() { 0o2755 } else { 0o755 },
            },
        };
        let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        std::fs::create_dir_all(&parent).map_err(|e| failed(format!("creating {}: {e}", parent.display())))?;
        atomic::write(&dir, &payload, own, self.clock.wall())
            .map_err(|e| failed(format!("writing {}: {e}", dir.display())))
    }

    /// Gives the volumes container `c` mounts to the user it runs as, unless another user has
    /// them already (root-owned volumes are claimed; hostPath volumes are never touched).
    pub async fn claim(&self, pod: &Pod, c: &Container, run_as: Option<RunAs>) -> Result<(), String> {
        let Some(who) = run_as else { return Ok(()) };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let gid = fs_group(pod).and_then(|g| u32::try_from(g).ok()).unwrap_or(who.gid);
        let mut dirs: Vec<(PathBuf, bool)> = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let v = pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()).find(|v| v.name == m.name);
            if let Some(v) = v
                && let Some(dir) = self.volume_dir(&uid, v)
            {
                dirs.push((dir, v.empty_dir.is_none()));
            }
        }
        if dirs.is_empty() {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            for (dir, tree) in dirs {
                let md = std::fs::metadata(&dir).map_err(io(format!("volume {}", dir.display())))?;
                // Claimed already (by this or another container's user).
                if md.uid() != nix::unistd::geteuid().as_raw() {
                    continue;
                }
                let r = if tree {
                    atomic::chown_tree(&dir, who.uid, gid)
                } else {
                    std::os::unix::fs::lchown(&dir, Some(who.uid), Some(gid))
                };
                r.map_err(io(format!("giving {} to uid {}", dir.display(), who.uid)))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Removes the directories of pod `uid` (tmpfs mounts in them are unmounted first).
    pub async fn remove_pod(&self, uid: &str) -> Result<(), String> {
        let dirs = self.dirs(uid)?;
        if !dirs.iter().any(|d| d.exists()) {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || {
            for d in dirs {
                remove_dir(&d)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Removes the directories of pods not in `keep` (pods gone while vks was not running, or
    /// whose removal was interrupted). Returns the UIDs removed.
    pub async fn sweep(&self, keep: HashSet<String>) -> Vec<String> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut removed = Vec::new();
            for base in [&me.pod_dir, &me.run_dir] {
                let Ok(entries) = std::fs::read_dir(base) else { continue };
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if keep.contains(&name) || !safe_uid(&name) {
                        continue;
                    }
                    match remove_dir(&e.path()) {
                        Ok(()) => removed.push(name),
                        Err(err) => log::warn!("removing the directory of gone pod {name}: {err}"),
                    }
                }
            }
            removed.sort();
            removed.dedup();
            removed
        })
        .await
        .unwrap_or_default()
    }
}

/// An emptyDir: a directory (or, for medium Memory, a tmpfs of its own) with `mode`.
fn empty_dir(dir: &Path, mode: u32, gid: Option<u32>, memory: Option<Option<String>>) -> Result<(), String> {
    if let Some(size) = memory {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        if is_mount_point(dir) {
            return Ok(());
        }
        {
            let mut opts = format!("mode={mode:o}");
            if let Some(s) = size {
                let bytes = crate::unit::resource::parse_milli(&s)
                    .filter(|m| *m > 0)
                    .ok_or_else(|| format!("sizeLimit {s:?} is not a positive quantity"))?;
                opts.push_str(&format!(",size={}", (bytes + 999) / 1000));
            }
            use nix::mount::MsFlags;
            nix::mount::mount(
                Some("tmpfs"),
                dir,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(opts.as_str()),
            )
            .map_err(|e| format!("mounting a tmpfs on {}: {e}", dir.display()))?;
        }
    } else if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    } else {
        return Ok(());
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", dir.display())))?;
    if let Some(g) = gid {
        std::os::unix::fs::lchown(dir, None, Some(g)).map_err(io(format!("chgrp {}", dir.display())))?;
    }
    Ok(())
}

fn is_mount_point(dir: &Path) -> bool {
    match (std::fs::metadata(dir), dir.parent().map(std::fs::metadata)) {
        (Ok(a), Some(Ok(b))) => a.dev() != b.dev(),
        _ => false,
    }
}

/// The mount points below `dir` (from /proc/self/mountinfo), deepest first.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    out
}

/// Undoes the octal escapes (`\040` for a space) of a mountinfo path.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(digits) = b.get(i + 1..i + 4)
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(digits).unwrap_or("x"), 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn remove_dir(dir: &Path) -> Result<(), String> {
    for m in mounts_below(dir) {
        nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| format!("unmounting {}: {e}", m.display()))?;
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("removing {}: {e}", dir.display())),
        _ => Ok(()),
    }
}

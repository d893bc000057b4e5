//! The kubelet's atomic writer (`pkg/volume/util/atomic_writer.go`) for configMap, secret,
//! downwardAPI and projected volumes, so that a reader never sees half an update:
//!
//! ```text
//! <volume>/..2026_01_02_03_04_05.123456    the files of one version (subdirectories included)
//! <volume>/..data -> ..2026_01_02_…         the current version
//! <volume>/<name> -> ..data/<name>          what the container opens
//! ```
//!
//! An update writes a new version directory, points `..data_tmp` at it and renames that over
//! `..data` (one atomic step), then adds and removes the top-level links. Unlike the kubelet,
//! the version just replaced is deleted only at the next update, so a reader that had resolved
//! `..data` a moment before the swap still opens complete files. Identical content is not
//! written again. Blocking: called off the async runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One file of a volume.
#[derive(Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Content.
    pub data: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

impl std::fmt::Debug for FileSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileSpec({} bytes, {:o})", self.data.len(), self.mode)
    }
}

/// The files of a volume by relative path (`a`, `dir/b`).
pub type Payload = BTreeMap<String, FileSpec>;

/// Who owns a volume's files, and the mode bits of its directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Mode of the directories.
    pub dir_mode: u32,
}

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// Checks a payload path as the kubelet does (`validatePath`): relative, no `..` component, not
/// starting with `..`, components of at most 255 bytes.
pub fn validate_path(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("the path is empty".into());
    }
    if p.starts_with('/') {
        return Err(format!("{p:?} is an absolute path"));
    }
    if p.len() > 4096 {
        return Err(format!("{p:?} is longer than 4096 bytes"));
    }
    if p.starts_with("..") {
        return Err(format!("{p:?} starts with '..'"));
    }
    if p.split('/').any(|c| c == ".." || c.len() > 255) {
        return Err(format!("{p:?} has a '..' component or one longer than 255 bytes"));
    }
    if p.contains('\0') {
        return Err(format!("{p:?} contains a NUL character"));
    }
    Ok(())
}

fn chown(p: &Path, o: Ownership) -> std::io::Result<()> {
    std::os::unix::fs::lchown(p, Some(o.uid), Some(o.gid))
}

fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

/// Reads the files of a version directory (relative path → content and mode).
fn read_version(dir: &Path) -> std::io::Result<Payload> {
    let mut out = Payload::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(dir.join(&rel))? {
            let e = e?;
            let r = rel.join(e.file_name());
            let md = e.metadata()?;
            if md.is_dir() {
                stack.push(r);
            } else {
                let data = std::fs::read(dir.join(&r))?;
                out.insert(r.to_string_lossy().into_owned(), FileSpec { data, mode: md.mode() & 0o7777 });
            }
        }
    }
    Ok(out)
}

fn version_name(now: SystemTime) -> String {
    let ts = k8s_openapi::jiff::Timestamp::try_from(now).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    format!("..{}.", ts.strftime("%Y_%m_%d_%H_%M_%S"))
}

/// Makes `dir` hold exactly `payload` (see the module documentation). Returns whether anything
/// was written. New files, directories and links get `own`.
pub fn write(dir: &Path, payload: &Payload, own: Ownership, now: SystemTime) -> std::io::Result<bool> {
    for p in payload.keys() {
        validate_path(p).map_err(std::io::Error::other)?;
    }
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        set_mode(dir, own.dir_mode)?;
        chown(dir, own)?;
    }
    let current = std::fs::read_link(dir.join(DATA)).ok().map(|t| t.to_string_lossy().into_owned());
    if let Some(cur) = &current
        && read_version(&dir.join(cur)).is_ok_and(|have| have == *payload)
    {
        return Ok(false);
    }
    // The new version.
    let new = tempfile::Builder::new().prefix(&version_name(now)).rand_bytes(6).tempdir_in(dir)?.keep();
    let new_name = new.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    set_mode(&new, own.dir_mode)?;
    chown(&new, own)?;
    for (rel, f) in payload {
        let path = new.join(rel);
        if let Some(parent) = path.parent()
            && !parent.exists()
        {
            std::fs::create_dir_all(parent)?;
            let mut d = parent.to_path_buf();
            while d != new {
                set_mode(&d, own.dir_mode)?;
                chown(&d, own)?;
                if !d.pop() {
                    break;
                }
            }
        }
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&f.data)?;
        file.set_permissions(std::fs::Permissions::from_mode(f.mode))?;
        chown(&path, own)?;
    }
    // Swap `..data` over in one rename.
    let tmp = dir.join(DATA_TMP);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&new_name, &tmp)?;
    chown(&tmp, own)?;
    std::fs::rename(&tmp, dir.join(DATA))?;
    // The names the container sees.
    let wanted: BTreeSet<&str> = payload.keys().filter_map(|p| p.split('/').next()).collect();
    for name in &wanted {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("{DATA}/{name}"), &link)?;
            chown(&link, own)?;
        }
    }
    // What is no longer there: old links, older versions (and leftovers of an interrupted
    // write); the version just replaced stays until the next update.
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name == DATA || name == new_name || current.as_deref() == Some(name.as_str()) {
            continue;
        }
        let path = e.path();
        if name.starts_with("..") {
            if e.file_type()?.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        } else if !wanted.contains(name.as_str()) && e.file_type()?.is_symlink() {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(true)
}

/// Gives everything under `dir` (links included, not followed) to `uid`:`gid`.
pub fn chown_tree(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            std::os::unix::fs::lchown(e.path(), Some(uid), Some(gid))?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files.iter().map(|(p, d, m)| ((*p).to_owned(), FileSpec { data: d.as_bytes().to_vec(), mode: *m })).collect()
    }

    fn root() -> Ownership {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        Ownership { uid, gid, dir_mode: 0o755 }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn versions_are_swapped_through_the_data_link() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("vol");
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let p1 = payload(&[("a", "one", 0o644), ("sub/b", "two", 0o600)]);
        assert!(write(&dir, &p1, root(), now).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "one");
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).unwrap(), "two");
        assert_eq!(std::fs::read_link(dir.join("a")).unwrap(), Path::new("..data/a"));
        let v1 = std::fs::read_link(dir.join(DATA)).unwrap();
        assert!(v1.to_string_lossy().starts_with("..2023_11_14_22_13_20."), "{v1:?}");
        assert_eq!(std::fs::metadata(dir.join("sub/b")).unwrap().mode() & 0o777, 0o600);
        // The same content again: nothing is written.
        assert!(!write(&dir, &p1, root(), now).unwrap());
        assert_eq!(std::fs::read_link(dir.join(DATA)).unwrap(), v1);
        // An update: new version, the old one and the link of a removed file are gone.
        let p2 = payload(&[("a", "ONE", 0o640), ("c", "three", 0o644)]);
        assert!(write(&dir, &p2, root(), now).unwrap());
        let v2 = std::fs::read_link(dir.join(DATA)).unwrap();
        assert_ne!(v1, v2);
        let mut want = vec![v1.to_string_lossy().into_owned(), v2.to_string_lossy().into_owned()];
        want.sort();
        want.extend([DATA.to_owned(), "a".into(), "c".into()]);
        assert_eq!(names(&dir), want, "the replaced version stays until the next update");
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "ONE");
        assert_eq!(std::fs::metadata(dir.join("a")).unwrap().mode() & 0o777, 0o640);
        // An empty payload empties the volume (the versions before it are gone).
        assert!(write(&dir, &Payload::new(), root(), now).unwrap());
        assert_eq!(names(&dir).len(), 3, "{:?}", names(&dir));
        assert!(!names(&dir).contains(&v1.to_string_lossy().into_owned()));
    }

    #[test]
    fn bad_paths_are_refused() {
        for p in ["", "/abs", "..x", "a/../b", "a/.."] {
            assert!(validate_path(p).is_err(), "{p}");
        }
        assert!(validate_path("a/b.c/..d").is_ok());
        let t = tempfile::tempdir().unwrap();
        let e = write(&t.path().join("v"), &payload(&[("../x", "", 0o644)]), root(), SystemTime::now()).unwrap_err();
        assert!(e.to_string().contains("'..'"), "{e}");
    }
}

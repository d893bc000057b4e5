//! hostPath volumes: only paths the node's configuration allows (`[volumes] host_path_allow`,
//! checked on the path as written and after resolving symbolic links), and the kubelet's type
//! checks (`pkg/volume/hostpath` `checkType`): `Directory`, `DirectoryOrCreate` (0755),
//! `File`, `FileOrCreate` (0644, the parent must exist), `Socket`, `CharDevice`, `BlockDevice`,
//! or no check (`""`: a missing path is created as a directory, as container runtimes do).
//! Blocking.

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Why a hostPath cannot be mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPathError {
    /// The node's configuration does not allow it: it will not start by itself.
    NotAllowed(String),
    /// The type check failed (it may pass later, when the path appears).
    Check(String),
}

/// Whether `path` is one of `allow` or below one of them.
pub fn allowed(path: &Path, allow: &[PathBuf]) -> bool {
    allow.iter().any(|a| path.starts_with(a))
}

fn not_allowed(path: &str, how: &str, allow: &[PathBuf]) -> HostPathError {
    let list = if allow.is_empty() {
        "it allows none".to_owned()
    } else {
        format!("it allows {}", allow.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))
    };
    HostPathError::NotAllowed(format!(
        "hostPath {path:?}{how} is not allowed on this node: add it (or a parent) to [volumes] host_path_allow in \
         the vks configuration ({list})"
    ))
}

/// Checks (and for the `*OrCreate` types, creates) the host path of a volume; returns the path
/// to bind-mount.
pub fn prepare(path: &str, type_: Option<&str>, allow: &[PathBuf]) -> Result<PathBuf, HostPathError> {
    let norm = crate::unit::escape::normalize_path(path)
        .map_err(|e| HostPathError::NotAllowed(format!("hostPath {path:?} {e}")))?;
    let p = PathBuf::from(&norm);
    if !allowed(&p, allow) {
        return Err(not_allowed(path, "", allow));
    }
    let check = |what: &str| HostPathError::Check(format!("hostPath type check failed: {norm} is not a {what}"));
    match type_.unwrap_or("") {
        "DirectoryOrCreate" if !p.exists() => {
            std::fs::create_dir_all(&p)
                .and_then(|()| std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)))
                .map_err(|e| HostPathError::Check(format!("creating hostPath directory {norm}: {e}")))?;
        }
        // No type: a missing path becomes a directory, as the container runtimes make it.
        "" if !p.exists() => {
            std::fs::create_dir_all(&p)
                .and_then(|()| std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)))
                .map_err(|e| HostPathError::Check(format!("creating hostPath directory {norm}: {e}")))?;
        }
        "FileOrCreate" if !p.exists() => {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
                .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o644)))
                .map_err(|e| HostPathError::Check(format!("creating hostPath file {norm}: {e}")))?;
        }
        _ => {}
    }
    // What the path really is: no symbolic link may lead outside the allowed paths.
    let real = std::fs::canonicalize(&p).map_err(|e| HostPathError::Check(format!("hostPath {norm}: {e}")))?;
    if !allowed(&real, allow) {
        return Err(not_allowed(path, &format!(" (a link to {})", real.display()), allow));
    }
    let md = std::fs::metadata(&real).map_err(|e| HostPathError::Check(format!("hostPath {norm}: {e}")))?;
    let ft = md.file_type();
    let ok = match type_.unwrap_or("") {
        "" => true,
        "Directory" | "DirectoryOrCreate" => ft.is_dir(),
        "File" | "FileOrCreate" => ft.is_file(),
        "Socket" => ft.is_socket(),
        "CharDevice" => ft.is_char_device(),
        "BlockDevice" => ft.is_block_device(),
        other => return Err(HostPathError::NotAllowed(format!("hostPath {norm}: unknown type {other:?}"))),
    };
    if !ok {
        let what = match type_.unwrap_or("") {
            "Directory" | "DirectoryOrCreate" => "directory",
            "File" | "FileOrCreate" => "file",
            "Socket" => "socket",
            "CharDevice" => "character device",
            _ => "block device",
        };
        return Err(check(what));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_paths_of_the_right_type() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().canonicalize().unwrap();
        let allow = vec![base.join("ok")];
        std::fs::create_dir_all(base.join("ok/dir")).unwrap();
        std::fs::write(base.join("ok/file"), "x").unwrap();
        std::fs::create_dir_all(base.join("secret")).unwrap();
        std::os::unix::fs::symlink(base.join("secret"), base.join("ok/escape")).unwrap();
        let s = |p: &str| format!("{}/{p}", base.display());

        assert_eq!(prepare(&s("ok/dir"), Some("Directory"), &allow).unwrap(), base.join("ok/dir"));
        assert_eq!(prepare(&s("ok//dir/"), None, &allow).unwrap(), base.join("ok/dir"));
        assert!(prepare(&s("ok/untyped"), None, &allow).unwrap().is_dir(), "no type: created as a directory");
        assert_eq!(prepare(&s("ok/file"), Some("File"), &allow).unwrap(), base.join("ok/file"));
        assert!(
            matches!(prepare(&s("ok/file"), Some("Directory"), &allow), Err(HostPathError::Check(m)) if m.contains("is not a directory"))
        );
        assert!(matches!(prepare(&s("ok/missing"), Some("Directory"), &allow), Err(HostPathError::Check(_))));
        assert!(
            matches!(prepare(&s("ok/dir"), Some("Socket"), &allow), Err(HostPathError::Check(m)) if m.contains("socket"))
        );
        // Created when asked for.
        let made = prepare(&s("ok/new/deeper"), Some("DirectoryOrCreate"), &allow).unwrap();
        assert!(made.is_dir());
        let f = prepare(&s("ok/new.txt"), Some("FileOrCreate"), &allow).unwrap();
        assert!(f.is_file());
        assert!(prepare(&s("ok/nodir/new.txt"), Some("FileOrCreate"), &allow).is_err(), "the parent must exist");
        // Not allowed: outside the list, through a link, or with no list at all.
        let e = prepare(&s("secret"), None, &allow).unwrap_err();
        assert!(matches!(&e, HostPathError::NotAllowed(m) if m.contains("host_path_allow")), "{e:?}");
        assert!(
            matches!(prepare(&s("ok/escape"), None, &allow), Err(HostPathError::NotAllowed(m)) if m.contains("a link to"))
        );
        assert!(matches!(prepare(&s("ok/../secret"), None, &allow), Err(HostPathError::NotAllowed(_))));
        assert!(
            matches!(prepare("/etc", None, &[]), Err(HostPathError::NotAllowed(m)) if m.contains("it allows none"))
        );
        assert!(!allowed(Path::new("/srv/data2"), &[PathBuf::from("/srv/data")]), "a prefix of a name is not a parent");
    }
}

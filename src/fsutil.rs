//! The one way vks writes a file that others read while it changes (unit files, credentials,
//! apt sources, its policy-rc.d): a temporary file in the same directory, written, synced and
//! given its mode, then renamed over the target, so a reader sees the old or the new content,
//! never a mix.
//!
//! The temporary name is short and random (`.vks-XXXXXX`), so a target whose own name is at the
//! file-system limit (a 255-byte unit name) can still be written. The function blocks: async code
//! calls [`write_atomic_async`], which runs it on tokio's blocking pool.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// Replaces `path` with `data` (file mode `mode`) atomically.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new().prefix(".vks-").rand_bytes(8).tempfile_in(dir)?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// [`write_atomic`] off the async runtime's worker threads.
pub async fn write_atomic_async(path: PathBuf, data: Vec<u8>, mode: u32) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || write_atomic(&path, &data, mode))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(format!("write task failed: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_with_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["f"], "no temporary file is left behind");
    }

    #[test]
    fn names_at_the_file_system_limit_can_be_written() {
        // issue 9, defect 4: a 255-byte unit name with a longer temporary name failed (ENAMETOOLONG).
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v".repeat(255));
        write_atomic(&p, b"x", 0o644).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
    }
}

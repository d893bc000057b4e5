//! Files vks keeps for a pod's containers under `<pod_dir>/<uid>/`, and what is read back from
//! them, as the kubelet does:
//!
//! - the termination message: each container gets its own file
//!   `containers/<name>/termination-log` (mode 0666, emptied before each start), bind-mounted at
//!   its `terminationMessagePath`; when the container ends, the last 4 KiB of the file are the
//!   terminated state's `message`. With `terminationMessagePolicy: FallbackToLogsOnError`, an
//!   empty file and a non-zero exit take the last 80 lines (at most 2 KiB) of the run's log
//!   instead, read from the journal ([`LogTail`]);
//! - `etc-hosts`: with `hostAliases`, the node's `/etc/hosts` plus the aliases (the kubelet's
//!   host-network format), bind-mounted read-only at `/etc/hosts`.
//!
//! The content rules are pure; [`JournalTail`] runs `journalctl` (through the kubelet API's
//! journal reader, which knows how a run's lines are found).

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Container, HostAlias};

pub use crate::journal::Run;

/// The most of a termination message file kept (the kubelet's 4 KiB).
pub const MAX_MESSAGE: usize = 4096;
/// Log lines taken by `FallbackToLogsOnError`.
pub const MAX_LOG_LINES: usize = 80;
/// The most of those lines kept (the kubelet's 2 KiB).
pub const MAX_LOG_BYTES: usize = 2048;
/// The path the API server defaults `terminationMessagePath` to.
pub const DEFAULT_PATH: &str = "/dev/termination-log";

/// The host file of container `c`'s termination message.
pub fn message_file(pod_dir: &Path, uid: &str, container: &str) -> PathBuf {
    pod_dir.join(uid).join("containers").join(container).join("termination-log")
}

/// The host file bound at `/etc/hosts` for a pod with host aliases.
pub fn hosts_file(pod_dir: &Path, uid: &str) -> PathBuf {
    pod_dir.join(uid).join("etc-hosts")
}

/// Where container `c` reads its termination message from (inside the container).
pub fn message_path(c: &Container) -> &str {
    c.termination_message_path.as_deref().filter(|p| !p.is_empty()).unwrap_or(DEFAULT_PATH)
}

/// Whether container `c` falls back to its log.
pub fn falls_back_to_logs(c: &Container) -> bool {
    c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
}

/// The last `max` bytes of `data`, starting at a character boundary.
pub fn tail(data: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(&data[data.len().saturating_sub(max)..]).into_owned();
    s.trim_start_matches('\u{fffd}').to_owned()
}

/// The hosts file of a pod on the node's network: the node's file and the aliases (the kubelet's
/// `nodeHostsFileContent`).
pub fn hosts_content(node_hosts: &str, aliases: &[HostAlias]) -> String {
    let mut s = String::from("# Kubernetes-managed hosts file (host network).\n");
    s.push_str(node_hosts);
    if !aliases.is_empty() {
        s.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            s.push_str(&format!("{}\t{}\n", a.ip, a.hostnames.clone().unwrap_or_default().join("\t")));
        }
    }
    s
}

/// The last lines a container's run wrote.
#[async_trait]
pub trait LogTail: Send + Sync + 'static {
    /// The last `lines` lines of `run`.
    async fn tail(&self, run: &Run, lines: usize) -> Result<String, String>;
}

/// [`LogTail`] from the journal: [`Run::tail`], which also finds the run's last lines that lack
/// the invocation ID.
pub struct JournalTail;

/// How long reading the journal may take.
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(10);

#[async_trait]
impl LogTail for JournalTail {
    async fn tail(&self, run: &Run, lines: usize) -> Result<String, String> {
        // The run's last lines may still sit in journald's stdout stream socket when the unit
        // has already ended: `--sync` is handled by journald after all input queued before it,
        // so the lines read below are all of them.
        let sync = tokio::process::Command::new("journalctl")
            .arg("--sync")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status();
        match tokio::time::timeout(JOURNAL_TIMEOUT, sync).await {
            Ok(Ok(s)) if s.success() => {}
            Ok(Ok(s)) => log::debug!("journalctl --sync: {s}"),
            Ok(Err(e)) => log::debug!("running journalctl --sync: {e}"),
            Err(_) => log::debug!("journalctl --sync did not answer within {}s", JOURNAL_TIMEOUT.as_secs()),
        }
        let read = async {
            let entries = run.tail(lines).await.map_err(|e| format!("reading the journal: {e}"))?;
            let mut text = Vec::new();
            for e in entries {
                text.extend_from_slice(&e.message);
                if e.ends_line {
                    text.push(b'\n');
                }
            }
            Ok::<_, String>(String::from_utf8_lossy(&text).into_owned())
        };
        match tokio::time::timeout(JOURNAL_TIMEOUT, read).await {
            Ok(r) => r,
            Err(_) => Err(format!("journalctl did not answer within {}s", JOURNAL_TIMEOUT.as_secs())),
        }
    }
}

/// Logs for tests: the text of each invocation.
#[derive(Debug, Default)]
pub struct FakeLogs(pub std::sync::Mutex<std::collections::HashMap<String, String>>);

#[async_trait]
impl LogTail for FakeLogs {
    async fn tail(&self, run: &Run, lines: usize) -> Result<String, String> {
        let text = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&run.invocation).cloned().unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        Ok(all[all.len().saturating_sub(lines)..].iter().map(|l| format!("{l}\n")).collect())
    }
}

/// The termination message of a run that ended with `exit_code`: the file's content (its last
/// 4 KiB), or with the log fallback the log's tail. `None` when there is none.
pub async fn read_message(file: &Path, c: &Container, exit_code: i32, run: &Run, logs: &dyn LogTail) -> Option<String> {
    let data = match tokio::fs::read(file).await {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Some(format!("Error on reading termination log {}: {e}", file.display())),
    };
    if !data.is_empty() {
        return Some(tail(&data, MAX_MESSAGE));
    }
    if !falls_back_to_logs(c) || exit_code == 0 {
        return None;
    }
    match logs.tail(run, MAX_LOG_LINES).await {
        Ok(text) if !text.is_empty() => Some(tail(text.as_bytes(), MAX_LOG_BYTES)),
        Ok(_) => None,
        Err(e) => {
            log::warn!("reading the log of run {} of {} for its termination message: {e}", run.invocation, run.unit);
            None
        }
    }
}

/// Prepares container `c`'s termination message file: created (or emptied) with mode 0666, so
/// any user the container runs as can write it.
pub async fn prepare_message_file(file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = file.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    tokio::fs::write(file, b"").await?;
    tokio::fs::set_permissions(file, std::fs::Permissions::from_mode(0o666)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(json: serde_json::Value) -> Container {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn hosts_files_are_the_nodes_plus_the_aliases() {
        let aliases: Vec<HostAlias> = serde_json::from_value(serde_json::json!([
            {"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]},
            {"ip": "10.1.2.4", "hostnames": ["baz"]}]))
        .unwrap();
        assert_eq!(
            hosts_content("127.0.0.1\tlocalhost\n", &aliases),
            "# Kubernetes-managed hosts file (host network).\n127.0.0.1\tlocalhost\n\n\
             # Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n10.1.2.4\tbaz\n"
        );
    }

    #[tokio::test]
    async fn messages_come_from_the_file_or_on_error_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t");
        let logs = FakeLogs::default();
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        logs.0.lock().unwrap().insert("abc".into(), text);
        let plain = container(serde_json::json!({"name": "c"}));
        let fallback = container(serde_json::json!({"name": "c", "terminationMessagePolicy": "FallbackToLogsOnError"}));
        let run = Run {
            unit: "vks.ns.p.c.service".into(),
            pod_uid: "u".into(),
            invocation: "abc".into(),
            started_us: 1,
            until_us: None,
        };
        let run = &run;
        assert_eq!(read_message(&file, &plain, 1, run, &logs).await, None);
        let m = read_message(&file, &fallback, 1, run, &logs).await.unwrap();
        assert!(m.starts_with("line 21\n") && m.ends_with("line 100\n"), "{m}");
        assert_eq!(read_message(&file, &fallback, 0, run, &logs).await, None, "only after an error");
        prepare_message_file(&file).await.unwrap();
        std::fs::write(&file, "x".repeat(5000) + "end").unwrap();
        let m = read_message(&file, &fallback, 1, run, &logs).await.unwrap();
        assert_eq!((m.len(), m.ends_with("end")), (MAX_MESSAGE, true));
        prepare_message_file(&file).await.unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o666);
    }
}

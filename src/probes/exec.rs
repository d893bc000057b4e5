//! Running a command in a container's context, behind the narrow [`ContainerExec`] trait (the
//! real implementation is `systemd::run::SystemdRun`; [`FakeExec`] is for tests). Exec probes
//! and exec lifecycle handlers use it; `kubectl exec` can share it.
//!
//! The context is the container unit's: the command runs as a transient service whose settings
//! are the container unit's `[Service]` execution settings, copied verbatim into a drop-in so that
//! systemd parses them exactly as in the container's unit ([`context_dropin`]): its user, its
//! environment, its working directory, its mounts (`BindPaths=`, ...), its sandboxing and limits.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

/// The most of a command's output kept (the kubelet's exec probe keeps 10 KiB).
pub const MAX_OUTPUT: usize = 10 * 1024;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecStatus {
    /// It exited with this status (0: success).
    Exited(i32),
    /// It did not finish within the timeout and was stopped.
    TimedOut,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// How it ended.
    pub status: ExecStatus,
    /// Its standard output and error, interleaved, at most [`MAX_OUTPUT`] bytes.
    pub output: Vec<u8>,
}

/// Why a command could not be run at all (as opposed to running and failing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("running {command:?} in {unit}: {why}")]
pub struct ExecError {
    /// The container's unit.
    pub unit: String,
    /// The command.
    pub command: Vec<String>,
    /// What went wrong.
    pub why: String,
}

/// Runs commands in containers.
#[async_trait]
pub trait ContainerExec: Send + Sync + 'static {
    /// Runs `command` in the context of the container whose unit is `unit`, stopping it after
    /// `timeout` when given. Dropping the future stops the command.
    async fn exec(&self, unit: &str, command: &[String], timeout: Option<Duration>) -> Result<ExecOutput, ExecError>;
}

/// Settings copied verbatim from the container unit's `[Service]` section: who the process is,
/// its environment and directories, its file system view and sandboxing, its limits. Not copied:
/// how the container's own process starts, stops, restarts and logs.
const COPIED: &[&str] = &[
    "User",
    "Group",
    "SupplementaryGroups",
    "DynamicUser",
    "WorkingDirectory",
    "RootDirectory",
    "RootImage",
    "Environment",
    "EnvironmentFile",
    "PassEnvironment",
    "UnsetEnvironment",
    "UMask",
    "RuntimeDirectory",
    "RuntimeDirectoryMode",
    "StateDirectory",
    "CacheDirectory",
    "LogsDirectory",
    "ConfigurationDirectory",
    "Nice",
    "OOMScoreAdjust",
    "AmbientCapabilities",
    "CapabilityBoundingSet",
    "NoNewPrivileges",
    "SecureBits",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "ExecPaths",
    "NoExecPaths",
    "TemporaryFileSystem",
    "BindPaths",
    "BindReadOnlyPaths",
    "MountAPIVFS",
    "RestrictAddressFamilies",
    "RestrictNamespaces",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "SystemCallFilter",
    "SystemCallArchitectures",
    "SystemCallErrorNumber",
    "DevicePolicy",
    "DeviceAllow",
    "MemoryMax",
    "MemoryHigh",
    "MemorySwapMax",
    "CPUQuota",
    "CPUWeight",
    "TasksMax",
    "IOWeight",
    "LoadCredential",
    "SetCredential",
];

fn copied(key: &str) -> bool {
    COPIED.contains(&key) || ["Limit", "Protect", "Private"].iter().any(|p| key.starts_with(p))
}

pub use crate::images::unitfile::service_settings;

/// The drop-in that gives a transient unit the context of container unit `unit` (whose file is
/// `file`), and the container's `Slice=` if it has one. `JoinsNamespaceOf=` shares the
/// container's private `/tmp` (and network namespace, when it has one);
/// `RuntimeDirectoryPreserve=yes` keeps the command's end from removing the container's runtime
/// directory.
pub fn context_dropin(unit: &str, file: &str) -> (String, Option<String>) {
    let mut dropin = format!(
        "# Written by vks for a command run in {unit}; removed when the command ended.\n\
         [Unit]\nJoinsNamespaceOf={unit}\n\n[Service]\n"
    );
    let mut slice = None;
    let mut runtime_dir = false;
    for (k, v) in service_settings(file) {
        if k == "Slice" && !v.is_empty() {
            slice = Some(v.clone());
        }
        if copied(&k) {
            runtime_dir |= k == "RuntimeDirectory" && !v.is_empty();
            dropin.push_str(&format!("{k}={v}\n"));
        }
    }
    if runtime_dir {
        dropin.push_str("RuntimeDirectoryPreserve=yes\n");
    }
    (dropin, slice)
}

/// One command the fake ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCall {
    /// The container unit.
    pub unit: String,
    /// The command.
    pub command: Vec<String>,
}

/// Runs nothing: answers each command with the next scripted output (default: exit 0, no
/// output) and records it.
#[derive(Debug, Default)]
pub struct FakeExec {
    answers: Mutex<VecDeque<Result<ExecOutput, String>>>,
    calls: Mutex<Vec<FakeCall>>,
}

impl FakeExec {
    /// Queues the answer to a later command.
    pub fn answer(&self, a: Result<ExecOutput, String>) {
        self.answers.lock().unwrap_or_else(|e| e.into_inner()).push_back(a);
    }

    /// The commands run so far.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait]
impl ContainerExec for FakeExec {
    async fn exec(&self, unit: &str, command: &[String], _: Option<Duration>) -> Result<ExecOutput, ExecError> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(FakeCall { unit: unit.to_owned(), command: command.to_vec() });
        let next = self.answers.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        match next {
            None => Ok(ExecOutput { status: ExecStatus::Exited(0), output: Vec::new() }),
            Some(Ok(o)) => Ok(o),
            Some(Err(why)) => Err(ExecError { unit: unit.to_owned(), command: command.to_vec(), why }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: &str = "# Generated by vks\n[Unit]\nDescription=x\n\n[Service]\nType=exec\n\
        ExecStart=\"@/bin/sh\" \"sh\"\nUser=daemon\nPrivateTmp=yes\nWorkingDirectory=/srv/a%%b\n\
        Environment=\"GREETING=hi there\"\nBindPaths=/var/lib/vks/pods/u/t:/dev/termination-log\n\
        RuntimeDirectory=app\nRemainAfterExit=yes\nRestart=no\nKillMode=mixed\nKillSignal=SIGUSR1\n\
        StandardOutput=journal\nLimitNOFILE=1024\nSlice=pods.slice\nReadWritePaths=/a \\\n  /b\n\n\
        [X-Kubernetes]\nNamespace=ns\n";

    #[test]
    fn the_containers_context_is_copied_and_its_process_settings_are_not() {
        let (dropin, slice) = context_dropin("vks.ns.p.c.service", UNIT);
        assert_eq!(
            dropin,
            "# Written by vks for a command run in vks.ns.p.c.service; removed when the command ended.\n\
             [Unit]\nJoinsNamespaceOf=vks.ns.p.c.service\n\n[Service]\nUser=daemon\nPrivateTmp=yes\n\
             WorkingDirectory=/srv/a%%b\nEnvironment=\"GREETING=hi there\"\n\
             BindPaths=/var/lib/vks/pods/u/t:/dev/termination-log\nRuntimeDirectory=app\nLimitNOFILE=1024\n\
             ReadWritePaths=/a  /b\nRuntimeDirectoryPreserve=yes\n"
        );
        assert_eq!(slice.as_deref(), Some("pods.slice"));
    }
}

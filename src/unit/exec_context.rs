//! How a command run in a container (`kubectl exec`, exec probes and hooks) gets the container's
//! context, pure: which settings of the container's unit file are copied into the command's
//! drop-in — one list for every such command — and how the command's program is found.
//!
//! Copied from `[Service]`, verbatim (so systemd parses them exactly as in the container's
//! unit): the identity (`User=`, `Group=`, `SupplementaryGroups=`, `DynamicUser=`), the
//! environment (`Environment=`, `EnvironmentFile=`, `PassEnvironment=`, `UnsetEnvironment=`),
//! `WorkingDirectory=`, `RootDirectory=`, `UMask=`, the sandboxing and file-system settings
//! (`Protect*=`, `Private*=`, `ReadWritePaths=` & co, `BindPaths=`, `TemporaryFileSystem=`,
//! capabilities, system call filters, ...), the state/runtime/cache/logs directories, process
//! limits (`Limit*=`), the container's resource limits (`MemoryMax=`, `CPUQuota=`, ...: a command
//! alone never gets more than its container), scheduling and credentials. Not copied: how the container's own process
//! starts, restarts, stops and logs (`Type=`, `Exec*=`, `Restart*=`, `Kill*=`, `Timeout*=`,
//! `Standard*=`, `Syslog*=`, ...). The drop-in adds `JoinsNamespaceOf=` the container's unit, so
//! the command shares its private `/tmp` (and network/IPC namespaces when it has private ones),
//! and `RuntimeDirectoryPreserve=yes`, so that the command ending does not remove the container's
//! runtime directory. The exec unit runs in the container unit's `Slice=`.
//!
//! Known difference: a `TemporaryFileSystem=` of the container is a new, empty tmpfs for the
//! command, not the container's.

use crate::unit::DEFAULT_PATH;

/// The settings that make up a process's context in a unit's `[Service]` section — who it
/// runs as, its environment and directories, its file system view and sandboxing, scheduling —
/// besides every `Limit*=`, `Protect*=` and `Private*=` ([`is_process_context`]). A command run
/// in a container copies them, and so does a container from its package's unit
/// (`images::unitfile`), each with a few more.
pub const PROCESS_CONTEXT: &[&str] = &[
    "User",
    "Group",
    "SupplementaryGroups",
    "DynamicUser",
    "WorkingDirectory",
    "RootDirectory",
    "Environment",
    "EnvironmentFile",
    "PassEnvironment",
    "UMask",
    "RuntimeDirectory",
    "RuntimeDirectoryMode",
    "StateDirectory",
    "StateDirectoryMode",
    "CacheDirectory",
    "CacheDirectoryMode",
    "LogsDirectory",
    "LogsDirectoryMode",
    "ConfigurationDirectory",
    "ConfigurationDirectoryMode",
    "Nice",
    "OOMScoreAdjust",
    "IOSchedulingClass",
    "IOSchedulingPriority",
    "CPUSchedulingPolicy",
    "CPUSchedulingPriority",
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
    "RestrictAddressFamilies",
    "RestrictNamespaces",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "SystemCallFilter",
    "SystemCallArchitectures",
    "SystemCallErrorNumber",
    "RemoveIPC",
    "KeyringMode",
    "DevicePolicy",
    "DeviceAllow",
];

/// Whether `key` is one of [`PROCESS_CONTEXT`] or a `Limit*=`, `Protect*=` or `Private*=` setting.
pub fn is_process_context(key: &str) -> bool {
    PROCESS_CONTEXT.contains(&key) || ["Limit", "Protect", "Private"].iter().any(|p| key.starts_with(p))
}

/// Copied into a command's drop-in besides the process context: the container's credentials,
/// mount options and resource limits.
const COPIED_ALSO: &[&str] = &[
    "RootImage",
    "UnsetEnvironment",
    "MountAPIVFS",
    "LoadCredential",
    "SetCredential",
    "MemoryMax",
    "MemoryHigh",
    "MemorySwapMax",
    "CPUQuota",
    "CPUWeight",
    "TasksMax",
    "IOWeight",
];

fn copied(key: &str) -> bool {
    is_process_context(key) || COPIED_ALSO.contains(&key)
}

pub use crate::images::unitfile::service_settings;

/// A command's context, from the container's unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecContext {
    /// The drop-in for the exec unit.
    pub dropin: String,
    /// The container unit's `Slice=`.
    pub slice: Option<String>,
    /// `PATH` of the container's environment (the systemd default when it sets none).
    pub path: String,
    /// `RootDirectory=` of the container.
    pub root: Option<String>,
}

/// Builds the exec context for a command in the container `unit` (`file` is its unit file).
/// `user` is the container's user as systemd resolved it (the `User` property), set explicitly
/// so that a `DynamicUser=` container without `User=` shares its dynamic user with the command.
pub fn context(unit: &str, file: &str, user: Option<&str>) -> ExecContext {
    let settings = service_settings(file);
    let mut dropin = format!(
        "# Written by vks for a command run in {unit}; removed when the command ended.\n\
         [Unit]\nJoinsNamespaceOf={unit}\n\n[Service]\n"
    );
    let mut has_runtime_dir = false;
    let mut slice = None;
    let mut path = None;
    let mut root = None;
    for (k, v) in &settings {
        match k.as_str() {
            "Slice" => slice = Some(v.clone()).filter(|s| !s.is_empty()),
            "Environment" => {
                if let Some(p) =
                    environment_words(v).into_iter().rev().find_map(|w| w.strip_prefix("PATH=").map(str::to_owned))
                {
                    path = Some(p);
                }
            }
            "RootDirectory" => root = Some(v.replace("%%", "%")).filter(|r| !r.is_empty()),
            _ => {}
        }
        if copied(k) {
            has_runtime_dir |= k == "RuntimeDirectory" && !v.is_empty();
            dropin.push_str(&format!("{k}={v}\n"));
        }
    }
    if let Some(u) = user.filter(|u| !u.is_empty()) {
        dropin.push_str(&format!("User={}\n", u.replace('%', "%%")));
    }
    if has_runtime_dir {
        dropin.push_str("RuntimeDirectoryPreserve=yes\n");
    }
    ExecContext { dropin, slice, path: path.unwrap_or_else(|| DEFAULT_PATH.to_owned()), root }
}

/// The words of an `Environment=` value: unquoted, C-unescaped, `%%` as `%` (vks writes no
/// other specifiers).
pub fn environment_words(value: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (_, '\\') => {
                in_word = true;
                match chars.next() {
                    Some('n') => cur.push('\n'),
                    Some('t') => cur.push('\t'),
                    Some('r') => cur.push('\r'),
                    Some('x') => {
                        let hex: String = chars.by_ref().take(2).collect();
                        if let Some(ch) = u8::from_str_radix(&hex, 16).ok().map(char::from) {
                            cur.push(ch);
                        }
                    }
                    Some(other) => cur.push(other),
                    None => {}
                }
            }
            (_, '%') if chars.peek() == Some(&'%') => {
                chars.next();
                in_word = true;
                cur.push('%');
            }
            (_, c) => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Finds the program of `argv0` like execvp would in the container: a path must be absolute; a
/// bare name is looked up in the container's `PATH`, inside its `RootDirectory=`.
pub fn find_program(argv0: &str, ctx: &ExecContext, is_executable: impl Fn(&str) -> bool) -> Result<String, String> {
    let root = ctx.root.as_deref().unwrap_or("").trim_end_matches('/');
    if argv0.contains('/') {
        if !argv0.starts_with('/') {
            return Err(format!("{argv0:?} is a relative path; give an absolute path or a name found in PATH"));
        }
        return Ok(argv0.to_owned());
    }
    ctx.path
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| format!("{}/{argv0}", d.trim_end_matches('/')))
        .find(|p| is_executable(&format!("{root}{p}")))
        .ok_or_else(|| format!("executable {argv0:?} not found in PATH ({})", ctx.path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: &str = "# Generated by vks\n[Unit]\nDescription=x\n\n[Service]\nType=exec\n\
        ExecStart=\"@/bin/sh\" \"sh\"\nUser=daemon\nProtectSystem=strict\nPrivateTmp=yes\n\
        WorkingDirectory=/srv/a%%b\nEnvironment=\"PATH=/opt/bin:/usr/bin\"\nEnvironment=\"GREETING=hi there\"\n\
        RuntimeDirectory=app\nRemainAfterExit=yes\nRestart=no\nKillMode=mixed\nStandardInput=null\n\
        StandardOutput=journal\nSyslogIdentifier=c\nLimitNOFILE=1024\nSlice=pods.slice\n\
        ReadWritePaths=/var/lib/a \\\n  /var/lib/b\n\n[X-Kubernetes]\nNamespace=ns\n";

    #[test]
    fn the_container_context_is_copied_and_its_process_settings_are_not() {
        let c = context("vks.ns.p.c.service", UNIT, Some("daemon"));
        assert_eq!(
            c.dropin,
            "# Written by vks for a command run in vks.ns.p.c.service; removed when the command ended.\n\
             [Unit]\nJoinsNamespaceOf=vks.ns.p.c.service\n\n[Service]\nUser=daemon\nProtectSystem=strict\n\
             PrivateTmp=yes\nWorkingDirectory=/srv/a%%b\nEnvironment=\"PATH=/opt/bin:/usr/bin\"\n\
             Environment=\"GREETING=hi there\"\nRuntimeDirectory=app\nLimitNOFILE=1024\n\
             ReadWritePaths=/var/lib/a  /var/lib/b\nUser=daemon\nRuntimeDirectoryPreserve=yes\n"
        );
        assert_eq!(c.slice.as_deref(), Some("pods.slice"));
        assert_eq!(c.path, "/opt/bin:/usr/bin");
        assert_eq!(c.root, None);
        let plain = context("u.service", "[Service]\nExecStart=/bin/true\n", None);
        assert_eq!(plain.path, DEFAULT_PATH);
        assert!(!plain.dropin.contains("RuntimeDirectoryPreserve"));
    }

    #[test]
    fn a_command_gets_the_process_context_credentials_and_limits_not_how_the_container_starts() {
        for k in ["User", "ProtectSystem", "LimitNOFILE", "PrivateTmp", "DeviceAllow", "MemoryMax", "LoadCredential"] {
            assert!(copied(k), "{k}");
        }
        for k in ["Type", "ExecStartPre", "PIDFile", "RuntimeDirectoryPreserve", "Restart", "StandardOutput"] {
            assert!(!copied(k), "{k}");
        }
    }

    #[test]
    fn environment_values_are_read_as_systemd_does() {
        assert_eq!(
            environment_words(r#""A=1 2" B=3 'C=x\"y' "D=50%%" "E=a\nb\x41""#),
            ["A=1 2", "B=3", "C=x\"y", "D=50%", "E=a\nbA"]
        );
    }

    #[test]
    fn programs_are_found_like_execvp_in_the_container() {
        let c = context("u", "[Service]\nEnvironment=\"PATH=/opt/bin:/usr/bin\"\nRootDirectory=/srv/root\n", None);
        let exists = |p: &str| p == "/srv/root/usr/bin/tool";
        assert_eq!(find_program("tool", &c, exists).unwrap(), "/usr/bin/tool");
        assert_eq!(find_program("/any/path", &c, exists).unwrap(), "/any/path");
        assert!(find_program("./tool", &c, exists).unwrap_err().contains("relative path"));
        assert_eq!(
            find_program("nope", &c, exists).unwrap_err(),
            "executable \"nope\" not found in PATH (/opt/bin:/usr/bin)"
        );
    }
}

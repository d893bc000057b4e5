//! Reading a package's own systemd unit, the base of a container's unit when the container
//! gives no command. Pure: the text comes in, the parts vks takes over come out.
//!
//! What is taken over, from `[Service]` only (README.md lists the same):
//! - `ExecStart=`: its program becomes the image's entrypoint and the rest of the line, verbatim
//!   in systemd syntax, the image's default arguments (so `$VAR`s of an `EnvironmentFile=` keep
//!   working); prefixes (`-`, `@`, `+`, `!`, `:`) are dropped;
//! - `Type=` (`notify`, `forking`, `dbus` and `idle` are kept; others become `exec`);
//! - the process context (`unit::exec_context::PROCESS_CONTEXT`: identity, environment,
//!   directories, sandboxing, scheduling, every `Limit*=`, `Protect*=` and `Private*=`) and the
//!   settings in [`TAKEN`], in file order.
//!
//! Not taken over: `[Unit]` and `[Install]` (dependencies, ordering, aliases), `Restart*=`,
//! `Timeout*=`, `ExecStop*=`, `KillMode=`/`KillSignal=`, `RemainAfterExit=`, `Standard*=`,
//! `Syslog*=`, `WatchdogSec=`, resource controls, and drop-ins: vks decides how containers are
//! restarted, stopped and logged.

/// Settings copied from a package's `[Service]` section besides its process context
/// (`unit::exec_context::PROCESS_CONTEXT`, with every `Limit*=`, `Protect*=` and `Private*=`):
/// how its daemon starts and says it is ready.
pub const TAKEN: &[&str] = &[
    "Type",
    "ExecStartPre",
    "ExecStartPost",
    "ExecReload",
    "PIDFile",
    "NotifyAccess",
    "BusName",
    "RuntimeDirectoryPreserve",
];

fn taken(key: &str) -> bool {
    TAKEN.contains(&key) || crate::unit::exec_context::is_process_context(key)
}

/// What a package's unit contributes to a container's unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackagedService {
    /// The program `ExecStart=` runs (absolute path).
    pub program: String,
    /// The rest of the `ExecStart=` line, verbatim; empty when there are no arguments.
    pub args: String,
    /// The settings taken over, as (directive, value), in file order.
    pub settings: Vec<(String, String)>,
}

/// The `[Service]` assignments of a unit file, in order, continuation lines joined (what the
/// exec and probe drop-ins copy from a container's unit).
pub fn service_settings(text: &str) -> Vec<(String, String)> {
    assignments(text).into_iter().filter(|(s, _, _)| s == "Service").map(|(_, k, v)| (k, v)).collect()
}

/// Joins continuation lines and returns (section, key, value) assignments in order.
fn assignments(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        if !pending.is_empty() && (line.starts_with('#') || line.starts_with(';')) {
            continue; // comments inside a continued line are skipped
        }
        if let Some(stripped) = line.strip_suffix('\\') {
            pending.push_str(stripped);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        if full.starts_with('[') && full.ends_with(']') {
            section = full[1..full.len() - 1].to_owned();
        } else if let Some((k, v)) = full.split_once('=') {
            out.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

/// Splits off the first word of an ExecStart= value (systemd quoting), returning it unquoted
/// and the rest of the line.
fn first_word(value: &str) -> Option<(String, &str)> {
    let v = value.trim_start();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = v.char_indices();
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => return Some((word, v[i..].trim())),
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (_, '\\') => word.push(chars.next()?.1),
            (_, c) => word.push(c),
        }
    }
    if quote.is_some() { None } else { Some((word, "")) }
}

/// Why a package's unit cannot be a container's base.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitFileError {
    /// No `ExecStart=` in `[Service]`.
    #[error("has no ExecStart= in [Service]")]
    NoExecStart,
    /// Several commands (a oneshot unit): which one would be the container?
    #[error("has {0} ExecStart= commands; set the container's command")]
    SeveralExecStart(usize),
    /// The program is not a plain absolute path.
    #[error("runs {0:?}, which is not a plain absolute path; set the container's command")]
    Program(String),
}

/// Reads a unit file.
pub fn parse(text: &str) -> Result<PackagedService, UnitFileError> {
    let mut exec: Vec<String> = Vec::new();
    let mut settings: Vec<(String, String)> = Vec::new();
    for (section, key, value) in assignments(text) {
        if section != "Service" {
            continue;
        }
        if key == "ExecStart" {
            if value.is_empty() {
                exec.clear();
            } else {
                exec.push(value);
            }
            continue;
        }
        if !taken(&key) {
            continue;
        }
        if value.is_empty() {
            // An empty assignment resets a list setting.
            settings.retain(|(k, _)| *k != key);
        }
        settings.push((key, value));
    }
    let line = match exec.len() {
        0 => return Err(UnitFileError::NoExecStart),
        1 => exec.remove(0),
        n => return Err(UnitFileError::SeveralExecStart(n)),
    };
    let (first, rest) = first_word(&line).ok_or_else(|| UnitFileError::Program(line.clone()))?;
    let argv0_given = first.trim_start_matches(['-', '+', '!', ':']).starts_with('@');
    let program = first.trim_start_matches(['-', '@', '+', '!', ':']).to_owned();
    if !program.starts_with('/') || program.contains(['$', '%']) {
        return Err(UnitFileError::Program(program));
    }
    // With the @ prefix the next word is argv[0]; vks sets argv[0] itself.
    let args = if argv0_given { first_word(rest).map_or("", |(_, r)| r) } else { rest };
    Ok(PackagedService { program, args: args.to_owned(), settings })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_gives_its_process_context_and_how_its_daemon_starts() {
        for k in
            ["User", "ProtectSystem", "LimitNOFILE", "PrivateTmp", "DeviceAllow", "PIDFile", "Type", "ExecStartPre"]
        {
            assert!(taken(k), "{k}");
        }
        for k in ["MemoryMax", "LoadCredential", "RootImage", "Restart", "ExecStop", "KillMode", "StandardOutput"] {
            assert!(!taken(k), "{k}");
        }
    }

    #[test]
    fn uptimed() {
        let text = "[Unit]\nDescription=uptime record daemon\nAfter=time-sync.target ntp.service\n\n\
                    [Service]\nExecStart=/usr/sbin/uptimed -f\nUser=daemon\n\n[Install]\nWantedBy=multi-user.target\n";
        let s = parse(text).unwrap();
        assert_eq!(s.program, "/usr/sbin/uptimed");
        assert_eq!(s.args, "-f");
        assert_eq!(s.settings, [("User".to_owned(), "daemon".to_owned())]);
    }

    #[test]
    fn variables_prefixes_continuations_and_what_is_dropped() {
        let text = "[Service]\n\
                    # comment\n\
                    EnvironmentFile=-/etc/default/ssh\n\
                    ExecStartPre=/usr/sbin/sshd -t\n\
                    ExecStart=-/usr/sbin/sshd -D $SSHD_OPTS \\\n  -o \"Foo bar\"\n\
                    ExecReload=/bin/kill -HUP $MAINPID\n\
                    KillMode=process\nRestart=on-failure\nType=notify\nRuntimeDirectory=sshd\n\
                    LimitNOFILE=4096\nProtectSystem=full\nTimeoutStartSec=5\n";
        let s = parse(text).unwrap();
        assert_eq!(s.program, "/usr/sbin/sshd");
        assert_eq!(s.args, "-D $SSHD_OPTS  -o \"Foo bar\"");
        let keys: Vec<&str> = s.settings.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "EnvironmentFile",
                "ExecStartPre",
                "ExecReload",
                "Type",
                "RuntimeDirectory",
                "LimitNOFILE",
                "ProtectSystem"
            ]
        );
    }

    #[test]
    fn argv0_prefix_and_resets() {
        let s = parse("[Service]\nExecStart=@/usr/bin/daemon daemon-name --x\nExecStart=\nExecStart=/bin/real --y\nEnvironment=A=1\nEnvironment=\nEnvironment=B=2\n").unwrap();
        assert_eq!((s.program.as_str(), s.args.as_str()), ("/bin/real", "--y"));
        assert_eq!(
            s.settings,
            [("Environment".to_owned(), String::new()), ("Environment".to_owned(), "B=2".to_owned())]
        );
        let s = parse("[Service]\nExecStart=@/usr/bin/daemon daemon-name --x\n").unwrap();
        assert_eq!((s.program.as_str(), s.args.as_str()), ("/usr/bin/daemon", "--x"));
    }

    #[test]
    fn unusable_units() {
        assert_eq!(parse("[Service]\nUser=x\n"), Err(UnitFileError::NoExecStart));
        assert_eq!(parse("[Unit]\nExecStart=/bin/x\n"), Err(UnitFileError::NoExecStart));
        assert_eq!(
            parse("[Service]\nType=oneshot\nExecStart=/bin/a\nExecStart=/bin/b\n"),
            Err(UnitFileError::SeveralExecStart(2))
        );
        assert!(matches!(parse("[Service]\nExecStart=relative --x\n"), Err(UnitFileError::Program(_))));
        assert!(matches!(parse("[Service]\nExecStart=${PROG} --x\n"), Err(UnitFileError::Program(_))));
    }
}

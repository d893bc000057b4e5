//! The tables behind [`super`]: the hardening profile, the capability sets, the paths no
//! confined pod may reach, and how strict a setting's value is (pure).

/// The default hardening profile: what a typical Debian daemon (uptimed, nginx) and a plain
/// binary still run with. `SystemCallFilter=@system-service` is the `RuntimeDefault` seccomp
/// profile (with `EPERM` for what it blocks, as container runtimes return).
pub const PROFILE: &[(&str, &str)] = &[
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectSystem", "full"),
    ("ProtectHome", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictNamespaces", "yes"),
    ("LockPersonality", "yes"),
    ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallErrorNumber", "EPERM"),
];

/// The seccomp settings (`RuntimeDefault`), a subset of [`PROFILE`].
pub(super) const SECCOMP: &[&str] = &["SystemCallFilter", "SystemCallErrorNumber", "SystemCallArchitectures"];
/// Settings whose package value replaces the profile's instead of the stricter one winning.
pub(super) const PACKAGE_LISTS: &[&str] =
    &["SystemCallFilter", "RestrictAddressFamilies", "RestrictNamespaces", "SystemCallArchitectures"];

/// The capability bounding set of a container: containerd's and CRI-O's default set without
/// `CAP_KILL` (without a PID namespace it would let a root container signal every process of
/// the node).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
];

/// Every capability Linux knows, in bit order.
pub(super) const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Paths of the node no confined pod may reach, besides vks's own (`NodePolicy::protected_paths`):
/// D-Bus and systemd's private socket (the control interfaces), unit files (other pods'
/// environment), and the journal files (other pods' logs).
pub(super) const CONTROL_PATHS: &[&str] = &[
    "/run/dbus/system_bus_socket",
    "/run/systemd/private",
    "/run/systemd/system",
    "/run/systemd/system.control",
    "/run/systemd/transient",
    "/run/log/journal",
    "/var/log/journal",
];

/// Strictness of a value of a setting of [`PROFILE`]; `None` for settings that are not ordered.
pub(super) fn rank(key: &str, value: &str) -> Option<u8> {
    let v = value.trim().to_ascii_lowercase();
    let b = |v: &str| match v {
        "yes" | "true" | "on" | "1" => Some(1),
        "no" | "false" | "off" | "0" | "" => Some(0),
        _ => None,
    };
    match key {
        "ProtectSystem" => match v.as_str() {
            "strict" => Some(3),
            "full" => Some(2),
            _ => b(&v),
        },
        "ProtectHome" => match v.as_str() {
            "tmpfs" => Some(2),
            "read-only" => Some(1),
            _ => b(&v).map(|r| r * 3),
        },
        "ProtectProc" => match v.as_str() {
            "noaccess" => Some(3),
            "invisible" => Some(2),
            "ptraceable" => Some(1),
            _ => Some(0),
        },
        k if PACKAGE_LISTS.contains(&k) || k == "SystemCallErrorNumber" => None,
        _ => b(&v),
    }
}

pub(super) fn cap_index(name: &str) -> Option<usize> {
    let up = name.trim().to_ascii_uppercase();
    let full = if up.starts_with("CAP_") { up } else { format!("CAP_{up}") };
    ALL_CAPS.iter().position(|c| *c == full)
}

pub(super) fn mask_of(names: &[&str]) -> u64 {
    names.iter().filter_map(|n| cap_index(n)).fold(0, |m, i| m | (1 << i))
}

pub(super) const ALL_MASK: u64 = (1u64 << 41) - 1;

/// The set a package's `CapabilityBoundingSet=`/`AmbientCapabilities=` lines give, as systemd
/// 252 reads them (`config_parse_capability_set`): an empty line resets to none, `~` inverts,
/// the first line replaces the initial set and later lines are OR'd in. `None` without lines.
pub(super) fn package_caps(base: &[(String, String)], key: &str, initial: u64) -> Option<u64> {
    let mut set: Option<u64> = None;
    for (_, v) in base.iter().filter(|(k, _)| k == key) {
        let v = v.trim();
        let (invert, list) = match v.strip_prefix('~') {
            Some(r) => (true, r),
            None => (false, v),
        };
        let sum = list.split_whitespace().filter_map(cap_index).fold(0u64, |m, i| m | (1 << i));
        let sum = if invert { !sum & ALL_MASK } else { sum };
        let cur = set.unwrap_or(initial);
        set = Some(if sum == 0 || cur == initial { sum } else { cur | sum });
    }
    set
}

pub(super) fn cap_list(mask: u64) -> String {
    ALL_CAPS.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, c)| *c).collect::<Vec<_>>().join(" ")
}

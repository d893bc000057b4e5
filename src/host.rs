//! Facts about the host machine: identity, OS, capacity and current usage.
//!
//! [`HostFacts::read`] is the only function here that touches the system (/proc, /sys, /etc,
//! statvfs, getifaddrs); the parsers it uses are pure and unit-tested on fixture text, and the
//! node status is computed from a `HostFacts` value, so tests build one by hand.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result, anyhow};

/// One reading of the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    /// The kernel's host name.
    pub hostname: String,
    /// `PRETTY_NAME` of /etc/os-release.
    pub os_image: String,
    /// `uname -r`.
    pub kernel_version: String,
    /// /etc/machine-id.
    pub machine_id: String,
    /// /proc/sys/kernel/random/boot_id.
    pub boot_id: String,
    /// DMI product UUID when readable, else the machine id.
    pub system_uuid: String,
    /// Kubernetes architecture name (`amd64`, `arm64`, ...).
    pub architecture: String,
    /// Online CPUs.
    pub cpus: u64,
    /// MemTotal, bytes.
    pub memory_total: u64,
    /// MemAvailable, bytes.
    pub memory_available: u64,
    /// Size of the file system holding the state directory, bytes.
    pub fs_total: u64,
    /// Space available to unprivileged users on it, bytes.
    pub fs_available: u64,
    /// Inodes of that file system.
    pub fs_inodes: u64,
    /// Free inodes of that file system.
    pub fs_inodes_free: u64,
    /// kernel.pid_max.
    pub pid_max: u64,
    /// Tasks (threads) currently existing.
    pub pids_used: u64,
}

impl HostFacts {
    /// Reads everything; `state_dir` selects the file system reported as node storage.
    pub fn read(state_dir: &Path) -> Result<HostFacts> {
        let read = |p: &str| std::fs::read_to_string(p).with_context(|| format!("reading {p}"));
        let meminfo = read("/proc/meminfo")?;
        let (memory_total, memory_available) = parse_meminfo(&meminfo)?;
        let fs_dir = existing_ancestor(state_dir);
        let vfs = nix::sys::statvfs::statvfs(fs_dir).with_context(|| format!("statvfs {}", fs_dir.display()))?;
        let frsize = vfs.fragment_size() as u64;
        let machine_id = read("/etc/machine-id").map(|s| s.trim().to_owned()).unwrap_or_default();
        let system_uuid = std::fs::read_to_string("/sys/class/dmi/id/product_uuid")
            .map(|s| s.trim().to_lowercase())
            .unwrap_or_else(|_| machine_id.clone());
        Ok(HostFacts {
            hostname: nix::unistd::gethostname().context("reading the host name")?.to_string_lossy().into_owned(),
            os_image: parse_os_release(&read("/etc/os-release").unwrap_or_default()),
            kernel_version: read("/proc/sys/kernel/osrelease")?.trim().to_owned(),
            boot_id: read("/proc/sys/kernel/random/boot_id")?.trim().to_owned(),
            machine_id,
            system_uuid,
            architecture: kube_arch(std::env::consts::ARCH).to_owned(),
            cpus: read("/sys/devices/system/cpu/online")
                .ok()
                .and_then(|s| count_cpu_list(&s))
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64)),
            memory_total,
            memory_available,
            fs_total: vfs.blocks() as u64 * frsize,
            fs_available: vfs.blocks_available() as u64 * frsize,
            fs_inodes: vfs.files() as u64,
            fs_inodes_free: vfs.files_available() as u64,
            pid_max: read("/proc/sys/kernel/pid_max")?.trim().parse().context("parsing kernel.pid_max")?,
            pids_used: parse_loadavg_tasks(&read("/proc/loadavg")?)?,
        })
    }
}

/// Reads only the host name (the default node name), before the config is validated.
pub fn hostname() -> String {
    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
}

fn existing_ancestor(p: &Path) -> &Path {
    p.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"))
}

/// Maps Rust's `target_arch` to Kubernetes' (Go's) architecture names.
pub fn kube_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

fn parse_meminfo(text: &str) -> Result<(u64, u64)> {
    let field = |name: &str| -> Result<u64> {
        let line = text
            .lines()
            .find(|l| l.split(':').next() == Some(name))
            .ok_or_else(|| anyhow!("/proc/meminfo has no {name}"))?;
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("/proc/meminfo: cannot parse {line:?}"))?;
        Ok(kb * 1024)
    };
    Ok((field("MemTotal")?, field("MemAvailable")?))
}

fn parse_os_release(text: &str) -> String {
    let get = |key: &str| {
        text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(|v| v.trim().trim_matches('"').to_owned()))
    };
    get("PRETTY_NAME").or_else(|| get("NAME")).unwrap_or_else(|| "Linux".to_owned())
}

fn count_cpu_list(text: &str) -> Option<u64> {
    let mut n = 0;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => n += b.parse::<u64>().ok()?.checked_sub(a.parse().ok()?)? + 1,
            None => {
                part.parse::<u64>().ok()?;
                n += 1
            }
        }
    }
    (n > 0).then_some(n)
}

fn parse_loadavg_tasks(text: &str) -> Result<u64> {
    // "0.00 0.01 0.05 1/123 4567": the fourth field is running/total scheduling entities.
    text.split_whitespace()
        .nth(3)
        .and_then(|f| f.split_once('/'))
        .and_then(|(_, total)| total.parse().ok())
        .ok_or_else(|| anyhow!("cannot parse /proc/loadavg: {text:?}"))
}

/// How the node IP is found when `node.internal_ip` is not set (documented in config/vks.toml):
/// the first IPv4 address of the interface holding the IPv4 default route (lowest metric); else
/// the first global IPv6 address of the IPv6 default route's interface; else the first address
/// that is neither loopback nor link-local, IPv4 before IPv6.
pub fn detect_node_ip() -> Result<IpAddr> {
    let addrs: Vec<(String, IpAddr)> = nix::ifaddrs::getifaddrs()
        .context("listing network interfaces")?
        .filter_map(|ifa| {
            let a = ifa.address?;
            let ip = if let Some(v4) = a.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else {
                IpAddr::V6(a.as_sockaddr_in6()?.ip())
            };
            Some((ifa.interface_name, ip))
        })
        .collect();
    let v4_route = std::fs::read_to_string("/proc/net/route").ok().and_then(|t| default_route_iface_v4(&t));
    let v6_route = std::fs::read_to_string("/proc/net/ipv6_route").ok().and_then(|t| default_route_iface_v6(&t));
    choose_node_ip(&addrs, v4_route.as_deref(), v6_route.as_deref())
        .ok_or_else(|| anyhow!("cannot detect the node IP (no default route, no global address): set node.internal_ip"))
}

fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80,
    }
}

fn choose_node_ip(addrs: &[(String, IpAddr)], v4_iface: Option<&str>, v6_iface: Option<&str>) -> Option<IpAddr> {
    let on = |iface: &str, v4: bool| {
        addrs.iter().find(|(n, ip)| n == iface && ip.is_ipv4() == v4 && usable(ip)).map(|(_, ip)| *ip)
    };
    v4_iface
        .and_then(|i| on(i, true))
        .or_else(|| v6_iface.and_then(|i| on(i, false)))
        .or_else(|| addrs.iter().find(|(_, ip)| ip.is_ipv4() && usable(ip)).map(|(_, ip)| *ip))
        .or_else(|| addrs.iter().find(|(_, ip)| usable(ip)).map(|(_, ip)| *ip))
}

fn default_route_iface_v4(route: &str) -> Option<String> {
    // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
    route
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000")
                .then(|| (f[6].parse::<u64>().unwrap_or(u64::MAX), f[0]))
        })
        .min()
        .map(|(_, iface)| iface.to_owned())
}

fn default_route_iface_v6(route: &str) -> Option<String> {
    // dest dest_plen src src_plen nexthop metric refcnt use flags iface
    route
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let default = f.len() == 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo";
            default.then(|| (u64::from_str_radix(f[5], 16).unwrap_or(u64::MAX), f[9]))
        })
        .min()
        .map(|(_, iface)| iface.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo() {
        let t = "MemTotal:       16384000 kB\nMemFree:  100 kB\nMemAvailable:    8192000 kB\n";
        assert_eq!(parse_meminfo(t).unwrap(), (16_384_000 * 1024, 8_192_000 * 1024));
        assert!(parse_meminfo("MemTotal: 1 kB\n").is_err());
    }

    #[test]
    fn os_release() {
        let t = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n";
        assert_eq!(parse_os_release(t), "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(parse_os_release("NAME=Foo\n"), "Foo");
        assert_eq!(parse_os_release(""), "Linux");
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0,2-3,7"), Some(4));
        assert_eq!(count_cpu_list("x"), None);
    }

    #[test]
    fn loadavg() {
        assert_eq!(parse_loadavg_tasks("0.00 0.01 0.05 1/123 4567\n").unwrap(), 123);
        assert!(parse_loadavg_tasks("garbage").is_err());
    }

    #[test]
    fn default_routes() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth1\t00000000\t0101A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
                  eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                  eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_route_iface_v4(v4).as_deref(), Some("eth0"));
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n";
        assert_eq!(default_route_iface_v6(v6).as_deref(), Some("eth0"));
    }

    #[test]
    fn node_ip_rule() {
        let a = |n: &str, s: &str| (n.to_owned(), s.parse::<IpAddr>().unwrap());
        let addrs = vec![
            a("lo", "127.0.0.1"),
            a("eth0", "fe80::1"),
            a("eth0", "2001:db8::5"),
            a("eth1", "192.168.1.5"),
            a("eth0", "10.0.0.5"),
        ];
        assert_eq!(choose_node_ip(&addrs, Some("eth0"), None), Some(a("", "10.0.0.5").1));
        assert_eq!(choose_node_ip(&addrs, None, Some("eth0")), Some(a("", "2001:db8::5").1));
        assert_eq!(choose_node_ip(&addrs, None, None), Some(a("", "192.168.1.5").1));
        assert_eq!(choose_node_ip(&[a("lo", "127.0.0.1"), a("eth0", "fe80::1")], None, None), None);
    }

    #[test]
    fn reads_this_host() {
        let f = HostFacts::read(Path::new("/nonexistent/dir")).unwrap();
        assert!(f.cpus >= 1 && f.memory_total > 0 && f.fs_total > 0 && f.pid_max > 0);
        assert!(f.memory_available <= f.memory_total);
        assert!(!f.kernel_version.is_empty());
    }
}

//! Which TCP ports a pod owns, for port-forward. vks pods use the node's network, so "the pod's
//! port" is a port on the node; vks forwards only to a port on which a process of the pod's own
//! units listens (found through the sockets those processes hold, matched by inode against the
//! node's `/proc/net/tcp` and `tcp6`), and connects to the address that listener is bound to —
//! the loopback address of its family for a wildcard bind. Any other port of the node (vks's
//! own, sshd, another pod's) is refused.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// A listening TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// Bound address and port.
    pub addr: SocketAddr,
    /// Socket inode.
    pub inode: u64,
}

const LISTEN: &str = "0A";

fn hex_addr(s: &str, v6: bool) -> Option<IpAddr> {
    if v6 {
        if s.len() != 32 {
            return None;
        }
        // Four 32-bit words, each printed in the kernel's byte order.
        let mut bytes = [0u8; 16];
        for (i, chunk) in bytes.chunks_mut(4).enumerate() {
            let word = u32::from_str_radix(s.get(i * 8..i * 8 + 8)?, 16).ok()?;
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        Some(IpAddr::V6(Ipv6Addr::from(bytes)))
    } else {
        Some(IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(s, 16).ok()?.to_ne_bytes())))
    }
}

/// The listening sockets in the text of `/proc/net/tcp` (or `tcp6` with `v6`).
pub fn parse_proc_net_tcp(text: &str, v6: bool) -> Vec<Listener> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) != Some(&LISTEN) {
                return None;
            }
            let (addr, port) = f.get(1)?.split_once(':')?;
            let ip = hex_addr(addr, v6)?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let inode = f.get(9)?.parse().ok()?;
            Some(Listener { addr: SocketAddr::new(ip, port), inode })
        })
        .collect()
}

/// The socket inodes process `pid` holds (`/proc/<pid>/fd/*` -> `socket:[N]`).
pub fn socket_inodes(proc: &Path, pid: u32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(proc.join(pid.to_string()).join("fd")) else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// The node's listening TCP sockets (`/proc/net/tcp` and `tcp6` under `proc`).
pub fn listeners(proc: &Path) -> Vec<Listener> {
    let read = |f: &str| std::fs::read_to_string(proc.join("net").join(f)).unwrap_or_default();
    let mut all = parse_proc_net_tcp(&read("tcp"), false);
    all.extend(parse_proc_net_tcp(&read("tcp6"), true));
    all
}

/// The addresses to connect to for `port` if one of `pids` listens on it, most specific first;
/// empty when none of them does.
pub fn targets(proc: &Path, pids: &[u32], port: u16) -> Vec<SocketAddr> {
    let owned: HashSet<u64> = pids.iter().flat_map(|p| socket_inodes(proc, *p)).collect();
    let mut out = Vec::new();
    for l in listeners(proc).into_iter().filter(|l| l.addr.port() == port && owned.contains(&l.inode)) {
        let ips: Vec<IpAddr> = match l.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => vec![Ipv4Addr::LOCALHOST.into()],
            // A wildcard IPv6 listener usually takes IPv4 too.
            IpAddr::V6(ip) if ip.is_unspecified() => vec![Ipv6Addr::LOCALHOST.into(), Ipv4Addr::LOCALHOST.into()],
            ip => vec![ip],
        };
        for ip in ips {
            let a = SocketAddr::new(ip, port);
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_listeners_are_read() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 20 4 30 10 -1
";
        let l = parse_proc_net_tcp(v4, false);
        assert_eq!(
            l,
            [
                Listener { addr: "127.0.0.1:8080".parse().unwrap(), inode: 4242 },
                Listener { addr: "0.0.0.0:80".parse().unwrap(), inode: 4343 },
            ]
        );
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5151 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(parse_proc_net_tcp(v6, true), [Listener { addr: "[::1]:8080".parse().unwrap(), inode: 5151 }]);
    }

    #[tokio::test]
    async fn only_ports_the_given_processes_listen_on_are_targets() {
        let mine = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = mine.local_addr().unwrap().port();
        let proc = Path::new("/proc");
        assert_eq!(
            targets(proc, &[std::process::id()], port),
            ["127.0.0.1:0".parse::<SocketAddr>().unwrap()].map(|mut a| {
                a.set_port(port);
                a
            })
        );
        // Not a process of the pod: refused.
        assert!(targets(proc, &[1], port).is_empty());
        assert!(targets(proc, &[std::process::id()], port.wrapping_add(1)).is_empty());
    }
}

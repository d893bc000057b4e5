//! `/stats/summary` and `/metrics/resource`: resource usage of the node, its pods and their
//! containers.
//!
//! Sources: the containers are vks's units (their `[X-Kubernetes]` section names pod and
//! container; systemd gives the main process and start time); each running unit's cgroup
//! files give CPU, memory and tasks (`cgroup.rs`); a pod is the sum of its containers plus the
//! disk usage of its directory (`<paths.pod_dir>/<uid>`, walked at most once a minute); the
//! node is `/proc/stat`, `/proc/meminfo` and the file system of `paths.state_dir`.
//! `usageNanoCores` is the rate since the previous request (absent on the first one).

pub mod cgroup;
pub mod resource;
mod summary;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use self::cgroup::{Cgroups, Usage};
use crate::systemd::Systemd;
use crate::unit::meta::UnitMeta;

pub use summary::Summary;

/// How long a pod directory's measured size is reused.
const FS_CACHE: Duration = Duration::from_secs(60);
/// Entries walked at most per pod directory.
const FS_WALK_LIMIT: u64 = 1_000_000;

/// One container's reading.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSample {
    /// Container name.
    pub name: String,
    /// When its main process started.
    pub start: SystemTime,
    /// Its cgroup's usage.
    pub usage: Usage,
}

/// Disk usage of a directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirUsage {
    /// Bytes allocated.
    pub bytes: u64,
    /// Inodes.
    pub inodes: u64,
}

/// One pod's reading.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSample {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Its running containers.
    pub containers: Vec<ContainerSample>,
    /// Its directory, when it has one.
    pub dir: Option<DirUsage>,
}

impl PodSample {
    /// The sum of its containers.
    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        for c in &self.containers {
            u.add(&c.usage);
        }
        u
    }

    /// When its first container started.
    pub fn start(&self) -> Option<SystemTime> {
        self.containers.iter().map(|c| c.start).min()
    }
}

/// The node's reading.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSample {
    /// Boot time.
    pub start: SystemTime,
    /// CPU time used by everything, ns.
    pub cpu_ns: u64,
    /// MemTotal, bytes.
    pub memory_total: u64,
    /// MemAvailable, bytes.
    pub memory_available: u64,
    /// MemTotal - MemFree, bytes.
    pub memory_usage: u64,
    /// Anonymous pages, bytes.
    pub memory_rss: u64,
    /// File system of the state directory: total, available, inodes, free inodes.
    pub fs: (u64, u64, u64, u64),
    /// kernel.pid_max and tasks in use.
    pub pids: (u64, u64),
}

/// Everything measured at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When.
    pub time: SystemTime,
    /// The node.
    pub node: NodeSample,
    /// The pods with at least one running container (or a directory).
    pub pods: Vec<PodSample>,
}

/// `/proc/stat`: (busy CPU time in clock ticks, boot time in seconds).
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let mut busy = None;
    let mut btime = None;
    for l in text.lines() {
        let mut f = l.split_ascii_whitespace();
        match f.next() {
            Some("cpu") => {
                let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal (guest time is inside user)
                let get = |i: usize| v.get(i).copied().unwrap_or(0);
                busy = Some(get(0) + get(1) + get(2) + get(5) + get(6) + get(7));
            }
            Some("btime") => btime = f.next().and_then(|x| x.parse().ok()),
            _ => {}
        }
    }
    Some((busy?, btime?))
}

/// `/proc/meminfo` value in bytes.
fn meminfo(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Disk usage of `dir` (not following symbolic links, not leaving its file system).
pub fn dir_usage(dir: &Path) -> Option<DirUsage> {
    use std::os::unix::fs::MetadataExt;
    let top = std::fs::symlink_metadata(dir).ok()?;
    let dev = top.dev();
    let mut u = DirUsage { bytes: top.blocks() * 512, inodes: 1 };
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            u.inodes += 1;
            u.bytes += m.blocks() * 512;
            if m.is_dir() && m.dev() == dev {
                stack.push(e.path());
            }
            if u.inodes >= FS_WALK_LIMIT {
                return Some(u);
            }
        }
    }
    Some(u)
}

/// The collector behind both endpoints.
pub struct Stats {
    systemd: Arc<dyn Systemd>,
    cgroups: Cgroups,
    node_name: String,
    state_dir: PathBuf,
    pod_dir: PathBuf,
    /// Previous CPU readings, for rates: key → (time, ns).
    cpu: Mutex<HashMap<String, (SystemTime, u64)>>,
    /// Pod directory sizes: uid → (measured at, usage).
    dirs: Mutex<HashMap<String, (SystemTime, Option<DirUsage>)>>,
}

impl Stats {
    /// Reads the cgroups under `cgroup_root` (normally `/sys/fs/cgroup`).
    pub fn new(
        systemd: Arc<dyn Systemd>,
        cgroup_root: &Path,
        node_name: String,
        state_dir: PathBuf,
        pod_dir: PathBuf,
    ) -> Stats {
        let cgroups = Cgroups::new(cgroup_root);
        log::info!("kubelet API: stats from the {:?} cgroup layout under {}", cgroups.layout(), cgroup_root.display());
        Stats {
            systemd,
            cgroups,
            node_name,
            state_dir,
            pod_dir,
            cpu: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
        }
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Measures everything (`with_dirs`: also the pod directories, for the summary).
    pub async fn sample(&self, with_dirs: bool) -> anyhow::Result<Sample> {
        let time = SystemTime::now();
        let pods = self.pods(with_dirs, time).await?;
        let state_dir = self.state_dir.clone();
        let node = tokio::task::spawn_blocking(move || read_node(&state_dir))
            .await
            .map_err(|e| anyhow::anyhow!("reading the node's usage panicked: {e}"))??;
        Ok(Sample { time, node, pods })
    }

    async fn pods(&self, with_dirs: bool, now: SystemTime) -> anyhow::Result<Vec<PodSample>> {
        // systemd first (D-Bus), then every cgroup file in one blocking task.
        let names = self.systemd.list_unit_files(crate::unit::name::PREFIX).await?;
        let mut units = Vec::with_capacity(names.len());
        for unit in names {
            let Ok(Some(file)) = self.systemd.read_unit_file(&unit).await else { continue };
            let Some(meta) = UnitMeta::parse(&file) else { continue };
            let Ok(status) = self.systemd.status(&unit).await else { continue };
            units.push((unit, file, meta, status));
        }
        let cgroups = self.cgroups.clone();
        let measured = tokio::task::spawn_blocking(move || {
            units
                .into_iter()
                .filter_map(|(unit, file, meta, status)| {
                    let cgroup = (status.main_pid != 0)
                        .then(|| std::fs::read_to_string(format!("/proc/{}/cgroup", status.main_pid)).ok())
                        .flatten()
                        .and_then(|t| cgroup::process_cgroup(&t))
                        .unwrap_or_else(|| cgroup::unit_cgroup(&cgroup::unit_slice(&file), &unit));
                    let usage = cgroups.usage(&cgroup);
                    // No processes: nothing to measure.
                    (usage != Usage::default()).then_some((meta, status.started_usec, usage))
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| anyhow::anyhow!("reading the cgroups panicked: {e}"))?;
        let mut pods: BTreeMap<(String, String, String), Vec<ContainerSample>> = BTreeMap::new();
        for (meta, started_usec, usage) in measured {
            let start = SystemTime::UNIX_EPOCH + Duration::from_micros(started_usec);
            pods.entry((meta.namespace, meta.pod, meta.pod_uid)).or_default().push(ContainerSample {
                name: meta.container,
                start,
                usage,
            });
        }
        let mut out = Vec::with_capacity(pods.len());
        for ((namespace, name, uid), containers) in pods {
            let dir = if with_dirs { self.dir_usage(&uid, now).await } else { None };
            out.push(PodSample { namespace, name, uid, containers, dir });
        }
        Ok(out)
    }

    async fn dir_usage(&self, uid: &str, now: SystemTime) -> Option<DirUsage> {
        if let Some((at, u)) = self.dirs.lock().unwrap_or_else(|e| e.into_inner()).get(uid)
            && now.duration_since(*at).is_ok_and(|d| d < FS_CACHE)
        {
            return *u;
        }
        let dir = self.pod_dir.join(uid);
        let u = tokio::task::spawn_blocking(move || dir_usage(&dir)).await.ok().flatten();
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        dirs.retain(|_, (at, _)| now.duration_since(*at).is_ok_and(|d| d < FS_CACHE * 10));
        dirs.insert(uid.to_owned(), (now, u));
        u
    }

    /// CPU rate of `key` (nanocores) since its previous reading, if that is at least a second
    /// old; the reading is kept as the next base only then, so frequent requests share a base.
    pub fn rate(&self, key: &str, now: SystemTime, cpu_ns: u64) -> Option<u64> {
        let mut m = self.cpu.lock().unwrap_or_else(|e| e.into_inner());
        let prev = m.get(key).copied();
        let rate = prev.and_then(|(at, ns)| {
            let dt = now.duration_since(at).ok()?;
            (dt >= Duration::from_secs(1)).then(|| (cpu_ns.saturating_sub(ns) as f64 / dt.as_secs_f64()) as u64)
        });
        let stale = prev.is_none_or(|(at, _)| now.duration_since(at).is_ok_and(|d| d >= Duration::from_secs(1)));
        if stale {
            m.insert(key.to_owned(), (now, cpu_ns));
        }
        if m.len() > 10_000 {
            m.retain(|_, (at, _)| now.duration_since(*at).is_ok_and(|d| d < Duration::from_secs(600)));
        }
        rate
    }
}

fn read_node(state_dir: &Path) -> anyhow::Result<NodeSample> {
    use anyhow::Context;
    let facts = crate::host::HostFacts::read(state_dir)?;
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let (busy, btime) = parse_proc_stat(&stat).context("parsing /proc/stat")?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().filter(|h| *h > 0).unwrap_or(100);
    let mem = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    Ok(NodeSample {
        start: SystemTime::UNIX_EPOCH + Duration::from_secs(btime),
        cpu_ns: busy.saturating_mul(1_000_000_000 / hz as u64),
        memory_total: facts.memory_total,
        memory_available: facts.memory_available,
        memory_usage: facts.memory_total.saturating_sub(meminfo(&mem, "MemFree")),
        memory_rss: meminfo(&mem, "AnonPages"),
        fs: (facts.fs_total, facts.fs_available, facts.fs_inodes, facts.fs_inodes_free),
        pids: (facts.pid_max, facts.pids_used),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_and_meminfo() {
        let stat = "cpu  425756 10 79558 16867 609 1 550 2687 5 0\ncpu0 1 2 3\nbtime 1714557600\n";
        assert_eq!(parse_proc_stat(stat), Some((425756 + 10 + 79558 + 1 + 550 + 2687, 1714557600)));
        assert_eq!(parse_proc_stat("cpu 1 2 3\n"), None);
        let mem = "MemTotal:       16384000 kB\nMemFree:  1000 kB\nAnonPages:   20 kB\n";
        assert_eq!(meminfo(mem, "MemFree"), 1_024_000);
        assert_eq!(meminfo(mem, "AnonPages"), 20 * 1024);
        assert_eq!(meminfo(mem, "Nope"), 0);
    }

    #[test]
    fn measures_a_directory() {
        let d = std::env::temp_dir().join(format!("vks-du-{}", std::process::id()));
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/f"), vec![1u8; 10_000]).unwrap();
        let u = dir_usage(&d).unwrap();
        assert_eq!(u.inodes, 3);
        assert!(u.bytes >= 10_000, "{u:?}");
        assert_eq!(dir_usage(&d.join("missing")), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn cpu_rates_need_a_second() {
        let s = Stats::new(
            Arc::new(crate::systemd::fake::FakeSystemd::default()),
            Path::new("/nonexistent"),
            "n1".into(),
            "/tmp".into(),
            "/tmp".into(),
        );
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(s.rate("c", t0, 1_000_000_000), None);
        assert_eq!(s.rate("c", t0 + Duration::from_millis(500), 1_200_000_000), None, "too soon");
        assert_eq!(s.rate("c", t0 + Duration::from_secs(2), 2_000_000_000), Some(500_000_000), "half a core");
    }
}

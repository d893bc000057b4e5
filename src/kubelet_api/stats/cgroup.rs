//! Resource usage of a cgroup from the cgroup files, on the unified (v2) layout Debian 12 uses
//! by default and on the hybrid (v1 controllers + cgroup2 at `unified/`) layout of older or
//! differently booted hosts. systemd's `CPUUsageNSec` is not used: on hybrid hosts whose `cpu`
//! and `cpuacct` are mounted apart it is never set, while cgroup2's `cpu.stat` (a core file,
//! present without any controller) always has `usage_usec`.
//!
//! Memory "working set" is usage minus inactive file pages, as cAdvisor (and so the kubelet)
//! computes it.

use std::path::{Path, PathBuf};

/// Which cgroup layout the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// cgroup2 only, at the root.
    Unified,
    /// cgroup v1 controllers, cgroup2 at `unified/`.
    Hybrid,
    /// cgroup v1 only.
    Legacy,
}

/// Usage of one cgroup; `None` where the host does not tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used, ns.
    pub cpu_ns: Option<u64>,
    /// Memory charged, bytes.
    pub memory_bytes: Option<u64>,
    /// Memory usage minus inactive file pages, bytes.
    pub working_set_bytes: Option<u64>,
    /// Anonymous memory (and swap cache), bytes.
    pub rss_bytes: Option<u64>,
    /// Page faults.
    pub page_faults: Option<u64>,
    /// Major page faults.
    pub major_page_faults: Option<u64>,
    /// Tasks (threads).
    pub tasks: Option<u64>,
}

impl Usage {
    /// Adds `other` to `self` (a pod is the sum of its containers).
    pub fn add(&mut self, other: &Usage) {
        fn sum(a: &mut Option<u64>, b: Option<u64>) {
            if let Some(b) = b {
                *a = Some(a.unwrap_or(0) + b);
            }
        }
        sum(&mut self.cpu_ns, other.cpu_ns);
        sum(&mut self.memory_bytes, other.memory_bytes);
        sum(&mut self.working_set_bytes, other.working_set_bytes);
        sum(&mut self.rss_bytes, other.rss_bytes);
        sum(&mut self.page_faults, other.page_faults);
        sum(&mut self.major_page_faults, other.major_page_faults);
        sum(&mut self.tasks, other.tasks);
    }
}

/// `key value` lines (cpu.stat, memory.stat): the value of `key`.
pub fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

/// The cgroup file systems under a root (normally `/sys/fs/cgroup`).
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
    layout: Layout,
}

impl Cgroups {
    /// Detects the layout under `root`.
    pub fn new(root: &Path) -> Cgroups {
        let layout = if root.join("cgroup.controllers").exists() {
            Layout::Unified
        } else if root.join("unified/cgroup.procs").exists() {
            Layout::Hybrid
        } else {
            Layout::Legacy
        };
        Cgroups { root: root.to_owned(), layout }
    }

    /// The detected layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    fn v1(&self, controller: &str, cgroup: &str) -> PathBuf {
        self.root.join(controller).join(cgroup.trim_start_matches('/'))
    }

    /// Usage of `cgroup` (a path like `/system.slice/x.service`). A cgroup that does not exist
    /// (its processes are gone) has no usage at all.
    pub fn usage(&self, cgroup: &str) -> Usage {
        let rel = cgroup.trim_start_matches('/');
        match self.layout {
            Layout::Unified => {
                let dir = self.root.join(rel);
                let mem = read(&dir.join("memory.stat")).unwrap_or_default();
                let current = read_u64(&dir.join("memory.current"));
                Usage {
                    cpu_ns: read(&dir.join("cpu.stat")).and_then(|t| stat_value(&t, "usage_usec")).map(|u| u * 1000),
                    memory_bytes: current,
                    working_set_bytes: current
                        .map(|c| c.saturating_sub(stat_value(&mem, "inactive_file").unwrap_or(0))),
                    rss_bytes: stat_value(&mem, "anon"),
                    page_faults: stat_value(&mem, "pgfault"),
                    major_page_faults: stat_value(&mem, "pgmajfault"),
                    tasks: read_u64(&dir.join("pids.current")),
                }
            }
            Layout::Hybrid | Layout::Legacy => {
                let cpu_ns = match self.layout {
                    Layout::Hybrid => read(&self.root.join("unified").join(rel).join("cpu.stat"))
                        .and_then(|t| stat_value(&t, "usage_usec"))
                        .map(|u| u * 1000),
                    _ => None,
                }
                .or_else(|| read_u64(&self.v1("cpuacct", cgroup).join("cpuacct.usage")))
                .or_else(|| read_u64(&self.v1("cpu,cpuacct", cgroup).join("cpuacct.usage")));
                let mem_dir = self.v1("memory", cgroup);
                let mem = read(&mem_dir.join("memory.stat")).unwrap_or_default();
                let current = read_u64(&mem_dir.join("memory.usage_in_bytes"));
                Usage {
                    cpu_ns,
                    memory_bytes: current,
                    working_set_bytes: current
                        .map(|c| c.saturating_sub(stat_value(&mem, "total_inactive_file").unwrap_or(0))),
                    rss_bytes: stat_value(&mem, "total_rss"),
                    page_faults: stat_value(&mem, "total_pgfault"),
                    major_page_faults: stat_value(&mem, "total_pgmajfault"),
                    tasks: read_u64(&self.v1("pids", cgroup).join("pids.current")),
                }
            }
        }
    }
}

/// The cgroup path of a process, from `/proc/<pid>/cgroup` text: the cgroup2 line (`0::`),
/// else the `name=systemd` one.
pub fn process_cgroup(proc_cgroup: &str) -> Option<String> {
    let mut named = None;
    for l in proc_cgroup.lines() {
        let mut f = l.splitn(3, ':');
        let (id, ctrl, path) = (f.next()?, f.next()?, f.next()?);
        if id == "0" && ctrl.is_empty() {
            return Some(path.to_owned());
        }
        if ctrl == "name=systemd" {
            named = Some(path.to_owned());
        }
    }
    named
}

/// Where systemd puts a unit in `slice` (`a-b.slice` is `/a.slice/a-b.slice`).
pub fn unit_cgroup(slice: &str, unit: &str) -> String {
    let mut path = String::new();
    if slice != "-.slice" {
        let stem = slice.strip_suffix(".slice").unwrap_or(slice);
        let mut prefix = String::new();
        for part in stem.split('-') {
            if !prefix.is_empty() {
                prefix.push('-');
            }
            prefix.push_str(part);
            path.push('/');
            path.push_str(&prefix);
            path.push_str(".slice");
        }
    }
    format!("{path}/{unit}")
}

/// The `Slice=` a unit file sets (the last one), default `system.slice`.
pub fn unit_slice(unit_file: &str) -> String {
    let mut in_service = false;
    let mut slice = None;
    for l in unit_file.lines() {
        let l = l.trim();
        if l.starts_with('[') {
            in_service = l == "[Service]";
        } else if in_service && let Some(v) = l.strip_prefix("Slice=") {
            slice = Some(v.trim().to_owned());
        }
    }
    slice.filter(|s| !s.is_empty()).unwrap_or_else(|| "system.slice".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vks-cg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn reads_the_unified_layout() {
        let root = tmp("v2");
        write(&root, "cgroup.controllers", "cpu memory pids\n");
        let u = "system.slice/vks.a.b.c.service";
        write(&root, &format!("{u}/cpu.stat"), "usage_usec 2500\nuser_usec 2000\n");
        write(&root, &format!("{u}/memory.current"), "10000\n");
        write(
            &root,
            &format!("{u}/memory.stat"),
            "anon 6000\nfile 4000\ninactive_file 3000\npgfault 7\npgmajfault 1\n",
        );
        write(&root, &format!("{u}/pids.current"), "3\n");
        let cg = Cgroups::new(&root);
        assert_eq!(cg.layout(), Layout::Unified);
        let got = cg.usage(&format!("/{u}"));
        assert_eq!(
            got,
            Usage {
                cpu_ns: Some(2_500_000),
                memory_bytes: Some(10000),
                working_set_bytes: Some(7000),
                rss_bytes: Some(6000),
                page_faults: Some(7),
                major_page_faults: Some(1),
                tasks: Some(3)
            }
        );
        assert_eq!(cg.usage("/system.slice/gone.service"), Usage::default());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn reads_the_hybrid_layout() {
        let root = tmp("hybrid");
        write(&root, "unified/cgroup.procs", "");
        let u = "system.slice/x.service";
        write(&root, &format!("unified/{u}/cpu.stat"), "usage_usec 1000\n");
        write(&root, &format!("memory/{u}/memory.usage_in_bytes"), "5000\n");
        write(&root, &format!("memory/{u}/memory.stat"), "cache 1\ntotal_rss 4000\ntotal_inactive_file 500\n");
        write(&root, &format!("pids/{u}/pids.current"), "1\n");
        let cg = Cgroups::new(&root);
        assert_eq!(cg.layout(), Layout::Hybrid);
        let got = cg.usage(&format!("/{u}"));
        assert_eq!(
            (got.cpu_ns, got.working_set_bytes, got.rss_bytes, got.tasks),
            (Some(1_000_000), Some(4500), Some(4000), Some(1))
        );
        // cpuacct when cgroup2 has nothing (legacy hosts, or cpuacct co-mounted)
        write(&root, "cpuacct/system.slice/y.service/cpuacct.usage", "42\n");
        assert_eq!(cg.usage("/system.slice/y.service").cpu_ns, Some(42));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn finds_a_units_cgroup() {
        let text =
            "12:pids:/system.slice/a.service\n1:name=systemd:/system.slice/a.service\n0::/system.slice/a.service\n";
        assert_eq!(process_cgroup(text).as_deref(), Some("/system.slice/a.service"));
        assert_eq!(process_cgroup("1:name=systemd:/x.slice/a.service\n").as_deref(), Some("/x.slice/a.service"));
        assert_eq!(unit_cgroup("system.slice", "u.service"), "/system.slice/u.service");
        assert_eq!(
            unit_cgroup("vks-pod-abc.slice", "u.service"),
            "/vks.slice/vks-pod.slice/vks-pod-abc.slice/u.service"
        );
        assert_eq!(unit_cgroup("-.slice", "u.service"), "/u.service");
        assert_eq!(unit_slice("[Unit]\nSlice=no.slice\n[Service]\nExecStart=/x\nSlice=vks-p.slice\n"), "vks-p.slice");
        assert_eq!(unit_slice("[Service]\nExecStart=/x\n"), "system.slice");
        let mut a = Usage { cpu_ns: Some(1), tasks: None, ..Usage::default() };
        a.add(&Usage { cpu_ns: Some(2), tasks: Some(3), ..Usage::default() });
        assert_eq!((a.cpu_ns, a.tasks, a.rss_bytes), (Some(3), Some(3), None));
    }
}

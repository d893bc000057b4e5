//! The `/stats/summary` document: the kubelet's `stats/v1alpha1` `Summary` (the fields vks can
//! fill; absent ones are left out, as the kubelet does when it does not know them).

use std::time::SystemTime;

use serde::Serialize;

use super::{NodeSample, PodSample, Sample, Stats};

/// RFC 3339 (seconds) as the API's `metav1.Time`.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `Summary`.
#[derive(Debug, Serialize)]
pub struct Summary {
    node: NodeStats,
    pods: Vec<PodStats>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeStats {
    node_name: String,
    start_time: String,
    cpu: CpuStats,
    memory: MemoryStats,
    fs: FsStats,
    runtime: RuntimeStats,
    rlimit: RlimitStats,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeStats {
    image_fs: FsStats,
}

#[derive(Debug, Serialize)]
struct RlimitStats {
    time: String,
    maxpid: u64,
    curproc: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CpuStats {
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage_nano_cores: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage_core_nano_seconds: Option<u64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MemoryStats {
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    available_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    working_set_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    page_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    major_page_faults: Option<u64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FsStats {
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    available_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    used_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inodes_free: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inodes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inodes_used: Option<u64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PodStats {
    pod_ref: PodRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_time: Option<String>,
    containers: Vec<ContainerStats>,
    cpu: CpuStats,
    memory: MemoryStats,
    #[serde(rename = "ephemeral-storage", skip_serializing_if = "Option::is_none")]
    ephemeral_storage: Option<FsStats>,
    #[serde(rename = "process_stats")]
    process_stats: ProcessStats,
}

#[derive(Debug, Serialize)]
struct PodRef {
    name: String,
    namespace: String,
    uid: String,
}

#[derive(Debug, Serialize)]
struct ProcessStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    process_count: Option<u64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStats {
    name: String,
    start_time: String,
    cpu: CpuStats,
    memory: MemoryStats,
}

fn memory(time: &str, u: &super::Usage, available: Option<u64>) -> MemoryStats {
    MemoryStats {
        time: time.to_owned(),
        available_bytes: available,
        usage_bytes: u.memory_bytes,
        working_set_bytes: u.working_set_bytes,
        rss_bytes: u.rss_bytes,
        page_faults: u.page_faults,
        major_page_faults: u.major_page_faults,
    }
}

fn node(stats: &Stats, time: &str, now: SystemTime, n: &NodeSample) -> NodeStats {
    let (total, avail, inodes, ifree) = n.fs;
    let fs = || FsStats {
        time: time.to_owned(),
        available_bytes: Some(avail),
        capacity_bytes: Some(total),
        used_bytes: Some(total.saturating_sub(avail)),
        inodes_free: Some(ifree),
        inodes: Some(inodes),
        inodes_used: Some(inodes.saturating_sub(ifree)),
    };
    NodeStats {
        node_name: stats.node_name().to_owned(),
        start_time: rfc3339(n.start),
        cpu: CpuStats {
            time: time.to_owned(),
            usage_nano_cores: stats.rate("node", now, n.cpu_ns),
            usage_core_nano_seconds: Some(n.cpu_ns),
        },
        memory: MemoryStats {
            time: time.to_owned(),
            available_bytes: Some(n.memory_available),
            usage_bytes: Some(n.memory_usage),
            working_set_bytes: Some(n.memory_total.saturating_sub(n.memory_available)),
            rss_bytes: Some(n.memory_rss),
            page_faults: None,
            major_page_faults: None,
        },
        fs: fs(),
        // Images are packages on the root file system: the same numbers as nodefs.
        runtime: RuntimeStats { image_fs: fs() },
        rlimit: RlimitStats { time: time.to_owned(), maxpid: n.pids.0, curproc: n.pids.1 },
    }
}

fn pod(stats: &Stats, time: &str, now: SystemTime, p: &PodSample) -> PodStats {
    let u = p.usage();
    let containers = p
        .containers
        .iter()
        .map(|c| ContainerStats {
            name: c.name.clone(),
            start_time: rfc3339(c.start),
            cpu: CpuStats {
                time: time.to_owned(),
                usage_nano_cores: c.usage.cpu_ns.and_then(|ns| stats.rate(&format!("{}/{}", p.uid, c.name), now, ns)),
                usage_core_nano_seconds: c.usage.cpu_ns,
            },
            memory: memory(time, &c.usage, None),
        })
        .collect();
    PodStats {
        pod_ref: PodRef { name: p.name.clone(), namespace: p.namespace.clone(), uid: p.uid.clone() },
        start_time: p.start().map(rfc3339),
        containers,
        cpu: CpuStats {
            time: time.to_owned(),
            usage_nano_cores: u.cpu_ns.and_then(|ns| stats.rate(&p.uid, now, ns)),
            usage_core_nano_seconds: u.cpu_ns,
        },
        memory: memory(time, &u, None),
        ephemeral_storage: p.dir.map(|d| FsStats {
            time: time.to_owned(),
            available_bytes: None,
            capacity_bytes: None,
            used_bytes: Some(d.bytes),
            inodes_free: None,
            inodes: None,
            inodes_used: Some(d.inodes),
        }),
        process_stats: ProcessStats { process_count: u.tasks },
    }
}

impl Summary {
    /// The document for `s`.
    pub fn new(stats: &Stats, s: &Sample) -> Summary {
        let time = rfc3339(s.time);
        Summary {
            node: node(stats, &time, s.time, &s.node),
            pods: s.pods.iter().map(|p| pod(stats, &time, s.time, p)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::cgroup::Usage;
    use super::super::{ContainerSample, DirUsage};
    use super::*;

    #[test]
    fn has_the_kubelets_shape() {
        let stats = Stats::new(
            Arc::new(crate::systemd::fake::FakeSystemd::default()),
            Path::new("/nonexistent"),
            "n1".into(),
            "/tmp".into(),
            "/tmp".into(),
        );
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_557_600);
        let usage = Usage {
            cpu_ns: Some(5),
            memory_bytes: Some(100),
            working_set_bytes: Some(80),
            tasks: Some(2),
            ..Usage::default()
        };
        let s = Sample {
            time: t,
            node: NodeSample {
                start: t,
                cpu_ns: 10,
                memory_total: 1000,
                memory_available: 600,
                memory_usage: 900,
                memory_rss: 100,
                fs: (100, 40, 10, 4),
                pids: (4096, 100),
            },
            pods: vec![PodSample {
                namespace: "ns".into(),
                name: "p".into(),
                uid: "u1".into(),
                containers: vec![ContainerSample { name: "app".into(), start: t, usage }],
                dir: Some(DirUsage { bytes: 4096, inodes: 2 }),
            }],
        };
        let v = serde_json::to_value(Summary::new(&stats, &s)).unwrap();
        assert_eq!(v["node"]["nodeName"], "n1");
        assert_eq!(v["node"]["memory"]["workingSetBytes"], 400);
        assert_eq!(v["node"]["fs"]["usedBytes"], 60);
        assert_eq!(v["node"]["rlimit"]["maxpid"], 4096);
        let p = &v["pods"][0];
        assert_eq!(p["podRef"], serde_json::json!({"name": "p", "namespace": "ns", "uid": "u1"}));
        assert_eq!(p["containers"][0]["name"], "app");
        assert_eq!(p["containers"][0]["cpu"]["usageCoreNanoSeconds"], 5);
        assert_eq!(p["containers"][0]["memory"]["workingSetBytes"], 80);
        assert_eq!(p["ephemeral-storage"]["usedBytes"], 4096);
        assert_eq!(p["process_stats"]["process_count"], 2);
        assert_eq!(p["startTime"], "2024-05-01T10:00:00Z");
    }
}

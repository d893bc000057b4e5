//! Pure construction of the Node object and its status from host facts. No I/O.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo,
    Taint as K8sTaint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use crate::config::Config;
use crate::host::HostFacts;
use crate::quantity::format_bytes;
use crate::unit::resources::NodeAllocatable;

/// The label that marks a vks node (allowed to a node by NodeRestriction).
pub const INSTANCE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";

/// What the node publishes about itself, fixed at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeIdentity {
    /// Node object name.
    pub name: String,
    /// InternalIP (configured or detected).
    pub internal_ip: IpAddr,
    /// ExternalIP, when configured.
    pub external_ip: Option<IpAddr>,
    /// Port of the kubelet API.
    pub kubelet_port: u16,
}

/// Inputs of the Ready condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Readiness {
    /// systemd answered and the kubelet API is serving.
    Ready,
    /// Why the node cannot run pods.
    NotReady(String),
}

/// The kubelet version string vks reports.
pub fn kubelet_version() -> String {
    format!("vks/{}", env!("CARGO_PKG_VERSION"))
}

/// The labels vks sets on its Node: the kubelet's well-known ones plus the configured ones.
pub fn node_labels(config: &Config, facts: &HostFacts) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), facts.architecture.clone()),
        ("kubernetes.io/hostname".to_owned(), config.node.name.clone()),
        (INSTANCE_TYPE_LABEL.to_owned(), "vks".to_owned()),
    ]);
    labels.extend(config.node.labels.clone());
    labels
}

/// The configured taints in API form.
pub fn node_taints(config: &Config) -> Vec<K8sTaint> {
    config
        .node
        .taints
        .iter()
        .map(|t| K8sTaint {
            key: t.key.clone(),
            value: (!t.value.is_empty()).then(|| t.value.clone()),
            effect: t.effect.clone(),
            time_added: None,
        })
        .collect()
}

/// The Node object vks creates when its node does not exist yet.
pub fn new_node(config: &Config, id: &NodeIdentity, facts: &HostFacts, status: NodeStatus) -> Node {
    let taints = node_taints(config);
    Node {
        metadata: ObjectMeta {
            name: Some(id.name.clone()),
            labels: Some(node_labels(config, facts)),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec { taints: (!taints.is_empty()).then_some(taints), ..NodeSpec::default() }),
        status: Some(status),
    }
}

fn quantity(s: impl Into<String>) -> Quantity {
    Quantity(s.into())
}

fn condition(
    type_: &str,
    is_true: bool,
    reason: &str,
    message: &str,
    previous: &[NodeCondition],
    now: &Timestamp,
) -> NodeCondition {
    let status = if is_true { "True" } else { "False" };
    let transition = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(*now));
    NodeCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(Time(*now)),
        last_transition_time: Some(transition),
    }
}

/// Node allocatable, as the kubelet computes it: capacity less `[resources] system_reserved`
/// and `kube_reserved`, and for memory and ephemeral storage less the hard eviction thresholds.
pub fn allocatable(config: &Config, facts: &HostFacts) -> NodeAllocatable {
    let (sys, kube) = (&config.resources.system_reserved, &config.resources.kube_reserved);
    let ev = &config.eviction;
    NodeAllocatable {
        cpu: (facts.cpus * 1000).saturating_sub(sys.cpu + kube.cpu),
        memory: facts
            .memory_total
            .saturating_sub(ev.memory_available.amount(facts.memory_total))
            .saturating_sub(sys.memory + kube.memory),
        ephemeral_storage: facts
            .fs_total
            .saturating_sub(ev.nodefs_available.amount(facts.fs_total))
            .saturating_sub(sys.ephemeral_storage + kube.ephemeral_storage),
        pods: u64::from(config.node.max_pods),
    }
}

/// What `vks.slice` (every pod) may use in memory when node allocatable is enforced: capacity
/// less the reservations (the eviction threshold stays usable, as under the kubelet).
pub fn pods_memory_max(config: &Config, facts: &HostFacts) -> Option<u64> {
    let r = &config.resources;
    r.enforce_allocatable.then(|| facts.memory_total.saturating_sub(r.system_reserved.memory + r.kube_reserved.memory))
}

/// The node status computed from one reading of the host. `previous` are the conditions
/// currently in the API, so that `lastTransitionTime` only moves when a status flips.
pub fn node_status(
    config: &Config,
    id: &NodeIdentity,
    facts: &HostFacts,
    runtime_version: &str,
    readiness: &Readiness,
    previous: &[NodeCondition],
    now: Timestamp,
) -> NodeStatus {
    let ev = &config.eviction;
    let mem_reserve = ev.memory_available.amount(facts.memory_total);
    let fs_reserve = ev.nodefs_available.amount(facts.fs_total);
    let capacity = BTreeMap::from([
        ("cpu".to_owned(), quantity(facts.cpus.to_string())),
        ("memory".to_owned(), quantity(format_bytes(facts.memory_total))),
        ("ephemeral-storage".to_owned(), quantity(format_bytes(facts.fs_total))),
        ("pods".to_owned(), quantity(config.node.max_pods.to_string())),
    ]);
    let a = allocatable(config, facts);
    let cpu = if a.cpu.is_multiple_of(1000) { (a.cpu / 1000).to_string() } else { format!("{}m", a.cpu) };
    let allocatable = BTreeMap::from([
        ("cpu".to_owned(), quantity(cpu)),
        ("memory".to_owned(), quantity(format_bytes(a.memory))),
        ("ephemeral-storage".to_owned(), quantity(format_bytes(a.ephemeral_storage))),
        ("pods".to_owned(), quantity(a.pods.to_string())),
    ]);

    let memory_pressure = facts.memory_available < mem_reserve;
    let disk_pressure =
        facts.fs_available < fs_reserve || facts.fs_inodes_free < ev.nodefs_inodes_free.amount(facts.fs_inodes);
    let pids_left = facts.pid_max.saturating_sub(facts.pids_used);
    let pid_pressure = pids_left < ev.pid_available.amount(facts.pid_max);

    let ready = match readiness {
        Readiness::Ready => condition("Ready", true, "KubeletReady", "vks is posting ready status", previous, &now),
        Readiness::NotReady(why) => condition("Ready", false, "KubeletNotReady", why, previous, &now),
    };
    let conditions = vec![
        condition(
            "MemoryPressure",
            memory_pressure,
            if memory_pressure { "KubeletHasInsufficientMemory" } else { "KubeletHasSufficientMemory" },
            &if memory_pressure {
                format!(
                    "node has memory pressure: {} available, threshold {}",
                    format_bytes(facts.memory_available),
                    ev.memory_available
                )
            } else {
                "vks has sufficient memory available".to_owned()
            },
            previous,
            &now,
        ),
        condition(
            "DiskPressure",
            disk_pressure,
            if disk_pressure { "KubeletHasDiskPressure" } else { "KubeletHasNoDiskPressure" },
            &if disk_pressure {
                format!(
                    "node has disk pressure: {} and {} inodes free, thresholds {} and {}",
                    format_bytes(facts.fs_available),
                    facts.fs_inodes_free,
                    ev.nodefs_available,
                    ev.nodefs_inodes_free
                )
            } else {
                "vks has no disk pressure".to_owned()
            },
            previous,
            &now,
        ),
        condition(
            "PIDPressure",
            pid_pressure,
            if pid_pressure { "KubeletHasInsufficientPID" } else { "KubeletHasSufficientPID" },
            &if pid_pressure {
                format!("node has PID pressure: {pids_left} PIDs left, threshold {}", ev.pid_available)
            } else {
                "vks has sufficient PID available".to_owned()
            },
            previous,
            &now,
        ),
        ready,
    ];

    let mut addresses = vec![NodeAddress { type_: "InternalIP".into(), address: id.internal_ip.to_string() }];
    if let Some(ext) = id.external_ip {
        addresses.push(NodeAddress { type_: "ExternalIP".into(), address: ext.to_string() });
    }
    addresses.push(NodeAddress { type_: "Hostname".into(), address: facts.hostname.clone() });

    NodeStatus {
        capacity: Some(capacity),
        allocatable: Some(allocatable),
        conditions: Some(conditions),
        addresses: Some(addresses),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: i32::from(id.kubelet_port) }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: facts.architecture.clone(),
            boot_id: facts.boot_id.clone(),
            container_runtime_version: format!("systemd://{runtime_version}"),
            kernel_version: facts.kernel_version.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: kubelet_version(),
            machine_id: facts.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: facts.os_image.clone(),
            system_uuid: facts.system_uuid.clone(),
            swap: None,
            running_in_user_namespace: None,
        }),
        declared_features: declared_features(config),
        ..NodeStatus::default()
    }
}

/// The Node Declared Features vks supports (`status.declaredFeatures`, KEP-5328), sorted.
/// `ExtendWebSocketsToKubelet`: the kubelet API serves exec, attach and port-forward over
/// WebSocket itself, so the API server passes WebSockets through instead of translating them to
/// SPDY (`kubelet.websocket_streaming`). An empty list (not an absent one) when there are none,
/// so that a patch clears an earlier declaration.
pub fn declared_features(config: &Config) -> Option<Vec<String>> {
    let mut features = Vec::new();
    if config.kubelet.websocket_streaming {
        features.push("ExtendWebSocketsToKubelet".to_owned());
    }
    Some(features)
}

/// Whether `new` differs from `current` in anything but heartbeat times (the kubelet's
/// `nodeStatusHasChanged`): if not, the status is only re-sent every 5 minutes.
pub fn status_changed(current: Option<&NodeStatus>, new: &NodeStatus) -> bool {
    let Some(current) = current else { return true };
    let strip = |s: &NodeStatus| {
        let mut s = s.clone();
        if let Some(cs) = s.conditions.as_mut() {
            for c in cs.iter_mut() {
                c.last_heartbeat_time = None;
                c.last_transition_time = None;
            }
            cs.sort_by(|a, b| a.type_.cmp(&b.type_));
        }
        // Fields vks does not manage must not count as a change.
        s.images = None;
        s.volumes_attached = None;
        s.volumes_in_use = None;
        s.phase = None;
        s.config = None;
        s.runtime_handlers = None;
        s.features = None;
        // vks manages declaredFeatures; the API server may drop an empty list.
        if s.declared_features.as_ref().is_some_and(Vec::is_empty) {
            s.declared_features = None;
        }
        s
    };
    strip(current) != strip(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn facts() -> HostFacts {
        HostFacts {
            hostname: "n1".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel_version: "6.1.0".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
            system_uuid: "u".into(),
            architecture: "amd64".into(),
            cpus: 2,
            memory_total: 8 << 30,
            memory_available: 4 << 30,
            fs_total: 100 << 30,
            fs_available: 50 << 30,
            fs_inodes: 1000,
            fs_inodes_free: 900,
            pid_max: 32768,
            pids_used: 300,
        }
    }

    fn id() -> NodeIdentity {
        NodeIdentity {
            name: "n1".into(),
            internal_ip: "10.0.0.5".parse().unwrap(),
            external_ip: None,
            kubelet_port: 10250,
        }
    }

    fn cond<'a>(s: &'a NodeStatus, t: &str) -> &'a NodeCondition {
        s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn healthy_node() {
        let cfg = Config::from_str(
            "[node]\nname = \"n1\"\nlabels = { \"example.com/a\" = \"b\" }\ntaints = [\"k=v:NoSchedule\"]",
            "h",
        )
        .unwrap();
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let s = node_status(&cfg, &id(), &facts(), "252.38", &Readiness::Ready, &[], now);
        let cap = s.capacity.as_ref().unwrap();
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(cap["memory"].0, "8Gi");
        assert_eq!(cap["pods"].0, "110");
        assert_eq!(s.allocatable.as_ref().unwrap()["memory"].0, "8092Mi");
        assert_eq!(s.allocatable.as_ref().unwrap()["ephemeral-storage"].0, format_bytes(90 << 30));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("KubeletReady"));
        for t in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
            assert_eq!(cond(&s, t).status, "False", "{t}");
        }
        let info = s.node_info.as_ref().unwrap();
        assert_eq!(info.container_runtime_version, "systemd://252.38");
        assert!(info.kubelet_version.starts_with("vks/"));
        assert_eq!(s.daemon_endpoints.as_ref().unwrap().kubelet_endpoint.as_ref().unwrap().port, 10250);
        let addrs: Vec<_> =
            s.addresses.as_ref().unwrap().iter().map(|a| (a.type_.as_str(), a.address.as_str())).collect();
        assert_eq!(addrs, [("InternalIP", "10.0.0.5"), ("Hostname", "n1")]);

        let node = new_node(&cfg, &id(), &facts(), s);
        let labels = node.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "n1");
        assert_eq!(labels[INSTANCE_TYPE_LABEL], "vks");
        assert_eq!(labels["example.com/a"], "b");
        let taints = node.spec.unwrap().taints.unwrap();
        assert_eq!(
            (taints[0].key.as_str(), taints[0].value.as_deref(), taints[0].effect.as_str()),
            ("k", Some("v"), "NoSchedule")
        );
    }

    #[test]
    fn allocatable_is_capacity_less_reservations_and_eviction() {
        let cfg = Config::from_str(
            "[resources]\nsystem_reserved = { cpu = \"500m\", memory = \"1Gi\" }\n\
             kube_reserved = { cpu = \"250m\", memory = \"512Mi\", ephemeral-storage = \"1Gi\" }",
            "n1",
        )
        .unwrap();
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let s = node_status(&cfg, &id(), &facts(), "252", &Readiness::Ready, &[], now);
        let a = s.allocatable.as_ref().unwrap();
        assert_eq!(a["cpu"].0, "1250m");
        // 8Gi - 100Mi (eviction) - 1Gi - 512Mi
        assert_eq!(a["memory"].0, format_bytes((8 << 30) - (100 << 20) - (1 << 30) - (512 << 20)));
        assert_eq!(a["ephemeral-storage"].0, format_bytes((90 << 30) - (1 << 30)));
        assert_eq!(a["pods"].0, "110");
        assert_eq!(pods_memory_max(&cfg, &facts()), Some((8 << 30) - (1 << 30) - (512 << 20)));
        let plain = Config::from_str("", "n1").unwrap();
        assert_eq!(
            node_status(&plain, &id(), &facts(), "252", &Readiness::Ready, &[], now).allocatable.unwrap()["cpu"].0,
            "2"
        );
    }

    #[test]
    fn websocket_streaming_is_declared_when_configured() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let on = Config::from_str("", "n1").unwrap();
        let off = Config::from_str("[kubelet]\nwebsocket_streaming = false\n", "n1").unwrap();
        let s_on = node_status(&on, &id(), &facts(), "252", &Readiness::Ready, &[], now);
        let s_off = node_status(&off, &id(), &facts(), "252", &Readiness::Ready, &[], now);
        assert_eq!(s_on.declared_features, Some(vec!["ExtendWebSocketsToKubelet".to_owned()]));
        assert_eq!(s_off.declared_features, Some(vec![]));
        assert!(status_changed(Some(&s_on), &s_off), "turning it off patches the status");
        assert!(status_changed(Some(&s_off), &s_on), "turning it on patches the status");
        let mut dropped = s_off.clone();
        dropped.declared_features = None;
        assert!(!status_changed(Some(&dropped), &s_off), "an empty list the API server dropped is no change");
    }

    #[test]
    fn pressure_conditions_follow_thresholds() {
        let cfg = Config::from_str("", "n1").unwrap();
        let mut f = facts();
        f.memory_available = 50 << 20;
        f.fs_inodes_free = 10;
        f.pids_used = 32000;
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let s = node_status(&cfg, &id(), &f, "252", &Readiness::NotReady("systemd unreachable".into()), &[], now);
        assert_eq!(cond(&s, "MemoryPressure").status, "True");
        assert_eq!(cond(&s, "MemoryPressure").reason.as_deref(), Some("KubeletHasInsufficientMemory"));
        assert_eq!(cond(&s, "DiskPressure").status, "True");
        assert_eq!(cond(&s, "PIDPressure").status, "True");
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "Ready").message.as_deref(), Some("systemd unreachable"));
    }

    #[test]
    fn transition_time_moves_only_on_flips_and_heartbeats_are_not_changes() {
        let cfg = Config::from_str("", "n1").unwrap();
        let t1 = Timestamp::from_second(1_700_000_000).unwrap();
        let t2 = Timestamp::from_second(1_700_000_060).unwrap();
        let s1 = node_status(&cfg, &id(), &facts(), "252", &Readiness::Ready, &[], t1);
        let s2 = node_status(&cfg, &id(), &facts(), "252", &Readiness::Ready, s1.conditions.as_ref().unwrap(), t2);
        assert_eq!(cond(&s2, "Ready").last_transition_time, Some(Time(t1)));
        assert_eq!(cond(&s2, "Ready").last_heartbeat_time, Some(Time(t2)));
        assert!(!status_changed(Some(&s1), &s2));
        let s3 = node_status(
            &cfg,
            &id(),
            &facts(),
            "252",
            &Readiness::NotReady("x".into()),
            s2.conditions.as_ref().unwrap(),
            t2,
        );
        assert_eq!(cond(&s3, "Ready").last_transition_time, Some(Time(t2)));
        assert!(status_changed(Some(&s2), &s3));
        assert!(status_changed(None, &s3));
    }
}

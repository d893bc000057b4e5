//! Pod and container `resources` as systemd cgroup settings. Pure: the pod comes in, slice names,
//! unit settings and slice files come out.
//!
//! The tree, like the kubelet's `kubepods` cgroups (slice names nest at each `-`):
//!
//! ```text
//! vks.slice                                    all pods; MemoryMax= and CPUWeight= of node allocatable
//! ├ vks-pod<uid>.slice                         a Guaranteed pod
//! ├ vks-burstable.slice ─ vks-burstable-pod<uid>.slice
//! └ vks-besteffort.slice (CPUWeight=1) ─ vks-besteffort-pod<uid>.slice
//!      └ <pod slice>-<container>.slice         one per container: the container's limits
//!           └ vks.<ns>.<pod>.<container>.service   the container (the same limits)
//! ```
//!
//! - `limits.cpu` → `CPUQuota=` (the kubelet's quota: 100 µs per milli-CPU and 100 ms period,
//!   at least 10m); `limits.memory` → `MemoryMax=`; `requests.cpu` → `CPUWeight=`, the kubelet's
//!   cpu.shares (`milliCPU × 1024 / 1000`, 2 to 262144) as a systemd weight (`shares × 100 /
//!   1024`, which systemd turns back into the same shares on cgroup v1); `requests.memory` →
//!   `MemoryLow=` (cgroup v2 only; v1 has no such protection and systemd ignores it).
//! - The container's unit and its own slice carry the container's settings: the service's cgroup
//!   shows them to the process, and the slice outlives the process, so that on cgroup v1 (where
//!   systemd cannot tell an OOM kill from any SIGKILL) vks can see afterwards that the memory
//!   limit was reached ([`SliceMemory`]). Processes started later in the container's context
//!   (exec) share the slice's limits.
//! - The pod slice carries the pod's totals as the kubelet's pod cgroup does: the sum of the
//!   requests' shares (at least 2); the sum of the limits when every container has one (init
//!   containers count with their maximum, as in `resourcehelper.PodLimits`); pod-level
//!   `spec.resources` replace the sums; `spec.overhead` is added.
//! - Quantities that cannot be parsed, and resources vks cannot honour (`hugepages-*`), are
//!   refused with the field named.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube_quantity::ParsedQuantity;

use super::escape;
use super::{ContainerKind, SpecError};

/// The slice every pod's slice is in.
pub const ROOT_SLICE: &str = "vks.slice";
/// Burstable pods' slices are in this one.
pub const BURSTABLE_SLICE: &str = "vks-burstable.slice";
/// BestEffort pods' slices are in this one.
pub const BESTEFFORT_SLICE: &str = "vks-besteffort.slice";
/// The smallest CPU limit the kernel accepts as a quota (1 ms per period), in milli-CPU.
const MIN_QUOTA_MILLIS: u64 = 10;
/// The kubelet's bounds on cpu.shares.
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;

/// A pod's QoS class, as the API computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// Every container has cpu and memory limits equal to its requests.
    Guaranteed,
    /// Something is requested or limited, but not Guaranteed.
    Burstable,
    /// Nothing is requested or limited.
    BestEffort,
}

impl Qos {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }
}

/// Parses a Kubernetes quantity into its value in base units (cores, bytes).
pub fn quantity(q: &Quantity) -> Option<f64> {
    let p: ParsedQuantity = q.clone().try_into().ok()?;
    p.to_bytes_f64().filter(|v| v.is_finite() && *v >= 0.0)
}

/// Rounds up as the API's `Value()`/`MilliValue()` do, without counting float noise.
fn ceil(v: f64) -> u64 {
    let r = v.round();
    if (v - r).abs() < 1e-6 { r as u64 } else { v.ceil() as u64 }
}

/// A quantity in milli-units (milli-CPU for `cpu`).
pub fn millis(q: &Quantity) -> Option<u64> {
    quantity(q).map(|v| ceil(v * 1000.0))
}

/// A quantity in whole units (bytes for memory), rounded up.
pub fn units(q: &Quantity) -> Option<u64> {
    quantity(q).map(ceil)
}

/// CPU in milli-CPU, memory and ephemeral storage in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Amounts {
    /// `cpu`, milli-CPU.
    pub cpu: Option<u64>,
    /// `memory`, bytes.
    pub memory: Option<u64>,
    /// `ephemeral-storage`, bytes.
    pub ephemeral_storage: Option<u64>,
}

impl Amounts {
    fn add(self, o: Amounts) -> Amounts {
        let sum = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
        };
        Amounts {
            cpu: sum(self.cpu, o.cpu),
            memory: sum(self.memory, o.memory),
            ephemeral_storage: sum(self.ephemeral_storage, o.ephemeral_storage),
        }
    }

    fn max(self, o: Amounts) -> Amounts {
        let m = |a: Option<u64>, b: Option<u64>| a.max(b);
        Amounts {
            cpu: m(self.cpu, o.cpu),
            memory: m(self.memory, o.memory),
            ephemeral_storage: m(self.ephemeral_storage, o.ephemeral_storage),
        }
    }
}

/// A container's (or the pod's) requests and limits, parsed. Requests default to limits, as
/// the API server defaults them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resources {
    /// `requests`.
    pub requests: Amounts,
    /// `limits`.
    pub limits: Amounts,
}

/// Parses `resources` of the object `what` (e.g. `container app`), refusing what vks cannot
/// honour.
pub fn parse(r: Option<&ResourceRequirements>, what: &str) -> Result<Resources, SpecError> {
    let Some(r) = r else { return Ok(Resources::default()) };
    let mut out = Resources::default();
    for (field, map) in [("requests", &r.requests), ("limits", &r.limits)] {
        let a = if field == "requests" { &mut out.requests } else { &mut out.limits };
        for (name, q) in map.iter().flatten() {
            let bad =
                || SpecError::config(format!("{what}: resources.{field}.{name} {:?} is not a valid quantity", q.0));
            match name.as_str() {
                "cpu" => a.cpu = Some(millis(q).ok_or_else(bad)?),
                "memory" => a.memory = Some(units(q).ok_or_else(bad)?),
                "ephemeral-storage" => a.ephemeral_storage = Some(units(q).ok_or_else(bad)?),
                n if n.starts_with("hugepages-") => {
                    return Err(SpecError::config(format!(
                        "{what}: resources.{field}.{name} is not supported by vks (systemd has no hugetlb limits)"
                    )));
                }
                // Extended resources are checked at admission against the node's allocatable.
                _ => {}
            }
        }
    }
    let l = out.limits;
    let q = &mut out.requests;
    q.cpu = q.cpu.or(l.cpu);
    q.memory = q.memory.or(l.memory);
    q.ephemeral_storage = q.ephemeral_storage.or(l.ephemeral_storage);
    Ok(out)
}

fn container_resources(c: &Container) -> Result<Resources, SpecError> {
    parse(c.resources.as_ref(), &format!("container {}", c.name))
}

/// Whether `spec.resources` (pod-level resources) sets cpu or memory.
fn pod_level(spec: &PodSpec) -> Option<&ResourceRequirements> {
    spec.resources
        .as_ref()
        .filter(|r| r.requests.iter().chain(r.limits.iter()).flatten().any(|(k, _)| k == "cpu" || k == "memory"))
}

/// The pod's QoS class (k8s.io/kubernetes pkg/apis/core/helper/qos `ComputePodQOS`): requests
/// and limits of cpu and memory summed over every container (or pod-level resources when set);
/// Guaranteed when both are limited everywhere and the sums of requests equal the limits.
pub fn qos(pod: &Pod) -> Qos {
    let Some(spec) = pod.spec.as_ref() else { return Qos::BestEffort };
    let mut sets: Vec<Resources> = Vec::new();
    if let Some(r) = pod_level(spec) {
        sets.extend(parse(Some(r), "pod").ok());
    } else {
        let all = spec.init_containers.iter().flatten().chain(spec.containers.iter());
        sets.extend(all.filter_map(|c| container_resources(c).ok()));
    }
    let (mut req, mut lim) = (Amounts::default(), Amounts::default());
    let mut limited_everywhere = true;
    for r in &sets {
        let positive = |a: Amounts| Amounts {
            cpu: a.cpu.filter(|v| *v > 0),
            memory: a.memory.filter(|v| *v > 0),
            ephemeral_storage: None,
        };
        req = req.add(positive(r.requests));
        lim = lim.add(positive(r.limits));
        if r.limits.cpu.is_none() || r.limits.memory.is_none() {
            limited_everywhere = false;
        }
    }
    if req == Amounts::default() && lim == Amounts::default() {
        Qos::BestEffort
    } else if limited_everywhere && req == lim {
        Qos::Guaranteed
    } else {
        Qos::Burstable
    }
}

/// The kubelet's cpu.shares for a request of `millis` milli-CPU.
pub fn shares(millis: Option<u64>) -> u64 {
    (millis.unwrap_or(0).saturating_mul(1024) / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// The systemd `CPUWeight=` that systemd writes as `shares` into cpu.shares on cgroup v1
/// (systemd maps weight w to w × 1024 / 100 shares).
pub fn weight(shares: u64) -> u64 {
    ((shares * 100 + 512) / 1024).clamp(1, 10_000)
}

/// The cgroup settings of one slice or unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settings {
    /// `CPUWeight=`.
    pub cpu_weight: u64,
    /// `CPUQuota=` in milli-CPU (none: unlimited).
    pub cpu_limit: Option<u64>,
    /// `MemoryMax=` in bytes (none: unlimited).
    pub memory_max: Option<u64>,
    /// `MemoryLow=` in bytes (none: no protection).
    pub memory_low: Option<u64>,
}

impl Settings {
    fn of(r: &Resources) -> Settings {
        Settings {
            cpu_weight: weight(shares(r.requests.cpu)),
            cpu_limit: r.limits.cpu.map(|m| m.max(MIN_QUOTA_MILLIS)),
            memory_max: r.limits.memory,
            memory_low: r.requests.memory.filter(|m| *m > 0),
        }
    }

    /// The settings as unit file lines (with their newlines).
    pub fn lines(&self) -> String {
        let mut s = format!("CPUWeight={}\n", self.cpu_weight);
        if let Some(m) = self.cpu_limit {
            // CPUQuota= takes a percentage with up to two decimals: 10 milli-CPU are 1%.
            s.push_str(&format!("CPUQuota={}.{:02}%\n", m / 10, (m % 10) * 10));
        }
        if let Some(b) = self.memory_max {
            s.push_str(&format!("MemoryMax={b}\n"));
        }
        if let Some(b) = self.memory_low {
            s.push_str(&format!("MemoryLow={b}\n"));
        }
        s
    }

    /// The same as D-Bus properties for `SetUnitProperties` (a live change): every property
    /// is set, unlimited ones to systemd's "infinity".
    pub fn properties(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("CPUWeight", self.cpu_weight),
            ("CPUQuotaPerSecUSec", self.cpu_limit.map_or(u64::MAX, |m| m * 1000)),
            ("MemoryMax", self.memory_max.unwrap_or(u64::MAX)),
            ("MemoryLow", self.memory_low.unwrap_or(0)),
        ]
    }

    /// Settings that are at least as generous as both: applied first when limits change live,
    /// because on cgroup v1 a child's CPU quota may not exceed its parent's.
    pub fn loosest(&self, o: &Settings) -> Settings {
        let unl = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| a.max(b));
        Settings {
            cpu_weight: self.cpu_weight.max(o.cpu_weight),
            cpu_limit: unl(self.cpu_limit, o.cpu_limit),
            memory_max: unl(self.memory_max, o.memory_max),
            memory_low: self.memory_low.max(o.memory_low),
        }
    }
}

/// Every resource setting of one container: where it runs and what it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLimits {
    /// QoS class of the pod.
    pub qos: Qos,
    /// The pod's slice.
    pub pod_slice: String,
    /// The container's own slice (in the pod's), the unit's `Slice=`.
    pub slice: String,
    /// The container's requests and limits as parsed.
    pub resources: Resources,
    /// The container's settings (its slice and its unit).
    pub settings: Settings,
    /// The pod slice's settings.
    pub pod_settings: Settings,
}

/// The slice-name form of a name: `-` nests slices, so anything but letters and digits
/// becomes `_` (pod UIDs are UUIDs; container names DNS labels, which have no `_`).
fn slice_part(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// The pod's slice: `vks-pod<uid>.slice` for Guaranteed pods, else in the QoS class's slice.
pub fn pod_slice(uid: &str, qos: Qos) -> String {
    let uid = slice_part(uid);
    match qos {
        Qos::Guaranteed => format!("vks-pod{uid}.slice"),
        Qos::Burstable => format!("vks-burstable-pod{uid}.slice"),
        Qos::BestEffort => format!("vks-besteffort-pod{uid}.slice"),
    }
}

/// The container's slice inside `pod_slice`.
pub fn container_slice(pod_slice: &str, container: &str) -> String {
    format!("{}-{}.slice", pod_slice.trim_end_matches(".slice"), slice_part(container))
}

/// Whether `name` is one of vks's pod or container slices (not the node-level ones).
pub fn is_pod_slice(name: &str) -> bool {
    name.ends_with(".slice")
        && ["vks-pod", "vks-burstable-pod", "vks-besteffort-pod"].iter().any(|p| name.starts_with(p))
}

/// The pod's effective requests and limits, as the kubelet's pod cgroup gets them: pod-level
/// resources when set, else the larger of the app containers' (and sidecars') sum and each init
/// container's (with the sidecars started before it); a limit only when every container has
/// one; plus `spec.overhead`.
pub fn pod_resources(pod: &Pod) -> Result<Resources, SpecError> {
    let Some(spec) = pod.spec.as_ref() else { return Ok(Resources::default()) };
    let mut total = if let Some(r) = pod_level(spec) {
        parse(Some(r), "pod")?
    } else {
        let mut apps = Resources::default();
        let mut init_max = Resources::default();
        let mut sidecars = Resources::default();
        let mut all_cpu = true;
        let mut all_memory = true;
        let containers = super::pod_containers(spec);
        for (c, kind) in &containers {
            let r = container_resources(c)?;
            all_cpu &= r.limits.cpu.is_some();
            all_memory &= r.limits.memory.is_some();
            match kind {
                ContainerKind::App => {
                    apps.requests = apps.requests.add(r.requests);
                    apps.limits = apps.limits.add(r.limits);
                }
                ContainerKind::Sidecar => {
                    sidecars.requests = sidecars.requests.add(r.requests);
                    sidecars.limits = sidecars.limits.add(r.limits);
                }
                // Ephemeral containers are not in pod_containers (no resources of their own).
                ContainerKind::Init | ContainerKind::Ephemeral => {
                    init_max.requests = init_max.requests.max(sidecars.requests.add(r.requests));
                    init_max.limits = init_max.limits.max(sidecars.limits.add(r.limits));
                }
            }
        }
        let mut r = Resources {
            requests: apps.requests.add(sidecars.requests).max(init_max.requests),
            limits: apps.limits.add(sidecars.limits).max(init_max.limits),
        };
        if !all_cpu || containers.is_empty() {
            r.limits.cpu = None;
        }
        if !all_memory || containers.is_empty() {
            r.limits.memory = None;
        }
        r
    };
    if let Some(o) = spec.overhead.as_ref().filter(|o| !o.is_empty()) {
        let o = parse(Some(&ResourceRequirements { limits: Some(o.clone()), ..Default::default() }), "pod overhead")?;
        total.requests = total.requests.add(o.requests);
        let plus = |a: Option<u64>, b: Option<u64>| a.map(|a| a + b.unwrap_or(0));
        total.limits.cpu = plus(total.limits.cpu, o.limits.cpu);
        total.limits.memory = plus(total.limits.memory, o.limits.memory);
    }
    Ok(total)
}

/// The resource settings of container `c` of `pod`.
pub fn plan(pod: &Pod, c: &Container) -> Result<ContainerLimits, SpecError> {
    let qos = qos(pod);
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let pod_slice = pod_slice(uid, qos);
    let resources = container_resources(c)?;
    let pod_settings = Settings::of(&pod_resources(pod)?);
    Ok(ContainerLimits {
        qos,
        slice: container_slice(&pod_slice, &c.name),
        pod_slice,
        settings: Settings::of(&resources),
        resources,
        pod_settings,
    })
}

impl ContainerLimits {
    /// The lines of the container's unit (`[Service]`).
    pub fn unit_lines(&self) -> String {
        format!("Slice={}\n{}", self.slice, self.settings.lines())
    }
}

/// Who a slice belongs to, in its `[X-Kubernetes]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceOwner {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod UID.
    pub pod_uid: String,
    /// The container, for a container's slice.
    pub container: Option<String>,
}

/// A slice unit file: its description, settings and owner.
pub fn slice_file(description: &str, settings: &Settings, owner: Option<&SliceOwner>) -> Result<String, SpecError> {
    let desc = escape::text(description)
        .map_err(|e| SpecError::create(format!("the description of a slice ({description:?}) {e}")))?;
    let mut s = format!(
        "# Generated by vks; vks replaces or removes this file, do not edit it.\n[Unit]\nDescription={desc}\n\n[Slice]\n{}",
        settings.lines()
    );
    if let Some(o) = owner {
        s.push_str(&format!(
            "\n[X-Kubernetes]\nNamespace={}\nPodName={}\nPodUID={}\n",
            escape::meta_value(&o.namespace),
            escape::meta_value(&o.pod),
            escape::meta_value(&o.pod_uid)
        ));
        if let Some(c) = &o.container {
            s.push_str(&format!("ContainerName={}\n", escape::meta_value(c)));
        }
    }
    Ok(s)
}

/// The pod UID a pod or container slice file belongs to (its `[X-Kubernetes]` section).
pub fn slice_owner_uid(file: &str) -> Option<String> {
    let mut in_section = false;
    for line in file.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == "[X-Kubernetes]";
        } else if in_section && let Some(v) = line.strip_prefix("PodUID=") {
            return escape::meta_unescape(v).filter(|v| !v.is_empty());
        }
    }
    None
}

/// What the node's pods may use in total (node allocatable), for `vks.slice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeAllocatable {
    /// milli-CPU.
    pub cpu: u64,
    /// bytes.
    pub memory: u64,
    /// bytes.
    pub ephemeral_storage: u64,
    /// pods.
    pub pods: u64,
}

/// The node-level slices, as (name, file): `vks.slice` holding every pod (the kubelet's
/// `kubepods` cgroup: the cpu shares of allocatable cpu, and `memory_max` when node allocatable
/// is enforced: capacity less the reservations), `vks-burstable.slice`, and
/// `vks-besteffort.slice` with the least weight.
pub fn node_slices(a: &NodeAllocatable, memory_max: Option<u64>) -> Vec<(String, String)> {
    let root = Settings { cpu_weight: weight(shares(Some(a.cpu))), memory_max, ..Settings::default() };
    let burstable = Settings { cpu_weight: 100, ..Settings::default() };
    let besteffort = Settings { cpu_weight: weight(MIN_SHARES), ..Settings::default() };
    let file = |desc: String, s: &Settings| slice_file(&desc, s, None).unwrap_or_default();
    vec![
        (
            ROOT_SLICE.to_owned(),
            file(format!("vks pods (node allocatable: {}m CPU, {} bytes of memory)", a.cpu, a.memory), &root),
        ),
        (BURSTABLE_SLICE.to_owned(), file("vks Burstable pods".into(), &burstable)),
        (BESTEFFORT_SLICE.to_owned(), file("vks BestEffort pods".into(), &besteffort)),
    ]
}

/// The resources of `pod` counted against the node's allocatable at admission: the pod's
/// effective requests (one pod), and extended resources by name.
pub fn admission_requests(pod: &Pod) -> Result<(Amounts, BTreeMap<String, u64>), SpecError> {
    let r = pod_resources(pod)?;
    let mut extended = BTreeMap::new();
    if let Some(spec) = pod.spec.as_ref() {
        for c in spec.init_containers.iter().flatten().chain(spec.containers.iter()) {
            let req = c.resources.as_ref().and_then(|r| r.requests.clone().or_else(|| r.limits.clone()));
            for (k, q) in req.iter().flatten() {
                if !matches!(k.as_str(), "cpu" | "memory" | "ephemeral-storage") {
                    *extended.entry(k.clone()).or_default() += units(q).unwrap_or(0);
                }
            }
        }
    }
    Ok((r.requests, extended))
}

/// What systemd reports about a container slice's memory (cgroup v1), to tell an OOM kill:
/// the slice's highest usage since it was last reset, and its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceMemory {
    /// `memory.max_usage_in_bytes`.
    pub peak: u64,
    /// `memory.limit_in_bytes`.
    pub limit: u64,
}

impl SliceMemory {
    /// Whether usage reached the limit (within a page per CPU of slack the kernel charges in
    /// batches).
    pub fn reached_limit(&self) -> bool {
        self.limit != 0 && self.peak.saturating_add(64 * 4096) >= self.limit
    }
}

#[cfg(test)]
mod tests;

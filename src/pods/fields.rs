//! Which pod-spec fields vks honours, which it ignores (and why), and which it refuses: no
//! field is silently dropped. The two tables below are the one source of truth: a unit test
//! checks that they list exactly the fields of k8s-openapi's `PodSpec` and `Container`, and that
//! README.md's "Pod fields" table is rendered from them ([`markdown`]).
//!
//! A refused field (when set to something vks cannot honour) makes the container wait with
//! `CreateContainerConfigError` and a message naming the field ([`refusal`]); an ignored field
//! set to a value that matters gets one Warning event per pod ([`warnings`]); a pod for another
//! operating system is rejected at admission like the kubelet does ([`admission`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Volume};

use crate::unit::resources::{self, Amounts, NodeAllocatable};

/// What vks does with a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// Applied with the same meaning as the kubelet.
    Honoured,
    /// Has no effect on a vks node (said in the note); a Warning event where it matters.
    Ignored,
    /// Not supported yet: a pod that sets it (as the note says) does not start.
    Refused,
}

/// One field of the pod spec or of a container.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Its name in the API.
    pub name: &'static str,
    /// What vks does with it.
    pub treatment: Treatment,
    /// How, or why not.
    pub note: &'static str,
}

const fn f(name: &'static str, treatment: Treatment, note: &'static str) -> Field {
    Field { name, treatment, note }
}

use Treatment::{Honoured, Ignored, Refused};

/// `PodSpec`'s fields.
pub const POD_FIELDS: &[Field] = &[
    f(
        "activeDeadlineSeconds",
        Honoured,
        "counted from `status.startTime` (also after an update): the pod's containers are stopped and it fails with DeadlineExceeded",
    ),
    f("affinity", Ignored, "for the scheduler"),
    f(
        "automountServiceAccountToken",
        Honoured,
        "the injected `kube-api-access-*` volume (token, CA, namespace) is mounted; false: none is injected",
    ),
    f("containers", Honoured, "each container is a unit"),
    f("dnsConfig", Refused, "pods use the node's resolver"),
    f("dnsPolicy", Ignored, "pods use the node's resolver; `None` (which needs dnsConfig) is refused"),
    f(
        "enableServiceLinks",
        Honoured,
        "the namespace's Services as env; `KUBERNETES_SERVICE_*` always, pointing at the API server",
    ),
    f(
        "ephemeralContainers",
        Honoured,
        "`kubectl debug`: each is a unit started once, never restarted, stopped with the pod; with `targetContainerName` it gets the target's user, env, working directory and mounts; `ephemeralContainerStatuses`",
    ),
    f("evictionResponders", Ignored, "no eviction on vks nodes"),
    f(
        "hostAliases",
        Honoured,
        "the node's /etc/hosts plus the aliases, bound read-only at /etc/hosts in the pod's containers",
    ),
    f(
        "hostIPC",
        Honoured,
        "false (the default): a private IPC namespace shared by the pod's containers (`PrivateIPC=`, `JoinsNamespaceOf=`, which shares `/tmp` too); true: the node's",
    ),
    f("hostNetwork", Ignored, "every pod uses the node's network"),
    f(
        "hostPID",
        Ignored,
        "systemd 252 has no PID namespaces for services: pods see the node's processes, those of other users hidden (`ProtectProc=invisible`) unless hostPID is true",
    ),
    f("hostUsers", Refused, "false (user namespaces) is refused; pods run in the node's user namespace"),
    f("hostname", Ignored, "containers see the node's host name (Warning event)"),
    f("hostnameOverride", Ignored, "containers see the node's host name (Warning event)"),
    f("imagePullSecrets", Ignored, "images are Debian packages or paths (Warning event)"),
    f("initContainers", Honoured, "run in order; `restartPolicy: Always` makes a sidecar"),
    f("nodeName", Honoured, "vks runs the pods bound to its node"),
    f("nodeSelector", Ignored, "for the scheduler"),
    f("os", Honoured, "`linux`; any other is rejected (PodOSNotSupported)"),
    f("overhead", Honoured, "added to the pod slice's settings and to admission, as the kubelet does"),
    f("preemptionPolicy", Ignored, "for the scheduler"),
    f("priority", Ignored, "for the scheduler"),
    f("priorityClassName", Ignored, "for the scheduler"),
    f("readinessGates", Honoured, "Ready waits until the gates' conditions (set by others, kept) are True"),
    f("resourceClaims", Refused, "no dynamic resource allocation"),
    f(
        "resources",
        Honoured,
        "pod-level requests and limits on the pod's slice (`CPUWeight=`, `CPUQuota=`, `MemoryMax=`) and in the QoS class",
    ),
    f("restartPolicy", Honoured, "with the kubelet's back-off"),
    f("runtimeClassName", Refused, "no runtime classes"),
    f("schedulerName", Ignored, "for the scheduler"),
    f("schedulingGates", Ignored, "for the scheduler"),
    f("schedulingGroup", Ignored, "for the scheduler"),
    f(
        "securityContext",
        Honoured,
        "runAsUser, runAsGroup, runAsNonRoot, fsGroup, supplementalGroups, seccompProfile, appArmorProfile (see Limits and isolation); sysctls, seLinuxOptions, seccompProfile Localhost and supplementalGroupsPolicy Strict are refused",
    ),
    f("serviceAccount", Honoured, "deprecated alias of serviceAccountName"),
    f("serviceAccountName", Honoured, "in fieldRef spec.serviceAccountName"),
    f("setHostnameAsFQDN", Ignored, "containers see the node's host name (Warning event)"),
    f("shareProcessNamespace", Ignored, "every pod shares the node's PID namespace"),
    f("subdomain", Ignored, "containers see the node's host name (Warning event)"),
    f("terminationGracePeriodSeconds", Honoured, "SIGTERM, then SIGKILL at its end"),
    f("tolerations", Ignored, "for the scheduler"),
    f("topologySpreadConstraints", Ignored, "for the scheduler"),
    f(
        "volumes",
        Honoured,
        "emptyDir, configMap, secret, downwardAPI, projected, hostPath (allow-list); other types refused",
    ),
];

/// `Container`'s fields.
pub const CONTAINER_FIELDS: &[Field] = &[
    f("args", Honoured, "replace the image's arguments; `$(VAR)` expanded"),
    f("command", Honoured, "replaces the image's entrypoint; `$(VAR)` expanded"),
    f(
        "env",
        Honoured,
        "values, fieldRef, resourceFieldRef, configMapKeyRef, secretKeyRef (`$(VAR)` expanded); fileKeyRef refused",
    ),
    f("envFrom", Honoured, "ConfigMaps and Secrets with prefix; invalid keys skipped (Warning event)"),
    f("image", Honoured, "a Debian package, an absolute path or a .deb URL"),
    f("imagePullPolicy", Honoured, "as the kubelet's"),
    f(
        "lifecycle",
        Honoured,
        "postStart and preStop: exec (in the container's context), httpGet, sleep; stopSignal as KillSignal= (no realtime signals)",
    ),
    f(
        "livenessProbe",
        Honoured,
        "exec (in the container's context), httpGet, tcpSocket, grpc (Plaintext); a failure restarts the container",
    ),
    f("name", Honoured, "part of the unit name"),
    f("ports", Honoured, "informational: the port is the node's"),
    f("readinessProbe", Honoured, "as livenessProbe; drives the container's `ready` and the pod's Ready"),
    f(
        "resizePolicy",
        Honoured,
        "`NotRequired`: a resize is applied live (`SetUnitProperties`); `RestartContainer`: the container restarts with the new limits",
    ),
    f(
        "resources",
        Honoured,
        "limits: `CPUQuota=`, `MemoryMax=`; requests: `CPUWeight=` (the kubelet's shares), `MemoryLow=` (cgroup v2), on the container's unit and slice; ephemeral-storage is reported, not enforced (Warning event); hugepages are refused",
    ),
    f("restartPolicy", Honoured, "`Always` on an init container makes it a sidecar"),
    f("restartPolicyRules", Refused, "not supported yet"),
    f(
        "securityContext",
        Honoured,
        "user and groups, capabilities, privileged, readOnlyRootFilesystem, allowPrivilegeEscalation, seccompProfile, appArmorProfile (see Limits and isolation); procMount Unmasked and seLinuxOptions are refused",
    ),
    f("startupProbe", Honoured, "as livenessProbe; holds the other probes back until it passes"),
    f("stdin", Honoured, "true: the container reads a FIFO that `kubectl attach` writes to"),
    f("stdinOnce", Ignored, "the FIFO stays open across attach sessions (Warning event)"),
    f("terminationMessagePath", Honoured, "a per-container file bound at this path; its last 4 KiB are the message"),
    f("terminationMessagePolicy", Honoured, "FallbackToLogsOnError takes the last 80 lines (2 KiB) from the journal"),
    f(
        "tty",
        Honoured,
        "true: the program runs on a terminal held by `vks tty-shim` (its main process); `kubectl attach -it` types into it and sizes it; its output is the container's log",
    ),
    f("volumeDevices", Refused, "no block devices"),
    f(
        "volumeMounts",
        Honoured,
        "bind mounts; subPath, subPathExpr, readOnly; mountPropagation Bidirectional and bindMountOptions refused",
    ),
    f("workingDir", Honoured, "WorkingDirectory="),
];

/// The fields of a JSON object that are set (not null, not an empty object or list).
fn set_keys(v: &impl serde::Serialize) -> Vec<String> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .filter(|(_, v)| match v {
                serde_json::Value::Null => false,
                serde_json::Value::Object(o) => !o.is_empty(),
                serde_json::Value::Array(a) => !a.is_empty(),
                _ => true,
            })
            .map(|(k, _)| k)
            .collect(),
        _ => Vec::new(),
    }
}

/// Why a volume cannot be mounted by vks, if it cannot.
fn volume_refusal(v: &Volume) -> Option<String> {
    let supported = v.empty_dir.is_some()
        || v.config_map.is_some()
        || v.secret.is_some()
        || v.downward_api.is_some()
        || v.projected.is_some()
        || v.host_path.is_some();
    if !supported {
        let kinds: Vec<String> = set_keys(v).into_iter().filter(|k| k != "name").collect();
        return Some(format!(
            "volume {} ({}) is not supported by vks (emptyDir, configMap, secret, downwardAPI, projected and hostPath are)",
            v.name,
            kinds.join(", ")
        ));
    }
    if let Some(m) = v.empty_dir.as_ref().and_then(|e| e.medium.as_deref()).filter(|m| !m.is_empty() && *m != "Memory")
    {
        return Some(format!("volume {}: emptyDir medium {m:?} is not supported by vks", v.name));
    }
    let sources = v.projected.iter().flat_map(|p| p.sources.iter().flatten());
    if sources.clone().any(|s| s.cluster_trust_bundle.is_some() || s.pod_certificate.is_some()) {
        return Some(format!(
            "volume {}: clusterTrustBundle and podCertificate projections are not supported by vks",
            v.name
        ));
    }
    // The alpha AtomicWriteVolumeUserFields: file owners are the pod's user on vks.
    let users = v
        .config_map
        .as_ref()
        .is_some_and(|c| c.default_user.is_some() || c.items.iter().flatten().any(|i| i.user.is_some()))
        || v.secret
            .as_ref()
            .is_some_and(|c| c.default_user.is_some() || c.items.iter().flatten().any(|i| i.user.is_some()))
        || v.downward_api.as_ref().is_some_and(|d| d.items.iter().flatten().any(|i| i.user.is_some()))
        || v.projected.as_ref().is_some_and(|p| p.default_user.is_some())
        || sources.clone().any(|s| {
            s.service_account_token.as_ref().is_some_and(|t| t.user.is_some())
                || s.config_map.as_ref().is_some_and(|c| c.items.iter().flatten().any(|i| i.user.is_some()))
                || s.secret.as_ref().is_some_and(|c| c.items.iter().flatten().any(|i| i.user.is_some()))
                || s.downward_api.as_ref().is_some_and(|d| d.items.iter().flatten().any(|i| i.user.is_some()))
        });
    users.then(|| format!("volume {}: per-file user and defaultUser are not supported by vks", v.name))
}

/// What the node has for pods when one is admitted: its allocatable, and what the pods
/// admitted before request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeLoad {
    /// Node allocatable.
    pub allocatable: NodeAllocatable,
    /// The summed requests of the admitted pods.
    pub used: Amounts,
    /// Their extended resources, by name.
    pub used_extended: BTreeMap<String, u64>,
    /// How many pods are admitted.
    pub pods: u64,
}

/// Why a pod is rejected at admission, as the kubelet would: `(reason, message)`. With `load`,
/// the pod's requests must fit what is left of node allocatable (the kubelet's resource
/// predicate: `OutOfcpu`, `OutOfmemory`, `OutOfephemeral-storage`, `OutOfpods`, and
/// `OutOf<name>` for extended resources the node does not have).
pub fn admission(pod: &Pod, load: Option<&NodeLoad>) -> Option<(String, String)> {
    let spec = pod.spec.as_ref()?;
    if let Some(os) = spec.os.as_ref().filter(|os| os.name != "linux") {
        return Some((
            "PodOSNotSupported".into(),
            format!("Failed to admit pod as the OS {:?} is not supported by vks (spec.os.name)", os.name),
        ));
    }
    let load = load?;
    // A pod whose quantities cannot be read is refused when its containers are created.
    let (req, extended) = resources::admission_requests(pod).ok()?;
    let a = &load.allocatable;
    let mut checks: Vec<(String, u64, u64, u64)> = vec![
        ("pods".into(), 1, load.pods, a.pods),
        ("cpu".into(), req.cpu.unwrap_or(0), load.used.cpu.unwrap_or(0), a.cpu),
        ("memory".into(), req.memory.unwrap_or(0), load.used.memory.unwrap_or(0), a.memory),
        (
            "ephemeral-storage".into(),
            req.ephemeral_storage.unwrap_or(0),
            load.used.ephemeral_storage.unwrap_or(0),
            a.ephemeral_storage,
        ),
    ];
    for (name, n) in extended {
        let used = load.used_extended.get(&name).copied().unwrap_or(0);
        checks.push((name, n, used, 0));
    }
    let (name, requested, used, capacity) =
        checks.into_iter().find(|(_, r, u, c)| *r > 0 && u.saturating_add(*r) > *c)?;
    Some((
        format!("OutOf{name}"),
        format!(
            "Pod was rejected: Node didn't have enough resource: {name}, requested: {requested}, used: {used}, capacity: {capacity}"
        ),
    ))
}

/// Why pod-level fields stop every container of the pod, if they do.
fn pod_refusal(spec: &PodSpec) -> Option<String> {
    let mut why: Vec<String> = Vec::new();
    if spec.dns_config.is_some() || spec.dns_policy.as_deref() == Some("None") {
        why.push("dnsConfig (dnsPolicy None) is not supported: pods use the node's resolver".into());
    }
    if spec.host_users == Some(false) {
        why.push("hostUsers: false (user namespaces) is not supported by vks".into());
    }
    if spec.resource_claims.as_ref().is_some_and(|c| !c.is_empty()) {
        why.push("resourceClaims are not supported by vks".into());
    }
    if spec.runtime_class_name.is_some() {
        why.push("runtimeClassName is not supported by vks".into());
    }
    why.extend(spec.volumes.iter().flatten().filter_map(volume_refusal));
    (!why.is_empty()).then(|| format!("pod field {}", why.join("; ")))
}

/// Why container `c` of `pod` cannot be started as specified, naming the field: the message of
/// its `CreateContainerConfigError`.
pub fn refusal(pod: &Pod, c: &Container) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(why) = pod_refusal(spec) {
        return Some(format!("container {}: {why}", c.name));
    }
    let mut why: Vec<String> = Vec::new();
    for e in c.env.iter().flatten() {
        if e.value_from.as_ref().is_some_and(|f| f.file_key_ref.is_some()) {
            why.push(format!("env {}: fileKeyRef is not supported by vks yet", e.name));
        }
    }
    why.extend(crate::probes::spec::unsupported(c));
    if c.restart_policy_rules.as_ref().is_some_and(|r| !r.is_empty()) {
        why.push("restartPolicyRules are not supported by vks yet".into());
    }
    if c.volume_devices.as_ref().is_some_and(|d| !d.is_empty()) {
        why.push("volumeDevices are not supported by vks".into());
    }
    for m in c.volume_mounts.iter().flatten() {
        if m.mount_propagation.as_deref() == Some("Bidirectional") {
            why.push(format!(
                "volumeMount {}: mountPropagation Bidirectional is not supported by vks (systemd cannot make one \
                 mount of a unit shared)",
                m.mount_path
            ));
        }
        if m.bind_mount_options.as_ref().is_some_and(|o| !o.is_empty()) {
            why.push(format!("volumeMount {}: bindMountOptions are not supported by vks", m.mount_path));
        }
    }
    (!why.is_empty()).then(|| format!("container {}: field {}", c.name, why.join("; ")))
}

/// What vks ignores in the ephemeral containers `new` adds to `old` (`kubectl debug`): one
/// Warning each, when they are added.
pub fn added_ephemeral_containers(old: &Pod, new: &Pod) -> Vec<String> {
    let before: Vec<&str> =
        old.spec.iter().flat_map(|s| s.ephemeral_containers.iter().flatten()).map(|c| c.name.as_str()).collect();
    let Some(spec) = new.spec.as_ref() else { return Vec::new() };
    crate::unit::ephemeral::containers(spec)
        .iter()
        .filter(|c| !before.contains(&c.name.as_str()))
        .flat_map(|c| container_warnings(c, "ephemeral container"))
        .collect()
}

/// What vks ignores in container `c` (`what` names its kind in the message).
fn container_warnings(c: &Container, what: &str) -> Vec<String> {
    let mut out = Vec::new();
    if c.stdin == Some(true) && c.stdin_once == Some(true) {
        out.push(format!(
            "{what} {}: stdinOnce is ignored: the container's stdin stays open across attach sessions",
            c.name
        ));
    }
    out
}

/// The fields of `pod` vks ignores although they are set to something that matters: one
/// Warning event each.
pub fn warnings(pod: &Pod) -> Vec<String> {
    let Some(spec) = pod.spec.as_ref() else { return Vec::new() };
    let mut out = Vec::new();
    for v in spec.volumes.iter().flatten() {
        if let Some(e) = &v.empty_dir
            && e.medium.as_deref().unwrap_or("").is_empty()
            && e.size_limit.is_some()
        {
            out.push(format!("volume {}: the sizeLimit of an emptyDir on disk is not enforced by vks", v.name));
        }
    }
    if spec.hostname.is_some()
        || spec.subdomain.is_some()
        || spec.set_hostname_as_fqdn == Some(true)
        || spec.hostname_override.is_some()
    {
        out.push("hostname/subdomain: containers see the node's host name on vks".into());
    }
    if spec.image_pull_secrets.as_ref().is_some_and(|s| !s.is_empty()) {
        out.push("imagePullSecrets are ignored: vks images are Debian packages or paths".into());
    }
    for c in crate::unit::ephemeral::containers(spec) {
        out.extend(container_warnings(&c, "ephemeral container"));
    }
    for c in unit_containers(spec) {
        out.extend(container_warnings(c, "container"));
        let storage =
            |m: Option<&std::collections::BTreeMap<String, _>>| m.is_some_and(|m| m.contains_key("ephemeral-storage"));
        if c.resources.as_ref().is_some_and(|r| storage(r.limits.as_ref())) {
            out.push(format!(
                "container {}: resources.limits.ephemeral-storage is reported, not enforced: vks containers have no writable layer of their own",
                c.name
            ));
        }
    }
    out
}

fn unit_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers.iter().flatten().chain(spec.containers.iter())
}

fn table(title: &str, fields: &[Field]) -> String {
    let mut s = format!("| {title} | vks | how, or why not |\n|---|---|---|\n");
    for f in fields {
        let t = match f.treatment {
            Honoured => "honoured",
            Ignored => "ignored",
            Refused => "refused",
        };
        s.push_str(&format!("| `{}` | {t} | {} |\n", f.name, f.note));
    }
    s
}

/// README.md's "Pod fields" tables.
pub fn markdown() -> String {
    format!("{}\n{}", table("PodSpec field", POD_FIELDS), table("Container field", CONTAINER_FIELDS))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field names serde's derived (or k8s-openapi's hand-written) `Deserialize` expects:
    /// a deserializer that only records the `fields` argument of `deserialize_struct`.
    fn field_names<T: serde::de::DeserializeOwned>() -> Vec<&'static str> {
        struct Lister(std::cell::RefCell<Vec<&'static str>>);
        #[derive(Debug)]
        struct Stop;
        impl std::fmt::Display for Stop {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("stop")
            }
        }
        impl std::error::Error for Stop {}
        impl serde::de::Error for Stop {
            fn custom<M: std::fmt::Display>(_: M) -> Self {
                Stop
            }
        }
        impl<'de> serde::Deserializer<'de> for &Lister {
            type Error = Stop;
            fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
                Err(Stop)
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Stop> {
                self.0.borrow_mut().extend_from_slice(fields);
                Err(Stop)
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
                unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
            }
        }
        let l = Lister(Default::default());
        let _ = T::deserialize(&l);
        let mut v = l.0.into_inner();
        v.sort_unstable();
        v
    }

    fn names(fields: &[Field]) -> Vec<&'static str> {
        let mut v: Vec<_> = fields.iter().map(|f| f.name).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn the_tables_list_exactly_the_apis_fields() {
        assert_eq!(names(POD_FIELDS), field_names::<PodSpec>(), "PodSpec fields changed: update POD_FIELDS");
        assert_eq!(
            names(CONTAINER_FIELDS),
            field_names::<Container>(),
            "Container fields changed: update CONTAINER_FIELDS"
        );
    }

    #[test]
    fn the_readme_shows_the_tables() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let begin = "<!-- pod fields: generated from src/pods/fields.rs, checked by its tests -->\n";
        let start = readme.find(begin).expect("README has the pod fields marker") + begin.len();
        let end = readme[start..].find("<!-- end of pod fields -->").expect("README has the end marker") + start;
        if std::env::var_os("VKS_UPDATE_GOLDEN").is_some() {
            std::fs::write(path, format!("{}{}{}", &readme[..start], markdown(), &readme[end..])).unwrap();
            return;
        }
        assert_eq!(&readme[start..end], markdown(), "README's pod fields table is stale: run with VKS_UPDATE_GOLDEN=1");
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn what_the_api_server_adds_to_every_pod_is_accepted() {
        // A pod as the API server stores it: defaults and the service-account token volume.
        let p = pod(serde_json::json!({
            "dnsPolicy": "ClusterFirst", "enableServiceLinks": true, "restartPolicy": "Always",
            "schedulerName": "default-scheduler", "securityContext": {}, "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 30, "priority": 0, "preemptionPolicy": "PreemptLowerPriority",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "volumes": [{"name": "kube-api-access-x2k9d", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
            "containers": [{"name": "c", "image": "uptimed", "imagePullPolicy": "Always", "resources": {},
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "volumeMounts": [{"name": "kube-api-access-x2k9d", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]}]
        }));
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(refusal(&p, c), None);
        assert_eq!(admission(&p, None), None);
        assert_eq!(warnings(&p), Vec::<String>::new());
    }

    #[test]
    fn refused_fields_are_named() {
        let p = pod(serde_json::json!({"containers": [{"name": "c", "image": "x",
            "livenessProbe": {"grpc": {"port": 9090, "mode": "TLS"}},
            "securityContext": {"runAsUser": 1000},
            "resources": {"limits": {"memory": "256Mi"}}}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            refusal(&p, c).unwrap(),
            "container c: field livenessProbe.grpc.mode \"TLS\" is not supported by vks (only Plaintext)"
        );
        let p = pod(serde_json::json!({"securityContext": {"runAsNonRoot": true}, "volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "pvc", "persistentVolumeClaim": {"claimName": "x"}},
                {"name": "huge", "emptyDir": {"medium": "HugePages"}},
                {"name": "ctb", "projected": {"sources": [{"clusterTrustBundle": {"path": "b", "name": "n"}}]}}],
            "containers": [{"name": "c", "image": "x", "volumeMounts": [
                {"name": "data", "mountPath": "/d", "mountPropagation": "Bidirectional"}]}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            refusal(&p, c).unwrap(),
            "container c: pod field volume pvc \
             (persistentVolumeClaim) is not supported by vks (emptyDir, configMap, secret, downwardAPI, projected and \
             hostPath are); volume huge: emptyDir medium \"HugePages\" is not supported by vks; volume ctb: \
             clusterTrustBundle and podCertificate projections are not supported by vks"
        );
        let p = pod(serde_json::json!({"volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{"name": "c", "image": "x", "volumeMounts": [
                {"name": "data", "mountPath": "/d", "mountPropagation": "Bidirectional"}]}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            refusal(&p, c).unwrap(),
            "container c: field volumeMount /d: mountPropagation Bidirectional is not supported by vks (systemd cannot \
             make one mount of a unit shared)"
        );
    }

    #[test]
    fn pods_for_other_operating_systems_are_rejected() {
        let p = pod(serde_json::json!({"os": {"name": "windows"}, "containers": []}));
        assert_eq!(admission(&p, None).unwrap().0, "PodOSNotSupported");
        assert_eq!(admission(&pod(serde_json::json!({"os": {"name": "linux"}, "containers": []})), None), None);
    }

    #[test]
    fn pods_are_admitted_against_what_is_left_of_allocatable() {
        let load = NodeLoad {
            allocatable: NodeAllocatable { cpu: 2000, memory: 4 << 30, ephemeral_storage: 10 << 30, pods: 3 },
            used: Amounts { cpu: Some(1500), memory: Some(1 << 30), ephemeral_storage: None },
            used_extended: BTreeMap::new(),
            pods: 2,
        };
        let asking = |r: serde_json::Value| {
            pod(serde_json::json!({"containers": [{"name": "c", "resources": {"requests": r}}]}))
        };
        assert_eq!(admission(&asking(serde_json::json!({"cpu": "500m", "memory": "3Gi"})), Some(&load)), None);
        let (reason, message) = admission(&asking(serde_json::json!({"cpu": "600m"})), Some(&load)).unwrap();
        assert_eq!(reason, "OutOfcpu");
        assert_eq!(
            message,
            "Pod was rejected: Node didn't have enough resource: cpu, requested: 600, used: 1500, capacity: 2000"
        );
        let (reason, _) = admission(&asking(serde_json::json!({"memory": "3073Mi"})), Some(&load)).unwrap();
        assert_eq!(reason, "OutOfmemory");
        let (reason, _) = admission(&asking(serde_json::json!({"example.com/gpu": "1"})), Some(&load)).unwrap();
        assert_eq!(reason, "OutOfexample.com/gpu");
        let full = NodeLoad { pods: 3, ..load.clone() };
        assert_eq!(admission(&asking(serde_json::json!({})), Some(&full)).unwrap().0, "OutOfpods");
    }

    #[test]
    fn what_vks_ignores_in_added_ephemeral_containers_is_warned_about_once() {
        let pod = |eph: serde_json::Value| -> Pod {
            serde_json::from_value(
                serde_json::json!({"spec": {"containers": [{"name": "c"}], "ephemeralContainers": eph}}),
            )
            .unwrap()
        };
        let none = pod(serde_json::json!([]));
        let one =
            pod(serde_json::json!([{"name": "debugger-1", "image": "/bin/sh", "stdinOnce": true, "stdin": true}]));
        let two = pod(
            serde_json::json!([{"name": "debugger-1", "stdin": true, "stdinOnce": true}, {"name": "debugger-2", "stdin": true, "stdinOnce": true}]),
        );
        assert_eq!(
            added_ephemeral_containers(&none, &one),
            [
                "ephemeral container debugger-1: stdinOnce is ignored: the container's stdin stays open across attach sessions"
            ]
        );
        assert_eq!(added_ephemeral_containers(&one, &two).len(), 1);
        assert!(added_ephemeral_containers(&two, &two).is_empty());
        let quiet = pod(serde_json::json!([{"name": "debugger-1", "image": "/bin/sh", "stdin": true}]));
        assert!(added_ephemeral_containers(&none, &quiet).is_empty(), "nothing is ignored: nothing to say");
    }
}

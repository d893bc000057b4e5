//! Pod → unit translation. Pure: no I/O here (the one file-system question, "is this file an
//! executable?", is passed in as a function), so every rule is unit-tested and the rendered
//! units are checked against golden files in `tests/testdata/units/`.
//!
//! A container becomes one unit `vks.<ns>.<pod>.<container>.service` ([`name`]) of
//! `Type=exec`, `Restart=no` (vks restarts containers itself, with the kubelet's back-off) and
//! `RemainAfterExit=yes` (so the exit status stays readable until vks acts on it), with its
//! identity in `[X-Kubernetes]` ([`meta`]). Nothing from the pod spec is written without going
//! through [`escape`].

mod command;
mod env;
pub mod escape;
pub mod meta;
pub mod name;
pub mod resources;
pub mod security;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use sha2::{Digest, Sha256};

pub use crate::reason::WaitingReason;

pub use self::command::{DEFAULT_PATH, container_argv, resolve_executable};
pub use self::env::{expand, resolve_env};
use self::escape::{Unrepresentable, directive};
pub use self::meta::{ContainerKind, UnitMeta};

/// A container that cannot be turned into a unit, with the kubelet's waiting reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    /// `CreateContainerConfigError` (the spec asks for something vks cannot provide) or
    /// `CreateContainerError` (the command cannot be run).
    pub reason: WaitingReason,
    /// What is wrong, naming the field and the value.
    pub message: String,
}

impl SpecError {
    pub(crate) fn config(message: String) -> SpecError {
        SpecError { reason: WaitingReason::CreateContainerConfigError, message }
    }

    pub(crate) fn create(message: String) -> SpecError {
        SpecError { reason: WaitingReason::CreateContainerError, message }
    }
}

/// What the node contributes to a container's environment (downward API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeContext {
    /// The node's name (`spec.nodeName`).
    pub node_name: String,
    /// The node's IP: `status.hostIP`, and `status.podIP` since pods use the host's network.
    pub node_ip: String,
    /// How pods are confined on this node (`[security]` of the configuration).
    pub policy: security::NodePolicy,
}

impl NodeContext {
    /// A node with the default security policy.
    pub fn new(node_name: impl Into<String>, node_ip: impl Into<String>) -> NodeContext {
        NodeContext { node_name: node_name.into(), node_ip: node_ip.into(), policy: security::NodePolicy::default() }
    }
}

/// One argument of a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// A literal value (from the pod): escaped so that the process receives it unchanged.
    Lit(String),
    /// Text in systemd's own ExecStart= syntax, taken verbatim from a packaged unit (it may use
    /// `$VARIABLES` of the package's EnvironmentFile=); never from a pod.
    Raw(String),
}

impl Arg {
    /// The argument as the process sees it, for literals; the raw text otherwise.
    pub fn text(&self) -> &str {
        match self {
            Arg::Lit(s) | Arg::Raw(s) => s,
        }
    }
}

/// An image as made available on the node: what it runs by default and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageInfo {
    /// The image's entrypoint (for a path image: the path; for a package: the program of its
    /// unit's ExecStart=).
    pub entrypoint: Vec<String>,
    /// Arguments used when the container gives neither command nor args.
    pub args: Vec<Arg>,
    /// What the image resolved to (`imageID` in the container status).
    pub image_id: String,
    /// Settings of the package's own unit that the container's unit takes over, as
    /// (directive, value) in systemd syntax (see `images::unitfile`); empty for other images.
    pub service: Vec<(String, String)>,
    /// Why the image has no default command (e.g. a package without a systemd service), for
    /// the error when the container gives none either.
    pub no_command: Option<String>,
}

/// Everything a unit file is rendered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSpec {
    /// Unit name.
    pub name: String,
    /// `[X-Kubernetes]` identity.
    pub meta: UnitMeta,
    /// Absolute path of the program to execute.
    pub executable: String,
    /// The full argument vector, `argv[0]` included (literal values reach the process exactly).
    pub argv: Vec<Arg>,
    /// Settings taken over from a package's unit (trusted: from the package, not the pod).
    pub base: Vec<(String, String)>,
    /// Environment, in the order the pod defines it.
    pub env: Vec<(String, String)>,
    /// `workingDir`, when set.
    pub working_dir: Option<String>,
    /// Seconds systemd waits after SIGTERM before SIGKILL when it stops the unit itself.
    pub stop_timeout_secs: i64,
    /// Resources (cgroup settings, slices) and confinement (user, sandboxing): see
    /// [`resources`] and [`security`].
    pub confinement: Confinement,
}

/// A container's resources and confinement: the block of unit settings of [`resources`] and
/// [`security`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// Slices and cgroup settings.
    pub limits: resources::ContainerLimits,
    /// User, capabilities, sandboxing.
    pub security: security::Security,
}

impl Confinement {
    /// Plans both for container `c` of `pod` on top of the package unit's settings `base`.
    pub fn plan(
        pod: &Pod,
        c: &Container,
        base: &[(String, String)],
        policy: &security::NodePolicy,
    ) -> Result<Confinement, SpecError> {
        Ok(Confinement { limits: resources::plan(pod, c)?, security: security::plan(pod, c, base, policy)? })
    }

    /// The `[Service]` settings written for it, by name, in order (one per line).
    pub fn keys(&self) -> Vec<String> {
        let limits = self.limits.unit_lines();
        let limit_keys = limits.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k.to_owned()));
        limit_keys.chain(self.security.lines.iter().map(|(k, _)| k.clone())).collect()
    }

    /// The `[Service]` lines.
    fn service_lines(&self) -> Result<String, escape::Unrepresentable> {
        let mut s = format!("# Resources and confinement ({}):\n", self.security.summary);
        s.push_str(&self.limits.unit_lines());
        for (k, v) in &self.security.lines {
            s.push_str(&directive(k, v)?);
        }
        Ok(s)
    }
}

/// The containers of a pod in the order they are started, with their role: init containers
/// first (those with `restartPolicy: Always` are sidecars), then the app containers.
pub fn pod_containers(spec: &PodSpec) -> Vec<(&Container, ContainerKind)> {
    let init = spec.init_containers.iter().flatten().map(|c| {
        let kind =
            if c.restart_policy.as_deref() == Some("Always") { ContainerKind::Sidecar } else { ContainerKind::Init };
        (c, kind)
    });
    init.chain(spec.containers.iter().map(|c| (c, ContainerKind::App))).collect()
}

/// Hash of the inputs a unit is made from; a unit whose hash differs is replaced.
pub fn spec_hash(
    c: &Container,
    kind: ContainerKind,
    executable: &str,
    env: &[(String, String)],
    image: &ImageInfo,
) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(c).unwrap_or_default());
    h.update(kind.to_string().as_bytes());
    h.update(executable.as_bytes());
    h.update([0]);
    h.update(image.image_id.as_bytes());
    h.update([0]);
    for (k, v) in image
        .service
        .iter()
        .chain(image.args.iter().map(|a| ("arg".to_owned(), a.text().to_owned())).collect::<Vec<_>>().iter())
    {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    for (k, v) in env {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

/// The spec hash extended with the confinement, which also depends on pod-level fields,
/// annotations and the node's policy: a unit confined differently is a different unit.
fn confined_hash(hash: &str, c: &Confinement) -> String {
    let mut h = Sha256::new();
    h.update(hash.as_bytes());
    h.update(format!("{c:?}").as_bytes());
    hex::encode(&h.finalize()[..8])
}

/// Plans the unit for one container of `pod`. `image` says what the image runs by default and
/// `is_executable` answers file-system questions. Every name is validated first
/// ([`name::validate`]) and the unit is rendered once, so a pod whose values systemd could not
/// carry is refused here, with the field and the value, instead of becoming a broken unit.
pub fn plan(
    pod: &Pod,
    c: &Container,
    kind: ContainerKind,
    image: &ImageInfo,
    node: &NodeContext,
    is_executable: impl Fn(&str) -> bool,
) -> Result<UnitSpec, SpecError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    name::validate(&namespace, &pod_name, &c.name)?;
    let spec = pod.spec.as_ref();
    let pod_policy = crate::policy::RestartPolicy::of_pod(spec);
    let env = resolve_env(pod, c, node)?;
    let argv = container_argv(c, image, &env)?;
    let executable = resolve_executable(&c.name, argv[0].text(), &env, is_executable)?;
    // The package's unit is the base only when the container keeps the image's command.
    let base = if c.command.as_ref().is_some_and(|v| !v.is_empty()) { Vec::new() } else { image.service.clone() };
    let confinement = Confinement::plan(pod, c, &base, &node.policy)?;
    let meta = UnitMeta {
        namespace: namespace.clone(),
        pod: pod_name.clone(),
        pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        container: c.name.clone(),
        kind,
        image: c.image.clone().unwrap_or_default(),
        image_id: image.image_id.clone(),
        restart_policy: pod_policy.for_container(kind).to_string(),
        spec_hash: confined_hash(&spec_hash(c, kind, &executable, &env, image), &confinement),
    };
    let unit = UnitSpec {
        name: name::unit_name(&namespace, &pod_name, &c.name),
        meta,
        executable,
        argv,
        base,
        env,
        working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
        stop_timeout_secs: spec.and_then(|s| s.termination_grace_period_seconds).unwrap_or(30).max(0),
        confinement,
    };
    render(&unit)?;
    Ok(unit)
}

/// Renders the unit file. Every value goes through the rule of its setting in [`escape`]; a
/// value that cannot be carried is a `CreateContainerError` naming the field.
pub fn render(u: &UnitSpec) -> Result<String, SpecError> {
    let m = &u.meta;
    let c = &m.container;
    name::validate(&m.namespace, &m.pod, c)?;
    let bad = |what: String, e: Unrepresentable| SpecError::create(format!("container {c}: {what} {e}"));
    let exec = escape::exec_line(&u.executable, &u.argv)
        .and_then(|v| directive("ExecStart", &v))
        .map_err(|e| bad(format!("the command line (program {:?})", u.executable), e))?;
    let text = |v: &str| escape::text(v).map_err(|e| bad(format!("the name {v:?}"), e));
    // A package's unit may say how its daemon starts; oneshot (and simple) become exec, which
    // reports a program that cannot be executed as a failed start.
    let service_type = u
        .base
        .iter()
        .rev()
        .find(|(k, _)| k == "Type")
        .map(|(_, v)| v.as_str())
        .filter(|t| matches!(*t, "notify" | "forking" | "dbus" | "idle"))
        .unwrap_or("exec");
    let confinement = &u.confinement;
    let mut unit_lines = String::new();
    for (k, v) in &confinement.security.unit_lines {
        unit_lines.push_str(&directive(k, v).map_err(|e| bad(format!("the setting {k}="), e))?);
    }
    let mut s = format!(
        "# Generated by vks from pod {ns}/{pod}; vks replaces or removes this file, do not edit it.\n\
         [Unit]\n\
         Description={description}\n\
         {unit_lines}\
         \n\
         [Service]\n\
         Type={service_type}\n\
         {exec}",
        ns = m.namespace,
        pod = m.pod,
        description = text(&format!("vks pod {}/{} container {c}", m.namespace, m.pod))?,
    );
    if !u.base.is_empty() {
        s.push_str(&format!("# Taken over from the unit of image {}:\n", escape::meta_value(&m.image)));
    }
    for (k, v) in &u.base {
        let overridden = k == "Type"
            || (k == "WorkingDirectory" && u.working_dir.is_some())
            || confinement.security.replaced.contains(k);
        if !overridden && !v.contains('\n') {
            s.push_str(&format!("{k}={v}\n"));
        }
    }
    if let Some(dir) = &u.working_dir {
        let line = escape::working_directory(dir)
            .and_then(|v| directive("WorkingDirectory", &v))
            .map_err(|e| bad(format!("workingDir {dir:?}"), e))?;
        s.push_str(&line);
    }
    for (k, v) in &u.env {
        let line = escape::environment(k, v)
            .and_then(|v| directive("Environment", &v))
            .map_err(|e| bad(format!("env {k:?}"), e))?;
        s.push_str(&line);
    }
    s.push_str(&confinement.service_lines().map_err(|e| bad("the resource and confinement settings".into(), e))?);
    let log_field = |k: &str, v: &str| {
        escape::log_field(k, v)
            .and_then(|v| directive("LogExtraFields", &v))
            .map_err(|e| bad(format!("the journal field {k}"), e))
    };
    s.push_str(&format!(
        "RemainAfterExit=yes\n\
         Restart=no\n\
         KillMode=mixed\n\
         KillSignal=SIGTERM\n\
         SendSIGKILL=yes\n\
         TimeoutStopSec={stop}s\n\
         StandardInput=null\n\
         StandardOutput=journal\n\
         StandardError=journal\n\
         SyslogIdentifier={ident}\n\
         {uid}\
         {container}\
         CPUAccounting=yes\n\
         MemoryAccounting=yes\n\
         TasksAccounting=yes\n\
         \n",
        stop = u.stop_timeout_secs,
        ident = text(c)?,
        uid = log_field("VKS_POD_UID", &m.pod_uid)?,
        container = log_field("VKS_CONTAINER", c)?,
    ));
    let meta = m.render();
    if let Some(line) = meta.lines().find(|l| l.len() >= escape::LONG_LINE_MAX) {
        let key = line.split('=').next().unwrap_or_default();
        return Err(bad(format!("[X-Kubernetes] {key}="), Unrepresentable::LineTooLong(line.len())));
    }
    s.push_str(&meta);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(json: serde_json::Value) -> Container {
        serde_json::from_value(json).unwrap()
    }

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": []}
        }))
        .unwrap()
    }

    fn node() -> NodeContext {
        NodeContext::new("n1", "10.0.0.5")
    }

    #[test]
    fn unrepresentable_values_are_pod_errors_not_broken_units() {
        let mut p = pod();
        let c = container(serde_json::json!({"name": "c", "command": ["/usr/bin/sleep", "a\u{0}b"]}));
        p.spec.as_mut().unwrap().containers = vec![c.clone()];
        let e = plan(&p, &c, ContainerKind::App, &ImageInfo::default(), &node(), |_| true).unwrap_err();
        assert_eq!(e.reason, WaitingReason::CreateContainerError);
        assert_eq!(e.message, "container c: the command line (program \"/usr/bin/sleep\") contains a NUL character");
        let c = container(
            serde_json::json!({"name": "c", "command": ["/bin/true"], "env": [{"name": "my.var", "value": "x"}]}),
        );
        let e = plan(&p, &c, ContainerKind::App, &ImageInfo::default(), &node(), |_| true).unwrap_err();
        assert!(e.message.starts_with("container c: env \"my.var\" is not a valid environment variable name"), "{e}");
    }

    #[test]
    fn containers_in_start_order_with_their_roles() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "initContainers": [{"name": "i1"}, {"name": "s1", "restartPolicy": "Always"}, {"name": "i2"}],
            "containers": [{"name": "a1"}, {"name": "a2"}]
        }))
        .unwrap();
        let got: Vec<(&str, ContainerKind)> =
            pod_containers(&spec).into_iter().map(|(c, k)| (c.name.as_str(), k)).collect();
        use ContainerKind::*;
        assert_eq!(got, [("i1", Init), ("s1", Sidecar), ("i2", Init), ("a1", App), ("a2", App)]);
        assert!(pod_containers(&PodSpec::default()).is_empty());
    }

    #[test]
    fn names_are_validated_before_anything_is_written() {
        let mut p = pod();
        p.metadata.name = Some("evil\n[Service]\nUser=root".into());
        let c = container(serde_json::json!({"name": "c", "command": ["/bin/true"]}));
        let e = plan(&p, &c, ContainerKind::App, &ImageInfo::default(), &node(), |_| true).unwrap_err();
        assert_eq!(e.reason, WaitingReason::CreateContainerConfigError);
        assert!(e.message.contains(r#"metadata.name "evil\n[Service]\nUser=root" is not a valid name"#), "{e}");
    }

    #[test]
    fn spec_changes_change_the_hash() {
        let a = container(serde_json::json!({"name": "c", "image": "/bin/a"}));
        let b = container(serde_json::json!({"name": "c", "image": "/bin/b"}));
        assert_eq!(
            spec_hash(&a, ContainerKind::App, "/bin/a", &[], &ImageInfo::default()),
            spec_hash(&a, ContainerKind::App, "/bin/a", &[], &ImageInfo::default())
        );
        assert_ne!(
            spec_hash(&a, ContainerKind::App, "/bin/a", &[], &ImageInfo::default()),
            spec_hash(&b, ContainerKind::App, "/bin/a", &[], &ImageInfo::default())
        );
        assert_ne!(
            spec_hash(&a, ContainerKind::App, "/bin/a", &[], &ImageInfo::default()),
            spec_hash(&a, ContainerKind::Init, "/bin/a", &[], &ImageInfo::default())
        );
    }
}

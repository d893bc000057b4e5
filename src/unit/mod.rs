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
pub mod data;
pub mod env;
pub mod ephemeral;
pub mod escape;
pub mod exec_context;
pub mod meta;
pub mod name;
pub mod resource;
pub mod resources;
pub mod security;
pub mod stdin;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use sha2::{Digest, Sha256};

pub use crate::reason::WaitingReason;

pub use self::command::{DEFAULT_PATH, container_argv, resolve_executable};
pub use self::data::{BindMount, ContainerData, PodData};
pub use self::env::{ResolvedEnv, expand, resolve_env};
use self::escape::{Unrepresentable, directive};
pub use self::meta::{ContainerKind, UnitMeta};
pub use self::stdin::{stdin_fifo, tty_socket};

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
#[derive(Clone, PartialEq, Eq)]
pub enum Arg {
    /// A literal value (from the pod): escaped so that the process receives it unchanged.
    Lit(String),
    /// Text in systemd's own ExecStart= syntax, taken verbatim from a packaged unit (it may use
    /// `$VARIABLES` of the package's EnvironmentFile=); never from a pod.
    Raw(String),
    /// A pod's argument that a value from a Secret was expanded into: written with `${NAME}`
    /// references to the secret variables (systemd substitutes them at exec time from the
    /// root-only environment file), so the value never appears in the unit file.
    WithSecret {
        /// The argument as the process sees it (in memory only).
        text: String,
        /// Its pieces: text, and the secret variables.
        pieces: Vec<env::Piece>,
    },
}

impl std::fmt::Debug for Arg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Arg::Lit(s) => f.debug_tuple("Lit").field(s).finish(),
            Arg::Raw(s) => f.debug_tuple("Raw").field(s).finish(),
            // The text holds secret values: only the pieces, which hide them.
            Arg::WithSecret { pieces, .. } => f.debug_tuple("WithSecret").field(pieces).finish(),
        }
    }
}

impl Arg {
    /// The argument as the process sees it, for literals; the raw text otherwise.
    pub fn text(&self) -> &str {
        match self {
            Arg::Lit(s) | Arg::Raw(s) | Arg::WithSecret { text: s, .. } => s,
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
    /// The container reads stdin (`stdin: true`): it reads a FIFO that `kubectl attach` writes
    /// to (see [`stdin_fifo`]).
    pub stdin: bool,
    /// The container has a terminal (`tty: true`): its program runs under `vks tty-shim`, which
    /// holds the terminal and serves `kubectl attach` (see [`stdin::tty_socket`]).
    pub tty: bool,
    // --- Data (issue 12): env values from Secrets and volume mounts. ---
    /// Environment values from Secrets (and values expanded from them): written by the worker
    /// to `env_file` (tmpfs, root only), never into the unit file.
    pub secret_env: SecretEnv,
    /// The `EnvironmentFile=` that holds `secret_env`, when there is any.
    pub env_file: Option<String>,
    /// The container's volumes, bind-mounted into the unit's mount namespace.
    pub mounts: Vec<BindMount>,
    /// The signal that stops the container (`KillSignal=`): `lifecycle.stopSignal`, SIGTERM by
    /// default.
    pub kill_signal: String,
    /// Resources (cgroup settings, slices) and confinement (user, sandboxing): see
    /// [`resources`] and [`security`].
    pub confinement: Confinement,
}

/// Environment values from Secrets; `Debug` shows the names only.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretEnv(pub Vec<(String, String)>);

impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(k, _)| k)).finish()
    }
}

/// The signal that stops container `c`: its `lifecycle.stopSignal` (a standard signal; realtime
/// signals are refused), SIGTERM by default.
pub fn stop_signal(c: &Container) -> Result<nix::sys::signal::Signal, SpecError> {
    match c.lifecycle.as_ref().and_then(|l| l.stop_signal.as_deref()) {
        None => Ok(nix::sys::signal::Signal::SIGTERM),
        Some(s) => s.parse().map_err(|_| {
            SpecError::config(format!(
                "container {}: lifecycle.stopSignal {s:?} is not supported by vks (only standard signals, no realtime ones)",
                c.name
            ))
        }),
    }
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

/// Every container vks runs for a pod, owned, with its role: [`pod_containers`] then the
/// ephemeral containers as [`ephemeral::containers`] makes them.
pub fn all_containers(spec: &PodSpec) -> Vec<(Container, ContainerKind)> {
    let mut out: Vec<(Container, ContainerKind)> =
        pod_containers(spec).into_iter().map(|(c, k)| (c.clone(), k)).collect();
    out.extend(ephemeral::containers(spec).into_iter().map(|c| (c, ContainerKind::Ephemeral)));
    out
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
    data: &ContainerData,
    is_executable: impl Fn(&str) -> bool,
) -> Result<UnitSpec, SpecError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    name::validate(&namespace, &pod_name, &c.name)?;
    let spec = pod.spec.as_ref();
    let pod_policy = crate::policy::RestartPolicy::of_pod(spec);
    let resolved = resolve_env(pod, c, node, &data.pod)?;
    let argv = container_argv(c, image, &resolved)?;
    let env = resolved.plain();
    let secret_env = resolved.secret();
    let executable = resolve_executable(&c.name, argv[0].text(), &env, is_executable)?;
    // The package's unit is the base only when the container keeps the image's command.
    let base = if c.command.as_ref().is_some_and(|v| !v.is_empty()) { Vec::new() } else { image.service.clone() };
    let confinement = Confinement::plan(pod, c, &base, &node.policy)?;
    let env_file = if secret_env.is_empty() {
        None
    } else {
        Some(data.env_file.clone().ok_or_else(|| {
            SpecError::config(format!("container {}: no place for env values from Secrets on this node", c.name))
        })?)
    };
    // The hash covers what the unit file says: secret values are not in it (a changed Secret
    // reaches the container at its next start through the environment file).
    let mut hashed = env.clone();
    hashed.extend(secret_env.iter().map(|(k, _)| ("secret".to_owned(), k.clone())));
    hashed.extend(env_file.iter().map(|f| ("EnvironmentFile".to_owned(), f.clone())));
    hashed.extend(data.mounts.iter().map(|m| (format!("mount {}", m.read_only), format!("{}:{}", m.source, m.target))));
    let meta = UnitMeta {
        namespace: namespace.clone(),
        pod: pod_name.clone(),
        pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        container: c.name.clone(),
        kind,
        image: c.image.clone().unwrap_or_default(),
        image_id: image.image_id.clone(),
        restart_policy: pod_policy.for_container(kind).to_string(),
        spec_hash: confined_hash(&spec_hash(c, kind, &executable, &hashed, image), &confinement),
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
        stdin: c.stdin.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        secret_env: SecretEnv(secret_env),
        env_file,
        mounts: data.mounts.clone(),
        kill_signal: stop_signal(c)?.as_str().to_owned(),
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
    let exec = stdin::exec_start(u)
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
    if u.stdin || u.tty {
        s.push_str(&format!("RuntimeDirectory={}\n", stdin::stdin_dir(&u.name)));
        // Bound back over the tmpfs a confined container sees at /run/vks-stdin.
        let dir = format!("/run/{}", stdin::stdin_dir(&u.name));
        let line = escape::bind_paths(&dir, &dir)
            .and_then(|v| directive("BindPaths", &v))
            .map_err(|e| bad(format!("the stdin directory {dir:?}"), e))?;
        s.push_str(&line);
    }
    // --- Data (issue 12): the env file of secret values, volume mounts. ---
    if let Some(file) = &u.env_file {
        let line = escape::env_file_path(file)
            .and_then(|v| directive("EnvironmentFile", &v))
            .map_err(|e| bad(format!("the environment file {file:?}"), e))?;
        s.push_str(&line);
    }
    for m in &u.mounts {
        let key = if m.read_only { "BindReadOnlyPaths" } else { "BindPaths" };
        let line = escape::bind_paths(&m.source, &m.target)
            .and_then(|v| directive(key, &v))
            .map_err(|e| bad(format!("the volume mount at {:?}", m.target), e))?;
        s.push_str(&line);
    }
    if !u.kill_signal.chars().all(|c| c.is_ascii_alphanumeric() || c == '+') {
        return Err(bad(
            format!("the stop signal {:?}", u.kill_signal),
            Unrepresentable::Special("a character not in a signal name"),
        ));
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
         KillSignal={kill_signal}\n\
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
        kill_signal = u.kill_signal,
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
mod tests;

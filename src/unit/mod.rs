//! Pod → unit translation. Pure: no I/O here (the one file-system question, "is this file an
//! executable?", is passed in as a function), so every rule is unit-tested and the rendered
//! units are checked against golden files in `tests/testdata/units/`.
//!
//! A container becomes one unit `vks.<ns>.<pod>.<container>.service` ([`name`]) of
//! `Type=exec`, `Restart=no` (vks restarts containers itself, with the kubelet's back-off) and
//! `RemainAfterExit=yes` (so the exit status stays readable until vks acts on it), with its
//! identity in `[X-Kubernetes]` ([`meta`]). Nothing from the pod spec is written without going
//! through [`escape`].

pub mod escape;
pub mod meta;
pub mod name;
pub mod stdin;

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use sha2::{Digest, Sha256};

use self::escape::Unrepresentable;
pub use self::meta::{ContainerKind, UnitMeta};
pub use self::stdin::stdin_fifo;

/// `PATH` used to find a bare command name when the container sets none (runc's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A container that cannot be turned into a unit, with the kubelet's waiting reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    /// `CreateContainerConfigError` (the spec asks for something vks cannot provide) or
    /// `CreateContainerError` (the command cannot be run).
    pub reason: &'static str,
    /// What is wrong, naming the field and the value.
    pub message: String,
}

impl SpecError {
    fn config(message: String) -> SpecError {
        SpecError { reason: "CreateContainerConfigError", message }
    }

    fn create(message: String) -> SpecError {
        SpecError { reason: "CreateContainerError", message }
    }
}

/// What the node contributes to a container's environment (downward API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeContext {
    /// The node's name (`spec.nodeName`).
    pub node_name: String,
    /// The node's IP: `status.hostIP`, and `status.podIP` since pods use the host's network.
    pub node_ip: String,
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
    /// The container reads stdin (`stdin: true`): it reads a FIFO that `kubectl attach` writes
    /// to (see [`stdin_fifo`]).
    pub stdin: bool,
}

/// Kubernetes `$(VAR)` expansion (k8s.io/kubernetes third_party/forked/golang/expansion):
/// `$(NAME)` is replaced when `lookup` knows NAME and kept as written otherwise; `$$` is `$`.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let b = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < b.len() {
        if b[cursor] == b'$' && cursor + 1 < b.len() {
            out.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            let advance = match b[cursor + 1] {
                b'$' => {
                    out.push('$');
                    1
                }
                b'(' => match rest.find(')') {
                    Some(close) => {
                        let name = &rest[1..close];
                        match lookup(name) {
                            Some(v) => out.push_str(&v),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        close + 1
                    }
                    None => {
                        out.push_str("$(");
                        1
                    }
                },
                _ => {
                    // "$x": both characters are kept; x is a whole character (may be multi-byte).
                    let c = rest.chars().next().map_or(1, char::len_utf8);
                    out.push('$');
                    out.push_str(&rest[..c]);
                    c
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    out.push_str(input.get(checkpoint..).unwrap_or(""));
    out
}

fn field_ref(pod: &Pod, node: &NodeContext, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let subscript = |prefix: &str| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_prefix("['")?.strip_suffix("']")?;
        Some(key.to_owned())
    };
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_else(|| node.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.hostIP" | "status.podIP" | "status.hostIPs" | "status.podIPs" => node.node_ip.clone(),
        _ => {
            if let Some(k) = subscript("metadata.labels") {
                meta.labels.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
            } else if let Some(k) = subscript("metadata.annotations") {
                meta.annotations.as_ref().and_then(|a| a.get(&k).cloned()).unwrap_or_default()
            } else {
                return None;
            }
        }
    })
}

/// Resolves a container's `env` in order (each value may refer to variables defined before
/// it). Sources that need the API server (ConfigMaps, Secrets) or resources are not
/// supported yet and make the container wait with `CreateContainerConfigError`.
pub fn resolve_env(pod: &Pod, c: &Container, node: &NodeContext) -> Result<Vec<(String, String)>, SpecError> {
    if c.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err(SpecError::config(format!("container {}: envFrom is not supported by vks yet", c.name)));
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for EnvVar { name, value, value_from } in c.env.iter().flatten() {
        let v = match (value, value_from) {
            (_, Some(from)) => {
                let path = from.field_ref.as_ref().map(|f| f.field_path.as_str());
                match path.and_then(|p| field_ref(pod, node, p)) {
                    Some(v) => v,
                    None => {
                        let what = if let Some(p) = path {
                            format!("fieldRef {p:?}")
                        } else if from.config_map_key_ref.is_some() {
                            "configMapKeyRef".to_owned()
                        } else if from.secret_key_ref.is_some() {
                            "secretKeyRef".to_owned()
                        } else if from.resource_field_ref.is_some() {
                            "resourceFieldRef".to_owned()
                        } else {
                            "this valueFrom source".to_owned()
                        };
                        return Err(SpecError::config(format!(
                            "container {}: env {name}: {what} is not supported by vks yet",
                            c.name
                        )));
                    }
                }
            }
            (Some(v), None) => {
                let known: HashMap<&str, &str> = out.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                expand(v, |n| known.get(n).map(|s| (*s).to_owned()))
            }
            (None, None) => String::new(),
        };
        match out.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = v,
            None => out.push((name.clone(), v)),
        }
    }
    Ok(out)
}

/// The argument vector with Kubernetes semantics: `command` replaces the image's entrypoint,
/// `args` its arguments; both are `$(VAR)`-expanded with the container's environment.
pub fn container_argv(c: &Container, image: &ImageInfo, env: &[(String, String)]) -> Result<Vec<Arg>, SpecError> {
    let lookup = |n: &str| env.iter().rev().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let command = c.command.as_ref().filter(|v| !v.is_empty());
    let args = c.args.as_ref().filter(|v| !v.is_empty());
    let mut argv: Vec<Arg> = match command {
        Some(cmd) => cmd.iter().map(|s| Arg::Lit(expand(s, lookup))).collect(),
        None => image.entrypoint.iter().cloned().map(Arg::Lit).collect(),
    };
    match args {
        Some(a) => argv.extend(a.iter().map(|s| Arg::Lit(expand(s, lookup)))),
        None if command.is_none() => argv.extend(image.args.iter().cloned()),
        None => {}
    }
    if argv.first().is_none_or(|a| a.text().is_empty()) {
        return Err(SpecError::create(format!(
            "container {}: no command to run: the image {:?} has no default command{} and the container sets none",
            c.name,
            c.image.as_deref().unwrap_or(""),
            image.no_command.as_deref().map(|w| format!(" ({w})")).unwrap_or_default()
        )));
    }
    Ok(argv)
}

/// Finds the program for `argv0` like execvp: a name with a `/` must be an absolute path; a bare
/// name is looked up in `PATH` (the container's, else [`DEFAULT_PATH`]).
pub fn resolve_executable(
    container: &str,
    argv0: &str,
    env: &[(String, String)],
    is_executable: impl Fn(&str) -> bool,
) -> Result<String, SpecError> {
    if argv0.contains('/') {
        if !argv0.starts_with('/') {
            return Err(SpecError::create(format!(
                "container {container}: command {argv0:?} is a relative path; use an absolute path or a bare name found in PATH"
            )));
        }
        return if is_executable(argv0) {
            Ok(argv0.to_owned())
        } else {
            Err(SpecError::create(format!("container {container}: {argv0:?} does not exist or is not executable")))
        };
    }
    let path = env.iter().rev().find(|(k, _)| k == "PATH").map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| format!("{}/{argv0}", d.trim_end_matches('/')))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            SpecError::create(format!("container {container}: executable {argv0:?} not found in PATH ({path})"))
        })
}

/// Which restart policy applies to a container: the pod's for app containers, `Always` for
/// sidecars, and for init containers the pod's with `Always` meaning `OnFailure`.
pub fn effective_restart_policy(pod_policy: &str, kind: ContainerKind) -> &str {
    match kind {
        ContainerKind::Sidecar => "Always",
        ContainerKind::Init if pod_policy == "Always" => "OnFailure",
        _ => pod_policy,
    }
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

/// Plans the unit for one container of `pod`. `image` says what the image runs by default and
/// `is_executable` answers file-system questions.
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
    let spec = pod.spec.as_ref();
    let pod_policy = spec.and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always");
    let env = resolve_env(pod, c, node)?;
    let argv = container_argv(c, image, &env)?;
    let executable = resolve_executable(&c.name, argv[0].text(), &env, is_executable)?;
    let meta = UnitMeta {
        namespace: namespace.clone(),
        pod: pod_name.clone(),
        pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        container: c.name.clone(),
        kind,
        image: c.image.clone().unwrap_or_default(),
        image_id: image.image_id.clone(),
        restart_policy: effective_restart_policy(pod_policy, kind).to_owned(),
        spec_hash: spec_hash(c, kind, &executable, &env, image),
    };
    let unit = UnitSpec {
        name: name::unit_name(&namespace, &pod_name, &c.name),
        meta,
        executable,
        argv,
        // The package's unit is the base only when the container keeps the image's command.
        base: if c.command.as_ref().is_some_and(|v| !v.is_empty()) { Vec::new() } else { image.service.clone() },
        env,
        working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
        stop_timeout_secs: spec.and_then(|s| s.termination_grace_period_seconds).unwrap_or(30).max(0),
        stdin: c.stdin.unwrap_or(false),
    };
    render(&unit)?;
    Ok(unit)
}

/// Renders the unit file.
pub fn render(u: &UnitSpec) -> Result<String, SpecError> {
    let c = &u.meta.container;
    let bad = |what: String, e: Unrepresentable| SpecError::create(format!("container {c}: {what} {e}"));
    let exec = stdin::exec_start(u).map_err(|e| bad("the command line".into(), e))?;
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
    let mut s = format!(
        "# Generated by vks from pod {ns}/{pod}; vks replaces or removes this file, do not edit it.\n\
         [Unit]\n\
         Description=vks pod {ns}/{pod} container {c}\n\
         \n\
         [Service]\n\
         Type={service_type}\n\
         ExecStart={exec}\n",
        ns = u.meta.namespace,
        pod = u.meta.pod,
    );
    if !u.base.is_empty() {
        s.push_str(&format!("# Taken over from the unit of image {}:\n", escape::meta_value(&u.meta.image)));
    }
    for (k, v) in &u.base {
        let overridden = k == "Type" || (k == "WorkingDirectory" && u.working_dir.is_some());
        if !overridden && !v.contains('\n') {
            s.push_str(&format!("{k}={v}\n"));
        }
    }
    if let Some(dir) = &u.working_dir {
        let d = escape::path(dir).map_err(|e| bad(format!("workingDir {dir:?}"), e))?;
        s.push_str(&format!("WorkingDirectory={d}\n"));
    }
    for (k, v) in &u.env {
        let line = escape::environment(k, v).map_err(|e| bad(format!("env {k:?}"), e))?;
        s.push_str(&format!("Environment={line}\n"));
    }
    if u.stdin {
        s.push_str(&format!("RuntimeDirectory={}\n", stdin::stdin_dir(&u.name)));
    }
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
         SyslogIdentifier={c}\n\
         LogExtraFields=VKS_POD_UID={uid}\n\
         LogExtraFields=VKS_CONTAINER={c}\n\
         CPUAccounting=yes\n\
         MemoryAccounting=yes\n\
         TasksAccounting=yes\n\
         \n",
        stop = u.stop_timeout_secs,
        uid = escape::meta_value(&u.meta.pod_uid),
    ));
    s.push_str(&u.meta.render());
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
        NodeContext { node_name: "n1".into(), node_ip: "10.0.0.5".into() }
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let lookup = |n: &str| match n {
            "A" => Some("x".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let cases = [
            ("$(A)", "x"),
            ("pre-$(A)-post", "pre-x-post"),
            ("$(B)", "$(B)"),
            ("$$(A)", "$(A)"),
            ("$$", "$"),
            ("$", "$"),
            ("$(A", "$(A"),
            ("$A", "$A"),
            ("$(EMPTY)|", "|"),
            ("ü$(A)ü", "üxü"),
            ("$ü", "$ü"),
            ("$(A)$(A)", "xx"),
            ("$$$(A)", "$x"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, lookup), want, "{input}");
        }
    }

    #[test]
    fn env_in_order_with_field_refs() {
        let c = container(serde_json::json!({
            "name": "c",
            "env": [
                {"name": "A", "value": "1"},
                {"name": "B", "value": "$(A)-$(C)"},
                {"name": "C", "value": "3"},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "A", "value": "again"}
            ]
        }));
        let env = resolve_env(&pod(), &c, &node()).unwrap();
        let want: Vec<(String, String)> =
            [("A", "again"), ("B", "1-$(C)"), ("C", "3"), ("IP", "10.0.0.5"), ("APP", "web")]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
        assert_eq!(env, want);
    }

    #[test]
    fn unsupported_env_sources_are_config_errors_naming_the_variable() {
        let c = container(serde_json::json!({
            "name": "c",
            "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
        }));
        let e = resolve_env(&pod(), &c, &node()).unwrap_err();
        assert_eq!(e.reason, "CreateContainerConfigError");
        assert_eq!(e.message, "container c: env PW: secretKeyRef is not supported by vks yet");
    }

    #[test]
    fn command_and_args_semantics() {
        let image = ImageInfo {
            entrypoint: vec!["/img".into()],
            args: vec![Arg::Lit("--default".into())],
            ..ImageInfo::default()
        };
        let env = vec![("X".to_owned(), "1".to_owned())];
        let argv = |j| {
            container_argv(&container(j), &image, &env).unwrap().iter().map(|a| a.text().to_owned()).collect::<Vec<_>>()
        };
        assert_eq!(argv(serde_json::json!({"name": "c"})), ["/img", "--default"]);
        assert_eq!(argv(serde_json::json!({"name": "c", "args": ["a$(X)"]})), ["/img", "a1"]);
        assert_eq!(argv(serde_json::json!({"name": "c", "command": ["sh", "-c"]})), ["sh", "-c"]);
        assert_eq!(
            argv(serde_json::json!({"name": "c", "command": ["sh"], "args": ["$(X)", "$$(X)"]})),
            ["sh", "1", "$(X)"]
        );
        let none = ImageInfo::default();
        let e = container_argv(&container(serde_json::json!({"name": "c", "image": "x"})), &none, &env).unwrap_err();
        assert!(e.message.contains("no command to run"), "{e}");
    }

    #[test]
    fn executables_resolve_like_execvp() {
        let exists = |p: &str| p == "/usr/bin/sleep" || p == "/opt/bin/tool";
        assert_eq!(resolve_executable("c", "sleep", &[], exists).unwrap(), "/usr/bin/sleep");
        assert_eq!(resolve_executable("c", "/usr/bin/sleep", &[], exists).unwrap(), "/usr/bin/sleep");
        let path = vec![("PATH".to_owned(), "/opt/bin:relative".to_owned())];
        assert_eq!(resolve_executable("c", "tool", &path, exists).unwrap(), "/opt/bin/tool");
        assert!(resolve_executable("c", "tool", &[], exists).unwrap_err().message.contains("not found in PATH"));
        assert!(resolve_executable("c", "./sleep", &[], exists).unwrap_err().message.contains("relative path"));
        assert!(resolve_executable("c", "/nope", &[], exists).unwrap_err().message.contains("does not exist"));
    }

    #[test]
    fn restart_policies() {
        assert_eq!(effective_restart_policy("Always", ContainerKind::App), "Always");
        assert_eq!(effective_restart_policy("Always", ContainerKind::Init), "OnFailure");
        assert_eq!(effective_restart_policy("Never", ContainerKind::Init), "Never");
        assert_eq!(effective_restart_policy("Never", ContainerKind::Sidecar), "Always");
    }

    #[test]
    fn unrepresentable_values_are_pod_errors_not_broken_units() {
        let mut p = pod();
        let c = container(serde_json::json!({"name": "c", "command": ["/usr/bin/sleep", "a\u{0}b"]}));
        p.spec.as_mut().unwrap().containers = vec![c.clone()];
        let e = plan(&p, &c, ContainerKind::App, &ImageInfo::default(), &node(), |_| true).unwrap_err();
        assert_eq!(e.reason, "CreateContainerError");
        assert_eq!(e.message, "container c: the command line contains a NUL character");
        let c = container(
            serde_json::json!({"name": "c", "command": ["/bin/true"], "env": [{"name": "my.var", "value": "x"}]}),
        );
        let e = plan(&p, &c, ContainerKind::App, &ImageInfo::default(), &node(), |_| true).unwrap_err();
        assert!(e.message.starts_with("container c: env \"my.var\" is not a valid environment variable name"), "{e}");
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

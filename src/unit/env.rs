//! A container's environment with the kubelet's semantics (`kubelet_pods.go`
//! `makeEnvironmentVariables`): `envFrom` first (ConfigMaps and Secrets, with their prefix;
//! keys that are no valid variable name are skipped with a warning), then `env` in order, each
//! value `$(VAR)`-expanded against what is defined so far and the service variables, or taken
//! from its source (configMapKeyRef, secretKeyRef, fieldRef, resourceFieldRef); then the service
//! variables the container does not define. Missing non-optional sources are errors with the
//! kubelet's messages. Pure: the objects come resolved in [`PodData`].
//!
//! Values from Secrets, and values expanded from them, are marked secret: they are written to a
//! root-only file on tmpfs (`EnvironmentFile=`), never into the unit file.

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

use super::data::{Kind, ObjState, PodData};
use super::escape::is_valid_env_name;
use super::{NodeContext, SpecError, WaitingReason};

/// A piece of an expanded string; `Debug` hides secret values.
#[derive(Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text (literal, or the value of a variable that is not secret).
    Text(String),
    /// The value of a secret variable.
    Secret {
        /// The variable's name.
        name: String,
        /// Its value.
        value: String,
    },
}

impl std::fmt::Debug for Piece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Piece::Text(t) => f.debug_tuple("Text").field(t).finish(),
            Piece::Secret { name, .. } => f.debug_tuple("Secret").field(name).finish(),
        }
    }
}

/// Kubernetes `$(VAR)` expansion (k8s.io/kubernetes third_party/forked/golang/expansion), in
/// pieces: `$(NAME)` is replaced when `lookup` knows NAME (value, secret?) and kept as written
/// otherwise; `$$` is `$`.
pub fn expand_pieces(input: &str, lookup: impl Fn(&str) -> Option<(String, bool)>) -> Vec<Piece> {
    let b = input.as_bytes();
    let mut out: Vec<Piece> = Vec::new();
    let mut text = String::with_capacity(input.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < b.len() {
        if b[cursor] == b'$' && cursor + 1 < b.len() {
            text.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            let advance = match b[cursor + 1] {
                b'$' => {
                    text.push('$');
                    1
                }
                b'(' => match rest.find(')') {
                    Some(close) => {
                        let name = &rest[1..close];
                        match lookup(name) {
                            Some((v, false)) => text.push_str(&v),
                            Some((value, true)) => {
                                out.push(Piece::Text(std::mem::take(&mut text)));
                                out.push(Piece::Secret { name: name.to_owned(), value });
                            }
                            None => {
                                text.push_str("$(");
                                text.push_str(name);
                                text.push(')');
                            }
                        }
                        close + 1
                    }
                    None => {
                        text.push_str("$(");
                        1
                    }
                },
                _ => {
                    // "$x": both characters are kept; x is a whole character (may be multi-byte).
                    let c = rest.chars().next().map_or(1, char::len_utf8);
                    text.push('$');
                    text.push_str(&rest[..c]);
                    c
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    text.push_str(input.get(checkpoint..).unwrap_or(""));
    out.push(Piece::Text(text));
    out.retain(|p| !matches!(p, Piece::Text(t) if t.is_empty()));
    out
}

/// The whole value of expanded pieces, and whether a secret went into it.
pub fn join_pieces(pieces: &[Piece]) -> (String, bool) {
    let mut s = String::new();
    let mut secret = false;
    for p in pieces {
        match p {
            Piece::Text(t) => s.push_str(t),
            Piece::Secret { value, .. } => {
                s.push_str(value);
                secret = true;
            }
        }
    }
    (s, secret)
}

/// Kubernetes `$(VAR)` expansion of a string (see [`expand_pieces`]).
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    join_pieces(&expand_pieces(input, |n| lookup(n).map(|v| (v, false)))).0
}

/// Go's `strconv.Quote` of a string, for `key="value"` lines of labels and annotations.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Labels or annotations as the kubelet writes them into a downwardAPI file: sorted
/// `key="value"` lines (`fieldpath.FormatMap`).
fn format_map(m: Option<&std::collections::BTreeMap<String, String>>) -> String {
    m.into_iter().flatten().map(|(k, v)| format!("{k}={}", go_quote(v))).collect::<Vec<_>>().join("\n")
}

/// The value of a downward-API field path (`podFieldSelectorRuntimeValue` and
/// `fieldpath.ExtractFieldPathAsString`); `volume` allows the whole-map paths only volumes may
/// use.
pub fn field_ref(pod: &Pod, node: &NodeContext, path: &str, volume: bool) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let subscript = |prefix: &str| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_prefix("['")?.strip_suffix("']")?;
        Some(key.to_owned())
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" if volume => format_map(meta.labels.as_ref()),
        "metadata.annotations" if volume => format_map(meta.annotations.as_ref()),
        "spec.nodeName" if !volume => spec.and_then(|s| s.node_name.clone()).unwrap_or_else(|| node.node_name.clone()),
        "spec.serviceAccountName" if !volume => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.hostIP" | "status.podIP" | "status.hostIPs" | "status.podIPs" if !volume => node.node_ip.clone(),
        _ => {
            if let Some(k) = subscript("metadata.labels") {
                meta.labels.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
            } else if let Some(k) = subscript("metadata.annotations") {
                meta.annotations.as_ref().and_then(|a| a.get(&k).cloned()).unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldPath: {path}"));
            }
        }
    })
}

/// One variable of a container's environment.
#[derive(Clone, PartialEq, Eq)]
pub struct Var {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: String,
    /// The value comes from a Secret (directly or by expansion).
    pub secret: bool,
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = if self.secret { "(secret)" } else { self.value.as_str() };
        write!(f, "{}={v:?}", self.name)
    }
}

/// A container's resolved environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedEnv {
    /// The variables in the order the process gets them.
    pub vars: Vec<Var>,
    /// Keys of envFrom sources that were skipped, one message each (the kubelet's
    /// `InvalidEnvironmentVariableNames` Warning event).
    pub warnings: Vec<String>,
}

impl ResolvedEnv {
    /// The variables that are not secret, as (name, value).
    pub fn plain(&self) -> Vec<(String, String)> {
        self.vars.iter().filter(|v| !v.secret).map(|v| (v.name.clone(), v.value.clone())).collect()
    }

    /// The secret variables, as (name, value).
    pub fn secret(&self) -> Vec<(String, String)> {
        self.vars.iter().filter(|v| v.secret).map(|v| (v.name.clone(), v.value.clone())).collect()
    }

    /// A variable's value and whether it is secret.
    pub fn lookup(&self, name: &str) -> Option<(String, bool)> {
        self.vars.iter().find(|v| v.name == name).map(|v| (v.value.clone(), v.secret))
    }

    fn set(&mut self, name: &str, value: String, secret: bool) {
        match self.vars.iter_mut().find(|v| v.name == name) {
            Some(v) => {
                v.value = value;
                v.secret = secret;
            }
            None => self.vars.push(Var { name: name.to_owned(), value, secret }),
        }
    }
}

/// An object's data; `None` when it is absent and optional.
fn object(
    data: &PodData,
    c: &Container,
    kind: Kind,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<Option<std::sync::Arc<super::data::ObjData>>, SpecError> {
    match data.object(kind, ns, name) {
        ObjState::Present(d) => Ok(Some(d)),
        ObjState::Absent if optional => Ok(None),
        ObjState::Absent => {
            Err(SpecError::config(format!("container {}: {} {name:?} not found", c.name, kind.lower())))
        }
        ObjState::Pending => Err(SpecError {
            reason: WaitingReason::ContainerCreating,
            message: format!("container {}: waiting for {} {ns}/{name} to be read", c.name, kind.api()),
        }),
        ObjState::Failed(e) => {
            Err(SpecError::config(format!("container {}: reading {} {ns}/{name}: {e}", c.name, kind.lower())))
        }
    }
}

fn utf8(c: &Container, what: String, bytes: &[u8]) -> Result<String, SpecError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        SpecError::config(format!(
            "container {}: {what} is not valid UTF-8, which systemd cannot pass in the environment",
            c.name
        ))
    })
}

/// Resolves a container's environment (see the module documentation).
pub fn resolve_env(pod: &Pod, c: &Container, node: &NodeContext, data: &PodData) -> Result<ResolvedEnv, SpecError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = ResolvedEnv::default();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        let (kind, name, optional) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => (Kind::ConfigMap, r.name.as_str(), r.optional == Some(true)),
            (None, Some(r)) => (Kind::Secret, r.name.as_str(), r.optional == Some(true)),
            (None, None) => continue,
        };
        let Some(obj) = object(data, c, kind, ns, name, optional)? else { continue };
        let mut skipped: Vec<String> = Vec::new();
        for (k, v) in &obj.data {
            let key = format!("{prefix}{k}");
            match String::from_utf8(v.clone()) {
                Ok(v) if is_valid_env_name(&key) && !v.contains('\0') => out.set(&key, v, kind == Kind::Secret),
                _ => skipped.push(key),
            }
        }
        if !skipped.is_empty() {
            out.warnings.push(format!(
                "Keys [{}] from the EnvFrom {} {ns}/{name} were skipped since they are considered invalid environment \
                 variable names (or their values are not text systemd can pass).",
                skipped.join(", "),
                kind.lower()
            ));
        }
    }
    for EnvVar { name, value, value_from } in c.env.iter().flatten() {
        let literal = value.as_deref().unwrap_or("");
        let (v, secret) = match value_from {
            Some(from) if literal.is_empty() => {
                if let Some(f) = &from.field_ref {
                    let v = field_ref(pod, node, &f.field_path, false)
                        .map_err(|e| SpecError::config(format!("container {}: env {name}: {e}", c.name)))?;
                    (v, false)
                } else if let Some(r) = &from.resource_field_ref {
                    let target = match r.container_name.as_deref().filter(|n| !n.is_empty() && *n != c.name) {
                        Some(other) => super::pod_containers(pod.spec.as_ref().unwrap_or(&Default::default()))
                            .into_iter()
                            .map(|(ctr, _)| ctr.clone())
                            .find(|ctr| ctr.name == other)
                            .ok_or_else(|| {
                                SpecError::config(format!("container {}: env {name}: no container {other:?}", c.name))
                            })?,
                        None => c.clone(),
                    };
                    let v = super::resource::resource_value(&target, r, &data.allocatable)
                        .map_err(|e| SpecError::config(format!("container {}: env {name}: {e}", c.name)))?;
                    (v, false)
                } else if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match object(data, c, Kind::ConfigMap, ns, &r.name, optional)? {
                        None => continue,
                        Some(d) => match d.data.get(&r.key) {
                            Some(v) => {
                                (utf8(c, format!("env {name} (key {} of ConfigMap {ns}/{})", r.key, r.name), v)?, false)
                            }
                            None if optional => continue,
                            None => {
                                return Err(SpecError::config(format!(
                                    "container {}: couldn't find key {} in ConfigMap {ns}/{}",
                                    c.name, r.key, r.name
                                )));
                            }
                        },
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match object(data, c, Kind::Secret, ns, &r.name, optional)? {
                        None => continue,
                        Some(d) => match d.data.get(&r.key) {
                            Some(v) => {
                                (utf8(c, format!("env {name} (key {} of Secret {ns}/{})", r.key, r.name), v)?, true)
                            }
                            None if optional => continue,
                            None => {
                                return Err(SpecError::config(format!(
                                    "container {}: couldn't find key {} in Secret {ns}/{}",
                                    c.name, r.key, r.name
                                )));
                            }
                        },
                    }
                } else if from.file_key_ref.is_some() {
                    return Err(SpecError::config(format!(
                        "container {}: env {name}: fileKeyRef is not supported by vks yet",
                        c.name
                    )));
                } else {
                    (String::new(), false)
                }
            }
            _ => {
                let service = &data.service_env;
                let pieces = expand_pieces(literal, |n| {
                    out.lookup(n).or_else(|| service.iter().find(|(k, _)| k == n).map(|(_, v)| (v.clone(), false)))
                });
                join_pieces(&pieces)
            }
        };
        out.set(name, v, secret);
    }
    for (k, v) in &data.service_env {
        if out.lookup(k).is_none() {
            out.vars.push(Var { name: k.clone(), value: v.clone(), secret: false });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;

//! A container's environment with Kubernetes semantics: `env` resolved in order with `$(VAR)`
//! expansion and the downward API's `fieldRef`s. Pure.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

use super::{NodeContext, SpecError};

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
        assert_eq!(e.reason, crate::reason::WaitingReason::CreateContainerConfigError);
        assert_eq!(e.message, "container c: env PW: secretKeyRef is not supported by vks yet");
    }
}

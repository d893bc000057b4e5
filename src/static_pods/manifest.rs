//! One manifest file → the static pods it holds, as the kubelet's file source makes them (pure):
//! `<name>-<node>` names, the `default` namespace when none is given, `spec.nodeName` set to this
//! node, the `kubernetes.io/config.{hash,source}` annotations, the NoExecute toleration, and a
//! UID hashed from the manifest, the node and the file.
//!
//! The kubelet hashes its decoded Go object (`hash.DeepHashObject`, FNV-128a) and then
//! `host:<node>` and `file:<path>`; vks hashes the pod's canonical JSON (k8s-openapi serializes
//! fields in a fixed order and maps sorted) the same way. The UID is thus stable across vks
//! restarts and unchanged by comments or formatting, and any change of the pod makes a new UID:
//! the pod is replaced, as with the kubelet.

use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Toleration};

use crate::config::{validate_dns_label, validate_dns_subdomain};

/// The annotation holding a static pod's UID (`kubernetes.io/config.hash`).
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
/// The annotation naming where a pod came from (`file` for static pods).
pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";
/// The annotation that makes a pod in the API the mirror of a static pod (its UID).
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";
/// When the node first saw the pod (on mirror pods).
pub const CONFIG_SEEN: &str = "kubernetes.io/config.seen";
/// The largest manifest file read (the kubelet's limit).
pub const MAX_MANIFEST_BYTES: u64 = 10 << 20;

/// Whether the pod is a mirror pod (the API's copy of a static pod).
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(CONFIG_MIRROR))
}

/// Whether the pod came from a manifest file.
pub fn is_static(pod: &Pod) -> bool {
    pod.metadata.annotations.as_ref().and_then(|a| a.get(CONFIG_SOURCE)).is_some_and(|s| s == "file")
}

/// FNV-1a with 128 bits, the kubelet's hash for static pod UIDs.
fn fnv128a(parts: &[&[u8]]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    let mut h = OFFSET;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u128::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

/// The UID of a static pod: FNV-128a of the pod as read, then `host:<node>` and `file:<path>`,
/// as 32 hex digits.
pub fn static_uid(pod: &Pod, node: &str, file: &Path) -> String {
    let canonical = serde_json::to_vec(pod).unwrap_or_default();
    let host = format!("host:{node}");
    let source = format!("file:{}", file.display());
    format!("{:032x}", fnv128a(&[&canonical, host.as_bytes(), source.as_bytes()]))
}

/// The pods of one manifest file, or why the file is not valid (naming the document, the pod
/// and the field). `text` is the file's content, `file` its path (part of the UID).
pub fn pods_in_file(file: &Path, text: &str, node: &str) -> Result<Vec<Pod>, String> {
    let is_json = file.extension().is_some_and(|e| e == "json");
    let docs: Vec<serde_json::Value> = if is_json {
        vec![serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?]
    } else {
        serde_saphyr::from_multiple::<serde_json::Value>(text)
            .map_err(|e| format!("not valid YAML: {}", first_line(&e.to_string())))?
    };
    let docs: Vec<serde_json::Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    let many = docs.len() > 1;
    let mut pods = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let at = |e: String| if many { format!("document {}: {e}", i + 1) } else { e };
        let is_list = doc.get("kind").and_then(|k| k.as_str()) != Some("Pod");
        for (j, item) in objects(doc).map_err(at)?.into_iter().enumerate() {
            let in_list = |e: String| if is_list { format!("item {}: {e}", j + 1) } else { e };
            pods.push(static_pod(item, node, file).map_err(|e| at(in_list(e)))?);
        }
    }
    Ok(pods)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

/// The Pod objects of a document: a Pod, or the items of a PodList or v1 List.
fn objects(doc: serde_json::Value) -> Result<Vec<serde_json::Value>, String> {
    let kind = doc.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_owned();
    let api_version = doc.get("apiVersion").and_then(|k| k.as_str()).unwrap_or("").to_owned();
    if api_version != "v1" {
        return Err(format!("apiVersion {api_version:?}: a static pod must be apiVersion v1"));
    }
    match kind.as_str() {
        "Pod" => Ok(vec![doc]),
        "PodList" | "List" => match doc.get("items") {
            Some(serde_json::Value::Array(items)) => Ok(items.clone()),
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(_) => Err(format!("{kind}: items is not a list")),
        },
        "" => Err("kind is missing: expected kind: Pod".into()),
        other => Err(format!("kind {other:?}: only Pods can be static pods")),
    }
}

/// One Pod object of a manifest turned into the static pod that runs.
fn static_pod(mut value: serde_json::Value, node: &str, file: &Path) -> Result<Pod, String> {
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("Pod");
    if kind != "Pod" {
        return Err(format!("kind {kind:?}: only Pods can be static pods"));
    }
    if let Some(o) = value.as_object_mut() {
        // The status of a manifest means nothing; the node owns it.
        o.remove("status");
    }
    let pod: Pod = serde_json::from_value(value).map_err(|e| format!("not a valid Pod: {e}"))?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err("metadata.name is missing: a static pod needs a name".into());
    }
    let full_name = format!("{name}-{}", node.to_ascii_lowercase());
    let what = format!("pod {name:?}");
    validate_dns_subdomain(&full_name)
        .map_err(|e| format!("{what}: its name on this node, {full_name:?}, is not a valid pod name: {e}"))?;
    let namespace = pod.metadata.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
    validate_dns_label(&namespace).map_err(|e| format!("{what}: metadata.namespace {namespace:?}: {e}"))?;
    let spec = pod.spec.as_ref().ok_or_else(|| format!("{what}: spec is missing"))?;
    validate_containers(spec).map_err(|e| format!("{what}: {e}"))?;
    if let Some(r) = api_reference(spec) {
        return Err(format!(
            "{what}: static pods may not refer to API objects: {r} (as with the kubelet; put the data into the \
             manifest or a hostPath volume)"
        ));
    }
    let uid = match pod.metadata.uid.clone().filter(|u| !u.is_empty()) {
        Some(u) if u.len() <= 128 && u.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => u,
        Some(u) => return Err(format!("{what}: metadata.uid {u:?}: only letters, digits and '-' (at most 128)")),
        None => static_uid(&pod, node, file),
    };
    let mut pod = pod;
    pod.metadata.name = Some(full_name);
    pod.metadata.namespace = Some(namespace);
    pod.metadata.uid = Some(uid.clone());
    let annotations = pod.metadata.annotations.get_or_insert_default();
    annotations.insert(CONFIG_HASH.into(), uid);
    annotations.insert(CONFIG_SOURCE.into(), "file".into());
    annotations.remove(CONFIG_MIRROR);
    let spec = pod.spec.get_or_insert_default();
    spec.node_name = Some(node.to_owned());
    let tolerate =
        Toleration { operator: Some("Exists".into()), effect: Some("NoExecute".into()), ..Toleration::default() };
    let tolerations = spec.tolerations.get_or_insert_default();
    if !tolerations.contains(&tolerate) {
        tolerations.push(tolerate);
    }
    Ok(pod)
}

fn validate_containers(spec: &PodSpec) -> Result<(), String> {
    if spec.containers.is_empty() {
        return Err("spec.containers is empty: a pod needs at least one container".into());
    }
    let mut seen: Vec<&str> = Vec::new();
    let all = spec.init_containers.iter().flatten().map(|c| ("initContainers", c));
    for (field, c) in all.chain(spec.containers.iter().map(|c| ("containers", c))) {
        validate_dns_label(&c.name).map_err(|e| format!("spec.{field} name {:?}: {e}", c.name))?;
        if seen.contains(&c.name.as_str()) {
            return Err(format!("spec.{field} name {:?}: used by two containers", c.name));
        }
        seen.push(&c.name);
        if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
            return Err(format!("spec.{field}[{:?}].image is missing", c.name));
        }
    }
    Ok(())
}

/// The first reference to an API object in the spec (the kubelet's `HasAPIObjectReference`),
/// described with its field.
fn api_reference(spec: &PodSpec) -> Option<String> {
    for (field, v) in [("serviceAccountName", &spec.service_account_name), ("serviceAccount", &spec.service_account)] {
        if let Some(sa) = v.as_deref().filter(|s| !s.is_empty()) {
            return Some(format!("spec.{field} {sa:?} (a service account)"));
        }
    }
    if spec.image_pull_secrets.as_ref().is_some_and(|s| !s.is_empty()) {
        return Some("spec.imagePullSecrets (secrets)".into());
    }
    if spec.resource_claims.as_ref().is_some_and(|c| !c.is_empty()) {
        return Some("spec.resourceClaims (resource claims)".into());
    }
    for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
        if let Some(r) = container_reference(c) {
            return Some(format!("container {:?}: {r}", c.name));
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(kind) = volume_reference(v) {
            return Some(format!("volume {:?} is {kind}", v.name));
        }
    }
    None
}

fn container_reference(c: &Container) -> Option<String> {
    for e in c.env.iter().flatten() {
        let Some(from) = &e.value_from else { continue };
        if from.config_map_key_ref.is_some() {
            return Some(format!("env {:?} takes a value from a ConfigMap (configMapKeyRef)", e.name));
        }
        if from.secret_key_ref.is_some() {
            return Some(format!("env {:?} takes a value from a Secret (secretKeyRef)", e.name));
        }
    }
    for e in c.env_from.iter().flatten() {
        if e.config_map_ref.is_some() {
            return Some("envFrom takes a ConfigMap (configMapRef)".into());
        }
        if e.secret_ref.is_some() {
            return Some("envFrom takes a Secret (secretRef)".into());
        }
    }
    None
}

/// What API object a volume refers to, if any.
fn volume_reference(v: &k8s_openapi::api::core::v1::Volume) -> Option<&'static str> {
    if v.config_map.is_some() {
        return Some("a configMap volume (a ConfigMap)");
    }
    if v.secret.is_some() {
        return Some("a secret volume (a Secret)");
    }
    if v.persistent_volume_claim.is_some() {
        return Some("a persistentVolumeClaim volume (a PersistentVolumeClaim)");
    }
    if v.ephemeral.is_some() {
        return Some("an ephemeral volume (a PersistentVolumeClaim)");
    }
    if v.csi.is_some() {
        return Some("a csi volume (a CSIDriver)");
    }
    if v.azure_file.is_some() {
        return Some("an azureFile volume (a Secret)");
    }
    let secret_ref = v.cephfs.as_ref().is_some_and(|x| x.secret_ref.is_some())
        || v.flex_volume.as_ref().is_some_and(|x| x.secret_ref.is_some())
        || v.iscsi.as_ref().is_some_and(|x| x.secret_ref.is_some())
        || v.rbd.as_ref().is_some_and(|x| x.secret_ref.is_some())
        || v.scale_io.is_some()
        || v.storageos.as_ref().is_some_and(|x| x.secret_ref.is_some());
    if secret_ref {
        return Some("a volume with a secretRef (a Secret)");
    }
    for s in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
        if s.config_map.is_some() {
            return Some("a projected volume with a configMap source (a ConfigMap)");
        }
        if s.secret.is_some() {
            return Some("a projected volume with a secret source (a Secret)");
        }
        if s.service_account_token.is_some() {
            return Some("a projected volume with a serviceAccountToken source (a service-account token)");
        }
        if s.cluster_trust_bundle.is_some() {
            return Some("a projected volume with a clusterTrustBundle source (a ClusterTrustBundle)");
        }
        if s.pod_certificate.is_some() {
            return Some("a projected volume with a podCertificate source (a pod certificate)");
        }
    }
    None
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;

//! What a pod refers to outside its spec, and the service links. Pure.
//!
//! - [`references`]: the ConfigMaps and Secrets a pod's env and volumes name (what the Node
//!   authorizer lets this node read, and what vks watches for it);
//! - [`token_specs`]: the service-account tokens its projected volumes ask for;
//! - [`service_env`]: the service variables (`k8s.io/kubernetes/pkg/kubelet/envvars`
//!   `FromServices`), with the `kubernetes` Service pointing at the API server as pods on this
//!   node reach it.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::unit::data::{Kind, ObjKey, TokenSpec};

/// The lifetime of a projected token when the source sets none (the API server's default).
pub const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// The ConfigMaps and Secrets the pod refers to, in its (and its ephemeral containers') env,
/// envFrom and volumes.
pub fn references(pod: &Pod) -> BTreeSet<ObjKey> {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let key = |kind, name: &str| ObjKey { kind, namespace: ns.clone(), name: name.to_owned() };
    let mut out = BTreeSet::new();
    let Some(spec) = pod.spec.as_ref() else { return out };
    let ephemeral = crate::unit::ephemeral::containers(spec);
    for c in spec.init_containers.iter().flatten().chain(spec.containers.iter()).chain(ephemeral.iter()) {
        for from in c.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                out.insert(key(Kind::ConfigMap, &r.name));
            }
            if let Some(r) = &from.secret_ref {
                out.insert(key(Kind::Secret, &r.name));
            }
        }
        for e in c.env.iter().flatten() {
            let Some(from) = &e.value_from else { continue };
            if let Some(r) = &from.config_map_key_ref {
                out.insert(key(Kind::ConfigMap, &r.name));
            }
            if let Some(r) = &from.secret_key_ref {
                out.insert(key(Kind::Secret, &r.name));
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            out.insert(key(Kind::ConfigMap, &cm.name));
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) {
            out.insert(key(Kind::Secret, s));
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &src.config_map {
                out.insert(key(Kind::ConfigMap, &cm.name));
            }
            if let Some(s) = &src.secret {
                out.insert(key(Kind::Secret, &s.name));
            }
        }
    }
    out.retain(|k| !k.name.is_empty());
    out
}

/// The token one projected serviceAccountToken source asks for.
pub fn token_spec(pod: &Pod, src: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection) -> TokenSpec {
    let spec = pod.spec.as_ref();
    let sa = spec
        .and_then(|s| s.service_account_name.clone().or_else(|| s.service_account.clone()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    TokenSpec {
        service_account: sa,
        audience: src.audience.clone().filter(|a| !a.is_empty()),
        expiration_seconds: src.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS),
    }
}

/// Every token the pod's projected volumes ask for.
pub fn token_specs(pod: &Pod) -> BTreeSet<TokenSpec> {
    let Some(spec) = pod.spec.as_ref() else { return BTreeSet::new() };
    spec.volumes
        .iter()
        .flatten()
        .flat_map(|v| v.projected.iter().flat_map(|p| p.sources.iter().flatten()))
        .filter_map(|s| s.service_account_token.as_ref())
        .map(|t| token_spec(pod, t))
        .collect()
}

fn env_name(s: &str) -> String {
    s.replace('-', "_").to_uppercase()
}

/// The variables of one Service (`envvars.FromServices` and `makeLinkVariables`).
fn service_vars(out: &mut Vec<(String, String)>, name: &str, ip: &str, ports: &[ServicePort]) {
    let Some(first) = ports.first() else { return };
    let prefix = env_name(name);
    out.push((format!("{prefix}_SERVICE_HOST"), ip.to_owned()));
    out.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
    for p in ports {
        if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((format!("{prefix}_SERVICE_PORT_{}", env_name(n)), p.port.to_string()));
        }
    }
    let host_port = |port: i32| {
        if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") }
    };
    for (i, p) in ports.iter().enumerate() {
        let proto = p.protocol.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "TCP".into());
        let lower = proto.to_lowercase();
        let url = format!("{lower}://{}", host_port(p.port));
        if i == 0 {
            out.push((format!("{prefix}_PORT"), url.clone()));
        }
        let pp = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
        out.push((pp.clone(), url));
        out.push((format!("{pp}_PROTO"), lower));
        out.push((format!("{pp}_PORT"), p.port.to_string()));
        out.push((format!("{pp}_ADDR"), ip.to_owned()));
    }
}

fn has_cluster_ip(s: &Service) -> bool {
    s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()).is_some_and(|ip| !ip.is_empty() && ip != "None")
}

/// The `kubernetes` Service as pods on this node see it: the API server's real address.
pub fn master_service(api_server: &(String, u16)) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some("kubernetes".into()),
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(api_server.0.clone()),
            ports: Some(vec![ServicePort {
                name: Some("https".into()),
                port: i32::from(api_server.1),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The service variables of a pod in `namespace` (`getServiceEnvVarMap`): the `kubernetes`
/// Service always (pointing at `api_server`), the Services of the namespace with a cluster IP
/// when `enable_service_links`, sorted by name.
pub fn service_env(
    api_server: Option<&(String, u16)>,
    services: &[Service],
    namespace: &str,
    enable_service_links: bool,
) -> Vec<(String, String)> {
    let mut chosen: std::collections::BTreeMap<String, Service> = Default::default();
    if let Some(a) = api_server {
        chosen.insert("kubernetes".into(), master_service(a));
    }
    if enable_service_links {
        for s in services.iter().filter(|s| s.metadata.namespace.as_deref() == Some(namespace) && has_cluster_ip(s)) {
            let name = s.metadata.name.clone().unwrap_or_default();
            if namespace == "default" && name == "kubernetes" {
                continue;
            }
            chosen.entry(name).or_insert_with(|| s.clone());
        }
    }
    let mut out = Vec::new();
    for (name, s) in &chosen {
        let spec = s.spec.clone().unwrap_or_default();
        service_vars(&mut out, name, spec.cluster_ip.as_deref().unwrap_or(""), &spec.ports.unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": spec})).unwrap()
    }

    #[test]
    fn references_cover_env_env_from_and_volumes() {
        let p = pod(serde_json::json!({
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "s1"}}]}],
            "containers": [{"name": "c", "envFrom": [{"configMapRef": {"name": "c1"}}], "env": [
                {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s2", "key": "k"}}},
                {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "c2", "key": "k"}}},
                {"name": "C", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}],
            "volumes": [
                {"name": "v1", "configMap": {"name": "c3"}},
                {"name": "v2", "secret": {"secretName": "s3"}},
                {"name": "v3", "projected": {"sources": [
                    {"configMap": {"name": "kube-root-ca.crt"}}, {"secret": {"name": "s4"}},
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 600, "audience": "vault"}}]}},
                {"name": "v4", "emptyDir": {}}]
        }));
        let names: Vec<String> = references(&p).iter().map(|k| format!("{:?}/{}", k.kind, k.name)).collect();
        assert_eq!(
            names,
            [
                "ConfigMap/c1",
                "ConfigMap/c2",
                "ConfigMap/c3",
                "ConfigMap/kube-root-ca.crt",
                "Secret/s1",
                "Secret/s2",
                "Secret/s3",
                "Secret/s4"
            ]
        );
        let tokens: Vec<TokenSpec> = token_specs(&p).into_iter().collect();
        assert_eq!(
            tokens,
            [TokenSpec { service_account: "default".into(), audience: Some("vault".into()), expiration_seconds: 600 }]
        );
    }

    #[test]
    fn service_links_follow_the_kubelet() {
        let svc = |ns: &str, name: &str, ip: &str, ports: serde_json::Value| -> Service {
            serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": ns},
                "spec": {"clusterIP": ip, "ports": ports}}))
            .unwrap()
        };
        let services = [
            svc(
                "ns",
                "my-db",
                "10.43.0.9",
                serde_json::json!([{"port": 5432}, {"name": "metrics", "port": 9187, "protocol": "TCP"}]),
            ),
            svc("ns", "headless", "None", serde_json::json!([{"port": 80}])),
            svc("other", "elsewhere", "10.43.0.10", serde_json::json!([{"port": 80}])),
        ];
        let api = ("127.0.0.1".to_owned(), 6443);
        let env = service_env(Some(&api), &services, "ns", true);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("127.0.0.1"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("6443"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("6443"));
        assert_eq!(get("KUBERNETES_PORT"), Some("tcp://127.0.0.1:6443"));
        assert_eq!(get("KUBERNETES_PORT_6443_TCP_ADDR"), Some("127.0.0.1"));
        assert_eq!(get("MY_DB_SERVICE_HOST"), Some("10.43.0.9"));
        assert_eq!(get("MY_DB_SERVICE_PORT"), Some("5432"));
        assert_eq!(get("MY_DB_SERVICE_PORT_METRICS"), Some("9187"));
        assert_eq!(get("MY_DB_PORT"), Some("tcp://10.43.0.9:5432"));
        assert_eq!(get("MY_DB_PORT_9187_TCP_PROTO"), Some("tcp"));
        assert_eq!(get("HEADLESS_SERVICE_HOST"), None);
        assert_eq!(get("ELSEWHERE_SERVICE_HOST"), None);
        let env = service_env(Some(&api), &services, "ns", false);
        assert!(env.iter().all(|(k, _)| k.starts_with("KUBERNETES_")), "{env:?}");
        assert_eq!(env.len(), 8);
        let v6 = service_env(Some(&("::1".to_owned(), 6443)), &[], "ns", true);
        assert!(v6.contains(&("KUBERNETES_PORT".into(), "tcp://[::1]:6443".into())));
    }
}

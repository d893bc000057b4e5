use std::sync::Arc;

use super::*;
use crate::unit::data::{ObjData, ObjKey};

fn container(json: serde_json::Value) -> Container {
    serde_json::from_value(json).unwrap()
}

fn pod() -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "web", "tier": "a\"b"}},
        "spec": {"nodeName": "n1", "serviceAccountName": "sa", "containers": []}
    }))
    .unwrap()
}

fn node() -> NodeContext {
    NodeContext::new("n1", "10.0.0.5")
}

fn obj(kind: Kind, name: &str, kv: &[(&str, &str)]) -> (ObjKey, ObjState) {
    let data = kv.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())).collect();
    (
        ObjKey { kind, namespace: "ns".into(), name: name.into() },
        ObjState::Present(Arc::new(ObjData { data, ..ObjData::default() })),
    )
}

fn absent(kind: Kind, name: &str) -> (ObjKey, ObjState) {
    (ObjKey { kind, namespace: "ns".into(), name: name.into() }, ObjState::Absent)
}

fn data(objects: Vec<(ObjKey, ObjState)>) -> PodData {
    PodData { objects: objects.into_iter().collect(), ..PodData::default() }
}

fn pairs(env: &ResolvedEnv) -> Vec<(String, String, bool)> {
    env.vars.iter().map(|v| (v.name.clone(), v.value.clone(), v.secret)).collect()
}

fn p(k: &str, v: &str, s: bool) -> (String, String, bool) {
    (k.to_owned(), v.to_owned(), s)
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
fn secret_values_stay_separate_pieces() {
    let lookup = |n: &str| match n {
        "PW" => Some(("s3cret".to_owned(), true)),
        "A" => Some(("a".to_owned(), false)),
        _ => None,
    };
    assert_eq!(
        expand_pieces("--pw=$(PW)/$(A)$$", lookup),
        [
            Piece::Text("--pw=".into()),
            Piece::Secret { name: "PW".into(), value: "s3cret".into() },
            Piece::Text("/a$".into())
        ]
    );
    assert_eq!(join_pieces(&expand_pieces("$(A)", lookup)), ("a".to_owned(), false));
    assert_eq!(expand_pieces("", lookup), []);
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
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "A", "value": "again"}
        ]
    }));
    let env = resolve_env(&pod(), &c, &node(), &PodData::default()).unwrap();
    assert_eq!(
        pairs(&env),
        [
            p("A", "again", false),
            p("B", "1-$(C)", false),
            p("C", "3", false),
            p("IP", "10.0.0.5", false),
            p("APP", "web", false),
            p("SA", "sa", false)
        ]
    );
}

#[test]
fn config_maps_and_secrets_with_env_from_first_and_prefixes() {
    let d = data(vec![
        obj(Kind::ConfigMap, "cfg", &[("MODE", "prod"), ("bad-key", "x"), ("LEVEL", "3")]),
        obj(Kind::Secret, "creds", &[("PASSWORD", "pa$$ \"w\"\n"), ("USER", "admin")]),
    ]);
    let c = container(serde_json::json!({
        "name": "c",
        "envFrom": [{"configMapRef": {"name": "cfg"}}, {"secretRef": {"name": "creds"}, "prefix": "DB_"}],
        "env": [
            {"name": "LEVEL", "value": "override-$(MODE)"},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "PASSWORD"}}},
            {"name": "DSN", "value": "$(DB_USER):$(PW)@db"},
            {"name": "M", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "MODE"}}}
        ]
    }));
    let env = resolve_env(&pod(), &c, &node(), &d).unwrap();
    assert_eq!(
        pairs(&env),
        [
            p("LEVEL", "override-prod", false),
            p("MODE", "prod", false),
            p("DB_PASSWORD", "pa$$ \"w\"\n", true),
            p("DB_USER", "admin", true),
            p("PW", "pa$$ \"w\"\n", true),
            p("DSN", "admin:pa$$ \"w\"\n@db", true),
            p("M", "prod", false),
        ]
    );
    assert_eq!(
        env.warnings,
        ["Keys [bad-key] from the EnvFrom configmap ns/cfg were skipped since they are considered invalid \
          environment variable names (or their values are not text systemd can pass)."]
    );
    assert!(!format!("{env:?}").contains("admin"), "Debug hides secret values: {env:?}");
}

#[test]
fn missing_sources_have_the_kubelets_messages_unless_optional() {
    let d = data(vec![absent(Kind::ConfigMap, "none"), absent(Kind::Secret, "gone"), obj(Kind::Secret, "s", &[])]);
    let err = |env: serde_json::Value| {
        let c = container(serde_json::json!({"name": "c", "env": [env]}));
        resolve_env(&pod(), &c, &node(), &d).unwrap_err()
    };
    let e = err(serde_json::json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "none", "key": "k"}}}));
    assert_eq!(
        (e.reason, e.message.as_str()),
        (WaitingReason::CreateContainerConfigError, "container c: configmap \"none\" not found")
    );
    let e = err(serde_json::json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}));
    assert_eq!(e.message, "container c: secret \"gone\" not found");
    let e = err(serde_json::json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}));
    assert_eq!(e.message, "container c: couldn't find key k in Secret ns/s");
    let e = err(serde_json::json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "later", "key": "k"}}}));
    assert_eq!(e.reason, WaitingReason::ContainerCreating, "not read yet: {e}");
    let e = err(serde_json::json!({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}));
    assert_eq!(e.message, "container c: env X: unsupported fieldPath: status.phase");
    // Optional: the variable is not set at all.
    let c = container(serde_json::json!({"name": "c",
    "envFrom": [{"configMapRef": {"name": "none", "optional": true}}],
    "env": [
        {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "none", "key": "k", "optional": true}}},
        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": true}}},
        {"name": "C", "value": "$(A)"}
    ]}));
    assert_eq!(pairs(&resolve_env(&pod(), &c, &node(), &d).unwrap()), [p("C", "$(A)", false)]);
}

#[test]
fn service_variables_come_last_and_can_be_referenced() {
    let d = PodData {
        service_env: vec![
            ("KUBERNETES_SERVICE_HOST".into(), "192.0.2.1".into()),
            ("KUBERNETES_SERVICE_PORT".into(), "6443".into()),
        ],
        ..PodData::default()
    };
    let c = container(serde_json::json!({"name": "c", "env": [
        {"name": "URL", "value": "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"},
        {"name": "KUBERNETES_SERVICE_PORT", "value": "1"}
    ]}));
    let env = resolve_env(&pod(), &c, &node(), &d).unwrap();
    assert_eq!(
        pairs(&env),
        [
            p("URL", "https://192.0.2.1:6443", false),
            p("KUBERNETES_SERVICE_PORT", "1", false),
            p("KUBERNETES_SERVICE_HOST", "192.0.2.1", false)
        ]
    );
}

#[test]
fn resource_field_refs_and_downward_maps() {
    let c = container(serde_json::json!({"name": "c", "resources": {"requests": {"memory": "64Mi"}}, "env": [
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory", "divisor": "1Mi"}}},
        {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}}
    ]}));
    let d = PodData {
        allocatable: crate::unit::data::Allocatable { cpu_millis: 4000, memory: 1 << 30, ephemeral_storage: 0 },
        ..PodData::default()
    };
    let env = resolve_env(&pod(), &c, &node(), &d).unwrap();
    assert_eq!(pairs(&env), [p("MEM", "64", false), p("CPU", "4000", false)]);
    assert_eq!(field_ref(&pod(), &node(), "metadata.labels", true).unwrap(), "app=\"web\"\ntier=\"a\\\"b\"");
    assert!(field_ref(&pod(), &node(), "metadata.labels", false).is_err(), "whole maps only in volumes");
    assert!(field_ref(&pod(), &node(), "status.podIP", true).is_err());
    assert_eq!(go_quote("a\u{1}\u{85}é\t"), "\"a\\x01\\u0085é\\t\"");
}

use std::sync::Arc;

use super::*;
use crate::unit::data::{ObjKey, Token, TokenSpec};

fn pod(volumes: serde_json::Value, fs_group: Option<i64>) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"b": "2", "a": "1"}},
        "spec": {"serviceAccountName": "robot", "securityContext": {"fsGroup": fs_group}, "volumes": volumes,
            "containers": [{"name": "c", "resources": {"requests": {"memory": "32Mi"}}}]}
    }))
    .unwrap()
}

fn node() -> NodeContext {
    NodeContext::new("n1", "10.0.0.5")
}

fn data() -> PodData {
    let obj = |kind, name: &str, kv: &[(&str, &str)]| {
        let d = kv.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())).collect();
        (
            ObjKey { kind, namespace: "ns".into(), name: name.into() },
            ObjState::Present(Arc::new(ObjData { data: d, ..ObjData::default() })),
        )
    };
    let mut bin = ObjData::default();
    bin.data.insert("text".into(), b"t".to_vec());
    bin.binary.insert("blob".into(), vec![0, 255]);
    let mut objects: std::collections::BTreeMap<_, _> = [
        obj(Kind::ConfigMap, "cfg", &[("app.conf", "x=1"), ("other", "o")]),
        obj(Kind::Secret, "creds", &[("password", "pw"), ("user", "u")]),
    ]
    .into_iter()
    .collect();
    objects.insert(
        ObjKey { kind: Kind::ConfigMap, namespace: "ns".into(), name: "bin".into() },
        ObjState::Present(Arc::new(bin)),
    );
    objects.insert(ObjKey { kind: Kind::ConfigMap, namespace: "ns".into(), name: "gone".into() }, ObjState::Absent);
    let tokens = [(
        TokenSpec { service_account: "robot".into(), audience: None, expiration_seconds: 3607 },
        Token("tok".into()),
    )]
    .into_iter()
    .collect();
    PodData { objects, tokens, ..PodData::default() }
}

fn files(v: serde_json::Value, fs_group: Option<i64>) -> Result<Vec<(String, String, u32)>, ContentError> {
    let p = pod(serde_json::json!([v]), fs_group);
    let d = data();
    let ctx = Ctx { pod: &p, node: &node(), data: &d, fs_group };
    let vol = &p.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
    Ok(payload(&ctx, vol)?
        .unwrap_or_default()
        .into_iter()
        .map(|(k, f)| (k, String::from_utf8_lossy(&f.data).into_owned(), f.mode))
        .collect())
}

fn f(p: &str, d: &str, m: u32) -> (String, String, u32) {
    (p.to_owned(), d.to_owned(), m)
}

#[test]
fn config_maps_and_secrets_keys_items_and_modes() {
    assert_eq!(
        files(serde_json::json!({"name": "v", "configMap": {"name": "cfg"}}), None).unwrap(),
        [f("app.conf", "x=1", 0o644), f("other", "o", 0o644)]
    );
    assert_eq!(
        files(
            serde_json::json!({"name": "v", "secret": {"secretName": "creds", "defaultMode": 0o400,
            "items": [{"key": "password", "path": "db/pw", "mode": 0o440}, {"key": "user", "path": "user"}]}}),
            None
        )
        .unwrap(),
        [f("db/pw", "pw", 0o440), f("user", "u", 0o400)]
    );
    let bin = files(serde_json::json!({"name": "v", "configMap": {"name": "bin"}}), None).unwrap();
    assert_eq!(bin.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["blob", "text"], "binaryData too");
    // Missing objects and keys, optional or not.
    assert_eq!(
        files(serde_json::json!({"name": "v", "configMap": {"name": "gone"}}), None),
        Err(ContentError::Failed("configmap \"gone\" not found".into()))
    );
    assert_eq!(
        files(serde_json::json!({"name": "v", "configMap": {"name": "gone", "optional": true}}), None),
        Ok(vec![])
    );
    assert_eq!(
        files(
            serde_json::json!({"name": "v", "secret": {"secretName": "creds", "items": [{"key": "nope", "path": "x"}]}}),
            None
        ),
        Err(ContentError::Failed("secret references non-existent secret key: nope".into()))
    );
    assert!(matches!(
        files(serde_json::json!({"name": "v", "secret": {"secretName": "not-yet"}}), None),
        Err(ContentError::Pending(_))
    ));
    // fsGroup: group-readable, as the kubelet's SetVolumeOwnership makes them.
    assert_eq!(
        files(serde_json::json!({"name": "v", "secret": {"secretName": "creds", "defaultMode": 0o400, "items": [{"key": "user", "path": "u"}]}}), Some(2000))
            .unwrap(),
        [f("u", "u", 0o440)]
    );
}

#[test]
fn downward_api_and_projected_volumes() {
    assert_eq!(
        files(serde_json::json!({"name": "v", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o600},
            {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "requests.memory", "divisor": "1Mi"}}]}}), None)
        .unwrap(),
        [f("labels", "a=\"1\"\nb=\"2\"", 0o644), f("mem", "32", 0o644), f("name", "p", 0o600)]
    );
    // What the API server injects into every pod.
    let token_volume = serde_json::json!({"name": "kube-api-access-x", "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "cfg", "items": [{"key": "app.conf", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}});
    assert_eq!(
        files(token_volume.clone(), None).unwrap(),
        [f("ca.crt", "x=1", 0o644), f("namespace", "ns", 0o644), f("token", "tok", 0o644)]
    );
    // With an fsGroup the token is 0600, then group-readable.
    assert_eq!(files(token_volume, Some(5)).unwrap()[2], f("token", "tok", 0o640));
    assert!(matches!(
        files(
            serde_json::json!({"name": "v", "projected": {"sources": [{"serviceAccountToken": {"path": "t", "audience": "other"}}]}}),
            None
        ),
        Err(ContentError::Pending(_))
    ));
    assert_eq!(files(serde_json::json!({"name": "v", "emptyDir": {}}), None), Ok(vec![]));
}

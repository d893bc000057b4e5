//! Tests of manifest parsing, naming, UIDs and validation.

use super::*;

const POD: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: uptimed
  labels: { app: uptimed }
spec:
  containers:
  - name: uptimed
    image: uptimed
";

fn one(text: &str) -> Pod {
    let mut pods = pods_in_file(Path::new("/etc/vks/manifests/u.yaml"), text, "Node-1").unwrap();
    assert_eq!(pods.len(), 1);
    pods.remove(0)
}

fn error(text: &str) -> String {
    pods_in_file(Path::new("/etc/vks/manifests/u.yaml"), text, "node-1").expect_err("expected an invalid manifest")
}

#[test]
fn a_pod_is_named_after_the_node_with_the_kubelet_defaults() {
    let p = one(POD);
    assert_eq!(p.metadata.name.as_deref(), Some("uptimed-node-1"));
    assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
    let uid = p.metadata.uid.clone().unwrap();
    assert_eq!(uid.len(), 32);
    assert!(uid.bytes().all(|b| b.is_ascii_hexdigit()));
    let a = p.metadata.annotations.clone().unwrap();
    assert_eq!(a[CONFIG_HASH], uid);
    assert_eq!(a[CONFIG_SOURCE], "file");
    let spec = p.spec.clone().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("Node-1"));
    let t = &spec.tolerations.unwrap()[0];
    assert_eq!(
        (t.operator.as_deref(), t.effect.as_deref(), t.key.as_deref()),
        (Some("Exists"), Some("NoExecute"), None)
    );
    assert!(is_static(&p) && !is_mirror(&p));
    assert!(p.status.is_none());
}

#[test]
fn uids_are_stable_and_follow_the_pod_the_node_and_the_file() {
    let uid = |text: &str, node: &str, file: &str| {
        pods_in_file(Path::new(file), text, node).unwrap()[0].metadata.uid.clone().unwrap()
    };
    let base = uid(POD, "n1", "/m/u.yaml");
    assert_eq!(base, uid(POD, "n1", "/m/u.yaml"), "stable");
    let reformatted =
        format!("# the seed pod\n{}", POD.replace("labels: { app: uptimed }", "labels:\n    app: uptimed"));
    assert_eq!(base, uid(&reformatted, "n1", "/m/u.yaml"), "comments and layout do not matter");
    assert_ne!(
        base,
        uid(&POD.replace("image: uptimed", "image: uptimed=1.0"), "n1", "/m/u.yaml"),
        "a change is a new pod"
    );
    assert_ne!(base, uid(POD, "n2", "/m/u.yaml"), "the node is part of it");
    assert_ne!(base, uid(POD, "n1", "/m/v.yaml"), "the file is part of it");
    // The status in a manifest is not the pod's.
    assert_eq!(base, uid(&format!("{POD}status:\n  phase: Running\n"), "n1", "/m/u.yaml"));
    // The same pod in JSON is the same pod.
    let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"uptimed","labels":{"app":"uptimed"}},
        "spec":{"containers":[{"name":"uptimed","image":"uptimed"}]}}"#;
    assert_eq!(base, uid(json, "n1", "/m/u.yaml"));
    // A UID given in the manifest is kept, as by the kubelet.
    assert_eq!(
        uid(&POD.replace("  name: uptimed\n", "  name: uptimed\n  uid: my-uid-1\n"), "n1", "/m/u.yaml"),
        "my-uid-1"
    );
}

#[test]
fn fnv128a_matches_the_reference_vectors() {
    // FNV-1a 128 of "" and "a" (the offset basis, and the published test vector).
    assert_eq!(format!("{:032x}", fnv128a(&[])), "6c62272e07bb014262b821756295c58d");
    assert_eq!(format!("{:032x}", fnv128a(&[b"a"])), "d228cb696f1a8caf78912b704e4a8964");
    assert_eq!(fnv128a(&[b"ab", b"c"]), fnv128a(&[b"abc"]));
}

#[test]
fn several_documents_and_pod_lists() {
    let text = format!("{POD}---\n---\n{}", POD.replace("name: uptimed\n  labels", "name: second\n  labels"));
    let pods = pods_in_file(Path::new("/m/u.yaml"), &text, "n").unwrap();
    let names: Vec<_> = pods.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["uptimed-n", "second-n"]);
    let list = r#"{"apiVersion":"v1","kind":"PodList","items":[
        {"metadata":{"name":"a","namespace":"ops"},"spec":{"containers":[{"name":"c","image":"x"}]}}]}"#;
    let pods = pods_in_file(Path::new("/m/l.json"), list, "n").unwrap();
    assert_eq!(pods[0].metadata.name.as_deref(), Some("a-n"));
    assert_eq!(pods[0].metadata.namespace.as_deref(), Some("ops"));
    assert!(pods_in_file(Path::new("/m/empty.yaml"), "# nothing yet\n", "n").unwrap().is_empty());
}

#[test]
fn invalid_manifests_say_what_is_wrong() {
    let cases = [
        ("kind: Pod\napiVersion: v1\nmetadata: [", "not valid YAML"),
        ("apiVersion: apps/v1\nkind: Deployment\n", "apiVersion \"apps/v1\": a static pod must be apiVersion v1"),
        ("apiVersion: v1\nkind: Service\n", "kind \"Service\": only Pods can be static pods"),
        ("apiVersion: v1\nmetadata: {name: x}\n", "kind is missing"),
        ("apiVersion: v1\nkind: Pod\nspec: {containers: [{name: c, image: x}]}\n", "metadata.name is missing"),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: Web}\nspec: {containers: [{name: c, image: x}]}\n",
            "pod \"Web\": its name on this node, \"Web-node-1\", is not a valid pod name",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: w, namespace: Ops}\nspec: {containers: [{name: c, image: x}]}\n",
            "metadata.namespace \"Ops\"",
        ),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: w}\n", "pod \"w\": spec is missing"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: w}\nspec: {containers: []}\n", "spec.containers is empty"),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: w}\nspec: {containers: [{name: c}]}\n",
            "spec.containers[\"c\"].image is missing",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: w}\nspec: {containers: [{name: c, image: x}, {name: c, image: z}]}\n",
            "used by two containers",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: w}\nspec: {containers: [{name: c, image: x, ports: oops}]}\n",
            "not a valid Pod",
        ),
    ];
    for (text, want) in cases {
        let e = error(text);
        assert!(e.contains(want), "{text:?}: got {e:?}, want {want:?}");
    }
    let two = format!("{POD}---\napiVersion: v1\nkind: Secret\n");
    assert!(error(&two).starts_with("document 2: kind \"Secret\""), "{}", error(&two));
    assert!(pods_in_file(Path::new("/m/x.json"), "{not json", "n").unwrap_err().starts_with("not valid JSON"));
}

#[test]
fn references_to_api_objects_are_refused() {
    let with = |spec: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: w}}\nspec:\n{spec}");
    let c = "  containers: [{name: c, image: x}]\n";
    let cases = [
        (format!("{c}  serviceAccountName: builder\n"), "spec.serviceAccountName \"builder\" (a service account)"),
        (format!("{c}  imagePullSecrets: [{{name: reg}}]\n"), "spec.imagePullSecrets"),
        (
            format!("{c}  volumes: [{{name: cfg, configMap: {{name: app}}}}]\n"),
            "volume \"cfg\" is a configMap volume (a ConfigMap)",
        ),
        (
            format!("{c}  volumes: [{{name: s, secret: {{secretName: app}}}}]\n"),
            "volume \"s\" is a secret volume (a Secret)",
        ),
        (
            format!("{c}  volumes: [{{name: d, persistentVolumeClaim: {{claimName: data}}}}]\n"),
            "a persistentVolumeClaim volume",
        ),
        (
            format!(
                "{c}  volumes: [{{name: t, projected: {{sources: [{{serviceAccountToken: {{path: token}}}}]}}}}]\n"
            ),
            "a projected volume with a serviceAccountToken source (a service-account token)",
        ),
        (
            "  containers: [{name: c, image: x, env: [{name: P, valueFrom: {secretKeyRef: {name: s, key: k}}}]}]\n"
                .into(),
            "container \"c\": env \"P\" takes a value from a Secret (secretKeyRef)",
        ),
        (
            "  containers: [{name: c, image: x, envFrom: [{configMapRef: {name: m}}]}]\n".into(),
            "envFrom takes a ConfigMap",
        ),
    ];
    for (spec, want) in cases {
        let e = error(&with(&spec));
        assert!(e.contains("static pods may not refer to API objects"), "{spec}: {e}");
        assert!(e.contains(want), "{spec}: got {e:?}, want {want:?}");
    }
    // What needs no API is fine.
    let ok = with(&format!(
        "{c}  volumes: [{{name: h, hostPath: {{path: /srv}}}}, {{name: e, emptyDir: {{}}}}, \
         {{name: d, projected: {{sources: [{{downwardAPI: {{items: []}}}}]}}}}]\n"
    ));
    pods_in_file(Path::new("/m/u.yaml"), &ok, "n").unwrap();
}

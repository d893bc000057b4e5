//! Tests of `unit/mod.rs`: planning and rendering.

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
    let e = plan(&p, &c, ContainerKind::App, &ImageInfo::default(), &node(), &ContainerData::default(), |_| true)
        .unwrap_err();
    assert_eq!(e.reason, WaitingReason::CreateContainerError);
    assert_eq!(e.message, "container c: the command line (program \"/usr/bin/sleep\") contains a NUL character");
    let c = container(
        serde_json::json!({"name": "c", "command": ["/bin/true"], "env": [{"name": "my.var", "value": "x"}]}),
    );
    let e = plan(&p, &c, ContainerKind::App, &ImageInfo::default(), &node(), &ContainerData::default(), |_| true)
        .unwrap_err();
    assert!(e.message.starts_with("container c: env \"my.var\" is not a valid environment variable name"), "{e}");
}

#[test]
fn secrets_and_volumes_render_without_secret_values() {
    use crate::unit::data::{Kind, ObjData, ObjKey, ObjState};
    let mut p = pod();
    let c = container(serde_json::json!({"name": "c", "command": ["/bin/app", "--pw=$(PW)", "$(A)"], "env": [
        {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
        {"name": "A", "value": "a"}]}));
    p.spec.as_mut().unwrap().containers = vec![c.clone()];
    let secret = ObjData { data: [("pw".to_owned(), b"t0p s3cret".to_vec())].into(), ..ObjData::default() };
    let mut data = ContainerData {
        mounts: vec![BindMount {
            source: "/run/vks/pods/u-1/volumes/secret/s".into(),
            target: "/etc/s".into(),
            read_only: true,
        }],
        env_file: Some("/run/vks/pods/u-1/env/c.env".into()),
        ..ContainerData::default()
    };
    data.pod.objects.insert(
        ObjKey { kind: Kind::Secret, namespace: "ns".into(), name: "s".into() },
        ObjState::Present(std::sync::Arc::new(secret)),
    );
    let u = plan(&p, &c, ContainerKind::App, &ImageInfo::default(), &node(), &data, |_| true).unwrap();
    assert_eq!(u.secret_env.0, [("PW".to_owned(), "t0p s3cret".to_owned())]);
    assert!(!format!("{u:?}").contains("t0p"), "Debug hides secret values");
    let text = render(&u).unwrap();
    assert!(!text.contains("t0p"), "{text}");
    assert!(text.contains("ExecStart=\"@/bin/app\" \"/bin/app\" \"--pw=${PW}\" \"a\"\n"), "{text}");
    assert!(text.contains("EnvironmentFile=/run/vks/pods/u-1/env/c.env\n"), "{text}");
    assert!(text.contains("BindReadOnlyPaths=/run/vks/pods/u-1/volumes/secret/s:/etc/s:rbind\n"), "{text}");
    assert!(text.contains("Environment=\"A=a\"\n") && !text.contains("Environment=\"PW"), "{text}");
    // A secret as the program is refused.
    let c2 = container(serde_json::json!({"name": "c", "command": ["$(PW)"], "env": [
        {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}}]}));
    let e = plan(&p, &c2, ContainerKind::App, &ImageInfo::default(), &node(), &data, |_| true).unwrap_err();
    assert!(e.message.contains("command[0] uses a value from a Secret (PW)"), "{e}");
}

#[test]
fn stop_signals_and_binds_are_rendered() {
    let p = pod();
    let c =
        container(serde_json::json!({"name": "c", "command": ["/bin/true"], "lifecycle": {"stopSignal": "SIGUSR1"}}));
    let mut u =
        plan(&p, &c, ContainerKind::App, &ImageInfo::default(), &node(), &ContainerData::default(), |_| true).unwrap();
    u.mounts.push(BindMount {
        source: "/var/lib/vks/pods/u-1/containers/c/termination-log".into(),
        target: "/dev/termination-log".into(),
        read_only: false,
    });
    u.mounts.push(BindMount {
        source: "/var/lib/vks/pods/u-1/etc-hosts".into(),
        target: "/etc/hosts".into(),
        read_only: true,
    });
    let text = render(&u).unwrap();
    assert!(text.contains("KillSignal=SIGUSR1\n"), "{text}");
    assert!(
        text.contains("BindPaths=/var/lib/vks/pods/u-1/containers/c/termination-log:/dev/termination-log:rbind\n"),
        "{text}"
    );
    assert!(text.contains("BindReadOnlyPaths=/var/lib/vks/pods/u-1/etc-hosts:/etc/hosts:rbind\n"), "{text}");
    u.mounts[0].target = "/dev/my\nlog".into();
    let e = render(&u).unwrap_err();
    assert!(e.message.starts_with("container c: the volume mount at \"/dev/my\\nlog\""), "{e}");
    let c = container(
        serde_json::json!({"name": "c", "command": ["/bin/true"], "lifecycle": {"stopSignal": "SIGRTMIN+1"}}),
    );
    let e = plan(&p, &c, ContainerKind::App, &ImageInfo::default(), &node(), &ContainerData::default(), |_| true)
        .unwrap_err();
    assert_eq!(e.reason, WaitingReason::CreateContainerConfigError);
    assert!(e.message.contains("lifecycle.stopSignal \"SIGRTMIN+1\" is not supported"), "{e}");
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
    let e = plan(&p, &c, ContainerKind::App, &ImageInfo::default(), &node(), &ContainerData::default(), |_| true)
        .unwrap_err();
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

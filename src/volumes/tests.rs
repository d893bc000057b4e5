use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::unit::data::{Kind, ObjData, ObjKey, ObjState};
use crate::unit::env::{ResolvedEnv, Var};

struct Dirs {
    _t: tempfile::TempDir,
    vols: Volumes,
    base: PathBuf,
}

fn dirs() -> Dirs {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().canonicalize().unwrap();
    std::fs::create_dir_all(base.join("host/data")).unwrap();
    let vols = Volumes::new(base.join("pods"), base.join("run"), vec![base.join("host")], Clock::system());
    Dirs { _t: t, vols, base }
}

fn pod(base: &Path) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "0b7c1a2e-1"},
        "spec": {"volumes": [
            {"name": "cache", "emptyDir": {}},
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
            {"name": "host", "hostPath": {"path": format!("{}/host/data", base.display()), "type": "Directory"}}],
            "containers": [{"name": "c", "volumeMounts": [
                {"name": "cache", "mountPath": "/var/cache/app"},
                {"name": "cache", "mountPath": "/per-pod", "subPathExpr": "$(POD)/x"},
                {"name": "cfg", "mountPath": "/etc/app/app.conf", "subPath": "app.conf"},
                {"name": "creds", "mountPath": "/run/creds"},
                {"name": "host", "mountPath": "/data", "readOnly": true}]}]}
    }))
    .unwrap()
}

fn data(conf: &str) -> PodData {
    let obj = |kv: &[(&str, &str)]| {
        ObjState::Present(Arc::new(ObjData {
            data: kv.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())).collect::<BTreeMap<_, _>>(),
            ..ObjData::default()
        }))
    };
    let key = |kind, name: &str| ObjKey { kind, namespace: "ns".into(), name: name.into() };
    PodData {
        objects: [
            (key(Kind::ConfigMap, "cfg"), obj(&[("app.conf", conf)])),
            (key(Kind::Secret, "creds"), obj(&[("pw", "s3cret")])),
        ]
        .into_iter()
        .collect(),
        ..PodData::default()
    }
}

fn node() -> NodeContext {
    NodeContext::new("n", "10.0.0.1")
}

fn env(kv: &[(&str, &str)]) -> ResolvedEnv {
    ResolvedEnv {
        vars: kv.iter().map(|(k, v)| Var { name: (*k).into(), value: (*v).into(), secret: false }).collect(),
        ..ResolvedEnv::default()
    }
}

#[tokio::test]
async fn volumes_are_set_up_mounted_updated_and_removed() {
    let d = dirs();
    let p = pod(&d.base);
    assert!(d.vols.setup(&p, &node(), &data("v1")).await.unwrap());
    assert!(!d.vols.setup(&p, &node(), &data("v1")).await.unwrap(), "nothing changed");
    let uid = "0b7c1a2e-1";
    let disk = d.base.join("pods").join(uid).join("volumes");
    let run = d.base.join("run").join(uid).join("volumes");
    assert_eq!(std::fs::read_to_string(disk.join("configmap/cfg/app.conf")).unwrap(), "v1");
    assert_eq!(std::fs::read_to_string(run.join("secret/creds/pw")).unwrap(), "s3cret", "Secrets go to run_dir");
    assert_eq!(std::fs::metadata(run.join("secret/creds/pw")).unwrap().permissions().mode() & 0o777, 0o400);
    assert_eq!(std::fs::metadata(disk.join("empty-dir/cache")).unwrap().permissions().mode() & 0o777, 0o777);

    let c = p.spec.as_ref().unwrap().containers[0].clone();
    let mounts = container_mounts(&d.vols, &p, &c, &env(&[("POD", "p")])).unwrap();
    let got: Vec<(String, String, bool)> =
        mounts.iter().map(|m| (m.source.clone(), m.target.clone(), m.read_only)).collect();
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let conf_file = std::fs::canonicalize(disk.join("configmap/cfg/app.conf")).unwrap();
    assert!(conf_file.parent().unwrap().file_name().unwrap().to_string_lossy().starts_with("..20"), "{conf_file:?}");
    assert_eq!(
        got,
        [
            (s(&disk.join("empty-dir/cache")), "/var/cache/app".into(), false),
            (s(&disk.join("empty-dir/cache/p/x")), "/per-pod".into(), false),
            (s(&conf_file), "/etc/app/app.conf".into(), true),
            (s(&run.join("secret/creds")), "/run/creds".into(), true),
            (s(&d.base.join("host/data")), "/data".into(), true),
        ]
    );
    assert!(disk.join("empty-dir/cache/p/x").is_dir(), "subPath directories are created");

    // An update swaps the content; a subPath mount keeps the file it was started with.
    assert!(d.vols.setup(&p, &node(), &data("v2")).await.unwrap());
    assert_eq!(std::fs::read_to_string(disk.join("configmap/cfg/app.conf")).unwrap(), "v2");

    // subPathExpr needs its variables; subPaths stay inside their volume.
    let e = container_mounts(&d.vols, &p, &c, &env(&[])).unwrap_err();
    assert!(e.message.contains("subPathExpr: missing value for POD"), "{e}");
    std::os::unix::fs::symlink("/etc", disk.join("empty-dir/cache/out")).unwrap();
    let mut c2 = c.clone();
    c2.volume_mounts = Some(vec![
        serde_json::from_value(serde_json::json!({"name": "cache", "mountPath": "/x", "subPath": "out"})).unwrap(),
    ]);
    let e = container_mounts(&d.vols, &p, &c2, &env(&[])).unwrap_err();
    assert!(e.message.contains("leads outside volume"), "{e}");

    // Env files: root only, below run_dir.
    let f = d.vols.env_file(uid, "c").unwrap();
    d.vols.write_env_file(&f, &[("PW".into(), "a\"b$c".into())]).await.unwrap();
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "PW=\"a\\\"b\\$c\"\n");
    assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(d.vols.write_env_file("/tmp/elsewhere.env", &[]).await.is_err());

    // The pod's directories go with it.
    d.vols.remove_pod(uid).await.unwrap();
    assert!(!d.base.join("pods").join(uid).exists() && !d.base.join("run").join(uid).exists());
    assert!(d.base.join("host/data").is_dir(), "host paths are never removed");
}

#[tokio::test]
async fn the_sweep_removes_directories_of_gone_pods_only() {
    let d = dirs();
    for uid in ["keep-1", "gone-2"] {
        std::fs::create_dir_all(d.base.join("pods").join(uid).join("volumes")).unwrap();
        std::fs::create_dir_all(d.base.join("run").join(uid).join("env")).unwrap();
    }
    std::fs::create_dir_all(d.base.join("pods/.not-a-pod")).unwrap();
    let removed = d.vols.sweep(["keep-1".to_owned()].into_iter().collect()).await;
    assert_eq!(removed, ["gone-2"]);
    assert!(d.base.join("pods/keep-1").exists() && d.base.join("run/keep-1").exists());
    assert!(!d.base.join("pods/gone-2").exists() && !d.base.join("run/gone-2").exists());
    assert!(d.base.join("pods/.not-a-pod").exists());
}

#[tokio::test]
async fn refused_and_failing_volumes() {
    let d = dirs();
    let p: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-2"},
        "spec": {"volumes": [{"name": "etc", "hostPath": {"path": "/etc"}}], "containers": []}
    }))
    .unwrap();
    let e = d.vols.setup(&p, &node(), &PodData::default()).await.unwrap_err();
    assert!(matches!(&e, VolumeError::Refused(m) if m.contains("host_path_allow")), "{e:?}");
    let p: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-3"},
        "spec": {"volumes": [{"name": "cfg", "configMap": {"name": "missing"}}], "containers": []}
    }))
    .unwrap();
    let mut data = PodData::default();
    data.objects
        .insert(ObjKey { kind: Kind::ConfigMap, namespace: "ns".into(), name: "missing".into() }, ObjState::Absent);
    let e = d.vols.setup(&p, &node(), &data).await.unwrap_err();
    assert_eq!(e.to_string(), "MountVolume.SetUp failed for volume \"cfg\" : configmap \"missing\" not found");
    let p: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "p", "uid": "../x"},
        "spec": {"volumes": [{"name": "e", "emptyDir": {}}], "containers": []}}))
    .unwrap();
    assert!(matches!(d.vols.setup(&p, &node(), &data).await, Err(VolumeError::Refused(_))));
}

#[test]
fn containers_run_as_their_packages_user_or_their_security_context() {
    let pod: Pod =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": []}})).unwrap();
    let c = |j: serde_json::Value| -> Container { serde_json::from_value(j).unwrap() };
    let image = |settings: &[(&str, &str)]| ImageInfo {
        service: settings.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        ..ImageInfo::default()
    };
    let plain = c(serde_json::json!({"name": "c"}));
    // `daemon` is uid 1 on Debian.
    assert_eq!(run_as(&pod, &plain, &image(&[("User", "daemon")])), Some(RunAs { uid: 1, gid: 1 }));
    assert_eq!(run_as(&pod, &plain, &image(&[("User", "daemon"), ("Group", "0")])), Some(RunAs { uid: 1, gid: 0 }));
    assert_eq!(run_as(&pod, &plain, &image(&[("User", "root")])), None);
    assert_eq!(run_as(&pod, &plain, &image(&[("User", "daemon"), ("DynamicUser", "yes")])), None);
    assert_eq!(run_as(&pod, &plain, &image(&[("User", "no-such-user-here")])), None);
    let with_command = c(serde_json::json!({"name": "c", "command": ["/bin/true"]}));
    assert_eq!(run_as(&pod, &with_command, &image(&[("User", "daemon")])), None, "the package's unit is not used");
    let sc = c(serde_json::json!({"name": "c", "securityContext": {"runAsUser": 1234, "runAsGroup": 99}}));
    assert_eq!(run_as(&pod, &sc, &image(&[("User", "daemon")])), Some(RunAs { uid: 1234, gid: 99 }));
}

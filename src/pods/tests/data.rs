//! Scenarios of a pod's data: env from ConfigMaps and Secrets that appear later, secret values
//! kept out of unit files, volume files following their objects, token refresh, and pod
//! directories removed with their pod or by the sweep.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::unit::data::Kind;

fn unit_file(w: &World, u: &str) -> String {
    w.systemd.files().get(u).cloned().unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn a_container_waits_for_its_config_map_and_starts_once_it_appears() {
    let w = World::start().await;
    let p = pod(
        "env",
        "u1",
        serde_json::json!({"containers": [{"name": "app", "image": "/bin/app", "env": [
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
            {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "other", "key": "x", "optional": true}}}]}]}),
    );
    let u = unit("env", "app");
    w.apply(&p);
    w.until("CreateContainerConfigError", |w| {
        waiting(&w.container("u1", "app")).as_deref() == Some("CreateContainerConfigError")
    })
    .await;
    let c = w.container("u1", "app");
    assert_eq!(
        c.state.unwrap().waiting.unwrap().message.as_deref(),
        Some("container app: configmap \"cfg\" not found")
    );
    assert!(w.events.all().iter().any(|e| e.warning && e.note == "Error: container app: configmap \"cfg\" not found"));
    w.run_for(Duration::from_secs(3)).await;
    let t0 = w.clock.wall();
    w.objects.set(Kind::ConfigMap, "ns", "cfg", &[("mode", "fast")]);
    w.until("running", |w| w.running(&u)).await;
    assert!(w.clock.wall().duration_since(t0).unwrap() < Duration::from_secs(1), "woken by the watch, not a retry");
    let text = unit_file(&w, &u);
    assert!(text.contains("Environment=\"MODE=fast\"\n"), "{text}");
    assert!(!text.contains("OPT="), "an optional missing source sets nothing: {text}");
    assert!(text.contains("Environment=\"KUBERNETES_SERVICE_HOST=192.0.2.1\"\n"), "{text}");
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn secret_values_reach_a_root_only_file_never_the_unit() {
    let w = World::start().await;
    w.objects.set(Kind::Secret, "ns", "db", &[("password", "hunter2 \"$x\"")]);
    let p = pod(
        "sec",
        "u1",
        serde_json::json!({"containers": [{"name": "app", "image": "/bin/app",
            "args": ["--password=$(PW)", "plain"],
            "envFrom": [{"secretRef": {"name": "db"}, "prefix": "DB_"}],
            "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]}]}),
    );
    let u = unit("sec", "app");
    w.apply(&p);
    w.until("running", |w| w.running(&u)).await;
    let text = unit_file(&w, &u);
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("\"--password=${PW}\" \"plain\""), "{text}");
    let env_file = w.dirs.path().join("run/u1/env/app.env");
    assert!(text.contains(&format!("EnvironmentFile={}\n", env_file.display())), "{text}");
    assert_eq!(
        std::fs::read_to_string(&env_file).unwrap(),
        "DB_password=\"hunter2 \\\"\\$x\\\"\"\nPW=\"hunter2 \\\"\\$x\\\"\"\n"
    );
    assert_eq!(std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777, 0o600);
    // A changed Secret reaches the container at its next start, through the file.
    w.objects.set(Kind::Secret, "ns", "db", &[("password", "new")]);
    w.run_for(Duration::from_secs(1)).await;
    w.systemd.exit(&u, 1);
    w.until("restarted", |w| w.starts(&u).len() == 2).await;
    assert!(std::fs::read_to_string(&env_file).unwrap().contains("PW=\"new\""));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn volume_files_follow_their_objects_and_tokens_are_refreshed() {
    let w = World::start().await;
    let p = pod(
        "vol",
        "u1",
        serde_json::json!({
            "serviceAccountName": "robot",
            "volumes": [
                {"name": "cfg", "configMap": {"name": "cfg"}},
                {"name": "kube-api-access-x", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 600}},
                    {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}]}}],
            "containers": [{"name": "app", "image": "/bin/app", "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/app"},
                {"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}]}),
    );
    let u = unit("vol", "app");
    w.apply(&p);
    let failed = "MountVolume.SetUp failed for volume \"cfg\" : configmap \"cfg\" not found";
    w.until("ContainerCreating, saying why", |w| {
        let c = w.container("u1", "app");
        waiting(&c).as_deref() == Some("ContainerCreating")
            && c.state.and_then(|s| s.waiting).and_then(|w| w.message).as_deref() == Some(failed)
    })
    .await;
    assert!(w.events.all().iter().any(|e| e.warning && e.reason == "FailedMount" && e.note == failed));
    w.objects.set(Kind::ConfigMap, "ns", "cfg", &[("app.conf", "v1")]);
    w.until("running", |w| w.running(&u)).await;
    let cfg = w.dirs.path().join("pods/u1/volumes/configmap/cfg");
    let sa = w.dirs.path().join("run/u1/volumes/projected/kube-api-access-x");
    let text = unit_file(&w, &u);
    assert!(text.contains(&format!("BindReadOnlyPaths={}:/etc/app:rbind\n", cfg.display())), "{text}");
    assert!(
        text.contains(&format!("BindReadOnlyPaths={}:/run/secrets/kubernetes.io/serviceaccount:rbind\n", sa.display()))
            || text.contains(&format!(
                "BindReadOnlyPaths={}:/var/run/secrets/kubernetes.io/serviceaccount:rbind\n",
                sa.display()
            )),
        "{text}"
    );
    assert_eq!(std::fs::read_to_string(cfg.join("app.conf")).unwrap(), "v1");
    let token = std::fs::read_to_string(sa.join("token")).unwrap();
    assert!(token.starts_with("token-1-vol-robot"), "{token}");
    // An update of the ConfigMap reaches the file while the container runs.
    w.objects.set(Kind::ConfigMap, "ns", "cfg", &[("app.conf", "v2")]);
    w.until("the file follows", |_| std::fs::read_to_string(cfg.join("app.conf")).is_ok_and(|s| s == "v2")).await;
    // Labels reach the downward API file.
    let mut p2 = p.clone();
    p2.metadata.labels = Some([("tier".to_owned(), "web".to_owned())].into());
    w.apply(&p2);
    w.until("labels written", |_| std::fs::read_to_string(sa.join("labels")).is_ok_and(|s| s == "tier=\"web\"")).await;
    // The token is refreshed at 80 % of its 600 s.
    let t0 = w.clock.wall();
    w.until("a new token", |_| std::fs::read_to_string(sa.join("token")).is_ok_and(|t| t != token)).await;
    let after = w.clock.wall().duration_since(t0).unwrap();
    assert!(after <= Duration::from_secs(480), "{after:?}");
    assert_eq!(w.starts(&u).len(), 1, "updates never restart the container");
    // Deletion removes the pod's directories.
    w.apply(&super::deleting(p2, 5));
    w.until("deleted", |w| w.api.deleted().iter().any(|p| p.uid == "u1")).await;
    assert!(!w.dirs.path().join("pods/u1").exists() && !w.dirs.path().join("run/u1").exists());
    assert_eq!(w.objects.open_watches(), 0, "nothing is watched for a deleted pod");
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn directories_of_pods_gone_while_vks_was_down_are_removed() {
    let p = pod("kept", "kept-1", serde_json::json!({"containers": [{"name": "app", "image": "/bin/app"}]}));
    let systemd = Arc::new(FakeSystemd::with_clock(World::clock()));
    let w = World::start_full(systemd, Some(std::slice::from_ref(&p)), true, &["kept-1", "gone-2"], None).await;
    w.until("the gone pod's directories are removed", |w| {
        !w.dirs.path().join("pods/gone-2").exists() && !w.dirs.path().join("run/gone-2").exists()
    })
    .await;
    assert!(w.dirs.path().join("pods/kept-1").exists(), "a listed pod keeps its directory");
    w.stop().await;
}

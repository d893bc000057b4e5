//! Scenarios of resources and confinement: admission against node allocatable, slices, OOM
//! kills on cgroup v1, in-place resize (live and by restart), user IDs and runAsNonRoot.

use super::*;
use crate::unit::resources::NodeAllocatable;

fn node() -> Option<NodeAllocatable> {
    Some(NodeAllocatable { cpu: 1000, memory: 1 << 30, ephemeral_storage: 10 << 30, pods: 10 })
}

async fn world() -> World {
    World::start_node(Arc::new(FakeSystemd::with_clock(World::clock())), &[], node()).await
}

fn limited(name: &str, uid: &str, cpu: &str, memory: &str, policy: serde_json::Value) -> Pod {
    pod(
        name,
        uid,
        serde_json::json!({"containers": [{"name": "app", "image": "/bin/app", "resizePolicy": policy,
            "resources": {"limits": {"cpu": cpu, "memory": memory}, "requests": {"cpu": cpu, "memory": memory}}}]}),
    )
}

fn slice_of(uid: &str) -> (String, String) {
    let pod = format!("vks-pod{}.slice", uid.replace('-', "_"));
    let c = pod.replace(".slice", "-app.slice");
    (pod, c)
}

#[tokio::test(start_paused = true)]
async fn pods_that_do_not_fit_allocatable_are_rejected_like_the_kubelet_does() {
    let w = world().await;
    w.apply(&limited("a", "u-a", "600m", "100Mi", serde_json::json!([])));
    w.until("a runs", |w| w.running(&unit("a", "app"))).await;
    w.apply(&limited("b", "u-b", "600m", "100Mi", serde_json::json!([])));
    w.until("b is rejected", |w| w.status("u-b").phase.as_deref() == Some("Failed")).await;
    let s = w.status("u-b");
    assert_eq!(s.reason.as_deref(), Some("OutOfcpu"));
    assert_eq!(
        s.message.as_deref(),
        Some("Pod was rejected: Node didn't have enough resource: cpu, requested: 600, used: 600, capacity: 1000")
    );
    assert!(w.systemd.unit(&unit("b", "app")).is_none(), "a rejected pod never runs");
    assert!(w.events.reasons().contains(&"OutOfcpu".to_owned()));
    // Once a is gone, its share is free again.
    w.pods.send(Ok(Event::Delete(limited("a", "u-a", "600m", "100Mi", serde_json::json!([]))))).unwrap();
    w.until("a is removed", |w| w.systemd.unit(&unit("a", "app")).is_none_or(|u| u.main_pid == 0)).await;
    w.run_for(Duration::from_secs(5)).await;
    w.apply(&limited("c", "u-c", "900m", "100Mi", serde_json::json!([])));
    w.until("c runs", |w| w.running(&unit("c", "app"))).await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn containers_run_in_their_pods_slices_which_go_with_the_pod() {
    let w = world().await;
    let p = limited("s", "u-s", "500m", "64Mi", serde_json::json!([]));
    w.apply(&p);
    w.until("running", |w| w.running(&unit("s", "app"))).await;
    let (pod_slice, c_slice) = slice_of("u-s");
    let files = w.systemd.files();
    assert!(files[&unit("s", "app")].contains(&format!("Slice={c_slice}\n")));
    assert!(files[&unit("s", "app")].contains("CPUQuota=50.00%\nMemoryMax=67108864\n"));
    assert!(files[&pod_slice].contains("Description=vks pod ns/s (u-s)\n"), "{}", files[&pod_slice]);
    assert!(files[&c_slice].contains("CPUQuota=50.00%\nMemoryMax=67108864\n"));
    assert!(files["vks.slice"].contains("CPUWeight=100\n"), "allocatable cpu 1000m: the shares of one CPU");
    assert!(w.events.all().iter().any(|e| e.reason == "SecurityExposure" && e.note.contains("2.9 OK")));
    w.apply(&deleting(p, 0));
    w.until("deleted", |w| w.api.deleted().iter().any(|d| d.uid == "u-s")).await;
    let files = w.systemd.files();
    assert!(!files.contains_key(&pod_slice) && !files.contains_key(&c_slice), "{:?}", files.keys());
    assert!(w.systemd.calls().contains(&format!("stop {pod_slice}")));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_oom_kill_on_cgroup_v1_shows_as_oom_killed() {
    let w = world().await;
    w.apply(&limited("m", "u-m", "100m", "64Mi", serde_json::json!([])));
    let app = unit("m", "app");
    w.until("running", |w| w.running(&app)).await;
    let (_, c_slice) = slice_of("u-m");
    w.systemd.oom_kill(&app, &c_slice, 64 << 20);
    w.until("restarted after the OOM kill", |w| w.container("u-m", "app").restart_count == 1).await;
    let last = w.container("u-m", "app").last_state.unwrap().terminated.unwrap();
    assert_eq!((last.exit_code, last.signal, last.reason.as_deref()), (137, Some(9), Some("OOMKilled")));
    let ev = w.events.all().into_iter().find(|e| e.reason == "OOMKilled").expect("an OOMKilled event");
    assert!(ev.warning && ev.note.contains("memory limit of 64Mi"), "{}", ev.note);
    // Any other SIGKILL (the slice far from its limit) is an Error.
    w.until("running again", |w| w.running(&app)).await;
    w.systemd.kill(&app, crate::systemd::KillWhom::Main, crate::systemd::Signal::SIGKILL).await.unwrap();
    w.until("second restart", |w| w.container("u-m", "app").restart_count == 2).await;
    let last = w.container("u-m", "app").last_state.unwrap().terminated.unwrap();
    assert_eq!(last.reason.as_deref(), Some("Error"));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_resize_is_applied_live_top_down_then_bottom_up() {
    let w = world().await;
    let app = unit("r", "app");
    w.apply(&limited("r", "u-r", "200m", "64Mi", serde_json::json!([])));
    w.until("running", |w| w.running(&app)).await;
    w.until("resources in the status", |w| w.container("u-r", "app").resources.is_some()).await;
    let invocation = w.systemd.unit(&app).unwrap().invocation_id;
    let mut resized = limited("r", "u-r", "500m", "32Mi", serde_json::json!([]));
    resized.metadata.generation = Some(2);
    w.apply(&resized);
    w.until("allocated", |w| w.container("u-r", "app").allocated_resources.is_some_and(|a| a["cpu"].0 == "500m")).await;
    let (pod_slice, c_slice) = slice_of("u-r");
    let quota = |name: &str| -> Vec<u64> {
        w.systemd.properties(name).into_iter().filter(|(k, _)| k == "CPUQuotaPerSecUSec").map(|(_, v)| v).collect()
    };
    let memory = |name: &str| -> Vec<u64> {
        w.systemd.properties(name).into_iter().filter(|(k, _)| k == "MemoryMax").map(|(_, v)| v).collect()
    };
    // First the looser of old and new (quota up, memory not yet down), then the new values.
    assert_eq!(quota(&app), [500_000, 500_000]);
    assert_eq!(memory(&app), [64 << 20, 32 << 20]);
    let order: Vec<String> = w.systemd.calls().into_iter().filter(|c| c.starts_with("set-property")).collect();
    let targets: Vec<&str> = order.iter().map(|c| c.split(' ').nth(1).unwrap()).collect();
    assert_eq!(targets[..6], [pod_slice.as_str(), &c_slice, &app, &app, &c_slice, &pod_slice]);
    assert_eq!(w.systemd.unit(&app).unwrap().invocation_id, invocation, "no restart");
    let c = w.container("u-r", "app");
    assert_eq!(c.restart_count, 0);
    assert_eq!(c.resources.unwrap().limits.unwrap()["memory"].0, (32u64 << 20).to_string());
    assert!(w.events.reasons().contains(&"Resized".to_owned()));
    assert_eq!(w.status("u-r").observed_generation, Some(2));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_resize_with_restart_container_restarts_it_with_the_new_unit() {
    let w = world().await;
    let app = unit("rr", "app");
    let policy = serde_json::json!([{"resourceName": "memory", "restartPolicy": "RestartContainer"}]);
    let mut p = limited("rr", "u-rr", "200m", "64Mi", policy.clone());
    p.spec.as_mut().unwrap().restart_policy = Some("Never".into());
    w.apply(&p);
    w.until("running", |w| w.running(&app)).await;
    let mut resized = limited("rr", "u-rr", "200m", "128Mi", policy);
    resized.spec.as_mut().unwrap().restart_policy = Some("Never".into());
    w.apply(&resized);
    w.until("restarted", |w| w.container("u-rr", "app").restart_count == 1 && w.running(&app)).await;
    assert!(w.systemd.files()[&app].contains("MemoryMax=134217728\n"));
    w.until("in progress cleared", |w| {
        // The patch deletes the ended condition by type (`$patch: delete`, no status).
        w.status("u-rr")
            .conditions
            .unwrap_or_default()
            .iter()
            .all(|c| c.type_ != "PodResizeInProgress" || c.status.is_empty())
    })
    .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_resize_beyond_the_node_is_infeasible() {
    let w = world().await;
    let app = unit("big", "app");
    w.apply(&limited("big", "u-big", "200m", "64Mi", serde_json::json!([])));
    w.until("running", |w| w.running(&app)).await;
    w.apply(&limited("big", "u-big", "2", "64Mi", serde_json::json!([])));
    w.until("pending", |w| {
        w.status("u-big").conditions.unwrap_or_default().iter().any(|c| c.type_ == "PodResizePending")
    })
    .await;
    let c = w.status("u-big").conditions.unwrap().into_iter().find(|c| c.type_ == "PodResizePending").unwrap();
    assert_eq!(c.reason.as_deref(), Some("Infeasible"));
    assert_eq!(c.message.as_deref(), Some("Node didn't have enough capacity: cpu, requested: 2000, capacity: 1000"));
    assert!(w.systemd.properties(&app).is_empty(), "nothing applied");
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn user_ids_are_registered_and_run_as_non_root_is_checked() {
    let w = world().await;
    let p = pod(
        "ids",
        "u-ids",
        serde_json::json!({"securityContext": {"runAsUser": 4242, "fsGroup": 5000},
            "containers": [{"name": "app", "image": "/bin/app"}]}),
    );
    w.apply(&p);
    w.until("running", |w| w.running(&unit("ids", "app"))).await;
    let ids = w.systemd.registered_ids();
    assert_eq!(ids[0].user, Some(4242));
    assert_eq!(ids[0].groups, [5000]);
    let text = &w.systemd.files()[&unit("ids", "app")];
    assert!(text.contains("User=4242\n") && text.contains("SupplementaryGroups=5000\n"), "{text}");
    // A named user that is root in the node's user database is refused.
    let p = pod(
        "root",
        "u-root",
        serde_json::json!({"securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "app", "image": "/bin/app"}]}),
    );
    let mut p = p;
    p.metadata.annotations = Some([("vks.io/user".to_owned(), "toor".to_owned())].into());
    w.apply(&p);
    w.until("refused", |w| {
        w.container("u-root", "app")
            .state
            .and_then(|s| s.waiting)
            .is_some_and(|s| s.reason.as_deref() == Some("CreateContainerConfigError"))
    })
    .await;
    let msg = w.container("u-root", "app").state.unwrap().waiting.unwrap().message.unwrap();
    assert!(msg.contains("\"toor\" is root (UID 0)"), "{msg}");
    w.stop().await;
}

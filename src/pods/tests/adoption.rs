//! Scenarios of units an earlier vks left behind: not swept before a first pod listing, nothing
//! decided while systemd cannot be read, a pod name reused while vks was down (the last two were
//! found by the chaos test, tests/e2e_exclusive/chaos.rs).

use super::*;

/// A unit of `p`'s first container, started, as an earlier vks left it.
async fn leftover_unit(systemd: &FakeSystemd, p: &Pod) -> String {
    let image =
        ImageInfo { entrypoint: vec!["/bin/app".into()], image_id: "file:///bin/app".into(), ..ImageInfo::default() };
    let c = p.spec.as_ref().unwrap().containers[0].clone();
    let node = NodeContext::new("n1", "10.0.0.5");
    let plan = crate::unit::plan(
        p,
        &c,
        crate::unit::ContainerKind::App,
        &image,
        &node,
        &crate::unit::ContainerData::default(),
        |_| true,
    )
    .unwrap();
    systemd.write_unit(&plan.name, &crate::unit::render(&plan).unwrap()).await.unwrap();
    systemd.start(&plan.name).await.unwrap();
    plan.name
}

#[tokio::test(start_paused = true)]
async fn units_are_not_swept_before_a_first_listing() {
    // The API server is unreachable at start-up: no pod list ever comes. The units on the node
    // are the pods' of the last listing; vks must not take them for orphans.
    let systemd = Arc::new(FakeSystemd::with_clock(World::clock()));
    let p = pod("kept", "u1", serde_json::json!({"containers": [{"name": "app", "image": "/bin/app"}]}));
    let name = leftover_unit(&systemd, &p).await;
    let w = World::start_without_listing(systemd.clone()).await;
    w.run_for(crate::pods::RESYNC_INTERVAL * 5).await;
    assert!(w.running(&name), "swept without a listing: {:?}", w.systemd.calls());
    // The listing comes, without the pod: now it is an orphan.
    w.pods.send(Ok(Event::Init)).unwrap();
    w.pods.send(Ok(Event::InitDone)).unwrap();
    w.until("the orphan is removed", |w| !w.systemd.files().contains_key(&name) && !w.running(&name)).await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn nothing_is_decided_on_a_guess_while_systemd_is_unreachable() {
    // Found by the chaos test (tests/e2e_exclusive/chaos.rs): vks restarts, D-Bus restarts while
    // it adopts the units. The unit of a pod gone from the API must not lose its file while it
    // still runs (nothing would ever find and stop it again), and a running pod's unit must not
    // be started again because it could not be read.
    let systemd = Arc::new(FakeSystemd::with_clock(World::clock()));
    let gone = pod("gone", "u-gone", serde_json::json!({"containers": [{"name": "app", "image": "/bin/app"}]}));
    let gone_unit = leftover_unit(&systemd, &gone).await;
    let mut kept = pod("kept", "u-kept", serde_json::json!({"containers": [{"name": "app", "image": "/bin/app"}]}));
    let kept_unit = leftover_unit(&systemd, &kept).await;
    kept.status = Some(
        serde_json::from_value(serde_json::json!({
            "phase": "Running",
            "containerStatuses": [{"name": "app", "image": "/bin/app", "imageID": "file:///bin/app", "ready": true,
                "restartCount": 0, "state": {"running": {}}}]
        }))
        .unwrap(),
    );
    systemd.disconnect();
    let w = World::start_with(systemd.clone(), std::slice::from_ref(&kept)).await;
    w.run_for(Duration::from_secs(30)).await;
    assert!(w.systemd.files().contains_key(&gone_unit), "the file stays while its unit may run");
    assert!(w.running(&gone_unit) && w.running(&kept_unit));

    w.systemd.reconnect();
    w.until("the gone pod's unit stopped and removed", |w| {
        !w.running(&gone_unit) && !w.systemd.files().contains_key(&gone_unit)
    })
    .await;
    w.run_for(Duration::from_secs(10)).await;
    assert!(w.running(&kept_unit));
    assert_eq!(w.starts(&kept_unit).len(), 1, "only the earlier vks started it: {:?}", w.systemd.calls());
    assert_eq!(w.container("u-kept", "app").restart_count, 0);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_name_reused_while_vks_was_down_waits_for_the_old_unit() {
    // Found by the chaos test: a pod force-deleted and created again under the same name while
    // vks was down. The old pod's unit (its UID in the file) is swept, the new pod's started:
    // they must not race, or the sweep stops the new pod's container (a needless restart).
    let systemd = Arc::new(FakeSystemd::with_clock(World::clock()));
    let old = pod("same", "old", serde_json::json!({"containers": [{"name": "app", "image": "/bin/app"}]}));
    let u = leftover_unit(&systemd, &old).await;
    let new = pod("same", "new", serde_json::json!({"containers": [{"name": "app", "image": "/bin/app"}]}));
    // The listing ends late (a long list): the new pod's worker runs before the sweep.
    systemd.ignore_sigterm(&u);
    let w = World::start_listing(systemd.clone(), std::slice::from_ref(&new)).await;
    w.run_for(Duration::from_secs(1)).await;
    w.pods.send(Ok(Event::InitDone)).unwrap();
    w.until("the new pod runs", |w| is_running(&w.container("new", "app"))).await;
    w.run_for(Duration::from_secs(60)).await;
    let c = w.container("new", "app");
    assert!(is_running(&c) && w.running(&u), "{c:?}");
    assert_eq!(c.restart_count, 0, "{:?}", w.systemd.calls());
    assert!(w.systemd.files()[&u].contains("PodUID=new"));
    w.stop().await;
}

//! Scenario tests of probes, lifecycle hooks, stop signals, `activeDeadlineSeconds`,
//! termination messages, host aliases and readiness gates, on the fakes of `tests.rs` (a
//! [`FakeProber`] answers each probe or hook by its exec command) with tokio's paused clock.
//! tests/e2e/probes.rs checks the same against a real API server and a real systemd.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;

use super::tests::{START, World, deleting, is_running, pod, unit, waiting};
use crate::probes::fake::Script;

fn start() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(START)
}

fn exec(cmd: &str) -> serde_json::Value {
    serde_json::json!({"command": [cmd]})
}

fn condition(w: &World, uid: &str, type_: &str) -> Option<k8s_openapi::api::core::v1::PodCondition> {
    w.status(uid).conditions.unwrap_or_default().into_iter().find(|c| c.type_ == type_)
}

fn ready(w: &World, uid: &str) -> bool {
    condition(w, uid, "Ready").is_some_and(|c| c.status == "True")
}

fn notes(w: &World, reason: &str) -> Vec<String> {
    w.events.all().into_iter().filter(|e| e.reason == reason).map(|e| e.note).collect()
}

/// Seconds since the start at which `what` was called on the fake systemd.
fn call_times(w: &World, what: &str) -> Vec<u64> {
    w.systemd.timed_calls().into_iter().filter(|c| c.what == what).map(|c| secs(c.at)).collect()
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(start()).unwrap_or_default().as_secs()
}

#[tokio::test(start_paused = true)]
async fn probes_run_at_their_initial_delay_then_every_period() {
    let w = World::start().await;
    let p = pod(
        "timing",
        "t1",
        serde_json::json!({"containers": [{"name": "app", "image": "/bin/app",
            "livenessProbe": {"exec": exec("live"), "initialDelaySeconds": 5, "periodSeconds": 3},
            "readinessProbe": {"exec": exec("ready"), "periodSeconds": 4}}]}),
    );
    w.apply(&p);
    w.until("the app runs", |w| is_running(&w.container("t1", "app"))).await;
    w.until("ready", |w| ready(w, "t1")).await;
    w.run_for(Duration::from_secs(15)).await;
    assert_eq!(&w.prober.times("live", start())[..4], [5, 8, 11, 14]);
    assert_eq!(&w.prober.times("ready", start())[..4], [0, 4, 8, 12]);
    let c = w.container("t1", "app");
    assert_eq!((c.started, c.ready), (Some(true), true));
    assert_eq!(w.starts(&unit("timing", "app")), [0], "passing probes restart nothing");
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_liveness_probe_restarts_the_container_with_events_and_back_off() {
    let w = World::start().await;
    w.prober.set("live", Script::fail("boom"));
    let p = pod(
        "live",
        "l1",
        serde_json::json!({"containers": [{"name": "app", "image": "/bin/app",
            "livenessProbe": {"exec": exec("live"), "periodSeconds": 2, "failureThreshold": 3}}]}),
    );
    let u = unit("live", "app");
    w.apply(&p);
    // Probes at 0, 2, 4 fail: killed at 4 and restarted at once (the first restart is immediate);
    // failing again at 4, 6, 8: killed at 8, restarted after the 10 s back-off.
    w.until("the third start", |w| w.starts(&u).len() == 3).await;
    w.prober.set("live", Script::pass());
    assert_eq!(w.starts(&u), [0, 4, 18]);
    assert_eq!(call_times(&w, &format!("kill {u} Main SIGTERM")), [4, 8]);
    let killing = notes(&w, "Killing");
    assert_eq!(killing, ["Container app failed liveness probe, will be restarted"; 2]);
    let unhealthy = notes(&w, "Unhealthy");
    assert!(unhealthy.len() >= 6 && unhealthy.iter().all(|n| n == "Liveness probe failed: boom"), "{unhealthy:?}");
    w.until("running again", |w| is_running(&w.container("l1", "app"))).await;
    let c = w.container("l1", "app");
    assert_eq!(c.restart_count, 2);
    let last = c.last_state.unwrap().terminated.unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (143, Some("Error")));
    w.run_for(Duration::from_secs(60)).await;
    assert_eq!(w.starts(&u).len(), 3, "a passing probe leaves it running");
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_probes_grace_period_bounds_a_liveness_kill() {
    let w = World::start().await;
    w.prober.set("live", Script::fail("down"));
    let p = pod(
        "grace",
        "g1",
        serde_json::json!({"restartPolicy": "Never", "terminationGracePeriodSeconds": 60,
            "containers": [{"name": "app", "image": "/bin/app",
            "livenessProbe": {"exec": exec("live"), "initialDelaySeconds": 1, "failureThreshold": 1,
                "terminationGracePeriodSeconds": 5}}]}),
    );
    let u = unit("grace", "app");
    w.apply(&p);
    w.until("running", |w| w.running(&u)).await;
    w.systemd.ignore_sigterm(&u);
    w.until("killed", |w| !w.running(&u)).await;
    assert_eq!(call_times(&w, &format!("kill {u} Main SIGTERM")), [1]);
    assert_eq!(call_times(&w, &format!("kill {u} All SIGKILL"))[0], 6, "5 s after SIGTERM, not 60");
    assert_eq!(notes(&w, "Killing"), ["Container app failed liveness probe"], "Never: not restarted");
    w.until("Failed", |w| w.status("g1").phase.as_deref() == Some("Failed")).await;
    assert_eq!(w.starts(&u).len(), 1);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_startup_probe_holds_the_other_probes_back() {
    let w = World::start().await;
    w.prober.set("start", Script::fail("not yet"));
    let p = pod(
        "slow",
        "s1",
        serde_json::json!({"containers": [{"name": "app", "image": "/bin/app",
            "startupProbe": {"exec": exec("start"), "periodSeconds": 1, "failureThreshold": 30},
            "livenessProbe": {"exec": exec("live"), "periodSeconds": 2, "failureThreshold": 1},
            "readinessProbe": {"exec": exec("ready"), "periodSeconds": 2}}]}),
    );
    w.apply(&p);
    w.until("running", |w| is_running(&w.container("s1", "app"))).await;
    w.run_for(Duration::from_secs(10)).await;
    assert!(w.prober.times("live", start()).is_empty(), "no liveness probe before the startup probe passed");
    assert!(w.prober.times("ready", start()).is_empty());
    let c = w.container("s1", "app");
    assert_eq!((c.started, c.ready), (Some(false), false));
    assert!(!ready(&w, "s1"));
    w.prober.set("start", Script::pass());
    w.until("ready", |w| ready(w, "s1")).await;
    let passed = *w.prober.times("start", start()).last().unwrap();
    assert_eq!(w.prober.times("live", start())[0], passed, "liveness begins once startup passed");
    let c = w.container("s1", "app");
    assert_eq!((c.started, c.ready), (Some(true), true));
    w.run_for(Duration::from_secs(10)).await;
    let starts = w.prober.times("start", start());
    assert_eq!((starts.len() as u64, starts.last()), (passed + 1, Some(&passed)), "every second until it passed");

    // A startup probe that never passes kills the container.
    w.prober.set("never", Script::fail("no"));
    let p = pod(
        "stuck",
        "s2",
        serde_json::json!({"containers": [{"name": "app", "image": "/bin/app",
            "startupProbe": {"exec": exec("never"), "periodSeconds": 1, "failureThreshold": 3}}]}),
    );
    w.apply(&p);
    w.until("restarted", |w| w.starts(&unit("stuck", "app")).len() == 2).await;
    assert!(notes(&w, "Killing").contains(&"Container app failed startup probe, will be restarted".to_owned()));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn readiness_flips_the_containers_ready_and_the_pods_ready_condition() {
    let w = World::start().await;
    let p = pod(
        "flip",
        "f1",
        serde_json::json!({"containers": [{"name": "app", "image": "/bin/app",
            "readinessProbe": {"exec": exec("ready"), "periodSeconds": 1, "successThreshold": 2, "failureThreshold": 2}}]}),
    );
    w.apply(&p);
    w.until("running", |w| is_running(&w.container("f1", "app"))).await;
    assert!(!w.container("f1", "app").ready, "not ready before the readiness probe passed");
    w.until("ready", |w| ready(w, "f1")).await;
    let became_ready = secs(w.clock.wall());
    assert!(became_ready >= 1, "two successes needed: ready at {became_ready}");
    w.prober.set("ready", Script::fail("503"));
    w.until("not ready", |w| !ready(w, "f1")).await;
    let c = condition(&w, "f1", "Ready").unwrap();
    assert_eq!(c.reason.as_deref(), Some("ContainersNotReady"));
    assert!(w.container("f1", "app").state.unwrap().running.is_some(), "readiness restarts nothing");
    assert!(notes(&w, "Unhealthy").contains(&"Readiness probe failed: 503".to_owned()));
    w.prober.set("ready", Script::pass());
    w.until("ready again", |w| ready(w, "f1")).await;
    assert_eq!(w.starts(&unit("flip", "app")).len(), 1);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn post_start_runs_before_the_container_counts_as_running_and_holds_later_apps() {
    let w = World::start().await;
    w.prober.set("post-a", Script::pass().after(Duration::from_secs(5)));
    let p = pod(
        "hooks",
        "h1",
        serde_json::json!({"containers": [
            {"name": "a", "image": "/bin/a", "lifecycle": {"postStart": {"exec": exec("post-a")}},
             "livenessProbe": {"exec": exec("live-a"), "periodSeconds": 1}},
            {"name": "b", "image": "/bin/b"}]}),
    );
    w.apply(&p);
    w.until("a's process runs", |w| w.running(&unit("hooks", "a"))).await;
    w.run_for(Duration::from_secs(3)).await;
    assert_eq!(waiting(&w.container("h1", "a")).as_deref(), Some("ContainerCreating"));
    assert!(w.starts(&unit("hooks", "b")).is_empty(), "b waits for a's postStart hook");
    assert!(w.prober.times("live-a", start()).is_empty(), "probes wait for the hook");
    w.until("a running", |w| is_running(&w.container("h1", "a"))).await;
    assert_eq!(w.prober.times("post-a", start()), [0]);
    assert_eq!(w.starts(&unit("hooks", "b")), [5]);
    assert_eq!(w.prober.times("live-a", start())[0], 5);

    // A failing hook kills its container, which restarts under its policy.
    w.prober.set("post-c", Script::fail("hook says no").after(Duration::from_secs(1)));
    let p = pod(
        "bad",
        "h2",
        serde_json::json!({"containers": [{"name": "c", "image": "/bin/c", "lifecycle": {"postStart": {"exec": exec("post-c")}}}]}),
    );
    w.apply(&p);
    w.until("PostStartHookError shown during the back-off", |w| {
        waiting(&w.container("h2", "c")).as_deref() == Some("PostStartHookError")
    })
    .await;
    let c = w.container("h2", "c");
    assert_eq!(c.state.unwrap().waiting.unwrap().message.as_deref(), Some("hook says no"));
    assert!(notes(&w, "FailedPostStartHook").iter().all(|n| n == "PostStartHook failed"));
    assert!(notes(&w, "Killing").contains(&"FailedPostStartHook".to_owned()));
    assert_eq!(w.starts(&unit("bad", "c")).len(), 2, "killed, restarted at once, killed again, backing off");
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_process_still_being_set_up_is_not_running_yet() {
    // systemd has forked the process but not executed the program (sandbox set-up, or a notify
    // daemon before READY=1): the container is ContainerCreating, not ready, unprobed, hookless.
    let w = World::start().await;
    let u = unit("setup", "app");
    w.systemd.slow_start(&u);
    let p = pod(
        "setup",
        "s1",
        serde_json::json!({"containers": [{"name": "app", "image": "/bin/app",
            "lifecycle": {"postStart": {"exec": exec("post")}},
            "readinessProbe": {"exec": exec("ready"), "periodSeconds": 1}}]}),
    );
    w.apply(&p);
    w.until("the process exists", |w| w.running(&u)).await;
    w.run_for(Duration::from_secs(5)).await;
    assert_eq!(waiting(&w.container("s1", "app")).as_deref(), Some("ContainerCreating"));
    assert!(!ready(&w, "s1"));
    assert!(w.prober.times("post", start()).is_empty() && w.prober.times("ready", start()).is_empty());
    assert_eq!(w.starts(&u), [0], "a start under way is not started again");
    w.systemd.finish_start(&u);
    w.until("running and ready", |w| is_running(&w.container("s1", "app")) && ready(w, "s1")).await;
    assert_eq!(w.prober.times("post", start()), [5]);
    assert_eq!(w.prober.times("ready", start())[0], 5);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn pre_stop_runs_before_the_stop_signal_within_the_grace_period() {
    let w = World::start().await;
    w.prober.set("pre-quick", Script::pass().after(Duration::from_secs(4)));
    w.prober.set("pre-slow", Script::pass().after(Duration::from_secs(60)));
    let spec = |hook: &str| {
        serde_json::json!({"containers": [{"name": "app", "image": "/bin/app",
            "lifecycle": {"preStop": {"exec": exec(hook)}, "stopSignal": "SIGUSR1"}}]})
    };
    let (quick, slow) = (pod("quick", "p1", spec("pre-quick")), pod("slow", "p2", spec("pre-slow")));
    let (uq, us) = (unit("quick", "app"), unit("slow", "app"));
    w.apply(&quick);
    w.apply(&slow);
    w.until("both run", |w| w.running(&uq) && w.running(&us)).await;
    assert!(w.systemd.files()[&uq].contains("KillSignal=SIGUSR1\n"));
    w.systemd.ignore_sigterm(&uq);
    w.systemd.ignore_sigterm(&us);
    let t0 = secs(w.clock.wall());
    w.apply(&deleting(quick, 10));
    w.apply(&deleting(slow, 10));
    w.until("both deleted", |w| w.api.deleted().len() == 2).await;
    assert_eq!(w.prober.times("pre-quick", start()), [t0]);
    // The stop signal after the hook; SIGUSR1 is ignored like SIGTERM by these stubborn fakes.
    assert!(call_times(&w, &format!("kill {uq} Main SIGTERM")).is_empty());
    assert_eq!(call_times(&w, &format!("kill {uq} Main SIGUSR1")), [t0 + 4]);
    assert_eq!(call_times(&w, &format!("kill {uq} All SIGKILL"))[0], t0 + 10);
    // A hook that outlasts the grace period is cut off; the stop signal still gets 2 s.
    assert_eq!(call_times(&w, &format!("kill {us} Main SIGUSR1")), [t0 + 10]);
    assert_eq!(call_times(&w, &format!("kill {us} All SIGKILL"))[0], t0 + 12);
    assert_eq!(notes(&w, "Killing"), ["Stopping container app"; 2]);

    // A failing preStop hook is reported; the stop goes on at once.
    w.prober.set("pre-bad", Script::fail("no such file"));
    let bad = pod("bad", "p3", spec("pre-bad"));
    w.apply(&bad);
    w.until("runs", |w| w.running(&unit("bad", "app"))).await;
    let t1 = secs(w.clock.wall());
    w.apply(&deleting(bad, 30));
    w.until("deleted", |w| w.api.deleted().len() == 3).await;
    assert_eq!(call_times(&w, &format!("kill {} Main SIGUSR1", unit("bad", "app"))), [t1]);
    assert_eq!(notes(&w, "FailedPreStopHook"), ["no such file"]);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_active_deadline_fails_the_pod_and_stops_its_containers() {
    let w = World::start().await;
    let spec = |secs: i64| {
        serde_json::json!({"activeDeadlineSeconds": secs, "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "app", "image": "/bin/app"}]})
    };
    w.apply(&pod("dl", "d1", spec(30)));
    let u = unit("dl", "app");
    w.until("running", |w| w.running(&u)).await;
    w.until("Failed", |w| w.status("d1").phase.as_deref() == Some("Failed")).await;
    let s = w.status("d1");
    assert_eq!(s.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(s.message.as_deref(), Some("Pod was active on the node longer than the specified deadline"));
    assert_eq!(call_times(&w, &format!("kill {u} Main SIGTERM")), [30]);
    assert_eq!(notes(&w, "DeadlineExceeded").len(), 1);
    w.until("stopped", |w| !w.running(&u)).await;
    w.run_for(Duration::from_secs(60)).await;
    assert_eq!(w.starts(&u).len(), 1, "not restarted");
    assert!(w.api.deleted().is_empty(), "the pod stays (Failed) until it is deleted");
    assert!(w.systemd.files().contains_key(&u), "its unit stays with it");
    assert!(w.container("d1", "app").state.unwrap().terminated.is_some());

    // The deadline may be lowered on a running pod.
    let mut p = pod("later", "d2", spec(600));
    w.apply(&p);
    let u2 = unit("later", "app");
    w.until("running", |w| w.running(&u2)).await;
    w.run_for(Duration::from_secs(5)).await;
    let t = secs(w.clock.wall());
    let started = w.status("d2").start_time.unwrap().0.as_second() as u64 - START;
    p.spec.as_mut().unwrap().active_deadline_seconds = Some((t + 20 - started) as i64);
    w.apply(&p);
    w.until("Failed", |w| w.status("d2").phase.as_deref() == Some("Failed")).await;
    assert_eq!(call_times(&w, &format!("kill {u2} Main SIGTERM")), [t + 20]);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn termination_messages_come_from_the_file_or_from_the_log() {
    let w = World::start().await;
    let p = pod(
        "msg",
        "m1",
        serde_json::json!({"restartPolicy": "Never", "containers": [
            {"name": "a", "image": "/bin/a", "terminationMessagePath": "/tmp/my-log"},
            {"name": "b", "image": "/bin/b", "terminationMessagePolicy": "FallbackToLogsOnError"}]}),
    );
    let (ua, ub) = (unit("msg", "a"), unit("msg", "b"));
    w.apply(&p);
    w.until("both run", |w| w.running(&ua) && w.running(&ub)).await;
    let file = w.pod_dir.path().join("m1/containers/a/termination-log");
    assert!(w.systemd.files()[&ua].contains(&format!("BindPaths={}:/tmp/my-log:rbind\n", file.display())));
    std::fs::write(&file, "done: 42").unwrap();
    let id = w.systemd.unit(&ub).unwrap().invocation_id;
    w.logs.0.lock().unwrap().insert(id, "starting\nfatal: no config\n".into());
    w.systemd.exit(&ua, 0);
    w.systemd.exit(&ub, 3);
    w.until("Failed", |w| w.status("m1").phase.as_deref() == Some("Failed")).await;
    let ta = w.container("m1", "a").state.unwrap().terminated.unwrap();
    assert_eq!(ta.message.as_deref(), Some("done: 42"));
    let tb = w.container("m1", "b").state.unwrap().terminated.unwrap();
    assert_eq!(tb.message.as_deref(), Some("starting\nfatal: no config\n"));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn host_aliases_are_a_hosts_file_bound_into_the_units() {
    let w = World::start().await;
    let p = pod(
        "hosts",
        "a1",
        serde_json::json!({"hostAliases": [{"ip": "10.1.2.3", "hostnames": ["db.local", "cache.local"]}],
            "containers": [{"name": "app", "image": "/bin/app"}]}),
    );
    w.apply(&p);
    w.until("running", |w| w.running(&unit("hosts", "app"))).await;
    let hosts = w.pod_dir.path().join("a1/etc-hosts");
    assert!(
        w.systemd.files()[&unit("hosts", "app")]
            .contains(&format!("BindReadOnlyPaths={}:/etc/hosts:rbind\n", hosts.display()))
    );
    let text = std::fs::read_to_string(&hosts).unwrap();
    assert!(text.starts_with("# Kubernetes-managed hosts file (host network).\n"), "{text}");
    assert!(text.ends_with("\n# Entries added by HostAliases.\n10.1.2.3\tdb.local\tcache.local\n"), "{text}");
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn ready_waits_for_the_readiness_gates() {
    let w = World::start().await;
    let mut p: Pod = pod(
        "gated",
        "r1",
        serde_json::json!({"readinessGates": [{"conditionType": "example.com/in-lb"}],
            "containers": [{"name": "app", "image": "/bin/app"}]}),
    );
    w.apply(&p);
    w.until("ContainersReady", |w| condition(w, "r1", "ContainersReady").is_some_and(|c| c.status == "True")).await;
    let c = condition(&w, "r1", "Ready").unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_deref()), ("False", Some("ReadinessGatesNotReady")));
    // A controller sets the gate's condition; the pod becomes Ready.
    w.api.set_condition("r1", serde_json::json!({"type": "example.com/in-lb", "status": "True"}));
    p.status = Some(
        serde_json::from_value(serde_json::json!({"conditions": [{"type": "example.com/in-lb", "status": "True"}]}))
            .unwrap(),
    );
    w.apply(&p);
    w.until("Ready", |w| ready(w, "r1")).await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_sidecar_counts_as_started_once_its_startup_probe_passed() {
    let w = World::start().await;
    w.prober.set("side-up", Script::fail("not yet"));
    let p = pod(
        "side",
        "c1",
        serde_json::json!({
            "initContainers": [{"name": "proxy", "image": "/bin/proxy", "restartPolicy": "Always",
                "startupProbe": {"exec": exec("side-up"), "periodSeconds": 1, "failureThreshold": 60}}],
            "containers": [{"name": "app", "image": "/bin/app"}]}),
    );
    w.apply(&p);
    w.until("the sidecar runs", |w| w.running(&unit("side", "proxy"))).await;
    w.run_for(Duration::from_secs(5)).await;
    assert!(w.starts(&unit("side", "app")).is_empty(), "the app waits for the sidecar's startup probe");
    w.prober.set("side-up", Script::pass());
    w.until("the app runs", |w| w.running(&unit("side", "app"))).await;
    let passed = *w.prober.times("side-up", start()).last().unwrap();
    assert_eq!(w.starts(&unit("side", "app")), [passed]);
    w.stop().await;
}

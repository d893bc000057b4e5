//! Tests of `status.rs`: unit states, phases, conditions, probes and readiness gates, QoS.

use super::*;
use crate::systemd::ActiveState;

fn view(name: &str, kind: ContainerKind, state: CState) -> ContainerView {
    ContainerView {
        name: name.into(),
        kind,
        image: "/bin/x".into(),
        image_id: "/bin/x".into(),
        state,
        last_state: None,
        restart_count: 0,
        container_id: None,
        startup_passed: true,
        readiness_passes: true,
    }
}

fn exited(code: i32) -> CState {
    CState::Terminated(Box::new(ContainerStateTerminated { exit_code: code, ..Default::default() }))
}

fn running() -> CState {
    CState::Running { started_at: None }
}

fn creating() -> CState {
    CState::waiting(WaitingReason::ContainerCreating, None)
}

fn crashloop(code: i32) -> (CState, Option<ContainerStateTerminated>) {
    (
        CState::waiting(WaitingReason::CrashLoopBackOff, None),
        Some(ContainerStateTerminated { exit_code: code, ..Default::default() }),
    )
}

#[test]
fn unit_states_map_to_container_states() {
    let mut u = UnitStatus {
        load_state: "loaded".into(),
        active_state: ActiveState::Active,
        sub_state: "running".into(),
        main_pid: 7,
        started_usec: 1_700_000_000_000_000,
        invocation_id: "abc".into(),
        ..UnitStatus::default()
    };
    assert!(matches!(unit_run(&u), UnitRun::Running(Some(_))));
    // Forked but not executed yet (sandbox set-up, or a notify daemon before READY=1); a start
    // whose ActiveState signal has not come yet counts as starting too.
    u.active_state = ActiveState::Activating;
    assert_eq!(unit_run(&u), UnitRun::Starting);
    u.active_state = ActiveState::Failed;
    assert_eq!(unit_run(&u), UnitRun::Starting);
    u.active_state = ActiveState::Deactivating;
    assert!(matches!(unit_run(&u), UnitRun::Running(Some(_))));
    u.main_pid = 0;
    u.active_state = ActiveState::Activating;
    assert_eq!(unit_run(&u), UnitRun::NotStarted);
    u.main_pid = 0;
    u.exit_kind = ExitKind::Exited;
    u.exit_status = 0;
    u.exited_usec = 1_700_000_001_000_000;
    u.active_state = ActiveState::Active;
    u.sub_state = "exited".into();
    let UnitRun::Exited(t) = unit_run(&u) else { panic!() };
    assert_eq!(
        (t.exit_code, t.reason.as_deref(), t.container_id.as_deref()),
        (0, Some("Completed"), Some("systemd://abc"))
    );
    u.exit_status = 3;
    u.result = "exit-code".into();
    u.active_state = ActiveState::Failed;
    u.sub_state = "failed".into();
    let UnitRun::Exited(t) = unit_run(&u) else { panic!() };
    assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));
    u.exit_status = 203;
    let UnitRun::Exited(t) = unit_run(&u) else { panic!() };
    assert_eq!(t.reason.as_deref(), Some("StartError"));
    assert!(t.message.as_deref().unwrap().contains("203 (EXEC"));
    u.exit_kind = ExitKind::Killed;
    u.exit_status = 9;
    u.result = "signal".into();
    let UnitRun::Exited(t) = unit_run(&u) else { panic!() };
    assert_eq!((t.exit_code, t.signal, t.reason.as_deref()), (137, Some(9), Some("Error")));
    u.result = "oom-kill".into();
    let UnitRun::Exited(t) = unit_run(&u) else { panic!() };
    assert_eq!(t.reason.as_deref(), Some("OOMKilled"));
}

#[test]
fn phases_follow_the_kubelet() {
    use ContainerKind::*;
    let p = |policy, cs: Vec<ContainerView>| phase(policy, &cs, false);
    assert_eq!(p(RestartPolicy::Always, vec![view("a", App, creating())]), "Pending");
    assert_eq!(p(RestartPolicy::Always, vec![view("a", App, running())]), "Running");
    assert_eq!(p(RestartPolicy::Always, vec![view("i", Init, running()), view("a", App, creating())]), "Pending");
    assert_eq!(p(RestartPolicy::Never, vec![view("i", Init, exited(1)), view("a", App, creating())]), "Failed");
    let (s, l) = crashloop(1);
    let mut i = view("i", Init, s);
    i.last_state = l;
    assert_eq!(p(RestartPolicy::Always, vec![i.clone(), view("a", App, creating())]), "Pending");
    assert_eq!(p(RestartPolicy::Never, vec![view("a", App, exited(0)), view("b", App, exited(0))]), "Succeeded");
    assert_eq!(p(RestartPolicy::Never, vec![view("a", App, exited(0)), view("b", App, exited(2))]), "Failed");
    assert_eq!(p(RestartPolicy::OnFailure, vec![view("a", App, exited(2))]), "Running");
    assert_eq!(p(RestartPolicy::OnFailure, vec![view("a", App, exited(0))]), "Succeeded");
    assert_eq!(p(RestartPolicy::Always, vec![view("a", App, exited(0))]), "Running");
    let (s, l) = crashloop(1);
    let mut a = view("a", App, s);
    a.last_state = l;
    assert_eq!(p(RestartPolicy::Always, vec![a]), "Running");
    assert_eq!(phase(RestartPolicy::Always, &[view("a", App, exited(0))], true), "Succeeded");
    // A sidecar that keeps running does not hold the pod in Running once apps are done.
    assert_eq!(p(RestartPolicy::Never, vec![view("s", Sidecar, exited(137)), view("a", App, exited(0))]), "Succeeded");
    assert_eq!(p(RestartPolicy::Never, vec![view("s", Sidecar, running()), view("a", App, running())]), "Running");
    assert_eq!(p(RestartPolicy::Never, vec![view("s", Sidecar, creating()), view("a", App, creating())]), "Pending");
}

fn pod(json: serde_json::Value) -> Pod {
    serde_json::from_value(json).unwrap()
}

#[test]
fn conditions_and_statuses() {
    use ContainerKind::*;
    let p = pod(serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}}));
    let now = Timestamp::from_second(1_700_000_000).unwrap();
    let f = PodFacts { pod: &p, node_ip: "10.0.0.5", start_time: now, terminal: false, now, failed: None };
    let s = pod_status(&f, &[view("i", Init, exited(0)), view("a", App, running()), view("b", App, creating())]);
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    let cond = |t: &str| s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == t).unwrap().clone();
    assert_eq!(cond("Initialized").status, "True");
    assert_eq!(cond("Ready").status, "False");
    assert_eq!(cond("Ready").message.as_deref(), Some("containers with unready status: [b]"));
    assert_eq!(cond("PodScheduled").status, "True");
    assert_eq!(s.pod_ip.as_deref(), Some("10.0.0.5"));
    assert!(s.init_container_statuses.as_ref().unwrap()[0].ready);
    let b = &s.container_statuses.as_ref().unwrap()[1];
    assert_eq!(b.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("ContainerCreating"));
    assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));

    let s = pod_status(&f, &[view("i", Init, running()), view("a", App, creating()), view("b", App, creating())]);
    let c = s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Initialized").unwrap();
    assert_eq!(c.message.as_deref(), Some("containers with incomplete status: [i]"));

    let f = PodFacts { terminal: true, ..f };
    let s = pod_status(&f, &[view("a", App, exited(0)), view("b", App, exited(0))]);
    assert_eq!(s.phase.as_deref(), Some("Succeeded"));
    let c = s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(c.reason.as_deref(), Some("PodCompleted"));
}

#[test]
fn probes_decide_started_and_ready_and_readiness_gates_hold_ready_back() {
    use ContainerKind::*;
    let with = |cond: serde_json::Value| {
        pod(serde_json::json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}], "readinessGates": [{"conditionType": "example.com/lb"}]},
            "status": {"conditions": cond}}))
    };
    let now = Timestamp::from_second(1_700_000_000).unwrap();
    let status = |p: &Pod, a: &ContainerView| {
        let f = PodFacts { pod: p, node_ip: "10.0.0.5", start_time: now, terminal: false, now, failed: None };
        pod_status(&f, std::slice::from_ref(a))
    };
    let cond = |s: &PodStatus, t: &str| s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == t).cloned();
    let p = with(serde_json::json!([{"type": "example.com/lb", "status": "False"}]));
    let mut a = view("a", App, running());
    a.startup_passed = false;
    let s = status(&p, &a);
    let cs = &s.container_statuses.as_ref().unwrap()[0];
    assert_eq!((cs.started, cs.ready), (Some(false), false));
    a.startup_passed = true;
    a.readiness_passes = false;
    let s = status(&p, &a);
    let cs = &s.container_statuses.as_ref().unwrap()[0];
    assert_eq!((cs.started, cs.ready), (Some(true), false));
    assert_eq!(cond(&s, "Ready").unwrap().reason.as_deref(), Some("ContainersNotReady"));
    a.readiness_passes = true;
    let s = status(&p, &a);
    assert_eq!(cond(&s, "ContainersReady").unwrap().status, "True");
    let ready = cond(&s, "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("False", Some("ReadinessGatesNotReady")));
    assert_eq!(
        ready.message.as_deref(),
        Some("the status of pod readiness gate \"example.com/lb\" is not \"True\", but False")
    );
    // vks writes only the kubelet's conditions; the gate's stays as its owner set it.
    assert!(cond(&s, "example.com/lb").is_none());
    let s = status(&with(serde_json::json!([])), &a);
    assert_eq!(
        cond(&s, "Ready").unwrap().message.as_deref(),
        Some("corresponding condition of pod readiness gate \"example.com/lb\" does not exist.")
    );
    let s = status(&with(serde_json::json!([{"type": "example.com/lb", "status": "True"}])), &a);
    assert_eq!(cond(&s, "Ready").unwrap().status, "True");
    let f = PodFacts {
        pod: &p,
        node_ip: "10.0.0.5",
        start_time: now,
        terminal: true,
        now,
        failed: Some(("DeadlineExceeded", "Pod was active on the node longer than the specified deadline")),
    };
    let s = pod_status(&f, &[view("a", App, running())]);
    assert_eq!((s.phase.as_deref(), s.reason.as_deref()), (Some("Failed"), Some("DeadlineExceeded")));
    assert_eq!(cond(&s, "Ready").unwrap().reason.as_deref(), Some("PodFailed"));
}

#[test]
fn qos() {
    let best = pod(serde_json::json!({"spec": {"containers": [{"name": "a"}]}}));
    assert_eq!(qos_class(&best), "BestEffort");
    let guaranteed = pod(serde_json::json!({"spec": {"containers": [{"name": "a",
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}}));
    assert_eq!(qos_class(&guaranteed), "Guaranteed");
    let burstable = pod(serde_json::json!({"spec": {"containers": [{"name": "a",
        "resources": {"requests": {"cpu": "100m"}}}]}}));
    assert_eq!(qos_class(&burstable), "Burstable");
}

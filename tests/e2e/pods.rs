//! Pods as systemd units, end to end: creation and status, hostile values, bad pods, init
//! containers and sidecars, restart policies and back-off, Jobs, Deployments, deletion, the
//! orphan sweep, and recovery from vks restarts, kill -9 and node reboots.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use serde_json::json;

use crate::support::*;

const LONG: Duration = Duration::from_secs(60);

fn try_container_status<'a>(p: &'a Pod, name: &str) -> Result<&'a ContainerStatus, String> {
    let s = p.status.as_ref().ok_or("no status yet")?;
    s.container_statuses
        .iter()
        .flatten()
        .chain(s.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
        .ok_or_else(|| format!("no status for container {name} yet: {s:?}"))
}

fn container_status<'a>(p: &'a Pod, name: &str) -> &'a ContainerStatus {
    try_container_status(p, name).unwrap_or_else(|e| panic!("{e}"))
}

fn waiting_reason(c: &ContainerStatus) -> Option<String> {
    c.state.as_ref()?.waiting.as_ref()?.reason.clone()
}

fn condition(p: &Pod, t: &str) -> Option<String> {
    p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == t).map(|c| c.status.clone())
}

/// A pod pinned to `node` (no scheduler involved).
fn pod(name: &str, node: &Node, spec: serde_json::Value) -> serde_json::Value {
    let mut spec = spec;
    spec["nodeName"] = json!(node.name);
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name }, "spec": spec })
}

fn sh(name: &str, script: &str) -> serde_json::Value {
    json!({ "name": name, "image": "/bin/sh", "command": ["/bin/sh", "-c", script] })
}

/// Units of vks in the node's unit directory.
fn unit_files(node: &Node) -> Vec<String> {
    node.sh("ls /run/systemd/system | grep '^vks\\..*\\.service$' || true").lines().map(str::to_owned).collect()
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn a_pod_runs_as_a_unit_and_its_status_follows_systemd() {
    let node = Node::up("pod-basic");
    let ns = Namespace::new("pod-basic");
    let client = client().await;
    let spec = json!({ "containers": [{ "name": "main", "image": "/usr/bin/sleep", "args": ["3600"] }] });
    create_pod(&client, &ns.name, pod("web", &node, spec)).await;
    let p = wait_phase(&client, &ns.name, "web", "Running", LONG).await;
    let status = p.status.clone().unwrap();
    let ip = node.ip();
    assert_eq!(status.host_ip.as_deref(), Some(ip.as_str()));
    assert_eq!(status.pod_ip.as_deref(), Some(ip.as_str()));
    assert_eq!(status.pod_ips.unwrap()[0].ip, ip);
    assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
    assert!(status.start_time.is_some());
    for t in ["PodScheduled", "PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(condition(&p, t).as_deref(), Some("True"), "{t}");
    }
    let c = container_status(&p, "main");
    assert!(c.ready && c.started == Some(true) && c.restart_count == 0);
    assert_eq!(c.image_id, "file:///usr/bin/sleep");

    // The unit, named by the scheme and carrying the pod's identity.
    let unit = unit_name(&ns.name, "web", "main");
    assert_eq!(node.unit_prop(&unit, "ActiveState"), "active");
    let invocation = node.unit_prop(&unit, "InvocationID");
    assert_eq!(c.container_id.as_deref(), Some(format!("systemd://{invocation}").as_str()));
    let file = node.exec(&["cat", &format!("/run/systemd/system/{unit}")]);
    let meta = vks::unit::UnitMeta::parse(&file).expect("[X-Kubernetes] section");
    assert_eq!(
        (meta.namespace.as_str(), meta.pod.as_str(), meta.container.as_str()),
        (ns.name.as_str(), "web", "main")
    );
    assert_eq!(Some(meta.pod_uid), p.metadata.uid.clone());
    let cmdline = node.sh(&format!("tr '\\0' ' ' < /proc/$(systemctl show -p MainPID --value {unit})/cmdline"));
    assert_eq!(cmdline.trim(), "/usr/bin/sleep 3600");

    // Killing the process from outside: the status follows at once (signals, not the 60 s
    // resync), and restartPolicy Always restarts it immediately the first time.
    let killed_at = Instant::now();
    node.exec(&["systemctl", "kill", "-s", "SIGKILL", &unit]);
    let p = wait_for("restartCount 1 after the kill", Duration::from_secs(10), async || {
        let p = get_pod(&client, &ns.name, "web").await.ok_or("gone")?;
        let c = try_container_status(&p, "main")?;
        if c.restart_count == 1 && c.ready { Ok(p) } else { Err(format!("{c:?}")) }
    })
    .await;
    assert!(killed_at.elapsed() < within(Duration::from_secs(5)), "status took {:?}: not pushed", killed_at.elapsed());
    let last = container_status(&p, "main").last_state.clone().unwrap().terminated.unwrap();
    assert_eq!((last.exit_code, last.signal, last.reason.as_deref()), (137, Some(9), Some("Error")));
    assert_ne!(node.unit_prop(&unit, "InvocationID"), invocation, "a new run of the unit");

    // The pod's unit is gone after deletion.
    delete_pod(&client, &ns.name, "web", None).await;
    wait_for("the pod object to be deleted", LONG, async || match get_pod(&client, &ns.name, "web").await {
        None => Ok(()),
        Some(p) => Err(format!("{:?}", p.status.map(|s| s.phase))),
    })
    .await;
    assert!(unit_files(&node).is_empty(), "{:?}", unit_files(&node));
    assert_eq!(node.unit_prop(&unit, "LoadState"), "not-found");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn hostile_args_and_env_reach_the_process_exactly() {
    let node = Node::up("hostile");
    let ns = Namespace::new("hostile");
    let client = client().await;
    let args: Vec<String> = vec![
        "line1\n[Service]\nExecStartPre=/bin/false".into(),
        "100% %n %i %%".into(),
        "$HOME ${PATH} $$ $".into(),
        "say \"hi\" 'there' `x`".into(),
        "back\\slash\\".into(),
        "  spaced\ttab  ".into(),
        ";".into(),
        String::new(),
        "grüße ☃ 日本".into(),
        "$(NOT_DEFINED) stays".into(),
        "\\\n".into(),
    ];
    let env_value = "a\nb [X-Kubernetes]\nPodUID=evil %h $USER \"q\" \\ é";
    // The script writes each argument and the environment, base64-encoded, where the test can
    // read them back.
    let script = "for a in \"$0\" \"$@\"; do printf '%s' \"$a\" | base64 -w0; echo; done > /run/hostile.argv; \
                  printf '%s' \"$HOSTILE\" | base64 -w0 > /run/hostile.env; exec sleep 3600";
    let mut command = vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned(), "argv0 with space".to_owned()];
    command.extend(args.iter().cloned());
    let spec = json!({ "containers": [{
        "name": "printer", "image": "/bin/sh", "command": command,
        "env": [{ "name": "HOSTILE", "value": env_value }],
    }]});
    create_pod(&client, &ns.name, pod("hostile", &node, spec)).await;
    wait_phase(&client, &ns.name, "hostile", "Running", LONG).await;
    let got = wait_for("the container to record its argv", Duration::from_secs(20), async || {
        let out = node.exec_output(&["cat", "/run/hostile.argv", "/run/hostile.env"]);
        if out.status.success() { Ok(String::from_utf8_lossy(&out.stdout).into_owned()) } else { Err("not yet".into()) }
    })
    .await;
    let decode = |b64: &str| {
        let out = std::process::Command::new("base64")
            .arg("-d")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut out = out;
        out.stdin.take().unwrap().write_all(b64.as_bytes()).unwrap();
        String::from_utf8(out.wait_with_output().unwrap().stdout).unwrap()
    };
    let mut lines: Vec<String> = got.lines().map(decode).collect();
    let env = lines.pop().unwrap();
    // Exactly as given, except what Kubernetes itself defines for args: `$$` is an escaped `$`.
    let mut want = vec!["argv0 with space".to_owned()];
    want.extend(args.iter().map(|a| a.replace("$$", "$")));
    assert_eq!(lines, want);
    assert_eq!(env, env_value);
    // And the unit still has exactly the directives vks wrote.
    let unit = unit_name(&ns.name, "hostile", "printer");
    assert_eq!(node.unit_prop(&unit, "ExecStartPre"), "");
    let text = node.exec(&["cat", &format!("/run/systemd/system/{unit}")]);
    let sections: Vec<&str> = text.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(sections, ["[Unit]", "[Service]", "[X-Kubernetes]"], "{text}");
    assert!(!text.lines().any(|l| l.starts_with("ExecStartPre")), "{text}");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn bad_pods_get_clear_reasons_and_do_not_disturb_others() {
    let node = Node::up("bad-pods");
    let ns = Namespace::new("bad-pods");
    let client = client().await;
    let cases = [
        (
            "no-image",
            json!({ "name": "c", "image": "/usr/bin/does-not-exist" }),
            "ErrImageNeverPull",
            "/usr/bin/does-not-exist",
        ),
        (
            "no-command",
            json!({ "name": "c", "image": "/bin/sh", "command": ["no-such-command-anywhere"] }),
            "CreateContainerError",
            "not found in PATH",
        ),
        (
            "bad-env",
            json!({ "name": "c", "image": "/usr/bin/sleep", "args": ["9"], "env": [{ "name": "my.var", "value": "x" }] }),
            "CreateContainerError",
            "env \"my.var\"",
        ),
        (
            "secret-env",
            json!({ "name": "c", "image": "/usr/bin/sleep", "args": ["9"], "env": [{ "name": "PW", "valueFrom": { "secretKeyRef": { "name": "s", "key": "k" } } }] }),
            "CreateContainerConfigError",
            "secret \"s\" not found",
        ),
        (
            "nul-arg",
            json!({ "name": "c", "image": "/usr/bin/sleep", "args": ["a\u{0}b"] }),
            "CreateContainerError",
            "NUL",
        ),
    ];
    for (name, c, _, _) in &cases {
        create_pod(&client, &ns.name, pod(name, &node, json!({ "containers": [c] }))).await;
    }
    let good = json!({ "containers": [{ "name": "c", "image": "/usr/bin/sleep", "args": ["3600"] }] });
    create_pod(&client, &ns.name, pod("good", &node, good)).await;
    wait_phase(&client, &ns.name, "good", "Running", LONG).await;
    for (name, _, reason, message) in &cases {
        wait_for(&format!("pod {name} to wait with {reason}"), LONG, async || {
            let p = get_pod(&client, &ns.name, name).await.ok_or("gone")?;
            let c = try_container_status(&p, "c")?;
            let w = c.state.as_ref().and_then(|s| s.waiting.clone()).ok_or(format!("not waiting: {c:?}"))?;
            if w.reason.as_deref() == Some(*reason)
                && w.message.as_deref().unwrap_or("").contains(message)
                && phase(&p) == "Pending"
            {
                Ok(())
            } else {
                Err(format!("{w:?}"))
            }
        })
        .await;
    }
    // A process that fails to start (the working directory is missing) is a terminated
    // container with a reason, and the pod keeps its other containers.
    let spec = json!({ "restartPolicy": "Never", "containers": [
        { "name": "nodir", "image": "/usr/bin/sleep", "args": ["1"], "workingDir": "/no/such/dir" },
    ]});
    create_pod(&client, &ns.name, pod("nodir", &node, spec)).await;
    let p = wait_phase(&client, &ns.name, "nodir", "Failed", LONG).await;
    let t = container_status(&p, "nodir").state.clone().unwrap().terminated.unwrap();
    assert_eq!(t.reason.as_deref(), Some("StartError"), "{t:?}");
    assert!(t.message.unwrap().contains("CHDIR"));
    let p = get_pod(&client, &ns.name, "good").await.unwrap();
    assert_eq!(container_status(&p, "c").restart_count, 0, "the good pod was not disturbed");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn init_containers_run_in_order_then_sidecar_then_apps_which_stop_before_the_sidecar() {
    let node = Node::up("init-order");
    let ns = Namespace::new("init-order");
    let client = client().await;
    let log = "/run/order.log";
    let rec = |what: &str| format!("echo \"{what} $(date +%s%N)\" >> {log}");
    // When systemd forked this process, in clock ticks since boot (field 22 of stat): unlike
    // the shell's first `date`, it does not depend on how soon the shell gets the CPU.
    let forked = |name: &str| format!("echo \"forked {name} $(cut -d' ' -f22 /proc/$$/stat)\" >> {log}");
    let app = |name: &str| {
        sh(
            name,
            &format!(
                "trap '{}; exit 0' TERM; {}; {}; while :; do sleep 0.1; done",
                rec(&format!("stop {name}")),
                forked(name),
                rec(&format!("start {name}"))
            ),
        )
    };
    let mut sidecar = sh(
        "sidecar",
        &format!(
            "trap 'sleep 0.3; {}; exit 0' TERM; {}; {}; while :; do sleep 0.1; done",
            rec("stop sidecar"),
            forked("sidecar"),
            rec("start sidecar")
        ),
    );
    sidecar["restartPolicy"] = json!("Always");
    let spec = json!({
        "terminationGracePeriodSeconds": 20,
        "initContainers": [
            sh("init-1", &format!("{}; sleep 1; {}", rec("start init-1"), rec("end init-1"))),
            sh("init-2", &format!("{}; sleep 1; {}", rec("start init-2"), rec("end init-2"))),
            sidecar,
        ],
        "containers": [app("app-a"), app("app-b"), app("app-c")],
    });
    create_pod(&client, &ns.name, pod("ordered", &node, spec)).await;
    // While init-1 runs, nothing else has started.
    let p = wait_phase(&client, &ns.name, "ordered", "Running", LONG).await;
    assert_eq!(condition(&p, "Initialized").as_deref(), Some("True"));
    wait_for("all containers ready", LONG, async || {
        let p = get_pod(&client, &ns.name, "ordered").await.ok_or("gone")?;
        if condition(&p, "Ready").as_deref() == Some("True") { Ok(()) } else { Err(format!("{:?}", p.status)) }
    })
    .await;
    let p = get_pod(&client, &ns.name, "ordered").await.unwrap();
    for i in ["init-1", "init-2"] {
        let t = container_status(&p, i).state.clone().unwrap().terminated.unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")), "{i}");
    }
    assert!(container_status(&p, "sidecar").state.clone().unwrap().running.is_some());
    // Running means the process exists, not that the shell has reached its first line: wait
    // for every app to have recorded its start before stopping the pod.
    wait_for("every app to record its start", LONG, async || {
        let log = node.exec_output(&["cat", log]);
        let text = String::from_utf8_lossy(&log.stdout);
        match ["app-a", "app-b", "app-c"].iter().find(|a| !text.contains(&format!("start {a} "))) {
            None => Ok(()),
            Some(a) => Err(format!("{a} has not started: {text}")),
        }
    })
    .await;

    delete_pod(&client, &ns.name, "ordered", None).await;
    wait_for("the pod to be gone", LONG, async || match get_pod(&client, &ns.name, "ordered").await {
        None => Ok(()),
        Some(_) => Err("still there".to_owned()),
    })
    .await;
    let events: Vec<(String, u128)> = node
        .exec(&["cat", log])
        .lines()
        .map(|l| {
            let (what, t) = l.rsplit_once(' ').unwrap();
            (what.to_owned(), t.parse().unwrap())
        })
        .collect();
    let at =
        |what: &str| events.iter().find(|(w, _)| w == what).unwrap_or_else(|| panic!("no {what:?} in {events:?}")).1;
    assert!(at("end init-1") <= at("start init-2"), "{events:?}");
    assert!(at("end init-2") <= at("start sidecar"), "{events:?}");
    for a in ["app-a", "app-b", "app-c"] {
        assert!(at("forked sidecar") <= at(&format!("forked {a}")), "the sidecar first: {events:?}");
        assert!(at(&format!("stop {a}")) < at("stop sidecar"), "apps stop before the sidecar: {events:?}");
    }
    assert_eq!(events.iter().filter(|(w, _)| w == "start init-1").count(), 1, "init-1 ran once");
    assert!(unit_files(&node).is_empty());
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn failing_init_containers_block_the_apps() {
    let node = Node::up("init-fail");
    let ns = Namespace::new("init-fail");
    let client = client().await;
    // restartPolicy Never: the pod fails, the app never starts.
    let spec = json!({ "restartPolicy": "Never",
        "initContainers": [sh("init", "exit 7")],
        "containers": [sh("app", "echo app ran > /run/app-ran; sleep 3600")] });
    create_pod(&client, &ns.name, pod("never", &node, spec)).await;
    let p = wait_phase(&client, &ns.name, "never", "Failed", LONG).await;
    let t = container_status(&p, "init").state.clone().unwrap().terminated.unwrap();
    assert_eq!(t.exit_code, 7);
    assert_eq!(waiting_reason(container_status(&p, "app")).as_deref(), Some("PodInitializing"));
    // restartPolicy Always: the init container is retried with back-off, the app waits.
    let spec = json!({ "restartPolicy": "Always",
        "initContainers": [sh("init", "exit 3")],
        "containers": [sh("app", "echo app ran > /run/app-ran; sleep 3600")] });
    create_pod(&client, &ns.name, pod("always", &node, spec)).await;
    wait_for("Init:CrashLoopBackOff", LONG, async || {
        let p = get_pod(&client, &ns.name, "always").await.ok_or("gone")?;
        let c = try_container_status(&p, "init")?;
        if waiting_reason(c).as_deref() == Some("CrashLoopBackOff") && c.restart_count >= 1 && phase(&p) == "Pending" {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await;
    let out = kubectl(&["get", "pod", "always", "-n", &ns.name, "--no-headers"]);
    assert!(out.contains("Init:CrashLoopBackOff") || out.contains("Init:Error"), "{out}");
    assert!(!node.exec_output(&["test", "-e", "/run/app-ran"]).status.success(), "the app must not have started");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn crash_loop_back_off_follows_the_kubelet() {
    let node = Node::up("crashloop");
    let ns = Namespace::new("crashloop");
    let client = client().await;
    let spec = json!({ "containers": [sh("crash", "echo crashing; exit 2")] });
    create_pod(&client, &ns.name, pod("crash", &node, spec)).await;
    // Collect the start times of the runs from the container's status as it restarts.
    let mut starts: BTreeMap<i32, k8s_openapi::jiff::Timestamp> = BTreeMap::new();
    let mut finishes: BTreeMap<i32, k8s_openapi::jiff::Timestamp> = BTreeMap::new();
    let mut saw_backoff_message = false;
    wait_for("four restarts and the fifth run's end", Duration::from_secs(120), async || {
        let p = get_pod(&client, &ns.name, "crash").await.ok_or("gone")?;
        let c = try_container_status(&p, "crash")?;
        // lastState is the most recent termination: the run that just crashed while the
        // container waits in back-off (run restartCount), else the run before the current one
        // (run restartCount-1).
        let backing_off = c
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"));
        if let Some(t) = c.last_state.as_ref().and_then(|l| l.terminated.as_ref()) {
            let run = if backing_off { c.restart_count } else { c.restart_count - 1 };
            starts.entry(run).or_insert(t.started_at.clone().unwrap().0);
            finishes.entry(run).or_insert(t.finished_at.clone().unwrap().0);
            assert_eq!(t.exit_code, 2);
        }
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref())
            && w.reason.as_deref() == Some("CrashLoopBackOff")
        {
            saw_backoff_message |= w.message.as_deref().unwrap_or("").starts_with("back-off ");
            assert_eq!(phase(&p), "Running", "a crash-looping pod stays Running");
        }
        if finishes.contains_key(&4) { Ok(()) } else { Err(format!("restartCount {}", c.restart_count)) }
    })
    .await;
    assert!(saw_backoff_message, "CrashLoopBackOff with a back-off message was never shown");
    // Gap between run i's end and run i+1's start: 0, 10, 20, 40 s (the first restart is
    // immediate, then the back-off doubles), to the second the API's timestamps carry.
    let expected = [0i64, 10, 20, 40];
    let gaps: Vec<(i32, i64)> =
        (0..4).filter_map(|i| Some((i, starts.get(&(i + 1))?.as_second() - finishes.get(&i)?.as_second()))).collect();
    assert!(gaps.len() >= 3, "runs seen: starts {starts:?} finishes {finishes:?}");
    for (i, gap) in &gaps {
        let want = expected[*i as usize];
        assert!((gap - want).abs() <= 2, "back-off gaps {gaps:?} (run, seconds), want {expected:?}");
    }
    let out = kubectl(&["get", "pod", "crash", "-n", &ns.name, "--no-headers"]);
    assert!(out.contains("CrashLoopBackOff") || out.contains("Error"), "{out}");

    // OnFailure with success ends Succeeded; Never with failure ends Failed, no restart.
    let spec = json!({ "restartPolicy": "OnFailure", "containers": [sh("ok", "exit 0")] });
    create_pod(&client, &ns.name, pod("onfailure-ok", &node, spec)).await;
    wait_phase(&client, &ns.name, "onfailure-ok", "Succeeded", LONG).await;
    let spec = json!({ "restartPolicy": "Never", "containers": [sh("bad", "exit 5")] });
    create_pod(&client, &ns.name, pod("never-bad", &node, spec)).await;
    let p = wait_phase(&client, &ns.name, "never-bad", "Failed", LONG).await;
    let c = container_status(&p, "bad");
    assert_eq!((c.restart_count, c.state.clone().unwrap().terminated.unwrap().exit_code), (0, 5));
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn a_job_completes() {
    let node = Node::up("job");
    let ns = Namespace::new("job");
    let job = format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {{ name: hello, namespace: {ns} }}
spec:
  backoffLimit: 0
  template:
    spec:
      nodeSelector: {{ kubernetes.io/hostname: {node} }}
      restartPolicy: Never
      containers:
        - name: hello
          image: /bin/sh
          command: ["/bin/sh", "-c", "echo hello from a job; sleep 1"]
"#,
        ns = ns.name,
        node = node.name
    );
    apply(&job);
    wait_for("the job to complete", LONG, async || {
        let out = kubectl_output(&["get", "job", "hello", "-n", &ns.name, "-o", "jsonpath={.status.succeeded}"]);
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        if s == "1" { Ok(()) } else { Err(format!("succeeded={s:?}")) }
    })
    .await;
    kubectl(&["wait", "--for=condition=Complete", "job/hello", "-n", &ns.name, "--timeout=30s"]);
    let pods = kubectl(&["get", "pods", "-n", &ns.name, "--no-headers"]);
    assert!(pods.contains("Completed"), "{pods}");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn a_deployment_scales_0_to_20_to_0() {
    let node = Node::up("deploy");
    let ns = Namespace::new("deploy");
    let deployment = |replicas: u32| {
        format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: web, namespace: {ns} }}
spec:
  replicas: {replicas}
  selector: {{ matchLabels: {{ app: web }} }}
  template:
    metadata: {{ labels: {{ app: web }} }}
    spec:
      nodeSelector: {{ kubernetes.io/hostname: {node} }}
      terminationGracePeriodSeconds: 5
      containers:
        - name: web
          image: /usr/bin/sleep
          args: ["infinity"]
"#,
            ns = ns.name,
            node = node.name
        )
    };
    apply(&deployment(0));
    apply(&deployment(20));
    let start = Instant::now();
    kubectl(&["rollout", "status", "deployment/web", "-n", &ns.name, "--timeout=120s"]);
    eprintln!("20 replicas available after {:.1}s", start.elapsed().as_secs_f64());
    let ready = kubectl(&["get", "deployment", "web", "-n", &ns.name, "-o", "jsonpath={.status.readyReplicas}"]);
    assert_eq!(ready, "20");
    assert_eq!(unit_files(&node).len(), 20);
    apply(&deployment(0));
    wait_for("all pods gone", LONG, async || {
        let out = kubectl(&["get", "pods", "-n", &ns.name, "--no-headers", "--ignore-not-found"]);
        let n = out.lines().filter(|l| !l.trim().is_empty()).count();
        if n == 0 { Ok(()) } else { Err(format!("{n} pods left")) }
    })
    .await;
    assert!(unit_files(&node).is_empty(), "{:?}", unit_files(&node));
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn deletion_is_graceful_and_force_deletion_works() {
    let node = Node::up("delete");
    let ns = Namespace::new("delete");
    let client = client().await;
    // Ignores SIGTERM: killed at the end of its 4 s grace period.
    let stubborn = json!({ "terminationGracePeriodSeconds": 4,
        "containers": [sh("c", "trap 'echo got TERM >> /run/stubborn.log' TERM; while :; do sleep 0.1; done")] });
    // Exits on SIGTERM: gone at once.
    let polite = json!({ "terminationGracePeriodSeconds": 30,
        "containers": [sh("c", "trap 'exit 0' TERM; while :; do sleep 0.1; done")] });
    for (n, s) in
        [("stubborn", stubborn), ("polite", polite), ("forced", json!({ "containers": [sh("c", "sleep 3600")] }))]
    {
        create_pod(&client, &ns.name, pod(n, &node, s)).await;
        wait_phase(&client, &ns.name, n, "Running", LONG).await;
    }
    let gone = async |name: &str| {
        wait_for(&format!("pod {name} gone"), LONG, async || match get_pod(&client, &ns.name, name).await {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        })
        .await
    };
    let t = Instant::now();
    delete_pod(&client, &ns.name, "stubborn", None).await;
    gone("stubborn").await;
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(3500) && took < within(Duration::from_secs(9)), "stubborn pod took {took:?}");
    assert_eq!(node.exec(&["cat", "/run/stubborn.log"]).trim(), "got TERM", "SIGTERM first, once");

    let t = Instant::now();
    delete_pod(&client, &ns.name, "polite", None).await;
    gone("polite").await;
    assert!(t.elapsed() < within(Duration::from_secs(3)), "polite pod took {:?}", t.elapsed());

    let unit = unit_name(&ns.name, "forced", "c");
    kubectl(&["delete", "pod", "forced", "-n", &ns.name, "--grace-period=0", "--force"]);
    assert!(get_pod(&client, &ns.name, "forced").await.is_none());
    wait_for("the force-deleted pod's unit to be removed", Duration::from_secs(15), async || {
        let files = unit_files(&node);
        if files.is_empty() && node.unit_prop(&unit, "ActiveState") == "inactive" {
            Ok(())
        } else {
            Err(format!("{files:?}"))
        }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn the_sweep_removes_units_of_vanished_pods_and_never_foreign_ones() {
    let node = Node::up("sweep");
    let ns = Namespace::new("sweep");
    let client = client().await;
    create_pod(&client, &ns.name, pod("vanishing", &node, json!({ "containers": [sh("c", "sleep 3600")] }))).await;
    create_pod(&client, &ns.name, pod("staying", &node, json!({ "containers": [sh("c", "sleep 3600")] }))).await;
    wait_phase(&client, &ns.name, "vanishing", "Running", LONG).await;
    wait_phase(&client, &ns.name, "staying", "Running", LONG).await;
    // A unit named like vks's but without its [X-Kubernetes] section: not vks's to touch.
    node.sh("printf '[Service]\\nExecStart=/usr/bin/sleep 3600\\n' > /run/systemd/system/vks.foreign.unit.c.service && systemctl start vks.foreign.unit.c.service");
    node.exec(&["systemctl", "stop", "vks"]);
    // The pod disappears from the API while vks is down.
    kubectl(&["delete", "pod", "vanishing", "-n", &ns.name, "--grace-period=0", "--force"]);
    let staying_pid = node.unit_prop(&unit_name(&ns.name, "staying", "c"), "MainPID");
    node.exec(&["systemctl", "start", "vks"]);
    let vanished = unit_name(&ns.name, "vanishing", "c");
    wait_for("the orphaned unit to be removed", Duration::from_secs(30), async || {
        if unit_files(&node).contains(&vanished) { Err(format!("{:?}", unit_files(&node))) } else { Ok(()) }
    })
    .await;
    assert_eq!(node.unit_prop(&vanished, "ActiveState"), "inactive");
    assert_eq!(node.unit_prop("vks.foreign.unit.c.service", "ActiveState"), "active");
    assert!(unit_files(&node).contains(&"vks.foreign.unit.c.service".to_owned()));
    assert_eq!(node.unit_prop(&unit_name(&ns.name, "staying", "c"), "MainPID"), staying_pid, "other pods untouched");
    node.exec(&["systemctl", "stop", "vks.foreign.unit.c.service"]);
}

/// MainPID and InvocationID of every vks unit on the node.
fn unit_runs(node: &Node) -> BTreeMap<String, (String, String)> {
    unit_files(node)
        .into_iter()
        .map(|u| {
            let run = (node.unit_prop(&u, "MainPID"), node.unit_prop(&u, "InvocationID"));
            (u, run)
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn restarting_or_killing_vks_leaves_running_pods_alone() {
    let node = Node::up("vks-restart");
    let ns = Namespace::new("vks-restart");
    let client = client().await;
    for i in 0..3 {
        let spec = json!({ "initContainers": [sh("init", "true")], "containers": [sh("a", "sleep 3600"), sh("b", "sleep 3600")] });
        create_pod(&client, &ns.name, pod(&format!("p{i}"), &node, spec)).await;
    }
    for i in 0..3 {
        wait_phase(&client, &ns.name, &format!("p{i}"), "Running", LONG).await;
    }
    let before = unit_runs(&node);
    assert_eq!(before.len(), 9);
    let all_running = async || {
        for i in 0..3 {
            let p = get_pod(&client, &ns.name, &format!("p{i}")).await.ok_or("gone")?;
            for c in ["a", "b"] {
                let s = try_container_status(&p, c)?;
                if !s.ready || s.restart_count != 0 {
                    return Err(format!("p{i}/{c}: {s:?}"));
                }
            }
        }
        Ok(())
    };

    // A clean restart.
    node.exec(&["systemctl", "restart", "vks"]);
    wait_for("pods to stay Running across a vks restart", Duration::from_secs(20), all_running).await;
    assert_eq!(unit_runs(&node), before, "no unit was restarted");

    // kill -9; systemd restarts vks (Restart=on-failure).
    let pid = node.unit_prop("vks", "MainPID");
    node.exec(&["kill", "-9", &pid]);
    wait_for("vks to be back", Duration::from_secs(30), async || {
        let (s, p) = (node.unit_prop("vks", "ActiveState"), node.unit_prop("vks", "MainPID"));
        if s == "active" && p != pid { Ok(()) } else { Err(format!("{s} {p}")) }
    })
    .await;
    wait_for("pods to stay Running across kill -9", Duration::from_secs(20), all_running).await;
    assert_eq!(unit_runs(&node), before, "no unit was restarted");

    // A container that exits while vks is down is restarted when vks returns.
    node.exec(&["systemctl", "stop", "vks"]);
    let unit_b = unit_name(&ns.name, "p0", "b");
    node.exec(&["systemctl", "kill", "-s", "SIGKILL", &unit_b]);
    node.exec(&["systemctl", "start", "vks"]);
    wait_for("p0/b restarted after vks returned", Duration::from_secs(20), async || {
        let p = get_pod(&client, &ns.name, "p0").await.ok_or("gone")?;
        let s = try_container_status(&p, "b")?;
        if s.ready && s.restart_count == 1 { Ok(()) } else { Err(format!("{s:?}")) }
    })
    .await;

    // kill -9 in the middle of creating pods: nothing duplicated, nothing lost.
    for i in 0..10 {
        create_pod(
            &client,
            &ns.name,
            pod(&format!("burst{i}"), &node, json!({ "containers": [sh("c", "sleep 3600")] })),
        )
        .await;
    }
    let pid = node.unit_prop("vks", "MainPID");
    node.exec(&["kill", "-9", &pid]);
    for i in 0..10 {
        let p = wait_phase(&client, &ns.name, &format!("burst{i}"), "Running", LONG).await;
        assert_eq!(container_status(&p, "c").restart_count, 0, "burst{i}");
    }
    let units = unit_files(&node);
    assert_eq!(units.len(), 9 + 10, "{units:?}");
    for i in 0..10 {
        // Started once: the run the API reports is the unit's only run.
        let u = unit_name(&ns.name, &format!("burst{i}"), "c");
        let p = get_pod(&client, &ns.name, &format!("burst{i}")).await.unwrap();
        let id = container_status(&p, "c").container_id.clone().unwrap();
        assert_eq!(id, format!("systemd://{}", node.unit_prop(&u, "InvocationID")));
        assert_eq!(node.unit_prop(&u, "NRestarts"), "0");
    }
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn pods_run_again_after_the_node_reboots() {
    let node = Node::up("reboot");
    let ns = Namespace::new("reboot");
    let client = client().await;
    let spec = json!({ "initContainers": [sh("init", "echo init >> /var/lib/reboot-init.log")], "containers": [sh("c", "sleep 3600")] });
    create_pod(&client, &ns.name, pod("survivor", &node, spec)).await;
    wait_phase(&client, &ns.name, "survivor", "Running", LONG).await;
    let done = json!({ "restartPolicy": "Never", "containers": [sh("c", "exit 0")] });
    create_pod(&client, &ns.name, pod("finished", &node, done)).await;
    wait_phase(&client, &ns.name, "finished", "Succeeded", LONG).await;
    let before = node.unit_prop(&unit_name(&ns.name, "survivor", "c"), "InvocationID");

    node.reboot();
    wait_for("the pod to run again after the reboot", LONG, async || {
        let p = get_pod(&client, &ns.name, "survivor").await.ok_or("gone")?;
        let c = try_container_status(&p, "c")?;
        if c.ready && c.restart_count == 1 && phase(&p) == "Running" { Ok(()) } else { Err(format!("{c:?}")) }
    })
    .await;
    let unit = unit_name(&ns.name, "survivor", "c");
    assert_eq!(node.unit_prop(&unit, "ActiveState"), "active");
    assert_ne!(node.unit_prop(&unit, "InvocationID"), before);
    assert_eq!(node.exec(&["cat", "/var/lib/reboot-init.log"]).lines().count(), 2, "init containers run again");
    // A pod that had finished stays finished: nothing is started for it.
    let p = get_pod(&client, &ns.name, "finished").await.unwrap();
    assert_eq!(phase(&p), "Succeeded");
    assert!(!unit_files(&node).contains(&unit_name(&ns.name, "finished", "c")));
}

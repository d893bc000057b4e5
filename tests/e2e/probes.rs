//! Probes, lifecycle hooks and the smaller kubelet behaviours, end to end (issue 12): a liveness
//! probe restarting a container (exec, in the container's context), a startup probe holding
//! liveness back, a readiness flip seen in a Service's EndpointSlice (on a node in its own
//! network namespace, since EndpointSlices refuse loopback addresses), postStart before Running
//! and preStop before the stop signal, termination messages, host aliases, pods for another OS,
//! activeDeadlineSeconds, and the Debian nginx package as a Deployment configured from a ConfigMap
//! (with its exposure score under the default hardening profile and without it).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::support::*;

const LONG: Duration = Duration::from_secs(90);

/// A pod pinned to `node`, without the service-account token volume (not this issue's part).
fn pod(name: &str, node: &Node, spec: serde_json::Value) -> serde_json::Value {
    let mut spec = spec;
    spec["nodeName"] = json!(node.name);
    spec["automountServiceAccountToken"] = json!(false);
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name, "labels": { "app": name } }, "spec": spec })
}

fn sh(name: &str, script: &str) -> serde_json::Value {
    json!({ "name": name, "image": "/bin/sh", "command": ["/bin/sh", "-c", script] })
}

fn exec(cmd: &[&str]) -> serde_json::Value {
    json!({ "command": cmd })
}

fn status_of<'a>(p: &'a Pod, name: &str) -> Result<&'a ContainerStatus, String> {
    let s = p.status.as_ref().ok_or("no status yet")?;
    s.container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == name)
        .ok_or_else(|| format!("no status for container {name} yet"))
}

fn condition(p: &Pod, t: &str) -> Option<String> {
    p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == t).map(|c| c.status.clone())
}

/// The events of pod `name`: (reason, message), oldest first.
async fn events(client: &kube::Client, ns: &str, name: &str) -> Vec<(String, String)> {
    let mut list: Vec<Event> = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .collect();
    list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0).or(e.first_timestamp.as_ref().map(|t| t.0)));
    list.into_iter().map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default())).collect()
}

async fn wait_event(client: &kube::Client, ns: &str, name: &str, reason: &str, message: &str) {
    wait_for(&format!("event {reason} {message:?} of pod {name}"), LONG, async || {
        let ev = events(client, ns, name).await;
        if ev.iter().any(|(r, m)| r == reason && m.starts_with(message)) { Ok(()) } else { Err(format!("{ev:?}")) }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn a_failing_liveness_probe_restarts_the_container_with_the_kubelets_events() {
    let node = Node::up("probe-liveness");
    let ns = Namespace::new("probe-liveness");
    let client = client().await;
    let flag = format!("/run/{}-alive", ns.name);
    // Alive for 4 s. The exec probe runs in the container's context: it sees the container's
    // environment (a probe without it would fail at once).
    let mut c = sh("app", &format!("touch {flag}; sleep 4; rm -f {flag}; exec sleep 3600"));
    c["env"] = json!([{ "name": "PROBE_CONTEXT", "value": "the container's" }]);
    c["livenessProbe"] = json!({
        "exec": exec(&["/bin/sh", "-c", &format!("test \"$PROBE_CONTEXT\" = \"the container's\" && test -e {flag}")]),
        "initialDelaySeconds": 1, "periodSeconds": 1, "failureThreshold": 2,
    });
    create_pod(&client, &ns.name, pod("live", &node, json!({ "containers": [c] }))).await;
    let p = wait_for("restartCount 1", LONG, async || {
        let p = get_pod(&client, &ns.name, "live").await.ok_or("gone")?;
        let c = status_of(&p, "app")?;
        if c.restart_count >= 1 { Ok(p) } else { Err(format!("{c:?}")) }
    })
    .await;
    let last = status_of(&p, "app").unwrap().last_state.clone().unwrap().terminated.unwrap();
    let lived = last.finished_at.clone().unwrap().0.as_second() - last.started_at.clone().unwrap().0.as_second();
    println!("liveness: first run lived {lived}s, ended with exit code {} (signal {:?})", last.exit_code, last.signal);
    assert!(lived >= 4, "killed after {lived}s: the probe failed while the container was alive");
    assert_eq!((last.exit_code, last.signal), (143, Some(15)), "{last:?}");
    wait_event(&client, &ns.name, "live", "Killing", "Container app failed liveness probe, will be restarted").await;
    let ev = events(&client, &ns.name, "live").await;
    assert!(ev.iter().any(|(r, m)| r == "Unhealthy" && m.starts_with("Liveness probe failed")), "{ev:?}");
    println!("liveness events: {ev:?}");
    // Exec probes ran as transient units in the node.
    assert!(node.sh("journalctl --no-pager -o cat | grep -c 'Started vks-probe-' || true").trim() != "0");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn a_startup_probe_holds_liveness_back() {
    let node = Node::up("probe-startup");
    let ns = Namespace::new("probe-startup");
    let client = client().await;
    let flag = format!("/run/{}-started", ns.name);
    let mut c = sh("app", &format!("rm -f {flag}; sleep 6; touch {flag}; exec sleep 3600"));
    c["startupProbe"] = json!({ "exec": exec(&["test", "-e", &flag]), "periodSeconds": 1, "failureThreshold": 60 });
    // Fails at once whenever it runs: only the startup probe keeps the container alive.
    c["livenessProbe"] = json!({ "exec": exec(&["false"]), "periodSeconds": 1, "failureThreshold": 1 });
    create_pod(&client, &ns.name, pod("slow", &node, json!({ "containers": [c] }))).await;
    let t0 = Instant::now();
    wait_phase(&client, &ns.name, "slow", "Running", LONG).await;
    hold_for("not started, not restarted, while the startup probe fails", Duration::from_secs(4), async || {
        let p = get_pod(&client, &ns.name, "slow").await.ok_or("gone")?;
        let c = status_of(&p, "app")?;
        if c.restart_count == 0
            && c.started == Some(false)
            && !c.ready
            && condition(&p, "Ready").as_deref() == Some("False")
        {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await;
    wait_event(&client, &ns.name, "slow", "Killing", "Container app failed liveness probe").await;
    // The event comes before the status shows the ended run.
    let last = wait_for("the killed run in lastState", LONG, async || {
        let p = get_pod(&client, &ns.name, "slow").await.ok_or("gone")?;
        let last = status_of(&p, "app")?.last_state.clone().and_then(|l| l.terminated);
        last.filter(|t| t.finished_at.is_some() && t.started_at.is_some()).ok_or_else(|| "no lastState yet".to_owned())
    })
    .await;
    let lived = Some(last.finished_at.unwrap().0.as_second() - last.started_at.unwrap().0.as_second());
    println!(
        "startup: liveness took over after the startup probe passed; first run lived {lived:?}s ({:?} since create)",
        t0.elapsed()
    );
    assert!(lived.is_some_and(|l| l >= 6), "the liveness probe ran before the startup probe passed: {lived:?}");
    let ev = events(&client, &ns.name, "slow").await;
    assert!(ev.iter().any(|(r, m)| r == "Unhealthy" && m.starts_with("Startup probe failed")), "{ev:?}");
}

/// The EndpointSlice endpoint of pod IP `ip` of Service `svc`: its `ready` condition.
fn endpoint_ready(ns: &str, svc: &str, ip: &str) -> Result<bool, String> {
    let out = kubectl_output(&[
        "get",
        "endpointslices",
        "-n",
        ns,
        "-l",
        &format!("kubernetes.io/service-name={svc}"),
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}"))?;
    for s in v["items"].as_array().into_iter().flatten() {
        for e in s["endpoints"].as_array().into_iter().flatten() {
            if e["addresses"].as_array().is_some_and(|a| a.iter().any(|x| x == ip)) {
                return Ok(e["conditions"]["ready"].as_bool().unwrap_or(false));
            }
        }
    }
    Err(format!("no endpoint {ip} in {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn a_readiness_flip_is_seen_in_the_endpoint_slice_of_a_service() {
    let node = Node::up_netns("probe-readiness");
    let ns = Namespace::new("probe-readiness");
    let client = client().await;
    let ip = node.ip();
    assert!(ip.starts_with("10.77.0."), "a netns node: {ip}");
    apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {}}}\n\
         spec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: http}}]}}\n",
        ns.name
    ));
    let dir = format!("/run/{}", ns.name);
    node.exec(&["mkdir", "-p", &dir]);
    // An HTTP server whose /ready answers 200 while the file exists, 404 otherwise.
    let c = json!({
        "name": "web", "image": "/usr/bin/python3",
        "command": ["/usr/bin/python3", "-m", "http.server", "8080", "--directory", dir],
        "ports": [{ "name": "http", "containerPort": 8080 }],
        "readinessProbe": { "httpGet": { "path": "/ready", "port": "http" }, "periodSeconds": 1, "failureThreshold": 1 },
    });
    create_pod(&client, &ns.name, pod("web", &node, json!({ "containers": [c] }))).await;
    let p = wait_phase(&client, &ns.name, "web", "Running", LONG).await;
    assert_eq!(p.status.as_ref().unwrap().pod_ip.as_deref(), Some(ip.as_str()));
    let want = |ready: bool| {
        let (ns, ip) = (ns.name.clone(), ip.clone());
        let client = client.clone();
        async move {
            let t = Instant::now();
            wait_for(&format!("endpoint ready={ready}"), LONG, async || {
                let p = get_pod(&client, &ns, "web").await.ok_or("gone")?;
                let pod_ready = condition(&p, "Ready").as_deref() == Some(if ready { "True" } else { "False" });
                match endpoint_ready(&ns, "web", &ip) {
                    Ok(r) if r == ready && pod_ready => Ok(()),
                    other => Err(format!("endpoint {other:?}, pod Ready {:?}", condition(&p, "Ready"))),
                }
            })
            .await;
            t.elapsed()
        }
    };
    let took = want(false).await;
    println!("readiness: endpoint {ip} listed not ready ({took:?})");
    node.exec(&["touch", &format!("{dir}/ready")]);
    let took = want(true).await;
    println!("readiness: file created, endpoint ready after {took:?}");
    node.exec(&["rm", &format!("{dir}/ready")]);
    let took = want(false).await;
    println!("readiness: file removed, endpoint not ready after {took:?}");
    // The pod answers on its address, seen from the hub (not from the root netns).
    let out = node.hub(&["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{ip}:8080/")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let p = get_pod(&client, &ns.name, "web").await.unwrap();
    assert_eq!(status_of(&p, "web").unwrap().restart_count, 0, "readiness restarts nothing");
    let ev = events(&client, &ns.name, "web").await;
    assert!(
        ev.iter()
            .any(|(r, m)| r == "Unhealthy" && m == "Readiness probe failed: HTTP probe failed with statuscode: 404"),
        "{ev:?}"
    );
}

/// Lines `<what> <nanoseconds>` of a log the containers and hooks append to.
fn log_times(node: &Node, path: &str) -> Vec<(String, u128)> {
    node.sh(&format!("cat {path} 2>/dev/null || true"))
        .lines()
        .filter_map(|l| l.split_once(' ').and_then(|(w, t)| Some((w.to_owned(), t.trim().parse().ok()?))))
        .collect()
}

fn at(log: &[(String, u128)], what: &str) -> u128 {
    log.iter().find(|(w, _)| w == what).map(|(_, t)| *t).unwrap_or_else(|| panic!("no {what} in {log:?}"))
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn post_start_runs_before_running_and_pre_stop_before_the_stop_signal() {
    let node = Node::up("probe-hooks");
    let ns = Namespace::new("probe-hooks");
    let client = client().await;
    let log = format!("/run/{}-hooks.log", ns.name);
    let stamp = |what: &str| format!("echo {what} $(date +%s%N) >> {log}");
    let mut a =
        sh("a", &format!("trap '{}; exit 0' TERM; {}; while :; do sleep 0.1; done", stamp("TERM"), stamp("main-a")));
    a["lifecycle"] = json!({
        "postStart": { "exec": exec(&["/bin/sh", "-c", &format!("sleep 3; {}", stamp("post-a"))]) },
        "preStop": { "exec": exec(&["/bin/sh", "-c", &format!("{}; sleep 3", stamp("prestop"))]) },
    });
    let b = sh("b", &format!("{}; exec sleep 3600", stamp("main-b")));
    create_pod(
        &client,
        &ns.name,
        pod("hooks", &node, json!({ "terminationGracePeriodSeconds": 20, "containers": [a, b] })),
    )
    .await;
    // While the hook runs, a's process runs but the API does not show it Running, and b waits.
    let seen = wait_for("a's process running, its hook not finished", LONG, async || {
        let l = log_times(&node, &log);
        let p = get_pod(&client, &ns.name, "hooks").await.ok_or("gone")?;
        let a = status_of(&p, "a")?;
        let waiting = a.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.clone());
        if l.iter().any(|(w, _)| w == "main-a") && !l.iter().any(|(w, _)| w == "post-a") {
            Ok(waiting)
        } else {
            Err(format!("log {l:?}"))
        }
    })
    .await;
    assert_eq!(seen.as_deref(), Some("ContainerCreating"));
    wait_phase(&client, &ns.name, "hooks", "Running", LONG).await;
    let l = wait_for("b started", LONG, async || {
        let l = log_times(&node, &log);
        if l.iter().any(|(w, _)| w == "main-b") { Ok(l) } else { Err(format!("{l:?}")) }
    })
    .await;
    println!("hooks: {l:?}");
    assert!(at(&l, "main-a") < at(&l, "post-a") && at(&l, "post-a") < at(&l, "main-b"), "{l:?}");
    delete_pod(&client, &ns.name, "hooks", None).await;
    wait_for("the pod object to be deleted", LONG, async || match get_pod(&client, &ns.name, "hooks").await {
        None => Ok(()),
        Some(_) => Err("still there".into()),
    })
    .await;
    let l = log_times(&node, &log);
    println!("hooks after deletion: {l:?}");
    let gap = (at(&l, "TERM") - at(&l, "prestop")) / 1_000_000;
    assert!(gap >= 2900, "SIGTERM {gap} ms after the preStop hook began (it takes 3 s): {l:?}");
    assert!(gap < 10_000, "{l:?}");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn termination_messages_host_aliases_and_other_operating_systems() {
    let node = Node::up("probe-messages");
    let ns = Namespace::new("probe-messages");
    let client = client().await;
    let custom = format!("/run/{}-custom-message", ns.name);
    let mut from_custom = sh("custom", &format!("printf 'custom path' > {custom}; exit 1"));
    from_custom["terminationMessagePath"] = json!(custom);
    let mut from_log = sh("log", "echo first line; echo 'fatal: no config'; exit 3");
    from_log["terminationMessagePolicy"] = json!("FallbackToLogsOnError");
    let mut quiet = sh("quiet", "echo all good; exit 0");
    quiet["terminationMessagePolicy"] = json!("FallbackToLogsOnError");
    let spec = json!({
        "restartPolicy": "Never",
        "hostAliases": [{ "ip": "10.1.2.3", "hostnames": ["db.local", "cache.local"] }],
        "containers": [sh("hosts", "cat /etc/hosts > /dev/termination-log"), from_custom, from_log, quiet],
    });
    create_pod(&client, &ns.name, pod("msg", &node, spec)).await;
    let p = wait_phase(&client, &ns.name, "msg", "Failed", LONG).await;
    let message =
        |c: &str| status_of(&p, c).unwrap().state.clone().unwrap().terminated.unwrap().message.unwrap_or_default();
    let hosts = message("hosts");
    println!("termination message of hosts:\n{hosts}");
    assert!(hosts.starts_with("# Kubernetes-managed hosts file (host network).\n"), "{hosts}");
    assert!(hosts.ends_with("# Entries added by HostAliases.\n10.1.2.3\tdb.local\tcache.local\n"), "{hosts}");
    assert_eq!(message("custom"), "custom path");
    assert_eq!(message("log"), "first line\nfatal: no config\n");
    assert_eq!(message("quiet"), "", "the log fallback is for errors only");
    println!("termination messages: custom {:?}, log {:?}", message("custom"), message("log"));

    // A pod for another operating system is rejected at admission, as by the kubelet.
    let spec = json!({ "os": { "name": "windows" }, "containers": [sh("c", "true")] });
    create_pod(&client, &ns.name, pod("win", &node, spec)).await;
    let p = wait_phase(&client, &ns.name, "win", "Failed", LONG).await;
    assert_eq!(p.status.as_ref().unwrap().reason.as_deref(), Some("PodOSNotSupported"));
    assert!(!node.sh("ls /run/systemd/system").contains(".win."), "no unit for a rejected pod");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn an_active_deadline_fails_the_pod_also_after_an_update() {
    let node = Node::up("probe-deadline");
    let ns = Namespace::new("probe-deadline");
    let client = client().await;
    let spec = |secs: i64| json!({ "activeDeadlineSeconds": secs, "containers": [sh("c", "exec sleep 3600")] });
    let t = Instant::now();
    create_pod(&client, &ns.name, pod("short", &node, spec(5))).await;
    let p = wait_phase(&client, &ns.name, "short", "Failed", LONG).await;
    let s = p.status.clone().unwrap();
    assert_eq!(s.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(s.message.as_deref(), Some("Pod was active on the node longer than the specified deadline"));
    println!("deadline: Failed/DeadlineExceeded {:?} after creation (deadline 5 s)", t.elapsed());
    assert!(t.elapsed() >= Duration::from_secs(4));
    wait_event(&client, &ns.name, "short", "DeadlineExceeded", "Pod was active on the node").await;
    wait_for("the container terminated", LONG, async || {
        let p = get_pod(&client, &ns.name, "short").await.ok_or("gone")?;
        let c = status_of(&p, "c")?;
        if c.state.as_ref().is_some_and(|s| s.terminated.is_some()) { Ok(()) } else { Err(format!("{c:?}")) }
    })
    .await;

    // Lowered on a running pod.
    create_pod(&client, &ns.name, pod("long", &node, spec(3600))).await;
    wait_phase(&client, &ns.name, "long", "Running", LONG).await;
    kubectl(&[
        "patch",
        "pod",
        "long",
        "-n",
        &ns.name,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"activeDeadlineSeconds":5}}"#,
    ]);
    let p = wait_phase(&client, &ns.name, "long", "Failed", LONG).await;
    assert_eq!(p.status.unwrap().reason.as_deref(), Some("DeadlineExceeded"));
}

/// The "real workload" of issue 12: the Debian nginx package as a Deployment whose nginx.conf comes
/// from a ConfigMap volume, with an httpGet readiness probe, answering on the node's address with
/// the ConfigMap's content — under the default hardening profile (issue 13). Next to it the same
/// nginx with the profile off (`vks.io/hardening: off`); both exposure scores are printed for
/// README's table, and the profile must lower the score.
#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn nginx_from_a_configmap_with_a_readiness_probe() {
    let node = Node::up("nginx-configmap");
    let ns = Namespace::new("nginx-configmap");
    let client = client().await;
    let ip = node.ip();
    let conf = |port: u16| {
        format!(
            "events {{}}\nhttp {{\n  server {{\n    listen {ip}:{port};\n    \
             location / {{ return 200 \"served by vks from a ConfigMap\\n\"; }}\n  }}\n}}\n"
        )
    };
    let template = |port: u16, config_map: &str| {
        json!({ "metadata": { "labels": { "app": "nginx" } }, "spec": {
            "nodeName": node.name,
            "automountServiceAccountToken": false,
            "containers": [{ "name": "nginx", "image": "nginx",
                "command": ["/usr/sbin/nginx", "-g", "daemon off;", "-c", "/etc/vks-nginx/nginx.conf"],
                "ports": [{ "name": "http", "containerPort": port }],
                "volumeMounts": [{ "name": "conf", "mountPath": "/etc/vks-nginx" }],
                "readinessProbe": { "httpGet": { "path": "/", "port": "http" }, "periodSeconds": 2 } }],
            "volumes": [{ "name": "conf", "configMap": { "name": config_map } }] } })
    };
    let mut open = template(8089, "nginx-conf-open");
    open["apiVersion"] = json!("v1");
    open["kind"] = json!("Pod");
    // Its own label: the Deployment's ReplicaSet would adopt a pod matching its selector.
    open["metadata"] = json!({ "name": "nginx-open", "namespace": ns.name, "labels": { "app": "nginx-open" },
                               "annotations": { "vks.io/hardening": "off" } });
    let manifest = json!({
        "apiVersion": "v1", "kind": "List", "items": [
            { "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "nginx-conf", "namespace": ns.name },
              "data": { "nginx.conf": conf(8088) } },
            { "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "nginx-conf-open", "namespace": ns.name },
              "data": { "nginx.conf": conf(8089) } },
            { "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "nginx", "namespace": ns.name },
              "spec": { "replicas": 1, "selector": { "matchLabels": { "app": "nginx" } },
                "template": template(8088, "nginx-conf") } },
            open,
        ] });
    apply(&manifest.to_string());
    let ready = wait_for("both nginx pods Ready", Duration::from_secs(300), async || {
        let pods: Vec<Pod> = Api::<Pod>::namespaced(client.clone(), &ns.name)
            .list(&ListParams::default().labels("app in (nginx, nginx-open)"))
            .await
            .map_err(|e| e.to_string())?
            .items;
        let ready: Vec<String> = pods
            .iter()
            .filter(|p| condition(p, "Ready").as_deref() == Some("True"))
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        if ready.len() == 2 { Ok(ready) } else { Err(format!("{} pods, ready: {ready:?}", pods.len())) }
    })
    .await;
    for port in [8088, 8089] {
        let out = node.exec_output(&["curl", "-s", &format!("http://{ip}:{port}/")]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "served by vks from a ConfigMap\n", "port {port}");
    }
    let mut score = Vec::new();
    for name in &ready {
        let ev = wait_for(&format!("the exposure event of {name}"), Duration::from_secs(120), async || {
            let ev = events(&client, &ns.name, name).await;
            ev.into_iter().find(|(r, _)| r == "SecurityExposure").ok_or("no SecurityExposure event yet".to_owned())
        })
        .await;
        eprintln!("{name}: {}", ev.1);
        let s: f64 = ev.1.split("exposure ").nth(1).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap();
        score.push((name.as_str() == "nginx-open", s));
    }
    let of = |open: bool| score.iter().find(|(o, _)| *o == open).map(|(_, s)| *s).unwrap();
    assert!(of(false) < of(true), "the default profile lowers nginx's exposure: {score:?}");
}

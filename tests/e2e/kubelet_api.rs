//! The kubelet API through the real API server, with the real kubectl: `kubectl logs` and its
//! options, logs of a re-created pod, `/stats/summary` and `/metrics/resource` as the API server
//! asks for them, and `kubectl top` with metrics-server.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::support::*;

const LONG: Duration = Duration::from_secs(60);

/// A pod pinned to `node`.
fn pod(name: &str, node: &Node, spec: serde_json::Value) -> serde_json::Value {
    let mut spec = spec;
    spec["nodeName"] = json!(node.name);
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name }, "spec": spec })
}

fn sh(name: &str, script: &str) -> serde_json::Value {
    json!({ "name": name, "image": "/bin/sh", "command": ["/bin/sh", "-c", script] })
}

/// `kubectl logs` in `ns` with `args`; panics unless it succeeds.
fn logs(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["logs", "-n", ns];
    all.extend_from_slice(args);
    kubectl(&all)
}

/// Seconds since the epoch of an RFC 3339 time with nanoseconds.
fn parse_ts(s: &str) -> f64 {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"));
    t.unix_timestamp_nanos() as f64 / 1e9
}

/// GET `path` of the node's kubelet API as the API server does: its kubelet client certificate,
/// the node's serving certificate verified with the cluster's server CA.
fn as_apiserver(node: &Node, path: &str) -> String {
    let pki = kubeconfig().parent().unwrap().join("pki");
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "20", "--cacert"])
        .arg(pki.join("server-ca.crt"))
        .arg("--cert")
        .arg(pki.join("apiserver-kubelet-client.crt"))
        .arg("--key")
        .arg(pki.join("apiserver-kubelet-client.key"))
        .arg(format!("https://{}:10250{path}", node.ip()))
        .output()
        .unwrap();
    assert!(out.status.success(), "GET {path}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn restart_count(p: &Pod, c: &str) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|v| v.iter().find(|s| s.name == c))
        .map_or(0, |s| s.restart_count)
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn kubectl_logs_honours_every_option() {
    let node = Node::up("logs-options");
    let ns = Namespace::new("logs-options");
    let client = client().await;
    // stdout and stderr alternate; the init container prints two known lines.
    let spec = json!({
        "initContainers": [sh("init", "echo init-out; echo init-err >&2")],
        "containers": [sh("app", "i=0; while true; do i=$((i+1)); echo \"out $i\"; echo \"err $i\" >&2; sleep 0.2; done")],
    });
    create_pod(&client, &ns.name, pod("talker", &node, spec)).await;
    wait_phase(&client, &ns.name, "talker", "Running", LONG).await;
    wait_for("40 lines of output", LONG, async || {
        let n = logs(&ns.name, &["talker", "-c", "app"]).lines().count();
        if n >= 40 { Ok(()) } else { Err(format!("{n} lines")) }
    })
    .await;

    // -c for an init container: exactly its lines.
    assert_eq!(logs(&ns.name, &["talker", "-c", "init"]), "init-out\ninit-err\n");

    // stdout and stderr both, in order.
    let all = logs(&ns.name, &["talker", "-c", "app"]);
    let lines: Vec<&str> = all.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let n = i / 2 + 1;
        let want = if i % 2 == 0 { format!("out {n}") } else { format!("err {n}") };
        assert_eq!(*l, want, "line {i} of\n{all}");
    }

    // --tail
    let tail = logs(&ns.name, &["talker", "-c", "app", "--tail", "3"]);
    assert_eq!(tail.lines().count(), 3, "{tail}");
    let last_n: u32 = tail.lines().last().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    assert!(last_n as usize >= lines.len() / 2, "{tail}");
    assert_eq!(logs(&ns.name, &["talker", "-c", "app", "--tail", "0"]), "");

    // --timestamps: RFC 3339 with nine fraction digits, UTC, non-decreasing.
    let stamped = logs(&ns.name, &["talker", "-c", "app", "--timestamps"]);
    let mut prev = 0.0;
    let mut stamps = Vec::new();
    for l in stamped.lines() {
        let (ts, msg) = l.split_once(' ').unwrap();
        assert_eq!(ts.len(), "2024-05-01T10:00:00.123456789Z".len(), "{l}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{l}");
        let t = parse_ts(ts);
        assert!(t >= prev, "timestamps go backwards: {l}");
        prev = t;
        stamps.push((ts.to_owned(), t, msg.to_owned()));
    }
    assert!(stamps.len() >= 40);

    // --since-time (kubectl sends whole seconds): exactly the lines at or after that second.
    let (cut_ts, _, _) = &stamps[stamps.len() / 2];
    let cut_sec = &cut_ts[..19];
    let since_time = format!("{cut_sec}Z");
    let cut = parse_ts(&since_time);
    let got = logs(&ns.name, &["talker", "-c", "app", "--timestamps", "--since-time", &since_time]);
    let first_got = got.lines().next().unwrap().split_once(' ').unwrap().1.to_owned();
    let want_first = stamps.iter().find(|(_, t, _)| *t >= cut).unwrap().2.clone();
    assert_eq!(first_got, want_first, "--since-time {since_time}:\n{got}");
    assert!(got.lines().all(|l| parse_ts(l.split_once(' ').unwrap().0) >= cut));

    // --since (seconds): only recent lines, fewer than all.
    let recent = logs(&ns.name, &["talker", "-c", "app", "--timestamps", "--since", "2s"]);
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9;
    assert!(!recent.is_empty() && recent.lines().count() < stamps.len(), "{recent}");
    for l in recent.lines() {
        assert!(parse_ts(l.split_once(' ').unwrap().0) >= now - 4.0, "--since 2s gave {l}");
    }

    // --limit-bytes cuts anywhere.
    let limited = logs(&ns.name, &["talker", "-c", "app", "--limit-bytes", "10"]);
    assert_eq!(limited, "out 1\nerr ");

    // -f: new lines keep coming.
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig())
        .args(["logs", "-n", &ns.name, "talker", "-c", "app", "-f", "--tail", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let start = Instant::now();
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let mut l = String::new();
        assert!(out.read_line(&mut l).unwrap() > 0, "kubectl logs -f ended after {seen:?}");
        seen.push(l.trim_end().to_owned());
    }
    let _ = child.kill();
    let _ = child.wait();
    let first: u32 = seen[0].split(' ').nth(1).unwrap().parse().unwrap();
    let last: u32 = seen[9].split(' ').nth(1).unwrap().parse().unwrap();
    assert!(last >= first + 4, "followed lines {seen:?}");
    assert!(start.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn logs_of_the_previous_run_and_a_follow_that_ends_with_the_container() {
    let node = Node::up("logs-previous");
    let ns = Namespace::new("logs-previous");
    let client = client().await;
    // Each run prints its PID (different per run) and fails ("$$$$" is "$$" after the API's
    // $(VAR) expansion).
    let spec = json!({ "containers": [sh("crash", "echo \"run $$$$\"; sleep 1; exit 3")] });
    create_pod(&client, &ns.name, pod("crasher", &node, spec)).await;
    wait_for("a restart", LONG, async || {
        let p = get_pod(&client, &ns.name, "crasher").await.ok_or("no pod")?;
        if restart_count(&p, "crash") >= 1 { Ok(()) } else { Err(format!("{:?}", p.status)) }
    })
    .await;
    let current = wait_for("the current run's line", LONG, async || {
        let out = kubectl_output(&["logs", "-n", &ns.name, "crasher"]);
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && s.starts_with("run ") { Ok(s) } else { Err(format!("{s:?}")) }
    })
    .await;
    let previous = logs(&ns.name, &["crasher", "--previous"]);
    assert_eq!(current.lines().count(), 1, "only the current run: {current:?}");
    assert_eq!(previous.lines().count(), 1, "only the previous run: {previous:?}");
    assert!(previous.starts_with("run ") && previous != current, "previous {previous:?}, current {current:?}");

    // A follow started before the container writes anything gets every line and ends when the
    // container exits.
    let spec = json!({
        "restartPolicy": "Never",
        "containers": [sh("short", "sleep 3; for i in 1 2 3; do echo \"n $i\"; sleep 0.5; done")]
    });
    create_pod(&client, &ns.name, pod("short", &node, spec)).await;
    wait_phase(&client, &ns.name, "short", "Running", LONG).await;
    let started = Instant::now();
    let out = kubectl(&["logs", "-n", &ns.name, "short", "-f"]);
    assert_eq!(out, "n 1\nn 2\nn 3\n");
    assert!(started.elapsed() < Duration::from_secs(30), "the follow ended {:?} after it began", started.elapsed());
    // No previous run.
    let none = kubectl_output(&["logs", "-n", &ns.name, "short", "--previous"]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("previous terminated container"), "{none:?}");
}

/// Runs that end at once: journald may read their lines after the unit stopped, without the
/// run's invocation ID (a container printing and exiting in a crash loop lost them all before
/// vks read such lines by their window). They are still the run's lines, and only its.
#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn logs_of_runs_that_end_at_once() {
    let node = Node::up("logs-instant");
    let ns = Namespace::new("logs-instant");
    let client = client().await;
    let spec = json!({ "restartPolicy": "Never", "automountServiceAccountToken": false,
                       "containers": [sh("c", "echo one; echo two; exit 3")] });
    create_pod(&client, &ns.name, pod("instant", &node, spec)).await;
    wait_phase(&client, &ns.name, "instant", "Failed", LONG).await;
    assert_eq!(logs(&ns.name, &["instant"]), "one\ntwo\n");
    assert_eq!(logs(&ns.name, &["instant", "--tail=1"]), "two\n", "the tail of a run that ended");
    let spec = json!({ "containers": [sh("quick", "echo \"run $$$$\"; echo \"end $$$$\"; exit 3")] });
    create_pod(&client, &ns.name, pod("quick", &node, spec)).await;
    wait_for("two restarts", LONG, async || {
        let p = get_pod(&client, &ns.name, "quick").await.ok_or("no pod")?;
        if restart_count(&p, "quick") >= 2 { Ok(()) } else { Err(format!("{:?}", p.status)) }
    })
    .await;
    for args in [&["quick"][..], &["quick", "--previous"]] {
        let out = logs(&ns.name, args);
        let lines: Vec<&str> = out.lines().collect();
        let pid = lines.first().and_then(|l| l.strip_prefix("run ")).unwrap_or("?");
        assert_eq!(lines, [format!("run {pid}"), format!("end {pid}")], "kubectl logs {args:?}: one whole run");
    }
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn a_recreated_pod_shows_only_its_own_lines() {
    let node = Node::up("logs-recreate");
    let ns = Namespace::new("logs-recreate");
    let client = client().await;
    let spec = |word: &str| json!({ "containers": [sh("c", &format!("echo {word}; exec sleep 3600"))] });
    create_pod(&client, &ns.name, pod("same", &node, spec("first-pod"))).await;
    wait_phase(&client, &ns.name, "same", "Running", LONG).await;
    wait_for("the first pod's line", LONG, async || {
        let s = logs(&ns.name, &["same"]);
        if s == "first-pod\n" { Ok(()) } else { Err(s) }
    })
    .await;
    delete_pod(&client, &ns.name, "same", Some(0)).await;
    wait_for("the pod gone", LONG, async || match get_pod(&client, &ns.name, "same").await {
        None => Ok(()),
        Some(_) => Err("still there".into()),
    })
    .await;
    create_pod(&client, &ns.name, pod("same", &node, spec("second-pod"))).await;
    wait_phase(&client, &ns.name, "same", "Running", LONG).await;
    wait_for("the second pod's line", LONG, async || {
        let s = logs(&ns.name, &["same"]);
        if s == "second-pod\n" { Ok(()) } else { Err(s) }
    })
    .await;
    // The unit name is the same for both pods: the journal holds both, the API shows one.
    let unit = unit_name(&ns.name, "same", "c");
    let journal = node.exec(&["journalctl", "-u", &unit, "-o", "cat", "--no-pager"]);
    assert!(journal.contains("first-pod") && journal.contains("second-pod"), "{journal}");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn stats_resource_metrics_and_kubectl_top() {
    let node = Node::up("stats-top");
    let ns = Namespace::new("stats-top");
    let client = client().await;
    // Burns some CPU and holds some memory.
    let spec = json!({ "containers": [
        sh("busy", "head -c 20000000 /dev/zero | tail -c 10000000 > /dev/null & while true; do :; done"),
        { "name": "idle", "image": "/usr/bin/sleep", "args": ["3600"] }
    ]});
    let created = create_pod(&client, &ns.name, pod("load", &node, spec)).await;
    let uid = created.metadata.uid.clone().unwrap();
    wait_phase(&client, &ns.name, "load", "Running", LONG).await;

    // The API server's node proxy (`kubectl get --raw /api/v1/nodes/<n>/proxy/...`) refuses
    // nodes whose address is not global unicast, and the test nodes use 127.0.1.x: ask the
    // kubelet API directly with the certificate the API server (and so the node proxy) uses.
    let proxied = kubectl_output(&["get", "--raw", &format!("/api/v1/nodes/{}/proxy/stats/summary", node.name)]);
    assert!(String::from_utf8_lossy(&proxied.stderr).contains("address not allowed"), "{proxied:?}");
    let summary: serde_json::Value = wait_for("the pod in /stats/summary", LONG, async || {
        let raw = as_apiserver(&node, "/stats/summary");
        let v: serde_json::Value = serde_json::from_str(&raw).map_err(|e| format!("{e}: {raw}"))?;
        let found = v["pods"].as_array().is_some_and(|p| p.iter().any(|p| p["podRef"]["name"] == "load"));
        if found { Ok(v) } else { Err(raw) }
    })
    .await;
    assert_eq!(summary["node"]["nodeName"], node.name.as_str());
    assert!(summary["node"]["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0);
    assert!(summary["node"]["memory"]["workingSetBytes"].as_u64().unwrap() > 0);
    assert!(summary["node"]["fs"]["capacityBytes"].as_u64().unwrap() > 0);
    let p = summary["pods"].as_array().unwrap().iter().find(|p| p["podRef"]["name"] == "load").unwrap();
    assert_eq!(p["podRef"], json!({ "name": "load", "namespace": ns.name, "uid": uid }));
    let mut names: Vec<&str> =
        p["containers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["busy", "idle"]);
    for c in p["containers"].as_array().unwrap() {
        assert!(c["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0, "{c}");
        assert!(c["memory"]["workingSetBytes"].as_u64().unwrap() > 0, "{c}");
        assert!(c["startTime"].as_str().unwrap().ends_with('Z'), "{c}");
    }
    assert!(p["process_stats"]["process_count"].as_u64().unwrap() >= 2, "{p}");

    let metrics = as_apiserver(&node, "/metrics/resource");
    let want =
        format!("container_cpu_usage_seconds_total{{container=\"busy\",namespace=\"{}\",pod=\"load\"}} ", ns.name);
    assert!(metrics.lines().any(|l| l.starts_with(&want)), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("node_memory_working_set_bytes ")), "{metrics}");

    // kubectl top, through metrics-server (15 s resolution: a few scrapes).
    let top = wait_for("kubectl top pod", Duration::from_secs(120), async || {
        let out = kubectl_output(&["top", "pod", "-n", &ns.name, "--containers"]);
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && s.contains("busy") {
            Ok(s)
        } else {
            Err(format!("{s}{}", String::from_utf8_lossy(&out.stderr)))
        }
    })
    .await;
    let busy = top.lines().find(|l| l.contains("busy")).unwrap();
    let millicores: u64 = busy.split_whitespace().nth(2).unwrap().trim_end_matches('m').parse().unwrap();
    assert!(millicores >= 100, "a busy loop uses at least 0.1 CPU: {top}");
    let top_node = wait_for("kubectl top node", Duration::from_secs(120), async || {
        let out = kubectl_output(&["top", "node", &node.name]);
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && s.contains(&node.name) {
            Ok(s)
        } else {
            Err(format!("{s}{}", String::from_utf8_lossy(&out.stderr)))
        }
    })
    .await;
    assert!(top_node.lines().nth(1).unwrap().contains('%'), "{top_node}");
}

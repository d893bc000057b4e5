//! End-to-end tests that disturb the whole cluster (they stop the API server), so `tests/run`
//! runs them alone, after the parallel suite in `tests/e2e/`.

// These tests measure real elapsed time against real processes: std's clock is the right one.
#![allow(clippy::disallowed_methods)]

#[path = "../e2e/support.rs"]
mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node as K8sNode;
use kube::api::Api;
use support::*;

fn apiserver_pid() -> u32 {
    let root = std::env::var("VKS_TEST_ROOT").unwrap_or_else(|_| "/var/tmp/vks-test".into());
    let p = format!("{root}/cluster/run/kube-apiserver.pid");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}")).trim().parse().unwrap()
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes, and stops the API server: run tests/run"]
async fn api_server_outage_of_60s_is_survived_and_recovered_from() {
    let node = Node::up("outage");
    let pid_before = node.unit_prop("vks", "MainPID");
    let pid = apiserver_pid();
    // SIGKILL: the API server vanishes without a goodbye, as on a crash or a network cut.
    assert!(std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    let down_at = Instant::now();

    hold_for("vks running through a 60 s API server outage", Duration::from_secs(60), async || {
        let (state, main) = (node.unit_prop("vks", "ActiveState"), node.unit_prop("vks", "MainPID"));
        if state == "active" && main == pid_before { Ok(()) } else { Err(format!("state {state}, MainPID {main}")) }
    })
    .await;
    assert!(down_at.elapsed() >= Duration::from_secs(60));
    let log = node.vks_journal();
    assert_eq!(
        log.matches("API server unreachable").count(),
        1,
        "one line when the outage starts, not per retry:\n{log}"
    );

    check(std::process::Command::new(repo().join("k3s/cluster")).arg("up"));
    let back = Instant::now();
    let back_wall = k8s_openapi::jiff::Timestamp::now();
    let client = client().await;
    // Heartbeats go to the Lease (conditions' heartbeat times only move every 5 minutes, as
    // with the kubelet): Ready again = Ready condition True and a Lease renewed since the return.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    wait_for("the node to be Ready again with a renewed Lease", Duration::from_secs(20), async || {
        let n = Api::<K8sNode>::all(client.clone()).get(&node.name).await.map_err(|e| e.to_string())?;
        let ready = n.status.and_then(|s| s.conditions).and_then(|c| c.into_iter().find(|c| c.type_ == "Ready"));
        let lease = leases.get(&node.name).await.map_err(|e| e.to_string())?;
        let renewed = lease.spec.and_then(|s| s.renew_time).map(|t| t.0);
        match (ready, renewed) {
            (Some(c), Some(r)) if c.status == "True" && r >= back_wall => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let out = kubectl(&["get", "node", &node.name, "--no-headers"]);
    assert!(out.split_whitespace().nth(1) == Some("Ready"), "{out}");
    eprintln!("node Ready again {:.1}s after the API server returned", back.elapsed().as_secs_f64());
    assert_eq!(node.unit_prop("vks", "MainPID"), pid_before, "vks never restarted");
    assert_eq!(node.unit_prop("vks", "NRestarts"), "0");
    let log = node.vks_journal();
    assert_eq!(log.matches("API server reachable again").count(), 1, "{log}");
}

fn supervisor_pid() -> u32 {
    let root = std::env::var("VKS_TEST_ROOT").unwrap_or_else(|_| "/var/tmp/vks-test".into());
    let p = format!("{root}/cluster/run/supervisor.pid");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}")).trim().parse().unwrap()
}

/// The numbers a `kubectl logs -f` child printed so far (the pod prints one per line).
fn numbers(out: &std::sync::Mutex<String>) -> Vec<u64> {
    out.lock().unwrap().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Runs `kubectl logs -f` in the background; its stdout collects into the returned buffer.
fn follow(ns: &str, pod: &str) -> (std::process::Child, std::sync::Arc<std::sync::Mutex<String>>) {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig())
        .args(["-n", ns, "logs", "-f", pod, "--tail=1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let buf = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (stdout, sink) = (child.stdout.take().unwrap(), buf.clone());
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut b = sink.lock().unwrap();
            b.push_str(&line);
            b.push('\n');
        }
    });
    (child, buf)
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes, and stops the k3s supervisor: run tests/run"]
async fn kubectl_logs_follow_is_reissued_through_a_reopened_tunnel() {
    // A node in its own network namespace: the API server reaches its kubelet API only through
    // the node's tunnel to the supervisor (egress selector), never directly.
    let node = Node::up_netns("tunnel-follow");
    let client = client().await;
    let ns = Namespace::new("tunnel-follow");
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "count" },
        "spec": { "nodeName": node.name, "containers": [{ "name": "main", "image": "/bin/sh",
            "command": ["/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo $i; sleep 0.2; done"] }] }
    });
    create_pod(&client, &ns.name, pod).await;
    wait_phase(&client, &ns.name, "count", "Running", within(Duration::from_secs(60))).await;
    let vks_pid = node.unit_prop("vks", "MainPID");
    // The API server's node proxy reaches the node the same way (its address, 10.77.0.K, is one
    // the proxy accepts, unlike the loopback addresses of the other test nodes).
    let summary = wait_for("stats/summary through the node proxy", within(Duration::from_secs(30)), async || {
        let out = kubectl_output(&["get", "--raw", &format!("/api/v1/nodes/{}/proxy/stats/summary", node.name)]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains("\"count\"") {
            Ok(text)
        } else {
            Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
        }
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(v["node"]["nodeName"], node.name.as_str());

    let (mut first, out) = follow(&ns.name, "count");
    let seen = wait_for("lines through the tunnel", within(Duration::from_secs(30)), async || {
        let n = numbers(&out);
        if n.len() >= 3 { Ok(n) } else { Err(format!("{n:?}")) }
    })
    .await;
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "in order, none lost: {seen:?}");

    // The supervisor vanishes: the tunnel and the stream through it break.
    let pid = supervisor_pid();
    assert!(std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    wait_for("kubectl logs -f to end with the tunnel", within(Duration::from_secs(60)), async || {
        match first.try_wait().unwrap() {
            Some(_) => Ok(()),
            None => Err("still following".to_owned()),
        }
    })
    .await;
    let last_before = numbers(&out).last().copied().unwrap_or(0);

    // The supervisor returns; vks reopens its tunnel; the re-issued follow streams again and
    // continues where the container is now (the container ran on meanwhile).
    check(std::process::Command::new(repo().join("k3s/cluster")).arg("up"));
    wait_for("vks to reopen its tunnel", within(Duration::from_secs(90)), async || {
        let opened =
            node.vks_journal().lines().filter(|l| l.starts_with("tunnel to ") && l.contains(" connected")).count();
        if opened >= 2 { Ok(()) } else { Err(format!("{opened} connections")) }
    })
    .await;
    let (mut second, out2) =
        wait_for("a follow through the reopened tunnel", within(Duration::from_secs(60)), async || {
            let (mut c, o) = follow(&ns.name, "count");
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if numbers(&o).len() >= 3 {
                    return Ok((c, o));
                }
                if c.try_wait().unwrap().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = c.kill();
            let _ = c.wait();
            Err(format!("got {:?}", numbers(&o)))
        })
        .await;
    let after = numbers(&out2);
    assert!(after[0] > last_before, "the new follow starts at the container's present: {after:?} after {last_before}");
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "{after:?}");
    let _ = second.kill();
    let _ = second.wait();
    // exec goes through the same tunnel.
    let said = kubectl(&["-n", &ns.name, "exec", "count", "--", "/bin/echo", "through-the-tunnel"]);
    assert_eq!(said.trim(), "through-the-tunnel");
    assert_eq!(node.unit_prop("vks", "MainPID"), vks_pid, "vks kept running");
}

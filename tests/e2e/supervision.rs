//! Supervision end to end: D-Bus restarting under a running vks, and faults injected into the
//! pod manager of a fault-injection build (`failpoints` feature) — vks must recover, or restart
//! and report the node NotReady meanwhile, never stay a Ready node that ignores its pods.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::support::*;

const LONG: Duration = Duration::from_secs(90);

fn sleeper(node: &Node) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "sleeper" },
        "spec": { "nodeName": node.name, "automountServiceAccountToken": false,
                  "containers": [{ "name": "c", "image": "/usr/bin/sleep", "args": ["3600"] }] }
    })
}

fn restarts_and_id(p: &Pod) -> (i32, String, bool) {
    let c = p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).and_then(|l| l.first());
    c.map(|c| {
        let running = c.state.as_ref().is_some_and(|s| s.running.is_some());
        (c.restart_count, c.container_id.clone().unwrap_or_default(), running)
    })
    .unwrap_or_default()
}

/// Kills the container's process and waits until the API shows it restarted by vks.
async fn crash_and_see_the_restart(node: &Node, client: &kube::Client, ns: &str) {
    let unit = unit_name(ns, "sleeper", "c");
    let before = restarts_and_id(&get_pod(client, ns, "sleeper").await.unwrap());
    let pid = node.unit_prop(&unit, "MainPID");
    node.exec(&["kill", "-9", &pid]);
    wait_for("the container restarted, as the API shows", LONG, async || {
        let now = restarts_and_id(&get_pod(client, ns, "sleeper").await.ok_or("no pod")?);
        if now.0 == before.0 + 1 && now.2 && now.1 != before.1 {
            Ok(())
        } else {
            Err(format!("{now:?} (before {before:?})"))
        }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn restarting_dbus_under_vks_keeps_the_pods_followed() {
    let node = Node::up("dbus-restart");
    let ns = Namespace::new("dbus-restart");
    let client = client().await;
    create_pod(&client, &ns.name, sleeper(&node)).await;
    wait_phase(&client, &ns.name, "sleeper", "Running", LONG).await;
    let vks_pid = node.unit_prop("vks", "MainPID");
    let unit = unit_name(&ns.name, "sleeper", "c");
    let container_pid = node.unit_prop(&unit, "MainPID");

    node.exec(&["systemctl", "restart", "dbus"]);
    wait_for("vks to reconnect to systemd", LONG, async || {
        let j = node.vks_journal();
        if j.contains("reconnected to systemd over D-Bus") { Ok(()) } else { Err("not yet".into()) }
    })
    .await;
    assert_eq!(node.unit_prop("vks", "MainPID"), vks_pid, "vks survived the D-Bus restart");
    assert_eq!(node.unit_prop("vks", "NRestarts"), "0");
    assert_eq!(node.unit_prop(&unit, "MainPID"), container_pid, "the container was not touched");
    // The status still follows systemd: a crash after the reconnection is seen and restarted.
    crash_and_see_the_restart(&node, &client, &ns.name).await;
    assert_eq!(node.ready(&client).await.0, "True");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn a_pod_manager_that_ends_restarts_vks_and_the_node_is_not_ready_meanwhile() {
    let node = Node::up("pm-exit");
    let ns = Namespace::new("pm-exit");
    let client = client().await;
    create_pod(&client, &ns.name, sleeper(&node)).await;
    wait_phase(&client, &ns.name, "sleeper", "Running", LONG).await;
    let unit = unit_name(&ns.name, "sleeper", "c");
    let container_pid = node.unit_prop(&unit, "MainPID");

    node.run_vks_with_failpoints("pod-manager-exit=return", 60);
    wait_for("vks to exit and be restarted by systemd", LONG, async || {
        let restarts: u32 = node.unit_prop("vks", "NRestarts").parse().unwrap_or(0);
        if restarts >= 2 { Ok(()) } else { Err(format!("NRestarts {restarts}")) }
    })
    .await;
    let journal = node.vks_journal();
    assert!(journal.contains("the pod manager loop ended unexpectedly"), "{journal}");
    // vks exits before it posts a status (the pod manager starts first), so the node controller
    // marks the node Unknown ("Kubelet stopped posting node status"); either way not Ready.
    wait_for("the node to be NotReady", LONG, async || {
        let (status, message) = node.ready(&client).await;
        if status == "False" || status == "Unknown" { Ok(()) } else { Err(format!("Ready={status} {message}")) }
    })
    .await;
    assert_eq!(node.unit_prop(&unit, "MainPID"), container_pid, "the pod kept running");

    node.clear_vks_override();
    wait_for("the node to be Ready again", LONG, async || {
        let (status, message) = node.ready(&client).await;
        if status == "True" { Ok(()) } else { Err(format!("Ready={status} {message}")) }
    })
    .await;
    assert_eq!(node.unit_prop(&unit, "MainPID"), container_pid, "adopted untouched");
    crash_and_see_the_restart(&node, &client, &ns.name).await;
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn a_stalled_pod_manager_starves_the_watchdog_and_vks_is_restarted() {
    let node = Node::up("pm-stall");
    let ns = Namespace::new("pm-stall");
    let client = client().await;
    create_pod(&client, &ns.name, sleeper(&node)).await;
    wait_phase(&client, &ns.name, "sleeper", "Running", LONG).await;
    let unit = unit_name(&ns.name, "sleeper", "c");
    let container_pid = node.unit_prop(&unit, "MainPID");

    // The pod manager hangs once it is running (its other loops go on); its heartbeat limit is
    // 30 s, then the watchdog pings stop and systemd kills vks after WatchdogSec (10 s).
    node.run_vks_with_failpoints("pod-manager-stall=return", 10);
    wait_for("the node to be NotReady", LONG, async || {
        let (status, message) = node.ready(&client).await;
        if status == "False" { Ok(()) } else { Err(format!("Ready={status} {message}")) }
    })
    .await;
    wait_for("systemd to kill vks for the watchdog and restart it", Duration::from_secs(150), async || {
        let restarts: u32 = node.unit_prop("vks", "NRestarts").parse().unwrap_or(0);
        if restarts >= 1 { Ok(()) } else { Err(format!("NRestarts {restarts}")) }
    })
    .await;
    let system = node.exec(&["journalctl", "--no-pager", "-o", "cat"]);
    assert!(system.contains("vks.service: Watchdog timeout"), "systemd's watchdog fired");
    assert!(node.vks_journal().contains("no progress in pod manager"));
    assert_eq!(node.unit_prop(&unit, "MainPID"), container_pid, "the pod kept running");
    node.clear_vks_override();
    wait_for("the node to be Ready again", LONG, async || {
        let (status, message) = node.ready(&client).await;
        if status == "True" { Ok(()) } else { Err(format!("Ready={status} {message}")) }
    })
    .await;
    crash_and_see_the_restart(&node, &client, &ns.name).await;
}

//! End-to-end tests that disturb the whole cluster (they stop the API server), so `tests/run`
//! runs them alone, after the parallel suite in `tests/e2e/`.

// These tests measure real elapsed time against real processes: std's clock is the right one.
#![allow(clippy::disallowed_methods)]

#[path = "../e2e/support.rs"]
mod support;

mod chaos;

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

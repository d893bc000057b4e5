//! Upgrading vks in place (issue 9): `apt install ./vks_<newer>.deb` on a node with running pods
//! leaves every pod running untouched (same main PID, no restart) and the operator's edited
//! config conffile as it was, and the new vks takes over.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn upgrading_the_package_leaves_pods_and_the_edited_config_alone() {
    let newer =
        std::env::var("VKS_DEB_UPGRADE").expect("VKS_DEB_UPGRADE: a newer-versioned vks .deb (tests/run builds it)");
    let node = Node::up("upgrade");
    let ns = Namespace::new("upgrade");
    let client = client().await;
    for name in ["a", "b"] {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name },
            "spec": { "nodeName": node.name, "automountServiceAccountToken": false,
                      "containers": [{ "name": "c", "image": "/usr/bin/sleep", "args": ["3600"] }] }
        });
        create_pod(&client, &ns.name, pod).await;
    }
    for name in ["a", "b"] {
        wait_phase(&client, &ns.name, name, "Running", Duration::from_secs(60)).await;
    }
    let units: Vec<String> = ["a", "b"].iter().map(|p| unit_name(&ns.name, p, "c")).collect();
    let pids: Vec<String> = units.iter().map(|u| node.unit_prop(u, "MainPID")).collect();
    let before = node.exec(&["dpkg-query", "-W", "-f", "${Version}", "vks"]);
    let vks_started = node.unit_prop("vks", "ExecMainStartTimestampMonotonic");

    // The operator edits the conffile.
    node.sh("printf '\\n# edited by the operator\\n' >> /etc/vks/config.toml");
    let edited = node.config();

    let data = std::fs::read(&newer).unwrap_or_else(|e| panic!("reading {newer}: {e}"));
    node.put_file("/tmp/vks-newer.deb", &data);
    let out = node.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/vks-newer.deb 2>&1");
    let after = node.exec(&["dpkg-query", "-W", "-f", "${Version}", "vks"]);
    assert_ne!(before, after, "the newer package is installed:\n{out}");
    assert_eq!(node.config(), edited, "the edited conffile is kept:\n{out}");

    wait_for("the new vks to run and the node to be Ready", Duration::from_secs(90), async || {
        let restarted = node.unit_prop("vks", "ExecMainStartTimestampMonotonic") != vks_started;
        let active = node.unit_prop("vks", "ActiveState") == "active";
        let (ready, msg) = node.ready(&client).await;
        if restarted && active && ready == "True" {
            Ok(())
        } else {
            Err(format!("restarted {restarted}, active {active}, Ready={ready} {msg}"))
        }
    })
    .await;
    // The pods were never touched, and the new vks adopted them.
    hold_for("the pods to stay untouched", Duration::from_secs(10), async || {
        for (u, pid) in units.iter().zip(&pids) {
            let now = node.unit_prop(u, "MainPID");
            if &now != pid {
                return Err(format!("{u}: MainPID {pid} -> {now}"));
            }
        }
        for name in ["a", "b"] {
            let p = get_pod(&client, &ns.name, name).await.ok_or("gone")?;
            let c = &p.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default()[0];
            if c.restart_count != 0 || c.state.as_ref().and_then(|s| s.running.as_ref()).is_none() {
                return Err(format!("{name}: {c:?}"));
            }
        }
        Ok(())
    })
    .await;
}

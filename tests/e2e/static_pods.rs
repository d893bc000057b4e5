//! Static pods end to end, on real systemd nodes: standalone (no cluster configured, vks makes
//! no API call and opens no TCP socket) — manifests added, changed, broken and removed, vks
//! restarted, `vks pods` and `vks logs`; the package's README path (apt install, uptimed.yaml,
//! enable --now, `vks pods` shows it Running); and with the test cluster, mirror pods appearing,
//! tracking status and coming back when deleted.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// Boots a node with vks installed but no cluster configured (`VKS_NODE_STANDALONE=1`: the
/// package's own config; `VKS_NODE_INSTALL=copy` copies `VKS_BIN` instead).
fn standalone_node(test: &str) -> Node {
    let name = node_name(test);
    let out = Command::new(repo().join("k3s/node"))
        .args(["up", &name])
        .env("VKS_NODE_STANDALONE", "1")
        .env("VKS_NODE_OWNER", std::process::id().to_string())
        .output()
        .expect("k3s/node");
    let node = Node { name };
    assert!(out.status.success(), "k3s/node up {} failed:\n{}", node.name, String::from_utf8_lossy(&out.stderr));
    node
}

fn pod_manifest(name: &str, greeting: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  \
         - name: main\n    image: /bin/sh\n    command: [\"/bin/sh\", \"-c\", \"echo {greeting}; exec sleep 3600\"]\n"
    )
}

/// `vks pods` in the node.
fn vks_pods(node: &Node) -> String {
    node.exec(&["vks", "pods"])
}

/// The line of `vks pods` about `pod`, if any.
fn pod_line(node: &Node, pod: &str) -> Option<String> {
    vks_pods(node).lines().find(|l| l.split_whitespace().nth(1) == Some(pod)).map(str::to_owned)
}

async fn wait_running(node: &Node, pod: &str, timeout: Duration) -> String {
    wait_for(&format!("{pod} Running in vks pods"), timeout, async || match pod_line(node, pod) {
        Some(l) if l.split_whitespace().nth(3) == Some("Running") => Ok(l),
        other => Err(format!("{other:?}\n{}", vks_pods(node))),
    })
    .await
}

fn main_pid(node: &Node, unit: &str) -> String {
    node.unit_prop(unit, "MainPID")
}

#[tokio::test]
#[ignore = "needs a systemd test node (k3s/node)"]
async fn standalone_manifests_come_change_break_and_go() {
    let node = standalone_node("static-standalone");
    let pod = format!("web-{}", node.name);
    let unit = unit_name("default", &pod, "main");
    let journal = node.vks_journal();
    assert!(journal.contains("standalone (no [cluster] configured: static pods only)"), "{journal}");

    // Added: running within a few seconds (the image is a path: nothing to install).
    node.put_file("/etc/vks/manifests/web.yaml", pod_manifest("web", "hello v1").as_bytes());
    let line = wait_running(&node, &pod, within(Duration::from_secs(10))).await;
    assert!(line.contains("main: Running") && line.ends_with("/etc/vks/manifests/web.yaml"), "{line}");
    // Running means the program was executed; its first line reaches the journal soon after.
    wait_for("the greeting in vks logs", within(Duration::from_secs(10)), async || {
        let logs = node.exec(&["vks", "logs", &pod]);
        if logs.trim() == "hello v1" { Ok(()) } else { Err(logs) }
    })
    .await;
    let pid = main_pid(&node, &unit);
    assert_ne!(pid, "0");

    // Errors name what does not exist.
    let out = node.exec_output(&["vks", "logs", "nope"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("vks: no pod \"nope\" on node {} (vks pods lists them)", node.name)
    );
    let out = node.exec_output(&["vks", "logs", &pod, "-c", "db"]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("pod default/{pod} has no container \"db\" (its containers: main)"))
    );

    // A broken manifest next to it: reported, and the good pod is left alone.
    node.put_file("/etc/vks/manifests/broken.yaml", b"apiVersion: v1\nkind: Pod\nmetadata: [\n");
    wait_for("the broken manifest in vks pods", within(Duration::from_secs(5)), async || {
        let out = vks_pods(&node);
        if out.contains("/etc/vks/manifests/broken.yaml: not valid YAML") { Ok(()) } else { Err(out) }
    })
    .await;
    assert!(node.vks_journal().contains("static pod manifest /etc/vks/manifests/broken.yaml is not valid"));
    hold_for("the good pod untouched", Duration::from_secs(2), async || {
        if main_pid(&node, &unit) == pid { Ok(()) } else { Err("MainPID changed".into()) }
    })
    .await;

    // vks restarted: the pod's unit is adopted untouched.
    node.exec(&["systemctl", "restart", "vks"]);
    wait_running(&node, &pod, within(Duration::from_secs(10))).await;
    assert_eq!(main_pid(&node, &unit), pid, "vks restart keeps the static pod running");

    // Changed: a new UID, the pod is replaced.
    let records = || node.sh("ls /run/vks/status");
    let before = records();
    node.put_file("/etc/vks/manifests/web.yaml", pod_manifest("web", "hello v2").as_bytes());
    wait_for("the changed pod to run", within(Duration::from_secs(15)), async || {
        // While the old pod is still being stopped, both are listed and `vks logs` asks which.
        let out = node.exec_output(&["vks", "logs", &pod, "--tail", "1"]);
        let logs = String::from_utf8_lossy(if out.status.success() { &out.stdout } else { &out.stderr }).into_owned();
        let now = main_pid(&node, &unit);
        if logs.trim() == "hello v2" && now != "0" && now != pid { Ok(()) } else { Err(format!("{logs} pid {now}")) }
    })
    .await;
    wait_for("one record, of the new pod", within(Duration::from_secs(10)), async || {
        let now = records();
        if now.lines().count() == 1 && now != before { Ok(()) } else { Err(now) }
    })
    .await;
    wait_running(&node, &pod, within(Duration::from_secs(10))).await;

    // Removed: stopped, its unit and record gone.
    node.exec(&["rm", "/etc/vks/manifests/web.yaml"]);
    wait_for("the pod to be gone", within(Duration::from_secs(15)), async || {
        let units = node.sh("ls /run/systemd/system | grep '^vks\\..*\\.service$' || true");
        let out = vks_pods(&node);
        if units.is_empty() && out.starts_with(&format!("No pods on node {}.", node.name)) && records().is_empty() {
            Ok(())
        } else {
            Err(format!("units {units:?}\n{out}"))
        }
    })
    .await;

    // Standalone means no API server: vks has no TCP socket at all (no API, no kubelet port).
    let vks_pid = node.unit_prop("vks", "MainPID");
    let sockets = node.sh(&format!("ss -Htanp | grep 'pid={vks_pid},' || true"));
    assert!(sockets.is_empty(), "vks opened TCP sockets: {sockets}");
    assert!(!node.vks_journal().contains("kubelet API listening"));
}

#[tokio::test]
#[ignore = "needs the .deb and a systemd test node (k3s/node)"]
async fn standalone_package_path_runs_uptimed() {
    // README: apt install ./vks.deb; drop uptimed.yaml into /etc/vks/manifests;
    // systemctl enable --now vks; vks pods shows it Running. No cluster.
    let node = Node::bare("static-package");
    let apt = node.sh(&crate::package::stage_packages(&node));
    assert!(apt.contains("vks: no cluster configured: 'systemctl enable --now vks' runs the static pods"), "{apt}");
    assert!(!apt.to_lowercase().contains("error"), "{apt}");
    node.exec(&["cp", "/usr/share/doc/vks/examples/uptimed.yaml", "/etc/vks/manifests/"]);
    node.exec(&["systemctl", "enable", "--now", "vks"]);
    let pod = format!("uptimed-{}", node.name);
    let line = wait_running(&node, &pod, within(Duration::from_secs(300))).await;
    assert!(line.contains("uptimed: Running"), "{line}");
    let unit = unit_name("default", &pod, "uptimed");
    assert_eq!(node.unit_prop(&unit, "ActiveState"), "active");
    assert_eq!(node.unit_prop("uptimed.service", "UnitFileState"), "masked", "only the pod runs uptimed");
}

#[tokio::test]
#[ignore = "needs the test cluster (k3s/cluster up)"]
async fn mirror_pods_appear_track_status_and_come_back() {
    let node = Node::up("static-mirror");
    let client = client().await;
    let pod = format!("pair-{}", node.name);
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pair\nspec:\n  containers:\n  \
        - name: steady\n    image: /usr/bin/sleep\n    args: [\"3600\"]\n  \
        - name: crash\n    image: /bin/sh\n    command: [\"/bin/sh\", \"-c\", \"sleep 1; exit 3\"]\n";
    node.exec(&["mkdir", "-p", "/etc/vks/manifests"]);
    node.put_file("/etc/vks/manifests/pair.yaml", manifest.as_bytes());

    // The mirror pod: annotation, owner, node; its status follows the static pod's.
    let mirror = wait_for("the mirror pod with a restart of crash", within(Duration::from_secs(60)), async || {
        let p = get_pod(&client, "default", &pod).await.ok_or_else(|| "no mirror pod".to_owned())?;
        let restarts = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.iter().find(|c| c.name == "crash").map(|c| c.restart_count))
            .unwrap_or(0);
        if restarts >= 1 { Ok(p) } else { Err(format!("restarts {restarts}: {:?}", p.status)) }
    })
    .await;
    let static_uid = node.sh("ls /run/vks/status").trim().trim_end_matches(".json").to_owned();
    let a = mirror.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(a.get("kubernetes.io/config.mirror"), Some(&static_uid));
    assert_eq!(a.get("kubernetes.io/config.source").map(String::as_str), Some("file"));
    let owner = &mirror.metadata.owner_references.clone().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("Node", node.name.as_str(), Some(true)));
    assert_eq!(owner.uid, node.object(&client).await.metadata.uid.unwrap());
    assert_eq!(mirror.spec.as_ref().unwrap().node_name.as_deref(), Some(node.name.as_str()));
    let crash = mirror.status.as_ref().unwrap().container_statuses.clone().unwrap();
    let last = crash.iter().find(|c| c.name == "crash").unwrap().last_state.clone().unwrap();
    assert_eq!(last.terminated.unwrap().exit_code, 3);
    let listed = node.exec(&["vks", "pods"]);
    assert!(listed.contains(&pod) && listed.contains("/etc/vks/manifests/pair.yaml"), "{listed}");

    // Deleting the mirror pod does not stop the static pod: the mirror comes back.
    let steady = unit_name("default", &pod, "steady");
    let pid = node.unit_prop(&steady, "MainPID");
    let old_uid = mirror.metadata.uid.clone().unwrap();
    kubectl(&["delete", "pod", &pod, "--wait=false"]);
    wait_for("a new mirror pod", within(Duration::from_secs(30)), async || {
        let p = get_pod(&client, "default", &pod).await.ok_or_else(|| "none".to_owned())?;
        let fresh = p.metadata.uid.as_deref() != Some(old_uid.as_str()) && p.metadata.deletion_timestamp.is_none();
        if fresh && phase(&p) == "Running" { Ok(()) } else { Err(format!("{:?} {}", p.metadata.uid, phase(&p))) }
    })
    .await;
    assert_eq!(node.unit_prop(&steady, "MainPID"), pid, "the static pod kept running");

    // The manifest removed: the static pod stops and its mirror goes.
    node.exec(&["rm", "/etc/vks/manifests/pair.yaml"]);
    wait_for("the mirror pod to go", within(Duration::from_secs(60)), async || {
        match get_pod(&client, "default", &pod).await {
            None => Ok(()),
            Some(p) => Err(format!("still there: {:?}", p.metadata.uid)),
        }
    })
    .await;
    wait_for("the units to go", within(Duration::from_secs(60)), async || {
        let units = node.sh("ls /run/systemd/system | grep '^vks\\..*\\.service$' || true");
        if units.is_empty() { Ok(()) } else { Err(units) }
    })
    .await;
}

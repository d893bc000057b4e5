//! The node: registration with the host's facts, Lease heartbeat, the sd_notify contract
//! (READY after registration, STATUS, WATCHDOG, STOPPING), configured labels and taints, and
//! an unreachable API server at start-up.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node as K8sNode;
use kube::api::{Api, DeleteParams};

use crate::support::*;

fn cond<'a>(n: &'a K8sNode, t: &str) -> &'a k8s_openapi::api::core::v1::NodeCondition {
    n.status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("no {t} condition"))
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn node_registers_ready_with_the_hosts_facts() {
    let node = Node::up("registers");
    let client = client().await;
    let n = node.object(&client).await;
    let labels = n.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["kubernetes.io/arch"], "amd64");
    assert_eq!(labels["kubernetes.io/hostname"], node.name);
    assert_eq!(labels["node.kubernetes.io/instance-type"], "vks");

    let status = n.status.as_ref().unwrap();
    let cap = status.capacity.as_ref().unwrap();
    let cpus = node.exec(&["nproc", "--all"]).trim().to_owned();
    assert_eq!(cap["cpu"].0, cpus);
    let mem_kb: u64 = node.sh("awk '/MemTotal/ {print $2}' /proc/meminfo").trim().parse().unwrap();
    assert_eq!(vks::quantity::parse_bytes(&cap["memory"].0), Some(mem_kb * 1024));
    assert_eq!(cap["pods"].0, "110");
    assert!(vks::quantity::parse_bytes(&cap["ephemeral-storage"].0).unwrap() > 1 << 30);
    let alloc = status.allocatable.as_ref().unwrap();
    assert_eq!(
        vks::quantity::parse_bytes(&alloc["memory"].0),
        Some(mem_kb * 1024 - (100 << 20)),
        "memory minus the 100Mi eviction threshold"
    );

    let info = status.node_info.as_ref().unwrap();
    let pretty = node.sh(". /etc/os-release; echo \"$PRETTY_NAME\"");
    assert_eq!(info.os_image, pretty.trim());
    assert_eq!(info.kernel_version, node.exec(&["uname", "-r"]).trim());
    assert_eq!(info.operating_system, "linux");
    assert_eq!(info.architecture, "amd64");
    let systemd_version = node.exec(&[
        "busctl",
        "get-property",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "Version",
    ]);
    // busctl prints: s "252.38-1~deb12u1"
    let systemd_version = systemd_version.trim().trim_start_matches("s ").trim_matches('"');
    assert_eq!(info.container_runtime_version, format!("systemd://{systemd_version}"));
    assert_eq!(info.kubelet_version, format!("vks/{}", env!("CARGO_PKG_VERSION")));
    assert_eq!(info.machine_id, node.exec(&["cat", "/etc/machine-id"]).trim());
    assert_eq!(info.boot_id, node.exec(&["cat", "/proc/sys/kernel/random/boot_id"]).trim());

    let addrs: Vec<(String, String)> =
        status.addresses.as_ref().unwrap().iter().map(|a| (a.type_.clone(), a.address.clone())).collect();
    assert_eq!(addrs, [("InternalIP".to_owned(), node.ip()), ("Hostname".to_owned(), node.name.clone())]);
    assert_eq!(status.daemon_endpoints.as_ref().unwrap().kubelet_endpoint.as_ref().unwrap().port, 10250);

    let ready = cond(&n, "Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("True", Some("KubeletReady")));
    for (t, reason) in [
        ("MemoryPressure", "KubeletHasSufficientMemory"),
        ("DiskPressure", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "KubeletHasSufficientPID"),
    ] {
        let c = cond(&n, t);
        assert_eq!((c.status.as_str(), c.reason.as_deref()), ("False", Some(reason)), "{t}");
    }

    // What a user sees.
    let wide = kubectl(&["get", "node", &node.name, "-o", "wide"]);
    let row = wide.lines().nth(1).unwrap();
    assert!(row.contains(" Ready ") && row.contains(&node.ip()) && row.contains("systemd://"), "{wide}");

    // The kubelet port is bound, with TLS, on the node IP.
    let healthz = std::process::Command::new("curl")
        .args(["-sk", &format!("https://{}:10250/healthz", node.ip())])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&healthz.stdout), "ok");

    // Logs go to the journal with structured fields.
    let json = node.exec(&["journalctl", "-u", "vks", "-o", "json", "--no-pager"]);
    assert!(
        json.lines()
            .any(|l| l.contains(&format!("\"NODE\":\"{}\"", node.name)) && l.contains("\"SYSLOG_IDENTIFIER\":\"vks\"")),
        "no journal entry with a NODE field:\n{json}"
    );
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn lease_is_renewed_every_ten_seconds() {
    let node = Node::up("lease");
    let client = client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let first = leases.get(&node.name).await.unwrap();
    let spec = first.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(node.name.as_str()));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let owner = &first.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Node", node.name.as_str()));
    assert_eq!(Some(owner.uid.clone()), node.object(&client).await.metadata.uid);
    let t1 = spec.renew_time.unwrap().0;
    let renewed = wait_for("the lease to be renewed", Duration::from_secs(25), async || {
        let l = leases.get(&node.name).await.map_err(|e| e.to_string())?;
        let t = l.spec.unwrap().renew_time.unwrap().0;
        if t > t1 { Ok(t) } else { Err(format!("renewTime still {t}")) }
    })
    .await;
    let gap = renewed.duration_since(t1).as_secs_f64();
    assert!((5.0..=15.0).contains(&gap), "renewed after {gap}s, expected about 10s");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn sd_notify_ready_status_watchdog_and_clean_stop() {
    let node = Node::up("notify");
    let client = client().await;
    // READY came after the Node object existed.
    let created = node.object(&client).await.metadata.creation_timestamp.unwrap().0;
    let active_enter: i64 = node.unit_prop("vks", "ActiveEnterTimestampMonotonic").parse().unwrap();
    assert!(active_enter > 0);
    let active_enter_wall = node.unit_prop("vks", "ActiveEnterTimestamp");
    let ready_at = node.exec(&["date", "-d", &active_enter_wall, "+%s"]).trim().parse::<i64>().unwrap();
    assert!(ready_at >= created.as_second(), "READY ({ready_at}) before the Node was created ({created})");
    // STATUS= is kept current: pods and API requests.
    wait_for("a status line with counters", Duration::from_secs(10), async || {
        let s = node.unit_prop("vks", "StatusText");
        let ok = s.starts_with(&format!("node {}: 0 pods, ", node.name)) && s.ends_with(" API requests");
        if ok { Ok(()) } else { Err(s) }
    })
    .await;
    assert_eq!(node.unit_prop("vks", "Type"), "notify");
    assert_eq!(node.unit_prop("vks", "WatchdogUSec"), "1min");

    // The watchdog is pinged (every 30 s for WatchdogSec=60s).
    let first = node.unit_prop("vks", "WatchdogTimestampMonotonic");
    wait_for("a watchdog ping", Duration::from_secs(45), async || {
        let now = node.unit_prop("vks", "WatchdogTimestampMonotonic");
        if now != first && now != "0" { Ok(()) } else { Err(format!("WatchdogTimestampMonotonic {now}")) }
    })
    .await;

    // SIGTERM: STOPPING=1, then a clean exit. systemd logs notification messages at debug level.
    node.stop_vks_cleanly();
    let vks_log = node.vks_journal();
    assert!(vks_log.contains("received SIGTERM") && vks_log.contains("shutting down"), "{vks_log}");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn configured_labels_and_taints_are_registered() {
    let node = Node::up("labels");
    let client = client().await;
    let config = node.config();
    let config = config.replacen(
        "[node]\n",
        "[node]\nlabels = { \"example.com/role\" = \"web\", \"topology.kubernetes.io/zone\" = \"z1\" }\n\
         taints = [\"dedicated=web:NoSchedule\", \"example.com/maintenance:NoExecute\"]\nmax_pods = 17\n",
        1,
    );
    node.write_config(&config);
    node.exec(&["vks", "check", "--config", "/etc/vks/config.toml"]);
    // Taints apply at registration (a node may not change its own taints): register afresh.
    node.exec(&["systemctl", "stop", "vks"]);
    Api::<K8sNode>::all(client.clone()).delete(&node.name, &DeleteParams::default()).await.unwrap();
    node.exec(&["systemctl", "start", "vks"]);
    let n = wait_for("the node to register again", Duration::from_secs(30), async || {
        let n = Api::<K8sNode>::all(client.clone()).get_opt(&node.name).await.map_err(|e| e.to_string())?;
        n.ok_or_else(|| "not registered yet".to_owned())
    })
    .await;
    let labels = n.metadata.labels.unwrap();
    assert_eq!(labels["example.com/role"], "web");
    assert_eq!(labels["topology.kubernetes.io/zone"], "z1");
    let taints: Vec<(String, Option<String>, String)> =
        n.spec.unwrap().taints.unwrap().into_iter().map(|t| (t.key, t.value, t.effect)).collect();
    assert!(taints.contains(&("dedicated".into(), Some("web".into()), "NoSchedule".into())), "{taints:?}");
    assert!(taints.contains(&("example.com/maintenance".into(), None, "NoExecute".into())), "{taints:?}");
    assert_eq!(n.status.unwrap().capacity.unwrap()["pods"].0, "17");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn unreachable_api_server_at_start_delays_ready_but_not_the_process() {
    let node = Node::up("noapi");
    // Point vks at a port nothing listens on.
    node.exec(&["systemctl", "stop", "vks"]);
    node.sh("sed 's#server: \"*https://127.0.0.1:6443\"*#server: https://127.0.0.1:1#' /etc/vks/kubeconfig > /etc/vks/kubeconfig.bad");
    // Use that kubeconfig as is (the node joined with a token: drop the join settings).
    let joined = node.config();
    let bad: String = joined
        .lines()
        .filter(|l| !l.starts_with("server = ") && !l.starts_with("token = ") && !l.starts_with("kubeconfig = "))
        .map(|l| {
            if l == "[cluster]" {
                "[cluster]\nkubeconfig = \"/etc/vks/kubeconfig.bad\"\n".to_owned()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    node.write_config(&bad);
    node.exec(&["systemctl", "start", "--no-block", "vks"]);
    wait_for("vks to report that it is registering", Duration::from_secs(20), async || {
        let s = node.unit_prop("vks", "StatusText");
        if s == format!("registering node {}", node.name) { Ok(()) } else { Err(s) }
    })
    .await;
    let pid = node.unit_prop("vks", "MainPID");
    hold_for("vks running, not ready, while the API server is unreachable", Duration::from_secs(5), async || {
        let (state, main) = (node.unit_prop("vks", "ActiveState"), node.unit_prop("vks", "MainPID"));
        if state == "activating" && main == pid {
            Ok(())
        } else {
            Err(format!("state {state}, MainPID {main} (was {pid})"))
        }
    })
    .await;
    let log = node.vks_journal();
    assert_eq!(log.matches("API server unreachable").count(), 1, "one line per outage, not per retry:\n{log}");
    // Back to the right kubeconfig: vks becomes ready.
    node.write_config(&joined);
    node.exec(&["systemctl", "restart", "vks"]);
    assert_eq!(node.unit_prop("vks", "ActiveState"), "active");
}

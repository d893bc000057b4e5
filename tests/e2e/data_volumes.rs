//! Volumes, end to end (issue 12): every volume type's files, modes and owners as a container
//! running as a package's user sees them, subPath and subPathExpr, read-only mounts, a
//! memory-backed emptyDir with its size, an allowed hostPath, what other users cannot reach;
//! and ConfigMap and Secret updates reaching the files atomically while a reader loop runs.

use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::data::{LONG, events, journal, pod, put_config_map, put_secret, wait_default_sa, wait_line, wait_waiting};
use crate::debs::{self, Deb};
use crate::support::*;

/// What the container running as `daemon` reports about its mounts.
const INSPECT: &str = r#"#!/bin/sh
for f in /etc/app/conf/app.conf /etc/secret/password /etc/info/labels /etc/info/cpu /etc/proj/other \
         /etc/proj/user /etc/proj/name /etc/app.conf /data/host/hello; do
  echo "FILE $f $(stat -L -c '%a %U %G' $f) $(head -c 200 $f | base64 -w0)"
done
echo "TOKEN $(stat -L -c '%a %U' /etc/proj/token) $(tr -cd . < /etc/proj/token | wc -c)"
for d in /data/cache /data/mem /data/sub /data/expr /data/host /etc/app; do
  if touch $d/by-daemon 2>/dev/null; then w=writable; else w=read-only; fi
  echo "DIR $d $(stat -c '%a %U' $d) $w"
done
echo "MEM $(stat -f -c %T /data/mem) $(df -k --output=size /data/mem | tail -1 | tr -d ' ')"
for p in /var/lib/vks/pods /run/vks/pods; do
  if ls $p >/dev/null 2>&1; then echo "OTHERS $p readable"; else echo "OTHERS $p denied"; fi
done
i=0; while [ ! -e /data/cache/from-root ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "SHARED $(cat /data/cache/from-root 2>&1)"
echo DONE
exec sleep 3600
"#;

fn inspect_deb() -> Deb<'static> {
    Deb {
        name: "vks-e2e-inspect",
        version: "1.0",
        files: vec![
            ("usr/bin/vks-e2e-inspect", 0o755, INSPECT.to_owned()),
            (
                "lib/systemd/system/vks-e2e-inspect.service",
                0o644,
                "[Service]\nExecStart=/usr/bin/vks-e2e-inspect\nUser=daemon\n".to_owned(),
            ),
        ],
        postinst: None,
    }
}

/// Installs `deb` in the node with dpkg (as an operator would; the pod uses it with
/// imagePullPolicy Never).
fn install(node: &Node, deb: &Deb) {
    let dir = tempfile::tempdir().unwrap();
    let file = debs::build(dir.path(), deb);
    node.put_file("/var/tmp/e2e.deb", &std::fs::read(&file).unwrap());
    node.exec(&["dpkg", "-i", "/var/tmp/e2e.deb"]);
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn volumes_have_their_files_modes_and_owners_inside_the_container() {
    let node = Node::up("data-vols");
    let ns = Namespace::new("data-vols");
    let client = client().await;
    wait_default_sa(&client, &ns.name).await;
    install(&node, &inspect_deb());
    // hostPath needs the node's allow-list.
    node.write_config(&format!("{}\n[volumes]\nhost_path_allow = [\"/srv/vks-e2e\"]\n", node.config()));
    node.exec(&["systemctl", "restart", "vks"]);
    node.sh("mkdir -p /srv/vks-e2e/data && echo from-the-host > /srv/vks-e2e/data/hello");
    put_config_map(&client, &ns.name, "app-config", &[("app.conf", "listen 8080\n"), ("other", "o")]).await;
    put_secret(&client, &ns.name, "app-secret", &[("password", b"pw"), ("user", b"u")]).await;
    let mounts = json!([
        {"name": "cache", "mountPath": "/data/cache"},
        {"name": "mem", "mountPath": "/data/mem"},
        {"name": "cfg", "mountPath": "/etc/app"},
        {"name": "sec", "mountPath": "/etc/secret"},
        {"name": "info", "mountPath": "/etc/info"},
        {"name": "proj", "mountPath": "/etc/proj"},
        {"name": "host", "mountPath": "/data/host", "readOnly": true},
        {"name": "cache", "mountPath": "/data/sub", "subPath": "sub"},
        {"name": "cache", "mountPath": "/data/expr", "subPathExpr": "$(POD_NAME)"},
        {"name": "cfg", "mountPath": "/etc/app.conf", "subPath": "conf/app.conf"}
    ]);
    let spec = json!({
        "volumes": [
            {"name": "cache", "emptyDir": {}},
            {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}},
            {"name": "cfg", "configMap": {"name": "app-config", "items": [{"key": "app.conf", "path": "conf/app.conf", "mode": 0o640}]}},
            {"name": "sec", "secret": {"secretName": "app-secret", "defaultMode": 0o400}},
            {"name": "info", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "cpu", "resourceFieldRef": {"containerName": "inspect", "resource": "limits.cpu", "divisor": "1m"}}]}},
            {"name": "proj", "projected": {"sources": [
                {"configMap": {"name": "app-config", "items": [{"key": "other", "path": "other"}]}},
                {"secret": {"name": "app-secret", "items": [{"key": "user", "path": "user"}]}},
                {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                {"serviceAccountToken": {"path": "token", "audience": "vks-e2e", "expirationSeconds": 3600}}]}},
            {"name": "host", "hostPath": {"path": "/srv/vks-e2e/data", "type": "Directory"}}
        ],
        "containers": [
            {"name": "inspect", "image": "vks-e2e-inspect", "imagePullPolicy": "Never",
             "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
             "volumeMounts": mounts},
            {"name": "root", "image": "/bin/sh", "command": ["/bin/sh", "-c",
                "echo shared > /data/cache/from-root; echo x > /data/mem/from-root; cat /etc/secret/password; echo; \
                 for d in /data/we*; do printf 'WEIRD %s %s\\n' \"$d\" \"$(cat \"$d/from-root\")\"; done; exec sleep 3600"],
             "volumeMounts": [{"name": "cache", "mountPath": "/data/cache"}, {"name": "mem", "mountPath": "/data/mem"},
                              {"name": "sec", "mountPath": "/etc/secret"},
                              // A path systemd's BindPaths= syntax must escape (blank, colon, quotes).
                              {"name": "cache", "mountPath": "/data/we ird:pa'th\"x"}]}
        ]
    });
    create_pod(&client, &ns.name, pod("vols", &node, spec)).await;
    let p = wait_phase(&client, &ns.name, "vols", "Running", LONG).await;
    let unit = unit_name(&ns.name, "vols", "inspect");
    wait_line(&node, &unit, "DONE", LONG).await;
    let report = journal(&node, &unit);
    println!("what the container running as daemon sees:\n{report}");
    let line = |prefix: &str| -> String {
        report
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {report}"))
            .to_owned()
    };
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let cpus = node.object(&client).await.status.unwrap().allocatable.unwrap()["cpu"].0.parse::<u64>().unwrap();
    for (file, meta, content) in [
        ("/etc/app/conf/app.conf", "640 daemon daemon", "listen 8080\n".to_owned()),
        ("/etc/secret/password", "400 daemon daemon", "pw".to_owned()),
        ("/etc/info/labels", "644 daemon daemon", "app=\"vols\"".to_owned()),
        ("/etc/info/cpu", "644 daemon daemon", (cpus * 1000).to_string()),
        ("/etc/proj/other", "644 daemon daemon", "o".to_owned()),
        ("/etc/proj/user", "644 daemon daemon", "u".to_owned()),
        ("/etc/proj/name", "644 daemon daemon", "vols".to_owned()),
        ("/etc/app.conf", "640 daemon daemon", "listen 8080\n".to_owned()),
        ("/data/host/hello", "644 root root", "from-the-host\n".to_owned()),
    ] {
        assert_eq!(line(&format!("FILE {file} ")), format!("{meta} {}", b64(&content)), "{file}");
    }
    assert_eq!(line("TOKEN "), "644 daemon 2", "a JWT owned by the container's user");
    assert_eq!(line("DIR /data/cache "), "777 daemon writable");
    assert_eq!(line("DIR /data/mem "), "777 daemon writable");
    assert_eq!(line("DIR /data/sub "), "777 root writable", "a subPath directory, created");
    assert_eq!(line("DIR /data/expr "), "777 root writable");
    assert_eq!(line("DIR /data/host "), "755 root read-only");
    assert_eq!(line("DIR /etc/app "), "755 daemon read-only", "configMap volumes are read-only");
    assert_eq!(line("MEM "), "tmpfs 8192");
    assert_eq!(line("OTHERS /var/lib/vks/pods "), "denied");
    assert_eq!(line("OTHERS /run/vks/pods "), "denied");
    assert_eq!(line("SHARED "), "shared", "one emptyDir for all containers of the pod");
    let root_unit = unit_name(&ns.name, "vols", "root");
    assert_eq!(wait_line(&node, &root_unit, "pw", LONG).await, "");
    assert_eq!(wait_line(&node, &root_unit, "WEIRD ", LONG).await, "/data/we ird:pa'th\"x shared");
    // On the node: Secrets and tokens on tmpfs, the memory emptyDir its own tmpfs.
    let uid = p.metadata.uid.clone().unwrap();
    for d in ["secret/sec", "projected/proj"] {
        assert_eq!(node.exec(&["stat", "-f", "-c", "%T", &format!("/run/vks/pods/{uid}/volumes/{d}")]).trim(), "tmpfs");
    }
    assert!(!node.exec_output(&["test", "-e", &format!("/var/lib/vks/pods/{uid}/volumes/secret")]).status.success());
    // A hostPath outside the allow-list is refused with a clear reason.
    let spec = json!({"volumes": [{"name": "etc", "hostPath": {"path": "/etc"}}],
        "containers": [{"name": "c", "image": "/usr/bin/sleep", "args": ["60"], "volumeMounts": [{"name": "etc", "mountPath": "/host-etc"}]}]});
    create_pod(&client, &ns.name, pod("refused", &node, spec)).await;
    let m = wait_waiting(&client, &ns.name, "refused", "CreateContainerConfigError", "host_path_allow").await;
    println!("hostPath /etc: {m}");
    // Deletion removes the files and the memory emptyDir's tmpfs.
    delete_pod(&client, &ns.name, "vols", Some(1)).await;
    wait_for("the pod's directories and mounts to be gone", LONG, async || {
        let left = node.sh(&format!(
            "ls -d /var/lib/vks/pods/{uid} /run/vks/pods/{uid} 2>/dev/null; findmnt -rn -o TARGET | grep {uid} || true"
        ));
        if left.trim().is_empty() { Ok(()) } else { Err(left) }
    })
    .await;
    assert!(node.exec_output(&["test", "-e", "/srv/vks-e2e/data/hello"]).status.success(), "host files stay");
}

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn config_map_and_secret_updates_reach_the_files_atomically() {
    let node = Node::up("data-update");
    let ns = Namespace::new("data-update");
    let client = client().await;
    wait_default_sa(&client, &ns.name).await;
    let (a, b) = ("a".repeat(256 * 1024), "b".repeat(256 * 1024));
    let (ha, hb) = (sha(&a), sha(&b));
    put_config_map(&client, &ns.name, "flip", &[("data", &a)]).await;
    put_secret(&client, &ns.name, "flip", &[("data", a.as_bytes())]).await;
    // A reader loop: every read must be one whole version, never a mix or a missing file.
    let reader = "n=0; while :; do for f in /cfg/data /sec/data; do \
        if h=$(sha256sum < $f); then h=${h%% *}; [ \"$h\" = \"$HA\" ] || [ \"$h\" = \"$HB\" ] || echo \"PARTIAL $f $h\"; \
        else echo \"READFAIL $f\"; fi; n=$((n+1)); done; \
        [ $((n % 500)) = 0 ] && echo \"READS $n\"; done";
    let spec = json!({
        "volumes": [{"name": "cfg", "configMap": {"name": "flip"}}, {"name": "sec", "secret": {"secretName": "flip"}}],
        "containers": [{"name": "reader", "image": "/bin/sh", "command": ["/bin/sh", "-c", reader],
            "env": [{"name": "HA", "value": ha}, {"name": "HB", "value": hb}],
            "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}, {"name": "sec", "mountPath": "/sec"}]}]});
    create_pod(&client, &ns.name, pod("reader", &node, spec)).await;
    let p = wait_phase(&client, &ns.name, "reader", "Running", LONG).await;
    let uid = p.metadata.uid.unwrap();
    let unit = unit_name(&ns.name, "reader", "reader");
    wait_line(&node, &unit, "READS ", LONG).await;
    let files = [
        format!("/var/lib/vks/pods/{uid}/volumes/configmap/cfg/data"),
        format!("/run/vks/pods/{uid}/volumes/secret/sec/data"),
    ];
    // The Node authorizer may not know the new pod yet when vks first asks for its token (a
    // FailedMount, retried, as with the kubelet): only the updates below must cause none.
    let failed_mounts = || events(&ns.name, "reader").iter().filter(|e| e.starts_with("FailedMount")).count();
    let failed_before = failed_mounts();
    let mut latencies = Vec::new();
    for round in 0..6 {
        let (content, want) = if round % 2 == 0 { (&b, &hb) } else { (&a, &ha) };
        let t0 = Instant::now();
        put_config_map(&client, &ns.name, "flip", &[("data", content)]).await;
        put_secret(&client, &ns.name, "flip", &[("data", content.as_bytes())]).await;
        wait_for(&format!("update {round} to reach both files"), within(Duration::from_secs(30)), async || {
            for f in &files {
                let got = node.sh(&format!("sha256sum < {f} | cut -c1-64"));
                if got.trim() != want.as_str() {
                    return Err(format!("{f}: {}", got.trim()));
                }
            }
            Ok(())
        })
        .await;
        latencies.push(t0.elapsed());
    }
    // The reader runs on over the last swap for a while, and keeps running.
    hold_for("the reader running over the last swap", Duration::from_secs(2), async || {
        let state = node.unit_prop(&unit, "ActiveState");
        if state == "active" { Ok(()) } else { Err(format!("the reader's unit is {state}")) }
    })
    .await;
    let log = journal(&node, &unit);
    let reads = log.lines().filter_map(|l| l.strip_prefix("READS ")).next_back().unwrap_or("0").to_owned();
    println!("update latencies: {latencies:?}; the reader read {reads} times");
    let bad: Vec<&str> = log.lines().filter(|l| l.starts_with("PARTIAL") || l.starts_with("READFAIL")).collect();
    assert!(bad.is_empty(), "the reader saw partial or missing files: {bad:?}");
    assert!(reads.parse::<u64>().unwrap() >= 200, "the reader ran: {reads}");
    assert!(latencies.iter().all(|l| *l < within(Duration::from_secs(15))), "{latencies:?}");
    // The container was never restarted by the updates.
    let p = get_pod(&client, &ns.name, "reader").await.unwrap();
    assert_eq!(p.status.unwrap().container_statuses.unwrap()[0].restart_count, 0);
    assert_eq!(failed_mounts(), failed_before, "{:?}", events(&ns.name, "reader"));
}

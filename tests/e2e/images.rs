//! Images are Debian packages: real .debs built here, a signed apt repository and an https
//! server on loopback, the real apt-get and dpkg inside real systemd nodes; and the real Debian
//! package `uptimed` from Debian's archive.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use serde_json::json;

use super::data::events;
use super::debs::{self, Fixture};
use super::support::*;

/// Installs take a while (apt-get update of every source, dpkg).
const PULL: Duration = Duration::from_secs(180);

fn pod(name: &str, node: &Node, containers: serde_json::Value) -> serde_json::Value {
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name },
            "spec": { "nodeName": node.name, "containers": containers, "terminationGracePeriodSeconds": 5 } })
}

fn status<'a>(p: &'a Pod, c: &str) -> Result<&'a ContainerStatus, String> {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|v| v.iter().find(|s| s.name == c))
        .ok_or_else(|| format!("no status for container {c}: {:?}", p.status))
}

/// The waiting reason and message of container `c`.
fn waiting(p: &Pod, c: &str) -> Option<(String, String)> {
    let w = status(p, c).ok()?.state.as_ref()?.waiting.as_ref()?;
    Some((w.reason.clone().unwrap_or_default(), w.message.clone().unwrap_or_default()))
}

/// Waits until container `c` waits with `reason` and a message containing `needle`.
async fn wait_waiting(client: &kube::Client, ns: &str, pod: &str, c: &str, reason: &str, needle: &str) -> String {
    wait_for(&format!("{pod}/{c} waiting with {reason} ({needle})"), PULL, async || {
        let p = get_pod(client, ns, pod).await.ok_or("gone")?;
        match waiting(&p, c) {
            Some((r, m)) if r == reason && m.contains(needle) => Ok(m),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

async fn wait_event(ns: &str, pod: &str, reason: &str, needle: &str) -> String {
    wait_for(&format!("event {reason} ({needle}) about {pod}"), Duration::from_secs(30), async || {
        let all = events(ns, pod);
        all.iter()
            .find(|e| e.starts_with(&format!("{reason}|")) && e.contains(needle))
            .cloned()
            .ok_or(format!("{all:?}"))
    })
    .await
}

fn configure(node: &Node, images: &str) {
    node.sh(&format!("cat >> /etc/vks/config.toml <<'EOF'\n{images}\nEOF\nsystemctl restart vks"));
}

fn installed_version(node: &Node, package: &str) -> String {
    node.sh(&format!("dpkg-query -W -f '${{Version}}' {package} 2>/dev/null || true"))
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn packages_install_without_starting_and_run_with_their_own_unit() {
    let fx = Fixture::new(
        "pkg",
        &[debs::daemon("1.0"), debs::daemon("2.0"), debs::tool("vks-test-tool", "1.0", "usr/bin/vks-test-tool")],
        &[],
    );
    let node = Node::up("img-packages");
    configure(&node, &fx.images_config(&node, "aliases = { \"busybox:1.36\" = \"vks-test-tool\" }"));
    let ns = Namespace::new("img-packages");
    let client = client().await;

    // A pinned version, installed by vks: the package's postinst tried to enable and start its
    // unit; policy-rc.d kept it from starting and vks disabled and masked it.
    let c = json!([{ "name": "d", "image": "vks-test-daemon:1.0", "imagePullPolicy": "IfNotPresent" }]);
    create_pod(&client, &ns.name, pod("v1", &node, c)).await;
    let p = wait_phase(&client, &ns.name, "v1", "Running", PULL).await;
    assert_eq!(status(&p, "d").unwrap().image_id, "deb://vks-test-daemon=1.0");
    assert_eq!(installed_version(&node, "vks-test-daemon"), "1.0");
    assert_eq!(node.sh("systemctl is-enabled vks-test-daemon.service || true").trim(), "masked");
    assert_eq!(node.unit_prop("vks-test-daemon.service", "ExecMainStartTimestampMonotonic"), "0", "never started");
    wait_event(&ns.name, "v1", "Pulling", "Pulling image \"vks-test-daemon:1.0\"").await;
    wait_event(&ns.name, "v1", "Pulled", "Successfully pulled image \"vks-test-daemon:1.0\" in ").await;

    // The package's unit is the base: its ExecStart (with $OPT from its Environment=), User=,
    // StateDirectory=; not its Restart=.
    let unit = unit_name(&ns.name, "v1", "d");
    let runs = wait_for("the daemon to record its run", Duration::from_secs(20), async || {
        let r = node.sh("cat /var/lib/vks-test-daemon/runs 2>/dev/null || true");
        if r.is_empty() { Err("no run yet".to_owned()) } else { Ok(r) }
    })
    .await;
    assert_eq!(runs.trim(), format!("1.0 --from-unit from-unit OPT=from-unit user=daemon unit={unit}"));
    let file = node.exec(&["cat", &format!("/run/systemd/system/{unit}")]);
    assert!(file.contains("User=daemon\n") && file.contains("StateDirectory=vks-test-daemon\n"), "{file}");
    assert!(!file.contains("Restart=always"), "{file}");

    // No version and policy Always (the API's default for an untagged image): upgrades to the
    // candidate; the mask survives the upgrade (the postinst's unmask only undoes its own masks).
    let c = json!([{ "name": "d", "image": "vks-test-daemon" }]);
    create_pod(&client, &ns.name, pod("latest", &node, c)).await;
    let p = wait_phase(&client, &ns.name, "latest", "Running", PULL).await;
    assert_eq!(status(&p, "d").unwrap().image_id, "deb://vks-test-daemon=2.0");
    assert_eq!(installed_version(&node, "vks-test-daemon"), "2.0");
    assert_eq!(node.sh("systemctl is-enabled vks-test-daemon.service || true").trim(), "masked");
    assert_eq!(node.unit_prop("vks-test-daemon.service", "ExecMainStartTimestampMonotonic"), "0");

    // command replaces the executable, args the arguments; with a command the package's unit
    // is not the base.
    let c = json!([
        { "name": "args", "image": "vks-test-daemon", "imagePullPolicy": "IfNotPresent", "args": ["--from-pod"] },
        { "name": "cmd", "image": "vks-test-daemon", "imagePullPolicy": "IfNotPresent",
          "command": ["/bin/sh", "-c", "id -un > /tmp/who; exec sleep 3600"] },
    ]);
    create_pod(&client, &ns.name, pod("override", &node, c)).await;
    wait_phase(&client, &ns.name, "override", "Running", PULL).await;
    let args_unit = node.exec(&["cat", &format!("/run/systemd/system/{}", unit_name(&ns.name, "override", "args"))]);
    assert!(
        args_unit.contains("ExecStart=\"@/usr/sbin/vks-test-daemon\" \"/usr/sbin/vks-test-daemon\" \"--from-pod\"\n"),
        "{args_unit}"
    );
    assert!(args_unit.contains("User=daemon\n"), "{args_unit}");
    let cmd_unit = node.exec(&["cat", &format!("/run/systemd/system/{}", unit_name(&ns.name, "override", "cmd"))]);
    assert!(!cmd_unit.contains("User=daemon"), "{cmd_unit}");

    // A package without a unit needs a command.
    let c = json!([{ "name": "t", "image": "vks-test-tool", "imagePullPolicy": "IfNotPresent" }]);
    create_pod(&client, &ns.name, pod("nocmd", &node, c)).await;
    wait_waiting(&client, &ns.name, "nocmd", "t", "CreateContainerError", "ships no systemd service").await;
    // With a command it runs; an alias maps a container image name to the package.
    let c = json!([
        { "name": "t", "image": "vks-test-tool", "imagePullPolicy": "IfNotPresent", "command": ["vks-test-tool", "x"] },
        { "name": "alias", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent", "command": ["vks-test-tool"] },
    ]);
    create_pod(&client, &ns.name, pod("tool", &node, c)).await;
    let p = wait_phase(&client, &ns.name, "tool", "Running", PULL).await;
    assert_eq!(status(&p, "alias").unwrap().image_id, "deb://vks-test-tool=1.0");
    assert_eq!(status(&p, "alias").unwrap().image, "busybox:1.36");

    // Never: fine when installed, ErrImageNeverPull when not.
    let c = json!([
        { "name": "ok", "image": "vks-test-tool", "imagePullPolicy": "Never", "command": ["vks-test-tool"] },
    ]);
    create_pod(&client, &ns.name, pod("never-ok", &node, c)).await;
    wait_phase(&client, &ns.name, "never-ok", "Running", PULL).await;
    let c = json!([{ "name": "n", "image": "vks-test-absent", "imagePullPolicy": "Never", "command": ["x"] }]);
    create_pod(&client, &ns.name, pod("never", &node, c)).await;
    let m = wait_waiting(&client, &ns.name, "never", "n", "ErrImageNeverPull", "vks-test-absent").await;
    assert!(m.contains("package vks-test-absent is not installed"), "{m}");
    assert_eq!(installed_version(&node, "vks-test-absent"), "");

    // Deleting the pods stops their units; packages stay installed.
    for p in ["v1", "latest", "override", "nocmd", "tool", "never-ok", "never"] {
        delete_pod(&client, &ns.name, p, None).await;
    }
    wait_for("the pods' units to be gone", Duration::from_secs(60), async || {
        let left = node.sh("ls /run/systemd/system | grep '^vks\\..*\\.service$' || true");
        if left.trim().is_empty() { Ok(()) } else { Err(left) }
    })
    .await;
    // (the daemon and the tool exec `sleep 3600`)
    assert_eq!(node.sh("pgrep -x sleep || true").trim(), "", "the pods' processes are gone");
    assert_eq!(installed_version(&node, "vks-test-daemon"), "2.0");
    assert_eq!(installed_version(&node, "vks-test-tool"), "1.0");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn failed_pulls_say_why_back_off_and_harm_no_other_pod() {
    let big = debs::Deb {
        name: "vks-test-big",
        version: "1.0",
        files: vec![("usr/share/vks-test-big/blob", 0o644, rand_text(100_000))],
        postinst: None,
    };
    let url_tool = debs::tool("vks-test-url", "1.0", "usr/bin/vks-test-url");
    let fx = Fixture::new("fail", &[debs::tool("vks-test-tool", "1.0", "usr/bin/vks-test-tool")], &[url_tool, big]);
    let node = Node::up("img-failures");
    configure(&node, &fx.images_config(&node, "download_max_size = \"8Ki\""));
    let ns = Namespace::new("img-failures");
    let client = client().await;

    let good = json!([{ "name": "c", "image": "vks-test-tool", "command": ["vks-test-tool"] }]);
    create_pod(&client, &ns.name, pod("good", &node, good)).await;
    let url = format!("{}/vks-test-url_1.0_all.deb", fx.https.base);
    let bad_sum = format!("{url}#sha256={}", "0".repeat(64));
    let cases = [
        ("unknown", "vks-test-nope".to_owned(), "E: Unable to locate package vks-test-nope"),
        ("noversion", "vks-test-tool=9.9".to_owned(), "E: Version '9.9' for 'vks-test-tool' was not found"),
        ("checksum", bad_sum, "checksum mismatch: expected sha256 0000000000000000"),
        ("toobig", format!("{}/vks-test-big_1.0_all.deb", fx.https.base), "images.download_max_size"),
        ("refused", "https://127.0.0.1:1/x_1.0_all.deb".to_owned(), "downloading https://127.0.0.1:1/x_1.0_all.deb"),
    ];
    for (name, image, _) in &cases {
        let c = json!([{ "name": "c", "image": image, "command": ["/bin/true"] }]);
        create_pod(&client, &ns.name, pod(name, &node, c)).await;
    }
    for (name, _, needle) in &cases {
        wait_waiting(&client, &ns.name, name, "c", "ImagePullBackOff", needle).await;
        wait_event(&ns.name, name, "Failed", needle).await;
        wait_event(&ns.name, name, "BackOff", "Back-off pulling image").await;
    }
    // ErrImagePull first, then ImagePullBackOff (seen in the pod's events in that order).
    let ev = events(&ns.name, "unknown");
    let first_err = ev.iter().position(|e| e == "Failed|Error: ErrImagePull").ok_or(format!("{ev:?}")).unwrap();
    let backoff = ev.iter().position(|e| e == "Failed|Error: ImagePullBackOff").ok_or(format!("{ev:?}")).unwrap();
    assert!(first_err < backoff, "{ev:?}");
    // The back-off doubles: the second try comes about 10 s after the first failure, the
    // third about 20 s after the second (the kubelet's 10 s → 5 min).
    let journal = wait_for("three pull attempts of vks-test-nope", Duration::from_secs(90), async || {
        let j = node.sh(
            "journalctl -u vks -o cat --no-pager | grep 'Unable to locate package vks-test-nope; next try' || true",
        );
        if j.lines().count() >= 3 { Ok(j) } else { Err(j) }
    })
    .await;
    let waits: Vec<&str> = journal.lines().map(|l| l.rsplit("next try in ").next().unwrap_or("")).collect();
    assert_eq!(&waits[..3], ["10s", "20s", "40s"], "{journal}");

    // The good pod was never disturbed, and nothing was installed for the failures.
    let p = wait_phase(&client, &ns.name, "good", "Running", PULL).await;
    assert_eq!(status(&p, "c").unwrap().restart_count, 0);
    for pkg in ["vks-test-nope", "vks-test-url", "vks-test-big"] {
        assert_eq!(installed_version(&node, pkg), "", "{pkg}");
    }
}

/// Pseudo-random letters (xorshift): they do not compress away, so the .deb stays big.
fn rand_text(n: usize) -> String {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn deb_urls_are_downloaded_verified_and_installed_and_pods_share_one_install() {
    let url_tool = debs::tool("vks-test-url", "1.0", "usr/bin/vks-test-url");
    let fx = Fixture::new(
        "url",
        &[
            debs::tool("vks-test-tool", "1.0", "usr/bin/vks-test-tool"),
            debs::tool("vks-test-late", "1.0", "usr/bin/vks-test-late"),
            debs::daemon("1.0"),
        ],
        &[url_tool],
    );
    // The package name comes from the .deb's control data, not the URL.
    let served = fx.dir.join("files/vks-test-url_1.0_all.deb");
    std::fs::rename(&served, fx.dir.join("files/renamed.deb")).unwrap();
    let sum = debs::sha256(&fx.dir.join("files/renamed.deb"));
    let node = Node::up("img-url");
    configure(&node, &fx.images_config(&node, ""));
    let ns = Namespace::new("img-url");
    let client = client().await;

    let image = format!("{}/renamed.deb#sha256={sum}", fx.https.base);
    let c = json!([{ "name": "c", "image": image, "command": ["vks-test-url"] }]);
    create_pod(&client, &ns.name, pod("url", &node, c)).await;
    let p = wait_phase(&client, &ns.name, "url", "Running", PULL).await;
    assert_eq!(status(&p, "c").unwrap().image_id, "deb://vks-test-url=1.0");
    assert_eq!(installed_version(&node, "vks-test-url"), "1.0");
    assert!(node.sh("ls /var/lib/vks/downloads").trim().is_empty(), "the download is removed");

    // Another dpkg holds the lock (unattended-upgrades): vks waits instead of failing; two pods
    // needing one package share one install.
    node.sh("systemd-run --unit=holder python3 -c 'import fcntl,time; f=open(\"/var/lib/dpkg/lock-frontend\",\"w\"); \
         fcntl.lockf(f, fcntl.LOCK_EX); open(\"/run/holding\",\"w\").close(); time.sleep(3600)'");
    wait_for("the lock holder", Duration::from_secs(10), async || {
        node.exec_output(&["test", "-e", "/run/holding"]).status.success().then_some(()).ok_or("not yet".to_owned())
    })
    .await;
    for name in ["race1", "race2"] {
        let c = json!([{ "name": "c", "image": "vks-test-tool", "command": ["vks-test-tool"] }]);
        create_pod(&client, &ns.name, pod(name, &node, c)).await;
    }
    hold_for("the pods to wait while dpkg is locked", Duration::from_secs(8), async || {
        for name in ["race1", "race2"] {
            let p = get_pod(&client, &ns.name, name).await.ok_or("gone")?;
            if let Some((r, m)) = waiting(&p, "c")
                && r != "ContainerCreating"
            {
                return Err(format!("{name}: {r}: {m}"));
            }
            if phase(&p) == "Running" {
                return Err(format!("{name} ran while dpkg was locked"));
            }
        }
        Ok(())
    })
    .await;
    node.exec(&["systemctl", "stop", "holder"]);
    for name in ["race1", "race2"] {
        let p = wait_phase(&client, &ns.name, name, "Running", PULL).await;
        assert_eq!(status(&p, "c").unwrap().image_id, "deb://vks-test-tool=1.0");
    }
    let installs =
        node.sh("grep -c '^Commandline: .*apt-get .*install.* vks-test-tool$' /var/log/apt/history.log || true");
    let history = node.sh("tail -n 12 /var/log/apt/history.log");
    assert_eq!(installs.trim(), "1", "one apt-get install for both pods:\n{history}");

    // A package the administrator installed (its daemon enabled and started by its postinst) keeps
    // its unit as it is; an event says so.
    node.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q vks-test-daemon >/dev/null");
    assert_eq!(node.sh("systemctl is-enabled vks-test-daemon.service || true").trim(), "enabled");
    assert_eq!(node.unit_prop("vks-test-daemon.service", "ActiveState"), "active");
    let c = json!([{ "name": "d", "image": "vks-test-daemon", "imagePullPolicy": "IfNotPresent" }]);
    create_pod(&client, &ns.name, pod("admins", &node, c)).await;
    wait_phase(&client, &ns.name, "admins", "Running", PULL).await;
    let kept = "its own unit vks-test-daemon.service is left as the administrator set it";
    wait_event(&ns.name, "admins", "PackageUnitKept", kept).await;
    assert_eq!(node.sh("systemctl is-enabled vks-test-daemon.service || true").trim(), "enabled");
    assert_eq!(node.unit_prop("vks-test-daemon.service", "ActiveState"), "active");

    // Stopping vks in the middle of an install does not interrupt dpkg: apt-get runs as its own
    // transient unit and finishes; the pod runs once vks is back.
    node.sh(
        "systemd-run --unit=holder2 python3 -c 'import fcntl,time; f=open(\"/var/lib/dpkg/lock-frontend\",\"w\"); \
         fcntl.lockf(f, fcntl.LOCK_EX); open(\"/run/holding2\",\"w\").close(); time.sleep(3600)'",
    );
    wait_for("the second lock holder", Duration::from_secs(10), async || {
        node.exec_output(&["test", "-e", "/run/holding2"]).status.success().then_some(()).ok_or("not yet".to_owned())
    })
    .await;
    let c = json!([{ "name": "c", "image": "vks-test-late", "command": ["vks-test-late"] }]);
    create_pod(&client, &ns.name, pod("late", &node, c)).await;
    let apt_unit = wait_for("apt-get to run as its own unit", Duration::from_secs(30), async || {
        let u = node.sh("systemctl list-units --no-legend --plain 'vks-apt-*' | awk '{print $1}'");
        if u.trim().is_empty() { Err("none".to_owned()) } else { Ok(u.trim().to_owned()) }
    })
    .await;
    node.exec(&["systemctl", "stop", "vks"]);
    assert_eq!(node.unit_prop(&apt_unit, "ActiveState"), "active", "apt-get survives vks stopping");
    node.exec(&["systemctl", "stop", "holder2"]);
    wait_for("the install to finish without vks", Duration::from_secs(60), async || {
        let v = installed_version(&node, "vks-test-late");
        if v == "1.0" { Ok(()) } else { Err(v) }
    })
    .await;
    node.exec(&["systemctl", "start", "vks"]);
    wait_phase(&client, &ns.name, "late", "Running", PULL).await;
    assert_eq!(node.sh("dpkg --audit").trim(), "", "dpkg was not interrupted");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run (and Debian's archive)"]
async fn the_seed_pod_uptimed_runs_from_debians_package() {
    let node = Node::up("img-uptimed");
    let ns = Namespace::new("img-uptimed");
    let client = client().await;
    assert_eq!(installed_version(&node, "uptimed"), "", "the node starts without uptimed");

    // k3s/uptimed.yaml, as the README demo applies it, placed on this node.
    let text = std::fs::read_to_string(repo().join("k3s/uptimed.yaml")).unwrap();
    let mut manifest: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    manifest["spec"]["nodeName"] = json!(node.name);
    manifest["metadata"]["namespace"] = json!(ns.name);
    create_pod(&client, &ns.name, manifest).await;
    let p = wait_phase(&client, &ns.name, "uptimed", "Running", Duration::from_secs(300)).await;
    let s = status(&p, "uptimed").unwrap();
    assert!(s.image_id.starts_with("deb://uptimed=1:0.4"), "{}", s.image_id);

    // Installing did not start uptimed: only the pod's unit runs it.
    assert_eq!(node.unit_prop("uptimed.service", "ExecMainStartTimestampMonotonic"), "0");
    assert_eq!(node.sh("systemctl is-enabled uptimed.service || true").trim(), "masked");
    let unit = unit_name(&ns.name, "uptimed", "uptimed");
    let pid = node.unit_prop(&unit, "MainPID");
    assert_eq!(node.exec(&["readlink", &format!("/proc/{pid}/exe")]).trim(), "/usr/sbin/uptimed");
    assert_eq!(node.exec(&["ps", "-o", "user=", "-p", &pid]).trim(), "daemon");

    delete_pod(&client, &ns.name, "uptimed", None).await;
    wait_for("uptimed to stop", Duration::from_secs(60), async || {
        let left = node.sh("pgrep -x uptimed || true");
        if left.trim().is_empty() { Ok(()) } else { Err(left) }
    })
    .await;
    assert!(installed_version(&node, "uptimed").starts_with("1:0.4"), "the package stays installed");
}

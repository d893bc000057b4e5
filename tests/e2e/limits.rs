//! Limits and isolation, end to end (issue 13): a pod's `resources` as the cgroup values its
//! container sees, an OOM kill, admission against node allocatable, each `securityContext`
//! field observed from inside the container, pods kept from each other and from the node, and a
//! Debian daemon (uptimed) under the default hardening profile.
//!
//! The test machine's nodes have the hybrid cgroup layout (cgroup v1 controllers); the probes
//! read the v1 files there and the unified (v2) files on a v2 host, and the expected values of
//! both are written out below.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use serde_json::json;

use crate::support::*;

const LONG: Duration = Duration::from_secs(60);

/// A pod pinned to `node` (no scheduler involved).
fn pod(name: &str, node: &Node, spec: serde_json::Value) -> serde_json::Value {
    let mut spec = spec;
    spec["nodeName"] = json!(node.name);
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name }, "spec": spec })
}

fn sh(name: &str, script: &str) -> serde_json::Value {
    json!({ "name": name, "image": "/bin/sh", "command": ["/bin/sh", "-c", script] })
}

fn try_status<'a>(p: &'a Pod, name: &str) -> Result<&'a ContainerStatus, String> {
    let s = p.status.as_ref().ok_or("no status yet")?;
    s.container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == name)
        .ok_or_else(|| format!("no status for container {name} yet: {s:?}"))
}

/// The lines container `unit` wrote that start with `prefix` (its journal), waiting for `n`.
async fn lines(node: &Node, unit: &str, prefix: &str, n: usize) -> Vec<String> {
    wait_for(&format!("{n} line(s) {prefix:?} from {unit}"), Duration::from_secs(30), async || {
        let out = node.exec_output(&["journalctl", "-u", unit, "-o", "cat", "--no-pager"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let got: Vec<String> = text.lines().filter(|l| l.starts_with(prefix)).map(str::to_owned).collect();
        if got.len() >= n { Ok(got) } else { Err(text) }
    })
    .await
}

/// `key=value` words of a line.
fn fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace().filter_map(|w| w.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// The pod's events: (reason, message).
fn events(ns: &str, pod: &str) -> Vec<(String, String)> {
    let out =
        kubectl(&["get", "events", "-n", ns, "--field-selector", &format!("involvedObject.name={pod}"), "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["reason"].as_str().unwrap_or("").to_owned(), e["message"].as_str().unwrap_or("").to_owned()))
        .collect()
}

/// Prints the cgroup values of the container's own cgroup, as the container sees them: the
/// unified files on a cgroup v2 host, the memory and cpu controllers' files on a v1 (hybrid)
/// host.
const CGROUP_PROBE: &str = r#"
if [ -e /sys/fs/cgroup/cgroup.controllers ]; then
  d=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
  echo "cgroup=v2 memory.max=$(cat $d/memory.max) memory.low=$(cat $d/memory.low) cpu.max=$(tr ' ' / < $d/cpu.max) cpu.weight=$(cat $d/cpu.weight)"
else
  m=/sys/fs/cgroup/memory$(awk -F: '$2=="memory" {print $3}' /proc/self/cgroup)
  cp=$(awk -F: '$2 ~ /(^|,)cpu(,|$)/ {print $3}' /proc/self/cgroup)
  for h in /sys/fs/cgroup/cpu /sys/fs/cgroup/cpu,cpuacct; do [ -e "$h$cp/cpu.shares" ] && c=$h$cp; done
  echo "cgroup=v1 memory.limit_in_bytes=$(cat $m/memory.limit_in_bytes) cpu.cfs_quota_us=$(cat $c/cpu.cfs_quota_us) cpu.cfs_period_us=$(cat $c/cpu.cfs_period_us) cpu.shares=$(cat $c/cpu.shares)"
fi
exec sleep 3600
"#;

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn resources_are_the_cgroup_values_the_container_sees() {
    let node = Node::up("lim-cgroups");
    let ns = Namespace::new("lim-cgroups");
    let client = client().await;

    // Burstable: requests below limits. limits.cpu 750m -> CPUQuota=75% (quota 75 ms per
    // 100 ms period); limits.memory 64Mi -> MemoryMax; requests.cpu 500m -> the kubelet's 512
    // shares (CPUWeight=50 on v2); requests.memory 32Mi -> MemoryLow (v2 only).
    let mut c = sh("c", CGROUP_PROBE);
    c["resources"] =
        json!({ "requests": { "cpu": "500m", "memory": "32Mi" }, "limits": { "cpu": "750m", "memory": "64Mi" } });
    create_pod(&client, &ns.name, pod("burst", &node, json!({ "containers": [c] }))).await;
    // Guaranteed (limits only: requests default to them), and BestEffort.
    let mut g = sh("g", CGROUP_PROBE);
    g["resources"] = json!({ "limits": { "cpu": "200m", "memory": "48Mi" } });
    create_pod(&client, &ns.name, pod("guar", &node, json!({ "containers": [g] }))).await;
    create_pod(&client, &ns.name, pod("best", &node, json!({ "containers": [sh("b", CGROUP_PROBE)] }))).await;

    let mut uids = BTreeMap::new();
    for (name, qos) in [("burst", "Burstable"), ("guar", "Guaranteed"), ("best", "BestEffort")] {
        let p = wait_phase(&client, &ns.name, name, "Running", LONG).await;
        assert_eq!(p.status.as_ref().unwrap().qos_class.as_deref(), Some(qos), "{name}");
        uids.insert(name, p.metadata.uid.clone().unwrap().replace('-', "_"));
    }

    let seen = |unit: String| {
        let node = &node;
        async move { fields(&lines(node, &unit, "cgroup=", 1).await[0]) }
    };
    let burst = seen(unit_name(&ns.name, "burst", "c")).await;
    let guar = seen(unit_name(&ns.name, "guar", "g")).await;
    let best = seen(unit_name(&ns.name, "best", "b")).await;
    eprintln!("seen inside the containers:\n  burst {burst:?}\n  guar {guar:?}\n  best {best:?}");
    let want = |m: &[(&str, &str)]| m.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
    if burst["cgroup"] == "v1" {
        let unlimited_mem = best["memory.limit_in_bytes"].clone();
        assert!(unlimited_mem.parse::<u64>().unwrap() > 1 << 40, "no memory limit: {unlimited_mem}");
        let v1 = |mem: &str, quota: &str, shares: &str| {
            want(&[
                ("cgroup", "v1"),
                ("memory.limit_in_bytes", mem),
                ("cpu.cfs_quota_us", quota),
                ("cpu.cfs_period_us", "100000"),
                ("cpu.shares", shares),
            ])
        };
        assert_eq!(burst, v1("67108864", "75000", "512"));
        // 200m -> 204 shares, as CPUWeight=20 (200 * 1024 / 1000 = 204.8 -> 204 -> 19.9 -> 20).
        assert_eq!(guar, v1("50331648", "20000", "204"));
        // BestEffort: the kubelet's minimum of 2 shares is weight 1 -> 10 shares on v1 (systemd's
        // smallest weight), no quota.
        assert_eq!(best, v1(&unlimited_mem, "-1", "10"));
    } else {
        let v2 = |max: &str, low: &str, cpu: &str, weight: &str| {
            want(&[
                ("cgroup", "v2"),
                ("memory.max", max),
                ("memory.low", low),
                ("cpu.max", cpu),
                ("cpu.weight", weight),
            ])
        };
        assert_eq!(burst, v2("67108864", "33554432", "75000/100000", "50"));
        assert_eq!(guar, v2("50331648", "50331648", "20000/100000", "20"));
        assert_eq!(best, v2("max", "0", "max/100000", "1"));
    }

    // The slices: vks.slice > QoS slice > pod slice (its identity in the description) >
    // the container's slice > the unit, as the kubelet's kubepods cgroups.
    let uid = &uids["burst"];
    let pod_slice = format!("vks-burstable-pod{uid}.slice");
    let cg = node.unit_prop(&unit_name(&ns.name, "burst", "c"), "ControlGroup");
    assert_eq!(
        cg,
        format!(
            "/vks.slice/vks-burstable.slice/{pod_slice}/vks-burstable-pod{uid}-c.slice/{}",
            unit_name(&ns.name, "burst", "c")
        )
    );
    let desc = node.unit_prop(&pod_slice, "Description");
    assert!(desc.contains(&format!("{}/burst", ns.name)), "{desc}");
    // The pod slice holds the pod's totals (here its one container's).
    assert_eq!(node.unit_prop(&pod_slice, "MemoryMax"), "67108864");
    assert_eq!(node.unit_prop(&pod_slice, "CPUQuotaPerSecUSec"), "750ms");
    let guar_cg = node.unit_prop(&unit_name(&ns.name, "guar", "g"), "ControlGroup");
    assert!(guar_cg.starts_with(&format!("/vks.slice/vks-pod{}.slice/", uids["guar"])), "{guar_cg}");
    let best_cg = node.unit_prop(&unit_name(&ns.name, "best", "b"), "ControlGroup");
    assert!(best_cg.starts_with("/vks.slice/vks-besteffort.slice/vks-besteffort-pod"), "{best_cg}");

    // Admission against node allocatable: a pod asking for more CPU than the node has is
    // refused as the kubelet refuses it (it is placed with nodeName, past the scheduler).
    let mut big = sh("c", "exec sleep 3600");
    big["resources"] = json!({ "requests": { "cpu": "500" } });
    create_pod(&client, &ns.name, pod("too-big", &node, json!({ "containers": [big] }))).await;
    let p = wait_phase(&client, &ns.name, "too-big", "Failed", LONG).await;
    let s = p.status.unwrap();
    assert_eq!(s.reason.as_deref(), Some("OutOfcpu"), "{:?}", s.message);
    assert!(s.message.as_deref().unwrap_or("").contains("cpu, requested: 500000"), "{:?}", s.message);

    // A deleted pod's slices go with it.
    delete_pod(&client, &ns.name, "burst", Some(0)).await;
    wait_for("the pod slice to be removed", LONG, async || {
        let files = node.sh("ls /run/systemd/system");
        if files.contains(&pod_slice.replace(".slice", "")) { Err(files) } else { Ok(()) }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn a_container_over_its_memory_limit_is_oomkilled() {
    let node = Node::up("lim-oom");
    let ns = Namespace::new("lim-oom");
    let client = client().await;
    // tail buffers a line that never ends: it grows until the kernel kills it at 32Mi.
    let mut hog = json!({ "name": "hog", "image": "/usr/bin/tail", "command": ["/usr/bin/tail", "/dev/zero"] });
    hog["resources"] = json!({ "limits": { "memory": "32Mi" } });
    create_pod(&client, &ns.name, pod("hog", &node, json!({ "restartPolicy": "Never", "containers": [hog] }))).await;
    let p = wait_phase(&client, &ns.name, "hog", "Failed", LONG).await;
    let t = try_status(&p, "hog").unwrap().state.clone().unwrap().terminated.unwrap();
    eprintln!("terminated: {t:?}");
    assert_eq!((t.reason.as_deref(), t.exit_code), (Some("OOMKilled"), 137));
    let ev = wait_for("an OOMKilled event", Duration::from_secs(20), async || {
        let ev = events(&ns.name, "hog");
        ev.iter().find(|(r, _)| r == "OOMKilled").cloned().ok_or(format!("{ev:?}"))
    })
    .await;
    assert!(ev.1.contains("32Mi"), "{ev:?}");

    // A SIGKILL from outside under no memory pressure is not an OOM kill.
    let mut calm = sh("calm", "exec sleep 3600");
    calm["resources"] = json!({ "limits": { "memory": "32Mi" } });
    create_pod(&client, &ns.name, pod("calm", &node, json!({ "restartPolicy": "Never", "containers": [calm] }))).await;
    wait_phase(&client, &ns.name, "calm", "Running", LONG).await;
    node.exec(&["systemctl", "kill", "-s", "SIGKILL", &unit_name(&ns.name, "calm", "calm")]);
    let p = wait_phase(&client, &ns.name, "calm", "Failed", LONG).await;
    let t = try_status(&p, "calm").unwrap().state.clone().unwrap().terminated.unwrap();
    assert_eq!((t.reason.as_deref(), t.exit_code), (Some("Error"), 137));
}

/// Prints what the container runs as and with, from inside.
const ID_PROBE: &str = r#"
echo "ids uid=$(id -u) gid=$(id -g) groups=$(id -G | tr ' ' ,)"
echo "status $(grep -E '^(CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\t' | tr ':' = | tr '\n' ' ')"
echo "syscall $(python3 -c 'import ctypes; l = ctypes.CDLL(None, use_errno=True); r = l.adjtimex(ctypes.create_string_buffer(512)); print("adjtimex=%d errno=%d" % (r, ctypes.get_errno()))')"
if touch /var/vks-write-probe 2>/dev/null; then echo "write var=ok"; rm -f /var/vks-write-probe; else echo "write var=refused"; fi
if touch /tmp/vks-write-probe 2>/dev/null; then echo "write tmp=ok"; else echo "write tmp=refused"; fi
exec sleep 3600
"#;

fn cap_bits(hex: &str) -> u64 {
    u64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("{hex:?}: {e}"))
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn security_context_fields_are_seen_from_inside() {
    let node = Node::up("lim-secctx");
    let ns = Namespace::new("lim-secctx");
    let client = client().await;
    let with = |name: &str, ctx: serde_json::Value| {
        let mut c = sh(name, ID_PROBE);
        c["securityContext"] = ctx;
        c
    };
    // Default profile; pod-level IDs; a non-root container with only NET_BIND_SERVICE, no
    // privilege escalation, RuntimeDefault seccomp; a root container with a read-only root.
    let spec = json!({
        "securityContext": { "runAsUser": 1234, "runAsGroup": 2345, "supplementalGroups": [3456] },
        "containers": [
            with("user", json!({ "allowPrivilegeEscalation": false, "seccompProfile": { "type": "RuntimeDefault" },
                                  "capabilities": { "drop": ["ALL"], "add": ["NET_BIND_SERVICE"] } })),
            with("rofs", json!({ "runAsUser": 0, "runAsGroup": 0, "readOnlyRootFilesystem": true })),
            with("rwfs", json!({ "runAsUser": 0, "runAsGroup": 0 })),
        ],
    });
    create_pod(&client, &ns.name, pod("sec", &node, spec)).await;
    // The profile off (annotation): the fields alone make the difference.
    let mut open = pod(
        "open",
        &node,
        json!({ "containers": [
            with("plain", json!({})),
            with("noesc", json!({ "allowPrivilegeEscalation": false, "seccompProfile": { "type": "RuntimeDefault" } })),
        ]}),
    );
    open["metadata"]["annotations"] = json!({ "vks.io/hardening": "off" });
    create_pod(&client, &ns.name, open).await;
    wait_phase(&client, &ns.name, "sec", "Running", LONG).await;
    wait_phase(&client, &ns.name, "open", "Running", LONG).await;

    let probe = |pod: &'static str, c: &'static str| {
        let (node, ns) = (&node, ns.name.clone());
        async move {
            let unit = unit_name(&ns, pod, c);
            let mut all = BTreeMap::new();
            for prefix in ["ids ", "status ", "syscall ", "write var", "write tmp"] {
                all.extend(fields(&lines(node, &unit, prefix, 1).await[0]));
            }
            eprintln!("{pod}/{c}: {all:?}");
            all
        }
    };
    let user = probe("sec", "user").await;
    assert_eq!((user["uid"].as_str(), user["gid"].as_str()), ("1234", "2345"));
    assert_eq!(user["groups"], "2345,3456");
    const NET_BIND_SERVICE: u64 = 1 << 10;
    assert_eq!(cap_bits(&user["CapBnd"]), NET_BIND_SERVICE);
    assert_eq!(cap_bits(&user["CapAmb"]), NET_BIND_SERVICE);
    assert_eq!(cap_bits(&user["CapEff"]), NET_BIND_SERVICE);
    assert_eq!((user["NoNewPrivs"].as_str(), user["Seccomp"].as_str()), ("1", "2"));
    assert_eq!(user["adjtimex"], "-1", "a system call outside @system-service is refused");
    assert_eq!(user["errno"], "1", "with EPERM");

    let rofs = probe("sec", "rofs").await;
    assert_eq!((rofs["uid"].as_str(), rofs["gid"].as_str()), ("0", "0"));
    assert_eq!(rofs["var"], "refused", "readOnlyRootFilesystem");
    assert_eq!(rofs["tmp"], "ok", "the private /tmp stays writable");
    let rwfs = probe("sec", "rwfs").await;
    assert_eq!(rwfs["var"], "ok");
    // A root container's bounding set: the runtimes' default, without CAP_KILL, CAP_SYS_ADMIN...
    const CAP_CHOWN: u64 = 1;
    const CAP_KILL: u64 = 1 << 5;
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    const CAP_SYS_PTRACE: u64 = 1 << 19;
    let bnd = cap_bits(&rwfs["CapBnd"]);
    assert_eq!(bnd & (CAP_KILL | CAP_SYS_ADMIN | CAP_SYS_PTRACE), 0, "{bnd:x}");
    assert_ne!(bnd & CAP_CHOWN, 0, "{bnd:x}");

    let plain = probe("open", "plain").await;
    assert_eq!((plain["NoNewPrivs"].as_str(), plain["Seccomp"].as_str()), ("0", "0"));
    assert_eq!(plain["errno"], "0", "adjtimex is allowed without the filter: {plain:?}");
    let noesc = probe("open", "noesc").await;
    assert_eq!((noesc["NoNewPrivs"].as_str(), noesc["Seccomp"].as_str()), ("1", "2"));
    assert_eq!(noesc["errno"], "1");

    // runAsNonRoot refuses root: numeric, and a user named by the annotation.
    let mut c = sh("c", "exec sleep 3600");
    c["securityContext"] = json!({ "runAsNonRoot": true, "runAsUser": 0 });
    create_pod(&client, &ns.name, pod("root-num", &node, json!({ "containers": [c] }))).await;
    let mut named = pod(
        "root-named",
        &node,
        json!({ "securityContext": { "runAsNonRoot": true }, "containers": [sh("c", "exec sleep 3600")] }),
    );
    named["metadata"]["annotations"] = json!({ "vks.io/user": "root" });
    create_pod(&client, &ns.name, named).await;
    for name in ["root-num", "root-named"] {
        let (reason, message) = wait_for(&format!("{name} refused"), LONG, async || {
            let p = get_pod(&client, &ns.name, name).await.ok_or("gone")?;
            let s = try_status(&p, "c")?;
            let w = s.state.as_ref().and_then(|s| s.waiting.clone()).ok_or(format!("{s:?}"))?;
            match w.reason.as_deref() {
                Some("CreateContainerConfigError") => Ok((w.reason.unwrap(), w.message.unwrap_or_default())),
                _ => Err(format!("{w:?}")),
            }
        })
        .await;
        eprintln!("{name}: {reason}: {message}");
        assert!(message.contains("runAsNonRoot") || message.contains("non-root"), "{message}");
        assert_eq!(node.unit_prop(&unit_name(&ns.name, name, "c"), "ActiveState"), "inactive");
    }
    // runAsNonRoot with nobody naming a user: a user allocated for the pod.
    let dynamic = json!({ "securityContext": { "runAsNonRoot": true }, "containers": [sh("c", ID_PROBE)] });
    create_pod(&client, &ns.name, pod("dyn", &node, dynamic)).await;
    wait_phase(&client, &ns.name, "dyn", "Running", LONG).await;
    let dynamic = probe("dyn", "c").await;
    assert_ne!(dynamic["uid"], "0");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn pods_are_kept_from_each_other_and_from_the_node() {
    let node = Node::up("lim-isolation");
    let ns_a = Namespace::new("lim-iso-a");
    let ns_b = Namespace::new("lim-iso-b");
    let client = client().await;

    // Pod B, another namespace's, as a user of its own, with a Secret volume, an emptyDir and an
    // attach input (`stdin: true`, a FIFO under /run/vks-stdin).
    kubectl(&["create", "secret", "generic", "b-secret", "-n", &ns_b.name, "--from-literal=b-key=secret-of-b"]);
    let mut b = sh("b", "echo secret-of-b > /tmp/b-private; echo data-of-b > /data/b-file; exec sleep 3600");
    b["securityContext"] = json!({ "runAsUser": 4321 });
    b["stdin"] = json!(true);
    b["volumeMounts"] = json!([{ "name": "d", "mountPath": "/data" }, { "name": "s", "mountPath": "/secret" }]);
    let volumes = json!([{ "name": "d", "emptyDir": {} }, { "name": "s", "secret": { "secretName": "b-secret" } }]);
    create_pod(&client, &ns_b.name, pod("b", &node, json!({ "containers": [b], "volumes": volumes }))).await;
    wait_phase(&client, &ns_b.name, "b", "Running", LONG).await;
    let unit_b = unit_name(&ns_b.name, "b", "b");
    let pid_b = node.unit_prop(&unit_b, "MainPID");

    // vks's own files on the node, and pod B's volumes (under vks's pod directories).
    let vks_files = wait_for("pod b's volume files", LONG, async || {
        let files = node.sh("find /etc/vks /var/lib/vks /run/vks -type f 2>/dev/null | sort");
        let has = |name: &str| files.lines().any(|f| f.ends_with(name));
        if has("/b-file") && has("/b-key") { Ok(files) } else { Err(files) }
    })
    .await;
    let vks_files: Vec<&str> = vks_files.lines().collect();
    assert!(vks_files.iter().any(|f| f.starts_with("/etc/vks/")), "{vks_files:?}");
    assert!(vks_files.iter().any(|f| f.starts_with("/var/lib/vks/")), "{vks_files:?}");

    // Pod A (root, default profile) tries to reach them, B's unit file (its environment), B's
    // process and B's unit.
    let mut targets: Vec<String> = vks_files.iter().map(|s| s.to_string()).collect();
    targets.push(format!("/run/systemd/system/{unit_b}"));
    targets.push(format!("/proc/{pid_b}/environ"));
    targets.push(format!("/proc/{pid_b}/root/tmp/b-private"));
    let script = format!(
        "for f in {targets}; do if cat \"$f\" >/dev/null 2>&1; then echo \"read $f=ok\"; else echo \"read $f=refused\"; fi; done\n\
         ps -e -o pid= | grep -qw {pid_b} && echo 'pid seen=visible' || echo 'pid seen=hidden'\n\
         test -e /run/vks-stdin/{unit_b}/stdin && echo 'stdin fifo=visible' || echo 'stdin fifo=hidden'\n\
         kill -0 {pid_b} 2>/dev/null && echo 'pid signal=ok' || echo 'pid signal=refused'\n\
         systemctl stop {unit_b} >/dev/null 2>&1 && echo 'unit stop=ok' || echo 'unit stop=refused'\n\
         systemctl kill -s KILL {unit_b} >/dev/null 2>&1 && echo 'unit kill=ok' || echo 'unit kill=refused'\n\
         busctl list >/dev/null 2>&1 && echo 'unit dbus=ok' || echo 'unit dbus=refused'\n\
         echo done\nexec sleep 3600",
        targets = targets.join(" ")
    );
    create_pod(&client, &ns_a.name, pod("a", &node, json!({ "containers": [sh("a", &script)] }))).await;
    // The same as a user and group of its own.
    let mut c = sh("c", &script);
    c["securityContext"] = json!({ "runAsUser": 2000, "runAsGroup": 2000 });
    create_pod(&client, &ns_a.name, pod("c", &node, json!({ "containers": [c] }))).await;
    // The same from a privileged pod, which gets the host as it is: the probe can tell (its
    // unit commands are left out: it could stop pod b).
    let mut p = sh("p", &script.replace("systemctl stop", "true").replace("systemctl kill", "true"));
    p["securityContext"] = json!({ "privileged": true });
    create_pod(&client, &ns_a.name, pod("priv", &node, json!({ "containers": [p] }))).await;

    let unit_a = unit_name(&ns_a.name, "a", "a");
    lines(&node, &unit_a, "done", 1).await;
    let out = |unit: &str| {
        let text = node.exec(&["journalctl", "-u", unit, "-o", "cat", "--no-pager"]);
        let mut m = BTreeMap::new();
        for l in text.lines() {
            m.extend(fields(l.split_once(' ').map_or("", |(_, r)| r)));
        }
        m
    };
    let a = out(&unit_a);
    eprintln!("pod a: {a:?}");
    for t in &targets {
        assert_eq!(a.get(t).map(String::as_str), Some("refused"), "pod a reading {t}: {a:?}");
    }
    // ProtectProc=invisible mounts /proc with hidepid=invisible, whose exempt group is 0
    // (procfs's default `gid=`, which systemd does not set): a container in group 0 still sees
    // other pods' PIDs, but cannot read their /proc files or signal them (no CAP_KILL, no
    // CAP_SYS_PTRACE). A container in another group does not see them at all (pod c below).
    assert_eq!(a["seen"], "visible", "group 0 is exempt from hidepid");
    assert_eq!(a["fifo"], "hidden", "pod b's attach input");
    for what in ["signal", "stop", "kill", "dbus"] {
        assert_eq!(a[what], "refused", "unit {what}: {a:?}");
    }
    let unit_c = unit_name(&ns_a.name, "c", "c");
    lines(&node, &unit_c, "done", 1).await;
    let c = out(&unit_c);
    eprintln!("pod c (user and group 2000): {c:?}");
    for t in &targets {
        assert_eq!(c.get(t).map(String::as_str), Some("refused"), "pod c reading {t}: {c:?}");
    }
    assert_eq!(c["seen"], "hidden", "another user's process is invisible outside group 0");
    assert_eq!(c["fifo"], "hidden", "pod b's attach input");
    for what in ["signal", "stop", "kill", "dbus"] {
        assert_eq!(c[what], "refused", "unit {what}: {c:?}");
    }
    assert_eq!(node.unit_prop(&unit_b, "ActiveState"), "active");
    assert_eq!(node.unit_prop(&unit_b, "MainPID"), pid_b, "pod b was not touched");

    let unit_p = unit_name(&ns_a.name, "priv", "p");
    lines(&node, &unit_p, "done", 1).await;
    let p = out(&unit_p);
    eprintln!("privileged pod: {p:?}");
    assert_eq!(p.get("/etc/vks/config.toml").map(String::as_str), Some("ok"), "{p:?}");
    let b_file = targets.iter().find(|t| t.ends_with("/b-file")).unwrap();
    assert_eq!(p.get(b_file).map(String::as_str), Some("ok"), "{p:?}");
    assert_eq!(p["seen"], "visible");
    assert_eq!(p["fifo"], "visible", "the host as it is");
    assert_eq!(p["signal"], "ok", "kill -0: it may signal pod b");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run (and Debian's archive)"]
async fn uptimed_runs_under_the_default_profile() {
    let node = Node::up("lim-uptimed");
    let ns = Namespace::new("lim-uptimed");
    let client = client().await;
    let text = std::fs::read_to_string(repo().join("k3s/uptimed.yaml")).unwrap();
    let mut manifest: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    manifest["spec"]["nodeName"] = json!(node.name);
    manifest["metadata"]["namespace"] = json!(ns.name);
    create_pod(&client, &ns.name, manifest.clone()).await;
    wait_phase(&client, &ns.name, "uptimed", "Running", Duration::from_secs(300)).await;
    let unit = unit_name(&ns.name, "uptimed", "uptimed");
    for (prop, want) in [
        ("ProtectSystem", "full"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("ProtectProc", "invisible"),
        ("User", "daemon"),
    ] {
        assert_eq!(node.unit_prop(&unit, prop), want, "{prop}");
    }
    let pid = node.unit_prop(&unit, "MainPID");
    hold_for("uptimed to keep running", Duration::from_secs(5), async || {
        match node.unit_prop(&unit, "MainPID") == pid && node.unit_prop(&unit, "ActiveState") == "active" {
            true => Ok(()),
            false => Err(node.unit_prop(&unit, "ActiveState")),
        }
    })
    .await;
    // It does its work: its records file is written.
    wait_for("uptimed to write its records", Duration::from_secs(30), async || {
        let out = node.exec_output(&["test", "-s", "/var/spool/uptimed/records"]);
        out.status.success().then_some(()).ok_or("no records yet".to_owned())
    })
    .await;
    let p = get_pod(&client, &ns.name, "uptimed").await.unwrap();
    assert_eq!(try_status(&p, "uptimed").unwrap().restart_count, 0);

    // The exposure scores (systemd-analyze security) of uptimed and of a plain binary, under
    // the default profile and with it off.
    let mut open = manifest.clone();
    open["metadata"] = json!({ "name": "uptimed-open", "namespace": ns.name,
                               "annotations": { "vks.io/hardening": "off" } });
    create_pod(&client, &ns.name, open).await;
    create_pod(&client, &ns.name, pod("plain", &node, json!({ "containers": [sh("c", "exec sleep 3600")] }))).await;
    let mut plain_open = pod("plain-open", &node, json!({ "containers": [sh("c", "exec sleep 3600")] }));
    plain_open["metadata"]["annotations"] = json!({ "vks.io/hardening": "off" });
    create_pod(&client, &ns.name, plain_open).await;
    let mut score = BTreeMap::new();
    for name in ["uptimed", "uptimed-open", "plain", "plain-open"] {
        let ev = wait_for(&format!("the exposure event of {name}"), Duration::from_secs(120), async || {
            let ev = events(&ns.name, name);
            ev.iter().find(|(r, _)| r == "SecurityExposure").cloned().ok_or(format!("{ev:?}"))
        })
        .await;
        eprintln!("{name}: {}", ev.1);
        let s: f64 = ev.1.split("exposure ").nth(1).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap();
        score.insert(name, s);
    }
    assert!(score["uptimed"] < score["uptimed-open"], "{score:?}");
    assert!(score["plain"] < score["plain-open"], "{score:?}");
    assert!(score["plain"] <= 5.0, "the default profile makes a plain binary at most MEDIUM: {score:?}");
}

/// A v1 cgroup file of a unit, or its v2 counterpart, read from the node.
fn cgroup_value(node: &Node, unit: &str, v1: (&str, &str), v2: &str) -> String {
    let cg = node.unit_prop(unit, "ControlGroup");
    let script = format!(
        "if [ -e /sys/fs/cgroup/cgroup.controllers ]; then cat /sys/fs/cgroup{cg}/{v2}; \
         else cat /sys/fs/cgroup/{}{cg}/{}; fi",
        v1.0, v1.1
    );
    node.sh(&script).trim().to_owned()
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn a_resize_is_applied_live_without_a_restart() {
    let node = Node::up("lim-resize");
    let ns = Namespace::new("lim-resize");
    let client = client().await;
    let mut c = sh("c", "exec sleep 3600");
    c["resources"] = json!({ "limits": { "cpu": "200m", "memory": "64Mi" } });
    create_pod(&client, &ns.name, pod("r", &node, json!({ "containers": [c] }))).await;
    wait_phase(&client, &ns.name, "r", "Running", LONG).await;
    let unit = unit_name(&ns.name, "r", "c");
    let invocation = node.unit_prop(&unit, "InvocationID");
    let memory = || cgroup_value(&node, &unit, ("memory", "memory.limit_in_bytes"), "memory.max");
    let quota = || cgroup_value(&node, &unit, ("cpu", "cpu.cfs_quota_us"), "cpu.max");
    assert_eq!(memory(), "67108864");
    assert!(quota().starts_with("20000"), "{}", quota());

    let patch = json!({ "spec": { "containers": [{ "name": "c", "resources": {
        "limits": { "cpu": "500m", "memory": "128Mi" }, "requests": { "cpu": "500m", "memory": "128Mi" } } }] } });
    kubectl(&["patch", "pod", "r", "-n", &ns.name, "--subresource", "resize", "-p", &patch.to_string()]);
    wait_for("the new limits in the container's cgroup", Duration::from_secs(30), async || {
        let (m, q) = (memory(), quota());
        if m == "134217728" && q.starts_with("50000") { Ok(()) } else { Err(format!("memory {m}, quota {q}")) }
    })
    .await;
    assert_eq!(node.unit_prop(&unit, "InvocationID"), invocation, "not restarted");
    let p = wait_for("the applied resources in the status", Duration::from_secs(30), async || {
        let p = get_pod(&client, &ns.name, "r").await.ok_or("gone")?;
        let s = try_status(&p, "c")?;
        let limits = s.resources.as_ref().and_then(|r| r.limits.clone()).unwrap_or_default();
        match limits.get("memory") {
            Some(q) if q.0 == "134217728" => Ok(p),
            _ => Err(format!("{s:?}")),
        }
    })
    .await;
    let s = try_status(&p, "c").unwrap();
    assert_eq!(s.restart_count, 0);
    assert_eq!(s.allocated_resources.as_ref().unwrap()["cpu"].0, "500m");
    let conditions = p.status.unwrap().conditions.unwrap_or_default();
    assert!(!conditions.iter().any(|c| c.type_.starts_with("PodResize")), "{conditions:?}");
    assert!(events(&ns.name, "r").iter().any(|(r, _)| r == "Resized"));
}

//! The invariants of the chaos test, read from the API and from the node: what is lost,
//! orphaned, duplicated or stuck, and whether the node has settled.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use super::LONG_ARGS;
use crate::support::*;

pub(super) fn ready(p: &Pod) -> bool {
    let conds = p.status.as_ref().and_then(|s| s.conditions.as_ref());
    conds.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub(super) fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

pub(super) fn pod_name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

/// A vks unit file in the node: its unit name and `[X-Kubernetes]` identity.
pub(super) struct UnitFile {
    name: String,
    pod_uid: String,
    container: String,
}

pub(super) fn unit_files(node: &Node) -> Vec<UnitFile> {
    let dir = node.root().join("run/systemd/system");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("vks.") || !name.ends_with(".service") {
            continue;
        }
        // A unit file may vanish between the listing and the read: vks removes it.
        let Ok(text) = std::fs::read_to_string(e.path()) else { continue };
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).unwrap_or_default().to_owned();
        out.push(UnitFile { name, pod_uid: field("PodUID="), container: field("ContainerName=") });
    }
    out
}

/// Loaded vks services of pods (not vks itself, not the slices): name -> ActiveState.
pub(super) fn loaded_units(node: &Node) -> BTreeMap<String, String> {
    let out = node.exec(&["systemctl", "list-units", "--all", "--plain", "--no-legend", "--full", "vks.*"]);
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[0] != "vks.service" && f[0].ends_with(".service"))
                .then(|| (f[0].to_owned(), f[2].to_owned()))
        })
        .collect()
}

/// The invariant violations seen now; `unsettled` lists what is still converging (not a
/// violation by itself, but the check waits for it to be empty).
#[derive(Debug, Default)]
pub(super) struct Findings {
    pub lost: Vec<String>,
    pub orphaned: Vec<String>,
    pub duplicated: Vec<String>,
    pub stuck: Vec<String>,
    pub unsettled: Vec<String>,
}

impl Findings {
    pub(super) fn clean(&self) -> bool {
        self.lost.is_empty()
            && self.orphaned.is_empty()
            && self.duplicated.is_empty()
            && self.stuck.is_empty()
            && self.unsettled.is_empty()
    }
}

pub(super) async fn findings(
    node: &Node,
    client: &kube::Client,
    ns: &str,
    kept: &BTreeMap<String, String>,
) -> Findings {
    let mut f = Findings::default();
    let pods = match Api::<Pod>::namespaced(client.clone(), ns).list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(e) => {
            f.unsettled.push(format!("listing pods: {e}"));
            return f;
        }
    };
    let vks = (node.unit_prop("vks", "ActiveState"), node.unit_prop("vks", "SubState"));
    if vks.0 != "active" {
        f.unsettled.push(format!("vks is {vks:?}"));
    }
    match Api::<Deployment>::namespaced(client.clone(), ns).get("web").await {
        Ok(d) => {
            let want = d.spec.replicas.unwrap_or(1);
            let s = d.status.unwrap_or_default();
            let observed = s.observed_generation == d.metadata.generation;
            let counts = [s.replicas, s.updated_replicas, s.ready_replicas, s.available_replicas];
            if !observed || counts.iter().any(|c| c.unwrap_or(0) != want) {
                f.unsettled.push(format!("deployment: want {want}, replicas/updated/ready/available {counts:?}"));
            }
        }
        Err(e) => f.unsettled.push(format!("deployment: {e}")),
    }
    let units = unit_files(node);
    let loaded = loaded_units(node);
    let by_uid: BTreeMap<String, &Pod> = pods.iter().map(|p| (uid(p), p)).collect();
    let mut long_running = 0;
    for p in &pods {
        let name = pod_name(p);
        if p.metadata.deletion_timestamp.is_some() {
            f.stuck.push(format!("{name} ({})", uid(p)));
            continue;
        }
        match phase(p).as_str() {
            "Succeeded" => continue,
            "Running" if ready(p) => {}
            other => {
                f.lost.push(format!("{name}: phase {other}, ready {}", ready(p)));
                continue;
            }
        }
        for c in p.spec.iter().flat_map(|s| &s.containers) {
            let unit = units.iter().find(|u| u.pod_uid == uid(p) && u.container == c.name);
            let state = unit.and_then(|u| loaded.get(&u.name));
            if state.map(String::as_str) != Some("active") {
                f.lost.push(format!(
                    "{name}/{}: Ready in the API, its unit {:?} is {state:?}",
                    c.name,
                    unit.map(|u| &u.name)
                ));
            }
            if c.args.as_deref() == Some(&[LONG_ARGS.to_owned()]) {
                long_running += 1;
            }
        }
    }
    for (name, u) in kept {
        if !by_uid.contains_key(u) {
            f.lost.push(format!("bare pod {name} ({u}) created and never deleted is gone from the API"));
        }
    }
    let mut per_container: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for u in &units {
        if !by_uid.contains_key(&u.pod_uid) {
            f.orphaned.push(format!("{} (pod UID {:?} not in the API)", u.name, u.pod_uid));
        }
        per_container.entry((u.pod_uid.clone(), u.container.clone())).or_default().push(u.name.clone());
    }
    f.duplicated.extend(per_container.into_values().filter(|v| v.len() > 1).map(|v| v.join(" + ")));
    for (name, state) in &loaded {
        if state != "inactive" && state != "failed" && !units.iter().any(|u| &u.name == name) {
            f.orphaned.push(format!("{name} is {state} without a unit file"));
        }
    }
    // Processes: one `sleep 86400` per running long container, none left over from a stopped one.
    let out = node.exec_output(&["pgrep", "-c", "-f", &format!("^(/usr/bin/)?sleep {LONG_ARGS}$")]);
    let procs: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    if procs > long_running {
        f.duplicated.push(format!("{procs} container processes for {long_running} running containers"));
    } else if procs < long_running {
        f.lost.push(format!("{procs} container processes for {long_running} running containers"));
    }
    f
}

/// Waits (with a deadline) for the node to settle with every invariant holding; returns the
/// findings of the last look.
pub(super) async fn settle(node: &Node, client: &kube::Client, ns: &str, kept: &BTreeMap<String, String>) -> Findings {
    let deadline = Instant::now() + within(Duration::from_secs(150));
    let (start, mut shown) = (Instant::now(), Instant::now());
    loop {
        let f = findings(node, client, ns, kept).await;
        if f.clean() {
            eprintln!("chaos: settled in {:.1}s", start.elapsed().as_secs_f64());
            return f;
        }
        if Instant::now() > deadline {
            eprintln!("chaos: not settled after {:.0}s: {f:#?}", start.elapsed().as_secs_f64());
            return f;
        }
        if shown.elapsed() >= Duration::from_secs(15) {
            eprintln!("chaos: settling ({:.0}s): {f:?}", start.elapsed().as_secs_f64());
            shown = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Containers restarted more often than `allowed(pod UID)` (0, or 1 across the reboot).
pub(super) async fn restarts_beyond(client: &kube::Client, ns: &str, allowed: impl Fn(&str) -> i32) -> Vec<String> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns).list(&ListParams::default()).await.unwrap().items;
    let mut out = Vec::new();
    for p in &pods {
        for c in p.status.iter().flat_map(|s| s.container_statuses.iter().flatten()) {
            if c.restart_count > allowed(&uid(p)) {
                let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
                let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string());
                out.push(format!(
                    "{}/{} ({}, created {created:?}): restartCount {}, last run {last:?}",
                    pod_name(p),
                    c.name,
                    uid(p),
                    c.restart_count
                ));
            }
        }
    }
    out
}

/// The checks can fail: a pod the API lost, a unit file of no pod and a stray container process
/// are each seen.
pub(super) async fn self_check(node: &Node, client: &kube::Client, ns: &str) {
    let bogus = BTreeMap::from([("ghost".to_owned(), "00000000-0000-4000-8000-00000000dead".to_owned())]);
    let ghost = format!("/run/systemd/system/vks.{ns}.ghost.c.service");
    node.put_file(&ghost, b"[Service]\nExecStart=/usr/bin/true\n\n[X-Kubernetes]\nPodUID=00000000-0000-4000-8000-00000000dead\nContainerName=c\n");
    node.exec(&["systemd-run", "--unit=chaos-stray", "/usr/bin/sleep", LONG_ARGS]);
    let f = findings(node, client, ns, &bogus).await;
    node.exec(&["systemctl", "stop", "chaos-stray"]);
    node.exec(&["rm", "-f", &ghost]);
    assert!(f.lost.iter().any(|l| l.contains("ghost")), "{f:#?}");
    assert!(f.orphaned.iter().any(|o| o.contains("ghost")), "{f:#?}");
    assert!(f.duplicated.iter().any(|d| d.contains("container processes")), "{f:#?}");
    let f = settle(node, client, ns, &BTreeMap::new()).await;
    assert!(f.clean(), "{f:#?}");
}

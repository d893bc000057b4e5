//! Chaos: pod churn on one node (a Deployment scaled and rolled, bare pods created, deleted and
//! force-deleted) while, at seeded random moments, vks is killed with SIGKILL, D-Bus restarts, the
//! API server is killed and brought back, and the node reboots. Then, once the churn stops and
//! things settle, the invariants: no pod lost, no unit orphaned or duplicated, no needless
//! container restart, nothing stuck Terminating.
//!
//! Two phases, each ending with a settle and a check: A (vks kills, D-Bus restarts, one API
//! server restart: no container may restart, sentinel pods keep their MainPID), then B (one node
//! reboot, then more kills: a container running at the reboot may restart once, no more).
//! `VKS_CHAOS_SEED=N` replays a schedule; `VKS_CHAOS_API=0` leaves the API server alone (for
//! iterating on a cluster other tests share).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::support::*;

mod invariants;
use invariants::{Findings, restarts_beyond, self_check, settle, uid};

const PHASE_A: Duration = Duration::from_secs(90);
const PHASE_B: Duration = Duration::from_secs(45);
/// The image of every long-running container: their processes are counted in the node.
const LONG_ARGS: &str = "86400";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    KillVks,
    /// kill -9 of vks, and D-Bus restarted as soon as systemd has started vks again (while it
    /// adopts the units and sweeps those of pods deleted meanwhile).
    KillVksThenDbus,
    RestartDbus,
    ApiDown,
    ApiUp,
    Reboot,
}

/// The faults of a phase and when they happen (from the phase's start).
fn schedule(rng: &mut fastrand::Rng, phase_b: bool) -> Vec<(Duration, Fault)> {
    let at = |rng: &mut fastrand::Rng, from: u64, to: u64| Duration::from_millis(rng.u64(from * 1000..to * 1000));
    let mut s = Vec::new();
    if phase_b {
        let reboot = at(rng, 5, 15);
        s.push((reboot, Fault::Reboot));
        for _ in 0..2 {
            s.push((reboot + at(rng, 5, 25), Fault::KillVks));
        }
        s.push((reboot + at(rng, 5, 25), Fault::RestartDbus));
    } else {
        for _ in 0..4 {
            s.push((at(rng, 3, 85), Fault::KillVks));
        }
        s.push((at(rng, 3, 85), Fault::RestartDbus));
        s.push((at(rng, 3, 70), Fault::KillVksThenDbus));
        let down = at(rng, 20, 60);
        s.push((down, Fault::ApiDown));
        s.push((down + at(rng, 3, 8), Fault::ApiUp));
    }
    s.sort_by_key(|(t, _)| *t);
    s
}

#[derive(Debug, Default)]
struct Counts {
    vks_kills: u32,
    dbus_restarts: u32,
    api_restarts: u32,
    reboots: u32,
    lost: usize,
    orphaned: usize,
    duplicated: usize,
    needless_restarts: usize,
    stuck_terminating: usize,
}

/// What the churn did.
#[derive(Debug, Default)]
struct ChurnLog {
    ops: u32,
    /// Refused because the name is still taken by a pod being deleted (409).
    name_taken: u32,
    /// Failed otherwise (the API server away, a timeout).
    failed: u32,
    scales: u32,
    rolls: u32,
    deletes: u32,
    force_deletes: u32,
    /// The bare pods it created and did not delete (name -> UID): the API must still have them.
    kept: BTreeMap<String, String>,
}

fn bare_pod(name: &str, node: &str, short: bool) -> Pod {
    let (policy, c) = if short {
        ("OnFailure", json!({ "name": "c", "image": "/bin/sh", "command": ["/bin/sh", "-c", "sleep 1"] }))
    } else {
        ("Always", json!({ "name": "c", "image": "/usr/bin/sleep", "args": [LONG_ARGS] }))
    };
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name, "labels": { "chaos": "bare" } },
        "spec": { "nodeName": node, "automountServiceAccountToken": false, "terminationGracePeriodSeconds": 3,
                  "restartPolicy": policy, "containers": [c] }
    }))
    .unwrap()
}

fn deployment(ns: &str, node: &str, replicas: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: web, namespace: {ns} }}
spec:
  replicas: {replicas}
  strategy: {{ rollingUpdate: {{ maxSurge: 2, maxUnavailable: 1 }} }}
  selector: {{ matchLabels: {{ app: web }} }}
  template:
    metadata: {{ labels: {{ app: web }} }}
    spec:
      nodeSelector: {{ kubernetes.io/hostname: {node} }}
      # A full disk on the test machine taints every node: this test is about chaos, not disk.
      tolerations: [{{ key: node.kubernetes.io/disk-pressure, operator: Exists, effect: NoSchedule }}]
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 5
      initContainers: [{{ name: init, image: /usr/bin/true }}]
      containers:
        - {{ name: web, image: /usr/bin/sleep, args: ["{LONG_ARGS}"] }}
        - {{ name: side, image: /usr/bin/sleep, args: ["{LONG_ARGS}"] }}
"#
    )
}

/// Churns pods until `stop`: one API operation every 0.3-1.2 s, errors counted and ignored (the
/// API server may be down).
async fn churn(
    client: kube::Client,
    ns: String,
    node: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    kept: BTreeMap<String, String>,
) -> ChurnLog {
    let mut rng = fastrand::Rng::with_seed(seed);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let deploys: Api<Deployment> = Api::namespaced(client, &ns);
    let mut log = ChurnLog::default();
    let mut live = kept; // bare pod name -> UID
    while !stop.load(Ordering::Relaxed) {
        log.ops += 1;
        let roll = rng.u32(0..100);
        let free: Vec<String> = (0..8).map(|i| format!("b{i}")).filter(|n| !live.contains_key(n)).collect();
        let op = async {
            if roll < 20 {
                log.scales += 1;
                let patch = json!({ "spec": { "replicas": rng.u32(1..=5) } });
                deploys.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.map(drop)
            } else if roll < 32 {
                log.rolls += 1;
                let patch = json!({ "spec": { "template": { "metadata": { "annotations": { "chaos/roll": log.rolls.to_string() } } } } });
                deploys.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.map(drop)
            } else if roll < 70 && !free.is_empty() {
                let name = &free[rng.usize(..free.len())];
                let p = pods.create(&PostParams::default(), &bare_pod(name, &node, rng.bool())).await?;
                live.insert(name.clone(), p.metadata.uid.unwrap_or_default());
                Ok(())
            } else if let Some(name) = live.keys().nth(rng.usize(..live.len().max(1))).cloned() {
                let force = rng.u32(0..4) == 0;
                let dp = if force {
                    DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }
                } else {
                    DeleteParams::default()
                };
                live.remove(&name);
                if force {
                    log.force_deletes += 1
                } else {
                    log.deletes += 1
                }
                pods.delete(&name, &dp).await.map(drop)
            } else {
                Ok(())
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), op).await {
            Ok(Ok(())) => {}
            Ok(Err(kube::Error::Api(e))) if e.code == 404 => {}
            Ok(Err(kube::Error::Api(e))) if e.code == 409 => log.name_taken += 1,
            _ => log.failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1200))).await;
    }
    log.kept = live;
    log
}

/// MainPID and InvocationID of the sentinel pods' containers.
fn sentinel_runs(node: &Node, ns: &str) -> BTreeMap<String, (String, String)> {
    let mut runs = BTreeMap::new();
    for pod in ["keep0", "keep1"] {
        for c in ["a", "b"] {
            let u = unit_name(ns, pod, c);
            runs.insert(u.clone(), (node.unit_prop(&u, "MainPID"), node.unit_prop(&u, "InvocationID")));
        }
    }
    runs
}

struct Chaos<'a> {
    node: &'a Node,
    client: kube::Client,
    ns: String,
    counts: Counts,
    /// UIDs of the pods the API had just before the reboot.
    at_reboot: BTreeSet<String>,
    start: Instant,
}

impl Chaos<'_> {
    async fn inject(&mut self, fault: Fault) {
        let t = self.start.elapsed().as_secs_f64();
        match fault {
            Fault::KillVks | Fault::KillVksThenDbus => {
                let node = self.node;
                let pid =
                    wait_for("vks to have a main process (to kill it)", within(Duration::from_secs(60)), async || {
                        let pid = node.unit_prop("vks", "MainPID");
                        if pid != "0" { Ok(pid) } else { Err(format!("vks {}", node.unit_prop("vks", "ActiveState"))) }
                    })
                    .await;
                let state = node.unit_prop("vks", "ActiveState");
                node.exec(&["kill", "-9", &pid]);
                self.counts.vks_kills += 1;
                eprintln!("chaos +{t:5.1}s: kill -9 vks (pid {pid}, {state})");
                if fault == Fault::KillVksThenDbus {
                    // Polled inside the node: the adoption takes a few ms, `k3s/node exec` more.
                    let script = format!(
                        "for i in $(seq 3000); do p=$(systemctl show -p MainPID --value vks); \
                         [ \"$p\" != 0 ] && [ \"$p\" != {pid} ] && exec systemctl restart dbus; sleep 0.02; done; exit 1"
                    );
                    node.sh(&script);
                    self.counts.dbus_restarts += 1;
                    let t = self.start.elapsed().as_secs_f64();
                    eprintln!("chaos +{t:5.1}s: systemctl restart dbus as vks starts again");
                }
            }
            Fault::RestartDbus => {
                self.node.exec(&["systemctl", "restart", "dbus"]);
                self.counts.dbus_restarts += 1;
                eprintln!("chaos +{t:5.1}s: systemctl restart dbus");
            }
            Fault::ApiDown => {
                let pid = super::apiserver_pid();
                check(std::process::Command::new("kill").args(["-9", &pid.to_string()]));
                eprintln!("chaos +{t:5.1}s: kill -9 kube-apiserver (pid {pid})");
            }
            Fault::ApiUp => {
                check(std::process::Command::new(repo().join("k3s/cluster")).arg("up"));
                self.counts.api_restarts += 1;
                eprintln!(
                    "chaos +{t:5.1}s: k3s/cluster up: API server back ({:.1}s)",
                    self.start.elapsed().as_secs_f64() - t
                );
            }
            Fault::Reboot => {
                // A pod that exists at any time during the reboot may legitimately restart once
                // (a pod created while the node shuts down may already have been started).
                let api = Api::<Pod>::namespaced(self.client.clone(), &self.ns);
                self.at_reboot = api.list(&ListParams::default()).await.unwrap().items.iter().map(uid).collect();
                self.node.reboot();
                self.at_reboot.extend(api.list(&ListParams::default()).await.unwrap().items.iter().map(uid));
                self.counts.reboots += 1;
                let took = self.start.elapsed().as_secs_f64() - t;
                eprintln!(
                    "chaos +{t:5.1}s: node rebooted ({took:.1}s, up again at {})",
                    k8s_openapi::jiff::Timestamp::now()
                );
            }
        }
    }

    /// Runs one phase: the churn for `length`, the faults at their times; returns the churn's log.
    async fn phase(
        &mut self,
        length: Duration,
        faults: Vec<(Duration, Fault)>,
        seed: u64,
        kept: BTreeMap<String, String>,
    ) -> ChurnLog {
        let stop = Arc::new(AtomicBool::new(false));
        let (client, ns, node) = (self.client.clone(), self.ns.clone(), self.node.name.clone());
        let churner = tokio::spawn(churn(client, ns, node, seed, stop.clone(), kept));
        let begin = Instant::now();
        for (at, fault) in faults {
            if let Some(d) = at.checked_sub(begin.elapsed()) {
                tokio::time::sleep(d).await;
            }
            self.inject(fault).await;
        }
        if let Some(d) = length.checked_sub(begin.elapsed()) {
            tokio::time::sleep(d).await;
        }
        stop.store(true, Ordering::Relaxed);
        churner.await.unwrap()
    }
}

fn add(counts: &mut Counts, f: &Findings) {
    counts.lost += f.lost.len();
    counts.orphaned += f.orphaned.len();
    counts.duplicated += f.duplicated.len();
    counts.stuck_terminating += f.stuck.len();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
#[ignore = "needs the test cluster and systemd nodes, and stops the API server: run tests/run"]
async fn chaos_pod_churn_under_kills_dbus_and_api_restarts_and_a_reboot() {
    let seed = std::env::var("VKS_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("chaos: seed {seed} (replay the schedule with VKS_CHAOS_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut plan_a, plan_b) = (schedule(&mut rng, false), schedule(&mut rng, true));
    if std::env::var("VKS_CHAOS_API").is_ok_and(|v| v == "0") {
        plan_a.retain(|(_, f)| !matches!(f, Fault::ApiDown | Fault::ApiUp));
    }
    eprintln!("chaos: phase A {plan_a:?}\nchaos: phase B {plan_b:?}");

    let node = Node::up("chaos");
    let ns = Namespace::new("chaos");
    let client = client().await;
    apply(&deployment(&ns.name, &node.name, 3));
    for name in ["keep0", "keep1"] {
        let c = |n: &str| json!({ "name": n, "image": "/usr/bin/sleep", "args": [LONG_ARGS] });
        let spec = json!({ "nodeName": node.name, "automountServiceAccountToken": false,
            "initContainers": [{ "name": "init", "image": "/usr/bin/true" }], "containers": [c("a"), c("b")] });
        create_pod(
            &client,
            &ns.name,
            json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name }, "spec": spec }),
        )
        .await;
    }
    let none = BTreeMap::new();
    let f = settle(&node, &client, &ns.name, &none).await;
    assert!(f.clean(), "the pods did not start before the chaos: {f:#?}");
    self_check(&node, &client, &ns.name).await;
    let sentinels = sentinel_runs(&node, &ns.name);

    // Every pod UID the API ever shows in the namespace (the watcher relists after the outage).
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let watch = {
        let (seen, api) = (seen.clone(), Api::<Pod>::namespaced(client.clone(), &ns.name));
        tokio::spawn(async move {
            let mut s = watcher(api, watcher::Config::default()).default_backoff().boxed();
            while let Some(ev) = s.next().await {
                if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev {
                    seen.lock().unwrap().insert(uid(&p));
                }
            }
        })
    };

    let mut chaos = Chaos {
        node: &node,
        client: client.clone(),
        ns: ns.name.clone(),
        counts: Counts::default(),
        at_reboot: BTreeSet::new(),
        start: Instant::now(),
    };
    let log_a = chaos.phase(PHASE_A, plan_a, rng.u64(..), BTreeMap::new()).await;
    eprintln!("chaos: phase A churn {log_a:?}");
    let f = settle(&node, &client, &ns.name, &log_a.kept).await;
    add(&mut chaos.counts, &f);
    let mut needless = restarts_beyond(&client, &ns.name, |_| 0).await;
    let now = sentinel_runs(&node, &ns.name);
    needless.extend(
        sentinels
            .iter()
            .filter(|(u, run)| now.get(*u) != Some(run))
            .map(|(u, run)| format!("{u}: {run:?} -> {:?}", now.get(u))),
    );
    eprintln!("chaos: phase A findings {f:?}, needless restarts {needless:?}");
    chaos.counts.needless_restarts += needless.len();

    let log_b = chaos.phase(PHASE_B, plan_b, rng.u64(..), log_a.kept.clone()).await;
    eprintln!("chaos: phase B churn {log_b:?}");
    let f = settle(&node, &client, &ns.name, &log_b.kept).await;
    add(&mut chaos.counts, &f);
    let at_reboot = chaos.at_reboot.clone();
    let needless = restarts_beyond(&client, &ns.name, |u| i32::from(at_reboot.contains(u))).await;
    eprintln!("chaos: phase B findings {f:?}, needless restarts {needless:?}");
    chaos.counts.needless_restarts += needless.len();
    watch.abort();

    let seen = seen.lock().unwrap().clone();
    let present: BTreeSet<String> = Api::<Pod>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(uid)
        .collect();
    let c = &chaos.counts;
    eprintln!(
        "chaos: seed {seed}: {} vks kills, {} D-Bus restarts, {} API server restarts, {} reboots; \
         {} pods created, {} deleted ({} churn operations: {} refused as the name was still taken, {} failed); \
         lost {}, orphaned {}, duplicated {}, needless restarts {}, stuck Terminating {}",
        c.vks_kills,
        c.dbus_restarts,
        c.api_restarts,
        c.reboots,
        seen.len(),
        seen.difference(&present).count(),
        log_a.ops + log_b.ops,
        log_a.name_taken + log_b.name_taken,
        log_a.failed + log_b.failed,
        c.lost,
        c.orphaned,
        c.duplicated,
        c.needless_restarts,
        c.stuck_terminating
    );
    assert_eq!((c.lost, c.orphaned, c.duplicated, c.needless_restarts, c.stuck_terminating), (0, 0, 0, 0, 0), "{c:?}");
}

//! Pod start/stop benchmark against the real test cluster and a real systemd node.
//!
//! ```sh
//! cargo build --release && k3s/cluster up
//! cargo bench --bench pods -- 100      # then: -- 500
//! ```
//!
//! Boots a node `bench-<pid>` with the vks of `VKS_BIN` (default target/release/vks), creates N
//! pods at once (image `/usr/bin/sleep`, already on the host: a "cached image"), and prints:
//! create → Running as seen by a pod watch (p50, p99), delete → gone (p50, p99), vks's peak RSS
//! and CPU seconds, and API requests per pod (vks counts its own requests and shows the total in
//! its systemd status line). Figures, not pass/fail.

// These tests measure real elapsed time against real processes: std's clock is the right one.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher::{self, Event};

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn node_exec(node: &str, args: &[&str]) -> String {
    sh(Command::new("k3s/node").arg("exec").arg(node).args(args))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn summary(what: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{what:<28} n={:<4} p50={:>7.1} ms  p99={:>7.1} ms  max={:>7.1} ms",
        v.len(),
        percentile(&v, 0.5).as_secs_f64() * 1e3,
        percentile(&v, 0.99).as_secs_f64() * 1e3,
        v.last().unwrap().as_secs_f64() * 1e3
    );
}

/// (peak RSS in KiB, CPU seconds, API requests) of vks in the node. The request count comes
/// from vks's status line, refreshed every 2 s: wait for one refresh first.
fn vks_usage(node: &str) -> (u64, f64, u64) {
    std::thread::sleep(Duration::from_millis(2200));
    let pid = node_exec(node, &["systemctl", "show", "-p", "MainPID", "--value", "vks"]);
    let status = node_exec(node, &["cat", &format!("/proc/{pid}/status")]);
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = node_exec(node, &["cat", &format!("/proc/{pid}/stat")]);
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let status_text = node_exec(node, &["systemctl", "show", "-p", "StatusText", "--value", "vks"]);
    let requests =
        status_text.split(", ").find_map(|p| p.strip_suffix(" API requests")).and_then(|n| n.parse().ok()).unwrap_or(0);
    (hwm, ticks as f64 / 100.0, requests)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().skip(1).find(|a| !a.starts_with('-')).and_then(|a| a.parse().ok()).unwrap_or(100);
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
    let kubeconfig = sh(Command::new("k3s/cluster").arg("kubeconfig"));
    let node = format!("bench-{}", std::process::id());
    let bin = std::env::var("VKS_BIN").unwrap_or_else(|_| format!("{}/target/release/vks", env!("CARGO_MANIFEST_DIR")));
    println!("vks pod benchmark: {n} pods on node {node} ({bin})");
    let mut up = Command::new("k3s/node");
    // The fast install path, so that the binary measured is exactly VKS_BIN.
    up.args(["up", &node]).env("VKS_BIN", &bin).env("VKS_NODE_INSTALL", "copy");
    if std::env::var_os("VKS_BENCH_KEEP_NODE").is_none() {
        up.env("VKS_NODE_OWNER", std::process::id().to_string());
    }
    sh(&mut up);
    // Room for the pods (capacity is what the scheduler reads; pods here are bound directly).
    node_exec(
        &node,
        &["sed", "-i", &format!("s/^\\[node\\]$/[node]\\nmax_pods = {}/", n.max(110)), "/etc/vks/config.toml"],
    );
    if let Ok(level) = std::env::var("VKS_BENCH_LOG_LEVEL") {
        node_exec(&node, &["sh", "-c", &format!("printf '[log]\\nlevel = \"{level}\"\\n' >> /etc/vks/config.toml")]);
    }
    node_exec(&node, &["systemctl", "restart", "vks"]);

    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    cfg.read_timeout = None;
    let client = kube::Client::try_from(cfg).unwrap();
    let ns_name = format!("bench-{}", std::process::id());
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": ns_name}})).unwrap(),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns_name);

    let (usage0_rss, cpu0, req0) = vks_usage(&node);
    let mut watch = watcher::watcher(pods.clone(), watcher::Config::default()).boxed();
    // The initial (empty) list: the watch is established before the first create.
    while !matches!(watch.next().await, Some(Ok(Event::InitDone))) {}
    let mut created: HashMap<String, Instant> = HashMap::new();
    let start = Instant::now();
    let mut creates = futures::stream::iter(0..n)
        .map(|i| {
            let pods = pods.clone();
            let node = node.clone();
            async move {
                let name = format!("p{i}");
                let pod: Pod = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name},
                    "spec": {"nodeName": node, "terminationGracePeriodSeconds": 5,
                             "containers": [{"name": "c", "image": "/usr/bin/sleep", "args": ["infinity"]}]}
                }))
                .unwrap();
                let t = Instant::now();
                pods.create(&PostParams::default(), &pod).await.unwrap();
                (name, t)
            }
        })
        .buffer_unordered(32);
    while let Some((name, t)) = creates.next().await {
        created.insert(name, t);
    }
    println!("{n} pods created in {:.2}s", start.elapsed().as_secs_f64());
    let mut running: HashMap<String, Duration> = HashMap::new();
    while running.len() < n {
        let ev =
            tokio::time::timeout(Duration::from_secs(300), watch.next()).await.expect("pods stuck").unwrap().unwrap();
        if let Event::Apply(p) | Event::InitApply(p) = ev {
            let name = p.metadata.name.clone().unwrap();
            let ready = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if ready && !running.contains_key(&name) {
                running.insert(name.clone(), created[&name].elapsed());
            }
        }
    }
    let all_running = start.elapsed();
    println!("all {n} Running {:.2}s after the first create", all_running.as_secs_f64());
    summary("create -> Running", running.into_values().collect());
    let (rss_running, cpu1, req1) = vks_usage(&node);

    let mut deleted: HashMap<String, Instant> = HashMap::new();
    let mut deletes = futures::stream::iter(0..n)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let name = format!("p{i}");
                let t = Instant::now();
                pods.delete(&name, &DeleteParams::default()).await.unwrap();
                (name, t)
            }
        })
        .buffer_unordered(32);
    while let Some((name, t)) = deletes.next().await {
        deleted.insert(name, t);
    }
    let mut gone: HashMap<String, Duration> = HashMap::new();
    while gone.len() < n {
        let ev = tokio::time::timeout(Duration::from_secs(300), watch.next())
            .await
            .expect("deletion stuck")
            .unwrap()
            .unwrap();
        if let Event::Delete(p) = ev {
            let name = p.metadata.name.unwrap();
            gone.insert(name.clone(), deleted[&name].elapsed());
        }
    }
    summary("delete -> gone", gone.into_values().collect());
    let (rss_end, cpu2, req2) = vks_usage(&node);
    println!(
        "vks peak RSS (VmHWM): {:.1} MB idle, {:.1} MB with {n} pods, {:.1} MB at the end",
        usage0_rss as f64 / 1024.0,
        rss_running as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
    println!("vks CPU: {:.2} s for the creates, {:.2} s for the deletes", cpu1 - cpu0, cpu2 - cpu1);
    println!(
        "API requests by vks: {} for the creates ({:.1}/pod), {} for the deletes ({:.1}/pod)",
        req1 - req0,
        (req1 - req0) as f64 / n as f64,
        req2 - req1,
        (req2 - req1) as f64 / n as f64
    );
    let _ = nss.delete(&ns_name, &DeleteParams::default()).await;
    if std::env::var_os("VKS_BENCH_KEEP_NODE").is_none() {
        sh(Command::new("k3s/node").args(["down", &node]));
    }
}

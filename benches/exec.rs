//! `kubectl exec` round trip against the real test cluster and a real systemd node.
//!
//! ```sh
//! cargo build --release && k3s/cluster up
//! cargo bench --bench exec -- 100
//! ```
//!
//! Boots a node `bench-exec-<pid>` with the vks of `VKS_BIN` (default target/release/vks), starts
//! one pod, then times N runs each of: `kubectl exec POD -- true` (through the API server to
//! vks: a transient unit is started and waited for), `kubectl get pod POD` (the same kubectl
//! process start and API round trip, without vks: the API server's own request latency as a
//! client sees it) and a GET of the pod with a kept-alive client (the API server's latency
//! alone), then `kubectl exec` into a second pod with `vks.io/hardening: off` (no sandbox for
//! systemd to set up). Prints p50/p99 of each and the exec/get ratios. `VKS_BENCH_SPDY=1` makes the node not
//! declare ExtendWebSocketsToKubelet, so that the API server speaks SPDY to vks.

// The benchmark measures real elapsed time: std's clock is the right one.
#![allow(clippy::disallowed_methods)]

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, PostParams};

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Prints and returns (p50, p99) in ms.
fn summary(what: &str, mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let (p50, p99) = (percentile(&v, 0.5).as_secs_f64() * 1e3, percentile(&v, 0.99).as_secs_f64() * 1e3);
    println!("{what:<44} n={:<4} p50={p50:>7.1} ms  p99={p99:>7.1} ms", v.len());
    (p50, p99)
}

fn time_kubectl(kubeconfig: &str, args: &[&str]) -> Duration {
    let t = Instant::now();
    sh(Command::new("kubectl").env("KUBECONFIG", kubeconfig).args(args));
    t.elapsed()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().skip(1).find(|a| !a.starts_with('-')).and_then(|a| a.parse().ok()).unwrap_or(100);
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
    let kubeconfig = sh(Command::new("k3s/cluster").arg("kubeconfig"));
    let node = format!("bench-exec-{}", std::process::id());
    let bin = std::env::var("VKS_BIN").unwrap_or_else(|_| format!("{}/target/release/vks", env!("CARGO_MANIFEST_DIR")));
    let spdy = std::env::var_os("VKS_BENCH_SPDY").is_some();
    println!("vks exec benchmark: {n} calls on node {node} ({bin}), {}", if spdy { "SPDY" } else { "WebSocket" });
    sh(Command::new("k3s/node")
        .args(["up", &node])
        .env("VKS_BIN", &bin)
        .env("VKS_NODE_INSTALL", "copy")
        .env("VKS_NODE_OWNER", std::process::id().to_string()));
    if spdy {
        sh(Command::new("k3s/node")
            .args(["exec", &node, "sed", "-i"])
            .arg("s/^\\[kubelet\\]$/[kubelet]\\nwebsocket_streaming = false/")
            .arg("/etc/vks/config.toml"));
        sh(Command::new("k3s/node").args(["exec", &node, "systemctl", "restart", "vks"]));
    }

    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    let ns = format!("bench-exec-{}", std::process::id());
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap())
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p"},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "c", "image": "/usr/bin/sleep", "args": ["infinity"]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let plain: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "q", "annotations": {"vks.io/hardening": "off"}},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "c", "image": "/usr/bin/sleep", "args": ["infinity"]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &plain).await.unwrap();
    let start = Instant::now();
    for name in ["p", "q"] {
        loop {
            let p = pods.get(name).await.unwrap();
            if p.status.and_then(|s| s.phase).as_deref() == Some("Running") {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "pod {name} not Running");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Warm up (first D-Bus connection, kubectl's discovery cache).
    for _ in 0..3 {
        time_kubectl(&kubeconfig, &["-n", &ns, "exec", "p", "--", "true"]);
        time_kubectl(&kubeconfig, &["-n", &ns, "get", "pod", "p", "-o", "name"]);
    }
    let mut exec = Vec::with_capacity(n);
    let mut get = Vec::with_capacity(n);
    let mut api = Vec::with_capacity(n);
    let mut exec_plain = Vec::with_capacity(n);
    for _ in 0..n {
        exec.push(time_kubectl(&kubeconfig, &["-n", &ns, "exec", "p", "--", "true"]));
        exec_plain.push(time_kubectl(&kubeconfig, &["-n", &ns, "exec", "q", "--", "true"]));
        get.push(time_kubectl(&kubeconfig, &["-n", &ns, "get", "pod", "p", "-o", "name"]));
        let t = Instant::now();
        pods.get("p").await.unwrap();
        api.push(t.elapsed());
    }
    let (e50, e99) = summary("kubectl exec p -- true", exec);
    let (g50, g99) = summary("kubectl get pod p (API server, same client)", get);
    summary("GET pod, kept-alive client (API server only)", api);
    let (p50, p99) = summary("kubectl exec q -- true (hardening off)", exec_plain);
    println!("exec / get: p50 {:.2}x, p99 {:.2}x (target: within 2x)", e50 / g50, e99 / g99);
    println!("exec (hardening off) / get: p50 {:.2}x, p99 {:.2}x", p50 / g50, p99 / g99);
    let _ = nss.delete(&ns, &DeleteParams::default()).await;
    let _ = Command::new("k3s/node").args(["down", &node]).output();
}

//! `kubectl logs` benchmark against the real test cluster and a real systemd node.
//!
//! ```sh
//! cargo build --release && k3s/cluster up
//! cargo bench --bench logs                 # 50 MB in 1 KiB lines; or: -- <MB> <line bytes>
//! ```
//!
//! Boots a node `logbench-<pid>` with the vks of `VKS_BIN` (default target/release/vks; its
//! journald gets room for the run and no rate limit), and prints:
//! - `kubectl logs -f` throughput through the API server: a container wrote N MB (random text
//!   in lines of the given size) and still runs; time from starting kubectl until N MB arrived
//!   ("catch-up"). Then the same with kubectl started before the container writes ("live":
//!   bounded by how fast journald takes the lines in).
//! - kubelet API memory with 100 idle follow streams (pods/log?follow=true through the API
//!   server, of a container that prints nothing more): vks's RSS before and with them, and the
//!   journalctl processes vks runs for them.
//!
//! Figures, not pass/fail.

// The benchmark measures real elapsed time: std's clock is the right one.
#![allow(clippy::disallowed_methods)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, LogParams, PostParams};

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn node_exec(node: &str, args: &[&str]) -> String {
    sh(Command::new("k3s/node").arg("exec").arg(node).args(args))
}

/// vks's resident memory (KiB) and the number of journalctl processes in its unit.
fn vks_memory(node: &str) -> (u64, usize) {
    let pid = node_exec(node, &["systemctl", "show", "-p", "MainPID", "--value", "vks"]);
    let status = node_exec(node, &["cat", &format!("/proc/{pid}/status")]);
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let procs = node_exec(node, &["sh", "-c", "pgrep -c -x journalctl || true"]);
    (rss, procs.trim().parse().unwrap_or(0))
}

/// A container that writes `mb` MB of random text in `line`-byte lines when
/// /tmp/vks-logbench-go exists in its private /tmp (or at once with `now`), then sleeps.
fn writer(mb: usize, line: usize, now: bool) -> serde_json::Value {
    let script = format!(
        "import os, random, string, sys, time\n\
         wait = {wait}\n\
         while wait and not os.path.exists('/tmp/vks-logbench-go'):\n    time.sleep(0.05)\n\
         r = random.Random(7)\n\
         block = ''.join(r.choice(string.ascii_letters + string.digits) for _ in range(1 << 20))\n\
         line = {line}\n\
         total = {mb} * 1000 * 1000\n\
         out = sys.stdout\n\
         done = 0\n\
         i = 0\n\
         while done < total:\n    o = (i * 7919) % ((1 << 20) - line)\n    out.write(block[o:o + line - 1] + '\\n')\n    done += line\n    i += 1\n\
         out.flush()\n\
         time.sleep(100000)\n",
        wait = if now { "False" } else { "True" },
    );
    serde_json::json!({ "name": "w", "image": "/usr/bin/python3", "command": ["/usr/bin/python3", "-u", "-c", script] })
}

/// Time until `bytes` arrived from `kubectl logs -f`: from kubectl's start (or, with
/// `start_writer`, from telling the pod's writer to start, 2 s later), and from the first byte.
fn follow_until(kubeconfig: &str, ns: &str, pod: &str, bytes: usize, start_writer: bool) -> (Duration, Duration) {
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(["logs", "-f", "-n", ns, pod])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let start = Instant::now();
    if start_writer {
        std::thread::sleep(Duration::from_secs(2));
        // The container's /tmp is its own (PrivateTmp=yes, the default hardening): kubectl exec
        // shares it.
        sh(Command::new("kubectl").env("KUBECONFIG", kubeconfig).args([
            "exec",
            "-n",
            ns,
            pod,
            "--",
            "/usr/bin/touch",
            "/tmp/vks-logbench-go",
        ]));
    }
    let mut first: Option<Instant> = None;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    while got < bytes {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "kubectl logs -f ended after {got} bytes");
        first.get_or_insert_with(Instant::now);
        got += n;
    }
    let (all, from_first) = (start.elapsed(), first.map_or(start.elapsed(), |f| f.elapsed()));
    let _ = child.kill();
    let _ = child.wait();
    (all, from_first)
}

async fn wait_running(pods: &Api<Pod>, name: &str) {
    for _ in 0..600 {
        if let Ok(p) = pods.get(name).await
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("pod {name} not Running");
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let mb = args.first().copied().unwrap_or(50);
    let line = args.get(1).copied().unwrap_or(1024);
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
    let kubeconfig = sh(Command::new("k3s/cluster").arg("kubeconfig"));
    let node = format!("logbench-{}", std::process::id());
    let bin = std::env::var("VKS_BIN").unwrap_or_else(|_| format!("{}/target/release/vks", env!("CARGO_MANIFEST_DIR")));
    println!("vks logs benchmark: {mb} MB in {line}-byte lines, node {node} ({bin})");
    let mut up = Command::new("k3s/node");
    up.args(["up", &node]).env("VKS_BIN", &bin).env("VKS_NODE_INSTALL", "copy");
    up.env("VKS_NODE_OWNER", std::process::id().to_string());
    sh(&mut up);
    // Room for the output in the node's (volatile) journal, and no rate limit. With
    // VKS_BENCH_JOURNAL_COMPRESS=<bytes> journald compresses only fields above that size (its
    // default threshold is 512 bytes: every 1 KiB line is compressed).
    let compress = std::env::var("VKS_BENCH_JOURNAL_COMPRESS").map(|c| format!("Compress={c}\\n")).unwrap_or_default();
    if !compress.is_empty() {
        println!("journald: {}", compress.trim_end_matches("\\n"));
    }
    node_exec(
        &node,
        &[
            "sh",
            "-c",
            &format!(
                "mkdir -p /etc/systemd/journald.conf.d && printf '[Journal]\\nRuntimeMaxUse=2G\\nRuntimeMaxFileSize=256M\\n\
                 RateLimitIntervalSec=0\\n{compress}' > /etc/systemd/journald.conf.d/logbench.conf && \
                 systemctl restart systemd-journald"
            ),
        ],
    );

    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    cfg.read_timeout = None;
    let client = kube::Client::try_from(cfg).unwrap();
    let ns = format!("logbench-{}", std::process::id());
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap())
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let create = |name: &str, c: serde_json::Value| {
        serde_json::from_value::<Pod>(serde_json::json!({
            "metadata": {"name": name}, "spec": {"nodeName": node, "containers": [c]}
        }))
        .unwrap()
    };
    let bytes = mb * 1000 * 1000;

    // Catch-up: everything is in the journal before kubectl starts.
    pods.create(&PostParams::default(), &create("written", writer(mb, line, true))).await.unwrap();
    wait_running(&pods, "written").await;
    let unit = vks::unit::name::unit_name(&ns, "written", "w");
    let t = Instant::now();
    loop {
        let n: usize =
            node_exec(&node, &["sh", "-c", &format!("journalctl -u {unit} -o cat | wc -c")]).parse().unwrap_or(0);
        if n >= bytes {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(600), "only {n} bytes in the journal");
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("writer: {mb} MB in the journal after {:.1}s", t.elapsed().as_secs_f64());
    let (took, from_first) = follow_until(&kubeconfig, &ns, "written", bytes, false);
    println!(
        "kubectl logs -f, catch-up: {mb} MB in {:.2}s = {:.1} MB/s (kubectl start included; first byte to last: {:.1} MB/s)",
        took.as_secs_f64(),
        mb as f64 / took.as_secs_f64(),
        mb as f64 / from_first.as_secs_f64()
    );

    // Live: kubectl follows while the container writes.
    pods.create(&PostParams::default(), &create("live", writer(mb, line, false))).await.unwrap();
    wait_running(&pods, "live").await;
    let (_, took) = follow_until(&kubeconfig, &ns, "live", bytes, true);
    println!(
        "kubectl logs -f, live: {mb} MB in {:.2}s = {:.1} MB/s (first byte to last)",
        took.as_secs_f64(),
        mb as f64 / took.as_secs_f64()
    );
    let _ = pods.delete("written", &DeleteParams::default()).await;
    let _ = pods.delete("live", &DeleteParams::default()).await;

    // 100 idle follow streams.
    let quiet = serde_json::json!({ "name": "q", "image": "/bin/sh", "command": ["/bin/sh", "-c", "echo hello; exec sleep 100000"] });
    pods.create(&PostParams::default(), &create("quiet", quiet)).await.unwrap();
    wait_running(&pods, "quiet").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss0, jc0) = vks_memory(&node);
    let mut streams = Vec::new();
    for _ in 0..100 {
        let lp = LogParams { follow: true, ..LogParams::default() };
        let mut lines = pods.log_stream("quiet", &lp).await.unwrap().lines();
        assert_eq!(lines.next().await.unwrap().unwrap(), "hello");
        streams.push(lines);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss1, jc1) = vks_memory(&node);
    println!(
        "100 idle follow streams: vks RSS {:.1} MB -> {:.1} MB ({:+.1} KB per stream); journalctl processes {jc0} -> {jc1}",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        (rss1 as f64 - rss0 as f64) / 100.0
    );
    drop(streams);
    let _ = nss.delete(&ns, &DeleteParams::default()).await;
    sh(Command::new("k3s/node").args(["down", &node]));
}

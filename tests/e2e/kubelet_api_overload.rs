//! The kubelet port under overload (issue 9, defect 6: 1500 idle connections used to exhaust
//! vks's file descriptors and get it killed by the watchdog). Thousands of idle TCP connections
//! are held open — re-opened a second after vks closes them — from three client addresses while the
//! node must stay Ready, start a new pod, answer /healthz and serve `kubectl logs`; and an idle
//! log stream is closed after the streaming idle timeout.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;

use crate::support::*;

const LONG: Duration = Duration::from_secs(60);
/// Connections held per attacking address (kubelet.max_connections_per_client is 1024).
const PER_ADDRESS: usize = 1500;
const ADDRESSES: [&str; 3] = ["127.0.3.1", "127.0.3.2", "127.0.3.3"];

struct Attack {
    stop: Arc<AtomicBool>,
    /// Connections currently open (from our side).
    open: Arc<AtomicUsize>,
    /// Connections vks closed (handshake timeout, or over a cap).
    closed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Opens `PER_ADDRESS` connections from each address and keeps them open: each one sends
/// nothing, and is opened again a second after vks closes it.
fn attack(target: SocketAddr) -> Attack {
    let stop = Arc::new(AtomicBool::new(false));
    let open = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for a in ADDRESSES {
        let src: IpAddr = a.parse().unwrap();
        for _ in 0..PER_ADDRESS {
            let (stop, open, closed) = (stop.clone(), open.clone(), closed.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let conn = async {
                        let s = TcpSocket::new_v4()?;
                        s.bind(SocketAddr::new(src, 0))?;
                        s.connect(target).await
                    };
                    if let Ok(Ok(mut c)) = tokio::time::timeout(Duration::from_secs(5), conn).await {
                        open.fetch_add(1, Ordering::Relaxed);
                        let mut b = [0u8; 64];
                        loop {
                            tokio::select! {
                                r = c.read(&mut b) => if matches!(r, Ok(0) | Err(_)) { break },
                                () = tokio::time::sleep(Duration::from_millis(500)) => {
                                    if stop.load(Ordering::Relaxed) { break }
                                }
                            }
                        }
                        open.fetch_sub(1, Ordering::Relaxed);
                        closed.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }));
        }
    }
    Attack { stop, open, closed, tasks }
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard as usize > PER_ADDRESS * ADDRESSES.len() + 500,
        "the test needs more file descriptors (hard limit {hard})"
    );
}

fn ready(n: &k8s_openapi::api::core::v1::Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn healthz(ip: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sk", "--max-time", "5", &format!("https://{ip}:10250/healthz")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn the_kubelet_port_survives_thousands_of_idle_connections() {
    raise_fd_limit();
    let node = Node::up("overload");
    let ns = Namespace::new("overload");
    let client = client().await;
    let ip = node.ip();
    let spec = json!({ "nodeName": node.name, "containers": [
        { "name": "c", "image": "/bin/sh", "command": ["/bin/sh", "-c", "echo before; exec sleep 3600"] }
    ]});
    create_pod(&client, &ns.name, json!({ "metadata": { "name": "before" }, "spec": spec })).await;
    wait_phase(&client, &ns.name, "before", "Running", LONG).await;
    let pid = node.unit_prop("vks", "MainPID");
    let nofile = node.sh(&format!("grep 'Max open files' /proc/{pid}/limits"));

    let attack = attack(format!("{ip}:10250").parse().unwrap());
    let total = PER_ADDRESS * ADDRESSES.len();
    wait_for("the attacking connections to be open", LONG, async || {
        let n = attack.open.load(Ordering::Relaxed);
        if n >= 3000 { Ok(()) } else { Err(format!("{n} open")) }
    })
    .await;
    let t0 = Instant::now();

    // While they are held: the node stays Ready and keeps working.
    let spec = json!({ "nodeName": node.name, "containers": [
        { "name": "c", "image": "/bin/sh", "command": ["/bin/sh", "-c", "echo during; exec sleep 3600"] }
    ]});
    create_pod(&client, &ns.name, json!({ "metadata": { "name": "during" }, "spec": spec })).await;
    wait_phase(&client, &ns.name, "during", "Running", LONG).await;
    let mut fds_max = 0usize;
    hold_for("the node Ready, /healthz and kubectl logs answering", Duration::from_secs(40), async || {
        let n = node.object(&client).await;
        if !ready(&n) {
            return Err(format!("node not Ready: {:?}", n.status.and_then(|s| s.conditions)));
        }
        if healthz(&ip) != "ok" {
            return Err("/healthz did not answer".into());
        }
        let out = kubectl_output(&["logs", "-n", &ns.name, "during"]);
        if String::from_utf8_lossy(&out.stdout) != "during\n" {
            return Err(format!("kubectl logs: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let fds: usize = node.sh(&format!("ls /proc/{pid}/fd | wc -l")).trim().parse().unwrap_or(0);
        fds_max = fds_max.max(fds);
        Ok(())
    })
    .await;
    let open_during = attack.open.load(Ordering::Relaxed);
    let closed = attack.closed.load(Ordering::Relaxed);
    attack.stop.store(true, Ordering::Relaxed);
    for t in attack.tasks {
        let _ = t.await;
    }
    eprintln!(
        "{total} connections attempted and held for {:.0}s ({open_during} open at the end, {closed} closed by vks); \
         vks used at most {fds_max} file descriptors ({})",
        t0.elapsed().as_secs_f64(),
        nofile.trim()
    );

    // vks was never restarted, closed idle connections (handshake timeout) and refused those
    // over the per-client cap, and says so in its metrics.
    assert_eq!(node.unit_prop("vks", "MainPID"), pid, "vks restarted");
    assert_eq!(node.unit_prop("vks", "NRestarts"), "0");
    assert!(closed > 0, "the TLS handshake timeout closes idle connections");
    assert!(fds_max < 1024 * 3 + 500, "connections beyond the per-client caps were closed: {fds_max} descriptors");
    let cert = kubeconfig().parent().unwrap().join("pki");
    let metrics = std::process::Command::new("curl")
        .args(["-sk", "--max-time", "5", "--cert"])
        .arg(cert.join("apiserver-kubelet-client.crt"))
        .arg("--key")
        .arg(cert.join("apiserver-kubelet-client.key"))
        .arg(format!("https://{ip}:10250/metrics"))
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    for reason in ["max_connections_per_client", "tls_handshake_timeout"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&format!("vks_kubelet_api_refused_connections_total{{reason=\"{reason}\"}}"))),
            "no {reason} refusals counted:\n{metrics}"
        );
    }
    assert!(node.vks_journal().contains("kubelet API: refused"), "refusals are logged");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn an_idle_log_stream_is_closed_after_the_streaming_idle_timeout() {
    let node = Node::up("stream-idle");
    let cfg = node.config().replacen("[kubelet]\n", "[kubelet]\nstreaming_idle_timeout = \"5s\"\n", 1);
    node.write_config(&cfg);
    node.exec(&["systemctl", "restart", "vks"]);
    let ns = Namespace::new("stream-idle");
    let client = client().await;
    let spec = json!({ "nodeName": node.name, "containers": [
        { "name": "c", "image": "/bin/sh", "command": ["/bin/sh", "-c", "echo once; exec sleep 3600"] }
    ]});
    create_pod(&client, &ns.name, json!({ "metadata": { "name": "quiet" }, "spec": spec })).await;
    wait_phase(&client, &ns.name, "quiet", "Running", LONG).await;
    wait_for("the line", LONG, async || {
        let out = kubectl_output(&["logs", "-n", &ns.name, "quiet"]);
        if out.status.success() && out.stdout == b"once\n" { Ok(()) } else { Err(format!("{out:?}")) }
    })
    .await;
    let started = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("kubectl")
            .env("KUBECONFIG", kubeconfig())
            .args(["logs", "-f", "-n", &ns.name, "quiet"])
            .output(),
    )
    .await
    .expect("the idle follow was never closed")
    .unwrap();
    let took = started.elapsed();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "once\n");
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(30), "closed after {took:?}");
}

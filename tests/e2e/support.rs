//! Shared helpers of the end-to-end tests: the real test cluster (`k3s/cluster`), real systemd
//! nodes (`k3s/node`), the real `kubectl`, and waiting for conditions with a deadline.
//!
//! Every node a test boots is tied to the test process (`VKS_NODE_OWNER`) and torn down by the
//! [`Node`] guard when the test ends, or by the node's guardian if the test process dies.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node as K8sNode, Pod};
use kube::api::{Api, DeleteParams, PostParams};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs a command, panicking with its output unless it succeeds; returns stdout.
pub fn check(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{}\n{}", out.status, text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// The admin kubeconfig of the running test cluster.
pub fn kubeconfig() -> &'static Path {
    static KC: OnceLock<PathBuf> = OnceLock::new();
    KC.get_or_init(|| {
        let out = check(Command::new(repo().join("k3s/cluster")).arg("kubeconfig"));
        let p = PathBuf::from(out.trim());
        assert!(p.exists(), "no test cluster: start it with k3s/cluster up (tests/run does)");
        p
    })
}

/// `kubectl` with the admin kubeconfig; returns the output whatever the exit status.
pub fn kubectl_output(args: &[&str]) -> Output {
    run(Command::new("kubectl").env("KUBECONFIG", kubeconfig()).args(args))
}

/// `kubectl` with the admin kubeconfig; panics unless it succeeds; returns stdout.
pub fn kubectl(args: &[&str]) -> String {
    check(Command::new("kubectl").env("KUBECONFIG", kubeconfig()).args(args))
}

/// `kubectl apply -f -` of a manifest.
pub fn apply(manifest: &str) -> String {
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig())
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(manifest.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl apply failed:\n{manifest}\n{}", text(&out.stderr));
    text(&out.stdout)
}

/// An admin API client.
pub async fn client() -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// How much slower than an idle 2-core machine this one may be: upper bounds on durations in
/// tests are multiplied by it (`VKS_PATIENCE`, default 1; CI on a loaded machine sets more).
pub fn patience() -> f64 {
    std::env::var("VKS_PATIENCE").ok().and_then(|v| v.parse().ok()).filter(|p: &f64| *p >= 1.0).unwrap_or(1.0)
}

/// An upper bound on a duration, scaled by [`patience`].
pub fn within(d: Duration) -> Duration {
    d.mul_f64(patience())
}

/// Polls `f` every 200 ms until it returns `Some`, panicking after `timeout` with `what` and
/// the last value the probe described.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        let last = match f().await {
            Ok(v) => return v,
            Err(why) => why,
        };
        assert!(start.elapsed() < timeout, "timed out after {}s waiting for {what}; last: {last}", timeout.as_secs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks `invariant` every 200 ms for `period`, panicking as soon as it fails: a test's way to
/// assert that something stays true for a while.
pub async fn hold_for(what: &str, period: Duration, mut invariant: impl AsyncFnMut() -> Result<(), String>) {
    let start = Instant::now();
    while start.elapsed() < period {
        if let Err(why) = invariant().await {
            panic!("{what} stopped holding after {:.1}s: {why}", start.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A real systemd node with vks running in it; torn down on drop.
pub struct Node {
    /// Node (and Node object) name.
    pub name: String,
}

/// A node name unique to this test run.
pub fn node_name(test: &str) -> String {
    let mut n: String =
        test.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    n.truncate(30);
    let n = n.trim_matches('-').to_owned();
    format!("{n}-{}", std::process::id() % 10_000)
}

impl Node {
    /// Boots a node named after `test`, installs the vks built from this checkout, waits until
    /// the Node is Ready.
    pub fn up(test: &str) -> Node {
        let name = node_name(test);
        let out = run(Command::new(repo().join("k3s/node"))
            .args(["up", &name])
            .env("VKS_NODE_OWNER", std::process::id().to_string()));
        let node = Node { name };
        assert!(
            out.status.success(),
            "k3s/node up {} failed:\n{}\n{}",
            node.name,
            text(&out.stdout),
            text(&out.stderr)
        );
        // VKS_E2E_LOG_LEVEL=debug makes the nodes' vks log at that level (for diagnosing).
        if let Ok(level) = std::env::var("VKS_E2E_LOG_LEVEL") {
            node.sh(&format!(
                "printf '[log]\\nlevel = \"{level}\"\\n' >> /etc/vks/config.toml && systemctl restart vks"
            ));
        }
        node
    }

    /// Boots a node named after `test` in its own network namespace with an address 10.77.0.K
    /// (`VKS_NODE_NETNS=1`, see k3s/README.md): its pods' IPs are valid in EndpointSlices. It
    /// joins through the k3s supervisor. Reach its address only from the hub ([`Node::hub`]).
    pub fn up_netns(test: &str) -> Node {
        let name = node_name(test);
        let out = run(Command::new(repo().join("k3s/node"))
            .args(["up", &name])
            .env("VKS_NODE_NETNS", "1")
            .env("VKS_NODE_OWNER", std::process::id().to_string()));
        let node = Node { name };
        assert!(out.status.success(), "k3s/node up {} (netns) failed:\n{}", node.name, text(&out.stderr));
        node
    }

    /// Runs a command in the hub network namespace of netns nodes (which reaches their
    /// addresses); returns the output whatever the exit status.
    pub fn hub(&self, args: &[&str]) -> Output {
        run(Command::new(repo().join("k3s/node")).arg("hub").args(args))
    }

    /// Boots a node named after `test` without vks (`VKS_NODE_NO_VKS=1`): a stock Debian
    /// machine on which a test installs the package itself.
    pub fn bare(test: &str) -> Node {
        let name = node_name(test);
        let out = run(Command::new(repo().join("k3s/node"))
            .args(["up", &name])
            .env("VKS_NODE_NO_VKS", "1")
            .env("VKS_NODE_OWNER", std::process::id().to_string()));
        let node = Node { name };
        assert!(out.status.success(), "k3s/node up {} failed:\n{}", node.name, text(&out.stderr));
        node
    }

    /// The node's root file system seen from the host (`/proc/<pid>/root`): writes land in the
    /// node's overlay.
    pub fn root(&self) -> PathBuf {
        let pid = check(Command::new(repo().join("k3s/node")).args(["pid", &self.name]));
        PathBuf::from(format!("/proc/{}/root", pid.trim()))
    }

    /// Runs a command inside the node; returns the output whatever the exit status.
    pub fn exec_output(&self, args: &[&str]) -> Output {
        run(Command::new(repo().join("k3s/node")).arg("exec").arg(&self.name).args(args))
    }

    /// Runs a command inside the node, panicking unless it succeeds; returns stdout.
    pub fn exec(&self, args: &[&str]) -> String {
        check(Command::new(repo().join("k3s/node")).arg("exec").arg(&self.name).args(args))
    }

    /// `sh -c SCRIPT` inside the node.
    pub fn sh(&self, script: &str) -> String {
        self.exec(&["sh", "-c", script])
    }

    /// A property of a unit (`systemctl show -p P --value UNIT`).
    pub fn unit_prop(&self, unit: &str, prop: &str) -> String {
        self.exec(&["systemctl", "show", "-p", prop, "--value", unit]).trim().to_owned()
    }

    /// The node's IP (127.0.1.x).
    pub fn ip(&self) -> String {
        check(Command::new(repo().join("k3s/node")).args(["ip", &self.name])).trim().to_owned()
    }

    /// Reboots the node's systemd (same overlay root, fresh /run).
    pub fn reboot(&self) {
        check(Command::new(repo().join("k3s/node")).args(["reboot", &self.name]));
    }

    /// Replaces /etc/vks/config.toml in the node.
    pub fn write_config(&self, toml: &str) {
        let pid = check(Command::new(repo().join("k3s/node")).args(["pid", &self.name]));
        let path = format!("/proc/{}/root/etc/vks/config.toml", pid.trim());
        std::fs::write(&path, toml).unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }

    /// Writes a file inside the node (into its overlay).
    pub fn put_file(&self, path: &str, content: &[u8]) {
        let pid = check(Command::new(repo().join("k3s/node")).args(["pid", &self.name]));
        let full = format!("/proc/{}/root{path}", pid.trim());
        std::fs::write(&full, content).unwrap_or_else(|e| panic!("writing {full}: {e}"));
    }

    /// The node's current /etc/vks/config.toml.
    pub fn config(&self) -> String {
        self.exec(&["cat", "/etc/vks/config.toml"])
    }

    /// `systemctl stop vks` and checks it stopped cleanly: `STOPPING=1` sent (seen in systemd's
    /// debug log), exit status 0, unit inactive.
    pub fn stop_vks_cleanly(&self) {
        self.exec(&["systemd-analyze", "log-level", "debug"]);
        self.exec(&["systemctl", "stop", "vks"]);
        self.exec(&["systemd-analyze", "log-level", "info"]);
        assert_eq!(self.unit_prop("vks", "ActiveState"), "inactive");
        assert_eq!(self.unit_prop("vks", "Result"), "success");
        assert_eq!(self.unit_prop("vks", "ExecMainStatus"), "0");
        let journal = self.exec(&["journalctl", "--no-pager", "-o", "cat"]);
        assert!(
            journal.lines().any(|l| l.contains("vks.service: Got notification message") && l.contains("STOPPING=1")),
            "no STOPPING=1 notification in the journal"
        );
    }

    /// vks's journal in the node.
    pub fn vks_journal(&self) -> String {
        self.exec(&["journalctl", "-u", "vks", "--no-pager", "-o", "cat"])
    }

    /// The Node object.
    pub async fn object(&self, client: &kube::Client) -> K8sNode {
        Api::<K8sNode>::all(client.clone()).get(&self.name).await.unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let out = self.exec_output(&["journalctl", "--no-pager", "-n", "200", "-u", "vks"]);
            eprintln!("--- vks journal of node {} (last 200 lines)\n{}", self.name, text(&out.stdout));
        }
        let _ = run(Command::new(repo().join("k3s/node")).args(["down", &self.name]));
    }
}

/// A namespace for one test, deleted on drop.
pub struct Namespace {
    /// Its name.
    pub name: String,
}

impl Namespace {
    /// Creates a namespace named after the test, and waits (30 s at most) for the controller
    /// manager to give it its `default` service account, without which no pod can be created.
    pub fn new(test: &str) -> Namespace {
        let name = format!("t-{}", node_name(test));
        kubectl(&["create", "namespace", &name]);
        let deadline = std::time::Instant::now() + within(Duration::from_secs(30));
        while !kubectl_output(&["-n", &name, "get", "serviceaccount", "default"]).status.success() {
            assert!(std::time::Instant::now() < deadline, "namespace {name} got no default service account");
            std::thread::sleep(Duration::from_millis(100));
        }
        Namespace { name }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = kubectl_output(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// Creates a pod from JSON in `ns`.
pub async fn create_pod(client: &kube::Client, ns: &str, pod: serde_json::Value) -> Pod {
    let pod: Pod = serde_json::from_value(pod).expect("pod JSON");
    Api::<Pod>::namespaced(client.clone(), ns).create(&PostParams::default(), &pod).await.expect("create pod")
}

/// Gets a pod, `None` if it does not exist.
pub async fn get_pod(client: &kube::Client, ns: &str, name: &str) -> Option<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns).get_opt(name).await.expect("get pod")
}

/// Deletes a pod with the given grace period (None: the pod's own).
pub async fn delete_pod(client: &kube::Client, ns: &str, name: &str, grace: Option<u32>) {
    let dp = DeleteParams { grace_period_seconds: grace, ..DeleteParams::default() };
    Api::<Pod>::namespaced(client.clone(), ns).delete(name, &dp).await.expect("delete pod");
}

/// The phase of a pod.
pub fn phase(p: &Pod) -> String {
    p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default()
}

/// Waits until the pod reaches `want` phase.
pub async fn wait_phase(client: &kube::Client, ns: &str, name: &str, want: &str, timeout: Duration) -> Pod {
    wait_for(&format!("pod {ns}/{name} to be {want}"), timeout, async || {
        let p = get_pod(client, ns, name).await.ok_or("pod does not exist")?;
        if phase(&p) == want { Ok(p) } else { Err(format!("phase {:?}, status {:?}", phase(&p), p.status)) }
    })
    .await
}

/// The unit name vks uses for a container.
pub fn unit_name(ns: &str, pod: &str, container: &str) -> String {
    vks::unit::name::unit_name(ns, pod, container)
}

impl Node {
    /// Runs vks in this node as the fault-injection build (`VKS_FAILPOINTS_BIN`, built by
    /// tests/run with the `failpoints` feature) with `FAILPOINTS=<failpoints>` and the given
    /// `WatchdogSec=` (a runtime drop-in; `clear_vks_override` removes it), and restarts it.
    pub fn run_vks_with_failpoints(&self, failpoints: &str, watchdog_sec: u32) {
        let bin = std::env::var("VKS_FAILPOINTS_BIN")
            .expect("VKS_FAILPOINTS_BIN: the failpoints build of vks (tests/run builds it)");
        let data = std::fs::read(&bin).unwrap_or_else(|e| panic!("reading {bin}: {e}"));
        self.put_file("/usr/local/sbin/vks-failpoints", &data);
        self.exec(&["chmod", "755", "/usr/local/sbin/vks-failpoints"]);
        self.exec(&["mkdir", "-p", "/run/systemd/system/vks.service.d"]);
        let dropin = format!(
            "[Service]\nExecStart=\nExecStart=/usr/local/sbin/vks-failpoints run --config /etc/vks/config.toml\n\
             Environment=FAILPOINTS={failpoints}\nWatchdogSec={watchdog_sec}s\n"
        );
        self.put_file("/run/systemd/system/vks.service.d/failpoints.conf", dropin.as_bytes());
        self.exec(&["systemctl", "daemon-reload"]);
        self.exec(&["systemctl", "restart", "--no-block", "vks"]);
    }

    /// Back to the packaged vks (removes the drop-in of `run_vks_with_failpoints`) and restarts it.
    pub fn clear_vks_override(&self) {
        self.exec(&["rm", "-f", "/run/systemd/system/vks.service.d/failpoints.conf"]);
        self.exec(&["systemctl", "daemon-reload"]);
        self.exec(&["systemctl", "reset-failed", "vks"]);
        self.exec(&["systemctl", "restart", "vks"]);
    }

    /// The node's Ready condition: (status, message).
    pub async fn ready(&self, client: &kube::Client) -> (String, String) {
        let n = self.object(client).await;
        let c = n.status.and_then(|s| s.conditions).unwrap_or_default().into_iter().find(|c| c.type_ == "Ready");
        c.map(|c| (c.status, c.message.unwrap_or_default())).unwrap_or_default()
    }
}

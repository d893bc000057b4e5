//! Joining through the k3s supervisor (issue 10), against the test bed's k3s-compatible supervisor
//! (k3s/supervisor: k3s's handlers, auth and node-password secrets, the real rancher/remotedialer
//! server) next to the real API server, whose egress selector reaches nodes through it: every k3s
//! token form joins; refusals name their cause; the API server reaches a k3s-joined node's
//! kubelet API through the node's tunnel; the tunnel survives the supervisor going away; the
//! certificates are renewed by the supervisor and the tunnel re-authenticates with them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::package::{Token, ca_hash, stage_packages, write_config};
use crate::support::*;

/// The shared supervisor of the test cluster (k3s/cluster up starts it).
const SUPERVISOR: &str = "https://127.0.0.1:9345";

fn cluster_dir() -> PathBuf {
    kubeconfig().parent().unwrap().to_owned()
}

fn pki(file: &str) -> String {
    cluster_dir().join("pki").join(file).to_string_lossy().into_owned()
}

/// The shared supervisor's token (its server/token file).
fn supervisor_password() -> String {
    std::fs::read_to_string(cluster_dir().join("supervisor/token")).unwrap().trim().to_owned()
}

fn supervisor_log() -> String {
    std::fs::read_to_string(cluster_dir().join("logs/supervisor.log")).unwrap_or_default()
}

/// A stock Debian node with the vks package installed and nothing configured.
fn installed(test: &str) -> Node {
    let node = Node::bare(test);
    let out = node.sh(&stage_packages(&node));
    assert!(out.contains("vks: to join a cluster"), "{out}");
    node
}

/// The node's config for joining `server` as `name`; `token` is a `token = ...` or
/// `token_file = ...` line.
fn k3s_config(node: &Node, name: &str, server: &str, token: &str) -> String {
    let ip = node.ip();
    format!(
        "[node]\nname = \"{name}\"\ninternal_ip = \"{ip}\"\n\n[cluster]\nserver = \"{server}\"\n{token}\n\n\
         [kubelet]\naddress = \"{ip}\"\n"
    )
}

/// Forgets the node's credentials (keeps its node password: the same machine joins again).
fn forget_credentials(node: &Node) {
    node.sh("rm -f /etc/vks/kubeconfig /var/lib/vks/k3s-supervisor /var/lib/vks/client-ca.crt \
         /var/lib/vks/pki/kubelet-serving.pem");
}

/// `vks join`: (exit code, stdout + stderr).
fn join(node: &Node) -> (Option<i32>, String) {
    let out = node.exec_output(&["vks", "join"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

fn delete_password_secret(name: &str) {
    let _ = kubectl_output(&[
        "-n",
        "kube-system",
        "delete",
        "secret",
        &format!("{name}.node-password.k3s"),
        "--wait=false",
    ]);
}

async fn wait_ready(node: &Node) {
    wait_for("the node to be Ready", Duration::from_secs(90), async || {
        let out = kubectl_output(&[
            "get",
            "node",
            &node.name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        let st = String::from_utf8_lossy(&out.stdout).into_owned();
        if st == "True" { Ok(()) } else { Err(format!("Ready={st:?}")) }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn every_k3s_token_form_joins_and_the_api_server_reaches_the_node_through_its_tunnel() {
    let node = installed("k3s-forms");
    let (hash, password) = (ca_hash(), supervisor_password());
    let bootstrap = Token::new();
    node.put_file(
        "/etc/vks/node-token",
        std::fs::read(cluster_dir().join("supervisor/node-token")).unwrap().as_slice(),
    );
    let forms = [
        ("K10<hash>::node:<password>", format!("token = \"K10{hash}::node:{password}\"")),
        ("K10<hash>::<id>.<secret>", format!("token = \"K10{hash}::{}\"", bootstrap.text())),
        ("a bare bootstrap token", format!("token = \"{}\"", bootstrap.text())),
        ("a bare password", format!("token = \"{password}\"")),
        // The server's node-token file as k3s writes it: K10<hash>::server:<password>.
        ("token_file with the server's node-token", "token_file = \"/etc/vks/node-token\"".to_owned()),
    ];
    for (form, line) in &forms {
        forget_credentials(&node);
        write_config(&node, &k3s_config(&node, &node.name, SUPERVISOR, line));
        let (code, out) = join(&node);
        assert_eq!(code, Some(0), "{form}: {out}");
        assert!(out.contains(&format!("node {} joined {SUPERVISOR}", node.name)), "{form}: {out}");
        // The kubeconfig names the API server (HTTPSPort of /v1-k3s/config), not the supervisor.
        let kc = node.exec(&["cat", "/etc/vks/kubeconfig"]);
        assert!(kc.contains("server: https://127.0.0.1:6443"), "{form}: {kc}");
        let subject = node.sh(
            "sed -n 's/^ *client-certificate-data: //p' /etc/vks/kubeconfig | base64 -d | openssl x509 -noout -subject",
        );
        assert_eq!(subject.trim(), format!("subject=O = system:nodes, CN = system:node:{}", node.name), "{form}");
    }
    // The serving certificate: CN <node> from the server CA, for the node's IP.
    let serving =
        node.sh("openssl x509 -in /var/lib/vks/pki/kubelet-serving.pem -noout -subject -issuer -ext subjectAltName");
    assert!(serving.contains(&format!("subject=CN = {}", node.name)), "{serving}");
    assert!(serving.contains("issuer=CN = vks-server-ca"), "{serving}");
    assert!(serving.contains(&format!("IP Address:{}", node.ip())), "{serving}");
    // The client CA bundle for the kubelet API: the supervisor's client-ca.crt, 0644.
    assert_eq!(node.sh("stat -c %a /var/lib/vks/client-ca.crt").trim(), "644");
    assert_eq!(
        node.exec(&["cat", "/var/lib/vks/client-ca.crt"]),
        std::fs::read_to_string(pki("client-ca.crt")).unwrap()
    );
    // k3s's node-password secret.
    let secret = kubectl(&[
        "-n",
        "kube-system",
        "get",
        "secret",
        &format!("{}.node-password.k3s", node.name),
        "-o",
        "jsonpath={.type} {.immutable}",
    ]);
    assert_eq!(secret, "k3s.cattle.io/node-password true");

    // Running: Ready, with the tunnel open.
    node.exec(&["systemctl", "enable", "--now", "vks"]);
    wait_ready(&node).await;
    wait_for("the node's tunnel", Duration::from_secs(30), async || {
        let log = node.vks_journal();
        if log.contains(&format!("tunnel to {SUPERVISOR} connected")) { Ok(()) } else { Err("not yet".to_owned()) }
    })
    .await;
    assert!(supervisor_log().contains(&format!("Tunnel session opened by node {}", node.name)));
    // The kubelet API answers through the supervisor and the tunnel, as the API server's egress
    // selector asks for it (HTTP CONNECT as system:masters): the supervisor logs each such dial.
    let via = format!("via session to node {} ", node.name);
    let before = supervisor_log().matches(&via).count();
    assert_eq!(through(SUPERVISOR, &node.ip(), "/healthz").unwrap(), "ok");
    assert_eq!(supervisor_log().matches(&via).count(), before + 1, "the request did not go through the tunnel");
    // The API server itself: `kubectl logs` of a pod on the node goes through its egress selector,
    // the supervisor and the tunnel to vks's kubelet API. (Node proxy requests cannot show it:
    // the API server refuses to proxy to the test nodes' loopback addresses.)
    let client = client().await;
    let ns = Namespace::new("k3s-forms");
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "talk" },
        "spec": { "nodeName": node.name, "containers": [
            { "name": "main", "image": "/bin/sh", "command": ["/bin/sh", "-c", "echo hello-through-the-tunnel; sleep 3600"] }
        ] }
    });
    create_pod(&client, &ns.name, pod).await;
    wait_phase(&client, &ns.name, "talk", "Running", Duration::from_secs(60)).await;
    // Each `kubectl logs` is one dial through the tunnel; the first line may take a moment to
    // reach the journal after the container runs.
    let before = supervisor_log().matches(&via).count();
    let mut asked = 0;
    wait_for("kubectl logs through the tunnel", Duration::from_secs(30), async || {
        asked += 1;
        let out = kubectl_output(&["-n", &ns.name, "logs", "talk"]);
        let answer = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() && answer.trim() == "hello-through-the-tunnel" { Ok(()) } else { Err(answer) }
    })
    .await;
    assert_eq!(supervisor_log().matches(&via).count(), before + asked, "kubectl logs did not go through the tunnel");
    // The password secret now belongs to the Node (deleted with it).
    wait_for("the owner reference of the node-password secret", Duration::from_secs(30), async || {
        let owner = kubectl(&[
            "-n",
            "kube-system",
            "get",
            "secret",
            &format!("{}.node-password.k3s", node.name),
            "-o",
            "jsonpath={.metadata.ownerReferences[0].name}",
        ]);
        if owner == node.name { Ok(()) } else { Err(owner) }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn refused_k3s_joins_name_their_cause() {
    let node = installed("k3s-refused");
    let (hash, password) = (ca_hash(), supervisor_password());
    let name = format!("k3s-taken-{}", std::process::id() % 10_000);
    let refused = |line: &str, server: &str, needle: &str| {
        forget_credentials(&node);
        write_config(&node, &k3s_config(&node, &name, server, line));
        let (code, out) = join(&node);
        assert_eq!(code, Some(65), "{line}: {out}");
        assert!(out.contains(needle), "expected {needle:?} for {line}:\n{out}");
        let files = node.sh("ls /etc/vks/kubeconfig /var/lib/vks/pki/* /var/lib/vks/client-ca.crt 2>/dev/null || true");
        assert_eq!(files.trim(), "", "credentials written by a refused join");
    };
    refused(&format!("token = \"K10{hash}::node:wrong\""), SUPERVISOR, "refused the token");
    refused(
        &format!("token = \"K10{}::node:{password}\"", "0".repeat(64)),
        SUPERVISOR,
        "does not match the CA hash of the token",
    );
    refused(&format!("token = \"{password}\""), "https://127.0.0.1:6443", "does not serve /cacerts");
    // A bootstrap token without the group k3s lets join (system:bootstrappers:kubeadm:default-node-token).
    let other = Token::new();
    kubectl(&[
        "-n",
        "kube-system",
        "patch",
        "secret",
        &format!("bootstrap-token-{}", other.id),
        "-p",
        "{\"stringData\":{\"auth-extra-groups\":\"system:bootstrappers:vks\"}}",
    ]);
    refused(&format!("token = \"K10{hash}::{}\"", other.text()), SUPERVISOR, "may not join nodes");

    // The name is taken once another machine (another node password) asked for it first.
    forget_credentials(&node);
    write_config(&node, &k3s_config(&node, &name, SUPERVISOR, &format!("token = \"{password}\"")));
    let (code, out) = join(&node);
    assert_eq!(code, Some(0), "{out}");
    node.sh("head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /var/lib/vks/node-password");
    refused(
        &format!("token = \"{password}\""),
        SUPERVISOR,
        &format!("node name {name} is already taken by another machine"),
    );
    delete_password_secret(&name);
}

/// A supervisor of this test alone (the cached k3s/supervisor binary, the cluster's PKI and API
/// server, its own port, token and log), to stop and restart, or to sign short-lived
/// certificates, without disturbing the shared one.
struct PrivateSupervisor {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    validity: String,
}

impl PrivateSupervisor {
    fn start(test: &str, validity: &str) -> PrivateSupervisor {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("vks-supervisor-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = PrivateSupervisor { child: None, port, dir, validity: validity.to_owned() };
        s.restart();
        s
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let bin = check(&mut Command::new(repo().join("k3s/build-supervisor")));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("log")).unwrap();
        let child = Command::new(bin.trim())
            .arg(format!("--listen=127.0.0.1:{}", self.port))
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .args([
                format!("--server-ca={}", pki("server-ca.crt")),
                format!("--server-ca-key={}", pki("server-ca.key")),
            ])
            .args([
                format!("--client-ca={}", pki("client-ca.crt")),
                format!("--client-ca-key={}", pki("client-ca.key")),
            ])
            .arg(format!("--kubeconfig={}", kubeconfig().display()))
            .arg(format!("--cert-validity={}", self.validity))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let url = format!("{}/ping", self.url());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("curl")
                .args(["-sS", "--max-time", "2", "--cacert", &pki("server-ca.crt"), &url])
                .output()
                .unwrap();
            if out.stdout == b"pong" {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "private supervisor did not answer:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn password(&self) -> String {
        std::fs::read_to_string(self.dir.join("data/token")).unwrap().trim().to_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn through(&self, ip: &str, path: &str) -> Result<String, String> {
        through(&self.url(), ip, path)
    }
}

/// GET https://<ip>:10250<path> through a supervisor's HTTP CONNECT, as the API server's egress
/// selector does it (client certificate in system:masters; the kubelet API's certificate checked
/// against the server CA).
fn through(supervisor: &str, ip: &str, path: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--proxy", supervisor, "--proxy-cacert", &pki("server-ca.crt")])
        .args(["--proxy-cert", &pki("admin.crt"), "--proxy-key", &pki("admin.key"), "--cacert", &pki("server-ca.crt")])
        .arg(format!("https://{ip}:10250{path}"))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for PrivateSupervisor {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- private supervisor log\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A node joined to `sup` with its password token and running.
async fn joined_to(test: &str, sup: &PrivateSupervisor) -> Node {
    let token = format!("token = \"K10{}::node:{}\"", ca_hash(), sup.password());
    joined_with(test, sup, &token).await
}

/// A node joined to `sup` with `token` (a `token = ...` line) and running.
async fn joined_with(test: &str, sup: &PrivateSupervisor, token: &str) -> Node {
    let node = installed(test);
    write_config(&node, &k3s_config(&node, &node.name, &sup.url(), token));
    node.exec(&["systemctl", "enable", "--now", "vks"]);
    wait_ready(&node).await;
    node
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn the_tunnel_is_reopened_after_the_supervisor_went_away() {
    let mut sup = PrivateSupervisor::start("drop", "8760h");
    let node = joined_to("k3s-tunnel-drop", &sup).await;
    let ip = node.ip();
    let connected = |n: usize| {
        let node = &node;
        async move {
            wait_for(&format!("tunnel connection {n}"), Duration::from_secs(60), async || {
                let log = node.vks_journal();
                let opened = log.lines().filter(|l| l.starts_with("tunnel to ") && l.contains(" connected")).count();
                if opened >= n { Ok(()) } else { Err(format!("{opened} connected")) }
            })
            .await;
        }
    };
    connected(1).await;
    let via = format!("via session to node {} ", node.name);
    assert_eq!(sup.through(&ip, "/healthz").unwrap(), "ok");
    assert_eq!(sup.log().matches(&via).count(), 1, "{}", sup.log());

    // The supervisor goes away: the tunnel breaks; a CONNECT finds no supervisor.
    sup.kill();
    wait_for("vks to notice the broken tunnel", Duration::from_secs(90), async || {
        let log = node.vks_journal();
        if log.contains("reconnecting") { Ok(()) } else { Err("no reconnect yet".to_owned()) }
    })
    .await;
    assert!(sup.through(&ip, "/healthz").is_err());

    // Back again: vks reconnects (back-off at most 30 s) and the kubelet API answers through it.
    sup.restart();
    connected(2).await;
    wait_for("a request through the reopened tunnel", Duration::from_secs(30), async || sup.through(&ip, "/healthz"))
        .await;
    assert_eq!(sup.log().matches(&via).count(), 2, "{}", sup.log());
    assert_eq!(node.unit_prop("vks", "NRestarts"), "0");
    delete_password_secret(&node.name);
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn the_supervisor_renews_the_certificates_and_the_tunnel_reauthenticates() {
    // Certificates valid for 2 minutes: renewed at 70-90 % of that, i.e. within 84-108 s.
    let sup = PrivateSupervisor::start("renew", "2m");
    // Joined with a bootstrap token that is gone before the renewal: the supervisor renews for
    // the node's own client certificate (Node authorization, as k3s lets agents do).
    let token = Token::new();
    let node = joined_with("k3s-renew", &sup, &format!("token = \"K10{}::{}\"", ca_hash(), token.text())).await;
    drop(token);
    let pid = node.unit_prop("vks", "MainPID");
    let client_serial = || {
        node.sh(
            "sed -n 's/^ *client-certificate-data: //p' /etc/vks/kubeconfig | base64 -d | openssl x509 -noout -serial",
        )
    };
    let first = client_serial();
    let signed = |what: &str| sup.log().matches(&format!("signed /v1-k3s/{what}")).count();
    assert_eq!((signed("client-kubelet.crt"), signed("serving-kubelet.crt")), (1, 1), "{}", sup.log());
    wait_for("both certificates renewed by the supervisor", Duration::from_secs(150), async || {
        let log = node.vks_journal();
        let done = log.contains("renewed the client certificate")
            && log.contains("the client certificate was renewed; reconnecting with it")
            && signed("serving-kubelet.crt") >= 2;
        if done { Ok(()) } else { Err(log.lines().rev().take(4).collect::<Vec<_>>().join(" | ")) }
    })
    .await;
    assert_ne!(client_serial(), first);
    assert!(signed("client-kubelet.crt") >= 2, "{}", sup.log());
    // The tunnel was reopened with the new certificate and serves the renewed serving one.
    assert!(sup.log().matches(&format!("Tunnel session opened by node {}", node.name)).count() >= 2, "{}", sup.log());
    wait_for("a request through the re-authenticated tunnel", Duration::from_secs(30), async || {
        sup.through(&node.ip(), "/healthz")
    })
    .await;
    assert_eq!(node.unit_prop("vks", "MainPID"), pid, "vks was not restarted");
    delete_password_secret(&node.name);
}

/// What the PEM/DER mismatch of issue 10 looked like, against the supervisor's Go
/// `x509.ParseCertificateRequest`: a DER CSR is signed for its key; the same CSR in PEM is not
/// parsed and k3s answers with a certificate for its shared legacy key, and that key. (vks sends
/// DER, and refuses such an answer.)
#[tokio::test]
#[ignore = "needs the test cluster: run tests/run"]
async fn the_supervisor_signs_der_csrs_and_answers_pem_ones_with_its_own_key() {
    let dir = std::env::temp_dir().join(format!("vks-csr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let name = format!("csr-probe-{}", std::process::id() % 10_000);
    let d = dir.display();
    check(Command::new("sh").arg("-c").arg(format!(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {d}/key.pem -subj /CN=x \
         -out {d}/csr.pem 2>/dev/null && openssl req -in {d}/csr.pem -outform DER -out {d}/csr.der"
    )));
    let post = |body: &str| {
        check(
            Command::new("curl")
                .args(["-sS", "--fail-with-body", "--cacert", &pki("server-ca.crt")])
                .args(["-u", &format!("node:{}", supervisor_password())])
                .args(["-H", &format!("k3s-Node-Name: {name}"), "-H", "k3s-Node-Password: probe-password"])
                .args(["--data-binary", &format!("@{d}/{body}")])
                .arg(format!("{SUPERVISOR}/v1-k3s/client-kubelet.crt")),
        )
    };
    let der = post("csr.der");
    assert_eq!(der.matches("BEGIN CERTIFICATE").count(), 2, "certificate and CA: {der}");
    assert!(!der.contains("PRIVATE KEY"), "{der}");
    let pem = post("csr.pem");
    assert!(pem.contains("BEGIN EC PRIVATE KEY"), "a PEM CSR gets the shared key: {pem}");
    // vks refuses that answer (unit test join::k3s::tests::replies_name_their_cause).
    delete_password_secret(&name);
    let _ = std::fs::remove_dir_all(&dir);
}

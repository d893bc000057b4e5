//! The Debian package, exactly as a user meets it (issue 5): on a stock Debian node without vks,
//! `apt install ./vks_*.deb`, write /etc/vks/config.toml with the cluster's URL and a bootstrap
//! token, `systemctl enable --now vks`; the node joins (client certificate for
//! `system:node:<name>`), turns Ready, gets its serving certificate once an operator approves
//! it; `systemctl stop` is clean; `apt purge` leaves nothing. And the refusals: wrong token,
//! wrong CA hash, unreachable server, a second machine claiming a taken node name — each named,
//! with nothing registered.

use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::debs::{self, Fixture};
use crate::support::*;

/// The package under test: `VKS_DEB` (tests/run sets it), else the newest one `cargo deb` made.
fn deb() -> PathBuf {
    if let Ok(p) = std::env::var("VKS_DEB") {
        return PathBuf::from(p);
    }
    let dir = repo().join("target/debian");
    let mut debs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (build the package: cargo deb, or set VKS_DEB)", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb") && p.to_string_lossy().contains("/vks_"))
        .collect();
    debs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    debs.pop().expect("no vks .deb in target/debian: cargo deb, or set VKS_DEB")
}

/// The cached policyrcd-script-zg2 package (k3s/lib/deps.sh downloads it once).
fn zg2_deb() -> PathBuf {
    let out = check(
        Command::new("bash")
            .args(["-c", ". k3s/lib/deps.sh && vks_cached_deb policyrcd-script-zg2"])
            .current_dir(repo()),
    );
    PathBuf::from(out.trim())
}

/// Copies the packages into the node and makes it look like stock Debian (no container
/// policy-rc.d, see k3s/node). Returns the apt command line that installs them.
pub(crate) fn stage_packages(node: &Node) -> String {
    let dir = node.root().join("tmp/pkgs");
    std::fs::create_dir_all(&dir).unwrap();
    for p in [deb(), zg2_deb()] {
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    node.sh("if [ -f /usr/sbin/policy-rc.d ] && [ ! -L /usr/sbin/policy-rc.d ]; then rm /usr/sbin/policy-rc.d; fi");
    "cd /tmp/pkgs && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Options::=--force-confold \
     ./policyrcd-script-zg2_*.deb ./vks_*.deb 2>&1"
        .to_owned()
}

/// A bootstrap token made as kubeadm makes one; deleted on drop.
pub(crate) struct Token {
    pub(crate) id: String,
    secret: String,
}

impl Token {
    pub(crate) fn new() -> Token {
        let mut bytes = [0u8; 22];
        std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let s: String = bytes.iter().map(|b| alphabet[*b as usize % alphabet.len()] as char).collect();
        let t = Token { id: s[..6].to_owned(), secret: s[6..].to_owned() };
        apply(&format!(
            r#"apiVersion: v1
kind: Secret
metadata:
  name: bootstrap-token-{id}
  namespace: kube-system
type: bootstrap.kubernetes.io/token
stringData:
  description: "vks e2e test"
  token-id: "{id}"
  token-secret: "{secret}"
  usage-bootstrap-authentication: "true"
  usage-bootstrap-signing: "true"
  auth-extra-groups: "system:bootstrappers:kubeadm:default-node-token"
"#,
            id = t.id,
            secret = t.secret
        ));
        t
    }

    pub(crate) fn text(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        let _ = kubectl_output(&["-n", "kube-system", "delete", "secret", &format!("bootstrap-token-{}", self.id)]);
    }
}

/// The config a user writes: node name and address, the server URL and a token.
fn config(node: &Node, name: &str, server: &str, token: &str) -> String {
    let ip = node.ip();
    format!(
        "[node]\nname = \"{name}\"\ninternal_ip = \"{ip}\"\n\n[cluster]\nserver = \"{server}\"\ntoken = \"{token}\"\n\n\
         [kubelet]\naddress = \"{ip}\"\n"
    )
}

/// Writes /etc/vks/config.toml (0600: it holds the token).
pub(crate) fn write_config(node: &Node, text: &str) {
    let path = node.root().join("etc/vks/config.toml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    node.exec(&["chmod", "600", "/etc/vks/config.toml"]);
}

const SERVER: &str = "https://127.0.0.1:6443";

/// SHA-256 of the cluster CA as served (what a K10 token pins).
pub(crate) fn ca_hash() -> String {
    let kc = kubeconfig().to_string_lossy().into_owned();
    let ca = check(Command::new("sh").arg("-c").arg(format!(
        "sed -n 's/^ *certificate-authority-data: //p' {kc} | head -n 1 | base64 -d | sha256sum | cut -d' ' -f1"
    )));
    ca.trim().to_owned()
}

fn node_exists(name: &str) -> bool {
    kubectl_output(&["get", "node", name]).status.success()
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn apt_install_join_ready_stop_and_purge() {
    let node = Node::bare("package");
    let apt = node.sh(&stage_packages(&node));
    // Without a server and token the postinst says what to configure, and starts nothing.
    assert!(apt.contains("vks: to join a cluster, set [cluster] server and token"), "{apt}");
    assert_eq!(node.exec(&["readlink", "-f", "/usr/sbin/policy-rc.d"]).trim(), "/usr/sbin/zg-policy-rc.d");
    assert_eq!(node.exec_output(&["systemctl", "is-active", "vks"]).status.code(), Some(3), "not started");
    node.exec(&["vks", "check"]);

    // The user's path: config, enable --now.
    let token = Token::new();
    write_config(&node, &config(&node, &node.name, SERVER, &format!("K10{}::{}", ca_hash(), token.text())));
    node.exec(&["systemctl", "enable", "--now", "vks"]);
    let client = client().await;
    wait_for("the node to be Ready", Duration::from_secs(60), async || {
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
    let n = node.object(&client).await;
    let hash = n.metadata.annotations.unwrap_or_default().remove("vks.io/node-password-hash");
    assert_eq!(hash.map(|h| h.len()), Some(64), "the Node carries the node-password hash");

    // Credentials: 0600 files; the client certificate is system:node:<name> in system:nodes.
    let modes = node.sh("stat -c '%a %n' /etc/vks/kubeconfig /var/lib/vks/node-password /etc/vks/config.toml");
    assert_eq!(modes.lines().filter(|l| l.starts_with("600 ")).count(), 3, "{modes}");
    let subject = node.sh(
        "sed -n 's/^ *client-certificate-data: //p' /etc/vks/kubeconfig | base64 -d | openssl x509 -noout -subject",
    );
    assert_eq!(subject.trim(), format!("subject=O = system:nodes, CN = system:node:{}", node.name));
    // The kubelet API's client CA: the API server's, read from extension-apiserver-authentication.
    let client_ca = kubeconfig().parent().unwrap().join("pki/client-ca.crt");
    assert_eq!(node.exec(&["cat", "/var/lib/vks/client-ca.crt"]), std::fs::read_to_string(client_ca).unwrap());
    // Re-running the join is a no-op.
    let again = node.exec(&["vks", "join"]);
    assert!(again.contains("already joined"), "{again}");

    // The serving certificate: vks asked for it; an operator approves; vks serves it.
    let csr = wait_for("a kubelet-serving CSR from the node", Duration::from_secs(30), async || {
        pending_serving_csrs(&node.name).pop().ok_or_else(|| "none yet".to_owned())
    })
    .await;
    kubectl(&["certificate", "approve", &csr]);
    let ip = node.ip();
    wait_for("vks to serve the issued certificate", Duration::from_secs(30), async || {
        let out = check(Command::new("sh").arg("-c").arg(format!(
            "echo | timeout 5 openssl s_client -connect {ip}:10250 2>/dev/null | openssl x509 -noout -issuer -subject \
             2>/dev/null || true"
        )));
        if out.contains("issuer=CN = vks-server-ca") && out.contains(&format!("CN = system:node:{}", node.name)) {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await;

    // Structured journal entries.
    let json = node.exec(&["journalctl", "-u", "vks", "-o", "json", "--no-pager"]);
    let entries: Vec<serde_json::Value> = json.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(
        entries.iter().any(|e| e["NODE"] == node.name.as_str() && e["SYSLOG_IDENTIFIER"] == "vks"),
        "no journal entry with NODE={}",
        node.name
    );
    let log = node.vks_journal();
    assert!(log.contains(&format!("node {} joined {SERVER}", node.name)), "{log}");

    // A clean stop: STOPPING=1, exit 0.
    node.stop_vks_cleanly();

    // A pod whose image is a Debian package, from an apt source configured in [images].
    node.exec(&["systemctl", "start", "vks"]);
    let fx = Fixture::new("package", &[debs::tool("vks-test-tool", "1.0", "usr/bin/vks-test-tool")], &[]);
    let images = fx.images_config(&node, "");
    node.sh(&format!("cat >> /etc/vks/config.toml <<'EOF'\n{images}\nEOF\nsystemctl restart vks"));
    let ns = Namespace::new("package");
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "tool" },
        "spec": { "nodeName": node.name, "restartPolicy": "Never", "containers": [
            { "name": "t", "image": "vks-test-tool", "imagePullPolicy": "IfNotPresent", "command": ["vks-test-tool"] }
        ] }
    });
    create_pod(&client, &ns.name, pod).await;
    wait_phase(&client, &ns.name, "tool", "Running", Duration::from_secs(180)).await;
    assert!(node.sh("ls /etc/apt/sources.list.d/").contains("vks-test.sources"));

    // Purge: no vks files, no vks process; the package the pod installed stays.
    let purge = node.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q vks 2>&1");
    assert!(purge.contains("Purging configuration files for vks"), "{purge}");
    let status = node.sh("dpkg-query -W -f '${Status} ${Version}' vks-test-tool");
    assert_eq!(status, "install ok installed 1.0", "the pod's package");
    assert!(!node.sh("ls /etc/apt/sources.list.d/").contains("vks-"), "vks's apt sources are gone");
    let left = node.sh(
        "for f in /usr/bin/vks /etc/vks /var/lib/vks /lib/systemd/system/vks.service /usr/lib/systemd/system/vks.service \
         /etc/systemd/system/multi-user.target.wants/vks.service /usr/share/doc/vks; do [ -e $f ] && echo $f; done; \
         pgrep -x vks || true",
    );
    assert_eq!(left.trim(), "", "left behind by apt purge");
    assert!(node.exec_output(&["dpkg", "-s", "vks"]).status.code() != Some(0));
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn refused_joins_name_the_cause_and_register_nothing() {
    // The first machine: a node installed the user's way by k3s/node.
    let first = Node::up("taken");
    let machine = Node::bare("second");
    let token = Token::new();
    let fresh = format!("join-fresh-{}", std::process::id() % 10_000);

    // A failed join in the postinst explains itself, leaves dpkg configured and vks stopped.
    let wrong_secret = format!("{}.0000000000000000", token.id);
    write_config(&machine, &config(&machine, &fresh, SERVER, &wrong_secret));
    let apt = machine.sh(&stage_packages(&machine));
    assert!(apt.contains("refused the token"), "{apt}");
    assert!(apt.contains("the node is not registered"), "{apt}");
    assert!(machine.exec(&["dpkg", "-s", "vks"]).contains("Status: install ok installed"));
    assert_ne!(machine.exec_output(&["systemctl", "is-enabled", "vks"]).status.code(), Some(0));

    let join = |expect_code: i32, needle: &str| {
        let out = machine.exec_output(&["vks", "join"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(expect_code), "{err}");
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
        let files = machine.sh("ls /etc/vks/kubeconfig /var/lib/vks/pki 2>/dev/null || true");
        assert_eq!(files.trim(), "", "credentials written by a refused join");
    };
    // Wrong secret (exit 65: refused).
    join(65, "refused the token: the cluster-info signature for token id");
    // Unknown token.
    write_config(&machine, &config(&machine, &fresh, SERVER, "zzzzzz.0000000000000000"));
    join(65, "the cluster does not know this token");
    // A CA hash that is not the cluster's.
    let other_hash = "0".repeat(64);
    write_config(&machine, &config(&machine, &fresh, SERVER, &format!("K10{other_hash}::{}", token.text())));
    join(65, "does not match the CA hash of the token");
    // Nobody listening (exit 1: may work later).
    write_config(&machine, &config(&machine, &fresh, "https://127.0.0.1:1", &token.text()));
    join(1, "cannot reach the server https://127.0.0.1:1");
    assert!(!node_exists(&fresh), "a refused join registered Node {fresh}");

    // A second machine claiming the first one's name, with a valid token.
    let client = client().await;
    let before = first.object(&client).await.metadata.annotations;
    write_config(&machine, &config(&machine, &first.name, SERVER, &token.text()));
    join(65, &format!("node name {} is already taken by another machine", first.name));
    // vks.service refuses too, and does not restart in a loop.
    let _ = machine.exec_output(&["systemctl", "start", "vks"]);
    wait_for("vks.service to fail", Duration::from_secs(30), async || {
        let st = machine.unit_prop("vks", "ActiveState");
        if st == "failed" { Ok(()) } else { Err(st) }
    })
    .await;
    assert_eq!(machine.unit_prop("vks", "ExecMainStatus"), "65");
    assert_eq!(machine.unit_prop("vks", "NRestarts"), "0");
    let log = machine.vks_journal();
    assert!(log.contains(&format!("node name {} is already taken", first.name)), "{log}");
    // The first machine's Node is untouched and still Ready.
    assert_eq!(first.object(&client).await.metadata.annotations, before);
    let ready =
        kubectl(&["get", "node", &first.name, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"]);
    assert_eq!(ready, "True");
}

/// Mints a client certificate for `system:node:<node>` signed by the test cluster's client CA,
/// valid from 30 s ago for `lifetime`: a certificate that is soon due for renewal.
fn short_lived_client_cert(node: &str, lifetime: Duration) -> vks::join::files::KeyPairPem {
    let pki = kubeconfig().parent().unwrap().join("pki");
    let ca_pem = std::fs::read_to_string(pki.join("client-ca.crt")).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("client-ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let start = time::OffsetDateTime::now_utc() - time::Duration::seconds(30);
    params.not_before = start;
    params.not_after = start + time::Duration::try_from(lifetime).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    vks::join::files::KeyPairPem { certs_pem: cert.pem(), key_pem: key.serialize_pem() }
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn the_client_certificate_is_renewed_without_a_restart() {
    let node = Node::up("renew");
    let client = client().await;
    // Give the running node a client certificate that expires in 90 s: due for renewal at 70-90 %
    // of its 2-minute lifetime, i.e. within 54-78 s.
    node.exec(&["systemctl", "stop", "vks"]);
    let kc_path = node.root().join("etc/vks/kubeconfig");
    let creds = vks::join::files::read_kubeconfig(&kc_path).unwrap();
    let short = short_lived_client_cert(&node.name, Duration::from_secs(120));
    let old = short.leaf().unwrap();
    let text = vks::join::files::render_kubeconfig(
        &creds.server,
        creds.ca_pem.as_deref().unwrap(),
        &short,
        &format!("system:node:{}", node.name),
    )
    .unwrap();
    vks::join::files::write_private(&kc_path, text.as_bytes()).unwrap();
    node.exec(&["systemctl", "start", "vks"]);
    let pid = node.unit_prop("vks", "MainPID");
    let log = node.vks_journal();
    assert!(log.contains(&format!("node {} already has credentials", node.name)), "{log}");

    wait_for("the client certificate to be renewed", Duration::from_secs(100), async || {
        let log = node.vks_journal();
        if log.contains("renewed the client certificate") && log.contains("API clients reloaded") {
            Ok(())
        } else {
            Err(log.lines().rev().take(5).collect::<Vec<_>>().join(" | "))
        }
    })
    .await;
    let renewed = vks::join::files::read_kubeconfig(&kc_path).unwrap().client.leaf().unwrap();
    assert_ne!(renewed.serial, old.serial);
    assert_eq!(renewed.common_name, format!("system:node:{}", node.name));
    assert!(renewed.not_after > old.not_after + Duration::from_secs(3600), "a full-length certificate");

    // Once the old certificate has expired, the same process keeps the Node's Lease fresh: it
    // talks to the API server with the new one.
    let expired = old.not_after + Duration::from_secs(1);
    while std::time::SystemTime::now() < expired {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(client.clone(), "kube-node-lease");
    wait_for("a Lease renewal after the old certificate expired", Duration::from_secs(30), async || {
        let lease = leases.get(&node.name).await.map_err(|e| e.to_string())?;
        let renew = lease.spec.and_then(|s| s.renew_time).map(|t| t.0.as_second()).unwrap_or(0);
        let expired_at = expired.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        if renew > expired_at { Ok(()) } else { Err(format!("renewTime {renew} <= {expired_at}")) }
    })
    .await;
    assert_eq!(node.unit_prop("vks", "MainPID"), pid, "vks was not restarted");
    assert_eq!(node.unit_prop("vks", "NRestarts"), "0");
}

/// The serial number of the kubelet API's certificate as a client sees it (upper-case hex, no
/// leading zeros), empty when nothing answers.
fn served_serial(ip: &str) -> String {
    let out = check(Command::new("sh").arg("-c").arg(format!(
        "echo | timeout 5 openssl s_client -connect {ip}:10250 2>/dev/null | openssl x509 -noout -serial 2>/dev/null \
         || true"
    )));
    out.trim().strip_prefix("serial=").unwrap_or_default().trim_start_matches('0').to_owned()
}

/// The pending kubelet-serving CSRs of `node`.
fn pending_serving_csrs(node: &str) -> Vec<String> {
    let out = kubectl(&[
        "get",
        "csr",
        "--no-headers",
        "--field-selector",
        "spec.signerName=kubernetes.io/kubelet-serving",
        "-o",
        "custom-columns=NAME:.metadata.name,USER:.spec.username,COND:.status.conditions[*].type",
    ]);
    let user = format!("system:node:{node}");
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[1] == user && f[2] == "<none>").then(|| f[0].to_owned())
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn the_serving_certificate_is_renewed_without_a_restart() {
    let node = Node::up("renew-serving");
    let ip = node.ip();
    // A serving certificate from the cluster's server CA that expires in 90 s.
    node.exec(&["systemctl", "stop", "vks"]);
    let pki = kubeconfig().parent().unwrap().join("pki");
    let ca_pem = std::fs::read_to_string(pki.join("server-ca.crt")).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("server-ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![node.name.clone(), ip.clone()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("system:node:{}", node.name));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let start = time::OffsetDateTime::now_utc() - time::Duration::seconds(30);
    params.not_before = start;
    params.not_after = start + time::Duration::seconds(120);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let pair = vks::join::files::KeyPairPem { certs_pem: cert.pem(), key_pem: key.serialize_pem() };
    pair.write_combined(&node.root().join("var/lib/vks/pki/kubelet-serving.pem")).unwrap();
    let short_serial = pair.leaf().unwrap().serial.replace(':', "").to_uppercase().trim_start_matches('0').to_owned();
    node.exec(&["systemctl", "start", "vks"]);
    let pid = node.unit_prop("vks", "MainPID");
    assert_eq!(served_serial(&ip), short_serial, "serves the stored certificate");

    // Due at 70-90 % of its lifetime: vks asks for a new one; the operator approves it.
    let csr = wait_for("a new kubelet-serving CSR", Duration::from_secs(100), async || {
        pending_serving_csrs(&node.name).pop().ok_or_else(|| "none pending".to_owned())
    })
    .await;
    kubectl(&["certificate", "approve", &csr]);
    wait_for("vks to serve the renewed certificate", Duration::from_secs(30), async || {
        let served = served_serial(&ip);
        if !served.is_empty() && served != short_serial { Ok(()) } else { Err(format!("serial {served:?}")) }
    })
    .await;
    assert_eq!(node.unit_prop("vks", "MainPID"), pid, "vks was not restarted");
    assert_eq!(node.unit_prop("vks", "NRestarts"), "0");
}

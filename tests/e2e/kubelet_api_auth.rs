//! Who may call the kubelet API, on a real node, with credentials the real cluster issues: no
//! credentials → 401 (but /healthz), a service account token without rights → 403, one with
//! rights → 200, the API server's client certificate → 200, a certificate from another CA →
//! refused during the TLS handshake; the client CA file is re-read when it changes; header and
//! body limits answer 431 and 413.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

const ENDPOINTS: [&str; 7] = [
    "/pods",
    "/healthz",
    "/containerLogs/default/nosuch/c",
    "/stats/summary",
    "/metrics/resource",
    "/metrics",
    "/exec/default/nosuch/c?command=true&output=1",
];

/// What curl got: the HTTP status, or 0 when the TLS handshake (or connection) failed.
fn status(url: &str, extra: &[&str]) -> u32 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
        .arg("--cacert")
        .arg(pki().join("server-ca.crt"))
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn pki() -> std::path::PathBuf {
    kubeconfig().parent().unwrap().join("pki")
}

fn apiserver_cert() -> Vec<String> {
    let p = pki();
    vec![
        "--cert".into(),
        p.join("apiserver-kubelet-client.crt").display().to_string(),
        "--key".into(),
        p.join("apiserver-kubelet-client.key").display().to_string(),
    ]
}

/// A CA and a client certificate it signed (CN=intruder, O=system:masters), as PEM files in
/// `dir`: (ca, cert, key).
fn foreign_ca(dir: &Path) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "other-ca");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, "intruder");
    p.distinguished_name.push(rcgen::DnType::OrganizationName, "system:masters");
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = p.signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key)).unwrap();
    let files = [("ca.crt", ca.pem()), ("intruder.crt", leaf.pem()), ("intruder.key", key.serialize_pem())];
    for (n, c) in &files {
        std::fs::write(dir.join(n), c).unwrap();
    }
    let f = |n: &str| dir.join(n).display().to_string();
    (f("ca.crt"), f("intruder.crt"), f("intruder.key"))
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn every_endpoint_checks_who_calls() {
    let node = Node::up("kubelet-auth");
    let ns = Namespace::new("kubelet-auth");
    let base = format!("https://{}:10250", node.ip());
    // Service accounts: one without rights, one allowed nodes/proxy, nodes/stats and nodes/metrics.
    kubectl(&["create", "serviceaccount", "-n", &ns.name, "nobody"]);
    kubectl(&["create", "serviceaccount", "-n", &ns.name, "reader"]);
    let role = format!("{}-kubelet-reader", ns.name);
    kubectl(&[
        "create",
        "clusterrole",
        &role,
        "--verb=get,create",
        "--resource=nodes/proxy,nodes/stats,nodes/metrics,nodes/log,nodes/pods,nodes/healthz",
    ]);
    kubectl(&[
        "create",
        "clusterrolebinding",
        &role,
        "--clusterrole",
        &role,
        "--serviceaccount",
        &format!("{}:reader", ns.name),
    ]);
    let token = |sa: &str| kubectl(&["create", "token", "-n", &ns.name, sa]).trim().to_owned();
    let (nobody, reader) = (token("nobody"), token("reader"));
    let bearer = |t: &str| vec!["-H".to_owned(), format!("Authorization: Bearer {t}")];

    let dir = std::env::temp_dir().join(format!("vks-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (other_ca, intruder_crt, intruder_key) = foreign_ca(&dir);
    let intruder = ["--cert", intruder_crt.as_str(), "--key", intruder_key.as_str()];
    let cert = apiserver_cert();

    for ep in ENDPOINTS {
        let url = format!("{base}{ep}");
        let anonymous = if ep == "/healthz" { 200 } else { 401 };
        assert_eq!(status(&url, &[]), anonymous, "no credentials: {ep}");
        assert_eq!(
            status(&url, &strs(&bearer("not-a-token"))),
            if ep == "/healthz" { 200 } else { 401 },
            "bad token: {ep}"
        );
        if ep != "/healthz" {
            assert_eq!(status(&url, &strs(&bearer(&nobody))), 403, "token without rights: {ep}");
        }
        let ok = match ep {
            e if e.starts_with("/containerLogs") => 404, // authorized; the pod does not exist
            e if e.starts_with("/exec") => 404,          // authorized; the pod does not run here
            _ => 200,
        };
        assert_eq!(status(&url, &strs(&cert)), ok, "the API server's client certificate: {ep}");
        if !ep.starts_with("/exec") {
            assert_eq!(status(&url, &strs(&bearer(&reader))), ok, "token with rights: {ep}");
        }
        assert_eq!(status(&url, &intruder), 0, "a certificate from another CA fails the handshake: {ep}");
    }

    // Limits: a header too large, a body too large.
    let big_header = format!("X-Big: {}", "a".repeat(70 << 10));
    let mut args = strs(&cert);
    args.extend(["-H", big_header.as_str()]);
    assert_eq!(status(&format!("{base}/pods"), &args), 431);
    let body = dir.join("body");
    std::fs::write(&body, vec![b'x'; 2 << 20]).unwrap();
    let data = format!("@{}", body.display());
    let mut args = strs(&cert);
    args.extend(["--data-binary", data.as_str()]);
    assert_eq!(status(&format!("{base}/pods"), &args), 413);

    // The client CA file is re-read when it changes, without a restart: with the other CA in
    // its place, the intruder gets in and the API server's certificate is refused.
    let pid = node.unit_prop("vks", "MainPID");
    let ca_path = "/etc/vks/pki/client-ca.crt";
    let original = node.exec(&["cat", ca_path]);
    node.put_file(ca_path, std::fs::read_to_string(&other_ca).unwrap().as_bytes());
    wait_for("the new client CA in use", Duration::from_secs(40), async || {
        match (status(&format!("{base}/pods"), &intruder), status(&format!("{base}/pods"), &strs(&cert))) {
            (200, 0) => Ok(()),
            other => Err(format!("intruder, apiserver: {other:?}")),
        }
    })
    .await;
    node.put_file(ca_path, original.as_bytes());
    wait_for("the cluster's client CA back", Duration::from_secs(40), async || {
        match status(&format!("{base}/pods"), &strs(&cert)) {
            200 => Ok(()),
            s => Err(format!("{s}")),
        }
    })
    .await;
    assert_eq!(node.unit_prop("vks", "MainPID"), pid, "no restart");
    assert!(node.vks_journal().contains("kubelet API: client CA loaded from /etc/vks/pki/client-ca.crt"));

    let _ = kubectl_output(&["delete", "clusterrolebinding,clusterrole", &role]);
    std::fs::remove_dir_all(&dir).unwrap();
}

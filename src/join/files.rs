//! The node's credential files: the kubeconfig vks writes and reads back, the node password and
//! the client CA bundle. Certificates, keys and the atomic 0600 write live in [`crate::pki`].

use std::path::Path;

use base64::Engine as _;
use sha2::{Digest, Sha256};

pub use crate::pki::{CertInfo, FileError, KeyPairPem, write_private};

/// Where vks keeps the client CA bundle of the kubelet API (the CA that signs the API server's
/// client certificate), for the kubelet API to verify its callers with.
pub fn client_ca_path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("client-ca.crt")
}

/// Writes the client CA bundle atomically (0644: it is public) when it changed; true if it did.
pub fn write_client_ca(state_dir: &Path, pem: &str) -> Result<bool, FileError> {
    let path = client_ca_path(state_dir);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == pem) {
        return Ok(false);
    }
    crate::fsutil::write_atomic(&path, pem.as_bytes(), 0o644).map_err(|source| FileError {
        what: "writing",
        path: path.clone(),
        source,
    })?;
    Ok(true)
}

/// The node password in `<state_dir>/node-password`: created once (16 random bytes, hex, mode
/// 0600, like k3s's /etc/rancher/node/password), then read back.
pub fn node_password(state_dir: &Path) -> Result<String, FileError> {
    let path = state_dir.join("node-password");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(FileError { what: "reading", path, source: e }),
    }
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(|_| FileError {
        what: "generating",
        path: path.clone(),
        source: std::io::Error::other("no randomness"),
    })?;
    let password = hex::encode(bytes);
    write_private(&path, format!("{password}\n").as_bytes())?;
    Ok(password)
}

/// SHA-256 of a node password, lowercase hex: what the Node's annotation holds.
pub fn password_hash(password: &str) -> String {
    hex::encode(Sha256::digest(password.as_bytes()))
}

/// The kubeconfig vks writes: one cluster, one user with an embedded client certificate and
/// key, one context; kube's own kubeconfig types, serialized as YAML.
pub fn render_kubeconfig(server: &str, ca_pem: &str, client: &KeyPairPem, user: &str) -> Result<String, String> {
    use kube::config::{AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let kubeconfig = Kubeconfig {
        api_version: Some("v1".to_owned()),
        kind: Some("Config".to_owned()),
        clusters: vec![NamedCluster {
            name: "vks".to_owned(),
            cluster: Some(Cluster {
                server: Some(server.to_owned()),
                certificate_authority_data: Some(b64(ca_pem)),
                ..Cluster::default()
            }),
            other: Default::default(),
        }],
        auth_infos: vec![NamedAuthInfo {
            name: user.to_owned(),
            auth_info: Some(AuthInfo {
                client_certificate_data: Some(b64(&client.certs_pem)),
                client_key_data: Some(b64(&client.key_pem).into()),
                ..AuthInfo::default()
            }),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: "vks".to_owned(),
            context: Some(Context { cluster: "vks".to_owned(), user: Some(user.to_owned()), ..Context::default() }),
            other: Default::default(),
        }],
        current_context: Some("vks".to_owned()),
        ..Kubeconfig::default()
    };
    // Plain scalars: a long base64 value on one line, as kubectl writes it.
    let options = serde_saphyr::ser_options! { prefer_block_scalars: false };
    let yaml = serde_saphyr::to_string_with_options(&kubeconfig, options)
        .map_err(|e| format!("rendering the kubeconfig: {e}"))?;
    Ok(format!("# Written by vks (vks join, certificate renewal); replaced atomically on renewal.\n{yaml}"))
}

/// What vks reads back from a kubeconfig: server, CA and the embedded client credentials.
#[derive(Debug, Clone)]
pub struct NodeCredentials {
    /// API server URL.
    pub server: String,
    /// CA bundle (PEM) for the API server, if the kubeconfig has one.
    pub ca_pem: Option<String>,
    /// Client certificate and key.
    pub client: KeyPairPem,
}

/// Reads the current context's server, CA and embedded (or file-referenced) client cert/key.
pub fn read_kubeconfig(path: &Path) -> Result<NodeCredentials, String> {
    let kc =
        kube::config::Kubeconfig::read_from(path).map_err(|e| format!("reading kubeconfig {}: {e}", path.display()))?;
    let ctx_name = kc.current_context.clone().unwrap_or_default();
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| format!("kubeconfig {}: no current context", path.display()))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| format!("kubeconfig {}: cluster {:?} not found", path.display(), ctx.cluster))?;
    let user_name = ctx.user.clone().unwrap_or_default();
    let user = kc
        .auth_infos
        .iter()
        .find(|a| a.name == user_name)
        .and_then(|a| a.auth_info.clone())
        .ok_or_else(|| format!("kubeconfig {}: user {user_name:?} not found", path.display()))?;
    let decode = |what: &str, data: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| format!("kubeconfig {}: {what} is not base64 PEM", path.display()))
    };
    let read = |what: &str, p: &str| {
        std::fs::read_to_string(p).map_err(|e| format!("kubeconfig {}: reading {what} {p}: {e}", path.display()))
    };
    let certs_pem = match (&user.client_certificate_data, &user.client_certificate) {
        (Some(d), _) => decode("client-certificate-data", d)?,
        (None, Some(p)) => read("client-certificate", p)?,
        _ => return Err(format!("kubeconfig {}: no client certificate", path.display())),
    };
    let key_pem = match (&user.client_key_data, &user.client_key) {
        (Some(d), _) => decode("client-key-data", secrecy::ExposeSecret::expose_secret(d))?,
        (None, Some(p)) => read("client-key", p)?,
        _ => return Err(format!("kubeconfig {}: no client key", path.display())),
    };
    let ca_pem = match (&cluster.certificate_authority_data, &cluster.certificate_authority) {
        (Some(d), _) => Some(decode("certificate-authority-data", d)?),
        (None, Some(p)) => Some(read("certificate-authority", p)?),
        _ => None,
    };
    Ok(NodeCredentials {
        server: cluster.server.unwrap_or_default(),
        ca_pem,
        client: KeyPairPem { certs_pem, key_pem },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vks-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn node_password_is_created_once() {
        let d = tempdir("pw");
        let a = node_password(&d).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(node_password(&d).unwrap(), a);
        assert_eq!(std::fs::metadata(d.join("node-password")).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(password_hash(&a).len(), 64);
        assert_ne!(password_hash(&a), password_hash("other"));
    }

    #[test]
    fn kubeconfig_round_trips() {
        let d = tempdir("kc");
        let ck = rcgen::generate_simple_self_signed(vec!["n1".into()]).unwrap();
        let client = KeyPairPem { certs_pem: ck.cert.pem(), key_pem: ck.signing_key.serialize_pem() };
        let text = render_kubeconfig("https://127.0.0.1:6443", "CA PEM\n", &client, "system:node:n1").unwrap();
        // One line per value, as kubectl writes them (tools and people grep these files).
        assert!(text.lines().any(|l| l.starts_with("    client-certificate-data: LS0t")), "{text}");
        let p = d.join("kubeconfig");
        write_private(&p, text.as_bytes()).unwrap();
        let back = read_kubeconfig(&p).unwrap();
        assert_eq!(back.server, "https://127.0.0.1:6443");
        assert_eq!(back.ca_pem.as_deref(), Some("CA PEM\n"));
        assert_eq!(back.client.certs_pem, client.certs_pem);
        assert_eq!(back.client.key_pem, client.key_pem);
        let info = back.client.leaf().unwrap();
        assert!(info.valid_now());
        assert_eq!(info.sans, ["n1"]);
    }
}

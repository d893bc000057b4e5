//! Joining a cluster with a token and keeping the node's certificates fresh.
//!
//! `vks join` (and `vks run` before anything else when `[cluster] server` and a token are set)
//! obtains the node's client certificate (`system:node:<name>`, group `system:nodes`), writes the
//! kubeconfig vks uses (`cluster.kubeconfig`, 0600, atomically) and the client CA bundle of the
//! kubelet API (`<state_dir>/client-ca.crt`, 0644). The server decides the flow: one that serves
//! `/cacerts` is a k3s supervisor, anything else an upstream (kubeadm-style) API server.
//! - k3s ([`k3s`]), as the k3s agent joins, for every k3s token form (`K10<hash>::node:<pw>`,
//!   `K10<hash>::<id>.<secret>`, a bare password or bootstrap token): the supervisor signs both
//!   certificates for CSRs in DER and enforces its node-password secrets; the client CA comes
//!   from `/v1-k3s/client-ca.crt`; the daemon then keeps the agent tunnel (`tunnel`) to it.
//! - kubeadm-style, with a bootstrap token: [`discovery`] (signed `kube-public/cluster-info`),
//!   then the CSR API ([`csr`]); the client CA is `kube-system/extension-apiserver-authentication`
//!   (`client-ca-file`), else the cluster CA (kubeadm's single CA signs both).
//!
//! A node password (random, `<state_dir>/node-password`, 0600) identifies the machine: k3s
//! checks it against its node-password secret; vks also keeps its hash on the Node
//! ([`crate::node::ownership`]); a machine whose password does not match is refused the node name
//! ([`JoinError::NodeNameTaken`]) before anything is written.
//!
//! While vks runs, [`renew::maintain`] renews both certificates at 70–90 % of their lifetime
//! (like the kubelet), the same way they were obtained, and keeps the client CA bundle current;
//! the new identities are swapped in without a restart. Nothing here panics; every error names
//! its cause and the object concerned.

pub mod csr;
pub mod discovery;
pub mod files;
pub mod http;
pub mod k3s;
pub mod renew;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

use crate::config::{Config, TokenSource};
use crate::node::ownership::{self, ClaimError, NodeNameTaken};
use crate::pki::KeyPairPem;
use crate::token::{Credential, Token, TokenError};
use files::NodeCredentials;

/// Why joining (or renewing) failed. Each message names the cause and the object.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The server refused the token (unknown, expired, wrong secret).
    #[error("the cluster at {server} refused the token: {detail}")]
    WrongToken {
        /// The server URL.
        server: String,
        /// What exactly was refused.
        detail: String,
    },
    /// The cluster's CA is not the one the token names.
    #[error(
        "the CA of {server} (sha256 {actual}) does not match the CA hash of the token ({expected}): refusing to \
         join (wrong server URL, or a token of another cluster)"
    )]
    CaHashMismatch {
        /// The server URL.
        server: String,
        /// The token's hash.
        expected: String,
        /// The served CA's hash.
        actual: String,
    },
    /// No connection, TLS failure, timeout.
    #[error("cannot reach the server {server}: {cause}")]
    Unreachable {
        /// The server URL.
        server: String,
        /// The error chain.
        cause: String,
    },
    /// Another machine registered this node name (the node password does not match).
    #[error(
        "node name {node} is already taken by another machine (the node-password hash of Node {node} does not \
         match this machine's): set another [node] name, or delete Node {node} if that machine is gone"
    )]
    NodeNameTaken {
        /// The node name.
        node: String,
    },
    /// A password token, but the server is no k3s supervisor.
    #[error(
        "{server} does not serve /cacerts, so it is no k3s server: a k3s token (K10<hash>::node:<password> or a \
         password) joins a k3s server (its supervisor URL); an upstream API server needs a bootstrap token"
    )]
    NotASupervisor {
        /// The server URL.
        server: String,
    },
    /// The server does not publish `kube-public/cluster-info` anonymously.
    #[error(
        "{server} does not let anonymous clients read kube-public/cluster-info (HTTP {status}): the cluster must \
         publish it for bootstrap-token joins (as kubeadm sets it up)"
    )]
    NoDiscovery {
        /// The server URL.
        server: String,
        /// The HTTP status.
        status: u16,
    },
    /// A CSR was denied or failed.
    #[error("certificate signing request {csr} was refused: {reason}")]
    CsrRefused {
        /// The CSR object's name.
        csr: String,
        /// The condition.
        reason: String,
    },
    /// A CSR was not issued in time.
    #[error(
        "certificate signing request {csr} was not approved and issued within {waited}s (approve it with: kubectl \
         certificate approve {csr})"
    )]
    CsrTimeout {
        /// The CSR object's name.
        csr: String,
        /// Seconds waited.
        waited: u64,
    },
    /// The token does not parse.
    #[error("the join token: {0}")]
    Token(#[from] TokenError),
    /// The token file cannot be read.
    #[error("cluster.token_file {}: {source}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A credential file could not be read or written.
    #[error(transparent)]
    File(#[from] files::FileError),
    /// Anything else the server or vks got wrong.
    #[error("{0}")]
    Protocol(String),
}

impl From<NodeNameTaken> for JoinError {
    fn from(e: NodeNameTaken) -> JoinError {
        JoinError::NodeNameTaken { node: e.node }
    }
}

impl JoinError {
    fn from_claim(server: &str, e: ClaimError) -> JoinError {
        match e {
            ClaimError::Taken(t) => t.into(),
            ClaimError::Api { what, source } => api_error(server, &what, source),
        }
    }

    /// Whether trying again later may help (the server is unreachable or does not yet know the
    /// token): the daemon retries these, and refuses the others for good.
    pub fn is_transient(&self) -> bool {
        matches!(self, JoinError::Unreachable { .. } | JoinError::CsrTimeout { .. })
    }
}

/// Maps an API error: 401 is a wrong token, a transport error an unreachable server.
pub(crate) fn api_error(server: &str, what: &str, e: kube::Error) -> JoinError {
    match &e {
        kube::Error::Api(s) if s.code == 401 => {
            JoinError::WrongToken { server: server.to_owned(), detail: format!("{what}: 401 Unauthorized") }
        }
        _ if crate::api::is_transport_error(&e) => {
            JoinError::Unreachable { server: server.to_owned(), cause: format!("{what}: {}", http::error_chain(&e)) }
        }
        _ => JoinError::Protocol(format!("{what}: {}", http::error_chain(&e))),
    }
}

/// Everything joining needs, from the config and the detected node IP.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `cluster.server`.
    pub server: String,
    /// `cluster.token` or `cluster.token_file`.
    pub token: TokenSource,
    /// The node name.
    pub node: String,
    /// The node's IPs (serving certificate SANs, k3s headers).
    pub ips: Vec<IpAddr>,
    /// Where the kubeconfig is written (`cluster.kubeconfig`).
    pub kubeconfig: PathBuf,
    /// `paths.state_dir`: node password, serving certificate, client CA bundle.
    pub state_dir: PathBuf,
}

impl Settings {
    /// The join settings of a config, `None` when it names no server and token.
    pub fn from_config(config: &Config, ips: Vec<IpAddr>) -> Option<Settings> {
        let c = &config.cluster;
        Some(Settings {
            server: c.server.clone()?.trim_end_matches('/').to_owned(),
            token: c.token.clone()?,
            node: config.node.name.clone(),
            ips,
            kubeconfig: c.kubeconfig.clone(),
            state_dir: config.paths.state_dir.clone(),
        })
    }

    /// The user name of the node's client certificate.
    pub fn user(&self) -> String {
        format!("system:node:{}", self.node)
    }

    /// The SHA-256 of this machine's node password (created on first use).
    pub fn password_hash(&self) -> Result<String, JoinError> {
        Ok(files::password_hash(&files::node_password(&self.state_dir)?))
    }

    /// Where vks keeps the kubelet serving certificate it obtained (chain and key, 0600).
    pub fn serving_path(&self) -> PathBuf {
        serving_path(&self.state_dir)
    }

    /// The marker of a join through a k3s supervisor (holds the supervisor URL).
    fn supervisor_marker(&self) -> PathBuf {
        self.state_dir.join("k3s-supervisor")
    }

    /// Whether this node joined `server` through its k3s supervisor (then the certificates are
    /// renewed there and the agent tunnel is kept to it).
    pub fn joined_k3s(&self) -> bool {
        std::fs::read_to_string(self.supervisor_marker()).is_ok_and(|s| s.trim() == self.server)
    }

    fn mark_k3s(&self, k3s: bool) -> Result<(), JoinError> {
        let path = self.supervisor_marker();
        if k3s {
            crate::fsutil::write_atomic(&path, format!("{}\n", self.server).as_bytes(), 0o644)
                .map_err(|source| files::FileError { what: "writing", path, source })?;
        } else if path.exists() {
            std::fs::remove_file(&path).map_err(|source| files::FileError { what: "removing", path, source })?;
        }
        Ok(())
    }

    /// The join token (read from `cluster.token_file` each time).
    pub fn read_token(&self) -> Result<Token, JoinError> {
        let text = match &self.token {
            TokenSource::Inline(s) => s.expose().to_owned(),
            TokenSource::File(p) => {
                std::fs::read_to_string(p).map_err(|source| JoinError::TokenFile { path: p.clone(), source })?
            }
        };
        Ok(Token::parse(&text)?)
    }

    /// The node's `k3s-Node-*` headers.
    fn k3s_headers(&self) -> Result<Vec<(::http::HeaderName, ::http::HeaderValue)>, JoinError> {
        k3s::node_headers(&self.node, &files::node_password(&self.state_dir)?, &self.ips)
    }
}

/// Where vks keeps the kubelet serving certificate it obtained.
pub fn serving_path(state_dir: &Path) -> PathBuf {
    state_dir.join("pki/kubelet-serving.pem")
}

/// When a credential file was last written (when its certificate was obtained).
pub fn written_at(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Valid credentials were there already; nothing was done.
    AlreadyJoined,
    /// The client certificate was near expiry and was renewed with the node's credentials.
    Renewed,
    /// Joined with the token.
    Joined,
}

/// How long `vks join` waits for the client certificate (auto-approved on a kubeadm-like
/// cluster, so this only runs out when nobody approves it).
const CLIENT_CSR_WAIT: Duration = Duration::from_secs(120);

/// Makes sure this machine has valid node credentials: nothing when they exist and are not due
/// for renewal, a renewal with the node's own credentials when they are, else a join with the
/// token. Idempotent.
pub async fn ensure(s: &Settings) -> Result<Outcome, JoinError> {
    if let Some(creds) = current_credentials(s) {
        let leaf = creds.client.leaf().map_err(JoinError::Protocol)?;
        if !renew::due(&leaf, written_at(&s.kubeconfig)) {
            log::info!(node = s.node.as_str(); "node {} already has credentials for {} (valid until {})", s.node, s.server, renew::show_time(leaf.not_after));
            return Ok(Outcome::AlreadyJoined);
        }
        match renew::renew_client(s).await {
            Ok(()) => return Ok(Outcome::Renewed),
            Err(e) => {
                log::warn!(node = s.node.as_str(); "renewing the client certificate of node {} failed ({e}); joining with the token", s.node)
            }
        }
    }
    let token = s.read_token()?;
    let hash = s.password_hash()?;
    match k3s::probe(&s.server).await? {
        Some(cacerts) => k3s_join(s, &token, cacerts, &hash).await?,
        None if matches!(token.credential, Credential::Bootstrap { .. }) => bootstrap_join(s, &token, &hash).await?,
        None => return Err(JoinError::NotASupervisor { server: s.server.clone() }),
    }
    log::info!(node = s.node.as_str(); "node {} joined {}; credentials in {}", s.node, s.server, s.kubeconfig.display());
    Ok(Outcome::Joined)
}

/// The credentials in `cluster.kubeconfig` if they are for this cluster and node and valid now.
/// (A k3s join writes the API server's URL, which may differ from the supervisor's in the port.)
pub fn current_credentials(s: &Settings) -> Option<NodeCredentials> {
    let creds = files::read_kubeconfig(&s.kubeconfig).ok()?;
    let leaf = creds.client.leaf().ok()?;
    (same_host(&creds.server, &s.server) && leaf.common_name == s.user() && leaf.valid_now()).then_some(creds)
}

fn same_host(a: &str, b: &str) -> bool {
    let host = |u: &str| u.parse::<::http::Uri>().ok().and_then(|u| u.host().map(str::to_owned));
    host(a).is_some() && host(a) == host(b)
}

/// How long discovery waits for the bootstrap signer to sign cluster-info for a token that was
/// just created (the controller manager signs it when it sees the token; after an API server
/// restart its watches take a while to come back). kubeadm waits up to 5 minutes; a token the
/// cluster really does not know is refused after this.
const SIGNATURE_WAIT: Duration = Duration::from_secs(60);

async fn bootstrap_join(s: &Settings, token: &Token, hash: &str) -> Result<(), JoinError> {
    let start = Instant::now();
    let info = loop {
        match discovery::discover(&s.server, token).await {
            Err(JoinError::WrongToken { detail, .. })
                if detail.contains("has no signature") && start.elapsed() < SIGNATURE_WAIT =>
            {
                if start.elapsed().as_secs().is_multiple_of(15) {
                    log::info!(
                        "{detail}; waiting up to {}s for the cluster's bootstrap signer to sign it",
                        SIGNATURE_WAIT.as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            r => break r?,
        }
    };
    let boot = http::client(&s.server, &http::Trust::Ca(info.ca_pem.clone()), Some(&token.credential), Vec::new())?;
    let key = csr::new_key()?;
    let request = csr::request(csr::Kind::Client, &s.node, &[], &key)?;
    let certs_pem =
        csr::submit_and_wait(&boot, &s.server, csr::Kind::Client, &s.node, &request, Some(CLIENT_CSR_WAIT)).await?;
    let client = KeyPairPem { certs_pem, key_pem: csr::key_pem(&key) };
    let text = files::render_kubeconfig(&s.server, &info.ca_pem, &client, &s.user()).map_err(JoinError::Protocol)?;
    let node_client = client_from_kubeconfig_text(&text).await?;
    ownership::claim(&node_client, &s.node, hash).await.map_err(|e| JoinError::from_claim(&s.server, e))?;
    let client_ca = renew::kubeadm_client_ca(&node_client, &s.server, &info.ca_pem).await?;
    files::write_client_ca(&s.state_dir, &client_ca)?;
    s.mark_k3s(false)?;
    files::write_private(&s.kubeconfig, text.as_bytes())?;
    Ok(())
}

/// Joins through a k3s supervisor as the k3s agent does: serving certificate, client certificate,
/// client CA, then the kubeconfig for the API server the supervisor names.
async fn k3s_join(s: &Settings, token: &Token, cacerts: String, hash: &str) -> Result<(), JoinError> {
    let ca = k3s::verify_ca(&s.server, token, cacerts).await?;
    let supervisor = k3s::Supervisor::new(&s.server, &ca, Some(token), None, &s.node, s.k3s_headers()?)?;
    let api_server = supervisor.api_server().await?;
    let serving_key = csr::new_key()?;
    let request = csr::request_der(csr::Kind::Serving, &s.node, &s.ips, &serving_key)?;
    let serving = KeyPairPem {
        certs_pem: supervisor.sign(csr::Kind::Serving, request).await?,
        key_pem: csr::key_pem(&serving_key),
    };
    let key = csr::new_key()?;
    let request = csr::request_der(csr::Kind::Client, &s.node, &[], &key)?;
    let client =
        KeyPairPem { certs_pem: supervisor.sign(csr::Kind::Client, request).await?, key_pem: csr::key_pem(&key) };
    let client_ca = supervisor.client_ca().await?;
    let text = files::render_kubeconfig(&api_server, &ca, &client, &s.user()).map_err(JoinError::Protocol)?;
    let node_client = client_from_kubeconfig_text(&text).await?;
    ownership::claim(&node_client, &s.node, hash).await.map_err(|e| JoinError::from_claim(&api_server, e))?;
    serving.write_combined(&s.serving_path())?;
    files::write_client_ca(&s.state_dir, &client_ca)?;
    s.mark_k3s(true)?;
    files::write_private(&s.kubeconfig, text.as_bytes())?;
    Ok(())
}

/// An API client from kubeconfig text.
pub async fn client_from_kubeconfig_text(text: &str) -> Result<kube::Client, JoinError> {
    let bad = |e: &dyn std::fmt::Display| JoinError::Protocol(format!("the node kubeconfig vks made is invalid: {e}"));
    let kc = kube::config::Kubeconfig::from_yaml(text).map_err(|e| bad(&e))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| bad(&e))?;
    kube::Client::try_from(config).map_err(|e| bad(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_cause() {
        let e = JoinError::NodeNameTaken { node: "n1".into() };
        assert!(e.to_string().contains("node name n1 is already taken by another machine"), "{e}");
        let e = JoinError::CaHashMismatch { server: "https://s".into(), expected: "aa".into(), actual: "bb".into() };
        assert!(e.to_string().contains("does not match the CA hash of the token"), "{e}");
        assert!(JoinError::Unreachable { server: "s".into(), cause: "x".into() }.is_transient());
        assert!(!e.is_transient());
        let e = api_error(
            "https://s",
            "creating a CSR",
            kube::Error::Api(kube::core::Status::failure("no", "Unauthorized").with_code(401).boxed()),
        );
        assert!(matches!(e, JoinError::WrongToken { .. }), "{e}");
        let e: JoinError = NodeNameTaken { node: "n2".into() }.into();
        assert!(matches!(&e, JoinError::NodeNameTaken { node } if node == "n2"));
        let e = JoinError::NotASupervisor { server: "https://s:6443".into() };
        assert!(e.to_string().contains("does not serve /cacerts"), "{e}");
    }

    #[test]
    fn credentials_of_the_api_server_port_count_for_the_supervisor() {
        assert!(same_host("https://127.0.0.1:6443", "https://127.0.0.1:9345"));
        assert!(!same_host("https://127.0.0.2:6443", "https://127.0.0.1:6443"));
        assert!(!same_host("", ""));
    }

    #[tokio::test]
    async fn ensure_is_a_no_op_with_valid_credentials() {
        let dir = std::env::temp_dir().join(format!("vks-join-ensure-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "system:node:n1");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let client = KeyPairPem { certs_pem: cert.pem(), key_pem: key.serialize_pem() };
        let s = Settings {
            server: "https://127.0.0.1:1".into(),
            token: TokenSource::Inline(crate::token::Secret::new("abcdef.0123456789abcdef")),
            node: "n1".into(),
            ips: vec![],
            kubeconfig: dir.join("kubeconfig"),
            state_dir: dir.clone(),
        };
        files::write_private(
            &s.kubeconfig,
            files::render_kubeconfig(&s.server, "CA", &client, &s.user()).unwrap().as_bytes(),
        )
        .unwrap();
        // The server does not exist: any request would fail.
        assert_eq!(ensure(&s).await.unwrap(), Outcome::AlreadyJoined);
        // Credentials for another node name are not ours: a join is attempted (and fails).
        let other = Settings { node: "n2".into(), ..s.clone() };
        assert!(matches!(ensure(&other).await, Err(JoinError::Unreachable { .. })));
        assert!(!s.joined_k3s());
        s.mark_k3s(true).unwrap();
        assert!(s.joined_k3s());
        assert!(!Settings { server: "https://other:1".into(), ..s.clone() }.joined_k3s());
        s.mark_k3s(false).unwrap();
        assert!(!s.joined_k3s());
    }
}

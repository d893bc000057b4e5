//! Joining a cluster with a token and keeping the node's certificates fresh.
//!
//! `vks join` (and `vks run` before anything else when `[cluster] server` and a token are set)
//! obtains the node's client certificate (`system:node:<name>`, group `system:nodes`) and
//! writes the kubeconfig vks uses (`cluster.kubeconfig`, 0600, atomically). Two flows:
//! - a bootstrap token `<id>.<secret>` (optionally `K10<CA hash>::<id>.<secret>`), the upstream
//!   way ([`discovery`] then the CSR API in [`csr`]), tested end to end;
//! - a k3s token `K10<CA hash>::node:<password>`, the k3s agent's way ([`k3s`]), unit-tested only.
//!
//! A node password (random, `<state_dir>/node-password`, 0600) identifies the machine: its hash
//! is the Node's `vks.io/node-password-hash` annotation, and a machine whose password does not
//! match is refused the node name ([`JoinError::NodeNameTaken`]) before anything is written.
//!
//! While vks runs, [`renew::maintain`] renews both certificates at 70–90 % of their lifetime
//! (like the kubelet) and obtains the kubelet serving certificate with a
//! `kubernetes.io/kubelet-serving` CSR; the new identities are swapped in without a restart.
//! Nothing here panics; every error names its cause and the object concerned.

pub mod csr;
pub mod discovery;
pub mod files;
pub mod http;
pub mod k3s;
pub mod renew;
pub mod token;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};

use crate::config::{Config, TokenSource};
use files::{KeyPairPem, NodeCredentials, PASSWORD_HASH_ANNOTATION};
use token::{Credential, Token, TokenError};

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

impl JoinError {
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
    /// `paths.state_dir`: node password and serving certificate.
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

    fn read_token(&self) -> Result<Token, JoinError> {
        let text = match &self.token {
            TokenSource::Inline(s) => s.expose().to_owned(),
            TokenSource::File(p) => {
                std::fs::read_to_string(p).map_err(|source| JoinError::TokenFile { path: p.clone(), source })?
            }
        };
        Ok(Token::parse(&text)?)
    }
}

/// Where vks keeps the kubelet serving certificate it obtained.
pub fn serving_path(state_dir: &Path) -> PathBuf {
    state_dir.join("pki/kubelet-serving.pem")
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
        if !renew::due(&leaf) {
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
    match &token.credential {
        Credential::Bootstrap { .. } => bootstrap_join(s, &token, &hash).await?,
        Credential::Password { .. } => k3s_join(s, &token).await?,
    }
    log::info!(node = s.node.as_str(); "node {} joined {}; credentials in {}", s.node, s.server, s.kubeconfig.display());
    Ok(Outcome::Joined)
}

/// The credentials in `cluster.kubeconfig` if they are for this server and node and valid now.
pub fn current_credentials(s: &Settings) -> Option<NodeCredentials> {
    let creds = files::read_kubeconfig(&s.kubeconfig).ok()?;
    let leaf = creds.client.leaf().ok()?;
    (creds.server.trim_end_matches('/') == s.server && leaf.common_name == s.user() && leaf.valid_now())
        .then_some(creds)
}

/// How long discovery waits for the bootstrap signer to sign cluster-info for a token that was
/// just created.
const SIGNATURE_WAIT: Duration = Duration::from_secs(10);

async fn bootstrap_join(s: &Settings, token: &Token, hash: &str) -> Result<(), JoinError> {
    let start = Instant::now();
    let info = loop {
        match discovery::discover(&s.server, token).await {
            Err(JoinError::WrongToken { detail, .. })
                if detail.contains("has no signature") && start.elapsed() < SIGNATURE_WAIT =>
            {
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
    claim_node(&node_client, &s.server, &s.node, hash).await?;
    files::write_private(&s.kubeconfig, text.as_bytes())?;
    Ok(())
}

async fn k3s_join(s: &Settings, token: &Token) -> Result<(), JoinError> {
    let ca = k3s::fetch_ca(&s.server, token).await?;
    let password = files::node_password(&s.state_dir)?;
    let headers = k3s::node_headers(&s.node, &password, &s.ips)?;
    let key = csr::new_key()?;
    let request = csr::request(csr::Kind::Client, &s.node, &[], &key)?;
    let certs_pem = k3s::sign(&s.server, &ca, token, headers.clone(), &s.node, csr::Kind::Client, &request).await?;
    let client = KeyPairPem { certs_pem, key_pem: csr::key_pem(&key) };
    let serving_key = csr::new_key()?;
    let request = csr::request(csr::Kind::Serving, &s.node, &s.ips, &serving_key)?;
    let certs_pem = k3s::sign(&s.server, &ca, token, headers, &s.node, csr::Kind::Serving, &request).await?;
    KeyPairPem { certs_pem, key_pem: csr::key_pem(&serving_key) }.write_combined(&s.serving_path())?;
    let text = files::render_kubeconfig(&s.server, &ca, &client, &s.user()).map_err(JoinError::Protocol)?;
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

/// Who owns a Node, by its annotation.
#[derive(Debug, PartialEq, Eq)]
pub enum Owner {
    /// No Node of that name.
    NoNode,
    /// The Node has no owner annotation (registered by something else than a joined vks).
    Unclaimed,
    /// This machine.
    Us,
    /// Another machine.
    Other,
}

/// Who owns `node`, given this machine's password hash.
pub fn owner(node: Option<&Node>, hash: &str) -> Owner {
    let Some(node) = node else { return Owner::NoNode };
    match node.metadata.annotations.as_ref().and_then(|a| a.get(PASSWORD_HASH_ANNOTATION)) {
        None => Owner::Unclaimed,
        Some(h) if h == hash => Owner::Us,
        Some(_) => Owner::Other,
    }
}

/// Checks that the Node `node` is free or ours, and claims an unclaimed one by annotating it.
/// A Node that does not exist yet is claimed when vks registers it.
pub async fn claim_node(client: &kube::Client, server: &str, node: &str, hash: &str) -> Result<(), JoinError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let existing = nodes.get_opt(node).await.map_err(|e| api_error(server, &format!("reading Node {node}"), e))?;
    match owner(existing.as_ref(), hash) {
        Owner::NoNode | Owner::Us => Ok(()),
        Owner::Other => Err(JoinError::NodeNameTaken { node: node.to_owned() }),
        Owner::Unclaimed => {
            log::warn!(node = node; "Node {node} exists without a node-password hash; claiming it for this machine");
            let patch = serde_json::json!({ "metadata": { "annotations": { PASSWORD_HASH_ANNOTATION: hash } } });
            nodes
                .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| api_error(server, &format!("annotating Node {node}"), e))?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(annotation: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        n.metadata.annotations =
            annotation.map(|h| [(PASSWORD_HASH_ANNOTATION.to_owned(), h.to_owned())].into_iter().collect());
        n
    }

    #[test]
    fn node_ownership_follows_the_password_hash() {
        assert_eq!(owner(None, "h"), Owner::NoNode);
        assert_eq!(owner(Some(&node(None)), "h"), Owner::Unclaimed);
        assert_eq!(owner(Some(&node(Some("h"))), "h"), Owner::Us);
        assert_eq!(owner(Some(&node(Some("x"))), "h"), Owner::Other);
    }

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
            token: TokenSource::Inline(token::Secret::new("abcdef.0123456789abcdef")),
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
    }
}

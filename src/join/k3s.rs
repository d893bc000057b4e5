//! The k3s agent's side of the k3s supervisor (../shared/docs/control-plane.md section 5; k3s-io/k3s
//! pkg/agent/config/config.go, pkg/clientaccess/token.go):
//! - `/cacerts`, read without verification, checked against the token's CA hash, then read again
//!   verifying the server with it;
//! - requests authenticated as the k3s agent does: a bootstrap token as `Bearer`, any password
//!   as basic auth for user `node` (the agent overrides the token's user), plus the node's client
//!   certificate once it has one;
//! - `/v1-k3s/config`: where the API server is (`HTTPSPort`; the supervisor may have its own
//!   port, as RKE2's 9345);
//! - `/v1-k3s/serving-kubelet.crt` and `/v1-k3s/client-kubelet.crt`: a CSR of a local key POSTed
//!   in DER, with the node name, node password and node IPs in `k3s-Node-*` headers; the answer
//!   is the certificate and the CA bundle (PEM);
//! - `/v1-k3s/client-ca.crt`: the CA the API server's kubelet client certificate chains to.

use std::net::IpAddr;

use http::{HeaderName, HeaderValue, Method, StatusCode};

use super::JoinError;
use super::csr::Kind;
use super::http::{self as h, Reply, Trust};
use crate::pki::KeyPairPem;
use crate::token::{Credential, Token, ca_hash};

/// The path of the supervisor endpoint that signs a certificate of `kind`.
pub fn path(kind: Kind) -> &'static str {
    match kind {
        Kind::Client => "/v1-k3s/client-kubelet.crt",
        Kind::Serving => "/v1-k3s/serving-kubelet.crt",
    }
}

/// The headers that tell the supervisor which node asks: name, password (checked against the
/// hash k3s keeps per node) and IPs.
pub fn node_headers(node: &str, password: &str, ips: &[IpAddr]) -> Result<Vec<(HeaderName, HeaderValue)>, JoinError> {
    let value = |what: &str, v: &str| {
        HeaderValue::from_str(v).map_err(|_| JoinError::Protocol(format!("{what} {v:?} cannot be sent in a header")))
    };
    let ips = ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let mut password = value("the node password", password)?;
    password.set_sensitive(true);
    Ok(vec![
        (HeaderName::from_static("k3s-node-name"), value("node name", node)?),
        (HeaderName::from_static("k3s-node-password"), password),
        (HeaderName::from_static("k3s-node-ip"), value("node IPs", &ips)?),
    ])
}

/// The credential the k3s agent sends for a token: a bootstrap token as is, a password as user
/// `node` whatever user the token names (k3s's `clientaccess.WithUser("node")`).
pub fn agent_credential(token: &Token) -> Credential {
    match &token.credential {
        Credential::Password { password, .. } => {
            Credential::Password { user: "node".to_owned(), password: password.clone() }
        }
        other => other.clone(),
    }
}

/// `/cacerts` of `server`, read without verifying TLS: `Some(PEM)` when the server answers it
/// with certificates (a k3s supervisor), `None` when it does not (an upstream API server).
pub async fn probe(server: &str) -> Result<Option<String>, JoinError> {
    let insecure = h::client(server, &Trust::Insecure, None, Vec::new())?;
    let reply = h::send(&insecure, server, Method::GET, "/cacerts", Vec::new()).await?;
    if reply.status != StatusCode::OK {
        return Ok(None);
    }
    let pem = String::from_utf8_lossy(&reply.body).into_owned();
    Ok(h::pem_certs(&pem).is_ok().then_some(pem))
}

/// Checks `/cacerts` as read by [`probe`] against the token's hash (refused on mismatch; a
/// warning when the token has none), then reads it again verifying the server with it.
pub async fn verify_ca(server: &str, token: &Token, pem: String) -> Result<String, JoinError> {
    super::discovery::check_ca_hash(server, token, &pem)?;
    let verified = h::client(server, &Trust::Ca(pem.clone()), None, Vec::new())?;
    let again = h::send(&verified, server, Method::GET, "/cacerts", Vec::new()).await?;
    if again.status != StatusCode::OK || ca_hash(&again.body) != ca_hash(pem.as_bytes()) {
        return Err(JoinError::Protocol(format!("{server} served a different /cacerts over a verified connection")));
    }
    Ok(pem)
}

/// Interprets the supervisor's reply to a certificate request: the certificate chain (PEM).
pub fn interpret(server: &str, node: &str, kind: Kind, reply: &Reply) -> Result<String, JoinError> {
    match reply.status {
        StatusCode::OK => {
            let (certs, key) = KeyPairPem::split(&String::from_utf8_lossy(&reply.body));
            if key.is_some() {
                // The supervisor did not take our CSR and sent a shared key of its own: refuse
                // it, the node's key must never have left the node (and must not be shared).
                return Err(JoinError::Protocol(format!(
                    "{server} answered the {} certificate request with a private key of its own instead of signing \
                     the CSR (a k3s server older than v1.23.4, or the CSR was not DER)",
                    kind.noun()
                )));
            }
            if certs.is_empty() {
                return Err(JoinError::Protocol(format!("{server} sent no {} certificate", kind.noun())));
            }
            Ok(certs)
        }
        status => Err(refusal(server, node, &format!("POST {}", path(kind)), status, &reply.text())),
    }
}

/// The error for a refused supervisor request: 401 is a wrong token (or a deleted Node for a
/// node's own certificate), 403 with a password failure is the node name taken by another
/// machine, another 403 a token whose user may not do this.
fn refusal(server: &str, node: &str, what: &str, status: StatusCode, body: &str) -> JoinError {
    match status {
        StatusCode::UNAUTHORIZED => JoinError::WrongToken {
            server: server.to_owned(),
            detail: format!("{what} answered 401 Unauthorized: {body}"),
        },
        StatusCode::FORBIDDEN if body.contains("password") => JoinError::NodeNameTaken { node: node.to_owned() },
        StatusCode::FORBIDDEN => JoinError::WrongToken {
            server: server.to_owned(),
            detail: format!(
                "{what} answered 403 Forbidden: the token's user may not join nodes (a bootstrap token needs the \
                 group system:bootstrappers:kubeadm:default-node-token, as `k3s token create` makes them): {body}"
            ),
        },
        s => JoinError::Protocol(format!("{what} on {server}: {s}: {body}")),
    }
}

/// An authenticated session with a k3s supervisor.
pub struct Supervisor {
    server: String,
    node: String,
    client: kube::Client,
}

impl Supervisor {
    /// A client for `server` (verified against `ca_pem`), authenticated with the token (if any)
    /// and the node's client certificate (if any), sending the node's `k3s-Node-*` headers.
    pub fn new(
        server: &str,
        ca_pem: &str,
        token: Option<&Token>,
        identity: Option<&KeyPairPem>,
        node: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Result<Supervisor, JoinError> {
        let credential = token.map(agent_credential);
        let client =
            h::client_with_identity(server, &Trust::Ca(ca_pem.to_owned()), credential.as_ref(), identity, headers)?;
        Ok(Supervisor { server: server.to_owned(), node: node.to_owned(), client })
    }

    async fn get(&self, path: &str) -> Result<Reply, JoinError> {
        let reply = h::send(&self.client, &self.server, Method::GET, path, Vec::new()).await?;
        if reply.status != StatusCode::OK {
            return Err(refusal(&self.server, &self.node, &format!("GET {path}"), reply.status, &reply.text()));
        }
        Ok(reply)
    }

    /// The API server's URL: the supervisor's, with the port `/v1-k3s/config` gives as
    /// `HTTPSPort` when that differs from its `SupervisorPort`.
    pub async fn api_server(&self) -> Result<String, JoinError> {
        let reply = self.get("/v1-k3s/config").await?;
        let config: serde_json::Value = serde_json::from_slice(&reply.body)
            .map_err(|e| JoinError::Protocol(format!("/v1-k3s/config of {} is not JSON: {e}", self.server)))?;
        Ok(api_server_url(&self.server, &config))
    }

    /// Has the supervisor sign the node's certificate of `kind` for the DER `csr`.
    pub async fn sign(&self, kind: Kind, csr: Vec<u8>) -> Result<String, JoinError> {
        let reply = h::send(&self.client, &self.server, Method::POST, path(kind), csr).await?;
        interpret(&self.server, &self.node, kind, &reply)
    }

    /// The client CA bundle (PEM) the API server's kubelet client certificate chains to.
    pub async fn client_ca(&self) -> Result<String, JoinError> {
        let reply = self.get("/v1-k3s/client-ca.crt").await?;
        let pem = String::from_utf8_lossy(&reply.body).into_owned();
        h::pem_certs(&pem).map_err(|_| {
            JoinError::Protocol(format!("/v1-k3s/client-ca.crt of {} holds no certificate", self.server))
        })?;
        Ok(pem)
    }
}

/// The API server URL for a supervisor URL and its `/v1-k3s/config`.
pub fn api_server_url(server: &str, config: &serde_json::Value) -> String {
    let https = config["HTTPSPort"].as_u64().unwrap_or(0);
    let supervisor = config["SupervisorPort"].as_u64().unwrap_or(0);
    if https == 0 || https == supervisor {
        return server.to_owned();
    }
    match server.parse::<http::Uri>() {
        Ok(uri) => match uri.host() {
            Some(host) if host.contains(':') && !host.starts_with('[') => format!("https://[{host}]:{https}"),
            Some(host) => format!("https://{host}:{https}"),
            None => server.to_owned(),
        },
        Err(_) => server.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Secret;
    use bytes::Bytes;

    fn reply(status: u16, body: &str) -> Reply {
        Reply { status: StatusCode::from_u16(status).unwrap(), body: Bytes::from(body.to_owned()) }
    }

    #[test]
    fn node_headers_carry_name_password_and_ips() {
        let h = node_headers("n1", "pw", &["127.0.1.2".parse().unwrap(), "::1".parse().unwrap()]).unwrap();
        let get = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.to_str().unwrap().to_owned());
        assert_eq!(get("k3s-node-name").as_deref(), Some("n1"));
        assert_eq!(get("k3s-node-password").as_deref(), Some("pw"));
        assert_eq!(get("k3s-node-ip").as_deref(), Some("127.0.1.2,::1"));
        assert!(h.iter().find(|(k, _)| k == "k3s-node-password").unwrap().1.is_sensitive());
        assert!(node_headers("n1", "bad\npw", &[]).is_err());
        assert_eq!(path(Kind::Client), "/v1-k3s/client-kubelet.crt");
        assert_eq!(path(Kind::Serving), "/v1-k3s/serving-kubelet.crt");
    }

    #[test]
    fn the_agent_always_authenticates_as_user_node() {
        let t = Token::parse("K10::server:s3cret").unwrap();
        assert_eq!(agent_credential(&t), Credential::Password { user: "node".into(), password: Secret::new("s3cret") });
        let t = Token::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!(agent_credential(&t), t.credential);
    }

    #[test]
    fn replies_name_their_cause() {
        let ck = rcgen::generate_simple_self_signed(vec!["n1".into()]).unwrap();
        let chain = format!("{}{}", ck.cert.pem(), ck.cert.pem());
        let certs = interpret("https://s", "n1", Kind::Client, &reply(200, &chain)).unwrap();
        assert_eq!(certs.matches("BEGIN CERTIFICATE").count(), 2);
        let with_key = format!("{}{}", ck.cert.pem(), ck.signing_key.serialize_pem());
        let e = interpret("https://s", "n1", Kind::Client, &reply(200, &with_key)).unwrap_err();
        assert!(matches!(e, JoinError::Protocol(_)) && e.to_string().contains("private key of its own"), "{e}");
        let e = interpret("https://s", "n1", Kind::Client, &reply(401, "not authorized")).unwrap_err();
        assert!(matches!(e, JoinError::WrongToken { .. }), "{e}");
        // k3s answers 403 both for a node password mismatch and for a user without the role.
        let body =
            r#"{"message":"forbidden: node password verification failed: unable to verify password for node n1"}"#;
        let e = interpret("https://s", "n1", Kind::Serving, &reply(403, body)).unwrap_err();
        assert!(matches!(&e, JoinError::NodeNameTaken { node } if node == "n1"), "{e}");
        let e = interpret("https://s", "n1", Kind::Serving, &reply(403, r#"{"message":"forbidden"}"#)).unwrap_err();
        assert!(matches!(e, JoinError::WrongToken { .. }) && e.to_string().contains("default-node-token"), "{e}");
        let e = interpret("https://s", "n1", Kind::Serving, &reply(500, "boom")).unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
    }

    #[test]
    fn the_api_server_is_found_from_the_supervisor_config() {
        let cfg = |https: u64, sup: u64| serde_json::json!({ "HTTPSPort": https, "SupervisorPort": sup });
        // k3s: one port for both.
        assert_eq!(api_server_url("https://10.0.0.1:6443", &cfg(6443, 6443)), "https://10.0.0.1:6443");
        // RKE2-style: the supervisor on its own port.
        assert_eq!(api_server_url("https://10.0.0.1:9345", &cfg(6443, 9345)), "https://10.0.0.1:6443");
        assert_eq!(api_server_url("https://[fd00::1]:9345", &cfg(6443, 9345)), "https://[fd00::1]:6443");
        assert_eq!(api_server_url("https://s:9345", &serde_json::json!({})), "https://s:9345");
    }
}

//! The k3s agent's side of joining a k3s server with a `K10<hash>::node:<password>` token
//! (../shared/docs/control-plane.md section 5): fetch `/cacerts` and verify it against the
//! token's hash, then have the supervisor sign the node's client and serving certificates by
//! POSTing CSRs made from local keys to `/v1-k3s/client-kubelet.crt` and
//! `/v1-k3s/serving-kubelet.crt`, authenticated with the token and carrying the node name,
//! node password and node IPs in `k3s-Node-*` headers.
//!
//! Not tested against a real k3s server (none can be built here); request construction and
//! reply handling are unit-tested.

use std::net::IpAddr;

use http::{HeaderName, HeaderValue, Method, StatusCode};

use super::JoinError;
use super::csr::Kind;
use super::http::{self as h, Reply, Trust};
use super::token::{Token, ca_hash};

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

/// Fetches the cluster CA bundle from `/cacerts` and checks it against the token's hash
/// (refused on mismatch; a warning when the token has none).
pub async fn fetch_ca(server: &str, token: &Token) -> Result<String, JoinError> {
    let insecure = h::client(server, &Trust::Insecure, None, Vec::new())?;
    let reply = h::send(&insecure, server, Method::GET, "/cacerts", Vec::new()).await?;
    if reply.status != StatusCode::OK {
        return Err(JoinError::Protocol(format!("GET /cacerts on {server}: {}: {}", reply.status, reply.text())));
    }
    let pem = String::from_utf8(reply.body.to_vec())
        .map_err(|_| JoinError::Protocol(format!("/cacerts of {server} is not PEM text")))?;
    super::discovery::check_ca_hash(server, token, &pem)?;
    // The server must hold the key of a certificate chaining to that CA: ask again, verifying.
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
            let (certs, key) = super::files::KeyPairPem::split(&String::from_utf8_lossy(&reply.body));
            if key.is_some() {
                // A legacy server ignores the CSR and sends a key of its own: refuse it, the key
                // must never have left the node.
                return Err(JoinError::Protocol(format!(
                    "{server} answered the {} certificate request with a private key of its own (a k3s server \
                     too old to sign CSRs)",
                    kind.noun()
                )));
            }
            if certs.is_empty() {
                return Err(JoinError::Protocol(format!("{server} sent no {} certificate", kind.noun())));
            }
            Ok(certs)
        }
        StatusCode::UNAUTHORIZED => Err(JoinError::WrongToken {
            server: server.to_owned(),
            detail: format!("{} answered {} with 401 Unauthorized", server, path(kind)),
        }),
        StatusCode::FORBIDDEN => Err(JoinError::NodeNameTaken { node: node.to_owned() }),
        s => Err(JoinError::Protocol(format!("POST {} on {server}: {s}: {}", path(kind), reply.text()))),
    }
}

/// Has the supervisor sign the node's certificate of `kind` for the PEM `csr`.
pub async fn sign(
    server: &str,
    ca_pem: &str,
    token: &Token,
    headers: Vec<(HeaderName, HeaderValue)>,
    node: &str,
    kind: Kind,
    csr: &str,
) -> Result<String, JoinError> {
    let client = h::client(server, &Trust::Ca(ca_pem.to_owned()), Some(&token.credential), headers)?;
    let reply = h::send(&client, server, Method::POST, path(kind), csr.as_bytes().to_vec()).await?;
    interpret(server, node, kind, &reply)
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn replies_name_their_cause() {
        let ck = rcgen::generate_simple_self_signed(vec!["n1".into()]).unwrap();
        let chain = format!("{}{}", ck.cert.pem(), ck.cert.pem());
        let certs = interpret("https://s", "n1", Kind::Client, &reply(200, &chain)).unwrap();
        assert_eq!(certs.matches("BEGIN CERTIFICATE").count(), 2);
        let with_key = format!("{}{}", ck.cert.pem(), ck.signing_key.serialize_pem());
        assert!(matches!(
            interpret("https://s", "n1", Kind::Client, &reply(200, &with_key)),
            Err(JoinError::Protocol(_))
        ));
        let e = interpret("https://s", "n1", Kind::Client, &reply(401, "")).unwrap_err();
        assert!(matches!(e, JoinError::WrongToken { .. }), "{e}");
        let e = interpret("https://s", "n1", Kind::Serving, &reply(403, "")).unwrap_err();
        assert!(matches!(&e, JoinError::NodeNameTaken { node } if node == "n1"), "{e}");
        assert!(e.to_string().contains("n1"));
        let e = interpret("https://s", "n1", Kind::Serving, &reply(500, "boom")).unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
    }
}

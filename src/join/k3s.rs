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
    log::info!("reading /cacerts from {server} without verifying TLS: it is checked against the token's CA hash");
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
    use std::sync::{Arc, Mutex};

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

    /// A fake k3s supervisor on 127.0.0.1 (HTTPS with a certificate from its own CA): serves
    /// `/cacerts` and signs CSRs POSTed to `/v1-k3s/{client,serving}-kubelet.crt` for user
    /// `node` with password `secret`, checking the node password as k3s does (the first one
    /// seen for a node name wins, another one is 403).
    struct FakeK3s {
        url: String,
        ca_pem: String,
        seen: Arc<Mutex<Vec<(String, http::HeaderMap)>>>,
        passwords: Arc<Mutex<std::collections::HashMap<String, String>>>,
    }

    impl FakeK3s {
        async fn start() -> FakeK3s {
            use hyper::service::service_fn;
            use hyper_util::rt::TokioIo;
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca_params = rcgen::CertificateParams::new(vec![]).unwrap();
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca_params.distinguished_name.push(rcgen::DnType::CommonName, "k3s-server-ca");
            let ca_cert = ca_params.self_signed(&ca_key).unwrap();
            let ca_pem = ca_cert.pem();
            let issuer = Arc::new(rcgen::Issuer::new(ca_params, ca_key));
            let server_key = rcgen::KeyPair::generate().unwrap();
            let server_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
                .unwrap()
                .signed_by(&server_key, &issuer)
                .unwrap();
            let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![server_cert.der().clone()],
                    rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
                )
                .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("https://{}", listener.local_addr().unwrap());
            let seen = Arc::new(Mutex::new(Vec::new()));
            let passwords = Arc::new(Mutex::new(std::collections::HashMap::new()));
            let (seen2, passwords2, ca2) = (seen.clone(), passwords.clone(), ca_pem.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else { return };
                    let Ok(tls) = acceptor.accept(tcp).await else { continue };
                    let (seen, passwords, ca, issuer) =
                        (seen2.clone(), passwords2.clone(), ca2.clone(), issuer.clone());
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                            let (seen, passwords, ca, issuer) =
                                (seen.clone(), passwords.clone(), ca.clone(), issuer.clone());
                            async move {
                                use http_body_util::BodyExt;
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                seen.lock().unwrap().push((parts.uri.path().to_owned(), parts.headers.clone()));
                                let reply = |status: u16, text: String| {
                                    let mut r = http::Response::new(http_body_util::Full::new(Bytes::from(text)));
                                    *r.status_mut() = StatusCode::from_u16(status).unwrap();
                                    Ok::<_, std::convert::Infallible>(r)
                                };
                                if parts.uri.path() == "/cacerts" {
                                    return reply(200, ca);
                                }
                                let header = |n: &str| {
                                    parts.headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
                                };
                                if header("authorization") != "Basic bm9kZTpzZWNyZXQ=" {
                                    return reply(401, "Unauthorized".into());
                                }
                                let (node, password) = (header("k3s-node-name"), header("k3s-node-password"));
                                let known =
                                    passwords.lock().unwrap().entry(node.clone()).or_insert(password.clone()).clone();
                                if known != password {
                                    return reply(403, format!("Node password rejected for {node}"));
                                }
                                let Ok(csr) =
                                    rcgen::CertificateSigningRequestParams::from_pem(&String::from_utf8_lossy(&body))
                                else {
                                    return reply(400, "bad CSR".into());
                                };
                                let cert = csr.signed_by(&issuer).unwrap();
                                reply(200, format!("{}{ca}", cert.pem()))
                            }
                        });
                        let _ =
                            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
                    });
                }
            });
            FakeK3s { url, ca_pem, seen, passwords }
        }

        fn posts(&self) -> usize {
            self.seen.lock().unwrap().iter().filter(|(p, _)| p.starts_with("/v1-k3s/")).count()
        }
    }

    fn settings(dir: &std::path::Path, server: &str, token: &str) -> crate::join::Settings {
        crate::join::Settings {
            server: server.to_owned(),
            token: crate::config::TokenSource::Inline(crate::join::token::Secret::new(token)),
            node: "n1".into(),
            ips: vec!["127.0.1.9".parse().unwrap()],
            kubeconfig: dir.join("kubeconfig"),
            state_dir: dir.join("state"),
        }
    }

    fn tempdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("vks-k3s-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn joins_a_fake_k3s_supervisor() {
        let k3s = FakeK3s::start().await;
        let dir = tempdir("ok");
        let hash = ca_hash(k3s.ca_pem.as_bytes());
        let s = settings(&dir, &k3s.url, &format!("K10{hash}::node:secret"));
        assert_eq!(crate::join::ensure(&s).await.unwrap(), crate::join::Outcome::Joined);

        // The kubeconfig: this server, its CA, a client certificate for system:node:n1.
        let creds = crate::join::files::read_kubeconfig(&s.kubeconfig).unwrap();
        assert_eq!(creds.server, k3s.url);
        assert_eq!(creds.ca_pem.as_deref(), Some(k3s.ca_pem.as_str()));
        let leaf = creds.client.leaf().unwrap();
        assert_eq!(leaf.common_name, "system:node:n1");
        assert_eq!(leaf.organizations, ["system:nodes"]);
        // The serving certificate, with the node's name and IPs.
        let (serving, info) = crate::join::renew::stored_serving(&s).unwrap();
        assert!(serving.key_pem.contains("PRIVATE KEY"));
        for want in ["n1", "localhost", "127.0.1.9", "127.0.0.1"] {
            assert!(info.sans.iter().any(|x| x == want), "{want} not in {:?}", info.sans);
        }
        // What the supervisor saw: /cacerts twice (unverified, then verified), two CSRs with
        // the node's name, password and IPs.
        let seen = k3s.seen.lock().unwrap().clone();
        let paths: Vec<_> = seen.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["/cacerts", "/cacerts", "/v1-k3s/client-kubelet.crt", "/v1-k3s/serving-kubelet.crt"]);
        let password = std::fs::read_to_string(s.state_dir.join("node-password")).unwrap();
        for (_, h) in &seen[2..] {
            assert_eq!(h["k3s-node-name"], "n1");
            assert_eq!(h["k3s-node-password"], password.trim());
            assert_eq!(h["k3s-node-ip"], "127.0.1.9");
        }
        // Idempotent.
        assert_eq!(crate::join::ensure(&s).await.unwrap(), crate::join::Outcome::AlreadyJoined);
        assert_eq!(k3s.posts(), 2);
    }

    #[tokio::test]
    async fn refusals_of_a_fake_k3s_supervisor_name_their_cause() {
        let k3s = FakeK3s::start().await;
        let hash = ca_hash(k3s.ca_pem.as_bytes());
        // Another cluster's CA: refused before any credential is sent.
        let dir = tempdir("hash");
        let e = crate::join::ensure(&settings(&dir, &k3s.url, &format!("K10{}::node:secret", "1".repeat(64))))
            .await
            .unwrap_err();
        assert!(matches!(e, JoinError::CaHashMismatch { .. }), "{e}");
        assert_eq!(k3s.posts(), 0);
        // A wrong password.
        let dir = tempdir("pw");
        let e = crate::join::ensure(&settings(&dir, &k3s.url, &format!("K10{hash}::node:wrong"))).await.unwrap_err();
        assert!(matches!(e, JoinError::WrongToken { .. }), "{e}");
        // Node n1 registered by another machine (another node password).
        k3s.passwords.lock().unwrap().insert("n1".into(), "someone-else".into());
        let dir = tempdir("taken");
        let s = settings(&dir, &k3s.url, &format!("K10{hash}::node:secret"));
        let e = crate::join::ensure(&s).await.unwrap_err();
        assert!(matches!(&e, JoinError::NodeNameTaken { node } if node == "n1"), "{e}");
        assert!(!s.kubeconfig.exists(), "nothing written");
        // A bare password (no CA hash) joins, trusting the served CA.
        k3s.passwords.lock().unwrap().clear();
        let dir = tempdir("nohash");
        assert_eq!(
            crate::join::ensure(&settings(&dir, &k3s.url, "secret")).await.unwrap(),
            crate::join::Outcome::Joined
        );
    }
}

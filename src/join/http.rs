//! Plain HTTPS requests to the server before vks has credentials (k3s's `/cacerts` and
//! `/v1-k3s/*`, `kube-public/cluster-info`), over kube's client so that TLS and timeouts are the
//! same as for every other request: either without verifying the server (only to fetch what is
//! then verified by other means) or trusting exactly one CA bundle.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::JoinError;
use crate::token::Credential;

/// How the server's certificate is checked.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Not at all: only for fetching a CA that is verified afterwards (hash, signature).
    Insecure,
    /// Against this CA bundle (PEM) only.
    Ca(String),
}

/// Timeouts of join requests: a join is interactive (`vks join`, postinst), so it fails fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A response: status and body.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    /// The body as text (lossy), shortened for error messages.
    pub fn text(&self) -> String {
        let s = String::from_utf8_lossy(&self.body).trim().to_owned();
        if s.len() > 300 { format!("{}...", &s[..s.floor_char_boundary(297)]) } else { s }
    }
}

/// A client for `server` with the given trust, credential and extra headers.
pub fn client(
    server: &str,
    trust: &Trust,
    credential: Option<&Credential>,
    headers: Vec<(HeaderName, HeaderValue)>,
) -> Result<kube::Client, JoinError> {
    client_with_identity(server, trust, credential, None, headers)
}

/// [`client`] that also presents a client certificate (the node's, when it has one).
pub fn client_with_identity(
    server: &str,
    trust: &Trust,
    credential: Option<&Credential>,
    identity: Option<&crate::pki::KeyPairPem>,
    headers: Vec<(HeaderName, HeaderValue)>,
) -> Result<kube::Client, JoinError> {
    let uri: http::Uri =
        server.parse().map_err(|e| JoinError::Protocol(format!("server URL {server:?} is invalid: {e}")))?;
    let mut config = kube::Config::new(uri);
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    config.headers = headers;
    match trust {
        Trust::Insecure => config.accept_invalid_certs = true,
        Trust::Ca(pem) => config.root_cert = Some(pem_certs(pem)?),
    }
    if let Some(id) = identity {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        config.auth_info.client_certificate_data = Some(b64(&id.certs_pem));
        config.auth_info.client_key_data = Some(b64(&id.key_pem).into());
    }
    match credential {
        Some(Credential::Bootstrap { id, secret }) => {
            config.auth_info.token = Some(format!("{id}.{}", secret.expose()).into());
        }
        Some(Credential::Password { user, password }) => {
            config.auth_info.username = Some(user.clone());
            config.auth_info.password = Some(password.expose().to_owned().into());
        }
        None => {}
    }
    kube::Client::try_from(config).map_err(|e| JoinError::Protocol(format!("building a client for {server}: {e}")))
}

/// The DER certificates of a PEM bundle; an error when it holds none.
pub fn pem_certs(pem: &str) -> Result<Vec<Vec<u8>>, JoinError> {
    let certs: Vec<Vec<u8>> =
        CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(Result::ok).map(|c| c.as_ref().to_vec()).collect();
    if certs.is_empty() {
        return Err(JoinError::Protocol("the CA bundle holds no certificate".to_owned()));
    }
    Ok(certs)
}

/// Sends one request; a connection or TLS failure is [`JoinError::Unreachable`].
pub async fn send(
    client: &kube::Client,
    server: &str,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> Result<Reply, JoinError> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(kube::client::Body::from(body))
        .map_err(|e| JoinError::Protocol(format!("building a request for {path}: {e}")))?;
    let resp = client
        .send(req)
        .await
        .map_err(|e| JoinError::Unreachable { server: server.to_owned(), cause: error_chain(&e) })?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| JoinError::Unreachable { server: server.to_owned(), cause: format!("reading {path}: {e}") })?
        .to_bytes();
    Ok(Reply { status, body })
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

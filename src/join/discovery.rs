//! Cluster CA discovery with a bootstrap token, as kubeadm does it (`kubeadm join
//! --discovery-token`): read `kube-public/cluster-info` anonymously without verifying TLS, then
//! trust it only if the bootstrap-signer's JWS signature for our token id verifies with our
//! token secret (HS256, detached payload = the ConfigMap's `kubeconfig`), and, when the token
//! carries one, if the CA hashes to the token's CA hash.

use base64::Engine as _;
use http::{Method, StatusCode};

use super::JoinError;
use super::http::{self as h, Trust};
use crate::token::{Credential, Token, ca_hash};

/// Path of the ConfigMap, readable anonymously (and only that path) on clusters set up for it.
pub const CLUSTER_INFO_PATH: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";

/// What cluster-info vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The cluster CA (PEM), from `certificate-authority-data`.
    pub ca_pem: String,
    /// The server URL the kubeconfig names (informational; vks uses `cluster.server`).
    pub server: String,
}

/// Fetches and verifies cluster-info.
pub async fn discover(server: &str, token: &Token) -> Result<ClusterInfo, JoinError> {
    log::info!(
        "reading kube-public/cluster-info from {server} anonymously, without verifying TLS: it is trusted only if \
         the token's signature verifies"
    );
    let client = h::client(server, &Trust::Insecure, None, Vec::new())?;
    let reply = h::send(&client, server, Method::GET, CLUSTER_INFO_PATH, Vec::new()).await?;
    match reply.status {
        StatusCode::OK => {}
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
            return Err(JoinError::NoDiscovery { server: server.to_owned(), status: reply.status.as_u16() });
        }
        s => return Err(JoinError::Protocol(format!("GET {CLUSTER_INFO_PATH} on {server}: {s}: {}", reply.text()))),
    }
    let cm: serde_json::Value = serde_json::from_slice(&reply.body)
        .map_err(|e| JoinError::Protocol(format!("cluster-info from {server} is not JSON: {e}")))?;
    verify(server, &cm, token)
}

/// The pure part of [`discover`]: checks the signature and the CA hash of a cluster-info
/// ConfigMap (as JSON).
pub fn verify(server: &str, cm: &serde_json::Value, token: &Token) -> Result<ClusterInfo, JoinError> {
    let Credential::Bootstrap { id, secret } = &token.credential else {
        return Err(JoinError::Protocol("cluster-info discovery needs a bootstrap token <id>.<secret>".to_owned()));
    };
    let data = &cm["data"];
    let kubeconfig = data["kubeconfig"]
        .as_str()
        .ok_or_else(|| JoinError::Protocol(format!("cluster-info on {server} has no data.kubeconfig")))?;
    let Some(jws) = data[format!("jws-kubeconfig-{id}")].as_str() else {
        return Err(JoinError::WrongToken {
            server: server.to_owned(),
            detail: format!(
                "cluster-info has no signature for token id {id:?}: the cluster does not know this token \
                 (expired, deleted, or not a signing token)"
            ),
        });
    };
    if !jws_valid(jws, kubeconfig, id, secret.expose()) {
        return Err(JoinError::WrongToken {
            server: server.to_owned(),
            detail: format!("the cluster-info signature for token id {id:?} does not verify with the token's secret"),
        });
    }
    let ca_pem = ca_of_kubeconfig(kubeconfig)
        .ok_or_else(|| JoinError::Protocol(format!("the kubeconfig of cluster-info on {server} has no CA data")))?;
    check_ca_hash(server, token, &ca_pem)?;
    Ok(ClusterInfo { server: server_of_kubeconfig(kubeconfig).unwrap_or_default(), ca_pem })
}

/// Refuses a CA whose hash is not the token's; warns when the token has no hash.
pub fn check_ca_hash(server: &str, token: &Token, ca_pem: &str) -> Result<(), JoinError> {
    let actual = ca_hash(ca_pem.as_bytes());
    match &token.ca_hash {
        Some(expected) if *expected != actual => {
            Err(JoinError::CaHashMismatch { server: server.to_owned(), expected: expected.clone(), actual })
        }
        Some(_) => Ok(()),
        None if token.is_bootstrap() => {
            log::warn!(
                "the token has no CA hash: the cluster CA of {server} (sha256 {actual}) is trusted on the strength \
                 of the token's cluster-info signature alone; a token of the form K10<CA hash>::<id>.<secret> also \
                 pins the CA"
            );
            Ok(())
        }
        None => {
            log::warn!(
                "the token has no CA hash: the cluster CA of {server} (sha256 {actual}) is trusted without \
                 verification; use a token of the form K10<CA hash>::<credentials> to verify it"
            );
            Ok(())
        }
    }
}

/// Verifies a detached JWS (`<header>..<signature>`) over `content` with HS256 keyed by the
/// token secret, and that its header names algorithm HS256 and key id `id` — what
/// k8s.io/cluster-bootstrap `jws.DetachedTokenIsValid` accepts.
pub fn jws_valid(jws: &str, content: &str, id: &str, secret: &str) -> bool {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let Some((header_b64, rest)) = jws.split_once('.') else { return false };
    let Some(("", sig_b64)) = rest.split_once('.') else { return false };
    let Ok(header) = b64.decode(header_b64) else { return false };
    let Ok(header) = serde_json::from_slice::<serde_json::Value>(&header) else { return false };
    if header["alg"] != "HS256" || header["kid"] != id {
        return false;
    }
    let Ok(sig) = b64.decode(sig_b64) else { return false };
    let signing_input = format!("{header_b64}.{}", b64.encode(content.as_bytes()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::verify(&key, signing_input.as_bytes(), &sig).is_ok()
}

fn parse_kubeconfig(text: &str) -> Option<kube::config::Kubeconfig> {
    kube::config::Kubeconfig::from_yaml(text).ok()
}

fn ca_of_kubeconfig(text: &str) -> Option<String> {
    let kc = parse_kubeconfig(text)?;
    let data = kc.clusters.first()?.cluster.as_ref()?.certificate_authority_data.clone()?;
    let pem = base64::engine::general_purpose::STANDARD.decode(data.trim()).ok()?;
    String::from_utf8(pem).ok()
}

fn server_of_kubeconfig(text: &str) -> Option<String> {
    parse_kubeconfig(text)?.clusters.first()?.cluster.as_ref()?.server.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Secret;

    /// A detached signature as the bootstrap-signer makes it (k8s.io/cluster-bootstrap
    /// `ComputeDetachedSignature`, go-jose): header {"alg":"HS256","kid":<id>}.
    fn sign(content: &str, id: &str, secret: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(format!(r#"{{"alg":"HS256","kid":"{id}"}}"#));
        let input = format!("{header}.{}", b64.encode(content));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let sig = b64.encode(ring::hmac::sign(&key, input.as_bytes()).as_ref());
        format!("{header}..{sig}")
    }

    const ID: &str = "abcdef";
    const SECRET: &str = "0123456789abcdef";

    fn token(hash: Option<String>) -> Token {
        Token { ca_hash: hash, credential: Credential::Bootstrap { id: ID.into(), secret: Secret::new(SECRET) } }
    }

    fn cluster_info(ca_pem: &str, sign_with: &str) -> serde_json::Value {
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: https://10.0.0.1:6443\n    \
             certificate-authority-data: {}\ncontexts: []\nusers: []\n",
            base64::engine::general_purpose::STANDARD.encode(ca_pem)
        );
        serde_json::json!({ "data": { "kubeconfig": kc, format!("jws-kubeconfig-{ID}"): sign(&kc, ID, sign_with) } })
    }

    #[test]
    fn a_go_jose_signature_verifies() {
        // Output of k8s.io/cluster-bootstrap v0.37.2 jws.ComputeDetachedSignature("hello",
        // "abcdef", "0123456789abcdef") (go-jose), and the same from the test signer.
        let jws = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImFiY2RlZiJ9..MxsnbCjBaYzcbNIFa06F-wuF9LX26rhMlrL4zA1511s";
        assert_eq!(sign("hello", ID, SECRET), jws);
        assert!(jws_valid(jws, "hello", ID, SECRET));
        assert!(!jws_valid(jws, "hello!", ID, SECRET), "other content");
        assert!(!jws_valid(jws, "hello", ID, "0123456789abcdeX"), "other secret");
        assert!(!jws_valid(jws, "hello", "abcdeg", SECRET), "other key id");
        assert!(!jws_valid("garbage", "hello", ID, SECRET));
        let attached = jws.replace("..", &format!(".{}.", "aGVsbG8"));
        assert!(!jws_valid(&attached, "hello", ID, SECRET), "only detached signatures");
        let none = sign("hello", ID, SECRET).replacen("eyJhbGciOiJIUzI1NiIs", "eyJhbGciOiJub25lIiwi", 1);
        assert!(!jws_valid(&none, "hello", ID, SECRET), "alg none");
    }

    #[test]
    fn verified_cluster_info_gives_the_ca() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap().cert.pem();
        let info = verify("https://s", &cluster_info(&ca, SECRET), &token(Some(ca_hash(ca.as_bytes())))).unwrap();
        assert_eq!(info, ClusterInfo { ca_pem: ca.clone(), server: "https://10.0.0.1:6443".into() });
        // Without a hash: accepted (with a warning).
        assert!(verify("https://s", &cluster_info(&ca, SECRET), &token(None)).is_ok());
    }

    #[test]
    fn a_bad_signature_or_an_unknown_token_is_a_wrong_token() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap().cert.pem();
        let e = verify("https://s", &cluster_info(&ca, "ffffffffffffffff"), &token(None)).unwrap_err();
        assert!(matches!(e, JoinError::WrongToken { .. }), "{e}");
        let mut cm = cluster_info(&ca, SECRET);
        cm["data"].as_object_mut().unwrap().remove(&format!("jws-kubeconfig-{ID}"));
        let e = verify("https://s", &cm, &token(None)).unwrap_err();
        assert!(matches!(e, JoinError::WrongToken { .. }) && e.to_string().contains("abcdef"), "{e}");
    }

    #[test]
    fn a_ca_with_another_hash_is_refused() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap().cert.pem();
        let wrong = "0".repeat(64);
        let e = verify("https://s", &cluster_info(&ca, SECRET), &token(Some(wrong.clone()))).unwrap_err();
        match &e {
            JoinError::CaHashMismatch { expected, actual, .. } => {
                assert_eq!(expected, &wrong);
                assert_eq!(actual, &ca_hash(ca.as_bytes()));
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("does not match the CA hash of the token"), "{e}");
    }
}

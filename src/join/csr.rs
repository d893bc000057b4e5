//! Keys and certificate signing requests for the node's two certificates, and the Kubernetes
//! CertificateSigningRequest API flow (create, wait for approval and issuance).
//!
//! Keys are ECDSA P-256, generated here and never sent anywhere: only the CSR leaves the machine.
//! Both certificates name the node `system:node:<name>` in group `system:nodes`, which is what
//! the controller-manager's approver and signers, the Node authorizer and k3s expect:
//! - client (signer `kubernetes.io/kube-apiserver-client-kubelet`): usages digital signature,
//!   client auth; no SANs;
//! - serving (signer `kubernetes.io/kubelet-serving`): usages digital signature, server auth;
//!   SANs the node name, `localhost` and the node's IPs (and 127.0.0.1).

use std::net::IpAddr;
use std::time::Duration;
use tokio::time::Instant;

use base64::Engine as _;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

use super::JoinError;

/// Which of the node's certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The client certificate vks authenticates to the API server with.
    Client,
    /// The serving certificate of the kubelet API.
    Serving,
}

impl Kind {
    /// The Kubernetes signer of this kind of certificate.
    pub fn signer(self) -> &'static str {
        match self {
            Kind::Client => "kubernetes.io/kube-apiserver-client-kubelet",
            Kind::Serving => "kubernetes.io/kubelet-serving",
        }
    }

    /// The key usages requested (as the kubelet requests them).
    pub fn usages(self) -> [&'static str; 2] {
        match self {
            Kind::Client => ["digital signature", "client auth"],
            Kind::Serving => ["digital signature", "server auth"],
        }
    }

    /// For messages: "client" or "serving".
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Client => "client",
            Kind::Serving => "serving",
        }
    }
}

/// A fresh private key.
pub fn new_key() -> Result<KeyPair, JoinError> {
    KeyPair::generate().map_err(|e| JoinError::Protocol(format!("generating a key: {e}")))
}

/// The PEM CSR for the node's certificate of `kind`, signed by `key` (what the Kubernetes CSR API
/// takes). `ips` only matter for the serving certificate.
pub fn request(kind: Kind, node: &str, ips: &[IpAddr], key: &KeyPair) -> Result<String, JoinError> {
    build(kind, node, ips, key)?
        .pem()
        .map_err(|e| JoinError::Protocol(format!("encoding the CSR for node {node}: {e}")))
}

/// The same CSR in DER: what the k3s supervisor takes (Go's `x509.ParseCertificateRequest`, as
/// the k3s agent sends it; a PEM body makes k3s answer with a shared key of its own instead).
pub fn request_der(kind: Kind, node: &str, ips: &[IpAddr], key: &KeyPair) -> Result<Vec<u8>, JoinError> {
    Ok(build(kind, node, ips, key)?.der().to_vec())
}

fn build(kind: Kind, node: &str, ips: &[IpAddr], key: &KeyPair) -> Result<rcgen::CertificateSigningRequest, JoinError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "system:nodes");
    dn.push(DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name = dn;
    if kind == Kind::Serving {
        let bad = |e: rcgen::Error| JoinError::Protocol(format!("node name {node:?} as a DNS name: {e}"));
        let mut sans = vec![
            SanType::DnsName(node.try_into().map_err(bad)?),
            SanType::DnsName("localhost".try_into().map_err(bad)?),
        ];
        let mut all: Vec<IpAddr> = ips.to_vec();
        all.push(IpAddr::from([127, 0, 0, 1]));
        all.dedup();
        sans.extend(all.into_iter().map(SanType::IpAddress));
        params.subject_alt_names = sans;
    }
    params
        .serialize_request(key)
        .map_err(|e| JoinError::Protocol(format!("making the {} CSR for node {node}: {e}", kind.noun())))
}

/// The CertificateSigningRequest object for a PEM CSR.
pub fn object(kind: Kind, node: &str, csr_pem: &str) -> CertificateSigningRequest {
    CertificateSigningRequest {
        metadata: ObjectMeta { generate_name: Some(format!("vks-{}-{node}-", kind.noun())), ..ObjectMeta::default() },
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(csr_pem.as_bytes().to_vec()),
            signer_name: kind.signer().to_owned(),
            usages: Some(kind.usages().iter().map(|u| (*u).to_owned()).collect()),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    }
}

/// Where a CSR stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Not approved (or approved and not yet signed).
    Pending,
    /// Issued: the certificate chain (PEM).
    Issued(String),
    /// Denied or failed, with the condition's reason and message.
    Refused(String),
}

/// Reads the state of a CSR object.
pub fn progress(csr: &CertificateSigningRequest) -> Progress {
    let status = csr.status.as_ref();
    for c in status.and_then(|s| s.conditions.as_ref()).into_iter().flatten() {
        if (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True" {
            let why = [c.reason.as_deref(), c.message.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(": ");
            return Progress::Refused(format!("{} ({why})", c.type_));
        }
    }
    match status.and_then(|s| s.certificate.as_ref()) {
        Some(cert) if !cert.0.is_empty() => Progress::Issued(String::from_utf8_lossy(&cert.0).into_owned()),
        _ => Progress::Pending,
    }
}

/// Creates a CSR for `kind` with `client` and waits for its certificate: up to `wait` (then
/// [`JoinError::CsrTimeout`]), or forever with `None`. Logs once how to approve it by hand.
pub async fn submit_and_wait(
    client: &kube::Client,
    server: &str,
    kind: Kind,
    node: &str,
    csr_pem: &str,
    wait: Option<Duration>,
) -> Result<String, JoinError> {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let created = api
        .create(&PostParams::default(), &object(kind, node, csr_pem))
        .await
        .map_err(|e| super::api_error(server, &format!("creating the {} CSR for node {node}", kind.noun()), e))?;
    let name = created.metadata.name.clone().unwrap_or_default();
    log::info!(node = node, csr = name.as_str(); "created CSR {name} for the {} certificate of node {node} (signer {})", kind.noun(), kind.signer());
    let start = Instant::now();
    let mut told = false;
    let mut current = created;
    loop {
        match progress(&current) {
            Progress::Issued(pem) => {
                log::info!(node = node, csr = name.as_str(); "CSR {name} issued");
                return Ok(pem);
            }
            Progress::Refused(why) => return Err(JoinError::CsrRefused { csr: name, reason: why }),
            Progress::Pending => {}
        }
        if !told && start.elapsed() > Duration::from_secs(5) {
            log::info!(
                node = node, csr = name.as_str();
                "waiting for CSR {name} to be approved (an operator approves it with: kubectl certificate approve {name})"
            );
            told = true;
        }
        if wait.is_some_and(|w| start.elapsed() > w) {
            return Err(JoinError::CsrTimeout { csr: name, waited: start.elapsed().as_secs() });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        current = match api.get(&name).await {
            Ok(c) => c,
            Err(e) => {
                let e = super::api_error(server, &format!("reading CSR {name}"), e);
                if !matches!(e, JoinError::Unreachable { .. }) {
                    return Err(e);
                }
                log::debug!("{e}");
                current
            }
        };
    }
}

/// The PEM of a key, for storing beside its certificate.
pub fn key_pem(key: &KeyPair) -> String {
    key.serialize_pem()
}

/// The request as base64 (what the API object carries, for tests and messages).
pub fn encoded(csr_pem: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(csr_pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::certificates::v1::{CertificateSigningRequestCondition, CertificateSigningRequestStatus};
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;

    fn parse(pem: &str) -> (String, Vec<String>, Vec<String>) {
        let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref()).unwrap();
        let subject = req.certification_request_info.subject.to_string();
        let orgs = req
            .certification_request_info
            .subject
            .iter_organization()
            .map(|o| o.as_str().unwrap().to_owned())
            .collect();
        let mut sans = Vec::new();
        for ext in req.requested_extensions().into_iter().flatten() {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    sans.push(match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => (*d).to_owned(),
                        x509_parser::extensions::GeneralName::IPAddress(b) => {
                            std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string()
                        }
                        other => format!("{other}"),
                    });
                }
            }
        }
        (subject, orgs, sans)
    }

    #[test]
    fn client_csr_names_the_node_in_system_nodes() {
        let key = new_key().unwrap();
        let pem = request(Kind::Client, "n1", &[], &key).unwrap();
        let (subject, orgs, sans) = parse(&pem);
        assert!(subject.contains("CN=system:node:n1"), "{subject}");
        assert_eq!(orgs, ["system:nodes"]);
        assert!(sans.is_empty(), "{sans:?}");
        // The key stays here: the CSR holds no private key.
        assert!(!pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn serving_csr_has_the_node_name_and_ips() {
        let key = new_key().unwrap();
        let pem = request(Kind::Serving, "n1", &["127.0.1.7".parse().unwrap()], &key).unwrap();
        let (subject, orgs, sans) = parse(&pem);
        assert!(subject.contains("CN=system:node:n1"), "{subject}");
        assert_eq!(orgs, ["system:nodes"]);
        let sans = sans.join(",");
        for want in ["n1", "localhost", "127.0.1.7", "127.0.0.1"] {
            assert!(sans.contains(want), "{want} missing from {sans}");
        }
    }

    #[test]
    fn der_csr_is_the_pem_csr_decoded() {
        let key = new_key().unwrap();
        let der = request_der(Kind::Client, "n1", &[], &key).unwrap();
        assert_eq!(der[0], 0x30, "a DER SEQUENCE, not PEM text");
        let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        assert!(req.certification_request_info.subject.to_string().contains("CN=system:node:n1"));
        req.verify_signature().unwrap();
    }

    #[test]
    fn csr_objects_carry_signer_and_usages() {
        let o = object(Kind::Client, "n1", "PEM");
        assert_eq!(o.spec.signer_name, "kubernetes.io/kube-apiserver-client-kubelet");
        assert_eq!(o.spec.usages.as_deref().unwrap(), ["digital signature", "client auth"]);
        assert_eq!(o.spec.request.0, b"PEM");
        assert_eq!(o.metadata.generate_name.as_deref(), Some("vks-client-n1-"));
        let o = object(Kind::Serving, "n1", "PEM");
        assert_eq!(o.spec.signer_name, "kubernetes.io/kubelet-serving");
        assert_eq!(o.spec.usages.as_deref().unwrap(), ["digital signature", "server auth"]);
        assert_eq!(encoded("PEM"), "UEVN");
    }

    #[test]
    fn progress_follows_conditions_and_certificate() {
        let mut o = object(Kind::Client, "n1", "PEM");
        assert_eq!(progress(&o), Progress::Pending);
        let cond = |t: &str| CertificateSigningRequestCondition {
            type_: t.into(),
            status: "True".into(),
            reason: Some("R".into()),
            message: Some("because".into()),
            ..Default::default()
        };
        o.status =
            Some(CertificateSigningRequestStatus { conditions: Some(vec![cond("Approved")]), certificate: None });
        assert_eq!(progress(&o), Progress::Pending, "approved, not signed yet");
        o.status.as_mut().unwrap().certificate = Some(k8s_openapi::ByteString(b"CERT".to_vec()));
        assert_eq!(progress(&o), Progress::Issued("CERT".into()));
        o.status = Some(CertificateSigningRequestStatus { conditions: Some(vec![cond("Denied")]), certificate: None });
        assert_eq!(progress(&o), Progress::Refused("Denied (R: because)".into()));
    }
}

//! TLS of the kubelet port: the serving certificate ([`ServingIdentity`], replaceable while
//! serving) and the client CA ([`ClientCa`], re-read when its file changes).
//!
//! Client certificates are verified when presented and not required (as the kubelet's
//! `RequestClientCert` mode): token-only callers (metrics-server, Prometheus) get through the
//! handshake and are authenticated at the HTTP layer, while a certificate from another CA fails
//! the handshake.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_util::sync::CancellationToken;

use super::auth::User;
use crate::config::KubeletConfig;

/// How often the client CA file is checked for changes.
const CA_POLL: Duration = Duration::from_secs(10);

/// The serving certificate, replaceable while serving (renewal, a newly issued certificate):
/// each TLS handshake uses the one current at that moment.
#[derive(Debug)]
pub struct ServingIdentity {
    current: RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ServingIdentity {
    pub(super) fn new(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<ServingIdentity> {
        let ck = rustls::sign::CertifiedKey::from_der(certs, key, &provider())
            .context("kubelet serving certificate and key do not match")?;
        Ok(ServingIdentity { current: RwLock::new(Arc::new(ck)) })
    }

    /// Serves `pair` (chain and key, PEM) from the next handshake on.
    pub fn set(&self, pair: &crate::join::files::KeyPairPem) -> Result<(), String> {
        let (certs, key) = pair.to_der()?;
        let ck = rustls::sign::CertifiedKey::from_der(certs, key, &provider())
            .map_err(|e| format!("serving certificate and key do not match: {e}"))?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ServingIdentity {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads the configured key pair, or makes a self-signed one for `names` (node name and IPs).
pub(super) fn key_pair(
    cfg: &KubeletConfig,
    names: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    if let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
        let certs = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("reading kubelet.tls_cert_file {}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing kubelet.tls_cert_file {}", cert.display()))?;
        anyhow::ensure!(!certs.is_empty(), "kubelet.tls_cert_file {} holds no certificate", cert.display());
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading kubelet.tls_key_file {}", key.display()))?;
        return Ok((certs, key));
    }
    let ck =
        rcgen::generate_simple_self_signed(names.to_vec()).context("generating a self-signed serving certificate")?;
    let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("encoding the generated key: {e}"))?;
    Ok((vec![ck.cert.der().clone()], key))
}

/// Where the client CA comes from: `kubelet.client_ca_file` when configured (it must exist),
/// else `<state_dir>/client-ca.crt` when present (written and kept current by the join).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSource {
    /// The file.
    pub path: PathBuf,
    /// Configured explicitly: a missing or bad file is an error at start-up.
    pub required: bool,
}

impl CaSource {
    /// The rule above.
    pub fn from_config(cfg: &KubeletConfig, state_dir: &Path) -> CaSource {
        match &cfg.client_ca_file {
            Some(p) => CaSource { path: p.clone(), required: true },
            None => CaSource { path: state_dir.join("client-ca.crt"), required: false },
        }
    }

    fn what(&self) -> String {
        if self.required {
            format!("kubelet.client_ca_file {}", self.path.display())
        } else {
            format!("client CA {}", self.path.display())
        }
    }
}

/// What the file looked like when last read: reloading happens when this changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp { modified: m.modified().ok(), len: m.len() })
}

/// Parses a PEM bundle of CA certificates into a client certificate verifier.
fn verifier(pem: &[u8], what: &str) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem) {
        let c = c.with_context(|| format!("parsing {what}"))?;
        roots.add(c).with_context(|| format!("adding a CA of {what}"))?;
    }
    anyhow::ensure!(!roots.is_empty(), "{what} holds no certificate");
    // Unauthenticated TLS clients are let through to the HTTP layer, which decides per request
    // (bearer tokens are an alternative to client certificates).
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .with_context(|| format!("building the client certificate verifier of {what}"))
}

/// The TLS server configuration, rebuilt when the client CA changes; each handshake uses the
/// one current when it starts.
pub struct TlsState {
    identity: Arc<ServingIdentity>,
    ca: CaSource,
    current: RwLock<Arc<ServerConfig>>,
    stamp: RwLock<Option<Stamp>>,
}

impl TlsState {
    /// Loads the client CA (see [`CaSource`]) and builds the first configuration.
    pub fn new(identity: Arc<ServingIdentity>, ca: CaSource) -> Result<TlsState> {
        let st = stamp(&ca.path);
        let config = match std::fs::read(&ca.path) {
            Ok(pem) => server_config(identity.clone(), Some(verifier(&pem, &ca.what())?))?,
            Err(e) if ca.required => return Err(e).with_context(|| format!("reading {}", ca.what())),
            Err(_) => {
                log::warn!(
                    "no client CA at {} (and kubelet.client_ca_file is not set): client certificates are not \
                     accepted until it appears (the API server cannot call in until then)",
                    ca.path.display()
                );
                server_config(identity.clone(), None)?
            }
        };
        Ok(TlsState { identity, ca, current: RwLock::new(Arc::new(config)), stamp: RwLock::new(st) })
    }

    /// The configuration for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the client CA if its file changed. A file that disappeared or became
    /// unreadable or invalid keeps the CA loaded before (and says so).
    pub fn reload_if_changed(&self) {
        let now = stamp(&self.ca.path);
        if *self.stamp.read().unwrap_or_else(|e| e.into_inner()) == now {
            return;
        }
        *self.stamp.write().unwrap_or_else(|e| e.into_inner()) = now.clone();
        if now.is_none() {
            log::warn!("{} disappeared; the client CA loaded before stays in use", self.ca.what());
            return;
        }
        let built = std::fs::read(&self.ca.path)
            .with_context(|| format!("reading {}", self.ca.what()))
            .and_then(|pem| verifier(&pem, &self.ca.what()))
            .and_then(|v| server_config(self.identity.clone(), Some(v)));
        match built {
            Ok(c) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(c);
                log::info!("kubelet API: client CA loaded from {}", self.ca.path.display());
            }
            Err(e) => log::warn!("{e:#}; the client CA loaded before stays in use"),
        }
    }

    /// Checks the client CA file every few seconds until `cancel` fires.
    pub async fn watch(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(CA_POLL) => {}
            }
            let me = self.clone();
            // A few stat calls; the rare reload parses a small PEM file.
            if tokio::task::spawn_blocking(move || me.reload_if_changed()).await.is_err() {
                log::warn!("kubelet API: checking the client CA panicked");
            }
        }
    }
}

fn server_config(
    identity: Arc<ServingIdentity>,
    verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(identity);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The user a verified client certificate names: CN is the user name, each O a group (as the
/// API server's x509 authenticator maps them).
pub fn certificate_user(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    if name.is_empty() {
        return None;
    }
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_owned)).collect();
    Some(User::new(name, String::new(), groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_and_leaf(cn: &str, orgs: &[&str]) -> (String, Vec<u8>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "test-ca");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            p.distinguished_name.push(rcgen::DnType::OrganizationName, *o);
        }
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf = p.signed_by(&key, &issuer).unwrap();
        (ca.pem(), leaf.der().to_vec())
    }

    #[test]
    fn certificate_names_user_and_groups() {
        let (_, der) = ca_and_leaf("kube-apiserver-kubelet-client", &["system:masters"]);
        let u = certificate_user(&der).unwrap();
        assert_eq!(u.name, "kube-apiserver-kubelet-client");
        assert_eq!(u.groups, ["system:masters", "system:authenticated"]);
        assert_eq!(certificate_user(b"not a certificate"), None);
    }

    #[test]
    fn client_ca_is_reloaded_when_the_file_changes() {
        let dir = std::env::temp_dir().join(format!("vks-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("client-ca.crt");
        let _ = std::fs::remove_file(&path);
        let (pair, _) = {
            let k = rcgen::generate_simple_self_signed(vec!["n1".to_owned()]).unwrap();
            let key = PrivateKeyDer::try_from(k.signing_key.serialize_der()).unwrap();
            ((vec![k.cert.der().clone()], key), ())
        };
        let identity = Arc::new(ServingIdentity::new(pair.0, pair.1).unwrap());
        let src = CaSource { path: path.clone(), required: false };
        let tls = TlsState::new(identity.clone(), src).unwrap();
        let before = tls.config();
        // Absent and optional: served without client certificates.
        tls.reload_if_changed();
        assert!(Arc::ptr_eq(&before, &tls.config()));
        let (ca, _) = ca_and_leaf("x", &[]);
        std::fs::write(&path, &ca).unwrap();
        tls.reload_if_changed();
        assert!(!Arc::ptr_eq(&before, &tls.config()), "a new CA file is picked up");
        let loaded = tls.config();
        std::fs::write(&path, "garbage that is longer than before........................................").unwrap();
        tls.reload_if_changed();
        assert!(Arc::ptr_eq(&loaded, &tls.config()), "a bad file keeps the last good CA");
        // Required and missing: an error naming the key.
        let missing = CaSource { path: dir.join("nope.crt"), required: true };
        let err = TlsState::new(identity, missing).err().unwrap();
        assert!(format!("{err:#}").contains("kubelet.client_ca_file"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Certificates and keys as vks keeps them: a chain and its key in PEM ([`KeyPairPem`]), what a
//! certificate says ([`CertInfo`]), and the one atomic 0600 write every credential goes through
//! ([`write_private`]). Shared by joining (`join`), the kubelet API and the agent tunnel; depends
//! on none of them.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A failed file operation, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct FileError {
    /// What was being done ("writing", "reading", ...).
    pub what: &'static str,
    /// The file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

fn ferr<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FileError + 'a {
    move |source| FileError { what, path: path.to_owned(), source }
}

/// Writes `data` to `path` atomically with mode 0600 ([`crate::fsutil::write_atomic`]: the
/// temporary file is created 0600, so the content is never readable by others). Creates the
/// parent directory (0700) if needed.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), FileError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(ferr("creating the directory of", path))?;
    }
    crate::fsutil::write_atomic(path, data, 0o600).map_err(ferr("writing", path))
}

/// What vks needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject common name.
    pub common_name: String,
    /// Subject organizations.
    pub organizations: Vec<String>,
    /// Issuer, as text (`CN=...`).
    pub issuer: String,
    /// Serial number, hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// DNS names and IP addresses of the subjectAltName extension, as text.
    pub sans: Vec<String>,
}

impl CertInfo {
    /// Parses a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertInfo, String> {
        use x509_parser::extensions::GeneralName;
        let (_, c) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
            it.next().and_then(|a| a.as_str().ok()).unwrap_or_default().to_owned()
        };
        let common_name = first(&mut c.subject().iter_common_name());
        let organizations =
            c.subject().iter_organization().filter_map(|a| a.as_str().ok().map(str::to_owned)).collect();
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 { UNIX_EPOCH + Duration::from_secs(secs as u64) } else { UNIX_EPOCH }
        };
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = c.subject_alternative_name() {
            for n in &ext.value.general_names {
                match n {
                    GeneralName::DNSName(d) => sans.push((*d).to_owned()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => {
                            sans.push(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap_or_default()).to_string())
                        }
                        16 => sans
                            .push(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap_or_default()).to_string()),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        Ok(CertInfo {
            common_name,
            organizations,
            issuer: c.issuer().to_string(),
            serial: c.raw_serial_as_string(),
            not_before: time(c.validity().not_before),
            not_after: time(c.validity().not_after),
            sans,
        })
    }

    /// True while now is within the validity period.
    pub fn valid_now(&self) -> bool {
        let now = SystemTime::now();
        self.not_before <= now && now < self.not_after
    }
}

/// A certificate chain and its private key (PEM).
#[derive(Clone)]
pub struct KeyPairPem {
    /// The certificate chain, leaf first.
    pub certs_pem: String,
    /// The private key.
    pub key_pem: String,
}

impl std::fmt::Debug for KeyPairPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPairPem").field("certs_pem", &self.certs_pem).finish_non_exhaustive()
    }
}

impl KeyPairPem {
    /// The chain and key in DER, for rustls.
    pub fn to_der(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
        let certs = CertificateDer::pem_slice_iter(self.certs_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad certificate PEM: {e}"))?;
        if certs.is_empty() {
            return Err("no certificate".to_owned());
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| format!("bad key PEM: {e}"))?;
        Ok((certs, key))
    }

    /// The leaf certificate's facts.
    pub fn leaf(&self) -> Result<CertInfo, String> {
        let (certs, _) = self.to_der()?;
        CertInfo::from_der(certs[0].as_ref())
    }

    /// Splits a PEM bundle into its certificates (re-encoded, in order) and its private key (a
    /// k3s response may hold both). Text that is not PEM gives no certificate and no key.
    pub fn split(text: &str) -> (String, Option<String>) {
        let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        let mut certs = String::new();
        let mut key = None;
        for block in pem::parse_many(text).unwrap_or_default() {
            if block.tag() == "CERTIFICATE" {
                certs.push_str(&pem::encode_config(&block, lf));
            } else if block.tag().ends_with("PRIVATE KEY") {
                key = Some(pem::encode_config(&block, lf));
            }
        }
        (certs, key)
    }

    /// Reads a combined PEM file (chain then key), as vks stores the serving certificate.
    pub fn read_combined(path: &Path) -> Result<KeyPairPem, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let (certs_pem, key) = KeyPairPem::split(&text);
        let key_pem = key.ok_or_else(|| format!("{} holds no private key", path.display()))?;
        Ok(KeyPairPem { certs_pem, key_pem })
    }

    /// Writes chain + key into one file, atomically, 0600.
    pub fn write_combined(&self, path: &Path) -> Result<(), FileError> {
        write_private(path, format!("{}{}", self.certs_pem, self.key_pem).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vks-pki-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn private_writes_are_atomic_and_0600() {
        let d = tempdir("write");
        let p = d.join("sub/secret");
        write_private(&p, b"one").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(d.join("sub")).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(d.join("sub")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["secret"], "no temporary file left behind");
    }

    #[test]
    fn pem_bundles_are_split_into_certificates_and_key() {
        let ck = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let bundle = format!("{}{}{}", ck.cert.pem(), ck.signing_key.serialize_pem(), ck.cert.pem());
        let (certs, key) = KeyPairPem::split(&bundle);
        assert_eq!(certs.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(key.unwrap().contains("BEGIN PRIVATE KEY"));
        assert_eq!(KeyPairPem::split(&ck.cert.pem()).1, None);
    }
}

//! Join tokens, parsed the way k3s parses them (`pkg/clientaccess/token.go`), plus kubeadm's
//! bootstrap tokens. Pure: no I/O.
//!
//! Accepted forms:
//! - `K10<hash>::<user>:<password>`: a k3s token; `<hash>` is the SHA-256 of the cluster CA
//!   (64 hex digits; may be empty: `K10::node:secret`);
//! - `K10<hash>::<id>.<secret>`: a bootstrap token with a CA hash;
//! - `<id>.<secret>`: a bare bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`), no CA hash;
//! - anything else: a bare k3s password, sent as user `node` (the k3s agent role), no CA hash.

use std::fmt;

use sha2::{Digest, Sha256};

/// A secret string: never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What a token authenticates with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A bootstrap token `<id>.<secret>`: sent as `Authorization: Bearer <id>.<secret>`; the
    /// secret also keys the JWS signatures of `kube-public/cluster-info`.
    Bootstrap {
        /// The public token id (6 characters).
        id: String,
        /// The token secret (16 characters).
        secret: Secret,
    },
    /// k3s basic-auth credentials (`node:<password>` for agents).
    Password {
        /// The user (`node` for agents, `server` for servers).
        user: String,
        /// The password.
        password: Secret,
    },
}

impl Credential {
    /// The `Authorization` header value for this credential.
    pub fn authorization(&self) -> String {
        use base64::Engine as _;
        match self {
            Credential::Bootstrap { id, secret } => format!("Bearer {id}.{}", secret.expose()),
            Credential::Password { user, password } => {
                let raw = format!("{user}:{}", password.expose());
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
            }
        }
    }
}

/// A parsed join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// SHA-256 of the cluster CA (lowercase hex), when the token carries one.
    pub ca_hash: Option<String>,
    /// The credential part.
    pub credential: Credential,
}

/// Why a token could not be parsed. The token itself is never part of the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Empty token.
    #[error("the token is empty")]
    Empty,
    /// `K10` without `::`.
    #[error("a K10 token has the form K10<CA hash>::<credentials>, but it has no \"::\"")]
    NoSeparator,
    /// A CA hash that is not 64 hex digits.
    #[error("the CA hash of the token must be 64 hexadecimal digits (SHA-256), it has {0} characters")]
    BadHash(usize),
    /// Credentials that are neither `<id>.<secret>` nor `<user>:<password>`.
    #[error("the credentials of a K10 token must be <user>:<password> or a bootstrap token <id>.<secret>")]
    BadCredentials,
}

/// Prefix of k3s tokens.
const PREFIX: &str = "K10";

impl Token {
    /// Parses a token (surrounding white space is ignored, as in a token file).
    pub fn parse(s: &str) -> Result<Token, TokenError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TokenError::Empty);
        }
        let Some(rest) = s.strip_prefix(PREFIX) else {
            let credential = bootstrap(s)
                .unwrap_or_else(|| Credential::Password { user: "node".to_owned(), password: Secret::new(s) });
            return Ok(Token { ca_hash: None, credential });
        };
        let (hash, creds) = rest.split_once("::").ok_or(TokenError::NoSeparator)?;
        let ca_hash = match hash.len() {
            0 => None,
            64 if hash.bytes().all(|b| b.is_ascii_hexdigit()) => Some(hash.to_ascii_lowercase()),
            n => return Err(TokenError::BadHash(n)),
        };
        let credential = match bootstrap(creds) {
            Some(c) => c,
            None => {
                let (user, password) = creds.split_once(':').ok_or(TokenError::BadCredentials)?;
                if password.is_empty() {
                    return Err(TokenError::BadCredentials);
                }
                let user = if user.is_empty() { "node" } else { user };
                Credential::Password { user: user.to_owned(), password: Secret::new(password) }
            }
        };
        Ok(Token { ca_hash, credential })
    }

    /// True for a bootstrap token (either form).
    pub fn is_bootstrap(&self) -> bool {
        matches!(self.credential, Credential::Bootstrap { .. })
    }
}

/// `<id>.<secret>` with kubeadm's alphabet and lengths (`[a-z0-9]{6}\.[a-z0-9]{16}`).
fn bootstrap(s: &str) -> Option<Credential> {
    let (id, secret) = s.split_once('.')?;
    let ok = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (ok(id, 6) && ok(secret, 16)).then(|| Credential::Bootstrap { id: id.to_owned(), secret: Secret::new(secret) })
}

/// The hash a token carries for a CA bundle, as k3s computes it (`hashCA`): SHA-256 of the PEM
/// bytes as served when the bundle holds one certificate; with several certificates, SHA-256 of
/// the DER of the root (the self-issued certificate of the bundle; the last one if none is).
pub fn ca_hash(pem: &[u8]) -> String {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).collect();
    if certs.len() <= 1 {
        return hex::encode(Sha256::digest(pem));
    }
    let self_issued = |c: &CertificateDer<'_>| {
        x509_parser::parse_x509_certificate(c.as_ref())
            .map(|(_, x)| x.issuer().as_raw() == x.subject().as_raw())
            .unwrap_or(false)
    };
    let root = certs.iter().skip(1).find(|c| self_issued(c)).or(certs.last()).map(|c| c.as_ref().to_vec());
    hex::encode(Sha256::digest(root.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a7988";

    fn password(user: &str, pw: &str) -> Credential {
        Credential::Password { user: user.into(), password: Secret::new(pw) }
    }

    #[test]
    fn k3s_tokens() {
        let t = Token::parse(&format!("K10{HASH}::node:s3cret")).unwrap();
        assert_eq!(t, Token { ca_hash: Some(HASH.into()), credential: password("node", "s3cret") });
        // The password may contain ':' (split at the first one, as k3s does).
        let t = Token::parse(&format!("K10{HASH}::server:a:b")).unwrap();
        assert_eq!(t.credential, password("server", "a:b"));
        // Upper-case hex is accepted and normalised.
        let t = Token::parse(&format!("K10{}::node:x", HASH.to_uppercase())).unwrap();
        assert_eq!(t.ca_hash.as_deref(), Some(HASH));
        // An empty hash: no CA verification.
        let t = Token::parse("K10::node:x").unwrap();
        assert_eq!(t.ca_hash, None);
        // Trailing newline of a token file.
        assert!(Token::parse(&format!("K10{HASH}::node:x\n")).is_ok());
    }

    #[test]
    fn bootstrap_tokens() {
        let t = Token::parse("abcdef.0123456789abcdef").unwrap();
        let want = Credential::Bootstrap { id: "abcdef".into(), secret: Secret::new("0123456789abcdef") };
        assert_eq!(t, Token { ca_hash: None, credential: want.clone() });
        assert!(t.is_bootstrap());
        let t = Token::parse(&format!("K10{HASH}::abcdef.0123456789abcdef")).unwrap();
        assert_eq!(t, Token { ca_hash: Some(HASH.into()), credential: want });
        assert_eq!(t.credential.authorization(), "Bearer abcdef.0123456789abcdef");
    }

    #[test]
    fn bare_passwords_are_agent_passwords() {
        let t = Token::parse("just-a-password").unwrap();
        assert_eq!(t, Token { ca_hash: None, credential: password("node", "just-a-password") });
        // Looks like a bootstrap token but the secret is too short: a password.
        assert!(!Token::parse("abcdef.0123").unwrap().is_bootstrap());
        // Upper case is not in the bootstrap alphabet.
        assert!(!Token::parse("ABCDEF.0123456789abcdef").unwrap().is_bootstrap());
        assert_eq!(password("node", "pw").authorization(), "Basic bm9kZTpwdw==");
    }

    #[test]
    fn malformed_tokens_are_refused_without_echoing_them() {
        assert_eq!(Token::parse("  "), Err(TokenError::Empty));
        assert_eq!(Token::parse("K10abc"), Err(TokenError::NoSeparator));
        assert_eq!(Token::parse("K10abc::node:x"), Err(TokenError::BadHash(3)));
        let not_hex = "z".repeat(64);
        assert_eq!(Token::parse(&format!("K10{not_hex}::node:x")), Err(TokenError::BadHash(64)));
        assert_eq!(Token::parse(&format!("K10{HASH}::nocolon")), Err(TokenError::BadCredentials));
        assert_eq!(Token::parse(&format!("K10{HASH}::node:")), Err(TokenError::BadCredentials));
        let e = Token::parse(&format!("K10{HASH}::topsecretvalue")).unwrap_err();
        assert!(!e.to_string().contains("topsecretvalue"));
        assert!(!format!("{:?}", Token::parse("K10::node:hunter2").unwrap()).contains("hunter2"));
    }

    #[test]
    fn ca_hash_of_one_certificate_is_over_the_pem_bytes() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        let pem = ca.cert.pem();
        assert_eq!(ca_hash(pem.as_bytes()), hex::encode(Sha256::digest(pem.as_bytes())));
        // A different byte (even a trailing newline) is a different hash, as with k3s.
        assert_ne!(ca_hash(format!("{pem}\n").as_bytes()), ca_hash(pem.as_bytes()));
    }

    #[test]
    fn ca_hash_of_a_bundle_is_over_the_roots_der() {
        let root_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "root");
        let root = params.self_signed(&root_key).unwrap();
        let issuer = rcgen::Issuer::new(params, &root_key);
        let mut ip = rcgen::CertificateParams::new(vec![]).unwrap();
        ip.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ip.distinguished_name.push(rcgen::DnType::CommonName, "intermediate");
        let inter_key = rcgen::KeyPair::generate().unwrap();
        let inter = ip.signed_by(&inter_key, &issuer).unwrap();
        let bundle = format!("{}{}", inter.pem(), root.pem());
        assert_eq!(ca_hash(bundle.as_bytes()), hex::encode(Sha256::digest(root.der())));
    }
}

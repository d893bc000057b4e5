//! Unit names: `vks.<namespace>.<pod>.<container>.service`.
//!
//! Every character Kubernetes allows in these names (lowercase letters, digits, `-`, and `.` in
//! pod names) is valid in a unit name, and the three parts cannot be confused: namespaces and
//! container names have no dots, so the first and last dotted parts are the namespace and the
//! container. systemd limits unit names to 255 bytes, Kubernetes names can make up to 393, so a
//! name that would be too long is shortened: the pod part is cut and followed by `_` and 16 hex
//! digits of a SHA-256 of `namespace/pod/container`. `_` never occurs in a Kubernetes name, so a
//! shortened name can never equal a full one, and two shortened names only collide if 64 bits of
//! SHA-256 do. Names are not parsed back: the `[X-Kubernetes]` section of the unit is the source
//! of truth (see [`super::meta`]).

use sha2::{Digest, Sha256};

/// Every vks unit name starts with this.
pub const PREFIX: &str = "vks.";
const SUFFIX: &str = ".service";
/// systemd's limit on unit name length (UNIT_NAME_MAX - 1).
pub const MAX_LEN: usize = 255;

/// The unit name for a container.
pub fn unit_name(namespace: &str, pod: &str, container: &str) -> String {
    let full = format!("{PREFIX}{namespace}.{pod}.{container}{SUFFIX}");
    if full.len() <= MAX_LEN {
        return full;
    }
    let digest = Sha256::digest(format!("{namespace}/{pod}/{container}").as_bytes());
    let tag = format!("_{}", &hex::encode(digest)[..16]);
    let fixed = PREFIX.len() + namespace.len() + 1 + tag.len() + 1 + container.len() + SUFFIX.len();
    let keep = MAX_LEN.saturating_sub(fixed).min(pod.len());
    format!("{PREFIX}{namespace}.{}{tag}.{container}{SUFFIX}", &pod[..keep])
}

/// Whether `name` is a valid systemd unit name (the characters systemd accepts, length).
pub fn is_valid_unit_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.' | b'\\' | b'@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_are_readable() {
        assert_eq!(unit_name("default", "web-0", "app"), "vks.default.web-0.app.service");
        assert_eq!(unit_name("ns", "a.b.c", "c1"), "vks.ns.a.b.c.c1.service");
    }

    #[test]
    fn longest_kubernetes_names_are_shortened_validly() {
        let ns = "n".repeat(63);
        let pod = format!("{}.{}", "p".repeat(126), "q".repeat(126));
        let c = "c".repeat(63);
        let name = unit_name(&ns, &pod, &c);
        assert_eq!(name.len(), MAX_LEN);
        assert!(is_valid_unit_name(&name), "{name}");
        assert!(name.starts_with(&format!("vks.{ns}.ppp")) && name.ends_with(&format!(".{c}.service")));
        assert!(name.contains('_'));
        // Same prefix, different tail: still different names.
        let other = unit_name(&ns, &format!("{}.{}", "p".repeat(126), "r".repeat(126)), &c);
        assert_ne!(name, other);
        assert_eq!(name, unit_name(&ns, &pod, &c), "deterministic");
    }

    #[test]
    fn names_at_the_limit_are_kept_whole() {
        let pod = "p".repeat(MAX_LEN - "vks.ns..c.service".len());
        let name = unit_name("ns", &pod, "c");
        assert_eq!(name.len(), MAX_LEN);
        assert!(!name.contains('_'));
        let longer = unit_name("ns", &format!("{pod}p"), "c");
        assert_eq!(longer.len(), MAX_LEN);
        assert!(longer.contains('_'));
    }
}

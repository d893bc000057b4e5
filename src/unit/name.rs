//! Unit names: `vks.<namespace>.<pod>.<container>.service`, and the validation of every name
//! vks writes into a unit.
//!
//! Names are checked with [`validate`] before anything is written (the API server checks them
//! too, but static pods, mirror pods and other local input do not pass through it): namespaces
//! and container names are DNS-1123 labels, pod names DNS-1123 subdomains. Every character
//! these allow (lowercase letters, digits, `-`, and `.` in pod names) is valid in a unit name,
//! in `Description=` and in `SyslogIdentifier=`, and the three parts cannot be confused:
//! namespaces and container names have no dots, so the first and last dotted parts are the
//! namespace and the container. systemd limits unit names to 255 bytes, Kubernetes names can
//! make up to 393, so a name that would be too long is shortened: the pod part is cut and
//! followed by `_` and 16 hex digits of a SHA-256 of `namespace/pod/container`. `_` never occurs
//! in a Kubernetes name, so a shortened name can never equal a full one, and two shortened names
//! only collide if 64 bits of SHA-256 do. Names are not parsed back: the `[X-Kubernetes]` section
//! of the unit is the source of truth (see [`super::meta`]).

use sha2::{Digest, Sha256};

use super::SpecError;

/// Every vks unit name starts with this.
pub const PREFIX: &str = "vks.";
const SUFFIX: &str = ".service";
/// systemd's limit on unit name length (UNIT_NAME_MAX - 1).
pub const MAX_LEN: usize = 255;
/// Longest DNS-1123 label.
const LABEL_MAX: usize = 63;
/// Longest DNS-1123 subdomain.
const SUBDOMAIN_MAX: usize = 253;

/// The unit name for a container. Never panics; the name is a valid unit name of at most
/// [`MAX_LEN`] bytes for every name that passes [`validate`].
pub fn unit_name(namespace: &str, pod: &str, container: &str) -> String {
    let full = format!("{PREFIX}{namespace}.{pod}.{container}{SUFFIX}");
    if full.len() <= MAX_LEN {
        return full;
    }
    let digest = Sha256::digest(format!("{namespace}/{pod}/{container}").as_bytes());
    let tag = format!("_{}", &hex::encode(digest)[..16]);
    let fixed = PREFIX.len() + namespace.len() + 1 + tag.len() + 1 + container.len() + SUFFIX.len();
    let keep = pod.floor_char_boundary(MAX_LEN.saturating_sub(fixed));
    format!("{PREFIX}{namespace}.{}{tag}.{container}{SUFFIX}", &pod[..keep])
}

/// Whether `name` is a valid systemd unit name (the characters systemd accepts, length).
pub fn is_valid_unit_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.' | b'\\' | b'@'))
}

/// Lowercase letters, digits and `-`, starting and ending with a letter or digit (the
/// `dns1123LabelFmt` of k8s.io/apimachinery, without a length limit).
fn is_label_shaped(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&first), Some(&last)) => alnum(first) && alnum(last) && b.iter().all(|&c| alnum(c) || c == b'-'),
        _ => false,
    }
}

/// Whether `s` is a DNS-1123 label (`IsDNS1123Label`): label-shaped, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= LABEL_MAX && is_label_shaped(s)
}

/// Whether `s` is a DNS-1123 subdomain (`IsDNS1123Subdomain`): at most 253 characters of
/// dot-separated label-shaped parts (Kubernetes does not limit the parts to 63).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= SUBDOMAIN_MAX && s.split('.').all(is_label_shaped)
}

/// Checks every name vks writes into a container's unit (its name, `Description=`,
/// `SyslogIdentifier=`, `[X-Kubernetes]`): a name that is not a valid Kubernetes name is a
/// pod error (`CreateContainerConfigError`) naming the field and the value.
pub fn validate(namespace: &str, pod: &str, container: &str) -> Result<(), SpecError> {
    let bad = |field: &str, value: &str, rule: &str| {
        Err(SpecError::config(format!(
            "pod {namespace:?}/{pod:?} container {container:?}: {field} {value:?} is not a valid name ({rule})"
        )))
    };
    const LABEL: &str =
        "a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit";
    if !is_dns1123_label(namespace) {
        return bad("metadata.namespace", namespace, LABEL);
    }
    if !is_dns1123_subdomain(pod) {
        return bad(
            "metadata.name",
            pod,
            "a DNS-1123 subdomain: at most 253 lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit",
        );
    }
    if !is_dns1123_label(container) {
        return bad("the container name", container, LABEL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_are_readable() {
        assert_eq!(unit_name("default", "web-0", "app"), "vks.default.web-0.app.service");
        assert_eq!(unit_name("ns", "a.b.c", "c1"), "vks.ns.a.b.c.c1.service");
    }

    /// The longest pod name Kubernetes allows (253 characters).
    fn longest_pod(last: char) -> String {
        format!("{}.{}", "p".repeat(126), last.to_string().repeat(126))
    }

    #[test]
    fn longest_kubernetes_names_are_shortened_validly() {
        let ns = "n".repeat(63);
        let pod = longest_pod('q');
        assert_eq!(pod.len(), 253);
        let c = "c".repeat(63);
        validate(&ns, &pod, &c).unwrap();
        let name = unit_name(&ns, &pod, &c);
        assert_eq!(name.len(), MAX_LEN);
        assert!(is_valid_unit_name(&name), "{name}");
        assert!(name.starts_with(&format!("vks.{ns}.ppp")) && name.ends_with(&format!(".{c}.service")));
        assert!(name.contains('_'));
        // Same prefix, different tail: still different names.
        let other = unit_name(&ns, &longest_pod('r'), &c);
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

    /// Defect 5 of issue 9: names that are not DNS names (non-ASCII, `\`, `[`) made
    /// `unit_name` panic when it cut them.
    #[test]
    fn issue9_defect5_unit_name_never_panics() {
        let long = "ü".repeat(200);
        for (ns, pod, c) in [
            ("default", long.as_str(), "c"),
            ("ü", "ß\\[x]\n", "☃"),
            (long.as_str(), long.as_str(), long.as_str()),
            ("", "", ""),
        ] {
            let _ = unit_name(ns, pod, c);
        }
    }

    #[test]
    fn issue9_defect5_names_are_validated() {
        validate("default", "web-0.a", "app").unwrap();
        validate("default", &"p".repeat(253), "app").unwrap();
        validate(&"n".repeat(63), &longest_pod('q'), &"c".repeat(63)).unwrap();
        for (ns, pod, c, field) in [
            ("default", "a\n[Service]", "c", "metadata.name"),
            ("de\nfault", "p", "c", "metadata.namespace"),
            ("default", "p", "c\nUser=root", "the container name"),
            ("default", "Web", "c", "metadata.name"),
            ("default", "a..b", "c", "metadata.name"),
            ("default", ".a", "c", "metadata.name"),
            ("default", "a-", "c", "metadata.name"),
            ("default", "ü", "c", "metadata.name"),
            ("default", "a\\b", "c", "metadata.name"),
            ("default", "", "c", "metadata.name"),
            ("default", &format!("{}q", longest_pod('q')), "c", "metadata.name"),
            ("a.b", "p", "c", "metadata.namespace"),
            (&"n".repeat(64), "p", "c", "metadata.namespace"),
            ("default", "p", "c.d", "the container name"),
            ("default", "p", "", "the container name"),
        ] {
            let e = validate(ns, pod, c).unwrap_err();
            assert_eq!(e.reason, crate::reason::WaitingReason::CreateContainerConfigError);
            assert!(e.message.contains(field), "{e}");
            assert!(!e.message.contains('\n'), "the message escapes the value: {e}");
        }
    }
}

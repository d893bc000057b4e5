//! Kubernetes name and label validators (apimachinery's rules), with messages that say what is
//! wrong.

/// DNS-1123 subdomain: what Kubernetes requires of node names.
pub fn validate_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err("must be 1 to 253 characters".into());
    }
    for label in s.split('.') {
        validate_dns_label(label).map_err(|e| format!("part {label:?}: {e}"))?;
    }
    Ok(())
}

/// DNS-1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric, at most 63.
pub fn validate_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    let ok = s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok || s.starts_with('-') || s.ends_with('-') {
        return Err("must be lowercase letters, digits and '-', starting and ending with a letter or digit".into());
    }
    Ok(())
}

/// A label key or taint key: `[prefix/]name`.
pub fn validate_qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        validate_dns_subdomain(p).map_err(|e| format!("prefix {p:?}: {e}"))?;
    }
    if name.is_empty() || name.len() > 63 {
        return Err("name part must be 1 to 63 characters".into());
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if !name.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
        || !name.starts_with(alnum)
        || !name.ends_with(alnum)
    {
        return Err("name part must be alphanumerics, '-', '_' or '.', starting and ending alphanumeric".into());
    }
    Ok(())
}

/// A label value: empty, or like the name part of a qualified name.
pub fn validate_label_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    if s.len() > 63 {
        return Err("must be at most 63 characters".into());
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if !s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.')) || !s.starts_with(alnum) || !s.ends_with(alnum) {
        return Err("must be alphanumerics, '-', '_' or '.', starting and ending alphanumeric".into());
    }
    Ok(())
}

/// The NodeRestriction admission plugin rejects a node setting labels under `kubernetes.io` and
/// `k8s.io` except the kubelet's own set (k8s.io/kubelet `IsKubeletLabel`); refusing them here
/// turns a rejected registration into a config error.
pub(super) fn node_restriction_allows(key: &str) -> Result<(), String> {
    let Some((prefix, _)) = key.split_once('/') else { return Ok(()) };
    let under = |domain: &str| prefix == domain || prefix.ends_with(&format!(".{domain}"));
    if under("node-restriction.kubernetes.io") {
        return Err("is reserved for the cluster administrator (node-restriction.kubernetes.io)".into());
    }
    if !under("kubernetes.io") && !under("k8s.io") {
        return Ok(());
    }
    const ALLOWED_KEYS: &[&str] = &[
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ];
    let allowed_prefix = under("kubelet.kubernetes.io") || under("node.kubernetes.io");
    if ALLOWED_KEYS.contains(&key) || allowed_prefix {
        Ok(())
    } else {
        Err("is under kubernetes.io/k8s.io, which a node may not set (NodeRestriction); use your own prefix".into())
    }
}

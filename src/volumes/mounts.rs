//! A container's `volumeMounts` as bind mounts of its unit (`kubelet_pods.go` `makeMounts`):
//! the volume's directory (or the allowed host path), or a path inside it for `subPath` and
//! `subPathExpr` (expanded with the container's environment; created as a directory in an
//! emptyDir or hostPath volume when missing; never leading outside the volume, also not through
//! a symbolic link); read-only when asked, and always for configMap, secret, downwardAPI and
//! projected volumes. Blocking.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::{Volumes, host_path};
use crate::reason::WaitingReason;
use crate::unit::data::BindMount;
use crate::unit::env::{ResolvedEnv, expand};
use crate::unit::{SpecError, escape};

fn config(c: &Container, m: &str, why: String) -> SpecError {
    SpecError::config(format!("container {}: volumeMount {m:?}: {why}", c.name))
}

/// The subPath of a mount, expanded (`ExpandContainerVolumeMounts`) and checked.
fn sub_path(
    c: &Container,
    m: &k8s_openapi::api::core::v1::VolumeMount,
    env: &ResolvedEnv,
) -> Result<String, SpecError> {
    let sub =
        match (m.sub_path.as_deref().filter(|s| !s.is_empty()), m.sub_path_expr.as_deref().filter(|s| !s.is_empty())) {
            (Some(s), _) => s.to_owned(),
            (None, Some(expr)) => {
                let missing = std::cell::RefCell::new(std::collections::BTreeSet::new());
                let v = expand(expr, |k| match env.lookup(k) {
                    Some((v, _)) if !v.is_empty() => Some(v),
                    _ => {
                        missing.borrow_mut().insert(k.to_owned());
                        Some(String::new())
                    }
                });
                let missing = missing.into_inner();
                if !missing.is_empty() {
                    let names: Vec<String> = missing.into_iter().collect();
                    return Err(config(
                        c,
                        &m.mount_path,
                        format!("subPathExpr: missing value for {}", names.join(", ")),
                    ));
                }
                v
            }
            (None, None) => return Ok(String::new()),
        };
    if sub.starts_with('/') {
        return Err(config(c, &m.mount_path, format!("subPath {sub:?} must not be an absolute path")));
    }
    if sub.split('/').any(|p| p == "..") {
        return Err(config(c, &m.mount_path, format!("subPath {sub:?} must not contain '..'")));
    }
    if sub.contains('\0') {
        return Err(config(c, &m.mount_path, "subPath contains a NUL character".into()));
    }
    Ok(sub)
}

/// The bind mounts of container `c` of `pod` (its volumes are set up already).
pub fn container_mounts(
    vols: &Volumes,
    pod: &Pod,
    c: &Container,
    env: &ResolvedEnv,
) -> Result<Vec<BindMount>, SpecError> {
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let path = m.mount_path.as_str();
        let v = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .find(|v| v.name == m.name)
            .ok_or_else(|| config(c, path, format!("the pod has no volume {:?}", m.name)))?;
        let target = escape::normalize_path(path).map_err(|e| config(c, path, format!("mountPath {e}")))?;
        let (base, atomic) = if let Some(h) = &v.host_path {
            let real = host_path::prepare(&h.path, h.type_.as_deref(), &vols.host_path_allow).map_err(|e| match e {
                host_path::HostPathError::NotAllowed(m) | host_path::HostPathError::Check(m) => config(c, path, m),
            })?;
            (real, false)
        } else {
            let dir = vols
                .volume_dir(uid, v)
                .ok_or_else(|| config(c, path, format!("volume {:?} cannot be mounted by vks", v.name)))?;
            (dir, v.empty_dir.is_none())
        };
        let sub = sub_path(c, m, env)?;
        let source = if sub.is_empty() {
            base.clone()
        } else {
            let wanted = base.join(&sub);
            if !atomic && std::fs::symlink_metadata(&wanted).is_err() {
                let mode = std::fs::metadata(&base).map_or(0o755, |md| md.permissions().mode() & 0o7777);
                std::fs::create_dir_all(&wanted)
                    .and_then(|()| std::fs::set_permissions(&wanted, std::fs::Permissions::from_mode(mode)))
                    .map_err(|e| config(c, path, format!("creating subPath {sub:?}: {e}")))?;
            }
            let real = std::fs::canonicalize(&wanted).map_err(|e| SpecError {
                reason: WaitingReason::CreateContainerConfigError,
                message: format!(
                    "container {}: volumeMount {path:?}: subPath {sub:?} of volume {:?}: {e}",
                    c.name, v.name
                ),
            })?;
            let real_base = std::fs::canonicalize(&base).unwrap_or_else(|_| base.clone());
            if !real.starts_with(&real_base) {
                return Err(config(c, path, format!("subPath {sub:?} leads outside volume {:?}", v.name)));
            }
            real
        };
        let source = path_string(source).map_err(|p| config(c, path, format!("{p:?} is not valid UTF-8")))?;
        let read_only = m.read_only == Some(true) || atomic;
        out.push(BindMount { source, target, read_only });
    }
    Ok(out)
}

fn path_string(p: PathBuf) -> Result<String, PathBuf> {
    p.into_os_string().into_string().map_err(PathBuf::from)
}

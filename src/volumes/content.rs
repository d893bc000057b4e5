//! The files of configMap, secret, downwardAPI and projected volumes, as the kubelet's volume
//! plugins make them (`MakePayload`, `CollectData` of `pkg/volume/{configmap,secret,downwardapi,
//! projected}`): keys or items to paths, default and per-item modes, optional sources, and the
//! kubelet's error messages. Pure: objects and tokens come resolved in [`PodData`].

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, KeyToPath, Pod, Volume};

use super::atomic::{FileSpec, Payload};
use crate::unit::NodeContext;
use crate::unit::data::{Kind, ObjData, ObjState, PodData};

/// The API server's default mode of volume files (0644).
pub const DEFAULT_MODE: i32 = 0o644;

/// Why a volume's files cannot be made now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentError {
    /// An object is not read yet: wait, quietly.
    Pending(String),
    /// The kubelet's `MountVolume.SetUp failed` reason.
    Failed(String),
}

/// What the files are made from.
pub struct Ctx<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// The node (downward API).
    pub node: &'a NodeContext,
    /// Objects and tokens.
    pub data: &'a PodData,
    /// `securityContext.fsGroup`: files become group-readable (the kubelet's
    /// `SetVolumeOwnership` for read-only volumes).
    pub fs_group: Option<i64>,
}

impl Ctx<'_> {
    fn ns(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or("default")
    }

    fn mode(&self, m: i32) -> u32 {
        let m = (m as u32) & 0o777;
        if self.fs_group.is_some() { m | 0o440 } else { m }
    }

    /// An object's data; `None` when it is absent and optional.
    fn object(&self, kind: Kind, name: &str, optional: bool) -> Result<Option<std::sync::Arc<ObjData>>, ContentError> {
        match self.data.object(kind, self.ns(), name) {
            ObjState::Present(d) => Ok(Some(d)),
            ObjState::Absent if optional => Ok(None),
            ObjState::Absent => Err(ContentError::Failed(format!("{} {name:?} not found", kind.lower()))),
            ObjState::Pending => {
                Err(ContentError::Pending(format!("waiting for {} {}/{name} to be read", kind.api(), self.ns())))
            }
            ObjState::Failed(e) => {
                Err(ContentError::Failed(format!("reading {} {}/{name}: {e}", kind.lower(), self.ns())))
            }
        }
    }
}

/// Keys (all of them, or the listed items) of an object's data to files (`MakePayload`).
fn key_files(
    out: &mut Payload,
    ctx: &Ctx,
    kind: Kind,
    obj: &ObjData,
    items: Option<&Vec<KeyToPath>>,
    default_mode: i32,
    optional: bool,
) -> Result<(), ContentError> {
    let lookup = |k: &str| obj.data.get(k).or_else(|| obj.binary.get(k));
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in obj.data.iter().chain(obj.binary.iter()) {
                out.insert(k.clone(), FileSpec { data: v.clone(), mode: ctx.mode(default_mode) });
            }
        }
        Some(items) => {
            for it in items {
                match lookup(&it.key) {
                    Some(v) => {
                        let mode = ctx.mode(it.mode.unwrap_or(default_mode));
                        out.insert(it.path.clone(), FileSpec { data: v.clone(), mode });
                    }
                    None if optional => {}
                    None => {
                        let what = match kind {
                            Kind::ConfigMap => "configmap references non-existent config key",
                            Kind::Secret => "secret references non-existent secret key",
                        };
                        return Err(ContentError::Failed(format!("{what}: {}", it.key)));
                    }
                }
            }
        }
    }
    Ok(())
}

fn downward_files(
    out: &mut Payload,
    ctx: &Ctx,
    items: &[DownwardAPIVolumeFile],
    default_mode: i32,
) -> Result<(), ContentError> {
    for it in items {
        let value = if let Some(f) = &it.field_ref {
            crate::unit::env::field_ref(ctx.pod, ctx.node, &f.field_path, true).map_err(ContentError::Failed)?
        } else if let Some(r) = &it.resource_field_ref {
            let name = r.container_name.as_deref().unwrap_or("");
            let spec = ctx.pod.spec.clone().unwrap_or_default();
            let c = crate::unit::pod_containers(&spec)
                .into_iter()
                .map(|(c, _)| c.clone())
                .find(|c| c.name == name)
                .ok_or_else(|| ContentError::Failed(format!("downwardAPI item {}: no container {name:?}", it.path)))?;
            crate::unit::resource::resource_value(&c, r, &ctx.data.allocatable).map_err(ContentError::Failed)?
        } else {
            continue;
        };
        out.insert(
            it.path.clone(),
            FileSpec { data: value.into_bytes(), mode: ctx.mode(it.mode.unwrap_or(default_mode)) },
        );
    }
    Ok(())
}

/// The files of volume `v`; `None` for volumes that are not made of files vks writes
/// (emptyDir, hostPath).
pub fn payload(ctx: &Ctx, v: &Volume) -> Result<Option<Payload>, ContentError> {
    let mut out = Payload::new();
    if let Some(cm) = &v.config_map {
        let optional = cm.optional == Some(true);
        if let Some(obj) = ctx.object(Kind::ConfigMap, &cm.name, optional)? {
            let mode = cm.default_mode.unwrap_or(DEFAULT_MODE);
            key_files(&mut out, ctx, Kind::ConfigMap, &obj, cm.items.as_ref(), mode, optional)?;
        }
    } else if let Some(s) = &v.secret {
        let optional = s.optional == Some(true);
        let name = s.secret_name.as_deref().unwrap_or("");
        if let Some(obj) = ctx.object(Kind::Secret, name, optional)? {
            let mode = s.default_mode.unwrap_or(DEFAULT_MODE);
            key_files(&mut out, ctx, Kind::Secret, &obj, s.items.as_ref(), mode, optional)?;
        }
    } else if let Some(d) = &v.downward_api {
        downward_files(&mut out, ctx, d.items.as_deref().unwrap_or_default(), d.default_mode.unwrap_or(DEFAULT_MODE))?;
    } else if let Some(p) = &v.projected {
        let mode = p.default_mode.unwrap_or(DEFAULT_MODE);
        for src in p.sources.iter().flatten() {
            if let Some(cm) = &src.config_map {
                let optional = cm.optional == Some(true);
                if let Some(obj) = ctx.object(Kind::ConfigMap, &cm.name, optional)? {
                    key_files(&mut out, ctx, Kind::ConfigMap, &obj, cm.items.as_ref(), mode, optional)?;
                }
            } else if let Some(s) = &src.secret {
                let optional = s.optional == Some(true);
                if let Some(obj) = ctx.object(Kind::Secret, &s.name, optional)? {
                    key_files(&mut out, ctx, Kind::Secret, &obj, s.items.as_ref(), mode, optional)?;
                }
            } else if let Some(d) = &src.downward_api {
                downward_files(&mut out, ctx, d.items.as_deref().unwrap_or_default(), mode)?;
            } else if let Some(t) = &src.service_account_token {
                let spec = crate::pods::data::token_spec(ctx.pod, t);
                let token = ctx.data.tokens.get(&spec).ok_or_else(|| {
                    ContentError::Pending(format!("waiting for a token of service account {}", spec.service_account))
                })?;
                // The kubelet's rule: with an fsGroup the token is 0600 (then group-readable).
                let m = if ctx.fs_group.is_some() { 0o600 } else { mode };
                out.insert(t.path.clone(), FileSpec { data: token.0.clone().into_bytes(), mode: ctx.mode(m) });
            } else if src.cluster_trust_bundle.is_some() || src.pod_certificate.is_some() {
                return Err(ContentError::Failed(
                    "clusterTrustBundle and podCertificate projections are not supported by vks".into(),
                ));
            }
        }
    } else {
        return Ok(None);
    }
    for p in out.keys() {
        super::atomic::validate_path(p).map_err(|e| ContentError::Failed(format!("item path {e}")))?;
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests;

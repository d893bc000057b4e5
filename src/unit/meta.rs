//! The `[X-Kubernetes]` section: which pod and container a unit belongs to. systemd ignores
//! `X-` sections and keeps them in the file, so the unit itself carries its identity and vks
//! needs no state of its own. A unit file without a complete section is not vks's.

use super::escape::{meta_unescape, meta_value};

pub use crate::policy::ContainerKind;

/// The identity of a container unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitMeta {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod UID.
    pub pod_uid: String,
    /// Container name.
    pub container: String,
    /// Init, sidecar or app.
    pub kind: ContainerKind,
    /// The container's image reference as written in the pod.
    pub image: String,
    /// What the image resolved to when the unit was written.
    pub image_id: String,
    /// The restart policy that applies to this container.
    pub restart_policy: String,
    /// Hash of everything the unit was rendered from; a different hash means a new unit.
    pub spec_hash: String,
}

const SECTION: &str = "[X-Kubernetes]";

impl UnitMeta {
    /// The section as written into the unit file.
    pub fn render(&self) -> String {
        format!(
            "{SECTION}\nNamespace={}\nPodName={}\nPodUID={}\nContainerName={}\nContainerType={}\nImage={}\nImageID={}\nRestartPolicy={}\nSpecHash={}\n",
            meta_value(&self.namespace),
            meta_value(&self.pod),
            meta_value(&self.pod_uid),
            meta_value(&self.container),
            self.kind,
            meta_value(&self.image),
            meta_value(&self.image_id),
            meta_value(&self.restart_policy),
            meta_value(&self.spec_hash),
        )
    }

    /// Reads the section back from a unit file; `None` unless every key is present and valid.
    pub fn parse(unit_file: &str) -> Option<UnitMeta> {
        let mut in_section = false;
        let mut get = std::collections::HashMap::new();
        for line in unit_file.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_section = line == SECTION;
                continue;
            }
            if in_section && let Some((k, v)) = line.split_once('=') {
                get.insert(k.trim().to_owned(), meta_unescape(v.trim())?);
            }
        }
        let mut take = |k: &str| get.remove(k).filter(|v| !v.is_empty());
        Some(UnitMeta {
            namespace: take("Namespace")?,
            pod: take("PodName")?,
            pod_uid: take("PodUID")?,
            container: take("ContainerName")?,
            kind: ContainerKind::parse(&take("ContainerType")?)?,
            image: take("Image")?,
            image_id: take("ImageID")?,
            restart_policy: take("RestartPolicy")?,
            spec_hash: take("SpecHash")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> UnitMeta {
        UnitMeta {
            namespace: "default".into(),
            pod: "web-0".into(),
            pod_uid: "1f0e-77".into(),
            container: "app".into(),
            kind: ContainerKind::Sidecar,
            image: "weird image\n[Service]\nUser=root".into(),
            image_id: "file:///x".into(),
            restart_policy: "Always".into(),
            spec_hash: "abc".into(),
        }
    }

    #[test]
    fn round_trips_inside_a_unit_file() {
        let m = meta();
        let file = format!("[Unit]\nDescription=x\n\n[Service]\nExecStart=/bin/true\n\n{}", m.render());
        assert_eq!(file.matches("[Service]").count(), 1, "an image must not open a section: {file}");
        assert_eq!(UnitMeta::parse(&file), Some(m));
    }

    #[test]
    fn incomplete_sections_are_not_ours() {
        assert_eq!(UnitMeta::parse("[Service]\nExecStart=/bin/true\n"), None);
        let partial = meta().render().replace("PodUID=1f0e-77\n", "");
        assert_eq!(UnitMeta::parse(&partial), None);
        let empty = meta().render().replace("PodUID=1f0e-77", "PodUID=");
        assert_eq!(UnitMeta::parse(&empty), None);
        let bad_kind = meta().render().replace("ContainerType=sidecar", "ContainerType=weird");
        assert_eq!(UnitMeta::parse(&bad_kind), None);
        // Keys of another section do not count.
        let other = meta().render().replace("[X-Kubernetes]", "[X-Other]");
        assert_eq!(UnitMeta::parse(&other), None);
    }
}

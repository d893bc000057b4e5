//! Images: what a container's `image` names on the host, behind the narrow [`Images`] trait.
//!
//! The real provider is [`debian::DebianImages`]: Debian packages installed with apt-get
//! ([`apt`]), .deb files downloaded over https ([`download`]) and absolute paths of executables
//! already on the host. A package's own systemd unit gives the default command and settings
//! ([`unitfile`]). [`PathImages`] knows only paths (for tests and benchmarks).

pub mod apt;
pub mod debian;
pub mod download;
pub mod reference;
pub mod unitfile;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use async_trait::async_trait;

use crate::policy::PullPolicy;
use crate::reason::WaitingReason;

pub use crate::unit::ImageInfo;

/// Why an image is not available, with the kubelet's waiting reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ImageError {
    /// `ErrImagePull`, `ErrImageNeverPull`, `InvalidImageName`, ...
    pub reason: WaitingReason,
    /// What went wrong, naming the image.
    pub message: String,
}

/// Where an image provider reports what it does (the pod's events: Pulling, Pulled, ...).
pub trait PullEvents: Send + Sync {
    /// A Normal event about the pod.
    fn normal(&self, reason: &str, note: String);
}

impl PullEvents for crate::events::PodEvents {
    fn normal(&self, reason: &str, note: String) {
        crate::events::PodEvents::normal(self, reason, note);
    }
}

/// Makes images available.
#[async_trait]
pub trait Images: Send + Sync + 'static {
    /// Ensures `image` is available (may take long: installs). `pull_policy` is the container's
    /// `imagePullPolicy` (`Always`, `IfNotPresent` or `Never`).
    async fn ensure(
        &self,
        image: &str,
        pull_policy: PullPolicy,
        events: &dyn PullEvents,
    ) -> Result<ImageInfo, ImageError>;
}

/// Whether `path` is a regular file with an execute bit.
pub fn is_executable(path: &str) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Images that are absolute paths of executables on the host.
#[derive(Debug, Default)]
pub struct PathImages;

/// Resolves an absolute-path image.
pub fn resolve_path_image(image: &str) -> Result<ImageInfo, ImageError> {
    if !Path::new(image).is_absolute() {
        return Err(ImageError {
            reason: WaitingReason::InvalidImageName,
            message: format!("image {image:?}: only absolute paths of executables on the node are supported"),
        });
    }
    if !is_executable(image) {
        return Err(ImageError {
            reason: WaitingReason::ErrImageNeverPull,
            message: format!(
                "image {image:?} is not an executable file on this node (path images are never installed)"
            ),
        });
    }
    Ok(ImageInfo { entrypoint: vec![image.to_owned()], image_id: format!("file://{image}"), ..ImageInfo::default() })
}

#[async_trait]
impl Images for PathImages {
    async fn ensure(
        &self,
        image: &str,
        _pull_policy: PullPolicy,
        _events: &dyn PullEvents,
    ) -> Result<ImageInfo, ImageError> {
        resolve_path_image(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_images() {
        let ok = resolve_path_image("/bin/sh").unwrap();
        assert_eq!(ok.entrypoint, ["/bin/sh"]);
        assert_eq!(ok.image_id, "file:///bin/sh");
        assert_eq!(resolve_path_image("/usr/lib/os-release").unwrap_err().reason, WaitingReason::ErrImageNeverPull);
        assert_eq!(resolve_path_image("/nonexistent/x").unwrap_err().reason, WaitingReason::ErrImageNeverPull);
        assert_eq!(resolve_path_image("busybox").unwrap_err().reason, WaitingReason::InvalidImageName);
    }
}

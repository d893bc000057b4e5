//! The kubelet's reasons for a container that is not running, as one type: what vks decides on
//! is this enum, the API sees its name.

use std::fmt;

/// Why a container waits (`state.waiting.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitingReason {
    /// Being created: its image is being made available or its unit started.
    ContainerCreating,
    /// An app container while init containers run.
    PodInitializing,
    /// Waiting for its restart back-off to expire.
    CrashLoopBackOff,
    /// The image could not be made available (shown once after a failure).
    ErrImagePull,
    /// Waiting for the image pull back-off to expire.
    ImagePullBackOff,
    /// The image is not on the node and the pull policy forbids fetching it.
    ErrImageNeverPull,
    /// The image reference cannot be understood.
    InvalidImageName,
    /// The spec asks for something vks cannot provide (a field, a missing reference).
    CreateContainerConfigError,
    /// The container cannot be created (its command cannot be run, its unit not written).
    CreateContainerError,
    /// Starting the container failed.
    RunContainerError,
    /// Its postStart hook failed (until it starts again).
    PostStartHookError,
}

impl WaitingReason {
    /// The reason as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitingReason::ContainerCreating => "ContainerCreating",
            WaitingReason::PodInitializing => "PodInitializing",
            WaitingReason::CrashLoopBackOff => "CrashLoopBackOff",
            WaitingReason::ErrImagePull => "ErrImagePull",
            WaitingReason::ImagePullBackOff => "ImagePullBackOff",
            WaitingReason::ErrImageNeverPull => "ErrImageNeverPull",
            WaitingReason::InvalidImageName => "InvalidImageName",
            WaitingReason::CreateContainerConfigError => "CreateContainerConfigError",
            WaitingReason::CreateContainerError => "CreateContainerError",
            WaitingReason::RunContainerError => "RunContainerError",
            WaitingReason::PostStartHookError => "PostStartHookError",
        }
    }

    /// Whether this is a failure (the container cannot start as specified), as opposed to
    /// progress (`ContainerCreating`, `PodInitializing`).
    pub fn is_error(self) -> bool {
        !matches!(self, WaitingReason::ContainerCreating | WaitingReason::PodInitializing)
    }
}

impl fmt::Display for WaitingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

//! A pod's policies as types: the kinds of containers, restart policy and image pull policy. The API server validates and
//! defaults both, so an unknown spelling can only come from a newer API; vks treats it like the
//! API server's default and says so where it reads it.

use std::fmt;

/// What role a container plays in its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    /// An init container: runs to completion, in order, before the app containers.
    Init,
    /// An init container with `restartPolicy: Always`: started in order, keeps running.
    Sidecar,
    /// An app container.
    App,
    /// An ephemeral container (`kubectl debug`): started once, whenever it is added, never
    /// restarted, and no part of the pod's phase or readiness.
    Ephemeral,
}

impl ContainerKind {
    /// The spelling in `[X-Kubernetes]`.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerKind::Init => "init",
            ContainerKind::Sidecar => "sidecar",
            ContainerKind::App => "app",
            ContainerKind::Ephemeral => "ephemeral",
        }
    }

    /// Parses the spelling in `[X-Kubernetes]`.
    pub fn parse(s: &str) -> Option<ContainerKind> {
        match s {
            "init" => Some(ContainerKind::Init),
            "sidecar" => Some(ContainerKind::Sidecar),
            "app" => Some(ContainerKind::App),
            "ephemeral" => Some(ContainerKind::Ephemeral),
            _ => None,
        }
    }
}

impl fmt::Display for ContainerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `restartPolicy` of a pod or of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestartPolicy {
    /// Restart whenever the container exits.
    Always,
    /// Restart when it exits with a non-zero code.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// Parses the API's spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<RestartPolicy> {
        match s {
            "Always" => Some(RestartPolicy::Always),
            "OnFailure" => Some(RestartPolicy::OnFailure),
            "Never" => Some(RestartPolicy::Never),
            _ => None,
        }
    }

    /// A pod's policy: `Always` when unset (the API server's default).
    pub fn of_pod(spec: Option<&k8s_openapi::api::core::v1::PodSpec>) -> RestartPolicy {
        spec.and_then(|s| s.restart_policy.as_deref()).and_then(RestartPolicy::parse).unwrap_or(RestartPolicy::Always)
    }

    /// The policy that applies to a container of `kind` in a pod with this policy: the pod's for
    /// app containers, `Always` for sidecars, `Never` for ephemeral containers, and for init
    /// containers the pod's with `Always` meaning `OnFailure`.
    pub fn for_container(self, kind: ContainerKind) -> RestartPolicy {
        match kind {
            ContainerKind::Sidecar => RestartPolicy::Always,
            ContainerKind::Ephemeral => RestartPolicy::Never,
            ContainerKind::Init if self == RestartPolicy::Always => RestartPolicy::OnFailure,
            _ => self,
        }
    }

    /// Whether a container under this policy is restarted after exiting with `exit_code`.
    pub fn restarts_after(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }

    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "Always",
            RestartPolicy::OnFailure => "OnFailure",
            RestartPolicy::Never => "Never",
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `imagePullPolicy` of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PullPolicy {
    /// Install or upgrade to the candidate (or pinned) version at every pod start.
    Always,
    /// Install only when missing (or at another version than the pinned one).
    IfNotPresent,
    /// Never install: the package must be there.
    Never,
}

impl PullPolicy {
    /// Parses the API's spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<PullPolicy> {
        match s {
            "Always" => Some(PullPolicy::Always),
            "IfNotPresent" => Some(PullPolicy::IfNotPresent),
            "Never" => Some(PullPolicy::Never),
            _ => None,
        }
    }

    /// A container's policy; unset means `IfNotPresent` (the API server always sets it).
    pub fn of(c: &k8s_openapi::api::core::v1::Container) -> PullPolicy {
        c.image_pull_policy.as_deref().and_then(PullPolicy::parse).unwrap_or(PullPolicy::IfNotPresent)
    }

    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies_by_container_kind() {
        use RestartPolicy::*;
        assert_eq!(Always.for_container(ContainerKind::App), Always);
        assert_eq!(Always.for_container(ContainerKind::Init), OnFailure);
        assert_eq!(Never.for_container(ContainerKind::Init), Never);
        assert_eq!(Never.for_container(ContainerKind::Sidecar), Always);
        assert_eq!(Always.for_container(ContainerKind::Ephemeral), Never);
        assert!(OnFailure.restarts_after(1) && !OnFailure.restarts_after(0));
        assert!(Always.restarts_after(0) && !Never.restarts_after(1));
        assert_eq!(RestartPolicy::parse("Sometimes"), None);
    }
}

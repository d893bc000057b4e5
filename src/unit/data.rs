//! The data a container gets from outside its pod spec, resolved before its unit is planned:
//! ConfigMaps and Secrets (env and volumes), service-account tokens, the service links, the
//! node's allocatable resources, and the bind mounts of its volumes. Plain values: the worker
//! gathers them (`pods::worker::data`, `objects`, `volumes`) and [`super::plan`] stays pure.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The kind of an object a pod refers to by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A ConfigMap.
    ConfigMap,
    /// A Secret.
    Secret,
}

impl Kind {
    /// The name the kubelet uses in its messages (`configmap "x" not found`).
    pub fn lower(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }

    /// The API kind.
    pub fn api(self) -> &'static str {
        match self {
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
        }
    }
}

/// A ConfigMap or Secret, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjKey {
    /// ConfigMap or Secret.
    pub kind: Kind,
    /// Its namespace (the pod's).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl fmt::Display for ObjKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind.api(), self.namespace, self.name)
    }
}

/// The content of a ConfigMap or Secret. `Debug` shows the keys only: values may be secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ObjData {
    /// `data` (a ConfigMap's text values, a Secret's decoded values).
    pub data: BTreeMap<String, Vec<u8>>,
    /// A ConfigMap's `binaryData` (files only, never env).
    pub binary: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for ObjData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjData")
            .field("data", &self.data.keys().collect::<Vec<_>>())
            .field("binary", &self.binary.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What vks knows about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjState {
    /// Not read yet (its watch just started).
    Pending,
    /// It does not exist.
    Absent,
    /// Its current content.
    Present(Arc<ObjData>),
    /// It could not be read (the error, e.g. forbidden).
    Failed(String),
}

/// The node's allocatable resources: what `limits.*` of a resourceFieldRef mean when the
/// container sets no limit (the kubelet's rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Allocatable {
    /// CPU, millicores.
    pub cpu_millis: u64,
    /// Memory, bytes.
    pub memory: u64,
    /// Ephemeral storage, bytes.
    pub ephemeral_storage: u64,
}

/// One projected service-account token source of a pod: which token it asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenSpec {
    /// The service account (the pod's `serviceAccountName`).
    pub service_account: String,
    /// The audience, when the source names one (else the API server's).
    pub audience: Option<String>,
    /// The requested lifetime.
    pub expiration_seconds: i64,
}

/// A token the API server issued. `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(…)")
    }
}

/// Everything outside the pod spec that a pod's env and volumes are resolved against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodData {
    /// The ConfigMaps and Secrets the pod refers to; a key that is missing here is pending.
    pub objects: BTreeMap<ObjKey, ObjState>,
    /// The tokens of its projected serviceAccountToken sources.
    pub tokens: BTreeMap<TokenSpec, Token>,
    /// The service environment variables (`KUBERNETES_SERVICE_HOST`, …), in order.
    pub service_env: Vec<(String, String)>,
    /// The node's allocatable resources.
    pub allocatable: Allocatable,
}

impl PodData {
    /// The state of an object.
    pub fn object(&self, kind: Kind, namespace: &str, name: &str) -> ObjState {
        let key = ObjKey { kind, namespace: namespace.to_owned(), name: name.to_owned() };
        self.objects.get(&key).cloned().unwrap_or(ObjState::Pending)
    }
}

/// A volume mounted into a container: a bind mount in the unit's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// The path on the host (a pod directory, a file in it, or an allowed host path).
    pub source: String,
    /// Where the container sees it (`mountPath`, normalized).
    pub target: String,
    /// `BindReadOnlyPaths=` rather than `BindPaths=`.
    pub read_only: bool,
}

/// What the worker resolved for one container before planning its unit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerData {
    /// Objects, tokens, service links and allocatable resources.
    pub pod: PodData,
    /// The container's volume mounts.
    pub mounts: Vec<BindMount>,
    /// The file that carries the env values from Secrets (`EnvironmentFile=`), on tmpfs and
    /// readable by root only; used when the container has such values.
    pub env_file: Option<String>,
}

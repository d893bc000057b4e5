//! `/etc/vks/config.toml`: raw TOML in, a validated [`Config`] out.
//!
//! Reading happens in two stages, as in ripgrep's `LowArgs`/`HiArgs`: the file is parsed into a
//! TOML table, then [`Config::from_toml`] walks it key by key and collects *every* problem
//! (unknown key, wrong type, bad value) before failing, each message naming the key and the
//! value. Nothing outside the file is read here except the host name, which is the default node
//! name; this module never touches the network, D-Bus or the API server.
//!
//! `config/vks.toml` in the repository documents every option; keep it in step with this module.
//!
//! - this file: the validated types, their defaults' documentation, loading;
//! - `reader.rs`: the walk over the TOML table that collects every problem;
//! - `names.rs`: Kubernetes name and label validators.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use toml::Table;

use crate::quantity::Threshold;

/// Where the daemon reads its configuration unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vks/config.toml";

/// The validated configuration of one vks node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// `[node]`: identity and scheduling properties of the Node object.
    pub node: NodeConfig,
    /// `[cluster]`: how to reach the API server.
    pub cluster: ClusterConfig,
    /// `[kubelet]`: the kubelet HTTPS API.
    pub kubelet: KubeletConfig,
    /// `[paths]`: where vks keeps files.
    pub paths: PathsConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
    /// `[eviction]`: thresholds behind the node's pressure conditions.
    pub eviction: EvictionConfig,
    /// `[images]`: how images (Debian packages, paths, .deb URLs) are made available.
    pub images: ImagesConfig,
    /// `[resources]`: what is kept back from pods, and how node allocatable is enforced.
    pub resources: ResourcesConfig,
    /// `[security]`: how pods are confined.
    pub security: SecurityConfig,
    /// `[volumes]`: what pods may mount from the host.
    pub volumes: VolumesConfig,
    /// `[static]`: static pods from manifest files.
    #[serde(rename = "static")]
    pub static_pods: StaticConfig,
}

/// `[resources]`: the kubelet's `systemReserved` and `kubeReserved`, and
/// `enforceNodeAllocatable: [pods]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourcesConfig {
    /// Kept back for the operating system and its daemons.
    pub system_reserved: Reserved,
    /// Kept back for vks and systemd.
    pub kube_reserved: Reserved,
    /// Whether `vks.slice` (every pod) is limited to capacity less the reservations.
    pub enforce_allocatable: bool,
}

/// Amounts kept back from pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reserved {
    /// milli-CPU.
    pub cpu: u64,
    /// bytes.
    pub memory: u64,
    /// bytes.
    pub ephemeral_storage: u64,
}

impl Serialize for Reserved {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("cpu", &format!("{}m", self.cpu))?;
        m.serialize_entry("memory", &crate::quantity::format_bytes(self.memory))?;
        m.serialize_entry("ephemeral-storage", &crate::quantity::format_bytes(self.ephemeral_storage))?;
        m.end()
    }
}

/// `[security]`: the hardening profile and who gets the host as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecurityConfig {
    /// Whether pods get the hardening profile.
    pub hardening: bool,
    /// Settings left out of the profile on this node.
    pub hardening_disable: Vec<String>,
    /// Whether pods may ask for `privileged: true`.
    pub allow_privileged: bool,
    /// Namespaces whose pods get the host as it is.
    pub unconfined_namespaces: Vec<String>,
    /// Whether each container's `systemd-analyze security` exposure is reported as an event.
    pub report_exposure: bool,
}

/// `[volumes]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumesConfig {
    /// Host paths (and everything below them) that hostPath volumes may mount; empty: none.
    pub host_path_allow: Vec<PathBuf>,
}

/// `[static]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StaticConfig {
    /// Every `*.yaml`, `*.yml` and `*.json` file here holding Pods runs them on this node.
    pub manifest_dir: PathBuf,
}

/// Where static pod manifests are read from unless `[static] manifest_dir` says otherwise.
pub const DEFAULT_MANIFEST_DIR: &str = "/etc/vks/manifests";

/// `[images]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImagesConfig {
    /// Image reference → what it stands for (a package, `name=version`, a path or a .deb URL),
    /// so manifests written for container clusters run unchanged.
    pub aliases: BTreeMap<String, String>,
    /// Deadline of one apt-get run (install or update).
    #[serde(with = "humantime_serde_compat")]
    pub install_timeout: std::time::Duration,
    /// How long apt-get waits for the dpkg lock held by another program.
    #[serde(with = "humantime_serde_compat")]
    pub lock_timeout: std::time::Duration,
    /// Deadline of downloading one .deb.
    #[serde(with = "humantime_serde_compat")]
    pub download_timeout: std::time::Duration,
    /// Largest .deb vks downloads, bytes.
    #[serde(serialize_with = "bytes_quantity")]
    pub download_max_size: u64,
    /// Extra CA (PEM) trusted for https .deb URLs, besides the system's.
    pub download_ca_file: Option<PathBuf>,
    /// Extra apt sources, written to /etc/apt/sources.list.d/vks-<name>.sources.
    pub apt_sources: Vec<AptSource>,
}

/// One `[[images.apt_sources]]` entry, in deb822 terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AptSource {
    /// File name part: vks-<name>.sources.
    pub name: String,
    /// `Types:` (deb, deb-src).
    pub types: Vec<String>,
    /// `URIs:`.
    pub uris: Vec<String>,
    /// `Suites:`.
    pub suites: Vec<String>,
    /// `Components:` (may be empty for a flat repository whose suite ends with `/`).
    pub components: Vec<String>,
    /// `Signed-By:`: a keyring file.
    pub signed_by: Option<PathBuf>,
    /// `Architectures:`.
    pub architectures: Vec<String>,
}

fn bytes_quantity<S: serde::Serializer>(b: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::quantity::format_bytes(*b))
}

/// Serde glue so durations print as "10m" in the effective configuration.
mod humantime_serde_compat {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeConfig {
    /// Name of the Node object; defaults to the host name.
    pub name: String,
    /// InternalIP address; `None` means auto-detect at start-up (see [`crate::host`]).
    pub internal_ip: Option<IpAddr>,
    /// ExternalIP address; `None` means none is published.
    pub external_ip: Option<IpAddr>,
    /// Extra labels for the Node object.
    pub labels: BTreeMap<String, String>,
    /// Taints the Node object is registered with.
    pub taints: Vec<Taint>,
    /// The `pods` capacity of the node.
    pub max_pods: u32,
}

/// A node taint, parsed from `key[=value]:Effect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    /// Taint key (a qualified name).
    pub key: String,
    /// Taint value (may be empty).
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// The kubeconfig vks uses to talk to the API server (written by `vks join` when `server`
    /// and a token are set).
    pub kubeconfig: PathBuf,
    /// The API server (or k3s server) URL to join, `https://host:port`.
    pub server: Option<String>,
    /// The join token (`token` or `token_file`); set exactly when `server` is.
    pub token: Option<TokenSource>,
    /// Whether a cluster is configured at all (`server` or `kubeconfig` set): without one vks
    /// runs standalone, with its static pods only and no API calls.
    pub configured: bool,
}

/// Where the join token comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    /// `cluster.token`: the token itself (never printed).
    Inline(crate::token::Secret),
    /// `cluster.token_file`: a file holding it, read when joining.
    File(PathBuf),
}

impl Serialize for ClusterConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ClusterConfig", 3)?;
        if self.configured {
            st.serialize_field("kubeconfig", &self.kubeconfig)?;
        } else {
            st.skip_field("kubeconfig")?;
        }
        match &self.server {
            Some(server) => st.serialize_field("server", server)?,
            None => st.skip_field("server")?,
        }
        match &self.token {
            // The secret never leaves the process through `vks check`.
            Some(TokenSource::Inline(_)) => st.serialize_field("token", "(set, not shown)")?,
            Some(TokenSource::File(p)) => st.serialize_field("token_file", p)?,
            None => st.skip_field("token")?,
        }
        st.end()
    }
}

/// `[kubelet]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KubeletConfig {
    /// Address the kubelet API binds to.
    pub address: IpAddr,
    /// Port the kubelet API binds to and publishes in the Node's daemonEndpoints.
    pub port: u16,
    /// Serving certificate (PEM); `None` means a self-signed one is generated at start-up.
    pub tls_cert_file: Option<PathBuf>,
    /// Key of the serving certificate (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// CA that signs the client certificates of kubelet API callers (the cluster's client CA).
    /// `None`: `<state_dir>/client-ca.crt` when present (written by the join).
    pub client_ca_file: Option<PathBuf>,
    /// Requests without credentials are authorized as `system:anonymous` (else 401).
    pub anonymous_auth: bool,
    /// `/healthz` answers without credentials.
    pub healthz_anonymous: bool,
    /// Open connections, all clients together.
    pub max_connections: usize,
    /// Open connections from one client address.
    pub max_connections_per_client: usize,
    /// Concurrent streams (log follows, exec, attach, port-forward) per client address.
    pub max_streams_per_client: usize,
    /// Time allowed for a TLS handshake.
    #[serde(with = "humantime_serde_compat")]
    pub tls_handshake_timeout: std::time::Duration,
    /// Time allowed for a request header after connecting or after the previous response.
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: std::time::Duration,
    /// A stream that moves no byte for this long is closed.
    #[serde(with = "humantime_serde_compat")]
    pub streaming_idle_timeout: std::time::Duration,
    /// Largest request header, bytes.
    pub max_header_bytes: usize,
    /// Largest request body, bytes.
    #[serde(serialize_with = "bytes_quantity")]
    pub max_body_bytes: u64,
    /// Declare `ExtendWebSocketsToKubelet` in the Node's `status.declaredFeatures`, so that API
    /// servers (1.36+) pass exec, attach and port-forward WebSockets straight to vks instead of
    /// translating them to SPDY.
    pub websocket_streaming: bool,
    /// `kubectl exec` without a terminal runs through a per-container exec helper (else every
    /// command is a transient unit of its own).
    pub exec_helpers: bool,
    /// How long a container's exec helper may go without commands before vks closes it.
    #[serde(with = "humantime_serde_compat")]
    pub exec_helper_idle: std::time::Duration,
}

/// `[paths]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathsConfig {
    /// vks's own files (credentials, generated certificates).
    pub state_dir: PathBuf,
    /// Per-pod directories (`<pod_dir>/<pod uid>/`).
    pub pod_dir: PathBuf,
    /// Per-pod files that must never reach persistent storage (Secret, projected and token
    /// volumes, env values from Secrets, memory-backed emptyDirs): `<run_dir>/<pod uid>/`, on
    /// tmpfs.
    pub run_dir: PathBuf,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogConfig {
    /// Most verbose level logged.
    pub level: LogLevel,
}

/// Log levels accepted in `[log] level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// The default: state changes worth an operator's attention.
    Info,
    /// Per-request detail.
    Debug,
    /// Everything, including the libraries' chatter.
    Trace,
}

impl LogLevel {
    /// The matching `log` filter.
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// `[eviction]`: hard thresholds, as the kubelet's `evictionHard`. A condition turns True when
/// what is left drops below its threshold; allocatable is capacity minus the threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvictionConfig {
    /// `memory.available` (MemAvailable of /proc/meminfo).
    pub memory_available: Threshold,
    /// `nodefs.available`: free space of the file system holding `paths.state_dir`.
    pub nodefs_available: Threshold,
    /// `nodefs.inodesFree`: free inodes of that file system.
    pub nodefs_inodes_free: Threshold,
    /// `pid.available`: PIDs left below `kernel.pid_max`.
    pub pid_available: Threshold,
}

/// Every problem found in a configuration file, in file order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file the problems are in.
    pub path: PathBuf,
    /// One line per problem, each naming the key and the value.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration in {}:", self.path.display())?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

mod names;
mod reader;

pub use names::{validate_dns_label, validate_dns_subdomain, validate_label_value, validate_qualified_name};

impl Config {
    /// Whether vks runs without a cluster: no `[cluster] server` and no `[cluster] kubeconfig`.
    pub fn standalone(&self) -> bool {
        !self.cluster.configured
    }

    /// Reads and validates the file at `path`. `hostname` is the default node name.
    pub fn load(path: &Path, hostname: &str) -> Result<Config, ConfigError> {
        let fail = |problem: String| ConfigError { path: path.to_owned(), problems: vec![problem] };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read the file: {e}")))?;
        Config::from_str(&text, hostname).map_err(|problems| ConfigError { path: path.to_owned(), problems })
    }

    /// Validates configuration text; on failure returns every problem found.
    pub fn from_str(text: &str, hostname: &str) -> Result<Config, Vec<String>> {
        let table: Table =
            text.parse().map_err(|e: toml::de::Error| vec![format!("TOML syntax: {}", e.to_string().trim())])?;
        Config::from_toml(table, hostname)
    }

    /// How pods are confined on this node: `[security]`, and vks's own files (its
    /// configuration directory, state, pod directories and credentials) kept from pods.
    pub fn node_policy(&self) -> crate::unit::security::NodePolicy {
        let mut protected = vec![
            PathBuf::from("/etc/vks"),
            self.paths.state_dir.clone(),
            self.paths.pod_dir.clone(),
            self.paths.run_dir.clone(),
        ];
        // vks's runtime state: the pods' status records (/run/vks/status) besides run_dir.
        protected.push(PathBuf::from("/run/vks"));
        protected.push(self.cluster.kubeconfig.clone());
        protected.extend(self.kubelet.tls_key_file.clone());
        if let Some(TokenSource::File(p)) = &self.cluster.token {
            protected.push(p.clone());
        }
        let mut paths: Vec<String> = Vec::new();
        for p in protected {
            let p = p.display().to_string();
            // A path inside one already listed is covered by it.
            if !paths.iter().any(|q| p == *q || p.starts_with(&format!("{}/", q.trim_end_matches('/')))) {
                paths.retain(|q| !q.starts_with(&format!("{}/", p.trim_end_matches('/'))));
                paths.push(p);
            }
        }
        crate::unit::security::NodePolicy {
            hardening: self.security.hardening,
            hardening_disable: self.security.hardening_disable.clone(),
            allow_privileged: self.security.allow_privileged,
            unconfined_namespaces: self.security.unconfined_namespaces.clone(),
            protected_paths: paths,
        }
    }

    /// The effective configuration as TOML, defaults filled in (what `vks check` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"))
    }
}

impl Serialize for Taint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.key, self.effect)
        } else {
            write!(f, "{}={}:{}", self.key, self.value, self.effect)
        }
    }
}

impl Taint {
    /// Parses `key[=value]:Effect`, the syntax of the kubelet's `--register-with-taints`.
    pub fn parse(s: &str) -> Result<Taint, String> {
        let (kv, effect) = s.rsplit_once(':').ok_or("expected key[=value]:Effect")?;
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        validate_qualified_name(key).map_err(|e| format!("bad key {key:?}: {e}"))?;
        if !value.is_empty() {
            validate_label_value(value).map_err(|e| format!("bad value {value:?}: {e}"))?;
        }
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(format!("bad effect {effect:?}: expected NoSchedule, PreferNoSchedule or NoExecute"));
        }
        Ok(Taint { key: key.to_owned(), value: value.to_owned(), effect: effect.to_owned() })
    }
}

#[cfg(test)]
mod tests;

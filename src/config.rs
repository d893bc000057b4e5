//! `/etc/vks/config.toml`: raw TOML in, a validated [`Config`] out.
//!
//! Reading happens in two stages, as in ripgrep's `LowArgs`/`HiArgs`: the file is parsed into a
//! TOML table, then [`Config::from_toml`] walks it key by key and collects *every* problem
//! (unknown key, wrong type, bad value) before failing, each message naming the key and the
//! value. Nothing outside the file is read here except the host name, which is the default node
//! name; this module never touches the network, D-Bus or the API server.
//!
//! `config/vks.toml` in the repository documents every option; keep it in step with this file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use toml::{Table, Value};

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
}

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
}

/// Where the join token comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    /// `cluster.token`: the token itself (never printed).
    Inline(crate::join::token::Secret),
    /// `cluster.token_file`: a file holding it, read when joining.
    File(PathBuf),
}

impl Serialize for ClusterConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ClusterConfig", 3)?;
        st.serialize_field("kubeconfig", &self.kubeconfig)?;
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
    pub client_ca_file: Option<PathBuf>,
    /// Declare `ExtendWebSocketsToKubelet` in the Node's `status.declaredFeatures`, so that API
    /// servers (1.36+) pass exec, attach and port-forward WebSockets straight to vks instead of
    /// translating them to SPDY.
    pub websocket_streaming: bool,
}

/// `[paths]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathsConfig {
    /// vks's own files (credentials, generated certificates).
    pub state_dir: PathBuf,
    /// Per-pod directories (`<pod_dir>/<pod uid>/`).
    pub pod_dir: PathBuf,
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

impl Config {
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

    /// Validates a parsed TOML table; on failure returns every problem found.
    pub fn from_toml(mut root: Table, hostname: &str) -> Result<Config, Vec<String>> {
        let mut errs = Errors::default();
        let mut node = Section::take(&mut root, "node", &mut errs);
        let mut cluster = Section::take(&mut root, "cluster", &mut errs);
        let mut kubelet = Section::take(&mut root, "kubelet", &mut errs);
        let mut paths = Section::take(&mut root, "paths", &mut errs);
        let mut log = Section::take(&mut root, "log", &mut errs);
        let mut eviction = Section::take(&mut root, "eviction", &mut errs);
        let mut images = Section::take(&mut root, "images", &mut errs);
        for (key, value) in root {
            errs.push(format!("{key}: unknown key (value {})", show(&value)));
        }

        let default_name = hostname.trim().to_ascii_lowercase();
        let name = node.string("name", &mut errs).unwrap_or_else(|| default_name.clone());
        if let Err(why) = validate_dns_subdomain(&name) {
            let origin = if node.had("name") { "node.name" } else { "node.name (defaulted to the host name)" };
            errs.push(format!("{origin}: {name:?} is not a valid node name: {why}"));
        }
        let node_cfg = NodeConfig {
            internal_ip: node.ip("internal_ip", &mut errs),
            external_ip: node.ip("external_ip", &mut errs),
            labels: node.labels("labels", &mut errs),
            taints: node.taints("taints", &mut errs),
            max_pods: node.integer("max_pods", 1, 10_000, &mut errs).map_or(110, |v| v as u32),
            name,
        };
        node.finish(&mut errs);

        let cluster_cfg = ClusterConfig {
            kubeconfig: cluster.path("kubeconfig", &mut errs).unwrap_or_else(|| PathBuf::from("/etc/vks/kubeconfig")),
            server: cluster.server("server", &mut errs),
            token: cluster.token(&mut errs),
        };
        if cluster_cfg.server.is_some() != cluster_cfg.token.is_some()
            && !errs.0.iter().any(|e| e.starts_with("cluster."))
        {
            errs.push(if cluster_cfg.server.is_some() {
                "cluster.server: set, but neither cluster.token nor cluster.token_file is: joining needs a token"
                    .to_owned()
            } else {
                "cluster.token: set, but cluster.server is not: the token needs the server URL to join".to_owned()
            });
        }
        cluster.finish(&mut errs);

        let kubelet_cfg = KubeletConfig {
            address: kubelet.ip("address", &mut errs).unwrap_or(IpAddr::from([0, 0, 0, 0])),
            port: kubelet.integer("port", 1, 65535, &mut errs).map_or(10250, |v| v as u16),
            tls_cert_file: kubelet.path("tls_cert_file", &mut errs),
            tls_key_file: kubelet.path("tls_key_file", &mut errs),
            client_ca_file: kubelet.path("client_ca_file", &mut errs),
            websocket_streaming: kubelet.boolean("websocket_streaming", &mut errs).unwrap_or(true),
        };
        if kubelet_cfg.tls_cert_file.is_some() != kubelet_cfg.tls_key_file.is_some() {
            errs.push("kubelet.tls_cert_file and kubelet.tls_key_file: set both or neither".to_owned());
        }
        kubelet.finish(&mut errs);

        let state_dir = paths.path("state_dir", &mut errs).unwrap_or_else(|| PathBuf::from("/var/lib/vks"));
        let paths_cfg = PathsConfig {
            pod_dir: paths.path("pod_dir", &mut errs).unwrap_or_else(|| state_dir.join("pods")),
            state_dir,
        };
        paths.finish(&mut errs);

        let log_cfg = LogConfig { level: log.log_level("level", &mut errs).unwrap_or(LogLevel::Info) };
        log.finish(&mut errs);

        let eviction_cfg = EvictionConfig {
            memory_available: eviction
                .threshold("memory_available", &mut errs)
                .unwrap_or(Threshold::Quantity(100 << 20)),
            nodefs_available: eviction.threshold("nodefs_available", &mut errs).unwrap_or(Threshold::Percent(10.0)),
            nodefs_inodes_free: eviction.threshold("nodefs_inodes_free", &mut errs).unwrap_or(Threshold::Percent(5.0)),
            pid_available: eviction.threshold("pid_available", &mut errs).unwrap_or(Threshold::Percent(5.0)),
        };
        eviction.finish(&mut errs);

        let images_cfg = ImagesConfig {
            aliases: images.string_map("aliases", &mut errs),
            install_timeout: images
                .duration("install_timeout", &mut errs)
                .unwrap_or(std::time::Duration::from_secs(600)),
            lock_timeout: images.duration("lock_timeout", &mut errs).unwrap_or(std::time::Duration::from_secs(300)),
            download_timeout: images
                .duration("download_timeout", &mut errs)
                .unwrap_or(std::time::Duration::from_secs(300)),
            download_max_size: images.bytes("download_max_size", &mut errs).unwrap_or(1 << 30),
            download_ca_file: images.path("download_ca_file", &mut errs),
            apt_sources: images.apt_sources("apt_sources", &mut errs),
        };
        images.finish(&mut errs);

        if errs.0.is_empty() {
            Ok(Config {
                node: node_cfg,
                cluster: cluster_cfg,
                kubelet: kubelet_cfg,
                paths: paths_cfg,
                log: log_cfg,
                eviction: eviction_cfg,
                images: images_cfg,
            })
        } else {
            Err(errs.0)
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

#[derive(Default)]
struct Errors(Vec<String>);

impl Errors {
    fn push(&mut self, e: String) {
        self.0.push(e);
    }
}

/// One `[section]` of the file; every key read is removed, and what is left is unknown.
struct Section {
    name: &'static str,
    table: Table,
    seen: Vec<String>,
}

impl Section {
    fn take(root: &mut Table, name: &'static str, errs: &mut Errors) -> Section {
        let table = match root.remove(name) {
            None => Table::new(),
            Some(Value::Table(t)) => t,
            Some(other) => {
                errs.push(format!("{name}: expected a table ([{name}]), got {}", show(&other)));
                Table::new()
            }
        };
        Section { name, table, seen: Vec::new() }
    }

    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.name)
    }

    fn had(&self, key: &str) -> bool {
        self.seen.iter().any(|k| k == key)
    }

    fn get(&mut self, key: &str) -> Option<Value> {
        let v = self.table.remove(key)?;
        self.seen.push(key.to_owned());
        Some(v)
    }

    fn string(&mut self, key: &str, errs: &mut Errors) -> Option<String> {
        match self.get(key)? {
            Value::String(s) => Some(s),
            other => {
                errs.push(format!("{}: expected a string, got {}", self.key(key), show(&other)));
                None
            }
        }
    }

    fn boolean(&mut self, key: &str, errs: &mut Errors) -> Option<bool> {
        match self.get(key)? {
            Value::Boolean(b) => Some(b),
            other => {
                errs.push(format!("{}: expected true or false, got {}", self.key(key), show(&other)));
                None
            }
        }
    }

    fn integer(&mut self, key: &str, min: i64, max: i64, errs: &mut Errors) -> Option<i64> {
        match self.get(key)? {
            Value::Integer(i) if (min..=max).contains(&i) => Some(i),
            Value::Integer(i) => {
                errs.push(format!("{}: {i} is out of range ({min}..={max})", self.key(key)));
                None
            }
            other => {
                errs.push(format!("{}: expected an integer, got {}", self.key(key), show(&other)));
                None
            }
        }
    }

    fn ip(&mut self, key: &str, errs: &mut Errors) -> Option<IpAddr> {
        let s = self.string(key, errs)?;
        match s.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                errs.push(format!("{}: {s:?} is not an IP address", self.key(key)));
                None
            }
        }
    }

    fn path(&mut self, key: &str, errs: &mut Errors) -> Option<PathBuf> {
        let s = self.string(key, errs)?;
        if s.is_empty() || !s.starts_with('/') {
            errs.push(format!("{}: {s:?} is not an absolute path", self.key(key)));
            return None;
        }
        Some(PathBuf::from(s))
    }

    /// An `https://host[:port]` URL.
    fn server(&mut self, key: &str, errs: &mut Errors) -> Option<String> {
        let s = self.string(key, errs)?;
        match s.parse::<http::Uri>() {
            Ok(u)
                if u.scheme_str() == Some("https")
                    && u.host().is_some_and(|h| !h.is_empty())
                    && matches!(u.path(), "" | "/")
                    && u.query().is_none() =>
            {
                Some(s.trim_end_matches('/').to_owned())
            }
            _ => {
                errs.push(format!("{}: {s:?} is not an https://host[:port] URL", self.key(key)));
                None
            }
        }
    }

    /// `token` or `token_file`, mutually exclusive. The token's value never appears in a
    /// message.
    fn token(&mut self, errs: &mut Errors) -> Option<TokenSource> {
        let inline = match self.get("token") {
            None => None,
            Some(Value::String(t)) => match crate::join::token::Token::parse(&t) {
                Ok(_) => Some(TokenSource::Inline(crate::join::token::Secret::new(t.trim()))),
                Err(e) => {
                    errs.push(format!("{}: the value (not shown) is not a valid token: {e}", self.key("token")));
                    None
                }
            },
            Some(other) => {
                errs.push(format!("{}: expected a string, got a {}", self.key("token"), other.type_str()));
                None
            }
        };
        let file = self.path("token_file", errs).map(TokenSource::File);
        match (inline, file) {
            (Some(_), Some(TokenSource::File(p))) => {
                errs.push(format!(
                    "{} and {}: set one, not both (token_file is {:?})",
                    self.key("token"),
                    self.key("token_file"),
                    p.display().to_string()
                ));
                None
            }
            (a, b) => a.or(b),
        }
    }

    fn log_level(&mut self, key: &str, errs: &mut Errors) -> Option<LogLevel> {
        let s = self.string(key, errs)?;
        let level = match s.as_str() {
            "error" => LogLevel::Error,
            "warn" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => {
                errs.push(format!("{}: {s:?} is not a log level (error, warn, info, debug, trace)", self.key(key)));
                return None;
            }
        };
        Some(level)
    }

    fn threshold(&mut self, key: &str, errs: &mut Errors) -> Option<Threshold> {
        let s = self.string(key, errs)?;
        match Threshold::parse(&s) {
            Ok(t) => Some(t),
            Err(why) => {
                errs.push(format!("{}: {s:?} {why}", self.key(key)));
                None
            }
        }
    }

    fn duration(&mut self, key: &str, errs: &mut Errors) -> Option<std::time::Duration> {
        let s = self.string(key, errs)?;
        match humantime::parse_duration(&s) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                errs.push(format!("{}: {s:?} is not a duration like \"30s\", \"5m\" or \"1h\"", self.key(key)));
                None
            }
        }
    }

    fn bytes(&mut self, key: &str, errs: &mut Errors) -> Option<u64> {
        if let Some(Value::Integer(i)) = self.table.get(key) {
            let i = *i;
            self.get(key);
            return if i > 0 {
                Some(i as u64)
            } else {
                errs.push(format!("{}: {i} is not a positive size", self.key(key)));
                None
            };
        }
        let s = self.string(key, errs)?;
        match crate::quantity::parse_bytes(&s) {
            Some(b) if b > 0 => Some(b),
            _ => {
                errs.push(format!("{}: {s:?} is not a size like \"500Mi\" or \"1G\"", self.key(key)));
                None
            }
        }
    }

    fn string_map(&mut self, key: &str, errs: &mut Errors) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        match self.get(key) {
            None => {}
            Some(Value::Table(t)) => {
                for (k, v) in t {
                    match v {
                        Value::String(v) if !v.is_empty() && !k.is_empty() => {
                            out.insert(k, v);
                        }
                        other => errs.push(format!(
                            "{}.{k:?}: expected a non-empty string, got {}",
                            self.key(key),
                            show(&other)
                        )),
                    }
                }
            }
            Some(other) => errs.push(format!("{}: expected a table of strings, got {}", self.key(key), show(&other))),
        }
        out
    }

    /// The items of the array at `key` (none when absent); anything else is an error saying
    /// what was `expected`.
    fn array(&mut self, key: &str, expected: &str, errs: &mut Errors) -> Vec<Value> {
        match self.get(key) {
            None => Vec::new(),
            Some(Value::Array(a)) => a,
            Some(other) => {
                errs.push(format!("{}: expected {expected}, got {}", self.key(key), show(&other)));
                Vec::new()
            }
        }
    }

    fn apt_sources(&mut self, key: &str, errs: &mut Errors) -> Vec<AptSource> {
        let items = self.array(key, &format!("[[{}]] tables", self.key(key)), errs);
        let mut out: Vec<AptSource> = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let Value::Table(t) = item else {
                errs.push(format!("{}[{i}]: expected a table, got {}", self.key(key), show(&item)));
                continue;
            };
            let name = format!("{}[{i}]", self.key(key));
            let mut s = Section { name: "", table: t, seen: Vec::new() };
            let mut sub_errs = Errors::default();
            let list = |s: &mut Section, k: &str, errs: &mut Errors| -> Vec<String> {
                match s.get(k) {
                    None => Vec::new(),
                    Some(Value::Array(a)) => a
                        .into_iter()
                        .filter_map(|v| match v {
                            Value::String(v)
                                if !v.is_empty() && !v.chars().any(|c| c.is_whitespace() || c.is_control()) =>
                            {
                                Some(v)
                            }
                            other => {
                                errs.push(format!(".{k}: {} is not a word without spaces", show(&other)));
                                None
                            }
                        })
                        .collect(),
                    Some(other) => {
                        errs.push(format!(".{k}: expected an array of strings, got {}", show(&other)));
                        Vec::new()
                    }
                }
            };
            let src_name = s.string("name", &mut sub_errs).unwrap_or_default();
            let src = AptSource {
                types: list(&mut s, "types", &mut sub_errs),
                uris: list(&mut s, "uris", &mut sub_errs),
                suites: list(&mut s, "suites", &mut sub_errs),
                components: list(&mut s, "components", &mut sub_errs),
                signed_by: s.path("signed_by", &mut sub_errs),
                architectures: list(&mut s, "architectures", &mut sub_errs),
                name: src_name,
            };
            if validate_dns_label(&src.name).is_err() {
                sub_errs.push(format!(".name: {:?} must be a lowercase name of letters, digits and '-'", src.name));
            } else if out.iter().any(|o| o.name == src.name) {
                sub_errs.push(format!(".name: {:?} is used twice", src.name));
            }
            let types = if src.types.is_empty() { vec!["deb".to_owned()] } else { src.types.clone() };
            if let Some(t) = types.iter().find(|t| *t != "deb" && *t != "deb-src") {
                sub_errs.push(format!(".types: {t:?} is not deb or deb-src"));
            }
            if src.uris.is_empty() {
                sub_errs.push(".uris: at least one URI is required".to_owned());
            }
            if let Some(u) = src
                .uris
                .iter()
                .find(|u| !u.starts_with("http://") && !u.starts_with("https://") && !u.starts_with("file:/"))
            {
                sub_errs.push(format!(".uris: {u:?} is not an http(s) or file URI"));
            }
            if src.suites.is_empty() {
                sub_errs.push(".suites: at least one suite is required".to_owned());
            } else if src.components.is_empty() && src.suites.iter().any(|s| !s.ends_with('/')) {
                sub_errs.push(".components: required unless every suite is a flat path ending in '/'".to_owned());
            }
            s.finish(&mut sub_errs);
            for e in sub_errs.0 {
                // Section::key of a nameless section gives ".k"; unknown keys come as ".k: ...".
                let e = e.strip_prefix('.').map_or(e.clone(), |r| format!(".{r}"));
                errs.push(format!("{name}{e}"));
            }
            out.push(AptSource { types, ..src });
        }
        out
    }

    fn labels(&mut self, key: &str, errs: &mut Errors) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let table = match self.get(key) {
            None => return out,
            Some(Value::Table(t)) => t,
            Some(other) => {
                errs.push(format!("{}: expected a table of strings, got {}", self.key(key), show(&other)));
                return out;
            }
        };
        for (k, v) in table {
            let full = format!("{}.{k:?}", self.key(key));
            let Value::String(v) = v else {
                errs.push(format!("{full}: expected a string, got {}", show(&v)));
                continue;
            };
            if let Err(e) = validate_qualified_name(&k) {
                errs.push(format!("{full}: label key {k:?} is invalid: {e}"));
            } else if let Err(e) = node_restriction_allows(&k) {
                errs.push(format!("{full}: label key {k:?} {e}"));
            }
            if let Err(e) = validate_label_value(&v) {
                errs.push(format!("{full}: label value {v:?} is invalid: {e}"));
            }
            out.insert(k, v);
        }
        out
    }

    fn taints(&mut self, key: &str, errs: &mut Errors) -> Vec<Taint> {
        let items = self.array(key, "an array of \"key[=value]:Effect\" strings", errs);
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Value::String(s) => match Taint::parse(&s) {
                    Ok(t) => out.push(t),
                    Err(e) => errs.push(format!("{}[{i}]: {s:?}: {e}", self.key(key))),
                },
                other => errs.push(format!("{}[{i}]: expected a string, got {}", self.key(key), show(&other))),
            }
        }
        out
    }

    fn finish(self, errs: &mut Errors) {
        for (k, v) in self.table {
            errs.push(format!("{}.{k}: unknown key (value {})", self.name, show(&v)));
        }
    }
}

/// A TOML value as it would be written in the file, shortened for error messages.
fn show(v: &Value) -> String {
    let s = match v {
        Value::Table(_) => "a table".to_owned(),
        Value::Array(_) => format!("an array {v}"),
        _ => v.to_string(),
    };
    if s.len() > 80 { format!("{}...", &s[..s.floor_char_boundary(77)]) } else { s }
}

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
fn node_restriction_allows(key: &str) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        Config::from_str(text, "My-Host")
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text).expect_err("expected the config to be rejected")
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.node.name, "my-host");
        assert_eq!(c.node.internal_ip, None);
        assert_eq!(c.node.max_pods, 110);
        assert_eq!(c.cluster.kubeconfig, PathBuf::from("/etc/vks/kubeconfig"));
        assert_eq!(c.kubelet.port, 10250);
        assert_eq!(c.kubelet.address.to_string(), "0.0.0.0");
        assert!(c.kubelet.websocket_streaming);
        assert_eq!(c.paths.state_dir, PathBuf::from("/var/lib/vks"));
        assert_eq!(c.paths.pod_dir, PathBuf::from("/var/lib/vks/pods"));
        assert_eq!(c.log.level, LogLevel::Info);
        assert_eq!(c.eviction.memory_available, Threshold::Quantity(100 * 1024 * 1024));
        assert_eq!(c.eviction.nodefs_available, Threshold::Percent(10.0));
    }

    #[test]
    fn full_file_is_read() {
        let c = parse(
            r#"
            [node]
            name = "web-1"
            internal_ip = "10.0.0.5"
            external_ip = "2001:db8::1"
            labels = { "example.com/role" = "web", "node.kubernetes.io/pool" = "a" }
            taints = ["dedicated=web:NoSchedule", "example.com/gpu:NoExecute"]
            max_pods = 50
            [cluster]
            kubeconfig = "/srv/kc"
            [kubelet]
            address = "10.0.0.5"
            port = 11250
            tls_cert_file = "/a.crt"
            tls_key_file = "/a.key"
            client_ca_file = "/ca.crt"
            websocket_streaming = false
            [paths]
            state_dir = "/srv/vks"
            [log]
            level = "debug"
            [eviction]
            memory_available = "1Gi"
            nodefs_available = "15%"
            nodefs_inodes_free = "1000"
            pid_available = "2.5%"
            "#,
        )
        .unwrap();
        assert_eq!(c.node.name, "web-1");
        assert_eq!(c.node.external_ip.unwrap().to_string(), "2001:db8::1");
        assert_eq!(c.node.labels["example.com/role"], "web");
        assert_eq!(
            c.node.taints[1],
            Taint { key: "example.com/gpu".into(), value: "".into(), effect: "NoExecute".into() }
        );
        assert_eq!(c.paths.pod_dir, PathBuf::from("/srv/vks/pods"));
        assert_eq!(c.eviction.memory_available, Threshold::Quantity(1 << 30));
        assert_eq!(c.eviction.nodefs_inodes_free, Threshold::Quantity(1000));
        assert_eq!(c.eviction.pid_available, Threshold::Percent(2.5));
        assert_eq!(c.log.level, LogLevel::Debug);
        assert!(!c.kubelet.websocket_streaming);
    }

    #[test]
    fn every_error_is_reported_at_once_naming_key_and_value() {
        let errs = errors(
            r#"
            colour = "blue"
            [node]
            name = "Bad_Name"
            internal_ip = "1.2.3"
            max_pods = "many"
            labels = { "kubernetes.io/role" = "x", "ok.io/k" = "-bad-" }
            taints = ["nokey", "a=b:Sometimes", 3]
            flavour = 1
            [kubelet]
            port = 70000
            tls_cert_file = "relative.crt"
            websocket_streaming = "yes"
            [log]
            level = "loud"
            [eviction]
            memory_available = "lots"
            nodefs_available = "150%"
            "#,
        );
        let want = [
            "colour: unknown key (value \"blue\")",
            "node.name: \"Bad_Name\" is not a valid node name",
            "node.internal_ip: \"1.2.3\" is not an IP address",
            "node.max_pods: expected an integer, got \"many\"",
            "label key \"kubernetes.io/role\" is under kubernetes.io/k8s.io",
            "label value \"-bad-\" is invalid",
            "node.taints[0]: \"nokey\": expected key[=value]:Effect",
            "node.taints[1]: \"a=b:Sometimes\": bad effect",
            "node.taints[2]: expected a string, got 3",
            "node.flavour: unknown key (value 1)",
            "kubelet.port: 70000 is out of range (1..=65535)",
            "kubelet.tls_cert_file: \"relative.crt\" is not an absolute path",
            "kubelet.websocket_streaming: expected true or false, got \"yes\"",
            "log.level: \"loud\" is not a log level",
            "eviction.memory_available: \"lots\"",
            "eviction.nodefs_available: \"150%\"",
        ];
        for w in want {
            assert!(errs.iter().any(|e| e.contains(w)), "missing {w:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
    }

    #[test]
    fn serving_certificate_needs_its_key() {
        let errs = errors("[kubelet]\ntls_cert_file = \"/a.crt\"\n");
        assert_eq!(errs, vec!["kubelet.tls_cert_file and kubelet.tls_key_file: set both or neither".to_owned()]);
    }

    #[test]
    fn join_settings_are_validated_without_showing_the_token() {
        let c = parse("[cluster]\nserver = \"https://10.0.0.1:6443/\"\ntoken = \"abcdef.0123456789abcdef\"\n").unwrap();
        assert_eq!(c.cluster.server.as_deref(), Some("https://10.0.0.1:6443"));
        assert!(matches!(c.cluster.token, Some(TokenSource::Inline(_))));
        let shown = c.to_toml();
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.contains("token = \"(set, not shown)\""), "{shown}");
        let c = parse("[cluster]\nserver = \"https://s\"\ntoken_file = \"/etc/vks/token\"\n").unwrap();
        assert_eq!(c.cluster.token, Some(TokenSource::File("/etc/vks/token".into())));
        assert!(c.to_toml().contains("token_file = \"/etc/vks/token\""));

        let errs = errors("[cluster]\nserver = \"http://s\"\ntoken = \"K10abc::node:hunter2\"\n");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].contains("cluster.server: \"http://s\" is not an https://host[:port] URL"), "{errs:?}");
        assert!(errs[1].starts_with("cluster.token: the value (not shown) is not a valid token"), "{errs:?}");
        assert!(!errs.concat().contains("hunter2"));
        let errs = errors("[cluster]\nserver = \"https://s\"\ntoken = \"t\"\ntoken_file = \"/t\"\n");
        assert_eq!(errs, ["cluster.token and cluster.token_file: set one, not both (token_file is \"/t\")"]);
        let errs = errors("[cluster]\nserver = \"https://s\"\n");
        assert!(errs[0].contains("neither cluster.token nor cluster.token_file"), "{errs:?}");
        let errs = errors("[cluster]\ntoken_file = \"/t\"\n");
        assert!(errs[0].contains("cluster.server is not"), "{errs:?}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let errs = errors("[node]\nname = \n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("TOML syntax:") && errs[0].contains("line 2"), "{errs:?}");
    }

    #[test]
    fn section_of_wrong_type_is_an_error() {
        let errs = errors("node = 3\n");
        assert_eq!(errs, vec!["node: expected a table ([node]), got 3".to_owned()]);
    }

    #[test]
    fn invalid_host_name_is_reported_when_name_is_defaulted() {
        let errs = Config::from_str("", "under_score").unwrap_err();
        assert!(errs[0].starts_with("node.name (defaulted to the host name): \"under_score\""), "{errs:?}");
    }

    #[test]
    fn node_restriction_label_rules() {
        assert!(node_restriction_allows("kubernetes.io/hostname").is_ok());
        assert!(node_restriction_allows("node.kubernetes.io/instance-type").is_ok());
        assert!(node_restriction_allows("foo.node.kubernetes.io/x").is_ok());
        assert!(node_restriction_allows("kubelet.kubernetes.io/x").is_ok());
        assert!(node_restriction_allows("example.com/x").is_ok());
        assert!(node_restriction_allows("plain").is_ok());
        assert!(node_restriction_allows("kubernetes.io/role").is_err());
        assert!(node_restriction_allows("k8s.io/x").is_err());
        assert!(node_restriction_allows("node-restriction.kubernetes.io/x").is_err());
    }

    /// config/vks.toml documents every option: uncommenting every example gives a valid file
    /// that sets every key the effective configuration has.
    #[test]
    fn shipped_example_documents_every_option() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/vks.toml")).unwrap();
        assert!(Config::from_str(&text, "host").is_ok(), "the shipped file must be valid as shipped");
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    }) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let full = Config::from_str(&uncommented, "host").unwrap_or_else(|e| panic!("{e:#?}"));
        let documented: Table = uncommented.parse().unwrap();
        let effective: Table = full.to_toml().parse().unwrap();
        for (section, v) in &effective {
            let keys = v.as_table().unwrap();
            for key in keys.keys() {
                assert!(
                    documented.get(section).and_then(|s| s.get(key)).is_some(),
                    "{section}.{key} is not documented in config/vks.toml"
                );
            }
        }
    }

    #[test]
    fn effective_config_round_trips() {
        let c = parse("[node]\ntaints = [\"a=b:NoSchedule\"]\n").unwrap();
        let again = parse(&c.to_toml()).unwrap();
        assert_eq!(c, again);
    }
}

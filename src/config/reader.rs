//! The walk over the TOML table: every key is taken from its section, checked, and turned into
//! the validated [`Config`]; every problem is collected (naming the key and the value), and
//! what is left in a section is an unknown key.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use toml::{Table, Value};

use super::names::{
    node_restriction_allows, validate_dns_label, validate_dns_subdomain, validate_label_value, validate_qualified_name,
};
use super::*;
use crate::quantity::Threshold;

mod limits;

impl Config {
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
        let mut resources = Section::take(&mut root, "resources", &mut errs);
        let mut security = Section::take(&mut root, "security", &mut errs);
        let mut volumes = Section::take(&mut root, "volumes", &mut errs);
        let mut static_pods = Section::take(&mut root, "static", &mut errs);
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

        let kubeconfig = cluster.path("kubeconfig", &mut errs);
        let server = cluster.server("server", &mut errs);
        let cluster_cfg = ClusterConfig {
            configured: kubeconfig.is_some() || server.is_some() || cluster.had("kubeconfig") || cluster.had("server"),
            kubeconfig: kubeconfig.unwrap_or_else(|| PathBuf::from("/etc/vks/kubeconfig")),
            server,
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
            anonymous_auth: kubelet.boolean("anonymous_auth", &mut errs).unwrap_or(false),
            healthz_anonymous: kubelet.boolean("healthz_anonymous", &mut errs).unwrap_or(true),
            max_connections: kubelet.integer("max_connections", 16, 1_000_000, &mut errs).map_or(4096, |v| v as usize),
            max_connections_per_client: kubelet
                .integer("max_connections_per_client", 1, 1_000_000, &mut errs)
                .map_or(1024, |v| v as usize),
            max_streams_per_client: kubelet
                .integer("max_streams_per_client", 1, 1_000_000, &mut errs)
                .map_or(512, |v| v as usize),
            tls_handshake_timeout: kubelet
                .duration("tls_handshake_timeout", &mut errs)
                .unwrap_or(std::time::Duration::from_secs(10)),
            idle_timeout: kubelet.duration("idle_timeout", &mut errs).unwrap_or(std::time::Duration::from_secs(90)),
            streaming_idle_timeout: kubelet
                .duration("streaming_idle_timeout", &mut errs)
                .unwrap_or(std::time::Duration::from_secs(4 * 3600)),
            max_header_bytes: kubelet
                .bytes("max_header_bytes", &mut errs)
                .map_or(64 << 10, |b| usize::try_from(b).unwrap_or(usize::MAX)),
            max_body_bytes: kubelet.bytes("max_body_bytes", &mut errs).unwrap_or(1 << 20),
            websocket_streaming: kubelet.boolean("websocket_streaming", &mut errs).unwrap_or(true),
            exec_helpers: kubelet.boolean("exec_helpers", &mut errs).unwrap_or(true),
            exec_helper_idle: kubelet
                .duration("exec_helper_idle", &mut errs)
                .unwrap_or(std::time::Duration::from_secs(120)),
        };
        if kubelet_cfg.max_header_bytes < 8192 {
            errs.push(format!(
                "kubelet.max_header_bytes: {} is below the minimum of 8192 bytes",
                kubelet_cfg.max_header_bytes
            ));
        }
        if kubelet_cfg.tls_cert_file.is_some() != kubelet_cfg.tls_key_file.is_some() {
            errs.push("kubelet.tls_cert_file and kubelet.tls_key_file: set both or neither".to_owned());
        }
        kubelet.finish(&mut errs);

        let state_dir = paths.path("state_dir", &mut errs).unwrap_or_else(|| PathBuf::from("/var/lib/vks"));
        let paths_cfg = PathsConfig {
            pod_dir: paths.path("pod_dir", &mut errs).unwrap_or_else(|| state_dir.join("pods")),
            run_dir: paths.path("run_dir", &mut errs).unwrap_or_else(|| PathBuf::from("/run/vks/pods")),
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
        let resources_cfg = resources.resources(&mut errs);
        resources.finish(&mut errs);
        let security_cfg = security.security(&mut errs);
        security.finish(&mut errs);

        let volumes_cfg = VolumesConfig { host_path_allow: volumes.paths("host_path_allow", &mut errs) };
        volumes.finish(&mut errs);
        let static_cfg = StaticConfig {
            manifest_dir: static_pods.path("manifest_dir", &mut errs).unwrap_or_else(|| DEFAULT_MANIFEST_DIR.into()),
        };
        static_pods.finish(&mut errs);

        if errs.0.is_empty() {
            Ok(Config {
                node: node_cfg,
                cluster: cluster_cfg,
                kubelet: kubelet_cfg,
                paths: paths_cfg,
                log: log_cfg,
                eviction: eviction_cfg,
                images: images_cfg,
                resources: resources_cfg,
                security: security_cfg,
                volumes: volumes_cfg,
                static_pods: static_cfg,
            })
        } else {
            Err(errs.0)
        }
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

    fn boolean(&mut self, key: &str, errs: &mut Errors) -> Option<bool> {
        match self.get(key)? {
            Value::Boolean(b) => Some(b),
            other => {
                errs.push(format!("{}: expected true or false, got {}", self.key(key), show(&other)));
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

    /// An array of absolute, normalized paths (none when absent).
    fn paths(&mut self, key: &str, errs: &mut Errors) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for (i, v) in self.array(key, "an array of absolute paths", errs).into_iter().enumerate() {
            let name = format!("{}[{i}]", self.key(key));
            match v.as_str() {
                Some(s) if s.starts_with('/') && !s.split('/').any(|c| c == ".." || c == ".") => {
                    let norm: PathBuf = std::path::Path::new(s).components().collect();
                    out.push(norm);
                }
                Some(s) => errs.push(format!("{name}: {s:?} is not an absolute path without '.' or '..'")),
                None => errs.push(format!("{name}: expected a path, got {}", show(&v))),
            }
        }
        out
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
            Some(Value::String(t)) => match crate::token::Token::parse(&t) {
                Ok(_) => Some(TokenSource::Inline(crate::token::Secret::new(t.trim()))),
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

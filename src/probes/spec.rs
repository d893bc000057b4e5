//! What a probe or a lifecycle handler asks for, resolved from the pod spec with the kubelet's
//! defaults and rules (pure): the action (exec, HTTP GET, TCP, gRPC, sleep) with its port looked
//! up by name and its host defaulted to the pod's IP, and a probe's timing and thresholds.

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, LifecycleHandler, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The three probes of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// Restarts the container when it fails.
    Liveness,
    /// Decides whether the container is ready.
    Readiness,
    /// Holds the other probes back until it succeeds; restarts the container when it fails.
    Startup,
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        })
    }
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS without certificate verification (as the kubelet).
    Https,
}

/// An HTTP GET, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGet {
    /// Scheme.
    pub scheme: Scheme,
    /// Host to connect to (the pod's IP unless the spec names one).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path, possibly with a query.
    pub path: String,
    /// Headers in the spec's order (a `Host` header sets the request's host).
    pub headers: Vec<(String, String)>,
}

impl HttpGet {
    /// The URL requested.
    pub fn url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let path = if self.path.starts_with('/') { self.path.clone() } else { format!("/{}", self.path) };
        format!("{scheme}://{host}:{}{path}", self.port)
    }
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run a command in the container's context.
    Exec(Vec<String>),
    /// An HTTP GET.
    Http(HttpGet),
    /// Open (and close) a TCP connection.
    Tcp {
        /// Host.
        host: String,
        /// Port.
        port: u16,
    },
    /// The grpc.health.v1 `Check` call (plaintext).
    Grpc {
        /// Host (the pod's IP).
        host: String,
        /// Port.
        port: u16,
        /// The service name in the request (empty: the server as a whole).
        service: String,
    },
    /// Wait (lifecycle handlers only).
    Sleep(Duration),
}

impl Action {
    /// A short description for logs and messages.
    pub fn describe(&self) -> String {
        match self {
            Action::Exec(cmd) => format!("exec {cmd:?}"),
            Action::Http(h) => format!("GET {}", h.url()),
            Action::Tcp { host, port } => format!("tcp {}", join_host_port(host, *port)),
            Action::Grpc { host, port, service } => format!("grpc {} service {service:?}", join_host_port(host, *port)),
            Action::Sleep(d) => format!("sleep {}s", d.as_secs()),
        }
    }
}

/// `host:port`, with brackets around an IPv6 address.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// A probe's timing and thresholds, with the API's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSpec {
    /// Which probe.
    pub kind: ProbeKind,
    /// `initialDelaySeconds` (0).
    pub initial_delay: Duration,
    /// `periodSeconds` (10).
    pub period: Duration,
    /// `timeoutSeconds` (1).
    pub timeout: Duration,
    /// `successThreshold` (1; always 1 for liveness and startup probes).
    pub success_threshold: u32,
    /// `failureThreshold` (3).
    pub failure_threshold: u32,
    /// Probe-level `terminationGracePeriodSeconds`: the grace period when this probe's failure
    /// kills the container (instead of the pod's).
    pub termination_grace: Option<Duration>,
    /// The probe as written, resolved at each run (its port may name a container port).
    pub probe: Probe,
}

fn secs(v: Option<i32>, default: i32, min: i32) -> Duration {
    Duration::from_secs(v.unwrap_or(default).max(min) as u64)
}

fn count(v: Option<i32>, default: i32) -> u32 {
    v.unwrap_or(default).max(1) as u32
}

impl ProbeSpec {
    /// The probe `p` of kind `kind`.
    pub fn of(kind: ProbeKind, p: &Probe) -> ProbeSpec {
        let success_threshold = match kind {
            ProbeKind::Readiness => count(p.success_threshold, 1),
            _ => 1,
        };
        ProbeSpec {
            kind,
            initial_delay: secs(p.initial_delay_seconds, 0, 0),
            period: secs(p.period_seconds, 10, 1),
            timeout: secs(p.timeout_seconds, 1, 1),
            success_threshold,
            failure_threshold: count(p.failure_threshold, 3),
            termination_grace: p.termination_grace_period_seconds.map(|s| Duration::from_secs(s.max(1) as u64)),
            probe: p.clone(),
        }
    }

    /// The container's probes, startup first.
    pub fn of_container(c: &Container) -> Vec<ProbeSpec> {
        [
            (ProbeKind::Startup, &c.startup_probe),
            (ProbeKind::Liveness, &c.liveness_probe),
            (ProbeKind::Readiness, &c.readiness_probe),
        ]
        .into_iter()
        .filter_map(|(k, p)| p.as_ref().map(|p| ProbeSpec::of(k, p)))
        .collect()
    }
}

/// The port an action names: a number, or the name of one of the container's ports (or a number
/// written as a string), as the kubelet's `extractPort`.
pub fn port(p: &IntOrString, c: &Container) -> Result<u16, String> {
    let n = match p {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            match c.ports.iter().flatten().find(|cp| cp.name.as_deref() == Some(name.as_str())) {
                Some(cp) => cp.container_port,
                None => name.parse::<i32>().map_err(|_| {
                    format!("port {name:?} is not a number and no port of container {} has that name", c.name)
                })?,
            }
        }
    };
    u16::try_from(n).ok().filter(|&n| n > 0).ok_or_else(|| format!("invalid port number: {n}"))
}

fn http(h: &HTTPGetAction, c: &Container, pod_ip: &str) -> Result<HttpGet, String> {
    let scheme = match h.scheme.as_deref().unwrap_or("HTTP").to_ascii_uppercase().as_str() {
        "HTTP" => Scheme::Http,
        "HTTPS" => Scheme::Https,
        other => return Err(format!("httpGet.scheme {other:?} is neither HTTP nor HTTPS")),
    };
    if let Some(p) = h.protocol.as_deref().filter(|p| *p != "HTTP/1.1") {
        return Err(format!("httpGet.protocol {p:?} is not supported by vks (only HTTP/1.1)"));
    }
    Ok(HttpGet {
        scheme,
        host: h.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| pod_ip.to_owned()),
        port: port(&h.port, c)?,
        path: h.path.clone().unwrap_or_default(),
        headers: h.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect(),
    })
}

/// The action of probe `p` of container `c` (whose pod's IP is `pod_ip`).
pub fn probe_action(p: &Probe, c: &Container, pod_ip: &str) -> Result<Action, String> {
    if let Some(e) = &p.exec {
        return Ok(Action::Exec(e.command.clone().unwrap_or_default()));
    }
    if let Some(h) = &p.http_get {
        return http(h, c, pod_ip).map(Action::Http);
    }
    if let Some(t) = &p.tcp_socket {
        let host = t.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| pod_ip.to_owned());
        return Ok(Action::Tcp { host, port: port(&t.port, c)? });
    }
    if let Some(g) = &p.grpc {
        if let Some(m) = g.mode.as_deref().filter(|m| *m != "Plaintext") {
            return Err(format!("grpc.mode {m:?} is not supported by vks (only Plaintext)"));
        }
        let port = u16::try_from(g.port).ok().filter(|&n| n > 0).ok_or(format!("invalid port number: {}", g.port))?;
        return Ok(Action::Grpc { host: pod_ip.to_owned(), port, service: g.service.clone().unwrap_or_default() });
    }
    Err("the probe has no action (exec, httpGet, tcpSocket or grpc)".into())
}

/// The action of lifecycle handler `h` of container `c`.
pub fn handler_action(h: &LifecycleHandler, c: &Container, pod_ip: &str) -> Result<Action, String> {
    if let Some(e) = &h.exec {
        return Ok(Action::Exec(e.command.clone().unwrap_or_default()));
    }
    if let Some(g) = &h.http_get {
        return http(g, c, pod_ip).map(Action::Http);
    }
    if let Some(s) = &h.sleep {
        return Ok(Action::Sleep(Duration::from_secs(s.seconds.max(0) as u64)));
    }
    if h.tcp_socket.is_some() {
        return Err("tcpSocket is not supported as a lifecycle handler".into());
    }
    Err("the handler has no action (exec, httpGet or sleep)".into())
}

/// Why a container's probes or handlers cannot be run by vks, naming the field (checked when the
/// container is created, so that such a pod waits with a clear reason instead of failing probes).
pub fn unsupported(c: &Container) -> Vec<String> {
    let mut why = Vec::new();
    for (name, p) in [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        let Some(p) = p else { continue };
        if let Some(m) = p.grpc.as_ref().and_then(|g| g.mode.as_deref()).filter(|m| *m != "Plaintext") {
            why.push(format!("{name}.grpc.mode {m:?} is not supported by vks (only Plaintext)"));
        }
        if let Some(pr) = p.http_get.as_ref().and_then(|h| h.protocol.as_deref()).filter(|p| *p != "HTTP/1.1") {
            why.push(format!("{name}.httpGet.protocol {pr:?} is not supported by vks (only HTTP/1.1)"));
        }
    }
    let hooks = c.lifecycle.as_ref();
    for (name, h) in
        [("postStart", hooks.and_then(|l| l.post_start.as_ref())), ("preStop", hooks.and_then(|l| l.pre_stop.as_ref()))]
    {
        let Some(h) = h else { continue };
        if let Some(pr) = h.http_get.as_ref().and_then(|h| h.protocol.as_deref()).filter(|p| *p != "HTTP/1.1") {
            why.push(format!("lifecycle.{name}.httpGet.protocol {pr:?} is not supported by vks (only HTTP/1.1)"));
        }
        if h.tcp_socket.is_some() {
            why.push(format!("lifecycle.{name}.tcpSocket is not supported (as by the kubelet)"));
        }
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(json: serde_json::Value) -> Container {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn defaults_are_the_apis() {
        let p: Probe = serde_json::from_value(serde_json::json!({"exec": {"command": ["true"]}})).unwrap();
        let s = ProbeSpec::of(ProbeKind::Liveness, &p);
        assert_eq!(
            (s.initial_delay, s.period, s.timeout, s.success_threshold, s.failure_threshold, s.termination_grace),
            (Duration::ZERO, Duration::from_secs(10), Duration::from_secs(1), 1, 3, None)
        );
        let p: Probe =
            serde_json::from_value(serde_json::json!({"exec": {"command": ["true"]}, "successThreshold": 3})).unwrap();
        assert_eq!(ProbeSpec::of(ProbeKind::Liveness, &p).success_threshold, 1);
        assert_eq!(ProbeSpec::of(ProbeKind::Readiness, &p).success_threshold, 3);
    }

    #[test]
    fn ports_are_numbers_or_names_of_container_ports() {
        let c = container(serde_json::json!({"name": "web", "ports": [{"name": "http", "containerPort": 8080}]}));
        assert_eq!(port(&IntOrString::Int(80), &c), Ok(80));
        assert_eq!(port(&IntOrString::String("http".into()), &c), Ok(8080));
        assert_eq!(port(&IntOrString::String("8081".into()), &c), Ok(8081));
        assert_eq!(
            port(&IntOrString::String("admin".into()), &c),
            Err("port \"admin\" is not a number and no port of container web has that name".into())
        );
        assert_eq!(port(&IntOrString::Int(70000), &c), Err("invalid port number: 70000".into()));
    }

    #[test]
    fn http_gets_default_to_the_pod_ip() {
        let c = container(serde_json::json!({"name": "web", "ports": [{"name": "http", "containerPort": 8080}]}));
        let p: Probe = serde_json::from_value(serde_json::json!({"httpGet": {"port": "http", "path": "healthz?x=1",
            "httpHeaders": [{"name": "Host", "value": "example.org"}]}}))
        .unwrap();
        let Action::Http(h) = probe_action(&p, &c, "10.77.0.2").unwrap() else { panic!() };
        assert_eq!(h.url(), "http://10.77.0.2:8080/healthz?x=1");
        assert_eq!(h.headers, [("Host".to_owned(), "example.org".to_owned())]);
        let p: Probe = serde_json::from_value(serde_json::json!({"httpGet": {"port": 443, "scheme": "HTTPS",
            "host": "::1", "path": "/"}}))
        .unwrap();
        let Action::Http(h) = probe_action(&p, &c, "10.77.0.2").unwrap() else { panic!() };
        assert_eq!(h.url(), "https://[::1]:443/");
        let p: Probe = serde_json::from_value(serde_json::json!({"grpc": {"port": 9090}})).unwrap();
        assert_eq!(
            probe_action(&p, &c, "10.77.0.2"),
            Ok(Action::Grpc { host: "10.77.0.2".into(), port: 9090, service: String::new() })
        );
    }

    #[test]
    fn what_vks_cannot_run_is_named() {
        let c = container(serde_json::json!({"name": "c",
            "livenessProbe": {"grpc": {"port": 1, "mode": "TLS"}},
            "lifecycle": {"preStop": {"tcpSocket": {"port": 1}}}}));
        assert_eq!(
            unsupported(&c),
            [
                "livenessProbe.grpc.mode \"TLS\" is not supported by vks (only Plaintext)",
                "lifecycle.preStop.tcpSocket is not supported (as by the kubelet)"
            ]
        );
    }
}

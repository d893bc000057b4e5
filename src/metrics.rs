//! vks's own Prometheus metrics, served on the kubelet port at `/metrics`: what an operator
//! graphs about the node agent itself (the pods' resource usage is `/metrics/resource`).
//!
//! One process-wide set of handles ([`metrics`]); code that measures something updates its
//! handle, the kubelet API encodes them all ([`encode`]). Updating a handle is a few atomic
//! operations and never fails.
//!
//! | metric | type | labels | updated by |
//! |---|---|---|---|
//! | `vks_pods` | gauge | `phase` | the pod manager |
//! | `vks_units` | gauge | `state` (systemd ActiveState) | the pod manager |
//! | `vks_unit_start_duration_seconds` | histogram | | the pod worker: start job queued → main process running |
//! | `vks_status_patch_duration_seconds` | histogram | | the pod worker: one pod status patch |
//! | `vks_dbus_signal_lag_seconds` | histogram | | the D-Bus signal loop: systemd's state-change timestamp → signal handled |
//! | `vks_image_install_duration_seconds` | histogram | `outcome` (success, failure) | `images::debian` |
//! | `vks_image_install_failures_total` | counter | | `images::debian` |
//! | `vks_api_requests_total` | counter | `method` | the API client layer (`api.rs`) |
//! | `vks_api_responses_total` | counter | `code` | the API client layer |
//! | `vks_api_request_errors_total` | counter | | the API client layer: no response (transport) |
//! | `vks_kubelet_api_requests_total` | counter | `path`, `code` | the kubelet API |
//! | `vks_kubelet_api_connections` | gauge | | the kubelet API: open connections |
//! | `vks_kubelet_api_refused_connections_total` | counter | `reason` | the kubelet API |

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`encode`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A single label `name=value`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// Pod phase: Pending, Running, Succeeded, Failed, Unknown.
    pub phase: String,
}

/// The state of a container's unit as vks reports it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// waiting, running or terminated (the container state the unit's run gives).
    pub state: String,
}

/// An HTTP method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    /// GET, POST, PATCH, ...
    pub method: String,
}

/// An HTTP status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The status code, e.g. "200".
    pub code: String,
}

/// How something ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// success or failure.
    pub outcome: String,
}

/// A kubelet API request: the endpoint (first path element) and the status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    /// `healthz`, `containerLogs`, `stats`, `metrics`, `pods`, `exec`, ... or `other`.
    pub path: String,
    /// The status code.
    pub code: String,
}

/// Why a connection was closed before it was served.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `max_connections`, `max_connections_per_client`, `tls_handshake_timeout`, `tls_error`.
    pub reason: String,
}

/// Every metric vks exports.
pub struct Metrics {
    registry: Registry,
    /// Pods on this node by phase (set by the pod manager).
    pub pods: Family<PhaseLabel, Gauge>,
    /// vks's units by ActiveState (set by the pod manager).
    pub units: Family<StateLabel, Gauge>,
    /// From queuing a unit's start job to its main process running.
    pub unit_start_duration: Histogram,
    /// One pod status patch, request to response.
    pub status_patch_duration: Histogram,
    /// From systemd's timestamp of a unit state change to vks handling the signal.
    pub dbus_signal_lag: Histogram,
    /// One image installation (apt-get or a .deb download and install).
    pub image_install_duration: Family<OutcomeLabel, Histogram>,
    /// Image installations that failed.
    pub image_install_failures: Counter,
    /// Requests sent to the API server, by method.
    pub api_requests: Family<MethodLabel, Counter>,
    /// Responses from the API server, by status code.
    pub api_responses: Family<CodeLabel, Counter>,
    /// Requests that got no response (connection refused, timeout, TLS error).
    pub api_request_errors: Counter,
    /// Requests served on the kubelet port.
    pub kubelet_api_requests: Family<EndpointLabel, Counter>,
    /// Open connections on the kubelet port.
    pub kubelet_api_connections: Gauge,
    /// Connections to the kubelet port closed before being served.
    pub kubelet_api_refused: Family<ReasonLabel, Counter>,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("vks");
        let m = Metrics {
            pods: Family::default(),
            units: Family::default(),
            unit_start_duration: latency_histogram(),
            status_patch_duration: latency_histogram(),
            dbus_signal_lag: latency_histogram(),
            image_install_duration: Family::new_with_constructor(|| {
                // 0.5 s .. ~34 min
                Histogram::new(exponential_buckets(0.5, 2.0, 13))
            }),
            image_install_failures: Counter::default(),
            api_requests: Family::default(),
            api_responses: Family::default(),
            api_request_errors: Counter::default(),
            kubelet_api_requests: Family::default(),
            kubelet_api_connections: Gauge::default(),
            kubelet_api_refused: Family::default(),
            registry: Registry::default(),
        };
        registry.register("pods", "Pods bound to this node, by phase", m.pods.clone());
        registry.register("units", "vks's container units, by systemd ActiveState", m.units.clone());
        registry.register(
            "unit_start_duration_seconds",
            "From queuing a container unit's start job to its main process running",
            m.unit_start_duration.clone(),
        );
        registry.register(
            "status_patch_duration_seconds",
            "Duration of one pod status patch",
            m.status_patch_duration.clone(),
        );
        registry.register(
            "dbus_signal_lag_seconds",
            "From systemd's timestamp of a unit state change to vks handling its signal",
            m.dbus_signal_lag.clone(),
        );
        registry.register(
            "image_install_duration_seconds",
            "Duration of one image installation (apt-get or .deb), by outcome",
            m.image_install_duration.clone(),
        );
        registry.register(
            "image_install_failures",
            "Image installations that failed",
            m.image_install_failures.clone(),
        );
        registry.register("api_requests", "Requests sent to the API server, by method", m.api_requests.clone());
        registry.register("api_responses", "Responses from the API server, by status code", m.api_responses.clone());
        registry.register(
            "api_request_errors",
            "API server requests that got no response (connection, timeout, TLS)",
            m.api_request_errors.clone(),
        );
        registry.register(
            "kubelet_api_requests",
            "Requests served on the kubelet port, by endpoint and status code",
            m.kubelet_api_requests.clone(),
        );
        registry.register(
            "kubelet_api_connections",
            "Open connections on the kubelet port",
            m.kubelet_api_connections.clone(),
        );
        registry.register(
            "kubelet_api_refused_connections",
            "Connections to the kubelet port closed before being served, by reason",
            m.kubelet_api_refused.clone(),
        );
        Metrics { registry, ..m }
    }

    /// A pod's reported phase changed from `old` to `new` (`None`: not counted).
    pub fn pod_phase(&self, old: Option<&str>, new: Option<&str>) {
        if old == new {
            return;
        }
        if let Some(o) = old {
            self.pods.get_or_create(&PhaseLabel { phase: o.to_owned() }).dec();
        }
        if let Some(n) = new {
            self.pods.get_or_create(&PhaseLabel { phase: n.to_owned() }).inc();
        }
    }

    /// A container unit's reported state changed from `old` to `new` (`None`: not counted).
    pub fn unit_state(&self, old: Option<&str>, new: Option<&str>) {
        if old == new {
            return;
        }
        if let Some(o) = old {
            self.units.get_or_create(&StateLabel { state: o.to_owned() }).dec();
        }
        if let Some(n) = new {
            self.units.get_or_create(&StateLabel { state: n.to_owned() }).inc();
        }
    }

    /// Records one image installation.
    pub fn image_installed(&self, took: Duration, ok: bool) {
        let outcome = if ok { "success" } else { "failure" };
        self.image_install_duration
            .get_or_create(&OutcomeLabel { outcome: outcome.into() })
            .observe(took.as_secs_f64());
        if !ok {
            self.image_install_failures.inc();
        }
    }

    /// Records a request sent to the API server.
    pub fn api_request(&self, method: &str) {
        self.api_requests.get_or_create(&MethodLabel { method: method.to_owned() }).inc();
    }

    /// Records the API server's answer to a request: its status code, or `None` for no answer.
    pub fn api_response(&self, code: Option<u16>) {
        match code {
            Some(c) => {
                self.api_responses.get_or_create(&CodeLabel { code: c.to_string() }).inc();
            }
            None => {
                self.api_request_errors.inc();
            }
        }
    }

    /// Records a request served on the kubelet port.
    pub fn kubelet_request(&self, path: &str, code: u16) {
        self.kubelet_api_requests
            .get_or_create(&EndpointLabel { path: endpoint(path).into(), code: code.to_string() })
            .inc();
    }

    /// Records a connection closed before it was served.
    pub fn kubelet_refused(&self, reason: &str) {
        self.kubelet_api_refused.get_or_create(&ReasonLabel { reason: reason.to_owned() }).inc();
    }
}

/// The endpoint label of a kubelet API path: its first element when it is one vks serves,
/// else `other` (so that random paths cannot grow the label set).
fn endpoint(path: &str) -> &'static str {
    const KNOWN: [&str; 10] = [
        "healthz",
        "containerLogs",
        "stats",
        "metrics",
        "pods",
        "exec",
        "attach",
        "portForward",
        "runningpods",
        "logs",
    ];
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    KNOWN.into_iter().find(|k| *k == first).unwrap_or("other")
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metric handles.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Every metric in the Prometheus text format ([`CONTENT_TYPE`]).
pub fn encode() -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &metrics().registry) {
        log::warn!("encoding the metrics: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_family_with_the_vks_prefix() {
        let m = metrics();
        m.api_request("GET");
        m.api_response(Some(200));
        m.api_response(None);
        m.image_installed(Duration::from_secs(3), false);
        m.kubelet_request("/containerLogs/ns/p/c", 200);
        m.kubelet_request("/no/such", 404);
        m.pods.get_or_create(&PhaseLabel { phase: "Running".into() }).set(2);
        m.units.get_or_create(&StateLabel { state: "active".into() }).set(3);
        let text = encode();
        for needle in [
            "vks_api_requests_total{method=\"GET\"}",
            "vks_api_responses_total{code=\"200\"}",
            "vks_api_request_errors_total",
            "vks_image_install_failures_total",
            "vks_image_install_duration_seconds_bucket{outcome=\"failure\",le=\"4\"}",
            "vks_kubelet_api_requests_total{path=\"containerLogs\",code=\"200\"}",
            "vks_kubelet_api_requests_total{path=\"other\",code=\"404\"}",
            "vks_pods{phase=\"Running\"} 2",
            "# TYPE vks_unit_start_duration_seconds histogram",
            "# TYPE vks_dbus_signal_lag_seconds histogram",
            "# TYPE vks_status_patch_duration_seconds histogram",
            "vks_units{state=\"active\"} 3",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        assert!(!text.contains("# EOF"), "Prometheus text, not OpenMetrics");
    }
}

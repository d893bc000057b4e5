//! `/metrics/resource`: the kubelet's resource metrics in the Prometheus text format, with the
//! names and labels metrics-server reads (`node_cpu_usage_seconds_total`,
//! `node_memory_working_set_bytes`, `container_cpu_usage_seconds_total`,
//! `container_memory_working_set_bytes`, `container_start_time_seconds`, plus the pod sums),
//! each sample stamped with the time of the reading in ms.
//!
//! metrics-server drops a whole pod when one of its containers has no CPU or no memory value,
//! so only containers with both are written.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use super::Sample;

/// The `Content-Type` of the output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A label value, escaped for the text format.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The metrics of `s`.
pub fn render(s: &Sample) -> String {
    let ts = s.time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let mut out = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} [STABLE] {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v} {ts}");
        }
    };
    let containers: Vec<(String, &super::ContainerSample)> = s
        .pods
        .iter()
        .flat_map(|p| {
            p.containers.iter().map(move |c| {
                (
                    format!(
                        "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
                        esc(&c.name),
                        esc(&p.namespace),
                        esc(&p.name)
                    ),
                    c,
                )
            })
        })
        .filter(|(_, c)| c.usage.cpu_ns.is_some() && c.usage.working_set_bytes.is_some())
        .collect();
    let pods: Vec<(String, super::cgroup::Usage)> = s
        .pods
        .iter()
        .map(|p| (format!("{{namespace=\"{}\",pod=\"{}\"}}", esc(&p.namespace), esc(&p.name)), p.usage()))
        .collect();
    let ns = |v: Option<u64>| v.unwrap_or(0) as f64 / 1e9;
    family(
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
        &containers.iter().map(|(l, c)| (l.clone(), ns(c.usage.cpu_ns))).collect::<Vec<_>>(),
    );
    family(
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
        &containers.iter().map(|(l, c)| (l.clone(), c.usage.working_set_bytes.unwrap_or(0) as f64)).collect::<Vec<_>>(),
    );
    family(
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds",
        &containers.iter().map(|(l, c)| (l.clone(), secs(c.start))).collect::<Vec<_>>(),
    );
    family(
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
        &[(String::new(), s.node.cpu_ns as f64 / 1e9)],
    );
    family(
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
        &[(String::new(), s.node.memory_total.saturating_sub(s.node.memory_available) as f64)],
    );
    family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
        &pods.iter().filter(|(_, u)| u.cpu_ns.is_some()).map(|(l, u)| (l.clone(), ns(u.cpu_ns))).collect::<Vec<_>>(),
    );
    family(
        "pod_memory_working_set_bytes",
        "gauge",
        "Current working set of the pod in bytes",
        &pods.iter().filter_map(|(l, u)| u.working_set_bytes.map(|w| (l.clone(), w as f64))).collect::<Vec<_>>(),
    );
    let _ = writeln!(
        out,
        "# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise"
    );
    let _ = writeln!(out, "# TYPE resource_scrape_error gauge");
    let _ = writeln!(out, "resource_scrape_error 0");
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::cgroup::Usage;
    use super::super::{ContainerSample, NodeSample, PodSample};
    use super::*;

    #[test]
    fn renders_what_metrics_server_reads() {
        let t = UNIX_EPOCH + Duration::from_millis(1_714_557_600_250);
        let full = Usage { cpu_ns: Some(1_500_000_000), working_set_bytes: Some(4096), ..Usage::default() };
        let s = Sample {
            time: t,
            node: NodeSample {
                start: t,
                cpu_ns: 2_000_000_000,
                memory_total: 1000,
                memory_available: 400,
                memory_usage: 0,
                memory_rss: 0,
                fs: (0, 0, 0, 0),
                pids: (0, 0),
            },
            pods: vec![PodSample {
                namespace: "ns".into(),
                name: "p\"q".into(),
                uid: "u".into(),
                containers: vec![
                    ContainerSample { name: "app".into(), start: UNIX_EPOCH + Duration::from_secs(10), usage: full },
                    ContainerSample { name: "nocpu".into(), start: t, usage: Usage { cpu_ns: None, ..full } },
                ],
                dir: None,
            }],
        };
        let text = render(&s);
        let l = "{container=\"app\",namespace=\"ns\",pod=\"p\\\"q\"}";
        for line in [
            format!("container_cpu_usage_seconds_total{l} 1.5 1714557600250"),
            format!("container_memory_working_set_bytes{l} 4096 1714557600250"),
            format!("container_start_time_seconds{l} 10 1714557600250"),
            "node_cpu_usage_seconds_total 2 1714557600250".to_owned(),
            "node_memory_working_set_bytes 600 1714557600250".to_owned(),
            "pod_cpu_usage_seconds_total{namespace=\"ns\",pod=\"p\\\"q\"} 1.5 1714557600250".to_owned(),
            "# TYPE container_cpu_usage_seconds_total counter".to_owned(),
            "resource_scrape_error 0".to_owned(),
        ] {
            assert!(text.lines().any(|x| x == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("nocpu"), "a container without CPU would make metrics-server drop the pod");
    }
}

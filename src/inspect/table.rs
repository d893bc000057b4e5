//! The table `vks pods` prints (pure).

use super::{ContainerView, Listing, PodView};
use crate::unit::ContainerKind;

/// An age the way kubectl prints it: `45s`, `12m`, `3h`, `2d`.
pub fn age(micros: u64) -> String {
    let s = micros / 1_000_000;
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn containers(p: &PodView) -> String {
    let name = |c: &ContainerView| match c.kind {
        Some(ContainerKind::Init) => format!("{} (init)", c.name),
        Some(ContainerKind::Sidecar) => format!("{} (sidecar)", c.name),
        Some(ContainerKind::Ephemeral) => format!("{} (ephemeral)", c.name),
        _ => c.name.clone(),
    };
    let list: Vec<String> = p.containers.iter().map(|c| format!("{}: {}", name(c), c.state())).collect();
    if list.is_empty() { "-".into() } else { list.join(", ") }
}

fn ready(p: &PodView) -> String {
    let apps: Vec<&ContainerView> =
        p.containers.iter().filter(|c| matches!(c.kind, None | Some(ContainerKind::App))).collect();
    let ready = if p.status.is_some() {
        apps.iter().filter(|c| c.ready).count()
    } else {
        apps.iter().filter(|c| c.state() == "Running").count()
    };
    format!("{ready}/{}", apps.len())
}

/// The listing as a table (pods, then the manifests that are not run); `now` in µs since the
/// epoch.
pub fn render(l: &Listing, now: u64) -> String {
    let mut rows =
        vec![["NAMESPACE", "NAME", "READY", "PHASE", "RESTARTS", "AGE", "CONTAINERS", "SOURCE"].map(String::from)];
    for p in &l.pods {
        let restarts: i32 = p.containers.iter().map(|c| c.restarts).sum();
        let source = p.manifest.as_ref().map_or_else(|| "api".to_owned(), |f| f.display().to_string());
        rows.push([
            p.namespace.clone(),
            p.name.clone(),
            ready(p),
            p.phase(),
            restarts.to_string(),
            p.started_usec().map_or_else(|| "-".into(), |t| age(now.saturating_sub(t))),
            containers(p),
            source,
        ]);
    }
    let mut out = String::new();
    if l.pods.is_empty() {
        out.push_str(&format!("No pods on node {}.\n", l.node));
    } else {
        let widths: Vec<usize> = (0..8).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
        for r in &rows {
            let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
    }
    if !l.invalid.is_empty() {
        out.push_str(&format!("\nManifests in {} that are not run:\n", l.manifest_dir.display()));
        for i in &l.invalid {
            out.push_str(&format!("  {}: {}\n", i.file.display(), i.error));
        }
    }
    if l.daemon_active == Some(false) {
        out.push_str("\nvks.service is not running: these pods are not being looked after (systemctl start vks).\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::static_pods::Invalid;
    use crate::systemd::{ActiveState, UnitStatus};

    #[test]
    fn ages_like_kubectl() {
        assert_eq!(age(5_000_000), "5s");
        assert_eq!(age(600_000_000), "10m");
        assert_eq!(age(3 * 3600 * 1_000_000), "3h");
        assert_eq!(age(3 * 86_400 * 1_000_000), "3d");
    }

    #[test]
    fn pods_and_invalid_manifests_are_listed() {
        let running = UnitStatus {
            active_state: ActiveState::Active,
            main_pid: 42,
            started_usec: 1_000_000,
            ..UnitStatus::default()
        };
        let status: k8s_openapi::api::core::v1::PodStatus = serde_json::from_value(serde_json::json!({
            "phase": "Running", "startTime": "1970-01-01T00:00:01Z",
            "containerStatuses": [{"name": "uptimed", "image": "uptimed", "imageID": "", "ready": true,
              "restartCount": 2, "state": {"running": {}}}]
        }))
        .unwrap();
        let l = Listing {
            node: "n1".into(),
            pods: vec![
                PodView {
                    namespace: "default".into(),
                    name: "uptimed-n1".into(),
                    uid: "u1".into(),
                    manifest: Some("/etc/vks/manifests/uptimed.yaml".into()),
                    containers: vec![ContainerView {
                        name: "uptimed".into(),
                        kind: Some(ContainerKind::App),
                        unit_status: Some(running),
                        restarts: 2,
                        ready: true,
                        recorded: Some("Running".into()),
                        ..ContainerView::default()
                    }],
                    status: Some(status),
                },
                PodView {
                    namespace: "default".into(),
                    name: "later-n1".into(),
                    uid: "u2".into(),
                    containers: vec![ContainerView { name: "c".into(), ..ContainerView::default() }],
                    ..PodView::default()
                },
            ],
            invalid: vec![Invalid { file: "/etc/vks/manifests/bad.yaml".into(), error: "not valid YAML".into() }],
            manifest_dir: "/etc/vks/manifests".into(),
            daemon_active: Some(false),
        };
        let out = render(&l, 61_000_000);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["NAMESPACE", "NAME", "READY", "PHASE", "RESTARTS", "AGE", "CONTAINERS", "SOURCE"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "default",
                "uptimed-n1",
                "1/1",
                "Running",
                "2",
                "60s",
                "uptimed:",
                "Running",
                "/etc/vks/manifests/uptimed.yaml"
            ]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["default", "later-n1", "0/1", "Pending", "0", "-", "c:", "Waiting", "api"]
        );
        assert!(
            out.contains(
                "Manifests in /etc/vks/manifests that are not run:\n  /etc/vks/manifests/bad.yaml: not valid YAML\n"
            ),
            "{out}"
        );
        assert!(out.contains("vks.service is not running"), "{out}");
        let empty = Listing { node: "n1".into(), ..Listing::default() };
        assert_eq!(render(&empty, 0), "No pods on node n1.\n");
    }
}

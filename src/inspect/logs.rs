//! `vks logs POD [-c CONTAINER] [-f]`: a container's output, from the journal. Every container
//! unit carries `LogExtraFields=VKS_POD_UID=<uid>` and `VKS_CONTAINER=<name>`, so its lines (of
//! every run, also after the unit was removed) are found by those fields; `journalctl` reads
//! them (rotation, compression and following are its business).

use anyhow::{Result, bail};

use super::{Listing, PodView, gather};
use crate::config::Config;
use crate::unit::ContainerKind;

/// What to show.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// The pod: `NAME` or `NAMESPACE/NAME`.
    pub pod: String,
    /// Its namespace, if not in `pod`.
    pub namespace: Option<String>,
    /// The container; the first app container when not given.
    pub container: Option<String>,
    /// Keep printing new lines.
    pub follow: bool,
    /// Only the last N lines.
    pub tail: Option<u64>,
}

/// The pod and container `req` names among the node's pods, and a note for stderr when the
/// container was chosen for the user. Errors name the pod or container and what exists.
pub fn resolve<'a>(listing: &'a Listing, req: &Request) -> Result<(&'a PodView, String, Option<String>), String> {
    let (ns, name) = match req.pod.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (req.namespace.as_deref(), req.pod.as_str()),
    };
    let found: Vec<&PodView> =
        listing.pods.iter().filter(|p| p.name == name && ns.is_none_or(|ns| p.namespace == ns)).collect();
    let pod = match found.as_slice() {
        [] => {
            let in_ns = ns.map(|n| format!(" in namespace {n}")).unwrap_or_default();
            return Err(format!("no pod {name:?}{in_ns} on node {} (vks pods lists them)", listing.node));
        }
        [p] => *p,
        many => {
            let spaces: Vec<&str> = many.iter().map(|p| p.namespace.as_str()).collect();
            return Err(format!(
                "pod {name:?} exists in namespaces {}: say which with -n NAMESPACE or NAMESPACE/{name}",
                spaces.join(", ")
            ));
        }
    };
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    match &req.container {
        Some(c) if names.contains(&c.as_str()) => Ok((pod, c.clone(), None)),
        Some(c) => Err(format!(
            "pod {}/{} has no container {c:?} (its containers: {})",
            pod.namespace,
            pod.name,
            names.join(", ")
        )),
        None => {
            let apps: Vec<&str> = pod
                .containers
                .iter()
                .filter(|c| matches!(c.kind, None | Some(ContainerKind::App)))
                .map(|c| c.name.as_str())
                .collect();
            let Some(first) = apps.first().or(names.first()) else {
                return Err(format!("pod {}/{} has no containers", pod.namespace, pod.name));
            };
            let note = (names.len() > 1)
                .then(|| format!("Defaulted container {first:?} out of: {} (choose with -c)", names.join(", ")));
            Ok((pod, (*first).to_owned(), note))
        }
    }
}

/// The `journalctl` arguments for a container's lines.
pub fn journalctl_args(uid: &str, container: &str, follow: bool, tail: Option<u64>) -> Vec<String> {
    let mut args = vec!["--no-pager".to_owned(), "--output=cat".to_owned(), "--all".to_owned()];
    args.push(match tail {
        Some(n) => format!("--lines={n}"),
        None => "--lines=all".to_owned(),
    });
    if follow {
        args.push("--follow".to_owned());
    }
    args.push(format!("VKS_POD_UID={uid}"));
    args.push(format!("VKS_CONTAINER={container}"));
    args
}

/// `vks logs`: runs journalctl for the container; returns its exit code.
pub async fn logs(config: &Config, req: &Request) -> Result<i32> {
    let listing = gather(config).await?;
    let (pod, container, note) = match resolve(&listing, req) {
        Ok(r) => r,
        Err(e) => bail!("{e}"),
    };
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let args = journalctl_args(&pod.uid, &container, req.follow, req.tail);
    let status = tokio::process::Command::new("journalctl")
        .args(&args)
        .status()
        .await
        .map_err(|e| anyhow::anyhow!("running journalctl: {e}"))?;
    Ok(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::super::ContainerView;
    use super::*;

    fn listing() -> Listing {
        let c = |name: &str, kind| ContainerView { name: name.into(), kind: Some(kind), ..ContainerView::default() };
        let pod = |ns: &str, name: &str, uid: &str, containers| PodView {
            namespace: ns.into(),
            name: name.into(),
            uid: uid.into(),
            containers,
            ..PodView::default()
        };
        Listing {
            node: "n1".into(),
            pods: vec![
                pod(
                    "default",
                    "web-n1",
                    "u1",
                    vec![c("setup", ContainerKind::Init), c("app", ContainerKind::App), c("log", ContainerKind::App)],
                ),
                pod("default", "twin", "u2", vec![c("c", ContainerKind::App)]),
                pod("ops", "twin", "u3", vec![c("c", ContainerKind::App)]),
            ],
            ..Listing::default()
        }
    }

    fn req(pod: &str, container: Option<&str>) -> Request {
        Request { pod: pod.into(), container: container.map(String::from), ..Request::default() }
    }

    #[test]
    fn pods_and_containers_are_found_or_named_in_the_error() {
        let l = listing();
        let (p, c, note) = resolve(&l, &req("web-n1", None)).unwrap();
        assert_eq!((p.uid.as_str(), c.as_str()), ("u1", "app"));
        assert_eq!(note.unwrap(), "Defaulted container \"app\" out of: setup, app, log (choose with -c)");
        let (_, c, note) = resolve(&l, &req("web-n1", Some("setup"))).unwrap();
        assert_eq!((c.as_str(), note), ("setup", None));
        assert_eq!(
            resolve(&l, &req("web-n1", Some("db"))).unwrap_err(),
            "pod default/web-n1 has no container \"db\" (its containers: setup, app, log)"
        );
        assert_eq!(resolve(&l, &req("nope", None)).unwrap_err(), "no pod \"nope\" on node n1 (vks pods lists them)");
        assert!(resolve(&l, &req("twin", None)).unwrap_err().contains("exists in namespaces default, ops"));
        assert_eq!(resolve(&l, &req("ops/twin", None)).unwrap().0.uid, "u3");
        let r = Request { namespace: Some("default".into()), ..req("twin", None) };
        assert_eq!(resolve(&l, &r).unwrap().0.uid, "u2");
        assert_eq!(
            resolve(&l, &req("kube-system/twin", None)).unwrap_err(),
            "no pod \"twin\" in namespace kube-system on node n1 (vks pods lists them)"
        );
    }

    #[test]
    fn journalctl_matches_the_unit_fields() {
        assert_eq!(
            journalctl_args("u1", "app", true, Some(5)),
            ["--no-pager", "--output=cat", "--all", "--lines=5", "--follow", "VKS_POD_UID=u1", "VKS_CONTAINER=app"]
        );
        assert_eq!(journalctl_args("u1", "app", false, None)[3], "--lines=all");
    }
}

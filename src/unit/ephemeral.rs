//! Ephemeral containers (`kubectl debug POD --image=... [--target=CONTAINER]`) as the containers
//! vks runs for them: pure functions from the pod spec.
//!
//! Without a target, an ephemeral container is a container like any other, made of its own
//! fields. With `targetContainerName` it runs in the target's context, as `kubectl exec` into the
//! target would: the target's user and groups (its securityContext, unless the ephemeral
//! container brings one), environment, `envFrom`, working directory and volume mounts, followed
//! by what the ephemeral container adds (its env after the target's, its mounts replacing the
//! target's at the same path). On a host without PID namespaces, "sharing the target's process
//! namespace" means seeing its processes: the same user sees them through `ProtectProc=`.
//! What the API server forbids for ephemeral containers (probes, lifecycle, ports, resources)
//! is dropped, as is what belongs to the target's own run (its probes, hooks, resize policy and
//! resources: the debug container counts against the pod's slice only).

use k8s_openapi::api::core::v1::{Container, EphemeralContainer, PodSpec};

/// The containers vks runs for the pod's ephemeral containers, in the order they were added.
pub fn containers(spec: &PodSpec) -> Vec<Container> {
    spec.ephemeral_containers.iter().flatten().map(|e| as_container(spec, e)).collect()
}

/// `a` then `b`; `None` when both are empty.
fn joined<T: Clone>(a: &Option<Vec<T>>, b: &Option<Vec<T>>) -> Option<Vec<T>> {
    let all: Vec<T> = a.iter().flatten().chain(b.iter().flatten()).cloned().collect();
    (!all.is_empty()).then_some(all)
}

/// The container vks runs for ephemeral container `e` of the pod `spec`.
pub fn as_container(spec: &PodSpec, e: &EphemeralContainer) -> Container {
    let own = Container {
        name: e.name.clone(),
        image: e.image.clone(),
        image_pull_policy: e.image_pull_policy.clone(),
        command: e.command.clone(),
        args: e.args.clone(),
        env: e.env.clone(),
        env_from: e.env_from.clone(),
        working_dir: e.working_dir.clone(),
        volume_mounts: e.volume_mounts.clone(),
        volume_devices: e.volume_devices.clone(),
        security_context: e.security_context.clone(),
        stdin: e.stdin,
        stdin_once: e.stdin_once,
        tty: e.tty,
        termination_message_path: e.termination_message_path.clone(),
        termination_message_policy: e.termination_message_policy.clone(),
        ..Container::default()
    };
    let Some(target) = e
        .target_container_name
        .as_deref()
        .and_then(|t| spec.containers.iter().chain(spec.init_containers.iter().flatten()).find(|c| c.name == t))
    else {
        return own;
    };
    let own_paths: Vec<&str> = own.volume_mounts.iter().flatten().map(|m| m.mount_path.as_str()).collect();
    let target_mounts: Vec<_> = target
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| !own_paths.contains(&m.mount_path.as_str()))
        .cloned()
        .collect();
    Container {
        env: joined(&target.env, &own.env),
        env_from: joined(&target.env_from, &own.env_from),
        working_dir: own.working_dir.clone().or_else(|| target.working_dir.clone()),
        volume_mounts: joined(&Some(target_mounts), &own.volume_mounts),
        volume_devices: own.volume_devices.clone(),
        security_context: own.security_context.clone().or_else(|| target.security_context.clone()),
        ..own
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PodSpec {
        serde_json::from_value(serde_json::json!({
            "containers": [{"name": "app", "image": "uptimed", "workingDir": "/srv",
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                "envFrom": [{"configMapRef": {"name": "cfg"}}],
                "securityContext": {"runAsUser": 1000},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "cfg", "mountPath": "/etc/app"}],
                "livenessProbe": {"exec": {"command": ["true"]}},
                "lifecycle": {"preStop": {"sleep": {"seconds": 1}}},
                "resources": {"limits": {"memory": "64Mi"}}}],
            "ephemeralContainers": [
                {"name": "dbg", "image": "/bin/sh", "targetContainerName": "app", "stdin": true,
                 "command": ["sh"], "env": [{"name": "B", "value": "debug"}],
                 "volumeMounts": [{"name": "other", "mountPath": "/etc/app"}]},
                {"name": "plain", "image": "/bin/sh", "command": ["sh", "-c", "id"]},
                {"name": "root", "image": "/bin/sh", "targetContainerName": "app",
                 "securityContext": {"runAsUser": 0}}]
        }))
        .unwrap()
    }

    #[test]
    fn a_target_lends_its_context_and_keeps_its_own_run() {
        let s = spec();
        let c = &containers(&s)[0];
        assert_eq!((c.name.as_str(), c.image.as_deref(), c.stdin), ("dbg", Some("/bin/sh"), Some(true)));
        assert_eq!(c.command.as_deref(), Some(&["sh".to_owned()][..]));
        let env: Vec<(&str, Option<&str>)> =
            c.env.iter().flatten().map(|e| (e.name.as_str(), e.value.as_deref())).collect();
        assert_eq!(env, [("A", Some("1")), ("B", Some("2")), ("B", Some("debug"))], "its own env comes last and wins");
        assert_eq!(c.env_from.as_ref().unwrap().len(), 1);
        assert_eq!(c.working_dir.as_deref(), Some("/srv"));
        assert_eq!(c.security_context.as_ref().unwrap().run_as_user, Some(1000));
        let mounts: Vec<(&str, &str)> =
            c.volume_mounts.iter().flatten().map(|m| (m.name.as_str(), m.mount_path.as_str())).collect();
        assert_eq!(mounts, [("data", "/data"), ("other", "/etc/app")]);
        assert!(c.liveness_probe.is_none() && c.lifecycle.is_none() && c.resources.is_none());
    }

    #[test]
    fn without_a_target_it_is_its_own_and_its_security_context_wins() {
        let s = spec();
        let all = containers(&s);
        assert_eq!(all.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["dbg", "plain", "root"]);
        let plain = &all[1];
        assert!(plain.env.is_none() && plain.working_dir.is_none() && plain.security_context.is_none());
        assert!(plain.volume_mounts.is_none());
        assert_eq!(all[2].security_context.as_ref().unwrap().run_as_user, Some(0));
        assert_eq!(all[2].working_dir.as_deref(), Some("/srv"));
    }
}

//! Data reaching containers, end to end (issue 12): env from ConfigMaps, Secrets, the downward
//! API, resources and services, as the process sees it; missing references and the pod
//! starting once they exist; Secrets kept out of unit files; the injected service-account
//! token used against the real API server and refreshed; nothing of a deleted pod left after a
//! vks crash. Volumes and updates are in `data_volumes.rs`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::support::*;

pub const LONG: Duration = Duration::from_secs(90);

/// A pod pinned to `node`.
pub fn pod(name: &str, node: &Node, spec: serde_json::Value) -> serde_json::Value {
    let mut spec = spec;
    spec["nodeName"] = json!(node.name);
    spec["terminationGracePeriodSeconds"] = json!(3);
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name, "labels": { "app": name } }, "spec": spec })
}

/// Creates or replaces a ConfigMap (server-side apply).
pub async fn put_config_map(client: &kube::Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: Some(data.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
        ..Default::default()
    };
    let mut v = serde_json::to_value(&cm).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("ConfigMap");
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::apply("vks-e2e").force(), &Patch::Apply(v))
        .await
        .expect("apply ConfigMap");
}

/// Creates or replaces a Secret (server-side apply).
pub async fn put_secret(client: &kube::Client, ns: &str, name: &str, data: &[(&str, &[u8])]) {
    let s = Secret {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: Some(data.iter().map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec()))).collect()),
        ..Default::default()
    };
    let mut v = serde_json::to_value(&s).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::apply("vks-e2e").force(), &Patch::Apply(v))
        .await
        .expect("apply Secret");
}

/// Waits for the namespace's `default` ServiceAccount (pods cannot be created before it).
pub async fn wait_default_sa(client: &kube::Client, ns: &str) {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    wait_for("the default ServiceAccount", Duration::from_secs(30), async || {
        api.get_opt("default").await.map_err(|e| e.to_string())?.map(|_| ()).ok_or("not yet".into())
    })
    .await;
}

/// What a container wrote to its journal (`journalctl -u UNIT -o cat`).
pub fn journal(node: &Node, unit: &str) -> String {
    node.exec(&["journalctl", "-u", unit, "-o", "cat", "--no-pager"])
}

/// Waits until the unit's journal has a line starting with `prefix`; returns the rest of it.
pub async fn wait_line(node: &Node, unit: &str, prefix: &str, timeout: Duration) -> String {
    wait_for(&format!("{unit} to log {prefix:?}"), timeout, async || {
        let j = journal(node, unit);
        j.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::to_owned)
            .ok_or_else(|| j.chars().rev().take(400).collect())
    })
    .await
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s.trim()).unwrap_or_else(|e| panic!("base64 {s:?}: {e}"))
}

/// The waiting reason and message of the pod's first container.
pub fn waiting(p: &Pod) -> Option<(String, String)> {
    let w = p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.waiting.clone()?;
    Some((w.reason.unwrap_or_default(), w.message.unwrap_or_default()))
}

/// Waits until the pod's first container waits with `reason` and a message containing `needle`.
pub async fn wait_waiting(client: &kube::Client, ns: &str, name: &str, reason: &str, needle: &str) -> String {
    wait_for(&format!("{name} waiting with {reason} ({needle})"), LONG, async || {
        let p = get_pod(client, ns, name).await.ok_or("gone")?;
        match waiting(&p) {
            Some((r, m)) if r == reason && m.contains(needle) => Ok(m),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// `reason|message` of the events about a pod.
pub fn events(ns: &str, pod: &str) -> Vec<String> {
    let out = kubectl(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        &format!("involvedObject.name={pod}"),
        "-o",
        "jsonpath={range .items[*]}{.reason}|{.message}{\"\\n\"}{end}",
    ]);
    out.lines().map(str::to_owned).collect()
}

/// Prints the environment (NUL-separated, base64) and the arguments (one base64 line each).
const PRINT_ENV: &str = "printf 'ENV %s\\n' \"$(env -0 | base64 -w0)\"; \
    for a in \"$@\"; do printf 'ARG %s\\n' \"$(printf '%s' \"$a\" | base64 -w0)\"; done; exec sleep 3600";

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn env_comes_from_config_maps_secrets_fields_resources_and_services() {
    let node = Node::up("data-env");
    let ns = Namespace::new("data-env");
    let client = client().await;
    wait_default_sa(&client, &ns.name).await;
    let password = "p@ss w0rd \"$HOME\" `x` \\ %n\nline2";
    put_config_map(&client, &ns.name, "app-env", &[("mode", "fast"), ("LEVEL", "3"), ("bad-key", "x")]).await;
    put_secret(&client, &ns.name, "db", &[("user", b"admin"), ("password", password.as_bytes())]).await;
    let svc: Service =
        serde_json::from_value(json!({"metadata": {"name": "my-db"}, "spec": {"ports": [{"port": 5432}]}})).unwrap();
    let svc = Api::<Service>::namespaced(client.clone(), &ns.name).create(&Default::default(), &svc).await.unwrap();
    let cluster_ip = svc.spec.unwrap().cluster_ip.unwrap();
    let spec = json!({ "containers": [{
        "name": "app", "image": "/bin/sh",
        "command": ["/bin/sh", "-c", PRINT_ENV, "argv0", "--password=$(PW)", "$(MODE)-$(DB_user)", "$$(MODE)"],
        "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}},
        "envFrom": [{"configMapRef": {"name": "app-env"}}, {"secretRef": {"name": "db"}, "prefix": "DB_"},
                    {"configMapRef": {"name": "absent", "optional": true}}],
        "env": [
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "app-env", "key": "mode"}}},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
            {"name": "DSN", "value": "postgres://$(DB_user):$(PW)@db"},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": true}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory", "divisor": "1Mi"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
            {"name": "ESC", "value": "$$(MODE) $(UNDEFINED)"}
        ]
    }]});
    create_pod(&client, &ns.name, pod("env", &node, spec)).await;
    wait_phase(&client, &ns.name, "env", "Running", LONG).await;
    let unit = unit_name(&ns.name, "env", "app");
    let env_b64 = wait_line(&node, &unit, "ENV ", LONG).await;
    let env: BTreeMap<String, String> = base64_decode(&env_b64)
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    eprintln!("env of the container: {:?}", env.keys().collect::<Vec<_>>());
    let get = |k: &str| env.get(k).map(String::as_str);
    assert_eq!(get("MODE"), Some("fast"));
    assert_eq!(get("LEVEL"), Some("3"));
    assert_eq!(get("DB_user"), Some("admin"));
    assert_eq!(get("DB_password"), Some(password), "byte for byte through the environment file");
    assert_eq!(get("PW"), Some(password));
    assert_eq!(get("DSN"), Some(format!("postgres://admin:{password}@db").as_str()));
    assert_eq!(get("NODE"), Some(node.name.as_str()));
    assert_eq!(get("POD_IP"), Some(node.ip().as_str()));
    assert_eq!((get("MEM"), get("CPU")), (Some("64"), Some("250")));
    assert_eq!(get("ESC"), Some("$(MODE) $(UNDEFINED)"));
    assert_eq!(get("OPT"), None, "an optional missing Secret sets nothing");
    assert_eq!(get("bad-key"), None);
    assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("127.0.0.1"), "the API server as the node reaches it");
    assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("6443"));
    assert_eq!(get("KUBERNETES_PORT"), Some("tcp://127.0.0.1:6443"));
    assert_eq!(get("MY_DB_SERVICE_HOST"), Some(cluster_ip.as_str()));
    assert_eq!(get("MY_DB_PORT_5432_TCP"), Some(format!("tcp://{cluster_ip}:5432").as_str()));
    let args: Vec<String> = journal(&node, &unit)
        .lines()
        .filter_map(|l| l.strip_prefix("ARG "))
        .map(|a| String::from_utf8(base64_decode(a)).unwrap())
        .collect();
    assert_eq!(args, [format!("--password={password}"), "fast-admin".into(), "$(MODE)".into()]);
    // The secret is in neither the unit file nor what systemd shows to everyone.
    let text = node.exec(&["cat", &format!("/run/systemd/system/{unit}")]);
    assert!(!text.contains("p@ss"), "{text}");
    assert!(text.contains("\"--password=${PW}\""), "{text}");
    assert!(!node.unit_prop(&unit, "Environment").contains("p@ss"));
    let env_file =
        text.lines().find_map(|l| l.strip_prefix("EnvironmentFile=")).expect("an EnvironmentFile").to_owned();
    assert!(env_file.starts_with("/run/vks/pods/"), "{env_file}");
    assert_eq!(node.exec(&["stat", "-c", "%a %U", &env_file]).trim(), "600 root");
    assert_eq!(node.exec(&["stat", "-c", "%a %U", "/run/vks/pods"]).trim(), "700 root");
    assert_eq!(node.exec(&["stat", "-f", "-c", "%T", &env_file]).trim(), "tmpfs");
    assert!(
        events(&ns.name, "env")
            .iter()
            .any(|e| e.starts_with("InvalidEnvironmentVariableNames|") && e.contains("bad-key")),
        "{:?}",
        events(&ns.name, "env")
    );

    // Missing references: the pod waits, saying which; it starts by itself once they exist.
    let spec = json!({ "containers": [{ "name": "app", "image": "/bin/sh", "command": ["/bin/sh", "-c", PRINT_ENV],
        "env": [{"name": "LATER", "valueFrom": {"configMapKeyRef": {"name": "later", "key": "k"}}}] }]});
    create_pod(&client, &ns.name, pod("waits", &node, spec)).await;
    wait_waiting(&client, &ns.name, "waits", "CreateContainerConfigError", "configmap \"later\" not found").await;
    let spec = json!({ "containers": [{ "name": "app", "image": "/bin/sh", "command": ["/bin/sh", "-c", PRINT_ENV],
        "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "db", "key": "nope"}}}] }]});
    create_pod(&client, &ns.name, pod("nokey", &node, spec)).await;
    wait_waiting(
        &client,
        &ns.name,
        "nokey",
        "CreateContainerConfigError",
        &format!("couldn't find key nope in Secret {}/db", ns.name),
    )
    .await;
    assert!(events(&ns.name, "waits").iter().any(|e| e.contains("configmap \"later\" not found")));
    let created = Instant::now();
    put_config_map(&client, &ns.name, "later", &[("k", "arrived")]).await;
    wait_phase(&client, &ns.name, "waits", "Running", LONG).await;
    println!("the waiting pod ran {:.1}s after its ConfigMap was created", created.elapsed().as_secs_f64());
    assert!(created.elapsed() < within(Duration::from_secs(8)), "woken by the watch, not a slow retry");
    let env = wait_line(&node, &unit_name(&ns.name, "waits", "app"), "ENV ", LONG).await;
    assert!(String::from_utf8_lossy(&base64_decode(&env)).contains("LATER=arrived"));
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn the_injected_token_identifies_the_pod_to_the_api_server() {
    let node = Node::up("data-token");
    let ns = Namespace::new("data-token");
    let client = client().await;
    wait_default_sa(&client, &ns.name).await;
    let script = "T=/var/run/secrets/kubernetes.io/serviceaccount; \
        if [ ! -e $T/token ]; then echo NOTOKEN; exec sleep 3600; fi; \
        echo \"NS $(cat $T/namespace)\"; echo \"MODE $(stat -L -c %a $T/token)\"; \
        printf 'SSR %s\\n' \"$(curl -sS --cacert $T/ca.crt -H \"Authorization: Bearer $(cat $T/token)\" \
          -H 'Content-Type: application/json' -X POST \
          -d '{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"SelfSubjectReview\"}' \
          https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/apis/authentication.k8s.io/v1/selfsubjectreviews \
          | base64 -w0)\"; exec sleep 3600";
    create_pod(
        &client,
        &ns.name,
        pod(
            "caller",
            &node,
            json!({"containers": [{"name": "c", "image": "/bin/sh", "command": ["/bin/sh", "-c", script]}]}),
        ),
    )
    .await;
    let p = get_pod(&client, &ns.name, "caller").await.unwrap();
    let vol =
        p.spec.as_ref().unwrap().volumes.iter().flatten().find(|v| v.name.starts_with("kube-api-access-")).cloned();
    assert!(vol.is_some(), "the API server injected the token volume");
    create_pod(
        &client,
        &ns.name,
        pod(
            "no-token",
            &node,
            json!({"automountServiceAccountToken": false,
        "containers": [{"name": "c", "image": "/bin/sh", "command": ["/bin/sh", "-c", script]}]}),
        ),
    )
    .await;
    wait_phase(&client, &ns.name, "caller", "Running", LONG).await;
    let unit = unit_name(&ns.name, "caller", "c");
    assert_eq!(wait_line(&node, &unit, "NS ", LONG).await, ns.name);
    assert_eq!(wait_line(&node, &unit, "MODE ", LONG).await, "644");
    let ssr: serde_json::Value = serde_json::from_slice(&base64_decode(&wait_line(&node, &unit, "SSR ", LONG).await))
        .unwrap_or_else(|e| panic!("SelfSubjectReview answer: {e}: {}", journal(&node, &unit)));
    println!("SelfSubjectReview from inside the pod: {}", ssr["status"]["userInfo"]);
    let user = &ssr["status"]["userInfo"];
    assert_eq!(user["username"], json!(format!("system:serviceaccount:{}:default", ns.name)), "{ssr}");
    assert_eq!(user["extra"]["authentication.kubernetes.io/pod-name"], json!(["caller"]), "{ssr}");
    assert_eq!(user["extra"]["authentication.kubernetes.io/pod-uid"], json!([p.metadata.uid.unwrap()]), "{ssr}");
    wait_phase(&client, &ns.name, "no-token", "Running", LONG).await;
    assert_eq!(wait_line(&node, &unit_name(&ns.name, "no-token", "c"), "NOTOKEN", LONG).await, "");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run (takes 8-9 minutes)"]
async fn a_short_lived_token_is_refreshed_at_80_percent_of_its_life() {
    let node = Node::up("data-refresh");
    let ns = Namespace::new("data-refresh");
    let client = client().await;
    wait_default_sa(&client, &ns.name).await;
    // 600 s is the shortest lifetime the API server allows; the kubelet refreshes at 480 s.
    let spec = json!({
        "automountServiceAccountToken": false,
        "volumes": [{"name": "tok", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 600, "audience": "vks-e2e"}}]}}],
        "containers": [{"name": "c", "image": "/bin/sh", "volumeMounts": [{"name": "tok", "mountPath": "/tok"}],
            "command": ["/bin/sh", "-c", "old=; while :; do t=$(sha256sum < /tok/token | cut -c1-16); \
                [ \"$t\" != \"$old\" ] && echo \"TOKEN $t $(date +%s)\"; old=$t; sleep 2; done"]}]});
    create_pod(&client, &ns.name, pod("refresh", &node, spec)).await;
    wait_phase(&client, &ns.name, "refresh", "Running", LONG).await;
    let unit = unit_name(&ns.name, "refresh", "c");
    let first = wait_line(&node, &unit, "TOKEN ", LONG).await;
    let started = Instant::now();
    let second = wait_for("the container to see a refreshed token", within(Duration::from_secs(560)), async || {
        let tokens: Vec<String> =
            journal(&node, &unit).lines().filter_map(|l| l.strip_prefix("TOKEN ")).map(str::to_owned).collect();
        if tokens.len() >= 2 { Ok(tokens[1].clone()) } else { Err(format!("{tokens:?}")) }
    })
    .await;
    let t = |l: &str| l.split(' ').nth(1).unwrap().parse::<i64>().unwrap();
    println!("token refreshed after {} s (first seen {first}, then {second})", t(&second) - t(&first));
    assert!(started.elapsed() > Duration::from_secs(400), "not refreshed much before 80 % of 600 s");
    assert!((t(&second) - t(&first)) <= 500, "refreshed at 80 % of 600 s");
}

#[tokio::test]
#[ignore = "needs the test cluster and systemd nodes: run tests/run"]
async fn nothing_of_a_pod_deleted_during_a_vks_crash_is_left() {
    let node = Node::up("data-crash");
    let ns = Namespace::new("data-crash");
    let client = client().await;
    wait_default_sa(&client, &ns.name).await;
    put_secret(&client, &ns.name, "s", &[("k", b"v")]).await;
    let spec = json!({
        "volumes": [{"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "4Mi"}}, {"name": "s", "secret": {"secretName": "s"}},
                    {"name": "disk", "emptyDir": {}}],
        "containers": [{"name": "c", "image": "/usr/bin/sleep", "args": ["3600"],
            "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
            "volumeMounts": [{"name": "mem", "mountPath": "/mem"}, {"name": "s", "mountPath": "/s"}, {"name": "disk", "mountPath": "/disk"}]}]});
    create_pod(&client, &ns.name, pod("doomed", &node, spec)).await;
    let p = wait_phase(&client, &ns.name, "doomed", "Running", LONG).await;
    let uid = p.metadata.uid.unwrap();
    let dirs = [format!("/var/lib/vks/pods/{uid}"), format!("/run/vks/pods/{uid}")];
    for d in &dirs {
        node.exec(&["test", "-d", d]);
    }
    assert!(
        node.exec(&["findmnt", "-n", "-o", "FSTYPE,OPTIONS", &format!("/run/vks/pods/{uid}/volumes/empty-dir/mem")])
            .contains("size=4096k")
    );
    // vks crashes (and stays down); meanwhile the pod is deleted, and a directory of an
    // earlier pod is left over.
    node.exec(&["systemctl", "kill", "-s", "SIGKILL", "vks"]);
    node.exec(&["systemctl", "stop", "vks"]);
    kubectl(&["delete", "pod", "doomed", "-n", &ns.name, "--grace-period=0", "--force"]);
    node.exec(&[
        "mkdir",
        "-p",
        "/var/lib/vks/pods/0f000000-dead-beef-0000-000000000000/volumes",
        "/run/vks/pods/0f000000-dead-beef-0000-000000000000/env",
    ]);
    node.exec(&["systemctl", "start", "vks"]);
    wait_for("the deleted pod's unit, files and mounts to be gone", LONG, async || {
        let left = node.sh(&format!(
            "ls /run/systemd/system | grep -E '^vks\\.|^vks-.*pod' | grep -v -e '^vks\\.slice$' -e '^vks-burstable\\.slice$' -e '^vks-besteffort\\.slice$' ; ls -d {} {} /var/lib/vks/pods/0f000000-* /run/vks/pods/0f000000-* 2>/dev/null; \
             findmnt -rn -o TARGET | grep /run/vks/pods || true",
            dirs[0], dirs[1]
        ));
        if left.trim().is_empty() { Ok(()) } else { Err(left) }
    })
    .await;
    println!("after the crash: {}", node.sh("ls -la /var/lib/vks/pods /run/vks/pods"));
}

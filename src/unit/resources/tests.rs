use super::*;

fn pod(spec: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "6a1f0c53-3b7e-4c2f-9d59-1f4b8a2e7c10"},
        "spec": spec
    }))
    .unwrap()
}

fn c(name: &str, resources: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"name": name, "image": "/bin/true", "resources": resources})
}

#[test]
fn quantities_in_every_notation() {
    let q = |s: &str| Quantity(s.into());
    assert_eq!(millis(&q("250m")), Some(250));
    assert_eq!(millis(&q("0.1")), Some(100));
    assert_eq!(millis(&q("1")), Some(1000));
    assert_eq!(millis(&q("1.5")), Some(1500));
    assert_eq!(millis(&q("2e3m")), Some(2000));
    assert_eq!(units(&q("64Mi")), Some(64 << 20));
    assert_eq!(units(&q("1.5Gi")), Some(3 << 29));
    assert_eq!(units(&q("1G")), Some(1_000_000_000));
    assert_eq!(units(&q("100k")), Some(100_000));
    assert_eq!(units(&q("0.5")), Some(1), "bytes round up as Value() does");
    assert_eq!(units(&q("lots")), None);
    assert_eq!(units(&q("-1")), None);
}

#[test]
fn the_kubelets_shares_as_systemd_weights() {
    assert_eq!(shares(None), 2);
    assert_eq!(shares(Some(250)), 256);
    assert_eq!(shares(Some(1000)), 1024);
    assert_eq!(shares(Some(1_000_000)), 262_144);
    // systemd writes weight × 1024 / 100 into cpu.shares on cgroup v1: the kubelet's value.
    for m in [100, 250, 500, 1000, 1500, 4000] {
        assert_eq!(weight(shares(Some(m))) * 1024 / 100, shares(Some(m)), "{m}m");
    }
    assert_eq!(weight(2), 1);
    assert_eq!(weight(262_144), 10_000);
}

#[test]
fn qos_classes_compare_quantities_not_strings() {
    let g = pod(serde_json::json!({"containers": [c("a", serde_json::json!({
        "limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m", "memory": "1024Mi"}}))]}));
    assert_eq!(qos(&g), Qos::Guaranteed);
    let only_limits = pod(serde_json::json!({"containers": [c("a", serde_json::json!({
        "limits": {"cpu": "500m", "memory": "128Mi"}}))]}));
    assert_eq!(qos(&only_limits), Qos::Guaranteed);
    let b = pod(serde_json::json!({"containers": [
        c("a", serde_json::json!({"limits": {"cpu": "1", "memory": "1Gi"}})),
        c("b", serde_json::json!({"requests": {"cpu": "100m"}}))]}));
    assert_eq!(qos(&b), Qos::Burstable);
    assert_eq!(qos(&pod(serde_json::json!({"containers": [c("a", serde_json::json!({}))]}))), Qos::BestEffort);
    // Pod-level resources decide alone when set.
    let pl = pod(serde_json::json!({"resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
        "containers": [c("a", serde_json::json!({"requests": {"cpu": "100m"}}))]}));
    assert_eq!(qos(&pl), Qos::Guaranteed);
}

#[test]
fn container_settings_and_slices() {
    let p = pod(serde_json::json!({"containers": [
        c("web-app", serde_json::json!({"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "250m", "memory": "32Mi"}})),
        c("side", serde_json::json!({"requests": {"cpu": "100m"}}))]}));
    let spec = p.spec.as_ref().unwrap();
    let l = plan(&p, &spec.containers[0]).unwrap();
    assert_eq!(l.qos, Qos::Burstable);
    assert_eq!(l.pod_slice, "vks-burstable-pod6a1f0c53_3b7e_4c2f_9d59_1f4b8a2e7c10.slice");
    assert_eq!(l.slice, "vks-burstable-pod6a1f0c53_3b7e_4c2f_9d59_1f4b8a2e7c10-web_app.slice");
    assert_eq!(
        l.unit_lines(),
        format!("Slice={}\nCPUWeight=25\nCPUQuota=50.00%\nMemoryMax=67108864\nMemoryLow=33554432\n", l.slice)
    );
    // The pod: shares of both requests, no limits since one container has none.
    assert_eq!(
        l.pod_settings,
        Settings { cpu_weight: 35, cpu_limit: None, memory_max: None, memory_low: Some(32 << 20) }
    );
    let tiny = pod(serde_json::json!({"containers": [c("a", serde_json::json!({"limits": {"cpu": "1m"}}))]}));
    assert_eq!(plan(&tiny, &tiny.spec.as_ref().unwrap().containers[0]).unwrap().settings.cpu_limit, Some(10));
    let odd = pod(serde_json::json!({"containers": [c("a", serde_json::json!({"limits": {"cpu": "1234m"}}))]}));
    assert!(plan(&odd, &odd.spec.as_ref().unwrap().containers[0]).unwrap().unit_lines().contains("CPUQuota=123.40%\n"));
}

#[test]
fn pod_totals_follow_the_kubelets_pod_cgroup() {
    // Init containers count with their maximum, sidecars with the apps; overhead is added.
    let p = pod(serde_json::json!({
        "overhead": {"cpu": "100m", "memory": "10Mi"},
        "initContainers": [
            c("init", serde_json::json!({"limits": {"cpu": "2", "memory": "512Mi"}})),
            {"name": "side", "image": "/bin/true", "restartPolicy": "Always", "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}}}],
        "containers": [c("a", serde_json::json!({"limits": {"cpu": "300m", "memory": "128Mi"}}))]}));
    let r = pod_resources(&p).unwrap();
    assert_eq!(r.limits.cpu, Some(2100));
    assert_eq!(r.limits.memory, Some((512 << 20) + (10 << 20)));
    assert_eq!(r.requests.cpu, Some(2100));
    let pl = pod(
        serde_json::json!({"resources": {"limits": {"memory": "1Gi"}}, "containers": [c("a", serde_json::json!({}))]}),
    );
    assert_eq!(pod_resources(&pl).unwrap().limits.memory, Some(1 << 30));
}

#[test]
fn unsupported_resources_are_refused_with_the_field() {
    let p = pod(serde_json::json!({"containers": [c("a", serde_json::json!({"limits": {"hugepages-2Mi": "4Mi"}}))]}));
    let e = plan(&p, &p.spec.as_ref().unwrap().containers[0]).unwrap_err();
    assert!(e.message.contains("resources.limits.hugepages-2Mi is not supported"), "{e}");
    let p = pod(serde_json::json!({"containers": [c("a", serde_json::json!({"limits": {"memory": "lots"}}))]}));
    let e = plan(&p, &p.spec.as_ref().unwrap().containers[0]).unwrap_err();
    assert_eq!(e.message, "container a: resources.limits.memory \"lots\" is not a valid quantity");
}

#[test]
fn slice_files_carry_the_owner() {
    let owner = SliceOwner { namespace: "ns".into(), pod: "p".into(), pod_uid: "u-1".into(), container: None };
    let f = slice_file("vks pod ns/p", &Settings { cpu_weight: 10, ..Settings::default() }, Some(&owner)).unwrap();
    assert!(f.contains("[Slice]\nCPUWeight=10\n"), "{f}");
    assert_eq!(slice_owner_uid(&f).as_deref(), Some("u-1"));
    assert_eq!(slice_owner_uid("[Slice]\nCPUWeight=1\n"), None);
    assert!(is_pod_slice("vks-burstable-podu_1.slice") && is_pod_slice("vks-podu_1-c.slice"));
    assert!(!is_pod_slice("vks.slice") && !is_pod_slice("vks-burstable.slice"));
    let node = node_slices(&NodeAllocatable { cpu: 1500, memory: 1 << 30, ..Default::default() }, Some(2 << 30));
    assert_eq!(node.len(), 3);
    assert!(node[0].1.contains("CPUWeight=150\nMemoryMax=2147483648\n"), "{}", node[0].1);
    assert!(node[2].1.contains("CPUWeight=1\n"));
}

#[test]
fn live_changes_go_through_the_loosest_settings_first() {
    let old = Settings { cpu_weight: 10, cpu_limit: Some(200), memory_max: Some(100), memory_low: None };
    let new = Settings { cpu_weight: 20, cpu_limit: Some(500), memory_max: Some(50), memory_low: Some(5) };
    let l = old.loosest(&new);
    assert_eq!(l, Settings { cpu_weight: 20, cpu_limit: Some(500), memory_max: Some(100), memory_low: Some(5) });
    let props = Settings::default().properties();
    assert!(props.contains(&("CPUQuotaPerSecUSec", u64::MAX)) && props.contains(&("MemoryMax", u64::MAX)));
    assert!(new.properties().contains(&("CPUQuotaPerSecUSec", 500_000)));
    assert!(SliceMemory { peak: 64 << 20, limit: 64 << 20 }.reached_limit());
    assert!(!SliceMemory { peak: 10 << 20, limit: 64 << 20 }.reached_limit());
}

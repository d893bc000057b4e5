use super::*;

fn pod(meta: serde_json::Value, spec: serde_json::Value) -> Pod {
    let mut m = serde_json::json!({"name": "p", "namespace": "ns", "uid": "6a1f0c53-3b7e-4c2f-9d59-1f4b8a2e7c10"});
    if let (Some(m), Some(extra)) = (m.as_object_mut(), meta.as_object()) {
        m.extend(extra.clone());
    }
    serde_json::from_value(serde_json::json!({"metadata": m, "spec": spec})).unwrap()
}

fn one(sc: serde_json::Value) -> Pod {
    pod(serde_json::json!({}), serde_json::json!({"containers": [{"name": "c", "securityContext": sc}]}))
}

fn plan_of(p: &Pod, base: &[(&str, &str)], policy: &NodePolicy) -> Result<Security, SpecError> {
    let base: Vec<(String, String)> = base.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    plan(p, &p.spec.as_ref().unwrap().containers[0], &base, policy)
}

fn get<'a>(s: &'a Security, k: &str) -> Option<&'a str> {
    s.lines.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
}

#[test]
fn the_default_profile_and_isolation() {
    let s = plan_of(&one(serde_json::json!({})), &[], &NodePolicy::default()).unwrap();
    for (k, v) in PROFILE {
        assert_eq!(get(&s, k), Some(*v), "{k}");
    }
    assert_eq!(get(&s, "ProtectProc"), Some("invisible"));
    let inaccessible = get(&s, "InaccessiblePaths").unwrap();
    for p in ["\"-/etc/vks\"", "\"-/var/lib/vks\"", "\"-/run/dbus/system_bus_socket\"", "\"-/run/systemd/private\""] {
        assert!(inaccessible.contains(p), "{inaccessible}");
    }
    let caps = get(&s, "CapabilityBoundingSet").unwrap();
    assert!(caps.contains("CAP_NET_BIND_SERVICE") && !caps.contains("CAP_KILL") && !caps.contains("CAP_SYS_ADMIN"));
    assert_eq!(get(&s, "PrivateIPC"), Some("yes"));
    assert_eq!(get(&s, "User"), None, "the image's user (root) as in Kubernetes");
    assert_eq!(s.summary, "default hardening profile");
}

#[test]
fn the_stricter_of_package_and_profile_wins() {
    let base = [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "read-only"),
        ("PrivateDevices", "no"),
        ("SystemCallFilter", "@system-service @mount"),
        ("RestrictAddressFamilies", "AF_UNIX"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE CAP_SYS_ADMIN"),
        ("User", "www-data"),
    ];
    let s = plan_of(&one(serde_json::json!({})), &base, &NodePolicy::default()).unwrap();
    assert_eq!(get(&s, "ProtectSystem"), Some("strict"));
    assert_eq!(get(&s, "ProtectHome"), Some("yes"));
    assert_eq!(get(&s, "PrivateDevices"), Some("yes"));
    // The package's lists stay (they name what its daemon needs) and are not overridden.
    assert_eq!(get(&s, "SystemCallFilter"), None);
    assert!(!s.replaced.contains("SystemCallFilter") && !s.replaced.contains("RestrictAddressFamilies"));
    // Bounding set: the intersection (no CAP_SYS_ADMIN from the package).
    assert_eq!(get(&s, "CapabilityBoundingSet"), Some("CAP_NET_BIND_SERVICE"));
    assert!(s.replaced.contains("CapabilityBoundingSet") && s.replaced.contains("ProtectSystem"));
    assert!(!s.replaced.contains("User"));
    assert_eq!(s.user.as_deref(), Some("www-data"));
}

#[test]
fn explicit_fields_relax_the_package() {
    let base =
        [("NoNewPrivileges", "yes"), ("SystemCallFilter", "@system-service"), ("CapabilityBoundingSet", "CAP_CHOWN")];
    let p = one(serde_json::json!({"allowPrivilegeEscalation": true, "seccompProfile": {"type": "Unconfined"},
        "capabilities": {"add": ["NET_ADMIN"]}}));
    let s = plan_of(&p, &base, &NodePolicy::default()).unwrap();
    assert!(s.replaced.contains("NoNewPrivileges") && get(&s, "NoNewPrivileges").is_none());
    assert!(s.replaced.contains("SystemCallFilter") && get(&s, "SystemCallFilter").is_none());
    assert_eq!(get(&s, "CapabilityBoundingSet"), Some("CAP_CHOWN CAP_NET_ADMIN"));
}

#[test]
fn security_context_fields() {
    let p = pod(
        serde_json::json!({}),
        serde_json::json!({"securityContext": {"runAsUser": 1000, "fsGroup": 2000, "supplementalGroups": [3000]},
        "containers": [{"name": "c", "securityContext": {"runAsGroup": 1500, "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}]}),
    );
    let s = plan_of(&p, &[("User", "daemon"), ("DynamicUser", "yes")], &NodePolicy::default()).unwrap();
    assert_eq!(get(&s, "User"), Some("1000"));
    assert_eq!(get(&s, "Group"), Some("1500"));
    assert_eq!(get(&s, "SupplementaryGroups"), Some("2000 3000"));
    assert_eq!(get(&s, "ProtectSystem"), Some("strict"));
    assert_eq!(get(&s, "NoNewPrivileges"), Some("yes"));
    assert_eq!(get(&s, "CapabilityBoundingSet"), Some("CAP_NET_BIND_SERVICE"));
    // A non-root user holds an added capability as an ambient one.
    assert_eq!(get(&s, "AmbientCapabilities"), Some("CAP_NET_BIND_SERVICE"));
    assert!(s.replaced.contains("User") && s.replaced.contains("DynamicUser"));
    assert_eq!(s.ids, Ids { user: Some(1000), groups: vec![1500, 2000, 3000] });
    assert_eq!((s.group, s.supplementary_groups.clone()), (Some(1500), vec![2000, 3000]));
}

#[test]
fn run_as_non_root() {
    let e = plan_of(&one(serde_json::json!({"runAsNonRoot": true, "runAsUser": 0})), &[], &NodePolicy::default());
    assert!(e.unwrap_err().message.contains("container's runAsUser breaks non-root policy"));
    let e = plan_of(&one(serde_json::json!({"runAsNonRoot": true})), &[("User", "root")], &NodePolicy::default());
    assert!(e.unwrap_err().message.contains("runAsNonRoot and image will run as root"));
    // Nobody names a user: a user allocated for the pod.
    let s = plan_of(&one(serde_json::json!({"runAsNonRoot": true})), &[], &NodePolicy::default()).unwrap();
    assert_eq!(get(&s, "DynamicUser"), Some("yes"));
    assert_eq!(get(&s, "User"), Some("vks-6a1f0c533b7e4c2f9d591f4b8a2"));
    // A named user is checked against the node's user database when the container starts.
    let s = plan_of(&one(serde_json::json!({"runAsNonRoot": true})), &[("User", "daemon")], &NodePolicy::default())
        .unwrap();
    assert_eq!(s.non_root_name.as_deref(), Some("daemon"));
    assert!(check_non_root(&s, "c", |_| Some(1)).is_ok());
    assert!(check_non_root(&s, "c", |_| Some(0)).unwrap_err().message.contains("is root (UID 0)"));
    assert!(check_non_root(&s, "c", |_| None).unwrap_err().message.contains("does not exist"));
}

#[test]
fn user_names_by_annotation() {
    let ann = |v: &str| serde_json::json!({"annotations": {USER_ANNOTATION: v}});
    let spec = serde_json::json!({"containers": [{"name": "web"}, {"name": "side"}]});
    let p = pod(ann("www-data"), spec.clone());
    let s = plan(&p, &p.spec.as_ref().unwrap().containers[1], &[], &NodePolicy::default()).unwrap();
    assert_eq!(get(&s, "User"), Some("www-data"));
    let p = pod(ann("web=www-data, side=nobody"), spec.clone());
    let s = plan(&p, &p.spec.as_ref().unwrap().containers[1], &[], &NodePolicy::default()).unwrap();
    assert_eq!(get(&s, "User"), Some("nobody"));
    let p = pod(ann("x\n[Service]"), spec);
    let e = plan(&p, &p.spec.as_ref().unwrap().containers[0], &[], &NodePolicy::default()).unwrap_err();
    assert!(e.message.contains("is not a user name"), "{e}");
}

#[test]
fn privileged_and_unconfined_pods_get_the_host() {
    let p = one(serde_json::json!({"privileged": true}));
    let s = plan_of(&p, &[("ProtectSystem", "full")], &NodePolicy::default()).unwrap();
    assert!(get(&s, "InaccessiblePaths").is_none() && get(&s, "CapabilityBoundingSet").is_none());
    assert!(!s.replaced.contains("ProtectSystem"), "the package's own settings stay");
    assert_eq!(s.summary, "host (privileged)");
    let denied = NodePolicy { allow_privileged: false, ..NodePolicy::default() };
    assert!(plan_of(&p, &[], &denied).unwrap_err().message.contains("not allowed on this node"));
    let open = NodePolicy { unconfined_namespaces: vec!["ns".into()], ..NodePolicy::default() };
    let s = plan_of(&one(serde_json::json!({})), &[], &open).unwrap();
    assert!(get(&s, "InaccessiblePaths").is_none() && get(&s, "ProtectHome").is_none());
}

#[test]
fn hardening_by_node_and_by_annotation() {
    let off = NodePolicy { hardening: false, ..NodePolicy::default() };
    let s = plan_of(&one(serde_json::json!({})), &[], &off).unwrap();
    assert!(get(&s, "ProtectHome").is_none() && get(&s, "InaccessiblePaths").is_some());
    let p = pod(
        serde_json::json!({"annotations": {HARDENING_DISABLE_ANNOTATION: "ProtectHome, SystemCallFilter"}}),
        serde_json::json!({"containers": [{"name": "c"}]}),
    );
    let s = plan_of(&p, &[], &NodePolicy::default()).unwrap();
    assert!(get(&s, "ProtectHome").is_none() && get(&s, "SystemCallFilter").is_none());
    assert_eq!(s.summary, "default hardening profile without ProtectHome, SystemCallFilter");
    let p = pod(
        serde_json::json!({"annotations": {HARDENING_ANNOTATION: "off"}}),
        serde_json::json!({"containers": [{"name": "c"}]}),
    );
    assert!(get(&plan_of(&p, &[], &NodePolicy::default()).unwrap(), "PrivateTmp").is_none());
    let p = pod(
        serde_json::json!({"annotations": {HARDENING_DISABLE_ANNOTATION: "ProtectEverything"}}),
        serde_json::json!({"containers": [{"name": "c"}]}),
    );
    assert!(plan_of(&p, &[], &NodePolicy::default()).unwrap_err().message.contains("not a setting of the profile"));
}

#[test]
fn what_systemd_cannot_do_is_refused_naming_the_field() {
    let p = pod(
        serde_json::json!({}),
        serde_json::json!({"securityContext": {"sysctls": [{"name": "net.core.somaxconn", "value": "1024"}]},
            "containers": [{"name": "c"}]}),
    );
    let e = plan_of(&p, &[], &NodePolicy::default()).unwrap_err();
    assert!(e.message.starts_with("container c: pod securityContext.sysctls (net.core.somaxconn)"), "{e}");
    for (sc, want) in [
        (serde_json::json!({"procMount": "Unmasked"}), "procMount Unmasked"),
        (serde_json::json!({"seLinuxOptions": {"level": "s0:c1"}}), "seLinuxOptions"),
        (serde_json::json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "x.json"}}), "Localhost"),
        (serde_json::json!({"capabilities": {"add": ["NOT_A_CAP"]}}), "\"NOT_A_CAP\" is not a Linux capability"),
    ] {
        let e = plan_of(&one(sc), &[], &NodePolicy::default()).unwrap_err();
        assert_eq!(e.reason, crate::reason::WaitingReason::CreateContainerConfigError);
        assert!(e.message.contains(want), "{e}");
    }
}

#[test]
fn pods_share_an_ipc_namespace_unless_host_ipc() {
    let p = pod(serde_json::json!({}), serde_json::json!({"containers": [{"name": "a"}, {"name": "b"}]}));
    let s = plan_of(&p, &[], &NodePolicy::default()).unwrap();
    assert_eq!(s.unit_lines, [("JoinsNamespaceOf".to_owned(), "vks.ns.p.b.service".to_owned())]);
    let p = pod(
        serde_json::json!({}),
        serde_json::json!({"hostIPC": true, "hostPID": true, "containers": [{"name": "a"}]}),
    );
    let s = plan_of(&p, &[], &NodePolicy::default()).unwrap();
    assert!(get(&s, "PrivateIPC").is_none() && s.unit_lines.is_empty() && get(&s, "ProtectProc").is_none());
}

#[test]
fn package_capability_lines_as_systemd_reads_them() {
    let base = |v: &[&str]| v.iter().map(|v| ("CapabilityBoundingSet".to_owned(), (*v).to_owned())).collect::<Vec<_>>();
    let all = ALL_MASK;
    assert_eq!(package_caps(&base(&[]), "CapabilityBoundingSet", all), None);
    assert_eq!(package_caps(&base(&["CAP_CHOWN"]), "CapabilityBoundingSet", all), Some(1));
    assert_eq!(package_caps(&base(&["CAP_CHOWN", "CAP_KILL"]), "CapabilityBoundingSet", all), Some(1 | 1 << 5));
    assert_eq!(package_caps(&base(&["~CAP_CHOWN"]), "CapabilityBoundingSet", all), Some(all & !1));
    assert_eq!(package_caps(&base(&["CAP_CHOWN", ""]), "CapabilityBoundingSet", all), Some(0));
}

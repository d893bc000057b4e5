//! Tests of the configuration reader.

use super::names::node_restriction_allows;
use super::*;

fn parse(text: &str) -> Result<Config, Vec<String>> {
    Config::from_str(text, "My-Host")
}

fn errors(text: &str) -> Vec<String> {
    parse(text).expect_err("expected the config to be rejected")
}

#[test]
fn empty_file_gives_documented_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.node.name, "my-host");
    assert_eq!(c.node.internal_ip, None);
    assert_eq!(c.node.max_pods, 110);
    assert_eq!(c.cluster.kubeconfig, PathBuf::from("/etc/vks/kubeconfig"));
    assert_eq!(c.kubelet.port, 10250);
    assert_eq!(c.kubelet.address.to_string(), "0.0.0.0");
    assert!(c.kubelet.websocket_streaming);
    assert_eq!(c.paths.state_dir, PathBuf::from("/var/lib/vks"));
    assert_eq!(c.paths.pod_dir, PathBuf::from("/var/lib/vks/pods"));
    assert_eq!(c.log.level, LogLevel::Info);
    assert_eq!(c.eviction.memory_available, Threshold::Quantity(100 * 1024 * 1024));
    assert_eq!(c.eviction.nodefs_available, Threshold::Percent(10.0));
}

#[test]
fn full_file_is_read() {
    let c = parse(
        r#"
        [node]
        name = "web-1"
        internal_ip = "10.0.0.5"
        external_ip = "2001:db8::1"
        labels = { "example.com/role" = "web", "node.kubernetes.io/pool" = "a" }
        taints = ["dedicated=web:NoSchedule", "example.com/gpu:NoExecute"]
        max_pods = 50
        [cluster]
        kubeconfig = "/srv/kc"
        [kubelet]
        address = "10.0.0.5"
        port = 11250
        tls_cert_file = "/a.crt"
        tls_key_file = "/a.key"
        client_ca_file = "/ca.crt"
        websocket_streaming = false
        [paths]
        state_dir = "/srv/vks"
        [log]
        level = "debug"
        [eviction]
        memory_available = "1Gi"
        nodefs_available = "15%"
        nodefs_inodes_free = "1000"
        pid_available = "2.5%"
        "#,
    )
    .unwrap();
    assert_eq!(c.node.name, "web-1");
    assert_eq!(c.node.external_ip.unwrap().to_string(), "2001:db8::1");
    assert_eq!(c.node.labels["example.com/role"], "web");
    assert_eq!(c.node.taints[1], Taint { key: "example.com/gpu".into(), value: "".into(), effect: "NoExecute".into() });
    assert_eq!(c.paths.pod_dir, PathBuf::from("/srv/vks/pods"));
    assert_eq!(c.eviction.memory_available, Threshold::Quantity(1 << 30));
    assert_eq!(c.eviction.nodefs_inodes_free, Threshold::Quantity(1000));
    assert_eq!(c.eviction.pid_available, Threshold::Percent(2.5));
    assert_eq!(c.log.level, LogLevel::Debug);
    assert!(!c.kubelet.websocket_streaming);
}

#[test]
fn every_error_is_reported_at_once_naming_key_and_value() {
    let errs = errors(
        r#"
        colour = "blue"
        [node]
        name = "Bad_Name"
        internal_ip = "1.2.3"
        max_pods = "many"
        labels = { "kubernetes.io/role" = "x", "ok.io/k" = "-bad-" }
        taints = ["nokey", "a=b:Sometimes", 3]
        flavour = 1
        [kubelet]
        port = 70000
        tls_cert_file = "relative.crt"
        websocket_streaming = "yes"
        [log]
        level = "loud"
        [eviction]
        memory_available = "lots"
        nodefs_available = "150%"
        "#,
    );
    let want = [
        "colour: unknown key (value \"blue\")",
        "node.name: \"Bad_Name\" is not a valid node name",
        "node.internal_ip: \"1.2.3\" is not an IP address",
        "node.max_pods: expected an integer, got \"many\"",
        "label key \"kubernetes.io/role\" is under kubernetes.io/k8s.io",
        "label value \"-bad-\" is invalid",
        "node.taints[0]: \"nokey\": expected key[=value]:Effect",
        "node.taints[1]: \"a=b:Sometimes\": bad effect",
        "node.taints[2]: expected a string, got 3",
        "node.flavour: unknown key (value 1)",
        "kubelet.port: 70000 is out of range (1..=65535)",
        "kubelet.tls_cert_file: \"relative.crt\" is not an absolute path",
        "kubelet.websocket_streaming: expected true or false, got \"yes\"",
        "log.level: \"loud\" is not a log level",
        "eviction.memory_available: \"lots\"",
        "eviction.nodefs_available: \"150%\"",
    ];
    for w in want {
        assert!(errs.iter().any(|e| e.contains(w)), "missing {w:?} in {errs:#?}");
    }
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
}

#[test]
fn kubelet_api_limits_are_validated() {
    let c = parse("[kubelet]\nanonymous_auth = true\nstreaming_idle_timeout = \"30m\"\nmax_header_bytes = \"16Ki\"\n")
        .unwrap();
    assert!(c.kubelet.anonymous_auth && c.kubelet.healthz_anonymous);
    assert_eq!(c.kubelet.streaming_idle_timeout, std::time::Duration::from_secs(1800));
    assert_eq!(c.kubelet.max_header_bytes, 16 << 10);
    assert_eq!(c.kubelet.exec_helper_idle, std::time::Duration::from_secs(120), "the default");
    assert!(c.kubelet.exec_helpers);
    let c = parse("[kubelet]\nexec_helpers = false\nexec_helper_idle = \"10m\"\n").unwrap();
    assert!(!c.kubelet.exec_helpers);
    assert_eq!(c.kubelet.exec_helper_idle, std::time::Duration::from_secs(600));
    assert_eq!(
        errors("[kubelet]\nexec_helper_idle = \"0s\"\n"),
        ["kubelet.exec_helper_idle: \"0s\" is not a duration like \"30s\", \"5m\" or \"1h\""]
    );
    let errs = errors(
        "[kubelet]\nanonymous_auth = \"yes\"\nmax_connections = 2\nmax_header_bytes = 100\nidle_timeout = \"soon\"\n",
    );
    assert_eq!(
        errs,
        [
            "kubelet.anonymous_auth: expected true or false, got \"yes\"",
            "kubelet.max_connections: 2 is out of range (16..=1000000)",
            "kubelet.idle_timeout: \"soon\" is not a duration like \"30s\", \"5m\" or \"1h\"",
            "kubelet.max_header_bytes: 100 is below the minimum of 8192 bytes",
        ]
    );
}

#[test]
fn serving_certificate_needs_its_key() {
    let errs = errors("[kubelet]\ntls_cert_file = \"/a.crt\"\n");
    assert_eq!(errs, vec!["kubelet.tls_cert_file and kubelet.tls_key_file: set both or neither".to_owned()]);
}

#[test]
fn join_settings_are_validated_without_showing_the_token() {
    let c = parse("[cluster]\nserver = \"https://10.0.0.1:6443/\"\ntoken = \"abcdef.0123456789abcdef\"\n").unwrap();
    assert_eq!(c.cluster.server.as_deref(), Some("https://10.0.0.1:6443"));
    assert!(matches!(c.cluster.token, Some(TokenSource::Inline(_))));
    let shown = c.to_toml();
    assert!(!shown.contains("0123456789abcdef"), "{shown}");
    assert!(shown.contains("token = \"(set, not shown)\""), "{shown}");
    let c = parse("[cluster]\nserver = \"https://s\"\ntoken_file = \"/etc/vks/token\"\n").unwrap();
    assert_eq!(c.cluster.token, Some(TokenSource::File("/etc/vks/token".into())));
    assert!(c.to_toml().contains("token_file = \"/etc/vks/token\""));

    let errs = errors("[cluster]\nserver = \"http://s\"\ntoken = \"K10abc::node:hunter2\"\n");
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].contains("cluster.server: \"http://s\" is not an https://host[:port] URL"), "{errs:?}");
    assert!(errs[1].starts_with("cluster.token: the value (not shown) is not a valid token"), "{errs:?}");
    assert!(!errs.concat().contains("hunter2"));
    let errs = errors("[cluster]\nserver = \"https://s\"\ntoken = \"t\"\ntoken_file = \"/t\"\n");
    assert_eq!(errs, ["cluster.token and cluster.token_file: set one, not both (token_file is \"/t\")"]);
    let errs = errors("[cluster]\nserver = \"https://s\"\n");
    assert!(errs[0].contains("neither cluster.token nor cluster.token_file"), "{errs:?}");
    let errs = errors("[cluster]\ntoken_file = \"/t\"\n");
    assert!(errs[0].contains("cluster.server is not"), "{errs:?}");
}

#[test]
fn syntax_errors_name_the_line() {
    let errs = errors("[node]\nname = \n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("TOML syntax:") && errs[0].contains("line 2"), "{errs:?}");
}

#[test]
fn section_of_wrong_type_is_an_error() {
    let errs = errors("node = 3\n");
    assert_eq!(errs, vec!["node: expected a table ([node]), got 3".to_owned()]);
}

#[test]
fn invalid_host_name_is_reported_when_name_is_defaulted() {
    let errs = Config::from_str("", "under_score").unwrap_err();
    assert!(errs[0].starts_with("node.name (defaulted to the host name): \"under_score\""), "{errs:?}");
}

#[test]
fn node_restriction_label_rules() {
    assert!(node_restriction_allows("kubernetes.io/hostname").is_ok());
    assert!(node_restriction_allows("node.kubernetes.io/instance-type").is_ok());
    assert!(node_restriction_allows("foo.node.kubernetes.io/x").is_ok());
    assert!(node_restriction_allows("kubelet.kubernetes.io/x").is_ok());
    assert!(node_restriction_allows("example.com/x").is_ok());
    assert!(node_restriction_allows("plain").is_ok());
    assert!(node_restriction_allows("kubernetes.io/role").is_err());
    assert!(node_restriction_allows("k8s.io/x").is_err());
    assert!(node_restriction_allows("node-restriction.kubernetes.io/x").is_err());
}

/// config/vks.toml documents every option: uncommenting every example gives a valid file
/// that sets every key the effective configuration has.
#[test]
fn shipped_example_documents_every_option() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/vks.toml")).unwrap();
    assert!(Config::from_str(&text, "host").is_ok(), "the shipped file must be valid as shipped");
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest)
                if rest
                    .split_once(" = ")
                    .is_some_and(|(k, _)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')) =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let full = Config::from_str(&uncommented, "host").unwrap_or_else(|e| panic!("{e:#?}"));
    let documented: Table = uncommented.parse().unwrap();
    let effective: Table = full.to_toml().parse().unwrap();
    for (section, v) in &effective {
        let keys = v.as_table().unwrap();
        for key in keys.keys() {
            assert!(
                documented.get(section).and_then(|s| s.get(key)).is_some(),
                "{section}.{key} is not documented in config/vks.toml"
            );
        }
    }
}

#[test]
fn effective_config_round_trips() {
    let c = parse("[node]\ntaints = [\"a=b:NoSchedule\"]\n").unwrap();
    let again = parse(&c.to_toml()).unwrap();
    assert_eq!(c, again);
}

#[test]
fn no_server_and_no_kubeconfig_is_standalone() {
    let c = parse("").unwrap();
    assert!(c.standalone());
    assert_eq!(c.static_pods.manifest_dir, PathBuf::from("/etc/vks/manifests"));
    assert!(!c.to_toml().contains("kubeconfig"), "a standalone node shows no kubeconfig: {}", c.to_toml());
    assert!(!parse("[cluster]\nkubeconfig = \"/etc/vks/kubeconfig\"\n").unwrap().standalone());
    let joined =
        parse("[cluster]\nserver = \"https://192.0.2.1:6443\"\ntoken = \"abcdef.0123456789abcdef\"\n").unwrap();
    assert!(!joined.standalone());
    let again = parse(&joined.to_toml().replace("(set, not shown)", "abcdef.0123456789abcdef")).unwrap();
    assert!(!again.standalone());
}

#[test]
fn static_manifest_dir_is_an_absolute_path() {
    let c = parse("[static]\nmanifest_dir = \"/srv/manifests\"\n").unwrap();
    assert_eq!(c.static_pods.manifest_dir, PathBuf::from("/srv/manifests"));
    assert_eq!(
        errors("[static]\nmanifest_dir = \"manifests\"\nwatch = true\n"),
        vec![
            "static.manifest_dir: \"manifests\" is not an absolute path".to_owned(),
            "static.watch: unknown key (value true)".to_owned()
        ]
    );
}

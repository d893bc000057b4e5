//! Golden tests of the pod → unit translation: every `tests/testdata/units/<case>.yaml` pod is
//! rendered, one unit per container (init containers first), and compared with
//! `<case>.units`. Set `VKS_UPDATE_GOLDEN=1` to rewrite the expected files after a deliberate
//! change, then review the diff.

use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use vks::unit::{self, ContainerKind, ImageInfo, NodeContext};

/// Files that "exist and are executable" in these tests.
fn is_executable(p: &str) -> bool {
    matches!(
        p,
        "/usr/bin/sleep" | "/bin/sh" | "/usr/bin/env" | "/opt/tool/bin/run" | "/usr/sbin/uptimed" | "/usr/sbin/sshd"
    ) || p.starts_with("/usr/local/bin/")
}

/// A Debian package image: its unit from `testdata/units/packages/<name>.service`, if any, read
/// the way `DebianImages` reads it.
fn package(name: &str) -> ImageInfo {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/units/packages");
    let mut info = ImageInfo { image_id: format!("deb://{name}=1.0"), ..ImageInfo::default() };
    match std::fs::read_to_string(dir.join(format!("{name}.service"))) {
        Ok(text) => {
            let s = vks::images::unitfile::parse(&text).expect("test unit parses");
            info.entrypoint = vec![s.program];
            if !s.args.is_empty() {
                info.args = vec![unit::Arg::Raw(s.args)];
            }
            info.service = s.settings;
        }
        Err(_) => info.no_command = Some(format!("package {name} ships no systemd service")),
    }
    info
}

fn render_pod(pod: &Pod) -> String {
    let node = NodeContext { node_name: "node-1".into(), node_ip: "192.0.2.10".into() };
    let spec = pod.spec.as_ref().expect("pod has a spec");
    let mut out = String::new();
    let init = spec.init_containers.iter().flatten().map(|c| {
        let kind =
            if c.restart_policy.as_deref() == Some("Always") { ContainerKind::Sidecar } else { ContainerKind::Init };
        (c, kind)
    });
    let app = spec.containers.iter().map(|c| (c, ContainerKind::App));
    for (c, kind) in init.chain(app) {
        let image = c.image.clone().unwrap_or_default();
        let info = if image.starts_with('/') {
            ImageInfo { entrypoint: vec![image.clone()], image_id: format!("file://{image}"), ..ImageInfo::default() }
        } else {
            package(&image)
        };
        match unit::plan(pod, c, kind, &info, &node, is_executable) {
            Ok(u) => {
                out.push_str(&format!("=== {}\n", u.name));
                out.push_str(&unit::render(&u).expect("planned units render"));
            }
            Err(e) => out.push_str(&format!("=== container {}: {}: {}\n", c.name, e.reason, e.message)),
        }
    }
    out
}

#[test]
fn golden_units() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/units");
    let update = std::env::var_os("VKS_UPDATE_GOLDEN").is_some();
    let mut cases = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        cases += 1;
        let pod: Pod = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let got = render_pod(&pod);
        let golden = path.with_extension("units");
        if update {
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if got != want {
            failures.push(format!("{}:\n--- want\n{want}\n--- got\n{got}", golden.display()));
        }
    }
    assert!(cases >= 4, "expected the golden cases in {}", dir.display());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

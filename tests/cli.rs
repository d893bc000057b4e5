//! The `vks` binary as a user meets it: `--version`, `--help`, `vks check`, and configuration
//! errors (exit 64, every problem named, nothing contacted).

use std::process::Command;

fn vks(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vks")).args(args).env_remove("NOTIFY_SOCKET").output().unwrap()
}

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vks-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn version_and_help() {
    let out = vks(&["--version"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("vks {}", env!("CARGO_PKG_VERSION")));
    let out = vks(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for word in ["run", "check", "--config"] {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
}

#[test]
fn check_prints_the_effective_config() {
    let p = temp_config("ok.toml", "[node]\nname = \"web-1\"\nmax_pods = 20\n");
    let out = vks(&["check", "--config", p.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("name = \"web-1\"") && text.contains("max_pods = 20") && text.contains("port = 10250"),
        "{text}"
    );
}

#[test]
fn bad_config_exits_64_naming_every_problem() {
    let p = temp_config("bad.toml", "[node]\nname = \"UPPER\"\nmax_pods = 0\nbogus = true\n[kubelet]\nport = \"x\"\n");
    for cmd in ["check", "run"] {
        let out = vks(&[cmd, "--config", p.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(64), "vks {cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        for want in [
            "node.name: \"UPPER\" is not a valid node name",
            "node.max_pods: 0 is out of range",
            "node.bogus: unknown key (value true)",
            "kubelet.port: expected an integer, got \"x\"",
        ] {
            assert!(err.contains(want), "vks {cmd}: {want:?} missing from:\n{err}");
        }
        assert!(out.stdout.is_empty(), "vks {cmd} printed to stdout on a bad config");
    }
}

#[test]
fn missing_config_file_is_a_config_error() {
    let out = vks(&["check", "--config", "/nonexistent/vks.toml"]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/vks.toml") && err.contains("cannot read the file: No such file"), "{err}");
}

#[test]
fn check_never_shows_the_join_token_and_join_needs_one() {
    let state = std::env::temp_dir().join(format!("vks-cli-test-{}/state", std::process::id()));
    let p = temp_config(
        "join.toml",
        &format!(
            "[node]\nname = \"web-1\"\ninternal_ip = \"127.0.0.1\"\n[cluster]\nserver = \"https://127.0.0.1:1\"\n\
             token = \"abcdef.0123456789abcdef\"\nkubeconfig = \"{}/kubeconfig\"\n[paths]\nstate_dir = \"{}\"\n",
            state.display(),
            state.display()
        ),
    );
    let out = vks(&["check", "--config", p.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("server = \"https://127.0.0.1:1\"") && !text.contains("0123456789abcdef"), "{text}");
    // Nobody listens on port 1: exit 1 (may work later), naming the server.
    let out = vks(&["join", "--config", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the server https://127.0.0.1:1"), "{err}");
    assert!(!err.contains("0123456789abcdef"), "{err}");
    // Without a server and token there is nothing to join.
    let p = temp_config("nojoin.toml", "[node]\nname = \"web-1\"\ninternal_ip = \"127.0.0.1\"\n");
    let out = vks(&["join", "--config", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to join"));
}

//! `stdin: true`: how a container gets an input that `kubectl attach -i` can write to; and
//! `tty: true`: how it gets a terminal that `kubectl attach -it` types into.

use super::escape::{self, Unrepresentable};
use super::{Arg, UnitSpec};

/// Where the stdin FIFOs of all containers live. Confined containers see an empty tmpfs there
/// (`unit::security`), with only their own directory bound back: no pod writes another's input.
pub const STDIN_ROOT: &str = "/run/vks-stdin";

/// The runtime directory (under `/run`) of a container with `stdin: true`, holding its stdin FIFO.
pub fn stdin_dir(unit: &str) -> String {
    format!("vks-stdin/{unit}")
}

/// Where a container with `stdin: true` reads its input: a FIFO that `kubectl attach -i` writes
/// to (`kubelet_api::stream::attach`).
pub fn stdin_fifo(unit: &str) -> String {
    format!("/run/{}/stdin", stdin_dir(unit))
}

/// The vks binary, as the package installs it: the main process of `tty: true` containers.
pub const VKS_BIN: &str = "/usr/bin/vks";

/// Where `vks tty-shim` of a container with `tty: true` listens for attach sessions.
pub fn tty_socket(unit: &str) -> String {
    format!("/run/{}/tty", stdin_dir(unit))
}

/// What the unit file vks wrote for container unit `unit` gives the container: an input FIFO
/// (`stdin: true`: its `ExecStart=` names [`stdin_fifo`]) and a terminal (`tty: true`: it runs
/// `vks tty-shim`). Both appear only once the container's process made them.
pub fn io_of(unit: &str, file: &str) -> (bool, bool) {
    let exec_start = file.lines().find(|l| l.starts_with("ExecStart=")).unwrap_or_default();
    let tty = exec_start.contains("\"tty-shim\"");
    (!tty && exec_start.contains(&format!("\"{}\"", stdin_fifo(unit))), tty)
}

/// The `ExecStart=` value. A container with `stdin: true` starts through `/bin/sh`, which makes
/// the FIFO [`stdin_fifo`] in the unit's runtime directory (owned by the container's user),
/// opens it read-write as its stdin — so the container never reads end of input between attach
/// sessions, whoever attaches and whether vks runs — and `exec`s the container's program (same
/// PID; its `argv[0]` is then the program's path). systemd's own stdin would not do: it applies
/// to `ExecStartPre=` too, and a FIFO nobody holds blocks the open. A container with
/// `tty: true` instead runs under `vks tty-shim` (see `crate::tty_shim`), which holds its
/// terminal and takes attach sessions on [`tty_socket`].
pub(super) fn exec_start(u: &UnitSpec) -> Result<String, Unrepresentable> {
    if u.tty {
        let mut argv = vec![Arg::Lit("vks".into()), Arg::Lit("tty-shim".into())];
        argv.push(Arg::Lit(format!("/run/{}", stdin_dir(&u.name))));
        argv.push(Arg::Lit(u.executable.clone()));
        argv.extend(u.argv.iter().skip(1).cloned());
        return escape::exec_line(VKS_BIN, &argv);
    }
    if !u.stdin {
        return escape::exec_line(&u.executable, &u.argv);
    }
    let script = r#"rm -f "$0" && mkfifo -m 0600 "$0" && exec 0<>"$0" && exec "$@""#;
    let mut argv = vec![Arg::Lit("sh".into()), Arg::Lit("-c".into()), Arg::Lit(script.into())];
    argv.push(Arg::Lit(stdin_fifo(&u.name)));
    argv.push(Arg::Lit(u.executable.clone()));
    argv.extend(u.argv.iter().skip(1).cloned());
    escape::exec_line("/bin/sh", &argv)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, Pod};

    use super::*;
    use crate::unit::{ContainerKind, ImageInfo, NodeContext, plan, render};

    fn container(json: serde_json::Value) -> Container {
        serde_json::from_value(json).unwrap()
    }

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1"},
            "spec": {"nodeName": "n1", "containers": []}
        }))
        .unwrap()
    }

    fn node() -> NodeContext {
        NodeContext::new("n1", "10.0.0.5")
    }

    #[test]
    fn a_container_with_stdin_reads_a_fifo_it_holds_open_itself() {
        let mut p = pod();
        let c = container(serde_json::json!({"name": "c", "command": ["cat", "-u"], "stdin": true}));
        p.spec.as_mut().unwrap().containers = vec![c.clone()];
        let u = plan(
            &p,
            &c,
            ContainerKind::App,
            &ImageInfo::default(),
            &node(),
            &crate::unit::ContainerData::default(),
            |e| e == "/usr/bin/cat",
        )
        .unwrap();
        let file = render(&u).unwrap();
        assert!(
            file.contains(
                "ExecStart=\"@/bin/sh\" \"sh\" \"-c\" \"rm -f \\\"$$0\\\" && mkfifo -m 0600 \\\"$$0\\\" && \
                 exec 0<>\\\"$$0\\\" && exec \\\"$$@\\\"\" \"/run/vks-stdin/vks.ns.p.c.service/stdin\" \
                 \"/usr/bin/cat\" \"-u\"\n"
            ),
            "{file}"
        );
        assert!(file.contains("RuntimeDirectory=vks-stdin/vks.ns.p.c.service\n"), "{file}");
        // Other containers' FIFOs are under a tmpfs; its own directory is bound back.
        assert!(file.contains("TemporaryFileSystem=/run/vks-stdin\n"), "{file}");
        assert!(
            file.contains("BindPaths=/run/vks-stdin/vks.ns.p.c.service:/run/vks-stdin/vks.ns.p.c.service:rbind\n"),
            "{file}"
        );
        assert_eq!(stdin_fifo(&u.name), "/run/vks-stdin/vks.ns.p.c.service/stdin");
        assert_eq!(io_of(&u.name, &file), (true, false));
        assert_eq!(io_of("vks.ns.p.other.service", &file), (false, false));
        let c = container(serde_json::json!({"name": "c", "command": ["/bin/cat"]}));
        let u = plan(
            &p,
            &c,
            ContainerKind::App,
            &ImageInfo::default(),
            &node(),
            &crate::unit::ContainerData::default(),
            |_| true,
        )
        .unwrap();
        let file = render(&u).unwrap();
        assert!(file.contains("ExecStart=\"@/bin/cat\" \"/bin/cat\"\n"), "{file}");
        assert_eq!(io_of(&u.name, &file), (false, false));
        assert!(!file.contains("RuntimeDirectory") && !file.contains("BindPaths"), "{file}");
        assert!(file.contains("TemporaryFileSystem=/run/vks-stdin\n"), "{file}");
    }

    #[test]
    fn a_container_with_a_tty_runs_under_the_shim_in_its_own_directory() {
        let mut p = pod();
        let c = container(serde_json::json!({"name": "c", "command": ["sh", "-i"], "tty": true, "stdin": true}));
        p.spec.as_mut().unwrap().containers = vec![c.clone()];
        let data = crate::unit::ContainerData::default();
        let u =
            plan(&p, &c, ContainerKind::App, &ImageInfo::default(), &node(), &data, |e| e == "/usr/bin/sh").unwrap();
        let file = render(&u).unwrap();
        assert!(
            file.contains(
                "ExecStart=\"@/usr/bin/vks\" \"vks\" \"tty-shim\" \"/run/vks-stdin/vks.ns.p.c.service\" \
                 \"/usr/bin/sh\" \"-i\"\n"
            ),
            "{file}"
        );
        assert!(file.contains("RuntimeDirectory=vks-stdin/vks.ns.p.c.service\n"), "{file}");
        assert_eq!(tty_socket(&u.name), "/run/vks-stdin/vks.ns.p.c.service/tty");
        assert_eq!(io_of(&u.name, &file), (false, true));
    }
}

//! Command-line interface (clap): `vks [run]`, `vks check`, `vks join`, `vks pods`, `vks logs`,
//! `--config`, `--version`. The commands' logic lives in the library ([`crate::daemon`],
//! [`crate::inspect`]); this is only the grammar and its help.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

/// vks: a Kubernetes node agent that runs pods as systemd units.
#[derive(Debug, Parser)]
#[command(name = "vks", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum Command {
    /// Run the node agent (the default).
    Run,
    /// Validate the configuration file and print the effective configuration.
    Check,
    /// Register this machine with the cluster of `[cluster] server` using the token, writing the
    /// node's credentials; does nothing while valid credentials exist (safe to re-run).
    Join,
    /// List the pods this node runs, static and scheduled.
    ///
    /// One line per pod: namespace, name, ready app containers, phase, restarts, age, each
    /// container's state, and where the pod comes from (its manifest file, or `api`). Read
    /// directly from systemd (the vks units and their [X-Kubernetes] sections, over D-Bus), the
    /// status vks records in /run/vks/status and the manifests of `[static] manifest_dir`: it
    /// works whether vks runs or not, with or without a cluster. Manifest files that are not
    /// run are listed after the pods with the reason. Needs root.
    Pods(PodsArgs),
    /// Print a container's output from the journal.
    ///
    /// POD is a pod name as `vks pods` shows it (a static pod is `<name>-<node>`), or
    /// NAMESPACE/NAME. Without -c, the pod's first app container. Every run of the container is
    /// included (journalctl VKS_POD_UID=<uid> VKS_CONTAINER=<name>). Exits non-zero naming the
    /// pod or container when it does not exist on this node. Needs root (or the systemd-journal
    /// group).
    Logs(LogsArgs),
    /// The main process of a container with `tty: true` (in its unit; not for people): runs
    /// PROGRAM on a terminal and serves attach sessions on DIR/tty.
    #[command(hide = true)]
    TtyShim(TtyShimArgs),
    /// Reads past lines from the journal files for the kubelet API (not for people): writes
    /// the entries matching every FIELD=VALUE in journalctl's export format.
    #[command(hide = true)]
    JournalRead(JournalReadArgs),
    /// Runs the commands of `kubectl exec` in a container's sandbox for vks (not for people):
    /// its stdin is the socket vks sends them on ([`crate::exec_helper`]).
    #[command(hide = true)]
    ExecHelper,
}

/// `vks journal-read` arguments.
#[derive(Debug, Args, PartialEq, Eq)]
pub struct JournalReadArgs {
    /// Only entries at or after this time (µs since the epoch).
    #[arg(long, value_name = "US")]
    pub since_us: Option<u64>,
    /// Only the last N matching entries.
    #[arg(long, value_name = "N")]
    pub tail: Option<u64>,
    /// A journal directory (repeatable; default: /run/log/journal and /var/log/journal).
    #[arg(long = "directory", value_name = "PATH")]
    pub directories: Vec<PathBuf>,
    /// FIELD=VALUE matches.
    pub matches: Vec<String>,
}

impl JournalReadArgs {
    /// The request for [`crate::journal::native::read`]; an error names a match without `=`.
    pub fn request(&self) -> Result<crate::journal::native::Request, String> {
        let matches = self
            .matches
            .iter()
            .map(|m| match m.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
                _ => Err(format!("match {m:?} is not FIELD=VALUE")),
            })
            .collect::<Result<_, _>>()?;
        let directories = self.directories.clone();
        Ok(crate::journal::native::Request { matches, since_us: self.since_us, tail: self.tail, directories })
    }
}

/// `vks tty-shim` arguments.
#[derive(Debug, Args, PartialEq, Eq)]
pub struct TtyShimArgs {
    /// The container's runtime directory.
    pub dir: PathBuf,
    /// The program, an absolute path.
    pub program: String,
    /// Its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// `vks pods` options.
#[derive(Debug, Args, PartialEq, Eq)]
pub struct PodsArgs {
    /// Only pods of this namespace.
    #[arg(short, long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

/// `vks logs` options.
#[derive(Debug, Args, PartialEq, Eq)]
pub struct LogsArgs {
    /// The pod: NAME or NAMESPACE/NAME.
    pub pod: String,
    /// The container (default: the pod's first app container).
    #[arg(short, long, value_name = "CONTAINER")]
    pub container: Option<String>,
    /// The pod's namespace, when its name is used in several.
    #[arg(short, long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Keep printing new lines as they come (until interrupted).
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<u64>,
}

impl LogsArgs {
    /// The request for [`crate::inspect::logs::logs`].
    pub fn request(&self) -> crate::inspect::logs::Request {
        crate::inspect::logs::Request {
            pod: self.pod.clone(),
            namespace: self.namespace.clone(),
            container: self.container.clone(),
            follow: self.follow,
            tail: self.tail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_is_the_default_and_config_is_global() {
        let c = Cli::try_parse_from(["vks"]).unwrap();
        assert_eq!(c.command, None);
        assert_eq!(c.config, PathBuf::from(DEFAULT_CONFIG_PATH));
        let c = Cli::try_parse_from(["vks", "check", "--config", "/x.toml"]).unwrap();
        assert_eq!(c.command, Some(Command::Check));
        assert_eq!(c.config, PathBuf::from("/x.toml"));
        let c = Cli::try_parse_from(["vks", "--config", "/y.toml", "run"]).unwrap();
        assert_eq!(c.command, Some(Command::Run));
        assert_eq!(Cli::try_parse_from(["vks", "join"]).unwrap().command, Some(Command::Join));
        assert!(Cli::try_parse_from(["vks", "frobnicate"]).is_err());
    }

    #[test]
    fn journal_read_parses_what_a_query_asks() {
        let r = crate::journal::native::Request {
            matches: vec![("VKS_POD_UID".into(), "u1".into()), ("MESSAGE".into(), "-x=y".into())],
            since_us: Some(42),
            tail: Some(5),
            directories: vec![PathBuf::from("/j")],
        };
        let mut argv = vec!["vks".to_owned(), "journal-read".to_owned()];
        argv.extend(r.args());
        let Some(Command::JournalRead(a)) = Cli::try_parse_from(&argv).unwrap().command else { panic!() };
        assert_eq!(a.request().unwrap(), r);
        let a = JournalReadArgs { since_us: None, tail: None, directories: vec![], matches: vec!["NOEQUALS".into()] };
        assert!(a.request().unwrap_err().contains("\"NOEQUALS\""));
    }

    #[test]
    fn pods_and_logs_take_their_options() {
        let c = Cli::try_parse_from(["vks", "pods", "-n", "ops"]).unwrap();
        assert_eq!(c.command, Some(Command::Pods(PodsArgs { namespace: Some("ops".into()) })));
        let c = Cli::try_parse_from(["vks", "logs", "web-n1", "-c", "app", "-f", "--tail", "20"]).unwrap();
        let Some(Command::Logs(l)) = c.command else { panic!() };
        let r = l.request();
        assert_eq!((r.pod.as_str(), r.container.as_deref(), r.follow, r.tail), ("web-n1", Some("app"), true, Some(20)));
        assert!(Cli::try_parse_from(["vks", "logs"]).is_err(), "the pod is required");
    }

    #[test]
    fn the_tty_shim_takes_the_program_line_as_it_is() {
        let c = Cli::try_parse_from(["vks", "tty-shim", "/run/d", "/bin/sh", "-c", "echo --x"]).unwrap();
        let Some(Command::TtyShim(a)) = c.command else { panic!() };
        assert_eq!(
            (a.dir, a.program, a.args),
            (PathBuf::from("/run/d"), "/bin/sh".into(), vec!["-c".into(), "echo --x".into()])
        );
    }
}

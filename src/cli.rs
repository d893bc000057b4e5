//! Command-line interface (clap): `vks [run]`, `vks check`, `vks join`, `--config`, `--version`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
}

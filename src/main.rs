//! The `vks` binary: parse the command line, validate the config, install the logger, run.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use vks::cli::{Cli, Command};
use vks::config::Config;

/// Exit code for a configuration error (`EX_USAGE`).
const EXIT_CONFIG: u8 = 64;
/// Exit code when the cluster refused to let this machine join (`EX_DATAERR`): wrong token, CA
/// hash mismatch, node name taken. vks.service does not restart on it.
const EXIT_JOIN_REFUSED: u8 = 65;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config, &vks::host::hostname()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vks: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Command::Run => run(config),
        Command::Join => join(config),
    }
}

/// `vks join`: exit 0 when the node has credentials (joined now or before), 1 with the cause
/// on stderr when the cluster refused or could not be reached.
fn join(config: Config) -> ExitCode {
    if let Err(e) = vks::logging::init(config.log.level.filter()) {
        eprintln!("vks: cannot install the logger: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vks: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(vks::daemon::join(&config)) {
        Ok(outcome) => {
            println!("vks: {outcome}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vks: join failed: {e:#}");
            match e.downcast_ref::<vks::join::JoinError>() {
                Some(j) if !j.is_transient() => ExitCode::from(EXIT_JOIN_REFUSED),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn run(config: Config) -> ExitCode {
    if let Err(e) = vks::logging::init(config.log.level.filter()) {
        eprintln!("vks: cannot install the logger: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            log::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        vks::shutdown::cancel_on_signals(shutdown.clone())?;
        vks::daemon::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            eprintln!("vks: {e:#}");
            match e.downcast_ref::<vks::join::JoinError>() {
                Some(j) if !j.is_transient() => ExitCode::from(EXIT_JOIN_REFUSED),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

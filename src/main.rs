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
    // Test builds only (feature `failpoints`): faults named in the FAILPOINTS environment variable.
    #[cfg(feature = "failpoints")]
    let _faults = fail::FailScenario::setup();
    let cli = Cli::parse();
    // Runs in a container's sandbox, where the config is out of reach: before loading it.
    if let Some(Command::TtyShim(a)) = &cli.command {
        return ExitCode::from(u8::try_from(vks::tty_shim::main(&a.dir, &a.program, &a.args)).unwrap_or(1));
    }
    // Started by the daemon in a container's sandbox, like the shim.
    if let Some(Command::ExecHelper) = &cli.command {
        return ExitCode::from(u8::try_from(vks::exec_helper::server::main()).unwrap_or(1));
    }
    // Asked by the daemon for past log lines; needs no config either.
    if let Some(Command::JournalRead(a)) = &cli.command {
        return match a.request() {
            Ok(r) => ExitCode::from(u8::try_from(vks::journal::native::main(&r)).unwrap_or(1)),
            Err(e) => {
                eprintln!("vks journal-read: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
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
        Command::Pods(args) => inspect(&config, async |c| {
            print!("{}", vks::inspect::pods(c, args.namespace.as_deref()).await?);
            Ok(0)
        }),
        Command::Logs(args) => inspect(&config, async |c| vks::inspect::logs::logs(c, &args.request()).await),
        Command::TtyShim(_) | Command::JournalRead(_) | Command::ExecHelper => ExitCode::FAILURE,
    }
}

/// `vks pods`, `vks logs`: run on a small runtime; errors on stderr, exit 1.
fn inspect(config: &Config, f: impl AsyncFnOnce(&Config) -> anyhow::Result<i32>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vks: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f(config)) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("vks: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `vks join`: exit 0 when the node has credentials (joined now or before), 1 with the cause
/// on stderr when the cluster refused or could not be reached.
fn join(config: Config) -> ExitCode {
    let runtime = match logger_and_runtime(&config, false) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(vks::daemon::join(&config)) {
        Ok(outcome) => {
            println!("vks: {outcome}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vks: join failed: {e:#}");
            failure_code(&e)
        }
    }
}

/// Installs the logger and builds the async runtime (multi-threaded for the daemon).
fn logger_and_runtime(config: &Config, multi_thread: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    if let Err(e) = vks::logging::init(config.log.level.filter()) {
        eprintln!("vks: cannot install the logger: {e}");
        return Err(ExitCode::FAILURE);
    }
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|e| {
        eprintln!("vks: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

/// A refused join (wrong token, CA hash, node name taken) exits with its own code; anything else
/// with 1.
fn failure_code(e: &anyhow::Error) -> ExitCode {
    match e.downcast_ref::<vks::join::JoinError>() {
        Some(j) if !j.is_transient() => ExitCode::from(EXIT_JOIN_REFUSED),
        _ if e.downcast_ref::<vks::node::ownership::NodeNameTaken>().is_some() => ExitCode::from(EXIT_JOIN_REFUSED),
        _ => ExitCode::FAILURE,
    }
}

fn run(config: Config) -> ExitCode {
    let runtime = match logger_and_runtime(&config, true) {
        Ok(r) => r,
        Err(code) => return code,
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
            failure_code(&e)
        }
    }
}

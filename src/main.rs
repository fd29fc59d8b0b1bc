//! The `nomad-relay` binary: parses the command line, sets up logging on standard error,
//! and runs the chosen subcommand. Exit status: 0 on success, 1 on a runtime failure, 2 on
//! a configuration error.

use clap::Parser;
use nomad_relay::cli::{CheckpointAction, Cli, Command, JournalAction, LogFormat};
use nomad_relay::config::{Config, LoadFrom};
use nomad_relay::{commands, redact, relay};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// jemalloc rather than glibc's malloc. Events are allocated on one thread and freed on
/// another (source, journal writer, blocking readers, sink tasks); glibc keeps such memory in
/// per-thread arenas it rarely gives back, so a relay holding a backlog kept growing with
/// only a few megabytes in use (see BENCHMARKS.md, "A sink down for 10 minutes"). Building
/// without the default `jemalloc` feature uses the system allocator, which heap profilers
/// such as heaptrack can follow.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("NOMAD_RELAY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| nomad_relay::redact::ScrubbedStderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(dispatch(cli.command));
    // A sink past `shutdown_timeout` may still hold a blocking call (a broker that does not
    // answer); the journal and cursors are durable, so do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// Reads the configuration and, from then on, hides its secrets in everything printed.
fn load(config: &Option<PathBuf>) -> Result<Config, ExitCode> {
    let config = Config::load(LoadFrom { file: config.as_deref(), environment: true }).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    redact::install(redact::secrets_of(&config));
    for unused in nomad_relay::config::unused_nomad_variables(std::env::vars_os()) {
        tracing::warn!("{unused}");
    }
    Ok(config)
}

async fn dispatch(command: Command) -> ExitCode {
    let result = match command {
        Command::Run { config } => {
            let config = match load(&config) {
                Ok(config) => config,
                Err(code) => return code,
            };
            relay::run(config, shutdown_on_signal()).await.map(|()| None)
        }
        Command::Validate { config } => match load(&config) {
            Ok(config) => Ok(Some(commands::validate(&config))),
            Err(code) => return code,
        },
        Command::Tail { config, index } => match load(&config) {
            Ok(config) => commands::tail(config, index, shutdown_on_signal()).await.map(|()| None),
            Err(code) => return code,
        },
        Command::Replay { config, sink, from_index, to_index, source, republish } => match load(&config) {
            Ok(config) => {
                let range = commands::ReplayRange { from_index, to_index, source, republish };
                commands::replay(config, &sink, range).await.map(Some)
            }
            Err(code) => return code,
        },
        Command::Demo { config, rate, events } => {
            let loaded = match &config {
                Some(_) => load(&config),
                None => Config::load(LoadFrom { file: None, environment: false }).map_err(|e| {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }),
            };
            match loaded {
                Ok(loaded) => {
                    let options = commands::DemoOptions { rate, events };
                    commands::demo(loaded, options, shutdown_on_signal()).await.map(|()| None)
                }
                Err(code) => return code,
            }
        }
        Command::Journal { action: JournalAction::Check { config } } => match load(&config) {
            Ok(config) => {
                let checked = tokio::task::spawn_blocking(move || commands::journal_check(&config)).await;
                match checked {
                    Ok(Ok((report, damaged))) => {
                        println!("{}", redact::scrub(&report));
                        return if damaged { ExitCode::from(1) } else { ExitCode::SUCCESS };
                    }
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(relay::RelayError::Other(format!("journal check failed: {e}"))),
                }
            }
            Err(code) => return code,
        },
        Command::Checkpoint { action: CheckpointAction::Show { config } } => match load(&config) {
            Ok(config) => tokio::task::spawn_blocking(move || commands::checkpoint_show(&config))
                .await
                .unwrap_or_else(|e| Err(relay::RelayError::Other(format!("checkpoint show failed: {e}"))))
                .map(Some),
            Err(code) => return code,
        },
    };
    match result {
        Ok(Some(text)) => {
            println!("{}", redact::scrub(text.trim_end()));
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", redact::scrub(&e.to_string()));
            ExitCode::from(1)
        }
    }
}

/// A token cancelled by the first SIGTERM or SIGINT; a second one exits at once, which is
/// safe because the journal and the cursors are durable. The handlers are installed before
/// this returns, so a signal that arrives while the relay starts up is not lost to the default
/// action (which would end the process without a clean stop).
fn shutdown_on_signal() -> CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let (terminate, interrupt) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cannot listen for SIGTERM and SIGINT: {e}; stop the relay with SIGKILL");
            return token;
        }
    };
    let cancel = token.clone();
    tokio::spawn(async move {
        let (mut terminate, mut interrupt) = (terminate, interrupt);
        for count in 0.. {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            if count > 0 {
                tracing::warn!("second signal: exiting now (journal and cursors are durable)");
                std::process::exit(130);
            }
            cancel.cancel();
        }
    });
    token
}

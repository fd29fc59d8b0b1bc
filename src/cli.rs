//! The command line: `run`, `validate`, `tail`, `replay` and `checkpoint show`.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Relays HashiCorp Nomad's event stream to Kafka, NATS, RabbitMQ, files or stdout, without
/// losing or repeating events across crashes. Logs go to standard error.
#[derive(Debug, Parser)]
#[command(name = "nomad-relay", version)]
pub struct Cli {
    /// Log format on standard error.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "NOMAD_RELAY_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Follow Nomad and deliver every event to the configured sinks.
    Run {
        /// Configuration file (TOML). Without it: built-in defaults (journal in ./data, events on stdout).
        #[arg(long, short, env = "NOMAD_RELAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and print what it configures.
    Validate {
        /// Configuration file (TOML).
        #[arg(long, short, env = "NOMAD_RELAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print Nomad's events on stdout as they arrive, without journal or sinks.
    Tail {
        /// Configuration file (TOML); only its `[nomad]` table is used.
        #[arg(long, short, env = "NOMAD_RELAY_CONFIG")]
        config: Option<PathBuf>,
        /// Start at this index (inclusive) instead of `nomad.start`.
        #[arg(long)]
        index: Option<u64>,
    },
    /// Deliver events again from the journal to one sink (the relay must be stopped).
    Replay {
        /// Configuration file (TOML).
        #[arg(long, short, env = "NOMAD_RELAY_CONFIG")]
        config: Option<PathBuf>,
        /// The sink to deliver to.
        #[arg(long)]
        sink: String,
        /// First Nomad index to deliver (inclusive).
        #[arg(long)]
        from_index: u64,
        /// Last Nomad index to deliver (inclusive; default: everything the sink already had).
        #[arg(long)]
        to_index: Option<u64>,
        /// Only events of this Nomad source (`[[nomad]]` name); indexes are per region, so
        /// give it when several sources are configured.
        #[arg(long)]
        source: Option<String>,
        /// Publish again on purpose: the events get ids of their own for this replay, so
        /// brokers that drop repeats by id (JetStream, the Kafka sink's read-back) store them
        /// again. Without it, events already at the destination are counted, not stored twice.
        #[arg(long)]
        republish: bool,
    },
    /// Start a built-in emulated Nomad cluster and relay its events, to see the relay work
    /// without a Nomad cluster: to stdout, or to the sinks of a given configuration.
    Demo {
        /// Configuration whose sinks and routes to use (its [nomad] tables are replaced by the
        /// emulator). Without it: stdout. The journal is always a fresh temporary directory.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Events per second the emulated cluster generates.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Stop generating after this many events (the relay keeps running until Ctrl-C).
        #[arg(long)]
        events: Option<u64>,
    },
    /// Inspect saved positions.
    Checkpoint {
        /// What to do with checkpoints.
        #[command(subcommand)]
        action: CheckpointAction,
    },
    /// Inspect the journal.
    Journal {
        /// What to do with the journal.
        #[command(subcommand)]
        action: JournalAction,
    },
}

/// `journal` subcommands.
#[derive(Debug, Subcommand)]
pub enum JournalAction {
    /// Read every record the journal holds and list the damaged ones (exit status 1 if any);
    /// changes nothing, and can run beside a running relay.
    Check {
        /// Configuration file (TOML).
        #[arg(long, short, env = "NOMAD_RELAY_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// `checkpoint` subcommands.
#[derive(Debug, Subcommand)]
pub enum CheckpointAction {
    /// Print the source checkpoint, the journal's extent and every sink's cursor.
    Show {
        /// Configuration file (TOML).
        #[arg(long, short, env = "NOMAD_RELAY_CONFIG")]
        config: Option<PathBuf>,
    },
}

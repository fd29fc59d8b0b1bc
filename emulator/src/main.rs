//! `nomad-emulator`: serves an emulated Nomad `/v1/event/stream` fed by the
//! seeded activity generator, until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use nomad_emulator::{Emulator, EmulatorConfig, Framing, GeneratorConfig};
use tracing_subscriber::EnvFilter;

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(name = "nomad-emulator", version, about = "Emulates Nomad's event stream endpoint")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4646")]
    listen: SocketAddr,
    /// HTTP layer to emulate.
    #[arg(long, value_enum, default_value_t = FramingArg::Modern)]
    framing: FramingArg,
    /// Generated events per second (0 = as fast as possible).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Stop generating after this many events (the server keeps serving).
    #[arg(long)]
    total: Option<u64>,
    /// Event buffer size in batches.
    #[arg(long, default_value_t = 100)]
    buffer_size: usize,
    /// Heartbeat period in seconds.
    #[arg(long, default_value_t = 30)]
    heartbeat_secs: u64,
    /// Generator seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Every Nth operation is a huge PlanResult line.
    #[arg(long)]
    large_line_every: Option<u64>,
    /// Size of a huge line in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    large_line_bytes: usize,
    /// Namespaces that exist (jobs are spread over them).
    #[arg(long, value_delimiter = ',', default_value = "default")]
    namespaces: Vec<String>,
}

/// `--framing` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum FramingArg {
    /// Nomad ≥ 1.11.2.
    Modern,
    /// Nomad ≤ 1.11.1.
    Legacy,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let args = Args::parse();
    let config = EmulatorConfig {
        framing: match args.framing {
            FramingArg::Modern => Framing::Modern,
            FramingArg::Legacy => Framing::Legacy,
        },
        heartbeat_interval: Duration::from_secs(args.heartbeat_secs.max(1)),
        buffer_size: args.buffer_size,
        namespaces: args.namespaces.clone(),
        ..EmulatorConfig::default()
    };
    let emulator = Emulator::start_on(config, args.listen).await?;
    emulator.set_record_history(false);
    tracing::info!(url = %emulator.url(), "serving /v1/event/stream");
    let generator = emulator.generator(GeneratorConfig {
        rate: (args.rate > 0.0).then_some(args.rate),
        total_events: args.total,
        seed: args.seed,
        large_line_every: args.large_line_every,
        large_line_bytes: args.large_line_bytes,
        namespaces: args.namespaces,
    });
    let generating = tokio::spawn(async move {
        let n = generator.run().await;
        tracing::info!(events = n, "generator finished");
    });
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    generating.abort();
    emulator.shutdown().await;
    Ok(())
}

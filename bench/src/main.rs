//! nomad-relay's benchmark program. Figures go to BENCHMARKS.md with the command that
//! produced them; nothing here is a pass/fail test, except that `all --smoke` fails when no
//! events flowed.
//!
//! `bench all` measures everything in one run: the disk, frame parsing and the journal
//! alone, then for each sink (file, NATS JetStream, NATS core, RabbitMQ, Kafka) the relay's
//! catch-up throughput beside the raw client's, end-to-end latency at 1,000 and 10,000
//! events/s with the relay's memory and CPU, and finally the relay's memory while one sink is
//! down. The relay runs as its own process (the `nomad-relay` binary beside this one), so its
//! memory and CPU are its own; the emulator, consumers and raw clients run in this process.

mod local;
mod process;
mod report;
mod scenarios;
mod targets;
mod workload;

use anyhow::Result;
use clap::{Parser, Subcommand};
use report::{Figure, Group};
use std::path::PathBuf;
use targets::Target;

#[derive(Parser)]
#[command(about = "Measures nomad-relay: throughput, latency and memory per sink, against the raw client")]
struct Cli {
    /// Also write every figure to this JSON file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Everything, for every sink (or those named with --sinks).
    All {
        /// A few seconds per sink, to check the program works (CI); fails if no events flowed.
        #[arg(long)]
        smoke: bool,
        /// The sinks to measure.
        #[arg(long, value_delimiter = ',', default_values_t = Target::ALL.map(|t| t.name().to_owned()))]
        sinks: Vec<String>,
        /// Events per throughput run (default 200,000; smoke 3,000).
        #[arg(long)]
        events: Option<usize>,
        /// Seconds per latency run (default 20; smoke 1).
        #[arg(long)]
        latency_seconds: Option<f64>,
        /// Seconds the backlog run keeps a sink down (default 600; smoke 2).
        #[arg(long)]
        backlog_seconds: Option<f64>,
        /// Offered rate of the backlog run.
        #[arg(long, default_value_t = 2_000.0)]
        backlog_rate: f64,
    },
    /// Catch-up throughput of the relay to one sink, and of its raw client.
    Throughput {
        #[arg(long, value_enum)]
        sink: Target,
        #[arg(long, default_value_t = 200_000)]
        events: usize,
    },
    /// End-to-end latency to one sink at a fixed offered rate.
    Latency {
        #[arg(long, value_enum)]
        sink: Target,
        #[arg(long, default_value_t = 1_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
    },
    /// The raw client's end-to-end latency through the same broker and consumer (kafka only).
    RawLatency {
        #[arg(long, value_enum, default_value = "kafka")]
        sink: Target,
        #[arg(long, default_value_t = 1_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
    },
    /// The relay's memory while one sink is down and the journal absorbs the backlog.
    Backlog {
        #[arg(long, default_value_t = 2_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 600.0)]
        seconds: f64,
    },
    /// The journal alone: ingest rate with its fsync policy.
    Journal {
        #[arg(long, default_value_t = 512)]
        megabytes: usize,
    },
    /// Framing and frame parsing alone, on the emulator's event mix.
    Parse {
        #[arg(long, default_value_t = 256)]
        megabytes: usize,
    },
    /// The disk's sequential write rate with an fdatasync per MiB.
    Disk {
        #[arg(long, default_value_t = 256)]
        megabytes: usize,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::from(1);
        }
    };
    let mut figures = Vec::new();
    let result = runtime.block_on(run(cli.what, &mut figures));
    println!("{}", report::table(&figures));
    let summary = report::summary(&figures);
    if !summary.is_empty() {
        println!("{summary}");
    }
    if let Some(path) = &cli.json
        && let Err(error) = report::write_json(path, &figures, &command)
    {
        eprintln!("error: cannot write {}: {error}", path.display());
        return std::process::ExitCode::from(1);
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Runs `what`, adding each group's figures as soon as it is measured (so a failure later
/// still reports what was measured).
async fn run(what: What, figures: &mut Vec<Figure>) -> Result<()> {
    let dir = process::bench_dir()?;
    let mut keep = |group: Group| figures.extend(group.figures);
    match what {
        What::Throughput { sink, events } => keep(scenarios::throughput(sink, events).await?),
        What::Latency { sink, rate, seconds } => keep(scenarios::latency(sink, rate, seconds).await?),
        What::RawLatency { sink, rate, seconds } => keep(scenarios::raw_latency(sink, rate, seconds).await?),
        What::Backlog { rate, seconds } => keep(scenarios::backlog(rate, seconds).await?),
        What::Journal { megabytes } => keep(local::journal(megabytes, &dir).await?),
        What::Parse { megabytes } => keep(local::parse(megabytes)?),
        What::Disk { megabytes } => keep(local::disk(megabytes, &dir)?),
        What::All { smoke, sinks, events, latency_seconds, backlog_seconds, backlog_rate } => {
            let targets = sinks
                .iter()
                .map(|name| {
                    Target::ALL.into_iter().find(|t| t.name() == name).ok_or_else(|| {
                        anyhow::anyhow!(
                            "unknown sink `{name}`; the sinks are file, jetstream, nats, rabbitmq, kafka"
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let megabytes = if smoke { 16 } else { 512 };
            let events = events.unwrap_or(if smoke { 3_000 } else { 200_000 });
            let seconds = latency_seconds.unwrap_or(if smoke { 1.0 } else { 20.0 });
            let down = backlog_seconds.unwrap_or(if smoke { 2.0 } else { 600.0 });
            let mut check = |group: Group, relay_run: bool| -> Result<()> {
                if smoke && relay_run {
                    scenarios::assert_flowed(&group)?;
                }
                eprintln!("measured: {}", group.figures.first().map_or("", |f| f.group.as_str()));
                keep(group);
                Ok(())
            };
            check(local::disk(megabytes, &dir)?, false)?;
            check(local::parse(megabytes)?, false)?;
            check(local::journal(megabytes, &dir).await?, false)?;
            // Every latency run first, then every catch-up run: a catch-up leaves its broker
            // busy for a while after it (RabbitMQ deleting a queue of 200,000 persistent
            // messages, the disk writing back a gigabyte), which a latency run right after
            // it measured as the relay's (RabbitMQ's p99 at 1,000 events/s went from 9 to
            // 152 ms).
            for &target in &targets {
                check(scenarios::latency(target, 1_000.0, seconds).await?, true)?;
                check(scenarios::latency(target, 10_000.0, seconds).await?, true)?;
                if target == Target::Kafka {
                    check(scenarios::raw_latency(target, 1_000.0, seconds).await?, false)?;
                }
            }
            for target in targets {
                check(scenarios::throughput(target, events).await?, true)?;
            }
            check(scenarios::backlog(backlog_rate, down).await?, true)?;
        }
    }
    Ok(())
}

//! nomad-relay's benchmark program (`cargo run --release -p bench -- <what>`).
//!
//! Each measurement prints a table row on stdout and, with `--json FILE`, writes every
//! figure to a machine-readable file. Figures go to BENCHMARKS.md with the command that
//! produced them; nothing here is a pass/fail test.
//!
//! What exists so far (issue 7 is in progress):
//! - `parse`: the source's framing and frame parsing alone, over the emulator's realistic
//!   event mix, fed in 64 KiB reads as from a socket: MB/s and events/s.
//! - `disk`: the disk's own sequential write rate with an `fdatasync` per MiB, the bound for
//!   anything durable (journal, file sink) on this machine.

use bytes::Bytes;
use clap::{Parser, Subcommand};
use nomad_emulator::{Generator, GeneratorConfig};
use nomad_relay::source::frame::{Frame, parse_line};
use nomad_relay::source::framing::{LineSplitter, Piece};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Measures nomad-relay's throughput")]
struct Cli {
    /// Also write every figure to this JSON file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Framing and frame parsing alone, on the emulator's event mix.
    Parse {
        /// Megabytes of NDJSON to generate and parse.
        #[arg(long, default_value_t = 256)]
        megabytes: usize,
    },
    /// The disk's sequential write rate with an fdatasync per MiB.
    Disk {
        /// Megabytes to write.
        #[arg(long, default_value_t = 256)]
        megabytes: usize,
        /// Directory to write in (a file is created and removed there).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

/// One measured figure.
struct Figure {
    name: &'static str,
    value: f64,
    unit: &'static str,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.what {
        What::Parse { megabytes } => Ok(parse(megabytes)),
        What::Disk { megabytes, dir } => disk(megabytes, &dir),
    };
    let figures = match result {
        Ok(figures) => figures,
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::from(1);
        }
    };
    println!("| figure | value | unit |\n|---|---|---|");
    for figure in &figures {
        println!("| {} | {:.1} | {} |", figure.name, figure.value, figure.unit);
    }
    if let Some(path) = cli.json {
        let map: serde_json::Map<String, serde_json::Value> = figures
            .iter()
            .map(|f| (f.name.to_owned(), serde_json::json!({ "value": f.value, "unit": f.unit })))
            .collect();
        if let Err(error) = std::fs::write(&path, serde_json::Value::Object(map).to_string()) {
            eprintln!("error: cannot write {}: {error}", path.display());
            return std::process::ExitCode::from(1);
        }
    }
    std::process::ExitCode::SUCCESS
}

/// Generates `megabytes` of event-stream lines, then frames and parses them as the source
/// does, in 64 KiB reads.
fn parse(megabytes: usize) -> Vec<Figure> {
    let mut generator = Generator::new(GeneratorConfig { seed: 7, ..GeneratorConfig::default() });
    let mut body = Vec::with_capacity(megabytes << 20);
    while body.len() < megabytes << 20 {
        for batch in generator.next_batches() {
            body.extend_from_slice(batch.to_line().as_bytes());
            body.push(b'\n');
        }
    }
    let mut splitter = LineSplitter::new(64 << 20);
    let mut pieces = Vec::new();
    let (mut events, mut lines) = (0u64, 0u64);
    let started = Instant::now();
    for chunk in body.chunks(64 << 10) {
        splitter.push(chunk, &mut pieces);
        for piece in pieces.drain(..) {
            if let Piece::Line(line) = piece {
                lines += 1;
                if let Ok(Frame::Data { events: parsed, .. }) = parse_line(&Bytes::clone(&line)) {
                    events += parsed.len() as u64;
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    vec![
        Figure { name: "parse_input", value: body.len() as f64 / 1e6, unit: "MB" },
        Figure { name: "parse_lines", value: lines as f64, unit: "lines" },
        Figure { name: "parse_rate", value: body.len() as f64 / 1e6 / seconds, unit: "MB/s" },
        Figure { name: "parse_events_rate", value: events as f64 / seconds, unit: "events/s" },
    ]
}

/// Writes `megabytes` in 1 MiB writes, each followed by `fdatasync`.
fn disk(megabytes: usize, dir: &std::path::Path) -> Result<Vec<Figure>, String> {
    let path = dir.join(format!("nomad-relay-bench-disk-{}.tmp", std::process::id()));
    let mut file =
        std::fs::File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let block = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    let mut result = Ok(());
    for _ in 0..megabytes {
        if let Err(e) = file.write_all(&block).and_then(|()| file.sync_data()) {
            result = Err(format!("writing {}: {e}", path.display()));
            break;
        }
    }
    let seconds = started.elapsed().max(Duration::from_micros(1)).as_secs_f64();
    let _ = std::fs::remove_file(&path);
    result?;
    Ok(vec![Figure {
        name: "disk_write_fdatasync_per_mib",
        value: (megabytes << 20) as f64 / 1e6 / seconds,
        unit: "MB/s",
    }])
}

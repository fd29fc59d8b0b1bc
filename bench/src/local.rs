//! Measurements that need no broker: frame parsing alone, the journal alone, and the disk's
//! own write-with-fsync rate (the bound for anything durable on this machine).

use crate::report::Group;
use anyhow::{Context, Result};
use bytes::Bytes;
use nomad_emulator::{Generator, GeneratorConfig};
use nomad_relay::config::JournalConfig;
use nomad_relay::journal::board::CursorBoard;
use nomad_relay::journal::writer::JournalWriter;
use nomad_relay::source::frame::{Frame, parse_line};
use nomad_relay::source::lines::{LineSplitter, Piece};
use nomad_relay_sink_api::{Envelope, EventId};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// `megabytes` of the generator's event-stream lines, as Nomad would send them.
fn stream_body(megabytes: usize) -> Vec<u8> {
    let mut generator = Generator::new(GeneratorConfig { seed: 7, ..GeneratorConfig::default() });
    let mut body = Vec::with_capacity(megabytes << 20);
    while body.len() < megabytes << 20 {
        for batch in generator.next_batches() {
            body.extend_from_slice(batch.to_line().as_bytes());
            body.push(b'\n');
        }
    }
    body
}

/// Frames and parses `megabytes` of lines as the source does, fed in 64 KiB reads. Fails if
/// any line does not parse as a frame, or no event came out.
pub fn parse(megabytes: usize) -> Result<Group> {
    let body = Bytes::from(stream_body(megabytes));
    let mut splitter = LineSplitter::new(64 << 20);
    let mut pieces = Vec::new();
    let (mut events, mut lines, mut failed) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    for start in (0..body.len()).step_by(64 << 10) {
        splitter.push(&body.slice(start..body.len().min(start + (64 << 10))), &mut pieces);
        for piece in pieces.drain(..) {
            lines += 1;
            match piece {
                Piece::Line(line) => match parse_line(&line) {
                    Ok(Frame::Data { events: parsed, .. }) => events += parsed.len() as u64,
                    Ok(_) => {}
                    Err(_) => failed += 1,
                },
                _ => failed += 1,
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if failed > 0 || events == 0 {
        anyhow::bail!("the parser failed on {failed} of {lines} lines and found {events} events");
    }
    let mut group = Group::new("parse");
    group.add("input", body.len() as f64 / 1e6, "MB");
    group.add("lines", lines as f64, "lines");
    group.add("mb_per_s", body.len() as f64 / 1e6 / seconds, "MB/s");
    group.add("events_per_s", events as f64 / seconds, "events/s");
    Ok(group)
}

/// Writes `megabytes` in 1 MiB writes, each followed by `fdatasync`.
pub fn disk(megabytes: usize, dir: &Path) -> Result<Group> {
    let path = dir.join(format!("nomad-relay-bench-disk-{}.tmp", std::process::id()));
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    let block = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    let mut result = Ok(());
    for _ in 0..megabytes {
        if let Err(e) = file.write_all(&block).and_then(|()| file.sync_data()) {
            result = Err(e).with_context(|| format!("writing {}", path.display()));
            break;
        }
    }
    let seconds = started.elapsed().max(Duration::from_micros(1)).as_secs_f64();
    crate::process::remove_quietly(&path);
    result?;
    let mut group = Group::new("disk");
    group.add("write_fdatasync_per_mib_mb_per_s", (megabytes << 20) as f64 / 1e6 / seconds, "MB/s");
    Ok(group)
}

/// The journal alone: `megabytes` of generated events handed to the journal writer line by
/// line, as the source hands them, with its own fsync policy (one write and one fsync per
/// group of waiting lines); timed until the last is durable.
pub async fn journal(megabytes: usize, dir: &Path) -> Result<Group> {
    let dir = tempfile::Builder::new().prefix("nomad-relay-bench-journal-").tempdir_in(dir)?;
    let mut generator = Generator::new(GeneratorConfig { seed: 9, ..GeneratorConfig::default() });
    let mut lines: Vec<Vec<Envelope>> = Vec::new();
    let (mut bytes, mut events) = (0usize, 0u64);
    while bytes < megabytes << 20 {
        for batch in generator.next_batches() {
            let line: Vec<Envelope> = batch
                .events
                .iter()
                .enumerate()
                .map(|(occurrence, event)| Envelope {
                    seq: 0,
                    id: EventId { index: batch.index, digest: 0, occurrence: occurrence as u32 },
                    source: "default".into(),
                    topic: event.topic.clone(),
                    event_type: event.event_type.clone(),
                    key: event.key.clone(),
                    namespace: event.namespace.clone(),
                    raw: Bytes::from(event.to_json(batch.index)),
                })
                .collect();
            bytes += line.iter().map(|e| e.raw.len()).sum::<usize>();
            events += line.len() as u64;
            lines.push(line);
        }
    }
    let (writer, mut head) = JournalWriter::open(
        dir.path(),
        JournalConfig::default(),
        (Vec::new(), 0, HashMap::new()),
        Arc::new(CursorBoard::default()),
        Arc::new(AtomicBool::new(false)),
    )?;
    let (sender, receiver) = nomad_relay::journal::handoff::handoff(256, 64 << 20);
    let thread = std::thread::spawn(move || writer.run(receiver));
    let started = Instant::now();
    for line in lines {
        if sender.send(line).await.is_err() {
            anyhow::bail!("the journal writer stopped");
        }
    }
    head.wait_for(|head| *head >= events).await.context("the journal writer stopped")?;
    let seconds = started.elapsed().as_secs_f64();
    drop(sender);
    tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the journal writer panicked"))?;
    let mut group = Group::new("journal");
    group.add("ingest_mb_per_s", bytes as f64 / 1e6 / seconds, "MB/s");
    group.add("ingest_events_per_s", events as f64 / seconds, "events/s");
    Ok(group)
}

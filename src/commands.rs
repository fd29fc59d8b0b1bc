//! The subcommands other than `run`: `validate`, `tail`, `replay` and `checkpoint show`.

use crate::config::Config;
use crate::cursor;
use crate::journal::{
    self, Recovery,
    reader::{JournalReader, Read},
};
use crate::relay::{RelayError, journal_dir, lock_data_dir, source_names};
use crate::routing::Router;
use crate::sinks::AnySink;
use crate::source::Source;
use crate::source::resume::Resume;
use crate::stats::SourceStats;
use nomad_relay_sink_api::{Envelope, Outcome, Sink};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// `validate`: prints a summary of a valid configuration.
pub fn validate(config: &Config) -> String {
    let mut text = String::from("configuration is valid\n");
    text.push_str(&format!("data_dir: {}\n", config.data_dir.display()));
    for nomad in &config.nomad {
        text.push_str(&format!(
            "nomad {}: {} (namespace {}, topics {})\n",
            nomad.name,
            nomad.address.to_vec().join(", "),
            nomad.namespace,
            nomad.topics.join(",")
        ));
    }
    for (name, sink) in &config.sinks {
        text.push_str(&format!("sink {name}: {}\n", sink.kind.summary()));
    }
    text.push_str(&format!(
        "routes: {}\n",
        if config.routes.is_empty() {
            "none (every event to every sink)".to_owned()
        } else {
            config.routes.len().to_string()
        }
    ));
    text
}

/// `tail`: prints events from every configured Nomad source until `shutdown`.
pub async fn tail(config: Config, index: Option<u64>, shutdown: CancellationToken) -> Result<(), RelayError> {
    let (tx, mut rx) = crate::journal::handoff::handoff(64, 64 << 20);
    let mut tasks = Vec::new();
    let names = source_names(&config)?;
    for (nomad, name) in config.nomad.into_iter().zip(names) {
        let start = index.map(crate::config::StartAt::Index).unwrap_or(nomad.start);
        let resume = Resume::new(&name, None, start, true).without_start_gaps();
        let name = nomad.name.clone();
        let source = Source::new(nomad, resume, tx.clone(), Arc::new(SourceStats::default()))
            .map_err(|e| RelayError::Other(format!("Nomad source `{name}`: {e}")))?;
        tasks.push(tokio::spawn(source.run(shutdown.clone())));
    }
    drop(tx);
    let mut stdout = tokio::io::stdout();
    while let Some(handoff) = rx.recv().await {
        let mut buffer = Vec::new();
        for event in handoff.events {
            buffer.extend_from_slice(&event.raw);
            buffer.push(b'\n');
        }
        if stdout.write_all(&buffer).await.and(stdout.flush().await).is_err() {
            shutdown.cancel();
            break;
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RelayError> + Send + 'static,
) -> Result<T, RelayError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RelayError::Other(format!("blocking task failed: {e}")))?
}

/// `journal check`: reads every record the journal holds and lists the damaged ones, without
/// changing anything. The report, and whether any record is damaged.
pub fn journal_check(config: &Config) -> Result<(String, bool), RelayError> {
    let dir = journal_dir(&config.data_dir);
    let recovered = journal::recover(&dir, Recovery::ReadOnly, &source_names(config)?)?;
    let mut reader = JournalReader::inspecting(dir.clone(), recovered.oldest);
    let (mut records, mut damaged) = (0u64, Vec::new());
    loop {
        match reader.read(recovered.head, 10_000, 64 << 20)? {
            Read::Events(events) if events.is_empty() => break,
            Read::Events(events) => records += events.len() as u64,
            Read::Skipped { .. } => {}
            Read::Damaged { reason, .. } => damaged.push(reason),
        }
    }
    let mut report = format!(
        "journal {}: records {}..={} in {} segments, {records} readable",
        dir.display(),
        recovered.oldest,
        recovered.head,
        recovered.segments.len()
    );
    for reason in &damaged {
        report.push_str(&format!("\ndamaged: {reason}"));
    }
    let quarantine = dir.join("quarantine");
    if quarantine.is_dir() {
        report.push_str(&format!("\nquarantined copies of damaged records are in {}", quarantine.display()));
    }
    Ok((report, !damaged.is_empty()))
}

/// `checkpoint show`: a human-readable report.
pub fn checkpoint_show(config: &Config) -> Result<String, RelayError> {
    let names = source_names(config)?;
    let recovered = journal::recover(&journal_dir(&config.data_dir), Recovery::ReadOnly, &names)?;
    let mut out = String::new();
    for nomad in &config.nomad {
        match recovered.checkpoints.get(&nomad.name) {
            Some(checkpoint) => out.push_str(&format!(
                "source {}: resumes at Nomad index {} ({} events already journaled at it)\n",
                nomad.name,
                checkpoint.index,
                checkpoint.seen.len()
            )),
            None => out.push_str(&format!(
                "source {}: nothing journaled yet; first start at {:?}\n",
                nomad.name, nomad.start
            )),
        }
    }
    let bytes: u64 = recovered.segments.iter().map(|s| s.len).sum();
    out.push_str(&format!(
        "journal: records {}..={} in {} segments, {} bytes\n",
        recovered.oldest,
        recovered.head,
        recovered.segments.len(),
        bytes
    ));
    for name in config.sinks.keys() {
        match cursor::load(&config.data_dir, name)? {
            Some(cursor) => out.push_str(&format!(
                "sink {name}: next record {}, last Nomad index {}, {} records pending\n",
                cursor.next_seq(),
                cursor.position.last_index,
                (recovered.head + 1).saturating_sub(cursor.next_seq())
            )),
            None => {
                out.push_str(&format!("sink {name}: no cursor yet (starts at the oldest journaled record)\n"))
            }
        }
    }
    Ok(out)
}

/// Which journaled events `replay` delivers again.
#[derive(Debug, Clone)]
pub struct ReplayRange {
    /// First Nomad index (inclusive).
    pub from_index: u64,
    /// Last Nomad index (inclusive); `None` for everything the sink already had.
    pub to_index: Option<u64>,
    /// Only this source's events; `None` for every source.
    pub source: Option<String>,
    /// Give the events ids of this replay's own, so that brokers store them again.
    pub republish: bool,
}

impl ReplayRange {
    fn contains(&self, event: &nomad_relay_sink_api::Envelope) -> bool {
        self.source.as_ref().is_none_or(|source| *source == event.source)
            && event.id.index >= self.from_index
            && self.to_index.is_none_or(|to| event.id.index <= to)
    }
}

/// `replay`: delivers the journaled events in `range` to one sink again. Events past the
/// sink's cursor are left to `run`, so nothing is delivered twice by the two.
pub async fn replay(config: Config, sink_name: &str, range: ReplayRange) -> Result<String, RelayError> {
    if let Some(source) = &range.source
        && !config.nomad.iter().any(|n| &n.name == source)
    {
        let known: Vec<&str> = config.nomad.iter().map(|n| n.name.as_str()).collect();
        return Err(RelayError::Other(format!(
            "no Nomad source named `{source}`; configured sources are {}",
            known.join(", ")
        )));
    }
    let Some(sink_config) = config.sinks.get(sink_name) else {
        let known: Vec<&str> = config.sinks.keys().map(String::as_str).collect();
        return Err(RelayError::Other(format!(
            "no sink named `{sink_name}`; configured sinks are {}",
            known.join(", ")
        )));
    };
    let _lock = lock_data_dir(&config.data_dir)?;
    let dir = journal_dir(&config.data_dir);
    let (recovered, saved) = blocking({
        let (dir, data_dir, names, sink_name) =
            (dir.clone(), config.data_dir.clone(), source_names(&config)?, sink_name.to_owned());
        move || Ok((journal::recover(&dir, Recovery::Repair, &names)?, cursor::load(&data_dir, &sink_name)?))
    })
    .await?;
    let Some(mut cursor) = saved else {
        return Err(RelayError::Other(format!(
            "sink `{sink_name}` has no cursor yet: `run` will deliver everything the journal holds to it"
        )));
    };
    let delivered_through = cursor.next_seq().saturating_sub(1).min(recovered.head);
    let mut sink = AnySink::from_config(&sink_config.kind)
        .map_err(|e| RelayError::Other(format!("sink `{sink_name}`: {e}")))?;
    sink.open(cursor.sink_state.clone())
        .await
        .map_err(|e| RelayError::Other(format!("cannot open sink `{sink_name}`: {}", e.report())))?;
    let router = Router::new(config.routes.clone());
    let mut reader = Some(JournalReader::new(dir.clone(), recovered.oldest));
    let mut tally = Tally::default();
    // A republish's ids: each event's digest XORed with one number drawn for this replay, the
    // same for every event of it, so the new ids are as distinct from each other as the
    // originals, and from them.
    let republish = range.republish.then(rand::random::<u64>);
    loop {
        let batch_size = sink_config.common.batch_size;
        let Some(mut taken) = reader.take() else { break };
        let (returned, batch) = blocking(move || {
            let batch = taken.read(delivered_through, batch_size, 16 << 20);
            Ok((taken, batch))
        })
        .await?;
        reader = Some(returned);
        let batch = match batch? {
            Read::Events(events) if events.is_empty() => break,
            Read::Events(events) => events,
            Read::Skipped { .. } => continue,
            Read::Damaged { reason, .. } => {
                eprintln!("warning: {reason}; skipped");
                continue;
            }
        };
        let mut chosen: Vec<_> =
            batch.into_iter().filter(|e| range.contains(e) && router.routes_to(sink_name, e)).collect();
        if let Some(nonce) = republish {
            for event in &mut chosen {
                event.id.digest ^= nonce;
            }
        }
        if chosen.is_empty() {
            continue;
        }
        let mut outcomes = sink.send(&chosen).await;
        if outcomes.iter().any(|o| matches!(o, Outcome::Deferred)) {
            // The sink asked for its state to be saved first; nothing of this batch went out.
            // A replay saves the state once at the end, so sending again is all it needs.
            outcomes = sink.send(&chosen).await;
        }
        tally.count(sink_name, &chosen, outcomes)?;
    }
    sink.flush().await.map_err(|e| RelayError::Other(e.report()))?;
    cursor.sink_state = sink.checkpoint_state();
    let data_dir = config.data_dir.clone();
    blocking(move || Ok(cursor::save(&data_dir, &cursor)?)).await?;
    Ok(tally.summary(sink_name, republish, recovered.oldest))
}

/// What a replay did with the events it sent.
#[derive(Default)]
struct Tally {
    replayed: u64,
    already_present: u64,
    skipped_rejected: u64,
    first_index: Option<u64>,
    last_index: u64,
}

impl Tally {
    /// Counts the outcomes of `sent`; a retry or a second deferral ends the replay with an
    /// error that says where a new one should start.
    fn count(
        &mut self,
        sink_name: &str,
        sent: &[Envelope],
        outcomes: Vec<Outcome>,
    ) -> Result<(), RelayError> {
        if outcomes.len() != sent.len() {
            return Err(RelayError::Other(format!(
                "sink `{sink_name}` returned {} outcomes for {} events during replay (a bug in the sink); {} events were delivered again before it, through Nomad index {}",
                outcomes.len(),
                sent.len(),
                self.replayed,
                self.last_index
            )));
        }
        for (event, outcome) in sent.iter().zip(outcomes) {
            let replayed = self.replayed;
            let last_index = self.last_index;
            match outcome {
                Outcome::Delivered => {
                    self.replayed += 1;
                    self.first_index.get_or_insert(event.id.index);
                    self.last_index = event.id.index;
                }
                Outcome::Duplicate => self.already_present += 1,
                Outcome::Rejected(_) => self.skipped_rejected += 1,
                Outcome::Deferred => {
                    return Err(RelayError::Other(format!(
                        "sink `{sink_name}` deferred event {} twice during replay (a bug in the sink); {replayed} events were delivered again before it, through Nomad index {last_index}",
                        event.id
                    )));
                }
                Outcome::Retry(error) | Outcome::Parked(error) => {
                    return Err(RelayError::Other(format!(
                        "sink `{sink_name}` failed during replay after {replayed} events: {}; those {replayed} were delivered again, so a new replay should start after Nomad index {last_index}",
                        error.report()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The line `replay` prints.
    fn summary(&self, sink_name: &str, republish: Option<u64>, oldest: u64) -> String {
        let mut summary = format!("replayed {} events to sink `{sink_name}`", self.replayed);
        if let Some(first) = self.first_index {
            summary.push_str(&format!(" (Nomad indexes {first}..={})", self.last_index));
        }
        if let Some(nonce) = republish {
            summary.push_str(&format!(
                "; published again with ids of this replay's own (each event's digest XORed with {nonce:016x})"
            ));
        }
        if self.already_present > 0 {
            summary.push_str(&format!(
                "; {} were already at the destination and were not stored again (JetStream's duplicate window, or records the Kafka sink found)",
                self.already_present
            ));
        }
        if self.skipped_rejected > 0 {
            summary.push_str(&format!("; {} rejected by the sink", self.skipped_rejected));
        }
        if oldest > 1 {
            summary.push_str(&format!(
                "; the journal keeps records from {oldest} on, older ones were removed by retention"
            ));
        }
        summary
    }
}

/// How `demo` runs.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Events per second the emulated cluster generates.
    pub rate: f64,
    /// Stop generating after this many events.
    pub events: Option<u64>,
}

/// `demo`: an emulated Nomad cluster in this process, generating a realistic mix of events,
/// and the relay following it with `config`'s sinks until `shutdown`.
pub async fn demo(
    mut config: Config,
    options: DemoOptions,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    let emulator = nomad_emulator::Emulator::start(nomad_emulator::EmulatorConfig {
        buffer_size: 10_000,
        ..nomad_emulator::EmulatorConfig::default()
    })
    .await
    .map_err(|e| RelayError::Other(format!("cannot start the emulated Nomad cluster: {e}")))?;
    let generator = emulator.generator(nomad_emulator::GeneratorConfig {
        rate: Some(options.rate),
        total_events: options.events,
        seed: std::process::id().into(),
        ..nomad_emulator::GeneratorConfig::default()
    });
    let generating = tokio::spawn(generator.run());
    config.nomad = vec![crate::config::NomadConfig {
        address: nomad_relay_sink_api::units::OneOrMany::One(emulator.url()),
        ..crate::config::NomadConfig::default()
    }];
    // Always a fresh journal: the emulator's indexes have nothing to do with a real cluster's,
    // and must never reach the checkpoint of a configuration's real data_dir.
    let temporary = std::env::temp_dir().join(format!(
        "nomad-relay-demo-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    config.data_dir = temporary.clone();
    let sinks: Vec<&str> = config.sinks.keys().map(String::as_str).collect();
    tracing::info!(
        "demo: an emulated Nomad cluster at {} generates {} events/s; relaying to {}; Ctrl-C stops",
        emulator.url(),
        options.rate,
        sinks.join(", ")
    );
    let result = crate::relay::run(config, shutdown).await;
    generating.abort();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(temporary)).await;
    result
}

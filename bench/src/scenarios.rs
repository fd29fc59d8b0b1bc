//! Runs through the whole relay: the emulator serves the stream, the relay process journals
//! it and its sink delivers it, and the broker's acknowledgement (or a consumer seeing the
//! event) ends each event's journey.
//!
//! - [`throughput`]: events pre-published into the emulator's buffer; the relay starts from
//!   the oldest and catches up as fast as it can. The rate is taken from the first delivered
//!   event to the last (start-up excluded), from the relay's own delivered counter; the broker
//!   is then asked how many events it holds, and a wrong count fails the run. The same
//!   messages are then published by the raw client with the same guarantee, for the ratio.
//!   A second relay delivers the same events from a journal filled beforehand, with nothing
//!   left to ingest: the sink path alone.
//! - [`latency`]: the emulator publishes at a fixed offered rate; a consumer timestamps each
//!   event as it becomes visible; latency is that time minus the time its line was published.
//! - [`backlog`]: one sink up, one sink down the whole time: the journal absorbs the backlog
//!   and the relay's memory must stay flat.

use crate::process::{RelayProcess, Usage, bench_dir};
use crate::report::Group;
use crate::targets::{self, Names, Seen, Target};
use crate::workload::{Workload, subscribed_events};
use anyhow::{Context, Result, bail};
use nomad_emulator::{Emulator, EmulatorConfig};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const MIB: f64 = 1024.0 * 1024.0;

/// Sustained catch-up throughput of the relay to `target`, and of the raw client.
pub async fn throughput(target: Target, events: usize) -> Result<Group> {
    targets::require_broker(target)?;
    let workload = Workload::generate(events);
    let messages = workload.messages();
    let expected = messages.len() as u64;
    let bytes: usize = messages.iter().map(|m| m.body.len()).sum();
    let emulator =
        Emulator::start(EmulatorConfig { buffer_size: workload.batches.len() + 16, ..Default::default() })
            .await?;
    for batch in &workload.batches {
        emulator.publish(batch.clone());
    }
    let dir = bench_dir()?;
    let names = Names::new(&dir);
    let mut group = Group::new(target.name());
    let result = async {
        targets::prepare(target, &names).await?;
        let core_count =
            if target == Target::Nats { Some(targets::count_core_nats(&names).await?) } else { None };
        let mut relay = RelayProcess::start(&emulator.url(), &targets::sink_table(target, &names), "")?;
        let run = catch_up(&mut relay, expected).await;
        let usage = relay.usage();
        relay.stop();
        let (rate, seconds) = run?;
        let usage = usage?;
        check_broker_holds(target, &names, core_count, expected, "catch-up").await?;
        let from_journal = deliver_from_journal(target, &emulator, expected, &dir).await?;
        let raw = targets::raw_limit(target, &names, &messages, &dir).await?;
        let average = bytes as f64 / expected as f64;
        group.add("events", expected as f64, "events");
        group.add("mean_event_bytes", average, "bytes");
        group.add("relay_events_per_s", rate, "events/s");
        group.add("relay_mb_per_s", rate * average / 1e6, "MB/s");
        group.add("catch_up_seconds", seconds, "s");
        group.add("raw_client_events_per_s", raw, "events/s");
        group.add("ratio_to_raw_client", rate / raw, "×");
        group.add("from_journal_events_per_s", from_journal, "events/s");
        group.add("from_journal_ratio_to_raw_client", from_journal / raw, "×");
        group.add("peak_rss_mib", usage.peak_rss as f64 / MIB, "MiB");
        group.add("cpu_s_per_million_events", usage.cpu_seconds / expected as f64 * 1e6, "s");
        Ok(())
    }
    .await;
    targets::cleanup(target, &names).await;
    result.map(|()| group)
}

/// The sink path alone: a first relay journals the whole stream (delivering it to stdout
/// only), then a relay in the same directory delivers the filled journal to a new sink (a new
/// sink starts at the oldest record) with nothing left to ingest. Its rate, against the raw
/// client's, is what the sink worker and the broker do without the ingest (parse, journal
/// write) taking CPU from both.
async fn deliver_from_journal(
    target: Target,
    emulator: &Emulator,
    expected: u64,
    dir: &std::path::Path,
) -> Result<f64> {
    let names = Names::new(dir);
    let result = async {
        targets::prepare(target, &names).await?;
        let mut filler = RelayProcess::start(&emulator.url(), "[sinks.fill]\ntype = \"stdout\"\n", "")?;
        let filled = journal_everything(&mut filler, expected).await;
        let journal = filler.stop_keeping_dir();
        filled?;
        let core_count =
            if target == Target::Nats { Some(targets::count_core_nats(&names).await?) } else { None };
        let mut relay =
            RelayProcess::start_in(journal, &emulator.url(), &targets::sink_table(target, &names), "")?;
        let run = catch_up(&mut relay, expected).await;
        relay.stop();
        let (rate, _) = run?;
        check_broker_holds(target, &names, core_count, expected, "from the journal").await?;
        Ok(rate)
    }
    .await;
    targets::cleanup(target, &names).await;
    result
}

/// Waits until `relay` delivered `expected` events to its `fill` sink: all are journaled.
async fn journal_everything(relay: &mut RelayProcess, expected: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(900);
    while relay.metrics().await?.delivered("fill")? < expected {
        if Instant::now() > deadline {
            bail!("the relay did not journal {expected} events in 15 minutes; log:\n{}", relay.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Fails unless the broker holds exactly `expected` events of the `run` named `names`; for
/// core NATS, which keeps nothing, unless `core_count` (subscribed before the relay started)
/// saw them all.
async fn check_broker_holds(
    target: Target,
    names: &Names,
    core_count: Option<Arc<AtomicU64>>,
    expected: u64,
    run: &str,
) -> Result<()> {
    let at_broker = match core_count {
        Some(count) => {
            wait_for_count(&count, expected).await;
            count.load(Ordering::Relaxed)
        }
        None => targets::broker_count(target, names).await?,
    };
    if at_broker != expected {
        bail!("{} ({run}): the broker holds {at_broker} events, {expected} were sent", target.name());
    }
    Ok(())
}

async fn wait_for_count(count: &AtomicU64, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while count.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the relay until its sink delivered `expected` events; returns the rate from the
/// first delivered event seen to the last, and the whole time from start.
async fn catch_up(relay: &mut RelayProcess, expected: u64) -> Result<(f64, f64)> {
    let started = Instant::now();
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let metrics = relay.metrics().await?;
        let delivered = metrics.delivered("bench")?;
        let now = Instant::now();
        if delivered > 0 && first.is_none() {
            first = Some((now, delivered));
        }
        if delivered >= expected {
            // A short run can be delivered whole before any scrape sees a part of it (the
            // smoke run's 3,000 events from the journal, in about 30 ms): then the rate is
            // taken from the start, not from a first sample that already holds everything.
            let (since, base) = first.filter(|(_, base)| *base < delivered).unwrap_or((started, 0));
            let seconds = now.duration_since(since).as_secs_f64().max(1e-3);
            return Ok(((delivered - base) as f64 / seconds, now.duration_since(started).as_secs_f64()));
        }
        if started.elapsed() > Duration::from_secs(900) {
            bail!(
                "the relay delivered {delivered} of {expected} events in 15 minutes; log:\n{}",
                relay.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the relay and waits until it follows the stream.
async fn start_following(emulator: &Emulator, sinks: &str, extra: &str) -> Result<RelayProcess> {
    let mut relay = RelayProcess::start(&emulator.url(), sinks, extra)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !relay.metrics().await?.connected() {
        if Instant::now() > deadline {
            bail!("the relay did not connect to the emulator within 30 s; log:\n{}", relay.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(relay)
}

/// Publishes `workload` at `rate` events/s, recording when each index was published and
/// sampling the relay's memory every 250 ms.
async fn publish_paced(
    emulator: &Emulator,
    workload: &Workload,
    rate: f64,
    relay: &RelayProcess,
    samples: &mut Vec<(Instant, Usage)>,
) -> Result<(HashMap<u64, Instant>, u64)> {
    let mut published_at = HashMap::new();
    let mut sent = 0u64;
    let mut expected = 0u64;
    let started = Instant::now();
    let mut next_sample = started;
    for batch in &workload.batches {
        let due = started + Duration::from_secs_f64(sent as f64 / rate);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let now = Instant::now();
        if now >= next_sample {
            samples.push((now, relay.usage()?));
            next_sample = now + Duration::from_millis(250);
        }
        published_at.entry(batch.index).or_insert(now);
        emulator.publish(batch.clone());
        sent += batch.events.len() as u64;
        expected += subscribed_events(batch) as u64;
    }
    Ok((published_at, expected))
}

/// End-to-end latency at an offered `rate` for `seconds`, with the relay's memory and CPU.
pub async fn latency(target: Target, rate: f64, seconds: f64) -> Result<Group> {
    targets::require_broker(target)?;
    let workload = Workload::generate((rate * seconds) as usize);
    let emulator = Emulator::start(EmulatorConfig { buffer_size: 10_000, ..Default::default() }).await?;
    let dir = bench_dir()?;
    let names = Names::new(&dir);
    let label = if rate >= 10_000.0 {
        "at_10000"
    } else if rate >= 1_000.0 {
        "at_1000"
    } else {
        "at_rate"
    };
    let mut group = Group::new(target.name());
    let mut watcher = Watcher::default();
    let result = async {
        let mut seen_rx = watcher.start(target, &names).await?;
        let mut relay = start_following(&emulator, &targets::sink_table(target, &names), "").await?;
        let before = relay.usage()?;
        let mut samples = Vec::new();
        let (published_at, expected) =
            publish_paced(&emulator, &workload, rate, &relay, &mut samples).await?;
        let mut seen = Vec::with_capacity(expected as usize);
        let deadline = Instant::now() + Duration::from_secs(60);
        while (seen.len() as u64) < expected {
            match tokio::time::timeout_at(deadline.into(), seen_rx.recv()).await {
                Ok(Some(event)) => seen.push(event),
                _ => {
                    relay.check_alive()?;
                    bail!(
                        "{}: {} of {expected} events reached the consumer within 60 s of the last publish",
                        target.name(),
                        seen.len()
                    );
                }
            }
        }
        let after = relay.usage()?;
        relay.stop();
        check_each_once(target, &seen, &workload)?;
        let latencies = steady_latencies(&seen, &published_at, seconds)?;
        let steady = steady_rss(&samples);
        let names: [(&'static str, &'static str, &'static str, &'static str, &'static str); 2] = [
            (
                "p50_ms_at_1000",
                "p99_ms_at_1000",
                "p99_9_ms_at_1000",
                "max_ms_at_1000",
                "steady_rss_mib_at_1000",
            ),
            (
                "p50_ms_at_10000",
                "p99_ms_at_10000",
                "p99_9_ms_at_10000",
                "max_ms_at_10000",
                "steady_rss_mib_at_10000",
            ),
        ];
        let (p50, p99, p999, max, rss) = if label == "at_10000" { names[1] } else { names[0] };
        group.add(
            if label == "at_10000" { "events_seen_at_10000" } else { "events_seen" },
            seen.len() as f64,
            "events",
        );
        group.add(p50, percentile(&latencies, 0.50), "ms");
        group.add(p99, percentile(&latencies, 0.99), "ms");
        group.add(p999, percentile(&latencies, 0.999), "ms");
        group.add(max, latencies.last().copied().unwrap_or(0.0), "ms");
        group.add(rss, steady as f64 / MIB, "MiB");
        let cpu = (after.cpu_seconds - before.cpu_seconds) / expected as f64 * 1e6;
        group.add(
            if label == "at_10000" { "cpu_s_per_million_at_10000" } else { "cpu_s_per_million_at_1000" },
            cpu,
            "s",
        );
        group.add(
            if label == "at_10000" { "peak_rss_mib_at_10000" } else { "peak_rss_mib_at_1000" },
            after.peak_rss as f64 / MIB,
            "MiB",
        );
        Ok(())
    }
    .await;
    watcher.finish(target, &names).await;
    result.map(|()| group)
}

/// The consumer side of a latency run: `target`'s broker objects made fresh for it and a
/// consumer timestamping every event it sees; [`Watcher::finish`] stops the consumer and
/// removes the objects, whether the run succeeded or not.
#[derive(Default)]
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    /// Prepares the broker objects and starts the consumer; what it sees arrives on the
    /// returned channel.
    async fn start(&mut self, target: Target, names: &Names) -> Result<mpsc::UnboundedReceiver<Seen>> {
        targets::prepare(target, names).await?;
        let (seen_tx, seen_rx) = mpsc::unbounded_channel::<Seen>();
        self.thread = targets::consume(target, names, seen_tx, Arc::clone(&self.stop)).await?;
        Ok(seen_rx)
    }

    /// Stops the consumer (its thread is joined before the objects go: librdkafka crashes
    /// when topics are deleted under a live consumer) and removes the broker objects.
    async fn finish(self, target: Target, names: &Names) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        targets::cleanup(target, names).await;
    }
}

/// Fails unless the consumer saw as many events at each Nomad index as were published there:
/// a lost event and a repeat elsewhere would otherwise add up to the right total.
fn check_each_once(target: Target, seen: &[Seen], workload: &Workload) -> Result<()> {
    let mut want: HashMap<u64, i64> = HashMap::new();
    for batch in &workload.batches {
        *want.entry(batch.index).or_default() += subscribed_events(batch) as i64;
    }
    for (index, _) in seen {
        *want.entry(*index).or_default() -= 1;
    }
    let wrong: Vec<(&u64, &i64)> = want.iter().filter(|(_, left)| **left != 0).take(5).collect();
    if !wrong.is_empty() {
        bail!("{}: events per index missing (>0) or repeated (<0), first few: {wrong:?}", target.name());
    }
    Ok(())
}

/// The latency of every event seen, in milliseconds and sorted, leaving out the first seconds:
/// warm-up (connections, a new topic's first write), where the figures are for the steady state.
fn steady_latencies(seen: &[Seen], published_at: &HashMap<u64, Instant>, seconds: f64) -> Result<Vec<f64>> {
    let first_publish = published_at.values().min().copied().unwrap_or_else(Instant::now);
    let warm_up = first_publish + Duration::from_secs_f64((seconds / 4.0).min(2.0));
    let mut latencies = Vec::with_capacity(seen.len());
    for (index, at) in seen {
        let Some(published) = published_at.get(index) else {
            bail!("an event arrived with index {index}, which was never published");
        };
        if *published >= warm_up {
            latencies.push(at.duration_since(*published).as_secs_f64() * 1e3);
        }
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

/// The raw client's latency at `rate` through the same broker and consumer as [`latency`]
/// (Kafka only; see [`targets::publish_kafka_paced`]): what the relay's figure is measured against.
pub async fn raw_latency(target: Target, rate: f64, seconds: f64) -> Result<Group> {
    if target != Target::Kafka {
        bail!("the raw client's latency is measured for kafka only, not {}", target.name());
    }
    targets::require_broker(target)?;
    let messages = Workload::generate((rate * seconds) as usize).messages();
    let dir = bench_dir()?;
    let names = Names::new(&dir);
    let mut group = Group::new(target.name());
    let mut watcher = Watcher::default();
    let result = async {
        let mut seen_rx = watcher.start(target, &names).await?;
        let published_at = targets::publish_kafka_paced(&names, &messages, rate).await?;
        let mut seen = Vec::with_capacity(messages.len());
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < messages.len() {
            match tokio::time::timeout_at(deadline.into(), seen_rx.recv()).await {
                Ok(Some(event)) => seen.push(event),
                _ => bail!(
                    "{}: {} of {} raw-client messages reached the consumer within 60 s of the last publish",
                    target.name(),
                    seen.len(),
                    messages.len()
                ),
            }
        }
        let latencies = steady_latencies(&seen, &published_at, seconds)?;
        let (p50, p99, p999) = if rate >= 10_000.0 {
            ("raw_client_p50_ms_at_10000", "raw_client_p99_ms_at_10000", "raw_client_p99_9_ms_at_10000")
        } else {
            ("raw_client_p50_ms_at_1000", "raw_client_p99_ms_at_1000", "raw_client_p99_9_ms_at_1000")
        };
        group.add(p50, percentile(&latencies, 0.50), "ms");
        group.add(p99, percentile(&latencies, 0.99), "ms");
        group.add(p999, percentile(&latencies, 0.999), "ms");
        Ok(())
    }
    .await;
    watcher.finish(target, &names).await;
    result.map(|()| group)
}

/// The median resident size over the second half of the samples (after start-up).
fn steady_rss(samples: &[(Instant, Usage)]) -> u64 {
    let mut rss: Vec<u64> = samples[samples.len() / 2..].iter().map(|(_, usage)| usage.rss).collect();
    rss.sort_unstable();
    rss.get(rss.len() / 2).copied().unwrap_or(0)
}

fn percentile(sorted: &[f64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * quantile).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// One sink down (a NATS server address nothing listens on) and one up (stdout, to
/// /dev/null) for `seconds` at `rate`: the relay's memory, sampled each second, must not grow
/// while the journal takes the backlog.
pub async fn backlog(rate: f64, seconds: f64) -> Result<Group> {
    let workload = Workload::generate((rate * seconds) as usize);
    let emulator = Emulator::start(EmulatorConfig { buffer_size: 10_000, ..Default::default() }).await?;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let sinks = format!(
        "[sinks.up]\ntype = \"stdout\"\n[sinks.down]\ntype = \"nats\"\njetstream = false\nurl = \"nats://127.0.0.1:{closed}\"\nretry_max_delay = \"5s\"\n"
    );
    // The journal must hold the whole backlog (the default 2 GiB would fill, and the relay
    // would then stop reading Nomad, as designed, which is not what this run measures).
    let backlog_bytes = workload.messages().iter().map(|m| m.body.len() as u64 * 2).sum::<u64>() + (1 << 30);
    let journal = format!("[journal]\nmax_bytes = \"{}MiB\"\n", backlog_bytes >> 20);
    let mut relay = start_following(&emulator, &sinks, &journal).await?;
    let mut samples = Vec::new();
    let (_, expected) = publish_paced(&emulator, &workload, rate, &relay, &mut samples).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let metrics = relay.metrics().await?;
        if metrics.delivered("up")? >= expected || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let usage = relay.usage()?;
    relay.stop();
    let up = metrics.delivered("up")?;
    if up < expected {
        bail!("the sink that was up delivered {up} of {expected} events");
    }
    if metrics.delivered("down")? != 0 {
        bail!("the sink that was down delivered events: the benchmark's outage did not hold");
    }
    // Start-up is excluded: the first 10 % of the run (at least its first second, four
    // samples, while the allocator warms up), then the first and last tenths of the rest.
    let skip = (samples.len() / 10).max(4).min(samples.len().saturating_sub(2));
    let settled = &samples[skip..];
    let tenth = (settled.len() / 10).max(1);
    let mean = |part: &[(Instant, Usage)]| {
        part.iter().map(|(_, usage)| usage.rss as f64).sum::<f64>() / part.len().max(1) as f64 / MIB
    };
    let (early, late) =
        (mean(&settled[..tenth.min(settled.len())]), mean(&settled[settled.len().saturating_sub(tenth)..]));
    let peak = usage.peak_rss as f64 / MIB;
    let mut group = Group::new("backlog");
    group.add("offered_events_per_s", rate, "events/s");
    group.add("seconds_down", seconds, "s");
    group.add("events_held_for_the_down_sink", expected as f64, "events");
    group.add("delivered_by_the_up_sink", up as f64, "events");
    group.add("journal_mib", metrics.get("nomad_relay_journal_bytes")? / MIB, "MiB");
    group.add("rss_mib_early", early, "MiB");
    group.add("rss_mib_late", late, "MiB");
    group.add("peak_rss_mib", peak, "MiB");
    // The claim this run exists for: the backlog lives in the journal on disk, not in memory.
    if late > early + (early * 0.25).max(16.0) {
        bail!("the relay's memory grew from {early:.1} to {late:.1} MiB while the journal took the backlog");
    }
    if peak > BACKLOG_PEAK_MIB {
        bail!(
            "the relay's peak memory was {peak:.1} MiB, over the {BACKLOG_PEAK_MIB} MiB the shipped job gives it"
        );
    }
    Ok(group)
}

/// The memory limit of the shipped Nomad job (`nomad-relay.nomad.hcl`, `memory = 256`).
const BACKLOG_PEAK_MIB: f64 = 256.0;

/// Checks a run's measured figures show events flowing (used by the smoke run): a relay
/// rate, a latency, or deliveries the relay counted; never the run's own inputs.
pub fn assert_flowed(group: &Group) -> Result<()> {
    const MEASURED: [&str; 5] = [
        "relay_events_per_s",
        "from_journal_events_per_s",
        "events_seen",
        "p50_ms_at_1000",
        "delivered_by_the_up_sink",
    ];
    let measured: Vec<&crate::report::Figure> =
        group.figures.iter().filter(|f| MEASURED.contains(&f.name) || f.name.starts_with("p50_ms")).collect();
    if !measured.is_empty() && measured.iter().all(|f| f.value > 0.0) {
        Ok(())
    } else {
        Err(anyhow::anyhow!("no events flowed in {:?}", group.figures)).context("smoke run")
    }
}

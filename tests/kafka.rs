//! The Kafka sink end to end, against real tansu brokers: every event exactly once and in
//! per-key order across twenty SIGKILLs of the relay, across SIGKILLs that land while two
//! batches are in flight, and across a broker outage mid-run; a reserved librdkafka setting
//! refused at start.

#![allow(clippy::unwrap_used)]

mod support;

use nomad_emulator::{EmulatorConfig, GeneratorConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use support::endpoint::{free_port, get, parse_metrics, wait_for_metric, wait_until_unhealthy};
use support::kafka::{OwnedTansu, Record, create_topic, read_all, shared_brokers, unique};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn kafka_sink(brokers: &str, prefix: &str, extra: &str) -> String {
    format!(
        "[sinks.kafka]\ntype = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{prefix}.{{{{Topic}}}}\"\ncreate_topics = {{ partitions = 3, replication = 1 }}\nretry_min_delay = \"20ms\"\nretry_max_delay = \"500ms\"\n{extra}\n"
    )
}

fn field(line: &str, name: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(line).unwrap();
    value[name].as_str().unwrap_or_default().to_owned()
}

/// Reads every topic the expected events go to and asserts each event is there exactly once,
/// and each object's events are in Nomad's order within their partition.
fn assert_exactly_once_in_key_order(brokers: &str, prefix: &str, expected: &[String]) {
    let topics: BTreeSet<String> = expected.iter().map(|line| field(line, "Topic")).collect();
    let mut records: Vec<(String, Record)> = Vec::new();
    for topic in &topics {
        records
            .extend(read_all(brokers, &format!("{prefix}.{topic}")).into_iter().map(|r| (topic.clone(), r)));
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, record) in &records {
        *counts.entry(record.value.as_str()).or_default() += 1;
    }
    let repeated = counts.values().filter(|&&n| n > 1).count();
    assert_eq!(repeated, 0, "{repeated} events were written more than once");
    let missing = expected.iter().filter(|line| !counts.contains_key(line.as_str())).count();
    assert_eq!(missing, 0, "{missing} of {} events are missing", expected.len());
    assert_eq!(records.len(), expected.len(), "records that no event explains");

    // Per (Nomad topic, object key): the events in Nomad's order, and the records as stored
    // (partition, offset, value).
    type Object = (String, String);
    let mut want: BTreeMap<Object, Vec<&str>> = BTreeMap::new();
    for line in expected {
        want.entry((field(line, "Topic"), field(line, "Key"))).or_default().push(line);
    }
    let mut got: BTreeMap<Object, Vec<(i32, i64, &str)>> = BTreeMap::new();
    for (topic, record) in &records {
        let key = record.key.clone().unwrap_or_default();
        got.entry((topic.clone(), key)).or_default().push((record.partition, record.offset, &record.value));
    }
    for (object, lines) in want {
        let mut stored = got.remove(&object).unwrap_or_default();
        let partitions: BTreeSet<i32> = stored.iter().map(|(p, _, _)| *p).collect();
        assert_eq!(partitions.len(), 1, "{object:?} is spread over partitions {partitions:?}");
        stored.sort();
        let stored: Vec<&str> = stored.into_iter().map(|(_, _, value)| value).collect();
        assert!(stored == lines, "{object:?}: events out of Nomad's order in their partition");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_exactly_once_across_sigkills() {
    let brokers = shared_brokers();
    let emulator = emulator(EmulatorConfig {
        buffer_size: 1_000_000,
        fragment_writes: Some(29),
        ..EmulatorConfig::default()
    })
    .await;
    let scratch = Scratch::new();
    let prefix = unique("kill");
    let port = free_port();
    let sink = kafka_sink(&brokers, &prefix, "");
    let config =
        scratch.config(&emulator.url(), "", &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{sink}"));
    let generator = GeneratorConfig {
        rate: Some(1_000.0),
        total_events: Some(30_000),
        seed: 41,
        ..GeneratorConfig::default()
    };
    let kills = deliver_through_sigkills(&scratch, &config, port, &emulator, generator, "kafka").await;
    assert!(
        kills.relay.log().contains("are already in Kafka and are not sent again"),
        "no kill landed between a delivery and its cursor save, so the test proved nothing"
    );
    assert_exactly_once_in_key_order(&brokers, &prefix, &kills.expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_exactly_once_across_sigkills_with_two_batches_in_flight() {
    let brokers = shared_brokers();
    let emulator = emulator(EmulatorConfig { buffer_size: 1_000_000, ..EmulatorConfig::default() }).await;
    // A backlog the relay catches up on in full batches, so its pipeline is kept full.
    emulator
        .generator(GeneratorConfig {
            rate: None,
            total_events: Some(40_000),
            seed: 43,
            ..GeneratorConfig::default()
        })
        .run()
        .await;
    let expected = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    let scratch = Scratch::new();
    let prefix = unique("pipeline-kill");
    let port = free_port();
    let config = scratch.config(
        &emulator.url(),
        "",
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{}", kafka_sink(&brokers, &prefix, "")),
    );
    let in_flight = || {
        let samples = parse_metrics(&get(port, "/metrics")?.1);
        samples.get("nomad_relay_sink_in_flight_batches{sink=\"kafka\"}").copied()
    };
    let mut relay = Relay::start(&config);
    let mut kills_with_two_in_flight = 0;
    for _ in 0..8 {
        let before = scratch.cursor_next("kafka").unwrap_or(0);
        if before as usize > expected.len() * 3 / 4 {
            break;
        }
        // Kill the moment the relay reports two batches handed to Kafka and unconfirmed.
        let two = eventually("two batches in flight", Duration::from_secs(60), || {
            let done = scratch.cursor_next("kafka").is_some_and(|next| next as usize > expected.len());
            match in_flight() {
                Some(n) if n >= 2.0 => Some(true),
                _ if done => Some(false),
                _ => None,
            }
        })
        .await;
        relay.kill();
        kills_with_two_in_flight += usize::from(two);
        relay = Relay::start(&config);
    }
    eventually("everything delivered", Duration::from_secs(180), || {
        scratch.cursor_next("kafka").filter(|next| *next as usize > expected.len())
    })
    .await;
    assert!(relay.terminate().success());
    assert!(
        kills_with_two_in_flight >= 3,
        "only {kills_with_two_in_flight} kills landed with two batches in flight"
    );
    assert!(
        relay.log().contains("are already in Kafka and are not sent again"),
        "no kill landed between a delivery and its cursor save, so the test proved nothing"
    );
    assert_exactly_once_in_key_order(&brokers, &prefix, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_outage_mid_run_loses_and_repeats_nothing() {
    let scratch = Scratch::new();
    let broker = OwnedTansu::start(scratch.dir.path()).await;
    let emulator = emulator(EmulatorConfig { buffer_size: 1_000_000, ..EmulatorConfig::default() }).await;
    let prefix = unique("outage");
    let port = free_port();
    let sink = kafka_sink(&broker.brokers(), &prefix, "delivery_timeout = \"2s\"\nrequest_timeout = \"2s\"");
    let config =
        scratch.config(&emulator.url(), "", &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{sink}"));
    let generator = emulator.generator(GeneratorConfig {
        rate: Some(1_500.0),
        total_events: Some(9_000),
        seed: 42,
        ..GeneratorConfig::default()
    });
    let publishing = tokio::spawn(generator.run());
    let relay = Relay::start(&config);
    let progress = || scratch.cursor_next("kafka");
    eventually("some events in Kafka", Duration::from_secs(60), || progress().filter(|n| *n > 1_000)).await;
    let outage = relay.mark();
    broker.proxy.down();
    // Kafka stays away until the sink has noticed: its deliveries timed out and it reports
    // itself unhealthy, with the failure logged after the outage began.
    wait_until_unhealthy(port, "kafka", Duration::from_secs(30)).await;
    relay.wait_for_log_after(outage, "not delivered", Duration::from_secs(30)).await;
    let stalled = progress().unwrap();
    // An observation window, not a wait for something: the cursor must stay where it is.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(progress().unwrap(), stalled, "the cursor moved while Kafka was away");
    broker.proxy.up();
    publishing.await.unwrap();
    let expected = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    eventually("everything delivered after the outage", Duration::from_secs(120), || {
        progress().filter(|n| *n as usize > expected.len())
    })
    .await;
    let mut relay = relay;
    assert!(relay.terminate().success());
    assert!((stalled as usize) < expected.len(), "the outage began mid-run");
    assert_exactly_once_in_key_order(&broker.brokers(), &prefix, &expected);
}

#[tokio::test]
async fn a_reserved_librdkafka_setting_is_refused_at_start() {
    let scratch = Scratch::new();
    let config = scratch.config(
        "http://127.0.0.1:1",
        "",
        &kafka_sink("127.0.0.1:9092", "x", "[sinks.kafka.librdkafka]\n\"enable.idempotence\" = false"),
    );
    let output = relay_command(&["validate", "--config", config.to_str().unwrap()]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`sinks.kafka.librdkafka.\"enable.idempotence\"` cannot be set"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_kafka_is_noticed_within_delivery_timeout_and_nothing_is_lost_or_repeated() {
    let scratch = Scratch::new();
    let broker = OwnedTansu::start(scratch.dir.path()).await;
    let emulator = emulator(EmulatorConfig { buffer_size: 1_000_000, ..EmulatorConfig::default() }).await;
    emulator
        .generator(GeneratorConfig {
            rate: None,
            total_events: Some(8_000),
            seed: 44,
            ..GeneratorConfig::default()
        })
        .run()
        .await;
    let expected = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    let prefix = unique("hang");
    let port = free_port();
    let sink = kafka_sink(&broker.brokers(), &prefix, "delivery_timeout = \"2s\"\nrequest_timeout = \"2s\"");
    let config =
        scratch.config(&emulator.url(), "", &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{sink}"));
    let mut relay = Relay::start(&config);
    let took = time_until_a_hang_is_noticed(port, "kafka", 200.0, || broker.proxy.freeze()).await;
    assert!(took < Duration::from_secs(6), "a hung Kafka was noticed after {took:?} (delivery_timeout 2s)");
    broker.proxy.thaw();
    eventually("everything delivered after the hang", Duration::from_secs(120), || {
        scratch.cursor_next("kafka").filter(|n| *n as usize > expected.len())
    })
    .await;
    assert!(relay.terminate().success());
    assert_exactly_once_in_key_order(&broker.brokers(), &prefix, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_holds_back_only_its_own_events_across_a_sigkill() {
    let brokers = shared_brokers();
    let prefix = unique("park");
    // The sink may not create topics: the Job topic exists, the Allocation topic does not.
    create_topic(&brokers, &format!("{prefix}.Job"), 3).await;
    let emulator = emulator(EmulatorConfig::default()).await;
    for n in 0..10u64 {
        emulator.publish(job(100 + 2 * n, &format!("job-{n}")));
        emulator.publish(allocation(101 + 2 * n, &format!("alloc-{n}")));
    }
    let scratch = Scratch::new();
    let port = free_port();
    let sink = format!(
        "[sinks.kafka]\ntype = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{prefix}.{{{{Topic}}}}\"\nretry_min_delay = \"20ms\"\nretry_max_delay = \"500ms\"\n"
    );
    let config =
        scratch.config(&emulator.url(), "", &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{sink}"));
    let parked = "nomad_relay_sink_parked_events{sink=\"kafka\"}";
    let duplicates = "nomad_relay_sink_duplicate_events_total{sink=\"kafka\"}";
    let job_topic = format!("{prefix}.Job");
    let jobs_in_kafka = || read_all(&brokers, &job_topic).len();

    let mut relay = Relay::start(&config);
    // The Job events go through while the Allocation events, before and between them, wait.
    eventually("every Job event in Kafka", WAIT, || (jobs_in_kafka() == 10).then_some(())).await;
    assert_eq!(wait_for_metric(port, parked, WAIT, |n| n == 10.0).await, Some(10.0));
    relay.kill();

    // The saved cursor waited at the first parked event (journal record 2, after job-0): the
    // restart sends the 9 Job events after it again, and the tail check finds them in Kafka.
    let mut relay = Relay::start(&config);
    assert_eq!(wait_for_metric(port, duplicates, WAIT, |n| n >= 9.0).await, Some(9.0), "{}", relay.log());
    assert_eq!(wait_for_metric(port, parked, WAIT, |n| n == 10.0).await, Some(10.0));
    assert_eq!(jobs_in_kafka(), 10, "nothing written twice");

    create_topic(&brokers, &format!("{prefix}.Allocation"), 3).await;
    assert_eq!(wait_for_metric(port, parked, WAIT, |n| n == 0.0).await, Some(0.0), "{}", relay.log());
    assert!(relay.terminate().success());
    assert!(relay.log().contains("setting events aside"), "{}", relay.log());
    let expected = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    assert_exactly_once_in_key_order(&brokers, &prefix, &expected);
}

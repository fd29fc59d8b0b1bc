//! The RabbitMQ sink against the real broker on 127.0.0.1:5672: at-least-once with bounded,
//! identifiable repeats across SIGKILLs, a connection cut mid-run, and the refusals an
//! operator meets (unroutable, nack, bad credentials, missing exchange).

#![allow(clippy::unwrap_used)]

mod support;

use lapin::types::AMQPValue;
use nomad_emulator::{EmulatorConfig, GeneratorConfig};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use support::amqp::{Received, Topology, drain, queue_has_type, shared_uri};
use support::endpoint::{free_port, wait_for_metric};
use support::nats::unique;
use support::proxy::Proxy;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn amqp_sink(uri: &str, exchange: &str, extra: &str) -> String {
    format!(
        "[sinks.rabbit]\ntype = \"amqp\"\nuri = \"{uri}\"\nexchange = \"{exchange}\"\nretry_min_delay = \"20ms\"\nretry_max_delay = \"500ms\"\nbatch_size = 500\n{extra}\n"
    )
}

/// Every expected event arrived, first deliveries in the published order; every repeat
/// carries a message_id already seen with the same body. Returns the lengths of the runs of
/// consecutive repeats (a restart re-sends what was in flight at the crash as one run).
fn assert_at_least_once(received: &[Received], expected: &[String]) -> Vec<usize> {
    let mut first: Vec<&str> = Vec::new();
    let mut seen_ids: HashMap<&str, &str> = HashMap::new();
    let mut runs: Vec<usize> = Vec::new();
    let mut in_run = false;
    for message in received {
        match seen_ids.get(message.message_id.as_str()) {
            Some(body) => {
                assert_eq!(*body, message.body, "a repeated message_id must carry the same event");
                match runs.last_mut() {
                    Some(run) if in_run => *run += 1,
                    _ => runs.push(1),
                }
                in_run = true;
            }
            None => {
                seen_ids.insert(&message.message_id, &message.body);
                first.push(&message.body);
                in_run = false;
            }
        }
    }
    eprintln!("{} messages for {} events: repeats in runs of {runs:?}", received.len(), expected.len());
    let want: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(first.len(), want.len(), "distinct events received vs published");
    assert!(first == want, "first deliveries are not the published events in order");
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_with_bounded_repeats_across_sigkills() {
    let uri = shared_uri();
    let name = unique("kill");
    let topology = Topology::declare(&name, Some("#"), &[]).await;
    let emulator = emulator(EmulatorConfig {
        buffer_size: 1_000_000,
        fragment_writes: Some(41),
        ..EmulatorConfig::default()
    })
    .await;
    let scratch = Scratch::new();
    let port = free_port();
    let sink = amqp_sink(&uri, &topology.exchange, "");
    let config =
        scratch.config(&emulator.url(), "", &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{sink}"));
    let generator = GeneratorConfig {
        rate: Some(1_000.0),
        total_events: Some(30_000),
        seed: 41,
        ..GeneratorConfig::default()
    };
    let kills = deliver_through_sigkills(&scratch, &config, port, &emulator, generator, "rabbit").await;
    let received = drain(&topology.queue, kills.expected.len(), Duration::from_secs(3)).await;
    topology.cleanup().await;
    let runs = assert_at_least_once(&received, &kills.expected);
    // Kills landed with publishes unconfirmed, so some events went twice; a crash repeats at
    // most the one batch it interrupted (batch_size = 500), as one run.
    assert!(
        !runs.is_empty(),
        "no repeat after {} kills with events in flight: the test proved nothing",
        kills.in_flight
    );
    assert!(runs.len() <= kills.total, "{} runs of repeats for {} kills", runs.len(), kills.total);
    assert!(runs.iter().all(|&run| run <= 500), "a run of repeats longer than one batch: {runs:?}");
    let sample = &received[0];
    assert!(sample.persistent && sample.content_type == "application/json");
    for header in ["nomad-index", "nomad-topic", "nomad-type", "nomad-namespace", "nomad-key"] {
        assert!(sample.headers.inner().contains_key(header), "header {header} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_is_rebuilt_and_nothing_is_lost() {
    let _ = shared_uri();
    let name = unique("cut");
    let topology = Topology::declare(&name, Some("#"), &[]).await;
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let emulator = emulator(EmulatorConfig { buffer_size: 1_000_000, ..EmulatorConfig::default() }).await;
    let scratch = Scratch::new();
    let uri = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let port = free_port();
    let sink = amqp_sink(&uri, &topology.exchange, "confirm_timeout = \"5s\"");
    let config =
        scratch.config(&emulator.url(), "", &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{sink}"));
    let generator = emulator.generator(GeneratorConfig {
        rate: Some(1_500.0),
        total_events: Some(9_000),
        seed: 42,
        ..GeneratorConfig::default()
    });
    let publishing = tokio::spawn(generator.run());
    let mut relay = Relay::start(&config);
    let progress = || scratch.cursor_next("rabbit");
    let before_cuts = relay.mark();
    let mut cuts_in_flight = 0;
    for threshold in [1_000, 3_000] {
        eventually("progress before the cut", WAIT, || progress().filter(|n| *n > threshold)).await;
        // Cut while publishes await their confirms.
        let series = "nomad_relay_sink_in_flight_events{sink=\"rabbit\"}";
        cuts_in_flight += usize::from(wait_for_metric(port, series, WAIT, |n| n > 0.0).await.is_some());
        proxy.cut();
    }
    publishing.await.unwrap();
    let expected = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    let received = drain(&topology.queue, expected.len(), Duration::from_secs(3)).await;
    assert!(relay.terminate().success());
    topology.cleanup().await;
    let bodies: HashSet<&str> = received.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(expected.iter().filter(|line| !bodies.contains(line.as_str())).count(), 0, "nothing lost");
    assert_eq!(cuts_in_flight, 2, "both cuts landed with publishes unconfirmed");
    let after = relay.log_since(before_cuts);
    assert!(after.contains("is down; reconnecting"), "the sink noticed the cut: {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_event_is_retried_until_a_queue_is_bound() {
    let uri = shared_uri();
    let name = unique("noroute");
    let topology = Topology::declare(&name, None, &[]).await;
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(3, "web"));
    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), "", &amqp_sink(&uri, &topology.exchange, ""));
    let mut relay = Relay::start(&config);
    let log = relay.wait_for_log("returned as unroutable", WAIT).await;
    assert!(log.contains("routing key `Job.JobRegistered`"), "{log}");
    topology.bind("Job.*").await;
    let received = drain(&topology.queue, 1, Duration::from_millis(500)).await;
    assert!(relay.terminate().success());
    topology.cleanup().await;
    assert_eq!(received[0].body, job(3, "web").events[0].to_json(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_event_can_go_to_a_dead_letter_exchange() {
    let uri = shared_uri();
    let name = unique("dlx");
    let topology = Topology::declare(&name, Some("Node.#"), &[]).await;
    let dead = Topology::declare(&format!("{name}-dead"), Some("#"), &[]).await;
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(3, "web"));
    let scratch = Scratch::new();
    let extra = format!("on_unroutable = \"dead_letter\"\ndead_letter_exchange = \"{}\"", dead.exchange);
    let config = scratch.config(&emulator.url(), "", &amqp_sink(&uri, &topology.exchange, &extra));
    let mut relay = Relay::start(&config);
    let received = drain(&dead.queue, 1, Duration::from_millis(500)).await;
    assert!(relay.terminate().success());
    topology.cleanup().await;
    dead.cleanup().await;
    assert_eq!(received[0].body, job(3, "web").events[0].to_json(3));
    let reason = match received[0].headers.inner().get("nomad-relay-reason") {
        Some(AMQPValue::LongString(text)) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        other => panic!("no reason header: {other:?}"),
    };
    assert!(reason.contains("unroutable (312 NO_ROUTE)"), "{reason}");
    assert!(relay.log().contains("refused this event for good"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_is_retried_not_counted_as_delivered() {
    let uri = shared_uri();
    let name = unique("nack");
    let limits = [
        ("x-max-length", AMQPValue::LongInt(3)),
        ("x-overflow", AMQPValue::LongString("reject-publish".into())),
    ];
    let topology = Topology::declare(&name, Some("#"), &limits).await;
    let emulator = emulator(EmulatorConfig::default()).await;
    for index in 1..=8 {
        emulator.publish(job(index, &format!("job-{index}")));
    }
    let scratch = Scratch::new();
    // One queue, nack_retries unset: a retry adds no copy anywhere, and the sink waits for the
    // consumer.
    let config = scratch.config(&emulator.url(), "", &amqp_sink(&uri, &topology.exchange, ""));
    let mut relay = Relay::start(&config);
    relay.wait_for_log("refused by RabbitMQ (nack", WAIT).await;
    // Consuming makes room; the refused events are delivered, none lost.
    let received = drain(&topology.queue, 8, Duration::from_millis(500)).await;
    assert!(relay.terminate().success());
    topology.cleanup().await;
    let bodies: HashSet<String> = received.iter().map(|m| m.body.clone()).collect();
    for line in expected_lines(&emulator.published(), DEFAULT_TOPICS) {
        assert!(bodies.contains(&line), "lost after a nack: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_from_one_of_two_queues_adds_at_most_nack_retries_copies_to_the_other() {
    let uri = shared_uri();
    let limits = [
        ("x-max-length", AMQPValue::LongInt(1)),
        ("x-overflow", AMQPValue::LongString("reject-publish".into())),
    ];
    let full = Topology::declare(&unique("nackfull"), Some("#"), &limits).await;
    let other = Topology::declare(&unique("nackother"), None, &[]).await;
    let beside = Topology { exchange: full.exchange.clone(), queue: other.queue.clone() };
    beside.bind("#").await;
    let emulator = emulator(EmulatorConfig::default()).await;
    for index in 1..=6 {
        emulator.publish(job(index, &format!("job-{index}")));
    }
    let scratch = Scratch::new();
    let port = free_port();
    let sink = amqp_sink(&uri, &full.exchange, "nack_retries = 2");
    let config =
        scratch.config(&emulator.url(), "", &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{sink}"));
    let mut relay = Relay::start(&config);
    // The sink moves on past every event: the first is in both queues, the five the full
    // queue refused are published three times (once, then two retries) and then rejected.
    eventually("the sink past every event", WAIT, || scratch.cursor_next("rabbit").filter(|next| *next > 6))
        .await;
    let rejected =
        wait_for_metric(port, "nomad_relay_sink_rejected_events_total{sink=\"rabbit\"}", WAIT, |n| n >= 5.0)
            .await;
    assert!(relay.terminate().success());
    assert_eq!(rejected, Some(5.0));
    assert_eq!(relay.log().matches("it is not published again").count(), 5, "each rejection logged");
    let expected = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    let in_full = drain(&full.queue, 1, Duration::from_millis(300)).await;
    let in_other = drain(&other.queue, 1 + 5 * 3, Duration::from_millis(300)).await;
    full.cleanup().await;
    other.cleanup().await;
    assert_eq!(in_full.iter().map(|m| &m.body).collect::<Vec<_>>(), [&expected[0]]);
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for message in &in_other {
        *copies.entry(message.body.as_str()).or_default() += 1;
    }
    let counts: Vec<usize> =
        expected.iter().map(|line| copies.get(line.as_str()).copied().unwrap_or(0)).collect();
    assert_eq!(counts, [1, 3, 3, 3, 3, 3], "copies per event in the queue that took every publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_reported_without_the_password() {
    let _ = shared_uri();
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(3, "web"));
    let scratch = Scratch::new();
    let sink = amqp_sink("amqp://guest:not-the-password@127.0.0.1:5672/%2f", "amq.topic", "");
    let config = scratch.config(&emulator.url(), "", &sink);
    let mut relay = Relay::start(&config);
    let log = relay.wait_for_log("cannot connect to RabbitMQ", WAIT).await;
    assert!(log.contains("refused the credentials"), "{log}");
    assert!(relay.terminate().success());
    // Nothing logged later (retries, shutdown) shows it either.
    let log = relay.log();
    assert!(!log.contains("not-the-password"), "passwords never appear in logs: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_exchange_without_declare_is_a_clear_error() {
    let uri = shared_uri();
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(3, "web"));
    let scratch = Scratch::new();
    let exchange = unique("missing");
    let config = scratch.config(&emulator.url(), "", &amqp_sink(&uri, &exchange, ""));
    let mut relay = Relay::start(&config);
    let log = relay.wait_for_log("does not exist", WAIT).await;
    assert!(log.contains(&format!("exchange `{exchange}`")), "{log}");
    assert!(relay.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_topology_with_a_quorum_queue() {
    let uri = shared_uri();
    let name = unique("declared");
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(3, "web"));
    let scratch = Scratch::new();
    let extra = format!(
        "declare = true\n[[sinks.rabbit.queues]]\nname = \"{name}.q\"\nbindings = [\"Job.#\"]\nquorum = true\n"
    );
    let config = scratch.config(&emulator.url(), "", &amqp_sink(&uri, &format!("{name}.x"), &extra));
    let mut relay = Relay::start(&config);
    relay.wait_for_log("topology declared", WAIT).await;
    let received = drain(&format!("{name}.q"), 1, Duration::from_millis(500)).await;
    assert!(relay.terminate().success());
    let quorum = queue_has_type(&format!("{name}.q"), "quorum").await;
    let classic = queue_has_type(&format!("{name}.q"), "classic").await;
    Topology { exchange: format!("{name}.x"), queue: format!("{name}.q") }.cleanup().await;
    assert_eq!(received[0].routing_key, "Job.JobRegistered");
    assert_eq!(received[0].body, job(3, "web").events[0].to_json(3));
    assert!(quorum && !classic, "the declared queue is a quorum queue (quorum {quorum}, classic {classic})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_rabbitmq_is_noticed_within_confirm_timeout_and_nothing_is_lost() {
    let _ = shared_uri();
    let name = unique("hang");
    let topology = Topology::declare(&name, Some("#"), &[]).await;
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let emulator = emulator(EmulatorConfig { buffer_size: 1_000_000, ..EmulatorConfig::default() }).await;
    emulator
        .generator(GeneratorConfig {
            rate: None,
            total_events: Some(6_000),
            seed: 43,
            ..GeneratorConfig::default()
        })
        .run()
        .await;
    let expected = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    let scratch = Scratch::new();
    let uri = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let port = free_port();
    let sink = amqp_sink(&uri, &topology.exchange, "confirm_timeout = \"2s\"");
    let config =
        scratch.config(&emulator.url(), "", &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{sink}"));
    let mut relay = Relay::start(&config);
    let took = time_until_a_hang_is_noticed(port, "rabbit", 200.0, || proxy.freeze()).await;
    assert!(took < Duration::from_secs(6), "a hung RabbitMQ was noticed after {took:?} (confirm_timeout 2s)");
    proxy.thaw();
    eventually("everything delivered after the hang", Duration::from_secs(120), || {
        scratch.cursor_next("rabbit").filter(|n| *n as usize > expected.len())
    })
    .await;
    let received = drain(&topology.queue, expected.len(), Duration::from_secs(3)).await;
    assert!(relay.terminate().success());
    topology.cleanup().await;
    let bodies: HashSet<&str> = received.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(expected.iter().filter(|line| !bodies.contains(line.as_str())).count(), 0, "nothing lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_rabbitmqs_max_message_size_is_rejected_and_the_rest_go_on() {
    let uri = shared_uri();
    let name = unique("toolarge");
    let topology = Topology::declare(&name, Some("#"), &[]).await;
    let _limit = support::amqp::MaxMessageSize::set(64 << 10);
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(3, "small"));
    emulator.publish(nomad_emulator::Batch {
        index: 4,
        events: vec![job_event("large", "JobRegistered", 100_000)],
    });
    emulator.publish(job(5, "after"));
    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), "", &amqp_sink(&uri, &topology.exchange, ""));
    let mut relay = Relay::start(&config);
    eventually("all three events passed", WAIT, || scratch.cursor_next("rabbit").filter(|next| *next > 3))
        .await;
    let received = drain(&topology.queue, 2, Duration::from_millis(500)).await;
    assert!(relay.terminate().success());
    topology.cleanup().await;
    // At-least-once: the channel the broker closed over the large message lost the confirm of
    // what went before it, which may come again (same message_id).
    let mut keys: Vec<String> = received
        .iter()
        .map(|m| {
            serde_json::from_str::<serde_json::Value>(&m.body).unwrap()["Key"].as_str().unwrap().to_owned()
        })
        .collect();
    keys.dedup();
    assert_eq!(keys, ["small", "after"], "the large event never arrives; the others do");
    let log = relay.log();
    assert!(
        log.contains("refused this event for good")
            && log.contains("larger than RabbitMQ's max_message_size (65536 bytes)"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_declares_the_topology_again() {
    let _ = shared_uri();
    let name = unique("redeclare");
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(3, "before"));
    let scratch = Scratch::new();
    let uri = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let extra =
        format!("declare = true\n[[sinks.rabbit.queues]]\nname = \"{name}.q\"\nbindings = [\"Job.#\"]\n");
    let config = scratch.config(&emulator.url(), "", &amqp_sink(&uri, &format!("{name}.x"), &extra));
    let mut relay = Relay::start(&config);
    let topology = Topology { exchange: format!("{name}.x"), queue: format!("{name}.q") };
    relay.wait_for_log("RabbitMQ topology declared", WAIT).await;
    let first = drain(&topology.queue, 1, Duration::from_millis(300)).await;
    // The broker loses the topology (as a node rebuilt from scratch would), and the
    // connection breaks.
    topology.cleanup().await;
    let cut = relay.mark();
    proxy.cut();
    emulator.publish(job(4, "after"));
    relay.wait_for_log_after(cut, "RabbitMQ topology declared", WAIT).await;
    let second = drain(&topology.queue, 1, Duration::from_millis(300)).await;
    assert!(relay.terminate().success());
    topology.cleanup().await;
    assert_eq!(first[0].body, job(3, "before").events[0].to_json(3));
    assert_eq!(second.last().unwrap().body, job(4, "after").events[0].to_json(4));
}

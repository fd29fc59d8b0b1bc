//! The RabbitMQ sink against the real broker on 127.0.0.1:5672: at-least-once with bounded,
//! identifiable repeats across SIGKILLs, a connection cut mid-run, and the refusals an
//! operator meets (unroutable, nack, bad credentials, missing exchange).

#![allow(clippy::unwrap_used)]

mod support;

use lapin::types::AMQPValue;
use nomad_emulator::{EmulatorConfig, GeneratorConfig};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use support::amqp::{Received, Topology, drain, shared_uri};
use support::nats::unique;
use support::proxy::Proxy;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn amqp_sink(uri: &str, exchange: &str, extra: &str) -> String {
    format!(
        "[sinks.rabbit]\ntype = \"amqp\"\nuri = \"{uri}\"\nexchange = \"{exchange}\"\nretry_min_delay = \"20ms\"\nretry_max_delay = \"500ms\"\nbatch_size = 500\n{extra}\n"
    )
}

/// Every expected event arrived; repeats carry a message_id already seen and are at most
/// `max_repeats`; the first deliveries are in the published order.
fn assert_at_least_once(received: &[Received], expected: &[String], max_repeats: usize) {
    let mut first: Vec<&str> = Vec::new();
    let mut seen_ids: HashMap<&str, &str> = HashMap::new();
    let mut repeats = 0;
    for message in received {
        match seen_ids.get(message.message_id.as_str()) {
            Some(body) => {
                assert_eq!(*body, message.body, "a repeated message_id must carry the same event");
                repeats += 1;
            }
            None => {
                seen_ids.insert(&message.message_id, &message.body);
                first.push(&message.body);
            }
        }
    }
    eprintln!(
        "{} messages for {} events: {repeats} repeats (bound {max_repeats})",
        received.len(),
        expected.len()
    );
    let want: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(first.len(), want.len(), "distinct events received vs published");
    assert!(first == want, "first deliveries are not the published events in order");
    assert!(repeats <= max_repeats, "{repeats} repeats, more than the in-flight bound {max_repeats}");
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
    let config = scratch.config(&emulator.url(), "", &amqp_sink(&uri, &topology.exchange, ""));
    let generator = GeneratorConfig {
        rate: Some(1_000.0),
        total_events: Some(30_000),
        seed: 41,
        ..GeneratorConfig::default()
    };
    let (expected, _relay) =
        deliver_through_sigkills(&scratch, &config, &emulator, generator, "rabbit").await;
    let kills = 20;
    let received = drain(&topology.queue, expected.len(), Duration::from_secs(3)).await;
    topology.cleanup().await;
    // A crash repeats at most the batch in flight (batch_size = 500) per kill.
    assert_at_least_once(&received, &expected, kills * 500);
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
    let config =
        scratch.config(&emulator.url(), "", &amqp_sink(&uri, &topology.exchange, "confirm_timeout = \"5s\""));
    let generator = emulator.generator(GeneratorConfig {
        rate: Some(1_500.0),
        total_events: Some(9_000),
        seed: 42,
        ..GeneratorConfig::default()
    });
    let publishing = tokio::spawn(generator.run());
    let mut relay = Relay::start(&config);
    let progress = || scratch.cursor_next("rabbit");
    for threshold in [1_000, 3_000] {
        eventually("progress before the cut", WAIT, || progress().filter(|n| *n > threshold)).await;
        proxy.cut();
    }
    publishing.await.unwrap();
    let expected = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    let received = drain(&topology.queue, expected.len(), Duration::from_secs(3)).await;
    assert!(relay.terminate().success());
    topology.cleanup().await;
    let bodies: HashSet<&str> = received.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(expected.iter().filter(|line| !bodies.contains(line.as_str())).count(), 0, "nothing lost");
    assert!(relay.log().contains("reconnecting"), "the cut was noticed: {}", relay.log());
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
    let config = scratch.config(&emulator.url(), "", &amqp_sink(&uri, &topology.exchange, ""));
    let mut relay = Relay::start(&config);
    relay.wait_for_log("refused by RabbitMQ (nack)", WAIT).await;
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
    assert!(!log.contains("not-the-password"), "passwords never appear in logs: {log}");
    assert!(relay.terminate().success());
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
    Topology { exchange: format!("{name}.x"), queue: format!("{name}.q") }.cleanup().await;
    assert_eq!(received[0].routing_key, "Job.JobRegistered");
    assert_eq!(received[0].body, job(3, "web").events[0].to_json(3));
}

//! Error paths of the Kafka sink under rdkafka's in-process mock cluster: produce requests
//! that fail, and brokers that go down. After each fault the sink checks the partitions and
//! every event ends up in Kafka exactly once, in per-key order.

mod common;

use common::*;
use nomad_relay_sink_api::units::HumanDuration;
use nomad_relay_sink_api::{Outcome, Sink};
use nomad_relay_sink_kafka::KafkaSink;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::time::Duration;

fn cluster(topic: &str, partitions: i32) -> (MockCluster<'static, DefaultProducerContext>, String) {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(topic, partitions, 1).expect("topic");
    let brokers = mock.bootstrap_servers();
    (mock, brokers)
}

#[tokio::test]
async fn a_refused_produce_request_is_retried_without_repeats() {
    let topic = unique("mock-refused");
    let (mock, brokers) = cluster(&topic, 2);
    let mut sink = KafkaSink::new(config(&brokers, &topic, 2)).expect("sink");
    sink.open(None).await.expect("open");
    deliver(&mut sink, &events(1, 10)).await;

    // The broker refuses the next produce requests for good (not retried by librdkafka).
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 4],
    );
    let batch = events(11, 20);
    let outcomes = sink.send(&batch).await;
    let failed: Vec<_> = outcomes.iter().filter(|o| matches!(o, Outcome::Retry(_))).collect();
    assert!(!failed.is_empty(), "the refused requests must show: {outcomes:?}");
    if let Outcome::Retry(error) = failed[0] {
        assert!(error.report().contains("Kafka did not take event"), "{}", error.report());
    }
    mock.clear_request_errors(RDKafkaApiKey::Produce);

    // The relay sends the undelivered ones again, as its worker does.
    let pending: Vec<_> =
        batch.iter().zip(&outcomes).filter(|(_, o)| !o.is_delivered()).map(|(e, _)| e.clone()).collect();
    deliver_with_retries(&mut sink, &pending, 5).await;
    assert_exactly_once(&read_all(&brokers, &topic), 1..=30);
}

#[tokio::test]
async fn a_broker_that_goes_down_holds_events_back_until_it_returns() {
    let topic = unique("mock-down");
    let (mock, brokers) = cluster(&topic, 3);
    let mut config = config(&brokers, &topic, 3);
    config.delivery_timeout = HumanDuration(Duration::from_secs(2));
    let mut sink = KafkaSink::new(config).expect("sink");
    sink.open(None).await.expect("open");
    deliver(&mut sink, &events(1, 10)).await;

    mock.broker_down(1).expect("down");
    let batch = events(11, 15);
    let outcomes = sink.send(&batch).await;
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Retry(_))), "{outcomes:?}");
    let again = sink.send(&batch).await;
    assert!(again.iter().all(|o| matches!(o, Outcome::Retry(_))), "still down: {again:?}");

    mock.broker_up(1).expect("up");
    deliver_with_retries(&mut sink, &batch, 10).await;
    assert_exactly_once(&read_all(&brokers, &topic), 1..=25);
}

#[tokio::test]
async fn records_still_in_flight_at_the_timeout_are_waited_for_not_sent_again() {
    // A broker that answers after 3 s, and a sink that waits 1 s: the records are in flight
    // when the sink gives up on the batch. They are written all the same; the sink must learn
    // that from their late reports rather than send them a second time.
    let topic = unique("mock-slow");
    let (mock, brokers) = cluster(&topic, 2);
    let mut config = config(&brokers, &topic, 2);
    config.delivery_timeout = HumanDuration(Duration::from_secs(1));
    let mut sink = KafkaSink::new(config).expect("sink");
    sink.open(None).await.expect("open");
    deliver(&mut sink, &events(1, 5)).await;

    mock.broker_round_trip_time(1, Duration::from_secs(3)).expect("slow broker");
    let batch = events(6, 10);
    let first = sink.send(&batch).await;
    let late = first
        .iter()
        .filter(|o| matches!(o, Outcome::Retry(e) if e.report().contains("no delivery report within")))
        .count();
    assert!(late > 0, "some reports must be late: {first:?}");
    // Sent again while the broker is still slow: the sink first waits for the late reports.
    let _ = sink.send(&batch).await;
    mock.broker_round_trip_time(1, Duration::ZERO).expect("fast again");
    deliver_with_retries(&mut sink, &batch, 10).await;
    assert_exactly_once(&read_all(&brokers, &topic), 1..=15);
}

#[tokio::test]
async fn a_topic_briefly_unknown_to_the_metadata_is_not_forgotten() {
    let topic = unique("mock-unknown");
    let (mock, brokers) = cluster(&topic, 2);
    let mut sink = KafkaSink::new(config(&brokers, &topic, 2)).expect("sink");
    sink.open(None).await.expect("open");
    deliver(&mut sink, &events(1, 10)).await;
    let saved = sink.checkpoint_state();
    // The next batch is written, and the relay dies before its cursor moves.
    let batch = events(11, 10);
    assert!(sink.send(&batch).await.iter().all(|o| matches!(o, Outcome::Delivered)));
    drop(sink);
    // On the restart the brokers' metadata says, for a moment, that the topic is unknown (as
    // a broker that has not caught up after a leader change can).
    mock.topic_error(&topic, RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART).expect("error");
    let mut restarted = KafkaSink::new(config(&brokers, &topic, 2)).expect("sink");
    let clearing = async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        mock.topic_error(&topic, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR).expect("clear");
    };
    let (opened, ()) = tokio::join!(restarted.open(saved), clearing);
    opened.expect("open");
    let outcomes = restarted.send(&batch).await;
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Duplicate)), "{outcomes:?}");
    assert_exactly_once(&read_all(&brokers, &topic), 1..=20);
}

//! Error paths of the Kafka sink under rdkafka's in-process mock cluster: produce requests
//! that fail, and brokers that go down. After each fault the sink checks the partitions and
//! every event ends up in Kafka exactly once, in per-key order.

mod common;

use common::*;
use nomad_relay_sink_api::units::HumanDuration;
use nomad_relay_sink_api::{Envelope, Outcome, Sink};
use nomad_relay_sink_kafka::KafkaSink;
use nomad_relay_sink_kafka::broken;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::collections::BTreeMap;
use std::time::Duration;

fn cluster(topic: &str, partitions: i32) -> (MockCluster<'static, DefaultProducerContext>, String) {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(topic, partitions, 1).expect("topic");
    let brokers = mock.bootstrap_servers();
    (mock, brokers)
}

/// Sends `batch` as the relay's worker does, until every event is final or parked: events the
/// sink parks are set aside, the others are sent again in place. Gives the parked ones.
async fn deliver_or_park(sink: &mut KafkaSink, batch: &[Envelope]) -> Vec<Envelope> {
    let mut parked = Vec::new();
    let mut pending = batch.to_vec();
    for _ in 0..20 {
        if pending.is_empty() {
            break;
        }
        let outcomes = sink.send(&pending).await;
        let mut again = Vec::new();
        for (event, outcome) in pending.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Parked(_) => parked.push(event),
                Outcome::Retry(_) | Outcome::Deferred => again.push(event),
                Outcome::Delivered | Outcome::Duplicate | Outcome::Rejected(_) => {}
            }
        }
        pending = again;
    }
    assert!(pending.is_empty(), "still pending: {:?}", pending.iter().map(|e| e.seq).collect::<Vec<_>>());
    parked.sort_by_key(|e| e.seq);
    parked
}

/// Offers parked events again, as the worker does after its back-off, until they are all
/// delivered (the sink tries a broken topic again after its own back-off, 1 s at first).
async fn offer_until_delivered(sink: &mut KafkaSink, mut parked: Vec<Envelope>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !parked.is_empty() {
        assert!(std::time::Instant::now() < deadline, "still parked: {}", parked.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
        parked = deliver_or_park(sink, &parked).await;
    }
}

#[tokio::test]
async fn a_refused_produce_request_parks_its_events_and_nothing_is_repeated() {
    let topic = unique("mock-refused");
    let (mock, brokers) = cluster(&topic, 2);
    let mut sink = KafkaSink::new(config(&brokers, &topic, 2)).expect("sink");
    sink.open(None).await.expect("open");
    deliver(&mut sink, &events(1, 10)).await;

    // The broker refuses the next produce requests for the topic's sake (not retried by
    // librdkafka): the events are parked, with the broker's reason.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 4],
    );
    let batch = events(11, 20);
    let outcomes = sink.send(&batch).await;
    let refused: Vec<_> = outcomes.iter().filter(|o| matches!(o, Outcome::Parked(_))).collect();
    assert!(!refused.is_empty(), "the refused requests must show: {outcomes:?}");
    if let Outcome::Parked(error) = refused[0] {
        assert!(error.report().contains("grant it WRITE on the topic"), "{}", error.report());
    }
    mock.clear_request_errors(RDKafkaApiKey::Produce);

    // The rest go as the worker sends them; the parked ones once the topic is tried again.
    let pending: Vec<_> =
        batch.iter().zip(&outcomes).filter(|(_, o)| !o.is_delivered()).map(|(e, _)| e.clone()).collect();
    let parked = deliver_or_park(&mut sink, &pending).await;
    offer_until_delivered(&mut sink, parked).await;
    assert_exactly_once(&read_all(&brokers, &topic), 1..=30);
}

#[tokio::test]
async fn a_known_topic_kafka_will_not_describe_parks_only_its_own_events() {
    let (a, b) = (unique("mock-a"), unique("mock-b"));
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(&a, 2, 1).expect("topic a");
    mock.create_topic(&b, 2, 1).expect("topic b");
    let brokers = mock.bootstrap_servers();
    let settings = || config(&brokers, "{{Namespace}}", 2);
    let mixed = |from: u64| -> Vec<Envelope> {
        (from..from + 10)
            .map(|seq| Envelope {
                namespace: if seq % 2 == 0 { a.clone() } else { b.clone() },
                ..event(seq, 1000 + seq, &format!("alloc-{}", seq % 5))
            })
            .collect()
    };
    let mut sink = KafkaSink::new(settings()).expect("sink");
    sink.open(None).await.expect("open");
    deliver(&mut sink, &mixed(1)).await;
    let saved = sink.checkpoint_state();
    drop(sink);

    // On the restart Kafka refuses to describe topic `a` to this client: the sink opens, its
    // events are parked without being sent, and topic `b`'s go on.
    mock.topic_error(&a, RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED).expect("error");
    let mut sink = KafkaSink::new(settings()).expect("sink");
    sink.open(saved).await.expect("open with a broken topic");
    let batch = mixed(11);
    let parked = deliver_or_park(&mut sink, &batch).await;
    let parked_seqs: Vec<u64> = parked.iter().map(|e| e.seq).collect();
    assert_eq!(parked_seqs, [12, 14, 16, 18, 20], "exactly topic a's events");
    assert_exactly_once(&read_all(&brokers, &b), (1..=20).filter(|seq| seq % 2 == 1));

    // Whole again, and due to be tried: a newer batch's events for `a` still wait behind the
    // parked ones, which go first when they are offered; every key stays in order.
    mock.topic_error(&a, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR).expect("clear");
    assert_exactly_once(&read_all(&brokers, &a), (1..=10).filter(|seq| seq % 2 == 0));
    tokio::time::sleep(broken::FIRST_TRY).await;
    let newer = deliver_or_park(&mut sink, &mixed(21)).await;
    assert_eq!(newer.iter().map(|e| e.seq).collect::<Vec<_>>(), [22, 24, 26, 28, 30], "held behind 12..20");
    let mut all = parked;
    all.extend(newer);
    offer_until_delivered(&mut sink, all).await;
    let records = read_all(&brokers, &a);
    assert_exactly_once(&records, (1..=30).filter(|seq| seq % 2 == 0));
    let mut by_key: BTreeMap<(i32, String), Vec<(i64, u64)>> = BTreeMap::new();
    for record in &records {
        by_key
            .entry((record.partition, record.key.clone().unwrap_or_default()))
            .or_default()
            .push((record.offset, record.seq()));
    }
    for (key, mut stored) in by_key {
        stored.sort();
        assert!(stored.windows(2).all(|w| w[0].1 < w[1].1), "{key:?} out of order: {stored:?}");
    }
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

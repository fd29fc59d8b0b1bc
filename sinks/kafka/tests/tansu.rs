//! The Kafka sink against a real Kafka-protocol broker (tansu on 127.0.0.1:9092): records,
//! headers and partitions, undoing a crash's repeats (with batches in flight too), a missing topic, an oversized event,
//! an unreachable broker.

mod common;

use common::*;
use nomad_relay_sink_api::units::{HumanDuration, OneOrMany};
use nomad_relay_sink_api::{Outcome, Sink, Submission};
use nomad_relay_sink_kafka::{KafkaSink, KafkaSinkConfig, SettingValue, partition_for};
use std::time::Duration;

#[tokio::test]
async fn each_event_is_one_record_on_its_key_partition_with_headers() {
    let brokers = tansu();
    let topic = unique("kafka-records");
    let mut sink = KafkaSink::new(config(&brokers, &topic, 3)).expect("sink");
    sink.open(None).await.expect("open");
    let batch = events(1, 40);
    let first = sink.send(&batch).await;
    assert!(
        first.iter().all(|o| matches!(o, Outcome::Deferred)),
        "a new topic is saved in the progress before its first record: {first:?}"
    );
    let state = sink.checkpoint_state().expect("state");
    assert_eq!(state["topics"][&topic]["partitions"], 3, "{state}");
    deliver(&mut sink, &batch).await;
    sink.flush().await.expect("flush");

    let records = read_all(&brokers, &topic);
    assert_exactly_once(&records, 1..=40);
    for record in &records {
        let event = &batch[(record.seq() - 1) as usize];
        assert_eq!(record.value.as_bytes(), &event.raw[..], "the value is the event as Nomad sent it");
        assert_eq!(record.key.as_deref(), Some(event.key.as_str()));
        assert_eq!(record.partition, partition_for(event.key.as_bytes(), 3));
        assert_eq!(record.headers["nomad-relay-id"], event.id.to_string());
        assert_eq!(record.headers["nomad-index"], event.id.index.to_string());
        assert_eq!(record.headers["nomad-topic"], "Allocation");
        assert_eq!(record.headers["nomad-type"], "AllocationUpdated");
        assert_eq!(record.headers["nomad-namespace"], "default");
    }
}

#[tokio::test]
async fn events_sent_before_a_crash_are_not_written_again() {
    let brokers = tansu();
    let topic = unique("kafka-crash");
    let mut sink = KafkaSink::new(config(&brokers, &topic, 2)).expect("sink");
    sink.open(None).await.expect("open");
    deliver(&mut sink, &events(1, 20)).await;
    // The relay saves the cursor (past seq 20) with this state...
    let saved = sink.checkpoint_state();
    // ...then sends seq 21..=50; events 21..=35 reach Kafka before the relay dies, and its
    // cursor still says 21.
    deliver(&mut sink, &events(21, 15)).await;
    drop(sink);

    let mut restarted = KafkaSink::new(config(&brokers, &topic, 2)).expect("sink");
    restarted.open(saved).await.expect("open after the crash");
    let outcomes = restarted.send(&events(21, 30)).await;
    assert!(outcomes.iter().all(Outcome::is_delivered), "{outcomes:?}");
    deliver(&mut restarted, &events(51, 10)).await;
    assert_exactly_once(&read_all(&brokers, &topic), 1..=60);
}

/// Hands `batch` to the sink without waiting for its delivery reports.
async fn submit(sink: &mut KafkaSink, batch: &[nomad_relay_sink_api::Envelope]) {
    let submission = sink.submit(batch).await;
    assert!(matches!(submission, Submission::InFlight), "{submission:?}");
}

#[tokio::test]
async fn a_crash_with_batches_in_flight_is_undone_from_the_state_saved_before_them() {
    let brokers = tansu();
    let topic = unique("kafka-pipeline-crash");
    let mut sink = KafkaSink::new(config(&brokers, &topic, 2)).expect("sink");
    assert_eq!(sink.pipeline_depth(), 2);
    sink.open(None).await.expect("open");
    deliver(&mut sink, &events(1, 20)).await;
    // Two batches in flight; the relay confirms the first and saves its cursor (41) with the
    // state of that moment, while the second is still out, and hands over a third.
    let (first, second, third) = (events(21, 20), events(41, 20), events(61, 20));
    submit(&mut sink, &first).await;
    submit(&mut sink, &second).await;
    assert!(sink.confirm(&first).await.iter().all(Outcome::is_delivered));
    submit(&mut sink, &third).await;
    assert!(sink.confirm(&second).await.iter().all(Outcome::is_delivered));
    // The cursor is saved at 61 with this state; the third batch reaches Kafka, and the
    // relay dies before its cursor moves.
    let saved = sink.checkpoint_state();
    assert!(sink.confirm(&third).await.iter().all(Outcome::is_delivered));
    assert_ne!(saved, sink.checkpoint_state(), "the offsets move once nothing is in flight");
    drop(sink);

    let mut restarted = KafkaSink::new(config(&brokers, &topic, 2)).expect("sink");
    restarted.open(saved).await.expect("open after the crash");
    let outcomes = restarted.send(&third).await;
    assert!(outcomes.iter().all(Outcome::is_delivered), "{outcomes:?}");
    deliver(&mut restarted, &events(81, 10)).await;
    assert_exactly_once(&read_all(&brokers, &topic), 1..=90);
}

#[tokio::test]
async fn a_crash_before_a_new_topics_progress_is_saved_is_undone_too() {
    let brokers = tansu();
    let topic = unique("kafka-new-topic-crash");
    let mut sink = KafkaSink::new(config(&brokers, &topic, 2)).expect("sink");
    sink.open(None).await.expect("open");
    let opened = sink.checkpoint_state();
    let batch = events(1, 10);
    assert!(sink.send(&batch).await.iter().all(|o| matches!(o, Outcome::Deferred)));
    // The relay saved this state when the sink deferred; the batch then went out and the
    // relay died before its cursor moved.
    let deferred = sink.checkpoint_state();
    assert_ne!(opened, deferred);
    assert!(sink.send(&batch).await.iter().all(Outcome::is_delivered));
    drop(sink);

    let mut restarted = KafkaSink::new(config(&brokers, &topic, 2)).expect("sink");
    restarted.open(deferred).await.expect("open");
    assert!(restarted.send(&batch).await.iter().all(Outcome::is_delivered));
    assert_exactly_once(&read_all(&brokers, &topic), 1..=10);
}

#[tokio::test]
async fn a_missing_topic_parks_its_events_with_a_clear_error() {
    let brokers = tansu();
    let topic = unique("kafka-missing");
    let config = KafkaSinkConfig { create_topics: None, ..config(&brokers, &topic, 1) };
    let mut sink = KafkaSink::new(config.clone()).expect("sink");
    sink.open(None).await.expect("open");
    let batch = events(1, 5);
    let outcomes = sink.send(&batch).await;
    // The topic alone is broken: its events are parked, so the relay goes on with others.
    match &outcomes[0] {
        Outcome::Parked(error) => {
            let text = error.report();
            assert!(text.contains(&format!("topic `{topic}` does not exist")), "{text}");
            assert!(text.contains("create_topics"), "{text}");
        }
        other => panic!("expected the event parked, got {other:?}"),
    }
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Parked(_))));
    // An operator creates the topic: the events go out, once.
    let mut creator =
        KafkaSink::new(KafkaSinkConfig { ..common::config(&brokers, &topic, 1) }).expect("sink");
    creator.open(None).await.expect("open");
    assert!(creator.send(&[]).await.is_empty());
    let created = creator.send(&events(100, 1)).await;
    assert!(matches!(created[0], Outcome::Deferred), "{created:?}");
    // Until the sink tries the topic again (its back-off is what is waited for here), the
    // events stay parked; then they go, once.
    assert!(sink.send(&batch).await.iter().all(|o| matches!(o, Outcome::Parked(_))));
    tokio::time::sleep(nomad_relay_sink_kafka::broken::FIRST_TRY).await;
    deliver(&mut sink, &batch).await;
    assert_exactly_once(&read_all(&brokers, &topic), 1..=5);
}

#[tokio::test]
async fn an_event_larger_than_the_limit_is_rejected_and_the_rest_delivered() {
    let brokers = tansu();
    let topic = unique("kafka-too-large");
    let mut config = config(&brokers, &topic, 1);
    config.librdkafka.insert("message.max.bytes".into(), SettingValue::Integer(10_000));
    let mut sink = KafkaSink::new(config).expect("sink");
    sink.open(None).await.expect("open");
    let mut batch = events(1, 3);
    let mut large = event(4, 2000, "alloc-large");
    large.raw = bytes::Bytes::from(format!(r#"{{"Topic":"Allocation","Payload":"{}"}}"#, "x".repeat(50_000)));
    batch.push(large);
    batch.extend(events(5, 3));
    let mut outcomes = sink.send(&batch).await;
    if outcomes.iter().all(|o| matches!(o, Outcome::Deferred)) {
        outcomes = sink.send(&batch).await;
    }
    for (position, outcome) in outcomes.iter().enumerate() {
        if position == 3 {
            let Outcome::Rejected(error) = outcome else { panic!("the large event: {outcome:?}") };
            assert!(error.report().contains("message.max.bytes"), "{}", error.report());
        } else {
            assert!(outcome.is_delivered(), "event {position}: {outcome:?}");
        }
    }
    assert_exactly_once(&read_all(&brokers, &topic), [1, 2, 3, 5, 6, 7]);
}

#[tokio::test]
async fn an_unreachable_bootstrap_address_is_named_in_the_error() {
    let config = KafkaSinkConfig {
        brokers: OneOrMany::One("127.0.0.1:1".into()),
        request_timeout: HumanDuration(Duration::from_secs(1)),
        ..Default::default()
    };
    let mut sink = KafkaSink::new(config).expect("sink");
    let error = sink.open(None).await.expect_err("nothing listens on port 1");
    let text = error.report();
    assert!(text.contains("cannot reach Kafka at 127.0.0.1:1"), "{text}");
    assert!(text.contains("brokers"), "{text}");
}

#[tokio::test]
async fn a_saved_offset_inside_a_record_batch_still_finds_what_was_sent() {
    // tansu answers a fetch from inside a record batch with nothing; the tail read then
    // starts over from the partition's oldest record, keeping only records past the offset.
    let brokers = tansu();
    let topic = unique("kafka-mid-batch");
    let mut config = config(&brokers, &topic, 1);
    config.request_timeout = HumanDuration(Duration::from_secs(1));
    let mut sink = KafkaSink::new(config.clone()).expect("sink");
    sink.open(None).await.expect("open");
    deliver(&mut sink, &events(1, 5)).await;
    let mut saved = sink.checkpoint_state().expect("state");
    saved["topics"][&topic]["read_from"]["0"] = serde_json::json!(2);
    drop(sink);

    let mut restarted = KafkaSink::new(config).expect("sink");
    restarted.open(Some(saved)).await.expect("open reads the tail");
    let outcomes = restarted.send(&events(3, 5)).await;
    assert!(outcomes.iter().all(Outcome::is_delivered), "{outcomes:?}");
    assert_exactly_once(&read_all(&brokers, &topic), 1..=7);
}

#[tokio::test]
async fn compressed_batches_are_written_and_read_back() {
    // The sink is built with zstd and TLS support; compression is the pass-through setting
    // most operators set.
    let brokers = tansu();
    let topic = unique("kafka-zstd");
    let mut config = config(&brokers, &topic, 2);
    config.librdkafka.insert("compression.type".into(), SettingValue::Text("zstd".into()));
    let mut sink = KafkaSink::new(config.clone()).expect("sink");
    sink.open(None).await.expect("open");
    deliver(&mut sink, &events(1, 30)).await;
    let saved = sink.checkpoint_state();
    deliver(&mut sink, &events(31, 10)).await;
    drop(sink);
    // The tail check reads compressed batches too.
    let mut restarted = KafkaSink::new(config).expect("sink");
    restarted.open(saved).await.expect("open");
    assert!(restarted.send(&events(31, 10)).await.iter().all(Outcome::is_delivered));
    assert_exactly_once(&read_all(&brokers, &topic), 1..=40);
}

#[tokio::test]
async fn the_tail_read_sees_the_sinks_records_behind_another_producers_open_transaction() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let brokers = tansu();
    let topic = unique("kafka-open-txn");
    let mut sink = KafkaSink::new(config(&brokers, &topic, 1)).expect("sink");
    sink.open(None).await.expect("open");
    let batch = events(1, 10);
    // The first send defers (the new topic's offsets are saved first): that is the state a
    // crash returns to.
    assert!(sink.send(&batch).await.iter().all(|o| matches!(o, Outcome::Deferred)));
    let saved = sink.checkpoint_state();
    // Another producer opens a transaction on the same partition and leaves it open.
    let other: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("transactional.id", unique("other-producer"))
        .create()
        .expect("transactional producer");
    other.init_transactions(Duration::from_secs(10)).expect("init transactions");
    other.begin_transaction().expect("begin");
    other.send(BaseRecord::to(&topic).partition(0).payload("uncommitted").key("x")).expect("send");
    other.flush(Duration::from_secs(10)).expect("flush");
    // The sink's records land after it; the relay dies before its cursor moves.
    assert!(sink.send(&batch).await.iter().all(|o| matches!(o, Outcome::Delivered)));
    drop(sink);
    // A consumer reading only committed records stops at the open transaction and cannot see
    // them: the restarted sink must read past it, or it writes them a second time.
    let mut restarted = KafkaSink::new(config(&brokers, &topic, 1)).expect("sink");
    restarted.open(saved).await.expect("open");
    let outcomes = restarted.send(&batch).await;
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Duplicate)), "{outcomes:?}");
    let records: Vec<_> =
        read_all(&brokers, &topic).into_iter().filter(|r| r.value != "uncommitted").collect();
    assert_exactly_once(&records, 1..=10);
    drop(other);
}

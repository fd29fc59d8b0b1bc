//! The five sinks a benchmark measures, and for each what the benchmark needs of its broker:
//! the relay's sink table, the broker-side objects made fresh for the run (stream, exchange
//! and queue, topics), a count of what the broker holds after a run, a consumer that timestamps
//! each event as it becomes visible (for latency), and the raw-client limit: the same client
//! library publishing the same pre-built messages with the same guarantee the sink uses.

use crate::workload::Message;
use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use nomad_relay::config::DEFAULT_TOPICS;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::future::IntoFuture;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The NATS server the benchmark uses.
pub const NATS_URL: &str = "nats://127.0.0.1:4222";
/// The RabbitMQ broker.
pub const AMQP_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The Kafka-protocol broker (tansu).
pub const KAFKA_BROKERS: &str = "127.0.0.1:9092";
/// Partitions per Kafka topic.
const KAFKA_PARTITIONS: i32 = 3;
/// Publishes awaiting their acknowledgement at once in the raw-client runs: the sinks'
/// default `max_in_flight` for NATS and RabbitMQ.
const WINDOW: usize = 1024;

/// A sink to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The file sink: journal and file, both fsynced.
    File,
    /// NATS JetStream, each publish acknowledged (PubAck).
    Jetstream,
    /// NATS core (at most once at the server; flushed).
    Nats,
    /// RabbitMQ with publisher confirms, persistent messages, a durable queue.
    Rabbitmq,
    /// Kafka (tansu), idempotent producer, acks=all.
    Kafka,
}

impl Target {
    /// Every target, in the order results are shown.
    pub const ALL: [Target; 5] =
        [Target::File, Target::Jetstream, Target::Nats, Target::Rabbitmq, Target::Kafka];

    /// Its name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Target::File => "file",
            Target::Jetstream => "jetstream",
            Target::Nats => "nats",
            Target::Rabbitmq => "rabbitmq",
            Target::Kafka => "kafka",
        }
    }
}

/// The broker-side names of one run, fresh each time so runs never see each other's data.
pub struct Names {
    /// `bench<pid><n>`: a prefix for every name.
    pub id: String,
    /// Where the file sink writes.
    pub file: PathBuf,
}

impl Names {
    /// New names; the file sink writes under `dir`.
    pub fn new(dir: &Path) -> Names {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = format!("bench{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        Names { file: dir.join(format!("{id}.ndjson")), id }
    }
    fn stream(&self) -> String {
        self.id.to_uppercase()
    }
    fn subject_prefix(&self) -> String {
        format!("{}.", self.id)
    }
    fn kafka_topic(&self, topic: &str) -> String {
        format!("{}-{topic}", self.id)
    }
}

/// Fails with the command to start a broker that is not listening.
pub fn require_broker(target: Target) -> Result<()> {
    let (address, start) = match target {
        Target::File => return Ok(()),
        Target::Jetstream | Target::Nats => ("127.0.0.1:4222", "scripts/services.sh nats"),
        Target::Rabbitmq => ("127.0.0.1:5672", "scripts/services.sh rabbitmq"),
        Target::Kafka => ("127.0.0.1:9092", "scripts/services.sh kafka"),
    };
    let addr = address.parse().context("broker address")?;
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        bail!("the {} broker is not listening on {address}; start it with `{start}`", target.name());
    }
    Ok(())
}

/// The relay's `[sinks.bench]` table for `target`, with the lines of `$BENCH_SINK_EXTRA`
/// appended (settings to try, such as `batch_size = 2000`). The broker objects are made by
/// [`prepare`] beforehand, so the sink only checks that they exist.
pub fn sink_table(target: Target, names: &Names) -> String {
    let mut table = default_sink_table(target, names);
    if let Ok(extra) = std::env::var("BENCH_SINK_EXTRA") {
        table.push_str(&extra);
        table.push('\n');
    }
    table
}

fn default_sink_table(target: Target, names: &Names) -> String {
    let common = "[sinks.bench]\nretry_min_delay = \"50ms\"\nretry_max_delay = \"1s\"\n";
    match target {
        Target::File => format!("{common}type = \"file\"\npath = \"{}\"\n", names.file.display()),
        Target::Jetstream => format!(
            "{common}type = \"nats\"\nurl = \"{NATS_URL}\"\nsubject = \"{}{{{{Topic}}}}.{{{{Type}}}}\"\nstream = \"{}\"\n",
            names.subject_prefix(),
            names.stream()
        ),
        Target::Nats => format!(
            "{common}type = \"nats\"\nurl = \"{NATS_URL}\"\njetstream = false\nsubject = \"{}{{{{Topic}}}}.{{{{Type}}}}\"\n",
            names.subject_prefix()
        ),
        Target::Rabbitmq => {
            format!("{common}type = \"amqp\"\nuri = \"{AMQP_URI}\"\nexchange = \"{}\"\n", names.id)
        }
        Target::Kafka => format!(
            "{common}type = \"kafka\"\nbrokers = \"{KAFKA_BROKERS}\"\ntopic = \"{}-{{{{Topic}}}}\"\n",
            names.id
        ),
    }
}

/// Makes the broker objects for a run: a file-storage stream, a durable exchange with a
/// durable queue bound to everything, or one topic per subscribed Nomad topic.
pub async fn prepare(target: Target, names: &Names) -> Result<()> {
    match target {
        Target::File | Target::Nats => Ok(()),
        Target::Jetstream => {
            let context = async_nats::jetstream::new(async_nats::connect(NATS_URL).await?);
            context
                .create_stream(async_nats::jetstream::stream::Config {
                    name: names.stream(),
                    subjects: vec![format!("{}>", names.subject_prefix())],
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow!("cannot create JetStream stream {}: {e}", names.stream()))?;
            Ok(())
        }
        Target::Rabbitmq => {
            let connection = Connection::connect(AMQP_URI, ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            declare_exchange_and_queue(&channel, &names.id).await?;
            let _ = connection.close(200, "done".into()).await;
            Ok(())
        }
        Target::Kafka => {
            let topics: Vec<String> = DEFAULT_TOPICS.iter().map(|t| names.kafka_topic(t)).collect();
            create_kafka_topics(&topics).await?;
            Ok(())
        }
    }
}

/// A durable topic exchange and a durable queue, both called `name`, the queue bound to
/// everything the exchange routes.
async fn declare_exchange_and_queue(channel: &lapin::Channel, name: &str) -> Result<()> {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare(name.into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    let queue = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(name.into(), queue, FieldTable::default()).await?;
    channel
        .queue_bind(name.into(), name.into(), "#".into(), QueueBindOptions::default(), FieldTable::default())
        .await?;
    Ok(())
}

/// Creates `topics` with the benchmark's partition count.
async fn create_kafka_topics(topics: &[String]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", KAFKA_BROKERS).create()?;
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|t| NewTopic::new(t, KAFKA_PARTITIONS, TopicReplication::Fixed(1))).collect();
    for result in admin.create_topics(&new, &AdminOptions::new()).await? {
        result.map_err(|(topic, code)| anyhow!("cannot create Kafka topic {topic}: {code}"))?;
    }
    Ok(())
}

/// Removes what [`prepare`] and the run made (streams, queues and files can be large).
pub async fn cleanup(target: Target, names: &Names) {
    match target {
        Target::File | Target::Nats => crate::process::remove_quietly(&names.file),
        Target::Jetstream => {
            if let Ok(client) = async_nats::connect(NATS_URL).await {
                let context = async_nats::jetstream::new(client);
                let _ = context.delete_stream(names.stream()).await;
                let _ = context.delete_stream(format!("{}RAW", names.stream())).await;
            }
        }
        Target::Rabbitmq => {
            if let Ok(connection) = Connection::connect(AMQP_URI, ConnectionProperties::default()).await
                && let Ok(channel) = connection.create_channel().await
            {
                for name in [names.id.clone(), format!("{}raw", names.id)] {
                    let _ = channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await;
                    let _ =
                        channel.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default()).await;
                }
                let _ = connection.close(200, "done".into()).await;
            }
        }
        Target::Kafka => {
            // tansu keeps the topics in memory; deleting them frees it.
            if let Ok(admin) = ClientConfig::new()
                .set("bootstrap.servers", KAFKA_BROKERS)
                .create::<AdminClient<DefaultClientContext>>()
            {
                let mut topics: Vec<String> = DEFAULT_TOPICS.iter().map(|t| names.kafka_topic(t)).collect();
                topics.extend(DEFAULT_TOPICS.iter().map(|t| names.kafka_topic(&format!("raw-{t}"))));
                let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
                let _ = admin.delete_topics(&refs, &AdminOptions::new()).await;
            }
        }
    }
}

/// Events the broker holds for the run, counted broker-side after it. Core NATS keeps
/// nothing, so its count comes from a subscriber started with [`count_core_nats`].
pub async fn broker_count(target: Target, names: &Names) -> Result<u64> {
    match target {
        Target::File => {
            let text = tokio::fs::read(&names.file).await.unwrap_or_default();
            Ok(text.iter().filter(|b| **b == b'\n').count() as u64)
        }
        Target::Nats => bail!("core NATS keeps nothing to count; use count_core_nats"),
        Target::Jetstream => {
            let context = async_nats::jetstream::new(async_nats::connect(NATS_URL).await?);
            let mut stream = context.get_stream(names.stream()).await?;
            Ok(stream.info().await?.state.messages)
        }
        Target::Rabbitmq => {
            let connection = Connection::connect(AMQP_URI, ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
            let queue =
                channel.queue_declare(names.id.as_str().into(), passive, FieldTable::default()).await?;
            let _ = connection.close(200, "done".into()).await;
            Ok(u64::from(queue.message_count()))
        }
        Target::Kafka => {
            let topics: Vec<String> = DEFAULT_TOPICS.iter().map(|t| names.kafka_topic(t)).collect();
            tokio::task::spawn_blocking(move || count_kafka_records(&topics)).await?
        }
    }
}

/// Reads every partition of `topics` from the start to its end, counting records (tansu's
/// watermarks are not a record count, so the records are read).
fn count_kafka_records(topics: &[String]) -> Result<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", KAFKA_BROKERS)
        .set("group.id", format!("{}-count", topics[0]))
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        for partition in 0..KAFKA_PARTITIONS {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    let mut open = topics.len() * KAFKA_PARTITIONS as usize;
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while open > 0 {
        if Instant::now() > deadline {
            bail!("reading the Kafka topics back did not reach their end within 5 minutes");
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(_)) => count += 1,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => open -= 1,
            Some(Err(error)) => bail!("reading the Kafka topics back: {error}"),
        }
    }
    Ok(count)
}

/// A subscriber counting core NATS messages of the run (it must run during the run).
pub async fn count_core_nats(names: &Names) -> Result<Arc<AtomicU64>> {
    let client = async_nats::ConnectOptions::new().subscription_capacity(1 << 20).connect(NATS_URL).await?;
    let mut subscriber = client.subscribe(format!("{}>", names.subject_prefix())).await?;
    client.flush().await?;
    let count = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&count);
    tokio::spawn(async move {
        let _client = client;
        while subscriber.next().await.is_some() {
            counted.fetch_add(1, Ordering::Relaxed);
        }
    });
    Ok(count)
}

/// One event seen by a consumer: its Nomad index and when it was seen.
pub type Seen = (u64, Instant);

/// Starts a consumer that sends every event of the run as it becomes visible. JetStream and
/// Kafka consumers see only stored, acknowledged records; a RabbitMQ consumer sees a message
/// once queued (its confirm follows the disk write); the file is read as it grows (before the
/// sink's fsync returns). Stops when `stop` is set; the returned thread, if any, must be
/// joined before the run's broker objects are deleted (librdkafka crashes on a topic deleted
/// under a live consumer's metadata refresh with tansu).
pub async fn consume(
    target: Target,
    names: &Names,
    out: mpsc::UnboundedSender<Seen>,
    stop: Arc<AtomicBool>,
) -> Result<Option<std::thread::JoinHandle<()>>> {
    match target {
        Target::File => {
            let path = names.file.clone();
            return Ok(Some(std::thread::spawn(move || tail_file(&path, &out, &stop))));
        }
        Target::Nats => {
            let client =
                async_nats::ConnectOptions::new().subscription_capacity(1 << 20).connect(NATS_URL).await?;
            let mut subscriber = client.subscribe(format!("{}>", names.subject_prefix())).await?;
            client.flush().await?;
            tokio::spawn(async move {
                let _client = client;
                while let Some(message) = subscriber.next().await {
                    if let Some(index) = nats_index(message.headers.as_ref()) {
                        let _ = out.send((index, Instant::now()));
                    }
                }
            });
        }
        Target::Jetstream => {
            let context = async_nats::jetstream::new(async_nats::connect(NATS_URL).await?);
            let stream = context.get_stream(names.stream()).await?;
            let consumer = stream
                .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
                .await
                .map_err(|e| anyhow!("cannot create a JetStream consumer: {e}"))?;
            let mut messages = consumer.messages().await?;
            tokio::spawn(async move {
                while let Some(Ok(message)) = messages.next().await {
                    if let Some(index) = nats_index(message.headers.as_ref()) {
                        let _ = out.send((index, Instant::now()));
                    }
                }
            });
        }
        Target::Rabbitmq => {
            let connection = Connection::connect(AMQP_URI, ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            let mut consumer = channel
                .basic_consume(
                    names.id.as_str().into(),
                    "bench".into(),
                    BasicConsumeOptions { no_ack: true, ..Default::default() },
                    FieldTable::default(),
                )
                .await?;
            tokio::spawn(async move {
                let _connection = connection;
                while let Some(Ok(delivery)) = consumer.next().await {
                    let index = delivery.properties.headers().as_ref().and_then(|headers| {
                        match headers.inner().get("nomad-index") {
                            Some(AMQPValue::LongLongInt(index)) => u64::try_from(*index).ok(),
                            _ => None,
                        }
                    });
                    if let Some(index) = index {
                        let _ = out.send((index, Instant::now()));
                    }
                }
            });
        }
        Target::Kafka => {
            let topics: Vec<String> = DEFAULT_TOPICS.iter().map(|t| names.kafka_topic(t)).collect();
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", KAFKA_BROKERS)
                .set("group.id", format!("{}-latency", topics[0]))
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "5")
                .set("fetch.min.bytes", "1")
                .create()?;
            let mut assignment = TopicPartitionList::new();
            for topic in &topics {
                for partition in 0..KAFKA_PARTITIONS {
                    assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
                }
            }
            consumer.assign(&assignment)?;
            return Ok(Some(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) else { continue };
                    let index = message.headers().and_then(|headers| {
                        headers
                            .iter()
                            .find(|h| h.key == "nomad-index")
                            .and_then(|h| std::str::from_utf8(h.value.unwrap_or_default()).ok()?.parse().ok())
                    });
                    if let Some(index) = index {
                        let _ = out.send((index, Instant::now()));
                    }
                }
            })));
        }
    }
    Ok(None)
}

fn nats_index(headers: Option<&async_nats::HeaderMap>) -> Option<u64> {
    headers?.get("Nomad-Index")?.as_str().parse().ok()
}

/// Reads the file sink's output as it grows (polling every millisecond), sending each line's
/// `Index`.
fn tail_file(path: &Path, out: &mpsc::UnboundedSender<Seen>, stop: &AtomicBool) {
    use std::io::Read;
    let mut file = None;
    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 1 << 20];
    while !stop.load(Ordering::Relaxed) {
        if file.is_none() {
            file = std::fs::File::open(path).ok();
        }
        let read = file.as_mut().map_or(0, |f| f.read(&mut chunk).unwrap_or(0));
        if read == 0 {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let now = Instant::now();
        pending.extend_from_slice(&chunk[..read]);
        let mut start = 0;
        while let Some(newline) = memchr_newline(&pending[start..]) {
            if let Some(index) = line_index(&pending[start..start + newline]) {
                let _ = out.send((index, now));
            }
            start += newline + 1;
        }
        pending.drain(..start);
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|b| *b == b'\n')
}

/// The `Index` field of an event line (it precedes the payload).
fn line_index(line: &[u8]) -> Option<u64> {
    let key = b"\"Index\":";
    let at = line.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = line[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&line[at..at + digits]).ok()?.parse().ok()
}

/// The raw client's rate in events/s: `messages` published with the sink's guarantee. The
/// file "client" is the disk: each message written twice (journal and file) with an
/// `fdatasync` per MiB written, in `dir`.
pub async fn raw_limit(target: Target, names: &Names, messages: &[Message], dir: &Path) -> Result<f64> {
    let started;
    match target {
        Target::File => {
            let owned = messages.to_vec();
            let dir = dir.to_owned();
            let id = names.id.clone();
            let seconds =
                tokio::task::spawn_blocking(move || write_twice_with_fsync(&owned, &dir, &id)).await??;
            return Ok(messages_rate(messages.len() as f64, seconds));
        }
        Target::Nats => {
            let client = async_nats::connect(NATS_URL).await?;
            started = Instant::now();
            for message in messages {
                let subject = format!("{}raw.{}.{}", names.id, message.topic, message.event_type);
                client.publish_with_headers(subject, nats_headers(message), message.body.clone()).await?;
            }
            client.flush().await?;
        }
        Target::Jetstream => {
            let context = async_nats::jetstream::new(async_nats::connect(NATS_URL).await?);
            let stream = format!("{}RAW", names.stream());
            context
                .create_stream(async_nats::jetstream::stream::Config {
                    name: stream.clone(),
                    subjects: vec![format!("{}raw.>", names.id)],
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow!("cannot create JetStream stream {stream}: {e}"))?;
            started = Instant::now();
            let mut acks = FuturesUnordered::new();
            for message in messages {
                if acks.len() >= WINDOW {
                    acks.next().await.transpose()?;
                }
                let subject = format!("{}raw.{}.{}", names.id, message.topic, message.event_type);
                let mut headers = nats_headers(message);
                headers.insert("Nats-Msg-Id", message.id.as_str());
                acks.push(
                    context.publish_with_headers(subject, headers, message.body.clone()).await?.into_future(),
                );
            }
            while let Some(ack) = acks.next().await {
                ack?;
            }
        }
        Target::Rabbitmq => {
            let raw = format!("{}raw", names.id);
            let connection = Connection::connect(AMQP_URI, ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            declare_exchange_and_queue(&channel, &raw).await?;
            channel.confirm_select(ConfirmSelectOptions::default()).await?;
            started = Instant::now();
            let mut confirms = FuturesUnordered::new();
            for message in messages {
                if confirms.len() >= WINDOW {
                    check_confirm(confirms.next().await)?;
                }
                let mut headers = FieldTable::default();
                headers.insert("nomad-index".into(), AMQPValue::LongLongInt(message.index as i64));
                headers.insert("nomad-topic".into(), AMQPValue::LongString(message.topic.as_str().into()));
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type(ShortString::from("application/json"))
                    .with_message_id(ShortString::from(message.id.as_str()))
                    .with_headers(headers);
                let routing_key = format!("{}.{}", message.topic, message.event_type);
                let confirm = channel
                    .basic_publish(
                        raw.as_str().into(),
                        routing_key.as_str().into(),
                        BasicPublishOptions { mandatory: true, ..Default::default() },
                        &message.body,
                        properties,
                    )
                    .await?;
                confirms.push(confirm);
            }
            while let Some(confirm) = confirms.next().await {
                check_confirm(Some(confirm))?;
            }
            let _ = connection.close(200, "done".into()).await;
        }
        Target::Kafka => {
            let topics: Vec<String> =
                DEFAULT_TOPICS.iter().map(|t| names.kafka_topic(&format!("raw-{t}"))).collect();
            create_kafka_topics(&topics).await?;
            let producer = raw_kafka_producer()?;
            // The producer's id, metadata and connections first, as the relay's sink has them
            // before its first delivered event (where its rate starts).
            for topic in &topics {
                let record: FutureRecord<'_, str, str> = FutureRecord::to(topic).payload("warm-up");
                check_delivery(producer.send_result(record).map_err(|(e, _)| e)?.await)?;
            }
            started = Instant::now();
            let mut deliveries = FuturesUnordered::new();
            // Records outstanding at most (`BENCH_RAW_WINDOW`, a diagnostic: how much the raw
            // client needs in flight to reach its rate); every record by default.
            let window: usize =
                std::env::var("BENCH_RAW_WINDOW").ok().and_then(|v| v.parse().ok()).unwrap_or(usize::MAX);
            for (position, message) in messages.iter().enumerate() {
                while deliveries.len() >= window.max(1) {
                    match deliveries.next().await {
                        Some(result) => check_delivery(result)?,
                        None => break,
                    }
                }
                let topic = names.kafka_topic(&format!("raw-{}", message.topic));
                let index = message.index.to_string();
                let seq = position.to_string();
                // The relay's nine headers, with values of the same lengths.
                let headers = OwnedHeaders::new_with_capacity(9)
                    .insert(Header { key: "nomad-relay-id", value: Some(message.id.as_str()) })
                    .insert(Header { key: "nomad-index", value: Some(index.as_str()) })
                    .insert(Header { key: "nomad-topic", value: Some(message.topic.as_str()) })
                    .insert(Header { key: "nomad-type", value: Some(message.event_type.as_str()) })
                    .insert(Header { key: "nomad-namespace", value: Some("default") })
                    .insert(Header { key: "nomad-key", value: Some(message.key.as_str()) })
                    .insert(Header { key: "nomad-source", value: Some("default") })
                    .insert(Header { key: "nomad-relay-writer", value: Some(RAW_WRITER) })
                    .insert(Header { key: "nomad-relay-seq", value: Some(seq.as_str()) });
                let mut record = FutureRecord::to(&topic)
                    .key(message.key.as_bytes())
                    .payload(&message.body[..])
                    .headers(headers);
                loop {
                    match producer.send_result(record) {
                        Ok(delivery) => {
                            deliveries.push(delivery);
                            break;
                        }
                        Err((_, returned)) => {
                            record = returned;
                            match deliveries.next().await {
                                Some(result) => check_delivery(result)?,
                                None => tokio::time::sleep(Duration::from_millis(1)).await,
                            }
                        }
                    }
                }
            }
            while let Some(result) = deliveries.next().await {
                check_delivery(result)?;
            }
        }
    }
    Ok(messages_rate(messages.len() as f64, started.elapsed().as_secs_f64()))
}

/// A writer id as long as the relay's (16 hex digits), for the raw records' `nomad-relay-writer`.
const RAW_WRITER: &str = "00000000deadbeef";

/// The raw Kafka client: an idempotent `acks=all` producer without a delivery timeout, the
/// relay's sink settings.
fn raw_kafka_producer() -> Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", KAFKA_BROKERS)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        .create()?)
}

/// The raw client publishing `messages` at `rate` events/s to the topics [`consume`] reads,
/// with the relay's producer settings (idempotent, `acks=all`, librdkafka's default linger):
/// the latency floor of the broker and the consumer, for the relay's Kafka latency to be read
/// against. Returns when each index was published. Kafka only: it is the one sink whose
/// latency target the relay misses, so the one whose floor needs measuring.
pub async fn publish_kafka_paced(
    names: &Names,
    messages: &[Message],
    rate: f64,
) -> Result<std::collections::HashMap<u64, Instant>> {
    let producer = raw_kafka_producer()?;
    let mut published_at = std::collections::HashMap::new();
    let mut deliveries = FuturesUnordered::new();
    let started = Instant::now();
    for (sent, message) in messages.iter().enumerate() {
        let due = started + Duration::from_secs_f64(sent as f64 / rate);
        // Collect acknowledgements while waiting for the next message's time.
        while due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                Some(result) = deliveries.next() => check_delivery(result)?,
            }
        }
        published_at.entry(message.index).or_insert_with(Instant::now);
        let topic = names.kafka_topic(&message.topic);
        let index = message.index.to_string();
        let headers = OwnedHeaders::new().insert(Header { key: "nomad-index", value: Some(index.as_str()) });
        let record =
            FutureRecord::to(&topic).key(message.key.as_bytes()).payload(&message.body[..]).headers(headers);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    while let Some(result) = deliveries.next().await {
        check_delivery(result)?;
    }
    Ok(published_at)
}

fn messages_rate(count: f64, seconds: f64) -> f64 {
    count / seconds.max(1e-9)
}

/// A delivery future's output: the report, or the error with the record, or the producer gone.
fn check_delivery<D, M, C>(result: Result<Result<D, (rdkafka::error::KafkaError, M)>, C>) -> Result<()> {
    match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => bail!("Kafka refused a raw record: {error}"),
        Err(_) => bail!("the Kafka producer dropped a raw record"),
    }
}

fn check_confirm(confirm: Option<lapin::Result<Confirmation>>) -> Result<()> {
    match confirm {
        Some(Ok(Confirmation::Ack(None))) | None => Ok(()),
        Some(Ok(other)) => bail!("RabbitMQ did not take a raw message: {other:?}"),
        Some(Err(error)) => bail!("RabbitMQ connection failed: {error}"),
    }
}

fn nats_headers(message: &Message) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nomad-Index", message.index.to_string().as_str());
    headers.insert("Nomad-Topic", message.topic.as_str());
    headers.insert("Nomad-Type", message.event_type.as_str());
    headers
}

/// Writes every message twice, as the relay does (journal, then file), each stream of
/// writes with an `fdatasync` per MiB; returns the seconds taken.
fn write_twice_with_fsync(messages: &[Message], dir: &Path, id: &str) -> Result<f64> {
    let paths = [dir.join(format!("{id}-journal.raw")), dir.join(format!("{id}-file.raw"))];
    let mut files = Vec::new();
    for path in &paths {
        files.push(std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?);
    }
    let started = Instant::now();
    let mut buffer = Vec::with_capacity(2 << 20);
    let mut result = Ok(());
    for (i, message) in messages.iter().enumerate() {
        buffer.extend_from_slice(&message.body);
        buffer.push(b'\n');
        if buffer.len() >= 1 << 20 || i + 1 == messages.len() {
            for file in &mut files {
                if let Err(e) = file.write_all(&buffer).and_then(|()| file.sync_data()) {
                    result = Err(anyhow!("writing in {}: {e}", dir.display()));
                }
            }
            buffer.clear();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    for path in &paths {
        crate::process::remove_quietly(path);
    }
    result.map(|()| seconds)
}

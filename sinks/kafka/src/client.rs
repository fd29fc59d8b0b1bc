//! Building librdkafka clients for the sink, and the blocking requests it makes with them.
//!
//! Every function here that talks to a broker blocks the calling thread; the sink calls them
//! through `tokio::task::spawn_blocking` only.

use crate::config::KafkaSinkConfig;
use nomad_relay_sink_api::{SinkError, SinkErrorKind};
use rdkafka::ClientContext;
use rdkafka::client::Client;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// Routes librdkafka's log lines and client errors to the relay's log, tagged with the
/// brokers and logged in the span the client was created in (the sink's), although they come
/// from librdkafka's own threads.
#[derive(Clone)]
pub struct LogContext {
    sink: String,
    span: tracing::Span,
}

impl LogContext {
    /// A context for the sink writing to `brokers`, in the current span.
    pub fn new(brokers: &str) -> LogContext {
        LogContext { sink: format!("kafka {brokers}"), span: tracing::Span::current() }
    }
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let _entered = self.span.enter();
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(client = %self.sink, "librdkafka {facility}: {message}"),
            RDKafkaLogLevel::Warning => warn!(client = %self.sink, "librdkafka {facility}: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(client = %self.sink, "librdkafka {facility}: {message}")
            }
            RDKafkaLogLevel::Debug => debug!(client = %self.sink, "librdkafka {facility}: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let _entered = self.span.enter();
        // The tail reader asks for partition EOF events to find each partition's end; they
        // also arrive here, and are not a problem.
        if matches!(error, KafkaError::PartitionEOF(_)) {
            debug!(client = %self.sink, "Kafka client: {error}: {reason}");
            return;
        }
        warn!(client = %self.sink, "Kafka client: {error}: {reason}");
    }
}

impl ConsumerContext for LogContext {}

/// The producer: idempotent and gapless, `acks=all`, no librdkafka timeout (the sink keeps its
/// own), so a partition only ever holds a prefix of what one producer sent to it.
pub fn producer(config: &KafkaSinkConfig) -> Result<FutureProducer<LogContext>, SinkError> {
    let mut client = base(config, config.producer_settings(), "nomad-relay");
    client
        .set("enable.idempotence", "true")
        // A record the broker refuses for good must stop the producer rather than let the
        // records behind it through: a retried event would land after them.
        .set("enable.gapless.guarantee", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        .set("allow.auto.create.topics", "false");
    create(config, &client, "producer")
}

/// A group-less reader for partition tails.
pub fn reader(config: &KafkaSinkConfig) -> Result<BaseConsumer<LogContext>, SinkError> {
    let mut client = base(config, config.reader_settings(), "nomad-relay-tail");
    client
        .set("group.id", "nomad-relay-tail-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        // The sink's own records must be seen wherever they are: a consumer reading only
        // committed records stops at another producer's open transaction, and the sink would
        // write again what is already after it.
        .set("isolation.level", "read_uncommitted")
        // A fetch at a partition's end otherwise waits 500 ms for new records, once per
        // partition read, which made a restart's tail check take seconds.
        .set("fetch.wait.max.ms", "10")
        .set("auto.offset.reset", "earliest")
        .set("allow.auto.create.topics", "false");
    create(config, &client, "tail reader")
}

/// An admin client, for creating topics.
pub fn admin(config: &KafkaSinkConfig) -> Result<rdkafka::admin::AdminClient<LogContext>, SinkError> {
    let client = base(config, config.reader_settings(), "nomad-relay-admin");
    create(config, &client, "admin client")
}

/// The operator's pass-through settings, then the brokers and the client id (set last, so
/// they win). librdkafka logs as much as the relay's log filter lets through for this module
/// (`NOMAD_RELAY_LOG=info,nomad_relay_sink_kafka::client=debug` with a `debug` setting shows
/// its protocol traces); rdkafka would otherwise take the level from the `log` crate, which
/// the relay does not use, and pass errors only.
fn base<'a>(
    config: &KafkaSinkConfig,
    settings: impl Iterator<Item = (&'a str, String)>,
    client_id: &str,
) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (name, value) in settings {
        client.set(name, value);
    }
    client.set("bootstrap.servers", config.bootstrap_servers()).set("client.id", client_id);
    client.set_log_level(log_level());
    client
}

/// The most detailed librdkafka level the relay's log filter shows for this module.
fn log_level() -> RDKafkaLogLevel {
    if tracing::enabled!(tracing::Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(tracing::Level::INFO) {
        RDKafkaLogLevel::Info
    } else if tracing::enabled!(tracing::Level::WARN) {
        RDKafkaLogLevel::Warning
    } else {
        RDKafkaLogLevel::Error
    }
}

fn create<T: rdkafka::config::FromClientConfigAndContext<LogContext>>(
    config: &KafkaSinkConfig,
    client: &ClientConfig,
    what: &str,
) -> Result<T, SinkError> {
    client
        .create_with_context(LogContext::new(&config.bootstrap_servers()))
        .map_err(|e| settings_error(what, e))
}

fn settings_error(what: &str, error: KafkaError) -> SinkError {
    SinkError::with_source(
        SinkErrorKind::Config,
        format!("librdkafka refused the {what}'s settings; check the sink's `librdkafka` table"),
        error,
    )
}

/// A topic as the broker describes it.
#[derive(Debug, Clone)]
pub struct TopicLayout {
    /// Partition count.
    pub partitions: i32,
    /// Per partition, the offset just past its last record, as the broker reports it (a
    /// lower bound: some brokers report the last batch's first offset + 1).
    pub high: BTreeMap<i32, i64>,
}

impl TopicLayout {
    /// Where a tail read of each partition may start so as to cover every record written
    /// from now on: one record before the reported end, which is a batch's first offset even
    /// on brokers that report the end too low.
    pub fn read_start(&self) -> BTreeMap<i32, i64> {
        self.high.iter().map(|(&partition, &high)| (partition, (high - 1).max(0))).collect()
    }
}

/// Asks the broker for `topic`'s partitions and their high watermarks. `Ok(None)` when the
/// topic does not exist.
pub fn describe_topic<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
    brokers: &str,
) -> Result<Option<TopicLayout>, SinkError> {
    let metadata = client.fetch_metadata(Some(topic), timeout).map_err(|e| unreachable_error(brokers, e))?;
    let Some(described) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    if let Some(error) = described.error() {
        let code = RDKafkaErrorCode::from(error);
        if code == RDKafkaErrorCode::UnknownTopicOrPartition || code == RDKafkaErrorCode::UnknownTopic {
            return Ok(None);
        }
        // An error of this topic alone (authorization, no leader): its events wait apart.
        return Err(SinkError::new(
            SinkErrorKind::Refused,
            format!("Kafka cannot describe topic `{topic}`: {code}"),
        ));
    }
    if described.partitions().is_empty() {
        return Ok(None);
    }
    let mut high = BTreeMap::new();
    for partition in described.partitions() {
        let (_, end) = client.fetch_watermarks(topic, partition.id(), timeout).map_err(|e| {
            SinkError::with_source(
                SinkErrorKind::Unavailable,
                format!("cannot read the offsets of `{topic}` partition {}", partition.id()),
                e,
            )
        })?;
        high.insert(partition.id(), end);
    }
    Ok(Some(TopicLayout { partitions: described.partitions().len() as i32, high }))
}

/// The error for a broker list that does not answer.
pub fn unreachable_error(brokers: &str, error: KafkaError) -> SinkError {
    SinkError::with_source(
        SinkErrorKind::Unavailable,
        format!(
            "cannot reach Kafka at {brokers}: check the sink's `brokers` (host:port of a broker's listener) and that the broker is running"
        ),
        error,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_logs_as_much_as_the_relay_log_shows() {
        let level_under = |max: tracing::Level| {
            let subscriber =
                tracing_subscriber::fmt().with_max_level(max).with_writer(std::io::sink).finish();
            tracing::subscriber::with_default(subscriber, log_level)
        };
        assert!(matches!(level_under(tracing::Level::DEBUG), RDKafkaLogLevel::Debug));
        assert!(matches!(level_under(tracing::Level::INFO), RDKafkaLogLevel::Info));
        assert!(matches!(level_under(tracing::Level::WARN), RDKafkaLogLevel::Warning));
        assert!(matches!(level_under(tracing::Level::ERROR), RDKafkaLogLevel::Error));
    }
}

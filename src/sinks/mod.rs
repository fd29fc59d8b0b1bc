//! The sinks the relay can deliver to, as one closed enum: adding a sink means adding a
//! variant here and an arm to each `match`, and nothing else in the relay changes.

pub mod file;
pub mod stdout;

use crate::config::SinkKindConfig;
use nomad_relay_sink_api::{Envelope, Guarantee, Health, Outcome, Sink, SinkError, Submission};

/// Any configured sink.
pub enum AnySink {
    /// NDJSON file.
    File(file::FileSink),
    /// Standard output.
    Stdout(stdout::StdoutSink),
    /// NATS core or JetStream.
    Nats(Box<nomad_relay_sink_nats::NatsSink>),
    /// RabbitMQ.
    Amqp(Box<nomad_relay_sink_amqp::AmqpSink>),
    /// Kafka.
    Kafka(Box<nomad_relay_sink_kafka::KafkaSink>),
}

impl AnySink {
    /// Builds the sink described by `config` (it connects in [`Sink::open`]).
    pub fn from_config(config: &SinkKindConfig) -> Result<AnySink, String> {
        Ok(match config {
            SinkKindConfig::File(file) => AnySink::File(file::FileSink::new(file.path.clone())),
            SinkKindConfig::Stdout(_) => AnySink::Stdout(stdout::StdoutSink::new()),
            SinkKindConfig::Nats(nats) => {
                AnySink::Nats(Box::new(nomad_relay_sink_nats::NatsSink::new((**nats).clone())?))
            }
            SinkKindConfig::Amqp(amqp) => {
                AnySink::Amqp(Box::new(nomad_relay_sink_amqp::AmqpSink::new((**amqp).clone())?))
            }
            SinkKindConfig::Kafka(kafka) => {
                AnySink::Kafka(Box::new(nomad_relay_sink_kafka::KafkaSink::new((**kafka).clone())?))
            }
        })
    }
}

impl Sink for AnySink {
    fn guarantee(&self) -> Guarantee {
        match self {
            AnySink::File(sink) => sink.guarantee(),
            AnySink::Stdout(sink) => sink.guarantee(),
            AnySink::Nats(sink) => sink.guarantee(),
            AnySink::Amqp(sink) => sink.guarantee(),
            AnySink::Kafka(sink) => sink.guarantee(),
        }
    }

    async fn open(&mut self, saved_state: Option<serde_json::Value>) -> Result<(), SinkError> {
        match self {
            AnySink::File(sink) => sink.open(saved_state).await,
            AnySink::Stdout(sink) => sink.open(saved_state).await,
            AnySink::Nats(sink) => sink.open(saved_state).await,
            AnySink::Amqp(sink) => sink.open(saved_state).await,
            AnySink::Kafka(sink) => sink.open(saved_state).await,
        }
    }

    async fn send(&mut self, batch: &[Envelope]) -> Vec<Outcome> {
        match self {
            AnySink::File(sink) => sink.send(batch).await,
            AnySink::Stdout(sink) => sink.send(batch).await,
            AnySink::Nats(sink) => sink.send(batch).await,
            AnySink::Amqp(sink) => sink.send(batch).await,
            AnySink::Kafka(sink) => sink.send(batch).await,
        }
    }

    fn pipeline_depth(&self) -> usize {
        match self {
            AnySink::File(sink) => sink.pipeline_depth(),
            AnySink::Stdout(sink) => sink.pipeline_depth(),
            AnySink::Nats(sink) => sink.pipeline_depth(),
            AnySink::Amqp(sink) => sink.pipeline_depth(),
            AnySink::Kafka(sink) => sink.pipeline_depth(),
        }
    }

    async fn submit(&mut self, batch: &[Envelope]) -> Submission {
        match self {
            AnySink::File(sink) => sink.submit(batch).await,
            AnySink::Stdout(sink) => sink.submit(batch).await,
            AnySink::Nats(sink) => sink.submit(batch).await,
            AnySink::Amqp(sink) => sink.submit(batch).await,
            AnySink::Kafka(sink) => sink.submit(batch).await,
        }
    }

    async fn confirm(&mut self, batch: &[Envelope]) -> Vec<Outcome> {
        match self {
            AnySink::File(sink) => sink.confirm(batch).await,
            AnySink::Stdout(sink) => sink.confirm(batch).await,
            AnySink::Nats(sink) => sink.confirm(batch).await,
            AnySink::Amqp(sink) => sink.confirm(batch).await,
            AnySink::Kafka(sink) => sink.confirm(batch).await,
        }
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        match self {
            AnySink::File(sink) => sink.flush().await,
            AnySink::Stdout(sink) => sink.flush().await,
            AnySink::Nats(sink) => sink.flush().await,
            AnySink::Amqp(sink) => sink.flush().await,
            AnySink::Kafka(sink) => sink.flush().await,
        }
    }

    fn health(&self) -> Health {
        match self {
            AnySink::File(sink) => sink.health(),
            AnySink::Stdout(sink) => sink.health(),
            AnySink::Nats(sink) => sink.health(),
            AnySink::Amqp(sink) => sink.health(),
            AnySink::Kafka(sink) => sink.health(),
        }
    }

    fn checkpoint_state(&self) -> Option<serde_json::Value> {
        match self {
            AnySink::File(sink) => sink.checkpoint_state(),
            AnySink::Stdout(sink) => sink.checkpoint_state(),
            AnySink::Nats(sink) => sink.checkpoint_state(),
            AnySink::Amqp(sink) => sink.checkpoint_state(),
            AnySink::Kafka(sink) => sink.checkpoint_state(),
        }
    }
}

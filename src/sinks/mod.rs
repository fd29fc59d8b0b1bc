//! The registry of sinks: every kind the relay can deliver to, in this one file.
//!
//! A kind of sink is one variant of [`SinkKindConfig`] (its `type = "..."` table, with the
//! settings the sink's own crate or module defines), one name in [`KINDS`], one arm in
//! [`SinkKindConfig::validate`] and [`AnySink::from_config`], and one variant of [`AnySink`];
//! the [`Sink`] forwarding is generated, so nothing else in the relay changes. The README's
//! "Adding a sink" checklist lists what goes with it outside the code.

pub mod file;
pub mod stdout;

use nomad_relay_sink_api::{Envelope, Guarantee, Outcome, Sink, SinkError, Submission};
use serde::Deserialize;

/// Every `type` a sink table may have, for messages (`serde` also lists them on a typo).
pub const KINDS: &[&str] = &["file", "stdout", "nats", "amqp", "kafka"];

/// A sink's own settings, selected by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkKindConfig {
    /// NDJSON file, exactly-once.
    File(file::FileSinkConfig),
    /// Standard output, one event per line.
    Stdout(stdout::StdoutSinkConfig),
    /// NATS core or JetStream.
    Nats(Box<nomad_relay_sink_nats::NatsSinkConfig>),
    /// RabbitMQ (AMQP 0-9-1).
    Amqp(Box<nomad_relay_sink_amqp::AmqpSinkConfig>),
    /// Kafka, exactly-once.
    Kafka(Box<nomad_relay_sink_kafka::KafkaSinkConfig>),
}

impl SinkKindConfig {
    /// What the sink is set to do, for `validate`: one line an operator reads, with URL
    /// passwords shown as `***` (the caller scrubs every other secret).
    pub fn summary(&self) -> String {
        let hide = nomad_relay_sink_api::units::redact_url;
        match self {
            SinkKindConfig::File(file) => {
                format!("file {} (created with mode {:04o})", file.path.display(), file.mode.0)
            }
            SinkKindConfig::Stdout(_) => "standard output".to_owned(),
            SinkKindConfig::Nats(nats) => {
                let urls: Vec<String> = nats.url.to_vec().iter().map(|u| hide(u)).collect();
                let delivery = match (&nats.jetstream, &nats.stream) {
                    (true, Some(stream)) => format!("JetStream, stream {stream}"),
                    (true, None) => "JetStream".to_owned(),
                    (false, _) => "NATS core (at most once)".to_owned(),
                };
                format!("{delivery} at {}, subject {}", urls.join(", "), nats.subject)
            }
            SinkKindConfig::Amqp(amqp) => format!(
                "RabbitMQ at {}, exchange `{}` ({}), routing key {}",
                amqp.redacted_uri(),
                amqp.exchange,
                amqp.exchange_type,
                amqp.routing_key
            ),
            SinkKindConfig::Kafka(kafka) => format!(
                "Kafka at {}, topic {}, key {}{}",
                kafka.brokers.to_vec().join(", "),
                kafka.topic,
                kafka.key,
                if kafka.create_topics.is_some() { ", creates missing topics" } else { "" }
            ),
        }
    }

    /// The `type` this table has.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkKindConfig::File(_) => "file",
            SinkKindConfig::Stdout(_) => "stdout",
            SinkKindConfig::Nats(_) => "nats",
            SinkKindConfig::Amqp(_) => "amqp",
            SinkKindConfig::Kafka(_) => "kafka",
        }
    }

    /// Checks what can be checked without the network; errors name the key under `key`
    /// (such as `sinks.events`).
    pub fn validate(&self, key: &str) -> Result<(), String> {
        match self {
            SinkKindConfig::File(_) | SinkKindConfig::Stdout(_) => Ok(()),
            SinkKindConfig::Nats(nats) => nats.validate(key),
            SinkKindConfig::Amqp(amqp) => amqp.validate(key),
            SinkKindConfig::Kafka(kafka) => kafka.validate(key),
        }
    }
}

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
            SinkKindConfig::File(file) => AnySink::File(file::FileSink::new(file.path.clone(), file.mode)),
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

/// `forward!(self, sink => expression)`: evaluates the expression with `sink` bound to
/// whichever sink `self` holds.
macro_rules! forward {
    ($any:expr, $sink:ident => $call:expr) => {
        match $any {
            AnySink::File($sink) => $call,
            AnySink::Stdout($sink) => $call,
            AnySink::Nats($sink) => $call,
            AnySink::Amqp($sink) => $call,
            AnySink::Kafka($sink) => $call,
        }
    };
}

impl Sink for AnySink {
    fn guarantee(&self) -> Guarantee {
        forward!(self, sink => sink.guarantee())
    }

    async fn open(&mut self, saved_state: Option<serde_json::Value>) -> Result<(), SinkError> {
        forward!(self, sink => sink.open(saved_state).await)
    }

    async fn send(&mut self, batch: &[Envelope]) -> Vec<Outcome> {
        forward!(self, sink => sink.send(batch).await)
    }

    fn pipeline_depth(&self) -> usize {
        forward!(self, sink => sink.pipeline_depth())
    }

    async fn submit(&mut self, batch: &[Envelope]) -> Submission {
        forward!(self, sink => sink.submit(batch).await)
    }

    async fn confirm(&mut self, batch: &[Envelope]) -> Vec<Outcome> {
        forward!(self, sink => sink.confirm(batch).await)
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        forward!(self, sink => sink.flush().await)
    }

    fn checkpoint_state(&self) -> Option<serde_json::Value> {
        forward!(self, sink => sink.checkpoint_state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::value::{Dict, Value};

    #[test]
    fn kinds_lists_every_type_and_nothing_else() {
        for kind in KINDS {
            let mut table = Dict::new();
            table.insert("type".into(), Value::from(*kind));
            let error = Value::from(table).deserialize::<SinkKindConfig>().err().map(|e| e.to_string());
            // A known type gets past `type` (to a missing setting, if any); an unknown one is
            // refused on `type` itself.
            assert!(
                !error.as_deref().is_some_and(|e| e.contains("unknown variant")),
                "`{kind}` is not a sink type: {error:?}"
            );
        }
        let mut table = Dict::new();
        table.insert("type".into(), Value::from("carrier-pigeon"));
        let error = Value::from(table).deserialize::<SinkKindConfig>().expect_err("unknown").to_string();
        for kind in KINDS {
            assert!(error.contains(&format!("`{kind}`")), "serde's list has no `{kind}`: {error}");
        }
        let listed = error.split("one of ").nth(1).unwrap_or_default();
        assert_eq!(listed.matches("`, `").count() + 1, KINDS.len(), "serde lists other types: {error}");
    }
}

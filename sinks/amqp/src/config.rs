//! `[sinks.NAME] type = "amqp"`: every key of the RabbitMQ sink, with its default.

use nomad_relay_sink_api::units::{HumanDuration, Secret, redact_url};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The RabbitMQ sink's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpSinkConfig {
    /// `amqp://user:password@host:5672/vhost` or `amqps://…`. Never logged with its password.
    pub uri: Secret,
    /// Exchange to publish to.
    pub exchange: String,
    /// Exchange type used when `declare = true`.
    pub exchange_type: String,
    /// Routing key template; any event field in `{{ }}`.
    pub routing_key: String,
    /// Declare the exchange (durable) and `queues` with their bindings at start. Without it,
    /// the exchange must exist already (checked at start).
    pub declare: bool,
    /// Queues to declare and bind when `declare = true`.
    pub queues: Vec<QueueConfig>,
    /// TLS for `amqps://`.
    pub tls: AmqpTlsConfig,
    /// Most publishes awaiting their confirm at once.
    pub max_in_flight: usize,
    /// How long to wait for one confirm before the connection is presumed broken.
    pub confirm_timeout: HumanDuration,
    /// What to do with a message returned as unroutable (no queue bound for its key).
    pub on_unroutable: OnFailure,
    /// What to do with a message the broker nacked (a full queue with `reject-publish`).
    pub on_nack: OnFailure,
    /// With `on_nack = "retry"`: how many times one event is published again after a nack
    /// before it is dead-lettered (with `dead_letter_exchange`) or rejected. RabbitMQ nacks a
    /// message when any one queue it routes to refuses it, and the other queues keep their
    /// copy, so each retry can add one more copy to each of them: this bounds the copies per
    /// event (per relay run). Unset: retried until the queue takes it (no loss; with one queue
    /// per routing key no copy can happen either).
    pub nack_retries: Option<u32>,
    /// Exchange for `dead_letter` (the message is published there, unchanged, with a
    /// `nomad-relay-reason` header).
    pub dead_letter_exchange: Option<String>,
    /// Routing key on the dead-letter exchange.
    pub dead_letter_routing_key: String,
}

impl Default for AmqpSinkConfig {
    fn default() -> Self {
        AmqpSinkConfig {
            uri: Secret("amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()),
            exchange: "nomad".to_owned(),
            exchange_type: "topic".to_owned(),
            routing_key: "{{Topic}}.{{Type}}".to_owned(),
            declare: false,
            queues: Vec::new(),
            tls: AmqpTlsConfig::default(),
            max_in_flight: 1024,
            confirm_timeout: HumanDuration(Duration::from_secs(30)),
            on_unroutable: OnFailure::Retry,
            on_nack: OnFailure::Retry,
            nack_retries: None,
            dead_letter_exchange: None,
            dead_letter_routing_key: "nomad.dead_letter".to_owned(),
        }
    }
}

/// A queue declared and bound at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Queue name.
    pub name: String,
    /// Binding keys on the exchange (default `#`: everything).
    #[serde(default = "all_keys")]
    pub bindings: Vec<String>,
    /// Durable queue (quorum queues always are).
    #[serde(default = "yes")]
    pub durable: bool,
    /// Declare it as a quorum queue (replicated; recommended).
    #[serde(default)]
    pub quorum: bool,
}

fn all_keys() -> Vec<String> {
    vec!["#".to_owned()]
}

fn yes() -> bool {
    true
}

/// TLS for the AMQP connection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpTlsConfig {
    /// PEM CA bundle that signed the broker's certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM (PKCS#8) private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// What happens to a message the broker did not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Send it again after a back-off, for ever: nothing is lost, the sink waits for the
    /// operator to fix the topology.
    Retry,
    /// Publish it to `dead_letter_exchange` and move on (counted as rejected).
    DeadLetter,
}

impl AmqpSinkConfig {
    /// Checks what can be checked without a broker; `key` is the table's path for messages.
    pub fn validate(&self, key: &str) -> Result<(), String> {
        nomad_relay_sink_api::Template::parse(&self.routing_key)
            .map_err(|e| format!("`{key}.routing_key`: {e}"))?;
        let uri = &self.uri.0;
        if !(uri.starts_with("amqp://") || uri.starts_with("amqps://")) {
            return Err(format!("`{key}.uri`: must start with amqp:// or amqps://"));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(format!("`{key}.tls.cert_file` and `{key}.tls.key_file` go together"));
        }
        if self.max_in_flight == 0 {
            return Err(format!("`{key}.max_in_flight`: must be at least 1"));
        }
        let dead_letter =
            self.on_unroutable == OnFailure::DeadLetter || self.on_nack == OnFailure::DeadLetter;
        if dead_letter && self.dead_letter_exchange.is_none() {
            return Err(format!("`{key}`: `dead_letter` needs `{key}.dead_letter_exchange`"));
        }
        if !self.declare && !self.queues.is_empty() {
            return Err(format!("`{key}.queues` are declared only with `{key}.declare = true`"));
        }
        Ok(())
    }

    /// The URI with its password replaced, for messages.
    pub fn redacted_uri(&self) -> String {
        redact_url(&self.uri.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:s3cr3t@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }

    #[test]
    fn validation_names_the_key() {
        let config = AmqpSinkConfig { routing_key: "{{Typo}}".into(), ..Default::default() };
        assert!(config.validate("sinks.r").expect_err("template").contains("sinks.r.routing_key"));
        let config = AmqpSinkConfig { on_nack: OnFailure::DeadLetter, ..Default::default() };
        assert!(config.validate("sinks.r").expect_err("dlx").contains("dead_letter_exchange"));
    }
}

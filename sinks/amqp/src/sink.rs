//! The RabbitMQ sink itself: connection and confirm-mode channel, topology, and pipelined
//! publishing with one outcome per confirm.

use crate::config::{AmqpSinkConfig, OnFailure};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};
use nomad_relay_sink_api::EventId;
use nomad_relay_sink_api::{Envelope, Guarantee, Outcome, Sink, SinkError, SinkErrorKind, Template};
use std::collections::{HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::time::Instant;
use tracing::{info, warn};

/// The RabbitMQ sink.
pub struct AmqpSink {
    config: AmqpSinkConfig,
    routing_key: Template,
    connection: Option<Connection>,
    channel: Option<Channel>,
    /// The broker's largest message, once it has refused a larger one (RabbitMQ's
    /// `max_message_size` is not announced; an over-size publish closes the channel with
    /// 406 PRECONDITION_FAILED, "message size N is larger than configured max size M").
    max_message: Option<usize>,
    /// Per event nacked and not yet confirmed since, how many times it was nacked.
    nacks: HashMap<EventId, u32>,
}

fn error(kind: SinkErrorKind, message: impl Into<String>, source: lapin::Error) -> SinkError {
    SinkError::with_source(kind, message, source)
}

impl AmqpSink {
    /// A sink for `config` (connects in [`Sink::open`]). Fails on a bad routing-key template.
    pub fn new(config: AmqpSinkConfig) -> Result<AmqpSink, String> {
        let routing_key = Template::parse(&config.routing_key).map_err(|e| e.to_string())?;
        Ok(AmqpSink {
            config,
            routing_key,
            connection: None,
            channel: None,
            max_message: None,
            nacks: HashMap::new(),
        })
    }

    fn tls(&self) -> Result<OwnedTLSConfig, SinkError> {
        let read = |path: &std::path::PathBuf| {
            std::fs::read(path).map_err(|e| {
                SinkError::with_source(SinkErrorKind::Config, format!("cannot read {}", path.display()), e)
            })
        };
        let cert_chain = match &self.config.tls.ca_file {
            Some(path) => Some(String::from_utf8_lossy(&read(path)?).into_owned()),
            None => None,
        };
        let identity = match (&self.config.tls.cert_file, &self.config.tls.key_file) {
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 { pem: read(cert)?, key: read(key)? }),
            _ => None,
        };
        Ok(OwnedTLSConfig { identity, cert_chain })
    }

    /// Connects and opens a confirm-mode channel.
    async fn connect(&mut self) -> Result<(), SinkError> {
        self.channel = None;
        if let Some(connection) = self.connection.take() {
            let _ = connection.close(0, "reconnecting".into()).await;
        }
        let where_ = self.config.redacted_uri();
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| error(SinkErrorKind::Other, "no async runtime for lapin", e))?;
        let properties = ConnectionProperties::default().with_connection_name("nomad-relay".into());
        let connection =
            Connection::connect_with_config(&self.config.uri.0, properties, self.tls()?, runtime)
                .await
                .map_err(|e| {
                    let text = e.to_string();
                    let hint =
                        if text.contains("ACCESS_REFUSED") || text.contains("403") || text.contains("auth") {
                            "RabbitMQ refused the credentials in `uri` (user, password or vhost)"
                        } else {
                            "is RabbitMQ running there?"
                        };
                    error(
                        SinkErrorKind::Unavailable,
                        format!("cannot connect to RabbitMQ at {where_}: {hint}"),
                        e,
                    )
                })?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| error(SinkErrorKind::Unavailable, "cannot open an AMQP channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| error(SinkErrorKind::Unavailable, "cannot enable publisher confirms", e))?;
        self.connection = Some(connection);
        self.channel = Some(channel);
        Ok(())
    }

    /// Declares the topology, or checks that the exchange exists.
    async fn prepare_topology(&self) -> Result<(), SinkError> {
        let Some(connection) = &self.connection else { return Ok(()) };
        let exchange = self.config.exchange.clone();
        // A failed passive declare closes its channel, so checks use a channel of their own.
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| error(SinkErrorKind::Unavailable, "cannot open an AMQP channel", e))?;
        if !self.config.declare {
            let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
            channel
                .exchange_declare(exchange.as_str().into(), ExchangeKind::Topic, passive, FieldTable::default())
                .await
                .map_err(|e| {
                    error(
                        SinkErrorKind::Config,
                        format!("exchange `{exchange}` does not exist on RabbitMQ; declare it, or set `declare = true` on this sink"),
                        e,
                    )
                })?;
            let _ = channel.close(200, "checked".into()).await;
            return Ok(());
        }
        let kind = match self.config.exchange_type.as_str() {
            "topic" => ExchangeKind::Topic,
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "headers" => ExchangeKind::Headers,
            other => ExchangeKind::Custom(other.to_owned()),
        };
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel
            .exchange_declare(exchange.as_str().into(), kind, durable, FieldTable::default())
            .await
            .map_err(|e| error(SinkErrorKind::Config, format!("cannot declare exchange `{exchange}`"), e))?;
        for queue in &self.config.queues {
            let mut arguments = FieldTable::default();
            if queue.quorum {
                arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
            }
            let options =
                QueueDeclareOptions { durable: queue.durable || queue.quorum, ..Default::default() };
            channel.queue_declare(queue.name.as_str().into(), options, arguments).await.map_err(|e| {
                error(SinkErrorKind::Config, format!("cannot declare queue `{}`", queue.name), e)
            })?;
            for binding in &queue.bindings {
                channel
                    .queue_bind(
                        queue.name.as_str().into(),
                        exchange.as_str().into(),
                        binding.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| {
                        error(
                            SinkErrorKind::Config,
                            format!("cannot bind queue `{}` with `{binding}`", queue.name),
                            e,
                        )
                    })?;
            }
        }
        let _ = channel.close(200, "declared".into()).await;
        info!("RabbitMQ topology declared: exchange `{exchange}`, {} queue(s)", self.config.queues.len());
        Ok(())
    }

    fn properties(event: &Envelope, reason: Option<&str>) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert("nomad-index".into(), AMQPValue::LongLongInt(event.id.index as i64));
        headers.insert("nomad-topic".into(), AMQPValue::LongString(event.topic.as_str().into()));
        headers.insert("nomad-type".into(), AMQPValue::LongString(event.event_type.as_str().into()));
        headers.insert("nomad-namespace".into(), AMQPValue::LongString(event.namespace.as_str().into()));
        headers.insert("nomad-key".into(), AMQPValue::LongString(event.key.as_str().into()));
        if let Some(reason) = reason {
            headers.insert("nomad-relay-reason".into(), AMQPValue::LongString(LongString::from(reason)));
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(event.id.to_string()))
            .with_timestamp(now)
            .with_headers(headers)
    }

    async fn publish(
        channel: &Channel,
        exchange: &str,
        routing_key: &str,
        event: &Envelope,
        reason: Option<&str>,
    ) -> Result<PublisherConfirm, lapin::Error> {
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &event.raw,
                Self::properties(event, reason),
            )
            .await
    }

    /// Waits for one confirm and turns it into an outcome. `Err` means the connection is no
    /// longer trustworthy (the outcome is a retry).
    async fn confirmed(
        &mut self,
        event: &Envelope,
        routing_key: &str,
        confirm: PublisherConfirm,
        due: Instant,
    ) -> (Outcome, bool) {
        let exchange = &self.config.exchange;
        match tokio::time::timeout_at(due, confirm).await {
            Err(_) => (
                Outcome::Retry(SinkError::new(
                    SinkErrorKind::Unavailable,
                    format!("no publisher confirm within {:?}", self.config.confirm_timeout.0),
                )),
                false,
            ),
            Ok(Err(e)) => (
                Outcome::Retry(error(
                    SinkErrorKind::Unavailable,
                    "the AMQP connection failed before the confirm",
                    e,
                )),
                false,
            ),
            Ok(Ok(Confirmation::Ack(None))) => {
                self.nacks.remove(&event.id);
                (Outcome::Delivered, true)
            }
            Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                let reason = format!(
                    "returned as unroutable ({} {}): no queue is bound to exchange `{exchange}` for routing key `{routing_key}`",
                    returned.reply_code, returned.reply_text
                );
                (self.failed(event, self.config.on_unroutable, reason).await, true)
            }
            Ok(Ok(Confirmation::Nack(_))) => {
                let nacks = self.nacks.entry(event.id).or_insert(0);
                *nacks += 1;
                let nacks = *nacks;
                let reason = format!(
                    "refused by RabbitMQ (nack number {nacks} of this event) on exchange `{exchange}` with routing key `{routing_key}`: a queue is full (x-overflow reject-publish) or failed; every other queue it routes to kept a copy"
                );
                if self.config.on_nack == OnFailure::Retry
                    && self.config.nack_retries.is_none_or(|most| nacks <= most)
                {
                    return (self.failed(event, OnFailure::Retry, reason).await, true);
                }
                let outcome = self.exhausted(event, reason).await;
                // A dead-letter publish that failed is retried with the count kept.
                if !matches!(outcome, Outcome::Retry(_)) {
                    self.nacks.remove(&event.id);
                }
                (outcome, true)
            }
            Ok(Ok(Confirmation::NotRequested)) => (
                Outcome::Retry(SinkError::new(
                    SinkErrorKind::Other,
                    "publisher confirms are not enabled on the channel",
                )),
                false,
            ),
        }
    }

    /// An event nacked that is not to be published again (`on_nack = "dead_letter"`, or more
    /// than `nack_retries` nacks): dead-lettered when a dead-letter exchange is set, otherwise
    /// rejected (counted and logged with what to do).
    async fn exhausted(&self, event: &Envelope, reason: String) -> Outcome {
        let reason = format!("event {}: {reason}; it is not published again", event.id);
        if self.config.dead_letter_exchange.is_some() {
            return self.failed(event, OnFailure::DeadLetter, reason).await;
        }
        Outcome::Rejected(SinkError::new(
            SinkErrorKind::Refused,
            format!(
                "{reason}; the queue that refused it does not have it: make room in it (x-max-length), set dead_letter_exchange, or raise nack_retries"
            ),
        ))
    }

    /// A message the broker did not take: retried, or dead-lettered and counted as rejected
    /// (retried if the dead-letter publish itself is not confirmed).
    async fn failed(&self, event: &Envelope, on_failure: OnFailure, reason: String) -> Outcome {
        if on_failure == OnFailure::Retry {
            return Outcome::Retry(SinkError::new(SinkErrorKind::Refused, reason));
        }
        let (Some(exchange), Some(channel)) = (&self.config.dead_letter_exchange, &self.channel) else {
            return Outcome::Retry(SinkError::new(SinkErrorKind::Refused, reason));
        };
        let routing_key = &self.config.dead_letter_routing_key;
        let stored = match Self::publish(channel, exchange, routing_key, event, Some(&reason)).await {
            Ok(confirm) => matches!(
                tokio::time::timeout(self.config.confirm_timeout.0, confirm).await,
                Ok(Ok(Confirmation::Ack(None)))
            ),
            Err(_) => false,
        };
        if stored {
            Outcome::Rejected(SinkError::new(
                SinkErrorKind::Refused,
                format!("{reason}; sent to dead-letter exchange `{exchange}`"),
            ))
        } else {
            Outcome::Retry(SinkError::new(
                SinkErrorKind::Unavailable,
                format!("{reason}; and the dead-letter exchange `{exchange}` did not take it either"),
            ))
        }
    }
}

impl AmqpSink {
    /// When the broker closed the channel over a message larger than its limit, learns the
    /// limit and rejects the batch's events over it (the others, published on a channel that
    /// was closed under them, are sent again).
    fn reject_too_large(&mut self, batch: &[Envelope], outcomes: &mut [Outcome]) {
        let refused = outcomes.iter().find_map(|outcome| match outcome {
            Outcome::Retry(error) => max_message_size(&error.report()),
            _ => None,
        });
        let Some(max) = refused else { return };
        warn!(
            "RabbitMQ refuses messages over {max} bytes (its max_message_size); larger events are rejected"
        );
        self.max_message = Some(max);
        for (event, outcome) in batch.iter().zip(outcomes.iter_mut()) {
            if event.raw.len() > max {
                *outcome = self.too_large(event, max);
            }
        }
    }

    fn too_large(&self, event: &Envelope, max: usize) -> Outcome {
        Outcome::Rejected(SinkError::new(
            SinkErrorKind::Refused,
            format!(
                "event {} ({} bytes) is larger than RabbitMQ's max_message_size ({max} bytes); raise max_message_size in rabbitmq.conf to relay such events",
                event.id,
                event.raw.len()
            ),
        ))
    }
}

/// RabbitMQ's permanent refusals of a publish, from its `rabbit_channel` error texts: the
/// channel closes with 406 PRECONDITION_FAILED "message size N is larger than configured max
/// size M" when a message exceeds `max_message_size`. Every other failure (a nack from a
/// full queue, a closed connection, a missing exchange) is retried or dead-lettered as
/// configured. Returns M.
fn max_message_size(text: &str) -> Option<usize> {
    let (_, after) = text.split_once("larger than configured max size ")?;
    after.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

impl Sink for AmqpSink {
    fn guarantee(&self) -> Guarantee {
        Guarantee::AtLeastOnce
    }

    async fn open(&mut self, _saved_state: Option<serde_json::Value>) -> Result<(), SinkError> {
        self.connect().await?;
        self.prepare_topology().await
    }

    async fn send(&mut self, batch: &[Envelope]) -> Vec<Outcome> {
        let usable = self.channel.as_ref().is_some_and(|c| c.status().connected());
        if !usable {
            warn!("AMQP channel to {} is down; reconnecting", self.config.redacted_uri());
            // A broker that came back may have lost what `declare` declared: declare it again.
            if let Err(error) = self.connect().await {
                return Outcome::retry_all(batch.len(), &error);
            }
            if let Err(error) = self.prepare_topology().await {
                return Outcome::retry_all(batch.len(), &error);
            }
        }
        let Some(channel) = self.channel.clone() else {
            return Outcome::retry_all(
                batch.len(),
                &SinkError::new(SinkErrorKind::Unavailable, "no AMQP channel"),
            );
        };
        let mut outcomes: Vec<Option<Outcome>> = batch.iter().map(|_| None).collect();
        let mut in_flight: VecDeque<(usize, String, PublisherConfirm, Instant)> = VecDeque::new();
        let mut healthy = true;
        for (position, event) in batch.iter().enumerate() {
            if let Some(max) = self.max_message.filter(|max| event.raw.len() > *max) {
                outcomes[position] = Some(self.too_large(event, max));
                continue;
            }
            let routing_key = self.routing_key.render(event);
            match Self::publish(&channel, &self.config.exchange, &routing_key, event, None).await {
                // Each confirm is due `confirm_timeout` after its publish, so confirms waited
                // for in turn do not add their timeouts up.
                Ok(confirm) => {
                    let due = Instant::now() + self.config.confirm_timeout.0;
                    in_flight.push_back((position, routing_key, confirm, due))
                }
                Err(e) => {
                    // The channel is gone: this and every later event of the batch are retried.
                    healthy = false;
                    let failure = error(SinkErrorKind::Unavailable, "cannot publish to RabbitMQ", e);
                    let text = failure.report();
                    for outcome in outcomes.iter_mut().skip(position) {
                        *outcome =
                            Some(Outcome::Retry(SinkError::new(SinkErrorKind::Unavailable, text.clone())));
                    }
                    break;
                }
            }
            while in_flight.len() >= self.config.max_in_flight {
                if let Some((position, key, confirm, due)) = in_flight.pop_front() {
                    let (outcome, ok) = self.confirmed(&batch[position], &key, confirm, due).await;
                    healthy &= ok;
                    outcomes[position] = Some(outcome);
                }
            }
        }
        while let Some((position, key, confirm, due)) = in_flight.pop_front() {
            let (outcome, ok) = self.confirmed(&batch[position], &key, confirm, due).await;
            healthy &= ok;
            outcomes[position] = Some(outcome);
        }
        if !healthy {
            // Confirms can no longer be trusted on this channel: start afresh next time.
            self.channel = None;
        }
        let mut outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Retry(SinkError::new(SinkErrorKind::Other, "no confirm"))))
            .collect();
        self.reject_too_large(batch, &mut outcomes);
        outcomes
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        if let Some(connection) = self.connection.take() {
            let _ = connection.close(200, "nomad-relay stopping".into()).await;
        }
        self.channel = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_max_message_size_is_read_from_rabbitmqs_refusal() {
        let text = "the AMQP connection failed before the confirm: protocol error: AMQP soft error: PRECONDITION_FAILED - message size 100296 is larger than configured max size 65536";
        assert_eq!(max_message_size(text), Some(65536));
        assert_eq!(max_message_size("refused by RabbitMQ (nack)"), None);
    }
}

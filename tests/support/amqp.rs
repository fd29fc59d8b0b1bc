//! RabbitMQ for the tests: the shared broker on 127.0.0.1:5672 (a test fails with the
//! command to start it when it is missing), per-test exchanges and queues, and a reader that
//! drains a queue.

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use std::time::Duration;

pub const SHARED_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Checks the shared broker is there.
pub fn shared_uri() -> String {
    let addr = "127.0.0.1:5672";
    if std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).is_err() {
        panic!(
            "RabbitMQ is not running on {addr}; start it with `rabbitmq-server -detached` (scripts/test.sh does this)"
        );
    }
    SHARED_URI.to_owned()
}

pub async fn channel() -> (Connection, Channel) {
    let connection = Connection::connect(SHARED_URI, ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

/// A test's own exchange and queue (bound with `binding`), removed on `cleanup`.
pub struct Topology {
    pub exchange: String,
    pub queue: String,
}

impl Topology {
    /// Declares a topic exchange and a durable queue bound with `binding` (none: unbound).
    /// `queue_arguments` such as `x-max-length` go to the queue.
    pub async fn declare(
        name: &str,
        binding: Option<&str>,
        queue_arguments: &[(&str, AMQPValue)],
    ) -> Topology {
        let (_connection, channel) = channel().await;
        let topology = Topology { exchange: format!("{name}.x"), queue: format!("{name}.q") };
        channel
            .exchange_declare(
                topology.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { durable: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut arguments = FieldTable::default();
        for (key, value) in queue_arguments {
            arguments.insert((*key).into(), value.clone());
        }
        channel
            .queue_declare(
                topology.queue.as_str().into(),
                QueueDeclareOptions { durable: true, ..Default::default() },
                arguments,
            )
            .await
            .unwrap();
        if let Some(binding) = binding {
            topology.bind(binding).await;
        }
        topology
    }

    pub async fn bind(&self, binding: &str) {
        let (_connection, channel) = channel().await;
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    pub async fn cleanup(&self) {
        let (_connection, channel) = channel().await;
        let _ = channel.queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default()).await;
        let _ =
            channel.exchange_delete(self.exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    }
}

/// Whether `queue` exists with `x-queue-type` `queue_type`: RabbitMQ accepts a declaration
/// only when it is equivalent to the queue's own, and refuses a different queue type with
/// 406 PRECONDITION_FAILED (the queue is left as it is).
pub async fn queue_has_type(queue: &str, queue_type: &str) -> bool {
    let (_connection, channel) = channel().await;
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString(queue_type.into()));
    channel
        .queue_declare(queue.into(), QueueDeclareOptions { durable: true, ..Default::default() }, arguments)
        .await
        .is_ok()
}

/// One consumed message.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    pub routing_key: String,
    pub body: String,
    pub persistent: bool,
    pub content_type: String,
    pub headers: FieldTable,
}

/// Consumes `queue` until `count` messages arrived, then a little longer to see repeats,
/// until the queue stays idle for `quiet`.
pub async fn drain(queue: &str, count: usize, quiet: Duration) -> Vec<Received> {
    let (_connection, channel) = channel().await;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "nomad-relay-test".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut received = Vec::new();
    loop {
        let wait = if received.len() >= count { quiet } else { Duration::from_secs(60) };
        let Ok(next) = tokio::time::timeout(wait, consumer.next()).await else {
            assert!(received.len() >= count, "only {} of {count} messages arrived", received.len());
            return received;
        };
        let delivery = next.unwrap().unwrap();
        let properties = &delivery.properties;
        received.push(Received {
            message_id: properties.message_id().as_ref().map(|m| m.to_string()).unwrap_or_default(),
            routing_key: delivery.routing_key.to_string(),
            body: String::from_utf8(delivery.data.clone()).unwrap(),
            persistent: properties.delivery_mode() == &Some(2),
            content_type: properties.content_type().as_ref().map(|c| c.to_string()).unwrap_or_default(),
            headers: properties.headers().clone().unwrap_or_default(),
        });
    }
}

/// RabbitMQ's `max_message_size` set to `bytes` for as long as this lives (restored on drop).
/// It is node-wide, so only a limit far above the other tests' messages (a few KB) is set, and
/// it applies to channels opened while it holds.
pub struct MaxMessageSize {
    previous: String,
}

impl MaxMessageSize {
    pub fn set(bytes: u64) -> MaxMessageSize {
        let previous = rabbitmqctl_eval("{ok, V} = application:get_env(rabbit, max_message_size), V.");
        rabbitmqctl_eval(&format!("application:set_env(rabbit, max_message_size, {bytes})."));
        MaxMessageSize { previous }
    }
}

impl Drop for MaxMessageSize {
    fn drop(&mut self) {
        rabbitmqctl_eval(&format!("application:set_env(rabbit, max_message_size, {}).", self.previous));
    }
}

fn rabbitmqctl_eval(expression: &str) -> String {
    let output = std::process::Command::new("rabbitmqctl")
        .args(["eval", expression])
        .output()
        .expect("rabbitmqctl is installed with RabbitMQ");
    assert!(
        output.status.success(),
        "rabbitmqctl eval {expression}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

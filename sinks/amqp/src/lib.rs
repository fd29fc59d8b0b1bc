//! RabbitMQ (AMQP 0-9-1) sink for nomad-relay: publisher confirms, `mandatory`, persistent
//! messages and a deterministic `message_id`.
//!
//! # Delivery
//!
//! Every event is published persistent (delivery mode 2) and `mandatory` on a channel in
//! confirm mode, with `message_id` set to its event id (the same on every re-send) and headers
//! `nomad-index`, `nomad-topic`, `nomad-type`, `nomad-namespace` and `nomad-key`; the body is
//! the event exactly as Nomad sent it. Publishes are pipelined up to `max_in_flight`; an event
//! is reported delivered only when the broker confirmed it (lapin resolves each publish's
//! confirmation even when the broker confirms several at once, or out of order). A message
//! the broker returned as unroutable (it is confirmed *after* the return) or nacked is never
//! counted as delivered: it is retried, or published to a dead-letter exchange, as configured.
//! RabbitMQ nacks a message when any one of the queues it routes to refuses it, while the
//! others keep their copy, so a retry after a nack can add a copy to each of those: with
//! `nack_retries` set, retries after nacks are bounded per event, after which the event is
//! dead-lettered (with a dead-letter exchange) or rejected, counted and logged; unset, the
//! sink retries until the queue takes the event.
//!
//! RabbitMQ cannot recognise a message it already has, so after a crash the events published
//! since the relay last saved its cursor, but whose confirms it had not yet recorded, are
//! published again: at-least-once, with repeats limited to that window (at most one batch,
//! `batch_size` events) and carrying a `message_id` already seen, so consumers can drop them.
//! A lost connection or channel is rebuilt on the next batch; everything unconfirmed is
//! published again.

mod config;
mod sink;

pub use config::{AmqpSinkConfig, OnFailure, QueueConfig};
pub use sink::AmqpSink;

//! nomad-relay: follows HashiCorp Nomad's event stream and delivers every event to Kafka,
//! NATS, RabbitMQ, files or stdout, without losing or repeating one across crashes.
//!
//! The data path is source → journal → one worker per sink: [`source`] reads Nomad and
//! writes new events to the [`journal`]; each [`worker`] reads the journal from its own
//! cursor, routes, delivers through its sink, and moves its cursor only past confirmed events.

pub mod cli;
pub mod commands;
pub mod config;
pub mod cursor;
pub mod fuzzing;
pub mod ha;
pub mod http;
pub mod journal;
pub mod metrics;
pub mod private;
pub mod redact;
pub mod relay;
pub mod routing;
pub mod sinks;
pub mod source;
pub mod state_file;
pub mod stats;
pub mod worker;

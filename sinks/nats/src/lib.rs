//! NATS sink for nomad-relay: JetStream (exactly-once) or core NATS (at-most-once).
//!
//! # Delivery
//!
//! With `jetstream = true` (the default) every event is published with `Nats-Msg-Id` set to
//! its event id, which is the same every time the relay sends that event. Publishes are
//! pipelined up to `max_in_flight`, and each event is reported delivered only once its
//! PubAck arrived; a PubAck marked duplicate (JetStream already stored that id) counts as
//! final too, counted apart as a duplicate. The relay's cursor therefore never passes an
//! event JetStream has not stored, and after a crash the events sent again are dropped by
//! JetStream as duplicates while it remembers their ids: the stream's `duplicate_window` (2
//! minutes by default on the server; configurable here when the relay creates the stream).
//! Past that, the sink reads what the stream holds before it sends again (the `window`
//! module), so a restart after a long downtime stores nothing twice either. A publish that
//! fails mid-pipeline is sent again after the ones behind it, so it can land out of order;
//! consumers that need strict order sort by the `Nomad-Index` header.
//!
//! A message larger than the server's `max_payload` is rejected before it is sent, with the
//! reason; per `on_reject` it is either counted and dropped, or a small notice naming the
//! event is published to `dead_letter_subject`.
//!
//! With `jetstream = false` events are published to core NATS and flushed: the server takes
//! no responsibility for them, so delivery is at-most-once, and the sink says so.
//!
//! JetStream acknowledges before its file store syncs to disk (`sync_interval`, 2 minutes by
//! default); a broker that must not lose acknowledged events across host crashes needs
//! `jetstream { sync_interval: always }` and replicated streams.

mod config;
mod sink;
mod window;

pub use config::{NatsSinkConfig, OnReject, StorageKind};
pub use sink::NatsSink;

//! [`Envelope`]: one Nomad event as the relay hands it to a sink.
//!
//! The relay parses only what routing and identity need (Topic, Type, Key, Namespace, Index);
//! the event itself travels as the exact bytes Nomad sent, so a sink forwards the payload
//! without ever re-serialising it.

use bytes::Bytes;
use std::fmt;

/// A deterministic identity for one event, the same on every replay and on every Nomad
/// server of a region.
///
/// It is built from the event's Index, a digest of `(source, Topic, Type, Namespace, Key)`
/// (the source being the configured name of the Nomad cluster or region, whose raft indexes
/// are its own) and an
/// occurrence counter that tells apart repeats of the same object at the same Index (several
/// lines can share one Index). The payload is deliberately not part of it: Nomad encodes maps
/// in random order, so payload bytes differ between servers for the same event.
///
/// Its text form, `<index>-<digest as 16 hex digits>-<occurrence>`, is what brokers see as a
/// message id (`Nats-Msg-Id`, AMQP `message_id`, a Kafka header).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    /// The Nomad (raft) index of the event.
    pub index: u64,
    /// Digest of `(source, Topic, Type, Namespace, Key)`.
    pub digest: u64,
    /// How many events with the same digest came before this one at the same index.
    pub occurrence: u32,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:016x}-{}", self.index, self.digest, self.occurrence)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One event, ready for a sink.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// Position of the event in the relay's journal. Strictly increasing; sinks may use it
    /// to order their own bookkeeping but must not assume it is contiguous.
    pub seq: u64,
    /// The event's deterministic identity.
    pub id: EventId,
    /// The configured name of the Nomad cluster or region the event came from (`default`
    /// when the configuration has a single `[nomad]` table).
    pub source: String,
    /// Nomad's `Topic` (for example `Allocation`).
    pub topic: String,
    /// Nomad's `Type` (for example `PlanResult`).
    pub event_type: String,
    /// Nomad's `Key`: the object's id.
    pub key: String,
    /// Nomad's `Namespace`, empty for objects that have none (nodes, node pools, ACLs).
    pub namespace: String,
    /// The event object exactly as Nomad sent it: `{"Topic":..,"Type":..,..,"Payload":{..}}`.
    pub raw: Bytes,
}

impl Envelope {
    /// An example event: `Job`/`JobRegistered` for job `example` in namespace `default` at
    /// index 1, journal position 1, source `default`, with its JSON as Nomad would send it.
    /// Sinks render it to show what their templates produce; tests change the fields they
    /// care about with struct update syntax (`Envelope { seq: 7, ..Envelope::example() }`).
    pub fn example() -> Envelope {
        Envelope {
            seq: 1,
            id: EventId { index: 1, digest: 0, occurrence: 0 },
            source: "default".into(),
            topic: "Job".into(),
            event_type: "JobRegistered".into(),
            key: "example".into(),
            namespace: "default".into(),
            raw: Bytes::from_static(
                br#"{"Topic":"Job","Type":"JobRegistered","Key":"example","Namespace":"default","FilterKeys":null,"Index":1,"Payload":{"Job":{"ID":"example"}}}"#,
            ),
        }
    }

    /// The event's Nomad index.
    pub fn index(&self) -> u64 {
        self.id.index
    }
}

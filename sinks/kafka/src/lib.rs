//! Kafka sink for nomad-relay: every event exactly once in Kafka, across crashes of the
//! relay and outages of the brokers, without Kafka transactions.
//!
//! # How exactly-once works here
//!
//! Each event becomes one record on the topic its `topic` template names, keyed by its
//! `key` template (the object's id by default), with the event JSON exactly as Nomad sent
//! it as the value and headers naming it: `nomad-relay-id` (the event id), `nomad-index`,
//! `nomad-topic`, `nomad-type`, `nomad-namespace`, `nomad-key`, `nomad-source`, and two the
//! sink reads back, `nomad-relay-writer` (this sink's random writer id, kept with the cursor)
//! and `nomad-relay-seq` (the event's position in the relay's journal).
//!
//! 1. **The sink chooses each record's partition** (murmur2 of the key, as Java clients
//!    do), so it knows where every event goes, and every update of one object goes to one
//!    partition, in order.
//! 2. **The producer is idempotent and gapless, with `acks=all` and no librdkafka message
//!    timeout.** Within one producer, a partition therefore holds a prefix of what the sink
//!    sent to it: the broker refuses a batch whose predecessor it has not stored, librdkafka
//!    never gives up on a record and goes on with the next, and a record refused for good
//!    stops the producer instead of letting the ones behind it through.
//! 3. **An event is delivered only on its delivery report.** After a failed report, or none
//!    within `delivery_timeout`, the sink drops the records not yet sent (purging the queue)
//!    but never those in flight: it waits for their reports, across as many attempts as it
//!    takes, and counts each one that arrives as written. Only when no record's fate is
//!    unknown does it drop the producer and report the rest for a retry.
//! 4. **Progress is saved with the relay's cursor**: per partition, an offset at or before
//!    which every record written since the cursor lies (see [`progress`]). A topic the sink
//!    has not written to before is looked up (or created with `create_topics`) and saved
//!    before its first record is sent ([`nomad_relay_sink_api::Outcome::Deferred`]).
//! 5. **Before sending anything after a start or a failure, the sink reads every tracked
//!    partition from the saved offset to its end** ([`tail`]) and collects the records
//!    carrying its writer id; each keeps the saved offset from moving past it until the
//!    relay's cursor has passed its event. A re-sent event whose journal position and id are among them is
//!    reported delivered without being sent again; the others are sent, after the records
//!    already there, so per-key order holds too.
//! 6. **Batches are pipelined, two deep.** The next batch goes to the producer while the
//!    previous one's last delivery reports come in; the relay moves its cursor past a batch
//!    only when all of it is reported. The saved offsets move only at a moment when nothing
//!    is in flight (the relay lets the pipeline run empty at least every
//!    [`nomad_relay_sink_api::DRAIN_EVERY`] batches), so they lie before every record of any
//!    batch the cursor has not passed, and a crash with batches in flight reads those back
//!    like any other. After a failed report the producer takes no new batch until the
//!    failure is dealt with as in 3.
//! 7. **A topic broken on its own holds back only its events** ([`broken`]): one that is
//!    missing (without `create_topics`), that Kafka will not describe, or whose records are
//!    refused for the topic's sake has its events parked
//!    ([`nomad_relay_sink_api::Outcome::Parked`]); the relay goes on with the other topics and
//!    keeps its cursor at the oldest parked event. While any event is parked the saved offsets
//!    do not move, so a crash reads back everything written since and re-sends nothing twice.
//!
//! # Assumptions
//!
//! - The broker enforces idempotent-producer sequence numbers (Apache Kafka does; a broker
//!   that stores a batch out of sequence can let a retried record land after a later one).
//! - After a crash (`kill -9`, a lost host), a record the dead relay had in flight is either
//!   readable (below the high watermark) when the restarted relay reads the tails, or never
//!   written. A record the leader had appended but not yet replicated to every in-sync replica
//!   can become readable later (a follower stalled for up to `replica.lag.time.max.ms`), and
//!   its event is then written twice. Restarts take seconds, so this needs a stalled follower
//!   and a crash at once.
//! - A record the broker refuses for good (larger than the topic's `max.message.bytes`, for
//!   instance) holds the sink back with the broker's reason in the log, rather than being
//!   skipped: set `librdkafka."message.max.bytes"` at or below the topic's limit, so such an
//!   event is rejected by the client before it is sent (counted, logged, and the rest go on).
//! - Records are not deleted by retention between a crash and the restart that reads them
//!   back (the tail read starts at the oldest offset still there).
//! - Partitions are added to a topic only while the relay runs or is stopped, never removed;
//!   a topic deleted and created again is read from its start.
//! - Other producers may write to the same topics; their records are read past during a tail
//!   check (a slower start), never mistaken for the relay's.
//!
//! Kafka transactions are not used: the sink works the same on brokers that have none (such
//! as tansu) and on Apache Kafka, and consumers need no `read_committed`.

pub mod broken;
mod client;
mod config;
mod partition;
pub mod progress;
mod sink;
pub mod tail;

pub use config::{CreateTopics, KafkaSinkConfig, RESERVED_SETTINGS, SettingValue};
pub use partition::partition_for;
pub use sink::KafkaSink;

//! The events a benchmark sends: the emulator's seeded generator (spec section 9's mix:
//! allocations and jobs of several KB, nodes up to tens of KB, now and then a huge plan
//! result), as emulator batches for the relay runs and as pre-built messages for the raw
//! client runs.

use nomad_emulator::{Batch, Generator, GeneratorConfig};
use nomad_relay::config::DEFAULT_TOPICS;

/// One event as a broker message: what the relay would send for it.
#[derive(Debug, Clone)]
pub struct Message {
    /// Nomad's `Topic`.
    pub topic: String,
    /// Nomad's `Type`.
    pub event_type: String,
    /// Nomad's `Key`.
    pub key: String,
    /// The raft index.
    pub index: u64,
    /// A unique id (index and position), for broker-side de-duplication ids.
    pub id: String,
    /// The event's JSON, as Nomad writes it.
    pub body: bytes::Bytes,
}

/// A generated run of events.
pub struct Workload {
    /// The emulator batches, in index order.
    pub batches: Vec<Batch>,
}

impl Workload {
    /// At least `events` events (whole batches), from a fixed seed so every run and every
    /// sink sees the same mix.
    pub fn generate(events: usize) -> Workload {
        let mut generator = Generator::new(GeneratorConfig { seed: 42, ..GeneratorConfig::default() });
        let mut batches = Vec::new();
        let mut count = 0;
        while count < events {
            for batch in generator.next_batches() {
                count += batch.events.len();
                batches.push(batch);
            }
        }
        Workload { batches }
    }

    /// The events the relay subscribes to by default, as messages.
    pub fn messages(&self) -> Vec<Message> {
        let mut messages = Vec::new();
        for batch in &self.batches {
            for (position, event) in batch.events.iter().enumerate() {
                if !subscribed(&event.topic) {
                    continue;
                }
                messages.push(Message {
                    topic: event.topic.clone(),
                    event_type: event.event_type.clone(),
                    key: event.key.clone(),
                    index: batch.index,
                    id: format!("{}-{position}", batch.index),
                    body: event.to_json(batch.index).into(),
                });
            }
        }
        messages
    }
}

/// Whether the relay's default subscription includes `topic`.
pub fn subscribed(topic: &str) -> bool {
    DEFAULT_TOPICS.contains(&topic)
}

/// Events of `batch` the relay subscribes to.
pub fn subscribed_events(batch: &Batch) -> usize {
    batch.events.iter().filter(|event| subscribed(&event.topic)).count()
}

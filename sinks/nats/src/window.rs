//! JetStream's duplicate window, and what the sink does once it may have passed.
//!
//! JetStream drops a message whose `Nats-Msg-Id` it already stored only while it still
//! remembers that id: for the stream's `duplicate_window` after storing it (nats-server keeps
//! the ids of a stream in a map it prunes by age, `server/stream.go`, `Duplicates` in the
//! stream config; 2 minutes unless the stream says otherwise). A re-send after that is stored
//! again. The relay re-sends every event past its cursor after a crash or a failed publish, and
//! such an event may have been stored before the failure, unacknowledged; so before it sends
//! again, the sink asks whether that can be longer ago than the window, and if so reads what
//! the stream already holds, as the Kafka sink reads its partitions' tails.
//!
//! What it keeps, as checkpoint state and in memory: since when events may be unconfirmed (the
//! wall-clock time of the first publish after everything was confirmed) and the stream's last
//! acknowledged sequence at that moment. Every message published since then has a higher
//! sequence, so the check reads the stream from the one after, headers only, up to the
//! stream's last sequence at the time of the check, and collects the `Nats-Msg-Id`s of the
//! relay's messages (those with a `Nomad-Source` header). An event found there is reported as
//! [`Outcome::Duplicate`](nomad_relay_sink_api::Outcome::Duplicate) without being published.
//!
//! What it cannot see: a message still on its way to the server from a connection that was
//! cut (stored after the check reads the stream). Inside the window JetStream catches that
//! one itself; beyond it, it is stored twice.

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::stream::Stream;
use futures_util::StreamExt;
use nomad_relay_sink_api::{Envelope, SinkError, SinkErrorKind};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::info;

/// The header naming the source of each message the relay publishes.
pub(crate) const SOURCE_HEADER: &str = "Nomad-Source";

/// Since when events may be unconfirmed, as saved with the relay's cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Unconfirmed {
    /// Wall-clock time of the first publish not yet confirmed, in milliseconds since the
    /// Unix epoch (the relay's clock; the window is a duration, so the server's clock does not
    /// matter).
    since_ms: u64,
    /// The stream's highest sequence acknowledged to the sink before that publish.
    floor_sequence: u64,
}

/// Event ids of one source the stream was found to hold, and the highest Nomad index among
/// them: once the sink sends an event of that source past it, none of them can come again.
struct Found {
    ids: HashSet<String>,
    last_index: u64,
    /// Whether the sink has been given an event of this source since the check.
    seen: bool,
}

/// The sink's view of its stream's duplicate window.
pub(crate) struct DuplicateWindow {
    /// The stream's own `duplicate_window`, read from its config.
    window: Duration,
    /// Slack for the time between the check and the last re-send of a batch reaching the
    /// server: the sink's `ack_timeout` plus a second.
    margin: Duration,
    /// The highest stream sequence any PubAck reported.
    acknowledged: u64,
    unconfirmed: Option<Unconfirmed>,
    found: HashMap<String, Found>,
    /// Whether the relay holds this sink's state with its cursor: until it does, nothing is
    /// published (a crash before the first save would leave no floor to read from).
    saved: bool,
}

impl DuplicateWindow {
    pub(crate) fn new(window: Duration, ack_timeout: Duration) -> DuplicateWindow {
        DuplicateWindow {
            window,
            margin: ack_timeout + Duration::from_secs(1),
            acknowledged: 0,
            unconfirmed: None,
            found: HashMap::new(),
            saved: false,
        }
    }

    /// Takes back the state saved with the cursor: the events past it may have been sent
    /// since then. A state the sink cannot read (an older relay's, or none) is taken as "no
    /// send outstanding".
    pub(crate) fn restore(&mut self, saved: Option<&serde_json::Value>) {
        let saved = saved.and_then(|value| serde_json::from_value::<Unconfirmed>(value.clone()).ok());
        if let Some(saved) = saved {
            self.acknowledged = saved.floor_sequence;
            self.unconfirmed = Some(saved);
            self.saved = true;
        }
    }

    /// Notes the stream's last sequence when the sink opened it: whatever the sink publishes
    /// from here on comes after it.
    pub(crate) fn opened_at(&mut self, last_sequence: u64) {
        if !self.saved {
            self.acknowledged = last_sequence;
        }
    }

    /// Whether the first batch must wait until the relay has saved this sink's state (once:
    /// the relay saves the state as soon as the sink defers).
    pub(crate) fn defer_until_saved(&mut self) -> bool {
        !std::mem::replace(&mut self.saved, true)
    }

    /// State to save with the cursor: valid for any event the cursor has not passed.
    pub(crate) fn checkpoint_state(&self) -> serde_json::Value {
        let state =
            self.unconfirmed.unwrap_or(Unconfirmed { since_ms: now_ms(), floor_sequence: self.acknowledged });
        serde_json::to_value(state).unwrap_or(serde_json::Value::Null)
    }

    /// Notes a publish.
    pub(crate) fn publishing(&mut self) {
        if self.unconfirmed.is_none() {
            self.unconfirmed = Some(Unconfirmed { since_ms: now_ms(), floor_sequence: self.acknowledged });
        }
    }

    /// Notes a PubAck for stream sequence `sequence`.
    pub(crate) fn acknowledged(&mut self, sequence: u64) {
        self.acknowledged = self.acknowledged.max(sequence);
    }

    /// Notes that every event published so far is final. Events found by a check and not yet
    /// passed still hold the floor where it was: a crash now must find them again.
    pub(crate) fn all_confirmed(&mut self) {
        if self.found.is_empty() {
            self.unconfirmed = None;
        }
    }

    /// Whether events not yet confirmed may have been stored longer ago than the window, so
    /// that sending them again could store them twice.
    pub(crate) fn may_have_passed(&self) -> bool {
        self.unconfirmed.is_some_and(|unconfirmed| {
            let age = Duration::from_millis(now_ms().saturating_sub(unconfirmed.since_ms));
            age + self.margin >= self.window
        })
    }

    /// Whether `event` was found in the stream by the last [`DuplicateWindow::check`]: if so,
    /// it must not be sent again.
    pub(crate) fn already_stored(&mut self, event: &Envelope) -> bool {
        let Some(found) = self.found.get_mut(&event.source) else { return false };
        found.seen = true;
        if event.id.index <= found.last_index {
            return found.ids.remove(&event.id.to_string());
        }
        self.found.remove(&event.source);
        // The events sent again come first, all sources interleaved as they were journaled:
        // one source past them all and another not seen once means that other one's ids
        // (a source renamed or removed since) will not come.
        if self.found.values().all(|found| !found.seen) {
            self.found.clear();
        }
        false
    }

    /// Reads which of the relay's messages `stream` holds from the floor sequence on, so that
    /// [`DuplicateWindow::already_stored`] can answer. Errors when the stream cannot be read
    /// (the caller retries).
    pub(crate) async fn check(&mut self, stream: &mut Stream) -> Result<(), SinkError> {
        let Some(unconfirmed) = self.unconfirmed else { return Ok(()) };
        let started_ms = now_ms();
        self.found.clear();
        let name = stream.cached_info().config.name.clone();
        let unreadable = |e: &dyn std::fmt::Display| {
            SinkError::new(
                SinkErrorKind::Unavailable,
                format!("cannot read JetStream stream `{name}` to see what it already holds: {e}"),
            )
        };
        let state = stream.info().await.map_err(|e| unreadable(&e))?.state.clone();
        // A stream purged or made again since numbers from lower: read all it holds.
        let from = if unconfirmed.floor_sequence >= state.last_sequence {
            if unconfirmed.floor_sequence > state.last_sequence {
                state.first_sequence
            } else {
                state.last_sequence + 1
            }
        } else {
            (unconfirmed.floor_sequence + 1).max(state.first_sequence)
        };
        let mut read = 0u64;
        let mut found = 0usize;
        if from <= state.last_sequence && state.messages > 0 {
            let consumer = stream
                .create_consumer(OrderedConfig {
                    headers_only: true,
                    deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from },
                    ..Default::default()
                })
                .await
                .map_err(|e| unreadable(&e))?;
            let mut messages = consumer.messages().await.map_err(|e| unreadable(&e))?;
            loop {
                let message = tokio::time::timeout(self.margin, messages.next())
                    .await
                    .map_err(|_| unreadable(&"no message within ack_timeout"))?
                    .ok_or_else(|| unreadable(&"the consumer ended"))?
                    .map_err(|e| unreadable(&e))?;
                let sequence = message.info().map_err(|e| unreadable(&e))?.stream_sequence;
                read += 1;
                if let Some(headers) = &message.headers
                    && let (Some(source), Some(id)) = (headers.get(SOURCE_HEADER), headers.get("Nats-Msg-Id"))
                {
                    let index = headers.get("Nomad-Index").and_then(|i| i.as_str().parse().ok()).unwrap_or(0);
                    let entry = self.found.entry(source.to_string()).or_insert_with(|| Found {
                        ids: HashSet::new(),
                        last_index: 0,
                        seen: false,
                    });
                    entry.ids.insert(id.to_string());
                    entry.last_index = entry.last_index.max(index);
                    found += 1;
                }
                if sequence >= state.last_sequence {
                    break;
                }
            }
        }
        info!(
            "JetStream stream `{name}`: events not confirmed since {} ms ago may be older than its duplicate window ({:?}), so it was read from sequence {from} to {} before sending again: {read} messages, {found} of them the relay's; those are not sent again",
            started_ms.saturating_sub(unconfirmed.since_ms),
            self.window,
            state.last_sequence,
        );
        // The floor stays: until the events found are passed, a crash must find them again.
        Ok(())
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(source: &str, index: u64, digest: u64) -> Envelope {
        let mut event = Envelope::example();
        event.source = source.to_owned();
        event.id.index = index;
        event.id.digest = digest;
        event
    }

    fn found(window: &mut DuplicateWindow, source: &str, events: &[&Envelope]) {
        let entry = window.found.entry(source.to_owned()).or_insert_with(|| Found {
            ids: HashSet::new(),
            last_index: 0,
            seen: false,
        });
        for event in events {
            entry.ids.insert(event.id.to_string());
            entry.last_index = entry.last_index.max(event.id.index);
        }
    }

    #[test]
    fn a_send_saved_longer_ago_than_the_window_is_checked_and_a_recent_one_is_not() {
        let mut window = DuplicateWindow::new(Duration::from_secs(120), Duration::from_secs(10));
        assert!(!window.may_have_passed(), "nothing sent");
        let old = now_ms() - 200_000;
        window.restore(Some(&serde_json::json!({"since_ms": old, "floor_sequence": 7})));
        assert!(window.may_have_passed());
        assert_eq!(
            window.checkpoint_state()["floor_sequence"],
            7,
            "the floor is kept until all is confirmed"
        );
        window.all_confirmed();
        window.acknowledged(9);
        assert!(!window.may_have_passed());
        window.publishing();
        assert!(!window.may_have_passed(), "sent just now, inside 120 s less the margin");
        assert_eq!(window.checkpoint_state()["floor_sequence"], 9);
        // Within the margin (ack_timeout + 1 s) of the window counts as passed.
        let mut window = DuplicateWindow::new(Duration::from_secs(120), Duration::from_secs(10));
        window.restore(Some(&serde_json::json!({"since_ms": now_ms() - 110_000, "floor_sequence": 0})));
        assert!(window.may_have_passed());
        window.restore(Some(&serde_json::json!({"since_ms": now_ms() - 100_000, "floor_sequence": 0})));
        assert!(!window.may_have_passed());
    }

    #[test]
    fn without_saved_state_the_first_batch_waits_for_a_save_with_the_streams_last_sequence() {
        let mut window = DuplicateWindow::new(Duration::from_secs(1), Duration::from_secs(1));
        window.restore(None);
        window.opened_at(41);
        assert!(window.defer_until_saved());
        assert!(!window.defer_until_saved(), "once");
        assert_eq!(window.checkpoint_state()["floor_sequence"], 41);
        let mut window = DuplicateWindow::new(Duration::from_secs(1), Duration::from_secs(1));
        window.restore(Some(&serde_json::json!({"since_ms": 1, "floor_sequence": 3})));
        window.opened_at(41);
        assert!(!window.defer_until_saved(), "a saved state is a floor already");
        assert_eq!(window.checkpoint_state()["floor_sequence"], 3);
    }

    #[test]
    fn found_events_are_not_sent_and_hold_the_floor_until_passed() {
        let mut window = DuplicateWindow::new(Duration::from_secs(1), Duration::from_secs(1));
        window.restore(Some(&serde_json::json!({"since_ms": 1, "floor_sequence": 3})));
        let (a, b, c) = (event("east", 10, 1), event("east", 11, 2), event("east", 12, 3));
        found(&mut window, "east", &[&a, &b]);
        assert!(window.already_stored(&a));
        window.acknowledged(50);
        window.all_confirmed();
        assert_eq!(window.checkpoint_state()["floor_sequence"], 3, "b is still to come");
        assert!(window.already_stored(&b));
        assert!(!window.already_stored(&c), "past every id found");
        window.all_confirmed();
        assert_eq!(window.checkpoint_state()["floor_sequence"], 50);
    }

    #[test]
    fn ids_of_a_source_that_never_comes_again_are_forgotten_once_another_passes_its_own() {
        let mut window = DuplicateWindow::new(Duration::from_secs(1), Duration::from_secs(1));
        let (east, gone) = (event("east", 10, 1), event("old-name", 10, 1));
        found(&mut window, "east", &[&east]);
        found(&mut window, "old-name", &[&gone]);
        assert!(window.already_stored(&east));
        assert!(!window.already_stored(&event("east", 11, 2)));
        assert!(window.found.is_empty());
        // A source seen since the check keeps its ids.
        found(&mut window, "east", &[&east]);
        found(&mut window, "west", &[&event("west", 500, 1)]);
        assert!(!window.already_stored(&event("west", 400, 9)));
        assert!(!window.already_stored(&event("east", 11, 2)));
        assert!(window.found.contains_key("west"));
    }
}

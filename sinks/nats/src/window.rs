//! JetStream's duplicate window, and what the sink does once it may have passed.
//!
//! JetStream drops a message whose `Nats-Msg-Id` it already stored only while it still
//! remembers that id: for the stream's `duplicate_window` after storing it (nats-server keeps
//! the ids of a stream in a map it prunes by age, `server/stream.go`, `Duplicates` in the
//! stream config; 2 minutes unless the stream says otherwise). A re-send after that is stored
//! again. The relay re-sends every event past its cursor after a crash or a failed publish, and
//! such an event may have been stored before the failure, unacknowledged; so the sink reads
//! what the stream already holds, as the Kafka sink reads its partitions' tails: at every
//! start with saved state, and before a re-send that may come after the window.
//!
//! What it keeps: since when events may be unconfirmed (the wall-clock time of the first
//! publish after everything published was final) and the stream's last acknowledged sequence
//! at that moment, saved with the relay's cursor. Every message published since then has a
//! higher sequence, so the check reads the stream from the one after, headers only, up to the
//! stream's last sequence, and collects the `Nats-Msg-Id` and journal position
//! (`Nomad-Relay-Seq`) of each of the relay's messages. An event found there is reported as
//! [`Outcome::Duplicate`](nomad_relay_sink_api::Outcome::Duplicate) without being published;
//! once the sink is handed an event past the highest position found, none of them can come
//! again. The floor moves only when nothing published is unconfirmed (tracked per journal
//! position, so a batch left to retry holds it) and nothing found is still to come.
//!
//! What it cannot see: a message still on its way to the server from a connection that was
//! cut (stored after the check reads the stream). Inside the window JetStream catches that
//! one itself; beyond it, it is stored twice. A stream the sink may not read (no permission to
//! create a consumer, a work-queue stream that refuses one) is not checked: the sink says so,
//! and relies on JetStream's window alone.

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::stream::Stream;
use futures_util::StreamExt;
use nomad_relay_sink_api::{Envelope, SinkError, SinkErrorKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// The header carrying the journal position (sequence) of each message the relay publishes.
pub(crate) const SEQ_HEADER: &str = "Nomad-Relay-Seq";

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
    /// Journal positions of the events published and not yet final.
    pending: BTreeSet<u64>,
    /// Ids the last check found in the stream, and the highest journal position among them.
    found: HashMap<String, u64>,
    found_until: u64,
    /// A check is owed before anything is sent: the sink starts from saved state.
    check_owed: bool,
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
            pending: BTreeSet::new(),
            found: HashMap::new(),
            found_until: 0,
            check_owed: false,
            saved: false,
        }
    }

    /// Takes back the state saved with the cursor: the events past it may have been sent
    /// since then, so a check is owed. A state the sink cannot read (an older relay's, or
    /// none) is taken as no state: the first batch then waits for one to be saved.
    pub(crate) fn restore(&mut self, saved: Option<&serde_json::Value>) {
        let saved = saved.and_then(|value| serde_json::from_value::<Unconfirmed>(value.clone()).ok());
        if let Some(saved) = saved {
            self.acknowledged = saved.floor_sequence;
            self.unconfirmed = Some(saved);
            self.check_owed = true;
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

    /// Notes the publish of the event at journal position `seq`.
    pub(crate) fn publishing(&mut self, seq: u64) {
        if self.unconfirmed.is_none() {
            self.unconfirmed = Some(Unconfirmed { since_ms: now_ms(), floor_sequence: self.acknowledged });
        }
        self.pending.insert(seq);
    }

    /// Notes a PubAck for stream sequence `sequence`.
    pub(crate) fn acknowledged(&mut self, sequence: u64) {
        self.acknowledged = self.acknowledged.max(sequence);
    }

    /// Notes the outcome of the event at `seq`: once it is final and nothing else published or
    /// found is still open, the floor may move on.
    pub(crate) fn settled(&mut self, seq: u64, final_outcome: bool) {
        if final_outcome {
            self.pending.remove(&seq);
        }
        if self.pending.is_empty() && self.found.is_empty() && !self.check_owed {
            self.unconfirmed = None;
        }
    }

    /// Whether a check must come before sending: owed at start, or events not yet confirmed
    /// may have been stored longer ago than the window.
    pub(crate) fn check_due(&self) -> bool {
        self.check_owed
            || self.unconfirmed.is_some_and(|unconfirmed| {
                let age = Duration::from_millis(now_ms().saturating_sub(unconfirmed.since_ms));
                age + self.margin >= self.window
            })
    }

    /// Whether `event` was found in the stream by the last [`DuplicateWindow::check`]: if so,
    /// it must not be sent again.
    pub(crate) fn already_stored(&mut self, event: &Envelope) -> bool {
        if self.found.is_empty() {
            return false;
        }
        if event.seq > self.found_until {
            self.found.clear();
            return false;
        }
        self.found.remove(&event.id.to_string()).is_some()
    }

    /// Reads which of the relay's messages `stream` holds from the floor sequence on, so that
    /// [`DuplicateWindow::already_stored`] can answer. Errors when the stream's state cannot be
    /// read (the caller retries); a stream that cannot be read through a consumer is logged
    /// and left unchecked.
    pub(crate) async fn check(&mut self, stream: &mut Stream) -> Result<(), SinkError> {
        let Some(unconfirmed) = self.unconfirmed else {
            self.check_owed = false;
            return Ok(());
        };
        let started_ms = now_ms();
        self.found.clear();
        self.found_until = 0;
        let name = stream.cached_info().config.name.clone();
        let state = stream
            .info()
            .await
            .map_err(|e| {
                SinkError::new(
                    SinkErrorKind::Unavailable,
                    format!("cannot read JetStream stream `{name}` to see what it already holds: {e}"),
                )
            })?
            .state
            .clone();
        // A stream purged or made again since numbers from lower: read all it holds.
        let from = if unconfirmed.floor_sequence > state.last_sequence {
            state.first_sequence
        } else {
            (unconfirmed.floor_sequence + 1).max(state.first_sequence)
        };
        let read = if from <= state.last_sequence && state.messages > 0 {
            match self.read_from(stream, from, state.last_sequence).await {
                Ok(read) => read,
                Err(e) => {
                    warn!(
                        "JetStream stream `{name}` cannot be read to see what it already holds ({e}); events sent again are stored once only while JetStream remembers their ids ({:?}); allow this sink's user to create consumers on the stream",
                        self.window
                    );
                    self.found.clear();
                    0
                }
            }
        } else {
            0
        };
        self.check_owed = false;
        info!(
            "JetStream stream `{name}`: events unconfirmed since {} ms ago, read from sequence {from} to {} before sending again (duplicate window {:?}): {read} messages, {} of them the relay's and not sent again",
            started_ms.saturating_sub(unconfirmed.since_ms),
            state.last_sequence,
            self.window,
            self.found.len(),
        );
        Ok(())
    }

    /// Reads the stream from sequence `from` to `last`, headers only, into `found`; the number
    /// of messages read.
    async fn read_from(&mut self, stream: &Stream, from: u64, last: u64) -> Result<u64, String> {
        let consumer = stream
            .create_consumer(OrderedConfig {
                headers_only: true,
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from },
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        let mut read = 0u64;
        loop {
            let message = tokio::time::timeout(self.margin, messages.next())
                .await
                .map_err(|_| format!("no message within {:?}", self.margin))?
                .ok_or("the consumer ended")?
                .map_err(|e| e.to_string())?;
            let info = message.info().map_err(|e| e.to_string())?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            read += 1;
            if let Some(headers) = &message.headers
                && let (Some(id), Some(seq)) = (headers.get("Nats-Msg-Id"), headers.get(SEQ_HEADER))
                && let Ok(seq) = seq.as_str().parse::<u64>()
            {
                self.found.insert(id.to_string(), seq);
                self.found_until = self.found_until.max(seq);
            }
            // The last message may have been removed meanwhile: nothing pending ends it too.
            if sequence >= last || pending == 0 {
                return Ok(read);
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, index: u64, digest: u64) -> Envelope {
        let mut event = Envelope::example();
        event.seq = seq;
        event.id.index = index;
        event.id.digest = digest;
        event
    }

    fn found(window: &mut DuplicateWindow, events: &[&Envelope]) {
        for event in events {
            window.found.insert(event.id.to_string(), event.seq);
            window.found_until = window.found_until.max(event.seq);
        }
    }

    #[test]
    fn a_send_older_than_the_window_is_checked_and_a_recent_one_is_not() {
        let mut window = DuplicateWindow::new(Duration::from_secs(120), Duration::from_secs(10));
        assert!(!window.check_due(), "nothing sent");
        window.restore(Some(&serde_json::json!({"since_ms": now_ms(), "floor_sequence": 7})));
        assert!(window.check_due(), "a start from saved state owes a check, recent or not");
        window.check_owed = false;
        assert!(!window.check_due());
        window.publishing(1);
        window.acknowledged(9);
        window.settled(1, true);
        assert_eq!(window.checkpoint_state()["floor_sequence"], 9, "all final: the floor moves");
        window.publishing(2);
        assert!(!window.check_due(), "sent just now, inside 120 s less the margin");
        // Within the margin (ack_timeout + 1 s) of the window counts as passed.
        window.unconfirmed = Some(Unconfirmed { since_ms: now_ms() - 110_000, floor_sequence: 0 });
        assert!(window.check_due());
        window.unconfirmed = Some(Unconfirmed { since_ms: now_ms() - 100_000, floor_sequence: 0 });
        assert!(!window.check_due());
    }

    #[test]
    fn an_event_left_to_retry_holds_the_floor_while_later_batches_are_confirmed() {
        let mut window = DuplicateWindow::new(Duration::from_secs(1), Duration::from_secs(1));
        window.saved = true;
        window.publishing(1); // batch n
        window.publishing(2); // batch n+1, pipelined
        window.acknowledged(100);
        window.settled(1, false); // n's PubAck timed out after the store
        window.acknowledged(110);
        window.settled(2, true); // n+1 confirmed clean
        assert_eq!(window.checkpoint_state()["floor_sequence"], 0, "1 is still unconfirmed");
        window.publishing(1);
        window.settled(1, true);
        assert_eq!(window.checkpoint_state()["floor_sequence"], 110);
    }

    #[test]
    fn without_saved_state_the_first_batch_waits_for_a_save_with_the_streams_last_sequence() {
        let mut window = DuplicateWindow::new(Duration::from_secs(1), Duration::from_secs(1));
        window.restore(None);
        window.opened_at(41);
        assert!(!window.check_due(), "nothing to check on a first start");
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
    fn found_events_are_not_sent_and_hold_the_floor_until_an_event_past_them_comes() {
        let mut window = DuplicateWindow::new(Duration::from_secs(1), Duration::from_secs(1));
        window.restore(Some(&serde_json::json!({"since_ms": 1, "floor_sequence": 3})));
        window.check_owed = false;
        // Two sources' events, interleaved in the journal.
        let (a, b, c, d) = (event(10, 10, 1), event(11, 500, 2), event(12, 11, 3), event(13, 501, 4));
        found(&mut window, &[&a, &b, &d]);
        assert!(window.already_stored(&a));
        window.acknowledged(50);
        window.settled(a.seq, true);
        assert_eq!(window.checkpoint_state()["floor_sequence"], 3, "b and d are still to come");
        assert!(window.already_stored(&b));
        assert!(!window.already_stored(&c), "never stored: sent");
        window.publishing(c.seq);
        window.settled(c.seq, true);
        assert!(window.already_stored(&d));
        assert_eq!(window.checkpoint_state()["floor_sequence"], 3);
        assert!(!window.already_stored(&event(14, 12, 5)), "past every position found");
        window.settled(14, true);
        assert_eq!(window.checkpoint_state()["floor_sequence"], 50);
    }
}

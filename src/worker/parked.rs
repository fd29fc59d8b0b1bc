//! Events a sink parked: set aside, in memory, because their own destination is broken while
//! the sink's others work (see `Outcome::Parked` in the sink contract).
//!
//! The worker goes on with later events and offers the parked ones again, oldest first, once
//! their back-off has run out; the cursor it saves never passes the oldest parked event, so
//! a crash sends them (and what was delivered after them) again, and retention keeps them in
//! the journal. The set is bounded in bytes (`max_parked_bytes`): a full set stops the worker
//! from reading further, so a long-broken destination costs memory only up to the bound and
//! then holds its sink back as a retry does.

use nomad_relay_sink_api::{Envelope, SinkError};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// The parked events of one sink (none at first).
#[derive(Default)]
pub struct Parked {
    /// By journal position.
    events: BTreeMap<u64, Envelope>,
    /// Bytes of their raw events.
    bytes: u64,
    /// Why the last one was parked.
    reason: Option<SinkError>,
    /// When they are offered again.
    due: Option<Instant>,
    /// Consecutive offers that left some parked, for the back-off.
    attempts: u32,
    /// The oldest event of an offer in progress: taken out, not yet final, so the cursor
    /// must not pass it either.
    offering: Option<u64>,
}

impl Parked {
    /// Whether a parked outcome may set an event aside now, with the bound at `limit` bytes
    /// (0: never); else it is retried in place.
    pub fn accepts(&self, limit: u64) -> bool {
        limit > 0 && self.bytes < limit
    }

    /// Sets `event` aside for `reason`, to be offered again after the back-off.
    pub fn park(&mut self, event: Envelope, reason: SinkError) {
        self.bytes += event.raw.len() as u64;
        self.events.insert(event.seq, event);
        self.reason = Some(reason);
    }

    /// Whether the set is at its bound of `limit` bytes: the worker reads nothing more until
    /// it shrinks.
    pub fn is_full(&self, limit: u64) -> bool {
        !self.events.is_empty() && self.bytes >= limit
    }

    /// The journal position of the oldest parked event, or of the oldest one being offered.
    pub fn first_seq(&self) -> Option<u64> {
        let parked = self.events.keys().next().copied();
        match (parked, self.offering) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How many are parked.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether none is parked.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Why the last one was parked.
    pub fn reason(&self) -> Option<&SinkError> {
        self.reason.as_ref()
    }

    /// Whether they are due to be offered again.
    pub fn is_due(&self, now: Instant) -> bool {
        !self.events.is_empty() && self.due.is_none_or(|due| due <= now)
    }

    /// When they are due, if any are parked.
    pub fn due(&self) -> Option<Instant> {
        if self.events.is_empty() { None } else { self.due }
    }

    /// Takes every parked event, oldest first, to offer them again; until [`Parked::offered`],
    /// [`Parked::first_seq`] still holds the cursor at the oldest of them.
    pub fn take(&mut self) -> Vec<Envelope> {
        self.bytes = 0;
        self.offering = self.events.keys().next().copied();
        std::mem::take(&mut self.events).into_values().collect()
    }

    /// After an offer: with events parked again, the next offer waits a back-off growing from
    /// `min` to `max`; with none, the back-off starts over.
    pub fn offered(&mut self, min: Duration, max: Duration) {
        self.offering = None;
        if self.events.is_empty() {
            self.attempts = 0;
            self.due = None;
            self.reason = None;
            return;
        }
        let factor = 2u32.saturating_pow(self.attempts.min(16));
        self.attempts += 1;
        self.due = Some(Instant::now() + min.saturating_mul(factor).min(max));
    }

    /// After new events were parked by a later batch: they wait for the current back-off
    /// rather than being offered at once.
    pub fn wait_at_least(&mut self, min: Duration) {
        if self.due.is_none() {
            self.due = Some(Instant::now() + min);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nomad_relay_sink_api::SinkErrorKind;

    fn event(seq: u64, bytes: usize) -> Envelope {
        Envelope { seq, raw: bytes::Bytes::from(vec![b'x'; bytes]), ..Envelope::example() }
    }

    #[test]
    fn oldest_first_bounded_and_backed_off() {
        let mut parked = Parked::default();
        let reason = || SinkError::new(SinkErrorKind::Refused, "topic gone");
        assert!(parked.accepts(100) && parked.first_seq().is_none());
        parked.park(event(9, 40), reason());
        parked.park(event(4, 40), reason());
        assert_eq!(parked.first_seq(), Some(4));
        assert!(!parked.is_full(100));
        parked.park(event(12, 40), reason());
        assert!(parked.is_full(100) && !parked.accepts(100), "120 bytes of 100");
        let now = Instant::now();
        assert!(parked.is_due(now), "new ones are offered at once unless told to wait");
        let taken: Vec<u64> = parked.take().iter().map(|e| e.seq).collect();
        assert_eq!(taken, [4, 9, 12]);
        assert_eq!(parked.first_seq(), Some(4), "an offer in progress still holds the cursor");
        parked.park(event(4, 40), reason());
        parked.offered(Duration::from_millis(100), Duration::from_secs(1));
        assert!(!parked.is_due(Instant::now()), "parked again: after a back-off");
        parked.take();
        parked.offered(Duration::from_millis(100), Duration::from_secs(1));
        assert!(parked.due().is_none() && parked.reason().is_none() && parked.first_seq().is_none());
        assert!(!Parked::default().accepts(0), "a bound of 0 parks nothing");
    }
}

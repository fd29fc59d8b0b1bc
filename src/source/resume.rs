//! Where to resume Nomad's stream, and which received events are new.
//!
//! # The checkpoint contract
//!
//! The source's checkpoint is the journal's head: an event counts as received once it is
//! journaled, and on start the checkpoint is read back from the journal as `(N, ids at N)`,
//! the highest Index journaled and the ids of the events journaled with it. Nomad's `index`
//! parameter is inclusive and several lines can share one Index, so the relay reconnects with
//! `index=N` (never `N+1`, which would lose the later lines of N), drops lines below N (Nomad
//! re-sends its newest batch when asked for an index it does not have yet), and drops events
//! at N whose id it already journaled.
//!
//! An event's id is `(Index, digest of Topic/Type/Namespace/Key, occurrence)`, where the
//! occurrence counts earlier events with the same digest at the same Index across lines, so
//! repeats of one object at one Index stay distinct while replays of them match. Exact repeats
//! inside one line come from Nomad's key-filter quirk and are dropped.
//!
//! Nomad evicts whole lines, oldest first, so the lines it sends again at N can lack the
//! first ones the relay journaled, and the rest are then numbered from 0 again: an id can
//! name another event than the one journaled under it. So at N an event counts as journaled
//! when an event with the same digest and the same bytes was ([`checkpoint::content`]), a new
//! event never takes an id already used at N, and a first line at N whose first event is not
//! journaled shows that Nomad no longer has the lines that began N: a gap.
//!
//! After a reconnect, if the first data line has an Index above N, Nomad no longer held N:
//! events between may be lost. That is reported and, unless disabled, journaled as a
//! `NomadRelay`/`GapDetected` event so every sink and consumer sees it.

use super::catch_up::CatchUp;
use super::frame::RawEvent;
use crate::config::{DEFAULT_SOURCE, StartAt};
use crate::journal::SourceName;
use crate::journal::checkpoint::{self, SourceCheckpoint, UNKNOWN_CONTENT};
use bytes::Bytes;
use nomad_relay_sink_api::{Envelope, EventId};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Topic of the events the relay itself adds to the stream.
pub const RELAY_TOPIC: &str = "NomadRelay";
/// Type of the gap marker event.
pub const GAP_TYPE: &str = "GapDetected";
/// Type of the event that reports Nomad's index going backwards.
pub const INDEX_RESET_TYPE: &str = "IndexReset";

/// A possible loss of events reported by the resume logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The last Index the relay had.
    pub last_index: u64,
    /// The Index the stream resumed at.
    pub resumed_index: u64,
}

/// The result of one data line.
#[derive(Debug, Default)]
pub struct LineOutcome {
    /// Events to journal, in order (a gap marker first when there is one).
    pub events: Vec<Envelope>,
    /// Set when this line revealed a gap.
    pub gap: Option<Gap>,
    /// The line was older than the checkpoint and was skipped.
    pub stale: bool,
    /// Events dropped because they were already journaled.
    pub already_journaled: usize,
    /// Exact repeats inside the line that were dropped.
    pub repeated_in_line: usize,
}

/// A `NomadRelay`/`GapDetected` event with id `id` and `payload` (`{"Gap":{...}}`), shaped
/// like Nomad's own events, so every sink and consumer handles it as one.
pub fn gap_marker(source: &str, id: EventId, payload: &str) -> Envelope {
    relay_event(source, id, GAP_TYPE, payload)
}

/// A `NomadRelay` event of type `event_type` with id `id` and `payload`, shaped like Nomad's
/// own events (`Index` is the id's).
pub fn relay_event(source: &str, id: EventId, event_type: &str, payload: &str) -> Envelope {
    let index = id.index;
    let raw = format!(
        "{{\"Topic\":\"{RELAY_TOPIC}\",\"Type\":\"{event_type}\",\"Key\":\"\",\"Namespace\":\"\",\"FilterKeys\":null,\"Index\":{index},\"Payload\":{payload}}}"
    );
    Envelope {
        seq: 0,
        id,
        source: source.to_owned(),
        topic: RELAY_TOPIC.to_owned(),
        event_type: event_type.to_owned(),
        key: String::new(),
        namespace: String::new(),
        raw: Bytes::from(raw),
    }
}

/// Resume and de-duplication state for one Nomad source.
#[derive(Debug)]
pub struct Resume {
    /// The configured name of the Nomad cluster or region.
    source: String,
    /// Its id scope, part of every event id's digest.
    scope: String,
    checkpoint: SourceCheckpoint,
    /// Whether `checkpoint` came from the journal (so a jump past it is a gap).
    have_checkpoint: bool,
    start: StartAt,
    gap_markers: bool,
    /// Whether a first line above `start = <index>` is reported as a gap.
    start_gaps: bool,
    /// Index of the lines currently arriving, and occurrence counts at it.
    line_index: u64,
    occurrences: HashMap<u64, u32>,
    awaiting_first_line: bool,
    /// A namespace catch-up in progress ([`super::catch_up`]).
    catch_up: Option<CatchUp>,
    /// Namespaces this connection has delivered events of.
    namespaces_seen: BTreeSet<String>,
    /// What this connection's lines at the checkpoint's Index are compared with.
    resent: Option<Resent>,
}

/// The events journaled at the checkpoint's Index before a connection, which Nomad sends
/// again.
#[derive(Debug)]
struct Resent {
    /// The checkpoint's Index when the connection started.
    index: u64,
    /// How many events journaled there have each `(digest, content)` (where the content is
    /// known) and were not yet sent again: identical repeats of one object count apart.
    held: HashMap<(u64, u64), u32>,
    /// Whether the connection's first event at `index` was looked at.
    first_checked: bool,
    /// Whether that first event showed the lines that began `index` evicted: the events at
    /// it are then matched by their bytes and numbered past the ids already used.
    evicted: bool,
}

/// The stable digest of an event's identity fields and its source's id scope (raft indexes
/// belong to one cluster; the scope is `default` unless configured, not the source's name, so
/// renaming a source keeps its ids).
pub fn digest(scope: &str, topic: &str, event_type: &str, namespace: &str, key: &str) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for field in [scope, topic, event_type, namespace, key] {
        hasher.update(&(field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.digest()
}

impl Resume {
    /// Resume state for `source` (its name and id scope) from the journal's checkpoint
    /// (`None` when nothing of this source was journaled yet).
    pub fn new(
        source: &SourceName,
        checkpoint: Option<SourceCheckpoint>,
        start: StartAt,
        gap_markers: bool,
    ) -> Self {
        let have_checkpoint = checkpoint.is_some();
        Resume {
            source: source.name.clone(),
            scope: source.scope.clone(),
            checkpoint: checkpoint.unwrap_or_default(),
            have_checkpoint,
            start,
            gap_markers,
            start_gaps: true,
            line_index: 0,
            occurrences: HashMap::new(),
            awaiting_first_line: true,
            catch_up: None,
            namespaces_seen: BTreeSet::new(),
            resent: None,
        }
    }

    /// Resumes a saved namespace catch-up, as far as the checkpoint still needs it.
    pub fn with_catch_up(mut self, saved: Option<CatchUp>) -> Self {
        if self.have_checkpoint {
            self.catch_up = saved.and_then(|c| c.after_restart(self.checkpoint.index));
        }
        self
    }

    /// The catch-up in progress, if any.
    pub fn catch_up(&self) -> Option<&CatchUp> {
        self.catch_up.as_ref()
    }

    /// Whether this connection delivered an event of `namespace` (it is then in the
    /// subscription's namespace list).
    pub fn saw_namespace(&self, namespace: &str) -> bool {
        self.namespaces_seen.contains(namespace)
    }

    /// Plans the resubscription for namespaces (name and `CreateIndex`) this connection does
    /// not include: a catch-up from their `CreateIndex` when events of theirs can lie below
    /// the checkpoint, else a plain resubscription at it. Returns the catch-up now planned.
    pub fn include_namespaces(&mut self, added: &[(String, u64)]) -> Option<&CatchUp> {
        if self.have_checkpoint {
            self.catch_up = CatchUp::plan(self.catch_up.as_ref(), added, self.checkpoint.index);
        }
        self.catch_up.as_ref()
    }

    /// Does not report a first line above the start index as a gap: for `tail --index`, where
    /// the index is typed by hand and need not be one Nomad has events at.
    pub fn without_start_gaps(mut self) -> Self {
        self.start_gaps = false;
        self
    }

    /// The `index` query parameter for the next connection.
    pub fn request_index(&self) -> u64 {
        if self.have_checkpoint {
            return self.catch_up.as_ref().map_or(self.checkpoint.index, |c| c.from);
        }
        match self.start {
            StartAt::Oldest => 0,
            StartAt::Index(index) => index.min(i64::MAX as u64),
            // Nomad has no "start at the end": asking for a future index makes it send its
            // newest batch, then what comes after. That batch is kept: skipping it would lose
            // a genuinely new batch whenever Nomad's buffer was empty at connect time.
            StartAt::Now => i64::MAX as u64,
        }
    }

    /// Lines below this index are already journaled (or before the configured start).
    fn floor(&self) -> u64 {
        match (self.have_checkpoint, self.start) {
            (true, _) => self.checkpoint.index,
            (false, StartAt::Index(index)) => index,
            (false, _) => 0,
        }
    }

    /// Whether the source has journaled anything (its checkpoint is the journal's).
    pub fn has_checkpoint(&self) -> bool {
        self.have_checkpoint && self.checkpoint.index > 0
    }

    /// The current checkpoint.
    pub fn checkpoint(&self) -> &SourceCheckpoint {
        &self.checkpoint
    }

    /// Call when a new connection starts: Nomad re-sends every line from the requested
    /// Index, so occurrence counting starts over.
    pub fn on_connect(&mut self) {
        self.line_index = 0;
        self.occurrences.clear();
        self.awaiting_first_line = true;
        self.namespaces_seen.clear();
        // Nomad never sends the relay's own events again.
        let own = [self.marker_digest(), digest(&self.scope, RELAY_TOPIC, INDEX_RESET_TYPE, "", "")];
        let mut held: HashMap<(u64, u64), u32> = HashMap::new();
        for (id, content) in &self.checkpoint.seen {
            if *content != UNKNOWN_CONTENT && !own.contains(&id.digest) {
                *held.entry((id.digest, *content)).or_default() += 1;
            }
        }
        // With ids of unknown bytes at N (from the sources file) the first event cannot be
        // judged: no eviction is inferred.
        let unknown = self.checkpoint.seen.values().any(|c| *c == UNKNOWN_CONTENT);
        self.resent = self.have_checkpoint.then_some(Resent {
            index: self.checkpoint.index,
            held,
            first_checked: unknown,
            evicted: false,
        });
    }

    /// Processes one data line.
    pub fn on_line(&mut self, index: u64, events: Vec<RawEvent>) -> LineOutcome {
        let mut outcome = LineOutcome::default();
        let first_line = std::mem::replace(&mut self.awaiting_first_line, false);
        // A line below the checkpoint is stale, unless a catch-up fetches some of its events.
        let late_until =
            self.catch_up.as_ref().filter(|c| index >= c.from && index < self.floor()).map(|c| c.until);
        if index < self.floor() && late_until.is_none() {
            outcome.stale = true;
            return outcome;
        }
        if self.catch_up.as_ref().is_some_and(|c| index > c.until) {
            self.catch_up = None;
        }
        // Late events take ids at the checkpoint's Index, counted on from the catch-up's start.
        let id_index = late_until.unwrap_or(index);
        if id_index != self.line_index {
            self.line_index = id_index;
            self.occurrences.clear();
        }
        if let Some((gap, reason)) = self.gap_at(index).filter(|_| first_line) {
            outcome.gap = Some(gap);
            if self.gap_markers {
                let reason =
                    reason.map(|r| format!(",\"Reason\":{}", serde_json::Value::from(r))).unwrap_or_default();
                let payload = format!(
                    "{{\"Gap\":{{\"LastIndex\":{},\"ResumedIndex\":{index}{reason}{}}}}}",
                    gap.last_index,
                    self.source_field()
                );
                let (marker, content) = self.marker(index, &payload, true);
                self.accept(marker, content, &mut outcome);
            }
        }
        let mut in_line: HashSet<u64> = HashSet::with_capacity(events.len());
        for event in events {
            if !event.namespace.is_empty() && !self.namespaces_seen.contains(&event.namespace) {
                self.namespaces_seen.insert(event.namespace.clone());
            }
            if late_until.is_some() && !self.catching_up(&event.namespace) {
                // Below the checkpoint, another namespace's event is journaled already.
                outcome.already_journaled += 1;
                continue;
            }
            let digest = digest(&self.scope, &event.topic, &event.event_type, &event.namespace, &event.key);
            if !in_line.insert(digest) {
                outcome.repeated_in_line += 1;
                continue;
            }
            let content = checkpoint::content(&event.raw);
            // A caught-up namespace's events were never journaled at N: no sign of eviction.
            let fresh = self.catching_up(&event.namespace);
            if let Some(reason) = self.check_at_checkpoint(index, id_index, digest, content, fresh) {
                self.report_resent_gap(index, reason, &mut outcome);
            }
            if self.held_by_bytes(id_index, digest, content) {
                // It keeps its place in the numbering, as when it was journaled.
                self.bump(digest);
                outcome.already_journaled += 1;
                continue;
            }
            let id = self.next_id(id_index, digest, content);
            let envelope = Envelope {
                seq: 0,
                id,
                source: self.source.clone(),
                topic: event.topic,
                event_type: event.event_type,
                key: event.key,
                namespace: event.namespace,
                raw: event.raw,
            };
            self.accept(envelope, content, &mut outcome);
        }
        outcome
    }

    /// Looks at the events Nomad sends again at the checkpoint's Index N (`fresh`: of a
    /// namespace being caught up, which proves nothing). Nomad sends what it holds at N from
    /// its oldest line, so the first one is the first the relay journaled at N, under the same
    /// id and with the same bytes. When it is not, why that may have lost events: its id is not
    /// journaled (Nomad evicted the lines that began N; the events at N are then matched by
    /// their bytes), or the id is journaled with other bytes (that, or the server encodes
    /// events differently, another Nomad version: ids still decide, so nothing is journaled
    /// twice). Any later event whose id is journaled with other bytes while its own bytes are
    /// journaled under another id proves an eviction too (a re-encoding cannot give one
    /// event's id another journaled event's bytes).
    fn check_at_checkpoint(
        &mut self,
        index: u64,
        id_index: u64,
        digest: u64,
        content: u64,
        fresh: bool,
    ) -> Option<&'static str> {
        const EVICTED: &str = "Nomad no longer holds the first lines at this Index (evicted from its buffer): events of lines the relay had not received may be lost";
        let natural = EventId {
            index: id_index,
            digest,
            occurrence: self.occurrences.get(&digest).copied().unwrap_or(0),
        };
        let held_as = self.checkpoint.seen.get(&natural).copied();
        let resent = self.resent.as_mut().filter(|r| r.index == index && id_index == index && !fresh)?;
        if resent.evicted || resent.held.is_empty() {
            return None;
        }
        let first = !std::mem::replace(&mut resent.first_checked, true);
        let other_bytes = held_as.is_some_and(|held| held != content && held != UNKNOWN_CONTENT);
        if (held_as.is_none() && first)
            || (other_bytes && resent.held.get(&(digest, content)).is_some_and(|n| *n > 0))
        {
            resent.evicted = true;
            return Some(EVICTED);
        }
        (first && other_bytes).then_some(
            "Nomad sent an event at this Index with other bytes than the relay journaled: either it evicted the first lines at this Index (an event of the lines the relay had not received may be lost) or this server encodes events differently (another Nomad version)",
        )
    }

    /// Whether, at a checkpoint whose first lines Nomad evicted, an event with these bytes
    /// was journaled there (counted, so identical repeats stay apart).
    fn held_by_bytes(&mut self, id_index: u64, digest: u64, content: u64) -> bool {
        let Some(resent) = self.resent.as_mut().filter(|r| r.evicted && r.index == id_index) else {
            return false;
        };
        match resent.held.get_mut(&(digest, content)).filter(|count| **count > 0) {
            Some(count) => {
                *count -= 1;
                true
            }
            None => false,
        }
    }

    /// Journals a gap marker at the checkpoint's `index`, for `reason`.
    fn report_resent_gap(&mut self, index: u64, reason: &str, outcome: &mut LineOutcome) {
        let gap = Gap { last_index: index, resumed_index: index };
        if !self.gap_markers {
            outcome.gap = Some(gap);
            return;
        }
        // Reported once: a marker journaled before (the same eviction seen again) is not.
        let before = outcome.events.len();
        {
            let reason = serde_json::Value::from(reason);
            let payload = format!(
                "{{\"Gap\":{{\"LastIndex\":{index},\"ResumedIndex\":{index},\"Reason\":{reason}{}}}}}",
                self.source_field()
            );
            let (marker, content) = self.marker(index, &payload, true);
            self.accept(marker, content, outcome);
        }
        if outcome.events.len() > before {
            outcome.gap = Some(gap);
        }
    }

    /// The id of a new event: the next occurrence of `digest` at `index`, passing over ids
    /// journaled there for other bytes (Nomad renumbers the lines it still holds after an
    /// eviction). An id journaled with unknown bytes, or any id when `content` is unknown,
    /// is taken as this event's.
    fn next_id(&mut self, index: u64, digest: u64, content: u64) -> EventId {
        let renumbered = self.resent.as_ref().is_some_and(|r| r.evicted && r.index == index);
        loop {
            let id = EventId { index, digest, occurrence: self.bump(digest) };
            if content == UNKNOWN_CONTENT || !renumbered {
                return id;
            }
            match self.checkpoint.seen.get(&id) {
                Some(&held) if held != UNKNOWN_CONTENT && held != content => {}
                _ => return id,
            }
        }
    }

    /// Whether a catch-up in progress fetches `namespace`'s events.
    fn catching_up(&self, namespace: &str) -> bool {
        self.catch_up.as_ref().is_some_and(|c| c.namespaces.contains(namespace))
    }

    /// Whether the first line after a connect, at `index`, shows that Nomad no longer held
    /// what the relay asked for: the checkpoint's Index (the relay had it, so Nomad sent
    /// it unless it was evicted), or on a first start `start = <index>` (Nomad starts at the
    /// first Index at or above it that it still holds, spec §2.2, and says nothing when the
    /// rest were evicted). With the reason to journal, if not the usual one.
    fn gap_at(&self, index: u64) -> Option<(Gap, Option<String>)> {
        match (self.have_checkpoint, self.start) {
            (true, _) if self.checkpoint.index > 0 && index > self.checkpoint.index => {
                Some((Gap { last_index: self.checkpoint.index, resumed_index: index }, None))
            }
            (false, StartAt::Index(start)) if self.start_gaps && start > 0 && index > start => {
                let reason = format!(
                    "start = {start}: Nomad's first event is at Index {index}; events from {start} on were evicted from its buffer, or there were none"
                );
                Some((Gap { last_index: start - 1, resumed_index: index }, Some(reason)))
            }
            _ => None,
        }
    }

    /// Reports that Nomad's index went backwards: the stream has stayed below the checkpoint
    /// N (up to `resumed`) for longer than a lagging server would. Journals a
    /// `NomadRelay`/`IndexReset` event at N, `{"IndexReset":{"LastIndex":N,"ResumedIndex":M}}`,
    /// once per checkpoint (a repeat after a reconnect or restart has its id). Lines below N
    /// are still skipped: the new history's events up to N are not relayed.
    pub fn on_index_reset(&mut self, resumed: u64) -> LineOutcome {
        let mut outcome = LineOutcome::default();
        let index = self.checkpoint.index;
        if index != self.line_index {
            self.line_index = index;
            self.occurrences.clear();
        }
        let payload = format!(
            "{{\"IndexReset\":{{\"LastIndex\":{index},\"ResumedIndex\":{resumed}{}}}}}",
            self.source_field()
        );
        // Always occurrence 0: one such event per checkpoint, however often it is seen.
        let id = EventId {
            index,
            digest: digest(&self.scope, RELAY_TOPIC, INDEX_RESET_TYPE, "", ""),
            occurrence: 0,
        };
        let event = relay_event(&self.source, id, INDEX_RESET_TYPE, &payload);
        self.accept(event, UNKNOWN_CONTENT, &mut outcome);
        outcome
    }

    /// Processes a line that could not be read (too long, or not a valid frame): journals a
    /// gap marker at its Index (or at the checkpoint when its Index is unreadable), saying
    /// why. A replay of the same line after a reconnect yields no second marker.
    pub fn on_skipped_line(&mut self, index: Option<u64>, reason: &str) -> LineOutcome {
        let mut outcome = LineOutcome::default();
        self.awaiting_first_line = false;
        let index = match index {
            Some(index) if index < self.floor() => {
                // Already handled before a reconnect (or before the configured start).
                outcome.stale = true;
                return outcome;
            }
            Some(index) => index,
            None => self.checkpoint.index,
        };
        if index != self.line_index {
            self.line_index = index;
            self.occurrences.clear();
        }
        if let Some(resent) = self.resent.as_mut().filter(|r| r.index == index) {
            // A line at the checkpoint's Index came first: the lines that began it are there.
            resent.first_checked = true;
        }
        let last_index = self.checkpoint.index;
        let reason = serde_json::Value::from(reason).to_string();
        let payload = format!(
            "{{\"Gap\":{{\"LastIndex\":{last_index},\"ResumedIndex\":{index},\"Reason\":{reason}{}}}}}",
            self.source_field()
        );
        let (marker, content) = self.marker(index, &payload, false);
        self.accept(marker, content, &mut outcome);
        if !outcome.events.is_empty() {
            outcome.gap = Some(Gap { last_index, resumed_index: index });
        }
        outcome
    }

    /// `,"Source":"<name>"` for a named source, nothing for the single default one, so the
    /// marker of a one-cluster relay is exactly `{"Gap":{"LastIndex":N,"ResumedIndex":M}}`.
    fn source_field(&self) -> String {
        if self.source == DEFAULT_SOURCE {
            String::new()
        } else {
            format!(",\"Source\":{}", serde_json::Value::from(self.source.as_str()))
        }
    }

    /// A gap marker at `index`, and its content digest: [`UNKNOWN_CONTENT`] unless
    /// `by_bytes`, so that a marker whose payload differs from one connection to the next (it
    /// names the checkpoint of the time) is recognised by its id alone.
    fn marker(&mut self, index: u64, payload: &str, by_bytes: bool) -> (Envelope, u64) {
        let digest = self.marker_digest();
        let mut marker = gap_marker(&self.source, EventId { index, digest, occurrence: 0 }, payload);
        let content = if by_bytes { checkpoint::content(&marker.raw) } else { UNKNOWN_CONTENT };
        // A marker is never taken for another one journaled at this Index.
        marker.id = loop {
            let id = EventId { index, digest, occurrence: self.bump(digest) };
            match self.checkpoint.seen.get(&id) {
                Some(&held) if content != UNKNOWN_CONTENT && held != UNKNOWN_CONTENT && held != content => {}
                _ => break id,
            }
        };
        (marker, content)
    }

    fn marker_digest(&self) -> u64 {
        digest(&self.scope, RELAY_TOPIC, GAP_TYPE, "", "")
    }

    fn accept(&mut self, envelope: Envelope, content: u64, outcome: &mut LineOutcome) {
        if self.have_checkpoint && self.checkpoint.contains(&envelope.id) {
            outcome.already_journaled += 1;
            return;
        }
        // Lines below the checkpoint never get here (`floor`); a refusal would be a bug, and
        // the event is then treated as stale rather than journaled out of order.
        if self.checkpoint.advance(envelope.id, content).is_err() {
            outcome.stale = true;
            return;
        }
        self.have_checkpoint = true;
        outcome.events.push(envelope);
    }

    fn bump(&mut self, digest: u64) -> u32 {
        let count = self.occurrences.entry(digest).or_insert(0);
        let occurrence = *count;
        *count += 1;
        occurrence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_source() -> SourceName {
        SourceName { name: DEFAULT_SOURCE.into(), scope: DEFAULT_SOURCE.into() }
    }

    fn event(topic: &str, key: &str) -> RawEvent {
        RawEvent {
            topic: topic.into(),
            event_type: "JobRegistered".into(),
            key: key.into(),
            namespace: "default".into(),
            raw: Bytes::from(format!("{{\"Topic\":\"{topic}\",\"Key\":\"{key}\"}}")),
        }
    }

    fn keys(outcome: &LineOutcome) -> Vec<String> {
        outcome.events.iter().map(|e| format!("{}:{}", e.topic, e.key)).collect()
    }

    #[test]
    fn resumes_inclusively_and_drops_what_was_journaled() {
        let mut resume = Resume::new(&default_source(), None, StartAt::Oldest, true);
        assert_eq!(resume.request_index(), 0);
        resume.on_connect();
        let first = resume.on_line(10, vec![event("Job", "web")]);
        assert_eq!(keys(&first), ["Job:web"]);
        // The connection drops before the second line of index 10 arrives.
        let checkpoint = resume.checkpoint().clone();
        let mut resume = Resume::new(&default_source(), Some(checkpoint), StartAt::Oldest, true);
        assert_eq!(resume.request_index(), 10, "reconnect with index=N, not N+1");
        resume.on_connect();
        let replayed = resume.on_line(10, vec![event("Job", "web")]);
        assert!(replayed.events.is_empty());
        assert_eq!(replayed.already_journaled, 1);
        let second = resume.on_line(10, vec![event("Evaluation", "e1")]);
        assert_eq!(keys(&second), ["Evaluation:e1"]);
        assert!(second.gap.is_none());
    }

    #[test]
    fn a_catch_up_takes_only_the_new_namespace_below_the_checkpoint_and_repeats_cleanly() {
        let in_ns =
            |key: &str, namespace: &str| RawEvent { namespace: namespace.into(), ..event("Job", key) };
        let mut resume = Resume::new(&default_source(), None, StartAt::Oldest, true);
        resume.on_connect();
        resume.on_line(8, vec![in_ns("web", "default")]);
        let plan = resume.include_namespaces(&[("team-b".into(), 5), ("later".into(), 9)]).cloned();
        assert_eq!(plan.as_ref().map(|p| (p.from, p.until)), Some((5, 8)));
        assert_eq!(resume.request_index(), 5, "resubscribe at the namespace's CreateIndex");
        let before = resume.checkpoint().clone();

        let catch_up = |resume: &mut Resume| {
            resume.on_connect();
            let five = resume.on_line(5, vec![in_ns("api", "default"), in_ns("b1", "team-b")]);
            let seven = resume.on_line(7, vec![in_ns("b1", "team-b")]);
            let eight = resume.on_line(8, vec![in_ns("web", "default"), in_ns("b2", "team-b")]);
            [five, seven, eight]
        };
        let [five, seven, eight] = catch_up(&mut resume);
        assert_eq!((keys(&five), five.already_journaled), (vec!["Job:b1".to_owned()], 1));
        assert_eq!(keys(&seven), ["Job:b1"]);
        assert_eq!((keys(&eight), eight.already_journaled), (vec!["Job:b2".to_owned()], 1));
        let ids: Vec<EventId> =
            [&five, &seven, &eight].iter().flat_map(|o| o.events.iter().map(|e| e.id)).collect();
        assert!(ids.iter().all(|id| id.index == 8), "late events get ids at the checkpoint: {ids:?}");
        assert_ne!(ids[0], ids[1], "two changes of one object below the checkpoint stay distinct");
        assert_eq!(resume.checkpoint().index, 8, "the checkpoint never went back");
        assert!(five.gap.is_none() && !five.stale);

        // The same catch-up again (a reconnect or a restart before index 9): nothing is new.
        let mut again =
            Resume::new(&default_source(), Some(resume.checkpoint().clone()), StartAt::Oldest, true)
                .with_catch_up(plan.clone());
        assert_eq!(again.request_index(), 5);
        let repeated = catch_up(&mut again);
        assert!(repeated.iter().all(|o| o.events.is_empty()), "{repeated:?}");
        // Past `until` the catch-up is over and the next reconnect is at the checkpoint.
        let nine = again.on_line(9, vec![in_ns("x", "team-b")]);
        assert_eq!(keys(&nine), ["Job:x"]);
        assert!(again.catch_up().is_none());
        assert_eq!(again.request_index(), 9);
        // Started from the checkpoint before the catch-up, the plan is simply still to do.
        let fresh = Resume::new(&default_source(), Some(before), StartAt::Oldest, true).with_catch_up(plan);
        assert_eq!(fresh.request_index(), 5);
    }

    #[test]
    fn lines_evicted_from_the_start_of_an_index_are_a_gap_and_no_event_is_taken_for_another() {
        let version = |key: &str, version: u32| RawEvent {
            raw: Bytes::from(format!("{{\"Topic\":\"Job\",\"Key\":\"{key}\",\"Version\":{version}}}")),
            ..event("Job", key)
        };
        let reason = |outcome: &LineOutcome| String::from_utf8_lossy(&outcome.events[0].raw).to_string();
        // The relay journals the first line at 10, then stops.
        let mut resume = Resume::new(&default_source(), None, StartAt::Oldest, true);
        resume.on_connect();
        resume.on_line(10, vec![version("web", 1)]);
        let journaled = resume.checkpoint().clone();
        let again = |checkpoint: &SourceCheckpoint| {
            let mut resume = Resume::new(&default_source(), Some(checkpoint.clone()), StartAt::Oldest, true);
            resume.on_connect();
            resume
        };

        // Nomad still holds both lines: the first is recognised, the second is new.
        let mut intact = again(&journaled);
        let first = intact.on_line(10, vec![version("web", 1)]);
        let second = intact.on_line(10, vec![version("web", 2)]);
        assert_eq!((first.events.len(), first.already_journaled, first.gap), (0, 1, None));
        assert_eq!((keys(&second), second.gap), (vec!["Job:web".to_owned()], None));

        // Nomad evicted the first line; the line it still holds begins with another object.
        // The second change of `web`, numbered from 0 again, would have the first's id.
        let mut evicted = again(&journaled);
        let resent = evicted.on_line(10, vec![version("api", 1), version("web", 2)]);
        assert_eq!(resent.gap, Some(Gap { last_index: 10, resumed_index: 10 }));
        assert_eq!(keys(&resent), ["NomadRelay:", "Job:api", "Job:web"], "a marker, then both events");
        assert!(
            reason(&resent).contains("no longer holds the first lines at this Index"),
            "{}",
            reason(&resent)
        );
        let web = resent.events[2].id;
        assert!(!journaled.contains(&web), "the new event did not take the journaled one's id");
        assert_eq!(web, second.events[0].id, "the same id the intact stream gives it");
        // The same eviction seen again after a restart: nothing new, no second marker.
        let mut repeated = again(evicted.checkpoint());
        let repeat = repeated.on_line(10, vec![version("api", 1), version("web", 2)]);
        assert!(repeat.events.is_empty() && repeat.gap.is_none(), "{repeat:?}");

        // The relay had both lines; Nomad evicted the first, whose first event is another
        // object's, and a third line changes `web` once more. `web`'s second change, numbered
        // from 0 again, carries the first change's id but its own bytes are journaled: proof
        // of the eviction, so the third change is not taken for the second.
        let mut both = Resume::new(&default_source(), None, StartAt::Oldest, true);
        both.on_connect();
        both.on_line(10, vec![version("web", 1)]);
        both.on_line(10, vec![version("api", 1), version("web", 2)]);
        let mut evicted_first = again(both.checkpoint());
        let resent = evicted_first.on_line(10, vec![version("api", 1), version("web", 2)]);
        assert_eq!(keys(&resent), ["NomadRelay:"], "a marker, nothing journaled twice: {resent:?}");
        let third = evicted_first.on_line(10, vec![version("web", 3)]);
        assert_eq!(keys(&third), ["Job:web"], "the third change is new: {third:?}");

        // The first event Nomad sends at 10 has the journaled one's id and other bytes: the
        // first line was evicted and the same object changed again, or the server encodes
        // differently (another Nomad version). Ids decide, nothing is journaled twice, and
        // the marker says which event may be lost.
        let mut changed = again(&journaled);
        let reencoded = changed.on_line(
            10,
            vec![RawEvent { raw: Bytes::from("{\"Key\":\"web\",\"New\":1}"), ..version("web", 1) }],
        );
        assert_eq!(keys(&reencoded), ["NomadRelay:"], "{reencoded:?}");
        assert!(reason(&reencoded).contains("another Nomad version"), "{}", reason(&reencoded));
    }

    #[test]
    fn an_index_reset_is_journaled_once_per_checkpoint() {
        let mut resume = Resume::new(&default_source(), None, StartAt::Oldest, true);
        resume.on_connect();
        resume.on_line(50, vec![event("Job", "web")]);
        assert!(resume.has_checkpoint());
        let first = resume.on_index_reset(7);
        assert_eq!(keys(&first), ["NomadRelay:"]);
        assert!(
            String::from_utf8_lossy(&first.events[0].raw)
                .contains(r#""IndexReset":{"LastIndex":50,"ResumedIndex":7}"#)
        );
        // A line at 50 and a second stretch below it, on the same connection: nothing new.
        resume.on_line(50, vec![event("Job", "web")]);
        assert!(resume.on_index_reset(9).events.is_empty());
        let fresh = Resume::new(&default_source(), None, StartAt::Index(1000), true);
        assert!(!fresh.has_checkpoint(), "a start index is not a checkpoint");
    }

    #[test]
    fn repeats_of_one_object_across_lines_of_one_index_are_distinct() {
        let mut resume = Resume::new(&default_source(), None, StartAt::Oldest, true);
        resume.on_connect();
        let a = resume.on_line(7, vec![event("CSIVolume", "v")]);
        let b = resume.on_line(7, vec![event("CSIVolume", "v")]);
        assert_eq!(a.events.len(), 1);
        assert_eq!(b.events.len(), 1);
        assert_ne!(a.events[0].id, b.events[0].id);
        // Replaying both lines after a restart journals neither again.
        let mut resume =
            Resume::new(&default_source(), Some(resume.checkpoint().clone()), StartAt::Oldest, true);
        resume.on_connect();
        assert!(resume.on_line(7, vec![event("CSIVolume", "v")]).events.is_empty());
        assert!(resume.on_line(7, vec![event("CSIVolume", "v")]).events.is_empty());
        assert_eq!(resume.on_line(7, vec![event("CSIVolume", "v")]).events.len(), 1);
    }

    #[test]
    fn exact_repeats_inside_one_line_are_dropped() {
        let mut resume = Resume::new(&default_source(), None, StartAt::Oldest, true);
        resume.on_connect();
        let outcome = resume
            .on_line(3, vec![event("Allocation", "a"), event("Allocation", "a"), event("Allocation", "b")]);
        assert_eq!(keys(&outcome), ["Allocation:a", "Allocation:b"]);
        assert_eq!(outcome.repeated_in_line, 1);
    }

    #[test]
    fn stale_lines_below_the_checkpoint_are_skipped() {
        let checkpoint = SourceCheckpoint { index: 50, seen: HashMap::new() };
        let mut resume = Resume::new(&default_source(), Some(checkpoint), StartAt::Oldest, true);
        resume.on_connect();
        let outcome = resume.on_line(40, vec![event("Job", "x")]);
        assert!(outcome.stale && outcome.events.is_empty());
    }

    #[test]
    fn jump_past_the_checkpoint_is_a_gap_with_a_marker() {
        let mut resume = Resume::new(
            &default_source(),
            Some(SourceCheckpoint { index: 50, seen: HashMap::new() }),
            StartAt::Oldest,
            true,
        );
        resume.on_connect();
        let outcome = resume.on_line(90, vec![event("Job", "x")]);
        assert_eq!(outcome.gap, Some(Gap { last_index: 50, resumed_index: 90 }));
        assert_eq!(outcome.events.len(), 2);
        assert_eq!(
            std::str::from_utf8(&outcome.events[0].raw).expect("utf8"),
            r#"{"Topic":"NomadRelay","Type":"GapDetected","Key":"","Namespace":"","FilterKeys":null,"Index":90,"Payload":{"Gap":{"LastIndex":50,"ResumedIndex":90}}}"#
        );
        let mut named = Resume::new(
            &SourceName { name: "eu".into(), scope: "eu".into() },
            Some(SourceCheckpoint { index: 50, seen: HashMap::new() }),
            StartAt::Oldest,
            true,
        );
        named.on_connect();
        let outcome = named.on_line(90, vec![event("Job", "x")]);
        assert!(
            std::str::from_utf8(&outcome.events[0].raw)
                .expect("utf8")
                .ends_with(r#""Payload":{"Gap":{"LastIndex":50,"ResumedIndex":90,"Source":"eu"}}}"#)
        );
        assert_eq!(outcome.events[1].source, "eu");
        // Only the first line after a connect can reveal a gap.
        let later = resume.on_line(120, vec![event("Job", "y")]);
        assert!(later.gap.is_none());
    }

    #[test]
    fn gap_markers_can_be_turned_off() {
        let mut resume = Resume::new(
            &default_source(),
            Some(SourceCheckpoint { index: 5, seen: HashMap::new() }),
            StartAt::Oldest,
            false,
        );
        resume.on_connect();
        let outcome = resume.on_line(9, vec![event("Job", "x")]);
        assert!(outcome.gap.is_some());
        assert_eq!(keys(&outcome), ["Job:x"]);
    }

    #[test]
    fn start_now_begins_with_the_newest_batch_nomad_has() {
        let mut resume = Resume::new(&default_source(), None, StartAt::Now, true);
        assert_eq!(resume.request_index(), i64::MAX as u64);
        resume.on_connect();
        assert_eq!(keys(&resume.on_line(100, vec![event("Job", "newest")])), ["Job:newest"]);
        assert_eq!(keys(&resume.on_line(101, vec![event("Job", "new")])), ["Job:new"]);
    }

    #[test]
    fn start_at_an_index_skips_the_tail_nomad_sends_for_a_future_index() {
        let mut resume = Resume::new(&default_source(), None, StartAt::Index(500), true);
        resume.on_connect();
        assert!(resume.on_line(450, vec![event("Job", "tail")]).stale);
        assert_eq!(keys(&resume.on_line(500, vec![event("Job", "a")])), ["Job:a"]);
    }

    #[test]
    fn a_start_index_nomad_no_longer_holds_is_a_gap_and_one_it_holds_is_not() {
        let mut resume = Resume::new(&default_source(), None, StartAt::Index(500), true);
        resume.on_connect();
        let outcome = resume.on_line(520, vec![event("Job", "a")]);
        assert_eq!(outcome.gap, Some(Gap { last_index: 499, resumed_index: 520 }));
        assert_eq!(keys(&outcome), ["NomadRelay:", "Job:a"]);
        let marker = std::str::from_utf8(&outcome.events[0].raw).expect("utf8").to_owned();
        assert!(
            marker.contains("\"LastIndex\":499,\"ResumedIndex\":520,\"Reason\":\"start = 500:"),
            "{marker}"
        );
        // After a reconnect the checkpoint rules.
        resume.on_connect();
        assert!(resume.on_line(520, vec![event("Job", "a")]).gap.is_none());
        // Nomad holding the start index: no gap; a start of 0 or "oldest": never.
        for (start, first) in [(StartAt::Index(500), 500), (StartAt::Index(0), 7), (StartAt::Oldest, 7)] {
            let mut resume = Resume::new(&default_source(), None, start, true);
            resume.on_connect();
            assert!(resume.on_line(first, vec![event("Job", "a")]).gap.is_none(), "{start:?}");
        }
    }

    #[test]
    fn oversized_line_leaves_a_marker_once() {
        let mut resume = Resume::new(
            &default_source(),
            Some(SourceCheckpoint { index: 5, seen: HashMap::new() }),
            StartAt::Oldest,
            true,
        );
        resume.on_connect();
        resume.on_line(5, vec![event("Job", "a")]);
        let outcome =
            resume.on_skipped_line(Some(6), "a line of 1073741824 bytes exceeds nomad.max_line_bytes");
        assert_eq!(outcome.events.len(), 1);
        assert!(
            std::str::from_utf8(&outcome.events[0].raw)
                .expect("utf8")
                .contains("exceeds nomad.max_line_bytes")
        );
        // After a reconnect at 6, the same line is skipped again without a second marker.
        let mut resume =
            Resume::new(&default_source(), Some(resume.checkpoint().clone()), StartAt::Oldest, true);
        resume.on_connect();
        assert!(resume.on_skipped_line(Some(6), "again").events.is_empty());
    }
}

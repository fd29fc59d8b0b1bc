//! The cursor board: where every sink worker stands in the journal, shared with the journal
//! writer so retention never removes an event a sink still needs (unless that sink chose
//! `when_full = "drop_oldest"` and the journal is full), and so a full journal wakes up as
//! soon as a cursor moves.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    next_seq: u64,
    drop_oldest: bool,
}

/// Cursor positions of all sinks.
#[derive(Debug, Default)]
pub struct CursorBoard {
    entries: Mutex<Vec<Entry>>,
    moved: Condvar,
}

/// Whose undelivered records retention keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Every sink's, whatever its `when_full`.
    ForEverySink,
    /// Only those of `when_full = "block"` sinks: `drop_oldest` sinks lose theirs.
    ForBlockingSinks,
}

impl Keep {
    fn counts(self, entry: &Entry) -> bool {
        self == Keep::ForEverySink || !entry.drop_oldest
    }
}

/// A sink's slot on the board.
#[derive(Debug, Clone, Copy)]
pub struct Slot(usize);

impl CursorBoard {
    /// Registers a sink whose next event to deliver is `next_seq`.
    pub fn register(&self, name: &str, next_seq: u64, drop_oldest: bool) -> Slot {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.push(Entry { name: name.to_owned(), next_seq, drop_oldest });
        Slot(entries.len() - 1)
    }

    /// Records that the sink in `slot` now needs events from `next_seq` on.
    pub fn update(&self, slot: Slot, next_seq: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = entries.get_mut(slot.0) {
            entry.next_seq = next_seq;
        }
        drop(entries);
        self.moved.notify_all();
    }

    /// The lowest `next_seq` among the sinks whose records `keep` keeps; `None` if there are
    /// none.
    pub fn min_next_seq(&self, keep: Keep) -> Option<u64> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.iter().filter(|e| keep.counts(e)).map(|e| e.next_seq).min()
    }

    /// The sinks `keep` names whose cursor is below `seq`, with their cursor, for messages.
    pub fn behind(&self, seq: u64, keep: Keep) -> Vec<(String, u64)> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .iter()
            .filter(|e| e.next_seq < seq && keep.counts(e))
            .map(|e| (e.name.clone(), e.next_seq))
            .collect()
    }

    /// Blocks the calling (non-async) thread until a cursor moves or `timeout` passes.
    pub fn wait_moved(&self, timeout: Duration) {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = self.moved.wait_timeout(entries, timeout);
    }

    /// Wakes a thread waiting in [`CursorBoard::wait_moved`] (used at shutdown).
    pub fn wake(&self) {
        self.moved.notify_all();
    }
}

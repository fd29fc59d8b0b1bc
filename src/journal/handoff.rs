//! The way into the journal: a channel from the source to the journal writer, bounded in
//! lines and in bytes, so a run of multi-megabyte lines waits for the journal instead of
//! piling up in memory. Each line's events hold their share of the byte budget until the
//! writer has written them and drops them.

use nomad_relay_sink_api::Envelope;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// One line's new events on their way to the journal, holding their share of the byte
/// budget until the receiver drops them (after writing them).
pub struct Handoff {
    /// The events, in order.
    pub events: Vec<Envelope>,
    _budget: OwnedSemaphorePermit,
}

/// Where the source sends each line's new events: a channel bounded in lines and in bytes,
/// so a run of multi-megabyte lines waits for the journal instead of piling up in memory.
#[derive(Clone)]
pub struct EventSender {
    lines: mpsc::Sender<Handoff>,
    budget: Arc<Semaphore>,
    budget_bytes: u32,
}

/// A channel for at most `lines` lines and about `bytes` bytes of events (a single line
/// larger than that still passes, alone).
pub fn handoff(lines: usize, bytes: u32) -> (EventSender, mpsc::Receiver<Handoff>) {
    let (sender, receiver) = mpsc::channel(lines);
    let budget = Arc::new(Semaphore::new(bytes as usize));
    (EventSender { lines: sender, budget, budget_bytes: bytes }, receiver)
}

impl EventSender {
    /// Sends one line's events, waiting for room; `Err` when the receiver is gone.
    pub async fn send(&self, events: Vec<Envelope>) -> Result<(), ()> {
        let bytes: usize = events.iter().map(|e| e.raw.len()).sum();
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX).clamp(1, self.budget_bytes);
        let budget = self.budget.clone().acquire_many_owned(permits).await.map_err(|_| ())?;
        self.lines.send(Handoff { events, _budget: budget }).await.map_err(|_| ())
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.lines.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn events(bytes: usize) -> Vec<Envelope> {
        vec![Envelope { raw: Bytes::from(vec![b'x'; bytes]), ..Envelope::example() }]
    }

    #[tokio::test]
    async fn the_handoff_holds_back_lines_beyond_its_byte_budget() {
        let (sender, mut receiver) = handoff(100, 1000);
        sender.send(events(600)).await.expect("fits");
        // A second 600-byte line must wait until the first is written (dropped).
        let second = tokio::spawn({
            let sender = sender.clone();
            async move { sender.send(events(600)).await }
        });
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "over budget: waits");
        let first = receiver.recv().await.expect("first line");
        drop(first);
        second.await.expect("task").expect("sent once room was freed");
        // A line larger than the whole budget still passes, alone.
        drop(receiver.recv().await);
        sender.send(events(5000)).await.expect("a huge line passes alone");
    }
}

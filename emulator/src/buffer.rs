//! The event buffer (Nomad's `eventBuffer`): a FIFO of at most `capacity` batches,
//! each with a monotonically increasing sequence number. Subscribers pull items by
//! sequence number, so a slow reader never blocks publishing; a reader whose next
//! item was evicted gets [`Fetch::Dropped`] (`event dropped from buffer`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::event::{Batch, Rendered};

/// One buffered batch with its pre-rendered line.
#[derive(Debug)]
pub(crate) struct Item {
    /// The batch as published.
    pub batch: Batch,
    /// Its rendering, computed once at publish time.
    pub rendered: Rendered,
    /// Bytes sent instead of the rendering, whatever the subscriber asked for (see
    /// `Emulator::publish_hostile_line`).
    pub hostile: Option<Vec<u8>>,
}

/// Result of asking for the item with a given sequence number.
#[derive(Debug)]
pub(crate) enum Fetch {
    /// The item is buffered.
    Item(Arc<Item>),
    /// The item was evicted (or the buffer was emptied): the subscriber fell behind.
    Dropped,
    /// Not published yet.
    Pending,
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Arc<Item>>,
    /// Sequence number of `items[0]`.
    first_seq: u64,
    /// Sequence number the next appended item gets.
    next_seq: u64,
    /// Every item ever appended, when history recording is on.
    history: Vec<Arc<Item>>,
    record_history: bool,
}

/// The shared buffer.
#[derive(Debug)]
pub(crate) struct Buffer {
    inner: Mutex<Inner>,
    capacity: usize,
    /// Carries `next_seq`; changes whenever an item is appended.
    tail: watch::Sender<u64>,
}

impl Buffer {
    /// A buffer holding at most `capacity` batches (`0` means 100, like Nomad).
    pub fn new(capacity: usize) -> Buffer {
        let capacity = if capacity == 0 { 100 } else { capacity };
        Buffer {
            inner: Mutex::new(Inner { record_history: true, ..Inner::default() }),
            capacity,
            tail: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends one batch, evicting from the head while over capacity.
    pub fn append(&self, batch: Batch) {
        self.append_item(batch, None);
    }

    /// Appends an item whose line is `hostile`, sent as it is.
    pub fn append_hostile(&self, index: u64, hostile: Vec<u8>) {
        self.append_item(Batch { index, events: Vec::new() }, Some(hostile));
    }

    fn append_item(&self, batch: Batch, hostile: Option<Vec<u8>>) {
        let rendered = Rendered::new(&batch);
        let item = Arc::new(Item { batch, rendered, hostile });
        let next = {
            let mut inner = self.lock();
            if inner.record_history {
                inner.history.push(Arc::clone(&item));
            }
            inner.items.push_back(item);
            inner.next_seq += 1;
            while inner.items.len() > self.capacity {
                inner.items.pop_front();
                inner.first_seq += 1;
            }
            inner.next_seq
        };
        self.tail.send_replace(next);
    }

    /// Empties the buffer (snapshot restore / restart). Sequence numbers continue.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.items.clear();
        inner.first_seq = inner.next_seq;
    }

    /// Sequence number of the first item a new subscription for `index` gets
    /// (`eventBuffer.StartAtClosest`): the head for 0 or a too-old index, the first
    /// item with `Index >= index`, otherwise the tail; `next_seq` if empty.
    pub fn start_seq(&self, index: u64) -> u64 {
        let inner = self.lock();
        if inner.items.is_empty() {
            return inner.next_seq;
        }
        if index == 0 {
            return inner.first_seq;
        }
        let pos = inner.items.iter().position(|it| it.batch.index >= index).unwrap_or(inner.items.len() - 1);
        inner.first_seq + pos as u64
    }

    /// The item with sequence number `seq`.
    pub fn fetch(&self, seq: u64) -> Fetch {
        let inner = self.lock();
        if seq < inner.first_seq {
            return Fetch::Dropped;
        }
        match inner.items.get((seq - inner.first_seq) as usize) {
            Some(item) => Fetch::Item(Arc::clone(item)),
            None => Fetch::Pending,
        }
    }

    /// Waits until the item `seq` is available or dropped.
    pub async fn next(&self, seq: u64, rx: &mut watch::Receiver<u64>) -> Fetch {
        loop {
            rx.borrow_and_update();
            match self.fetch(seq) {
                Fetch::Pending => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                other => return other,
            }
        }
    }

    /// A receiver notified on every append.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tail.subscribe()
    }

    /// Number of buffered items.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Turns history recording on or off (off also frees the recorded history).
    pub fn set_record_history(&self, on: bool) {
        let mut inner = self.lock();
        inner.record_history = on;
        if !on {
            inner.history = Vec::new();
        }
    }

    /// Copies of every batch recorded so far.
    pub fn history(&self) -> Vec<Batch> {
        let items: Vec<Arc<Item>> = self.lock().history.clone();
        items.iter().map(|it| it.batch.clone()).collect()
    }

    /// Copies of the batches currently buffered.
    pub fn buffered(&self) -> Vec<Batch> {
        let items: Vec<Arc<Item>> = self.lock().items.iter().cloned().collect();
        items.iter().map(|it| it.batch.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(index: u64) -> Batch {
        Batch::new(index, Vec::new())
    }

    fn buffer(indexes: &[u64], cap: usize) -> Buffer {
        let buf = Buffer::new(cap);
        for &i in indexes {
            buf.append(b(i));
        }
        buf
    }

    fn index_at(buf: &Buffer, seq: u64) -> u64 {
        match buf.fetch(seq) {
            Fetch::Item(it) => it.batch.index,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn start_at_closest_table() {
        let buf = buffer(&[10, 20, 20, 30], 100);
        assert_eq!(buf.start_seq(0), 0);
        assert_eq!(buf.start_seq(5), 0);
        assert_eq!(buf.start_seq(10), 0);
        assert_eq!(buf.start_seq(20), 1);
        assert_eq!(buf.start_seq(15), 1);
        assert_eq!(buf.start_seq(25), 3);
        assert_eq!(buf.start_seq(30), 3);
        assert_eq!(buf.start_seq(31), 3);
        assert_eq!(index_at(&buf, buf.start_seq(1000)), 30);
    }

    #[test]
    fn eviction_and_dropped() {
        let buf = buffer(&[1, 2, 3, 4, 5], 3);
        assert_eq!(buf.len(), 3);
        assert!(matches!(buf.fetch(1), Fetch::Dropped));
        assert_eq!(index_at(&buf, 2), 3);
        assert!(matches!(buf.fetch(5), Fetch::Pending));
        assert_eq!(buf.start_seq(1), 2);
        assert_eq!(buf.history().len(), 5);
        buf.clear();
        assert_eq!(buf.start_seq(0), 5);
        assert!(matches!(buf.fetch(4), Fetch::Dropped));
    }

    #[test]
    fn zero_capacity_means_100() {
        let buf = buffer(&(1..=150).collect::<Vec<_>>(), 0);
        assert_eq!(buf.len(), 100);
    }
}

//! Bounded queues with a named back-pressure policy, so no caller of the host link ever blocks.
//!
//! * [`DropOldest`]: a full queue discards its oldest item to make room (predictions, status,
//!   events: the newest value is the one worth keeping).
//! * [`RejectNewest`]: a full queue refuses the new item and tells the caller (commands: the
//!   caller must know that a display/LED or privileged command was not queued).
//!
//! Both are crossbeam channels underneath; the sending side keeps a receiver clone so it can pop
//! the oldest item itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// Sending half of a bounded queue that drops its oldest item when full.
#[derive(Debug)]
pub struct DropOldest<T> {
    tx: Sender<T>,
    evict: Receiver<T>,
    dropped: Arc<AtomicU64>,
}

impl<T> Clone for DropOldest<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            evict: self.evict.clone(),
            dropped: self.dropped.clone(),
        }
    }
}

/// Whether [`DropOldest::push`] had to evict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// There was room.
    Queued,
    /// The oldest queued item was discarded to make room.
    ReplacedOldest,
}

impl<T> DropOldest<T> {
    /// A queue holding at most `capacity` items (at least 1), and its receiving end.
    pub fn new(capacity: usize) -> (Self, Receiver<T>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        (
            Self {
                tx,
                evict: rx.clone(),
                dropped: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }

    /// Queues `item`, never blocking; evicts the oldest item if the queue is full.
    pub fn push(&self, item: T) -> Pushed {
        let mut item = item;
        let mut evicted = false;
        // Each round either queues the item or removes one queued item, and another producer
        // can only refill so often; four rounds are plenty, after which the item itself is
        // the one dropped (still "drop oldest" in effect, the queue holds newer items).
        for _ in 0..4 {
            match self.tx.try_send(item) {
                Ok(()) => {
                    return if evicted {
                        Pushed::ReplacedOldest
                    } else {
                        Pushed::Queued
                    };
                }
                // The queue holds a receiver itself, so the channel never disconnects.
                Err(TrySendError::Full(back) | TrySendError::Disconnected(back)) => {
                    item = back;
                    if self.evict.try_recv().is_ok() {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        evicted = true;
                    }
                }
            }
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        Pushed::ReplacedOldest
    }

    /// Items discarded by this queue so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Sending half of a bounded queue that refuses new items when full.
#[derive(Debug)]
pub struct RejectNewest<T> {
    tx: Sender<T>,
    rejected: Arc<AtomicU64>,
}

impl<T> Clone for RejectNewest<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            rejected: self.rejected.clone(),
        }
    }
}

impl<T> RejectNewest<T> {
    /// A queue holding at most `capacity` items (at least 1), and its receiving end.
    pub fn new(capacity: usize) -> (Self, Receiver<T>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        (
            Self {
                tx,
                rejected: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }

    /// Queues `item`, never blocking; gives it back if the queue is full or closed.
    pub fn push(&self, item: T) -> Result<(), TrySendError<T>> {
        self.tx.try_send(item).inspect_err(|_| {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Items refused so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_oldest_keeps_the_newest() {
        let (q, rx) = DropOldest::new(3);
        for i in 0..3 {
            assert_eq!(q.push(i), Pushed::Queued);
        }
        assert_eq!(q.push(3), Pushed::ReplacedOldest);
        assert_eq!(q.push(4), Pushed::ReplacedOldest);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(q.dropped(), 2);
    }

    #[test]
    fn reject_newest_refuses_when_full() {
        let (q, rx) = RejectNewest::new(2);
        q.push(1).unwrap();
        q.push(2).unwrap();
        assert!(matches!(q.push(3), Err(TrySendError::Full(3))));
        assert_eq!(q.rejected(), 1);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![1, 2]);
        drop(rx);
        assert!(matches!(q.push(4), Err(TrySendError::Disconnected(4))));
    }
}

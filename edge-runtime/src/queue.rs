//! The inference queue: bounded, and when full it drops the OLDEST clip to make room.
//!
//! Why drop-oldest: capture must never wait for the model, and a sonographer needs the newest
//! picture of the heart, not a backlog. With capacity `c`, the clip the model starts on is at most
//! `c` clips old, so the capture-to-prediction latency is bounded by `(c + 1)` inference times
//! plus one clip interval and cannot grow however long the model lags. Every dropped clip is
//! counted ([`DropOldestQueue::dropped`]) and reported.
//!
//! `push` never blocks (it takes a short mutex only); `pop` blocks until an item arrives or the
//! queue is closed and empty.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

/// A bounded multi-producer, multi-consumer queue that evicts its oldest item when full.
#[derive(Debug)]
pub struct DropOldestQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    capacity: usize,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    pushed: u64,
    dropped: u64,
    max_len: usize,
}

/// What happened to a push.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed<T> {
    /// Queued without evicting anything.
    Queued,
    /// Queued; this older item was evicted to make room.
    Evicted(T),
    /// The queue is closed; the item is handed back.
    Closed(T),
}

impl<T> DropOldestQueue<T> {
    /// A queue holding at most `capacity` (>= 1) items.
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity.max(1)),
                closed: false,
                pushed: 0,
                dropped: 0,
                max_len: 0,
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an item, evicting the oldest when full. Never blocks on the consumer.
    pub fn push(&self, item: T) -> Pushed<T> {
        let mut s = self.lock();
        if s.closed {
            return Pushed::Closed(item);
        }
        let evicted = if s.items.len() >= self.capacity {
            s.dropped += 1;
            s.items.pop_front()
        } else {
            None
        };
        s.items.push_back(item);
        s.pushed += 1;
        s.max_len = s.max_len.max(s.items.len());
        drop(s);
        self.ready.notify_one();
        match evicted {
            Some(old) => Pushed::Evicted(old),
            None => Pushed::Queued,
        }
    }

    /// The oldest item; blocks while the queue is empty and open. `None` once closed and empty.
    pub fn pop(&self) -> Option<T> {
        let mut s = self.lock();
        loop {
            if let Some(item) = s.items.pop_front() {
                return Some(item);
            }
            if s.closed {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The oldest item if there is one, without waiting.
    pub fn try_pop(&self) -> Option<T> {
        self.lock().items.pop_front()
    }

    /// No more pushes; consumers drain what is left and then get `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Items evicted so far.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Items pushed so far (including those later evicted).
    pub fn pushed(&self) -> u64 {
        self.lock().pushed
    }

    /// The longest the queue has been.
    pub fn max_len(&self) -> usize {
        self.lock().max_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_oldest_when_full_and_counts() {
        let q = DropOldestQueue::new(2);
        assert_eq!(q.push(1), Pushed::Queued);
        assert_eq!(q.push(2), Pushed::Queued);
        assert_eq!(q.push(3), Pushed::Evicted(1));
        assert_eq!(q.push(4), Pushed::Evicted(2));
        assert_eq!(q.dropped(), 2);
        assert_eq!(q.pushed(), 4);
        assert_eq!(q.max_len(), 2);
        assert_eq!(q.pop(), Some(3));
        assert_eq!(q.pop(), Some(4));
        assert_eq!(q.try_pop(), None);
    }

    #[test]
    fn close_drains_then_ends() {
        let q = DropOldestQueue::new(3);
        q.push("a");
        q.close();
        assert_eq!(q.push("b"), Pushed::Closed("b"));
        assert_eq!(q.pop(), Some("a"));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn pop_wakes_on_push_from_another_thread() {
        let q = std::sync::Arc::new(DropOldestQueue::new(1));
        let q2 = q.clone();
        let consumer = std::thread::spawn(move || q2.pop());
        q.push(7u32);
        assert_eq!(consumer.join().unwrap(), Some(7));
    }

    #[test]
    fn capacity_is_at_least_one() {
        let q = DropOldestQueue::new(0);
        assert_eq!(q.capacity(), 1);
        q.push(1);
        assert_eq!(q.push(2), Pushed::Evicted(1));
    }
}

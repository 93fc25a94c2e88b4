//! The replay ring: a feed's most recent events, in id order, and how far
//! back they reach.

use super::Event;
use crate::cursor::Cursor;
use std::collections::VecDeque;
use std::sync::Arc;

/// The last `size` events of a feed.
pub(super) struct Ring {
    events: VecDeque<Arc<Event>>,
    /// Every event after this cursor is in the ring.
    floor: Cursor,
    size: usize,
}

impl Ring {
    /// An empty ring of `size` events whose feed starts at `head`.
    pub(super) fn new(size: usize, head: Cursor) -> Ring {
        Ring {
            events: VecDeque::new(),
            floor: head,
            size,
        }
    }

    /// Adds a batch's events; `head` is the feed's cursor after it.
    pub(super) fn extend(&mut self, events: &[Arc<Event>], head: Cursor) {
        self.events.extend(events.iter().cloned());
        while self.events.len() > self.size {
            if let Some(evicted) = self.events.pop_front() {
                self.floor = Cursor::At(evicted.id);
            }
        }
        if self.events.is_empty() {
            self.floor = head;
        }
    }

    /// The events after `cursor`, in order, or `None` when the ring does
    /// not reach back that far. The one place that answers "what comes
    /// after this cursor" from memory.
    pub(super) fn after(&self, cursor: Cursor) -> Option<impl Iterator<Item = &Arc<Event>>> {
        if cursor < self.floor {
            return None;
        }
        let first = self.events.partition_point(|e| Cursor::At(e.id) <= cursor);
        Some(self.events.range(first..))
    }
}

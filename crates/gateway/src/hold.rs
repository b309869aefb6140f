//! Holding requests while their route has no ready replica: a bounded count across all
//! routes, and a `Notify` that every route-table update pulses.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug)]
pub(crate) struct Holds {
    held: Arc<AtomicUsize>,
    limit: usize,
    pub updated: Notify,
}

/// One place in the hold queue, given back when the request stops waiting.
#[derive(Debug)]
pub(crate) struct HeldSlot {
    held: Arc<AtomicUsize>,
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Holds {
    pub fn new(limit: usize) -> Holds {
        Holds {
            held: Arc::new(AtomicUsize::new(0)),
            limit,
            updated: Notify::new(),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Requests waiting now.
    pub fn count(&self) -> usize {
        self.held.load(Ordering::Relaxed).min(self.limit)
    }

    /// A place in the queue, or `None` when `limit` requests already wait.
    pub fn try_enter(&self) -> Option<HeldSlot> {
        let previous = self.held.fetch_add(1, Ordering::Relaxed);
        let slot = HeldSlot {
            held: self.held.clone(),
        };
        (previous < self.limit).then_some(slot)
    }

    /// Wakes every held request so that each looks at the new table.
    pub fn wake_all(&self) {
        self.updated.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_bounded_and_slots_come_back() {
        let holds = Holds::new(2);
        let first = holds.try_enter().expect("first place");
        let _second = holds.try_enter().expect("second place");
        assert!(holds.try_enter().is_none(), "a third request is refused");
        drop(first);
        assert!(holds.try_enter().is_some(), "a freed place is reused");
    }

    #[test]
    fn zero_limit_holds_nothing() {
        assert!(Holds::new(0).try_enter().is_none());
    }
}

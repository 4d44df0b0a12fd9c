//! A single-threaded "something changed" signal for the tasks of one
//! executor (a shard's long polls, acks=all waiters, shutdown, the
//! coordinator's loops): [`LocalEvent::notify`] wakes every task waiting on
//! it. The one copy of this primitive.
//!
//! A waiter that goes away before the next `notify` (a long poll that timed
//! out, a connection that closed while waiting for shutdown) takes its waker
//! out with it, so the memory an event holds is bounded by the tasks waiting
//! on it now, not by how many ever waited.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct LocalEvent {
    generation: Cell<u64>,
    waiters: RefCell<Slots>,
}

/// Wakers by slot; free slots are reused.
#[derive(Default)]
struct Slots {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
    used: usize,
}

impl Slots {
    fn insert(&mut self, w: Waker) -> usize {
        self.used += 1;
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(w);
                i
            }
            None => {
                self.slots.push(Some(w));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) {
        if self.slots.get_mut(i).and_then(Option::take).is_some() {
            self.used -= 1;
            self.free.push(i);
        }
        if self.used == 0 {
            // Give the memory back once nobody waits.
            self.slots = Vec::new();
            self.free = Vec::new();
        }
    }
}

impl LocalEvent {
    /// Wakes every listener created before this call.
    pub fn notify(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        let slots = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in slots.slots.into_iter().flatten() {
            w.wake();
        }
    }

    /// A future that completes at the next `notify`. Create it before
    /// checking the condition it waits for, so no wake-up is lost.
    pub fn listen(&self) -> Listen<'_> {
        self.wait(self.generation())
    }

    /// How many times `notify` was called (wrapping).
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// A future that completes once `notify` was called after the
    /// generation was `seen` (at once if it already was).
    pub fn wait(&self, seen: u64) -> Listen<'_> {
        Listen {
            ev: self,
            generation: seen,
            slot: None,
        }
    }

    /// Tasks waiting now (for tests and metrics).
    pub fn waiters(&self) -> usize {
        self.waiters.borrow().used
    }
}

pub struct Listen<'a> {
    ev: &'a LocalEvent,
    generation: u64,
    /// Where this listener's waker is, while registered in `generation`.
    slot: Option<usize>,
}

impl Future for Listen<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.ev.generation.get() != self.generation {
            // `notify` emptied the slots: nothing of ours is left there.
            self.slot = None;
            return Poll::Ready(());
        }
        let mut ws = self.ev.waiters.borrow_mut();
        match self.slot {
            Some(i) => {
                let w = &mut ws.slots[i];
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
            }
            None => {
                let i = ws.insert(cx.waker().clone());
                drop(ws);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Listen<'_> {
    fn drop(&mut self) {
        // A slot of an older generation was emptied by `notify` and may
        // belong to another listener now.
        if let Some(i) = self.slot {
            if self.ev.generation.get() == self.generation {
                self.ev.waiters.borrow_mut().remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(f: &mut Listen<'_>, waker: &Waker) -> Poll<()> {
        Pin::new(f).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn waiters_that_go_away_leave_nothing_behind() {
        let ev = LocalEvent::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        // A long-lived waiter (like a shard's shutdown listener) and a
        // million short ones that give up (like timed-out long polls).
        let mut stays = ev.listen();
        assert!(poll(&mut stays, &waker).is_pending());
        for _ in 0..1_000_000 {
            let mut l = ev.listen();
            assert!(poll(&mut l, &waker).is_pending());
            assert!(poll(&mut l, &waker).is_pending());
        }
        assert_eq!(ev.waiters(), 1);
        assert!(ev.waiters.borrow().slots.len() <= 2);
        ev.notify();
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "only the live waiter is woken"
        );
        assert!(poll(&mut stays, &waker).is_ready());
        assert_eq!(ev.waiters(), 0);
    }

    #[test]
    fn a_waiter_of_an_old_generation_does_not_free_a_new_one() {
        let ev = LocalEvent::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut old = ev.listen();
        assert!(poll(&mut old, &waker).is_pending());
        ev.notify();
        // A new waiter takes the slot the old one had.
        let mut new = ev.listen();
        assert!(poll(&mut new, &waker).is_pending());
        drop(old);
        assert_eq!(ev.waiters(), 1);
        ev.notify();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert!(poll(&mut new, &waker).is_ready());
    }

    #[test]
    fn wait_since_a_generation_already_passed_is_ready() {
        let ev = LocalEvent::default();
        let seen = ev.generation();
        ev.notify();
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        assert!(poll(&mut ev.wait(seen), &waker).is_ready());
        assert!(poll(&mut ev.listen(), &waker).is_pending());
        assert_eq!(ev.waiters(), 0, "dropped at the end of the statement");
    }
}

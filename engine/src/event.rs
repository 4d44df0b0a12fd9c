//! A tiny single-threaded notification primitive for tasks of one executor
//! (also used by the server for long polls and shutdown).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct LocalEvent {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl LocalEvent {
    /// Wakes every listener created before this call.
    pub fn notify(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        for w in self.wakers.take() {
            w.wake();
        }
    }

    /// A future that completes at the next `notify`. Create it before
    /// checking the condition it waits for, so no wake-up is lost.
    pub fn listen(&self) -> Listen<'_> {
        Listen {
            ev: self,
            generation: self.generation.get(),
        }
    }
}

pub struct Listen<'a> {
    ev: &'a LocalEvent,
    generation: u64,
}

impl Future for Listen<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.ev.generation.get() != self.generation {
            return Poll::Ready(());
        }
        let mut w = self.ev.wakers.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

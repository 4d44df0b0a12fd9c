//! A lock for the tasks of one executor that is granted strictly in the
//! order `lock` was called.
//!
//! glommio's `Semaphore` is not: when a permit is released it wakes the
//! first waiter but leaves the unit free until that waiter runs, and a task
//! that calls `acquire` in between takes it. For a log's appends that means
//! a later produce request can get its offsets before an earlier one that
//! was waiting: records of one producer reordered in a partition. Here a
//! caller takes a ticket synchronously when it calls [`FifoLock::lock`],
//! and tickets are served in order.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct FifoLock {
    next: Cell<u64>,
    serving: Cell<u64>,
    waiters: RefCell<BTreeMap<u64, Waker>>,
    /// Tickets whose future was dropped before it got the lock.
    abandoned: RefCell<BTreeSet<u64>>,
}

impl FifoLock {
    /// Takes a ticket now; the future completes when it is served.
    pub fn lock(&self) -> Acquire<'_> {
        let ticket = self.next.get();
        self.next.set(ticket + 1);
        Acquire {
            lock: self,
            ticket,
            done: false,
        }
    }

    /// Whether the lock is held or waited for.
    pub fn is_busy(&self) -> bool {
        self.serving.get() != self.next.get()
    }

    /// Serves the next ticket that is still wanted.
    fn advance(&self) {
        let mut s = self.serving.get() + 1;
        {
            let mut gone = self.abandoned.borrow_mut();
            while gone.remove(&s) {
                s += 1;
            }
        }
        self.serving.set(s);
        if let Some(w) = self.waiters.borrow_mut().remove(&s) {
            w.wake();
        }
    }
}

pub struct Acquire<'a> {
    lock: &'a FifoLock,
    ticket: u64,
    done: bool,
}

impl<'a> Future for Acquire<'a> {
    type Output = FifoGuard<'a>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<FifoGuard<'a>> {
        if self.lock.serving.get() == self.ticket {
            self.done = true;
            return Poll::Ready(FifoGuard { lock: self.lock });
        }
        self.lock
            .waiters
            .borrow_mut()
            .insert(self.ticket, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.lock.waiters.borrow_mut().remove(&self.ticket);
        if self.lock.serving.get() == self.ticket {
            // Our turn came but we are gone: pass it on.
            self.lock.advance();
        } else {
            self.lock.abandoned.borrow_mut().insert(self.ticket);
        }
    }
}

/// Holds the lock; the next ticket is served when it is dropped.
pub struct FifoGuard<'a> {
    lock: &'a FifoLock,
}

impl Drop for FifoGuard<'_> {
    fn drop(&mut self) {
        self.lock.advance();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// A task polled in between a release and the woken waiter's turn does
    /// not jump the queue (the case glommio's semaphore gets wrong).
    #[test]
    fn the_lock_is_granted_in_call_order_even_to_late_pollers() {
        glommio::LocalExecutor::default().run(async {
            let lock = Rc::new(FifoLock::default());
            let order = Rc::new(RefCell::new(Vec::new()));
            let first = lock.lock().await;
            let mut tasks = Vec::new();
            for i in 0..5 {
                let (lock, order) = (lock.clone(), order.clone());
                tasks.push(glommio::spawn_local(async move {
                    let _g = lock.lock().await;
                    order.borrow_mut().push(i);
                    glommio::yield_if_needed().await;
                    glommio::executor().yield_task_queue_now().await;
                }));
            }
            glommio::executor().yield_task_queue_now().await;
            drop(first);
            // A latecomer calls lock after the release: it must go last.
            let (l2, o2) = (lock.clone(), order.clone());
            let late = glommio::spawn_local(async move {
                let _g = l2.lock().await;
                o2.borrow_mut().push(99);
            });
            for t in tasks {
                t.await;
            }
            late.await;
            assert_eq!(*order.borrow(), vec![0, 1, 2, 3, 4, 99]);
        });
    }

    #[test]
    fn a_dropped_waiter_does_not_stall_the_queue() {
        glommio::LocalExecutor::default().run(async {
            let lock = FifoLock::default();
            let g = lock.lock().await;
            let abandoned = lock.lock();
            let third = lock.lock();
            drop(abandoned);
            drop(g);
            let _g3 = third.await;
            assert!(lock.is_busy());
        });
    }
}

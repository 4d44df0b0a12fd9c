//! Request buffers, recycled. Reading a large request into a fresh
//! allocation costs a page-faulting allocation and a zero-fill of every
//! byte on every request; a recycled buffer costs neither (`resize` only
//! zero-fills bytes the buffer never held).
//!
//! A produce request's batches travel as [`Bytes`] slices of its buffer
//! (into the log's tail cache, to followers, across shards), so the buffer
//! comes back when the last slice is dropped: [`shared`] wraps it in an
//! owner whose `Drop` returns it to the pool of the thread that took it.
//! Dropped on another thread (a batch appended on the shard that owns its
//! partition, not on the one that read the request), it goes into that
//! pool's lock-free return queue, drained by the next [`take`]: otherwise a
//! shard that reads most requests (both of a client's connections landed
//! on it) would allocate and zero-fill a fresh buffer for every request it
//! forwards, while the owner's pool overflowed with buffers it never uses.
//! Each thread (shard) keeps at most [`POOLED`] buffers of at most
//! [`POOLED_MAX`] bytes, plus at most [`POOLED`] in its return queue, so
//! the pool bounds memory by configuration, not by traffic.

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use std::cell::RefCell;
use std::sync::Arc;

/// Buffers a thread keeps for reuse.
pub const POOLED: usize = 16;
/// The largest buffer kept (larger ones are freed).
pub const POOLED_MAX: usize = 4 << 20;

type Returns = Arc<ArrayQueue<Vec<u8>>>;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// Buffers of this thread's pool dropped on other threads.
    static RETURNS: Returns = Arc::new(ArrayQueue::new(POOLED));
}

/// Moves buffers other threads gave back into this thread's pool.
fn collect_returns() {
    let _ = RETURNS.try_with(|q| {
        while let Some(b) = q.pop() {
            give_back(b);
        }
    });
}

/// A buffer of exactly `len` bytes to read a request into (contents
/// unspecified), reused from earlier requests when possible. Of the pooled
/// buffers it takes the one whose length (bytes already written once)
/// covers `len` most tightly, so small requests (fetches) do not shorten
/// the buffers large ones (produces) need: growing a buffer's length
/// zero-fills the new bytes.
pub fn take(len: usize) -> Vec<u8> {
    collect_returns();
    let reused = POOL
        .try_with(|p| {
            let mut pool = p.borrow_mut();
            let covering = pool
                .iter()
                .enumerate()
                .filter(|(_, b)| b.len() >= len)
                .min_by_key(|(_, b)| b.len())
                .map(|(i, _)| i);
            let roomy = || {
                pool.iter()
                    .enumerate()
                    .filter(|(_, b)| b.capacity() >= len)
                    .max_by_key(|(_, b)| b.len())
                    .map(|(i, _)| i)
            };
            covering.or_else(roomy).map(|i| pool.swap_remove(i))
        })
        .ok()
        .flatten();
    let mut b = reused.unwrap_or_else(|| Vec::with_capacity(len.max(64 << 10)));
    b.resize(len, 0);
    b
}

/// Gives a buffer back for reuse (kept only within the pool's bounds).
pub fn give_back(b: Vec<u8>) {
    if b.capacity() > POOLED_MAX {
        return;
    }
    // During thread teardown the pool is gone: the buffer is just freed.
    let _ = POOL.try_with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOLED {
            pool.push(b);
        }
    });
}

/// A request buffer as shared bytes: slices of it may outlive the request,
/// and the buffer returns to the pool once the last one is dropped.
pub fn shared(b: Vec<u8>) -> Bytes {
    match RETURNS.try_with(Arc::clone) {
        Ok(home) => Bytes::from_owner(Recycled(b, Some(home))),
        Err(_) => Bytes::from_owner(Recycled(b, None)),
    }
}

/// A shared request buffer and the return queue of the pool it came from.
struct Recycled(Vec<u8>, Option<Returns>);

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        let b = std::mem::take(&mut self.0);
        let at_home = |home: &Returns| {
            RETURNS
                .try_with(|mine| Arc::ptr_eq(mine, home))
                .unwrap_or(false)
        };
        match self.1.take() {
            // Another thread's buffer: back to its pool (freed if that
            // pool's queue is full).
            Some(home) if !at_home(&home) && b.capacity() <= POOLED_MAX => {
                let _ = home.push(b);
            }
            _ => give_back(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_when_its_last_slice_is_dropped() {
        let b = take(100_000);
        let ptr = b.as_ptr();
        let bytes = shared(b);
        let slice = bytes.slice(10..20);
        drop(bytes);
        // Still held by the slice: a new buffer is another allocation.
        let other = take(100_000);
        assert_ne!(other.as_ptr(), ptr);
        give_back(other);
        drop(slice);
        // Both are pooled now; one of them is the first buffer.
        let a = take(100_000);
        let c = take(100_000);
        assert!(a.as_ptr() == ptr || c.as_ptr() == ptr);
    }

    #[test]
    fn small_requests_leave_the_large_buffers_to_large_ones() {
        POOL.with(|p| p.borrow_mut().clear());
        let (mega, kilo) = (take(1 << 20), take(64 << 10));
        give_back(mega);
        give_back(kilo);
        // A small request takes the buffer that covers it most tightly...
        let small = take(100);
        assert_eq!(small.capacity(), 64 << 10);
        give_back(small);
        // ...so the megabyte buffer still has its length: a large request
        // needs no zero-fill, and gets it.
        let large = take(1 << 20);
        assert!(large.capacity() >= 1 << 20);
        assert_eq!(POOL.with(|p| p.borrow()[0].len()), 100);
        give_back(large);
    }

    #[test]
    fn a_buffer_dropped_on_another_thread_returns_to_its_own_pool() {
        POOL.with(|p| p.borrow_mut().clear());
        let b = take(100_000);
        let ptr = b.as_ptr();
        let slice = shared(b).slice(1..2);
        std::thread::spawn(move || drop(slice))
            .join()
            .expect("the dropping thread ends");
        // Not in the other thread's pool: back here, and taken again.
        let again = take(100_000);
        assert_eq!(again.as_ptr(), ptr);
        give_back(again);
    }

    #[test]
    fn the_pool_is_bounded_in_count_and_size() {
        give_back(Vec::with_capacity(POOLED_MAX + 1));
        assert_eq!(POOL.with(|p| p.borrow().len()), 0);
        for _ in 0..POOLED + 5 {
            give_back(Vec::with_capacity(1024));
        }
        assert_eq!(POOL.with(|p| p.borrow().len()), POOLED);
    }
}

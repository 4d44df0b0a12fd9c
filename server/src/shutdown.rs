//! A shard's shutdown signal.

use levee_core::event::{Listen, LocalEvent};
use std::cell::Cell;

/// The shard's shutdown: a flag and an event that wakes whoever waits on it.
#[derive(Default)]
pub struct Shutdown {
    flag: Cell<bool>,
    event: LocalEvent,
}

impl Shutdown {
    pub fn is_set(&self) -> bool {
        self.flag.get()
    }

    /// Completes when the shutdown starts (create it before checking `is_set`).
    pub fn listen(&self) -> Listen<'_> {
        self.event.listen()
    }

    pub fn trigger(&self) {
        self.flag.set(true);
        self.event.notify();
    }
}

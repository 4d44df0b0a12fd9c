//! Cross-shard work: a typed closure runs on the shard that owns the data
//! (Seastar's `submit_to`), its result comes back to the caller. Between
//! shards it travels over glommio's channel mesh (one bounded SPSC channel
//! per pair of shards); on the same shard it is just called.
//!
//! Order: jobs from one shard to another start on the target in the order
//! they were submitted. A submit only appends to a local queue per target
//! shard (it never waits), and one task per target moves that queue into
//! the mesh channel; the target spawns jobs in arrival order. (Tasks
//! waiting on a full channel themselves could resume in any order, and so
//! reorder pipelined produce requests for one partition.)

use super::{bump, Shard};
use crate::error::{OpError, OpResult};
use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

type Output = Box<dyn Any + Send>;
type Job = Box<dyn FnOnce(Rc<Shard>) -> Pin<Box<dyn Future<Output = Output>>> + Send>;

/// A message between shards.
pub enum MeshMsg {
    /// Run `job` and send its output back to shard `from`.
    Run { id: u64, from: usize, job: Job },
    /// The output of job `id`.
    Done { id: u64, out: Output },
}

pub(super) struct Mesh {
    /// Per target shard: jobs waiting to enter its channel, in order.
    outbox: Vec<Option<LocalSender<MeshMsg>>>,
    pending: RefCell<HashMap<u64, oneshot::Sender<Output>>>,
    next_id: Cell<u64>,
}

impl Mesh {
    /// Must be called on the shard's executor: it starts one task per
    /// other shard that feeds that shard's channel from its queue.
    pub(super) fn new(senders: Option<Senders<MeshMsg>>) -> Mesh {
        let senders = senders.map(Rc::new);
        let mut outbox = Vec::new();
        if let Some(s) = &senders {
            for peer in 0..s.nr_consumers() {
                if peer == s.peer_id() {
                    outbox.push(None);
                    continue;
                }
                let (tx, rx) = local_channel::new_unbounded::<MeshMsg>();
                let s = s.clone();
                glommio::spawn_local(async move {
                    while let Some(msg) = rx.recv().await {
                        if s.send_to(peer, msg).await.is_err() {
                            // The peer is gone: dropping the job drops its
                            // reply sender, so its caller learns of it.
                            return;
                        }
                    }
                })
                .detach();
                outbox.push(Some(tx));
            }
        }
        Mesh {
            outbox,
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
        }
    }
}

impl Shard {
    /// Runs `job` on shard `owner` and returns its result: directly when
    /// `owner` is this shard, otherwise as a message over the mesh.
    pub fn submit_to<T, F, Fut>(
        self: &Rc<Self>,
        owner: usize,
        job: F,
    ) -> impl Future<Output = OpResult<T>> + 'static
    where
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = OpResult<T>> + 'static,
        T: Send + 'static,
    {
        let this = self.clone();
        async move {
            if owner == this.id {
                return job(this).await;
            }
            let Some(Some(outbox)) = this.mesh.outbox.get(owner) else {
                return Err(OpError::new(
                    levee_schemas::proto::ErrorCode::Unknown,
                    format!("shard {owner} is unreachable from shard {}", this.id),
                ));
            };
            let id = this.mesh.next_id.get();
            this.mesh.next_id.set(id + 1);
            let (tx, rx) = oneshot::channel();
            this.mesh.pending.borrow_mut().insert(id, tx);
            bump(&this.metrics.forwarded);
            let job: Job =
                Box::new(move |s| Box::pin(async move { Box::new(job(s).await) as Output }));
            let msg = MeshMsg::Run {
                id,
                from: this.id,
                job,
            };
            if outbox.try_send(msg).is_err() {
                this.mesh.pending.borrow_mut().remove(&id);
                return Err(OpError::shutting_down());
            }
            match rx.await {
                Ok(out) => match out.downcast::<OpResult<T>>() {
                    Ok(res) => *res,
                    // The job above boxes exactly an `OpResult<T>`.
                    Err(_) => Err(OpError::new(
                        levee_schemas::proto::ErrorCode::Unknown,
                        "a shard answered with an unexpected type",
                    )),
                },
                Err(_) => Err(OpError::shutting_down()),
            }
        }
    }

    /// Serves jobs and results arriving from the other shards.
    pub fn serve_mesh(self: &Rc<Self>, mut receivers: Receivers<MeshMsg>) {
        for (_peer, rx) in receivers.streams() {
            let shard = self.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = rx.recv().await {
                    match msg {
                        MeshMsg::Run { id, from, job } => {
                            let s = shard.clone();
                            glommio::spawn_local(async move {
                                let out = job(s.clone()).await;
                                if let Some(Some(outbox)) = s.mesh.outbox.get(from) {
                                    let _ = outbox.try_send(MeshMsg::Done { id, out });
                                }
                            })
                            .detach();
                        }
                        MeshMsg::Done { id, out } => {
                            if let Some(tx) = shard.mesh.pending.borrow_mut().remove(&id) {
                                let _ = tx.send(out);
                            }
                        }
                    }
                }
            })
            .detach();
        }
    }
}

//! The client from glommio (or any other executor, or plain threads).
//!
//! The client's networking runs on tokio. A thread-per-core application on
//! glommio must not block its shard, and tokio's sockets need a tokio
//! reactor, so [`RemoteClient`] runs the client on a small tokio runtime of
//! its own (one worker thread by default, off the application's pinned
//! cores) and hands work to it. Every method returns a future that only
//! waits on a runtime-independent channel, so it can be awaited from a
//! glommio task, from `futures::executor::block_on`, or from tokio itself.
//!
//! ```ignore
//! # fn main() -> levee_client::Result<()> {
//! use levee_client::remote::RemoteClient;
//! let client = RemoteClient::connect(levee_client::ClientConfig::new(["127.0.0.1:9192"]), 1)?;
//! let producer = client.producer(Default::default())?;
//! glommio::LocalExecutorBuilder::default().spawn(move || async move {
//!     let report = producer.send("orders", None, b"hello".to_vec()).await;
//!     println!("{report:?}");
//! }).unwrap().join().unwrap();
//! # Ok(()) }
//! ```

use crate::consumer::{ConsumedRecord, Consumer, ConsumerConfig, StartPosition};
use crate::error::{ClientError, Result};
use crate::producer::{DeliveryReport, Producer, ProducerConfig};
use crate::{Client, ClientConfig};
use std::future::Future;
use std::sync::Arc;

fn stopped() -> ClientError {
    ClientError::Protocol("the client's runtime stopped".into())
}

/// Runs `fut` on `rt` and returns a future for its output that any
/// executor can await.
fn run_on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: impl Future<Output = Result<T>> + Send + 'static,
) -> impl Future<Output = Result<T>> + 'static {
    let (tx, rx) = futures_channel::oneshot::channel();
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    async move { rx.await.unwrap_or_else(|_| Err(stopped())) }
}

/// A [`Client`] running on its own tokio runtime, usable from any executor.
pub struct RemoteClient {
    rt: Arc<tokio::runtime::Runtime>,
    client: Client,
}

impl RemoteClient {
    /// Starts a runtime with `threads` worker threads (at least 1) and
    /// connects. Blocks the calling thread until connected: call it before
    /// entering the application's executor, or from a blocking thread.
    pub fn connect(config: ClientConfig, threads: usize) -> Result<RemoteClient> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("levee-client")
            .enable_all()
            .build()
            .map_err(|e| ClientError::Protocol(format!("cannot start the client runtime: {e}")))?;
        let client = rt.block_on(Client::connect(config))?;
        Ok(RemoteClient {
            rt: Arc::new(rt),
            client,
        })
    }

    /// Runs `f` with the client on the client's runtime; for any [`Client`]
    /// call (admin, metadata, fetch, groups).
    pub fn run<F, Fut, T>(&self, f: F) -> impl Future<Output = Result<T>> + 'static
    where
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let client = self.client.clone();
        run_on(&self.rt, async move { f(client).await })
    }

    /// A batching producer on this client (see [`Producer::new`] for why
    /// it may be refused).
    pub fn producer(&self, config: ProducerConfig) -> Result<RemoteProducer> {
        let _guard = self.rt.enter();
        let producer = Arc::new(Producer::new(self.client.clone(), config)?);
        let (queue, mut rx) = tokio::sync::mpsc::unbounded_channel::<QueuedSend>();
        let p = producer.clone();
        self.rt.spawn(async move {
            while let Some((topic, key, value, tx)) = rx.recv().await {
                match p.send(&topic, key, value).await {
                    Ok(delivery) => {
                        tokio::spawn(async move {
                            let _ = tx.send(delivery.await);
                        });
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            }
        });
        Ok(RemoteProducer {
            rt: self.rt.clone(),
            producer,
            queue,
        })
    }

    /// A consumer on this client.
    pub fn consumer(&self, config: ConsumerConfig) -> RemoteConsumer {
        RemoteConsumer {
            rt: self.rt.clone(),
            consumer: Arc::new(tokio::sync::Mutex::new(Consumer::new(
                self.client.clone(),
                config,
            ))),
        }
    }
}

type QueuedSend = (
    String,
    Option<Vec<u8>>,
    Vec<u8>,
    futures_channel::oneshot::Sender<Result<DeliveryReport>>,
);

/// A [`Producer`] usable from any executor. Cheap to clone.
#[derive(Clone)]
pub struct RemoteProducer {
    rt: Arc<tokio::runtime::Runtime>,
    producer: Arc<Producer>,
    /// Sends, queued in call order by one task on the client's runtime.
    queue: tokio::sync::mpsc::UnboundedSender<QueuedSend>,
}

impl RemoteProducer {
    /// Queues a message and resolves when it is acknowledged (as configured
    /// by `acks`). Sends issued one after another keep their order.
    pub fn send(
        &self,
        topic: &str,
        key: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<DeliveryReport>> + 'static {
        // Queued now, in call order; only the wait is deferred.
        let (tx, rx) = futures_channel::oneshot::channel();
        let _ = self.queue.send((topic.to_string(), key, value, tx));
        async move { rx.await.unwrap_or_else(|_| Err(stopped())) }
    }

    /// Waits until every message queued so far is acknowledged or failed.
    pub fn flush(&self) -> impl Future<Output = Result<()>> + 'static {
        let p = self.producer.clone();
        run_on(&self.rt, async move { p.flush().await })
    }
}

/// A [`Consumer`] usable from any executor. Cheap to clone (clones share
/// the position).
#[derive(Clone)]
pub struct RemoteConsumer {
    rt: Arc<tokio::runtime::Runtime>,
    consumer: Arc<tokio::sync::Mutex<Consumer>>,
}

impl RemoteConsumer {
    /// See [`Consumer::assign`].
    pub fn assign(
        &self,
        topic: &str,
        partitions: Option<Vec<u32>>,
        start: StartPosition,
    ) -> impl Future<Output = Result<Vec<u32>>> + 'static {
        let (c, topic) = (self.consumer.clone(), topic.to_string());
        run_on(&self.rt, async move {
            c.lock().await.assign(&topic, partitions, start).await
        })
    }

    /// See [`Consumer::poll`].
    pub fn poll(&self) -> impl Future<Output = Result<Vec<ConsumedRecord>>> + 'static {
        let c = self.consumer.clone();
        run_on(&self.rt, async move { c.lock().await.poll().await })
    }
}

//! One pipelined connection to a broker: a writer task sends frames in the
//! order requests are made, a reader task hands each response to the caller
//! waiting on its correlation id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use levee_schemas::proto::{
    ErrorCode, Hello, HelloResponse, Request, RequestHeader, Response, ResponseHeader,
};
use levee_schemas::{decode_response, encode_frame, frame_len, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::error::{ClientError, Result};

/// A decoded response: its header and the frame's payload bytes.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The response header (top-level error already checked by [`Connection::call`]).
    pub header: ResponseHeader,
    /// The frame payload (record batches for a fetch), shared without copying.
    pub payload: Bytes,
}

struct Outgoing {
    head: Vec<u8>,
    payload: Vec<Bytes>,
    written: Option<oneshot::Sender<()>>,
}

type Waiter = oneshot::Sender<Result<Reply>>;

struct PendingState {
    waiters: HashMap<u64, Waiter>,
    /// Set once the connection is dead: why.
    closed: Option<String>,
}

struct Shared {
    peer: String,
    pending: Mutex<PendingState>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, PendingState> {
        // A poisoned lock only means another task panicked while holding it;
        // the map itself is still consistent.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection dead and fails every waiting request.
    fn fail_all(&self, reason: String) {
        let waiters = {
            let mut st = self.lock();
            if st.closed.is_none() {
                st.closed = Some(reason.clone());
            }
            std::mem::take(&mut st.waiters)
        };
        for (_, w) in waiters {
            let _ = w.send(Err(ClientError::ConnectionLost {
                peer: self.peer.clone(),
                reason: reason.clone(),
            }));
        }
    }
}

/// A connection to one broker, after the `Hello` handshake. Cheap to share
/// behind an `Arc`; requests from many tasks are pipelined on it.
pub struct Connection {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Outgoing>,
    next_id: AtomicU64,
    hello: HelloResponse,
    max_frame_bytes: usize,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        self.shared
            .fail_all("connection closed by the client".into());
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.shared.peer)
            .field("server", &self.hello.server)
            .finish()
    }
}

fn encode_request(id: u64, request: Request, payload_len: usize) -> Vec<u8> {
    let header = RequestHeader {
        correlation_id: id,
        request,
    };
    let mut b = levee_schemas::planus::Builder::new();
    let mut out = Vec::with_capacity(256);
    encode_frame(&mut b, &header, payload_len, &mut out);
    out
}

async fn read_frame(r: &mut OwnedReadHalf, max: usize) -> std::result::Result<Vec<u8>, String> {
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix).await.map_err(|e| io_reason(&e))?;
    let len = frame_len(prefix, max).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| io_reason(&e))?;
    Ok(body)
}

fn io_reason(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        "the broker closed the connection".into()
    } else {
        e.to_string()
    }
}

fn decode_reply(body: Vec<u8>) -> std::result::Result<Reply, String> {
    let (header, payload_len) = {
        let (h, p) = decode_response(&body).map_err(|e| e.to_string())?;
        (h, p.len())
    };
    let body = Bytes::from(body);
    let payload = body.slice(body.len() - payload_len..);
    Ok(Reply { header, payload })
}

impl Connection {
    /// Connects to `addr`, sets TCP_NODELAY and performs the `Hello`
    /// handshake, all within `timeout`.
    pub async fn connect(
        addr: &str,
        client_id: &str,
        max_frame_bytes: usize,
        timeout: Duration,
    ) -> Result<Connection> {
        let fut = Self::connect_inner(addr, client_id, max_frame_bytes);
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Connect {
                addrs: addr.to_string(),
                reason: format!("no answer within {timeout:?}"),
            }),
        }
    }

    async fn connect_inner(
        addr: &str,
        client_id: &str,
        max_frame_bytes: usize,
    ) -> Result<Connection> {
        let connect_err = |reason: String| ClientError::Connect {
            addrs: addr.to_string(),
            reason,
        };
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| connect_err(e.to_string()))?;
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| addr.to_string());
        let (mut r, mut w) = stream.into_split();
        let head = encode_request(
            0,
            Request::Hello(Box::new(Hello {
                client_id: Some(client_id.to_string()),
                min_version: PROTOCOL_VERSION,
                max_version: PROTOCOL_VERSION,
            })),
            0,
        );
        w.write_all(&head)
            .await
            .map_err(|e| connect_err(format!("sending hello: {e}")))?;
        let body = read_frame(&mut r, max_frame_bytes)
            .await
            .map_err(|e| connect_err(format!("reading hello response: {e}")))?;
        let reply = decode_reply(body)
            .map_err(|e| ClientError::Protocol(format!("hello response: {e}")))?;
        if reply.header.error != ErrorCode::None {
            return Err(ClientError::Server {
                code: reply.header.error,
                message: reply.header.message.unwrap_or_default(),
            });
        }
        let hello = match reply.header.response {
            Some(Response::HelloResponse(h)) => *h,
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected a HelloResponse, got {}",
                    response_name(other.as_ref())
                )))
            }
        };
        if hello.version != PROTOCOL_VERSION {
            return Err(ClientError::Protocol(format!(
                "broker chose protocol version {}, this client speaks {PROTOCOL_VERSION}",
                hello.version
            )));
        }
        let shared = Arc::new(Shared {
            peer,
            pending: Mutex::new(PendingState {
                waiters: HashMap::new(),
                closed: None,
            }),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer_task(w, rx, shared.clone()));
        let reader = tokio::spawn(reader_task(r, shared.clone(), max_frame_bytes));
        tracing::debug!(peer = %shared.peer, server = ?hello.server, "connected");
        Ok(Connection {
            shared,
            tx,
            next_id: AtomicU64::new(1),
            hello,
            max_frame_bytes,
            reader,
        })
    }

    /// The broker's handshake answer (server name, node id, frame limit).
    pub fn hello(&self) -> &HelloResponse {
        &self.hello
    }

    /// The largest frame the broker accepts (from the handshake; falls back
    /// to this client's limit if the broker sent 0).
    pub fn broker_max_frame_bytes(&self) -> usize {
        match self.hello.max_frame_bytes {
            0 => self.max_frame_bytes,
            n => n as usize,
        }
    }

    /// The largest record batch the broker accepts (from the handshake;
    /// `None` from a broker that does not say).
    pub fn broker_max_batch_bytes(&self) -> Option<usize> {
        match self.hello.max_batch_bytes {
            0 => None,
            n => Some(n as usize),
        }
    }

    /// The broker's address.
    pub fn peer(&self) -> &str {
        &self.shared.peer
    }

    /// Whether the connection has failed (a new one is needed).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some() || self.tx.is_closed()
    }

    fn closed_error(&self, reason: &str) -> ClientError {
        ClientError::ConnectionLost {
            peer: self.shared.peer.clone(),
            reason: reason.to_string(),
        }
    }

    /// Sends a request whose payload is `payload` (concatenated) and waits up
    /// to `timeout` for its response. A non-`None` top-level error becomes
    /// `ClientError::Server`.
    pub async fn call(
        &self,
        request: Request,
        payload: Vec<Bytes>,
        timeout: Duration,
        what: &str,
    ) -> Result<Reply> {
        let pending = self.enqueue(request, payload)?;
        self.wait(pending, timeout, what).await
    }

    /// Queues a request for writing, in call order, and returns the handle to
    /// wait for its response with [`Connection::wait`]. Requests queued on one
    /// connection are written, and answered by the broker, in this order.
    pub fn enqueue(&self, request: Request, payload: Vec<Bytes>) -> Result<PendingReply> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let payload_len = payload.iter().map(Bytes::len).sum();
        let head = encode_request(id, request, payload_len);
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared.lock();
            if let Some(reason) = &st.closed {
                return Err(self.closed_error(reason));
            }
            st.waiters.insert(id, tx);
        }
        let out = Outgoing {
            head,
            payload,
            written: None,
        };
        if self.tx.send(out).is_err() {
            self.shared.lock().waiters.remove(&id);
            return Err(self.closed_error("the writer stopped"));
        }
        Ok(PendingReply { id, rx })
    }

    /// Waits up to `timeout` for the response to a request queued with
    /// [`Connection::enqueue`].
    pub async fn wait(
        &self,
        pending: PendingReply,
        timeout: Duration,
        what: &str,
    ) -> Result<Reply> {
        let PendingReply { id, rx } = pending;
        let reply = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err(self.closed_error("the reader stopped")),
            Err(_) => {
                self.shared.lock().waiters.remove(&id);
                return Err(ClientError::Timeout {
                    what: what.to_string(),
                    after: timeout,
                });
            }
        };
        if reply.header.error != ErrorCode::None {
            return Err(ClientError::Server {
                code: reply.header.error,
                message: reply.header.message.clone().unwrap_or_default(),
            });
        }
        Ok(reply)
    }

    /// Sends a request that gets no response (produce with acks=0) and waits
    /// until it has been written to the socket.
    pub async fn send_only(
        &self,
        request: Request,
        payload: Vec<Bytes>,
        timeout: Duration,
        what: &str,
    ) -> Result<()> {
        let written = self.enqueue_only(request, payload)?;
        self.wait_written(written, timeout, what).await
    }

    /// Queues a request that gets no response, in call order.
    pub fn enqueue_only(&self, request: Request, payload: Vec<Bytes>) -> Result<PendingWrite> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let payload_len = payload.iter().map(Bytes::len).sum();
        let head = encode_request(id, request, payload_len);
        if let Some(reason) = &self.shared.lock().closed {
            return Err(self.closed_error(reason));
        }
        let (tx, rx) = oneshot::channel();
        let out = Outgoing {
            head,
            payload,
            written: Some(tx),
        };
        if self.tx.send(out).is_err() {
            return Err(self.closed_error("the writer stopped"));
        }
        Ok(PendingWrite { rx })
    }

    /// Waits until a request queued with [`Connection::enqueue_only`] is written.
    pub async fn wait_written(
        &self,
        pending: PendingWrite,
        timeout: Duration,
        what: &str,
    ) -> Result<()> {
        let rx = pending.rx;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                let reason = self
                    .shared
                    .lock()
                    .closed
                    .clone()
                    .unwrap_or_else(|| "the writer stopped".into());
                Err(self.closed_error(&reason))
            }
            Err(_) => Err(ClientError::Timeout {
                what: what.to_string(),
                after: timeout,
            }),
        }
    }
}

fn response_name(r: Option<&Response>) -> &'static str {
    match r {
        None => "no response body",
        Some(Response::HelloResponse(_)) => "HelloResponse",
        Some(Response::TopicResult(_)) => "TopicResult",
        Some(Response::ListTopicsResponse(_)) => "ListTopicsResponse",
        Some(Response::TopicDescription(_)) => "TopicDescription",
        Some(Response::MetadataResponse(_)) => "MetadataResponse",
        Some(Response::ProduceResponse(_)) => "ProduceResponse",
        Some(Response::FetchResponse(_)) => "FetchResponse",
        Some(Response::ListOffsetsResponse(_)) => "ListOffsetsResponse",
        Some(Response::JoinGroupResponse(_)) => "JoinGroupResponse",
        Some(Response::GroupResult(_)) => "GroupResult",
        Some(Response::OffsetsResponse(_)) => "OffsetsResponse",
        Some(Response::ListGroupsResponse(_)) => "ListGroupsResponse",
        Some(Response::GroupDescription(_)) => "GroupDescription",
        Some(Response::EpochEndOffset(_)) => "EpochEndOffset",
        Some(Response::ClusterStatusResponse(_)) => "ClusterStatusResponse",
        Some(Response::ProducerIdResponse(_)) => "ProducerIdResponse",
        Some(Response::ListTransactionsResponse(_)) => "ListTransactionsResponse",
        Some(Response::TxnCoordinatorResponse(_)) => "TxnCoordinatorResponse",
        Some(Response::TxnResponse(_)) => "TxnResponse",
    }
}

/// A queued request's response, to wait for with [`Connection::wait`].
pub struct PendingReply {
    id: u64,
    rx: oneshot::Receiver<Result<Reply>>,
}

/// A queued request without a response, to wait for with [`Connection::wait_written`].
pub struct PendingWrite {
    rx: oneshot::Receiver<()>,
}

/// Names a response kind for error messages.
pub(crate) fn unexpected(expected: &str, got: Option<&Response>) -> ClientError {
    ClientError::Protocol(format!("expected a {expected}, got {}", response_name(got)))
}

async fn writer_task(
    w: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
) {
    let mut w = BufWriter::with_capacity(64 << 10, w);
    let mut written = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut result = Ok(());
        // Write everything queued, then flush once.
        while let Some(out) = next.take() {
            result = write_one(&mut w, &out).await;
            if let Some(tx) = out.written {
                written.push(tx);
            }
            if result.is_err() {
                break;
            }
            next = rx.try_recv().ok();
        }
        if result.is_ok() {
            result = w.flush().await;
        }
        match result {
            Ok(()) => {
                for tx in written.drain(..) {
                    let _ = tx.send(());
                }
            }
            Err(e) => {
                written.clear();
                shared.fail_all(format!("write failed: {e}"));
                return;
            }
        }
        if shared.lock().closed.is_some() {
            return;
        }
    }
    // Every sender is gone: the connection was dropped.
    let _ = w.shutdown().await;
}

async fn write_one(w: &mut BufWriter<OwnedWriteHalf>, out: &Outgoing) -> std::io::Result<()> {
    w.write_all(&out.head).await?;
    for p in &out.payload {
        w.write_all(p).await?;
    }
    Ok(())
}

async fn reader_task(mut r: OwnedReadHalf, shared: Arc<Shared>, max_frame_bytes: usize) {
    loop {
        let body = match read_frame(&mut r, max_frame_bytes).await {
            Ok(b) => b,
            Err(reason) => {
                shared.fail_all(reason);
                return;
            }
        };
        let reply = match decode_reply(body) {
            Ok(r) => r,
            Err(reason) => {
                // The correlation id is unknown: no response can be trusted
                // to match its request any more.
                shared.fail_all(format!("undecodable response: {reason}"));
                return;
            }
        };
        let waiter = shared.lock().waiters.remove(&reply.header.correlation_id);
        match waiter {
            Some(w) => {
                let _ = w.send(Ok(reply));
            }
            None => tracing::debug!(
                id = reply.header.correlation_id,
                "response for a request nobody waits for (timed out?)"
            ),
        }
    }
}

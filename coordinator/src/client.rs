//! Blocking client for the coordinator RPC, for the CLI and for brokers
//! that are not coordinators. It uses `std::net` only, so it works from a
//! plain thread; from tokio, call it inside `spawn_blocking`.

use crate::error::CoordError;
use crate::state::{Command, Metadata, TopicConfig};
use crate::wire::{self, Applied, Request, Response, Status};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tracing::debug;

fn unreachable(addr: &str, e: impl std::fmt::Display) -> CoordError {
    CoordError::Unreachable {
        addr: addr.to_string(),
        reason: e.to_string(),
    }
}

/// Idle connections kept per coordinator address. Brokers heartbeat and
/// watch metadata continuously; a few kept connections spare the
/// coordinators (and the brokers' ephemeral ports) a connection per
/// request. A coordinator serves any number of requests on a connection,
/// one after the other.
const MAX_IDLE_PER_ADDR: usize = 4;

/// Process-wide idle connections, by the address they were opened to. A
/// connection is in here only between two complete exchanges, so it is
/// always at a frame boundary; one that failed or timed out is dropped.
fn idle_pool() -> &'static Mutex<HashMap<String, Vec<TcpStream>>> {
    static POOL: OnceLock<Mutex<HashMap<String, Vec<TcpStream>>>> = OnceLock::new();
    POOL.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The most recently used idle connection to `addr` that still looks
/// open; those the coordinator closed meanwhile are dropped.
fn take_idle(addr: &str) -> Option<TcpStream> {
    loop {
        let s = {
            let mut pool = idle_pool().lock().unwrap_or_else(|p| p.into_inner());
            pool.get_mut(addr)?.pop()?
        };
        if still_open(&s) {
            return Some(s);
        }
        debug!(
            addr,
            "dropping an idle coordinator connection the peer closed"
        );
    }
}

/// Keeps `s` for the next request to `addr`, unless enough are kept.
fn put_idle(addr: &str, s: TcpStream) {
    let mut pool = idle_pool().lock().unwrap_or_else(|p| p.into_inner());
    let idle = pool.entry(addr.to_string()).or_default();
    if idle.len() < MAX_IDLE_PER_ADDR {
        idle.push(s);
    }
}

/// Whether an idle connection can carry a request: the peer has neither
/// closed it nor sent anything unasked (nothing is readable yet).
fn still_open(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    let open = matches!(s.peek(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock);
    s.set_nonblocking(false).is_ok() && open
}

/// Whether an I/O error means the peer had closed (or reset) the connection.
fn peer_closed(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::NotConnected
            | ErrorKind::UnexpectedEof
    )
}

/// How one exchange on a connection failed.
struct Failed {
    error: CoordError,
    /// The peer had closed the connection before answering anything:
    /// writing the request failed, or the reply ended before its first byte.
    closed_before_reply: bool,
}

/// Sends `frame` on `s` and reads one response (a `Response::Error`
/// included) with `timeout` for each read and write.
fn exchange(
    addr: &str,
    s: &mut TcpStream,
    frame: &[u8],
    timeout: Duration,
) -> Result<Response, Failed> {
    let fail = |e: CoordError| Failed {
        error: e,
        closed_before_reply: false,
    };
    // A zero timeout means none to std; these are at least a millisecond.
    let timeout = timeout.max(Duration::from_millis(1));
    s.set_read_timeout(Some(timeout))
        .and_then(|_| s.set_write_timeout(Some(timeout)))
        .map_err(|e| fail(unreachable(addr, e)))?;
    if let Err(e) = s.write_all(frame) {
        return Err(Failed {
            closed_before_reply: peer_closed(&e),
            error: unreachable(addr, e),
        });
    }
    let mut len = [0u8; 4];
    let first = loop {
        match s.read(&mut len) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    match first {
        Ok(0) => {
            return Err(Failed {
                error: unreachable(addr, "connection closed by the coordinator"),
                closed_before_reply: true,
            })
        }
        Ok(n) => s
            .read_exact(&mut len[n..])
            .map_err(|e| fail(unreachable(addr, e)))?,
        Err(e) => {
            return Err(Failed {
                closed_before_reply: peer_closed(&e),
                error: unreachable(addr, e),
            })
        }
    }
    let len = wire::check_len(u32::from_le_bytes(len))
        .ok_or_else(|| fail(CoordError::Protocol("bad frame length".into())))?;
    let mut tag = [0u8; 1];
    s.read_exact(&mut tag)
        .map_err(|e| fail(unreachable(addr, e)))?;
    if tag[0] != wire::TAG_RESPONSE {
        return Err(fail(CoordError::Protocol(format!(
            "unexpected frame tag {}",
            tag[0]
        ))));
    }
    // Read as it arrives: a bad peer declaring a large frame gets no large
    // buffer up front.
    let mut payload = Vec::new();
    wire::read_chunked(s, len - 1, &mut payload).map_err(|e| fail(unreachable(addr, e)))?;
    serde_json::from_slice::<Response>(&payload)
        .map_err(|e| fail(CoordError::Protocol(e.to_string())))
}

fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, CoordError> {
    let sock: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|e| unreachable(addr, e))?
        .next()
        .ok_or_else(|| unreachable(addr, "address resolves to nothing"))?;
    let s = TcpStream::connect_timeout(&sock, timeout.max(Duration::from_millis(1)))
        .map_err(|e| unreachable(addr, e))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

fn into_result(resp: Response) -> Result<Response, CoordError> {
    match resp {
        Response::Error(e) => Err(e),
        r => Ok(r),
    }
}

/// Sends one request to `addr` and waits at most `timeout` for the answer.
/// A `Response::Error` is returned as `Err`.
///
/// It goes on an idle connection to `addr` if there is one, else on a new
/// one, which is kept for later requests once the answer is read (see
/// [`MAX_IDLE_PER_ADDR`]). A connection that fails or times out is closed.
pub fn request(addr: &str, req: &Request, timeout: Duration) -> Result<Response, CoordError> {
    let deadline = Instant::now() + timeout;
    let body = serde_json::to_vec(req).map_err(|e| CoordError::Protocol(e.to_string()))?;
    if body.len() + 1 > wire::MAX_REQUEST_FRAME {
        // The coordinator would close the connection without reading it.
        return Err(CoordError::Invalid(format!(
            "request of {} bytes exceeds the {}-byte request frame limit",
            body.len() + 1,
            wire::MAX_REQUEST_FRAME
        )));
    }
    let frame = wire::frame(wire::TAG_REQUEST, &body);
    if let Some(mut s) = take_idle(addr) {
        match exchange(addr, &mut s, &frame, timeout) {
            Ok(resp) => {
                put_idle(addr, s);
                return into_result(resp);
            }
            // The coordinator closed the idle connection (it restarted, or
            // closed it as we sent): try once more on a new connection.
            //
            // Repeating a request is safe. Status, Metadata and
            // WatchMetadata only read; Heartbeat renews a lease. Proposed
            // commands (Propose, CreateTopic) are idempotent or refused
            // the second time by the state machine: RegisterBroker,
            // BrokerUp/BrokerDown and UpdateIsr (same epoch) set the same
            // state again; CreateTopic, DeleteTopic and SetLeader (epoch
            // must grow) are rejected as a repeat; AllocateProducerIds
            // would hand out a second block, wasting ids but keeping them
            // unique. (The Raft envelope's nonce/seq does not deduplicate
            // client resends: it only routes the answer to the proposer.)
            // Besides, the first attempt is repeated only when the
            // connection was closed before any reply byte, which mostly
            // means the coordinator never read the request; and
            // `call_leader` already resends a request after any transport
            // error, this is no new kind of repeat.
            Err(f) if f.closed_before_reply => {
                debug!(
                    addr,
                    "idle coordinator connection was closed ({}); reconnecting", f.error
                );
            }
            Err(f) => return Err(f.error),
        }
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(unreachable(addr, "timed out"));
    }
    let mut s = connect(addr, left)?;
    match exchange(addr, &mut s, &frame, left) {
        Ok(resp) => {
            put_idle(addr, s);
            into_result(resp)
        }
        Err(f) => Err(f.error),
    }
}

/// The status of the coordinator at `addr`.
pub fn status(addr: &str, timeout: Duration) -> Result<Status, CoordError> {
    match request(addr, &Request::Status, timeout)? {
        Response::Status(s) => Ok(s),
        other => Err(CoordError::Protocol(format!(
            "expected status, got {other:?}"
        ))),
    }
}

/// The metadata applied by the coordinator at `addr`.
pub fn metadata(addr: &str, timeout: Duration) -> Result<Metadata, CoordError> {
    match request(addr, &Request::Metadata, timeout)? {
        Response::Metadata(m) => Ok(m),
        other => Err(CoordError::Protocol(format!(
            "expected metadata, got {other:?}"
        ))),
    }
}

/// Waits up to `wait` for the metadata at `addr` to pass version `after`
/// and returns it (or the current one when the wait ends).
pub fn watch_metadata(addr: &str, after: u64, wait: Duration) -> Result<Metadata, CoordError> {
    let req = Request::WatchMetadata {
        after,
        wait_ms: wait.as_millis() as u64,
    };
    match request(addr, &req, wait + Duration::from_secs(1))? {
        Response::Metadata(m) => Ok(m),
        other => Err(CoordError::Protocol(format!(
            "expected metadata, got {other:?}"
        ))),
    }
}

/// Sends `req` to the leader among `coordinators` (addresses), following
/// `NotLeader` hints and skipping unreachable ones (each attempt gets a
/// share of `timeout`), until `timeout` has passed. Returns the last error if nothing succeeded.
pub fn call_leader(
    coordinators: &[String],
    req: &Request,
    timeout: Duration,
) -> Result<Response, CoordError> {
    let deadline = Instant::now() + timeout;
    let mut last = CoordError::Unreachable {
        addr: coordinators.join(","),
        reason: "no coordinator given".into(),
    };
    let mut next: Option<String> = None;
    let mut i = 0usize;
    while Instant::now() < deadline && !coordinators.is_empty() {
        let addr = next
            .take()
            .unwrap_or_else(|| coordinators[i % coordinators.len()].clone());
        i += 1;
        // A paused or partitioned coordinator accepts connections but never
        // answers: give each attempt only a share of the time, so the
        // others are tried before the deadline.
        let left = deadline.saturating_duration_since(Instant::now());
        let share = (timeout / coordinators.len() as u32).max(Duration::from_millis(150));
        match request(&addr, req, left.min(share).max(Duration::from_millis(50))) {
            Ok(r) => return Ok(r),
            Err(CoordError::NotLeader {
                leader_id,
                leader_addr,
            }) => {
                next = leader_addr.clone().filter(|a| *a != addr);
                last = CoordError::NotLeader {
                    leader_id,
                    leader_addr,
                };
                if next.is_none() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Err(e @ CoordError::Unreachable { .. }) => {
                last = e;
                if i.is_multiple_of(coordinators.len()) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Commits `command` through any reachable coordinator.
pub fn propose(
    coordinators: &[String],
    command: Command,
    timeout: Duration,
) -> Result<Applied, CoordError> {
    match call_leader(coordinators, &Request::Propose { command }, timeout)? {
        Response::Applied(a) => Ok(a),
        other => Err(CoordError::Protocol(format!(
            "expected applied, got {other:?}"
        ))),
    }
}

/// Creates a topic, placed as `assignment` says (one replica list per
/// partition) or, when it is empty, by the leader.
pub fn create_topic(
    coordinators: &[String],
    name: &str,
    config: TopicConfig,
    assignment: Vec<Vec<u64>>,
    timeout: Duration,
) -> Result<Applied, CoordError> {
    let req = Request::CreateTopic {
        name: name.to_string(),
        config,
        assignment,
    };
    match call_leader(coordinators, &req, timeout)? {
        Response::Applied(a) => Ok(a),
        other => Err(CoordError::Protocol(format!(
            "expected applied, got {other:?}"
        ))),
    }
}

/// Grows a topic to `count` partitions (placement by the leader when
/// `assignment` is empty).
pub fn add_partitions(
    coordinators: &[String],
    name: &str,
    count: u32,
    assignment: Vec<Vec<u64>>,
    timeout: Duration,
) -> Result<Applied, CoordError> {
    let req = Request::AddPartitions {
        name: name.to_string(),
        count,
        assignment,
    };
    match call_leader(coordinators, &req, timeout)? {
        Response::Applied(a) => Ok(a),
        other => Err(CoordError::Protocol(format!(
            "expected applied, got {other:?}"
        ))),
    }
}

/// A broker's heartbeat to the coordinator leader.
pub fn heartbeat(
    coordinators: &[String],
    node_id: u64,
    timeout: Duration,
) -> Result<(), CoordError> {
    match call_leader(coordinators, &Request::Heartbeat { node_id }, timeout)? {
        Response::HeartbeatOk => Ok(()),
        other => Err(CoordError::Protocol(format!(
            "expected heartbeat ok, got {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Reads one request frame from `s`; `None` at end of stream.
    fn read_request(s: &mut TcpStream) -> Option<Request> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).ok()?;
        let mut payload = vec![0u8; u32::from_le_bytes(len) as usize];
        s.read_exact(&mut payload).ok()?;
        assert_eq!(payload[0], wire::TAG_REQUEST);
        serde_json::from_slice(&payload[1..]).ok()
    }

    fn answer(s: &mut TcpStream) {
        let body = serde_json::to_vec(&Response::HeartbeatOk).unwrap();
        s.write_all(&wire::frame(wire::TAG_RESPONSE, &body))
            .unwrap();
    }

    /// A fake coordinator: runs `script(connection number, stream)` on
    /// every connection it accepts, each on its own thread. Returns its
    /// address and the count of accepted connections.
    fn fake_coordinator(script: fn(usize, TcpStream)) -> (String, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = accepted.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let n = a.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || script(n, s));
            }
        });
        (addr, accepted)
    }

    const HB: Request = Request::Heartbeat { node_id: 7 };

    #[test]
    fn requests_share_one_connection() {
        let (addr, accepted) = fake_coordinator(|_, mut s| {
            while read_request(&mut s).is_some() {
                answer(&mut s);
            }
        });
        for _ in 0..50 {
            let r = request(&addr, &HB, Duration::from_secs(2)).unwrap();
            assert_eq!(r, Response::HeartbeatOk);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_pooled_connection_closed_before_the_reply_is_retried_once_on_a_new_one() {
        // The first connection answers one request, then reads the next
        // and closes without answering (as a coordinator that stops).
        let (addr, accepted) = fake_coordinator(|n, mut s| {
            if n == 0 {
                assert_eq!(read_request(&mut s), Some(HB));
                answer(&mut s);
                assert_eq!(read_request(&mut s), Some(HB));
                return;
            }
            while read_request(&mut s).is_some() {
                answer(&mut s);
            }
        });
        let t = Duration::from_secs(2);
        assert_eq!(request(&addr, &HB, t).unwrap(), Response::HeartbeatOk);
        assert_eq!(request(&addr, &HB, t).unwrap(), Response::HeartbeatOk);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // The new connection was kept.
        assert_eq!(request(&addr, &HB, t).unwrap(), Response::HeartbeatOk);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_timed_out_connection_is_neither_retried_nor_kept() {
        // The first connection answers one request, then answers the next
        // only after the client gave up on it.
        let (addr, accepted) = fake_coordinator(|n, mut s| {
            if n == 0 {
                assert_eq!(read_request(&mut s), Some(HB));
                answer(&mut s);
                assert_eq!(read_request(&mut s), Some(HB));
                std::thread::sleep(Duration::from_millis(400));
                let _ = s.write_all(b"late");
                return;
            }
            while read_request(&mut s).is_some() {
                answer(&mut s);
            }
        });
        let t = Duration::from_millis(150);
        assert_eq!(request(&addr, &HB, t).unwrap(), Response::HeartbeatOk);
        let e = request(&addr, &HB, t).unwrap_err();
        assert!(matches!(e, CoordError::Unreachable { .. }), "{e:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "a timeout was retried");
        std::thread::sleep(Duration::from_millis(400));
        // Not the timed-out connection (its late bytes would be read as
        // the answer): a new one.
        assert_eq!(request(&addr, &HB, t).unwrap(), Response::HeartbeatOk);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn idle_connections_are_capped_per_address() {
        let (addr, _) = fake_coordinator(|_, mut s| {
            while read_request(&mut s).is_some() {
                answer(&mut s);
            }
        });
        let t = Duration::from_secs(2);
        let streams: Vec<TcpStream> = (0..MAX_IDLE_PER_ADDR + 3)
            .map(|_| connect(&addr, t).unwrap())
            .collect();
        for s in streams {
            put_idle(&addr, s);
        }
        let kept = idle_pool()
            .lock()
            .unwrap()
            .get(&addr)
            .map(Vec::len)
            .unwrap_or(0);
        assert_eq!(kept, MAX_IDLE_PER_ADDR);
    }
}

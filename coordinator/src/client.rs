//! Blocking client for the coordinator RPC, for the CLI and for brokers
//! that are not coordinators. It uses `std::net` only, so it works from a
//! plain thread; from tokio, call it inside `spawn_blocking`.

use crate::error::CoordError;
use crate::state::{Command, Metadata, TopicConfig};
use crate::wire::{self, Applied, Request, Response, Status};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

fn unreachable(addr: &str, e: impl std::fmt::Display) -> CoordError {
    CoordError::Unreachable {
        addr: addr.to_string(),
        reason: e.to_string(),
    }
}

/// Sends one request to `addr` and waits at most `timeout` for the answer.
/// A `Response::Error` is returned as `Err`.
pub fn request(addr: &str, req: &Request, timeout: Duration) -> Result<Response, CoordError> {
    let sock: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|e| unreachable(addr, e))?
        .next()
        .ok_or_else(|| unreachable(addr, "address resolves to nothing"))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout).map_err(|e| unreachable(addr, e))?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(timeout))
        .and_then(|_| s.set_write_timeout(Some(timeout)))
        .map_err(|e| unreachable(addr, e))?;
    let body = serde_json::to_vec(req).map_err(|e| CoordError::Protocol(e.to_string()))?;
    if body.len() + 1 > wire::MAX_REQUEST_FRAME {
        // The coordinator would close the connection without reading it.
        return Err(CoordError::Invalid(format!(
            "request of {} bytes exceeds the {}-byte request frame limit",
            body.len() + 1,
            wire::MAX_REQUEST_FRAME
        )));
    }
    s.write_all(&wire::frame(wire::TAG_REQUEST, &body))
        .map_err(|e| unreachable(addr, e))?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(|e| unreachable(addr, e))?;
    let len = wire::check_len(u32::from_le_bytes(len))
        .ok_or_else(|| CoordError::Protocol("bad frame length".into()))?;
    let mut tag = [0u8; 1];
    s.read_exact(&mut tag).map_err(|e| unreachable(addr, e))?;
    if tag[0] != wire::TAG_RESPONSE {
        return Err(CoordError::Protocol(format!(
            "unexpected frame tag {}",
            tag[0]
        )));
    }
    // Read as it arrives: a bad peer declaring a large frame gets no large
    // buffer up front.
    let mut payload = Vec::new();
    wire::read_chunked(&mut s, len - 1, &mut payload).map_err(|e| unreachable(addr, e))?;
    match serde_json::from_slice::<Response>(&payload) {
        Ok(Response::Error(e)) => Err(e),
        Ok(r) => Ok(r),
        Err(e) => Err(CoordError::Protocol(e.to_string())),
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

/// Creates a topic (placement by the leader).
pub fn create_topic(
    coordinators: &[String],
    name: &str,
    config: TopicConfig,
    timeout: Duration,
) -> Result<Applied, CoordError> {
    let req = Request::CreateTopic {
        name: name.to_string(),
        config,
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

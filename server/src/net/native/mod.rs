//! One client connection on the native protocol: frames in, requests
//! decoded and handed to the request layer (`dispatch.rs`), responses out
//! in request order. Reading stops while the shard's in-flight byte window
//! is full, so producers feel TCP backpressure instead of the broker
//! buffering.

mod dispatch;

use crate::net::conn::{read_exact_or_shutdown, Conn, Outgoing, Pending};

use crate::shard::{buffers, bump, Shard};
use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;
use glommio::sync::StaticPermit;
use levee_schemas::proto::{self, ErrorCode, Request, Response, ResponseHeader};
use levee_schemas::{decode_request, encode_frame, frame_len, FrameError};
use std::rc::Rc;
use std::time::{Duration, Instant};

pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let mut c = Conn::open(&shard, stream);
    let res = read_loop(&shard, &mut c.reader, &c.tx, &c.host).await;
    c.close(&shard, res).await;
}

async fn read_loop(
    shard: &Rc<Shard>,
    r: &mut futures_lite::io::ReadHalf<TcpStream>,
    tx: &glommio::channels::local_channel::LocalSender<Pending>,
    peer: &Rc<str>,
) -> Result<(), String> {
    let max = shard.cfg.max_frame_bytes as usize;
    let mut hello_done = false;
    loop {
        let mut prefix = [0u8; 4];
        if !read_exact_or_shutdown(shard, r, &mut prefix, true).await? {
            return Ok(());
        }
        let len = match frame_len(prefix, max) {
            Ok(len) => len,
            Err(e) => {
                // Answer with the request's correlation id if the header is
                // readable, then close: the rest of the frame is not read.
                let corr = read_correlation_id(r, &e).await;
                let frame = error_frame(corr, e.code(), &format!("{e}; the connection is closed"));
                send_ready(tx, frame, None).await;
                return Err(e.to_string());
            }
        };
        let permit = shard
            .inflight
            .acquire_static_permit((len as u64).min(shard.inflight_limit))
            .await
            .map_err(|_| "shutting down".to_string())?;
        let mut body = buffers::take(len);
        if let Err(e) = read_exact_or_shutdown(shard, r, &mut body, false).await {
            buffers::give_back(body);
            return Err(e);
        }
        let started = Instant::now();
        let (header, payload_at) = match decode_request(&body) {
            Ok((h, payload)) => {
                let at = body.len() - payload.len();
                (h, at)
            }
            Err(e) => {
                bump(&shard.metrics.errors);
                let frame = error_frame(0, e.code(), &format!("undecodable request: {e}"));
                buffers::give_back(body);
                send_ready(tx, frame, Some(permit)).await;
                continue;
            }
        };
        let corr = header.correlation_id;
        if !hello_done {
            let Request::Hello(h) = &header.request else {
                let frame = error_frame(
                    corr,
                    ErrorCode::UnsupportedVersion,
                    "the first request on a connection must be Hello",
                );
                send_ready(tx, frame, Some(permit)).await;
                return Err("no hello".into());
            };
            if h.min_version > levee_schemas::PROTOCOL_VERSION
                || h.max_version < levee_schemas::PROTOCOL_VERSION
            {
                let frame = error_frame(
                    corr,
                    ErrorCode::UnsupportedVersion,
                    &format!(
                        "client speaks versions {}..={}, this broker speaks {}",
                        h.min_version,
                        h.max_version,
                        levee_schemas::PROTOCOL_VERSION
                    ),
                );
                send_ready(tx, frame, Some(permit)).await;
                return Err("version mismatch".into());
            }
            hello_done = true;
        }
        if shard.shutdown.is_set() {
            let frame = error_frame(corr, ErrorCode::ShuttingDown, "the broker is shutting down");
            send_ready(tx, frame, Some(permit)).await;
            return Ok(());
        }
        let s = shard.clone();
        let peer = peer.clone();
        let task = glommio::spawn_local(async move {
            let no_reply = matches!(&header.request, Request::Produce(p) if p.acks == 0);
            let is_produce = matches!(&header.request, Request::Produce(_));
            // Shared, not copied: a produce's batches travel as slices of
            // it; the buffer is reused once the last slice is dropped.
            let body = buffers::shared(body);
            let payload = body.slice(payload_at..);
            let res = dispatch::process(&s, header.request, &payload, &peer).await;
            drop(payload);
            drop(body);
            let elapsed = started.elapsed();
            match &res {
                Ok(_) => bump(&s.metrics.requests_ok),
                Err(_) => bump(&s.metrics.errors),
            }
            if is_produce {
                s.metrics.produce_latency.observe(elapsed);
            } else if matches!(&res, Ok((Response::FetchResponse(_), _))) {
                s.metrics.fetch_latency.observe(elapsed);
            }
            if no_reply {
                return None;
            }
            if is_produce && res.is_ok() && fault_cut_after_produce() {
                // Test-only fault: the write happened, its answer is lost.
                return Some(Outgoing {
                    frame: Vec::new(),
                    payload: Vec::new(),
                    close: true,
                });
            }
            Some(match res {
                Ok((response, payload)) => {
                    let header = ResponseHeader {
                        correlation_id: corr,
                        error: ErrorCode::None,
                        message: None,
                        response: Some(response),
                    };
                    let total: usize = payload.iter().map(Vec::len).sum();
                    let mut frame = Vec::with_capacity(256);
                    encode_frame(
                        &mut levee_schemas::planus::Builder::new(),
                        &header,
                        total,
                        &mut frame,
                    );
                    Outgoing {
                        frame,
                        payload,
                        close: false,
                    }
                }
                Err(e) => Outgoing {
                    frame: error_frame(corr, e.code, &e.message),
                    payload: Vec::new(),
                    close: false,
                },
            })
        })
        .detach();
        if tx.send((task, Some(permit))).await.is_err() {
            return Err("writer closed".into());
        }
    }
}

async fn send_ready(
    tx: &glommio::channels::local_channel::LocalSender<Pending>,
    frame: Vec<u8>,
    permit: Option<StaticPermit>,
) {
    let task = glommio::spawn_local(async move {
        Some(Outgoing {
            frame,
            payload: Vec::new(),
            close: false,
        })
    })
    .detach();
    let _ = tx.send((task, permit)).await;
}

/// After an oversized frame prefix, reads just the header to find the
/// correlation id (0 if it cannot be read).
async fn read_correlation_id(r: &mut futures_lite::io::ReadHalf<TcpStream>, e: &FrameError) -> u64 {
    if !matches!(e, FrameError::TooLarge { .. }) {
        return 0;
    }
    let read = async {
        let mut hl = [0u8; 4];
        r.read_exact(&mut hl).await.ok()?;
        let hl = u32::from_le_bytes(hl) as usize;
        if hl > 64 << 10 {
            return None;
        }
        let mut h = vec![0u8; hl];
        r.read_exact(&mut h).await.ok()?;
        use levee_schemas::planus::ReadAsRoot;
        proto::RequestHeaderRef::read_as_root(&h)
            .ok()?
            .correlation_id()
            .ok()
    };
    let timeout = async {
        glommio::timer::sleep(Duration::from_millis(500)).await;
        None
    };
    futures_lite::future::or(read, timeout).await.unwrap_or(0)
}

pub fn error_frame(corr: u64, code: ErrorCode, message: &str) -> Vec<u8> {
    let header = ResponseHeader {
        correlation_id: corr,
        error: code,
        message: Some(message.to_string()),
        response: None,
    };
    let mut frame = Vec::with_capacity(128 + message.len());
    encode_frame(
        &mut levee_schemas::planus::Builder::new(),
        &header,
        0,
        &mut frame,
    );
    frame
}

/// A test-only fault for retry and idempotence tests: with
/// `LEVEE_FAULT_CUT_AFTER_PRODUCE=N` in the broker's environment, every
/// N-th produce request a shard has written is not answered: its connection
/// is closed instead, as a network cut after the write would leave it (the
/// client cannot know whether it was written). Unset or 0: never.
fn fault_cut_after_produce() -> bool {
    static EVERY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let every = *EVERY.get_or_init(|| {
        let n = std::env::var("LEVEE_FAULT_CUT_AFTER_PRODUCE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if n > 0 {
            tracing::warn!(every = n, "fault injection on: produce answers are dropped and their connections cut (LEVEE_FAULT_CUT_AFTER_PRODUCE)");
        }
        n
    });
    if every == 0 {
        return false;
    }
    thread_local! {
        static COUNT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    COUNT.with(|c| {
        let n = c.get() + 1;
        c.set(n);
        n % every == 0
    })
}

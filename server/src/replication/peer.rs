//! A connection from one node to another's client listener, speaking the
//! native protocol: a follower shard's replica fetch stream, and a
//! transaction coordinator's markers and offsets (`handlers/txn.rs`).

use levee_schemas::proto::{ErrorCode, Hello, Request, RequestHeader, ResponseHeader};
use std::cell::Cell;
use std::time::Duration;

/// A connection to another node's client listener.
pub(crate) struct PeerConn {
    stream: glommio::net::TcpStream,
    next_id: Cell<u64>,
    max_frame: usize,
}

impl PeerConn {
    pub(crate) async fn connect(addr: &str, me: u64, max_frame: usize) -> Result<PeerConn, String> {
        let stream = futures_lite::future::or(
            async {
                glommio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| e.to_string())
            },
            async {
                glommio::timer::sleep(Duration::from_secs(2)).await;
                Err("connect timed out".to_string())
            },
        )
        .await?;
        let _ = stream.set_nodelay(true);
        let mut c = PeerConn {
            stream,
            next_id: Cell::new(1),
            max_frame,
        };
        let (h, _, _) = c
            .call(
                Request::Hello(Box::new(Hello {
                    client_id: Some(format!("levee-replica-{me}")),
                    min_version: levee_schemas::PROTOCOL_VERSION,
                    max_version: levee_schemas::PROTOCOL_VERSION,
                })),
                Duration::from_secs(2),
            )
            .await?;
        if h.error != ErrorCode::None {
            return Err(format!("hello refused: {:?}", h.message));
        }
        Ok(c)
    }

    /// Sends one request and reads its response: (header, frame body,
    /// start of the payload in the body).
    pub(crate) async fn call(
        &mut self,
        request: Request,
        timeout: Duration,
    ) -> Result<(ResponseHeader, Vec<u8>, usize), String> {
        use futures_lite::{AsyncReadExt, AsyncWriteExt};
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let frame = levee_schemas::request_frame(
            &RequestHeader {
                correlation_id: id,
                request,
            },
            &[],
        );
        let max = self.max_frame;
        let stream = &mut self.stream;
        let io = async move {
            stream.write_all(&frame).await.map_err(|e| e.to_string())?;
            stream.flush().await.map_err(|e| e.to_string())?;
            let mut prefix = [0u8; 4];
            stream
                .read_exact(&mut prefix)
                .await
                .map_err(|e| e.to_string())?;
            let len = levee_schemas::frame_len(prefix, max).map_err(|e| e.to_string())?;
            // A recycled buffer: no zero-fill of every response's bytes.
            let mut body = crate::shard::buffers::take(len);
            stream
                .read_exact(&mut body)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(body)
        };
        let body = futures_lite::future::or(io, async {
            glommio::timer::sleep(timeout).await;
            Err("no response in time".to_string())
        })
        .await?;
        let (h, payload) = levee_schemas::decode_response(&body).map_err(|e| e.to_string())?;
        let start = body.len() - payload.len();
        if h.correlation_id != id {
            return Err(format!(
                "response {} does not match request {id}",
                h.correlation_id
            ));
        }
        Ok((h, body, start))
    }
}

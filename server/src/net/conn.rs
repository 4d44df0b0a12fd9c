//! What every protocol front end's connection shares: responses written
//! in request order while requests are processed concurrently, and reads
//! that end quietly at shutdown.

use crate::shard::Shard;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::StaticPermit;

/// A response ready to write: header frame bytes and payload chunks.
pub struct Outgoing {
    pub frame: Vec<u8>,
    pub payload: Vec<Vec<u8>>,
    /// Close the connection once this is written (a request the protocol
    /// cannot answer, e.g. an undecodable Kafka request).
    pub close: bool,
}

pub type Pending = (
    glommio::task::JoinHandle<Option<Outgoing>>,
    Option<StaticPermit>,
);

pub async fn write_loop(
    rx: glommio::channels::local_channel::LocalReceiver<Pending>,
    mut w: futures_lite::io::WriteHalf<TcpStream>,
) {
    while let Some((task, permit)) = rx.recv().await {
        let out = task.await.flatten();
        if let Some(out) = out {
            let mut ok = w.write_all(&out.frame).await.is_ok();
            for chunk in &out.payload {
                ok = ok && w.write_all(chunk).await.is_ok();
            }
            ok = ok && w.flush().await.is_ok();
            if ok && out.close {
                // Say goodbye (FIN) and stop: dropping the queue makes the
                // reader's next hand-over fail, which ends the connection.
                let _ = w.close().await;
                return;
            }
            if !ok {
                drop(permit);
                // The peer is gone: drain what is queued so permits return.
                while let Some((t, p)) = rx.recv().await {
                    let _ = t.await;
                    drop(p);
                }
                return;
            }
        }
        drop(permit);
    }
    let _ = w.flush().await;
    let _ = w.close().await;
}

pub async fn read_exact_or_shutdown(
    shard: &Shard,
    r: &mut futures_lite::io::ReadHalf<TcpStream>,
    buf: &mut [u8],
    idle: bool,
) -> Result<bool, String> {
    if idle {
        // Between requests a shutdown ends the connection.
        let shutdown = shard.shutdown.listen();
        if shard.shutdown.is_set() {
            return Ok(false);
        }
        let read = async { Some(r.read_exact(buf).await) };
        let stop = async {
            shutdown.await;
            None
        };
        match futures_lite::future::or(read, stop).await {
            None => Ok(false),
            Some(Ok(())) => Ok(true),
            Some(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Some(Err(e)) => Err(e.to_string()),
        }
    } else {
        r.read_exact(buf)
            .await
            .map(|_| true)
            .map_err(|e| e.to_string())
    }
}

/// One open connection: the read half for the protocol's read loop, the
/// queue its responses go through (in request order), the peer's host.
pub struct Conn {
    pub reader: futures_lite::io::ReadHalf<TcpStream>,
    pub tx: glommio::channels::local_channel::LocalSender<Pending>,
    pub peer: String,
    pub host: std::rc::Rc<str>,
    writer: glommio::Task<()>,
}

impl Conn {
    /// Sets the socket up, counts the connection, starts its writer.
    pub fn open(shard: &Shard, stream: TcpStream) -> Conn {
        let _ = stream.set_nodelay(true);
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        crate::shard::bump(&shard.metrics.connections);
        let (reader, writer) = futures_lite::io::split(stream);
        let depth = shard.cfg.max_inflight_requests_per_connection;
        let (tx, rx) = glommio::channels::local_channel::new_bounded::<Pending>(depth);
        let writer = glommio::spawn_local(write_loop(rx, writer));
        let host = peer
            .rsplit_once(':')
            .map_or(peer.as_str(), |(h, _)| h)
            .into();
        Conn {
            reader,
            tx,
            peer,
            host,
            writer,
        }
    }

    /// After the read loop ended (`res`: why): lets the queued responses
    /// out, then uncounts the connection.
    pub async fn close(self, shard: &Shard, res: Result<(), String>) {
        if let Err(e) = res {
            tracing::debug!(peer = %self.peer, reason = %e, "closing connection");
        }
        drop(self.tx);
        let _ = self.writer.await;
        let c = &shard.metrics.connections;
        c.set(c.get().saturating_sub(1));
    }
}

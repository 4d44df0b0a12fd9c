//! The admin HTTP listener: `/metrics` (Prometheus text format, gathered
//! from every shard) and `/health`. Minimal HTTP/1.1: one request per
//! connection.

use crate::metrics::{render, resident_bytes, Sample};
use crate::shard::Shard;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::time::Duration;
use tracing::warn;

pub async fn serve(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let accept = async { Some(listener.accept().await) };
        let stop = async {
            shard.shutdown.listen().await;
            None
        };
        match futures_lite::future::or(accept, stop).await {
            None => return,
            Some(Ok(stream)) => {
                let s = shard.clone();
                glommio::spawn_local(async move {
                    let t = async {
                        glommio::timer::sleep(Duration::from_secs(10)).await;
                    };
                    futures_lite::future::or(handle(s, stream), t).await;
                })
                .detach();
            }
            Some(Err(e)) => {
                warn!(error = %e, "admin listener accept failed");
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        }
        if shard.shutdown.is_set() {
            return;
        }
    }
}

async fn handle(shard: Rc<Shard>, mut stream: TcpStream) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 16 << 10 {
            let _ = respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n",
            )
            .await;
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        let _ = respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "only GET is served\n",
        )
        .await;
        return;
    }
    match path.split('?').next().unwrap_or("") {
        "/metrics" => {
            let body = gather(&shard).await;
            let _ = respond(&mut stream, "200 OK", "text/plain; version=0.0.4", &body).await;
        }
        "/health" => {
            if shard.shutdown.is_set() {
                let _ = respond(
                    &mut stream,
                    "503 Service Unavailable",
                    "text/plain",
                    "shutting down\n",
                )
                .await;
            } else if shard.space.is_full() {
                let _ = respond(
                    &mut stream,
                    "503 Service Unavailable",
                    "text/plain",
                    &disk_full_report(&shard),
                )
                .await;
            } else {
                let _ = respond(&mut stream, "200 OK", "text/plain", "ok\n").await;
            }
        }
        _ => {
            let _ = respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                "try /metrics or /health\n",
            )
            .await;
        }
    }
}

/// `/health` while the disk is full: degraded, what works, what to do.
fn disk_full_report(shard: &Shard) -> String {
    let s = &shard.space;
    let since = s.full_since_ms().map_or(0, |t| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        now.saturating_sub(t) / 1000
    });
    format!(
        "degraded: disk full\n\
         the disk of {} has been full for {since} s (last failed: {}): produce and other writes fail with storage errors; fetches of stored data work\n\
         free: {} bytes; writes resume once {} bytes are free, without a restart\n\
         space reserve: {}\n\
         to free space: levee topic delete NAME | levee topic alter NAME --retention-bytes B | levee group delete G\n",
        shard.cfg.data_dir.display(),
        s.last_failure(),
        s.last_free_bytes(),
        s.resume_bytes(),
        if s.reserve_bytes() == 0 {
            "none (space_reserve_bytes = 0)".to_string()
        } else if s.reserve_held() {
            format!("{} bytes held", s.reserve_bytes())
        } else {
            "given up to metadata writes; re-created once space is freed".to_string()
        },
    )
}

async fn gather(shard: &Rc<Shard>) -> String {
    let tasks: Vec<_> = (0..shard.nshards)
        .map(|n| glommio::spawn_local(shard.submit_to(n, |s| async move { Ok(s.samples()) })))
        .collect();
    let mut samples = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            samples.extend(s);
        }
    }
    samples.push(Sample::Value {
        family: "levee_process_resident_memory_bytes",
        labels: String::new(),
        value: resident_bytes() as f64,
    });
    let space = &shard.space;
    for (family, value) in [
        ("levee_disk_full", u64::from(space.is_full())),
        ("levee_disk_free_bytes", space.last_free_bytes()),
        (
            "levee_space_reserve_bytes",
            if space.reserve_held() {
                space.reserve_bytes()
            } else {
                0
            },
        ),
    ] {
        samples.push(Sample::Value {
            family,
            labels: String::new(),
            value: value as f64,
        });
    }
    render(&samples)
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await?;
    stream.close().await
}

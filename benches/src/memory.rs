//! Broker resident memory: from the admin endpoint's Prometheus text, or
//! from `/proc/PID/statm`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const METRIC: &str = "levee_process_resident_memory_bytes";

/// Where broker memory is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemorySource {
    /// `GET /metrics` on this admin `host:port`.
    Admin(String),
    /// `/proc/PID/statm`.
    Pid(u32),
}

impl MemorySource {
    /// A short description for reports.
    pub fn describe(&self) -> String {
        match self {
            MemorySource::Admin(a) => format!("http://{a}/metrics {METRIC}"),
            MemorySource::Pid(p) => format!("/proc/{p}/statm"),
        }
    }

    /// One sample, `None` if it could not be read.
    pub async fn sample(&self) -> Option<u64> {
        match self {
            MemorySource::Admin(addr) => {
                tokio::time::timeout(Duration::from_millis(800), scrape(addr))
                    .await
                    .ok()
                    .flatten()
            }
            MemorySource::Pid(pid) => {
                // A /proc read does not block on I/O.
                let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
                parse_statm(&text, page_size())
            }
        }
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as u64
    } else {
        4096
    }
}

async fn scrape(addr: &str) -> Option<u64> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.take(16 << 20).read_to_end(&mut buf).await.ok()?;
    parse_metric(&String::from_utf8_lossy(&buf))
}

/// The value of `levee_process_resident_memory_bytes` in a Prometheus text
/// exposition (HTTP headers before it are ignored).
pub fn parse_metric(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix(METRIC)?;
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            return None;
        }
        // `name{labels} value [timestamp]`: the value follows the labels.
        let after = match rest.find('}') {
            Some(i) => &rest[i + 1..],
            None => rest,
        };
        let v: f64 = after.split_whitespace().next()?.parse().ok()?;
        (v.is_finite() && v >= 0.0).then_some(v as u64)
    })
}

/// Resident bytes from `/proc/PID/statm` (second field, in pages).
pub fn parse_statm(text: &str, page: u64) -> Option<u64> {
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let body = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n\
            # HELP levee_process_resident_memory_bytes Resident memory.\n\
            # TYPE levee_process_resident_memory_bytes gauge\n\
            levee_process_resident_memory_bytes_total 5\n\
            levee_process_resident_memory_bytes 123456789\n";
        assert_eq!(parse_metric(body), Some(123_456_789));
        assert_eq!(
            parse_metric("levee_process_resident_memory_bytes{node=\"0\"} 1.5e6 1700000\n"),
            Some(1_500_000)
        );
        assert_eq!(parse_metric("other 1\n"), None);
        assert_eq!(
            parse_metric("levee_process_resident_memory_bytes NaN\n"),
            None
        );
        assert_eq!(parse_metric("levee_process_resident_memory_bytes\n"), None);
    }

    #[test]
    fn parses_statm() {
        assert_eq!(
            parse_statm("1000 250 30 1 0 100 0\n", 4096),
            Some(1_024_000)
        );
        assert_eq!(parse_statm("1000", 4096), None);
        assert_eq!(parse_statm("", 4096), None);
        assert!(page_size() >= 4096);
    }

    #[tokio::test]
    async fn unreachable_admin_is_none() {
        let src = MemorySource::Admin("127.0.0.1:1".into());
        assert_eq!(src.sample().await, None);
        assert_eq!(MemorySource::Pid(u32::MAX).sample().await, None);
        let me = MemorySource::Pid(std::process::id());
        assert!(me.sample().await.unwrap_or(0) > 0);
    }
}

//! A fault-injecting TCP proxy for multi-node tests: a node's peers and
//! clients reach it through one, so a test can cut, refuse or slow the
//! traffic between chosen nodes without root-only tools (iptables, tc).
//!
//! Modes: `pass` forwards; `cut` closes every open connection and refuses
//! new ones until `pass` again; `delay(ms)` holds each chunk `ms` before
//! forwarding it (both directions). Thread per connection direction: for
//! tests with tens of connections, not for load.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PASS: u64 = 0;
const CUT: u64 = 1;
/// Modes above this are delays of (mode - DELAY) ms.
const DELAY: u64 = 2;

struct Shared {
    mode: AtomicU64,
    /// Bumped by `cut`: connections of an older generation close.
    generation: AtomicU64,
    target: Mutex<Option<SocketAddr>>,
    stop: AtomicBool,
}

pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// A proxy on a free loopback port; it refuses connections until it
    /// has a target.
    pub fn start(target: Option<SocketAddr>) -> Proxy {
        let addr: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
        let listener = TcpListener::bind(addr).expect("bind a proxy port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let shared = Arc::new(Shared {
            mode: AtomicU64::new(PASS),
            generation: AtomicU64::new(0),
            target: Mutex::new(target),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || accept_loop(listener, s));
        Proxy { addr, shared }
    }

    pub fn set_target(&self, target: SocketAddr) {
        *self.shared.target.lock().unwrap() = Some(target);
    }

    pub fn pass(&self) {
        self.shared.mode.store(PASS, Ordering::SeqCst);
    }

    pub fn cut(&self) {
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        self.shared.mode.store(CUT, Ordering::SeqCst);
    }

    pub fn delay(&self, ms: u64) {
        self.shared.mode.store(DELAY + ms, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

fn accept_loop(listener: TcpListener, s: Arc<Shared>) {
    while !s.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(_) => continue,
        };
        let target = *s.target.lock().unwrap();
        let (Some(target), false) = (target, s.mode.load(Ordering::SeqCst) == CUT) else {
            drop(client);
            continue;
        };
        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
            drop(client);
            continue;
        };
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let generation = s.generation.load(Ordering::SeqCst);
        for (from, to) in [
            (client.try_clone(), server.try_clone()),
            (server.try_clone(), client.try_clone()),
        ] {
            let (Ok(from), Ok(to)) = (from, to) else {
                continue;
            };
            let s = s.clone();
            std::thread::spawn(move || pump(from, to, generation, s));
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, generation: u64, s: Arc<Shared>) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if s.generation.load(Ordering::SeqCst) != generation || s.stop.load(Ordering::SeqCst) {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        let mode = s.mode.load(Ordering::SeqCst);
        if mode > DELAY {
            std::thread::sleep(Duration::from_millis(mode - DELAY));
        }
        if s.generation.load(Ordering::SeqCst) != generation {
            break;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

//! Starts the real `levee` binary on free loopback ports with a temporary
//! data directory, for the multi-process tests.
#![allow(dead_code)]

pub mod loopfs;
pub mod proxy;
pub mod raw;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `levee` binary the tests start: this build's, or `$LEVEE_BIN` (to
/// run a test against another build, such as a release or an older one).
pub fn levee_bin() -> PathBuf {
    std::env::var_os("LEVEE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_levee")))
}

/// A loopback port nothing listens on, never the same twice in this test
/// process. Picked outside the kernel's ephemeral range (32768 and up), so
/// that no ephemeral port (a client's source port, a port the kernel hands
/// out again after a node stopped) is ever one of the nodes' ports: two
/// nodes on one port would share it (SO_REUSEPORT), and a node refuses to
/// start on a port something else listens on.
///
/// `LEVEE_TEST_PORTS=FIRST-LAST` narrows the range, so that test processes
/// run side by side (the lanes of `tests/trials.sh`) cannot pick the same
/// port between one's check and its broker's bind.
///
/// "Never the same twice" holds for the last half of the range handed out:
/// a long run (the trials start clusters by the hundred) goes on with
/// ports of clusters long stopped instead of running out.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::VecDeque<u16>> =
        std::sync::Mutex::new(std::collections::VecDeque::new());
    let (first, span) = std::env::var("LEVEE_TEST_PORTS")
        .ok()
        .and_then(|r| {
            let (a, b) = r.split_once('-')?;
            let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            (b > a).then_some((a, u64::from(b - a) + 1))
        })
        .unwrap_or((20_000, 12_000));
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ (u64::from(std::process::id()) << 32)
        | 1;
    let keep = (span / 2).max(1) as usize;
    for _ in 0..span * 64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = first + (x % span) as u16;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push_back(port);
            while given.len() > keep {
                given.pop_front();
            }
            return port;
        }
    }
    panic!("no free port in {first}..{}", u64::from(first) + span);
}

pub fn temp_dir(name: &str) -> PathBuf {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("levee-tests");
    std::fs::create_dir_all(&base).unwrap();
    let d = base.join(format!("{name}-{}-{}", std::process::id(), free_port()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub struct Broker {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    /// The Kafka API listener.
    pub kafka: SocketAddr,
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
    pub extra: Vec<String>,
    /// Environment variables the broker process gets (fault injection).
    pub env: Vec<(String, String)>,
    log: PathBuf,
    restarts: usize,
}

/// Starts three nodes, each a coordinator and a broker (one core each),
/// named `{name}-n1` to `{name}-n3`, with the configuration file `config`
/// (TOML). Returns once every process is up; the caller waits for the
/// quorum as its test needs. Also returns the coordinators' addresses.
pub fn start_three_nodes(name: &str, config: &str) -> (Vec<Broker>, Vec<String>) {
    let coords: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let list = coords
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{}@{c}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let cfg_dir = temp_dir(&format!("{name}-cfg"));
    let cfg = cfg_dir.join("levee.toml");
    std::fs::write(&cfg, config).unwrap();
    let nodes = (1..=3)
        .map(|id| {
            Broker::start_with(
                &format!("{name}-n{id}"),
                &[
                    "--config",
                    cfg.to_str().unwrap(),
                    "--node-id",
                    &id.to_string(),
                    "--coordinators",
                    &list,
                    "--cores",
                    "1",
                ],
            )
        })
        .collect();
    (nodes, coords)
}

/// Three nodes (each a broker and a coordinator) whose every connection
/// to another node goes through a fault-injecting proxy: `raft[i][j]`
/// carries node i+1's coordinator traffic to node j+1 (Raft, proposals,
/// heartbeats, metadata); `native[j]` is node j+1's advertised native
/// address, which clients and the other nodes' followers use.
pub struct ProxiedCluster {
    pub nodes: Vec<Broker>,
    pub raft: Vec<Vec<Option<proxy::Proxy>>>,
    pub native: Vec<proxy::Proxy>,
}

impl ProxiedCluster {
    pub fn start(name: &str, config: &str) -> ProxiedCluster {
        Self::start_in(name, config, None)
    }

    /// As [`ProxiedCluster::start`], node i's data in `dirs[i]` when given
    /// (directories the caller made, on filesystems of their own, say).
    pub fn start_in(name: &str, config: &str, dirs: Option<Vec<PathBuf>>) -> ProxiedCluster {
        let coords: Vec<SocketAddr> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap())
            .collect();
        let raft: Vec<Vec<Option<proxy::Proxy>>> = (0..3)
            .map(|i| {
                (0..3)
                    .map(|j| (i != j).then(|| proxy::Proxy::start(Some(coords[j]))))
                    .collect()
            })
            .collect();
        let native: Vec<proxy::Proxy> = (0..3).map(|_| proxy::Proxy::start(None)).collect();
        let cfg_dir = temp_dir(&format!("{name}-cfg"));
        let cfg = cfg_dir.join("levee.toml");
        std::fs::write(&cfg, config).unwrap();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let list = (0..3)
                .map(|j| match &raft[i][j] {
                    Some(p) => format!("{}@{}", j + 1, p.addr),
                    None => format!("{}@{}", j + 1, coords[j]),
                })
                .collect::<Vec<_>>()
                .join(",");
            let adv = native[i].addr.to_string();
            let node = (i + 1).to_string();
            let args = [
                "--config",
                cfg.to_str().unwrap(),
                "--node-id",
                &node,
                "--coordinators",
                &list,
                "--advertise",
                &adv,
                "--cores",
                "1",
            ];
            let b = match &dirs {
                Some(d) => Broker::start_in(&format!("{name}-n{}", i + 1), d[i].clone(), &args),
                None => Broker::start_with(&format!("{name}-n{}", i + 1), &args),
            };
            native[i].set_target(b.addr);
            nodes.push(b);
        }
        ProxiedCluster {
            nodes,
            raft,
            native,
        }
    }

    /// The native addresses clients use (through the proxies).
    pub fn bootstrap(&self) -> String {
        self.native
            .iter()
            .map(|p| p.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every proxy carrying traffic to or from node `v` (0-based): its
    /// native proxy and the coordinator links both ways.
    pub fn links_of(&self, v: usize) -> Vec<&proxy::Proxy> {
        let mut out = vec![&self.native[v]];
        for j in 0..3 {
            if j != v {
                out.extend(self.raft[v][j].iter());
                out.extend(self.raft[j][v].iter());
            }
        }
        out
    }

    /// Node `v`'s coordinator links to the others (what it sends).
    pub fn outbound_of(&self, v: usize) -> Vec<&proxy::Proxy> {
        (0..3)
            .filter(|j| *j != v)
            .filter_map(|j| self.raft[v][j].as_ref())
            .collect()
    }

    pub fn heal(&self) {
        for p in self
            .native
            .iter()
            .chain(self.raft.iter().flatten().flatten())
        {
            p.pass();
        }
    }
}

impl Broker {
    pub fn start(name: &str) -> Broker {
        Self::start_with(name, &[])
    }

    pub fn start_with(name: &str, extra: &[&str]) -> Broker {
        Self::start_with_env(name, extra, &[])
    }

    /// A broker whose process gets `env` too (fault injection).
    pub fn start_with_env(name: &str, extra: &[&str], env: &[(&str, &str)]) -> Broker {
        let data_dir = temp_dir(name);
        let mut b = Broker {
            child: None,
            addr: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            kafka: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            admin: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            log: data_dir.with_extension("log"),
            data_dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            restarts: 0,
        };
        b.spawn();
        b
    }

    /// Starts a broker on `data_dir`, a directory the caller made (on a
    /// filesystem of its own, say), with its log beside the other tests'
    /// logs, not in `data_dir`.
    pub fn start_in(name: &str, data_dir: PathBuf, extra: &[&str]) -> Broker {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("levee-tests");
        std::fs::create_dir_all(&base).unwrap();
        let mut b = Broker {
            child: None,
            addr: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            kafka: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            admin: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            log: base.join(format!("{name}-{}-{}.log", std::process::id(), free_port())),
            data_dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            restarts: 0,
        };
        b.spawn();
        b
    }

    /// A handle that only carries the address (for client threads).
    pub fn shim(addr: SocketAddr) -> Broker {
        Broker {
            child: None,
            addr,
            kafka: addr,
            admin: addr,
            data_dir: PathBuf::new(),
            extra: Vec::new(),
            log: PathBuf::new(),
            env: Vec::new(),
            restarts: 0,
        }
    }

    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(levee_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--admin-listen")
            .arg(self.admin.to_string())
            .arg("--kafka-listen")
            .arg(self.kafka.to_string())
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start levee");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("levee exited during start-up ({st}):\n{}", self.log_text());
                }
            }
            let log = self.log_text();
            if log.matches("levee listening on").count() > self.starts_seen()
                && TcpStream::connect(self.addr).is_ok()
            {
                return;
            }
            assert!(Instant::now() < until, "levee did not start:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn starts_seen(&self) -> usize {
        // Each spawn appends one "listening" line; count the ones before this spawn.
        self.restarts
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a graceful exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe_kill(c.id(), 15);
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                self.restarts += 1;
                return st;
            }
            assert!(Instant::now() < until, "levee did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` (`STOP`, `CONT`, ...) to the running broker.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.restarts += 1;
        }
    }

    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        // Keep the data and log of a failed test for inspection; remove
        // them otherwise (preallocated segments add up over many runs).
        if !std::thread::panicking() && !self.data_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Runs `levee <args>` as a client and returns (status, stdout, stderr).
pub fn levee(bootstrap: &str, args: &[&str], stdin: Option<&[u8]>) -> (bool, Vec<u8>, String) {
    use std::io::Write;
    let mut cmd = Command::new(levee_bin());
    cmd.args(args)
        .env("LEVEE_BOOTSTRAP", bootstrap)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run levee");
    if let Some(input) = stdin {
        let mut s = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = s.write_all(&input);
        });
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Group failover tests: every acknowledged commit, (when acknowledged,
/// partition -> committed offset).
pub type Commits = Vec<(Instant, std::collections::BTreeMap<i64, i64>)>;

/// The most each partition had committed, by commits acknowledged at or
/// before `until`.
pub fn committed_by(commits: &Commits, until: Instant) -> std::collections::BTreeMap<i64, i64> {
    let mut best = std::collections::BTreeMap::new();
    for (_, c) in commits.iter().filter(|(t, _)| *t <= until) {
        for (p, o) in c {
            let e = best.entry(*p).or_insert(*o);
            *e = (*e).max(*o);
        }
    }
    best
}

/// Waits (up to `within`) until at least 3 commits were acknowledged more
/// than 500 ms after `since`; returns how long after `since` the first
/// commit after it was acknowledged.
pub fn commits_resumed(
    commits: &std::sync::Mutex<Commits>,
    since: Instant,
    within: Duration,
) -> Duration {
    let until = Instant::now() + within;
    loop {
        let c = commits.lock().unwrap();
        let n = c
            .iter()
            .filter(|(t, _)| *t > since + Duration::from_millis(500))
            .count();
        if n >= 3 {
            return c
                .iter()
                .map(|(t, _)| *t)
                .filter(|t| *t > since)
                .min()
                .unwrap()
                - since;
        }
        drop(c);
        assert!(Instant::now() < until, "no commit succeeded after the kill");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Group failover tests: checks that records were read again only where no
/// acknowledged commit had already covered them, i.e. that committed
/// offsets never went backwards and members resumed from them. `reads` are
/// (partition, offset, when read) in the order read; `commits` are (when
/// acknowledged, partition -> committed offset). A record's first read is
/// free; each later read at time t must be at an offset at or past every
/// commit of its partition acknowledged before t. Returns the number of
/// re-reads and, of them, those read after `since`.
pub fn check_rereads(
    reads: &[(i64, i64, Instant)],
    commits: &Commits,
    since: Instant,
) -> (usize, usize) {
    use std::collections::{BTreeMap, HashSet};
    let mut by_time: Vec<&(Instant, BTreeMap<i64, i64>)> = commits.iter().collect();
    by_time.sort_by_key(|c| c.0);
    let mut seen = HashSet::new();
    let (mut rereads, mut after) = (0, 0);
    for (p, o, t) in reads {
        if seen.insert((*p, *o)) {
            continue;
        }
        rereads += 1;
        if *t >= since {
            after += 1;
        }
        let covered = by_time
            .iter()
            .take_while(|c| c.0 < *t)
            .filter_map(|c| c.1.get(p))
            .max();
        if let Some(c) = covered {
            assert!(
                o >= c,
                "partition {p}: offset {o} read again after a commit of {c} was acknowledged (a committed offset went backwards, or a member did not resume from it)"
            );
        }
    }
    (rereads, after)
}

//! In-process coordinator clusters: each node on its own glommio executor
//! thread, with its own data directory and loopback port. The test thread
//! talks to them through the blocking TCP client, as the CLI would.

use glommio::{LocalExecutorBuilder, Placement};
use levee_coordinator::client;
use levee_coordinator::storage::DiskStorage;
use levee_coordinator::{
    Command, CoordError, Coordinator, CoordinatorConfig, Metadata, PeerSpec, Role, Status,
    TopicConfig,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RPC: Duration = Duration::from_millis(1000);

/// A loopback port nothing listens on, never the same twice in this test
/// process. Picked outside the kernel's ephemeral range (32768 and up), so
/// that no ephemeral port (a client's source port, a port the kernel hands
/// out again after a node stopped) is ever one of the nodes' ports: two
/// nodes on one port would share it (SO_REUSEPORT), and a node refuses to
/// start on a port something else listens on.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ (u64::from(std::process::id()) << 32)
        | 1;
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20_000 + (x % 12_000) as u16;
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

struct Node {
    stop: Arc<AtomicBool>,
    thread: Option<glommio::ExecutorJoinHandle<()>>,
}

struct Cluster {
    peers: Vec<PeerSpec>,
    dirs: Vec<PathBuf>,
    nodes: Vec<Option<Node>>,
    tune: fn(&mut CoordinatorConfig),
}

impl Cluster {
    fn new(name: &str, n: usize, tune: fn(&mut CoordinatorConfig)) -> Cluster {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("coord-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let peers: Vec<PeerSpec> = (1..=n as u64)
            .map(|id| PeerSpec {
                id,
                addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            })
            .collect();
        let dirs = (1..=n).map(|i| base.join(format!("node{i}"))).collect();
        let mut c = Cluster {
            peers,
            dirs,
            nodes: (0..n).map(|_| None).collect(),
            tune,
        };
        for id in 1..=n as u64 {
            c.start(id);
        }
        c
    }

    fn addr(&self, id: u64) -> String {
        self.peers[(id - 1) as usize].addr.to_string()
    }

    fn addrs(&self) -> Vec<String> {
        self.peers.iter().map(|p| p.addr.to_string()).collect()
    }

    fn up_addrs(&self) -> Vec<String> {
        self.peers
            .iter()
            .filter(|p| self.nodes[(p.id - 1) as usize].is_some())
            .map(|p| p.addr.to_string())
            .collect()
    }

    fn start(&mut self, id: u64) {
        let mut cfg =
            CoordinatorConfig::new(id, self.peers.clone(), self.dirs[(id - 1) as usize].clone());
        cfg.tick_ms = 50;
        cfg.election_ticks = 10;
        cfg.heartbeat_ticks = 2;
        cfg.propose_timeout_ms = 2000;
        cfg.broker_lease_ms = 1500;
        (self.tune)(&mut cfg);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("coord-{id}"))
            .spawn(move || async move {
                let h = match Coordinator::start(cfg).await {
                    Ok(h) => h,
                    Err(e) => panic!("node {id} failed to start: {e}"),
                };
                while !s.load(Ordering::SeqCst) {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
                h.shutdown().await;
            })
            .unwrap();
        self.nodes[(id - 1) as usize] = Some(Node {
            stop,
            thread: Some(thread),
        });
    }

    /// Stops node `id`: its executor thread ends, its sockets close.
    fn stop(&mut self, id: u64) {
        if let Some(mut n) = self.nodes[(id - 1) as usize].take() {
            n.stop.store(true, Ordering::SeqCst);
            if let Some(t) = n.thread.take() {
                t.join().unwrap();
            }
        }
    }

    fn status(&self, id: u64) -> Option<Status> {
        client::status(&self.addr(id), RPC).ok()
    }

    fn metadata(&self, id: u64) -> Metadata {
        client::metadata(&self.addr(id), RPC).unwrap()
    }

    /// Waits until exactly one running node is leader and every running node
    /// agrees on it; returns its id.
    fn wait_leader(&self, within: Duration) -> u64 {
        let t0 = Instant::now();
        loop {
            let sts: Vec<Status> = (1..=self.peers.len() as u64)
                .filter(|id| self.nodes[(*id - 1) as usize].is_some())
                .filter_map(|id| self.status(id))
                .collect();
            let leaders: Vec<&Status> = sts.iter().filter(|s| s.role == Role::Leader).collect();
            if leaders.len() == 1 {
                let l = leaders[0];
                let n_up = self.nodes.iter().filter(|n| n.is_some()).count();
                if sts.len() == n_up
                    && sts
                        .iter()
                        .all(|s| s.leader_id == Some(l.node_id) && s.term == l.term)
                {
                    return l.node_id;
                }
            }
            assert!(leaders.len() <= 1 || leaders[0].term != leaders[1].term);
            assert!(
                t0.elapsed() < within,
                "no single leader within {within:?}: {sts:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every running node has applied the same metadata, at
    /// least `version`; returns it.
    fn wait_converged(&self, version: u64, within: Duration) -> Metadata {
        let t0 = Instant::now();
        loop {
            let mds: Vec<Metadata> = (1..=self.peers.len() as u64)
                .filter(|id| self.nodes[(*id - 1) as usize].is_some())
                .filter_map(|id| client::metadata(&self.addr(id), RPC).ok())
                .collect();
            let n_up = self.nodes.iter().filter(|n| n.is_some()).count();
            if mds.len() == n_up
                && mds[0].version >= version
                && mds.iter().all(|m| {
                    m.version == mds[0].version
                        && m.brokers == mds[0].brokers
                        && m.topics == mds[0].topics
                })
            {
                return mds[0].clone();
            }
            assert!(
                t0.elapsed() < within,
                "nodes did not converge to version {version} within {within:?}: {:?}",
                mds.iter().map(|m| m.version).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn propose(&self, cmd: Command) -> Result<levee_coordinator::Applied, CoordError> {
        client::propose(&self.up_addrs(), cmd, Duration::from_secs(5))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            if let Some(n) = &self.nodes[(id - 1) as usize] {
                n.stop.store(true, Ordering::SeqCst);
            }
        }
        for id in 1..=self.nodes.len() as u64 {
            self.stop(id);
        }
    }
}

fn register(id: u64) -> Command {
    Command::RegisterBroker {
        node_id: id,
        client_addr: format!("127.0.0.1:{}", 9000 + id),
        kafka_addr: format!("127.0.0.1:{}", 19000 + id),
        shards: 2,
        incarnation: 1,
    }
}

fn no_tune(_: &mut CoordinatorConfig) {}

#[test]
fn quorum_elects_one_leader_replicates_and_fails_over() {
    let mut c = Cluster::new("failover", 3, no_tune);
    let t0 = Instant::now();
    let leader = c.wait_leader(Duration::from_secs(10));
    eprintln!("initial election: leader {leader} after {:?}", t0.elapsed());
    let st = c.status(leader).unwrap();
    assert!(st.render().starts_with("Mode: leader\n"), "{}", st.render());
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    assert!(c
        .status(follower)
        .unwrap()
        .render()
        .starts_with("Mode: follower\n"));

    // Proposals through a follower are forwarded by Raft and commit.
    for b in 1..=3 {
        client::propose(&[c.addr(follower)], register(b), Duration::from_secs(5)).unwrap();
    }
    let a = client::create_topic(
        &c.addrs(),
        "events",
        TopicConfig::new(6, 3),
        Vec::new(),
        RPC * 5,
    )
    .unwrap();
    let md = c.wait_converged(a.version, Duration::from_secs(5));
    assert_eq!(md.brokers.len(), 3);
    let t = &md.topics["events"];
    let mut led = [0; 4];
    for p in &t.partitions {
        led[p.leader.unwrap() as usize] += 1;
        assert_eq!(p.leader, Some(p.replicas[0]));
        assert_eq!(p.leader_epoch, 1);
    }
    assert_eq!(&led[1..], &[2, 2, 2], "leaders spread evenly");
    // Creating it again is refused, deterministically.
    assert!(matches!(
        client::create_topic(
            &c.addrs(),
            "events",
            TopicConfig::new(1, 1),
            Vec::new(),
            RPC * 5
        ),
        Err(CoordError::Rejected(_))
    ));

    // Kill the leader: the other two elect a new one and proposals continue.
    let t_kill = Instant::now();
    c.stop(leader);
    let new_leader = c.wait_leader(Duration::from_secs(10));
    let failover = t_kill.elapsed();
    assert_ne!(new_leader, leader);
    eprintln!("failover: new leader {new_leader} after {failover:?}");
    assert!(failover < Duration::from_secs(5));
    let a = c.propose(register(4)).unwrap();
    eprintln!("first commit after leader stop: {:?}", t_kill.elapsed());
    let md2 = c.wait_converged(a.version, Duration::from_secs(5));
    assert_eq!(md2.topics, md.topics);

    // Two of three down: proposals fail with NoQuorum within the timeout.
    c.stop(new_leader);
    let survivor = (1..=3).find(|&i| i != leader && i != new_leader).unwrap();
    let t1 = Instant::now();
    let r = client::propose(&[c.addr(survivor)], register(5), Duration::from_secs(10));
    let took = t1.elapsed();
    eprintln!("without quorum: {r:?} after {took:?}");
    match r {
        Err(CoordError::NoQuorum { reachable, total }) => {
            assert_eq!(total, 3);
            assert!(reachable < 2);
        }
        other => panic!("expected NoQuorum, got {other:?}"),
    }
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let msg = CoordError::NoQuorum {
        reachable: 1,
        total: 3,
    }
    .to_string();
    assert!(msg.contains("1 of 3 coordinators reachable"), "{msg}");

    // One comes back: a quorum again, proposals resume; the first restarted
    // node catches up from the log.
    c.start(leader);
    c.wait_leader(Duration::from_secs(10));
    let a = c.propose(register(6)).unwrap();
    c.start(new_leader);
    let md3 = c.wait_converged(a.version, Duration::from_secs(10));
    assert!(md3.brokers.contains_key(&6));
    assert!(!md3.brokers.contains_key(&5));
}

#[test]
fn restarted_node_catches_up_from_a_snapshot() {
    fn tune(c: &mut CoordinatorConfig) {
        c.snapshot_entries = 10;
    }
    let mut c = Cluster::new("snapshot", 3, tune);
    let leader = c.wait_leader(Duration::from_secs(10));
    let lagging = (1..=3).find(|&i| i != leader).unwrap();
    c.propose(register(1)).unwrap();
    c.stop(lagging);
    let mut last = None;
    for i in 0..60 {
        let cmd = Command::RegisterBroker {
            node_id: 1 + i % 5,
            client_addr: format!("127.0.0.1:{}", 10_000 + i),
            kafka_addr: String::new(),
            shards: 1,
            incarnation: 1,
        };
        last = Some(c.propose(cmd).unwrap());
    }
    let last = last.unwrap();
    c.start(lagging);
    let t0 = Instant::now();
    let md = c.wait_converged(last.version, Duration::from_secs(10));
    eprintln!("lagging node caught up in {:?}", t0.elapsed());
    assert_eq!(md.brokers[&5].client_addr, "127.0.0.1:10059");
    // Everyone compacted: the logs start after a snapshot.
    let voters = [1, 2, 3];
    let dirs = c.dirs.clone();
    drop(c);
    for (i, d) in dirs.iter().enumerate() {
        let s = DiskStorage::open(&d.join("coordinator"), i as u64 + 1, &voters).unwrap();
        assert!(s.snapshot_index() > 0, "node {} has no snapshot", i + 1);
    }
}

/// A coordinator whose disk fills (its log writes fail half-written with
/// ENOSPC) waits, does not stop, and goes on once writes succeed again;
/// what it wrote before and after reads back whole after a restart.
#[test]
fn a_coordinator_on_a_full_disk_waits_and_goes_on() {
    let mut c = Cluster::new("fulldisk", 3, no_tune);
    let leader = c.wait_leader(Duration::from_secs(10));
    c.propose(register(1)).unwrap();
    // The leader's disk fills for its next 40 writes (2 s or more of
    // ticks); the other two commit without it meanwhile.
    let dir = c.dirs[(leader - 1) as usize].join("coordinator");
    levee_coordinator::storage::inject_full_disk(&dir, 40);
    for b in 2..=3 {
        c.propose(register(b)).unwrap();
    }
    let a = client::create_topic(
        &c.addrs(),
        "orders",
        TopicConfig::new(3, 2),
        Vec::new(),
        RPC * 5,
    )
    .unwrap();
    // Every node, the one whose disk was full included, applies it: that
    // node's coordinator did not stop.
    let before = c.wait_converged(a.version, Duration::from_secs(20));
    assert!(
        c.status(leader).is_some(),
        "the coordinator whose disk was full stopped"
    );
    let committed = c.status(leader).unwrap().commit_index;
    for id in 1..=3 {
        c.stop(id);
    }
    // The node's own log reads back at least to what it had committed:
    // nothing its failed writes left half-written hides what it wrote
    // after them.
    let s = DiskStorage::open(&dir, leader, &[1, 2, 3]).unwrap();
    let last = raft::Storage::last_index(&s).unwrap();
    drop(s);
    assert!(
        last >= committed,
        "node {leader}'s log reads back to entry {last}, but it had committed {committed}"
    );
    for id in 1..=3 {
        c.start(id);
    }
    c.wait_leader(Duration::from_secs(10));
    let after = c.wait_converged(before.version, Duration::from_secs(10));
    assert_eq!(after.topics, before.topics);
    assert_eq!(after.brokers, before.brokers);
}

#[test]
fn full_restart_recovers_state_from_disk() {
    let mut c = Cluster::new("restart", 3, no_tune);
    c.wait_leader(Duration::from_secs(10));
    for b in 1..=3 {
        c.propose(register(b)).unwrap();
    }
    let a = client::create_topic(
        &c.addrs(),
        "orders",
        TopicConfig::new(3, 2),
        Vec::new(),
        RPC * 5,
    )
    .unwrap();
    let before = c.wait_converged(a.version, Duration::from_secs(5));
    for id in 1..=3 {
        c.stop(id);
    }
    for id in 1..=3 {
        c.start(id);
    }
    let t0 = Instant::now();
    c.wait_leader(Duration::from_secs(10));
    let after = c.wait_converged(before.version, Duration::from_secs(10));
    eprintln!("full restart: leader and state back in {:?}", t0.elapsed());
    assert_eq!(after.version, before.version);
    assert_eq!(after.topics, before.topics);
    assert_eq!(after.brokers, before.brokers);
    c.propose(Command::DeleteTopic {
        name: "orders".into(),
    })
    .unwrap();
}

#[test]
fn controller_moves_leadership_off_an_expired_broker_and_back() {
    let c = Cluster::new("controller", 3, no_tune);
    c.wait_leader(Duration::from_secs(10));
    for b in 1..=3 {
        c.propose(register(b)).unwrap();
    }
    // Simulated brokers heartbeat the coordinator leader every 300 ms.
    let beating = Arc::new([
        AtomicBool::new(true),
        AtomicBool::new(true),
        AtomicBool::new(true),
    ]);
    let done = Arc::new(AtomicBool::new(false));
    let hb = {
        let (beating, done, addrs) = (beating.clone(), done.clone(), c.addrs());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                for b in 1..=3u64 {
                    if beating[(b - 1) as usize].load(Ordering::SeqCst) {
                        let _ = client::heartbeat(&addrs, b, Duration::from_millis(500));
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let a =
        client::create_topic(&c.addrs(), "t", TopicConfig::new(3, 3), Vec::new(), RPC * 5).unwrap();
    let md = c.wait_converged(a.version, Duration::from_secs(5));
    let led_by_1: Vec<u32> = md.topics["t"]
        .partitions
        .iter()
        .enumerate()
        .filter(|(_, p)| p.leader == Some(1))
        .map(|(i, _)| i as u32)
        .collect();
    assert_eq!(led_by_1.len(), 1);
    let p1 = led_by_1[0];

    // Record every (partition, epoch) -> leader seen, on every node.
    let mut seen: std::collections::BTreeMap<(u32, u64), Option<u64>> = Default::default();
    let mut observe = |md: &Metadata| {
        for (i, p) in md.topics["t"].partitions.iter().enumerate() {
            let prev = seen.insert((i as u32, p.leader_epoch), p.leader);
            if let Some(prev) = prev {
                assert_eq!(prev, p.leader, "two leaders for one epoch");
            }
        }
    };

    // Broker 1 stops heartbeating: after its lease, leadership moves.
    beating[0].store(false, Ordering::SeqCst);
    let t0 = Instant::now();
    loop {
        let md = c.metadata(1);
        observe(&md);
        let p = &md.topics["t"].partitions[p1 as usize];
        if p.leader_epoch >= 2 {
            assert!(!md.brokers[&1].alive);
            assert_ne!(p.leader, Some(1));
            assert!(p.leader.is_some());
            assert!(!p.isr.contains(&1));
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no failover: {p:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "partition leadership moved {:?} after the last heartbeat stopped (lease 1.5 s)",
        t0.elapsed()
    );
    let md = c.metadata(2);
    observe(&md);
    let p = md.topics["t"].partitions[p1 as usize].clone();
    // A second SetLeader for the same epoch, naming another leader, is refused.
    let other = p
        .isr
        .iter()
        .copied()
        .find(|r| Some(*r) != p.leader)
        .unwrap();
    let r = c.propose(Command::SetLeader {
        topic: "t".into(),
        partition: p1,
        leader: Some(other),
        epoch: p.leader_epoch,
    });
    assert!(matches!(r, Err(CoordError::Rejected(_))), "{r:?}");

    // Broker 1 returns and rejoins the ISR: leadership moves back to it.
    beating[0].store(true, Ordering::SeqCst);
    let t1 = Instant::now();
    loop {
        if c.metadata(1).brokers[&1].alive {
            break;
        }
        assert!(t1.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    let md = c.metadata(1);
    let p = md.topics["t"].partitions[p1 as usize].clone();
    c.propose(Command::UpdateIsr {
        topic: "t".into(),
        partition: p1,
        isr: p.replicas.clone(),
        epoch: p.leader_epoch,
    })
    .unwrap();
    loop {
        let md = c.metadata(3);
        observe(&md);
        let q = &md.topics["t"].partitions[p1 as usize];
        if q.leader == Some(1) {
            assert!(q.leader_epoch > p.leader_epoch);
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(10),
            "no rebalance: {q:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let md = c.wait_converged(0, Duration::from_secs(5));
    observe(&md);
    // Every partition is led by its preferred replica again.
    for p in &md.topics["t"].partitions {
        assert_eq!(p.leader, Some(p.replicas[0]));
    }
    done.store(true, Ordering::SeqCst);
    hb.join().unwrap();
}

#[test]
fn malformed_frames_close_the_connection_only() {
    use std::io::Write;
    let c = Cluster::new("garbage", 1, no_tune);
    c.wait_leader(Duration::from_secs(10));
    for junk in [
        vec![0u8, 0, 0, 0],
        vec![0xff, 0xff, 0xff, 0xff],
        vec![3, 0, 0, 0, 1, 0xde, 0xad],
        vec![3, 0, 0, 0, 9, 1, 2],
        vec![5, 0, 0, 0, 2, b'{', b'x', b'y', b'z'],
    ] {
        let mut s = std::net::TcpStream::connect(c.addr(1)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(&junk).unwrap();
        // The coordinator closes the connection (EOF) rather than crash
        // (a read timeout would mean it kept the connection open).
        assert!(closed_by_peer(&mut s), "{junk:?} did not close it");
    }
    c.propose(register(1)).unwrap();
    assert_eq!(c.metadata(1).brokers.len(), 1);
}

/// Reads from `s` until the peer closes it: EOF or a reset counts as
/// closed; a read timeout (the peer keeps it open) does not.
fn closed_by_peer(s: &mut std::net::TcpStream) -> bool {
    use std::io::{ErrorKind, Read};
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
        ),
    }
}

#[test]
fn oversized_request_frame_is_refused_before_its_body_arrives() {
    use std::io::Write;
    let c = Cluster::new("bigframe", 1, no_tune);
    c.wait_leader(Duration::from_secs(10));
    // A client request declaring 64 MiB (then 5 MiB, over the request
    // cap), of which only the tag arrives: the coordinator closes the
    // connection at once instead of allocating and waiting for the body.
    for declared in [64u32 << 20, 5 << 20] {
        let mut s = std::net::TcpStream::connect(c.addr(1)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(&declared.to_le_bytes()).unwrap();
        s.write_all(&[2]).unwrap();
        assert!(
            closed_by_peer(&mut s),
            "a {declared}-byte request frame was not refused"
        );
    }
    // A raft frame may be large (snapshots): one declaring 64 MiB that
    // stalls after 10 bytes is kept open, but costs no more than a chunk
    // and does not stop the coordinator from answering.
    let mut stalled = std::net::TcpStream::connect(c.addr(1)).unwrap();
    stalled.write_all(&(64u32 << 20).to_le_bytes()).unwrap();
    stalled.write_all(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    let st = client::status(&c.addr(1), RPC).unwrap();
    assert_eq!(st.role, Role::Leader);
    c.propose(register(1)).unwrap();
    assert_eq!(c.metadata(1).brokers.len(), 1);
    drop(stalled);
}

#[test]
fn client_requests_reuse_connections() {
    let mut c = Cluster::new("reuse", 1, no_tune);
    c.wait_leader(Duration::from_secs(10));
    let addr = c.addr(1);
    let before = client::status(&addr, RPC).unwrap().connections_accepted;
    for i in 0..200 {
        if i % 2 == 0 {
            client::status(&addr, RPC).unwrap();
        } else {
            client::metadata(&addr, RPC).unwrap();
        }
    }
    c.propose(register(1)).unwrap();
    client::heartbeat(&c.addrs(), 1, RPC).unwrap();
    let after = client::status(&addr, RPC).unwrap().connections_accepted;
    // One connection per request would be 203.
    assert!(
        after - before <= 4,
        "{} connections accepted for 203 requests",
        after - before
    );
    // Pooled connections to a coordinator that restarted are closed: the
    // client notices and connects anew.
    c.stop(1);
    c.start(1);
    c.wait_leader(Duration::from_secs(10));
    for _ in 0..10 {
        client::status(&addr, RPC).unwrap();
    }
    assert_eq!(c.metadata(1).brokers.len(), 1);
    let restarted = client::status(&addr, RPC).unwrap().connections_accepted;
    assert!(
        restarted <= 4,
        "{restarted} connections accepted after the restart"
    );
}

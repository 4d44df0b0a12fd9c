//! Native consumer groups on a 3-node RF=3 cluster: a group's state lives
//! in its partition of the replicated `__consumer_offsets` topic and its
//! coordinator is that partition's leader. A group of three native
//! consumers reads 6 partitions while a native producer (acks=all) runs;
//! the coordinator's node is killed with kill -9; the members find the new
//! coordinator, no committed offset moves backwards, and every
//! acknowledged message is processed at least once (duplicates counted).

mod common;

use common::{levee, Broker};
use levee_client::{
    Client, ClientConfig, ErrorCode, GroupConsumer, GroupConsumerConfig, OffsetReset, Producer,
    ProducerConfig,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn cluster(name: &str) -> Vec<Broker> {
    let (nodes, _) = common::start_three_nodes(
        name,
        "broker_lease_ms = 1500\nheartbeat_interval_ms = 250\nreplica_lag_time_max_ms = 3000\n[log]\nfsync = \"never\"\n",
    );
    let bs = bootstrap(&nodes);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, err) = levee(&bs, &["cluster", "status"], None);
        let s = String::from_utf8_lossy(&out);
        if ok && s.contains("leader: node") && s.matches("live").count() >= 3 {
            return nodes;
        }
        assert!(Instant::now() < until, "cluster did not form: {s}{err}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn bootstrap(nodes: &[Broker]) -> String {
    nodes
        .iter()
        .filter(|n| n.child.is_some())
        .map(|n| n.bootstrap())
        .collect::<Vec<_>>()
        .join(",")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn client(bs: &str) -> Client {
    Client::connect(ClientConfig::new(bs.split(',').map(str::to_string)))
        .await
        .unwrap()
}

#[test]
fn native_group_survives_a_kill_9_of_its_coordinator() {
    let mut nodes = cluster("groups-coord-kill");
    let bs = bootstrap(&nodes);
    let (ok, out, err) = levee(
        &bs,
        &[
            "topic",
            "create",
            "nc",
            "--partitions",
            "6",
            "--replication-factor",
            "3",
        ],
        None,
    );
    assert!(ok, "{err}{}", String::from_utf8_lossy(&out));
    let group = "native-gc";

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let producing = {
        let (stop, acked, bs) = (stop.clone(), acked.clone(), bs.clone());
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let producer = Producer::new(
                    client(&bs).await,
                    ProducerConfig {
                        linger: Duration::from_millis(2),
                        delivery_timeout: Duration::from_secs(60),
                        ..Default::default()
                    },
                )
                .unwrap();
                let mut pending = Vec::new();
                let mut seq = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let v = format!("m-{seq}");
                    seq += 1;
                    match producer
                        .send("nc", Some(v.clone().into_bytes()), v.clone().into_bytes())
                        .await
                    {
                        Ok(d) => pending.push((v, d)),
                        Err(e) => eprintln!("send: {e}"),
                    }
                    if pending.len() >= 50 {
                        for (v, d) in pending.drain(..) {
                            if d.await.is_ok() {
                                acked.lock().unwrap().insert(v);
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                for (v, d) in pending.drain(..) {
                    if d.await.is_ok() {
                        acked.lock().unwrap().insert(v);
                    }
                }
            })
        })
    };

    // Every record read (value, partition, offset, when) and every
    // acknowledged commit (when, partition -> offset committed).
    type Reads = Vec<(String, i64, i64, Instant)>;
    let processed = Arc::new(Mutex::new(Reads::new()));
    let commits = Arc::new(Mutex::new(common::Commits::new()));
    let drain = Arc::new(AtomicBool::new(false));
    let members: Vec<_> = (0..3)
        .map(|i| {
            let (bs, processed, commits, drain) = (
                bs.clone(),
                processed.clone(),
                commits.clone(),
                drain.clone(),
            );
            std::thread::spawn(move || {
                runtime().block_on(async move {
                    let mut cfg = GroupConsumerConfig::new(group, ["nc"]);
                    cfg.reset = OffsetReset::Earliest;
                    cfg.session_timeout = Duration::from_secs(6);
                    cfg.auto_commit = None;
                    let mut c = GroupConsumer::join(client(&bs).await, cfg).await.unwrap();
                    let mut last_commit = Instant::now();
                    let mut quiet_since: Option<Instant> = None;
                    loop {
                        match c.poll().await {
                            Ok(recs) if !recs.is_empty() => {
                                quiet_since = None;
                                let now = Instant::now();
                                let mut p = processed.lock().unwrap();
                                for r in recs {
                                    p.push((
                                        String::from_utf8(r.value.unwrap()).unwrap(),
                                        r.partition as i64,
                                        r.offset as i64,
                                        now,
                                    ));
                                }
                            }
                            Ok(_) => {
                                if drain.load(Ordering::SeqCst) {
                                    let q = *quiet_since.get_or_insert_with(Instant::now);
                                    if q.elapsed() > Duration::from_secs(3) {
                                        break;
                                    }
                                }
                            }
                            Err(e) => {
                                eprintln!("member {i}: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                        if last_commit.elapsed() > Duration::from_millis(200) {
                            last_commit = Instant::now();
                            let at: BTreeMap<i64, i64> = c
                                .positions()
                                .into_iter()
                                .filter_map(|o| Some((o.partition as i64, o.offset? as i64)))
                                .collect();
                            match c.commit().await {
                                Ok(()) => commits.lock().unwrap().push((Instant::now(), at)),
                                Err(e) => eprintln!("member {i} commit: {e}"),
                            }
                        }
                    }
                    let _ = c.commit().await;
                    let _ = c.close().await;
                })
            })
        })
        .collect();

    let rt = runtime();
    let probe = rt.block_on(client(&bs));
    let committed = |probe: &Client| -> BTreeMap<u32, u64> {
        rt.block_on(probe.fetch_offsets(group, &Default::default()))
            .unwrap()
            .into_iter()
            .filter(|o| o.topic == "nc")
            .map(|o| (o.partition, o.offset))
            .collect()
    };
    // The members have consumed and committed for a while (on a loaded
    // machine, the first commit may take longer than the 4 s waited).
    std::thread::sleep(Duration::from_secs(4));
    let until = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let c = committed(&probe);
        if !c.is_empty() {
            break c;
        }
        assert!(Instant::now() < until, "nothing committed before the kill");
        std::thread::sleep(Duration::from_millis(200));
    };
    let victim = rt
        .block_on(probe.group_coordinator(group))
        .unwrap()
        .expect("a coordinator");
    eprintln!("killing node {victim}, coordinator of {group}; committed {before:?}");
    let killed_at = Instant::now();
    nodes[victim as usize - 1].kill();
    // The most every partition had committed, by acknowledged commits,
    // before the kill.
    let acked_before = common::committed_by(&commits.lock().unwrap(), killed_at);
    let live = bootstrap(&nodes);
    let probe = rt.block_on(client(&live));

    // As soon as the new coordinator answers, it has every offset
    // acknowledged before the kill.
    let until = Instant::now() + Duration::from_secs(40);
    let first = loop {
        match rt.block_on(probe.fetch_offsets(group, &Default::default())) {
            Ok(offs) => break offs,
            Err(e) => eprintln!("offsets during the failover: {e}"),
        }
        assert!(
            Instant::now() < until,
            "no coordinator answered after the kill"
        );
        rt.block_on(async { probe.invalidate_metadata() });
        std::thread::sleep(Duration::from_millis(100));
    };
    let answered = killed_at.elapsed();
    let first: BTreeMap<i64, i64> = first
        .into_iter()
        .filter(|o| o.topic == "nc")
        .map(|o| (o.partition as i64, o.offset as i64))
        .collect();
    for (p, o) in &acked_before {
        assert!(
            first.get(p).is_some_and(|f| f >= o),
            "partition {p}: a commit of {o} was acknowledged before the kill; the new coordinator's first answer has {:?}",
            first.get(p)
        );
    }

    // The members find it and commit again within the failover time
    // (broker lease 1.5 s; a Raft election if the victim led the
    // coordinators; the members' rejoin), with a margin for a loaded host.
    let first_commit = common::commits_resumed(&commits, killed_at, Duration::from_secs(40));
    let coord = rt.block_on(probe.group_coordinator(group)).unwrap();
    eprintln!(
        "new coordinator {coord:?}; offsets read after {answered:?}; first commit after {first_commit:?}"
    );
    assert!(coord.is_some_and(|c| c != victim));
    assert!(
        first_commit < Duration::from_secs(15),
        "the members took {first_commit:?} to commit again after the kill"
    );
    // All three members are back in the group.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match rt.block_on(probe.describe_group(group)) {
            Ok(d) if d.members.len() == 3 && d.state.eq_ignore_ascii_case("stable") => break,
            Ok(d) => assert!(
                Instant::now() < until,
                "the group after the kill: {} members, {}",
                d.members.len(),
                d.state
            ),
            Err(e) => assert!(Instant::now() < until, "describe: {e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    producing.join().unwrap();
    drain.store(true, Ordering::SeqCst);

    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: BTreeSet<String> = processed
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.0.clone())
            .collect();
        let missing = acked.difference(&seen).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "{missing} of {} acknowledged messages never processed",
            acked.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for m in members {
        m.join().unwrap();
    }
    let after = committed(&probe);
    for (p, o) in &before {
        assert!(
            after.get(p).is_some_and(|a| a >= o),
            "partition {p}: committed {o} before the kill, {:?} after",
            after.get(p)
        );
    }
    for (p, o) in &acked_before {
        assert!(
            after.get(&(*p as u32)).is_some_and(|a| *a as i64 >= *o),
            "partition {p}: a commit of {o} was acknowledged before the kill, {:?} after",
            after.get(&(*p as u32))
        );
    }
    // The CLI, through any live node, lists the group with its coordinator
    // and describes it with the coordinator's id.
    let new_coord = coord.unwrap();
    let (ok, out, err) = levee(&live, &["group", "describe", group], None);
    let text = String::from_utf8_lossy(&out).to_string();
    assert!(ok, "{err}");
    assert!(
        text.contains(&format!("coordinator: node {new_coord}")),
        "{text}"
    );
    let (ok, out, err) = levee(&live, &["group", "list"], None);
    let text = String::from_utf8_lossy(&out).to_string();
    assert!(ok, "{err}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(group) && l.ends_with(&format!("\t{new_coord}"))),
        "{text}"
    );
    // Records were read again only past commits acknowledged before they
    // were read again: duplicates come only from reads after the last
    // commit (before the kill, or before a rebalance).
    let all = processed.lock().unwrap().clone();
    let reads: Vec<(i64, i64, Instant)> = all.iter().map(|r| (r.1, r.2, r.3)).collect();
    let (rereads, after_kill) = common::check_rereads(&reads, &commits.lock().unwrap(), killed_at);
    let distinct: BTreeSet<&String> = all.iter().map(|r| &r.0).collect();
    eprintln!(
        "acknowledged {}, processed {}, distinct {}, duplicates {} ({} of them read after the kill)",
        acked.len(),
        all.len(),
        distinct.len(),
        rereads,
        after_kill
    );
}

/// The group coordinator is paused (SIGSTOP) for longer than the broker
/// lease and the session timeout: its offsets partition gets a new leader,
/// where a new member commits. Resumed (SIGCONT), the old node must not
/// accept a commit from the old member and generation (it no longer leads
/// the partition in that epoch; its write could not be replicated), and
/// the committed offset stays the new member's.
#[test]
fn a_paused_coordinator_accepts_no_commit_from_the_old_generation_after_it_resumes() {
    let nodes = cluster("groups-coord-stop");
    let bs = bootstrap(&nodes);
    let (ok, out, err) = levee(
        &bs,
        &[
            "topic",
            "create",
            "ps",
            "--partitions",
            "2",
            "--replication-factor",
            "3",
        ],
        None,
    );
    assert!(ok, "{err}{}", String::from_utf8_lossy(&out));
    let group = "paused-g";
    let rt = runtime();
    let probe = rt.block_on(client(&bs));
    // The first group request creates the offsets topic; then find the
    // coordinator.
    rt.block_on(probe.fetch_offsets(group, &Default::default()))
        .unwrap();
    let coord = rt
        .block_on(probe.group_coordinator(group))
        .unwrap()
        .expect("coordinator");
    let x = &nodes[coord as usize - 1];
    let mut old = common::raw::Raw::hello(x);
    let j = old.join_group(group, "", &["ps"], 6000);
    assert_eq!(j.error, ErrorCode::None, "{:?}", j.message);
    let (old_member, old_gen) = (j.member_id.clone().unwrap(), j.generation);
    assert_eq!(
        old.commit_offsets(group, &old_member, old_gen, &[("ps", 0, 10)])
            .0,
        ErrorCode::None
    );

    x.signal("STOP");
    let others: Vec<&Broker> = nodes.iter().filter(|n| n.addr != x.addr).collect();
    let live = others
        .iter()
        .map(|n| n.bootstrap())
        .collect::<Vec<_>>()
        .join(",");
    let probe = rt.block_on(client(&live));
    let until = Instant::now() + Duration::from_secs(30);
    let new_coord = loop {
        rt.block_on(async { probe.invalidate_metadata() });
        if let Ok(Some(c)) = rt.block_on(probe.group_coordinator(group)) {
            if c != coord {
                break c;
            }
        }
        assert!(
            Instant::now() < until,
            "the coordinator did not move off the paused node"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let y = &nodes[new_coord as usize - 1];
    let mut new = common::raw::Raw::hello(y);
    let j = loop {
        let j = new.join_group(group, "", &["ps"], 6000);
        if j.error == ErrorCode::None {
            break j;
        }
        assert!(
            Instant::now() < until,
            "joining on the new coordinator: {:?}",
            j.error
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        j.generation > old_gen,
        "generations go on: {} after {old_gen}",
        j.generation
    );
    let (e, _) = new.commit_offsets(
        group,
        j.member_id.as_deref().unwrap(),
        j.generation,
        &[("ps", 0, 20)],
    );
    assert_eq!(e, ErrorCode::None);
    std::thread::sleep(Duration::from_secs(7));

    x.signal("CONT");
    let (e, failed) = old.commit_offsets(group, &old_member, old_gen, &[("ps", 0, 5)]);
    eprintln!("the resumed old coordinator answered the old member's commit with {e:?} {failed:?}");
    // Refused as from a node that no longer leads the offsets partition
    // in the epoch it loaded the group in (the client then finds the
    // coordinator again), not merely timed out.
    assert_eq!(
        e,
        ErrorCode::NotLeader,
        "the resumed old coordinator's answer to the old generation's commit"
    );
    let after: Vec<(String, u32, u64)> = rt
        .block_on(probe.fetch_offsets(group, &Default::default()))
        .unwrap()
        .into_iter()
        .map(|o| (o.topic, o.partition, o.offset))
        .collect();
    assert_eq!(after, vec![("ps".to_string(), 0, 20)]);
}

/// The re-read check the failover tests rely on: a record read again
/// behind a commit acknowledged before the re-read fails it; re-reads past
/// the last commit pass and are counted.
#[test]
fn the_reread_check_catches_a_read_behind_an_acknowledged_commit() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let commits = vec![(at(10), BTreeMap::from([(0, 5)]))];
    let fine = [(0, 4, at(1)), (0, 5, at(2)), (0, 5, at(20)), (1, 0, at(3))];
    assert_eq!(common::check_rereads(&fine, &commits, at(15)), (1, 1));
    let behind = [(0, 4, at(1)), (0, 4, at(20))];
    let r = std::panic::catch_unwind(|| common::check_rereads(&behind, &commits, at(15)));
    assert!(r.is_err(), "offset 4 read again after 5 was committed");
}

//! Consumer-group protocol against the real broker, spoken raw: joins,
//! assignments, rebalances, fencing, session expiry, durable offsets.

mod common;

use common::raw::Raw;
use common::Broker;
use levee_schemas::proto::*;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn join(
    c: &mut Raw,
    group: &str,
    member: &str,
    topics: &[&str],
    session_ms: u32,
) -> JoinGroupResponse {
    c.join_group(group, member, topics, session_ms)
}

fn group_result(c: &mut Raw, req: Request) -> (ErrorCode, String) {
    let (h, _) = c.call(req, &[]);
    match h.response {
        Some(Response::GroupResult(r)) => (r.error, r.message.unwrap_or_default()),
        None => (h.error, h.message.unwrap_or_default()),
        other => panic!("{other:?}"),
    }
}

fn heartbeat(c: &mut Raw, group: &str, member: &str, generation: i32) -> ErrorCode {
    group_result(
        c,
        Request::Heartbeat(Box::new(Heartbeat {
            group: group.into(),
            member_id: member.into(),
            generation,
        })),
    )
    .0
}

fn commit(
    c: &mut Raw,
    group: &str,
    member: &str,
    generation: i32,
    offsets: &[(&str, u32, i64)],
) -> (ErrorCode, Vec<PartitionError>) {
    c.commit_offsets(group, member, generation, offsets)
}

fn fetch_offsets(c: &mut Raw, group: &str) -> Vec<(String, u32, i64)> {
    let (h, _) = c.call(
        Request::FetchOffsets(Box::new(FetchOffsets {
            group: group.into(),
            partitions: None,
        })),
        &[],
    );
    match h.response {
        Some(Response::OffsetsResponse(r)) => r
            .offsets
            .unwrap_or_default()
            .into_iter()
            .map(|o| (o.topic, o.partition, o.offset))
            .collect(),
        other => panic!("{other:?}"),
    }
}

fn partitions(j: &JoinGroupResponse) -> BTreeSet<(String, u32)> {
    j.assignment
        .iter()
        .flatten()
        .flat_map(|tp| {
            tp.partitions
                .iter()
                .flatten()
                .map(|p| (tp.topic.clone(), *p))
        })
        .collect()
}

fn join_many(addr: SocketAddr, n: usize, members: Vec<String>) -> Vec<(Raw, JoinGroupResponse)> {
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let m = members.get(i).cloned().unwrap_or_default();
            std::thread::spawn(move || {
                let mut c = Raw::hello(&Broker::shim(addr));
                let j = join(&mut c, "g", &m, &["orders"], 3000);
                (c, j)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn group_protocol_end_to_end() {
    let mut b = Broker::start_with("groups", &["--cores", "2"]);
    let mut admin = Raw::hello(&b);
    admin.create("orders", 6);

    // Three members join together: disjoint, complete, one generation.
    let mut members = join_many(b.addr, 3, vec![]);
    let gen = members[0].1.generation;
    let mut all = BTreeSet::new();
    for (_, j) in &members {
        assert_eq!(j.error, ErrorCode::None);
        assert_eq!(j.generation, gen, "all joined one generation");
        let mine = partitions(j);
        assert_eq!(mine.len(), 2, "6 partitions over 3 members");
        for p in mine {
            assert!(all.insert(p), "a partition assigned twice");
        }
    }
    assert_eq!(all.len(), 6);
    for (c, j) in members.iter_mut() {
        assert_eq!(
            heartbeat(c, "g", j.member_id.as_deref().unwrap(), gen),
            ErrorCode::None
        );
    }

    // Commits are fenced by generation and member.
    let (c0, j0) = &mut members[0];
    let m0 = j0.member_id.clone().unwrap();
    assert_eq!(
        commit(c0, "g", &m0, gen - 1, &[("orders", 0, 5)]).0,
        ErrorCode::IllegalGeneration
    );
    assert_eq!(
        commit(c0, "g", "stranger", gen, &[("orders", 0, 5)]).0,
        ErrorCode::UnknownMemberId
    );
    let (e, failed) = commit(
        c0,
        "g",
        &m0,
        gen,
        &[("orders", 0, 5), ("orders", 1, 7), ("nope", 0, 1)],
    );
    assert_eq!(e, ErrorCode::None);
    assert_eq!(
        failed.len(),
        1,
        "the unknown topic is reported per partition"
    );
    assert_eq!(failed[0].error, ErrorCode::UnknownTopicOrPartition);
    // An administrative commit is refused while members are active.
    assert_eq!(
        commit(&mut admin, "g", "", -1, &[("orders", 0, 0)]).0,
        ErrorCode::GroupNotEmpty
    );
    let (e, _) = group_result(
        &mut admin,
        Request::DeleteGroup(Box::new(DeleteGroup { group: "g".into() })),
    );
    assert_eq!(e, ErrorCode::GroupNotEmpty);

    // Member 2 stops heartbeating: after its session timeout the others
    // are told to rebalance, rejoin, and share its partitions.
    let (_, dead) = members.pop().unwrap();
    let started = Instant::now();
    let mut rejoin = Vec::new();
    while rejoin.len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no rebalance after the session timeout"
        );
        for (i, (c, j)) in members.iter_mut().enumerate() {
            if rejoin.contains(&i) {
                continue;
            }
            let e = heartbeat(c, "g", j.member_id.as_deref().unwrap(), j.generation);
            if e == ErrorCode::RebalanceInProgress {
                rejoin.push(i);
            } else {
                assert_eq!(e, ErrorCode::None);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "expired before its session timeout"
    );
    let ids: Vec<String> = members
        .iter()
        .map(|(_, j)| j.member_id.clone().unwrap())
        .collect();
    drop(members);
    let members = join_many(b.addr, 2, ids.clone());
    let mut all = BTreeSet::new();
    for (_, j) in &members {
        assert!(j.generation > gen);
        assert!(
            ids.contains(j.member_id.as_ref().unwrap()),
            "members keep their ids"
        );
        assert_eq!(partitions(j).len(), 3);
        all.extend(partitions(j));
    }
    assert_eq!(all.len(), 6, "the dead member's partitions were reassigned");
    // The expelled member is told so.
    let mut c = Raw::hello(&b);
    assert_eq!(
        heartbeat(
            &mut c,
            "g",
            dead.member_id.as_deref().unwrap(),
            dead.generation
        ),
        ErrorCode::UnknownMemberId
    );

    // Describe and list.
    let (h, _) = admin.call(
        Request::DescribeGroup(Box::new(DescribeGroup { group: "g".into() })),
        &[],
    );
    let Some(Response::GroupDescription(d)) = h.response else {
        panic!()
    };
    assert_eq!(d.state.as_deref(), Some("Stable"));
    assert_eq!(d.members.unwrap().len(), 2);
    let (h, _) = admin.call(Request::ListGroups(Box::new(ListGroups {})), &[]);
    let Some(Response::ListGroupsResponse(l)) = h.response else {
        panic!()
    };
    assert_eq!(l.groups.unwrap()[0].group.as_deref(), Some("g"));

    // Leaving empties the group; offsets survive a kill -9 and restart.
    for (mut c, j) in members {
        let (e, _) = group_result(
            &mut c,
            Request::LeaveGroup(Box::new(LeaveGroup {
                group: "g".into(),
                member_id: j.member_id.unwrap(),
            })),
        );
        assert_eq!(e, ErrorCode::None);
    }
    assert_eq!(
        commit(&mut admin, "g", "", -1, &[("orders", 2, 11)]).0,
        ErrorCode::None
    );
    drop(admin);
    b.kill();
    b.spawn();
    let mut admin = Raw::hello(&b);
    let mut got = fetch_offsets(&mut admin, "g");
    got.sort();
    assert_eq!(
        got,
        vec![
            ("orders".into(), 0, 5),
            ("orders".into(), 1, 7),
            ("orders".into(), 2, 11)
        ]
    );
    let (e, _) = group_result(
        &mut admin,
        Request::DeleteGroup(Box::new(DeleteGroup { group: "g".into() })),
    );
    assert_eq!(e, ErrorCode::None);
    assert!(fetch_offsets(&mut admin, "g").is_empty());
    let (e, _) = group_result(
        &mut admin,
        Request::DeleteGroup(Box::new(DeleteGroup { group: "g".into() })),
    );
    assert_eq!(e, ErrorCode::UnknownGroup);
}

#[test]
fn empty_groups_expire_after_the_offsets_retention() {
    let dir = common::temp_dir("groups-retention-cfg");
    let cfg = dir.join("levee.toml");
    std::fs::write(&cfg, "group_offsets_retention_ms = 1500\n").unwrap();
    let b = Broker::start_with("groups-retention", &["--config", cfg.to_str().unwrap()]);
    let mut c = Raw::hello(&b);
    c.create("t", 1);
    assert_eq!(
        commit(&mut c, "old", "", -1, &[("t", 0, 3)]).0,
        ErrorCode::None
    );
    assert_eq!(fetch_offsets(&mut c, "old").len(), 1);
    // A group with a member is kept however long it lives.
    let j = join(&mut c, "live", "", &["t"], 10_000);
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            heartbeat(
                &mut c,
                "live",
                j.member_id.as_deref().unwrap(),
                j.generation
            ),
            ErrorCode::None
        );
        if fetch_offsets(&mut c, "old").is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the empty group never expired"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "expired too early"
    );
    let (h, _) = c.call(Request::ListGroups(Box::new(ListGroups {})), &[]);
    let Some(Response::ListGroupsResponse(l)) = h.response else {
        panic!()
    };
    let names: Vec<_> = l
        .groups
        .unwrap()
        .into_iter()
        .filter_map(|g| g.group)
        .collect();
    assert_eq!(names, vec!["live".to_string()]);
    assert!(!b.data_dir.join("__groups").join("old").exists());
}

/// An empty group's offsets retention runs from its last stored change,
/// not from when a coordinator (re)loaded it: a restart in between does
/// not start it again.
#[test]
fn a_restart_does_not_restart_an_empty_groups_retention() {
    let dir = common::temp_dir("groups-retention-restart-cfg");
    let cfg = dir.join("levee.toml");
    std::fs::write(&cfg, "group_offsets_retention_ms = 6000\n").unwrap();
    let mut b = Broker::start_with(
        "groups-retention-restart",
        &["--config", cfg.to_str().unwrap()],
    );
    let mut c = Raw::hello(&b);
    c.create("t", 1);
    assert_eq!(
        commit(&mut c, "old", "", -1, &[("t", 0, 3)]).0,
        ErrorCode::None
    );
    let committed = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    b.kill();
    b.restart();
    let mut c = Raw::hello(&b);
    assert_eq!(
        fetch_offsets(&mut c, "old").len(),
        1,
        "expired before its retention"
    );
    // Due 6 s after the commit (checked every second); a retention that
    // started again at the restart would keep it past 10 s.
    loop {
        if fetch_offsets(&mut c, "old").is_empty() {
            break;
        }
        assert!(
            committed.elapsed() < Duration::from_millis(9500),
            "the empty group outlived its retention: the restart started it again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("expired {:?} after the commit", committed.elapsed());
    assert!(committed.elapsed() >= Duration::from_millis(5000));
}

fn add_partitions(c: &mut Raw, topic: &str, count: u32, assignment: &[&[u32]]) -> ErrorCode {
    let (h, _) = c.call(
        Request::AddPartitions(Box::new(AddPartitions {
            name: topic.into(),
            count,
            assignment: (!assignment.is_empty()).then(|| {
                assignment
                    .iter()
                    .map(|r| ReplicaList {
                        nodes: Some(r.to_vec()),
                    })
                    .collect()
            }),
            validate_only: false,
        })),
        &[],
    );
    match h.response {
        Some(Response::TopicResult(r)) => r.error,
        other => panic!("add partitions: {other:?} {:?}", h.error),
    }
}

/// Partitions added to a topic reach a stable native group: its members
/// are told to rejoin (through their heartbeats) and get the new
/// partitions; the additions survive a restart; refusals are typed.
#[test]
fn a_native_group_rebalances_onto_added_partitions() {
    let mut b = Broker::start_with("groups-grow", &["--cores", "2"]);
    let mut admin = Raw::hello(&b);
    admin.create("grown", 2);
    let mut c = Raw::hello(&b);
    let j = join(&mut c, "gg", "", &["grown"], 10_000);
    assert_eq!(j.error, ErrorCode::None);
    let (member, gen) = (j.member_id.clone().unwrap(), j.generation);
    assert_eq!(partitions(&j).len(), 2);
    assert_eq!(heartbeat(&mut c, "gg", &member, gen), ErrorCode::None);

    assert_eq!(
        add_partitions(&mut admin, "grown", 2, &[]),
        ErrorCode::InvalidPartitions
    );
    assert_eq!(
        add_partitions(&mut admin, "grown", 1, &[]),
        ErrorCode::InvalidPartitions
    );
    assert_eq!(
        add_partitions(&mut admin, "nope", 3, &[]),
        ErrorCode::UnknownTopicOrPartition
    );
    assert_eq!(
        add_partitions(&mut admin, "grown", 3, &[&[7]]),
        ErrorCode::InvalidReplicaAssignment
    );
    assert_eq!(add_partitions(&mut admin, "grown", 4, &[]), ErrorCode::None);

    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match heartbeat(&mut c, "gg", &member, gen) {
            ErrorCode::RebalanceInProgress => break,
            ErrorCode::None => {
                assert!(
                    Instant::now() < until,
                    "no rebalance after the partitions were added"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            other => panic!("heartbeat: {other:?}"),
        }
    }
    let j = join(&mut c, "gg", &member, &["grown"], 10_000);
    assert_eq!(j.error, ErrorCode::None);
    assert!(j.generation > gen);
    let want: BTreeSet<(String, u32)> = (0..4).map(|p| ("grown".to_string(), p)).collect();
    assert_eq!(partitions(&j), want);

    b.restart();
    let mut admin = Raw::hello(&b);
    let (h, _) = admin.call(
        Request::DescribeTopic(Box::new(DescribeTopic {
            name: "grown".into(),
        })),
        &[],
    );
    match h.response {
        Some(Response::TopicDescription(d)) => {
            assert_eq!(d.partitions.map(|p| p.len()), Some(4), "after the restart")
        }
        other => panic!("describe: {other:?}"),
    }
}

/// The last of `0..n` that is `p` mod 4.
fn last_of(n: i64, p: i64) -> i64 {
    (0..n).rev().find(|i| i % 4 == p).unwrap()
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|es| {
            es.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Group state lives in the offsets topic, whose size is bounded by what
/// the groups hold, not by how many commits were made: snapshots make older
/// segments unneeded and they are dropped. `LEVEE_COMMITS` sets the number
/// of commits (default 30,000; the README reports 1,000,000). After a
/// restart the last commit of every partition is there.
#[test]
fn many_commits_leave_the_offsets_topic_bounded_and_survive_a_restart() {
    let n: i64 = std::env::var("LEVEE_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let mut b = Broker::start_with("groups-bounded", &["--cores", "1"]);
    let mut admin = Raw::hello(&b);
    admin.create("busy", 4);
    let dir = b
        .data_dir()
        .join(format!("{}-0", levee_core::OFFSETS_TOPIC));
    let started = Instant::now();
    let mut largest = 0;
    for i in 0..n {
        let (e, failed) = commit(
            &mut admin,
            "busy-group",
            "",
            -1,
            &[("busy", (i % 4) as u32, i)],
        );
        assert_eq!((e, failed.len()), (ErrorCode::None, 0), "commit {i}");
        if i % 1000 == 0 {
            largest = largest.max(dir_bytes(&dir));
        }
    }
    let elapsed = started.elapsed();
    largest = largest.max(dir_bytes(&dir));
    eprintln!(
        "{n} commits in {elapsed:?} ({:.0}/s); largest size of {} on disk: {largest} bytes",
        n as f64 / elapsed.as_secs_f64(),
        dir.display()
    );
    // 1 MiB snapshots interval and segments: a few MiB whatever n is
    // (110 bytes a commit: 30,000 commits wrote 3.3 MB).
    assert!(
        largest <= 6 << 20,
        "the offsets topic grew to {largest} bytes"
    );
    // And it is the snapshots that bound it: segments wholly before one
    // were dropped, so the oldest left starts past offset 0 (30,000
    // commits alone stay under the bound above without any).
    let oldest = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log")?.parse::<u64>().ok()
        })
        .min();
    assert!(
        oldest.is_some_and(|o| o > 0),
        "no segment of the offsets topic was dropped after {n} commits (oldest {oldest:?})"
    );
    let want: Vec<(String, u32, i64)> = (0..4)
        .map(|p| ("busy".to_string(), p as u32, last_of(n, p)))
        .collect();
    let mut got = fetch_offsets(&mut admin, "busy-group");
    got.sort();
    assert_eq!(got, want);
    b.restart();
    let mut admin = Raw::hello(&b);
    let mut got = fetch_offsets(&mut admin, "busy-group");
    got.sort();
    assert_eq!(got, want, "after a restart");
}

/// A crash while a commit's batch was being written leaves the old state
/// or the new one, never a mix: the commit of two partitions is one batch
/// of the offsets topic; tearing that batch (as a crash mid-write leaves
/// it) and restarting gives back the previous commit of both partitions.
#[test]
fn a_torn_group_state_write_leaves_the_previous_state_whole() {
    let mut b = Broker::start_with("groups-torn", &["--cores", "1"]);
    let mut admin = Raw::hello(&b);
    admin.create("torn", 2);
    let both = |o: i64| [("torn", 0, o), ("torn", 1, o)];
    assert_eq!(
        commit(&mut admin, "tg", "", -1, &both(10)).0,
        ErrorCode::None
    );
    assert_eq!(
        commit(&mut admin, "tg", "", -1, &both(20)).0,
        ErrorCode::None
    );
    b.kill();
    // Find the last batch of the offsets partition's segment and flip a
    // byte inside its records, as a write cut short would leave it.
    let dir = b
        .data_dir()
        .join(format!("{}-0", levee_core::OFFSETS_TOPIC));
    let seg = dir.join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&seg).unwrap();
    let mut pos = 0usize;
    let mut last = None;
    while pos + 12 <= bytes.len() {
        let len = i32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().unwrap());
        if len <= 0 || pos + 12 + len as usize > bytes.len() {
            break;
        }
        last = Some((pos, 12 + len as usize));
        pos += 12 + len as usize;
    }
    let (start, len) = last.expect("a batch in the offsets segment");
    bytes[start + len - 2] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    b.spawn();
    let mut admin = Raw::hello(&b);
    let mut got = fetch_offsets(&mut admin, "tg");
    got.sort();
    assert_eq!(
        got,
        vec![("torn".to_string(), 0, 10), ("torn".to_string(), 1, 10)],
        "the torn commit is gone as a whole"
    );
}

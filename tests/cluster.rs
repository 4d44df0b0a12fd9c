//! The coordinator quorum inside the brokers, with real processes: three
//! brokers, each a coordinator; one leader; kill -9 of the leader elects
//! another and the dead broker is declared down; without a majority there is
//! no leader; restarted nodes rejoin with the metadata kept on disk.

mod common;

use common::levee;
use std::time::{Duration, Instant};

fn status(coord: &str) -> Option<String> {
    let (ok, out, _) = levee(
        "127.0.0.1:1",
        &["coordinator", "status", "--coordinator", coord],
        None,
    );
    ok.then(|| String::from_utf8_lossy(&out).to_string())
}

fn metadata(coord: &str) -> Option<String> {
    let (ok, out, _) = levee(
        "127.0.0.1:1",
        &["coordinator", "metadata", "--coordinator", coord],
        None,
    );
    ok.then(|| String::from_utf8_lossy(&out).to_string())
}

/// Waits until exactly one of `coords` says `Mode: leader`; returns its index.
fn wait_for_leader(coords: &[&String], within: Duration) -> usize {
    let until = Instant::now() + within;
    loop {
        let modes: Vec<Option<String>> = coords.iter().map(|c| status(c)).collect();
        let leaders: Vec<usize> = modes
            .iter()
            .enumerate()
            .filter(|(_, m)| m.as_deref().is_some_and(|m| m.starts_with("Mode: leader")))
            .map(|(i, _)| i)
            .collect();
        let followers = modes
            .iter()
            .filter(|m| {
                m.as_deref()
                    .is_some_and(|m| m.starts_with("Mode: follower"))
            })
            .count();
        if leaders.len() == 1 && followers == coords.len() - 1 {
            return leaders[0];
        }
        assert!(Instant::now() < until, "no single leader: {modes:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn three_coordinators_survive_one_failure() {
    let (mut brokers, coords) = common::start_three_nodes("cluster", "broker_lease_ms = 2000\n");
    let all: Vec<&String> = coords.iter().collect();
    let started = Instant::now();
    let leader = wait_for_leader(&all, Duration::from_secs(20));
    eprintln!("leader elected {:?} after start", started.elapsed());
    // Every broker registers with the quorum.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let m = metadata(&coords[leader]).unwrap_or_default();
        if m.matches("\talive").count() == 3 {
            break;
        }
        assert!(Instant::now() < until, "brokers did not register: {m}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // kill -9 the leader: the other two elect a new one and declare it down.
    brokers[leader].kill();
    let killed = Instant::now();
    let rest: Vec<&String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| &coords[i])
        .collect();
    let new_leader = wait_for_leader(&rest, Duration::from_secs(20));
    eprintln!("new leader after {:?}", killed.elapsed());
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let m = metadata(rest[new_leader]).unwrap_or_default();
        if m.contains(&format!("broker {}\t", leader + 1)) && m.matches("\tdown").count() == 1 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the dead broker was not declared down: {m}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Kill a second one: no majority, no leader.
    let second = (0..3).find(|&i| i != leader).unwrap();
    brokers[second].kill();
    let last = (0..3).find(|&i| i != leader && i != second).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let s = status(&coords[last]).unwrap_or_default();
    assert!(
        !s.starts_with("Mode: leader"),
        "a lone coordinator must not lead: {s}"
    );

    // Bring both back: a leader again, and the metadata survived on disk.
    brokers[leader].spawn();
    brokers[second].spawn();
    let l = wait_for_leader(&all, Duration::from_secs(20));
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let m = metadata(&coords[l]).unwrap_or_default();
        if m.matches("\talive").count() == 3 {
            break;
        }
        assert!(Instant::now() < until, "brokers did not come back: {m}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

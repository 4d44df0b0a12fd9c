//! Broker-side assignment for native members: every member's partitions
//! under the `range`, `roundrobin` or `sticky` strategy. (Kafka members
//! assign on the client: the group's leader sends the plan in SyncGroup.)

use std::collections::{BTreeMap, BTreeSet};

/// A member's partitions, by topic.
pub type Assignment = BTreeMap<String, Vec<u32>>;

/// The strategies the broker can compute.
pub const STRATEGIES: [&str; 3] = ["range", "roundrobin", "sticky"];

/// Computes every member's partitions. `subs` is (member id, topics) sorted
/// by id; `counts` the partition count of each existing topic; `previous`
/// the last assignment (used by `sticky`).
pub fn assign(
    strategy: &str,
    subs: &[(String, Vec<String>)],
    counts: &BTreeMap<String, u32>,
    previous: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, BTreeSet<(String, u32)>> = subs
        .iter()
        .map(|(id, _)| (id.clone(), BTreeSet::new()))
        .collect();
    let subscribers = |t: &str| -> Vec<&String> {
        subs.iter()
            .filter(|(_, ts)| ts.iter().any(|x| x == t))
            .map(|(id, _)| id)
            .collect()
    };
    match strategy {
        "roundrobin" => {
            let mut i = 0usize;
            for (t, &n) in counts {
                let who = subscribers(t);
                if who.is_empty() {
                    continue;
                }
                for p in 0..n {
                    // Walk the ring of all members, skipping non-subscribers.
                    loop {
                        let (id, ts) = &subs[i % subs.len()];
                        i += 1;
                        if ts.iter().any(|x| x == t) {
                            if let Some(set) = out.get_mut(id) {
                                set.insert((t.clone(), p));
                            }
                            break;
                        }
                    }
                }
            }
        }
        "sticky" => {
            let mut taken = BTreeSet::new();
            for (id, ts) in subs {
                if let Some(prev) = previous.get(id) {
                    for (t, ps) in prev {
                        if !ts.contains(t) {
                            continue;
                        }
                        let n = counts.get(t).copied().unwrap_or(0);
                        for &p in ps {
                            if p < n && taken.insert((t.clone(), p)) {
                                if let Some(set) = out.get_mut(id) {
                                    set.insert((t.clone(), p));
                                }
                            }
                        }
                    }
                }
            }
            // New or orphaned partitions go to the least-loaded subscriber.
            for (t, &n) in counts {
                let who = subscribers(t);
                for p in 0..n {
                    if taken.contains(&(t.clone(), p)) || who.is_empty() {
                        continue;
                    }
                    if let Some(id) = who
                        .iter()
                        .min_by_key(|id| out.get(**id).map_or(0, |s| s.len()))
                    {
                        if let Some(set) = out.get_mut(*id) {
                            set.insert((t.clone(), p));
                        }
                        taken.insert((t.clone(), p));
                    }
                }
            }
            // Even out: move from the most- to the least-loaded member while
            // they differ by more than one and the move is allowed.
            loop {
                let loads: Vec<(String, usize)> =
                    out.iter().map(|(id, s)| (id.clone(), s.len())).collect();
                let Some((max_id, max)) = loads.iter().max_by_key(|(_, l)| *l).cloned() else {
                    break;
                };
                let Some((min_id, min)) = loads.iter().min_by_key(|(_, l)| *l).cloned() else {
                    break;
                };
                if max <= min + 1 {
                    break;
                }
                let min_topics = &subs
                    .iter()
                    .find(|(id, _)| *id == min_id)
                    .map(|(_, t)| t.clone())
                    .unwrap_or_default();
                let movable = out.get(&max_id).and_then(|s| {
                    s.iter()
                        .rev()
                        .find(|(t, _)| min_topics.contains(t))
                        .cloned()
                });
                let Some(tp) = movable else { break };
                if let Some(s) = out.get_mut(&max_id) {
                    s.remove(&tp);
                }
                if let Some(s) = out.get_mut(&min_id) {
                    s.insert(tp);
                }
            }
        }
        _ => {
            // range: per topic, contiguous ranges over the sorted subscribers.
            for (t, &n) in counts {
                let who = subscribers(t);
                if who.is_empty() {
                    continue;
                }
                let k = who.len() as u32;
                let (per, extra) = (n / k, n % k);
                let mut next = 0;
                for (i, id) in who.iter().enumerate() {
                    let take = per + u32::from((i as u32) < extra);
                    if let Some(set) = out.get_mut(*id) {
                        for p in next..next + take {
                            set.insert((t.clone(), p));
                        }
                    }
                    next += take;
                }
            }
        }
    }
    out.into_iter()
        .map(|(id, set)| {
            let mut a: Assignment = BTreeMap::new();
            for (t, p) in set {
                a.entry(t).or_default().push(p);
            }
            (id, a)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(n: usize, topics: &[&str]) -> Vec<(String, Vec<String>)> {
        (0..n)
            .map(|i| {
                (
                    format!("m{i}"),
                    topics.iter().map(|t| t.to_string()).collect(),
                )
            })
            .collect()
    }

    fn check_disjoint_complete(
        plan: &BTreeMap<String, Assignment>,
        counts: &BTreeMap<String, u32>,
    ) {
        let mut seen = BTreeSet::new();
        for a in plan.values() {
            for (t, ps) in a {
                for p in ps {
                    assert!(seen.insert((t.clone(), *p)), "{t}/{p} assigned twice");
                }
            }
        }
        let total: u32 = counts.values().sum();
        assert_eq!(seen.len() as u32, total, "every partition assigned");
    }

    #[test]
    fn strategies_are_disjoint_complete_and_balanced() {
        let counts: BTreeMap<String, u32> = [("a".to_string(), 6), ("b".to_string(), 5)].into();
        for strategy in ["range", "roundrobin", "sticky"] {
            for n in 1..=7 {
                let plan = assign(strategy, &subs(n, &["a", "b"]), &counts, &BTreeMap::new());
                check_disjoint_complete(&plan, &counts);
                let loads: Vec<usize> = plan
                    .values()
                    .map(|a| a.values().map(Vec::len).sum())
                    .collect();
                let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
                let slack = if strategy == "range" { 2 } else { 1 };
                assert!(max - min <= slack, "{strategy} with {n} members: {loads:?}");
            }
        }
    }

    #[test]
    fn sticky_keeps_assignments_when_a_member_leaves() {
        let counts: BTreeMap<String, u32> = [("t".to_string(), 6)].into();
        let before = assign("sticky", &subs(3, &["t"]), &counts, &BTreeMap::new());
        let after = assign("sticky", &subs(2, &["t"]), &counts, &before);
        check_disjoint_complete(&after, &counts);
        for id in ["m0", "m1"] {
            for p in &before[id]["t"] {
                assert!(after[id]["t"].contains(p), "{id} lost partition {p}");
            }
        }
    }

    #[test]
    fn members_get_only_their_topics() {
        let counts: BTreeMap<String, u32> = [("a".to_string(), 2), ("b".to_string(), 2)].into();
        let s = vec![
            ("m0".to_string(), vec!["a".to_string()]),
            ("m1".to_string(), vec!["b".to_string()]),
        ];
        for strategy in ["range", "roundrobin", "sticky"] {
            let plan = assign(strategy, &s, &counts, &BTreeMap::new());
            assert_eq!(
                plan["m0"].keys().collect::<Vec<_>>(),
                vec!["a"],
                "{strategy}"
            );
            assert_eq!(
                plan["m1"].keys().collect::<Vec<_>>(),
                vec!["b"],
                "{strategy}"
            );
        }
    }
}

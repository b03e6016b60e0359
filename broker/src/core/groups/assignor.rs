//! The coordinator's assignment strategies: which member should own which partition.
//!
//! Both strategies are sticky: a member keeps the partitions it has as long as it stays within
//! its fair share, so a membership change moves as few partitions as possible. Only the
//! partitions of members that left, of members above their share, and new partitions move.
//!
//! - **range** balances each topic on its own among the members subscribed to it; on a fresh
//!   group every member gets a contiguous range of each topic's partitions (Kafka's range).
//! - **roundrobin** balances all subscribed partitions together; each free partition goes to the
//!   subscribed member that owns the fewest.

use std::collections::{BTreeMap, BTreeSet};

/// A topic partition.
pub type Tp = (String, i32);

/// An assignment strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Per-topic contiguous ranges (the default).
    #[default]
    Range,
    /// Across all topics, fewest-first.
    RoundRobin,
}

impl Strategy {
    /// Parses a strategy name; empty means range.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "" | "range" => Some(Self::Range),
            "roundrobin" | "round-robin" => Some(Self::RoundRobin),
            _ => None,
        }
    }

    /// The strategy's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Range => "range",
            Self::RoundRobin => "roundrobin",
        }
    }
}

/// A member as the assignor sees it.
#[derive(Debug, Clone)]
pub struct MemberView<'a> {
    /// Member id.
    pub id: &'a str,
    /// Subscribed topics.
    pub topics: &'a BTreeSet<String>,
    /// What the member is currently assigned (kept where fair).
    pub current: &'a BTreeSet<Tp>,
}

/// Computes the target assignment. `partitions` gives each existing topic's partition count;
/// subscribed topics that do not exist get nothing. Every member appears in the result.
pub fn assign(
    strategy: Strategy,
    members: &[MemberView<'_>],
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, BTreeSet<Tp>> {
    let mut out: BTreeMap<String, BTreeSet<Tp>> = members
        .iter()
        .map(|m| (m.id.to_string(), BTreeSet::new()))
        .collect();
    match strategy {
        Strategy::Range => {
            for (topic, &count) in partitions {
                let mut eligible: Vec<&MemberView<'_>> = members
                    .iter()
                    .filter(|m| m.topics.contains(topic))
                    .collect();
                if eligible.is_empty() || count <= 0 {
                    continue;
                }
                eligible.sort_by(|a, b| a.id.cmp(b.id));
                let items: Vec<Tp> = (0..count).map(|p| (topic.clone(), p)).collect();
                balance(&items, &eligible, &mut out);
            }
        }
        Strategy::RoundRobin => {
            let items: Vec<Tp> = partitions
                .iter()
                .flat_map(|(t, &n)| (0..n.max(0)).map(move |p| (t.clone(), p)))
                .filter(|(t, _)| members.iter().any(|m| m.topics.contains(t)))
                .collect();
            let mut sorted: Vec<&MemberView<'_>> = members.iter().collect();
            sorted.sort_by(|a, b| a.id.cmp(b.id));
            balance(&items, &sorted, &mut out);
        }
    }
    out
}

/// Spreads `items` over `members` (sorted by id), each member eligible for the items of its
/// topics: first every member keeps what it has up to its share, then the rest go, in order, to
/// the eligible member with the fewest. With uniform subscriptions the shares differ by at most
/// one; on an empty assignment this hands out contiguous ranges.
fn balance(items: &[Tp], members: &[&MemberView<'_>], out: &mut BTreeMap<String, BTreeSet<Tp>>) {
    let n = members.len();
    if n == 0 {
        return;
    }
    // Share of each member: items divided evenly, the first `extra` members one more.
    let base = items.len() / n;
    let extra = items.len() % n;
    let mut quota: BTreeMap<&str, usize> = BTreeMap::new();
    // Members that already hold more get the larger shares first (fewer moves).
    let mut by_holding: Vec<(usize, &str)> = members
        .iter()
        .map(|m| {
            let held = items.iter().filter(|tp| m.current.contains(*tp)).count();
            (held, m.id)
        })
        .collect();
    by_holding.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    for (i, (_, id)) in by_holding.iter().enumerate() {
        quota.insert(id, base + usize::from(i < extra));
    }
    let mut taken: BTreeSet<&Tp> = BTreeSet::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    // Keep.
    for m in members {
        let q = quota.get(m.id).copied().unwrap_or(0);
        let mut kept = 0;
        for tp in items {
            if kept < q && m.current.contains(tp) && m.topics.contains(&tp.0) && taken.insert(tp) {
                out.entry(m.id.to_string()).or_default().insert(tp.clone());
                kept += 1;
            }
        }
        counts.insert(m.id, kept);
    }
    // Hand out the rest: fill members below their share in id order (contiguous ranges on a
    // fresh group), then anything left to the eligible member with the fewest.
    let mut free: Vec<&Tp> = items.iter().filter(|tp| !taken.contains(tp)).collect();
    for m in members {
        let q = quota.get(m.id).copied().unwrap_or(0);
        let mut c = counts.get(m.id).copied().unwrap_or(0);
        let mut rest = Vec::with_capacity(free.len());
        for tp in free {
            if c < q && m.topics.contains(&tp.0) {
                out.entry(m.id.to_string()).or_default().insert(tp.clone());
                c += 1;
            } else {
                rest.push(tp);
            }
        }
        counts.insert(m.id, c);
        free = rest;
    }
    for tp in free {
        let best = members
            .iter()
            .filter(|m| m.topics.contains(&tp.0))
            .min_by_key(|m| (counts.get(m.id).copied().unwrap_or(0), m.id));
        if let Some(m) = best {
            out.entry(m.id.to_string()).or_default().insert(tp.clone());
            *counts.entry(m.id).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tps(topic: &str, ps: &[i32]) -> BTreeSet<Tp> {
        ps.iter().map(|&p| (topic.to_string(), p)).collect()
    }

    fn run(
        strategy: Strategy,
        members: &[(&str, &[&str], BTreeSet<Tp>)],
        partitions: &[(&str, i32)],
    ) -> BTreeMap<String, BTreeSet<Tp>> {
        let topics: Vec<BTreeSet<String>> = members
            .iter()
            .map(|m| m.1.iter().map(|s| s.to_string()).collect())
            .collect();
        let views: Vec<MemberView<'_>> = members
            .iter()
            .zip(&topics)
            .map(|(m, t)| MemberView {
                id: m.0,
                topics: t,
                current: &m.2,
            })
            .collect();
        let parts = partitions
            .iter()
            .map(|(t, n)| (t.to_string(), *n))
            .collect();
        assign(strategy, &views, &parts)
    }

    #[test]
    fn fresh_range_gives_contiguous_ranges() {
        let out = run(
            Strategy::Range,
            &[
                ("a", &["t"], BTreeSet::new()),
                ("b", &["t"], BTreeSet::new()),
                ("c", &["t"], BTreeSet::new()),
            ],
            &[("t", 6)],
        );
        assert_eq!(out["a"], tps("t", &[0, 1]));
        assert_eq!(out["b"], tps("t", &[2, 3]));
        assert_eq!(out["c"], tps("t", &[4, 5]));
    }

    #[test]
    fn a_join_moves_only_what_it_must() {
        let out = run(
            Strategy::Range,
            &[
                ("a", &["t"], tps("t", &[0, 1, 2])),
                ("b", &["t"], tps("t", &[3, 4, 5])),
                ("c", &["t"], BTreeSet::new()),
            ],
            &[("t", 6)],
        );
        assert_eq!(out["c"].len(), 2);
        assert!(out["a"].is_subset(&tps("t", &[0, 1, 2])));
        assert!(out["b"].is_subset(&tps("t", &[3, 4, 5])));
        assert_eq!(out["a"].len() + out["b"].len(), 4);
        let moved = 6 - out["a"].len() - out["b"].len();
        assert_eq!(moved, 2, "only the joiner's share moves");
    }

    #[test]
    fn a_leaver_s_partitions_go_to_the_others() {
        let out = run(
            Strategy::Range,
            &[
                ("a", &["t"], tps("t", &[0, 1])),
                ("c", &["t"], tps("t", &[4, 5])),
            ],
            &[("t", 6)],
        );
        assert!(tps("t", &[0, 1]).is_subset(&out["a"]));
        assert!(tps("t", &[4, 5]).is_subset(&out["c"]));
        assert_eq!(out["a"].len() + out["c"].len(), 6);
        assert_eq!(out["a"].len(), 3);
    }

    #[test]
    fn subscriptions_and_roundrobin() {
        let out = run(
            Strategy::RoundRobin,
            &[
                ("a", &["x", "y"], BTreeSet::new()),
                ("b", &["y"], BTreeSet::new()),
            ],
            &[("x", 2), ("y", 2), ("z", 5)],
        );
        let all: BTreeSet<Tp> = out.values().flatten().cloned().collect();
        assert_eq!(all.len(), 4, "z has no subscriber");
        assert!(out["b"].iter().all(|(t, _)| t == "y"));
        assert_eq!(out["a"].len(), 2);
        assert_eq!(out["b"].len(), 2);
        // Range with a topic that does not exist yet: nothing for it, no panic.
        let out = run(
            Strategy::Range,
            &[("a", &["missing"], BTreeSet::new())],
            &[],
        );
        assert!(out["a"].is_empty());
    }

    #[test]
    fn every_partition_once_and_balanced_for_many_shapes() {
        for members in 1..=7usize {
            for parts in 0..=20i32 {
                let ids: Vec<String> = (0..members).map(|i| format!("m{i}")).collect();
                let subs = ["t"];
                let specs: Vec<(&str, &[&str], BTreeSet<Tp>)> = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| {
                        // Arbitrary prior holdings, possibly stale or overlapping.
                        let cur: BTreeSet<Tp> = (0..parts)
                            .filter(|p| (*p as usize + i).is_multiple_of(3))
                            .map(|p| ("t".to_string(), p))
                            .collect();
                        (id.as_str(), &subs[..], cur)
                    })
                    .collect();
                for strategy in [Strategy::Range, Strategy::RoundRobin] {
                    let out = run(strategy, &specs, &[("t", parts)]);
                    let mut seen = BTreeSet::new();
                    for set in out.values() {
                        for tp in set {
                            assert!(seen.insert(tp.clone()), "{tp:?} assigned twice");
                        }
                    }
                    assert_eq!(seen.len(), parts as usize);
                    let sizes: Vec<usize> = out.values().map(BTreeSet::len).collect();
                    let (min, max) = (sizes.iter().min(), sizes.iter().max());
                    assert!(max.unwrap_or(&0) - min.unwrap_or(&0) <= 1, "{sizes:?}");
                }
            }
        }
    }
}

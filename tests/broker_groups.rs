//! The group coordinator over the wire: membership, incremental rebalancing, session expiry,
//! commits (with their fencing rules), offsets surviving restarts, describe / list / delete.
//! Members are simulated at the protocol level; the client library's consumer is tested on top.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use strom_protocol::ErrorCode;
use strom_protocol::messages::*;

use support::*;

type Tp = (String, i32);

/// A group member as a consumer would run it: it owns exactly what its last heartbeat returned.
struct Member {
    group: String,
    id: String,
    epoch: i32,
    owned: BTreeSet<Tp>,
    topics: Vec<String>,
    session_ms: u32,
}

fn wire(set: &BTreeSet<Tp>) -> Vec<TopicPartitions> {
    let mut by: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in set {
        by.entry(t).or_default().push(*p);
    }
    by.into_iter()
        .map(|(t, ps)| TopicPartitions {
            topic: t.to_string(),
            partitions: ps,
        })
        .collect()
}

fn heartbeat_call(c: &mut Client, req: GroupHeartbeatRequest) -> GroupHeartbeatResponse {
    match c.call(req).body {
        Some(response::Body::GroupHeartbeat(b)) => b,
        other => panic!("expected a heartbeat response, got {other:?}"),
    }
}

impl Member {
    fn join(c: &mut Client, group: &str, topics: &[&str], session_ms: u32) -> Member {
        let mut m = Member {
            group: group.into(),
            id: String::new(),
            epoch: 0,
            owned: BTreeSet::new(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            session_ms,
        };
        m.heartbeat(c);
        m
    }

    fn heartbeat(&mut self, c: &mut Client) -> BTreeSet<Tp> {
        let r = heartbeat_call(
            c,
            GroupHeartbeatRequest {
                group_id: self.group.clone(),
                member_id: self.id.clone(),
                member_epoch: self.epoch,
                session_timeout_ms: self.session_ms,
                subscribed_topics: (self.epoch == 0).then(|| TopicNames {
                    names: self.topics.clone(),
                }),
                assignor: String::new(),
                owned_partitions: wire(&self.owned),
            },
        );
        assert_eq!(r.error_code(), ErrorCode::None, "{r:?}");
        self.id = r.member_id;
        self.epoch = r.member_epoch;
        let assigned: BTreeSet<Tp> = r
            .assignment
            .iter()
            .flat_map(|tp| tp.partitions.iter().map(|&p| (tp.topic.clone(), p)))
            .collect();
        // Revoked partitions are committed and released at once; new ones are taken.
        self.owned = assigned.clone();
        assigned
    }

    fn leave(&self, c: &mut Client) {
        let r = heartbeat_call(
            c,
            GroupHeartbeatRequest {
                group_id: self.group.clone(),
                member_id: self.id.clone(),
                member_epoch: -1,
                session_timeout_ms: 0,
                subscribed_topics: None,
                assignor: String::new(),
                owned_partitions: Vec::new(),
            },
        );
        assert_eq!(r.error_code(), ErrorCode::None);
    }

    fn commit(&self, c: &mut Client, tp: (&str, i32), offset: i64) -> OffsetCommitResponse {
        commit(c, &self.group, &self.id, self.epoch, tp, offset)
    }
}

fn commit(
    c: &mut Client,
    group: &str,
    member: &str,
    epoch: i32,
    tp: (&str, i32),
    offset: i64,
) -> OffsetCommitResponse {
    match c
        .call(OffsetCommitRequest {
            group_id: group.into(),
            member_id: member.into(),
            member_epoch: epoch,
            topics: vec![OffsetCommitTopic {
                name: tp.0.into(),
                partitions: vec![OffsetCommitPartition {
                    partition: tp.1,
                    offset,
                    metadata: None,
                }],
            }],
        })
        .body
    {
        Some(response::Body::OffsetCommit(b)) => b,
        other => panic!("expected a commit response, got {other:?}"),
    }
}

fn committed(c: &mut Client, group: &str) -> BTreeMap<Tp, i64> {
    let r = match c
        .call(OffsetFetchRequest {
            group_id: group.into(),
            topics: Vec::new(),
        })
        .body
    {
        Some(response::Body::OffsetFetch(b)) => b,
        other => panic!("expected an offset fetch response, got {other:?}"),
    };
    r.topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| ((t.name.clone(), p.partition), p.offset))
        })
        .collect()
}

fn describe(c: &mut Client, group: &str) -> DescribedGroup {
    match c
        .call(DescribeGroupsRequest {
            groups: vec![group.into()],
        })
        .body
    {
        Some(response::Body::DescribeGroups(mut b)) => b.groups.remove(0),
        other => panic!("expected a describe response, got {other:?}"),
    }
}

/// Heartbeats every member until none changes its assignment, checking at every step that no
/// partition is owned by two members.
fn settle(c: &mut Client, members: &mut [&mut Member]) {
    for _ in 0..50 {
        let mut changed = false;
        for i in 0..members.len() {
            let before = members[i].owned.clone();
            members[i].heartbeat(c);
            changed |= before != members[i].owned;
            let mut seen = BTreeSet::new();
            for m in members.iter() {
                for tp in &m.owned {
                    assert!(
                        seen.insert(tp.clone()),
                        "{tp:?} owned by two members at once"
                    );
                }
            }
        }
        if !changed {
            return;
        }
    }
    panic!("the group did not settle");
}

#[test]
fn three_members_split_six_partitions_and_a_fourth_moves_only_its_share() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let mut c = broker.client();
    c.create_topic_ok("orders", 6, &[]);
    let mut a = Member::join(&mut c, "payments", &["orders"], 10_000);
    let mut b = Member::join(&mut c, "payments", &["orders"], 10_000);
    let mut m3 = Member::join(&mut c, "payments", &["orders"], 10_000);
    settle(&mut c, &mut [&mut a, &mut b, &mut m3]);
    for m in [&a, &b, &m3] {
        assert_eq!(m.owned.len(), 2, "{:?}", m.owned);
    }
    let all: BTreeSet<Tp> = [&a, &b, &m3].iter().flat_map(|m| m.owned.clone()).collect();
    assert_eq!(all.len(), 6);
    assert_eq!(describe(&mut c, "payments").state, "stable");

    // A fourth member: the others keep a subset of what they had, only its share moves.
    let before = [a.owned.clone(), b.owned.clone(), m3.owned.clone()];
    let mut d = Member::join(&mut c, "payments", &["orders"], 10_000);
    settle(&mut c, &mut [&mut a, &mut b, &mut m3, &mut d]);
    for (m, had) in [&a, &b, &m3].iter().zip(&before) {
        assert!(
            m.owned.is_subset(had),
            "{:?} is not a subset of {had:?}",
            m.owned
        );
        assert!(!m.owned.is_empty(), "members keep consuming");
    }
    let sizes: Vec<usize> = [&a, &b, &m3, &d].iter().map(|m| m.owned.len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 6);
    assert!(sizes.iter().all(|&s| (1..=2).contains(&s)), "{sizes:?}");

    // A leave hands its partitions over at once.
    d.leave(&mut c);
    settle(&mut c, &mut [&mut a, &mut b, &mut m3]);
    assert_eq!(a.owned.len() + b.owned.len() + m3.owned.len(), 6);
    let g = describe(&mut c, "payments");
    assert_eq!(g.members.len(), 3);
    assert_eq!(g.assignor, "range");
}

#[test]
fn a_member_that_stops_heartbeating_loses_its_partitions_after_its_session() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let mut c = broker.client();
    c.create_topic_ok("orders", 4, &[]);
    let mut a = Member::join(&mut c, "g", &["orders"], 1_000);
    let mut b = Member::join(&mut c, "g", &["orders"], 1_000);
    settle(&mut c, &mut [&mut a, &mut b]);
    assert_eq!(a.owned.len(), 2);
    // b goes silent; a keeps heartbeating (as a live consumer does) until it owns everything.
    let deadline = Instant::now() + Duration::from_secs(30);
    let started = Instant::now();
    while a.heartbeat(&mut c).len() < 4 {
        assert!(Instant::now() < deadline, "b's partitions never moved");
        std::thread::sleep(Duration::from_millis(50)); // the heartbeat interval of a live member
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "b was removed before its session could have expired"
    );
    let g = describe(&mut c, "g");
    assert_eq!(g.members.len(), 1);
    // The removed member is fenced: its commits are refused.
    let r = b.commit(&mut c, ("orders", 0), 5);
    assert_eq!(r.error_code(), ErrorCode::UnknownMemberId);
}

#[test]
fn commits_are_fenced_by_membership_and_epoch() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let mut c = broker.client();
    c.create_topic_ok("orders", 2, &[]);
    let mut a = Member::join(&mut c, "g", &["orders"], 10_000);
    settle(&mut c, &mut [&mut a]);
    let ok = a.commit(&mut c, ("orders", 0), 10);
    assert_eq!(ok.error_code(), ErrorCode::None, "{ok:?}");
    assert_eq!(committed(&mut c, "g")[&("orders".to_string(), 0)], 10);
    // A stale epoch (a member from before a rebalance) is refused.
    let mut b = Member::join(&mut c, "g", &["orders"], 10_000);
    settle(&mut c, &mut [&mut a, &mut b]);
    let stale = commit(&mut c, "g", &a.id, a.epoch - 1, ("orders", 0), 99);
    assert_eq!(
        stale.error_code(),
        ErrorCode::IllegalGeneration,
        "{stale:?}"
    );
    let stranger = commit(&mut c, "g", "nobody", 1, ("orders", 0), 99);
    assert_eq!(stranger.error_code(), ErrorCode::UnknownMemberId);
    // Admin commits (offset resets) need an empty group.
    let admin = commit(&mut c, "g", "", -1, ("orders", 0), 0);
    assert_eq!(admin.error_code(), ErrorCode::NonEmptyGroup);
    a.leave(&mut c);
    b.leave(&mut c);
    let admin = commit(&mut c, "g", "", -1, ("orders", 0), 0);
    assert_eq!(admin.error_code(), ErrorCode::None);
    assert_eq!(committed(&mut c, "g")[&("orders".to_string(), 0)], 0);
    // Unknown partitions and negative offsets are refused per partition.
    let r = commit(&mut c, "g", "", -1, ("orders", 7), 1);
    assert_eq!(
        r.topics[0].partitions[0].error_code(),
        ErrorCode::UnknownTopicOrPartition
    );
    let r = commit(&mut c, "g", "", -1, ("orders", 1), -5);
    assert_eq!(
        r.topics[0].partitions[0].error_code(),
        ErrorCode::InvalidRequest
    );
}

#[test]
fn committed_offsets_survive_graceful_and_kill_9_restarts() {
    for crash in [false, true] {
        let dir = TestDir::new();
        let mut broker = Broker::start(&dir.data(), &[]);
        let mut c = broker.client();
        c.create_topic_ok("orders", 3, &[]);
        let mut want = BTreeMap::new();
        for (g, base) in [("payments", 100), ("email", 200)] {
            let mut m = Member::join(&mut c, g, &["orders"], 10_000);
            settle(&mut c, &mut [&mut m]);
            for p in 0..3 {
                for k in 0..5 {
                    let r = m.commit(&mut c, ("orders", p), base + i64::from(p) * 10 + k);
                    assert_eq!(r.error_code(), ErrorCode::None);
                }
                want.insert((g, p), base + i64::from(p) * 10 + 4);
            }
        }
        if crash {
            broker.kill9();
        } else {
            broker.stop();
        }
        let broker = Broker::start(&dir.data(), &[]);
        let mut c = broker.client();
        for ((g, p), offset) in &want {
            let got = committed(&mut c, g);
            assert_eq!(
                got[&("orders".to_string(), *p)],
                *offset,
                "crash={crash} {g} {p}"
            );
        }
        let listed = match c.call(ListGroupsRequest {}).body {
            Some(response::Body::ListGroups(b)) => b.groups,
            other => panic!("{other:?}"),
        };
        let names: Vec<&str> = listed.iter().map(|g| g.group_id.as_str()).collect();
        assert_eq!(names, ["email", "payments"]);
        assert!(listed.iter().all(|g| g.state == "empty" && g.members == 0));
    }
}

#[test]
fn describe_shows_lag_and_delete_removes_empty_groups_durably() {
    let dir = TestDir::new();
    let mut broker = Broker::start(&dir.data(), &[]);
    let mut c = broker.client();
    c.create_topic_ok("orders", 1, &[]);
    let recs: Vec<Rec> = (0..10)
        .map(|i| Rec::new(now_ms(), format!("k{i}"), "v"))
        .collect();
    c.produce_ok("orders", 0, &[batch_of(&recs)]);
    let mut m = Member::join(&mut c, "g", &["orders"], 10_000);
    settle(&mut c, &mut [&mut m]);
    m.commit(&mut c, ("orders", 0), 4);
    let g = describe(&mut c, "g");
    assert_eq!(g.error_code(), ErrorCode::None);
    assert_eq!(g.state, "stable");
    assert_eq!(g.members.len(), 1);
    assert_eq!(g.members[0].assignment.len(), 1);
    let o = &g.offsets[0];
    assert_eq!((o.committed_offset, o.log_end_offset, o.lag), (4, 10, 6));
    assert_eq!(
        describe(&mut c, "nope").error_code(),
        ErrorCode::GroupIdNotFound
    );

    let delete = |c: &mut Client, g: &str| match c
        .call(DeleteGroupsRequest {
            groups: vec![g.into()],
        })
        .body
    {
        Some(response::Body::DeleteGroups(mut b)) => b.results.remove(0),
        other => panic!("{other:?}"),
    };
    assert_eq!(delete(&mut c, "g").error_code(), ErrorCode::NonEmptyGroup);
    m.leave(&mut c);
    assert_eq!(delete(&mut c, "g").error_code(), ErrorCode::None);
    assert_eq!(delete(&mut c, "g").error_code(), ErrorCode::GroupIdNotFound);
    assert!(committed(&mut c, "g").is_empty());
    // The deletion is durable: the offsets do not come back after a crash.
    broker.kill9();
    let broker = Broker::start(&dir.data(), &[]);
    let mut c = broker.client();
    assert!(committed(&mut c, "g").is_empty());
    assert_eq!(
        describe(&mut c, "g").error_code(),
        ErrorCode::GroupIdNotFound
    );
}

#[test]
fn new_partitions_of_a_subscribed_topic_are_assigned() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let mut c = broker.client();
    let mut a = Member::join(&mut c, "g", &["later"], 10_000);
    settle(&mut c, &mut [&mut a]);
    assert!(a.owned.is_empty(), "the topic does not exist yet");
    c.create_topic_ok("later", 3, &[]);
    settle(&mut c, &mut [&mut a]);
    assert_eq!(a.owned.len(), 3);
    // The internal offsets topic cannot be written or deleted by clients.
    let p = c.produce(
        "__consumer_offsets",
        0,
        &[batch_of(&[Rec::new(now_ms(), "k", "v")])],
        Acks::Leader,
    );
    assert_eq!(p.error_code(), ErrorCode::InvalidTopicName);
    assert_eq!(
        c.delete_topic("__consumer_offsets").error_code(),
        ErrorCode::PolicyViolation
    );
}

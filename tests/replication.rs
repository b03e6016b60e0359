//! Replicated partitions across three `strom serve` processes (docs/cluster.md,
//! "Replication"): followers copy their leaders' logs, `acks=all` is answered once every
//! in-sync replica holds the batches, a killed leader's acknowledged records are all on the
//! replica elected in its place, and a broker that returns truncates what it must, catches up
//! and rejoins the ISR. Under `min.insync.replicas`, `acks=all` is refused while `acks=1` goes
//! on.

mod support;

use bytes::Bytes;
use strom_protocol::ErrorCode;
use strom_protocol::messages::{Acks, CreatableTopic, PartitionMetadata};

use support::cluster::{Cluster, eventually};
use support::*;

/// Partition 0 of `topic` as broker `id` reports it.
fn partition(cluster: &Cluster, id: usize, topic: &str) -> PartitionMetadata {
    let t = cluster.broker(id).client().topic_metadata(topic);
    t.partitions[0].clone()
}

fn create(cluster: &Cluster, topic: &str, factor: i32, configs: &[(&str, &str)]) {
    let mut c = cluster.broker(1).client();
    let r = c.create_topics(
        vec![CreatableTopic {
            replication_factor: Some(factor),
            ..creatable(topic, 1, configs)
        }],
        false,
    );
    assert_eq!(r.topics[0].error_code(), ErrorCode::None, "{r:?}");
}

/// `n` single-record batches numbered from `from`.
fn batches(from: usize, n: usize) -> Vec<Bytes> {
    (from..from + n)
        .map(|i| {
            batch_of(&[Rec {
                key: Some(format!("k{i}").into_bytes()),
                value: Some(format!("v{i}").into_bytes()),
                ..Rec::default()
            }])
        })
        .collect()
}

/// Produces each batch with `acks` to broker `leader`; asserts each is acknowledged at the
/// next offset.
fn produce_all(cluster: &Cluster, leader: usize, topic: &str, from: usize, n: usize, acks: Acks) {
    let mut c = cluster.broker(leader).client();
    for (i, b) in batches(from, n).into_iter().enumerate() {
        let p = c.produce(topic, 0, &[b], acks);
        assert_eq!(
            p.error_code(),
            ErrorCode::None,
            "record {}: {p:?}",
            from + i
        );
        assert_eq!(p.base_offset, (from + i) as i64);
    }
}

/// Asserts broker `leader` serves exactly records 0..n, each at its offset, once its high
/// watermark reaches n (a new leader's moves once its followers fetch from it).
fn assert_holds(cluster: &Cluster, leader: usize, topic: &str, n: usize) {
    eventually("the new leader's high watermark", || {
        let p = cluster.broker(leader).client().fetch(topic, 0, 0, 0, 0, 0);
        (p.high_watermark >= n as i64).then_some(())
    });
    let records = cluster.broker(leader).client().fetch_all(topic, 0);
    let got: Vec<(i64, Vec<u8>)> = records
        .into_iter()
        .map(|r| (r.offset, r.value.unwrap_or_default()))
        .collect();
    let want: Vec<(i64, Vec<u8>)> = (0..n)
        .map(|i| (i as i64, format!("v{i}").into_bytes()))
        .collect();
    assert_eq!(got, want, "broker {leader}'s log");
}

/// The leader of partition 0, once every running broker agrees on one other than `not`.
fn leader_other_than(cluster: &Cluster, topic: &str, not: Option<usize>, asked: usize) -> usize {
    eventually("a new leader", || {
        let p = partition(cluster, asked, topic);
        let leader = usize::try_from(p.leader_id).ok()?;
        (leader >= 1 && Some(leader) != not).then_some(leader)
    })
}

#[test]
fn acks_all_survives_the_leaders_death_and_the_old_leader_rejoins() {
    let mut cluster = Cluster::start();
    create(&cluster, "orders", 3, &[]);
    let first = leader_other_than(&cluster, "orders", None, 1);
    let p = partition(&cluster, first, "orders");
    assert_eq!(
        p.isr_nodes.len(),
        3,
        "a new partition's ISR is every replica: {p:?}"
    );

    // Acknowledged with acks=all: every in-sync replica holds them.
    produce_all(&cluster, first, "orders", 0, 40, Acks::All);
    // And acks=durable: fsynced on every in-sync replica.
    produce_all(&cluster, first, "orders", 40, 10, Acks::Durable);

    // The leader dies: another replica takes over with every acknowledged record.
    cluster.kill(first);
    let survivor = (1..=3).find(|b| *b != first).expect("a survivor");
    let second = leader_other_than(&cluster, "orders", Some(first), survivor);
    assert_holds(&cluster, second, "orders", 50);

    // Two in-sync replicas are min.insync.replicas (2 for a factor of 3): writes go on.
    eventually("the dead broker out of the ISR", || {
        let p = partition(&cluster, second, "orders");
        (p.isr_nodes.len() == 2).then_some(())
    });
    produce_all(&cluster, second, "orders", 50, 20, Acks::All);

    // The old leader returns as a follower, catches up and is added back to the ISR.
    cluster.restart(first);
    eventually("the returning broker back in the ISR", || {
        let p = partition(&cluster, second, "orders");
        (p.isr_nodes.len() == 3).then_some(())
    });

    // The second leader dies too: the third copy, or the first, has all 70.
    cluster.kill(second);
    let alive = (1..=3).find(|b| *b != second).expect("a survivor");
    let third = leader_other_than(&cluster, "orders", Some(second), alive);
    assert_holds(&cluster, third, "orders", 70);
}

#[test]
fn under_min_insync_replicas_acks_all_is_refused_and_acks_1_goes_on() {
    let mut cluster = Cluster::start();
    create(&cluster, "jobs", 2, &[("min.insync.replicas", "2")]);
    let leader = leader_other_than(&cluster, "jobs", None, 1);
    produce_all(&cluster, leader, "jobs", 0, 5, Acks::All);

    // Its follower dies: once the controller fences it, the ISR is the leader alone.
    let p = partition(&cluster, leader, "jobs");
    let follower = p
        .replica_nodes
        .iter()
        .map(|b| *b as usize)
        .find(|b| *b != leader)
        .expect("a follower");
    // Keep the quorum: with three voters, one down still has a majority.
    cluster.kill(follower);
    eventually("the follower out of the ISR", || {
        let p = partition(&cluster, leader, "jobs");
        (p.isr_nodes.len() == 1).then_some(())
    });
    let mut c = cluster.broker(leader).client();
    let refused = c.produce("jobs", 0, &batches(5, 1), Acks::All);
    assert_eq!(
        refused.error_code(),
        ErrorCode::NotEnoughReplicas,
        "{refused:?}"
    );
    let taken = c.produce("jobs", 0, &batches(5, 1), Acks::Leader);
    assert_eq!(taken.error_code(), ErrorCode::None, "{taken:?}");
    assert_eq!(taken.base_offset, 5);

    // The follower returns and catches up: acks=all works again.
    cluster.restart(follower);
    eventually("the follower back in the ISR", || {
        let p = partition(&cluster, leader, "jobs");
        (p.isr_nodes.len() == 2).then_some(())
    });
    produce_all(&cluster, leader, "jobs", 6, 5, Acks::All);
    assert_holds(&cluster, leader, "jobs", 11);
}

#[test]
fn a_leader_stopped_with_sigterm_hands_its_partitions_over_before_it_exits() {
    let mut cluster = Cluster::start();
    create(&cluster, "handover", 3, &[]);
    let leader = leader_other_than(&cluster, "handover", None, 1);
    produce_all(&cluster, leader, "handover", 0, 10, Acks::All);

    let stopped = cluster.brokers[leader - 1].as_mut().expect("running");
    stopped.stop();
    let log = tail(&stopped.log_path);
    assert!(
        log.contains("controlled shutdown: this broker leads no partition"),
        "the broker handed its leaderships over before it stopped:\n{log}"
    );
    cluster.kill(leader);
    let survivor = (1..=3).find(|b| *b != leader).expect("a survivor");
    let next = leader_other_than(&cluster, "handover", Some(leader), survivor);
    assert_holds(&cluster, next, "handover", 10);
    produce_all(&cluster, next, "handover", 10, 5, Acks::All);
}

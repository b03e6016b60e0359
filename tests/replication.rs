//! Replicated partitions across three `strom serve` processes (docs/cluster.md,
//! "Replication"): followers copy their leaders' logs, `acks=all` is answered once every
//! in-sync replica holds the batches, a killed leader's acknowledged records are all on the
//! replica elected in its place, and a broker that returns truncates what it must, catches up
//! and rejoins the ISR. Under `min.insync.replicas`, `acks=all` is refused while `acks=1` goes
//! on. Paused followers and leaders (issue 17's scenarios 3 and 5), and a follower crossing the
//! gaps its leader's compaction left. The loops under load (scenarios 1, 2, 7, 9) are in
//! `tests/failover.rs`.

mod support;

use bytes::Bytes;
use strom_protocol::ErrorCode;
use strom_protocol::messages::{Acks, PartitionMetadata};

use support::cluster::{
    Cluster, assert_holds, batches, create, eventually, leader_and_follower, leader_other_than,
    partition_of, produce_all,
};
use support::*;

/// Partition 0 of `topic` as broker `id` reports it.
fn partition(cluster: &Cluster, id: usize, topic: &str) -> PartitionMetadata {
    partition_of(cluster, id, topic, 0)
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

/// A follower megabytes behind (many fetches' worth, so it appends one answer while its next
/// fetch is out) catches up to its leader's log byte for byte, rejoins the ISR and, elected in
/// the leader's place, serves every record.
#[test]
fn a_follower_megabytes_behind_catches_up_to_the_same_bytes() {
    let mut cluster = Cluster::start();
    // Two replicas: the third broker keeps the metadata quorum when the leader dies.
    create(&cluster, "bulk", 2, &[]);
    let (leader, follower) = leader_and_follower(&cluster, "bulk");
    cluster.kill(follower);

    // 8 MiB: 128 batches of 64 records of 1 KiB, eight times a replica fetch's 1 MiB.
    let (batches, per_batch) = (128, 64);
    let mut c = cluster.broker(leader).client();
    for i in 0..batches {
        let records: Vec<Rec> = (0..per_batch)
            .map(|j| {
                let mut value = format!("record {}", i * per_batch + j).into_bytes();
                value.resize(1024, b'.');
                Rec {
                    value: Some(value),
                    ..Rec::default()
                }
            })
            .collect();
        let p = c.produce("bulk", 0, &[batch_of(&records)], Acks::Leader);
        assert_eq!(p.error_code(), ErrorCode::None, "batch {i}: {p:?}");
        assert_eq!(p.base_offset, (i * per_batch) as i64);
    }
    let (_, on_leader) = cluster.broker(leader).client().fetch_all_raw("bulk", 0);
    assert!(on_leader.len() > 8 << 20, "{} bytes", on_leader.len());

    cluster.restart(follower);
    eventually("the follower back in the ISR", || {
        let p = partition(&cluster, leader, "bulk");
        (p.isr_nodes.len() == 2).then_some(())
    });
    cluster.kill(leader);
    let elected = leader_other_than(&cluster, "bulk", Some(leader), follower);
    assert_eq!(elected, follower, "the only other replica");
    eventually("the new leader's high watermark", || {
        let p = cluster
            .broker(follower)
            .client()
            .fetch("bulk", 0, 0, 0, 0, 0);
        (p.high_watermark >= (batches * per_batch) as i64).then_some(())
    });
    let (_, on_follower) = cluster.broker(follower).client().fetch_all_raw("bulk", 0);
    assert_eq!(on_follower.len(), on_leader.len(), "bytes held");
    let first_difference = on_follower.iter().zip(&on_leader).position(|(a, b)| a != b);
    assert_eq!(
        first_difference, None,
        "the follower's log differs from the leader's"
    );
}

#[test]
fn under_min_insync_replicas_acks_all_is_refused_and_acks_1_goes_on() {
    let mut cluster = Cluster::start();
    create(&cluster, "jobs", 2, &[("min.insync.replicas", "2")]);
    let (leader, follower) = leader_and_follower(&cluster, "jobs");
    produce_all(&cluster, leader, "jobs", 0, 5, Acks::All);

    // Its follower dies: once the controller fences it, the ISR is the leader alone.
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

/// Sends `signal` (`STOP`, `CONT`) to broker `id`, and returns once the process is stopped
/// (or running again), as `/proc` shows it: a signal is delivered after `kill` returns.
fn signal(cluster: &Cluster, id: usize, signal: &str) {
    let pid = cluster.broker(id).pid().to_string();
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -{signal} {pid}");
    let stopped = signal == "STOP";
    eventually("the process state the signal sets", || {
        // Every thread's: a group stop is complete once each one has stopped.
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let mut all = true;
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // `tid (comm) state ...`: the state follows the command's closing parenthesis.
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            all &= (state == 'T') == stopped;
        }
        all.then_some(())
    });
}

/// Issue 17's failure scenarios 3 and 5. A follower paused (SIGSTOP) leaves the ISR once its
/// session ends, writes go on with the other two, and once resumed it catches up and is added
/// back. A leader paused past its session is replaced; a produce it held when it stopped is
/// not acknowledged after it resumes (its followers follow the new leader), and it comes back
/// as a follower: the new leader's log holds exactly what was acknowledged.
#[test]
fn a_paused_follower_rejoins_and_a_paused_leader_acknowledges_nothing() {
    let cluster = Cluster::start();
    create(&cluster, "paused", 3, &[]);
    let leader = leader_other_than(&cluster, "paused", None, 1);
    produce_all(&cluster, leader, "paused", 0, 10, Acks::All);
    let follower = (1..=3).find(|b| *b != leader).expect("a follower");
    signal(&cluster, follower, "STOP");
    eventually("the paused follower out of the ISR", || {
        let p = partition(&cluster, leader, "paused");
        (p.isr_nodes.len() == 2).then_some(())
    });
    produce_all(&cluster, leader, "paused", 10, 10, Acks::All);
    signal(&cluster, follower, "CONT");
    eventually("the resumed follower back in the ISR", || {
        let p = partition(&cluster, leader, "paused");
        (p.isr_nodes.len() == 3).then_some(())
    });
    assert_holds(&cluster, leader, "paused", 20);

    // The leader pauses with a produce on its socket, past its session.
    let mut held = cluster.broker(leader).client();
    signal(&cluster, leader, "STOP");
    let sent = held.send_body(produce_request(
        Acks::All,
        &[("paused", 0, batches(999, 1).remove(0))],
    ));
    let other = (1..=3).find(|b| *b != leader).expect("a survivor");
    let next = leader_other_than(&cluster, "paused", Some(leader), other);
    produce_all(&cluster, next, "paused", 20, 5, Acks::All);
    signal(&cluster, leader, "CONT");
    let answer = held.recv();
    assert_eq!(answer.header.as_ref().map(|h| h.correlation_id), Some(sent));
    let code = match &answer.body {
        Some(strom_protocol::messages::response::Body::Produce(p)) => {
            p.topics[0].partitions[0].error_code()
        }
        _ => answer
            .header
            .as_ref()
            .map_or(ErrorCode::None, |h| h.error_code()),
    };
    assert_ne!(
        code,
        ErrorCode::None,
        "the zombie leader acknowledged: {answer:?}"
    );
    eprintln!("the zombie leader's answer to the produce it held: {code:?}");
    // It returns as a follower of the new leader, which holds exactly the acknowledged 25.
    eventually("the old leader following the new one", || {
        let p = partition(&cluster, leader, "paused");
        (p.leader_id as usize == next && p.isr_nodes.len() == 3).then_some(())
    });
    assert_holds(&cluster, next, "paused", 25);
}

/// Every record of partition 0 below broker `id`'s high watermark, as (offset, key, value),
/// read across the gaps compaction leaves.
fn read_compacted(cluster: &Cluster, id: usize, topic: &str) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
    let mut c = cluster.broker(id).client();
    let mut out = Vec::new();
    let mut next = 0;
    loop {
        let p = c.fetch(topic, 0, next, 0, 0, 0);
        assert_eq!(p.error_code(), ErrorCode::None, "fetch at {next}: {p:?}");
        if next >= p.high_watermark {
            return out;
        }
        for item in strom_protocol::batch::BatchIter::new(&p.records) {
            let (range, header) = item.expect("a whole batch");
            next = next.max(header.next_offset());
            let batch = Bytes::copy_from_slice(&p.records[range]);
            for r in strom_protocol::batch::Records::new(batch).expect("a batch") {
                let r = r.expect("a record");
                let (key, value) = (r.key.unwrap_or_default(), r.value.unwrap_or_default());
                out.push((r.offset, key.to_vec(), value.to_vec()));
            }
        }
    }
}

/// A follower away while its leader compacted: what it fetches skips the offsets of whole
/// batches compaction removed. It fills those gaps (its own log keeps no gaps, which its crash
/// recovery relies on), catches up, rejoins the ISR, and once it leads serves every key's
/// newest value at the offset the old leader had it.
#[test]
fn a_follower_catches_up_across_offsets_its_leaders_compaction_removed() {
    let mut cluster = Cluster::start_with(&["--retention-check-interval-ms", "100"]);
    create(
        &cluster,
        "profiles",
        2,
        &[("cleanup.policy", "compact"), ("segment.bytes", "4096")],
    );
    let (leader, away) = leader_and_follower(&cluster, "profiles");
    cluster.kill(away);
    eventually("the follower out of the ISR", || {
        (partition(&cluster, leader, "profiles").isr_nodes.len() == 1).then_some(())
    });

    // Twelve updates of each of five profiles, one batch each (~13 to a segment): compaction
    // removes whole batches from the closed segments.
    let mut c = cluster.broker(leader).client();
    for i in 0..60 {
        let b = batch_of(&[Rec {
            key: Some(format!("profile-{}", i % 5).into_bytes()),
            value: Some(format!("{i:0>250}").into_bytes()),
            ..Rec::default()
        }]);
        let r = c.produce("profiles", 0, &[b], Acks::All);
        assert_eq!(r.error_code(), ErrorCode::None, "{r:?}");
    }
    // Compaction runs every 100 ms; wait until it has removed batches (gaps to cross).
    let before = eventually("the leader's compaction", || {
        let held = read_compacted(&cluster, leader, "profiles");
        (held.len() < 50).then_some(held)
    });

    cluster.restart(away);
    eventually("the follower back in the ISR", || {
        (partition(&cluster, leader, "profiles").isr_nodes.len() == 2).then_some(())
    });
    cluster.kill(leader);
    let next = leader_other_than(&cluster, "profiles", Some(leader), away);
    assert_eq!(next, away, "the only other replica in the ISR");
    let after = read_compacted(&cluster, away, "profiles");
    let newest = |records: &[(i64, Vec<u8>, Vec<u8>)]| {
        let mut m = std::collections::BTreeMap::new();
        for (offset, key, value) in records {
            m.insert(key.clone(), (*offset, value.clone()));
        }
        m
    };
    assert_eq!(newest(&after), newest(&before), "every key's newest value");
    // Its own compaction may remove more, never anything the old leader did not hold.
    assert!(after.iter().all(|r| before.contains(r)), "{after:?}");
}

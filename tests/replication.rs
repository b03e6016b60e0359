//! Replicated partitions across three `strom serve` processes (docs/cluster.md,
//! "Replication"): followers copy their leaders' logs, `acks=all` is answered once every
//! in-sync replica holds the batches, a killed leader's acknowledged records are all on the
//! replica elected in its place, and a broker that returns truncates what it must, catches up
//! and rejoins the ISR. Under `min.insync.replicas`, `acks=all` is refused while `acks=1` goes
//! on. A leader killed and restarted again and again under an `acks=all` load loses nothing
//! acknowledged (issue 17's failure scenario 1).

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use strom_client::{Acks as ClientAcks, Producer, ProducerConfig};
use strom_protocol::ErrorCode;
use strom_protocol::messages::{Acks, CreatableTopic, PartitionMetadata};

use support::cluster::{Cluster, PATIENCE, eventually};
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

/// One record the producer got an acknowledgement for.
#[derive(Debug, Clone)]
struct Acked {
    partition: i32,
    offset: i64,
    key: String,
    value: String,
    sent: Instant,
    acked: Instant,
}

/// Produces keyed records with `acks=all` and idempotence through the Rust client (which
/// follows leader changes), on its own thread, until `stop`; every acknowledgement goes into
/// `acked`. Returns the records that failed for good.
fn produce_until(
    bootstrap: String,
    topic: &'static str,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        // The client's own account of retries and epoch bumps, for a failure report.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                std::env::var("STROM_TEST_CLIENT_LOG").unwrap_or_else(|_| "warn".to_string()),
            )
            .with_writer(std::io::stderr)
            .try_init();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let mut config = ProducerConfig::new(bootstrap);
            config.acks = ClientAcks::All;
            config.linger = Duration::from_millis(2);
            let producer = Producer::connect(config).await.expect("producer");
            let failed = Arc::new(Mutex::new(Vec::new()));
            let mut waiting = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{}", i % 32);
                let value = format!("v{i}");
                let sent = Instant::now();
                let delivery = producer
                    .send(topic, Some(key.as_bytes()), Some(value.as_bytes()), &[])
                    .await
                    .expect("send");
                let (acked, failed) = (acked.clone(), failed.clone());
                waiting.push(tokio::spawn(async move {
                    match delivery.await {
                        Ok(m) => acked.lock().expect("acked").push(Acked {
                            partition: m.partition,
                            offset: m.offset,
                            key,
                            value,
                            sent,
                            acked: Instant::now(),
                        }),
                        Err(e) => failed.lock().expect("failed").push(format!("{value}: {e}")),
                    }
                }));
                i += 1;
                // A steady trickle rather than a flood: the brokers share 2 cores with the test.
                if i.is_multiple_of(20) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            producer.flush().await.expect("flush");
            for w in waiting {
                w.await.expect("delivery task");
            }
            producer.close().await.expect("close");
            failed.lock().expect("failed").clone()
        })
    })
}

/// Issue 17's failure scenario 1: the leader of a partition is killed (SIGKILL) and restarted,
/// cycle after cycle, under a steady `acks=all` idempotent load (RF 3, min ISR 2). Every
/// acknowledged record is read back exactly once at its offset, every key's records in the
/// order they were sent; the time from each kill to the first acknowledged record sent after
/// it is reported. `STROM_FAILOVER_CYCLES` sets the cycles (3 by default; seeded by nothing:
/// the victim is always the current leader).
#[test]
fn leader_kill_loop_loses_nothing_acknowledged() {
    let cycles: usize = std::env::var("STROM_FAILOVER_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut cluster = Cluster::start();
    let mut c = cluster.broker(1).client();
    let r = c.create_topics(
        vec![CreatableTopic {
            replication_factor: Some(3),
            ..creatable("loop", 2, &[])
        }],
        false,
    );
    assert_eq!(r.topics[0].error_code(), ErrorCode::None, "{r:?}");
    drop(c);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<Acked>::new()));
    let producer = produce_until(
        cluster.native_bootstrap(),
        "loop",
        stop.clone(),
        acked.clone(),
    );
    eventually("the load running on partition 0", || {
        let acked = acked.lock().expect("acked");
        acked.iter().any(|a| a.partition == 0).then_some(())
    });
    let mut failovers = Vec::new();
    for cycle in 0..cycles {
        let asked = (1..=3)
            .find(|b| cluster.brokers[b - 1].is_some())
            .expect("a broker");
        let victim = leader_other_than(&cluster, "loop", None, asked);
        let killed = Instant::now();
        cluster.kill(victim);
        let first_after = loop {
            let found = {
                let acked = acked.lock().expect("acked");
                acked
                    .iter()
                    .rev()
                    .take_while(|a| a.acked > killed)
                    .filter(|a| a.partition == 0 && a.sent > killed)
                    .map(|a| a.acked)
                    .min()
            };
            if let Some(at) = found {
                break at;
            }
            if killed.elapsed() > PATIENCE {
                // What the cluster looked like, for the failure report.
                for b in cluster.brokers.iter().flatten() {
                    let t = b.client().topic_metadata("loop");
                    eprintln!("broker at {}: {:?}", b.addr, t.partitions);
                }
                for (i, dir) in cluster.dirs.iter().enumerate() {
                    // The newest stderr file beside the data directory: this run's.
                    let parent = dir.data().parent().map(std::path::Path::to_path_buf);
                    let newest = parent
                        .and_then(|p| std::fs::read_dir(p).ok())
                        .into_iter()
                        .flatten()
                        .flatten()
                        .filter(|e| e.path().extension().is_some_and(|x| x == "stderr"))
                        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
                    let log = newest
                        .and_then(|e| std::fs::read_to_string(e.path()).ok())
                        .unwrap_or_default();
                    let lines: Vec<&str> = log
                        .lines()
                        .filter(|l| {
                            !l.contains("openraft")
                                && !l.contains("connection ")
                                && !l.contains("ISR change")
                        })
                        .collect();
                    let from = lines.len().saturating_sub(60);
                    eprintln!("--- broker {} ---\n{}", i + 1, lines[from..].join("\n"));
                }
                panic!("no record acknowledged on partition 0 within {PATIENCE:?} of the kill");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        failovers.push(first_after.duration_since(killed));
        cluster.restart(victim);
        eventually("the restarted broker back in every ISR", || {
            let t = cluster.broker(victim).client().topic_metadata("loop");
            t.partitions
                .iter()
                .all(|p| p.isr_nodes.len() == 3)
                .then_some(())
        });
        eprintln!(
            "cycle {cycle}: broker {victim} killed, failover {:?}",
            failovers[cycle]
        );
    }
    stop.store(true, Ordering::Relaxed);
    let failed = producer.join().expect("producer thread");
    assert!(
        failed.is_empty(),
        "records that failed for good: {failed:?}"
    );
    let acked = acked.lock().expect("acked").clone();
    assert!(!acked.is_empty());

    // Read every partition back from its leader once its HW covers what was acknowledged.
    for partition in 0..2 {
        let mine: Vec<&Acked> = acked.iter().filter(|a| a.partition == partition).collect();
        let end = mine.iter().map(|a| a.offset + 1).max().unwrap_or(0);
        let leader = eventually("a leader whose HW covers the acknowledged", || {
            let asked = (1..=3).find(|b| cluster.brokers[b - 1].is_some())?;
            let p = cluster
                .broker(asked)
                .client()
                .topic_metadata("loop")
                .partitions[partition as usize]
                .clone();
            let leader = usize::try_from(p.leader_id).ok().filter(|l| *l >= 1)?;
            let hw = cluster
                .broker(leader)
                .client()
                .fetch("loop", partition, 0, 0, 0, 0)
                .high_watermark;
            (hw >= end).then_some(leader)
        });
        let log = cluster.broker(leader).client().fetch_all("loop", partition);
        let at: std::collections::BTreeMap<i64, (String, String)> = log
            .iter()
            .map(|r| {
                let text = |b: &Option<Vec<u8>>| {
                    String::from_utf8(b.clone().unwrap_or_default()).expect("utf-8")
                };
                (r.offset, (text(&r.key), text(&r.value)))
            })
            .collect();
        for a in &mine {
            assert_eq!(
                at.get(&a.offset),
                Some(&(a.key.clone(), a.value.clone())),
                "partition {partition}: acknowledged {a:?}"
            );
        }
        // Each record once (idempotence across failovers), each key's in the order sent.
        let mut values = std::collections::BTreeSet::new();
        let mut last_of_key: std::collections::BTreeMap<&str, u64> = Default::default();
        for (key, value) in at.values() {
            assert!(values.insert(value.clone()), "{value} stored twice");
            let n: u64 = value[1..].parse().expect("a number");
            if let Some(prev) = last_of_key.insert(key, n) {
                assert!(prev < n, "{key}: {prev} stored before {n}");
            }
        }
    }
    failovers.sort();
    let p = |q: f64| failovers[((failovers.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "leader kill -9 to the first acks=all record acknowledged: p50 {:?}, p99 {:?}, max {:?} over {} cycles ({} records acknowledged)",
        p(0.5),
        p(0.99),
        failovers.last().expect("a cycle"),
        failovers.len(),
        acked.len()
    );
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
    let leader = leader_other_than(&cluster, "profiles", None, 1);
    let p = partition(&cluster, leader, "profiles");
    let away = p
        .replica_nodes
        .iter()
        .map(|b| *b as usize)
        .find(|b| *b != leader)
        .expect("a follower");
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
    let marker = cluster.dirs[leader - 1]
        .data()
        .join("profiles-0")
        .join(".compacted");
    eventually("the leader's compaction", || marker.exists().then_some(()));
    let before = read_compacted(&cluster, leader, "profiles");
    assert!(before.len() < 50, "gaps to cross: {} records", before.len());

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

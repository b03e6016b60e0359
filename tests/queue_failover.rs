//! Queue groups across a failover (issue 17, scenario 10's shape for queue groups), against
//! three `strom serve` processes: a queue group's coordinator (the leader of its
//! `__queue_state` partition, RF 3, `min.insync.replicas` 2) is killed (SIGKILL) and restarted,
//! cycle after cycle, while two members take and acknowledge the records of an `acks=all`
//! stream. Afterwards:
//!
//! - every record the producer had acknowledged was handed out and acknowledged;
//! - no record was handed out again after its acknowledgement was answered (an acknowledged
//!   record never comes back);
//! - each record's attempts only go up (attempt counts never go down across a failover);
//! - no record was handed to a second member while the first one's lease ran (a record handed
//!   out again went out after the lease it was under had ended).
//!
//! Reports the time from each kill to the first acknowledgement answered after it.
//! `STROM_FAILOVER_CYCLES` sets the cycles (CI runs 2).

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strom_client::{Admin, ClientConfig, QueueConfig, QueueConsumer};
use strom_protocol::ErrorCode;
use strom_protocol::messages::{CoordinatorType, FindCoordinatorRequest, response};

use support::cluster::{Cluster, PATIENCE, eventually};
use support::load::{Load, create, cycles, full_isr, report, running};

const GROUP: &str = "mailers";
const TOPIC: &str = "mail";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One record handed to a member.
#[derive(Debug, Clone)]
struct Delivery {
    member: usize,
    attempt: u32,
    lease_until_ms: i64,
    /// Wall-clock ms when the member had it (the broker's clock is the same machine's).
    at_ms: i64,
}

/// What the members saw, by (partition, offset).
#[derive(Debug, Default)]
struct Seen {
    deliveries: BTreeMap<(i32, i64), Vec<Delivery>>,
    /// When each record's acknowledgement was answered (the first time).
    acked_ms: BTreeMap<(i32, i64), i64>,
    /// Acknowledgement times, to find the first after a kill.
    acks: Vec<Instant>,
    errors: Vec<String>,
}

struct Member {
    thread: JoinHandle<()>,
}

impl Member {
    /// A member that polls, acknowledges everything it gets, and records it all in `seen`.
    fn start(id: usize, bootstrap: String, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) -> Self {
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"); // ok: test set-up
            rt.block_on(async move {
                // Leases of 10 s: one answered too late (its answer lost with a coordinator)
                // comes back within the test.
                let mut config =
                    QueueConfig::new(bootstrap, GROUP, &[TOPIC]).setting("lease.ms", "10000");
                config.max_wait = Duration::from_millis(200);
                let mut member = loop {
                    match QueueConsumer::join(config.clone()).await {
                        Ok(m) => break m,
                        Err(e) if e.is_retriable() => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("member {id} cannot join: {e}"),
                    }
                };
                // Records acknowledged but not yet answered: (partition, offset).
                let mut unanswered: Vec<(i32, i64, u32)> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let polled = member.poll(100).await;
                    let at_ms = now_ms();
                    let refused = member.take_refused();
                    let failed = {
                        let mut seen = seen.lock().expect("seen"); // ok: never poisoned
                        match polled {
                            Ok(records) => {
                                // The answers sent with this poll were taken (or refused).
                                for (p, o, attempt) in unanswered.drain(..) {
                                    let was_refused = refused.iter().any(|r| {
                                        r.tp.partition == p
                                            && r.first_offset <= o
                                            && o <= r.last_offset
                                            && r.attempt == attempt
                                    });
                                    if !was_refused {
                                        seen.acked_ms.entry((p, o)).or_insert(at_ms);
                                        seen.acks.push(Instant::now());
                                    }
                                }
                                for r in &records {
                                    seen.deliveries
                                        .entry((r.partition(), r.offset()))
                                        .or_default()
                                        .push(Delivery {
                                            member: id,
                                            attempt: r.attempt(),
                                            lease_until_ms: r.lease_until_ms(),
                                            at_ms,
                                        });
                                    member.ack(r);
                                    unanswered.push((r.partition(), r.offset(), r.attempt()));
                                }
                                false
                            }
                            Err(e) => {
                                // The answers stay queued for the next poll.
                                seen.errors.push(format!("member {id}: {e}"));
                                true
                            }
                        }
                    };
                    if failed {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            });
        });
        Member { thread }
    }
}

/// Whether the group has finished every record of its partitions: all handed out, none
/// ready, in flight or dead-lettered.
async fn group_finished(cluster: &Cluster) -> bool {
    let Some(asked) = running(cluster) else {
        return false;
    };
    let bootstrap = cluster.broker(asked).addr.to_string();
    let Ok(admin) = Admin::connect(ClientConfig::new(bootstrap)).await else {
        return false;
    };
    let Ok(groups) = admin.describe_queue_groups(&[GROUP]).await else {
        return false;
    };
    groups.iter().all(|g| {
        g.partitions.len() == 2
            && g.partitions.iter().all(|p| {
                assert_eq!(p.dead_lettered + p.dead_lettering, 0, "{p:?}");
                p.next_offset == p.log_end_offset && p.ready == 0 && p.in_flight == 0
            })
    })
}

/// The broker that coordinates the group now (by its FindCoordinator answer).
fn coordinator(cluster: &Cluster) -> usize {
    eventually("the queue group's coordinator", || {
        let asked = running(cluster)?;
        let r = cluster.broker(asked).client().call(FindCoordinatorRequest {
            key: GROUP.into(),
            key_type: CoordinatorType::Queue.into(),
        });
        let Some(response::Body::FindCoordinator(f)) = r.body else {
            return None;
        };
        let id = usize::try_from(f.node_id).ok()?;
        (f.error_code() == ErrorCode::None && cluster.brokers.get(id.checked_sub(1)?)?.is_some())
            .then_some(id)
    })
}

#[test]
fn a_queue_coordinator_killed_while_members_acknowledge_loses_no_acknowledgement() {
    let mut cluster = Cluster::start();
    create(&cluster, TOPIC, 2);
    let load = Load::start(&cluster, TOPIC, 2);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let members: Vec<Member> = (0..2)
        .map(|id| Member::start(id, cluster.native_bootstrap(), seen.clone(), stop.clone()))
        .collect();
    eventually("the first acknowledgement", || {
        (!seen.lock().expect("seen").acks.is_empty()).then_some(())
    });
    let mut resumed = Vec::new();
    for cycle in 0..cycles(2) {
        let victim = coordinator(&cluster);
        let killed = Instant::now();
        cluster.kill(victim);
        let first = eventually("an acknowledgement answered after the kill", || {
            let s = seen.lock().expect("seen");
            s.acks.iter().copied().find(|t| *t > killed)
        });
        resumed.push(first.duration_since(killed));
        cluster.restart(victim);
        full_isr(&cluster, "__queue_state");
        eprintln!(
            "cycle {cycle}: queue coordinator {victim} killed, acknowledgements resumed after {:?}",
            first.duration_since(killed)
        );
    }
    let produced = load.finish();
    // In the end every produced record was handed out, and the group has finished them all:
    // nothing ready, in flight or dead-lettered, every partition handed out to its end. (An
    // acknowledgement sent again after a failover may be refused because the first one
    // landed: the group's own count says whether each record was finished.)
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime"); // ok: test set-up
    let started = Instant::now();
    loop {
        let missing = {
            let s = seen.lock().expect("seen");
            produced
                .iter()
                .filter(|a| !s.deliveries.contains_key(&(a.partition, a.offset)))
                .count()
        };
        let finished = missing == 0 && rt.block_on(group_finished(&cluster));
        if finished {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE * 3,
            "{missing} of {} records never handed out, or the group never finished them",
            produced.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for m in members {
        m.thread.join().expect("member thread");
    }
    let s = seen.lock().expect("seen");
    let mut again = 0usize;
    for ((p, o), ds) in &s.deliveries {
        for pair in ds.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(
                b.attempt > a.attempt,
                "{p}/{o}: attempt {} after attempt {} (attempts went down or repeated)",
                b.attempt,
                a.attempt
            );
            assert!(
                b.member == a.member || b.at_ms >= a.lease_until_ms,
                "{p}/{o}: handed to member {} at {} while member {}'s lease ran to {}",
                b.member,
                b.at_ms,
                a.member,
                a.lease_until_ms
            );
            again += 1;
        }
        if let (Some(acked), Some(last)) = (s.acked_ms.get(&(*p, *o)), ds.last()) {
            assert!(
                last.at_ms <= *acked,
                "{p}/{o}: handed out at {} after its acknowledgement was answered at {acked}",
                last.at_ms
            );
        }
    }
    eprintln!(
        "{} records produced, {} handed out again, {} member errors during failovers (retried)",
        produced.len(),
        again,
        s.errors.len()
    );
    report(
        "queue coordinator kill -9 to the first acknowledgement answered",
        resumed,
        produced.len(),
    );
}

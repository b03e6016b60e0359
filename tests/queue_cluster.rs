//! Queue groups in a cluster of three `strom serve` processes: a group's coordinator writes
//! dead-letter copies and redrives them back although other brokers lead most of the target
//! partitions (the writes go to each partition's leader), and every record arrives exactly
//! once.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use strom_client::{
    Admin, ClientConfig, Consumer, ConsumerConfig, HeaderRef, Producer, ProducerConfig,
    ProducerRecord, QueueConfig, QueueConsumer,
};
use strom_protocol::ErrorCode;
use strom_protocol::messages::{
    CoordinatorType, FindCoordinatorRequest, GroupHeartbeatRequest, QueueJoinRequest, TopicNames,
    response,
};

use support::cluster::{Cluster, PATIENCE, eventually};
use support::load::create;

const TOPIC: &str = "jobs";
const DLQ: &str = "jobs.dlq";
const GROUP: &str = "rejecters";
const PARTITIONS: i32 = 3;
const RECORDS: i64 = 30;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime") // ok: test set-up
}

/// Every record of `topic` up to its end, as (partition, offset, headers by key).
async fn read_all(bootstrap: &str, topic: &str) -> Vec<(i32, i64, BTreeMap<String, String>)> {
    let mut c = Consumer::connect(ConsumerConfig::new(bootstrap))
        .await
        .expect("consumer");
    let parts: Vec<(&str, i32)> = (0..PARTITIONS).map(|p| (topic, p)).collect();
    c.assign(&parts);
    c.seek_to_end(&parts).await.expect("ends");
    let ends: Vec<i64> = parts
        .iter()
        .map(|tp| c.position(*tp).expect("end"))
        .collect();
    c.seek_to_beginning(&parts).await.expect("starts");
    let mut out = Vec::new();
    let started = Instant::now();
    while parts
        .iter()
        .zip(&ends)
        .any(|(tp, end)| c.position(*tp).expect("position") < *end)
    {
        assert!(
            started.elapsed() < PATIENCE,
            "reading {topic} took too long"
        );
        for r in c.poll(Duration::from_millis(500)).await.expect("poll") {
            let headers = r
                .headers()
                .map(|h: HeaderRef<'_>| {
                    let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                    (h.key.to_string(), v.unwrap_or_default())
                })
                .collect();
            out.push((r.partition(), r.offset(), headers));
        }
    }
    out
}

/// A member of `config`'s group, once the cluster lets it join.
async fn join(config: QueueConfig) -> QueueConsumer {
    loop {
        match QueueConsumer::join(config.clone()).await {
            Ok(m) => return m,
            Err(e) if e.is_retriable() => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("cannot join: {e}"),
        }
    }
}

/// The broker coordinating `key` (a queue group's id, or a dead-letter topic's redrive).
fn coordinator(cluster: &Cluster, key: &str) -> i32 {
    coordinator_of(cluster, key, CoordinatorType::Queue)
}

/// The broker coordinating `key` as `kind`.
fn coordinator_of(cluster: &Cluster, key: &str, kind: CoordinatorType) -> i32 {
    eventually("the coordinator", || {
        let r = cluster.broker(1).client().call(FindCoordinatorRequest {
            key: key.into(),
            key_type: kind.into(),
        });
        let Some(response::Body::FindCoordinator(f)) = r.body else {
            return None;
        };
        (f.error_code() == ErrorCode::None).then_some(f.node_id)
    })
}

#[test]
fn dead_letter_and_redrive_copies_reach_partitions_other_brokers_lead_exactly_once() {
    let cluster = Cluster::start();
    create(&cluster, TOPIC, PARTITIONS);
    create(&cluster, DLQ, PARTITIONS);
    let bootstrap = cluster.native_bootstrap();
    let rt = runtime();

    // The group's coordinator leads at most one of the dead-letter partitions: the others'
    // copies must go to another broker.
    let coordinating = coordinator(&cluster, GROUP);
    let dlq_leaders: Vec<i32> = cluster
        .broker(1)
        .client()
        .topic_metadata(DLQ)
        .partitions
        .iter()
        .map(|p| p.leader_id)
        .collect();
    assert!(
        dlq_leaders.iter().any(|l| *l != coordinating),
        "coordinator {coordinating} leads every dead-letter partition ({dlq_leaders:?}): \
         nothing here would be forwarded"
    );

    rt.block_on(async {
        let producer = Producer::connect(ProducerConfig::new(bootstrap.clone()))
            .await
            .expect("producer");
        let mut deliveries = Vec::new();
        for i in 0..RECORDS {
            let value = format!("job-{i}");
            let record = ProducerRecord::new(TOPIC)
                .partition(i32::try_from(i).expect("small") % PARTITIONS)
                .value(value.as_bytes());
            deliveries.push(producer.send_record(record).await.expect("send"));
        }
        for d in deliveries {
            d.await.expect("acknowledged");
        }

        // One member rejects everything it gets: each record goes to the dead-letter topic.
        let mut member = join(QueueConfig::new(bootstrap.clone(), GROUP, &[TOPIC])).await;
        let mut rejected = 0;
        let started = Instant::now();
        while rejected < RECORDS {
            assert!(
                started.elapsed() < PATIENCE,
                "{rejected} records handed out"
            );
            for r in member.poll(100).await.expect("poll") {
                member.reject(&r, Some("no"));
                rejected += 1;
            }
        }
        member.flush().await.expect("the rejections answered");
        assert!(member.take_refused().is_empty(), "a rejection was refused");

        let admin = Admin::connect(ClientConfig::new(bootstrap.clone()))
            .await
            .expect("admin");
        let started = Instant::now();
        loop {
            let g = admin
                .describe_queue_groups(&[GROUP])
                .await
                .expect("describe");
            let (done, writing) = g[0].partitions.iter().fold((0, 0), |(d, w), p| {
                (d + p.dead_lettered, w + p.dead_lettering)
            });
            if done == RECORDS as u64 && writing == 0 {
                break;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{done} dead-lettered, {writing} still being written: {g:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Each record once in the dead-letter topic.
        let copies = read_all(&bootstrap, DLQ).await;
        let mut sources: Vec<(String, String)> = copies
            .iter()
            .map(|(_, _, h)| {
                (
                    h.get("strom.dlq.partition").cloned().unwrap_or_default(),
                    h.get("strom.dlq.offset").cloned().unwrap_or_default(),
                )
            })
            .collect();
        sources.sort();
        let mut want: Vec<(String, String)> = (0..RECORDS)
            .map(|i| ((i % 3).to_string(), (i / 3).to_string()))
            .collect();
        want.sort();
        assert_eq!(
            sources, want,
            "dead-letter copies, by source partition and offset"
        );
        let landed: std::collections::BTreeSet<i32> = copies.iter().map(|c| c.0).collect();
        assert_eq!(landed.len(), 3, "copies in every dead-letter partition");

        // Redrive them back to where they came from: each once more in the topic.
        admin.redrive(DLQ, None, 1_000).await.expect("redrive");
        let started = Instant::now();
        loop {
            let s = admin.redrive_status(DLQ).await.expect("status");
            if s.as_ref().is_some_and(|s| s.done) {
                assert_eq!(s.map(|s| s.moved), Some(RECORDS as u64));
                break;
            }
            assert!(started.elapsed() < PATIENCE, "redrive unfinished: {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let back = read_all(&bootstrap, TOPIC).await;
        let mut redriven: Vec<String> = back
            .iter()
            .filter_map(|(_, _, h)| h.get("strom.redrive.source").cloned())
            .collect();
        redriven.sort();
        let mut want: Vec<String> = copies
            .iter()
            .map(|(p, o, _)| format!("{DLQ}/{p}/{o}"))
            .collect();
        want.sort();
        assert_eq!(redriven, want, "redriven copies, by dead-letter source");
    });
}

/// Delayed delivery across brokers: records produced with a delivery time to a partition the
/// group's coordinator only follows are not handed out before that time, and neither after the
/// partition's leader is killed (the runs went to the followers with the records, so the next
/// leader and every replica know them).
#[test]
fn delayed_records_wait_on_every_replica_and_across_a_leader_kill() {
    const GROUP_D: &str = "waiters";
    const TOPIC_D: &str = "later";
    const DELAYED: usize = 10;
    let mut cluster = Cluster::start();
    create(&cluster, TOPIC_D, PARTITIONS);
    let bootstrap = cluster.native_bootstrap();
    let coordinating = coordinator(&cluster, GROUP_D);
    let (partition, leader) = cluster
        .broker(1)
        .client()
        .topic_metadata(TOPIC_D)
        .partitions
        .iter()
        .find(|p| p.leader_id != coordinating)
        .map(|p| (p.partition, p.leader_id))
        .expect("a partition the coordinator does not lead");
    let rt = runtime();
    let deliver_at = rt.block_on(async {
        drop(join(QueueConfig::new(bootstrap.clone(), GROUP_D, &[TOPIC_D])).await);
        let producer = Producer::connect(ProducerConfig::new(bootstrap.clone()))
            .await
            .expect("producer");
        let deliver_at = now_ms() + 6_000;
        let mut deliveries = Vec::new();
        for i in 0..DELAYED {
            let value = format!("later-{i}");
            let record = ProducerRecord::new(TOPIC_D)
                .partition(partition)
                .value(value.as_bytes())
                .deliver_at(deliver_at);
            deliveries.push(producer.send_record(record).await.expect("send"));
        }
        for d in deliveries {
            d.await.expect("acknowledged");
        }
        deliver_at
    });
    // Acknowledged with acks=all: both followers hold the records, and so their runs.
    cluster.kill(usize::try_from(leader).expect("a broker id"));
    rt.block_on(async {
        let mut member = join(QueueConfig::new(bootstrap.clone(), GROUP_D, &[TOPIC_D])).await;
        let mut handed = 0;
        let started = Instant::now();
        while handed < DELAYED {
            assert!(
                started.elapsed() < PATIENCE,
                "{handed} of {DELAYED} delayed records handed out"
            );
            match member.poll(100).await {
                Ok(records) => {
                    let at = now_ms();
                    for r in records {
                        assert!(
                            at >= deliver_at,
                            "{}/{} handed out {} ms before its delivery time",
                            r.partition(),
                            r.offset(),
                            deliver_at - at
                        );
                        member.ack(&r);
                        handed += 1;
                    }
                }
                Err(e) if e.is_retriable() => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("poll: {e}"),
            }
        }
    });
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One id, one kind of group, where the two kinds of an id are coordinated by different
/// brokers: a queue group cannot start under a consumer group's id, nor a consumer group under
/// a queue group's.
#[test]
fn one_id_names_one_kind_of_group_across_coordinators() {
    let cluster = Cluster::start();
    create(&cluster, TOPIC, PARTITIONS);
    // Two ids whose consumer-group and queue-group coordinators differ.
    let ids: Vec<(String, usize, usize)> = (0..200)
        .map(|i| format!("kind-{i}"))
        .map(|id| {
            let group = coordinator_of(&cluster, &id, CoordinatorType::Group);
            let queue = coordinator_of(&cluster, &id, CoordinatorType::Queue);
            let b = |n: i32| usize::try_from(n).expect("a broker id");
            (id, b(group), b(queue))
        })
        .filter(|(_, g, q)| g != q)
        .take(2)
        .collect();
    assert_eq!(
        ids.len(),
        2,
        "no ids with coordinators on different brokers"
    );
    let heartbeat = |id: &str| GroupHeartbeatRequest {
        group_id: id.into(),
        member_id: String::new(),
        member_epoch: 0,
        session_timeout_ms: 0,
        subscribed_topics: Some(TopicNames {
            names: vec![TOPIC.into()],
        }),
        assignor: String::new(),
        owned_partitions: vec![],
    };
    let queue_join = |id: &str| QueueJoinRequest {
        group_id: id.into(),
        member_id: "worker".into(),
        topics: vec![TOPIC.into()],
        session_timeout_ms: 0,
        settings: Default::default(),
    };
    let heartbeat_code = |broker: usize, id: &str| {
        let r = cluster.broker(broker).client().call(heartbeat(id));
        let Some(response::Body::GroupHeartbeat(hb)) = r.body else {
            panic!("{r:?}")
        };
        (hb.error_code(), hb.error_message)
    };
    let queue_join_code = |broker: usize, id: &str| {
        let r = cluster.broker(broker).client().call(queue_join(id));
        let Some(response::Body::QueueJoin(j)) = r.body else {
            panic!("{r:?}")
        };
        (j.error_code(), j.error_message)
    };
    // A consumer group first: the queue group of its id is refused.
    let (id, group_at, queue_at) = &ids[0];
    assert_eq!(heartbeat_code(*group_at, id).0, ErrorCode::None);
    let (code, msg) = queue_join_code(*queue_at, id);
    assert_eq!(code, ErrorCode::InconsistentGroupProtocol, "{msg:?}");
    // A queue group first: the consumer group of its id is refused.
    let (id, group_at, queue_at) = &ids[1];
    assert_eq!(queue_join_code(*queue_at, id).0, ErrorCode::None);
    let (code, msg) = heartbeat_code(*group_at, id);
    assert_eq!(code, ErrorCode::InconsistentGroupProtocol, "{msg:?}");
}

//! Fast replay of the committed corpus of the `kafka_request` fuzz target (and of every crash the
//! fuzzer found, kept under `fuzz/regressions/kafka_request/`) through the same entry point the
//! target runs, `strom_broker::fuzzing::kafka_request`: the Kafka listener's request reader
//! (header, API and version check, size cap, body decoder). This is what CI runs instead of the
//! fuzzer. A missing or empty corpus fails the test rather than passing vacuously. How to fuzz:
//! `docs/fuzzing.md`.

#[path = "support/kafka.rs"]
mod kafka;
mod support;

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// `fuzz/<kind>/kafka_request/` of the repository.
fn fuzz_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join("kafka_request")
}

/// Files of `dir`, sorted; an absent directory has none.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read corpus dir").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn kafka_request_corpus() {
    let corpus = files(&fuzz_dir("corpus"));
    assert!(
        !corpus.is_empty(),
        "the corpus of kafka_request is missing or empty: expected files in {}",
        fuzz_dir("corpus").display()
    );
    let regressions = files(&fuzz_dir("regressions"));
    let mut failed = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let data = fs::read(path).expect("read corpus file");
        if catch_unwind(AssertUnwindSafe(|| {
            strom_broker::fuzzing::kafka_request(&data)
        }))
        .is_err()
        {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs of kafka_request fail:\n{}",
        failed.len(),
        corpus.len() + regressions.len(),
        failed.join("\n")
    );
}

/// Writes the seed inputs of the corpus: one request frame (without its length prefix) for
/// every API at every version a real broker advertises, with most of each version's fields
/// set, plus a few frames for the reader's other paths. Run once before the first fuzzing with
/// `cargo test --test kafka_fuzz_corpus -- --ignored write_seeds`.
#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_seeds() {
    use kafka::*;
    use kafka_protocol::messages::ApiKey;
    use support::{Broker, TestDir};

    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let list = KafkaClient::to(&broker).api_versions(0).api_keys;
    let out = fuzz_dir("corpus");
    fs::create_dir_all(&out).expect("create the corpus directory");
    let write = |name: &str, data: &[u8]| {
        fs::write(out.join(format!("seed-{name}")), data).expect("write a seed");
    };
    let mut n = 0;
    let mut refused = Vec::new();
    for api in &list {
        let key = ApiKey::try_from(api.api_key).expect("a Kafka api key");
        for v in api.min_version..=api.max_version {
            let payload = seeds::request(key, v);
            write(&format!("{key:?}-v{v}"), &payload);
            n += 1;
            // A seed is a request the broker reads: it answers it (possibly with an error
            // code), it does not close the connection.
            let mut c = KafkaClient::to(&broker);
            c.send_raw(&framed(&payload));
            if c.try_recv_frame().is_err() {
                refused.push(format!("{key:?} v{v}"));
            }
        }
    }
    assert!(n >= 100, "only {n} api versions advertised");
    for (name, data) in seeds::others() {
        write(name, &data);
    }
    println!("seeds the broker did not answer: {refused:?}");
}

/// Seed requests: most of each version's fields set (a field a version does not have must be
/// left at its default, or the encoder refuses it).
mod seeds {
    use bytes::Bytes;
    use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
    use kafka_protocol::messages::consumer_protocol_assignment::{
        ConsumerProtocolAssignment, TopicPartition as AssignedPartitions,
    };
    use kafka_protocol::messages::consumer_protocol_subscription::{
        ConsumerProtocolSubscription, TopicPartition as OwnedPartitions,
    };
    use kafka_protocol::messages::create_topics_request::{
        CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
    };
    use kafka_protocol::messages::delete_topics_request::{DeleteTopicState, DeleteTopicsRequest};
    use kafka_protocol::messages::fetch_request::{
        FetchPartition, FetchRequest, FetchTopic, ForgottenTopic,
    };
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::leave_group_request::MemberIdentity;
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
    };
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    use kafka_protocol::messages::{
        ApiKey, BrokerId, DeleteGroupsRequest, DescribeGroupsRequest, FindCoordinatorRequest,
        GroupId, HeartbeatRequest, InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest,
        ListGroupsRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest,
        OffsetFetchRequest, ProduceRequest, ProducerId, SyncGroupRequest, TransactionalId,
    };
    use kafka_protocol::protocol::Encodable;
    use strom_protocol::batch::{BatchBuilder, HeaderRef, RecordRef};

    use crate::kafka::{raw_header, request_payload, s, topic_name};

    fn group(name: &str) -> GroupId {
        GroupId(s(name))
    }

    /// A record batch of `n` records, some with keys, nulls and headers; from an idempotent
    /// producer when `idempotent`.
    fn batch(n: usize, idempotent: bool) -> Bytes {
        let headers = [HeaderRef {
            key: "trace",
            value: Some(b"abc"),
        }];
        let mut b = if idempotent {
            BatchBuilder::default().producer(4000, 2, 17)
        } else {
            BatchBuilder::default()
        };
        for i in 0..n {
            b.push(&RecordRef {
                timestamp: 1_700_000_000_000 + i as i64,
                key: (i % 2 == 0).then_some(b"order-1".as_slice()),
                value: (i % 3 != 2).then_some(b"placed".as_slice()),
                headers: if i % 2 == 1 { &headers } else { &[] },
            })
            .expect("push a record");
        }
        b.finish().expect("finish a batch")
    }

    fn encoded<M: Encodable>(msg: &M, version: i16) -> Bytes {
        let mut out = bytes::BytesMut::new();
        msg.encode(&mut out, version).expect("encode");
        out.freeze()
    }

    /// A "consumer" protocol subscription, as JoinGroup carries it (version prefix included).
    fn subscription() -> Bytes {
        let sub = ConsumerProtocolSubscription::default()
            .with_topics(vec![s("orders"), s("payments")])
            .with_owned_partitions(vec![
                OwnedPartitions::default()
                    .with_topic(topic_name("orders"))
                    .with_partitions(vec![0, 2]),
            ])
            .with_generation_id(3)
            .with_rack_id(Some(s("rack-a")));
        let mut out = 3i16.to_be_bytes().to_vec();
        out.extend_from_slice(&encoded(&sub, 3));
        Bytes::from(out)
    }

    /// A "consumer" protocol assignment, as SyncGroup carries it.
    fn assignment() -> Bytes {
        let a = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            AssignedPartitions::default()
                .with_topic(topic_name("orders"))
                .with_partitions(vec![0, 1, 2]),
        ]);
        let mut out = 3i16.to_be_bytes().to_vec();
        out.extend_from_slice(&encoded(&a, 3));
        Bytes::from(out)
    }

    /// The payload of a request of `key` at `v`.
    pub fn request(key: ApiKey, v: i16) -> Vec<u8> {
        let id = 0x0102_0304 + i32::from(v);
        let client = Some("seed-client");
        macro_rules! p {
            ($body:expr) => {
                request_payload(key, v, id, client, &$body)
            };
        }
        let member = s("seed-client-1-18c0ffee");
        match key {
            ApiKey::Produce => p!(ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![
                    TopicProduceData::default()
                        .with_name(topic_name("orders"))
                        .with_partition_data(vec![
                            PartitionProduceData::default()
                                .with_index(0)
                                .with_records(Some(batch(3, false))),
                            PartitionProduceData::default()
                                .with_index(2)
                                .with_records(Some(batch(1, true))),
                        ]),
                    TopicProduceData::default()
                        .with_name(topic_name("payments"))
                        .with_partition_data(vec![
                            PartitionProduceData::default()
                                .with_index(1)
                                .with_records(None),
                        ]),
                ])),
            ApiKey::Fetch => p!(FetchRequest::default()
                .with_max_wait_ms(500)
                .with_min_bytes(1)
                .with_max_bytes(52_428_800)
                .with_isolation_level(1)
                .with_session_id(if v >= 7 { 7 } else { 0 })
                .with_session_epoch(if v >= 7 { 1 } else { -1 })
                .with_topics(vec![
                    FetchTopic::default()
                        .with_topic(topic_name("orders"))
                        .with_partitions(vec![
                            FetchPartition::default()
                                .with_partition(0)
                                .with_current_leader_epoch(if v >= 9 { 0 } else { -1 })
                                .with_fetch_offset(42)
                                .with_last_fetched_epoch(if v >= 12 { 0 } else { -1 })
                                .with_log_start_offset(if v >= 5 { 0 } else { -1 })
                                .with_partition_max_bytes(1_048_576),
                            FetchPartition::default()
                                .with_partition(3)
                                .with_fetch_offset(0)
                                .with_partition_max_bytes(65_536),
                        ]),
                ])
                .with_forgotten_topics_data(if v >= 7 {
                    vec![
                        ForgottenTopic::default()
                            .with_topic(topic_name("old"))
                            .with_partitions(vec![1]),
                    ]
                } else {
                    vec![]
                })
                .with_rack_id(if v >= 11 { s("rack-a") } else { s("") })),
            ApiKey::ListOffsets => p!(ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_isolation_level(if v >= 2 { 1 } else { 0 })
                .with_timeout_ms(if v >= 10 { 5000 } else { 0 })
                .with_topics(vec![
                    ListOffsetsTopic::default()
                        .with_name(topic_name("orders"))
                        .with_partitions(
                            [-1i64, -2, 1_700_000_000_000]
                                .into_iter()
                                .zip(0..)
                                .map(|(ts, p)| {
                                    ListOffsetsPartition::default()
                                        .with_partition_index(p)
                                        .with_current_leader_epoch(if v >= 4 { 0 } else { -1 })
                                        .with_timestamp(ts)
                                })
                                .collect(),
                        ),
                ])),
            ApiKey::Metadata => p!(MetadataRequest::default()
                .with_topics(Some(
                    ["orders", "payments"]
                        .into_iter()
                        .map(|t| MetadataRequestTopic::default().with_name(Some(topic_name(t))))
                        .collect(),
                ))
                .with_allow_auto_topic_creation(v < 4 || v % 2 == 0)
                .with_include_cluster_authorized_operations((8..=10).contains(&v))
                .with_include_topic_authorized_operations(v >= 8)),
            ApiKey::OffsetCommit => p!(OffsetCommitRequest::default()
                .with_group_id(group("billing"))
                .with_generation_id_or_member_epoch(5)
                .with_member_id(member.clone())
                .with_group_instance_id((v >= 7).then(|| s("instance-1")))
                .with_retention_time_ms(if (2..=4).contains(&v) { 86_400_000 } else { -1 })
                .with_topics(vec![
                    OffsetCommitRequestTopic::default()
                        .with_name(topic_name("orders"))
                        .with_partitions(vec![
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(42)
                                .with_committed_leader_epoch(if v >= 6 { 0 } else { -1 })
                                .with_committed_metadata(Some(s("seen"))),
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(1)
                                .with_committed_offset(7)
                                .with_committed_metadata(None),
                        ]),
                ])),
            ApiKey::OffsetFetch if v >= 8 => p!(OffsetFetchRequest::default()
                .with_require_stable(true)
                .with_groups(vec![
                    OffsetFetchRequestGroup::default()
                        .with_group_id(group("billing"))
                        .with_topics(Some(vec![
                            OffsetFetchRequestTopics::default()
                                .with_name(topic_name("orders"))
                                .with_partition_indexes(vec![0, 1, 2]),
                        ])),
                    OffsetFetchRequestGroup::default()
                        .with_group_id(group("audit"))
                        .with_topics(None),
                ])),
            ApiKey::OffsetFetch => p!(OffsetFetchRequest::default()
                .with_group_id(group("billing"))
                .with_require_stable(v >= 7)
                .with_topics(Some(vec![
                    OffsetFetchRequestTopic::default()
                        .with_name(topic_name("orders"))
                        .with_partition_indexes(vec![0, 1, 2]),
                ]))),
            ApiKey::FindCoordinator => p!(if v >= 4 {
                FindCoordinatorRequest::default()
                    .with_key_type(0)
                    .with_coordinator_keys(vec![s("billing"), s("audit")])
            } else {
                FindCoordinatorRequest::default().with_key(s("billing"))
            }),
            // A group per version: a second member would wait for the first to rejoin.
            ApiKey::JoinGroup => p!(JoinGroupRequest::default()
                .with_group_id(group(&format!("billing-v{v}")))
                .with_session_timeout_ms(45_000)
                .with_rebalance_timeout_ms(if v >= 1 { 300_000 } else { -1 })
                .with_member_id(if v >= 4 { member.clone() } else { s("") })
                .with_group_instance_id((v >= 5).then(|| s("instance-1")))
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![
                    JoinGroupRequestProtocol::default()
                        .with_name(s("range"))
                        .with_metadata(subscription()),
                    JoinGroupRequestProtocol::default()
                        .with_name(s("cooperative-sticky"))
                        .with_metadata(subscription()),
                ])
                .with_reason((v >= 8).then(|| s("rebalance needed")))),
            ApiKey::Heartbeat => p!(HeartbeatRequest::default()
                .with_group_id(group("billing"))
                .with_generation_id(5)
                .with_member_id(member.clone())
                .with_group_instance_id((v >= 3).then(|| s("instance-1")))),
            ApiKey::LeaveGroup => p!(if v >= 3 {
                LeaveGroupRequest::default()
                    .with_group_id(group("billing"))
                    .with_members(vec![
                        MemberIdentity::default()
                            .with_member_id(member.clone())
                            .with_group_instance_id(Some(s("instance-1")))
                            .with_reason((v >= 5).then(|| s("shutting down"))),
                    ])
            } else {
                LeaveGroupRequest::default()
                    .with_group_id(group("billing"))
                    .with_member_id(member.clone())
            }),
            ApiKey::SyncGroup => p!(SyncGroupRequest::default()
                .with_group_id(group("billing"))
                .with_generation_id(5)
                .with_member_id(member.clone())
                .with_group_instance_id((v >= 3).then(|| s("instance-1")))
                .with_protocol_type((v >= 5).then(|| s("consumer")))
                .with_protocol_name((v >= 5).then(|| s("range")))
                .with_assignments(vec![
                    SyncGroupRequestAssignment::default()
                        .with_member_id(member.clone())
                        .with_assignment(assignment()),
                ])),
            ApiKey::DescribeGroups => p!(DescribeGroupsRequest::default()
                .with_groups(vec![group("billing"), group("audit")])
                .with_include_authorized_operations(v >= 3)),
            ApiKey::ListGroups => p!(ListGroupsRequest::default()
                .with_states_filter(if v >= 4 { vec![s("Stable")] } else { vec![] })
                .with_types_filter(if v >= 5 { vec![s("classic")] } else { vec![] })),
            ApiKey::ApiVersions => p!(if v >= 3 {
                ApiVersionsRequest::default()
                    .with_client_software_name(s("librdkafka"))
                    .with_client_software_version(s("2.6.1"))
            } else {
                ApiVersionsRequest::default()
            }),
            ApiKey::CreateTopics => p!(CreateTopicsRequest::default()
                .with_timeout_ms(30_000)
                .with_validate_only(v >= 1 && v % 2 == 1)
                .with_topics(vec![
                    CreatableTopic::default()
                        .with_name(topic_name("orders"))
                        .with_num_partitions(3)
                        .with_replication_factor(1)
                        .with_configs(vec![
                            CreatableTopicConfig::default()
                                .with_name(s("retention.ms"))
                                .with_value(Some(s("604800000"))),
                            CreatableTopicConfig::default()
                                .with_name(s("cleanup.policy"))
                                .with_value(Some(s("compact"))),
                        ]),
                    CreatableTopic::default()
                        .with_name(topic_name("defaults"))
                        .with_num_partitions(if v >= 4 { -1 } else { 1 })
                        .with_replication_factor(if v >= 4 { -1 } else { 1 }),
                ])),
            ApiKey::DeleteTopics => p!(if v >= 6 {
                DeleteTopicsRequest::default()
                    .with_timeout_ms(30_000)
                    .with_topics(vec![
                        DeleteTopicState::default().with_name(Some(topic_name("orders"))),
                    ])
            } else {
                DeleteTopicsRequest::default()
                    .with_timeout_ms(30_000)
                    .with_topic_names(vec![topic_name("orders"), topic_name("payments")])
            }),
            ApiKey::InitProducerId => p!(InitProducerIdRequest::default()
                .with_transactional_id((v % 2 == 1).then(|| TransactionalId(s("tx-1"))))
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(if v >= 3 { 4000 } else { -1 }))
                .with_producer_epoch(if v >= 3 { 2 } else { -1 })),
            ApiKey::DeleteGroups => p!(DeleteGroupsRequest::default()
                .with_groups_names(vec![group("billing"), group("audit")])),
            other => panic!("{other:?} is advertised but has no seed: add one"),
        }
    }

    /// Frames for the reader's other paths: unknown keys, versions out of range, short frames,
    /// tagged fields in headers and bodies.
    pub fn others() -> Vec<(&'static str, Vec<u8>)> {
        let mut out = Vec::new();
        out.push(("unknown-key", raw_header(9999, 0, 1, Some(b"x"))));
        out.push(("short-header", raw_header(3, 1, 1, None)[..7].to_vec()));
        let mut v99 = raw_header(ApiKey::ApiVersions as i16, 99, 1, Some(b"future"));
        v99.extend_from_slice(&[0, 0, 0]);
        out.push(("api-versions-v99", v99));
        let mut produce2 = raw_header(ApiKey::Produce as i16, 2, 1, None);
        produce2.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.push(("produce-v2", produce2));
        // A flexible header with a tagged field, and a body with unknown tagged fields.
        let mut tagged = raw_header(ApiKey::Metadata as i16, 12, 1, Some(b"t"));
        tagged.extend_from_slice(&[1, 5, 3, b'a', b'b', b'c']);
        let mut body = bytes::BytesMut::new();
        let mut m = MetadataRequest::default().with_topics(None);
        m.unknown_tagged_fields
            .insert(100, Bytes::from_static(b"unknown"));
        m.encode(&mut body, 12).expect("encode");
        tagged.extend_from_slice(&body);
        out.push(("metadata-v12-tagged-fields", tagged));
        // An absurd count (the hazard of vendor/kafka-protocol/STROM_PATCHES.md).
        let mut absurd = raw_header(ApiKey::Metadata as i16, 1, 1, None);
        absurd.extend_from_slice(&i32::MAX.to_be_bytes());
        out.push(("metadata-v1-absurd-count", absurd));
        out
    }
}

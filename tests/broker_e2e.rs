//! End-to-end tests of `strom serve` over real TCP: a broker child process on an ephemeral
//! port of 127.0.0.1 with a temporary data directory, driven by a blocking client.
//!
//! Expectations that go beyond the wire protocol's documents are marked "Assumption:".

mod support;

use std::collections::VecDeque;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use strom_protocol::ErrorCode;
use strom_protocol::encode_request;
use strom_protocol::messages::*;

use support::*;

const NO_AUTO_CREATE: &[&str] = &["--auto-create-topics", "false"];

fn config<'a>(result: &'a DescribeConfigsResult, name: &str) -> &'a ConfigEntry {
    result
        .configs
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("config {name} in {result:?}"))
}

fn records(n: usize, ts0: i64, tag: &str) -> Vec<Rec> {
    (0..n)
        .map(|i| Rec::new(ts0 + i as i64, format!("{tag}-k{i}"), format!("{tag}-v{i}")))
        .collect()
}

// ------------------------------------------------------------------------------------------
// 1. Topic administration
// ------------------------------------------------------------------------------------------

#[test]
fn topics_are_created_listed_configured_and_deleted() {
    let dir = TestDir::new();
    // Broker-wide topic default: shows up with source BROKER.
    let args = [
        NO_AUTO_CREATE,
        &["--topic-config", "retention.bytes=1073741824"][..],
    ]
    .concat();
    let broker = Broker::start(&dir.data(), &args);
    let mut c = broker.client();

    let versions = c.api_versions();
    assert_eq!(versions.error_code(), ErrorCode::None);
    let keys: Vec<i32> = versions.api_versions.iter().map(|r| r.api_key).collect();
    for key in 1..=9 {
        assert!(
            keys.contains(&key),
            "ApiVersions lists api key {key}: {versions:?}"
        );
    }
    for range in &versions.api_versions {
        assert_eq!((range.min_version, range.max_version), (0, 0), "{range:?}");
    }
    assert_eq!(versions.max_frame_bytes, DEFAULT_MAX_FRAME_BYTES);

    // Create two topics in one request; results in request order.
    let created = c.create_topics(
        vec![
            creatable("orders", 3, &[("retention.ms", "3600000")]),
            creatable("events", 2, &[]),
        ],
        false,
    );
    let summary: Vec<(String, ErrorCode, i32)> = created
        .topics
        .iter()
        .map(|t| (t.name.clone(), t.error_code(), t.num_partitions))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("orders".to_string(), ErrorCode::None, 3),
            ("events".to_string(), ErrorCode::None, 2)
        ]
    );

    // Metadata: one broker (node 0, the address we connected to: assumption), the topics in
    // request order, every partition led by node 0 with empty logs.
    let meta = c.metadata(&["events", "orders"]);
    assert_eq!(meta.brokers.len(), 1, "{meta:?}");
    assert_eq!(meta.brokers[0].node_id, 0);
    assert_eq!(meta.brokers[0].host, "127.0.0.1");
    assert_eq!(meta.brokers[0].port, u32::from(broker.addr.port()));
    let names: Vec<&str> = meta.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["events", "orders"]);
    for (topic, count) in meta.topics.iter().zip([2, 3]) {
        assert_eq!(topic.error_code(), ErrorCode::None);
        assert!(!topic.is_internal);
        let indexes: Vec<i32> = topic.partitions.iter().map(|p| p.partition).collect();
        assert_eq!(indexes, (0..count).collect::<Vec<_>>(), "ordered by index");
        for p in &topic.partitions {
            assert_eq!(p.error_code(), ErrorCode::None);
            assert_eq!(p.leader_id, 0);
            assert_eq!(p.replica_nodes, [0]);
            assert_eq!(p.isr_nodes, [0]);
            assert_eq!((p.log_start_offset, p.log_end_offset), (0, 0));
        }
    }
    // all_topics lists the two topics, and the broker's internal topics, marked internal: its
    // own log of delayed runs (`__consumer_offsets` and `__queue_state` are created by the
    // first request that needs a group or queue coordinator, as Kafka does; docs/cluster.md).
    let listed = c.metadata_all().topics;
    let mut all: Vec<String> = listed
        .iter()
        .filter(|t| !t.is_internal)
        .map(|t| t.name.clone())
        .collect();
    all.sort();
    assert_eq!(all, ["events", "orders"]);
    let mut internal: Vec<&str> = listed
        .iter()
        .filter(|t| t.is_internal)
        .map(|t| t.name.as_str())
        .collect();
    internal.sort_unstable();
    assert_eq!(internal, ["__queue_delays"]);
    // Unknown and invalid names in Metadata.
    let meta = c.metadata(&["no-such-topic", "bad name!"]);
    assert_eq!(
        meta.topics[0].error_code(),
        ErrorCode::UnknownTopicOrPartition
    );
    assert!(meta.topics[0].partitions.is_empty());
    assert_eq!(meta.topics[1].error_code(), ErrorCode::InvalidTopicName);

    // DescribeConfigs: every effective config, sorted by name, with its source.
    let described = c.describe_configs("orders", &[]);
    assert_eq!(described.error_code(), ErrorCode::None, "{described:?}");
    let names: Vec<&str> = described.configs.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "configs are sorted by name");
    let retention = config(&described, "retention.ms");
    assert_eq!(retention.value, "3600000");
    assert_eq!(retention.source(), ConfigSource::Topic);
    let retention_bytes = config(&described, "retention.bytes");
    assert_eq!(retention_bytes.value, "1073741824");
    assert_eq!(retention_bytes.source(), ConfigSource::Broker);
    assert_eq!(
        config(&described, "max.message.bytes").source(),
        ConfigSource::Default
    );
    // Filtered by name.
    let only = c.describe_configs("orders", &["retention.ms"]);
    assert_eq!(only.configs.len(), 1, "{only:?}");
    assert_eq!(only.configs[0].value, "3600000");
    // A topic without the override.
    let events = c.describe_configs("events", &["retention.ms"]);
    assert_eq!(events.configs.len(), 1);
    assert_ne!(events.configs[0].source(), ConfigSource::Topic);
    assert_eq!(
        c.describe_configs("nope", &[]).error_code(),
        ErrorCode::UnknownTopicOrPartition
    );

    // AlterConfigs: incremental set, validated whole, reset.
    let altered = c.alter_configs("orders", &[("retention.ms", "7200000")], &[]);
    assert_eq!(altered.error_code(), ErrorCode::None, "{altered:?}");
    let now = c.describe_configs("orders", &["retention.ms", "retention.bytes"]);
    assert_eq!(config(&now, "retention.ms").value, "7200000");
    assert_eq!(config(&now, "retention.ms").source(), ConfigSource::Topic);
    assert_eq!(config(&now, "retention.bytes").value, "1073741824");
    for bad in [
        vec![("retention.ms", "not-a-number")],
        vec![("no.such.config", "1")],
        // a valid change next to an invalid one: neither applies
        vec![("retention.ms", "100"), ("no.such.config", "1")],
        // replication's settings are validated too
        vec![("min.insync.replicas", "0")],
        vec![("unclean.leader.election.enable", "maybe")],
    ] {
        let result = c.alter_configs("orders", &bad, &[]);
        assert_eq!(
            result.error_code(),
            ErrorCode::InvalidConfig,
            "{bad:?}: {result:?}"
        );
    }
    assert_eq!(
        config(
            &c.describe_configs("orders", &["retention.ms"]),
            "retention.ms"
        )
        .value,
        "7200000",
        "a failed AlterConfigs changes nothing"
    );
    // Kafka's replication settings are topic settings here too (defaults 1 and false).
    let repl = ["min.insync.replicas", "unclean.leader.election.enable"];
    let defaults = c.describe_configs("orders", &repl);
    assert_eq!(config(&defaults, "min.insync.replicas").value, "1");
    assert_eq!(
        config(&defaults, "unclean.leader.election.enable").value,
        "false"
    );
    let set = c.alter_configs(
        "orders",
        &[
            ("min.insync.replicas", "2"),
            ("unclean.leader.election.enable", "true"),
        ],
        &[],
    );
    assert_eq!(set.error_code(), ErrorCode::None, "{set:?}");
    let now = c.describe_configs("orders", &repl);
    assert_eq!(config(&now, "min.insync.replicas").value, "2");
    assert_eq!(config(&now, "unclean.leader.election.enable").value, "true");
    assert_eq!(
        c.alter_configs("orders", &[], &repl).error_code(),
        ErrorCode::None
    );
    let both = c.alter_configs("orders", &[("retention.ms", "1")], &["retention.ms"]);
    assert_eq!(
        both.error_code(),
        ErrorCode::InvalidRequest,
        "set and reset: {both:?}"
    );
    let reset = c.alter_configs("orders", &[], &["retention.ms"]);
    assert_eq!(reset.error_code(), ErrorCode::None, "{reset:?}");
    let after = c.describe_configs("orders", &["retention.ms"]);
    assert_eq!(
        config(&after, "retention.ms").source(),
        ConfigSource::Default
    );
    assert_ne!(config(&after, "retention.ms").value, "7200000");
    assert_eq!(
        c.alter_configs("nope", &[("retention.ms", "1")], &[])
            .error_code(),
        ErrorCode::UnknownTopicOrPartition
    );

    // CreateTopics failures: each topic of a request succeeds or fails on its own.
    let long_name = "a".repeat(250);
    let attempts: Vec<(CreatableTopic, ErrorCode)> = vec![
        (creatable("orders", 3, &[]), ErrorCode::TopicAlreadyExists),
        (creatable("", 1, &[]), ErrorCode::InvalidTopicName),
        (creatable("bad name", 1, &[]), ErrorCode::InvalidTopicName),
        (creatable("a/b", 1, &[]), ErrorCode::InvalidTopicName),
        (creatable(".", 1, &[]), ErrorCode::InvalidTopicName),
        (creatable("..", 1, &[]), ErrorCode::InvalidTopicName),
        (creatable(&long_name, 1, &[]), ErrorCode::InvalidTopicName),
        (creatable("fine", 2, &[]), ErrorCode::None),
        (creatable("zero", 0, &[]), ErrorCode::InvalidPartitions),
        (creatable("negative", -1, &[]), ErrorCode::InvalidPartitions),
        (
            creatable("unknown.config", 1, &[("no.such.config", "1")]),
            ErrorCode::InvalidConfig,
        ),
        (
            creatable("bad.value", 1, &[("retention.ms", "soon")]),
            ErrorCode::InvalidConfig,
        ),
    ];
    let (topics, expected): (Vec<_>, Vec<_>) = attempts.into_iter().unzip();
    let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    let results = c.create_topics(topics, false).topics;
    let got: Vec<(String, ErrorCode)> = results
        .iter()
        .map(|r| (r.name.clone(), r.error_code()))
        .collect();
    let want: Vec<(String, ErrorCode)> = names.into_iter().zip(expected).collect();
    assert_eq!(got, want);
    // validate_only creates nothing.
    let validated = c
        .create_topics(vec![creatable("ghost", 4, &[])], true)
        .topics;
    assert_eq!(validated[0].error_code(), ErrorCode::None, "{validated:?}");
    assert_eq!(validated[0].num_partitions, 4);
    let mut all: Vec<String> = c
        .metadata_all()
        .topics
        .into_iter()
        .filter(|t| !t.is_internal)
        .map(|t| t.name)
        .collect();
    all.sort();
    assert_eq!(
        all,
        ["events", "fine", "orders"],
        "only the valid topics exist"
    );

    // Produce to an unknown topic with auto-creation off.
    let batch = batch_of(&records(1, now_ms(), "x"));
    let p = c.produce(
        "no-such-topic",
        0,
        std::slice::from_ref(&batch),
        Acks::Leader,
    );
    assert_eq!(p.error_code(), ErrorCode::UnknownTopicOrPartition, "{p:?}");
    assert_eq!(p.base_offset, -1);

    // DeleteTopics: gone, unknown the second time, and a new topic of the same name is empty.
    assert_eq!(c.produce_ok("events", 1, &[batch.clone(), batch]), 0);
    assert_eq!(c.delete_topic("events").error_code(), ErrorCode::None);
    let gone = c.metadata(&["events"]);
    assert_eq!(
        gone.topics[0].error_code(),
        ErrorCode::UnknownTopicOrPartition
    );
    assert_eq!(
        c.delete_topic("events").error_code(),
        ErrorCode::UnknownTopicOrPartition
    );
    c.create_topic_ok("events", 1, &[]);
    let fresh = c.topic_metadata("events");
    assert_eq!(fresh.partitions.len(), 1);
    assert_eq!(
        fresh.partitions[0].log_end_offset, 0,
        "the old data went with the old topic"
    );
    assert!(c.fetch("events", 0, 0, 0, 0, 0).records.is_empty());
}

#[test]
fn produce_to_an_unknown_topic_creates_it_with_the_default_partition_count() {
    let dir = TestDir::new();
    // Auto-creation is on by default.
    let broker = Broker::start(&dir.data(), &["--default-partitions", "3"]);
    let mut c = broker.client();
    let recs = records(2, now_ms(), "auto");
    assert_eq!(c.produce_ok("auto.created", 2, &[batch_of(&recs)]), 0);
    let meta = c.topic_metadata("auto.created");
    assert_eq!(meta.partitions.len(), 3, "{meta:?}");
    assert_eq!(meta.partitions[2].log_end_offset, 2);
    assert_eq!(c.fetch_all("auto.created", 2), with_offsets(&recs, 0));
}

// ------------------------------------------------------------------------------------------
// 2. Produce with every acks mode
// ------------------------------------------------------------------------------------------

#[test]
fn produce_to_many_partitions_with_every_acks_mode() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), NO_AUTO_CREATE);
    let mut c = broker.client();
    c.create_topic_ok("multi", 4, &[]);
    c.create_topic_ok("other", 2, &[]);
    let ts = now_ms();
    // expected[p]: what partition p of "multi" holds, in order.
    let mut expected: Vec<Vec<Rec>> = vec![Vec::new(); 4];
    let order = [3, 0, 2, 1]; // partitions deliberately out of order

    // Three rounds: ACKS_LEADER, ACKS_DURABLE (both answered), ACKS_NONE (not answered).
    for (round, acks) in [Acks::Leader, Acks::Durable].into_iter().enumerate() {
        let mut data = Vec::new();
        for p in order {
            let recs = records(3, ts, &format!("r{round}-p{p}"));
            data.push(("multi", p, batch_of(&recs)));
            expected[p as usize].extend(recs);
        }
        let other = records(1, ts, &format!("other-r{round}"));
        data.push(("other", 1, batch_of(&other)));
        let response = c.produce_many(acks, &data);
        assert_eq!(response.topics.len(), 2, "{response:?}");
        assert_eq!(response.topics[0].name, "multi");
        assert_eq!(response.topics[1].name, "other");
        let got: Vec<(i32, ErrorCode, i64)> = response.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition, p.error_code(), p.base_offset))
            .collect();
        let base = 3 * round as i64;
        let want: Vec<(i32, ErrorCode, i64)> =
            order.iter().map(|&p| (p, ErrorCode::None, base)).collect();
        assert_eq!(
            got, want,
            "{acks:?}: partitions in request order, base offsets"
        );
        for p in &response.topics[0].partitions {
            assert_eq!(p.log_start_offset, 0);
        }
        let o = &response.topics[1].partitions[0];
        assert_eq!(
            (o.partition, o.error_code(), o.base_offset),
            (1, ErrorCode::None, round as i64)
        );
    }

    // ACKS_NONE: no response at all. The next response on this connection answers the request
    // sent after it.
    let mut data = Vec::new();
    for p in order {
        let recs = records(2, ts, &format!("none-p{p}"));
        data.push(("multi", p, batch_of(&recs)));
        expected[p as usize].extend(recs);
    }
    let silent = c.send_produce(Acks::None, &data);
    let meta_id = c.send_body(MetadataRequest {
        topics: vec!["multi".into()],
        all_topics: false,
        allow_auto_topic_creation: false,
    });
    let next = c.recv();
    assert_eq!(
        response_id(&next),
        meta_id,
        "no response for ACKS_NONE (id {silent})"
    );
    let meta = metadata_body(next);
    assert_eq!(meta.topics[0].name, "multi");
    // The ACKS_NONE data is there: long-poll for it (the broker need not have appended it
    // before answering the Metadata request).
    for p in order {
        let fetched = c.fetch("multi", p, 6, 0, 1, 30_000);
        assert_eq!(fetched.error_code(), ErrorCode::None);
        assert_eq!(
            records_from(&fetched.records, 6),
            with_offsets(&expected[p as usize][6..], 6),
            "ACKS_NONE data in partition {p}"
        );
    }
    let meta = c.topic_metadata("multi");
    for p in &meta.partitions {
        assert_eq!(p.log_end_offset, 8, "{p:?}");
    }

    // Several batches in one partition entry get consecutive offsets in the order sent.
    let first = records(2, ts, "multi-batch-a");
    let second = records(3, ts + 5, "multi-batch-b");
    let base = c.produce_ok("multi", 0, &[batch_of(&first), batch_of(&second)]);
    assert_eq!(base, 8);
    expected[0].extend(first);
    expected[0].extend(second);

    for p in 0..4 {
        assert_eq!(
            c.fetch_all("multi", p),
            with_offsets(&expected[p as usize], 0),
            "partition {p}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// 3. Fetch positions and ListOffsets
// ------------------------------------------------------------------------------------------

#[test]
fn fetch_from_every_position_and_list_offsets() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), NO_AUTO_CREATE);
    let mut c = broker.client();
    c.create_topic_ok("fetchy", 2, &[]);

    // 5 batches of 4 records; record i has timestamp ts0 + 10 * i.
    let ts0 = now_ms() - 100_000;
    let all: Vec<Rec> = (0..20)
        .map(|i| Rec::new(ts0 + 10 * i, format!("k{i}"), format!("value-{i}")))
        .collect();
    for (n, chunk) in all.chunks(4).enumerate() {
        assert_eq!(c.produce_ok("fetchy", 0, &[batch_of(chunk)]), 4 * n as i64);
    }
    let expected = with_offsets(&all, 0);

    // From the beginning.
    let f = c.fetch("fetchy", 0, 0, 0, 0, 0);
    assert_eq!(f.error_code(), ErrorCode::None);
    assert_eq!((f.high_watermark, f.log_start_offset), (20, 0));
    assert_eq!(decode_records(&f.records), expected);
    assert_eq!(batch_base_offsets(&f.records), [0, 4, 8, 12, 16]);

    // From the middle of a batch: the batch holding offset 6 (4..=7) comes first.
    let f = c.fetch("fetchy", 0, 6, 0, 0, 0);
    assert_eq!(f.error_code(), ErrorCode::None);
    assert_eq!(batch_base_offsets(&f.records)[0], 4);
    assert_eq!(records_from(&f.records, 6), expected[6..]);

    // A byte limit smaller than a batch still returns the first whole batch, and only it.
    let f = c.fetch("fetchy", 0, 9, 1, 0, 0);
    assert_eq!(f.error_code(), ErrorCode::None);
    assert_eq!(batch_base_offsets(&f.records), [8]);
    assert_eq!(decode_records(&f.records), expected[8..12]);

    // At the end: no records, no error.
    let f = c.fetch("fetchy", 0, 20, 0, 0, 0);
    assert_eq!(f.error_code(), ErrorCode::None);
    assert!(f.records.is_empty());
    assert_eq!(f.high_watermark, 20);

    // Past the end, and below the log start: OFFSET_OUT_OF_RANGE with the valid range.
    for offset in [21, 1000, -1] {
        let f = c.fetch("fetchy", 0, offset, 0, 0, 0);
        assert_eq!(
            f.error_code(),
            ErrorCode::OffsetOutOfRange,
            "offset {offset}: {f:?}"
        );
        assert_eq!((f.log_start_offset, f.high_watermark), (0, 20));
        assert!(f.records.is_empty());
    }

    // ListOffsets.
    assert_eq!(c.offset_of("fetchy", 0, OffsetSpec::Earliest, 0), 0);
    assert_eq!(c.offset_of("fetchy", 0, OffsetSpec::Latest, 0), 20);
    let by_time = |c: &mut Client, ts: i64| c.offset_of("fetchy", 0, OffsetSpec::Timestamp, ts);
    assert_eq!(by_time(&mut c, ts0 - 1_000), 0, "before every record");
    assert_eq!(by_time(&mut c, ts0), 0);
    assert_eq!(by_time(&mut c, ts0 + 90), 9, "exactly record 9's timestamp");
    assert_eq!(by_time(&mut c, ts0 + 85), 9, "between records 8 and 9");
    assert_eq!(by_time(&mut c, ts0 + 121), 13, "in the middle of a batch");
    assert_eq!(by_time(&mut c, ts0 + 190), 19, "the last record");
    assert_eq!(by_time(&mut c, ts0 + 191), -1, "after every record");
    let unspecified = c.list_offsets("fetchy", 0, OffsetSpec::Unspecified, 0);
    assert_eq!(unspecified.error_code(), ErrorCode::InvalidRequest);

    // An empty partition.
    assert_eq!(c.offset_of("fetchy", 1, OffsetSpec::Earliest, 0), 0);
    assert_eq!(c.offset_of("fetchy", 1, OffsetSpec::Latest, 0), 0);
    assert_eq!(c.offset_of("fetchy", 1, OffsetSpec::Timestamp, ts0), -1);
    let f = c.fetch("fetchy", 1, 0, 0, 0, 0);
    assert_eq!((f.error_code(), f.high_watermark), (ErrorCode::None, 0));
    assert!(f.records.is_empty());
}

// ------------------------------------------------------------------------------------------
// 4. Long polling
// ------------------------------------------------------------------------------------------

#[test]
fn long_poll_fetch_is_answered_by_a_produce_on_another_connection() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), NO_AUTO_CREATE);
    let mut consumer = broker.client();
    let mut producer = broker.client();
    consumer.create_topic_ok("poll", 1, &[]);
    let ts = now_ms();
    assert_eq!(
        producer.produce_ok("poll", 0, &[batch_of(&records(1, ts, "a"))]),
        0
    );

    // Wait for data at the log end, for up to 30 s.
    let started = Instant::now();
    let id = consumer.send_body(fetch_request("poll", 0, 1, 0, 1, 30_000));
    let new = records(2, ts + 1, "b");
    assert_eq!(producer.produce_ok("poll", 0, &[batch_of(&new)]), 1);
    let response = consumer.recv();
    assert_eq!(response_id(&response), id);
    let fetched = fetch_body(response).topics.remove(0).partitions.remove(0);
    assert_eq!(fetched.error_code(), ErrorCode::None);
    assert!(
        !fetched.records.is_empty(),
        "the long poll timed out after {:?} instead of returning the new records",
        started.elapsed()
    );
    assert_eq!(records_from(&fetched.records, 1), with_offsets(&new, 1));
    assert_eq!(fetched.high_watermark, 3);
}

#[test]
fn long_poll_without_data_answers_empty_after_max_wait() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), NO_AUTO_CREATE);
    let mut c = broker.client();
    c.create_topic_ok("quiet", 1, &[]);
    assert_eq!(
        c.produce_ok("quiet", 0, &[batch_of(&records(3, now_ms(), "q"))]),
        0
    );

    let started = Instant::now();
    let f = c.fetch("quiet", 0, 3, 0, 1, 200);
    let waited = started.elapsed();
    assert_eq!(f.error_code(), ErrorCode::None);
    assert!(f.records.is_empty());
    assert_eq!(f.high_watermark, 3);
    // The broker answers when max_wait_ms has passed: not before (a little slack for clock
    // granularity), and not much later.
    assert!(
        waited >= Duration::from_millis(150),
        "answered after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );

    // min_bytes = 0 answers at once, whatever max_wait_ms says.
    let started = Instant::now();
    let f = c.fetch("quiet", 0, 3, 0, 0, 30_000);
    assert_eq!(f.error_code(), ErrorCode::None);
    assert!(f.records.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "min_bytes 0 waited"
    );

    // Data already there answers at once too.
    let started = Instant::now();
    let f = c.fetch("quiet", 0, 0, 0, 1, 30_000);
    assert_eq!(decode_records(&f.records).len(), 3);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "available data waited"
    );
}

// ------------------------------------------------------------------------------------------
// 5. Pipelining
// ------------------------------------------------------------------------------------------

#[test]
fn pipelined_requests_are_answered_in_order() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), NO_AUTO_CREATE);
    let mut c = broker.client();
    c.create_topic_ok("pipe", 2, &[]);
    let ts = now_ms();

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Kind {
        Produce(i32),
        Fetch,
        Metadata,
    }
    let mut wire = BytesMut::new();
    let mut sent: Vec<(u32, Kind)> = Vec::new();
    let mut values: Vec<Vec<Rec>> = vec![Vec::new(); 2];
    for i in 0..200 {
        let (body, kind): (request::Body, Kind) = match i % 3 {
            0 => {
                let p = (i / 3) % 2;
                let rec = Rec::new(ts + i64::from(i), format!("k{i}"), format!("v{i}"));
                values[p as usize].push(rec.clone());
                let batch = batch_of(&[rec]);
                (
                    produce_request(Acks::Leader, &[("pipe", p, batch)]).into(),
                    Kind::Produce(p),
                )
            }
            // partition_max_bytes 1: one batch at most, so responses stay small
            1 => (fetch_request("pipe", 0, 0, 1, 0, 0).into(), Kind::Fetch),
            _ => (
                MetadataRequest {
                    topics: vec!["pipe".into()],
                    all_topics: false,
                    allow_auto_topic_creation: false,
                }
                .into(),
                Kind::Metadata,
            ),
        };
        let request = c.request(body);
        encode_request(&request, &mut wire).expect("encode");
        sent.push((correlation_id_of(&request), kind));
    }
    // All 200 requests in one write, before reading anything.
    c.send_raw(&wire);

    let mut next_offset = [0i64; 2];
    for (i, (id, kind)) in sent.iter().enumerate() {
        let response = c.recv();
        assert_eq!(
            response_id(&response),
            *id,
            "response {i} answers request {i}"
        );
        match kind {
            Kind::Produce(p) => {
                let body = produce_body(response);
                let r = &body.topics[0].partitions[0];
                assert_eq!((r.partition, r.error_code()), (*p, ErrorCode::None));
                // Assumption: requests of one connection are also processed in order, so the
                // k-th produce to a partition gets offset k.
                assert_eq!(r.base_offset, next_offset[*p as usize], "request {i}");
                next_offset[*p as usize] += 1;
            }
            Kind::Fetch => {
                let body = fetch_body(response);
                let r = &body.topics[0].partitions[0];
                assert_eq!(r.error_code(), ErrorCode::None, "request {i}");
                assert!(batch_base_offsets(&r.records).len() <= 1);
            }
            Kind::Metadata => {
                let body = metadata_body(response);
                assert_eq!(body.topics[0].name, "pipe");
                assert_eq!(body.topics[0].partitions.len(), 2);
            }
        }
    }
    for p in 0..2 {
        assert_eq!(c.fetch_all("pipe", p), with_offsets(&values[p as usize], 0));
    }
}

// ------------------------------------------------------------------------------------------
// 6. Graceful restart
// ------------------------------------------------------------------------------------------

#[test]
fn everything_survives_a_graceful_restart() {
    let dir = TestDir::new();
    let mut broker = Broker::start(&dir.data(), NO_AUTO_CREATE);
    let mut c = broker.client();
    // Small segments, so the data spans several segment files.
    c.create_topic_ok(
        "keep",
        3,
        &[("segment.bytes", "8192"), ("retention.ms", "86400000")],
    );
    c.create_topic_ok("keep.empty", 2, &[]);

    let mut rng = Rng::new(0x5eed);
    let ts0 = now_ms() - 60_000;
    let mut expected: Vec<Vec<Rec>> = vec![Vec::new(); 3];
    let mut n = 0i64;
    for round in 0..12 {
        for (p, part) in expected.iter_mut().enumerate() {
            let count = 1 + (round + p) % 5;
            let recs: Vec<Rec> = (0..count)
                .map(|_| {
                    n += 1;
                    Rec {
                        offset: -1,
                        timestamp: ts0 + n,
                        key: (n % 7 != 0).then(|| format!("key-{n}").into_bytes()),
                        value: (n % 11 != 0).then(|| {
                            let len = rng.below(800) as usize;
                            rng.bytes(len)
                        }),
                        headers: if n % 3 == 0 {
                            vec![
                                ("trace".to_string(), Some(format!("t{n}").into_bytes())),
                                ("empty".to_string(), None),
                            ]
                        } else {
                            vec![]
                        },
                    }
                })
                .collect();
            let base = c.produce_ok("keep", p as i32, &[batch_of(&recs)]);
            assert_eq!(base, part.len() as i64);
            part.extend(recs);
        }
    }
    let expected: Vec<Vec<Rec>> = expected.iter().map(|e| with_offsets(e, 0)).collect();
    let before: Vec<(Vec<Rec>, Vec<u8>)> = (0..3).map(|p| c.fetch_all_raw("keep", p)).collect();
    for p in 0..3 {
        assert_eq!(before[p].0, expected[p], "partition {p} before the restart");
    }
    drop(c);

    broker.stop();
    let broker = Broker::start(&dir.data(), NO_AUTO_CREATE);
    let mut c = broker.client();

    let meta = c.topic_metadata("keep");
    let ends: Vec<i64> = meta.partitions.iter().map(|p| p.log_end_offset).collect();
    let want: Vec<i64> = expected.iter().map(|e| e.len() as i64).collect();
    assert_eq!(ends, want);
    for p in 0..3 {
        let after = c.fetch_all_raw("keep", p as i32);
        assert_eq!(after.0, expected[p], "partition {p} after the restart");
        assert_eq!(
            after.1, before[p].1,
            "partition {p}: the stored batches are served as before"
        );
    }
    let empty = c.topic_metadata("keep.empty");
    assert_eq!(empty.partitions.len(), 2);
    assert!(empty.partitions.iter().all(|p| p.log_end_offset == 0));
    // Assumption: topic configs are persisted with the topic.
    let configs = c.describe_configs("keep", &["segment.bytes", "retention.ms"]);
    assert_eq!(config(&configs, "segment.bytes").value, "8192");
    assert_eq!(
        config(&configs, "segment.bytes").source(),
        ConfigSource::Topic
    );
    assert_eq!(config(&configs, "retention.ms").value, "86400000");

    // Appends continue where the log ended.
    for p in 0..3 {
        let more = records(2, now_ms(), &format!("more{p}"));
        assert_eq!(c.produce_ok("keep", p as i32, &[batch_of(&more)]), want[p]);
        let all = c.fetch_all("keep", p as i32);
        assert_eq!(all.len() as i64, want[p] + 2);
        assert_eq!(all[want[p] as usize..], with_offsets(&more, want[p])[..]);
    }
}

/// The metadata log is where topics live; each broker's topic files follow it. A data directory
/// from before the log existed is imported; a topic the log holds but the directory lost (a
/// crash between commit and open) comes back; a topic the log deleted never comes back from a
/// stale file.
#[test]
fn the_metadata_log_decides_which_topics_exist() {
    let dir = TestDir::new();
    let quorum = dir.data().join("meta").join("quorum");
    let topic_file = |name: &str| {
        dir.data()
            .join("meta")
            .join("topics")
            .join(format!("{name}.topic"))
    };
    let mut broker = Broker::start(&dir.data(), NO_AUTO_CREATE);
    let mut c = broker.client();
    c.create_topic_ok("older", 2, &[("retention.ms", "86400000")]);
    c.create_topic_ok("gone", 1, &[]);
    let recs = records(3, now_ms(), "old");
    assert_eq!(c.produce_ok("older", 1, &[batch_of(&recs)]), 0);
    drop(c);
    broker.stop();
    assert!(quorum.join("log").join("raft.log").exists());
    let stale = std::fs::read(topic_file("gone")).unwrap();

    // A directory without a metadata log (an older strom): its topics are recorded, not lost.
    std::fs::remove_dir_all(&quorum).unwrap();
    let mut broker = Broker::start(&dir.data(), NO_AUTO_CREATE);
    let mut c = broker.client();
    assert_eq!(c.fetch_all("older", 1), with_offsets(&recs, 0));
    let configs = c.describe_configs("older", &["retention.ms"]);
    assert_eq!(config(&configs, "retention.ms").value, "86400000");
    assert_eq!(c.delete_topic("gone").error_code(), ErrorCode::None);
    drop(c);
    broker.stop();

    // A stale file of a deleted topic, and a committed topic whose files are gone.
    std::fs::write(topic_file("gone"), stale).unwrap();
    std::fs::remove_file(topic_file("older")).unwrap();
    std::fs::remove_dir_all(dir.data().join("older-0")).unwrap();
    std::fs::remove_dir_all(dir.data().join("older-1")).unwrap();
    let broker = Broker::start(&dir.data(), NO_AUTO_CREATE);
    let mut c = broker.client();
    let names: Vec<String> = c
        .metadata_all()
        .topics
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(
        !names.contains(&"gone".to_string()),
        "a deleted topic came back: {names:?}"
    );
    assert!(!topic_file("gone").exists());
    let older = c.topic_metadata("older");
    assert_eq!(
        older.partitions.len(),
        2,
        "the committed topic is opened again"
    );
    let configs = c.describe_configs("older", &["retention.ms"]);
    assert_eq!(config(&configs, "retention.ms").value, "86400000");
}

// ------------------------------------------------------------------------------------------
// 7. kill -9 while durable produces are in flight
// ------------------------------------------------------------------------------------------

/// One acknowledged partition append.
#[derive(Debug, Clone)]
struct Acked {
    partition: i32,
    base_offset: i64,
    records: Vec<Rec>,
}

/// What the producer thread saw: everything it sent per partition (in order) and every ack.
#[derive(Debug, Default)]
struct ProducerLog {
    sent: Vec<Vec<Rec>>,
    acked: Vec<Acked>,
}

/// (partition, records) per partition entry of one produce request.
type PartitionRecords = Vec<(i32, Vec<Rec>)>;

const CRASH_PARTITIONS: i32 = 4;
const WINDOW: usize = 8;

/// Sends ACKS_DURABLE produces with up to [`WINDOW`] in flight until the connection breaks;
/// reports the number of acks so far after every response.
fn durable_producer(mut c: Client, acks_tx: mpsc::Sender<usize>) -> ProducerLog {
    let mut log = ProducerLog {
        sent: vec![Vec::new(); CRASH_PARTITIONS as usize],
        acked: Vec::new(),
    };
    // Per request in flight: its correlation id and what it carries per partition.
    let mut in_flight: VecDeque<(u32, PartitionRecords)> = VecDeque::new();
    let mut seq = 0u64;
    for j in 0u64.. {
        // Fill the window.
        while in_flight.len() < WINDOW {
            let first = (j as i32 + in_flight.len() as i32) % CRASH_PARTITIONS;
            let parts = [first, (first + 1) % CRASH_PARTITIONS];
            let mut entries = Vec::new();
            let mut data = Vec::new();
            for p in parts {
                let count = 1 + (seq % 3) as usize;
                let recs: Vec<Rec> = (0..count)
                    .map(|_| {
                        seq += 1;
                        let mut r = Rec::new(
                            now_ms(),
                            format!("p{p}-{seq}"),
                            format!("value-{seq}-").repeat(1 + (seq % 5) as usize),
                        );
                        r.headers = vec![("seq".into(), Some(seq.to_be_bytes().to_vec()))];
                        r
                    })
                    .collect();
                data.push(("crash", p, batch_of(&recs)));
                entries.push((p, recs));
            }
            let request = c.request(produce_request(Acks::Durable, &data));
            let mut wire = BytesMut::new();
            encode_request(&request, &mut wire).expect("encode");
            // Record as sent before writing: a partial write may still reach the broker.
            for (p, recs) in &entries {
                log.sent[*p as usize].extend(recs.iter().cloned());
            }
            in_flight.push_back((correlation_id_of(&request), entries));
            if c.try_send_raw(&wire).is_err() {
                return log;
            }
        }
        let Ok(response) = c.try_recv() else {
            return log; // the broker is gone
        };
        let (id, entries) = in_flight.pop_front().expect("a request in flight");
        assert_eq!(response_id(&response), id);
        let body = produce_body(response);
        assert_eq!(body.topics.len(), 1);
        for ((p, recs), r) in entries.into_iter().zip(&body.topics[0].partitions) {
            assert_eq!(r.partition, p);
            assert_eq!(r.error_code(), ErrorCode::None, "durable produce: {r:?}");
            log.acked.push(Acked {
                partition: p,
                base_offset: r.base_offset,
                records: recs,
            });
        }
        if acks_tx.send(log.acked.len()).is_err() {
            return log;
        }
    }
    log
}

#[test]
fn acknowledged_durable_produces_survive_kill_9() {
    let dir = TestDir::new();
    let mut broker = Broker::start(&dir.data(), NO_AUTO_CREATE);
    broker
        .client()
        .create_topic_ok("crash", CRASH_PARTITIONS, &[]);

    let (acks_tx, acks_rx) = mpsc::channel();
    let producer_client = broker.client();
    let producer = thread::spawn(move || durable_producer(producer_client, acks_tx));
    loop {
        match acks_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(n) if n >= 300 => break,
            Ok(_) => {}
            Err(e) => {
                let outcome = producer.join().map(|log| log.acked.len());
                panic!(
                    "the producer stopped before 300 acks ({e}): {}",
                    match outcome {
                        Ok(n) => format!("it returned after {n} acks"),
                        Err(panic) => panic_message(&*panic),
                    }
                );
            }
        }
    }
    broker.kill9();
    let log = producer
        .join()
        .unwrap_or_else(|panic| panic!("the producer panicked: {}", panic_message(&*panic)));
    assert!(log.acked.len() >= 300);

    let broker = Broker::start(&dir.data(), NO_AUTO_CREATE);
    let mut c = broker.client();
    for p in 0..CRASH_PARTITIONS {
        let sent = &log.sent[p as usize];
        let stored = c.fetch_all("crash", p);
        let acked: Vec<&Acked> = log.acked.iter().filter(|a| a.partition == p).collect();
        let acked_records: usize = acked.iter().map(|a| a.records.len()).sum();
        // The log is contiguous from 0 (fetch_all checks) and is exactly a prefix of what was
        // sent to the partition: at least everything acknowledged, perhaps some of what was in
        // flight, nothing else, nothing twice.
        assert!(
            stored.len() >= acked_records,
            "partition {p}: {} records stored, {acked_records} acknowledged",
            stored.len()
        );
        assert!(
            stored.len() <= sent.len(),
            "partition {p}: more stored than sent"
        );
        assert_eq!(
            stored,
            with_offsets(&sent[..stored.len()], 0),
            "partition {p}"
        );
        // Every acknowledged record sits at its acknowledged offset.
        for a in acked {
            let at = a.base_offset as usize;
            assert_eq!(
                stored[at..at + a.records.len()],
                with_offsets(&a.records, a.base_offset)[..],
                "partition {p}, acknowledged at {}",
                a.base_offset
            );
        }
        // And the recovered log takes appends at its end.
        let more = records(1, now_ms(), "after-crash");
        assert_eq!(
            c.produce_ok("crash", p, &[batch_of(&more)]),
            stored.len() as i64
        );
    }
}

/// `writeback.bytes` set: the partition writer starts write-back on the blocking pool as
/// appends pass it (and for a rolled segment's rest); nothing it does may change what is
/// stored or served.
#[test]
fn a_topic_with_early_writeback_stores_and_serves_everything() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), NO_AUTO_CREATE);
    let mut c = broker.client();
    c.create_topic_ok(
        "wb",
        1,
        &[("writeback.bytes", "4096"), ("segment.bytes", "16384")],
    );
    let described = c.describe_configs("wb", &["writeback.bytes"]);
    assert_eq!(config(&described, "writeback.bytes").value, "4096");
    let ts = now_ms();
    let mut expected = Vec::new();
    for i in 0..200 {
        let recs = records(10, ts, &format!("b{i}"));
        c.produce_ok("wb", 0, &[batch_of(&recs)]);
        expected.extend(recs);
    }
    assert_eq!(c.fetch_all("wb", 0), with_offsets(&expected, 0));
    let segments = std::fs::read_dir(dir.data().join("wb-0"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .count();
    assert!(
        segments >= 2,
        "the log rolled at least once ({segments} segments)"
    );
}

/// Consumers read below the high watermark. For a topic with a durable policy that is what
/// every replica has fsynced (here the one broker): a record acknowledged with acks=leader but
/// not yet fsynced is not handed to consumers, nor counted as the latest offset, and a long
/// poll waiting for it is answered once the fsync the policy asks for covers it.
#[test]
fn a_durable_topic_shows_consumers_only_what_is_fsynced() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), NO_AUTO_CREATE);
    let mut c = broker.client();
    let mut producer = broker.client();
    c.create_topic_ok("ledger", 1, &[("flush.messages", "3")]);
    let ts = now_ms();
    let first = records(2, ts, "a");
    assert_eq!(
        producer
            .produce("ledger", 0, &[batch_of(&first)], Acks::Leader)
            .base_offset,
        0
    );
    let fetched = c.fetch("ledger", 0, 0, 0, 0, 0);
    assert_eq!(fetched.error_code(), ErrorCode::None, "{fetched:?}");
    assert!(fetched.records.is_empty(), "2 of 3 messages: not fsynced");
    assert_eq!(fetched.high_watermark, 0);
    let latest = c.list_offsets("ledger", 0, OffsetSpec::Latest, 0);
    assert_eq!(latest.offset, 0, "{latest:?}");

    // A long poll for the first record is answered by the append that makes the policy fsync.
    let id = c.send_body(fetch_request("ledger", 0, 0, 0, 1, 30_000));
    let third = records(1, ts + 1, "b");
    assert_eq!(producer.produce_ok("ledger", 0, &[batch_of(&third)]), 2);
    let response = c.recv();
    assert_eq!(response_id(&response), id);
    let fetched = fetch_body(response).topics.remove(0).partitions.remove(0);
    assert_eq!(fetched.error_code(), ErrorCode::None);
    assert_eq!(fetched.high_watermark, 3);
    let mut all = with_offsets(&first, 0);
    all.extend(with_offsets(&third, 2));
    assert_eq!(records_from(&fetched.records, 0), all);
    assert_eq!(c.list_offsets("ledger", 0, OffsetSpec::Latest, 0).offset, 3);

    // Without the policy the HW is the log end again.
    assert_eq!(
        c.alter_configs("ledger", &[], &["flush.messages"])
            .error_code(),
        ErrorCode::None
    );
    let more = records(1, ts + 2, "c");
    assert_eq!(
        producer
            .produce("ledger", 0, &[batch_of(&more)], Acks::Leader)
            .base_offset,
        3
    );
    assert_eq!(c.fetch("ledger", 0, 3, 0, 0, 0).high_watermark, 4);
}

/// OffsetForLeaderEpoch and KIP-320's epoch checks on strom's protocol, as on Kafka's: the old
/// epoch ends where the new one began, the current one at the log end; Fetch, ListOffsets and
/// OffsetForLeaderEpoch naming an older epoch than the partition's get FENCED_LEADER_EPOCH, a
/// newer one UNKNOWN_LEADER_EPOCH; naming none is not checked.
#[test]
fn leader_epochs_are_checked_and_their_ends_answered_on_strom_protocol() {
    let dir = TestDir::new();
    let mut broker = Broker::start(&dir.data(), &[]);
    let mut c = broker.client();
    c.create_topic_ok("epochs", 1, &[]);
    let epoch_of = |c: &mut Client| c.topic_metadata("epochs").partitions[0].leader_epoch;
    let first = epoch_of(&mut c);
    assert_eq!(
        c.produce_ok("epochs", 0, &[batch_of(&records(3, 1, "a"))]),
        0
    );
    let ask = |c: &mut Client, current: Option<i32>, epoch: i32| {
        let r = c.call(OffsetForLeaderEpochRequest {
            topics: vec![OffsetForLeaderEpochTopic {
                name: "epochs".into(),
                partitions: vec![OffsetForLeaderEpochPartition {
                    partition: 0,
                    current_leader_epoch: current,
                    leader_epoch: epoch,
                }],
            }],
        });
        let Some(response::Body::OffsetForLeaderEpoch(r)) = r.body else {
            panic!("OffsetForLeaderEpoch answered with {r:?}");
        };
        let p = &r.topics[0].partitions[0];
        (p.error_code(), p.leader_epoch, p.end_offset)
    };
    assert_eq!(ask(&mut c, Some(first), first), (ErrorCode::None, first, 3));

    broker.stop();
    let broker = Broker::start(&dir.data(), &[]);
    let mut c = broker.client();
    // The new incarnation leads in a newer epoch once the controller has elected it again.
    let started = Instant::now();
    let mut second = epoch_of(&mut c);
    while second <= first && started.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(20));
        second = epoch_of(&mut c);
    }
    assert!(second > first, "epoch {first} then {second}");
    assert_eq!(
        c.produce_ok("epochs", 0, &[batch_of(&records(2, 5, "b"))]),
        3
    );
    assert_eq!(
        ask(&mut c, Some(second), first),
        (ErrorCode::None, first, 3)
    );
    assert_eq!(
        ask(&mut c, Some(second), second),
        (ErrorCode::None, second, 5)
    );
    assert_eq!(ask(&mut c, None, second), (ErrorCode::None, second, 5));
    assert_eq!(
        ask(&mut c, Some(first), first).0,
        ErrorCode::FencedLeaderEpoch
    );
    assert_eq!(
        ask(&mut c, Some(second + 1), second).0,
        ErrorCode::UnknownLeaderEpoch
    );
    assert_eq!(ask(&mut c, None, second + 5), (ErrorCode::None, second, 5));

    // Fetch and ListOffsets check the epoch the client names, and nothing without one.
    let fetch = |c: &mut Client, current: Option<i32>| {
        let mut req = fetch_request("epochs", 0, 0, 0, 0, 0);
        req.topics[0].partitions[0].current_leader_epoch = current;
        let body = fetch_body(c.call(req));
        body.topics[0].partitions[0].error_code()
    };
    assert_eq!(fetch(&mut c, None), ErrorCode::None);
    assert_eq!(fetch(&mut c, Some(second)), ErrorCode::None);
    assert_eq!(fetch(&mut c, Some(first)), ErrorCode::FencedLeaderEpoch);
    assert_eq!(
        fetch(&mut c, Some(second + 1)),
        ErrorCode::UnknownLeaderEpoch
    );
    let list = |c: &mut Client, current: Option<i32>| {
        let body = list_offsets_body(c.call(ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: "epochs".into(),
                partitions: vec![ListOffsetsPartition {
                    partition: 0,
                    spec: OffsetSpec::Latest as i32,
                    timestamp_ms: 0,
                    current_leader_epoch: current,
                }],
            }],
        }));
        let p = &body.topics[0].partitions[0];
        (p.error_code(), p.offset)
    };
    assert_eq!(list(&mut c, None), (ErrorCode::None, 5));
    assert_eq!(list(&mut c, Some(second)), (ErrorCode::None, 5));
    assert_eq!(list(&mut c, Some(first)).0, ErrorCode::FencedLeaderEpoch);
    assert_eq!(
        list(&mut c, Some(second + 1)).0,
        ErrorCode::UnknownLeaderEpoch
    );
}

//! Hostile and malformed input on the Kafka listener of `strom serve`. Each case runs on its own
//! connection; afterwards a well-behaved client on a new connection must still be served and the
//! data produced before the case must read back intact, and the broker's resident memory must
//! not have grown beyond a bound while the case ran.
//!
//! What the broker does with a frame it cannot read is what Kafka brokers do: it closes the
//! connection without an answer (`broker/src/kafka/mod.rs`). Expectations beyond Kafka's
//! protocol documents are marked "strom:".

#[path = "support/kafka.rs"]
mod kafka;
mod support;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, MetadataRequest, ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::Decodable;

use kafka::*;
use support::*;

const MIB: u64 = 1 << 20;

/// A broker holding a `seed` topic with known data, produced over the Kafka listener.
struct Setup {
    // Before the directory: dropping the broker prints its log when a test failed.
    broker: Broker,
    _dir: TestDir,
    seed: Vec<Vec<Rec>>,
}

const SEED_PARTITIONS: i32 = 2;

impl Setup {
    fn new() -> Setup {
        Setup::with_args(&[])
    }

    fn with_args(extra: &[&str]) -> Setup {
        let dir = TestDir::new();
        let broker = Broker::start(&dir.data(), extra);
        let mut c = KafkaClient::to(&broker);
        c.create_topic("seed", SEED_PARTITIONS);
        let ts = now_ms();
        let mut seed = Vec::new();
        for p in 0..SEED_PARTITIONS {
            let mut recs = Vec::new();
            for b in 0..3 {
                let batch: Vec<Rec> = (0..3)
                    .map(|i| Rec::new(ts + i, format!("seed-{p}-{b}-{i}"), format!("v{p}{b}{i}")))
                    .collect();
                assert_eq!(c.produce_ok("seed", p, batch_of(&batch)), recs.len() as i64);
                recs.extend(batch);
            }
            seed.push(with_offsets(&recs, 0));
        }
        Setup {
            broker,
            _dir: dir,
            seed,
        }
    }

    fn client(&self) -> KafkaClient {
        KafkaClient::to(&self.broker)
    }

    /// A new connection is served, and the seed data is exactly as produced.
    fn assert_healthy(&self) {
        let mut c = self.client();
        let versions = c.api_versions(3);
        assert_eq!(versions.error_code, code::NONE, "{versions:?}");
        assert!(versions.api_keys.len() >= 10, "{versions:?}");
        for p in 0..SEED_PARTITIONS {
            assert_eq!(
                c.fetch_all("seed", p),
                self.seed[p as usize],
                "seed partition {p} is intact"
            );
        }
    }

    /// Runs `case` while sampling the broker's RSS, then checks the broker is healthy and its
    /// RSS never rose more than `bound` bytes above where it started.
    fn run(&self, what: &str, bound: u64, case: impl FnOnce()) {
        let watch = RssWatch::new(self.broker.pid());
        let start = watch.start;
        case();
        self.assert_healthy();
        let peak = watch.peak();
        assert!(
            peak.saturating_sub(start) <= bound,
            "{what}: the broker's RSS rose from {} MiB to {} MiB",
            start / MIB,
            peak / MIB
        );
    }

    /// Sends one frame holding `payload` on a new connection and expects the broker to close
    /// it without an answer; then checks health and memory.
    fn expect_close(&self, what: &str, payload: &[u8]) {
        self.run(what, 64 * MIB, || {
            let mut c = self.client();
            // The broker may close (and reset) before all of it is written.
            let _ = c.try_send_raw(&framed(payload));
            c.expect_closed_without_answer();
        });
    }
}

/// The request header of `key` at `version` (flexible or not, as the version calls for) with
/// correlation id 1 and client id "hostile", followed by `body`.
fn request(key: ApiKey, version: i16, body: &[u8]) -> Vec<u8> {
    let mut out = raw_header(key as i16, version, 1, Some(b"hostile"));
    if key.request_header_version(version) >= 2 {
        out.push(0); // no tagged fields in the header
    }
    out.extend_from_slice(body);
    out
}

/// An unsigned varint, as flexible versions write lengths and counts.
fn uvarint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

// ------------------------------------------------------------------------------------------
// Absurd counts and lengths: the frame does not decode, the connection is closed, and nothing
// is reserved from the count.
// ------------------------------------------------------------------------------------------

#[test]
fn absurd_array_counts_close_the_connection_without_allocating() {
    let s = Setup::new();
    let max = i32::MAX.to_be_bytes();
    // Metadata v1: a topic array of 2^31 - 1 entries, and nothing after it.
    s.expect_close(
        "Metadata v1, 2^31-1 topics",
        &request(ApiKey::Metadata, 1, &max),
    );
    // The same count followed by 1,000 bytes of would-be topics.
    let mut body = max.to_vec();
    for _ in 0..250 {
        body.extend_from_slice(&[0, 2, b'a', b'b']);
    }
    s.expect_close(
        "Metadata v1, 2^31-1 topics, 250 present",
        &request(ApiKey::Metadata, 1, &body),
    );
    // Produce v3: transactional id null, acks 1, timeout, then 2^31 - 1 topic entries.
    let mut body = Vec::new();
    body.extend_from_slice(&(-1i16).to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&1000i32.to_be_bytes());
    body.extend_from_slice(&max);
    s.expect_close(
        "Produce v3, 2^31-1 topics",
        &request(ApiKey::Produce, 3, &body),
    );
    // Produce v3 with one topic claiming 2^31 - 1 partitions.
    let mut body = Vec::new();
    body.extend_from_slice(&(-1i16).to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&1000i32.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&[0, 4]);
    body.extend_from_slice(b"seed");
    body.extend_from_slice(&max);
    s.expect_close(
        "Produce v3, 2^31-1 partitions",
        &request(ApiKey::Produce, 3, &body),
    );
    // Flexible versions: a compact array count of u32::MAX (stored as count + 1).
    s.expect_close(
        "Metadata v12, compact topic count u32::MAX",
        &request(ApiKey::Metadata, 12, &uvarint(u64::from(u32::MAX))),
    );
    let mut body = Vec::new();
    body.push(0); // transactional id: null
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&1000i32.to_be_bytes());
    body.extend(uvarint(u64::from(u32::MAX)));
    s.expect_close(
        "Produce v9, compact topic count u32::MAX",
        &request(ApiKey::Produce, 9, &body),
    );
    // A varint longer than 5 bytes.
    s.expect_close(
        "Metadata v12, a 10-byte varint count",
        &request(ApiKey::Metadata, 12, &[0xFF; 10]),
    );
    // Fetch v4 with 2^31 - 1 topics; OffsetCommit v8 with u32::MAX - 1 topics.
    let mut body = Vec::new();
    body.extend_from_slice(&(-1i32).to_be_bytes()); // replica id
    body.extend_from_slice(&500i32.to_be_bytes()); // max wait
    body.extend_from_slice(&1i32.to_be_bytes()); // min bytes
    body.extend_from_slice(&(1i32 << 20).to_be_bytes()); // max bytes
    body.push(0); // isolation level
    body.extend_from_slice(&max);
    s.expect_close("Fetch v4, 2^31-1 topics", &request(ApiKey::Fetch, 4, &body));
    let mut body = Vec::new();
    body.extend(uvarint(2)); // group id "g" (compact: length + 1)
    body.push(b'g');
    body.extend_from_slice(&(-1i32).to_be_bytes()); // generation
    body.extend(uvarint(1)); // member id ""
    body.push(0); // group instance id: null
    body.extend(uvarint(u64::from(u32::MAX)));
    s.expect_close(
        "OffsetCommit v8, compact topic count u32::MAX",
        &request(ApiKey::OffsetCommit, 8, &body),
    );
}

#[test]
fn negative_lengths_close_the_connection() {
    let s = Setup::new();
    // Array counts below -1 (-1 is null where nullable).
    for count in [-2i32, i32::MIN] {
        s.expect_close(
            &format!("Metadata v1, topic count {count}"),
            &request(ApiKey::Metadata, 1, &count.to_be_bytes()),
        );
    }
    // Topic names of negative lengths (-1, null, is
    // `metadata_topic_with_a_null_name_is_not_silently_dropped`).
    for len in [-5i16, -2, i16::MIN] {
        let mut body = 1i32.to_be_bytes().to_vec();
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(b"seed");
        s.expect_close(
            &format!("Metadata v1, topic name length {len}"),
            &request(ApiKey::Metadata, 1, &body),
        );
    }
    // Produce v3: a records field of length -2 (-1 is null).
    let mut body = Vec::new();
    body.extend_from_slice(&(-1i16).to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&1000i32.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&[0, 4]);
    body.extend_from_slice(b"seed");
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&0i32.to_be_bytes()); // partition 0
    body.extend_from_slice(&(-2i32).to_be_bytes());
    body.extend_from_slice(&[0u8; 64]);
    s.expect_close(
        "Produce v3, records length -2",
        &request(ApiKey::Produce, 3, &body),
    );
    // A records field longer than the frame.
    let mut long = body.clone();
    let at = long.len() - 68;
    long[at..at + 4].copy_from_slice(&i32::MAX.to_be_bytes());
    s.expect_close(
        "Produce v3, records length 2^31-1",
        &request(ApiKey::Produce, 3, &long),
    );
}

#[test]
fn an_invalid_client_id_length_closes_the_connection() {
    let s = Setup::new();
    let header = |len: i16, rest: &[u8]| {
        let mut out = Vec::new();
        out.extend_from_slice(&(ApiKey::Metadata as i16).to_be_bytes());
        out.extend_from_slice(&1i16.to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(rest);
        out
    };
    // Longer than the frame, negative, the most negative; and a header cut inside the length.
    s.expect_close("client id length 32767", &header(i16::MAX, b"abc"));
    s.expect_close("client id length 100", &header(100, &[b'x'; 99]));
    s.expect_close("client id length -2", &header(-2, &[0, 0, 0, 0]));
    s.expect_close("client id length i16::MIN", &header(i16::MIN, &[0; 8]));
    let mut cut = header(5, b"");
    cut.truncate(9);
    s.expect_close("client id length cut in half", &cut);
    // Invalid UTF-8 in the client id.
    s.expect_close(
        "client id not UTF-8",
        &header(3, &[0xFF, 0xFE, 0xFD, 0, 0, 0, 0]),
    );
    // The same on ApiVersions, whose body the broker reads at any version.
    let mut versions = header(-7, b"");
    versions[..2].copy_from_slice(&(ApiKey::ApiVersions as i16).to_be_bytes());
    versions[2..4].copy_from_slice(&0i16.to_be_bytes());
    s.expect_close("ApiVersions v0, client id length -7", &versions);
    // A flexible header whose tagged-field section claims a 4 GiB field.
    let mut flexible = raw_header(ApiKey::Metadata as i16, 12, 1, Some(b"id"));
    flexible.push(1); // one tagged field
    flexible.push(0); // tag 0
    flexible.extend(uvarint(u64::from(u32::MAX)));
    flexible.extend_from_slice(&[0; 16]);
    s.expect_close("header tagged field of 4 GiB", &flexible);
}

// ------------------------------------------------------------------------------------------
// Frames the broker cannot take: over the limit, short, cut off.
// ------------------------------------------------------------------------------------------

/// A length prefix over `max_frame_bytes` closes the connection at once: the broker does not
/// wait for (or reserve room for) a body it will never accept. The request read timeout is set
/// far above the wait allowed here, so only an immediate close passes.
#[test]
fn length_prefixes_over_the_limit_close_the_connection_without_reading_the_body() {
    let s = Setup::with_args(&["--request-read-timeout-ms", "120000"]);
    for len in [u32::MAX, 0x8000_0000, 8 << 20 | 1] {
        s.run(&format!("length prefix {len}"), 16 * MIB, || {
            let mut c = s.client();
            c.send_raw(&len.to_be_bytes());
            c.send_raw(&[0, 3, 0, 1]); // the start of a Metadata header
            c.expect_closed_within(Duration::from_secs(10));
        });
    }
}

#[test]
fn max_frame_bytes_bounds_produce_and_max_control_frame_bytes_the_rest() {
    let s = Setup::with_args(&[
        "--max-frame-bytes",
        "65536",
        "--max-control-frame-bytes",
        "4096",
    ]);
    let mut c = s.client();
    c.create_topic("frames", 1);
    // A produce under the frame limit is served...
    let small = batch_of(&[Rec::new(now_ms(), "k", vec![7u8; 30_000])]);
    assert_eq!(c.produce_ok("frames", 0, small), 0);
    // ...one over it closes the connection, and nothing of it is appended.
    let big = batch_of(&[Rec::new(now_ms(), "k", vec![8u8; 70_000])]);
    let payload = request_payload(
        ApiKey::Produce,
        9,
        1,
        Some("big"),
        &produce_to(1, "frames", 0, big),
    );
    assert!(payload.len() > 65536);
    let _ = c.try_send_raw(&framed(&payload));
    c.expect_closed_without_answer();
    // A Metadata request over max_control_frame_bytes (but under max_frame_bytes) as well.
    let mut c = s.client();
    let topics = (0..400)
        .map(|i| {
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(topic_name(&format!("topic-{i:04}"))))
        })
        .collect();
    let payload = request_payload(
        ApiKey::Metadata,
        12,
        1,
        Some("big"),
        &MetadataRequest::default()
            .with_allow_auto_topic_creation(false)
            .with_topics(Some(topics)),
    );
    assert!(payload.len() > 4096 && payload.len() < 65536);
    let _ = c.try_send_raw(&framed(&payload));
    c.expect_closed_without_answer();
    let mut c = s.client();
    let p = c.fetch(12, "frames", 0, 0, 0, 0);
    assert_eq!(p.high_watermark, 1, "the large produce appended nothing");
    s.assert_healthy();
}

#[test]
fn frames_shorter_than_a_request_header_close_the_connection() {
    let s = Setup::new();
    let header = raw_header(ApiKey::Metadata as i16, 1, 1, None);
    for len in 0..8 {
        s.expect_close(&format!("a {len}-byte frame"), &header[..len]);
    }
}

#[test]
fn a_truncated_frame_then_eof_closes_the_connection() {
    let s = Setup::new();
    s.run("truncated frame", 16 * MIB, || {
        let mut c = s.client();
        let payload = request_payload(
            ApiKey::Metadata,
            1,
            1,
            Some("cut"),
            &MetadataRequest::default().with_topics(None),
        );
        let mut bytes = framed(&payload);
        bytes.truncate(bytes.len() - 3);
        c.send_raw(&bytes);
        c.shutdown_write();
        c.expect_closed_without_answer();
        // A prefix claiming 1 MiB, ten bytes of it, then EOF.
        let mut c = s.client();
        c.send_raw(&(1u32 << 20).to_be_bytes());
        c.send_raw(&[0; 10]);
        c.shutdown_write();
        c.expect_closed_without_answer();
    });
}

/// A Produce whose body ends in the middle of a field: the request is cut at every length from
/// the end of its header to one byte short of the whole.
#[test]
fn a_produce_cut_at_every_length_is_refused() {
    let s = Setup::new();
    let payload = request_payload(
        ApiKey::Produce,
        9,
        1,
        Some("cut"),
        &produce_to(1, "seed", 0, batch_of(&[Rec::new(now_ms(), "k", "v")])),
    );
    let header_len = raw_header(0, 9, 1, Some(b"cut")).len() + 1;
    s.run("Produce v9 cut at every length", 32 * MIB, || {
        for len in header_len..payload.len() {
            let mut c = s.client();
            c.send_raw(&framed(&payload[..len]));
            // A cut inside a record batch is a readable request whose records are damaged:
            // answered with CORRUPT_MESSAGE; any other cut closes the connection.
            match c.try_recv_frame() {
                Ok(mut answer) => {
                    // The v9 answer's header: the correlation id and an empty tag section.
                    let mut body = answer.split_off(5);
                    let r = ProduceResponse::decode(&mut body, 9).expect("a Produce v9 answer");
                    let p = &r.responses[0].partition_responses[0];
                    assert_eq!(p.error_code, code::CORRUPT_MESSAGE, "cut at {len}: {r:?}");
                }
                Err(e) => assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                    ),
                    "cut at {len}: {e}"
                ),
            }
        }
    });
}

#[test]
fn a_request_sent_one_byte_at_a_time_is_answered() {
    let s = Setup::new();
    let mut c = s.client();
    let payload = request_payload(
        ApiKey::Metadata,
        12,
        77,
        Some("slow"),
        &MetadataRequest::default()
            .with_allow_auto_topic_creation(false)
            .with_topics(Some(vec![
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(topic_name("seed"))),
            ])),
    );
    for byte in framed(&payload) {
        c.send_raw(&[byte]);
    }
    let r = c.recv::<MetadataRequest>(12, 77);
    assert_eq!(r.topics.len(), 1, "{r:?}");
    assert_eq!(
        r.topics[0].partitions.len(),
        SEED_PARTITIONS as usize,
        "{r:?}"
    );
    s.assert_healthy();
}

/// A client parks 20 long polls and pipelines 50 fetches, then goes away without reading an
/// answer. Data produced afterwards is stored and served, and a live client's long poll works.
#[test]
fn abandoned_long_polls_and_pipelined_requests_do_no_harm() {
    let s = Setup::new();
    let mut admin = s.client();
    admin.create_topic("lp", 1);
    {
        let mut c = s.client();
        for _ in 0..20 {
            c.send(12, &fetch_from("lp", 0, 0, 1, 30_000));
        }
        for _ in 0..50 {
            c.send(12, &fetch_from("seed", 0, 0, 0, 0));
        }
    }
    let recs = vec![Rec::new(now_ms(), "k", "v")];
    assert_eq!(admin.produce_ok("lp", 0, batch_of(&recs)), 0);
    assert_eq!(admin.fetch_all("lp", 0), with_offsets(&recs, 0));
    let p = admin.fetch(12, "lp", 0, 1, 1, 100);
    assert_eq!(p.error_code, code::NONE, "{p:?}");
    assert!(p.records.as_ref().is_none_or(|r| r.is_empty()), "{p:?}");
    s.assert_healthy();
}

// ------------------------------------------------------------------------------------------
// Readable requests with bad contents: error codes, nothing stored.
// ------------------------------------------------------------------------------------------

#[test]
fn produce_with_garbage_records_is_corrupt_message_and_stores_nothing() {
    let s = Setup::new();
    let mut c = s.client();
    c.create_topic("crc", 1);
    let good = batch_of(&[Rec::new(now_ms(), "key", "a value long enough to flip")]);
    let corrupt = |f: &dyn Fn(&mut Vec<u8>)| -> Bytes {
        let mut b = good.to_vec();
        f(&mut b);
        Bytes::from(b)
    };
    let mut rng = Rng::new(0x6A7B_A6E5);
    let cases: Vec<(&str, Bytes)> = vec![
        ("ten bytes of garbage", Bytes::from_static(&[0xAB; 10])),
        ("4 KiB of noise", Bytes::from(rng.bytes(4096))),
        (
            "a flipped bit in a value",
            corrupt(&|b| *b.last_mut().unwrap() ^= 0x01),
        ),
        ("a wrong CRC", corrupt(&|b| b[17] ^= 0xFF)),
        ("magic 1", corrupt(&|b| b[16] = 1)),
        ("cut short", corrupt(&|b| b.truncate(b.len() - 5))),
        (
            "a batch length past the end",
            corrupt(&|b| b[8..12].copy_from_slice(&4096i32.to_be_bytes())),
        ),
        (
            "a negative batch length",
            corrupt(&|b| b[8..12].copy_from_slice(&(-1i32).to_be_bytes())),
        ),
        ("a good batch then garbage", {
            let mut b = good.to_vec();
            b.extend_from_slice(&[0xCD; 40]);
            Bytes::from(b)
        }),
    ];
    for (what, bad) in &cases {
        for version in [3, 9, 12] {
            let p = c.produce(version, 1, "crc", 0, bad.clone());
            assert_eq!(
                p.error_code,
                code::CORRUPT_MESSAGE,
                "{what}, Produce v{version}: {p:?}"
            );
            assert_eq!(p.base_offset, -1, "{what}");
        }
        // All or nothing: a good batch before the bad one is not appended either.
        let mut both = good.to_vec();
        both.extend_from_slice(bad);
        let p = c.produce(9, -1, "crc", 0, Bytes::from(both));
        assert_eq!(p.error_code, code::CORRUPT_MESSAGE, "good + {what}: {p:?}");
    }
    let p = c.fetch(12, "crc", 0, 0, 0, 0);
    assert_eq!(
        (p.error_code, p.high_watermark),
        (code::NONE, 0),
        "nothing stored: {p:?}"
    );
    // The connection is still usable and the good batch alone is appended.
    assert_eq!(c.produce_ok("crc", 0, good), 0);
    s.assert_healthy();
}

/// A Produce whose partition carries no records at all (null) or an empty records field.
/// Kafka refuses both (an empty record set is INVALID_RECORD since 3.x; null is CORRUPT_MESSAGE
/// in older brokers); strom must refuse them with a non-zero code and store nothing, not
/// answer success with an offset.
#[test]
fn produce_with_null_or_empty_records_stores_nothing() {
    let s = Setup::new();
    let mut c = s.client();
    c.create_topic("empty", 1);
    for (what, records) in [("null", None), ("empty", Some(Bytes::new()))] {
        let req = ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(topic_name("empty"))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(records),
                    ]),
            ]);
        let r = c.call(9, &req);
        let p = &r.responses[0].partition_responses[0];
        assert_ne!(p.error_code, code::NONE, "{what} records: {r:?}");
        assert_eq!(p.base_offset, -1, "{what} records: {r:?}");
    }
    let p = c.fetch(12, "empty", 0, 0, 0, 0);
    assert_eq!((p.error_code, p.high_watermark), (code::NONE, 0), "{p:?}");
    s.assert_healthy();
}

// ------------------------------------------------------------------------------------------
// Many small entries: the decoded form of a frame is bounded.
// ------------------------------------------------------------------------------------------

/// The bound asserted on one request's memory: the default `max_inflight_bytes_total`, which
/// the configuration documents as "the bound on memory held by requests".
const REQUEST_MEMORY_BOUND: u64 = 128 * MIB;

/// A Produce v9 frame of 8 MiB (the default `max_frame_bytes`) holding nothing but empty topic
/// entries: 3 bytes each on the wire (empty compact name, empty compact partition array, no
/// tagged fields), about 2.8 million of them. Each is a struct of ~100 bytes once decoded, and
/// again in the core's request and in the answer. Measured (debug build): RSS 16 -> 408 MiB and
/// 9 s of broker CPU for one such frame; 4 at once on 4 connections: 1.35 GB, none answered
/// within 30 s; 8 at once (64 MiB of frames, within the in-flight budget): 3.6 GB.
#[test]
fn a_produce_of_millions_of_empty_topic_entries_stays_within_memory_bounds() {
    let s = Setup::new();
    let frame_limit = 8 << 20;
    let mut body = BytesMut::new();
    body.put_u8(0); // transactional id: null
    body.put_i16(1); // acks
    body.put_i32(1000); // timeout
    let header = request(ApiKey::Produce, 9, &[]);
    let n = (frame_limit - header.len() - body.len() - 6) / 3;
    body.extend(uvarint(n as u64 + 1));
    for _ in 0..n {
        body.put_slice(&[1, 1, 0]);
    }
    body.put_u8(0); // the request's tagged fields
    let mut payload = header;
    payload.extend_from_slice(&body);
    assert!(payload.len() <= frame_limit, "{}", payload.len());
    s.run(
        &format!("Produce v9 with {n} empty topics"),
        REQUEST_MEMORY_BOUND,
        || {
            let mut c = s.client();
            c.send_raw(&framed(&payload));
            // Answered (every entry an error) or closed: either way within the memory bound.
            let _ = c.try_recv_frame();
        },
    );
}

/// The same through Metadata, the largest control request (1 MiB by default): topic entries of
/// 2 bytes (an empty compact name, no tagged fields) at version 9, about half a million.
/// Measured: RSS 16 -> 110 MiB (debug build).
#[test]
fn a_metadata_request_of_half_a_million_topics_stays_within_memory_bounds() {
    let s = Setup::new();
    let frame_limit = 1 << 20;
    let header = request(ApiKey::Metadata, 9, &[]);
    let n = (frame_limit - header.len() - 16) / 2;
    let mut body = BytesMut::new();
    body.extend(uvarint(n as u64 + 1));
    for _ in 0..n {
        body.put_slice(&[1, 0]);
    }
    body.put_u8(0); // allow auto topic creation: false
    body.put_u8(0); // include cluster authorized operations: false
    body.put_u8(0); // include topic authorized operations: false
    body.put_u8(0); // tagged fields
    let mut payload = header;
    payload.extend_from_slice(&body);
    assert!(payload.len() <= frame_limit, "{}", payload.len());
    s.run(
        &format!("Metadata v9 with {n} topics"),
        REQUEST_MEMORY_BOUND,
        || {
            let mut c = s.client();
            c.send_raw(&framed(&payload));
            let _ = c.try_recv_frame();
        },
    );
}

// ------------------------------------------------------------------------------------------
// Noise
// ------------------------------------------------------------------------------------------

/// Random bytes in well-formed frames, with valid headers of every advertised API and version:
/// each frame is answered (with a decodable answer or a 6-byte UNSUPPORTED_VERSION one) or
/// closes the connection, and the broker stays healthy.
#[test]
fn random_bodies_after_valid_headers_are_answered_or_close_the_connection() {
    let s = Setup::new();
    let list = s.client().api_versions(0).api_keys;
    let mut rng = Rng::new(0x5EED_CAFE);
    s.run("random bodies", 64 * MIB, || {
        for api in &list {
            let key = ApiKey::try_from(api.api_key).expect("a Kafka api key");
            for v in api.min_version..=api.max_version {
                for len in [1usize, 7, 64, 1000] {
                    let mut c = s.client();
                    let body = rng.bytes(len);
                    let _ = c.try_send_raw(&framed(&request(key, v, &body)));
                    c.shutdown_write();
                    // The answer, if any, starts with the correlation id.
                    match c.try_recv_frame() {
                        Ok(answer) => assert_eq!(
                            &answer[..4],
                            &1i32.to_be_bytes(),
                            "{key:?} v{v} with {len} random bytes"
                        ),
                        Err(e) => assert!(
                            !matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ),
                            "{key:?} v{v}: no answer and no close"
                        ),
                    }
                }
            }
        }
    });
    // Plain noise, length prefix included.
    s.run("64 KiB of noise", 64 * MIB, || {
        let mut c = s.client();
        let _ = c.try_send_raw(&rng.bytes(64 << 10));
        c.shutdown_write();
        while c.try_recv_frame().is_ok() {}
    });
}

/// A Produce with acks=0 whose records are garbage: no answer (acks=0), nothing stored, and
/// strom: the connection stays usable (Kafka closes it so the client notices).
#[test]
fn garbage_with_acks_0_is_not_stored() {
    let s = Setup::new();
    let mut c = s.client();
    let id = c.send(
        9,
        &produce_to(0, "seed", 0, Bytes::from_static(&[0xEE; 61])),
    );
    let next = c.send(3, &kafka_protocol::messages::ApiVersionsRequest::default());
    let frame = c.recv_frame();
    assert_eq!(
        &frame[..4],
        &next.to_be_bytes(),
        "the acks=0 produce (correlation id {id}) was answered"
    );
    s.assert_healthy();
}

/// A Metadata topic entry with a null name. Before version 10 the name is not nullable: Kafka
/// cannot parse the request and closes the connection. From version 10 it is a topic named by
/// id only, which strom does not have: Kafka answers that entry with UNKNOWN_TOPIC_ID (100).
/// Either way the client must learn about it; the broker must not answer as if the entry had
/// not been asked for.
#[test]
fn metadata_topic_with_a_null_name_is_not_silently_dropped() {
    let s = Setup::new();
    for v in [1i16, 4, 9, 10, 12] {
        let mut body = Vec::new();
        if v >= 9 {
            body.extend(uvarint(3)); // two topics
        } else {
            body.extend_from_slice(&2i32.to_be_bytes());
        }
        for name in [None, Some(&b"seed"[..])] {
            if v >= 10 {
                body.extend_from_slice(&[0x42; 16]); // a topic id
            }
            match (name, v >= 9) {
                (None, true) => body.push(0),
                (None, false) => body.extend_from_slice(&(-1i16).to_be_bytes()),
                (Some(n), true) => {
                    body.extend(uvarint(n.len() as u64 + 1));
                    body.extend_from_slice(n);
                }
                (Some(n), false) => {
                    body.extend_from_slice(&(n.len() as i16).to_be_bytes());
                    body.extend_from_slice(n);
                }
            }
            if v >= 9 {
                body.push(0); // the topic's tagged fields
            }
        }
        if v >= 4 {
            body.push(0); // allow auto topic creation
        }
        if (8..=10).contains(&v) {
            body.push(0); // include cluster authorized operations
        }
        if v >= 8 {
            body.push(0); // include topic authorized operations
        }
        if v >= 9 {
            body.push(0); // tagged fields
        }
        let mut c = s.client();
        c.send_raw(&framed(&request(ApiKey::Metadata, v, &body)));
        let Ok(mut frame) = c.try_recv_frame() else {
            continue; // closed: the request was refused
        };
        let header_len = if v >= 9 { 5 } else { 4 };
        let mut answer = frame.split_off(header_len);
        let r = kafka_protocol::messages::MetadataResponse::decode(&mut answer, v)
            .unwrap_or_else(|e| panic!("v{v}: {e}"));
        assert_eq!(r.topics.len(), 2, "v{v}: one entry per topic asked: {r:?}");
        assert_ne!(
            r.topics[0].error_code,
            code::NONE,
            "v{v}: the nameless entry: {r:?}"
        );
    }
    s.assert_healthy();
}

//! Hostile and malformed input against `strom serve`. Each case runs on its own connection;
//! afterwards a well-behaved client on a new connection must still be served and the data
//! produced before the case must read back intact.
//!
//! Expectations that go beyond the wire protocol's documents are marked "Assumption:".

mod support;

use bytes::Bytes;
use strom_protocol::ErrorCode;
use strom_protocol::messages::*;

use support::*;

/// A broker (topic auto-creation off) holding a `seed` topic with known data.
struct Setup {
    _dir: TestDir,
    broker: Broker,
    seed: Vec<Vec<Rec>>,
}

const SEED_PARTITIONS: i32 = 2;

impl Setup {
    fn new() -> Setup {
        Setup::with_args(&[])
    }

    fn with_args(extra: &[&str]) -> Setup {
        let dir = TestDir::new();
        let args = [&["--auto-create-topics", "false"][..], extra].concat();
        let broker = Broker::start(&dir.data(), &args);
        let mut c = broker.client();
        c.create_topic_ok("seed", SEED_PARTITIONS, &[]);
        let ts = now_ms();
        let mut seed = Vec::new();
        for p in 0..SEED_PARTITIONS {
            let mut recs = Vec::new();
            for b in 0..3 {
                let batch: Vec<Rec> = (0..3)
                    .map(|i| Rec::new(ts + i, format!("seed-{p}-{b}-{i}"), format!("v{p}{b}{i}")))
                    .collect();
                assert_eq!(
                    c.produce_ok("seed", p, &[batch_of(&batch)]),
                    recs.len() as i64
                );
                recs.extend(batch);
            }
            seed.push(with_offsets(&recs, 0));
        }
        Setup {
            _dir: dir,
            broker,
            seed,
        }
    }

    fn client(&self) -> Client {
        self.broker.client()
    }

    /// A new connection is served, and the seed data is exactly as produced.
    fn assert_healthy(&self) {
        let mut c = self.client();
        let versions = c.api_versions();
        assert_eq!(versions.error_code(), ErrorCode::None);
        assert_eq!(
            versions.api_versions.len(),
            strom_protocol::api::SUPPORTED_APIS.len(),
            "{versions:?}"
        );
        for p in 0..SEED_PARTITIONS {
            assert_eq!(
                c.fetch_all("seed", p),
                self.seed[p as usize],
                "seed partition {p} is intact"
            );
        }
    }
}

/// A header-only request (no body) with any api key and version.
fn header_only(correlation_id: u32, api_key: i32, api_version: u32) -> Request {
    Request {
        header: Some(RequestHeader {
            correlation_id,
            api_key,
            api_version,
            client_id: None,
        }),
        body: None,
    }
}

/// Asserts a request-level error response: the correlation id echoed, `code` in the header,
/// no body.
fn assert_header_error(response: &Response, id: u32, codes: &[ErrorCode]) {
    assert_eq!(response_id(response), id);
    let code = header_error(response);
    assert!(
        codes.contains(&code),
        "header error {code:?}, expected one of {codes:?}"
    );
    assert!(
        response.body.is_none(),
        "an error response has no body: {response:?}"
    );
}

// ------------------------------------------------------------------------------------------
// Frames the broker cannot accept: it closes the connection.
// ------------------------------------------------------------------------------------------

#[test]
fn length_prefix_of_4_gib_closes_the_connection() {
    let s = Setup::new();
    let mut c = s.client();
    c.send_raw(&[0xFF, 0xFF, 0xFF, 0xFF, b'a', b'b', b'c']);
    c.expect_closed_without_answer();
    s.assert_healthy();
}

#[test]
fn frame_over_the_default_limit_closes_the_connection() {
    let s = Setup::new();
    let mut c = s.client();
    assert_eq!(c.api_versions().max_frame_bytes, DEFAULT_MAX_FRAME_BYTES);
    let mut frame = (DEFAULT_MAX_FRAME_BYTES + 1).to_be_bytes().to_vec();
    frame.extend_from_slice(&[0u8; 1024]);
    c.send_raw(&frame);
    c.expect_closed_without_answer();
    s.assert_healthy();
}

#[test]
fn max_frame_bytes_flag_sets_the_limit() {
    let s = Setup::with_args(&["--max-frame-bytes", "65536"]);
    let mut c = s.client();
    assert_eq!(c.api_versions().max_frame_bytes, 65536);
    c.create_topic_ok("frames", 1, &[]);
    // A produce whose frame is under the limit is served...
    let small = batch_of(&[Rec::new(now_ms(), "k", vec![7u8; 30_000])]);
    assert_eq!(c.produce_ok("frames", 0, &[small]), 0);
    // ...one over it closes the connection, and nothing of it is appended.
    let big = batch_of(&[Rec::new(now_ms(), "k", vec![8u8; 70_000])]);
    let request = c.request(produce_request(Acks::Leader, &[("frames", 0, big)]));
    // The broker may close (and reset) the connection before all of it is written.
    let _ = c.try_send_raw(&raw_request_frame(&request));
    c.expect_closed_without_answer();
    let mut c = s.client();
    assert_eq!(c.topic_metadata("frames").partitions[0].log_end_offset, 1);
    s.assert_healthy();
}

#[test]
fn empty_frame_closes_the_connection() {
    // A zero-length payload decodes as a Request without a header: not answerable (section 3,
    // rule 1 of docs/protocol.md).
    let s = Setup::new();
    let mut c = s.client();
    c.send_raw(&[0, 0, 0, 0]);
    c.expect_closed_without_answer();
    s.assert_healthy();
}

#[test]
fn truncated_frame_then_eof_closes_the_connection() {
    let s = Setup::new();
    let mut c = s.client();
    let mut bytes = 100u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0x0A; 10]);
    c.send_raw(&bytes);
    c.shutdown_write();
    c.expect_closed_without_answer();
    s.assert_healthy();
}

#[test]
fn random_bytes_close_the_connection_or_get_error_responses() {
    let s = Setup::new();
    let mut rng = Rng::new(0xBAD_5EED);
    // 64 KiB of noise as they come (the first four bytes are read as a length prefix)...
    // The broker may close (and reset) the connection before all of it is written.
    let mut c = s.client();
    let _ = c.try_send_raw(&rng.bytes(64 << 10));
    c.shutdown_write();
    c.expect_closed_or_error_responses();
    s.assert_healthy();
    // ...and 64 KiB of noise in a well-formed frame.
    let mut c = s.client();
    let _ = c.try_send_raw(&frame_bytes(&rng.bytes(64 << 10)));
    c.shutdown_write();
    c.expect_closed_or_error_responses();
    s.assert_healthy();
}

#[test]
fn request_sent_one_byte_at_a_time_is_answered() {
    let s = Setup::new();
    let mut c = s.client();
    let request = c.request(MetadataRequest {
        topics: vec!["seed".into()],
        all_topics: false,
        allow_auto_topic_creation: false,
    });
    for byte in raw_request_frame(&request) {
        c.send_raw(&[byte]);
    }
    let response = c.recv();
    assert_eq!(response_id(&response), correlation_id_of(&request));
    assert_eq!(metadata_body(response).topics[0].partitions.len(), 2);
    s.assert_healthy();
}

// ------------------------------------------------------------------------------------------
// Requests the broker answers with a request-level error; the connection stays usable.
// ------------------------------------------------------------------------------------------

#[test]
fn unknown_api_key_gets_an_error_and_the_connection_stays_usable() {
    let s = Setup::new();
    let mut c = s.client();
    // api key 999 with a body in field 1099 (tag (1099 << 3) | 2 = 0x44DA -> DA 44), 2 bytes.
    let id = c.next_correlation_id();
    c.send_raw(&raw_request_frame_with(
        &header_only(id, 999, 0),
        &[0xDA, 0x44, 0x02, 0x08, 0x01],
    ));
    let response = c.recv();
    assert_header_error(
        &response,
        id,
        &[ErrorCode::UnsupportedVersion, ErrorCode::InvalidRequest],
    );
    // api key 999 without any body.
    let id = c.next_correlation_id();
    c.send_raw(&raw_request_frame(&header_only(id, 999, 0)));
    assert_header_error(
        &c.recv(),
        id,
        &[ErrorCode::UnsupportedVersion, ErrorCode::InvalidRequest],
    );
    // A reserved api key (12, SyncGroup) with its future body field 112.
    let id = c.next_correlation_id();
    c.send_raw(&raw_request_frame_with(
        &header_only(id, 12, 0),
        &[0x82, 0x07, 0x00],
    ));
    assert_header_error(
        &c.recv(),
        id,
        &[ErrorCode::UnsupportedVersion, ErrorCode::InvalidRequest],
    );
    // Same connection: still served.
    assert_eq!(c.api_versions().error_code(), ErrorCode::None);
    assert_eq!(c.fetch_all("seed", 0), s.seed[0]);
    s.assert_healthy();
}

#[test]
fn malformed_envelopes_get_invalid_request() {
    // docs/protocol.md section 3: API_KEY_UNSPECIFIED, an absent body, or a body of another
    // API than the header's are INVALID_REQUEST.
    let s = Setup::new();
    let mut c = s.client();
    let cases: Vec<Request> = vec![
        {
            let mut r = Request::new(0, 0, ApiVersionsRequest::default());
            r.header.as_mut().unwrap().api_key = ApiKey::Unspecified as i32;
            r
        },
        header_only(0, ApiKey::Metadata as i32, 0),
        {
            let mut r = Request::new(0, 0, fetch_request("seed", 0, 0, 0, 0, 0));
            r.header.as_mut().unwrap().api_key = ApiKey::Metadata as i32;
            r
        },
    ];
    for mut request in cases {
        let id = c.next_correlation_id();
        request.header.as_mut().unwrap().correlation_id = id;
        c.send_raw(&raw_request_frame(&request));
        assert_header_error(&c.recv(), id, &[ErrorCode::InvalidRequest]);
    }
    assert_eq!(c.api_versions().error_code(), ErrorCode::None);
    s.assert_healthy();
}

#[test]
fn unsupported_api_version_gets_unsupported_version() {
    let s = Setup::new();
    let mut c = s.client();
    let id = c.next_correlation_id();
    let metadata_v1 = Request::new(
        id,
        1,
        MetadataRequest {
            topics: vec![],
            all_topics: true,
            allow_auto_topic_creation: false,
        },
    );
    assert_header_error(
        &c.call_request(&metadata_v1),
        id,
        &[ErrorCode::UnsupportedVersion],
    );
    // A produce at an unsupported version appends nothing (checked by assert_healthy).
    let id = c.next_correlation_id();
    let produce_v3 = Request::new(
        id,
        3,
        produce_request(
            Acks::Leader,
            &[("seed", 0, batch_of(&[Rec::new(now_ms(), "no", "no")]))],
        ),
    );
    assert_header_error(
        &c.call_request(&produce_v3),
        id,
        &[ErrorCode::UnsupportedVersion],
    );
    // ApiVersions is answered at any version: the error is inside its body, with the list.
    let id = c.next_correlation_id();
    let versions_v9 = Request::new(id, 9, ApiVersionsRequest::default());
    let versions = api_versions_body(c.call_request(&versions_v9));
    assert_eq!(versions.error_code(), ErrorCode::UnsupportedVersion);
    assert_eq!(
        versions.api_versions.len(),
        strom_protocol::api::SUPPORTED_APIS.len()
    );
    // Same connection, still usable.
    assert_eq!(c.metadata(&["seed"]).topics[0].partitions.len(), 2);
    s.assert_healthy();
}

// ------------------------------------------------------------------------------------------
// Bad record data and unknown partitions: per-partition error codes.
// ------------------------------------------------------------------------------------------

#[test]
fn batch_over_max_message_bytes_is_message_too_large() {
    let s = Setup::new();
    let mut c = s.client();
    c.create_topic_ok("small", 1, &[("max.message.bytes", "1024")]);
    let ts = now_ms();
    let big = batch_of(&[Rec::new(ts, "big", vec![0x42; 4096])]);
    let fine = batch_of(&[Rec::new(ts, "fine", vec![0x43; 100])]);
    assert!(big.len() > 4096 && fine.len() < 1024);

    let p = c.produce("small", 0, std::slice::from_ref(&big), Acks::Leader);
    assert_eq!(p.error_code(), ErrorCode::MessageTooLarge, "{p:?}");
    assert_eq!(p.base_offset, -1);
    // All or nothing: a fine batch before the big one is not appended either.
    let p = c.produce("small", 0, &[fine.clone(), big], Acks::Durable);
    assert_eq!(p.error_code(), ErrorCode::MessageTooLarge, "{p:?}");
    assert_eq!(
        c.offset_of("small", 0, OffsetSpec::Latest, 0),
        0,
        "nothing appended"
    );
    // The fine batch alone is.
    assert_eq!(c.produce_ok("small", 0, &[fine]), 0);
    s.assert_healthy();
}

#[test]
fn corrupt_batches_are_corrupt_message_and_append_nothing() {
    let s = Setup::new();
    let mut c = s.client();
    c.create_topic_ok("crc", 2, &[]);
    let good = batch_of(&[Rec::new(now_ms(), "key", "a value long enough to flip")]);
    let corrupt = |f: &dyn Fn(&mut Vec<u8>)| -> Bytes {
        let mut b = good.to_vec();
        f(&mut b);
        Bytes::from(b)
    };
    let cases: Vec<(&str, Bytes)> = vec![
        (
            "a flipped bit in a value",
            corrupt(&|b| *b.last_mut().unwrap() ^= 0x01),
        ),
        ("a wrong CRC", corrupt(&|b| b[17] ^= 0xFF)),
        ("magic 1", corrupt(&|b| b[16] = 1)),
        ("cut short", corrupt(&|b| b.truncate(b.len() - 5))),
        (
            "a length field past the end",
            corrupt(&|b| b[8..12].copy_from_slice(&4096i32.to_be_bytes())),
        ),
        ("ten bytes of garbage", Bytes::from_static(&[0xAB; 10])),
    ];
    for (what, bad) in &cases {
        let p = c.produce("crc", 0, std::slice::from_ref(bad), Acks::Leader);
        assert_eq!(p.error_code(), ErrorCode::CorruptMessage, "{what}: {p:?}");
        assert_eq!(p.base_offset, -1, "{what}");
        // All or nothing: a good batch before the bad one is not appended either.
        let p = c.produce("crc", 0, &[good.clone(), bad.clone()], Acks::Leader);
        assert_eq!(
            p.error_code(),
            ErrorCode::CorruptMessage,
            "good + {what}: {p:?}"
        );
    }
    assert_eq!(
        c.offset_of("crc", 0, OffsetSpec::Latest, 0),
        0,
        "nothing appended"
    );
    // Partitions of one request fail or succeed on their own.
    let response = c.produce_many(
        Acks::Leader,
        &[("crc", 0, cases[1].1.clone()), ("crc", 1, good.clone())],
    );
    let parts = &response.topics[0].partitions;
    assert_eq!(parts[0].error_code(), ErrorCode::CorruptMessage);
    assert_eq!(
        (parts[1].error_code(), parts[1].base_offset),
        (ErrorCode::None, 0)
    );
    assert_eq!(c.offset_of("crc", 0, OffsetSpec::Latest, 0), 0);
    assert_eq!(c.fetch_all("crc", 1).len(), 1);
    s.assert_healthy();
}

#[test]
fn deleted_topic_is_unknown() {
    let s = Setup::new();
    let mut c = s.client();
    c.create_topic_ok("doomed", 2, &[]);
    assert_eq!(
        c.produce_ok("doomed", 1, &[batch_of(&[Rec::new(now_ms(), "k", "v")])]),
        0
    );
    assert_eq!(c.delete_topic("doomed").error_code(), ErrorCode::None);

    let f = c.fetch("doomed", 1, 0, 0, 0, 0);
    assert_eq!(f.error_code(), ErrorCode::UnknownTopicOrPartition, "{f:?}");
    assert!(f.records.is_empty());
    let p = c.produce(
        "doomed",
        1,
        &[batch_of(&[Rec::new(now_ms(), "k", "v")])],
        Acks::Leader,
    );
    assert_eq!(p.error_code(), ErrorCode::UnknownTopicOrPartition, "{p:?}");
    let l = c.list_offsets("doomed", 1, OffsetSpec::Latest, 0);
    assert_eq!(l.error_code(), ErrorCode::UnknownTopicOrPartition, "{l:?}");
    let m = c.metadata(&["doomed"]);
    assert_eq!(m.topics[0].error_code(), ErrorCode::UnknownTopicOrPartition);
    s.assert_healthy();
}

#[test]
fn partition_that_does_not_exist_is_unknown() {
    let s = Setup::new();
    let mut c = s.client();
    let batch = batch_of(&[Rec::new(now_ms(), "k", "v")]);
    for partition in [SEED_PARTITIONS, 7, -1] {
        let p = c.produce(
            "seed",
            partition,
            std::slice::from_ref(&batch),
            Acks::Leader,
        );
        assert_eq!(
            p.error_code(),
            ErrorCode::UnknownTopicOrPartition,
            "{partition}: {p:?}"
        );
        assert_eq!(p.base_offset, -1);
        let f = c.fetch("seed", partition, 0, 0, 0, 0);
        assert_eq!(
            f.error_code(),
            ErrorCode::UnknownTopicOrPartition,
            "{partition}: {f:?}"
        );
        // A long poll on a partition that does not exist answers at once as well.
        let f = c.fetch("seed", partition, 0, 0, 1, 30_000);
        assert_eq!(f.error_code(), ErrorCode::UnknownTopicOrPartition);
        let l = c.list_offsets("seed", partition, OffsetSpec::Earliest, 0);
        assert_eq!(
            l.error_code(),
            ErrorCode::UnknownTopicOrPartition,
            "{partition}: {l:?}"
        );
    }
    let p = c.produce("never-created", 0, &[batch], Acks::Leader);
    assert_eq!(p.error_code(), ErrorCode::UnknownTopicOrPartition);
    s.assert_healthy();
}

// ------------------------------------------------------------------------------------------
// Clients that go away.
// ------------------------------------------------------------------------------------------

#[test]
fn abandoned_long_polls_and_pipelined_requests_do_no_harm() {
    let s = Setup::new();
    let mut admin = s.client();
    admin.create_topic_ok("lp", 1, &[]);
    {
        // 20 long polls parked at the log end, then the connection closes under them.
        let mut c = s.client();
        for _ in 0..20 {
            c.send_body(fetch_request("lp", 0, 0, 0, 1, 30_000));
        }
        // And 50 pipelined fetches of the seed data whose responses are never read.
        for _ in 0..50 {
            c.send_body(fetch_request("seed", 0, 0, 0, 0, 0));
        }
    }
    // Data arriving for the abandoned polls.
    let recs = vec![Rec::new(now_ms(), "k", "v")];
    assert_eq!(admin.produce_ok("lp", 0, &[batch_of(&recs)]), 0);
    assert_eq!(admin.fetch_all("lp", 0), with_offsets(&recs, 0));
    // A long poll of a live client still works.
    let f = admin.fetch("lp", 0, 1, 0, 1, 100);
    assert!(f.records.is_empty());
    s.assert_healthy();
}

#[test]
fn control_batches_and_unknown_codecs_from_producers_are_invalid_records() {
    let setup = Setup::new();
    let mut c = setup.client();
    c.create_topic_ok("ctl", 1, &[]);
    let build = |attributes: i16| {
        let mut b = strom_protocol::batch::BatchBuilder::default().attributes(attributes);
        b.push(&strom_protocol::batch::RecordRef {
            timestamp: now_ms(),
            key: Some(b"k"),
            value: Some(b"v"),
            headers: &[],
        })
        .expect("push");
        b.finish().expect("finish")
    };
    for (what, attributes) in [("control bit", 0x20), ("codec 7", 0x07)] {
        let p = c.produce("ctl", 0, &[build(attributes)], Acks::Leader);
        assert_eq!(p.error_code(), ErrorCode::InvalidRecord, "{what}: {p:?}");
        assert_eq!(p.base_offset, -1, "{what}");
    }
    assert_eq!(
        c.produce_ok("ctl", 0, &[build(0)]),
        0,
        "nothing was appended before"
    );
}

#[test]
fn large_requests_other_than_produce_are_refused_without_decoding() {
    let setup = Setup::new();
    let mut c = setup.client();
    // 2 MiB of topic names: over the 1 MiB limit for APIs other than Produce.
    let response = c.call(MetadataRequest {
        topics: vec!["t".repeat(200); 10_000],
        all_topics: false,
        allow_auto_topic_creation: false,
    });
    assert_eq!(header_error(&response), ErrorCode::InvalidRequest);
    assert!(response.body.is_none());
    // The connection is still usable, and a large Produce is still fine.
    assert_eq!(
        c.api_versions().api_versions.len(),
        strom_protocol::api::SUPPORTED_APIS.len()
    );
    let big: Vec<Rec> = (0..4)
        .map(|i| Rec::new(now_ms(), format!("k{i}"), vec![b'x'; 300_000]))
        .collect();
    let batches: Vec<Bytes> = big
        .iter()
        .map(|r| batch_of(std::slice::from_ref(r)))
        .collect();
    assert_eq!(c.produce_ok("seed", 0, &batches), 9);
}

// ------------------------------------------------------------------------------------------
// Well-formed requests with absurd field values: typed errors, nothing stored, nothing huge.
// ------------------------------------------------------------------------------------------

#[test]
fn absurd_field_values_get_typed_errors() {
    let s = Setup::new();
    let mut c = s.client();
    // Offsets before the log and far past it.
    for offset in [-1, i64::MIN, i64::MAX, 1 << 40] {
        let p = c.fetch("seed", 0, offset, 1 << 20, 0, 0);
        assert_eq!(
            p.error_code(),
            ErrorCode::OffsetOutOfRange,
            "{offset}: {p:?}"
        );
        assert!(p.records.is_empty());
    }
    // Partitions that do not exist.
    for partition in [-1, 1_000_000_000, i32::MAX, i32::MIN] {
        let p = c.fetch("seed", partition, 0, 1 << 20, 0, 0);
        assert_eq!(
            p.error_code(),
            ErrorCode::UnknownTopicOrPartition,
            "{partition}: {p:?}"
        );
        let p = c.produce(
            "seed",
            partition,
            &[batch_of(&[Rec::new(1, "k", "v")])],
            Acks::Leader,
        );
        assert_eq!(
            p.error_code(),
            ErrorCode::UnknownTopicOrPartition,
            "{partition}: {p:?}"
        );
    }
    // A fetch asking for 4 GiB gets what there is, capped by the broker's limits.
    let p = c.fetch("seed", 0, 0, u32::MAX, 0, 0);
    assert_eq!(p.error_code(), ErrorCode::None, "{p:?}");
    assert_eq!(decode_records(&p.records), s.seed[0]);
    // A long poll of u32::MAX ms is capped by fetch_max_wait_ms: not waited on here, just
    // answered when data arrives.
    // Topic names: empty, 64 KiB, with a path separator or "..".
    let long = "t".repeat(64 << 10);
    for name in ["", long.as_str(), "../escape", "a/b", ".", ".."] {
        let r = c.create_topics(vec![creatable(name, 1, &[])], false);
        let code = r.topics[0].error_code();
        assert_eq!(code, ErrorCode::InvalidTopicName, "{:.20}: {r:.200?}", name);
        let m = c.metadata(&[name]);
        assert_ne!(m.topics[0].error_code(), ErrorCode::None, "{name:.20}");
    }
    // Partition counts: zero, negative, a billion.
    for n in [0, -1, 1_000_000_000, i32::MAX] {
        let r = c.create_topics(vec![creatable("many", n, &[])], false);
        assert_eq!(
            r.topics[0].error_code(),
            ErrorCode::InvalidPartitions,
            "{n}: {r:?}"
        );
    }
    // Settings with absurd values.
    for (k, v) in [
        ("segment.bytes", "-1"),
        ("retention.ms", "forever"),
        ("max.message.bytes", "99999999999999999999"),
        ("no.such.setting", "1"),
    ] {
        let r = c.create_topics(vec![creatable("cfg", 1, &[(k, v)])], false);
        assert_eq!(
            r.topics[0].error_code(),
            ErrorCode::InvalidConfig,
            "{k}={v}"
        );
    }
    let names: Vec<String> = c
        .metadata_all()
        .topics
        .into_iter()
        .map(|t| t.name)
        .filter(|n| !n.starts_with("__"))
        .collect();
    assert_eq!(
        names,
        ["seed"],
        "no topic was created by the refused requests"
    );
    // Unknown API versions on a known API.
    let id = c.next_correlation_id();
    c.send_raw(&raw_request_frame(&header_only(
        id,
        ApiKey::Fetch as i32,
        9999,
    )));
    assert_header_error(&c.recv(), id, &[ErrorCode::UnsupportedVersion]);
    s.assert_healthy();
}

// ------------------------------------------------------------------------------------------
// Slow and idle clients.
// ------------------------------------------------------------------------------------------

#[test]
fn a_slow_loris_writer_is_cut_off_while_others_are_served() {
    let s = Setup::with_args(&["--request-read-timeout-ms", "400"]);
    // Announce a 1 KiB request and send it a byte every 20 ms: it would take 20 s.
    let mut loris = s.client();
    loris.send_raw(&1024u32.to_be_bytes());
    let stream = loris.stream().try_clone().expect("clone the socket");
    let trickle = std::thread::spawn(move || {
        use std::io::Write;
        let mut stream = stream;
        let mut sent = 0;
        // The pace of the attack, not a synchronisation: stops when the broker hangs up.
        while sent < 1024 && stream.write_all(&[0x0A]).is_ok() {
            sent += 1;
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        sent
    });
    // Meanwhile a well-behaved client is served.
    s.assert_healthy();
    loris.expect_closed_without_answer();
    let sent = trickle.join().expect("trickle thread");
    assert!(sent < 1024, "the broker read the whole slow request");
    s.assert_healthy();
}

#[test]
fn idle_connections_are_closed_but_long_polls_are_not_idle() {
    let s = Setup::with_args(&["--connections-max-idle-ms", "300"]);
    // A long poll of 1 s on a connection whose idle limit is 300 ms: the poll is answered.
    let mut c = s.client();
    let end = s.seed[0].len() as i64;
    let p = c.fetch("seed", 0, end, 1 << 20, 1, 1000);
    assert_eq!(p.error_code(), ErrorCode::None, "{p:?}");
    assert!(p.records.is_empty());
    // Then the connection sends nothing: it is closed.
    c.expect_closed_without_answer();
    s.assert_healthy();
}

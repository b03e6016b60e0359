//! Fast replay of the committed fuzz corpora of `frame_decode` and `batch_parse` (and of every
//! crash the fuzzer found, kept under `fuzz/regressions/`) through the same checks the fuzz
//! targets run (`fuzz_checks`). This is what CI runs instead of the fuzzer; it takes well under a
//! second. A missing or empty corpus fails the test rather than passing vacuously. How to fuzz:
//! `docs/fuzzing.md`.

mod fuzz_checks;

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// `fuzz/<kind>/<target>/` of the repository.
fn fuzz_dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join(target)
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

/// Runs `check` on every corpus and regression input of `target`, then fails listing each input
/// that failed.
fn replay(target: &str, check: fn(&[u8])) {
    let corpus = files(&fuzz_dir("corpus", target));
    assert!(
        !corpus.is_empty(),
        "the corpus of {target} is missing or empty: expected files in {}",
        fuzz_dir("corpus", target).display()
    );
    let regressions = files(&fuzz_dir("regressions", target));
    let mut failed = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let data = fs::read(path).expect("read corpus file");
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs of {target} fail:\n{}",
        failed.len(),
        corpus.len() + regressions.len(),
        failed.join("\n")
    );
}

#[test]
fn frame_decode_corpus() {
    replay("frame_decode", fuzz_checks::frame_decode);
}

#[test]
fn batch_parse_corpus() {
    replay("batch_parse", fuzz_checks::batch_parse);
}

/// Writes the seed inputs of both corpora (valid frames of every API, valid batches): run once
/// before the first fuzzing with
/// `cargo test -p strom-protocol --test fuzz_corpus -- --ignored write_seeds`.
#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_seeds() {
    use bytes::{BufMut, Bytes, BytesMut};
    use strom_protocol::ErrorCode;
    use strom_protocol::batch::{BatchBuilder, HeaderRef, RecordRef};
    use strom_protocol::frame::encode_frame;
    use strom_protocol::messages::*;
    use strom_protocol::{encode_request, encode_response};

    let batch = |n: usize, attributes: i16| -> Bytes {
        let headers = [HeaderRef {
            key: "trace",
            value: Some(b"abc"),
        }];
        let mut b = BatchBuilder::default().attributes(attributes);
        for i in 0..n {
            b.push(&RecordRef {
                timestamp: 1_700_000_000_000 + i64::try_from(i).unwrap(),
                key: (i % 2 == 0).then_some(b"key".as_slice()),
                value: (i % 3 != 2).then_some(b"value".as_slice()),
                headers: if i % 2 == 1 { &headers } else { &[] },
            })
            .unwrap();
        }
        b.finish().unwrap()
    };
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = fuzz_dir("corpus", target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    };

    // batch_parse: single batches, two back to back, one idempotent, one "compressed".
    let two = [batch(2, 0), batch(3, 0)].concat();
    let mut idempotent = BatchBuilder::default().producer(7, 1, 42);
    idempotent
        .push(&RecordRef {
            timestamp: 5,
            key: None,
            value: Some(b"v"),
            headers: &[],
        })
        .unwrap();
    let mut offset = BytesMut::from(&batch(4, 0)[..]);
    strom_protocol::batch::set_base_offset(&mut offset, 1_000).unwrap();
    for (name, data) in [
        ("one-record", batch(1, 0)),
        ("five-records", batch(5, 0)),
        ("two-batches", Bytes::from(two.clone())),
        ("idempotent", idempotent.finish().unwrap()),
        ("lz4-attribute", batch(2, 3)),
        ("at-offset-1000", offset.freeze()),
    ] {
        write("batch_parse", name, &data);
    }

    // frame_decode: [limit u16 LE, read - 1] then frames.
    let records = Bytes::from(two);
    let requests: Vec<request::Body> = vec![
        ApiVersionsRequest::default().into(),
        MetadataRequest {
            topics: vec!["orders".into()],
            all_topics: false,
            allow_auto_topic_creation: true,
        }
        .into(),
        CreateTopicsRequest::default().into(),
        DeleteTopicsRequest::default().into(),
        DescribeConfigsRequest::default().into(),
        AlterConfigsRequest::default().into(),
        ProduceRequest {
            acks: Acks::Durable as i32,
            timeout_ms: 1_000,
            topics: vec![TopicProduceData {
                name: "orders".into(),
                partitions: vec![PartitionProduceData {
                    partition: 1,
                    records: records.clone(),
                    deliver_at_ms: Vec::new(),
                }],
            }],
        }
        .into(),
        FetchRequest {
            max_wait_ms: 100,
            min_bytes: 1,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                name: "orders".into(),
                partitions: vec![FetchPartition {
                    partition: 1,
                    fetch_offset: 5,
                    partition_max_bytes: 1 << 16,
                    current_leader_epoch: None,
                }],
            }],
        }
        .into(),
        ListOffsetsRequest::default().into(),
        FindCoordinatorRequest::default().into(),
        GroupHeartbeatRequest::default().into(),
        OffsetCommitRequest::default().into(),
        OffsetFetchRequest::default().into(),
        InitProducerIdRequest::default().into(),
        ListGroupsRequest::default().into(),
        DescribeGroupsRequest::default().into(),
        DeleteGroupsRequest::default().into(),
    ];
    let mut all = BytesMut::new();
    for (i, body) in requests.into_iter().enumerate() {
        let request = Request::new(u32::try_from(i).unwrap(), 0, body).with_client_id("seed");
        let mut frame = BytesMut::from(&[0xff, 0xff, 0xff][..]);
        encode_request(&request, &mut frame).unwrap();
        encode_request(&request, &mut all).unwrap();
        write("frame_decode", &format!("request-{i:02}"), &frame);
    }
    let responses = [
        Response::new(
            1,
            FetchResponse {
                topics: vec![FetchTopicResponse {
                    name: "orders".into(),
                    partitions: vec![FetchPartitionResponse {
                        partition: 1,
                        high_watermark: 5,
                        records,
                        ..Default::default()
                    }],
                }],
            },
        ),
        Response::new(2, ProduceResponse::default()),
        Response::error(3, ErrorCode::UnsupportedVersion, Some("no".into())),
    ];
    for (i, response) in responses.iter().enumerate() {
        let mut frame = BytesMut::from(&[0xff, 0xff, 0xff][..]);
        encode_response(response, &mut frame).unwrap();
        encode_response(response, &mut all).unwrap();
        write("frame_decode", &format!("response-{i}"), &frame);
    }
    // Every frame back to back, read 7 bytes at a time under a 300-byte limit.
    write(
        "frame_decode",
        "all-in-7-byte-reads",
        &[&[44, 1, 6], &all[..]].concat(),
    );
    // A prefix over the limit, and an empty frame.
    let mut over = BytesMut::from(&[16, 0, 255][..]);
    encode_frame(&MetadataRequest::default(), &mut over).unwrap();
    over.put_u32(17);
    over.put_bytes(0, 17);
    write("frame_decode", "over-limit", &over);
}

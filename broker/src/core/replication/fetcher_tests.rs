//! When the fetcher sends its next fetch before appending an answer, and from where.

use bytes::{Bytes, BytesMut};
use strom_protocol::batch::{BatchBuilder, RecordRef, set_base_offset};
use strom_protocol::messages::{
    EpochEndOffset, ReplicaFetchPartitionResponse, ReplicaFetchResponse, ReplicaFetchTopicResponse,
};

use super::*;

/// A batch of `n` records from `base`, in leader epoch `epoch`, as a leader stores it.
fn batch(base: i64, n: usize, epoch: i32) -> Bytes {
    let mut b = BatchBuilder::default();
    for _ in 0..n {
        b.push(&RecordRef {
            timestamp: 0,
            key: None,
            value: Some(b"v"),
            headers: &[],
        })
        .expect("push");
    }
    let mut m = BytesMut::from(&b.finish().expect("finish")[..]);
    set_base_offset(&mut m, base).expect("base offset");
    m[12..16].copy_from_slice(&epoch.to_be_bytes());
    m.freeze()
}

fn answer(partitions: Vec<ReplicaFetchPartitionResponse>) -> ReplicaFetchResponse {
    ReplicaFetchResponse {
        topics: vec![ReplicaFetchTopicResponse {
            name: "orders".into(),
            partitions,
        }],
    }
}

fn records(partition: i32, records: Bytes, log_end: i64) -> ReplicaFetchPartitionResponse {
    ReplicaFetchPartitionResponse {
        partition,
        records,
        log_end_offset: log_end,
        ..Default::default()
    }
}

fn two_batches() -> Bytes {
    let mut b = BytesMut::new();
    b.extend_from_slice(&batch(10, 3, 4));
    b.extend_from_slice(&batch(13, 2, 5));
    b.freeze()
}

#[test]
fn a_follower_behind_fetches_on_from_where_the_answers_batches_end() {
    let ends = ends_after(&answer(vec![
        records(0, two_batches(), 100),
        records(1, Bytes::new(), 7),
    ]))
    .expect("behind: the next fetch goes out before the append");
    assert_eq!(
        ends,
        HashMap::from([(
            (Arc::from("orders"), 0),
            Position {
                end: 15,
                last_epoch: Some(5)
            }
        )]),
        "the last batch's next offset and epoch; a partition without records keeps its place"
    );
}

#[test]
fn a_follower_that_caught_up_appends_before_it_fetches_again() {
    assert_eq!(
        ends_after(&answer(vec![records(0, two_batches(), 15)])),
        None
    );
    assert_eq!(
        ends_after(&answer(vec![records(0, Bytes::new(), 15)])),
        None
    );
}

#[test]
fn anything_but_plain_batches_is_applied_before_the_next_fetch() {
    let refused = ReplicaFetchPartitionResponse {
        error_code: ErrorCode::FencedLeaderEpoch.into(),
        ..records(1, Bytes::new(), 0)
    };
    assert_eq!(
        ends_after(&answer(vec![records(0, two_batches(), 100), refused])),
        None,
        "an error on another partition"
    );
    let diverging = ReplicaFetchPartitionResponse {
        diverging_epoch: Some(EpochEndOffset {
            epoch: 3,
            end_offset: 9,
        }),
        ..records(1, Bytes::new(), 100)
    };
    assert_eq!(
        ends_after(&answer(vec![records(0, two_batches(), 100), diverging])),
        None,
        "a truncation"
    );
    let whole = two_batches();
    let torn = whole.slice(..whole.len() - 1);
    assert_eq!(
        ends_after(&answer(vec![records(0, torn, 100)])),
        None,
        "a batch cut short: the writer's checks decide"
    );
    assert_eq!(
        ends_after(&answer(vec![records(0, Bytes::from_static(&[0; 70]), 100)])),
        None,
        "not a batch at all"
    );
}

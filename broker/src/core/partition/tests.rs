//! The partition's writer orders role changes with the log changes queued before them.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use strom_protocol::batch::RecordRef;
use strom_storage::{Log, LogConfig};
use tokio::sync::watch;

use super::{LeaderRuns, Partition, TruncateTo};
use crate::core::delays::Delay;
use crate::core::producers::ProducerStates;
use crate::core::replication::leader::{IsrRequest, Leadership};
use crate::stats::Stats;

/// A partition whose log holds `records` single-record batches of leader epoch 1.
fn partition_in_epoch_1(dir: &std::path::Path, records: usize) -> Arc<Partition> {
    let mut log = Log::open(dir, LogConfig::default()).expect("open the log");
    log.set_leader_epoch(1).expect("epoch 1");
    for i in 0..records {
        let value = i.to_string();
        log.append_records(&[RecordRef {
            timestamp: 0,
            key: None,
            value: Some(value.as_bytes()),
            headers: &[],
        }])
        .expect("append");
    }
    let producers = ProducerStates::load(&log, 0).expect("producer state");
    Partition::start(
        0,
        log,
        producers,
        "t".into(),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Stats::default()),
        Arc::new(watch::channel(0).0),
    )
}

/// A follower truncating its log when the image makes it the leader: the new epoch starts
/// where the truncated log ends, so a follower that fetched to there joins the ISR. (Taking
/// the log end before the queued truncation ran left the epoch's start past the log's end,
/// and with nothing produced the ISR could never grow back: the power-cut test found it.)
#[tokio::test]
async fn a_new_leadership_starts_where_a_truncation_queued_before_it_left_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let part = partition_in_epoch_1(dir.path(), 10);
    part.become_follower(Some((2, 1)));
    let lead = Leadership {
        me: 1,
        leader_epoch: 2,
        partition_epoch: 3,
        replicas: vec![1, 2],
        isr: vec![1],
        min_isr: 1,
        durable: false,
    };
    let (truncated, ()) = tokio::join!(
        part.truncate(
            2,
            1,
            TruncateTo::OutOfRange {
                leader_start: 0,
                leader_end: 6,
            },
            None,
        ),
        part.become_leader(lead),
    );
    assert_eq!(truncated.expect("truncated").end, 6);
    assert_eq!(part.reader().end_offset(), 6);

    part.replica()
        .follower_fetched(2, 7, 2, 6, 6)
        .expect("the follower's fetch in epoch 2");
    let change = part
        .replica()
        .isr_change(Instant::now(), Duration::from_secs(30))
        .expect("an ISR change is due");
    assert_eq!(change.change, IsrRequest::Expand(vec![1, 2]));
}

/// Maintenance requests while a pass is queued are dropped: a writer slower than the
/// maintenance interval (a compaction pass with its fsyncs on a loaded disk) ran a backlog of up
/// to a queue's worth of passes ahead of every append, which then timed out (the crash loop
/// found it, with compaction every 20 ms). Once the writer takes the pass up, the next request
/// queues again.
#[tokio::test]
async fn maintenance_requests_are_coalesced_while_a_pass_is_queued() {
    let dir = tempfile::tempdir().expect("temp dir");
    let part = partition_in_epoch_1(dir.path(), 3);
    // The writer task cannot run between these (one thread, no await in between).
    assert!(
        part.request_maintenance(),
        "the first request queues a pass"
    );
    for _ in 0..100 {
        assert!(!part.request_maintenance(), "a second pass was queued");
    }
    assert_eq!(part.queued(), 1, "one message for the writer");
    // Answered after the queued pass ran.
    part.position().await.expect("position");
    assert!(
        part.request_maintenance(),
        "a request after the pass started queues the next one"
    );
}

/// A batch of `n` records from `base`, in leader epoch `epoch`, as a leader stores it.
fn replicated_batch(base: i64, n: usize, epoch: i32) -> bytes::Bytes {
    let mut b = strom_protocol::batch::BatchBuilder::default();
    for i in 0..n {
        let value = (base + i as i64).to_string();
        b.push(&RecordRef {
            timestamp: 0,
            key: None,
            value: Some(value.as_bytes()),
            headers: &[],
        })
        .expect("push");
    }
    let mut m = bytes::BytesMut::from(&b.finish().expect("finish")[..]);
    strom_protocol::batch::set_base_offset(&mut m, base).expect("base offset");
    m[12..16].copy_from_slice(&epoch.to_be_bytes());
    m.freeze()
}

/// A follower enters the delayed runs its leader sends with the batches (before they are
/// readable), and a truncation takes back what it cuts: runs past the new end go, a run reaching
/// into it is cut short.
#[tokio::test]
async fn a_follower_holds_its_leaders_delayed_runs_and_truncation_takes_them_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let part = partition_in_epoch_1(dir.path(), 10);
    part.become_follower(Some((2, 1)));
    let runs = vec![
        Delay {
            first: 3,
            last: 4,
            at: 1_000,
        },
        Delay {
            first: 10,
            last: 13,
            at: 5_000,
        },
        Delay {
            first: 14,
            last: 15,
            at: 6_000,
        },
    ];
    let mut all = bytes::BytesMut::new();
    for base in [10, 12, 14] {
        all.extend_from_slice(&replicated_batch(base, 2, 1));
    }
    let batches = all.freeze();
    let at = part
        .replicate(
            2,
            1,
            batches,
            0,
            0,
            LeaderRuns {
                runs: runs.clone(),
                log: None,
            },
        )
        .await
        .expect("replicated");
    assert_eq!(at.end, 16);
    assert_eq!(
        part.delays().all(),
        runs[1..].to_vec(),
        "the runs of the appended batches (not the one of records held before)"
    );
    part.truncate(
        2,
        1,
        TruncateTo::OutOfRange {
            leader_start: 0,
            leader_end: 12,
        },
        None,
    )
    .await
    .expect("truncated");
    assert_eq!(
        part.delays().all(),
        vec![Delay {
            first: 10,
            last: 11,
            at: 5_000
        }]
    );
}

//! What replication needs of a log (issue 17): leader epochs stamped on leader appends and
//! recorded in the leader-epoch checkpoint, a follower's append of its leader's batches as they
//! are, truncation to an offset or to nothing, the OffsetForLeaderEpoch lookup, and the
//! checkpoint rebuilt from the batches when it is missing or damaged.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use common::{as_stored, epochs_of, read_all, read_batches, simple_batch};
use strom_storage::{Log, LogConfig, ManualClock, StorageError, ValidBatch};

const CHECKPOINT: &str = "leader-epoch-checkpoint";

fn config(pairs: &[(&str, &str)]) -> LogConfig {
    let mut c = LogConfig::default();
    for (k, v) in pairs {
        c.set(k, v).unwrap();
    }
    c
}

/// Segments of 4 KiB: batches of `simple_batch(_, 5, _, 100)` (~600 bytes) fill one in ~6.
fn small() -> LogConfig {
    config(&[("segment.bytes", "4096"), ("index.interval.bytes", "256")])
}

/// Base offsets of the log's segments, from their file names.
fn segment_bases(dir: &Path) -> Vec<i64> {
    let mut bases: Vec<i64> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".log").map(|b| b.parse().unwrap())
        })
        .collect();
    bases.sort_unstable();
    bases
}

fn log_files(dir: &Path) -> usize {
    segment_bases(dir).len()
}

/// (base offset, epoch) of every batch of the log.
fn batch_epochs(log: &Log) -> Vec<(i64, i32)> {
    read_batches(&log.reader(), log.start_offset())
        .iter()
        .map(|(h, _)| (h.base_offset, h.partition_leader_epoch))
        .collect()
}

/// The cache says what the batches say.
fn assert_cache_agrees(log: &Log) {
    let batches = read_batches(&log.reader(), log.start_offset());
    assert_eq!(
        log.epoch_entries(),
        epochs_of(&batches, log.start_offset()),
        "the cache agrees with the batches"
    );
}

/// Appends `n` batches of 5 records as the leader, in whatever epoch the log is in.
fn fill(log: &mut Log, n: usize) {
    for _ in 0..n {
        let at = log.end_offset() as usize;
        log.append(&[simple_batch(at, 5, 1, 100)]).unwrap();
    }
}

fn replicated(b: Bytes) -> ValidBatch {
    ValidBatch::replicated(b).unwrap()
}

#[test]
fn leader_appends_stamp_the_epoch_and_record_where_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small()).unwrap();
    assert_eq!(log.leader_epoch(), 0);
    assert_eq!(log.latest_epoch(), None);
    assert!(
        !dir.path().join(CHECKPOINT).exists(),
        "a new log writes no checkpoint"
    );
    assert_eq!(log.end_offset_for_epoch(0), (-1, -1));

    // Before any `set_leader_epoch`: epoch 0 (producers send -1).
    log.append(&[simple_batch(0, 5, 1, 100)]).unwrap();
    assert_eq!(log.epoch_entries(), [(0, 0)]);
    assert!(dir.path().join(CHECKPOINT).exists());

    log.set_leader_epoch(3).unwrap();
    assert_eq!(
        log.latest_epoch(),
        Some(0),
        "an epoch counts once written with"
    );
    log.append(&[simple_batch(5, 5, 1, 100)]).unwrap();
    log.append_records(&[strom_protocol::batch::RecordRef {
        timestamp: 1,
        key: None,
        value: Some(b"v"),
        headers: &[],
    }])
    .unwrap();
    log.set_leader_epoch(4).unwrap();
    log.set_leader_epoch(7).unwrap();
    let b = ValidBatch::new(simple_batch(11, 5, 1, 100)).unwrap();
    log.append_deferred(&[b.clone(), b]).unwrap();
    assert_eq!(log.end_offset(), 21);
    assert_eq!(
        batch_epochs(&log),
        [(0, 0), (5, 3), (10, 3), (11, 7), (16, 7)],
        "every leader append path stamps the epoch"
    );
    assert_eq!(log.epoch_entries(), [(0, 0), (3, 5), (7, 11)]);
    assert_cache_agrees(&log);
    // The CRC does not cover the epoch: every batch still reads back checked.
    assert_eq!(read_all(&log.reader(), 0).len(), 21);

    // OffsetForLeaderEpoch.
    assert_eq!(log.end_offset_for_epoch(0), (0, 5));
    assert_eq!(log.end_offset_for_epoch(3), (3, 11));
    assert_eq!(
        log.end_offset_for_epoch(5),
        (3, 11),
        "an epoch it never had"
    );
    assert_eq!(
        log.end_offset_for_epoch(7),
        (7, 21),
        "the latest ends at the log end"
    );
    assert_eq!(log.end_offset_for_epoch(9), (7, 21));
    assert_eq!(log.end_offset_for_epoch(-1), (-1, -1));

    // Epochs never go back.
    let e = log.set_leader_epoch(6).unwrap_err();
    assert!(
        matches!(
            e,
            StorageError::StaleLeaderEpoch {
                epoch: 6,
                latest: 7
            }
        ),
        "{e}"
    );
    let e = log.set_leader_epoch(-1).unwrap_err();
    assert!(
        matches!(e, StorageError::InvalidLeaderEpoch { epoch: -1 }),
        "{e}"
    );
    assert_eq!(log.leader_epoch(), 7);

    // Both kinds of reopen keep the cache; the log goes on in its latest epoch.
    log.close().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    assert_eq!(log.epoch_entries(), [(0, 0), (3, 5), (7, 11)]);
    assert_eq!(log.leader_epoch(), 7);
    drop(log);
    let mut log = Log::open(dir.path(), small()).unwrap();
    assert_eq!(log.epoch_entries(), [(0, 0), (3, 5), (7, 11)]);
    fill(&mut log, 1);
    assert_eq!(batch_epochs(&log).last(), Some(&(21, 7)));
}

#[test]
fn a_leader_stamping_an_epoch_older_than_the_log_holds_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small()).unwrap();
    fill(&mut log, 1);
    // A follower's append brought epoch 4; this log's leader epoch is still 0.
    log.append_replica(&[replicated(as_stored(&simple_batch(5, 5, 1, 10), 5, 4))])
        .unwrap();
    let e = log.append(&[simple_batch(10, 5, 1, 10)]).unwrap_err();
    assert!(
        matches!(
            e,
            StorageError::StaleLeaderEpoch {
                epoch: 0,
                latest: 4
            }
        ),
        "{e}"
    );
    assert_eq!(log.end_offset(), 10, "nothing stored");
    log.set_leader_epoch(5).unwrap();
    fill(&mut log, 1);
    assert_eq!(log.epoch_entries(), [(0, 0), (4, 5), (5, 10)]);
}

#[test]
fn replica_appends_keep_the_leaders_offsets_and_epochs() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut leader = Log::open(leader_dir.path(), small()).unwrap();
    let mut follower = Log::open(follower_dir.path(), small()).unwrap();
    for epoch in [1, 1, 2, 5, 5, 5, 8] {
        leader.set_leader_epoch(epoch).unwrap();
        fill(&mut leader, 3);
    }
    // The follower fetches in pieces and appends what it got, as it is.
    let batches = read_batches(&leader.reader(), 0);
    for chunk in batches.chunks(4) {
        let valid: Vec<ValidBatch> = chunk.iter().map(|(_, b)| replicated(b.clone())).collect();
        let info = follower.append_replica(&valid).unwrap();
        assert_eq!(info.base_offset, chunk[0].0.base_offset);
    }
    assert_eq!(follower.end_offset(), leader.end_offset());
    let copied = read_batches(&follower.reader(), 0);
    assert_eq!(
        copied.iter().map(|(_, b)| b).collect::<Vec<_>>(),
        batches.iter().map(|(_, b)| b).collect::<Vec<_>>(),
        "the follower stores the leader's bytes"
    );
    assert_eq!(follower.epoch_entries(), leader.epoch_entries());
    assert_eq!(
        follower.epoch_entries(),
        [(1, 0), (2, 30), (5, 45), (8, 90)]
    );
    for epoch in -1..10 {
        assert_eq!(
            follower.end_offset_for_epoch(epoch),
            leader.end_offset_for_epoch(epoch),
            "epoch {epoch}"
        );
    }
    assert_eq!(
        follower.leader_epoch(),
        0,
        "a follower's append stamps nothing"
    );

    // Batches that do not continue the log: nothing of the call is stored.
    let end = follower.end_offset();
    let b = |base: i64, epoch: i32| replicated(as_stored(&simple_batch(0, 5, 1, 10), base, epoch));
    for (call, (index, expected, found)) in [
        (vec![b(end - 5, 8)], (0, end, end - 5)),
        (vec![b(end, 8), b(end + 4, 8)], (1, end + 5, end + 4)),
        (vec![b(end, 8), b(end, 8)], (1, end + 5, end)),
        // A gap no batch can hold (its last offset delta would not fit an i32).
        (
            vec![b(end + (1 << 31) + 1, 8)],
            (0, end, end + (1 << 31) + 1),
        ),
    ] {
        let e = follower.append_replica(&call).unwrap_err();
        assert!(
            matches!(e, StorageError::ReplicaOffsetMismatch { index: i, expected: x, found: f }
                if (i, x, f) == (index, expected, found)),
            "{e}"
        );
        assert_eq!(follower.end_offset(), end);
    }
    // An epoch older than the latest: refused, even after a good batch in the same call.
    let e = follower
        .append_replica(&[b(end, 8), b(end + 5, 7)])
        .unwrap_err();
    assert!(
        matches!(
            e,
            StorageError::StaleLeaderEpoch {
                epoch: 7,
                latest: 8
            }
        ),
        "{e}"
    );
    assert_eq!(follower.end_offset(), end);
    assert!(follower.poisoned().is_none());
    // A batch without an epoch (-1) starts none; newer epochs in one call each get an entry.
    let info = follower
        .append_replica_deferred(&[b(end, -1), b(end + 5, 9), b(end + 10, 9), b(end + 15, 12)])
        .unwrap();
    assert_eq!((info.base_offset, info.next_offset), (end, end + 20));
    assert_eq!(
        follower.epoch_entries(),
        [
            (1, 0),
            (2, 30),
            (5, 45),
            (8, 90),
            (9, end + 5),
            (12, end + 15)
        ]
    );
    assert_cache_agrees(&follower);
    drop(follower);
    let follower = Log::open(follower_dir.path(), small()).unwrap();
    assert_cache_agrees(&follower);
    assert_eq!(follower.end_offset(), end + 20);
}

#[test]
fn a_replicated_compacted_batch_is_accepted() {
    // A batch compaction rewrote keeps its offsets but not all its records (here none): the
    // leader's log can hold it, so a follower must take it.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small()).unwrap();
    let full = simple_batch(0, 5, 1, 10);
    let emptied = match strom_protocol::batch::retain_records(&full, |_| false).unwrap() {
        strom_protocol::batch::Retained::Nothing => {
            // Build the emptied form by hand: same offsets, no records.
            let mut b = bytes::BytesMut::from(&full[..61]);
            b[8..12].copy_from_slice(&49i32.to_be_bytes());
            b[57..61].copy_from_slice(&0i32.to_be_bytes());
            let crc = strom_protocol::batch::compute_crc(&b);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
            b.freeze()
        }
        other => panic!("{other:?}"),
    };
    assert!(
        ValidBatch::new(emptied.clone()).is_err(),
        "not a produced batch"
    );
    log.append_replica(&[replicated(as_stored(&emptied, 0, 2))])
        .unwrap();
    assert_eq!(log.end_offset(), 5);
    log.append_replica(&[replicated(as_stored(&full, 5, 2))])
        .unwrap();
    assert_eq!(log.end_offset(), 10);
    assert_eq!(log.epoch_entries(), [(2, 0)]);
}

#[test]
fn gaps_a_leaders_compaction_left_are_filled_with_empty_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small()).unwrap();
    let b = |base: i64, epoch: i32| replicated(as_stored(&simple_batch(0, 5, 7, 10), base, epoch));
    log.append_replica(&[b(0, 1)]).unwrap();
    // Offsets 5..8 and 13..15 were compacted away on the leader.
    let info = log.append_replica(&[b(8, 1), b(15, 3), b(20, 3)]).unwrap();
    assert_eq!((info.base_offset, info.next_offset), (5, 25));
    let expect = [
        (0, 4, 5, 1),
        (5, 7, 0, 1),
        (8, 12, 5, 1),
        (13, 14, 0, 3),
        (15, 19, 5, 3),
        (20, 24, 5, 3),
    ];
    let layout = |log: &Log| -> Vec<(i64, i64, i32, i32)> {
        read_batches(&log.reader(), 0)
            .iter()
            .map(|(h, _)| {
                (
                    h.base_offset,
                    h.last_offset(),
                    h.record_count,
                    h.partition_leader_epoch,
                )
            })
            .collect()
    };
    assert_eq!(layout(&log), expect);
    // The empty batch takes the next batch's epoch: epoch 3 is said to start at 13, where
    // the leader's may start later, so a lookup errs towards truncating more, never less.
    assert_eq!(log.epoch_entries(), [(1, 0), (3, 13)]);
    let records: Vec<i64> = read_all(&log.reader(), 0)
        .iter()
        .map(|r| r.offset)
        .collect();
    let want: Vec<i64> = (0..5).chain(8..13).chain(15..25).collect();
    assert_eq!(records, want);
    // The log has no gap, so recovery after a crash (which reads a jump in the active
    // segment's offsets as damage) keeps all of it.
    drop(log);
    let mut log = Log::open(dir.path(), small()).unwrap();
    assert_eq!(log.end_offset(), 25);
    assert_eq!(layout(&log), expect);
    log.append_replica(&[b(25, 3)]).unwrap();
    assert_eq!(log.end_offset(), 30);
}

#[test]
fn a_follower_copies_a_compacted_leader_log_and_keeps_it_through_a_crash() {
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let clock = ManualClock::new(1_000_000);
    let c = config(&[
        ("segment.bytes", "4096"),
        ("cleanup.policy", "compact"),
        ("index.interval.bytes", "256"),
    ]);
    let mut leader =
        Log::open_with_clock(leader_dir.path(), c.clone(), Arc::new(clock.clone())).unwrap();
    // Runs of batches with the same key: compaction removes whole batches.
    for i in 0..60 {
        let key = if i % 10 < 6 {
            "dup".to_string()
        } else {
            format!("u{i}")
        };
        let value = format!("{i:0>200}");
        let batch = common::batch(&[(1_000_000 + i, Some(key.as_bytes()), Some(value.as_bytes()))]);
        if i == 30 {
            leader.set_leader_epoch(4).unwrap();
        }
        leader.append(&[batch]).unwrap();
    }
    leader.roll().unwrap();
    assert!(leader.compact().unwrap().records_removed > 0);
    let held = read_all(&leader.reader(), 0);
    assert!(
        held.len() < 40,
        "compaction left gaps: {} records",
        held.len()
    );
    // The follower fetches from its log end each time, as the replica fetcher does.
    let mut follower = Log::open(follower_dir.path(), small()).unwrap();
    while follower.end_offset() < leader.end_offset() {
        let from = follower.end_offset();
        let batches: Vec<ValidBatch> = read_batches(&leader.reader(), from)
            .into_iter()
            .filter(|(h, _)| h.last_offset() >= from)
            .take(3)
            .map(|(_, b)| replicated(b))
            .collect();
        follower.append_replica(&batches).unwrap();
    }
    assert_eq!(read_all(&follower.reader(), 0), held);
    drop(follower);
    let follower = Log::open(follower_dir.path(), small()).unwrap();
    assert_eq!(follower.end_offset(), leader.end_offset());
    assert_eq!(
        read_all(&follower.reader(), 0),
        held,
        "nothing lost on reopen"
    );
    assert_eq!(
        follower.end_offset_for_epoch(4).1,
        leader.end_offset_for_epoch(4).1
    );
}

#[test]
fn truncate_to_removes_whole_batches_and_the_epochs_they_held() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small()).unwrap();
    for epoch in [0, 2, 3, 6] {
        log.set_leader_epoch(epoch).unwrap();
        fill(&mut log, 6);
    }
    assert_eq!(log.end_offset(), 120);
    assert!(log.reader().segment_count() >= 4);
    let before = read_all(&log.reader(), 0);

    // At or past the end: nothing; below the start: refused.
    assert_eq!(log.truncate_to(120).unwrap(), 120);
    assert_eq!(log.truncate_to(500).unwrap(), 120);

    // Into the active segment, mid-batch: the batch holding 113 goes whole.
    assert_eq!(log.truncate_to(113).unwrap(), 110);
    assert_eq!(log.end_offset(), 110);
    assert_eq!(log.reader().end_offset(), 110);
    assert_eq!(read_all(&log.reader(), 0), before[..110]);
    assert_eq!(log.epoch_entries(), [(0, 0), (2, 30), (3, 60), (6, 90)]);

    // Into an older segment: later segments are deleted, epochs starting after go.
    let segments = log_files(dir.path());
    assert_eq!(log.truncate_to(62).unwrap(), 60);
    assert!(log_files(dir.path()) < segments);
    assert_eq!(read_all(&log.reader(), 0), before[..60]);
    assert_eq!(log.epoch_entries(), [(0, 0), (2, 30)]);
    assert_eq!(log.end_offset_for_epoch(2), (2, 60));
    assert_eq!(log.end_offset_for_epoch(6), (2, 60));
    assert!(log.durable_offset() <= 60);

    // The log goes on from there, in the current leader epoch.
    fill(&mut log, 2);
    assert_eq!(log.epoch_entries(), [(0, 0), (2, 30), (6, 60)]);
    assert_cache_agrees(&log);
    let now = read_all(&log.reader(), 0);
    assert_eq!(now.len(), 70);

    // At a segment's first batch: the segment before it is kept whole.
    let bases = segment_bases(dir.path());
    assert!(bases.len() >= 2);
    let second = bases[1];
    assert_eq!(log.truncate_to(second).unwrap(), second);
    assert_eq!(segment_bases(dir.path()), [0]);
    assert_eq!(read_all(&log.reader(), 0), now[..second as usize]);
    assert_eq!(log.truncate_to(5).unwrap(), 5);
    assert_eq!(read_all(&log.reader(), 0), now[..5]);
    assert_eq!(log.epoch_entries(), [(0, 0)]);

    // Both kinds of reopen read back the same.
    drop(log);
    let log = Log::open(dir.path(), small()).unwrap();
    assert_eq!(read_all(&log.reader(), 0), now[..5]);
    assert_eq!(log.epoch_entries(), [(0, 0)]);
    log.close().unwrap();
    let mut log = Log::open(dir.path(), small()).unwrap();
    assert_eq!(read_all(&log.reader(), 0), now[..5]);
    assert_eq!(
        log.leader_epoch(),
        0,
        "the newest epoch the log still holds"
    );
    fill(&mut log, 1);
    assert_eq!(log.end_offset(), 10);
}

#[test]
fn truncating_to_the_start_of_a_log_leaves_it_empty_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small()).unwrap();
    log.set_leader_epoch(1).unwrap();
    fill(&mut log, 12);
    log.delete_records_before(7).unwrap();
    assert_eq!(log.epoch_entries(), [(1, 7)]);
    let e = log.truncate_to(6).unwrap_err();
    assert!(
        matches!(
            e,
            StorageError::OffsetOutOfRange {
                offset: 6,
                start: 7,
                end: 60
            }
        ),
        "{e}"
    );
    // Offset 8 is in the batch 5..10, which holds the start: nothing from the start is kept.
    assert_eq!(log.truncate_to(8).unwrap(), 7);
    assert_eq!((log.start_offset(), log.end_offset()), (7, 7));
    assert!(log.epoch_entries().is_empty());
    assert_eq!(log.reader().read(7, 100).unwrap().data.len(), 0);
    fill(&mut log, 1);
    assert_eq!(log.epoch_entries(), [(1, 7)]);
    drop(log);
    let log = Log::open(dir.path(), small()).unwrap();
    assert_eq!((log.start_offset(), log.end_offset()), (7, 12));
    assert_eq!(
        read_all(&log.reader(), 7).first().map(|r| r.offset),
        Some(7)
    );
}

#[test]
fn truncate_fully_and_start_at_restarts_the_log_empty() {
    for at in [0, 30, 1000] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), small()).unwrap();
        log.set_leader_epoch(2).unwrap();
        fill(&mut log, 12);
        log.delete_records_before(12).unwrap();
        let reader = log.reader();
        let held = reader.read(40, 1 << 20).unwrap().data;
        let copy = held.to_vec();

        log.truncate_fully_and_start_at(at).unwrap();
        assert_eq!((log.start_offset(), log.end_offset()), (at, at), "at {at}");
        assert_eq!((reader.start_offset(), reader.end_offset()), (at, at));
        assert!(log.epoch_entries().is_empty());
        assert_eq!(log.latest_epoch(), None);
        assert_eq!(log_files(dir.path()), 1);
        assert!(!dir.path().join("log-start-offset").exists());
        assert_eq!(
            held.to_vec(),
            copy,
            "a slice read before stays readable and unchanged"
        );
        let info = log.append(&[simple_batch(0, 5, 1, 10)]).unwrap();
        assert_eq!(info.base_offset, at);
        assert_eq!(log.epoch_entries(), [(2, at)]);
        drop(log);
        let log = Log::open(dir.path(), small()).unwrap();
        assert_eq!((log.start_offset(), log.end_offset()), (at, at + 5));
        assert_eq!(log.epoch_entries(), [(2, at)]);
        assert_eq!(read_all(&log.reader(), at).len(), 5);
    }
}

#[test]
fn retention_and_delete_records_trim_the_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(&[
        ("segment.bytes", "4096"),
        ("retention.bytes", "8192"),
        ("retention.ms", "-1"),
    ]);
    let mut log = Log::open(dir.path(), c.clone()).unwrap();
    for epoch in [1, 2, 3] {
        log.set_leader_epoch(epoch).unwrap();
        fill(&mut log, 8);
    }
    assert_eq!(log.epoch_entries(), [(1, 0), (2, 40), (3, 80)]);
    let out = log.enforce_retention().unwrap();
    assert!(out.segments_deleted > 0);
    let start = out.log_start;
    assert!(start > 0 && start < 80, "{start}");
    let want: Vec<(i32, i64)> = if start < 40 {
        vec![(1, start), (2, 40), (3, 80)]
    } else {
        vec![(2, start), (3, 80)]
    };
    assert_eq!(log.epoch_entries(), want);
    assert_cache_agrees(&log);
    log.delete_records_before(83).unwrap();
    assert_eq!(log.epoch_entries(), [(3, 83)]);
    assert_cache_agrees(&log);
    drop(log);
    let log = Log::open(dir.path(), c).unwrap();
    assert_eq!(log.epoch_entries(), [(3, 83)]);
}

#[test]
fn readers_in_flight_survive_truncations() {
    // A reader holds slices of the log's memory maps (a fetch being written to a socket) while
    // the log is truncated and written again over the same offsets. If a segment were shrunk
    // in place, touching a held slice past the new end would kill the process (SIGBUS), and a
    // slice inside it would change under the reader.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small()).unwrap();
    fill(&mut log, 20);
    let reader = log.reader();
    let held: Vec<(Bytes, Vec<u8>)> = (0..100)
        .step_by(7)
        .map(|o| {
            let d = reader.read(o, 1 << 20).unwrap().data;
            let copy = d.to_vec();
            (d, copy)
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let concurrent = {
        let reader = log.reader();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (start, end) = (reader.start_offset(), reader.end_offset());
                for o in (start..end).step_by(3) {
                    match reader.read(o, 1 << 12) {
                        // Every batch a read returns passed its CRC check.
                        Ok(r) => {
                            assert!(r.next_offset > o || r.data.is_empty());
                            reads += 1;
                        }
                        Err(StorageError::OffsetOutOfRange { .. }) => {}
                        Err(e) => panic!("read {o}: {e}"),
                    }
                }
            }
            reads
        })
    };
    for round in 0..6 {
        let cut = 97 - round * 15;
        log.truncate_to(cut).unwrap();
        log.set_leader_epoch(round as i32 + 1).unwrap();
        while log.end_offset() < 100 {
            let at = log.end_offset() as usize;
            log.append(&[simple_batch(at + 1000, 5, 2, 150)]).unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(concurrent.join().unwrap() > 0);
    for (d, copy) in &held {
        assert_eq!(&d[..], &copy[..], "a held slice is unchanged");
    }
    assert_cache_agrees(&log);
}

#[test]
fn a_missing_checkpoint_is_rebuilt_from_the_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small()).unwrap();
    // Batches as a log written before epochs were stamped holds them (-1), then epochs.
    let b = |base: i64, epoch: i32| replicated(as_stored(&simple_batch(0, 5, 1, 100), base, epoch));
    log.append_replica(&[b(0, -1), b(5, -1)]).unwrap();
    log.append_replica(&[b(10, 2), b(15, -1), b(20, 2), b(25, 4)])
        .unwrap();
    for i in 0..8 {
        log.append_replica(&[b(30 + 5 * i, 4 + (i as i32 / 3) * 3)])
            .unwrap();
    }
    let entries = log.epoch_entries();
    assert_eq!(entries, [(2, 10), (4, 25), (7, 45), (10, 60)]);
    assert!(log.reader().segment_count() > 2);
    for close in [false, true] {
        if close {
            log.close().unwrap();
        } else {
            drop(log);
        }
        fs::remove_file(dir.path().join(CHECKPOINT)).unwrap();
        log = Log::open(dir.path(), small()).unwrap();
        assert_eq!(log.epoch_entries(), entries, "close {close}");
        assert!(dir.path().join(CHECKPOINT).exists(), "written again");
        assert_eq!(log.leader_epoch(), 10);
    }
    // A log whose batches carry no epoch at all gets an empty checkpoint, once.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small()).unwrap();
    log.append_replica(&[b(0, -1), b(5, -1)]).unwrap();
    assert!(!dir.path().join(CHECKPOINT).exists());
    drop(log);
    let log = Log::open(dir.path(), small()).unwrap();
    assert!(log.epoch_entries().is_empty());
    assert!(dir.path().join(CHECKPOINT).exists());
}

#[test]
fn a_damaged_or_oversized_checkpoint_is_rebuilt_without_a_huge_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small()).unwrap();
    for epoch in [1, 3] {
        log.set_leader_epoch(epoch).unwrap();
        fill(&mut log, 4);
    }
    log.close().unwrap();
    let path = dir.path().join(CHECKPOINT);
    let good = fs::read_to_string(&path).unwrap();
    assert!(good.starts_with("1\n2\n1 0\n3 20\ncrc "), "{good:?}");
    let with_crc = |body: &str| format!("{body}crc {:08x}\n", crc32fast::hash(body.as_bytes()));
    let damaged: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("garbage", b"\x00\xff garbage".to_vec()),
        (
            "flipped digit",
            good.replacen("3 20", "3 21", 1).into_bytes(),
        ),
        ("cut short", good.as_bytes()[..good.len() - 4].to_vec()),
        // A count that would allocate exabytes if trusted, checksum valid.
        (
            "huge count",
            with_crc("1\n1152921504606846976\n1 0\n3 20\n").into_bytes(),
        ),
        (
            "count too big for usize",
            with_crc("1\n99999999999999999999999\n1 0\n").into_bytes(),
        ),
        ("out of order", with_crc("1\n2\n3 0\n1 20\n").into_bytes()),
        (
            "unknown version",
            with_crc("9\n2\n1 0\n3 20\n").into_bytes(),
        ),
    ];
    for (what, bytes) in damaged {
        fs::write(&path, &bytes).unwrap();
        let log = Log::open(dir.path(), small()).unwrap();
        assert_eq!(log.epoch_entries(), [(1, 0), (3, 20)], "{what}");
        drop(log);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            good,
            "{what}: rewritten"
        );
    }
    // Far larger than any checkpoint: refused by its length, not read into memory.
    let f = fs::File::create(&path).unwrap();
    f.set_len(8 << 30).unwrap();
    drop(f);
    let log = Log::open(dir.path(), small()).unwrap();
    assert_eq!(log.epoch_entries(), [(1, 0), (3, 20)]);
    drop(log);
    assert_eq!(fs::read_to_string(&path).unwrap(), good);
    // Entries past the log end (its data was lost in a crash) are dropped, not rebuilt.
    fs::write(&path, with_crc("1\n3\n1 0\n3 20\n9 400\n")).unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    assert_eq!(log.epoch_entries(), [(1, 0), (3, 20)]);
    drop(log);
    // A checkpoint that lacks the epoch of the last batch (it was lost, the batch was not) is
    // rebuilt after a crash (no clean-shutdown marker).
    fs::write(&path, with_crc("1\n1\n1 0\n")).unwrap();
    let _ = fs::remove_file(dir.path().join(".clean-shutdown"));
    let log = Log::open(dir.path(), small()).unwrap();
    assert_eq!(log.epoch_entries(), [(1, 0), (3, 20)]);
}

#[test]
fn truncation_into_a_compacted_segment_keeps_its_gaps_and_appends_go_to_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let c = config(&[
        ("segment.bytes", "4096"),
        ("cleanup.policy", "compact"),
        ("index.interval.bytes", "256"),
    ]);
    let open = || Log::open_with_clock(dir.path(), c.clone(), Arc::new(clock.clone())).unwrap();
    let mut log = open();
    // Every third record has the same key: compaction keeps only the last of them, leaving
    // gaps in every segment.
    for i in 0..40 {
        let mut b = strom_protocol::batch::BatchBuilder::default();
        let key = if i % 3 == 0 {
            "dup".to_string()
        } else {
            format!("u{i}")
        };
        let value = vec![b'v'; 200];
        b.push(&strom_protocol::batch::RecordRef {
            timestamp: 1_000_000,
            key: Some(key.as_bytes()),
            value: Some(&value),
            headers: &[],
        })
        .unwrap();
        if i == 20 {
            log.set_leader_epoch(5).unwrap();
        }
        log.append(&[b.finish().unwrap()]).unwrap();
    }
    log.roll().unwrap();
    let out = log.compact().unwrap();
    assert!(out.records_removed > 0, "{out:?}");
    let before = read_all(&log.reader(), 0);
    let offsets: Vec<i64> = before.iter().map(|r| r.offset).collect();
    assert_eq!(log.epoch_entries(), [(0, 0), (5, 20)]);
    let bases = segment_bases(dir.path());
    assert!(bases.len() >= 4, "{bases:?}");

    // An offset compaction removed, inside the second (closed) segment: the log ends there.
    let gap = (bases[1] + 2..bases[2])
        .find(|o| !offsets.contains(o))
        .unwrap();
    assert_eq!(log.truncate_to(gap).unwrap(), gap);
    let kept: Vec<_> = before.iter().filter(|r| r.offset < gap).cloned().collect();
    assert!(kept.len() > 2);
    assert_eq!(read_all(&log.reader(), 0), kept);
    let bases_after = segment_bases(dir.path());
    assert_eq!(bases_after, [bases[0], bases[1], gap]);
    let epochs = if gap > 20 {
        vec![(0, 0), (5, 20)]
    } else {
        vec![(0, 0)]
    };
    assert_eq!(log.epoch_entries(), epochs);
    // Appends continue at the new end, in a segment of their own.
    let info = log.append(&[simple_batch(0, 2, 1_000_000, 10)]).unwrap();
    assert_eq!(info.base_offset, gap);
    for reopen_clean in [false, true] {
        if reopen_clean {
            log.close().unwrap();
        } else {
            drop(log);
        }
        log = open();
        let again = read_all(&log.reader(), 0);
        assert_eq!(again[..kept.len()], kept[..]);
        assert_eq!(again.len(), kept.len() + 2);
        assert_eq!(log.end_offset(), gap + 2);
    }
    // A gap in the first segment: nothing before it survives compaction there but the records
    // kept below it.
    let first_gap = (1..bases[1]).find(|o| !offsets.contains(o)).unwrap();
    assert_eq!(log.truncate_to(first_gap).unwrap(), first_gap);
    let kept: Vec<_> = before
        .iter()
        .filter(|r| r.offset < first_gap)
        .cloned()
        .collect();
    assert_eq!(read_all(&log.reader(), 0), kept);
}

#[test]
fn a_flush_taken_before_a_truncation_vouches_for_nothing_after_it() {
    // The fsync of a flush taken out of the log covers the files as they were; a truncation
    // meanwhile replaced some, and appends after it wrote new ones.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small()).unwrap();
    fill(&mut log, 4);
    log.flush().unwrap();
    assert_eq!(log.durable_offset(), 20);
    fill(&mut log, 16);
    let flush = log.start_flush().unwrap().unwrap();
    assert_eq!(flush.end(), 100);
    assert_eq!(log.truncate_to(52).unwrap(), 50);
    assert_eq!(log.durable_offset(), 20);
    fill(&mut log, 20);
    let result = flush.run();
    log.finish_flush(flush, result).unwrap();
    assert_eq!(log.durable_offset(), 20, "the old flush moves nothing");
    assert_eq!(log.flush().unwrap(), 150);
}

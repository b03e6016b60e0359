//! Reads, time lookups, rolling, retention, durability, compaction and concurrent readers.

mod common;

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{batch, read_all, records_of, simple_batch};
use strom_storage::{CleanupPolicy, Log, LogConfig, ManualClock, StorageError};

fn config(pairs: &[(&str, &str)]) -> LogConfig {
    let mut c = LogConfig::default();
    for (k, v) in pairs {
        c.set(k, v).unwrap();
    }
    c
}

fn log_files(dir: &std::path::Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count()
}

#[test]
fn read_returns_whole_batches_from_the_one_holding_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    log.append(&[simple_batch(0, 5, 10, 10), simple_batch(5, 5, 10, 10)])
        .unwrap();
    let r = log.reader().read(7, 1 << 20).unwrap();
    assert_eq!(r.first_offset, 5, "the batch holding offset 7 starts at 5");
    assert_eq!(r.next_offset, 10);
    let recs = records_of(&r.data);
    assert_eq!(recs.first().unwrap().offset, 5);
    // max_bytes smaller than a batch still returns that one batch.
    let r = log.reader().read(0, 1).unwrap();
    assert_eq!((r.first_offset, r.next_offset), (0, 5));
    // At the end: nothing, no error. Past it or below the start: out of range.
    assert!(log.reader().read(10, 100).unwrap().data.is_empty());
    let e = log.reader().read(11, 100).unwrap_err();
    assert!(matches!(
        e,
        StorageError::OffsetOutOfRange {
            offset: 11,
            start: 0,
            end: 10
        }
    ));
    assert!(matches!(
        log.reader().read(-1, 100),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn read_until_stops_before_batches_past_the_last_offset_wanted() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let batches: Vec<_> = (0..5).map(|i| simple_batch(i * 2, 2, 10, 10)).collect();
    log.append(&batches).unwrap();
    let r = log.reader();
    // Offsets 3..=4 are in the batches starting at 2 and 4.
    let got = r.read_until(3, 4, 1 << 20).unwrap();
    assert_eq!((got.first_offset, got.next_offset), (2, 6));
    // The batch holding the offset comes even when `last` is before it.
    let got = r.read_until(5, 0, 1 << 20).unwrap();
    assert_eq!((got.first_offset, got.next_offset), (4, 6));
    // max_bytes still applies, and read is read_until to the end.
    let whole = r.read(0, 1 << 20).unwrap();
    assert_eq!(whole.next_offset, 10);
    assert_eq!(r.read_until(0, i64::MAX, 1 << 20).unwrap().data, whole.data);
    let one = r.read_until(0, 9, 1).unwrap();
    assert_eq!((one.first_offset, one.next_offset), (0, 2));
}

#[test]
fn batch_header_finds_the_batch_holding_an_offset_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(
        dir.path(),
        config(&[("segment.bytes", "4096"), ("index.interval.bytes", "128")]),
    )
    .unwrap();
    // Batch i holds offsets 4i..4i+3 with timestamps 1000 + 10 * offset.
    for b in 0..100i64 {
        let recs: Vec<common::Spec<'_>> = (0..4)
            .map(|i| {
                (
                    1000 + (4 * b + i) * 10,
                    Some(&b"k"[..]),
                    Some(&b"value"[..]),
                )
            })
            .collect();
        log.append(&[batch(&recs)]).unwrap();
    }
    assert!(log_files(dir.path()) > 2, "several segments");
    let r = log.reader();
    for offset in [0, 3, 4, 157, 398, 399] {
        let h = r.batch_header(offset).unwrap().expect("a batch");
        assert_eq!(h.base_offset, offset / 4 * 4, "offset {offset}");
        assert_eq!(h.base_timestamp, 1000 + h.base_offset * 10);
    }
    assert!(r.batch_header(400).unwrap().is_none(), "at the end");
    assert!(r.batch_header(401).unwrap().is_none(), "past the end");
    assert!(matches!(
        r.batch_header(-1),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn find_offset_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(
        dir.path(),
        config(&[("segment.bytes", "4096"), ("index.interval.bytes", "128")]),
    )
    .unwrap();
    // Timestamps 1000, 1010, ... one per record, 4 records per batch, over several segments.
    let mut next = 0i64;
    for _ in 0..100 {
        let recs: Vec<common::Spec<'_>> = (0..4)
            .map(|i| (1000 + (next + i) * 10, Some(&b"k"[..]), Some(&b"value"[..])))
            .collect();
        log.append(&[batch(&recs)]).unwrap();
        next += 4;
    }
    assert!(log.reader().segment_count() > 2);
    let r = log.reader();
    assert_eq!(r.offset_for_time(0).unwrap(), Some(0));
    assert_eq!(r.offset_for_time(1000).unwrap(), Some(0));
    assert_eq!(r.offset_for_time(1001).unwrap(), Some(1));
    assert_eq!(r.offset_for_time(1010).unwrap(), Some(1));
    for o in [37i64, 150, 211, 399] {
        assert_eq!(r.offset_for_time(1000 + o * 10).unwrap(), Some(o));
        assert_eq!(r.offset_for_time(1000 + o * 10 - 5).unwrap(), Some(o));
    }
    assert_eq!(r.offset_for_time(1000 + 400 * 10).unwrap(), None);
    log.close().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(
        log.reader().offset_for_time(1000 + 150 * 10).unwrap(),
        Some(150)
    );
}

#[test]
fn rolls_at_segment_bytes_and_segment_ms() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = Log::open_with_clock(
        dir.path(),
        config(&[("segment.bytes", "4096"), ("segment.ms", "1000")]),
        Arc::new(clock.clone()),
    )
    .unwrap();
    let b = simple_batch(0, 4, 0, 200); // ~900 bytes
    for _ in 0..4 {
        log.append(std::slice::from_ref(&b)).unwrap();
    }
    assert_eq!(log_files(dir.path()), 1);
    log.append(std::slice::from_ref(&b)).unwrap();
    assert_eq!(
        log_files(dir.path()),
        2,
        "the 5th batch does not fit 4096 bytes"
    );
    clock.advance(999);
    log.append(std::slice::from_ref(&b)).unwrap();
    assert_eq!(log_files(dir.path()), 2);
    clock.advance(1000);
    log.append(std::slice::from_ref(&b)).unwrap();
    assert_eq!(log_files(dir.path()), 3, "segment.ms elapsed");
    // One batch larger than segment.bytes goes alone into its own segment.
    log.append(&[simple_batch(0, 10, 0, 1000)]).unwrap();
    assert_eq!(read_all(&log.reader(), 0).len(), 4 * 7 + 10);
}

#[test]
fn retention_by_time_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let mut log = Log::open_with_clock(
        dir.path(),
        config(&[("segment.bytes", "4096"), ("retention.ms", "60000")]),
        Arc::new(clock.clone()),
    )
    .unwrap();
    for i in 0..20 {
        log.append(&[simple_batch(i * 4, 4, 1_000_000 + i as i64 * 1000, 200)])
            .unwrap();
    }
    let segments = log.reader().segment_count();
    assert!(segments >= 4);
    assert_eq!(log.enforce_retention().unwrap().segments_deleted, 0);
    // Newest record of the first segments is ~1_003_000; move past it + 60 s.
    clock.set(1_000_000 + 3_000 + 60_001);
    let out = log.enforce_retention().unwrap();
    assert!(out.segments_deleted >= 1);
    assert!(out.log_start > 0);
    assert_eq!(log.start_offset(), out.log_start);
    let e = log.reader().read(0, 100).unwrap_err();
    assert!(matches!(e, StorageError::OffsetOutOfRange { start, .. } if start == out.log_start));
    assert_eq!(
        read_all(&log.reader(), out.log_start).len() as i64,
        80 - out.log_start
    );
    // Everything expired: the active segment is rolled and deleted too; offsets continue.
    clock.advance(10_000_000);
    let out = log.enforce_retention().unwrap();
    assert_eq!(out.log_start, 80);
    assert_eq!(log.end_offset(), 80);
    assert_eq!(
        log.append(&[simple_batch(0, 1, 0, 1)]).unwrap().base_offset,
        80
    );

    // By size: keep at most ~8 KiB.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(
        dir.path(),
        config(&[
            ("segment.bytes", "4096"),
            ("retention.bytes", "8192"),
            ("retention.ms", "-1"),
        ]),
    )
    .unwrap();
    for i in 0..40 {
        log.append(&[simple_batch(i * 4, 4, 0, 200)]).unwrap();
    }
    log.enforce_retention().unwrap();
    let size = log.reader().size_bytes();
    assert!((8192 - 4096..8192 + 4096).contains(&size), "size {size}");
    // Survives a reopen.
    let start = log.start_offset();
    log.close().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.start_offset(), start);
}

#[test]
fn flush_policies_advance_the_durable_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(&[("flush.messages", "1")])).unwrap();
    for i in 0..5 {
        let info = log.append(&[simple_batch(i, 1, 0, 10)]).unwrap();
        assert!(info.durable);
        assert_eq!(log.durable_offset(), info.next_offset);
    }

    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = Log::open_with_clock(
        dir.path(),
        config(&[("flush.ms", "100"), ("flush.bytes", "100000")]),
        Arc::new(clock.clone()),
    )
    .unwrap();
    let info = log.append(&[simple_batch(0, 3, 0, 10)]).unwrap();
    assert!(!info.durable);
    assert_eq!(log.durable_offset(), 0);
    assert!(!log.flush_if_due().unwrap());
    clock.advance(100);
    assert!(log.flush_if_due().unwrap());
    assert_eq!(log.durable_offset(), 3);
    // flush.bytes: a big append is flushed at once.
    let info = log.append(&[simple_batch(0, 200, 0, 500)]).unwrap();
    assert!(info.durable);

    // The OS policy never fsyncs on its own, but flush() always works.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    log.append(&[simple_batch(0, 3, 0, 10)]).unwrap();
    assert_eq!(log.durable_offset(), 0);
    assert_eq!(log.flush().unwrap(), 3);
    assert_eq!(log.reader().durable_offset(), 3);
}

#[test]
fn compaction_keeps_newest_per_key_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let mut c = config(&[("segment.bytes", "4096"), ("delete.retention.ms", "1000")]);
    c.cleanup_policy = CleanupPolicy::COMPACT;
    let mut log = Log::open_with_clock(dir.path(), c.clone(), Arc::new(clock.clone())).unwrap();
    // 10 keys, each written 30 times; key 3 is deleted (tombstone) at the end.
    let mut latest = std::collections::BTreeMap::new();
    let mut offset = 0i64;
    for round in 0..30 {
        let values: Vec<String> = (0..10)
            .map(|k| format!("key{k}-round{round}-{}", "x".repeat(40)))
            .collect();
        let keys: Vec<String> = (0..10).map(|k| format!("key{k}")).collect();
        let recs: Vec<common::Spec<'_>> = keys
            .iter()
            .zip(&values)
            .map(|(k, v)| (1_000_000, Some(k.as_bytes()), Some(v.as_bytes())))
            .collect();
        log.append(&[batch(&recs)]).unwrap();
        for (k, v) in keys.iter().zip(&values) {
            latest.insert(k.clone(), (offset, Some(v.clone())));
            offset += 1;
        }
    }
    log.append(&[batch(&[(1_000_000, Some(b"key3"), None)])])
        .unwrap();
    latest.insert("key3".into(), (offset, None));
    offset += 1;
    log.roll().unwrap();
    let before = log.reader().size_bytes();
    let segments_before = log.reader().segment_count();
    let out = log.compact().unwrap();
    assert!(out.records_removed >= 290 - 10, "{out:?}");
    assert!(log.reader().size_bytes() < before / 5);
    let check = |log: &Log, tombstone_kept: bool| {
        let all = read_all(&log.reader(), 0);
        let got: std::collections::BTreeMap<String, (i64, Option<String>)> = all
            .iter()
            .map(|r| {
                (
                    String::from_utf8(r.key.clone().unwrap()).unwrap(),
                    (
                        r.offset,
                        r.value.clone().map(|v| String::from_utf8(v).unwrap()),
                    ),
                )
            })
            .collect();
        let mut want = latest.clone();
        if !tombstone_kept {
            want.remove("key3");
        }
        assert_eq!(got, want);
        assert_eq!(all.len(), want.len(), "exactly one record per key");
        assert_eq!(log.end_offset(), offset, "offsets are kept");
    };
    check(&log, true);
    // After delete.retention.ms the tombstone goes too.
    clock.advance(1001);
    log.compact().unwrap();
    check(&log, false);
    // The second pass merges the now small segments (groups are sized by what they held).
    assert!(log.reader().segment_count() < segments_before);
    // Reopened, also with compaction switched off, the gaps compaction left are gaps, not
    // missing data (the log remembers it was compacted).
    log.close().unwrap();
    let mut deleting = c.clone();
    deleting.cleanup_policy = CleanupPolicy::DELETE;
    let log = Log::open_with_clock(dir.path(), deleting, Arc::new(clock.clone())).unwrap();
    check(&log, false);
    drop(log);
    // Appends and reopen still work.
    let mut log = Log::open_with_clock(dir.path(), c, Arc::new(clock.clone())).unwrap();
    check(&log, false);
    assert_eq!(
        log.append(&[simple_batch(0, 1, 0, 1)]).unwrap().base_offset,
        offset
    );
}

/// A closed segment with nothing to drop is left as it is (not written and fsynced again every
/// pass); once a later record supersedes one of its keys, the next pass rewrites it.
#[test]
fn compaction_leaves_a_segment_with_nothing_to_drop_alone() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&[("segment.bytes", "4096")]);
    c.cleanup_policy = CleanupPolicy::COMPACT;
    let mut log = Log::open(dir.path(), c).unwrap();
    log.append(&[batch(&[
        (1, Some(b"a".as_slice()), Some(b"1".as_slice())),
        (1, Some(b"b".as_slice()), Some(b"1".as_slice())),
    ])])
    .unwrap();
    log.roll().unwrap();
    let first = dir.path().join(format!("{:020}.log", 0));
    let inode = fs::metadata(&first).unwrap().ino();
    let out = log.compact().unwrap();
    assert_eq!((out.segments_in, out.segments_unchanged), (1, 1), "{out:?}");
    assert_eq!(out.records_removed, 0);
    assert_eq!(
        fs::metadata(&first).unwrap().ino(),
        inode,
        "the segment was rewritten"
    );
    // Key a again: the first segment now holds a record to drop.
    log.append(&[batch(&[(1, Some(b"a".as_slice()), Some(b"2".as_slice()))])])
        .unwrap();
    log.roll().unwrap();
    let out = log.compact().unwrap();
    assert_eq!(out.records_removed, 1, "{out:?}");
    assert_ne!(
        fs::metadata(&first).unwrap().ino(),
        inode,
        "the segment was kept"
    );
    let values: Vec<_> = read_all(&log.reader(), 0)
        .into_iter()
        .map(|r| (r.offset, r.value))
        .collect();
    assert_eq!(values, [(1, Some(b"1".to_vec())), (2, Some(b"2".to_vec()))]);
}

#[test]
fn interrupted_compaction_swap_is_finished_or_discarded_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&[("segment.bytes", "4096")]);
    c.cleanup_policy = CleanupPolicy::COMPACT;
    let mut log = Log::open(dir.path(), c.clone()).unwrap();
    for i in 0..60 {
        log.append(&[simple_batch(i % 5 * 4, 4, 0, 100)]).unwrap();
    }
    let want_all = read_all(&log.reader(), 0);
    log.close().unwrap();
    // Leftover *.cleaned files (a crash in step 1): deleted, data untouched.
    fs::write(
        dir.path().join("00000000000000000000.log.cleaned"),
        b"partial",
    )
    .unwrap();
    fs::write(dir.path().join("00000000000000000000.index.swap"), b"x").unwrap();
    let log = Log::open(dir.path(), c.clone()).unwrap();
    assert_eq!(read_all(&log.reader(), 0), want_all);
    assert!(!dir.path().join("00000000000000000000.log.cleaned").exists());
    assert!(!dir.path().join("00000000000000000000.index.swap").exists());
    log.close().unwrap();

    // A crash in step 3: the first two segments were merged into `0.log.swap` (with its indexes
    // and end file), the second segment is already deleted or not; open must finish the swap.
    let mut bases: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".log").map(str::to_string)
        })
        .collect();
    bases.sort();
    assert!(bases.len() >= 3);
    let p = |name: String| dir.path().join(name);
    let mut merged = fs::read(p(format!("{}.log", bases[0]))).unwrap();
    merged.extend(fs::read(p(format!("{}.log", bases[1]))).unwrap());
    fs::write(p(format!("{}.log.swap", bases[0])), &merged).unwrap();
    fs::write(p(format!("{}.index.swap", bases[0])), b"").unwrap();
    fs::write(p(format!("{}.timeindex.swap", bases[0])), b"").unwrap();
    let end: i64 = bases[2].parse().unwrap();
    fs::write(p(format!("{}.end.swap", bases[0])), end.to_string()).unwrap();
    let log = Log::open(dir.path(), c.clone()).unwrap();
    assert_eq!(
        read_all(&log.reader(), 0),
        want_all,
        "nothing lost or duplicated"
    );
    assert!(
        !p(format!("{}.log", bases[1])).exists(),
        "the merged segment is gone"
    );
    assert!(!p(format!("{}.end.swap", bases[0])).exists());
    assert_eq!(log.reader().segment_count(), bases.len() - 1);
}

#[test]
fn readers_never_see_partial_batches_while_the_writer_appends() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(
        dir.path(),
        config(&[("segment.bytes", "65536"), ("index.interval.bytes", "1024")]),
    )
    .unwrap();
    let reader = log.reader();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let reader = reader.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut offset = 0i64;
                let mut seen = 0usize;
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let r = reader.read(offset, 8192).unwrap();
                    let from = offset;
                    for rec in records_of(&r.data).into_iter().filter(|x| x.offset >= from) {
                        assert_eq!(rec.offset, offset, "contiguous");
                        let want = format!("k{}", rec.offset).into_bytes();
                        assert_eq!(rec.key.unwrap(), want);
                        offset += 1;
                        seen += 1;
                    }
                    if finished && r.data.is_empty() {
                        return seen;
                    }
                }
            })
        })
        .collect();
    let mut next = 0;
    for i in 0..2000 {
        let n = 1 + i % 7;
        log.append(&[simple_batch(next, n, 0, 30)]).unwrap();
        next += n;
    }
    done.store(true, Ordering::Release);
    for r in readers {
        assert_eq!(r.join().unwrap(), next);
    }
}

#[test]
fn a_flush_taken_out_of_the_log_covers_what_was_appended_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(&[("segment.bytes", "4096")])).unwrap();
    log.append_deferred(&[valid(simple_batch(0, 10, 1, 100))])
        .unwrap();
    let flush = log.start_flush().unwrap().expect("something to flush");
    assert_eq!(flush.end(), 10);
    // Appends go on while it runs elsewhere, rolling segments too.
    let runner = std::thread::spawn(move || {
        let r = flush.run();
        (flush, r)
    });
    for i in 1..5 {
        let info = log
            .append_deferred(&[valid(simple_batch(i * 10, 10, 1, 300))])
            .unwrap();
        assert!(!info.durable);
    }
    assert!(log.reader().segment_count() > 1);
    let (flush, r) = runner.join().unwrap();
    assert_eq!(log.finish_flush(flush, r).unwrap(), 10);
    assert_eq!(log.durable_offset(), 10, "later appends are not covered");
    // The next flush covers the rest, closed segments included.
    let next = log.start_flush().unwrap().expect("more to flush");
    assert_eq!(next.end(), 50);
    let r = next.run();
    assert_eq!(log.finish_flush(next, r).unwrap(), 50);
    assert!(log.start_flush().unwrap().is_none(), "nothing left");
}

fn valid(b: bytes::Bytes) -> strom_storage::ValidBatch {
    strom_storage::ValidBatch::new(b).unwrap()
}

#[test]
fn reads_stay_correct_across_releases_of_the_maps_pages() {
    // Every 32 MiB served, a segment drops its map's pages from the resident set; bytes handed
    // out before must still read the same (they are mapped again from the page cache).
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    for i in 0..48 {
        log.append(&[simple_batch(i * 1000, 1000, 1, 1000)])
            .unwrap();
    }
    let reader = log.reader();
    let first = reader.read(0, 1 << 20).unwrap().data;
    let copy = first.to_vec();
    let all = read_all(&reader, 0);
    assert_eq!(all.len(), 48_000);
    let again = read_all(&reader, 0);
    assert_eq!(all, again);
    assert_eq!(
        &first[..],
        &copy[..],
        "a slice held across a release reads the same"
    );
}

#[test]
fn early_writeback_covers_whole_pages_then_rolled_tails() {
    use strom_storage::ValidBatch;
    let page = 4096u64;
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(
        dir.path(),
        config(&[("writeback.bytes", "8192"), ("segment.bytes", "65536")]),
    )
    .unwrap();
    let batch = [ValidBatch::new(simple_batch(0, 10, 0, 100)).unwrap()];
    // Nothing is wanted until writeback.bytes have been appended.
    while log.reader().size_bytes() < 8192 {
        assert!(!log.writeback_wanted());
        log.append_deferred(&batch).unwrap();
    }
    assert!(log.writeback_wanted());
    let len = log.reader().size_bytes();
    let w = log.start_writeback().expect("8 KiB appended");
    // Whole pages only: the page still being appended to is left for later.
    assert_eq!(w.bytes(), len - len % page);
    w.run();
    assert!(!log.writeback_wanted());
    assert!(log.start_writeback().is_none_or(|w| w.bytes() == 0));
    // A roll hands over the rest of the closed segment, from where the last one stopped.
    log.roll().unwrap();
    assert!(log.writeback_wanted());
    let w = log.start_writeback().expect("the rolled segment's tail");
    assert_eq!(w.bytes(), len % page);
    w.run();
    assert!(!log.writeback_wanted());
    assert!(log.start_writeback().is_none());

    // append (append_valid) starts the write-back itself.
    for _ in 0..20 {
        log.append(&[simple_batch(0, 10, 0, 100)]).unwrap();
        assert!(!log.writeback_wanted());
    }

    // A tail whose segment retention deletes is dropped, not written back.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(
        dir.path(),
        config(&[
            ("writeback.bytes", "8192"),
            ("retention.bytes", "1"),
            ("retention.ms", "-1"),
        ]),
    )
    .unwrap();
    log.append_deferred(&batch).unwrap();
    log.roll().unwrap();
    log.append_deferred(&batch).unwrap();
    assert!(log.writeback_wanted(), "the rolled segment's tail");
    assert_eq!(log.enforce_retention().unwrap().segments_deleted, 1);
    assert!(!log.writeback_wanted());

    // `none` leaves write-back to the kernel: never wanted, not even after a roll.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(&[("writeback.bytes", "none")])).unwrap();
    for _ in 0..40 {
        log.append_deferred(&batch).unwrap();
    }
    assert!(!log.writeback_wanted());
    log.roll().unwrap();
    assert!(!log.writeback_wanted());
    assert_eq!(log.config().writeback_bytes, None);
}

#[test]
fn index_entries_are_written_in_groups_and_every_one_by_a_close() {
    // One index entry per batch after the first: below a group, reads and time lookups walk the
    // log from the segment start; the index file fills a group at a time; a close writes the
    // rest, and the reopened log (trusting its files after a clean stop) has every entry.
    let dir = tempfile::tempdir().unwrap();
    let c = config(&[("index.interval.bytes", "1")]);
    let index_len = || {
        fs::metadata(dir.path().join(format!("{:020}.index", 0)))
            .unwrap()
            .len()
    };
    let group = strom_storage::INDEX_WRITE_GROUP;
    let mut log = Log::open(dir.path(), c.clone()).unwrap();
    let check = |log: &Log, batches: usize| {
        for o in 0..batches as i64 * 2 {
            let r = log.reader().read(o, 1).unwrap();
            assert_eq!(r.first_offset, o - o % 2, "offset {o}");
        }
        for b in 0..batches as i64 {
            assert_eq!(log.reader().offset_for_time(100 + b).unwrap(), Some(b * 2));
        }
    };
    for b in 0..group {
        log.append(&[simple_batch(b * 2, 2, 100 + b as i64, 20)])
            .unwrap();
    }
    assert_eq!(index_len(), 0, "{} entries are still in memory", group - 1);
    check(&log, group);
    let total = 3 * group + 5;
    for b in group..total {
        log.append(&[simple_batch(b * 2, 2, 100 + b as i64, 20)])
            .unwrap();
    }
    assert_eq!(index_len(), (3 * group * 8) as u64, "three whole groups");
    check(&log, total);
    log.close().unwrap();
    assert_eq!(
        index_len(),
        ((total - 1) * 8) as u64,
        "a close writes the rest"
    );
    let log = Log::open(dir.path(), c).unwrap();
    check(&log, total);
}

#[test]
fn delete_records_moves_the_start_inside_a_segment_and_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(&[("segment.bytes", "4096")]);
    let mut log = Log::open(dir.path(), c.clone()).unwrap();
    // Batches of 10 records; several segments.
    for i in 0..40 {
        log.append(&[simple_batch(i * 10, 10, 40, 1000 + i)])
            .unwrap();
    }
    let segments = log_files(dir.path());
    assert!(segments > 3, "{segments} segments");
    assert_eq!(log.delete_records_before(5).unwrap(), 5);
    let r = log.reader();
    assert_eq!(r.start_offset(), 5);
    assert!(matches!(
        r.read(4, 100),
        Err(StorageError::OffsetOutOfRange { start: 5, .. })
    ));
    // Reading from the start returns the batch holding it (as Kafka does).
    assert_eq!(r.read(5, 1 << 20).unwrap().first_offset, 0);
    // Moving past several segments removes them; an earlier offset changes nothing.
    assert_eq!(log.delete_records_before(333).unwrap(), 333);
    assert!(
        log_files(dir.path()) < segments,
        "whole segments below the start are gone"
    );
    assert_eq!(log.delete_records_before(100).unwrap(), 333);
    assert!(matches!(
        log.delete_records_before(401),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    // A crash (no close) keeps the start: deleted records never come back.
    drop(log);
    let log = Log::open(dir.path(), c.clone()).unwrap();
    assert_eq!(log.start_offset(), 333);
    assert!(log.reader().read(300, 100).is_err());
    assert_eq!(log.reader().read(333, 1 << 20).unwrap().first_offset, 330);
    assert_eq!(log.end_offset(), 400);
    log.close().unwrap();
    let mut log = Log::open(dir.path(), c).unwrap();
    assert_eq!(log.start_offset(), 333);
    // -1: everything.
    assert_eq!(log.delete_records_before(-1).unwrap(), 400);
    assert!(log.reader().read(399, 100).is_err());
    assert!(log.reader().read(400, 100).unwrap().data.is_empty());
}

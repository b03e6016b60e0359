//! Crash simulation, corruption detection and index rebuilds.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use common::{read_all, simple_batch};
use strom_storage::{Log, LogConfig, StorageError};

fn small_segments() -> LogConfig {
    let mut c = LogConfig::default();
    c.set("segment.bytes", "8192").unwrap();
    c.set("index.interval.bytes", "512").unwrap();
    c
}

fn segment_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Reads `log` from `from` until `to` in 1 MiB reads; the first error, if any.
fn first_read_error(log: &Log, from: i64, to: i64) -> Option<StorageError> {
    let mut at = from;
    while at < to {
        match log.reader().read(at, 1 << 20) {
            Ok(r) => at = r.next_offset,
            Err(e) => return Some(e),
        }
    }
    None
}

/// Appends `batches` batches of 3 records each; returns the end offset after each batch.
fn fill(log: &mut Log, batches: usize) -> Vec<i64> {
    (0..batches)
        .map(|i| {
            log.append(&[simple_batch(i * 3, 3, 1_000 + i as i64, 40)])
                .unwrap()
                .next_offset
        })
        .collect()
}

#[test]
fn cut_at_every_byte_of_the_tail_recovers_a_prefix() {
    let src = tempfile::tempdir().unwrap();
    let mut log = Log::open(src.path(), small_segments()).unwrap();
    let ends = fill(&mut log, 60);
    let want = read_all(&log.reader(), 0);
    drop(log);
    let active = segment_files(src.path(), "log").pop().unwrap();
    let full = fs::read(&active).unwrap();
    // Batch boundaries of the active segment, to know which prefix each cut must leave.
    let boundaries: Vec<usize> = strom_protocol::batch::BatchIter::new(&full)
        .map(|r| r.unwrap().0.end)
        .collect();
    // Every byte of the last three batches, and a spread of positions through the rest of the
    // active segment (inside every earlier batch, at and around every boundary, before and after
    // index entries).
    assert!(
        boundaries.len() >= 6,
        "several batches in the active segment"
    );
    let tail = boundaries[boundaries.len() - 4];
    let mut cuts: Vec<usize> = (tail..=full.len()).chain((0..tail).step_by(13)).collect();
    for &b in &boundaries {
        cuts.extend([b.saturating_sub(1), b, b + 1, b + 12, b + 61]);
    }
    cuts.retain(|&c| c <= full.len());
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts {
        let dir = tempfile::tempdir().unwrap();
        for e in fs::read_dir(src.path()).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
        }
        let copy = dir.path().join(active.file_name().unwrap());
        OpenOptions::new()
            .write(true)
            .open(&copy)
            .unwrap()
            .set_len(cut as u64)
            .unwrap();
        let mut log = Log::open(dir.path(), small_segments()).unwrap();
        let kept_in_segment = boundaries.iter().filter(|&&b| b <= cut).count();
        let segment_base: i64 = active
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let expected_end = segment_base + 3 * kept_in_segment as i64;
        assert_eq!(log.end_offset(), expected_end, "cut at byte {cut}");
        assert!(ends.contains(&expected_end) || expected_end == segment_base);
        let got = read_all(&log.reader(), 0);
        assert_eq!(
            &got[..],
            &want[..got.len()],
            "a prefix survives a cut at {cut}"
        );
        assert_eq!(got.len() as i64, expected_end);
        // Appends continue right after the recovered prefix.
        let info = log.append(&[simple_batch(999, 2, 5, 10)]).unwrap();
        assert_eq!(info.base_offset, expected_end);
        drop(log);
        let log = Log::open(dir.path(), small_segments()).unwrap();
        assert_eq!(log.end_offset(), expected_end + 2);
    }
}

#[test]
fn garbage_after_the_tail_is_cut_off() {
    for garbage in [
        vec![0u8; 100],
        vec![0xff; 7],
        (0..=255u8).collect::<Vec<_>>(),
        // A plausible header with a bad CRC.
        simple_batch(0, 1, 1, 10)[..]
            .iter()
            .map(|b| b ^ 0x10)
            .collect(),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), small_segments()).unwrap();
        fill(&mut log, 3);
        let end = log.end_offset();
        drop(log);
        let active = segment_files(dir.path(), "log").pop().unwrap();
        let len = fs::metadata(&active).unwrap().len();
        OpenOptions::new()
            .append(true)
            .open(&active)
            .unwrap()
            .write_all(&garbage)
            .unwrap();
        let mut log = Log::open(dir.path(), small_segments()).unwrap();
        assert_eq!(log.end_offset(), end);
        assert_eq!(
            fs::metadata(&active).unwrap().len(),
            len,
            "garbage truncated"
        );
        assert_eq!(read_all(&log.reader(), 0).len() as i64, end);
        log.append(&[simple_batch(0, 1, 1, 1)]).unwrap();
    }
}

#[test]
fn clean_close_scans_nothing_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments()).unwrap();
    fill(&mut log, 50);
    let want = read_all(&log.reader(), 0);
    log.close().unwrap();
    assert!(dir.path().join(".clean-shutdown").exists());
    let mut log = Log::open(dir.path(), small_segments()).unwrap();
    // The marker stays until the first change, then goes: a crash after that must recover.
    assert!(dir.path().join(".clean-shutdown").exists());
    assert_eq!(read_all(&log.reader(), 0), want);
    log.append(&[simple_batch(0, 1, 1, 1)]).unwrap();
    assert!(!dir.path().join(".clean-shutdown").exists());
}

#[test]
fn flipped_byte_in_a_closed_segment_is_a_corruption_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments()).unwrap();
    fill(&mut log, 150);
    log.close().unwrap();
    let logs = segment_files(dir.path(), "log");
    assert!(logs.len() >= 3, "several segments");
    let victim = &logs[0];
    let mut bytes = fs::read(victim).unwrap();
    // A byte inside the CRC-covered part of a batch in the middle of the segment. (The base
    // offset and leader epoch are outside Kafka's CRC; see docs/storage.md.)
    let middle = strom_protocol::batch::BatchIter::new(&bytes)
        .map(|r| r.unwrap().0)
        .find(|r| r.end > bytes.len() / 2)
        .unwrap();
    let at = middle.start + 40;
    bytes[at] ^= 0x01;
    fs::write(victim, &bytes).unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    let reader = log.reader();
    let e = first_read_error(&log, 0, log.end_offset()).expect("the damaged batch is never served");
    assert!(e.is_corruption(), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(victim.file_name().unwrap().to_str().unwrap()),
        "the error names the file: {msg}"
    );
    // Data in other segments is still served.
    let later: i64 = logs[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(!reader.read(later, 1 << 20).unwrap().data.is_empty());
}

#[test]
fn missing_or_damaged_indexes_are_rebuilt() {
    for damage in ["delete", "garbage", "truncate", "zeros"] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), small_segments()).unwrap();
        fill(&mut log, 60);
        let want = read_all(&log.reader(), 0);
        let mut times = Vec::new();
        for ts in [999, 1_000, 1_010, 1_030, 1_059, 1_060] {
            times.push(log.reader().offset_for_time(ts).unwrap());
        }
        log.close().unwrap();
        for ext in ["index", "timeindex"] {
            for p in segment_files(dir.path(), ext) {
                match damage {
                    "delete" => fs::remove_file(&p).unwrap(),
                    "garbage" => fs::write(&p, [0xab; 37]).unwrap(),
                    "truncate" => fs::write(&p, []).unwrap(),
                    _ => {
                        let n = fs::metadata(&p).unwrap().len();
                        fs::write(&p, vec![0u8; n as usize + 24]).unwrap()
                    }
                }
            }
        }
        let log = Log::open(dir.path(), small_segments()).unwrap();
        assert_eq!(read_all(&log.reader(), 0), want, "{damage}");
        for (i, ts) in [999, 1_000, 1_010, 1_030, 1_059, 1_060]
            .into_iter()
            .enumerate()
        {
            assert_eq!(
                log.reader().offset_for_time(ts).unwrap(),
                times[i],
                "{damage} ts {ts}"
            );
        }
        // Index files are there again and non-trivial for full segments.
        assert!(
            segment_files(dir.path(), "index")
                .iter()
                .any(|p| fs::metadata(p).unwrap().len() > 0)
        );
    }
}

#[test]
fn crash_with_torn_index_tail_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments()).unwrap();
    fill(&mut log, 12);
    let want = read_all(&log.reader(), 0);
    drop(log);
    // Half an entry at the end of the active index, as a torn write would leave.
    let idx = segment_files(dir.path(), "index").pop().unwrap();
    OpenOptions::new()
        .append(true)
        .open(&idx)
        .unwrap()
        .write_all(&[1, 2, 3])
        .unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(read_all(&log.reader(), 0), want);
}

#[test]
fn bad_batches_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments()).unwrap();
    let good = simple_batch(0, 2, 1, 10);
    let mut bad_crc = good.to_vec();
    let n = bad_crc.len();
    bad_crc[n - 1] ^= 1;
    let mut bad_magic = good.to_vec();
    bad_magic[16] = 1;
    for bad in [
        bad_crc,
        bad_magic,
        good[..good.len() - 3].to_vec(),
        vec![0u8; 5],
    ] {
        let e = log
            .append(&[good.clone(), bytes::Bytes::from(bad)])
            .unwrap_err();
        assert!(
            matches!(e, StorageError::InvalidBatch { index: 1, .. }),
            "{e}"
        );
        assert_eq!(log.end_offset(), 0);
    }
    let mut c = small_segments();
    c.set("max.message.bytes", "100").unwrap();
    log.set_config(c);
    let e = log.append(&[simple_batch(0, 10, 1, 50)]).unwrap_err();
    assert!(matches!(e, StorageError::MessageTooLarge { .. }));
    assert_eq!(log.end_offset(), 0);
}

/// Byte positions of the batches of a `.log` file, from their length fields.
fn batch_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut pos = 0;
    while pos + 12 <= bytes.len() {
        starts.push(pos);
        let len = u32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()) as usize;
        pos += 12 + len;
    }
    starts
}

#[test]
fn a_closed_segment_cut_at_a_batch_boundary_reports_the_missing_offsets() {
    // Finding S1: a sealed segment that lost its tail used to be read as a gap.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments()).unwrap();
    fill(&mut log, 200);
    log.close().unwrap();
    let logs = segment_files(dir.path(), "log");
    assert!(logs.len() >= 3);
    let bytes = fs::read(&logs[0]).unwrap();
    let starts = batch_starts(&bytes);
    let keep = starts[starts.len() / 2];
    let kept_offsets = (starts.len() / 2 * 3) as i64;
    OpenOptions::new()
        .write(true)
        .open(&logs[0])
        .unwrap()
        .set_len(keep as u64)
        .unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    let second_base: i64 = logs[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(log.reader().read(0, 1 << 20).unwrap().first_offset, 0);
    for offset in [kept_offsets, second_base - 1] {
        let e = log.reader().read(offset, 1 << 20).unwrap_err();
        assert!(e.is_corruption(), "offset {offset}: {e}");
        assert!(e.to_string().contains("missing"), "{e}");
    }
    // What follows is still served.
    let r = log.reader().read(second_base, 1 << 20).unwrap();
    assert_eq!(r.first_offset, second_base);
}

#[test]
fn a_damaged_middle_time_index_entry_does_not_mislead_lookups() {
    // Finding S3: one flipped byte in the middle of a sealed `.timeindex` made a lookup by time
    // skip records.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments()).unwrap();
    fill(&mut log, 200);
    let expected: Vec<Option<i64>> = (1_000..1_200)
        .map(|ts| log.reader().offset_for_time(ts).unwrap())
        .collect();
    log.close().unwrap();
    let times = segment_files(dir.path(), "timeindex");
    const ENTRY: usize = strom_storage::index::TIME_ENTRY;
    let len = fs::metadata(&times[0]).unwrap().len() as usize;
    assert!(len >= 5 * ENTRY, "several time entries");
    let mut damaged = 0;
    for entry in 1..len / ENTRY {
        for byte in [8, 9, 11, 0, 6, 7, 13] {
            let mut bytes = fs::read(&times[0]).unwrap();
            let original = bytes.clone();
            bytes[entry * ENTRY + byte] ^= 0x5a;
            fs::write(&times[0], &bytes).unwrap();
            let log = Log::open(dir.path(), small_segments()).unwrap();
            for (i, ts) in (1_000..1_200).enumerate() {
                assert_eq!(
                    log.reader().offset_for_time(ts).unwrap(),
                    expected[i],
                    "time {ts} after flipping byte {byte} of entry {entry}"
                );
            }
            log.close().unwrap();
            fs::write(&times[0], &original).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0);
}

#[test]
fn damage_at_the_end_of_a_cleanly_closed_active_segment_never_shadows_appends() {
    // Finding S4: appends went after the damage, and the next unclean open cut them off.
    let dir = tempfile::tempdir().unwrap();
    let mut c = LogConfig::default();
    c.set("index.interval.bytes", "512").unwrap();
    let mut log = Log::open(dir.path(), c.clone()).unwrap();
    fill(&mut log, 50);
    log.close().unwrap();
    let logs = segment_files(dir.path(), "log");
    assert_eq!(logs.len(), 1);
    let mut bytes = fs::read(&logs[0]).unwrap();
    let last = *batch_starts(&bytes).last().unwrap();
    bytes[last + 30] ^= 0xff; // inside the CRC-covered part of the last batch
    fs::write(&logs[0], &bytes).unwrap();

    let mut log = Log::open(dir.path(), c.clone()).unwrap();
    assert_eq!(log.end_offset(), 150);
    let info = log.append(&[simple_batch(150, 3, 5_000, 40)]).unwrap();
    assert_eq!(info.base_offset, 150);
    assert_eq!(
        log.reader().segment_count(),
        2,
        "the damaged segment was closed"
    );
    drop(log); // a crash: the next open recovers the active segment
    let log = Log::open(dir.path(), c).unwrap();
    assert_eq!(log.end_offset(), 153, "the append survived");
    let r = log.reader().read(150, 1 << 20).unwrap();
    assert_eq!((r.first_offset, r.next_offset), (150, 153));
    // The damaged batch is reported, not served.
    assert!(log.reader().read(147, 1 << 20).unwrap_err().is_corruption());
}

#[test]
fn a_rewritten_base_offset_is_found_in_a_log_that_was_never_compacted() {
    // Finding S2: no CRC covers a batch's base offset. Until compaction has rewritten a log,
    // every batch starts where the one before it ended, which reads and recovery now check.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments()).unwrap();
    fill(&mut log, 200);
    // On disk and recorded so: the closed segments lie below the recovery point, where an
    // unclean open walks them by headers and leaves damage for reads to find.
    log.flush().unwrap();
    log.checkpoint_recovery_point().unwrap();
    drop(log); // a crash: the next open recovers the active segment
    let logs = segment_files(dir.path(), "log");
    assert!(logs.len() >= 3);
    // A closed segment: its fifth batch (offsets 12..15) claims offsets from 1,000,000.
    let mut bytes = fs::read(&logs[0]).unwrap();
    let fifth = batch_starts(&bytes)[4];
    bytes[fifth..fifth + 8].copy_from_slice(&1_000_000i64.to_be_bytes());
    fs::write(&logs[0], &bytes).unwrap();
    // The active segment: its last batch claims to start 100 offsets later.
    let active = logs.last().unwrap();
    let mut bytes = fs::read(active).unwrap();
    let last = *batch_starts(&bytes).last().unwrap();
    let base = i64::from_be_bytes(bytes[last..last + 8].try_into().unwrap());
    bytes[last..last + 8].copy_from_slice(&(base + 100).to_be_bytes());
    fs::write(active, &bytes).unwrap();

    let log = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(
        log.end_offset(),
        base,
        "recovery cut the active segment at the jump instead of moving the log end"
    );
    for offset in [12, 13, 0] {
        let e = first_read_error(&log, offset, 15).expect("the damaged batch is reported");
        assert!(e.is_corruption(), "{e}");
    }
    // A time lookup that lands on it reports it rather than naming a wrong offset.
    let e = log.reader().offset_for_time(1_004).unwrap_err();
    assert!(e.is_corruption(), "{e}");
    // Offsets and times before it still read.
    assert_eq!(log.reader().read(0, 1).unwrap().first_offset, 0);
    assert_eq!(log.reader().offset_for_time(1_003).unwrap(), Some(9));
}

/// The base offset a segment file is named by.
fn base_of(path: &Path) -> i64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

#[test]
fn a_power_cut_in_a_closed_segment_past_the_recovery_point_cuts_the_log_there() {
    // What a power cut does to segments rolled since the last fsync: each loses its unsynced
    // tail ("drop"), or keeps its length with zeros where pages never reached the disk
    // ("zeros"). Either way the log is cut at the first damage and the later segments go: a
    // prefix, with no hole, that a replica refetches from its leader.
    for damage in ["drop", "zeros"] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), small_segments()).unwrap();
        fill(&mut log, 30);
        log.flush().unwrap();
        log.checkpoint_recovery_point().unwrap();
        let durable = log.end_offset();
        fill(&mut log, 200);
        let want = read_all(&log.reader(), 0);
        drop(log);
        let logs = segment_files(dir.path(), "log");
        assert!(logs.len() >= 4, "{damage}: several segments");
        // The first segment that reaches past the recovery point is damaged in its middle.
        let victim = logs
            .iter()
            .rposition(|p| base_of(p) <= durable)
            .map(|i| &logs[i + 1])
            .unwrap();
        let bytes = fs::read(victim).unwrap();
        let starts = batch_starts(&bytes);
        let keep = starts[starts.len() / 2];
        match damage {
            "drop" => OpenOptions::new()
                .write(true)
                .open(victim)
                .unwrap()
                .set_len(keep as u64)
                .unwrap(),
            _ => {
                // A page of zeros inside a batch: its header is intact, its CRC is not.
                let mut bytes = bytes.clone();
                let (from, len) = (keep + 20, bytes.len());
                bytes[from..(from + 64).min(len)].fill(0);
                fs::write(victim, &bytes).unwrap();
            }
        }
        let kept_end = base_of(victim) + (starts.len() / 2 * 3) as i64;

        let mut log = Log::open(dir.path(), small_segments()).unwrap();
        assert_eq!(log.end_offset(), kept_end, "{damage}: cut at the damage");
        assert_eq!(
            segment_files(dir.path(), "log").last().unwrap(),
            victim,
            "{damage}: the later segments are gone"
        );
        assert_eq!(
            first_read_error(&log, 0, kept_end).map(|e| e.to_string()),
            None
        );
        let got = read_all(&log.reader(), 0);
        assert_eq!(
            got[..],
            want[..got.len()],
            "{damage}: a prefix of what was written"
        );
        // Appends go on from the cut, and a clean reopen keeps them.
        let next = log.append(&[simple_batch(0, 3, 9, 40)]).unwrap();
        assert_eq!(next.base_offset, kept_end);
        log.close().unwrap();
        let log = Log::open(dir.path(), small_segments()).unwrap();
        assert_eq!(log.end_offset(), kept_end + 3);
    }
}

#[test]
fn damage_below_the_recovery_point_is_left_for_reads_to_report() {
    // Below the recovery point segments are only walked by headers at an unclean open (a
    // restart does not read the whole log): a flipped payload byte there is not a reason to
    // cut, and reads report it as corruption (finding S1's rule for data that was on disk).
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments()).unwrap();
    fill(&mut log, 200);
    log.flush().unwrap();
    log.checkpoint_recovery_point().unwrap();
    let end = log.end_offset();
    drop(log);
    let logs = segment_files(dir.path(), "log");
    let mut bytes = fs::read(&logs[0]).unwrap();
    let at = batch_starts(&bytes)[3] + 40;
    bytes[at] ^= 0x01;
    fs::write(&logs[0], &bytes).unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(log.end_offset(), end);
    let e = first_read_error(&log, 0, end).expect("the damaged batch is reported");
    assert!(e.is_corruption(), "{e}");
}

#[test]
fn a_truncation_lowers_the_recovery_point_before_the_offsets_are_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments()).unwrap();
    fill(&mut log, 200);
    log.flush().unwrap();
    log.checkpoint_recovery_point().unwrap();
    // A follower parts from its leader at offset 90 and writes other batches there, never
    // fsynced: the point must not vouch for them.
    log.truncate_to(90).unwrap();
    let written = log.end_offset();
    for i in 0..150 {
        log.append(&[simple_batch(written as usize + i * 3, 3, 5_000, 40)])
            .unwrap();
    }
    drop(log);
    let logs = segment_files(dir.path(), "log");
    let victim = logs
        .iter()
        .find(|p| base_of(p) >= written)
        .expect("a segment written after the truncation");
    let len = fs::metadata(victim).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(victim)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    assert!(
        log.end_offset() < base_of(victim) + 150,
        "cut inside the damaged segment"
    );
    assert_eq!(
        first_read_error(&log, 0, log.end_offset()).map(|e| e.to_string()),
        None,
        "no hole"
    );
}

#[test]
fn without_a_flush_policy_the_durable_offset_follows_the_segments_rolls_put_on_disk() {
    // Past a few unflushed closed segments a roll fsyncs the oldest: the durable offset (and
    // the recovery point with it) moves to its end, so what an unclean open checks is bounded.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(log.durable_offset(), 0);
    fill(&mut log, 400);
    let logs = segment_files(dir.path(), "log");
    assert!(logs.len() > 6, "{} segments", logs.len());
    let durable = log.durable_offset();
    assert!(durable > 0, "the oldest closed segments went to disk");
    assert!(
        logs.iter().any(|p| base_of(p) == durable),
        "at a segment boundary: {durable}"
    );
    assert!(durable < log.end_offset());
}

//! The check behind the `segment_recovery` fuzz target, shared by the target itself
//! (`fuzz/fuzz_targets/segment_recovery.rs`, which pulls this file in with `#[path]`) and by the
//! fast corpus replay in `tests/fuzz_corpus.rs`: one source, so the replay in the normal test
//! suite asserts exactly what the fuzzer asserted. See `docs/fuzzing.md`.
//!
//! A small log (three segments, sparse indexes) is built once per process, both closed cleanly
//! and dropped as in a crash; each input copies one of them to a fresh directory, damages its
//! files, and then reopens, reads, looks up, appends and reopens again.

// The replay uses only some of the helpers the fuzz target uses, and the other way round.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use strom_protocol::batch::{self, BatchBuilder, BatchIter, HeaderRef, RecordRef, Records};
use strom_storage::{Log, LogConfig, LogReader, StorageError};

/// The log every input starts from: its files and the batches it holds, as stored.
#[derive(Debug)]
pub struct Template {
    /// (file name, contents), sorted by name.
    pub files: Vec<(String, Vec<u8>)>,
    /// The stored batches in offset order (base offsets assigned).
    pub batches: Vec<Bytes>,
    /// Base offsets of the segments.
    pub segments: Vec<i64>,
    /// Per file (same order as `files`): the byte ranges of its batches' base-offset and
    /// leader-epoch fields, which the batch CRC does not cover (empty for index files).
    pub uncovered: Vec<Vec<Range<u64>>>,
    /// The log-end offset.
    pub end: i64,
}

/// Known finding S1 (docs/fuzzing.md): a sealed segment cut at a batch boundary loses its tail
/// without any error: reads continue at the next segment, or return nothing below the log end
/// if no later segment holds data. While this is open, a read may skip offsets up to the base
/// offset of a segment, and only there.
pub const ALLOW_GAP_BEFORE_A_SEGMENT: bool = false;

/// Known finding S3 (docs/fuzzing.md): a damaged entry in the middle of a sealed segment's
/// `.timeindex` passes the open-time sanity check (first and last entries only), and lookups by
/// time that use it answer a later offset than the right one. While this is open, lookups by
/// time are checked for the exact answer only when no `.timeindex` file was damaged.
pub const ALLOW_WRONG_TIME_LOOKUP_AFTER_TIMEINDEX_DAMAGE: bool = false;

/// Settings of the fuzzed log: the smallest segments and indexes the config accepts, and an
/// index entry every few batches.
pub fn config() -> LogConfig {
    let mut c = LogConfig::default();
    for (key, value) in [
        ("segment.bytes", "4096"),
        ("segment.index.bytes", "4096"),
        ("index.interval.bytes", "600"),
    ] {
        c.set(key, value).expect("valid setting");
    }
    c
}

/// A fresh directory, in memory where the machine has a tmpfs (fsync is free there).
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("temp dir")
}

/// The `i`-th batch of the template log: 1 to 4 records with varied keys, values, headers and
/// timestamps (some going backwards inside and across batches).
fn template_batch(i: usize) -> Bytes {
    let mut b = BatchBuilder::default();
    let n = 1 + i % 4;
    for j in 0..n {
        let k = i * 4 + j;
        let timestamp = 1_000 + 10 * i64::try_from(k).expect("small") - 25 * i64::from(k % 3 == 2);
        let key = format!("key-{}", k % 7);
        let value = vec![b'a' + (k % 26) as u8; 20 + (k * 37) % 150];
        let headers = [HeaderRef {
            key: "h",
            value: Some(b"v"),
        }];
        b.push(&RecordRef {
            timestamp,
            key: (k % 5 != 4).then_some(key.as_bytes()),
            value: (k % 9 != 8).then_some(value.as_slice()),
            headers: if k % 4 == 1 { &headers } else { &[] },
        })
        .expect("push");
    }
    b.finish().expect("finish")
}

/// Builds the template log, closing it cleanly (`closed`) or dropping it as a crash would.
fn build(closed: bool) -> Template {
    let dir = scratch_dir();
    let mut log = Log::open(dir.path(), config()).expect("open");
    for i in 0..30 {
        log.append(&[template_batch(i)]).expect("append");
    }
    let end = log.end_offset();
    assert!(log.reader().segment_count() >= 3, "several segments");
    if closed {
        log.close().expect("close");
    } else {
        drop(log);
    }
    // The leader-epoch checkpoint is left out: damage picks a file by its index in this list,
    // and the committed corpus and regressions were made before the file existed. Without it,
    // each open rebuilds it from the batches (its own damage is tested in `tests/replica.rs`).
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir.path())
        .expect("read dir")
        .filter(|e| {
            e.as_ref()
                .map_or(true, |e| e.file_name() != "leader-epoch-checkpoint")
        })
        .map(|e| {
            let e = e.expect("dir entry");
            let name = e.file_name().into_string().expect("utf-8 name");
            (name, fs::read(e.path()).expect("read file"))
        })
        .collect();
    files.sort();
    let mut batches = Vec::new();
    let mut segments = Vec::new();
    let mut uncovered = Vec::new();
    for (name, contents) in &files {
        let mut ranges = Vec::new();
        if let Some(base) = name.strip_suffix(".log") {
            segments.push(base.parse::<i64>().expect("segment name"));
            for item in BatchIter::new(contents) {
                let (range, _) = item.expect("template batch");
                let at = range.start as u64;
                ranges.extend([at..at + 8, at + 12..at + 16]);
                batches.push(Bytes::copy_from_slice(&contents[range]));
            }
        }
        uncovered.push(ranges);
    }
    assert_eq!(batches.len(), 30);
    Template {
        files,
        batches,
        segments,
        uncovered,
        end,
    }
}

/// The template, built once per process: `[crashed, closed]`.
pub fn templates() -> &'static [Template; 2] {
    static TEMPLATES: OnceLock<[Template; 2]> = OnceLock::new();
    TEMPLATES.get_or_init(|| [build(false), build(true)])
}

/// What the damaged log is checked against.
#[derive(Debug)]
struct Expect<'a> {
    /// Every batch that was written, by base offset (a stored batch must be the one written at
    /// its offset), or `None` in weak mode: damage may have reached the fields the CRC does not
    /// cover, so only robustness is checked (no panic, typed errors, batches that pass their CRC).
    written: Option<BTreeMap<i64, Bytes>>,
    /// Base offsets of the segments.
    segments: &'a [i64],
}

impl<'a> Expect<'a> {
    /// Whether offsets may be missing in front of `offset`: only while finding S1 is open, and
    /// only in front of a segment (a read that skips to it, or one that returns nothing when
    /// the log ends there).
    fn gap_allowed_before(&self, offset: i64) -> bool {
        ALLOW_GAP_BEFORE_A_SEGMENT && self.segments.contains(&offset)
    }

    fn new(written: &[Bytes], segments: &'a [i64], weak: bool) -> Self {
        let by_offset = || {
            let base = |b: &Bytes| batch::validate(b).expect("written").base_offset;
            written.iter().map(|b| (base(b), b.clone())).collect()
        };
        Self {
            written: (!weak).then(by_offset),
            segments,
        }
    }

    /// Asserts that `batch`, read at `offset` (the offset asked for, or the previous batch's
    /// next offset), is the batch written there, and that no offset was skipped before it.
    fn check_batch(&self, batch: &Bytes, offset: i64) {
        let Some(written) = &self.written else {
            return;
        };
        let h = batch::validate(batch).expect("checked");
        let skipped_to_segment = h.base_offset > offset && self.gap_allowed_before(h.base_offset);
        assert!(
            h.base_offset <= offset && offset <= h.last_offset() || skipped_to_segment,
            "read at {offset} returned batch {}..={}: offsets missing",
            h.base_offset,
            h.last_offset()
        );
        let want = written.get(&h.base_offset);
        assert!(
            want == Some(batch),
            "the batch read at {} is not the one written there",
            h.base_offset
        );
    }
}

/// Reads the whole log from its start, in reads of a few batches: the batches read, and whether
/// the walk ended in an error rather than at the log end. Asserts that every read returns whole
/// batches that pass their CRC with offsets in order, and what [`Expect::check_batch`] asserts.
fn read_all(reader: &LogReader, expect: &Expect<'_>) -> (Vec<Bytes>, bool) {
    let end = reader.end_offset();
    let mut offset = reader.start_offset();
    let mut out = Vec::new();
    for _ in 0..1000 {
        match reader.read(offset, 700) {
            Ok(r) if r.data.is_empty() => {
                if expect.written.is_some() {
                    assert!(
                        offset == end || expect.gap_allowed_before(end),
                        "a read at {offset} below the log end {end} returned nothing"
                    );
                }
                return (out, false);
            }
            Ok(r) => {
                for b in split_checked(&r.data) {
                    expect.check_batch(&b, offset);
                    offset = batch::validate(&b).expect("checked").next_offset();
                    out.push(b);
                }
                assert_eq!(r.next_offset, offset);
            }
            Err(e) => {
                let out_of_range = matches!(e, StorageError::OffsetOutOfRange { .. });
                assert!(
                    e.is_corruption() || out_of_range && expect.written.is_none(),
                    "read at {offset} failed with {e:?}"
                );
                return (out, true);
            }
        }
    }
    panic!("runaway read loop at offset {offset}");
}

/// Splits a read's data into its batches, asserting that it is nothing but whole valid batches
/// (length, magic, CRC) in increasing offset order.
fn split_checked(data: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut iter = BatchIter::new(data);
    let mut next = i64::MIN;
    for item in iter.by_ref() {
        let (range, _) = item.expect("a read returns well-framed batches");
        let h = batch::validate(&data[range.clone()]).expect("a read returns valid batches");
        assert!(h.base_offset >= next, "offsets go backwards in a read");
        next = h.next_offset();
        out.push(data.slice(range));
    }
    assert_eq!(iter.position(), data.len(), "a read returns whole batches");
    assert!(!out.is_empty());
    out
}

/// `batch` as the log stores it at `base_offset`, written in `leader_epoch`.
fn stored_at(batch: &Bytes, base_offset: i64, leader_epoch: i32) -> Bytes {
    let mut b = BytesMut::from(&batch[..]);
    batch::set_base_offset(&mut b, base_offset).expect("a batch has a base offset");
    // The log stamps its leader epoch too (partitionLeaderEpoch, bytes 12..16).
    b[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
    b.freeze()
}

/// (offset, timestamp) of every record of `batches`, in offset order.
fn record_times(batches: &[Bytes]) -> Vec<(i64, i64)> {
    batches
        .iter()
        .flat_map(|b| Records::new(b.clone()).expect("stored batch"))
        .map(|r| r.expect("stored record"))
        .map(|r| (r.offset, r.timestamp))
        .collect()
}

/// Looks up offsets around every batch of `read` (what a walk read back) and times around
/// every record: no panic and only typed errors; outside weak mode, answers within the log's
/// bounds that are batches written there, and when `exact_times` (the walk read the whole log
/// without an error, and the time indexes can be trusted) the right answer to every lookup by
/// time.
fn lookups(reader: &LogReader, expect: &Expect<'_>, read: &[Bytes], exact_times: bool) {
    let (start, end) = (reader.start_offset(), reader.end_offset());
    let full = expect.written.is_some();
    let mut offsets = vec![i64::MIN, -1, 0, end - 1, end, end + 1, i64::MAX];
    let mut times = vec![i64::MIN, -1, 0, i64::MAX];
    for b in read {
        let h = batch::validate(b).expect("stored");
        offsets.extend([h.base_offset, h.last_offset(), h.next_offset()]);
        times.extend([h.base_timestamp.saturating_sub(1), h.base_timestamp]);
        times.extend([h.max_timestamp, h.max_timestamp.saturating_add(1)]);
    }
    for offset in offsets {
        match reader.read(offset, 1) {
            Ok(r) if r.data.is_empty() => assert!(
                !full || offset == end || expect.gap_allowed_before(end),
                "a read at {offset} below the log end {end} returned nothing"
            ),
            Ok(r) => {
                let got = split_checked(&r.data);
                if full {
                    assert!(start <= offset && offset < end, "data read at {offset}");
                    expect.check_batch(&got[0], offset);
                }
            }
            Err(StorageError::OffsetOutOfRange { .. }) => assert!(
                !full || offset < start || offset > end,
                "{offset} in [{start}, {end}] is out of range"
            ),
            Err(e) => assert!(e.is_corruption(), "read at {offset} failed with {e:?}"),
        }
    }
    let records = if full && exact_times {
        record_times(read)
    } else {
        Vec::new()
    };
    for ts in times {
        match reader.offset_for_time(ts) {
            Ok(found) => {
                if let Some(o) = found.filter(|_| full) {
                    assert!(
                        start <= o && o < end,
                        "time {ts} found {o} outside [{start}, {end})"
                    );
                }
                if full && exact_times {
                    let want = records.iter().find(|(_, t)| *t >= ts).map(|(o, _)| *o);
                    assert_eq!(found, want, "lookup of time {ts}");
                }
            }
            Err(e) => assert!(e.is_corruption(), "lookup of time {ts} failed with {e:?}"),
        }
    }
}

/// One damage to the log's files, decoded from the input.
#[derive(Debug)]
enum Damage<'a> {
    /// Overwrite bytes at a position (extending the file if they run past its end).
    Overwrite(usize, u16, &'a [u8]),
    /// XOR one byte.
    Flip(usize, u16, u8),
    /// Cut the file at a position.
    Truncate(usize, u16),
    /// Append bytes.
    Append(usize, &'a [u8]),
}

/// Decodes the damage list: ops of 4 bytes `[kind, file, position (u16 big-endian)]`; the low
/// two bits of `kind` pick the damage, and for the byte-carrying ones `(kind >> 2) % 16 + 1`
/// bytes follow.
fn damages(mut input: &[u8]) -> Vec<Damage<'_>> {
    let mut out = Vec::new();
    while let Some(([kind, file, hi, lo], rest)) = input.split_first_chunk::<4>() {
        let (file, pos) = (usize::from(*file), u16::from_be_bytes([*hi, *lo]));
        let n = match kind & 3 {
            0 | 3 => usize::from(kind >> 2) % 16 + 1,
            1 => 1,
            _ => 0,
        };
        let (bytes, rest) = rest.split_at(n.min(rest.len()));
        input = rest;
        out.push(match kind & 3 {
            0 => Damage::Overwrite(file, pos, bytes),
            1 => Damage::Flip(file, pos, bytes.first().copied().unwrap_or(0xff) | 1),
            2 => Damage::Truncate(file, pos),
            _ => Damage::Append(file, bytes),
        });
    }
    out
}

/// Applies `damage` to the files of `dir`; files are picked by index into the template's, and
/// positions wrap at the file's length (+1 for a cut, so that cutting nothing is possible).
/// Unless `weak`, overwrites and flips leave the template's uncovered byte ranges alone. Returns
/// the name of the file damaged.
fn apply<'t>(dir: &Path, template: &'t Template, damage: &Damage<'_>, weak: bool) -> &'t str {
    let (Damage::Overwrite(file, ..)
    | Damage::Flip(file, ..)
    | Damage::Truncate(file, ..)
    | Damage::Append(file, ..)) = damage;
    let file = file % template.files.len();
    let path = dir.join(&template.files[file].0);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open file to damage");
    let len = f.metadata().expect("stat").len();
    let at = |pos: u16, modulo: u64| u64::from(pos) % modulo.max(1);
    let may_change = |pos: u64| weak || !template.uncovered[file].iter().any(|r| r.contains(&pos));
    match damage {
        Damage::Overwrite(_, pos, bytes) => {
            for (p, b) in (at(*pos, len)..).zip(bytes.iter()) {
                if may_change(p) {
                    f.write_all_at(&[*b], p).expect("write");
                }
            }
        }
        Damage::Flip(_, pos, mask) => {
            let p = at(*pos, len);
            if len > 0 && may_change(p) {
                let mut b = [0u8];
                f.read_exact_at(&mut b, p).expect("read");
                f.write_all_at(&[b[0] ^ mask], p).expect("write");
            }
        }
        Damage::Truncate(_, pos) => f.set_len(at(*pos, len + 1)).expect("truncate"),
        Damage::Append(_, bytes) => f.write_all_at(bytes, len).expect("append"),
    }
    &template.files[file].0
}

/// Fuzz target `segment_recovery`. Input: a flags byte, then damage ops (see [`damages`]).
/// Flags: bit 0 starts from the cleanly closed log rather than the crashed one; bit 1 closes the
/// log cleanly before the second reopen rather than dropping it; bits 2-3 are the records in the
/// appended batch less one; bit 4 is weak mode (damage may reach the base-offset and
/// leader-epoch fields, which no CRC covers: known finding S2).
///
/// Asserts, in every mode: nothing panics; the damaged log opens, and opens again after the
/// append; every read returns whole batches that pass their CRC, in offset order, or a typed
/// error. Outside weak mode also: the end offset is at most what was written; reading from the
/// start returns the batches written, byte for byte, at their offsets and with no offset skipped
/// (but see [`ALLOW_GAP_BEFORE_A_SEGMENT`]), ending at the log end or in a `Corrupt` error;
/// lookups by offset return the batch written there, lookups by time the right answer when
/// nothing was found damaged (but see [`ALLOW_WRONG_TIME_LOOKUP_AFTER_TIMEINDEX_DAMAGE`]); the
/// append lands at the end offset and reads back (or, if the first read found damage, may be
/// reported as corrupt); and after a second reopen the log reads back as the first read plus
/// the append (a prefix of that if the first read hit damage).
pub fn segment_recovery(data: &[u8]) {
    let Some((&flags, ops)) = data.split_first() else {
        return;
    };
    let weak = flags & 0x10 != 0;
    let template = &templates()[usize::from(flags & 1)];
    let dir = scratch_dir();
    for (name, contents) in &template.files {
        fs::write(dir.path().join(name), contents).expect("write template file");
    }
    let mut time_index_damaged = false;
    for damage in damages(ops) {
        let file = apply(dir.path(), template, &damage, weak);
        time_index_damaged |= file.ends_with(".timeindex");
    }
    let trust_times = !(ALLOW_WRONG_TIME_LOOKUP_AFTER_TIMEINDEX_DAMAGE && time_index_damaged);
    let expect = Expect::new(&template.batches, &template.segments, weak);

    // First reopen: recovery, then read everything back.
    let mut log = Log::open(dir.path(), config()).expect("a damaged log opens");
    let end1 = log.end_offset();
    assert!(
        weak || end1 <= template.end,
        "end offset {end1} > {}",
        template.end
    );
    let reader = log.reader();
    assert_eq!(reader.end_offset(), end1);
    let (read1, damaged1) = read_all(&reader, &expect);
    lookups(&reader, &expect, &read1, !damaged1 && trust_times);

    // Append one batch at the end.
    let mut builder = BatchBuilder::default();
    for i in 0..=(flags >> 2) % 4 {
        let value = [i; 30];
        builder
            .push(&RecordRef {
                timestamp: 5_000 + i64::from(i),
                key: Some(b"appended"),
                value: Some(&value),
                headers: &[],
            })
            .expect("push");
    }
    let appended = builder.finish().expect("finish");
    let info = match log.append(std::slice::from_ref(&appended)) {
        Ok(info) => info,
        Err(e) => {
            assert!(weak, "append after recovery failed: {e:?}");
            drop(log);
            let log = Log::open(dir.path(), config()).expect("reopen");
            let (read2, damaged2) = read_all(&log.reader(), &expect);
            lookups(&log.reader(), &expect, &read2, !damaged2 && trust_times);
            return;
        }
    };
    assert_eq!(info.base_offset, end1);
    let appended = stored_at(&appended, end1, log.leader_epoch());
    if !weak {
        // Damage found by the first read may shadow the append: a damaged batch in front of
        // it whose header claims its offsets is reported instead (as it must be: the reader
        // cannot tell which header is right).
        match reader.read(end1, 1) {
            Ok(r) => assert_eq!(r.data, appended),
            Err(e) => assert!(damaged1 && e.is_corruption(), "read the append: {e:?}"),
        }
    }

    // Second reopen: everything the first read saw, and the append, unless damage cut them off.
    if flags & 2 != 0 {
        log.close().expect("close");
    } else {
        drop(log);
    }
    let log = Log::open(dir.path(), config()).expect("reopen");
    let end2 = log.end_offset();
    let mut written: Vec<Bytes> = template
        .batches
        .iter()
        .filter(|b| batch::validate(b).is_ok_and(|h| h.base_offset < end1))
        .cloned()
        .collect();
    written.push(appended.clone());
    let expect = Expect::new(&written, &template.segments, weak);
    let (read2, damaged2) = read_all(&log.reader(), &expect);
    lookups(&log.reader(), &expect, &read2, !damaged2 && trust_times);
    if weak {
        return;
    }
    assert!(
        end2 <= info.next_offset,
        "end offset {end2} after the append at {end1}"
    );
    let mut want = read1;
    want.push(appended);
    assert!(
        read2.len() <= want.len() && read2[..] == want[..read2.len()],
        "second read differs"
    );
    if !damaged1 {
        assert!(!damaged2, "damage appeared between two reopens");
        assert_eq!(end2, info.next_offset, "the append was lost");
        assert_eq!(read2.len(), want.len(), "batches lost between two reopens");
    }
}

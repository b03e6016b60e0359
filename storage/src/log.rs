//! A partition log: the ordered segments of one directory, its single writer ([`Log`]) and any
//! number of readers ([`LogReader`]).
//!
//! The writer owns the active segment's files and is the only code that changes the log: append,
//! roll, flush, retention, compaction and close all take `&mut Log`. Readers share an
//! `Arc<Shared>`: a copy-on-write list of segments (swapped under a lock held only for the swap)
//! and atomics for the log-start, log-end and durable offsets. A reader never blocks the writer and
//! never sees a batch before all of its bytes were written, because the writer publishes lengths
//! and offsets only after the write returned.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use strom_protocol::batch::{self, BatchBuilder, BatchHeader, RecordRef};

use crate::config::{Clock, LogConfig, SystemClock};
use crate::epochs::{EpochCache, EpochEntry};
use crate::error::{Result, StorageError};
use crate::index::{self, OFFSET_ENTRY, TIME_ENTRY};
use crate::io::{self, IoFaults, sync_dir, write_atomic};
use crate::recovery_point;
use crate::replica::Stamp;
use crate::segment::{
    self, ActiveFiles, INDEX_EXT, IndexBuilder, LOG_EXT, Planned, Segment, TIME_EXT,
};

/// Closed segments whose files wait for the next flush before the oldest is fsynced at a roll.
const MAX_UNFLUSHED_SEGMENTS: usize = 4;
/// The page size early write-back rounds down to (4 KiB: the smallest in use; on systems with
/// larger pages the partial last page is simply written early too).
const PAGE: u64 = 4096;

/// Present in a log directory once compaction has rewritten a segment: from then on a closed
/// segment may end before the next one starts (compaction removed its last records).
pub(crate) const COMPACTED_MARKER: &str = ".compacted";

/// Name of the clean-shutdown marker inside a log directory.
pub(crate) const CLEAN_MARKER: &str = ".clean-shutdown";
const MARKER_MAGIC: &[u8; 8] = b"STRMCLN1";
const MARKER_LEN: usize = 8 + 8 + 8 + 8 + 8 + 4;

/// A batch that passed [`batch::validate_produced`]: length, magic, CRC and record count. The
/// broker validates on the connection task and hands these to the partition writer, which then
/// appends them without checking the CRC a second time.
#[derive(Debug, Clone)]
pub struct ValidBatch {
    pub(crate) bytes: Bytes,
    pub(crate) header: BatchHeader,
}

impl ValidBatch {
    /// Validates `bytes` as one freshly produced RecordBatch v2.
    pub fn new(bytes: Bytes) -> Result<Self, batch::BatchError> {
        let header = batch::validate_produced(&bytes)?;
        Ok(Self { bytes, header })
    }

    /// The batch's bytes as given (base offset not yet assigned).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The batch's header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// Records in the batch.
    pub fn record_count(&self) -> i64 {
        i64::from(self.header.last_offset_delta) + 1
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset given to the first record of the first batch.
    pub base_offset: i64,
    /// Offset after the last record: the new log-end offset.
    pub next_offset: i64,
    /// True when the append was fsynced before this returned (per the flush policy).
    pub durable: bool,
}

/// Batches read from a log, plus the log's bounds at the time of the read.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// Whole stored batches (possibly empty), as a zero-copy slice of a segment's map.
    pub data: Bytes,
    /// Base offset of the first batch returned (at or before the offset asked for), or the
    /// offset asked for if nothing was returned.
    pub first_offset: i64,
    /// Offset to read next.
    pub next_offset: i64,
    /// First offset still stored.
    pub log_start: i64,
    /// Next offset to be written.
    pub log_end: i64,
}

/// What a retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Bytes of `.log` deleted.
    pub bytes_deleted: u64,
    /// The log-start offset afterwards.
    pub log_start: i64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub segments: RwLock<Arc<Vec<Arc<Segment>>>>,
    pub start_offset: AtomicI64,
    pub end_offset: AtomicI64,
    pub durable_offset: AtomicI64,
    /// Compaction has rewritten segments: closed segments may have gaps in their offsets.
    /// Until then every segment's batches follow each other with no gap, which reads check
    /// (a changed base offset, which no CRC covers, is then found).
    pub compacted: AtomicBool,
}

impl Shared {
    pub fn snapshot(&self) -> Arc<Vec<Arc<Segment>>> {
        match self.segments.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn replace(&self, segments: Vec<Arc<Segment>>) {
        let start = segments.first().map(|s| s.base_offset);
        let mut g = match self.segments.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Arc::new(segments);
        if let Some(start) = start {
            self.start_offset.fetch_max(start, Ordering::AcqRel);
        }
    }
}

/// A read handle on a log: cheap to clone, usable from any thread while the writer appends.
#[derive(Debug, Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl LogReader {
    /// First offset still stored.
    pub fn start_offset(&self) -> i64 {
        self.shared.start_offset.load(Ordering::Acquire)
    }

    /// Next offset to be written.
    pub fn end_offset(&self) -> i64 {
        self.shared.end_offset.load(Ordering::Acquire)
    }

    /// Offset up to which (exclusive) the data is known to be fsynced.
    pub fn durable_offset(&self) -> i64 {
        self.shared.durable_offset.load(Ordering::Acquire)
    }

    /// Total bytes of the log's `.log` files.
    pub fn size_bytes(&self) -> u64 {
        self.shared.snapshot().iter().map(|s| s.len()).sum()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.shared.snapshot().len()
    }

    /// Reads whole stored batches from the one holding `offset`, up to `max_bytes` (at least one
    /// batch if any is there). Reading at the log end returns no data; reading outside
    /// [start, end] is [`StorageError::OffsetOutOfRange`]. Damaged stored bytes are
    /// [`StorageError::Corrupt`] and are never returned.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult> {
        self.read_until(offset, i64::MAX, max_bytes)
    }

    /// [`LogReader::read`], stopping before the first batch that starts after `last` (the
    /// batch holding `offset` is always returned): a reader that wants a few records does not
    /// pay for checking `max_bytes` of batches it will not use.
    pub fn read_until(&self, offset: i64, last: i64, max_bytes: usize) -> Result<ReadResult> {
        let end = self.end_offset();
        let start = self.start_offset();
        let out_of_range = |start| StorageError::OffsetOutOfRange { offset, start, end };
        if offset < start || offset > end {
            return Err(out_of_range(start));
        }
        let empty = |log_start| ReadResult {
            data: Bytes::new(),
            first_offset: offset,
            next_offset: offset,
            log_start,
            log_end: end,
        };
        if offset == end {
            return Ok(empty(start));
        }
        // Nothing past the end read above: the writer may have put a batch into the segment
        // (where this read sees it) before it moved the end, and a reader handed that batch
        // would ask next for an offset beyond the end it can see: out of range.
        let last = last.min(end - 1);
        let segments = self.shared.snapshot();
        match segments.first() {
            Some(first) if first.base_offset <= offset => {}
            // Retention removed the segment between the bounds check and the snapshot.
            _ => return Err(out_of_range(self.start_offset())),
        }
        let mut i = segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        while let Some(seg) = segments.get(i) {
            // The active segment is never compacted.
            let contiguous = !compacted || i + 1 == segments.len();
            if let Some(r) = seg.read(offset, last, max_bytes, contiguous)? {
                return Ok(ReadResult {
                    data: r.data,
                    first_offset: r.first_offset,
                    next_offset: r.next_offset,
                    log_start: start,
                    log_end: end.max(r.next_offset),
                });
            }
            i += 1;
        }
        Ok(empty(start))
    }

    /// The header of the stored batch holding `offset` (or the first one after it, past a
    /// compacted gap), its CRC not checked: a cheap look at a batch's timestamps or size.
    /// `None` at or past the end; [`StorageError::OffsetOutOfRange`] below the start.
    pub fn batch_header(&self, offset: i64) -> Result<Option<BatchHeader>> {
        let end = self.end_offset();
        let start = self.start_offset();
        if offset < start {
            return Err(StorageError::OffsetOutOfRange { offset, start, end });
        }
        if offset >= end {
            return Ok(None);
        }
        let segments = self.shared.snapshot();
        let i = segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        for (j, seg) in segments.iter().enumerate().skip(i) {
            let contiguous = !compacted || j + 1 == segments.len();
            if let Some(h) = seg.batch_header(offset, contiguous)? {
                return Ok(Some(h));
            }
        }
        Ok(None)
    }

    /// The largest record timestamp in the log and the first offset that carries it, or `None`
    /// when the log holds no record (Kafka's ListOffsets with `MAX_TIMESTAMP`).
    pub fn max_timestamp(&self) -> Result<Option<(i64, i64)>> {
        let max = self
            .shared
            .snapshot()
            .iter()
            .map(|s| s.max_timestamp())
            .max()
            .unwrap_or(-1);
        if max < 0 {
            return Ok(None);
        }
        Ok(self.offset_for_time(max)?.map(|o| (o, max)))
    }

    /// The first offset whose record timestamp is >= `timestamp`, or `None` if every record is
    /// older (Kafka's ListOffsets by time).
    pub fn offset_for_time(&self, timestamp: i64) -> Result<Option<i64>> {
        Ok(self.record_for_time(timestamp)?.map(|(o, _)| o))
    }

    /// As [`LogReader::offset_for_time`], with the timestamp of the record found (for a record
    /// inside a compressed batch, which is not decompressed here, the batch's first timestamp
    /// or the time asked for, whichever is later).
    pub fn record_for_time(&self, timestamp: i64) -> Result<Option<(i64, i64)>> {
        let segments = self.shared.snapshot();
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        for (i, seg) in segments.iter().enumerate() {
            let contiguous = !compacted || i + 1 == segments.len();
            if let Some((o, ts)) = seg.find_time(timestamp, contiguous)? {
                return Ok(Some((o.max(self.start_offset()), ts)));
            }
        }
        Ok(None)
    }
}

/// Unflushed work, for the flush policy.
#[derive(Debug, Default)]
struct FlushState {
    messages: u64,
    bytes: u64,
    oldest_ms: Option<i64>,
    /// Files of segments rolled since the last flush; fsynced by the next one.
    pending: Vec<File>,
    /// Per segment in `pending` (three files each), the offset it ends at and the log's
    /// truncation count when it was rolled.
    pending_ends: Vec<(i64, u64)>,
    /// A flush taken by [`Log::start_flush`] has not been finished yet.
    in_flight: bool,
    dir_dirty: bool,
    /// Ends of rolled segments whose early write-back is still to start.
    writeback: Vec<WritebackRange>,
}

/// Bytes of a segment's `.log` for early write-back: `len` bytes from `from`.
#[derive(Debug)]
struct WritebackRange {
    /// The segment's base offset: retention drops the ranges of segments it deletes.
    base_offset: i64,
    file: File,
    from: u64,
    len: u64,
}

/// Rolled segments' tails kept for early write-back when nobody starts it (at most this many).
const MAX_WRITEBACK_TAILS: usize = 4;

/// One partition's log and its only writer. See the module docs.
#[derive(Debug)]
pub struct Log {
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) active: ActiveFiles,
    flush: FlushState,
    poisoned: Option<String>,
    /// A clean-shutdown marker is on disk and still true.
    marker_present: bool,
    /// Faults to inject into writes, fsyncs and creations (tests only).
    pub(crate) faults: Option<IoFaults>,
    /// Which leader epoch wrote which offsets (see `epochs.rs`).
    pub(crate) epochs: EpochCache,
    /// The epoch the leader append paths stamp on batches (see `replica.rs`).
    pub(crate) leader_epoch: i32,
    /// Truncations so far: a flush taken before one does not move the durable offset.
    pub(crate) truncations: u64,
    /// The recovery point as last written (see `recovery_point.rs`).
    pub(crate) recovery_point: i64,
}

/// A flush taken out of a log by [`Log::start_flush`]: the files to fsync and the offset that
/// becomes durable when they are.
#[derive(Debug)]
pub struct PendingFlush {
    files: Vec<(File, PathBuf)>,
    dir: Option<PathBuf>,
    end: i64,
    faults: Option<IoFaults>,
    /// The log's truncation count when the flush was taken.
    truncations: u64,
}

impl PendingFlush {
    /// The offset up to which (exclusive) the log is durable once this flush succeeds.
    pub fn end(&self) -> i64 {
        self.end
    }

    /// fsyncs the files, then the directory if files were created or deleted. Blocks; needs
    /// no access to the log.
    pub fn run(&self) -> Result<()> {
        let faults = self.faults.as_ref();
        for (f, path) in &self.files {
            io::sync_data(faults, f, path)?;
        }
        match &self.dir {
            Some(dir) => sync_dir(dir, faults),
            None => Ok(()),
        }
    }
}

/// Early write-back taken out of a log by [`Log::start_writeback`]: ranges of segment files the
/// kernel is asked to start writing to disk.
#[derive(Debug)]
pub struct PendingWriteback {
    ranges: Vec<WritebackRange>,
    dir: PathBuf,
}

impl PendingWriteback {
    /// Bytes it covers.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }

    /// Starts the write-back. May block while the device's queue is full, so run it off the
    /// threads that serve requests; needs no access to the log. Errors are only logged: this
    /// makes nothing durable, and the next fsync reports any write error.
    pub fn run(&self) {
        for r in &self.ranges {
            if let Err(e) = io::start_writeback(&r.file, r.from, r.len) {
                tracing::debug!(dir = %self.dir.display(), error = %e, "could not start write-back");
            }
        }
    }
}

/// What a log takes from its surroundings besides its settings.
#[derive(Debug, Clone)]
pub struct LogEnv {
    /// Where the log reads time from.
    pub clock: Arc<dyn Clock>,
    /// I/O faults to inject (tests only; see the `io` module).
    pub faults: Option<IoFaults>,
}

impl Default for LogEnv {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            faults: None,
        }
    }
}

/// A log's state as read back from its directory.
struct Loaded {
    segments: Vec<Arc<Segment>>,
    active: ActiveFiles,
    marker_present: bool,
    created: bool,
    /// The active segment, trusted after a clean close, fails its check past its last index
    /// entry: appends must not go after the damage (finding S4 of docs/fuzzing.md).
    damaged_tail: bool,
    /// Compaction has rewritten segments of this log (its marker file is there).
    compacted: bool,
    /// The recovery point on disk after the load.
    recovery_point: i64,
}

pub(crate) struct Marker {
    end_offset: i64,
    active_base: i64,
    active_len: u64,
    max_timestamp: i64,
}

/// Reads the clean-shutdown marker. It stays in place while the log is unchanged (so opening
/// an idle log costs no fsync); the first change removes it durably (see `Log::mark_dirty`).
/// Returns whether a marker file exists, and its contents if they check out.
fn read_marker(dir: &Path) -> Result<(bool, Option<Marker>)> {
    let path = dir.join(CLEAN_MARKER);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((false, None)),
        Err(e) => return Err(StorageError::io("read", path)(e)),
    };
    Ok((true, parse_marker(&path, &bytes)))
}

fn parse_marker(path: &Path, bytes: &[u8]) -> Option<Marker> {
    if bytes.len() != MARKER_LEN || &bytes[..8] != MARKER_MAGIC {
        tracing::warn!(path = %path.display(), "unreadable clean-shutdown marker; recovering");
        return None;
    }
    let crc = u32::from_be_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]);
    if crc32fast::hash(&bytes[..40]) != crc {
        tracing::warn!(path = %path.display(), "clean-shutdown marker fails its checksum; recovering");
        return None;
    }
    let i64_at = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&bytes[at..at + 8]);
        i64::from_be_bytes(a)
    };
    Some(Marker {
        end_offset: i64_at(8),
        active_base: i64_at(16),
        active_len: i64_at(24) as u64,
        max_timestamp: i64_at(32),
    })
}

pub(crate) fn file_len(f: &File, path: &Path) -> Result<u64> {
    f.metadata()
        .map(|m| m.len())
        .map_err(StorageError::io("stat", path))
}

/// Segments found in a directory, by base offset.
fn list_segments(dir: &Path) -> Result<Vec<i64>> {
    let mut logs = Vec::new();
    let mut swaps = Vec::new();
    let entries = fs::read_dir(dir).map_err(StorageError::io("read dir", dir))?;
    for entry in entries {
        let entry = entry.map_err(StorageError::io("read dir", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((base, rest)) = segment::parse_file_name(name) else {
            continue;
        };
        match rest {
            LOG_EXT => logs.push(base),
            INDEX_EXT | TIME_EXT => {}
            r if r.ends_with(".cleaned") => {
                // An unfinished compaction: the originals are intact.
                let p = entry.path();
                fs::remove_file(&p).map_err(StorageError::io("remove", &p))?;
            }
            r if r.ends_with(".swap") => swaps.push((base, r.to_string())),
            _ => {
                tracing::warn!(file = %entry.path().display(), "ignoring unknown file in log directory")
            }
        }
    }
    crate::compaction::finish_swaps(dir, &mut logs, &swaps)?;
    logs.sort_unstable();
    logs.dedup();
    // Index files whose log is gone are leftovers of a deletion that was cut short.
    for entry in fs::read_dir(dir).map_err(StorageError::io("read dir", dir))? {
        let entry = entry.map_err(StorageError::io("read dir", dir))?;
        let name = entry.file_name();
        if let Some((base, rest)) = name.to_str().and_then(segment::parse_file_name)
            && (rest == INDEX_EXT || rest == TIME_EXT)
            && logs.binary_search(&base).is_err()
        {
            let p = entry.path();
            fs::remove_file(&p).map_err(StorageError::io("remove", &p))?;
        }
    }
    Ok(logs)
}

/// The offset after the last record a closed segment held when it was sealed, from the last
/// entry of its time index (every seal writes one), if the file has a whole entry to read.
fn sealed_end(dir: &Path, base: i64) -> Option<i64> {
    let f = File::open(segment::file_path(dir, base, TIME_EXT)).ok()?;
    let len = f.metadata().ok()?.len();
    if len < TIME_ENTRY as u64 || len % TIME_ENTRY as u64 != 0 {
        return None;
    }
    let mut e = [0u8; TIME_ENTRY];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut e, len - TIME_ENTRY as u64).ok()?;
    let (_, rel) = index::checked_time_entry(&e, 0)?;
    base.checked_add(i64::from(rel))?.checked_add(1)
}

/// Opens a closed segment read-only, checking (cheaply) that its indexes can be trusted and
/// rebuilding them from the log when they cannot.
pub(crate) fn open_sealed_segment(
    dir: &Path,
    base: i64,
    config: &LogConfig,
    rebuild: bool,
) -> Result<Arc<Segment>> {
    let log_path = segment::file_path(dir, base, LOG_EXT);
    let log = File::open(&log_path).map_err(StorageError::io("open", &log_path))?;
    let log_len = file_len(&log, &log_path)?;
    let index_path = segment::file_path(dir, base, INDEX_EXT);
    let time_path = segment::file_path(dir, base, TIME_EXT);
    let index_missing = !index_path.exists() || !time_path.exists();
    let (_, index, time) = segment::open_files(dir, base, false, None)?;
    let idx_len = file_len(&index, &index_path)?;
    let time_len = file_len(&time, &time_path)?;
    if !rebuild
        && !index_missing
        && idx_len % OFFSET_ENTRY as u64 == 0
        && time_len % TIME_ENTRY as u64 == 0
    {
        let seg = Segment::map(
            dir,
            base,
            &log,
            log_len,
            log_len,
            &index,
            (idx_len / OFFSET_ENTRY as u64) as usize,
            &time,
            (time_len / TIME_ENTRY as u64) as usize,
            0,
            -1,
        )?;
        let sane = index_looks_sane(&seg, &log, log_len);
        let (offset_ok, time_ok) = (sane, sane);
        if let Some((ts, _)) = seg.last_time_entry().filter(|_| sane) {
            seg.publish(log_len, seg.index_entry_count(), seg.time_entry_count(), ts);
        }
        if offset_ok && time_ok {
            return Ok(Arc::new(seg));
        }
    }
    tracing::warn!(segment = %log_path.display(), "index missing or damaged; rebuilding from the log");
    rebuild_indexes(dir, base, &log, log_len, &index, &time, config)?;
    drop((index, time));
    let (_, index, time) = segment::open_files(dir, base, false, None)?;
    let idx_len = file_len(&index, &index_path)?;
    let time_len = file_len(&time, &time_path)?;
    let seg = Segment::map(
        dir,
        base,
        &log,
        log_len,
        log_len,
        &index,
        (idx_len / OFFSET_ENTRY as u64) as usize,
        &time,
        (time_len / TIME_ENTRY as u64) as usize,
        0,
        -1,
    )?;
    if let Some((ts, _)) = seg.last_time_entry() {
        seg.publish(log_len, seg.index_entry_count(), seg.time_entry_count(), ts);
    }
    Ok(Arc::new(seg))
}

/// The cheap check that decides whether a closed or cleanly closed segment's indexes are
/// trusted without reading them whole: first and last entries ordered, the last offset entry
/// pointing at a batch with its offset, and a time entry present for a non-empty log (every
/// sealed segment ends with one). A zero-filled, truncated or misaligned index fails it.
fn index_looks_sane(seg: &Segment, log: &File, log_len: u64) -> bool {
    let offsets_ok = match (seg.first_offset_entry(), seg.last_offset_entry()) {
        (Some(first), Some((rel, pos))) => {
            (seg.index_entry_count() == 1 || (rel > first.0 && pos > first.1))
                && u64::from(pos) < log_len
                && seg
                    .header_from_file(log, u64::from(pos), log_len)
                    .map(|h| h.base_offset)
                    == Some(seg.base_offset + i64::from(rel))
        }
        _ => true,
    };
    let times_ok = match (seg.first_time_entry(), seg.last_time_entry()) {
        (Some(first), Some(last)) => {
            seg.time_entry_count() == 1 || (last.0 > first.0 && last.1 >= first.1)
        }
        _ => log_len == 0,
    };
    offsets_ok && times_ok
}

/// Rewrites both indexes of a segment from its log. A bad batch stops the indexing there; the
/// log itself is left as it is (reads of the damaged part report corruption).
fn rebuild_indexes(
    dir: &Path,
    base: i64,
    log: &File,
    log_len: u64,
    index: &File,
    time: &File,
    config: &LogConfig,
) -> Result<()> {
    let log_path = segment::file_path(dir, base, LOG_EXT);
    let map = crate::mmap::map(
        log,
        segment::usize_of(log_len),
        crate::mmap::Access::Sequential,
    )
    .map_err(StorageError::io("mmap", &log_path))?;
    let mut builder = IndexBuilder::new(config.index_interval_bytes, -1, -1, 0);
    // A closed segment may have been compacted: gaps between its batches are allowed here.
    let scan = segment::scan(&map, 0, base, base, false, &mut builder);
    if let Some(reason) = &scan.stopped {
        tracing::error!(segment = %log_path.display(), %reason, "segment is damaged; indexed up to the damage");
    }
    if scan.next_offset > base {
        builder.push_time_entry(base, scan.next_offset - 1);
    }
    let index_path = segment::file_path(dir, base, INDEX_EXT);
    let time_path = segment::file_path(dir, base, TIME_EXT);
    index
        .set_len(0)
        .and_then(|()| std::os::unix::fs::FileExt::write_all_at(index, &builder.offset_buf, 0))
        .map_err(StorageError::io("write", &index_path))?;
    time.set_len(0)
        .and_then(|()| std::os::unix::fs::FileExt::write_all_at(time, &builder.time_buf, 0))
        .map_err(StorageError::io("write", &time_path))?;
    Ok(())
}

impl Log {
    /// Opens the log in `dir` (creating it if needed) with the system clock.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Self> {
        Self::open_with_clock(dir, config, Arc::new(SystemClock))
    }

    /// Opens the log in `dir`, reading time from `clock`.
    pub fn open_with_clock(
        dir: impl AsRef<Path>,
        config: LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        Self::open_in(
            dir,
            config,
            LogEnv {
                clock,
                faults: None,
            },
        )
    }

    /// Opens the log in `dir` with the clock and I/O seam of `env`.
    ///
    /// After a clean [`Log::close`] nothing is scanned. Otherwise the last segment is checked
    /// from its last good index entry: the first batch with a bad length, magic, CRC or offset
    /// and everything after it is cut off, and the index entries it covers are rebuilt. Missing or
    /// damaged indexes of older segments are rebuilt from their logs. Then every segment is
    /// fsynced, so that the durable offset vouches only for what is on disk.
    pub fn open_in(dir: impl AsRef<Path>, config: LogConfig, env: LogEnv) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let loaded = load(&dir, &config, env.faults.as_ref())?;
        let start = start_of(&dir, &loaded)?;
        let end = loaded.active.next_offset;
        let damaged_tail = loaded.damaged_tail;
        let unclean = !loaded.marker_present;
        let epochs = EpochCache::open(
            &dir,
            &loaded.segments,
            start,
            end,
            unclean,
            env.faults.as_ref(),
        )?;
        let shared = Arc::new(Shared {
            segments: RwLock::new(Arc::new(loaded.segments)),
            start_offset: AtomicI64::new(start),
            end_offset: AtomicI64::new(end),
            durable_offset: AtomicI64::new(end),
            compacted: AtomicBool::new(loaded.compacted),
        });
        tracing::debug!(dir = %dir.display(), start, end, "log opened");
        Ok(Self {
            dir,
            config,
            clock: env.clock,
            shared,
            active: loaded.active,
            flush: FlushState {
                dir_dirty: loaded.created,
                ..FlushState::default()
            },
            poisoned: None,
            marker_present: loaded.marker_present,
            faults: env.faults,
            // Until told otherwise, go on with the newest epoch the log holds (0 for a log
            // that holds none: a single node never changes leader).
            leader_epoch: epochs.latest_epoch().unwrap_or(0).max(0),
            epochs,
            truncations: 0,
            recovery_point: loaded.recovery_point,
        })
        .and_then(|mut log: Log| {
            if damaged_tail {
                log.roll()?;
            }
            Ok(log)
        })
    }

    /// The reason appends are refused, if an earlier failure left the log's state unknown.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// Reloads the log from its directory after a failure, as an open after a crash would:
    /// the active segment is scanned and its damaged or torn tail cut off, and everything is
    /// fsynced again before the durable offset moves. Readers keep their handles and see the
    /// recovered log. On success the log accepts appends again; on failure it stays poisoned.
    pub fn recover(&mut self) -> Result<()> {
        let marker = self.dir.join(CLEAN_MARKER);
        match fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("remove", marker)(e)),
        }
        let loaded = load(&self.dir, &self.config, self.faults.as_ref())?;
        let start = start_of(&self.dir, &loaded)?;
        let end = loaded.active.next_offset;
        let faults = self.faults.as_ref();
        self.epochs = EpochCache::open(&self.dir, &loaded.segments, start, end, true, faults)?;
        {
            let mut g = match self.shared.segments.write() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            *g = Arc::new(loaded.segments);
            self.shared.start_offset.store(start, Ordering::Release);
            self.shared.end_offset.store(end, Ordering::Release);
            self.shared.durable_offset.store(end, Ordering::Release);
            self.shared
                .compacted
                .store(loaded.compacted, Ordering::Release);
        }
        self.active = loaded.active;
        self.recovery_point = loaded.recovery_point;
        self.flush = FlushState::default();
        self.marker_present = false;
        if let Some(reason) = self.poisoned.take() {
            tracing::warn!(dir = %self.dir.display(), start, end, %reason, "log recovered after a failure");
        }
        Ok(())
    }

    /// Called before the first change after a clean open: removes the clean-shutdown marker,
    /// durably, so that a crash from here on is recovered by the next open.
    pub(crate) fn mark_dirty(&mut self) -> Result<()> {
        if self.marker_present {
            let p = self.dir.join(CLEAN_MARKER);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("remove", p)(e)),
            }
            sync_dir(&self.dir, self.faults.as_ref())?;
            self.marker_present = false;
        }
        Ok(())
    }

    /// A read handle sharing this log.
    pub fn reader(&self) -> LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log's settings.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the settings; they apply from the next append, roll or retention pass on.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    /// Next offset to be written.
    pub fn end_offset(&self) -> i64 {
        self.active.next_offset
    }

    /// First offset still stored.
    pub fn start_offset(&self) -> i64 {
        self.shared.start_offset.load(Ordering::Acquire)
    }

    /// Offset up to which (exclusive) the data is known to be fsynced.
    pub fn durable_offset(&self) -> i64 {
        self.shared.durable_offset.load(Ordering::Acquire)
    }

    pub(crate) fn check_usable(&self) -> Result<()> {
        match &self.poisoned {
            Some(reason) => Err(StorageError::Poisoned {
                dir: self.dir.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn poison(&mut self, e: StorageError) -> StorageError {
        tracing::error!(dir = %self.dir.display(), error = %e, "log poisoned");
        self.poisoned = Some(e.to_string());
        e
    }

    fn active_segment(&self) -> Arc<Segment> {
        // Test builds check that the writer's segment is the one readers see last.
        debug_assert!(
            self.shared
                .snapshot()
                .last()
                .is_some_and(|s| Arc::ptr_eq(s, &self.active.segment))
        );
        self.active.segment.clone()
    }

    /// Validates and appends encoded batches (base offsets are assigned here). Either every batch
    /// is appended or, on a validation error, none is.
    pub fn append(&mut self, batches: &[Bytes]) -> Result<AppendInfo> {
        let valid = batches
            .iter()
            .enumerate()
            .map(|(index, b)| {
                ValidBatch::new(b.clone())
                    .map_err(|source| StorageError::InvalidBatch { index, source })
            })
            .collect::<Result<Vec<_>>>()?;
        self.append_valid(&valid)
    }

    /// Encodes `records` as one batch and appends it.
    pub fn append_records(&mut self, records: &[RecordRef<'_>]) -> Result<AppendInfo> {
        let mut b = BatchBuilder::default();
        for r in records {
            b.push(r)
                .map_err(|source| StorageError::InvalidBatch { index: 0, source })?;
        }
        let bytes = b
            .finish()
            .map_err(|source| StorageError::InvalidBatch { index: 0, source })?;
        self.append(&[bytes])
    }

    /// Appends already validated batches: one vectored write per run of batches that fit the
    /// active segment, rolling between runs as `segment.bytes`, `segment.ms` and the index
    /// capacity require; then one fsync for the whole call if the flush policy asks for it.
    /// Each batch is stored with its new base offset and the log's leader epoch
    /// ([`Log::set_leader_epoch`]); the first append of an epoch records where it starts.
    pub fn append_valid(&mut self, batches: &[ValidBatch]) -> Result<AppendInfo> {
        let info = self.append_deferred(batches)?;
        self.flush_after_append(info)
    }

    /// After a deferred append: the fsync the flush policy asks for now, and the write-back.
    pub(crate) fn flush_after_append(&mut self, mut info: AppendInfo) -> Result<AppendInfo> {
        if self.flush_wanted() {
            self.flush()?;
            info.durable = true;
        }
        if self.writeback_wanted()
            && let Some(w) = self.start_writeback()
        {
            w.run();
        }
        Ok(info)
    }

    /// As [`Log::append_valid`], but never fsyncs nor starts write-back: the caller flushes
    /// when [`Log::flush_wanted`] says so (typically with [`Log::start_flush`], so that appends
    /// go on while the fsync runs), and starts write-back when [`Log::writeback_wanted`] does.
    /// `durable` is always false.
    pub fn append_deferred(&mut self, batches: &[ValidBatch]) -> Result<AppendInfo> {
        self.check_usable()?;
        self.mark_dirty()?;
        let max = self.config.max_message_bytes as usize;
        if let Some(b) = batches.iter().find(|b| b.bytes.len() > max) {
            return Err(StorageError::MessageTooLarge {
                size: b.bytes.len(),
                max,
            });
        }
        let saved_epochs = self.assign_leader_epoch(batches)?;
        self.write_appended(batches, Stamp::Leader(self.leader_epoch), saved_epochs)
    }

    /// The writes of an append, leader's or replica's, once its checks passed and its epochs
    /// are in the checkpoint (`saved_epochs`: the cache before, put back if nothing is stored).
    pub(crate) fn write_appended(
        &mut self,
        batches: &[ValidBatch],
        stamp: Stamp,
        saved_epochs: Option<Vec<EpochEntry>>,
    ) -> Result<AppendInfo> {
        let base_offset = self.active.next_offset;
        let now = self.clock.now_ms();
        let (records, bytes) = match self.write_batches(batches, now, stamp) {
            Ok(counts) => counts,
            // Part of the call is stored and readable, the rest is not: the caller cannot be
            // told which, so the log stops taking appends until `recover` re-reads it.
            Err(e) if self.active.next_offset != base_offset => {
                let reason = format!(
                    "append failed after storing offsets {base_offset}..{}: {e}",
                    self.active.next_offset
                );
                self.poison(e);
                self.epochs.truncate_from_end(self.active.next_offset);
                return Err(StorageError::Poisoned {
                    dir: self.dir.clone(),
                    reason,
                });
            }
            Err(e) => {
                if let Some(saved) = saved_epochs {
                    self.epochs.restore(saved);
                }
                return Err(e);
            }
        };
        self.flush.messages += records;
        self.flush.bytes += bytes;
        self.flush.oldest_ms.get_or_insert(now);
        Ok(AppendInfo {
            base_offset,
            next_offset: self.active.next_offset,
            durable: false,
        })
    }

    /// Whether `writeback.bytes` of appends have piled up since write-back was last started.
    pub fn writeback_wanted(&self) -> bool {
        let a = &self.active;
        self.config
            .writeback_bytes
            .is_some_and(|n| a.len.saturating_sub(a.writeback_from) >= n)
            || !self.flush.writeback.is_empty()
    }

    /// Takes the early write-back of what was appended since the last one (whole pages of the
    /// active segment, and the ends of segments rolled since), to run elsewhere
    /// ([`PendingWriteback::run`]). The kernel would write these pages anyway, but only once
    /// dirty pages reach its thresholds (gigabytes on a large machine), and then it throttles
    /// the writer hard while it catches up; started early, write-back runs at the disk's pace
    /// alongside the appends. `None` when there is nothing to start.
    pub fn start_writeback(&mut self) -> Option<PendingWriteback> {
        let mut ranges = std::mem::take(&mut self.flush.writeback);
        let base_offset = self.active_segment().base_offset;
        let a = &mut self.active;
        // Whole pages only: the page being appended to is left alone until it is full.
        let end = a.len - a.len % PAGE;
        if end > a.writeback_from {
            match a.log.try_clone() {
                Ok(file) => ranges.push(WritebackRange {
                    base_offset,
                    file,
                    from: a.writeback_from,
                    len: end - a.writeback_from,
                }),
                Err(e) => {
                    tracing::debug!(dir = %self.dir.display(), error = %e, "could not start write-back")
                }
            }
            a.writeback_from = end;
        }
        (!ranges.is_empty()).then(|| PendingWriteback {
            ranges,
            dir: self.dir.clone(),
        })
    }

    /// Whether the flush policy (`flush.messages`, `flush.bytes`, `flush.ms`) says it is time to
    /// fsync what was appended.
    pub fn flush_wanted(&self) -> bool {
        self.flush_due(self.clock.now_ms())
    }

    /// The writes of [`Log::append_valid`]; returns the records and bytes written.
    fn write_batches(
        &mut self,
        batches: &[ValidBatch],
        now: i64,
        stamp: Stamp,
    ) -> Result<(u64, u64)> {
        let mut i = 0;
        let mut records = 0u64;
        let mut bytes = 0u64;
        while i < batches.len() {
            let seg = self.active_segment();
            let mut run = Vec::new();
            let mut len = self.active.len;
            let mut next = self.active.next_offset;
            let mut entries = self.active.index_entries_made();
            let roll_by_time = self
                .active
                .first_append_ms
                .is_some_and(|t| now.saturating_sub(t) >= self.config.segment_ms);
            if roll_by_time && len > 0 {
                self.roll()?;
                continue;
            }
            while let Some(b) = batches.get(i) {
                let size = b.bytes.len() as u64;
                let last = next
                    .checked_add(i64::from(b.header.last_offset_delta))
                    .ok_or(StorageError::OffsetOverflow)?;
                let fits = len + size <= self.config.segment_bytes
                    && len + size <= seg.log_capacity()
                    && entries < seg.index_capacity_entries()
                    && last - seg.base_offset <= i64::from(u32::MAX);
                if !fits && (len > 0 || !run.is_empty()) {
                    break;
                }
                run.push(Planned {
                    bytes: &b.bytes,
                    header: b.header,
                    base_offset: next,
                    leader_epoch: stamp.epoch_for(&b.header),
                });
                len += size;
                next = last + 1;
                entries += 1; // at most one index entry per batch
                i += 1;
                records += b.record_count() as u64;
                bytes += size;
            }
            if run.is_empty() {
                self.roll()?;
                continue;
            }
            let seg = if len > seg.log_capacity() {
                // A single batch larger than the map of an empty segment: map it bigger.
                self.remap_active(len)?;
                self.active_segment()
            } else {
                seg
            };
            if let Err(e) = self.active.write_run(&seg, &run) {
                return Err(match e {
                    StorageError::Poisoned { .. } => self.poison(e),
                    e => e,
                });
            }
            self.active.first_append_ms.get_or_insert(now);
            self.shared
                .end_offset
                .store(self.active.next_offset, Ordering::Release);
            if i < batches.len() {
                self.roll()?;
            }
        }
        Ok((records, bytes))
    }

    fn flush_due(&self, now: i64) -> bool {
        let f = &self.flush;
        if f.messages == 0 && f.pending.is_empty() {
            return false;
        }
        let c = &self.config;
        c.flush_messages.is_some_and(|n| f.messages >= n)
            || c.flush_bytes.is_some_and(|n| f.bytes >= n)
            || c.flush_ms
                .zip(f.oldest_ms)
                .is_some_and(|(ms, t)| now.saturating_sub(t) >= ms)
    }

    /// fsyncs if the flush policy says it is time (for `flush.ms`, call this from a timer).
    /// Returns whether it flushed.
    pub fn flush_if_due(&mut self) -> Result<bool> {
        if self.flush_due(self.clock.now_ms()) {
            self.flush()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// fsyncs everything appended so far (one fsync covers every earlier append, across rolls)
    /// and advances the durable offset. A failed fsync poisons the log: the kernel may have
    /// dropped the dirty pages, so nothing after the last good fsync can be trusted until a
    /// reopen recovers from what is really on disk.
    pub fn flush(&mut self) -> Result<i64> {
        match self.start_flush()? {
            None => Ok(self.durable_offset()),
            Some(f) => {
                let result = f.run();
                self.finish_flush(f, result)
            }
        }
    }

    /// Takes a flush of everything appended so far out of the log, to run elsewhere
    /// ([`PendingFlush::run`], on another thread) while this log goes on appending; hand its
    /// outcome to [`Log::finish_flush`]. `None` when everything is already durable. Appends made
    /// while it runs are covered by the next flush.
    pub fn start_flush(&mut self) -> Result<Option<PendingFlush>> {
        self.check_usable()?;
        let end = self.active.next_offset;
        if self.durable_offset() == end && self.flush.pending.is_empty() && !self.flush.dir_dirty {
            return Ok(None);
        }
        let seg = self.active_segment();
        let mut files: Vec<(File, PathBuf)> = self
            .flush
            .pending
            .drain(..)
            .map(|f| (f, self.dir.clone()))
            .collect();
        self.flush.pending_ends.clear();
        self.flush.in_flight = true;
        let active = self
            .active
            .log
            .try_clone()
            .map_err(StorageError::io("dup", &seg.log_path))?;
        files.push((active, seg.log_path.clone()));
        let dir = std::mem::take(&mut self.flush.dir_dirty).then(|| self.dir.clone());
        self.flush.messages = 0;
        self.flush.bytes = 0;
        self.flush.oldest_ms = None;
        Ok(Some(PendingFlush {
            files,
            dir,
            end,
            faults: self.faults.clone(),
            truncations: self.truncations,
        }))
    }

    /// Records the outcome of a flush from [`Log::start_flush`]: on success the durable offset
    /// moves to the flush's end; a failure poisons the log (see [`Log::flush`]).
    pub fn finish_flush(&mut self, flush: PendingFlush, result: Result<()>) -> Result<i64> {
        self.flush.in_flight = false;
        if let Err(e) = result {
            return Err(self.poison(e));
        }
        // A truncation since the flush was taken replaced files it fsynced: it vouches for
        // nothing the log holds now.
        if flush.truncations == self.truncations {
            self.shared
                .durable_offset
                .fetch_max(flush.end, Ordering::AcqRel);
        }
        Ok(self.durable_offset())
    }

    /// Records the durable offset as the log's recovery point, if it moved since the last time:
    /// the segments below it are not checked batch by batch after an unclean shutdown. Cheap
    /// (a small file replaced by rename, no fsync); the broker calls it from its periodic
    /// maintenance.
    pub fn checkpoint_recovery_point(&mut self) -> Result<()> {
        let durable = self.durable_offset();
        if durable == self.recovery_point {
            return Ok(());
        }
        recovery_point::write(&self.dir, durable, false, self.faults.as_ref())?;
        self.recovery_point = durable;
        Ok(())
    }

    /// Before a truncation to `new_end`: the offsets from there on will be written again, so
    /// the recovery point comes down to it first, durably.
    pub(crate) fn lower_recovery_point(&mut self, new_end: i64) -> Result<()> {
        if self.recovery_point <= new_end {
            return Ok(());
        }
        recovery_point::write(&self.dir, new_end, true, self.faults.as_ref())?;
        self.recovery_point = new_end;
        Ok(())
    }

    /// Closes the active segment and starts a new one at the log-end offset.
    pub fn roll(&mut self) -> Result<()> {
        self.check_usable()?;
        let old = self.active_segment();
        if self.active.len == 0 {
            return Ok(());
        }
        self.mark_dirty()?;
        self.active.seal(&old)?;
        let base = self.active.next_offset;
        let (log, index, time) = segment::open_files(&self.dir, base, true, self.faults.as_ref())?;
        let seg = Arc::new(Segment::map(
            &self.dir,
            base,
            &log,
            0,
            self.config.segment_bytes,
            &index,
            0,
            &time,
            0,
            self.config.segment_index_bytes,
            -1,
        )?);
        let old_files = std::mem::replace(
            &mut self.active,
            ActiveFiles {
                segment: seg.clone(),
                log,
                index,
                time,
                len: 0,
                index_entries: 0,
                time_entries: 0,
                next_offset: base,
                builder: IndexBuilder::new(self.config.index_interval_bytes, -1, -1, 0),
                first_append_ms: None,
                writeback_from: 0,
                faults: self.faults.clone(),
            },
        );
        // The next flush must cover the closed segment too (a durable produce may have put
        // records in it). Without a flush policy that flush may never come: past a few closed
        // segments, the oldest is fsynced here rather than holding its files open forever.
        if self.config.writeback_bytes.is_some() && old_files.len > old_files.writeback_from {
            if let Ok(file) = old_files.log.try_clone() {
                let (from, len) = (old_files.writeback_from, old_files.len);
                self.flush.writeback.push(WritebackRange {
                    base_offset: old.base_offset,
                    file,
                    from,
                    len: len - from,
                });
            }
            if self.flush.writeback.len() > MAX_WRITEBACK_TAILS {
                self.flush.writeback.remove(0);
            }
        }
        self.flush.pending.push(old_files.log);
        self.flush.pending.push(old_files.index);
        self.flush.pending.push(old_files.time);
        self.flush.pending_ends.push((base, self.truncations));
        self.flush.dir_dirty = true;
        let mut segs: Vec<_> = self.shared.snapshot().iter().cloned().collect();
        segs.push(seg);
        self.shared.replace(segs);
        if self.flush.pending.len() > 3 * MAX_UNFLUSHED_SEGMENTS {
            let oldest: Vec<File> = self.flush.pending.drain(..3).collect();
            let ended =
                (!self.flush.pending_ends.is_empty()).then(|| self.flush.pending_ends.remove(0));
            for f in &oldest {
                if let Err(e) = io::sync_data(self.faults.as_ref(), f, &self.dir) {
                    return Err(self.poison(e));
                }
            }
            // Every segment before this one went to disk with a flush that has finished, or
            // here: the durable offset (and with it the recovery point) moves to its end, so
            // a log with no flush policy is not checked from its last open after a crash.
            if let Some((end, truncations)) = ended
                && !self.flush.in_flight
                && truncations == self.truncations
            {
                if let Err(e) = sync_dir(&self.dir, self.faults.as_ref()) {
                    return Err(self.poison(e));
                }
                self.shared.durable_offset.fetch_max(end, Ordering::AcqRel);
            }
        }
        tracing::debug!(dir = %self.dir.display(), base, "rolled to a new segment");
        Ok(())
    }

    fn remap_active(&mut self, capacity: u64) -> Result<()> {
        let old = self.active_segment();
        let seg = Arc::new(Segment::map(
            &self.dir,
            old.base_offset,
            &self.active.log,
            self.active.len,
            capacity,
            &self.active.index,
            self.active.index_entries,
            &self.active.time,
            self.active.time_entries,
            self.config.segment_index_bytes,
            old.max_timestamp(),
        )?);
        let mut segs: Vec<_> = self.shared.snapshot().iter().cloned().collect();
        let n = segs.len();
        segs[n - 1] = seg.clone();
        self.shared.replace(segs);
        self.active.segment = seg;
        Ok(())
    }

    /// Deletes whole oldest segments per `retention.ms` (segments whose newest record is older)
    /// and `retention.bytes` (while the log stays at or above the limit without them). An expired
    /// non-empty active segment is rolled first so that idle data also expires. Does nothing
    /// unless `cleanup.policy` includes `delete`.
    pub fn enforce_retention(&mut self) -> Result<RetentionOutcome> {
        self.check_usable()?;
        let mut outcome = RetentionOutcome {
            log_start: self.start_offset(),
            ..Default::default()
        };
        if !self.config.cleanup_policy.delete {
            return Ok(outcome);
        }
        let now = self.clock.now_ms();
        let expired = |s: &Segment, retention_ms: i64| {
            retention_ms >= 0 && s.len() > 0 && s.max_timestamp() < now.saturating_sub(retention_ms)
        };
        if expired(&self.active_segment(), self.config.retention_ms) {
            self.roll()?;
        }
        let segs = self.shared.snapshot();
        let mut total: u64 = segs.iter().map(|s| s.len()).sum();
        let mut delete = 0;
        for s in segs.iter().take(segs.len() - 1) {
            let by_time = expired(s, self.config.retention_ms);
            let by_size = self.config.retention_bytes >= 0
                && total.saturating_sub(s.len()) >= self.config.retention_bytes as u64;
            if !(by_time || by_size) {
                break;
            }
            total -= s.len();
            delete += 1;
        }
        if delete == 0 {
            return Ok(outcome);
        }
        self.mark_dirty()?;
        let keep: Vec<_> = segs[delete..].to_vec();
        self.shared.replace(keep);
        for s in &segs[..delete] {
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += s.len();
            for p in [&s.log_path, &s.index_path, &s.time_path] {
                match fs::remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StorageError::io("remove", p.as_path())(e)),
                }
            }
        }
        self.flush.dir_dirty = true;
        self.trim_epochs_to_start()?;
        outcome.log_start = self.start_offset();
        // Deleted segments need no write-back (and their files are freed once closed).
        self.flush
            .writeback
            .retain(|t| t.base_offset >= outcome.log_start);
        tracing::info!(dir = %self.dir.display(), deleted = outcome.segments_deleted, log_start = outcome.log_start, "retention deleted segments");
        Ok(outcome)
    }

    /// Moves the log's start to `offset` (Kafka's DeleteRecords; -1: the end): records below it
    /// are never served again, and whole segments below it are removed. The new start is
    /// recorded durably first. Returns the log's start afterwards (a start already past
    /// `offset` stays).
    pub fn delete_records_before(&mut self, offset: i64) -> Result<i64> {
        self.check_usable()?;
        let end = self.end_offset();
        let start = self.start_offset();
        let offset = if offset == -1 { end } else { offset };
        if offset < 0 || offset > end {
            return Err(StorageError::OffsetOutOfRange { offset, start, end });
        }
        if offset <= start {
            return Ok(start);
        }
        self.mark_dirty()?;
        crate::log_start::write(&self.dir, offset)?;
        self.shared.start_offset.fetch_max(offset, Ordering::AcqRel);
        let segs = self.shared.snapshot();
        // A segment goes when the next one starts at or below the new start.
        let delete = segs
            .windows(2)
            .take_while(|w| w[1].base_offset <= offset)
            .count();
        if delete > 0 {
            self.shared.replace(segs[delete..].to_vec());
            for s in &segs[..delete] {
                for p in [&s.log_path, &s.index_path, &s.time_path] {
                    match fs::remove_file(p) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(StorageError::io("remove", p.as_path())(e)),
                    }
                }
            }
            self.flush.dir_dirty = true;
            let log_start = self.start_offset();
            self.flush.writeback.retain(|t| t.base_offset >= log_start);
        }
        self.trim_epochs_to_start()?;
        tracing::info!(dir = %self.dir.display(), log_start = offset, segments_deleted = delete, "records deleted");
        Ok(self.start_offset())
    }

    /// fsyncs everything, records a clean-shutdown marker and closes the files. The next open
    /// scans nothing.
    pub fn close(mut self) -> Result<()> {
        self.check_usable()?;
        let seg = self.active_segment();
        self.active.seal(&seg)?;
        self.flush.dir_dirty = true;
        self.flush()?;
        for (f, p) in [
            (&self.active.index, &seg.index_path),
            (&self.active.time, &seg.time_path),
        ] {
            f.sync_all()
                .map_err(StorageError::io("fsync", p.as_path()))?;
        }
        // Closed segments written under the OS's write-back may still be dirty: the marker must
        // not vouch for data that is only in the page cache.
        let segs = self.shared.snapshot();
        for s in segs.iter().take(segs.len() - 1) {
            for p in [&s.log_path, &s.index_path, &s.time_path] {
                File::open(p)
                    .and_then(|f| f.sync_data())
                    .map_err(StorageError::io("fsync", p.as_path()))?;
            }
        }
        // The leader-epoch checkpoint is written without fsyncs; the marker vouches for it too.
        let faults = self.faults.clone();
        self.epochs.sync(faults.as_ref())?;
        // Everything is on disk: an unclean stop after the next open checks only what comes
        // after this.
        recovery_point::write(&self.dir, self.active.next_offset, false, faults.as_ref())?;
        let mut m = Vec::with_capacity(MARKER_LEN);
        m.extend_from_slice(MARKER_MAGIC);
        m.extend_from_slice(&self.active.next_offset.to_be_bytes());
        m.extend_from_slice(&seg.base_offset.to_be_bytes());
        m.extend_from_slice(&self.active.len.to_be_bytes());
        m.extend_from_slice(&self.active.builder.max_timestamp.to_be_bytes());
        let crc = crc32fast::hash(&m);
        m.extend_from_slice(&crc.to_be_bytes());
        write_atomic(&self.dir, &self.dir.join(CLEAN_MARKER), &m)?;
        tracing::debug!(dir = %self.dir.display(), end = self.active.next_offset, "log closed cleanly");
        Ok(())
    }

    /// Deletes the log's directory and everything in it.
    pub fn delete(self) -> Result<()> {
        let dir = self.dir.clone();
        drop(self);
        fs::remove_dir_all(&dir).map_err(StorageError::io("remove dir", &dir))
    }
}

/// Reads a log's directory: the sealed segments (their indexes rebuilt if damaged) and the
/// active one (trusted after a clean close, recovered otherwise). After anything but a clean
/// close every segment is fsynced: a crashed process leaves its writes in the page cache, and
/// the durable offset must not vouch for them until they are on disk.
/// A loaded log's start: its first segment's base, or the later start DeleteRecords recorded
/// (never past the end).
fn start_of(dir: &Path, loaded: &Loaded) -> Result<i64> {
    let first = loaded.segments[0].base_offset;
    let recorded = crate::log_start::read(dir)?.unwrap_or(first);
    Ok(recorded.clamp(first, loaded.active.next_offset.max(first)))
}

fn load(dir: &Path, config: &LogConfig, faults: Option<&IoFaults>) -> Result<Loaded> {
    fs::create_dir_all(dir).map_err(StorageError::io("create dir", dir))?;
    crate::replica::finish_truncation(dir, config, faults)?;
    let (marker_present, marker) = read_marker(dir)?;
    let mut bases = list_segments(dir)?;
    let mut created = false;
    if bases.is_empty() {
        segment::open_files(dir, 0, true, faults)?;
        bases.push(0);
        created = true;
    }
    let compacted = dir.join(COMPACTED_MARKER).exists();
    let mut point = recovery_point::read(dir);
    if !marker_present && !created && !compacted {
        recovery_point::cut_unflushed_damage(dir, &mut bases, point, faults)?;
    }
    let last_base = bases[bases.len() - 1];
    let mut segments = Vec::with_capacity(bases.len());
    for pair in bases.windows(2) {
        let (base, next_base) = (pair[0], pair[1]);
        let sealed_end = sealed_end(dir, base);
        let mut seg = open_sealed_segment(dir, base, config, false)?;
        let log = File::open(&seg.log_path).map_err(StorageError::io("open", &seg.log_path))?;
        let mut end = seg.end_by_walk(&log);
        if sealed_end.is_some_and(|e| e < end) {
            // The time index stops short of the log (cut at an entry boundary): its last entry
            // is not the segment's maximum timestamp, which whole-segment skips rely on.
            tracing::warn!(segment = %seg.log_path.display(), "time index does not reach the end of the log; rebuilding");
            seg = open_sealed_segment(dir, base, config, true)?;
            end = seg.end_by_walk(&log);
        }
        // A closed segment must still hold what it held when it was sealed (finding S1 of
        // docs/fuzzing.md). In a log that was never compacted, every closed segment reaches the
        // next segment's base (a roll starts the new one at the old one's end). Once compaction
        // has rewritten segments, only the last time entry says up to where: compaction
        // rewrites it with the segment, so its gaps are not mistaken for loss.
        let held = if compacted {
            sealed_end
        } else {
            Some(next_base)
        };
        if let Some(held) = held.map(|e| e.min(next_base))
            && end < held
        {
            tracing::error!(segment = %seg.log_path.display(), from = end, to = held, "a closed segment ends early: offsets are missing");
            seg.set_lost(end, held);
        }
        segments.push(seg);
    }
    let trusted = marker.as_ref().filter(|m| m.active_base == last_base);
    let (active_seg, active, recovered) = open_active(dir, last_base, config, trusted, faults)?;
    let damaged_tail = !recovered && tail_is_damaged(&active_seg, &active);
    let mut marker_present = marker_present;
    if recovered && marker_present {
        // The marker did not match what is on disk: it must not vouch for the next open.
        let p = dir.join(CLEAN_MARKER);
        fs::remove_file(&p).map_err(StorageError::io("remove", &p))?;
        marker_present = false;
    }
    if !marker_present && !created {
        for s in &segments {
            let f = File::open(&s.log_path).map_err(StorageError::io("open", &s.log_path))?;
            io::sync_data(faults, &f, &s.log_path)?;
        }
        for (f, p) in [
            (&active.log, &active_seg.log_path),
            (&active.index, &active_seg.index_path),
            (&active.time, &active_seg.time_path),
        ] {
            io::sync_data(faults, f, p)?;
        }
        sync_dir(dir, faults)?;
        // Everything recovery kept is on disk now: the next unclean open checks only what is
        // written after this.
        recovery_point::write(dir, active.next_offset, false, faults)?;
        point = active.next_offset;
    }
    segments.push(active_seg);
    Ok(Loaded {
        segments,
        active,
        marker_present,
        created,
        damaged_tail,
        compacted,
        recovery_point: point,
    })
}

/// After a clean close the active segment is not scanned, but its tail (from the last index
/// entry: at most `index.interval.bytes` plus one batch) is checked, batch by batch with CRCs.
/// Damage there would otherwise sit in front of every later append, and the first unclean open
/// after them would cut the log at the damage, taking acknowledged appends with it.
fn tail_is_damaged(seg: &Segment, active: &ActiveFiles) -> bool {
    // Read with `pread` rather than through the map, so the check leaves no mapped pages
    // resident (thousands of partitions open at start-up).
    let len = active.len;
    let (from, next) = seg
        .last_offset_entry()
        .map_or((0, seg.base_offset), |(rel, pos)| {
            (u64::from(pos), seg.base_offset + i64::from(rel))
        });
    let mut tail = vec![0u8; segment::usize_of(len.saturating_sub(from))];
    let scan = std::os::unix::fs::FileExt::read_exact_at(&active.log, &mut tail, from).map(|()| {
        let mut scratch = IndexBuilder::new(1 << 30, -1, -1, 0);
        segment::scan(&tail, 0, seg.base_offset, next, true, &mut scratch)
    });
    let (damaged, reason) = match scan {
        Ok(scan) => (
            scan.valid_len != tail.len() as u64 || scan.next_offset != active.next_offset,
            scan.stopped,
        ),
        Err(e) => (true, Some(e.to_string())),
    };
    if damaged {
        tracing::error!(segment = %seg.log_path.display(), ?reason, "the active segment of a cleanly closed log is damaged near its end; it is closed as it is and appends go to a new segment");
    }
    damaged
}

/// Opens the last segment for appending: trusts it after a clean close, recovers it otherwise.
pub(crate) fn open_active(
    dir: &Path,
    base: i64,
    config: &LogConfig,
    marker: Option<&Marker>,
    faults: Option<&IoFaults>,
) -> Result<(Arc<Segment>, ActiveFiles, bool)> {
    let (log, index, time) = segment::open_files(dir, base, false, None)?;
    let log_path = segment::file_path(dir, base, LOG_EXT);
    let log_len = file_len(&log, &log_path)?;
    let idx_len = file_len(&index, &segment::file_path(dir, base, INDEX_EXT))?;
    let time_len = file_len(&time, &segment::file_path(dir, base, TIME_EXT))?;
    let capacity = config.segment_bytes.max(log_len);
    let map = |log_len: u64, idx: usize, tim: usize, max_ts: i64| {
        Segment::map(
            dir,
            base,
            &log,
            log_len,
            capacity,
            &index,
            idx,
            &time,
            tim,
            config.segment_index_bytes,
            max_ts,
        )
    };
    let idx_n = (idx_len / OFFSET_ENTRY as u64) as usize;
    let time_n = (time_len / TIME_ENTRY as u64) as usize;
    let seg = map(log_len, idx_n, time_n, -1)?;

    if let Some(m) = marker.filter(|m| m.active_len == log_len)
        && idx_len % OFFSET_ENTRY as u64 == 0
        && time_len % TIME_ENTRY as u64 == 0
        && index_looks_sane(&seg, &log, log_len)
    {
        seg.publish(log_len, idx_n, time_n, m.max_timestamp);
        let seg = Arc::new(seg);
        let last_time_ts = seg.last_time_entry().map_or(-1, |(ts, _)| ts);
        let since = seg
            .last_offset_entry()
            .map_or(log_len, |(_, pos)| log_len - u64::from(pos));
        let active = ActiveFiles {
            segment: seg.clone(),
            log,
            index,
            time,
            len: log_len,
            index_entries: idx_n,
            time_entries: time_n,
            next_offset: m.end_offset,
            builder: IndexBuilder::new(
                config.index_interval_bytes,
                m.max_timestamp,
                last_time_ts,
                since,
            ),
            first_append_ms: None,
            writeback_from: log_len,
            faults: faults.cloned(),
        };
        seek_end(&active.log, &log_path, log_len)?;
        return Ok((seg, active, false));
    }

    // Unclean: find the last index entry that points at a good batch, keep the index up to it,
    // and check every batch after it.
    let committed = seg.committed();
    let offsets_map = index_prefix(dir, base, &index, idx_n)?;
    let mut keep_idx = index::valid_offset_prefix(&offsets_map, log_len);
    let mut resume = None;
    while keep_idx > 0 {
        let (rel, pos) = index::offset_entry(&offsets_map, keep_idx - 1);
        let pos = pos as usize;
        let good = batch::peek_total_len(&committed[pos..])
            .ok()
            .flatten()
            .filter(|&t| pos + t <= committed.len())
            .and_then(|t| batch::validate(&committed[pos..pos + t]).ok())
            .filter(|h| h.base_offset == base + i64::from(rel));
        if let Some(h) = good {
            resume = Some((pos, h));
            break;
        }
        keep_idx -= 1;
    }
    let times = time_prefix(dir, base, &time, time_n)?;
    let (from, next, mut builder, keep_time) = match resume {
        Some((pos, h)) => {
            // Time entries written at or before this index entry stay; the last of them holds the
            // running maximum up to and including this batch.
            let limit = (h.last_offset() - base) as u32;
            let valid = index::valid_time_prefix(&times, u32::MAX);
            let keep_time = (0..valid)
                .take_while(|&i| index::time_entry(&times, i).1 <= limit)
                .count();
            let last_ts = keep_time
                .checked_sub(1)
                .map_or(-1, |i| index::time_entry(&times, i).0);
            // The interval restarts after this batch, which already has its entry.
            let builder = IndexBuilder::new(
                config.index_interval_bytes,
                last_ts.max(h.max_timestamp),
                last_ts,
                h.total_len() as u64,
            );
            (pos + h.total_len(), h.next_offset(), builder, keep_time)
        }
        None => (
            0,
            base,
            IndexBuilder::new(config.index_interval_bytes, -1, -1, 0),
            0,
        ),
    };
    // The active segment is never compacted: its batches follow each other with no gap, so a
    // batch whose base offset jumps ahead is damage (the CRC does not cover the base offset).
    let scan = segment::scan(&committed, from, base, next, true, &mut builder);
    drop(committed);
    drop(seg);
    if let Some(reason) = &scan.stopped {
        tracing::warn!(segment = %log_path.display(), %reason, kept_bytes = scan.valid_len, cut_bytes = log_len - scan.valid_len, "recovery cut off a damaged tail");
    }
    if scan.valid_len != log_len {
        log.set_len(scan.valid_len)
            .map_err(StorageError::io("truncate", &log_path))?;
    }
    let idx_path = segment::file_path(dir, base, INDEX_EXT);
    let time_path = segment::file_path(dir, base, TIME_EXT);
    let idx_at = (keep_idx * OFFSET_ENTRY) as u64;
    let time_at = (keep_time * TIME_ENTRY) as u64;
    index
        .set_len(idx_at)
        .and_then(|()| {
            std::os::unix::fs::FileExt::write_all_at(&index, &builder.offset_buf, idx_at)
        })
        .map_err(StorageError::io("write", &idx_path))?;
    time.set_len(time_at)
        .and_then(|()| std::os::unix::fs::FileExt::write_all_at(&time, &builder.time_buf, time_at))
        .map_err(StorageError::io("write", &time_path))?;
    let idx_n = keep_idx + builder.offset_buf.len() / OFFSET_ENTRY;
    let time_n = keep_time + builder.time_buf.len() / TIME_ENTRY;
    builder.offset_buf.clear();
    builder.time_buf.clear();
    let seg = map(scan.valid_len, idx_n, time_n, builder.max_timestamp)?;
    seg.publish(scan.valid_len, idx_n, time_n, builder.max_timestamp);
    let seg = Arc::new(seg);
    let active = ActiveFiles {
        segment: seg.clone(),
        log,
        index,
        time,
        len: scan.valid_len,
        index_entries: idx_n,
        time_entries: time_n,
        next_offset: scan.next_offset,
        builder,
        first_append_ms: None,
        writeback_from: scan.valid_len,
        faults: faults.cloned(),
    };
    seek_end(&active.log, &log_path, scan.valid_len)?;
    Ok((seg, active, true))
}

fn seek_end(mut f: &File, path: &Path, len: u64) -> Result<()> {
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(len))
        .map(|_| ())
        .map_err(StorageError::io("seek", path))
}

/// The first `n` offset entries of an index file (read into memory: only recovery needs it).
fn index_prefix(dir: &Path, base: i64, f: &File, n: usize) -> Result<Vec<u8>> {
    let mut v = vec![0u8; n * OFFSET_ENTRY];
    std::os::unix::fs::FileExt::read_exact_at(f, &mut v, 0).map_err(StorageError::io(
        "read",
        segment::file_path(dir, base, INDEX_EXT),
    ))?;
    Ok(v)
}

fn time_prefix(dir: &Path, base: i64, f: &File, n: usize) -> Result<Vec<u8>> {
    let mut v = vec![0u8; n * TIME_ENTRY];
    std::os::unix::fs::FileExt::read_exact_at(f, &mut v, 0).map_err(StorageError::io(
        "read",
        segment::file_path(dir, base, TIME_EXT),
    ))?;
    Ok(v)
}

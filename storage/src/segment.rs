//! One segment: a `.log` file of record batches with its `.index` and `.timeindex`, named by the
//! segment's base offset. This module owns the files' names, the shared read-side state that
//! readers see through memory maps, the lookups (offset and time), the writer's append of a run of
//! batches, and the scan that checks and indexes batches during recovery and index rebuilds.

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use strom_protocol::batch::{self, BatchHeader, Records};

use crate::error::{Result, StorageError};
use crate::index::{self, OFFSET_ENTRY, TIME_ENTRY};
use crate::io::{self, IoFaults, IoOp};
use crate::mmap;

/// Extension of a segment's record file.
pub(crate) const LOG_EXT: &str = "log";
/// Extension of a segment's offset index.
pub(crate) const INDEX_EXT: &str = "index";
/// Extension of a segment's time index.
pub(crate) const TIME_EXT: &str = "timeindex";

/// `{base:020}.{ext}` inside `dir`.
pub(crate) fn file_path(dir: &Path, base_offset: i64, ext: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{ext}"))
}

/// Parses a file name of the form `{20 digits}.{rest}` into (base offset, rest).
pub(crate) fn parse_file_name(name: &str) -> Option<(i64, &str)> {
    let (digits, rest) = name.split_once('.')?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, rest))
}

/// Index-entry bookkeeping shared by appends, recovery and rebuilds, so that every path indexes a
/// log the same way: an offset entry for a batch once more than `index.interval.bytes` were
/// written since the last entry, and with it a time entry when the running maximum timestamp grew.
#[derive(Debug, Clone)]
pub(crate) struct IndexBuilder {
    interval: u64,
    bytes_since: u64,
    /// Largest timestamp among all batches indexed so far.
    pub max_timestamp: i64,
    last_time_ts: i64,
    /// Offset entries not yet written to the file.
    pub offset_buf: Vec<u8>,
    /// Time entries not yet written to the file.
    pub time_buf: Vec<u8>,
}

impl IndexBuilder {
    pub fn new(interval: u64, max_timestamp: i64, last_time_ts: i64, bytes_since: u64) -> Self {
        Self {
            interval,
            bytes_since,
            max_timestamp,
            last_time_ts,
            offset_buf: Vec::new(),
            time_buf: Vec::new(),
        }
    }

    /// Where the builder stands, to [`IndexBuilder::rewind`] to if an append fails.
    pub fn mark(&self) -> BuilderMark {
        BuilderMark {
            bytes_since: self.bytes_since,
            max_timestamp: self.max_timestamp,
            last_time_ts: self.last_time_ts,
            offset_len: self.offset_buf.len(),
            time_len: self.time_buf.len(),
        }
    }

    /// Forgets everything accounted since `mark` (entries kept in memory before it stay).
    pub fn rewind(&mut self, mark: BuilderMark) {
        self.bytes_since = mark.bytes_since;
        self.max_timestamp = mark.max_timestamp;
        self.last_time_ts = mark.last_time_ts;
        self.offset_buf.truncate(mark.offset_len);
        self.time_buf.truncate(mark.time_len);
    }

    /// Accounts for a batch at `position` (relative offsets against `segment_base`).
    pub fn on_batch(&mut self, segment_base: i64, header: &BatchHeader, position: u32) {
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        if self.bytes_since >= self.interval {
            let rel = (header.base_offset - segment_base) as u32;
            index::put_offset_entry(&mut self.offset_buf, rel, position);
            self.push_time_entry(segment_base, header.last_offset());
            self.bytes_since = 0;
        }
        self.bytes_since += header.total_len() as u64;
    }

    /// Adds a time entry for everything up to `last_offset` if the maximum grew since the last one.
    pub fn push_time_entry(&mut self, segment_base: i64, last_offset: i64) {
        if self.max_timestamp > self.last_time_ts {
            let rel = (last_offset - segment_base) as u32;
            index::put_time_entry(&mut self.time_buf, self.max_timestamp, rel);
            self.last_time_ts = self.max_timestamp;
        }
    }
}

/// An [`IndexBuilder`]'s state at some point ([`IndexBuilder::mark`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BuilderMark {
    bytes_since: u64,
    max_timestamp: i64,
    last_time_ts: i64,
    offset_len: usize,
    time_len: usize,
}

/// How many offset-index entries the active segment's writer keeps in memory before writing
/// them (and the time entries made with them) to the files in one `pwrite` each. Writing every
/// entry as it is made cost two system calls per append once batches pass
/// `index.interval.bytes`, a quarter of a small append's cost with many partitions
/// (`docs/performance.md`). Entries not yet written are invisible to readers, who walk the
/// batch headers from the last written entry instead; a crash loses them and recovery makes
/// them again from the log (the index is derived data); a seal (roll or close) writes them.
pub const INDEX_WRITE_GROUP: usize = 16;

/// What readers share about a segment. Everything a reader touches is either immutable or an
/// atomic published by the single writer after the bytes it covers were written.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: i64,
    pub log_path: PathBuf,
    pub index_path: PathBuf,
    pub time_path: PathBuf,
    log_map: Bytes,
    index_map: Bytes,
    time_map: Bytes,
    /// Committed bytes of `.log`.
    len: AtomicU64,
    /// Committed entries of `.index`.
    index_entries: AtomicUsize,
    /// Committed entries of `.timeindex`.
    time_entries: AtomicUsize,
    /// Largest record timestamp in the segment, -1 if empty.
    max_timestamp: AtomicI64,
    /// Offsets `[from, to)` this closed segment held when it was sealed but its `.log` no longer
    /// does (it ends early): reads there are corruption, not a gap to skip.
    lost: OnceLock<(i64, i64)>,
    /// The `.log` map, to release its pages from the process's resident set.
    log_mapping: mmap::Mapped,
    /// Bytes served by reads since the map's pages were last released.
    read_since_release: AtomicU64,
}

/// Bytes a segment serves between releases of its map's pages from the resident set: bounds
/// the broker's RSS from reads to about this much per segment being read.
const RELEASE_EVERY_BYTES: u64 = 32 << 20;
/// What one read brings into the map at least: a page fault on a file mapping maps the
/// neighbouring pages already in the page cache too (Linux's `fault_around_bytes`, 64 KiB).
const FAULT_AROUND_BYTES: u64 = 64 << 10;

/// Whole batches read from one segment.
#[derive(Debug, Clone)]
pub struct SegmentRead {
    /// The batches, as stored (a slice of the segment's memory map).
    pub data: Bytes,
    /// Base offset of the first batch (may be below the offset asked for).
    pub first_offset: i64,
    /// Offset after the last batch returned.
    pub next_offset: i64,
}

impl Segment {
    /// Creates the shared state over already-open files. `log_capacity` and `index_capacity`
    /// size the maps; they may exceed the files' lengths (the active segment grows into them).
    #[allow(clippy::too_many_arguments)]
    pub fn map(
        dir: &Path,
        base_offset: i64,
        log: &File,
        log_len: u64,
        log_capacity: u64,
        index: &File,
        index_entries: usize,
        time: &File,
        time_entries: usize,
        index_capacity: u64,
        max_timestamp: i64,
    ) -> Result<Self> {
        let log_path = file_path(dir, base_offset, LOG_EXT);
        let index_path = file_path(dir, base_offset, INDEX_EXT);
        let time_path = file_path(dir, base_offset, TIME_EXT);
        let time_capacity = index_capacity / OFFSET_ENTRY as u64 * TIME_ENTRY as u64;
        let log_mapping = mmap::map_releasable(
            log,
            usize_of(log_capacity.max(log_len)),
            mmap::Access::Sequential,
        )
        .map_err(StorageError::io("mmap", &log_path))?;
        let log_map = log_mapping.bytes.clone();
        let index_map = mmap::map(
            index,
            usize_of(index_capacity.max((index_entries * OFFSET_ENTRY) as u64)),
            mmap::Access::Random,
        )
        .map_err(StorageError::io("mmap", &index_path))?;
        let time_map = mmap::map(
            time,
            usize_of(time_capacity.max((time_entries * TIME_ENTRY) as u64)),
            mmap::Access::Random,
        )
        .map_err(StorageError::io("mmap", &time_path))?;
        Ok(Self {
            base_offset,
            log_path,
            index_path,
            time_path,
            log_map,
            index_map,
            time_map,
            len: AtomicU64::new(log_len),
            index_entries: AtomicUsize::new(index_entries),
            time_entries: AtomicUsize::new(time_entries),
            max_timestamp: AtomicI64::new(max_timestamp),
            lost: OnceLock::new(),
            log_mapping,
            read_since_release: AtomicU64::new(0),
        })
    }

    /// Records that offsets `[from, to)` are missing from this closed segment's `.log`.
    pub fn set_lost(&self, from: i64, to: i64) {
        let _ = self.lost.set((from, to));
    }

    /// The offset after the last batch of the committed log, walking from the last offset-index
    /// entry (or the start) by headers; stops at the first header that does not parse. Reads
    /// `log` (this segment's `.log`) with `pread`, not through the map: at start-up, thousands of
    /// segments are checked, and faulting their maps in would leave their pages resident.
    pub fn end_by_walk(&self, log: &File) -> i64 {
        let len = self.len();
        let mut pos = self.last_offset_entry().map_or(0, |(rel, pos)| {
            match self.header_from_file(log, u64::from(pos), len) {
                Some(h) if h.base_offset == self.base_offset + i64::from(rel) => u64::from(pos),
                _ => 0,
            }
        });
        let mut end = self.base_offset;
        while pos < len {
            match self.header_from_file(log, pos, len) {
                Some(h) if h.base_offset >= end && h.next_offset() > h.base_offset => {
                    end = h.next_offset();
                    pos += h.total_len() as u64;
                }
                _ => break,
            }
        }
        end
    }

    /// The header of the last batch of the committed log, walking by headers (with `pread`)
    /// from the last offset-index entry as [`Segment::end_by_walk`] does; `None` when the
    /// segment holds no batch that parses.
    pub fn last_header_by_walk(&self, log: &File) -> Option<BatchHeader> {
        let len = self.len();
        let mut pos = self.last_offset_entry().map_or(0, |(rel, pos)| {
            match self.header_from_file(log, u64::from(pos), len) {
                Some(h) if h.base_offset == self.base_offset + i64::from(rel) => u64::from(pos),
                _ => 0,
            }
        });
        let mut last: Option<BatchHeader> = None;
        while pos < len {
            match self.header_from_file(log, pos, len) {
                Some(h)
                    if last.is_none_or(|l| h.base_offset >= l.next_offset())
                        && h.next_offset() > h.base_offset =>
                {
                    pos += h.total_len() as u64;
                    last = Some(h);
                }
                _ => break,
            }
        }
        last
    }

    /// Where a truncation at `offset` cuts this segment: the position and header of the batch
    /// holding `offset`, or of the first batch after it (past a compacted gap); `None` when no
    /// batch of the segment holds `offset` or anything after it.
    pub fn cut_point(&self, offset: i64, contiguous: bool) -> Result<Option<(usize, BatchHeader)>> {
        let committed = self.committed();
        Ok(self
            .locate(offset, &committed, contiguous)?
            .map(|(_, pos, h)| (pos, h)))
    }

    /// The written index entries that stay valid when the `.log` is cut to `log_len` bytes and
    /// its last record is below `end`: offset entries for batches before the cut, time entries
    /// about records below `end` only. As bytes of (`.index`, `.timeindex`).
    pub fn index_prefixes(&self, log_len: u64, end: i64) -> (Vec<u8>, Vec<u8>) {
        let offsets = self.offset_entries();
        let keep = (0..offsets.len() / OFFSET_ENTRY)
            .take_while(|&i| u64::from(index::offset_entry(offsets, i).1) < log_len)
            .count();
        let times = self.time_entries();
        let keep_times = (0..times.len() / TIME_ENTRY)
            .take_while(|&i| self.base_offset + i64::from(index::time_entry(times, i).1) < end)
            .count();
        (
            offsets[..keep * OFFSET_ENTRY].to_vec(),
            times[..keep_times * TIME_ENTRY].to_vec(),
        )
    }

    /// The header of the batch at `pos` of `log`, read with `pread`, if it parses, lies wholly
    /// inside the first `len` bytes and has offsets inside this segment.
    pub fn header_from_file(&self, log: &File, pos: u64, len: u64) -> Option<BatchHeader> {
        let mut buf = [0u8; batch::HEADER_LEN];
        std::os::unix::fs::FileExt::read_exact_at(log, &mut buf, pos).ok()?;
        let h = BatchHeader::parse(&buf).ok()?;
        self.header_fits(&h, len.saturating_sub(pos)).ok()?;
        Some(h)
    }

    fn check_lost(&self, offset: i64, log_len: usize) -> Result<()> {
        match self.lost.get() {
            Some(&(from, to)) if (from..to).contains(&offset) => Err(self.corrupt(
                log_len,
                format!(
                    "offsets {from}..{to} are missing: the segment held them when it was sealed, but its file ends early"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Committed length of the `.log` file.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Largest record timestamp, -1 when empty.
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp.load(Ordering::Acquire)
    }

    /// Bytes of `.log` that may be mapped (the map's capacity).
    pub fn log_capacity(&self) -> u64 {
        self.log_map.len() as u64
    }

    /// Offset entries the map has room for.
    pub fn index_capacity_entries(&self) -> usize {
        (self.index_map.len() / OFFSET_ENTRY).min(self.time_map.len() / TIME_ENTRY)
    }

    pub fn index_entry_count(&self) -> usize {
        self.index_entries.load(Ordering::Acquire)
    }

    pub fn time_entry_count(&self) -> usize {
        self.time_entries.load(Ordering::Acquire)
    }

    /// Publishes what the writer appended: readers see it from now on.
    pub fn publish(&self, len: u64, index_entries: usize, time_entries: usize, max_ts: i64) {
        self.index_entries.store(index_entries, Ordering::Release);
        self.time_entries.store(time_entries, Ordering::Release);
        self.max_timestamp.fetch_max(max_ts, Ordering::AcqRel);
        self.len.store(len, Ordering::Release);
    }

    /// The committed bytes of the log.
    pub fn committed(&self) -> Bytes {
        self.log_map.slice(..usize_of(self.len()))
    }

    fn offset_entries(&self) -> &[u8] {
        let n = self.index_entry_count() * OFFSET_ENTRY;
        &self.index_map[..n.min(self.index_map.len())]
    }

    fn time_entries(&self) -> &[u8] {
        let n = self.time_entry_count() * TIME_ENTRY;
        &self.time_map[..n.min(self.time_map.len())]
    }

    /// The first offset-index entry, if any.
    pub fn first_offset_entry(&self) -> Option<(u32, u32)> {
        let e = self.offset_entries();
        (e.len() >= OFFSET_ENTRY).then(|| index::offset_entry(e, 0))
    }

    /// The first time-index entry, if any.
    pub fn first_time_entry(&self) -> Option<(i64, u32)> {
        let e = self.time_entries();
        index::checked_time_entry(e, 0)
    }

    /// The last offset-index entry, if any, as (relative offset, position).
    pub fn last_offset_entry(&self) -> Option<(u32, u32)> {
        let e = self.offset_entries();
        let n = e.len() / OFFSET_ENTRY;
        n.checked_sub(1).map(|i| index::offset_entry(e, i))
    }

    /// The last time-index entry, if any, as (timestamp, relative offset).
    pub fn last_time_entry(&self) -> Option<(i64, u32)> {
        let e = self.time_entries();
        let n = e.len() / TIME_ENTRY;
        index::checked_time_entry(e, n.checked_sub(1)?)
    }

    /// Where to start scanning for `offset`: the position of the last indexed batch at or before
    /// it, or 0. An entry that does not point at a batch with the expected offset is ignored (the
    /// index is a hint; the log is the truth).
    fn start_position(&self, offset: i64, log: &[u8]) -> usize {
        let rel = offset
            .saturating_sub(self.base_offset)
            .clamp(0, i64::from(u32::MAX)) as u32;
        match index::lookup_offset(self.offset_entries(), rel) {
            Some((entry_rel, pos)) => {
                let pos = pos as usize;
                match log.get(pos..).map(BatchHeader::parse) {
                    Some(Ok(h)) if h.base_offset == self.base_offset + i64::from(entry_rel) => pos,
                    _ => {
                        tracing::warn!(path = %self.index_path.display(), offset, "index entry does not match the log; scanning from the segment start");
                        0
                    }
                }
            }
            None => 0,
        }
    }

    fn corrupt(&self, position: usize, reason: impl Into<String>) -> StorageError {
        StorageError::corrupt(&self.log_path, position as u64, reason)
    }

    /// Header of the batch at `pos` of the committed bytes, checked to lie wholly inside them.
    fn header_at(&self, log: &[u8], pos: usize) -> Result<BatchHeader> {
        let h = BatchHeader::parse(&log[pos..])
            .map_err(|e| self.corrupt(pos, format!("bad batch header: {e}")))?;
        self.header_fits(&h, (log.len() - pos) as u64)
            .map_err(|reason| self.corrupt(pos, reason))?;
        Ok(h)
    }

    /// Whether a parsed header can be a batch of this segment with `room` bytes left from its
    /// position: it must end inside them and hold offsets of this segment.
    fn header_fits(&self, h: &BatchHeader, room: u64) -> std::result::Result<(), String> {
        if h.total_len() as u64 > room {
            return Err("batch runs past the end of the segment".into());
        }
        if h.base_offset < self.base_offset
            || h.last_offset() - self.base_offset > i64::from(u32::MAX)
        {
            return Err(format!(
                "batch offset {} outside the segment",
                h.base_offset
            ));
        }
        Ok(())
    }

    /// A batch whose base offset is not where the previous batch ended, in a segment whose
    /// batches follow each other with no gap: damage that no CRC covers (finding S2).
    fn jumped(&self, pos: usize, h: &BatchHeader, want: i64) -> StorageError {
        self.corrupt(
            pos,
            format!(
                "batch claims offset {} where {want} was expected (a damaged base offset)",
                h.base_offset
            ),
        )
    }

    /// A read found no batch holding its offset, after skipping the batch at `skipped` because
    /// its header said it ends before the offset. If that header is damaged, the batch may hold
    /// the offset after all: check its CRC, so that damage is reported instead of its records
    /// being skipped without a word. One batch's CRC, and only when a read lands in a gap.
    fn check_skipped(&self, log: &[u8], skipped: Option<(usize, BatchHeader)>) -> Result<()> {
        let Some((pos, h)) = skipped else {
            return Ok(());
        };
        let computed = batch::compute_crc(&log[pos..pos + h.total_len()]);
        if computed != h.crc {
            return Err(self.corrupt(
                pos,
                format!(
                    "CRC mismatch in batch at offset {}: stored {:#010x}, computed {computed:#010x}",
                    h.base_offset, h.crc
                ),
            ));
        }
        Ok(())
    }

    /// Finds the batch that holds `offset` (or the first one after it) in `log`, walking batch
    /// headers from the nearest index entry: (where the walk started, the batch's position, its
    /// header), or `None` when no batch of the segment holds `offset` or anything after it.
    /// Headers are checked to fit the segment (and to follow each other when `contiguous`);
    /// CRCs are not, except a skipped batch's when the walk lands in a gap.
    fn locate(
        &self,
        offset: i64,
        log: &[u8],
        contiguous: bool,
    ) -> Result<Option<(usize, usize, BatchHeader)>> {
        let mut pos = self.start_position(offset, log);
        let walked_from = pos;
        // Where the next batch must start (the batch at an index entry was checked against it).
        let mut expect = (contiguous && pos == 0).then_some(self.base_offset);
        // Skip batches that end before `offset`, reading only their headers.
        let mut skipped = None;
        loop {
            if pos >= log.len() {
                self.check_skipped(log, skipped)?;
                self.check_lost(offset, log.len())?;
                return Ok(None);
            }
            let h = self.header_at(log, pos)?;
            if let Some(want) = expect.filter(|&w| w != h.base_offset) {
                return Err(self.jumped(pos, &h, want));
            }
            expect = contiguous.then(|| h.next_offset());
            if h.last_offset() >= offset {
                if h.base_offset > offset {
                    self.check_skipped(log, skipped)?;
                }
                return Ok(Some((walked_from, pos, h)));
            }
            skipped = Some((pos, h));
            pos += h.total_len();
        }
    }

    /// The header of the batch holding `offset` (or the first after it), read without checking
    /// the batch's CRC: for estimates such as how old the record at an offset is, where reading
    /// and checking the whole batch would cost far more than the answer is worth.
    pub fn batch_header(&self, offset: i64, contiguous: bool) -> Result<Option<BatchHeader>> {
        let committed = self.committed();
        Ok(self
            .locate(offset, &committed, contiguous)?
            .map(|(_, _, h)| h))
    }

    /// Reads whole batches starting with the one that holds `offset`, up to `max_bytes` and up
    /// to the last batch that starts at or before `last` (the first batch is returned even if
    /// larger or later, so a reader always makes progress). `Ok(None)`
    /// when no batch of this segment holds `offset` or anything after it. Every batch returned
    /// passed its CRC check. `contiguous`: the segment was never compacted, so each batch must
    /// start where the one before it ended (and the first at the segment's base): a base offset
    /// that does not is damage the CRC cannot see (finding S2 of docs/fuzzing.md).
    pub fn read(
        &self,
        offset: i64,
        last: i64,
        max_bytes: usize,
        contiguous: bool,
    ) -> Result<Option<SegmentRead>> {
        let committed = self.committed();
        let log: &[u8] = &committed;
        let Some((walked_from, start, _)) = self.locate(offset, log, contiguous)? else {
            return Ok(None);
        };
        let mut end = start;
        let mut first_offset = None;
        let mut next_offset = offset;
        while end < log.len() {
            let h = self.header_at(log, end)?;
            let len = h.total_len();
            if first_offset.is_some() && (end + len - start > max_bytes || h.base_offset > last) {
                break;
            }
            let computed = batch::compute_crc(&log[end..end + len]);
            if computed != h.crc {
                return Err(self.corrupt(
                    end,
                    format!(
                        "CRC mismatch in batch at offset {}: stored {:#010x}, computed {computed:#010x}",
                        h.base_offset, h.crc
                    ),
                ));
            }
            if h.base_offset < next_offset && first_offset.is_some() {
                return Err(self.corrupt(end, "batch offsets go backwards"));
            }
            if contiguous && first_offset.is_some() && h.base_offset != next_offset {
                return Err(self.jumped(end, &h, next_offset));
            }
            first_offset.get_or_insert(h.base_offset);
            next_offset = h.next_offset();
            end += len;
        }
        // What this read brought into the map: the headers walked from the index entry and the
        // batches returned, and at least what one page fault maps. Counting only the bytes
        // returned would let many small reads at scattered offsets (a queue group handing out
        // records that came due one by one) keep the whole segment resident.
        let touched = ((end - walked_from) as u64).max(FAULT_AROUND_BYTES);
        if self
            .read_since_release
            .fetch_add(touched, Ordering::Relaxed)
            + touched
            >= RELEASE_EVERY_BYTES
        {
            // Consumers read through the map: without this, every page ever read would stay
            // in the broker's RSS. Pages still in use are mapped again on their next access.
            self.read_since_release.store(0, Ordering::Relaxed);
            self.log_mapping.release();
        }
        Ok(first_offset.map(|first_offset| SegmentRead {
            data: committed.slice(start..end),
            first_offset,
            next_offset,
        }))
    }

    /// The time-index entry a search for `ts` may start from ([`index::lookup_time`]), or
    /// none if an entry the search read fails its checksum: the walk in [`Segment::find_time`]
    /// then starts at the segment's first batch.
    fn time_hint(&self, ts: i64) -> Option<(i64, u32)> {
        index::lookup_time(self.time_entries(), ts).unwrap_or_else(|()| {
            tracing::warn!(path = %self.time_path.display(), ts, "damaged time index entry; scanning from the segment start");
            None
        })
    }

    /// The first offset in this segment whose record timestamp is >= `ts`, if any.
    pub fn find_time(&self, ts: i64, contiguous: bool) -> Result<Option<(i64, i64)>> {
        if self.max_timestamp() < ts {
            return Ok(None);
        }
        let committed = self.committed();
        let log: &[u8] = &committed;
        let mut hint = self.time_hint(ts);
        let mut pos = match hint {
            Some((_, rel)) => self.start_position(self.base_offset + i64::from(rel), log),
            None => 0,
        };
        // As in `read`: in a segment never compacted, each batch starts where the previous one
        // ended, so an answer is never taken from a batch whose base offset was changed.
        let mut expect = None;
        while pos < log.len() {
            let h = self.header_at(log, pos)?;
            let len = h.total_len();
            let want = if pos == 0 {
                Some(self.base_offset)
            } else {
                expect
            };
            if let Some(want) = want.filter(|&w| contiguous && w != h.base_offset) {
                return Err(self.jumped(pos, &h, want));
            }
            expect = Some(h.next_offset());
            // The hint says every record up to its offset is older than its timestamp; the
            // batch holding that offset must agree, or the index is damaged: start over from
            // the segment's first batch.
            if let Some((t, rel)) = hint
                && (h.base_offset..=h.last_offset()).contains(&(self.base_offset + i64::from(rel)))
            {
                hint = None;
                if h.max_timestamp > t {
                    tracing::warn!(path = %self.time_path.display(), ts, "time index entry contradicts the log; scanning from the segment start");
                    pos = 0;
                    continue;
                }
            }
            if h.max_timestamp >= ts {
                let batch = committed.slice(pos..pos + len);
                if batch::compute_crc(&batch) != h.crc {
                    return Err(self.corrupt(pos, "CRC mismatch"));
                }
                return match Records::new(batch) {
                    Ok(records) => {
                        for r in records {
                            let r = r.map_err(|e| self.corrupt(pos, e.to_string()))?;
                            if r.timestamp >= ts {
                                return Ok(Some((r.offset, r.timestamp)));
                            }
                        }
                        Ok(Some((h.base_offset, h.max_timestamp)))
                    }
                    // A compressed batch cannot be looked into here; its first offset is the
                    // earliest answer that cannot skip a matching record.
                    // Its base timestamp is the best known for that record.
                    Err(strom_protocol::batch::BatchError::Compressed(_)) => {
                        Ok(Some((h.base_offset, h.base_timestamp.max(ts))))
                    }
                    Err(e) => Err(self.corrupt(pos, e.to_string())),
                };
            }
            pos += len;
        }
        Ok(None)
    }
}

pub(crate) fn usize_of(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// The files of the segment being appended to. Only the log's writer holds this.
#[derive(Debug)]
pub(crate) struct ActiveFiles {
    /// The segment these files belong to, as readers see it (the last of the log's list).
    pub segment: Arc<Segment>,
    pub log: File,
    pub index: File,
    pub time: File,
    /// Bytes written to `.log` (equals the published length between appends).
    pub len: u64,
    pub index_entries: usize,
    pub time_entries: usize,
    /// Offset the next batch will get.
    pub next_offset: i64,
    pub builder: IndexBuilder,
    /// Wall-clock time (ms) of the segment's first append, for `segment.ms`.
    pub first_append_ms: Option<i64>,
    /// Bytes of `.log` from which no early write-back has been started yet (`writeback.bytes`).
    pub writeback_from: u64,
    /// Faults to inject into this segment's writes (tests only).
    pub faults: Option<IoFaults>,
}

/// Opens (creating if needed) a segment's three files for appending.
pub(crate) fn open_files(
    dir: &Path,
    base_offset: i64,
    create_new: bool,
    faults: Option<&IoFaults>,
) -> Result<(File, File, File)> {
    let open = |ext: &str| -> Result<File> {
        let path = file_path(dir, base_offset, ext);
        if create_new {
            io::check(faults, IoOp::Create).map_err(StorageError::io("create", &path))?;
        }
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(true);
        if create_new {
            o.create_new(true);
        }
        o.open(&path).map_err(StorageError::io("open", path))
    };
    let log = open(LOG_EXT)?;
    let rest = open(INDEX_EXT).and_then(|index| Ok((index, open(TIME_EXT)?)));
    match rest {
        Ok((index, time)) => Ok((log, index, time)),
        Err(e) => {
            if create_new {
                // Leave no half-created segment behind for the next roll to trip over.
                for ext in [LOG_EXT, INDEX_EXT] {
                    let _ = std::fs::remove_file(file_path(dir, base_offset, ext));
                }
            }
            Err(e)
        }
    }
}

/// One batch ready to be written: its bytes, and the offset and leader epoch it is stored with.
#[derive(Debug)]
pub(crate) struct Planned<'a> {
    pub bytes: &'a [u8],
    pub header: BatchHeader,
    pub base_offset: i64,
    pub leader_epoch: i32,
}

/// The first 16 bytes a batch is stored with: `base_offset`, the batch's own length field, and
/// `leader_epoch`. Neither patched field is covered by the CRC.
fn stored_prefix(p: &Planned<'_>) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&p.base_offset.to_be_bytes());
    out[8..12].copy_from_slice(&p.bytes[8..12]);
    out[12..].copy_from_slice(&p.leader_epoch.to_be_bytes());
    out
}

impl ActiveFiles {
    /// Writes `run` (batches that all fit this segment) with vectored writes, patching each
    /// batch's base offset and leader epoch on the way out, then the index entries they earn. If any of these
    /// writes fails or is short, all three files are cut back to their previous lengths and
    /// nothing is published: the call either stores the whole run or none of it. Only when a
    /// file cannot be cut back is the error [`StorageError::Poisoned`].
    pub fn write_run(&mut self, segment: &Segment, run: &[Planned<'_>]) -> Result<()> {
        let start_len = self.len;
        let prefixes: Vec<[u8; 16]> = run.iter().map(stored_prefix).collect();
        let mark = self.builder.mark();
        let mut pos = start_len;
        for p in run {
            let mut h = p.header;
            h.base_offset = p.base_offset;
            self.builder.on_batch(segment.base_offset, &h, pos as u32);
            pos += p.bytes.len() as u64;
        }
        let (index_at, time_at) = self.index_ends();
        let write_index = self.builder.offset_buf.len() >= INDEX_WRITE_GROUP * OFFSET_ENTRY;
        let written = self
            .write_log(&segment.log_path, run, &prefixes)
            .and_then(|()| {
                if write_index {
                    self.write_index_entries(segment)
                } else {
                    Ok(())
                }
            });
        if let Err(e) = written {
            self.builder.rewind(mark);
            // Cut off whatever part of the run reached the files, so that no torn batch and no
            // index entry past the published ones stays behind for a crash to find.
            let undo = self
                .log
                .set_len(start_len)
                .and_then(|()| self.log.seek(SeekFrom::Start(start_len)).map(|_| ()))
                .and_then(|()| self.time.set_len(time_at))
                .and_then(|()| self.index.set_len(index_at));
            if let Err(undo_err) = undo {
                tracing::error!(path = %segment.log_path.display(), error = %undo_err, "could not cut back a failed append");
                return Err(StorageError::Poisoned {
                    dir: segment.log_path.clone(),
                    reason: format!(
                        "append failed ({e}) and the files could not be cut back ({undo_err})"
                    ),
                });
            }
            return Err(e);
        }
        self.len = pos;
        if let Some(last) = run.last() {
            self.next_offset = last.base_offset + i64::from(last.header.last_offset_delta) + 1;
        }
        self.publish(segment);
        Ok(())
    }

    /// Offset-index entries made so far, written or still in memory.
    pub fn index_entries_made(&self) -> usize {
        self.index_entries + self.builder.offset_buf.len() / OFFSET_ENTRY
    }

    /// Byte lengths of the written parts of `.index` and `.timeindex`.
    fn index_ends(&self) -> (u64, u64) {
        (
            (self.index_entries * OFFSET_ENTRY) as u64,
            (self.time_entries * TIME_ENTRY) as u64,
        )
    }

    /// Writes the index entries kept in memory at the files' written ends. Time entries go
    /// first: an offset entry that survives a crash then always has the time entries made with
    /// it, which recovery relies on (see `log::open_active`). The counts move only when both
    /// writes succeed; on failure the files may hold bytes past them, which the next write
    /// overwrites or the caller cuts off.
    fn write_index_entries(&mut self, segment: &Segment) -> Result<()> {
        let (index_at, time_at) = self.index_ends();
        let b = &self.builder;
        for (file, path, buf, at) in [
            (&self.time, &segment.time_path, &b.time_buf, time_at),
            (&self.index, &segment.index_path, &b.offset_buf, index_at),
        ] {
            if !buf.is_empty() {
                io::write_at(self.faults.as_ref(), file, path, buf, at)?;
            }
        }
        self.index_entries += self.builder.offset_buf.len() / OFFSET_ENTRY;
        self.time_entries += self.builder.time_buf.len() / TIME_ENTRY;
        self.builder.offset_buf.clear();
        self.builder.time_buf.clear();
        Ok(())
    }

    /// Shows readers the log's length, the written index entries and the maximum timestamp.
    fn publish(&self, segment: &Segment) {
        segment.publish(
            self.len,
            self.index_entries,
            self.time_entries,
            self.builder.max_timestamp,
        );
    }

    fn write_log(&mut self, path: &Path, run: &[Planned<'_>], prefixes: &[[u8; 16]]) -> Result<()> {
        // Each batch is two slices: its stored first 16 bytes (new base offset and leader
        // epoch around its length), then everything after the epoch field.
        const IOV_BATCHES: usize = 512; // 1024 iovecs: Linux's IOV_MAX
        for (chunk, pres) in run.chunks(IOV_BATCHES).zip(prefixes.chunks(IOV_BATCHES)) {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(chunk.len() * 2);
            for (p, pre) in chunk.iter().zip(pres) {
                slices.push(IoSlice::new(pre));
                slices.push(IoSlice::new(&p.bytes[16..]));
            }
            io::write_all_vectored(self.faults.as_ref(), &self.log, path, &mut slices)?;
        }
        Ok(())
    }

    /// Writes the index entries still in memory and the final time entry, so the time index
    /// records the segment's maximum timestamp.
    pub fn seal(&mut self, segment: &Segment) -> Result<()> {
        if self.next_offset > segment.base_offset {
            self.builder
                .push_time_entry(segment.base_offset, self.next_offset - 1);
        }
        if !self.builder.offset_buf.is_empty() || !self.builder.time_buf.is_empty() {
            self.write_index_entries(segment)?;
            self.publish(segment);
        }
        Ok(())
    }
}

/// The outcome of checking a segment's batches from some position.
#[derive(Debug)]
pub(crate) struct Scan {
    /// End of the last good batch.
    pub valid_len: u64,
    /// Offset after the last good batch (or the starting offset if none).
    pub next_offset: i64,
    /// Why the scan stopped before the end of the bytes, if it did.
    pub stopped: Option<String>,
}

/// Checks every batch of `log` from `from` (length, magic, CRC, increasing offsets), feeding
/// `builder` as it goes, and stops at the first bad byte.
pub(crate) fn scan(
    log: &[u8],
    from: usize,
    segment_base: i64,
    mut next_offset: i64,
    contiguous: bool,
    builder: &mut IndexBuilder,
) -> Scan {
    let mut pos = from;
    let mut stopped = None;
    while pos < log.len() {
        let rest = &log[pos..];
        let total = match batch::peek_total_len(rest) {
            Ok(Some(t)) if t <= rest.len() => t,
            Ok(_) => {
                stopped = Some(format!("torn batch at byte {pos}"));
                break;
            }
            Err(e) => {
                stopped = Some(format!("bad batch at byte {pos}: {e}"));
                break;
            }
        };
        let h = match batch::validate(&rest[..total]) {
            Ok(h) => h,
            Err(e) => {
                stopped = Some(format!("bad batch at byte {pos}: {e}"));
                break;
            }
        };
        if h.base_offset < next_offset
            || (contiguous && h.base_offset != next_offset)
            || h.base_offset < segment_base
            || h.last_offset() - segment_base > i64::from(u32::MAX)
            || pos > u32::MAX as usize
        {
            stopped = Some(format!(
                "batch at byte {pos} has offset {} where {next_offset} or later was expected",
                h.base_offset
            ));
            break;
        }
        builder.on_batch(segment_base, &h, pos as u32);
        next_offset = h.next_offset();
        pos += total;
    }
    Scan {
        valid_len: pos as u64,
        next_offset,
        stopped,
    }
}

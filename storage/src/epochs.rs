//! The leader-epoch cache of a log: which leader epoch wrote which part of it, as a list of
//! (epoch, start offset) pairs, and its checkpoint file `leader-epoch-checkpoint` in the log's
//! directory. Replication needs it to find where a follower's log parts from its leader's
//! (Kafka's OffsetForLeaderEpoch and the diverging epoch of a fetch, KIP-101 and KIP-279): a
//! follower is truncated where its history and the leader's stop agreeing, never to a high
//! watermark.
//!
//! This module owns the rules (entries strictly increasing in both epoch and start offset; a
//! new entry only for a newer epoch; the lookup; trimming from either end), the file format, and
//! rebuilding the cache from the batch headers when the file is missing or damaged. The log
//! ([`crate::Log`], in `replica.rs`) decides when entries are made and in which order the file
//! and the data are written.
//!
//! The file is text, Kafka's layout plus a checksum line:
//!
//! ```text
//! 1              version
//! 2              number of entries
//! 0 0            epoch start_offset, one line per entry, in order
//! 3 1200
//! crc 5d3a1f0e   CRC-32 (IEEE) of every byte above this line, 8 hex digits
//! ```
//!
//! It is replaced whole and atomically (temp file, rename), only when the entries changed, and
//! **without an fsync**: a change of leader epoch must not stall a partition's writer on two
//! fsyncs (at a failover thousands of partitions change epoch at once). The file is only a
//! cache of what the batches say: after a crash (no clean-shutdown marker) it is checked against
//! the log when the log opens (entries past the log's end dropped; rebuilt from the batch headers
//! when it is missing, damaged, or lacks the epoch of the last batch), and a clean close fsyncs
//! it before the marker vouches for the directory ([`EpochCache::sync`]).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Result, StorageError};
use crate::io::{self, IoFaults};
use crate::segment::Segment;

/// The checkpoint's name in a log directory.
pub(crate) const FILE: &str = "leader-epoch-checkpoint";
const VERSION: &str = "1";
/// More entries than this in a file is damage, not history: one entry per leader election that
/// wrote to the partition within its retention.
const MAX_ENTRIES: usize = 1 << 20;
/// A file longer than this is damaged (room for `MAX_ENTRIES` of the longest lines).
const MAX_FILE_BYTES: u64 = 64 + MAX_ENTRIES as u64 * 32;

/// The answer of a lookup that finds no epoch: Kafka's UNDEFINED_EPOCH and offset.
pub(crate) const UNDEFINED: (i32, i64) = (-1, -1);

/// One entry: `epoch` wrote the log from `start_offset` on, up to the next entry's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

/// The cache of one log. See the module docs.
#[derive(Debug)]
pub(crate) struct EpochCache {
    entries: Vec<EpochEntry>,
    dir: PathBuf,
    /// The file may not hold `entries` (they changed, or a write of them failed): the next
    /// [`EpochCache::persist`] writes it.
    stale: bool,
    /// The file was written since its last fsync.
    unsynced: bool,
}

impl EpochCache {
    /// An empty cache for the log in `dir` (nothing read or written).
    #[cfg(test)]
    fn empty(dir: &Path) -> Self {
        Self {
            entries: Vec::new(),
            dir: dir.to_path_buf(),
            stale: false,
            unsynced: false,
        }
    }

    #[cfg(test)]
    fn with(entries: &[(i32, i64)]) -> Self {
        let mut c = Self::empty(Path::new("/nonexistent"));
        for &(epoch, start) in entries {
            c.assign(epoch, start).unwrap();
        }
        c
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// The newest epoch, if any.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.epoch)
    }

    /// Whether the file may differ from the entries.
    #[cfg(test)]
    fn is_stale(&self) -> bool {
        self.stale
    }

    /// Records that `epoch` starts at `start_offset`. Returns whether the entries changed.
    ///
    /// A newer epoch than the latest gets a new entry; if the latest starts at the same offset
    /// it covers no record and is replaced. The latest epoch again, at or after its start, is
    /// nothing new. An older epoch, an epoch starting before the latest one's start, or a
    /// negative epoch or offset is refused with a typed error and changes nothing.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> Result<bool> {
        if epoch < 0 {
            return Err(StorageError::InvalidLeaderEpoch { epoch });
        }
        if start_offset < 0 {
            return Err(StorageError::OffsetOutOfRange {
                offset: start_offset,
                start: 0,
                end: i64::MAX,
            });
        }
        let Some(&latest) = self.entries.last() else {
            self.push(epoch, start_offset);
            return Ok(true);
        };
        if epoch < latest.epoch {
            return Err(StorageError::StaleLeaderEpoch {
                epoch,
                latest: latest.epoch,
            });
        }
        if start_offset < latest.start_offset {
            return Err(StorageError::EpochStartOutOfOrder {
                epoch,
                start_offset,
                latest: latest.epoch,
                latest_start: latest.start_offset,
            });
        }
        if epoch == latest.epoch {
            return Ok(false);
        }
        if start_offset == latest.start_offset {
            self.entries.pop();
        }
        self.push(epoch, start_offset);
        Ok(true)
    }

    fn push(&mut self, epoch: i32, start_offset: i64) {
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        self.stale = true;
    }

    /// OffsetForLeaderEpoch: for `requested`, the largest epoch at or below it that the log
    /// holds, and where that epoch ends: the start of the next epoch, or `log_end` for the
    /// latest. [`UNDEFINED`] when the log holds no epoch that old (or none at all), or for a
    /// negative `requested`.
    ///
    /// Kafka answers UNDEFINED also for an epoch above the latest; here that is the latest and
    /// the log end, by the same rule, which tells a follower holding a newer epoch where its
    /// leader's history ends (what `broker/src/core/replication/divergence.rs` expects).
    pub fn end_offset_for(&self, requested: i32, log_end: i64) -> (i32, i64) {
        if requested < 0 {
            return UNDEFINED;
        }
        let above = self.entries.partition_point(|e| e.epoch <= requested);
        let Some(floor) = above.checked_sub(1).map(|i| self.entries[i]) else {
            return UNDEFINED;
        };
        let end = self
            .entries
            .get(above)
            .map_or(log_end, |next| next.start_offset);
        (floor.epoch, end)
    }

    /// Drops the entries that start at or after `end_offset` (the log was cut there). Returns
    /// whether anything changed.
    pub fn truncate_from_end(&mut self, end_offset: i64) -> bool {
        let keep = self
            .entries
            .partition_point(|e| e.start_offset < end_offset);
        self.cut(keep)
    }

    /// Drops the entries wholly before `start_offset` (the log's new start) and moves the start
    /// of the one covering it up to it. Returns whether anything changed.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> bool {
        // Entries at or below the new start: the last of them covers it.
        let at_or_below = self
            .entries
            .partition_point(|e| e.start_offset <= start_offset);
        let Some(covering) = at_or_below.checked_sub(1) else {
            return false;
        };
        let moved = self.entries[covering].start_offset != start_offset;
        if covering == 0 && !moved {
            return false;
        }
        self.entries.drain(..covering);
        self.entries[0].start_offset = start_offset;
        self.stale = true;
        true
    }

    fn cut(&mut self, keep: usize) -> bool {
        if keep >= self.entries.len() {
            return false;
        }
        self.entries.truncate(keep);
        self.stale = true;
        true
    }

    /// Keeps only what a log holding `[start, end)` can have: the entries trimmed to its start,
    /// then those at or past its end dropped (an entry there covers no record).
    pub fn trim_to(&mut self, start: i64, end: i64) -> bool {
        let a = self.truncate_from_start(start);
        let b = self.truncate_from_end(end);
        a || b
    }

    /// Puts back entries saved before a change whose write to the log failed. The file may
    /// hold the change: it is rewritten before the log is written again.
    pub fn restore(&mut self, entries: Vec<EpochEntry>) {
        self.entries = entries;
        self.stale = true;
    }

    /// Writes the file if it may differ from the entries. A failure leaves the cache stale, so
    /// the next call writes it again.
    pub fn persist(&mut self, faults: Option<&IoFaults>) -> Result<()> {
        if !self.stale {
            return Ok(());
        }
        write(&self.dir, &self.entries, faults)?;
        self.stale = false;
        self.unsynced = true;
        tracing::debug!(dir = %self.dir.display(), entries = ?self.entries.last(), "leader-epoch checkpoint written");
        Ok(())
    }

    /// Makes the file durable if it was written since its last fsync (and writes it first if it
    /// is stale): called by a clean close, before the clean-shutdown marker.
    pub fn sync(&mut self, faults: Option<&IoFaults>) -> Result<()> {
        self.persist(faults)?;
        if !self.unsynced {
            return Ok(());
        }
        let path = self.dir.join(FILE);
        match File::open(&path) {
            Ok(f) => io::sync_file(faults, &f, &path)?,
            // Never written (a log that never had an epoch): nothing to make durable.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("open", &path)(e)),
        }
        io::sync_dir(&self.dir, faults)?;
        self.unsynced = false;
        Ok(())
    }

    /// The cache of a log just loaded from `dir`, holding `[start, end)` in `segments`: the
    /// checkpoint file, trimmed to the log; rebuilt from the batch headers when the file is
    /// missing or damaged, or (when `check_tail`, after a crash) when the last batch carries an
    /// epoch newer than the file knows. Writes the file if that changed it.
    pub fn open(
        dir: &Path,
        segments: &[Arc<Segment>],
        start: i64,
        end: i64,
        check_tail: bool,
        faults: Option<&IoFaults>,
    ) -> Result<Self> {
        let path = dir.join(FILE);
        let (entries, stale) = match read(&path) {
            Ok(Some(entries)) => {
                let latest = entries.last().map(|e| e.epoch);
                match check_tail.then(|| tail_epoch(segments)).flatten() {
                    Some(tail) if latest.is_none_or(|l| tail > l) => {
                        tracing::warn!(path = %path.display(), tail, ?latest, "the log's last batch has a leader epoch the checkpoint lacks; rebuilding it from the log");
                        (rebuild(segments)?, true)
                    }
                    _ => (entries, false),
                }
            }
            Ok(None) => {
                // Logs written before leader epochs were recorded: rebuilt once, and the file
                // written even if empty, so that the next open does not scan again. A new, empty
                // log needs no file until its first append.
                let entries = rebuild(segments)?;
                let stored = segments.iter().any(|s| s.len() > 0);
                if stored {
                    tracing::info!(path = %path.display(), entries = entries.len(), "no leader-epoch checkpoint; rebuilt from the log");
                }
                (entries, stored)
            }
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "damaged leader-epoch checkpoint; rebuilding it from the log");
                (rebuild(segments)?, true)
            }
        };
        let mut cache = Self {
            entries,
            dir: dir.to_path_buf(),
            stale,
            unsynced: false,
        };
        cache.trim_to(start, end);
        cache.persist(faults)?;
        Ok(cache)
    }
}

/// The epoch of the log's last batch, if it has one that is set (>= 0).
fn tail_epoch(segments: &[Arc<Segment>]) -> Option<i32> {
    let seg = segments.iter().rev().find(|s| s.len() > 0)?;
    let file = File::open(&seg.log_path).ok()?;
    seg.last_header_by_walk(&file)
        .map(|h| h.partition_leader_epoch)
        .filter(|&e| e >= 0)
}

/// The entries the log's batches say: a new one wherever a batch carries an epoch (>= 0) newer
/// than every batch before it. Batches without one (-1, as producers send them) start nothing.
/// Reads each batch's header with `pread`, so no mapped page stays resident.
pub(crate) fn rebuild(segments: &[Arc<Segment>]) -> Result<Vec<EpochEntry>> {
    let mut entries: Vec<EpochEntry> = Vec::new();
    for seg in segments {
        let file = File::open(&seg.log_path).map_err(StorageError::io("open", &seg.log_path))?;
        let len = seg.len();
        let mut pos = 0u64;
        while let Some(h) = seg.header_from_file(&file, pos, len) {
            let epoch = h.partition_leader_epoch;
            if epoch >= 0
                && entries.last().is_none_or(|l| epoch > l.epoch)
                && entries
                    .last()
                    .is_none_or(|l| h.base_offset > l.start_offset)
            {
                entries.push(EpochEntry {
                    epoch,
                    start_offset: h.base_offset,
                });
            }
            pos += h.total_len() as u64;
        }
    }
    Ok(entries)
}

/// The file's text for `entries`.
fn encode(entries: &[EpochEntry]) -> String {
    use std::fmt::Write;
    let mut s = format!("{VERSION}\n{}\n", entries.len());
    for e in entries {
        let _ = writeln!(s, "{} {}", e.epoch, e.start_offset);
    }
    let crc = crc32fast::hash(s.as_bytes());
    let _ = writeln!(s, "crc {crc:08x}");
    s
}

/// Parses the file's text; `Err` says why it is damaged. Nothing is allocated beyond what the
/// text holds: the count is checked against `MAX_ENTRIES` and the lines present first.
fn decode(text: &str) -> std::result::Result<Vec<EpochEntry>, String> {
    let body_len = text
        .trim_end_matches('\n')
        .rfind('\n')
        .map(|i| i + 1)
        .ok_or("too short")?;
    let (body, crc_line) = text.split_at(body_len);
    let crc = crc_line
        .trim_end()
        .strip_prefix("crc ")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or("no checksum line")?;
    if crc32fast::hash(body.as_bytes()) != crc {
        return Err("checksum mismatch".into());
    }
    let mut lines = body.lines();
    if lines.next() != Some(VERSION) {
        return Err("unknown version".into());
    }
    let count: usize = lines
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or("unreadable entry count")?;
    let present = body.lines().count().saturating_sub(2);
    if count > MAX_ENTRIES || count != present {
        return Err(format!("{count} entries announced, {present} present"));
    }
    let mut entries: Vec<EpochEntry> = Vec::with_capacity(count);
    for line in lines {
        let (epoch, start) = line.split_once(' ').ok_or("unreadable entry")?;
        let (Ok(epoch), Ok(start_offset)) = (epoch.parse::<i32>(), start.parse::<i64>()) else {
            return Err(format!("unreadable entry {line:?}"));
        };
        let ordered = entries
            .last()
            .is_none_or(|l| epoch > l.epoch && start_offset > l.start_offset);
        if epoch < 0 || start_offset < 0 || !ordered {
            return Err(format!("entry {line:?} is out of order or negative"));
        }
        entries.push(EpochEntry {
            epoch,
            start_offset,
        });
    }
    Ok(entries)
}

/// Reads the file: `Ok(None)` if there is none, `Err` (why) if it cannot be used. An unreadable
/// file is treated as damaged: the log's batches are the truth, and it is rebuilt from them.
fn read(path: &Path) -> std::result::Result<Option<Vec<EpochEntry>>, String> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open: {e}")),
    };
    let len = file
        .metadata()
        .map_err(|e| format!("cannot stat: {e}"))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(format!("{len} bytes, more than {MAX_FILE_BYTES}"));
    }
    let mut text = String::with_capacity(len as usize);
    file.take(MAX_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    decode(&text).map(Some)
}

/// Replaces the file with `entries`, atomically and durably.
fn write(dir: &Path, entries: &[EpochEntry], faults: Option<&IoFaults>) -> Result<()> {
    io::replace_in(&dir.join(FILE), encode(entries).as_bytes(), faults)
}

/// Loads the file of `dir` as it is (no rebuild), `Ok(None)` if missing or damaged: for a
/// truncation finished at open, before the log is loaded.
pub(crate) fn read_raw(dir: &Path) -> Option<Vec<EpochEntry>> {
    read(&dir.join(FILE)).ok().flatten()
}

/// Writes `entries` as the file of `dir`: for a truncation finished at open.
pub(crate) fn write_raw(
    dir: &Path,
    entries: &[EpochEntry],
    faults: Option<&IoFaults>,
) -> Result<()> {
    write(dir, entries, faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(c: &EpochCache) -> Vec<(i32, i64)> {
        c.entries()
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect()
    }

    #[test]
    fn a_new_entry_only_for_a_newer_epoch() {
        let mut c = EpochCache::empty(Path::new("/x"));
        assert!(c.assign(2, 6).unwrap());
        assert!(
            !c.assign(2, 6).unwrap(),
            "the same entry again changes nothing"
        );
        assert!(
            !c.assign(2, 9).unwrap(),
            "the latest epoch, later: nothing new"
        );
        assert!(c.assign(3, 8).unwrap());
        assert!(c.assign(4, 11).unwrap());
        assert_eq!(pairs(&c), [(2, 6), (3, 8), (4, 11)]);
        assert!(c.is_stale());
    }

    #[test]
    fn older_epochs_and_earlier_starts_are_refused_and_change_nothing() {
        let mut c = EpochCache::with(&[(2, 6), (4, 11)]);
        let e = c.assign(3, 20).unwrap_err();
        assert!(
            matches!(
                e,
                StorageError::StaleLeaderEpoch {
                    epoch: 3,
                    latest: 4
                }
            ),
            "{e}"
        );
        let e = c.assign(5, 10).unwrap_err();
        assert!(
            matches!(
                e,
                StorageError::EpochStartOutOfOrder {
                    epoch: 5,
                    start_offset: 10,
                    latest: 4,
                    latest_start: 11
                }
            ),
            "{e}"
        );
        let e = c.assign(4, 10).unwrap_err();
        assert!(
            matches!(e, StorageError::EpochStartOutOfOrder { .. }),
            "{e}"
        );
        let e = c.assign(-1, 30).unwrap_err();
        assert!(
            matches!(e, StorageError::InvalidLeaderEpoch { epoch: -1 }),
            "{e}"
        );
        assert!(c.assign(7, -1).is_err());
        assert_eq!(pairs(&c), [(2, 6), (4, 11)]);
    }

    #[test]
    fn a_newer_epoch_at_the_latest_start_replaces_it() {
        // Epoch 4 began at 11 but wrote nothing there; epoch 5 begins at the same offset.
        let mut c = EpochCache::with(&[(2, 6), (4, 11)]);
        assert!(c.assign(5, 11).unwrap());
        assert_eq!(pairs(&c), [(2, 6), (5, 11)]);
    }

    #[test]
    fn end_offset_for_follows_offset_for_leader_epoch() {
        let empty = EpochCache::empty(Path::new("/x"));
        assert_eq!(empty.end_offset_for(0, 10), UNDEFINED, "nothing recorded");
        assert_eq!(empty.end_offset_for(-1, 10), UNDEFINED);

        let c = EpochCache::with(&[(0, 10), (2, 13), (4, 17)]);
        // The latest epoch ends at the log end.
        assert_eq!(c.end_offset_for(4, 20), (4, 20));
        // An epoch in between: itself, ending where the next one starts.
        assert_eq!(c.end_offset_for(0, 20), (0, 13));
        assert_eq!(c.end_offset_for(2, 20), (2, 17));
        // An epoch the log never had: the largest below it, ending at the next one's start.
        assert_eq!(c.end_offset_for(1, 20), (0, 13));
        assert_eq!(c.end_offset_for(3, 20), (2, 17));
        // Newer than any: the latest and the log end.
        assert_eq!(c.end_offset_for(9, 20), (4, 20));
        // Older than the first, or undefined: UNDEFINED.
        assert_eq!(c.end_offset_for(-1, 20), UNDEFINED);
        let late = EpochCache::with(&[(5, 11), (6, 12)]);
        assert_eq!(late.end_offset_for(4, 20), UNDEFINED);
        assert_eq!(late.end_offset_for(5, 20), (5, 12));
    }

    #[test]
    fn truncate_from_end_drops_entries_starting_at_or_after_it() {
        let mut c = EpochCache::with(&[(2, 6), (3, 8), (4, 11)]);
        assert!(
            !c.truncate_from_end(12),
            "past the last start: nothing to drop"
        );
        assert!(c.truncate_from_end(11));
        assert_eq!(pairs(&c), [(2, 6), (3, 8)]);
        assert!(c.truncate_from_end(9) || pairs(&c) == [(2, 6), (3, 8)]);
        assert_eq!(pairs(&c), [(2, 6), (3, 8)]);
        assert!(c.truncate_from_end(8));
        assert_eq!(pairs(&c), [(2, 6)]);
        assert!(c.truncate_from_end(0));
        assert!(pairs(&c).is_empty());
        assert!(!c.truncate_from_end(0));
    }

    #[test]
    fn truncate_from_start_drops_older_entries_and_moves_the_covering_one() {
        let base = [(2, 6), (3, 8), (4, 11)];
        let cases: [(i64, &[(i32, i64)]); 6] = [
            (5, &[(2, 6), (3, 8), (4, 11)]),
            (6, &[(2, 6), (3, 8), (4, 11)]),
            (8, &[(3, 8), (4, 11)]),
            (9, &[(3, 9), (4, 11)]),
            (11, &[(4, 11)]),
            (12, &[(4, 12)]),
        ];
        for (start, want) in cases {
            let mut c = EpochCache::with(&base);
            let changed = c.truncate_from_start(start);
            assert_eq!(pairs(&c), want, "start {start}");
            assert_eq!(changed, want != base, "start {start}");
        }
    }

    #[test]
    fn trimming_to_an_empty_log_at_its_start_keeps_nothing() {
        let mut c = EpochCache::with(&[(2, 6), (3, 8)]);
        assert!(c.trim_to(20, 20));
        assert!(pairs(&c).is_empty());
        let mut c = EpochCache::with(&[(2, 6), (3, 8)]);
        assert!(c.trim_to(7, 10));
        assert_eq!(pairs(&c), [(2, 7), (3, 8)]);
    }

    #[test]
    fn the_file_round_trips_and_damage_is_reported() {
        let entries = EpochCache::with(&[(0, 0), (3, 1200), (7, 99_000)]).entries;
        let text = encode(&entries);
        assert!(
            text.starts_with("1\n3\n0 0\n3 1200\n7 99000\ncrc "),
            "{text}"
        );
        assert_eq!(decode(&text).unwrap(), entries);
        assert_eq!(decode(&encode(&[])).unwrap(), []);
        // Every damage is found, and none panics.
        let damaged = [
            String::new(),
            "1\n".into(),
            text.replace("3 1200", "3 1201"),
            text.replacen("1\n", "0\n", 1),
            text[..text.len() - 3].to_string(),
            "garbage".into(),
        ];
        for d in &damaged {
            assert!(decode(d).is_err(), "{d:?}");
        }
        // A count that does not match the lines, however large, is refused before anything
        // is allocated for it, even with a valid checksum.
        for count in ["2", "4", "18446744073709551615", "99999999999999999999999"] {
            let body = format!("1\n{count}\n0 0\n3 1200\n7 99000\n");
            let forged = format!("{body}crc {:08x}\n", crc32fast::hash(body.as_bytes()));
            assert!(decode(&forged).is_err(), "count {count}");
        }
        // Out of order or negative entries, with a valid checksum.
        for lines in [
            "3 0\n2 5\n",
            "1 5\n2 5\n",
            "-1 0\n",
            "0 -4\n",
            "1 x\n",
            "1\n",
        ] {
            let n = lines.lines().count();
            let body = format!("1\n{n}\n{lines}");
            let forged = format!("{body}crc {:08x}\n", crc32fast::hash(body.as_bytes()));
            assert!(decode(&forged).is_err(), "{lines:?}");
        }
    }

    #[test]
    fn persist_writes_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = EpochCache::empty(dir.path());
        c.persist(None).unwrap();
        assert!(
            !dir.path().join(FILE).exists(),
            "nothing changed, nothing written"
        );
        c.assign(1, 0).unwrap();
        c.persist(None).unwrap();
        assert_eq!(read_raw(dir.path()).unwrap(), c.entries());
        std::fs::remove_file(dir.path().join(FILE)).unwrap();
        c.assign(1, 5).unwrap();
        c.persist(None).unwrap();
        assert!(
            !dir.path().join(FILE).exists(),
            "an unchanged cache is not written"
        );
    }
}

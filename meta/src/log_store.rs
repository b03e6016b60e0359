//! The metadata quorum's Raft log: openraft's [`RaftLogStorage`] on strom's own files. This module
//! owns a log directory:
//!
//! - `raft.log`: an append-only file of [`crate::durable`] records, each one operation on the
//!   log: an entry, a truncation marker ("entries from index N on are gone"), a purge marker
//!   ("entries up to log id L are gone") or the committed log id. Opening replays the operations
//!   in order, so the log after a restart is exactly the log the operations built;
//! - `vote`: the vote, one record, replaced atomically ([`crate::durable::replace_file`]).
//!
//! Every entry also lives in memory (the metadata log holds thousands of entries, not millions):
//! reads never touch the disk, and [`LogReader`] clones share the map. [`LogStore::size`] counts
//! the encoded bytes of the entries held, so the controller can snapshot and purge by size as
//! well as by count (one change of leadership over thousands of partitions is one large entry).
//!
//! **Writes.** All file writes go through one writer thread fed by a channel, in call order, which
//! is the serialization openraft asks for (a vote is never written before an earlier append, nor
//! an append before an earlier truncation). The thread takes every request waiting in the
//! channel, writes their log records with one `write` and one `fdatasync` (grouped fsync), then
//! reports each append to openraft with `log_io_completed`, in order. An append changes the
//! in-memory log before it returns (so its entries are readable at once) and is reported
//! durable only after the fsync. A vote is written after everything queued before it is durable,
//! and `save_vote` returns once the vote file is replaced. Any write or fsync failure poisons the
//! writer: every later request fails (the file's state is unknown after a failed fsync), and
//! reopening the store runs recovery.
//!
//! **Truncate and purge** append a marker record and wait until it is durable. A crash before
//! that leaves the log as it was before the call, which is a state openraft accepts (the call
//! never returned); a crash after replays the marker. Both are rare, so waiting costs nothing.
//!
//! **Committed** is a record too, written behind the entries it names but not fsynced on its own:
//! it becomes durable with the next fsync. A crash can lose only the newest committed ids, and an
//! older committed id is always correct (openraft re-applies less at startup and learns the rest
//! from the leader); because of the ordering it can never name an entry the recovered log lacks.
//!
//! **Compaction.** Superseded records (purged or truncated entries, old markers and committed ids)
//! stay in the file until they outnumber the live ones (and at least
//! [`LogStoreOptions::compact_min_dead_records`]), or their bytes outweigh the live entries' (and
//! at least [`LogStoreOptions::compact_min_dead_bytes`]); then, after a purge or truncate or at open, the
//! file is rewritten atomically with just the purge marker, the live entries and the committed id.
//!
//! **Appends** must be consecutive within a call (else the call is refused). Entries at or below
//! the purged log id are skipped: they are committed and covered by the state machine's snapshot.
//! Entries already stored with the same log id are skipped too; an append that starts at or below
//! the last stored index with a different log id first truncates there (openraft itself always
//! truncates a conflicting suffix first). An append that leaves a gap after the last entry is
//! taken with a warning. openraft never makes these calls, but its storage test suite does.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError, Vote};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::durable::{self, Completion, GroupWriter, MAX_RECORD_LEN, WriteOp, WriteRequest};
use crate::error::{Error, logs_error, vote_error};
use crate::types::{BrokerId, TypeConfig};

/// The log file's name in the log directory.
pub const LOG_FILE: &str = "raft.log";
/// The vote file's name in the log directory.
pub const VOTE_FILE: &str = "vote";

type LogEntry = Entry<TypeConfig>;
type EntryMap = BTreeMap<u64, LogEntry>;
/// The encoded size of each entry held, by index.
type SizeMap = BTreeMap<u64, u64>;

/// Tuning of a [`LogStore`].
#[derive(Debug, Clone)]
pub struct LogStoreOptions {
    /// Rewrite the log file once it holds at least this many superseded records (and more
    /// superseded than live ones).
    pub compact_min_dead_records: u64,
    /// Rewrite the log file once it holds at least this many bytes of superseded records (and
    /// more superseded bytes than live ones): a few large entries purged behind a snapshot
    /// must not stay in every start's replay.
    pub compact_min_dead_bytes: u64,
    /// The most requests the writer thread groups under one fsync.
    pub max_group: usize,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        Self {
            compact_min_dead_records: 1024,
            compact_min_dead_bytes: 1 << 20,
            max_group: 256,
        }
    }
}

/// One operation on the log, as stored in a record (entries are borrowed when writing).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LogRecord<'a> {
    Entry(Cow<'a, LogEntry>),
    Truncate { since: u64 },
    Purge { upto: LogId<BrokerId> },
    Committed { log_id: Option<LogId<BrokerId>> },
}

impl LogRecord<'_> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        durable::encode_json(self, "a metadata log record", out)
    }
}

/// The log's state as the records of the file build it, at open.
#[derive(Debug, Default)]
struct Replayed {
    entries: EntryMap,
    sizes: SizeMap,
    last_purged: Option<LogId<BrokerId>>,
    committed: Option<LogId<BrokerId>>,
}

impl Replayed {
    fn apply(
        &mut self,
        record: LogRecord<'_>,
        len: u64,
        path: &Path,
        position: u64,
    ) -> Result<(), Error> {
        match record {
            LogRecord::Entry(entry) => {
                let index = entry.log_id.index;
                if self.last_purged.is_some_and(|p| index <= p.index) {
                    return Err(Error::corrupt(
                        path,
                        position,
                        format!("entry {index} is at or below the purged prefix"),
                    ));
                }
                self.entries.insert(index, entry.into_owned());
                self.sizes.insert(index, len);
            }
            LogRecord::Truncate { since } => {
                drop(self.entries.split_off(&since));
                drop(self.sizes.split_off(&since));
            }
            LogRecord::Purge { upto } => {
                purge_map(&mut self.entries, upto.index);
                purge_map(&mut self.sizes, upto.index);
                self.last_purged = self.last_purged.max(Some(upto));
            }
            LogRecord::Committed { log_id } => self.committed = log_id,
        }
        Ok(())
    }
}

/// Drops the entries at or below `index`.
fn purge_map<V>(entries: &mut BTreeMap<u64, V>, index: u64) {
    *entries = match index.checked_add(1) {
        Some(keep_from) => entries.split_off(&keep_from),
        None => BTreeMap::new(),
    };
}

/// The entries of `map` in `range` (empty for an empty or inverted range).
fn read_range(map: &RwLock<EntryMap>, range: impl RangeBounds<u64>) -> Vec<LogEntry> {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => match s.checked_add(1) {
            Some(s) => s,
            None => return Vec::new(),
        },
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.checked_add(1),
        Bound::Excluded(e) => Some(*e),
        Bound::Unbounded => None,
    };
    let map = map.read().unwrap_or_else(PoisonError::into_inner);
    match end {
        Some(end) if end <= start => Vec::new(),
        Some(end) => map.range(start..end).map(|(_, e)| e.clone()).collect(),
        None => map.range(start..).map(|(_, e)| e.clone()).collect(),
    }
}

/// A read handle on the log's entries, for openraft's replication tasks. Cheap to clone; reads
/// see every entry appended so far (durable or not) and never touch the disk.
#[derive(Debug, Clone)]
pub struct LogReader {
    entries: Arc<RwLock<EntryMap>>,
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, StorageError<BrokerId>> {
        Ok(read_range(&self.entries, range))
    }
}

/// The Raft log of the metadata quorum (see the module documentation for the files and the
/// guarantees).
#[derive(Debug)]
pub struct LogStore {
    dir: PathBuf,
    entries: Arc<RwLock<EntryMap>>,
    /// The encoded size of each entry in `entries`, and their sum.
    sizes: SizeMap,
    size: Arc<AtomicU64>,
    last_purged: Option<LogId<BrokerId>>,
    vote: Option<Vote<BrokerId>>,
    committed: Option<LogId<BrokerId>>,
    /// How many records the log file holds (live and superseded), counting queued writes.
    file_records: u64,
    /// How many bytes those records take.
    file_bytes: u64,
    options: LogStoreOptions,
    /// The writer thread; `None` only while opening.
    writer: Option<GroupWriter>,
}

impl LogStore {
    /// Opens (creating it if needed) the log in `dir`, with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with(dir, LogStoreOptions::default())
    }

    /// Opens (creating it if needed) the log in `dir`: reads the vote, replays the log file,
    /// cuts a torn last record off it, compacts it if due and starts the writer thread. Blocks on
    /// file I/O: call it at startup or from `spawn_blocking`.
    pub fn open_with(dir: impl AsRef<Path>, options: LogStoreOptions) -> Result<Self, Error> {
        let dir = dir.as_ref().to_path_buf();
        durable::create_dir_durable(&dir)?;
        let vote_path = dir.join(VOTE_FILE);
        let vote: Option<Vote<BrokerId>> = durable::read_single_json(&vote_path, MAX_RECORD_LEN)?;

        let log_path = dir.join(LOG_FILE);
        let mut replayed = Replayed::default();
        let mut file_records = 0;
        let mut file_bytes = 0;
        let existed = match durable::read_file(&log_path)? {
            Some(buf) => {
                let scanned = durable::scan(&buf, MAX_RECORD_LEN, &log_path)?;
                for record in &scanned.records {
                    let payload = buf.get(record.payload.clone()).unwrap_or_default();
                    let op = durable::decode_json(payload, &log_path, record.position)?;
                    let len = (durable::HEADER_LEN + payload.len()) as u64;
                    replayed.apply(op, len, &log_path, record.position)?;
                }
                file_records = scanned.records.len() as u64;
                file_bytes = scanned.valid_len;
                if scanned.is_torn() {
                    durable::truncate_file(&log_path, scanned.valid_len)?;
                }
                true
            }
            None => false,
        };

        let size = Arc::new(AtomicU64::new(replayed.sizes.values().sum()));
        let mut store = Self {
            dir: dir.clone(),
            entries: Arc::new(RwLock::new(replayed.entries)),
            sizes: replayed.sizes,
            size,
            last_purged: replayed.last_purged,
            vote,
            committed: replayed.committed,
            file_records,
            file_bytes,
            options,
            writer: None,
        };
        if let Some(bytes) = store.compaction()? {
            durable::replace_file(&log_path, &bytes)?;
            store.file_records = store.live_records();
            store.file_bytes = bytes.len() as u64;
        }
        let writer = GroupWriter::spawn(log_path, store.options.max_group, "strom-meta-log")?;
        if !existed {
            durable::sync_dir(&dir)?;
        }
        store.writer = Some(writer);
        tracing::info!(
            dir = %dir.display(),
            entries = store.read_entries().len(),
            last_purged = ?store.last_purged,
            committed = ?store.committed,
            vote = ?store.vote,
            "opened the metadata log"
        );
        Ok(store)
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The encoded bytes of the entries the log holds (in memory and in the file), kept up to
    /// date as entries are appended, truncated and purged.
    pub fn size(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.size)
    }

    /// Recomputes [`Self::size`] after `sizes` changed.
    fn sizes_changed(&self) {
        self.size
            .store(self.sizes.values().sum(), Ordering::Relaxed);
    }

    fn read_entries(&self) -> std::sync::RwLockReadGuard<'_, EntryMap> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_entries(&self) -> std::sync::RwLockWriteGuard<'_, EntryMap> {
        self.entries.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last log id present, or the last purged one if no entry is.
    pub fn last_log_id(&self) -> Option<LogId<BrokerId>> {
        self.read_entries()
            .last_key_value()
            .map(|(_, e)| e.log_id)
            .or(self.last_purged)
    }

    /// Queues a write for the writer thread.
    fn send(&self, op: WriteOp, bytes: Vec<u8>, done: Option<Completion>) -> Result<(), Error> {
        let writer = self.writer.as_ref().ok_or_else(|| Error::Poisoned {
            path: self.dir.join(LOG_FILE),
            reason: "the log is not open".to_owned(),
        })?;
        writer.submit(WriteRequest { op, bytes, done })
    }

    /// Queues a write and waits until the writer reports it done.
    async fn send_and_wait(&self, op: WriteOp, bytes: Vec<u8>) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        let path = self.dir.join(LOG_FILE);
        let done: Completion = Box::new(move |result: Result<(), &str>| {
            // The caller may have gone away; then nobody needs the answer.
            let _ = tx.send(result.map_err(str::to_owned));
        });
        self.send(op, bytes, Some(done))?;
        let reason = match rx.await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(reason)) => reason,
            Err(_) => "the writer thread stopped before answering".to_owned(),
        };
        Err(Error::Poisoned { path, reason })
    }

    /// Waits until everything written so far (committed ids included) is durable.
    pub async fn sync(&mut self) -> Result<(), Error> {
        self.send_and_wait(WriteOp::Append { sync: true }, Vec::new())
            .await
    }

    /// Saves `vote`; it is durable when this returns.
    pub async fn write_vote(&mut self, vote: &Vote<BrokerId>) -> Result<(), Error> {
        let mut bytes = Vec::new();
        durable::encode_json(vote, "the vote", &mut bytes)?;
        self.send_and_wait(WriteOp::Replace(self.dir.join(VOTE_FILE)), bytes)
            .await?;
        self.vote = Some(*vote);
        Ok(())
    }

    /// Records the committed log id behind everything queued so far, without waiting.
    pub fn write_committed(&mut self, committed: Option<LogId<BrokerId>>) -> Result<(), Error> {
        if committed == self.committed {
            return Ok(());
        }
        let mut bytes = Vec::new();
        LogRecord::Committed { log_id: committed }.encode(&mut bytes)?;
        let len = bytes.len();
        self.send(WriteOp::Append { sync: false }, bytes, None)?;
        self.committed = committed;
        self.wrote(1, len);
        Ok(())
    }

    /// Appends `entries` (see the module documentation for the rules): they are readable when
    /// this returns, and `on_durable` is called (on the writer thread, in append order) once
    /// they are durable, or with the write's error.
    pub fn append_then(
        &mut self,
        entries: Vec<LogEntry>,
        on_durable: impl FnOnce(Result<(), Error>) + Send + 'static,
    ) -> Result<(), Error> {
        let path = self.dir.join(LOG_FILE);
        self.append_with(
            entries,
            Box::new(move |result: Result<(), &str>| {
                on_durable(result.map_err(|reason| Error::Poisoned {
                    path,
                    reason: reason.to_owned(),
                }));
            }),
        )
    }

    /// Appends `entries` and waits until they are durable.
    pub async fn append_durable(&mut self, entries: Vec<LogEntry>) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.append_then(entries, move |result| {
            let _ = tx.send(result);
        })?;
        rx.await.map_err(|_| Error::Poisoned {
            path: self.dir.join(LOG_FILE),
            reason: "the writer thread stopped before answering".to_owned(),
        })?
    }

    fn append_with(&mut self, entries: Vec<LogEntry>, done: Completion) -> Result<(), Error> {
        for pair in entries.windows(2) {
            if let [a, b] = pair
                && a.log_id.index.checked_add(1) != Some(b.log_id.index)
            {
                return Err(Error::InvalidLog(format!(
                    "appended entries are not consecutive: {} then {}",
                    a.log_id, b.log_id
                )));
            }
        }
        // Entries at or below the purged log id are committed and covered by the state machine's
        // snapshot: storing them again would change nothing, so they are skipped.
        let covered = match self.last_purged {
            Some(purged) => entries
                .iter()
                .take_while(|e| e.log_id.index <= purged.index)
                .count(),
            None => 0,
        };
        if covered > 0 {
            tracing::warn!(
                purged = ?self.last_purged,
                skipped = covered,
                "append at or below the purged log id"
            );
        }
        let entries = entries.get(covered..).unwrap_or_default();
        let mut map = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        // Entries already stored with the same log id are the same entries: keep them.
        let skip = entries
            .iter()
            .take_while(|e| {
                map.get(&e.log_id.index)
                    .is_some_and(|s| s.log_id == e.log_id)
            })
            .count();
        let new = entries.get(skip..).unwrap_or_default();
        let mut bytes = Vec::new();
        let mut records = 0;
        let mut conflict = None;
        if let Some(first) = new.first() {
            let index = first.log_id.index;
            match map.last_key_value().map(|(i, e)| (*i, e.log_id)) {
                Some((last, last_id)) if index <= last => {
                    tracing::warn!(
                        %last_id,
                        new = %first.log_id,
                        "append overwrites a conflicting suffix of the log"
                    );
                    LogRecord::Truncate { since: index }.encode(&mut bytes)?;
                    records += 1;
                    conflict = Some(index);
                }
                Some((last, _)) if index > last.saturating_add(1) => {
                    tracing::warn!(last, new = %first.log_id, "append leaves a gap in the log");
                }
                _ => {}
            }
        }
        let mut lens = Vec::with_capacity(new.len());
        for entry in new {
            let before = bytes.len();
            LogRecord::Entry(Cow::Borrowed(entry)).encode(&mut bytes)?;
            lens.push((bytes.len() - before) as u64);
            records += 1;
        }
        // Everything is encoded: now change the in-memory log and queue the write, in one step.
        if let Some(since) = conflict {
            drop(map.split_off(&since));
            drop(self.sizes.split_off(&since));
        }
        for (entry, len) in new.iter().zip(lens) {
            map.insert(entry.log_id.index, entry.clone());
            self.sizes.insert(entry.log_id.index, len);
        }
        drop(map);
        self.sizes_changed();
        self.wrote(records, bytes.len());
        self.send(WriteOp::Append { sync: true }, bytes, Some(done))
    }

    /// Removes the entries from `since` on; durable when this returns.
    pub async fn truncate_since(&mut self, since: u64) -> Result<(), Error> {
        let mut bytes = Vec::new();
        LogRecord::Truncate { since }.encode(&mut bytes)?;
        let removed = self.write_entries().split_off(&since).len();
        drop(self.sizes.split_off(&since));
        self.sizes_changed();
        if removed == 0 {
            return Ok(());
        }
        tracing::debug!(since, removed, "truncating the metadata log");
        self.wrote(1, bytes.len());
        self.send_and_wait(WriteOp::Append { sync: true }, bytes)
            .await?;
        self.maybe_compact().await
    }

    /// Removes the entries up to `upto` and remembers it as the last purged log id; durable
    /// when this returns.
    pub async fn purge_upto(&mut self, upto: LogId<BrokerId>) -> Result<(), Error> {
        if self.last_purged.is_some_and(|p| p >= upto) {
            return Ok(());
        }
        let mut bytes = Vec::new();
        LogRecord::Purge { upto }.encode(&mut bytes)?;
        purge_map(&mut self.write_entries(), upto.index);
        purge_map(&mut self.sizes, upto.index);
        self.sizes_changed();
        self.last_purged = Some(upto);
        self.wrote(1, bytes.len());
        tracing::debug!(%upto, "purging the metadata log");
        self.send_and_wait(WriteOp::Append { sync: true }, bytes)
            .await?;
        self.maybe_compact().await
    }

    /// Counts `records` records of `bytes` bytes queued for the log file.
    fn wrote(&mut self, records: u64, bytes: usize) {
        self.file_records += records;
        self.file_bytes += bytes as u64;
    }

    /// How many records a freshly written log file holds.
    fn live_records(&self) -> u64 {
        self.read_entries().len() as u64
            + u64::from(self.last_purged.is_some())
            + u64::from(self.committed.is_some())
    }

    /// The contents of a compacted log file, if compaction is due.
    fn compaction(&self) -> Result<Option<Vec<u8>>, Error> {
        let live = self.live_records();
        let dead = self.file_records.saturating_sub(live);
        let by_count = dead >= self.options.compact_min_dead_records && dead >= live;
        // Entries are nearly all of the live bytes (the markers are a few dozen bytes).
        let live_bytes = self.size.load(Ordering::Relaxed);
        let dead_bytes = self.file_bytes.saturating_sub(live_bytes);
        let by_bytes =
            dead_bytes >= self.options.compact_min_dead_bytes && dead_bytes >= live_bytes;
        if !by_count && !by_bytes {
            return Ok(None);
        }
        tracing::info!(
            live,
            dead,
            live_bytes,
            dead_bytes,
            dir = %self.dir.display(),
            "compacting the metadata log"
        );
        let mut bytes = Vec::new();
        if let Some(upto) = self.last_purged {
            LogRecord::Purge { upto }.encode(&mut bytes)?;
        }
        for entry in self.read_entries().values() {
            LogRecord::Entry(Cow::Borrowed(entry)).encode(&mut bytes)?;
        }
        if self.committed.is_some() {
            LogRecord::Committed {
                log_id: self.committed,
            }
            .encode(&mut bytes)?;
        }
        Ok(Some(bytes))
    }

    /// Rewrites the log file if enough of it is superseded.
    async fn maybe_compact(&mut self) -> Result<(), Error> {
        if let Some(bytes) = self.compaction()? {
            let len = bytes.len();
            self.send_and_wait(WriteOp::Rewrite, bytes).await?;
            self.file_records = self.live_records();
            self.file_bytes = len as u64;
        }
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, StorageError<BrokerId>> {
        Ok(read_range(&self.entries, range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<BrokerId>> {
        Ok(LogState {
            last_purged_log_id: self.last_purged,
            last_log_id: self.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            entries: Arc::clone(&self.entries),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<BrokerId>) -> Result<(), StorageError<BrokerId>> {
        self.write_vote(vote)
            .await
            .map_err(vote_error(ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<BrokerId>>, StorageError<BrokerId>> {
        Ok(self.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<BrokerId>>,
    ) -> Result<(), StorageError<BrokerId>> {
        self.write_committed(committed)
            .map_err(logs_error(ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<BrokerId>>, StorageError<BrokerId>> {
        Ok(self.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<BrokerId>>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let done: Completion = Box::new(move |result: Result<(), &str>| {
            callback.log_io_completed(result.map_err(|reason| io::Error::other(reason.to_owned())));
        });
        self.append_with(entries.into_iter().collect(), done)
            .map_err(logs_error(ErrorVerb::Write))
    }

    async fn truncate(&mut self, log_id: LogId<BrokerId>) -> Result<(), StorageError<BrokerId>> {
        self.truncate_since(log_id.index)
            .await
            .map_err(logs_error(ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<BrokerId>) -> Result<(), StorageError<BrokerId>> {
        self.purge_upto(log_id)
            .await
            .map_err(logs_error(ErrorVerb::Delete))
    }
}

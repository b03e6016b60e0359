//! strom-storage: partition logs on disk. It knows files, offsets, indexes, retention, compaction
//! and recovery; it knows nothing of the network.
//!
//! A [`Log`] is one partition: a directory of segments, each a `.log` file of Kafka RecordBatch v2
//! batches (see `strom_protocol::batch`) with a sparse offset index (`.index`) and time index
//! (`.timeindex`), named by the segment's base offset in 20 digits. One writer appends (the
//! [`Log`] itself); any number of [`LogReader`]s read concurrently without blocking it, and get
//! stored batches as zero-copy [`bytes::Bytes`] slices of memory-mapped segments.
//!
//! Modules:
//! - [`config`]: the per-log settings (Kafka's names) and the clock;
//! - `log`: the log, its writer and readers, open and recovery, roll, flush, retention;
//! - `segment`: one segment's files, lookups, appends and the recovery scan;
//! - [`index`]: the index entry layouts and searches;
//! - [`io`]: the seam every append-path write, fsync and file creation passes through, where
//!   tests inject disk faults, and the early write-back call (`sync_file_range`, the crate's
//!   other `unsafe`: one system call);
//! - `compaction`: keep-newest-per-key rewriting and its crash-safe swap;
//! - `epochs`: the leader-epoch cache (which leader epoch wrote which offsets) and its
//!   checkpoint file `leader-epoch-checkpoint`;
//! - `replica`: what replication needs of a log: leader epochs stamped on appends, a
//!   follower's append of its leader's batches, truncation (crash-safe), the epoch lookups;
//! - `recovery_point`: the offset below which a log is known to be on disk, which bounds
//!   what recovery checks after an unclean shutdown;
//! - `mmap`: the read-only maps (`unsafe`: mapping a file).
//!
//! The on-disk format, recovery procedure and durability promise are in `docs/storage.md`.
//!
//! ```
//! use strom_storage::{Log, LogConfig};
//! use strom_protocol::batch::RecordRef;
//!
//! let dir = tempfile::tempdir()?;
//! let mut log = Log::open(dir.path(), LogConfig::default())?;
//! let info = log.append_records(&[RecordRef { timestamp: 1, key: Some(b"order-1"), value: Some(b"placed"), headers: &[] }])?;
//! assert_eq!(info.base_offset, 0);
//! let read = log.reader().read(0, 1 << 20)?;
//! assert_eq!(read.next_offset, 1);
//! log.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod compaction;
pub mod config;
mod epochs;
mod error;
pub mod index;
pub mod io;
mod log;
mod log_start;
mod mmap;
mod recovery_point;
mod replica;
mod segment;

pub use compaction::CompactionOutcome;
pub use config::{CleanupPolicy, Clock, LogConfig, ManualClock, SystemClock};
pub use error::{Result, StorageError};
pub use io::{Fault, IoFaults, IoOp, write_atomic};
pub use log::{
    AppendInfo, Log, LogEnv, LogReader, PendingFlush, PendingWriteback, ReadResult,
    RetentionOutcome, ValidBatch,
};
pub use segment::{INDEX_WRITE_GROUP, SegmentRead};

//! Read-only memory maps of segment and index files: the only `unsafe` in strom.
//!
//! A map is handed out as a [`Bytes`] so that slices of it can be given to the network layer
//! without copying; the map lives until the last slice is dropped, even if the file is deleted
//! (retention) or replaced (compaction) in the meantime.
//!
//! Files are never written through a map: appends use `write`/`pwrite`, so a full disk is an
//! `ENOSPC` error instead of a `SIGBUS`. A map may be longer than its file (the active segment is
//! mapped once at its full capacity and grows into the map); callers only touch bytes below the
//! committed length, which is always inside the file.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{Mmap, MmapOptions, UncheckedAdvice};

/// How a map will be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Mostly in order (segment data): the kernel's read-ahead and fault-around help.
    Sequential,
    /// Binary searches (indexes): each fault maps only the page touched, so a broker holding
    /// thousands of indexes keeps only the pages it searched resident (`MADV_RANDOM`).
    Random,
}

/// A map shared by the [`Bytes`] handed out of it and the segment that may release its pages.
struct Shared(Arc<Mmap>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A read-only map: its bytes, and a handle to drop its pages from the process's resident set.
#[derive(Debug, Clone, Default)]
pub(crate) struct Mapped {
    pub bytes: Bytes,
    map: Option<Arc<Mmap>>,
}

impl Mapped {
    /// Drops the map's pages from this process's page tables (`MADV_DONTNEED`). They stay in
    /// the page cache; the next read of them is a minor fault that maps them again. Without
    /// this, every page consumers ever read through a map stays in the broker's RSS until the
    /// segment is deleted.
    pub fn release(&self) {
        if let Some(map) = &self.map {
            // SAFETY: the map is a read-only shared file mapping, so dropping its pages loses
            // nothing: the file's contents are read again from the page cache on the next
            // access, and strom never changes bytes of a file that a map has published.
            let _ = unsafe { map.unchecked_advise(UncheckedAdvice::DontNeed) };
        }
    }
}

/// Maps `len` bytes of `file` read-only. `len` may exceed the file's current size; bytes past
/// the end of the file must not be read until the file has grown to cover them.
pub(crate) fn map(file: &File, len: usize, access: Access) -> io::Result<Bytes> {
    map_releasable(file, len, access).map(|m| m.bytes)
}

/// As [`map`], keeping the handle that can release the map's pages.
pub(crate) fn map_releasable(file: &File, len: usize, access: Access) -> io::Result<Mapped> {
    if len == 0 {
        return Ok(Mapped::default());
    }
    // SAFETY: the map is read-only and strom owns the data directory. Bytes past the end of the
    // file are never read (every reader bounds its reads by a committed length published after
    // the bytes were written), and strom only truncates a file below bytes it has never published,
    // or before the file is mapped (recovery). Another process truncating the file would raise
    // SIGBUS; the data directory is documented as the broker's alone.
    let map = unsafe { MmapOptions::new().len(len).map(file)? };
    if access == Access::Random {
        // Advice only: a failure changes nothing but residency.
        let _ = map.advise(memmap2::Advice::Random);
    }
    let map = Arc::new(map);
    Ok(Mapped {
        bytes: Bytes::from_owner(Shared(map.clone())),
        map: Some(map),
    })
}

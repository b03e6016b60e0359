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

use bytes::Bytes;
use memmap2::MmapOptions;

/// How a map will be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Mostly in order (segment data): the kernel's read-ahead and fault-around help.
    Sequential,
    /// Binary searches (indexes): each fault maps only the page touched, so a broker holding
    /// thousands of indexes keeps only the pages it searched resident (`MADV_RANDOM`).
    Random,
}

/// Maps `len` bytes of `file` read-only. `len` may exceed the file's current size; bytes past
/// the end of the file must not be read until the file has grown to cover them.
pub(crate) fn map(file: &File, len: usize, access: Access) -> io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
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
    Ok(Bytes::from_owner(map))
}

//! Whether this broker's storage works, as the cluster needs to know it.
//!
//! A partition writer whose disk refuses a write (a full disk, an I/O error) reports it here
//! ([`StorageHealth::fail`]). From then on every heartbeat tells the active controller, which
//! treats the broker as one shutting down (`strom_meta::election::BrokerStatus::StorageFailed`):
//! its leaderships move to in-sync replicas that can write, it leaves the ISRs that keep a live
//! member without it, and it is elected nowhere. A leader on a full disk would otherwise stay
//! leader and refuse every produce. While failed, [`StorageHealth::watch`] writes and fsyncs a
//! probe file of [`PROBE_BYTES`] in the data directory every [`PROBE_EVERY`]; the first that
//! succeeds clears the failure, the heartbeats say so, and the broker's followers catch up and
//! rejoin the ISRs the usual way (a leader adds a follower back once it has caught up, which
//! is what shows its writes work again). Poisoned partition logs recover on their next append.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use strom_storage::StorageError;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Bytes the recovery probe writes and fsyncs: room for some appends, not just one page.
pub(crate) const PROBE_BYTES: usize = 1 << 20;
/// How often a failed broker probes its storage.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(1);
/// The probe file, in the data directory (removed after each probe).
const PROBE_FILE: &str = ".storage-probe";

/// The broker's storage health: failed or working, and the failures counted.
#[derive(Debug)]
pub(crate) struct StorageHealth {
    failed: watch::Sender<bool>,
    /// Why it failed (the first error since it last worked).
    reason: Mutex<Option<String>>,
    /// Writes that failed for the disk's sake, since the broker started.
    failures: AtomicU64,
}

impl Default for StorageHealth {
    fn default() -> Self {
        Self {
            failed: watch::channel(false).0,
            reason: Mutex::new(None),
            failures: AtomicU64::new(0),
        }
    }
}

/// Whether `e` says the disk failed a write (rather than the data or the request being bad).
pub(crate) fn is_disk_failure(e: &StorageError) -> bool {
    matches!(e, StorageError::Io { .. } | StorageError::Poisoned { .. })
}

impl StorageHealth {
    /// A write of `topic`-`partition` failed with `e`: if `e` is a disk failure the broker's
    /// storage is failed from now on (logged once, at the change). Other errors are ignored.
    /// True when it is a disk failure.
    pub(crate) fn fail(&self, topic: &str, partition: i32, e: &StorageError) -> bool {
        if !is_disk_failure(e) {
            return false;
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut reason = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if reason.is_none() {
            tracing::error!(topic, partition, error = %e, "storage failed: this broker gives up its leaderships and leaves its ISRs until a probe write succeeds");
            *reason = Some(format!("{topic}-{partition}: {e}"));
            self.failed.send_replace(true);
        }
        true
    }

    /// Whether the storage is failed now.
    pub(crate) fn is_failed(&self) -> bool {
        *self.failed.borrow()
    }

    /// Follows the failure: true while failed.
    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.failed.subscribe()
    }

    /// Disk failures counted since start.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// While the storage is failed, probes `data_dir` every [`PROBE_EVERY`] and clears the
    /// failure at the first probe that succeeds; returns when `stop` is cancelled.
    pub(crate) async fn watch(&self, data_dir: PathBuf, stop: CancellationToken) {
        let mut failed = self.subscribe();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = failed.wait_for(|f| *f) => if changed.is_err() { return },
            }
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(PROBE_EVERY) => {}
                }
                let dir = data_dir.clone();
                let probed = tokio::task::spawn_blocking(move || probe(&dir)).await;
                match probed {
                    Ok(Ok(())) => {
                        let mut reason = self.reason.lock().unwrap_or_else(|p| p.into_inner());
                        let was = reason.take();
                        tracing::info!(failed = ?was, "storage works again: a probe write succeeded");
                        self.failed.send_replace(false);
                        break;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "storage probe failed"),
                    Err(e) => tracing::debug!(error = %e, "storage probe task failed"),
                }
            }
        }
    }
}

/// Writes [`PROBE_BYTES`] to the probe file, fsyncs it, and removes it.
fn probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(PROBE_FILE);
    let written = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&[0u8; PROBE_BYTES])?;
        file.sync_all()
    })();
    let removed = std::fs::remove_file(&path);
    written?;
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_error() -> StorageError {
        StorageError::Io {
            op: "write",
            path: PathBuf::from("/x"),
            source: std::io::Error::from_raw_os_error(28),
        }
    }

    #[test]
    fn only_disk_failures_fail_the_storage() {
        let health = StorageHealth::default();
        let bad_data = StorageError::MessageTooLarge { size: 9, max: 1 };
        assert!(!health.fail("t", 0, &bad_data));
        assert!(!health.is_failed());
        assert!(health.fail("t", 0, &io_error()));
        assert!(health.fail("t", 1, &io_error()));
        assert!(health.is_failed());
        assert_eq!(health.failures(), 2);
    }

    #[tokio::test]
    async fn a_probe_that_succeeds_clears_the_failure() {
        let dir = tempfile::tempdir().unwrap();
        let health = std::sync::Arc::new(StorageHealth::default());
        let stop = CancellationToken::new();
        let task = {
            let (health, stop, dir) = (health.clone(), stop.clone(), dir.path().to_path_buf());
            tokio::spawn(async move { health.watch(dir, stop).await })
        };
        health.fail("t", 0, &io_error());
        let mut failed = health.subscribe();
        assert!(*failed.borrow());
        failed.wait_for(|f| !*f).await.unwrap();
        assert!(!dir.path().join(PROBE_FILE).exists(), "the probe cleans up");
        stop.cancel();
        task.await.unwrap();
    }
}

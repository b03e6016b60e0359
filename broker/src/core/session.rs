//! What the requests of one connection share, whatever its protocol: the produces it started
//! and not yet had acknowledged. A request that reads the logs (fetch, list offsets, metadata)
//! waits for them first, so a client reading after writing on one connection sees its writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// One connection's ordering state.
#[derive(Debug, Default)]
pub(crate) struct Session {
    produces: AtomicUsize,
    idle: Notify,
}

impl Session {
    /// Counts a produce as started until the returned guard is dropped.
    pub fn produce_started(self: &Arc<Self>) -> ProduceGuard {
        self.produces.fetch_add(1, Ordering::AcqRel);
        ProduceGuard(self.clone())
    }

    /// Waits until every produce started on this connection has completed.
    pub async fn wait_for_produces(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.produces.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Marks a produce as complete when dropped.
#[derive(Debug)]
pub(crate) struct ProduceGuard(Arc<Session>);

impl Drop for ProduceGuard {
    fn drop(&mut self) {
        if self.0.produces.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

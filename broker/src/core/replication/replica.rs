//! A partition's replication state as the rest of the broker sees it: the high watermark (HW)
//! consumers read below, and the leader's view of its followers that moves it.
//!
//! Every partition has one, single node or not: a partition led here alone has itself as its
//! only in-sync replica, so its HW is its log end (or, for a topic with a durable policy, its
//! durable offset: what consumers see and what `acks=all` acknowledges is then on disk). The
//! writer reports each append group and each fsync ([`Replica::progress`]), once per group,
//! never per record; readers take the HW from a `watch` channel, which is also what their long
//! polls wait on.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::watch;

use super::leader::{BrokerId, LeaderView, Leadership};

/// The replica on this broker, before the metadata image names the partition's replicas.
const LOCAL: BrokerId = 0;

/// A partition's replication state.
#[derive(Debug)]
pub(crate) struct Replica {
    view: Mutex<LeaderView>,
    hw: watch::Sender<i64>,
}

impl Replica {
    /// A partition led here, with no other replica: the HW follows the log end `end` (or the
    /// durable offset `durable` when `durable_policy`).
    pub(crate) fn alone(end: i64, durable: i64, durable_policy: bool) -> Self {
        let lead = Leadership {
            me: LOCAL,
            leader_epoch: 0,
            partition_epoch: 0,
            replicas: vec![LOCAL],
            isr: vec![LOCAL],
            min_isr: 1,
            durable: durable_policy,
        };
        // Everything in the log at open is on disk (recovery read it from there).
        let view = LeaderView::new(lead, end, durable.max(end), 0, Instant::now());
        let (hw, _) = watch::channel(view.hw());
        Self {
            view: Mutex::new(view),
            hw,
        }
    }

    fn view(&self) -> std::sync::MutexGuard<'_, LeaderView> {
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The high watermark: consumers read below it.
    pub(crate) fn high_watermark(&self) -> i64 {
        *self.hw.borrow()
    }

    /// A receiver that changes whenever the HW moves.
    pub(crate) fn watch_hw(&self) -> watch::Receiver<i64> {
        self.hw.subscribe()
    }

    /// The leader's log end and durable offset moved (an append group, an fsync).
    pub(crate) fn progress(&self, end: i64, durable: i64) {
        let mut view = self.view();
        if view.on_leader_progress(end, durable) {
            self.hw.send_replace(view.hw());
        }
    }

    /// The topic's flush policy changed: with one, the HW waits for fsyncs.
    pub(crate) fn set_durable(&self, durable_policy: bool, end: i64, durable: i64) {
        let mut view = self.view();
        if view.set_durable(durable_policy) | view.on_leader_progress(end, durable) {
            self.hw.send_replace(view.hw());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alone_the_hw_is_the_log_end_or_the_durable_offset() {
        let r = Replica::alone(10, 10, false);
        assert_eq!(r.high_watermark(), 10);
        let mut w = r.watch_hw();
        r.progress(15, 10);
        assert_eq!(r.high_watermark(), 15);
        assert!(w.has_changed().unwrap());
        w.borrow_and_update();

        let d = Replica::alone(10, 10, true);
        assert_eq!(d.high_watermark(), 10, "what was on disk at open");
        d.progress(15, 10);
        assert_eq!(d.high_watermark(), 10, "not fsynced yet");
        d.progress(15, 15);
        assert_eq!(d.high_watermark(), 15);

        // A policy taken away: the HW catches up with the end; put back, it never goes back.
        d.progress(20, 15);
        d.set_durable(false, 20, 15);
        assert_eq!(d.high_watermark(), 20);
        d.set_durable(true, 25, 15);
        assert_eq!(d.high_watermark(), 20);
        d.progress(25, 25);
        assert_eq!(d.high_watermark(), 25);
        assert!(!w.has_changed().unwrap(), "r's receiver sees only r");
    }
}

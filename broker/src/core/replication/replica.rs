//! A partition's replication state as the rest of the broker sees it: whether this broker leads
//! or follows it, the high watermark (HW) consumers read below, and what produce waits on.
//!
//! Every partition has one, single node or not. A partition the metadata image makes this
//! broker lead holds a [`LeaderView`] of its followers; one it follows holds its position and
//! the HW its leader last reported (at most its own log end). A partition led here alone has
//! itself as its only in-sync replica, so its HW is its log end (or, for a topic with a durable
//! policy, its durable offset). The writer reports each append group and each fsync
//! ([`Replica::progress`]), once per group, never per record; followers' fetches report theirs
//! ([`Replica::follower_fetched`]). Readers take the HW from a `watch` channel, which is also
//! what their long polls wait on; produce waits on [`Replica::acknowledged`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use strom_protocol::ErrorCode;
use tokio::sync::watch;

use super::leader::{BrokerId, IsrRequest, LeaderView, Leadership};
use crate::core::Failure;

/// The replica on this broker, for a partition the metadata image does not place (a local
/// internal topic): its only replica.
const LOCAL: BrokerId = 0;

/// Wakes the long polls of follower fetches: bumped by every append group of a partition led
/// here that has followers. One per broker.
pub(crate) type AppendSignal = Arc<watch::Sender<u64>>;

/// Whether a partition is led here, and what a produce waiting for it needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Status {
    /// The leader epoch this broker leads the partition in (`None`: it follows, or the
    /// partition has no leader).
    pub leading: Option<i32>,
    /// Fewer in-sync replicas than `min.insync.replicas`: the HW stands still.
    pub under_min_isr: bool,
    /// Everything below is fsynced on the leader and every in-sync replica (at most the HW).
    pub durable_hw: i64,
}

#[derive(Debug)]
enum Role {
    Leader {
        view: LeaderView,
        /// The broker epoch each follower's fetches carried (for AlterPartition, KIP-903).
        epochs: BTreeMap<BrokerId, u64>,
    },
    Follower {
        /// The leader and its epoch (`None`: the partition has no leader now).
        leader: Option<(BrokerId, i32)>,
        end: i64,
        durable: i64,
    },
}

/// What a follower's fetch learns from the leader besides records.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaderMarks {
    pub hw: i64,
    /// The highest offset a durable produce waits for (followers fsync up to it).
    pub durable_wanted: i64,
}

/// An ISR change a leader asks the controller for.
#[derive(Debug)]
pub(crate) struct IsrChange {
    /// The leadership it was computed from.
    pub lead: Leadership,
    pub change: IsrRequest,
    /// The broker epoch each named follower's fetches carried (KIP-903).
    pub seen: Vec<(BrokerId, u64)>,
}

/// How a partition led here stands with its followers, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaderStanding {
    pub replicas: usize,
    pub in_sync: usize,
    /// Per follower, how many offsets its log end is behind the leader's.
    pub lags: Vec<(BrokerId, i64)>,
}

/// A partition's replication state.
#[derive(Debug)]
pub(crate) struct Replica {
    role: Mutex<Role>,
    hw: watch::Sender<i64>,
    status: watch::Sender<Status>,
    /// The log's durable offset, for a follower waiting to report an fsync a durable produce
    /// on its leader waits for.
    durable: watch::Sender<i64>,
    /// The highest end a durable produce waits for, sent to followers.
    durable_wanted: AtomicI64,
    appended: AppendSignal,
}

impl Replica {
    /// A partition led here, with no other replica: the HW follows the log end `end` (or the
    /// durable offset `durable` when `durable_policy`).
    pub(crate) fn alone(
        end: i64,
        durable: i64,
        durable_policy: bool,
        appended: AppendSignal,
    ) -> Self {
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
        let (status, _) = watch::channel(Status {
            leading: Some(0),
            under_min_isr: false,
            durable_hw: view.durable_hw(),
        });
        Self {
            role: Mutex::new(Role::Leader {
                view,
                epochs: BTreeMap::new(),
            }),
            hw,
            status,
            durable: watch::channel(durable).0,
            durable_wanted: AtomicI64::new(0),
            appended,
        }
    }

    fn role(&self) -> std::sync::MutexGuard<'_, Role> {
        self.role.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes what changed under the lock: the HW (readers wake) and the status.
    fn publish(&self, role: &Role) {
        let (hw, status) = match role {
            Role::Leader { view, .. } => (
                view.hw(),
                Status {
                    leading: Some(view.leadership().leader_epoch),
                    under_min_isr: view.under_min_isr(),
                    durable_hw: view.durable_hw(),
                },
            ),
            Role::Follower { end, .. } => (
                (*self.hw.borrow()).min(*end),
                Status {
                    leading: None,
                    under_min_isr: false,
                    durable_hw: -1,
                },
            ),
        };
        self.hw.send_if_modified(|h| std::mem::replace(h, hw) != hw);
        self.status
            .send_if_modified(|s| std::mem::replace(s, status) != status);
    }

    /// The high watermark: consumers read below it.
    pub(crate) fn high_watermark(&self) -> i64 {
        *self.hw.borrow()
    }

    /// A receiver that changes whenever the HW moves.
    pub(crate) fn watch_hw(&self) -> watch::Receiver<i64> {
        self.hw.subscribe()
    }

    /// The offset a consumer's "latest" is (ListOffsets): the HW, or OFFSET_NOT_AVAILABLE
    /// (retriable) while a new leader's HW is still below where its epoch began: its
    /// followers have not fetched from it yet, and the HW it learned as a follower may be
    /// behind what the old leader acknowledged (KIP-207).
    pub(crate) fn latest_offset(&self) -> Result<i64, Failure> {
        let role = self.role();
        if let Role::Leader { view, .. } = &*role
            && view.hw() < view.epoch_start()
        {
            return Err((
                ErrorCode::OffsetNotAvailable,
                format!(
                    "this leader's high watermark {} has not reached the start of its epoch {} yet",
                    view.hw(),
                    view.epoch_start()
                ),
            ));
        }
        Ok(self.high_watermark())
    }

    /// How the partition stands with its followers, when this broker leads it with some.
    pub(crate) fn standing(&self) -> Option<LeaderStanding> {
        let role = self.role();
        let Role::Leader { view, .. } = &*role else {
            return None;
        };
        let lead = view.leadership();
        if lead.replicas.len() < 2 {
            return None;
        }
        Some(LeaderStanding {
            replicas: lead.replicas.len(),
            in_sync: lead.isr.len(),
            lags: view
                .follower_ends()
                .map(|(id, end)| (id, view.end() - end.max(0)))
                .collect(),
        })
    }

    /// Whether this broker leads the partition, and how it stands.
    pub(crate) fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// The metadata image names this broker the leader in the epoch it already leads in (with
    /// the same replicas): only the ISR, partition epoch and settings are taken up. Anything
    /// else is handed back, for [`Replica::lead`] to start a new view with the log's position.
    pub(crate) fn retake(&self, lead: Leadership) -> Result<(), Leadership> {
        let mut role = self.role();
        let Role::Leader { view, .. } = &mut *role else {
            return Err(lead);
        };
        let l = view.leadership();
        if l.leader_epoch != lead.leader_epoch || l.me != lead.me || l.replicas != lead.replicas {
            return Err(lead);
        }
        // An image older than the controller's answer to this leader's own ISR change (taken
        // up already) does not take it back.
        if lead.partition_epoch > l.partition_epoch
            || (lead.partition_epoch == l.partition_epoch && l.isr != lead.isr)
        {
            view.isr_committed(lead.isr, lead.partition_epoch);
        }
        view.set_min_isr(lead.min_isr);
        view.set_durable(lead.durable);
        self.publish(&role);
        Ok(())
    }

    /// The metadata image makes this broker the leader as `lead` says; `end` and `durable` are
    /// the log's now, read by the partition's writer (so no follower append or truncation in
    /// flight can move them after the view is taken: the epoch starts where the log ends).
    /// In the epoch it already leads in, this is [`Replica::retake`]; otherwise the view
    /// starts afresh, keeping the HW. (A new topic's first epoch is 0, the epoch of the view a
    /// partition opens with before the image names its replicas: the replicas tell them apart.)
    pub(crate) fn lead(&self, lead: Leadership, end: i64, durable: i64) {
        let Err(lead) = self.retake(lead) else {
            return;
        };
        let mut role = self.role();
        // A partition opens as if alone, its HW at its log end; once the image gives it other
        // replicas that tail may be unreplicated (nothing persists the HW across a restart),
        // so a replicated leader starts from 0 and its followers' fetches move it (no reader
        // saw the opening value: the image is followed before the listeners start).
        let hw = if is_opening(&role) && lead.replicas.len() > 1 {
            0
        } else {
            self.high_watermark()
        };
        *role = Role::Leader {
            view: LeaderView::new(lead, end, durable, hw, Instant::now()),
            epochs: BTreeMap::new(),
        };
        self.publish(&role);
    }

    /// The metadata image makes this broker a follower of `leader` (`None`: the partition has
    /// no leader now); `end` and `durable` are the log's now. Produces waiting here fail.
    pub(crate) fn follow(&self, leader: Option<(BrokerId, i32)>, end: i64, durable: i64) {
        let mut role = self.role();
        if is_opening(&role) {
            // The HW a partition opens with is its log end; a follower learns its leader's.
            self.hw.send_replace(0);
        }
        *role = Role::Follower {
            leader,
            end,
            durable,
        };
        self.publish(&role);
    }

    /// Whether this broker follows the partition from `leader` in `epoch`.
    pub(crate) fn follows(&self, leader: BrokerId, epoch: i32) -> bool {
        matches!(&*self.role(), Role::Follower { leader: Some(l), .. } if *l == (leader, epoch))
    }

    /// The log end and durable offset moved (an append group, an fsync, a follower's append or
    /// truncation).
    pub(crate) fn progress(&self, end: i64, durable: i64) {
        self.durable
            .send_if_modified(|d| std::mem::replace(d, durable) != durable);
        let mut role = self.role();
        match &mut *role {
            Role::Leader { view, .. } => {
                let grew = end > view.end();
                view.on_leader_progress(end, durable);
                if grew && view.leadership().replicas.len() > 1 {
                    self.appended.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            Role::Follower {
                end: e, durable: d, ..
            } => {
                *e = end;
                *d = durable.min(end);
            }
        }
        self.publish(&role);
    }

    /// Waits until the log is fsynced up to `offset` (a follower, before it reports that to a
    /// leader whose durable produce waits for it).
    pub(crate) async fn wait_durable(&self, offset: i64) {
        let mut durable = self.durable.subscribe();
        let _ = durable.wait_for(|d| *d >= offset).await;
    }

    /// A follower learned its leader's HW: its own is that, at most its log end.
    pub(crate) fn learn_hw(&self, leader_hw: i64) {
        let role = self.role();
        if let Role::Follower { end, .. } = &*role {
            let hw = leader_hw.min(*end);
            self.hw.send_if_modified(|h| std::mem::replace(h, hw) != hw);
        }
    }

    /// The topic's flush policy changed: with one, the HW waits for fsyncs.
    pub(crate) fn set_durable(&self, durable_policy: bool, end: i64, durable: i64) {
        let mut role = self.role();
        if let Role::Leader { view, .. } = &mut *role {
            view.set_durable(durable_policy);
            view.on_leader_progress(end, durable);
        }
        self.publish(&role);
    }

    /// A fetch from follower `follower` (broker epoch `broker_epoch`) in leader epoch `epoch`,
    /// at `fetch_offset` with `durable` fsynced. Fails when this broker does not lead the
    /// partition in that epoch, or `follower` is not one of its replicas.
    pub(crate) fn follower_fetched(
        &self,
        follower: BrokerId,
        broker_epoch: u64,
        epoch: i32,
        fetch_offset: i64,
        durable: i64,
    ) -> Result<LeaderMarks, Failure> {
        let mut role = self.role();
        let Role::Leader { view, epochs } = &mut *role else {
            return Err((
                ErrorCode::NotLeaderOrFollower,
                "this broker does not lead the partition".into(),
            ));
        };
        let led = view.leadership().leader_epoch;
        if epoch != led {
            return Err(epoch_mismatch(epoch, led));
        }
        if !view.leadership().replicas.contains(&follower) || follower == view.leadership().me {
            return Err((
                ErrorCode::NotLeaderOrFollower,
                format!("broker {follower} is not a follower of the partition"),
            ));
        }
        epochs.insert(follower, broker_epoch);
        view.on_follower_fetch(follower, fetch_offset, durable, Instant::now());
        let marks = LeaderMarks {
            hw: view.hw(),
            durable_wanted: self.durable_wanted.load(Ordering::Acquire),
        };
        self.publish(&role);
        Ok(marks)
    }

    /// The leader's HW and the durable offset producers wait for, without a follower fetch.
    pub(crate) fn marks(&self) -> LeaderMarks {
        LeaderMarks {
            hw: self.high_watermark(),
            durable_wanted: self.durable_wanted.load(Ordering::Acquire),
        }
    }

    /// Before an `acks=all` (or durable) append: the epoch this broker leads in, or
    /// NOT_ENOUGH_REPLICAS while the ISR is under `min.insync.replicas`.
    pub(crate) fn check_replicated_append(&self) -> Result<i32, Failure> {
        let status = self.status();
        match status.leading {
            None => Err((
                ErrorCode::NotLeaderOrFollower,
                "this broker does not lead the partition".into(),
            )),
            Some(_) if status.under_min_isr => Err((
                ErrorCode::NotEnoughReplicas,
                "fewer in-sync replicas than min.insync.replicas; nothing was appended".into(),
            )),
            Some(epoch) => Ok(epoch),
        }
    }

    /// Waits until the HW passes `end` (with `durable`, until every in-sync replica fsynced
    /// below it) while this broker leads in `epoch`. Fails with NOT_LEADER_OR_FOLLOWER when
    /// leadership moves, NOT_ENOUGH_REPLICAS_AFTER_APPEND when the ISR falls under
    /// `min.insync.replicas`; the caller bounds the wait.
    pub(crate) async fn acknowledged(
        &self,
        end: i64,
        durable: bool,
        epoch: i32,
    ) -> Result<(), Failure> {
        if durable && self.durable_wanted.fetch_max(end, Ordering::AcqRel) < end {
            // Followers waiting in a fetch learn at once that they are to fsync.
            self.appended.send_modify(|n| *n = n.wrapping_add(1));
        }
        let mut hw = self.hw.subscribe();
        let mut status = self.status.subscribe();
        loop {
            let s = *status.borrow_and_update();
            if s.leading != Some(epoch) {
                return Err((
                    ErrorCode::NotLeaderOrFollower,
                    format!(
                        "leadership moved from epoch {epoch} before the batches were replicated"
                    ),
                ));
            }
            let passed = if durable {
                s.durable_hw >= end
            } else {
                *hw.borrow_and_update() >= end
            };
            if passed {
                return Ok(());
            }
            if s.under_min_isr {
                return Err((
                    ErrorCode::NotEnoughReplicasAfterAppend,
                    "appended, but the in-sync replicas fell under min.insync.replicas before it was replicated".into(),
                ));
            }
            tokio::select! {
                r = hw.changed() => if r.is_err() { break },
                r = status.changed() => if r.is_err() { break },
            }
        }
        Err((
            ErrorCode::NotLeaderOrFollower,
            "the partition is closing".into(),
        ))
    }

    /// The ISR change the leader should ask the controller for now, with the broker epochs of
    /// the followers it names, if one is due; it is then in flight.
    pub(crate) fn isr_change(&self, now: Instant, lag_max: Duration) -> Option<IsrChange> {
        let mut role = self.role();
        let Role::Leader { view, epochs } = &mut *role else {
            return None;
        };
        if view.leadership().replicas.len() < 2 {
            return None;
        }
        let change = view.isr_change_due(now, lag_max)?;
        let seen = change
            .isr()
            .iter()
            .filter_map(|b| epochs.get(b).map(|e| (*b, *e)))
            .collect();
        view.isr_requested(change.clone());
        let lead = view.leadership().clone();
        self.publish(&role);
        Some(IsrChange { lead, change, seen })
    }

    /// The controller committed an ISR change this leader asked for (in `epoch`).
    /// The request in flight is settled whether or not the image got there first: a newer
    /// image (a fencing after it, say) may already hold another ISR.
    pub(crate) fn isr_committed(&self, epoch: i32, isr: Vec<BrokerId>, partition_epoch: u32) {
        let mut role = self.role();
        if let Role::Leader { view, .. } = &mut *role
            && view.leadership().leader_epoch == epoch
        {
            view.isr_settled();
            if partition_epoch >= view.leadership().partition_epoch {
                view.isr_committed(isr, partition_epoch);
            }
        }
        self.publish(&role);
    }

    /// The ISR change in flight was refused (or could not be sent): another may be asked for;
    /// a follower the controller would not add (`ineligible`) is proposed again only once it
    /// fetches again.
    pub(crate) fn isr_refused(&self, epoch: i32, ineligible: Option<BrokerId>) {
        let mut role = self.role();
        if let Role::Leader { view, .. } = &mut *role
            && view.leadership().leader_epoch == epoch
        {
            view.isr_settled();
            if let Some(b) = ineligible {
                view.forget_follower(b);
            }
        }
    }
}

/// Whether `role` is the one a partition opens with, before the image names its replicas.
fn is_opening(role: &Role) -> bool {
    matches!(role, Role::Leader { view, .. }
        if view.leadership().me == LOCAL && view.leadership().replicas == [LOCAL])
}

/// The error for a fetch in `asked` when the leader leads in `led`.
pub(crate) fn epoch_mismatch(asked: i32, led: i32) -> Failure {
    if asked < led {
        (
            ErrorCode::FencedLeaderEpoch,
            format!("leader epoch {asked} is older than the partition's {led}"),
        )
    } else {
        (
            ErrorCode::UnknownLeaderEpoch,
            format!("leader epoch {asked} is newer than the {led} this broker leads in"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal() -> AppendSignal {
        Arc::new(watch::channel(0).0)
    }

    #[test]
    fn alone_the_hw_is_the_log_end_or_the_durable_offset() {
        let r = Replica::alone(10, 10, false, signal());
        assert_eq!(r.high_watermark(), 10);
        let mut w = r.watch_hw();
        r.progress(15, 10);
        assert_eq!(r.high_watermark(), 15);
        assert!(w.has_changed().unwrap());
        w.borrow_and_update();

        let d = Replica::alone(10, 10, true, signal());
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

    fn three(isr: &[BrokerId], min_isr: usize, epoch: i32) -> Leadership {
        Leadership {
            me: 1,
            leader_epoch: epoch,
            partition_epoch: 1,
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
            min_isr,
            durable: false,
        }
    }

    #[test]
    fn the_images_first_epoch_replaces_the_view_a_partition_opens_with() {
        // Opened before the image named its replicas (epoch 0, alone), then led in the image's
        // epoch 0 with two followers: they count, acks=all waits for them.
        let r = Replica::alone(0, 0, false, signal());
        r.lead(three(&[1, 2, 3], 2, 0), 0, 0);
        r.progress(4, 4);
        assert_eq!(r.high_watermark(), 0);
        r.follower_fetched(2, 1, 0, 4, 4).unwrap();
        r.follower_fetched(3, 1, 0, 4, 4).unwrap();
        assert_eq!(r.high_watermark(), 4);

        // Reopened with a tail nobody may have replicated: the opening HW (its log end) is not
        // taken over, as leader or follower; the followers' fetches or the leader's HW move it.
        let r = Replica::alone(10, 10, false, signal());
        r.lead(three(&[1, 2, 3], 2, 4), 10, 10);
        assert_eq!(r.high_watermark(), 0);
        assert_eq!(
            r.latest_offset().unwrap_err().0,
            ErrorCode::OffsetNotAvailable
        );
        r.follower_fetched(2, 1, 4, 8, 8).unwrap();
        r.follower_fetched(3, 1, 4, 10, 10).unwrap();
        assert_eq!(r.high_watermark(), 8);
        let f = Replica::alone(10, 10, false, signal());
        f.follow(Some((2, 4)), 10, 10);
        assert_eq!(f.high_watermark(), 0);
        f.learn_hw(7);
        assert_eq!(f.high_watermark(), 7);
    }

    #[tokio::test]
    async fn acks_all_waits_for_the_isr_and_fails_when_leadership_moves() {
        let appended = signal();
        let woken = appended.subscribe();
        let r = Arc::new(Replica::alone(0, 0, false, appended));
        r.lead(three(&[1, 2, 3], 2, 5), 0, 0);
        assert_eq!(r.check_replicated_append(), Ok(5));
        r.progress(10, 0);
        assert!(woken.has_changed().unwrap(), "followers' long polls wake");
        assert_eq!(r.high_watermark(), 0, "followers have nothing yet");

        let waiting = tokio::spawn({
            let r = r.clone();
            async move { r.acknowledged(10, false, 5).await }
        });
        r.follower_fetched(2, 7, 5, 10, 0).unwrap();
        assert_eq!(r.high_watermark(), 0, "broker 3 is in the ISR too");
        assert!(!waiting.is_finished());
        assert_eq!(
            r.standing(),
            Some(LeaderStanding {
                replicas: 3,
                in_sync: 3,
                lags: vec![(2, 0), (3, 10)],
            }),
            "what /metrics shows: broker 3 has fetched nothing yet"
        );
        let marks = r.follower_fetched(3, 7, 5, 10, 0).unwrap();
        assert_eq!(marks.hw, 10);
        assert_eq!(waiting.await.unwrap(), Ok(()));

        // A stale or future epoch is refused; a non-replica too.
        assert_eq!(
            r.follower_fetched(2, 7, 4, 10, 0).unwrap_err().0,
            ErrorCode::FencedLeaderEpoch
        );
        assert_eq!(
            r.follower_fetched(2, 7, 6, 10, 0).unwrap_err().0,
            ErrorCode::UnknownLeaderEpoch
        );
        assert_eq!(
            r.follower_fetched(9, 7, 5, 10, 0).unwrap_err().0,
            ErrorCode::NotLeaderOrFollower
        );

        // Leadership moves while a produce waits: it fails, it is not acknowledged.
        r.progress(20, 0);
        let waiting = tokio::spawn({
            let r = r.clone();
            async move { r.acknowledged(20, false, 5).await }
        });
        tokio::task::yield_now().await;
        r.follow(Some((2, 6)), 20, 0);
        assert_eq!(
            waiting.await.unwrap().unwrap_err().0,
            ErrorCode::NotLeaderOrFollower
        );
        assert_eq!(
            r.check_replicated_append().unwrap_err().0,
            ErrorCode::NotLeaderOrFollower
        );
        assert!(r.follows(2, 6));
        r.learn_hw(15);
        assert_eq!(r.high_watermark(), 15);
    }

    #[tokio::test]
    async fn under_min_isr_acks_all_is_refused_and_a_waiting_one_fails() {
        let r = Arc::new(Replica::alone(0, 0, false, signal()));
        r.lead(three(&[1, 2], 2, 1), 0, 0);
        r.progress(5, 0);
        let waiting = tokio::spawn({
            let r = r.clone();
            async move { r.acknowledged(5, false, 1).await }
        });
        tokio::task::yield_now().await;
        // The controller took broker 2 out (fenced): the ISR is under min.insync.replicas.
        r.lead(three(&[1], 2, 1), 5, 0);
        assert_eq!(
            waiting.await.unwrap().unwrap_err().0,
            ErrorCode::NotEnoughReplicasAfterAppend
        );
        assert_eq!(
            r.check_replicated_append().unwrap_err().0,
            ErrorCode::NotEnoughReplicas
        );
    }

    #[tokio::test]
    async fn a_durable_produce_waits_for_every_in_sync_replicas_fsync() {
        let r = Arc::new(Replica::alone(0, 0, false, signal()));
        r.lead(three(&[1, 2], 2, 1), 0, 0);
        r.progress(8, 8);
        let waiting = tokio::spawn({
            let r = r.clone();
            async move { r.acknowledged(8, true, 1).await }
        });
        tokio::task::yield_now().await;
        let marks = r.follower_fetched(2, 3, 1, 8, 0).unwrap();
        assert_eq!(marks.hw, 8, "replicated");
        assert_eq!(marks.durable_wanted, 8, "the follower is asked to fsync");
        assert!(!waiting.is_finished(), "not fsynced on broker 2 yet");
        r.follower_fetched(2, 3, 1, 8, 8).unwrap();
        assert_eq!(waiting.await.unwrap(), Ok(()));
    }
}

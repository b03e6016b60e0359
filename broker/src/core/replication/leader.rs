//! What a partition's leader knows of its followers: each one's log end and durable offset, when
//! it was last caught up, the high watermark they allow, and which ISR change to ask the
//! controller for. Kafka's ISR rules (its `Partition` class), learned, not copied:
//!
//! - A follower's fetch offset is its log end: everything below it is stored on the follower.
//! - The **high watermark** (HW) is the lowest log end over the *maximal* ISR (the committed ISR
//!   plus a pending expansion, which counts at once; a pending shrink counts only once the
//!   controller committed it, so an isolated leader can never shrink its way to acknowledging
//!   alone). For a topic with a durable policy it is the lowest *durable* offset instead, so
//!   "below the HW" means "fsynced on every in-sync replica". It never moves back, and it does
//!   not move at all while the committed ISR is smaller than `min.insync.replicas` (KIP-966's
//!   strict rule: checking min ISR only when a produce arrives is too weak).
//! - A follower is **caught up** at a fetch that reaches the leader's log end, or that reaches
//!   the log end the leader had at the follower's previous fetch (then it was caught up as of
//!   that previous fetch). An ISR member not caught up for `replica.lag.time.max.ms` is out of
//!   sync, unless its log end equals the leader's (an idle partition has nothing to catch up on;
//!   a follower that stops fetching altogether is fenced by the controller instead).
//! - A replica outside the ISR may join once its log end reaches both the HW and the offset
//!   where this leader epoch began (it then holds everything this leader acknowledged).
//! - One ISR change is in flight at a time; the controller compares the partition epoch, and the
//!   leader adopts the new ISR only from the metadata image once it is committed.
//!
//! Pure: time is passed in. The partition's writer owns one per partition it leads and calls it
//! once per follower fetch, never per record.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A broker's id, as the metadata image names it.
pub type BrokerId = u64;

/// What the leader knows of one follower.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Follower {
    /// Its log end, from its last fetch (-1: it has not fetched in this leader epoch).
    end: i64,
    /// Its durable offset (everything below is fsynced), from its last fetch.
    durable: i64,
    /// When it was last caught up with the leader (`None`: never in this epoch).
    caught_up_at: Option<Instant>,
    /// When it last fetched, and the leader's log end then.
    last_fetch: Option<(Instant, i64)>,
}

impl Follower {
    fn unknown() -> Self {
        Self {
            end: -1,
            durable: -1,
            caught_up_at: None,
            last_fetch: None,
        }
    }
}

/// The ISR change the leader has asked the controller for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IsrRequest {
    /// Remove out-of-sync members: the proposed ISR.
    Shrink(Vec<BrokerId>),
    /// Add a caught-up replica: the proposed ISR.
    Expand(Vec<BrokerId>),
}

impl IsrRequest {
    /// The ISR proposed.
    pub fn isr(&self) -> &[BrokerId] {
        match self {
            IsrRequest::Shrink(isr) | IsrRequest::Expand(isr) => isr,
        }
    }
}

/// How a partition is led, as the metadata image says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// This broker, the leader.
    pub me: BrokerId,
    /// The leader epoch.
    pub leader_epoch: i32,
    /// The partition epoch (bumped by every change, ISR changes included).
    pub partition_epoch: u32,
    /// Every replica, preferred leader first.
    pub replicas: Vec<BrokerId>,
    /// The committed ISR.
    pub isr: Vec<BrokerId>,
    /// The topic's `min.insync.replicas`.
    pub min_isr: usize,
    /// Whether the HW is computed over durable offsets (a topic with a durable policy).
    pub durable: bool,
}

/// The leader's view of a partition's replicas.
#[derive(Debug, Clone)]
pub struct LeaderView {
    lead: Leadership,
    /// Where this leader epoch began: the leader's log end when it was elected.
    epoch_start: i64,
    /// The leader's own log end and durable offset.
    end: i64,
    durable_end: i64,
    followers: BTreeMap<BrokerId, Follower>,
    pending: Option<IsrRequest>,
    hw: i64,
}

impl LeaderView {
    /// The view of a leader just elected (or just started) with log end `end`, durable offset
    /// `durable`, and the HW it had persisted or learned as a follower (`hw`, at most `end`).
    /// ISR members count as caught up now, as Kafka does, so none is dropped before it had a
    /// chance to fetch.
    pub fn new(lead: Leadership, end: i64, durable: i64, hw: i64, now: Instant) -> Self {
        let followers = lead
            .replicas
            .iter()
            .filter(|r| **r != lead.me)
            .map(|r| {
                let mut f = Follower::unknown();
                if lead.isr.contains(r) {
                    f.caught_up_at = Some(now);
                }
                (*r, f)
            })
            .collect();
        let mut view = Self {
            lead,
            epoch_start: end,
            end,
            durable_end: durable,
            followers,
            pending: None,
            hw: hw.min(end).max(0),
        };
        view.advance_hw();
        view
    }

    /// The high watermark: consumers read below it, `acks=all` is answered once it passes.
    pub fn hw(&self) -> i64 {
        self.hw
    }

    /// How the partition is led.
    pub fn leadership(&self) -> &Leadership {
        &self.lead
    }

    /// The offset below which the leader and every member of the maximal ISR have fsynced the
    /// log, at most the HW: what a durable produce (acks=durable) waits for.
    pub fn durable_hw(&self) -> i64 {
        let mut low = self.durable_end;
        for r in self.maximal_isr() {
            if r == self.lead.me {
                continue;
            }
            if let Some(f) = self.followers.get(&r) {
                low = low.min(f.durable);
            }
        }
        low.min(self.hw)
    }

    /// Each follower and its log end as of its last fetch (-1: none yet in this epoch).
    pub fn follower_ends(&self) -> impl Iterator<Item = (BrokerId, i64)> + '_ {
        self.followers.iter().map(|(id, f)| (*id, f.end))
    }

    /// The leader's own log end.
    pub fn end(&self) -> i64 {
        self.end
    }

    /// The offset where this leader epoch began.
    pub fn epoch_start(&self) -> i64 {
        self.epoch_start
    }

    /// The ISR change in flight, if any.
    #[cfg(test)]
    pub fn pending(&self) -> Option<&IsrRequest> {
        self.pending.as_ref()
    }

    /// True while the committed ISR is smaller than `min.insync.replicas`: an `acks=all`
    /// produce is refused with NOT_ENOUGH_REPLICAS before it is appended.
    pub fn under_min_isr(&self) -> bool {
        self.lead.isr.len() < self.lead.min_isr
    }

    /// The committed ISR plus a pending expansion: whose offsets the HW waits for.
    pub fn maximal_isr(&self) -> Vec<BrokerId> {
        let mut isr = self.lead.isr.clone();
        if let Some(IsrRequest::Expand(proposed)) = &self.pending {
            for r in proposed {
                if !isr.contains(r) {
                    isr.push(*r);
                }
            }
        }
        isr
    }

    /// The leader appended (or fsynced): its log end and durable offset. Returns whether the HW
    /// moved.
    pub fn on_leader_progress(&mut self, end: i64, durable: i64) -> bool {
        self.end = self.end.max(end);
        self.durable_end = self.durable_end.max(durable).min(self.end);
        self.advance_hw()
    }

    /// A fetch from `follower` at `fetch_offset` (its log end) with `durable` fsynced, at `now`.
    /// Returns whether the HW moved. A fetch from a broker that is not a replica changes
    /// nothing (the caller answers it NOT_LEADER_OR_FOLLOWER or similar).
    pub fn on_follower_fetch(
        &mut self,
        follower: BrokerId,
        fetch_offset: i64,
        durable: i64,
        now: Instant,
    ) -> bool {
        let leader_end = self.end;
        let Some(f) = self.followers.get_mut(&follower) else {
            return false;
        };
        if fetch_offset >= leader_end {
            f.caught_up_at = f.caught_up_at.max(Some(now));
        } else if let Some((at, end_then)) = f.last_fetch
            && fetch_offset >= end_then
        {
            f.caught_up_at = f.caught_up_at.max(Some(at));
        }
        f.last_fetch = Some((now, leader_end));
        // A follower's log end only goes back after it truncated, which it does before its
        // next fetch: take what it says.
        f.end = fetch_offset;
        f.durable = durable.min(fetch_offset);
        self.advance_hw()
    }

    /// Recomputes the HW; returns whether it moved.
    fn advance_hw(&mut self) -> bool {
        if self.under_min_isr() {
            return false;
        }
        let mut low = if self.lead.durable {
            self.durable_end
        } else {
            self.end
        };
        for r in self.maximal_isr() {
            if r == self.lead.me {
                continue;
            }
            let Some(f) = self.followers.get(&r) else {
                continue;
            };
            low = low.min(if self.lead.durable { f.durable } else { f.end });
        }
        if low > self.hw {
            self.hw = low;
            true
        } else {
            false
        }
    }

    /// Whether `follower` is in sync at `now`.
    fn in_sync(&self, follower: BrokerId, now: Instant, lag_max: Duration) -> bool {
        let Some(f) = self.followers.get(&follower) else {
            return false;
        };
        f.end == self.end
            || f.caught_up_at
                .is_some_and(|at| now.saturating_duration_since(at) <= lag_max)
    }

    /// The ISR change to ask the controller for now, if any (none while one is in flight):
    /// first a shrink dropping out-of-sync members, else an expansion adding one caught-up
    /// replica (in preferred order).
    pub fn isr_change_due(&self, now: Instant, lag_max: Duration) -> Option<IsrRequest> {
        if self.pending.is_some() {
            return None;
        }
        let isr = &self.lead.isr;
        let kept: Vec<BrokerId> = isr
            .iter()
            .copied()
            .filter(|r| *r == self.lead.me || self.in_sync(*r, now, lag_max))
            .collect();
        if kept.len() < isr.len() {
            return Some(IsrRequest::Shrink(kept));
        }
        let joining = self.lead.replicas.iter().copied().find(|r| {
            !isr.contains(r)
                && self
                    .followers
                    .get(r)
                    .is_some_and(|f| f.end >= self.hw && f.end >= self.epoch_start)
        })?;
        let mut grown = isr.clone();
        grown.push(joining);
        Some(IsrRequest::Expand(grown))
    }

    /// The change was sent to the controller: it is in flight until committed or refused.
    pub fn isr_requested(&mut self, request: IsrRequest) {
        self.pending = Some(request);
        self.advance_hw();
    }

    /// The controller answered the change in flight (refused it, or took it in whatever form it
    /// committed), or it could not be sent: nothing is in flight any more.
    pub fn isr_settled(&mut self) {
        self.pending = None;
    }

    /// The controller refused to add `follower` (fenced, shutting down, or an older
    /// incarnation than its fetches said): forget its position, so it is proposed again only
    /// once it fetches again, not at every tick.
    pub fn forget_follower(&mut self, follower: BrokerId) {
        if !self.lead.isr.contains(&follower)
            && let Some(f) = self.followers.get_mut(&follower)
        {
            *f = Follower::unknown();
        }
    }

    /// The metadata image committed a new ISR (and partition epoch) for this leader epoch.
    /// Returns whether the HW moved (a shrink can let it advance).
    pub fn isr_committed(&mut self, isr: Vec<BrokerId>, partition_epoch: u32) -> bool {
        // The controller keeps an ISR in replica order, not in the order asked for.
        if self
            .pending
            .as_ref()
            .is_some_and(|p| same_members(p.isr(), &isr))
        {
            self.pending = None;
        }
        self.lead.partition_epoch = partition_epoch;
        self.lead.isr = isr;
        self.advance_hw()
    }

    /// The topic's flush policy changed: with one, the HW is computed over durable offsets.
    /// Returns whether the HW moved (it never goes back).
    pub fn set_durable(&mut self, durable: bool) -> bool {
        self.lead.durable = durable;
        self.advance_hw()
    }

    /// The topic's `min.insync.replicas` changed.
    pub fn set_min_isr(&mut self, min_isr: usize) -> bool {
        self.lead.min_isr = min_isr;
        self.advance_hw()
    }
}

/// Whether two ISRs hold the same brokers, in any order.
fn same_members(a: &[BrokerId], b: &[BrokerId]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lead(isr: &[BrokerId], min_isr: usize, durable: bool) -> Leadership {
        Leadership {
            me: 1,
            leader_epoch: 3,
            partition_epoch: 7,
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
            min_isr,
            durable,
        }
    }

    const LAG: Duration = Duration::from_secs(10);

    #[test]
    fn a_follower_the_controller_refused_is_proposed_again_only_after_it_fetches() {
        let now = Instant::now();
        let mut v = LeaderView::new(lead(&[1, 2], 1, false), 10, 10, 10, now);
        v.on_follower_fetch(3, 10, 10, now);
        let due = v.isr_change_due(now, LAG).expect("broker 3 caught up");
        assert_eq!(due, IsrRequest::Expand(vec![1, 2, 3]));
        v.isr_requested(due);
        // Refused (broker 3 was fenced since): not asked again at every tick...
        v.isr_settled();
        v.forget_follower(3);
        assert_eq!(v.isr_change_due(now, LAG), None);
        // ...until it fetches again.
        v.on_follower_fetch(3, 10, 10, now);
        assert!(v.isr_change_due(now, LAG).is_some());
    }

    #[test]
    fn a_change_committed_in_replica_order_is_no_longer_in_flight() {
        // Found by the rolling restart (tests/failover.rs): a leader asked to add a broker as
        // [3, 2, 1], the controller committed [3, 1, 2], and the change stayed "in flight" for
        // good, so the leader never asked for another (no shrink, no expansion) again.
        let now = Instant::now();
        let mut v = LeaderView::new(lead(&[1, 3], 1, false), 10, 10, 10, now);
        v.on_follower_fetch(3, 10, 10, now);
        v.on_follower_fetch(2, 10, 10, now);
        let due = v.isr_change_due(now, LAG).expect("broker 2 caught up");
        assert_eq!(due, IsrRequest::Expand(vec![1, 3, 2]));
        v.isr_requested(due);
        v.isr_committed(vec![1, 2, 3], 8);
        assert_eq!(v.pending(), None);
        // So the next change is asked for: broker 3 falls behind past the lag limit.
        let later = now + LAG + Duration::from_millis(1);
        v.on_leader_progress(20, 20);
        v.on_follower_fetch(2, 20, 20, later);
        assert_eq!(
            v.isr_change_due(later, LAG),
            Some(IsrRequest::Shrink(vec![1, 2]))
        );
    }

    #[test]
    fn the_hw_is_the_lowest_end_over_the_isr() {
        let t = Instant::now();
        let mut v = LeaderView::new(lead(&[1, 2, 3], 2, false), 0, 0, 0, t);
        assert_eq!(v.hw(), 0);
        assert!(!v.on_leader_progress(10, 0), "followers have nothing yet");
        assert!(!v.on_follower_fetch(2, 10, 0, t));
        assert_eq!(v.hw(), 0, "follower 3 has nothing");
        assert!(v.on_follower_fetch(3, 6, 0, t));
        assert_eq!(v.hw(), 6);
        assert!(v.on_follower_fetch(3, 10, 0, t));
        assert_eq!(v.hw(), 10);
        // A follower that truncated and fetches from lower does not move the HW back.
        assert!(!v.on_follower_fetch(3, 4, 0, t));
        assert_eq!(v.hw(), 10);
    }

    #[test]
    fn a_durable_topic_waits_for_fsyncs_everywhere() {
        let t = Instant::now();
        let mut v = LeaderView::new(lead(&[1, 2], 1, true), 0, 0, 0, t);
        v.on_leader_progress(10, 4);
        v.on_follower_fetch(2, 10, 8, t);
        assert_eq!(v.hw(), 4, "the leader fsynced only 4");
        v.on_leader_progress(10, 10);
        assert_eq!(v.hw(), 8, "the follower fsynced only 8");
        v.on_follower_fetch(2, 10, 10, t);
        assert_eq!(v.hw(), 10);
    }

    #[test]
    fn under_min_isr_the_hw_stands_still() {
        let t = Instant::now();
        let mut v = LeaderView::new(lead(&[1], 2, false), 5, 5, 0, t);
        assert!(v.under_min_isr());
        assert_eq!(v.hw(), 0, "alone in the ISR with min.insync.replicas 2");
        v.on_leader_progress(9, 9);
        assert_eq!(v.hw(), 0);
        // Replica 2 catches up and is proposed: a pending expansion counts for the HW at once,
        // but min ISR is about the committed ISR.
        v.on_follower_fetch(2, 9, 9, t);
        let change = v.isr_change_due(t, LAG).unwrap();
        assert_eq!(change, IsrRequest::Expand(vec![1, 2]));
        v.isr_requested(change);
        assert_eq!(v.hw(), 0);
        assert!(v.isr_committed(vec![1, 2], 8));
        assert_eq!(v.hw(), 9);
        assert!(v.pending().is_none());
    }

    #[test]
    fn a_pending_shrink_does_not_count_until_committed() {
        let t = Instant::now();
        let mut v = LeaderView::new(lead(&[1, 2, 3], 1, false), 0, 0, 0, t);
        v.on_leader_progress(10, 10);
        v.on_follower_fetch(2, 10, 10, t);
        assert_eq!(v.hw(), 0, "3 holds nothing");
        let later = t + LAG + Duration::from_secs(1);
        let change = v.isr_change_due(later, LAG).unwrap();
        assert_eq!(change, IsrRequest::Shrink(vec![1, 2]), "3 is out of sync");
        v.isr_requested(change);
        assert_eq!(v.hw(), 0, "a shrink waits for the controller");
        assert!(
            v.isr_change_due(later, LAG).is_none(),
            "one change at a time"
        );
        assert!(v.isr_committed(vec![1, 2], 8));
        assert_eq!(v.hw(), 10);
    }

    #[test]
    fn caught_up_at_the_previous_fetch_counts_as_of_that_fetch() {
        let t = Instant::now();
        let mut v = LeaderView::new(lead(&[1, 2], 1, false), 100, 100, 100, t);
        // The follower fetches at 100 while the leader is at 100: caught up at t.
        v.on_follower_fetch(2, 100, 100, t);
        // The leader appends continuously; the follower always fetches what the leader had at its
        // previous fetch: caught up as of that previous fetch, so never out of sync.
        let mut leader_end = 100;
        for i in 1..=30u64 {
            let now = t + Duration::from_secs(i);
            let had = leader_end;
            leader_end += 50;
            v.on_leader_progress(leader_end, leader_end);
            v.on_follower_fetch(2, had, had, now);
            assert!(
                v.isr_change_due(now, LAG).is_none(),
                "in sync at {i} s though never at the leader's end"
            );
        }
        // It stops making progress: out of sync once the lag passes.
        let stuck = t + Duration::from_secs(31);
        v.on_leader_progress(leader_end + 50, leader_end + 50);
        for i in 0..12u64 {
            v.on_follower_fetch(2, leader_end - 10, 0, stuck + Duration::from_secs(i));
        }
        assert_eq!(
            v.isr_change_due(stuck + Duration::from_secs(11), LAG),
            Some(IsrRequest::Shrink(vec![1]))
        );
    }

    #[test]
    fn an_idle_follower_at_the_leaders_end_stays_in_sync() {
        let t = Instant::now();
        let mut v = LeaderView::new(lead(&[1, 2], 1, false), 7, 7, 7, t);
        v.on_follower_fetch(2, 7, 7, t);
        assert!(v.isr_change_due(t + LAG * 10, LAG).is_none());
    }

    #[test]
    fn a_replica_joins_only_past_the_hw_and_the_epoch_start() {
        let t = Instant::now();
        // Elected at log end 50 with HW 40; replica 3 is out of the ISR.
        let mut v = LeaderView::new(lead(&[1, 2], 1, false), 50, 50, 40, t);
        assert_eq!(v.epoch_start(), 50);
        v.on_follower_fetch(3, 45, 45, t);
        assert_eq!(v.hw(), 40);
        assert_eq!(
            v.isr_change_due(t, LAG),
            None,
            "past the HW, below the epoch start"
        );
        v.on_follower_fetch(2, 50, 50, t);
        v.on_leader_progress(60, 60);
        v.on_follower_fetch(2, 60, 60, t);
        assert_eq!(v.hw(), 60);
        v.on_follower_fetch(3, 55, 55, t);
        assert_eq!(
            v.isr_change_due(t, LAG),
            None,
            "past the epoch start, below the HW"
        );
        v.on_follower_fetch(3, 60, 60, t);
        assert_eq!(
            v.isr_change_due(t, LAG),
            Some(IsrRequest::Expand(vec![1, 2, 3]))
        );
    }

    #[test]
    fn fetches_from_strangers_change_nothing() {
        let t = Instant::now();
        let mut v = LeaderView::new(lead(&[1, 2], 1, false), 10, 10, 0, t);
        assert!(!v.on_follower_fetch(9, 10, 10, t));
        assert_eq!(v.hw(), 0);
    }

    #[derive(Debug, Clone)]
    enum Event {
        Append(u8),
        Fsync,
        Fetch(u8, u8, u8),
        Tick(u8),
        Change,
        Commit,
        Refuse,
        MinIsr(u8),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (1u8..20).prop_map(Event::Append),
            Just(Event::Fsync),
            (2u8..=3, 0u8..=255, 0u8..=255).prop_map(|(r, a, b)| Event::Fetch(r, a, b)),
            (1u8..20).prop_map(Event::Tick),
            Just(Event::Change),
            Just(Event::Commit),
            Just(Event::Refuse),
            (1u8..=3).prop_map(Event::MinIsr),
        ]
    }

    proptest! {
        /// Over any order of appends, fetches, time and ISR changes: the HW never goes back,
        /// never passes the leader's end, never passes the end (or durable offset) of a member
        /// of the committed ISR, never moves while the committed ISR is under min ISR, and the
        /// ISR always holds the leader and only replicas.
        #[test]
        fn hw_invariants_hold(
            durable in any::<bool>(),
            events in proptest::collection::vec(event(), 1..200),
        ) {
            let mut now = Instant::now();
            let mut v = LeaderView::new(lead(&[1, 2, 3], 2, durable), 0, 0, 0, now);
            let (mut end, mut synced) = (0i64, 0i64);
            let mut ends = BTreeMap::from([(2u64, -1i64), (3, -1)]);
            let mut durables = BTreeMap::from([(2u64, -1i64), (3, -1)]);
            let mut epoch = 7;
            for e in events {
                let before = v.hw();
                let under = v.under_min_isr();
                match e {
                    Event::Append(n) => { end += i64::from(n); v.on_leader_progress(end, synced); }
                    Event::Fsync => { synced = end; v.on_leader_progress(end, synced); }
                    Event::Fetch(r, a, b) => {
                        let at = end * i64::from(a) / 255;
                        let d = at * i64::from(b) / 255;
                        ends.insert(u64::from(r), at);
                        durables.insert(u64::from(r), d);
                        v.on_follower_fetch(u64::from(r), at, d, now);
                    }
                    Event::Tick(s) => now += Duration::from_secs(u64::from(s)),
                    Event::Change => if let Some(c) = v.isr_change_due(now, LAG) { v.isr_requested(c); },
                    Event::Commit => if let Some(p) = v.pending().cloned() {
                        // The controller keeps the ISR in replica order (here, sorted).
                        let mut isr = p.isr().to_vec();
                        isr.sort_unstable();
                        epoch += 1;
                        v.isr_committed(isr, epoch);
                        prop_assert!(v.pending().is_none(), "a committed change stays in flight");
                    },
                    Event::Refuse => v.isr_settled(),
                    Event::MinIsr(m) => { v.set_min_isr(usize::from(m)); }
                }
                prop_assert!(v.hw() >= before, "the HW went back");
                if under && v.under_min_isr() && !matches!(e, Event::MinIsr(_) | Event::Commit) {
                    prop_assert_eq!(v.hw(), before, "moved under min ISR");
                }
                prop_assert!(v.hw() <= end.max(0));
                let isr = &v.leadership().isr;
                prop_assert!(isr.contains(&1));
                prop_assert!(isr.iter().all(|r| [1, 2, 3].contains(r)));
                if v.hw() > before {
                    for r in isr.iter().filter(|r| **r != 1) {
                        let theirs = if durable { durables[r] } else { ends[r] };
                        prop_assert!(v.hw() <= theirs.max(before), "passed replica {}", r);
                    }
                    if durable {
                        prop_assert!(v.hw() <= synced);
                    }
                }
            }
        }
    }
}
